//! Viewer routing endpoints (DESIGN §8):
//!
//! * `GET /v1/resolve?stream=app/name[&lat=&lon=][&ip=][&n=]` — ranked
//!   eligible edges with URL, score and each term's contribution and source;
//! * `GET /play/{app}/{stream}.flv?...` — `302` to the chosen edge's
//!   `/{app}/{stream}.flv`, query string preserved (plus `lat`/`lon` when the
//!   location came from a header or GeoIP, so the edge groups the viewer the
//!   same way); `GET /play/{app}/{stream}.m3u8?...` the same to the edge's
//!   LL-HLS multivariant playlist `/{app}/{stream}/master.m3u8` (which
//!   names the steering manifest, `api::steering`);
//! * `GET /play/{app}/{stream}/comments?...` — `302` to the chosen edge's
//!   live comments WebSocket, `ws://` (or `wss://` for an `https` edge)
//!   `…/{app}/{stream}/comments`, same client groups. Browsers' WebSocket
//!   does not follow redirects: a page fetches this URL (or `/v1/resolve`,
//!   whose edges carry `comments_url`) and connects to the location.
//!
//! 400 for bad parameters, 404 when no origin is known for the stream, 503
//! with `Retry-After` when no edge is eligible. See `docs/viewer-routing.md`.

use super::ApiError;
use crate::app::App;
use crate::resolve::{Answer, LocationSource, Request, ResolveError};
use axum::Json;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use vantage_shared::clock::now_ms;
use vantage_shared::place::Coord;
use vantage_shared::stream::StreamKey;

pub(super) type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;
type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn parse_coord(lat: &str, lon: &str) -> Result<Coord, ApiError> {
    let lat: f64 = lat
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_request(format!("lat {lat:?} is not a number")))?;
    let lon: f64 = lon
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_request(format!("lon {lon:?} is not a number")))?;
    if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
        return Err(ApiError::bad_request(format!(
            "lat {lat} is outside -90..=90"
        )));
    }
    if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
        return Err(ApiError::bad_request(format!(
            "lon {lon} is outside -180..=180"
        )));
    }
    Coord::new(lat, lon).ok_or_else(|| ApiError::bad_request("invalid coordinates"))
}

/// `lat,lon` from the trusted location header; `None` when absent or
/// malformed (the proxy's problem, not the viewer's: counted as unknown).
fn header_coord(headers: &HeaderMap, name: Option<&str>) -> Option<Coord> {
    let v = headers.get(name?)?.to_str().ok()?;
    let (lat, lon) = v.split_once([',', ';', ' '])?;
    parse_coord(lat, lon).ok()
}

fn header_ip(headers: &HeaderMap, name: Option<&str>) -> Option<IpAddr> {
    let v = headers.get(name?)?.to_str().ok()?;
    v.split(',').next()?.trim().parse().ok()
}

/// [`request`] for the steering manifest.
pub(super) fn request_for(
    app: &App,
    q: &[(String, String)],
    headers: &HeaderMap,
    peer: &Peer,
    stream: StreamKey,
    n: usize,
) -> Result<Request, ApiError> {
    request(app, q, headers, peer, stream, n)
}

/// The resolve request for `stream` and `n` answers: the viewer's
/// location, its source and ASN from the query, headers and peer address.
fn request(
    app: &App,
    q: &[(String, String)],
    headers: &HeaderMap,
    peer: &Peer,
    stream: StreamKey,
    n: usize,
) -> Result<Request, ApiError> {
    let cfg = app.resolver.config();
    let ip = match param(q, "ip") {
        Some(s) => Some(
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| ApiError::bad_request(format!("ip {s:?} is not an IP address")))?,
        ),
        None => header_ip(headers, cfg.client_ip_header.as_deref())
            .or_else(|| peer.as_ref().map(|Extension(ConnectInfo(a))| a.ip())),
    };
    let (coord, source) = match (param(q, "lat"), param(q, "lon")) {
        (Some(lat), Some(lon)) => (Some(parse_coord(lat, lon)?), LocationSource::Query),
        (Some(_), None) | (None, Some(_)) => {
            return Err(ApiError::bad_request("lat and lon go together"));
        }
        (None, None) => match header_coord(headers, cfg.location_header.as_deref()) {
            Some(c) => (Some(c), LocationSource::Header),
            None => match ip.and_then(|ip| app.resolver.geoip().locate(ip)) {
                Some(c) => (Some(c), LocationSource::Geoip),
                None => (None, LocationSource::Unknown),
            },
        },
    };
    let asn = ip.and_then(|ip| app.resolver.geoip().asn(ip));
    Ok(Request {
        stream,
        coord,
        source,
        asn,
        n,
    })
}

