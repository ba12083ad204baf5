//! Must show 1 (issue 2): a `--dev` scheduler and three agents. Within 5 s
//! `GET /v1/nodes` shows all three `up` with a report younger than 2 s and
//! load values, and every agent's `/v1/status` names a route version that
//! `GET /v1/routes/{id}` shows as ACKed.

use serde_json::Value;
use std::time::{Duration, Instant};
use vantage_tests::cluster::{PLACES, start_agents, start_settled, wait_all_acked, wait_all_up};
use vantage_tests::http::{as_u64, field};
use vantage_tests::{Scheduler, Store, store_tests};

const IDS: [&str; 3] = ["edge-1", "edge-2", "edge-3"];

async fn three_agents_up_and_acked(store: Store) {
    let s = Scheduler::builder().store(store).start().await;

    let t0 = Instant::now();
    let agents = start_agents(&s, &IDS).await;
    let budget = Duration::from_secs(5).saturating_sub(t0.elapsed());
    wait_all_up(&s, &IDS, budget).await;
    eprintln!(
        "all {} nodes up {:?} after the first agent started",
        IDS.len(),
        t0.elapsed()
    );

    // The per-node endpoint agrees and carries what the Hello said.
    for (i, a) in agents.iter().enumerate() {
        let n = s
            .node(a.node_id())
            .await
            .unwrap_or_else(|| panic!("GET /v1/nodes/{} failed", a.node_id()));
        assert_eq!(n["id"], a.node_id());
        assert_eq!(n["state"], "up", "{n}");
        let (region, lat, lon) = PLACES[i];
        assert_eq!(n["region"], region, "{n}");
        assert!(
            (n["lat"].as_f64().unwrap_or(f64::NAN) - lat).abs() < 1e-6,
            "{n}"
        );
        assert!(
            (n["lon"].as_f64().unwrap_or(f64::NAN) - lon).abs() < 1e-6,
            "{n}"
        );
        assert!(n["reports"].as_u64().unwrap_or(0) >= 1, "{n}");
    }
    let (status, body) = s.get("/v1/nodes/no-such-node").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].is_string(),
        "errors are JSON with a message: {body}"
    );

    // Every agent holds a table the scheduler shows as ACKed.
    let refs: Vec<_> = agents.iter().collect();
    let acked = wait_all_acked(&s, &refs, Duration::from_secs(5)).await;
    for (a, (version, routes)) in agents.iter().zip(&acked) {
        assert_eq!(routes["node_id"], a.node_id(), "{routes}");
        assert!(
            as_u64(routes.get("version")).unwrap_or(0) >= *version,
            "{routes}"
        );
        assert!(
            routes["table"].is_object(),
            "route record without a table: {routes}"
        );
        // The agent settles on an ACKed table (a newer one may be in flight).
        let st = a.status_acked(Duration::from_secs(5)).await;
        assert_eq!(st["node_id"], a.node_id(), "{st}");
        assert_eq!(st["routes"]["source"], "scheduler", "{st}");
        assert_eq!(st["routes"]["subscribed"], Value::Bool(true), "{st}");
        assert_eq!(st["telemetry"]["connected"], Value::Bool(true), "{st}");
        assert!(
            as_u64(field(&st["telemetry"], "reports_sent")).unwrap_or(0) >= 1,
            "{st}"
        );
        assert_eq!(a.readyz().await, 200, "agent with a table is ready");
    }

    s.assert_store_in_use().await;

    // Metrics tell the same story.
    let up = s
        .metric("vantage_scheduler_nodes", &[("state", "up")])
        .await;
    assert_eq!(up, 3.0, "vantage_scheduler_nodes{{state=\"up\"}}");
    assert!(s.metric("vantage_scheduler_reports_total", &[]).await >= 3.0);
    assert!(s.metric("vantage_scheduler_route_acks_total", &[]).await >= 3.0);
}

