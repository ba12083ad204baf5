//! Edge feeds: which upstream each (node, stream) pulls from, chains of
//! relays, release when the last viewer leaves, failover off dead nodes.

use super::*;

impl Engine<'_> {
    /// Makes sure `node` pulls `stream`; returns the extra setup time of
    /// the cold hops (connect + request per hop).
    pub(super) fn ensure_feed(&mut self, node: usize, stream: usize, depth: u32) -> f64 {
        let origin = usize::from(self.w.stream_origin[stream]);
        if node == origin || depth > 4 {
            return 0.0;
        }
        let idx = node * self.streams + stream;
        if self.feeds[idx].active {
            return 0.0;
        }
        let up = self.pick_upstream(node, stream);
        // Whatever was memoised for the idle feed in this load update is
        // stale now.
        self.ratio_memo[idx].0 = u64::MAX;
        self.feeds[idx].active = true;
        self.feeds[idx].upstream = up as u16;
        self.feeds[up * self.streams + stream].downstream += 1;
        let hop = 2.0 * self.w.rtt(up, node) + self.s.network.hop_processing_ms;
        hop + self.ensure_feed(up, stream, depth + 1)
    }

    /// The first live upstream candidate whose own chain does not pass
    /// through `node`; the origin otherwise.
    fn pick_upstream(&self, node: usize, stream: usize) -> usize {
        let origin = usize::from(self.w.stream_origin[stream]);
        if let Some(list) = self.policy.upstreams(node, stream) {
            for &u in list {
                let u = usize::from(u);
                if u != node && self.up[u] && !self.chain_contains(u, stream, node) {
                    return u;
                }
            }
        }
        origin
    }

    /// One more viewer or downstream feed of `node` needs rendition `k` of
    /// `stream`: the first one starts pulling it from the upstream.
    pub(super) fn add_need(&mut self, node: usize, stream: usize, k: usize) {
        let mut cur = node;
        for _ in 0..8 {
            let idx = cur * self.streams + stream;
            self.feeds[idx].need[k] += 1;
            let f = self.feeds[idx];
            if f.need[k] > 1 || f.upstream == NONE || !f.active {
                return;
            }
            let up = usize::from(f.upstream);
            self.relay_mbps[up] += self.w.ladder_mbps[k];
            cur = up;
        }
    }

    /// The reverse of [`Self::add_need`]: the last one stops the pull.
    pub(super) fn remove_need(&mut self, node: usize, stream: usize, k: usize) {
        let mut cur = node;
        for _ in 0..8 {
            let idx = cur * self.streams + stream;
            let f = &mut self.feeds[idx];
            if f.need[k] == 0 {
                return;
            }
            f.need[k] -= 1;
            if f.need[k] > 0 || f.upstream == NONE || !f.active {
                return;
            }
            let up = usize::from(f.upstream);
            self.relay_mbps[up] -= self.w.ladder_mbps[k];
            cur = up;
        }
    }

    fn chain_contains(&self, from: usize, stream: usize, target: usize) -> bool {
        let mut cur = from;
        for _ in 0..8 {
            if cur == target {
                return true;
            }
            let f = self.feeds[cur * self.streams + stream];
            if !f.active || f.upstream == NONE {
                return false;
            }
            cur = usize::from(f.upstream);
        }
        true
    }

    /// Drops a reference to `node`'s feed of `stream`; stops the pull when
    /// nobody needs it.
    pub(super) fn release_feed(&mut self, node: usize, stream: usize) {
        let mut cur = node;
        for _ in 0..8 {
            let idx = cur * self.streams + stream;
            let f = self.feeds[idx];
            if !f.active || f.viewers > 0 || f.downstream > 0 {
                return;
            }
            self.feeds[idx].active = false;
            let up = usize::from(f.upstream);
            self.feeds[idx].upstream = NONE;
            if f.upstream == NONE {
                return;
            }
            let uidx = up * self.streams + stream;
            self.feeds[uidx].downstream = self.feeds[uidx].downstream.saturating_sub(1);
            cur = up;
        }
    }

    fn switch_feed(&mut self, node: usize, stream: usize, to: usize) {
        let idx = node * self.streams + stream;
        let old = usize::from(self.feeds[idx].upstream);
        if old == to || self.feeds[idx].upstream == NONE {
            return;
        }
        self.ratio_memo[idx].0 = u64::MAX;
        let need = self.feeds[idx].need;
        for (k, &c) in need.iter().enumerate() {
            if c > 0 {
                self.relay_mbps[old] -= self.w.ladder_mbps[k];
                self.remove_need(old, stream, k);
            }
        }
        let oidx = old * self.streams + stream;
        self.feeds[oidx].downstream = self.feeds[oidx].downstream.saturating_sub(1);
        self.feeds[idx].upstream = to as u16;
        self.feeds[to * self.streams + stream].downstream += 1;
        self.ensure_feed(to, stream, 1);
        for (k, &c) in need.iter().enumerate() {
            if c > 0 {
                self.relay_mbps[to] += self.w.ladder_mbps[k];
                self.add_need(to, stream, k);
            }
        }
        self.release_feed(old, stream);
        self.metrics.reroutes += 1;
    }

    /// Agents fail over locally when their upstream is dead (within the
    /// tick, under DESIGN §11's 1 s), and planned policies follow the
    /// newest tables' primaries.
    pub(super) fn failover_feeds(&mut self) {
        for node in 0..self.n {
            if !self.up[node] {
                continue;
            }
            for stream in 0..self.streams {
                let f = self.feeds[node * self.streams + stream];
                if !f.active || f.upstream == NONE {
                    continue;
                }
                let cur = usize::from(f.upstream);
                let want = self.pick_upstream(node, stream);
                if want != cur && (!self.up[cur] || self.kind.plans_upstreams()) {
                    self.switch_feed(node, stream, want);
                }
            }
        }
    }
}
