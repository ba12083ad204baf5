//! Production identity (issue 2): with `--client-ca` the scheduler admits
//! only agents whose client certificate names their node id. Certificates
//! come from the scheduler's own `certs` subcommand, as in docs/tls.md.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vantage_tests::agent::SchedulerEndpoints;
use vantage_tests::cluster::wait_all_up;
use vantage_tests::{AgentBuilder, Scheduler, eventually};

fn certs(args: &[&str]) {
    let out = Command::new(vantage_tests::bins::bin(vantage_tests::bins::SCHEDULER))
        .arg("certs")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run vantage-scheduler certs: {e}"));
    assert!(
        out.status.success(),
        "vantage-scheduler certs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn mtls_binds_node_ids_to_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, tls, agents) = (
        dir.path().join("ca"),
        dir.path().join("tls"),
        dir.path().join("agents"),
    );
    certs(&["init-ca", "--out", &p(&ca)]);
    certs(&[
        "server",
        "--ca-dir",
        &p(&ca),
        "--name",
        "localhost",
        "--name",
        "127.0.0.1",
        "--out",
        &p(&tls),
    ]);
    certs(&[
        "agent",
        "--ca-dir",
        &p(&ca),
        "--node-id",
        "edge-1",
        "--out",
        &p(&agents),
    ]);
    // Agents in mTLS mode need no token; the harness always passes a token
    // file, so give it one the scheduler will never look at.
    let token = dir.path().join("unused.token");
    std::fs::write(&token, "not-used-in-mtls-mode").expect("write token");

    let s = Scheduler::builder()
        .dev(false)
        .arg("--tls-cert")
        .arg(p(&tls.join("server.pem")))
        .arg("--tls-key")
        .arg(p(&tls.join("server.key")))
        .arg("--client-ca")
        .arg(p(&ca.join("ca.pem")))
        .start()
        .await;
    let endpoints = SchedulerEndpoints {
        quic: s.quic_addr(),
        grpc_url: s.grpc_url(),
        ca: ca.join("ca.pem"),
        token_file: token,
        more: Vec::new(),
    };
    let with_cert = |id: &str, cert_of: &str| {
        AgentBuilder::new(id, endpoints.clone())
            .at(48.85, 2.35)
            .arg("--cert")
            .arg(p(&agents.join(format!("{cert_of}.pem"))))
            .arg("--key")
            .arg(p(&agents.join(format!("{cert_of}.key"))))
    };

    // The right certificate: joins, reports and ACKs its route table over mTLS.
    let good = with_cert("edge-1", "edge-1").start().await;
    wait_all_up(&s, &["edge-1"], Duration::from_secs(10)).await;
    eventually(Duration::from_secs(10), "edge-1 ACKs a table", || async {
        let st = good.status().await;
        let acked = st["routes"]["acked"].as_bool() == Some(true);
        if acked { Ok(()) } else { Err(st) }
    })
    .await;

    // Another node id with edge-1's certificate: refused at every attempt.
    let _impostor = with_cert("edge-2", "edge-1").start().await;
    eventually(
        Duration::from_secs(10),
        "identity_mismatch rejections counted",
        || async {
            let n = s
                .metric(
                    "vantage_scheduler_telemetry_rejected_total",
                    &[("reason", "identity_mismatch")],
                )
                .await;
            if n >= 1.0 { Ok(n) } else { Err(n) }
        },
    )
    .await;
    assert!(
        s.node("edge-2").await.is_none(),
        "an impostor must never appear as a node"
    );
    assert_eq!(s.node("edge-1").await.expect("edge-1")["state"], "up");
}
