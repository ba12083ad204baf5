//! The loops of a replica among several: the lease (take, renew, give
//! up), the committer of the leader's tables, the writer of subscription
//! changes, and what every replica reads from the database — committed
//! tables (followers), weights, drains, subscriptions (the leader), the
//! replicas' heartbeats — when notified (`LISTEN vantage`) and at least
//! every second.

use super::{lease, replicas, tables};
use crate::app::App;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Polls happen at least this often without a notification.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// The leader prunes withdrawn subscriptions this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Tables committed per transaction at most.
const COMMIT_CHUNK: usize = 1_000;

/// What notifications asked to read again.
#[derive(Debug, Default)]
struct Wakes {
    routes: AtomicBool,
    weights: AtomicBool,
    nodes: AtomicBool,
    interest: AtomicBool,
}

/// Starts the replica's loops (nothing with SQLite).
pub fn spawn(app: &Arc<App>, tasks: &mut tokio::task::JoinSet<()>) {
    if !app.cluster.replicated() {
        return;
    }
    let wakes = Arc::new(Wakes::default());
    tasks.spawn(run_lease(app.clone()));
    tasks.spawn(run_sync(app.clone(), wakes.clone()));
    tasks.spawn(listen(app.clone(), wakes));
    tasks.spawn(run_committer(app.clone()));
    tasks.spawn(run_interest_writer(app.clone()));
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

async fn timed<T>(
    app: &App,
    f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(app.cluster.statement_timeout(), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// The lease: followers try to take a lapsed one every sixth of the lease
/// (jittered), the leader renews every third and stops leading when its
/// own clock says the lease may have lapsed.
pub async fn run_lease(app: Arc<App>) {
    let Some(pool) = app.cluster.pool().cloned() else {
        return;
    };
    let c = app.cluster.clone();
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        let leading = c.state().role == super::Role::Leader;
        if leading && !c.is_leader() {
            app.step_down("lost", "the lease may have lapsed by this replica's clock");
        }
        let sent = Instant::now();
        if c.is_leader() {
            let term = c.term();
            match timed(&app, lease::renew(&pool, &c.holder, term, c.lease)).await {
                Ok(lease::Renewal::Held { floor }) => {
                    c.set_store_ok(true);
                    c.extend(sent + c.local_lease());
                    if floor > term {
                        match timed(&app, lease::bump(&pool, &c.holder, term, c.lease)).await {
                            Ok(Some(t)) => {
                                c.extend(sent + c.local_lease());
                                app.new_term(t);
                            }
                            Ok(None) => app.step_down("lost", "the lease was taken"),
                            Err(e) => warn!("cannot move to a new term: {e}"),
                        }
                    }
                    next = sent + c.renew_every();
                }
                Ok(lease::Renewal::Lost) => {
                    app.step_down("lost", "the lease lapsed or another replica took it");
                    next = sent + c.acquire_every();
                }
                Err(e) => {
                    c.metrics.store_error("lease");
                    c.set_store_ok(false);
                    debug!("lease renewal failed: {e}");
                    next = sent + c.acquire_every();
                }
            }
            continue;
        }
        match timed(
            &app,
            lease::acquire(&pool, &c.holder, &c.replica_id, c.lease),
        )
        .await
        {
            Ok(Some(term)) => {
                c.set_store_ok(true);
                if let Err(e) = app.become_leader(term, sent + c.local_lease()).await {
                    warn!(
                        term,
                        "could not take over as the leader: {e}; giving the lease up"
                    );
                    let _ = timed(&app, lease::release(&pool, &c.holder, term)).await;
                }
                next = sent + c.renew_every();
            }
            Ok(None) => {
                c.set_store_ok(true);
                match timed(&app, lease::read(&pool)).await {
                    Ok(row) => c.saw_lease(&row.replica_id, row.term, row.remaining_ms),
                    Err(e) => debug!("cannot read the lease: {e}"),
                }
                next = sent + jittered(c.acquire_every());
            }
            Err(e) => {
                c.metrics.store_error("lease");
                c.set_store_ok(false);
                debug!("lease attempt failed: {e}");
                next = sent + jittered(c.acquire_every());
            }
        }
    }
}

/// Gives the lease up at a clean stop, so another replica takes over at
/// once rather than when the lease lapses.
pub async fn release(app: &App) {
    let Some(pool) = app.cluster.pool() else {
        return;
    };
    if !app.cluster.is_leader() {
        return;
    }
    let term = app.cluster.term();
    app.step_down("released", "shutting down");
    match timed(app, lease::release(pool, &app.cluster.holder, term)).await {
        Ok(()) => info!(term, "lease released"),
        Err(e) => warn!("the lease was not released ({e}); it lapses by itself"),
    }
}

/// Reads what other replicas wrote: when notified, and every second.
async fn run_sync(app: Arc<App>, wakes: Arc<Wakes>) {
    let Some(pool) = app.cluster.pool().cloned() else {
        return;
    };
    let c = app.cluster.clone();
    let mut next_poll = Instant::now();
    let mut next_prune = Instant::now() + PRUNE_EVERY;
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = c.wake.notified() => {}
            _ = tokio::time::sleep_until(next_poll.into()) => {}
        }
        let all = Instant::now() >= next_poll;
        if all {
            next_poll = Instant::now() + POLL_EVERY;
        }
        let take = |flag: &AtomicBool| flag.swap(false, Ordering::Relaxed) || all;
        let mut ok = true;
        let leader = c.is_leader();
        if take(&wakes.routes) && !leader {
            match tokio::time::timeout(c.statement_timeout() * 3, app.follow_tables()).await {
                Ok(Ok(n)) if n > 0 => debug!(tables = n, "committed tables followed"),
                Ok(Ok(_)) => {}
                _ => {
                    c.metrics.store_error("follow");
                    ok = false;
                }
            }
        }
        if take(&wakes.weights)
            && tokio::time::timeout(c.statement_timeout(), app.sync_weights())
                .await
                .map_or(true, |r| r.is_err())
        {
            c.metrics.store_error("sync");
            ok = false;
        }
        if take(&wakes.nodes)
            && tokio::time::timeout(c.statement_timeout(), app.sync_drains())
                .await
                .map_or(true, |r| r.is_err())
        {
            c.metrics.store_error("sync");
            ok = false;
        }
        if take(&wakes.interest)
            && leader
            && tokio::time::timeout(c.statement_timeout() * 3, app.read_interest())
                .await
                .map_or(true, |r| r.is_err())
        {
            c.metrics.store_error("interest");
            ok = false;
        }
        if all {
            ok &= heartbeat(&app, &pool).await;
            if leader && Instant::now() >= next_prune {
                next_prune = Instant::now() + PRUNE_EVERY;
                let seq = c.interest_seq.load(Ordering::Relaxed);
                if let Ok(n) = timed(&app, super::interest::prune(&pool, seq)).await
                    && n > 0
                {
                    debug!(rows = n, "withdrawn subscriptions pruned");
                }
            }
        }
        c.set_store_ok(ok);
    }
}

