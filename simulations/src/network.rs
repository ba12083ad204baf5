//! The ground-truth network model (docs/simulator.md, "Network model").
//!
//! - **Congestion at a node** with utilisation `u` = egress demand /
//!   capacity: queueing delay `service_ms · u/(1−u)` (M/M/1 mean queue
//!   length times the service time; capped), loss 0 below the knee and
//!   growing quadratically to `loss_at_capacity` at `u = 1`, and above
//!   capacity every flow gets the fair share `1/u` of its demand.
//! - **TCP throughput** of one HTTP-FLV connection over a path with RTT
//!   and loss `p`: the Mathis et al. bound `1.22 · MSS / (RTT · √p)`
//!   (MSS 1460 B) — why distance and loss hurt even with spare capacity.
//! - **Path loss**: `base_loss + loss_per_1000km · km/1000` (longer paths
//!   cross more networks) for viewer paths, `relay_base_loss +
//!   relay_loss_per_1000km · km/1000` between data centres (relay hops and
//!   probes), plus congestion and scenario degradations.

use crate::scenario::NetworkSpec;

/// MSS in megabits, for the Mathis bound.
const MSS_MBIT: f64 = 1460.0 * 8.0 / 1e6;

/// Congestion state of a node for one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Congestion {
    pub utilisation: f64,
    pub queue_ms: f64,
    pub loss: f64,
    /// Share of its demand every flow through this node gets (≤ 1).
    pub share: f64,
}

pub fn congestion(spec: &NetworkSpec, egress_mbps: f64, capacity_mbps: f64) -> Congestion {
    let u = if capacity_mbps > 0.0 {
        egress_mbps / capacity_mbps
    } else {
        f64::INFINITY
    };
    let rho = u.min(0.999);
    let queue_ms = (spec.service_ms * rho / (1.0 - rho)).min(spec.max_queue_ms);
    let knee = spec.congestion_knee;
    let loss = if u <= knee {
        0.0
    } else {
        let x = ((u - knee) / (1.0 - knee)).min(2.0);
        spec.loss_at_capacity * x * x
    };
    Congestion {
        utilisation: u,
        queue_ms,
        loss: loss.min(0.5),
        share: if u > 1.0 { 1.0 / u } else { 1.0 },
    }
}

/// Loss of an uncongested path `km` long.
pub fn path_loss(spec: &NetworkSpec, km: f64) -> f64 {
    spec.base_loss + spec.loss_per_1000km * km / 1000.0
}

/// Loss of an uncongested path between two data centres (relay hops,
/// probes) `km` long.
pub fn relay_loss(spec: &NetworkSpec, km: f64) -> f64 {
    spec.relay_base_loss + spec.relay_loss_per_1000km * km / 1000.0
}

/// Mathis et al. TCP throughput bound, Mbps.
pub fn tcp_mbps(rtt_ms: f64, loss: f64) -> f64 {
    let rtt_s = (rtt_ms / 1000.0).max(1e-4);
    let p = loss.max(1e-7);
    1.22 * MSS_MBIT / (rtt_s * p.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congestion_grows_with_load() {
        let s = NetworkSpec::default();
        let a = congestion(&s, 500.0, 1000.0);
        let b = congestion(&s, 900.0, 1000.0);
        let c = congestion(&s, 2000.0, 1000.0);
        assert_eq!(a.loss, 0.0);
        assert!(b.loss > 0.0 && b.queue_ms > a.queue_ms);
        assert!((c.share - 0.5).abs() < 1e-9);
        assert!(c.queue_ms <= s.max_queue_ms);
    }

    #[test]
    fn mathis_falls_with_rtt_and_loss() {
        assert!(tcp_mbps(20.0, 0.001) > tcp_mbps(200.0, 0.001));
        assert!(tcp_mbps(50.0, 0.0001) > tcp_mbps(50.0, 0.01));
        // 100 ms, 1 % loss: ≈ 1.4 Mbps.
        let x = tcp_mbps(100.0, 0.01);
        assert!((1.2..1.6).contains(&x), "{x}");
    }
}
