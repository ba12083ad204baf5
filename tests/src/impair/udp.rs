//! UDP impairment proxy: datagrams from a client to the listen address go to
//! the upstream from a socket of that client's own (NAT-like), answers come
//! back from the listen address; both ways pass through a [`Shaper`] and a
//! delay line ordered by release time.
//!
//! One task owns all state (flows, delay line, shapers) and `select!`s over
//! the listen socket, the answers of every flow (one small receive task per
//! flow feeds a bounded channel), the next release instant and an idle sweep.

use super::shaper::{Shaper, Verdict};
use super::stats::{Counters, inc};
use super::{Direction, ImpairError, ImpairHandle, Impairment, Options};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

/// Largest datagram forwarded (bigger ones are truncated by the socket).
const MAX_DATAGRAM: usize = 65_535;
/// Answers waiting for the proxy task (per proxy).
const ANSWER_QUEUE: usize = 4096;

/// Starts UDP impairment proxies.
#[derive(Debug)]
pub struct UdpImpair;

impl UdpImpair {
    /// Listens on `listen` (port 0 for any) and forwards to `upstream`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        imp: Impairment,
    ) -> Result<ImpairHandle, ImpairError> {
        Self::start_with(listen, upstream, imp, Options::default()).await
    }

    pub async fn start_with(
        listen: SocketAddr,
        upstream: SocketAddr,
        imp: Impairment,
        opts: Options,
    ) -> Result<ImpairHandle, ImpairError> {
        imp.validate()?;
        let sock = UdpSocket::bind(listen)
            .await
            .map_err(|source| ImpairError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = sock.local_addr().map_err(|source| ImpairError::Bind {
            addr: listen,
            source,
        })?;
        let (control, imp_rx) = watch::channel(imp);
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(ANSWER_QUEUE);
        let proxy = Proxy {
            listen: Arc::new(sock),
            upstream,
            imp: imp_rx,
            up: Shaper::new(opts.seed),
            down: Shaper::new(opts.seed ^ 0x9e37_79b9_7f4a_7c15),
            flows: HashMap::new(),
            tasks: JoinSet::new(),
            tx,
            rx,
            line: BinaryHeap::new(),
            line_bytes: 0,
            seq: 0,
            counters: counters.clone(),
            opts,
        };
        let task = tokio::spawn(proxy.run());
        Ok(ImpairHandle {
            local_addr,
            upstream,
            control,
            counters,
            held: watch::Sender::new(std::collections::BTreeSet::new()),
            task,
        })
    }
}

/// A client and its upstream socket.
struct Flow {
    sock: Arc<UdpSocket>,
    last_active: Instant,
    task: AbortHandle,
}

/// Where a datagram of the delay line goes.
enum Dest {
    Upstream(Arc<UdpSocket>),
    Client(SocketAddr),
}

struct Pending {
    release: Instant,
    seq: u64,
    arrived: Instant,
    dir: Direction,
    dest: Dest,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.seq) == (other.release, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(other.release, other.seq))
    }
}

/// An answer from upstream for `client`, stamped on arrival.
struct Answer {
    client: SocketAddr,
    at: Instant,
    data: Vec<u8>,
}

struct Proxy {
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
    imp: watch::Receiver<Impairment>,
    up: Shaper,
    down: Shaper,
    flows: HashMap<SocketAddr, Flow>,
    tasks: JoinSet<()>,
    tx: mpsc::Sender<Answer>,
    rx: mpsc::Receiver<Answer>,
    /// The delay line, earliest release first.
    line: BinaryHeap<Reverse<Pending>>,
    line_bytes: usize,
    seq: u64,
    counters: Arc<Counters>,
    opts: Options,
}

