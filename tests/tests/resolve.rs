//! Viewer request routing end to end (issue 5): the real scheduler and
//! agents on loopback, `GET /v1/resolve` and `GET /play/...` over HTTP.
//!
//! 1. Edges at Paris, Frankfurt, Tokyo and São Paulo: Lyon, Osaka and Rio
//!    get the nearby edge first, explained as "modelled".
//! 2. Lyon viewers stalling on Paris (CMCD `bs`, real agent reports) move
//!    Lyon's answers to Frankfurt; Paris and Osaka viewers are unchanged.
//! 3. An edge near its capacity limit gets no new viewers; a drained edge
//!    never appears; nothing eligible is a 503 with `Retry-After`.
//! 4. 1,000 resolves from one group over three near-equal edges: none gets
//!    more than half.
//! 5. A client IP in the MaxMind test database resolves like its location;
//!    the trusted location header works too.
//! 6. `ffmpeg -i http://scheduler/play/live/x.flv` follows the 302 and plays
//!    from an agent.
//! 7. Bad parameters get 400 JSON errors; an unserved stream is a 404.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vantage_tests::cluster::wait_all_up;
use vantage_tests::media::{Publisher, tool, wait_routed_through};
use vantage_tests::synth::{FlvViewer, SynthPublisher};
use vantage_tests::{Agent, Scheduler, eventually};

/// A config file lifting the per-client limits of `/v1/resolve` and
/// `/play` (these tests play many viewers from one address; the limits
/// have their own test, security_resolve).
fn no_client_limits() -> String {
    let path = std::env::temp_dir().join(format!(
        "vantage-resolve-limits-{}.toml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "[limits]\nrate_per_s = 1000000.0\nburst = 1000000.0\nreserve_per_s = 1000000.0\nreserve_burst = 1000000.0\n",
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path.display().to_string()
}

const PARIS: (f64, f64) = (48.8566, 2.3522);
const FRANKFURT: (f64, f64) = (50.1109, 8.6821);
const TOKYO: (f64, f64) = (35.6762, 139.6503);
const SAO_PAULO: (f64, f64) = (-23.5505, -46.6333);
const LYON: (f64, f64) = (45.764, 4.8357);
const OSAKA: (f64, f64) = (34.6937, 135.5023);
const RIO: (f64, f64) = (-22.9068, -43.1729);
/// A static origin that makes every `live/*` stream known without media.
const NO_MEDIA_ORIGIN: &str = "http://127.0.0.1:9/{app}/{stream}.flv";

fn geoip(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/geoip")
        .join(name)
        .display()
        .to_string()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

async fn resolve(s: &Scheduler, query: &str) -> (u16, Value) {
    s.get(&format!("/v1/resolve?{query}")).await
}

fn at(c: (f64, f64)) -> String {
    format!("lat={}&lon={}", c.0, c.1)
}

fn first_edge(v: &Value) -> Option<&str> {
    v["edges"].get(0)?["node_id"].as_str()
}

fn edge<'a>(v: &'a Value, id: &str) -> Option<&'a Value> {
    v["edges"].as_array()?.iter().find(|e| e["node_id"] == id)
}

fn term<'a>(edge: &'a Value, name: &str) -> &'a Value {
    edge["terms"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == name))
        .unwrap_or(&Value::Null)
}

/// Waits until `stream` resolves for a viewer at `c` (nodes up, snapshot built).
async fn wait_resolvable(s: &Scheduler, stream: &str, c: (f64, f64), want_edges: usize) -> Value {
    eventually(
        Duration::from_secs(15),
        &format!("{stream} resolvable with {want_edges} edges"),
        || async {
            let (st, v) = resolve(s, &format!("stream={stream}&{}&n=10", at(c))).await;
            match v["edges"].as_array() {
                Some(e) if st == 200 && e.len() >= want_edges => Ok(v),
                _ => Err((st, v)),
            }
        },
    )
    .await
}

