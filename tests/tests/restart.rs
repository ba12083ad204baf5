//! Must show 3 (issue 2): stop the scheduler. Agents keep their tables and
//! keep serving; an agent restarted meanwhile loads its last table from
//! disk; after the scheduler restarts, agents reconnect, all are `up` again,
//! and weights changed before the restart are still in force.

use serde_json::{Value, json};
use std::time::Duration;
use vantage_tests::agent::{status_connected, status_route_version};
use vantage_tests::cluster::{
    acked_version, start_agents, table_weights_version, wait_all_acked, wait_all_up,
};
use vantage_tests::http::as_u64;
use vantage_tests::{Scheduler, Store, eventually, store_tests};

const IDS: [&str; 3] = ["edge-1", "edge-2", "edge-3"];

async fn survives_scheduler_restart(store: Store) {
    let mut s = Scheduler::builder()
        .store(store)
        .report_interval_ms(250)
        .start()
        .await;
    let mut agents = start_agents(&s, &IDS).await;
    wait_all_up(&s, &IDS, Duration::from_secs(10)).await;

    // Weights changed before the restart.
    let (status, changed) = s.put("/v1/weights", &json!({"latency": 0.6})).await;
    assert_eq!(status, 200, "{changed}");
    let weights_version = as_u64(changed.get("version")).unwrap_or(0);
    assert!(weights_version > 0, "{changed}");
    let refs: Vec<_> = agents.iter().collect();
    let held: Vec<u64> = eventually(
        Duration::from_secs(10),
        "every agent ACKed a table planned with the new weights",
        || async {
            let mut held = Vec::new();
            for a in &refs {
                let (v, routes) = acked_version(&s, a).await?;
                let wv = table_weights_version(&routes);
                if wv != Some(weights_version) {
                    return Err(format!("{}: v{v} planned with weights {wv:?}", a.node_id()));
                }
                held.push(v);
            }
            Ok(held)
        },
    )
    .await;
    drop(refs);

    // Scheduler goes away (SIGTERM, clean exit).
    s.stop().await;

    // Agents notice, keep their tables and keep serving.
    eventually(
        Duration::from_secs(10),
        "agents see the scheduler gone",
        || async {
            let mut still = Vec::new();
            for a in &agents {
                if a.try_status().await.is_none_or(|st| status_connected(&st)) {
                    still.push(a.node_id().to_owned());
                }
            }
            if still.is_empty() { Ok(()) } else { Err(still) }
        },
    )
    .await;
    // A table pushed between the ACK check above and the stop may have
    // landed: what each agent holds now is what it must keep.
    let mut kept = Vec::new();
    for (a, v) in agents.iter().zip(&held) {
        let st = a.status().await;
        let now_held = status_route_version(&st);
        assert!(
            now_held.is_some_and(|k| k >= *v),
            "{} kept its table (v{v} or newer): {st}",
            a.node_id()
        );
        kept.push(now_held.unwrap_or(0));
        assert_eq!(
            a.readyz().await,
            200,
            "{} still ready without a scheduler",
            a.node_id()
        );
        assert_eq!(a.get("/healthz").await.0, 200);
    }

    // An agent restarted while the scheduler is down serves its table from disk.
    let restarted = 2;
    assert!(
        agents[restarted].routes_path().is_file(),
        "routes.pb persisted"
    );
    agents[restarted].restart().await;
    let st = eventually(
        Duration::from_secs(10),
        "restarted agent loads its table from disk",
        || async {
            match agents[restarted].try_status().await {
                Some(st) if st["routes"]["source"] == "disk" => Ok(st),
                other => Err(other),
            }
        },
    )
    .await;
    assert_eq!(status_route_version(&st), Some(kept[restarted]), "{st}");
    assert_eq!(st["telemetry"]["connected"], Value::Bool(false), "{st}");
    assert_eq!(
        agents[restarted].readyz().await,
        200,
        "ready from the disk table"
    );

    // The scheduler comes back: same ports, data dir and database.
    s.start().await;
    wait_all_up(&s, &IDS, Duration::from_secs(30)).await;
    let w = s.weights().await;
    assert_eq!(
        as_u64(w.get("version")),
        Some(weights_version),
        "weights version survived: {w}"
    );
    assert_eq!(w["weights"]["latency"].as_f64(), Some(0.6), "{w}");

    let refs: Vec<_> = agents.iter().collect();
    let acked = wait_all_acked(&s, &refs, Duration::from_secs(15)).await;
    for ((a, (v, routes)), before) in agents.iter().zip(&acked).zip(&kept) {
        assert!(
            v >= before,
            "{}: versions never go back ({before} → {v})",
            a.node_id()
        );
        assert_eq!(
            table_weights_version(routes),
            Some(weights_version),
            "{}: table planned with the persisted weights: {routes}",
            a.node_id()
        );
        let st = a.status().await;
        assert_eq!(st["telemetry"]["connected"], Value::Bool(true), "{st}");
    }
    s.assert_store_in_use().await;
    agents.clear();
}

store_tests! {
    survives_scheduler_restart => sqlite_survives_scheduler_restart, postgres_survives_scheduler_restart;
}
