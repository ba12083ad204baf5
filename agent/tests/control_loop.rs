//! The agent's control loop against a fake scheduler (real QUIC and gRPC on
//! loopback): enrollment, reports, settings, alerts, route tables ACK/NACK,
//! persistence, reconnects and restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test crate

mod support;

use prometheus_client::registry::Registry;
use prost::Message;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use vantage_agent::Agent;
use vantage_agent::config::Config;
use vantage_agent::routes::{AppliedTable, Lookup};
use vantage_proto::v1::{
    AlertKind, DirectoryEntry, OriginRoute, ProbeReason, ProbeTarget, RouteTable, StreamRoute,
    Upstream, UpstreamKind,
};
use vantage_shared::auth::NodeCredential;
use vantage_shared::close::CloseCode;
use vantage_shared::stream::StreamKey;
use vantage_shared::table_view::table_json;

fn table(version: u64) -> RouteTable {
    RouteTable {
        node_id: "edge-1".into(),
        version,
        nonce: format!("n{version}"),
        generated_at_ms: 1,
        ttl_s: 60,
        report_interval_ms: 0,
        weights_version: 1,
        streams: vec![StreamRoute {
            stream: "live/*".into(),
            upstreams: vec![Upstream {
                kind: UpstreamKind::Node as i32,
                node_id: "edge-2".into(),
                url: "http://127.0.0.1:18080".into(),
                score: 0.3,
                hops: 1,
            }],
        }],
        probe_targets: vec![ProbeTarget {
            node_id: "edge-2".into(),
            addr: "127.0.0.1:17402".into(),
            reason: ProbeReason::Upstream as i32,
        }],
        redirects: vec![],
        probe_key: vec![7; 16],
        ..RouteTable::default()
    }
}

fn relay_at(node_id: &str, port: u16) -> Upstream {
    Upstream {
        kind: UpstreamKind::Node as i32,
        node_id: node_id.into(),
        url: format!("http://127.0.0.1:{port}"),
        score: 0.3,
        hops: 1,
    }
}

fn entry(stream: &str, origin: &str) -> DirectoryEntry {
    DirectoryEntry {
        stream: stream.into(),
        origin: origin.into(),
    }
}

/// A whole per-origin table: streams of origin-a via edge-2, of origin-b
/// direct, live/mine published here, and the static "live/*" of `table`.
fn per_origin_table(version: u64) -> RouteTable {
    RouteTable {
        streams: vec![StreamRoute {
            stream: "live/*".into(),
            upstreams: vec![Upstream {
                kind: UpstreamKind::Origin as i32,
                url: "http://127.0.0.1:19000/{app}/{stream}.flv".into(),
                ..Default::default()
            }],
        }],
        origins: vec![
            OriginRoute {
                origin: "origin-a".into(),
                upstreams: vec![relay_at("edge-2", 18082), relay_at("origin-a", 18090)],
            },
            OriginRoute {
                origin: "origin-b".into(),
                upstreams: vec![relay_at("origin-b", 18091)],
            },
        ],
        directory: vec![
            entry("live/a", "origin-a"),
            entry("live/b", "origin-b"),
            entry("live/mine", "edge-1"),
        ],
        ..table(version)
    }
}

/// A delta of edge-1 from `base` to `version` that changes nothing yet.
fn delta(version: u64, base: u64) -> RouteTable {
    RouteTable {
        streams: vec![],
        probe_targets: vec![],
        base_version: base,
        ..table(version)
    }
}

/// The node id (or URL) of the first upstream `stream` resolves to in the
/// agent's table, "local" or "none".
fn first_upstream(table: Option<&AppliedTable>, stream: &str) -> String {
    let key = StreamKey::parse(stream).unwrap();
    match table.map(|t| t.route_for(&key)) {
        Some(Lookup::Local) => "local".into(),
        Some(l) => l
            .upstreams()
            .and_then(|u| u.first())
            .map(|u| {
                if u.node_id.is_empty() {
                    u.url.clone()
                } else {
                    u.node_id.clone()
                }
            })
            .unwrap_or_else(|| "none".into()),
        None => "none".into(),
    }
}

fn stored(data: &Path) -> RouteTable {
    RouteTable::decode(std::fs::read(data.join("routes.pb")).unwrap().as_slice()).unwrap()
}

fn agent_config(pki_dir: &Path, data: &Path, quic: SocketAddr, grpc: SocketAddr) -> Config {
    agent_config_with(pki_dir, data, quic, grpc, &[])
}

