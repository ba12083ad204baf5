//! LL-HLS on the media port: `GET /{app}/{stream}/master.m3u8` (the
//! multivariant playlist, with `EXT-X-CONTENT-STEERING` when a steering
//! server is configured), `GET /{app}/{stream}/index.m3u8` (blocking
//! reload with `_HLS_msn`/`_HLS_part`), `init{v}.mp4`, `seg{msn}.m4s`
//! (whole segments, for plain HLS clients) and `seg{msn}.{part}.m4s` (parts;
//! the preload-hinted part blocks until it is complete). Every answer is a
//! shared buffer of the stream's segmenter ([`crate::hls`]); CMCD in the
//! query or headers of served requests feeds the per-group aggregates when
//! it names a session ([`crate::relay::sessions`]): a playlist with the
//! player's `sid` opens it (answered with `X-Vantage-Session`).

use super::viewer_cmcd::session_header;
use super::*;
use crate::hls::{HlsStream, State};
use crate::relay::admit::PlayRefused;

/// What an HLS request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HlsFile {
    Multivariant,
    Playlist,
    Init(u32),
    Part(u64, usize),
    Segment(u64),
}

impl HlsFile {
    fn kind(self) -> &'static str {
        match self {
            HlsFile::Multivariant => "multivariant",
            HlsFile::Playlist => "playlist",
            HlsFile::Init(_) => "init",
            HlsFile::Part(..) => "part",
            HlsFile::Segment(_) => "segment",
        }
    }
}

/// `/{app}/{stream}/{file}` → (key, file) for HLS file names.
pub(super) fn hls_path(path: &str) -> Option<(Result<StreamKey, String>, Option<HlsFile>)> {
    let (key, file) = path.strip_prefix('/')?.rsplit_once('/')?;
    if !(file.ends_with(".m3u8") || file.ends_with(".mp4") || file.ends_with(".m4s")) {
        return None;
    }
    let key = StreamKey::parse(key).map_err(|e| e.to_string());
    Some((key, parse_file(file)))
}

fn parse_file(f: &str) -> Option<HlsFile> {
    if f == "index.m3u8" {
        return Some(HlsFile::Playlist);
    }
    if f == "master.m3u8" {
        return Some(HlsFile::Multivariant);
    }
    if let Some(v) = f.strip_prefix("init").and_then(|r| r.strip_suffix(".mp4")) {
        return v.parse().ok().map(HlsFile::Init);
    }
    let rest = f.strip_prefix("seg")?.strip_suffix(".m4s")?;
    match rest.split_once('.') {
        Some((msn, part)) => Some(HlsFile::Part(msn.parse().ok()?, part.parse().ok()?)),
        None => rest.parse().ok().map(HlsFile::Segment),
    }
}

/// `_HLS_msn` and `_HLS_part` of a playlist request.
fn blocking_query(q: Option<&str>) -> (Option<u64>, Option<usize>) {
    let mut msn = None;
    let mut part = None;
    for pair in q.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("_HLS_msn", v)) => msn = v.parse().ok(),
            Some(("_HLS_part", v)) => part = v.parse().ok(),
            _ => {}
        }
    }
    (msn, part)
}

/// `lat`/`lon` of a request (what `/play` adds), for the steering URI.
fn location_query(q: Option<&str>) -> Option<(f64, f64)> {
    let (mut lat, mut lon) = (None, None);
    for pair in q.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("lat", v)) => lat = v.parse::<f64>().ok(),
            Some(("lon", v)) => lon = v.parse::<f64>().ok(),
            _ => {}
        }
    }
    match (lat, lon) {
        (Some(a), Some(o))
            if a.is_finite() && o.is_finite() && a.abs() <= 90.0 && o.abs() <= 180.0 =>
        {
            Some((a, o))
        }
        _ => None,
    }
}

