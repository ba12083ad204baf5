//! Must show 4: a scenario written from the schema in docs/simulator.md
//! (here, fresh in the test, in a directory of its own with its own trace
//! file) runs without changes to the code; broken ones fail with a message
//! naming the field and the line, and no input makes the loader panic.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use vantage_sim::policy::PolicyKind;
use vantage_sim::scenario::Scenario;
use vantage_sim::world::World;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// A scenario an operator might write after reading the docs: PoPs by
/// city and by coordinates, two origins, country-code regions, an
/// exponential session length, fixed stream lifetimes, every event kind.
fn fresh(dir: &Path) -> String {
    let d = data();
    format!(
        r#"name = "nordics-evening"
description = "written from docs/simulator.md"
duration_s = 240
seeds = [11]
policies = ["geo-nearest", "least-loaded", "qoe", "oracle"]
tick_ms = 500

[data]
servers = "{servers}"
pings = "{pings}"
cities = "{cities}"
stream_durations = "{durations}"

[telemetry]
report_interval_ms = 1000
delay_ms = 500
noise = 0.2
probes_per_interval = 20
replan_interval_ms = 2000

[network]
access_rtt_ms = 15
base_loss = 0.002

[player]
startup_buffer_ms = 800
hls_share = 0.4

[access]
mobile_share = 0.5
constrained_share = 0.1

[[network.rtt]]
from = "sto"
to = "tll"
rtt_ms = 12

[[network.rtt]]
from = "tll"
to = "FI"
rtt_ms = 9

[qoe.weights]
latency = 0.3
loss = 0.2
buffer = 0.3
load = 0.15
distance = 0.05

[qoe.deadband]
rtt_ms = 3
loss = 0.004

[streams]
count = 8
origins = ["origin-osl", "origin-hel"]
zipf_s = 1.2
bitrate_kbps = 1500
gop_ms = 1000
lifetime = 600

[viewers]
arrivals = [[0, 5.0], [60, 15.0]]
regions = ["NO", "SE", "FI", "DK"]
min_population = 50000
session = {{ distribution = "exponential", mean_s = 90 }}
traces = "my-traces/*.txt"

[[origins]]
id = "origin-osl"
city = "Oslo"
capacity_mbps = 5000

[[origins]]
id = "origin-hel"
lat = 60.17
lon = 24.94
capacity_mbps = 5000

[[pops]]
id = "sto"
city = "Stockholm"
capacity_mbps = 200

[[pops]]
id = "cph"
city = "Copenhagen"
capacity_mbps = 150

[[pops]]
id = "tll"
lat = 59.44
lon = 24.75
capacity_mbps = 100

[[events]]
kind = "pop_down"
at_s = 100
pop = "cph"

[[events]]
kind = "pop_up"
at_s = 160
pop = "cph"

[[events]]
kind = "link_degrade"
at_s = 50
until_s = 150
from = "origin-osl"
to = "sto"
extra_rtt_ms = 30
loss = 0.02

[[events]]
kind = "flash_crowd"
at_s = 120
until_s = 140
multiplier = 3
region = "SE"

[[events]]
kind = "telemetry_loss"
at_s = 180
until_s = 190
pop = "tll"

[[events]]
kind = "telemetry_delay"
at_s = 200
until_s = 220
extra_ms = 1500
ramp_s = 5
"#,
        servers = d.join("servers.csv").display(),
        pings = d.join("pings.csv").display(),
        cities = d.join("cities.csv").display(),
        durations = d.join("ytlive-durations.csv").display(),
    )
    .replace("my-traces", &dir.join("my-traces").display().to_string())
    .replace(&format!("{}/my-traces", dir.display()), "my-traces")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("my-traces")).unwrap();
    // A trace of our own: 1.8 Mbps with a dip, 5 s steps.
    let trace: String = (0..60)
        .map(|i| format!("{}\t{}\n", i * 5, if i % 12 == 0 { 0.6 } else { 1.8 }))
        .collect();
    std::fs::write(dir.path().join("my-traces/home.txt"), trace).unwrap();
    dir
}

