//! Per-source route planning: path costs from the roots, candidate
//! ranking with spreading and primary hysteresis, load accounting, backups
//! with hysteresis, and the previous plan's choices by index.

use super::*;
/// One origin of a set of streams: a publishing node or a static-origin pattern.
pub(super) struct Source {
    /// Route key: exact stream key or pattern.
    pub(super) route: String,
    /// Nodes that hold the stream first-hand (the publisher, or every node
    /// configured with the static origin), with their origin URL if static.
    pub(super) roots: Vec<(usize, Option<String>)>,
    pub(super) bitrate_mbps: f64,
}

/// An upstream candidate of one consumer for one source.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cand {
    /// Node index, or [`NONE`] for the consumer's own static origin URL.
    pub(super) node: usize,
    pub(super) total: f64,
}

impl Cand {
    /// Tie-break key in id order: the origin URL (id "") first.
    pub(super) fn key(&self) -> usize {
        self.node.wrapping_add(1)
    }
}

/// Per-source working memory, allocated once per plan and reused for every
/// source (a plan has up to one source per stream).
pub(super) struct Work {
    /// Best path cost from the source and its hop count, per node.
    pub(super) cost: Vec<f64>,
    pub(super) hops: Vec<u32>,
    pub(super) prev_cost: Vec<f64>,
    pub(super) prev_hops: Vec<u32>,
    pub(super) is_root: Vec<bool>,
    /// Load-free edge score root → node, per root of the source (empty for
    /// ineligible roots).
    pub(super) root_edges: Vec<Vec<f64>>,
    /// Consumers in the strict order (cost, id) and each one's position.
    pub(super) order: Vec<usize>,
    pub(super) rank: Vec<usize>,
    /// Primary upstream ([`NONE`] if none) and relay depth (root 0).
    pub(super) primary: Vec<usize>,
    pub(super) depth: Vec<u32>,
    /// Ranked candidates of every consumer, `span[consumer]` into `arena`.
    pub(super) arena: Vec<Cand>,
    pub(super) span: Vec<(usize, usize)>,
    pub(super) cands: Vec<Cand>,
    pub(super) hashed: Vec<(u64, Cand)>,
    pub(super) backs: Vec<Cand>,
}

impl Work {
    pub(super) fn new(n: usize) -> Self {
        Work {
            cost: vec![f64::INFINITY; n],
            hops: vec![u32::MAX; n],
            prev_cost: vec![f64::INFINITY; n],
            prev_hops: vec![u32::MAX; n],
            is_root: vec![false; n],
            root_edges: Vec::new(),
            order: (0..n).collect(),
            rank: vec![0; n],
            primary: vec![NONE; n],
            depth: vec![u32::MAX; n],
            arena: Vec::new(),
            span: vec![(0, 0); n],
            cands: Vec::new(),
            hashed: Vec::new(),
            backs: Vec::new(),
        }
    }
}

/// How many previous backups per route the hysteresis remembers.
pub(super) const STICKY: usize = 4;
/// Slots of a remembered backup list: unused, the origin URL.
pub(super) const NO_BACKUP: u32 = u32::MAX;
pub(super) const ORIGIN_BACKUP: u32 = u32::MAX - 1;

/// The previous plan's choices by source and consumer index.
pub(super) struct Previous {
    /// Previous primary's node index ([`NONE`] if none, the origin URL or
    /// a node that is gone). Empty for a source without any entry.
    pub(super) primary: Vec<Vec<usize>>,
    /// Previous backups, in order, [`NO_BACKUP`]-padded. Empty for a
    /// source without any entry.
    pub(super) backups: Vec<Vec<[u32; STICKY]>>,
}

