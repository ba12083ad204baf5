//! Issue 17, publishing: nobody without a credential can publish, and a
//! live stream cannot be hijacked.
//!
//! * A stream an edge relays is never taken over by a local publish: the
//!   attacker gets 409 naming the origin, the edge's viewers keep the real
//!   publisher's frames, and the scheduler lists one origin.
//! * Outside `--dev`'s open default, publishing needs a publish token
//!   issued by the scheduler's admin API (HTTP-FLV `?token=`, RTMP
//!   `name?token=`) or the operator's `on_publish` webhook (per app);
//!   without one the publisher gets 401/403, counted.
//! * Two agents taking the same key at once: the scheduler keeps the first
//!   publisher as the origin, the other publisher is told so (409), with a
//!   WARN, an event and a counter.
//!
//! Publishers are the synthetic FLV source over HTTP (no ffmpeg needed).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vantage_shared::synth::SynthConfig;
use vantage_tests::cluster::wait_all_up;
use vantage_tests::media::stream_role;
use vantage_tests::ports::loopback;
use vantage_tests::rtmp::RtmpClient;
use vantage_tests::synth::{FlvViewer, SynthPublisher};
use vantage_tests::{Agent, Scheduler, eventually};

const STREAM: &str = "live/cam";
const ADMIN: &str = "admin-token-for-the-security-tests";

fn media(a: &Agent) -> SocketAddr {
    loopback(a.ports().http)
}

/// The attacker's source: another picture size (another SPS) than the
/// real publisher's 320x240, so a viewer can tell the two apart.
fn attacker() -> SynthConfig {
    SynthConfig {
        bitrate_kbps: 300,
        gop_frames: 25,
        width: 640,
        height: 480,
        ..SynthConfig::default()
    }
}

