//! The JSON view of a route table (`proto/vantage/v1/routes.proto`), one
//! renderer for both sides so they compare field by field: the scheduler's
//! `GET /v1/routes/{id}` (`table`, the node's current table as planned) and
//! the agent's `GET /v1/routes` (`table`, the whole table in use, deltas
//! merged).
//!
//! Entries are listed in table order: the scheduler's in key order, the
//! agent's in the order deltas left them (an upserted new key is appended),
//! so compare them as sets. Scores change without a new version (only
//! content moves versions), and `generated_at_ms` is set when a table is
//! sent.

use serde_json::{Value, json};
use vantage_proto::v1::{ProbeReason, RouteTable, Upstream, UpstreamKind};

/// `UPSTREAM_KIND_NODE` → `"node"`; unknown values → `""`.
fn kind(k: i32) -> String {
    UpstreamKind::try_from(k)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("UPSTREAM_KIND_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// `PROBE_REASON_UPSTREAM` → `"upstream"`; unknown values → `""`.
fn reason(r: i32) -> String {
    ProbeReason::try_from(r)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("PROBE_REASON_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn upstreams(us: &[Upstream]) -> Vec<Value> {
    us.iter()
        .map(|u| {
            json!({
                "kind": kind(u.kind), "node_id": u.node_id, "url": u.url,
                "score": u.score, "hops": u.hops,
            })
        })
        .collect()
}

/// The table as JSON: its scalars, the directory, the routes per origin
/// (`origins`) and per static pattern (`patterns`), the probe targets, and
/// — for convenience — each directory stream with the upstream list it
/// resolves to followed by the patterns (`streams`).
pub fn table_json(t: &RouteTable) -> Value {
    let mut streams: Vec<Value> = t
        .directory
        .iter()
        .filter_map(|d| {
            let o = t.origins.iter().find(|o| o.origin == d.origin)?;
            Some(json!({"stream": d.stream, "origin": d.origin, "upstreams": upstreams(&o.upstreams)}))
        })
        .collect();
    streams.extend(
        t.streams
            .iter()
            .map(|s| json!({"stream": s.stream, "upstreams": upstreams(&s.upstreams)})),
    );
    json!({
        "node_id": t.node_id,
        "version": t.version,
        "generated_at_ms": t.generated_at_ms,
        "ttl_s": t.ttl_s,
        "report_interval_ms": t.report_interval_ms,
        "weights_version": t.weights_version,
        "directory": t.directory.iter().map(|d| json!({"stream": d.stream, "origin": d.origin})).collect::<Vec<_>>(),
        "origins": t.origins.iter().map(|o| json!({"origin": o.origin, "upstreams": upstreams(&o.upstreams)})).collect::<Vec<_>>(),
        "patterns": t.streams.iter().map(|s| json!({"stream": s.stream, "upstreams": upstreams(&s.upstreams)})).collect::<Vec<_>>(),
        "streams": streams,
        "probe_targets": t.probe_targets.iter().map(|p| json!({
            "node_id": p.node_id, "addr": p.addr, "reason": reason(p.reason),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_proto::v1::{DirectoryEntry, OriginRoute, ProbeTarget, StreamRoute};

    #[test]
    fn renders_every_section_with_readable_enums() {
        let up = |id: &str| Upstream {
            kind: UpstreamKind::Node as i32,
            node_id: id.into(),
            url: format!("http://{id}:8080"),
            score: 0.25,
            hops: 1,
        };
        let t = RouteTable {
            node_id: "edge-1".into(),
            version: 7,
            ttl_s: 300,
            origins: vec![OriginRoute {
                origin: "edge-2".into(),
                upstreams: vec![up("edge-3"), up("edge-2")],
            }],
            directory: vec![
                DirectoryEntry {
                    stream: "live/a".into(),
                    origin: "edge-2".into(),
                },
                DirectoryEntry {
                    stream: "live/here".into(),
                    origin: "edge-1".into(),
                },
            ],
            streams: vec![StreamRoute {
                stream: "vod/*".into(),
                upstreams: vec![Upstream {
                    kind: UpstreamKind::Origin as i32,
                    url: "http://o/{app}/{stream}.flv".into(),
                    ..Upstream::default()
                }],
            }],
            probe_targets: vec![ProbeTarget {
                node_id: "edge-3".into(),
                addr: "10.0.0.3:7402".into(),
                reason: ProbeReason::Nearest as i32,
            }],
            ..RouteTable::default()
        };
        let v = table_json(&t);
        assert_eq!(v["version"], 7);
        assert_eq!(
            v["directory"][1],
            json!({"stream": "live/here", "origin": "edge-1"})
        );
        assert_eq!(v["origins"][0]["origin"], "edge-2");
        assert_eq!(v["origins"][0]["upstreams"][0]["kind"], "node");
        assert_eq!(v["origins"][0]["upstreams"][1]["hops"], 1);
        assert_eq!(v["patterns"][0]["upstreams"][0]["kind"], "origin");
        assert_eq!(v["probe_targets"][0]["reason"], "nearest");
        // The resolved view: live/a through its origin's route, the local
        // stream has none, then the patterns.
        let streams: Vec<&str> = v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stream"].as_str().unwrap())
            .collect();
        assert_eq!(streams, ["live/a", "vod/*"]);
        assert_eq!(v["streams"][0]["upstreams"][0]["node_id"], "edge-3");
    }
}
