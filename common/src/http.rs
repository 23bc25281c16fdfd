//! The HTTP API server loops of both control planes: axum on hyper with bounded header reads and
//! request times (`axum::serve` runs hyper without a timer, so it keeps idle and slow connections
//! forever). Global and zone serve their read/write APIs through `serve_http` (HTTP/1.1 in the
//! clear); global also serves its API through `serve_https` (rustls, HTTP/1.1 or h2 by ALPN, the
//! handshake itself bounded in time). Also what both APIs share around it: error bodies as
//! `application/problem+json` (RFC 9457: [`Problem`], [`problem`], and the [`problem_errors`]
//! middleware that gives every other error answer that shape), the `Host` check, and the
//! redaction of what readers see.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

/// The time bounds of `serve_http_with` and `serve_https_with`. `Default` is what the APIs use:
/// `limits::HTTP_HEADER_READ_TIMEOUT`, `limits::HTTP_REQUEST_TIMEOUT` and
/// `limits::TLS_HANDSHAKE_TIMEOUT`; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// See `limits::HTTP_HEADER_READ_TIMEOUT`: the headers of each request, idle keep-alive time
    /// included (over h2: a connection with no request in flight and none begun for this long is
    /// closed).
    pub header_read: Duration,
    /// See `limits::HTTP_REQUEST_TIMEOUT`: a whole request once its headers are in (408 and close after it).
    pub request: Duration,
    /// See `limits::TLS_HANDSHAKE_TIMEOUT`: the TLS handshake of an HTTPS connection, counted from
    /// the accept (a client that connects and sends nothing is closed after it).
    pub tls_handshake: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read: crate::limits::HTTP_HEADER_READ_TIMEOUT,
            request: crate::limits::HTTP_REQUEST_TIMEOUT,
            tls_handshake: crate::limits::TLS_HANDSHAKE_TIMEOUT,
        }
    }
}

/// The next connection of `listener`, or `None` once `shutdown` completed. Accept errors (out of
/// file descriptors and the like) are logged and waited out.
async fn accept_next(
    listener: &TcpListener,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.as_mut() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The router with the request time bound (408 after it).
fn with_request_timeout(app: axum::Router, limits: &HttpLimits) -> axum::Router {
    app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limits.request,
    ))
}

/// The router as the hyper service of one connection: each request sees its peer address as
/// `ConnectInfo<SocketAddr>`.
fn connection_service(
    app: axum::Router,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>>
             + Send
             + 'static,
> + Clone
+ Send
+ 'static {
    use axum::extract::ConnectInfo;
    use tower::ServiceExt;
    let service = app.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.map(axum::body::Body::new)
    });
    hyper_util::service::TowerToHyperService::new(service)
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
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;

    let app = with_request_timeout(app, &limits);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    while let Some((stream, peer)) = accept_next(&listener, &mut shutdown).await {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read)
            .serve_connection(TokioIo::new(stream), connection_service(app.clone(), peer));
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

/// The ALPN protocols `serve_https` offers, preferred first: h2, then HTTP/1.1.
pub const HTTPS_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Serves the API over TLS with `tls` (see `tls::server_config`, which should offer
/// [`HTTPS_ALPN`]): HTTP/1.1 or h2 as ALPN chose (sniffed when the client named none), with the
/// bounds of `serve_http` and the handshake bounded by `limits::TLS_HANDSHAKE_TIMEOUT`. Stops
/// accepting when `shutdown` completes, abandons handshakes under way and waits for the requests
/// in flight.
pub async fn serve_https(
    listener: TcpListener,
    app: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_https_with(listener, app, tls, HttpLimits::default(), shutdown).await
}

/// When a connection last had nothing to do: no request in flight since the instant kept.
struct Activity {
    start: tokio::time::Instant,
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds from `start` to the last request's start or end.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            start: tokio::time::Instant::now(),
            in_flight: Default::default(),
            last_ms: Default::default(),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Completes once no request has been in flight for `idle` (polled at a quarter of it).
    async fn idle_for(&self, idle: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Relaxed));
            let now = tokio::time::Instant::now();
            if self.in_flight.load(Relaxed) == 0 && now >= last + idle {
                return;
            }
            let wake = if self.in_flight.load(Relaxed) == 0 {
                last + idle
            } else {
                now + idle / 4
            };
            tokio::time::sleep_until(wake.max(now + Duration::from_millis(10))).await;
        }
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> Self {
        a.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        a.touch();
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `serve_https` with explicit time bounds.
pub async fn serve_https_with(
    listener: TcpListener,
    app: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = with_request_timeout(app, &limits);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // Fired once when accepting stops; every connection task holds a sender of `done`, so that
    // `done` closes when the last one ended.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let (done_tx, mut done) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    while let Some((stream, peer)) = accept_next(&listener, &mut shutdown).await {
        let conn = serve_tls_connection(
            stream,
            peer,
            acceptor.clone(),
            app.clone(),
            limits,
            stopping.clone(),
        );
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            conn.await;
            drop(done_tx);
        });
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    drop(done_tx);
    let _ = done.recv().await;
    Ok(())
}

