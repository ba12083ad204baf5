//! Recording (`--record DIR`): the scheduler's inputs and decisions as
//! rotating JSON-lines trace files, and a pure [`replay()`] of them.
//!
//! Inputs are agent reports, node events (connect, disconnect, up, suspect,
//! down, draining, drain), alerts, weight changes and resolve requests with
//! their answers; decisions are plans: everything the planner was given
//! (enough to re-run it bit-exactly) and every node's resulting upstream and
//! probe choices. The format is described in [`format`](mod@format) and
//! `docs/simulator-traces.md`.
//!
//! Cost: callers hold an `Option<Recorder>`; with recording off nothing
//! happens. With it on, a caller only builds a small owned record and
//! `try_send`s it into a bounded queue; one writer thread serialises and
//! writes. A full queue drops the record and counts
//! `vantage_scheduler_record_dropped_total` — recording never slows ingest
//! or planning. The writer flushes whenever the queue is empty (so a killed
//! scheduler loses at most a partial last line), fsyncs on rotation, and
//! keeps the newest `max_files` files.

pub mod format;

pub use format::Line;

use base64::Engine;
use format::{AlertLine, Header, NodeEvent, NodeInfoLine, ReportLine};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};
use tracing::{info, warn};
use vantage_proto::v1::Report;
use vantage_shared::score::Weights;

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
            "Trace records dropped because the writer queue was full",
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
    Line(Box<format::Line>),
    /// Stop after writing what came before ([`Recorder::close`]).
    Close,
}

/// Handle to the trace writer. Cheap calls, never blocking.
#[derive(Debug)]
pub struct Recorder {
    tx: SyncSender<Entry>,
    metrics: RecordMetrics,
    plan_seq: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entry")
    }
}

/// Trace file name for sequence number `seq`.
pub fn file_name(seq: u64) -> String {
    format!("trace-{seq:08}.jsonl")
}

