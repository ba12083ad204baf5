//! Route-table validation and the applied, ready-to-use form of a table.
//!
//! [`validate`] is pure: it decides ACK (`Ok`) or NACK (`Err` with a message
//! for the scheduler) without touching any state, so a bad table can never
//! half-apply.

use crate::config::{HostPort, parse_http_url};
use serde::Serialize;
use std::collections::HashSet;
use vantage_proto::v1::{ProbeReason, RouteTable, Upstream, UpstreamKind};
use vantage_shared::auth::valid_node_id;
use vantage_shared::stream::{StreamKey, StreamPattern};

/// Shortest and longest report interval a table may ask for (0 = unset).
pub const REPORT_INTERVAL_MS: std::ops::RangeInclusive<u32> = 100..=60_000;

/// Why a table was refused; the message goes back in the NACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("table is addressed to node {got:?}, this agent is {want:?}")]
    WrongNode { got: String, want: String },
    #[error("version 0 is reserved for \"no table\"")]
    ZeroVersion,
    #[error("empty nonce")]
    EmptyNonce,
    #[error("ttl_s must be greater than 0")]
    ZeroTtl,
    #[error("report_interval_ms {0} outside 100..=60000 (0 = unchanged)")]
    ReportInterval(u32),
    #[error("{at}: {reason}")]
    Invalid { at: String, reason: String },
}

impl TableError {
    /// gRPC status code carried in the NACK's `error_detail.code`
    /// (3 = INVALID_ARGUMENT).
    pub const NACK_CODE: i32 = 3;
}

fn invalid(at: impl Into<String>, reason: impl Into<String>) -> TableError {
    TableError::Invalid {
        at: at.into(),
        reason: reason.into(),
    }
}

/// Where the table in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableSource {
    /// Received on the route stream in this run.
    Scheduler,
    /// Loaded from `<data-dir>/routes.pb` at startup.
    Disk,
}

/// One stream entry with its parsed pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub pattern: StreamPattern,
    /// Best first; the first is used, the rest are the failover list.
    pub upstreams: Vec<Upstream>,
}

/// A validated table as published to the rest of the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedTable {
    /// The table exactly as received (and persisted).
    pub table: RouteTable,
    /// Stream routes, most specific pattern first.
    pub routes: Vec<Route>,
    pub source: TableSource,
    /// Wall clock when it was applied, unix ms.
    pub applied_at_ms: i64,
}

impl AppliedTable {
    /// Validates `table` for `node_id` and wraps it.
    pub fn new(
        table: RouteTable,
        node_id: &str,
        source: TableSource,
        now_ms: i64,
    ) -> Result<Self, TableError> {
        let mut routes = validate(&table, node_id)?;
        routes.sort_by_key(|r| std::cmp::Reverse(r.pattern.specificity()));
        Ok(Self {
            table,
            routes,
            source,
            applied_at_ms: now_ms,
        })
    }

    pub fn version(&self) -> u64 {
        self.table.version
    }

    /// The most specific route matching `key`.
    pub fn route_for(&self, key: &StreamKey) -> Option<&Route> {
        self.routes.iter().find(|r| r.pattern.matches(key))
    }
}

