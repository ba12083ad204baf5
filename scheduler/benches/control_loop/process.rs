//! The scheduler under test as a child process: ports, readiness, `/metrics`,
//! CPU samples, logs.

use super::*;

/// The running scheduler; killed when dropped (also while unwinding).
pub(crate) struct Scheduler {
    pub(crate) child: Child,
    pub(crate) dir: tempfile::TempDir,
    /// Where to copy the log when stopped (`--keep-logs`).
    pub(crate) keep_log: Option<PathBuf>,
    pub(crate) quic: SocketAddr,
    pub(crate) grpc: SocketAddr,
    pub(crate) base: String,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(to) = &self.keep_log {
            let _ = std::fs::copy(self.dir.path().join("scheduler.log"), to);
        }
    }
}

pub(crate) fn free_tcp_ports() -> Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

pub(crate) fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Scheduler {
    pub(crate) fn start(bin: &Path, interval_ms: u32, keep_log: Option<PathBuf>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("vantage-bench-")
            .tempdir()
            .context("temporary data dir")?;
        let (grpc_port, http_port) = free_tcp_ports().context("free TCP ports")?;
        let quic_port = free_udp_port().context("free UDP port")?;
        let quic: SocketAddr = ([127, 0, 0, 1], quic_port).into();
        let grpc: SocketAddr = ([127, 0, 0, 1], grpc_port).into();
        let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
        let log = std::fs::File::create(dir.path().join("scheduler.log"))?;
        let child = Command::new(bin)
            .arg("--dev")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--quic-listen", &quic.to_string()])
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--http-listen", &http.to_string()])
            .args(["--report-interval-ms", &interval_ms.to_string()])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            dir,
            keep_log,
            quic,
            grpc,
            base: format!("http://{http}"),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last warnings and errors of the scheduler log (else its last lines).
    pub(crate) fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("scheduler.log")).unwrap_or_default();
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        if lines.is_empty() {
            lines = text.lines().collect();
        }
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub(crate) async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/readyz", self.base);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("scheduler exited ({status}):\n{}", self.log_tail());
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "scheduler not ready within {READY_TIMEOUT:?}:\n{}",
            self.log_tail()
        )
    }

    pub(crate) fn token(&self) -> Result<String> {
        let p = self.dir.path().join("dev/enroll.token");
        Ok(std::fs::read_to_string(&p)
            .with_context(|| p.display().to_string())?
            .trim()
            .to_owned())
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.path().join("dev/ca.pem")
    }

    pub(crate) async fn metrics(&self, http: &reqwest::Client) -> Result<Metrics> {
        let text = http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Metrics::parse(&text))
    }

    /// Sum of the route-table versions of `ids` (`GET /v1/routes/{id}`), to
    /// measure table churn.
    pub(crate) async fn sample_versions(
        &self,
        http: &reqwest::Client,
        ids: &[String],
    ) -> Result<u64> {
        let mut sum = 0;
        for id in ids {
            let r = http
                .get(format!("{}/v1/routes/{id}", self.base))
                .send()
                .await?;
            if r.status().is_success() {
                let v: serde_json::Value = r.json().await?;
                sum += v["version"].as_u64().unwrap_or(0);
            }
        }
        Ok(sum)
    }

    pub(crate) fn cpu(&self) -> Result<CpuSample> {
        CpuSample::take(self.pid())
    }
}

/// Prometheus/OpenMetrics text as `series → value`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Metrics(HashMap<String, f64>);

impl Metrics {
    pub(crate) fn parse(text: &str) -> Self {
        let mut m = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some((series, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.trim().parse::<f64>()
            {
                m.insert(series.trim().to_owned(), v);
            }
        }
        Self(m)
    }

    pub(crate) fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// Sum of every labelled series of a family.
    pub(crate) fn sum_family(&self, family: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(family) && k[family.len()..].starts_with('{'))
            .map(|(_, v)| *v)
            .fold(0.0, |a, b| a + b)
    }
}

pub(crate) fn keep_log(args: &Args, label: &str) -> Result<Option<PathBuf>> {
    match &args.keep_logs {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            Ok(Some(dir.join(format!("{label}-scheduler.log"))))
        }
        None => Ok(None),
    }
}

// ---------------------------------------------------------------------------
// CPU accounting from /proc
// ---------------------------------------------------------------------------
