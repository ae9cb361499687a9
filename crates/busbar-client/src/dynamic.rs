//! Call any RPC by its full method name with JSON in and out. Message shapes
//! come from the server's reflection service, fetched once per service and
//! cached, so methods added to the server later work without a new client.

use crate::client::Client;
use crate::error::{Error, ErrorCode, Result};
use futures::{Stream, StreamExt};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, SerializeOptions,
};
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// Descriptors learned from the server, shared by clones of a client.
#[derive(Default)]
pub(crate) struct DescriptorCache {
    pool: Mutex<DescriptorPool>,
}

impl DescriptorCache {
    /// The descriptors learnt so far (a poisoned lock still holds them).
    fn pool(&self) -> std::sync::MutexGuard<'_, DescriptorPool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Messages a streaming call buffers in each direction before waiting.
const STREAM_BUFFER: usize = 64;

/// How a method streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    Unary,
    ServerStreaming,
    ClientStreaming,
    BidiStreaming,
}

fn kind_of(method: &MethodDescriptor) -> MethodKind {
    match (method.is_client_streaming(), method.is_server_streaming()) {
        (false, false) => MethodKind::Unary,
        (false, true) => MethodKind::ServerStreaming,
        (true, false) => MethodKind::ClientStreaming,
        (true, true) => MethodKind::BidiStreaming,
    }
}

/// "pkg.Service/Method", "/pkg.Service/Method" or "pkg.Service.Method".
fn split_method(name: &str) -> Result<(&str, &str)> {
    let trimmed = name.trim_start_matches('/');
    let split = trimmed.split_once('/').or_else(|| trimmed.rsplit_once('.'));
    match split {
        Some((service, method))
            if !service.is_empty() && !method.is_empty() && !method.contains('/') =>
        {
            Ok((service, method))
        }
        _ => Err(Error::invalid_argument(format!(
            "bad method name {name:?}: use the full name, e.g. \"busbar.v1.Node/Status\""
        ))),
    }
}

fn json_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false)
}

fn unexpressible(e: serde_json::Error) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("cannot express the response as JSON: {e}"),
    )
}

fn to_json(message: &DynamicMessage) -> Result<serde_json::Value> {
    let value = message.serialize_with_options(serde_json::value::Serializer, &json_options());
    value.map_err(unexpressible)
}

/// A response as JSON text, in the same mapping as the JSON values of
/// [`Client::call`] (proto field names, every field, 64-bit integers as
/// numbers), written straight from the message without a
/// `serde_json::Value` in between.
pub fn to_json_text(message: &DynamicMessage) -> Result<String> {
    let mut text = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::new(&mut text);
    (message.serialize_with_options(&mut serializer, &json_options())).map_err(unexpressible)?;
    Ok(String::from_utf8(text).expect("serde_json writes UTF-8"))
}

/// How a dynamic call hands over each response, made from the decoded
/// message: a JSON value by default ([`Client::call`], [`Client::stream`]),
/// or the caller's own form ([`Client::call_as`], [`Client::stream_as`]).
pub type Responder<T> = fn(&DynamicMessage) -> Result<T>;

fn from_json(
    descriptor: &MessageDescriptor,
    value: serde_json::Value,
    method: &str,
) -> Result<DynamicMessage> {
    DynamicMessage::deserialize(descriptor.clone(), value).map_err(|e| {
        Error::invalid_argument(format!(
            "the JSON does not fit {} (the request of {method}): {e}",
            descriptor.full_name()
        ))
    })
}

/// The HTTP/2 path of a method: "/package.Service/Method".
fn grpc_path(method: &MethodDescriptor) -> Result<http::uri::PathAndQuery> {
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    http::uri::PathAndQuery::try_from(path.as_str())
        .map_err(|_| Error::invalid_argument(format!("method {path} cannot be called over gRPC")))
}

/// Encodes and decodes `DynamicMessage`s of known descriptors.
#[derive(Clone)]
struct DynamicCodec {
    response: MessageDescriptor,
}

