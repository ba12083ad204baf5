//! Must show 4 (issue 2): `PUT /v1/weights` with valid weights creates a new
//! version and agents receive replanned tables within 1 s; invalid input
//! (negative, NaN, unknown key, empty body) gets a 400 JSON error and
//! changes nothing.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use vantage_tests::agent::status_route_version;
use vantage_tests::cluster::{start_settled, table_weights_version};
use vantage_tests::http::as_u64;
use vantage_tests::{Scheduler, Store, eventually_every, store_tests};

const IDS: [&str; 3] = ["edge-1", "edge-2", "edge-3"];

const INVALID: [(&str, &str); 9] = [
    (r#"{"latency": -0.5}"#, "negative weight"),
    (r#"{"latency": NaN}"#, "NaN literal"),
    (r#"{"latency": "NaN"}"#, "NaN as a string"),
    (r#"{"latency": 1e999}"#, "infinite weight"),
    (r#"{"bogus": 0.1}"#, "unknown key"),
    (
        r#"{"latency": 0.5, "bogus": 0.1}"#,
        "unknown key beside a valid one",
    ),
    ("", "empty body"),
    ("{}", "empty object"),
    ("[0.5]", "not an object"),
];

async fn weights_update_replans(store: Store) {
    let s = Scheduler::builder().store(store).start().await;
    let (agents, before_tables) = start_settled(&s, &IDS).await;
    let before = s.weights().await;
    let v0 = as_u64(before.get("version")).unwrap_or_else(|| panic!("no version: {before}"));
    for k in ["latency", "loss", "buffer", "load", "distance"] {
        assert!(
            before["weights"][k].is_number(),
            "weight {k} missing: {before}"
        );
    }

    // Invalid input: 400 with a JSON error, and nothing changes.
    for (body, why) in INVALID {
        let (status, answer) = s.put_raw("/v1/weights", body).await;
        assert_eq!(status, 400, "{why} ({body:?}) must be refused: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{why}: error body must be JSON with a message, got {answer}"
        );
    }
    assert_eq!(
        s.weights().await,
        before,
        "invalid PUTs changed the weights"
    );
    for (a, (_, routes)) in agents.iter().zip(&before_tables) {
        let now = s.routes(a.node_id()).await.unwrap_or(Value::Null);
        assert_eq!(
            table_weights_version(&now),
            table_weights_version(routes),
            "{}: invalid PUTs changed the plan's weights: {now}",
            a.node_id()
        );
    }

    // A valid change: new version, other weights untouched, replanned tables
    // at every agent within 1 s.
    let held_before: Vec<u64> = before_tables.iter().map(|(v, _)| *v).collect();
    let t0 = Instant::now();
    let (status, after) = s
        .put("/v1/weights", &json!({"latency": 0.5, "loss": 0.25}))
        .await;
    assert_eq!(status, 200, "{after}");
    let v1 = as_u64(after.get("version")).unwrap_or(0);
    assert!(v1 > v0, "new weight version {v1} must exceed {v0}: {after}");
    assert_eq!(after["weights"]["latency"].as_f64(), Some(0.5), "{after}");
    assert_eq!(after["weights"]["loss"].as_f64(), Some(0.25), "{after}");
    for k in ["buffer", "load", "distance"] {
        assert_eq!(
            after["weights"][k], before["weights"][k],
            "{k} untouched: {after}"
        );
    }
    assert_eq!(as_u64(s.weights().await.get("version")), Some(v1));

    let replanned = eventually_every(
        Duration::from_secs(5),
        Duration::from_millis(20),
        "every agent holds a table planned with the new weights",
        || async {
            let mut missing = Vec::new();
            for (a, old) in agents.iter().zip(&held_before) {
                let held = match a.try_status().await {
                    Some(st) => status_route_version(&st),
                    None => None,
                };
                let routes = s.routes(a.node_id()).await.unwrap_or(Value::Null);
                let ok = held.is_some_and(|h| h > *old)
                    && held == as_u64(routes.get("version"))
                    && table_weights_version(&routes) == Some(v1);
                if !ok {
                    missing.push(format!(
                        "{}: holds {held:?} (was {old}), scheduler v{:?} with weights v{:?}",
                        a.node_id(),
                        as_u64(routes.get("version")),
                        table_weights_version(&routes)
                    ));
                }
            }
            if missing.is_empty() {
                Ok(t0.elapsed())
            } else {
                Err(missing)
            }
        },
    )
    .await;
    eprintln!("replanned tables at every agent {replanned:?} after the PUT");
    assert!(
        replanned <= Duration::from_secs(1),
        "agents received replanned tables only {replanned:?} after the weight change (must be ≤ 1 s)"
    );
}

store_tests! {
    weights_update_replans => sqlite_weights_update_replans, postgres_weights_update_replans;
}
