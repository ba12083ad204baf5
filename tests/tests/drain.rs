//! Issue 7, Must show 5 (graceful drain), with the real binaries, and a
//! clean scheduler stop.
//!
//! * `sigterm_drains_an_agent_with_viewers`: `live/x` is published
//!   (synthetic FLV) to `par`; two viewers play it from `fra`. SIGTERM on
//!   `fra` (drain grace 4 s): the scheduler lists it `draining` within one
//!   report interval; a new viewer gets 503 with `Retry-After`; if the
//!   scheduler has `/v1/resolve`, it never names `fra`; the two viewers keep
//!   receiving media until the grace period is over; the process exits 0 by
//!   grace + 2 s; the node is then `down`, and after a restart `up` again
//!   (an agent's own drain does not stick).
//! * `second_signal_and_idle_agents_exit_at_once`: an agent without viewers
//!   exits at once on SIGTERM despite a 30 s grace; an agent with a viewer
//!   drains until a second SIGTERM, then exits at once.
//! * `scheduler_sigterm_keeps_state` (SQLite and PostgreSQL): a weight change
//!   and an operator drain (a batched store write) made just before SIGTERM
//!   survive the scheduler's restart; the scheduler exits 0.

use rustix::process::{Pid, Signal, kill_process};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use vantage_tests::http::{Http, as_u64, mentions};
use vantage_tests::synth::{FlvViewer, SynthPublisher};
use vantage_tests::{Agent, Scheduler, Store, eventually, store_tests};

const STREAM_PATH: &str = "/live/x.flv";
const INTERVAL_MS: u64 = 500;

fn sigterm(pid: u32) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .unwrap_or_else(|| panic!("invalid pid {pid}"));
    kill_process(pid, Signal::TERM).unwrap_or_else(|e| panic!("kill(SIGTERM): {e}"));
}

fn media_addr(a: &Agent) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], a.ports().http))
}

async fn node_state(s: &Scheduler, id: &str) -> Option<String> {
    s.node(id)
        .await
        .and_then(|n| n.get("state").and_then(Value::as_str).map(str::to_owned))
}

