//! Calls to provided services: every method whose service is not the
//! node's own comes here, goes to one provider of the service, and its
//! request and response messages pass through as bytes.
//!
//! Flow control is per call and counted in messages: each side starts with
//! [`WINDOW`] messages of credit in each direction and grants more as it
//! passes messages on. So a slow caller slows its provider, a slow
//! provider slows its caller, and what the node holds for one call is
//! bounded by the window (and each message by the node's message limit).
//!
//! On a cluster node the provider may be on another node: the call's
//! messages then go there over the bus (`cluster`), with the same credit,
//! and come back the same way; everything here is the same for both.

use super::cluster::CallLink;
use super::registry::{CallSlot, MethodShape, ProviderEvent, Target};
use crate::auth::access::Caller;
use crate::error::{Error, ErrorCode};
use crate::grpc::layer::{TraceId, UnlistedMethod};
use crate::metrics::MeshLabels;
use crate::node::{Node, time_left};
use crate::store::Right;
use busbar_proto::v1::{self as pb, to_provider::Message as ToMessage};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Request, Response, Status, Streaming};

/// Messages of credit each way per call, before the receiver grants more.
pub(crate) const WINDOW: u32 = 16;

/// The most `x-` metadata entries passed to a provider per call.
const MAX_METADATA: usize = 64;

/// Services the node serves itself; any other goes to the mesh.
pub(crate) fn is_own_service(path: &str) -> bool {
    ["/busbar.v1.", "/grpc.", "/arrow.flight.protocol."]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// Answers a call to a provided service.
pub(crate) async fn serve_call(
    node: Arc<Node>,
    request: http::Request<Body>,
) -> http::Response<Body> {
    let limit = node.config.max_message_bytes;
    let path = request.uri().path().to_string();
    let (service, method) = match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() => {
            (service.to_string(), method.to_string())
        }
        _ => return unlisted(Status::unimplemented("")),
    };
    let mut shape = node.mesh.shape(&service);
    if shape.is_none()
        && let Some(cluster) = &node.mesh_cluster
        && request.extensions().get::<Caller>().is_some()
    {
        // Perhaps offered on another node a moment ago (asked only for a
        // logged-in caller: no one else makes the node read its store).
        cluster.refresh_soon(&node).await;
        shape = node.mesh.shape(&service);
    }
    let Some((shape, method_shape)) =
        shape.and_then(|s| s.methods.get(&method).copied().map(|m| (s, m)))
    else {
        let caller = request.extensions().get::<Caller>().cloned();
        return not_live(&node, caller, &service).await;
    };
    let call = tower::service_fn(move |request: Request<Streaming<Bytes>>| {
        let node = node.clone();
        let route = Route {
            service: service.clone(),
            path: shape.path.clone(),
            method: path.clone(),
            shape: method_shape,
        };
        async move { start(node, route, request).await }
    });
    let mut grpc = tonic::server::Grpc::new(busbar_proto::bytes_codec::BytesCodec)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    grpc.streaming(call, request).await
}

/// A response for a method the node does not route, marked so the call
/// metrics count it under one label.
fn unlisted(status: Status) -> http::Response<Body> {
    let mut response = status.into_http();
    response.extensions_mut().insert(UnlistedMethod);
    response
}

/// A call to a service with no live provider: UNAVAILABLE when the service
/// exists and the caller may call it, otherwise the unknown-method answer.
async fn not_live(node: &Node, caller: Option<Caller>, service: &str) -> http::Response<Body> {
    let Some(caller) = caller else {
        return unlisted(Status::unimplemented(""));
    };
    let path = format!("{}/{service}", super::files::SERVICES_FOLDER);
    let exists = matches!(node.access.resource(&path).await, Ok(Some(_)));
    let may_call =
        matches!(node.access.right(&caller, &path).await, Ok(Some(right)) if right >= Right::Read);
    if exists && may_call {
        return unlisted(no_provider(service).into());
    }
    unlisted(Status::unimplemented(""))
}