impl Previous {
    pub(super) fn index(ctx: &Ctx<'_>, sources: &[Source]) -> Self {
        let n = ctx.nodes.len();
        let mut by_route: HashMap<&str, Vec<usize>> = HashMap::new();
        for (s, src) in sources.iter().enumerate() {
            by_route.entry(src.route.as_str()).or_default().push(s);
        }
        let mut out = Previous {
            primary: vec![Vec::new(); sources.len()],
            backups: vec![Vec::new(); sources.len()],
        };
        // Keys are sorted by node: look each node up once.
        let mut last: Option<(&str, Option<usize>)> = None;
        let mut consumer_of = |node: &'_ str| -> Option<usize> {
            match last {
                Some((id, c)) if id == node => c,
                _ => {
                    let c = ctx.index.get(node).copied();
                    last = ctx.nodes.get(c.unwrap_or(NONE)).map(|v| (v.id.as_str(), c));
                    c
                }
            }
        };
        for ((node, route), up) in &ctx.input.previous {
            let (Some(consumer), Some(&u), Some(ss)) = (
                consumer_of(node),
                ctx.index.get(up.as_str()),
                by_route.get(route.as_str()),
            ) else {
                continue;
            };
            for &s in ss {
                let v = &mut out.primary[s];
                if v.is_empty() {
                    v.resize(n, NONE);
                }
                v[consumer] = u;
            }
        }
        for ((node, route), ups) in &ctx.input.previous_backups {
            let (Some(consumer), Some(ss)) = (consumer_of(node), by_route.get(route.as_str()))
            else {
                continue;
            };
            let mut list = [NO_BACKUP; STICKY];
            let known = ups.iter().filter_map(|id| match id.as_str() {
                "" => Some(ORIGIN_BACKUP),
                id => ctx.index.get(id).and_then(|&u| u32::try_from(u).ok()),
            });
            for (slot, u) in list.iter_mut().zip(known) {
                *slot = u;
            }
            for &s in ss {
                let v = &mut out.backups[s];
                if v.is_empty() {
                    v.resize(n, [NO_BACKUP; STICKY]);
                }
                v[consumer] = list;
            }
        }
        out
    }
}

/// A route's choices, for `Plan::primaries` and `Plan::backups`.
pub(super) struct Chosen {
    pub(super) consumer: usize,
    pub(super) source: usize,
    pub(super) primary: usize,
    /// Range of `Emitted::backup_ids`.
    pub(super) backups: (usize, usize),
}

/// What the plan has produced so far.
pub(super) struct Emitted {
    pub(super) routes: Vec<Vec<StreamRoute>>,
    pub(super) upstream_ids: Vec<Vec<usize>>,
    pub(super) chosen: Vec<Chosen>,
    pub(super) backup_ids: Vec<usize>,
}

/// Load-free edge scores from every eligible root of `src` to every node.
pub(super) fn root_edges(ctx: &Ctx<'_>, src: &Source, work: &mut Work) {
    let n = ctx.nodes.len();
    if work.root_edges.len() < src.roots.len() {
        work.root_edges.resize_with(src.roots.len(), Vec::new);
    }
    for (k, &(r, _)) in src.roots.iter().enumerate() {
        let edges = &mut work.root_edges[k];
        edges.clear();
        if !ctx.eligible[r] {
            continue;
        }
        edges.extend((0..n).map(|v| {
            if v == r {
                f64::INFINITY
            } else {
                ctx.static_edge(r, v)
            }
        }));
    }
}

