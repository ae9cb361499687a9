//! `busbar.v1.Node`: status and the connection-wide stream of node events.

use crate::grpc::{Reply, reply};
use crate::node::{Lifecycle, Node};
use crate::store::now_ms;
use busbar_proto::v1::{self as pb, node_event::Kind, node_server};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Status};

pub struct NodeService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl node_server::Node for NodeService {
    async fn status(&self, _request: Request<pb::StatusRequest>) -> Reply<pb::NodeStatus> {
        let node = &self.node;
        let since = now_ms() - crate::node::LISTED_FOR_MS;
        let (nodes, store_healthy) = match node.store.nodes(since).await {
            Ok(nodes) => (nodes, true),
            Err(_) => (Vec::new(), false),
        };
        let (calls_total, call_errors_total) = node.metrics.calls.totals();
        reply(pb::NodeStatus {
            calls_total,
            call_errors_total,
            nodes: nodes
                .into_iter()
                .map(|n| pb::ClusterNode {
                    node_id: n.id,
                    address: n.address,
                    connections: n.connections,
                    started_ms: n.started_ms,
                    seen_ms: n.seen_ms,
                })
                .collect(),
            store_healthy,
            bus_healthy: node.bus.healthy(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: node.node_id.clone(),
            uptime_ms: node.started.elapsed().as_millis() as i64,
            started_ms: node.started_ms,
            store: node.store.backend().to_string(),
            bus: node.bus.backend().to_string(),
            tls: node.certificates.is_some(),
            connections: node.metrics.connections.get().max(0) as u64,
        })
    }

    type EventsStream = Pin<Box<dyn Stream<Item = Result<pb::NodeEvent, Status>> + Send>>;

    async fn events(&self, _request: Request<pb::NodeEventsRequest>) -> Reply<Self::EventsStream> {
        let node_id = self.node.node_id.clone();
        let event = move |kind: Kind, grace_ms: i64| pb::NodeEvent {
            kind: kind as i32,
            node_id: node_id.clone(),
            grace_ms,
            at_ms: now_ms(),
        };
        let lifecycle = self.node.lifecycle();
        // READY first, then one event per lifecycle change, ending when the node stops.
        let stream = futures::stream::unfold((lifecycle, true), move |(mut lifecycle, first)| {
            let event = event.clone();
            async move {
                if first {
                    return Some((Ok(event(Kind::Ready, 0)), (lifecycle, false)));
                }
                loop {
                    lifecycle.changed().await.ok()?;
                    let state = *lifecycle.borrow_and_update();
                    match state {
                        Lifecycle::ShuttingDown { grace_ms, .. } => {
                            return Some((
                                Ok(event(Kind::ShuttingDown, grace_ms)),
                                (lifecycle, false),
                            ));
                        }
                        Lifecycle::Stopped => return None,
                        Lifecycle::Serving => continue,
                    }
                }
            }
        });
        reply(Box::pin(stream))
    }
}
