//! The QUIC event loop: one thread, one UDP socket, every agent connection.
//!
//! A round: read every waiting datagram (batches of up to
//! `quinn_udp::BATCH_SIZE` per `recvmmsg`, bounded per round) and hand each
//! to its connection's state machine; run the commands other threads
//! queued; fire due timers; then drive each connection that got input: its
//! session acts on the events (frames, streams, loss), and whatever the
//! connection has to send (ACKs, Welcome, close) goes out at once. Then
//! `epoll_wait` until a datagram, a command or the next timer.
//!
//! Timers live in one binary heap keyed by instant. A connection has at most
//! one *armed* entry that counts (the earliest it needs: quinn's own timers
//! and its session's phase deadline); entries that no longer match are
//! skipped when they surface, so re-arming never searches the heap.

use super::session::{Ctx, Session};
use super::{Command, Links};
use crate::app::App;
use bytes::BytesMut;
use quinn_proto::{ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Incoming};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{ErrorKind, IoSliceMut};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use tracing::{debug, error, warn};
use vantage_shared::close::CloseCode;

const SOCKET: mio::Token = mio::Token(0);
const WAKER: mio::Token = mio::Token(1);
/// `recvmmsg` calls per round before connections are driven, so a flood of
/// datagrams cannot hold back timers, ACKs and commands.
const RECV_CALLS_PER_ROUND: usize = 16;
/// Receive space per batch slot: one GRO super-datagram at most.
const RECV_SLOT_BYTES: usize = 64 * 1024;
/// Datagrams quinn may put in one GSO send (as quinn's own driver).
const MAX_TRANSMIT_SEGMENTS: usize = 10;
/// Least time from the start of one round to the next: a round then handles
/// whatever arrived meanwhile (several reports, their ACKs, due timers) in
/// one wake-up instead of one wake-up per datagram. The cost is at most this
/// much added latency on a report, an alert or an ACK.
const MIN_ROUND: Duration = Duration::from_millis(1);
/// How long close frames may take to go out at shutdown.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

pub(super) struct Driver {
    socket: UdpSocket,
    udp: quinn_udp::UdpSocketState,
    endpoint: Endpoint,
    poll: mio::Poll,
    links: Arc<Links>,
    commands: mpsc::Receiver<Command>,
    conns: HashMap<ConnectionHandle, Conn>,
    /// Connection id (see `SessionLink`) → endpoint handle.
    by_id: HashMap<u64, ConnectionHandle>,
    timers: BinaryHeap<Reverse<(Instant, ConnectionHandle, u64)>>,
    /// Connections with input since they were last driven.
    dirty: Vec<ConnectionHandle>,
    recv_buf: Box<[u8]>,
    send_buf: Vec<u8>,
    next_id: u64,
    /// Set when shutdown began; the loop ends when every connection is
    /// drained or `SHUTDOWN_LINGER` later.
    shutdown_at: Option<Instant>,
}

struct Conn {
    id: u64,
    conn: quinn_proto::Connection,
    session: Session,
    /// The timer entry of this connection that counts.
    armed: Option<Instant>,
    dirty: bool,
}