#[test]
fn fresh_scenario_runs_without_code_changes() {
    let dir = setup();
    let path = write(dir.path(), "nordics.toml", &fresh(dir.path()));
    let s = Scenario::load(&path).unwrap();
    assert_eq!(
        s.viewers().traces.as_deref(),
        Some("my-traces/*.txt"),
        "relative to the file"
    );
    let w = World::build(&s).unwrap();
    assert_eq!(w.pops.len(), 3);
    assert_eq!(w.traces.len(), 1);
    assert!(
        w.cities
            .iter()
            .all(|c| ["NO", "SE", "FI", "DK"].contains(&c.city.country.as_str()))
    );
    let policies = vantage_sim::policies_of(&s);
    assert_eq!(policies.len(), 4);
    let c = vantage_sim::compare(&s, &w, &policies, &s.seeds, s.weights(), 2);
    let qoe = c.policies.iter().find(|p| p.policy == "qoe").unwrap();
    assert!(qoe.sessions > 300, "{}", vantage_sim::report::table(&c));
    assert!(qoe.joined > 0 && qoe.plans > 50);
    assert_eq!(c.events.len(), 10, "6 events, 4 of them with an end");
    // The CLI takes the same file.
    let out = dir.path().join("out");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_vantage-sim"))
        .arg("compare")
        .arg(&path)
        .arg("--out")
        .arg(&out)
        .args(["--policies", "geo-nearest,qoe"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(out.join("results.json").is_file());
    let _ = PolicyKind::Qoe;
}

/// Loads a broken variant; returns the error message.
fn broken(from: &str, to: &str) -> String {
    let dir = setup();
    let text = fresh(dir.path());
    assert!(
        text.contains(from),
        "test bug: `{from}` not in the scenario"
    );
    let path = write(dir.path(), "broken.toml", &text.replacen(from, to, 1));
    match Scenario::load(&path).and_then(|s| World::build(&s).map(|_| ())) {
        Ok(()) => panic!("`{to}` was accepted"),
        Err(e) => e.to_string(),
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn broken_scenarios_name_field_and_line() {
    let dir = setup();
    let text = fresh(dir.path());

    // A misspelt key: toml names it, with its line.
    let e = broken("capacity_mbps = 200", "capacity = 200");
    assert!(e.contains("capacity"), "{e}");
    assert!(
        e.contains(&format!(":{}:", line_of(&text, "capacity_mbps = 200"))),
        "{e}"
    );

    // A value of the wrong type.
    let e = broken("duration_s = 240", "duration_s = \"four minutes\"");
    assert!(
        e.contains(&format!(":{}:", line_of(&text, "duration_s = 240"))),
        "{e}"
    );

    // Out of range: field path and the line of its table.
    let e = broken("capacity_mbps = 150", "capacity_mbps = -150");
    assert!(e.contains("pops[1].capacity_mbps"), "{e}");
    let table_line = line_of(&text, "id = \"cph\"") - 1;
    assert!(e.contains(&format!(":{table_line}:")), "{e}");

    // A reference to a node that does not exist.
    let e = broken("pop = \"tll\"", "pop = \"tallinn\"");
    assert!(e.contains("events[4].pop") && e.contains("tallinn"), "{e}");

    // An unknown event kind.
    let e = broken("kind = \"pop_up\"", "kind = \"pop_sideways\"");
    assert!(e.contains("pop_sideways"), "{e}");

    // An unknown policy.
    let e = broken("\"oracle\"]", "\"psychic\"]");
    assert!(e.contains("policies[3]") && e.contains("psychic"), "{e}");

    // A city the latency matrix does not have.
    let e = broken("city = \"Copenhagen\"", "city = \"Atlantis\"");
    assert!(e.contains("pops.city") && e.contains("Atlantis"), "{e}");

    // A trace glob that matches nothing.
    let e = broken("my-traces/*.txt", "nothing-here/*.txt");
    assert!(e.contains("viewers.traces"), "{e}");

    // Weights that do not validate.
    let e = broken("latency = 0.3", "latency = -1");
    assert!(e.contains("qoe.weights"), "{e}");

    // A deadband that does not validate.
    let e = broken("rtt_ms = 3", "rtt_ms = -3");
    assert!(e.contains("qoe.deadband") && e.contains("rtt_ms"), "{e}");

    // A deadband key the scheduler does not have.
    let e = broken("loss = 0.004", "losses = 0.004");
    assert!(e.contains("losses"), "{e}");

    // Region codes: unknown, lower case, neither code nor continent.
    let viewers_line = line_of(&text, "[viewers]");
    for (code, want) in [
        ("XQ", "no city of that country code"),
        ("se", "upper case"),
        ("Scandinavia", "neither a continent"),
    ] {
        let e = broken("\"SE\", \"FI\"", &format!("\"{code}\", \"FI\""));
        assert!(e.contains("viewers.regions[1]"), "{e}");
        assert!(e.contains(want), "{e}");
        assert!(e.contains(&format!(":{viewers_line}:")), "{e}");
    }
    let e = broken("region = \"SE\"", "region = \"ZZ\"");
    assert!(e.contains("events[3].region") && e.contains("ZZ"), "{e}");

    // A ramp, a report-loss probability, an RTT override, a ladder.
    let e = broken("ramp_s = 5", "ramp_s = -5");
    assert!(e.contains("events[5].ramp_s"), "{e}");
    let e = broken(
        "replan_interval_ms = 2000",
        "replan_interval_ms = 2000\nloss_probability = 1.5",
    );
    assert!(e.contains("telemetry.loss_probability"), "{e}");
    let e = broken("from = \"sto\"", "from = \"stockholm\"");
    assert!(
        e.contains("network.rtt[0].from") && e.contains("stockholm"),
        "{e}"
    );
    let e = broken("to = \"FI\"", "to = \"Narnia\"");
    assert!(
        e.contains("network.rtt[1].to") && e.contains("Narnia"),
        "{e}"
    );
    let rtt_line = line_of(&text, "to = \"FI\"") - 2;
    assert!(e.contains(&format!(":{rtt_line}:")), "{e}");
    let e = broken("gop_ms = 1000", "gop_ms = 1000\nladder_kbps = [800, 400]");
    assert!(
        e.contains("streams.ladder_kbps[1]") && e.contains("ascending"),
        "{e}"
    );
    let e = broken("mobile_share = 0.5", "mobile_share = 0.95");
    assert!(e.contains("access.constrained_share"), "{e}");
}

/// Data paths default to the bundled set wherever the scenario lives, and
/// an unevenly spaced trace is resampled with a note.
#[test]
fn bundled_data_and_uneven_traces() {
    let dir = setup();
    let text = fresh(dir.path());
    let start = text.find("[data]").unwrap();
    let end = text.find("[telemetry]").unwrap();
    let without_data = format!("{}{}", &text[..start], &text[end..]);
    // 0, 5, 10, 20, 25, … s: one gap of 10 s.
    let uneven: String = (0..40)
        .filter(|i| *i != 3)
        .map(|i| format!("{}\t{}\n", i * 5, 1.0 + f64::from(i % 4)))
        .collect();
    std::fs::write(dir.path().join("my-traces/uneven.txt"), uneven).unwrap();
    let path = write(dir.path(), "nodata.toml", &without_data);
    let s = Scenario::load(&path).unwrap();
    let w = World::build(&s).unwrap();
    assert!(w.cities.len() > 10);
    assert_eq!(w.traces.len(), 2);
    assert_eq!(w.notes.len(), 1, "{:?}", w.notes);
    assert!(w.notes[0].contains("uneven.txt") && w.notes[0].contains("resampled"));
    let t = w.traces.iter().find(|t| t.name == "uneven.txt").unwrap();
    assert_eq!(t.step_s, 5.0);
    assert_eq!(t.mbps.len(), 40, "resampled over the whole span");
    // Decreasing times are refused with the file and line.
    std::fs::write(dir.path().join("my-traces/bad.txt"), "0\t1\n5\t1\n3\t1\n").unwrap();
    let e = World::build(&s).unwrap_err().to_string();
    assert!(e.contains("bad.txt:3") && e.contains("increase"), "{e}");
}

#[test]
fn mangled_scenarios_never_panic() {
    let dir = setup();
    let text = fresh(dir.path());
    let lines: Vec<&str> = text.lines().collect();
    let mut rejected = 0;
    // Every single-line deletion, and every line cut in half.
    for i in 0..lines.len() {
        for variant in 0..2 {
            let mut l = lines.clone();
            let half;
            if variant == 0 {
                l.remove(i);
            } else {
                half = lines[i]
                    .chars()
                    .take(lines[i].chars().count() / 2)
                    .collect::<String>();
                l[i] = &half;
                let t = l.join("\n");
                let p = write(dir.path(), "m.toml", &t);
                if Scenario::load(&p).and_then(|s| World::build(&s)).is_err() {
                    rejected += 1;
                }
                continue;
            }
            let p = write(dir.path(), "m.toml", &l.join("\n"));
            if Scenario::load(&p).and_then(|s| World::build(&s)).is_err() {
                rejected += 1;
            }
        }
    }
    assert!(rejected > lines.len() / 2, "{rejected}");
    for junk in [
        "",
        "\u{0}\u{1}",
        "[[pops]]\n[[pops]]",
        "duration_s = 1e400",
        "name = 3",
    ] {
        let p = write(dir.path(), "j.toml", junk);
        assert!(Scenario::load(&p).is_err());
    }
}
