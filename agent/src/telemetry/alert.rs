//! Alerts: raised by any module through an [`AlertSender`], written by the
//! telemetry session at once, between reports.

use crate::metrics::Metrics;
use tokio::sync::mpsc;
use vantage_proto::v1::{Alert, AlertKind};
use vantage_shared::clock::now_ms;

/// Alerts waiting for the telemetry session; more are dropped and counted.
pub const ALERT_QUEUE: usize = 256;
/// Alerts older than this when a session can send them are dropped: the
/// scheduler has already replanned from reports by then.
pub const ALERT_MAX_AGE_MS: i64 = 10_000;

/// Handle to raise alerts; cheap to clone.
#[derive(Debug, Clone)]
pub struct AlertSender {
    tx: mpsc::Sender<Alert>,
    metrics: Metrics,
}

/// The sender and the receiving end the telemetry client drains.
pub fn channel(metrics: Metrics) -> (AlertSender, mpsc::Receiver<Alert>) {
    let (tx, rx) = mpsc::channel(ALERT_QUEUE);
    (AlertSender { tx, metrics }, rx)
}

impl AlertSender {
    /// Queues an alert for immediate delivery. Returns `false` (and counts
    /// it as dropped) when the queue is full.
    pub fn raise(
        &self,
        kind: AlertKind,
        subject: impl Into<String>,
        detail: impl Into<String>,
        value: f64,
    ) -> bool {
        let alert = Alert {
            seq: 0,
            agent_time_ms: now_ms(),
            kind: kind as i32,
            subject: subject.into(),
            detail: detail.into(),
            value: if value.is_finite() { value } else { 0.0 },
        };
        let sent = self.tx.try_send(alert).is_ok();
        if !sent {
            self.metrics.alerts_dropped.inc();
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_queues_and_counts_overflow() {
        let m = Metrics::default();
        let (tx, mut rx) = channel(m.clone());
        assert!(tx.raise(AlertKind::Overload, "cpu", "cpu above 90%", f64::NAN));
        let a = rx.try_recv().unwrap();
        assert_eq!(a.kind, AlertKind::Overload as i32);
        assert_eq!(a.value, 0.0, "non-finite values are never sent");
        for _ in 0..ALERT_QUEUE {
            tx.raise(AlertKind::Overload, "cpu", "", 1.0);
        }
        assert!(!tx.raise(AlertKind::Overload, "cpu", "", 1.0));
        assert_eq!(m.alerts_dropped.get(), 1);
    }
}
