//! `vantage-demo` starts a scheduler and four agents, all four become `up`,
//! and when it stops (`--duration`) every child is gone.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_four_nodes_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let stderr = std::fs::File::create(root.join("demo.stderr.log")).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage-demo"))
        .args([
            "--duration",
            "8",
            "--free-ports",
            "--report-interval-ms",
            "250",
        ])
        .arg("--data-dir")
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let stderr_tail = || vantage_tests::process::tail(&root.join("demo.stderr.log"), 30);

    // Banner: API URL, 4/4 up, child pids.
    let mut api = None;
    let mut pids: Vec<u32> = Vec::new();
    while pids.is_empty() {
        let line = match tokio::time::timeout(Duration::from_secs(90), lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            other => panic!(
                "demo printed no banner ({other:?}); output so far: {seen:#?}\n{}",
                stderr_tail()
            ),
        };
        if let Some(u) = line.strip_prefix("scheduler API") {
            api = Some(u.trim().to_owned());
        }
        if let Some(p) = line.strip_prefix("pids:") {
            pids = p
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
        }
        seen.push(line);
    }
    assert!(
        seen.iter().any(|l| l.contains("4/4 nodes up")),
        "banner: {seen:#?}"
    );
    assert_eq!(pids.len(), 5, "scheduler + 4 agents: {seen:#?}");
    let api = api.unwrap_or_else(|| panic!("no API URL in {seen:#?}"));
    assert!(api.starts_with("http://127.0.0.1:"), "{api}");

    // The scheduler really lists the four cities up.
    let http = Http::new();
    eventually(Duration::from_secs(5), "4 demo nodes up", || async {
        let (_, v) = http.get(&format!("{api}/v1/nodes")).await;
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        let mut ids: Vec<&str> = nodes
            .iter()
            .filter(|n| node_healthy(n, 2000).is_ok())
            .filter_map(|n| n["id"].as_str())
            .collect();
        ids.sort_unstable();
        if ids == ["frankfurt", "paris", "sao-paulo", "tokyo"] {
            Ok(())
        } else {
            Err(v.clone())
        }
    })
    .await;
    for pid in &pids {
        assert!(alive(*pid), "child {pid} should be running");
    }

    // It stops by itself and cleans up.
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
            .any(|l| l.contains("all children stopped (5 graceful, 0 killed)")),
        "every child should stop on SIGTERM: {seen:#?}"
    );
    for pid in &pids {
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