pub(super) fn unavailable(app: &App, e: &ResolveError) -> Response {
    match e {
        ResolveError::UnknownStream(_) => {
            app.resolver.metrics.outcome("unknown_stream");
            ApiError::not_found(e.to_string()).into_response()
        }
        ResolveError::NoEligible { .. } => {
            app.resolver.metrics.outcome("unavailable");
            let retry = app.resolver.config().retry_after_s;
            let mut r = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": e.to_string(), "retry_after_s": retry })),
            )
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry));
            r
        }
    }
}

pub(super) fn bad(app: &App, e: ApiError) -> Response {
    app.resolver.metrics.outcome("bad_request");
    e.into_response()
}

/// Runs a resolve, counting and recording it. The client's reservation
/// budget decides whether the answer reserves load on the chosen edge.
fn run(app: &App, req: &Request, headers: &HeaderMap, peer: &Peer) -> Result<Answer, ResolveError> {
    let started = Instant::now();
    let ws = app.weights();
    let now = now_ms();
    let peer_addr = peer.as_ref().map(|Extension(ConnectInfo(a))| *a);
    let reserve = app
        .guard
        .may_reserve(super::guard::client_ip(app, headers, peer_addr));
    if !reserve {
        app.metrics.reservations_skipped.inc();
    }
    let out = app.resolver.resolve(
        req,
        &ws.weights,
        &app.config.ranges,
        now,
        &mut rand::rng(),
        reserve,
    );
    app.resolver
        .metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    if let Ok(a) = &out {
        app.resolver.metrics.outcome(match a.decision {
            crate::resolve::rank::Decision::Best => "best",
            crate::resolve::rank::Decision::Spread => "spread",
            crate::resolve::rank::Decision::Explore => "explore",
        });
    }
    if let Some(r) = &app.recorder {
        let answer = match &out {
            Ok(a) => json!({
                "group": a.group,
                "decision": a.decision,
                "edges": a.edges.iter().map(|e| json!({"node_id": &*e.node_id, "score": e.score})).collect::<Vec<_>>(),
            }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        r.resolve(now, request_json(req), answer);
    }
    out
}

fn request_json(req: &Request) -> Value {
    json!({
        "stream": req.stream.as_str(),
        "lat": req.coord.map(|c| c.lat),
        "lon": req.coord.map(|c| c.lon),
        "source": req.source,
        "asn": req.asn,
        "n": req.n,
    })
}

/// `GET /v1/resolve`.
pub async fn resolve(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    peer: Peer,
    query: Params,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return bad(&app, ApiError::bad_request(e.body_text())),
    };
    let Some(stream) = param(&q, "stream") else {
        return bad(&app, ApiError::bad_request("missing stream=app/name"));
    };
    let stream = match StreamKey::parse(stream) {
        Ok(k) => k,
        Err(e) => return bad(&app, ApiError::bad_request(e.to_string())),
    };
    let cfg = app.resolver.config();
    let n = match param(&q, "n") {
        None => cfg.default_n,
        Some(s) => match s.trim().parse::<usize>() {
            Ok(n) if (1..=cfg.max_n).contains(&n) => n,
            _ => {
                return bad(
                    &app,
                    ApiError::bad_request(format!(
                        "n {s:?} must be an integer in 1..={}",
                        cfg.max_n
                    )),
                );
            }
        },
    };
    let req = match request(&app, &q, &headers, &peer, stream, n) {
        Ok(r) => r,
        Err(e) => return bad(&app, e),
    };
    match run(&app, &req, &headers, &peer) {
        Ok(a) => Json(answer_body(&req, &a)).into_response(),
        Err(e) => unavailable(&app, &e),
    }
}

/// The `/v1/resolve` body, serialised straight to bytes (no `Value` tree:
/// this is the hot path of the benchmark).
#[derive(Serialize)]
struct AnswerBody<'a> {
    stream: &'a str,
    group: &'a str,
    location: LocationBody,
    decision: crate::resolve::rank::Decision,
    eligible: usize,
    bitrate_mbps: f64,
    edges: Vec<EdgeBody<'a>>,
}