/// One HTTPS connection: the handshake within `limits.tls_handshake` (abandoned when `stopping`
/// fires), then HTTP/1.1 or h2 until the peer leaves, the connection is idle for
/// `limits.header_read` or `stopping` fires (in-flight requests are finished first).
async fn serve_tls_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    limits: HttpLimits,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;

    let handshake = tokio::time::timeout(limits.tls_handshake, acceptor.accept(stream));
    let tls = tokio::select! {
        r = handshake => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "API TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "API TLS handshake not completed in time: connection closed");
                return;
            }
        },
        _ = stopping.wait_for(|s| *s) => return,
    };
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(crate::limits::HTTP2_STREAMS_PER_CONNECTION);
    let builder = match alpn.as_deref() {
        Some(b"h2") => builder.http2_only(),
        Some(b"http/1.1") => builder.http1_only(),
        _ => builder,
    };
    let activity = Activity::new();
    let counted = activity.clone();
    let inner = connection_service(app, peer);
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let guard = InFlight::new(&counted);
            // Links the API builds (a page's `next`) say https.
            req.extensions_mut().insert(crate::page::OverTls);
            let call = hyper::service::Service::call(&inner, req);
            async move {
                let r = call.await;
                drop(guard);
                r
            }
        });
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let idle = activity.idle_for(limits.header_read);
    tokio::pin!(idle);
    // Once closing, how long the peer has to let the connection end (an h2 peer acknowledges the
    // GOAWAY's PING; in-flight requests finish) before it is dropped.
    let closing = tokio::time::sleep(Duration::MAX);
    tokio::pin!(closing);
    let mut is_closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "API connection ended with an error");
                }
                return;
            }
            _ = stopping.wait_for(|s| *s), if !is_closing => {
                conn.as_mut().graceful_shutdown();
                is_closing = true;
                closing.as_mut().reset(tokio::time::Instant::now() + limits.request);
            }
            _ = idle.as_mut(), if !is_closing => {
                conn.as_mut().graceful_shutdown();
                is_closing = true;
                closing.as_mut().reset(tokio::time::Instant::now() + limits.header_read / 4);
            }
            _ = closing.as_mut(), if is_closing => {
                tracing::debug!(%peer, "API connection did not end when asked to: dropped");
                return;
            }
        }
    }
}

/// The `Host` names an API answers to: loopback names and addresses, and the names given with
/// `--api-host`. Any other `Host` gets 421, so that a page of another origin cannot read the API
/// through a name it resolves to this machine (DNS rebinding).
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(std::sync::Arc<Vec<String>>);

impl AllowedHosts {
    pub fn new(extra: &[String]) -> Self {
        Self(std::sync::Arc::new(
            extra
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        ))
    }

    /// Whether a `Host` header (`name`, `name:port`, `[v6]:port`) is one of these.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or("").to_string(),
            None => match host.rsplit_once(':') {
                Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) => n.to_string(),
                _ => host.clone(),
            },
        };
        name == "localhost"
            || name.ends_with(".localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || self.0.iter().any(|h| *h == name || *h == host)
    }
}

/// Middleware refusing a request whose `Host` the API does not serve, with 421 and a JSON body
/// saying how to allow it. A request without `Host` passes (no browser sends one), and so do the
/// probes `/healthz`, `/readyz` and `/metrics`, which hold nothing to steal and are asked by
/// address (a kubelet, a Prometheus).
pub async fn check_host(
    axum::extract::State(allowed): axum::extract::State<AllowedHosts>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|_| !probe)
        .map(str::to_string);
    match host {
        Some(h) if !allowed.allows(&h) => problem(
            axum::http::StatusCode::MISDIRECTED_REQUEST,
            &Problem {
                title: "Misdirected request".into(),
                status: 421,
                detail: format!(
                    "this API does not answer to the Host {:?}: use a loopback address, or start it with --api-host {:?}",
                    h.chars().take(255).collect::<String>(),
                    h.split(':')
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(255)
                        .collect::<String>()
                ),
                invalid_parameters: vec![],
            },
        ),
        _ => next.run(req).await,
    }
}

/// The media type of every error answer of both APIs (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer: `{"title", "status", "detail", "invalid_parameters"}` (the last only when a
/// field was refused), served as `application/problem+json`. Global's error body adds its own
/// fields to the same shape.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Problem {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_parameters: Vec<crate::FieldError>,
}

