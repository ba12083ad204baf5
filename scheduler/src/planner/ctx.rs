//! The plan's indexed view of its input: nodes in id order by dense
//! index, edge scores, nearest peers (R-tree), relay candidates and probe
//! targets, and the small helpers (hashing, threads) they use.

use super::*;
/// Index of "no node" in the planner's dense node indices (the consumer's
/// own static origin URL, an unset primary).
pub(super) const NONE: usize = usize::MAX;

/// Read-only facts of one plan and the load accounting. Nodes are indexed
/// densely in id order, so comparing indices is comparing ids.
pub(super) struct Ctx<'a> {
    pub(super) input: &'a PlanInput,
    pub(super) nodes: Vec<&'a NodeView>,
    /// Node index by id.
    pub(super) index: HashMap<&'a str, usize>,
    pub(super) eligible: Vec<bool>,
    /// Projected egress per node (reported + assigned by this plan), Mbps.
    pub(super) egress: Vec<f64>,
    /// `load_weight · P(projected utilisation)` per node: the load term of
    /// every edge leaving the node, kept in step with `egress`.
    pub(super) load_term: Vec<f64>,
    /// Per consumer: its best `relay_candidates` eligible peers with the
    /// load-free part of their edge score, best first.
    pub(super) neighbours: Vec<Vec<(usize, f64)>>,
    pub(super) load_weight: f64,
    /// Nodes with coordinates as points on a sphere (km), for nearest
    /// neighbours in O(log n) instead of scanning every node.
    pub(super) spatial: RTree<GeomWithData<[f64; 3], usize>>,
    /// FNV-1a state of [`rendezvous`] after each node's id and separator,
    /// so spreading hashes only the salt per candidate.
    pub(super) fnv_prefix: Vec<u64>,
    /// The probe rotation epoch, as [`rendezvous`] salts it.
    pub(super) epoch: String,
    /// Per node: latitude in radians and its cosine (haversine terms).
    pub(super) lat_rad: Vec<(f64, f64)>,
    /// Per node: measured paths with enough samples, by peer index, sorted.
    pub(super) paths: Vec<Vec<(usize, PathStat)>>,
    /// Per node: its buffer input (measured, or the neutral default).
    pub(super) buffer: Vec<Input>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(input: &'a PlanInput) -> Self {
        let mut nodes: Vec<&NodeView> = input.nodes.iter().collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes.dedup_by(|a, b| a.id == b.id);
        let n = nodes.len();
        let weight_sum = input.weights.sum().max(f64::MIN_POSITIVE);
        let spatial = RTree::bulk_load(
            nodes
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.coord.map(|c| GeomWithData::new(c.sphere_point(), i)))
                .collect(),
        );
        let epoch = input
            .now_ms
            .div_euclid(input.limits.probe_rotation_ms.max(1));
        let mut ctx = Ctx {
            input,
            index: nodes
                .iter()
                .enumerate()
                .map(|(i, v)| (v.id.as_str(), i))
                .collect(),
            eligible: nodes.iter().map(|v| eligible(v, &input.ranges)).collect(),
            egress: nodes.iter().map(|v| v.egress_mbps.max(0.0)).collect(),
            load_term: vec![0.0; n],
            neighbours: Vec::new(),
            load_weight: input.weights.load / weight_sum,
            spatial,
            fnv_prefix: nodes
                .iter()
                .map(|v| fnv(fnv(FNV_OFFSET, v.id.as_bytes()), &[0xff]))
                .collect(),
            epoch: epoch.to_string(),
            lat_rad: nodes
                .iter()
                .map(|v| {
                    let t = v.coord.map_or(0.0, |c| c.lat.to_radians());
                    (t, t.cos())
                })
                .collect(),
            paths: Vec::new(),
            buffer: nodes
                .iter()
                .map(|v| match v.buffer_ms {
                    Some(b) => Input::measured(b),
                    None => Input::default_value(input.ranges.buffer_ms.hi),
                })
                .collect(),
            nodes,
        };
        ctx.paths = ctx
            .nodes
            .iter()
            .map(|v| {
                let mut p: Vec<(usize, PathStat)> = v
                    .paths
                    .iter()
                    .filter_map(|(peer, s)| ctx.index.get(peer.as_str()).map(|&u| (u, *s)))
                    .collect();
                p.sort_by_key(|&(u, _)| u);
                p
            })
            .collect();
        for u in 0..n {
            ctx.load_term[u] = ctx.load_of(u);
        }
        ctx
    }

    /// [`edge_inputs`]`(u, n, ..., 0.0)` on the plan's indices: the same
    /// numbers, bit for bit, without string lookups or repeated trigonometry.
    pub(super) fn edge_inputs_at(&self, u: usize, n: usize) -> Inputs {
        let (ranges, limits) = (&self.input.ranges, &self.input.limits);
        let find = |from: usize, to: usize| {
            let p = &self.paths[from];
            p.binary_search_by_key(&to, |&(v, _)| v)
                .ok()
                .map(|i| p[i].1)
        };
        let measured = find(n, u)
            .or_else(|| find(u, n))
            .filter(|p| p.samples >= limits.min_path_samples);
        let km = match (self.nodes[u].coord, self.nodes[n].coord) {
            (Some(a), Some(b)) => {
                Input::modelled(haversine_km((a, self.lat_rad[u].1), (b, self.lat_rad[n].1)))
            }
            _ => Input::default_value((ranges.km.lo + ranges.km.hi) / 2.0),
        };
        let (rtt_ms, loss) = super::rtt_and_loss(measured.as_ref(), &km);
        Inputs {
            rtt_ms,
            loss,
            buffer_ms: self.buffer[u],
            utilisation: Input::measured(0.0),
            km,
        }
    }

    pub(super) fn util(&self, i: usize) -> f64 {
        let cap = self.nodes[i].capacity_mbps;
        if cap > 0.0 { self.egress[i] / cap } else { 1.0 }
    }

    pub(super) fn load_of(&self, u: usize) -> f64 {
        self.load_weight * self.input.ranges.load_penalty(self.util(u))
    }

    /// Assigns a pull of `mbps` to `u`.
    pub(super) fn add_egress(&mut self, u: usize, mbps: f64) {
        self.egress[u] += mbps;
        self.load_term[u] = self.load_of(u);
    }

    /// Edge score without the load term (computed with utilisation 0,
    /// whose penalty is 0).
    pub(super) fn static_edge(&self, u: usize, n: usize) -> f64 {
        let i = self.input;
        score_value(&i.weights, &i.ranges, &self.edge_inputs_at(u, n))
    }

    /// Up to `limit` nodes nearest to `i` (not `i` itself) passing `keep`,
    /// looking at no more than `scan` candidates.
    pub(super) fn nearest(
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
            .nearest_neighbor_iter(&c.sphere_point())
            .map(|p| p.data)
            .filter(|&u| u != i)
            .take(scan)
            .filter(|&u| keep(u))
            .take(limit)
            .collect()
    }

    /// [`rendezvous`]`(id of u, "{consumer id}\u{1f}{route}")`, `u` = [`NONE`]
    /// for the origin URL (id "").
    pub(super) fn spread_hash(&self, u: usize, consumer: usize, route: &str) -> u64 {
        let prefix = match u {
            NONE => fnv(FNV_OFFSET, &[0xff]),
            u => self.fnv_prefix[u],
        };
        let h = fnv(prefix, self.nodes[consumer].id.as_bytes());
        finalise(fnv(fnv(h, &[0x1f]), route.as_bytes()))
    }
}

