//! The identity service, mounted so that a connected proxy costs the zone as little memory as
//! possible. tonic encodes a response stream through a buffer that lives as long as the stream:
//! 8 KiB with the default codec, and whatever the last message needed with any codec (the buffer
//! keeps the allocation the last message was split from). With tens of thousands of proxies
//! connected, mostly idle between rotations, that was the largest cost per proxy.
//!
//! [`IdentityService`] routes the two methods of `DataplaneIdentity` as the generated server does
//! (same paths; same defaults: no compression, 4 MiB decoding limit) and lets tonic decode the
//! request (`Stream`) or the request stream (`Session`), run the handler and write the response
//! headers, or the whole answer when the handler refuses. When the handler answers with a stream, the body tonic made is replaced with
//! [`FramedBody`], which frames each message into its own exactly sized buffer that is freed once
//! the transport has written it, and ends with the same trailers tonic would send.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use futures::stream::{BoxStream, StreamExt};
use http_body::Frame;
use prost::Message;
use proto::dpid::dataplane_identity_server::{DataplaneIdentity, SERVICE_NAME};
use proto::dpid::{AgentMessage, IdentityRequest, IdentityResponse};
use tonic::body::Body as TonicBody;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Bytes, Service, StdError, http};
use tonic::{Request, Response, Status};

use super::DpServer;

/// The methods' paths, as clients call them.
pub const STREAM_PATH: &str = "/kmesh.identity.v1.DataplaneIdentity/Stream";
pub const SESSION_PATH: &str = "/kmesh.identity.v1.DataplaneIdentity/Session";

/// tonic's default threshold for yielding encoded messages to the transport.
const YIELD_THRESHOLD: usize = 32 * 1024;
/// The request decoding buffer (one small message per stream; freed once it is read).
const REQUEST_BUFFER: usize = 4 * 1024;
/// The gRPC message prefix: compression flag and length.
const PREFIX: usize = 5;

type Responses = BoxStream<'static, Result<IdentityResponse, Status>>;

/// Encodes responses into exactly sized buffers (used only where tonic encodes: never for a
/// stream that [`FramedBody`] carries, but it must not allocate tonic's 8 KiB up front either).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExactEncoder;

impl Encoder for ExactEncoder {
    type Item = IdentityResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("cannot encode the identity response: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(0, YIELD_THRESHOLD)
    }
}

/// Decodes what the agent sends: the registration request (`Stream`), or its messages
/// (`Session`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestDecoder<T>(std::marker::PhantomData<T>);

impl<T: Message + Default + Send + 'static> Decoder for RequestDecoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        T::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode the agent's message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(REQUEST_BUFFER, YIELD_THRESHOLD)
    }
}

/// Responses as [`ExactEncoder`] writes them, requests of type `T`.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityCodec<T>(std::marker::PhantomData<T>);

impl<T: Message + Default + Send + 'static> Codec for IdentityCodec<T> {
    type Encode = IdentityResponse;
    type Decode = T;
    type Encoder = ExactEncoder;
    type Decoder = RequestDecoder<T>;

    fn encoder(&mut self) -> Self::Encoder {
        ExactEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(std::marker::PhantomData)
    }
}

/// One gRPC message: the 5-byte prefix (uncompressed) and the encoded message, in one buffer
/// of exactly that size.
pub fn frame(msg: &IdentityResponse) -> Result<Bytes, Status> {
    let len = msg.encoded_len();
    let prefix_len = u32::try_from(len)
        .map_err(|_| Status::internal("the identity response is too large to frame"))?;
    let mut buf = Vec::with_capacity(PREFIX + len);
    buf.push(0);
    buf.extend_from_slice(&prefix_len.to_be_bytes());
    msg.encode(&mut buf)
        .map_err(|e| Status::internal(format!("cannot encode the identity response: {e}")))?;
    Ok(Bytes::from(buf))
}

/// The response body of a proxy's stream: each message framed on its own, then the trailers
/// (`grpc-status: 0` when the stream ends, the status when it yields an error), as tonic's
/// server body does. It keeps nothing of a message once the transport has taken it.
pub struct FramedBody {
    responses: Responses,
    ended: bool,
}

impl FramedBody {
    pub fn new(responses: Responses) -> Self {
        Self {
            responses,
            ended: false,
        }
    }

    fn trailers(status: &Status) -> Result<Frame<Bytes>, Status> {
        let mut trailers = http::HeaderMap::with_capacity(3);
        status.add_header(&mut trailers)?;
        Ok(Frame::trailers(trailers))
    }
}

