//! Probe endpoints on real loopback UDP sockets: mutual measurement,
//! strangers and malformed datagrams, lost targets, the orphan rule, key
//! rotation and the packet rate with 50 targets.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test crate

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use vantage_agent::metrics::Metrics;
use vantage_agent::probe::{ProbeConfig, ProbeMetrics, ProbeService, ProbeStatus, ReplyLimits};
use vantage_agent::routes::{AppliedTable, TableSource};
use vantage_agent::telemetry::ReportSource;
use vantage_proto::v1::{
    Alert, AlertKind, PathMeasurement, ProbeReason, ProbeTarget, Report, RouteTable,
};
use vantage_shared::clock::now_ms;
use vantage_shared::probe::{Kind, NodeTag, PACKET_LEN, Packet, ProbeKey, ProbeKeys};

const KEY: &[u8] = b"cluster probe key, 32 bytes long";

static VERSION: AtomicU64 = AtomicU64::new(1);

struct Endpoint {
    id: String,
    addr: SocketAddr,
    tables: watch::Sender<Option<Arc<AppliedTable>>>,
    status: ProbeStatus,
    metrics: ProbeMetrics,
    alerts: mpsc::Receiver<Alert>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn table(id: &str, targets: &[(&str, SocketAddr)], key: &[u8], ttl_s: u32) -> RouteTable {
    let v = VERSION.fetch_add(1, Ordering::Relaxed);
    RouteTable {
        node_id: id.into(),
        version: v,
        nonce: format!("n{v}"),
        ttl_s,
        probe_targets: targets
            .iter()
            .map(|(node, addr)| ProbeTarget {
                node_id: (*node).into(),
                addr: addr.to_string(),
                reason: ProbeReason::Nearest as i32,
            })
            .collect(),
        probe_key: key.to_vec(),
        ..Default::default()
    }
}

async fn endpoint_with(id: &str, cfg: ProbeConfig, reachable: bool) -> Endpoint {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (tables, rx) = watch::channel(None);
    let (alerts_tx, alerts) = vantage_agent::telemetry::alert::channel(Metrics::default());
    let metrics = ProbeMetrics::default();
    let service = ProbeService::new(socket, id, cfg, rx, alerts_tx, metrics.clone())
        .unwrap()
        .with_reachability(move || reachable);
    let cancel = CancellationToken::new();
    let status = service.status();
    let addr = service.local_addr();
    let task = tokio::spawn(service.run(cancel.clone()));
    Endpoint {
        id: id.into(),
        addr,
        tables,
        status,
        metrics,
        alerts,
        cancel,
        task,
    }
}

async fn endpoint(id: &str) -> Endpoint {
    endpoint_with(id, ProbeConfig::default(), false).await
}

impl Endpoint {
    fn apply(&self, t: RouteTable, applied_at_ms: i64) {
        let applied =
            AppliedTable::new(t, &self.id, TableSource::Scheduler, applied_at_ms).unwrap();
        self.tables.send_replace(Some(Arc::new(applied)));
    }

    fn probe(&self, targets: &[&Endpoint], key: &[u8]) {
        let targets: Vec<(&str, SocketAddr)> =
            targets.iter().map(|e| (e.id.as_str(), e.addr)).collect();
        self.apply(table(&self.id, &targets, key, 60), now_ms());
    }