#[derive(Serialize)]
struct LocationBody {
    source: LocationSource,
    lat: Option<f64>,
    lon: Option<f64>,
    asn: Option<u32>,
}

#[derive(Serialize)]
struct EdgeBody<'a> {
    node_id: &'a str,
    public_url: &'a str,
    url: String,
    comments_url: String,
    score: f64,
    basis: &'static str,
    group_samples: f64,
    terms: &'a [vantage_shared::score::Term],
}

/// The edge's URL of `stream`.
fn edge_url(public_url: &str, stream: &StreamKey) -> String {
    format!("{public_url}/{stream}.flv")
}

/// The edge's live comments WebSocket of `stream`.
pub fn edge_comments_url(public_url: &str, stream: &StreamKey) -> String {
    let ws = if let Some(rest) = public_url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = public_url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        public_url.to_owned()
    };
    format!("{}/{stream}/comments", ws.trim_end_matches('/'))
}

fn answer_body<'a>(req: &'a Request, a: &'a Answer) -> AnswerBody<'a> {
    AnswerBody {
        stream: req.stream.as_str(),
        group: &a.group,
        location: LocationBody {
            source: req.source,
            lat: req.coord.map(|c| c.lat),
            lon: req.coord.map(|c| c.lon),
            asn: req.asn,
        },
        decision: a.decision,
        eligible: a.eligible,
        bitrate_mbps: a.bitrate_mbps,
        edges: a
            .edges
            .iter()
            .map(|e| EdgeBody {
                node_id: &e.node_id,
                public_url: &e.public_url,
                url: edge_url(&e.public_url, &req.stream),
                comments_url: edge_comments_url(&e.public_url, &req.stream),
                score: e.score,
                basis: if e.measured() { "measured" } else { "modelled" },
                group_samples: e.group_samples,
                terms: &e.breakdown.terms,
            })
            .collect(),
    }
}

/// The edge's LL-HLS multivariant playlist of `stream` (it names the
/// media playlist and, when the agent has a steering URL, the steering
/// manifest).
fn edge_hls_url(public_url: &str, stream: &StreamKey) -> String {
    format!("{public_url}/{stream}/master.m3u8")
}

/// What a `/play` redirect points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Flv,
    Hls,
    Comments,
}

