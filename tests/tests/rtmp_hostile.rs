//! Issue 18, Must show 5: hostile RTMP against the real agent.
//!
//! An ffmpeg publisher sends `live/x` over RTMP and an HTTP-FLV viewer
//! watches it the whole time. Meanwhile, on the same RTMP port:
//!
//! 1. a garbage handshake (`GET / HTTP/1.1`) is refused at once;
//! 2. `Set Chunk Size 0x7FFFFFFF` is refused;
//! 3. AMF bombs (10,000 nested objects; a message over the 64 KiB command
//!    limit) are refused;
//! 4. a publisher that stalls mid-chunk is disconnected after the idle
//!    timeout and its key is free again;
//! 5. 10,000 handshakes that never finish: the ones over
//!    `--rtmp-max-connections` are closed at accept, the others time out.
//!
//! Each is counted (`vantage_agent_rtmp_*`), the publisher and the viewer
//! are unaffected (the viewer's media keeps arriving), and the agent's
//! memory stays bounded (resident set measured before and during the flood).

use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vantage_shared::rtmp::chunk::{self, Header};
use vantage_shared::rtmp::message;
use vantage_tests::media::{Publisher, tool};
use vantage_tests::rtmp::RtmpClient;
use vantage_tests::synth::FlvViewer;
use vantage_tests::{Agent, Scheduler, eventually};

const FLOOD: usize = 10_000;
const MAX_CONNECTIONS: usize = 2_000;

/// Resident set of a process, kB (`VmRSS` of /proc/PID/status).
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Connects, sends `bytes`, and reports whether the server closed the
/// connection within 5 s.
async fn refused(addr: SocketAddr, bytes: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 4096];
    let work = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .is_ok()
}

