//! Viewer sessions: the ids this edge gives the viewer sessions it serves,
//! and which CMCD reports count (issue 17: forged beacons used to steer the
//! resolver).
//!
//! A **session** belongs to one client (its address truncated to the
//! `cmcd_client_prefix_v4`/`_v6` prefix, see [`ClientKey`]) and one client
//! group. It is opened by a served request:
//!
//! * an HTTP-FLV play that is answered 200 (every one: the connection is the
//!   session, live until it closes);
//! * an LL-HLS playlist answered 200 whose CMCD carries a session id
//!   (`sid`; hls.js, dash.js, Shaka send one): live while the player keeps
//!   requesting;
//! * the watch page issues an id before its player starts (*pending*: no
//!   report counts until a play or playlist request with that id is served).
//!
//! The id is the `sid` the player offered, when it is well-formed and not
//! another client's session, else a fresh random 128-bit id; every opening
//! answer names it in `X-Vantage-Session`.
//!
//! A CMCD report **counts** only when its `sid` names a session that is
//! served now or was within [`GRACE_MS`] (a closed FLV connection, an HLS
//! player's last request), of the same client; and **once**: a beacon
//! identical to one already accepted for the session within the QoE window
//! ([`WINDOW_MS`]) is a `duplicate`, and a session adds at most one sample
//! per [`SLOT_MS`], whatever its reports' source: later reports in the same
//! interval only merge into it (a buffer-starvation flag marks it stalled). Everything else is rejected
//! with a reason ([`Reject`]) and counted.
//!
//! Memory is bounded: at most `max_sessions` sessions and
//! `sessions_per_client` per client (the client's oldest session that is
//! not live makes room; when all are live the new one is not tracked).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use vantage_shared::cmcd::Cmcd;
use vantage_shared::ratelimit::ClientKey;

pub use super::qoe::WINDOW_MS;

/// A session stays usable this long after it was last served (an FLV
/// connection closed, an HLS player's last request).
pub const GRACE_MS: u64 = 30_000;
/// A watch-page session whose player never started is forgotten after this.
pub const PENDING_TTL_MS: u64 = 60_000;
/// A session adds at most one sample per interval of this length.
pub const SLOT_MS: u64 = 1_000;
/// Accepted reports remembered per session for duplicate detection.
const RECENT: usize = 32;

/// Response header naming the viewer's session.
pub const SESSION_HEADER: &str = "x-vantage-session";

/// Session limits (from [`crate::relay::RelayConfig`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionLimits {
    pub max_sessions: usize,
    pub per_client: usize,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
}

/// Why a CMCD report does not count (the `reason` label of
/// `vantage_agent_relay_cmcd_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// A beacon without a `sid`, or a request's CMCD with no session.
    NoSession,
    /// The `sid` names no session served here now (or within the grace).
    UnknownSession,
    /// The session belongs to another client.
    WrongClient,
    /// The request carrying it was not served (404, 503…), or the session's
    /// player has not started yet.
    NotServed,
    /// Identical to a report already accepted for the session recently.
    Duplicate,
    /// The client's sessions (or the table) are full of live sessions.
    SessionLimit,
    /// The client's beacon rate limit.
    RateLimited,
}

impl Reject {
    pub const ALL: [Reject; 7] = [
        Reject::NoSession,
        Reject::UnknownSession,
        Reject::WrongClient,
        Reject::NotServed,
        Reject::Duplicate,
        Reject::SessionLimit,
        Reject::RateLimited,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reject::NoSession => "no_session",
            Reject::UnknownSession => "unknown_session",
            Reject::WrongClient => "wrong_client",
            Reject::NotServed => "not_served",
            Reject::Duplicate => "duplicate",
            Reject::SessionLimit => "session_limit",
            Reject::RateLimited => "rate_limited",
        }
    }

    /// What a client is told.
    pub fn message(self) -> &'static str {
        match self {
            Reject::NoSession => {
                "a CMCD beacon must name its viewer session (sid): the id in the play answer's X-Vantage-Session header"
            }
            Reject::UnknownSession => "no viewer session with this sid is served here",
            Reject::WrongClient => "this viewer session belongs to another client",
            Reject::NotServed => "this viewer session has not been served yet",
            Reject::Duplicate => "this report was already received for this session",
            Reject::SessionLimit => "too many viewer sessions from this client",
            Reject::RateLimited => "too many CMCD beacons from this client",
        }
    }
}