impl Problem {
    /// A 400 naming one refused request parameter (`size`, `offset`, ...).
    pub fn invalid_parameter(parameter: &str, reason: String) -> Self {
        Self {
            title: "Invalid request".into(),
            status: 400,
            detail: format!("{parameter}: {reason}"),
            invalid_parameters: vec![crate::FieldError::new(parameter, reason)],
        }
    }
}

/// `body` (an error body) as the answer with `status`, typed `application/problem+json`.
pub fn problem(
    status: axum::http::StatusCode,
    body: &impl serde::Serialize,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let json = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(axum::http::header::CONTENT_TYPE, PROBLEM_JSON)],
        json,
    )
        .into_response()
}

/// The most of an error body [`problem_errors`] reads to quote it.
const QUOTED_ERROR_BYTES: usize = 4096;

/// Middleware giving every error answer (4xx, 5xx) the problem shape: a JSON error body is
/// relabelled `application/problem+json`; any other (axum's own rejections of a path, query or
/// body, 405, a timeout) becomes `{"title", "status", "detail"}` quoting its text. Headers such as
/// `Allow` and `WWW-Authenticate` stay.
pub async fn problem_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with(PROBLEM_JSON) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, QUOTED_ERROR_BYTES)
        .await
        .unwrap_or_default();
    let title = status.canonical_reason().unwrap_or("Error").to_string();
    let is_error_object = content_type.starts_with("application/json")
        && serde_json::from_slice::<serde_json::Value>(&bytes)
            .is_ok_and(|v| v.get("status").is_some() && v.get("title").is_some());
    let body = if is_error_object {
        bytes.to_vec()
    } else {
        let text = printable(String::from_utf8_lossy(&bytes).trim());
        serde_json::to_vec(&Problem {
            detail: if text.is_empty() { title.clone() } else { text },
            title,
            status: status.as_u16(),
            invalid_parameters: vec![],
        })
        .unwrap_or_default()
    };
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(
        CONTENT_TYPE,
        axum::http::HeaderValue::from_static(PROBLEM_JSON),
    );
    axum::response::Response::from_parts(parts, axum::body::Body::from(body))
}

/// A resource's Universal JSON with every `inline` and `inlineString` data source value replaced
/// by `"(redacted)"`: what a reader other than the admin sees of a Mesh (a backend's Vault token or
/// CA key may be given inline).
pub fn redact_inline(spec: &serde_json::Value) -> serde_json::Value {
    match spec {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if (k == "inline" || k == "inlineString") && v.is_string() {
                        serde_json::Value::String("(redacted)".into())
                    } else {
                        redact_inline(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(redact_inline).collect())
        }
        v => v.clone(),
    }
}

/// `s` without control characters (escape sequences, newlines, NUL), at most 1024 characters:
/// what a peer reported, fit to store, serve and print on a terminal.
pub fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(1024).collect()
}

/// [`printable`] applied to every string (and object key) of a JSON value.
pub fn printable_json(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::String(s) => serde_json::Value::String(printable(s)),
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.iter().map(printable_json).collect())
        }
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| (printable(k), printable_json(v)))
                .collect(),
        ),
        v => v.clone(),
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    #[test]
    fn loopback_and_named_hosts_only() {
        let a = AllowedHosts::new(&["cp.example.com".into()]);
        for ok in [
            "localhost",
            "localhost:5681",
            "127.0.0.1:5681",
            "127.3.4.5",
            "[::1]:5681",
            "CP.example.com:443",
            "cp.example.com",
        ] {
            assert!(a.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:5681",
            "10.0.0.5:5681",
            "[::2]:1",
            "cp.example.com.evil",
        ] {
            assert!(!a.allows(bad), "{bad}");
        }
    }

    #[test]
    fn reported_text_loses_its_control_characters() {
        assert_eq!(printable("run\u{1b}[31m: curl\n|sh"), "run[31m: curl|sh");
        let v = serde_json::json!({"e\u{7}": ["a\u{0}b", 1]});
        assert_eq!(printable_json(&v), serde_json::json!({"e": ["ab", 1]}));
    }

    #[test]
    fn inline_values_are_redacted_wherever_they_are() {
        let spec = serde_json::json!({
            "name": "m",
            "mtls": {"backends": [{"conf": {"fromCp": {"auth": {"token": {"inlineString": "s.root"}},
                "tls": {"caCert": {"inline": "QUJD"}, "serverName": "x"}}}}]}
        });
        let r = redact_inline(&spec).to_string();
        assert!(!r.contains("s.root") && !r.contains("QUJD"), "{r}");
        assert!(r.contains("(redacted)") && r.contains("serverName"), "{r}");
    }
}
