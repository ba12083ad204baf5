//! The planner: pure, deterministic route planning.
//!
//! Input is a snapshot of what agents reported ([`NodeView`]s), the weights
//! and ranges of the QoE formula and the previous plan's choices; output is
//! the content of every node's route table (version and nonce are added by
//! `publish`). No I/O, no clock: `now_ms` is an argument, so the simulator
//! runs exactly this code.
//!
//! For every stream origin `O` (an agent that publishes a stream, or a node
//! configured with a static origin for a pattern) and every node `N`:
//!
//! 1. edge scores `e(U→N)` — the QoE score of `U` serving `N` — come from
//!    [`edge_inputs`]: RTT/loss measured by probes between the two when there
//!    are enough samples, otherwise RTT modelled from distance; `U`'s buffer
//!    health; `U`'s projected utilisation; distance;
//! 2. each node's best path cost from `O` with at most `max_relay_hops`
//!    relays in between (a layered Bellman–Ford over each node's nearest
//!    candidates, LiveNet's bound of two relay hops);
//! 3. `N`'s upstream list: `O` directly or a relay `R` (cost(R) + e(R→N)),
//!    best first, with up to `max_backups` backups. Relays are admitted as
//!    primary only if they precede `N` in the strict order (path cost, id),
//!    so primaries can never form a loop, and a backup never pulls from `N`
//!    through primaries;
//! 4. stability: hysteresis keeps a healthy previous primary unless the new
//!    best is clearly better, and near-equal candidates are spread by a
//!    rendezvous hash of (node, stream) instead of all picking the same one;
//!    backups get the same hysteresis: previous backups that are still
//!    valid keep their place and order unless another candidate is clearly
//!    better, so noise among near-equal backups does not re-version tables;
//! 5. load accounting: every primary assignment adds the stream's bit rate
//!    to the upstream's projected egress, so one plan does not herd all
//!    consumers onto the momentarily best node.
//!
//! Probe targets per node: its upstream candidates, its nearest peers and a
//! few pseudo-random peers rotating every `probe_rotation_ms` (Pingmesh).
//!
//! Code: this file holds the types and [`plan`]; `ctx` the plan's indexed
//! view of the input (dense node indices in id order, edge scores, nearest
//! peers, relay candidates, probe targets) and the load accounting;
//! `previous` the previous plan's choices by index; `routes` the sources
//! and the per-source pipeline: `paths` (path costs), `rank` (ranking,
//! spreading, primary hysteresis), `decide` (primary and backups, backup
//! hysteresis); `output` the route tables and the maps for the next plan.

use rand::{Rng, SeedableRng};
use rstar::RTree;
use rstar::primitives::GeomWithData;
use std::collections::{BTreeMap, HashMap};
use vantage_proto::v1::{
    ProbeReason, ProbeTarget, RouteTable, StreamRoute, Upstream, UpstreamKind,
};
use vantage_shared::place::{Coord, modelled_rtt_ms};
use vantage_shared::score::{Input, Inputs, Ranges, Stability, Weights, rendezvous, score_value};
use vantage_shared::stream::{StreamKey, StreamPattern};

mod ctx;
mod decide;
mod output;
mod paths;
mod previous;
mod rank;
mod routes;
#[cfg(test)]
pub(crate) mod tests;

use ctx::*;
use decide::*;
use output::*;
use paths::*;
use previous::*;
use rank::*;
use routes::*;

/// Liveness of a node as the planner needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Suspect,
    Down,
    Draining,
}

/// A path measurement from a node to a peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathStat {
    pub rtt_ms: f64,
    pub loss: f64,
    pub samples: u32,
}