fn agent_config_with(
    pki_dir: &Path,
    data: &Path,
    quic: SocketAddr,
    grpc: SocketAddr,
    extra: &[&str],
) -> Config {
    let mut args = vec![
        "vantage-agent".to_owned(),
        "--node-id=edge-1".into(),
        format!("--scheduler={quic}"),
        format!("--routes=https://127.0.0.1:{}", grpc.port()),
        format!("--ca={}", pki_dir.join("ca.pem").display()),
        format!("--token={TOKEN}"),
        format!("--data-dir={}", data.display()),
        "--admin-listen=127.0.0.1:0".into(),
        "--http-listen=127.0.0.1:0".into(),
        "--rtmp-listen=127.0.0.1:0".into(),
        "--probe-listen=127.0.0.1:0".into(),
        "--probe-advertise=127.0.0.1:17402".into(),
        "--origin=live/*=http://127.0.0.1:19000".into(),
        "--region=test-region".into(),
        "--lat=48.85".into(),
        "--lon=2.35".into(),
        "--capacity-mbps=400".into(),
        "--public-url=http://127.0.0.1:18080".into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Config::load_from(args, Vec::new()).unwrap()
}

struct Running {
    admin: SocketAddr,
    routes: vantage_agent::routes::TableReceiver,
    alerts: vantage_agent::telemetry::AlertSender,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), vantage_agent::RunError>>,
}

