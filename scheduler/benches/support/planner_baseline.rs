#![allow(dead_code, unused_imports, clippy::all)]
//! Baseline copy of the planner before the rework (bench comparison only).
//! The planner: pure, deterministic route planning.
//!
//! Input is a snapshot of what agents reported ([`NodeView`]s), the weights
//! and ranges of the QoE formula and the previous plan's choices; output is
//! the content of every node's route table (version and nonce are added by
//! `publish`). No I/O, no clock: `now_ms` is an argument, so the simulator
//! runs exactly this code.
//!
//! For every stream origin `O` (an agent that publishes a stream, or a node
//! configured with a static origin for a pattern) and every node `N`:
//!
//! 1. edge scores `e(U→N)` — the QoE score of `U` serving `N` — come from
//!    [`edge_inputs`]: RTT/loss measured by probes between the two when there
//!    are enough samples, otherwise RTT modelled from distance; `U`'s buffer
//!    health; `U`'s projected utilisation; distance;
//! 2. each node's best path cost from `O` with at most `max_relay_hops`
//!    relays in between (a layered Bellman–Ford over each node's nearest
//!    candidates, LiveNet's bound of two relay hops);
//! 3. `N`'s upstream list: `O` directly or a relay `R` (cost(R) + e(R→N)),
//!    best first, with up to `max_backups` backups. Relays are admitted only
//!    if they precede `N` in the strict order (path cost, id), so primary and
//!    backup choices can never form a loop;
//! 4. stability: hysteresis keeps a healthy previous primary unless the new
//!    best is clearly better, and near-equal candidates are spread by a
//!    rendezvous hash of (node, stream) instead of all picking the same one;
//! 5. load accounting: every primary assignment adds the stream's bit rate
//!    to the upstream's projected egress, so one plan does not herd all
//!    consumers onto the momentarily best node.
//!
//! Probe targets per node: its upstream candidates, its nearest peers and a
//! few pseudo-random peers rotating every `probe_rotation_ms` (Pingmesh).

use rand::{Rng, SeedableRng};
use rstar::RTree;
use rstar::primitives::GeomWithData;
use std::collections::{BTreeMap, BTreeSet};
use vantage_proto::v1::{
    ProbeReason, ProbeTarget, RouteTable, StreamRoute, Upstream, UpstreamKind,
};
use vantage_shared::place::{Coord, modelled_rtt_ms};
use vantage_shared::score::{
    Input, Inputs, Ranges, Stability, Weights, rank_with_spreading, rendezvous, score_value,
};
use vantage_shared::stream::{StreamKey, StreamPattern};

use vantage_scheduler::planner::{Health, Limits, NodeView, Plan, PlanInput};

/// Inputs of the QoE formula for `u` serving `n`.
fn edge_inputs(u: &NodeView, n: &NodeView, ranges: &Ranges, limits: &Limits, util: f64) -> Inputs {
    let measured = n
        .paths
        .get(&u.id)
        .or_else(|| u.paths.get(&n.id))
        .filter(|p| p.samples >= limits.min_path_samples);
    let km = match (u.coord, n.coord) {
        (Some(a), Some(b)) => Input::modelled(a.km_to(&b)),
        _ => Input::default_value((ranges.km.lo + ranges.km.hi) / 2.0),
    };
    let (rtt_ms, loss) = match measured {
        Some(p) => (Input::measured(p.rtt_ms), Input::measured(p.loss)),
        None => (
            if km.source == vantage_shared::score::Source::Modelled {
                Input::modelled(modelled_rtt_ms(km.value))
            } else {
                Input::default_value(modelled_rtt_ms(km.value))
            },
            Input::default_value(0.0),
        ),
    };
    let buffer_ms = match u.buffer_ms {
        Some(b) => Input::measured(b),
        None => Input::default_value(ranges.buffer_ms.hi),
    };
    Inputs {
        rtt_ms,
        loss,
        buffer_ms,
        utilisation: Input::measured(util),
        km,
    }
}

/// Whether a node may serve others.
fn eligible(n: &NodeView, ranges: &Ranges) -> bool {
    n.health == Health::Up && n.utilisation() < ranges.hard_utilisation
}

struct Ctx<'a> {
    input: &'a PlanInput,
    nodes: Vec<&'a NodeView>,
    eligible: Vec<bool>,
    /// Projected egress per node (reported + assigned by this plan), Mbps.
    egress: Vec<f64>,
    /// Per consumer: its best `relay_candidates` eligible peers with the
    /// load-free part of their edge score, best first.
    neighbours: Vec<Vec<(usize, f64)>>,
    load_weight: f64,
    /// Nodes with coordinates as points on a sphere (km), for nearest
    /// neighbours in O(log n) instead of scanning every node.
    spatial: RTree<GeomWithData<[f64; 3], usize>>,
}

