//! `busbar.v1.Rooms`: members join a room and receive its events; emitters
//! publish to it. Fan-out goes through the `Bus`; each member has a bounded
//! queue and is cut with SLOW_CONSUMER when it overflows.

use crate::auth::access::Caller;
use crate::bus::{BusMessage, Ended, Overflow, SubscribeOptions, Subscription};
use crate::config::Framing;
use crate::error::{Error, Result};
use crate::grpc::zero_copy::OneMethod;
use crate::grpc::{Reply, reply};
use crate::node::{Node, caller, stopped};
use crate::resources::subject;
use crate::store::{ResourceKind, Right};
use busbar_proto::v1::{
    self as pb, room_event::Kind, rooms_server::Rooms, rooms_server::RoomsServer,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::Notify;
use tonic::{Request, Status, Streaming};

/// A room member on this node, so `Leave` can end its stream.
struct LocalMember {
    identity_id: Arc<str>,
    leave: Arc<Notify>,
}

/// The room members joined through this node, by member id: the registry
/// `Join` adds to, a member's stream removes itself from, and `Leave` asks.
#[derive(Default)]
pub struct LocalMembers(std::sync::Mutex<std::collections::HashMap<String, LocalMember>>);

impl LocalMembers {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, LocalMember>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a member; the returned notifier fires when it is asked to leave.
    fn insert(&self, member_id: &str, identity_id: &Arc<str>) -> Arc<Notify> {
        let leave = Arc::new(Notify::new());
        self.lock().insert(
            member_id.to_string(),
            LocalMember {
                identity_id: identity_id.clone(),
                leave: leave.clone(),
            },
        );
        leave
    }

    fn remove(&self, member_id: &str) {
        self.lock().remove(member_id);
    }

    /// Asks a member of `identity_id` to leave.
    fn leave(&self, member_id: &str, identity_id: &str) -> Result<()> {
        match self.lock().get(member_id) {
            Some(member) if &*member.identity_id == identity_id => {
                member.leave.notify_one();
                Ok(())
            }
            Some(_) => Err(Error::permission_denied(format!(
                "member {member_id} belongs to another identity; only its own identity can leave"
            ))),
            None => Err(Error::not_found(format!(
                "no member {member_id} on this node; it has already left, or joined through another node"
            ))),
        }
    }
}

pub struct RoomsService {
    pub node: Arc<Node>,
}

const MAX_EVENT_NAME_BYTES: usize = 255;

/// Room events as encoded `RoomEvent` messages: what the bus carries is sent
/// to each member as is, with no decoding or re-encoding per member.
pub type EncodedEvents = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// A member's stream: JOINED, then the room's events, until it leaves, the
/// room is deleted, the member overflows or the node stops.
struct Member {
    node: Arc<Node>,
    member_id: String,
    joined: Option<Bytes>,
    subscription: Subscription,
    leave: Arc<Notify>,
    done: bool,
    /// Events taken in a row from the queue alone (see [`MEMBER_BURST`]).
    burst: u8,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.node.members.remove(&self.member_id);
    }
}

/// Events a member takes from its queue in a row without also looking at
/// leave and stop: those wait at most this many events.
const MEMBER_BURST: u8 = 32;

impl Member {
    async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        if let Some(joined) = self.joined.take() {
            return Some(Ok(joined));
        }
        if self.done {
            return None;
        }
        // Events already queued go out without arming the leave and stop
        // waits, which cost more than taking the event.
        if self.burst < MEMBER_BURST
            && let Some(message) = self.subscription.try_next()
        {
            self.burst += 1;
            return Some(self.deliver(Ok(message)));
        }
        self.burst = 0;
        let lifecycle = self.node.lifecycle();
        tokio::select! {
            // Leave and stop first: they wait behind at most one burst.
            biased;
            _ = self.leave.notified() => {
                self.done = true;
                let left = pb::RoomEvent { kind: Kind::Left as i32, member_id: self.member_id.clone(), ..Default::default() };
                Some(Ok(left.encode_to_vec().into()))
            }
            error = stopped(lifecycle) => {
                self.done = true;
                Some(Err(error.into()))
            }
            received = self.subscription.next() => {
                received.transpose().map(|received| self.deliver(received))
            }
        }
    }

    /// What the member's stream sends for what its queue gave.
    fn deliver(&mut self, received: Result<BusMessage, Ended>) -> Result<Bytes, Status> {
        match received {
            Ok(message) => {
                self.done = message.last;
                self.node.metrics.room_deliveries.inc();
                Ok(message.payload)
            }
            Err(Ended::SlowConsumer) => {
                self.done = true;
                Err(Error::slow_consumer(format!(
                    "member {} fell more than {} events behind and was removed from the room; read faster or join again",
                    self.member_id, self.node.config.room_queue
                ))
                .into())
            }
        }
    }
}

