//! Must show 5 (issue 6): `report.html` written by `vantage-sim compare`
//! renders in headless Chromium. The test runs the real binary on a small
//! shipped scenario, loads the report in Chromium, reads the DOM after the
//! page's own script ran (it counts the charts that were laid out and the
//! series drawn in them) and takes a screenshot.
//!
//! Chromium comes from Debian's `chromium` package (scripts/test.sh installs
//! it); without it the test prints SKIPPED, and fails under `CI=true`.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vantage_tests::bins;
use vantage_tests::media::tool;

const SIM: &str = "vantage-sim";

fn chromium() -> Option<std::path::PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(n))
                    .find(|f| f.is_file())
            })
        });
    found.or_else(|| tool("chromium", "sim_report_renders_in_chromium"))
}

/// Runs `cmd` with a deadline; returns (success, stdout, stderr). Output
/// goes to files, so a large stdout (a DOM dump) cannot fill a pipe and
/// stall the child.
fn run(cmd: &mut Command, limit: Duration) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.success(),
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

fn chromium_cmd(bin: &Path, profile: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

fn attr(dom: &str, name: &str) -> u64 {
    let key = format!("{name}=\"");
    let start = dom
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in the rendered DOM"))
        + key.len();
    dom[start..]
        .split('"')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number"))
}

#[test]
fn sim_report_renders_in_chromium() {
    let Some(chrome) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let scenario =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../simulations/scenarios/pop-failure.toml");
    let (ok, table, err) = run(
        Command::new(bins::bin(SIM))
            .arg("compare")
            .arg(&scenario)
            .arg("--out")
            .arg(&out)
            .args([
                "--policies",
                "geo-nearest,least-loaded,oracle",
                "--seeds",
                "1",
                "--scale",
                "0.2",
            ]),
        Duration::from_secs(300),
    );
    assert!(ok, "vantage-sim failed: {err}");
    assert!(table.contains("geo-nearest"), "{table}");
    let report = out.join("report.html");
    let url = format!("file://{}", report.display());

    // The DOM after the page's script ran.
    let profile = dir.path().join("profile");
    let (ok, dom, err) = run(
        chromium_cmd(&chrome, &profile).arg("--dump-dom").arg(&url),
        Duration::from_secs(120),
    );
    assert!(ok, "chromium --dump-dom failed: {err}");
    // Two CDFs + one load chart per policy.
    let charts = attr(&dom, "data-charts");
    assert_eq!(charts, 5, "charts in the report");
    assert_eq!(
        attr(&dom, "data-drawn"),
        charts,
        "every chart laid out with a size"
    );
    // 3 policies × 2 CDFs, plus one line per node per load chart (13 nodes).
    assert_eq!(attr(&dom, "data-series"), 3 * 2 + 3 * 13);
    for id in ["join-cdf", "rebuffer-cdf", "load-0", "load-1", "load-2"] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "chart {id} missing");
    }
    assert!(
        dom.contains("pop_down"),
        "events are marked on the load charts"
    );

    // A screenshot: a real PNG of the page, not a blank one.
    let shot = dir.path().join("report.png");
    let (ok, _, err) = run(
        chromium_cmd(&chrome, &profile)
            .arg("--window-size=1400,2000")
            .arg(format!("--screenshot={}", shot.display()))
            .arg(&url),
        Duration::from_secs(120),
    );
    assert!(ok, "chromium --screenshot failed: {err}");
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    // A blank 1400×2000 page compresses to a few KB; charts do not.
    assert!(
        png.len() > 40_000,
        "screenshot suspiciously small: {} bytes",
        png.len()
    );
    if let Ok(keep) = std::env::var("VANTAGE_TEST_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(&shot, keep);
    }
}
