//! The batch writer: one task owns the queue of fire-and-forget writes and commits them in one
//! transaction every [`FLUSH_EVERY`] or every [`MAX_BATCH`] ops, whichever comes first. While the
//! database is unreachable the writes wait (up to [`QUEUE_CAPACITY`]) and go in when it is back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use super::WriteOp;
use super::error::StoreError;
use super::queries::{Prepared, apply_batch};

/// Longest time a queued write waits before its batch is committed.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Ops per transaction at most.
pub const MAX_BATCH: usize = 1_000;
/// Queued ops beyond this are dropped (and counted) by [`super::Store::record`].
pub const QUEUE_CAPACITY: usize = 100_000;
/// Pause before the single retry of a failed batch, and the first pause
/// while the database is unreachable.
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// Longest pause between two attempts while the database is unreachable.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

pub(super) enum Msg {
    Op(WriteOp),
    /// Commit everything received so far, then answer.
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

/// Counters of the batch writer, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WriteStats {
    /// Committed transactions.
    pub batches: u64,
    /// Ops committed.
    pub ops_written: u64,
    /// Ops that will never be written, whatever the reason (sum of the next two plus ops
    /// refused as invalid).
    pub ops_dropped: u64,
    /// Ops refused by `record` because the queue was full (or the writer had stopped).
    pub ops_dropped_queue_full: u64,
    /// Ops lost with a batch that failed twice.
    pub ops_dropped_failed: u64,
    /// Failed commit attempts (a batch retried successfully counts one).
    pub batch_errors: u64,
    /// Ops waiting in the queue right now.
    pub queue_depth: u64,
    /// Message of the most recent error, if any.
    pub last_error: Option<String>,
}

