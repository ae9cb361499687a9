//! Wires: publish a stream of byte chunks; subscribe to receive them.

use crate::api::BoxStream;
use crate::client::Client;
use crate::error::Result;
use busbar_proto::v1 as pb;
use bytes::Bytes;
use futures::{Stream, StreamExt};

pub use pb::PublishSummary;

impl Client {
    /// Publishes `chunks` into the wire at `path`; returns once all are sent
    /// (subscribers that are full slow this down, see the wire stall timeout).
    pub async fn publish<S>(&self, path: &str, chunks: S) -> Result<PublishSummary>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let first = pb::WireChunk {
            path: path.into(),
            data: Bytes::new(),
        };
        let rest = chunks.map(|data| pb::WireChunk {
            path: String::new(),
            data,
        });
        let messages = futures::stream::once(async { first }).chain(rest);
        Ok(self.wires_client().publish(messages).await?.into_inner())
    }

    /// Subscribes to the wire at `path`. When this returns the subscription is
    /// active: every chunk published afterwards arrives, in order. A lost
    /// connection ends it with an error (see
    /// [`subscribe_resuming`](Self::subscribe_resuming)).
    pub async fn subscribe(&self, path: &str) -> Result<BoxStream<Bytes>> {
        let stream = self
            .wires_client()
            .subscribe(pb::SubscribeRequest { path: path.into() })
            .await?
            .into_inner();
        Ok(Box::pin(
            crate::api::error_stream(stream).map(|chunk| chunk.map(|c| c.data)),
        ))
    }

    /// [`subscribe`](Self::subscribe), kept across a lost connection: when
    /// the node goes (or the client moves to another of its addresses), the
    /// subscription is opened again, backing off from 100 ms to 5 s with
    /// jitter while no node answers, and a [`WireEvent::Resubscribed`] says
    /// that chunks published meanwhile were missed. Errors the node chose (a
    /// slow subscriber cut, a missing right, a deleted wire) still end it.
    /// Holds at most [`RESUMING_QUEUE`] chunks the caller has not taken.
    pub async fn subscribe_resuming(&self, path: &str) -> Result<BoxStream<WireEvent>> {
        let mut current = self.subscribe(path).await?;
        let (events, taken) = tokio::sync::mpsc::channel(RESUMING_QUEUE);
        let (client, path) = (self.clone(), path.to_string());
        tokio::spawn(async move {
            loop {
                let event = match current.next().await {
                    Some(Ok(chunk)) => Ok(WireEvent::Chunk(chunk)),
                    Some(Err(error)) if crate::rooms::worth_rejoining(&error) => {
                        let opened = tokio::select! {
                            opened = crate::rooms::again(|| client.subscribe(&path)) => opened,
                            () = events.closed() => return,
                        };
                        match opened {
                            Ok(stream) => {
                                current = stream;
                                Ok(WireEvent::Resubscribed)
                            }
                            Err(error) => Err(error),
                        }
                    }
                    Some(Err(error)) => Err(error),
                    None => return,
                };
                let last = event.is_err();
                if events.send(event).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(taken)))
    }
}

/// Chunks a resuming subscription holds for its caller; while it is full
/// the subscription waits, and the node's stall rule applies as to any
/// subscriber.
pub const RESUMING_QUEUE: usize = 64;

/// What a resuming wire subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireEvent {
    Chunk(Bytes),
    /// The subscription was opened again after its connection was lost:
    /// chunks published in between were missed.
    Resubscribed,
}
