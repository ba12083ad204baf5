//! One node's entry: what its agent said in its Hello and last reports,
//! its liveness state, the inputs its last plan saw and the current
//! minute's roll-up.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use vantage_plan::inputs::Planned;
use vantage_plan::liveness::{self, Liveness};
use vantage_plan::smoothing::{PathReport, Smoother, load_mbps};
use vantage_plan::{Health, NodeView};
use vantage_proto::v1::{
    ControlPath, GroupQoe, Load, PathMeasurement, Report, StreamRole, StreamState,
};
use vantage_shared::close::CloseCode;
use vantage_shared::place::Coord;
use vantage_shared::stream::{StreamKey, StreamPattern};

/// Liveness state shown to operators: the planner's [`Health`].
pub use vantage_plan::Health as NodeState;

/// Static facts about a node, from its Hello (or the store at startup).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeInfo {
    pub region: String,
    pub coord: Option<Coord>,
    pub capacity_mbps: f64,
    pub public_url: String,
    pub probe_addr: String,
    pub agent_version: String,
    pub static_origins: BTreeMap<StreamPattern, String>,
}

/// A node's live telemetry connection, as the registry needs it (the
/// ingest implements it): an id, and a way to close it with a code.
pub trait Connection: Send + Sync + std::fmt::Debug {
    /// Identifies the connection (unique for the scheduler's lifetime).
    fn id(&self) -> u64;
    /// Closes the connection with `code`; returns at once.
    fn close(&self, code: CloseCode, reason: &str);
}

/// Live session of a connected agent.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub started_ms: i64,
    pub remote: String,
    /// Closing this drops the agent (used when a newer session supersedes it).
    pub connection: Option<Arc<dyn Connection>>,
}

#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub id: String,
    pub info: NodeInfo,
    pub credential_hash: Option<String>,
    pub state: NodeState,
    /// Operator or agent asked to drain; survives reconnects.
    pub draining: bool,
    pub session: Option<Session>,
    pub enrolled_at_ms: i64,
    /// Scheduler clock when the last report arrived.
    pub last_report_ms: Option<i64>,
    /// Scheduler clock when this state began (for "down since").
    pub state_since_ms: i64,
    pub reports: u64,
    pub last_seq: u64,
    pub load: Option<Load>,
    pub paths: BTreeMap<String, PathMeasurement>,
    pub streams: Vec<StreamState>,
    /// When this node was first seen publishing each stream it originates
    /// (scheduler clock; cleared when it goes down): the planner keeps the
    /// first publisher of a stream as its origin.
    pub origin_since: BTreeMap<String, i64>,
    pub groups: Vec<GroupQoe>,
    pub control_path: Option<ControlPath>,
    pub route_version_in_use: u64,
    pub alerts: u64,
    /// Per peer: RTT and loss smoothed over reports, for the planner.
    /// Reports smoothed into planner inputs (`vantage_plan::smoothing`,
    /// the simulator's too): utilisation, per-peer RTT and loss, peers no
    /// longer probed kept for a while.
    pub smoother: Smoother<String>,
    /// Bumped by every change made through the registry; the planning loop
    /// offers the node's inputs again when it moved since `offered`.
    pub touched: u64,
    pub offered: u64,
    /// Aggregate of the current minute, flushed to the store as a roll-up.
    pub rollup: RollupAcc,
}

/// Per-minute aggregate of a node's reports (DESIGN §9 roll-ups).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RollupAcc {
    pub minute_ms: i64,
    pub reports: u32,
    pub cpu_sum: f64,
    pub utilisation_sum: f64,
    pub egress_sum: f64,
    pub viewers_max: u32,
}

impl RollupAcc {
    /// Adds a report at `now_ms`; returns the finished previous minute when
    /// this report starts a new one.
    pub fn add(
        &mut self,
        now_ms: i64,
        cpu: f64,
        util: f64,
        egress: f64,
        viewers: u32,
    ) -> Option<RollupAcc> {
        let minute = now_ms - now_ms.rem_euclid(60_000);
        let done = (self.reports > 0 && minute != self.minute_ms).then(|| std::mem::take(self));
        self.minute_ms = minute;
        self.reports += 1;
        self.cpu_sum += cpu;
        self.utilisation_sum += util;
        self.egress_sum += egress;
        self.viewers_max = self.viewers_max.max(viewers);
        done
    }

