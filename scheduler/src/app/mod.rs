//! The running scheduler: every component in one place, and the two loops
//! that own time — liveness (up → suspect → down) and planning.
//!
//! Planning is the `vantage-plan` session ([`PlanSession`]): every round
//! offers it what the registry learned, and steps it when something is due
//! — at once (debounced by 10 ms) on a node going down or coming back, an
//! alert, a drain, a new node or a weight change; within the replan
//! interval when some node's inputs moved beyond the deadband. The
//! planning loop and a planning round are in `planning`, the liveness loop
//! in `liveness`.

mod drops;
mod liveness;
mod planning;
mod replica;

pub use drops::SocketDrops;
pub(crate) use replica::entry_of;

use crate::auth::Auth;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::{Metrics, StateLabel};
use crate::publish::Publisher;
use crate::registry::{NodeEntry, NodeInfo, NodeState, Registry};
use crate::store::{EventRecord, Store, StoreError, WeightSet, WriteOp, WriteStats};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vantage_plan::{PlanSession, PlanSettings};
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
    /// The plan: every node's routes, probe targets and table versions.
    /// Written by the planning thread (`blocking_write`), read by route
    /// streams and the API without blocking an async worker.
    pub plan: tokio::sync::RwLock<PlanSession>,
    pub store: Store,
    pub metrics: Metrics,
    pub prometheus: prometheus_client::registry::Registry,
    pub shutdown: CancellationToken,
    /// Viewer routing (`/v1/resolve`, `/play`).
    pub resolver: crate::resolve::Resolver,
    /// Trace writer (`--record`); `None` when recording is off.
    pub recorder: Option<crate::record::Recorder>,
    /// Live comments: signing keys and blocklist pushed to agents.
    pub comments: Arc<crate::comments::CommentControl>,
    weights: RwLock<WeightSet>,
    replan: Notify,
    /// Set with a trigger that must not wait for the debounce (weights).
    replan_now: AtomicBool,
    /// Settings for the plan session, taken by the next planning round (a
    /// weight change; the planning thread applies them, so no API call
    /// waits for a plan in progress).
    pending_settings: Mutex<Option<PlanSettings>>,
    ready: AtomicBool,
    /// Cluster secret for probe authenticators (DESIGN §4), shared by all
    /// replicas through the store and sent to agents in every table.
    probe_key: Vec<u8>,
    /// Keys of publish tokens, shared through the store, sent to agents
    /// in every table with the publish policy.
    pub publish_keys: crate::publish_auth::PublishKeys,
    /// Per-client limits of the viewer-facing endpoints.
    pub guard: crate::api::guard::Guard,
    /// This replica among several (PostgreSQL), or the only one (SQLite).
    pub cluster: Arc<Cluster>,
    /// A new term for the plan session, taken by the next planning round.
    pending_term: Mutex<Option<u64>>,
}

/// What the planning session is made with: the configuration, the weight
/// set in force, the cluster probe key and the publish policy.
pub fn plan_settings(
    config: &Config,
    weights: &WeightSet,
    probe_key: &[u8],
    publish: &vantage_proto::v1::PublishPolicy,
) -> PlanSettings {
    PlanSettings {
        publish: Some(publish.clone()),
        weights: weights.weights,
        weights_version: weights.version,
        ranges: config.ranges,
        stability: config.stability,
        limits: config.limits,
        deadband: config.deadband,
        report_interval_ms: config.report_interval_ms,
        table_ttl_s: config.table_ttl_s,
        probe_key: probe_key.to_vec(),
        replan_interval_ms: config.replan_interval_ms,
        full_plan_interval_ms: FULL_PLAN_INTERVAL_MS,
    }
}

/// How often the planning session checks its incremental state with a
/// plan from scratch.
const FULL_PLAN_INTERVAL_MS: u32 = 60_000;

