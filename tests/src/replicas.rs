//! Several `vantage-scheduler` replicas on one PostgreSQL database (issue
//! 19): the database is created from `VANTAGE_TEST_POSTGRES_URL` and shared;
//! every replica gets `--scheduler-id replica-<i>` and the first replica's
//! development CA and enrollment token (copied into its data directory
//! before it starts), so an agent given every replica trusts all of them.

use crate::agent::SchedulerEndpoints;
use crate::scheduler::Scheduler;
use crate::store::PgDatabase;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Replicas sharing one database; index `i` is `replica-<i>`.
#[derive(Debug)]
pub struct Replicas {
    // Field order matters for Drop: the processes die before the database.
    pub all: Vec<Scheduler>,
    db: PgDatabase,
    /// Short timeouts: a paused replica must not stall the test.
    client: reqwest::Client,
}

/// What `GET /v1/cluster` of one replica says about the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    /// The replica asked (index).
    pub at: usize,
    pub role: String,
    pub term: u64,
    /// Who it says leads (`None`: the lease lapsed, or not known yet).
    pub leader: Option<String>,
}

impl Replicas {
    /// Starts `n` replicas reporting every `interval_ms` with a lease of
    /// `lease_ms`; `extra` arguments go to every replica.
    pub async fn start(
        admin_url: &str,
        n: usize,
        interval_ms: u64,
        lease_ms: u64,
        extra: &[&str],
    ) -> Replicas {
        Self::start_with(admin_url, n, interval_ms, lease_ms, extra, |u| u.to_owned()).await
    }

    /// [`Self::start`], the replicas given `url_for(database URL)` (e.g.
    /// through a proxy that counts bytes).
    pub async fn start_with(
        admin_url: &str,
        n: usize,
        interval_ms: u64,
        lease_ms: u64,
        extra: &[&str],
        url_for: impl Fn(&str) -> String,
    ) -> Replicas {
        assert!(n >= 1);
        let db = PgDatabase::create(admin_url).await;
        let replica_url = url_for(db.url());
        let mut all: Vec<Scheduler> = Vec::with_capacity(n);
        for i in 0..n {
            let mut b = Scheduler::builder()
                .name(format!("replica-{i}"))
                .shared_database(replica_url.clone())
                .report_interval_ms(interval_ms)
                .arg("--scheduler-id")
                .arg(format!("replica-{i}"))
                .arg("--lease-ms")
                .arg(lease_ms.to_string());
            for a in extra {
                b = b.arg(*a);
            }
            let mut s = b.build().await;
            if let Some(first) = all.first() {
                copy_dir(&first.data_dir().join("dev"), &s.data_dir().join("dev"));
            }
            s.start().await;
            all.push(s);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .no_proxy()
            .build()
            .unwrap_or_else(|e| panic!("http client: {e}"));
        Replicas { all, db, client }
    }

    pub fn database_url(&self) -> &str {
        self.db.url()
    }

    /// What an agent configured with every replica is given.
    pub fn endpoints(&self) -> SchedulerEndpoints {
        let refs: Vec<&Scheduler> = self.all.iter().collect();
        SchedulerEndpoints::of_all(&refs)
    }

    /// `GET /v1/cluster` of replica `i` (None when it does not answer).
    pub async fn cluster(&self, i: usize) -> Option<Value> {
        let url = format!("{}/v1/cluster", self.all[i].api_url());
        let r = self.client.get(&url).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// The leader views of the replicas in `among` that answer.
    pub async fn views(&self, among: &[usize]) -> Vec<LeaderView> {
        let mut out = Vec::new();
        for &i in among {
            if let Some(v) = self.cluster(i).await {
                out.push(LeaderView {
                    at: i,
                    role: v["replica"]["role"].as_str().unwrap_or("").to_owned(),
                    term: v["replica"]["term"].as_u64().unwrap_or(0),
                    leader: v["leader"]["id"].as_str().map(str::to_owned),
                });
            }
        }
        out
    }

    /// The one replica among `among` that says it leads, once every one of
    /// them names it as the leader under the same term: `(index, term)`.
    pub async fn agreed_leader(&self, among: &[usize]) -> Result<(usize, u64), String> {
        let views = self.views(among).await;
        if views.len() != among.len() {
            return Err(format!("not every replica answers: {views:?}"));
        }
        let leaders: Vec<&LeaderView> = views.iter().filter(|v| v.role == "leader").collect();
        let [l] = leaders.as_slice() else {
            return Err(format!("not exactly one leader: {views:?}"));
        };
        let name = format!("replica-{}", l.at);
        if views
            .iter()
            .all(|v| v.leader.as_deref() == Some(name.as_str()) && v.term == l.term)
        {
            Ok((l.at, l.term))
        } else {
            Err(format!("replicas disagree: {views:?}"))
        }
    }

    /// Waits until the replicas in `among` agree on one leader.
    pub async fn wait_leader(&self, among: &[usize], timeout: Duration) -> (usize, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.agreed_leader(among).await {
                Ok(l) => return l,
                Err(e) if Instant::now() >= deadline => {
                    panic!("no agreed leader among {among:?} within {timeout:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for e in entries.flatten() {
        let dst = to.join(e.file_name());
        std::fs::copy(e.path(), &dst).unwrap_or_else(|err| {
            panic!("copy {} to {}: {err}", e.path().display(), dst.display())
        });
    }
}
