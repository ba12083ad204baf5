//! Issue 16, item 5: HLS Content Steering with the real binaries.
//!
//! A synthetic publisher sends `live/x` to the origin (Paris); two edges
//! (Frankfurt, Amsterdam) and the origin run with `--steering-url` naming
//! the scheduler. A viewer near Frankfurt does what hls.js does:
//!
//! 1. `GET /play/live/x.m3u8` on the scheduler → `302` to an edge's
//!    multivariant playlist; that playlist carries
//!    `EXT-X-CONTENT-STEERING` (the scheduler's `/v1/steering/live/x`,
//!    `base=` and `PATHWAY-ID` = the edge) and the media playlist with the
//!    viewer's location;
//! 2. the steering manifest keeps the viewer where it is
//!    (`PATHWAY-PRIORITY` starts with its edge; `steer_stay` counted);
//! 3. the operator drains that edge; the next reload (with
//!    `_HLS_pathway=<edge>`, as the player adds it) puts another edge first
//!    and clones the pathway onto it (`URI-REPLACEMENT.HOST` = its host);
//!    the player, applying the clone to its media playlist URI, plays parts
//!    from the new edge (`steer_move` counted);
//! 4. bad steering requests (no `base`, a pathway id with a space, a bad
//!    `_HLS_pathway`, latitude out of range) are `400` with a message and
//!    counted as `bad_request`.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use vantage_tests::cluster::wait_all_up;
use vantage_tests::synth::SynthPublisher;
use vantage_tests::{Agent, AgentBuilder, Scheduler, eventually};

const STREAM: &str = "live/x";
const FRANKFURT: (f64, f64) = (50.1109, 8.6821);

