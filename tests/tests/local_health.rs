//! A scheduler that loses reports itself does not declare its agents dead
//! (docs/protocol.md, "Liveness"). The scheduler is frozen (SIGSTOP) for
//! longer than the down threshold while its telemetry socket is flooded
//! until the kernel drops datagrams, as a paused VM or an overloaded
//! machine would. Once it runs again: the drops are counted in `/metrics`,
//! no node went `down` (nodes still connected are held at `suspect` until
//! their reports flow again), and every node is `up`.

use std::net::UdpSocket;
use std::time::{Duration, Instant};
use vantage_tests::cluster::{start_settled, wait_all_up};
use vantage_tests::{Scheduler, eventually};

const IDS: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
const INTERVAL_MS: u64 = 500;

/// More than the 8 MiB the scheduler asks for its receive buffer (the
/// kernel grants at most `net.core.rmem_max`, often far less).
const FLOOD_DATAGRAMS: usize = 12_000;
const FLOOD_BYTES: usize = 1_200;

#[tokio::test]
async fn a_paused_scheduler_losing_reports_marks_no_node_down() {
    let s = Scheduler::builder()
        .report_interval_ms(INTERVAL_MS)
        .start()
        .await;
    let (_agents, _) = start_settled(&s, &IDS).await;
    let downs = async || {
        s.metric(
            "vantage_scheduler_node_transitions_total",
            &[("state", "down")],
        )
        .await
    };
    let drops = async || {
        s.metric("vantage_scheduler_telemetry_socket_drops_total", &[])
            .await
    };
    let (downs0, drops0) = (downs().await, drops().await);

    // Frozen for 6 report intervals (down after 3), well inside the 10 s
    // QUIC idle timeout; meanwhile its socket overflows with junk, so the
    // agents' reports of that time are dropped by the kernel.
    s.pause();
    let paused = Instant::now();
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    let junk = [0u8; FLOOD_BYTES];
    let mut sent = 0;
    for _ in 0..FLOOD_DATAGRAMS {
        sent += usize::from(flood.send_to(&junk, s.quic_addr()).is_ok());
    }
    let pause = Duration::from_millis(6 * INTERVAL_MS);
    tokio::time::sleep(pause.saturating_sub(paused.elapsed())).await;
    s.resume();
    eprintln!("paused {:?}, {sent} junk datagrams sent", paused.elapsed());

    wait_all_up(&s, &IDS, Duration::from_secs(5)).await;
    // Past the hold's reach of a late evaluation: still no node went down.
    tokio::time::sleep(Duration::from_millis(3 * INTERVAL_MS)).await;
    eventually(
        Duration::from_secs(3),
        "the drops counted in /metrics",
        || async {
            let d = drops().await - drops0;
            if d > 0.0 { Ok(d) } else { Err(d) }
        },
    )
    .await;
    assert_eq!(
        downs().await,
        downs0,
        "no node went down while the scheduler was the one losing reports; log:\n{}",
        s.log_tail(40)
    );
    assert!(
        s.log_tail(200)
            .contains("the scheduler lost reports itself"),
        "the hold is logged; log:\n{}",
        s.log_tail(40)
    );
    wait_all_up(&s, &IDS, Duration::from_secs(5)).await;
}