/// Bytes received by the viewer, after waiting `d`; panics if it stalled.
async fn viewer_progresses(v: &FlvViewer, what: &str) {
    let before = v.seen().bytes;
    let after = v
        .wait_bytes(before + 8 * 1024, Duration::from_secs(5))
        .await
        .unwrap_or_else(|s| panic!("viewer stalled during {what}: {s:?}"));
    assert!(
        after.error.is_none(),
        "viewer failed during {what}: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rtmp_is_refused_counted_and_harmless_to_others() {
    let test = "hostile_rtmp_is_refused_counted_and_harmless_to_others";
    let Some(ffmpeg) = tool("ffmpeg", test) else {
        return;
    };
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let a = Agent::builder("rtmp-hostile", &s)
        .arg("--rtmp-handshake-timeout-ms")
        .arg("1500")
        .arg("--rtmp-idle-timeout-ms")
        .arg("2000")
        .arg("--rtmp-max-connections")
        .arg(MAX_CONNECTIONS.to_string())
        .start()
        .await;
    let rtmp: SocketAddr = ([127, 0, 0, 1], a.ports().rtmp).into();
    let mut publisher = Publisher::start(&ffmpeg, &format!("{}/live/x", a.rtmp_url()));
    let viewer = FlvViewer::start_live(
        &format!("{}/live/x.flv", a.media_url()),
        Duration::from_secs(20),
    )
    .await;
    viewer_progresses(&viewer, "start").await;
    let pid = a.pid().expect("agent pid");
    let rss_before = rss_kb(pid);

    // 1. Garbage handshake.
    assert!(
        refused(rtmp, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
        "garbage handshake not refused"
    );
    // 2. Oversized chunk size, after a proper connect.
    let mut c = RtmpClient::connect(rtmp).await.expect("handshake");
    c.connect_app("live").await.expect("connect");
    c.send(&message::set_chunk_size(0x7FFF_FFFF, 128))
        .await
        .expect("send");
    assert!(
        c.closed_within(Duration::from_secs(5)).await,
        "oversized chunk size not refused"
    );
    // 3a. AMF bomb: 10,000 nested objects in a command (40 KB).
    let mut bomb = BytesMut::new();
    bomb.extend_from_slice(&[0x02, 0, 7]);
    bomb.extend_from_slice(b"connect");
    bomb.extend_from_slice(&[0x00, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0]);
    for _ in 0..10_000 {
        bomb.extend_from_slice(&[0x03, 0, 1, b'a']);
    }
    let mut c = RtmpClient::connect(rtmp).await.expect("handshake");
    let h = Header {
        csid: 3,
        timestamp: 0,
        type_id: message::COMMAND_AMF0,
        stream_id: 0,
    };
    c.send(&chunk::encode(&h, &bomb, 128)).await.expect("send");
    assert!(
        c.closed_within(Duration::from_secs(5)).await,
        "AMF bomb not refused"
    );
    // 3b. A command message declared 16 MB long.
    let mut c = RtmpClient::connect(rtmp).await.expect("handshake");
    let big = [0x03, 0, 0, 0, 0xFF, 0xFF, 0xFF, 20, 0, 0, 0, 0];
    c.send(&big).await.expect("send");
    assert!(
        c.closed_within(Duration::from_secs(5)).await,
        "oversized message not refused"
    );
    viewer_progresses(&viewer, "malformed input").await;

    // 4. A publisher that stalls mid-chunk.
    let mut c = RtmpClient::connect(rtmp).await.expect("handshake");
    c.connect_app("live").await.expect("connect");
    assert_eq!(
        c.publish("stall").await.expect("publish"),
        "NetStream.Publish.Start"
    );
    let mut frame = BytesMut::new();
    message::media(message::VIDEO, 0, &[0x17; 500], 1, 128, &mut frame);
    c.send(&frame[..200]).await.expect("send");
    let t = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(10)).await,
        "stalled publisher not disconnected"
    );
    eprintln!("stalled publisher disconnected after {:?}", t.elapsed());
    let mut again = RtmpClient::connect(rtmp).await.expect("handshake");
    again.connect_app("live").await.expect("connect");
    assert_eq!(
        again.publish("stall").await.expect("publish"),
        "NetStream.Publish.Start",
        "the stalled publisher's key is free again"
    );
    drop(again);

    // 5. 10,000 handshakes that never finish (C0 and half of C1 each).
    let t = Instant::now();
    let mut socks = Vec::with_capacity(FLOOD);
    let mut connect_failures = 0;
    let mut half = vec![3u8];
    half.extend_from_slice(&[0u8; 700]);
    for batch in 0..FLOOD / 500 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..500 {
            let half = half.clone();
            set.spawn(async move {
                let mut s = TcpStream::connect(rtmp).await.ok()?;
                s.write_all(&half).await.ok()?;
                Some(s)
            });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Some(s)) => socks.push(s),
                _ => connect_failures += 1,
            }
        }
        if batch == FLOOD / 1000 {
            viewer_progresses(&viewer, "the handshake flood").await;
        }
    }
    let rss_flood = rss_kb(pid);
    eprintln!(
        "{} half handshakes open after {:?} ({connect_failures} connects failed); agent RSS {} → {} kB",
        socks.len(),
        t.elapsed(),
        rss_before,
        rss_flood
    );
    viewer_progresses(&viewer, "the handshake flood").await;
    let counted = eventually(
        Duration::from_secs(15),
        "every flood connection refused or timed out",
        || async {
            let refused = a
                .metric(
                    "vantage_agent_rtmp_connection_attempts_total",
                    &[("result", "refused_limit")],
                )
                .await;
            let timeouts = a
                .metric(
                    "vantage_agent_rtmp_handshakes_total",
                    &[("result", "timeout")],
                )
                .await;
            let open = a.metric("vantage_agent_rtmp_connections", &[]).await;
            if refused + timeouts >= (FLOOD - connect_failures) as f64 && open <= 1.0 {
                Ok((refused, timeouts, open))
            } else {
                Err((refused, timeouts, open))
            }
        },
    )
    .await;
    eprintln!("flood: (refused at accept, handshake timeouts, still open) = {counted:?}");
    assert!(counted.0 >= 1.0, "nothing refused at the connection limit");
    assert!(counted.1 >= 1.0, "no handshake timed out");
    drop(socks);
    viewer_progresses(&viewer, "after the flood").await;

    // Every refusal was counted with its reason.
    for (name, label, value) in [
        (
            "vantage_agent_rtmp_handshakes_total",
            "result",
            "bad_version",
        ),
        (
            "vantage_agent_rtmp_errors_total",
            "reason",
            "bad_chunk_size",
        ),
        ("vantage_agent_rtmp_errors_total", "reason", "bad_amf"),
        (
            "vantage_agent_rtmp_errors_total",
            "reason",
            "message_too_large",
        ),
        ("vantage_agent_rtmp_errors_total", "reason", "idle_timeout"),
        ("vantage_agent_relay_publishes_total", "result", "timeout"),
    ] {
        let n = a.metric(name, &[(label, value)]).await;
        assert!(n >= 1.0, "{name}{{{label}=\"{value}\"}} is {n}");
    }
    // Memory stays bounded: 10,000 hostile connections cost little.
    let grown_mb = rss_flood.saturating_sub(rss_before) / 1024;
    eprintln!("agent RSS grew by {grown_mb} MB during the flood");
    assert!(
        grown_mb < 256,
        "agent RSS grew by {grown_mb} MB during the flood ({rss_before} → {rss_flood} kB)"
    );
    publisher.assert_running();
    let viewers = a.metric("vantage_agent_relay_viewers", &[]).await;
    assert_eq!(viewers, 1.0, "the viewer is still connected");
    publisher.stop().await;
}
