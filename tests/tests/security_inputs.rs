//! Issue 17, input sizes and secrets on disk:
//!
//! * a 3 MB `node_id` in a gRPC route subscription used to be logged twice
//!   before any length check; a 3 MB NACK detail was stored and served by
//!   `/v1/routes/{id}` and `/v1/events`; both are now refused before they
//!   are logged or stored (and counted), and so is an oversized comment
//!   of a weight change;
//! * `routes.pb` (it holds the cluster's probe and publish keys) is owner-
//!   only, and a world-readable one from an older version is fixed at
//!   start-up;
//! * an empty enrollment token is never accepted, `--dev` with a real
//!   certificate included.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use vantage_proto::v1::route_discovery_client::RouteDiscoveryClient;
use vantage_proto::v1::{ErrorDetail, RejectReason, RouteRequest};
use vantage_tests::cluster::wait_all_up;
use vantage_tests::hostile::{HelloOutcome, HostileClient, hello};
use vantage_tests::{Agent, Scheduler, eventually};

const BIG: usize = 3 << 20;

async fn channel(s: &Scheduler) -> Channel {
    let ca = std::fs::read(s.ca_path()).unwrap();
    Channel::from_shared(s.grpc_url())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Bytes of the scheduler's logs.
fn log_bytes(s: &Scheduler) -> u64 {
    std::fs::read_dir(s.data_dir().join("logs"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_ids_and_details_are_refused_before_logging_or_storing() {
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let a = Agent::builder("big-a", &s).start().await;
    wait_all_up(&s, &["big-a"], Duration::from_secs(15)).await;
    let logs_before = log_bytes(&s);

    // A 3 MB node id.
    let mut client = RouteDiscoveryClient::new(channel(&s).await)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let first = RouteRequest {
        node_id: "A".repeat(BIG),
        ..Default::default()
    };
    let answer = client.stream_routes(tokio_stream::iter(vec![first])).await;
    let status = match answer {
        Err(st) => st,
        Ok(resp) => {
            let mut stream = resp.into_inner();
            match stream.next().await {
                Some(Err(st)) => st,
                other => panic!("a 3 MB node id was accepted: {other:?}"),
            }
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().len() < 1024, "the refusal echoes the id");

    // A 3 MB NACK detail from the real node's credential.
    let credential = a.credential().expect("enrolled");
    let (tx, rx) = tokio::sync::mpsc::channel::<RouteRequest>(4);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    tx.send(RouteRequest {
        node_id: "big-a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut tables = client.stream_routes(req).await.unwrap().into_inner();
    let table = tables.next().await.expect("a table").expect("a table");
    tx.send(RouteRequest {
        node_id: "big-a".into(),
        version_info: 0,
        response_nonce: table.nonce.clone(),
        error_detail: Some(ErrorDetail {
            code: 3,
            message: "N".repeat(BIG),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), tables.next()).await;
    match ended {
        Ok(Some(Err(st))) => assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}"),
        other => panic!("a 3 MB NACK detail was taken: {other:?}"),
    }
    drop(tx);

    // A weight change with a 1 MB comment.
    let (status, body) = s
        .put(
            "/v1/weights",
            &json!({"latency": 0.3, "comment": "C".repeat(1 << 20)}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // Nothing of it was stored or logged.
    let (_, routes) = s.get("/v1/routes/big-a").await;
    assert!(
        !routes.to_string().contains("NNNNNNNNNNNNNNNN"),
        "NACK detail stored"
    );
    let (_, events) = s.get("/v1/events?limit=1000").await;
    assert!(
        !events.to_string().contains("NNNNNNNNNNNNNNNN"),
        "NACK detail in events"
    );
    let (_, history) = s.get("/v1/weights/history").await;
    assert!(
        !history.to_string().contains("CCCCCCCCCCCCCCCC"),
        "comment stored"
    );
    let grown = log_bytes(&s) - logs_before;
    assert!(grown < 256 * 1024, "logs grew by {grown} bytes");
    let rejected = s
        .metric(
            "vantage_scheduler_routes_rejected_total",
            &[("reason", "oversized")],
        )
        .await;
    assert_eq!(rejected, 2.0, "oversized route requests counted");
    // The real agent is unaffected.
    eventually(Duration::from_secs(5), "big-a still up", || async {
        match s.node("big-a").await {
            Some(n) if n["state"] == "up" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_pb_is_owner_only() {
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let mut a = Agent::builder("pb-a", &s).start().await;
    let path = a.routes_path();
    eventually(Duration::from_secs(15), "routes.pb written", || async {
        std::fs::metadata(&path).map(|_| ())
    })
    .await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&a.credential_path()), 0o600);
    // A world-readable file left by an older version is fixed at start-up.
    a.stop().await;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    a.start().await;
    eventually(
        Duration::from_secs(5),
        "routes.pb owner-only again",
        || async {
            match mode(&path) {
                0o600 => Ok(()),
                m => Err(format!("{m:o}")),
            }
        },
    )
    .await;
}

/// `vantage-scheduler certs ...`: an operator CA and a server certificate.
fn operator_certs(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let bin = vantage_tests::bins::bin(vantage_tests::bins::SCHEDULER);
    let ca = dir.join("ca");
    let tls = dir.join("tls");
    for args in [
        vec!["certs", "init-ca", "--out", ca.to_str().unwrap()],
        vec![
            "certs",
            "server",
            "--ca-dir",
            ca.to_str().unwrap(),
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
            "--out",
            tls.to_str().unwrap(),
        ],
    ] {
        let out = std::process::Command::new(&bin)
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    (ca.join("ca.pem"), tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_enrollment_token_is_never_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = operator_certs(dir.path());
    // --dev with a real certificate and no enrollment token.
    let s = Scheduler::builder()
        .arg("--tls-cert")
        .arg(tls.join("server.pem").display().to_string())
        .arg("--tls-key")
        .arg(tls.join("server.key").display().to_string())
        .start()
        .await;
    let client = HostileClient::new(&ca, s.quic_addr());
    let mut h = hello("empty-token");
    h.enrollment_token = String::new();
    match client.hello(h).await {
        HelloOutcome::Closed(c) => assert_eq!(
            c.rejection.as_ref().map(|r| r.reason()),
            Some(RejectReason::BadToken),
            "{c:?}"
        ),
        HelloOutcome::Welcome { .. } => panic!("enrolled with an empty token"),
    }
    // The token --dev wrote enrolls.
    let mut h = hello("real-token");
    h.enrollment_token = s.token();
    assert!(
        matches!(client.hello(h).await, HelloOutcome::Welcome { .. }),
        "the dev token was refused"
    );
    client.shutdown().await;
}
