//! The HTTP API server loop of both control planes: axum on hyper with bounded header reads and
//! request times (`axum::serve` runs hyper without a timer, so it keeps idle and slow connections
//! forever). Global and zone serve their read/write APIs through it. Also what both APIs share
//! around it: error bodies as `application/problem+json` (RFC 9457: [`Problem`], [`problem`], and
//! the [`problem_errors`] middleware that gives every other error answer that shape), the `Host`
//! check, and the redaction of what readers see.

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
