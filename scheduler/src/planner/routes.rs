//! Per-source route planning: the sources (published streams and
//! static-origin patterns), and the pipeline that routes them in turn —
//! root edges and path costs ([`paths`](super::paths)), ranking with load
//! accounting ([`rank`](super::rank)), the routes decided from the ranking
//! ([`decide`](super::decide)) — with a helper thread when there are
//! threads to spare.

use super::*;
use std::sync::mpsc;

/// One origin of a set of streams: a publishing node or a static-origin pattern.
pub(super) struct Source {
    /// Route key: exact stream key or pattern.
    pub(super) route: String,
    /// Nodes that hold the stream first-hand (the publisher, or every node
    /// configured with the static origin), with their origin URL if static.
    pub(super) roots: Vec<(usize, Option<String>)>,
    pub(super) bitrate_mbps: f64,
}

/// One upstream of a decided route: node ([`NONE`] for the consumer's
/// origin URL), path cost through it and its hop count.
#[derive(Clone, Copy)]
pub(super) struct Up {
    pub(super) node: usize,
    pub(super) total: f64,
    pub(super) hops: u32,
}

/// The routes decided for one consumer, in source order: each route's
/// source and number of upstreams, which follow one another in `ups`
/// (primary first, then the backups in order).
#[derive(Default)]
pub(super) struct Decided {
    pub(super) routes: Vec<(usize, usize)>,
    pub(super) ups: Vec<Up>,
}

impl Decided {
    /// `(source, upstreams)` of every route, in source order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &[Up])> {
        self.routes.iter().scan(0, |at, &(source, len)| {
            let ups = &self.ups[*at..*at + len];
            *at += len;
            Some((source, ups))
        })
    }
}

/// Routes every source in turn: root edges, path costs, ranking — with
/// load accounting, so each source's ranking depends on the ones before —
/// and the routes decided from the ranking, by consumer. With `threads` >
/// 1, a second thread computes the root edges of the next source and
/// decides the routes of the last one while the current one is ranked:
/// the same steps on the same data, so the same result. `None` once
/// `cancelled()` (checked before each source).
pub(super) fn route_sources(
    ctx: &Ctx<'_>,
    load: &mut Load<'_>,
    sources: &[Source],
    previous: &Previous,
    threads: usize,
    cancelled: &dyn Fn() -> bool,
) -> Option<Vec<Decided>> {
    let n = ctx.nodes.len();
    let mut work = Work::new(n);
    let mut ranked = Ranked::new(n);
    // The two steps of source `s`, the same on one thread or two.
    let mut rank = |s: usize, edges: &RootEdges, work: &mut Work, ranked: &mut Ranked| {
        rank_source(
            ctx,
            load,
            &sources[s],
            edges,
            &previous.primary[s],
            work,
            ranked,
        )
    };
    let decide = |s: usize, ranked: &Ranked, work: &mut DecideWork, out: &mut [Decided]| {
        decide_routes(ctx, s, &previous.backups[s], ranked, work, out)
    };
    if threads <= 1 || sources.len() < 2 {
        let mut decided = decided_for(ctx, sources);
        let (mut edges, mut decide_work) = (RootEdges::new(), DecideWork::default());
        for (s, src) in sources.iter().enumerate() {
            if cancelled() {
                return None;
            }
            root_edges(ctx, src, &mut edges);
            rank(s, &edges, &mut work, &mut ranked);
            decide(s, &ranked, &mut decide_work, &mut decided);
        }
        return Some(decided);
    }
    std::thread::scope(|scope| {
        // Root edges are computed at most one source ahead; a ranked source
        // goes to the helper with its root edges, and comes back to be
        // reused once decided.
        let (edges_tx, edges_rx) = mpsc::sync_channel::<RootEdges>(1);
        let (ranked_tx, ranked_rx) = mpsc::sync_channel::<(RootEdges, Ranked)>(1);
        let (spare_tx, spare_rx) = mpsc::channel::<Ranked>();
        let helper = scope.spawn(move || {
            let mut decided = decided_for(ctx, sources);
            let mut decide_work = DecideWork::default();
            let mut free: Vec<RootEdges> = Vec::new();
            let edges_of = |s: usize, free: &mut Vec<RootEdges>| {
                let mut edges = free.pop().unwrap_or_default();
                root_edges(ctx, &sources[s], &mut edges);
                edges
            };
            edges_tx.send(edges_of(0, &mut free)).ok()?;
            for s in 0..sources.len() {
                if s + 1 < sources.len() {
                    edges_tx.send(edges_of(s + 1, &mut free)).ok()?;
                }
                let (edges, ranked) = ranked_rx.recv().ok()?;
                decide(s, &ranked, &mut decide_work, &mut decided);
                free.push(edges);
                spare_tx.send(ranked).ok()?;
            }
            Some(decided)
        });
        for s in 0..sources.len() {
            if cancelled() {
                // Dropping the channels stops the helper.
                return None;
            }
            // A closed channel: the helper panicked, re-raised below.
            let Ok(edges) = edges_rx.recv() else {
                break;
            };
            rank(s, &edges, &mut work, &mut ranked);
            let spare = spare_rx.try_recv().unwrap_or_else(|_| Ranked::new(n));
            if ranked_tx
                .send((edges, std::mem::replace(&mut ranked, spare)))
                .is_err()
            {
                break;
            }
        }
        joined(helper)
    })
}

/// Path costs and ranking of one source.
fn rank_source(
    ctx: &Ctx<'_>,
    load: &mut Load<'_>,
    src: &Source,
    edges: &RootEdges,
    previous: &[usize],
    work: &mut Work,
    ranked: &mut Ranked,
) {
    for &(r, _) in &src.roots {
        work.is_root[r] = true;
    }
    path_costs(ctx, &load.term, src, edges, work, &mut ranked.hops);
    rank_candidates(ctx, load, src, edges, previous, work, ranked);
    for &(r, _) in &src.roots {
        work.is_root[r] = false;
    }
}

/// Empty routes of every consumer, with room for a route per source.
fn decided_for(ctx: &Ctx<'_>, sources: &[Source]) -> Vec<Decided> {
    // Every route has at most 1 + max_backups upstreams, usually all.
    let per_route = 1 + ctx.input.limits.max_backups.min(8);
    (0..ctx.nodes.len())
        .map(|_| Decided {
            routes: Vec::with_capacity(sources.len()),
            ups: Vec::with_capacity(sources.len() * per_route),
        })
        .collect()
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