async fn start_agent(config: Config) -> Running {
    let agent = Agent::bind(config, Registry::default()).await.unwrap();
    let cancel = CancellationToken::new();
    Running {
        admin: agent.admin_addr().unwrap(),
        routes: agent.routes(),
        alerts: agent.alerts(),
        cancel: cancel.clone(),
        task: tokio::spawn(agent.run(cancel)),
    }
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("agent did not stop within the grace period")
            .unwrap()
            .unwrap();
    }

    async fn metrics(&self) -> String {
        let (code, body) = http_get(self.admin, "/metrics").await;
        assert_eq!(code, 200);
        body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_reports_applies_tables_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let pki = pki(&pki_dir);
    let data = dir.path().join("data");
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let state = Arc::new(support::QuicState::default());
    let quic = FakeQuic::start(
        &pki,
        "127.0.0.1:0".parse().unwrap(),
        150,
        state.clone(),
        ev_tx.clone(),
    )
    .await;
    let (tables_tx, tables_rx) = watch::channel(None::<RouteTable>);
    let (req_tx, mut requests) = mpsc::unbounded_channel();
    let grpc = FakeRoutes::start(
        &pki,
        "127.0.0.1:0".parse().unwrap(),
        tables_rx.clone(),
        req_tx.clone(),
    )
    .await;
    let (quic_addr, grpc_addr) = (quic.addr, grpc.addr);

    let agent = start_agent(agent_config(&pki_dir, &data, quic_addr, grpc_addr)).await;
    let (code, _) = http_get(agent.admin, "/readyz").await;
    assert_eq!(code, 503, "no table yet");

    // Hello carries everything the scheduler needs.
    let hello = next_event(&mut events, WAIT, |e| match e {
        Event::Hello(h) => Some(h),
        _ => None,
    })
    .await;
    assert_eq!(hello.node_id, "edge-1");
    assert_eq!(hello.protocol_version, vantage_proto::PROTOCOL_VERSION);
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.region, "test-region");
    assert_eq!((hello.lat, hello.lon), (48.85, 2.35));
    assert_eq!(hello.capacity_mbps, 400.0);
    assert_eq!(hello.public_url, "http://127.0.0.1:18080");
    assert_eq!(hello.probe_addr, "127.0.0.1:17402");
    assert_eq!(hello.enrollment_token, TOKEN);
    assert_eq!(hello.node_credential, "");
    assert_eq!(hello.route_version, 0);
    assert_eq!(hello.static_origins.len(), 1);
    assert_eq!(hello.static_origins[0].pattern, "live/*");
    assert!(!hello.capabilities.is_empty());

    // The credential from Welcome is persisted, owner-only.
    let cred_path = data.join("node.credential");
    eventually(WAIT, "credential persisted", || async {
        cred_path.exists()
    })
    .await;
    let credential = std::fs::read_to_string(&cred_path)
        .unwrap()
        .trim()
        .to_owned();
    assert!(state.known.lock().unwrap().contains(&credential));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cred_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Reports at the Welcome interval, seq increasing by one.
    let mut prev = next_report(&mut events).await;
    let first_at = prev.1;
    for _ in 0..4 {
        let r = next_report(&mut events).await;
        assert_eq!(r.0.seq, prev.0.seq + 1);
        prev = r;
    }
    let span = prev.1 - first_at;
    assert!(
        span >= Duration::from_millis(4 * 150 * 8 / 10),
        "4 intervals took {span:?}"
    );
    let load = prev.0.load.unwrap();
    assert!((0.0..=1.0).contains(&load.cpu));
    assert!(load.mem_total_bytes > 0 && load.mem_used_bytes <= load.mem_total_bytes);
    assert_eq!(prev.0.route_version, 0);
    assert!(prev.0.agent_time_ms > 0);
    let path = prev.0.control_path.unwrap();
    assert!(path.rtt_ms > 0.0 && path.rtt_ms < 1000.0, "{path:?}");

    // Settings change the interval (lower bound only: timers never fire early).
    push_settings(&state, 600).await;
    let mut last = next_report(&mut events).await;
    // The first report after the change may still be on the old schedule.
    last = if last.1 - prev.1 < Duration::from_millis(500) {
        next_report(&mut events).await
    } else {
        last
    };
    let next = next_report(&mut events).await;
    assert!(
        next.1 - last.1 >= Duration::from_millis(500),
        "{:?}",
        next.1 - last.1
    );
    assert_eq!(next.0.seq, last.0.seq + 1);

    // Alerts go out at once, not with the next report.
    assert!(
        agent
            .alerts
            .raise(AlertKind::Overload, "cpu", "cpu high", 0.97)
    );
    let alert = next_event(&mut events, Duration::from_millis(450), |e| match e {
        Event::Alert(a) => Some(a),
        Event::Report(..) => panic!("alert should precede the next report"),
        _ => None,
    })
    .await;
    assert_eq!(alert.kind, AlertKind::Overload as i32);
    assert_eq!(alert.subject, "cpu");
    assert_eq!(alert.seq, 1);

    // Route subscription waited for the credential and announces nothing held.
    let (auth, first) = next_request(&mut requests).await;
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {credential}").as_str())
    );
    assert_eq!(first.node_id, "edge-1");
    assert_eq!(first.version_info, 0);
    assert_eq!(first.response_nonce, "");

    // A valid table is applied, persisted, ACKed.
    tables_tx.send_replace(Some(table(1)));
    let (_, ack) = next_request(&mut requests).await;
    assert_eq!((ack.version_info, ack.response_nonce.as_str()), (1, "n1"));
    assert!(ack.error_detail.is_none());
    let stored =
        RouteTable::decode(std::fs::read(data.join("routes.pb")).unwrap().as_slice()).unwrap();
    assert_eq!(stored, table(1));
    assert_eq!(agent.routes.borrow().as_ref().unwrap().version(), 1);
    let (code, _) = http_get(agent.admin, "/readyz").await;
    assert_eq!(code, 200);
    let st = status_json(agent.admin).await;
    assert_eq!(st["node_id"], "edge-1");
    assert_eq!(st["routes"]["version"], 1);
    assert_eq!(st["routes"]["nonce"], "n1");
    assert_eq!(st["routes"]["source"], "scheduler");
    assert_eq!(st["routes"]["acked"], true);
    assert_eq!(st["routes"]["subscribed"], true);
    assert_eq!(st["routes"]["streams"], 1);
    assert_eq!(st["routes"]["origins"], 0);
    assert_eq!(st["routes"]["directory"], 0);
    assert_eq!(st["routes"]["probe_targets"], 1);
    assert_eq!(st["telemetry"]["connected"], true);
    assert_eq!(st["telemetry"]["session_id"], "s-1");
    assert_eq!(st["telemetry"]["report_interval_ms"], 600);
    assert_eq!(st["telemetry"]["scheduler"], quic_addr.to_string());
    assert!(st["telemetry"]["reports_sent"].as_u64().unwrap() >= 7);
    // Reports now name the table in use.
    loop {
        let (r, _) = next_report(&mut events).await;
        if r.route_version == 1 {
            break;
        }
    }

    // An invalid table is NACKed with code 3; the old one stays.
    let mut bad = table(2);
    bad.streams[0].stream = "not a pattern!".into();
    tables_tx.send_replace(Some(bad));
    let (_, nack) = next_request(&mut requests).await;
    assert_eq!((nack.version_info, nack.response_nonce.as_str()), (1, "n2"));
    let detail = nack.error_detail.unwrap();
    assert_eq!(detail.code, 3);
    assert!(detail.message.contains("streams[0]"), "{}", detail.message);
    assert_eq!(agent.routes.borrow().as_ref().unwrap().version(), 1);
    let stored =
        RouteTable::decode(std::fs::read(data.join("routes.pb")).unwrap().as_slice()).unwrap();
    assert_eq!(stored.version, 1);
    let m = agent.metrics().await;
    assert!(
        m.contains("vantage_agent_route_tables_total{result=\"nack\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("vantage_agent_route_tables_total{result=\"ack\"} 1"),
        "{m}"
    );
    assert!(m.contains("vantage_agent_route_version 1"), "{m}");
    assert!(m.contains("vantage_agent_telemetry_connected 1"), "{m}");
    assert!(m.contains("vantage_agent_alerts_sent_total 1"), "{m}");

    // A table's report interval is honoured too.
    let mut t3 = table(3);
    t3.report_interval_ms = 700;
    tables_tx.send_replace(Some(t3));
    let (_, ack) = next_request(&mut requests).await;
    assert_eq!((ack.version_info, ack.error_detail), (3, None));
    eventually(WAIT, "interval from the table", || async {
        status_json(agent.admin).await["telemetry"]["report_interval_ms"] == 700
    })
    .await;

    // Scheduler restart: the agent reconnects (backoff) with its credential
    // and its table version, and reports continue.
    let seq_before = next_report(&mut events).await.0.seq;
    quic.stop().await;
    grpc.stop().await;
    let quic = FakeQuic::start(&pki, quic_addr, 150, state.clone(), ev_tx.clone()).await;
    let grpc = FakeRoutes::start(&pki, grpc_addr, tables_rx.clone(), req_tx.clone()).await;
    let hello = next_event(&mut events, WAIT, |e| match e {
        Event::Hello(h) => Some(h),
        _ => None,
    })
    .await;
    assert_eq!(hello.node_credential, credential);
    assert_eq!(hello.route_version, 3);
    let (r, _) = next_report(&mut events).await;
    assert!(r.seq > seq_before);
    // The route stream resubscribes announcing version 3; nothing is resent.
    let (auth, again) = loop {
        let (auth, req) = next_request(&mut requests).await;
        if req.response_nonce.is_empty() {
            break (auth, req);
        }
    };
    assert_eq!(again.version_info, 3);
    assert!(auth.is_some());
    let m = agent.metrics().await;
    assert!(
        m.contains("vantage_agent_telemetry_closed_total{code=\"shutting_down\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("vantage_agent_telemetry_connects_total{result=\"welcomed\"} 2"),
        "{m}"
    );
    eventually(WAIT, "status shows the new session", || async {
        status_json(agent.admin).await["telemetry"]["session_id"] == "s-2"
    })
    .await;

    // Shutdown closes the QUIC connection with code 0 (the server's own
    // close during the restart shows no application code on its side).
    agent.stop().await;
    let closed = next_event(&mut events, WAIT, |e| match e {
        Event::Closed(Some(c)) => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(closed, u64::from(CloseCode::Normal.code()));
    quic.stop().await;
    grpc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_serves_its_table_from_disk_while_the_scheduler_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let pki = pki(&pki_dir);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("routes.pb"), table(5).encode_to_vec()).unwrap();
    let credential = NodeCredential::issue("edge-1").encode();
    std::fs::write(data.join("node.credential"), &credential).unwrap();
    let (quic_addr, grpc_addr) = (free_addr(), free_addr());

    let agent = start_agent(agent_config(&pki_dir, &data, quic_addr, grpc_addr)).await;
    assert_eq!(agent.routes.borrow().as_ref().unwrap().version(), 5);
    let (code, _) = http_get(agent.admin, "/readyz").await;
    assert_eq!(code, 200, "a table from disk makes the agent ready");
    let st = status_json(agent.admin).await;
    assert_eq!(st["routes"]["source"], "disk");
    assert_eq!(st["routes"]["version"], 5);
    assert_eq!(st["routes"]["subscribed"], false);
    assert_eq!(st["telemetry"]["connected"], false);

    // The scheduler comes back: both channels announce version 5.
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let state = Arc::new(support::QuicState::default());
    state.known.lock().unwrap().insert(credential.clone());
    let quic = FakeQuic::start(&pki, quic_addr, 200, state, ev_tx).await;
    let (_tables_tx, tables_rx) = watch::channel(Some(table(5)));
    let (req_tx, mut requests) = mpsc::unbounded_channel();
    let grpc = FakeRoutes::start(&pki, grpc_addr, tables_rx, req_tx).await;
    let hello = next_event(&mut events, Duration::from_secs(30), |e| match e {
        Event::Hello(h) => Some(h),
        _ => None,
    })
    .await;
    assert_eq!(hello.route_version, 5);
    assert_eq!(hello.node_credential, credential);
    let (auth, first) = next_request(&mut requests).await;
    assert_eq!(auth, Some(format!("Bearer {credential}")));
    assert_eq!(first.version_info, 5);
    eventually(WAIT, "subscribed and acked", || async {
        let st = status_json(agent.admin).await;
        st["routes"]["subscribed"] == true && st["routes"]["acked"] == true
    })
    .await;
    agent.stop().await;
    quic.stop().await;
    grpc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_node_forgets_the_credential_and_enrolls_again() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let pki = pki(&pki_dir);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let stale = NodeCredential::issue("edge-1").encode();
    std::fs::write(data.join("node.credential"), &stale).unwrap();

    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let state = Arc::new(support::QuicState::default());
    let quic = FakeQuic::start(
        &pki,
        "127.0.0.1:0".parse().unwrap(),
        200,
        state.clone(),
        ev_tx,
    )
    .await;
    let agent = start_agent(agent_config(&pki_dir, &data, quic.addr, free_addr())).await;

    let first = next_event(&mut events, WAIT, |e| match e {
        Event::Hello(h) => Some(h),
        _ => None,
    })
    .await;
    assert_eq!(first.node_credential, stale);
    let second = next_event(&mut events, WAIT, |e| match e {
        Event::Hello(h) => Some(h),
        _ => None,
    })
    .await;
    assert_eq!(second.node_credential, "", "stale credential was dropped");
    assert_eq!(second.enrollment_token, TOKEN);
    let cred_path = data.join("node.credential");
    eventually(WAIT, "new credential stored", || async {
        std::fs::read_to_string(&cred_path)
            .map(|c| c.trim() != stale && state.known.lock().unwrap().contains(c.trim()))
            .unwrap_or(false)
    })
    .await;
    next_report(&mut events).await;
    let m = agent.metrics().await;
    assert!(
        m.contains("vantage_agent_telemetry_closed_total{code=\"unknown_node\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("vantage_agent_telemetry_connects_total{result=\"rejected\"} 1"),
        "{m}"
    );
    agent.stop().await;
    quic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_identity_replaces_token_and_credential() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let pki = pki(&pki_dir);
    let (cert, key) = pki
        .issue_client("edge-1", &dir.path().join("client"))
        .unwrap();
    let data = dir.path().join("data");

    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let state = Arc::new(support::QuicState {
        mtls: true,
        ..Default::default()
    });
    let quic = FakeQuic::start(&pki, "127.0.0.1:0".parse().unwrap(), 200, state, ev_tx).await;
    let (tables_tx, tables_rx) = watch::channel(None::<RouteTable>);
    let (req_tx, mut requests) = mpsc::unbounded_channel();
    let grpc = FakeRoutes::start_with(
        &pki,
        "127.0.0.1:0".parse().unwrap(),
        tables_rx,
        req_tx,
        true,
    )
    .await;
    let args = vec![
        "vantage-agent".to_owned(),
        "--node-id=edge-1".into(),
        format!("--scheduler={}", quic.addr),
        format!("--routes=https://localhost:{}", grpc.addr.port()),
        format!("--ca={}", pki.ca_cert.display()),
        format!("--cert={}", cert.display()),
        format!("--key={}", key.display()),
        format!("--data-dir={}", data.display()),
        "--admin-listen=127.0.0.1:0".into(),
        "--http-listen=127.0.0.1:0".into(),
        "--rtmp-listen=127.0.0.1:0".into(),
    ];
    let agent = start_agent(Config::load_from(args, Vec::new()).unwrap()).await;

    let hello = next_event(&mut events, WAIT, |e| match e {
        Event::Hello(h) => Some(h),
        _ => None,
    })
    .await;
    assert_eq!(
        (
            hello.enrollment_token.as_str(),
            hello.node_credential.as_str()
        ),
        ("", "")
    );
    next_report(&mut events).await;
    // The route stream does not wait for a credential: the certificate is the identity.
    let (auth, first) = next_request(&mut requests).await;
    assert_eq!(auth, None);
    assert_eq!(first.node_id, "edge-1");
    tables_tx.send_replace(Some(table(1)));
    let (_, ack) = next_request(&mut requests).await;
    assert_eq!((ack.version_info, ack.error_detail), (1, None));
    assert!(!data.join("node.credential").exists());
    agent.stop().await;
    quic.stop().await;
    grpc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_origin_tables_and_deltas_are_merged_persisted_and_served_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let pki = pki(&pki_dir);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let credential = NodeCredential::issue("edge-1").encode();
    std::fs::write(data.join("node.credential"), &credential).unwrap();
    // Route tables only: telemetry has no scheduler and keeps retrying.
    let (tables_tx, tables_rx) = watch::channel(None::<RouteTable>);
    let (req_tx, mut requests) = mpsc::unbounded_channel();
    let grpc = FakeRoutes::start(&pki, "127.0.0.1:0".parse().unwrap(), tables_rx, req_tx).await;
    let config = || agent_config(&pki_dir, &data, free_addr(), grpc.addr);
    let agent = start_agent(config()).await;
    let (_, first) = next_request(&mut requests).await;
    assert_eq!(first.version_info, 0);
    let routes = routes_json(agent.admin).await;
    assert_eq!(
        (&routes["version"], &routes["source"], &routes["table"]),
        (&0.into(), &"none".into(), &serde_json::Value::Null),
        "no table yet: {routes}"
    );

    // A whole per-origin table.
    tables_tx.send_replace(Some(per_origin_table(1)));
    let (_, ack) = next_request(&mut requests).await;
    assert_eq!((ack.version_info, ack.error_detail), (1, None));
    let route = |stream: &str| first_upstream(agent.routes.borrow().as_deref(), stream);
    assert_eq!(route("live/a"), "edge-2");
    assert_eq!(route("live/b"), "origin-b");
    assert_eq!(route("live/mine"), "local");
    assert_eq!(
        route("live/other"),
        "http://127.0.0.1:19000/{app}/{stream}.flv"
    );
    assert_eq!(stored(&data), per_origin_table(1));

    // A delta: origin-a is now pulled direct, origin-c and live/c appear,
    // live/b leaves the directory (then "live/*" serves it), the probe
    // targets are replaced.
    let mut d2 = delta(2, 1);
    d2.origins = vec![
        OriginRoute {
            origin: "origin-a".into(),
            upstreams: vec![relay_at("origin-a", 18090)],
        },
        OriginRoute {
            origin: "origin-c".into(),
            upstreams: vec![relay_at("edge-3", 18083)],
        },
    ];
    d2.directory = vec![entry("live/c", "origin-c")];
    d2.removed_streams = vec!["live/b".into()];
    d2.probe_targets = vec![ProbeTarget {
        node_id: "edge-3".into(),
        addr: "127.0.0.1:17403".into(),
        reason: ProbeReason::Upstream as i32,
    }];
    d2.probe_targets_changed = true;
    tables_tx.send_replace(Some(d2.clone()));
    let (_, ack) = next_request(&mut requests).await;
    assert_eq!(
        (
            ack.version_info,
            ack.response_nonce.as_str(),
            ack.error_detail
        ),
        (2, "n2", None)
    );
    assert_eq!(route("live/a"), "origin-a");
    assert_eq!(route("live/c"), "edge-3");
    assert_eq!(route("live/b"), "http://127.0.0.1:19000/{app}/{stream}.flv");
    let merged = agent.routes.borrow().as_ref().unwrap().table.clone();
    assert_eq!((merged.version, merged.base_version), (2, 0));
    assert!(merged.removed_streams.is_empty() && !merged.probe_targets_changed);
    assert_eq!(merged.probe_targets, d2.probe_targets);
    assert_eq!(merged.origins.len(), 3);
    assert_eq!(merged.directory.len(), 3);
    assert_eq!(stored(&data), merged, "routes.pb holds the merged table");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("routes.pb"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "routes.pb carries the probe key");
    }
    let st = status_json(agent.admin).await;
    assert_eq!(st["routes"]["version"], 2);
    assert_eq!(st["routes"]["origins"], 3);
    assert_eq!(st["routes"]["directory"], 3);
    assert_eq!(st["routes"]["streams"], 1);
    assert_eq!(st["routes"]["probe_targets"], 1);
    // /v1/routes: the merged table in the scheduler's rendering.
    let routes = routes_json(agent.admin).await;
    assert_eq!(routes["table"], table_json(&merged), "{routes}");
    assert_eq!(routes["version"], 2);
    assert_eq!(routes["nonce"], "n2");
    assert_eq!(routes["source"], "scheduler");
    assert_eq!(routes["acked"], true);
    assert_eq!(routes["entries"]["total"], 8);
    assert_eq!(routes["max_entries"], 1_000_000);
    assert_eq!(routes["table"]["origins"][1]["origin"], "origin-b");
    assert_eq!(routes["table"]["directory"][2]["stream"], "live/c");

    // A delta on a version not held is NACKed naming both versions.
    tables_tx.send_replace(Some(delta(3, 1)));
    let (_, nack) = next_request(&mut requests).await;
    assert_eq!((nack.version_info, nack.response_nonce.as_str()), (2, "n3"));
    let detail = nack.error_detail.unwrap();
    assert_eq!(detail.code, 3);
    assert_eq!(detail.message, "delta for version 1, holding 2");

    // An invalid delta is NACKed naming its entry; version 2 stays in use,
    // on disk and in the status.
    let mut bad = delta(4, 2);
    bad.origins = vec![OriginRoute {
        origin: "origin-d".into(),
        upstreams: vec![Upstream {
            url: "ftp://nowhere".into(),
            ..relay_at("edge-4", 1)
        }],
    }];
    bad.removed_origins = vec!["origin-a".into()];
    tables_tx.send_replace(Some(bad));
    let (_, nack) = next_request(&mut requests).await;
    assert_eq!((nack.version_info, nack.response_nonce.as_str()), (2, "n4"));
    let detail = nack.error_detail.unwrap();
    assert!(
        detail.message.starts_with("origins[0].upstreams[0]: url"),
        "{}",
        detail.message
    );
    assert_eq!(route("live/a"), "origin-a", "nothing of it applied");
    assert_eq!(stored(&data), merged);
    let st = status_json(agent.admin).await;
    assert_eq!(
        (
            st["routes"]["version"].as_u64(),
            st["routes"]["origins"].as_u64()
        ),
        (Some(2), Some(3))
    );
    let m = agent.metrics().await;
    for needle in [
        "vantage_agent_route_tables_total{result=\"ack\"} 2",
        "vantage_agent_route_tables_total{result=\"nack\"} 2",
        "vantage_agent_route_updates_total{kind=\"full\"} 1",
        "vantage_agent_route_updates_total{kind=\"delta\"} 1",
        "vantage_agent_route_version 2",
    ] {
        assert!(m.contains(needle), "missing {needle:?} in\n{m}");
    }

    // Restart: the merged table is served from disk, and a delta on it
    // applies.
    tables_tx.send_replace(None);
    agent.stop().await;
    let agent = start_agent(config()).await;
    let route = |stream: &str| first_upstream(agent.routes.borrow().as_deref(), stream);
    assert_eq!(agent.routes.borrow().as_ref().unwrap().table, merged);
    assert_eq!(route("live/a"), "origin-a");
    assert_eq!(route("live/c"), "edge-3");
    assert_eq!(route("live/mine"), "local");
    let st = status_json(agent.admin).await;
    assert_eq!(st["routes"]["source"], "disk");
    assert_eq!(st["routes"]["version"], 2);
    assert_eq!(st["routes"]["directory"], 3);
    let routes = routes_json(agent.admin).await;
    assert_eq!(routes["source"], "disk");
    assert_eq!(routes["table"], table_json(&merged));
    let again = loop {
        let (_, req) = next_request(&mut requests).await;
        if req.response_nonce.is_empty() {
            break req;
        }
    };
    assert_eq!(again.version_info, 2);
    let mut d5 = delta(5, 2);
    d5.removed_origins = vec!["origin-c".into()];
    tables_tx.send_replace(Some(d5));
    let (_, ack) = next_request(&mut requests).await;
    assert_eq!((ack.version_info, ack.error_detail), (5, None));
    assert_eq!(route("live/c"), "http://127.0.0.1:19000/{app}/{stream}.flv");
    assert_eq!(stored(&data).version, 5);
    let st = status_json(agent.admin).await;
    assert_eq!(st["routes"]["source"], "scheduler");
    assert_eq!(st["routes"]["origins"], 2);
    agent.stop().await;
    grpc.stop().await;
}

/// `routes_max_entries`: a delta whose merged table is too large is NACKed
/// with the sizes, the previous table stays in use and on disk, and the
/// next whole table that fits applies. A stored table over a limit lowered
/// later is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_over_routes_max_entries_is_nacked_and_the_previous_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let pki = pki(&pki_dir);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let credential = NodeCredential::issue("edge-1").encode();
    std::fs::write(data.join("node.credential"), &credential).unwrap();
    let (tables_tx, tables_rx) = watch::channel(None::<RouteTable>);
    let (req_tx, mut requests) = mpsc::unbounded_channel();
    let grpc = FakeRoutes::start(&pki, "127.0.0.1:0".parse().unwrap(), tables_rx, req_tx).await;
    let config = |max: &str| {
        let flag = format!("--routes-max-entries={max}");
        agent_config_with(&pki_dir, &data, free_addr(), grpc.addr, &[&flag])
    };
    let agent = start_agent(config("8")).await;
    next_request(&mut requests).await;

    // 3 directory entries, 2 origins, 1 pattern, 1 probe target: 7.
    tables_tx.send_replace(Some(per_origin_table(1)));
    let (_, ack) = next_request(&mut requests).await;
    assert_eq!((ack.version_info, ack.error_detail), (1, None));

    // Two more streams: 9 once merged.
    let mut d2 = delta(2, 1);
    d2.directory = vec![entry("live/c", "origin-a"), entry("live/d", "origin-a")];
    tables_tx.send_replace(Some(d2));
    let (_, nack) = next_request(&mut requests).await;
    assert_eq!((nack.version_info, nack.response_nonce.as_str()), (1, "n2"));
    let detail = nack.error_detail.unwrap();
    assert_eq!(detail.code, 3);
    assert_eq!(
        detail.message,
        "table of 9 entries exceeds routes_max_entries 8 \
         (directory 5, origins 2, patterns 1, probe targets 1)"
    );
    assert_eq!(agent.routes.borrow().as_ref().unwrap().version(), 1);
    assert_eq!(stored(&data), per_origin_table(1));
    let routes = routes_json(agent.admin).await;
    assert_eq!(routes["version"], 1);
    assert_eq!(routes["entries"]["total"], 7);
    assert_eq!(routes["max_entries"], 8);
    assert_eq!(routes["table"], table_json(&per_origin_table(1)));

    // The next version, whole, with one stream more than version 1: 8 fits.
    let mut whole = per_origin_table(3);
    whole.directory.push(entry("live/c", "origin-a"));
    tables_tx.send_replace(Some(whole.clone()));
    let (_, ack) = next_request(&mut requests).await;
    assert_eq!((ack.version_info, ack.error_detail), (3, None));
    assert_eq!(stored(&data), whole);
    let routes = routes_json(agent.admin).await;
    assert_eq!(routes["table"], table_json(&whole));
    assert_eq!(routes["entries"]["directory"], 4);
    let m = agent.metrics().await;
    for needle in [
        "vantage_agent_route_tables_total{result=\"ack\"} 2",
        "vantage_agent_route_tables_total{result=\"nack\"} 1",
        "vantage_agent_route_updates_total{kind=\"full\"} 2",
        "vantage_agent_route_version 3",
    ] {
        assert!(m.contains(needle), "missing {needle:?} in\n{m}");
    }

    // Restarted with a lower limit, the stored table of 8 is not served.
    tables_tx.send_replace(None);
    agent.stop().await;
    let agent = start_agent(config("7")).await;
    assert!(agent.routes.borrow().is_none());
    let (_, again) = next_request(&mut requests).await;
    assert_eq!(again.version_info, 0, "announces no table");
    assert_eq!(routes_json(agent.admin).await["source"], "none");
    agent.stop().await;
    grpc.stop().await;
}

async fn routes_json(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = http_get(addr, "/v1/routes").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits for the next route request on either of two fake replicas: which
/// one (0 or 1) and the request.
async fn next_request_of(
    a: &mut mpsc::UnboundedReceiver<(Option<String>, vantage_proto::v1::RouteRequest)>,
    b: &mut mpsc::UnboundedReceiver<(Option<String>, vantage_proto::v1::RouteRequest)>,
) -> (usize, vantage_proto::v1::RouteRequest) {
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            r = a.recv() => (0, r.expect("channel closed").1),
            r = b.recv() => (1, r.expect("channel closed").1),
        }
    })
    .await
    .expect("timed out waiting for a route request")
}

