//! Server-streaming calls whose large `bytes` fields go out without a copy.
//!
//! tonic encodes every response message into a buffer of its own, so a
//! message that carries a column or an Arrow IPC piece in a `bytes` field is
//! copied once more on its way to the socket. `perf` on a loop of 1 M-point
//! reads put that copy (prost's `append_to`) at 7.5 % of the node's CPU.
//! Here a message that is one such field alone goes out as two HTTP/2 data
//! chunks: its gRPC prefix with the field's key and length, then the field's
//! own `Bytes`; any other message is encoded by prost, as tonic would. The
//! request is read and decoded as tonic does it, and the final status goes in
//! the trailers (or, for a call that fails before streaming, in the headers
//! of a trailers-only response), so clients and the node's call layer see an
//! ordinary gRPC call. [`OneMethod`] routes the one method of a service
//! that answers this way here, and its other methods to the generated
//! server.
//!
//! tonic's `Codec` cannot express this: an encoder writes each message into
//! tonic's buffer, which is the copy this avoids.

use crate::config::Framing;
use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use http_body_util::BodyExt;
use std::sync::Arc;
use tonic::Status;
use tonic::body::Body;

/// A field shorter than this is encoded with the rest of its message: two
/// chunks for a few bytes would cost more than the copy.
const SPLIT_AT: usize = 4096;

/// gRPC's message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// A response message that may be one `bytes` field alone.
pub(crate) trait LoneBytes: prost::Message {
    /// The field's number and contents, when the message is that field alone.
    fn lone_bytes(&self) -> Option<(u32, &Bytes)>;
}

