//! Issue 16, item 6 (Must show 3): sim-to-real validation.
//!
//! One small scenario, `simulations/scenarios/sim-to-real.toml` (three
//! PoPs, viewers from four cities on the bundled last-mile data, one
//! HTTP-FLV stream, London's PoP dying at 30 s), run twice:
//!
//! - **sim**: `vantage-sim`'s engine with the `qoe` policy (the planning
//!   core the scheduler runs), seed of the scenario;
//! - **real**: the real scheduler, one real agent per PoP (Frankfurt's also
//!   holds the origin: the synthetic publisher pushes there), and one
//!   synthetic player per arrival of **the same workload** (the simulator's
//!   arrival generator, same seed: arrival time, city, session length,
//!   patience, last-mile line). Each player resolves through the scheduler
//!   (`/v1/resolve`, behind an impairment proxy with the scenario's
//!   `redirect_rtt_ms`), connects to the chosen agent through its own
//!   impairment proxy (the world's RTT between its city and that PoP plus
//!   `access_rtt_ms`; the rate TCP gets over that path's loss, capped by
//!   its last mile now — see docs/simulator.md, "Sim-to-real validation"),
//!   plays HTTP-FLV and models playback from the real arrival times of
//!   media (`vantage_tests::player`, the simulator's player parameters).
//!   London's agent is killed (SIGKILL) at 30 s. The scheduler gets the
//!   scenario's `[qoe.resolve]` and weights as `[resolve]` and `[weights]`
//!   (the scenario turns off what loopback cannot reproduce: per-group
//!   `TCP_INFO` measurements, which see the proxy, and the GOP-cache
//!   buffer term; see the scenario file).
//!
//! Compared: join time median (the real one without each session's
//! measured harness overhead — the time its connection answered after
//! `redirect_rtt_ms` + 2 RTTs: debug-build processes and proxy hops, which
//! the modelled world does not have; the raw median is printed too), stall share (sessions that started and
//! stalled at least once / sessions that started), join share, and per-PoP
//! load (share of viewers on each PoP, averaged over the seconds before and
//! after the event). Tolerances in [`JOIN_MEDIAN_REL`], [`STALL_SHARE_PP`],
//! [`LOAD_SHARE_PP`]; both tables are printed.
//!
//! No external tool is needed (the publisher is the built-in synthetic
//! FLV source), so the test never skips.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use vantage_shared::cmcd::Cmcd;
use vantage_shared::synth::SynthConfig;
use vantage_sim::arrivals::{Arrival, Arrivals, last_mile_mbps};
use vantage_sim::network::{path_loss, tcp_mbps};
use vantage_sim::policy::PolicyKind;
use vantage_sim::scenario::{EventSpec, Scenario};
use vantage_sim::world::World;
use vantage_tests::cluster::wait_all_up;
use vantage_tests::impair::{Impairment, Link, Options, RateLimit, TcpImpair};
use vantage_tests::player::{Playback, PlayerParams};
use vantage_tests::synth::SynthPublisher;
use vantage_tests::{Agent, Scheduler, eventually};

/// Join-time medians may differ by this share of the simulator's.
const JOIN_MEDIAN_REL: f64 = 0.20;
/// Stall shares may differ by this many percentage points.
const STALL_SHARE_PP: f64 = 5.0;
/// Each PoP's share of viewers (per phase) may differ by this many points.
const LOAD_SHARE_PP: f64 = 10.0;
/// Join shares may differ by this many points.
const JOIN_SHARE_PP: f64 = 3.0;

const STREAM: &str = "live/s2r";

fn scenario() -> (Scenario, World) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../simulations/scenarios/sim-to-real.toml");
    let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let w = World::build(&s).unwrap_or_else(|e| panic!("world: {e}"));
    (s, w)
}

/// One session's outcome, as both runs report it.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    join_ms: Option<f64>,
    stalls: u32,
    stall_ms: f64,
    watch_ms: f64,
    /// Real run: how much longer the first connection took to answer than
    /// the modelled `redirect_rtt_ms` + 2 RTTs (the harness's own cost:
    /// debug-build scheduler and agent, two proxy hops on loopback).
    overhead_ms: Option<f64>,
}