    pub fn to_store(&self, node_id: &str) -> crate::store::Rollup {
        let n = f64::from(self.reports.max(1));
        crate::store::Rollup {
            node_id: node_id.to_owned(),
            minute_ms: self.minute_ms,
            reports: self.reports,
            cpu_avg: self.cpu_sum / n,
            utilisation_avg: self.utilisation_sum / n,
            egress_mbps_avg: self.egress_sum / n,
            viewers_max: self.viewers_max,
        }
    }
}

impl NodeEntry {
    pub fn new(id: String, info: NodeInfo, now_ms: i64) -> Self {
        Self {
            id,
            info,
            credential_hash: None,
            state: NodeState::Down,
            draining: false,
            session: None,
            enrolled_at_ms: now_ms,
            last_report_ms: None,
            state_since_ms: now_ms,
            reports: 0,
            last_seq: 0,
            load: None,
            paths: BTreeMap::new(),
            streams: Vec::new(),
            origin_since: BTreeMap::new(),
            groups: Vec::new(),
            control_path: None,
            route_version_in_use: 0,
            alerts: 0,
            smoother: Smoother::new(),
            touched: 1,
            offered: 0,
            rollup: RollupAcc::default(),
        }
    }

    pub fn utilisation(&self) -> f64 {
        match &self.load {
            Some(l) if self.info.capacity_mbps > 0.0 => {
                load_mbps(l, self.info.capacity_mbps) / self.info.capacity_mbps
            }
            _ => 0.0,
        }
    }

    /// Applies a validated report. Returns a finished per-minute roll-up
    /// when this report starts a new minute, and whether the streams this
    /// node originates changed (a new or ended stream: planned at once).
    pub fn apply_report(&mut self, r: Report, now_ms: i64) -> (Option<RollupAcc>, bool) {
        self.reports += 1;
        self.last_seq = r.seq;
        self.last_report_ms = Some(now_ms);
        self.route_version_in_use = r.route_version;
        if let Some(l) = r.load {
            self.smoother.observe_load(
                load_mbps(&l, self.info.capacity_mbps),
                self.info.capacity_mbps,
            );
            self.load = Some(l);
        }
        self.smoother.observe_paths(
            r.paths
                .iter()
                .map(|p| (p.target_node_id.clone(), PathReport::from(p))),
            now_ms,
        );
        // In place: the peers rarely change between reports, so this moves
        // the new values in without cloning ids or rebuilding the map.
        self.paths
            .retain(|k, _| r.paths.iter().any(|p| &p.target_node_id == k));
        for p in r.paths {
            match self.paths.get_mut(&p.target_node_id) {
                Some(v) => *v = p,
                None => {
                    self.paths.insert(p.target_node_id.clone(), p);
                }
            }
        }
        let origins = |streams: &[StreamState]| -> Vec<String> {
            let mut keys: Vec<String> = streams
                .iter()
                .filter(|s| s.role == StreamRole::Origin as i32)
                .map(|s| s.key.clone())
                .collect();
            keys.sort_unstable();
            keys
        };
        let now_origins = origins(&r.streams);
        let streams_changed = origins(&self.streams) != now_origins;
        if streams_changed {
            self.origin_since
                .retain(|k, _| now_origins.binary_search(k).is_ok());
            for k in now_origins {
                self.origin_since.entry(k).or_insert(now_ms);
            }
        }
        self.streams = r.streams;
        self.groups = r.groups;
        if r.control_path.is_some() {
            self.control_path = r.control_path;
        }
        let (cpu, egress, viewers) = self
            .load
            .as_ref()
            .map(|l| (l.cpu, l.egress_mbps, l.viewers))
            .unwrap_or_default();
        let util = self.utilisation();
        (
            self.rollup.add(now_ms, cpu, util, egress, viewers),
            streams_changed,
        )
    }

    /// The state this node should be in at `now_ms` given the report
    /// interval: suspect after 2 missed intervals, down after 3.
    ///
    /// Unless the scheduler itself is losing reports: a node that is not
    /// down yet and still has its connection is held short of down (at
    /// suspect, or draining) while `local_loss()` says the scheduler's
    /// socket dropped datagrams lately, for at most [`held_down_after_ms`].
    /// (A dead agent's connection ends at the QUIC idle timeout, and then
    /// nothing is held.) `local_loss` is asked only for such a node.
    pub fn evaluate(
        &self,
        now_ms: i64,
        interval_ms: i64,
        local_loss: &mut dyn FnMut() -> bool,
    ) -> NodeState {
        let node = Liveness {
            last_report_ms: self.last_report_ms,
            state: self.state,
            connected: self.session.is_some(),
            draining: self.draining,
        };
        liveness::evaluate(
            &node,
            now_ms,
            interval_ms,
            held_down_after_ms(interval_ms),
            local_loss,
        )
    }