impl RoomsService {
    /// Joins the caller to a room: its membership as a stream of encoded events.
    async fn open_member(
        &self,
        request: &Request<pb::JoinRequest>,
    ) -> Result<EncodedEvents, Status> {
        let caller = caller(request)?;
        let path = self.node.path(&request.get_ref().path).await?;
        let access = &self.node.access;
        let room = access
            .require_kind(&caller, &path, Right::Read, ResourceKind::Room)
            .await?;
        let member_id = uuid::Uuid::new_v4().to_string();
        let subscription = self
            .node
            .bus
            .subscribe(
                &subject(ResourceKind::Room, &room.id),
                SubscribeOptions {
                    capacity: self.node.config.room_queue,
                    overflow: Overflow::Disconnect,
                    tag: Some(member_id.clone()),
                },
            )
            .await;
        let leave = self.node.members.insert(&member_id, &caller.identity_id);
        let joined = pb::RoomEvent {
            kind: Kind::Joined as i32,
            room: room.id.clone(),
            path: room.path.clone(),
            member_id: member_id.clone(),
            sender: caller.name.to_string(),
            ..Default::default()
        };
        let member = Member {
            node: self.node.clone(),
            member_id,
            joined: Some(joined.encode_to_vec().into()),
            subscription,
            leave,
            done: false,
            burst: 0,
        };
        Ok(Box::pin(futures::stream::unfold(
            member,
            |mut member| async move { member.next().await.map(|item| (item, member)) },
        )))
    }
}

/// The room an emitter sent to last, as checked: an emit stream keeps
/// sending to the same room, so the path, the right and the parts of the
/// event that do not change are worked out once, not per event. Used while
/// the path is the same and access has not changed since the check.
struct EmitTarget {
    raw_path: String,
    access_generation: u64,
    subject: String,
    /// `kind`, `room`, `path` and `sender` of each event, encoded: an event is
    /// this followed by its own fields (protobuf merges concatenated encodings).
    prefix: Vec<u8>,
}

fn check_emit_fields(r: &pb::EmitRequest) -> Result<()> {
    if r.event.is_empty()
        || r.event.len() > MAX_EVENT_NAME_BYTES
        || r.event.chars().any(char::is_control)
    {
        return Err(Error::invalid_argument(format!(
            "bad event name {:?}: use 1 to {MAX_EVENT_NAME_BYTES} bytes without control characters",
            r.event
        )));
    }
    if r.peers_only && r.member_id.is_empty() {
        return Err(Error::invalid_argument(
            "peers_only needs member_id: pass the member id from your JOINED event",
        ));
    }
    Ok(())
}

impl RoomsService {
    /// Checks and publishes one emit; returns how many member queues it
    /// reached. `last` is the target of the stream's previous emit, if any.
    async fn publish_emit(
        &self,
        caller: &Caller,
        mut r: pb::EmitRequest,
        last: &mut Option<EmitTarget>,
    ) -> Result<usize, Status> {
        // Read before any check, so a change during the check retires it.
        let generation = self.node.access.generation();
        let known = last
            .as_ref()
            .is_some_and(|t| t.raw_path == r.path && t.access_generation == generation);
        let path = if known {
            None
        } else {
            Some(self.node.path(&r.path).await?)
        };
        check_emit_fields(&r)?;
        if let Some(path) = path {
            let kind = ResourceKind::Room;
            let room = self
                .node
                .access
                .require_kind(caller, &path, Right::Write, kind)
                .await?;
            let fixed = pb::RoomEvent {
                kind: Kind::Emit as i32,
                room: room.id.clone(),
                path: room.path.clone(),
                sender: caller.name.to_string(),
                ..Default::default()
            };
            *last = Some(EmitTarget {
                raw_path: std::mem::take(&mut r.path),
                access_generation: generation,
                subject: subject(ResourceKind::Room, &room.id),
                prefix: fixed.encode_to_vec(),
            });
        }
        let target = last.as_ref().expect("set above when not known");
        let own = pb::RoomEvent {
            member_id: std::mem::take(&mut r.member_id),
            event: std::mem::take(&mut r.event),
            args: r.args.take(),
            ..Default::default()
        };
        let mut payload = Vec::with_capacity(target.prefix.len() + own.encoded_len());
        payload.extend_from_slice(&target.prefix);
        own.encode(&mut payload)
            .map_err(|e| Error::internal(format!("encoding a room event: {e}")))?;
        let message = BusMessage {
            payload: payload.into(),
            last: false,
        };
        let exclude = r.peers_only.then_some(own.member_id.as_str());
        let delivered = self
            .node
            .bus
            .publish(&target.subject, message, exclude)
            .await;
        self.node.metrics.room_events.inc();
        Ok(delivered)
    }
}

#[tonic::async_trait]
impl Rooms for RoomsService {
    type JoinStream = Pin<Box<dyn Stream<Item = Result<pb::RoomEvent, Status>> + Send>>;