/// A call to a live service none of whose providers can take it.
fn no_provider(service: &str) -> Error {
    Error::unavailable(format!(
        "no provider offers {service} at the moment; start one, or retry (busbar service ls shows the providers)"
    ))
}

struct Route {
    service: String,
    path: String,
    method: String,
    shape: MethodShape,
}

/// What a provider is told about a call, kept to start it again elsewhere.
struct Opening {
    caller: Arc<str>,
    trace_id: String,
    metadata: std::collections::HashMap<String, String>,
    deadline: Option<Instant>,
}

impl Opening {
    fn start(
        &self,
        call: u64,
        method: &str,
        message: Option<Bytes>,
        half_closed: bool,
    ) -> ToMessage {
        let timeout_ms = self.deadline.map_or(0, |deadline| {
            (deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64)
                .max(1)
        });
        ToMessage::Start(pb::CallStart {
            call,
            method: method.to_string(),
            timeout_ms,
            caller: self.caller.to_string(),
            trace_id: self.trace_id.clone(),
            metadata: self.metadata.clone(),
            message,
            half_closed,
            window: WINDOW,
        })
    }
}

/// The caller's `x-` metadata that travels to the provider.
fn forwarded_metadata(
    metadata: &tonic::metadata::MetadataMap,
) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    for entry in metadata.iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry {
            let name = key.as_str();
            // The session is the caller's secret; the trace id travels on its own.
            if !name.starts_with("x-")
                || name == busbar_proto::SESSION_METADATA_KEY
                || name == busbar_proto::TRACE_ID_METADATA_KEY
                || out.len() >= MAX_METADATA
            {
                continue;
            }
            if let Ok(value) = value.to_str() {
                out.insert(name.to_string(), value.to_string());
            }
        }
    }
    out
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

async fn start(
    node: Arc<Node>,
    route: Route,
    request: Request<Streaming<Bytes>>,
) -> Result<Response<ResponseStream>, Status> {
    let caller = crate::node::caller(&request)?;
    node.access
        .require(&caller, &route.path, Right::Read)
        .await?;
    let opening = Opening {
        caller: caller.name.clone(),
        trace_id: request
            .extensions()
            .get::<TraceId>()
            .map(|t| t.0.clone())
            .unwrap_or_default(),
        metadata: forwarded_metadata(request.metadata()),
        deadline: time_left(&request).map(|t| Instant::now() + t),
    };
    let mut inbound = request.into_inner();
    // A single request message comes with the call; it is kept for a
    // retry when the method is idempotent.
    let first = if route.shape.client_streaming {
        None
    } else {
        match inbound.message().await? {
            Some(message) => Some(message),
            None => {
                return Err(Error::invalid_argument(format!(
                    "{} takes one request message and the call sent none",
                    route.method
                ))
                .into());
            }
        }
    };
    let mut flight = Flight {
        node,
        retry: first.clone().filter(|_| route.shape.idempotent),
        first: first.clone(),
        route,
        opening,
        at: None,
        responses: None,
        answered: false,
        consumed: 0,
        pending_end: None,
        finished: false,
        tried: Vec::new(),
        pump: None,
    };
    flight.begin(first).await?;
    if flight.route.shape.client_streaming {
        flight.pump = Some(tokio::spawn(pump(
            inbound,
            flight.at.as_ref().expect("begun").clone(),
        )));
    }
    // A unary call's response headers wait for its answer, so headers,
    // message and status leave in one write and the caller wakes once (an
    // error before any message goes as a trailers-only response). Streaming
    // calls get their headers at once: a caller may wait for them before it
    // sends, or before the provider's first message.
    let mut answer = None;
    if !flight.route.shape.client_streaming && !flight.route.shape.server_streaming {
        match flight.next().await {
            Some(Err(status)) => return Err(status),
            Some(Ok(message)) => answer = Some(Ok(message)),
            None => {}
        }
    }
    let rest = futures::stream::unfold(flight, |mut flight| async move {
        let item = flight.next().await?;
        Some((item, flight))
    });
    let stream = futures::stream::iter(answer).chain(rest);
    Ok(Response::new(Box::pin(stream)))
}

