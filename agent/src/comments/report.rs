//! What live comments add to the agent's report (`Load.comment_*`, and
//! their bytes to `Load.egress_mbps`: the scheduler's view of the node's
//! load includes them) and to `/v1/status` (`comments`).

use super::Comments;
use crate::telemetry::ReportSource;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::Instant;
use vantage_proto::v1::Report;

/// Rates from counters between two reports.
#[derive(Debug)]
pub struct Rates {
    at: Instant,
    delivered: u64,
    posts: u64,
    sequenced: u64,
    bytes: u64,
    last: RateView,
}

/// Per-second rates over the last interval.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RateView {
    pub fanout_per_s: f64,
    pub posts_per_s: f64,
    pub sequenced_per_s: f64,
    pub egress_mbps: f64,
}

impl Rates {
    pub fn new(at: Instant) -> Rates {
        Rates {
            at,
            delivered: 0,
            posts: 0,
            sequenced: 0,
            bytes: 0,
            last: RateView::default(),
        }
    }
}

/// One room in `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct RoomStatus {
    pub key: String,
    pub role: &'static str,
    pub epoch: String,
    pub head: u64,
    pub published: u64,
    pub buffered: usize,
    pub connections: usize,
    pub downstream_links: Vec<String>,
    pub forwards_pending: usize,
    pub upstream: Option<super::room::UpstreamView>,
}

/// The `comments` section of `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct CommentsStatus {
    pub connections: usize,
    pub settings_version: u64,
    pub keys: usize,
    pub blocklist_patterns: usize,
    pub rates: RateView,
    pub rooms: Vec<RoomStatus>,
}

impl Comments {
    /// Rates since the last call at least 500 ms ago (else the last ones).
    pub fn rates(&self) -> RateView {
        let svc = self.shared();
        let mut r = super::lock(&svc.rates);
        let now = Instant::now();
        let dt = now.duration_since(r.at).as_secs_f64();
        if dt < 0.5 {
            return r.last;
        }
        let delivered = svc.delivered.load(Ordering::Relaxed);
        let posts = svc.posts.load(Ordering::Relaxed);
        let sequenced = svc.sequenced.load(Ordering::Relaxed);
        let bytes = svc.io.bytes_out.get();
        let per_s = |new: u64, old: u64| new.saturating_sub(old) as f64 / dt;
        r.last = RateView {
            fanout_per_s: per_s(delivered, r.delivered),
            posts_per_s: per_s(posts, r.posts),
            sequenced_per_s: per_s(sequenced, r.sequenced),
            egress_mbps: per_s(bytes, r.bytes) * 8.0 / 1e6,
        };
        (r.at, r.delivered, r.posts, r.sequenced, r.bytes) =
            (now, delivered, posts, sequenced, bytes);
        r.last
    }

    /// The `comments` section of `/v1/status`.
    pub fn status(&self) -> CommentsStatus {
        let settings = self.settings();
        let mut rooms: Vec<RoomStatus> = self
            .rooms()
            .iter()
            .map(|room| {
                let downstream_links = room.downstream_nodes();
                let st = room.state();
                RoomStatus {
                    key: room.key.to_string(),
                    role: match st.role {
                        super::room::Role::Sequencer(_) => "sequencer",
                        super::room::Role::Follower => "follower",
                    },
                    epoch: st.epoch.to_string(),
                    head: st.ring.head(),
                    published: st.published,
                    buffered: st.ring.len(),
                    connections: room.members(),
                    downstream_links,
                    forwards_pending: st.forwards.len(),
                    upstream: st.upstream.clone(),
                }
            })
            .collect();
        rooms.sort_by(|a, b| a.key.cmp(&b.key));
        CommentsStatus {
            connections: self.connections(),
            settings_version: settings.version,
            keys: settings.keys.0.len(),
            blocklist_patterns: settings.blocklist.len(),
            rates: self.rates(),
            rooms,
        }
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() && v >= 0.0 { v } else { 0.0 }
}

impl ReportSource for Comments {
    fn fill(&self, report: &mut Report) {
        let r = self.rates();
        let load = report.load.get_or_insert_with(Default::default);
        load.comment_connections = u32::try_from(self.connections()).unwrap_or(u32::MAX);
        load.comment_fanout_per_s = finite(r.fanout_per_s);
        load.comment_posts_per_s = finite(r.posts_per_s);
        load.comment_connection_limit =
            u32::try_from(self.inner.cfg.max_connections).unwrap_or(u32::MAX);
        load.comment_fanout_capacity_per_s = finite(self.inner.cfg.fanout_capacity_per_s);
        load.egress_mbps = finite(load.egress_mbps + r.egress_mbps);
    }
}
