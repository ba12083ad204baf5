//! The running scheduler: every component in one place, and the two loops
//! that own time — liveness (up → suspect → down) and planning.
//!
//! Planning runs immediately (debounced by 10 ms) when triggered by a node
//! going down, an alert, a drain, a new node or a weight change (which also
//! supersedes a plan in progress), and on a short period when some node's
//! inputs moved beyond the deadband (`plan_inputs`).

use crate::auth::Auth;
use crate::config::Config;
use crate::metrics::{Metrics, StateLabel};
use crate::planner::{self, PlanInput};
use crate::publish::Publisher;
use crate::registry::{NodeEntry, NodeInfo, NodeState, Registry};
use crate::store::{EventRecord, Store, StoreError, WeightSet, WriteOp, WriteStats};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vantage_shared::clock::now_ms;
use vantage_shared::place::Coord;
use vantage_shared::score::Weights;

/// Least silence before a down node's telemetry session is closed.
const SESSION_GRACE_MS: i64 = 5_000;

#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub auth: Auth,
    pub publisher: Publisher,
    pub store: Store,
    pub metrics: Metrics,
    pub prometheus: prometheus_client::registry::Registry,
    pub shutdown: CancellationToken,
    /// Viewer routing (`/v1/resolve`, `/play`).
    pub resolver: crate::resolve::Resolver,
    /// Trace writer (`--record`); `None` when recording is off.
    pub recorder: Option<crate::record::Recorder>,
    weights: RwLock<WeightSet>,
    replan: Notify,
    /// Set with a trigger that must not wait for the debounce (weights).
    replan_now: AtomicBool,
    /// Probe rotation epoch of the last plan (a new epoch rotates the
    /// random probe targets, so it is due even when no input moved).
    planned_epoch: AtomicI64,
    /// Bumped by every weight change: a plan started under an older value
    /// is superseded and gives up (see [`App::plan_once`]).
    weights_generation: AtomicU64,
    previous: Mutex<BTreeMap<(String, String), String>>,
    /// Backups of the last plan: the next plan's backup hysteresis.
    previous_backups: Mutex<planner::Backups>,
    ready: AtomicBool,
    /// Cluster secret for probe authenticators (DESIGN §4), shared by all
    /// replicas through the store and sent to agents in every table.
    probe_key: Vec<u8>,
}

