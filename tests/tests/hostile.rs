//! Must show 5 (issue 2): a hostile QUIC client with the right ALPN and a
//! trusted chain sends garbage, an oversized frame, NaN/negative/out-of-range
//! values, a wrong token and other nodes' identities. Each attempt is
//! disconnected with its own QUIC application error code, counted in
//! `/metrics` by reason, and the real agents' sessions and reports carry on.

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use vantage_proto::v1::RejectReason;
use vantage_shared::close::CloseCode;
use vantage_tests::agent::{status_connected, status_reports_sent};
use vantage_tests::cluster::{start_agents, wait_all_up};
use vantage_tests::hostile::{Closed, HelloOutcome, HostileClient, hello, valid_report};
use vantage_tests::{Scheduler, Store, eventually, store_tests};

const IDS: [&str; 2] = ["edge-1", "edge-2"];
const REJECTED: &str = "vantage_scheduler_telemetry_rejected_total";

fn assert_closed(what: &str, closed: &Closed, want: CloseCode) {
    assert_eq!(
        closed.code,
        Some(u64::from(want.code())),
        "{what}: expected close code {want:?} (0x{:02x}), got {closed:?}",
        want.code()
    );
}

fn assert_rejected(what: &str, closed: &Closed, want: CloseCode, reason: RejectReason) {
    assert_closed(what, closed, want);
    let got = closed.rejection.as_ref().map(|r| r.reason());
    assert_eq!(
        got,
        Some(reason),
        "{what}: expected a Rejection{{{reason:?}}} frame before the close, got {closed:?}"
    );
}

async fn reports_of(s: &Scheduler) -> BTreeMap<String, u64> {
    s.nodes()
        .await
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?.to_owned(), n["reports"].as_u64()?)))
        .collect()
}

