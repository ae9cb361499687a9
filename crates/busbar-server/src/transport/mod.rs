//! Transport sessions: per-topic FIFO queues a session's parties push to
//! and pop from (proto/busbar/v1/transport.proto has the contract and the
//! delivery guarantee).
//!
//! - [`QueueEngine`] is the seam to storage: the embedded engine
//!   (`embedded.rs`, SQLite `transport.db`, synced before every
//!   acknowledgement) today, PostgreSQL in a cluster;
//! - [`Waiters`] wakes pops waiting for a message and pushes waiting for
//!   room, on this node;
//! - `service.rs` is busbar.v1.Transport.

pub(crate) mod embedded;
pub(crate) mod postgres;
pub mod service;

use crate::error::Result;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Where transport sessions live in the resource tree.
pub(crate) const TRANSPORT_FOLDER: &str = "/transport";

/// How much one topic's queue may hold; a push past either waits for room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub messages: u64,
    pub bytes: u64,
}

pub(crate) const LIMITS: Limits = Limits {
    messages: 10_000,
    bytes: 64 << 20,
};

/// A session's or a message's metadata: string keys and values.
pub(crate) type Metadata = HashMap<String, String>;

/// A message as storage holds it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub id: u64,
    pub topic: String,
    pub payload: Bytes,
    pub metadata: HashMap<String, String>,
    pub pushed_ms: i64,
    /// Leased pops only.
    pub receipt: Option<String>,
    pub lease_expires_ms: i64,
}

/// The answer to a receipt that is no live lease.
pub(crate) fn stale(receipt: &str) -> crate::error::Error {
    crate::error::Error::not_found(format!(
        "no live lease has receipt {receipt:?}: it was settled already, or its lease ended and the message went back to its queue"
    ))
}

/// A message to push.
#[derive(Debug, Clone)]
pub(crate) struct NewMessage {
    pub topic: String,
    pub payload: Bytes,
    pub metadata: HashMap<String, String>,
    /// The push's idempotency key, if it carries one (`crate::calls`).
    pub key: Option<crate::calls::CallKey>,
}

/// What a push came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued(u64),
    /// The topic's queue is at its limit; nothing was stored.
    Full,
}

/// How long a taken message stays hidden awaiting its ack; `None` takes it
/// for good.
pub(crate) type Lease = Option<Duration>;

/// The seam to the queues' storage. Sessions are keyed by their
/// resource's id (it survives moves).
#[async_trait::async_trait]
pub(crate) trait QueueEngine: Send + Sync {
    /// Records a session's metadata unless it has some; returns the
    /// session's metadata.
    async fn open(&self, session: &str, metadata: Metadata) -> Result<Metadata>;
    /// Appends `message` to its topic's queue, unless that is at `limits`.
    async fn push(&self, session: &str, message: NewMessage, limits: Limits) -> Result<Pushed>;
    /// Takes the oldest visible message: removes it, or with `lease` hides
    /// it until then under a new receipt.
    async fn take(&self, session: &str, topic: &str, lease: Lease) -> Result<Option<Stored>>;
    async fn peek(&self, session: &str, topic: &str) -> Result<Option<Stored>>;
    /// Removes a leased message; NOT_FOUND for a receipt that is not (or
    /// no longer) a live lease.
    async fn ack(&self, session: &str, receipt: &str) -> Result<()>;
    /// Makes a leased message visible again at once.
    async fn nak(&self, session: &str, receipt: &str) -> Result<()>;
    /// Moves a lease's end to `lease` from now; returns it (epoch ms).
    async fn extend(&self, session: &str, receipt: &str, lease: Duration) -> Result<i64>;
    /// Drops a session's queues and metadata; returns the messages dropped.
    async fn drop_session(&self, session: &str) -> Result<u64>;
}

/// One queue's waiters on this node.
pub(crate) struct Waiter {
    pub notify: Notify,
    pub released: AtomicBool,
}

/// Waiters by (session, topic), kept while someone waits.
#[derive(Default)]
pub(crate) struct Waiters {
    queues: Mutex<HashMap<(String, String), Arc<Waiter>>>,
}

impl Waiters {
    /// The waiter of a queue (made on first use; ones nobody holds go).
    pub fn of(&self, session: &str, topic: &str) -> Arc<Waiter> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.retain(|_, waiter| Arc::strong_count(waiter) > 1);
        queues
            .entry((session.to_string(), topic.to_string()))
            .or_insert_with(|| {
                Arc::new(Waiter {
                    notify: Notify::new(),
                    released: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// Wakes whoever waits on a queue (a message came, or room).
    pub fn wake(&self, session: &str, topic: &str) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiter) = queues.get(&(session.to_string(), topic.to_string())) {
            waiter.notify.notify_waiters();
        }
    }

    /// Wakes everyone waiting on any queue of a session; with `released`,
    /// tells them the session is gone.
    pub fn wake_session(&self, session: &str, released: bool) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        for ((s, _), waiter) in queues.iter() {
            if s == session {
                if released {
                    waiter.released.store(true, Ordering::SeqCst);
                }
                waiter.notify.notify_waiters();
            }
        }
    }
}
