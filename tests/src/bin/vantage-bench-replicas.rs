//! Scheduler replicas benchmark (issue 19; docs/benchmarks.md, "Scheduler
//! replicas"): three real `vantage-scheduler` replicas on a PostgreSQL server
//! of its own, agents given every replica.
//!
//! ```sh
//! cargo build --release --bins && \
//!   cargo run --release -p vantage-tests --bin vantage-bench-replicas -- \
//!   [--kills 20] [--agents 6] [--resolve-secs 5] [--steady-secs 20]
//! ```
//!
//! 1. PostgreSQL load: statements (pg_stat_statements calls) and bytes
//!    (both directions, through a counting TCP proxy in front of the
//!    database) per second at steady state, and what one weight change adds
//!    (every table re-planned and committed once).
//! 2. `GET /v1/resolve` throughput: one replica alone, then all three at
//!    once (16 concurrent clients each).
//! 3. Leader failover over `--kills` SIGKILLs of the leader: time until both
//!    survivors name a new leader under a higher term, and until every agent
//!    holds a table of that term; the killed replica is restarted between
//!    kills.
//!
//! Needs the PostgreSQL server binaries (`scripts/postgres.sh` installs
//! them). Figures print as one table at the end.

use serde_json::json;
use std::time::{Duration, Instant};
use vantage_tests::agent::status_route_version;
use vantage_tests::cluster::{ORIGIN, PLACES};
use vantage_tests::http::as_u64;
use vantage_tests::impair::{Impairment, Stats, TcpImpair};
use vantage_tests::pgserver::PgServer;
use vantage_tests::replicas::Replicas;
use vantage_tests::{Agent, AgentBuilder};

const INTERVAL_MS: u64 = 1_000;
const LEASE_MS: u64 = 3_000;

struct Args {
    kills: usize,
    agents: usize,
    resolve_secs: u64,
    steady_secs: u64,
}