/// Issue 19: two scheduler replicas. The one the agent streams from turns
/// stale (a paused ex-leader) and sends a table of an older term: the agent
/// NACKs it with code 9, keeps its table, counts it, and moves to the other
/// replica, announcing the table and term it holds; that replica's newer
/// tables are taken.
#[tokio::test]
async fn a_table_of_an_older_term_is_refused_and_the_agent_moves_to_another_replica() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let pki = pki(&pki_dir);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let credential = NodeCredential::issue("edge-1").encode();
    std::fs::write(data.join("node.credential"), &credential).unwrap();
    let term2 = |v: u64| RouteTable {
        term: 2,
        ..per_origin_table(v)
    };
    let (tx_a, rx_a) = watch::channel(Some(term2(1)));
    let (tx_b, rx_b) = watch::channel(Some(term2(1)));
    let (req_a, mut requests_a) = mpsc::unbounded_channel();
    let (req_b, mut requests_b) = mpsc::unbounded_channel();
    let a = FakeRoutes::start(&pki, "127.0.0.1:0".parse().unwrap(), rx_a, req_a).await;
    let b = FakeRoutes::start(&pki, "127.0.0.1:0".parse().unwrap(), rx_b, req_b).await;
    let second = format!("--routes=https://127.0.0.1:{}", b.addr.port());
    let config = agent_config_with(&pki_dir, &data, free_addr(), a.addr, &[&second]);
    assert_eq!(config.routes.len(), 2);
    let agent = start_agent(config).await;

    // Whichever replica the agent picked first serves term 2, version 1.
    let (first, hello) = next_request_of(&mut requests_a, &mut requests_b).await;
    assert_eq!((hello.version_info, hello.term), (0, 0));
    let (at, ack) = next_request_of(&mut requests_a, &mut requests_b).await;
    assert_eq!(at, first);
    assert_eq!((ack.version_info, ack.term, ack.error_detail), (1, 2, None));

    // That replica goes stale: term 1, a higher version.
    let stale = RouteTable {
        term: 1,
        nonce: "stale".into(),
        ..per_origin_table(7)
    };
    let (stale_tx, fresh_tx) = if first == 0 {
        (&tx_a, &tx_b)
    } else {
        (&tx_b, &tx_a)
    };
    stale_tx.send_replace(Some(stale));
    let (at, nack) = next_request_of(&mut requests_a, &mut requests_b).await;
    assert_eq!(at, first);
    assert_eq!(
        (nack.version_info, nack.term),
        (1, 2),
        "keeps announcing what it holds"
    );
    let detail = nack.error_detail.expect("a NACK");
    assert_eq!(detail.code, 9, "{}", detail.message);
    assert!(detail.message.contains("term 1"), "{}", detail.message);
    assert_eq!(agent.routes.borrow().as_ref().unwrap().version(), 1);
    assert_eq!(agent.routes.borrow().as_ref().unwrap().term(), 2);
    assert_eq!(stored(&data), term2(1));

    // It moves to the other replica, announcing version 1 of term 2.
    let (at, hello) = next_request_of(&mut requests_a, &mut requests_b).await;
    assert_eq!(at, 1 - first, "the agent left the stale replica");
    assert_eq!((hello.version_info, hello.term), (1, 2));
    fresh_tx.send_replace(Some(RouteTable {
        term: 3,
        ..per_origin_table(8)
    }));
    let (at, ack) = next_request_of(&mut requests_a, &mut requests_b).await;
    assert_eq!(at, 1 - first);
    assert_eq!((ack.version_info, ack.term, ack.error_detail), (8, 3, None));
    let m = agent.metrics().await;
    for needle in [
        "vantage_agent_route_tables_refused_total{reason=\"older_term\"} 1",
        "vantage_agent_route_term 3",
        "vantage_agent_route_version 8",
        "vantage_agent_routes_failovers_total 1",
    ] {
        assert!(m.contains(needle), "missing {needle:?} in\n{m}");
    }
    let routes = routes_json(agent.admin).await;
    assert_eq!(routes["term"], 3);
    assert_eq!(
        routes["scheduler"],
        format!(
            "https://127.0.0.1:{}",
            if first == 0 {
                b.addr.port()
            } else {
                a.addr.port()
            }
        )
    );
    agent.stop().await;
    a.stop().await;
    b.stop().await;
}
