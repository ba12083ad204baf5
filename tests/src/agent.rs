//! A real `vantage-agent` process on loopback, enrolled with a
//! [`crate::Scheduler`] through its dev CA and enrollment token.
//!
//! ```ignore
//! let a = Agent::builder("edge-1", &sched).lat(48.85).lon(2.35).start().await;
//! let status = a.status().await;   // GET /v1/status
//! ```
//!
//! The agent's data directory (credential, persisted route table) and its
//! ports survive `stop()`/`start()`, so a restart is the same node.

use crate::Scheduler;
use crate::datadir::DataDir;
use crate::http::{Http, as_u64, field};
use crate::ports::{Proto, free_port};
use crate::process::{DEFAULT_GRACE, Proc, Slot, looks_like_port_clash, wait_http_ok};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

/// Ports of one agent (all on 127.0.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentPorts {
    /// Admin HTTP (`/v1/status`).
    pub admin: u16,
    /// Media HTTP.
    pub http: u16,
    /// RTMP.
    pub rtmp: u16,
    /// UDP probes.
    pub probe: u16,
}

impl AgentPorts {
    pub fn free() -> Self {
        AgentPorts {
            admin: free_port(Proto::Tcp),
            http: free_port(Proto::Tcp),
            rtmp: free_port(Proto::Tcp),
            probe: free_port(Proto::Udp),
        }
    }
}

/// What an agent needs to know about its scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerEndpoints {
    pub quic: SocketAddr,
    pub grpc_url: String,
    pub ca: PathBuf,
    pub token_file: PathBuf,
    /// Further replicas (`--scheduler` and `--routes` repeated), which
    /// share the first one's CA and enrollment token.
    pub more: Vec<(SocketAddr, String)>,
}

impl SchedulerEndpoints {
    pub fn of(s: &Scheduler) -> Self {
        SchedulerEndpoints {
            quic: s.quic_addr(),
            grpc_url: s.grpc_url(),
            ca: s.ca_path(),
            token_file: s.token_path(),
            more: Vec::new(),
        }
    }

    /// Every replica of `all` (the first one's CA and token).
    pub fn of_all(all: &[&Scheduler]) -> Self {
        let mut e = SchedulerEndpoints::of(all[0]);
        e.more = all[1..]
            .iter()
            .map(|s| (s.quic_addr(), s.grpc_url()))
            .collect();
        e
    }
}

#[derive(Debug, Clone)]
pub struct AgentBuilder {
    node_id: String,
    sched: SchedulerEndpoints,
    region: String,
    lat: f64,
    lon: f64,
    capacity_mbps: f64,
    public_url: Option<String>,
    probe_advertise: Option<String>,
    origins: Vec<String>,
    data_dir: Option<PathBuf>,
    ports: Option<AgentPorts>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    start_timeout: Duration,
}

impl AgentBuilder {
    pub fn new(node_id: &str, sched: SchedulerEndpoints) -> Self {
        AgentBuilder {
            node_id: node_id.to_owned(),
            sched,
            region: "test".into(),
            lat: 0.0,
            lon: 0.0,
            capacity_mbps: 1000.0,
            public_url: None,
            probe_advertise: None,
            origins: Vec::new(),
            data_dir: None,
            ports: None,
            args: Vec::new(),
            env: Vec::new(),
            start_timeout: Duration::from_secs(20),
        }
    }

    pub fn region(mut self, r: impl Into<String>) -> Self {
        self.region = r.into();
        self
    }

    pub fn lat(mut self, lat: f64) -> Self {
        self.lat = lat;
        self
    }

    pub fn lon(mut self, lon: f64) -> Self {
        self.lon = lon;
        self
    }

    /// Latitude and longitude.
    pub fn at(self, lat: f64, lon: f64) -> Self {
        self.lat(lat).lon(lon)
    }

    pub fn capacity_mbps(mut self, c: f64) -> Self {
        self.capacity_mbps = c;
        self
    }

    /// `--public-url` (default `http://127.0.0.1:<media port>`).
    pub fn public_url(mut self, u: impl Into<String>) -> Self {
        self.public_url = Some(u.into());
        self
    }

