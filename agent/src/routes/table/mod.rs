//! The route table model: what a table says and how the agent looks a
//! stream up in it.
//!
//! # What a table holds
//!
//! A `RouteTable` tells one agent where to pull each stream from:
//!
//! * `origins` — per origin node (an agent streams are published on), the
//!   upstream candidates of this node for that origin, best first. Every
//!   stream of an origin shares them. There is none for this node itself.
//! * `directory` — which origin node each published stream of the cluster
//!   comes from (`"app/stream"` → node id). It may name this node: that
//!   stream is published here and has no route.
//! * `streams` — routes by exact key or by pattern (`"live/*"`), used for
//!   static origins outside the cluster. Tables from before per-origin
//!   routes listed every stream here, and such tables (stored in
//!   `routes.pb` by older agents) still work.
//!
//! # Lookup
//!
//! [`AppliedTable::route_for`] resolves a stream key in this order:
//!
//! 1. the directory's exact entry → its origin: this node means
//!    [`Lookup::Local`]; otherwise that origin's `origins` entry
//!    ([`Lookup::Origin`]). A directory entry naming an origin the table has
//!    no route for falls through to step 2.
//! 2. the `streams` entries, most specific first (an exact key beats any
//!    pattern, a longer prefix beats a shorter one) ([`Lookup::Stream`]).
//!
//! [`validate`] is pure: a bad table never half-applies and the last good
//! table stays in force.

mod validate;

#[cfg(test)]
pub(crate) mod tests;

pub use validate::{Checked, REPORT_INTERVAL_MS, validate};

use serde::Serialize;
use std::collections::HashMap;
use vantage_proto::v1::{RouteTable, Upstream};
use vantage_shared::stream::{StreamKey, StreamPattern};

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

pub(crate) fn invalid(at: impl Into<String>, reason: impl Into<String>) -> TableError {
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

/// One `streams` entry with its parsed pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub pattern: StreamPattern,
    /// Best first; the first is used, the rest are the failover list.
    pub upstreams: Vec<Upstream>,
}

/// What the table says about one stream ([`AppliedTable::route_for`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lookup<'a> {
    /// The directory names this node as the stream's origin: it is
    /// published here and there is nothing to pull.
    Local,
    /// The directory's origin for the stream and this node's route to it.
    Origin {
        origin: &'a str,
        upstreams: &'a [Upstream],
    },
    /// The most specific matching `streams` entry.
    Stream(&'a Route),
    /// Nothing in the table.
    Unrouted,
}

impl<'a> Lookup<'a> {
    /// The upstreams to pull from, best first (`None` for a local or
    /// unrouted stream).
    pub fn upstreams(&self) -> Option<&'a [Upstream]> {
        match *self {
            Lookup::Origin { upstreams, .. } => Some(upstreams),
            Lookup::Stream(route) => Some(&route.upstreams),
            Lookup::Local | Lookup::Unrouted => None,
        }
    }
}

/// A validated whole table as published to the rest of the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedTable {
    /// The whole table: as received, or merged from deltas (and persisted
    /// as such). Its `base_version` is 0 and its `removed_*` lists empty.
    pub table: RouteTable,
    /// `streams` entries, most specific pattern first.
    pub routes: Vec<Route>,
    /// Origin node id → index in `table.origins`.
    origins: HashMap<String, usize>,
    /// Stream key → index in `table.directory`.
    directory: HashMap<StreamKey, usize>,
    pub source: TableSource,
    /// Wall clock when it was applied, unix ms.
    pub applied_at_ms: i64,
}

impl AppliedTable {
    /// Validates `table` for `node_id` and indexes it for lookups.
    pub fn new(
        table: RouteTable,
        node_id: &str,
        source: TableSource,
        now_ms: i64,
    ) -> Result<Self, TableError> {
        let Checked {
            mut routes,
            directory,
        } = validate(&table, node_id)?;
        routes.sort_by_key(|r| std::cmp::Reverse(r.pattern.specificity()));
        let origins = table
            .origins
            .iter()
            .enumerate()
            .map(|(i, o)| (o.origin.clone(), i))
            .collect();
        let directory = directory
            .into_iter()
            .enumerate()
            .map(|(i, key)| (key, i))
            .collect();
        Ok(Self {
            table,
            routes,
            origins,
            directory,
            source,
            applied_at_ms: now_ms,
        })
    }

    pub fn version(&self) -> u64 {
        self.table.version
    }

    /// Where to pull `key` from (see the module docs for the order).
    pub fn route_for(&self, key: &StreamKey) -> Lookup<'_> {
        let entry = self
            .directory
            .get(key)
            .and_then(|&i| self.table.directory.get(i));
        if let Some(entry) = entry {
            if entry.origin == self.table.node_id {
                return Lookup::Local;
            }
            let route = self
                .origins
                .get(entry.origin.as_str())
                .and_then(|&i| self.table.origins.get(i));
            if let Some(route) = route {
                return Lookup::Origin {
                    origin: &route.origin,
                    upstreams: &route.upstreams,
                };
            }
        }
        self.routes
            .iter()
            .find(|r| r.pattern.matches(key))
            .map_or(Lookup::Unrouted, Lookup::Stream)
    }
}
