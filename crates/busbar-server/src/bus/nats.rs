//! The cluster's bus: NATS core between nodes, the local bus within one.
//!
//! A message is delivered to this node's subscribers directly (as on one
//! node) and published once to NATS for the others; the connection is made
//! with `no_echo`, so a node never hears its own messages back and each
//! subscriber gets each message once. A node subscribes to a subject on
//! NATS only while one of its own subscribers wants it, and passes what
//! arrives to the local bus, whose queues and overflow rules apply as on
//! one node. NATS keeps one publisher connection's messages in order, so
//! events from one emitter arrive in the order it sent them on every node.
//!
//! What NATS core does not give, and this bus therefore does not either:
//! backpressure across nodes (a wire publisher is slowed only by the
//! subscribers on its own node; a subscriber on another node whose queue
//! stays full is cut as a slow consumer, as a room member would be) and
//! delivery while NATS is down (messages published then reach only the
//! publisher's own node; the node reconnects by itself).

use super::*;
use async_nats::HeaderMap;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Every subject a node publishes is under this prefix, so a NATS server
/// shared with other programs keeps Busbar's traffic apart.
const PREFIX: &str = "busbar.";
/// Headers: the member tag a peers-only emit excludes, and the last message
/// of a subject.
const EXCLUDE_HEADER: &str = "Busbar-Exclude";
const LAST_HEADER: &str = "Busbar-Last";
/// Messages NATS may hold for one subject of this node before it reports
/// the node's subscription as slow (and drops what does not fit).
const REMOTE_QUEUE: usize = 8192;
/// How long a call waits on NATS (to subscribe, or to hand it a message)
/// before it goes on without it: while NATS is away, a room or wire works
/// within the node rather than hang.
const NATS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub struct NatsBus {
    local: LocalBus,
    client: async_nats::Client,
    /// Per subject: how many local subscribers want it, and the task
    /// passing NATS's messages for it to the local bus.
    remote: Arc<Mutex<HashMap<String, Interest>>>,
}

struct Interest {
    subscribers: usize,
    forwarder: tokio::task::JoinHandle<()>,
}

/// Drops one local subscriber's interest; the last one ends the forwarder
/// (and so the NATS subscription).
struct InterestGuard {
    remote: Arc<Mutex<HashMap<String, Interest>>>,
    subject: String,
    _local: Box<dyn Send + Sync>,
}

impl Drop for InterestGuard {
    fn drop(&mut self) {
        let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(interest) = remote.get_mut(&self.subject) {
            interest.subscribers -= 1;
            if interest.subscribers == 0 {
                interest.forwarder.abort();
                remote.remove(&self.subject);
            }
        }
    }
}

/// A node subject as a NATS subject: node subjects are made of resource
/// kinds and ids, but anything outside NATS's safe characters is escaped
/// rather than trusted (a space or `*` would change what a subject means).
fn nats_subject(subject: &str) -> String {
    let mut out = String::with_capacity(PREFIX.len() + subject.len());
    out.push_str(PREFIX);
    for byte in subject.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => out.push(byte as char),
            other => out.push_str(&format!("~{other:02x}")),
        }
    }
    out
}

impl NatsBus {
    /// A bus over `client` (connected with `no_echo`), delivering locally
    /// through `local`.
    pub fn new(client: async_nats::Client, local: LocalBus) -> NatsBus {
        NatsBus {
            local,
            client,
            remote: Default::default(),
        }
    }

    /// Starts passing `subject`'s messages from other nodes to the local bus.
    async fn forward(&self, subject: &str) -> Option<tokio::task::JoinHandle<()>> {
        let subscribing = self.client.subscribe(nats_subject(subject));
        let mut incoming = match tokio::time::timeout(NATS_WAIT, subscribing).await {
            Ok(Ok(incoming)) => incoming,
            failed => {
                let why = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "no answer".to_string(),
                };
                tracing::warn!(%subject, "cannot subscribe on the bus (NATS): {why}; this subject hears only this node until it is subscribed again");
                return None;
            }
        };
        // The server has the subscription once it answers a ping: from then
        // on nothing another node publishes is missed (what `subscribe`
        // promises). While NATS is away the client holds the subscription
        // and sends it again when NATS is back; the subscriber does not wait.
        match tokio::time::timeout(NATS_WAIT, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%subject, "the bus (NATS) did not confirm a subscription: {error}")
            }
            Err(_) => {
                tracing::warn!(%subject, "the bus (NATS) is not answering; this subject hears other nodes once it is back")
            }
        }
        let local = self.local.clone();
        let subject = subject.to_string();
        Some(tokio::spawn(async move {
            while let Some(message) = incoming.next().await {
                let headers = message.headers.as_ref();
                let exclude = headers
                    .and_then(|h| h.get(EXCLUDE_HEADER))
                    .map(|v| v.to_string());
                let last = headers.and_then(|h| h.get(LAST_HEADER)).is_some();
                let message = BusMessage {
                    payload: message.payload,
                    last,
                };
                local.publish(&subject, message, exclude.as_deref()).await;
            }
        }))
    }
}

