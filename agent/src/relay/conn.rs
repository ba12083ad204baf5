//! A media connection's socket, wrapped so the viewer's `TCP_INFO` is
//! sampled from the connection's own task (after writes, at most once per
//! sample interval) by the [`ViewerStats`]
//! sampler, without a second descriptor or another task.
//!
//! The play handler asks for registration through [`ConnShared`]; the
//! socket wrapper performs it on its next write. Skipped media (slow-viewer
//! overflows) is handed over the same way as stall time.

use crate::viewer::{ViewerHandle, ViewerStats};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use vantage_shared::group::GroupKey;

use super::stream::lock;

/// What the play handler and the viewer body tell the socket wrapper.
#[derive(Debug, Default)]
pub struct ConnShared {
    changed: AtomicBool,
    /// `Some` = register in this group with this CMCD buffer level;
    /// `None` after `changed` = unregister.
    request: Mutex<Option<(GroupKey, Option<f64>)>>,
    stalled_ms: AtomicU64,
}

impl ConnShared {
    /// Counts this connection's viewer in `group`.
    pub fn register(&self, group: GroupKey, buffer_ms: Option<f64>) {
        *lock(&self.request) = Some((group, buffer_ms));
        self.changed.store(true, Ordering::Release);
    }

    /// The viewer's response ended (the connection may serve others).
    pub fn unregister(&self) {
        *lock(&self.request) = None;
        self.changed.store(true, Ordering::Release);
    }

    /// Media the viewer missed (skipped to a keyframe).
    pub fn stalled(&self, ms: u64) {
        self.stalled_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// The socket of a media connection.
pub struct MeteredIo {
    inner: TcpStream,
    shared: std::sync::Arc<ConnShared>,
    stats: Option<ViewerStats>,
    handle: Option<ViewerHandle>,
}

impl MeteredIo {
    pub fn new(
        inner: TcpStream,
        shared: std::sync::Arc<ConnShared>,
        stats: Option<ViewerStats>,
    ) -> MeteredIo {
        MeteredIo {
            inner,
            shared,
            stats,
            handle: None,
        }
    }

    /// The socket (a connection upgraded to another protocol).
    pub fn into_inner(self) -> TcpStream {
        self.inner
    }

    fn after_write(&mut self) {
        let Some(stats) = &self.stats else { return };
        if self.shared.changed.swap(false, Ordering::Acquire) {
            self.handle = lock(&self.shared.request).take().map(|(group, bl)| {
                let mut h = stats.register(group, &self.inner);
                if let Some(bl) = bl {
                    h.buffer(bl);
                }
                h
            });
        }
        if let Some(h) = &mut self.handle {
            let stalled = self.shared.stalled_ms.swap(0, Ordering::Relaxed);
            if stalled > 0 {
                h.stalled(Duration::from_millis(stalled));
            }
            // A failed sample is counted by the sampler; the write worked.
            let _ = h.sample(&self.inner);
        }
    }
}

impl AsyncRead for MeteredIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeteredIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.after_write();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.after_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
