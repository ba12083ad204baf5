//! Drives one source connection (a publisher's request body or an
//! upstream's response body) into a stream: demux, splice, publish, with a
//! stall timer and wake-up coalescing: viewers are woken on video tags, at
//! most once per `Timeouts::coalesce`, and audio-only batches wait up to
//! [`FLUSH_DELAY`] for a video tag — fewer, larger writes per viewer.

use super::hub::Outgoing;
use super::ingest::Session;
use super::stream::{Stream, lock};
use bytes::Bytes;
use hyper::body::{Body, Incoming};
use std::future::Future;
use std::pin::{Pin, pin};
use std::time::Duration;
use tokio::time::Instant;
use vantage_shared::flv::{FileHeader, FlvError};

/// Audio-only batches wait at most this long for a video tag before
/// viewers are woken anyway (fewer, larger writes).
pub const FLUSH_DELAY: Duration = Duration::from_millis(20);

/// Why a source must stop although its connection is fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Shutdown, or another source took the stream over.
    Cancelled,
    /// No viewer for the idle timeout (pulls only).
    Idle,
    /// The route table now prefers another upstream (pulls only).
    Switch,
}

/// How a source connection ended.
#[derive(Debug)]
pub enum End {
    /// The body ended.
    Eof,
    Malformed(FlvError),
    /// The connection failed.
    Body(String),
    /// Nothing arrived for this long.
    Stall(Duration),
    Stopped(Stop),
    /// Another source replaced this one.
    Replaced,
}

/// Timeouts of one source connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Until the first bytes.
    pub first: Duration,
    /// Between bytes afterwards.
    pub stall: Duration,
    /// Shortest time between two wake-ups of the stream's viewers.
    pub coalesce: Duration,
}

/// The next frame of a body (cancel-safe).
pub async fn next_data(body: &mut Incoming) -> Option<Result<Option<Bytes>, hyper::Error>> {
    let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await?;
    Some(frame.map(|f| f.into_data().ok()))
}

/// Wake-up coalescing of one source: when to tell viewers about tags
/// already in the ring.
#[derive(Debug)]
pub struct Pacer {
    coalesce: Duration,
    /// Tags published but not yet announced to viewers: wake them by then.
    flush_at: Option<Instant>,
    last_wake: Option<Instant>,
}

impl Pacer {
    pub fn new(coalesce: Duration) -> Pacer {
        Pacer {
            coalesce,
            flush_at: None,
            last_wake: None,
        }
    }

    /// Publishes `out` (and `header`) into `stream` as source `generation`,
    /// waking viewers now or scheduling it. False if the source was replaced.
    pub fn deliver(
        &mut self,
        stream: &Stream,
        generation: u64,
        header: Option<FileHeader>,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        if header.is_none() && out.is_empty() {
            return true;
        }
        let now = Instant::now();
        let urgent = out.iter().any(|o| o.urgent);
        // The earliest this batch may wake viewers.
        let window = self.last_wake.map_or(now, |t| t + self.coalesce);
        let wake = urgent && window <= now;
        if !stream.deliver(generation, header, out, wake) {
            return false;
        }
        if wake {
            self.last_wake = Some(now);
            self.flush_at = None;
        } else {
            let due = if urgent {
                window
            } else {
                window.max(now + FLUSH_DELAY)
            };
            self.flush_at = Some(self.flush_at.map_or(due, |f| f.min(due)));
        }
        true
    }

    /// When viewers must be woken for tags delivered without a wake-up.
    pub fn flush_at(&self) -> Option<Instant> {
        self.flush_at
    }

    /// Wakes the viewers (the flush time came).
    pub fn flush(&mut self, stream: &Stream) {
        stream.flush();
        self.last_wake = Some(Instant::now());
        self.flush_at = None;
    }
}

/// Feeds `body` into `stream` as source `generation` until it ends, stalls, turns
/// out malformed, is replaced, or `stop` resolves.
pub async fn drive(
    stream: &Stream,
    generation: u64,
    session: &mut Session,
    body: &mut Incoming,
    timeouts: Timeouts,
    stop: impl Future<Output = Stop>,
) -> End {
    let mut stop = pin!(stop);
    let mut out = Vec::new();
    let mut deadline = Instant::now() + timeouts.first;
    let mut pacer = Pacer::new(timeouts.coalesce);
    loop {
        tokio::select! {
            biased;
            reason = &mut stop => return End::Stopped(reason),
            frame = next_data(body) => {
                let data = match frame {
                    None => return End::Eof,
                    Some(Err(e)) => return End::Body(e.to_string()),
                    Some(Ok(None)) => continue,
                    Some(Ok(Some(d))) => d,
                };
                deadline = Instant::now() + timeouts.stall;
                stream.count_ingress(data.len());
                let result = {
                    let mut tl = lock(&stream.timeline);
                    session.push(&mut tl, &data, &mut out)
                };
                let header = session.take_header();
                if !pacer.deliver(stream, generation, header, &mut out) {
                    return End::Replaced;
                }
                if let Err(e) = result {
                    return End::Malformed(e);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let waited = if session.tags == 0 { timeouts.first } else { timeouts.stall };
                return End::Stall(waited);
            }
            _ = tokio::time::sleep_until(pacer.flush_at().unwrap_or(deadline)), if pacer.flush_at().is_some() => {
                pacer.flush(stream);
            }
        }
    }
}
