//! What a simulated agent says: ids, places, its Hello and the reports it sends
//! (deterministic per index).

use super::*;

pub(crate) fn node_id(idx: usize) -> String {
    format!("bench-{idx:05}")
}

pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Deterministic pseudo-random unit value for (idx, salt).
pub(crate) fn unit(idx: usize, salt: u64) -> f64 {
    (splitmix(idx as u64 ^ salt.rotate_left(32)) >> 11) as f64 / (1u64 << 53) as f64
}

/// A spread of locations over populated latitudes (never exactly 0,0).
pub(crate) fn coord(idx: usize) -> (f64, f64) {
    let lat = -40.0 + 100.0 * unit(idx, 1) + 0.001;
    let lon = -125.0 + 270.0 * unit(idx, 2) + 0.001;
    (lat, lon)
}

pub(crate) fn region(lon: f64) -> &'static str {
    if lon < -30.0 {
        "americas"
    } else if lon < 60.0 {
        "emea"
    } else {
        "apac"
    }
}

/// The simulated world's streams: `--streams` live channels published on
/// `--origins` origin agents (set once from the arguments).
#[derive(Debug, Clone, Copy)]
pub(crate) struct World {
    pub(crate) streams: usize,
    pub(crate) origins: usize,
}

pub(crate) static WORLD: std::sync::OnceLock<World> = std::sync::OnceLock::new();

fn world() -> World {
    WORLD.get().copied().unwrap_or(World {
        streams: 500,
        origins: 50,
    })
}

/// The channels agent `idx` relays (it subscribes to their directory
/// entries): one or two, never its own.
pub(crate) fn relayed(idx: usize, n: usize) -> Vec<usize> {
    let chans = channels(n);
    let mut out = Vec::new();
    for k in 0..1 + idx % 2 {
        let c = (splitmix(idx as u64 + k as u64 * 7919) as usize) % chans;
        if channel_origin(c, n) != idx && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// Live channels of the world (the fleet size does not change them).
pub(crate) fn channels(_n: usize) -> usize {
    world().streams.max(1)
}

/// The agent index of origin `o` (origins spread evenly over the fleet).
pub(crate) fn origin_agent(o: usize, n: usize) -> usize {
    let n = n.max(1);
    let origins = world().origins.clamp(1, n);
    (o % origins * (n / origins) + 5) % n
}

/// The agent publishing channel `c` (it is that stream's origin).
pub(crate) fn channel_origin(c: usize, n: usize) -> usize {
    origin_agent(c % world().origins.max(1), n)
}

pub(crate) fn hello(idx: usize, id: &str, token: &str) -> Hello {
    let (lat, lon) = coord(idx);
    Hello {
        node_id: id.to_owned(),
        protocol_version: PROTOCOL_VERSION,
        agent_version: "control-loop-bench/0".into(),
        region: region(lon).into(),
        lat,
        lon,
        capacity_mbps: 1_000.0,
        public_url: format!("http://127.0.0.1:{}/", 30_000 + idx % 30_000),
        capabilities: vec!["telemetry-v1".into(), "routes-v1".into()],
        route_version: 0,
        enrollment_token: token.into(),
        node_credential: String::new(),
        probe_addr: format!("127.0.0.1:{}", 20_000 + idx % 10_000),
        static_origins: if idx < 2 {
            vec![StaticOrigin {
                pattern: "live/*".into(),
                url: "http://127.0.0.1:9/{app}/{stream}".into(),
            }]
        } else {
            Vec::new()
        },
    }
}

pub(crate) fn km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1) = (a.0.to_radians(), a.1.to_radians());
    let (la2, lo2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6_371.0 * h.sqrt().asin()
}

/// The report an agent sends, before per-report noise: load, three path
/// measurements to peers, one or two streams.
pub(crate) fn report_template(idx: usize, n: usize) -> Report {
    let me = coord(idx);
    let paths = [1usize, 17, 257]
        .iter()
        .map(|d| (idx + d) % n.max(1))
        .filter(|&p| p != idx)
        .map(|p| {
            let rtt = 2.0 + km(me, coord(p)) / 100.0;
            PathMeasurement {
                target_node_id: node_id(p),
                target_addr: format!("127.0.0.1:{}", 20_000 + p % 10_000),
                rtt_ewma_ms: rtt,
                rtt_p50_ms: rtt,
                rtt_p95_ms: rtt * 1.2,
                loss: 0.001,
                jitter_ms: 1.5,
                samples: 20,
                last_success_age_ms: 500,
            }
        })
        .collect();
    let chans = channels(n);
    let mut streams = Vec::new();
    let own: Vec<usize> = (0..chans)
        .filter(|&c| channel_origin(c, n) == idx)
        .collect();
    for &c in &own {
        streams.push(StreamState {
            key: format!("live/ch{c}"),
            role: StreamRole::Origin as i32,
            upstream: String::new(),
            bitrate_kbps: 4_000.0,
            viewers: 20,
            gop_cache_ms: 2_000.0,
            ingest_lag_ms: 150.0,
            send_lag_p95_ms: 15.0,
        });
    }
    for (k, c) in relayed(idx, n).into_iter().enumerate() {
        streams.push(StreamState {
            key: format!("live/ch{c}"),
            role: StreamRole::Relay as i32,
            upstream: node_id(channel_origin(c, n)),
            bitrate_kbps: 4_000.0,
            viewers: 10 + (unit(idx, 3 + k as u64) * 190.0) as u32,
            gop_cache_ms: 2_000.0,
            ingest_lag_ms: 400.0,
            send_lag_p95_ms: 25.0,
        });
    }
    let viewers: u32 = streams
        .iter()
        .filter(|s| s.role == StreamRole::Relay as i32)
        .map(|s| s.viewers)
        .sum::<u32>()
        + 20 * own.len().min(2) as u32;
    Report {
        seq: 0,
        agent_time_ms: 0,
        route_version: 0,
        load: Some(Load {
            cpu: 0.2 + 0.4 * unit(idx, 4),
            mem_used_bytes: 3 << 30,
            mem_total_bytes: 8 << 30,
            egress_mbps: f64::from(viewers) * 4.0 * 0.5,
            ingress_mbps: 4.0 * streams.len() as f64,
            viewers,
            streams: streams.len() as u32,
        }),
        paths,
        streams,
        groups: Vec::new(),
        control_path: Some(ControlPath {
            rtt_ms: 0.3,
            lost_packets: 0,
            congestion_events: 0,
        }),
    }
}

/// Per-report noise: load and RTT drift as they would on a real edge.
pub(crate) fn refresh(
    r: &mut Report,
    base: &Report,
    rng: &mut StdRng,
    seq: u64,
    route_version: u64,
) {
    r.seq = seq;
    r.agent_time_ms = vantage_shared::clock::now_ms();
    r.route_version = route_version;
    if let (Some(l), Some(b)) = (r.load.as_mut(), base.load.as_ref()) {
        l.cpu = (b.cpu * rng.random_range(0.9..1.1)).clamp(0.0, 1.0);
        l.egress_mbps = b.egress_mbps * rng.random_range(0.95..1.05);
    }
    for (p, b) in r.paths.iter_mut().zip(&base.paths) {
        let f = rng.random_range(0.95..1.05);
        p.rtt_ewma_ms = b.rtt_ewma_ms * f;
        p.rtt_p50_ms = b.rtt_p50_ms * f;
        p.rtt_p95_ms = b.rtt_p95_ms * f;
    }
}