/// Where a call runs: its provider, its id there and the request credit
/// the provider grants (shared with the request pump); for a provider on
/// another node, the link its messages go over.
#[derive(Clone)]
struct At {
    provider: Target,
    call: u64,
    requests: Arc<Semaphore>,
    link: Option<Arc<CallLink>>,
}

impl At {
    /// Sends a message of the call to its provider; `false` when it is gone.
    async fn send(&self, message: ToMessage) -> bool {
        match (&self.provider, &self.link) {
            (Target::Local(provider), _) => provider
                .outbound
                .send(Ok(pb::ToProvider {
                    message: Some(message),
                }))
                .await
                .is_ok(),
            (Target::Remote(_), Some(link)) => link.send(message).await,
            (Target::Remote(_), None) => false,
        }
    }
}

/// A call in flight through the node.
struct Flight {
    node: Arc<Node>,
    route: Route,
    opening: Opening,
    /// The request, when the call may be retried on another provider.
    retry: Option<Bytes>,
    /// The request of a call that is not client streaming: sent again
    /// elsewhere when a provider on another node turns out to have gone
    /// before the call reached it (so it never ran).
    first: Option<Bytes>,
    at: Option<At>,
    /// What the provider answers, while the call runs there.
    responses: Option<mpsc::Receiver<ProviderEvent>>,
    /// A response message has gone to the caller: never retried after.
    answered: bool,
    /// Response messages passed on since credit was last granted.
    consumed: u32,
    pending_end: Option<Result<(), Status>>,
    finished: bool,
    tried: Vec<String>,
    pump: Option<tokio::task::JoinHandle<()>>,
}

impl Flight {
    /// Starts the call at the least loaded provider not yet tried.
    async fn begin(&mut self, first: Option<Bytes>) -> Result<(), Status> {
        loop {
            let Some(provider) = self.node.mesh.pick(&self.route.service, &self.tried) else {
                let error = if self.tried.is_empty() {
                    no_provider(&self.route.service)
                } else {
                    Error::unavailable(format!(
                        "every provider of {} was lost or is draining; retry later",
                        self.route.service
                    ))
                };
                return Err(error.into());
            };
            self.tried.push(provider.id().to_string());
            let call = self.node.mesh.call_id();
            let (sink, responses) = mpsc::channel(WINDOW as usize + 1);
            let requests = Arc::new(Semaphore::new(WINDOW as usize));
            let link = match &provider {
                Target::Local(local) => {
                    let slot = CallSlot {
                        responses: sink,
                        request_credit: requests.clone(),
                    };
                    if !local.add_call(call, slot) {
                        continue;
                    }
                    None
                }
                Target::Remote(remote) => {
                    let Some(cluster) = &self.node.mesh_cluster else {
                        continue;
                    };
                    remote.in_flight.fetch_add(1, Ordering::Relaxed);
                    Some(cluster.open_call(call, remote, sink, requests.clone()))
                }
            };
            let half_closed = !self.route.shape.client_streaming;
            let start = self
                .opening
                .start(call, &self.route.method, first.clone(), half_closed);
            let at = At {
                provider,
                call,
                requests,
                link,
            };
            self.at = Some(at.clone());
            self.responses = Some(responses);
            if !at.send(start).await {
                // Gone between the pick and the send.
                self.leave(None);
                continue;
            }
            return Ok(());
        }
    }

