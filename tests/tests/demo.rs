//! `vantage-demo` (README's first command) starts a scheduler and six agents
//! at real cities, publishes the synthetic stream over RTMP and runs
//! viewers and comment chatters; the dashboard answers, the printed watch
//! page is served, the printed play URL serves FLV that `ffprobe` accepts,
//! the demo's comments flow (scheduler summary, a room client), and after Ctrl-C
//! (SIGINT) or SIGTERM every child is gone.

// Test code throughout; the shared body is not a #[test] fn itself.
#![allow(clippy::unwrap_used)]

use rustix::process::{Pid, Signal, kill_process};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use vantage_tests::cluster::node_healthy;
use vantage_tests::eventually;
use vantage_tests::http::Http;

/// Pids of live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie has state Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

const CITIES: [&str; 6] = [
    "frankfurt",
    "london",
    "new-york",
    "paris",
    "sao-paulo",
    "tokyo",
];

/// What the banner said.
#[derive(Debug, Default)]
struct Banner {
    api: Option<String>,
    dashboard: Option<String>,
    play: Option<String>,
    play_via: Option<String>,
    watch: Option<String>,
    pids: Vec<u32>,
    lines: Vec<String>,
}

/// Runs the demo until its banner is printed, checks the cluster, sends
/// `signal` to the demo alone, and checks that it stops every child.
async fn demo_stops_cleanly_on(signal: Signal, traffic: bool, test: &str) {
    let ffprobe = if traffic {
        match vantage_tests::media::tool("ffprobe", test) {
            Some(p) => Some(p),
            None => return,
        }
    } else {
        None
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let stderr = std::fs::File::create(root.join("demo.stderr.log")).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage-demo"));
    // Not under `cargo run`: no `cargo build` of the siblings (they are built).
    cmd.env_remove("CARGO")
        .args(["--free-ports", "--report-interval-ms", "250"])
        .arg("--data-dir")
        .arg(&root);
    if !traffic {
        cmd.arg("--no-traffic");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let demo_pid = Pid::from_raw(child.id().unwrap() as i32).unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let stderr_tail = || vantage_tests::process::tail(&root.join("demo.stderr.log"), 30);

    // Banner: dashboard, play URL, API URL, 6/6 up, child pids.
    let mut b = Banner::default();
    while b.pids.is_empty() {
        let line = match tokio::time::timeout(Duration::from_secs(90), lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            other => panic!(
                "demo printed no banner ({other:?}); output so far: {:#?}\n{}",
                b.lines,
                stderr_tail()
            ),
        };
        let word = |prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
        };
        b.api = b.api.take().or_else(|| word("scheduler API"));
        b.dashboard = b.dashboard.take().or_else(|| word("dashboard"));
        b.play = b.play.take().or_else(|| word("play "));
        b.play_via = b.play_via.take().or_else(|| word("play via edge"));
        b.watch = b.watch.take().or_else(|| word("watch "));
        if let Some(p) = line.strip_prefix("pids:") {
            b.pids = p
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
        }
        b.lines.push(line);
    }
    let seen = &mut b.lines;
    assert!(
        seen.iter().any(|l| l.contains("6/6 nodes up")),
        "banner: {seen:#?}"
    );
    assert_eq!(b.pids.len(), 7, "scheduler + 6 agents: {seen:#?}");
    let api = b
        .api
        .clone()
        .unwrap_or_else(|| panic!("no API URL in {seen:#?}"));
    assert!(api.starts_with("http://127.0.0.1:"), "{api}");

    // The scheduler lists the six cities up.
    let http = Http::new();
    eventually(Duration::from_secs(10), "6 demo nodes up", || async {
        let (_, v) = http.get(&format!("{api}/v1/nodes")).await;
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        let mut ids: Vec<&str> = nodes
            .iter()
            .filter(|n| node_healthy(n, 2000).is_ok())
            .filter_map(|n| n["id"].as_str())
            .collect();
        ids.sort_unstable();
        if ids == CITIES {
            Ok(())
        } else {
            Err(v.clone())
        }
    })
    .await;
    for pid in &b.pids {
        assert!(alive(*pid), "child {pid} should be running");
    }

    // The dashboard answers with the page.
    let dashboard = b
        .dashboard
        .clone()
        .unwrap_or_else(|| panic!("no dashboard URL: {seen:#?}"));
    assert_eq!(dashboard, format!("{api}/"));
    let resp = reqwest::get(&dashboard).await.unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("text/html"), "{ctype}");
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("<svg id=\"map\"") && html.contains("/ui/app.js"),
        "{html}"
    );

    if let Some(ffprobe) = ffprobe {
        // The printed watch page is served, with its players, by the origin.
        let watch = b
            .watch
            .clone()
            .unwrap_or_else(|| panic!("no watch URL: {seen:#?}"));
        // With a poster token in the fragment, so the browser may comment.
        let (watch, fragment) = watch.split_once('#').unwrap_or((&watch, ""));
        assert!(watch.ends_with("/watch/live/demo"), "{watch}");
        assert!(fragment.starts_with("token="), "{fragment}");
        let (status, page) = http.get_text(watch).await;
        assert_eq!(status, 200, "{watch}: {page}");
        assert!(
            page.contains("/watch/assets/hls.min.js") && page.contains("/watch/assets/mpegts.js"),
            "{page}"
        );

        // The printed play URLs serve FLV that ffprobe accepts: H.264 + AAC,
        // on the origin and through the scheduler's redirect to an edge.
        let play = b
            .play
            .clone()
            .unwrap_or_else(|| panic!("no play URL: {seen:#?}"));
        let via = b
            .play_via
            .clone()
            .unwrap_or_else(|| panic!("no /play URL: {seen:#?}"));
        assert_eq!(via, format!("{api}/play/live/demo.flv"));
        for play in [play, via] {
            assert!(
                play.starts_with("http://127.0.0.1:") && play.ends_with(".flv"),
                "{play}"
            );
            let out = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::process::Command::new(&ffprobe)
                    .args([
                        "-v",
                        "error",
                        "-show_entries",
                        "stream=codec_type,codec_name,width,height",
                    ])
                    .args(["-of", "compact", "-rw_timeout", "10000000"])
                    .arg(&play)
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .unwrap_or_else(|_| panic!("ffprobe {play} hung"))
            .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                out.status.success(),
                "ffprobe {play}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains("codec_name=h264") && text.contains("codec_name=aac"),
                "{text}"
            );
            assert!(text.contains("width=640|height=360"), "{text}");
        }

        // The synthetic viewers show up: viewers and CMCD buffer figures.
        eventually(
            Duration::from_secs(30),
            "viewers with CMCD buffer",
            || async {
                let (_, v) = http.get(&format!("{api}/ui/state")).await;
                let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
                let cmcd = nodes
                    .iter()
                    .filter(|n| n["qoe"]["buffer_source"] == "cmcd")
                    .count();
                let viewers: u64 = nodes
                    .iter()
                    .filter_map(|n| n["load"]["viewers"].as_u64())
                    .sum();
                if cmcd > 0 && viewers > 0 {
                    Ok(())
                } else {
                    Err(v)
                }
            },
        )
        .await;
    }

    if traffic {
        // The synthetic chatters comment in every agent's room: the
        // scheduler's comment summary shows the connections and posts, and
        // a client of the origin's room receives their comments.
        eventually(Duration::from_secs(30), "demo comments", || async {
            let (_, v) = http.get(&format!("{api}/v1/comments")).await;
            let conns = v["connections"].as_u64().unwrap_or(0);
            let posts = v["posts_per_s"].as_f64().unwrap_or(0.0);
            if conns >= 24 && posts > 0.0 {
                Ok(())
            } else {
                Err(v)
            }
        })
        .await;
        let watch = b.watch.clone().unwrap_or_default();
        let origin = watch.split("/watch/").next().unwrap_or_default();
        let url = format!(
            "{}/live/demo/comments?backlog=0",
            origin.replacen("http://", "ws://", 1)
        );
        let reader = vantage_tests::comments::CommentClient::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("demo comment room: {e}"));
        eventually(Duration::from_secs(20), "a demo comment", || async {
            let n = reader.log().comments.len();
            if n > 0 { Ok(n) } else { Err(n) }
        })
        .await;
        reader.close().await;
    }

    // The signal to the demo alone (not its children): it stops them all.
    kill_process(demo_pid, signal).unwrap();
    let rest = async {
        while let Ok(Some(l)) = lines.next_line().await {
            seen.push(l);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), rest)
        .await
        .unwrap_or_else(|_| panic!("demo did not finish; output: {seen:#?}"));
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap_or_else(|_| panic!("demo did not exit"))
        .unwrap();
    assert!(
        status.success(),
        "demo exited with {status}: {seen:#?}\n{}",
        stderr_tail()
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("all children stopped (7 graceful, 0 killed)")),
        "every child should stop on SIGTERM: {seen:#?}"
    );
    for pid in &b.pids {
        assert!(
            !alive(*pid),
            "child {pid} still running after the demo exited"
        );
    }
    let left = processes_mentioning(&root.display().to_string());
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    assert!(
        Path::new(&root)
            .join("scheduler")
            .join("dev")
            .join("ca.pem")
            .is_file()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_dashboard_and_flv_and_ctrl_c_leaves_nothing() {
    demo_stops_cleanly_on(
        Signal::INT,
        true,
        "demo_serves_dashboard_and_flv_and_ctrl_c_leaves_nothing",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_stops_every_child_on_sigterm() {
    demo_stops_cleanly_on(Signal::TERM, false, "demo_stops_every_child_on_sigterm").await;
}