/// Checks every field of a table; returns its stream routes in table order.
pub fn validate(table: &RouteTable, node_id: &str) -> Result<Vec<Route>, TableError> {
    if table.node_id != node_id {
        return Err(TableError::WrongNode {
            got: table.node_id.clone(),
            want: node_id.to_owned(),
        });
    }
    if table.version == 0 {
        return Err(TableError::ZeroVersion);
    }
    if table.nonce.is_empty() {
        return Err(TableError::EmptyNonce);
    }
    if table.ttl_s == 0 {
        return Err(TableError::ZeroTtl);
    }
    if table.report_interval_ms != 0 && !REPORT_INTERVAL_MS.contains(&table.report_interval_ms) {
        return Err(TableError::ReportInterval(table.report_interval_ms));
    }

    let mut seen = HashSet::new();
    let mut routes = Vec::with_capacity(table.streams.len());
    for (i, s) in table.streams.iter().enumerate() {
        let at = format!("streams[{i}]");
        let pattern = StreamPattern::parse(&s.stream)
            .map_err(|e| invalid(&at, format!("stream {:?}: {e}", s.stream)))?;
        if !seen.insert(pattern.clone()) {
            return Err(invalid(&at, format!("duplicate stream {:?}", s.stream)));
        }
        if s.upstreams.is_empty() {
            return Err(invalid(
                &at,
                format!("stream {:?} has no upstreams", s.stream),
            ));
        }
        for (j, u) in s.upstreams.iter().enumerate() {
            check_upstream(u, node_id).map_err(|r| invalid(format!("{at}.upstreams[{j}]"), r))?;
        }
        routes.push(Route {
            pattern,
            upstreams: s.upstreams.clone(),
        });
    }

    for (i, p) in table.probe_targets.iter().enumerate() {
        let at = format!("probe_targets[{i}]");
        if !valid_node_id(&p.node_id) {
            return Err(invalid(&at, format!("invalid node id {:?}", p.node_id)));
        }
        if p.node_id == node_id {
            return Err(invalid(&at, "probe target is this node"));
        }
        if HostPort::parse(&p.addr).is_none() {
            return Err(invalid(&at, format!("addr {:?} is not HOST:PORT", p.addr)));
        }
        if ProbeReason::try_from(p.reason).is_err() {
            return Err(invalid(&at, format!("unknown reason {}", p.reason)));
        }
    }

    for (i, g) in table.redirects.iter().enumerate() {
        let at = format!("redirects[{i}]");
        if g.group.is_empty() {
            return Err(invalid(&at, "empty group"));
        }
        for (j, e) in g.edges.iter().enumerate() {
            let at = format!("{at}.edges[{j}]");
            if !valid_node_id(&e.node_id) {
                return Err(invalid(&at, format!("invalid node id {:?}", e.node_id)));
            }
            if parse_http_url(&e.url).is_none() {
                return Err(invalid(&at, format!("url {:?} is not http(s)", e.url)));
            }
            if !e.score.is_finite() {
                return Err(invalid(&at, format!("score {} is not finite", e.score)));
            }
        }
    }
    Ok(routes)
}

