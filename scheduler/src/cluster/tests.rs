//! The lease and the fence against a real PostgreSQL database
//! (`VANTAGE_TEST_POSTGRES_URL`; skipped without it, failing under
//! `CI=true`): what a paused or partitioned ex-leader can and cannot do.

use super::{StoredTable, lease, tables};
use crate::store::Store;
use crate::store::tests::TestDb;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use vantage_proto::v1::RouteTable;

/// Long enough that a test's own steps never outlast it on a loaded
/// machine (a 300 ms lease was lost between two statements under CI load);
/// the two tests that need it to lapse wait it out.
const LEASE: Duration = Duration::from_secs(2);

async fn pool() -> Option<(TestDb, PgPool)> {
    let db = TestDb::postgres().await?;
    // Migrations run when the store opens.
    Store::open(&db.url).await.unwrap().close().await.unwrap();
    let pool = PgPool::connect(&db.url).await.unwrap();
    Some((db, pool))
}

fn table(node: &str, term: u64, version: u64) -> Arc<StoredTable> {
    Arc::new(StoredTable::new(
        RouteTable {
            node_id: node.to_owned(),
            version,
            term,
            ..Default::default()
        },
        version * 1_000 + term,
    ))
}

/// (term, version) of every committed table, by node.
async fn committed(pool: &PgPool) -> Vec<(String, u64, u64)> {
    let mut out: Vec<_> = tables::read_after(pool, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let t = r.table.unwrap();
            (t.node_id.to_string(), t.term, t.version)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_lapsed_leader_is_fenced_and_cannot_overwrite_a_newer_term() {
    let Some((_db, pool)) = pool().await else {
        return;
    };
    // A leads under term 1 and commits.
    let t1 = lease::acquire(&pool, "a#1", "a", LEASE).await.unwrap();
    assert_eq!(t1, Some(1));
    assert_eq!(
        lease::acquire(&pool, "b#1", "b", LEASE).await.unwrap(),
        None,
        "a held lease is not taken"
    );
    let done = tables::commit(&pool, "a#1", 1, &[table("edge-1", 1, 5)])
        .await
        .unwrap();
    assert_eq!(done, tables::Commit::Done);

    // A pauses past its lease; B takes over under term 2.
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    let t2 = lease::acquire(&pool, "b#1", "b", LEASE).await.unwrap();
    assert_eq!(t2, Some(2));
    let row = lease::read(&pool).await.unwrap();
    assert_eq!((row.replica_id.as_str(), row.term), ("b", 2));

    // A wakes up: it cannot renew, and what it commits is fenced (nothing
    // written), even with a higher version.
    assert_eq!(
        lease::renew(&pool, "a#1", 1, LEASE).await.unwrap(),
        lease::Renewal::Lost
    );
    let stale = tables::commit(
        &pool,
        "a#1",
        1,
        &[table("edge-1", 1, 9), table("edge-2", 1, 9)],
    )
    .await
    .unwrap();
    assert_eq!(stale, tables::Commit::Fenced);
    assert_eq!(committed(&pool).await, vec![("edge-1".into(), 1, 5)]);
    // Releasing someone else's lease does nothing.
    lease::release(&pool, "a#1", 1).await.unwrap();
    assert!(matches!(
        lease::renew(&pool, "b#1", 2, LEASE).await.unwrap(),
        lease::Renewal::Held { .. }
    ));

    // B's tables replace A's; an older (term, version) never replaces a newer one.
    let done = tables::commit(&pool, "b#1", 2, &[table("edge-1", 2, 6)])
        .await
        .unwrap();
    assert_eq!(done, tables::Commit::Done);
    let done = tables::commit(&pool, "b#1", 2, &[table("edge-1", 1, 7)])
        .await
        .unwrap();
    assert_eq!(done, tables::Commit::Done);
    assert_eq!(committed(&pool).await, vec![("edge-1".into(), 2, 6)]);

    // A clean stop lets the next replica in at once.
    lease::release(&pool, "b#1", 2).await.unwrap();
    assert_eq!(
        lease::acquire(&pool, "c#1", "c", LEASE).await.unwrap(),
        Some(3)
    );
}

#[tokio::test]
async fn a_term_an_agent_holds_moves_the_next_term_past_it() {
    let Some((_db, pool)) = pool().await else {
        return;
    };
    assert_eq!(
        lease::acquire(&pool, "a#1", "a", LEASE).await.unwrap(),
        Some(1)
    );
    // An agent holds a table of term 7 (the database was restored from a
    // backup): the floor records it, the leader bumps past it.
    lease::raise_floor(&pool, 7).await.unwrap();
    match lease::renew(&pool, "a#1", 1, LEASE).await.unwrap() {
        lease::Renewal::Held { floor } => assert_eq!(floor, 7),
        lease::Renewal::Lost => panic!("lost the lease"),
    }
    assert_eq!(lease::bump(&pool, "a#1", 1, LEASE).await.unwrap(), Some(8));
    // The old term is fenced now, the new one commits.
    assert_eq!(
        tables::commit(&pool, "a#1", 1, &[table("edge-1", 1, 1)])
            .await
            .unwrap(),
        tables::Commit::Fenced
    );
    assert_eq!(
        tables::commit(&pool, "a#1", 8, &[table("edge-1", 8, 1)])
            .await
            .unwrap(),
        tables::Commit::Done
    );
    // A lower floor changes nothing; after a lapse the next term is 9.
    lease::raise_floor(&pool, 3).await.unwrap();
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    assert_eq!(
        lease::acquire(&pool, "b#1", "b", LEASE).await.unwrap(),
        Some(9)
    );
}

#[tokio::test]
async fn only_one_of_many_contenders_takes_a_lapsed_lease() {
    let Some((_db, pool)) = pool().await else {
        return;
    };
    let mut tasks = Vec::new();
    for i in 0..8 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            lease::acquire(&pool, &format!("r{i}#1"), &format!("r{i}"), LEASE)
                .await
                .unwrap()
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        if let Some(term) = t.await.unwrap() {
            won.push(term);
        }
    }
    assert_eq!(won, vec![1], "exactly one contender leads, under term 1");
}