/// `GET /play/{app}/{stream}.flv` and `GET /play/{app}/{stream}.m3u8`.
pub async fn play(
    State(app): State<Arc<App>>,
    Path((app_name, file)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    peer: Peer,
    query: Params,
) -> Response {
    let (name, target) = match (file.strip_suffix(".flv"), file.strip_suffix(".m3u8")) {
        (Some(n), _) => (n, Target::Flv),
        (None, Some(n)) => (n, Target::Hls),
        (None, None) => {
            return bad(
                &app,
                ApiError::bad_request(
                    "play path must be /play/{app}/{stream}.flv, /play/{app}/{stream}.m3u8 \
                     or /play/{app}/{stream}/comments",
                ),
            );
        }
    };
    redirect(&app, &app_name, name, target, raw, &headers, &peer, query)
}

/// `GET /play/{app}/{stream}/comments`.
pub async fn play_comments(
    State(app): State<Arc<App>>,
    Path((app_name, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    peer: Peer,
    query: Params,
) -> Response {
    redirect(
        &app,
        &app_name,
        &name,
        Target::Comments,
        raw,
        &headers,
        &peer,
        query,
    )
}

#[allow(clippy::too_many_arguments)]
fn redirect(
    app: &App,
    app_name: &str,
    name: &str,
    target: Target,
    raw: Option<String>,
    headers: &HeaderMap,
    peer: &Peer,
    query: Params,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return bad(app, ApiError::bad_request(e.body_text())),
    };
    let stream = match StreamKey::parse(&format!("{app_name}/{name}")) {
        Ok(k) => k,
        Err(e) => return bad(app, ApiError::bad_request(e.to_string())),
    };
    let req = match request(app, &q, headers, peer, stream, 1) {
        Ok(r) => r,
        Err(e) => return bad(app, e),
    };
    let a = match run(app, &req, headers, peer) {
        Ok(a) => a,
        Err(e) => return unavailable(app, &e),
    };
    let Some(edge) = a.edges.first() else {
        return unavailable(
            app,
            &ResolveError::NoEligible {
                stream: req.stream.clone(),
                known: 0,
                up: 0,
            },
        );
    };
    let mut location = match target {
        Target::Flv => edge_url(&edge.public_url, &req.stream),
        Target::Hls => edge_hls_url(&edge.public_url, &req.stream),
        Target::Comments => edge_comments_url(&edge.public_url, &req.stream),
    };
    let mut query: Vec<String> = raw.into_iter().filter(|r| !r.is_empty()).collect();
    if let (Some(c), false) = (req.coord, req.source == LocationSource::Query) {
        query.push(format!("lat={:.4}&lon={:.4}", c.lat, c.lon));
    }
    if !query.is_empty() {
        location.push('?');
        location.push_str(&query.join("&"));
    }
    let Ok(loc) = HeaderValue::from_str(&location) else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("edge {} has an unusable public URL", edge.node_id),
        )
        .into_response();
    };
    let mut r = (
        StatusCode::FOUND,
        Json(json!({ "location": location, "node_id": &*edge.node_id, "group": a.group })),
    )
        .into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, loc);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if target == Target::Comments {
        // A page on an agent fetches this to learn its comments edge.
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("location, x-vantage-node"),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&edge.node_id) {
        h.insert("x-vantage-node", v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_location_parsing() {
        let c = parse_coord("48.85", " 2.35").unwrap();
        assert_eq!((c.lat, c.lon), (48.85, 2.35));
        for (lat, lon) in [
            ("999", "0"),
            ("0", "181"),
            ("x", "0"),
            ("NaN", "0"),
            ("inf", "0"),
        ] {
            assert!(parse_coord(lat, lon).is_err(), "{lat},{lon}");
        }
        let mut h = HeaderMap::new();
        h.insert("x-geo", HeaderValue::from_static("35.68, 139.69"));
        h.insert("x-ff", HeaderValue::from_static("81.2.69.142, 10.0.0.1"));
        h.insert("x-bad", HeaderValue::from_static("somewhere"));
        let c = header_coord(&h, Some("x-geo")).unwrap();
        assert_eq!((c.lat, c.lon), (35.68, 139.69));
        assert_eq!(header_coord(&h, Some("x-bad")), None);
        assert_eq!(header_coord(&h, None), None);
        assert_eq!(
            header_ip(&h, Some("x-ff")),
            Some("81.2.69.142".parse().unwrap())
        );
        assert_eq!(header_ip(&h, Some("x-bad")), None);
    }

    #[test]
    fn comments_urls_follow_the_edge_scheme() {
        let k = StreamKey::parse("live/x").unwrap();
        assert_eq!(
            edge_comments_url("http://e1:8080", &k),
            "ws://e1:8080/live/x/comments"
        );
        assert_eq!(
            edge_comments_url("https://e1.example/", &k),
            "wss://e1.example/live/x/comments"
        );
    }
}
