//! Server-streaming calls whose messages carry Arrow IPC pieces, read off
//! the HTTP/2 body here instead of through tonic's decoder.
//!
//! tonic copies every DATA frame into one growing decode buffer (and copies
//! again when it grows), and a piece sliced from that buffer sits at an
//! arbitrary address, so arrow-ipc copies each column once more to align it.
//! Measured with `perf` on a loop of 1 M-point reads, those three copies were
//! a fifth of the client's CPU. Here each piece is copied once, from the
//! frames straight into a buffer of its exact size with Arrow's 64-byte
//! alignment, so the record batches decoded from it are slices of it.
//!
//! Everything else about the call is tonic's: the channel, the interceptor
//! (session token, deadline, trace id), the status in the headers or the
//! trailers and its mapping to [`Error`].

use crate::api::BoxStream;
use crate::error::{Error, ErrorCode, Result};
use arrow_buffer::{Buffer, MutableBuffer};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use tonic::Status;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
use tower::{Service, ServiceExt};

/// A message larger than this ends the call: the pieces a node sends hold
/// one stored chunk (well under 1 MiB), and the buffer for a message is
/// allocated whole when its length arrives.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// gRPC's message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;
/// Enough of a message's start to hold one field's key and length.
const LEAD: usize = 16;

/// One message of the stream.
#[derive(Debug)]
pub(crate) enum Piece<M> {
    /// The message was its `bytes` field alone: the field's contents.
    Bytes(Buffer),
    /// Any other message, decoded.
    Message(M),
}

/// Calls the server-streaming method at `path` ("/package.Service/Method")
/// with `request`. Messages that are just their `bytes` field numbered
/// `field` come out as [`Piece::Bytes`], all others as [`Piece::Message`].
/// `service` is a connection with the call context (`Client::intercepted`).
pub(crate) async fn server_streaming<S, B, Req, M>(
    mut service: S,
    path: &'static str,
    request: Req,
    field: u32,
) -> Result<BoxStream<Piece<M>>>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
    Req: prost::Message,
    M: prost::Message + Default + Send + 'static,
{
    let mut body = BytesMut::with_capacity(PREFIX + request.encoded_len());
    body.put_u8(0);
    body.put_u32(request.encoded_len() as u32);
    request
        .encode(&mut body)
        .map_err(|e| Error::new(ErrorCode::Internal, format!("encoding the request: {e}")))?;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            body.freeze(),
        )))
        .map_err(|e| Error::new(ErrorCode::Internal, format!("building the request: {e}")))?;
    let transport = |e: S::Error| Error::from(Status::from_error(e.into()));
    let response = service
        .ready()
        .await
        .map_err(transport)?
        .call(request)
        .await
        .map_err(transport)?;
    let (head, body) = response.into_parts();
    // A status in the headers ("trailers-only") ends the call at once: a
    // failure, or a stream without messages.
    let ended = match Status::from_header_map(&head.headers) {
        Some(status) if status.code() != tonic::Code::Ok => return Err(status.into()),
        Some(_) => true,
        None if head.status != http::StatusCode::OK => {
            return Err(http_status(head.status).into());
        }
        None => false,
    };
    let state = (body, Framer::<M>::new(field), ended);
    Ok(Box::pin(futures::stream::try_unfold(
        state,
        |(mut body, mut framer, mut ended)| async move {
            loop {
                if let Some(piece) = framer.ready.pop_front() {
                    return Ok(Some((piece, (body, framer, ended))));
                }
                if ended {
                    return Ok(None);
                }
                match body.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => framer.push(data)?,
                        Err(frame) => {
                            let trailers = frame.into_trailers().unwrap_or_default();
                            end_status(Some(&trailers))?;
                            framer.finish()?;
                            ended = true;
                        }
                    },
                    Some(Err(error)) => return Err(Status::from_error(error.into()).into()),
                    None => {
                        // The body ended without trailers, which only a
                        // trailers-only answer may (handled above).
                        end_status(None)?;
                        return Ok(None);
                    }
                }
            }
        },
    )))
}

/// The call's final status: `Ok` when the trailers say so.
fn end_status(trailers: Option<&http::HeaderMap>) -> Result<()> {
    match trailers.and_then(Status::from_header_map) {
        Some(status) if status.code() == tonic::Code::Ok => Ok(()),
        Some(status) => Err(status.into()),
        None => Err(Status::internal("the stream ended without a grpc-status").into()),
    }
}

