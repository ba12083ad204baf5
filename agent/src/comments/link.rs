//! A follower room's upstream link: one WebSocket connection per room to
//! the first usable upstream candidate of the room's stream (the video's
//! candidates), as a downstream agent (`?link=NODE`, a link token signed
//! with the cluster's comment key).
//!
//! * Comments come down in the sequencer's order; numbers already held are
//!   dropped, a `gap` or a `reset` (new sequencer) is passed on to the
//!   room's connections.
//! * Posts go up (`fwd`), in order; after a failover every post without a
//!   decision is sent again (the sequencer drops what it has numbered and
//!   answers with the first number).
//! * Failover like the media pull: an error, the end of the connection or
//!   no `beat` from the sequencer for the stall timeout moves to the next
//!   candidate at once; a full round of failures waits a jittered backoff.
//!   The link resumes after its room's last number, in the same epoch, so
//!   an outage shorter than the upstream's buffer loses nothing.
//! * A candidate that is linked to this room as a downstream is skipped (it
//!   would loop).

use super::frame::{self, Comment, Format, Out, Reason, Upstream};
use super::room::{Room, UpstreamView};
use super::{Comments, agent_candidates, upstream_candidates, ws};
use crate::relay::Candidate;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info, warn};
use vantage_shared::backoff::Backoff;
use vantage_shared::comment_token::{self, Claims};

/// Life of a link token.
const LINK_TOKEN_S: i64 = 300;
/// A session that lived this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// How a session with one upstream ended.
#[derive(Debug)]
enum Ended {
    /// The room is closed or numbers itself now.
    Done,
    /// Never welcomed (connect, upgrade or refusal).
    Unusable(String),
    /// Welcomed, then lost.
    Lost(&'static str, String),
}

/// The `ws://` URL of `key`'s comments at a candidate (its media URL ends
/// in `/{app}/{stream}.flv`).
fn comments_url(c: &Candidate) -> Option<String> {
    let base = c.url.strip_suffix(".flv")?;
    let rest = base.strip_prefix("http://")?;
    Some(format!("ws://{rest}/comments"))
}

/// Runs the link of `room` until the room closes or numbers itself.
pub async fn run(comments: Comments, room: Arc<Room>) {
    let svc = comments.shared().clone();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut next = 0usize;
    let mut failures = 0usize;
    loop {
        if room.cancel.is_cancelled() || room.is_sequencer() {
            return;
        }
        let (agents, _) = agent_candidates(upstream_candidates(svc.relay(), &room.key, true).await);
        let downstream = room.downstream_nodes();
        let usable: Vec<Candidate> = agents
            .into_iter()
            .filter(|c| !downstream.contains(&c.label))
            .collect();
        if usable.is_empty() {
            // Housekeeping turns the room into a sequencer if the stream is
            // published here; otherwise wait for a route.
            room.state().upstream = None;
            let delay = backoff.next_delay(&mut rand::rng());
            if !wait(&room, delay).await {
                return;
            }
            continue;
        }
        let cand = &usable[next % usable.len()];
        let started = Instant::now();
        let ended = session(&comments, &room, cand).await;
        {
            let mut st = room.state();
            if let Some(u) = st.upstream.as_mut() {
                u.connected = false;
            }
        }
        match ended {
            Ended::Done => return,
            Ended::Unusable(why) => {
                svc.metrics
                    .link_attempts
                    .get_or_create(&super::metrics::ResultLabel { result: "error" })
                    .inc();
                debug!(room = %room.key, upstream = %cand.label, %why, "upstream link failed");
                failures += 1;
            }
            Ended::Lost(reason, why) => {
                svc.metrics
                    .failovers
                    .get_or_create(&super::metrics::ReasonLabel { reason })
                    .inc();
                warn!(room = %room.key, upstream = %cand.label, reason, %why, "upstream link lost; failing over");
                failures = if started.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                    0
                } else {
                    failures + 1
                };
            }
        }
        next += 1;
        if failures >= usable.len() {
            failures = 0;
            let delay = backoff.next_delay(&mut rand::rng());
            if !wait(&room, delay).await {
                return;
            }
        }
    }
}

/// Sleeps `d` unless the room closes (`false`) or is told to look again.
async fn wait(room: &Room, d: Duration) -> bool {
    tokio::select! {
        _ = room.cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
        _ = room.uplink.notified() => true,
    }
}

fn link_token(comments: &Comments) -> Option<String> {
    let settings = comments.settings();
    let key = settings.keys.current()?;
    let now = vantage_shared::clock::now_ms() / 1000;
    Some(comment_token::sign(
        key,
        &Claims {
            sub: comments.shared().node_id.clone(),
            exp: now + LINK_TOKEN_S,
            iat: Some(now),
            lnk: true,
            ..Default::default()
        },
    ))
}

type Ws = WebSocketStream<TcpStream>;

