//! Scheduler high availability (issue 19): three `vantage-scheduler`
//! replicas on one real PostgreSQL database (started by `scripts/test.sh`),
//! agents configured with every replica.
//!
//! 1. Three replicas, six agents, a publisher and a viewer: every replica
//!    lists all six nodes `up` with fresh reports; `/v1/resolve` gives the
//!    same top edge on every replica for the same query; one leader, named
//!    by every replica; every agent holds a table of the leader's term.
//! 2. SIGKILL the leader while a viewer plays and a weight change is in
//!    flight: a new leader within the bound (3 report intervals + the
//!    lease), route versions never go backwards on any agent, the weight
//!    change is in force everywhere or nowhere, media never stops, `/play`
//!    on the survivors keeps answering 302.
//! 3. SIGSTOP the leader past its lease, let another take over, SIGCONT it:
//!    it steps down, no agent accepts a table from it, one leader.
//! 4. PostgreSQL (a server of the test's own) SIGKILLed for 10 s: reads and
//!    `/play` go on, writes are 503 JSON errors, nothing is lost after.
//! 5. (in 2) An agent killed during the leader failover is `down` on every
//!    survivor and not offered within 3.5 intervals + the failover bound.
//!
//! Also: a second scheduler on one SQLite file is refused at start.
//!
//! PostgreSQL-only: without `VANTAGE_TEST_POSTGRES_URL` the tests print
//! `SKIPPED` (and fail under `CI=true`).

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vantage_tests::agent::status_route_version;
use vantage_tests::cluster::{ORIGIN, PLACES, node_healthy};
use vantage_tests::http::as_u64;
use vantage_tests::replicas::Replicas;
use vantage_tests::synth::{FlvViewer, SynthPublisher};
use vantage_tests::{Agent, AgentBuilder, Store, eventually};

const INTERVAL_MS: u64 = 500;
const LEASE_MS: u64 = 2_000;
const IDS: [&str; 6] = ["edge-0", "edge-1", "edge-2", "edge-3", "edge-4", "edge-5"];

fn admin_url(test: &str) -> Option<String> {
    match Store::postgres_or_skip(test)? {
        Store::Postgres { admin_url } => Some(admin_url),
        Store::Sqlite => None,
    }
}

/// Three replicas (exploration off, so answers are deterministic) and the
/// six agents, each configured with every replica, all `up` everywhere.
async fn three_replicas_six_agents(admin: &str) -> (Replicas, Vec<Agent>) {
    let r = Replicas::start(
        admin,
        3,
        INTERVAL_MS,
        LEASE_MS,
        &["--exploration-share", "0"],
    )
    .await;
    let mut agents = Vec::new();
    for (i, id) in IDS.iter().enumerate() {
        let (region, lat, lon) = PLACES[i % PLACES.len()];
        agents.push(
            AgentBuilder::new(id, r.endpoints())
                .region(region)
                .at(lat, lon)
                .origin(ORIGIN.0, ORIGIN.1)
                .start()
                .await,
        );
    }
    for (i, s) in r.all.iter().enumerate() {
        all_up_on(s, i).await;
    }
    (r, agents)
}

/// Waits until replica `i` lists every node `up`, connected, with a report
/// at most two intervals old.
async fn all_up_on(s: &vantage_tests::Scheduler, i: usize) -> Vec<Value> {
    eventually(
        Duration::from_secs(30),
        &format!("replica-{i} lists all six nodes up with fresh reports"),
        || async {
            let nodes = s.nodes().await;
            let mut problems = Vec::new();
            let mut found = Vec::new();
            for id in IDS {
                match nodes.iter().find(|n| n["id"] == id) {
                    None => problems.push(format!("{id}: not listed")),
                    Some(n) => match node_healthy(n, 2 * INTERVAL_MS) {
                        Ok(()) => found.push(n.clone()),
                        Err(e) => problems.push(e),
                    },
                }
            }
            if problems.is_empty() {
                Ok(found)
            } else {
                Err(problems)
            }
        },
    )
    .await
}

