//! Rooms: join to receive events as a `Stream`, emit to send them.

use crate::api::BoxStream;
use crate::client::Client;
use crate::error::{Error, ErrorCode, Result};
use crate::json;
use busbar_proto::v1 as pb;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};

/// What a room event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomEventKind {
    /// An application event with a name and arguments.
    Emit,
    /// This member left (after [`RoomMembership::leave`]); the stream ends.
    Left,
    /// The room was deleted; the stream ends.
    Deleted,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoomEvent {
    pub kind: RoomEventKind,
    /// Application event name (empty for `Left` and `Deleted`).
    pub event: String,
    pub args: Vec<serde_json::Value>,
    /// Identity name of the emitter.
    pub sender: String,
    /// The emitter's member id, if it passed one.
    pub sender_member: String,
    pub room_path: String,
}

/// A joined room: a `Stream` of its events, from the moment `join` returned.
pub struct RoomMembership {
    client: Client,
    path: String,
    room_id: String,
    member_id: String,
    events: BoxStream<pb::RoomEvent>,
}

impl Client {
    /// Joins the room at `path`. When this returns the membership is active:
    /// every event emitted afterwards is delivered to it.
    pub async fn join(&self, path: &str) -> Result<RoomMembership> {
        let stream = self
            .rooms_client()
            .join(pb::JoinRequest { path: path.into() })
            .await?
            .into_inner();
        let mut events = crate::api::error_stream(stream);
        let joined = match events.next().await {
            Some(Ok(event)) if event.kind == pb::room_event::Kind::Joined as i32 => event,
            Some(Err(error)) => return Err(error),
            _ => {
                return Err(Error::new(
                    ErrorCode::Internal,
                    "the server did not confirm the join",
                ));
            }
        };
        Ok(RoomMembership {
            client: self.clone(),
            path: joined.path,
            room_id: joined.room,
            member_id: joined.member_id,
            events,
        })
    }

    /// Emits `event` with JSON `args` to every member of the room at `path`;
    /// returns how many members it reached.
    pub async fn emit(&self, path: &str, event: &str, args: Vec<serde_json::Value>) -> Result<u32> {
        self.emit_as(path, event, args, "", false).await
    }

    pub(crate) async fn emit_as(
        &self,
        path: &str,
        event: &str,
        args: Vec<serde_json::Value>,
        member_id: &str,
        peers_only: bool,
    ) -> Result<u32> {
        let request = pb::EmitRequest {
            path: path.into(),
            event: event.into(),
            args: Some(json::list_to_proto(args)),
            member_id: member_id.into(),
            peers_only,
        };
        Ok(self
            .rooms_client()
            .emit(request)
            .await?
            .into_inner()
            .delivered)
    }
}

impl std::fmt::Debug for RoomMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomMembership")
            .field("path", &self.path)
            .field("member_id", &self.member_id)
            .finish()
    }
}

impl RoomMembership {
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn room_id(&self) -> &str {
        &self.room_id
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Emits as this member (the event also comes back to it).
    pub async fn emit(&self, event: &str, args: Vec<serde_json::Value>) -> Result<u32> {
        self.client
            .emit_as(&self.path, event, args, &self.member_id, false)
            .await
    }

    /// Emits to every member but this one.
    pub async fn emit_peers(&self, event: &str, args: Vec<serde_json::Value>) -> Result<u32> {
        self.client
            .emit_as(&self.path, event, args, &self.member_id, true)
            .await
    }

    /// Leaves the room; the stream yields `Left` and ends.
    pub async fn leave(&self) -> Result<()> {
        let request = pb::LeaveRequest {
            member_id: self.member_id.clone(),
        };
        self.client.rooms_client().leave(request).await?;
        Ok(())
    }
}

fn convert(event: pb::RoomEvent) -> RoomEvent {
    use pb::room_event::Kind;
    let kind = match Kind::try_from(event.kind) {
        Ok(Kind::Left) => RoomEventKind::Left,
        Ok(Kind::Deleted) => RoomEventKind::Deleted,
        _ => RoomEventKind::Emit,
    };
    RoomEvent {
        kind,
        event: event.event,
        args: event.args.map(json::list_from_proto).unwrap_or_default(),
        sender: event.sender,
        sender_member: event.member_id,
        room_path: event.path,
    }
}

impl Stream for RoomMembership {
    type Item = Result<RoomEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events
            .as_mut()
            .poll_next(cx)
            .map(|item| item.map(|event| event.map(convert)))
    }
}

