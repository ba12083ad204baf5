//! Issue 15, Must show 3, with the real binaries: route tables as deltas.
//!
//! * An agent that NACKs a delta (its merged table would exceed its
//!   `--routes-max-entries`) stays on its previous table — `/v1/status`,
//!   `/v1/routes` and `routes.pb` unchanged — and receives the next version
//!   whole once its table fits again, ACKs it and holds exactly the
//!   scheduler's table.
//! * An agent killed and restarted (same data dir) while streams come and
//!   go converges to the same table as the scheduler has for it: same
//!   version ACKed, same content (`GET /v1/routes` on the agent against
//!   `GET /v1/routes/{id}` on the scheduler), having caught up by deltas
//!   from the version it kept on disk.
//!
//! Streams are published as synthetic FLV over HTTP POST (no ffmpeg). A
//! node's directory lists the streams it subscribed to: a play request on
//! an agent ([`want`]) makes it subscribe.

use prost::Message;
use serde_json::Value;
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;
use vantage_proto::v1::RouteTable;
use vantage_tests::cluster::{canonical_table, table_of, wait_all_acked, wait_all_up};
use vantage_tests::http::as_u64;
use vantage_tests::synth::SynthPublisher;
use vantage_tests::{Agent, Scheduler, eventually};

/// Versions of a node's change log the scheduler keeps
/// (`vantage_plan::session::tables::LOG_VERSIONS`): an agent holding an
/// older version gets a whole table.
const LOG_VERSIONS: u64 = 64;

/// Video bit rate of the synthetic streams: only their presence matters.
const KBPS: u32 = 64;

/// A scheduler that reports every 500 ms (slow enough that a busy test
/// machine does not make nodes suspect, which would move tables on its own)
/// and plans at most every 100 ms.
async fn scheduler() -> Scheduler {
    Scheduler::builder()
        // Agents' probe addresses are shown to authenticated readers only.
        .read_token("route-deltas-read-token-0123456789")
        .report_interval_ms(500)
        .arg("--replan-interval-ms")
        .arg("100")
        .start()
        .await
}

fn media_addr(a: &Agent) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], a.ports().http))
}

fn publish(origin: SocketAddr, stream: &str) -> SynthPublisher {
    SynthPublisher::start(origin, &format!("/{stream}.flv"), KBPS)
}

