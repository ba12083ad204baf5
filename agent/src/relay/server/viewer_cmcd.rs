//! CMCD on the media port: what a request carries (the `CMCD=` query
//! parameter or `CMCD-*` headers) and `POST /v1/cmcd` beacons, counted
//! against the viewer session they belong to ([`crate::relay::sessions`]):
//! only reports of sessions this edge serves, from their own client, once.

use super::*;
use crate::relay::sessions::{Kind, Opened, Reject, SESSION_HEADER, Slot};
use std::net::IpAddr;
use std::sync::Weak;

/// CMCD of a request and where it came from.
#[derive(Debug)]
pub(super) struct RequestCmcd {
    pub cmcd: Cmcd,
    query: bool,
    headers: bool,
}

impl RequestCmcd {
    fn sources(&self) -> impl Iterator<Item = &'static str> {
        [(self.query, "query"), (self.headers, "headers")]
            .into_iter()
            .filter_map(|(present, s)| present.then_some(s))
    }

    pub fn sid(&self) -> Option<&str> {
        self.cmcd.sid.as_deref()
    }
}

/// Ends an FLV connection's hold on its session when the viewer goes
/// (held by its [`ViewerSlot`]).
pub struct SessionGuard {
    relay: Weak<crate::relay::Shared>,
    id: Arc<str>,
}

impl std::fmt::Debug for SessionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGuard")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.relay.upgrade() {
            let relay = Relay { inner };
            let now = relay.clock_ms();
            lock(&relay.inner.sessions).close(&self.id, now);
        }
    }
}

/// Sets `X-Vantage-Session` (and lets browsers read it).
pub(super) fn session_header(r: &mut Resp, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        let h = r.headers_mut();
        h.insert(SESSION_HEADER, v);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(SESSION_HEADER),
        );
    }
}

impl Relay {
    /// CMCD of a request (query and headers); malformed parts are counted
    /// and left out.
    pub(super) fn request_cmcd(&self, req: &Request<Incoming>) -> Option<RequestCmcd> {
        let mut out: Option<RequestCmcd> = None;
        if let Some(q) = req.uri().query() {
            match cmcd::parse_query(q) {
                Ok(Some(p)) => {
                    out = Some(RequestCmcd {
                        cmcd: p.cmcd,
                        query: true,
                        headers: false,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    debug!(error = %e, "bad CMCD query");
                    self.metrics().cmcd("query", "invalid");
                }
            }
        }
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()));
        match cmcd::parse_headers(headers) {
            Ok(Some(p)) => match &mut out {
                Some(c) => {
                    c.cmcd.merge(p.cmcd);
                    c.headers = true;
                }
                None => {
                    out = Some(RequestCmcd {
                        cmcd: p.cmcd,
                        query: false,
                        headers: true,
                    });
                }
            },
            Ok(None) => {}
            Err(e) => {
                debug!(error = %e, "bad CMCD headers");
                self.metrics().cmcd("headers", "invalid");
            }
        }
        out
    }

    /// The group of `peer`'s session named `sid` (a watch page's too), if
    /// any.
    pub(super) fn session_group(&self, sid: Option<&str>, peer: IpAddr) -> Option<Arc<str>> {
        let s = lock(&self.inner.sessions);
        s.group_of(sid, s.client(peer))
    }

    /// A served FLV play or HLS playlist of `peer`: opens (or renews) its
    /// session and counts its CMCD. `None` when no session could be kept
    /// (the client's sessions are all live; its CMCD does not count).
    pub(super) fn open_session(
        &self,
        peer: IpAddr,
        located: Option<Arc<str>>,
        c: Option<&RequestCmcd>,
        kind: Kind,
    ) -> Option<Opened> {
        let now = self.clock_ms();
        let opened = {
            let mut s = lock(&self.inner.sessions);
            let client = s.client(peer);
            let r = s.open(c.and_then(RequestCmcd::sid), client, located, kind, now);
            self.metrics().cmcd_sessions.set(s.len() as i64);
            r
        };
        if let Some(c) = c {
            self.count_request(c, opened.as_ref().map_err(|r| *r));
        }
        opened.ok()
    }

    /// A served HLS request that opens nothing (init, part, segment): its
    /// CMCD counts for the session its `sid` names, which it renews.
    pub(super) fn session_request(&self, peer: IpAddr, c: Option<&RequestCmcd>) {
        let Some(c) = c else { return };
        let now = self.clock_ms();
        let found = {
            let mut s = lock(&self.inner.sessions);
            let client = s.client(peer);
            s.find(c.sid(), client, true, now)
        };
        self.count_request(c, found.as_ref().map_err(|r| *r));
    }

    /// A request that was not served (404, 502, 503…): its CMCD does not
    /// count.
    pub(super) fn unserved_cmcd(&self, c: Option<&RequestCmcd>) {
        if let Some(c) = c {
            self.count_request(c, Err(Reject::NotServed));
        }
    }

