//! `common::http::serve_http_with` against real TCP sockets, with short limits: a request within
//! them is served; a silent client, a slowloris client (headers a byte at a time), a trickled body
//! and an idle kept-alive connection are cut at the limit (a trickled body with a 408).
//!
//! Windows are generous on the late side (a loaded 2-core machine) but every case fails if its
//! limit is not enforced: the clients below would otherwise stay connected for many seconds.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use common::http::{HttpLimits, serve_http_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMITS: HttpLimits = HttpLimits {
    header_read: Duration::from_secs(1),
    request: Duration::from_secs(2),
};

/// How early a cut may be seen: timers never fire early, only clock rounding.
const EARLY: Duration = Duration::from_millis(100);
/// How late a cut may be seen on a loaded machine; far below what an unenforced limit gives.
const LATE: Duration = Duration::from_secs(3);
/// How long a client keeps trying before it decides the server never cut it.
const GIVE_UP: Duration = Duration::from_secs(15);

/// A server with one route, `POST /len`, that reads the whole body and answers its length.
/// Returns its port; the server stops when the test's runtime does.
async fn server() -> u16 {
    let app = Router::new().route(
        "/len",
        post(|body: Bytes| async move { body.len().to_string() }),
    );
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

async fn trickle(s: &mut TcpStream, started: Instant, bytes: &[u8], every: Duration) -> Seen {
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
