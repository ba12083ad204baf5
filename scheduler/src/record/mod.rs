//! Recording (`--record DIR`): the scheduler's inputs and decisions as
//! rotating JSON-lines trace files, in the format of
//! [`vantage_plan::trace`] (`docs/simulator-traces.md`), which also reads
//! and replays them.
//!
//! Inputs are agent reports, node events (connect, disconnect, up, suspect,
//! down, draining, drain), alerts, weight changes and resolve requests with
//! their answers; decisions are the planning session's steps: what each
//! step was given since the step before (enough to re-run it exactly) and
//! the decisions of every node whose table changed
//! ([`Recorder::begin_step`], [`Recorder::step`]).
//!
//! Cost: callers hold an `Option<Recorder>`; with recording off nothing
//! happens. With it on, a caller only builds a small owned record and
//! `try_send`s it into a bounded queue; one writer thread serialises and
//! writes (`writer.rs`). A full queue drops the record and counts
//! `vantage_scheduler_record_dropped_total` — recording never slows ingest
//! or planning (a dropped step makes the next one whole). The writer
//! flushes whenever the queue is empty (so a killed scheduler loses at most
//! a partial last line), fsyncs on rotation, and keeps the newest
//! `max_files` files.

mod writer;

#[cfg(test)]
mod tests;

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use tracing::info;
use vantage_plan::trace::format::{AlertLine, NodeEvent, NodeInfoLine, ResolveLine, WeightsLine};
use vantage_plan::trace::{self, Line, StepCapture};
use vantage_proto::v1::Report;
use vantage_shared::score::Weights;
use writer::Writer;

pub use trace::{file_name, file_seq, trace_files};

/// `[record]` in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordLimits {
    /// Rotate after this many MiB. Default 64.
    pub max_file_mib: u64,
    /// Rotate after this many seconds. Default 3600.
    pub max_file_age_s: u64,
    /// Keep at most this many files (oldest deleted). Default 48.
    pub max_files: usize,
    /// Records queued for the writer before new ones are dropped. Default 65536.
    pub queue: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self {
            max_file_mib: 64,
            max_file_age_s: 3600,
            max_files: 48,
            queue: 65_536,
        }
    }
}

impl RecordLimits {
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.max_file_mib == 0 || self.max_file_mib > 64 * 1024 {
            return Err("max_file_mib must be 1 ..= 65536");
        }
        if self.max_file_age_s == 0 {
            return Err("max_file_age_s must be > 0");
        }
        if self.max_files == 0 {
            return Err("max_files must be > 0");
        }
        if !(16..=16 * 1024 * 1024).contains(&self.queue) {
            return Err("queue must be 16 ..= 16777216");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("trace directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the trace writer: {0}")]
    Thread(std::io::Error),
}

/// Recording counters, registered as `vantage_scheduler_record_*`.
#[derive(Debug, Clone, Default)]
pub struct RecordMetrics {
    pub written: Counter,
    pub dropped: Counter,
    pub bytes: Counter,
    pub files: Counter,
    pub errors: Counter,
}

impl RecordMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("vantage_scheduler_record");
        r.register("written", "Trace records written", m.written.clone());
        r.register(
            "dropped",
            "Trace records dropped: the writer queue was full, or a step line could not follow the step before it in its file",
            m.dropped.clone(),
        );
        r.register("bytes", "Bytes written to trace files", m.bytes.clone());
        r.register("files", "Trace files opened", m.files.clone());
        r.register(
            "errors",
            "Trace write errors (records lost)",
            m.errors.clone(),
        );
        m
    }
}

/// What callers hand to the writer (owned; serialised on the writer thread).
enum Entry {
    Report {
        at_ms: i64,
        node_id: String,
        seq: u64,
        pb: Vec<u8>,
    },
    Line(Box<Line>),
    /// A planning step, numbered; made a line on the writer thread.
    Step {
        seq: u64,
        capture: Box<StepCapture>,
    },
    /// Stop after writing what came before ([`Recorder::close`]).
    Close,
}

/// A step about to be recorded: its number (counting every step of the
/// process) and whether to capture it whole
/// ([`StepInputs::capture`](vantage_plan::trace::StepInputs::capture)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTicket {
    pub seq: u64,
    pub whole: bool,
}

/// Handle to the trace writer. Cheap calls, never blocking.
#[derive(Debug)]
pub struct Recorder {
    tx: SyncSender<Entry>,
    metrics: RecordMetrics,
    /// The last step numbered, and the last handed to the writer.
    step_seq: AtomicU64,
    step_sent: AtomicU64,
    /// The next step should be whole (the first one, after a dropped
    /// step, for a new file); shared with the writer.
    need_whole: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entry")
    }
}