/// How a served request relates to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An HTTP-FLV connection: live until [`Sessions::close`].
    Flv,
    /// An HLS request: live for [`GRACE_MS`] after it.
    Hls,
}

#[derive(Debug)]
struct Session {
    num: u64,
    client: ClientKey,
    group: Arc<str>,
    created_ms: u64,
    /// Served at least once (a watch-page session is not until its player
    /// starts).
    served: bool,
    /// Open FLV connections of the session.
    conns: u32,
    /// Last served request or connection end.
    last_ms: u64,
    /// The interval (`at_ms / SLOT_MS`) of the last sample and its time.
    slot: Option<(u64, u64)>,
    /// Digests of reports accepted within the window, oldest first.
    recent: VecDeque<(u64, u64)>,
}

impl Session {
    fn live(&self, now_ms: u64) -> bool {
        self.conns > 0 || (self.served && now_ms.saturating_sub(self.last_ms) <= GRACE_MS)
    }

    fn expired(&self, now_ms: u64) -> bool {
        if self.served {
            !self.live(now_ms)
        } else {
            now_ms.saturating_sub(self.created_ms) > PENDING_TTL_MS
        }
    }
}

/// A session a request was attributed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub id: Arc<str>,
    pub num: u64,
    pub group: Arc<str>,
}

/// What to do with an accepted report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A new sample of the session (at this time).
    New,
    /// The session already has a sample in this interval (taken at this
    /// time): merge into it.
    Merge(u64),
}

/// An accepted report: the session's number and group, and its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub num: u64,
    pub group: Arc<str>,
    pub slot: Slot,
}

/// The session table.
#[derive(Debug)]
pub struct Sessions {
    limits: SessionLimits,
    by_id: HashMap<Arc<str>, Session>,
    by_client: HashMap<ClientKey, Vec<Arc<str>>>,
    next_num: u64,
    hasher: RandomState,
    /// When a full table was last swept.
    swept_full_ms: Option<u64>,
}

/// Whether `sid` may be used as a session id as offered (it goes into a
/// response header).
fn well_formed(sid: &str) -> bool {
    (1..=64).contains(&sid.len())
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'~'))
}

