//! Candidate ranking of one source: every consumer's upstream candidates
//! in the strict order (path cost, id), spreading among near-equal ones,
//! the primary with hysteresis, and the load the primary adds to its
//! upstream. Also the integer sort keys the ranking sorts by.

use super::*;

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

    /// The candidate as an integer in ranking order: `total` (in the order
    /// of `total_cmp`) then [`Cand::key`]. Reversed by [`Cand::from_rank_key`].
    pub(super) fn rank_key(&self) -> u128 {
        (u128::from(total_order_bits(self.total)) << 64) | self.key() as u128
    }

    pub(super) fn from_rank_key(k: u128) -> Cand {
        Cand {
            node: (k as u64 as usize).wrapping_sub(1),
            total: from_total_order_bits((k >> 64) as u64),
        }
    }
}

/// Working memory of path costs and ranking, allocated once per plan and
/// reused for every source (a plan has up to one source per stream).
pub(super) struct Work {
    /// Best path cost from the source, per node.
    pub(super) cost: Vec<f64>,
    /// Nodes whose cost improved in the last relaxation round, and what
    /// each node offers its consumers in the next ([`path_costs`]).
    pub(super) changed: Vec<bool>,
    pub(super) offers: Vec<Offer>,
    pub(super) is_root: Vec<bool>,
    /// Consumers in the strict order (cost, id) and each one's position;
    /// `keyed` and `keyed_tmp` are the sort's scratch (cost as an ordered
    /// integer, id).
    pub(super) keyed: Vec<(u64, usize)>,
    pub(super) keyed_tmp: Vec<(u64, usize)>,
    pub(super) order: Vec<usize>,
    pub(super) rank: Vec<usize>,
    /// Per node: (path cost, load term) as a relay candidate, cost ∞ when
    /// it cannot relay (`rank_candidates`).
    pub(super) relay_offer: Vec<(f64, f64)>,
    /// One consumer's candidates, as sort keys, and the near-equal ones
    /// with their spreading hashes.
    pub(super) cands: Vec<Cand>,
    pub(super) sorted: Vec<u128>,
    pub(super) hashed: Vec<(u64, Cand)>,
}

impl Work {
    pub(super) fn new(n: usize) -> Self {
        Work {
            cost: vec![f64::INFINITY; n],
            changed: vec![false; n],
            offers: Vec::with_capacity(n),
            is_root: vec![false; n],
            keyed: Vec::with_capacity(n),
            keyed_tmp: Vec::with_capacity(n),
            order: (0..n).collect(),
            rank: vec![0; n],
            relay_offer: Vec::with_capacity(n),
            cands: Vec::new(),
            sorted: Vec::new(),
            hashed: Vec::new(),
        }
    }
}

/// Load-free edge score root → node, per root of a source (empty for
/// ineligible roots).
pub(super) type RootEdges = Vec<Vec<f64>>;

/// One source's ranking, all that [`decide_routes`] needs of it.
pub(super) struct Ranked {
    /// Hop count of each node on its best path (root 0).
    pub(super) hops: Vec<u32>,
    /// Primary upstream ([`NONE`] if none) and relay depth (root 0).
    pub(super) primary: Vec<usize>,
    pub(super) depth: Vec<u32>,
    /// Ranked candidates of every consumer, `span[consumer]` into `arena`.
    pub(super) arena: Vec<Cand>,
    pub(super) span: Vec<(usize, usize)>,
}

impl Ranked {
    pub(super) fn new(n: usize) -> Self {
        Ranked {
            hops: vec![u32::MAX; n],
            primary: vec![NONE; n],
            depth: vec![u32::MAX; n],
            arena: Vec::new(),
            span: vec![(0, 0); n],
        }
    }
}

