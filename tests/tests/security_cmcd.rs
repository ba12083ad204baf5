//! Issue 17, forged CMCD: `POST /v1/cmcd` on an edge used to accept any
//! beacon from anyone, and 61 of them moved a client group's resolver
//! answer to a farther edge. Now a CMCD report counts only for a viewer
//! session the edge serves (the id in the play answer's
//! `X-Vantage-Session`), from the client it serves, once; beacons are rate
//! limited per client (429 JSON with `Retry-After`).
//!
//! The real scheduler and two agents (Paris, Frankfurt) on loopback; a Lyon
//! viewer plays from Paris (its resolver answer). Attackers on 127.0.0.2-4
//! post hundreds of "stalling" beacons for Lyon without a session, with
//! made-up session ids and with the real viewer's session id, and ask for a
//! stream Paris does not serve with CMCD in the query: Lyon's answer stays
//! Paris, no forged report counts (agent metrics and status), every forged
//! beacon is refused with its reason. The real viewer's beacon counts, and
//! its replays do not.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

use serde_json::Value;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use vantage_tests::cluster::wait_all_up;
use vantage_tests::ports::loopback;
use vantage_tests::synth::SynthPublisher;
use vantage_tests::{Agent, Scheduler, eventually};

const LYON: (f64, f64) = (45.764, 4.8357);
/// Lyon's client group (geohash cell, precision 4).
const LYON_GROUP: &str = "u05k";
const ATTACK_FOR: Duration = Duration::from_secs(6);

/// A client whose connections leave from `ip` (another "client" for the
/// agent); requests time out after 5 s.
fn client(ip: Option<[u8; 4]>) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .local_address(ip.map(IpAddr::from))
        .build()
        .unwrap()
}

/// The first edge of Lyon's resolver answer ("" when none) and the answer.
async fn first_edge(s: &Scheduler) -> (String, Value) {
    let (st, v) = s
        .get(&format!(
            "/v1/resolve?stream=live/x&lat={}&lon={}&n=4",
            LYON.0, LYON.1
        ))
        .await;
    let first = match st {
        200 => v["edges"][0]["node_id"].as_str().unwrap_or("").to_owned(),
        _ => String::new(),
    };
    (first, v)
}

/// Posts a beacon; (status, Retry-After, body).
async fn beacon(c: &reqwest::Client, url: &str, body: String) -> (u16, Option<String>, String) {
    match c.post(url).body(body).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (status, retry, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, None, e.to_string()),
    }
}

async fn counted(a: &Agent, source: &str, result: &str) -> f64 {
    a.metric(
        "vantage_agent_relay_cmcd_reports_total",
        &[("source", source), ("result", result)],
    )
    .await
}