fn fresh_id() -> Arc<str> {
    let v: u128 = rand::random();
    Arc::from(format!("{v:032x}"))
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            limits: SessionLimits {
                max_sessions: limits.max_sessions.max(1),
                per_client: limits.per_client.max(1),
                ..limits
            },
            by_id: HashMap::new(),
            by_client: HashMap::new(),
            next_num: 1,
            hasher: RandomState::new(),
            swept_full_ms: None,
        }
    }

    pub fn client(&self, ip: IpAddr) -> ClientKey {
        ClientKey::of(ip, self.limits.prefix_v4, self.limits.prefix_v6)
    }

    /// Sessions tracked.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn remove(&mut self, id: &str) {
        if let Some(s) = self.by_id.remove(id)
            && let Some(ids) = self.by_client.get_mut(&s.client)
        {
            ids.retain(|x| &**x != id);
            if ids.is_empty() {
                self.by_client.remove(&s.client);
            }
        }
    }

    /// Forgets sessions past their grace (and pending ones past their TTL).
    pub fn sweep(&mut self, now_ms: u64) {
        let gone: Vec<Arc<str>> = self
            .by_id
            .iter()
            .filter(|(_, s)| s.expired(now_ms))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    /// Makes room for one more session of `client`; false if there is none.
    fn room(&mut self, client: ClientKey, now_ms: u64) -> bool {
        let mine = self.by_client.get(&client).map_or(0, Vec::len);
        if mine >= self.limits.per_client {
            // The client's oldest session that is not live makes room.
            let victim = self.by_client.get(&client).and_then(|ids| {
                ids.iter()
                    .find(|id| self.by_id.get(*id).is_none_or(|s| !s.live(now_ms)))
                    .cloned()
            });
            match victim {
                Some(id) => self.remove(&id),
                None => return false,
            }
        }
        // A full table is swept at most once a second (a sweep walks it all).
        if self.by_id.len() >= self.limits.max_sessions
            && self
                .swept_full_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= SLOT_MS)
        {
            self.swept_full_ms = Some(now_ms);
            self.sweep(now_ms);
        }
        self.by_id.len() < self.limits.max_sessions
    }

    fn insert(&mut self, id: Arc<str>, client: ClientKey, group: Arc<str>, now_ms: u64) -> u64 {
        let num = self.next_num;
        self.next_num += 1;
        self.by_id.insert(
            id.clone(),
            Session {
                num,
                client,
                group,
                created_ms: now_ms,
                served: false,
                conns: 0,
                last_ms: now_ms,
                slot: None,
                recent: VecDeque::new(),
            },
        );
        self.by_client.entry(client).or_default().push(id);
        num
    }

    /// A new session of `client` named `id` (else a fresh id), not yet
    /// served; `None` when the client or the table has no room.
    fn create(
        &mut self,
        id: Option<&str>,
        client: ClientKey,
        group: Arc<str>,
        now_ms: u64,
    ) -> Option<Arc<str>> {
        if !self.room(client, now_ms) {
            return None;
        }
        let id = id.map_or_else(fresh_id, Arc::from);
        self.insert(id.clone(), client, group, now_ms);
        Some(id)
    }

    /// A pending session for a watch page (counts once its player is
    /// served); `None` when the client or the table has no room.
    pub fn issue_pending(
        &mut self,
        client: ClientKey,
        group: Arc<str>,
        now_ms: u64,
    ) -> Option<Arc<str>> {
        self.create(None, client, group, now_ms)
    }

    /// A served play (FLV) or playlist (HLS) request of `client`, offering
    /// `offered` (its CMCD `sid`) and located in `located`: opens or renews
    /// its session. `Err(SessionLimit)` when there is no room (the request
    /// is still served; its CMCD does not count).
    pub fn open(
        &mut self,
        offered: Option<&str>,
        client: ClientKey,
        located: Option<Arc<str>>,
        kind: Kind,
        now_ms: u64,
    ) -> Result<Opened, Reject> {
        let reuse = offered.filter(|o| well_formed(o)).filter(|o| {
            // Another client's session is never joined (nor taken over).
            self.by_id.get(*o).is_none_or(|s| s.client == client)
        });
        let id: Arc<str> = match reuse {
            Some(o) if self.by_id.contains_key(o) => Arc::from(o),
            _ => {
                let group = located.clone().unwrap_or_else(unknown);
                self.create(reuse, client, group, now_ms)
                    .ok_or(Reject::SessionLimit)?
            }
        };
        let Some(s) = self.by_id.get_mut(&id) else {
            return Err(Reject::SessionLimit);
        };
        s.served = true;
        s.last_ms = now_ms;
        if kind == Kind::Flv {
            s.conns += 1;
        }
        if let Some(g) = located {
            s.group = g;
        }
        Ok(Opened {
            id,
            num: s.num,
            group: s.group.clone(),
        })
    }

    /// The group of `client`'s session `sid` (served or pending), if any.
    pub fn group_of(&self, sid: Option<&str>, client: ClientKey) -> Option<Arc<str>> {
        let s = self.by_id.get(sid?)?;
        (s.client == client).then(|| s.group.clone())
    }

    /// An FLV connection of session `id` ended.
    pub fn close(&mut self, id: &str, now_ms: u64) {
        if let Some(s) = self.by_id.get_mut(id) {
            s.conns = s.conns.saturating_sub(1);
            s.last_ms = now_ms;
        }
    }

    /// The session a request or beacon of `client` names with `sid`, if it
    /// may report now. `served`: the request was served (an HLS segment:
    /// the session is renewed).
    pub fn find(
        &mut self,
        sid: Option<&str>,
        client: ClientKey,
        served: bool,
        now_ms: u64,
    ) -> Result<Opened, Reject> {
        let sid = sid.ok_or(Reject::NoSession)?;
        let Some((id, s)) = self.by_id.get_key_value(sid) else {
            return Err(Reject::UnknownSession);
        };
        if s.client != client {
            return Err(Reject::WrongClient);
        }
        if !s.served {
            return Err(if s.expired(now_ms) {
                Reject::UnknownSession
            } else {
                Reject::NotServed
            });
        }
        if !served && !s.live(now_ms) {
            return Err(Reject::UnknownSession);
        }
        let id = id.clone();
        let s = self.by_id.get_mut(&id).ok_or(Reject::UnknownSession)?;
        if served {
            s.last_ms = now_ms;
        }
        Ok(Opened {
            id,
            num: s.num,
            group: s.group.clone(),
        })
    }

    /// Accepts one CMCD report of session `at` (from [`Sessions::open`] or
    /// [`Sessions::find`]) received at `now_ms`: a `beacon` identical to one
    /// accepted within the window is refused (a request's CMCD cannot be
    /// replayed without the request being served again); otherwise it is a
    /// new sample unless the session already has one in this interval.
    pub fn accept(
        &mut self,
        at: &Opened,
        c: &Cmcd,
        beacon: bool,
        now_ms: u64,
    ) -> Result<Accepted, Reject> {
        let digest = beacon.then(|| self.hasher.hash_one(c.encode()));
        let s = self.by_id.get_mut(&at.id).ok_or(Reject::UnknownSession)?;
        if let Some(digest) = digest {
            let cutoff = now_ms.saturating_sub(WINDOW_MS);
            while s.recent.front().is_some_and(|(_, t)| *t < cutoff) {
                s.recent.pop_front();
            }
            if s.recent.iter().any(|(d, _)| *d == digest) {
                return Err(Reject::Duplicate);
            }
            if s.recent.len() == RECENT {
                s.recent.pop_front();
            }
            s.recent.push_back((digest, now_ms));
        }
        let slot = now_ms / SLOT_MS;
        let slot = match s.slot {
            Some((n, taken)) if n == slot => Slot::Merge(taken),
            _ => {
                s.slot = Some((slot, now_ms));
                Slot::New
            }
        };
        Ok(Accepted {
            num: s.num,
            group: s.group.clone(),
            slot,
        })
    }
}

