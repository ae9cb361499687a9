//! Rooms: join to receive events as a `Stream`, emit to send them.

use crate::api::BoxStream;
use crate::client::Client;
use crate::error::{Error, ErrorCode, Result};
use crate::json;
use busbar_proto::v1 as pb;
use futures::{Stream, StreamExt};
use std::future::Future;
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
    /// The connection dropped or the node restarted and the membership joined
    /// again on its own; events emitted while it was away were missed.
    Rejoined,
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
    state: MembershipState,
}

enum MembershipState {
    Live(BoxStream<pb::RoomEvent>),
    Rejoining(Pin<Box<dyn Future<Output = Result<Joined>> + Send>>),
    Ended,
}

/// A confirmed join: the member's identity and its event stream.
struct Joined {
    path: String,
    room_id: String,
    member_id: String,
    events: BoxStream<pb::RoomEvent>,
}

/// A failure after which joining again can work: the node stopped or the
/// connection broke. Errors the server chose (a slow consumer, a missing
/// right, an unknown room) are final.
pub(crate) fn worth_rejoining(error: &Error) -> bool {
    match error.code() {
        ErrorCode::Unavailable => true,
        ErrorCode::Internal | ErrorCode::Cancelled => error.trace_id().is_none(),
        _ => false,
    }
}

/// Joins `path` and waits for the server's confirmation.
async fn open(client: &Client, path: &str) -> Result<Joined> {
    let stream = client
        .rooms_client()
        .join(pb::JoinRequest { path: path.into() })
        .await?
        .into_inner();
    let mut events = crate::api::error_stream(stream);
    match events.next().await {
        Some(Ok(joined)) if joined.kind == pb::room_event::Kind::Joined as i32 => Ok(Joined {
            path: joined.path,
            room_id: joined.room,
            member_id: joined.member_id,
            events,
        }),
        Some(Err(error)) => Err(error),
        _ => Err(Error::new(
            ErrorCode::Internal,
            "the server did not confirm the join",
        )),
    }
}

/// Joins again until it works or fails for good (see [`again`]).
async fn rejoin(client: Client, path: String) -> Result<Joined> {
    again(|| open(&client, &path)).await
}

