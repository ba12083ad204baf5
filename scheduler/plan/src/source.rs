//! Planning one *source* — an origin node and every stream it publishes,
//! or a static-origin pattern and the nodes configured with it — for every
//! consumer: path costs, then each consumer's upstream list.
//!
//! **Path costs** are layered: `c₀(v)` is the best direct pull from an
//! eligible root, `c₀(v) = min_r e(r→v) + L(r)`, and each further layer
//! allows one more relay among `v`'s relay candidates,
//! `cⱼ₊₁(v) = min(cⱼ(v), min_u cⱼ(u) + (e(u→v) + L(u)))`, up to
//! `max_relay_hops` relays (LiveNet's bound of two). `e` is the load-free
//! edge score and `L(u)` the load term of `u` from its reported
//! utilisation. A node's cost is its last layer; its hop count the first
//! layer that reaches that cost, plus one (roots: 0). Every value is a
//! minimum of the same sums whatever order they are met in, so a cost
//! recomputed for a few nodes is bit for bit the cost a whole plan gives.
//!
//! **Upstream lists**: a consumer's candidates are the source's eligible
//! roots and its relay candidates that can relay (reached within the hop
//! bound), scored `cost(u) + (e(u→v) + L(u))`, ranked best first with
//! near-equal candidates spread by a rendezvous hash of (candidate,
//! consumer, source). The primary is the best *admissible* candidate — a
//! root, or a relay that precedes the consumer in the strict order (cost,
//! index) and sits within the relay-hop bound on its own primary chain — so
//! primaries always form a tree rooted at the source; hysteresis keeps the
//! previous primary unless the new best is clearly better. Backups follow:
//! any other candidate whose primary chain does not pass through the
//! consumer, with their own hysteresis. Both rules are fixed points of
//! themselves: deciding again on unchanged inputs keeps the decision.
//!
//! [`Source::full`] plans every consumer; [`Source::update`] replans only
//! the consumers a change can reach — layers of the nodes whose inputs or
//! upstream costs changed, then primaries in (cost, index) order from the
//! dirty consumers, following changed primaries to the consumers that can
//! pick them, then backups of every consumer whose candidates' chains
//! changed — and gives the same state as `full` (property-tested).

use crate::edge::{FNV_OFFSET, finalise, fnv, total_order_bits32};
use crate::graph::{Graph, NONE};
use crate::settings::PlanSettings;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use vantage_shared::stream::StreamPattern;

/// Hop count of a node no path reaches within the bound.
pub(crate) const UNREACHED: u8 = u8::MAX;

/// What a source is: an origin node (its streams share its routes) or a
/// static-origin pattern. Origins sort before patterns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKey {
    Origin(Arc<str>),
    Pattern(StreamPattern),
}

impl SourceKey {
    /// The key as tables and traces name it (origin id or pattern).
    pub fn name(&self) -> &str {
        match self {
            SourceKey::Origin(id) => id,
            SourceKey::Pattern(p) => p.as_str(),
        }
    }
}

/// One upstream of a decided route: node ([`NONE`] = the consumer's
/// static origin URL), its score when decided and its hop count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Up {
    pub(crate) node: u32,
    pub(crate) score: f32,
    pub(crate) hops: u8,
}

impl Up {
    const EMPTY: Up = Up {
        node: NONE,
        score: 0.0,
        hops: 0,
    };
}

#[derive(Debug, Clone, Copy)]
struct Cand {
    node: u32,
    total: f32,
}

impl Cand {
    /// Tie-break key in index order, the origin URL first.
    fn key(&self) -> u32 {
        self.node.wrapping_add(1)
    }

    fn rank_key(&self) -> u64 {
        (u64::from(total_order_bits32(self.total)) << 32) | u64::from(self.key())
    }

    fn from_rank_key(k: u64) -> Cand {
        Cand {
            node: (k as u32).wrapping_sub(1),
            total: from_total_order_bits32((k >> 32) as u32),
        }
    }
}

fn from_total_order_bits32(key: u32) -> f32 {
    let bits = (key ^ (1 << 31)) as i32;
    f32::from_bits((bits ^ ((((bits >> 31) as u32) >> 1) as i32)) as u32)
}

