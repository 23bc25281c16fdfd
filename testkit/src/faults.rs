//! A fault-injecting HTTP/1.1 proxy to put in front of a real OpenBao (tests and drills only),
//! built on hyper (server and client connections): its [`Fault`] can be switched at runtime
//! between passing requests through, delaying them, answering 5xx or 429 (with `Retry-After`)
//! itself, or dropping the connection without an answer. Every request that reaches it is counted
//! (with its path), so tests can show that a client backs off instead of looping.
//!
//! One request per connection: requests are forwarded with `Connection: close` on a new upstream
//! connection and the client's connection is closed after the answer, so no pooled connection
//! outlives a mode switch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with the next requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the upstream Vault.
    Pass,
    /// Wait, then forward.
    Delay(Duration),
    /// Answer this status (5xx) with a Vault-style `{"errors": [...]}` body.
    Status(u16),
    /// Answer 429 Too Many Requests, with `Retry-After: <secs>` when given.
    RateLimit { retry_after: Option<u64> },
    /// Close the connection without answering.
    Drop,
}

/// One request seen by the proxy.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub method: String,
    pub path: String,
}

struct Shared {
    upstream: String,
    fault: Mutex<Fault>,
    seen: Mutex<Vec<Seen>>,
    total: AtomicU64,
}

/// The running proxy; stops when dropped.
pub struct FaultProxy {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the proxy closes a connection without an answer.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("dropped by the injected fault")]
    Fault,
    #[error("upstream failed mid-answer: {0}")]
    Upstream(#[from] hyper::Error),
}

type Body = Full<Bytes>;

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://HOST:PORT`).
    pub async fn start(upstream: &str) -> std::io::Result<FaultProxy> {
        let upstream = upstream
            .trim_end_matches('/')
            .strip_prefix("http://")
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the fault proxy forwards to http:// upstreams only",
                )
            })?
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(Fault::Pass),
            seen: Mutex::new(Vec::new()),
            total: AtomicU64::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { serve(req, &s).await }
                    });
                    // An error here is a dropped connection: the injected fault or the upstream.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(conn), service)
                        .await;
                });
            }
        });
        Ok(FaultProxy { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`: the address to give clients instead of Vault's.
    pub fn addr(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    pub fn fault(&self) -> Fault {
        self.shared
            .fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests received since the start.
    pub fn total(&self) -> u64 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// Requests received since `since`.
    pub fn seen_since(&self, since: Instant) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.at >= since)
            .cloned()
            .collect()
    }
}

async fn serve(req: Request<Incoming>, shared: &Shared) -> Result<Response<Body>, Closed> {
    shared.total.fetch_add(1, Ordering::Relaxed);
    shared
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Seen {
            at: Instant::now(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
        });
    let fault = shared
        .fault
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match fault {
        Fault::Pass => forward(req, &shared.upstream).await,
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            forward(req, &shared.upstream).await
        }
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reason = status.canonical_reason().unwrap_or("Error");
            let body = format!(r#"{{"errors":["injected fault: {code} {reason}"]}}"#);
            Ok(answer(status, None, body))
        }
        Fault::RateLimit { retry_after } => {
            let body = r#"{"errors":["request path \"/v1/...\": rate limit quota exceeded"]}"#;
            Ok(answer(
                StatusCode::TOO_MANY_REQUESTS,
                retry_after,
                body.to_string(),
            ))
        }
        Fault::Drop => Err(Closed::Fault),
    }
}

/// An answer of the proxy itself: a JSON body, `Retry-After` when given.
fn answer(status: StatusCode, retry_after: Option<u64>, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secs) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Sends the request upstream on a new connection with `Connection: close` and returns the
/// answer; 502 when the upstream cannot be reached (like a dead Vault behind a live load
/// balancer).
async fn forward(req: Request<Incoming>, upstream: &str) -> Result<Response<Body>, Closed> {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let unreachable = || {
        Ok(answer(
            StatusCode::BAD_GATEWAY,
            None,
            r#"{"errors":["upstream unreachable"]}"#.to_string(),
        ))
    };
    let Ok(conn) = TcpStream::connect(upstream).await else {
        return unreachable();
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(conn)).await
    else {
        return unreachable();
    };
    tokio::spawn(connection);
    parts.headers.remove("keep-alive");
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("close"));
    let resp = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (mut parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    parts.headers.remove(CONNECTION);
    parts.headers.remove("keep-alive");
    Ok(Response::from_parts(parts, Full::new(body)))
}
