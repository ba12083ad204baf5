//! Checks shared by the end-to-end tests: "these nodes are up", "this agent
//! holds a table the scheduler shows as ACKed".

use crate::agent::status_route_version;
use crate::eventually::eventually;
use crate::http::{as_u64, field};
use crate::{Agent, Scheduler};
use serde_json::Value;
use std::time::Duration;

/// Why a node (JSON from `/v1/nodes`) is not yet healthy, or Ok.
pub fn node_healthy(node: &Value, max_report_age_ms: u64) -> Result<(), String> {
    let id = node.get("id").and_then(Value::as_str).unwrap_or("?");
    let state = node.get("state").and_then(Value::as_str);
    if state != Some("up") {
        return Err(format!("{id}: state {state:?}"));
    }
    if node.get("connected").and_then(Value::as_bool) != Some(true) {
        return Err(format!("{id}: not connected"));
    }
    let age = node.get("last_report_age_ms").and_then(Value::as_u64);
    match age {
        Some(a) if a < max_report_age_ms => {}
        other => {
            return Err(format!(
                "{id}: last_report_age_ms {other:?}, want < {max_report_age_ms}"
            ));
        }
    }
    let load = node.get("load").filter(|l| l.is_object());
    let Some(load) = load else {
        return Err(format!("{id}: no load values"));
    };
    let cpu = load.get("cpu").and_then(Value::as_f64);
    let mem_total = load.get("mem_total_bytes").and_then(Value::as_u64);
    match (cpu, mem_total) {
        (Some(c), Some(m)) if (0.0..=1.0).contains(&c) && m > 0 => Ok(()),
        _ => Err(format!("{id}: load values missing or implausible: {load}")),
    }
}

/// Waits until every id in `ids` is listed `up`, connected, with a report
/// younger than 2 s and load values. Returns the nodes.
pub async fn wait_all_up(s: &Scheduler, ids: &[&str], timeout: Duration) -> Vec<Value> {
    eventually(timeout, &format!("nodes {ids:?} up"), || async {
        let nodes = s.nodes().await;
        let mut problems = Vec::new();
        let mut found = Vec::new();
        for id in ids {
            match nodes
                .iter()
                .find(|n| n.get("id").and_then(Value::as_str) == Some(id))
            {
                None => problems.push(format!("{id}: not listed")),
                Some(n) => match node_healthy(n, 2000) {
                    Ok(()) => found.push(n.clone()),
                    Err(e) => problems.push(e),
                },
            }
        }
        if problems.is_empty() {
            Ok(found)
        } else {
            Err(problems)
        }
    })
    .await
}

/// The version an agent holds and the scheduler's route record for it, when
/// they agree that this version is ACKed.
pub async fn acked_version(s: &Scheduler, a: &Agent) -> Result<(u64, Value), String> {
    let Some(status) = a.try_status().await else {
        return Err(format!("{}: no /v1/status", a.node_id()));
    };
    let Some(held) = status_route_version(&status) else {
        return Err(format!("{}: holds no table: {status}", a.node_id()));
    };
    let Some(routes) = s.routes(a.node_id()).await else {
        return Err(format!("{}: GET /v1/routes failed", a.node_id()));
    };
    let acked = as_u64(field(&routes, "acked_version"));
    if acked != Some(held) {
        return Err(format!(
            "{}: agent holds v{held}, scheduler acked_version {acked:?} (version {:?})",
            a.node_id(),
            as_u64(routes.get("version"))
        ));
    }
    Ok((held, routes))
}

/// Waits until every agent holds a route table the scheduler shows ACKed.
/// Returns `(version, routes JSON)` per agent, in order.
pub async fn wait_all_acked(
    s: &Scheduler,
    agents: &[&Agent],
    timeout: Duration,
) -> Vec<(u64, Value)> {
    eventually(timeout, "every agent's table ACKed", || async {
        let mut out = Vec::new();
        for a in agents {
            out.push(acked_version(s, a).await?);
        }
        Ok::<_, String>(out)
    })
    .await
}

/// Starts agents `ids` against `s` ([`start_agents`]) and waits up to 10 s
/// until all are up, then up to 10 s until every one holds a table the
/// scheduler shows ACKed. Returns the agents and their `(version, routes
/// JSON)`, in order.
pub async fn start_settled(s: &Scheduler, ids: &[&str]) -> (Vec<Agent>, Vec<(u64, Value)>) {
    let agents = start_agents(s, ids).await;
    wait_all_up(s, ids, Duration::from_secs(10)).await;
    let refs: Vec<_> = agents.iter().collect();
    let acked = wait_all_acked(s, &refs, Duration::from_secs(10)).await;
    (agents, acked)
}

/// The `table` object of a `/v1/routes/{id}` answer.
pub fn table_of(routes: &Value) -> &Value {
    routes.get("table").unwrap_or(&Value::Null)
}