fn args() -> Args {
    let mut a = Args {
        kills: 20,
        agents: 6,
        resolve_secs: 5,
        steady_secs: 20,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let n = v.get(i + 1).and_then(|x| x.parse::<u64>().ok());
        match (v[i].as_str(), n) {
            ("--kills", Some(n)) => a.kills = n as usize,
            ("--agents", Some(n)) => a.agents = (n as usize).clamp(1, 60),
            ("--resolve-secs", Some(n)) => a.resolve_secs = n.clamp(1, 120),
            ("--steady-secs", Some(n)) => a.steady_secs = n.clamp(1, 600),
            (other, _) => {
                eprintln!(
                    "unknown or incomplete argument {other:?}\nusage: vantage-bench-replicas \
                     [--kills N] [--agents N] [--resolve-secs S] [--steady-secs S]"
                );
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn statements(admin: &str, db: &str) -> f64 {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let row: (Option<f64>,) = sqlx::query_as(
        "SELECT SUM(s.calls)::float8 FROM pg_stat_statements s \
         JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
    )
    .bind(db)
    .fetch_one(&mut c)
    .await
    .unwrap_or_else(|e| panic!("pg_stat_statements: {e}"));
    let _ = c.close().await;
    row.0.unwrap_or(0.0)
}

/// Every agent holds a table of `term` (and weights `weights` if given).
async fn all_hold(agents: &[Agent], term: u64, weights: Option<u64>) -> bool {
    for a in agents {
        let Some(st) = a.try_status().await else {
            return false;
        };
        if status_route_version(&st).is_none() || as_u64(st["routes"].get("term")) != Some(term) {
            return false;
        }
        if let Some(w) = weights {
            let routes = a.routes().await;
            if vantage_tests::cluster::table_weights_version(&routes) != Some(w) {
                return false;
            }
        }
    }
    true
}

async fn wait<F, Fut>(timeout: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

/// Resolves per second from `replicas` at once, 16 clients each.
async fn resolve_rate(r: &Replicas, which: &[usize], secs: u64) -> Vec<f64> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for &i in which {
        for c in 0..16u32 {
            let base = r.all[i].api_url();
            let client = client.clone();
            tasks.push((
                i,
                tokio::spawn(async move {
                    let mut ok = 0u64;
                    let mut k = c;
                    while Instant::now() < until {
                        k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        let lat = f64::from(k % 140) - 60.0;
                        let lon = f64::from((k / 140) % 360) - 180.0;
                        let url = format!("{base}/v1/resolve?stream=live/x&lat={lat}&lon={lon}");
                        if let Ok(resp) = client.get(&url).send().await
                            && resp.status().is_success()
                            && resp.bytes().await.is_ok()
                        {
                            ok += 1;
                        }
                    }
                    ok
                }),
            ));
        }
    }
    let mut per: Vec<f64> = vec![0.0; which.len()];
    for (i, t) in tasks {
        let n = t.await.unwrap_or(0);
        let slot = which.iter().position(|&w| w == i).unwrap_or(0);
        per[slot] += n as f64 / secs as f64;
    }
    per
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let Some(pg) = PgServer::start_new_with("-c shared_preload_libraries=pg_stat_statements").await
    else {
        eprintln!(
            "no PostgreSQL server binaries in /usr/lib/postgresql (scripts/postgres.sh installs them)"
        );
        std::process::exit(1);
    };
    let admin = pg.admin_url();
    {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("pg_stat_statements: {e}"));
    }
    let pg_addr: std::net::SocketAddr = admin
        .trim_start_matches("postgres://postgres@")
        .split('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address in {admin}"));
    let proxy = TcpImpair::start(
        vantage_tests::ports::loopback(0),
        pg_addr,
        Impairment::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("proxy: {e}"));
    let proxy_addr = proxy.local_addr();
    let mut r = Replicas::start_with(
        &admin,
        3,
        INTERVAL_MS,
        LEASE_MS,
        // The load generator is one client (127.0.0.1): the per-client
        // limits of the viewer endpoints (issue 17) would measure
        // themselves, not the replicas.
        &[
            "--exploration-share",
            "0",
            "--rate-limit-per-s",
            "1000000",
            "--rate-limit-burst",
            "1000000",
        ],
        |u| u.replace(&pg_addr.to_string(), &proxy_addr.to_string()),
    )
    .await;
    let db_name = r
        .database_url()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut agents = Vec::new();
    for i in 0..a.agents {
        let (region, lat, lon) = PLACES[i % PLACES.len()];
        agents.push(
            AgentBuilder::new(&format!("edge-{i}"), r.endpoints())
                .region(region)
                .at(lat + (i / PLACES.len()) as f64 * 0.5, lon)
                .origin(ORIGIN.0, ORIGIN.1)
                .start()
                .await,
        );
    }
    let all = [0usize, 1, 2];
    let (_, term) = r.wait_leader(&all, Duration::from_secs(30)).await;
    wait(Duration::from_secs(60), "agents settled", || {
        all_hold(&agents, term, None)
    })
    .await;
    eprintln!("{} agents hold tables of term {term}; measuring", a.agents);

    // 1. PostgreSQL load at steady state, then one weight change.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s0, b0, t0) = (
        statements(&admin, &db_name).await,
        proxy.stats(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(a.steady_secs)).await;
    let (s1, b1, dt) = (
        statements(&admin, &db_name).await,
        proxy.stats(),
        t0.elapsed(),
    );
    let bytes = |s: &Stats| s.upstream.bytes_forwarded + s.downstream.bytes_forwarded;
    let steady_stmt = (s1 - s0) / dt.as_secs_f64();
    let steady_bytes = (bytes(&b1) - bytes(&b0)) as f64 / dt.as_secs_f64();
    let (st, w) = r.all[1].put("/v1/weights", &json!({"latency": 0.5})).await;
    assert_eq!(st, 200, "{w}");
    let wv = as_u64(w.get("version")).unwrap_or(0);
    let took = wait(Duration::from_secs(30), "weight change applied", || {
        all_hold(&agents, term, Some(wv))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s2, b2, dt2) = (
        statements(&admin, &db_name).await,
        proxy.stats(),
        t0.elapsed() - dt,
    );
    let change_stmt = (s2 - s1) - steady_stmt * dt2.as_secs_f64();
    let change_bytes = (bytes(&b2) - bytes(&b1)) as f64 - steady_bytes * dt2.as_secs_f64();
    eprintln!("weight change applied on every agent after {took:?}");

    // 2. Resolve throughput.
    let alone = resolve_rate(&r, &[0], a.resolve_secs).await;
    let three = resolve_rate(&r, &all, a.resolve_secs).await;

    // 3. Leader failovers.
    let mut to_leader = Vec::new();
    let mut to_tables = Vec::new();
    for k in 0..a.kills {
        let (leader, term) = r.wait_leader(&all, Duration::from_secs(30)).await;
        let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
        r.all[leader].kill();
        let t0 = Instant::now();
        let new_term = loop {
            if let Ok((_, t)) = r.agreed_leader(&survivors).await
                && t > term
            {
                break t;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no new leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let l = t0.elapsed();
        wait(Duration::from_secs(30), "tables of the new term", || {
            all_hold(&agents, new_term, None)
        })
        .await;
        let t = t0.elapsed();
        eprintln!(
            "kill {}: leader after {l:?}, every agent's table after {t:?}",
            k + 1
        );
        to_leader.push(l);
        to_tables.push(t);
        r.all[leader].start().await;
        r.wait_leader(&all, Duration::from_secs(30)).await;
        // The restarted replica hears from every agent again before the next kill.
        let s = &r.all[leader];
        wait(
            Duration::from_secs(30),
            "the restarted replica sees every node up",
            || async {
                let nodes = s.nodes().await;
                nodes.len() >= a.agents && nodes.iter().all(|n| n["state"] == "up")
            },
        )
        .await;
    }
    to_leader.sort();
    to_tables.sort();

    println!("\n| figure | value |");
    println!("|---|---|");
    println!(
        "| PostgreSQL at steady state, 3 replicas, {} agents | {steady_stmt:.1} statements/s, {:.1} KB/s |",
        a.agents,
        steady_bytes / 1000.0
    );
    println!(
        "| one weight change ({} tables re-planned and committed) | {change_stmt:.0} statements, {:.1} KB; applied on every agent in {took:?} |",
        a.agents,
        change_bytes / 1000.0
    );
    println!(
        "| `GET /v1/resolve`, one replica alone (16 clients) | {:.0}/s |",
        alone[0]
    );
    println!(
        "| `GET /v1/resolve`, three replicas at once (16 clients each) | {} /s (sum {:.0}/s) |",
        three
            .iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / "),
        three.iter().sum::<f64>()
    );
    if !to_leader.is_empty() {
        println!(
            "| leader failover over {} SIGKILLs (lease {LEASE_MS} ms, reports every {INTERVAL_MS} ms): new leader | p50 {:?}, p99 {:?}, max {:?} |",
            to_leader.len(),
            percentile(&to_leader, 0.5),
            percentile(&to_leader, 0.99),
            to_leader.last().copied().unwrap_or_default()
        );
        println!(
            "| same: every agent holds a table of the new term | p50 {:?}, p99 {:?}, max {:?} |",
            percentile(&to_tables, 0.5),
            percentile(&to_tables, 0.99),
            to_tables.last().copied().unwrap_or_default()
        );
    }
    drop(agents);
    drop(r);
    proxy.stop().await;
    drop(pg);
}