/// Connects, upgrades and reads the welcome.
async fn open(
    comments: &Comments,
    room: &Arc<Room>,
    cand: &Candidate,
) -> Result<(Ws, String, String), String> {
    let svc = comments.shared();
    let base = comments_url(cand).ok_or_else(|| format!("no ws URL for {}", cand.url))?;
    let (since, epoch) = {
        let st = room.state();
        (st.ring.head(), st.epoch.clone())
    };
    let mut url = format!("{base}?link={}", svc.node_id);
    if !epoch.is_empty() {
        url.push_str(&format!("&since={since}&epoch={epoch}"));
    }
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    if let Some(t) = link_token(comments) {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| "token is not a header value".to_owned())?;
        req.headers_mut().insert(hyper::header::AUTHORIZATION, v);
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| format!("{url}: no host"))?;
    let tcp = TcpStream::connect(&host)
        .await
        .map_err(|e| format!("connect {host}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let config = WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .max_message_size(Some(64 << 20));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let welcome = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => break t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => return Err(format!("{url}: expected a welcome, got {other:?}")),
            Some(Err(e)) => return Err(format!("{url}: {e}")),
            None => return Err(format!("{url}: closed before the welcome")),
        }
    };
    match frame::parse_upstream(welcome.as_str()) {
        Ok(Upstream::Welcome { epoch: e, head }) => {
            if *e != *epoch {
                // A new sequencer (or the first link): start over from its
                // buffer.
                room.reset(Arc::from(e.as_str()), head).await;
                room.state().forwards.resend_all();
            }
            Ok((ws, url, local))
        }
        Ok(other) => Err(format!("{url}: expected a welcome, got {other:?}")),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// One session with `cand`.
async fn session(comments: &Comments, room: &Arc<Room>, cand: &Candidate) -> Ended {
    let svc = comments.shared().clone();
    let timeout = svc.cfg.handshake_timeout;
    let opened = tokio::select! {
        _ = room.cancel.cancelled() => return Ended::Done,
        r = tokio::time::timeout(timeout, open(comments, room, cand)) => r,
    };
    let (mut ws, url, local) = match opened {
        Err(_) => return Ended::Unusable(format!("{}: no welcome within {timeout:?}", cand.label)),
        Ok(Err(e)) => return Ended::Unusable(e),
        Ok(Ok(x)) => x,
    };
    svc.metrics
        .link_attempts
        .get_or_create(&super::metrics::ResultLabel { result: "welcomed" })
        .inc();
    svc.metrics.links.inc();
    {
        let mut st = room.state();
        st.upstream = Some(UpstreamView {
            node: cand.label.clone(),
            url: url.clone(),
            connected: true,
            local_addr: local,
            since_ms: u64::try_from(vantage_shared::clock::now_ms()).unwrap_or(0),
        });
        st.forwards.resend_all();
    }
    info!(room = %room.key, upstream = %cand.label, "upstream link up");
    let r = pump(comments, room, &mut ws).await;
    svc.metrics.links.dec();
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
    r
}

/// Moves comments down and posts up until the link fails.
async fn pump(comments: &Comments, room: &Arc<Room>, ws: &mut Ws) -> Ended {
    let svc = comments.shared().clone();
    let stall = svc.cfg.stall_timeout;
    let mut last_beat = Instant::now();
    let mut last_ping = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // Posts queued while no link was up.
    room.uplink.notify_one();
    loop {
        tokio::select! {
            _ = room.cancel.cancelled() => return Ended::Done,
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(c))) => return Ended::Lost("closed", format!("{c:?}")),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Ended::Lost("error", e.to_string()),
                    None => return Ended::Lost("closed", "end of stream".into()),
                };
                last_beat = Instant::now();
                match frame::parse_upstream(text.as_str()) {
                    Ok(m) => on_message(room, m).await,
                    Err(e) => return Ended::Lost("error", format!("bad message from upstream: {e}")),
                }
            }
            () = room.uplink.notified() => {
                if room.is_sequencer() {
                    return Ended::Done;
                }
                let posts = room.state().forwards.take_unsent();
                for p in posts {
                    if let Err(e) = ws.feed(Message::text(p.fwd_json())).await {
                        return Ended::Lost("error", e.to_string());
                    }
                }
                if let Err(e) = ws.flush().await {
                    return Ended::Lost("error", e.to_string());
                }
            }
            _ = tick.tick() => {
                if last_beat.elapsed() > stall {
                    return Ended::Lost("stalled", format!("no beat for {:?}", last_beat.elapsed()));
                }
                if last_ping.elapsed() >= svc.cfg.heartbeat / 2 {
                    last_ping = Instant::now();
                    if let Err(e) = ws.send(Message::text(r#"{"t":"ping"}"#)).await {
                        return Ended::Lost("error", e.to_string());
                    }
                }
            }
        }
    }
}

async fn on_message(room: &Arc<Room>, m: Upstream) {
    match m {
        Upstream::C { c } => {
            let mut any = false;
            for x in c {
                any |= room.ingest(Comment::new(x.s, x.ts, Arc::from(x.u), Arc::from(x.x)));
            }
            if any {
                room.kick();
            }
        }
        Upstream::Beat { head } => {
            let f = ws::data_frame(Format::Json, &Out::Beat { head }.encode(Format::Json));
            room.to_links(&f);
        }
        Upstream::Gap { from, to } => room.gap(from, to).await,
        Upstream::Reset { epoch, head } => {
            room.reset(Arc::from(epoch.as_str()), head).await;
            room.state().forwards.resend_all();
            room.uplink.notify_one();
        }
        Upstream::Fack { id, s } => {
            let post = room.state().forwards.decided(&id);
            if let Some(p) = post {
                room.answer(&p.origin, Ok(s));
            }
        }
        Upstream::Fnack { id, r, retry_ms } => {
            let post = room.state().forwards.decided(&id);
            if let Some(p) = post {
                let reason = Reason::from_label(&r).unwrap_or(Reason::UpstreamUnavailable);
                room.answer(&p.origin, Err((reason, retry_ms)));
            }
        }
        Upstream::Welcome { .. } | Upstream::Pong => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_url_of_a_candidate() {
        let c = Candidate {
            label: "a".into(),
            url: "http://10.0.0.1:8080/live/x.flv".into(),
        };
        assert_eq!(
            comments_url(&c).as_deref(),
            Some("ws://10.0.0.1:8080/live/x/comments")
        );
        let https = Candidate {
            label: "b".into(),
            url: "https://edge/live/x.flv".into(),
        };
        assert_eq!(comments_url(&https), None);
    }
}