/// The read-only facts a source is planned with: the graph, the
/// settings, and the root edges `e(root → v)` of each root (empty when the
/// root is not eligible).
pub(crate) struct Cx<'a> {
    pub(crate) g: &'a Graph,
    pub(crate) st: &'a PlanSettings,
    pub(crate) edges: Vec<&'a [f64]>,
}

/// One source's plan.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) key: SourceKey,
    /// Roots with their origin URL template (static patterns).
    pub(crate) roots: Vec<(u32, Option<String>)>,
    /// What ranking reads of every node, in one place in memory: its
    /// cost (the last layer), hop count, primary-chain depth, whether it is
    /// a root.
    hot: Vec<Hot>,
    n: usize,
    /// `max_relay_hops`: layers are `0..=h`.
    h: usize,
    /// `layers[j * n + v]`: `cⱼ(v)` (costs are `f32`: scores are read to
    /// 0.001, and half the bytes move through the caches).
    layers: Vec<f32>,
    pub(crate) primary: Vec<u32>,
    /// Decided upstreams, `stride` slots per consumer, `len` used.
    ups: Vec<Up>,
    len: Vec<u8>,
    stride: usize,
    /// The route key's bytes, salt of the spreading hash.
    salt: Arc<str>,
    /// Per consumer: hash of its route as a table lists it (0: none).
    hashes: Vec<u64>,
}

/// Per node: what ranking a consumer's candidates reads.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Hot {
    /// The path cost (the last layer), `INFINITY` when unreached.
    cost: f32,
    /// Hop count on the best path (roots 0), [`UNREACHED`].
    hops: u8,
    /// Relay depth of its primary chain (roots 0), [`UNREACHED`].
    depth: u8,
    root: bool,
}

/// Consumers a change touches, for [`Source::update`].
#[derive(Debug, Default)]
pub(crate) struct Dirty<'a> {
    /// Consumers whose edge from some root changed.
    pub(crate) edge: Vec<u32>,
    /// Consumers whose relay candidates changed.
    pub(crate) cands: &'a [u32],
    /// Nodes (not roots) whose load term changed.
    pub(crate) load: &'a [u32],
}

/// Scratch memory of one thread's source planning.
#[derive(Default, Clone)]
pub(crate) struct Work {
    stamp: Vec<u32>,
    epoch: u32,
    cands: Vec<Cand>,
    sorted: Vec<u64>,
    hashed: Vec<(u64, Cand)>,
    backs: Vec<Cand>,
    valid: Vec<bool>,
    order: Vec<(u64, u32)>,
    radix: Vec<(u64, u32)>,
    arena: Vec<Cand>,
    span: Vec<(u32, u32)>,
}

