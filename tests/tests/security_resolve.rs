//! Issue 17, viewer-facing limits: `/v1/resolve` and `/play` used to
//! reserve the stream's bit rate on an edge for every call, so a few
//! thousand requests a second from one client made every real `/play`
//! answer 503 ("none with capacity"). Requests are now limited per client
//! (token bucket per IP, 429 JSON), and the load a client's resolves
//! reserve is bounded and decays: real viewers keep getting 302 while
//! other clients flood.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vantage_tests::cluster::wait_all_up;
use vantage_tests::http::Http;
use vantage_tests::ports::loopback;
use vantage_tests::synth::{FlvViewer, SynthPublisher};
use vantage_tests::{Agent, Scheduler};

/// Flooding clients: 127.0.0.2 ..= 127.0.0.9.
const FLOODERS: u8 = 8;
const FLOOD_FOR: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_flood_does_not_deny_real_viewers() {
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    // Small edges: 40 Mbit/s each is 20 viewers of the 2 Mbit/s stream.
    let origin = Agent::builder("fl-par", &s)
        .region("eu-paris")
        .at(48.8566, 2.3522)
        .capacity_mbps(40.0)
        .start()
        .await;
    let _edge = Agent::builder("fl-fra", &s)
        .region("eu-frankfurt")
        .at(50.1109, 8.6821)
        .capacity_mbps(40.0)
        .start()
        .await;
    wait_all_up(&s, &["fl-par", "fl-fra"], Duration::from_secs(15)).await;
    let publisher = SynthPublisher::start(loopback(origin.ports().http), "/live/x.flv", 2000);
    FlvViewer::start_live(
        &format!("{}/live/x.flv", origin.media_url()),
        Duration::from_secs(10),
    )
    .await;
    let real = Http::bound_to(IpAddr::from([127, 0, 0, 1]));
    let play = format!("{}/play/live/x.flv?lat=48.85&lon=2.35", s.api_url());
    vantage_tests::eventually(Duration::from_secs(10), "/play answers 302", || async {
        match real.get(&play).await {
            (302, _) => Ok(()),
            other => Err(other),
        }
    })
    .await;

    // The flood: 8 clients, 4 loops each, as fast as the scheduler answers.
    let sent = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let mut flood = tokio::task::JoinSet::new();
    let stop_at = Instant::now() + FLOOD_FOR;
    for c in 0..FLOODERS {
        let http = Http::bound_to(IpAddr::from([127, 0, 0, 2 + c]));
        for l in 0..4 {
            let (http, sent, limited) = (http.clone(), sent.clone(), limited.clone());
            let url = if l % 2 == 0 {
                format!(
                    "{}/v1/resolve?stream=live/x&lat=48.85&lon=2.35",
                    s.api_url()
                )
            } else {
                play.clone()
            };
            flood.spawn(async move {
                // Bounded: at most 20,000 requests per loop.
                for _ in 0..20_000 {
                    if Instant::now() >= stop_at {
                        break;
                    }
                    let (status, body) = http.get(&url).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if status == 429 {
                        assert!(
                            body.get("error").is_some(),
                            "429 answers are JSON with an error: {body}"
                        );
                        limited.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }

    // Meanwhile a real viewer asks every 250 ms: always 302.
    let mut answers = Vec::new();
    while Instant::now() < stop_at {
        let (status, body) = real.get(&play).await;
        answers.push(status);
        assert_eq!(
            status,
            302,
            "a real /play during the flood ({} flood requests so far): {body}",
            sent.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    while flood.join_next().await.is_some() {}
    publisher.assert_running();
    let (sent, limited) = (
        sent.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
    );
    eprintln!(
        "flood: {sent} requests, {limited} answered 429; real viewer: {} answers, all 302",
        answers.len()
    );
    assert!(limited > 0, "the flood was never rate limited");
    let counted = s.metric("vantage_scheduler_rate_limited_total", &[]).await;
    assert!(
        counted as u64 >= limited,
        "429s counted: {counted} < {limited}"
    );
}
