//! Drives one source connection (a publisher's request body or an
//! upstream's response body) into a stream: demux, splice, publish, with a
//! stall timer and a short wake-up coalescing window for audio.

use super::ingest::Session;
use super::stream::{Stream, lock};
use bytes::Bytes;
use hyper::body::{Body, Incoming};
use std::future::Future;
use std::pin::{Pin, pin};
use std::time::Duration;
use tokio::time::Instant;
use vantage_shared::flv::FlvError;

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
}

/// The next frame of a body (cancel-safe).
pub async fn next_data(body: &mut Incoming) -> Option<Result<Option<Bytes>, hyper::Error>> {
    let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await?;
    Some(frame.map(|f| f.into_data().ok()))
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
    let mut unflushed: Option<Instant> = None;
    loop {
        let flush_at = unflushed.map(|t| t + FLUSH_DELAY);
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
                if header.is_some() || !out.is_empty() {
                    let urgent = out.iter().any(|o| o.urgent);
                    if !stream.deliver(generation, header, &mut out, urgent) {
                        return End::Replaced;
                    }
                    if urgent {
                        unflushed = None;
                    } else if unflushed.is_none() {
                        unflushed = Some(Instant::now());
                    }
                }
                if let Err(e) = result {
                    return End::Malformed(e);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let waited = if session.tags == 0 { timeouts.first } else { timeouts.stall };
                return End::Stall(waited);
            }
            _ = tokio::time::sleep_until(flush_at.unwrap_or(deadline)), if flush_at.is_some() => {
                stream.flush();
                unflushed = None;
            }
        }
    }
}
