//! Planned policies replan at once when a node goes down or comes back, as
//! the scheduler does (its down and join triggers), not at the next period.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::PathBuf;
use vantage_sim::policy::PolicyKind;
use vantage_sim::scenario::Scenario;
use vantage_sim::world::World;

/// `pop-failure` with one periodic plan in the whole run (the period is
/// longer than the run): every further plan is a triggered one.
/// Frankfurt and Amsterdam go down at 240 s, Amsterdam returns at 450 s.
fn plans(kind: PolicyKind) -> u64 {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/pop-failure.toml");
    let mut s = Scenario::load(&path).unwrap();
    s.telemetry.replan_interval_ms = 3_600_000;
    let w = World::build(&s).unwrap();
    vantage_sim::run_policy(&s, &w, kind, 1, s.weights(), false).plans
}

#[test]
fn down_and_return_replan_at_once() {
    // The first plan, one when both PoPs are seen down (their reports
    // stopped in the same tick), one when Amsterdam reports again.
    assert_eq!(plans(PolicyKind::Qoe), 3);
    // The oracle sees the failure itself, at the same instants.
    assert_eq!(plans(PolicyKind::Oracle), 3);
}
