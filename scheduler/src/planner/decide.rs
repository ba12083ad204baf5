//! Routes decided from a source's ranking: the primary, then backups that
//! cannot loop back through the consumer, with backup hysteresis.

use super::*;

/// Working memory of [`decide_routes`].
#[derive(Default)]
pub(super) struct DecideWork {
    pub(super) backs: Vec<Cand>,
    /// Whether each candidate after the primary may be a backup (one
    /// consumer's).
    pub(super) valid: Vec<bool>,
    /// Per node: its primary chain (itself, its primary, ...) padded with
    /// [`NONE`], or `None` if longer than [`CHAIN`].
    pub(super) chains: Vec<Option<[usize; CHAIN]>>,
}

/// Decides every consumer's route for `src` from the ranked candidates:
/// the primary, then backups — any other candidate whose own primary
/// chain does not pass through the consumer (so a failover never pulls
/// from a node that pulls from us), within the relay-hop bound; with
/// hysteresis when the previous plan had backups for the route
/// ([`stable_backups`]). Records them in `out` (by consumer).
pub(super) fn decide_routes(
    ctx: &Ctx<'_>,
    source: usize,
    previous: &[[u32; STICKY]],
    ranked: &Ranked,
    work: &mut DecideWork,
    out: &mut [Decided],
) {
    let limits = &ctx.input.limits;
    let max_hops = limits.max_relay_hops;
    let Ranked {
        hops,
        primary,
        depth,
        arena,
        span,
    } = ranked;
    let DecideWork {
        backs,
        valid,
        chains,
    } = work;
    chains.clear();
    chains.extend((0..primary.len()).map(|u| chain_of(primary, u)));
    for (consumer, &(start, len)) in span.iter().enumerate() {
        if len == 0 {
            continue;
        }
        let ranked = &arena[start..start + len];
        let on_chain = |u: usize| match &chains[u] {
            Some(chain) => chain.contains(&consumer),
            None => chain_contains(primary, u, consumer),
        };
        let is_valid = |c: &Cand| c.node == NONE || !(depth[c.node] > max_hops || on_chain(c.node));
        backs.clear();
        match previous.get(consumer) {
            Some(prev) if prev[0] != NO_BACKUP => {
                valid.clear();
                valid.extend(ranked[1..].iter().map(is_valid));
                stable_backups(ctx, &ranked[1..], valid, prev, backs);
            }
            _ => backs.extend(
                ranked[1..]
                    .iter()
                    .filter(|c| is_valid(c))
                    .take(limits.max_backups),
            ),
        }
        let decided = &mut out[consumer];
        decided.routes.push((source, 1 + backs.len()));
        decided
            .ups
            .extend(std::iter::once(&ranked[0]).chain(backs.iter()).map(|c| Up {
                node: c.node,
                total: c.total,
                hops: if c.node == NONE { 0 } else { hops[c.node] },
            }));
    }
}

/// Backup hysteresis. `others`: the route's candidates after the primary,
/// ranked; `valid`: whether each may be a backup; `prev`: the previous
/// backups. Previous backups that are still valid candidates keep their
/// order; free places go to the best valid new candidates; a kept backup
/// gives way only to a clearly better one (`Stability::should_switch`),
/// and moves ahead of another backup only when clearly better than it.
/// Deterministic, and the previous plan's result when nothing changed.
pub(super) fn stable_backups(
    ctx: &Ctx<'_>,
    others: &[Cand],
    valid: &[bool],
    prev: &[u32; STICKY],
    backs: &mut Vec<Cand>,
) {
    let max = ctx.input.limits.max_backups;
    let stability = &ctx.input.stability;
    let candidates = || {
        others
            .iter()
            .zip(valid)
            .filter(|&(_, &ok)| ok)
            .map(|(c, _)| c)
    };
    for &p in prev.iter().take_while(|&&p| p != NO_BACKUP) {
        let node = if p == ORIGIN_BACKUP { NONE } else { p as usize };
        if backs.len() >= max {
            break;
        }
        if let Some(i) = others.iter().position(|c| c.node == node)
            && valid[i]
            && !backs.iter().any(|b| b.node == node)
        {
            backs.push(others[i]);
        }
    }
    let left_out = |backs: &[Cand]| {
        candidates()
            .filter(|c| !backs.iter().any(|b| b.node == c.node))
            .min_by(|a, b| a.total.total_cmp(&b.total).then(a.key().cmp(&b.key())))
            .copied()
    };
    // Fill free places in rank order.
    while backs.len() < max {
        let Some(c) = candidates().find(|c| !backs.iter().any(|b| b.node == c.node)) else {
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

/// Nodes kept of a primary chain by [`chain_of`]: a node at the relay-hop
/// bound (2 by default), its primary, the root.
pub(super) const CHAIN: usize = 4;

/// `u`, its primary, its primary's primary... while they are nodes, padded
/// with [`NONE`]; `None` if there are more than [`CHAIN`]. For a known
/// chain, [`chain_contains`]`(primary, u, target)` is whether it holds
/// `target` (the walk ends at [`NONE`] well within its cycle guard).
pub(super) fn chain_of(primary: &[usize], u: usize) -> Option<[usize; CHAIN]> {
    let mut chain = [NONE; CHAIN];
    let mut cur = u;
    for slot in &mut chain {
        if cur == NONE {
            return Some(chain);
        }
        *slot = cur;
        cur = primary[cur];
    }
    (cur == NONE).then_some(chain)
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
