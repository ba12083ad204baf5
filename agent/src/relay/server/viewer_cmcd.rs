//! CMCD on the media port: what a play request carries (the `CMCD=` query
//! parameter or `CMCD-*` headers), recorded against the viewer's client
//! group, and `POST /v1/cmcd` beacons.

use super::*;

impl Relay {
    /// CMCD of a play request (query and headers), counted.
    pub(super) fn request_cmcd(&self, req: &Request<Incoming>) -> Option<Cmcd> {
        let mut out: Option<Cmcd> = None;
        if let Some(q) = req.uri().query() {
            match cmcd::parse_query(q) {
                Ok(Some(p)) => {
                    self.metrics().cmcd("query", "ok");
                    out = Some(p.cmcd);
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
            Ok(Some(p)) => {
                self.metrics().cmcd("headers", "ok");
                match &mut out {
                    Some(c) => c.merge(p.cmcd),
                    None => out = Some(p.cmcd),
                }
            }
            Ok(None) => {}
            Err(e) => {
                debug!(error = %e, "bad CMCD headers");
                self.metrics().cmcd("headers", "invalid");
            }
        }
        out
    }

    /// Records CMCD for a group; returns the group to use.
    pub(super) fn record_cmcd(&self, located: Option<String>, c: Option<&Cmcd>) -> Arc<str> {
        let now = self.clock_ms();
        let mut q = lock(&self.inner.qoe);
        let sid = c.and_then(|c| c.sid.as_deref());
        let group: Arc<str> = match (located, sid.and_then(|s| q.group_of_sid(s))) {
            (Some(g), _) => Arc::from(g),
            (None, Some(g)) => g,
            (None, None) => Arc::from(UNKNOWN_GROUP),
        };
        if let Some(s) = sid
            && &*group != UNKNOWN_GROUP
        {
            q.remember_sid(s, &group, now);
        }
        if let Some(sample) = c.and_then(|c| Sample::from_cmcd(c, now)) {
            q.record(&group, sample);
        }
        group
    }

    pub(super) async fn beacon(&self, req: Request<Incoming>) -> Resp {
        let located = qoe::group_from_query(req.uri().query());
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
        match parsed {
            Ok(items) => {
                self.metrics().cmcd("beacon", "ok");
                for p in &items {
                    self.record_cmcd(located.clone(), Some(&p.cmcd));
                }
                let mut r = Response::new(MediaBody::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r.headers_mut().insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
                r
            }
            Err(e) => {
                self.metrics().cmcd("beacon", "invalid");
                error(StatusCode::BAD_REQUEST, format!("bad CMCD beacon: {e}"))
            }
        }
    }
}
