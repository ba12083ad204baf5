//! The planning loop of [`App`]: every round offers the planning session
//! what the registry learned since the last round, steps it when a plan
//! is due (at once on triggers, within the replan interval when inputs
//! moved, on a new probe rotation epoch, for the periodic check from
//! scratch), announces the new table versions to the route streams, with
//! per-stage metrics, and hands each step to the recorder when recording;
//! rounds run on a lower-priority thread.

use super::*;
use vantage_plan::StepReport;
use vantage_plan::trace::StepInputs;

/// Rounds check for work at least this often (offers are cheap: only
/// nodes changed since the last round).
const ROUND_EVERY: Duration = Duration::from_millis(100);

impl App {
    /// One planning round: offers every node changed since the last round,
    /// steps the plan when something is due (or `force`), and announces
    /// new versions. Returns the step's report when it stepped.
    pub fn plan_round(&self, force: bool) -> Option<StepReport> {
        // Several replicas: only the leader plans (followers serve its
        // committed tables).
        if !self.cluster.is_leader() {
            return None;
        }
        let started = Instant::now();
        let now = now_ms();
        let views = self.registry.changed_views();
        let settings = self
            .pending_settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let term = self
            .pending_term
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let mut plan = self.plan.blocking_write();
        if let Some(settings) = settings {
            plan.set_settings(settings);
        }
        if let Some(term) = term {
            plan.set_term(term);
        }
        for v in views {
            plan.offer(v);
        }
        if !(force || plan.due(now)) {
            drop(plan);
            self.metrics.plans_skipped.inc();
            return None;
        }
        // Recording: what the step takes, read before it (counted with
        // the views), and what it decided, read after it (with publishing).
        let recording = self.recorder.as_ref().map(|r| {
            let ticket = r.begin_step();
            (r, ticket, StepInputs::capture(&plan, ticket.whole))
        });
        let views_done = started.elapsed();
        let report = plan.step(now);
        let plan_done = started.elapsed();
        if let Some((r, ticket, inputs)) = recording {
            let took = u64::try_from((plan_done - views_done).as_micros()).unwrap_or(u64::MAX);
            r.step(ticket, inputs.complete(&plan, &report, now, took));
        }
        // Several replicas: the new versions are committed (fenced by the
        // lease) before any route stream sees them.
        if self.cluster.replicated() {
            let tables: Vec<crate::cluster::StoredTable> = report
                .changed
                .iter()
                .filter_map(|id| {
                    let t = plan.table(id)?;
                    Some(crate::cluster::StoredTable::new(t, plan.content_hash(id)))
                })
                .collect();
            drop(plan);
            self.cluster.queue_tables(tables);
            self.after_step(&report, started, views_done, plan_done);
            return Some(report);
        }
        // After a full step every node's version is announced: at start-up
        // a table that kept its stored version has a stream waiting for it
        // too (an agent holding an older one gets it then).
        let versions: Vec<(Arc<str>, u64, u64)> = if report.full {
            plan.node_ids()
                .map(|id| (Arc::from(id), plan.version(id), plan.content_hash(id)))
                .collect()
        } else {
            report
                .changed
                .iter()
                .map(|id| (id.clone(), plan.version(id), plan.content_hash(id)))
                .collect()
        };
        drop(plan);
        for (id, version, hash) in &versions {
            self.publisher.published(id, *version, *hash, now);
        }
        self.after_step(&report, started, views_done, plan_done);
        Some(report)
    }

