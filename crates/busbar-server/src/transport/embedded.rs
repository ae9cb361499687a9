//! The embedded queue engine: `transport.db` (SQLite, WAL,
//! `synchronous = FULL`), so a push is on disk before it is acknowledged
//! and a pop's removal commits before the message is handed over.

use super::{Lease, Limits, Metadata, NewMessage, Pushed, QueueEngine, Stored};
use crate::error::{Error, Result};
use crate::store::now_ms;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    session  TEXT PRIMARY KEY,
    metadata TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    session      TEXT NOT NULL,
    topic        TEXT NOT NULL,
    payload      BLOB NOT NULL,
    metadata     TEXT NOT NULL,
    pushed_ms    INTEGER NOT NULL,
    receipt      TEXT,
    leased_until INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_queue ON messages (session, topic, id);
CREATE UNIQUE INDEX IF NOT EXISTS messages_receipt ON messages (receipt) WHERE receipt IS NOT NULL;
";

pub(crate) struct EmbeddedQueues {
    conn: Arc<Mutex<Connection>>,
}

fn storage(error: rusqlite::Error) -> Error {
    Error::internal(format!("transport storage: {error}"))
}

fn encode_metadata(metadata: &HashMap<String, String>) -> String {
    serde_json::to_string(metadata).expect("a string map serializes")
}

fn decode_metadata(text: &str) -> HashMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

impl EmbeddedQueues {
    pub fn open(dir: &Path) -> Result<EmbeddedQueues> {
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(dir.join("transport.db"))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.busy_timeout(Duration::from_secs(10))?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        };
        Ok(EmbeddedQueues {
            conn: Arc::new(Mutex::new(open().map_err(storage)?)),
        })
    }

    async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        crate::store::embedded::run_locked(&self.conn, work).await
    }

    /// A change to a live lease (`?1` session, `?2` receipt, `?3` now);
    /// NOT_FOUND when no live lease has `receipt` any more.
    async fn settle(&self, session: &str, receipt: &str, sql: &'static str) -> Result<()> {
        let (session, receipt) = (session.to_string(), receipt.to_string());
        self.run(move |conn| {
            let changed =
                (conn.execute(sql, params![session, receipt, now_ms()])).map_err(storage)?;
            if changed == 0 {
                return Err(super::stale(&receipt));
            }
            Ok(())
        })
        .await
    }
}

/// The oldest message of a queue that no live lease hides.
const OLDEST_VISIBLE: &str = "SELECT id, topic, payload, metadata, pushed_ms FROM messages
     WHERE session = ?1 AND topic = ?2 AND leased_until <= ?3 ORDER BY id LIMIT 1";

fn stored(row: &rusqlite::Row) -> rusqlite::Result<Stored> {
    Ok(Stored {
        id: row.get::<_, i64>(0)? as u64,
        topic: row.get(1)?,
        payload: Bytes::from(row.get::<_, Vec<u8>>(2)?),
        metadata: decode_metadata(&row.get::<_, String>(3)?),
        pushed_ms: row.get(4)?,
        receipt: None,
        lease_expires_ms: 0,
    })
}

