//! The previous plan's choices (primaries and backups per node and
//! route, keyed by ids) resolved to node and source indices, for the
//! hysteresis of the next plan.

use super::*;

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
    /// The primaries and the backups (on two threads if `threads` > 1).
    pub(super) fn index(ctx: &Ctx<'_>, sources: &[Source], threads: usize) -> Self {
        let routes = Routes::new(sources);
        let (primary, backups) = join(
            threads > 1,
            || previous_primaries(ctx, sources.len(), &routes),
            || previous_backups(ctx, sources.len(), &routes),
        );
        Previous { primary, backups }
    }
}

// Keys of the previous plan's maps are sorted by (node, route): one walk
// through the nodes (in id order) and, per node, one through the routes
// resolve them with about a string comparison each instead of hashing.

fn previous_primaries(ctx: &Ctx<'_>, sources: usize, routes: &Routes<'_>) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); sources];
    let mut keys = Keys::new(ctx, routes);
    for ((node, route), up) in &ctx.input.previous {
        let (Some((consumer, ss)), Some(&u)) = (keys.find(node, route), ctx.index.get(up.as_str()))
        else {
            continue;
        };
        for &s in ss {
            let v: &mut Vec<usize> = &mut out[s];
            if v.is_empty() {
                v.resize(ctx.nodes.len(), NONE);
            }
            v[consumer] = u;
        }
    }
    out
}

fn previous_backups(ctx: &Ctx<'_>, sources: usize, routes: &Routes<'_>) -> Vec<Vec<[u32; STICKY]>> {
    let mut out = vec![Vec::new(); sources];
    let mut keys = Keys::new(ctx, routes);
    for ((node, route), ups) in &ctx.input.previous_backups {
        let Some((consumer, ss)) = keys.find(node, route) else {
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
            let v: &mut Vec<[u32; STICKY]> = &mut out[s];
            if v.is_empty() {
                v.resize(ctx.nodes.len(), [NO_BACKUP; STICKY]);
            }
            v[consumer] = list;
        }
    }
    out
}

/// The sources' routes, sorted and without duplicates, each with its
/// sources (in source order).
struct Routes<'s> {
    routes: Vec<RouteSources<'s>>,
    sources: Vec<usize>,
}

impl<'s> Routes<'s> {
    fn new(sources: &'s [Source]) -> Self {
        let mut by_route: Vec<(&str, usize)> = sources
            .iter()
            .enumerate()
            .map(|(s, src)| (src.route.as_str(), s))
            .collect();
        by_route.sort_unstable();
        let mut routes: Vec<RouteSources<'_>> = Vec::new();
        for (at, &(route, _)) in by_route.iter().enumerate() {
            match routes.last_mut() {
                Some((last, range)) if *last == route => range.end = at + 1,
                _ => routes.push((route, at..at + 1)),
            }
        }
        Routes {
            routes,
            sources: by_route.into_iter().map(|(_, s)| s).collect(),
        }
    }
}

/// A route and the range of its sources in [`Routes::sources`].
type RouteSources<'s> = (&'s str, std::ops::Range<usize>);

/// Resolves keys (node id, route) of the previous plan's maps, asked in
/// increasing order, to (consumer, the route's sources).
struct Keys<'a, 'v, 's> {
    nodes: Walk<'a, &'v NodeView>,
    routes: &'a Routes<'s>,
    /// The routes of the current consumer's keys.
    consumer: Option<(usize, Walk<'a, RouteSources<'s>>)>,
}

impl<'a, 'v, 's> Keys<'a, 'v, 's> {
    fn new(ctx: &'a Ctx<'v>, routes: &'a Routes<'s>) -> Self {
        Keys {
            nodes: Walk::new(&ctx.nodes, |v| v.id.as_str()),
            routes,
            consumer: None,
        }
    }

    fn find(&mut self, node: &str, route: &str) -> Option<(usize, &[usize])> {
        let consumer = self.nodes.find(node)?;
        let routes = match &mut self.consumer {
            Some((c, walk)) if *c == consumer => walk,
            // A new node: its routes start over.
            slot => {
                &mut slot
                    .insert((consumer, Walk::new(&self.routes.routes, |r| r.0)))
                    .1
            }
        };
        let r = routes.find(route)?;
        Some((
            consumer,
            &self.routes.sources[self.routes.routes[r].1.clone()],
        ))
    }
}

/// A walk through `items`, sorted by distinct `key`s, for keys asked in
/// increasing order: about one comparison per key asked.
struct Walk<'a, T> {
    items: &'a [T],
    key: fn(&T) -> &str,
    at: usize,
}

impl<'a, T> Walk<'a, T> {
    fn new(items: &'a [T], key: fn(&T) -> &str) -> Self {
        Walk { items, key, at: 0 }
    }

    /// The position of `s`, if it is a key; `s` must not be before the
    /// keys asked so far.
    fn find(&mut self, s: &str) -> Option<usize> {
        let (items, key) = (self.items, self.key);
        match key(items.get(self.at)?).cmp(s) {
            std::cmp::Ordering::Equal => return Some(self.at),
            std::cmp::Ordering::Greater => return None,
            std::cmp::Ordering::Less => {}
        }
        // Gallop from `at` (before `s`) to the first item not before `s`.
        let before = |i: usize| key(&items[i]) < s;
        let (mut lo, mut step) = (self.at, 1);
        let hi = loop {
            let probe = lo + step;
            if probe >= items.len() {
                break items.len();
            }
            if !before(probe) {
                break probe;
            }
            lo = probe;
            step *= 2;
        };
        // Then search between the last probe before `s` and the first not.
        let hi = lo + 1 + items[lo + 1..hi].partition_point(|item| key(item) < s);
        self.at = hi;
        items.get(hi).filter(|item| key(item) == s).map(|_| hi)
    }
}
