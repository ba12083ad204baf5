//! The watch page: `GET /watch/{app}/{stream}[?via=hls|flv]`, a small
//! self-contained page that plays the stream with hls.js (LL-HLS, CMCD in
//! every request) or mpegts.js (HTTP-FLV, CMCD beacons), both vendored in
//! `agent/assets/player/` (licenses and attribution there) and served from
//! `/watch/assets/`: the page works offline.

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

/// The answer to a `GET /watch/...` path.
pub(super) fn watch(path: &str) -> Resp {
    let Some(rest) = path.strip_prefix("/watch/") else {
        return error(StatusCode::NOT_FOUND, "no such page");
    };
    match rest {
        "assets/hls.min.js" => asset(HLS_JS, "text/javascript", "max-age=86400"),
        "assets/mpegts.js" => asset(MPEGTS_JS, "text/javascript", "max-age=86400"),
        key => match StreamKey::parse(key) {
            Ok(_) => asset(PAGE, "text/html; charset=utf-8", "no-cache"),
            Err(e) => error(
                StatusCode::NOT_FOUND,
                format!("no such page: /watch/{{app}}/{{stream}} with a valid stream key ({e})"),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_assets() {
        assert_eq!(watch("/watch/live/x").status(), StatusCode::OK);
        assert_eq!(watch("/watch/assets/hls.min.js").status(), StatusCode::OK);
        assert_eq!(watch("/watch/assets/mpegts.js").status(), StatusCode::OK);
        assert_eq!(watch("/watch/live").status(), StatusCode::NOT_FOUND);
        assert_eq!(watch("/watch/a/b/c").status(), StatusCode::NOT_FOUND);
        let page = std::str::from_utf8(PAGE).unwrap();
        assert!(!page.contains("https://"), "no external fetches");
    }
}
