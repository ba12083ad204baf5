//! Connection hygiene for every TCP listener (scheduler HTTP API and gRPC,
//! agent media, admin and RTMP): a cap on connections open at once, a
//! deadline to prove the connection is a real client (a TLS handshake and a
//! first request, a first HTTP request head, an RTMP handshake), an idle
//! timeout for connections that completed their requests, and `accept`
//! that backs off instead of spinning when the process is out of file
//! descriptors.
//!
//! * [`Listener::accept`] yields a connection with its [`Conn`] handle;
//!   the server wraps the socket in [`Guarded`] (or any I/O) and calls
//!   [`Conn::proven`] once the peer proved itself.
//! * At the cap, the oldest connection that has not proven itself yet is
//!   closed to admit the new one ([`Closed::Shed`]); only when every
//!   connection is proven is the new one refused. Idle sockets opened by an
//!   attacker therefore never lock real clients out.
//! * On `EMFILE`/`ENFILE` (and `ENOBUFS`/`ENOMEM`) the listener sheds unproven
//!   connections to free descriptors and retries after a back-off (10 ms
//!   doubling to 1 s, reset by a successful accept); per-connection errors
//!   (`ECONNABORTED`, ...) are skipped at once.
//! * [`Guarded`] fails reads and writes once its connection is shed, its
//!   proof deadline passed, or it stayed idle (no request in flight, see
//!   [`Conn::begin`]) for the idle timeout.
//!
//! Every outcome goes to a [`ListenerEvents`] sink (the binaries count them
//! as Prometheus metrics).

pub mod http;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// A connection must prove itself (handshake, first request) within this.
    pub proof_timeout: Duration,
    /// A proven connection with no request in flight for this long is
    /// closed (`None`: the server's protocol handles idleness itself).
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            proof_timeout: Duration::from_secs(10),
            idle_timeout: None,
        }
    }
}

/// Why a connection was closed by the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Closed {
    /// At the cap (or out of descriptors) while it had not proven itself.
    Shed,
    /// It did not prove itself within the proof timeout.
    ProofTimeout,
    /// It stayed idle for the idle timeout.
    Idle,
}

impl Closed {
    pub fn label(self) -> &'static str {
        match self {
            Closed::Shed => "shed",
            Closed::ProofTimeout => "proof_timeout",
            Closed::Idle => "idle",
        }
    }
}

/// What a listener reports (counted by the binaries).
pub trait ListenerEvents: Send + Sync + 'static {
    /// A connection was admitted.
    fn accepted(&self) {}
    /// A connection was refused at once: at the cap with every connection
    /// proven.
    fn refused(&self) {}
    /// A connection was closed by the listener.
    fn closed(&self, _why: Closed) {}
    /// `accept` failed; `kind` is `emfile`, `enfile`, `enobufs`, `enomem`
    /// (the process or system is out of resources: back-off) or `other`.
    fn accept_error(&self, _kind: &'static str) {}
    /// Connections open now changed.
    fn open(&self, _n: usize) {}
}

/// Events nobody counts.
#[derive(Debug, Default)]
pub struct NoEvents;
impl ListenerEvents for NoEvents {}

const PROVING: u8 = 0;
const PROVEN: u8 = 1;

/// The state of one connection, shared by the listener, the [`Guarded`]
/// socket and the server's request handling.
#[derive(Debug)]
struct Shared {
    state: AtomicU8,
    /// Requests in flight ([`Conn::begin`]).
    active: AtomicUsize,
    /// When the last request ended (for the idle timeout).
    idle_since: Mutex<Instant>,
    /// Cancelled to close the connection.
    close: CancellationToken,
    why: Mutex<Option<Closed>>,
    accepted_at: Instant,
}

/// A connection's handle: mark it proven, count requests, close it.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Conn {
    shared: Arc<Shared>,
}

impl Conn {
    fn new(now: Instant) -> Conn {
        Conn {
            shared: Arc::new(Shared {
                state: AtomicU8::new(PROVING),
                active: AtomicUsize::new(0),
                idle_since: Mutex::new(now),
                close: CancellationToken::new(),
                why: Mutex::new(None),
                accepted_at: now,
            }),
        }
    }

