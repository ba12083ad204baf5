//! The liveness loop of [`App`]: node states from report age (up →
//! suspect → down), the replans and session closes that follow, the
//! per-state gauges, and the scheduler's awareness of its own report loss
//! ([`LocalHealth`]).

use super::SocketDrops;
use super::*;

impl App {
    /// The liveness loop: re-evaluates node states every 50 ms.
    ///
    /// It knows when the scheduler itself loses reports (the telemetry
    /// socket's drop count, `drops`, and its own stalls: `LocalHealth`):
    /// nodes that would go down then are held short of it (see
    /// `NodeEntry::evaluate`), so an overloaded or paused scheduler does not
    /// declare healthy agents dead and replan around them — the local
    /// health awareness of Lifeguard (Dadgar et al. 2018).
    pub async fn run_liveness(self: Arc<Self>, drops: SocketDrops) {
        const TICK: Duration = Duration::from_millis(50);
        /// Gauges and store counters are refreshed once a second (or at once
        /// after a transition), not on every 50 ms liveness tick.
        const GAUGE_EVERY: u32 = 20;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_stats = self.store.write_stats();
        let mut local = LocalHealth::new(drops);
        let mut ticks: u32 = 0;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = now_ms();
            let interval = i64::from(self.report_interval_ms());
            local.ticked(now, interval);
            let tick = self
                .registry
                .tick_aware(now, interval, || local.lossy(&self.metrics, now, interval));
            local.report_held(tick.held, &self.metrics);
            let changes = tick.changes;
            let transitions = !changes.is_empty();
            if transitions {
                self.resolver.invalidate();
            }
            self.resolver.maybe_refresh(&self.registry, now);
            let mut replan = false;
            for (id, from, to) in changes {
                replan |= self.on_transition(&id, from, to);
            }
            if replan {
                self.trigger_replan();
            }
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(GAUGE_EVERY) {
                self.close_silent_sessions();
                // Keeps the drop count current (and counted in /metrics)
                // while no node is about to go down.
                local.lossy(&self.metrics, now, interval);
            }
            if transitions || ticks.is_multiple_of(GAUGE_EVERY) {
                last_stats = self.refresh_gauges(last_stats);
            }
        }
    }

    /// Logs, counts and records a node state change (a down node's session
    /// is closed later, see [`App::close_silent_sessions`]). Returns whether
    /// the change needs a replan.
    fn on_transition(&self, id: &str, from: NodeState, to: NodeState) -> bool {
        info!(
            node_id = id,
            from = from.label(),
            to = to.label(),
            "node state changed"
        );
        self.metrics
            .node_transitions
            .get_or_create(&StateLabel {
                state: to.label().to_owned(),
            })
            .inc();
        // Every replica sees every node; the leader records what they see.
        if self.cluster.is_leader() {
            self.event(id, to.label(), &format!("from {}", from.label()));
        }
        if let Some(r) = &self.recorder {
            r.node(now_ms(), id, to.label(), from.label(), None);
        }
        matches!(to, NodeState::Down | NodeState::Up | NodeState::Draining)
    }

    /// A down node's session that stays silent is dead or stuck: closed so
    /// `connected` is truthful and a live agent reconnects. Not at once when
    /// the node goes down (3 report intervals): at short intervals a busy
    /// moment would otherwise turn into thousands of reconnects with full
    /// handshakes, making the scheduler busier still. A node whose reports
    /// resume within the grace is simply up again.
    fn close_silent_sessions(&self) {
        let grace = (3 * i64::from(self.report_interval_ms())).max(SESSION_GRACE_MS);
        for c in self.registry.silent_sessions(now_ms(), grace) {
            c.close(
                vantage_shared::close::CloseCode::ReportTimeout,
                "no reports: the node is down",
            );
        }
    }

    /// Sets the per-state node gauges and adds the store writer's progress
    /// since `last` to its counters; returns the new baseline.
    fn refresh_gauges(&self, last: WriteStats) -> WriteStats {
        for (state, n) in self.registry.state_counts() {
            self.metrics
                .nodes
                .get_or_create(&StateLabel {
                    state: state.to_owned(),
                })
                .set(n);
        }
        let stats = self.store.write_stats();
        self.metrics
            .store_ops
            .inc_by(stats.ops_written.saturating_sub(last.ops_written));
        self.metrics
            .store_batches
            .inc_by(stats.batches.saturating_sub(last.batches));
        self.metrics
            .store_dropped
            .inc_by(stats.ops_dropped.saturating_sub(last.ops_dropped));
        stats
    }
}

