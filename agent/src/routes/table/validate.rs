//! Route-table validation.
//!
//! [`validate`] is pure: it decides ACK (`Ok`) or NACK (`Err` with a message
//! naming the field, e.g. `origins[3].upstreams[0]: …`) without touching any
//! state. It checks every entry a message carries, whole table or delta;
//! the whole-table rules (no `removed_*`, no `probe_targets_changed`) and the
//! delta rule (newer than its base) depend on `base_version`.
//! [`check_entries`] bounds the size of a whole (or merged) table.

use super::{Entries, Route, TableError, invalid};
use crate::addr::{HostPort, parse_http_url};
use std::collections::HashSet;
use vantage_proto::v1::{ProbeReason, RouteTable, Upstream, UpstreamKind};
use vantage_shared::auth::valid_node_id;
use vantage_shared::stream::{StreamKey, StreamPattern};

/// Shortest and longest report interval a table may ask for (0 = unset).
pub const REPORT_INTERVAL_MS: std::ops::RangeInclusive<u32> = 100..=60_000;

/// The parsed keys of a valid table, in table order.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// `streams` entries.
    pub routes: Vec<Route>,
    /// `directory` stream keys.
    pub directory: Vec<StreamKey>,
}

/// Checks every field of `table` (a whole table or a delta) for `node_id`.
pub fn validate(table: &RouteTable, node_id: &str) -> Result<Checked, TableError> {
    check_header(table, node_id)?;
    let routes = check_streams(table, node_id)?;
    check_origins(table, node_id)?;
    let directory = check_directory(table)?;
    check_probe_targets(table, node_id)?;
    check_redirects(table)?;
    Ok(Checked { routes, directory })
}

/// Refuses a whole table (received or merged) of more than `max_entries`
/// entries ([`Entries`]). Cheap: only counts, so it runs before the rest of
/// the validation.
pub fn check_entries(table: &RouteTable, max_entries: usize) -> Result<(), TableError> {
    let entries = Entries::of(table);
    if entries.total() > max_entries {
        return Err(TableError::TooLarge {
            entries,
            max: max_entries,
        });
    }
    Ok(())
}

fn check_header(table: &RouteTable, node_id: &str) -> Result<(), TableError> {
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
    if table.base_version != 0 {
        if table.version <= table.base_version {
            return Err(TableError::DeltaVersion {
                version: table.version,
                base: table.base_version,
            });
        }
        return Ok(());
    }
    for (field, list) in [
        ("removed_origins", &table.removed_origins),
        ("removed_streams", &table.removed_streams),
        ("removed_patterns", &table.removed_patterns),
    ] {
        if !list.is_empty() {
            return Err(invalid(
                field,
                "must be empty in a whole table (base_version 0)",
            ));
        }
    }
    if table.probe_targets_changed {
        return Err(invalid(
            "probe_targets_changed",
            "only a delta may set it (base_version 0)",
        ));
    }
    Ok(())
}

fn check_streams(table: &RouteTable, node_id: &str) -> Result<Vec<Route>, TableError> {
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
        check_upstreams(&at, &s.upstreams, node_id)?;
        routes.push(Route {
            pattern,
            upstreams: s.upstreams.clone(),
        });
    }
    Ok(routes)
}

fn check_origins(table: &RouteTable, node_id: &str) -> Result<(), TableError> {
    let mut seen = HashSet::new();
    for (i, o) in table.origins.iter().enumerate() {
        let at = format!("origins[{i}]");
        if !valid_node_id(&o.origin) {
            return Err(invalid(
                &at,
                format!("invalid origin node id {:?}", o.origin),
            ));
        }
        if o.origin == node_id {
            return Err(invalid(
                &at,
                "origin is this node (its own streams have no route)",
            ));
        }
        if !seen.insert(o.origin.as_str()) {
            return Err(invalid(&at, format!("duplicate origin {:?}", o.origin)));
        }
        if o.upstreams.is_empty() {
            return Err(invalid(
                &at,
                format!("origin {:?} has no upstreams", o.origin),
            ));
        }
        check_upstreams(&at, &o.upstreams, node_id)?;
    }
    Ok(())
}

fn check_directory(table: &RouteTable) -> Result<Vec<StreamKey>, TableError> {
    let mut keys = Vec::with_capacity(table.directory.len());
    let mut seen = HashSet::new();
    for (i, d) in table.directory.iter().enumerate() {
        let at = format!("directory[{i}]");
        let key = StreamKey::parse(&d.stream)
            .map_err(|e| invalid(&at, format!("stream {:?}: {e}", d.stream)))?;
        if !seen.insert(d.stream.as_str()) {
            return Err(invalid(&at, format!("duplicate stream {:?}", d.stream)));
        }
        // An empty origin: subscribed, published nowhere.
        if !d.origin.is_empty() && !valid_node_id(&d.origin) {
            return Err(invalid(
                &at,
                format!("invalid origin node id {:?}", d.origin),
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

fn check_probe_targets(table: &RouteTable, node_id: &str) -> Result<(), TableError> {
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
    Ok(())
}

fn check_redirects(table: &RouteTable) -> Result<(), TableError> {
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
    Ok(())
}

fn check_upstreams(at: &str, upstreams: &[Upstream], node_id: &str) -> Result<(), TableError> {
    for (j, u) in upstreams.iter().enumerate() {
        check_upstream(u, node_id).map_err(|r| invalid(format!("{at}.upstreams[{j}]"), r))?;
    }
    Ok(())
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