async fn hostile_clients_are_cut_off(store: Store) {
    let s = Scheduler::builder()
        .store(store)
        .report_interval_ms(250)
        .start()
        .await;
    let agents = start_agents(&s, &IDS).await;
    wait_all_up(&s, &IDS, Duration::from_secs(10)).await;
    let sessions: Vec<Value> = {
        let mut v = Vec::new();
        for a in &agents {
            v.push(a.status().await["telemetry"]["session_id"].clone());
        }
        v
    };
    let reports_before = reports_of(&s).await;
    let metrics_before = s.metrics().await;
    let count = |text: &str, code: CloseCode| {
        vantage_tests::http::metric(text, REJECTED, &[("reason", code.label())]).unwrap_or(0.0)
    };

    let token = s.token();
    let client = HostileClient::new(&s.ca_path(), s.quic_addr());
    let mut expected: HashMap<CloseCode, f64> = HashMap::new();
    let mut expect = |c: CloseCode| *expected.entry(c).or_default() += 1.0;

    // 1. Garbage on the control stream.
    let closed = client.send_garbage().await;
    assert_closed("garbage", &closed, CloseCode::Undecodable);
    expect(CloseCode::Undecodable);

    // 2. A frame announcing more than 64 KiB.
    let closed = client.send_oversized().await;
    assert_closed("oversized frame", &closed, CloseCode::FrameTooLarge);
    expect(CloseCode::FrameTooLarge);

    // 3–5. Out-of-range values after a valid Hello (freshly enrolled ids).
    let mut nan = valid_report(1);
    if let Some(l) = nan.load.as_mut() {
        l.cpu = f64::NAN;
    }
    let mut negative = valid_report(1);
    negative.paths[0].rtt_ewma_ms = -5.0;
    let mut lossy = valid_report(1);
    lossy.paths[0].loss = 1.5;
    let mut hostile_credential = None;
    for (node, report, what) in [
        ("hostile-nan", nan, "NaN cpu"),
        ("hostile-neg", negative, "negative RTT"),
        ("hostile-loss", lossy, "loss 1.5"),
    ] {
        let (credential, closed) = client.enroll_then_report(node, &token, report).await;
        assert!(
            credential.is_some(),
            "{what}: enrollment issued no credential"
        );
        hostile_credential = hostile_credential.or(credential);
        assert_closed(what, &closed, CloseCode::InvalidValue);
        expect(CloseCode::InvalidValue);
    }
    let hostile_credential = hostile_credential.unwrap_or_default();

    // 6. A wrong enrollment token.
    let mut h = hello("hostile-badtoken");
    h.enrollment_token = "not-the-token".into();
    match client.hello(h).await {
        HelloOutcome::Closed(c) => assert_rejected(
            "wrong token",
            &c,
            CloseCode::BadToken,
            RejectReason::BadToken,
        ),
        other => panic!("wrong token was welcomed: {other:?}"),
    }
    expect(CloseCode::BadToken);

    // 7. Another node's id with only the (real) token.
    let mut h = hello(IDS[0]);
    h.enrollment_token = token.clone();
    match client.hello(h).await {
        HelloOutcome::Closed(c) => assert_rejected(
            "enrolled id with the token only",
            &c,
            CloseCode::DuplicateNode,
            RejectReason::DuplicateNode,
        ),
        other => panic!("{} taken over with the token alone: {other:?}", IDS[0]),
    }
    expect(CloseCode::DuplicateNode);

    // 8. Another node's id with a credential of a different node: ours, then
    //    a real agent's.
    let other_agent_credential = agents[1]
        .credential()
        .unwrap_or_else(|| panic!("{} has no node.credential", IDS[1]));
    for (credential, what) in [
        (hostile_credential.clone(), "hostile node's credential"),
        (other_agent_credential, "another agent's credential"),
    ] {
        let mut h = hello(IDS[0]);
        h.node_credential = credential;
        match client.hello(h).await {
            HelloOutcome::Closed(c) => assert_rejected(
                &format!("{} with {what}", IDS[0]),
                &c,
                CloseCode::IdentityMismatch,
                RejectReason::IdentityMismatch,
            ),
            other => panic!("{} accepted with {what}: {other:?}", IDS[0]),
        }
        expect(CloseCode::IdentityMismatch);
    }

    // 9. A well-formed credential for a node the scheduler never enrolled.
    let mut h = hello("ghost-node");
    h.node_credential = format!("vn1.ghost-node.{}", vantage_shared::auth::random_secret());
    match client.hello(h).await {
        HelloOutcome::Closed(c) => assert_rejected(
            "unknown node",
            &c,
            CloseCode::UnknownNode,
            RejectReason::UnknownNode,
        ),
        other => panic!("unknown node welcomed: {other:?}"),
    }
    expect(CloseCode::UnknownNode);

    // 10. A protocol version we do not speak.
    let mut h = hello("hostile-v2");
    h.enrollment_token = token.clone();
    h.protocol_version = 2;
    match client.hello(h).await {
        HelloOutcome::Closed(c) => assert_rejected(
            "protocol version 2",
            &c,
            CloseCode::VersionUnsupported,
            RejectReason::VersionUnsupported,
        ),
        other => panic!("protocol version 2 welcomed: {other:?}"),
    }
    expect(CloseCode::VersionUnsupported);
    client.shutdown().await;

    // Every rejection is counted under its reason.
    let metrics_after = s.metrics().await;
    for (code, n) in &expected {
        let delta = count(&metrics_after, *code) - count(&metrics_before, *code);
        assert_eq!(
            delta,
            *n,
            "{REJECTED}{{reason=\"{}\"}} rose by {delta}, expected {n}",
            code.label()
        );
    }

    // The real agents never noticed: same sessions, reports still flowing.
    let target: BTreeMap<String, u64> = IDS
        .iter()
        .map(|id| {
            (
                (*id).to_owned(),
                reports_before.get(*id).copied().unwrap_or(0) + 4,
            )
        })
        .collect();
    eventually(
        Duration::from_secs(5),
        "real agents keep reporting",
        || async {
            let now = reports_of(&s).await;
            let behind: Vec<_> = target
                .iter()
                .filter(|(id, want)| now.get(*id).copied().unwrap_or(0) < **want)
                .map(|(id, want)| (id.clone(), now.get(id).copied(), *want))
                .collect();
            if behind.is_empty() {
                Ok(())
            } else {
                Err(behind)
            }
        },
    )
    .await;
    wait_all_up(&s, &IDS, Duration::from_secs(2)).await;
    for (a, session) in agents.iter().zip(&sessions) {
        let st = a.status().await;
        assert!(status_connected(&st), "{st}");
        assert_eq!(
            &st["telemetry"]["session_id"],
            session,
            "{}: the hostile client disturbed its session: {st}",
            a.node_id()
        );
        assert!(status_reports_sent(&st).unwrap_or(0) > 4, "{st}");
    }
}

store_tests! {
    hostile_clients_are_cut_off => sqlite_hostile_clients_are_cut_off, postgres_hostile_clients_are_cut_off;
}