    /// Metrics and a debug line of a step.
    fn after_step(
        &self,
        report: &StepReport,
        started: Instant,
        views_done: Duration,
        plan_done: Duration,
    ) {
        let took = started.elapsed();
        self.metrics.plans.inc();
        self.metrics
            .plan_steps
            .get_or_create(&crate::metrics::KindLabel {
                kind: if report.full { "full" } else { "incremental" }.to_owned(),
            })
            .inc();
        self.metrics
            .plan_routes_changed
            .inc_by(report.routes_changed as u64);
        if let Some(drift) = report.drift.filter(|&d| d > 0) {
            self.metrics.plan_drift.inc_by(drift as u64);
            warn!(
                routes = drift,
                "the plan from scratch differs from the incremental state; it replaces it (a planner bug: please report)"
            );
        }
        for c in &report.conflicts {
            self.metrics.origin_conflicts.inc();
            warn!(
                stream = %c.stream,
                origin = c.origin,
                refused = c.refused,
                "origin conflict: {} is published on {} too; {} published it first and stays its \
                 origin, {}'s publisher is refused",
                c.stream,
                c.refused,
                c.origin,
                c.refused
            );
            self.event(
                &c.refused,
                "origin_conflict",
                &format!(
                    "{} published here while {} is its origin (first publisher); refused",
                    c.stream, c.origin
                ),
            );
        }
        self.metrics.plan_duration.observe(took.as_secs_f64());
        let [views, plan, publish] =
            [views_done, plan_done - views_done, took - plan_done].map(|d| d.as_secs_f64());
        for (stage, secs) in [("views", views), ("plan", plan), ("publish", publish)] {
            self.metrics
                .plan_stage_duration
                .get_or_create(&crate::metrics::StageLabel { stage })
                .observe(secs);
        }
        debug!(
            full = report.full,
            new_versions = report.changed.len(),
            routes_changed = report.routes_changed,
            views_ms = views * 1e3,
            plan_ms = plan * 1e3,
            publish_ms = publish * 1e3,
            "plan step"
        );
    }

    /// The planning loop: a round every 100 ms (`ROUND_EVERY`) and on every
    /// trigger (down, alert, drain, join, weights; debounced by 10 ms except
    /// for a weight change).
    ///
    /// Rounds run on their own thread (`PlanThread`) at a lower CPU
    /// priority than everything else, so that when the machine is short of
    /// CPU the reports, ACKs and route pushes go first and the plans take
    /// longer, instead of late reports turning into false `down` states and
    /// the replans those trigger.
    pub async fn run_planner(self: Arc<Self>) {
        let plans = match PlanThread::start(self.clone()) {
            Ok(plans) => plans,
            Err(e) => {
                warn!("cannot start the planning thread: {e}; no plans will be made");
                return;
            }
        };
        loop {
            let force = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(ROUND_EVERY) => false,
                _ = self.replan.notified() => {
                    // Debounce a burst of triggers into one plan; a weight
                    // change (one operator action) plans at once.
                    if !self.replan_now.swap(false, Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    true
                }
            };
            if !plans.round(force).await {
                warn!("the planning thread has stopped; no more plans");
                return;
            }
        }
    }
}

/// How much lower than the rest of the scheduler the planning thread runs
/// (a nice increment; the planner's helper threads inherit it).
const PLAN_NICE: i32 = 10;

/// The thread that runs [`App::plan_round`], one at a time, on request
/// (each request carries whether to force a step and the sender that says
/// the round is done). It ends when the `PlanThread` is dropped.
struct PlanThread {
    requests: std::sync::mpsc::Sender<(bool, tokio::sync::oneshot::Sender<()>)>,
}

impl PlanThread {
    fn start(app: Arc<App>) -> std::io::Result<Self> {
        let (requests, rx) = std::sync::mpsc::channel::<(bool, tokio::sync::oneshot::Sender<()>)>();
        // Inside the runtime's context, as a blocking task would be.
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("planner".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                // Linux: the nice value is per thread, and threads created
                // from here start with it.
                if let Err(e) = rustix::process::nice(PLAN_NICE) {
                    warn!("cannot lower the planning thread's priority: {e}");
                }
                for (force, done) in rx {
                    let round = std::panic::AssertUnwindSafe(|| app.plan_round(force));
                    if std::panic::catch_unwind(round).is_err() {
                        // A planner bug: keep the last tables, plan again next time.
                        warn!("a plan panicked; the tables in force stay");
                    }
                    let _ = done.send(());
                }
            })?;
        Ok(PlanThread { requests })
    }

    /// Runs one round; `false` if the thread is gone.
    async fn round(&self, force: bool) -> bool {
        let (done, finished) = tokio::sync::oneshot::channel();
        self.requests.send((force, done)).is_ok() && finished.await.is_ok()
    }
}
