//! What a plan is made with besides the nodes: the QoE formula's weights
//! and ranges, stability rules, bounds, the deadband and what every table
//! carries.

use crate::inputs::Deadband;
use vantage_shared::score::{Ranges, Stability, Weights};

/// Bounds of a plan (config file section `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Backups after the first upstream (at least 2 when they exist).
    pub max_backups: usize,
    /// Relays allowed between an origin and a consumer.
    pub max_relay_hops: u32,
    /// Candidate relays considered per node (best by edge score among its
    /// nearest `2 ×` this many peers and every peer measured either way).
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

/// Largest `max_backups` a plan accepts.
pub const MAX_BACKUPS: usize = 7;
/// Largest `max_relay_hops` a plan accepts.
pub const MAX_RELAY_HOPS: u32 = 4;

impl Limits {
    /// The probe rotation epoch at `now_ms`: the random probe targets
    /// change when it does.
    pub fn probe_epoch(&self, now_ms: i64) -> i64 {
        now_ms.div_euclid(self.probe_rotation_ms.max(1))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_backups > MAX_BACKUPS {
            return Err(format!("max_backups must be at most {MAX_BACKUPS}"));
        }
        if self.max_relay_hops > MAX_RELAY_HOPS {
            return Err(format!("max_relay_hops must be at most {MAX_RELAY_HOPS}"));
        }
        if self.relay_candidates == 0 || self.relay_candidates > 256 {
            return Err("relay_candidates must be 1 ..= 256".into());
        }
        if self.probe_max > 256 || self.probe_nearest > 256 || self.probe_random > 256 {
            return Err("probe_max, probe_nearest and probe_random must be at most 256".into());
        }
        if self.probe_rotation_ms <= 0 {
            return Err("probe_rotation_ms must be > 0".into());
        }
        if !(self.default_bitrate_kbps.is_finite() && self.default_bitrate_kbps > 0.0) {
            return Err("default_bitrate_kbps must be a finite number > 0".into());
        }
        Ok(())
    }
}

/// Everything a planning session is made with besides the nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSettings {
    pub weights: Weights,
    pub weights_version: u64,
    pub ranges: Ranges,
    pub stability: Stability,
    pub limits: Limits,
    pub deadband: Deadband,
    /// Copied into every table.
    pub report_interval_ms: u32,
    pub table_ttl_s: u32,
    /// Cluster key for probe authenticators, copied into every table.
    pub probe_key: Vec<u8>,
    /// Publish policy (with the keys of publish tokens), copied into every
    /// table; `None` in the simulator and in traces (a secret).
    pub publish: Option<vantage_proto::v1::PublishPolicy>,
    /// Least time between two plans of inputs that moved (triggers such as
    /// a node going down plan at once).
    pub replan_interval_ms: u32,
    /// A whole plan from scratch (the safety net that checks the
    /// incremental state) at least this often; 0 = never.
    pub full_plan_interval_ms: u32,
}

impl Default for PlanSettings {
    fn default() -> Self {
        PlanSettings {
            weights: Weights::default(),
            weights_version: 1,
            ranges: Ranges::default(),
            stability: Stability::default(),
            limits: Limits::default(),
            deadband: Deadband::default(),
            report_interval_ms: 1_000,
            table_ttl_s: 3_600,
            probe_key: Vec::new(),
            publish: None,
            replan_interval_ms: 1_000,
            full_plan_interval_ms: 60_000,
        }
    }
}
