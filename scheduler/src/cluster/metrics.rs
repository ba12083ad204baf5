//! Metrics of the replica's membership (`vantage_scheduler_` prefix, see
//! docs/metrics.md): leadership, term, commits and refusals.

use super::Role;
use crate::metrics::{KindLabel, ReasonLabel, StateLabel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    pub leader: Gauge,
    pub term: Gauge,
    pub leader_changes: Family<KindLabel, Counter>,
    pub tables_committed: Counter,
    pub commit_duration: Histogram,
    pub commits_fenced: Counter,
    pub tables_followed: Counter,
    pub tables_refused: Family<ReasonLabel, Counter>,
    pub store_errors: Family<KindLabel, Counter>,
    pub replicas: Family<StateLabel, Gauge>,
    pub interest_writes: Counter,
}

impl ClusterMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ClusterMetrics {
            leader: Gauge::default(),
            term: Gauge::default(),
            leader_changes: Family::default(),
            tables_committed: Counter::default(),
            commit_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            commits_fenced: Counter::default(),
            tables_followed: Counter::default(),
            tables_refused: Family::default(),
            store_errors: Family::default(),
            replicas: Family::default(),
            interest_writes: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("vantage_scheduler");
        r.register(
            "leader",
            "1 while this replica leads (plans and commits route tables), else 0",
            m.leader.clone(),
        );
        r.register(
            "term",
            "The leader term this replica leads under, or the latest it saw",
            m.term.clone(),
        );
        r.register(
            "leader_changes",
            "Leadership changes of this replica, by kind: acquired, lost (lease lapsed or taken), released (clean stop), bumped (a new term past one an agent held)",
            m.leader_changes.clone(),
        );
        r.register(
            "tables_committed",
            "Route table versions the leader committed to the database",
            m.tables_committed.clone(),
        );
        r.register(
            "table_commit_duration_seconds",
            "Time of one fenced commit of route tables",
            m.commit_duration.clone(),
        );
        r.register(
            "commits_fenced",
            "Commits refused because the lease was no longer this replica's (the tables were not announced)",
            m.commits_fenced.clone(),
        );
        r.register(
            "tables_followed",
            "Committed route tables a follower read from the database and serves",
            m.tables_followed.clone(),
        );
        r.register(
            "tables_refused",
            "Route tables not taken because the one held is newer, by reason: older_term, not_newer, undecodable",
            m.tables_refused.clone(),
        );
        r.register(
            "cluster_store_errors",
            "Coordination statements that failed (database unreachable or slow), by kind: lease, commit, follow, interest, heartbeat, sync",
            m.store_errors.clone(),
        );
        r.register(
            "replicas",
            "Replicas with a heartbeat in the last day, by state: healthy (heartbeat < 3 s old) or unhealthy",
            m.replicas.clone(),
        );
        r.register(
            "interest_writes",
            "Transactions writing directory subscriptions of this replica's route streams",
            m.interest_writes.clone(),
        );
        // Every series exists from the start (at 0), so alerts and rates
        // see them before the first event.
        for kind in ["acquired", "lost", "released", "bumped"] {
            let _ = m.leader_changes.get_or_create(&KindLabel {
                kind: kind.to_owned(),
            });
        }
        for reason in ["older_term", "not_newer", "undecodable"] {
            let _ = m.tables_refused.get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            });
        }
        for kind in ["lease", "commit", "follow", "interest", "heartbeat", "sync"] {
            let _ = m.store_errors.get_or_create(&KindLabel {
                kind: kind.to_owned(),
            });
        }
        for state in ["healthy", "unhealthy"] {
            let _ = m.replicas.get_or_create(&StateLabel {
                state: state.to_owned(),
            });
        }
        m
    }

    pub(crate) fn set_state(&self, role: Role, term: u64) {
        self.leader.set(i64::from(role == Role::Leader));
        self.term.set(i64::try_from(term).unwrap_or(i64::MAX));
    }

    pub(crate) fn changed(&self, kind: &str) {
        self.leader_changes
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub(crate) fn refused(&self, reason: &str) {
        self.tables_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(crate) fn store_error(&self, kind: &str) {
        self.store_errors
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }
}
