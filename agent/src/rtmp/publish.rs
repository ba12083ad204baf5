//! An RTMP publisher: admitted by `Relay::admit_publisher` (the same
//! function HTTP-FLV publishers go through: one publisher per key, refused
//! while draining), then its audio, video and `@setDataFrame` messages are
//! turned into FLV tags and fed into the stream's ring by the same ingest
//! code ([`Session::push_tag`]) and wake-up pacing ([`Pacer`]) as an
//! HTTP-FLV body. The stream ends with `FCUnpublish`/`deleteStream`, when
//! the connection closes, on malformed input or after `idle_timeout`
//! without bytes.

use super::RtmpConfig;
use super::session::{Conn, SessionError, stream_key};
use crate::relay::Relay;
use crate::relay::admit::Refused;
use crate::relay::authorize::{Credential, Denied};
use crate::relay::ingest::Session;
use crate::relay::source::Pacer;
use crate::relay::stream::lock;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vantage_shared::flv::amf::Metadata;
use vantage_shared::flv::{FileHeader, Tag};
use vantage_shared::rtmp::message::{self, Command};

/// Runs `publish(name)` to its end.
pub async fn run(
    relay: &Relay,
    conn: &mut Conn,
    cfg: &RtmpConfig,
    name: &str,
    cancel: &CancellationToken,
) -> Result<(), SessionError> {
    let key = match stream_key(&conn.app, name) {
        Ok(k) => k,
        Err(e) => {
            let msg = format!("bad stream name {:?} in app {:?}: {e}", name, conn.app);
            conn.status("error", "NetStream.Publish.BadName", &msg)
                .await?;
            return Err(SessionError::Refused(msg));
        }
    };
    let (_, query) = super::session::split_query(name);
    let cred = Credential::from_query(query, None, Some(conn.peer));
    if let Err(d) = relay.authorize_publish(&key, &cred, "rtmp").await {
        let code = match d {
            Denied::Unauthenticated(_) => "NetStream.Publish.Unauthorized",
            Denied::Forbidden(_) => "NetStream.Publish.Denied",
        };
        conn.status("error", code, d.message()).await?;
        return Err(SessionError::Refused(d.message().to_owned()));
    }
    let publishing = match relay.admit_publisher(&key, "rtmp") {
        Ok(p) => p,
        Err(r) => {
            let msg = r.message(relay.node_id(), &key);
            let code = match r {
                Refused::Conflict | Refused::NotOrigin { .. } => "NetStream.Publish.BadName",
                Refused::Draining => "NetStream.Publish.Denied",
            };
            conn.status("error", code, &msg).await?;
            return Err(SessionError::Refused(msg));
        }
    };
    conn.status(
        "status",
        "NetStream.Publish.Start",
        &format!("{key} is now published"),
    )
    .await?;
    conn.decoder.set_limits(cfg.media_limits());
    let relay_cfg = relay.config();
    let stream = publishing.stream.clone();
    let generation = publishing.generation;
    let mut session = Session::new(relay_cfg.max_tag_bytes);
    let mut pacer = Pacer::new(relay_cfg.write_coalesce);
    let mut out = Vec::new();
    let mut media = 0u64;
    let end: Result<&'static str, SessionError> = loop {
        let flush = pacer.flush_at();
        tokio::select! {
            biased;
            _ = publishing.cancel.cancelled() => break Ok("replaced"),
            _ = cancel.cancelled() => break Ok("shutdown"),
            _ = tokio::time::sleep_until(flush.unwrap_or_else(Instant::now)), if flush.is_some() => {
                pacer.flush(&stream);
                continue;
            }
            r = conn.read(cfg.idle_timeout) => {
                match r {
                    Ok(n) => stream.count_ingress(n),
                    Err(SessionError::Closed) => break Ok("closed"),
                    Err(e) => break Err(e),
                }
            }
        }
        if let Err(e) = conn.maybe_ack().await {
            break Err(e);
        }
        let mut done = None;
        let mut failed = None;
        loop {
            let m = match conn.decoder.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(SessionError::Protocol(e));
                    break;
                }
            };
            let m = match conn.control(m).await {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let tags: Vec<Tag> = match m.type_id {
                message::COMMAND_AMF0 | message::COMMAND_AMF3 => {
                    let c = match Command::parse(&m.payload, m.type_id) {
                        Ok(c) => c,
                        Err(e) => {
                            failed = Some(e.into());
                            break;
                        }
                    };
                    if matches!(
                        c.name.as_str(),
                        "FCUnpublish" | "deleteStream" | "closeStream"
                    ) {
                        done = Some("ended");
                        break;
                    }
                    continue;
                }
                message::AGGREGATE => match message::split_aggregate(&m) {
                    Ok(t) => t,
                    Err(e) => {
                        failed = Some(e.into());
                        break;
                    }
                },
                _ => message::to_tag(&m).into_iter().collect(),
            };
            let mut tl = lock(&stream.timeline);
            for tag in tags {
                if media == 0 {
                    session.set_header(header_for(&tag));
                }
                media += 1;
                session.push_tag(&mut tl, tag, &mut out);
            }
        }
        let header = if media > 0 {
            session.take_header()
        } else {
            None
        };
        if !pacer.deliver(&stream, generation, header, &mut out) {
            break Ok("replaced");
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if let Some(d) = done {
            break Ok(d);
        }
    };
    match end {
        Ok(how) => {
            let result = if how == "closed" { "closed" } else { "ended" };
            relay.metrics().publish(result);
            publishing.finish();
            info!(stream = %key, media, how, "RTMP publish finished");
            Ok(())
        }
        Err(e) => {
            let result = match &e {
                SessionError::Idle(_) => "timeout",
                SessionError::Protocol(_) => "malformed",
                _ => "error",
            };
            relay.metrics().publish(result);
            publishing.finish();
            warn!(stream = %key, media, error = %e, "RTMP publish stopped");
            Err(e)
        }
    }
}

/// What the stream carries, from its first tag: the metadata's codec ids
/// when it is `onMetaData`, else audio and video.
fn header_for(first: &Tag) -> FileHeader {
    let meta = first
        .is_metadata()
        .then(|| Metadata::parse(&first.body))
        .flatten();
    match meta {
        Some(m) if m.videocodecid.is_some() || m.audiocodecid.is_some() => FileHeader {
            has_video: m.videocodecid.is_some() || m.width.is_some(),
            has_audio: m.audiocodecid.is_some(),
        },
        _ => FileHeader {
            has_audio: true,
            has_video: true,
        },
    }
}