/// What the planner knows about one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: String,
    pub health: Health,
    pub coord: Option<Coord>,
    pub capacity_mbps: f64,
    pub egress_mbps: f64,
    /// Mean media buffered in this node's GOP caches, if it reported any.
    pub buffer_ms: Option<f64>,
    pub public_url: String,
    pub probe_addr: String,
    /// Measurements by this node towards peers, by peer id.
    pub paths: BTreeMap<String, PathStat>,
    /// Streams published to this node (it is their origin), with bit rate.
    pub published: BTreeMap<StreamKey, f64>,
    /// Static origins configured on this node: pattern → URL template.
    pub static_origins: BTreeMap<StreamPattern, String>,
}

impl NodeView {
    pub fn utilisation(&self) -> f64 {
        if self.capacity_mbps > 0.0 {
            self.egress_mbps / self.capacity_mbps
        } else {
            1.0
        }
    }
}

/// Bounds of a plan.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Backups after the first upstream (at least 2 when they exist).
    pub max_backups: usize,
    /// Relays allowed between an origin and a consumer.
    pub max_relay_hops: u32,
    /// Candidate relays considered per node (nearest by edge score).
    pub relay_candidates: usize,
    /// Probe targets per node: nearest peers, random peers, total bound.
    pub probe_nearest: usize,
    pub probe_random: usize,
    pub probe_max: usize,
    pub probe_rotation_ms: i64,
    /// Path measurements need this many samples to count as measured.
    pub min_path_samples: u32,
    /// Bit rate assumed for a stream whose rate is unknown, kbps.
    pub default_bitrate_kbps: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_backups: 3,
            max_relay_hops: 2,
            relay_candidates: 16,
            probe_nearest: 4,
            probe_random: 4,
            probe_max: 16,
            probe_rotation_ms: 300_000,
            min_path_samples: 5,
            default_bitrate_kbps: 2_500.0,
        }
    }
}

impl Limits {
    /// The probe rotation epoch at `now_ms`: the random probe targets
    /// change when it does.
    pub fn probe_epoch(&self, now_ms: i64) -> i64 {
        now_ms.div_euclid(self.probe_rotation_ms.max(1))
    }
}

/// Everything a plan depends on.
#[derive(Debug, Clone)]
pub struct PlanInput {
    pub now_ms: i64,
    pub weights: Weights,
    pub weights_version: u64,
    pub ranges: Ranges,
    pub stability: Stability,
    pub limits: Limits,
    pub report_interval_ms: u32,
    pub table_ttl_s: u32,
    /// Nodes in any order; the plan does not depend on it.
    pub nodes: Vec<NodeView>,
    /// Primary upstream chosen last time, per (node, stream or pattern).
    pub previous: Primaries,
    /// Cluster key for probe authenticators, copied into every table.
    pub probe_key: Vec<u8>,
    /// Backups chosen last time, in order, per (node, stream or pattern)
    /// (`Plan::backups` of the previous plan; empty = no backup hysteresis).
    pub previous_backups: Backups,
}

/// Primary upstream per (node, route); "" = the node's static origin URL.
pub type Primaries = BTreeMap<(String, String), String>;

/// Backup upstreams in table order per (node, route), routes with at least
/// one backup only; "" = the node's static origin URL.
pub type Backups = BTreeMap<(String, String), Vec<String>>;

/// The result: every node's table content (version and nonce unset).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub tables: BTreeMap<String, RouteTable>,
    /// Primary choice per (node, stream or pattern), for the next plan's hysteresis.
    pub primaries: Primaries,
    /// Backups per (node, stream or pattern), for the next plan's hysteresis.
    pub backups: Backups,
}

/// The probe measurement of a pair the planner ranks on: the consumer's
/// own (`own`) when it has `min_samples`, else the other node's probes of
/// the consumer (`reverse`) when they have; `None` (RTT modelled from
/// distance) otherwise. Used by [`edge_inputs`] and the plan's indexed copy
/// of it alike.
fn measured_path<P: std::borrow::Borrow<PathStat>>(
    own: Option<P>,
    reverse: impl FnOnce() -> Option<P>,
    min_samples: u32,
) -> Option<P> {
    let enough = |p: &P| p.borrow().samples >= min_samples;
    own.filter(enough).or_else(|| reverse().filter(enough))
}