/// Ranks every consumer's candidates for `src` in the strict order
/// (path cost, id) and picks primaries, with hysteresis and load accounting.
pub(super) fn rank_candidates(
    ctx: &mut Ctx<'_>,
    src: &Source,
    previous: &[usize],
    work: &mut Work,
) {
    let n = ctx.nodes.len();
    let input = ctx.input;
    let max_hops = input.limits.max_relay_hops;
    let near_equal = input.stability.near_equal;
    // Consumers in the strict order (cost, id): a primary upstream must
    // precede its consumer, so primaries form a tree rooted at the origin.
    let cost = &work.cost;
    work.order.clear();
    work.order.extend(0..n);
    work.order
        .sort_unstable_by(|&a, &b| cost[a].total_cmp(&cost[b]).then(a.cmp(&b)));
    for (pos, &i) in work.order.iter().enumerate() {
        work.rank[i] = pos;
    }
    work.primary.fill(NONE);
    work.depth.fill(u32::MAX);
    for &(r, _) in &src.roots {
        work.depth[r] = 0;
    }
    work.arena.clear();
    work.span.fill((0, 0));
    for oi in 0..n {
        let consumer = work.order[oi];
        let cands = &mut work.cands;
        cands.clear();
        if work.is_root[consumer] {
            // A publisher needs no route for its own stream; a node with
            // a static origin pulls from the origin URL first.
            let url = src.roots.iter().find(|(r, _)| *r == consumer);
            if url.is_none_or(|(_, u)| u.is_none()) {
                continue;
            }
            cands.push(Cand {
                node: NONE,
                total: 0.0,
            });
        }
        let roots = src
            .roots
            .iter()
            .enumerate()
            .map(|(k, &(r, _))| (r, Some(k)));
        let relays = ctx.neighbours[consumer].iter().map(|&(u, _)| (u, None));
        for (slot, (u, root)) in roots.chain(relays).enumerate() {
            if u == consumer
                || !ctx.eligible[u]
                || !work.cost[u].is_finite()
                || cands.iter().any(|c| c.node == u)
            {
                continue;
            }
            if !work.is_root[u] && work.hops[u] > max_hops {
                continue;
            }
            let edge = match root {
                Some(k) => work.root_edges[k][consumer],
                None => ctx.neighbours[consumer][slot - src.roots.len()].1,
            };
            cands.push(Cand {
                node: u,
                total: work.cost[u] + (edge + ctx.load_term[u]),
            });
        }
        if cands.is_empty() {
            continue;
        }
        // Best first; near-equal candidates spread by a rendezvous hash of
        // (id, consumer, route) — `score::rank_with_spreading` on indices.
        cands.sort_unstable_by(|a, b| a.total.total_cmp(&b.total).then(a.key().cmp(&b.key())));
        let best = cands[0].total;
        let band = cands
            .iter()
            .take_while(|c| c.total - best <= near_equal)
            .count();
        if band > 1 {
            work.hashed.clear();
            work.hashed.extend(
                cands[..band]
                    .iter()
                    .map(|c| (ctx.spread_hash(c.node, consumer, &src.route), *c)),
            );
            work.hashed
                .sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.key().cmp(&b.1.key())));
            for (slot, (_, c)) in cands.iter_mut().zip(&work.hashed) {
                *slot = *c;
            }
        }
        // The origin URL always comes first.
        if let Some(pos) = cands.iter().position(|c| c.node == NONE) {
            cands[..=pos].rotate_right(1);
        }
        // Primary: the best candidate that precedes the consumer and is
        // within the relay-hop bound; hysteresis keeps a healthy previous
        // primary unless the new best is clearly better.
        let (rank, depth, is_root) = (&work.rank, &work.depth, &work.is_root);
        let admissible = |c: &Cand| {
            c.node == NONE
                || is_root[c.node]
                || (rank[c.node] < rank[consumer] && depth[c.node] <= max_hops)
        };
        let Some(mut first) = cands.iter().position(admissible) else {
            continue;
        };
        if let Some(&prev) = previous.get(consumer)
            && prev != NONE
            && let Some(pos) = cands.iter().position(|c| c.node == prev)
            && pos != first
            && admissible(&cands[pos])
            && !input
                .stability
                .should_switch(cands[pos].total, cands[first].total)
        {
            first = pos;
        }
        cands[..=first].rotate_right(1);
        let chosen = cands[0];
        if chosen.node != NONE {
            ctx.add_egress(chosen.node, src.bitrate_mbps);
            work.depth[consumer] = work.depth[chosen.node].saturating_add(1);
            work.primary[consumer] = chosen.node;
        } else {
            work.depth[consumer] = 0;
        }
        work.span[consumer] = (work.arena.len(), cands.len());
        work.arena.extend_from_slice(cands);
    }
}

/// Turns the ranked candidates into every consumer's route for `src`.
/// Backups: any other candidate whose own primary chain does not pass
/// through the consumer (so a failover never pulls from a node that pulls
/// from us), within the relay-hop bound; with hysteresis when the previous
/// plan had backups for the route ([`stable_backups`]).
pub(super) fn emit_routes(
    ctx: &Ctx<'_>,
    source: usize,
    src: &Source,
    previous: &[[u32; STICKY]],
    work: &mut Work,
    out: &mut Emitted,
) {
    let limits = &ctx.input.limits;
    let max_hops = limits.max_relay_hops;
    let Work {
        arena,
        span,
        depth,
        primary,
        hops,
        backs,
        ..
    } = work;
    for (consumer, &(start, len)) in span.iter().enumerate() {
        if len == 0 {
            continue;
        }
        let ranked = &arena[start..start + len];
        let valid = |c: &&Cand| {
            c.node == NONE
                || !(depth[c.node] > max_hops || chain_contains(primary, c.node, consumer))
        };
        backs.clear();
        match previous.get(consumer) {
            Some(prev) if prev[0] != NO_BACKUP => {
                stable_backups(ctx, &ranked[1..], prev, valid, backs);
            }
            _ => backs.extend(ranked[1..].iter().filter(valid).take(limits.max_backups)),
        }
        let first = out.backup_ids.len();
        out.backup_ids.extend(backs.iter().map(|c| c.node));
        out.chosen.push(Chosen {
            consumer,
            source,
            primary: ranked[0].node,
            backups: (first, backs.len()),
        });
        let mut list: Vec<Upstream> = Vec::with_capacity(1 + backs.len());
        for c in std::iter::once(&ranked[0]).chain(backs.iter()) {
            let u = c.node;
            list.push(if u == NONE {
                Upstream {
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
                }
            } else {
                out.upstream_ids[consumer].push(u);
                let node = ctx.nodes[u];
                Upstream {
                    kind: UpstreamKind::Node as i32,
                    node_id: node.id.clone(),
                    url: node.public_url.clone(),
                    score: quantise(c.total),
                    hops: hops[u],
                }
            });
        }
        out.routes[consumer].push(StreamRoute {
            stream: src.route.clone(),
            upstreams: list,
        });
    }
}