    /// The peer proved itself: it is no longer shed at the cap and its
    /// proof deadline no longer applies.
    pub fn proven(&self) {
        self.shared.state.store(PROVEN, Ordering::Release);
    }

    pub fn is_proven(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == PROVEN
    }

    /// A request started (proves the connection); the returned guard ends
    /// it. While a request is in flight the idle timeout does not run.
    pub fn begin(&self) -> Request {
        self.proven();
        self.shared.active.fetch_add(1, Ordering::AcqRel);
        Request {
            shared: self.shared.clone(),
        }
    }

    /// Closes the connection (its [`Guarded`] socket fails from now on).
    pub fn close(&self, why: Closed) {
        let mut w = lock(&self.shared.why);
        if w.is_none() {
            *w = Some(why);
        }
        drop(w);
        self.shared.close.cancel();
    }

    /// Why the listener closed it, if it did.
    pub fn closed_why(&self) -> Option<Closed> {
        *lock(&self.shared.why)
    }

    /// Resolves when the connection is closed by the listener.
    pub async fn closed(&self) {
        self.shared.close.cancelled().await
    }
}

/// One request in flight on a [`Conn`]; dropping it ends the request.
#[derive(Debug)]
pub struct Request {
    shared: Arc<Shared>,
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.shared.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&self.shared.idle_since) = Instant::now();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the listener keeps of its connections: how many are open and the
/// unproven ones, oldest first (candidates for shedding).
#[derive(Debug, Default)]
struct Table {
    open: usize,
    proving: VecDeque<Weak<Shared>>,
}

impl Table {
    /// Closes the oldest connection still proving itself; false if none.
    fn shed_one(&mut self) -> bool {
        while let Some(w) = self.proving.pop_front() {
            let Some(s) = w.upgrade() else { continue };
            if s.state.load(Ordering::Acquire) != PROVING || s.close.is_cancelled() {
                continue;
            }
            Conn { shared: s }.close(Closed::Shed);
            return true;
        }
        false
    }

    /// Forgets entries of connections gone or proven (bounded work).
    fn compact(&mut self) {
        if self.proving.len() > 2 * self.open + 64 {
            self.proving.retain(|w| {
                w.upgrade()
                    .is_some_and(|s| s.state.load(Ordering::Acquire) == PROVING)
            });
        }
    }
}

/// Held by the [`Guarded`] socket: the connection counts as open until it
/// is dropped.
struct Slot {
    table: Arc<Mutex<Table>>,
    events: Arc<dyn ListenerEvents>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let open = {
            let mut t = lock(&self.table);
            t.open = t.open.saturating_sub(1);
            t.open
        };
        self.events.open(open);
    }
}

