//! One upstream pull per stream, with local fast failover.
//!
//! Started by the first play request for a stream not held here. Tries the
//! stream's candidates in order (route table, else static origin): `GET
//! <url>` with `X-Vantage-Via` (this node appended to the chain it was asked
//! with) and `X-Vantage-Origin` (the stream's origin as the directory — or
//! the downstream's hint — has it). 404 and 508 mean "not there"; other failures are errors. Once
//! streaming, an error, the end of the body, malformed FLV or no bytes for
//! `stall_timeout` switch to the next candidate at once (splicing at its
//! first keyframe, see [`super::ingest`]) and raise `UPSTREAM_LOST`. When a
//! route table puts another upstream first (neither the previous first nor
//! the one in use), the pull moves there, without an alert.
//!
//! A full round of candidates that all say "not there" ends the stream
//! (waiting play requests get 404; viewers get the end of the stream). A
//! round with errors ends it too (502) if it never delivered media;
//! otherwise the pull retries with jittered backoff while viewers remain.
//! It stops after `idle_timeout` without viewers.

use super::ingest::Session;
use super::source::{self, End, Stop, Timeouts};
use super::stream::{Phase, Stream};
use super::{Candidate, ORIGIN_HEADER, Relay, VIA_HEADER};
use crate::routes::TableReceiver;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};
use vantage_proto::v1::AlertKind;
use vantage_shared::backoff::Backoff;
use vantage_shared::stream::StreamKey;

use super::viewer::MediaBody;

/// How a pull ended.
#[derive(Debug)]
enum Outcome {
    Cancelled,
    Idle,
    NotFound(String),
    Failed(String),
}

/// Why one upstream could not be used.
#[derive(Debug)]
pub enum ConnectError {
    /// The upstream does not have the stream (404) or would loop (508).
    NotFound(String),
    Failed(String),
}

/// A response being streamed and the connection task behind it.
pub struct Upstream {
    pub body: Incoming,
    _sender: SendRequest<MediaBody>,
    driver: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens `GET url` with the loop-guard header; `Ok` only for 200.
pub async fn connect(
    url: &str,
    via: &str,
    origin: Option<&str>,
    timeout: Duration,
) -> Result<Upstream, ConnectError> {
    let fail = |m: String| ConnectError::Failed(m);
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| fail(format!("bad URL {url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(fail(format!("{other}:// upstreams are not supported"))),
        None => return Err(fail(format!("URL {url:?} has no scheme"))),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| fail(format!("URL {url:?} has no host")))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let work = async {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| fail(format!("connect {authority}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| fail(format!("{authority}: {e}")))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream connection ended");
            }
        });
        let mut req = Request::get(path)
            .header(header::HOST, authority.as_str())
            .header(
                header::USER_AGENT,
                concat!("vantage-agent/", env!("CARGO_PKG_VERSION")),
            )
            .header(VIA_HEADER, via);
        if let Some(origin) = origin {
            req = req.header(ORIGIN_HEADER, origin);
        }
        let req = req
            .body(MediaBody::empty())
            .map_err(|e| fail(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(format!("{authority}: {e}")));
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                driver.abort();
                return Err(e);
            }
        };
        let status = resp.status();
        let up = Upstream {
            body: resp.into_body(),
            _sender: sender,
            driver,
        };
        match status {
            StatusCode::OK => Ok(up),
            StatusCode::NOT_FOUND | StatusCode::LOOP_DETECTED => {
                Err(ConnectError::NotFound(format!("{status}")))
            }
            s => Err(fail(format!("HTTP {s}"))),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(fail(format!(
            "no response from {authority} within {timeout:?}"
        ))),
    }
}

/// Runs the pull of `stream` as source `generation` until it is cancelled, idle
/// or hopeless; then ends the stream and forgets it.
#[instrument(name = "pull", skip_all, fields(stream = %stream.key))]
pub async fn run(
    relay: Relay,
    stream: Arc<Stream>,
    generation: u64,
    cancel: CancellationToken,
    via: String,
    hint: Option<String>,
) {
    relay.metrics().pulls_active.inc();
    let outcome = pull_loop(&relay, &stream, generation, &cancel, &via, hint.as_deref()).await;
    relay.metrics().pulls_active.dec();
    debug!(?outcome, "pull finished");
    let phase = match outcome {
        Outcome::Cancelled | Outcome::Idle => Phase::Ended,
        Outcome::NotFound(m) => Phase::NotFound(m),
        Outcome::Failed(m) => Phase::Failed(m),
    };
    if stream.end_source(generation, phase) {
        relay.remove(&stream);
    }
}

