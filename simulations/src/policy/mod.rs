//! Routing policies: which edge a viewer is sent to and which upstream an
//! edge pulls a stream from.
//!
//! Every policy but `oracle` decides from the [`View`] — what agents
//! reported, late and noisy. Baselines pull every stream straight from its
//! origin (a plain pull-through CDN); `qoe` and `oracle` drive a planning
//! session of the planning core ([`planning`], `vantage_plan::PlanSession`)
//! for upstream trees with relays, from the view and from ground truth
//! respectively; `qoe` routes viewers with the core's resolve ([`qoe`]).

pub mod baselines;
pub mod oracle;
pub mod planning;
pub mod qoe;

use crate::telemetry::View;
use crate::world::World;
use rand_chacha::ChaCha8Rng;
use std::fmt;

/// The policies `vantage-sim` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyKind {
    Random,
    RoundRobin,
    GeoNearest,
    LeastLoaded,
    LowestRtt,
    PowerOfTwo,
    Oracle,
    Qoe,
}

impl PolicyKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "random" => Self::Random,
            "round-robin" => Self::RoundRobin,
            "geo-nearest" => Self::GeoNearest,
            "least-loaded" => Self::LeastLoaded,
            "lowest-rtt" => Self::LowestRtt,
            "power-of-two" => Self::PowerOfTwo,
            "oracle" => Self::Oracle,
            "qoe" => Self::Qoe,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::RoundRobin => "round-robin",
            Self::GeoNearest => "geo-nearest",
            Self::LeastLoaded => "least-loaded",
            Self::LowestRtt => "lowest-rtt",
            Self::PowerOfTwo => "power-of-two",
            Self::Oracle => "oracle",
            Self::Qoe => "qoe",
        }
    }

    /// Whether the policy plans relay trees with a planning session.
    pub fn plans_upstreams(self) -> bool {
        matches!(self, Self::Qoe | Self::Oracle)
    }

    /// Whether the policy answers LL-HLS players' Content Steering
    /// reloads (the baselines only place viewers when they join).
    pub fn steers(self) -> bool {
        matches!(self, Self::Qoe | Self::Oracle)
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Ground truth a policy may consult (only the oracle does).
pub struct Truth<'a> {
    pub up: &'a [bool],
    pub utilisation: &'a [f64],
    /// Delivery ratio each edge would give a new viewer of the stream
    /// (upstream health × congestion share), per node.
    pub feed_ratio: &'a dyn Fn(usize) -> f64,
    /// Ground truth RTT (ms) and loss of the viewer path to a node.
    pub viewer_path: &'a dyn Fn(usize) -> (f64, f64),
}

/// Everything a policy sees when a viewer asks for an edge.
pub struct Ask<'a> {
    pub world: &'a World,
    pub view: &'a View,
    pub now_ms: u64,
    pub city: u32,
    pub stream: u32,
    /// A node the viewer just failed to reach (not offered again).
    pub exclude: Option<u16>,
    pub truth: Truth<'a>,
}

impl Ask<'_> {
    /// PoPs the view believes are up, minus the excluded one.
    pub fn candidates(&self) -> impl Iterator<Item = usize> + '_ {
        self.world
            .pops
            .iter()
            .map(|&p| usize::from(p))
            .filter(|&p| Some(p as u16) != self.exclude && self.view.is_up(p))
    }
}

/// Per-run policy state.
pub struct Policy {
    pub kind: PolicyKind,
    pub rr_next: usize,
    /// Viewer routing of `qoe`.
    pub qoe: Option<qoe::Qoe>,
    /// Upstream trees of `qoe` and `oracle`.
    pub planning: Option<planning::Planning>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy").field("kind", &self.kind).finish()
    }
}

impl Policy {
    pub fn new(
        kind: PolicyKind,
        qoe: Option<qoe::Qoe>,
        planning: Option<planning::Planning>,
    ) -> Self {
        Self {
            kind,
            rr_next: 0,
            qoe,
            planning,
        }
    }

    /// The edge for a viewer, or None when no edge is eligible.
    pub fn choose(&mut self, ask: &Ask<'_>, rng: &mut ChaCha8Rng) -> Option<usize> {
        match self.kind {
            PolicyKind::Random => baselines::random(ask, rng),
            PolicyKind::RoundRobin => baselines::round_robin(ask, &mut self.rr_next),
            PolicyKind::GeoNearest => baselines::geo_nearest(ask),
            PolicyKind::LeastLoaded => baselines::least_loaded(ask),
            PolicyKind::LowestRtt => baselines::lowest_rtt(ask),
            PolicyKind::PowerOfTwo => baselines::power_of_two(ask, rng),
            PolicyKind::Oracle => oracle::choose(ask),
            PolicyKind::Qoe => self.qoe.as_mut().and_then(|q| q.choose(ask)),
        }
    }

    /// A Content Steering reload of a viewer on `current`: the edge to
    /// move to, or `None` (or `current`) to stay.
    pub fn steer(&mut self, ask: &Ask<'_>, current: usize) -> Option<usize> {
        match self.kind {
            PolicyKind::Oracle => oracle::steer(ask, current),
            PolicyKind::Qoe => self.qoe.as_mut().and_then(|q| q.steer(ask, current)),
            _ => None,
        }
    }

    /// Upstream candidates of `node` for `stream`, best first (planned
    /// policies), or None: pull from the origin.
    pub fn upstreams(&self, node: usize, stream: usize) -> Option<&[u16]> {
        self.planning
            .as_ref()
            .and_then(|p| p.upstreams(node, stream))
    }

    /// Probe targets of `node` from its latest table.
    pub fn probe_targets(&self, node: usize) -> &[u16] {
        self.planning
            .as_ref()
            .map_or(&[], |p| p.probe_targets(node))
    }
}
