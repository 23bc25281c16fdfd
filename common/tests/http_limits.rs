//! `common::http::serve_http_with` and `serve_https_with` against real TCP sockets and real TLS
//! handshakes, with short limits: a request within them is served (over TLS by HTTP/1.1 and by
//! h2 as ALPN chose); a silent client, a slowloris client (headers a byte at a time), a trickled
//! body and an idle kept-alive connection are cut at the limit (a trickled body with a 408); over
//! TLS a client that connects and never completes its handshake is cut at the handshake limit,
//! and an idle HTTP/1.1 or h2 connection at the header limit.
//!
//! Windows are generous on the late side (a loaded 2-core machine) but every case fails if its
//! limit is not enforced: the clients below would otherwise stay connected for many seconds.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use common::http::{HTTPS_ALPN, HttpLimits, serve_http_with, serve_https_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMITS: HttpLimits = HttpLimits {
    header_read: Duration::from_secs(1),
    request: Duration::from_secs(2),
    tls_handshake: Duration::from_secs(1),
};

/// How early a cut may be seen: timers never fire early, only clock rounding.
const EARLY: Duration = Duration::from_millis(100);
/// How late a cut may be seen on a loaded machine; far below what an unenforced limit gives.
const LATE: Duration = Duration::from_secs(3);
/// How long a client keeps trying before it decides the server never cut it.
const GIVE_UP: Duration = Duration::from_secs(15);

/// A server with one route, `POST /len`, that reads the whole body and answers its length.
/// Returns its port; the server stops when the test's runtime does.
fn app() -> Router {
    Router::new().route(
        "/len",
        post(|body: Bytes| async move { body.len().to_string() }),
    )
}

async fn server() -> u16 {
    let app = app();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_http_with(
        listener,
        app,
        LIMITS,
        std::future::pending(),
    ));
    port
}

async fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// What a client saw of the server while it wrote `bytes` one at a time, `every` apart (or nothing
/// if `bytes` is empty): when the connection was closed (EOF, reset or a failed write), counted
/// from `started`, how many bytes it had written by then and everything it read.
struct Seen {
    closed: Option<Duration>,
    written: usize,
    read: Vec<u8>,
}

async fn trickle<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    started: Instant,
    bytes: &[u8],
    every: Duration,
) -> Seen {
    let mut seen = Seen {
        closed: None,
        written: 0,
        read: Vec::new(),
    };
    let mut buf = [0u8; 4096];
    let mut next_write = Instant::now() + every;
    while started.elapsed() < GIVE_UP {
        let wait = next_write.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                seen.closed = Some(started.elapsed());
                return seen;
            }
            Ok(Ok(n)) => {
                seen.read.extend_from_slice(&buf[..n]);
                continue;
            }
            Err(_) => {}
        }
        next_write += every;
        if seen.written < bytes.len() {
            if s.write_all(&bytes[seen.written..=seen.written])
                .await
                .is_err()
            {
                seen.closed = Some(started.elapsed());
                return seen;
            }
            seen.written += 1;
        }
    }
    seen
}

/// Reads one response with a `content-length` (what the route and a 408 send): status line and
/// body.
async fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or_else(|| panic!("no content-length in {head:?}"));
            if data.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + len]).to_string();
                let status = head.lines().next().unwrap().to_string();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(GIVE_UP, s.read(&mut buf))
            .await
            .expect("no response in time")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {data:?}");
        data.extend_from_slice(&buf[..n]);
    }
}

fn assert_cut(what: &str, closed: Option<Duration>, limit: Duration) -> Duration {
    let closed = closed.unwrap_or_else(|| panic!("{what}: still open after {GIVE_UP:?}"));
    assert!(
        closed + EARLY >= limit,
        "{what}: closed after {closed:?}, before the limit {limit:?}"
    );
    assert!(
        closed <= limit + LATE,
        "{what}: closed after {closed:?}, limit {limit:?}"
    );
    eprintln!("{what}: closed after {closed:?} (limit {limit:?})");
    closed
}

