//! `busbar.v1.Transport`: sessions, their rights, and waiting for messages
//! and for room.

use super::{LIMITS, NewMessage, Pushed, Stored, TRANSPORT_FOLDER};
use crate::auth::access::Caller;
use crate::error::{Error, ErrorCode, Result};
use crate::grpc::{Reply, reply};
use crate::node::{Node, caller, caller_and_message, time_left};
use crate::store::{NewResource, ResourceKind, ResourceRecord, Right};
use busbar_proto::v1::{self as pb, transport_server::Transport};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Request;

/// The longest a pop waits, and a lease lasts.
const MAX_POP_WAIT: Duration = Duration::from_secs(300);
const MAX_LEASE: Duration = Duration::from_secs(3600);
/// The longest a push waits for room in a full queue.
const MAX_PUSH_WAIT: Duration = Duration::from_secs(30);
/// Waiting pops look again at least this often (a lease may have ended).
const RECHECK: Duration = Duration::from_millis(250);
/// The most metadata entries, and bytes of metadata, one message carries.
const MAX_METADATA_ENTRIES: usize = 64;
const MAX_METADATA_BYTES: usize = 16 << 10;

#[derive(Clone)]
pub struct TransportService {
    pub node: Arc<Node>,
}

fn check_session_id(id: &str) -> Result<()> {
    if crate::resources::paths::is_plain_name(id, 128) && id != "." && id != ".." {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "bad session id {id:?}: use 1 to 128 letters, digits, '.', '_' or '-'"
        )))
    }
}

fn check_metadata(metadata: &std::collections::HashMap<String, String>) -> Result<()> {
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if metadata.len() > MAX_METADATA_ENTRIES || bytes > MAX_METADATA_BYTES {
        return Err(Error::invalid_argument(format!(
            "metadata holds {} entries, {bytes} bytes; at most {MAX_METADATA_ENTRIES} entries and {MAX_METADATA_BYTES} bytes",
            metadata.len()
        )));
    }
    Ok(())
}

fn session_path(id: &str) -> Result<String> {
    check_session_id(id)?;
    Ok(format!("{TRANSPORT_FOLDER}/{id}"))
}

fn message_pb(stored: Stored) -> pb::TransportMessage {
    pb::TransportMessage {
        id: stored.id,
        topic: stored.topic,
        payload: stored.payload,
        metadata: stored.metadata,
        pushed_ms: stored.pushed_ms,
        receipt: stored.receipt.unwrap_or_default(),
        lease_expires_ms: stored.lease_expires_ms,
    }
}

fn released(session: &str) -> Error {
    Error::failed_precondition(format!(
        "the transport session {session} was released; open it again to start a new one"
    ))
}

/// How long a call may wait: `asked`, capped by `most` and by the call's
/// deadline (a little before it, so the answer still arrives in time).
fn wait_for<T>(request: &Request<T>, asked: Duration, most: Duration) -> Duration {
    let mut wait = asked.min(most);
    if let Some(left) = time_left(request) {
        wait = wait.min(left.saturating_sub(Duration::from_millis(50)));
    }
    wait
}

impl TransportService {
    /// The session resource, after checking `needed` on it.
    async fn session(
        &self,
        caller: &Caller,
        id: &str,
        needed: Right,
    ) -> Result<Arc<ResourceRecord>> {
        let path = session_path(id)?;
        let record = self
            .node
            .access
            .require_kind(caller, &path, needed, ResourceKind::Transport)
            .await
            .map_err(|error| match error.code {
                ErrorCode::NotFound => Error::not_found(format!(
                    "no transport session {id}; open it first (Transport/Open)"
                )),
                _ => error,
            })?;
        Ok(record)
    }
}

