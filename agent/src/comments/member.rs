//! One WebSocket connection as a room sees it: the socket, shared between
//! the room's fan-out (which writes batches with `try_write`, never
//! waiting) and the connection's own task (which reads, and waits for the
//! socket to drain when a write did not complete), and its outbox.
//!
//! An idle connection costs this struct, the socket and a parked task: no
//! buffer is held while nothing waits to be written. A write that does not
//! complete leaves the rest of the frame (a slice of the shared batch, not
//! a copy) and anything after it in the outbox, up to `max_queue_bytes`;
//! beyond that, or when nothing moves for the write timeout, the reader is
//! slow and is dropped.

use super::frame::Format;
use super::ws::close_frame;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Who is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A viewer (browser, app).
    Viewer,
    /// A downstream agent's upstream link, with its node id.
    Link { node: String },
}

/// Bytes and writes to comment sockets, shared by every connection of the
/// agent (the `write_bytes` and `writes` metrics).
#[derive(Debug, Clone, Default)]
pub struct Io {
    pub bytes_out: Counter,
    pub writes: Counter,
}

/// [`Member::blocked_since_ms`] of a connection whose queue is empty.
const NOT_BLOCKED: u64 = u64::MAX;

#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<Bytes>,
    queued: usize,
    /// Last comment sequence number handed to this connection.
    cursor: u64,
    /// No more writes (closing or failed).
    shut: bool,
}

/// What became of a batch offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Written or queued.
    Taken,
    /// The connection has these comments already.
    Had,
    /// The queue bound was passed: the connection is being dropped.
    Slow,
    /// Closed or failed.
    Gone,
}

