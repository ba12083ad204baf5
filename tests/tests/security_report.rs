//! Issue 17, bounded reports: hundreds of publishes with long stream keys
//! trickling one byte every 5 s (open publishing, `--dev`) used to grow the
//! agent's report past the 64 KiB frame limit; every report was dropped,
//! the scheduler marked the edge down and `/play` for its real stream
//! answered 404. An agent's report now fits the frame limit whatever its
//! local state (the tail of streams and groups aggregated, counted), so the
//! edge stays `up` and its stream playable; keys longer than the documented
//! maximum are refused at the edge.

use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vantage_tests::cluster::wait_all_up;
use vantage_tests::http::Http;
use vantage_tests::ports::loopback;
use vantage_tests::synth::{FlvViewer, SynthPublisher};
use vantage_tests::{Agent, Scheduler, eventually};

const TRICKLERS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_key_publishes_do_not_knock_an_edge_out() {
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let edge = Agent::builder("rep-edge", &s)
        .region("eu-paris")
        .at(48.8566, 2.3522)
        .start()
        .await;
    wait_all_up(&s, &["rep-edge"], Duration::from_secs(15)).await;
    let addr = loopback(edge.ports().http);
    let real = SynthPublisher::start(addr, "/live/real.flv", 300);
    FlvViewer::start_live(
        &format!("{}/live/real.flv", edge.media_url()),
        Duration::from_secs(10),
    )
    .await;

    let http = Http::bound_to("127.0.0.1".parse().unwrap());
    let play = format!("{}/play/live/real.flv", s.api_url());
    eventually(Duration::from_secs(10), "/play answers 302", || async {
        match http.get(&play).await {
            (302, _) => Ok(()),
            other => Err(other),
        }
    })
    .await;

    // A key longer than the documented maximum (200 bytes) is refused.
    let too_long = format!("/live/{}.flv", "k".repeat(200));
    let (status, body) = Http::new()
        .request(
            "POST",
            &format!("{}{too_long}", edge.media_url()),
            &[],
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // 400 publishes of 194-byte keys, each sending one byte every 5 s.
    let mut socks = Vec::new();
    for i in 0..TRICKLERS {
        let name = format!("{i:04}{}", "x".repeat(188));
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /live/{name}.flv HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nF\r\n"
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        socks.push(sock);
    }
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            for s in &mut socks {
                let _ = s.write_all(b"1\r\nL\r\n").await;
            }
        }
    });

    // For 15 s: the edge stays up and /play answers 302 to it.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        let node = s.node("rep-edge").await.expect("edge listed");
        assert_eq!(
            node["state"],
            "up",
            "edge knocked out after {:?}: {node}",
            started.elapsed()
        );
        let (status, body) = http.get(&play).await;
        assert_eq!(status, 302, "/play for the real stream: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    real.assert_running();
    // The reports went out, trimmed to fit, and the trimming is counted.
    let trimmed = edge
        .metric("vantage_agent_report_trimmed_total", &[("part", "streams")])
        .await;
    assert!(trimmed >= 1.0, "no report was trimmed");
    eventually(
        Duration::from_secs(5),
        "viewer of the real stream",
        || async {
            let v = FlvViewer::start(&format!("{}/live/real.flv", edge.media_url()));
            v.wait_bytes(8 * 1024, Duration::from_secs(3))
                .await
                .map(|_| ())
        },
    )
    .await;
    trickle.abort();
}