#[tonic::async_trait]
impl Transport for TransportService {
    async fn open(
        &self,
        request: Request<pb::OpenTransportRequest>,
    ) -> Reply<pb::TransportSession> {
        let (caller, r) = caller_and_message(request)?;
        let path = session_path(&r.session)?;
        check_metadata(&r.metadata)?;
        let access = &self.node.access;
        let (record, created) = match access.resource(&path).await? {
            Some(_) => (self.session(&caller, &r.session, Right::Read).await?, false),
            None => {
                access
                    .require(&caller, TRANSPORT_FOLDER, Right::Write)
                    .await?;
                let made = self
                    .node
                    .store
                    .create_resource(NewResource::new(
                        &path,
                        ResourceKind::Transport,
                        &caller.name,
                    ))
                    .await;
                access.invalidate().await;
                match made {
                    Ok(record) => (Arc::new(record), true),
                    // Another party opened it at the same moment: join it.
                    Err(error) if error.code == ErrorCode::AlreadyExists => {
                        (self.session(&caller, &r.session, Right::Read).await?, false)
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        };
        let metadata = self.node.transport.open(&record.id, r.metadata).await?;
        reply(pb::TransportSession {
            session: r.session,
            path,
            metadata,
            created,
        })
    }

    async fn push(&self, request: Request<pb::PushRequest>) -> Reply<pb::PushResponse> {
        let caller = caller(&request)?;
        let session = self
            .session(&caller, &request.get_ref().session, Right::Write)
            .await?;
        check_metadata(&request.get_ref().metadata)?;
        let until = Instant::now() + wait_for(&request, MAX_PUSH_WAIT, MAX_PUSH_WAIT);
        let key = crate::calls::CallKey::of(&self.node, &request, &caller, "Push")?;
        let r = request.into_inner();
        let waiter = self.node.transport_waiters.of(&session.id, &r.topic);
        let message = NewMessage {
            topic: r.topic.clone(),
            payload: r.payload,
            metadata: r.metadata,
            key,
        };
        loop {
            let room = waiter.notify.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let pushed = self
                .node
                .transport
                .push(&session.id, message.clone(), LIMITS)
                .await?;
            match pushed {
                Pushed::Queued(id) => {
                    self.node.wake_queue(&session.id, &r.topic).await;
                    return reply(pb::PushResponse { id });
                }
                Pushed::Full => {
                    if waiter.released.load(Ordering::SeqCst) {
                        return Err(released(&r.session).into());
                    }
                    if tokio::time::timeout_at(until, room).await.is_err() {
                        return Err(Error::resource_exhausted(format!(
                            "topic {:?} of session {} is full ({} messages or {} bytes) and no room came before the push's deadline; pop from it, or push later",
                            r.topic, r.session, LIMITS.messages, LIMITS.bytes
                        ))
                        .into());
                    }
                }
            }
        }
    }

    async fn pop(&self, request: Request<pb::PopRequest>) -> Reply<pb::PopResponse> {
        let caller = caller(&request)?;
        let session = self
            .session(&caller, &request.get_ref().session, Right::Read)
            .await?;
        let r = request.get_ref();
        let lease = match r.lease_ms {
            0 => None,
            ms if Duration::from_millis(ms) <= MAX_LEASE => Some(Duration::from_millis(ms)),
            ms => {
                return Err(Error::invalid_argument(format!(
                    "bad lease_ms {ms}: at most {}",
                    MAX_LEASE.as_millis()
                ))
                .into());
            }
        };
        let wait = wait_for(&request, Duration::from_millis(r.timeout_ms), MAX_POP_WAIT);
        let until = Instant::now() + wait;
        let connection = crate::node::connections::socket_pair(&request);
        let r = request.into_inner();
        let waiter = self.node.transport_waiters.of(&session.id, &r.topic);
        loop {
            let more = waiter.notify.notified();
            tokio::pin!(more);
            more.as_mut().enable();
            if waiter.released.load(Ordering::SeqCst) {
                return Err(released(&r.session).into());
            }
            if let Some(message) = self
                .node
                .transport
                .take(&session.id, &r.topic, lease)
                .await?
            {
                // A leased message is in the care of the popper's connection.
                if let (Some(pair), Some(receipt)) = (connection, &message.receipt) {
                    let held = crate::node::connections::HeldLease {
                        session: session.id.clone(),
                        receipt: receipt.clone(),
                    };
                    if !self.node.connections.hold(pair, held) {
                        // The popper is gone already: the message goes back.
                        let _ = self.node.transport.nak(&session.id, receipt).await;
                        return Err(Error::cancelled("the popper's connection closed").into());
                    }
                }
                // Room for a waiting push.
                self.node.wake_queue(&session.id, &r.topic).await;
                return reply(pb::PopResponse {
                    message: Some(message_pb(message)),
                });
            }
            let now = Instant::now();
            if now >= until {
                return reply(pb::PopResponse { message: None });
            }
            let _ = tokio::time::timeout_at(until.min(now + RECHECK), more).await;
        }
    }

    async fn peek(&self, request: Request<pb::PeekRequest>) -> Reply<pb::PopResponse> {
        let (caller, r) = caller_and_message(request)?;
        let session = self.session(&caller, &r.session, Right::Read).await?;
        let message = self.node.transport.peek(&session.id, &r.topic).await?;
        reply(pb::PopResponse {
            message: message.map(message_pb),
        })
    }

    async fn ack(&self, request: Request<pb::LeaseRequest>) -> Reply<pb::LeaseResponse> {
        let (caller, r) = caller_and_message(request)?;
        let session = self.session(&caller, &r.session, Right::Read).await?;
        self.node.transport.ack(&session.id, &r.receipt).await?;
        reply(pb::LeaseResponse::default())
    }

    async fn nak(&self, request: Request<pb::LeaseRequest>) -> Reply<pb::LeaseResponse> {
        let (caller, r) = caller_and_message(request)?;
        let session = self.session(&caller, &r.session, Right::Read).await?;
        self.node.transport.nak(&session.id, &r.receipt).await?;
        // Visible again: a waiting pop may take it.
        self.node.wake_transport_session(&session.id, false).await;
        reply(pb::LeaseResponse::default())
    }

    async fn extend(&self, request: Request<pb::LeaseRequest>) -> Reply<pb::LeaseResponse> {
        let (caller, r) = caller_and_message(request)?;
        let session = self.session(&caller, &r.session, Right::Read).await?;
        let lease = Duration::from_millis(r.lease_ms);
        if lease.is_zero() || lease > MAX_LEASE {
            return Err(Error::invalid_argument(format!(
                "bad lease_ms {}: use 1 to {}",
                r.lease_ms,
                MAX_LEASE.as_millis()
            ))
            .into());
        }
        let until = self
            .node
            .transport
            .extend(&session.id, &r.receipt, lease)
            .await?;
        reply(pb::LeaseResponse {
            lease_expires_ms: until,
        })
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Reply<pb::ReleaseResponse> {
        let (caller, r) = caller_and_message(request)?;
        let session = self.session(&caller, &r.session, Right::Admin).await?;
        let dropped = self.node.transport.drop_session(&session.id).await?;
        self.node
            .store
            .delete_resource(&session.path, false)
            .await?;
        self.node.access.invalidate().await;
        self.node.wake_transport_session(&session.id, true).await;
        reply(pb::ReleaseResponse { dropped })
    }
}
