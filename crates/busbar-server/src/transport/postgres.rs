//! The cluster's queue engine: transport queues in PostgreSQL, shared by
//! every node. PostgreSQL rather than JetStream: Debian's nats-server 2.9
//! cannot sync every JetStream write to disk, and acknowledged JetStream
//! writes have been lost in independent crash tests; a push here is
//! acknowledged once PostgreSQL committed it. Pops on several nodes at once
//! take different messages (`FOR UPDATE SKIP LOCKED`), and the pushes to one
//! queue are serialized (a row lock of `busbar.locks`, which user SQL cannot
//! reach) so its limits hold cluster-wide.

use super::{Lease, Limits, Metadata, NewMessage, Pushed, QueueEngine, Stored};
use crate::error::Result;
use crate::store::{cached, now_ms};
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Pool};
use std::collections::HashMap;
use std::time::Duration;
use tokio_postgres::Row;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS busbar.transport_sessions (
    session  TEXT PRIMARY KEY,
    metadata TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS busbar.transport_messages (
    id           BIGSERIAL PRIMARY KEY,
    session      TEXT NOT NULL,
    topic        TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    metadata     TEXT NOT NULL,
    pushed_ms    BIGINT NOT NULL,
    receipt      TEXT UNIQUE,
    leased_until BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS transport_messages_queue ON busbar.transport_messages (session, topic, id);
";

/// The name of the lock a queue's pushes take (see `store::row_lock`); with
/// an empty topic, the prefix of every queue of `session`.
fn queue_lock(session: &str, topic: &str) -> String {
    format!("transport/{session}/{topic}")
}

/// The oldest message of a queue that no live lease hides.
const OLDEST_VISIBLE: &str = "SELECT id, topic, payload, metadata, pushed_ms \
     FROM busbar.transport_messages \
     WHERE session = $1 AND topic = $2 AND leased_until <= $3 ORDER BY id LIMIT 1";

pub(crate) struct PostgresQueues {
    pool: Pool,
}

fn encode_metadata(metadata: &HashMap<String, String>) -> String {
    serde_json::to_string(metadata).expect("a string map serializes")
}

fn decode_metadata(text: &str) -> HashMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn stored(row: &Row) -> Stored {
    Stored {
        id: row.get::<_, i64>(0) as u64,
        topic: row.get(1),
        payload: Bytes::from(row.get::<_, Vec<u8>>(2)),
        metadata: decode_metadata(row.get(3)),
        pushed_ms: row.get(4),
        receipt: None,
        lease_expires_ms: 0,
    }
}

impl PostgresQueues {
    /// Queues in the store's database (its pool), the tables made when missing.
    pub async fn open(pool: Pool) -> Result<PostgresQueues> {
        crate::store::ensure_schema(&pool, SCHEMA).await?;
        Ok(PostgresQueues { pool })
    }

    /// Rows a one-statement change made.
    async fn change(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        let client = self.pool.get().await?;
        Ok(client.execute(&cached(&client, sql).await?, params).await?)
    }

    /// A change to a live lease (`$1` session, `$2` receipt, `$3` now);
    /// NOT_FOUND when `receipt` is none.
    async fn settle(
        &self,
        sql: &str,
        session: &str,
        receipt: &str,
        more: Option<i64>,
    ) -> Result<()> {
        let now = now_ms();
        let changed = match &more {
            Some(value) => self.change(sql, &[&session, &receipt, &now, value]).await?,
            None => self.change(sql, &[&session, &receipt, &now]).await?,
        };
        if changed == 0 {
            return Err(super::stale(receipt));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl QueueEngine for PostgresQueues {
    async fn open(&self, session: &str, metadata: Metadata) -> Result<Metadata> {
        let client = self.pool.get().await?;
        client
            .execute(
                &cached(
                    &client,
                    "INSERT INTO busbar.transport_sessions (session, metadata) VALUES ($1, $2) \
                 ON CONFLICT (session) DO NOTHING",
                )
                .await?,
                &[&session, &encode_metadata(&metadata)],
            )
            .await?;
        let row = client
            .query_one(
                &cached(
                    &client,
                    "SELECT metadata FROM busbar.transport_sessions WHERE session = $1",
                )
                .await?,
                &[&session],
            )
            .await?;
        Ok(decode_metadata(row.get(0)))
    }

    async fn push(&self, session: &str, message: NewMessage, limits: Limits) -> Result<Pushed> {
        let (topic, payload) = (&message.topic, &message.payload);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // One pusher per queue at a time, on whichever node.
        crate::store::row_lock(&tx, &queue_lock(session, topic)).await?;
        let row = tx
            .query_one(
                &cached(
                    &tx,
                    "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0)::BIGINT \
                 FROM busbar.transport_messages WHERE session = $1 AND topic = $2",
                )
                .await?,
                &[&session, &topic],
            )
            .await?;
        let (count, bytes): (i64, i64) = (row.get(0), row.get(1));
        if count as u64 >= limits.messages || bytes as u64 + payload.len() as u64 > limits.bytes {
            // A retry of a push that went in finds the queue full of it.
            if let Some(key) = &message.key
                && let Some(earlier) = crate::calls::earlier::<u64>(&*tx, key).await?
            {
                return Ok(Pushed::Queued(earlier));
            }
            return Ok(Pushed::Full);
        }
        let row = tx.query_one(&cached(&tx, "INSERT INTO busbar.transport_messages (session, topic, payload, metadata, pushed_ms) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id").await?,
                &[
                    &session,
                    &topic,
                    &payload.as_ref(),
                    &encode_metadata(&message.metadata),
                    &now_ms(),
                ],
            )
            .await?;
        let mut id = row.get::<_, i64>(0) as u64;
        if let Some(key) = &message.key {
            id = crate::calls::settle(&*tx, key, id).await?;
        }
        tx.commit().await?;
        Ok(Pushed::Queued(id))
    }

    async fn take(&self, session: &str, topic: &str, lease: Lease) -> Result<Option<Stored>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let now = now_ms();
        // Another node's pop holds its row: this one takes the next.
        let locked = format!("{OLDEST_VISIBLE} FOR UPDATE SKIP LOCKED");
        let Some(row) = tx
            .query_opt(&cached(&tx, &locked).await?, &[&session, &topic, &now])
            .await?
        else {
            return Ok(None);
        };
        let mut message = stored(&row);
        match lease {
            None => {
                tx.execute(
                    &cached(&tx, "DELETE FROM busbar.transport_messages WHERE id = $1").await?,
                    &[&(message.id as i64)],
                )
                .await?;
            }
            Some(lease) => {
                let receipt = hex::encode(crate::auth::random_bytes::<16>());
                let until = now + lease.as_millis() as i64;
                tx.execute(&cached(&tx, "UPDATE busbar.transport_messages SET receipt = $1, leased_until = $2 WHERE id = $3").await?,
                    &[&receipt, &until, &(message.id as i64)],
                )
                .await?;
                message.receipt = Some(receipt);
                message.lease_expires_ms = until;
            }
        }
        tx.commit().await?;
        Ok(Some(message))
    }

    async fn peek(&self, session: &str, topic: &str) -> Result<Option<Stored>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &cached(&client, OLDEST_VISIBLE).await?,
                &[&session, &topic, &now_ms()],
            )
            .await?;
        Ok(row.as_ref().map(stored))
    }

    async fn ack(&self, session: &str, receipt: &str) -> Result<()> {
        self.settle(
            "DELETE FROM busbar.transport_messages \
             WHERE session = $1 AND receipt = $2 AND leased_until > $3",
            session,
            receipt,
            None,
        )
        .await
    }

    async fn nak(&self, session: &str, receipt: &str) -> Result<()> {
        self.settle(
            "UPDATE busbar.transport_messages SET receipt = NULL, leased_until = 0 \
             WHERE session = $1 AND receipt = $2 AND leased_until > $3",
            session,
            receipt,
            None,
        )
        .await
    }

    async fn extend(&self, session: &str, receipt: &str, lease: Duration) -> Result<i64> {
        let until = now_ms() + lease.as_millis() as i64;
        self.settle(
            "UPDATE busbar.transport_messages SET leased_until = $4 \
             WHERE session = $1 AND receipt = $2 AND leased_until > $3",
            session,
            receipt,
            Some(until),
        )
        .await?;
        Ok(until)
    }

    async fn drop_session(&self, session: &str) -> Result<u64> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let dropped = tx
            .execute(
                &cached(
                    &tx,
                    "DELETE FROM busbar.transport_messages WHERE session = $1",
                )
                .await?,
                &[&session],
            )
            .await?;
        tx.execute(
            &cached(
                &tx,
                "DELETE FROM busbar.transport_sessions WHERE session = $1",
            )
            .await?,
            &[&session],
        )
        .await?;
        tx.execute(
            &cached(&tx, "DELETE FROM busbar.locks WHERE starts_with(name, $1)").await?,
            &[&queue_lock(session, "")],
        )
        .await?;
        tx.commit().await?;
        Ok(dropped)
    }
}