impl Work {
    fn reset(&mut self, n: usize) {
        if self.stamp.len() < n {
            self.stamp.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamp.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `v`; true if it was not marked since the last reset.
    fn mark(&mut self, v: u32) -> bool {
        let s = &mut self.stamp[v as usize];
        if *s == self.epoch {
            false
        } else {
            *s = self.epoch;
            true
        }
    }
}

impl Source {
    pub(crate) fn new(
        key: SourceKey,
        roots: Vec<(u32, Option<String>)>,
        n: usize,
        st: &PlanSettings,
    ) -> Self {
        let layers = st.limits.max_relay_hops as usize + 1;
        let stride = 1 + st.limits.max_backups;
        let mut hot = vec![
            Hot {
                cost: f32::INFINITY,
                hops: UNREACHED,
                depth: UNREACHED,
                root: false,
            };
            n
        ];
        for &(r, _) in &roots {
            hot[r as usize].root = true;
        }
        let salt: Arc<str> = Arc::from(key.name());
        Source {
            key,
            roots,
            hot,
            n,
            h: layers - 1,
            layers: vec![f32::INFINITY; layers * n],
            primary: vec![NONE; n],
            ups: vec![Up::EMPTY; stride * n],
            len: vec![0; n],
            stride,
            salt,
            hashes: vec![0; n],
        }
    }

    /// Whether this plan's arrays have the given shape (nodes, upstream
    /// slots per route, layers), so it can be replanned in place.
    pub(crate) fn fits(&self, n: usize, stride: usize, layers: usize) -> bool {
        self.n == n && self.stride == stride && self.h + 1 == layers
    }

    /// The decided upstreams of consumer `v` (empty: no route).
    pub(crate) fn route(&self, v: u32) -> &[Up] {
        let at = v as usize * self.stride;
        &self.ups[at..at + usize::from(self.len[v as usize])]
    }

    fn max_hops(&self) -> usize {
        self.h
    }

    pub(crate) fn cost(&self, v: u32) -> f32 {
        self.hot[v as usize].cost
    }

    /// Sets `cⱼ(v)` (and the cost when `j` is the last layer).
    fn set_layer(&mut self, j: usize, v: u32, c: f32) {
        self.layers[j * self.n + v as usize] = c;
        if j == self.h {
            self.hot[v as usize].cost = c;
        }
    }

    fn is_root(&self, v: u32) -> bool {
        self.hot[v as usize].root
    }

    fn layer(&self, j: usize) -> &[f32] {
        &self.layers[j * self.n..(j + 1) * self.n]
    }

    /// `c₀(v)`: the best direct pull from an eligible root.
    fn layer0(&self, cx: &Cx<'_>, v: u32) -> f32 {
        if self.is_root(v) {
            return 0.0;
        }
        let mut best = f32::INFINITY;
        for (k, &(r, _)) in self.roots.iter().enumerate() {
            let edges = cx.edges[k];
            if r == v || edges.is_empty() {
                continue;
            }
            let c = (edges[v as usize] + cx.g.load[r as usize]) as f32;
            if c.total_cmp(&best).is_lt() {
                best = c;
            }
        }
        best
    }

    /// `cⱼ(v)` for `j ≥ 1`, from layer `j − 1`.
    fn layer_next(&self, cx: &Cx<'_>, j: usize, v: u32) -> f32 {
        if self.is_root(v) {
            return 0.0;
        }
        // A root among the candidates offers `0 + (e + L)`, exactly its
        // root edge of layer 0: no need to leave roots out.
        let prev = self.layer(j - 1);
        let mut best = prev[v as usize];
        for r in cx.g.relays(v as usize) {
            let c = prev[r.u as usize] + r.offer;
            if c < best {
                best = c;
            }
        }
        best
    }

    fn hops_of(&self, v: u32) -> u8 {
        if self.is_root(v) {
            return 0;
        }
        let d = self.cost(v);
        if !d.is_finite() {
            return UNREACHED;
        }
        (0..=self.max_hops())
            .find(|&j| self.layer(j)[v as usize].to_bits() == d.to_bits())
            .map_or(UNREACHED, |j| (j + 1) as u8)
    }

    /// Whether `a` precedes `b` in the strict order (cost, index).
    fn before(&self, a: u32, b: u32) -> bool {
        (total_order_bits32(self.cost(a)), a) < (total_order_bits32(self.cost(b)), b)
    }

    fn rank_of(&self, v: u32) -> (u64, u32) {
        (u64::from(total_order_bits32(self.cost(v))), v)
    }

    /// Plans every consumer. Returns the consumers whose route changed
    /// (upstreams or hop counts).
    pub(crate) fn full(&mut self, cx: &Cx<'_>, work: &mut Work) -> Vec<u32> {
        let n = self.n;
        let h = self.max_hops();
        for v in 0..n as u32 {
            let c = self.layer0(cx, v);
            self.set_layer(0, v, c);
        }
        for j in 1..=h {
            for v in 0..n as u32 {
                let c = self.layer_next(cx, j, v);
                self.set_layer(j, v, c);
            }
        }
        for v in 0..n as u32 {
            self.hot[v as usize].hops = self.hops_of(v);
        }
        let mut order = std::mem::take(&mut work.order);
        order.clear();
        order.extend((0..n as u32).map(|v| self.rank_of(v)));
        radix_sort(&mut order, &mut work.radix);
        // Phase 1: primaries in rank order, each ranked list kept for phase 2.
        let mut arena = std::mem::take(&mut work.arena);
        let mut span = std::mem::take(&mut work.span);
        arena.clear();
        span.clear();
        span.resize(n, (0, 0));
        for &(_, v) in &order {
            if self.decide_primary(cx, v, work) {
                span[v as usize] = (arena.len() as u32, work.cands.len() as u32);
                arena.extend_from_slice(&work.cands);
            }
        }
        // Phase 2: backups of everyone.
        let mut changed = Vec::new();
        for v in 0..n as u32 {
            let (start, len) = span[v as usize];
            let ranked = &arena[start as usize..(start + len) as usize];
            if self.decide_backups(cx, v, ranked, work) {
                changed.push(v);
            }
        }
        work.order = order;
        work.arena = arena;
        work.span = span;
        changed
    }

    /// Replans the consumers `dirty` can reach; the same state as
    /// [`Source::full`] on the same inputs. Returns the consumers whose
    /// route changed.
    pub(crate) fn update(&mut self, cx: &Cx<'_>, dirty: &Dirty<'_>, work: &mut Work) -> Vec<u32> {
        let g = cx.g;
        let n = self.n;
        let h = self.max_hops();
        // Layer 0: consumers whose root edge changed.
        let mut recomputed: Vec<u32> = Vec::new();
        let mut changed: Vec<u32> = Vec::new();
        work.reset(n);
        for &v in &dirty.edge {
            if work.mark(v) {
                recomputed.push(v);
                let c = self.layer0(cx, v);
                if c.to_bits() != self.layers[v as usize].to_bits() {
                    self.set_layer(0, v, c);
                    changed.push(v);
                }
            }
        }
        // Later layers: what changed in the layer before, the consumers of
        // those nodes, and every layer of consumers whose candidates or
        // candidates' load changed.
        for j in 1..=h {
            work.reset(n);
            let mut todo: Vec<u32> = Vec::new();
            let mut add = |v: u32, work: &mut Work| {
                if work.mark(v) {
                    todo.push(v);
                }
            };
            for &x in &changed {
                add(x, work);
                for &w in &g.kin_rev[x as usize] {
                    add(w, work);
                }
            }
            for &v in dirty.cands {
                add(v, work);
            }
            for &u in dirty.load {
                for &w in &g.kin_rev[u as usize] {
                    add(w, work);
                }
            }
            let mut next = Vec::new();
            for &v in &todo {
                let c = self.layer_next(cx, j, v);
                if c.to_bits() != self.layers[j * n + v as usize].to_bits() {
                    self.set_layer(j, v, c);
                    next.push(v);
                }
            }
            recomputed.extend(todo);
            changed = next;
        }
        // Costs and hop counts that changed (the last layer's changes are
        // the cost changes).
        let mut moved: Vec<u32> = changed;
        recomputed.sort_unstable();
        recomputed.dedup();
        for &v in &recomputed {
            let hv = self.hops_of(v);
            if hv != self.hot[v as usize].hops {
                self.hot[v as usize].hops = hv;
                moved.push(v);
            }
        }
        // Phase 1: consumers whose candidates or own rank changed, in
        // rank order; a changed primary or depth reaches its consumers.
        work.reset(n);
        let mut heap: BinaryHeap<Reverse<((u64, u32), u32)>> = BinaryHeap::new();
        let push = |v: u32, work: &mut Work, heap: &mut BinaryHeap<_>| {
            if work.mark(v) {
                heap.push(Reverse((self.rank_of(v), v)));
            }
        };
        for &v in dirty.edge.iter().chain(dirty.cands).chain(&moved) {
            push(v, work, &mut heap);
        }
        for &u in dirty.load.iter().chain(&moved) {
            for &w in &g.kin_rev[u as usize] {
                push(w, work, &mut heap);
            }
        }
        let mut arena: Vec<Cand> = Vec::new();
        let mut ranked: HashMap<u32, (u32, u32)> = HashMap::new();
        let mut repicked: Vec<u32> = Vec::new();
        while let Some(Reverse((_, v))) = heap.pop() {
            let before = (self.primary[v as usize], self.hot[v as usize].depth);
            let start = arena.len() as u32;
            if self.decide_primary(cx, v, work) {
                arena.extend_from_slice(&work.cands);
            }
            ranked.insert(v, (start, arena.len() as u32 - start));
            if (self.primary[v as usize], self.hot[v as usize].depth) != before {
                repicked.push(v);
                for &w in &g.kin_rev[v as usize] {
                    if self.before(v, w) && work.mark(w) {
                        heap.push(Reverse((self.rank_of(w), w)));
                    }
                }
            }
        }
        // Phase 2: backups of the consumers re-ranked, and of every
        // consumer of a node whose primary chain or depth changed (those
        // that repicked and their descendants).
        work.reset(n);
        let mut chain_moved: Vec<u32> = Vec::new();
        for &v in &repicked {
            if work.mark(v) {
                chain_moved.push(v);
            }
        }
        let mut i = 0;
        while i < chain_moved.len() {
            let x = chain_moved[i];
            i += 1;
            for &w in &g.kin_rev[x as usize] {
                if self.primary[w as usize] == x && work.mark(w) {
                    chain_moved.push(w);
                }
            }
        }
        let mut again: Vec<u32> = ranked.keys().copied().collect();
        for &x in &chain_moved {
            again.extend(g.kin_rev[x as usize].iter().copied());
        }
        again.sort_unstable();
        again.dedup();
        let mut out = Vec::new();
        for v in again {
            let changed = match ranked.get(&v) {
                Some(&(start, len)) => {
                    let list = &arena[start as usize..(start + len) as usize];
                    self.decide_backups(cx, v, list, work)
                }
                None => {
                    // Not re-ranked: its candidates are as before, and the
                    // primary rule (a fixed point) picks the primary it has.
                    let list = if self.decide_primary(cx, v, work) {
                        std::mem::take(&mut work.cands)
                    } else {
                        Vec::new()
                    };
                    let changed = self.decide_backups(cx, v, &list, work);
                    work.cands = list;
                    changed
                }
            };
            if changed {
                out.push(v);
            }
        }
        out
    }

    /// Ranks `v`'s candidates into `work.cands` (primary first) and sets
    /// its primary and depth. False when it has no route.
    fn decide_primary(&mut self, cx: &Cx<'_>, v: u32, work: &mut Work) -> bool {
        let vi = v as usize;
        let has = self.rank_candidates(cx, v, work);
        let chosen = if has {
            self.choose_primary(cx, v, work)
        } else {
            None
        };
        match chosen {
            Some(c) if c.node == NONE => {
                self.primary[vi] = NONE;
                self.hot[vi].depth = 0;
                true
            }
            Some(c) => {
                self.primary[vi] = c.node;
                self.hot[vi].depth = self.hot[c.node as usize].depth.saturating_add(1);
                true
            }
            None => {
                self.primary[vi] = NONE;
                self.hot[vi].depth = if self.hot[vi].root { 0 } else { UNREACHED };
                work.cands.clear();
                false
            }
        }
    }

    /// `v`'s candidates, ranked, into `work.cands`. False when it has none
    /// (or is a root with nothing to pull: the origin itself).
    fn rank_candidates(&self, cx: &Cx<'_>, v: u32, work: &mut Work) -> bool {
        let g = cx.g;
        let vi = v as usize;
        let max_hops = self.max_hops() as u8;
        let cands = &mut work.cands;
        cands.clear();
        if self.hot[vi].root {
            // A publisher needs no route for its own streams; a node with a
            // static origin pulls from the origin URL first.
            let url = self.roots.iter().find(|(r, _)| *r == v);
            if url.is_none_or(|(_, u)| u.is_none()) {
                return false;
            }
            cands.push(Cand {
                node: NONE,
                total: 0.0,
            });
        }
        for (k, &(r, _)) in self.roots.iter().enumerate() {
            let edges = cx.edges[k];
            if r == v || edges.is_empty() {
                continue;
            }
            let ri = r as usize;
            cands.push(Cand {
                node: r,
                total: self.cost(r) + (edges[vi] + g.load[ri]) as f32,
            });
        }
        for r in g.relays(vi) {
            let h = self.hot[r.u as usize];
            if h.root || !h.cost.is_finite() || h.hops > max_hops {
                continue;
            }
            cands.push(Cand {
                node: r.u,
                total: h.cost + r.offer,
            });
        }
        if cands.is_empty() {
            return false;
        }
        work.sorted.clear();
        work.sorted.extend(cands.iter().map(Cand::rank_key));
        work.sorted.sort_unstable();
        for (c, &k) in cands.iter_mut().zip(&work.sorted) {
            *c = Cand::from_rank_key(k);
        }
        // Near-equal candidates spread by a rendezvous hash of
        // (candidate, consumer, source).
        let best = cands[0].total;
        let near_equal = cx.st.stability.near_equal;
        let band = cands
            .iter()
            .take_while(|c| f64::from(c.total - best) <= near_equal)
            .count();
        if band > 1 {
            work.hashed.clear();
            work.hashed.extend(
                cands[..band]
                    .iter()
                    .map(|c| (self.spread_hash(g, c.node, v), *c)),
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
        true
    }

    /// [`vantage_shared::score::rendezvous`]`(id of u, "{consumer}\u{1f}{source}")`,
    /// `u` = [`NONE`] for the origin URL (id "").
    fn spread_hash(&self, g: &Graph, u: u32, consumer: u32) -> u64 {
        let prefix = match u {
            NONE => fnv(FNV_OFFSET, &[0xff]),
            u => g.fnv_prefix[u as usize],
        };
        let h = fnv(prefix, g.ids[consumer as usize].as_bytes());
        finalise(fnv(fnv(h, &[0x1f]), self.salt.as_bytes()))
    }

    /// The primary among `work.cands` (moved to the front).
    fn choose_primary(&self, cx: &Cx<'_>, v: u32, work: &mut Work) -> Option<Cand> {
        let max_hops = self.max_hops() as u8;
        let cands = &mut work.cands;
        let admissible = |c: &Cand| {
            c.node == NONE
                || self.hot[c.node as usize].root
                || (self.before(c.node, v) && self.hot[c.node as usize].depth <= max_hops)
        };
        let mut first = cands.iter().position(admissible)?;
        // The previous primary (the route's first upstream; `primary` is
        // kept equal to it and is 4 bytes a node, where routes take 36).
        let prev = self.primary[v as usize];
        if prev != NONE
            && let Some(pos) = cands.iter().position(|c| c.node == prev)
            && pos != first
            && admissible(&cands[pos])
            && !cx
                .st
                .stability
                .should_switch(cands[pos].total.into(), cands[first].total.into())
        {
            first = pos;
        }
        cands[..=first].rotate_right(1);
        Some(cands[0])
    }

    /// Decides `v`'s backups from its ranked candidates (primary first;
    /// empty: no route) and stores the route. True if the route changed.
    fn decide_backups(&mut self, cx: &Cx<'_>, v: u32, ranked: &[Cand], work: &mut Work) -> bool {
        let max_hops = self.max_hops() as u8;
        let max = cx.st.limits.max_backups;
        work.backs.clear();
        if let Some(others) = ranked.get(1..) {
            let valid = |c: &Cand| {
                c.node == NONE
                    || !(self.hot[c.node as usize].depth > max_hops || self.on_chain(c.node, v))
            };
            let mut prev = [NONE; crate::settings::MAX_BACKUPS];
            let mut prev_len = 0;
            for up in self.route(v).iter().skip(1) {
                prev[prev_len] = up.node;
                prev_len += 1;
            }
            let prev = &prev[..prev_len];
            if prev.is_empty() {
                work.backs
                    .extend(others.iter().filter(|c| valid(c)).take(max));
            } else {
                work.valid.clear();
                work.valid.extend(others.iter().map(valid));
                stable_backups(cx, others, &work.valid, prev, &mut work.backs);
            }
        }
        let mut route = [Up::EMPTY; 1 + crate::settings::MAX_BACKUPS];
        let mut len = 0;
        for c in ranked.first().into_iter().chain(work.backs.iter()) {
            route[len] = Up {
                node: c.node,
                score: c.total,
                hops: if c.node == NONE {
                    0
                } else {
                    self.hot[c.node as usize].hops
                },
            };
            len += 1;
        }
        let old = self.route(v);
        let changed = old.len() != len
            || old
                .iter()
                .zip(&route[..len])
                .any(|(a, b)| a.node != b.node || a.hops != b.hops);
        let at = v as usize * self.stride;
        self.ups[at..at + len].copy_from_slice(&route[..len]);
        self.len[v as usize] = len as u8;
        changed
    }

    /// Whether following primaries up from `from` reaches `target`.
    fn on_chain(&self, from: u32, target: u32) -> bool {
        let mut cur = from;
        let mut steps = 0;
        while cur != NONE {
            if cur == target {
                return true;
            }
            steps += 1;
            if steps > self.n {
                return true; // defensive: a cycle would be a bug; refuse the backup
            }
            cur = self.primary[cur as usize];
        }
        false
    }
}

/// Sorts `(key, index)` pairs that come in index order by key, stably (so
/// by (key, index)): a least-significant-digit radix sort on bytes,
/// skipping the bytes that all keys share. `tmp` is scratch.
fn radix_sort(items: &mut Vec<(u64, u32)>, tmp: &mut Vec<(u64, u32)>) {
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

/// Backup hysteresis. `others`: the route's candidates after the primary,
/// ranked; `valid`: whether each may be a backup; `prev`: the previous
/// backups. Previous backups that are still valid keep their order; free
/// places go to the best valid new candidates; a kept backup gives way only
/// to a clearly better one (`Stability::should_switch`), and moves ahead of
/// another backup only when clearly better than it. Replacing and
/// reordering repeat until nothing moves, so deciding again on the result
/// keeps it (a fixed point).
fn stable_backups(
    cx: &Cx<'_>,
    others: &[Cand],
    valid: &[bool],
    prev: &[u32],
    backs: &mut Vec<Cand>,
) {
    let max = cx.st.limits.max_backups;
    let stability = &cx.st.stability;
    let candidates = || {
        others
            .iter()
            .zip(valid)
            .filter(|&(_, &ok)| ok)
            .map(|(c, _)| c)
    };
    for &p in prev {
        if backs.len() >= max {
            break;
        }
        if let Some(i) = others.iter().position(|c| c.node == p)
            && valid[i]
            && !backs.iter().any(|b| b.node == p)
        {
            backs.push(others[i]);
        }
    }
    // Fill free places in rank order.
    while backs.len() < max {
        let Some(c) = candidates().find(|c| !backs.iter().any(|b| b.node == c.node)) else {
            break;
        };
        backs.push(*c);
    }
    let left_out = |backs: &[Cand]| {
        candidates()
            .filter(|c| !backs.iter().any(|b| b.node == c.node))
            .min_by(|a, b| a.total.total_cmp(&b.total).then(a.key().cmp(&b.key())))
            .copied()
    };
    // Bounded: each round either stops or replaces a backup by a clearly
    // better one, and the bound is far above what that allows.
    for _ in 0..(others.len() + 1) * (max + 1) {
        let mut moved = false;
        // A clearly better candidate replaces the worst backup.
        if let (Some(best_out), Some(worst)) = (
            left_out(backs),
            (0..backs.len()).max_by(|&a, &b| {
                backs[a]
                    .total
                    .total_cmp(&backs[b].total)
                    .then(backs[a].key().cmp(&backs[b].key()))
            }),
        ) && stability.should_switch(backs[worst].total.into(), best_out.total.into())
        {
            backs[worst] = best_out;
            moved = true;
        }
        // Order: a backup passes the one ahead of it only when clearly better.
        for i in 1..backs.len() {
            if stability.should_switch(backs[i - 1].total.into(), backs[i].total.into()) {
                backs.swap(i - 1, i);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
}

impl Source {
    /// Hash of consumer `v`'s route as a table lists it (everything but
    /// scores: ids, URLs, hop counts), 0 for no route: what decides
    /// whether its table changed.
    fn entry_hash(&self, g: &Graph, v: u32) -> u64 {
        let route = self.route(v);
        if route.is_empty() {
            return 0;
        }
        let kind = matches!(self.key, SourceKey::Origin(_)) as u8;
        let mut h = fnv(FNV_OFFSET, &[kind]);
        h = fnv(h, self.salt.as_bytes());
        for up in route {
            let node = match up.node {
                NONE => fnv(
                    FNV_OFFSET,
                    self.origin_url(v).unwrap_or_default().as_bytes(),
                ),
                u => g.node_hash[u as usize],
            };
            h = finalise(h ^ node).wrapping_add(u64::from(up.hops));
        }
        finalise(h).max(1)
    }

    /// Recomputes the entry hashes of `consumers`; returns those that
    /// changed as `(consumer, old, new)`.
    pub(crate) fn rehash(
        &mut self,
        g: &Graph,
        consumers: impl IntoIterator<Item = u32>,
    ) -> Vec<(u32, u64, u64)> {
        let mut out = Vec::new();
        for v in consumers {
            let new = self.entry_hash(g, v);
            let old = std::mem::replace(&mut self.hashes[v as usize], new);
            if old != new {
                out.push((v, old, new));
            }
        }
        out
    }

    /// Consumers with a route, with their entry hash.
    pub(crate) fn routed(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.hashes
            .iter()
            .enumerate()
            .filter(|&(_, &h)| h != 0)
            .map(|(v, &h)| (v as u32, h))
    }

    pub(crate) fn hash_of(&self, v: u32) -> u64 {
        self.hashes[v as usize]
    }

    pub(crate) fn consumers(&self) -> usize {
        self.n
    }

    /// The origin URL template of consumer `v` when it is a root of this
    /// (static) source.
    pub(crate) fn origin_url(&self, v: u32) -> Option<&str> {
        self.roots
            .iter()
            .find(|(r, _)| *r == v)
            .and_then(|(_, url)| url.as_deref())
    }

    /// Copies the decisions of `old` (another plan of the same source,
    /// possibly over other node indices: `map` takes an old index to the
    /// new one) as this plan's previous routes, for hysteresis.
    pub(crate) fn adopt_routes(&mut self, old: &Source, map: &dyn Fn(u32) -> Option<u32>) {
        for ov in 0..old.n as u32 {
            let Some(v) = map(ov) else { continue };
            let mut len = 0;
            let at = v as usize * self.stride;
            for up in old.route(ov) {
                let node = match up.node {
                    NONE => NONE,
                    u => match map(u) {
                        Some(u) => u,
                        None => continue,
                    },
                };
                if len < self.stride {
                    self.ups[at + len] = Up { node, ..*up };
                    len += 1;
                }
            }
            self.len[v as usize] = len as u8;
            self.primary[v as usize] = self.route(v).first().map_or(NONE, |u| u.node);
            self.hashes[v as usize] = old.hashes[ov as usize];
        }
    }

    /// Sets consumer `v`'s route (nodes and hop counts; scores 0): a
    /// recorded decision taken as the previous one.
    pub(crate) fn set_route(&mut self, v: u32, ups: &[(u32, u8)]) {
        let at = v as usize * self.stride;
        let len = ups.len().min(self.stride);
        for (slot, &(node, hops)) in self.ups[at..at + len].iter_mut().zip(ups) {
            *slot = Up {
                node,
                score: 0.0,
                hops,
            };
        }
        self.len[v as usize] = len as u8;
        self.primary[v as usize] = self.route(v).first().map_or(NONE, |u| u.node);
    }

    /// Whether two plans of the same source over the same nodes decided
    /// the same (costs, hop counts, primaries, depths, routes).
    pub(crate) fn same_plan(&self, other: &Source) -> bool {
        self.n == other.n
            && self.layers.len() == other.layers.len()
            && self
                .layers
                .iter()
                .zip(&other.layers)
                .all(|(a, b)| a.to_bits() == b.to_bits())
            && self.hot == other.hot
            && self.primary == other.primary
            && (0..self.n as u32).all(|v| {
                let (a, b) = (self.route(v), other.route(v));
                a.len() == b.len()
                    && a.iter().zip(b).all(|(x, y)| {
                        x.node == y.node
                            && x.hops == y.hops
                            && x.score.to_bits() == y.score.to_bits()
                    })
            })
    }
}