fn median(mut j: Vec<f64>) -> f64 {
    j.sort_by(f64::total_cmp);
    if j.is_empty() {
        return f64::NAN;
    }
    let m = j.len() / 2;
    if j.len() % 2 == 1 {
        j[m]
    } else {
        (j[m - 1] + j[m]) / 2.0
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
struct RunFigures {
    outcomes: Vec<Outcome>,
    /// Per PoP id: mean share of viewers (%) before and after the event.
    load: BTreeMap<String, (f64, f64)>,
}

impl RunFigures {
    fn join_median_ms(&self) -> f64 {
        median(self.outcomes.iter().filter_map(|o| o.join_ms).collect())
    }

    /// The median join time without the harness's own connection cost
    /// ([`Outcome::overhead_ms`], measured per session; 0 in the
    /// simulator): what the modelled world (RTTs, rates, player) gives.
    fn net_join_median_ms(&self) -> f64 {
        median(
            self.outcomes
                .iter()
                .filter_map(|o| Some(o.join_ms? - o.overhead_ms.unwrap_or(0.0).max(0.0)))
                .collect(),
        )
    }

    /// Join time at the 10th, 20th, ..., 90th percentile, ms.
    fn join_deciles(&self) -> Vec<f64> {
        let mut j: Vec<f64> = self.outcomes.iter().filter_map(|o| o.join_ms).collect();
        j.sort_by(f64::total_cmp);
        (1..10)
            .filter_map(|k| j.get(k * j.len() / 10).map(|x| x.round()))
            .collect()
    }

    fn started(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.join_ms.is_some())
    }

    fn join_share_pct(&self) -> f64 {
        100.0 * self.started().count() as f64 / self.outcomes.len().max(1) as f64
    }

    fn stall_share_pct(&self) -> f64 {
        let n = self.started().count().max(1) as f64;
        100.0 * self.started().filter(|o| o.stalls > 0).count() as f64 / n
    }

    fn rebuffer_ratio(&self) -> f64 {
        let (s, w) = self
            .started()
            .fold((0.0, 0.0), |(s, w), o| (s + o.stall_ms, w + o.watch_ms));
        if w > 0.0 { s / w } else { 0.0 }
    }
}

/// The phases load is compared over: from 5 s (past the first joins) to
/// the event, and from 3 s after it (past the reconnects) to the end.
fn phases(s: &Scenario) -> [(f64, f64); 2] {
    let event = event_at_s(s);
    [(5.0, event), (event + 3.0, s.duration_s)]
}

fn event_at_s(s: &Scenario) -> f64 {
    s.events
        .iter()
        .find_map(|e| match e.get_ref() {
            EventSpec::PopDown { at_s, .. } => Some(*at_s),
            _ => None,
        })
        .unwrap()
}

fn down_pop(s: &Scenario) -> String {
    s.events
        .iter()
        .find_map(|e| match e.get_ref() {
            EventSpec::PopDown { pop, .. } => Some(pop.clone()),
            _ => None,
        })
        .unwrap()
}

/// Per PoP, the mean share of viewers (%) in each phase, from samples
/// `(t_s, viewers per PoP)`.
fn load_shares(
    s: &Scenario,
    pops: &[String],
    samples: &[(f64, Vec<u32>)],
) -> BTreeMap<String, (f64, f64)> {
    let mut out = BTreeMap::new();
    let ph = phases(s);
    let mean_share = |(from, to): (f64, f64), i: usize| {
        let (mut mine, mut all) = (0.0, 0.0);
        for (t, v) in samples {
            if *t >= from && *t < to {
                mine += f64::from(v[i]);
                all += v.iter().map(|x| f64::from(*x)).sum::<f64>();
            }
        }
        if all > 0.0 { 100.0 * mine / all } else { 0.0 }
    };
    for (i, p) in pops.iter().enumerate() {
        out.insert(p.clone(), (mean_share(ph[0], i), mean_share(ph[1], i)));
    }
    out
}

fn pop_ids(s: &Scenario) -> Vec<String> {
    s.pops.iter().map(|p| p.get_ref().id.clone()).collect()
}

fn sim_run(s: &Scenario, w: &World) -> RunFigures {
    let seed = s.seeds[0];
    let r = vantage_sim::run_policy(s, w, PolicyKind::Qoe, seed, s.weights(), true);
    let outcomes = r
        .outcomes
        .iter()
        .map(|o| Outcome {
            join_ms: o.join_ms.is_finite().then_some(f64::from(o.join_ms)),
            stalls: u32::from(o.stalls),
            stall_ms: f64::from(o.stall_ms),
            watch_ms: f64::from(o.watch_ms),
            overhead_ms: None,
        })
        .collect();
    let series = r.series.unwrap();
    let pops = pop_ids(s);
    let idx: Vec<usize> = pops
        .iter()
        .map(|p| series.nodes.iter().position(|n| n == p).unwrap())
        .collect();
    let samples: Vec<(f64, Vec<u32>)> = series
        .t_s
        .iter()
        .enumerate()
        .map(|(k, t)| (*t, idx.iter().map(|&i| series.viewers[i][k]).collect()))
        .collect();
    RunFigures {
        outcomes,
        load: load_shares(s, &pops, &samples),
    }
}

/// What every real session shares.
struct Ctx {
    s: Scenario,
    w: World,
    t0: Instant,
    /// The scheduler's API behind the redirect-RTT proxy.
    resolve_base: String,
    /// Per PoP (scenario order): node id, world index, agent HTTP address.
    pops: Vec<(String, usize, SocketAddr)>,
    /// Viewers connected per PoP now (as the players see it).
    attached: Mutex<Vec<u32>>,
    client: reqwest::Client,
}

impl Ctx {
    fn now_ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }

    fn at(&self, scenario_ms: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(scenario_ms.max(0.0) / 1000.0)
    }

    fn attach(&self, pop: usize, delta: i32) {
        let mut g = self.attached.lock().unwrap();
        g[pop] = g[pop].saturating_add_signed(delta);
    }

    /// The ranked edges of `/v1/resolve` for a viewer at `(lat, lon)`.
    async fn resolve(&self, lat: f64, lon: f64) -> Vec<String> {
        let url = format!(
            "{}/v1/resolve?stream={STREAM}&lat={lat:.4}&lon={lon:.4}&n=3",
            self.resolve_base
        );
        let Ok(r) = self.client.get(&url).send().await else {
            return Vec::new();
        };
        let Ok(v) = r.json::<serde_json::Value>().await else {
            return Vec::new();
        };
        v["edges"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["node_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The impairment of `a`'s path to world node `node` at scenario time
    /// `now_ms`: the world's RTT plus the access RTT, split both ways, and
    /// the rate of one TCP connection over the path's loss (the Mathis
    /// bound the simulator uses), capped by the viewer's last mile now.
    fn path(&self, a: &Arrival, node: usize, now_ms: f64) -> (f64, Impairment) {
        let city = a.city as usize;
        let rtt = self.w.city_rtt(city, node) + self.s.network.access_rtt_ms;
        let loss = path_loss(&self.s.network, self.w.city_km(city, node));
        let mbps = tcp_mbps(rtt, loss).min(last_mile_mbps(&self.s, &self.w, a, now_ms as u64));
        let one_way = Duration::from_secs_f64(rtt / 2000.0);
        let rate = RateLimit::new((mbps * 1e6).max(8_000.0) as u64);
        let imp = Impairment {
            upstream: Link::new().delay(one_way),
            downstream: Link::new().delay(one_way).rate(rate),
        };
        (rtt, imp)
    }
}

/// One synthetic viewer: the arrival's session, played for real.
async fn session(ctx: Arc<Ctx>, a: Arrival) -> Outcome {
    let p = &ctx.s.player;
    let city = &ctx.w.cities[a.city as usize].city;
    let (lat, lon) = (city.coord.lat, city.coord.lon);
    let start = a.at_ms as f64;
    let end = (a.end_ms as f64).min(ctx.s.duration_s * 1000.0);
    let patience = start + f64::from(a.patience_ms);
    let mut pb = Playback::new(PlayerParams {
        startup_ms: p.startup_buffer_ms,
        resume_ms: p.resume_buffer_ms,
    });
    let rel = |ctx: &Ctx| ctx.now_ms() - start;
    let mut failed: Option<String> = None;
    let mut overhead_ms = None;
    tokio::time::sleep_until(ctx.at(start)).await;
    'session: while ctx.now_ms() < end {
        if !pb.joined() && ctx.now_ms() >= patience {
            break;
        }
        let ranked = ctx.resolve(lat, lon).await;
        let pick = ranked
            .iter()
            .find(|id| failed.as_deref() != Some(id.as_str()))
            .and_then(|id| ctx.pops.iter().position(|(p, _, _)| p == id));
        let Some(pop) = pick else {
            let retry = ctx.now_ms() + p.reconnect_timeout_ms;
            tokio::time::sleep_until(ctx.at(retry.min(end))).await;
            continue;
        };
        let (id, node, addr) = ctx.pops[pop].clone();
        let (rtt, imp) = ctx.path(&a, node, ctx.now_ms());
        let proxy = TcpImpair::start_with(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            addr,
            imp,
            Options::default().precise(false),
        )
        .await
        .unwrap_or_else(|e| panic!("viewer proxy: {e}"));
        // The proxy accepts at once; the TCP handshake over the path costs
        // one RTT, which the player waits out.
        tokio::time::sleep(Duration::from_secs_f64(rtt / 1000.0)).await;
        let url = format!(
            "http://{}/{STREAM}.flv?lat={lat:.4}&lon={lon:.4}",
            proxy.local_addr()
        );
        let resp = tokio::time::timeout(
            Duration::from_secs_f64(p.reconnect_timeout_ms / 1000.0),
            ctx.client.get(&url).send(),
        )
        .await;
        let mut resp = match resp {
            Ok(Ok(r)) if r.status().is_success() => r,
            _ => {
                // An edge that cannot be reached: wait, then the next one.
                failed = Some(id);
                let retry = ctx.now_ms() + p.reconnect_timeout_ms;
                while ctx.now_ms() < retry.min(end) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                pb.advance(rel(&ctx));
                continue;
            }
        };
        pb.connected(rel(&ctx));
        let conn_at = rel(&ctx);
        if overhead_ms.is_none() {
            overhead_ms = Some(conn_at - p.redirect_rtt_ms - 2.0 * rtt);
        }
        let (mut first_media, mut burst, mut logged) = (None::<f64>, 0.0, pb.joined());
        ctx.attach(pop, 1);
        let mut demux = vantage_shared::flv::Demuxer::new(16 << 20);
        let mut shape = tokio::time::interval(Duration::from_secs(1));
        // CMCD beacons (buffer length, starvation since the last one), once
        // per report interval, as a CMCD-enabled player sends them: the
        // simulator's agents report every viewer's buffer and stalls.
        let mut beacon = tokio::time::interval(Duration::from_millis(u64::from(
            ctx.s.telemetry.report_interval_ms,
        )));
        let mut stalls_seen = pb.stalls;
        let lost = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(ctx.at(end)) => break false,
                _ = tokio::time::sleep_until(ctx.at(patience)), if !pb.joined() => break false,
                _ = shape.tick() => {
                    let (_, imp) = ctx.path(&a, node, ctx.now_ms());
                    let _ = proxy.set(imp);
                }
                _ = beacon.tick() => {
                    pb.advance(rel(&ctx));
                    let c = Cmcd {
                        bl: Some((pb.buffer_ms() / 100.0).round() as u64 * 100),
                        bs: Some(pb.stalls > stalls_seen || !pb.playing() && pb.joined()),
                        sid: Some(format!("s2r-{}", a.at_ms)),
                        br: Some((ctx.w.bitrate_mbps * 1000.0) as u64),
                        ..Cmcd::default()
                    };
                    stalls_seen = pb.stalls;
                    let url = format!("http://{}/v1/cmcd?lat={lat:.4}&lon={lon:.4}", proxy.local_addr());
                    let client = ctx.client.clone();
                    tokio::spawn(async move {
                        let _ = client.post(url).body(c.encode()).timeout(Duration::from_secs(2)).send().await;
                    });
                }
                c = resp.chunk() => match c {
                    Ok(Some(b)) => {
                        let t = rel(&ctx);
                        let before = pb.stalls;
                        pb.advance(t);
                        if pb.stalls > before && std::env::var_os("S2R_DEBUG").is_some() {
                            eprintln!("STALL sess {} at {:.0} (scenario {:.0}) pop {id}", a.at_ms, t, t + start);
                        }
                        demux.push(&b);
                        while let Ok(Some(tag)) = demux.next_tag() {
                            if tag.kind != vantage_shared::flv::TagKind::Script {
                                pb.media(t, f64::from(tag.timestamp_ms));
                            }
                        }
                        if std::env::var_os("S2R_DEBUG").is_some() {
                            if first_media.is_none() && pb.buffer_ms() > 0.0 { first_media = Some(t); }
                            if let Some(f) = first_media && t <= f + 30.0 { burst = pb.buffer_ms(); }
                            if pb.joined() && !logged {
                                logged = true;
                                eprintln!("DBG sess {} conn {conn_at:.0} first {:.0} burst {burst:.0} join {:.0} rtt {rtt:.0} pop {id}", a.at_ms, first_media.unwrap_or(-1.0), pb.join_ms.unwrap_or(-1.0));
                            }
                        }
                    }
                    _ => break true,
                },
            }
        };
        ctx.attach(pop, -1);
        drop(resp);
        proxy.stop().await;
        if !lost {
            break 'session;
        }
        // The connection ended under the player: its buffer plays out
        // while it waits to reconnect elsewhere.
        failed = Some(id);
        let retry = ctx.now_ms() + p.reconnect_timeout_ms;
        tokio::time::sleep_until(ctx.at(retry.min(end))).await;
        pb.advance(rel(&ctx));
    }
    pb.advance((end.min(ctx.now_ms())) - start);
    if std::env::var_os("S2R_DEBUG").is_some() {
        eprintln!(
            "END sess {} stalls {} stall_ms {:.0} join {:?}",
            a.at_ms, pb.stalls, pb.stall_ms, pb.join_ms
        );
    }
    let watch_ms = pb.join_ms.map_or(0.0, |j| (end - start - j).max(0.0));
    Outcome {
        join_ms: pb.join_ms,
        stalls: pb.stalls,
        stall_ms: pb.stall_ms,
        watch_ms,
        overhead_ms,
    }
}

