//! The HTTP API server loop of both control planes: axum on hyper with bounded header reads and
//! request times (`axum::serve` runs hyper without a timer, so it keeps idle and slow connections
//! forever). Global and zone serve their read/write APIs through it.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

/// The time bounds of `serve_http_with`. `Default` is what both APIs use: `limits::HTTP_HEADER_READ_TIMEOUT` and
/// `limits::HTTP_REQUEST_TIMEOUT`; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// See `limits::HTTP_HEADER_READ_TIMEOUT`: the headers of each request, idle keep-alive time included.
    pub header_read: Duration,
    /// See `limits::HTTP_REQUEST_TIMEOUT`: a whole request once its headers are in (408 and close after it).
    pub request: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read: crate::limits::HTTP_HEADER_READ_TIMEOUT,
            request: crate::limits::HTTP_REQUEST_TIMEOUT,
        }
    }
}

/// Serves an HTTP/1.1 API (axum router) with bounded header reads and request times, which
/// `axum::serve` does not offer (it runs hyper without a timer, so idle and slow connections are
/// kept forever). Each request sees its peer address as `ConnectInfo<SocketAddr>`. Stops accepting
/// when `shutdown` completes and waits for the requests in flight. Uses `HttpLimits::default()`.
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_http_with(listener, app, HttpLimits::default(), shutdown).await
}

/// `serve_http` with explicit time bounds.
pub async fn serve_http_with(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use tower::ServiceExt;

    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limits.request,
    ));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait and accept again.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service =
            app.clone()
                .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req.map(axum::body::Body::new)
                });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "API connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