    /// Takes the call out of its provider's table; tells the provider to
    /// stop when it was still running there.
    fn leave(&mut self, cancel: Option<&str>) {
        self.responses = None;
        let Some(at) = self.at.take() else {
            return;
        };
        let running = match (&at.provider, &at.link) {
            (Target::Local(provider), _) => {
                provider.in_flight.fetch_sub(1, Ordering::Relaxed);
                provider.end_call(at.call)
            }
            (Target::Remote(provider), Some(link)) => {
                provider.in_flight.fetch_sub(1, Ordering::Relaxed);
                link.cluster().close_call(at.call)
            }
            (Target::Remote(_), None) => false,
        };
        if running && let Some(reason) = cancel {
            match (&at.provider, &at.link) {
                (Target::Local(provider), _) => {
                    let message = pb::ToProvider {
                        message: Some(ToMessage::Cancel(pb::CallCancel {
                            call: at.call,
                            reason: reason.to_string(),
                        })),
                    };
                    if let Err(mpsc::error::TrySendError::Full(message)) =
                        provider.outbound.try_send(Ok(message))
                    {
                        let outbound = provider.outbound.clone();
                        tokio::spawn(async move {
                            let _ = outbound.send(message).await;
                        });
                    }
                }
                (Target::Remote(_), Some(link)) => {
                    let (link, reason) = (link.clone(), reason.to_string());
                    tokio::spawn(async move { link.cancel(reason).await });
                }
                (Target::Remote(_), None) => {}
            }
        }
        if let Some(pump) = self.pump.take() {
            pump.abort();
        }
    }

    /// Counts the call's outcome at its provider.
    fn count(&self, code: &str) {
        let Some(at) = &self.at else {
            return;
        };
        self.node
            .metrics
            .mesh_calls
            .get_or_create(&MeshLabels {
                service: self.route.service.clone(),
                provider: at.provider.identity().to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// Ends the call with `result`, counting it.
    fn finish(
        &mut self,
        result: Result<(), Status>,
        cancel: Option<&str>,
    ) -> Option<Result<Bytes, Status>> {
        self.finished = true;
        let code = match &result {
            Ok(()) => "OK",
            Err(status) => crate::metrics::GRPC_CODE_NAMES
                .get(status.code() as usize)
                .copied()
                .unwrap_or("UNKNOWN"),
        };
        self.count(code);
        if let Some(At {
            provider: Target::Local(provider),
            ..
        }) = &self.at
        {
            provider.served.fetch_add(1, Ordering::Relaxed);
        }
        self.leave(cancel);
        result.err().map(Err)
    }

    /// The next response message for the caller, or the call's end.
    async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        loop {
            if let Some(end) = self.pending_end.take() {
                return self.finish(end, None);
            }
            if self.finished {
                return None;
            }
            let responses = self.responses.as_mut()?;
            let received = match self.opening.deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, responses.recv()).await,
                None => Ok(responses.recv().await),
            };
            self.at.as_ref()?;
            let event = match received {
                Ok(event) => event,
                Err(_) => {
                    let provider = self.at.as_ref()?.provider.clone();
                    let status = Status::from(Error {
                        code: ErrorCode::Timeout,
                        message: format!(
                            "the call's deadline passed while {} (provider {}) was answering it",
                            self.route.service,
                            provider.id()
                        ),
                    });
                    return self.finish(Err(status), Some("the caller's deadline passed"));
                }
            };
            let lost = match event {
                Some(ProviderEvent::Response(response)) => {
                    if let Some(end) = response.end {
                        self.pending_end = Some(end_status(end));
                    }
                    if let Some(message) = response.message {
                        self.answered = true;
                        self.grant().await;
                        return Some(Ok(message));
                    }
                    continue;
                }
                Some(ProviderEvent::Broken(why)) => {
                    let provider = self.at.as_ref()?.provider.clone();
                    let status = Status::from(Error::internal(format!(
                        "provider {} of {} broke the mesh protocol: {why}",
                        provider.id(),
                        self.route.service
                    )));
                    return self.finish(Err(status), Some("protocol violation"));
                }
                Some(ProviderEvent::NotStarted(why)) => {
                    let provider = self.at.as_ref()?.provider.clone();
                    // It never ran there, so it may go elsewhere whatever
                    // its kind (unless its requests have begun to stream).
                    if let Target::Remote(remote) = &provider {
                        remote.gone.store(true, Ordering::Relaxed);
                    }
                    self.leave(None);
                    match self.first.clone() {
                        Some(request) if !self.route.shape.client_streaming => {
                            tracing::debug!(service = %self.route.service, provider = %provider.id(), "{why}; trying another provider");
                            if let Err(status) = self.begin(Some(request)).await {
                                self.finished = true;
                                return Some(Err(status));
                            }
                            continue;
                        }
                        _ => {
                            self.finished = true;
                            return Some(Err(Error::unavailable(format!(
                                "provider {} of {} had gone ({why}); retry",
                                provider.id(),
                                self.route.service
                            ))
                            .into()));
                        }
                    }
                }
                Some(ProviderEvent::Lost(why)) => Some(why),
                None => None,
            };
            // The provider is gone (its stream ended or was cut; or, on
            // another node, it or its node was lost).
            let provider = self.at.as_ref()?.provider.clone();
            if !self.answered
                && let Some(request) = self.retry.clone()
            {
                tracing::info!(service = %self.route.service, lost = %provider.id(), "retrying an idempotent call on another provider");
                self.count("UNAVAILABLE");
                self.leave(None);
                if let Err(status) = self.begin(Some(request)).await {
                    self.finished = true;
                    return Some(Err(status));
                }
                continue;
            }
            let status = Status::from(Error::unavailable(format!(
                "provider {} ({}) of {} was lost before the call ended{}; {}",
                provider.id(),
                provider.identity(),
                self.route.service,
                lost.map(|why| format!(": {why}")).unwrap_or_default(),
                if self.answered {
                    "part of the answer had already arrived, so it was not retried"
                } else {
                    "the method is not declared idempotent, so it was not retried"
                }
            )));
            return self.finish(Err(status), None);
        }
    }