impl Proxy {
    async fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let sweep_every = (self.opts.idle_timeout / 4).max(Duration::from_millis(100));
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let listen = self.listen.clone();
        loop {
            self.release_due(Instant::now()).await;
            // Timers fire up to ~1 ms late: sleep until shortly before the
            // next release, then yield until it is due (see `super::SPIN`).
            let now = Instant::now();
            let next = self.line.peek().map(|Reverse(p)| p.release);
            let spin = next.is_some_and(|r| r <= now + super::SPIN);
            let wake = match next {
                Some(r) if !spin => Some(r - super::SPIN),
                _ => None,
            };
            let far = now + Duration::from_secs(3600);
            tokio::select! {
                r = listen.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let at = Instant::now();
                        self.on_request(from, at, &buf[..n]).await;
                    }
                    // Nothing to do about a failed receive but count it; an
                    // unconnected socket reports no ICMP errors, so this is rare.
                    Err(_) => inc(&self.counters.errors, 1),
                },
                Some(a) = self.rx.recv() => self.on_answer(a),
                () = tokio::time::sleep_until(wake.unwrap_or(far)), if wake.is_some() => {}
                () = tokio::task::yield_now(), if spin => {}
                _ = sweep.tick() => self.sweep(),
            }
        }
    }

    async fn on_request(&mut self, from: SocketAddr, at: Instant, data: &[u8]) {
        let c = self.counters.dir(Direction::Upstream);
        inc(&c.received, 1);
        inc(&c.bytes_received, data.len() as u64);
        let sock = match self.flows.get_mut(&from) {
            Some(f) => {
                f.last_active = at;
                f.sock.clone()
            }
            None => match self.open_flow(from, at).await {
                Some(s) => s,
                None => return,
            },
        };
        let link = self.imp.borrow().upstream;
        let verdict = self.up.datagram(&link, at, data.len());
        self.enqueue(verdict, at, Direction::Upstream, Dest::Upstream(sock), data);
    }

    fn on_answer(&mut self, a: Answer) {
        let c = self.counters.dir(Direction::Downstream);
        inc(&c.received, 1);
        inc(&c.bytes_received, a.data.len() as u64);
        if let Some(f) = self.flows.get_mut(&a.client) {
            f.last_active = f.last_active.max(a.at);
        }
        let link = self.imp.borrow().downstream;
        let verdict = self.down.datagram(&link, a.at, a.data.len());
        self.enqueue(
            verdict,
            a.at,
            Direction::Downstream,
            Dest::Client(a.client),
            &a.data,
        );
    }

    fn enqueue(
        &mut self,
        verdict: Verdict,
        arrived: Instant,
        dir: Direction,
        dest: Dest,
        data: &[u8],
    ) {
        let c = self.counters.dir(dir);
        let release = match verdict {
            Verdict::Release(t) => t,
            Verdict::Lost => return inc(&c.dropped_loss, 1),
            Verdict::QueueFull => return inc(&c.dropped_queue, 1),
        };
        if self.line.len() >= self.opts.max_queued_packets
            || self.line_bytes + data.len() > self.opts.max_queued_bytes
        {
            return inc(&c.dropped_queue, 1);
        }
        self.seq += 1;
        self.line_bytes += data.len();
        self.line.push(Reverse(Pending {
            release,
            seq: self.seq,
            arrived,
            dir,
            dest,
            data: data.to_vec(),
        }));
    }

    /// Sends everything whose release time has come.
    async fn release_due(&mut self, now: Instant) {
        while self.line.peek().is_some_and(|Reverse(p)| p.release <= now) {
            let Some(Reverse(p)) = self.line.pop() else {
                break;
            };
            self.line_bytes -= p.data.len();
            let c = self.counters.dir(p.dir);
            // A UDP send on loopback does not wait (a full receiver drops).
            let sent = match &p.dest {
                Dest::Upstream(sock) => sock.send_to(&p.data, self.upstream).await,
                Dest::Client(addr) => self.listen.send_to(&p.data, *addr).await,
            };
            match sent {
                Ok(_) => c.forwarded(p.data.len(), p.arrived, p.release, Instant::now()),
                Err(_) => inc(&self.counters.errors, 1),
            }
        }
    }

    async fn open_flow(&mut self, client: SocketAddr, at: Instant) -> Option<Arc<UdpSocket>> {
        if self.flows.len() >= self.opts.max_flows {
            inc(&self.counters.flows_refused, 1);
            return None;
        }
        // Loopback upstream: a loopback source; otherwise let routing pick.
        let ip = match self.upstream.ip() {
            ip if ip.is_loopback() => ip,
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let sock = match UdpSocket::bind(SocketAddr::new(ip, 0)).await {
            Ok(s) => Arc::new(s),
            Err(_) => {
                inc(&self.counters.errors, 1);
                return None;
            }
        };
        let task = self.tasks.spawn(answers(
            sock.clone(),
            self.upstream,
            client,
            self.tx.clone(),
            self.counters.clone(),
        ));
        self.flows.insert(
            client,
            Flow {
                sock: sock.clone(),
                last_active: at,
                task,
            },
        );
        inc(&self.counters.flows_total, 1);
        self.counters
            .flows_active
            .store(self.flows.len() as u64, Ordering::Relaxed);
        Some(sock)
    }

    /// Closes flows idle for longer than `idle_timeout`.
    fn sweep(&mut self) {
        let now = Instant::now();
        let idle = self.opts.idle_timeout;
        self.flows.retain(|_, f| {
            let keep = now.saturating_duration_since(f.last_active) < idle;
            if !keep {
                f.task.abort();
            }
            keep
        });
        while self.tasks.try_join_next().is_some() {}
        self.counters
            .flows_active
            .store(self.flows.len() as u64, Ordering::Relaxed);
    }
}

/// Receives a flow's answers from upstream and hands them to the proxy task.
/// Datagrams from anyone but the upstream are ignored (counted as errors).
async fn answers(
    sock: Arc<UdpSocket>,
    upstream: SocketAddr,
    client: SocketAddr,
    tx: mpsc::Sender<Answer>,
    counters: Arc<Counters>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) if from == upstream => {
                let a = Answer {
                    client,
                    at: Instant::now(),
                    data: buf[..n].to_vec(),
                };
                match tx.try_send(a) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let c = counters.dir(Direction::Downstream);
                        inc(&c.received, 1);
                        inc(&c.dropped_queue, 1);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Ok(_) => inc(&counters.errors, 1),
            Err(_) => {
                inc(&counters.errors, 1);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