pub struct Member {
    pub id: u64,
    pub sock: TcpStream,
    pub format: Format,
    pub kind: Kind,
    out: Mutex<Outbox>,
    /// Wakes the connection's task (a write to finish, a close to send).
    pub notify: Notify,
    /// When a frame last arrived from the peer (comments clock, ms).
    last_rx_ms: AtomicU64,
    /// Since when queued bytes have not drained (comments clock, ms;
    /// [`NOT_BLOCKED`] while the queue is empty). Written under the outbox
    /// lock, read without it by housekeeping's scan of every connection.
    blocked_since_ms: AtomicU64,
    /// 0 while open; else the close code asked for.
    close: AtomicU16,
    max_queue: usize,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Outbox>) -> MutexGuard<'_, Outbox> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Member {
    pub fn new(
        id: u64,
        sock: TcpStream,
        format: Format,
        kind: Kind,
        max_queue: usize,
        now_ms: u64,
    ) -> Member {
        Member {
            id,
            sock,
            format,
            kind,
            out: Mutex::new(Outbox::default()),
            notify: Notify::new(),
            last_rx_ms: AtomicU64::new(now_ms),
            blocked_since_ms: AtomicU64::new(NOT_BLOCKED),
            close: AtomicU16::new(0),
            max_queue,
        }
    }

    pub fn is_link(&self) -> bool {
        matches!(self.kind, Kind::Link { .. })
    }

    pub fn received(&self, now_ms: u64) {
        self.last_rx_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_rx_ms(&self) -> u64 {
        self.last_rx_ms.load(Ordering::Relaxed)
    }

    /// The close code asked for, if any.
    pub fn closing(&self) -> Option<u16> {
        match self.close.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }

    /// Asks the connection to close with `code` (the first request wins):
    /// the close frame goes after what is queued, unless the connection is
    /// being dropped for not reading (`flush_first = false`).
    pub fn request_close(&self, code: u16, reason: &str, flush_first: bool, io: &Io) {
        if self
            .close
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let mut out = lock(&self.out);
        if flush_first && !out.shut {
            self.push(&mut out, close_frame(code, reason), 0, io);
        }
        out.shut = true;
        drop(out);
        self.notify.notify_one();
    }

    /// The last comment handed to this connection.
    pub fn cursor(&self) -> u64 {
        lock(&self.out).cursor
    }

    /// Sends a control frame (welcome, ack, pong...) after what is queued.
    pub fn send(&self, frame: Bytes, now_ms: u64, io: &Io) -> Offer {
        let mut out = lock(&self.out);
        if out.shut {
            return Offer::Gone;
        }
        self.push(&mut out, frame, now_ms, io)
    }

    /// Sends comments `first..=last` (one frame, `frame`) unless the
    /// connection has them; its cursor moves to `last`.
    pub fn offer(&self, first: u64, last: u64, frame: &Bytes, now_ms: u64, io: &Io) -> Offer {
        let mut out = lock(&self.out);
        if out.shut {
            return Offer::Gone;
        }
        if out.cursor >= last {
            return Offer::Had;
        }
        debug_assert!(out.cursor + 1 >= first, "batches reach a member in order");
        out.cursor = last;
        self.push(&mut out, frame.clone(), now_ms, io)
    }

    /// Under the room's lock at join or reset: frames to send first, and
    /// the cursor they bring the connection to.
    pub fn preload(&self, frames: Vec<Bytes>, cursor: u64, io: &Io) {
        let mut out = lock(&self.out);
        out.cursor = cursor;
        for f in frames {
            if out.shut {
                break;
            }
            self.push(&mut out, f, 0, io);
        }
    }

    /// Sets the cursor (a room reset: numbers start again).
    pub fn reset_cursor(&self, cursor: u64) {
        lock(&self.out).cursor = cursor;
    }

    fn push(&self, out: &mut Outbox, frame: Bytes, now_ms: u64, io: &Io) -> Offer {
        if out.queue.is_empty() {
            match self.sock.try_write(&frame) {
                Ok(n) => {
                    io.bytes_out.inc_by(n as u64);
                    io.writes.inc();
                    if n == frame.len() {
                        return Offer::Taken;
                    }
                    out.queued = frame.len() - n;
                    out.queue.push_back(frame.slice(n..));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    out.queued = frame.len();
                    out.queue.push_back(frame);
                }
                Err(_) => {
                    out.shut = true;
                    self.close
                        .store(super::ws::close::PROTOCOL, Ordering::Release);
                    self.notify.notify_one();
                    return Offer::Gone;
                }
            }
            self.blocked_since_ms.store(now_ms, Ordering::Relaxed);
            self.notify.notify_one();
            return Offer::Taken;
        }
        if out.queued + frame.len() > self.max_queue {
            out.shut = true;
            out.queue.clear();
            out.queued = 0;
            let _ = self.close.compare_exchange(
                0,
                super::ws::close::SLOW,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            self.notify.notify_one();
            return Offer::Slow;
        }
        out.queued += frame.len();
        out.queue.push_back(frame);
        Offer::Taken
    }

    /// Whether bytes wait to be written.
    pub fn pending(&self) -> bool {
        !lock(&self.out).queue.is_empty()
    }

    /// Since when the queue has not drained (ms), if it holds bytes.
    pub fn blocked_since_ms(&self) -> Option<u64> {
        match self.blocked_since_ms.load(Ordering::Relaxed) {
            NOT_BLOCKED => None,
            t => Some(t),
        }
    }

    /// Writes what is queued, as far as the socket takes it. `Ok(true)`
    /// when the queue is empty.
    pub fn flush(&self, now_ms: u64, io: &Io) -> std::io::Result<bool> {
        let mut out = lock(&self.out);
        while !out.queue.is_empty() {
            let slices: Vec<IoSlice<'_>> =
                out.queue.iter().take(64).map(|b| IoSlice::new(b)).collect();
            let n = match self.sock.try_write_vectored(&slices) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => {
                    out.shut = true;
                    out.queue.clear();
                    out.queued = 0;
                    return Err(e);
                }
            };
            drop(slices);
            io.bytes_out.inc_by(n as u64);
            io.writes.inc();
            out.queued -= n;
            let mut left = n;
            while left > 0 {
                let Some(front) = out.queue.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    out.queue.pop_front();
                } else {
                    let rest = front.slice(left..);
                    *front = rest;
                    left = 0;
                }
            }
            self.blocked_since_ms.store(
                if out.queue.is_empty() {
                    NOT_BLOCKED
                } else {
                    now_ms
                },
                Ordering::Relaxed,
            );
        }
        out.queue.shrink_to(0);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (s, c)
    }

    #[tokio::test]
    async fn offers_in_order_once_and_queues_when_the_socket_is_full() {
        let (s, mut c) = pair().await;
        let io = Io::default();
        let m = Member::new(1, s, Format::Json, Kind::Viewer, 64 << 20, 0);
        let f = Bytes::from_static(b"abc");
        assert_eq!(m.offer(1, 3, &f, 0, &io), Offer::Taken);
        assert_eq!(m.offer(1, 3, &f, 0, &io), Offer::Had);
        assert_eq!(m.cursor(), 3);
        let mut buf = [0u8; 3];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"abc");
        // Fill the socket: the rest queues, then drains in order once read.
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let mut seq = 3;
        while !m.pending() {
            seq += 1;
            assert_eq!(m.offer(seq, seq, &big, 5, &io), Offer::Taken);
        }
        assert_eq!(m.blocked_since_ms(), Some(5));
        let total = (seq - 3) as usize * big.len();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; total];
            c.read_exact(&mut got).await.unwrap();
            got.iter().all(|b| *b == 7)
        });
        while !m.flush(9, &io).unwrap() {
            m.sock.writable().await.unwrap();
        }
        assert!(reader.await.unwrap());
        assert_eq!(m.blocked_since_ms(), None);
    }

    #[tokio::test]
    async fn a_reader_that_never_reads_is_dropped_at_the_bound() {
        let (s, _c) = pair().await;
        let io = Io::default();
        let m = Member::new(1, s, Format::Json, Kind::Viewer, 256 * 1024, 0);
        let big = Bytes::from(vec![1u8; 64 * 1024]);
        let mut outcome = Offer::Taken;
        for seq in 1..10_000 {
            outcome = m.offer(seq, seq, &big, 0, &io);
            if outcome != Offer::Taken {
                break;
            }
        }
        assert_eq!(outcome, Offer::Slow);
        assert_eq!(m.closing(), Some(super::super::ws::close::SLOW));
        assert_eq!(m.send(Bytes::from_static(b"x"), 0, &io), Offer::Gone);
    }
}
