//! What the relay tells the scheduler (`Report.streams`, `Report.groups`,
//! the traffic fields of `Report.load`) and the operator (`/v1/status`,
//! per-stream gauges), and the housekeeping task that disconnects viewers
//! stuck behind a full socket and unsubscribes directory entries no stream
//! here uses any more.

use super::Relay;
use super::metrics::{MAX_STREAM_LABELS, RoleLabel, StreamLabel};
use super::qoe::GroupFigures;
use super::stream::{Role, StreamSnapshot, lock, percentile};
use super::viewer::LeaveReason;
use crate::telemetry::ReportSource;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use vantage_proto::v1::{GroupQoe, Report, StreamState};
use vantage_shared::stream::StreamKey;

/// How often housekeeping runs.
pub const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(500);
/// How often unused directory subscriptions are looked for.
const SWEEP_PERIOD: Duration = Duration::from_secs(5);

/// `relay` section of `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct RelayStatus {
    pub viewers: usize,
    pub egress_mbps: f64,
    pub ingress_mbps: f64,
    pub send_lag_p95_ms: f64,
    pub streams: Vec<StreamSnapshot>,
    pub groups: Vec<GroupView>,
}

/// One client group as reported.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupView {
    pub group: String,
    pub viewers: u32,
    pub buffer_ms: f64,
    pub stall_rate: f64,
    pub cmcd_samples: u32,
}

impl Relay {
    fn snapshots(&self, now: Instant) -> Vec<StreamSnapshot> {
        let stall = i64::try_from(self.config().stall_lag.as_millis()).unwrap_or(i64::MAX);
        let mut v: Vec<StreamSnapshot> = self
            .streams()
            .iter()
            .map(|s| s.snapshot(now, stall))
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    fn groups(&self, snaps: &[StreamSnapshot]) -> Vec<GroupView> {
        let mut viewers: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for s in snaps {
            for (g, n, lagging) in &s.groups {
                let e = viewers.entry(g.to_string()).or_default();
                e.0 += n;
                e.1 += lagging;
            }
        }
        let figures = lock(&self.inner.qoe).figures(self.clock_ms());
        let mut cmcd: BTreeMap<String, GroupFigures> =
            figures.into_iter().map(|f| (f.group.clone(), f)).collect();
        let mut names: Vec<String> = viewers.keys().chain(cmcd.keys()).cloned().collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|g| {
                let (n, lagging) = viewers.get(&g).copied().unwrap_or_default();
                let f = cmcd.remove(&g);
                let (samples, buffer_ms, stalls) =
                    f.map_or((0, 0.0, 0), |f| (f.samples, f.buffer_ms, f.stalls));
                let signals = samples + n;
                GroupView {
                    group: g,
                    viewers: n,
                    buffer_ms,
                    stall_rate: if signals == 0 {
                        0.0
                    } else {
                        f64::from(stalls + lagging) / f64::from(signals)
                    },
                    cmcd_samples: samples,
                }
            })
            .collect()
    }

    fn node_rates(&self, now: Instant) -> (f64, f64) {
        let n = &self.inner.node;
        let e = self
            .inner
            .out_rate
            .rate(n.egress.load(Ordering::Relaxed), now);
        let i = self
            .inner
            .in_rate
            .rate(n.ingress.load(Ordering::Relaxed), now);
        (e * 8.0 / 1e6, i * 8.0 / 1e6)
    }

    /// The relay's state for `/v1/status`.
    pub fn status(&self) -> RelayStatus {
        let now = Instant::now();
        let streams = self.snapshots(now);
        let groups = self.groups(&streams);
        let (egress_mbps, ingress_mbps) = self.node_rates(now);
        let mut lags: Vec<i64> = streams
            .iter()
            .flat_map(|s| s.lags.iter().copied())
            .collect();
        lags.sort_unstable();
        RelayStatus {
            viewers: streams.iter().map(|s| s.viewers).sum(),
            egress_mbps,
            ingress_mbps,
            send_lag_p95_ms: percentile(&lags, 0.95) as f64,
            streams,
            groups,
        }
    }
}

