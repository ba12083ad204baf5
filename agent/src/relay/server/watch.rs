//! The watch page: `GET /watch/{app}/{stream}[?via=hls|flv]`, a small
//! self-contained page that plays the stream with hls.js (LL-HLS, CMCD in
//! every request) or mpegts.js (HTTP-FLV, CMCD beacons), both vendored in
//! `agent/assets/player/` (licenses and attribution there) and served from
//! `/watch/assets/`: the page works offline. Each page names a new viewer
//! session ([`crate::relay::sessions`], pending until its player is
//! served) that its player offers as CMCD `sid` and its beacons carry.

use super::*;

const PAGE: &[u8] = include_bytes!("../../../assets/player/watch.html");
const HLS_JS: &[u8] = include_bytes!("../../../assets/player/hls.min.js");
const MPEGTS_JS: &[u8] = include_bytes!("../../../assets/player/mpegts.js");

fn asset(body: &'static [u8], content_type: &'static str, cache: &'static str) -> Resp {
    let mut r = Response::new(MediaBody::Full(Some(Bytes::from_static(body))));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// Where the page names its session id (the served page has it replaced).
const SESSION_PLACEHOLDER: &str = "{{VANTAGE_SESSION}}";

/// The answer to a `GET /watch/...` path; `session` makes the id of the
/// page's viewer session (none: the page's player offers its own).
pub(super) fn watch(path: &str, session: impl FnOnce() -> Option<Arc<str>>) -> Resp {
    let Some(rest) = path.strip_prefix("/watch/") else {
        return error(StatusCode::NOT_FOUND, "no such page");
    };
    match rest {
        "assets/hls.min.js" => asset(HLS_JS, "text/javascript", "max-age=86400"),
        "assets/mpegts.js" => asset(MPEGTS_JS, "text/javascript", "max-age=86400"),
        key => match StreamKey::parse(key) {
            Ok(_) => {
                let id = session();
                let page = String::from_utf8_lossy(PAGE)
                    .replace(SESSION_PLACEHOLDER, id.as_deref().unwrap_or(""));
                let mut r = Response::new(MediaBody::Full(Some(Bytes::from(page))));
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                if let Some(id) = id {
                    viewer_cmcd::session_header(&mut r, &id);
                }
                r
            }
            Err(e) => error(
                StatusCode::NOT_FOUND,
                format!("no such page: /watch/{{app}}/{{stream}} with a valid stream key ({e})"),
            ),
        },
    }
}

impl Relay {
    /// `GET /watch/...`: a stream's page names a new (pending) viewer
    /// session of `peer`, located by the page's `lat`/`lon` if any.
    pub(super) fn watch(&self, path: &str, query: Option<&str>, peer: std::net::IpAddr) -> Resp {
        watch(path, || {
            let group: Arc<str> =
                qoe::group_from_query(query).map_or_else(|| Arc::from(UNKNOWN_GROUP), Arc::from);
            let now = self.clock_ms();
            let mut s = lock(&self.inner.sessions);
            let client = s.client(peer);
            let id = s.issue_pending(client, group, now);
            self.metrics().cmcd_sessions.set(s.len() as i64);
            id
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_assets() {
        let id = || Some(Arc::from("0123456789abcdef0123456789abcdef"));
        let page = watch("/watch/live/x", id);
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers().get("x-vantage-session").unwrap(),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            watch("/watch/assets/hls.min.js", id).status(),
            StatusCode::OK
        );
        assert_eq!(
            watch("/watch/assets/mpegts.js", id).status(),
            StatusCode::OK
        );
        assert_eq!(watch("/watch/live", id).status(), StatusCode::NOT_FOUND);
        assert_eq!(watch("/watch/a/b/c", id).status(), StatusCode::NOT_FOUND);
        let page = std::str::from_utf8(PAGE).unwrap();
        assert!(!page.contains("https://"), "no external fetches");
        assert_eq!(page.matches(SESSION_PLACEHOLDER).count(), 1);
    }
}