    fn count_request(&self, c: &RequestCmcd, session: Result<&Opened, Reject>) {
        let result = session.and_then(|o| self.count_report(o, &c.cmcd, false));
        for source in c.sources() {
            match result {
                Ok(r) => self.metrics().cmcd(source, r),
                Err(reason) => self.metrics().cmcd_rejected(source, reason),
            }
        }
    }

    /// Counts one report of session `at`: `ok` (a new sample, or no buffer
    /// data in it), `merged` (into the session's sample of this interval).
    fn count_report(&self, at: &Opened, c: &Cmcd, beacon: bool) -> Result<&'static str, Reject> {
        let now = self.clock_ms();
        let accepted = lock(&self.inner.sessions).accept(at, c, beacon, now)?;
        let Some(sample) = Sample::from_cmcd(c, accepted.num, now) else {
            return Ok("ok");
        };
        let mut q = lock(&self.inner.qoe);
        match accepted.slot {
            Slot::New => {
                q.record(&accepted.group, sample);
                Ok("ok")
            }
            Slot::Merge(taken) => {
                if sample.stalled {
                    q.mark_stalled(&accepted.group, accepted.num, taken);
                }
                Ok("merged")
            }
        }
    }

    /// Forgets sessions past their grace and beacon buckets of quiet
    /// clients (housekeeping).
    pub(crate) fn sweep_sessions(&self) {
        let now = self.clock_ms();
        let n = {
            let mut s = lock(&self.inner.sessions);
            s.sweep(now);
            s.len()
        };
        self.metrics().cmcd_sessions.set(n as i64);
        lock(&self.inner.beacons).sweep(std::time::Instant::now());
    }

    /// A guard that ends `id`'s hold when dropped.
    pub(super) fn session_guard(&self, id: Arc<str>) -> SessionGuard {
        SessionGuard {
            relay: Arc::downgrade(&self.inner),
            id,
        }
    }

    /// `POST /v1/cmcd`: counts the reports of sessions this edge serves to
    /// this client. 204 when every report counted; 200 with a summary when
    /// some did; otherwise 403 (`no_session`, `unknown_session`,
    /// `wrong_client`, `not_served`), 409 (`duplicate`), 429 (rate limit,
    /// with `Retry-After`), 400 (malformed). JSON errors name the `reason`.
    pub(super) async fn beacon(&self, req: Request<Incoming>, peer: IpAddr) -> Resp {
        let client = lock(&self.inner.sessions).client(peer);
        let limited = lock(&self.inner.beacons).check(client, std::time::Instant::now());
        if let Err(wait) = limited {
            self.metrics().cmcd_rejected("beacon", Reject::RateLimited);
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut r = rejected(StatusCode::TOO_MANY_REQUESTS, Reject::RateLimited);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        let body = match read_limited(req.into_body(), cmcd::MAX_JSON_LEN).await {
            Ok(b) => b,
            Err(msg) => {
                self.metrics().cmcd("beacon", "invalid");
                return error(StatusCode::BAD_REQUEST, msg);
            }
        };
        let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
        let parsed = match first {
            Some(b'{') | Some(b'[') => cmcd::parse_json(&body),
            _ => match std::str::from_utf8(&body) {
                Ok(text) => cmcd::parse(text.trim()).map(|p| vec![p]),
                Err(_) => Err(cmcd::CmcdError::BadEncoding),
            },
        };
        let items = match parsed {
            Ok(items) => items,
            Err(e) => {
                self.metrics().cmcd("beacon", "invalid");
                return error(StatusCode::BAD_REQUEST, format!("bad CMCD beacon: {e}"));
            }
        };
        let mut counted = 0usize;
        let mut refused: Vec<Reject> = Vec::new();
        for p in &items {
            let now = self.clock_ms();
            let found = lock(&self.inner.sessions).find(p.cmcd.sid.as_deref(), client, false, now);
            match found.and_then(|o| self.count_report(&o, &p.cmcd, true)) {
                Ok(result) => {
                    self.metrics().cmcd("beacon", result);
                    counted += 1;
                }
                Err(reason) => {
                    self.metrics().cmcd_rejected("beacon", reason);
                    refused.push(reason);
                }
            }
        }
        match (counted, refused.first()) {
            (_, None) => {
                let mut r = Response::new(MediaBody::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r.headers_mut().insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
                r
            }
            (0, Some(&reason)) => {
                debug!(%peer, reason = reason.label(), "CMCD beacon not counted");
                let status = if reason == Reject::Duplicate {
                    StatusCode::CONFLICT
                } else {
                    StatusCode::FORBIDDEN
                };
                rejected(status, reason)
            }
            (n, Some(_)) => {
                let mut reasons = serde_json::Map::new();
                for r in &refused {
                    let e = reasons
                        .entry(r.label())
                        .or_insert(serde_json::Value::from(0u64));
                    *e = serde_json::Value::from(e.as_u64().unwrap_or(0) + 1);
                }
                json(
                    StatusCode::OK,
                    &serde_json::json!({"counted": n, "rejected": reasons}),
                )
            }
        }
    }
}

fn rejected(status: StatusCode, reason: Reject) -> Resp {
    json(
        status,
        &serde_json::json!({"error": reason.message(), "reason": reason.label()}),
    )
}
