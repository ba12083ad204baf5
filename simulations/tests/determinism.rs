//! Must show 2: the same scenario and seed give a byte-identical
//! `results.json`, whatever the number of worker threads; another seed
//! gives another result.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::PathBuf;
use vantage_sim::policy::PolicyKind;
use vantage_sim::scenario::Scenario;
use vantage_sim::world::World;

#[test]
fn same_seed_same_bytes() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/pop-failure.toml");
    let mut s = Scenario::load(&path).unwrap();
    // Past the failure at 240 s, a quarter of the viewers.
    s.duration_s = 300.0;
    s.scale_arrivals(0.25);
    let w = World::build(&s).unwrap();
    let policies = [PolicyKind::Random, PolicyKind::PowerOfTwo, PolicyKind::Qoe];
    let a = vantage_sim::compare(&s, &w, &policies, &[7], s.weights(), 1);
    let b = vantage_sim::compare(&s, &w, &policies, &[7], s.weights(), 3);
    let (ja, jb) = (
        vantage_sim::report::results_json(&a).unwrap(),
        vantage_sim::report::results_json(&b).unwrap(),
    );
    assert!(ja.len() > 10_000);
    assert_eq!(ja, jb, "results.json differs between two runs of seed 7");
    assert_eq!(
        vantage_sim::report::html::render(&a),
        vantage_sim::report::html::render(&b)
    );
    let c = vantage_sim::compare(&s, &w, &[PolicyKind::Random], &[8], s.weights(), 1);
    let r7 = &a.policies[0];
    assert_eq!(r7.policy, "random");
    assert_ne!(
        r7, &c.policies[0],
        "another seed must give another workload"
    );
}

#[test]
fn cli_writes_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_vantage-sim");
    let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/degraded-link.toml");
    let mut outs = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("run{i}"));
        let st = std::process::Command::new(bin)
            .args([
                "compare",
                "--policies",
                "geo-nearest,oracle",
                "--seeds",
                "3",
                "--scale",
                "0.2",
            ])
            .arg(&scenario)
            .arg("--out")
            .arg(&out)
            .args(["--threads", if i == 0 { "1" } else { "2" }])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let table = String::from_utf8_lossy(&st.stdout).to_string();
        assert!(
            table.contains("oracle") && table.contains("geo-nearest"),
            "{table}"
        );
        outs.push(std::fs::read(out.join("results.json")).unwrap());
        assert!(out.join("report.html").is_file());
    }
    assert_eq!(outs[0], outs[1]);
}