struct DynamicEncoder;
struct DynamicDecoder(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;
    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }
    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.response.clone())
    }
}

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: DynamicMessage,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(format!("encoding the request: {e}")))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, tonic::Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding the response: {e}")))
    }
}

impl Client {
    /// Fetches the file defining `symbol`, and any files it needs that the
    /// pool lacks, from the server's reflection service.
    async fn fetch_descriptors(&self, symbol: &str) -> Result<()> {
        let mut reflection = ServerReflectionClient::new(self.inner.channel());
        let mut want = vec![MessageRequest::FileContainingSymbol(symbol.to_string())];
        let mut files = Vec::new();
        // Files received, and files asked for (received or not yet).
        let mut seen = HashSet::new();
        let mut requested = HashSet::new();
        while !want.is_empty() {
            let requests: Vec<_> = want
                .drain(..)
                .map(|message| ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(message),
                })
                .collect();
            let unknown = |status: tonic::Status| match status.code() {
                tonic::Code::NotFound => Error::new(
                    ErrorCode::Unimplemented,
                    format!(
                        "the server knows no service {symbol}; check the full name, e.g. busbar.v1.Node/Status"
                    ),
                ),
                _ => Error::from(status),
            };
            // With the session: provided services are shown to the callers
            // who may call them.
            let mut request = tonic::Request::new(futures::stream::iter(requests));
            self.context().decorate(request.metadata_mut());
            let mut responses = reflection
                .server_reflection_info(request)
                .await
                .map_err(unknown)?
                .into_inner();
            while let Some(response) = responses.message().await.map_err(unknown)? {
                match response.message_response {
                    Some(MessageResponse::FileDescriptorResponse(found)) => {
                        for bytes in found.file_descriptor_proto {
                            let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())
                                .map_err(|e| {
                                Error::new(
                                    ErrorCode::Internal,
                                    format!("undecodable descriptor from reflection: {e}"),
                                )
                            })?;
                            if seen.insert(file.name().to_string()) {
                                files.push(file);
                            }
                        }
                    }
                    Some(MessageResponse::ErrorResponse(error)) => {
                        return Err(Error::new(
                            ErrorCode::Unimplemented,
                            format!(
                                "the server knows no service {symbol} ({})",
                                error.error_message
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            let pool = self.inner.descriptors.pool();
            for file in &files {
                for dependency in &file.dependency {
                    if !seen.contains(dependency)
                        && pool.get_file_by_name(dependency).is_none()
                        && requested.insert(dependency.clone())
                    {
                        want.push(MessageRequest::FileByFilename(dependency.clone()));
                    }
                }
            }
        }
        let mut pool = self.inner.descriptors.pool();
        pool.add_file_descriptor_protos(files).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("unusable descriptors from reflection: {e}"),
            )
        })
    }

    /// The descriptor of a method, from cache or reflection.
    pub async fn describe(&self, method: &str) -> Result<MethodDescriptor> {
        let (service_name, method_name) = split_method(method)?;
        let lookup = || {
            let pool = self.inner.descriptors.pool();
            pool.get_service_by_name(service_name)
        };
        let service = match lookup() {
            Some(service) => service,
            None => {
                self.fetch_descriptors(service_name).await?;
                lookup().ok_or_else(|| {
                    Error::new(
                        ErrorCode::Unimplemented,
                        format!("the server knows no service {service_name}"),
                    )
                })?
            }
        };
        let found = service.methods().find(|m| m.name() == method_name);
        found.ok_or_else(|| {
            let names: Vec<_> = service.methods().map(|m| m.name().to_string()).collect();
            Error::new(
                ErrorCode::Unimplemented,
                format!(
                    "service {service_name} has no method {method_name}; it has: {}",
                    names.join(", ")
                ),
            )
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        self.context().decorate(request.metadata_mut());
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        request
    }

    async fn grpc(&self) -> Result<tonic::client::Grpc<tonic::transport::Channel>> {
        let mut grpc =
            tonic::client::Grpc::new(self.inner.channel()).max_decoding_message_size(usize::MAX);
        grpc.ready()
            .await
            .map_err(|e| Error::new(ErrorCode::Unavailable, crate::error::chain(&e)))?;
        Ok(grpc)
    }

    /// Calls the unary method `method` (e.g. "busbar.v1.Node/Status") with a
    /// JSON request; returns the JSON response (proto field names, 64-bit
    /// integers as numbers, every field present).
    pub async fn call(
        &self,
        method: &str,
        request: serde_json::Value,
    ) -> Result<serde_json::Value> {
        self.call_as(method, request, to_json).await
    }

    /// [`call`](Self::call), the response handed over as `respond` makes it.
    pub async fn call_as<T>(
        &self,
        method: &str,
        request: serde_json::Value,
        respond: Responder<T>,
    ) -> Result<T> {
        let descriptor = self.describe(method).await?;
        if kind_of(&descriptor) != MethodKind::Unary {
            return Err(Error::invalid_argument(format!(
                "{method} is {:?}; use stream() for streaming methods",
                kind_of(&descriptor)
            )));
        }
        let message = from_json(&descriptor.input(), request, method)?;
        let path = grpc_path(&descriptor)?;
        let codec = DynamicCodec {
            response: descriptor.output(),
        };
        let response = self
            .grpc()
            .await?
            .unary(self.request(message), path, codec)
            .await?;
        respond(response.get_ref())
    }

    /// Starts a streaming call (server, client or bidirectional). `request` is
    /// the first message: required for server streaming, optional otherwise.
    /// Send more with [`DynamicCall::send`], end with [`DynamicCall::close_send`]
    /// and read responses as a `Stream`. Responses that arrive before you read
    /// are buffered (up to 64, then the server is slowed down), never lost.
    pub async fn stream(
        &self,
        method: &str,
        request: Option<serde_json::Value>,
    ) -> Result<DynamicCall> {
        self.stream_as(method, request, to_json).await
    }

    /// [`stream`](Self::stream), each response handed over as `respond`
    /// makes it (on the call's own task, as it arrives).
    pub async fn stream_as<T: Send + 'static>(
        &self,
        method: &str,
        request: Option<serde_json::Value>,
        respond: Responder<T>,
    ) -> Result<DynamicCall<T>> {
        let descriptor = self.describe(method).await?;
        let kind = kind_of(&descriptor);
        let input = descriptor.input();
        let path = grpc_path(&descriptor)?;
        let codec = DynamicCodec {
            response: descriptor.output(),
        };
        let first = request
            .map(|value| from_json(&input, value, method))
            .transpose()?;
        let mut grpc = self.grpc().await?;
        let (responses_tx, responses) = mpsc::channel::<Result<T>>(STREAM_BUFFER);
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let mut sender = None;
        let request = match kind {
            MethodKind::Unary => {
                return Err(Error::invalid_argument(format!(
                    "{method} is unary; use call()"
                )));
            }
            MethodKind::ServerStreaming => {
                let first = first.ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "{method} is server streaming: pass its request when starting it"
                    ))
                })?;
                Outgoing::One(self.request(first))
            }
            MethodKind::ClientStreaming | MethodKind::BidiStreaming => {
                let (tx, rx) = mpsc::channel::<DynamicMessage>(STREAM_BUFFER);
                if let Some(first) = first {
                    tx.send(first).await.expect("receiver is alive");
                }
                sender = Some(tx);
                Outgoing::Many(self.request(tokio_stream::wrappers::ReceiverStream::new(rx)))
            }
        };
        let task = tokio::spawn(async move {
            let started = match request {
                Outgoing::One(request) => grpc.server_streaming(request, path, codec).await,
                Outgoing::Many(request) => grpc.streaming(request, path, codec).await,
            };
            let mut stream = match started {
                Ok(response) => {
                    let _ = started_tx.send(());
                    response.into_inner()
                }
                Err(status) => {
                    let _ = responses_tx.send(Err(status.into())).await;
                    return;
                }
            };
            loop {
                let item = match stream.message().await {
                    Ok(Some(message)) => respond(&message),
                    Ok(None) => return,
                    Err(status) => Err(status.into()),
                };
                let failed = item.is_err();
                if responses_tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(DynamicCall {
            method: method.to_string(),
            kind,
            input,
            sender,
            responses,
            started: Some(started),
            task,
        })
    }
}

/// The sending side of a [`DynamicCall`], from [`DynamicCall::take_sender`].
#[derive(Clone)]
pub struct CallSender {
    method: String,
    kind: MethodKind,
    input: MessageDescriptor,
    sender: Option<mpsc::Sender<DynamicMessage>>,
}

impl CallSender {
    /// Sends one more request message (client and bidi streaming).
    pub async fn send(&self, message: serde_json::Value) -> Result<()> {
        let sender = self.sender.as_ref().ok_or_else(|| match self.kind {
            MethodKind::ServerStreaming => Error::invalid_argument(format!(
                "{} is server streaming: it takes only the first request",
                self.method
            )),
            _ => Error::invalid_argument(format!("sending on {} was already closed", self.method)),
        })?;
        let message = from_json(&self.input, message, &self.method)?;
        sender.send(message).await.map_err(|_| {
            Error::new(
                ErrorCode::Cancelled,
                format!("{} has ended; nothing more can be sent", self.method),
            )
        })
    }
}

enum Outgoing {
    One(tonic::Request<DynamicMessage>),
    Many(tonic::Request<tokio_stream::wrappers::ReceiverStream<DynamicMessage>>),
}

/// A streaming call by method name, its responses as JSON values or in the
/// form a [`Responder`] makes. Dropping it cancels the call.
pub struct DynamicCall<T = serde_json::Value> {
    method: String,
    kind: MethodKind,
    input: MessageDescriptor,
    sender: Option<mpsc::Sender<DynamicMessage>>,
    responses: mpsc::Receiver<Result<T>>,
    /// Fired when the server's response headers arrive.
    started: Option<tokio::sync::oneshot::Receiver<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> DynamicCall<T> {
    pub fn kind(&self) -> MethodKind {
        self.kind
    }

    /// Sends one more request message (client and bidi streaming).
    pub async fn send(&self, message: serde_json::Value) -> Result<()> {
        self.call_sender().send(message).await
    }

    fn call_sender(&self) -> CallSender {
        CallSender {
            method: self.method.clone(),
            kind: self.kind,
            input: self.input.clone(),
            sender: self.sender.clone(),
        }
    }

    /// Moves the sending side out of the call, so one task can send while
    /// another reads the responses. The request stream ends when the
    /// returned sender (and every clone of it) is dropped; `send` on the call
    /// itself then fails as after [`DynamicCall::close_send`].
    pub fn take_sender(&mut self) -> CallSender {
        let sender = self.call_sender();
        self.sender = None;
        sender
    }

    /// Tells the server no more requests come (ends the request stream).
    pub fn close_send(&mut self) {
        self.sender = None;
    }

    /// Moves out what resolves once the server has accepted the call (its
    /// response headers came): for a subscription, that it is in place.
    /// It fails instead if the call ended before; `None` if taken already.
    pub fn take_started(&mut self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.started.take()
    }

    /// Cancels the call at once.
    pub fn cancel(self) {
        self.task.abort();
    }
}

impl<T> Drop for DynamicCall<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T> Stream for DynamicCall<T> {
    type Item = Result<T>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.responses.poll_recv(cx)
    }
}

impl<T> DynamicCall<T> {
    /// The next response, or `None` when the call ended.
    pub async fn next_message(&mut self) -> Option<Result<T>> {
        self.next().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names() {
        assert_eq!(
            split_method("busbar.v1.Node/Status").unwrap(),
            ("busbar.v1.Node", "Status")
        );
        assert_eq!(
            split_method("/busbar.v1.Node/Status").unwrap(),
            ("busbar.v1.Node", "Status")
        );
        assert_eq!(
            split_method("busbar.v1.Node.Status").unwrap(),
            ("busbar.v1.Node", "Status")
        );
        for bad in ["", "Status", "/x/", "a/b/c"] {
            assert!(split_method(bad).is_err(), "{bad}");
        }
    }
}
