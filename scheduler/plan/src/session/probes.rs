//! Probe targets per node (Pingmesh-style): its upstream candidates, its
//! nearest peers, and a few pseudo-random peers that rotate every probe
//! epoch, within `probe_max`.

use super::*;
use crate::graph::NONE;
use rand::{Rng, SeedableRng};
use vantage_proto::v1::ProbeReason;
use vantage_shared::score::rendezvous;

/// Why a peer is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Upstream,
    Nearest,
    Random,
}

impl Reason {
    pub(crate) fn wire(self) -> ProbeReason {
        match self {
            Reason::Upstream => ProbeReason::Upstream,
            Reason::Nearest => ProbeReason::Nearest,
            Reason::Random => ProbeReason::Random,
        }
    }
}

impl PlanSession {
    /// Node `v`'s probe targets: the upstreams of its routes (primaries
    /// first, then first backups, …; by index within a rank), its nearest
    /// peers that can be probed (`probe_nearest` among the nearest
    /// `8 × probe_nearest + 32`), then `probe_random` peers drawn by a
    /// generator seeded with (node, probe epoch) — never itself, a down
    /// node or one without a probe address, at most `probe_max` in all.
    pub(super) fn probe_targets(&self, v: u32) -> Vec<(u32, Reason)> {
        let g = &self.graph;
        let limits = &self.st.limits;
        let mut out: Vec<(u32, Reason)> = Vec::new();
        let push = |out: &mut Vec<(u32, Reason)>, u: u32, reason: Reason| {
            let fits = u != v
                && g.probeable[u as usize]
                && out.len() < limits.probe_max
                && !out.iter().any(|&(x, _)| x == u);
            if fits {
                out.push((u, reason));
            }
            fits
        };
        // Upstreams by position (every route's primary, then every first
        // backup, ...), by index within a position; a position is
        // collected only while there is room left.
        let mut ups: Vec<u32> = Vec::new();
        for pos in 0..=limits.max_backups {
            if out.len() >= limits.probe_max {
                break;
            }
            ups.clear();
            ups.extend(
                self.sources
                    .iter()
                    .filter_map(|s| s.route(v).get(pos))
                    .map(|up| up.node)
                    .filter(|&u| u != NONE),
            );
            ups.sort_unstable();
            ups.dedup();
            for &u in &ups {
                if out.len() >= limits.probe_max {
                    break;
                }
                push(&mut out, u, Reason::Upstream);
            }
        }
        let scan = 8 * limits.probe_nearest + 32;
        let mut near = 0;
        for &u in g.near[v as usize].iter().take(scan) {
            if near >= limits.probe_nearest {
                break;
            }
            if g.probeable[u as usize] && u != v {
                near += 1;
                push(&mut out, u, Reason::Nearest);
            }
        }
        let n = g.len();
        if n > 1 {
            let epoch = self.epoch.unwrap_or(0).to_string();
            let mut rng = rand::rngs::StdRng::seed_from_u64(rendezvous(&g.ids[v as usize], &epoch));
            let mut added = 0;
            for _ in 0..(4 * limits.probe_random + 16) {
                if added >= limits.probe_random {
                    break;
                }
                let u = rng.random_range(0..n) as u32;
                if push(&mut out, u, Reason::Random) {
                    added += 1;
                }
            }
        }
        out
    }
}
