//! `vantage_agent_comments_*` metrics. Labels have small fixed value sets
//! (no room or client labels).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    /// `viewer` or `link`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Every comments metric; cheap to clone (shared handles).
#[derive(Debug, Clone, Default)]
pub struct CommentMetrics {
    pub connections: Family<KindLabel, Gauge>,
    pub accepted: Family<KindLabel, Counter>,
    pub refused: Family<ReasonLabel, Counter>,
    pub closed: Family<ReasonLabel, Counter>,
    pub posts: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    pub sequenced: Counter,
    pub duplicates: Family<ResultLabel, Counter>,
    pub delivered: Counter,
    pub batches: Counter,
    pub write_bytes: Counter,
    pub writes: Counter,
    pub rooms: Gauge,
    pub links: Gauge,
    pub link_attempts: Family<ResultLabel, Counter>,
    pub failovers: Family<ReasonLabel, Counter>,
    pub gaps: Counter,
    pub resets: Counter,
    pub settings_version: Gauge,
    pub blocklist_patterns: Gauge,
    pub settings_updates: Family<ResultLabel, Counter>,
}

impl CommentMetrics {
    /// Creates the metrics and registers them under `vantage_agent_comments_`.
    pub fn register(registry: &mut Registry) -> CommentMetrics {
        let m = CommentMetrics::default();
        let r = registry.sub_registry_with_prefix("vantage_agent_comments");
        r.register(
            "connections",
            "Comment WebSocket connections open, by kind (viewer, link: a downstream agent)",
            m.connections.clone(),
        );
        r.register(
            "accepted",
            "Comment WebSocket connections accepted (upgraded), by kind",
            m.accepted.clone(),
        );
        r.register(
            "refused",
            "Comment upgrade requests refused, by reason (not_websocket, bad_request, no_room, \
             max_connections, draining, link_auth, handshake_timeout)",
            m.refused.clone(),
        );
        r.register(
            "closed",
            "Comment connections closed, by reason (peer, idle, slow_reader, oversized, \
             invalid_utf8, protocol, flood, io)",
            m.closed.clone(),
        );
        r.register(
            "posts",
            "Posts received from this agent's own clients",
            m.posts.clone(),
        );
        r.register(
            "rejected",
            "Posts refused, by reason code (as returned to the poster)",
            m.rejected.clone(),
        );
        r.register(
            "sequenced",
            "Comments numbered by this agent as a room's sequencer",
            m.sequenced.clone(),
        );
        r.register(
            "duplicates",
            "Duplicates dropped: posts seen before by the sequencer (post), comments \
             received twice from an upstream (delivery)",
            m.duplicates.clone(),
        );
        r.register(
            "delivered",
            "Comments delivered to connections (one comment to one connection counts once)",
            m.delivered.clone(),
        );
        r.register(
            "batches",
            "Batches fanned out to a room's connections",
            m.batches.clone(),
        );
        r.register(
            "write_bytes",
            "Bytes written to comment connections",
            m.write_bytes.clone(),
        );
        r.register(
            "writes",
            "Writes (system calls) to comment connections: batches coalesce comments into one",
            m.writes.clone(),
        );
        r.register("rooms", "Rooms held", m.rooms.clone());
        r.register(
            "links",
            "Upstream links of this agent's rooms that are connected",
            m.links.clone(),
        );
        r.register(
            "link_attempts",
            "Upstream link attempts by result (welcomed; error: not welcomed, refused included)",
            m.link_attempts.clone(),
        );
        r.register(
            "failovers",
            "Upstream links given up for the next candidate, by reason (closed, stalled, error)",
            m.failovers.clone(),
        );
        r.register(
            "gaps",
            "Resumes that found comments no longer buffered upstream",
            m.gaps.clone(),
        );
        r.register(
            "resets",
            "Rooms whose numbering restarted (a new sequencer)",
            m.resets.clone(),
        );
        r.register(
            "settings_version",
            "Version of the comment settings (keys, blocklist) in force",
            m.settings_version.clone(),
        );
        r.register(
            "blocklist_patterns",
            "Blocklist patterns in force",
            m.blocklist_patterns.clone(),
        );
        r.register(
            "settings_updates",
            "Comment settings received from the scheduler, by result (applied, invalid)",
            m.settings_updates.clone(),
        );
        m.init_labels();
        m
    }

    /// Creates every known label set at zero, so that each series exists
    /// (and `rate()` works) before its first event.
    fn init_labels(&self) {
        for kind in ["viewer", "link"] {
            let _ = self.connections.get_or_create(&KindLabel { kind });
            let _ = self.accepted.get_or_create(&KindLabel { kind });
        }
        for reason in [
            "not_websocket",
            "bad_request",
            "no_room",
            "max_connections",
            "draining",
            "link_auth",
            "loop",
            "handshake_timeout",
            "upgrade_failed",
        ] {
            let _ = self.refused.get_or_create(&ReasonLabel { reason });
        }
        for reason in [
            "peer",
            "idle",
            "slow_reader",
            "oversized",
            "invalid_utf8",
            "protocol",
            "flood",
            "io",
        ] {
            let _ = self.closed.get_or_create(&ReasonLabel { reason });
        }
        for r in super::frame::Reason::ALL {
            let _ = self
                .rejected
                .get_or_create(&ReasonLabel { reason: r.label() });
        }
        for result in ["post", "delivery"] {
            let _ = self.duplicates.get_or_create(&ResultLabel { result });
        }
        for result in ["welcomed", "error"] {
            let _ = self.link_attempts.get_or_create(&ResultLabel { result });
        }
        for reason in ["closed", "stalled", "error"] {
            let _ = self.failovers.get_or_create(&ReasonLabel { reason });
        }
        for result in ["applied", "invalid"] {
            let _ = self.settings_updates.get_or_create(&ResultLabel { result });
        }
    }

    pub fn reject(&self, reason: super::frame::Reason) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    pub fn close(&self, reason: &'static str) {
        let _ = self.closed.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn refuse(&self, reason: &'static str) {
        let _ = self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }
}
