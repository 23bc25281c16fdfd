//! The HTTP proxy every request of the test browser goes through ([`RecordingProxy`]): it records
//! the host of each request, forwards those to the hosts it was given (global's API on loopback)
//! and answers 403 itself to any other host, CONNECT (HTTPS) included, without ever connecting
//! there. So a page that loads a font, a script or an image from a CDN, or calls another API,
//! shows up in [`RecordingProxy::foreign`] and no traffic leaves the machine.
//!
//! Upstream connections can be made from a given local address ([`RecordingProxy::start`]'s
//! `source`): from the host's own non-loopback address, global sees a reader that is not on
//! loopback (the connection itself still goes to 127.0.0.1).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request the browser made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserRequest {
    pub method: String,
    /// `host:port` it was for.
    pub authority: String,
    pub path: String,
    /// It went to one of the allowed hosts (else the proxy answered 403 itself).
    pub forwarded: bool,
    /// It carried `Authorization` / `Cookie`.
    pub authorization: bool,
    pub cookie: bool,
}

struct Shared {
    allowed: Vec<String>,
    http: reqwest::Client,
    seen: Mutex<Vec<BrowserRequest>>,
}

/// The running proxy; stops when dropped.
pub struct RecordingProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = Full<Bytes>;

/// Headers that belong to one hop, never forwarded.
const HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

impl RecordingProxy {
    /// Listens on a free loopback port; forwards requests for the `allowed` authorities
    /// (`127.0.0.1:PORT`), connecting from `source` when given.
    pub async fn start(allowed: &[String], source: Option<IpAddr>) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30));
        if let Some(ip) = source {
            http = http.local_address(ip);
        }
        let shared = Arc::new(Shared {
            allowed: allowed.to_vec(),
            http: http.build()?,
            seen: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
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
                        async move { Ok::<_, std::convert::Infallible>(serve(req, &s).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`, for the browser's `--proxy-server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<BrowserRequest> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The requests for hosts other than the allowed ones.
    pub fn foreign(&self) -> Vec<BrowserRequest> {
        self.requests()
            .into_iter()
            .filter(|r| !r.forwarded)
            .collect()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.shared.seen.lock().unwrap().clear();
    }
}

fn answer(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r
}

async fn serve(req: Request<Incoming>, s: &Shared) -> Response<Body> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let forwarded = req.method() != Method::CONNECT
        && req.uri().scheme_str() == Some("http")
        && s.allowed.contains(&authority);
    s.seen.lock().unwrap().push(BrowserRequest {
        method: req.method().to_string(),
        authority: authority.clone(),
        path: path.clone(),
        forwarded,
        authorization: req.headers().contains_key(hyper::header::AUTHORIZATION),
        cookie: req.headers().contains_key(hyper::header::COOKIE),
    });
    if !forwarded {
        return answer(
            StatusCode::FORBIDDEN,
            "the test proxy reaches only the hosts of the test\n",
        );
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST, "request body cut short\n");
    };
    let mut upstream = s
        .http
        .request(parts.method, format!("http://{authority}{path}"))
        .body(body);
    for (name, value) in &parts.headers {
        if !HOP.contains(&name.as_str()) {
            upstream = upstream.header(name, value);
        }
    }
    match upstream.send().await {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.unwrap_or_default();
            let mut r = Response::new(Full::new(body));
            *r.status_mut() = status;
            for (name, value) in &headers {
                if !HOP.contains(&name.as_str()) && name != hyper::header::CONTENT_LENGTH {
                    r.headers_mut().append(name, value.clone());
                }
            }
            r
        }
        Err(e) => answer(StatusCode::BAD_GATEWAY, &format!("upstream: {e}\n")),
    }
}

/// A non-loopback IPv4 address of this host (from `ip -4 addr`, else `hostname -I`), to connect
/// to loopback from as a reader from another host; `None` when the host has none.
pub fn non_loopback_address() -> Option<IpAddr> {
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let ip = run("ip", &["-o", "-4", "addr", "show", "scope", "global"]);
    let from_ip = ip
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string);
    let hostname = run("hostname", &["-I"]);
    from_ip
        .into_iter()
        .chain(hostname.split_whitespace().map(str::to_string))
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .find(|a| a.is_ipv4() && !a.is_loopback() && !a.is_unspecified())
}
