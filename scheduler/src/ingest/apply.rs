//! What a telemetry session's messages do to the scheduler, apart from the
//! connection protocol ([`super::session`]): the checks of a `Hello` and the
//! node facts it carries, reports and alerts applied to the registry (with
//! their counters, events and recordings), and the end of a session.

use super::session::{Refusal, refusal};
use crate::app::App;
use crate::registry::{NodeInfo, NodeState};
use std::collections::BTreeMap;
use tracing::info;
use vantage_proto::v1::{Hello, RejectReason, TelemetryFrame, telemetry_frame};
use vantage_shared::clock::now_ms;
use vantage_shared::close::CloseCode;
use vantage_shared::place::Coord;
use vantage_shared::stream::StreamPattern;
use vantage_shared::validate;

/// Forgets the session (if still ours). An orderly close by the agent marks
/// the node down at once; otherwise liveness decides from missed reports.
///
/// A drain the agent announced itself (SIGTERM) lasts as long as that
/// session: when it ends, however it ends, the node is down and no longer
/// draining, so the restarted agent is eligible again. (A drain ordered
/// through the API stays until an operator lifts it.) A still-draining agent
/// that reconnects announces again.
pub(super) fn end_session(
    app: &App,
    node_id: &str,
    conn_id: u64,
    orderly: bool,
    agent_drain: bool,
) {
    let down = orderly || agent_drain;
    let now = now_ms();
    let ours = app
        .registry
        .update(node_id, |e| {
            let ours = e
                .session
                .as_ref()
                .and_then(|s| s.connection.as_ref())
                .is_some_and(|c| c.id() == conn_id);
            if ours {
                e.session = None;
                if agent_drain {
                    e.draining = false;
                }
                if down {
                    e.state = NodeState::Down;
                    e.state_since_ms = now;
                    e.origin_since.clear();
                }
            }
            ours
        })
        .unwrap_or(false);
    if ours {
        app.metrics.telemetry_sessions.dec();
        if let Some(r) = &app.recorder {
            let how = if orderly { "orderly" } else { "lost" };
            r.node(now, node_id, "disconnect", how, None);
            if down {
                r.node(now, node_id, "down", "session ended", None);
            }
        }
        if agent_drain {
            app.persist_node(node_id);
        }
        if down {
            let why = if orderly {
                "agent closed its session"
            } else {
                "draining agent's connection ended"
            };
            if app.cluster.is_leader() {
                app.event(node_id, "down", why);
            }
            app.trigger_replan();
        }
    }
}

