//! The oracle: sees ground truth (which nodes are really up, true load,
//! true path RTT/loss, true upstream health) and sends each viewer to the
//! live PoP that delivers the stream best — an upper bound, not a policy
//! anyone can run. Upstream trees come from the planning core's session
//! fed with true measurements, without a deadband
//! (`engine::Engine::plan_round`).

use super::Ask;
use crate::network::tcp_mbps;

/// The oracle's cost of serving the viewer from `p` (lower is better).
fn cost(ask: &Ask<'_>, p: usize) -> f64 {
    let t = &ask.truth;
    let bitrate = ask.world.bitrate_mbps;
    let (rtt, loss) = (t.viewer_path)(p);
    let path_ratio = (tcp_mbps(rtt, loss) / bitrate).min(1.5);
    let feed = (t.feed_ratio)(p);
    let u = t.utilisation[p];
    let deliver = path_ratio.min(feed).min(1.0);
    let overload = if u >= 0.9 { 1.0 + u } else { 0.0 };
    (1.0 - deliver) * 10_000.0 + overload * 1_000.0 + rtt
}

/// Steering: move when another live PoP delivers clearly more (or the
/// current one is dead or over 90 %).
pub fn steer(ask: &Ask<'_>, current: usize) -> Option<usize> {
    let best = choose(ask)?;
    let (c, b) = (cost(ask, current), cost(ask, best));
    (best != current && (!ask.truth.up[current] || b + 500.0 < c)).then_some(best)
}

/// The live PoP delivering the most of the top rendition, then with
/// headroom below 90 %, then with the lowest RTT.
pub fn choose(ask: &Ask<'_>) -> Option<usize> {
    let t = &ask.truth;
    let cost = |p: usize| cost(ask, p);
    ask.world
        .pops
        .iter()
        .map(|&p| usize::from(p))
        .filter(|&p| t.up[p] && Some(p as u16) != ask.exclude)
        .min_by(|&a, &b| cost(a).total_cmp(&cost(b)).then(a.cmp(&b)))
}