fn media(bytes: Bytes, content_type: &'static str, cache: &'static str) -> Resp {
    let mut r = Response::new(MediaBody::Full(Some(bytes)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

impl Relay {
    #[instrument(name = "hls", skip_all, fields(stream = %key))]
    pub(super) async fn hls(
        &self,
        req: Request<Incoming>,
        key: StreamKey,
        file: HlsFile,
        peer: std::net::IpAddr,
    ) -> Resp {
        let cmcd = self.request_cmcd(&req);
        let located: Option<Arc<str>> = qoe::group_from_query(req.uri().query()).map(Arc::from);
        let (msn, part) = blocking_query(req.uri().query());
        let location = location_query(req.uri().query());
        drop(req);
        let playlist = matches!(file, HlsFile::Playlist | HlsFile::Multivariant);
        let mut resp = if self.is_draining() && playlist && msn.is_none() {
            draining(self.node_id(), &key)
        } else {
            match file {
                HlsFile::Multivariant => self.multivariant(&key, location).await,
                _ => {
                    let hs = self.hls_stream(&key);
                    self.hls_answer(&hs, &key, file, msn, part).await
                }
            }
        };
        // CMCD counts for served requests only: a playlist carrying the
        // player's session id opens (or renews) its session, other files
        // count for the session their sid names.
        let sid = cmcd.as_ref().and_then(|c| c.sid());
        if !resp.status().is_success() {
            self.unserved_cmcd(cmcd.as_ref());
        } else if playlist && sid.is_some() {
            if let Some(s) = self.open_session(peer, located, cmcd.as_ref(), Kind::Hls) {
                session_header(&mut resp, &s.id);
            }
        } else {
            self.session_request(peer, cmcd.as_ref());
        }
        self.metrics()
            .hls_request(file.kind(), resp.status().as_u16());
        resp
    }

    /// The multivariant playlist: waits for the stream's first segment (as
    /// the media playlist does) and announces its measured bit rate.
    async fn multivariant(&self, key: &StreamKey, location: Option<(f64, f64)>) -> Resp {
        let cfg = self.config();
        let hs = self.hls_stream(key);
        let bps = hs
            .wait(cfg.play_wait, |st| {
                let s = st.seg.as_ref()?;
                let (bytes, ms) =
                    s.segments()
                        .iter()
                        .filter(|g| g.complete)
                        .fold((0usize, 0i64), |(b, m), g| {
                            (
                                b + g.parts.iter().map(|p| p.data.len()).sum::<usize>(),
                                m + g.duration_ms(),
                            )
                        });
                (ms > 0).then(|| (bytes as u64 * 8 * 1000) / ms.max(1) as u64)
            })
            .await;
        match bps {
            Ok(Some(bps)) => media(
                Bytes::from(crate::hls::playlist::multivariant(
                    key.as_str(),
                    self.node_id(),
                    bps,
                    cfg.steering_url.as_deref(),
                    location,
                )),
                "application/vnd.apple.mpegurl",
                "no-cache",
            ),
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                format!("{key}: no complete segment yet"),
            ),
            Err(r) => refused(&r, key, cfg.play_wait),
        }
    }

    async fn hls_answer(
        &self,
        hs: &HlsStream,
        key: &StreamKey,
        file: HlsFile,
        msn: Option<u64>,
        part: Option<usize>,
    ) -> Resp {
        let cfg = self.config();
        let part_ms = cfg.hls_part_target;
        let waited = match file {
            HlsFile::Multivariant => return self.multivariant(key, None).await,
            HlsFile::Playlist => {
                // The first playlist of a stream waits for its first
                // complete segment: plain HLS clients (ffmpeg) only play
                // segments, and find none in a playlist of parts only.
                let first = hs
                    .wait(cfg.play_wait, |st| {
                        let s = st.seg.as_ref()?;
                        s.segments().iter().any(|g| g.complete).then_some(())
                    })
                    .await;
                if let Err(r) = first {
                    return refused(&r, key, cfg.play_wait);
                }
                if let Some(m) = msn {
                    let next = lock(&hs.state)
                        .seg
                        .as_ref()
                        .and_then(|s| s.segments().back().map(|g| g.msn))
                        .unwrap_or(0);
                    if m > next + 2 {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("_HLS_msn={m} is too far ahead of the live segment {next}"),
                        );
                    }
                }
                // Blocking reload: hold until that part exists (at most
                // three part targets past a segment's worth).
                let hold = Duration::from_secs(3) + part_ms * 3;
                hs.wait(hold, |st: &State| {
                    let ready = match (msn, &st.seg) {
                        (Some(m), Some(s)) => s.has_part(m, part),
                        _ => true,
                    };
                    ready.then(|| st.playlist.clone()).flatten()
                })
                .await
                .map(|p| {
                    p.or_else(|| lock(&hs.state).playlist.clone())
                        .map(|b| media(b, "application/vnd.apple.mpegurl", "no-cache"))
                })
            }
            HlsFile::Init(v) => hs
                .wait(cfg.play_wait, |st| {
                    st.seg.as_ref().and_then(|s| s.init(v).cloned())
                })
                .await
                .map(|b| b.map(|b| media(b, "video/mp4", "max-age=60"))),
            HlsFile::Part(m, p) => hs
                .wait(Duration::from_secs(2) + part_ms * 3, |st| {
                    let s = st.seg.as_ref()?;
                    if s.segments().front().is_some_and(|g| m < g.msn) {
                        return Some(None);
                    }
                    let g = s.segments().iter().find(|g| g.msn == m)?;
                    match g.parts.get(p) {
                        Some(part) => Some(Some(part.data.clone())),
                        None if g.complete => Some(None),
                        None => None,
                    }
                })
                .await
                .map(|b| b.flatten().map(|b| media(b, "video/mp4", "max-age=60"))),
            HlsFile::Segment(m) => hs
                .wait(Duration::from_secs(6), |st| {
                    let s = st.seg.as_ref()?;
                    if s.segments().front().is_some_and(|g| m < g.msn) {
                        return Some(None);
                    }
                    let g = s.segments().iter().find(|g| g.msn == m)?;
                    g.whole.clone().map(Some)
                })
                .await
                .map(|b| b.flatten().map(|b| media(b, "video/mp4", "max-age=60"))),
        };
        match waited {
            Ok(Some(r)) => r,
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                format!(
                    "{key}: no such HLS {} (not made, or no longer held)",
                    file.kind()
                ),
            ),
            Err(r) => refused(&r, key, cfg.play_wait),
        }
    }
}