    /// Used only where [`RoomsRouter`] is not mounted: it decodes each event
    /// that the router's path sends as is.
    async fn join(&self, request: Request<pb::JoinRequest>) -> Reply<Self::JoinStream> {
        let events = self.open_member(&request).await?;
        let decoded = events.map(|item| {
            item.and_then(|bytes| {
                pb::RoomEvent::decode(bytes)
                    .map_err(|e| Error::internal(format!("undecodable room event: {e}")).into())
            })
        });
        reply(Box::pin(decoded))
    }

    async fn leave(&self, request: Request<pb::LeaveRequest>) -> Reply<pb::LeaveResponse> {
        let caller = caller(&request)?;
        let member_id = &request.get_ref().member_id;
        self.node.members.leave(member_id, &caller.identity_id)?;
        reply(pb::LeaveResponse {})
    }

    async fn emit(&self, request: Request<pb::EmitRequest>) -> Reply<pb::EmitResponse> {
        let caller = caller(&request)?;
        let delivered = self
            .publish_emit(&caller, request.into_inner(), &mut None)
            .await?;
        reply(pb::EmitResponse {
            delivered: delivered as u32,
        })
    }

    async fn emit_stream(
        &self,
        request: Request<Streaming<pb::EmitRequest>>,
    ) -> Reply<pb::EmitStreamSummary> {
        let caller = caller(&request)?;
        let mut requests = request.into_inner();
        let mut summary = pb::EmitStreamSummary::default();
        let lifecycle = self.node.lifecycle();
        let mut target = None;
        loop {
            let next = tokio::select! {
                next = requests.message() => next?,
                error = stopped(lifecycle.clone()) => return Err(error.into()),
            };
            let Some(emit) = next else { break };
            summary.delivered += self.publish_emit(&caller, emit, &mut target).await? as u64;
            summary.events += 1;
        }
        reply(summary)
    }
}

/// `busbar.v1.Rooms` as served.
pub type RoomsRouter = OneMethod<RoomsServer<ArcRooms>>;

/// The generated server wants an owned service; this shares one with the router.
pub struct ArcRooms(Arc<RoomsService>);

#[tonic::async_trait]
impl Rooms for ArcRooms {
    type JoinStream = <RoomsService as Rooms>::JoinStream;
    async fn join(&self, request: Request<pb::JoinRequest>) -> Reply<Self::JoinStream> {
        self.0.join(request).await
    }
    async fn leave(&self, request: Request<pb::LeaveRequest>) -> Reply<pb::LeaveResponse> {
        self.0.leave(request).await
    }
    async fn emit(&self, request: Request<pb::EmitRequest>) -> Reply<pb::EmitResponse> {
        self.0.emit(request).await
    }
    async fn emit_stream(
        &self,
        request: Request<Streaming<pb::EmitRequest>>,
    ) -> Reply<pb::EmitStreamSummary> {
        self.0.emit_stream(request).await
    }
}

/// Serves `busbar.v1.Rooms`: `Join` through a codec that writes each room
/// event's bus payload (an encoded `RoomEvent`) verbatim, everything else
/// through the generated server.
pub fn router(service: RoomsService, max_message_bytes: usize, framing: Framing) -> RoomsRouter {
    let service = Arc::new(service);
    let generated = RoomsServer::new(ArcRooms(service.clone()))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let join = move |request: http::Request<tonic::body::Body>| {
        let service = service.clone();
        Box::pin(async move {
            let join = tower::service_fn(move |request: Request<pb::JoinRequest>| {
                let service = service.clone();
                async move {
                    service
                        .open_member(&request)
                        .await
                        .map(tonic::Response::new)
                }
            });
            let mut grpc = tonic::server::Grpc::new(EncodedEventCodec)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes);
            grpc.server_streaming(join, request).await
        }) as futures::future::BoxFuture<'static, _>
    };
    OneMethod::new(generated, "/busbar.v1.Rooms/Join", Arc::new(join), framing)
}

/// Decodes `JoinRequest`s; encodes already-encoded `RoomEvent`s by copying them.
#[derive(Clone, Copy, Default)]
struct EncodedEventCodec;

impl tonic::codec::Codec for EncodedEventCodec {
    type Encode = Bytes;
    type Decode = pb::JoinRequest;
    type Encoder = EncodedEventCodec;
    type Decoder = EncodedEventCodec;
    fn encoder(&mut self) -> Self::Encoder {
        EncodedEventCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        EncodedEventCodec
    }
}

impl tonic::codec::Encoder for EncodedEventCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for EncodedEventCodec {
    type Item = pb::JoinRequest;
    type Error = Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<pb::JoinRequest>, Status> {
        pb::JoinRequest::decode(src).map(Some).map_err(|e| {
            Status::invalid_argument(format!("failed to decode Protobuf message: {e}"))
        })
    }
}