    /// `--probe-advertise` (default: the probe listen address): where peers
    /// send probes, e.g. an impairment proxy in front of the probe port.
    pub fn probe_advertise(mut self, addr: impl ToString) -> Self {
        self.probe_advertise = Some(addr.to_string());
        self
    }

    /// `--origin PATTERN=URL` (repeatable).
    pub fn origin(mut self, pattern: &str, url: &str) -> Self {
        self.origins.push(format!("{pattern}={url}"));
        self
    }

    pub fn data_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(d.into());
        self
    }

    pub fn ports(mut self, p: AgentPorts) -> Self {
        self.ports = Some(p);
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn build(self) -> Agent {
        let dir = DataDir::new(self.data_dir.clone(), &self.node_id);
        Agent {
            ports_fixed: self.ports.is_some(),
            starts: 0,
            ports: self.ports.unwrap_or_else(AgentPorts::free),
            cfg: self,
            proc: Slot::default(),
            dir,
            http: Http::new(),
        }
    }

    /// Builds and starts; returns once the admin `/healthz` answers 200.
    pub async fn start(self) -> Agent {
        let mut a = self.build();
        a.start().await;
        a
    }
}

#[derive(Debug)]
pub struct Agent {
    cfg: AgentBuilder,
    ports: AgentPorts,
    ports_fixed: bool,
    starts: u32,
    proc: Slot,
    dir: DataDir,
    http: Http,
}

