//! A real `vantage-scheduler` process on loopback.
//!
//! ```ignore
//! let mut s = Scheduler::builder().report_interval_ms(250).start().await;
//! let nodes = s.nodes().await;
//! s.stop().await;          // SIGTERM, wait
//! s.start().await;         // same data dir, same ports, same database
//! ```
//!
//! Ports are chosen once, when the handle is built, so a restarted scheduler
//! listens where its agents expect it. The data directory (a temp dir unless
//! given) and the PostgreSQL database live as long as the handle.

use crate::datadir::DataDir;
use crate::http::{Http, metric};
use crate::ports::{Proto, free_port};
use crate::process::{DEFAULT_GRACE, Proc, Slot, looks_like_port_clash, wait_http_ok};
use crate::store::{PgDatabase, Store};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

/// Listening ports of a scheduler (all on 127.0.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerPorts {
    /// QUIC telemetry (UDP).
    pub quic: u16,
    /// gRPC routes (TCP).
    pub grpc: u16,
    /// HTTP API (TCP).
    pub http: u16,
}

impl SchedulerPorts {
    /// Three currently free loopback ports.
    pub fn free() -> Self {
        SchedulerPorts {
            quic: free_port(Proto::Udp),
            grpc: free_port(Proto::Tcp),
            http: free_port(Proto::Tcp),
        }
    }
}

/// How a scheduler is started.
#[derive(Debug, Clone)]
pub struct SchedulerBuilder {
    name: String,
    dev: bool,
    data_dir: Option<PathBuf>,
    store: Store,
    report_interval_ms: Option<u64>,
    ports: Option<SchedulerPorts>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    ready_timeout: Duration,
    /// `--read-token`, sent by [`Scheduler::get`] (reads that need the
    /// agents' addresses, hidden from anonymous readers).
    read_token: Option<String>,
    /// A database shared with other replicas (not created or dropped by
    /// this handle).
    shared_database: Option<String>,
}

impl Default for SchedulerBuilder {
    fn default() -> Self {
        SchedulerBuilder {
            name: "scheduler".into(),
            dev: true,
            data_dir: None,
            store: Store::Sqlite,
            report_interval_ms: None,
            ports: None,
            args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            read_token: None,
            shared_database: None,
        }
    }
}

impl SchedulerBuilder {
    /// `--dev` (on by default).
    pub fn dev(mut self, dev: bool) -> Self {
        self.dev = dev;
        self
    }

    /// Use (and keep) this data directory instead of a temp dir.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    pub fn store(mut self, store: Store) -> Self {
        self.store = store;
        self
    }

    /// `--report-interval-ms`.
    pub fn report_interval_ms(mut self, ms: u64) -> Self {
        self.report_interval_ms = Some(ms);
        self
    }

    /// Fixed ports instead of free random ones.
    pub fn ports(mut self, ports: SchedulerPorts) -> Self {
        self.ports = Some(ports);
        self
    }

    /// Extra command-line arguments.
    /// Starts the scheduler with `--read-token` and reads its API with it
    /// (readers see agents' addresses; docs/security.md).
    pub fn read_token(mut self, token: &str) -> Self {
        self.args.push("--read-token".into());
        self.args.push(token.into());
        self.read_token = Some(token.to_owned());
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Name used for log files and messages.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Bound for `/readyz` after a start (default 30 s).
    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }

    /// `--database-url URL` of a database several replicas share: this
    /// handle neither creates nor drops it (the store setting is ignored).
    pub fn shared_database(mut self, url: impl Into<String>) -> Self {
        self.shared_database = Some(url.into());
        self
    }

    /// Builds the handle without starting the process.
    pub async fn build(self) -> Scheduler {
        let dir = DataDir::new(self.data_dir.clone(), &self.name);
        let db = match (&self.shared_database, &self.store) {
            (Some(_), _) | (None, Store::Sqlite) => None,
            (None, Store::Postgres { admin_url }) => Some(PgDatabase::create(admin_url).await),
        };
        Scheduler {
            ports_fixed: self.ports.is_some(),
            ports: self.ports.unwrap_or_else(SchedulerPorts::free),
            cfg: self,
            dir,
            db,
            proc: Slot::default(),
            http: Http::new(),
            starts: 0,
        }
    }

    /// Builds and starts; returns once `/readyz` answers 200.
    pub async fn start(self) -> Scheduler {
        let mut s = self.build().await;
        s.start().await;
        s
    }
}