/// Partial weights for `PUT /v1/weights`: missing keys keep their value.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsPatch {
    pub latency: Option<f64>,
    pub loss: Option<f64>,
    pub buffer: Option<f64>,
    pub load: Option<f64>,
    pub distance: Option<f64>,
    pub throughput: Option<f64>,
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
            && self.throughput.is_none()
    }

    pub fn apply(&self, w: Weights) -> Weights {
        Weights {
            latency: self.latency.unwrap_or(w.latency),
            loss: self.loss.unwrap_or(w.loss),
            buffer: self.buffer.unwrap_or(w.buffer),
            load: self.load.unwrap_or(w.load),
            distance: self.distance.unwrap_or(w.distance),
            throughput: self.throughput.unwrap_or(w.throughput),
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
            registry.insert(entry_of(rec));
        }
        let cluster = Arc::new(crate::cluster::join(&config, &store, &mut prometheus).await?);
        let comment_metrics = crate::comments::CommentMetrics::register(&mut prometheus);
        let comments = crate::comments::CommentControl::load(store.clone(), comment_metrics)
            .await
            .map_err(|e| match e {
                crate::comments::CommentsError::Store(s) => s,
                crate::comments::CommentsError::Invalid(detail) => StoreError::InvalidValue {
                    what: "comment settings",
                    detail,
                },
            })?;
        let heads = store.route_heads().await?;
        let publisher = Publisher::new(store.clone(), &heads);
        let publisher = if cluster.replicated() {
            publisher.replicated()
        } else {
            publisher
        };
        let key_hex = store
            .cluster_setting("probe_key", &hex::encode(rand::random::<[u8; 32]>()), now)
            .await?;
        let probe_key = hex::decode(key_hex.trim()).unwrap_or_else(|_| {
            warn!("cluster setting probe_key is not hex; using its bytes");
            key_hex.into_bytes()
        });
        let publish_keys = crate::publish_auth::PublishKeys::load(&store, now)
            .await
            .map_err(|e| match e {
                crate::publish_auth::KeysError::Store(e) => e,
                other => StoreError::InvalidValue {
                    what: "publish_keys",
                    detail: other.to_string(),
                },
            })?;
        info!(
            nodes = registry.len(),
            weights_version = weights.version,
            publish_keys = publish_keys.list().len(),
            "state loaded"
        );
        let policy = config.publish.policy(&publish_keys.keys());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let mut plan = PlanSession::new(
            plan_settings(&config, &weights, &probe_key, &policy),
            threads,
        );
        if !cluster.replicated() {
            // Several replicas: the session a replica plans with is built
            // when it takes the lead (`App::become_leader`).
            plan.set_term(cluster.term());
            plan.restore_versions(heads.iter().map(|h| {
                let hash = crate::publish::parse_hash(&h.hash).unwrap_or(0);
                (h.node_id.clone(), h.version, hash)
            }));
        }
        Ok(Arc::new(Self {
            auth: crate::auth::Auth::new(auth_mode, registry.clone()),
            registry,
            publisher,
            plan: tokio::sync::RwLock::new(plan),
            store,
            metrics,
            prometheus,
            shutdown,
            resolver,
            recorder,
            comments: Arc::new(comments),
            weights: RwLock::new(weights),
            replan: Notify::new(),
            replan_now: AtomicBool::new(false),
            pending_settings: Mutex::new(None),
            ready: AtomicBool::new(false),
            probe_key,
            publish_keys,
            guard: crate::api::guard::Guard::new(config.client_limits.clone()),
            cluster,
            pending_term: Mutex::new(None),
            config,
        }))
    }

    /// The publish policy agents get: the `[publish]` settings and the
    /// current keys.
    pub fn publish_policy(&self) -> vantage_proto::v1::PublishPolicy {
        self.config.publish.policy(&self.publish_keys.keys())
    }

    /// The keys changed: every table gets the new policy at the next round.
    pub fn publish_policy_changed(&self) {
        let settings = plan_settings(
            &self.config,
            &self.weights(),
            &self.probe_key,
            &self.publish_policy(),
        );
        *self
            .pending_settings
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(settings);
        self.replan_at_once();
    }

    /// Runs `f` on the plan once no step holds it (a step in progress
    /// holds the plan for its duration; waiting for it does not block an
    /// async worker).
    pub async fn read_plan<R>(&self, f: impl FnOnce(&PlanSession) -> R) -> R {
        f(&*self.plan.read().await)
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
        self.cluster.notify("weights");
        let settings = plan_settings(&self.config, &ws, &self.probe_key, &self.publish_policy());
        *self
            .pending_settings
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(settings);
        self.replan_at_once();
        Ok(ws)
    }

    /// Re-reads `[weights]` from the config file (SIGHUP) and, when they
    /// differ from the weights in force, records them as a new version.
    pub async fn reload_file_weights(&self) {
        let Some(path) = &self.config.config_path else {
            info!("SIGHUP: no config file to reload");
            return;
        };
        let file = match crate::config::Settings::load(path) {
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
            throughput: Some(w.throughput),
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

    /// Plans at once, without the debounce that gathers bursts of
    /// triggers (a weight change, a stream that starts or ends).
    pub fn replan_at_once(&self) {
        self.replan_now.store(true, Ordering::Relaxed);
        self.replan.notify_one();
    }

    /// An operator's drain or undrain (API): the flag is persisted first
    /// (so a drain holds on every replica and after a restart, and a lifted
    /// one does not come back at restart), then put in force here.
    /// Other replicas follow drains live and undrains at their next start.
    /// `Ok(None)`: unknown node.
    pub async fn set_drain_persisted(
        &self,
        node_id: &str,
        by: &str,
        drained: bool,
    ) -> Result<Option<NodeState>, StoreError> {
        if !self.registry.contains(node_id) {
            return Ok(None);
        }
        self.store.set_drained(node_id, drained).await?;
        self.cluster.notify("nodes");
        Ok(if drained {
            self.drain(node_id, by)
        } else {
            self.undrain(node_id, by)
        })
    }

    /// Marks a node draining in the registry and the resolver's view (a
    /// drained edge must not be handed out even once more). `None`: unknown.
    fn mark_draining(&self, node_id: &str, now: i64) -> Option<NodeState> {
        let state = self.registry.update(node_id, |e| {
            e.draining = true;
            if e.state != NodeState::Down {
                e.state = NodeState::Draining;
                e.state_since_ms = now;
            }
            e.state
        })?;
        self.resolver.refresh(&self.registry, now);
        Some(state)
    }

    /// A drain another replica took: in force here, nothing recorded.
    pub(crate) fn drain_local(&self, node_id: &str) {
        self.mark_draining(node_id, now_ms());
        self.trigger_replan();
    }

    /// Marks a node draining (API or agent) and replans.
    pub fn drain(&self, node_id: &str, by: &str) -> Option<NodeState> {
        let now = now_ms();
        let state = self.mark_draining(node_id, now)?;
        self.persist_node(node_id);
        self.event(node_id, "drain", by);
        if let Some(r) = &self.recorder {
            r.node(now, node_id, "drain", by, None);
        }
        self.trigger_replan();
        Some(state)
    }

    /// Lifts a drain (an operator's through the API, or an agent's own):
    /// the node is offered to viewers and downstream relays again as soon
    /// as liveness sees it up. `None` for an unknown node.
    pub fn undrain(&self, node_id: &str, by: &str) -> Option<NodeState> {
        let now = now_ms();
        let interval = i64::from(self.config.report_interval_ms);
        let state = self.registry.update(node_id, |e| {
            e.draining = false;
            if e.state == NodeState::Draining {
                let fresh = e.last_report_ms.is_some_and(|t| now - t <= 2 * interval);
                e.state = if e.session.is_some() && fresh {
                    NodeState::Up
                } else {
                    NodeState::Suspect
                };
                e.state_since_ms = now;
            }
            e.state
        })?;
        self.persist_node(node_id);
        self.resolver.refresh(&self.registry, now);
        self.event(node_id, "undrain", by);
        if let Some(r) = &self.recorder {
            r.node(now, node_id, "undrain", by, None);
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
}
