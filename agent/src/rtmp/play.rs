//! An RTMP viewer: attached by `Relay::attach_viewer` like an HTTP-FLV
//! viewer (the stream held here, or one pull from upstream), then fed from
//! the same ring by the same cursor and slow-viewer policy
//! ([`ViewerBody`]), each tag framed as RTMP chunks once per tag and shared
//! by all RTMP viewers ([`Wire::Rtmp`]). The viewer's messages (acks,
//! buffer length, `deleteStream`) are read between writes.

use super::metrics::RtmpMetrics;
use super::session::{Conn, SessionError, split_query, stream_key};
use crate::relay::Relay;
use crate::relay::admit::PlayRefused;
use crate::relay::hub::{RTMP_STREAM_ID, Wire};
use crate::relay::qoe::{UNKNOWN_GROUP, group_from_query};
use crate::relay::viewer::{ViewerBody, ViewerSlot};
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use vantage_shared::flv::amf::Value;
use vantage_shared::group::GroupKey;
use vantage_shared::rtmp::message::{self, Command};

/// Viewers may stay silent (they acknowledge every window, tens of
/// seconds at low bit rates); a viewer that stops reading is found by the
/// relay's housekeeping instead.
const NO_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// Runs `play(name)` to its end.
pub async fn run(
    relay: &Relay,
    conn: &mut Conn,
    metrics: &RtmpMetrics,
    name: &str,
    cancel: &CancellationToken,
) -> Result<(), SessionError> {
    let key = match stream_key(&conn.app, name) {
        Ok(k) => k,
        Err(e) => {
            metrics.play("bad_name");
            let msg = format!("bad stream name {:?} in app {:?}: {e}", name, conn.app);
            conn.status("error", "NetStream.Play.StreamNotFound", &msg)
                .await?;
            return Err(SessionError::Refused(msg));
        }
    };
    if relay.is_draining() {
        metrics.play("draining");
        let msg = format!(
            "{} is draining and accepts no new viewers of {key}",
            relay.node_id()
        );
        conn.status("error", "NetStream.Play.Failed", &msg).await?;
        return Ok(());
    }
    let group: Arc<str> =
        group_from_query(split_query(name).1).map_or_else(|| Arc::from(UNKNOWN_GROUP), Arc::from);
    let kill = cancel.child_token();
    let attached = relay
        .attach_viewer(&key, relay.node_id(), None, |stream| {
            Arc::new(ViewerSlot::new(
                relay.next_viewer_id(),
                group.clone(),
                kill.clone(),
                stream.clock_ms(),
            ))
        })
        .await;
    let (stream, slot) = match attached {
        Ok(a) => a,
        Err(r) => {
            let label = match r {
                PlayRefused::Failed(_) => "failed",
                PlayRefused::Timeout => "timeout",
                _ => "not_found",
            };
            metrics.play(label);
            let msg = r.message(&key, relay.config().play_wait);
            conn.status("error", "NetStream.Play.StreamNotFound", &msg)
                .await?;
            return Ok(());
        }
    };
    metrics.play("ok");
    info!(stream = %key, %group, "RTMP play started");
    conn.shared
        .register(group.parse().unwrap_or_else(|_| GroupKey::unknown()), None);
    let mut body = ViewerBody::new(
        stream,
        slot,
        conn.shared.clone(),
        relay.config().policy(),
        Wire::Rtmp,
    );
    let mut start = BytesMut::new();
    start.extend_from_slice(&message::user_control(
        message::STREAM_BEGIN,
        RTMP_STREAM_ID,
        conn.out_chunk,
    ));
    for (code, text) in [
        ("NetStream.Play.Reset", "Playing and resetting"),
        ("NetStream.Play.Start", "Started playing"),
    ] {
        let c = message::on_status("status", code, &format!("{text} {key}."));
        start.extend_from_slice(&c.encode(RTMP_STREAM_ID, conn.out_chunk));
    }
    start.extend_from_slice(&message::data(
        &[
            Value::String("|RtmpSampleAccess".into()),
            Value::Boolean(true),
            Value::Boolean(true),
        ],
        RTMP_STREAM_ID,
        conn.out_chunk,
    ));
    conn.send(&start).await?;

    let how = loop {
        tokio::select! {
            _ = kill.cancelled() => break "disconnected",
            r = conn.read(NO_IDLE_LIMIT) => match r {
                Ok(_) => {
                    conn.maybe_ack().await?;
                    if viewer_left(conn).await? {
                        break "deleteStream";
                    }
                }
                Err(SessionError::Closed) => break "closed",
                Err(e) => return Err(e),
            },
            batch = std::future::poll_fn(|cx| body.poll_batch(cx)) => match batch {
                Some(Ok(mut batch)) => {
                    tokio::select! {
                        _ = kill.cancelled() => break "disconnected",
                        r = conn.io.write_all_buf(&mut batch) => r?,
                    }
                }
                Some(Err(e)) => {
                    debug!(error = %e, "RTMP viewer kicked");
                    break "overflow";
                }
                None => {
                    let eof = message::user_control(message::STREAM_EOF, RTMP_STREAM_ID, conn.out_chunk);
                    let stop = message::on_status("status", "NetStream.Play.UnpublishNotify", &format!("{key} ended."));
                    let mut out = BytesMut::from(&eof[..]);
                    out.extend_from_slice(&stop.encode(RTMP_STREAM_ID, conn.out_chunk));
                    let _ = conn.send(&out).await;
                    break "ended";
                }
            },
        }
    };
    info!(stream = %key, how, "RTMP play finished");
    Ok(())
}

/// Handles what a viewer sent; true when it stopped playing.
async fn viewer_left(conn: &mut Conn) -> Result<bool, SessionError> {
    while let Some(m) = conn.decoder.next_message()? {
        let Some(m) = conn.control(m).await? else {
            continue;
        };
        if matches!(m.type_id, message::COMMAND_AMF0 | message::COMMAND_AMF3) {
            let c = Command::parse(&m.payload, m.type_id)?;
            if matches!(c.name.as_str(), "deleteStream" | "closeStream") {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