/// The table term and version an agent holds (from its `/v1/status`).
async fn held(a: &Agent) -> Option<(u64, u64)> {
    let st = a.try_status().await?;
    let v = status_route_version(&st)?;
    Some((as_u64(st["routes"].get("term")).unwrap_or(0), v))
}

fn first_edge(v: &Value) -> Option<String> {
    v["edges"].get(0)?["node_id"].as_str().map(str::to_owned)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

/// Viewer places for resolve queries: near each agent, and in between.
const VIEWERS: [(&str, f64, f64); 5] = [
    ("lyon", 45.764, 4.8357),
    ("osaka", 34.6937, 135.5023),
    ("rio", -22.9068, -43.1729),
    ("boston", 42.3601, -71.0589),
    ("cairo", 30.0444, 31.2357),
];

/// Must show 1.
async fn every_replica_sees_the_whole_world(admin: String) {
    let (r, agents) = three_replicas_six_agents(&admin).await;
    let all = [0, 1, 2];
    let (leader, term) = r.wait_leader(&all, Duration::from_secs(15)).await;
    eprintln!("replica-{leader} leads under term {term}");
    assert!(term >= 1, "terms start at 1");

    // Every replica lists the three replicas, healthy, one of them leading.
    for i in all {
        let c = eventually(
            Duration::from_secs(10),
            &format!("replica-{i} lists three healthy replicas"),
            || async {
                let c = r.cluster(i).await.ok_or("no answer")?;
                let reps = c["replicas"].as_array().cloned().unwrap_or_default();
                let healthy = reps.iter().filter(|x| x["healthy"] == true).count();
                let leading = reps.iter().filter(|x| x["role"] == "leader").count();
                if reps.len() == 3 && healthy == 3 && leading == 1 {
                    Ok(c)
                } else {
                    Err(c.to_string())
                }
            },
        )
        .await;
        assert_eq!(c["mode"], "replicated", "{c}");
    }

    // Every agent holds a table of the leader's term (wherever its route
    // stream is open) and reports to all three replicas.
    eventually(
        Duration::from_secs(15),
        "every agent holds a table of the leader's term",
        || async {
            let mut out = Vec::new();
            for a in &agents {
                match held(a).await {
                    Some((t, v)) if t == term => out.push(v),
                    other => return Err(format!("{}: {other:?}", a.node_id())),
                }
            }
            Ok(out)
        },
    )
    .await;
    for a in &agents {
        let connected = a.metric("vantage_agent_telemetry_connected", &[]).await;
        assert_eq!(connected, 3.0, "{} reports to every replica", a.node_id());
    }

    // A publisher on edge-0 and a viewer on edge-3 (pulling through the
    // routes the leader planned).
    let publisher = SynthPublisher::start(
        vantage_tests::ports::loopback(agents[0].ports().http),
        "/live/x.flv",
        400,
    );
    let viewer = FlvViewer::start_live(
        &format!("{}/live/x.flv", agents[3].media_url()),
        Duration::from_secs(20),
    )
    .await;

    // The same query gets the same top edge from every replica.
    for (name, lat, lon) in VIEWERS {
        let q = format!("/v1/resolve?stream=live/x&lat={lat}&lon={lon}&n=3");
        let answers = eventually(
            Duration::from_secs(15),
            &format!("{name}: the same top edge on every replica"),
            || async {
                let mut tops = BTreeMap::new();
                for (i, s) in r.all.iter().enumerate() {
                    let (st, v) = s.get(&q).await;
                    if st != 200 {
                        return Err(format!("replica-{i}: {st} {v}"));
                    }
                    tops.insert(i, first_edge(&v));
                }
                let first = tops[&0].clone();
                if first.is_some() && tops.values().all(|t| *t == first) {
                    Ok(first)
                } else {
                    Err(format!("{tops:?}"))
                }
            },
        )
        .await;
        eprintln!("{name}: {answers:?} on every replica");
    }
    // /play redirects on every replica.
    let client = no_redirects();
    for s in &r.all {
        let resp = client
            .get(format!(
                "{}/play/live/x.flv?lat=48.85&lon=2.35",
                s.api_url()
            ))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: /play: {e}", s.name()));
        assert_eq!(resp.status().as_u16(), 302, "{}: /play", s.name());
    }

    // The dashboard of every replica shows who leads and each replica's
    // health.
    if let Some(chromium) =
        vantage_tests::browser::chromium("postgres_every_replica_sees_the_whole_world")
    {
        let mut b = vantage_tests::browser::Browser::launch(&chromium, 1200, 900)
            .await
            .unwrap_or_else(|e| panic!("launching chromium: {e}"));
        for (i, s) in r.all.iter().enumerate() {
            b.goto(&format!("{}/", s.api_url()))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let rows = b
                .wait_for(
                    "(() => { const rows = [...document.querySelectorAll('#replicas tbody tr.replica-row')]; \
                       const leaders = rows.filter(r => r.children[1].textContent === 'leader'); \
                       const healthy = rows.filter(r => r.children[3].textContent === 'healthy'); \
                       return rows.length === 3 && leaders.length === 1 && healthy.length === 3 \
                         && document.querySelector('#cluster-summary').textContent.includes('leads') \
                         ? rows.map(r => [r.dataset.id, r.children[1].textContent]) : null; })()",
                    Duration::from_secs(15),
                )
                .await
                .unwrap_or_else(|e| panic!("replica-{i} dashboard: {e}"));
            let leader_row = rows
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r[1] == "leader"))
                .cloned()
                .unwrap_or(Value::Null);
            assert_eq!(
                leader_row[0],
                format!("replica-{leader}"),
                "replica-{i}: {rows}"
            );
        }
    }

    let seen = viewer.seen();
    assert!(seen.bytes > 0 && seen.ended_at.is_none(), "{seen:?}");
    publisher.assert_running();
    publisher.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_replica_sees_the_whole_world() {
    if let Some(admin) = admin_url("postgres_every_replica_sees_the_whole_world") {
        every_replica_sees_the_whole_world(admin).await;
    }
}