async fn rejected(a: &Agent, source: &str, reason: &str) -> f64 {
    a.metric(
        "vantage_agent_relay_cmcd_rejected_total",
        &[("source", source), ("reason", reason)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_beacons_change_nothing() {
    let s = Scheduler::builder()
        .report_interval_ms(500)
        .arg("--exploration-share")
        .arg("0")
        .start()
        .await;
    let par = Agent::builder("cm-par", &s)
        .region("eu-paris")
        .at(48.8566, 2.3522)
        .start()
        .await;
    let _fra = Agent::builder("cm-fra", &s)
        .region("eu-frankfurt")
        .at(50.1109, 8.6821)
        .start()
        .await;
    wait_all_up(&s, &["cm-par", "cm-fra"], Duration::from_secs(20)).await;
    let publisher = SynthPublisher::start(loopback(par.ports().http), "/live/x.flv", 500);
    let before = eventually(
        Duration::from_secs(15),
        "live/x resolvable for Lyon",
        || async {
            let (first, v) = first_edge(&s).await;
            if first == "cm-par" && v["edges"].as_array().is_some_and(|e| e.len() == 2) {
                Ok(v)
            } else {
                Err(v)
            }
        },
    )
    .await;
    assert_eq!(before["edges"][0]["basis"], "modelled", "{before}");

    // A real Lyon viewer on Paris (127.0.0.1): its play answer names its
    // session.
    let viewer = reqwest::Client::builder().no_proxy().build().unwrap();
    let play = format!(
        "{}/live/x.flv?lat={}&lon={}",
        par.media_url(),
        LYON.0,
        LYON.1
    );
    let mut playing = viewer.get(&play).send().await.unwrap();
    assert_eq!(playing.status(), 200);
    let sid = playing
        .headers()
        .get("x-vantage-session")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let _ = tokio::time::timeout(Duration::from_secs(2), playing.chunk()).await;
    let keep_reading = tokio::spawn(async move {
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            match tokio::time::timeout(Duration::from_secs(5), playing.chunk()).await {
                Ok(Ok(Some(_))) => {}
                _ => break,
            }
        }
    });

    // The attack: three clients, as the issue found it (`lat`/`lon` of
    // Lyon, tiny buffers, buffer starvation), without a session, with
    // made-up session ids, as JSON arrays, and with the real viewer's
    // session id; plus CMCD on a play of a stream Paris does not serve.
    let url = format!("{}/v1/cmcd?lat={}&lon={}", par.media_url(), LYON.0, LYON.1);
    let stop_at = Instant::now() + ATTACK_FOR;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ip) in [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]]
        .into_iter()
        .enumerate()
    {
        let (c, url, sid) = (client(Some(ip)), url.clone(), sid.clone());
        let nope = format!(
            "{}/live/nope.flv?lat={}&lon={}&CMCD=bl%3D100%2Cbs",
            par.media_url(),
            LYON.0,
            LYON.1
        );
        tasks.spawn(async move {
            let mut answers: Vec<(u16, Option<String>, String)> = Vec::new();
            // Bounded: at most 400 beacons per attacker.
            for n in 0..400u32 {
                if Instant::now() >= stop_at {
                    break;
                }
                let body = match (i, n % 3) {
                    (0, _) => "bl=100,bs,su".to_owned(),
                    (1, 0) => format!("bl=100,bs,sid=\"forged-{n}\""),
                    (1, _) => {
                        let one = format!("{{\"bl\":100,\"bs\":true,\"sid\":\"forged-{n}\"}}");
                        format!("[{}]", vec![one; 16].join(","))
                    }
                    (_, _) => match &sid {
                        Some(sid) => format!("bl={},bs,sid=\"{sid}\"", 100 + n),
                        None => format!("bl={},bs", 100 + n),
                    },
                };
                answers.push(beacon(&c, &url, body).await);
                if n % 20 == 0 {
                    let r = c.get(&nope).send().await.map(|r| r.status().as_u16());
                    assert_eq!(r.ok(), Some(404), "a play of a stream not served");
                }
                // 40 beacons a second each: over the per-client limit.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            (i, answers)
        });
    }

    // Meanwhile, and for 3 s after (six report intervals), Lyon's answer
    // stays Paris.
    let watch_until = stop_at + Duration::from_secs(3);
    let mut polls = 0;
    while Instant::now() < watch_until {
        let (first, v) = first_edge(&s).await;
        assert_eq!(
            first, "cm-par",
            "forged beacons moved Lyon's answer (poll {polls}): {v}"
        );
        polls += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut limited = 0;
    let mut sent = 0;
    while let Some(r) = tasks.join_next().await {
        let (i, answers) = r.unwrap();
        for (status, retry, body) in answers {
            sent += 1;
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|_| panic!("attacker {i}: not JSON ({status}): {body}"));
            let reason = v["reason"].as_str().unwrap_or_default().to_owned();
            match status {
                429 => {
                    limited += 1;
                    assert_eq!(reason, "rate_limited", "{body}");
                    assert!(retry.is_some(), "429 without Retry-After: {body}");
                }
                403 => {
                    let want = match i {
                        0 => "no_session",
                        1 => "unknown_session",
                        _ => "wrong_client",
                    };
                    assert_eq!(reason, want, "attacker {i}: {body}");
                }
                other => panic!("attacker {i}: a forged beacon answered {other}: {body}"),
            }
        }
    }
    eprintln!("attack: {sent} forged beacons, {limited} rate limited, {polls} resolves all cm-par");
    assert!(limited > 0, "the beacon flood was never rate limited");

    // Nothing forged counted: no beacon nor query report accepted, each
    // refusal counted by reason, and Paris reports no CMCD for Lyon.
    assert_eq!(counted(&par, "beacon", "ok").await, 0.0);
    assert_eq!(counted(&par, "beacon", "merged").await, 0.0);
    assert_eq!(counted(&par, "query", "ok").await, 0.0);
    assert!(rejected(&par, "beacon", "no_session").await > 0.0);
    assert!(rejected(&par, "beacon", "unknown_session").await > 0.0);
    assert!(rejected(&par, "beacon", "rate_limited").await > 0.0);
    assert!(rejected(&par, "query", "not_served").await > 0.0);
    let sid = sid.expect("the play answer names its session (X-Vantage-Session)");
    assert!(rejected(&par, "beacon", "wrong_client").await > 0.0);
    let status = par.status().await;
    let lyon = status["relay"]["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group"] == LYON_GROUP).cloned())
        .unwrap_or(Value::Null);
    assert_eq!(lyon["viewers"], 1, "the real viewer plays on: {status}");
    assert_eq!(lyon["cmcd_samples"], 0, "{status}");
    let (first, after) = first_edge(&s).await;
    assert_eq!(first, "cm-par", "{after}");

    // The real viewer's beacon counts, once: its replays are refused.
    let url = format!("{}/v1/cmcd", par.media_url());
    let real = format!("bl=2500,br=500,sid=\"{sid}\"");
    let (status, _, body) = beacon(&viewer, &url, real.clone()).await;
    assert_eq!(status, 204, "{body}");
    for _ in 0..10 {
        let (status, _, body) = beacon(&viewer, &url, real.clone()).await;
        assert_eq!(status, 409, "a replay: {body}");
        assert!(body.contains("\"duplicate\""), "{body}");
    }
    assert_eq!(counted(&par, "beacon", "ok").await, 1.0);
    assert_eq!(rejected(&par, "beacon", "duplicate").await, 10.0);
    let status = par.status().await;
    let lyon = status["relay"]["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group"] == LYON_GROUP).cloned())
        .unwrap_or(Value::Null);
    assert_eq!(lyon["cmcd_samples"], 1, "{status}");
    assert_eq!(lyon["buffer_ms"], 2500.0, "{status}");

    publisher.assert_running();
    keep_reading.abort();
    publisher.stop();
}
