//! HTTP/1.1 on a [`Listener`]: the scheduler's API and the agent's admin
//! API (axum routers, or any tower service) with the listener's limits, a
//! header-read timeout that also bounds keep-alive idleness, and a
//! graceful end: on cancellation no connection is accepted any more and
//! open ones finish their request in flight.

use super::{Conn, Listener};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest request head and buffered input of one connection.
const MAX_BUF: usize = 64 * 1024;

/// HTTP settings of a [`serve`]d listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request head (the first, or the next on a kept-alive connection)
    /// must arrive within this; an idle kept-alive connection is closed
    /// after it.
    pub header_timeout: Duration,
    /// Longest the end waits for requests in flight.
    pub drain: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(5),
        }
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown`, with `make(peer, conn)`
/// the service of each connection. Each request proves its connection
/// ([`Conn::proven`]).
pub async fn serve<S, B, M>(
    mut listener: Listener,
    limits: HttpLimits,
    make: M,
    shutdown: CancellationToken,
) where
    M: Fn(SocketAddr, &Conn) -> S,
    S: tower_service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tracker = TaskTracker::new();
    loop {
        let (io, peer, conn) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let svc = make(peer, &conn);
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let proving = conn.clone();
            let service = hyper::service::service_fn(move |req| {
                proving.proven();
                let mut svc = svc.clone();
                svc.call(req)
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_BUF);
            let c = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(c);
            tokio::select! {
                r = c.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended");
                    }
                    return;
                }
                _ = stop.cancelled() => c.as_mut().graceful_shutdown(),
            }
            let _ = c.await;
        });
    }
    tracker.close();
    drop(listener);
    let _ = tokio::time::timeout(limits.drain, tracker.wait()).await;
}
