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
    /// active: every chunk published afterwards arrives, in order.
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
}
