//! Who may call what on the API, checked before the handlers:
//!
//! * mutating calls need the admin token whenever one is configured
//!   (`--dev` included); `--dev` without a token is open, on loopback by
//!   default ([`require_admin`]);
//! * reads need the read or admin token when `--read-token` is set
//!   ([`reader`]); anonymous readers never see agents' addresses;
//! * a mutating call from a browser on another site is refused (`Origin`
//!   not the API's own, `Sec-Fetch-Site: cross-site`), and so is one for a
//!   host name the API does not serve (DNS rebinding) while no admin token
//!   protects it ([`cross_site`]);
//! * `/v1/resolve` and `/play` are limited per client (token bucket per IP
//!   prefix, 429 JSON with `Retry-After`), and the load a client's resolves
//!   may reserve on edges is a bucket of its own ([`Guard::may_reserve`]).
//!
//! Every refusal is counted (`api_refused_total`, `rate_limited_total`).

use super::{ApiError, ApiResult};
use crate::app::App;
use crate::metrics::{EndpointLabel, ReasonLabel};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vantage_shared::ratelimit::{ClientKey, Limiter, Rate};

/// `[limits]` of the scheduler config: per-client limits of the
/// viewer-facing endpoints. Defaults in `docs/security.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimits {
    /// `/v1/resolve` + `/play` requests per second per client (flag
    /// `--rate-limit-per-s`).
    pub rate_per_s: f64,
    /// Burst of those (flag `--rate-limit-burst`).
    pub burst: f64,
    /// A client is an IPv4 address truncated to this many bits...
    pub prefix_v4: u8,
    /// ...or an IPv6 address truncated to this many bits.
    pub prefix_v6: u8,
    /// Clients tracked at once (beyond, new clients share one bucket).
    pub max_clients: usize,
    /// Resolves per second per client that reserve the stream's bit rate
    /// on the chosen edge (the others are answered without reserving; a
    /// reservation lasts until the edge's second report after it).
    pub reserve_per_s: f64,
    pub reserve_burst: f64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            rate_per_s: 20.0,
            burst: 40.0,
            prefix_v4: 32,
            prefix_v6: 64,
            max_clients: 100_000,
            // A viewer plays once and re-resolves rarely; the ledger holds a
            // reservation for two report intervals, so one client holds
            // about one viewer's bit rate on an edge at a time.
            reserve_per_s: 0.5,
            reserve_burst: 2.0,
        }
    }
}

impl ClientLimits {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.rate_per_s) || !positive(self.burst) || self.burst < 1.0 {
            return Err((
                "limits.rate_per_s",
                "rate_per_s > 0 and burst ≥ 1".to_owned(),
            ));
        }
        if !positive(self.reserve_per_s)
            || !positive(self.reserve_burst)
            || self.reserve_burst < 1.0
        {
            return Err((
                "limits.reserve_per_s",
                "reserve_per_s > 0 and reserve_burst ≥ 1".to_owned(),
            ));
        }
        if self.prefix_v4 > 32 || self.prefix_v6 > 128 {
            return Err((
                "limits.prefix_v4",
                "prefix_v4 ≤ 32 and prefix_v6 ≤ 128".to_owned(),
            ));
        }
        if !(1..=10_000_000).contains(&self.max_clients) {
            return Err(("limits.max_clients", "must be 1..=10000000".to_owned()));
        }
        Ok(())
    }
}

/// The per-client buckets.
#[derive(Debug)]
pub struct Guard {
    limits: ClientLimits,
    requests: Mutex<Limiter>,
    reservations: Mutex<Limiter>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Guard {
    pub fn new(limits: ClientLimits) -> Guard {
        let now = Instant::now();
        let requests = Limiter::new(
            Rate {
                per_s: limits.rate_per_s,
                burst: limits.burst,
            },
            limits.max_clients,
            now,
        );
        let reservations = Limiter::new(
            Rate {
                per_s: limits.reserve_per_s,
                burst: limits.reserve_burst,
            },
            limits.max_clients,
            now,
        );
        Guard {
            limits,
            requests: Mutex::new(requests),
            reservations: Mutex::new(reservations),
        }
    }

    pub fn client(&self, ip: IpAddr) -> ClientKey {
        ClientKey::of(ip, self.limits.prefix_v4, self.limits.prefix_v6)
    }

    /// Whether a resolve of `ip` may reserve load on the edge it picks.
    pub fn may_reserve(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return true };
        let key = self.client(ip);
        lock(&self.reservations).check(key, Instant::now()).is_ok()
    }

    /// Drops buckets of clients gone quiet (the liveness loop calls it).
    pub fn sweep(&self) {
        let now = Instant::now();
        lock(&self.requests).sweep(now);
        lock(&self.reservations).sweep(now);
    }
}