/// Starts `n` viewers of `url` and waits until each received some media.
async fn viewers(url: &str, n: usize) -> Vec<FlvViewer> {
    let mut vs = Vec::new();
    for _ in 0..n {
        vs.push(FlvViewer::start_live(url, Duration::from_secs(20)).await);
    }
    for v in &vs {
        if let Err(seen) = v.wait_bytes(64 * 1024, Duration::from_secs(20)).await {
            panic!("viewer of {url} got no media: {seen:?}");
        }
    }
    vs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_agent_with_viewers() {
    let grace = Duration::from_secs(4);
    let s = Scheduler::builder()
        .report_interval_ms(INTERVAL_MS)
        .start()
        .await;
    let par = Agent::builder("par", &s).at(48.86, 2.35).start().await;
    let mut fra = Agent::builder("fra", &s)
        .at(50.11, 8.68)
        .origin("live/*", &par.media_url())
        .arg("--drain-grace-s")
        .arg(grace.as_secs().to_string())
        .start()
        .await;
    let bru = Agent::builder("bru", &s).at(50.85, 4.35).start().await;
    vantage_tests::cluster::wait_all_up(&s, &["par", "fra", "bru"], Duration::from_secs(20)).await;

    let publisher = SynthPublisher::start(media_addr(&par), STREAM_PATH, 400);
    let play = format!("{}{STREAM_PATH}", fra.media_url());
    let watching = viewers(&play, 2).await;
    publisher.assert_running();
    eventually(Duration::from_secs(10), "fra reports 2 viewers", || async {
        let v = s
            .node("fra")
            .await
            .and_then(|n| as_u64(n.get("load").and_then(|l| l.get("viewers"))));
        if v == Some(2) { Ok(()) } else { Err(v) }
    })
    .await;

    let pid = fra.pid().expect("fra runs");
    let t0 = Instant::now();
    sigterm(pid);

    // The scheduler marks it draining within one report interval.
    let http = Http::new();
    let seen_draining = loop {
        if node_state(&s, "fra").await.as_deref() == Some("draining") {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "fra never became draining: {:?}",
            s.node("fra").await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("fra draining at the scheduler {seen_draining:?} after SIGTERM");
    assert!(
        seen_draining < Duration::from_millis(INTERVAL_MS),
        "draining shown after {seen_draining:?}, more than one report interval"
    );

    // No new viewer is admitted; the media port's health check says so.
    let resp = reqwest::get(&play).await.expect("GET play");
    assert_eq!(resp.status().as_u16(), 503, "new viewer during the drain");
    assert!(
        resp.headers().get("retry-after").is_some(),
        "503 carries Retry-After"
    );
    let body: Value = resp.json().await.expect("JSON error body");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("draining")),
        "{body}"
    );
    let (hs, hb) = http.get(&format!("{}/healthz", fra.media_url())).await;
    assert_eq!((hs, hb["status"].as_str()), (503, Some("draining")));
    // …and so does the admin port's readiness (Kubernetes readinessProbe).
    let (rs, rb) = http.get(&format!("{}/readyz", fra.admin_url())).await;
    assert_eq!((rs, rb["status"].as_str()), (503, Some("draining")));

    // The viewers keep playing through the grace period while the resolve
    // API (when present) never offers fra.
    let resolve = format!(
        "{}/v1/resolve?stream=live/x&lat=50.11&lon=8.68&n=5",
        s.api_url()
    );
    let mut resolve_checks = 0;
    let mut exited = None;
    while t0.elapsed() < grace + Duration::from_secs(3) {
        let (status, v) = http.get(&resolve).await;
        if status == 200 {
            resolve_checks += 1;
            assert!(
                !mentions(&v, "fra") && !mentions(&v, &fra.media_url()),
                "resolve offered the draining agent: {v}"
            );
        }
        if !fra.is_running() {
            exited = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exited =
        exited.unwrap_or_else(|| panic!("fra still running {:?} after SIGTERM", t0.elapsed()));
    eprintln!(
        "fra exited {exited:?} after SIGTERM (grace {grace:?}); resolve checked {resolve_checks} times"
    );
    assert!(
        exited >= grace,
        "exited before the grace period with viewers connected"
    );
    assert!(
        exited <= grace + Duration::from_secs(2),
        "exit took {exited:?}, grace is {grace:?}"
    );
    let (status, _) = fra.shutdown(Duration::from_secs(1)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );

    for (i, v) in watching.iter().enumerate() {
        let seen = v.seen();
        let last = seen.last_at.expect("media received") - t0;
        assert!(
            last + Duration::from_millis(500) >= grace,
            "viewer {i} got its last media {last:?} after SIGTERM, before the grace ({grace:?}) was over: {seen:?}"
        );
        if let Some(end) = seen.ended_at {
            assert!(end - t0 >= grace, "viewer {i} cut at {:?}", end - t0);
        }
    }

    // Gone: down, not draining; a restarted fra is eligible again.
    eventually(Duration::from_secs(5), "fra down after exit", || async {
        match node_state(&s, "fra").await {
            Some(st) if st == "down" => Ok(()),
            other => Err(other),
        }
    })
    .await;
    fra.start().await;
    vantage_tests::cluster::wait_all_up(&s, &["fra"], Duration::from_secs(20)).await;
    let (status, _) = http.get(&format!("{}/live/y.flv", fra.media_url())).await;
    assert_ne!(status, 503, "a restarted agent accepts viewers again");
    drop((par, bru));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_and_idle_agents_exit_at_once() {
    let s = Scheduler::builder()
        .report_interval_ms(INTERVAL_MS)
        .start()
        .await;
    let mut idle = Agent::builder("idle", &s)
        .arg("--drain-grace-s")
        .arg("30")
        .start()
        .await;
    let mut busy = Agent::builder("busy", &s)
        .arg("--drain-grace-s")
        .arg("30")
        .start()
        .await;
    vantage_tests::cluster::wait_all_up(&s, &["idle", "busy"], Duration::from_secs(20)).await;

    // No viewers: nothing to wait for.
    let t0 = Instant::now();
    let (status, in_time) = idle.shutdown(Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert!(in_time && status.is_some_and(|s| s.success()), "{status:?}");
    assert!(took < Duration::from_secs(3), "idle agent took {took:?}");

    // A viewer (of a stream published to the agent itself): the drain would
    // last 30 s; a second SIGTERM ends it.
    let _publisher = SynthPublisher::start(media_addr(&busy), STREAM_PATH, 300);
    let watching = viewers(&format!("{}{STREAM_PATH}", busy.media_url()), 1).await;
    let viewer = &watching[0];
    let pid = busy.pid().expect("busy runs");
    sigterm(pid);
    eventually(Duration::from_secs(2), "busy draining", || async {
        match node_state(&s, "busy").await {
            Some(st) if st == "draining" => Ok(()),
            other => Err(other),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(busy.is_running(), "still draining with a viewer");
    assert!(viewer.seen().ended_at.is_none(), "viewer still playing");
    let t1 = Instant::now();
    sigterm(pid);
    let (status, in_time) = busy.shutdown(Duration::from_secs(3)).await;
    let took = t1.elapsed();
    assert!(in_time && status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        took < Duration::from_millis(1500),
        "second SIGTERM took {took:?}"
    );
}

async fn scheduler_sigterm_keeps_state(store: Store) {
    let mut s = Scheduler::builder()
        .store(store)
        .report_interval_ms(250)
        .start()
        .await;
    let _agent = Agent::builder("keep", &s).start().await;
    vantage_tests::cluster::wait_all_up(&s, &["keep"], Duration::from_secs(20)).await;
    let (status, w) = s.put("/v1/weights", &json!({"buffer": 0.4})).await;
    assert_eq!(status, 200, "{w}");
    let version = as_u64(w.get("version")).unwrap_or_else(|| panic!("weights version: {w}"));
    // An operator drain is queued for the batched writer; SIGTERM follows
    // at once, so only the shutdown flush can have written it.
    let (status, d) = s.post("/v1/nodes/keep/drain").await;
    assert_eq!(status, 200, "{d}");
    let t0 = Instant::now();
    let exit = s.stop().await;
    assert!(exit.success(), "scheduler exit status {exit}");
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "stop took {:?}",
        t0.elapsed()
    );

    s.start().await;
    let w = s.weights().await;
    assert_eq!(as_u64(w.get("version")), Some(version), "{w}");
    assert_eq!(w["weights"]["buffer"].as_f64(), Some(0.4), "{w}");
    eventually(
        Duration::from_secs(20),
        "keep reconnects and is still draining",
        || async {
            match s.node("keep").await {
                Some(n) if n["state"] == "draining" && n["connected"] == true => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
    s.assert_store_in_use().await;
}

store_tests! {
    scheduler_sigterm_keeps_state => sqlite_scheduler_sigterm_keeps_state, postgres_scheduler_sigterm_keeps_state;
}
