//! A fault-injecting HTTP/1.1 proxy to put in front of a real OpenBao (tests and drills only): its
//! [`Fault`] can be switched at runtime between passing requests through, delaying them,
//! answering 5xx or 429 (with `Retry-After`) itself, or dropping the connection without an answer.
//! Every request that reaches it is counted (with its path), so tests can show that a client backs
//! off instead of looping.
//!
//! One request per connection: requests are forwarded with `Connection: close` and the client's
//! connection is closed after the answer, so no pooled connection outlives a mode switch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, &upstream, &s).await;
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

const MAX_HEAD: usize = 64 * 1024;

/// Reads one request: its head (up to the blank line) and a `Content-Length` body.
async fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, body)))
}

async fn serve(mut conn: TcpStream, upstream: &str, shared: &Shared) -> std::io::Result<()> {
    let Some((head, body)) = read_request(&mut conn).await? else {
        return Ok(());
    };
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    shared.total.fetch_add(1, Ordering::Relaxed);
    shared
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Seen {
            at: Instant::now(),
            method,
            path,
        });
    let fault = shared
        .fault
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match fault {
        Fault::Pass => forward(&mut conn, upstream, &head, &body).await,
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            forward(&mut conn, upstream, &head, &body).await
        }
        Fault::Status(code) => {
            let reason = reqwest::StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            let body = format!(r#"{{"errors":["injected fault: {code} {reason}"]}}"#);
            answer(&mut conn, code, reason, &[], &body).await
        }
        Fault::RateLimit { retry_after } => {
            let extra: Vec<(&str, String)> = retry_after
                .map(|s| vec![("Retry-After", s.to_string())])
                .unwrap_or_default();
            let body = r#"{"errors":["request path \"/v1/...\": rate limit quota exceeded"]}"#;
            answer(&mut conn, 429, "Too Many Requests", &extra, body).await
        }
        Fault::Drop => {
            let _ = conn.shutdown().await;
            Ok(())
        }
    }
}

async fn answer(
    conn: &mut TcpStream,
    code: u16,
    reason: &str,
    extra: &[(&str, String)],
    body: &str,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    conn.write_all(out.as_bytes()).await?;
    conn.shutdown().await
}

/// Sends the request upstream with `Connection: close` and copies the answer back.
async fn forward(
    conn: &mut TcpStream,
    upstream: &str,
    head: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut up = match TcpStream::connect(upstream).await {
        Ok(u) => u,
        Err(_) => {
            // Like a dead Vault behind a live load balancer.
            return answer(
                conn,
                502,
                "Bad Gateway",
                &[],
                r#"{"errors":["upstream unreachable"]}"#,
            )
            .await;
        }
    };
    let mut out = String::with_capacity(head.len() + 32);
    for line in head.trim_end().lines() {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("keep-alive:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes()).await?;
    up.write_all(body).await?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).await?;
    conn.write_all(&resp).await?;
    conn.shutdown().await
}
