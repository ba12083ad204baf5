//! The scheduler's TCP listeners with their limits
//! ([`vantage_shared::listen`], docs/security.md):
//!
//! * HTTP API (`--http-listen`): at most `--http-max-connections`; a
//!   request head must arrive within `--handshake-timeout-ms` (the first,
//!   and each next one on a kept-alive connection);
//! * gRPC routes (`--grpc-listen`): at most `--grpc-max-connections`; the
//!   TLS handshake and the first call within `--handshake-timeout-ms`; a
//!   connection without a call in flight for `--grpc-idle-timeout-ms` is
//!   closed. TLS is done here (not by tonic) so that the handshake has a
//!   deadline; the peer's certificate identity goes to the calls as
//!   [`GrpcConn`].
//!
//! At the limit (or out of descriptors) the oldest connection that has not
//! sent a request yet is shed for the new one; `accept` backs off on
//! `EMFILE` instead of spinning. Counted as
//! `vantage_scheduler_connections*{listener}` and `accept_errors_total`.

use crate::app::App;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::debug;
use vantage_shared::listen::http::{HttpLimits, serve};
use vantage_shared::listen::{Conn, Guarded, Limits, Listener, Request as ConnRequest};

/// The HTTP API listener with its limits.
pub fn http_listener(app: &App, listener: TcpListener) -> Listener {
    Listener::new(
        listener,
        Limits {
            max_connections: app.config.http_max_connections,
            proof_timeout: app.config.handshake_timeout,
            idle_timeout: None,
        },
        Arc::new(app.metrics.listener("http")),
        "HTTP API",
    )
}

/// Serves the API router until `shutdown`.
pub async fn serve_http(
    listener: Listener,
    router: axum::Router,
    header_timeout: std::time::Duration,
    shutdown: CancellationToken,
) {
    let limits = HttpLimits {
        header_timeout,
        ..HttpLimits::default()
    };
    serve(
        listener,
        limits,
        move |peer: SocketAddr, _: &Conn| {
            let router = router.clone();
            tower::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                // The peer address feeds GeoIP lookups and per-client limits.
                req.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(req)
            })
        },
        shutdown,
    )
    .await;
}

/// What a gRPC call knows of its connection (a request extension).
#[derive(Debug, Clone)]
pub struct GrpcConn {
    pub remote: SocketAddr,
    /// Common name of the client certificate (mTLS), when one was shown.
    pub peer_cn: Option<String>,
    conn: Conn,
}

/// A gRPC connection: TLS over a [`Guarded`] socket.
pub struct GrpcIo {
    inner: TlsStream<Guarded<TcpStream>>,
    info: GrpcConn,
}

impl tonic::transport::server::Connected for GrpcIo {
    type ConnectInfo = GrpcConn;

    fn connect_info(&self) -> GrpcConn {
        self.info.clone()
    }
}

impl AsyncRead for GrpcIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

/// The gRPC listener with its limits.
pub fn grpc_listener(app: &App, listener: TcpListener) -> Listener {
    Listener::new(
        listener,
        Limits {
            max_connections: app.config.grpc_max_connections,
            proof_timeout: app.config.handshake_timeout,
            idle_timeout: Some(app.config.grpc_idle_timeout),
        },
        Arc::new(app.metrics.listener("grpc")),
        "gRPC",
    )
}

/// Accepts gRPC connections until `shutdown`: each is admitted by the
/// listener, its TLS handshake done under the connection's deadline, and
/// handed to tonic through `tx`.
pub async fn accept_grpc(
    mut listener: Listener,
    tls: Arc<rustls::ServerConfig>,
    tx: tokio::sync::mpsc::Sender<Result<GrpcIo, std::io::Error>>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (io, remote, conn) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        if let Err(e) = io.get_ref().set_nodelay(true) {
            debug!("gRPC connection: TCP_NODELAY not set: {e}");
        }
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            // The listener's proof deadline bounds the handshake (the
            // socket fails once it passes).
            let tls = match acceptor.accept(io).await {
                Ok(t) => t,
                Err(e) => {
                    debug!(%remote, error = %e, "gRPC TLS handshake failed");
                    return;
                }
            };
            let peer_cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(vantage_shared::tls::peer_node_id);
            let io = GrpcIo {
                inner: tls,
                info: GrpcConn {
                    remote,
                    peer_cn,
                    conn,
                },
            };
            let _ = tx.send(Ok(io)).await;
        });
    }
}

/// Marks each gRPC call on its connection: the first proves the
/// connection; while a call is in flight (a route stream: its whole life)
/// the idle timeout does not run.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallLayer;

impl<S> tower::Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> CallService<S> {
        CallService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CallService<S> {
    inner: S,
}

impl<S, B, R> tower_service::Service<axum::http::Request<B>> for CallService<S>
where
    S: tower_service::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = axum::http::Response<CallBody<R>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let call = req.extensions().get::<GrpcConn>().map(|c| c.conn.begin());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| CallBody {
                inner: Box::pin(inner),
                _call: call,
            }))
        })
    }
}

/// A response body that ends its call when it is dropped.
pub struct CallBody<R> {
    inner: Pin<Box<R>>,
    _call: Option<ConnRequest>,
}

impl<R: Body<Data = Bytes>> Body for CallBody<R> {
    type Data = Bytes;
    type Error = R::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
