//! `busbar.v1.Rooms`: members join a room and receive its events; emitters
//! publish to it. Fan-out goes through the `Bus`; each member has a bounded
//! queue and is cut with SLOW_CONSUMER when it overflows.

use super::resources::subject;
use super::{Reply, reply};
use crate::bus::{Ended, Overflow, SubscribeOptions, Subscription};
use crate::error::{Error, Result};
use crate::node::{LocalMember, Node, caller, stopped};
use crate::paths;
use crate::store::{ResourceKind, ResourceRecord, Right};
use busbar_proto::v1::{self as pb, room_event::Kind, rooms_server::Rooms};
use futures::Stream;
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::Notify;
use tonic::{Request, Status};

pub struct RoomsService {
    pub node: Arc<Node>,
}

const MAX_EVENT_NAME_BYTES: usize = 255;

fn check_room(record: ResourceRecord) -> Result<ResourceRecord> {
    if record.kind == ResourceKind::Room {
        Ok(record)
    } else {
        Err(Error::failed_precondition(format!(
            "{} is a {}, not a room",
            record.path,
            record.kind.name()
        )))
    }
}

/// A member's stream: JOINED, then the room's events, until it leaves, the
/// room is deleted, the member overflows or the node stops.
struct Member {
    node: Arc<Node>,
    member_id: String,
    joined: Option<pb::RoomEvent>,
    subscription: Subscription,
    leave: Arc<Notify>,
    done: bool,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.node.members().remove(&self.member_id);
    }
}

impl Member {
    async fn next(&mut self) -> Option<Result<pb::RoomEvent, Status>> {
        if let Some(joined) = self.joined.take() {
            return Some(Ok(joined));
        }
        if self.done {
            return None;
        }
        let lifecycle = self.node.lifecycle();
        tokio::select! {
            received = self.subscription.next() => match received {
                Ok(Some(message)) => {
                    let event = match pb::RoomEvent::decode(message.payload) {
                        Ok(event) => event,
                        Err(e) => return Some(Err(Error::internal(format!("undecodable room event: {e}")).into())),
                    };
                    self.done = message.last;
                    self.node.metrics.room_deliveries.inc();
                    Some(Ok(event))
                }
                Ok(None) => None,
                Err(Ended::SlowConsumer) => {
                    self.done = true;
                    Some(Err(Error::slow_consumer(format!(
                        "member {} fell more than {} events behind and was removed from the room; read faster or join again",
                        self.member_id, self.node.config.room_queue
                    )).into()))
                }
            },
            _ = self.leave.notified() => {
                self.done = true;
                Some(Ok(pb::RoomEvent { kind: Kind::Left as i32, member_id: self.member_id.clone(), ..Default::default() }))
            }
            error = stopped(lifecycle) => {
                self.done = true;
                Some(Err(error.into()))
            }
        }
    }
}

#[tonic::async_trait]
impl Rooms for RoomsService {
    type JoinStream = Pin<Box<dyn Stream<Item = Result<pb::RoomEvent, Status>> + Send>>;

    async fn join(&self, request: Request<pb::JoinRequest>) -> Reply<Self::JoinStream> {
        let caller = caller(&request)?;
        let path = paths::normalize(&request.get_ref().path)?;
        let room = check_room(
            self.node
                .access
                .require_resource(&caller, &path, Right::Read)
                .await?,
        )?;
        let member_id = uuid::Uuid::new_v4().to_string();
        let subscription = self.node.bus.subscribe(
            &subject(ResourceKind::Room, &room.id),
            SubscribeOptions {
                capacity: self.node.config.room_queue,
                overflow: Overflow::Disconnect,
                tag: Some(member_id.clone()),
            },
        );
        let leave = Arc::new(Notify::new());
        self.node.members().insert(
            member_id.clone(),
            LocalMember {
                identity_id: caller.identity_id.clone(),
                leave: leave.clone(),
            },
        );
        let joined = pb::RoomEvent {
            kind: Kind::Joined as i32,
            room: room.id.clone(),
            path: room.path.clone(),
            member_id: member_id.clone(),
            sender: caller.name.clone(),
            ..Default::default()
        };
        let member = Member {
            node: self.node.clone(),
            member_id,
            joined: Some(joined),
            subscription,
            leave,
            done: false,
        };
        let stream = futures::stream::unfold(member, |mut member| async move {
            member.next().await.map(|item| (item, member))
        });
        reply(Box::pin(stream))
    }

    async fn leave(&self, request: Request<pb::LeaveRequest>) -> Reply<pb::LeaveResponse> {
        let caller = caller(&request)?;
        let member_id = &request.get_ref().member_id;
        let members = self.node.members();
        match members.get(member_id) {
            Some(member) if member.identity_id == caller.identity_id => {
                member.leave.notify_one();
                reply(pb::LeaveResponse {})
            }
            Some(_) => Err(Error::permission_denied(format!(
                "member {member_id} belongs to another identity; only its own identity can leave"
            ))
            .into()),
            None => Err(Error::not_found(format!(
                "no member {member_id} on this node; it has already left, or joined through another node"
            ))
            .into()),
        }
    }

    async fn emit(&self, request: Request<pb::EmitRequest>) -> Reply<pb::EmitResponse> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let path = paths::normalize(&r.path)?;
        if r.event.is_empty()
            || r.event.len() > MAX_EVENT_NAME_BYTES
            || r.event.chars().any(char::is_control)
        {
            return Err(Error::invalid_argument(format!(
                "bad event name {:?}: use 1 to {MAX_EVENT_NAME_BYTES} bytes without control characters",
                r.event
            ))
            .into());
        }
        if r.peers_only && r.member_id.is_empty() {
            return Err(Error::invalid_argument(
                "peers_only needs member_id: pass the member id from your JOINED event",
            )
            .into());
        }
        let room = check_room(
            self.node
                .access
                .require_resource(&caller, &path, Right::Write)
                .await?,
        )?;
        let event = pb::RoomEvent {
            kind: Kind::Emit as i32,
            room: room.id.clone(),
            path: room.path,
            member_id: r.member_id.clone(),
            event: r.event,
            args: r.args,
            sender: caller.name,
        };
        let message = crate::bus::BusMessage {
            payload: event.encode_to_vec().into(),
            last: false,
        };
        let exclude = r.peers_only.then_some(r.member_id.as_str());
        let delivered = self
            .node
            .bus
            .publish(&subject(ResourceKind::Room, &room.id), message, exclude)
            .await;
        self.node.metrics.room_events.inc();
        reply(pb::EmitResponse {
            delivered: delivered as u32,
        })
    }
}