/// Inputs of the QoE formula for `u` serving `n`.
pub fn edge_inputs(
    u: &NodeView,
    n: &NodeView,
    ranges: &Ranges,
    limits: &Limits,
    util: f64,
) -> Inputs {
    let measured = measured_path(
        n.paths.get(&u.id),
        || u.paths.get(&n.id),
        limits.min_path_samples,
    );
    let km = match (u.coord, n.coord) {
        (Some(a), Some(b)) => Input::modelled(a.km_to(&b)),
        _ => Input::default_value((ranges.km.lo + ranges.km.hi) / 2.0),
    };
    let (rtt_ms, loss) = rtt_and_loss(measured, &km);
    let buffer_ms = match u.buffer_ms {
        Some(b) => Input::measured(b),
        None => Input::default_value(ranges.buffer_ms.hi),
    };
    Inputs {
        rtt_ms,
        loss,
        buffer_ms,
        utilisation: Input::measured(util),
        km,
    }
}

/// RTT and loss inputs of an edge: measured when the path has enough
/// samples, else RTT modelled from the distance `km` (and loss 0 by
/// default).
pub(crate) fn rtt_and_loss(measured: Option<&PathStat>, km: &Input) -> (Input, Input) {
    match measured {
        Some(p) => (Input::measured(p.rtt_ms), Input::measured(p.loss)),
        None => (
            if km.source == vantage_shared::score::Source::Modelled {
                Input::modelled(modelled_rtt_ms(km.value))
            } else {
                Input::default_value(modelled_rtt_ms(km.value))
            },
            Input::default_value(0.0),
        ),
    }
}

/// Whether a node may serve others.
pub fn eligible(n: &NodeView, ranges: &Ranges) -> bool {
    n.health == Health::Up && n.utilisation() < ranges.hard_utilisation
}

/// Computes a plan. Deterministic: same input, same output.
pub fn plan(input: &PlanInput) -> Plan {
    plan_with_threads(input, 1)
}

/// [`plan`] with the per-node stages (relay candidates, probe targets)
/// spread over up to `threads` threads for large clusters. The result does
/// not depend on `threads`: each node's share is computed alone and joined
/// in node order. Route planning itself stays sequential (load accounting
/// makes each route depend on the ones before).
pub fn plan_with_threads(input: &PlanInput, threads: usize) -> Plan {
    match plan_cancellable(input, threads, &|| false) {
        Some(plan) => plan,
        None => unreachable!("a plan that is never cancelled always finishes"),
    }
}

/// [`plan_with_threads`] that gives up early, returning `None`, once
/// `cancelled()` says its result is no longer wanted (the scheduler's plan
/// with superseded weights). Checked between stages and between sources,
/// so a cancelled plan stops within one source's work.
pub fn plan_cancellable(
    input: &PlanInput,
    threads: usize,
    cancelled: &dyn Fn() -> bool,
) -> Option<Plan> {
    let mut ctx = Ctx::new(input);
    let n = ctx.nodes.len();
    let sources = collect_sources(&ctx);
    let threads = if n >= PARALLEL_MIN_NODES {
        threads.max(1)
    } else {
        1
    };
    // The previous plan's choices are indexed beside the nearest peers.
    let (peers, previous) = join(
        threads > 1,
        || nearest_peers(&ctx, !sources.is_empty(), threads),
        || Previous::index(&ctx, &sources, threads),
    );
    ctx.set_nearest_peers(peers);
    if cancelled() {
        return None;
    }
    let mut load = Load::new(&ctx);
    let decided = route_sources(&ctx, &mut load, &sources, &previous, threads, cancelled)?;
    if cancelled() {
        return None;
    }
    let (tables, primaries, backups) = build_output(&ctx, &sources, &decided, threads);
    Some(Plan {
        tables,
        primaries,
        backups,
    })
}
