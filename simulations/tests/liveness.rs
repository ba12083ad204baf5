//! Liveness counts from when reports arrive, as the scheduler's does: a
//! telemetry delay longer than two report intervals makes the picture
//! late, not every node suspect (counted from when agents generated the
//! reports, no node would be `up` and nobody would be served).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::PathBuf;
use vantage_sim::metrics::Summary;
use vantage_sim::policy::PolicyKind;
use vantage_sim::scenario::Scenario;
use vantage_sim::world::World;

fn run(delay_ms: u32) -> Vec<Summary> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/steady-europe.toml");
    let mut s = Scenario::load(&path).unwrap();
    s.duration_s = 120.0;
    s.scale_arrivals(0.25);
    s.telemetry.delay_ms = delay_ms;
    let w = World::build(&s).unwrap();
    let policies = [PolicyKind::LeastLoaded, PolicyKind::Qoe];
    vantage_sim::compare(&s, &w, &policies, &[1], s.weights(), 2).policies
}

#[test]
fn reports_delayed_past_two_intervals_keep_nodes_up() {
    let (prompt, late) = (run(300), run(2_500));
    for (a, b) in prompt.iter().zip(&late) {
        assert!(a.sessions > 100, "{}", a.policy);
        assert_eq!(a.sessions, b.sessions, "same workload");
        println!(
            "{}: joined {} / {} with prompt reports, {} / {} with late ones",
            a.policy, a.joined, a.sessions, b.joined, b.sessions
        );
        // Viewers are served as with prompt reports, about as fast.
        assert!(
            b.joined + 2 >= a.joined,
            "{}: viewers left unserved",
            b.policy
        );
        assert!(
            b.join_under_1s > a.join_under_1s - 0.05,
            "{}: {} of joins under 1 s with late reports vs {}",
            b.policy,
            b.join_under_1s,
            a.join_under_1s
        );
    }
}