/// Nodes reporting `stream` as its origin.
async fn origins_of(s: &Scheduler, stream: &str) -> Vec<String> {
    s.nodes()
        .await
        .iter()
        .filter(|n| stream_role(n, stream).as_deref() == Some("origin"))
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_stream_is_never_taken_over_by_a_local_publish() {
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let origin = Agent::builder("hj-origin", &s)
        .region("eu-paris")
        .at(48.8566, 2.3522)
        .start()
        .await;
    let edge = Agent::builder("hj-edge", &s)
        .region("eu-frankfurt")
        .at(50.1109, 8.6821)
        .start()
        .await;
    wait_all_up(&s, &["hj-origin", "hj-edge"], Duration::from_secs(15)).await;
    // --dev keeps publishing open, and says so at start-up.
    assert!(
        s.log_tail(400).contains("publishing is open"),
        "no start-up warning about open publishing:\n{}",
        s.log_tail(60)
    );

    let real = SynthPublisher::start(media(&origin), &format!("/{STREAM}.flv"), 300);
    let viewer = FlvViewer::start_live(
        &format!("{}/{STREAM}.flv", edge.media_url()),
        Duration::from_secs(15),
    )
    .await;
    viewer
        .wait_bytes(64 * 1024, Duration::from_secs(10))
        .await
        .unwrap_or_else(|s| panic!("no media through the edge: {s:?}"));
    assert_eq!(viewer.seen().video_configs.len(), 1, "{:?}", viewer.seen());

    // The attack: publish the same key on the edge that relays it.
    let hijack = SynthPublisher::start_config(media(&edge), &format!("/{STREAM}.flv"), attacker());
    let answer = hijack.wait_answer(Duration::from_secs(5)).await;
    let Some((status, body)) = answer else {
        panic!(
            "the edge accepted a publish of a stream it relays (no refusal within 5 s); \
             viewer saw {} decoder configurations",
            viewer.seen().video_configs.len()
        );
    };
    assert_eq!(status, 409, "publish over a relayed stream: {body}");
    assert!(
        body.contains("hj-origin"),
        "the refusal names the origin: {body}"
    );

    // The viewer keeps the real publisher's frames.
    let before = viewer.seen().bytes;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = viewer.seen();
    assert!(seen.bytes > before + 32 * 1024, "viewer stalled: {seen:?}");
    assert_eq!(
        seen.video_configs.len(),
        1,
        "the viewer received another source's decoder configuration"
    );
    assert!(seen.widths.iter().all(|w| *w == 320), "{:?}", seen.widths);
    real.assert_running();
    // The scheduler lists one origin: the real one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(origins_of(&s, STREAM).await, ["hj-origin"]);
    let refused = edge
        .metric(
            "vantage_agent_relay_publishes_total",
            &[("result", "conflict")],
        )
        .await;
    assert!(refused >= 1.0, "refusal not counted");
}

/// Reads the whole answer of a raw HTTP request (status, body).
async fn raw_publish(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: video/x-flv\r\n{headers}\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
            let text = String::from_utf8_lossy(&buf);
            if let Some((_, body)) = text.split_once("\r\n\r\n")
                && body.contains('}')
            {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to POST {path} within 5 s");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

async fn issue_token(s: &Scheduler, auth: Option<&str>, stream: &str, ttl_s: u64) -> (u16, Value) {
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("authorization", b)])
        .unwrap_or_default();
    s.http()
        .request(
            "POST",
            &format!("{}/v1/publish-tokens", s.api_url()),
            &headers,
            Some(&json!({"stream": stream, "ttl_s": ttl_s})),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_a_token_issued_by_the_scheduler() {
    let s = Scheduler::builder()
        .report_interval_ms(500)
        .arg("--publish-auth")
        .arg("token")
        .arg("--admin-token")
        .arg(ADMIN)
        .start()
        .await;
    let a = Agent::builder("tok-a", &s).start().await;
    wait_all_up(&s, &["tok-a"], Duration::from_secs(15)).await;
    let addr = media(&a);

    // No token, a made-up token, a forged one: refused before any stream exists.
    let (status, body) = raw_publish(addr, &format!("/{STREAM}.flv"), "").await;
    assert_eq!(status, 401, "publish without a token: {body}");
    let (status, body) = raw_publish(addr, &format!("/{STREAM}.flv?token=abc.def.ghi"), "").await;
    assert_eq!(status, 401, "publish with a made-up token: {body}");
    assert!(
        a.status().await["relay"]["streams"]
            .as_array()
            .is_some_and(|v| v.is_empty())
    );

    // Tokens come from the admin API only.
    let (status, _) = issue_token(&s, None, STREAM, 600).await;
    assert_eq!(status, 401, "tokens issued without the admin token");
    let (status, _) = issue_token(&s, Some("wrong"), STREAM, 600).await;
    assert_eq!(status, 403, "tokens issued with a wrong admin token");
    let (status, issued) = issue_token(&s, Some(ADMIN), STREAM, 600).await;
    assert_eq!(status, 200, "{issued}");
    let token = issued["token"].as_str().expect("a token").to_owned();

    // A token for live/cam does not cover live/other.
    let (status, body) = raw_publish(addr, &format!("/live/other.flv?token={token}"), "").await;
    assert_eq!(status, 403, "token for {STREAM} used on live/other: {body}");

    // With the token (query or bearer header), the publish is accepted and plays.
    let publisher = SynthPublisher::start(addr, &format!("/{STREAM}.flv?token={token}"), 300);
    let viewer = FlvViewer::start_live(
        &format!("{}/{STREAM}.flv", a.media_url()),
        Duration::from_secs(10),
    )
    .await;
    viewer
        .wait_bytes(16 * 1024, Duration::from_secs(10))
        .await
        .unwrap_or_else(|s| panic!("no media with a valid token: {s:?}"));
    publisher.assert_running();
    let (issued2_status, issued2) = issue_token(&s, Some(ADMIN), "live/*", 600).await;
    assert_eq!(issued2_status, 200, "{issued2}");
    let wildcard = issued2["token"].as_str().unwrap().to_owned();
    let (status, body) = raw_publish(
        addr,
        "/live/third.flv",
        &format!("Authorization: Bearer {wildcard}\r\n"),
    )
    .await;
    // The body is empty: accepted, then ended with the (empty) body.
    assert_eq!(status, 200, "bearer token for live/*: {body}");

    // RTMP: the token rides on the stream name.
    let mut rtmp = RtmpClient::connect(loopback(a.ports().rtmp)).await.unwrap();
    rtmp.connect_app("live").await.unwrap();
    let code = rtmp.publish("rtmpcam").await.unwrap();
    assert_eq!(
        code, "NetStream.Publish.Unauthorized",
        "RTMP without a token"
    );
    let mut rtmp = RtmpClient::connect(loopback(a.ports().rtmp)).await.unwrap();
    rtmp.connect_app("live").await.unwrap();
    let code = rtmp
        .publish(&format!("rtmpcam?token={wildcard}"))
        .await
        .unwrap();
    assert_eq!(code, "NetStream.Publish.Start", "RTMP with a token");

    let refused = a
        .metric(
            "vantage_agent_relay_publishes_total",
            &[("result", "unauthorized")],
        )
        .await;
    assert!(refused >= 3.0, "refusals counted: {refused}");
}

/// A small `on_publish` webhook: allows stream names starting with "ok",
/// records what it was asked.
async fn webhook() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let calls = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let body = loop {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break body.to_owned();
                        }
                    }
                };
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let allow = v["stream"].as_str().is_some_and(|s| s.starts_with("ok"));
                calls.lock().unwrap().push(v);
                let answer = if allow {
                    "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n0"
                } else {
                    "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_can_use_the_operators_on_publish_webhook() {
    let (hook, calls) = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scheduler.toml");
    std::fs::write(
        &config,
        format!(
            "[publish]\nauth = \"token\"\n\n[[publish.apps]]\napp = \"hook\"\nauth = \"webhook\"\n\
             webhook_url = \"http://{hook}/on_publish\"\n"
        ),
    )
    .unwrap();
    let s = Scheduler::builder()
        .report_interval_ms(500)
        .arg("--config")
        .arg(config.display().to_string())
        .start()
        .await;
    let a = Agent::builder("hook-a", &s).start().await;
    wait_all_up(&s, &["hook-a"], Duration::from_secs(15)).await;
    let addr = media(&a);
    let (status, body) = raw_publish(addr, "/hook/denied.flv?secret=1", "").await;
    assert_eq!(status, 403, "webhook said no: {body}");
    let publisher = SynthPublisher::start(addr, "/hook/ok1.flv?secret=2", 300);
    FlvViewer::start_live(
        &format!("{}/hook/ok1.flv", a.media_url()),
        Duration::from_secs(10),
    )
    .await;
    publisher.assert_running();
    // Other apps still need a token.
    let (status, body) = raw_publish(addr, "/live/x.flv", "").await;
    assert_eq!(status, 401, "app without a webhook rule: {body}");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["action"], "on_publish");
    assert_eq!(calls[0]["app"], "hook");
    assert_eq!(calls[0]["stream"], "denied");
    assert_eq!(calls[0]["param"], "?secret=1");
    assert_eq!(calls[0]["node_id"], "hook-a");
    assert_eq!(calls[1]["stream"], "ok1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_publisher_of_a_key_stays_its_origin() {
    // Reports every 2 s: both agents admit their publisher before either
    // has reported it, so the scheduler sees the conflict.
    let s = Scheduler::builder().report_interval_ms(2000).start().await;
    let a = Agent::builder("race-a", &s)
        .region("eu-paris")
        .at(48.8566, 2.3522)
        .start()
        .await;
    let b = Agent::builder("race-b", &s)
        .region("eu-frankfurt")
        .at(50.1109, 8.6821)
        .start()
        .await;
    wait_all_up(&s, &["race-a", "race-b"], Duration::from_secs(20)).await;
    let path = "/live/race.flv";
    let pa = SynthPublisher::start(media(&a), path, 300);
    let pb = SynthPublisher::start(media(&b), path, 300);

    // One publisher keeps going, the other is told who holds the key.
    let (loser, winner, answer) = eventually(
        Duration::from_secs(15),
        "one of the two publishers refused",
        || async {
            match (pa.answer(), pb.answer()) {
                (Some(x), None) => Ok(("race-a", "race-b", x)),
                (None, Some(x)) => Ok(("race-b", "race-a", x)),
                (Some(x), Some(y)) => panic!("both publishers ended: {x:?} {y:?}"),
                (None, None) => Err("both still publishing"),
            }
        },
    )
    .await;
    assert_eq!(answer.0, 409, "the loser's answer: {answer:?}");
    assert!(
        answer.1.contains(winner),
        "the refusal names the origin {winner}: {answer:?}"
    );
    eventually(Duration::from_secs(10), "one origin listed", || async {
        let o = origins_of(&s, "live/race").await;
        if o == [winner] { Ok(()) } else { Err(o) }
    })
    .await;
    // A WARN, an event and a counter at the scheduler, when the scheduler
    // saw both (the loser's agent may also have learned the origin first
    // and refused at once: then the agent counted it).
    let conflicts = s
        .metric("vantage_scheduler_origin_conflicts_total", &[])
        .await;
    if conflicts >= 1.0 {
        assert!(s.log_tail(2000).contains("origin conflict"), "no WARN line");
        let (_, events) = s.get("/v1/events?limit=1000").await;
        let found = events["events"].as_array().is_some_and(|ev| {
            ev.iter()
                .any(|e| e["kind"] == "origin_conflict" && e["node_id"] == loser)
        });
        assert!(found, "no origin_conflict event for {loser}: {events}");
    }
    let loser_agent = if loser == "race-a" { &a } else { &b };
    let refused = loser_agent
        .metric(
            "vantage_agent_relay_publishes_total",
            &[("result", "conflict")],
        )
        .await;
    assert!(refused >= 1.0, "the loser's refusal is counted");
    // A later publish to the loser is refused at once.
    let (status, body) = raw_publish(media(loser_agent), path, "").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains(winner), "{body}");
}
