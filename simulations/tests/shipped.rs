//! Must show 1: on every shipped scenario the `qoe` policy beats
//! geo-nearest and least-loaded on rebuffer ratio and on the share of
//! sessions without a stall. Reduced to keep the debug test suite fast: one
//! seed per scenario (the files name two) and plans every 2 s instead of 1 s
//! (the planning core is unoptimised in debug builds). The
//! full runs are in docs/simulator.md.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::PathBuf;
use vantage_sim::policy::PolicyKind;
use vantage_sim::scenario::Scenario;
use vantage_sim::world::World;

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"))
}

fn qoe_beats_baselines(name: &str) {
    let mut s = Scenario::load(&scenario(name)).unwrap();
    s.telemetry.replan_interval_ms = 2000;
    let w = World::build(&s).unwrap();
    let policies = [
        PolicyKind::GeoNearest,
        PolicyKind::LeastLoaded,
        PolicyKind::Qoe,
    ];
    let c = vantage_sim::compare(&s, &w, &policies, &[1], s.weights(), 3);
    println!("{}", vantage_sim::report::table(&c));
    let get = |p: PolicyKind| {
        c.policies
            .iter()
            .find(|x| x.policy == p.name())
            .unwrap()
            .clone()
    };
    let qoe = get(PolicyKind::Qoe);
    assert!(qoe.sessions > 1000, "{name}: too few sessions");
    for other in [get(PolicyKind::GeoNearest), get(PolicyKind::LeastLoaded)] {
        assert_eq!(
            qoe.sessions, other.sessions,
            "same workload for every policy"
        );
        assert!(
            qoe.rebuffer_ratio < other.rebuffer_ratio,
            "{name}: qoe rebuffer {} !< {} {}",
            qoe.rebuffer_ratio,
            other.policy,
            other.rebuffer_ratio
        );
        assert!(
            qoe.zero_stall_share > other.zero_stall_share,
            "{name}: qoe zero-stall {} !> {} {}",
            qoe.zero_stall_share,
            other.policy,
            other.zero_stall_share
        );
    }
}

#[test]
fn steady_europe() {
    qoe_beats_baselines("steady-europe");
}

#[test]
fn flash_crowd() {
    qoe_beats_baselines("flash-crowd");
}

#[test]
fn pop_failure() {
    qoe_beats_baselines("pop-failure");
}

#[test]
fn degraded_link() {
    qoe_beats_baselines("degraded-link");
}

#[test]
fn follow_the_sun() {
    qoe_beats_baselines("follow-the-sun");
}