/// The sequence number of a trace file name, if it is one.
pub fn file_seq(name: &str) -> Option<u64> {
    name.strip_prefix("trace-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// Trace files in `dir`, oldest first.
pub fn trace_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            file_seq(name.to_str()?).map(|s| (s, e.path()))
        })
        .collect();
    v.sort();
    Ok(v)
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
        let mut writer = Writer {
            dir: dir.to_owned(),
            limits,
            scheduler_id: scheduler_id.to_owned(),
            weights,
            next_seq,
            open: None,
            metrics: metrics.clone(),
            failed_at: None,
        };
        let thread = std::thread::Builder::new()
            .name("trace-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(RecordError::Thread)?;
        info!(dir = %dir.display(), first_file = file_name(next_seq), "recording inputs and decisions");
        Ok(Self {
            tx,
            metrics,
            plan_seq: AtomicU64::new(0),
            thread: Mutex::new(Some(thread)),
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn send(&self, e: Entry) {
        match self.tx.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.dropped.inc();
            }
        }
    }

    /// An accepted report (before it is applied).
    pub fn report(&self, at_ms: i64, node_id: &str, r: &Report) {
        self.send(Entry::Report {
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
        self.send(Entry::Line(Box::new(format::Line::Node(NodeEvent {
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
        self.send(Entry::Line(Box::new(format::Line::Alert(AlertLine {
            at_ms,
            node_id: node_id.to_owned(),
            kind: kind.to_owned(),
            subject: a.subject.clone(),
            detail: a.detail.clone(),
            value: a.value,
        }))));
    }

    pub fn weights(&self, at_ms: i64, ws: &crate::store::WeightSet) {
        self.send(Entry::Line(Box::new(format::Line::Weights(
            format::WeightsLine {
                at_ms,
                version: ws.version,
                weights: ws.weights,
                actor: ws.actor.clone(),
                comment: ws.comment.clone(),
            },
        ))));
    }

    /// A viewer resolve request and its answer (any JSON).
    pub fn resolve(&self, at_ms: i64, request: serde_json::Value, answer: serde_json::Value) {
        self.send(Entry::Line(Box::new(format::Line::Resolve(
            format::ResolveLine {
                at_ms,
                request,
                answer,
            },
        ))));
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

struct OpenFile {
    w: BufWriter<File>,
    path: PathBuf,
    bytes: u64,
    opened: Instant,
}

struct Writer {
    dir: PathBuf,
    limits: RecordLimits,
    scheduler_id: String,
    weights: (u64, Weights),
    next_seq: u64,
    open: Option<OpenFile>,
    metrics: RecordMetrics,
    failed_at: Option<Instant>,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Entry>) {
        loop {
            // Wake up now and then so a quiet scheduler still rotates by age.
            let first = match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(e) => Some(e),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut next = first;
            while let Some(e) = next {
                if matches!(e, Entry::Close) {
                    self.finish();
                    return;
                }
                self.write(e);
                next = rx.try_recv().ok();
            }
            self.rotate_if_due();
            if let Some(f) = &mut self.open
                && let Err(e) = f.w.flush()
            {
                self.fail(&e);
            }
        }
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(mut f) = self.open.take()
            && let Err(e) = f.w.flush().and_then(|()| f.w.get_ref().sync_all())
        {
            self.fail(&e);
        }
    }

    fn fail(&mut self, e: &std::io::Error) {
        self.metrics.errors.inc();
        if self.open.is_some() || self.failed_at.is_none() {
            warn!(dir = %self.dir.display(), "trace write failed: {e}; opening a new file later");
        }
        self.open = None;
        self.failed_at = Some(Instant::now());
    }

    fn rotate_if_due(&mut self) {
        let due = self.open.as_ref().is_some_and(|f| {
            f.bytes >= self.limits.max_file_mib * 1024 * 1024
                || f.opened.elapsed() >= Duration::from_secs(self.limits.max_file_age_s)
        });
        if due {
            self.finish();
        }
    }

    /// Opens the next file (header first) and deletes the oldest beyond
    /// `max_files`.
    fn open_next(&mut self, at_ms: i64) -> std::io::Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = self.dir.join(file_name(seq));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        self.metrics.files.inc();
        self.open = Some(OpenFile {
            w: BufWriter::with_capacity(256 * 1024, file),
            path,
            bytes: 0,
            opened: Instant::now(),
        });
        let header = format::Line::Header(Header {
            at_ms,
            format: format::FORMAT.to_owned(),
            version: format::VERSION,
            seq,
            scheduler_id: self.scheduler_id.clone(),
            weights_version: self.weights.0,
            weights: self.weights.1,
        });
        self.put(&header)?;
        let files = trace_files(&self.dir)?;
        let excess = files.len().saturating_sub(self.limits.max_files);
        for (_, old) in files.into_iter().take(excess) {
            if self.open.as_ref().is_some_and(|f| f.path == old) {
                continue;
            }
            if let Err(e) = std::fs::remove_file(&old) {
                warn!(path = %old.display(), "cannot delete old trace file: {e}");
            }
        }
        Ok(())
    }

    fn put(&mut self, line: &format::Line) -> std::io::Result<()> {
        let Some(f) = &mut self.open else {
            return Ok(());
        };
        let mut buf = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        buf.push(b'\n');
        f.w.write_all(&buf)?;
        f.bytes += buf.len() as u64;
        self.metrics.bytes.inc_by(buf.len() as u64);
        self.metrics.written.inc();
        Ok(())
    }

    fn write(&mut self, e: Entry) {
        let at_ms = match &e {
            Entry::Report { at_ms, .. } => *at_ms,
            Entry::Line(l) => l.at_ms(),
            Entry::Close => return,
        };
        self.rotate_if_due();
        if self.open.is_none() {
            // After a failure, try a new file at most once a second.
            if self
                .failed_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                self.metrics.errors.inc();
                return;
            }
            if let Err(err) = self.open_next(at_ms) {
                self.fail(&err);
                return;
            }
        }
        let line = match e {
            Entry::Report {
                at_ms,
                node_id,
                seq,
                pb,
            } => format::Line::Report(ReportLine {
                at_ms,
                node_id,
                seq,
                report_pb: base64::engine::general_purpose::STANDARD.encode(pb),
            }),
            Entry::Line(l) => {
                if let format::Line::Weights(w) = l.as_ref() {
                    self.weights = (w.version, w.weights);
                }
                *l
            }
            Entry::Close => return,
        };
        if let Err(err) = self.put(&line) {
            self.fail(&err);
        }
    }
}

impl format::Line {
    pub fn at_ms(&self) -> i64 {
        match self {
            format::Line::Header(h) => h.at_ms,
            format::Line::Report(r) => r.at_ms,
            format::Line::Node(n) => n.at_ms,
            format::Line::Alert(a) => a.at_ms,
            format::Line::Weights(w) => w.at_ms,
            format::Line::Resolve(r) => r.at_ms,
        }
    }
}