/// Whether the scheduler itself lost reports lately. Two signs make it
/// "lossy" for the next three report intervals (the span a missed report
/// counts against a node): new drops at the telemetry socket, and a
/// liveness loop that did not run for a whole report interval (the process
/// was paused or starved of CPU: the reports that arrived meanwhile are
/// still queued, or were dropped).
#[derive(Debug)]
struct LocalHealth {
    socket: SocketDrops,
    /// The socket's drop count at the last reading.
    drops: Option<u64>,
    /// When the liveness loop last ran.
    last_tick_ms: Option<i64>,
    /// Missed reports may be the scheduler's fault until then.
    lossy_until_ms: i64,
    /// Nodes held short of down at the last tick.
    held: usize,
}

impl LocalHealth {
    fn new(socket: SocketDrops) -> Self {
        LocalHealth {
            socket,
            drops: None,
            last_tick_ms: None,
            lossy_until_ms: 0,
            held: 0,
        }
    }

    /// Notes a run of the liveness loop at `now_ms`; a gap of more than
    /// `interval_ms` since the last one makes the scheduler lossy.
    fn ticked(&mut self, now_ms: i64, interval_ms: i64) {
        if let Some(last) = self.last_tick_ms.replace(now_ms)
            && now_ms - last > interval_ms
        {
            warn!(
                stalled_ms = now_ms - last,
                "the liveness loop did not run for more than a report interval \
                 (process paused or short of CPU): missed reports are not held \
                 against nodes that are still connected"
            );
            self.lossy_from(now_ms, interval_ms);
        }
    }

    /// Missed reports count against a node for 3 intervals: losses within
    /// that span may be why its reports are missing.
    fn lossy_from(&mut self, now_ms: i64, interval_ms: i64) {
        self.lossy_until_ms = self.lossy_until_ms.max(now_ms + 3 * interval_ms);
    }

    /// Reads the drop count (counting new drops in `/metrics`) and says
    /// whether the scheduler is lossy at `now_ms`.
    fn lossy(&mut self, metrics: &Metrics, now_ms: i64, interval_ms: i64) -> bool {
        if let Some(drops) = self.socket.read() {
            let new = drops.saturating_sub(self.drops.unwrap_or(0));
            if new > 0 {
                metrics.telemetry_socket_drops.inc_by(new);
                self.lossy_from(now_ms, interval_ms);
            }
            self.drops = Some(drops);
        }
        now_ms < self.lossy_until_ms
    }

    /// Logs when nodes start and stop being held; sets the gauge.
    fn report_held(&mut self, held: usize, metrics: &Metrics) {
        if held == self.held {
            return;
        }
        if self.held == 0 {
            warn!(
                nodes = held,
                "the scheduler lost reports itself (socket drops or a stall): nodes whose \
                 reports stopped are held at suspect, not down (see docs/runbooks.md, Flapping)"
            );
        } else if held == 0 {
            info!("no node is held short of down any more");
        }
        metrics
            .liveness_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        self.held = held;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_longer_than_an_interval_makes_the_scheduler_lossy() {
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        let mut h = LocalHealth::new(SocketDrops::unknown());
        h.ticked(0, 1_000);
        h.ticked(50, 1_000);
        assert!(!h.lossy(&metrics, 50, 1_000));
        // Regular ticks, even late ones, up to an interval apart: nothing.
        h.ticked(1_050, 1_000);
        assert!(!h.lossy(&metrics, 1_050, 1_000));
        // 4 s without a tick: lossy for 3 intervals from the resume.
        h.ticked(5_050, 1_000);
        assert!(h.lossy(&metrics, 5_050, 1_000));
        assert!(h.lossy(&metrics, 8_049, 1_000));
        assert!(!h.lossy(&metrics, 8_050, 1_000));
    }
}
