//! LL-HLS egress (RFC 8216bis) from the relay's rings: CMAF (fMP4)
//! segments and parts, blocking playlist reload, preload hints.
//!
//! * [`fmp4`] — init segments and `moof`/`mdat` fragments (pure).
//! * [`segmenter`] — tags → segments and parts (pure).
//! * [`playlist`] — the media playlist (pure).
//! * this module — the [`Hub`]: one segmenter task per stream that HLS
//!   clients ask for. The task reads the stream's ring like one viewer (so
//!   a relayed stream keeps exactly one pull, and starts one if needed),
//!   makes every part once, renders the playlist once per part, and stops
//!   after `idle_timeout` without an HLS request. Every HLS request is
//!   answered from these shared buffers (`relay/server/hls.rs`).

pub mod fmp4;
pub mod playlist;
pub mod segmenter;

use crate::relay::Relay;
use crate::relay::admit::PlayRefused;
use crate::relay::conn::ConnShared;
use crate::relay::hub::Wire;
use crate::relay::stream::lock;
use crate::relay::viewer::{ViewerBody, ViewerSlot};
use bytes::{Buf, Bytes};
use segmenter::{Segmenter, SegmenterConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info};
use vantage_shared::flv::Demuxer;
use vantage_shared::stream::StreamKey;

/// The client group the segmenter's own ring reader is counted in.
pub const HLS_GROUP: &str = "hls";

/// What the segmenter of one stream shares with requests.
#[derive(Debug, Default)]
pub struct State {
    pub seg: Option<Segmenter>,
    /// The rendered playlist of the current parts.
    pub playlist: Option<Bytes>,
    pub failed: Option<PlayRefused>,
}

/// One stream's HLS output.
#[derive(Debug)]
pub struct HlsStream {
    pub state: Mutex<State>,
    /// Bumped whenever a part is added (or the segmenter failed/stopped).
    pub version: watch::Sender<u64>,
    last_request_ms: AtomicU64,
}

impl HlsStream {
    /// Waits up to `timeout` until `f` finds what it wants in the state;
    /// `Ok(None)` on timeout.
    pub async fn wait<T>(
        &self,
        timeout: Duration,
        f: impl Fn(&State) -> Option<T>,
    ) -> Result<Option<T>, PlayRefused> {
        let mut rx = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let st = lock(&self.state);
                if let Some(r) = f(&st) {
                    return Ok(Some(r));
                }
                if let Some(e) = &st.failed {
                    return Err(e.clone());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Ok(None),
            }
        }
    }
}

/// Every stream's HLS output on this node.
#[derive(Debug, Default)]
pub struct Hub {
    streams: Mutex<HashMap<StreamKey, Arc<HlsStream>>>,
}

impl Relay {
    /// The HLS output of `key`, its segmenter started if needed; records
    /// the request (the segmenter stops after the idle timeout without one).
    pub(crate) fn hls_stream(&self, key: &StreamKey) -> Arc<HlsStream> {
        let now = self.clock_ms();
        let mut map = lock(&self.hls_hub().streams);
        if let Some(s) = map.get(key) {
            s.last_request_ms.store(now, Ordering::Relaxed);
            return s.clone();
        }
        let s = Arc::new(HlsStream {
            state: Mutex::new(State::default()),
            version: watch::Sender::new(0),
            last_request_ms: AtomicU64::new(now),
        });
        map.insert(key.clone(), s.clone());
        drop(map);
        tokio::spawn(run(self.clone(), key.clone(), s.clone()));
        s
    }

    fn forget_hls(&self, key: &StreamKey, s: &Arc<HlsStream>) {
        let mut map = lock(&self.hls_hub().streams);
        if map.get(key).is_some_and(|x| Arc::ptr_eq(x, s)) {
            map.remove(key);
        }
    }
}

/// The segmenter task of one stream.
async fn run(relay: Relay, key: StreamKey, hs: Arc<HlsStream>) {
    let m = relay.metrics().clone();
    m.hls_segmenters.inc();
    let end = segment(&relay, &key, &hs).await;
    m.hls_segmenters.dec();
    relay.forget_hls(&key, &hs);
    let mut st = lock(&hs.state);
    st.failed = Some(end.err().unwrap_or(PlayRefused::Ended));
    drop(st);
    hs.version.send_modify(|v| *v += 1);
}

/// Reads the ring and segments until the stream ends or HLS clients are
/// gone; `Err` when the stream could not be played at all.
async fn segment(relay: &Relay, key: &StreamKey, hs: &HlsStream) -> Result<(), PlayRefused> {
    let cfg = relay.config().clone();
    let kill = tokio_util::sync::CancellationToken::new();
    let (stream, slot) = relay
        .attach_viewer(key, relay.node_id(), None, |stream| {
            Arc::new(ViewerSlot::new(
                relay.next_viewer_id(),
                Arc::from(HLS_GROUP),
                kill.clone(),
                stream.clock_ms(),
            ))
        })
        .await?;
    info!(stream = %key, "HLS segmenter started");
    let mut body = ViewerBody::new(
        stream,
        slot,
        Arc::new(ConnShared::default()),
        cfg.policy(),
        Wire::Flv,
    );
    let seg_cfg = SegmenterConfig {
        part_target_ms: i64::try_from(cfg.hls_part_target.as_millis()).unwrap_or(500),
        min_segment_ms: 1000,
        window: cfg.hls_window,
    };
    let idle = u64::try_from(cfg.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut demux = Demuxer::new(cfg.max_tag_bytes);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let m = relay.metrics().clone();
    loop {
        tokio::select! {
            _ = kill.cancelled() => break,
            _ = tick.tick() => {
                let last = hs.last_request_ms.load(Ordering::Relaxed);
                if relay.clock_ms().saturating_sub(last) > idle {
                    debug!(stream = %key, "no HLS requests: segmenter stopped");
                    break;
                }
            }
            batch = std::future::poll_fn(|cx| body.poll_batch(cx)) => {
                let Some(Ok(mut batch)) = batch else { break };
                while batch.has_remaining() {
                    let n = batch.chunk().len();
                    demux.push(batch.chunk());
                    batch.advance(n);
                }
                let wall = vantage_shared::clock::now_ms();
                let mut st = lock(&hs.state);
                let st = &mut *st;
                let mut new_parts = false;
                loop {
                    let tag = match demux.next_tag() {
                        Ok(Some(t)) => t,
                        Ok(None) => break,
                        Err(_) => return Err(PlayRefused::Ended),
                    };
                    let seg = st.seg.get_or_insert_with(|| {
                        let video = demux.header().is_none_or(|h| h.has_video);
                        Segmenter::new(seg_cfg, video)
                    });
                    let (parts, segs) = (seg.parts_made, seg.segments_made);
                    new_parts |= seg.push(&tag, i64::from(tag.timestamp_ms), wall);
                    m.hls_parts.inc_by(seg.parts_made - parts);
                    m.hls_segments.inc_by(seg.segments_made - segs);
                }
                if new_parts {
                    st.playlist = st.seg.as_ref().and_then(playlist::render).map(Bytes::from);
                    hs.version.send_modify(|v| *v += 1);
                }
            }
        }
    }
    Ok(())
}