fn at() -> String {
    format!("lat={}&lon={}", FRANKFURT.0, FRANKFURT.1)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

async fn get_text(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let st = r.status().as_u16();
    (st, r.text().await.unwrap_or_default())
}

async fn manifest(c: &reqwest::Client, url: &str) -> Value {
    let (st, body) = get_text(c, url).await;
    assert_eq!(st, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

fn priority(m: &Value) -> Vec<String> {
    m["PATHWAY-PRIORITY"]
        .as_array()
        .unwrap_or_else(|| panic!("no PATHWAY-PRIORITY: {m}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `(SERVER-URI, PATHWAY-ID)` of a multivariant playlist's steering tag.
fn steering_tag(playlist: &str) -> Option<(String, String)> {
    let line = playlist
        .lines()
        .find(|l| l.starts_with("#EXT-X-CONTENT-STEERING:"))?;
    let attr = |name: &str| -> Option<String> {
        let v = line.split(&format!("{name}=\"")).nth(1)?;
        Some(v.split('"').next()?.to_owned())
    };
    Some((attr("SERVER-URI")?, attr("PATHWAY-ID")?))
}

/// The first URI line (the variant) of a multivariant playlist.
fn variant(playlist: &str) -> Option<&str> {
    playlist
        .lines()
        .find(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The media playlist at `url` has parts, and its newest part downloads.
async fn plays(c: &reqwest::Client, url: &str) -> Result<usize, String> {
    let (st, playlist) = get_text(c, url).await;
    if st != 200 {
        return Err(format!("{url}: HTTP {st} {playlist}"));
    }
    let part = playlist
        .lines()
        .filter(|l| l.starts_with("#EXT-X-PART:"))
        .filter_map(|l| l.split("URI=\"").nth(1)?.split('"').next())
        .next_back()
        .ok_or_else(|| format!("{url}: no parts:\n{playlist}"))?
        .to_owned();
    let base = url.split('?').next().unwrap_or(url);
    let dir = base.rsplit_once('/').map_or(base, |(d, _)| d);
    let r = c
        .get(format!("{dir}/{part}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().as_u16() != 200 {
        return Err(format!("{dir}/{part}: HTTP {}", r.status()));
    }
    let bytes = r.bytes().await.map_err(|e| e.to_string())?;
    if bytes.is_empty() {
        return Err(format!("{dir}/{part}: empty part"));
    }
    Ok(bytes.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_viewer_is_steered_off_a_drained_edge() {
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let steer = |b: AgentBuilder| b.arg("--steering-url").arg(s.api_url());
    let origin = steer(Agent::builder("st-origin", &s).at(48.8566, 2.3522))
        .start()
        .await;
    let fra = steer(Agent::builder("st-fra", &s).at(FRANKFURT.0, FRANKFURT.1))
        .start()
        .await;
    let ams = steer(Agent::builder("st-ams", &s).at(52.3676, 4.9041))
        .start()
        .await;
    let agents = [&origin, &fra, &ams];
    let ids = ["st-origin", "st-fra", "st-ams"];
    wait_all_up(&s, &ids, Duration::from_secs(20)).await;
    let publisher = SynthPublisher::start(
        SocketAddr::from(([127, 0, 0, 1], origin.ports().http)),
        &format!("/{STREAM}.flv"),
        800,
    );
    let c = no_redirects();
    eventually(Duration::from_secs(20), "live/x resolvable", || async {
        let (st, body) = get_text(
            &c,
            &format!("{}/v1/resolve?stream={STREAM}&{}", s.api_url(), at()),
        )
        .await;
        if st == 200 { Ok(()) } else { Err((st, body)) }
    })
    .await;
    publisher.assert_running();

    // 1. /play → the edge's multivariant playlist, which names the steering
    //    server with this edge as the pathway.
    let r = c
        .get(format!("{}/play/{STREAM}.m3u8?{}", s.api_url(), at()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let first = r.headers()["x-vantage-node"].to_str().unwrap().to_owned();
    let served_by = agents[ids.iter().position(|i| *i == first).unwrap()];
    assert!(
        location.starts_with(&format!("{}/{STREAM}/master.m3u8?", served_by.media_url())),
        "{location}"
    );
    let (st, master) = get_text(&c, &location).await;
    assert_eq!(st, 200, "{location}: {master}");
    let (server_uri, pathway) =
        steering_tag(&master).unwrap_or_else(|| panic!("no EXT-X-CONTENT-STEERING in\n{master}"));
    assert_eq!(pathway, first, "{master}");
    assert!(
        server_uri.starts_with(&format!(
            "{}/v1/steering/{STREAM}?base={first}&lat=50.1109&lon=8.6821",
            s.api_url()
        )),
        "{server_uri}"
    );
    let media = variant(&master).unwrap_or_else(|| panic!("no variant in\n{master}"));
    assert_eq!(media, "index.m3u8?lat=50.1109&lon=8.6821", "{master}");
    assert!(
        master.contains(&format!("PATHWAY-ID=\"{first}\"\n{media}")),
        "{master}"
    );
    let media_url = format!("{}/{STREAM}/{media}", served_by.media_url());
    eventually(Duration::from_secs(10), "parts on the first edge", || {
        plays(&c, &media_url)
    })
    .await;

    // 2. The first load of the manifest keeps the viewer where it is.
    let stays = s
        .metric(
            "vantage_scheduler_resolves_total",
            &[("outcome", "steer_stay")],
        )
        .await;
    let m = manifest(&c, &server_uri).await;
    let (_, ranked) = get_text(
        &c,
        &format!("{}/v1/resolve?stream={STREAM}&n=3&{}", s.api_url(), at()),
    )
    .await;
    assert_eq!(m["VERSION"], 1, "{m}");
    assert_eq!(m["TTL"], 30, "{m}");
    assert_eq!(priority(&m).first(), Some(&first), "{m}\n{ranked}");
    let reload = m["RELOAD-URI"].as_str().unwrap_or_default();
    assert!(
        reload.starts_with(&format!("/v1/steering/{STREAM}?base={first}&lat=")),
        "{m}"
    );
    assert!(
        s.metric(
            "vantage_scheduler_resolves_total",
            &[("outcome", "steer_stay")]
        )
        .await
            > stays
    );

    // 3. Drain the viewer's edge: the next reload moves it, by a clone of
    //    its pathway onto another edge's host.
    let moves = s
        .metric(
            "vantage_scheduler_resolves_total",
            &[("outcome", "steer_move")],
        )
        .await;
    let (st, d) = s.post(&format!("/v1/nodes/{first}/drain")).await;
    assert_eq!(st, 200, "drain {first}: {d}");
    let reload_url = format!("{}{reload}&_HLS_pathway={first}", s.api_url());
    let m = manifest(&c, &reload_url).await;
    let order = priority(&m);
    let to = order
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("empty priority: {m}"));
    assert_ne!(to, first, "still steered to the drained edge: {m}");
    assert!(!order.contains(&first), "drained edge listed: {m}");
    let target = agents[ids
        .iter()
        .position(|i| *i == to)
        .unwrap_or_else(|| panic!("unknown pathway {to}: {m}"))];
    let clone = m["PATHWAY-CLONES"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["ID"] == to.as_str()))
        .unwrap_or_else(|| panic!("no clone for {to}: {m}"));
    assert_eq!(clone["BASE-ID"], first.as_str(), "{m}");
    let host = clone["URI-REPLACEMENT"]["HOST"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        format!("http://{host}"),
        target.media_url(),
        "clone host of {to}: {m}"
    );
    assert!(
        s.metric(
            "vantage_scheduler_resolves_total",
            &[("outcome", "steer_move")]
        )
        .await
            > moves
    );
    // The player applies the clone: same path, the new host.
    let moved_url = format!("http://{host}/{STREAM}/{media}");
    eventually(Duration::from_secs(15), "parts on the new edge", || {
        plays(&c, &moved_url)
    })
    .await;
    // And it stays there on the reload after (hysteresis: no flapping).
    let m = manifest(&c, &format!("{}{reload}&_HLS_pathway={to}", s.api_url())).await;
    assert_eq!(priority(&m).first(), Some(&to), "{m}");

    // 4. Bad steering requests.
    let bad_before = s
        .metric(
            "vantage_scheduler_resolves_total",
            &[("outcome", "bad_request")],
        )
        .await;
    let base = format!("{}/v1/steering/{STREAM}", s.api_url());
    for q in [
        String::new(),
        "?base=a%20b".to_owned(),
        format!("?base={first}&_HLS_pathway=x%22y"),
        format!("?base={first}&lat=91&lon=0"),
    ] {
        let (st, body) = get_text(&c, &format!("{base}{q}")).await;
        assert_eq!(st, 400, "{q}: {body}");
        assert!(body.contains("error"), "{q}: {body}");
    }
    assert_eq!(
        s.metric(
            "vantage_scheduler_resolves_total",
            &[("outcome", "bad_request")]
        )
        .await
            - bad_before,
        4.0
    );
    publisher.assert_running();
}