fn refused(r: &PlayRefused, key: &StreamKey, wait: Duration) -> Resp {
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::NOT_FOUND);
    error(status, r.message(key, wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hls_paths() {
        assert_eq!(parse_file("seg12.3.m4s"), Some(HlsFile::Part(12, 3)));
        assert_eq!(parse_file("seg12.m4s"), Some(HlsFile::Segment(12)));
        assert_eq!(parse_file("init0.mp4"), Some(HlsFile::Init(0)));
        assert_eq!(parse_file("index.m3u8"), Some(HlsFile::Playlist));
        assert_eq!(parse_file("master.m3u8"), Some(HlsFile::Multivariant));
        assert_eq!(
            location_query(Some("lat=48.8&lon=2.3&x=1")),
            Some((48.8, 2.3))
        );
        assert_eq!(location_query(Some("lat=91&lon=2.3")), None);
        assert_eq!(location_query(Some("lat=NaN&lon=2.3")), None);
        assert_eq!(parse_file("segx.m4s"), None);
        let (k, f) = hls_path("/live/x/index.m3u8").unwrap();
        assert_eq!(k.unwrap().as_str(), "live/x");
        assert_eq!(f, Some(HlsFile::Playlist));
        assert!(hls_path("/live/x.flv").is_none());
        assert_eq!(
            blocking_query(Some("_HLS_msn=7&_HLS_part=2&CMCD=bl%3D100")),
            (Some(7), Some(2))
        );
    }
}