/// Refreshes this replica's heartbeat and the list of replicas; notices a
/// replaced database (commit sequences behind what was read) and reads it
/// from the start.
async fn heartbeat(app: &App, pool: &sqlx::PgPool) -> bool {
    let c = &app.cluster;
    let counts = app.registry.state_counts();
    let nodes: i64 = counts.values().sum();
    let st = c.state();
    let beat = replicas::Heartbeat {
        id: &c.replica_id,
        holder: &c.holder,
        http_url: &c.http_url,
        started_at_ms: c.started_at_ms,
        role: c.role().as_str(),
        term: st.term,
        nodes,
        nodes_up: counts.get("up").copied().unwrap_or(0),
        agents_connected: app.metrics.telemetry_sessions.get(),
        route_streams: i64::try_from(c.route_streams()).unwrap_or(i64::MAX),
    };
    if let Err(e) = timed(app, replicas::beat(pool, &beat)).await {
        c.metrics.store_error("heartbeat");
        debug!("heartbeat not written: {e}");
        return false;
    }
    match timed(app, replicas::list(pool)).await {
        Ok(rows) => {
            let healthy = rows
                .iter()
                .filter(|r| r.seen_age_ms < replicas::HEALTHY_WITHIN_MS)
                .count();
            let label = |state: &str| crate::metrics::StateLabel {
                state: state.to_owned(),
            };
            c.metrics
                .replicas
                .get_or_create(&label("healthy"))
                .set(i64::try_from(healthy).unwrap_or(0));
            c.metrics
                .replicas
                .get_or_create(&label("unhealthy"))
                .set(i64::try_from(rows.len() - healthy).unwrap_or(0));
            c.set_replicas(rows);
        }
        Err(e) => {
            c.metrics.store_error("heartbeat");
            debug!("replicas not listed: {e}");
            return false;
        }
    }
    if let Ok(max) = timed(app, tables::max_seq(pool)).await
        && max < c.table_seq.load(Ordering::Relaxed)
    {
        warn!("the database holds fewer committed tables than were read: reading them again");
        c.table_seq.store(0, Ordering::Relaxed);
    }
    true
}