impl<'a> Ctx<'a> {
    fn util(&self, i: usize) -> f64 {
        let cap = self.nodes[i].capacity_mbps;
        if cap > 0.0 { self.egress[i] / cap } else { 1.0 }
    }

    /// Edge score without the load term (computed with utilisation 0,
    /// whose penalty is 0).
    fn static_edge(&self, u: usize, n: usize) -> f64 {
        let i = self.input;
        let inputs = edge_inputs(self.nodes[u], self.nodes[n], &i.ranges, &i.limits, 0.0);
        score_value(&i.weights, &i.ranges, &inputs)
    }

    /// Full edge score with `u`'s projected utilisation.
    fn edge_with_load(&self, u: usize, static_part: f64) -> f64 {
        static_part + self.load_weight * self.input.ranges.load_penalty(self.util(u))
    }

    /// Up to `limit` nodes nearest to `i` (not `i` itself) passing `keep`,
    /// looking at no more than `scan` candidates.
    fn nearest(
        &self,
        i: usize,
        limit: usize,
        scan: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let Some(c) = self.nodes[i].coord else {
            return Vec::new();
        };
        self.spatial
            .nearest_neighbor_iter(&sphere_point(c))
            .map(|p| p.data)
            .filter(|&u| u != i)
            .take(scan)
            .filter(|&u| keep(u))
            .take(limit)
            .collect()
    }

    fn static_edge_cached(&self, u: usize, n: usize) -> f64 {
        self.neighbours[n]
            .iter()
            .find(|(c, _)| *c == u)
            .map(|(_, e)| *e)
            .unwrap_or_else(|| self.static_edge(u, n))
    }
}

/// One origin of a set of streams: a publishing node or a static-origin pattern.
struct Source {
    /// Route key: exact stream key or pattern.
    route: String,
    /// Nodes that hold the stream first-hand (the publisher, or every node
    /// configured with the static origin), with their origin URL if static.
    roots: Vec<(usize, Option<String>)>,
    bitrate_mbps: f64,
}

impl Source {
    fn is_root(&self, i: usize) -> bool {
        self.roots.iter().any(|(r, _)| *r == i)
    }
}

/// A coordinate as a 3-D point on a sphere of Earth's radius: straight-line
/// (chord) distance grows monotonically with great-circle distance.
fn sphere_point(c: Coord) -> [f64; 3] {
    const R: f64 = 6371.0;
    let (lat, lon) = (c.lat.to_radians(), c.lon.to_radians());
    [
        R * lat.cos() * lon.cos(),
        R * lat.cos() * lon.sin(),
        R * lat.sin(),
    ]
}

