//! The planning loop of [`App`]: when to plan (periodic, skipped when no
//! node's inputs left the deadband; at once on triggers), one planning
//! round (node views → planner → publish, with per-stage metrics), and the
//! lower-priority thread plans run on.

use super::*;

impl App {
    /// Plans once and publishes every node's table. Returns how many tables
    /// got a new version.
    ///
    /// A weight change while this runs supersedes it: the plan stops at its
    /// next check, publishes nothing more and leaves the hysteresis state as
    /// it was, and the planning loop starts the plan with the new weights at
    /// once instead of after this one.
    pub fn plan_once(&self) -> usize {
        let started = Instant::now();
        let now = now_ms();
        let generation = self.weights_generation.load(Ordering::Relaxed);
        self.planned_epoch
            .store(self.config.limits.probe_epoch(now), Ordering::Relaxed);
        let superseded = || self.weights_generation.load(Ordering::Relaxed) != generation;
        let ws = self.weights();
        // Taken, not cloned (a map per route); the plan puts its own back.
        let previous =
            std::mem::take(&mut *self.previous.lock().unwrap_or_else(|e| e.into_inner()));
        let previous_backups = std::mem::take(
            &mut *self
                .previous_backups
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let nodes = self.registry.planning_views(&self.input_rules());
        let views_done = started.elapsed();
        let input = PlanInput {
            now_ms: now,
            weights: ws.weights,
            weights_version: ws.version,
            ranges: self.config.ranges,
            stability: self.config.stability,
            limits: self.config.limits,
            report_interval_ms: self.report_interval_ms(),
            table_ttl_s: self.config.table_ttl_s,
            nodes,
            previous,
            probe_key: self.probe_key.clone(),
            previous_backups,
        };
        // Same result as `planner::plan`; the per-node stages use the cores.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let Some(plan) = planner::plan_cancellable(&input, threads, &superseded) else {
            *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = input.previous;
            *self
                .previous_backups
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = input.previous_backups;
            self.metrics.plans_superseded.inc();
            return 0;
        };
        let plan_done = started.elapsed();
        if let Some(r) = &self.recorder {
            // The input moves to the trace writer; decisions are copied
            // before the tables are published.
            r.plan(now, plan_done, input, &plan);
        }
        *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = plan.primaries;
        *self
            .previous_backups
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = plan.backups;
        // Tables already out when a weight change supersedes this plan stay
        // valid (a complete plan under the old weights); the rest would be
        // replaced at once anyway.
        let published =
            self.publisher
                .publish_plan(plan.tables.into_values().collect(), now, &superseded);
        if published.stopped {
            self.metrics.plans_superseded.inc();
        }
        self.metrics.plans.inc();
        let took = started.elapsed();
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
            new_versions = published.new_versions,
            views_ms = views * 1e3,
            plan_ms = plan * 1e3,
            publish_ms = publish * 1e3,
            "plan published"
        );
        published.new_versions
    }

    /// Whether a periodic replan could change anything: some node's inputs
    /// left the deadband (`plan_inputs`), or a new probe rotation epoch
    /// began. Otherwise the plan would reproduce the tables in force.
    fn periodic_plan_due(&self) -> bool {
        self.config.limits.probe_epoch(now_ms()) != self.planned_epoch.load(Ordering::Relaxed)
            || self.registry.inputs_moved(&self.input_rules())
    }

    /// How telemetry becomes planner input (`plan_inputs`).
    fn input_rules(&self) -> crate::plan_inputs::Rules<'_> {
        crate::plan_inputs::Rules {
            band: &self.config.deadband,
            ranges: &self.config.ranges,
            min_path_samples: self.config.limits.min_path_samples,
        }
    }

    /// The planning loop: periodic, and immediate on triggers (down, alert,
    /// drain, join, weights). The periodic replan waits at least the
    /// configured interval and at least twice the last plan's duration, so
    /// planning never takes more than a third of a core in steady state
    /// however large the cluster, and is skipped while no node's inputs
    /// moved beyond the deadband; triggered replans are never delayed.
    ///
    /// Plans run on their own thread (`PlanThread`) at a lower CPU
    /// priority than everything else, so that when the machine is short of
    /// CPU the reports, ACKs and route pushes go first and the plans take
    /// longer, instead of late reports turning into false `down` states and
    /// the replans those trigger.
    pub async fn run_planner(self: Arc<Self>) {
        let interval = Duration::from_millis(u64::from(self.config.replan_interval_ms));
        let mut next_periodic = tokio::time::Instant::now() + interval;
        let plans = match PlanThread::start(self.clone()) {
            Ok(plans) => plans,
            Err(e) => {
                warn!("cannot start the planning thread: {e}; no plans will be made");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next_periodic) => {
                    if !self.periodic_plan_due() {
                        self.metrics.plans_skipped.inc();
                        next_periodic = tokio::time::Instant::now() + interval;
                        continue;
                    }
                }
                _ = self.replan.notified() => {
                    // Debounce a burst of triggers into one plan; a weight
                    // change (one operator action) plans at once.
                    if !self.replan_now.swap(false, Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            let started = tokio::time::Instant::now();
            if !plans.plan().await {
                warn!("the planning thread has stopped; no more plans");
                return;
            }
            let took = started.elapsed();
            next_periodic = tokio::time::Instant::now() + interval.max(took * 2);
        }
    }
}

/// How much lower than the rest of the scheduler the planning thread runs
/// (a nice increment; the planner's helper threads inherit it).
const PLAN_NICE: i32 = 10;

/// The thread that runs [`App::plan_once`], one plan at a time, on request
/// (each request carries the sender that says the plan is done). It ends
/// when the `PlanThread` is dropped.
struct PlanThread {
    requests: std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
}

impl PlanThread {
    fn start(app: Arc<App>) -> std::io::Result<Self> {
        let (requests, rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
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
                for done in rx {
                    let plan = std::panic::AssertUnwindSafe(|| app.plan_once());
                    if std::panic::catch_unwind(plan).is_err() {
                        // A planner bug: keep the last tables, plan again next time.
                        warn!("a plan panicked; the tables in force stay");
                    }
                    let _ = done.send(());
                }
            })?;
        Ok(PlanThread { requests })
    }

    /// Runs one plan; `false` if the thread is gone.
    async fn plan(&self) -> bool {
        let (done, finished) = tokio::sync::oneshot::channel();
        self.requests.send(done).is_ok() && finished.await.is_ok()
    }
}