/// Reads a unary request message from an HTTP/2 request body of at most
/// `limit` bytes of message, as tonic's server does, keeping the request's
/// metadata and extensions (the caller the call layer attached).
pub(crate) async fn unary_request<R, B>(
    request: http::Request<B>,
    limit: usize,
) -> Result<tonic::Request<R>, Status>
where
    R: prost::Message + Default,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    let (parts, body) = request.into_parts();
    let body = http_body_util::Limited::new(body, limit.saturating_add(PREFIX))
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Status::resource_exhausted(format!(
                    "the request is over the node's message limit of {limit} bytes"
                ))
            } else {
                Status::from_error(e)
            }
        })?
        .to_bytes();
    if body.len() < PREFIX {
        return Err(Status::internal("the request ended inside a message"));
    }
    if body[0] != 0 {
        return Err(Status::unimplemented(
            "the request is compressed; this call accepts only uncompressed messages",
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() - PREFIX != len {
        return Err(Status::invalid_argument(
            "the request body is not exactly one message",
        ));
    }
    let message = R::decode(body.slice(PREFIX..))
        .map_err(|e| Status::invalid_argument(format!("failed to decode Protobuf message: {e}")))?;
    Ok(tonic::Request::from_http(http::Request::from_parts(
        parts, message,
    )))
}

/// The HTTP/2 response of a server-streaming call: `messages`, then the
/// status in the trailers (OK, or the first error, which ends the stream).
pub(crate) fn response<M, S>(messages: S) -> http::Response<tonic::body::Body>
where
    M: LoneBytes + Send + 'static,
    S: Stream<Item = Result<M, Status>> + Send + Unpin + 'static,
{
    let frames = futures::stream::unfold(Some(messages), |messages| async move {
        let mut messages = messages?;
        Some(match messages.next().await {
            Some(Ok(message)) => (chunks(&message), Some(messages)),
            Some(Err(status)) => (vec![trailers(&status)], None),
            None => (vec![trailers(&Status::ok(""))], None),
        })
    })
    .flat_map(|frames| futures::stream::iter(frames.into_iter().map(Ok::<_, Status>)));
    let mut response = http::Response::new(tonic::body::Body::new(
        http_body_util::StreamBody::new(frames),
    ));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// One message as data chunks: a lone large `bytes` field as its prefix and
/// its own `Bytes`; anything else encoded whole.
fn chunks<M: LoneBytes>(message: &M) -> Vec<http_body::Frame<Bytes>> {
    if let Some((field, contents)) = message.lone_bytes().filter(|(_, b)| b.len() >= SPLIT_AT) {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
        let len = contents.len() as u64;
        let lead = key_len(field) + encoded_len_varint(len);
        let mut head = BytesMut::with_capacity(PREFIX + lead);
        head.put_u8(0);
        head.put_u32((lead + contents.len()) as u32);
        // The field's key and length as prost writes them; its contents follow.
        encode_key(field, WireType::LengthDelimited, &mut head);
        encode_varint(len, &mut head);
        return vec![
            http_body::Frame::data(head.freeze()),
            http_body::Frame::data(contents.clone()),
        ];
    }
    let mut whole = BytesMut::with_capacity(PREFIX + message.encoded_len());
    whole.put_u8(0);
    whole.put_u32(message.encoded_len() as u32);
    message
        .encode(&mut whole)
        .expect("the buffer was sized for the message");
    vec![http_body::Frame::data(whole.freeze())]
}

fn trailers(status: &Status) -> http_body::Frame<Bytes> {
    let mut headers = http::HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        headers.clear();
        Status::internal("a status the node could not encode")
            .add_header(&mut headers)
            .expect("a plain status encodes");
    }
    http_body::Frame::trailers(headers)
}

// --- the service that routes one method here ---

/// Answers the one method's requests, whole.
pub type Handler =
    Arc<dyn Fn(http::Request<Body>) -> BoxFuture<'static, http::Response<Body>> + Send + Sync>;

/// `generated`, except that requests for `path` ("/package.Service/Method")
/// go to `handler` when the node frames that way ([`Framing::ZeroCopy`]).
#[derive(Clone)]
pub struct OneMethod<G> {
    generated: G,
    path: &'static str,
    handler: Option<Handler>,
}

impl<G> OneMethod<G> {
    pub fn new(
        generated: G,
        path: &'static str,
        handler: Handler,
        framing: Framing,
    ) -> OneMethod<G> {
        OneMethod {
            generated,
            path,
            handler: (framing == Framing::ZeroCopy).then_some(handler),
        }
    }
}

impl<G: tonic::server::NamedService> tonic::server::NamedService for OneMethod<G> {
    const NAME: &'static str = G::NAME;
}

impl<G> tower::Service<http::Request<Body>> for OneMethod<G>
where
    G: tower::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
        >,
    G::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.generated.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match &self.handler {
            Some(handler) if request.uri().path() == self.path => {
                let answer = handler(request);
                Box::pin(async move { Ok(answer.await) })
            }
            _ => Box::pin(self.generated.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busbar_proto::v1::{self as pb, read_series_response::Part};
    use prost::Message;

    /// The body's data, joined, and its trailers.
    async fn body_of(response: http::Response<tonic::body::Body>) -> (Vec<u8>, http::HeaderMap) {
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        (collected.to_bytes().to_vec(), trailers)
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[tokio::test]
    async fn split_messages_are_the_bytes_prost_would_send() {
        let large = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let messages = vec![
            pb::ReadSeriesResponse {
                part: Some(Part::Series(pb::SeriesInfo {
                    path: "/a".into(),
                    ..Default::default()
                })),
            },
            pb::ReadSeriesResponse {
                part: Some(Part::Column(large.clone())),
            },
            pb::ReadSeriesResponse {
                part: Some(Part::ArrowIpc(Bytes::from_static(b"small"))),
            },
            pb::ReadSeriesResponse {
                part: Some(Part::ArrowIpc(large.slice(5..))),
            },
        ];
        let expected: Vec<u8> = messages.iter().flat_map(framed).collect();
        let stream = futures::stream::iter(messages.into_iter().map(Ok));
        let (data, trailers) = body_of(response(stream)).await;
        assert_eq!(data, expected);
        assert_eq!(trailers["grpc-status"], "0");
        // The large column went out as the caller's own memory.
        let only = pb::ReadSeriesResponse {
            part: Some(Part::Column(large.clone())),
        };
        let frames = chunks(&only);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].data_ref().unwrap().as_ptr(), large.as_ptr());
    }

    #[tokio::test]
    async fn an_error_ends_the_stream_with_its_status() {
        let stream = futures::stream::iter(vec![
            Ok(pb::ReadSeriesResponse {
                part: Some(Part::Column(Bytes::from_static(b"x"))),
            }),
            Err(Status::not_found("/a b is gone")),
            Ok(pb::ReadSeriesResponse { part: None }),
        ]);
        let (data, trailers) = body_of(response(stream)).await;
        assert_eq!(data.len(), PREFIX + 3);
        assert_eq!(trailers["grpc-status"], "5");
        assert_eq!(trailers["grpc-message"], "/a%20b%20is%20gone");
    }

    fn request(body: Vec<u8>) -> http::Request<http_body_util::Full<Bytes>> {
        http::Request::new(http_body_util::Full::new(Bytes::from(body)))
    }

    #[tokio::test]
    async fn requests_decode_as_tonic_decodes_them_and_bad_ones_are_refused() {
        let wanted = pb::ReadSeriesRequest {
            paths: vec!["/a".into()],
            form: 1,
            ..Default::default()
        };
        let mut good = request(framed(&wanted));
        good.extensions_mut().insert(7u32);
        let decoded = unary_request::<pb::ReadSeriesRequest, _>(good, 1024)
            .await
            .unwrap();
        assert_eq!(decoded.extensions().get::<u32>(), Some(&7));
        assert_eq!(decoded.into_inner(), wanted);
        let refused = |body: Vec<u8>, limit: usize| async move {
            unary_request::<pb::ReadSeriesRequest, _>(request(body), limit)
                .await
                .unwrap_err()
        };
        let mut compressed = framed(&wanted);
        compressed[0] = 1;
        assert_eq!(
            refused(compressed, 1024).await.code(),
            tonic::Code::Unimplemented
        );
        assert_eq!(
            refused(vec![0, 0], 1024).await.code(),
            tonic::Code::Internal
        );
        let mut two = framed(&wanted);
        two.extend(framed(&wanted));
        assert_eq!(
            refused(two, 1024).await.code(),
            tonic::Code::InvalidArgument
        );
        let garbage = vec![0, 0, 0, 0, 3, 0x0a, 0x05, 0x01];
        assert_eq!(
            refused(garbage, 1024).await.code(),
            tonic::Code::InvalidArgument
        );
        let big = refused(framed(&wanted), 3).await;
        assert_eq!(big.code(), tonic::Code::ResourceExhausted, "{big}");
    }
}
