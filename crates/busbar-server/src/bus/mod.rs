//! `Bus`: messages between the parts of a node and between nodes (room
//! events, wire chunks, cache invalidations). Nothing outside this module
//! knows which backend runs; the embedded one is in-process.
//!
//! Every subscription has a bounded queue and one of two documented
//! behaviours when it is full (see [`Overflow`]).

mod local;
mod nats;

pub use local::LocalBus;
pub use nats::{NatsBus, connect as connect_nats};

use bytes::Bytes;
use std::time::Duration;
use tokio::sync::mpsc;

/// One message on a subject.
#[derive(Debug, Clone)]
pub struct BusMessage {
    pub payload: Bytes,
    /// The subject is gone (e.g. its resource was deleted): subscribers
    /// receive this message and then their subscription ends.
    pub last: bool,
}

/// What happens when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Cut the subscriber at once (rooms): one slow member never delays the
    /// others, and its memory stays bounded.
    Disconnect,
    /// Make the publisher wait for room, up to `stall`; a subscriber full for
    /// longer is cut (wires: a pipe that keeps up loses nothing).
    Backpressure { stall: Duration },
}

/// How a subscription ended other than by dropping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its queue overflowed under its [`Overflow`] policy.
    SlowConsumer,
}

/// A live subscription: receives the subject's messages in publish order.
pub struct Subscription {
    pub(crate) receiver: mpsc::Receiver<BusMessage>,
    pub(crate) ended: std::sync::Arc<std::sync::OnceLock<Ended>>,
    /// Keeps the registration alive; dropping it unsubscribes.
    pub(crate) _guard: Box<dyn Send + Sync>,
}

impl Subscription {
    /// The next message; `Err` once the subscription was cut, `Ok(None)` when
    /// the bus closed it.
    pub async fn next(&mut self) -> Result<Option<BusMessage>, Ended> {
        match self.receiver.recv().await {
            Some(message) => Ok(Some(message)),
            None => match self.ended.get() {
                Some(ended) => Err(*ended),
                None => Ok(None),
            },
        }
    }

    /// A message already queued, without waiting; `None` when there is none
    /// (or the subscription ended: `next` says how).
    pub fn try_next(&mut self) -> Option<BusMessage> {
        self.receiver.try_recv().ok()
    }
}

/// Options of one subscription.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Queue length in messages.
    pub capacity: usize,
    pub overflow: Overflow,
    /// A tag that publishers can exclude (a room member's id, for peers-only emits).
    pub tag: Option<String>,
}

/// Messages between nodes and between the parts of one node.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Backend name, reported by `Node.Status`.
    fn backend(&self) -> &'static str;

    /// Whether messages reach the other nodes right now.
    fn healthy(&self) -> bool {
        true
    }

    /// The largest message the bus carries between nodes, in bytes.
    fn max_payload(&self) -> usize {
        usize::MAX
    }

    /// Delivers `message` to every subscriber of `subject` except the one
    /// tagged `exclude`; returns how many subscribers it reached on this node.
    async fn publish(&self, subject: &str, message: BusMessage, exclude: Option<&str>) -> usize;

    /// Subscribes before it returns: a message published anywhere after
    /// that reaches the subscription.
    async fn subscribe(&self, subject: &str, options: SubscribeOptions) -> Subscription;

    /// Subscribers of `subject` on this node (for tests of a backend).
    #[cfg(test)]
    fn subscriber_count(&self, subject: &str) -> usize;
}
