//! The demo's media traffic: one synthetic publisher (the built-in
//! `vantage_shared::synth` generator, published in real time over RTMP)
//! and a bounded trickle of synthetic viewers (short HTTP-FLV GETs with CMCD
//! in the query and CMCD beacons while they play, so buffer figures show on
//! the dashboard). Everything stops when the token is cancelled.

use rand::Rng;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use vantage_shared::cmcd::Cmcd;
use vantage_shared::synth::{Synth, SynthConfig};
use vantage_tests::rtmp::RtmpPublisher;

/// The demo stream's path on every agent.
pub const STREAM_PATH: &str = "/live/demo.flv";

/// The synthetic picture: 640x360, 25 fps, a key frame every second.
pub fn synth_config() -> SynthConfig {
    SynthConfig {
        bitrate_kbps: 800,
        fps: 25,
        gop_frames: 25,
        audio: true,
        width: 640,
        height: 360,
    }
}

/// Publishes the synthetic stream to `addr` (an agent's RTMP port) in real
/// time over RTMP, as OBS would (`rtmp://agent/live`, stream key `demo`),
/// reconnecting (1 s apart) when the connection ends, until `stop`.
pub async fn publish(addr: SocketAddr, stop: CancellationToken) {
    while !stop.is_cancelled() {
        match publish_once(addr, &stop).await {
            Ok(()) => {}
            Err(e) => eprintln!("demo publisher: {e}; reconnecting"),
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn publish_once(addr: SocketAddr, stop: &CancellationToken) -> Result<(), String> {
    let mut publisher = RtmpPublisher::start(addr, "live", "demo").await?;
    let mut synth = Synth::new(synth_config());
    publisher.send_tags(&synth.header_tags()).await?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if publisher.closed() {
            return Err("the agent closed the RTMP connection".into());
        }
        let tags = synth.next_tags(started.elapsed().as_millis() as u32);
        if !tags.is_empty() {
            publisher.send_tags(&tags).await?;
        }
    }
}

/// One edge viewers may watch: its media URL and where its viewers live.
#[derive(Debug, Clone)]
pub struct Edge {
    pub media_url: String,
    pub lat: f64,
    pub lon: f64,
}

/// Keeps up to `max` viewers watching: every second, while fewer play, one
/// more starts on a random edge and watches 5–20 s. Until `stop`.
pub async fn viewers(edges: Vec<Edge>, max: usize, stop: CancellationToken) {
    if edges.is_empty() {
        return;
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_default();
    let mut playing = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
            Some(_) = playing.join_next(), if !playing.is_empty() => continue,
        }
        if playing.len() >= max {
            continue;
        }
        n += 1;
        let (edge, secs, bl) = {
            let mut rng = rand::rng();
            let edge = edges[rng.random_range(0..edges.len())].clone();
            (
                edge,
                rng.random_range(5..=20u64),
                rng.random_range(800..3000u64),
            )
        };
        playing.spawn(watch(
            client.clone(),
            edge,
            format!("demo-{n}"),
            Duration::from_secs(secs),
            bl,
            stop.clone(),
        ));
    }
    // Viewers see `stop` too; this only bounds the wait.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while playing.join_next().await.is_some() {}
    })
    .await;
    playing.abort_all();
}

/// One viewer: GET the stream with CMCD (buffer length `bl` ms, session id
/// `sid`, position near the edge), read it for `for_how_long`, and send a
/// CMCD beacon of its session (`X-Vantage-Session`) every 2 s with a buffer
/// that wanders a little.
async fn watch(
    client: reqwest::Client,
    edge: Edge,
    sid: String,
    for_how_long: Duration,
    mut bl: u64,
    stop: CancellationToken,
) {
    let (lat, lon) = {
        let mut rng = rand::rng();
        (
            edge.lat + rng.random_range(-0.5..0.5),
            edge.lon + rng.random_range(-0.5..0.5),
        )
    };
    let cmcd = |bl: u64, sid: &str| Cmcd {
        bl: Some(bl),
        br: Some(u64::from(synth_config().bitrate_kbps)),
        mtp: Some(20_000),
        sid: Some(sid.to_owned()),
        ..Cmcd::default()
    };
    let url = format!(
        "{}{STREAM_PATH}?lat={lat:.3}&lon={lon:.3}&CMCD={}",
        edge.media_url,
        cmcd(bl, &sid).encode_query_value()
    );
    let Ok(mut resp) = client.get(&url).send().await else {
        return;
    };
    if !resp.status().is_success() {
        return;
    }
    // Beacons name the session the edge gave this play (its answer's
    // X-Vantage-Session: the sid offered, unless the edge chose another);
    // the edge counts them for the group the play was located in.
    let sid = resp
        .headers()
        .get("x-vantage-session")
        .and_then(|v| v.to_str().ok())
        .map_or(sid, str::to_owned);
    let deadline = tokio::time::Instant::now() + for_how_long;
    let mut beacon = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            c = resp.chunk() => match c {
                Ok(Some(_)) => {}
                _ => break,
            },
            _ = beacon.tick() => {
                let drift = rand::rng().random_range(-300i64..=300);
                bl = bl.saturating_add_signed(drift).clamp(200, 6000);
                let _ = client
                    .post(format!("{}/v1/cmcd", edge.media_url))
                    .body(cmcd(bl, &sid).encode())
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
            }
        }
    }
}

/// Waits (up to `timeout`) until `url` answers 200 and the first bytes are
/// an FLV header.
pub async fn wait_playable(url: &str, timeout: Duration) -> bool {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Ok(mut r)) =
            tokio::time::timeout(Duration::from_secs(2), client.get(url).send()).await
            && r.status().is_success()
            && let Ok(Ok(Some(b))) = tokio::time::timeout(Duration::from_secs(2), r.chunk()).await
            && b.starts_with(b"FLV")
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