fn check_upstream(u: &Upstream, node_id: &str) -> Result<(), String> {
    match UpstreamKind::try_from(u.kind) {
        Ok(UpstreamKind::Node) => {
            if !valid_node_id(&u.node_id) {
                return Err(format!("invalid node id {:?}", u.node_id));
            }
            if u.node_id == node_id {
                return Err("upstream is this node (loop)".to_owned());
            }
        }
        Ok(UpstreamKind::Origin) => {}
        Ok(UpstreamKind::Unspecified) | Err(_) => {
            return Err(format!("unknown upstream kind {}", u.kind));
        }
    }
    if parse_http_url(&u.url).is_none() {
        return Err(format!("url {:?} is not http(s)", u.url));
    }
    if !u.score.is_finite() {
        return Err(format!("score {} is not finite", u.score));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vantage_proto::v1::{EdgeChoice, GroupRedirect, ProbeTarget, StreamRoute};

    pub(crate) fn good() -> RouteTable {
        RouteTable {
            node_id: "edge-1".into(),
            version: 4,
            nonce: "n4".into(),
            generated_at_ms: 1,
            ttl_s: 300,
            report_interval_ms: 1000,
            weights_version: 1,
            streams: vec![
                StreamRoute {
                    stream: "live/*".into(),
                    upstreams: vec![
                        Upstream {
                            kind: UpstreamKind::Node as i32,
                            node_id: "edge-2".into(),
                            url: "http://127.0.0.1:8080".into(),
                            score: 0.2,
                            hops: 1,
                        },
                        Upstream {
                            kind: UpstreamKind::Origin as i32,
                            node_id: String::new(),
                            url: "http://origin/{app}/{stream}.flv".into(),
                            score: 0.4,
                            hops: 0,
                        },
                    ],
                },
                StreamRoute {
                    stream: "live/main".into(),
                    upstreams: vec![Upstream {
                        kind: UpstreamKind::Origin as i32,
                        url: "https://origin:443".into(),
                        ..Default::default()
                    }],
                },
            ],
            probe_targets: vec![ProbeTarget {
                node_id: "edge-2".into(),
                addr: "127.0.0.1:7402".into(),
                reason: ProbeReason::Upstream as i32,
            }],
            redirects: vec![GroupRedirect {
                group: "u09t".into(),
                edges: vec![EdgeChoice {
                    node_id: "edge-2".into(),
                    url: "http://127.0.0.1:8080".into(),
                    score: 0.1,
                }],
            }],
            probe_key: vec![1, 2, 3],
            ..RouteTable::default()
        }
    }

    fn nack(f: impl FnOnce(&mut RouteTable)) -> TableError {
        let mut t = good();
        f(&mut t);
        validate(&t, "edge-1").unwrap_err()
    }

    #[test]
    fn a_good_table_is_acked_and_routes_by_specificity() {
        let applied = AppliedTable::new(good(), "edge-1", TableSource::Scheduler, 5).unwrap();
        assert_eq!(applied.version(), 4);
        let main = StreamKey::parse("live/main").unwrap();
        let other = StreamKey::parse("live/other").unwrap();
        assert_eq!(
            applied.route_for(&main).unwrap().pattern.as_str(),
            "live/main"
        );
        assert_eq!(
            applied.route_for(&other).unwrap().pattern.as_str(),
            "live/*"
        );
        assert!(
            applied
                .route_for(&StreamKey::parse("vod/x").unwrap())
                .is_none()
        );
        // Empty tables and unset intervals are fine.
        let mut t = good();
        t.streams.clear();
        t.report_interval_ms = 0;
        assert!(validate(&t, "edge-1").is_ok());
    }

    #[test]
    fn bad_tables_are_nacked_with_a_reason() {
        assert!(matches!(
            validate(&good(), "edge-9"),
            Err(TableError::WrongNode { .. })
        ));
        assert_eq!(nack(|t| t.version = 0), TableError::ZeroVersion);
        assert_eq!(nack(|t| t.nonce.clear()), TableError::EmptyNonce);
        assert_eq!(nack(|t| t.ttl_s = 0), TableError::ZeroTtl);
        assert_eq!(
            nack(|t| t.report_interval_ms = 5),
            TableError::ReportInterval(5)
        );
        let msg = |e: TableError| e.to_string();
        assert!(
            msg(nack(|t| t.streams[0].stream = "bad pattern!".into())).starts_with("streams[0]")
        );
        assert!(msg(nack(|t| t.streams[1].stream = "live/*".into())).contains("duplicate"));
        assert!(msg(nack(|t| t.streams[0].upstreams.clear())).contains("no upstreams"));
        assert!(
            msg(nack(|t| t.streams[0].upstreams[0].url = "ftp://x".into()))
                .starts_with("streams[0].upstreams[0]")
        );
        assert!(msg(nack(|t| t.streams[0].upstreams[0].url = "not a url".into())).contains("url"));
        assert!(
            msg(nack(|t| t.streams[0].upstreams[0].kind = 0)).contains("unknown upstream kind")
        );
        assert!(
            msg(nack(|t| t.streams[0].upstreams[0].kind = 42)).contains("unknown upstream kind")
        );
        assert!(
            msg(nack(|t| t.streams[0].upstreams[0].node_id = "edge-1".into())).contains("loop")
        );
        assert!(msg(nack(|t| t.streams[0].upstreams[0].node_id = "".into())).contains("node id"));
        assert!(msg(nack(|t| t.streams[0].upstreams[1].score = f64::NAN)).contains("finite"));
        assert!(msg(nack(|t| t.probe_targets[0].addr = "nowhere".into())).contains("HOST:PORT"));
        assert!(msg(nack(|t| t.probe_targets[0].reason = 99)).contains("reason"));
        assert!(msg(nack(|t| t.probe_targets[0].node_id = "edge-1".into())).contains("this node"));
        assert!(msg(nack(|t| t.redirects[0].group.clear())).contains("group"));
        assert!(
            msg(nack(|t| t.redirects[0].edges[0].url = "x".into()))
                .contains("redirects[0].edges[0]")
        );
    }
}