/// A TCP listener with [`Limits`].
pub struct Listener {
    inner: TcpListener,
    limits: Limits,
    table: Arc<Mutex<Table>>,
    events: Arc<dyn ListenerEvents>,
    backoff: Duration,
    last_warning: Option<Instant>,
    name: &'static str,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Least and most time between two `accept` attempts while out of
/// descriptors.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Unproven connections shed per `EMFILE` to free descriptors.
const SHED_ON_EMFILE: usize = 16;

/// The class of an `accept` error: resource exhaustion (back off) or a
/// per-connection failure (go on at once).
pub fn accept_error_kind(e: &io::Error) -> (&'static str, bool) {
    match e.raw_os_error() {
        Some(24) => ("emfile", true),
        Some(23) => ("enfile", true),
        Some(105) => ("enobufs", true),
        Some(12) => ("enomem", true),
        _ => ("other", false),
    }
}

impl Listener {
    /// `name` labels log lines (`gRPC`, `HTTP`, `media`, ...).
    pub fn new(
        inner: TcpListener,
        limits: Limits,
        events: Arc<dyn ListenerEvents>,
        name: &'static str,
    ) -> Listener {
        Listener {
            inner,
            limits,
            table: Arc::default(),
            events,
            backoff: BACKOFF_MIN,
            last_warning: None,
            name,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        lock(&self.table).open
    }

    /// The next admitted connection. Never returns an error: resource
    /// exhaustion backs off (shedding unproven connections), other errors
    /// are skipped. Cancel-safe.
    pub async fn accept(&mut self) -> (Guarded<TcpStream>, SocketAddr, Conn) {
        loop {
            match self.inner.accept().await {
                Ok((sock, peer)) => {
                    self.backoff = BACKOFF_MIN;
                    if let Some(admitted) = self.admit(sock) {
                        return (admitted.0, peer, admitted.1);
                    }
                }
                Err(e) => {
                    let (kind, exhausted) = accept_error_kind(&e);
                    self.events.accept_error(kind);
                    if !exhausted {
                        continue;
                    }
                    let shed = {
                        let mut t = lock(&self.table);
                        (0..SHED_ON_EMFILE).take_while(|_| t.shed_one()).count()
                    };
                    let now = Instant::now();
                    if self
                        .last_warning
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
                    {
                        self.last_warning = Some(now);
                        tracing::warn!(
                            listener = self.name,
                            error = %e,
                            open = self.open(),
                            shed,
                            "accept failed: out of resources; shedding unproven connections \
                             and backing off (raise the file descriptor limit, or lower the \
                             connection limit)"
                        );
                    }
                    // Shed connections close as their tasks run: a short
                    // pause is enough then.
                    let pause = if shed > 0 { BACKOFF_MIN } else { self.backoff };
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    fn admit(&mut self, sock: TcpStream) -> Option<(Guarded<TcpStream>, Conn)> {
        let now = Instant::now();
        let conn = Conn::new(now);
        let open = {
            let mut t = lock(&self.table);
            if t.open >= self.limits.max_connections.max(1) {
                // The shed connection's socket reports it as closed.
                if !t.shed_one() {
                    drop(t);
                    self.events.refused();
                    return None;
                }
            }
            t.open += 1;
            t.proving.push_back(Arc::downgrade(&conn.shared));
            t.compact();
            t.open
        };
        self.events.accepted();
        self.events.open(open);
        let slot = Slot {
            table: self.table.clone(),
            events: self.events.clone(),
        };
        Some((Guarded::new(sock, conn.clone(), self.limits, slot), conn))
    }
}

/// A socket of a [`Listener`]: reads and writes fail (`ConnectionAborted`)
/// once the listener closed the connection (shed, proof deadline, idle).
pub struct Guarded<S> {
    inner: S,
    conn: Conn,
    limits: Limits,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    timer: Pin<Box<Sleep>>,
    _slot: Option<Slot>,
    events: Option<Arc<dyn ListenerEvents>>,
    reported: AtomicBool,
}

impl<S> std::fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl<S> Guarded<S> {
    fn new(inner: S, conn: Conn, limits: Limits, slot: Slot) -> Guarded<S> {
        let events = Some(slot.events.clone());
        let deadline = conn.shared.accepted_at + limits.proof_timeout;
        Guarded {
            closed: Box::pin(conn.shared.close.clone().cancelled_owned()),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            inner,
            conn,
            limits,
            _slot: Some(slot),
            events,
            reported: AtomicBool::new(false),
        }
    }

    /// The connection's handle.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// When the listener closes this connection unless something changes.
    fn deadline(&self) -> Option<Instant> {
        let s = &self.conn.shared;
        if s.state.load(Ordering::Acquire) == PROVING {
            return Some(s.accepted_at + self.limits.proof_timeout);
        }
        let idle = self.limits.idle_timeout?;
        if s.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(*lock(&s.idle_since) + idle)
    }

    /// `Err` once the connection is closed (or its deadline passed, which
    /// closes it); registers the task to be woken at the deadline.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.closed.as_mut().poll(cx).is_ready() {
            return Err(self.aborted());
        }
        if let Some(at) = self.deadline() {
            if Instant::now() >= at {
                let why = if self.conn.is_proven() {
                    Closed::Idle
                } else {
                    Closed::ProofTimeout
                };
                self.conn.close(why);
                return Err(self.aborted());
            }
            if self.timer.deadline() != at {
                self.timer.as_mut().reset(at);
            }
            if self.timer.as_mut().poll(cx).is_ready() {
                // Woken at the deadline: closed at the next poll.
                cx.waker().wake_by_ref();
            }
        }
        Ok(())
    }

    fn aborted(&self) -> io::Error {
        let why = self.conn.closed_why().unwrap_or(Closed::Shed);
        if !self.reported.swap(true, Ordering::Relaxed)
            && let Some(e) = &self.events
        {
            e.closed(why);
        }
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("connection closed by the listener ({})", why.label()),
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