impl ReportSource for Relay {
    fn fill(&self, report: &mut Report) {
        let status = self.status();
        let load = report.load.get_or_insert_with(Default::default);
        load.egress_mbps = finite(status.egress_mbps);
        load.ingress_mbps = finite(status.ingress_mbps);
        load.viewers = u32::try_from(status.viewers).unwrap_or(u32::MAX);
        load.streams = u32::try_from(status.streams.len()).unwrap_or(u32::MAX);
        for s in &status.streams {
            report.streams.push(StreamState {
                key: s.key.clone(),
                role: s.role.proto() as i32,
                upstream: s.upstream.clone(),
                bitrate_kbps: finite(s.bitrate_kbps),
                viewers: u32::try_from(s.viewers).unwrap_or(u32::MAX),
                gop_cache_ms: finite(s.gop_cache_ms),
                ingest_lag_ms: finite(s.ingest_lag_ms),
                send_lag_p95_ms: finite(s.send_lag_p95_ms),
            });
        }
        // The viewer TCP_INFO sampler may already have filled the same
        // groups (RTT, retransmits, its rebuffering ratio): complete its
        // entries. CMCD buffer levels (which include beacons) win; the
        // stall rate is the worse of the two signals.
        for g in status.groups {
            match report.groups.iter_mut().find(|x| x.group == g.group) {
                Some(x) => {
                    x.viewers = x.viewers.max(g.viewers);
                    if g.cmcd_samples > 0 {
                        x.buffer_ms = finite(g.buffer_ms);
                    }
                    x.stall_rate = unit(x.stall_rate.max(g.stall_rate));
                }
                None => report.groups.push(GroupQoe {
                    group: g.group,
                    viewers: g.viewers,
                    buffer_ms: finite(g.buffer_ms),
                    stall_rate: unit(g.stall_rate),
                    samples: g.cmcd_samples,
                    ..Default::default()
                }),
            }
        }
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() { v.max(0.0) } else { 0.0 }
}

fn unit(v: f64) -> f64 {
    finite(v).min(1.0)
}

/// Every [`HOUSEKEEPING_PERIOD`]: disconnects viewers that made no progress
/// while lagging for `max_lag × overflow_limit`, and refreshes gauges.
pub async fn housekeeping(relay: Relay, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_PERIOD);
    let mut labelled: HashSet<String> = HashSet::new();
    let mut sweep = Instant::now();
    let cfg = relay.config().clone();
    let max_lag = i64::try_from(cfg.max_lag.as_millis()).unwrap_or(i64::MAX);
    let stuck_ms = u64::try_from(cfg.max_lag.as_millis()).unwrap_or(u64::MAX)
        * u64::from(cfg.overflow_limit.max(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now_ms = relay.clock_ms();
        for s in relay.streams() {
            let head = s.lock_ring().head_ts();
            let Some(head) = head else { continue };
            for slot in s.slots() {
                let idle = now_ms.saturating_sub(slot.progress_ms.load(Ordering::Relaxed));
                if slot.lag_ms(head) > max_lag && idle > stuck_ms {
                    slot.set_reason(LeaveReason::Stalled);
                    slot.kill.cancel();
                }
            }
        }
        // A stream published here whose origin the scheduler says is
        // another node (published there first): this publisher ends, told
        // who holds the key.
        for s in relay.streams() {
            if s.role() == Role::Origin
                && let Some(origin) = relay.origin_elsewhere(&s.key)
            {
                tracing::warn!(
                    stream = %s.key,
                    origin,
                    "origin conflict: {origin} published {} first and is its origin; ending the publisher here",
                    s.key
                );
                s.cancel_source();
            }
        }
        // Directory subscriptions no stream here used for a while go.
        if sweep.elapsed() >= SWEEP_PERIOD {
            sweep = Instant::now();
            let held: HashSet<StreamKey> = relay.streams().iter().map(|s| s.key.clone()).collect();
            relay
                .interest()
                .sweep(cfg.directory_linger, |k| held.contains(k));
            relay.sweep_sessions();
        }
        let status = relay.status();
        let m = relay.metrics();
        for role in [Role::Origin, Role::Relay] {
            let n = status.streams.iter().filter(|s| s.role == role).count();
            let label = match role {
                Role::Origin => "origin",
                Role::Relay => "relay",
            };
            m.streams
                .get_or_create(&RoleLabel { role: label })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        m.send_lag_p95_ms.set(status.send_lag_p95_ms);
        let mut seen = HashSet::new();
        for s in status.streams.iter() {
            if !labelled.contains(&s.key) && labelled.len() >= MAX_STREAM_LABELS {
                continue;
            }
            let l = StreamLabel {
                stream: s.key.clone(),
            };
            m.stream_viewers
                .get_or_create(&l)
                .set(i64::try_from(s.viewers).unwrap_or(i64::MAX));
            m.stream_bitrate_kbps.get_or_create(&l).set(s.bitrate_kbps);
            m.stream_ingest_lag_ms
                .get_or_create(&l)
                .set(s.ingest_lag_ms);
            m.stream_gop_cache_ms.get_or_create(&l).set(s.gop_cache_ms);
            labelled.insert(s.key.clone());
            seen.insert(s.key.clone());
        }
        labelled.retain(|k| {
            if seen.contains(k) {
                return true;
            }
            let l = StreamLabel { stream: k.clone() };
            m.stream_viewers.remove(&l);
            m.stream_bitrate_kbps.remove(&l);
            m.stream_ingest_lag_ms.remove(&l);
            m.stream_gop_cache_ms.remove(&l);
            false
        });
    }
}