    /// What the store keeps of this node.
    pub fn to_record(&self) -> crate::store::NodeRecord {
        crate::store::NodeRecord {
            id: self.id.clone(),
            region: self.info.region.clone(),
            lat: self.info.coord.map(|c| c.lat).unwrap_or(0.0),
            lon: self.info.coord.map(|c| c.lon).unwrap_or(0.0),
            capacity_mbps: self.info.capacity_mbps,
            public_url: self.info.public_url.clone(),
            probe_addr: self.info.probe_addr.clone(),
            credential_hash: self.credential_hash.clone(),
            enrolled_at_ms: self.enrolled_at_ms,
            last_seen_ms: self.last_report_ms.unwrap_or(self.enrolled_at_ms),
            drained: self.draining,
        }
    }

    /// What the planner would see of this node from the latest report
    /// alone (API, dashboard; the planner itself is offered [`Self::fresh_view`]).
    pub fn view(&self) -> NodeView {
        self.view_of(self.inputs(false))
    }

    /// What the planner is offered: the latest inputs with path RTT, loss
    /// and egress smoothed (the planning session holds them inside its
    /// deadband).
    pub fn fresh_view(&self) -> NodeView {
        self.view_of(self.inputs(true))
    }

    /// Latest inputs; path RTT, loss and egress smoothed when `smoothed`.
    fn inputs(&self, smoothed: bool) -> Planned {
        let health: Health = self.state;
        let buffers: Vec<f64> = self
            .streams
            .iter()
            .map(|s| s.gop_cache_ms)
            .filter(|b| b.is_finite())
            .collect();
        let buffer_ms =
            (!buffers.is_empty()).then(|| buffers.iter().sum::<f64>() / buffers.len() as f64);
        let published = self
            .streams
            .iter()
            .filter(|s| s.role == StreamRole::Origin as i32)
            .filter_map(|s| StreamKey::parse(&s.key).ok().map(|k| (k, s.bitrate_kbps)))
            .collect();
        let published_since = self
            .origin_since
            .iter()
            .filter_map(|(k, t)| StreamKey::parse(k).ok().map(|k| (k, *t)))
            .collect();
        let (paths, egress_mbps) = if smoothed {
            (
                self.smoother
                    .paths()
                    .map(|(k, p)| (k.clone(), p.stat(true)))
                    .collect(),
                self.smoother.egress_mbps(self.info.capacity_mbps),
            )
        } else {
            (
                self.paths
                    .iter()
                    .map(|(k, p)| (k.clone(), PathReport::from(p).stat_now()))
                    .collect(),
                self.load
                    .as_ref()
                    .map(|l| load_mbps(l, self.info.capacity_mbps))
                    .unwrap_or(0.0),
            )
        };
        Planned {
            health,
            egress_mbps,
            buffer_ms,
            paths,
            published,
            published_since,
        }
    }

    fn view_of(&self, inputs: Planned) -> NodeView {
        NodeView {
            id: self.id.clone(),
            health: inputs.health,
            coord: self.info.coord,
            capacity_mbps: self.info.capacity_mbps,
            egress_mbps: inputs.egress_mbps,
            buffer_ms: inputs.buffer_ms,
            public_url: self.info.public_url.clone(),
            probe_addr: self.info.probe_addr.clone(),
            paths: inputs.paths,
            published: inputs.published,
            published_since: inputs.published_since,
            static_origins: self.info.static_origins.clone(),
        }
    }
}

/// While the scheduler is dropping telemetry datagrams, a node that
/// still has its connection goes down only after this long without a
/// report (see [`liveness::held_down_after_ms`]).
pub fn held_down_after_ms(interval_ms: i64) -> i64 {
    let idle_ms =
        i64::try_from(crate::config::TELEMETRY_IDLE_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
    liveness::held_down_after_ms(interval_ms, idle_ms)
}