#[derive(Default)]
pub(super) struct Counters {
    batches: AtomicU64,
    ops_written: AtomicU64,
    pub(super) dropped_queue_full: AtomicU64,
    dropped_failed: AtomicU64,
    dropped_invalid: AtomicU64,
    batch_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    /// Counts one op refused by `record`; returns the new total of such drops.
    pub(super) fn drop_queue_full(&self) -> u64 {
        self.dropped_queue_full.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(super) fn dropped_total(&self) -> u64 {
        self.dropped_queue_full.load(Ordering::Relaxed)
            + self.dropped_failed.load(Ordering::Relaxed)
            + self.dropped_invalid.load(Ordering::Relaxed)
    }

    pub(super) fn snapshot(&self, queue_depth: u64) -> WriteStats {
        let ops_dropped_queue_full = self.dropped_queue_full.load(Ordering::Relaxed);
        let ops_dropped_failed = self.dropped_failed.load(Ordering::Relaxed);
        WriteStats {
            batches: self.batches.load(Ordering::Relaxed),
            ops_written: self.ops_written.load(Ordering::Relaxed),
            ops_dropped: ops_dropped_queue_full
                + ops_dropped_failed
                + self.dropped_invalid.load(Ordering::Relaxed),
            ops_dropped_queue_full,
            ops_dropped_failed,
            batch_errors: self.batch_errors.load(Ordering::Relaxed),
            queue_depth,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }

    fn set_last_error(&self, e: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(e);
    }
}

/// Losses since the last `flush`, reported to its caller.
#[derive(Default)]
struct Losses {
    ops: u64,
    last_error: Option<String>,
}

pub(super) struct Writer {
    pub(super) pool: AnyPool,
    pub(super) rx: mpsc::Receiver<Msg>,
    pub(super) counters: std::sync::Arc<Counters>,
}

impl Writer {
    /// Runs until every `Store` handle is gone, committing what is left before returning.
    pub(super) async fn run(mut self) {
        let mut pending: Vec<Prepared> = Vec::with_capacity(MAX_BATCH);
        let mut losses = Losses::default();
        let mut msgs: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outage = Outage::default();

        loop {
            tokio::select! {
                n = self.rx.recv_many(&mut msgs, MAX_BATCH) => {
                    if n == 0 {
                        break; // all senders gone and the queue is empty
                    }
                    for msg in msgs.drain(..) {
                        match msg {
                            Msg::Op(op) => {
                                if pending.len() >= QUEUE_CAPACITY {
                                    // The database is away and the backlog is full.
                                    self.counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                                    losses.ops += 1;
                                    continue;
                                }
                                self.push(&mut pending, op, &mut losses);
                                if pending.len() >= MAX_BATCH && !outage.active() {
                                    self.commit(&mut pending, &mut losses, &mut outage).await;
                                }
                            }
                            Msg::Flush(reply) => {
                                self.commit(&mut pending, &mut losses, &mut outage).await;
                                let result = if outage.active() {
                                    Err(StoreError::Unavailable {
                                        pending: pending.len() as u64,
                                        last_error: outage.last_error.clone().unwrap_or_default(),
                                    })
                                } else {
                                    let lost = std::mem::take(&mut losses);
                                    match lost.last_error {
                                        Some(last_error) if lost.ops > 0 => Err(StoreError::WritesLost {
                                            ops: lost.ops,
                                            last_error,
                                        }),
                                        _ => Ok(()),
                                    }
                                };
                                // The flusher may have given up waiting; nothing to do then.
                                let _ = reply.send(result);
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    if outage.retry_due() {
                        self.commit(&mut pending, &mut losses, &mut outage).await;
                    }
                }
            }
        }
        self.commit(&mut pending, &mut losses, &mut outage).await;
        if !pending.is_empty() {
            let n = pending.len() as u64;
            tracing::error!(
                ops = n,
                "the database is unavailable at shutdown: {n} queued writes are lost"
            );
            self.counters.dropped_failed.fetch_add(n, Ordering::Relaxed);
        }
        tracing::debug!("store writer stopped");
    }

    fn push(&self, pending: &mut Vec<Prepared>, op: WriteOp, losses: &mut Losses) {
        match Prepared::new(op) {
            Ok(p) => pending.push(p),
            Err(e) => {
                tracing::warn!(error = %e, "dropping a queued database write");
                self.counters
                    .dropped_invalid
                    .fetch_add(1, Ordering::Relaxed);
                let msg = e.to_string();
                self.counters.set_last_error(msg.clone());
                losses.ops += 1;
                losses.last_error = Some(msg);
            }
        }
    }

    /// Commits `pending` in transactions of at most [`MAX_BATCH`] ops. A
    /// batch that fails because the database is unreachable (a transient
    /// error) stays queued and is retried with backoff for as long as it
    /// takes — nothing is lost while the database is away, up to
    /// [`QUEUE_CAPACITY`] ops. Any other failure is retried once, then that
    /// batch is dropped (and counted).
    async fn commit(&self, pending: &mut Vec<Prepared>, losses: &mut Losses, outage: &mut Outage) {
        while !pending.is_empty() {
            let take = pending.len().min(MAX_BATCH);
            let n = take as u64;
            let mut attempt = 0;
            let error = loop {
                attempt += 1;
                match self.try_commit(&pending[..take]).await {
                    Ok(()) => {
                        self.counters.batches.fetch_add(1, Ordering::Relaxed);
                        self.counters.ops_written.fetch_add(n, Ordering::Relaxed);
                        pending.drain(..take);
                        if outage.active() {
                            tracing::info!(
                                after_ms = outage.since.map_or(0, |s| s.elapsed().as_millis()),
                                "the database is reachable again; queued writes are committed"
                            );
                        }
                        *outage = Outage::default();
                        break None;
                    }
                    Err(e) if e.is_transient() => {
                        self.counters.batch_errors.fetch_add(1, Ordering::Relaxed);
                        self.counters.set_last_error(e.to_string());
                        if !outage.active() {
                            tracing::warn!(
                                ops = pending.len(),
                                error = %e,
                                "the database is unavailable; queued writes wait for it"
                            );
                        }
                        outage.failed(e.to_string());
                        return;
                    }
                    Err(e) => {
                        self.counters.batch_errors.fetch_add(1, Ordering::Relaxed);
                        self.counters.set_last_error(e.to_string());
                        if attempt >= 2 {
                            break Some(e);
                        }
                        tracing::warn!(ops = n, error = %e, "database batch failed; retrying once");
                        tokio::time::sleep(RETRY_DELAY).await;
                    }
                }
            };
            if let Some(error) = error {
                tracing::error!(
                    ops = n,
                    error = %error,
                    "dropping {n} queued database writes: the batch failed twice"
                );
                self.counters.dropped_failed.fetch_add(n, Ordering::Relaxed);
                losses.ops += n;
                losses.last_error = Some(error.to_string());
                pending.drain(..take);
            }
        }
    }

    async fn try_commit(&self, ops: &[Prepared]) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(StoreError::query("starting a write batch"))?;
        apply_batch(&mut tx, ops)
            .await
            .map_err(StoreError::query("writing a batch"))?;
        tx.commit()
            .await
            .map_err(StoreError::query("committing a write batch"))
    }
}

/// The database unreachable: since when, and when to try again (backoff
/// from [`RETRY_DELAY`] to [`MAX_RETRY_DELAY`]).
#[derive(Default)]
struct Outage {
    since: Option<std::time::Instant>,
    next_try: Option<std::time::Instant>,
    delay: Duration,
    last_error: Option<String>,
}

impl Outage {
    fn active(&self) -> bool {
        self.since.is_some()
    }

    fn retry_due(&self) -> bool {
        self.next_try.is_none_or(|t| std::time::Instant::now() >= t)
    }

    fn failed(&mut self, error: String) {
        let now = std::time::Instant::now();
        self.since.get_or_insert(now);
        self.delay = if self.delay.is_zero() {
            RETRY_DELAY
        } else {
            (self.delay * 2).min(MAX_RETRY_DELAY)
        };
        self.next_try = Some(now + self.delay);
        self.last_error = Some(error);
    }
}