pub(super) fn handle_frame(
    app: &App,
    node_id: &str,
    f: TelemetryFrame,
    len: usize,
) -> Result<(), Refusal> {
    match f.kind {
        Some(telemetry_frame::Kind::Report(r)) => {
            validate::report(&r).map_err(|e| refusal(CloseCode::InvalidValue, e.to_string()))?;
            let now = now_ms();
            if let Some(rec) = &app.recorder {
                rec.report(now, node_id, &r);
            }
            let (finished, streams_changed) = app
                .registry
                .update(node_id, |e| e.apply_report(r, now))
                .unwrap_or((None, false));
            if streams_changed {
                // A stream started or ended here: the directory changes for
                // every node, planned at once (no debounce: the step is
                // small, and viewers are waiting for the stream).
                app.replan_at_once();
            }
            // Several replicas all receive every report; the leader alone
            // writes what they observe alike.
            if let Some(minute) = finished.filter(|_| app.cluster.is_leader()) {
                // Once a minute per node: the roll-up and the last-seen time.
                app.store
                    .record(crate::store::WriteOp::Rollup(minute.to_store(node_id)));
                app.store.record(crate::store::WriteOp::NodeSeen {
                    node_id: node_id.to_owned(),
                    at_ms: now,
                });
            }
            app.metrics.reports.inc();
            app.metrics.report_bytes.inc_by(len as u64);
            Ok(())
        }
        Some(telemetry_frame::Kind::Alert(a)) => {
            validate::alert(&a).map_err(|e| refusal(CloseCode::InvalidValue, e.to_string()))?;
            let kind = vantage_proto::v1::AlertKind::try_from(a.kind)
                .map(|k| {
                    k.as_str_name()
                        .trim_start_matches("ALERT_KIND_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|_| "unknown".to_owned());
            info!(
                kind,
                subject = a.subject,
                detail = a.detail,
                value = a.value,
                "alert"
            );
            app.metrics
                .alerts
                .get_or_create(&crate::metrics::KindLabel { kind: kind.clone() })
                .inc();
            app.registry.update(node_id, |e| e.alerts += 1);
            if let Some(r) = &app.recorder {
                r.alert(now_ms(), node_id, &kind, &a);
            }
            if app.cluster.is_leader() {
                app.event(
                    node_id,
                    &format!("alert:{kind}"),
                    &format!("{} {}", a.subject, a.detail),
                );
            }
            app.trigger_replan();
            Ok(())
        }
        None => Err(refusal(CloseCode::Undecodable, "empty telemetry frame")),
    }
}

/// Validates the self-description in a Hello.
pub(super) fn check_hello(h: &Hello) -> Result<(), (RejectReason, String)> {
    if h.protocol_version != vantage_proto::PROTOCOL_VERSION {
        return Err((
            RejectReason::VersionUnsupported,
            format!(
                "protocol version {} not supported (this scheduler speaks {})",
                h.protocol_version,
                vantage_proto::PROTOCOL_VERSION
            ),
        ));
    }
    let bad = |m: String| Err((RejectReason::InvalidHello, m));
    if !vantage_shared::auth::valid_node_id(&h.node_id) {
        return bad(format!("invalid node id {:?}", h.node_id));
    }
    if !(h.lat == 0.0 && h.lon == 0.0) && Coord::new(h.lat, h.lon).is_none() {
        return bad(format!("coordinates out of range: {}, {}", h.lat, h.lon));
    }
    if !h.capacity_mbps.is_finite() || h.capacity_mbps <= 0.0 || h.capacity_mbps > 1e7 {
        return bad(format!("capacity_mbps {} out of range", h.capacity_mbps));
    }
    if h.public_url.len() > 512 || h.region.len() > 64 || h.static_origins.len() > 256 {
        return bad("field too long".into());
    }
    for o in &h.static_origins {
        if StreamPattern::parse(&o.pattern).is_err() {
            return bad(format!("invalid origin pattern {:?}", o.pattern));
        }
        if !(o.url.starts_with("http://") || o.url.starts_with("https://")) {
            return bad(format!("origin URL must be http(s): {:?}", o.url));
        }
    }
    Ok(())
}

pub(super) fn node_info(h: &Hello) -> NodeInfo {
    let coord = if h.lat == 0.0 && h.lon == 0.0 {
        None
    } else {
        Coord::new(h.lat, h.lon)
    };
    NodeInfo {
        region: h.region.clone(),
        coord,
        capacity_mbps: h.capacity_mbps,
        public_url: h.public_url.clone(),
        probe_addr: h.probe_addr.clone(),
        agent_version: h.agent_version.clone(),
        static_origins: h
            .static_origins
            .iter()
            .filter_map(|o| {
                StreamPattern::parse(&o.pattern)
                    .ok()
                    .map(|p| (p, o.url.clone()))
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_proto::v1::StaticOrigin;

    fn hello() -> Hello {
        Hello {
            node_id: "edge-fra-1".into(),
            protocol_version: vantage_proto::PROTOCOL_VERSION,
            region: "eu-central".into(),
            lat: 50.11,
            lon: 8.68,
            capacity_mbps: 10_000.0,
            public_url: "http://edge-fra-1:8080".into(),
            probe_addr: "edge-fra-1:7402".into(),
            static_origins: vec![StaticOrigin {
                pattern: "live/*".into(),
                url: "http://origin:8080".into(),
            }],
            ..Hello::default()
        }
    }

    fn rejected(h: &Hello) -> RejectReason {
        match check_hello(h) {
            Ok(()) => panic!("accepted: {h:?}"),
            Err((reason, detail)) => {
                assert!(!detail.is_empty(), "a rejection says why");
                reason
            }
        }
    }

    #[test]
    fn a_well_formed_hello_is_accepted_and_becomes_node_facts() {
        let h = hello();
        assert_eq!(check_hello(&h), Ok(()));
        let info = node_info(&h);
        assert_eq!(info.region, "eu-central");
        assert_eq!(info.capacity_mbps, 10_000.0);
        assert_eq!(info.probe_addr, "edge-fra-1:7402");
        assert!(info.coord.is_some());
        let pattern = StreamPattern::parse("live/*").unwrap();
        assert_eq!(
            info.static_origins.get(&pattern).map(String::as_str),
            Some("http://origin:8080")
        );
    }

    #[test]
    fn zero_coordinates_mean_unknown_not_the_gulf_of_guinea() {
        let h = Hello {
            lat: 0.0,
            lon: 0.0,
            ..hello()
        };
        assert_eq!(check_hello(&h), Ok(()));
        assert_eq!(node_info(&h).coord, None);
    }

    #[test]
    fn another_protocol_version_is_a_version_rejection() {
        let h = Hello {
            protocol_version: vantage_proto::PROTOCOL_VERSION + 1,
            ..hello()
        };
        assert_eq!(rejected(&h), RejectReason::VersionUnsupported);
    }

    #[test]
    fn every_malformed_field_is_an_invalid_hello() {
        let cases: Vec<(&str, Hello)> = vec![
            (
                "empty node id",
                Hello {
                    node_id: String::new(),
                    ..hello()
                },
            ),
            (
                "node id with a slash",
                Hello {
                    node_id: "a/b".into(),
                    ..hello()
                },
            ),
            (
                "latitude out of range",
                Hello {
                    lat: 91.0,
                    ..hello()
                },
            ),
            (
                "longitude NaN",
                Hello {
                    lon: f64::NAN,
                    ..hello()
                },
            ),
            (
                "capacity NaN",
                Hello {
                    capacity_mbps: f64::NAN,
                    ..hello()
                },
            ),
            (
                "capacity zero",
                Hello {
                    capacity_mbps: 0.0,
                    ..hello()
                },
            ),
            (
                "capacity negative",
                Hello {
                    capacity_mbps: -1.0,
                    ..hello()
                },
            ),
            (
                "capacity absurd",
                Hello {
                    capacity_mbps: 1e9,
                    ..hello()
                },
            ),
            (
                "public URL too long",
                Hello {
                    public_url: "x".repeat(513),
                    ..hello()
                },
            ),
            (
                "region too long",
                Hello {
                    region: "r".repeat(65),
                    ..hello()
                },
            ),
            (
                "bad origin pattern",
                Hello {
                    static_origins: vec![StaticOrigin {
                        pattern: String::new(),
                        url: "http://origin:8080".into(),
                    }],
                    ..hello()
                },
            ),
            (
                "origin URL not http(s)",
                Hello {
                    static_origins: vec![StaticOrigin {
                        pattern: "live/*".into(),
                        url: "file:///etc/passwd".into(),
                    }],
                    ..hello()
                },
            ),
        ];
        for (what, h) in cases {
            assert_eq!(rejected(&h), RejectReason::InvalidHello, "{what}");
        }
    }
}