/// What an agent watcher saw: per agent, the (term, version) pairs it held
/// in order, and every time one went backwards.
#[derive(Debug, Default)]
struct Watch {
    regressions: Vec<String>,
    last: BTreeMap<String, (u64, u64)>,
    /// (term, version) pairs each agent held, deduplicated, in order.
    history: BTreeMap<String, Vec<(u64, u64)>>,
}

/// Polls every agent's `/v1/status` every 50 ms until `stop` is set.
fn watch_agents(
    agents: &[&Agent],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Watch> {
    let urls: Vec<(String, String)> = agents
        .iter()
        .map(|a| {
            (
                a.node_id().to_owned(),
                format!("{}/v1/status", a.admin_url()),
            )
        })
        .collect();
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .no_proxy()
            .build()
            .unwrap_or_else(|e| panic!("client: {e}"));
        let mut w = Watch::default();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for (id, url) in &urls {
                let Ok(resp) = client.get(url).send().await else {
                    continue;
                };
                let Ok(st) = resp.json::<Value>().await else {
                    continue;
                };
                let Some(v) = status_route_version(&st) else {
                    continue;
                };
                let t = as_u64(st["routes"].get("term")).unwrap_or(0);
                if let Some(&(pt, pv)) = w.last.get(id)
                    && ((t, v) < (pt, pv) || v < pv)
                {
                    w.regressions
                        .push(format!("{id}: t{pt} v{pv} -> t{t} v{v}"));
                }
                w.last.insert(id.clone(), (t, v));
                let h = w.history.entry(id.clone()).or_default();
                if h.last() != Some(&(t, v)) {
                    h.push((t, v));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        w
    })
}

/// Asks `/play` on `urls` every 100 ms until `stop`: (answers, non-302s).
fn play_loop(
    urls: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let client = no_redirects();
        let (mut n, mut failures) = (0u64, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for base in &urls {
                let url = format!("{base}/play/live/x.flv?lat=50.11&lon=8.68");
                n += 1;
                match client.get(&url).send().await {
                    Ok(r) if r.status().as_u16() == 302 => {}
                    Ok(r) => failures.push(format!("{url}: {}", r.status())),
                    Err(e) => failures.push(format!("{url}: {e}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (n, failures)
    })
}

/// Samples a viewer every 100 ms until `stop`: the longest time its byte
/// count did not grow.
fn media_gap(
    viewer: std::sync::Arc<FlvViewer>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut last = (viewer.seen().bytes, Instant::now());
        let mut worst = Duration::ZERO;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let b = viewer.seen().bytes;
            if b > last.0 {
                last = (b, Instant::now());
            }
            worst = worst.max(last.1.elapsed());
        }
        worst
    })
}

/// Publisher on edge-0 (Paris), viewer on edge-1 (Frankfurt).
async fn publish_and_view(agents: &[Agent]) -> (SynthPublisher, std::sync::Arc<FlvViewer>) {
    let publisher = SynthPublisher::start(
        vantage_tests::ports::loopback(agents[0].ports().http),
        "/live/x.flv",
        400,
    );
    let viewer = FlvViewer::start_live(
        &format!("{}/live/x.flv", agents[1].media_url()),
        Duration::from_secs(20),
    )
    .await;
    (publisher, std::sync::Arc::new(viewer))
}

/// Must show 2 and 5: SIGKILL the leader with a weight change in flight,
/// and an agent during the failover.
async fn leader_killed_mid_weight_change(admin: String) {
    let (mut r, mut agents) = three_replicas_six_agents(&admin).await;
    let all = [0usize, 1, 2];
    let (leader, term) = r.wait_leader(&all, Duration::from_secs(15)).await;
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let (publisher, viewer) = publish_and_view(&agents).await;
    // The victim agent: one the viewer's path does not go through.
    let path = vantage_tests::cluster::upstreams(&agents[1].routes().await, "live/x");
    let victim = (2..IDS.len())
        .find(|&i| !path.iter().any(|u| u == IDS[i]))
        .unwrap_or_else(|| unreachable!("a path of 4 upstreams"));
    let weights_before = as_u64(r.all[leader].weights().await.get("version")).unwrap_or(0);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refs: Vec<&Agent> = agents.iter().collect();
    let watch = watch_agents(&refs, stop.clone());
    let plays = play_loop(
        survivors.iter().map(|&i| r.all[i].api_url()).collect(),
        stop.clone(),
    );
    let gap = media_gap(viewer.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The weight change goes to the leader, which dies at once.
    let put_url = format!("{}/v1/weights", r.all[leader].api_url());
    let put = tokio::spawn(async move {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .no_proxy()
            .build()
            .unwrap_or_else(|e| panic!("client: {e}"));
        match c.put(&put_url).json(&json!({"latency": 0.6})).send().await {
            Ok(resp) => {
                let st = resp.status().as_u16();
                (st, resp.json::<Value>().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    });
    tokio::time::sleep(Duration::from_millis(3)).await;
    r.all[leader].kill();
    let t0 = Instant::now();
    agents[victim].kill();
    eprintln!("killed replica-{leader} (term {term}) and {}", IDS[victim]);

    // A new leader, agreed by both survivors, within the bound.
    let bound = Duration::from_millis(3 * INTERVAL_MS + LEASE_MS);
    let (new_leader, new_term) = loop {
        if let Ok((l, t)) = r.agreed_leader(&survivors).await
            && t > term
        {
            break (l, t);
        }
        assert!(
            t0.elapsed() < bound * 3,
            "no new leader within {:?}: {:?}",
            bound * 3,
            r.views(&survivors).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let failover = t0.elapsed();
    eprintln!(
        "replica-{new_leader} leads under term {new_term} after {failover:?} (bound {bound:?})"
    );
    assert!(
        failover <= bound,
        "failover took {failover:?}, bound {bound:?}"
    );

    // The killed agent is down and routed around on every survivor within
    // 3.5 intervals + the failover bound.
    let down_bound = Duration::from_millis(INTERVAL_MS * 7 / 2) + bound;
    for &i in &survivors {
        let s = &r.all[i];
        let took = eventually(
            down_bound * 2,
            &format!("{} down on replica-{i}", IDS[victim]),
            || async {
                match s.node(IDS[victim]).await {
                    Some(n) if n["state"] == "down" => Ok(t0.elapsed()),
                    other => Err(other.map(|n| n["state"].clone())),
                }
            },
        )
        .await;
        eprintln!("{} down on replica-{i} after {took:?}", IDS[victim]);
        assert!(took <= down_bound, "{took:?} > {down_bound:?}");
        let (_, lat, lon) = PLACES[victim];
        let (st, v) = s
            .get(&format!(
                "/v1/resolve?stream=live/x&lat={lat}&lon={lon}&n=10"
            ))
            .await;
        assert_eq!(st, 200, "{v}");
        assert!(
            !v["edges"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["node_id"] == IDS[victim])),
            "replica-{i} still offers {}: {v}",
            IDS[victim]
        );
    }

    // The weight change: applied everywhere or nowhere.
    let (put_status, put_body) = put.await.unwrap_or((0, Value::Null));
    eprintln!("the in-flight weight change answered {put_status}: {put_body}");
    let agreed = eventually(
        Duration::from_secs(10),
        "the survivors agree on the weights",
        || async {
            let mut versions = Vec::new();
            for &i in &survivors {
                versions.push(as_u64(r.all[i].weights().await.get("version")).unwrap_or(0));
            }
            if versions.windows(2).all(|w| w[0] == w[1]) {
                Ok(versions[0])
            } else {
                Err(versions)
            }
        },
    )
    .await;
    if put_status == 200 {
        assert_eq!(
            Some(agreed),
            as_u64(put_body.get("version")),
            "an acknowledged weight change is in force on every replica"
        );
    } else {
        assert!(
            agreed == weights_before || agreed == weights_before + 1,
            "weights version {agreed}, was {weights_before}"
        );
    }
    let living: Vec<&Agent> = agents
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, a)| a)
        .collect();
    eventually(
        Duration::from_secs(15),
        "every agent holds a table of the new term planned with the agreed weights",
        || async {
            for a in &living {
                let routes = a.routes().await;
                let wv = vantage_tests::cluster::table_weights_version(&routes);
                let t = as_u64(routes.get("term")).unwrap_or(0);
                if wv != Some(agreed) || t != new_term {
                    return Err(format!("{}: weights {wv:?} term {t}", a.node_id()));
                }
            }
            Ok(())
        },
    )
    .await;

    // Keep watching a little after the failover, then judge.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = watch.await.unwrap_or_default();
    let (plays_n, play_failures) = plays.await.unwrap_or_default();
    let worst_gap = gap.await.unwrap_or(Duration::MAX);
    eprintln!(
        "tables held: {:?}\n/play: {plays_n} answers, {} failures; longest media gap {worst_gap:?}",
        w.history,
        play_failures.len()
    );
    assert!(
        w.regressions.is_empty(),
        "versions went backwards: {:?}",
        w.regressions
    );
    assert!(plays_n > 10, "/play was asked {plays_n} times");
    assert!(
        play_failures.is_empty(),
        "/play failures: {play_failures:?}"
    );
    let seen = viewer.seen();
    assert!(seen.ended_at.is_none(), "the viewer stopped: {seen:?}");
    assert!(
        worst_gap < Duration::from_secs(2),
        "media stopped for {worst_gap:?}"
    );
    publisher.assert_running();
    publisher.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leader_killed_mid_weight_change() {
    if let Some(admin) = admin_url("postgres_leader_killed_mid_weight_change") {
        leader_killed_mid_weight_change(admin).await;
    }
}

/// Must show 3: SIGSTOP the leader past its lease, SIGCONT it.
async fn paused_leader_steps_down(admin: String) {
    let (r, agents) = three_replicas_six_agents(&admin).await;
    let all = [0usize, 1, 2];
    let (leader, term) = r.wait_leader(&all, Duration::from_secs(15)).await;
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let (publisher, viewer) = publish_and_view(&agents).await;
    let refs: Vec<&Agent> = agents.iter().collect();
    let refused_before = {
        let mut n = 0.0;
        for a in &refs {
            n += a
                .metric(
                    "vantage_agent_route_tables_refused_total",
                    &[("reason", "older_term")],
                )
                .await;
        }
        n
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = watch_agents(&refs, stop.clone());
    let gap = media_gap(viewer.clone(), stop.clone());

    r.all[leader].pause();
    let t0 = Instant::now();
    eprintln!("paused replica-{leader} (term {term})");
    let (new_leader, new_term) = loop {
        if let Ok((l, t)) = r.agreed_leader(&survivors).await
            && t > term
        {
            break (l, t);
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "no new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "replica-{new_leader} leads under term {new_term} after {:?}",
        t0.elapsed()
    );
    // A weight change through the other follower while the old leader sleeps.
    let other = survivors
        .iter()
        .copied()
        .find(|&i| i != new_leader)
        .unwrap_or(new_leader);
    let (st, changed) = r.all[other]
        .put("/v1/weights", &json!({"latency": 0.7}))
        .await;
    assert_eq!(st, 200, "{changed}");
    let weights_version = as_u64(changed.get("version")).unwrap_or(0);
    // Paused well past its lease (and the agents' keep-alive timeout).
    let paused_for = Duration::from_millis(LEASE_MS * 3);
    tokio::time::sleep(paused_for.saturating_sub(t0.elapsed())).await;
    r.all[leader].resume();
    eprintln!("resumed replica-{leader} after {:?}", t0.elapsed());

    // It steps down: a follower of the new term; one leader among all.
    let (l, t) = r.wait_leader(&all, Duration::from_secs(10)).await;
    assert_eq!((l, t), (new_leader, new_term), "{:?}", r.views(&all).await);
    let old = r.cluster(leader).await.unwrap_or(Value::Null);
    assert_eq!(old["replica"]["role"], "follower", "{old}");
    // Every replica holds the weights written through a follower.
    for (i, s) in r.all.iter().enumerate() {
        eventually(
            Duration::from_secs(5),
            &format!("replica-{i} holds weights v{weights_version}"),
            || async {
                let v = as_u64(s.weights().await.get("version")).unwrap_or(0);
                if v == weights_version { Ok(()) } else { Err(v) }
            },
        )
        .await;
    }
    // No split brain afterwards either: sample for a while.
    for _ in 0..20 {
        let views = r.views(&all).await;
        let leaders = views.iter().filter(|v| v.role == "leader").count();
        assert!(leaders <= 1, "two leaders: {views:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(
        Duration::from_secs(15),
        "every agent holds a table of the new term",
        || async {
            for a in &refs {
                let st = a.status().await;
                let t = as_u64(st["routes"].get("term")).unwrap_or(0);
                if t != new_term {
                    return Err(format!("{}: term {t}", a.node_id()));
                }
            }
            Ok(())
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = watch.await.unwrap_or_default();
    let worst_gap = gap.await.unwrap_or(Duration::MAX);
    let mut refused = 0.0;
    for a in &refs {
        refused += a
            .metric(
                "vantage_agent_route_tables_refused_total",
                &[("reason", "older_term")],
            )
            .await;
    }
    eprintln!(
        "tables held: {:?}\nrefused tables of an older term: {}; longest media gap {worst_gap:?}",
        w.history,
        refused - refused_before
    );
    assert!(
        w.regressions.is_empty(),
        "versions went backwards: {:?}",
        w.regressions
    );
    // No agent ever held a table of the old term after one of the new term.
    for (id, h) in &w.history {
        let first_new = h.iter().position(|(t, _)| *t >= new_term);
        if let Some(p) = first_new {
            assert!(
                h[p..].iter().all(|(t, _)| *t >= new_term),
                "{id} went back to an old term: {h:?}"
            );
        }
    }
    let fenced = r.all[leader]
        .metric("vantage_scheduler_commits_fenced_total", &[])
        .await;
    eprintln!("commits fenced on the old leader: {fenced}");
    assert!(viewer.seen().ended_at.is_none(), "{:?}", viewer.seen());
    assert!(
        worst_gap < Duration::from_secs(2),
        "media stopped for {worst_gap:?}"
    );
    publisher.assert_running();
    publisher.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_paused_leader_steps_down() {
    if let Some(admin) = admin_url("postgres_paused_leader_steps_down") {
        paused_leader_steps_down(admin).await;
    }
}

/// Must show 4: PostgreSQL killed for 10 s (a server of the test's own).
async fn database_killed_for_ten_seconds() {
    let Some(pg) = vantage_tests::pgserver::PgServer::start_new().await else {
        vantage_tests::store::skip(
            "postgres_database_killed_for_ten_seconds",
            "no PostgreSQL server binaries in /usr/lib/postgresql (run scripts/test.sh)",
        );
        return;
    };
    let (r, agents) = three_replicas_six_agents(&pg.admin_url()).await;
    let all = [0usize, 1, 2];
    let (_, term) = r.wait_leader(&all, Duration::from_secs(15)).await;
    let (publisher, viewer) = publish_and_view(&agents).await;
    let (st, w) = r.all[1].put("/v1/weights", &json!({"latency": 0.65})).await;
    assert_eq!(st, 200, "{w}");
    let weights_version = as_u64(w.get("version")).unwrap_or(0);
    for s in &r.all {
        eventually(Duration::from_secs(5), "weights everywhere", || async {
            let v = as_u64(s.weights().await.get("version")).unwrap_or(0);
            if v == weights_version { Ok(()) } else { Err(v) }
        })
        .await;
    }
    let refs: Vec<&Agent> = agents.iter().collect();
    eventually(
        Duration::from_secs(15),
        "every agent holds a table planned with the new weights",
        || async {
            for a in &refs {
                let routes = a.routes().await;
                let wv = vantage_tests::cluster::table_weights_version(&routes);
                if wv != Some(weights_version) {
                    return Err(format!("{}: {wv:?}", a.node_id()));
                }
            }
            Ok(())
        },
    )
    .await;
    let history_before = r.all[0].get("/v1/weights/history").await.1;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = watch_agents(&refs, stop.clone());
    let gap = media_gap(viewer.clone(), stop.clone());

    pg.kill().await;
    let t0 = Instant::now();
    eprintln!("PostgreSQL killed");
    let client = no_redirects();
    let (mut reads, mut writes) = (0u32, 0u32);
    let mut failures = Vec::new();
    while t0.elapsed() < Duration::from_secs(10) {
        for (i, s) in r.all.iter().enumerate() {
            let (st, v) = s.get("/v1/resolve?stream=live/x&lat=48.85&lon=2.35").await;
            if st != 200 || first_edge(&v).is_none() {
                failures.push(format!("replica-{i} resolve: {st} {v}"));
            }
            match client
                .get(format!(
                    "{}/play/live/x.flv?lat=48.85&lon=2.35",
                    s.api_url()
                ))
                .send()
                .await
            {
                Ok(resp) if resp.status().as_u16() == 302 => {}
                other => failures.push(format!("replica-{i} /play: {other:?}")),
            }
            reads += 2;
        }
        // Writes: 503 with a JSON error, once the replica noticed.
        if t0.elapsed() > Duration::from_secs(3) {
            for (i, s) in r.all.iter().enumerate() {
                let (st, v) = s.put("/v1/weights", &json!({"latency": 0.9})).await;
                writes += 1;
                if st != 503 || !v["error"].is_string() {
                    failures.push(format!("replica-{i} PUT /v1/weights: {st} {v}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (i, s) in r.all.iter().enumerate() {
        let asked = Instant::now();
        let (st, v) = s.get("/readyz").await;
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "replica-{i} /readyz took {:?}",
            asked.elapsed()
        );
        assert_eq!(
            st, 200,
            "replica-{i} /readyz while the database is away: {v}"
        );
        assert_eq!(v["store"], "unavailable", "replica-{i}: {v}");
    }
    eprintln!("{reads} reads and {writes} writes while the database was away");
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(reads >= 60, "{reads} reads");
    assert!(writes >= 9, "{writes} writes tried");
    // Agents kept their tables meanwhile.
    for a in &refs {
        let (t, _) = held(a).await.unwrap_or((0, 0));
        assert_eq!(t, term, "{} holds a table of term {t}", a.node_id());
    }

    pg.start().await;
    eprintln!("PostgreSQL back after {:?}", t0.elapsed());
    let (leader, new_term) = r.wait_leader(&all, Duration::from_secs(20)).await;
    eprintln!("replica-{leader} leads under term {new_term}");
    // Nothing lost: the weights and their history, every node, and writes
    // work again through any replica.
    for (i, s) in r.all.iter().enumerate() {
        let v = as_u64(s.weights().await.get("version")).unwrap_or(0);
        assert_eq!(
            v, weights_version,
            "replica-{i}: no 503'd write took effect"
        );
        all_up_on(s, i).await;
        let dropped = s.metric("vantage_scheduler_store_dropped_total", &[]).await;
        assert_eq!(dropped, 0.0, "replica-{i} dropped store writes");
    }
    let history_after = r.all[2].get("/v1/weights/history").await.1;
    assert_eq!(history_before, history_after);
    let (st, w) = r.all[2].put("/v1/weights", &json!({"latency": 0.55})).await;
    assert_eq!(st, 200, "{w}");
    let after = as_u64(w.get("version")).unwrap_or(0);
    assert!(after > weights_version);
    eventually(
        Duration::from_secs(20),
        "every agent holds a table of the leader's term planned with the newest weights",
        || async {
            let (_, t) = r.agreed_leader(&all).await?;
            for a in &refs {
                let routes = a.routes().await;
                let wv = vantage_tests::cluster::table_weights_version(&routes);
                let at = as_u64(routes.get("term")).unwrap_or(0);
                if wv != Some(after) || at != t {
                    return Err(format!(
                        "{}: weights {wv:?} term {at} (leader {t})",
                        a.node_id()
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = watch.await.unwrap_or_default();
    let worst_gap = gap.await.unwrap_or(Duration::MAX);
    eprintln!(
        "tables held: {:?}; longest media gap {worst_gap:?}",
        w.history
    );
    assert!(
        w.regressions.is_empty(),
        "versions went backwards: {:?}",
        w.regressions
    );
    assert!(viewer.seen().ended_at.is_none(), "{:?}", viewer.seen());
    assert!(
        worst_gap < Duration::from_secs(2),
        "media stopped for {worst_gap:?}"
    );
    publisher.assert_running();
    publisher.stop();
    drop(agents);
    drop(r);
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_killed_for_ten_seconds() {
    database_killed_for_ten_seconds().await;
}

/// What to build 1: SQLite serves one replica; a second scheduler on the
/// same database file is refused at start with a clear error, and the first
/// one goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_second_replica_is_refused() {
    let first = vantage_tests::Scheduler::builder().start().await;
    let db = first.data_dir().join("vantage.db");
    let url = format!("sqlite://{}", db.display());
    let port = || vantage_tests::ports::free_tcp_port().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(vantage_tests::bins::bin(vantage_tests::bins::SCHEDULER))
            .args(["--dev", "--data-dir"])
            .arg(first.data_dir().join("second"))
            .args(["--database-url", &url])
            .args([
                "--quic-listen",
                &format!("127.0.0.1:{}", vantage_tests::ports::free_udp_port()),
            ])
            .args(["--grpc-listen", &format!("127.0.0.1:{}", port())])
            .args(["--http-listen", &format!("127.0.0.1:{}", port())])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the second scheduler neither started nor exited within 30 s")
    .expect("running vantage-scheduler");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the second replica started: {stderr}"
    );
    assert!(
        stderr.contains("already uses the SQLite database")
            && stderr.contains("PostgreSQL")
            && stderr.contains(&db.display().to_string()),
        "{stderr}"
    );
    let (st, v) = first.get("/readyz").await;
    assert_eq!(st, 200, "{v}");
    let c = first.get("/v1/cluster").await.1;
    assert_eq!(c["mode"], "single", "{c}");
    assert_eq!(c["replica"]["role"], "leader", "{c}");
}
