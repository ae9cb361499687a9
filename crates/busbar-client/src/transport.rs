//! Transport sessions: per-topic queues held by the node that a session's
//! parties push to and pop from (docs/mesh.md, "Transport sessions").

use crate::client::Client;
use crate::error::Result;
use busbar_proto::v1 as pb;
use bytes::Bytes;
use std::collections::HashMap;
use std::time::Duration;

pub use pb::{TransportMessage, TransportSession};

impl Client {
    /// Opens (creating it when missing) or joins the transport session `session`.
    pub async fn transport_open(
        &self,
        session: &str,
        metadata: HashMap<String, String>,
    ) -> Result<TransportSession> {
        Ok(self
            .transport_client()
            .open(pb::OpenTransportRequest {
                session: session.into(),
                metadata,
            })
            .await?
            .into_inner())
    }

    /// Appends `payload` to `topic`'s queue; acknowledged once on disk.
    /// Waits while the queue is full, up to this client's timeout (at most
    /// 30 s), then fails RESOURCE_EXHAUSTED. Returns the message's id.
    /// Sent with an idempotency key: on a cluster, a push whose answer was
    /// lost with its node is sent again and queued once (see
    /// [`Client::with_idempotency_key`]).
    pub async fn transport_push(
        &self,
        session: &str,
        topic: &str,
        payload: Bytes,
        metadata: HashMap<String, String>,
    ) -> Result<u64> {
        let request = pb::PushRequest {
            session: session.into(),
            topic: topic.into(),
            payload,
            metadata,
        };
        self.keyed(|client| {
            let request = request.clone();
            async move {
                Ok(client
                    .transport_client()
                    .push(request)
                    .await?
                    .into_inner()
                    .id)
            }
        })
        .await
    }

    /// Takes the oldest message of `topic`, waiting up to `timeout` for one
    /// (`None` when none came). With `lease`, the message stays hidden
    /// under a receipt until [`transport_ack`](Self::transport_ack)
    /// (at-least-once) instead of being removed.
    pub async fn transport_pop(
        &self,
        session: &str,
        topic: &str,
        timeout: Duration,
        lease: Option<Duration>,
    ) -> Result<Option<TransportMessage>> {
        Ok(self
            .transport_client()
            .pop(pb::PopRequest {
                session: session.into(),
                topic: topic.into(),
                timeout_ms: timeout.as_millis() as u64,
                lease_ms: lease.map_or(0, |l| l.as_millis().max(1) as u64),
            })
            .await?
            .into_inner()
            .message)
    }

    /// The oldest message of `topic`, left in place.
    pub async fn transport_peek(
        &self,
        session: &str,
        topic: &str,
    ) -> Result<Option<TransportMessage>> {
        Ok(self
            .transport_client()
            .peek(pb::PeekRequest {
                session: session.into(),
                topic: topic.into(),
            })
            .await?
            .into_inner()
            .message)
    }

    fn lease_request(session: &str, receipt: &str, lease: Duration) -> pb::LeaseRequest {
        pb::LeaseRequest {
            session: session.into(),
            receipt: receipt.into(),
            lease_ms: lease.as_millis() as u64,
        }
    }

    /// Settles a leased message: removes it.
    pub async fn transport_ack(&self, session: &str, receipt: &str) -> Result<()> {
        let request = Self::lease_request(session, receipt, Duration::ZERO);
        self.transport_client().ack(request).await?;
        Ok(())
    }

    /// Gives a leased message back: first in its queue again.
    pub async fn transport_nak(&self, session: &str, receipt: &str) -> Result<()> {
        let request = Self::lease_request(session, receipt, Duration::ZERO);
        self.transport_client().nak(request).await?;
        Ok(())
    }

    /// Extends a lease to `lease` from now; returns its new end (epoch ms).
    pub async fn transport_extend(
        &self,
        session: &str,
        receipt: &str,
        lease: Duration,
    ) -> Result<i64> {
        let request = Self::lease_request(session, receipt, lease);
        Ok(self
            .transport_client()
            .extend(request)
            .await?
            .into_inner()
            .lease_expires_ms)
    }

    /// Ends the session: its queues are dropped and waiting pops fail.
    /// Returns the messages dropped.
    pub async fn transport_release(&self, session: &str) -> Result<u64> {
        Ok(self
            .transport_client()
            .release(pb::ReleaseRequest {
                session: session.into(),
            })
            .await?
            .into_inner()
            .dropped)
    }
}