/// Computes a plan. Deterministic: same input, same output.
pub fn plan(input: &PlanInput) -> Plan {
    let mut nodes: Vec<&NodeView> = input.nodes.iter().collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes.dedup_by(|a, b| a.id == b.id);
    let n = nodes.len();
    let eligible: Vec<bool> = nodes.iter().map(|n| eligible(n, &input.ranges)).collect();
    let egress = nodes.iter().map(|n| n.egress_mbps.max(0.0)).collect();
    let weight_sum = input.weights.sum().max(f64::MIN_POSITIVE);
    let mut ctx = Ctx {
        input,
        nodes,
        eligible,
        egress,
        neighbours: Vec::new(),
        load_weight: input.weights.load / weight_sum,
        spatial: RTree::new(),
    };
    ctx.spatial = RTree::bulk_load(
        ctx.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.coord.map(|c| GeomWithData::new(sphere_point(c), i)))
            .collect(),
    );
    let sources = collect_sources(&ctx);
    if !sources.is_empty() {
        ctx.neighbours = relay_candidates(&ctx);
    }
    let mut routes: Vec<Vec<StreamRoute>> = vec![Vec::new(); n];
    let mut primaries = BTreeMap::new();
    let mut upstream_ids: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let max_hops = input.limits.max_relay_hops;

    for src in &sources {
        let (cost, hops) = path_costs(&ctx, src);
        // Consumers in the strict order (cost, id): a primary upstream must
        // precede its consumer, so primaries form a tree rooted at the origin.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            cost[a]
                .total_cmp(&cost[b])
                .then_with(|| ctx.nodes[a].id.cmp(&ctx.nodes[b].id))
        });
        let mut rank = vec![0usize; n];
        for (pos, &i) in order.iter().enumerate() {
            rank[i] = pos;
        }
        // Primary upstream and relay depth (root 0) per node, for this source.
        let mut primary: Vec<Option<usize>> = vec![None; n];
        let mut depth: Vec<u32> = vec![u32::MAX; n];
        for (r, _) in &src.roots {
            depth[*r] = 0;
        }
        let mut ranked: Vec<Vec<Cand<'_>>> = vec![Vec::new(); n];
        for &consumer in &order {
            let mut cands: Vec<Cand> = Vec::new();
            if let Some((_, url)) = src.roots.iter().find(|(r, _)| *r == consumer) {
                // A publisher needs no route for its own stream; a node with
                // a static origin pulls from the origin URL first.
                if url.is_none() {
                    continue;
                }
                cands.push(Cand {
                    node: None,
                    id: "",
                    total: 0.0,
                });
            }
            let pool = src
                .roots
                .iter()
                .map(|(r, _)| *r)
                .chain(ctx.neighbours[consumer].iter().map(|(u, _)| *u));
            for u in pool {
                if u == consumer
                    || !ctx.eligible[u]
                    || !cost[u].is_finite()
                    || cands.iter().any(|c| c.node == Some(u))
                {
                    continue;
                }
                if !src.is_root(u) && hops[u] > max_hops {
                    continue;
                }
                let edge = ctx.edge_with_load(u, ctx.static_edge_cached(u, consumer));
                cands.push(Cand {
                    node: Some(u),
                    id: ctx.nodes[u].id.as_str(),
                    total: cost[u] + edge,
                });
            }
            if cands.is_empty() {
                continue;
            }
            let consumer_id = ctx.nodes[consumer].id.as_str();
            let salt = format!("{consumer_id}\u{1f}{}", src.route);
            rank_with_spreading(
                &mut cands,
                |c: &Cand| (c.id, c.total),
                input.stability.near_equal,
                &salt,
            );
            // The origin URL always comes first.
            if let Some(pos) = cands.iter().position(|c| c.node.is_none()) {
                let origin = cands.remove(pos);
                cands.insert(0, origin);
            }
            // Primary: the best candidate that precedes the consumer and is
            // within the relay-hop bound; hysteresis keeps a healthy previous
            // primary unless the new best is clearly better.
            let admissible = |c: &Cand| match c.node {
                None => true,
                Some(u) => src.is_root(u) || (rank[u] < rank[consumer] && depth[u] <= max_hops),
            };
            let Some(mut first) = cands.iter().position(admissible) else {
                continue;
            };
            let key = (consumer_id.to_owned(), src.route.clone());
            if let Some(prev) = input.previous.get(&key)
                && let Some(pos) = cands
                    .iter()
                    .position(|c| c.node.is_some_and(|u| &ctx.nodes[u].id == prev))
                && pos != first
                && admissible(&cands[pos])
                && !input
                    .stability
                    .should_switch(cands[pos].total, cands[first].total)
            {
                first = pos;
            }
            let chosen = cands.remove(first);
            if let Some(u) = chosen.node {
                ctx.egress[u] += src.bitrate_mbps;
                depth[consumer] = depth[u].saturating_add(1);
                primary[consumer] = Some(u);
            } else {
                depth[consumer] = 0;
            }
            primaries.insert(key, chosen.id.to_owned());
            cands.insert(0, chosen);
            ranked[consumer] = cands;
        }
        // Backups: any other candidate whose own primary chain does not pass
        // through the consumer (so a failover never pulls from a node that
        // pulls from us), within the relay-hop bound.
        for consumer in 0..n {
            let cands = std::mem::take(&mut ranked[consumer]);
            if cands.is_empty() {
                continue;
            }
            let mut list: Vec<Upstream> = Vec::with_capacity(1 + input.limits.max_backups);
            for (i, c) in cands.into_iter().enumerate() {
                if list.len() > input.limits.max_backups {
                    break;
                }
                if i > 0
                    && let Some(u) = c.node
                    && (depth[u] > max_hops || chain_contains(&primary, u, consumer))
                {
                    continue;
                }
                list.push(match c.node {
                    Some(u) => {
                        upstream_ids[consumer].insert(u);
                        let node = ctx.nodes[u];
                        Upstream {
                            kind: UpstreamKind::Node as i32,
                            node_id: node.id.clone(),
                            url: node.public_url.clone(),
                            score: quantise(c.total),
                            hops: hops[u],
                        }
                    }
                    None => Upstream {
                        kind: UpstreamKind::Origin as i32,
                        node_id: String::new(),
                        url: src
                            .roots
                            .iter()
                            .find(|(r, _)| *r == consumer)
                            .and_then(|(_, url)| url.clone())
                            .unwrap_or_default(),
                        score: 0.0,
                        hops: 0,
                    },
                });
            }
            routes[consumer].push(StreamRoute {
                stream: src.route.clone(),
                upstreams: list,
            });
        }
    }

    let mut tables = BTreeMap::new();
    for i in 0..n {
        let node = ctx.nodes[i];
        let probe_targets = probe_targets(&ctx, i, &upstream_ids[i]);
        tables.insert(
            node.id.clone(),
            RouteTable {
                node_id: node.id.clone(),
                version: 0,
                nonce: String::new(),
                generated_at_ms: 0,
                ttl_s: input.table_ttl_s,
                report_interval_ms: input.report_interval_ms,
                weights_version: input.weights_version,
                streams: std::mem::take(&mut routes[i]),
                probe_targets,
                redirects: Vec::new(),
                probe_key: input.probe_key.clone(),
            },
        );
    }
    Plan {
        tables,
        primaries,
        ..Plan::default()
    }
}

