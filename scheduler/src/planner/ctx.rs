//! The plan's indexed view of its input: nodes in id order by dense
//! index, edge scores, nearest peers (R-tree), relay candidates and probe
//! targets, and the small helpers (hashing, threads) they use.

use super::*;
use std::hash::BuildHasherDefault;

/// Index of "no node" in the planner's dense node indices (the consumer's
/// own static origin URL, an unset primary).
pub(super) const NONE: usize = usize::MAX;

/// Read-only facts of one plan (the load accounting is [`Load`]). Nodes
/// are indexed densely in id order, so comparing indices is comparing ids.
pub(super) struct Ctx<'a> {
    pub(super) input: &'a PlanInput,
    pub(super) nodes: Vec<&'a NodeView>,
    /// Node index by id.
    pub(super) index: HashMap<&'a str, usize, BuildHasherDefault<IdHasher>>,
    pub(super) eligible: Vec<bool>,
    /// Per consumer `v`: its best `relay_candidates` eligible peers with
    /// the load-free part of their edge score, best first, as
    /// `relays[relay_start[v]..relay_start[v + 1]]` (see [`Ctx::neighbours`]).
    pub(super) relays: Vec<(usize, f64)>,
    pub(super) relay_start: Vec<usize>,
    /// Per node: its nearest probeable peers (`probe_nearest` at most),
    /// nearest first.
    pub(super) near_probes: Vec<Vec<usize>>,
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
        let spatial = RTree::bulk_load(
            nodes
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.coord.map(|c| GeomWithData::new(c.sphere_point(), i)))
                .collect(),
        );
        let epoch = input.limits.probe_epoch(input.now_ms);
        let mut ctx = Ctx {
            input,
            index: nodes
                .iter()
                .enumerate()
                .map(|(i, v)| (v.id.as_str(), i))
                .collect(),
            eligible: nodes.iter().map(|v| eligible(v, &input.ranges)).collect(),
            relays: Vec::new(),
            relay_start: vec![0; n + 1],
            near_probes: Vec::new(),
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
        let measured = measured_path(find(n, u), || find(u, n), limits.min_path_samples);
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

    pub(super) fn set_nearest_peers(&mut self, peers: NearestPeers) {
        self.relays = peers.relays;
        self.relay_start = peers.relay_start;
        self.near_probes = peers.near_probes;
    }

    /// The relay candidates of consumer `v` with their load-free edge
    /// scores, best first (empty before [`nearest_peers`]).
    pub(super) fn neighbours(&self, v: usize) -> &[(usize, f64)] {
        match (self.relay_start.get(v), self.relay_start.get(v + 1)) {
            (Some(&a), Some(&b)) => &self.relays[a..b],
            _ => &[],
        }
    }

    /// Edge score without the load term (computed with utilisation 0,
    /// whose penalty is 0).
    pub(super) fn static_edge(&self, u: usize, n: usize) -> f64 {
        let i = self.input;
        score_value(&i.weights, &i.ranges, &self.edge_inputs_at(u, n))
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

/// The load accounting of a plan: every primary assignment adds the
/// stream's bit rate to the upstream's projected egress. Apart from [`Ctx`]
/// so that the read-only facts can be shared while it changes.
pub(super) struct Load<'a> {
    ctx: &'a Ctx<'a>,
    /// Projected egress per node (reported + assigned by this plan), Mbps.
    egress: Vec<f64>,
    /// `weight · P(projected utilisation)` per node: the load term of
    /// every edge leaving the node, kept in step with `egress`.
    pub(super) term: Vec<f64>,
    weight: f64,
}

impl<'a> Load<'a> {
    pub(super) fn new(ctx: &'a Ctx<'a>) -> Self {
        let weights = &ctx.input.weights;
        let mut load = Load {
            ctx,
            egress: ctx.nodes.iter().map(|v| v.egress_mbps.max(0.0)).collect(),
            term: vec![0.0; ctx.nodes.len()],
            weight: weights.load / weights.sum().max(f64::MIN_POSITIVE),
        };
        for u in 0..ctx.nodes.len() {
            load.term[u] = load.term_of(u);
        }
        load
    }

    fn util(&self, i: usize) -> f64 {
        let cap = self.ctx.nodes[i].capacity_mbps;
        if cap > 0.0 { self.egress[i] / cap } else { 1.0 }
    }

    fn term_of(&self, u: usize) -> f64 {
        self.weight * self.ctx.input.ranges.load_penalty(self.util(u))
    }

    /// Assigns a pull of `mbps` to `u`.
    pub(super) fn add_egress(&mut self, u: usize, mbps: f64) {
        self.egress[u] += mbps;
        self.term[u] = self.term_of(u);
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

/// The hasher of [`Ctx::index`]: FNV-1a with the splitmix finaliser. A plan
/// looks ids up a few times per route (the previous plan's choices), and
/// for short ids this is several times cheaper than the default SipHash,
/// whose resistance to chosen colliding keys is not needed for the ids of
/// the cluster's own nodes.
pub(super) struct IdHasher(u64);

impl Default for IdHasher {
    fn default() -> Self {
        IdHasher(FNV_OFFSET)
    }
}

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        finalise(self.0)
    }
}

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

/// [`Ctx::relays`] (when `relays` is set: the plan has sources) and
/// [`Ctx::near_probes`], from one nearest-neighbour walk of the R-tree per
/// node.
///
/// Relay candidates: each node's best `relay_candidates` eligible peers by
/// load-free edge score. Exact scores are computed only for a short list:
/// the nearest eligible peers (2× the bound among the nearest 16× the
/// bound + 64) plus every peer with a path measurement in either direction
/// — for unmeasured pairs the score grows with distance, so farther peers
/// cannot beat the short list except through better buffer health, a
/// deliberate simplification. Nodes without coordinates consider every
/// eligible peer.
///
/// Nearest probe targets: the nearest `probe_nearest` peers that can be
/// probed among the nearest `8 × probe_nearest + 32`.
pub(super) fn nearest_peers(ctx: &Ctx<'_>, relays: bool, threads: usize) -> NearestPeers {
    let n = ctx.nodes.len();
    let limits = &ctx.input.limits;
    let k = limits.relay_candidates.max(1);
    let (relay_scan, relay_limit) = if relays { (16 * k + 64, 2 * k) } else { (0, 0) };
    let (probe_scan, probe_limit) = (8 * limits.probe_nearest + 32, limits.probe_nearest);
    // measured_by[v] = nodes that measured v (reverse of `paths`).
    let mut measured_by: Vec<Vec<usize>> = vec![Vec::new(); n];
    if relays {
        for (u, paths) in ctx.paths.iter().enumerate() {
            for &(v, _) in paths {
                measured_by[v].push(u);
            }
        }
    }
    let probeable = |u: usize| {
        !ctx.nodes[u].probe_addr.is_empty() && !matches!(ctx.nodes[u].health, Health::Down)
    };
    let per_node = par_map(n, threads, |v| {
        // Nearest first (not `v` itself): each list takes the peers it
        // keeps among its first `scan` until it has `limit` of them.
        let mut pool: Vec<usize> = Vec::new();
        let mut near: Vec<usize> = Vec::new();
        if let Some(c) = ctx.nodes[v].coord {
            let nearest = ctx.spatial.nearest_neighbor_iter(&c.sphere_point());
            for (seen, u) in nearest.map(|p| p.data).filter(|&u| u != v).enumerate() {
                let relay_open = seen < relay_scan && pool.len() < relay_limit;
                let probe_open = seen < probe_scan && near.len() < probe_limit;
                if !relay_open && !probe_open {
                    break;
                }
                if relay_open && ctx.eligible[u] {
                    pool.push(u);
                }
                if probe_open && probeable(u) {
                    near.push(u);
                }
            }
        } else if relays {
            pool.extend((0..n).filter(|&u| u != v && ctx.eligible[u]));
        }
        if !relays {
            return (Vec::new(), near);
        }
        pool.extend(
            ctx.paths[v]
                .iter()
                .map(|&(u, _)| u)
                .chain(measured_by[v].iter().copied())
                .filter(|&u| u != v && ctx.eligible[u]),
        );
        pool.sort_unstable();
        pool.dedup();
        let mut e: Vec<(usize, f64)> = pool.iter().map(|&u| (u, ctx.static_edge(u, v))).collect();
        e.sort_unstable_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        e.truncate(k);
        (e, near)
    });
    let mut peers = NearestPeers {
        relays: Vec::new(),
        relay_start: vec![0],
        near_probes: Vec::with_capacity(n),
    };
    for (relays, near) in per_node {
        peers.relays.extend(relays);
        peers.relay_start.push(peers.relays.len());
        peers.near_probes.push(near);
    }
    peers
}

/// What [`nearest_peers`] finds, for [`Ctx::set_nearest_peers`].
pub(super) struct NearestPeers {
    relays: Vec<(usize, f64)>,
    relay_start: Vec<usize>,
    near_probes: Vec<Vec<usize>>,
}

/// Below this many nodes a plan takes a few milliseconds: no threads.
pub(super) const PARALLEL_MIN_NODES: usize = 256;

/// `(0..n).map(f).collect()`, on up to `threads` threads over chunks of
/// consecutive indices ([`par_tasks`]), joined in order.
pub(super) fn par_map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if threads <= 1 || n < 2 {
        return (0..n).map(f).collect();
    }
    // A few chunks per thread, so that a thread slowed down by others
    // does not hold up the rest.
    let chunk = n.div_ceil(4 * threads);
    let chunks = par_tasks(n.div_ceil(chunk), threads, |c| {
        (c * chunk..n.min((c + 1) * chunk))
            .map(&f)
            .collect::<Vec<T>>()
    });
    chunks.into_iter().flatten().collect()
}

/// `(0..tasks).map(f).collect()`: the tasks are taken in turn by up to
/// `threads` threads (the caller one of them), so a thread that is done
/// early takes more; the results come in task order, whatever thread ran
/// each task.
pub(super) fn par_tasks<T: Send>(
    tasks: usize,
    threads: usize,
    f: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    let threads = threads.min(tasks);
    if threads <= 1 {
        return (0..tasks).map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let run = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= tasks {
                return done;
            }
            done.push((i, f(i)));
        }
    };
    let mut done = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(run)).collect();
        let mut done = run();
        for helper in helpers {
            done.extend(joined(helper));
        }
        done
    });
    done.sort_unstable_by_key(|&(i, _)| i);
    done.into_iter().map(|(_, value)| value).collect()
}

/// `(a(), b())`, with `b` on a second thread when `parallel`.
pub(super) fn join<A, B: Send>(
    parallel: bool,
    a: impl FnOnce() -> A,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    if !parallel {
        return (a(), b());
    }
    std::thread::scope(|scope| {
        let b = scope.spawn(b);
        (a(), joined(b))
    })
}

/// The result of a scoped thread; a panic in it (a planner bug) is
/// re-raised here.
pub(super) fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
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
    for &u in &ctx.near_probes[i] {
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
