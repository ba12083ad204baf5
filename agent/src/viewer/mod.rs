//! Viewer path measurement (DESIGN §4): `TCP_INFO` of viewer sockets,
//! aggregated per client group into `Report.groups`.
//!
//! The relay registers each viewer socket once and samples it from the
//! viewer's own task:
//!
//! ```ignore
//! let mut viewer = stats.register(GroupKey::locate(Some((lat, lon)), 4), &socket);
//! loop {
//!     // ... write media ...
//!     viewer.sample(&socket)?;           // reads TCP_INFO at most once a second
//!     viewer.buffer(cmcd_bl_ms);         // when the player reports its buffer
//!     viewer.stalled(skipped_media);     // when the viewer had to skip/stall
//! }
//! // dropping the handle removes the viewer from its group
//! ```
//!
//! [`ViewerStats`] is cheap to clone and is a
//! [`crate::telemetry::ReportSource`].

pub mod groups;
pub mod tcp_info;

use crate::telemetry::ReportSource;
use groups::{Contribution, Groups};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vantage_proto::v1::{GroupQoe, Report};
use vantage_shared::group::GroupKey;

pub use groups::ViewerConfig;
pub use tcp_info::TcpInfo;

/// `vantage_agent_viewer_*` metrics.
#[derive(Debug, Clone, Default)]
pub struct ViewerMetrics {
    pub samples: Counter,
    pub sample_errors: Counter,
    pub registered: Gauge,
    pub groups: Gauge,
}

impl ViewerMetrics {
    pub fn register(registry: &mut Registry) -> ViewerMetrics {
        let m = ViewerMetrics::default();
        let r = registry.sub_registry_with_prefix("vantage_agent");
        r.register(
            "viewer_tcp_samples",
            "TCP_INFO samples of viewer sockets",
            m.samples.clone(),
        );
        r.register(
            "viewer_tcp_sample_errors",
            "TCP_INFO reads that failed (socket closed, not TCP)",
            m.sample_errors.clone(),
        );
        r.register(
            "viewer_sockets",
            "Viewer sockets registered for TCP_INFO sampling",
            m.registered.clone(),
        );
        r.register(
            "viewer_groups",
            "Client groups in the last report",
            m.groups.clone(),
        );
        m
    }
}

/// Viewer QoE per client group; shared by the relay (writers) and
/// telemetry (reader).
#[derive(Clone)]
pub struct ViewerStats {
    groups: Arc<Mutex<Groups>>,
    metrics: ViewerMetrics,
    sample_interval: Duration,
}