#[async_trait::async_trait]
impl Bus for NatsBus {
    fn backend(&self) -> &'static str {
        "nats"
    }

    fn healthy(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn max_payload(&self) -> usize {
        // NATS's default when the server has not said (1 MiB).
        match self.client.server_info().max_payload {
            0 => 1 << 20,
            size => size,
        }
    }

    async fn publish(&self, subject: &str, message: BusMessage, exclude: Option<&str>) -> usize {
        let mut headers = HeaderMap::new();
        if let Some(tag) = exclude {
            headers.insert(EXCLUDE_HEADER, tag);
        }
        if message.last {
            headers.insert(LAST_HEADER, "1");
        }
        let payload = message.payload.clone();
        let delivered = self.local.publish(subject, message, exclude).await;
        let publishing = self
            .client
            .publish_with_headers(nats_subject(subject), headers, payload);
        match tokio::time::timeout(NATS_WAIT, publishing).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%subject, "a message reached only this node: the bus (NATS) refused it: {error}")
            }
            Err(_) => {
                tracing::warn!(%subject, "a message reached only this node: the bus (NATS) is not answering")
            }
        }
        delivered
    }

    async fn subscribe(&self, subject: &str, options: SubscribeOptions) -> Subscription {
        let local = self.local.subscribe(subject, options).await;
        let known = {
            let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
            match remote.get_mut(subject) {
                Some(interest) => {
                    interest.subscribers += 1;
                    true
                }
                None => false,
            }
        };
        if !known {
            let forwarder = self.forward(subject).await;
            let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
            match (remote.get_mut(subject), forwarder) {
                // Another subscriber started one meanwhile: keep that one.
                (Some(interest), forwarder) => {
                    interest.subscribers += 1;
                    if let Some(extra) = forwarder {
                        extra.abort();
                    }
                }
                (None, Some(forwarder)) => {
                    remote.insert(
                        subject.to_string(),
                        Interest {
                            subscribers: 1,
                            forwarder,
                        },
                    );
                }
                (None, None) => return local,
            }
        }
        let Subscription {
            receiver,
            ended,
            _guard,
        } = local;
        Subscription {
            receiver,
            ended,
            _guard: Box::new(InterestGuard {
                remote: self.remote.clone(),
                subject: subject.to_string(),
                _local: _guard,
            }),
        }
    }

    #[cfg(test)]
    fn subscriber_count(&self, subject: &str) -> usize {
        self.local.subscriber_count(subject)
    }
}

/// The NATS client options for `--bus`: no echo (see the module doc),
/// reconnecting for ever, and TLS to the CA in `ca` when given.
pub async fn connect(
    url: &str,
    ca: Option<&std::path::Path>,
) -> crate::error::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .no_echo()
        .name("busbar")
        .subscription_capacity(REMOTE_QUEUE)
        .connection_timeout(std::time::Duration::from_secs(10));
    if let Some(ca) = ca {
        options = options
            .add_root_certificates(ca.to_path_buf())
            .require_tls(true);
    }
    let client = options.connect(url).await.map_err(|e| {
        crate::error::Error::unavailable(format!(
            "cannot reach the bus at {}: {e}",
            crate::cluster::redacted(url)
        ))
    })?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::nats_subject;

    #[test]
    fn node_subjects_cannot_become_nats_wildcards() {
        assert_eq!(nats_subject("room.1f2e-ab"), "busbar.room.1f2e-ab");
        assert_eq!(nats_subject("a b*>"), "busbar.a~20b~2a~3e");
    }
}
