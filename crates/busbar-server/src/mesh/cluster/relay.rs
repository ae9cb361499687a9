//! A call another node sent to a provider on this node, run against the
//! provider as a local call runs (the same start, credit and cancel), with
//! the caller's node in the caller's place.
//!
//! Bounds: responses go to the caller's node only within its credit
//! ([`WINDOW`] messages, granted as its caller reads), and the provider is
//! granted more only as they go, so a slow caller slows the provider. The
//! caller's node sends requests within this node's credit, which grows as
//! requests are passed to the provider within the provider's credit: at
//! most a window of requests waits here.

use super::frames::{self, Body};
use super::{MeshCluster, SILENT_AFTER};
use crate::mesh::registry::{CallSlot, Provider, ProviderEvent};
use crate::mesh::route::WINDOW;
use crate::node::Node;
use busbar_proto::v1::{self as pb, to_provider::Message as ToMessage};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// What the caller's node sends a running call, queued: a window of
/// requests, their credit and a cancel, with room to spare. Full means the
/// caller's node broke its credit; the call is then cancelled.
pub(super) const INPUT: usize = 4 * WINDOW as usize + 8;

pub(super) enum Input {
    Request {
        message: Option<Bytes>,
        half_closed: bool,
    },
    Credit(u32),
    Cancel(String),
    /// Frames of the call were lost or malformed.
    Broken(String),
}

/// How a relayed call ended.
enum Outcome {
    /// The provider ended it, or was lost: nothing to tell it.
    Over,
    /// Stop it at the provider, for this reason.
    Cancel(String),
}

/// Sends the frames of one call back to its caller's node, in order.
struct Replies {
    cluster: Arc<MeshCluster>,
    subject: String,
    call: u64,
    seq: u64,
}

impl Replies {
    async fn send(&mut self, body: Body) {
        self.cluster
            .publish(&self.subject, self.call, &mut self.seq, true, body)
            .await;
    }

    async fn response(&mut self, response: pb::ProviderResponse) {
        let body = Body::FromProvider(pb::FromProvider {
            message: Some(pb::from_provider::Message::Response(pb::ProviderResponse {
                call: self.call,
                ..response
            })),
        });
        self.send(body).await;
    }

    async fn end(&mut self, code: tonic::Code, message: String) {
        let error_code = busbar_proto::error_code_for(code).as_str_name().to_string();
        self.response(pb::ProviderResponse {
            call: self.call,
            message: None,
            end: Some(pb::CallStatus {
                code: code as i32,
                message,
                error_code,
            }),
        })
        .await;
    }

    async fn gone(&mut self, started: bool, reason: String) {
        self.send(Body::Gone(frames::Gone { started, reason }))
            .await;
    }

    async fn credit(&mut self, messages: u32) {
        let body = Body::FromProvider(pb::FromProvider {
            message: Some(pb::from_provider::Message::Credit(pb::Credit {
                call: self.call,
                messages,
            })),
        });
        self.send(body).await;
    }
}

/// Runs the call `key` (its caller's node and its number there) at the
/// provider `start` names, passing `inputs` to it and its answers back.
pub(super) async fn run(
    node: Arc<Node>,
    cluster: Arc<MeshCluster>,
    key: (String, u64),
    start: frames::Start,
    inputs: mpsc::Receiver<Input>,
) {
    let mut replies = Replies {
        cluster: cluster.clone(),
        subject: super::node_subject(&key.0),
        call: key.1,
        seq: 0,
    };
    let provider = node
        .mesh
        .local(&start.provider)
        .filter(|p| !p.is_draining());
    match (provider, start.start) {
        (Some(provider), Some(call_start)) => {
            relay(&node, provider, call_start, inputs, &mut replies).await
        }
        (None, _) => {
            let reason = format!(
                "provider {} is no longer on node {}",
                start.provider, cluster.node_id
            );
            replies.gone(false, reason).await;
        }
        (Some(_), None) => {
            replies
                .end(
                    tonic::Code::Internal,
                    "a call started without its start".into(),
                )
                .await;
        }
    }
    cluster.relay_done(&key);
}

