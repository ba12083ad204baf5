//! The proxies on real loopback sockets: an in-test echo server behind them,
//! measured delays, loss, jitter and rate against the configured values.

use super::*;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

fn any_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn ms_f(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A UDP echo server; the task ends when the handle is aborted.
async fn udp_echo() -> (SocketAddr, AbortOnDrop) {
    let sock = UdpSocket::bind(any_port()).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    (addr, AbortOnDrop(task))
}

/// A TCP echo server.
async fn tcp_echo() -> (SocketAddr, AbortOnDrop) {
    let l = TcpListener::bind(any_port()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, AbortOnDrop(task))
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn client() -> UdpSocket {
    UdpSocket::bind(any_port()).await.unwrap()
}

/// Sends `id` and waits up to `wait` for its echo (ignoring older echoes).
async fn ping(sock: &UdpSocket, to: SocketAddr, id: u32, wait: Duration) -> Option<Duration> {
    let start = Instant::now();
    sock.send_to(&id.to_be_bytes(), to).await.unwrap();
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let r = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
        match r {
            Ok(Ok((4, _))) if buf[..4] == id.to_be_bytes() => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            _ => return None,
        }
    }
}

async fn rtts(sock: &UdpSocket, to: SocketAddr, n: u32, wait: Duration) -> Vec<f64> {
    let mut out = Vec::new();
    for id in 0..n {
        if let Some(d) = ping(sock, to, id, wait).await {
            out.push(ms_f(d));
        }
    }
    out
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_rtt_is_twice_the_one_way_delay() {
    let (echo, _e) = udp_echo().await;
    let proxy = UdpImpair::start(any_port(), echo, Impairment::none())
        .await
        .unwrap();
    let c = client().await;
    let base = median(&rtts(&c, proxy.local_addr(), 20, ms(1000)).await);
    assert!(base < 5.0, "unimpaired RTT {base} ms");
    for delay in [20, 75] {
        proxy
            .set(Impairment::both(Link::new().delay_ms(delay)))
            .unwrap();
        let r = rtts(&c, proxy.local_addr(), 20, ms(2000)).await;
        assert_eq!(r.len(), 20);
        let want = 2.0 * delay as f64;
        let got = median(&r);
        eprintln!("one-way {delay} ms: median RTT {got:.2} ms (base {base:.2})");
        assert!(
            got >= want && got <= want + base + 3.0,
            "one-way {delay} ms: median RTT {got} ms, want {want}..{} ms",
            want + base + 3.0
        );
        assert!(r.iter().all(|x| *x >= want), "{r:?}");
        // The proxy's own account of what it held.
        for dir in [Direction::Upstream, Direction::Downstream] {
            let o = proxy.observed(dir, 20);
            assert_eq!(o.samples, 20);
            let held = ms_f(o.hold_p50);
            assert!(
                (delay as f64..delay as f64 + 1.5).contains(&held),
                "{dir:?}: held {held} ms for {delay}: {o:?}"
            );
        }
    }
    // The proxy counts a datagram after its send returns, which may be
    // after the client already has it.
    crate::assert_eventually!(
        Duration::from_secs(2),
        || proxy.stats().downstream.forwarded == 60,
        "60 answers counted: {}",
        proxy.stats()
    );
    let s = proxy.stats();
    assert_eq!(s.flows_active, 1, "one client, one flow: {s}");
    assert_eq!(s.upstream.forwarded, 60, "{s}");
    assert_eq!(s.dropped(), 0);
}

/// Sends `n` numbered datagrams in batches and returns how many echoes came back.
async fn round_trips(c: &UdpSocket, to: SocketAddr, n: u32) -> usize {
    let mut got = HashSet::new();
    let mut buf = [0u8; 64];
    let mut id = 0;
    while id < n {
        for _ in 0..50.min(n - id) {
            c.send_to(&id.to_be_bytes(), to).await.unwrap();
            id += 1;
        }
        // Collect until 20 ms pass without an echo.
        while let Ok(Ok((len, _))) = tokio::time::timeout(ms(20), c.recv_from(&mut buf)).await {
            if len == 4 {
                got.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
        }
    }
    while let Ok(Ok((len, _))) = tokio::time::timeout(ms(200), c.recv_from(&mut buf)).await {
        if len == 4 {
            got.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
        }
    }
    got.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_loss_matches_within_one_point_over_5000_packets() {
    let (echo, _e) = udp_echo().await;
    for loss in [0.02, 0.10] {
        let imp = Impairment::round_trip(Duration::ZERO, Jitter::None, loss);
        let proxy = UdpImpair::start(any_port(), echo, imp).await.unwrap();
        let c = client().await;
        let n = 5000;
        let back = round_trips(&c, proxy.local_addr(), n).await;
        let measured = 1.0 - back as f64 / f64::from(n);
        let s = proxy.stats();
        eprintln!("round-trip loss {loss}: measured {measured:.4}; {s}");
        assert!(
            (measured - loss).abs() <= 0.01,
            "loss {loss}: measured {measured} over {n} packets; {s}"
        );
        // Every drop is the loss model's, and the counters add up.
        assert_eq!(s.upstream.received, u64::from(n));
        assert_eq!(s.dropped_queue_total(), 0, "{s}");
        assert_eq!(
            s.upstream.forwarded + s.upstream.dropped_loss,
            s.upstream.received
        );
        assert_eq!(s.downstream.forwarded, back as u64, "{s}");
        for d in [s.upstream, s.downstream] {
            let per_dir = d.dropped_loss as f64 / d.received as f64;
            let want = 1.0 - (1.0 - loss).sqrt();
            assert!(
                (per_dir - want).abs() < 0.01,
                "per direction {per_dir} want {want}"
            );
        }
    }
}

impl Stats {
    fn dropped_queue_total(&self) -> u64 {
        self.upstream.dropped_queue + self.downstream.dropped_queue
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_bursty_loss_comes_in_bursts() {
    let (echo, _e) = udp_echo().await;
    // Only upstream, so the client sees the chain's bursts as gaps in ids.
    let ge = GilbertElliott::gilbert(0.10, 5.0);
    let imp = Impairment::none().with_upstream(Link::new().bursty(ge));
    let proxy = UdpImpair::start(any_port(), echo, imp).await.unwrap();
    let c = client().await;
    let n = 5000u32;
    let mut got = vec![false; n as usize];
    let mut buf = [0u8; 64];
    for batch in 0..(n / 50) {
        for i in 0..50 {
            let id: u32 = batch * 50 + i;
            c.send_to(&id.to_be_bytes(), proxy.local_addr())
                .await
                .unwrap();
        }
        while let Ok(Ok((4, _))) = tokio::time::timeout(ms(20), c.recv_from(&mut buf)).await {
            got[u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize] = true;
        }
    }
    let lost = got.iter().filter(|g| !**g).count();
    let bursts = got.windows(2).filter(|w| w[0] && !w[1]).count().max(1);
    let ratio = lost as f64 / f64::from(n);
    let mean_burst = lost as f64 / bursts as f64;
    eprintln!("bursty: loss {ratio:.4}, mean burst {mean_burst:.2}");
    assert!((ratio - 0.10).abs() < 0.03, "loss {ratio}");
    assert!(
        mean_burst > 3.0,
        "mean burst {mean_burst} (random loss would give ~1.1)"
    );
}

/// An RTT over this on a 40 ± 20 ms path was held up by the machine, not
/// the proxy's model.
const STALLED_MS: f64 = 100.0;

/// RFC 3550 interarrival jitter of a series of transit times.
fn rfc3550(transits: &[f64]) -> f64 {
    let mut j = 0.0;
    for w in transits.windows(2) {
        j += ((w[1] - w[0]).abs() - j) / 16.0;
    }
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_jitter_is_visible_and_matches_the_model() {
    let (echo, _e) = udp_echo().await;
    let jitter = Jitter::uniform_ms(10);
    let imp = Impairment::both(Link::new().delay_ms(20).jitter(jitter));
    let proxy = UdpImpair::start(any_port(), echo, imp).await.unwrap();
    let c = client().await;
    let all = rtts(&c, proxy.local_addr(), 300, ms(2000)).await;
    assert_eq!(all.len(), 300);
    // Never early. Late only by scheduling stalls of a busy machine (the
    // model's maximum is 60 ms): at most 1 % of the samples, left out of
    // the statistics below (one 200 ms stall moves E|D| by over 1 ms).
    let min = all.iter().copied().fold(f64::MAX, f64::min);
    let stalled: Vec<f64> = all.iter().copied().filter(|&x| x > STALLED_MS).collect();
    let r: Vec<f64> = all.iter().copied().filter(|&x| x <= STALLED_MS).collect();
    let max = r.iter().copied().fold(0.0f64, f64::max);
    let j = rfc3550(&r);
    let mean_abs_d = r.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (r.len() - 1) as f64;
    eprintln!(
        "RTT 40±20 ms: min {min:.1} max {max:.1} median {:.1} E|D| {mean_abs_d:.2} rfc3550 {j:.2}; \
         stalled (> {STALLED_MS} ms): {stalled:?}",
        median(&r)
    );
    assert!(min >= 20.0, "an RTT of {min} ms is under the 20 ms delay");
    assert!(
        stalled.len() <= 3,
        "{} RTTs over {STALLED_MS} ms",
        stalled.len()
    );
    assert!(min < 30.0 && max > 50.0, "jitter not visible: {min}..{max}");
    assert!((median(&r) - 40.0).abs() < 4.0);
    // Both directions jitter and RTTs are measured: D is a sum of four
    // uniform draws on ±10 ms, E|D| ≈ 0.93·10 ms; the RFC 3550 estimator
    // (gain 1/16) fluctuates around it.
    assert!(
        (7.5..=11.5).contains(&mean_abs_d),
        "E|D| {mean_abs_d} ms, expected ≈ 9.3"
    );
    assert!(
        (4.5..=14.0).contains(&j),
        "RFC 3550 jitter {j} ms, expected ≈ 9.3"
    );
    // One direction's holding times: uniform ±10 ms, E|D| = 2·10/3 ≈ 6.7 ms.
    for dir in [Direction::Upstream, Direction::Downstream] {
        let o = proxy.observed(dir, 300);
        let j = ms_f(o.jitter);
        assert!(
            (3.5..=10.0).contains(&j),
            "{dir:?}: RFC 3550 jitter of holds {j} ms"
        );
        assert!((ms_f(o.hold_mean) - 20.0).abs() < 2.0, "{dir:?}: {o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_order_delivers_in_order_despite_jitter() {
    let (echo, _e) = udp_echo().await;
    let link = Link::new().delay_ms(10).jitter(Jitter::uniform_ms(8));
    for keep in [false, true] {
        let imp = Impairment::none().with_upstream(link.keep_order(keep));
        let proxy = UdpImpair::start(any_port(), echo, imp).await.unwrap();
        let c = client().await;
        let to = proxy.local_addr();
        // Receive while sending, so the client's socket buffer never overflows.
        let send = async {
            for id in 0u32..400 {
                c.send_to(&id.to_be_bytes(), to).await.unwrap();
                if id % 20 == 19 {
                    tokio::time::sleep(ms(1)).await;
                }
            }
        };
        let recv = async {
            let mut seen = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok(Ok((4, _))) = tokio::time::timeout(ms(300), c.recv_from(&mut buf)).await {
                seen.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
            seen
        };
        let ((), seen) = tokio::join!(send, recv);
        assert_eq!(seen.len(), 400);
        let inversions = seen.windows(2).filter(|w| w[1] < w[0]).count();
        if keep {
            assert_eq!(inversions, 0);
        } else {
            assert!(inversions > 0, "jitter should reorder");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_take_effect_at_once() {
    let (echo, _e) = udp_echo().await;
    let slow = Impairment::both(Link::new().delay_ms(100));
    let proxy = UdpImpair::start(any_port(), echo, slow).await.unwrap();
    let c = client().await;
    let r = ping(&c, proxy.local_addr(), 1, ms(2000)).await.unwrap();
    assert!(r >= ms(200), "{r:?}");
    proxy
        .set(Impairment::both(Link::new().delay_ms(5)))
        .unwrap();
    let r = ping(&c, proxy.local_addr(), 2, ms(2000)).await.unwrap();
    // 10 ms, not 200 ms (slack for scheduling stalls on a busy machine).
    assert!(
        r >= ms(10) && r < ms(100),
        "first ping after the change: {r:?}"
    );
    proxy.set(Impairment::both(Link::new().loss(1.0))).unwrap();
    assert_eq!(ping(&c, proxy.local_addr(), 3, ms(200)).await, None);
    proxy.set(Impairment::none()).unwrap();
    assert!(ping(&c, proxy.local_addr(), 4, ms(1000)).await.is_some());
    assert_eq!(proxy.impairment(), Impairment::none());
    // Invalid settings are refused and change nothing.
    assert!(proxy.set(Impairment::both(Link::new().loss(1.5))).is_err());
    assert!(
        proxy
            .set(Impairment::both(Link::new().loss(f64::NAN)))
            .is_err()
    );
    assert_eq!(proxy.impairment(), Impairment::none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_rate_limit_paces_and_tail_drops() {
    let (echo, _e) = udp_echo().await;
    // 80 kbit/s = 10 kB/s up, 8 kB queue; 1000-byte datagrams take 100 ms
    // each (slow enough that a stalled sender loop cannot change the count).
    let rate = RateLimit::new(80_000).burst_bytes(1000).queue_bytes(8_000);
    let imp = Impairment::none().with_upstream(Link::new().rate(rate));
    let proxy = UdpImpair::start(any_port(), echo, imp).await.unwrap();
    let c = client().await;
    let payload = vec![7u8; 1000];
    let mut buf = vec![0u8; 2000];
    // 50 back to back: 2 pass at once (the 1000-byte bucket plus the first
    // one's own tokens), 7 wait in the 8 kB queue (with the one in
    // transmission: 8 kB), 41 are tail-dropped.
    let start = Instant::now();
    for _ in 0..50 {
        c.send_to(&payload, proxy.local_addr()).await.unwrap();
    }
    let mut arrivals = Vec::new();
    while let Ok(Ok(_)) = tokio::time::timeout(ms(500), c.recv_from(&mut buf)).await {
        arrivals.push(start.elapsed());
    }
    let s = proxy.stats();
    assert_eq!(arrivals.len(), 9, "{s}");
    assert_eq!(s.upstream.dropped_queue, 41, "{s}");
    // The last queued datagram leaves 7 transmission times after the burst.
    let last = ms_f(arrivals[arrivals.len() - 1]);
    assert!((695.0..=800.0).contains(&last), "last arrival at {last} ms");
    let gaps: Vec<f64> = arrivals
        .windows(2)
        .skip(1)
        .map(|w| ms_f(w[1] - w[0]))
        .collect();
    assert!(
        gaps.iter().all(|g| (50.0..=150.0).contains(g)),
        "paced every 100 ms: {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_flows_queue_and_idle_cleanup() {
    let (echo, _e) = udp_echo().await;
    let opts = Options::default()
        .max_flows(2)
        .max_queued_packets(10)
        .idle_timeout(ms(1000));
    let slow = Impairment::both(Link::new().delay_ms(50));
    let proxy = UdpImpair::start_with(any_port(), echo, slow, opts)
        .await
        .unwrap();
    let clients = [client().await, client().await, client().await];
    for (i, c) in clients.iter().enumerate() {
        let r = ping(c, proxy.local_addr(), i as u32, ms(300)).await;
        assert_eq!(r.is_some(), i < 2, "client {i}");
    }
    let s = proxy.stats();
    assert_eq!((s.flows_active, s.flows_refused), (2, 1), "{s}");
    // The delay line holds 10 datagrams; a burst of 30 loses 20 (a long
    // delay, so none leaves the line during the burst).
    proxy
        .set(Impairment::both(Link::new().delay_ms(500)))
        .unwrap();
    for id in 0u32..30 {
        clients[0]
            .send_to(&id.to_be_bytes(), proxy.local_addr())
            .await
            .unwrap();
    }
    crate::assert_eventually!(
        Duration::from_secs(3),
        || proxy.stats().upstream.dropped_queue == 20,
        "20 queue drops: {}",
        proxy.stats()
    );
    // Idle flows are closed.
    crate::assert_eventually!(
        Duration::from_secs(5),
        || proxy.stats().flows_active == 0,
        "idle flows closed: {}",
        proxy.stats()
    );
    // … and a returning client gets a new one.
    proxy.set(Impairment::none()).unwrap();
    assert!(
        ping(&clients[2], proxy.local_addr(), 99, ms(500))
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_survived_and_stop_frees_the_port() {
    // Nothing listens upstream: ICMP port unreachable must not break the proxy.
    let dead = {
        let s = std::net::UdpSocket::bind(any_port()).unwrap();
        s.local_addr().unwrap()
    };
    let proxy = UdpImpair::start(any_port(), dead, Impairment::none())
        .await
        .unwrap();
    let c = client().await;
    for id in 0..5 {
        assert_eq!(ping(&c, proxy.local_addr(), id, ms(50)).await, None);
    }
    assert!(proxy.is_running());
    assert_eq!(proxy.stats().upstream.forwarded, 5);
    let addr = proxy.local_addr();
    proxy.stop().await;
    // The listen port is free again.
    UdpSocket::bind(addr).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_delay_both_ways() {
    let (echo, _e) = tcp_echo().await;
    let proxy = TcpImpair::start(any_port(), echo, Impairment::both(Link::new().delay_ms(25)))
        .await
        .unwrap();
    let mut s = TcpStream::connect(proxy.local_addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut r = Vec::new();
    let mut buf = [0u8; 16];
    for i in 0u8..10 {
        let start = Instant::now();
        s.write_all(&[i; 16]).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [i; 16]);
        r.push(ms_f(start.elapsed()));
    }
    let m = median(&r);
    eprintln!("TCP one-way 25 ms: median RTT {m:.2} ms");
    assert!((50.0..=54.0).contains(&m), "median RTT {m} ms");
    // Changing the delay applies to the next chunk.
    proxy
        .set(Impairment::both(Link::new().delay_ms(5)))
        .unwrap();
    let start = Instant::now();
    s.write_all(&[1; 16]).await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    let r = start.elapsed();
    assert!(r >= ms(10) && r < ms(100), "{r:?}");
    drop(s);
    crate::assert_eventually!(
        Duration::from_secs(3),
        || proxy.stats().flows_active == 0,
        "connection closed: {}",
        proxy.stats()
    );
    assert_eq!(proxy.stats().flows_total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_rate_limit_within_ten_percent_over_two_seconds() {
    // A sink that timestamps what it receives.
    let l = TcpListener::bind(any_port()).await.unwrap();
    let sink = l.local_addr().unwrap();
    let counted = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).await.unwrap();
        let first = Instant::now();
        let mut total = n;
        let end = first + Duration::from_secs(2);
        while let Ok(Ok(n)) = tokio::time::timeout_at(end.into(), s.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        (total, first.elapsed())
    });
    let bps = 8_000_000; // 1 MB/s
    let imp = Impairment::none().with_upstream(Link::new().delay_ms(10).rate(RateLimit::new(bps)));
    let proxy = TcpImpair::start(any_port(), sink, imp).await.unwrap();
    let mut s = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let writer = tokio::spawn(async move {
        let block = vec![0u8; 64 * 1024];
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            if s.write_all(&block).await.is_err() {
                break;
            }
        }
    });
    let (total, took) = counted.await.unwrap();
    let rate = total as f64 * 8.0 / took.as_secs_f64();
    eprintln!(
        "TCP 8 Mbit/s: {total} B in {took:?} = {:.3} Mbit/s",
        rate / 1e6
    );
    assert!(
        (rate / bps as f64 - 1.0).abs() <= 0.10,
        "rate {rate} bit/s, want {bps} ±10 %"
    );
    writer.abort();
    // Back-pressure, not buffering: the proxy never held more than its queue.
    let st = proxy.stats();
    let held = st.upstream.bytes_received - st.upstream.bytes_forwarded;
    assert!(held <= 32 * 16 * 1024, "proxy holds {held} B");
}
