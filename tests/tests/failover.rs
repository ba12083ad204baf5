//! Must show 2 (issue 2): SIGKILL one agent. It is `down` within 3.5 report
//! intervals, and every remaining agent whose table named it receives a new
//! version without it (DESIGN §11: routed around at every affected agent
//! within 3.5 report intervals).
//!
//! The report interval is 500 ms so the bound (1.75 s) is well above the
//! poll period (20 ms) and the scheduler's own sweep, yet tight enough that
//! a scheduler waiting for the QUIC idle timeout instead would fail.

use serde_json::Value;
use std::time::{Duration, Instant};
use vantage_tests::agent::status_route_version;
use vantage_tests::cluster::{start_settled, table_of, wait_all_acked, wait_all_up};
use vantage_tests::http::{as_u64, mentions};
use vantage_tests::{Scheduler, Store, eventually_every, store_tests};

const INTERVAL_MS: u64 = 500;
const IDS: [&str; 4] = ["edge-a", "edge-b", "edge-c", "edge-d"];
const POLL: Duration = Duration::from_millis(20);

async fn killed_agent_is_routed_around(store: Store) {
    let s = Scheduler::builder()
        .store(store)
        .report_interval_ms(INTERVAL_MS)
        .start()
        .await;
    let (mut agents, acked) = start_settled(&s, &IDS).await;
    for a in &agents {
        let st = a.status().await;
        assert_eq!(
            as_u64(st["telemetry"].get("report_interval_ms")),
            Some(INTERVAL_MS),
            "the agent reports at the interval the scheduler set: {st}"
        );
    }

    // The victim: the agent named by the most other tables.
    let named_by = |victim: &str| -> Vec<usize> {
        acked
            .iter()
            .enumerate()
            .filter(|(i, (_, routes))| IDS[*i] != victim && mentions(table_of(routes), victim))
            .map(|(i, _)| i)
            .collect()
    };
    let (victim_idx, affected) = (0..IDS.len())
        .map(|i| (i, named_by(IDS[i])))
        .max_by_key(|(_, v)| v.len())
        .unwrap_or_else(|| unreachable!("IDS is not empty"));
    let victim = IDS[victim_idx];
    assert!(
        !affected.is_empty(),
        "no agent's table names another agent (probe targets or upstreams); tables: {:#?}",
        acked.iter().map(|(_, r)| table_of(r)).collect::<Vec<_>>()
    );
    let old: Vec<(usize, u64)> = affected.iter().map(|&i| (i, acked[i].0)).collect();
    eprintln!(
        "killing {victim}, named by {:?}",
        affected.iter().map(|&i| IDS[i]).collect::<Vec<_>>()
    );

    let bound = Duration::from_millis(INTERVAL_MS * 7 / 2);
    agents[victim_idx].kill();
    let t0 = Instant::now();

    let remaining: Vec<_> = agents
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim_idx)
        .map(|(_, a)| a)
        .collect();
    let down = async {
        eventually_every(bound * 3, POLL, &format!("{victim} down"), || async {
            match s.node(victim).await {
                Some(n) if n["state"] == "down" => Ok(t0.elapsed()),
                other => Err(other.map(|n| n["state"].clone())),
            }
        })
        .await
    };
    let rerouted = async {
        eventually_every(
            bound * 3,
            POLL,
            &format!("tables without {victim} at {affected:?}"),
            || async {
                let mut missing = Vec::new();
                for &(i, old_version) in &old {
                    let a = remaining
                        .iter()
                        .find(|a| a.node_id() == IDS[i])
                        .unwrap_or_else(|| unreachable!("affected agents are alive"));
                    let held = match a.try_status().await {
                        Some(st) => status_route_version(&st),
                        None => None,
                    };
                    let routes = s.routes(IDS[i]).await.unwrap_or(Value::Null);
                    let version = as_u64(routes.get("version"));
                    let ok = held.is_some_and(|h| h > old_version)
                        && held == version
                        && !mentions(table_of(&routes), victim);
                    if !ok {
                        missing.push(format!(
                            "{}: holds {held:?} (was {old_version}), scheduler v{version:?}, names victim: {}",
                            IDS[i],
                            mentions(table_of(&routes), victim)
                        ));
                    }
                }
                if missing.is_empty() {
                    Ok(t0.elapsed())
                } else {
                    Err(missing)
                }
            },
        )
        .await
    };
    let (down_after, rerouted_after) = tokio::join!(down, rerouted);
    eprintln!(
        "{victim}: down after {down_after:?}, routed around after {rerouted_after:?} (bound {bound:?})"
    );
    assert!(
        down_after <= bound,
        "{victim} became down {down_after:?} after SIGKILL; must be within 3.5 report intervals ({bound:?})"
    );
    assert!(
        rerouted_after <= bound,
        "affected agents held tables without {victim} only {rerouted_after:?} after SIGKILL; \
         must be within 3.5 report intervals ({bound:?})"
    );

    // The survivors stay up and ACK what they hold.
    let survivors: Vec<&str> = IDS.iter().copied().filter(|id| *id != victim).collect();
    wait_all_up(&s, &survivors, Duration::from_secs(5)).await;
    wait_all_acked(&s, &remaining, Duration::from_secs(5)).await;
    assert_eq!(
        s.metric("vantage_scheduler_nodes", &[("state", "down")])
            .await,
        1.0
    );
}

store_tests! {
    killed_agent_is_routed_around => sqlite_killed_agent_is_routed_around, postgres_killed_agent_is_routed_around;
}
