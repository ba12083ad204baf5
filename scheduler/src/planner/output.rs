//! The plan's output from the decided routes: every node's route table
//! (routes, probe targets) and the primaries and backups for the next
//! plan's hysteresis. Building them is mostly copying ids and URLs into
//! new strings; the three are independent, so with threads the maps are
//! built beside the tables, and the tables by chunks of nodes.

use super::*;

/// Tables, primaries and backups of a plan whose routes are `decided`
/// (by consumer), on up to `threads` threads: the maps are two tasks, the
/// tables a task per chunk of nodes, taken in turn ([`par_tasks`]). The
/// result does not depend on `threads`.
pub(super) fn build_output(
    ctx: &Ctx<'_>,
    sources: &[Source],
    decided: &[Decided],
    threads: usize,
) -> (BTreeMap<String, RouteTable>, Primaries, Backups) {
    let order = RouteOrder::new(sources);
    let n = ctx.nodes.len();
    let chunk = n.div_ceil(8 * threads).max(1);
    let parts = par_tasks(2 + n.div_ceil(chunk), threads, |task| match task {
        0 => Part::Primaries(primaries(ctx, sources, decided, &order)),
        1 => Part::Backups(backups(ctx, sources, decided, &order)),
        c => {
            let nodes = (c - 2) * chunk..n.min((c - 1) * chunk);
            Part::Tables(nodes.map(|i| table(ctx, sources, decided, i)).collect())
        }
    });
    let (mut primaries, mut backups) = (Primaries::new(), Backups::new());
    let mut tables = Vec::with_capacity(n);
    for part in parts {
        match part {
            Part::Primaries(p) => primaries = p,
            Part::Backups(b) => backups = b,
            Part::Tables(t) => tables.extend(t),
        }
    }
    // In id order: the map is built in one pass.
    (tables.into_iter().collect(), primaries, backups)
}

/// A share of the output (see [`build_output`]).
enum Part {
    Primaries(Primaries),
    Backups(Backups),
    Tables(Vec<(String, RouteTable)>),
}

/// Node `i`'s route table, with its id.
fn table(ctx: &Ctx<'_>, sources: &[Source], decided: &[Decided], i: usize) -> (String, RouteTable) {
    let input = ctx.input;
    let node = ctx.nodes[i];
    let d = &decided[i];
    let streams = d
        .iter()
        .map(|(s, ups)| StreamRoute {
            stream: sources[s].route.clone(),
            upstreams: ups
                .iter()
                .map(|up| upstream(ctx, &sources[s], i, up))
                .collect(),
        })
        .collect();
    // Upstream candidates are probed first, in id order.
    let mut upstream_ids: Vec<usize> = d
        .ups
        .iter()
        .map(|up| up.node)
        .filter(|&u| u != NONE)
        .collect();
    upstream_ids.sort_unstable();
    upstream_ids.dedup();
    let table = RouteTable {
        node_id: node.id.clone(),
        version: 0,
        nonce: String::new(),
        generated_at_ms: 0,
        ttl_s: input.table_ttl_s,
        report_interval_ms: input.report_interval_ms,
        weights_version: input.weights_version,
        streams,
        probe_targets: probe_targets(ctx, i, &upstream_ids),
        redirects: Vec::new(),
        probe_key: input.probe_key.clone(),
        ..RouteTable::default()
    };
    (node.id.clone(), table)
}

/// One upstream of `consumer`'s route for `src` as the table lists it.
fn upstream(ctx: &Ctx<'_>, src: &Source, consumer: usize, up: &Up) -> Upstream {
    if up.node == NONE {
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
        let node = ctx.nodes[up.node];
        Upstream {
            kind: UpstreamKind::Node as i32,
            node_id: node.id.clone(),
            url: node.public_url.clone(),
            score: quantise(up.total),
            hops: up.hops,
        }
    }
}

/// Scores in tables are quantised to 0.001 so load wobbles that change no
/// decision do not produce a new table version for every agent.
fn quantise(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// Sources in route order (equal routes in source order), the order of
/// the keys of `Plan::primaries` and `Plan::backups` within a node.
struct RouteOrder {
    /// Position of each source in route order.
    rank: Vec<usize>,
    /// Whether route order is source order (no sorting per node).
    is_source_order: bool,
}

impl RouteOrder {
    fn new(sources: &[Source]) -> Self {
        let mut order: Vec<usize> = (0..sources.len()).collect();
        order.sort_by(|&a, &b| sources[a].route.cmp(&sources[b].route));
        let mut rank = vec![0; sources.len()];
        for (pos, &s) in order.iter().enumerate() {
            rank[s] = pos;
        }
        let is_source_order = rank.iter().enumerate().all(|(s, &r)| s == r);
        RouteOrder {
            rank,
            is_source_order,
        }
    }

    /// `d`'s routes in route order.
    fn routes<'d>(&self, d: &'d Decided) -> Vec<(usize, &'d [Up])> {
        let mut routes: Vec<(usize, &[Up])> = d.iter().collect();
        if !self.is_source_order {
            routes.sort_unstable_by_key(|&(s, _)| self.rank[s]);
        }
        routes
    }
}

/// The id of `u` in `Plan::primaries` and `Plan::backups`: "" for the
/// origin URL.
fn id(ctx: &Ctx<'_>, u: usize) -> String {
    match u {
        NONE => String::new(),
        u => ctx.nodes[u].id.clone(),
    }
}

/// Primary per (node, route), built in key order: nodes are in id order,
/// and each node's routes are taken in route order. (With two sources of
/// the same route, the later one's entry is kept, as a map insert would.)
fn primaries(
    ctx: &Ctx<'_>,
    sources: &[Source],
    decided: &[Decided],
    order: &RouteOrder,
) -> Primaries {
    decided
        .iter()
        .enumerate()
        .flat_map(|(i, d)| {
            order.routes(d).into_iter().map(move |(s, ups)| {
                let key = (ctx.nodes[i].id.clone(), sources[s].route.clone());
                (key, id(ctx, ups[0].node))
            })
        })
        .collect()
}

/// Backups per (node, route) for the routes that have any, in key order
/// as [`primaries`].
fn backups(ctx: &Ctx<'_>, sources: &[Source], decided: &[Decided], order: &RouteOrder) -> Backups {
    decided
        .iter()
        .enumerate()
        .flat_map(|(i, d)| {
            order
                .routes(d)
                .into_iter()
                .filter(|(_, ups)| ups.len() > 1)
                .map(move |(s, ups)| {
                    let key = (ctx.nodes[i].id.clone(), sources[s].route.clone());
                    (key, ups[1..].iter().map(|up| id(ctx, up.node)).collect())
                })
        })
        .collect()
}