/// Events a [`RoomEmitter`] queues before `emit` waits for the connection.
const EMITTER_QUEUE: usize = 256;

/// What an emitter sent, once it finished.
pub use pb::EmitStreamSummary;

/// Emits many events over one stream: each `emit` queues the event and
/// returns, events are published in the order emitted, and nothing waits for
/// a round trip per event. The first failure (e.g. a missing right) ends the
/// stream; the next `emit` or `finish` returns it. Dropping an emitter ends
/// its stream too; events already queued are still published.
pub struct RoomEmitter {
    path: String,
    member_id: String,
    sender: Option<tokio::sync::mpsc::Sender<pb::EmitRequest>>,
    task: Option<tokio::task::JoinHandle<Result<EmitStreamSummary>>>,
}

impl Client {
    /// An emitter for the room at `path`.
    pub fn emitter(&self, path: &str) -> RoomEmitter {
        let (sender, receiver) = tokio::sync::mpsc::channel(EMITTER_QUEUE);
        let mut rooms = self.rooms_client();
        let task = tokio::spawn(async move {
            let requests = tokio_stream::wrappers::ReceiverStream::new(receiver);
            Ok(rooms.emit_stream(requests).await?.into_inner())
        });
        RoomEmitter {
            path: path.into(),
            member_id: String::new(),
            sender: Some(sender),
            task: Some(task),
        }
    }
}

impl RoomMembership {
    /// An emitter that emits as this member, so `emit_peers` can skip it.
    pub fn emitter(&self) -> RoomEmitter {
        RoomEmitter {
            member_id: self.member_id.clone(),
            ..self.client.emitter(&self.path)
        }
    }
}

impl RoomEmitter {
    /// Queues `event` for every member.
    pub async fn emit(&mut self, event: &str, args: Vec<serde_json::Value>) -> Result<()> {
        self.send(event, args, false).await
    }

    /// Queues `event` for every member but this emitter's (from [`RoomMembership::emitter`]).
    pub async fn emit_peers(&mut self, event: &str, args: Vec<serde_json::Value>) -> Result<()> {
        self.send(event, args, true).await
    }

    async fn send(
        &mut self,
        event: &str,
        args: Vec<serde_json::Value>,
        peers_only: bool,
    ) -> Result<()> {
        let request = pb::EmitRequest {
            path: self.path.clone(),
            event: event.into(),
            args: Some(json::list_to_proto(args)),
            member_id: self.member_id.clone(),
            peers_only,
        };
        let sender = self
            .sender
            .as_ref()
            .ok_or_else(|| Error::invalid_argument("this emitter has finished"))?;
        if sender.send(request).await.is_ok() {
            return Ok(());
        }
        // The stream ended early: report why.
        match self.finish_inner().await {
            Err(error) => Err(error),
            Ok(_) => Err(Error::new(ErrorCode::Cancelled, "the emit stream ended")),
        }
    }

    async fn finish_inner(&mut self) -> Result<EmitStreamSummary> {
        self.sender = None;
        let task = self
            .task
            .take()
            .ok_or_else(|| Error::invalid_argument("this emitter has finished"))?;
        task.await
            .map_err(|e| Error::new(ErrorCode::Internal, format!("emit task failed: {e}")))?
    }

    /// Ends the stream once every queued event is published; returns the totals.
    pub async fn finish(mut self) -> Result<EmitStreamSummary> {
        self.finish_inner().await
    }
}