/// Runs `attempt` until it works or fails for good, backing off from 100 ms
/// to 5 s, each wait drawn between half and all of the step: the streams a
/// lost node had do not all come back to the next one at the same instant.
pub(crate) async fn again<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(error) if worth_rejoining(&error) => {
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Somewhere between half of `step` and all of it.
pub(crate) fn jittered(step: std::time::Duration) -> std::time::Duration {
    step / 2 + step.mul_f64(rand::random::<f64>() / 2.0)
}

impl Client {
    /// Joins the room at `path`. When this returns the membership is active:
    /// every event emitted afterwards is delivered to it.
    pub async fn join(&self, path: &str) -> Result<RoomMembership> {
        let joined = open(self, path).await?;
        Ok(RoomMembership {
            client: self.clone(),
            path: joined.path,
            room_id: joined.room_id,
            member_id: joined.member_id,
            state: MembershipState::Live(joined.events),
        })
    }

    /// Emits `event` with JSON `args` to every member of the room at `path`;
    /// returns how many members it reached.
    pub async fn emit(&self, path: &str, event: &str, args: Vec<serde_json::Value>) -> Result<u32> {
        self.emit_as(path, event, args, "", false).await
    }

    /// Emits as the member `member_id` (from [`RoomMembership::member_id`]);
    /// with `peers_only`, every member but that one receives it. For callers
    /// that read a membership's events in one task and emit from another.
    pub async fn emit_as(
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

impl Client {
    /// Ends the membership `member_id` (from [`RoomMembership::member_id`]);
    /// its stream yields `Left` and ends. Same as [`RoomMembership::leave`],
    /// for callers that read the membership's events in another task.
    pub async fn leave_member(&self, member_id: &str) -> Result<()> {
        let request = pb::LeaveRequest {
            member_id: member_id.into(),
        };
        self.rooms_client().leave(request).await?;
        Ok(())
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
        self.client.leave_member(&self.member_id).await
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

/// Events until the member leaves or the room is deleted. When the connection
/// drops or the node restarts, the membership joins again by itself and
/// yields a `Rejoined` event; a final error ends the stream after it is yielded.
impl Stream for RoomMembership {
    type Item = Result<RoomEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                MembershipState::Live(events) => {
                    match std::task::ready!(events.as_mut().poll_next(cx)) {
                        Some(Ok(event)) => {
                            let event = convert(event);
                            if matches!(event.kind, RoomEventKind::Left | RoomEventKind::Deleted) {
                                this.state = MembershipState::Ended;
                            }
                            return Poll::Ready(Some(Ok(event)));
                        }
                        Some(Err(error)) if !worth_rejoining(&error) => {
                            this.state = MembershipState::Ended;
                            return Poll::Ready(Some(Err(error)));
                        }
                        // The connection broke (or closed without a last event).
                        Some(Err(_)) | None => {
                            let rejoining = rejoin(this.client.clone(), this.path.clone());
                            this.state = MembershipState::Rejoining(Box::pin(rejoining));
                        }
                    }
                }
                MembershipState::Rejoining(rejoining) => {
                    match std::task::ready!(rejoining.as_mut().poll(cx)) {
                        Ok(joined) => {
                            this.room_id = joined.room_id;
                            this.member_id = joined.member_id;
                            this.state = MembershipState::Live(joined.events);
                            return Poll::Ready(Some(Ok(RoomEvent {
                                kind: RoomEventKind::Rejoined,
                                event: String::new(),
                                args: Vec::new(),
                                sender: String::new(),
                                sender_member: String::new(),
                                room_path: joined.path,
                            })));
                        }
                        Err(error) => {
                            this.state = MembershipState::Ended;
                            return Poll::Ready(Some(Err(error)));
                        }
                    }
                }
                MembershipState::Ended => return Poll::Ready(None),
            }
        }
    }
}

/// Events a [`RoomEmitter`] queues before `emit` waits for the connection.
const EMITTER_QUEUE: usize = 256;

/// What an emitter sent, once it finished.
pub use pb::EmitStreamSummary;

/// Emits many events over one stream: each `emit` queues the event and
/// returns, events are published in the order emitted, and nothing waits for
/// a round trip per event. `emit` takes `&self`, so one emitter (in an `Arc`)
/// serves many tasks with no lock of their own; events from one task keep
/// their order. The first failure (e.g. a missing right) ends the stream; the
/// next `emit` or `finish` returns it. Dropping an emitter ends its stream
/// too; events already queued are still published.
pub struct RoomEmitter {
    path: String,
    member_id: String,
    sender: tokio::sync::mpsc::Sender<pb::EmitRequest>,
    outcome: tokio::sync::Mutex<EmitOutcome>,
}

/// The stream's task until it has ended, then what it ended with.
enum EmitOutcome {
    Running(tokio::task::JoinHandle<Result<EmitStreamSummary>>),
    Ended(Result<EmitStreamSummary>),
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
            sender,
            outcome: tokio::sync::Mutex::new(EmitOutcome::Running(task)),
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
    pub async fn emit(&self, event: &str, args: Vec<serde_json::Value>) -> Result<()> {
        self.send(event, args, false).await
    }

    /// Queues `event` for every member but this emitter's (from [`RoomMembership::emitter`]).
    pub async fn emit_peers(&self, event: &str, args: Vec<serde_json::Value>) -> Result<()> {
        self.send(event, args, true).await
    }

    async fn send(
        &self,
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
        if self.sender.send(request).await.is_ok() {
            return Ok(());
        }
        // The stream ended early: report why.
        match self.outcome().await {
            Err(error) => Err(error),
            Ok(_) => Err(Error::new(ErrorCode::Cancelled, "the emit stream ended")),
        }
    }

    /// Waits for the stream's task (once; later callers get the same outcome).
    async fn outcome(&self) -> Result<EmitStreamSummary> {
        let mut outcome = self.outcome.lock().await;
        if let EmitOutcome::Running(task) = &mut *outcome {
            *outcome = EmitOutcome::Ended(ended(task).await);
        }
        match &*outcome {
            EmitOutcome::Ended(ended) => ended.clone(),
            EmitOutcome::Running(_) => unreachable!("set above"),
        }
    }

    /// Ends the stream once every queued event is published; returns the totals.
    pub async fn finish(self) -> Result<EmitStreamSummary> {
        let RoomEmitter {
            sender, outcome, ..
        } = self;
        drop(sender);
        match outcome.into_inner() {
            EmitOutcome::Running(mut task) => ended(&mut task).await,
            EmitOutcome::Ended(outcome) => outcome,
        }
    }
}

/// What the emit stream's task ended with (a panicked task is INTERNAL).
async fn ended(
    task: &mut tokio::task::JoinHandle<Result<EmitStreamSummary>>,
) -> Result<EmitStreamSummary> {
    task.await.unwrap_or_else(|e| {
        Err(Error::new(
            ErrorCode::Internal,
            format!("emit task failed: {e}"),
        ))
    })
}
