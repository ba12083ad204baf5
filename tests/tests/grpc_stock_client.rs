//! Must show 6 (issue 2): a stock gRPC client nobody here wrote the stack of
//! — Python `grpcio` with stubs generated from the repository's `.proto` at
//! run time — checks health, lists services by reflection, is refused with a
//! bad credential, subscribes as a node with that node's real credential,
//! receives a table, NACKs it, sees no resend, and gets a new version once
//! the table changes (here: a weight change).
//!
//! The credential is taken from a real agent's data dir after SIGKILLing the
//! agent, so the Python client is the node's only subscriber.

use serde_json::Value;
use std::time::{Duration, Instant};
use vantage_tests::cluster::start_settled;
use vantage_tests::http::{as_u64, field};
use vantage_tests::pyclient::{PyClient, proto_dir, python_or_skip};
use vantage_tests::{Scheduler, Store, eventually, store_tests};

const IDS: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
/// How long the client must hear nothing after its NACK.
const QUIET: Duration = Duration::from_millis(3500);

async fn stock_grpc_client(store: Store) {
    let test = format!("{}_stock_grpc_client", store.name());
    let Some(python) = python_or_skip(&test) else {
        return;
    };
    let s = Scheduler::builder()
        .store(store)
        .report_interval_ms(250)
        .start()
        .await;
    let (mut agents, _) = start_settled(&s, &IDS).await;

    // Borrow edge-1's identity: kill it, take its credential, let the
    // scheduler settle (down → replan) before subscribing in its place.
    let node = IDS[0];
    agents[0].kill();
    let credential_file = agents[0].credential_path();
    assert!(
        agents[0].credential().is_some(),
        "{} persisted no credential at {}",
        node,
        credential_file.display()
    );
    eventually(Duration::from_secs(10), &format!("{node} down"), || async {
        match s.node(node).await {
            Some(n) if n["state"] == "down" => Ok(()),
            other => Err(other),
        }
    })
    .await;

    let stderr = s.data_dir().join("logs").join("stock_client.stderr.log");
    let mut py = PyClient::spawn(
        &python,
        &[
            "--target".into(),
            s.grpc_addr().to_string(),
            "--ca".into(),
            s.ca_path().display().to_string(),
            "--proto-dir".into(),
            proto_dir().display().to_string(),
            "--node-id".into(),
            node.into(),
            "--credential-file".into(),
            credential_file.display().to_string(),
            "--max-seconds".into(),
            "90".into(),
        ],
        &stderr,
    );
    let step = Duration::from_secs(30);
    py.expect("stubs", Duration::from_secs(60)).await;

    for service in ["", "vantage.v1.RouteDiscovery"] {
        let h = py.expect("health", step).await;
        assert_eq!(h["service"], service, "{h}");
        assert_eq!(h["status"], "SERVING", "health of {service:?}: {h}");
    }

    let listed = py.expect("services", step).await;
    let names: Vec<&str> = listed["services"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for want in ["vantage.v1.RouteDiscovery", "grpc.health.v1.Health"] {
        assert!(
            names.contains(&want),
            "reflection does not list {want}: {listed}"
        );
    }
    eprintln!("reflection ({}) lists {names:?}", listed["protocol"]);
    let descriptor = py.expect("descriptor", step).await;
    assert!(
        mentions_str(&descriptor["methods"], "StreamRoutes"),
        "reflected RouteDiscovery has no StreamRoutes: {descriptor}"
    );

    let bad = py.expect("bad_credential", step).await;
    assert_eq!(bad["code"], "UNAUTHENTICATED", "{bad}");

    py.expect("subscribed", step).await;
    let first = py.expect("table", Duration::from_secs(10)).await;
    let v1 = as_u64(first.get("version")).unwrap_or(0);
    assert!(v1 > 0, "{first}");
    assert_eq!(first["node_id"], node, "{first}");
    let nacked = py.expect("nacked", step).await;
    assert_eq!(as_u64(nacked.get("version")), Some(v1), "{nacked}");
    let nacked_at = Instant::now();

    // The scheduler records the NACK and parks that version.
    let routes = eventually(
        Duration::from_secs(5),
        "scheduler records the NACK",
        || async {
            let r = s.routes(node).await.unwrap_or(Value::Null);
            match as_u64(r.get("nacked").and_then(|n| n.get("version"))) {
                Some(v) if v == v1 => Ok(r),
                _ => Err(r),
            }
        },
    )
    .await;
    assert_ne!(
        as_u64(field(&routes, "acked_version")),
        Some(v1),
        "a NACKed version is not ACKed: {routes}"
    );
    assert!(
        s.metric("vantage_scheduler_route_nacks_total", &[]).await >= 1.0,
        "NACK counted"
    );

    // No resend while the table does not change.
    let quiet_left = QUIET.saturating_sub(nacked_at.elapsed());
    if let Some(ev) = py.next_event(quiet_left).await {
        panic!(
            "received {ev} {:?} after the NACK; a NACKed table must not be resent",
            nacked_at.elapsed()
        );
    }

    // The table changes (new weights): a higher version arrives and is ACKed.
    let (status, w) = s
        .put("/v1/weights", &serde_json::json!({"latency": 0.55}))
        .await;
    assert_eq!(status, 200, "{w}");
    let weights_version = as_u64(w.get("version"));
    let next = py.expect("table", Duration::from_secs(5)).await;
    let v2 = as_u64(next.get("version")).unwrap_or(0);
    assert!(
        v2 > v1,
        "after a change the version must grow: {v1} → {next}"
    );
    assert_eq!(
        as_u64(next.get("weights_version")),
        weights_version,
        "{next}"
    );
    let acked = py.expect("acked", step).await;
    assert_eq!(as_u64(acked.get("version")), Some(v2), "{acked}");
    eventually(
        Duration::from_secs(5),
        "scheduler records the ACK",
        || async {
            let r = s.routes(node).await.unwrap_or(Value::Null);
            if as_u64(field(&r, "acked_version")).is_some_and(|a| a >= v2) {
                Ok(())
            } else {
                Err(r)
            }
        },
    )
    .await;
    py.finish().await;
}

fn mentions_str(v: &Value, s: &str) -> bool {
    v.as_array()
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(s)))
}

store_tests! {
    stock_grpc_client => sqlite_stock_grpc_client, postgres_stock_grpc_client;
}