/// Node ids of the upstream candidates of `stream` (best first) in a
/// `/v1/routes/{id}` answer: the live stream's route as the node would
/// pull it (`stream_routes`, whether or not the agent subscribed to it),
/// else the table's `streams` view (patterns); empty when there is none.
pub fn upstreams(routes: &Value, stream: &str) -> Vec<String> {
    let planned = routes
        .get("stream_routes")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|r| r.get("stream").and_then(Value::as_str) == Some(stream))
        });
    if let Some(r) = planned.filter(|r| r["upstreams"].as_array().is_some_and(|a| !a.is_empty())) {
        return r["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| u["node_id"].as_str().unwrap_or_default().to_owned())
            .collect();
    }
    table_of(routes)
        .get("streams")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|r| r.get("stream").and_then(Value::as_str) == Some(stream))
        })
        .and_then(|r| r.get("upstreams"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|u| u["node_id"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The first upstream candidate of route `stream`, if any.
pub fn first_upstream(routes: &Value, stream: &str) -> Option<String> {
    upstreams(routes, stream).into_iter().next()
}

/// A route table as rendered by the scheduler's `GET /v1/routes/{id}` and
/// the agent's `GET /v1/routes` (`table`), made comparable: entries sorted
/// by key (an agent's merged table lists new keys where deltas appended
/// them), upstream lists kept in order (best first is content) without
/// their scores (informational, they change without a new version), and
/// without `generated_at_ms` (set when a table is sent), and without probe
/// targets' `addr` (the scheduler shows addresses to authenticated readers
/// only).
pub fn canonical_table(table: &Value) -> Value {
    let mut t = table.clone();
    let Some(obj) = t.as_object_mut() else {
        return t;
    };
    obj.remove("generated_at_ms");
    for (list, key) in [
        ("directory", "stream"),
        ("origins", "origin"),
        ("patterns", "stream"),
        ("streams", "stream"),
        ("probe_targets", "node_id"),
    ] {
        let Some(entries) = obj.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for e in entries.iter_mut() {
            if list == "probe_targets"
                && let Some(e) = e.as_object_mut()
            {
                e.remove("addr");
            }
            let ups = e.get_mut("upstreams").and_then(Value::as_array_mut);
            for u in ups.into_iter().flatten() {
                if let Some(u) = u.as_object_mut() {
                    u.remove("score");
                }
            }
        }
        entries.sort_by(|a, b| {
            let k = |v: &Value| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
            k(a).cmp(&k(b))
        });
    }
    t
}

/// The weight-set version a route table was planned with.
pub fn table_weights_version(routes: &Value) -> Option<u64> {
    as_u64(field(table_of(routes), "weights_version"))
}

/// Real places for test agents: (region, lat, lon).
pub const PLACES: [(&str, f64, f64); 6] = [
    ("eu-paris", 48.8566, 2.3522),
    ("eu-frankfurt", 50.1109, 8.6821),
    ("ap-tokyo", 35.6762, 139.6503),
    ("sa-saopaulo", -23.5505, -46.6333),
    ("eu-london", 51.5074, -0.1278),
    ("us-newyork", 40.7128, -74.0060),
];

/// Static origin every test agent is configured with (`--origin`), so
/// tables carry stream routes; nothing listens on port 9.
pub const ORIGIN: (&str, &str) = ("live/*", "http://127.0.0.1:9/{app}/{stream}.flv");

/// A builder for test agent number `i` (placed at `PLACES[i % 6]`).
pub fn agent_builder(s: &Scheduler, id: &str, i: usize) -> crate::AgentBuilder {
    let (region, lat, lon) = PLACES[i % PLACES.len()];
    Agent::builder(id, s)
        .region(region)
        .at(lat, lon)
        .capacity_mbps(1000.0)
        .origin(ORIGIN.0, ORIGIN.1)
}

/// Starts agents `ids` against `s`, one after another (each start only
/// waits for the agent's `/healthz`).
pub async fn start_agents(s: &Scheduler, ids: &[&str]) -> Vec<Agent> {
    let mut out = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        out.push(agent_builder(s, id, i).start().await);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_tables_ignore_order_scores_and_send_time_but_not_upstream_order() {
        let up = |id: &str, score: f64| json!({"node_id": id, "hops": 1, "score": score});
        let a = json!({
            "version": 4, "generated_at_ms": 1,
            "directory": [{"stream": "live/b", "origin": "o"}, {"stream": "live/a", "origin": "o"}],
            "origins": [{"origin": "o", "upstreams": [up("x", 0.1), up("o", 0.2)]}],
            "probe_targets": [{"node_id": "y"}, {"node_id": "x"}],
        });
        let b = json!({
            "version": 4, "generated_at_ms": 99,
            "directory": [{"stream": "live/a", "origin": "o"}, {"stream": "live/b", "origin": "o"}],
            "origins": [{"origin": "o", "upstreams": [up("x", 0.7), up("o", 0.9)]}],
            "probe_targets": [{"node_id": "x"}, {"node_id": "y"}],
        });
        assert_eq!(canonical_table(&a), canonical_table(&b));
        let mut swapped = b.clone();
        swapped["origins"][0]["upstreams"] = json!([up("o", 0.2), up("x", 0.1)]);
        assert_ne!(canonical_table(&a), canonical_table(&swapped));
        let mut other_version = b;
        other_version["version"] = json!(5);
        assert_ne!(canonical_table(&a), canonical_table(&other_version));
    }
}