/// `a.km_to(&b)` ([`Coord::km_to`], geo's haversine on its mean Earth
/// radius) with `cos(lat)` of both ends precomputed: the same operations in
/// the same order, so the same bits (checked by a test).
pub(super) fn haversine_km((a, cos_a): (Coord, f64), (b, cos_b): (Coord, f64)) -> f64 {
    const RADIUS_M: f64 = 6_371_008.8;
    let delta_theta = (b.lat - a.lat).to_radians();
    let delta_lambda = (b.lon - a.lon).to_radians();
    let h = (delta_theta / 2.0).sin().powi(2) + cos_a * cos_b * (delta_lambda / 2.0).sin().powi(2);
    RADIUS_M * (2.0 * h.sqrt().asin()) / 1000.0
}

pub(super) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes` from state `h` (the first half of [`rendezvous`]).
pub(super) fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The splitmix64 finaliser of [`rendezvous`].
pub(super) fn finalise(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Each node's best `relay_candidates` eligible peers by load-free edge
/// score. Exact scores are computed only for a short list: the nearest
/// eligible peers (2× the bound, from the R-tree) plus every peer with a
/// path measurement in either direction — for unmeasured pairs the score
/// grows with distance, so farther peers cannot beat the short list except
/// through better buffer health, a deliberate simplification. Nodes
/// without coordinates consider every eligible peer.
pub(super) fn relay_candidates(ctx: &Ctx<'_>, threads: usize) -> Vec<Vec<(usize, f64)>> {
    let n = ctx.nodes.len();
    let k = ctx.input.limits.relay_candidates.max(1);
    // measured_by[v] = nodes that measured v (reverse of `paths`).
    let mut measured_by: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (u, node) in ctx.nodes.iter().enumerate() {
        for peer in node.paths.keys() {
            if let Some(&v) = ctx.index.get(peer.as_str()) {
                measured_by[v].push(u);
            }
        }
    }
    par_map(n, threads, |v| {
        let mut pool: Vec<usize> = Vec::new();
        if ctx.nodes[v].coord.is_some() {
            pool.extend(ctx.nearest(v, 2 * k, 16 * k + 64, |u| ctx.eligible[u]));
        } else {
            pool.extend((0..n).filter(|&u| u != v && ctx.eligible[u]));
        }
        pool.extend(
            ctx.nodes[v]
                .paths
                .keys()
                .filter_map(|p| ctx.index.get(p.as_str()).copied())
                .chain(measured_by[v].iter().copied())
                .filter(|&u| u != v && ctx.eligible[u]),
        );
        pool.sort_unstable();
        pool.dedup();
        let mut e: Vec<(usize, f64)> = pool.iter().map(|&u| (u, ctx.static_edge(u, v))).collect();
        e.sort_unstable_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        e.truncate(k);
        e
    })
}

/// Below this many nodes a plan takes a few milliseconds: no threads.
pub(super) const PARALLEL_MIN_NODES: usize = 256;

/// `(0..n).map(f).collect()`, on up to `threads` scoped threads over
/// contiguous chunks, joined in order.
pub(super) fn par_map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if threads <= 1 || n < 2 {
        return (0..n).map(f).collect();
    }
    let chunk = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                scope.spawn(move || (start..(start + chunk).min(n)).map(f).collect::<Vec<T>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(part) => part,
                // A panic in a worker is a planner bug: re-raise it here.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// `upstreams`: the node's upstream candidates, sorted, without duplicates.
pub(super) fn probe_targets(ctx: &Ctx<'_>, i: usize, upstreams: &[usize]) -> Vec<ProbeTarget> {
    let limits = &ctx.input.limits;
    let me = ctx.nodes[i];
    let mut out: Vec<ProbeTarget> = Vec::new();
    let mut chosen: Vec<usize> = Vec::new();
    let mut push = |out: &mut Vec<ProbeTarget>, u: usize, reason: ProbeReason| {
        let peer = ctx.nodes[u];
        if u == i
            || peer.probe_addr.is_empty()
            || matches!(peer.health, Health::Down)
            || out.len() >= limits.probe_max
            || chosen.contains(&u)
        {
            return;
        }
        chosen.push(u);
        out.push(ProbeTarget {
            node_id: peer.id.clone(),
            addr: peer.probe_addr.clone(),
            reason: reason as i32,
        });
    };
    for &u in upstreams {
        if out.len() >= limits.probe_max {
            break;
        }
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
        let mut rng = rand::rngs::StdRng::seed_from_u64(rendezvous(&me.id, &ctx.epoch));
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