fn refuse(app: &App, reason: &str, status: StatusCode, message: &str) -> ApiError {
    app.metrics
        .api_refused
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
    ApiError::new(status, message)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Checks the admin token of a mutating request: required whenever one is
/// configured; `--dev` without one is open. Returns the actor for the
/// audit trail.
pub fn require_admin(app: &App, headers: &HeaderMap) -> ApiResult<String> {
    let Some(expected) = &app.config.admin_token else {
        if app.config.dev {
            return Ok("dev".to_owned());
        }
        return Err(refuse(
            app,
            "forbidden",
            StatusCode::FORBIDDEN,
            "no admin token is configured on this scheduler; mutating calls are disabled",
        ));
    };
    match bearer(headers) {
        Some(t) if vantage_shared::auth::secrets_equal(t, expected) => Ok("admin".to_owned()),
        Some(_) => Err(refuse(
            app,
            "forbidden",
            StatusCode::FORBIDDEN,
            "wrong admin token",
        )),
        None => Err(refuse(
            app,
            "unauthenticated",
            StatusCode::UNAUTHORIZED,
            "missing `authorization: Bearer <admin token>`",
        )),
    }
}

/// Who reads: `authenticated` when a read or admin token was presented
/// (then agents' addresses are shown).
#[derive(Debug, Clone, Copy)]
pub struct Reader {
    pub authenticated: bool,
}

/// Checks a read of the API: with `--read-token` a read or admin token is
/// required; otherwise anyone reads, anonymously.
pub fn reader(app: &App, headers: &HeaderMap) -> ApiResult<Reader> {
    let given = bearer(headers);
    let matches = |t: &Option<String>| matches!((given, t), (Some(g), Some(t)) if vantage_shared::auth::secrets_equal(g, t));
    if matches(&app.config.read_token) || matches(&app.config.admin_token) {
        return Ok(Reader {
            authenticated: true,
        });
    }
    if app.config.read_token.is_none() {
        return Ok(Reader {
            authenticated: false,
        });
    }
    Err(match given {
        Some(_) => refuse(app, "forbidden", StatusCode::FORBIDDEN, "wrong read token"),
        None => refuse(
            app,
            "unauthenticated",
            StatusCode::UNAUTHORIZED,
            "missing `authorization: Bearer <read token>`",
        ),
    })
}

/// The host of a `Host` header or an `Origin` URL, without port.
fn host_of(authority: &str) -> &str {
    let a = authority.trim();
    let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    a.rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(a, |(h, _)| h)
}

/// Whether the API serves host name `host` (DNS rebinding check).
fn served_host(app: &App, host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
        || host.eq_ignore_ascii_case("localhost")
        || host.eq_ignore_ascii_case(&app.config.scheduler_id)
        || app
            .config
            .api_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
}

/// Why a mutating request looks cross-site or rebound, if it does.
fn cross_site(app: &App, headers: &HeaderMap) -> Option<(&'static str, String)> {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let host = get(header::HOST).unwrap_or("");
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
    {
        return Some(("cross_site", "cross-site request refused".to_owned()));
    }
    if let Some(origin) = get(header::ORIGIN) {
        let authority = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .trim_end_matches('/');
        if origin == "null" || !authority.eq_ignore_ascii_case(host) {
            return Some((
                "cross_site",
                format!("request from origin {origin:?} refused: not this API's origin"),
            ));
        }
    }
    if app.config.admin_token.is_none() && !served_host(app, host_of(host)) {
        return Some((
            "cross_site",
            format!(
                "host {:?} is not served here (add it with --api-host)",
                host_of(host)
            ),
        ));
    }
    None
}

/// Middleware: refuses cross-site and rebound mutating requests.
pub async fn same_site(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if mutating && let Some((reason, msg)) = cross_site(&app, req.headers()) {
        return refuse(&app, reason, StatusCode::FORBIDDEN, &msg).into_response();
    }
    next.run(req).await
}

/// The client address limits apply to: the trusted client IP header when
/// configured (behind a proxy), else the peer. Never the `ip=` parameter.
pub fn client_ip(app: &App, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
    let trusted = app
        .resolver
        .config()
        .client_ip_header
        .as_deref()
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok());
    trusted.or(peer.map(|p| p.ip()))
}

/// Middleware of `/v1/resolve` and `/play`: the per-client request limit.
pub async fn rate_limit(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let endpoint = if req.uri().path().starts_with("/play/") {
        "play"
    } else {
        "resolve"
    };
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if let Some(ip) = client_ip(&app, req.headers(), peer) {
        let key = app.guard.client(ip);
        let verdict = lock(&app.guard.requests).check(key, Instant::now());
        if let Err(wait) = verdict {
            app.metrics
                .rate_limited
                .get_or_create(&EndpointLabel { endpoint })
                .inc();
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({
                    "error": format!("too many requests from this client; retry in {secs} s"),
                    "retry_after_s": secs,
                })),
            )
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hosts_are_parsed_without_ports() {
        assert_eq!(host_of("127.0.0.1:7480"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7480"), "::1");
        assert_eq!(host_of("evil.example"), "evil.example");
        assert_eq!(host_of("evil.example:80"), "evil.example");
        assert_eq!(host_of("user@evil.example:80"), "evil.example");
    }

    #[test]
    fn limits_are_validated() {
        ClientLimits::default().validate().unwrap();
        let bad = ClientLimits {
            burst: 0.5,
            ..ClientLimits::default()
        };
        assert!(bad.validate().is_err());
        let bad = ClientLimits {
            prefix_v4: 33,
            ..ClientLimits::default()
        };
        assert!(bad.validate().is_err());
    }
}
