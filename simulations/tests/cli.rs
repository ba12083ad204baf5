//! The CLI's error paths: bad input is a message and exit code 2, never a
//! panic.

#![allow(clippy::expect_used)] // test helper outside #[test] fns

use std::process::Command;

fn sim(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vantage-sim"))
        .args(args)
        .output()
        .expect("run vantage-sim");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_inputs_exit_2_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let (code, err) = sim(&["compare", missing.to_str().expect("utf-8")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope.toml"), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nduration_s = 10\nbogus = 1\n").expect("write");
    let (code, err) = sim(&["run", bad.to_str().expect("utf-8")]);
    assert_eq!(code, 2);
    assert!(err.contains("bogus") && err.contains("bad.toml:3"), "{err}");

    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/steady-europe.toml");
    let (code, err) = sim(&["run", scenario, "--weights", "latency=-1"]);
    assert_eq!(code, 2);
    assert!(err.contains("latency"), "{err}");
    let (code, err) = sim(&["run", scenario, "--policy", "psychic"]);
    assert_eq!(code, 2);
    assert!(err.contains("psychic"), "{err}");

    // replay of a directory without a trace
    let (code, err) = sim(&["replay", dir.path().to_str().expect("utf-8")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("replay"), "{err}");
}
