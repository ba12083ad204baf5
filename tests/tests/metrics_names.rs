//! Issue 7, Must show 3: every metric named in the Grafana dashboard
//! (`deploy/monitoring/grafana/vantage-dashboard.json`), the alert rules
//! (`deploy/monitoring/alerts.yml`) and the metrics reference
//! (`docs/metrics.md`) exists in the `/metrics` output of a running
//! scheduler or agent.
//!
//! The cluster: a scheduler, agent `origin` with a synthetic publisher of
//! `live/x`, agent `edge` with a viewer of `live/x` pulled from `origin`, so
//! the relay's per-stream and pull metrics exist. Labelled families are only
//! exported once a label set exists, so the test also causes the events
//! behind them: an agent with a wrong enrollment token (telemetry and route
//! rejections, `telemetry_closed_total`), a malformed publish, a viewer that
//! leaves, a publisher restart (upstream failover), an alert, a resolve.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vantage_tests::synth::{FlvViewer, SynthPublisher};
use vantage_tests::{Agent, Scheduler, eventually};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `vantage_(scheduler|agent)_…` identifier in `text`.
fn full_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("vantage_") {
        let start = i + pos;
        let before_ok = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        if before_ok
            && (name.starts_with("vantage_scheduler_") || name.starts_with("vantage_agent_"))
            && !name.ends_with('_')
        {
            out.insert(name.to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

/// Names in the metrics reference: full names anywhere, plus the first
/// column of each table (relative to the section's prefix).
fn doc_names(doc: &str) -> BTreeSet<String> {
    let mut out = full_names(doc);
    let mut prefix = None;
    for line in doc.lines() {
        if line.starts_with("## ") {
            prefix = if line.contains("vantage_scheduler_") {
                Some("vantage_scheduler_")
            } else if line.contains("vantage_agent_") {
                Some("vantage_agent_")
            } else {
                None
            };
            continue;
        }
        let (Some(prefix), Some(cells)) = (prefix, line.strip_prefix('|')) else {
            continue;
        };
        let first = cells.split('|').next().unwrap_or_default();
        for part in first.split('`').skip(1).step_by(2) {
            let part = part.trim();
            if !part.is_empty()
                && part != "metric"
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                out.insert(format!("{prefix}{part}"));
            }
        }
    }
    out
}

/// Sample names and declared families of a Prometheus/OpenMetrics text.
struct Exposition {
    samples: BTreeSet<String>,
    /// `# TYPE name kind`
    families: Vec<(String, String)>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut samples = BTreeSet::new();
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(k)) = (it.next(), it.next()) {
                    families.push((n.to_owned(), k.to_owned()));
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_owned());
            }
        }
        Exposition { samples, families }
    }

    /// Exported as a sample, or declared as a family that would export it.
    fn has(&self, name: &str) -> bool {
        if self.samples.contains(name) {
            return true;
        }
        self.families.iter().any(|(family, kind)| {
            let f = family.as_str();
            match kind.as_str() {
                "counter" => name == f || name.strip_suffix("_total") == Some(f),
                "histogram" => {
                    name == f
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(f))
                }
                _ => name == f,
            }
        })
    }

    fn sampled(&self, name: &str) -> bool {
        self.samples.contains(name)
            || ["_bucket", "_total"]
                .iter()
                .any(|s| self.samples.contains(&format!("{name}{s}")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_and_dashboard_metrics_exist() {
    let dashboard = read("deploy/monitoring/grafana/vantage-dashboard.json");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let mut exprs = String::new();
    for p in parsed["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push_str(t["expr"].as_str().unwrap_or_default());
            exprs.push('\n');
        }
    }
    let dash_names = full_names(&exprs);
    let alert_names = full_names(&read("deploy/monitoring/alerts.yml"));
    let doc_names = doc_names(&read("docs/metrics.md"));
    assert!(dash_names.len() >= 30, "dashboard names: {dash_names:?}");
    assert!(doc_names.len() >= 60, "docs names: {doc_names:?}");

    // Recording metrics exist when the scheduler records (`--record DIR`).
    let record = tempfile::tempdir().expect("tempdir");
    let mut builder = Scheduler::builder().report_interval_ms(250);
    if help(vantage_tests::bins::SCHEDULER).contains("--record ") {
        builder = builder
            .arg("--record")
            .arg(record.path().display().to_string());
    }
    let s = builder.start().await;
    let origin = Agent::builder("origin", &s).start().await;
    let edge = Agent::builder("edge", &s)
        .origin("live/*", &origin.media_url())
        .start()
        .await;
    vantage_tests::cluster::wait_all_up(&s, &["origin", "edge"], Duration::from_secs(20)).await;
    let publisher = SynthPublisher::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], origin.ports().http)),
        "/live/x.flv",
        300,
    );
    let viewer = FlvViewer::start_live(
        &format!("{}/live/x.flv?lat=50.1&lon=8.7", edge.media_url()),
        Duration::from_secs(20),
    )
    .await;
    if let Err(seen) = viewer.wait_bytes(32 * 1024, Duration::from_secs(20)).await {
        panic!("viewer got no media: {seen:?}");
    }
    // Events behind the labelled families.
    let http = reqwest::Client::new();
    let _ = http
        .post(format!("{}/v1/cmcd", edge.media_url()))
        .body("bl=1200,sid=\"s1\"")
        .send()
        .await;
    let _ = http.get(format!("{}/nope", edge.media_url())).send().await;
    let bad = http
        .post(format!("{}/live/bad.flv", edge.media_url()))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(bad.ok(), Some(400), "malformed publish refused");
    let leaving = FlvViewer::start(&format!("{}/live/x.flv", edge.media_url()));
    let _ = leaving.wait_bytes(1, Duration::from_secs(10)).await;
    drop(leaving);
    publisher.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _publisher = SynthPublisher::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], origin.ports().http)),
        "/live/x.flv",
        300,
    );
    // RTMP: a garbage handshake, then a real play of live/x; LL-HLS: a playlist.
    let rtmp = std::net::SocketAddr::from(([127, 0, 0, 1], edge.ports().rtmp));
    if let Ok(mut garbage) = tokio::net::TcpStream::connect(rtmp).await {
        use tokio::io::AsyncWriteExt;
        let _ = garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
    }
    let mut player = vantage_tests::rtmp::RtmpClient::connect(rtmp)
        .await
        .expect("RTMP handshake");
    player.connect_app("live").await.expect("RTMP connect");
    player
        .command(
            "play",
            2.0,
            vantage_shared::flv::amf::Value::Null,
            vec![vantage_shared::rtmp::message::string("x")],
            1,
        )
        .await
        .expect("RTMP play");
    let started = player
        .wait_command(|c| c.name == "onStatus", Duration::from_secs(10))
        .await
        .expect("RTMP play status");
    assert_eq!(
        vantage_tests::rtmp::status_code(&started),
        "NetStream.Play.Reset"
    );
    let (status, _) = http
        .get(format!("{}/live/x/index.m3u8", edge.media_url()))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap_or((0, ()));
    assert_eq!(status, 200, "LL-HLS playlist");
    let intruder = Intruder::start(&s);
    // A viewer placement (the resolve API's metrics).
    let _ = s.get("/v1/resolve?stream=live/x&lat=50.1&lon=8.7").await;
    let (status, _) = s.put_raw("/v1/weights", "{}").await;
    assert_eq!(status, 400, "empty weight change refused");
    // Per-stream gauges and report-driven values settle within a report.
    let (sched, agents) = eventually(
        Duration::from_secs(10),
        "relay stream metrics exported",
        || async {
            let sched = Exposition::parse(&s.metrics().await);
            let mut text = origin.metrics().await;
            text.push_str(&edge.metrics().await);
            text.push_str(&intruder.metrics().await);
            let agents = Exposition::parse(&text);
            let want = [
                (&agents, "vantage_agent_relay_stream_viewers"),
                (&agents, "vantage_agent_relay_pulls_active"),
                (&agents, "vantage_agent_relay_failovers_total"),
                (&agents, "vantage_agent_relay_viewers_left_total"),
                (&agents, "vantage_agent_relay_malformed_flv_total"),
                (&agents, "vantage_agent_telemetry_closed_total"),
                (&sched, "vantage_scheduler_plan_duration_seconds"),
                (&sched, "vantage_scheduler_alerts_total"),
                (&sched, "vantage_scheduler_telemetry_rejected_total"),
                (&sched, "vantage_scheduler_routes_rejected_total"),
                (&sched, "vantage_scheduler_http_errors_total"),
            ];
            let missing: Vec<&str> = want
                .iter()
                .filter(|(e, n)| !e.sampled(n))
                .map(|(_, n)| *n)
                .collect();
            if missing.is_empty() {
                Ok((sched, agents))
            } else {
                Err(format!("no samples yet of {missing:?}"))
            }
        },
    )
    .await;

    let mut missing = Vec::new();
    let mut declared_only = Vec::new();
    for (source, names) in [
        ("dashboard", &dash_names),
        ("alerts.yml", &alert_names),
        ("docs/metrics.md", &doc_names),
    ] {
        for n in names {
            let exp = if n.starts_with("vantage_scheduler_") {
                &sched
            } else {
                &agents
            };
            if !exp.has(n) {
                missing.push(format!("{source}: {n}"));
            } else if !exp.sampled(n) && !exp.samples.contains(n.as_str()) {
                declared_only.push(n.clone());
            }
        }
    }
    declared_only.sort();
    declared_only.dedup();
    eprintln!(
        "checked {} dashboard, {} alert and {} documented names; declared without samples yet: {declared_only:?}",
        dash_names.len(),
        alert_names.len(),
        doc_names.len()
    );
    // The other direction is informative only: undocumented metrics.
    let undocumented: Vec<&String> = sched
        .families
        .iter()
        .chain(&agents.families)
        .map(|(f, _)| f)
        .filter(|f| {
            !doc_names.contains(*f)
                && !doc_names.contains(&format!("{f}_total"))
                && f.starts_with("vantage_")
        })
        .collect();
    eprintln!("exported but not in docs/metrics.md: {undocumented:?}");
    assert!(
        missing.is_empty(),
        "metrics named but not exported:\n{}",
        missing.join("\n")
    );
}