/// A scheduler process and everything it keeps across restarts.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerBuilder,
    ports: SchedulerPorts,
    ports_fixed: bool,
    // Field order matters for Drop: the process dies before its database
    // and data directory go away.
    proc: Slot,
    db: Option<PgDatabase>,
    dir: DataDir,
    http: Http,
    starts: u32,
}

impl Scheduler {
    pub fn builder() -> SchedulerBuilder {
        SchedulerBuilder::default()
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn ports(&self) -> SchedulerPorts {
        self.ports
    }

    pub fn store(&self) -> &Store {
        &self.cfg.store
    }

    /// The `--report-interval-ms` given (None = scheduler default, 1000).
    pub fn report_interval(&self) -> Duration {
        Duration::from_millis(self.cfg.report_interval_ms.unwrap_or(1000))
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Dev CA written by `--dev`.
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir().join("dev").join("ca.pem")
    }

    /// Enrollment token file written by `--dev`.
    pub fn token_path(&self) -> PathBuf {
        self.data_dir().join("dev").join("enroll.token")
    }

    /// The enrollment token.
    pub fn token(&self) -> String {
        let p = self.token_path();
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
            .trim()
            .to_owned()
    }

    pub fn quic_addr(&self) -> SocketAddr {
        crate::ports::loopback(self.ports.quic)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        crate::ports::loopback(self.ports.grpc)
    }

    /// `https://127.0.0.1:<grpc>` (the agent's `--routes`).
    pub fn grpc_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.grpc)
    }

    /// `http://127.0.0.1:<http>`.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    /// The PostgreSQL database URL, when the store is PostgreSQL.
    pub fn database_url(&self) -> Option<&str> {
        self.cfg
            .shared_database
            .as_deref()
            .or(self.db.as_ref().map(PgDatabase::url))
    }

    /// Asserts the scheduler keeps its state in the store it was given:
    /// `<data-dir>/vantage.db` for SQLite; tables in the fresh database (and
    /// no SQLite file) for PostgreSQL.
    pub async fn assert_store_in_use(&self) {
        let sqlite = self.data_dir().join("vantage.db");
        match &self.db {
            None => assert!(
                std::fs::metadata(&sqlite).is_ok_and(|m| m.len() > 0),
                "SQLite store {} missing or empty",
                sqlite.display()
            ),
            Some(db) => {
                let tables = db.tables().await;
                assert!(
                    !tables.is_empty(),
                    "no tables in PostgreSQL database {}: migrations did not run there",
                    db.name()
                );
                assert!(
                    !sqlite.exists(),
                    "PostgreSQL store given, yet {} was created",
                    sqlite.display()
                );
            }
        }
    }

    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.cfg.dev {
            a.push("--dev".to_owned());
        }
        let dir = self.data_dir().display().to_string();
        a.extend([
            "--data-dir".to_owned(),
            dir,
            "--quic-listen".to_owned(),
            self.quic_addr().to_string(),
            "--grpc-listen".to_owned(),
            self.grpc_addr().to_string(),
            "--http-listen".to_owned(),
            format!("127.0.0.1:{}", self.ports.http),
        ]);
        if let Some(ms) = self.cfg.report_interval_ms {
            a.extend(["--report-interval-ms".to_owned(), ms.to_string()]);
        }
        if let Some(url) = self.database_url() {
            a.extend(["--database-url".to_owned(), url.to_owned()]);
        }
        a.extend(self.cfg.args.iter().cloned());
        a
    }

    /// Starts the process (again) and waits for `/readyz`. Panics with the
    /// log tail when the process exits or does not become ready in time.
    pub async fn start(&mut self) {
        assert!(!self.is_running(), "{} is already running", self.cfg.name);
        let bin = crate::bins::bin(crate::bins::SCHEDULER);
        // Random ports can be taken by another test between the check and
        // the bind: on the first start only, retry with new ones.
        let attempts = if self.ports_fixed || self.starts > 0 {
            1
        } else {
            3
        };
        for attempt in 1..=attempts {
            self.starts += 1;
            let proc = Proc::spawn(
                &self.cfg.name,
                &bin,
                &self.args(),
                &self.cfg.env,
                &self.data_dir().join("logs"),
            );
            self.proc.set(proc);
            match self.wait_ready(self.cfg.ready_timeout).await {
                Ok(()) => return,
                Err(why) => {
                    let tail = self.log_tail(40);
                    let in_use = looks_like_port_clash(&tail);
                    if let Some(p) = self.proc.get_mut() {
                        p.kill();
                    }
                    if in_use && attempt < attempts {
                        eprintln!("{}: port clash, retrying with new ports", self.cfg.name);
                        self.ports = SchedulerPorts::free();
                        continue;
                    }
                    panic!("{} did not become ready: {why}\n{tail}", self.cfg.name);
                }
            }
        }
    }

    /// Polls `/readyz` until 200, the process exits, or `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let url = format!("{}/readyz", self.api_url());
        match self.proc.get_mut() {
            Some(proc) => wait_http_ok(proc, &self.http, &url, timeout).await,
            None => Err("not started".into()),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// SIGTERM and wait; panics if SIGKILL was needed.
    pub async fn stop(&mut self) -> ExitStatus {
        let name = &self.cfg.name;
        self.proc.stop(name, DEFAULT_GRACE).await
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; never panics.
    pub async fn shutdown(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        self.proc.shutdown(grace).await
    }

    /// SIGSTOP: frozen until [`Self::resume`].
    pub fn pause(&self) {
        self.proc.pause();
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        self.proc.resume();
    }

    /// SIGKILL (no goodbye to the peer).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Stop then start, same ports, data dir and database.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// The HTTP client used by this handle.
    pub fn http(&self) -> &Http {
        &self.http
    }

    /// GET an API path (`/v1/nodes`).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.api_url());
        match &self.cfg.read_token {
            Some(t) => {
                let bearer = format!("Bearer {t}");
                self.http
                    .request("GET", &url, &[("authorization", bearer.as_str())], None)
                    .await
            }
            None => self.http.get(&url).await,
        }
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.http
            .put_json(&format!("{}{path}", self.api_url()), body)
            .await
    }

    pub async fn put_raw(&self, path: &str, body: &str) -> (u16, Value) {
        self.http
            .put_raw(&format!("{}{path}", self.api_url()), body)
            .await
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        self.http
            .post_empty(&format!("{}{path}", self.api_url()))
            .await
    }

    /// `GET /v1/nodes` → the `nodes` array (empty on any failure).
    pub async fn nodes(&self) -> Vec<Value> {
        match self.get("/v1/nodes").await {
            (200, v) => v
                .get("nodes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// `GET /v1/nodes/{id}` (None unless 200).
    pub async fn node(&self, id: &str) -> Option<Value> {
        match self.get(&format!("/v1/nodes/{id}")).await {
            (200, v) => Some(v),
            _ => None,
        }
    }

    /// `GET /v1/routes/{id}` (None unless 200).
    pub async fn routes(&self, id: &str) -> Option<Value> {
        match self.get(&format!("/v1/routes/{id}")).await {
            (200, v) => Some(v),
            _ => None,
        }
    }

    /// `GET /v1/weights`; panics unless 200.
    pub async fn weights(&self) -> Value {
        match self.get("/v1/weights").await {
            (200, v) => v,
            other => panic!("GET /v1/weights: {other:?}"),
        }
    }

    /// `/metrics` text; panics unless 200.
    pub async fn metrics(&self) -> String {
        let (s, text) = self
            .http
            .get_text(&format!("{}/metrics", self.api_url()))
            .await;
        assert_eq!(s, 200, "GET /metrics: {text}");
        text
    }

    /// Value of a metric (summed over matching label sets; 0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics().await, name, labels).unwrap_or(0.0)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = self.log_tail(60);
            eprintln!("\n{tail}\n(data dir {})", self.data_dir().display());
            self.dir.keep_on_drop();
        }
        if let Some(p) = self.proc.get_mut() {
            p.kill();
        }
    }
}