/// Sets the flags of what notifications name, and wakes the sync loop.
async fn listen(app: Arc<App>, wakes: Arc<Wakes>) {
    let Some(pool) = app.cluster.pool().cloned() else {
        return;
    };
    loop {
        let connected = async {
            let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
            l.listen("vantage").await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            l = connected => match l {
                Ok(l) => l,
                Err(e) => {
                    debug!("LISTEN vantage: {e}");
                    tokio::time::sleep(POLL_EVERY).await;
                    continue;
                }
            },
        };
        // Whatever was notified while not listening is read now.
        app.cluster.wake.notify_one();
        loop {
            let n = tokio::select! {
                _ = app.shutdown.cancelled() => return,
                n = listener.recv() => n,
            };
            match n {
                Ok(n) => {
                    let flag = match n.payload() {
                        "routes" => &wakes.routes,
                        "weights" => &wakes.weights,
                        "nodes" => &wakes.nodes,
                        "interest" => &wakes.interest,
                        _ => continue,
                    };
                    flag.store(true, Ordering::Relaxed);
                    app.cluster.wake.notify_one();
                }
                Err(e) => {
                    debug!("notifications lost: {e}");
                    break;
                }
            }
        }
    }
}

/// Commits the tables the leader's plan queued, then announces them to
/// route streams; a lost lease (fenced commit) ends the leadership.
async fn run_committer(app: Arc<App>) {
    let Some(pool) = app.cluster.pool().cloned() else {
        return;
    };
    let c = app.cluster.clone();
    let mut retry: Option<Duration> = None;
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = c.outbox_ready.notified() => {}
            _ = tokio::time::sleep(retry.unwrap_or(POLL_EVERY)), if retry.is_some() => {}
        }
        if !c.is_leader() {
            c.take_outbox();
            retry = None;
            continue;
        }
        let term = c.term();
        let mut batch = c.take_outbox();
        // Planned under a term this replica no longer has: replanned.
        batch.retain(|t| t.term == term);
        batch.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        retry = None;
        let mut rest = batch.as_slice();
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(rest.len().min(COMMIT_CHUNK));
            let started = Instant::now();
            let commit = tables::commit(&pool, &c.holder, term, chunk);
            match tokio::time::timeout(c.statement_timeout() * 3, commit).await {
                Ok(Ok(tables::Commit::Done)) => {
                    c.set_store_ok(true);
                    c.metrics
                        .commit_duration
                        .observe(started.elapsed().as_secs_f64());
                    c.metrics.tables_committed.inc_by(chunk.len() as u64);
                    for t in chunk {
                        let _ = app.publisher.offer(t.clone());
                    }
                    rest = after;
                }
                Ok(Ok(tables::Commit::Fenced)) => {
                    c.metrics.commits_fenced.inc();
                    app.step_down("lost", "a commit found the lease no longer ours");
                    break;
                }
                other => {
                    if let Ok(Err(e)) = other {
                        debug!("commit failed: {e}");
                    }
                    c.metrics.store_error("commit");
                    c.set_store_ok(false);
                    c.requeue(rest.to_vec());
                    retry = Some(Duration::from_millis(200));
                    break;
                }
            }
        }
    }
}

/// Writes the subscription changes of this replica's route streams as
/// they come (retrying every second while the database is away).
async fn run_interest_writer(app: Arc<App>) {
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = app.cluster.interest.ready.notified() => {}
            _ = tokio::time::sleep(POLL_EVERY) => {}
        }
        app.write_interest().await;
    }
}