store_tests! {
    three_agents_up_and_acked => sqlite_three_agents_up_and_acked, postgres_three_agents_up_and_acked;
}

/// A cluster whose telemetry only wobbles is not re-planned: each periodic
/// replan finds every node's inputs inside the deadband (docs/qoe.md) and
/// is skipped, and no table changes version. (That a real change does get
/// through is shown by `measurement::degraded_path_shows_within_three_reports_and_upstreams_move_away`.)
#[tokio::test]
async fn a_quiet_cluster_is_not_replanned() {
    let s = Scheduler::builder()
        .arg("--replan-interval-ms")
        .arg("100")
        .start()
        .await;
    let (_agents, _) = start_settled(&s, &IDS).await;
    // Let the smoothed inputs settle from their first samples.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let versions = async || {
        let mut v = Vec::new();
        for id in IDS {
            let (_, routes) = s.get(&format!("/v1/routes/{id}")).await;
            v.push(as_u64(routes.get("version")).unwrap_or(0));
        }
        v
    };
    let plans0 = s.metric("vantage_scheduler_plans_total", &[]).await;
    let skipped0 = s.metric("vantage_scheduler_plans_skipped_total", &[]).await;
    let reports0 = s.metric("vantage_scheduler_reports_total", &[]).await;
    let v0 = versions().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let plans = s.metric("vantage_scheduler_plans_total", &[]).await - plans0;
    let skipped = s.metric("vantage_scheduler_plans_skipped_total", &[]).await - skipped0;
    let reports = s.metric("vantage_scheduler_reports_total", &[]).await - reports0;
    eprintln!("in 2 s: {reports} reports, {plans} plans, {skipped} periodic plans skipped");
    assert!(reports >= 3.0, "agents kept reporting: {reports}");
    assert!(
        skipped >= 10.0,
        "{skipped} periodic replans skipped in 2 s at 100 ms"
    );
    assert!(plans <= 1.0, "{plans} plans of an unchanged cluster");
    assert_eq!(versions().await, v0, "table versions unchanged");
}

/// A paused agent (SIGSTOP) is marked down after 3 report intervals but
/// keeps its QUIC session: resumed within the grace (max(3 intervals, 5 s))
/// it is up again on the same session, without a handshake. Paused for
/// longer, its session is closed (`report_timeout`) and it reconnects.
#[tokio::test]
async fn a_down_node_keeps_its_session_for_a_grace_period() {
    let s = Scheduler::builder().report_interval_ms(300).start().await;
    let mut agents = start_agents(&s, &IDS[..1]).await;
    let agent = &mut agents[0];
    wait_all_up(&s, &IDS[..1], Duration::from_secs(10)).await;
    let state = async || {
        s.node(IDS[0])
            .await
            .and_then(|n| n["state"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let wait_state = async |want: &str, within: Duration| {
        let t0 = Instant::now();
        loop {
            let st = state().await;
            if st == want {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < within,
                "{} still {st:?}, want {want}",
                IDS[0]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let connections = async || {
        s.metric("vantage_scheduler_telemetry_connections_total", &[])
            .await
    };
    let c0 = connections().await;

    // Short pause: down, then up again on the same session.
    agent.pause();
    let down_after = wait_state("down", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.resume();
    let up_after = wait_state("up", Duration::from_secs(5)).await;
    eprintln!("short pause: down after {down_after:?}, up {up_after:?} after SIGCONT");
    assert_eq!(
        connections().await,
        c0,
        "no new connection after a short pause"
    );

    // Long pause: the session is closed; the agent reconnects once resumed.
    agent.pause();
    wait_state("down", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(7_000)).await;
    agent.resume();
    let up_after = wait_state("up", Duration::from_secs(15)).await;
    let c1 = connections().await;
    eprintln!("long pause: up {up_after:?} after SIGCONT, connections {c0} -> {c1}");
    assert!(
        c1 > c0,
        "the agent reconnected after its session was closed"
    );
}