async fn pull_loop(
    relay: &Relay,
    stream: &Arc<Stream>,
    generation: u64,
    cancel: &CancellationToken,
    via: &str,
    hint: Option<&str>,
) -> Outcome {
    let cfg = relay.config().clone();
    let key = stream.key.clone();
    let mut tables = relay.inner.tables.clone();
    tables.mark_unchanged();
    let mut idx = 0usize;
    let mut failures = 0usize;
    let mut notes: Vec<String> = Vec::new();
    let mut all_not_found = true;
    let mut ever_live = false;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        if cancel.is_cancelled() {
            return Outcome::Cancelled;
        }
        let cands = relay.candidates_hinted(&key, hint);
        if cands.is_empty() {
            return if ever_live {
                Outcome::Failed("the stream has no upstream any more".into())
            } else {
                Outcome::NotFound("no upstream is known for it".into())
            };
        }
        let cand = cands[idx % cands.len()].clone();
        let first = cands[0].label.clone();
        stream.set_upstream(generation, &cand.label);
        let origin = relay.origin_for(&key, hint);
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return Outcome::Cancelled,
            r = connect(&cand.url, via, origin.as_deref(), cfg.connect_timeout) => r,
        };
        match attempt {
            Err(ConnectError::NotFound(m)) => {
                failures += 1;
                relay.metrics().pull("not_found");
                debug!(upstream = %cand.label, "upstream does not have the stream: {m}");
                notes.push(format!("{}: {m}", cand.label));
            }
            Err(ConnectError::Failed(m)) => {
                failures += 1;
                relay.metrics().pull("error");
                debug!(upstream = %cand.label, "upstream failed: {m}");
                all_not_found = false;
                notes.push(format!("{}: {m}", cand.label));
            }
            Ok(mut up) => {
                relay.metrics().pull("ok");
                info!(upstream = %cand.label, url = %cand.url, "pulling");
                let mut session = Session::new(cfg.max_tag_bytes);
                let timeouts = Timeouts {
                    first: cfg.connect_timeout,
                    stall: cfg.stall_timeout,
                    coalesce: cfg.write_coalesce,
                };
                let stop = watch_stop(
                    relay,
                    stream,
                    cancel,
                    &mut tables,
                    &key,
                    hint,
                    Some((first, cand.label.clone())),
                );
                let end = source::drive(
                    stream,
                    generation,
                    &mut session,
                    &mut up.body,
                    timeouts,
                    stop,
                )
                .await;
                drop(up);
                let got_media = session.spliced() && session.tags > 0;
                if got_media {
                    ever_live = true;
                    failures = 0;
                    notes.clear();
                    all_not_found = true;
                    backoff.reset();
                }
                let (label, text, value) = match end {
                    End::Stopped(Stop::Cancelled) | End::Replaced => return Outcome::Cancelled,
                    End::Stopped(Stop::Idle) => {
                        info!(upstream = %cand.label, "no viewers: pull stopped");
                        return Outcome::Idle;
                    }
                    End::Stopped(Stop::Switch) => {
                        info!(from = %cand.label, "route table changed the upstream");
                        relay.metrics().failover("table");
                        stream.count_failover();
                        idx = 0;
                        continue;
                    }
                    End::Eof => ("ended", "the upstream ended the stream".to_owned(), 0.0),
                    End::Body(e) => ("error", format!("connection failed: {e}"), 0.0),
                    End::Malformed(e) => {
                        relay.metrics().malformed(e.label());
                        ("malformed", format!("malformed FLV: {e}"), 0.0)
                    }
                    End::Stall(d) => (
                        "stall",
                        format!("no media for {} ms", d.as_millis()),
                        d.as_secs_f64() * 1000.0,
                    ),
                };
                if got_media {
                    let next = &cands[(idx + 1) % cands.len()].label;
                    warn!(upstream = %cand.label, next = %next, reason = %text, "upstream lost; failing over");
                    relay.metrics().failover(label);
                    stream.count_failover();
                    relay.inner.alerts.raise(
                        AlertKind::UpstreamLost,
                        key.as_str(),
                        format!(
                            "upstream {} of {key}: {text}; switching to {next}",
                            cand.label
                        ),
                        value,
                    );
                } else {
                    failures += 1;
                    all_not_found = false;
                    notes.push(format!("{}: {text}", cand.label));
                }
            }
        }
        idx += 1;
        if failures >= cands.len() {
            let msg = notes.join("; ");
            if all_not_found {
                // Every candidate says the stream is not there (any more).
                return Outcome::NotFound(msg);
            }
            if !ever_live {
                return Outcome::Failed(msg);
            }
            failures = 0;
            notes.clear();
            all_not_found = true;
            let delay = backoff.next_delay(&mut rand::rng());
            let stop = watch_stop(relay, stream, cancel, &mut tables, &key, hint, None);
            tokio::select! {
                s = stop => match s {
                    Stop::Cancelled => return Outcome::Cancelled,
                    Stop::Idle => return Outcome::Idle,
                    Stop::Switch => idx = 0,
                },
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Resolves when the pull should stop or move: cancellation, no viewers
/// for the idle timeout, or a route table whose first candidate is neither
/// the previous first nor the one in use (`switch` = (first, in use)).
async fn watch_stop(
    relay: &Relay,
    stream: &Stream,
    cancel: &CancellationToken,
    tables: &mut TableReceiver,
    key: &StreamKey,
    hint: Option<&str>,
    switch: Option<(String, String)>,
) -> Stop {
    let idle = u64::try_from(relay.config().idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut tick =
        tokio::time::interval(Duration::from_millis(100).min(relay.config().idle_timeout));
    let mut tables_open = true;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Stop::Cancelled,
            _ = tick.tick() => {
                if stream.idle_ms() >= idle {
                    return Stop::Idle;
                }
            }
            r = tables.changed(), if tables_open => {
                if r.is_err() {
                    tables_open = false;
                    continue;
                }
                let now_first = relay.candidates_hinted(key, hint).first().map(|c: &Candidate| c.label.clone());
                let moved = |(first, current): &(String, String)| {
                    now_first
                        .as_deref()
                        .is_some_and(|n| n != first.as_str() && n != current.as_str())
                };
                if switch.as_ref().is_some_and(moved) {
                    return Stop::Switch;
                }
            }
        }
    }
}
