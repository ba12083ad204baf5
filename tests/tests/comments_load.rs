//! Issue 20, item 4: the scheduler's view of an edge's load includes its
//! live comment connections, and viewer routing acts on it (real binaries).
//!
//! A scheduler, origin A (Paris, the stream published there), B (Frankfurt,
//! at most 20 comment connections) and C (Brussels). A viewer in Frankfurt
//! is sent to B. Twenty comment clients then fill B's connection limit
//! while B carries almost no bytes: the scheduler counts B as full
//! (`/v1/nodes`: utilisation 1, from `comment_connections` /
//! `comment_connection_limit`), so Frankfurt's viewers go elsewhere (C, or A). When the
//! clients leave, B takes them back.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

use std::net::SocketAddr;
use std::time::Duration;
use vantage_tests::cluster::wait_all_up;
use vantage_tests::comments::{CommentClient, comments_url, connect_when_ready, wait_keys};
use vantage_tests::synth::SynthPublisher;
use vantage_tests::{Agent, Scheduler, eventually};

const STREAM: &str = "live/cl";
const LIMIT: usize = 20;
/// Frankfurt.
const VIEWER: (f64, f64) = (50.1109, 8.6821);

async fn first_edge(s: &Scheduler) -> Result<String, String> {
    let (status, v) = s
        .get(&format!(
            "/v1/resolve?stream={STREAM}&lat={}&lon={}&n=3",
            VIEWER.0, VIEWER.1
        ))
        .await;
    if status != 200 {
        return Err(format!("{status}: {v}"));
    }
    v["edges"][0]["node_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_connections_count_as_edge_load_and_move_viewers() {
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let a = Agent::builder("cl-a", &s)
        .region("eu-paris")
        .at(48.8566, 2.3522)
        .start()
        .await;
    let b = Agent::builder("cl-b", &s)
        .region("eu-frankfurt")
        .at(VIEWER.0, VIEWER.1)
        .arg("--comments-max-connections")
        .arg(LIMIT.to_string())
        .start()
        .await;
    let c = Agent::builder("cl-c", &s)
        .region("eu-brussels")
        .at(50.8503, 4.3517)
        .start()
        .await;
    wait_all_up(&s, &["cl-a", "cl-b", "cl-c"], Duration::from_secs(15)).await;
    let media: SocketAddr = a.media_url().trim_start_matches("http://").parse().unwrap();
    let _publisher = SynthPublisher::start(media, &format!("/{STREAM}.flv"), 300);
    for x in [&a, &b, &c] {
        wait_keys(x, Duration::from_secs(15)).await;
    }

    // Idle: Frankfurt's viewers go to Frankfurt.
    eventually(
        Duration::from_secs(20),
        "Frankfurt resolved to B",
        || async {
            match first_edge(&s).await? {
                e if e == "cl-b" => Ok(()),
                e => Err(e),
            }
        },
    )
    .await;

    // B's comment connections at its limit.
    let mut held = vec![connect_when_ready(&b, STREAM, "backlog=0").await];
    let url = format!("{}?backlog=0", comments_url(&b, STREAM));
    for _ in 1..LIMIT {
        held.push(CommentClient::connect(&url).await.unwrap());
    }
    // One more is refused (503 max_connections): B is full.
    assert!(CommentClient::connect(&url).await.is_err());

    let node = eventually(
        Duration::from_secs(15),
        "B's comment load in /v1/nodes",
        || async {
            let n = s.node("cl-b").await.unwrap_or_default();
            let conns = n["load"]["comment_connections"].as_u64().unwrap_or(0);
            let util = n["load"]["utilisation"].as_f64().unwrap_or(0.0);
            if conns == LIMIT as u64 && util >= 0.99 {
                Ok(n)
            } else {
                Err(n)
            }
        },
    )
    .await;
    assert_eq!(
        node["load"]["comment_connection_limit"].as_u64(),
        Some(LIMIT as u64),
        "{node}"
    );
    assert!(
        node["load"]["egress_mbps"].as_f64().unwrap_or(f64::MAX) < 1.0,
        "B's bytes are few: it is the connections that fill it: {node}"
    );
    eventually(
        Duration::from_secs(15),
        "Frankfurt resolved away from a B full of comment clients",
        || async {
            match first_edge(&s).await? {
                e if e == "cl-b" => Err(e),
                _ => Ok(()),
            }
        },
    )
    .await;

    // They leave: B is Frankfurt's edge again.
    for c in held {
        c.close().await;
    }
    eventually(
        Duration::from_secs(30),
        "Frankfurt resolved to B again",
        || async {
            match first_edge(&s).await? {
                e if e == "cl-b" => Ok(()),
                e => Err(e),
            }
        },
    )
    .await;
}
