//! The identity service mounted with a codec that encodes each response into a buffer of its exact
//! size. tonic's default codec gives every response stream an 8 KiB encoding buffer that lives as
//! long as the stream (the part not yet used stays allocated after each message is split off), so
//! with tens of thousands of connected proxies it is the largest cost per proxy. Here the buffer
//! starts empty and each message reserves what it needs: a stream keeps at most its last message.
//!
//! [`IdentityService`] routes the one method of `DataplaneIdentity` exactly as the generated
//! server does (same path, same defaults: no compression, 4 MiB decoding limit), with this codec.

use std::convert::Infallible;
use std::task::{Context, Poll};

use prost::Message;
use proto::dpid::dataplane_identity_server::{DataplaneIdentity, SERVICE_NAME};
use proto::dpid::{IdentityRequest, IdentityResponse};
use tonic::body::Body as TonicBody;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::{Request, Response, Status};

use super::DpServer;

/// The method's path, as clients call it.
pub const STREAM_PATH: &str = "/kmesh.identity.v1.DataplaneIdentity/Stream";

/// tonic's default threshold for yielding encoded messages to the transport.
const YIELD_THRESHOLD: usize = 32 * 1024;
/// The request decoding buffer (one small message per stream; freed once it is read).
const REQUEST_BUFFER: usize = 4 * 1024;

/// Encodes responses into exactly sized buffers.
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

/// Decodes the registration request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = IdentityRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        IdentityRequest::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode the identity request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(REQUEST_BUFFER, YIELD_THRESHOLD)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityCodec;

impl Codec for IdentityCodec {
    type Encode = IdentityResponse;
    type Decode = IdentityRequest;
    type Encoder = ExactEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ExactEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder
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

struct StreamMethod(DpServer);

impl tonic::server::ServerStreamingService<IdentityRequest> for StreamMethod {
    type Response = IdentityResponse;
    type ResponseStream = <DpServer as DataplaneIdentity>::StreamStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<IdentityRequest>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { server.stream(request).await })
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
        if req.uri().path() == STREAM_PATH {
            let method = StreamMethod(self.server.clone());
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(IdentityCodec);
                Ok(grpc.server_streaming(method, req).await)
            })
        } else {
            Box::pin(async move { Ok(Status::unimplemented("").into_http()) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_the_generated_one() {
        assert_eq!(STREAM_PATH, format!("/{SERVICE_NAME}/Stream"));
    }
}