impl Driver {
    pub(super) fn new(
        socket: UdpSocket,
        server: Arc<quinn_proto::ServerConfig>,
    ) -> std::io::Result<Self> {
        let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
        let poll = mio::Poll::new()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&socket.as_raw_fd()),
            SOCKET,
            mio::Interest::READABLE,
        )?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let (tx, commands) = mpsc::channel();
        let endpoint = Endpoint::new(
            Arc::new(EndpointConfig::default()),
            Some(server),
            !udp.may_fragment(),
            None,
        );
        Ok(Self {
            socket,
            udp,
            endpoint,
            poll,
            links: Arc::new(Links { tx, waker }),
            commands,
            conns: HashMap::new(),
            by_id: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            recv_buf: vec![0; RECV_SLOT_BYTES * quinn_udp::BATCH_SIZE].into_boxed_slice(),
            send_buf: Vec::new(),
            next_id: 1,
            shutdown_at: None,
        })
    }

    pub(super) fn links(&self) -> Arc<Links> {
        self.links.clone()
    }

    /// Runs until shutdown.
    pub(super) fn run(&mut self, app: &Arc<App>) {
        let mut events = mio::Events::with_capacity(8);
        // The socket is edge-triggered: read until it would block, and poll
        // without waiting while a round stopped short of that.
        let mut readable = true;
        loop {
            let now = Instant::now();
            let round_start = now;
            if readable {
                readable = self.receive(app, now);
            }
            self.run_commands(app, now);
            self.fire_timers(app, now);
            self.drive_dirty(app, now);
            if let Some(at) = self.shutdown_at
                && (self.conns.is_empty() || now >= at + SHUTDOWN_LINGER)
            {
                break;
            }
            self.compact_timers();
            let wake = self.next_wake();
            let timeout = if readable {
                Some(Duration::ZERO)
            } else {
                let batch_until = round_start + MIN_ROUND;
                let sleep_until = wake.map_or(batch_until, |w| w.min(batch_until));
                let now = Instant::now();
                if sleep_until > now {
                    std::thread::sleep(sleep_until - now);
                }
                wake.map(|t| t.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != ErrorKind::Interrupted
            {
                error!("QUIC ingest poll failed: {e}; telemetry stops");
                break;
            }
            readable |= events.iter().any(|e| e.token() == SOCKET);
        }
        debug!(open = self.conns.len(), "QUIC ingest loop stopped");
    }

    /// Drops superseded timer entries once they outnumber the connections
    /// (each report cycle can leave one behind until its instant passes).
    fn compact_timers(&mut self) {
        if self.timers.len() <= 4 * self.conns.len() + 1024 {
            return;
        }
        let conns = &self.conns;
        self.timers.retain(|Reverse((at, ch, id))| {
            conns
                .get(ch)
                .is_some_and(|c| c.id == *id && c.armed == Some(*at))
        });
    }

    fn next_wake(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let linger = self.shutdown_at.map(|t| t + SHUTDOWN_LINGER);
        match (timer, linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reads datagrams until the socket would block (returns `false`) or
    /// the round's budget is spent (`true`: more may be waiting).
    fn receive(&mut self, app: &Arc<App>, now: Instant) -> bool {
        let mut buf = std::mem::take(&mut self.recv_buf);
        let mut metas = [quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
        let mut more = true;
        for _ in 0..RECV_CALLS_PER_ROUND {
            let mut slots = buf.chunks_mut(RECV_SLOT_BYTES).map(IoSliceMut::new);
            let mut iovs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                std::array::from_fn(|_| slots.next().unwrap_or_else(|| IoSliceMut::new(&mut [])));
            match self.udp.recv((&self.socket).into(), &mut iovs, &mut metas) {
                Ok(n) => {
                    for (meta, iov) in metas.iter().zip(iovs.iter()).take(n) {
                        self.datagrams(app, now, meta, &iov[..meta.len]);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                // ICMP errors of earlier sends: meaningless to QUIC.
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Err(e) => {
                    warn!("QUIC receive failed: {e}");
                    more = false;
                    break;
                }
            }
        }
        self.recv_buf = buf;
        more
    }

    /// One received buffer: a datagram, or several of `meta.stride` bytes
    /// each when the kernel coalesced them (GRO).
    fn datagrams(&mut self, app: &Arc<App>, now: Instant, meta: &quinn_udp::RecvMeta, data: &[u8]) {
        let mut data = BytesMut::from(data);
        while !data.is_empty() {
            let datagram = data.split_to(meta.stride.min(data.len()));
            let mut response = Vec::new();
            match self.endpoint.handle(
                now,
                meta.addr,
                meta.dst_ip,
                meta.ecn.map(proto_ecn),
                datagram,
                &mut response,
            ) {
                Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                    if let Some(c) = self.conns.get_mut(&ch) {
                        c.conn.handle_event(event);
                        mark_dirty(&mut self.dirty, ch, c);
                    }
                }
                Some(DatagramEvent::NewConnection(incoming)) => self.accept(app, now, incoming),
                Some(DatagramEvent::Response(t)) => self.send(&t, &response),
                None => {}
            }
        }
    }

    fn accept(&mut self, app: &Arc<App>, now: Instant, incoming: Incoming) {
        let mut response = Vec::new();
        if self.shutdown_at.is_some() {
            let t = self.endpoint.refuse(incoming, &mut response);
            self.send(&t, &response);
            return;
        }
        // At the connection limit: refused before any handshake work
        // (`--quic-max-connections`; agents retry with backoff).
        if self.conns.len() >= app.config.quic_max_connections {
            app.metrics.rejected("limit");
            let t = self.endpoint.refuse(incoming, &mut response);
            self.send(&t, &response);
            return;
        }
        match self.endpoint.accept(incoming, now, &mut response, None) {
            Ok((ch, conn)) => {
                let id = self.next_id;
                self.next_id += 1;
                let remote = conn.remote_address();
                let mut c = Conn {
                    id,
                    conn,
                    session: Session::new(id, remote),
                    armed: None,
                    dirty: false,
                };
                mark_dirty(&mut self.dirty, ch, &mut c);
                self.conns.insert(ch, c);
                self.by_id.insert(id, ch);
            }
            Err(e) => {
                app.metrics.rejected("handshake");
                debug!("QUIC connection refused: {}", e.cause);
                if let Some(t) = e.response {
                    self.send(&t, &response);
                }
            }
        }
    }

    fn run_commands(&mut self, app: &Arc<App>, now: Instant) {
        while let Ok(cmd) = self.commands.try_recv() {
            let cx = Ctx {
                app,
                links: &self.links,
                now,
            };
            match cmd {
                Command::Close { conn, code, reason } => {
                    if let Some(ch) = self.by_id.get(&conn).copied()
                        && let Some(c) = self.conns.get_mut(&ch)
                    {
                        c.session.close(&cx, &mut c.conn, code, reason);
                        mark_dirty(&mut self.dirty, ch, c);
                    }
                }
                Command::Admitted { conn, result } => {
                    if let Some(ch) = self.by_id.get(&conn).copied()
                        && let Some(c) = self.conns.get_mut(&ch)
                    {
                        c.session.on_admitted(&cx, &mut c.conn, result);
                        mark_dirty(&mut self.dirty, ch, c);
                    }
                }
                Command::LookedUp { conn, result } => {
                    if let Some(ch) = self.by_id.get(&conn).copied()
                        && let Some(c) = self.conns.get_mut(&ch)
                    {
                        c.session.on_looked_up(&cx, &mut c.conn, result);
                        mark_dirty(&mut self.dirty, ch, c);
                    }
                }
                Command::Shutdown => {
                    if self.shutdown_at.is_none() {
                        self.shutdown_at = Some(now);
                        for (ch, c) in &mut self.conns {
                            c.session.close(
                                &cx,
                                &mut c.conn,
                                CloseCode::ShuttingDown,
                                "scheduler shutting down".to_owned(),
                            );
                            mark_dirty(&mut self.dirty, *ch, c);
                        }
                    }
                }
            }
        }
    }

    fn fire_timers(&mut self, app: &Arc<App>, now: Instant) {
        while let Some(Reverse((at, ch, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(&ch) else {
                continue;
            };
            if c.id != id || c.armed != Some(at) {
                continue; // superseded entry
            }
            c.armed = None;
            if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                c.conn.handle_timeout(now);
            }
            if c.session.deadline().is_some_and(|t| t <= now) {
                let cx = Ctx {
                    app,
                    links: &self.links,
                    now,
                };
                c.session.on_deadline(&cx, &mut c.conn);
            }
            mark_dirty(&mut self.dirty, ch, c);
        }
    }

    /// Drives every connection that got input: session events, endpoint
    /// bookkeeping, transmits, timer.
    fn drive_dirty(&mut self, app: &Arc<App>, now: Instant) {
        let max_segments = self.udp.max_gso_segments().min(MAX_TRANSMIT_SEGMENTS);
        for ch in std::mem::take(&mut self.dirty) {
            let Some(c) = self.conns.get_mut(&ch) else {
                continue;
            };
            c.dirty = false;
            let cx = Ctx {
                app,
                links: &self.links,
                now,
            };
            let mut drained = false;
            loop {
                while let Some(event) = c.conn.poll() {
                    c.session.on_event(&cx, &mut c.conn, event);
                }
                let mut more = false;
                while let Some(event) = c.conn.poll_endpoint_events() {
                    drained |= event.is_drained();
                    if let Some(back) = self.endpoint.handle_event(ch, event) {
                        c.conn.handle_event(back);
                        more = true;
                    }
                }
                loop {
                    self.send_buf.clear();
                    match c.conn.poll_transmit(now, max_segments, &mut self.send_buf) {
                        Some(t) => send(&self.udp, &self.socket, &t, &self.send_buf),
                        None => break,
                    }
                }
                if !more {
                    break;
                }
            }
            if drained {
                c.session.on_drained(&cx);
                let id = c.id;
                self.conns.remove(&ch);
                self.by_id.remove(&id);
                continue;
            }
            let due = match (c.conn.poll_timeout(), c.session.deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(due) = due
                && c.armed.is_none_or(|armed| due < armed)
            {
                c.armed = Some(due);
                self.timers.push(Reverse((due, ch, c.id)));
            }
        }
    }

    fn send(&self, t: &quinn_proto::Transmit, buf: &[u8]) {
        send(&self.udp, &self.socket, t, buf);
    }
}

fn mark_dirty(dirty: &mut Vec<ConnectionHandle>, ch: ConnectionHandle, c: &mut Conn) {
    if !c.dirty {
        c.dirty = true;
        dirty.push(ch);
    }
}

/// Sends one transmit. A full socket buffer drops it, as a congested
/// network would: QUIC's loss recovery resends what mattered.
fn send(
    udp: &quinn_udp::UdpSocketState,
    socket: &UdpSocket,
    t: &quinn_proto::Transmit,
    buf: &[u8],
) {
    let transmit = quinn_udp::Transmit {
        destination: t.destination,
        ecn: t.ecn.map(udp_ecn),
        contents: &buf[..t.size],
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    };
    if let Err(e) = udp.send(socket.into(), &transmit) {
        debug!("QUIC send dropped: {e}");
    }
}

fn proto_ecn(ecn: quinn_udp::EcnCodepoint) -> quinn_proto::EcnCodepoint {
    match ecn {
        quinn_udp::EcnCodepoint::Ect0 => quinn_proto::EcnCodepoint::Ect0,
        quinn_udp::EcnCodepoint::Ect1 => quinn_proto::EcnCodepoint::Ect1,
        quinn_udp::EcnCodepoint::Ce => quinn_proto::EcnCodepoint::Ce,
    }
}

fn udp_ecn(ecn: quinn_proto::EcnCodepoint) -> quinn_udp::EcnCodepoint {
    match ecn {
        quinn_proto::EcnCodepoint::Ect0 => quinn_udp::EcnCodepoint::Ect0,
        quinn_proto::EcnCodepoint::Ect1 => quinn_udp::EcnCodepoint::Ect1,
        quinn_proto::EcnCodepoint::Ce => quinn_udp::EcnCodepoint::Ce,
    }
}