impl ViewerStats {
    pub fn new(cfg: ViewerConfig, metrics: ViewerMetrics) -> ViewerStats {
        ViewerStats {
            sample_interval: cfg.sample_interval,
            groups: Arc::new(Mutex::new(Groups::new(cfg, Instant::now()))),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Groups> {
        // A poisoned lock only means a panic elsewhere; the sums are usable.
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a viewer socket in `group`. The socket is not read here;
    /// the handle samples it when asked. Dropping the handle unregisters.
    pub fn register(&self, group: GroupKey, _socket: &impl AsFd) -> ViewerHandle {
        let group = self.lock().join(group);
        self.metrics.registered.inc();
        let now = Instant::now();
        ViewerHandle {
            stats: self.clone(),
            group,
            last: TcpInfo::default(),
            last_at: now,
            last_sample: None,
            pending: Contribution::default(),
        }
    }

    /// The aggregates as they would be reported now.
    pub fn snapshot(&self) -> Vec<GroupQoe> {
        let groups = self.lock().snapshot(Instant::now());
        self.metrics
            .groups
            .set(i64::try_from(groups.len()).unwrap_or(i64::MAX));
        groups
    }

    /// Viewers registered in all groups.
    pub fn viewers(&self) -> u32 {
        self.lock().viewers()
    }
}

impl ReportSource for ViewerStats {
    fn fill(&self, report: &mut Report) {
        report.groups.extend(self.snapshot());
    }
}

/// One registered viewer socket.
pub struct ViewerHandle {
    stats: ViewerStats,
    group: GroupKey,
    last: TcpInfo,
    last_at: Instant,
    last_sample: Option<Instant>,
    /// Stalls and buffer reports not yet flushed into the group.
    pending: Contribution,
}

impl ViewerHandle {
    /// The group this viewer is counted in (`"other"` past the group limit).
    pub fn group(&self) -> &GroupKey {
        &self.group
    }

    /// Samples `TCP_INFO` of `socket` unless the last sample is younger
    /// than the sample interval (then `Ok(None)`). Call it as often as
    /// convenient, e.g. after each write.
    pub fn sample(&mut self, socket: &impl AsFd) -> std::io::Result<Option<TcpInfo>> {
        let now = Instant::now();
        if self
            .last_sample
            .is_some_and(|t| now.saturating_duration_since(t) < self.stats.sample_interval)
        {
            return Ok(None);
        }
        self.sample_now(socket, now).map(Some)
    }

    /// Samples `TCP_INFO` now, unthrottled.
    pub fn sample_now(&mut self, socket: &impl AsFd, now: Instant) -> std::io::Result<TcpInfo> {
        let info = match tcp_info::tcp_info(socket) {
            Ok(i) => i,
            Err(e) => {
                self.stats.metrics.sample_errors.inc();
                return Err(e);
            }
        };
        self.stats.metrics.samples.inc();
        let mut c = std::mem::take(&mut self.pending);
        c.rtt_ms = (info.rtt_us > 0).then(|| info.rtt_ms());
        c.delivery_mbps = info.delivery_rate_mbps().filter(|r| *r > 0.0);
        c.retransmitted = u64::from(info.total_retrans.saturating_sub(self.last.total_retrans));
        c.segments = match (info.segs_out, self.last.segs_out) {
            (Some(now), Some(before)) => u64::from(now.saturating_sub(before)),
            (Some(now), None) => u64::from(now),
            _ => 0,
        };
        c.watched = now.saturating_duration_since(self.last_at);
        self.stats.lock().record(&self.group, now, &c);
        self.last = info;
        self.last_at = now;
        self.last_sample = Some(now);
        Ok(info)
    }

    /// The viewer stalled (or had media skipped) for `d`.
    pub fn stalled(&mut self, d: Duration) {
        self.pending.stalled += d;
    }

    /// The viewer's buffer level in ms (CMCD `bl` or the relay's send lag).
    pub fn buffer(&mut self, ms: f64) {
        self.pending.buffer_ms = Some(ms);
    }
}

impl Drop for ViewerHandle {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut c = std::mem::take(&mut self.pending);
        c.watched = now.saturating_duration_since(self.last_at);
        let mut groups = self.stats.lock();
        groups.record(&self.group, now, &c);
        groups.leave(&self.group);
        drop(groups);
        self.stats.metrics.registered.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn samples_real_sockets_per_group() {
        let stats = ViewerStats::new(ViewerConfig::default(), ViewerMetrics::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut viewers = Vec::new();
        let mut handles = Vec::new();
        for i in 0..3 {
            let client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let group = if i < 2 {
                GroupKey::locate(Some((48.85, 2.35)), 4)
            } else {
                GroupKey::unknown()
            };
            handles.push(stats.register(group, &server));
            viewers.push((client, server));
        }
        assert_eq!(stats.viewers(), 3);
        for ((client, server), handle) in viewers.iter_mut().zip(&mut handles) {
            let data = vec![1u8; 256 * 1024];
            let writer = server.write_all(&data);
            let mut got = vec![0u8; data.len()];
            let reader = client.read_exact(&mut got);
            let (w, r) = tokio::join!(writer, reader);
            w.unwrap();
            r.unwrap();
            let info = handle
                .sample(server)
                .unwrap()
                .expect("first sample is taken");
            assert!(info.rtt_us > 0);
            assert!(handle.sample(server).unwrap().is_none(), "throttled");
            handle.buffer(1500.0);
            handle.stalled(Duration::from_millis(10));
        }
        let snap = stats.snapshot();
        assert_eq!(snap.len(), 2);
        let paris = snap.iter().find(|g| g.group == "u09t").unwrap();
        assert_eq!(paris.viewers, 2);
        assert_eq!(paris.samples, 2);
        assert!(
            paris.tcp_rtt_ms > 0.0 && paris.tcp_rtt_ms < 100.0,
            "{paris:?}"
        );
        assert_eq!(paris.retransmit_rate, 0.0);
        // Buffer/stall reports are flushed with the next sample or on drop.
        drop(handles);
        let snap = stats.snapshot();
        let paris = snap.iter().find(|g| g.group == "u09t").unwrap();
        assert_eq!(paris.viewers, 0);
        assert_eq!(paris.buffer_ms, 1500.0);
        assert!(paris.stall_rate > 0.0 && paris.stall_rate <= 1.0);
        assert_eq!(stats.viewers(), 0);
        let mut report = Report::default();
        stats.fill(&mut report);
        assert_eq!(report.groups.len(), 2);
    }

    #[tokio::test]
    async fn a_closed_or_non_tcp_socket_is_an_error_not_a_panic() {
        let stats = ViewerStats::new(ViewerConfig::default(), ViewerMetrics::default());
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut h = stats.register(GroupKey::unknown(), &udp);
        assert!(h.sample(&udp).is_err());
        assert_eq!(stats.metrics.sample_errors.get(), 1);
    }
}
