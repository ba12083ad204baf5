//! Planned policies plan at once when a node goes down or comes back, as
//! the scheduler does (its planning session treats both as urgent), not at
//! the next replan period.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::PathBuf;
use vantage_sim::policy::PolicyKind;
use vantage_sim::scenario::Scenario;
use vantage_sim::world::World;

/// Plans in `pop-failure` with a replan period longer than the run, with
/// or without its events (Frankfurt and Amsterdam go down at 240 s,
/// Amsterdam returns at 450 s).
fn plans(kind: PolicyKind, events: bool) -> u64 {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/pop-failure.toml");
    let mut s = Scenario::load(&path).unwrap();
    s.telemetry.replan_interval_ms = 3_600_000;
    if !events {
        s.events.clear();
    }
    let w = World::build(&s).unwrap();
    vantage_sim::run_policy(&s, &w, kind, 1, s.weights(), false).plans
}

#[test]
fn down_and_return_plan_at_once() {
    // Without a period, what plans is the first plan, the session's own
    // checks (a plan from scratch every minute, the probe rotation) — the
    // same with and without the failure — and the triggers: both PoPs seen
    // down (their reports stopped together: one plan), Amsterdam back.
    for kind in [PolicyKind::Qoe, PolicyKind::Oracle] {
        let (with, without) = (plans(kind, true), plans(kind, false));
        println!("{kind}: {with} plans with the failure, {without} without");
        assert!(without >= 10, "{kind}: {without} plans in 600 s");
        assert_eq!(with - without, 2, "{kind}: {with} vs {without}");
    }
}