fn unknown() -> Arc<str> {
    Arc::from(super::qoe::UNKNOWN_GROUP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SessionLimits {
        SessionLimits {
            max_sessions: 100,
            per_client: 3,
            prefix_v4: 32,
            prefix_v6: 64,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn report(bl: u64) -> Cmcd {
        Cmcd {
            bl: Some(bl),
            ..Cmcd::default()
        }
    }

    #[test]
    fn a_session_is_its_clients_and_counts_each_report_once() {
        let mut t = Sessions::new(limits());
        let a = t.client(ip("10.0.0.1"));
        let b = t.client(ip("10.0.0.2"));
        let paris: Arc<str> = Arc::from("u09t");
        let s = t.open(None, a, Some(paris.clone()), Kind::Flv, 0).unwrap();
        assert_eq!(s.id.len(), 32);
        assert_eq!(s.group, paris);
        // No sid, an unknown one, another client's.
        assert_eq!(t.find(None, a, false, 10), Err(Reject::NoSession));
        assert_eq!(t.find(Some("x"), a, false, 10), Err(Reject::UnknownSession));
        assert_eq!(t.find(Some(&s.id), b, false, 10), Err(Reject::WrongClient));
        let found = t.find(Some(&s.id), a, false, 10).unwrap();
        assert_eq!(found, s);
        // Counted once: the replay is a duplicate; another report in the
        // same second merges; the next second is a new sample.
        assert_eq!(
            t.accept(&found, &report(100), true, 1_000).unwrap().slot,
            Slot::New
        );
        assert_eq!(
            t.accept(&found, &report(100), true, 1_100),
            Err(Reject::Duplicate)
        );
        assert_eq!(
            t.accept(&found, &report(200), true, 1_200).unwrap().slot,
            Slot::Merge(1_000)
        );
        assert_eq!(
            t.accept(&found, &report(300), true, 2_000).unwrap().slot,
            Slot::New
        );
        // Still a duplicate within the window, not after it.
        assert_eq!(
            t.accept(&found, &report(100), true, 9_000),
            Err(Reject::Duplicate)
        );
        assert_eq!(
            t.accept(&found, &report(100), true, 12_000).unwrap().slot,
            Slot::New
        );
        // Closed: usable for the grace, then gone.
        t.close(&s.id, 20_000);
        assert!(t.find(Some(&s.id), a, false, 20_000 + GRACE_MS).is_ok());
        assert_eq!(
            t.find(Some(&s.id), a, false, 20_001 + GRACE_MS),
            Err(Reject::UnknownSession)
        );
        t.sweep(20_001 + GRACE_MS);
        assert!(t.is_empty());
    }

    #[test]
    fn offered_ids_are_adopted_unless_another_client_holds_them() {
        let mut t = Sessions::new(limits());
        let a = t.client(ip("10.0.0.1"));
        let b = t.client(ip("10.0.0.2"));
        let s = t.open(Some("player-1"), a, None, Kind::Hls, 0).unwrap();
        assert_eq!(&*s.id, "player-1");
        assert_eq!(&*s.group, "unknown");
        // The same player later, located: same session, group learnt.
        let again = t
            .open(Some("player-1"), a, Some(Arc::from("u09t")), Kind::Hls, 500)
            .unwrap();
        assert_eq!((again.num, &*again.group), (s.num, "u09t"));
        // Another client offering it gets a fresh id.
        let other = t.open(Some("player-1"), b, None, Kind::Flv, 600).unwrap();
        assert_ne!(&*other.id, "player-1");
        // Ids that cannot go into a header are not adopted.
        let odd = t.open(Some("a b\"c"), a, None, Kind::Flv, 700).unwrap();
        assert_ne!(&*odd.id, "a b\"c");
        // HLS: live while requested, then the grace.
        assert!(t.find(Some("player-1"), a, true, 20_000).is_ok());
        assert!(
            t.find(Some("player-1"), a, false, 20_000 + GRACE_MS)
                .is_ok()
        );
        assert!(
            t.find(Some("player-1"), a, false, 20_001 + GRACE_MS)
                .is_err()
        );
    }

    #[test]
    fn pending_sessions_count_once_served() {
        let mut t = Sessions::new(limits());
        let a = t.client(ip("10.0.0.1"));
        let id = t.issue_pending(a, Arc::from("u09t"), 0).unwrap();
        assert_eq!(t.find(Some(&id), a, false, 10), Err(Reject::NotServed));
        assert_eq!(t.group_of(Some(&id), a).as_deref(), Some("u09t"));
        assert_eq!(t.group_of(Some(&id), t.client(ip("10.0.0.2"))), None);
        let s = t.open(Some(&id), a, None, Kind::Flv, 20).unwrap();
        assert_eq!((&*s.id, &*s.group), (&*id, "u09t"));
        assert!(t.find(Some(&id), a, false, 30).is_ok());
        // A page whose player never starts is forgotten.
        let idle = t.issue_pending(a, Arc::from("u09t"), 0).unwrap();
        t.sweep(PENDING_TTL_MS + 1);
        assert_eq!(
            t.find(Some(&idle), a, false, PENDING_TTL_MS + 1),
            Err(Reject::UnknownSession)
        );
    }

    #[test]
    fn sessions_are_bounded_per_client_and_in_total() {
        let mut t = Sessions::new(limits());
        let a = t.client(ip("10.0.0.1"));
        let ids: Vec<Opened> = (0..3)
            .map(|i| t.open(None, a, None, Kind::Flv, i).unwrap())
            .collect();
        // Three live sessions: the fourth is not tracked.
        assert_eq!(
            t.open(None, a, None, Kind::Flv, 10),
            Err(Reject::SessionLimit)
        );
        // One ends and its grace passes: it makes room.
        t.close(&ids[0].id, 20);
        assert!(t.open(None, a, None, Kind::Flv, 21 + GRACE_MS).is_ok());
        assert_eq!(t.len(), 3);
        // Other clients are not affected; the table as a whole is bounded.
        let mut t = Sessions::new(SessionLimits {
            max_sessions: 2,
            ..limits()
        });
        for i in 0..2u8 {
            let c = t.client(IpAddr::from([10, 0, 1, i]));
            t.open(None, c, None, Kind::Flv, 0).unwrap();
        }
        let c = t.client(ip("10.0.2.1"));
        assert_eq!(
            t.open(None, c, None, Kind::Flv, 0),
            Err(Reject::SessionLimit)
        );
        assert_eq!(t.issue_pending(c, Arc::from("x"), 0), None);
    }
}