#[derive(Debug, Clone, Copy)]
struct Cand<'a> {
    /// `None` for the static origin URL of the consumer itself.
    node: Option<usize>,
    /// The node's id ("" for the origin URL).
    id: &'a str,
    total: f64,
}

/// Whether following primaries up from `from` reaches `target`.
fn chain_contains(primary: &[Option<usize>], from: usize, target: usize) -> bool {
    let mut cur = Some(from);
    let mut steps = 0;
    while let Some(c) = cur {
        if c == target {
            return true;
        }
        steps += 1;
        if steps > primary.len() {
            return true; // defensive: a cycle would be a bug; refuse the backup
        }
        cur = primary[c];
    }
    false
}

/// Scores in tables are quantised to 0.001 so load wobbles that change no
/// decision do not produce a new table version for every agent.
fn quantise(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// Each node's best `relay_candidates` eligible peers by load-free edge
/// score. Exact scores are computed only for a short list: the nearest
/// eligible peers (2× the bound, from the R-tree) plus every peer with a
/// path measurement in either direction — for unmeasured pairs the score
/// grows with distance, so farther peers cannot beat the short list except
/// through better buffer health, a deliberate simplification. Nodes
/// without coordinates consider every eligible peer.
fn relay_candidates(ctx: &Ctx<'_>) -> Vec<Vec<(usize, f64)>> {
    let n = ctx.nodes.len();
    let k = ctx.input.limits.relay_candidates.max(1);
    let index: std::collections::HashMap<&str, usize> = ctx
        .nodes
        .iter()
        .enumerate()
        .map(|(i, v)| (v.id.as_str(), i))
        .collect();
    // measured_by[v] = nodes that measured v (reverse of `paths`).
    let mut measured_by: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (u, node) in ctx.nodes.iter().enumerate() {
        for peer in node.paths.keys() {
            if let Some(&v) = index.get(peer.as_str()) {
                measured_by[v].push(u);
            }
        }
    }
    (0..n)
        .map(|v| {
            let mut pool: BTreeSet<usize> = if ctx.nodes[v].coord.is_some() {
                ctx.nearest(v, 2 * k, 16 * k + 64, |u| ctx.eligible[u])
                    .into_iter()
                    .collect()
            } else {
                (0..n).filter(|&u| u != v && ctx.eligible[u]).collect()
            };
            pool.extend(
                ctx.nodes[v]
                    .paths
                    .keys()
                    .filter_map(|p| index.get(p.as_str()).copied())
                    .chain(measured_by[v].iter().copied())
                    .filter(|&u| u != v && ctx.eligible[u]),
            );
            let mut e: Vec<(usize, f64)> = pool
                .into_iter()
                .map(|u| (u, ctx.static_edge(u, v)))
                .collect();
            e.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            e.truncate(k);
            e
        })
        .collect()
}

/// Streams with their roots, in a deterministic order. An exact stream
/// published on a node is one source; a static-origin pattern configured
/// on one or more nodes is another.
fn collect_sources(ctx: &Ctx<'_>) -> Vec<Source> {
    let default_mbps = ctx.input.limits.default_bitrate_kbps / 1000.0;
    let mut exact: BTreeMap<String, Source> = BTreeMap::new();
    let mut patterns: BTreeMap<String, Source> = BTreeMap::new();
    for (i, node) in ctx.nodes.iter().enumerate() {
        if matches!(node.health, Health::Down) {
            continue;
        }
        for (key, kbps) in &node.published {
            let e = exact.entry(key.to_string()).or_insert_with(|| Source {
                route: key.to_string(),
                roots: Vec::new(),
                bitrate_mbps: 0.0,
            });
            e.roots.push((i, None));
            let mbps = if *kbps > 0.0 {
                kbps / 1000.0
            } else {
                default_mbps
            };
            e.bitrate_mbps = e.bitrate_mbps.max(mbps);
        }
        for (pattern, url) in &node.static_origins {
            let e = patterns
                .entry(pattern.to_string())
                .or_insert_with(|| Source {
                    route: pattern.to_string(),
                    roots: Vec::new(),
                    bitrate_mbps: default_mbps,
                });
            e.roots.push((i, Some(url.clone())));
        }
    }
    exact.into_values().chain(patterns.into_values()).collect()
}

/// Best path cost from the source's roots to every node and the hop count
/// of the node on that path (root 0, a node pulling from a root 1, ...).
/// Only nodes with at most `max_relay_hops` hops serve others, so a viewer
/// edge is at most `max_relay_hops` relays away from the origin.
fn path_costs(ctx: &Ctx<'_>, src: &Source) -> (Vec<f64>, Vec<u32>) {
    let n = ctx.nodes.len();
    let max_hops = ctx.input.limits.max_relay_hops;
    let mut cost = vec![f64::INFINITY; n];
    let mut hops = vec![u32::MAX; n];
    for (r, _) in &src.roots {
        cost[*r] = 0.0;
        hops[*r] = 0;
    }
    for _edge in 0..=max_hops {
        let prev = cost.clone();
        let prev_hops = hops.clone();
        for v in 0..n {
            if src.is_root(v) {
                continue;
            }
            let via_roots = src
                .roots
                .iter()
                .filter(|(r, _)| ctx.eligible[*r])
                .map(|(r, _)| (*r, ctx.static_edge_cached(*r, v)));
            let via_relays = ctx.neighbours[v].iter().copied();
            for (u, e) in via_roots.chain(via_relays) {
                if !prev[u].is_finite() || prev_hops[u] > max_hops {
                    continue;
                }
                let c = prev[u] + ctx.edge_with_load(u, e);
                if c < cost[v] - 1e-12 {
                    cost[v] = c;
                    hops[v] = prev_hops[u] + 1;
                }
            }
        }
    }
    (cost, hops)
}

fn probe_targets(ctx: &Ctx<'_>, i: usize, upstreams: &BTreeSet<usize>) -> Vec<ProbeTarget> {
    let limits = &ctx.input.limits;
    let me = ctx.nodes[i];
    let mut out: Vec<ProbeTarget> = Vec::new();
    let mut chosen = BTreeSet::new();
    let mut push = |out: &mut Vec<ProbeTarget>, u: usize, reason: ProbeReason| {
        let peer = ctx.nodes[u];
        if u == i
            || peer.probe_addr.is_empty()
            || matches!(peer.health, Health::Down)
            || out.len() >= limits.probe_max
            || !chosen.insert(u)
        {
            return;
        }
        out.push(ProbeTarget {
            node_id: peer.id.clone(),
            addr: peer.probe_addr.clone(),
            reason: reason as i32,
        });
    };
    for &u in upstreams {
        push(&mut out, u, ProbeReason::Upstream);
    }
    let probeable = |u: usize| {
        !ctx.nodes[u].probe_addr.is_empty() && !matches!(ctx.nodes[u].health, Health::Down)
    };
    for u in ctx.nearest(
        i,
        limits.probe_nearest,
        8 * limits.probe_nearest + 32,
        probeable,
    ) {
        push(&mut out, u, ProbeReason::Nearest);
    }
    // Random peers: a generator seeded by (node, rotation epoch), so the
    // choice is deterministic for a plan and rotates every epoch.
    let n = ctx.nodes.len();
    if n > 1 {
        let epoch = ctx.input.now_ms.div_euclid(limits.probe_rotation_ms.max(1));
        let mut rng = rand::rngs::StdRng::seed_from_u64(rendezvous(&me.id, &epoch.to_string()));
        let mut added = 0;
        for _ in 0..(4 * limits.probe_random + 16) {
            if added >= limits.probe_random {
                break;
            }
            let u = rng.random_range(0..n);
            let before = out.len();
            push(&mut out, u, ProbeReason::Random);
            if out.len() > before {
                added += 1;
            }
        }
    }
    out
}
