//! The `:authority` of HTTP/2 requests on the Workload API's unix socket, made acceptable to the
//! HTTP/2 server. gRPC clients put the socket there: grpc-core (so py-spiffe) sends the path
//! percent-encoded (`tmp%2Fx%2Fapi.sock`), grpc-java the path itself; neither is an RFC 3986
//! authority, and hyper's HTTP/2 (h2) answers such a request with RST_STREAM PROTOCOL_ERROR
//! (hyperium/h2#487; go-spiffe sends `localhost` and is not affected). The authority means
//! nothing on a unix socket, so every accepted connection is relayed through [`relay`]: frames
//! from the client pass unchanged, except header blocks (HEADERS and their CONTINUATIONs), which
//! are decoded with the client's HPACK table and encoded again as literals the server never
//! indexes, an `:authority` that is not a valid authority replaced by `localhost`. Frames to the
//! client pass unchanged. A header block is at most [`MAX_HEADER_BLOCK`] bytes; a connection that
//! breaks the framing is closed.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// The client connection preface of HTTP/2.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest frame payload written: the size every HTTP/2 peer accepts.
const FRAME_MAX: usize = 16_384;
/// Largest header block (all its fragments) a client may send.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// What replaces an `:authority` that is not one.
const LOCALHOST: &[u8] = b"localhost";
/// Bytes buffered between the relay and the server, each way.
const PIPE_BYTES: usize = 64 * 1024;

/// The server's side of a relayed connection.
pub struct Relayed(DuplexStream);

impl AsyncRead for Relayed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Relayed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Relayed {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// Relays `client` to the returned stream, which the HTTP/2 server serves, holding `permit` (the
/// connection's place under the server's bound) while it runs. The relay ends when the server
/// closes its side (the client is then closed too) or when the client is gone.
pub fn relay(client: tokio::net::UnixStream, permit: tokio::sync::OwnedSemaphorePermit) -> Relayed {
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    tokio::spawn(async move {
        let _permit = permit;
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = tokio::io::split(ours);
        let down = tokio::io::copy(&mut from_server, &mut to_client);
        tokio::pin!(down);
        let up = async {
            let r = rewrite(&mut from_client, &mut to_server).await;
            let _ = to_server.shutdown().await;
            r
        };
        tokio::select! {
            _ = &mut down => {}
            r = up => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "Workload API connection closed");
                }
                // What the server still says reaches the client.
                let _ = down.as_mut().await;
            }
        }
    });
    Relayed(theirs)
}

fn broken(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

/// Copies HTTP/2 from `from` to `to`, header blocks rewritten. Ends at the client's end of file
/// between frames; errors on a framing or HPACK error.
pub async fn rewrite<R, W>(from: &mut R, to: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    from.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(broken("not HTTP/2 (no client connection preface)"));
    }
    to.write_all(PREFACE).await?;
    let mut hpack = loona_hpack::Decoder::new();
    // What h2 announces (its default): a client may not make its table larger.
    hpack.set_max_allowed_table_size(4096);
    // A header block being received: its stream, END_STREAM, its fragments so far.
    let mut block: Option<(u32, bool, Vec<u8>)> = None;
    loop {
        let mut head = [0u8; 9];
        match from.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && block.is_none() => {
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match kind {
            HEADERS | CONTINUATION => {
                if len > MAX_HEADER_BLOCK {
                    return Err(broken("a header frame is larger than accepted"));
                }
                let mut payload = vec![0u8; len];
                from.read_exact(&mut payload).await?;
                let (stream_of, end_stream, mut fragments) = match (kind, block.take()) {
                    (HEADERS, None) => (stream, flags & END_STREAM != 0, Vec::new()),
                    (CONTINUATION, Some(b)) if b.0 == stream => b,
                    _ => return Err(broken("a header block is interleaved with other frames")),
                };
                fragments.extend_from_slice(if kind == HEADERS {
                    fragment(&payload, flags)?
                } else {
                    &payload
                });
                if fragments.len() > MAX_HEADER_BLOCK {
                    return Err(broken("a header block is larger than accepted"));
                }
                if flags & END_HEADERS == 0 {
                    block = Some((stream_of, end_stream, fragments));
                    continue;
                }
                let headers = hpack
                    .decode(&fragments)
                    .map_err(|e| broken(format!("undecodable header block: {e}")))?;
                let encoded = encode(&with_valid_authority(headers));
                write_header_frames(to, stream_of, end_stream, &encoded).await?;
            }
            _ => {
                if block.is_some() {
                    return Err(broken("a header block is interleaved with other frames"));
                }
                to.write_all(&head).await?;
                let copied = tokio::io::copy(&mut (&mut *from).take(len as u64), to).await?;
                if copied != len as u64 {
                    return Err(broken("the connection ended inside a frame"));
                }
            }
        }
        to.flush().await?;
    }
}

/// The header block fragment of a HEADERS frame's payload, without padding and priority.
fn fragment(payload: &[u8], flags: u8) -> std::io::Result<&[u8]> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, rest) = p
            .split_first()
            .ok_or_else(|| broken("a padded HEADERS frame without its pad length"))?;
        pad = n as usize;
        p = rest;
    }
    if flags & PRIORITY != 0 {
        p = p
            .get(5..)
            .ok_or_else(|| broken("a HEADERS frame too short for its priority"))?;
    }
    p.get(..p.len().saturating_sub(pad))
        .filter(|_| pad <= p.len())
        .ok_or_else(|| broken("a HEADERS frame with more padding than payload"))
}