#[tokio::test]
async fn a_request_within_the_limits_is_served_and_kept_alive() {
    let port = server().await;
    let mut s = connect(port).await;
    for _ in 0..2 {
        s.write_all(b"POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let (status, body) = read_response(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(body, "5");
    }
    // A body sent slowly but within the request limit (10 bytes, 100 ms apart) is served too.
    s.write_all(b"POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"x").await.unwrap();
    }
    let (status, body) = read_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "10");
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_cut_at_the_header_limit() {
    let port = server().await;
    let started = Instant::now();
    let mut s = connect(port).await;
    let seen = trickle(&mut s, started, b"", Duration::from_millis(200)).await;
    assert_cut("silent client", seen.closed, LIMITS.header_read);
}

#[tokio::test]
async fn headers_sent_a_byte_at_a_time_are_cut_at_the_header_limit() {
    let port = server().await;
    let started = Instant::now();
    let mut s = connect(port).await;
    let head =
        b"POST /len HTTP/1.1\r\nHost: t\r\nUser-Agent: slowloris\r\nContent-Length: 0\r\n\r\n";
    // 200 ms a byte: the whole head would take 15 s; the limit is 1 s and is not reset by bytes.
    let seen = trickle(&mut s, started, head, Duration::from_millis(200)).await;
    assert_cut("slowloris client", seen.closed, LIMITS.header_read);
    assert!(seen.written < head.len(), "sent the whole head");
    assert!(
        !seen.read.starts_with(b"HTTP/1.1 200"),
        "served: {:?}",
        String::from_utf8_lossy(&seen.read)
    );
}

#[tokio::test]
async fn a_trickled_body_gets_a_408_and_is_cut_at_the_request_limit() {
    let port = server().await;
    let mut s = connect(port).await;
    let started = Instant::now();
    s.write_all(b"POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    // 200 ms a byte: the whole body would take 20 s; the limit is 2 s.
    let seen = trickle(&mut s, started, &[b'x'; 100], Duration::from_millis(200)).await;
    let read = String::from_utf8_lossy(&seen.read).to_string();
    assert!(read.starts_with("HTTP/1.1 408"), "answered {read:?}");
    assert_cut("trickled body", seen.closed, LIMITS.request);
    assert!(seen.written < 100, "sent the whole body");
}

#[tokio::test]
async fn a_kept_alive_connection_idle_after_a_response_is_cut_at_the_header_limit() {
    let port = server().await;
    let mut s = connect(port).await;
    s.write_all(b"POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    let (status, body) = read_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "2");
    let started = Instant::now();
    let seen = trickle(&mut s, started, b"", Duration::from_millis(200)).await;
    assert_cut(
        "idle kept-alive connection",
        seen.closed,
        LIMITS.header_read,
    );
    assert!(seen.read.is_empty(), "{:?}", seen.read);
}

/// An HTTPS server (generated identity) with the same route, offering h2 and HTTP/1.1. Returns
/// its port and the CA to trust.
async fn tls_server() -> (u16, String) {
    let dir = tempfile::tempdir().unwrap();
    let (material, _) = common::tls::load_or_generate(
        dir.path(),
        &common::tls::GeneratedIdentity {
            dir: "t-tls",
            ca_file: "t-ca.pem",
            ca_common_name: "test CA",
            server_common_name: "test",
            clients_flag: "--ca-file",
            extra_names: &[],
        },
    )
    .unwrap();
    let ca = std::fs::read_to_string(dir.path().join("t-ca.pem")).unwrap();
    let config = common::tls::server_config(&material, &HTTPS_ALPN).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_https_with(
        listener,
        app(),
        config,
        LIMITS,
        std::future::pending(),
    ));
    (port, ca)
}

/// A TLS client connection with these ALPN protocols, trusting `ca`.
async fn tls_connect(
    port: u16,
    ca: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = connect(port).await;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

fn https_client(ca: &str, h2: bool) -> reqwest::Client {
    let b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10));
    let b = if h2 {
        b.http2_prior_knowledge()
    } else {
        b.http1_only()
    };
    b.build().unwrap()
}

#[tokio::test]
async fn https_serves_http1_and_h2_as_alpn_chose() {
    let (port, ca) = tls_server().await;
    for (h2, version) in [
        (false, reqwest::Version::HTTP_11),
        (true, reqwest::Version::HTTP_2),
    ] {
        let r = https_client(&ca, h2)
            .post(format!("https://localhost:{port}/len"))
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "5");
    }
    // ALPN as the server chose it.
    let s = tls_connect(port, &ca, &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let s = tls_connect(port, &ca, &[b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn a_client_that_never_completes_its_tls_handshake_is_cut_at_the_handshake_limit() {
    let (port, _) = tls_server().await;
    // Silent: not even a ClientHello.
    let started = Instant::now();
    let mut s = connect(port).await;
    let seen = trickle(&mut s, started, b"", Duration::from_millis(200)).await;
    assert_cut("silent TLS client", seen.closed, LIMITS.tls_handshake);
    assert!(seen.read.is_empty(), "{:?}", seen.read);
    // The start of a ClientHello, a byte at a time: the limit is not reset by bytes.
    let started = Instant::now();
    let mut s = connect(port).await;
    let hello_start = [
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let seen = trickle(&mut s, started, &hello_start, Duration::from_millis(200)).await;
    assert_cut("slow ClientHello", seen.closed, LIMITS.tls_handshake);
}

#[tokio::test]
async fn an_idle_https_connection_is_cut_at_the_header_limit_over_http1_and_h2() {
    let (port, ca) = tls_server().await;
    // HTTP/1.1 over TLS: handshake done, then nothing.
    let mut s = tls_connect(port, &ca, &[b"http/1.1"]).await;
    let started = Instant::now();
    let seen = trickle(&mut s, started, b"", Duration::from_millis(200)).await;
    assert_cut("idle HTTP/1.1 over TLS", seen.closed, LIMITS.header_read);
    // h2: the preface and empty SETTINGS, then no request.
    let mut s = tls_connect(port, &ca, &[b"h2"]).await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let seen = trickle(&mut s, started, b"", Duration::from_millis(200)).await;
    assert_cut("idle h2", seen.closed, LIMITS.header_read);
    // What the server sent: its SETTINGS, and at the cut a GOAWAY (frame type 7).
    assert!(
        frames(&seen.read).contains(&7),
        "no GOAWAY in {:?}",
        frames(&seen.read)
    );
}

/// The types of the h2 frames in `data` (whole frames only).
fn frames(data: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= data.len() {
        let len = u32::from_be_bytes([0, data[at], data[at + 1], data[at + 2]]) as usize;
        types.push(data[at + 3]);
        at += 9 + len;
    }
    types
}