/// Backup hysteresis. `others`: the route's candidates after the primary,
/// ranked; `prev`: the previous backups. Previous backups that are still
/// valid candidates keep their order; free places go to the best valid
/// new candidates; a kept backup gives way only to a clearly better one
/// (`Stability::should_switch`), and moves ahead of another backup only
/// when clearly better than it. Deterministic, and the previous plan's
/// result when nothing changed.
pub(super) fn stable_backups<'c>(
    ctx: &Ctx<'_>,
    others: &'c [Cand],
    prev: &[u32; STICKY],
    valid: impl Fn(&&'c Cand) -> bool,
    backs: &mut Vec<Cand>,
) {
    let max = ctx.input.limits.max_backups;
    let stability = &ctx.input.stability;
    for &p in prev.iter().take_while(|&&p| p != NO_BACKUP) {
        let node = if p == ORIGIN_BACKUP { NONE } else { p as usize };
        if backs.len() >= max {
            break;
        }
        if let Some(c) = others.iter().find(|c| c.node == node)
            && valid(&c)
            && !backs.iter().any(|b| b.node == node)
        {
            backs.push(*c);
        }
    }
    let left_out = |backs: &[Cand]| {
        others
            .iter()
            .filter(|c| valid(c) && !backs.iter().any(|b| b.node == c.node))
            .min_by(|a, b| a.total.total_cmp(&b.total).then(a.key().cmp(&b.key())))
            .copied()
    };
    // Fill free places in rank order.
    while backs.len() < max {
        let Some(c) = others
            .iter()
            .find(|c| valid(c) && !backs.iter().any(|b| b.node == c.node))
        else {
            break;
        };
        backs.push(*c);
    }
    // A clearly better candidate replaces the worst backup.
    for _ in 0..max {
        let (Some(best_out), Some(worst)) = (
            left_out(backs),
            (0..backs.len()).max_by(|&a, &b| {
                backs[a]
                    .total
                    .total_cmp(&backs[b].total)
                    .then(backs[a].key().cmp(&backs[b].key()))
            }),
        ) else {
            break;
        };
        if !stability.should_switch(backs[worst].total, best_out.total) {
            break;
        }
        backs[worst] = best_out;
    }
    // Order: a backup passes the one ahead of it only when clearly better.
    for i in 1..backs.len() {
        let mut j = i;
        while j > 0 && stability.should_switch(backs[j - 1].total, backs[j].total) {
            backs.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// Whether following primaries up from `from` reaches `target`.
pub(super) fn chain_contains(primary: &[usize], from: usize, target: usize) -> bool {
    let mut cur = from;
    let mut steps = 0;
    while cur != NONE {
        if cur == target {
            return true;
        }
        steps += 1;
        if steps > primary.len() {
            return true; // defensive: a cycle would be a bug; refuse the backup
        }
        cur = primary[cur];
    }
    false
}

/// Scores in tables are quantised to 0.001 so load wobbles that change no
/// decision do not produce a new table version for every agent.
pub(super) fn quantise(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// Streams with their roots, in a deterministic order. An exact stream
/// published on a node is one source; a static-origin pattern configured
/// on one or more nodes is another.
pub(super) fn collect_sources(ctx: &Ctx<'_>) -> Vec<Source> {
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
pub(super) fn path_costs(ctx: &Ctx<'_>, src: &Source, work: &mut Work) {
    let n = ctx.nodes.len();
    let max_hops = ctx.input.limits.max_relay_hops;
    let Work {
        cost,
        hops,
        prev_cost,
        prev_hops,
        is_root,
        root_edges,
        ..
    } = work;
    cost.fill(f64::INFINITY);
    hops.fill(u32::MAX);
    for &(r, _) in &src.roots {
        cost[r] = 0.0;
        hops[r] = 0;
    }
    for _edge in 0..=max_hops {
        prev_cost.copy_from_slice(cost);
        prev_hops.copy_from_slice(hops);
        for v in 0..n {
            if is_root[v] {
                continue;
            }
            let via_roots = src
                .roots
                .iter()
                .enumerate()
                .filter(|(_, (r, _))| ctx.eligible[*r])
                .map(|(k, &(r, _))| (r, root_edges[k][v]));
            let via_relays = ctx.neighbours[v].iter().copied();
            for (u, e) in via_roots.chain(via_relays) {
                if !prev_cost[u].is_finite() || prev_hops[u] > max_hops {
                    continue;
                }
                let c = prev_cost[u] + (e + ctx.load_term[u]);
                if c < cost[v] - 1e-12 {
                    cost[v] = c;
                    hops[v] = prev_hops[u] + 1;
                }
            }
        }
    }
}
