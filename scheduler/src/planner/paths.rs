//! Path costs of one source: load-free edge scores from its roots, and
//! the best path cost and hop count of every node (a layered
//! Bellman–Ford over the relay candidates, bounded by `max_relay_hops`).

use super::*;

/// Load-free edge scores from every eligible root of `src` to every node.
pub(super) fn root_edges(ctx: &Ctx<'_>, src: &Source, edges: &mut RootEdges) {
    let n = ctx.nodes.len();
    if edges.len() < src.roots.len() {
        edges.resize_with(src.roots.len(), Vec::new);
    }
    for (k, &(r, _)) in src.roots.iter().enumerate() {
        let edges = &mut edges[k];
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

/// What a node offers its consumers in a round of [`path_costs`]: its
/// cost, load term and hops as of the round before, or [`Offer::NONE`].
#[derive(Clone, Copy)]
pub(super) struct Offer {
    cost: f64,
    load: f64,
    hops: u32,
}

impl Offer {
    /// Nothing new to offer (`hops` is beyond any bound).
    const NONE: Offer = Offer {
        cost: f64::INFINITY,
        load: 0.0,
        hops: u32::MAX,
    };
}

/// Best path cost from the source's roots to every node and the hop count
/// of the node on that path (root 0, a node pulling from a root 1, ...).
/// Only nodes with at most `max_relay_hops` hops serve others, so a viewer
/// edge is at most `max_relay_hops` relays away from the origin.
///
/// A layered Bellman–Ford: round `k` offers every node the paths of `k`
/// edges, from the costs of round `k − 1`: an offer from `u` costs
/// `cost(u) + (e(u→v) + load(u))`, roots first, then relay candidates in
/// order, and replaces the node's cost only when better by more than 1e-12
/// (so the first of near-equal offers wins). An offer that was already
/// made with the same value can never replace anything (costs only
/// decrease), so each round skips them: round 0 makes only the root offers
/// (a root among a node's relay candidates offers exactly its root edge),
/// later rounds only the offers of nodes whose cost changed in the round
/// before; a round without changes ends the search. The same results as
/// making every offer in every round (`tests::path_costs_reference`).
pub(super) fn path_costs(
    ctx: &Ctx<'_>,
    load: &[f64],
    src: &Source,
    root_edges: &RootEdges,
    work: &mut Work,
    hops: &mut [u32],
) {
    let n = ctx.nodes.len();
    let max_hops = ctx.input.limits.max_relay_hops;
    let Work {
        cost,
        changed,
        offers,
        is_root,
        ..
    } = work;
    cost.fill(f64::INFINITY);
    hops.fill(u32::MAX);
    for &(r, _) in &src.roots {
        cost[r] = 0.0;
        hops[r] = 0;
    }
    // Round 0: straight from an eligible root (roots keep cost 0, hops 0).
    for (k, &(r, _)) in src.roots.iter().enumerate() {
        if !ctx.eligible[r] {
            continue;
        }
        let (base, l) = (cost[r], load[r]);
        for (v, &e) in root_edges[k].iter().enumerate() {
            if is_root[v] {
                continue;
            }
            let c = base + (e + l);
            if c < cost[v] - 1e-12 {
                cost[v] = c;
                hops[v] = 1;
            }
        }
    }
    for v in 0..n {
        changed[v] = !is_root[v] && cost[v] != f64::INFINITY;
    }
    for _edge in 1..=max_hops {
        offers.clear();
        offers.extend((0..n).map(|u| {
            if changed[u] && cost[u].is_finite() && hops[u] <= max_hops {
                Offer {
                    cost: cost[u],
                    load: load[u],
                    hops: hops[u],
                }
            } else {
                Offer::NONE
            }
        }));
        let mut any = false;
        for v in 0..n {
            changed[v] = false;
            if is_root[v] {
                continue;
            }
            let (mut best, mut best_hops) = (cost[v], hops[v]);
            for &(u, e) in ctx.neighbours(v) {
                let o = offers[u];
                if o.hops == u32::MAX {
                    continue;
                }
                let c = o.cost + (e + o.load);
                if c < best - 1e-12 {
                    best = c;
                    best_hops = o.hops + 1;
                }
            }
            if best_hops != hops[v] || best.to_bits() != cost[v].to_bits() {
                cost[v] = best;
                hops[v] = best_hops;
                changed[v] = true;
                any = true;
            }
        }
        if !any {
            break;
        }
    }
}
