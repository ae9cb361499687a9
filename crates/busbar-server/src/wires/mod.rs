//! `busbar.v1.Wires`: byte chunks from publishers to the subscribers present.
//! A full subscriber back-pressures the publisher for up to the node's wire
//! stall timeout, then is cut with SLOW_CONSUMER.

use crate::bus::{BusMessage, Ended, Overflow, SubscribeOptions, Subscription};
use crate::error::{Error, Result};
use crate::grpc::{Reply, reply};
use crate::node::{Node, caller, stopped};
use crate::resources::subject;
use crate::store::{ResourceKind, Right};
use busbar_proto::v1::{self as pb, wires_server::Wires};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Status, Streaming};

pub struct WiresService {
    pub node: Arc<Node>,
}

struct Subscriber {
    node: Arc<Node>,
    path: String,
    subscription: Subscription,
    done: bool,
}

impl Subscriber {
    async fn next(&mut self) -> Option<Result<pb::WireChunk, Status>> {
        if self.done {
            return None;
        }
        let lifecycle = self.node.lifecycle();
        tokio::select! {
            received = self.subscription.next() => match received {
                Ok(Some(message)) if message.last => None,
                Ok(Some(message)) => Some(Ok(pb::WireChunk { path: String::new(), data: message.payload })),
                Ok(None) => None,
                Err(Ended::SlowConsumer) => {
                    self.done = true;
                    Some(Err(Error::slow_consumer(format!(
                        "subscriber of {} stalled for longer than {:?} with a full queue and was cut; read faster or subscribe again",
                        self.path, self.node.config.wire_stall
                    )).into()))
                }
            },
            error = stopped(lifecycle) => {
                self.done = true;
                Some(Err(error.into()))
            }
        }
    }
}

#[tonic::async_trait]
impl Wires for WiresService {
    async fn publish(
        &self,
        request: Request<Streaming<pb::WireChunk>>,
    ) -> Reply<pb::PublishSummary> {
        let caller = caller(&request)?;
        let mut chunks = request.into_inner();
        let Some(first) = chunks.message().await? else {
            return reply(pb::PublishSummary::default());
        };
        let path = self.node.path(&first.path).await?;
        let kind = ResourceKind::Wire;
        let wire = self
            .node
            .access
            .require_kind(&caller, &path, Right::Write, kind)
            .await?;
        let subject = subject(ResourceKind::Wire, &wire.id);
        let mut summary = pb::PublishSummary::default();
        let mut next = Some(first);
        let lifecycle = self.node.lifecycle();
        while let Some(chunk) = next {
            if !chunk.data.is_empty() {
                summary.chunks += 1;
                summary.bytes += chunk.data.len() as u64;
                self.node.metrics.wire_bytes.inc_by(chunk.data.len() as u64);
                let message = BusMessage {
                    payload: chunk.data,
                    last: false,
                };
                if self.node.bus.publish(&subject, message, None).await == 0 {
                    summary.unheard_chunks += 1;
                }
            }
            next = tokio::select! {
                chunk = chunks.message() => chunk?,
                error = stopped(lifecycle.clone()) => return Err(error.into()),
            };
        }
        reply(summary)
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::WireChunk, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Reply<Self::SubscribeStream> {
        let caller = caller(&request)?;
        let path = self.node.path(&request.get_ref().path).await?;
        let access = &self.node.access;
        let wire = access
            .require_kind(&caller, &path, Right::Read, ResourceKind::Wire)
            .await?;
        let subscription = self
            .node
            .bus
            .subscribe(
                &subject(ResourceKind::Wire, &wire.id),
                SubscribeOptions {
                    capacity: self.node.config.wire_queue,
                    overflow: Overflow::Backpressure {
                        stall: self.node.config.wire_stall,
                    },
                    tag: None,
                },
            )
            .await;
        let subscriber = Subscriber {
            node: self.node.clone(),
            path,
            subscription,
            done: false,
        };
        let stream = futures::stream::unfold(subscriber, |mut s| async move {
            s.next().await.map(|item| (item, s))
        });
        reply(Box::pin(stream))
    }
}