impl Recorder {
    /// Creates `dir` and starts the writer thread. New files continue after
    /// the highest sequence number already in `dir`.
    pub fn start(
        dir: &Path,
        limits: RecordLimits,
        scheduler_id: &str,
        weights: (u64, Weights),
        metrics: RecordMetrics,
    ) -> Result<Self, RecordError> {
        let dir_err = |source| RecordError::Dir {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let next_seq = trace_files(dir)
            .map_err(dir_err)?
            .last()
            .map_or(1, |(s, _)| s + 1);
        let (tx, rx) = std::sync::mpsc::sync_channel(limits.queue);
        let need_whole = Arc::new(AtomicBool::new(true));
        let mut writer = Writer::new(
            dir.to_owned(),
            limits,
            scheduler_id.to_owned(),
            weights,
            next_seq,
            metrics.clone(),
            need_whole.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("trace-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(RecordError::Thread)?;
        info!(dir = %dir.display(), first_file = file_name(next_seq), "recording inputs and decisions");
        Ok(Self {
            tx,
            metrics,
            step_seq: AtomicU64::new(0),
            step_sent: AtomicU64::new(0),
            need_whole,
            thread: Mutex::new(Some(thread)),
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues `e`; false (dropped, counted) when the queue is full.
    fn send(&self, e: Entry) -> bool {
        match self.tx.try_send(e) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.dropped.inc();
                false
            }
        }
    }

    /// Numbers the step about to be taken and says whether to capture it
    /// whole: the first step, the first after a step that was not handed
    /// to the writer, and whenever the writer asks (a new file).
    pub fn begin_step(&self) -> StepTicket {
        let seq = self.step_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let follows = self.step_sent.load(Ordering::Relaxed) + 1 == seq;
        let asked = self.need_whole.swap(false, Ordering::Relaxed);
        StepTicket {
            seq,
            whole: asked || !follows,
        }
    }

    /// A step taken (its capture moves to the writer thread). When it is
    /// dropped the next step is captured whole.
    pub fn step(&self, ticket: StepTicket, capture: StepCapture) {
        let sent = self.send(Entry::Step {
            seq: ticket.seq,
            capture: Box::new(capture),
        });
        if sent {
            self.step_sent.store(ticket.seq, Ordering::Relaxed);
        } else {
            self.need_whole.store(true, Ordering::Relaxed);
        }
    }

    /// An accepted report (before it is applied).
    pub fn report(&self, at_ms: i64, node_id: &str, r: &Report) {
        let _ = self.send(Entry::Report {
            at_ms,
            node_id: node_id.to_owned(),
            seq: r.seq,
            pb: prost::Message::encode_to_vec(r),
        });
    }

    /// A node event: `connect` (with `info`), `disconnect`, a liveness state
    /// (`up`, `suspect`, `down`, `draining`) or `drain`.
    pub fn node(
        &self,
        at_ms: i64,
        node_id: &str,
        event: &str,
        detail: &str,
        info: Option<&crate::registry::NodeInfo>,
    ) {
        let _ = self.send(Entry::Line(Box::new(Line::Node(NodeEvent {
            at_ms,
            node_id: node_id.to_owned(),
            event: event.to_owned(),
            detail: detail.to_owned(),
            info: info.map(|i| NodeInfoLine {
                region: i.region.clone(),
                lat: i.coord.map(|c| c.lat),
                lon: i.coord.map(|c| c.lon),
                capacity_mbps: i.capacity_mbps,
                public_url: i.public_url.clone(),
                probe_addr: i.probe_addr.clone(),
                agent_version: i.agent_version.clone(),
                static_origins: i
                    .static_origins
                    .iter()
                    .map(|(p, u)| (p.to_string(), u.clone()))
                    .collect(),
            }),
        }))));
    }

    pub fn alert(&self, at_ms: i64, node_id: &str, kind: &str, a: &vantage_proto::v1::Alert) {
        let _ = self.send(Entry::Line(Box::new(Line::Alert(AlertLine {
            at_ms,
            node_id: node_id.to_owned(),
            kind: kind.to_owned(),
            subject: a.subject.clone(),
            detail: a.detail.clone(),
            value: a.value,
        }))));
    }

    pub fn weights(&self, at_ms: i64, ws: &crate::store::WeightSet) {
        let _ = self.send(Entry::Line(Box::new(Line::Weights(WeightsLine {
            at_ms,
            version: ws.version,
            weights: ws.weights,
            actor: ws.actor.clone(),
            comment: ws.comment.clone(),
        }))));
    }

    /// A viewer resolve request and its answer (any JSON).
    pub fn resolve(&self, at_ms: i64, request: serde_json::Value, answer: serde_json::Value) {
        let _ = self.send(Entry::Line(Box::new(Line::Resolve(ResolveLine {
            at_ms,
            request,
            answer,
        }))));
    }

    /// Stops the writer after it wrote everything queued (flushed and
    /// fsynced). Later records are dropped.
    pub fn close(&self) {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            // Queued behind everything sent before; the writer stops there.
            let _ = self.tx.send(Entry::Close);
            let _ = h.join();
        }
    }
}