/// The gRPC code for an HTTP status that came without one (a proxy's
/// answer), as gRPC's HTTP mapping gives it.
fn http_status(status: http::StatusCode) -> Status {
    let code = match status {
        http::StatusCode::BAD_REQUEST => tonic::Code::Internal,
        http::StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        http::StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
        http::StatusCode::NOT_FOUND => tonic::Code::Unimplemented,
        http::StatusCode::TOO_MANY_REQUESTS
        | http::StatusCode::BAD_GATEWAY
        | http::StatusCode::SERVICE_UNAVAILABLE
        | http::StatusCode::GATEWAY_TIMEOUT => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    };
    Status::new(code, format!("the server answered HTTP {status}"))
}

fn malformed(what: &str) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("malformed gRPC stream from the server: {what}"),
    )
}

/// Where the framer is in the current message.
enum State {
    /// Reading the 5-byte prefix.
    Prefix { bytes: [u8; PREFIX], have: usize },
    /// Reading the message's first bytes, until its shape is known.
    Lead { len: usize, bytes: Vec<u8> },
    /// Copying the `bytes` field's contents into their aligned buffer.
    Contents { out: MutableBuffer, left: usize },
    /// Collecting any other message whole, for prost.
    Whole { len: usize, bytes: Vec<u8> },
}

impl State {
    /// Before a message: nothing of its prefix read yet.
    const START: State = State::Prefix {
        bytes: [0; PREFIX],
        have: 0,
    };
}

/// Splits the body's DATA frames into messages.
struct Framer<M> {
    /// The number of the `bytes` field a piece is alone in.
    field: u32,
    state: State,
    ready: VecDeque<Piece<M>>,
}

impl<M: prost::Message + Default> Framer<M> {
    fn new(field: u32) -> Framer<M> {
        Framer {
            field,
            state: State::START,
            ready: VecDeque::new(),
        }
    }