#[async_trait::async_trait]
impl QueueEngine for EmbeddedQueues {
    async fn open(&self, session: &str, metadata: Metadata) -> Result<Metadata> {
        let session = session.to_string();
        self.run(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO sessions (session, metadata) VALUES (?1, ?2)",
                params![session, encode_metadata(&metadata)],
            )
            .map_err(storage)?;
            let text: String = conn
                .query_row(
                    "SELECT metadata FROM sessions WHERE session = ?1",
                    params![session],
                    |row| row.get(0),
                )
                .map_err(storage)?;
            Ok(decode_metadata(&text))
        })
        .await
    }

    async fn push(&self, session: &str, message: NewMessage, limits: Limits) -> Result<Pushed> {
        let session = session.to_string();
        self.run(move |conn| {
            // One node has no other to retry on: keys are not kept here.
            let NewMessage {
                topic,
                payload,
                metadata,
                key: _,
            } = message;
            let tx = conn.transaction().map_err(storage)?;
            let (count, bytes): (i64, i64) = tx
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages WHERE session = ?1 AND topic = ?2",
                    params![session, topic],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .map_err(storage)?;
            if count as u64 >= limits.messages
                || bytes as u64 + payload.len() as u64 > limits.bytes
            {
                return Ok(Pushed::Full);
            }
            tx.execute(
                "INSERT INTO messages (session, topic, payload, metadata, pushed_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![session, topic, payload.as_ref(), encode_metadata(&metadata), now_ms()],
            )
            .map_err(storage)?;
            let id = tx.last_insert_rowid() as u64;
            tx.commit().map_err(storage)?;
            Ok(Pushed::Queued(id))
        })
        .await
    }

    async fn take(&self, session: &str, topic: &str, lease: Lease) -> Result<Option<Stored>> {
        let (session, topic) = (session.to_string(), topic.to_string());
        self.run(move |conn| {
            let tx = conn.transaction().map_err(storage)?;
            let now = now_ms();
            let found = tx
                .query_row(OLDEST_VISIBLE, params![session, topic, now], stored)
                .optional()
                .map_err(storage)?;
            let Some(mut message) = found else {
                return Ok(None);
            };
            match lease {
                None => {
                    tx.execute(
                        "DELETE FROM messages WHERE id = ?1",
                        params![message.id as i64],
                    )
                    .map_err(storage)?;
                }
                Some(lease) => {
                    let receipt = hex::encode(crate::auth::random_bytes::<16>());
                    let until = now + lease.as_millis() as i64;
                    tx.execute(
                        "UPDATE messages SET receipt = ?1, leased_until = ?2 WHERE id = ?3",
                        params![receipt, until, message.id as i64],
                    )
                    .map_err(storage)?;
                    message.receipt = Some(receipt);
                    message.lease_expires_ms = until;
                }
            }
            tx.commit().map_err(storage)?;
            Ok(Some(message))
        })
        .await
    }

    async fn peek(&self, session: &str, topic: &str) -> Result<Option<Stored>> {
        let (session, topic) = (session.to_string(), topic.to_string());
        self.run(move |conn| {
            conn.query_row(OLDEST_VISIBLE, params![session, topic, now_ms()], stored)
                .optional()
                .map_err(storage)
        })
        .await
    }

    async fn ack(&self, session: &str, receipt: &str) -> Result<()> {
        let sql = "DELETE FROM messages WHERE session = ?1 AND receipt = ?2 AND leased_until > ?3";
        self.settle(session, receipt, sql).await
    }

    async fn nak(&self, session: &str, receipt: &str) -> Result<()> {
        let sql = "UPDATE messages SET receipt = NULL, leased_until = 0
                   WHERE session = ?1 AND receipt = ?2 AND leased_until > ?3";
        self.settle(session, receipt, sql).await
    }

    async fn extend(&self, session: &str, receipt: &str, lease: Duration) -> Result<i64> {
        let (session, receipt) = (session.to_string(), receipt.to_string());
        self.run(move |conn| {
            let now = now_ms();
            let until = now + lease.as_millis() as i64;
            let changed = conn
                .execute(
                    "UPDATE messages SET leased_until = ?1
                     WHERE session = ?2 AND receipt = ?3 AND leased_until > ?4",
                    params![until, session, receipt, now],
                )
                .map_err(storage)?;
            if changed == 0 {
                return Err(super::stale(&receipt));
            }
            Ok(until)
        })
        .await
    }

    async fn drop_session(&self, session: &str) -> Result<u64> {
        let session = session.to_string();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(storage)?;
            let dropped = tx
                .execute("DELETE FROM messages WHERE session = ?1", params![session])
                .map_err(storage)?;
            tx.execute("DELETE FROM sessions WHERE session = ?1", params![session])
                .map_err(storage)?;
            tx.commit().map_err(storage)?;
            Ok(dropped as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &'static str) -> NewMessage {
        NewMessage {
            topic: "t".into(),
            payload: Bytes::from(text),
            metadata: HashMap::new(),
            key: None,
        }
    }

    #[tokio::test]
    async fn queues_are_fifo_bounded_and_leases_settle_once() {
        let dir = tempfile::tempdir().unwrap();
        let queues = EmbeddedQueues::open(dir.path()).unwrap();
        let small = Limits {
            messages: 2,
            bytes: 1 << 20,
        };
        for text in ["a", "b"] {
            let pushed = queues.push("s", message(text), small).await.unwrap();
            assert!(matches!(pushed, Pushed::Queued(_)));
        }
        assert_eq!(
            queues.push("s", message("c"), small).await.unwrap(),
            Pushed::Full
        );
        // Another topic is another queue.
        assert!(queues.take("s", "other", None).await.unwrap().is_none());
        let leased = queues
            .take("s", "t", Some(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(leased.payload, "a");
        let receipt = leased.receipt.unwrap();
        // Hidden while leased: the next is "b".
        assert_eq!(queues.peek("s", "t").await.unwrap().unwrap().payload, "b");
        queues.nak("s", &receipt).await.unwrap();
        assert!(
            queues.ack("s", &receipt).await.is_err(),
            "a nak'd receipt is stale"
        );
        // Back first in its queue.
        assert_eq!(
            queues.take("s", "t", None).await.unwrap().unwrap().payload,
            "a"
        );
        assert_eq!(queues.drop_session("s").await.unwrap(), 1);
        assert!(queues.take("s", "t", None).await.unwrap().is_none());
    }
}
