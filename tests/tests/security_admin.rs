//! Issue 17, the admin API: with `--dev` the admin token used to be
//! ignored, and the API checked neither Origin nor Host, so a web page
//! could POST a drain (cross-site, or through DNS rebinding); a drain could
//! not be lifted without editing the database; anyone could read agents'
//! session addresses.
//!
//! * Without a token (`--dev`), mutating calls from another site (an
//!   `Origin` that is not the API's, `Sec-Fetch-Site: cross-site`) or for
//!   a host name the API does not serve (DNS rebinding) are refused 403.
//! * `POST /v1/nodes/{id}/undrain` lifts a drain, and it stays lifted
//!   across a restart.
//! * A given admin token is enforced, `--dev` included; `--read-token`
//!   makes reads need a token too; anonymous readers never see session
//!   addresses.

use serde_json::Value;
use std::time::Duration;
use vantage_tests::cluster::wait_all_up;
use vantage_tests::{Agent, Scheduler, eventually};

const ADMIN: &str = "admin-secret-of-the-admin-tests";
const READ: &str = "read-secret-of-the-admin-tests";

async fn state(s: &Scheduler, id: &str) -> Option<String> {
    s.node(id)
        .await
        .and_then(|n| n["state"].as_str().map(str::to_owned))
}

async fn post(s: &Scheduler, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    s.http()
        .request("POST", &format!("{}{path}", s.api_url()), headers, None)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_drain_is_refused_and_undrain_works() {
    let mut s = Scheduler::builder().report_interval_ms(500).start().await;
    let _a = Agent::builder("adm-a", &s).start().await;
    wait_all_up(&s, &["adm-a"], Duration::from_secs(15)).await;
    let drain = "/v1/nodes/adm-a/drain";
    let port = s.ports().http;

    // A page on another site posting a drain (the browser adds Origin).
    let (status, body) = post(&s, drain, &[("origin", "http://evil.example")]).await;
    assert_eq!(status, 403, "cross-site drain: {body}");
    let (status, body) = post(&s, drain, &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(status, 403, "cross-site drain (Sec-Fetch-Site): {body}");
    // DNS rebinding: same origin as far as the browser knows, another host.
    let host = format!("evil.example:{port}");
    let origin = format!("http://evil.example:{port}");
    let (status, body) = post(&s, drain, &[("host", &host), ("origin", &origin)]).await;
    assert_eq!(status, 403, "drain through DNS rebinding: {body}");
    assert_eq!(state(&s, "adm-a").await.as_deref(), Some("up"));
    let refused = s
        .metric(
            "vantage_scheduler_api_refused_total",
            &[("reason", "cross_site")],
        )
        .await;
    assert!(refused >= 3.0, "refusals counted: {refused}");

    // The dashboard (same origin) and curl (no Origin) may.
    let own = format!("http://127.0.0.1:{port}");
    let (status, body) = post(&s, drain, &[("origin", &own)]).await;
    assert_eq!(status, 200, "same-origin drain: {body}");
    eventually(Duration::from_secs(3), "adm-a draining", || async {
        match state(&s, "adm-a").await.as_deref() {
            Some("draining") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Undrain lifts it, and it stays lifted after a restart.
    let (status, body) = post(&s, "/v1/nodes/adm-a/undrain", &[]).await;
    assert_eq!(status, 200, "undrain: {body}");
    assert_eq!(body["draining"], false, "{body}");
    eventually(Duration::from_secs(3), "adm-a up again", || async {
        match state(&s, "adm-a").await.as_deref() {
            Some("up") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (_, events) = s.get("/v1/events?node=adm-a").await;
    assert!(
        events["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "undrain")),
        "{events}"
    );
    s.restart().await;
    eventually(
        Duration::from_secs(10),
        "adm-a up after the restart",
        || async {
            match state(&s, "adm-a").await.as_deref() {
                Some("up") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let (status, _) = post(&s, "/v1/nodes/nobody/undrain", &[]).await;
    assert_eq!(status, 404);

    // Anonymous readers do not see where agents connect from.
    let node = s.node("adm-a").await.unwrap();
    assert!(
        node["session"].is_null() || node["session"].get("remote").is_none(),
        "session address shown to an anonymous reader: {node}"
    );
    assert!(node.get("probe_addr").is_none(), "{node}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_admin_token_is_enforced_in_dev_and_reads_can_need_one() {
    let s = Scheduler::builder()
        .report_interval_ms(500)
        .arg("--admin-token")
        .arg(ADMIN)
        .arg("--read-token")
        .arg(READ)
        .start()
        .await;
    let _a = Agent::builder("tok-adm", &s).start().await;
    let admin = format!("Bearer {ADMIN}");
    let read = format!("Bearer {READ}");
    let get = |path: &'static str, auth: Option<String>| {
        let s = &s;
        async move {
            let h: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            s.http()
                .request("GET", &format!("{}{path}", s.api_url()), &h, None)
                .await
        }
    };
    eventually(Duration::from_secs(15), "tok-adm listed", || async {
        let (st, v) = get("/v1/nodes", Some(read.clone())).await;
        if st == 200 && v.to_string().contains("tok-adm") {
            Ok(())
        } else {
            Err((st, v))
        }
    })
    .await;

    let drain = "/v1/nodes/tok-adm/drain";
    let (status, body) = post(&s, drain, &[]).await;
    assert_eq!(
        status, 401,
        "drain without the admin token in --dev: {body}"
    );
    let (status, _) = post(&s, drain, &[("authorization", "Bearer wrong")]).await;
    assert_eq!(status, 403);
    let (status, _) = post(&s, drain, &[("authorization", &read)]).await;
    assert_eq!(status, 403, "the read token does not mutate");
    let (status, body) = post(&s, drain, &[("authorization", &admin)]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &s,
        "/v1/nodes/tok-adm/undrain",
        &[("authorization", &admin)],
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Reads need a token: the read token or the admin token.
    let (status, _) = get("/v1/nodes", None).await;
    assert_eq!(status, 401, "anonymous read with --read-token");
    let (status, _) = get("/v1/events", None).await;
    assert_eq!(status, 401);
    let (status, node) = get("/v1/nodes/tok-adm", Some(read.clone())).await;
    assert_eq!(status, 200);
    assert!(
        node["session"]["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "an authenticated reader sees the session address: {node}"
    );
    let (status, _) = get("/v1/nodes", Some(admin.clone())).await;
    assert_eq!(status, 200);
    // Viewer-facing and health endpoints stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = get(path, None).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _) = get("/v1/resolve?stream=live/none", None).await;
    assert_eq!(status, 404, "resolve stays open (unknown stream)");
}