/// The four-city world of must-show 1 and 2. Exploration is off so answers
/// are deterministic.
async fn four_cities(report_ms: u64) -> (Scheduler, Vec<Agent>) {
    let s = Scheduler::builder()
        .arg("--config")
        .arg(no_client_limits())
        .report_interval_ms(report_ms)
        .arg("--exploration-share")
        .arg("0")
        .start()
        .await;
    let mut agents = Vec::new();
    for (id, c) in [
        ("par", PARIS),
        ("fra", FRANKFURT),
        ("tyo", TOKYO),
        ("sao", SAO_PAULO),
    ] {
        let b = Agent::builder(id, &s).region(id).at(c.0, c.1);
        let b = if id == "tyo" {
            b.origin("static/*", NO_MEDIA_ORIGIN)
        } else {
            b
        };
        agents.push(b.start().await);
    }
    wait_all_up(&s, &["par", "fra", "tyo", "sao"], Duration::from_secs(20)).await;
    (s, agents)
}

/// Must show 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nearby_edge_first_with_a_modelled_breakdown() {
    let (s, _agents) = four_cities(1000).await;
    wait_resolvable(&s, "static/x", LYON, 4).await;
    for (city, c, want) in [
        ("Lyon", LYON, "par"),
        ("Osaka", OSAKA, "tyo"),
        ("Rio", RIO, "sao"),
    ] {
        let (st, v) = resolve(&s, &format!("stream=static/x&{}&n=4", at(c))).await;
        assert_eq!(st, 200, "{v}");
        eprintln!(
            "{city}: {:?}",
            v["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["node_id"].clone(), e["score"].clone()))
                .collect::<Vec<_>>()
        );
        assert_eq!(first_edge(&v), Some(want), "{city}: {v}");
        assert_eq!(v["edges"].as_array().map(Vec::len), Some(4), "{v}");
        let e = &v["edges"][0];
        assert_eq!(e["basis"], "modelled", "{city}: {e}");
        assert_eq!(term(e, "latency")["source"], "modelled", "{e}");
        assert_eq!(term(e, "distance")["source"], "modelled", "{e}");
        assert_ne!(term(e, "buffer")["source"], "measured", "{e}");
        let sum: f64 = e["terms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["contribution"].as_f64().unwrap())
            .sum();
        assert!((sum - e["score"].as_f64().unwrap()).abs() < 1e-9, "{e}");
        assert!(
            e["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("http://127.0.0.1:") && u.ends_with("/static/x.flv")),
            "{e}"
        );
        assert_eq!(v["location"]["source"], "query");
        // Scores ascend after the first (no exploration, no near-equal band here).
        let scores: Vec<f64> = v["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] <= w[1]), "{scores:?}");
    }
}

/// One short HTTP-FLV play with CMCD from a viewer at `c`: starts, reads a
/// little, goes away.
async fn short_play(client: &reqwest::Client, agent: &Agent, c: (f64, f64), cmcd: &str) {
    let url = format!(
        "{}/live/x.flv?{}&CMCD={}",
        agent.media_url(),
        at(c),
        cmcd.replace('=', "%3D").replace(',', "%2C")
    );
    let mut r = client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    let _ = tokio::time::timeout(Duration::from_millis(300), r.chunk()).await;
}

/// Must show 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_in_one_group_move_only_that_group() {
    let (s, agents) = four_cities(500).await;
    let par = &agents[0];
    let publisher = SynthPublisher::start(
        format!("127.0.0.1:{}", par.ports().http).parse().unwrap(),
        "/live/x.flv",
        500,
    );
    let before = wait_resolvable(&s, "live/x", LYON, 4).await;
    assert_eq!(first_edge(&before), Some("par"), "{before}");
    let paris_before = resolve(&s, &format!("stream=live/x&{}", at(PARIS))).await.1;
    let osaka_before = resolve(&s, &format!("stream=live/x&{}", at(OSAKA))).await.1;
    assert_eq!(first_edge(&paris_before), Some("par"));
    assert_eq!(first_edge(&osaka_before), Some("tyo"));

    // Lyon viewers on Paris: tiny buffers and buffer starvation. Paris
    // viewers on Paris: healthy.
    let client = reqwest::Client::new();
    let started = Instant::now();
    let moved = eventually(
        Duration::from_secs(30),
        "Lyon's answer moves off Paris",
        || {
            let client = client.clone();
            let s = &s;
            async move {
                short_play(&client, par, LYON, "bl=100,bs").await;
                short_play(&client, par, PARIS, "bl=3000").await;
                let (_, v) = resolve(s, &format!("stream=live/x&{}&n=4", at(LYON))).await;
                match first_edge(&v) {
                    Some("par") | None => Err(v),
                    Some(_) => Ok(v),
                }
            }
        },
    )
    .await;
    publisher.assert_running();
    eprintln!("Lyon moved after {:?}: {moved}", started.elapsed());
    assert_eq!(first_edge(&moved), Some("fra"), "{moved}");
    assert_eq!(moved["group"], "u05k");
    let p = edge(&moved, "par").unwrap_or_else(|| panic!("par still listed: {moved}"));
    assert_eq!(p["basis"], "measured", "{p}");
    assert_eq!(term(p, "buffer")["source"], "measured", "{p}");
    assert!(p["group_samples"].as_f64().unwrap() >= 5.0, "{p}");
    assert!(
        term(p, "buffer")["contribution"].as_f64().unwrap() > 0.1,
        "stalls weigh on Paris's buffer term: {p}"
    );
    // The other groups are unchanged: Paris viewers (healthy data) still get
    // Paris, Osaka still Tokyo.
    let paris_after = resolve(&s, &format!("stream=live/x&{}", at(PARIS))).await.1;
    let osaka_after = resolve(&s, &format!("stream=live/x&{}", at(OSAKA))).await.1;
    assert_eq!(first_edge(&paris_after), Some("par"), "{paris_after}");
    assert_eq!(first_edge(&osaka_after), Some("tyo"), "{osaka_after}");
    assert_eq!(osaka_after["edges"][0]["basis"], "modelled");
    publisher.stop();
}

/// Must show 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_edges_get_no_viewers_and_drained_edges_never_appear() {
    let s = Scheduler::builder()
        .arg("--config")
        .arg(no_client_limits())
        .report_interval_ms(500)
        .arg("--exploration-share")
        .arg("0")
        .start()
        .await;
    // "hot" is in Paris with 1.2 Mbps of capacity; one 1 Mbps viewer takes
    // it to ~85 %, and a second would cross the 95 % limit.
    let hot = Agent::builder("hot", &s)
        .at(PARIS.0, PARIS.1)
        .capacity_mbps(1.2)
        .start()
        .await;
    let fra = Agent::builder("fra", &s)
        .at(FRANKFURT.0, FRANKFURT.1)
        .start()
        .await;
    let tyo = Agent::builder("tyo", &s).at(TOKYO.0, TOKYO.1).start().await;
    wait_all_up(&s, &["hot", "fra", "tyo"], Duration::from_secs(20)).await;
    let publisher = SynthPublisher::start(
        format!("127.0.0.1:{}", hot.ports().http).parse().unwrap(),
        "/live/x.flv",
        1000,
    );
    let before = wait_resolvable(&s, "live/x", PARIS, 3).await;
    assert_eq!(first_edge(&before), Some("hot"), "{before}");

    let viewer = FlvViewer::start(&format!("{}/live/x.flv", hot.media_url()));
    viewer
        .wait_bytes(50_000, Duration::from_secs(10))
        .await
        .unwrap_or_else(|s| panic!("viewer on hot: {s:?}"));
    let util = eventually(
        Duration::from_secs(15),
        "hot reports its egress near capacity",
        || async {
            let n = s.node("hot").await.unwrap_or_default();
            let u = n["load"]["utilisation"].as_f64().unwrap_or(0.0);
            if u > 0.6 {
                Ok(u)
            } else {
                Err(n["load"].clone())
            }
        },
    )
    .await;
    eprintln!("hot utilisation {util:.2}");
    // Two more reports: whatever the resolver itself assigned to hot before
    // (the load accounting) has expired; what keeps hot out now is the load
    // its reports show.
    let reports = |n: &Value| n["reports"].as_u64().unwrap_or(0);
    let r0 = reports(&s.node("hot").await.unwrap_or_default());
    eventually(
        Duration::from_secs(5),
        "two more reports from hot",
        || async {
            let n = s.node("hot").await.unwrap_or_default();
            if reports(&n) >= r0 + 2 {
                Ok(())
            } else {
                Err(reports(&n))
            }
        },
    )
    .await;
    // Once its report shows the load, no new viewer goes there.
    eventually(Duration::from_secs(5), "hot leaves the answers", || async {
        let (_, v) = resolve(&s, &format!("stream=live/x&{}&n=3", at(PARIS))).await;
        if edge(&v, "hot").is_none() {
            Ok(())
        } else {
            Err(v)
        }
    })
    .await;
    for _ in 0..50 {
        let (st, v) = resolve(&s, &format!("stream=live/x&{}&n=3", at(PARIS))).await;
        assert_eq!(st, 200, "{v}");
        assert!(edge(&v, "hot").is_none(), "hot is over its limit: {v}");
        assert_eq!(first_edge(&v), Some("fra"), "{v}");
    }

    // Drain Frankfurt: never listed again.
    let (st, d) = s.post("/v1/nodes/fra/drain").await;
    assert_eq!(st, 200, "{d}");
    for _ in 0..100 {
        let (st, v) = resolve(&s, &format!("stream=live/x&{}&n=3", at(FRANKFURT))).await;
        assert_eq!(st, 200, "{v}");
        assert!(edge(&v, "fra").is_none(), "drained fra listed: {v}");
        assert_eq!(first_edge(&v), Some("tyo"), "{v}");
    }
    // Nothing eligible: a clear 503 with Retry-After.
    let (st, d) = s.post("/v1/nodes/tyo/drain").await;
    assert_eq!(st, 200, "{d}");
    let r = reqwest::get(format!(
        "{}/v1/resolve?stream=live/x&{}",
        s.api_url(),
        at(PARIS)
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    assert_eq!(retry, Some(5));
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no eligible edge")),
        "{body}"
    );
    let r = no_redirects()
        .get(format!("{}/play/live/x.flv", s.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    publisher.stop();
    drop(viewer);
    drop((hot, fra, tyo));
}

/// Must show 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_group_spreads_over_near_equal_edges() {
    let s = Scheduler::builder()
        .arg("--config")
        .arg(no_client_limits())
        .start()
        .await;
    let mut agents = Vec::new();
    for id in ["p1", "p2", "p3"] {
        let b = Agent::builder(id, &s)
            .at(PARIS.0, PARIS.1)
            .capacity_mbps(100_000.0);
        let b = if id == "p1" {
            b.origin("live/*", NO_MEDIA_ORIGIN)
        } else {
            b
        };
        agents.push(b.start().await);
    }
    wait_all_up(&s, &["p1", "p2", "p3"], Duration::from_secs(20)).await;
    wait_resolvable(&s, "live/x", LYON, 3).await;
    let http = vantage_tests::http::Http::new();
    let url = format!("{}/v1/resolve?stream=live/x&{}&n=1", s.api_url(), at(LYON));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut decisions: BTreeMap<String, usize> = BTreeMap::new();
    let started = Instant::now();
    for _ in 0..1000 {
        let (st, v) = http.get(&url).await;
        assert_eq!(st, 200, "{v}");
        *counts
            .entry(first_edge(&v).unwrap().to_owned())
            .or_default() += 1;
        *decisions
            .entry(v["decision"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    eprintln!(
        "1000 resolves in {:?}: {counts:?}, decisions {decisions:?}",
        started.elapsed()
    );
    assert_eq!(counts.values().sum::<usize>(), 1000);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (id, n) in &counts {
        assert!(*n <= 500, "{id} got {n} of 1000: {counts:?}");
    }
    drop(agents);
}

/// Must show 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ip_resolves_like_its_location() {
    let s = Scheduler::builder()
        .arg("--config")
        .arg(no_client_limits())
        .arg("--exploration-share")
        .arg("0")
        .arg("--geoip-city")
        .arg(geoip("GeoLite2-City-Test.mmdb"))
        .arg("--geoip-asn")
        .arg(geoip("GeoLite2-ASN-Test.mmdb"))
        .arg("--location-header")
        .arg("x-client-geo")
        .start()
        .await;
    let mut agents = Vec::new();
    for (id, c) in [
        ("par", PARIS),
        ("fra", FRANKFURT),
        ("tyo", TOKYO),
        ("sao", SAO_PAULO),
    ] {
        agents.push(
            Agent::builder(id, &s)
                .at(c.0, c.1)
                .origin("live/*", NO_MEDIA_ORIGIN)
                .start()
                .await,
        );
    }
    wait_all_up(&s, &["par", "fra", "tyo", "sao"], Duration::from_secs(20)).await;
    wait_resolvable(&s, "live/x", LYON, 4).await;
    // 81.2.69.142 is London in the test database; 89.160.20.112 is
    // Linköping, AS29518 in the ASN one.
    for (ip, want_first) in [("81.2.69.142", "par"), ("89.160.20.112", "fra")] {
        let (st, by_ip) = resolve(&s, &format!("stream=live/x&ip={ip}&n=4")).await;
        assert_eq!(st, 200, "{by_ip}");
        let loc = &by_ip["location"];
        assert_eq!(loc["source"], "geoip", "{by_ip}");
        let (lat, lon) = (loc["lat"].as_f64().unwrap(), loc["lon"].as_f64().unwrap());
        let (_, by_coord) = resolve(&s, &format!("stream=live/x&lat={lat}&lon={lon}&n=4")).await;
        eprintln!(
            "{ip} → ({lat}, {lon}) group {}: {}",
            by_ip["group"],
            first_edge(&by_ip).unwrap()
        );
        assert_eq!(first_edge(&by_ip), Some(want_first), "{by_ip}");
        assert_eq!(first_edge(&by_ip), first_edge(&by_coord));
        let ids = |v: &Value| -> Vec<String> {
            v["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["node_id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids(&by_ip), ids(&by_coord));
        // Same inputs but the load the first answer itself assigned.
        for t in ["latency", "distance"] {
            assert_eq!(
                term(&by_ip["edges"][0], t)["input"],
                term(&by_coord["edges"][0], t)["input"],
                "{t}"
            );
        }
        let cell = by_coord["group"].as_str().unwrap();
        let group = by_ip["group"].as_str().unwrap();
        assert!(group.starts_with(cell), "{group} vs {cell}");
    }
    let (_, v) = resolve(&s, "stream=live/x&ip=89.160.20.112").await;
    assert_eq!(v["location"]["asn"], 29518, "{v}");
    assert!(v["group"].as_str().unwrap().ends_with("/as29518"), "{v}");
    // /play with the IP: 302 to the same edge, with the location appended
    // for the edge's own grouping.
    let r = no_redirects()
        .get(format!(
            "{}/play/live/x.flv?ip=81.2.69.142&token=abc",
            s.api_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with(&agents[0].media_url()), "{loc}");
    assert!(
        loc.contains("/live/x.flv?ip=81.2.69.142&token=abc&lat="),
        "{loc}"
    );
    // The trusted location header (a front proxy's) counts like the query.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/resolve?stream=live/x", s.api_url()))
        .header("x-client-geo", format!("{},{}", OSAKA.0, OSAKA.1))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["location"]["source"], "header", "{v}");
    assert_eq!(first_edge(&v), Some("tyo"), "{v}");
    // An address the database does not know: unknown location, still an answer.
    let (st, v) = resolve(&s, "stream=live/x&ip=127.0.0.1").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["location"]["source"], "unknown", "{v}");
    assert_eq!(v["group"], "unknown", "{v}");
    drop(agents);
}

/// Must show 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_through_the_play_redirect() {
    let test = "ffmpeg_plays_through_the_play_redirect";
    let Some(ffmpeg) = tool("ffmpeg", test) else {
        return;
    };
    let s = Scheduler::builder()
        .arg("--config")
        .arg(no_client_limits())
        .report_interval_ms(500)
        .start()
        .await;
    let origin = Agent::builder("origin", &s)
        .at(PARIS.0, PARIS.1)
        .start()
        .await;
    let edge_a = Agent::builder("edge", &s)
        .at(FRANKFURT.0, FRANKFURT.1)
        .start()
        .await;
    wait_all_up(&s, &["origin", "edge"], Duration::from_secs(20)).await;
    let mut publisher = Publisher::start(&ffmpeg, &format!("{}/live/x.flv", origin.media_url()));
    eventually(Duration::from_secs(20), "live/x published", || async {
        let (st, v) = resolve(&s, &format!("stream=live/x&{}", at(FRANKFURT))).await;
        if st == 200 { Ok(v) } else { Err((st, v)) }
    })
    .await;
    wait_routed_through(&s, &edge_a, "live/x", "origin", &mut publisher).await;
    // A viewer near Frankfurt.
    let play = format!("{}/play/live/x.flv?{}", s.api_url(), at(FRANKFURT));
    let r = no_redirects().get(&play).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let node = r.headers()["x-vantage-node"].to_str().unwrap().to_owned();
    let served_by = if node == "edge" { &edge_a } else { &origin };
    assert!(location.starts_with(&served_by.media_url()), "{location}");
    assert!(
        location.ends_with(&format!("/live/x.flv?{}", at(FRANKFURT))),
        "{location}"
    );
    // The LL-HLS variant redirects the same way, to the edge's multivariant
    // playlist.
    let hls = format!("{}/play/live/x.m3u8?{}", s.api_url(), at(FRANKFURT));
    let r = no_redirects().get(&hls).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let hls_location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        hls_location.ends_with(&format!("/live/x/master.m3u8?{}", at(FRANKFURT))),
        "{hls_location}"
    );
    // ffmpeg asks /play again and may be sent to the other eligible agent
    // (spreading and exploration), so count joins at both.
    let joins = || async {
        edge_a
            .metric("vantage_agent_relay_viewers_joined_total", &[])
            .await
            + origin
                .metric("vantage_agent_relay_viewers_joined_total", &[])
                .await
    };
    let joined_before = joins().await;

    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(&ffmpeg)
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-i"])
            .arg(&play)
            .args([
                "-t",
                "3",
                "-map",
                "0:v",
                "-f",
                "null",
                "-progress",
                "pipe:1",
                "-",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("ffmpeg did not finish in 30 s"))
    .unwrap_or_else(|e| panic!("ffmpeg: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let frames = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("frame="))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    eprintln!(
        "ffmpeg via {location}: {frames} frames, status {}",
        out.status
    );
    assert!(out.status.success(), "ffmpeg failed: {stderr}");
    assert!(frames >= 50, "decoded {frames} frames: {stderr}");
    let joined_after = joins().await;
    assert!(
        joined_after > joined_before,
        "an agent served the viewer ({joined_before} → {joined_after} joins)"
    );
    publisher.stop().await;
}

/// Must show 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_json() {
    let s = Scheduler::builder()
        .arg("--config")
        .arg(no_client_limits())
        .start()
        .await;
    let a = Agent::builder("a", &s)
        .at(PARIS.0, PARIS.1)
        .origin("live/*", NO_MEDIA_ORIGIN)
        .start()
        .await;
    wait_all_up(&s, &["a"], Duration::from_secs(20)).await;
    wait_resolvable(&s, "live/x", PARIS, 1).await;
    for (query, needle) in [
        ("stream=live/x&lat=999&lon=0", "lat"),
        ("stream=live/x&lat=45&lon=-200", "lon"),
        ("stream=live/x&lat=abc&lon=2", "lat"),
        ("stream=live/x&lat=45", "lat and lon"),
        ("stream=live/x&n=0", "n"),
        ("stream=live/x&n=1000", "n"),
        ("stream=live/x&n=two", "n"),
        ("stream=live", "app/stream"),
        ("stream=live/x/y", "app/stream"),
        ("stream=live/x%20y", "characters"),
        ("lat=1&lon=2", "stream"),
        ("stream=live/x&ip=not-an-ip", "ip"),
    ] {
        let (st, v) = resolve(&s, query).await;
        assert_eq!(st, 400, "{query}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{query}: not JSON error: {v}"));
        assert!(msg.contains(needle), "{query}: {msg}");
    }
    for path in [
        "/play/live/x.mp4",
        "/play/live/x%20y.flv",
        "/play/live/x.flv?lat=999&lon=1",
    ] {
        let r = no_redirects()
            .get(format!("{}{path}", s.api_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].is_string(), "{path}: {v}");
    }
    // A well-formed key that no origin serves: 404, not a guess.
    let (st, v) = resolve(&s, "stream=other/x").await;
    assert_eq!(st, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no origin"), "{v}");
    let bad = s
        .metric(
            "vantage_scheduler_resolves_total",
            &[("outcome", "bad_request")],
        )
        .await;
    assert!(bad >= 15.0, "bad requests counted: {bad}");
    drop(a);
}