impl Body for FramedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let next = ready!(self.responses.poll_next_unpin(cx));
        Poll::Ready(Some(match next {
            Some(Ok(msg)) => frame(&msg).map(Frame::data),
            Some(Err(status)) => {
                self.ended = true;
                Self::trailers(&status)
            }
            None => {
                self.ended = true;
                Self::trailers(&Status::ok(""))
            }
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// `DataplaneIdentity` as a tower service, with [`IdentityCodec`].
#[derive(Clone)]
pub struct IdentityService {
    server: DpServer,
}

impl IdentityService {
    pub fn new(server: DpServer) -> Self {
        Self { server }
    }
}

impl tonic::server::NamedService for IdentityService {
    const NAME: &'static str = SERVICE_NAME;
}

/// Runs the handler for tonic and hands the response stream to [`IdentityService::call`]
/// (through `taken`), giving tonic an empty one in its place.
struct StreamMethod {
    server: DpServer,
    taken: Arc<Mutex<Option<Responses>>>,
}

impl tonic::server::ServerStreamingService<IdentityRequest> for StreamMethod {
    type Response = IdentityResponse;
    type ResponseStream = Responses;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<IdentityRequest>) -> Self::Future {
        let server = self.server.clone();
        let taken = self.taken.clone();
        Box::pin(async move {
            let response = server.stream(request).await?;
            Ok(response.map(|responses| {
                *taken.lock().unwrap_or_else(|e| e.into_inner()) = Some(responses);
                futures::stream::empty().boxed()
            }))
        })
    }
}

/// [`StreamMethod`] for `Session`: the agent's messages in, bundles out.
struct SessionMethod {
    server: DpServer,
    taken: Arc<Mutex<Option<Responses>>>,
}

impl tonic::server::StreamingService<AgentMessage> for SessionMethod {
    type Response = IdentityResponse;
    type ResponseStream = Responses;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<tonic::Streaming<AgentMessage>>) -> Self::Future {
        let server = self.server.clone();
        let taken = self.taken.clone();
        Box::pin(async move {
            let response = server.session(request).await?;
            Ok(response.map(|responses| {
                *taken.lock().unwrap_or_else(|e| e.into_inner()) = Some(responses);
                futures::stream::empty().boxed()
            }))
        })
    }
}

impl<B> Service<http::Request<B>> for IdentityService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let session = match req.uri().path() {
            STREAM_PATH => false,
            SESSION_PATH => true,
            _ => return Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        };
        let taken = Arc::new(Mutex::new(None));
        let server = self.server.clone();
        let method_taken = taken.clone();
        Box::pin(async move {
            let response = if session {
                let method = SessionMethod {
                    server,
                    taken: method_taken,
                };
                tonic::server::Grpc::new(IdentityCodec::<AgentMessage>::default())
                    .max_decoding_message_size(common::limits::DP_REQUEST_BYTES)
                    .streaming(method, req)
                    .await
            } else {
                let method = StreamMethod {
                    server,
                    taken: method_taken,
                };
                tonic::server::Grpc::new(IdentityCodec::<IdentityRequest>::default())
                    .max_decoding_message_size(common::limits::DP_REQUEST_BYTES)
                    .server_streaming(method, req)
                    .await
            };
            let responses = taken.lock().unwrap_or_else(|e| e.into_inner()).take();
            Ok(match responses {
                // The handler answered with a stream: tonic's headers, our body.
                Some(responses) => {
                    let (parts, _empty) = response.into_parts();
                    http::Response::from_parts(parts, TonicBody::new(FramedBody::new(responses)))
                }
                // A refusal (or a request that could not be read): tonic's whole answer.
                None => response,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paths_are_the_generated_ones() {
        assert_eq!(STREAM_PATH, format!("/{SERVICE_NAME}/Stream"));
        assert_eq!(SESSION_PATH, format!("/{SERVICE_NAME}/Session"));
    }

    fn response(generation: u64) -> IdentityResponse {
        IdentityResponse {
            generation,
            cert_chain_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            key_pem: Some("KEY".into()),
            trust_bundle_pem: "CA".into(),
            backend: "ca-1".into(),
            serial: "01:02".into(),
            not_before_unix: 1,
            not_after_unix: 2,
            zone_time_unix_ms: 3,
            csr_request: None,
        }
    }

    async fn next_frame(body: &mut FramedBody) -> Option<Frame<Bytes>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|f| f.unwrap())
    }

    #[test]
    fn a_frame_is_the_prefix_and_the_message_in_a_buffer_of_that_size() {
        let msg = response(7);
        let framed = frame(&msg).unwrap();
        let encoded = msg.encode_to_vec();
        assert_eq!(framed.len(), PREFIX + encoded.len());
        assert_eq!(framed[0], 0, "not compressed");
        assert_eq!(&framed[1..5], &(encoded.len() as u32).to_be_bytes());
        assert_eq!(&framed[5..], &encoded[..]);
        assert_eq!(IdentityResponse::decode(&framed[5..]).unwrap(), msg);
    }

    #[tokio::test]
    async fn the_body_carries_each_message_then_the_status_as_trailers() {
        let stream = futures::stream::iter(vec![Ok(response(1)), Ok(response(2))]).boxed();
        let mut body = FramedBody::new(stream);
        for generation in [1, 2] {
            let data = next_frame(&mut body).await.unwrap().into_data().unwrap();
            assert_eq!(
                IdentityResponse::decode(&data[5..]).unwrap().generation,
                generation
            );
        }
        let trailers = next_frame(&mut body)
            .await
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert!(body.is_end_stream());
        assert!(next_frame(&mut body).await.is_none());

        let stream = futures::stream::iter(vec![
            Ok(response(1)),
            Err(Status::unavailable("the zone is shutting down")),
        ])
        .boxed();
        let mut body = FramedBody::new(stream);
        assert!(next_frame(&mut body).await.unwrap().is_data());
        let trailers = next_frame(&mut body)
            .await
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(
            trailers["grpc-status"],
            (tonic::Code::Unavailable as i32).to_string().as_str()
        );
        assert_eq!(
            trailers["grpc-message"],
            "the%20zone%20is%20shutting%20down"
        );
        assert!(next_frame(&mut body).await.is_none());
    }
}