    fn push(&mut self, mut data: Bytes) -> Result<()> {
        while data.has_remaining() {
            match &mut self.state {
                State::Prefix { bytes, have } => {
                    let take = (PREFIX - *have).min(data.len());
                    bytes[*have..*have + take].copy_from_slice(&data[..take]);
                    data.advance(take);
                    *have += take;
                    if *have == PREFIX {
                        if bytes[0] != 0 {
                            return Err(malformed("a compressed message, which was not asked for"));
                        }
                        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                        let len = len as usize;
                        if len > MAX_MESSAGE_BYTES {
                            return Err(Error::new(
                                ErrorCode::ResourceExhausted,
                                format!(
                                    "a message of {len} bytes is over the client's limit of {MAX_MESSAGE_BYTES}"
                                ),
                            ));
                        }
                        self.state = State::Lead {
                            len,
                            bytes: Vec::with_capacity(len.min(LEAD)),
                        };
                        self.after_lead()?;
                    }
                }
                State::Lead { len, bytes } => {
                    let take = (LEAD.min(*len) - bytes.len()).min(data.len());
                    bytes.extend_from_slice(&data[..take]);
                    data.advance(take);
                    self.after_lead()?;
                }
                State::Contents { out, left } => {
                    let take = (*left).min(data.len());
                    out.extend_from_slice(&data[..take]);
                    data.advance(take);
                    *left -= take;
                    if *left == 0 {
                        let out = std::mem::replace(out, MutableBuffer::new(0));
                        self.emit(Piece::Bytes(out.into()));
                    }
                }
                State::Whole { len, bytes } => {
                    let take = (*len - bytes.len()).min(data.len());
                    bytes.extend_from_slice(&data[..take]);
                    data.advance(take);
                    if bytes.len() == *len {
                        let whole = std::mem::take(bytes);
                        self.decode(&whole)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves on from `State::Lead` once the message's start says what it is.
    fn after_lead(&mut self) -> Result<()> {
        let State::Lead { len, bytes } = &mut self.state else {
            return Ok(());
        };
        let len = *len;
        if let Some((contents, at)) = lone_field(bytes, self.field, len) {
            let mut out = MutableBuffer::with_capacity(contents);
            out.extend_from_slice(&bytes[at..]);
            let left = contents - out.len();
            if left == 0 {
                self.emit(Piece::Bytes(out.into()));
            } else {
                self.state = State::Contents { out, left };
            }
        } else if bytes.len() == len.min(LEAD) {
            // Another shape: collect the message whole (it may be already).
            let mut whole = Vec::with_capacity(len);
            whole.append(bytes);
            if whole.len() == len {
                self.decode(&whole)?;
            } else {
                self.state = State::Whole { len, bytes: whole };
            }
        }
        Ok(())
    }

    fn decode(&mut self, message: &[u8]) -> Result<()> {
        let message = M::decode(message)
            .map_err(|e| malformed(&format!("a message prost cannot decode: {e}")))?;
        self.emit(Piece::Message(message));
        Ok(())
    }

    fn emit(&mut self, piece: Piece<M>) {
        self.ready.push_back(piece);
        self.state = State::START;
    }

    /// At the end of the body: nothing may be left half-read.
    fn finish(&self) -> Result<()> {
        match &self.state {
            State::Prefix { have: 0, .. } => Ok(()),
            _ => Err(malformed("the stream ended inside a message")),
        }
    }
}

/// When `lead` (the first bytes of a message of `len` bytes) starts with
/// the key of the length-delimited field `field` (prost reads it) and a
/// complete length that covers the rest of the message exactly: that length
/// and where the contents start.
fn lone_field(lead: &[u8], field: u32, len: usize) -> Option<(usize, usize)> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut rest = lead;
    match decode_key(&mut rest).ok()? {
        (tag, WireType::LengthDelimited) if tag == field => {}
        _ => return None,
    }
    let contents = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
    let at = lead.len() - rest.len();
    (at.checked_add(contents)? == len).then_some((contents, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use busbar_proto::v1::{self as pb, read_series_response::Part};
    use prost::Message;

    fn framed(message: &pb::ReadSeriesResponse) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn piece(bytes: &[u8]) -> pb::ReadSeriesResponse {
        pb::ReadSeriesResponse {
            part: Some(Part::ArrowIpc(Bytes::copy_from_slice(bytes))),
        }
    }

    /// Feeds `stream` in pieces of `step` bytes; returns what came out.
    fn frame(stream: &[u8], step: usize) -> Result<Vec<Piece<pb::ReadSeriesResponse>>> {
        let mut framer = Framer::<pb::ReadSeriesResponse>::new(2);
        for part in stream.chunks(step) {
            framer.push(Bytes::copy_from_slice(part))?;
        }
        framer.finish()?;
        Ok(framer.ready.into_iter().collect())
    }

    #[test]
    fn messages_come_out_whole_however_the_frames_split_them() {
        let large: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let info = pb::ReadSeriesResponse {
            part: Some(Part::Series(pb::SeriesInfo {
                path: "/a/b".into(),
                points: 3,
                ..Default::default()
            })),
        };
        let mut stream = framed(&info);
        stream.extend(framed(&piece(&large)));
        stream.extend(framed(&piece(b"short")));
        stream.extend(framed(&piece(b"")));
        stream.extend(framed(&pb::ReadSeriesResponse { part: None }));
        // The piece with an unknown field after it: not the lone field.
        let mut odd = piece(b"odd").encode_to_vec();
        odd.extend_from_slice(&[0x78, 0x01]); // field 15, varint 1
        stream.push(0);
        stream.extend_from_slice(&(odd.len() as u32).to_be_bytes());
        stream.extend_from_slice(&odd);
        for step in [1, 2, 3, 5, 7, 16, 17, 1000, stream.len()] {
            let out = frame(&stream, step).unwrap();
            assert_eq!(out.len(), 6, "step {step}");
            assert!(matches!(&out[0], Piece::Message(m) if *m == info));
            for (at, expected) in [(1, &large[..]), (2, b"short"), (3, b"")] {
                let Piece::Bytes(buffer) = &out[at] else {
                    panic!("step {step}: message {at} is not a lone piece");
                };
                assert_eq!(buffer.as_slice(), expected, "step {step}");
                assert_eq!(buffer.as_ptr() as usize % 64, 0, "step {step}: aligned");
            }
            assert!(matches!(&out[4], Piece::Message(m) if m.part.is_none()));
            assert!(matches!(&out[5], Piece::Message(m) if *m == piece(b"odd")));
        }
    }

    #[test]
    fn bad_streams_are_errors() {
        let whole = framed(&piece(b"contents"));
        let mut compressed = whole.clone();
        compressed[0] = 1;
        assert!(frame(&compressed, 4).is_err());
        // Cut inside the prefix, the lead and the contents.
        for cut in [3, 7, whole.len() - 1] {
            let error = frame(&whole[..cut], 2).unwrap_err();
            assert!(
                error.message().contains("ended inside a message"),
                "{error}"
            );
        }
        let mut huge = vec![0];
        huge.extend_from_slice(&(MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes());
        let error = frame(&huge, 5).unwrap_err();
        assert_eq!(error.code(), ErrorCode::ResourceExhausted);
        // A body prost cannot decode.
        let mut garbage = vec![0, 0, 0, 0, 3];
        garbage.extend_from_slice(&[0x0a, 0x05, 0x01]);
        assert!(frame(&garbage, 1).is_err());
    }

    /// A field whose key takes two bytes (numbers from 16 on) is found as
    /// well: prost reads the key, nothing assumes its width.
    #[test]
    fn a_lone_field_with_a_two_byte_key_is_a_piece() {
        let mut message = Vec::new();
        prost::encoding::bytes::encode(300, &Bytes::from_static(b"column"), &mut message);
        let mut stream = vec![0];
        stream.extend_from_slice(&(message.len() as u32).to_be_bytes());
        stream.extend_from_slice(&message);
        for step in [1, 3, stream.len()] {
            let mut framer = Framer::<pb::ReadSeriesResponse>::new(300);
            for part in stream.chunks(step) {
                framer.push(Bytes::copy_from_slice(part)).unwrap();
            }
            framer.finish().unwrap();
            match framer.ready.pop_front() {
                Some(Piece::Bytes(bytes)) => assert_eq!(bytes.as_slice(), b"column"),
                other => panic!("not a piece: {other:?}"),
            }
        }
    }

    type Frames = Vec<http_body::Frame<Bytes>>;

    /// Calls a service that answers `head` and then `frames`.
    async fn call(
        head: http::response::Builder,
        frames: Frames,
    ) -> Result<Vec<Piece<pb::ReadSeriesResponse>>> {
        let response = head
            .body(http_body_util::StreamBody::new(futures::stream::iter(
                frames.into_iter().map(Ok::<_, std::convert::Infallible>),
            )))
            .unwrap();
        let mut response = Some(response);
        let service = tower::service_fn(move |_: http::Request<tonic::body::Body>| {
            let response = response.take().expect("one call");
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        let request = pb::ReadSeriesRequest::default();
        let stream = server_streaming(service, "/busbar.v1.TimeSeries/Read", request, 2).await?;
        futures::TryStreamExt::try_collect(stream).await
    }

    fn trailers(pairs: &[(&'static str, &'static str)]) -> http_body::Frame<Bytes> {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, http::HeaderValue::from_static(value));
        }
        http_body::Frame::trailers(map)
    }

    #[tokio::test]
    async fn statuses_in_headers_and_trailers_end_the_call() {
        let ok = || http::Response::builder().status(200);
        // Trailers-only: an empty stream, or the failure.
        let empty = call(ok().header("grpc-status", "0"), vec![]).await.unwrap();
        assert!(empty.is_empty());
        let error = call(
            ok().header("grpc-status", "5")
                .header("grpc-message", "/a%20b does not exist"),
            vec![],
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), ErrorCode::NotFound);
        assert!(error.message().contains("/a b does not exist"), "{error}");
        // An HTTP error without a gRPC status (a proxy's).
        let proxy = http::Response::builder().status(503);
        let error = call(proxy, vec![]).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::Unavailable);
        // Messages, then the status in the trailers.
        let data = || http_body::Frame::data(Bytes::from(framed(&piece(b"abc"))));
        let fine = call(ok(), vec![data(), trailers(&[("grpc-status", "0")])]);
        let pieces = fine.await.unwrap();
        assert!(matches!(&pieces[..], [Piece::Bytes(b)] if b.as_slice() == b"abc"));
        let failed = call(
            ok(),
            vec![
                data(),
                trailers(&[("grpc-status", "14"), ("grpc-message", "gone")]),
            ],
        );
        assert_eq!(failed.await.unwrap_err().code(), ErrorCode::Unavailable);
        // No trailers, or a message cut short before them.
        let error = call(ok(), vec![data()]).await.unwrap_err();
        assert!(error.message().contains("without a grpc-status"), "{error}");
        let cut = http_body::Frame::data(Bytes::from(framed(&piece(b"abc"))[..6].to_vec()));
        let error = call(ok(), vec![cut, trailers(&[("grpc-status", "0")])]);
        let error = error.await.unwrap_err();
        assert!(
            error.message().contains("ended inside a message"),
            "{error}"
        );
    }

    #[test]
    fn a_lone_field_needs_its_key_and_a_length_that_covers_the_message() {
        // 0x12 is field 2, length-delimited; 0x0a field 1; 0x10 field 2 as a varint.
        assert_eq!(lone_field(&[0x12, 0x03, 1, 2, 3], 2, 5), Some((3, 2)));
        assert_eq!(lone_field(&[0x12, 0x80, 0x01], 2, 131), Some((128, 3)));
        assert_eq!(lone_field(&[0x12, 0x03, 1, 2, 3], 2, 6), None);
        assert_eq!(lone_field(&[0x0a, 0x03, 1, 2, 3], 2, 5), None);
        assert_eq!(lone_field(&[0x10, 0x03, 1, 2, 3], 2, 5), None);
        assert_eq!(lone_field(&[0x12, 0x80], 2, 200), None);
        assert_eq!(lone_field(&[], 2, 0), None);
    }
}