    /// Grants the provider more response credit once half the window has
    /// gone to the caller.
    async fn grant(&mut self) {
        self.consumed += 1;
        let Some(at) = &self.at else {
            return;
        };
        if self.consumed < WINDOW / 2 {
            return;
        }
        let credit = ToMessage::Credit(pb::Credit {
            call: at.call,
            messages: self.consumed,
        });
        self.consumed = 0;
        at.send(credit).await;
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if !self.finished {
            // The caller went away (cancelled, disconnected) mid-call.
            self.count("CANCELLED");
            self.leave(Some("the caller cancelled or went away"));
        }
    }
}

/// The caller's status from the provider's.
fn end_status(end: pb::CallStatus) -> Result<(), Status> {
    if end.code == 0 {
        return Ok(());
    }
    let code = if (1..=16).contains(&end.code) {
        tonic::Code::from(end.code)
    } else {
        tonic::Code::Unknown
    };
    // Always with a stable code (the provider's, or its status's), so the
    // call layer takes the status as the provider gave it.
    let stable = ErrorCode::from_str_name(&end.error_code)
        .unwrap_or_else(|| busbar_proto::error_code_for(code));
    let mut status = Status::new(code, end.message);
    status.metadata_mut().insert(
        busbar_proto::ERROR_CODE_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(stable.as_str_name()),
    );
    Err(status)
}

/// Passes a client-streaming caller's messages to the provider as the
/// provider grants credit; the caller's half-close ends it.
async fn pump(mut inbound: Streaming<Bytes>, at: At) {
    loop {
        match at.requests.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return,
        }
        let (message, half_closed) = match inbound.message().await {
            Ok(Some(message)) => (Some(message), false),
            Ok(None) => (None, true),
            // The caller's stream broke: the response side sees it too.
            Err(_) => return,
        };
        let request = ToMessage::Request(pb::CallRequest {
            call: at.call,
            message,
            half_closed,
        });
        if !at.send(request).await || half_closed {
            return;
        }
    }
}
