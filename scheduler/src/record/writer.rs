//! The trace writer thread: serialises what callers queued, rotates files
//! by size and age, keeps the newest `max_files`.
//!
//! Step lines are chained: a line that holds only what moved since the
//! step before is written only right after that step's line in the same
//! file. A new file therefore starts at a self-contained (whole) step:
//! when a file is due for rotation the writer asks the planning loop for a
//! whole step (`need_whole`) and rotates when it arrives — or after
//! [`ROTATE_GRACE`] without one (a quiet scheduler: the request stands,
//! so the next step is whole). A write failure asks for a whole step too.
//! A step line that cannot follow its predecessor in the file anyway (a
//! race of these) is dropped and counted, and a whole step is asked for.

use super::{Entry, RecordLimits, RecordMetrics};
use base64::Engine;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tracing::warn;
use vantage_plan::trace::format::{Header, ReportLine, SettingsLine};
use vantage_plan::trace::{self, Line, StepCapture};
use vantage_shared::score::Weights;

/// How long a file due for rotation waits for a whole step.
pub(super) const ROTATE_GRACE: Duration = Duration::from_secs(10);

struct OpenFile {
    w: BufWriter<File>,
    path: PathBuf,
    bytes: u64,
    opened: Instant,
    /// The last step line written to this file.
    last_step: Option<u64>,
    /// Its settings (the next line writes `null` when they are the same).
    settings: Option<SettingsLine>,
    /// When the file became due for rotation.
    due_since: Option<Instant>,
}

pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) limits: RecordLimits,
    pub(super) scheduler_id: String,
    pub(super) weights: (u64, Weights),
    pub(super) next_seq: u64,
    pub(super) metrics: RecordMetrics,
    /// Shared with the [`Recorder`](super::Recorder): the next step should
    /// be whole.
    pub(super) need_whole: Arc<AtomicBool>,
    open: Option<OpenFile>,
    failed_at: Option<Instant>,
}

impl Writer {
    pub(super) fn new(
        dir: PathBuf,
        limits: RecordLimits,
        scheduler_id: String,
        weights: (u64, Weights),
        next_seq: u64,
        metrics: RecordMetrics,
        need_whole: Arc<AtomicBool>,
    ) -> Self {
        Writer {
            dir,
            limits,
            scheduler_id,
            weights,
            next_seq,
            metrics,
            need_whole,
            open: None,
            failed_at: None,
        }
    }

    pub(super) fn run(&mut self, rx: Receiver<Entry>) {
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
            self.rotate_if_due(false);
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

    /// A write failed: the file is given up (lines are lost, so the next
    /// file needs a whole step).
    fn fail(&mut self, e: &std::io::Error) {
        self.metrics.errors.inc();
        self.need_whole.store(true, Ordering::Relaxed);
        if self.open.is_some() || self.failed_at.is_none() {
            warn!(dir = %self.dir.display(), "trace write failed: {e}; opening a new file later");
        }
        self.open = None;
        self.failed_at = Some(Instant::now());
    }

    /// Closes the file when it is due (size or age) and `whole_step` (the
    /// entry at hand starts the next file) or it waited long enough; asks
    /// for a whole step otherwise.
    fn rotate_if_due(&mut self, whole_step: bool) {
        let max_bytes = self.limits.max_file_mib * 1024 * 1024;
        let max_age = Duration::from_secs(self.limits.max_file_age_s);
        let Some(f) = &mut self.open else { return };
        if f.bytes < max_bytes && f.opened.elapsed() < max_age {
            return;
        }
        let since = *f.due_since.get_or_insert_with(|| {
            self.need_whole.store(true, Ordering::Relaxed);
            Instant::now()
        });
        if whole_step || since.elapsed() >= ROTATE_GRACE {
            self.finish();
        }
    }

    /// Opens the next file (header first) and deletes the oldest beyond
    /// `max_files`.
    fn open_next(&mut self, at_ms: i64) -> std::io::Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = self.dir.join(trace::file_name(seq));
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
            last_step: None,
            settings: None,
            due_since: None,
        });
        let header = Line::Header(Header {
            at_ms,
            format: trace::format::FORMAT.to_owned(),
            version: trace::format::VERSION,
            seq,
            scheduler_id: self.scheduler_id.clone(),
            weights_version: self.weights.0,
            weights: self.weights.1,
        });
        self.put(&header)?;
        let files = trace::trace_files(&self.dir)?;
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

    fn put(&mut self, line: &Line) -> std::io::Result<()> {
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
        let (at_ms, whole_step) = match &e {
            Entry::Report { at_ms, .. } => (*at_ms, false),
            Entry::Line(l) => (l.at_ms(), false),
            Entry::Step { capture, .. } => (capture.at_ms, capture.is_whole()),
            Entry::Close => return,
        };
        self.rotate_if_due(whole_step);
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
            } => Line::Report(ReportLine {
                at_ms,
                node_id,
                seq,
                report_pb: base64::engine::general_purpose::STANDARD.encode(pb),
            }),
            Entry::Line(l) => {
                if let Line::Weights(w) = l.as_ref() {
                    self.weights = (w.version, w.weights);
                }
                *l
            }
            Entry::Step { seq, capture } => match self.step_line(seq, &capture) {
                Some(line) => line,
                None => return,
            },
            Entry::Close => return,
        };
        if let Err(err) = self.put(&line) {
            self.fail(&err);
        }
    }

    /// Step `seq`'s line for the open file, or `None` (dropped, counted,
    /// a whole step asked for) when it holds only what moved since a step
    /// this file does not have.
    fn step_line(&mut self, seq: u64, capture: &StepCapture) -> Option<Line> {
        let f = self.open.as_mut()?;
        let follows = f.last_step.is_some_and(|last| last + 1 == seq);
        if !capture.is_whole() && !follows {
            self.metrics.dropped.inc();
            self.need_whole.store(true, Ordering::Relaxed);
            return None;
        }
        f.last_step = Some(seq);
        Some(Line::Step(Box::new(capture.to_line(seq, &mut f.settings))))
    }
}