/// `BIN --help`.
fn help(bin: &str) -> String {
    let out = std::process::Command::new(vantage_tests::bins::bin(bin))
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{bin} --help: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An agent with a wrong enrollment token (refused by the scheduler),
/// started directly so the harness does not give it the right one.
struct Intruder {
    proc: vantage_tests::process::Proc,
    admin: u16,
    _dir: tempfile::TempDir,
}

impl Intruder {
    fn start(s: &Scheduler) -> Intruder {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let token = dir.path().join("wrong.token");
        std::fs::write(&token, "not-the-enrollment-token-0123456789")
            .unwrap_or_else(|e| panic!("write token: {e}"));
        // A credential the scheduler never issued: its route subscription is
        // refused too.
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("data dir: {e}"));
        std::fs::write(
            data.join("node.credential"),
            "vn1.intruder.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .unwrap_or_else(|e| panic!("write credential: {e}"));
        let ports = vantage_tests::AgentPorts::free();
        let args: Vec<String> = [
            "--node-id".to_owned(),
            "intruder".to_owned(),
            "--scheduler".to_owned(),
            s.quic_addr().to_string(),
            "--routes".to_owned(),
            s.grpc_url(),
            "--ca".to_owned(),
            s.ca_path().display().to_string(),
            "--token-file".to_owned(),
            token.display().to_string(),
            "--data-dir".to_owned(),
            data.display().to_string(),
            "--http-listen".to_owned(),
            format!("127.0.0.1:{}", ports.http),
            "--rtmp-listen".to_owned(),
            format!("127.0.0.1:{}", ports.rtmp),
            "--admin-listen".to_owned(),
            format!("127.0.0.1:{}", ports.admin),
            "--probe-listen".to_owned(),
            format!("127.0.0.1:{}", ports.probe),
        ]
        .into();
        let proc = vantage_tests::process::Proc::spawn(
            "intruder",
            &vantage_tests::bins::bin(vantage_tests::bins::AGENT),
            &args,
            &[],
            &dir.path().join("logs"),
        );
        Intruder {
            proc,
            admin: ports.admin,
            _dir: dir,
        }
    }

    async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin);
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

impl Drop for Intruder {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

#[test]
fn name_extraction() {
    let doc = "## Scheduler (`vantage_scheduler_*`)\n| metric | type |\n|---|---|\n\
               | `reports_total` | counter |\n| `a_total` / `b_total` | counter |\n\
               ## Agent (`vantage_agent_*`)\n| `x`, `y_ms` | gauge |\n\
               text `vantage_agent_z == 0` and vantage_scheduler_w{s=\"1\"}\n";
    let names: Vec<String> = doc_names(doc).into_iter().collect();
    assert_eq!(
        names,
        [
            "vantage_agent_x",
            "vantage_agent_y_ms",
            "vantage_agent_z",
            "vantage_scheduler_a_total",
            "vantage_scheduler_b_total",
            "vantage_scheduler_reports_total",
            "vantage_scheduler_w",
        ]
    );
    let e = Exposition::parse(
        "# TYPE vantage_scheduler_reports counter\nvantage_scheduler_reports_total 3\n\
         # TYPE vantage_scheduler_rej counter\n# TYPE vantage_scheduler_plan_duration_seconds histogram\n",
    );
    assert!(e.has("vantage_scheduler_reports_total"));
    assert!(e.has("vantage_scheduler_rej_total"));
    assert!(e.has("vantage_scheduler_plan_duration_seconds_bucket"));
    assert!(!e.has("vantage_scheduler_nope"));
}
