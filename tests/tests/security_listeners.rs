//! Issue 17, connection hygiene: 20,000 idle sockets against the
//! scheduler's HTTP API and gRPC port (no TLS handshake timeout, no
//! header-read timeout) used to make the API time out and route
//! subscriptions fail, with one worker spinning at 100 % CPU retrying
//! `accept` on EMFILE. Every listener now has handshake/header timeouts, a
//! cap on connections that sheds idle unproven ones first, and backs off
//! on EMFILE; the same holds for an agent's media, admin and RTMP ports.
//!
//! The sockets are held by `vantage-idle-sockets` helper processes, 10,000
//! or fewer each, every one raising its own descriptor limit (a process may
//! not raise its hard limit here); the attacked process's limit is lowered
//! to 4,096, so the attack exhausts it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use vantage_tests::cluster::{acked_version, wait_all_up};
use vantage_tests::flood::{IdleFlood, cpu_seconds, open_fds, set_fd_limit_of};
use vantage_tests::ports::loopback;
use vantage_tests::synth::{FlvViewer, SynthPublisher};
use vantage_tests::{Agent, Scheduler, eventually};

const ATTACK: usize = 20_000;
const VICTIM_FDS: u64 = 4096;

/// CPU share (cores) `pid` used over `window`.
async fn cpu_share(pid: u32, window: Duration) -> f64 {
    let a = cpu_seconds(pid).unwrap_or(0.0);
    tokio::time::sleep(window).await;
    let b = cpu_seconds(pid).unwrap_or(0.0);
    (b - a) / window.as_secs_f64()
}

/// Opens the attack's idle sockets, shared evenly among `addrs`, one
/// helper process per address (all at once).
async fn attack(addrs: &[SocketAddr]) -> Vec<IdleFlood> {
    let n = ATTACK / addrs.len();
    futures::future::join_all(addrs.iter().map(|&a| IdleFlood::spawn(a, n))).await
}

fn held(floods: &[IdleFlood]) -> usize {
    floods.iter().map(|f| f.held).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_starve_the_scheduler() {
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let pid = s.pid().unwrap();
    set_fd_limit_of(pid, VICTIM_FDS).unwrap();
    let a = Agent::builder("idle-a", &s).start().await;
    wait_all_up(&s, &["idle-a"], Duration::from_secs(15)).await;

    let http = loopback(s.ports().http);
    let started = Instant::now();
    let floods = attack(&[http, s.grpc_addr()]).await;
    eprintln!(
        "{} idle sockets connected in {:?} ({} attempts failed); scheduler holds {:?} fds",
        held(&floods),
        started.elapsed(),
        floods.iter().map(|h| h.failed).sum::<usize>(),
        open_fds(pid)
    );

    // While they are held: the API answers, a new agent subscribes to its
    // routes over gRPC, and the scheduler does not spin.
    let t = Instant::now();
    let (status, body) = s.get("/v1/nodes").await;
    assert_eq!(status, 200, "API during the attack: {body}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "API took {:?}",
        t.elapsed()
    );
    let b = Agent::builder("idle-b", &s).start().await;
    eventually(
        Duration::from_secs(20),
        "new agent's table ACKed during the attack",
        || async { acked_version(&s, &b).await },
    )
    .await;
    let share = cpu_share(pid, Duration::from_secs(5)).await;
    eprintln!(
        "scheduler CPU during the attack: {:.0} % of a core",
        share * 100.0
    );
    assert!(
        share < 0.5,
        "scheduler busy at {:.0} % of a core",
        share * 100.0
    );
    for _ in 0..5 {
        let (status, body) = s.get("/v1/nodes").await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, _) = s.get("/v1/routes/idle-a").await;
    assert_eq!(status, 200);
    // Idle connections are shed or time out: counted.
    let shed = s
        .metric("vantage_scheduler_connections_closed_total", &[])
        .await;
    assert!(shed > 0.0, "no idle connection closed by the scheduler");
    assert!(
        floods
            .iter()
            .map(IdleFlood::closed_by_server)
            .sum::<usize>()
            > 0
    );
    for f in floods {
        f.stop().await;
    }
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_starve_an_agent() {
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let a = Agent::builder("idle-edge", &s).start().await;
    wait_all_up(&s, &["idle-edge"], Duration::from_secs(15)).await;
    let pid = a.pid().unwrap();
    set_fd_limit_of(pid, VICTIM_FDS).unwrap();
    let media = loopback(a.ports().http);
    let publisher = SynthPublisher::start(media, "/live/x.flv", 300);
    FlvViewer::start_live(
        &format!("{}/live/x.flv", a.media_url()),
        Duration::from_secs(10),
    )
    .await;

    let floods = attack(&[media, loopback(a.ports().admin), loopback(a.ports().rtmp)]).await;
    eprintln!(
        "{} idle sockets against the agent; it holds {:?} fds",
        held(&floods),
        open_fds(pid)
    );
    // A new viewer plays, the admin API answers, the agent stays up.
    let v = FlvViewer::start(&format!("{}/live/x.flv", a.media_url()));
    v.wait_bytes(8 * 1024, Duration::from_secs(5))
        .await
        .unwrap_or_else(|s| panic!("no new viewer during the attack: {s:?}"));
    let (status, _) = a.get("/healthz").await;
    assert_eq!(status, 200, "admin API during the attack");
    let share = cpu_share(pid, Duration::from_secs(3)).await;
    assert!(
        share < 0.5,
        "agent busy at {:.0} % of a core",
        share * 100.0
    );
    let node = s.node("idle-edge").await.unwrap();
    assert_eq!(node["state"], "up", "{node}");
    publisher.assert_running();
    for f in floods {
        f.stop().await;
    }
}