/// Partial weights for `PUT /v1/weights`: missing keys keep their value.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsPatch {
    pub latency: Option<f64>,
    pub loss: Option<f64>,
    pub buffer: Option<f64>,
    pub load: Option<f64>,
    pub distance: Option<f64>,
    pub comment: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsUpdateError {
    #[error("no weights given")]
    Empty,
    #[error("{0}")]
    Invalid(#[from] vantage_shared::score::WeightsError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl WeightsPatch {
    pub fn is_empty(&self) -> bool {
        self.latency.is_none()
            && self.loss.is_none()
            && self.buffer.is_none()
            && self.load.is_none()
            && self.distance.is_none()
    }

    pub fn apply(&self, w: Weights) -> Weights {
        Weights {
            latency: self.latency.unwrap_or(w.latency),
            loss: self.loss.unwrap_or(w.loss),
            buffer: self.buffer.unwrap_or(w.buffer),
            load: self.load.unwrap_or(w.load),
            distance: self.distance.unwrap_or(w.distance),
        }
    }
}

impl App {
    /// Loads persisted state (weights, nodes, route versions) from the store.
    pub async fn new(
        config: Config,
        store: Store,
        auth_mode: crate::auth::Mode,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let mut prometheus = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut prometheus);
        let now = now_ms();
        let weights = match store.latest_weights().await? {
            Some(ws) => match config.file_weights {
                Some(fw) if fw != ws.weights => {
                    info!(
                        version = ws.version + 1,
                        "weights in the config file differ from the stored ones; recording them"
                    );
                    store
                        .insert_weights(&fw, "config-file", "from config file", now)
                        .await?
                }
                _ => ws,
            },
            None => {
                let w = config.file_weights.unwrap_or_default();
                store
                    .insert_weights(&w, "default", "initial weights", now)
                    .await?
            }
        };
        metrics.weights_version.set(weights.version as i64);
        let recorder = config.record_dir.as_ref().and_then(|dir| {
            let m = crate::record::RecordMetrics::register(&mut prometheus);
            crate::record::Recorder::start(
                dir,
                config.record,
                &config.scheduler_id,
                (weights.version, weights.weights),
                m,
            )
            .map_err(|e| warn!("recording is OFF: {e}"))
            .ok()
        });
        let resolver = crate::resolve::Resolver::new(
            config.resolve.clone(),
            config.geoip.clone(),
            config.limits.default_bitrate_kbps,
            crate::resolve::ResolveMetrics::new(&mut prometheus),
        );
        let registry = Arc::new(Registry::new());
        for rec in store.load_nodes().await? {
            let mut e = NodeEntry::new(
                rec.id.clone(),
                NodeInfo {
                    region: rec.region,
                    coord: Coord::new(rec.lat, rec.lon),
                    capacity_mbps: rec.capacity_mbps,
                    public_url: rec.public_url,
                    probe_addr: rec.probe_addr,
                    agent_version: String::new(),
                    static_origins: BTreeMap::new(),
                },
                rec.enrolled_at_ms,
            );
            e.credential_hash = rec.credential_hash;
            e.draining = rec.drained;
            registry.insert(e);
        }
        let publisher = Publisher::new(store.clone(), store.route_heads().await?);
        let key_hex = store
            .cluster_setting("probe_key", &hex::encode(rand::random::<[u8; 32]>()), now)
            .await?;
        let probe_key = hex::decode(key_hex.trim()).unwrap_or_else(|_| {
            warn!("cluster setting probe_key is not hex; using its bytes");
            key_hex.into_bytes()
        });
        info!(
            nodes = registry.len(),
            weights_version = weights.version,
            "state loaded"
        );
        Ok(Arc::new(Self {
            auth: crate::auth::Auth::new(auth_mode, registry.clone()),
            registry,
            publisher,
            store,
            metrics,
            prometheus,
            shutdown,
            resolver,
            recorder,
            weights: RwLock::new(weights),
            replan: Notify::new(),
            replan_now: AtomicBool::new(false),
            weights_generation: AtomicU64::new(0),
            planned_epoch: AtomicI64::new(i64::MIN),
            previous: Mutex::new(BTreeMap::new()),
            previous_backups: Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            probe_key,
            config,
        }))
    }

    pub fn report_interval_ms(&self) -> u32 {
        self.config.report_interval_ms
    }

    pub fn weights(&self) -> WeightSet {
        self.weights
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.shutdown.is_cancelled()
    }

    /// Applies a weight change: validated, persisted, then in force and replanned.
    pub async fn update_weights(
        &self,
        patch: WeightsPatch,
        actor: &str,
    ) -> Result<WeightSet, WeightsUpdateError> {
        if patch.is_empty() {
            return Err(WeightsUpdateError::Empty);
        }
        let next = patch.apply(self.weights().weights);
        next.validate()?;
        let ws = self
            .store
            .insert_weights(
                &next,
                actor,
                patch.comment.as_deref().unwrap_or(""),
                now_ms(),
            )
            .await?;
        *self.weights.write().unwrap_or_else(|e| e.into_inner()) = ws.clone();
        self.metrics.weights_version.set(ws.version as i64);
        self.metrics.weight_changes.inc();
        self.event("", "weights", &format!("version {} by {actor}", ws.version));
        if let Some(r) = &self.recorder {
            r.weights(now_ms(), &ws);
        }
        info!(version = ws.version, ?next, actor, "weights changed");
        self.weights_generation.fetch_add(1, Ordering::Relaxed);
        self.replan_now.store(true, Ordering::Relaxed);
        self.trigger_replan();
        Ok(ws)
    }

    /// Re-reads `[weights]` from the config file (SIGHUP) and, when they
    /// differ from the weights in force, records them as a new version.
    pub async fn reload_file_weights(&self) {
        let Some(path) = &self.config.config_path else {
            info!("SIGHUP: no config file to reload");
            return;
        };
        let file = match crate::config::FileConfig::load(path) {
            Ok(f) => f,
            Err(e) => {
                warn!("SIGHUP: config not reloaded: {e}");
                return;
            }
        };
        let Some(w) = file.weights else {
            info!("SIGHUP: config file has no [weights]");
            return;
        };
        if w == self.weights().weights {
            info!("SIGHUP: weights unchanged");
            return;
        }
        let patch = WeightsPatch {
            latency: Some(w.latency),
            loss: Some(w.loss),
            buffer: Some(w.buffer),
            load: Some(w.load),
            distance: Some(w.distance),
            comment: Some(format!("reloaded from {}", path.display())),
        };
        if let Err(e) = self.update_weights(patch, "config-file").await {
            warn!("SIGHUP: weights from the config file refused: {e}");
        }
    }

    /// Records an operator-visible event (store, batched) and logs it.
    pub fn event(&self, node_id: &str, kind: &str, detail: &str) {
        debug!(node_id, kind, detail, "event");
        self.store.record(WriteOp::Event(EventRecord {
            at_ms: now_ms(),
            node_id: node_id.to_owned(),
            kind: kind.to_owned(),
            detail: detail.to_owned(),
        }));
    }

    pub fn trigger_replan(&self) {
        self.replan.notify_one();
    }

    /// Marks a node draining (API or agent) and replans.
    pub fn drain(&self, node_id: &str, by: &str) -> Option<NodeState> {
        let now = now_ms();
        let state = self.registry.update(node_id, |e| {
            e.draining = true;
            if e.state != NodeState::Down {
                e.state = NodeState::Draining;
                e.state_since_ms = now;
            }
            e.state
        })?;
        self.persist_node(node_id);
        // A drained edge must not be handed out even once more.
        self.resolver.refresh(&self.registry, now);
        self.event(node_id, "drain", by);
        if let Some(r) = &self.recorder {
            r.node(now, node_id, "drain", by, None);
        }
        self.trigger_replan();
        Some(state)
    }

    /// Queues the node's current facts for the store.
    pub fn persist_node(&self, node_id: &str) {
        if let Some(rec) = self.registry.with(node_id, NodeEntry::to_record) {
            self.store.record(WriteOp::NodeInfo(rec));
        }
    }

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
            .store(self.probe_epoch(now), Ordering::Relaxed);
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
            r.plan(now, started.elapsed(), input, &plan);
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
        for (stage, d) in [
            ("views", views_done),
            ("plan", plan_done - views_done),
            ("publish", took - plan_done),
        ] {
            self.metrics
                .plan_stage_duration
                .get_or_create(&crate::metrics::StageLabel { stage })
                .observe(d.as_secs_f64());
        }
        debug!(
            new_versions = published.new_versions,
            views_ms = views_done.as_secs_f64() * 1e3,
            plan_ms = (plan_done - views_done).as_secs_f64() * 1e3,
            publish_ms = (took - plan_done).as_secs_f64() * 1e3,
            "plan published"
        );
        published.new_versions
    }

    fn probe_epoch(&self, now_ms: i64) -> i64 {
        now_ms.div_euclid(self.config.limits.probe_rotation_ms.max(1))
    }

    /// Whether a periodic replan could change anything: some node's inputs
    /// left the deadband (`plan_inputs`), or a new probe rotation epoch
    /// began. Otherwise the plan would reproduce the tables in force.
    fn periodic_plan_due(&self) -> bool {
        self.probe_epoch(now_ms()) != self.planned_epoch.load(Ordering::Relaxed)
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
            if plans.plan().await.is_none() {
                warn!("the planning thread has stopped; no more plans");
                return;
            }
            let took = started.elapsed();
            next_periodic = tokio::time::Instant::now() + interval.max(took * 2);
        }
    }

    /// The liveness loop: re-evaluates node states every 50 ms.
    pub async fn run_liveness(self: Arc<Self>) {
        const TICK: Duration = Duration::from_millis(50);
        /// Gauges and store counters are refreshed once a second (or at once
        /// after a transition), not on every 50 ms liveness tick.
        const GAUGE_EVERY: u32 = 20;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_stats = self.store.write_stats();
        let mut ticks: u32 = 0;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let changes = self
                .registry
                .tick(now_ms(), i64::from(self.report_interval_ms()));
            let transitions = !changes.is_empty();
            if transitions {
                self.resolver.invalidate();
            }
            self.resolver.maybe_refresh(&self.registry, now_ms());
            let mut replan = false;
            for (id, from, to) in changes {
                replan |= self.on_transition(&id, from, to);
            }
            if replan {
                self.trigger_replan();
            }
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(GAUGE_EVERY) {
                self.close_silent_sessions();
            }
            if transitions || ticks.is_multiple_of(GAUGE_EVERY) {
                last_stats = self.refresh_gauges(last_stats);
            }
        }
    }

    /// Logs, counts and records a node state change (a down node's session
    /// is closed later, see [`App::close_silent_sessions`]). Returns whether
    /// the change needs a replan.
    fn on_transition(&self, id: &str, from: NodeState, to: NodeState) -> bool {
        info!(
            node_id = id,
            from = from.label(),
            to = to.label(),
            "node state changed"
        );
        self.metrics
            .node_transitions
            .get_or_create(&StateLabel {
                state: to.label().to_owned(),
            })
            .inc();
        self.event(id, to.label(), &format!("from {}", from.label()));
        if let Some(r) = &self.recorder {
            r.node(now_ms(), id, to.label(), from.label(), None);
        }
        matches!(to, NodeState::Down | NodeState::Up | NodeState::Draining)
    }

    /// A down node's session that stays silent is dead or stuck: closed so
    /// `connected` is truthful and a live agent reconnects. Not at once when
    /// the node goes down (3 report intervals): at short intervals a busy
    /// moment would otherwise turn into thousands of reconnects with full
    /// handshakes, making the scheduler busier still. A node whose reports
    /// resume within the grace is simply up again.
    fn close_silent_sessions(&self) {
        let grace = (3 * i64::from(self.report_interval_ms())).max(SESSION_GRACE_MS);
        for c in self.registry.silent_sessions(now_ms(), grace) {
            c.close(
                vantage_shared::close::CloseCode::ReportTimeout,
                "no reports: the node is down",
            );
        }
    }

    /// Sets the per-state node gauges and adds the store writer's progress
    /// since `last` to its counters; returns the new baseline.
    fn refresh_gauges(&self, last: WriteStats) -> WriteStats {
        for (state, n) in self.registry.state_counts() {
            self.metrics
                .nodes
                .get_or_create(&StateLabel {
                    state: state.to_owned(),
                })
                .set(n);
        }
        let stats = self.store.write_stats();
        self.metrics
            .store_ops
            .inc_by(stats.ops_written.saturating_sub(last.ops_written));
        self.metrics
            .store_batches
            .inc_by(stats.batches.saturating_sub(last.batches));
        self.metrics
            .store_dropped
            .inc_by(stats.ops_dropped.saturating_sub(last.ops_dropped));
        stats
    }
}

/// How much lower than the rest of the scheduler the planning thread runs
/// (a nice increment; the planner's helper threads inherit it).
const PLAN_NICE: i32 = 10;

/// The thread that runs [`App::plan_once`], one plan at a time, on request.
/// It ends when the `PlanThread` is dropped.
struct PlanThread {
    requests: std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<usize>>,
}

impl PlanThread {
    fn start(app: Arc<App>) -> std::io::Result<Self> {
        let (requests, rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<usize>>();
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
                for reply in rx {
                    let app = app.clone();
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                        app.plan_once()
                    })) {
                        Ok(changed) => {
                            let _ = reply.send(changed);
                        }
                        // A planner bug: log it, keep the last tables, plan again next time.
                        Err(_) => warn!("a plan panicked; the tables in force stay"),
                    }
                }
            })?;
        Ok(PlanThread { requests })
    }

    /// Runs one plan; how many tables got a new version, or `None` if the
    /// thread is gone.
    async fn plan(&self) -> Option<usize> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests.send(tx).ok()?;
        match rx.await {
            Ok(changed) => Some(changed),
            // The plan panicked (logged by the thread): the loop goes on.
            Err(_) => Some(0),
        }
    }
}