/// The stream keys of a rendered table's directory that name an origin
/// (a stream published nowhere is listed without one while its
/// subscription lingers).
fn directory(table: &Value) -> BTreeSet<String> {
    table["directory"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter(|e| e["origin"].as_str().is_some_and(|o| !o.is_empty()))
                .filter_map(|e| e["stream"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// One play request for `stream` on agent `a`, its answer's status (0:
/// no answer): a viewer arriving, which makes the agent subscribe to the
/// stream's directory entry (and pull it when it is live).
async fn play_once(a: &Agent, stream: &str) -> u16 {
    let url = format!("{}/{stream}.flv", a.media_url());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|e| panic!("HTTP client: {e}"));
    match client.get(&url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Plays `stream` on `a` until it answers 200: `a` subscribed and pulls it.
async fn want(a: &Agent, stream: &str) {
    eventually(
        Duration::from_secs(15),
        &format!("{} plays {stream}", a.node_id()),
        || async {
            match play_once(a, stream).await {
                200 => Ok(()),
                status => Err(status),
            }
        },
    )
    .await;
}

fn keys(streams: &[&str]) -> BTreeSet<String> {
    streams.iter().map(|s| (*s).to_owned()).collect()
}

/// The version an agent holds according to its `/v1/status`.
async fn status_version(a: &Agent) -> Option<u64> {
    let st = a.try_status().await?;
    as_u64(st.get("routes").and_then(|r| r.get("version")))
}

/// The scheduler's route record for `id` (`GET /v1/routes/{id}`).
async fn record(s: &Scheduler, id: &str) -> Value {
    s.routes(id)
        .await
        .unwrap_or_else(|| panic!("GET /v1/routes/{id} failed"))
}

/// `sent.full` and `sent.delta` of a route record.
fn sent(record: &Value) -> (u64, u64) {
    (
        record["sent"]["full"].as_u64().unwrap_or(0),
        record["sent"]["delta"].as_u64().unwrap_or(0),
    )
}

/// Whether agent `a` holds the scheduler's current table: one version
/// everywhere (the scheduler's, ACKed, in the agent's `/v1/status` and
/// `/v1/routes`) and the same content. Returns the canonical table.
///
/// Content is compared only when the scheduler's version did not move
/// while both sides were read; at one version the content must be equal,
/// so a difference then is a failure, not "not yet".
async fn converged(s: &Scheduler, a: &Agent) -> Result<Value, String> {
    let id = a.node_id();
    let before = record(s, id).await;
    let version = as_u64(before.get("version")).unwrap_or(0);
    let acked = as_u64(before.get("acked_version")).unwrap_or(0);
    let held = status_version(a).await;
    let mine = a.routes().await;
    let after = record(s, id).await;
    let moved = as_u64(after.get("version")) != Some(version);
    if moved || acked != version || held != Some(version) || mine["version"] != version {
        return Err(format!(
            "{id}: scheduler v{version} (acked {acked}, moved {moved}), agent status {held:?}, \
             /v1/routes v{}",
            mine["version"]
        ));
    }
    let theirs = canonical_table(table_of(&after));
    let ours = canonical_table(&mine["table"]);
    assert_eq!(
        theirs, ours,
        "{id}: at version {version} the agent's merged table differs from the scheduler's \
         (left: scheduler, right: agent)"
    );
    Ok(ours)
}

fn routes_pb(a: &Agent) -> Vec<u8> {
    let p = a.routes_path();
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Must show 3, first half: a NACKed delta, then the next version whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_nacks_a_delta_keeps_its_table_and_takes_the_next_version_whole() {
    const A: &str = "nack-a";
    const B: &str = "nack-b";
    // B's first table holds one entry (its probe target A); two streams of
    // A that B plays add a directory entry each and the route to origin A:
    // 4 fits, a third stream makes 5.
    const LIMIT: u64 = 4;
    let s = scheduler().await;
    let a = Agent::builder(A, &s)
        .region("eu-paris")
        .at(48.8566, 2.3522)
        .start()
        .await;
    let b = Agent::builder(B, &s)
        .region("eu-frankfurt")
        .at(50.1109, 8.6821)
        .arg("--routes-max-entries")
        .arg(LIMIT.to_string())
        // Streams B pulled stay held (in use) for the whole test; a
        // subscription no stream uses goes within ~6 s (1 s, swept every 5 s).
        .arg("--relay-idle-timeout-ms")
        .arg("600000")
        .arg("--relay-directory-linger-ms")
        .arg("1000")
        .start()
        .await;
    wait_all_up(&s, &[A, B], Duration::from_secs(15)).await;
    wait_all_acked(&s, &[&a, &b], Duration::from_secs(15)).await;
    // B's table before any stream: its probe target A, nothing else.
    eventually(
        Duration::from_secs(15),
        "B holds a table of one entry",
        || async {
            converged(&s, &b).await?;
            let mine = b.routes().await;
            if mine["entries"]["total"] == 1 && mine["max_entries"] == LIMIT {
                Ok(())
            } else {
                Err(mine)
            }
        },
    )
    .await;

    // Two streams, played on B: B's table grows to exactly the limit, by
    // deltas.
    let origin = media_addr(&a);
    let _s1 = publish(origin, "live/s1");
    let _s2 = publish(origin, "live/s2");
    want(&b, "live/s1").await;
    want(&b, "live/s2").await;
    let t1 = eventually(
        Duration::from_secs(20),
        "B holds live/s1 and live/s2",
        || async {
            let t = converged(&s, &b).await?;
            if directory(&t) == keys(&["live/s1", "live/s2"]) {
                Ok(t)
            } else {
                Err(format!("B's directory: {:?}", directory(&t)))
            }
        },
    )
    .await;
    let v1 = t1["version"].as_u64().unwrap_or(0);
    let at_v1 = record(&s, B).await;
    let (full0, delta0) = sent(&at_v1);
    assert!(delta0 >= 1, "the streams reached B as deltas: {at_v1}");
    assert!(
        b.metric("vantage_agent_route_updates_total", &[("kind", "delta")])
            .await
            >= 1.0
    );
    assert_eq!(b.routes().await["entries"]["total"], LIMIT);
    let pb_v1 = routes_pb(&b);
    let mine_v1 = b.routes().await["table"].clone();

    // A third stream played on B: the delta on v1 would make 5 entries.
    // NACK (and the play request finds no route: 404).
    let _s3 = publish(origin, "live/s3");
    eventually(
        Duration::from_secs(15),
        "the scheduler knows live/s3",
        || async {
            let r = record(&s, B).await;
            let known = r["stream_routes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["stream"] == "live/s3"));
            if known { Ok(()) } else { Err(r) }
        },
    )
    .await;
    let b_plays = tokio::spawn({
        let url = format!("{}/live/s3.flv", b.media_url());
        async move { reqwest::get(&url).await.map_or(0, |r| r.status().as_u16()) }
    });
    let nacked = eventually(Duration::from_secs(20), "B NACKs", || async {
        let r = record(&s, B).await;
        if r["nacked"].is_object() {
            Ok(r)
        } else {
            Err(r)
        }
    })
    .await;
    let nack = &nacked["nacked"];
    assert_eq!(
        nack["detail"],
        "table of 5 entries exceeds routes_max_entries 4 \
         (directory 3, origins 1, patterns 0, probe targets 1)",
        "{nacked}"
    );
    let v_nacked = nack["version"].as_u64().unwrap_or(0);
    assert!(v_nacked > v1, "{nacked}");
    let (full1, delta1) = sent(&nacked);
    assert_eq!(full1, full0, "the NACKed table was a delta: {nacked}");
    assert!(delta1 > delta0, "{nacked}");
    assert_eq!(as_u64(nacked.get("acked_version")), Some(v1), "{nacked}");
    assert_eq!(
        b.metric("vantage_agent_route_tables_total", &[("result", "nack")])
            .await,
        1.0
    );
    // B stays on v1: status, table, file.
    assert_eq!(status_version(&b).await, Some(v1));
    let held = b.routes().await;
    assert_eq!(held["version"], v1, "{held}");
    assert_eq!(held["table"], mine_v1, "B's table in use is unchanged");
    assert_eq!(routes_pb(&b), pb_v1, "routes.pb is unchanged");
    assert!(s.metric("vantage_scheduler_route_nacks_total", &[]).await >= 1.0);

    let status = b_plays.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 404, "B has no route for live/s3 while it NACKs");
    // No stream on B uses live/s3: its subscription lingers out, the next
    // version fits, goes out whole (the scheduler no longer knows what B
    // holds) and is ACKed.
    let full_metric0 = s
        .metric("vantage_scheduler_route_updates_total", &[("kind", "full")])
        .await;
    let agent_full0 = b
        .metric("vantage_agent_route_updates_total", &[("kind", "full")])
        .await;
    let t2 = eventually(
        Duration::from_secs(20),
        "B takes the version after the NACKed one",
        || async {
            let t = converged(&s, &b).await?;
            if t["version"].as_u64().unwrap_or(0) > v_nacked {
                Ok(t)
            } else {
                Err(format!("B converged at v{}", t["version"]))
            }
        },
    )
    .await;
    assert_eq!(directory(&t2), keys(&["live/s1", "live/s2"]));
    assert_eq!(t2["directory"].as_array().map(Vec::len), Some(2), "{t2}");
    let after = record(&s, B).await;
    let (full2, _) = sent(&after);
    assert_eq!(full2, full0 + 1, "one whole table after the NACK: {after}");
    assert_eq!(
        b.metric("vantage_agent_route_updates_total", &[("kind", "full")])
            .await,
        agent_full0 + 1.0
    );
    assert!(
        s.metric("vantage_scheduler_route_updates_total", &[("kind", "full")])
            .await
            > full_metric0
    );
    // The NACKed version was never resent (B would have NACKed it again).
    assert_eq!(
        b.metric("vantage_agent_route_tables_total", &[("result", "nack")])
            .await,
        1.0
    );
    assert_ne!(routes_pb(&b), pb_v1, "routes.pb holds the new version");
    let on_disk =
        RouteTable::decode(routes_pb(&b).as_slice()).unwrap_or_else(|e| panic!("routes.pb: {e}"));
    assert_eq!(Some(on_disk.version), t2["version"].as_u64());
}

/// Starts and ends streams on `origin`, `changes` times, one every
/// `every`: a new stream while fewer than 2 are live, else every third
/// change ends the oldest (at most 5 live); each new stream is played once
/// on every agent of `viewers` (which subscribes them to it). Signals
/// `halfway` after half of the changes. Returns the publishers still live
/// and their keys.
async fn churn(
    origin: SocketAddr,
    viewers: Vec<String>,
    changes: usize,
    every: Duration,
    halfway: tokio::sync::oneshot::Sender<()>,
) -> VecDeque<(String, SynthPublisher)> {
    let mut live: VecDeque<(String, SynthPublisher)> = VecDeque::new();
    let mut halfway = Some(halfway);
    let mut next = 0;
    for i in 0..changes {
        let start = live.len() < 2 || (live.len() < 5 && i % 3 != 2);
        if start {
            let key = format!("live/c{next}");
            next += 1;
            let p = publish(origin, &key);
            for v in &viewers {
                // One request each, not waited for (an agent that is down
                // answers nothing; the test plays again at the end).
                let url = format!("{v}/{key}.flv");
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(3))
                        .build();
                    if let Ok(c) = client {
                        let _ = c.get(&url).send().await;
                    }
                });
            }
            live.push_back((key, p));
        } else if let Some((_, p)) = live.pop_front() {
            p.stop();
        }
        if i + 1 == changes / 2
            && let Some(tx) = halfway.take()
        {
            let _ = tx.send(());
        }
        // Pacing of the churn, not a wait for anything.
        tokio::time::sleep(every).await;
    }
    live
}

/// Must show 3, second half: a restart in the middle of a stream of deltas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_mid_stream_of_deltas_converges_to_the_schedulers_table() {
    const A: &str = "churn-a";
    const B: &str = "churn-b";
    const C: &str = "churn-c";
    let s = scheduler().await;
    let a = Agent::builder(A, &s)
        .region("eu-paris")
        .at(48.8566, 2.3522)
        .start()
        .await;
    let b = Agent::builder(B, &s)
        .region("eu-frankfurt")
        .at(50.1109, 8.6821)
        .start()
        .await;
    let mut c = Agent::builder(C, &s)
        .region("eu-london")
        .at(51.5074, -0.1278)
        .start()
        .await;
    wait_all_up(&s, &[A, B, C], Duration::from_secs(15)).await;
    wait_all_acked(&s, &[&a, &b, &c], Duration::from_secs(15)).await;
    let deltas0 = s
        .metric(
            "vantage_scheduler_route_updates_total",
            &[("kind", "delta")],
        )
        .await;

    // 30 changes over ~10 s.
    let (half_tx, half_rx) = tokio::sync::oneshot::channel();
    let driver = tokio::spawn(churn(
        media_addr(&a),
        vec![b.media_url(), c.media_url()],
        30,
        Duration::from_millis(330),
        half_tx,
    ));
    half_rx
        .await
        .unwrap_or_else(|_| panic!("the churn ended early"));

    // Kill C in the middle, keep it down until its table moved on, then
    // start it on the same data dir.
    c.kill();
    let held = RouteTable::decode(routes_pb(&c).as_slice())
        .unwrap_or_else(|e| panic!("C's routes.pb after the kill: {e}"))
        .version;
    assert!(held > 0, "C had a table on disk");
    eventually(
        Duration::from_secs(15),
        "C's table moves on while C is down",
        || async {
            let v = as_u64(record(&s, C).await.get("version")).unwrap_or(0);
            if v > held {
                Ok(v)
            } else {
                Err(format!("scheduler at v{v}, C holds v{held}"))
            }
        },
    )
    .await;
    c.start().await;

    let live = driver
        .await
        .unwrap_or_else(|e| panic!("churn task failed: {e}"));
    let live_keys: BTreeSet<String> = live.iter().map(|(k, _)| k.clone()).collect();
    assert!(!live_keys.is_empty());
    // Viewers of every live stream on B and C (C missed the streams that
    // started while it was down).
    for key in &live_keys {
        want(&b, key).await;
        want(&c, key).await;
    }

    // Settled: every agent holds the scheduler's table for it; B and C list
    // the streams still live with their origin (A, the origin, lists
    // whatever it was asked for before its publisher connected).
    let mut tables = Vec::new();
    for (agent, live_keys) in [(&a, None), (&b, Some(&live_keys)), (&c, Some(&live_keys))] {
        let t = eventually(
            Duration::from_secs(30),
            &format!("{} converges", agent.node_id()),
            || async {
                let t = converged(&s, agent).await?;
                if live_keys.is_none_or(|k| directory(&t) == *k) {
                    Ok(t)
                } else {
                    Err(format!(
                        "{}: directory {:?}, live {live_keys:?}",
                        agent.node_id(),
                        directory(&t)
                    ))
                }
            },
        )
        .await;
        tables.push(t);
    }
    assert_eq!(
        directory(&tables[1]),
        directory(&tables[2]),
        "B (never restarted) and C (restarted) agree on the live streams"
    );
    let st = c.status_acked(Duration::from_secs(5)).await;
    assert_eq!(st["routes"]["source"], "scheduler", "{st}");

    // Deltas were used, and C caught up from the version it kept: by
    // deltas, since that version was still in the scheduler's log (a whole
    // table only if it was not).
    let deltas = s
        .metric(
            "vantage_scheduler_route_updates_total",
            &[("kind", "delta")],
        )
        .await;
    assert!(
        deltas > deltas0,
        "deltas sent during the churn: {deltas0} -> {deltas}"
    );
    let version = tables[2]["version"].as_u64().unwrap_or(0);
    let c_full = c
        .metric("vantage_agent_route_updates_total", &[("kind", "full")])
        .await;
    let c_delta = c
        .metric("vantage_agent_route_updates_total", &[("kind", "delta")])
        .await;
    eprintln!(
        "C held v{held} on disk, converged at v{version}: {c_delta} deltas and {c_full} whole \
         tables since its restart; {} deltas sent in all",
        deltas - deltas0
    );
    if version - held <= LOG_VERSIONS {
        assert_eq!(c_full, 0.0, "v{held} was in the log: no whole table");
        assert!(c_delta >= 1.0, "C caught up from v{held} by deltas");
    } else {
        assert!(c_full >= 1.0, "v{held} left the log: a whole table");
    }
    assert_eq!(
        c.metric("vantage_agent_route_tables_total", &[("result", "nack")])
            .await,
        0.0
    );
    drop(live);
}

/// The on-demand directory: a stream's start reaches the tables of the
/// agents that asked for it, and no other; asking for a stream published
/// nowhere is answered (an entry without origin) and the play gets 404 as
/// soon as it is, without waiting out the directory wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_change_reaches_only_the_agents_that_asked_for_it() {
    const A: &str = "dir-a";
    const B: &str = "dir-b";
    const C: &str = "dir-c";
    let s = scheduler().await;
    let mut agents = Vec::new();
    for (id, lat, lon) in [
        (A, 48.8566, 2.3522),
        (B, 50.1109, 8.6821),
        (C, 51.5074, -0.1278),
    ] {
        agents.push(Agent::builder(id, &s).at(lat, lon).start().await);
    }
    let (a, b, c) = (&agents[0], &agents[1], &agents[2]);
    wait_all_up(&s, &[A, B, C], Duration::from_secs(15)).await;
    wait_all_acked(&s, &[a, b, c], Duration::from_secs(15)).await;

    // B asks for live/later before it exists: the scheduler answers (an
    // entry without origin) and the play gets 404 — the wait ended on the
    // answer, not on its 2 s timeout.
    assert_eq!(play_once(b, "live/later").await, 404);
    assert_eq!(
        b.metric(
            "vantage_agent_relay_directory_waits_total",
            &[("result", "answered")]
        )
        .await,
        1.0
    );
    let t = eventually(Duration::from_secs(10), "B converged", || converged(&s, b)).await;
    let listed: Vec<&Value> = t["directory"].as_array().into_iter().flatten().collect();
    assert_eq!(listed.len(), 1, "{t}");
    assert_eq!(listed[0]["stream"], "live/later");
    assert_eq!(listed[0]["origin"], "");

    // A already publishes a stream, so every table has a route to origin
    // A. The new stream starts at A: B's table names A; C's version does
    // not move.
    let _first = publish(media_addr(a), "live/first");
    let c_before = eventually(Duration::from_secs(15), "C routes to origin A", || async {
        let t = converged(&s, c).await?;
        if t["origins"].as_array().is_some_and(|o| o.len() == 1) {
            Ok(t)
        } else {
            Err(format!("{t}"))
        }
    })
    .await;
    let _p = publish(media_addr(a), "live/later");
    eventually(Duration::from_secs(15), "B's table names A", || async {
        let t = converged(&s, b).await?;
        if directory(&t) == keys(&["live/later"]) {
            Ok(())
        } else {
            Err(format!("{t}"))
        }
    })
    .await;
    want(b, "live/later").await;
    let t = eventually(Duration::from_secs(10), "C converged", || converged(&s, c)).await;
    assert!(directory(&t).is_empty(), "{t}");
    // C's version moves only with its own routes or probe targets (probes
    // measuring the paths may reorder them meanwhile), never for the
    // stream.
    let content = |t: &Value| {
        let mut t = t.clone();
        if let Some(o) = t.as_object_mut() {
            o.remove("version");
        }
        t
    };
    if t["version"] != c_before["version"] {
        assert_ne!(
            content(&t),
            content(&c_before),
            "C's table moved to a new version with the same content"
        );
    }
    // The scheduler's view of C's route to the stream exists all the same.
    let r = record(&s, C).await;
    assert!(
        r["stream_routes"].as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["stream"] == "live/later" && e["origin"] == A)),
        "{r}"
    );
    assert!(
        s.metric(
            "vantage_scheduler_stream_subscriptions_total",
            &[("kind", "added")]
        )
        .await
            >= 1.0
    );
}