impl Agent {
    /// A builder for node `node_id` joining `sched`.
    pub fn builder(node_id: &str, sched: &Scheduler) -> AgentBuilder {
        AgentBuilder::new(node_id, SchedulerEndpoints::of(sched))
    }

    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    pub fn ports(&self) -> AgentPorts {
        self.ports
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:<admin>`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.admin)
    }

    /// `127.0.0.1:<probe>` (UDP).
    pub fn probe_addr(&self) -> SocketAddr {
        crate::ports::loopback(self.ports.probe)
    }

    /// `http://127.0.0.1:<media>`.
    pub fn media_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    /// `rtmp://127.0.0.1:<rtmp>` (append `/{app}/{stream}`).
    pub fn rtmp_url(&self) -> String {
        format!("rtmp://127.0.0.1:{}", self.ports.rtmp)
    }

    /// `<data-dir>/node.credential`.
    pub fn credential_path(&self) -> PathBuf {
        self.data_dir().join("node.credential")
    }

    /// The persisted node credential, if any.
    pub fn credential(&self) -> Option<String> {
        std::fs::read_to_string(self.credential_path())
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// `<data-dir>/routes.pb`.
    pub fn routes_path(&self) -> PathBuf {
        self.data_dir().join("routes.pb")
    }

    fn args(&self) -> Vec<String> {
        let c = &self.cfg;
        let public_url = c.public_url.clone().unwrap_or_else(|| self.media_url());
        let mut a: Vec<String> = [
            "--node-id",
            &c.node_id,
            "--scheduler",
            &c.sched.quic.to_string(),
            "--routes",
            &c.sched.grpc_url,
            "--ca",
            &c.sched.ca.display().to_string(),
            "--token-file",
            &c.sched.token_file.display().to_string(),
            "--data-dir",
            &self.data_dir().display().to_string(),
            "--http-listen",
            &format!("127.0.0.1:{}", self.ports.http),
            "--rtmp-listen",
            &format!("127.0.0.1:{}", self.ports.rtmp),
            "--admin-listen",
            &format!("127.0.0.1:{}", self.ports.admin),
            "--probe-listen",
            &format!("127.0.0.1:{}", self.ports.probe),
            "--region",
            &c.region,
            "--lat",
            &c.lat.to_string(),
            "--lon",
            &c.lon.to_string(),
            "--capacity-mbps",
            &c.capacity_mbps.to_string(),
            "--public-url",
            &public_url,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        for o in &c.origins {
            a.extend(["--origin".to_owned(), o.clone()]);
        }
        if let Some(adv) = &c.probe_advertise {
            a.extend(["--probe-advertise".to_owned(), adv.clone()]);
        }
        for (quic, grpc) in &c.sched.more {
            a.extend([
                "--scheduler".to_owned(),
                quic.to_string(),
                "--routes".to_owned(),
                grpc.clone(),
            ]);
        }
        a.extend(c.args.iter().cloned());
        a
    }

    /// Starts the process (again); returns once `/healthz` answers 200.
    /// On the first start with harness-chosen ports, a port clash is retried
    /// with new ports.
    pub async fn start(&mut self) {
        assert!(!self.is_running(), "{} is already running", self.node_id());
        let bin = crate::bins::bin(crate::bins::AGENT);
        let logs = self.data_dir().join("logs");
        let attempts = if self.ports_fixed || self.starts > 0 {
            1
        } else {
            3
        };
        for attempt in 1..=attempts {
            self.starts += 1;
            let mut proc = Proc::spawn(&self.cfg.node_id, &bin, &self.args(), &self.cfg.env, &logs);
            let url = format!("{}/healthz", self.admin_url());
            let res = wait_http_ok(&mut proc, &self.http, &url, self.cfg.start_timeout).await;
            let tail = proc.log_tail(40);
            self.proc.set(proc);
            let Err(err) = res else {
                return;
            };
            if looks_like_port_clash(&tail) && attempt < attempts {
                self.kill();
                eprintln!(
                    "agent {}: port clash, retrying with new ports",
                    self.node_id()
                );
                self.ports = AgentPorts::free();
                continue;
            }
            panic!("agent {} failed to start: {err}\n{tail}", self.node_id());
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
        let name = &format!("agent {}", self.cfg.node_id);
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

    /// `/v1/status` once it shows the table in use ACKed (within
    /// `timeout`). A table applied after the scheduler recorded the last ACK
    /// reads `acked: false` until the agent has persisted and ACKed it.
    pub async fn status_acked(&self, timeout: Duration) -> Value {
        crate::eventually(timeout, "agent status shows its table ACKed", || async {
            let st = self.status().await;
            if st["routes"]["acked"] == Value::Bool(true) {
                Ok(st)
            } else {
                Err(st)
            }
        })
        .await
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// GET an admin path.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.http.get(&format!("{}{path}", self.admin_url())).await
    }

    /// `/v1/status`, or None when it does not answer 200.
    pub async fn try_status(&self) -> Option<Value> {
        match self.get("/v1/status").await {
            (200, v) => Some(v),
            _ => None,
        }
    }

    /// `/v1/status`; panics unless 200.
    pub async fn status(&self) -> Value {
        match self.get("/v1/status").await {
            (200, v) => v,
            other => panic!("agent {} /v1/status: {other:?}", self.node_id()),
        }
    }

    /// `/v1/routes`: the route table in use (`table`, rendered like the
    /// scheduler's `GET /v1/routes/{id}`), its version and source; panics
    /// unless 200.
    pub async fn routes(&self) -> Value {
        match self.get("/v1/routes").await {
            (200, v) => v,
            other => panic!("agent {} /v1/routes: {other:?}", self.node_id()),
        }
    }

    /// `/metrics` text; panics unless 200.
    pub async fn metrics(&self) -> String {
        let (s, text) = self
            .http
            .get_text(&format!("{}/metrics", self.admin_url()))
            .await;
        assert_eq!(s, 200, "agent {} GET /metrics: {text}", self.node_id());
        text
    }

    /// Value of a metric (summed over matching label sets; 0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        crate::http::metric(&self.metrics().await, name, labels).unwrap_or(0.0)
    }

    /// HTTP status of `/readyz` (0 = no answer).
    pub async fn readyz(&self) -> u16 {
        self.get("/readyz").await.0
    }
}

/// `routes.version` of an agent status (None when absent or 0).
pub fn status_route_version(status: &Value) -> Option<u64> {
    as_u64(status.get("routes").and_then(|r| r.get("version"))).filter(|v| *v > 0)
}

/// `telemetry.reports_sent` of an agent status.
pub fn status_reports_sent(status: &Value) -> Option<u64> {
    as_u64(
        status
            .get("telemetry")
            .and_then(|t| field(t, "reports_sent")),
    )
}

/// `telemetry.connected` of an agent status.
pub fn status_connected(status: &Value) -> bool {
    status
        .get("telemetry")
        .and_then(|t| t.get("connected"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n{}\n(data dir {})",
                self.log_tail(40),
                self.data_dir().display()
            );
            self.dir.keep_on_drop();
        }
        if let Some(p) = self.proc.get_mut() {
            p.kill();
        }
    }
}