/// Ranks every consumer's candidates for `src` in the strict order
/// (path cost, id) and picks primaries, with hysteresis and load accounting.
pub(super) fn rank_candidates(
    ctx: &Ctx<'_>,
    load: &mut Load<'_>,
    src: &Source,
    edges: &RootEdges,
    previous: &[usize],
    work: &mut Work,
    ranked: &mut Ranked,
) {
    let n = ctx.nodes.len();
    let input = ctx.input;
    let max_hops = input.limits.max_relay_hops;
    let near_equal = input.stability.near_equal;
    // Consumers in the strict order (cost, id): a primary upstream must
    // precede its consumer, so primaries form a tree rooted at the origin.
    work.keyed.clear();
    work.keyed.extend(
        work.cost
            .iter()
            .enumerate()
            .map(|(i, &c)| (total_order_bits(c), i)),
    );
    radix_sort(&mut work.keyed, &mut work.keyed_tmp);
    work.order.clear();
    work.order.extend(work.keyed.iter().map(|&(_, i)| i));
    for (pos, &i) in work.order.iter().enumerate() {
        work.rank[i] = pos;
    }
    // What each node offers as a relay, in one place: its path cost (∞
    // when it cannot relay: a root, which is a candidate as such, or a
    // node unreached or beyond the hop bound) and its current load term.
    work.relay_offer.clear();
    work.relay_offer.extend((0..n).map(|u| {
        let relays = !work.is_root[u] && work.cost[u].is_finite() && ranked.hops[u] <= max_hops;
        let cost = if relays { work.cost[u] } else { f64::INFINITY };
        (cost, load.term[u])
    }));
    let Ranked {
        primary,
        depth,
        arena,
        span,
        ..
    } = ranked;
    primary.fill(NONE);
    depth.fill(u32::MAX);
    for &(r, _) in &src.roots {
        depth[r] = 0;
    }
    arena.clear();
    span.fill((0, 0));
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
        // The roots, then the relay candidates, skipping the consumer,
        // ineligible and unreached nodes, duplicates and relays beyond the
        // hop bound. (Relay candidates are eligible and distinct, never the
        // consumer; an eligible root other than the consumer is always
        // among the candidates already.)
        let cost = &work.cost;
        for (k, &(u, _)) in src.roots.iter().enumerate() {
            if u == consumer
                || !ctx.eligible[u]
                || !cost[u].is_finite()
                || cands.iter().any(|c| c.node == u)
            {
                continue;
            }
            cands.push(Cand {
                node: u,
                total: cost[u] + (edges[k][consumer] + load.term[u]),
            });
        }
        for &(u, edge) in ctx.neighbours(consumer) {
            let (cost, load) = work.relay_offer[u];
            if cost.is_finite() {
                cands.push(Cand {
                    node: u,
                    total: cost + (edge + load),
                });
            }
        }
        if cands.is_empty() {
            continue;
        }
        // Best first; near-equal candidates spread by a rendezvous hash of
        // (id, consumer, route) — `score::rank_with_spreading` on indices.
        // Sorted as integers: the order of `total_cmp` then key.
        work.sorted.clear();
        work.sorted.extend(cands.iter().map(Cand::rank_key));
        work.sorted.sort_unstable();
        for (c, &k) in cands.iter_mut().zip(&work.sorted) {
            *c = Cand::from_rank_key(k);
        }
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
        let (rank, is_root) = (&work.rank, &work.is_root);
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
            load.add_egress(chosen.node, src.bitrate_mbps);
            work.relay_offer[chosen.node].1 = load.term[chosen.node];
            depth[consumer] = depth[chosen.node].saturating_add(1);
            primary[consumer] = chosen.node;
        } else {
            depth[consumer] = 0;
        }
        span[consumer] = (arena.len(), cands.len());
        arena.extend_from_slice(cands);
    }
}

/// `x` as an unsigned integer in the order of [`f64::total_cmp`]: its
/// bits with all but the sign bit flipped for negative numbers (as
/// `total_cmp` does before comparing them as signed integers), and the
/// sign bit flipped (signed order as unsigned order).
pub(super) fn total_order_bits(x: f64) -> u64 {
    let bits = x.to_bits() as i64;
    (bits ^ ((((bits >> 63) as u64) >> 1) as i64)) as u64 ^ (1 << 63)
}

/// The `f64` of [`total_order_bits`] (which it inverts).
pub(super) fn from_total_order_bits(key: u64) -> f64 {
    let bits = (key ^ (1 << 63)) as i64;
    f64::from_bits((bits ^ ((((bits >> 63) as u64) >> 1) as i64)) as u64)
}

/// Sorts `items` by key, stably (so items that come in index order end
/// in (key, index) order): a least-significant-digit radix sort on bytes,
/// skipping the bytes that all keys share. `tmp` is scratch.
pub(super) fn radix_sort(items: &mut Vec<(u64, usize)>, tmp: &mut Vec<(u64, usize)>) {
    let mut counts = [[0usize; 256]; 8];
    for &(key, _) in items.iter() {
        for (byte, count) in counts.iter_mut().enumerate() {
            count[(key >> (8 * byte)) as usize & 0xff] += 1;
        }
    }
    for (byte, count) in counts.iter_mut().enumerate() {
        if count.contains(&items.len()) {
            continue; // every key has the same byte here
        }
        let mut at = 0;
        for c in count.iter_mut() {
            (*c, at) = (at, at + *c);
        }
        tmp.resize(items.len(), (0, 0));
        for &(key, i) in items.iter() {
            let slot = &mut count[(key >> (8 * byte)) as usize & 0xff];
            tmp[*slot] = (key, i);
            *slot += 1;
        }
        std::mem::swap(items, tmp);
    }
}