/// The headers, an `:authority` that is not a valid authority replaced by `localhost`.
fn with_valid_authority(mut headers: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    for (name, value) in &mut headers {
        if name == b":authority"
            && tonic::codegen::http::uri::Authority::try_from(value.as_slice()).is_err()
        {
            *value = LOCALHOST.to_vec();
        }
    }
    headers
}

/// HPACK of `headers`, each a literal without indexing with a literal name (RFC 7541 6.2.2), no
/// Huffman coding: nothing enters the server's dynamic table.
fn encode(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        for s in [name, value] {
            // Writing to a Vec cannot fail.
            let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, &mut out);
            out.extend_from_slice(s);
        }
    }
    out
}

/// `block` as a HEADERS frame and as many CONTINUATIONs as it takes.
async fn write_header_frames<W: AsyncWrite + Unpin>(
    to: &mut W,
    stream: u32,
    end_stream: bool,
    block: &[u8],
) -> std::io::Result<()> {
    let mut chunks = block.chunks(FRAME_MAX).peekable();
    let mut first = true;
    // An empty block is still one HEADERS frame.
    let empty: &[u8] = &[];
    loop {
        let chunk = match chunks.next() {
            Some(c) => c,
            None if first => empty,
            None => break,
        };
        let last = chunks.peek().is_none();
        let mut flags = if last { END_HEADERS } else { 0 };
        if first && end_stream {
            flags |= END_STREAM;
        }
        let kind = if first { HEADERS } else { CONTINUATION };
        let len = (chunk.len() as u32).to_be_bytes();
        let id = stream.to_be_bytes();
        to.write_all(&[
            len[1], len[2], len[3], kind, flags, id[0], id[1], id[2], id[3],
        ])
        .await?;
        to.write_all(chunk).await?;
        first = false;
        if last {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
        (name.as_bytes().to_vec(), value.as_bytes().to_vec())
    }

    #[test]
    fn an_authority_that_is_a_socket_path_becomes_localhost() {
        for (given, kept) in [
            ("tmp%2Fx%2Fapi.sock", "localhost"),
            ("/tmp/x/api.sock", "localhost"),
            ("localhost", "localhost"),
            ("127.0.0.1:8081", "127.0.0.1:8081"),
        ] {
            let out = with_valid_authority(vec![h(":path", "/S/M"), h(":authority", given)]);
            assert_eq!(
                out,
                vec![h(":path", "/S/M"), h(":authority", kept)],
                "{given}"
            );
        }
    }

    #[test]
    fn the_encoding_decodes_to_the_same_headers_and_big_blocks_are_continued() {
        let headers = vec![
            h(":method", "POST"),
            h("x-long", &"v".repeat(40_000)),
            h("workload.spiffe.io", "true"),
        ];
        let block = encode(&headers);
        assert_eq!(loona_hpack::Decoder::new().decode(&block).unwrap(), headers);
        let mut frames = Vec::new();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(write_header_frames(&mut frames, 3, true, &block))
            .unwrap();
        // HEADERS (END_STREAM), CONTINUATION, CONTINUATION (END_HEADERS).
        let mut kinds = Vec::new();
        let mut rest = frames.as_slice();
        let mut joined = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            assert!(len <= FRAME_MAX);
            kinds.push((rest[3], rest[4]));
            joined.extend_from_slice(&rest[9..9 + len]);
            rest = &rest[9 + len..];
        }
        assert_eq!(
            kinds,
            vec![
                (HEADERS, END_STREAM),
                (CONTINUATION, 0),
                (CONTINUATION, END_HEADERS)
            ]
        );
        assert_eq!(joined, block);
    }

    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = (payload.len() as u32).to_be_bytes();
        out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// Frames of `bytes` (after the preface): (kind, flags, stream, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut rest = bytes.strip_prefix(PREFACE.as_slice()).unwrap();
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    async fn relayed(input: &[u8]) -> (Vec<u8>, std::io::Result<()>) {
        let mut out = Vec::new();
        let r = rewrite(&mut &input[..], &mut out).await;
        (out, r)
    }

    #[tokio::test]
    async fn header_blocks_are_rewritten_and_every_other_frame_passes_as_it_came() {
        let headers = [
            h(":method", "POST"),
            h(":scheme", "http"),
            h(":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
            h(":authority", "tmp%2Fx%2Fapi.sock"),
            h("workload.spiffe.io", "true"),
        ];
        let mut encoder = loona_hpack::Encoder::new();
        let first = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        // The same again: now mostly references to the encoder's dynamic table.
        let second = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        assert!(second.len() < first.len());
        let mut input = PREFACE.to_vec();
        frame(&mut input, 0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let (a, b) = first.split_at(3);
        frame(&mut input, HEADERS, 0, 1, a);
        frame(&mut input, CONTINUATION, END_HEADERS, 1, b);
        frame(&mut input, 0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        let mut padded = vec![1u8];
        padded.extend_from_slice(&second);
        padded.push(0);
        frame(
            &mut input,
            HEADERS,
            END_HEADERS | END_STREAM | PADDED,
            3,
            &padded,
        );
        frame(&mut input, 0x8, 0, 0, &[0, 0, 1, 0]);
        let (out, r) = relayed(&input).await;
        r.unwrap();
        let got = frames(&out);
        let want_headers: Vec<_> = headers
            .iter()
            .map(|(n, v)| {
                if n == b":authority" {
                    h(":authority", "localhost")
                } else {
                    (n.clone(), v.clone())
                }
            })
            .collect();
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0], (0x4, 0, 0, vec![0, 3, 0, 0, 0, 100]));
        assert_eq!((got[1].0, got[1].1, got[1].2), (HEADERS, END_HEADERS, 1));
        assert_eq!(
            loona_hpack::Decoder::new().decode(&got[1].3).unwrap(),
            want_headers
        );
        assert_eq!(got[2], (0x0, END_STREAM, 1, vec![0, 0, 0, 0, 0]));
        assert_eq!(
            (got[3].0, got[3].1, got[3].2),
            (HEADERS, END_HEADERS | END_STREAM, 3)
        );
        // Decodable alone: nothing of the relay's output enters the server's table.
        assert_eq!(
            loona_hpack::Decoder::new().decode(&got[3].3).unwrap(),
            want_headers
        );
        assert_eq!(got[4], (0x8, 0, 0, vec![0, 0, 1, 0]));
    }

    #[tokio::test]
    async fn broken_framing_closes_the_connection() {
        let block = encode(&[h(":authority", "localhost")]);
        for (why, build) in [
            ("interleaved", {
                let mut i = PREFACE.to_vec();
                frame(&mut i, HEADERS, 0, 1, &block);
                frame(&mut i, 0x0, 0, 1, &[]);
                i
            }),
            ("continuation of nothing", {
                let mut i = PREFACE.to_vec();
                frame(&mut i, CONTINUATION, END_HEADERS, 1, &block);
                i
            }),
            ("too large", {
                let mut i = PREFACE.to_vec();
                frame(&mut i, HEADERS, 0, 1, &vec![0u8; MAX_HEADER_BLOCK + 1]);
                i
            }),
            ("not hpack", {
                let mut i = PREFACE.to_vec();
                frame(
                    &mut i,
                    HEADERS,
                    END_HEADERS,
                    1,
                    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                );
                i
            }),
            ("not http/2", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ] {
            let (_, r) = relayed(&build).await;
            assert!(r.is_err(), "{why}");
        }
    }

    #[test]
    fn padding_and_priority_are_taken_off_and_lies_refused() {
        let payload = [2u8, 0, 0, 0, 1, 9, b'a', b'b', 0, 0];
        assert_eq!(fragment(&payload, PADDED | PRIORITY).unwrap(), b"ab");
        assert!(fragment(&[9u8, 1], PADDED).is_err());
        assert!(fragment(&[], PADDED).is_err());
        assert!(fragment(&[1, 2], PRIORITY).is_err());
    }
}