async fn relay(
    node: &Node,
    provider: Arc<Provider>,
    mut start: pb::CallStart,
    mut inputs: mpsc::Receiver<Input>,
    replies: &mut Replies,
) {
    let call = node.mesh.call_id();
    let (sink, mut responses) = mpsc::channel(WINDOW as usize + 1);
    let requests = Arc::new(Semaphore::new(WINDOW as usize));
    let slot = CallSlot {
        responses: sink,
        request_credit: requests.clone(),
    };
    let gone = || format!("provider {} is no longer on this node", provider.id);
    if !provider.add_call(call, slot) {
        replies.gone(false, gone()).await;
        return;
    }
    // The caller's node keeps the deadline; this one keeps it too (a little
    // later), should that node be lost along with its cancel.
    let deadline = (start.timeout_ms > 0)
        .then(|| Instant::now() + Duration::from_millis(start.timeout_ms) + SILENT_AFTER);
    start.call = call;
    start.window = WINDOW;
    let sent = provider
        .outbound
        .send(Ok(pb::ToProvider {
            message: Some(ToMessage::Start(start)),
        }))
        .await;
    if sent.is_err() {
        provider.in_flight.fetch_sub(1, Ordering::Relaxed);
        provider.end_call(call);
        replies.gone(false, gone()).await;
        return;
    }

    // Responses the caller's node will take now; responses passed on, and
    // requests passed to the provider, since credit was last granted.
    let mut credit = WINDOW;
    let (mut passed, mut moved) = (0u32, 0u32);
    let mut queued: VecDeque<(Option<Bytes>, bool)> = VecDeque::new();
    let outcome = loop {
        tokio::select! {
            event = responses.recv(), if credit > 0 => match event {
                Some(ProviderEvent::Response(response)) => {
                    let ends = response.end.is_some();
                    let carries = response.message.is_some();
                    replies.response(response).await;
                    if ends {
                        break Outcome::Over;
                    }
                    if carries {
                        credit -= 1;
                        passed += 1;
                        if passed >= WINDOW / 2 {
                            let grant = pb::ToProvider {
                                message: Some(ToMessage::Credit(pb::Credit { call, messages: passed })),
                            };
                            passed = 0;
                            let _ = provider.outbound.send(Ok(grant)).await;
                        }
                    }
                }
                Some(ProviderEvent::Broken(why)) => {
                    let message = format!(
                        "provider {} broke the mesh protocol: {why}",
                        provider.id
                    );
                    replies.end(tonic::Code::Internal, message).await;
                    break Outcome::Cancel("protocol violation".into());
                }
                Some(ProviderEvent::Lost(_) | ProviderEvent::NotStarted(_)) | None => {
                    let reason = format!("its stream to node {} ended", replies.cluster.node_id);
                    replies.gone(true, reason).await;
                    break Outcome::Over;
                }
            },
            input = inputs.recv() => match input {
                Some(Input::Request { message, half_closed }) => {
                    if queued.len() >= WINDOW as usize {
                        replies.end(
                            tonic::Code::Internal,
                            "the caller's node sent requests past the call's credit".into(),
                        ).await;
                        break Outcome::Cancel("protocol violation".into());
                    }
                    queued.push_back((message, half_closed));
                }
                Some(Input::Credit(messages)) => {
                    credit = (credit + messages.min(WINDOW)).min(2 * WINDOW);
                }
                Some(Input::Cancel(reason)) => break Outcome::Cancel(reason),
                Some(Input::Broken(reason)) => {
                    replies.gone(true, reason.clone()).await;
                    break Outcome::Cancel(reason);
                }
                None => break Outcome::Cancel(
                    "the caller's node stopped waiting for the call".into(),
                ),
            },
            permit = requests.acquire(), if !queued.is_empty() => {
                let Ok(permit) = permit else { break Outcome::Over };
                permit.forget();
                let (message, half_closed) = queued.pop_front().expect("not empty");
                let request = pb::ToProvider {
                    message: Some(ToMessage::Request(pb::CallRequest { call, message, half_closed })),
                };
                if provider.outbound.send(Ok(request)).await.is_err() {
                    // Gone: the responses' end says so.
                    continue;
                }
                moved += 1;
                if moved >= WINDOW / 2 {
                    replies.credit(moved).await;
                    moved = 0;
                }
            },
            _ = sleep_until(deadline) => {
                break Outcome::Cancel("the caller's deadline passed".into());
            }
        }
    };
    provider.in_flight.fetch_sub(1, Ordering::Relaxed);
    provider.served.fetch_add(1, Ordering::Relaxed);
    if provider.end_call(call)
        && let Outcome::Cancel(reason) = outcome
    {
        let cancel = pb::ToProvider {
            message: Some(ToMessage::Cancel(pb::CallCancel { call, reason })),
        };
        if let Err(mpsc::error::TrySendError::Full(cancel)) = provider.outbound.try_send(Ok(cancel))
        {
            let outbound = provider.outbound.clone();
            tokio::spawn(async move {
                let _ = outbound.send(cancel).await;
            });
        }
    }
}

/// Waits until `deadline`, or for ever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