/// The scheduler's config: the per-client limits of `/v1/resolve` lifted
/// (every synthetic viewer comes from 127.0.0.1), and the scenario's
/// `[qoe.resolve]` routing tunables as its `[resolve]` keys (the same
/// names) and the scenario's weights as `[weights]`, so both runs route
/// with the same settings.
fn scheduler_config(s: &Scenario) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new()
        .prefix("vantage-s2r-")
        .suffix(".toml")
        .tempfile()
        .unwrap();
    let mut text = String::from(
        "[limits]\nrate_per_s = 1000000.0\nburst = 1000000.0\nreserve_per_s = 1000000.0\nreserve_burst = 1000000.0\n\n[resolve]\n",
    );
    let table = |text: &mut String, v: serde_json::Value| {
        for (k, v) in v.as_object().unwrap() {
            text.push_str(&format!("{k} = {v}\n"));
        }
    };
    table(
        &mut text,
        serde_json::to_value(s.qoe.resolve.unwrap_or_default()).unwrap(),
    );
    text.push_str("\n[weights]\n");
    table(&mut text, serde_json::to_value(s.weights()).unwrap());
    std::fs::write(file.path(), text).unwrap();
    file
}

async fn real_run(s: &Scenario, w: &World) -> RunFigures {
    // Removed when the run ends (dropped at the end of this function).
    let config = scheduler_config(s);
    let sched = Scheduler::builder()
        .arg("--config")
        .arg(config.path().display().to_string())
        .report_interval_ms(u64::from(s.telemetry.report_interval_ms))
        .start()
        .await;
    let pops = pop_ids(s);
    let mut agents: Vec<Agent> = Vec::new();
    for p in &s.pops {
        let p = p.get_ref();
        let node = w.nodes.iter().find(|n| n.id == p.id).unwrap();
        agents.push(
            Agent::builder(&p.id, &sched)
                .region(&p.id)
                .at(node.coord.lat, node.coord.lon)
                .capacity_mbps(node.capacity_mbps)
                .start()
                .await,
        );
    }
    let ids: Vec<&str> = pops.iter().map(String::as_str).collect();
    wait_all_up(&sched, &ids, Duration::from_secs(20)).await;
    // The origin: the stream is published to the PoP nearest the
    // scenario's origin (Frankfurt's, at the same place).
    let origin = &w.nodes[usize::from(w.stream_origin[0])];
    let origin_pop = pops
        .iter()
        .position(|p| {
            let n = w.nodes.iter().find(|n| &n.id == p).unwrap();
            (n.coord.lat - origin.coord.lat).abs() < 1e-6
                && (n.coord.lon - origin.coord.lon).abs() < 1e-6
        })
        .unwrap_or_else(|| panic!("a PoP at the origin's place"));
    // The scenario's bit rate and key-frame interval.
    let cfg = SynthConfig::default();
    let publisher = SynthPublisher::start_config(
        SocketAddr::from(([127, 0, 0, 1], agents[origin_pop].ports().http)),
        &format!("/{STREAM}.flv"),
        SynthConfig {
            bitrate_kbps: (w.bitrate_mbps * 1000.0) as u32,
            gop_frames: (w.gop_ms * f64::from(cfg.fps) / 1000.0).round() as u32,
            ..cfg
        },
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    eventually(Duration::from_secs(20), "the stream resolvable", || {
        let url = format!(
            "{}/v1/resolve?stream={STREAM}&lat=50&lon=8",
            sched.api_url()
        );
        let c = client.clone();
        async move {
            let r = c.get(&url).send().await.map_err(|e| e.to_string())?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(r.status().to_string())
            }
        }
    })
    .await;
    publisher.assert_running();
    // The scheduler's front: the /play (here /v1/resolve) round trip.
    let sched_addr: SocketAddr = sched
        .api_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let front = TcpImpair::start_with(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        sched_addr,
        Impairment::both(
            Link::new().delay(Duration::from_secs_f64(s.player.redirect_rtt_ms / 2000.0)),
        ),
        Options::default().precise(false),
    )
    .await
    .unwrap();

    // The workload: the simulator's own arrivals, same seed.
    let mut workload = Arrivals::new(s, w, s.seeds[0]);
    let mut arrivals = Vec::new();
    while let Some(a) = workload.pop() {
        assert!(!a.hls, "the scenario plays HTTP-FLV only");
        arrivals.push(a);
    }
    let ctx = Arc::new(Ctx {
        s: s.clone(),
        w: World::build(s).unwrap(),
        t0: Instant::now() + Duration::from_millis(200),
        resolve_base: format!("http://{}", front.local_addr()),
        pops: pops
            .iter()
            .zip(&agents)
            .map(|(p, ag)| {
                let node = w.nodes.iter().position(|n| &n.id == p).unwrap();
                (
                    p.clone(),
                    node,
                    SocketAddr::from(([127, 0, 0, 1], ag.ports().http)),
                )
            })
            .collect(),
        attached: Mutex::new(vec![0; pops.len()]),
        client: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    });
    let tasks: Vec<_> = arrivals
        .iter()
        .map(|a| tokio::spawn(session(ctx.clone(), *a)))
        .collect();

    // Load samples every 200 ms (the simulator's series step here) and the
    // event, on the scenario clock.
    let event_ms = event_at_s(s) * 1000.0;
    let down = down_pop(s);
    let down_idx = pops.iter().position(|p| *p == down).unwrap();
    let mut samples: Vec<(f64, Vec<u32>)> = Vec::new();
    let mut killed = false;
    let end_ms = s.duration_s * 1000.0;
    let mut k = 1.0;
    while k * 200.0 <= end_ms {
        let t = k * 200.0;
        if !killed && t > event_ms {
            tokio::time::sleep_until(ctx.at(event_ms)).await;
            agents[down_idx].kill();
            killed = true;
        }
        tokio::time::sleep_until(ctx.at(t)).await;
        samples.push((t / 1000.0, ctx.attached.lock().unwrap().clone()));
        k += 1.0;
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    publisher.stop();
    front.stop().await;
    RunFigures {
        outcomes,
        load: load_shares(s, &pops, &samples),
    }
}

fn table(name: &str, r: &RunFigures, pops: &[String]) -> String {
    let mut out = format!(
        "{name:<5} sessions {:>3}  joined {:>5.1} %  join p50 {:>6.0} ms  stall share {:>5.1} %  rebuffer {:.4}  load before/after:",
        r.outcomes.len(),
        r.join_share_pct(),
        r.join_median_ms(),
        r.stall_share_pct(),
        r.rebuffer_ratio(),
    );
    for p in pops {
        let (b, a) = r.load[p];
        out.push_str(&format!("  {p} {b:>5.1}/{a:>5.1} %"));
    }
    out.push_str(&format!(
        "\n      join deciles (ms): {:?}",
        r.join_deciles()
    ));
    let mut over: Vec<f64> = r.outcomes.iter().filter_map(|o| o.overhead_ms).collect();
    if !over.is_empty() {
        over.sort_by(f64::total_cmp);
        out.push_str(&format!(
            "\n      harness overhead of a connection (ms, not in the model): p50 {:.0}, p90 {:.0}",
            over[over.len() / 2],
            over[over.len() * 9 / 10]
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_and_real_runs_agree() {
    let (s, w) = scenario();
    let sim = sim_run(&s, &w);
    let real = real_run(&s, &w).await;
    let pops = pop_ids(&s);
    println!("{}", table("sim", &sim, &pops));
    println!("{}", table("real", &real, &pops));
    assert_eq!(sim.outcomes.len(), real.outcomes.len(), "same workload");

    let (js, jr, jr_raw) = (
        sim.join_median_ms(),
        real.net_join_median_ms(),
        real.join_median_ms(),
    );
    let rel = (jr - js).abs() / js;
    println!(
        "join p50: sim {js:.0} ms, real {jr:.0} ms without the harness overhead ({jr_raw:.0} ms as measured, {:.1} % apart), {:.1} % apart (tolerance {:.0} %)",
        100.0 * (jr_raw - js).abs() / js,
        100.0 * rel,
        100.0 * JOIN_MEDIAN_REL
    );
    let (ss, sr) = (sim.stall_share_pct(), real.stall_share_pct());
    println!(
        "stall share: sim {ss:.1} %, real {sr:.1} %, {:.1} points apart (tolerance {STALL_SHARE_PP})",
        (sr - ss).abs()
    );
    let (qs, qr) = (sim.join_share_pct(), real.join_share_pct());
    let mut worst_load: f64 = 0.0;
    for p in &pops {
        let (a, b) = (sim.load[p], real.load[p]);
        worst_load = worst_load.max((a.0 - b.0).abs()).max((a.1 - b.1).abs());
    }
    println!(
        "per-PoP load share: at most {worst_load:.1} points apart (tolerance {LOAD_SHARE_PP})"
    );

    assert!(
        rel <= JOIN_MEDIAN_REL,
        "join p50: sim {js:.0} ms, real {jr:.0} ms"
    );
    assert!(
        (sr - ss).abs() <= STALL_SHARE_PP,
        "stall share: sim {ss:.1} %, real {sr:.1} %"
    );
    assert!(
        (qr - qs).abs() <= JOIN_SHARE_PP,
        "join share: sim {qs:.1} %, real {qr:.1} %"
    );
    assert!(
        worst_load <= LOAD_SHARE_PP,
        "per-PoP load: sim {:?}, real {:?}",
        sim.load,
        real.load
    );
    // The event moved load: the dead PoP serves nobody after it, in both.
    let down = down_pop(&s);
    assert!(sim.load[&down].0 > 10.0 && real.load[&down].0 > 10.0);
    assert!(sim.load[&down].1 < 1.0 && real.load[&down].1 < 1.0);
}