    fn path(&self, to: &str) -> Option<PathMeasurement> {
        let mut report = Report::default();
        self.status.fill(&mut report);
        report.paths.into_iter().find(|p| p.target_node_id == to)
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("probe task did not stop")
            .unwrap();
    }
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `limit`.
async fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_measure_each_other() {
    let a = endpoint("edge-a").await;
    let b = endpoint("edge-b").await;
    a.probe(&[&b], KEY);
    b.probe(&[&a], KEY);
    for (from, to) in [(&a, "edge-b"), (&b, "edge-a")] {
        let m = eventually(Duration::from_secs(5), || {
            from.path(to).filter(|m| m.samples >= 10)
        })
        .await
        .unwrap_or_else(|| panic!("no measurement {} -> {to}", from.id));
        assert!(m.rtt_p50_ms < 5.0, "{m:?}");
        assert!(m.rtt_p95_ms < 20.0, "{m:?}");
        assert!(m.rtt_ewma_ms > 0.0);
        assert_eq!(m.loss, 0.0, "{m:?}");
        assert!(m.last_success_age_ms < 1000);
        assert!(
            vantage_shared::validate::report(&Report {
                paths: vec![m],
                ..Default::default()
            })
            .is_ok()
        );
    }
    assert!(a.metrics.sent.get() >= 10);
    assert!(a.metrics.received.get() >= 10);
    assert!(a.metrics.reflected.get() >= 10, "a answered b's probes");
    assert_eq!(a.metrics.targets.get(), 1);
    assert_eq!(a.metrics.active.get(), 1);
    for r in ["auth", "unmatched", "rate"] {
        assert_eq!(a.metrics.dropped(r), 0, "{r}");
    }
    let view = a.status.snapshot();
    assert!(view.active && view.keyed);
    assert_eq!(view.paths.len(), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_malformed_datagrams_get_no_reply_and_are_counted() {
    let a = endpoint("edge-a").await;
    a.probe(&[], KEY);
    eventually(Duration::from_secs(2), || {
        a.status.snapshot().keyed.then_some(())
    })
    .await
    .unwrap();
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = NodeTag::of("stranger");
    let good = ProbeKey::new(KEY).unwrap();
    let other = ProbeKey::new(b"another cluster").unwrap();
    let req = Packet::request(1, me, 10);
    let mut bad_version = req.encode(&good);
    bad_version[4] = 9;
    let mut bad_kind = req.encode(&good);
    bad_kind[5] = 7;
    let mut tampered = req.encode(&good);
    tampered[40] ^= 1;
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        b"hello".to_vec(),
        vec![0u8; 1400],
        vec![0u8; PACKET_LEN],
        bad_version.to_vec(),
        bad_kind.to_vec(),
        tampered.to_vec(),
        req.encode(&other).to_vec(),
        // Authenticated, but a reply to nothing we sent.
        req.reply(me, 1, 2).encode(&good).to_vec(),
    ];
    for d in &junk {
        stranger.send_to(d, a.addr).await.unwrap();
    }
    let dropped = || {
        [
            "short",
            "long",
            "magic",
            "version",
            "kind",
            "auth",
            "unmatched",
        ]
        .map(|r| a.metrics.dropped(r))
    };
    let counts = eventually(Duration::from_secs(3), || {
        let c = dropped();
        (c.iter().sum::<u64>() == 9).then_some(c)
    })
    .await
    .unwrap_or_else(|| panic!("drops not counted: {:?}", dropped()));
    assert_eq!(counts, [2, 1, 1, 1, 1, 2, 1]);
    // The same request, correctly signed, is answered — so silence above
    // was the authenticator's doing.
    stranger.send_to(&req.encode(&good), a.addr).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), stranger.recv_from(&mut buf))
        .await
        .expect("the authenticated request is answered")
        .unwrap();
    assert_eq!(from, a.addr);
    let (reply, _) = Packet::decode(&buf[..n], &ProbeKeys::new(Some(good))).unwrap();
    assert_eq!(reply.kind, Kind::Reply);
    assert_eq!(reply.reflector, NodeTag::of("edge-a"));
    assert_eq!((reply.seq, reply.sender, reply.t1_us), (1, me, 10));
    // Nothing else ever came back.
    let more = tokio::time::timeout(Duration::from_millis(300), stranger.recv_from(&mut buf)).await;
    assert!(more.is_err(), "a junk datagram got a reply");
    assert_eq!(a.metrics.reflected.get(), 1);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_rate_limited_per_source() {
    let cfg = ProbeConfig {
        replies: ReplyLimits {
            per_source_rate: 10.0,
            per_source_burst: 10.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let a = endpoint_with("edge-a", cfg, false).await;
    a.probe(&[], KEY);
    eventually(Duration::from_secs(2), || {
        a.status.snapshot().keyed.then_some(())
    })
    .await
    .unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let key = ProbeKey::new(KEY).unwrap();
    for seq in 0..60 {
        let d = Packet::request(seq, NodeTag::of("edge-b"), seq).encode(&key);
        peer.send_to(&d, a.addr).await.unwrap();
    }
    let mut replies = 0;
    let mut buf = [0u8; 256];
    while let Ok(r) =
        tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf)).await
    {
        r.unwrap();
        replies += 1;
        assert!(replies <= 60);
    }
    assert!((10..=13).contains(&replies), "{replies} replies");
    assert!(
        a.metrics.dropped("rate") >= 40,
        "{}",
        a.metrics.dropped("rate")
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_target_is_lost_and_alerted_within_three_seconds() {
    let mut a = endpoint("edge-a").await;
    let b = endpoint("edge-b").await;
    let c = endpoint("edge-c").await;
    a.probe(&[&b, &c], KEY);
    b.probe(&[], KEY);
    c.probe(&[], KEY);
    eventually(Duration::from_secs(5), || {
        a.path("edge-b").filter(|m| m.samples >= 5)
    })
    .await
    .expect("b measured");
    b.stop().await;
    let stopped = Instant::now();
    let alert = tokio::time::timeout(Duration::from_secs(3), a.alerts.recv())
        .await
        .expect("alert within 3 s")
        .unwrap();
    let after = stopped.elapsed();
    assert_eq!(alert.kind, AlertKind::ProbeTargetLost as i32);
    assert_eq!(alert.subject, "edge-b");
    assert!(
        alert
            .detail
            .contains(&a.path("edge-b").unwrap().target_addr)
    );
    assert!(
        after >= Duration::from_millis(1400),
        "not before the silence: {after:?}"
    );
    let m = a.path("edge-b").unwrap();
    assert_eq!(m.loss, 1.0, "{m:?}");
    assert!(m.last_success_age_ms >= 1500);
    assert!(
        a.status
            .snapshot()
            .paths
            .iter()
            .any(|p| p.node_id == "edge-b" && p.lost)
    );
    // The other target is unaffected, and the alert is raised once.
    assert_eq!(a.path("edge-c").unwrap().loss, 0.0);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(a.alerts.try_recv().is_err(), "one alert per episode");
    assert_eq!(a.metrics.targets_lost.get(), 1);
    assert!(a.metrics.lost.get() >= 3);
    a.stop().await;
    c.stop().await;
}

/// A plain socket standing in for a target: counts what it receives.
async fn counting_target() -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 256];
        while sock.recv_from(&mut buf).await.is_ok() {
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
    (addr, count, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_table_or_an_orphaned_table_means_no_probing() {
    let (target, received, sink) = counting_target().await;
    // No table at all.
    let a = endpoint("edge-a").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(received.load(Ordering::Relaxed), 0);
    assert_eq!(a.metrics.sent.get(), 0);
    assert!(!a.status.snapshot().active);
    // A table past its TTL (1 s, applied 5 s ago) with the scheduler
    // unreachable: still nothing.
    a.apply(
        table("edge-a", &[("edge-t", target)], KEY, 1),
        now_ms() - 5_000,
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(received.load(Ordering::Relaxed), 0);
    assert_eq!(a.metrics.active.get(), 0);
    // A table without a probe key: nothing either.
    a.apply(table("edge-a", &[("edge-t", target)], b"", 60), now_ms());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(received.load(Ordering::Relaxed), 0);
    // A fresh table: probing starts.
    a.apply(table("edge-a", &[("edge-t", target)], KEY, 60), now_ms());
    eventually(Duration::from_secs(2), || {
        (received.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await
    .expect("probes once the table is valid");
    assert_eq!(a.metrics.active.get(), 1);
    // It expires (applied long ago, TTL 1 s): probing stops within the
    // orphan check period.
    a.apply(
        table("edge-a", &[("edge-t", target)], KEY, 1),
        now_ms() - 5_000,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let frozen = received.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(received.load(Ordering::Relaxed), frozen, "still probing");
    assert!(
        a.path("edge-t").is_none(),
        "orphaned targets are not reported"
    );
    a.stop().await;

    // The same expired table while the scheduler is reachable: probing goes on.
    let b = endpoint_with("edge-b", ProbeConfig::default(), true).await;
    let before = received.load(Ordering::Relaxed);
    b.apply(
        table("edge-b", &[("edge-t", target)], KEY, 1),
        now_ms() - 5_000,
    );
    eventually(Duration::from_secs(2), || {
        (received.load(Ordering::Relaxed) >= before + 3).then_some(())
    })
    .await
    .expect("an expired table still counts while the scheduler is reachable");
    b.stop().await;
    sink.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_does_not_blackhole_probes() {
    let a = endpoint("edge-a").await;
    let b = endpoint("edge-b").await;
    a.probe(&[&b], b"old key");
    b.probe(&[&a], b"old key");
    eventually(Duration::from_secs(5), || {
        a.path("edge-b").filter(|m| m.samples >= 3)
    })
    .await
    .unwrap();
    // b gets the new key first; a still signs with the old one.
    b.probe(&[&a], b"new key");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = a.metrics.received.get();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        a.metrics.received.get() >= before + 2,
        "a's probes still answered"
    );
    assert_eq!(b.metrics.dropped("auth"), 0);
    // And b's probes under the new key reach a once a rotates too.
    a.probe(&[&b], b"new key");
    let before = b.metrics.received.get();
    eventually(Duration::from_secs(2), || {
        (b.metrics.received.get() >= before + 3).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(a.path("edge-b").unwrap().loss, 0.0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_targets_at_the_default_rate() {
    let mut targets = Vec::new();
    for i in 0..50 {
        let e = endpoint(&format!("peer-{i}")).await;
        e.probe(&[], KEY);
        targets.push(e);
    }
    let a = endpoint("edge-a").await;
    let refs: Vec<&Endpoint> = targets.iter().collect();
    a.probe(&refs, KEY);
    // Warm up one second, then count over three.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (s0, r0, t0) = (
        a.metrics.sent.get(),
        a.metrics.received.get(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secs = t0.elapsed().as_secs_f64();
    let sent_per_s = (a.metrics.sent.get() - s0) as f64 / secs;
    let recv_per_s = (a.metrics.received.get() - r0) as f64 / secs;
    eprintln!(
        "50 targets: {sent_per_s:.1} requests/s, {recv_per_s:.1} replies/s, {:.0} B/s of probe payload out",
        sent_per_s * PACKET_LEN as f64
    );
    // 5/s × 50 = 250/s; never above (small slack for timer granularity),
    // and not starved.
    assert!(sent_per_s <= 262.0, "{sent_per_s}");
    assert!(sent_per_s >= 150.0, "{sent_per_s}");
    assert!(recv_per_s >= 0.9 * sent_per_s - 5.0, "{recv_per_s}");
    let reflected: u64 = targets.iter().map(|t| t.metrics.reflected.get()).sum();
    assert!(reflected >= a.metrics.received.get());
    a.stop().await;
    for t in targets {
        t.stop().await;
    }
}
