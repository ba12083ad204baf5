//! The route table model: what a table says, how the agent looks a stream
//! up in it, and how received tables (whole or deltas) become the table in
//! use.
//!
//! # What a table holds
//!
//! A `RouteTable` tells one agent where to pull each stream from:
//!
//! * `origins` — per origin node (an agent streams are published on), the
//!   upstream candidates of this node for that origin, best first. Every
//!   stream of an origin shares them. There is none for this node itself.
//! * `directory` — which origin node each stream this agent subscribed to
//!   comes from (`"app/stream"` → node id; [`super::interest`]). It may name
//!   this node (that stream is published here and has no route) or no node
//!   (the stream is published nowhere).
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
//!    no route for, or none, falls through.
//! 2. with [`AppliedTable::route_hinted`], when the directory names no
//!    origin: the origin a downstream relay named in its pull
//!    (`X-Vantage-Origin`), so a relay in the middle of a path needs no
//!    subscription round trip before its first pull.
//! 3. the `streams` entries, most specific first (an exact key beats any
//!    pattern, a longer prefix beats a shorter one) ([`Lookup::Stream`]).
//!
//! # Whole tables and deltas
//!
//! The scheduler sends either a whole table (`base_version` 0) or a delta on
//! top of the version the agent holds ([`merge`]: upserts and removals by
//! key). [`AppliedTable::update`] turns either into a whole table and
//! [validates](validate()) it in full before anything uses it; validation is
//! pure, so a bad table or delta never half-applies and the last good table
//! stays in force. The merged whole table is what other modules read, what
//! is persisted and what `/v1/status` and `/v1/routes` show.
//!
//! # Size
//!
//! A table may hold at most `routes_max_entries` entries ([`Entries`]:
//! directory, origins, patterns and probe targets) once a delta is merged;
//! a larger one is refused ([`TableError::TooLarge`]) before it is
//! validated, indexed or persisted, so a runaway plan cannot grow the
//! agent's memory without bound.

mod delta;
mod validate;

#[cfg(test)]
pub(crate) mod tests;

pub use delta::merge;
pub use validate::{Checked, REPORT_INTERVAL_MS, check_entries, validate};

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
    /// A delta on a version other than the one held (`held` 0 = none).
    #[error("delta for version {base}, holding {}", holding(*held))]
    DeltaBase { base: u64, held: u64 },
    #[error("delta version {version} is not newer than its base version {base}")]
    DeltaVersion { version: u64, base: u64 },
    /// A delta where a whole table is required.
    #[error("table is a delta on version {0}, not a whole table")]
    NotWhole(u64),
    #[error("{at}: {reason}")]
    Invalid { at: String, reason: String },
    /// More entries than `routes_max_entries` (after merging a delta).
    #[error(
        "table of {} entries exceeds routes_max_entries {max} \
         (directory {}, origins {}, patterns {}, probe targets {})",
        .entries.total(), .entries.directory, .entries.origins, .entries.patterns,
        .entries.probe_targets
    )]
    TooLarge { entries: Entries, max: usize },
}

/// Default of `routes_max_entries`: the most entries a table may hold.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

/// The entries of a table as counted against `routes_max_entries` (upstream
/// lists are bounded by the planner's backups and not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entries {
    pub directory: usize,
    pub origins: usize,
    /// `streams` entries (static-origin patterns).
    pub patterns: usize,
    pub probe_targets: usize,
}

impl Entries {
    pub fn of(table: &RouteTable) -> Self {
        Self {
            directory: table.directory.len(),
            origins: table.origins.len(),
            patterns: table.streams.len(),
            probe_targets: table.probe_targets.len(),
        }
    }

    pub fn total(&self) -> usize {
        self.directory
            .saturating_add(self.origins)
            .saturating_add(self.patterns)
            .saturating_add(self.probe_targets)
    }
}

fn holding(held: u64) -> String {
    if held == 0 {
        "no table".to_owned()
    } else {
        held.to_string()
    }
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

/// How a received table was sent: the whole table or a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    Full,
    Delta,
}

impl UpdateKind {
    pub fn of(table: &RouteTable) -> UpdateKind {
        if table.base_version == 0 {
            UpdateKind::Full
        } else {
            UpdateKind::Delta
        }
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateKind::Full => "full",
            UpdateKind::Delta => "delta",
        }
    }
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
    /// Validates the whole table `table` for `node_id` and indexes it for
    /// lookups. A delta is refused ([`TableError::NotWhole`]): see
    /// [`AppliedTable::update`].
    pub fn new(
        table: RouteTable,
        node_id: &str,
        source: TableSource,
        now_ms: i64,
    ) -> Result<Self, TableError> {
        if table.base_version != 0 {
            return Err(TableError::NotWhole(table.base_version));
        }
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

    /// The table in use after receiving `received` from the scheduler while
    /// holding `held`: a whole table replaces it, a delta is merged on top
    /// of it ([`merge`]). The result may hold at most `max_entries` entries
    /// ([`check_entries`]). The delta itself is validated (so errors name
    /// its own entries), then the result in full. Pure: on `Err`, `held`
    /// stays the table in use.
    pub fn update(
        held: Option<&AppliedTable>,
        received: RouteTable,
        node_id: &str,
        max_entries: usize,
        now_ms: i64,
    ) -> Result<Self, TableError> {
        if received.base_version == 0 {
            check_entries(&received, max_entries)?;
            return Self::new(received, node_id, TableSource::Scheduler, now_ms);
        }
        let merged = merge(held.map(|t| &t.table), &received)?;
        check_entries(&merged, max_entries)?;
        validate(&received, node_id)?;
        Self::new(merged, node_id, TableSource::Scheduler, now_ms)
    }

    pub fn version(&self) -> u64 {
        self.table.version
    }

    /// Where to pull `key` from (see the module docs for the order).
    pub fn route_for(&self, key: &StreamKey) -> Lookup<'_> {
        self.route_hinted(key, None)
    }

    /// Whether the directory lists `key` (with an origin or with none):
    /// the scheduler answered this node's subscription.
    pub fn lists(&self, key: &StreamKey) -> bool {
        self.directory.contains_key(key)
    }

    /// The origin the directory names for `key` (`None`: not listed, or
    /// published nowhere).
    pub fn origin_of(&self, key: &StreamKey) -> Option<&str> {
        self.directory
            .get(key)
            .and_then(|&i| self.table.directory.get(i))
            .map(|d| d.origin.as_str())
            .filter(|o| !o.is_empty())
    }

    /// [`route_for`](Self::route_for), with `hint` as the origin when the
    /// directory names none (see the module docs).
    pub fn route_hinted(&self, key: &StreamKey, hint: Option<&str>) -> Lookup<'_> {
        if let Some(origin) = self.origin_of(key).or(hint) {
            if origin == self.table.node_id {
                return Lookup::Local;
            }
            let route = self
                .origins
                .get(origin)
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
