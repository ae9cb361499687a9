//! The shared state of one running node, handed to every service.

pub(crate) mod connections;
pub mod service;

use crate::auth::Authenticator;
use crate::auth::access::{AccessControl, Caller};
use crate::bus::Bus;
use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::resources::paths;
use crate::sql::{Budget, StopOnDrop};
use crate::store::{Store, now_ms};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Serving,
    /// Announced; still serving until the grace period ends.
    ShuttingDown {
        grace_ms: i64,
        at_ms: i64,
    },
    /// Grace period over: open streams end with UNAVAILABLE.
    Stopped,
}

/// What every service of a node holds: the node's configuration and a
/// handle to each part (the seams to storage and the bus, access control,
/// the engines of each job, the registries), shared, and visible to the
/// crate only: nothing outside the server reaches into a running node.
pub struct Node {
    pub(crate) config: ServerConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) access: Arc<AccessControl>,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) node_id: String,
    pub(crate) started: Instant,
    pub(crate) started_ms: i64,
    /// The CA that issues client certificates, and the revoked ones; none
    /// exactly when the node serves plaintext.
    pub(crate) certificates: Option<Arc<crate::tls::ClientCertificates>>,
    pub(crate) lifecycle: watch::Sender<Lifecycle>,
    /// Room members joined through this node.
    pub(crate) members: crate::rooms::LocalMembers,
    /// Open SQL databases (DATABASE resources).
    pub(crate) sql: Arc<dyn crate::sql::SqlEngine>,
    /// Time series files (TIMESERIES resources).
    pub(crate) timeseries: Arc<dyn crate::timeseries::SeriesEngine>,
    /// Open data sessions.
    pub(crate) sessions: Arc<crate::sessions::DataSessions>,
    /// Live provided services and their providers.
    pub(crate) mesh: crate::mesh::Registry,
    /// On a cluster node: the other nodes' providers, and the calls
    /// forwarded between the nodes. None on an embedded node.
    pub(crate) mesh_cluster: Option<Arc<crate::mesh::cluster::MeshCluster>>,
    /// Open connections, by socket pair.
    pub(crate) connections: Arc<connections::Connections>,
    /// Transport sessions' queues, and who waits on them here.
    pub(crate) transport: Arc<dyn crate::transport::QueueEngine>,
    pub(crate) transport_waiters: crate::transport::Waiters,
}

/// How often a node reports itself to the store, and how long a report
/// keeps it listed.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
pub(crate) const LISTED_FOR_MS: i64 = 15_000;

/// Wake-ups of transport waiters, between a cluster's nodes: a push on one
/// node wakes the pops waiting on another.
const TRANSPORT_WAKE: &str = "_busbar.transport.wake";

impl Node {
    /// Wakes whoever waits on a transport queue, here and (in a cluster) on
    /// every node.
    pub(crate) async fn wake_queue(&self, session: &str, topic: &str) {
        self.transport_waiters.wake(session, topic);
        self.announce_wake(format!("q\0{session}\0{topic}")).await;
    }

    /// Wakes everyone waiting on a transport session; with `released`, tells
    /// them it is gone.
    pub(crate) async fn wake_transport_session(&self, session: &str, released: bool) {
        self.transport_waiters.wake_session(session, released);
        let kind = if released { "r" } else { "s" };
        self.announce_wake(format!("{kind}\0{session}")).await;
    }

    async fn announce_wake(&self, what: String) {
        if self.config.store.is_none() {
            return;
        }
        let message = crate::bus::BusMessage {
            payload: what.into(),
            last: false,
        };
        self.bus.publish(TRANSPORT_WAKE, message, None).await;
    }

    /// Applies other nodes' transport wake-ups here while the node runs (a
    /// cluster node's; a wake-up lost is made up by the pops' own rechecks).
    pub(crate) async fn hear_transport_wakes(self: Arc<Self>) {
        loop {
            let options = crate::bus::SubscribeOptions {
                capacity: 4096,
                overflow: crate::bus::Overflow::Disconnect,
                tag: None,
            };
            let mut wakes = self.bus.subscribe(TRANSPORT_WAKE, options).await;
            while let Ok(Some(message)) = wakes.next().await {
                let text = String::from_utf8_lossy(&message.payload);
                let mut parts = text.split('\0');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("q"), Some(session), Some(topic)) => {
                        self.transport_waiters.wake(session, topic)
                    }
                    (Some("s"), Some(session), None) => {
                        self.transport_waiters.wake_session(session, false)
                    }
                    (Some("r"), Some(session), None) => {
                        self.transport_waiters.wake_session(session, true)
                    }
                    _ => {}
                }
            }
            if *self.lifecycle().borrow() == Lifecycle::Stopped {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Reports this node to the store every few seconds until it stops
    /// (the nodes `busbar status` lists), then takes it off the list.
    pub(crate) async fn report_alive(self: Arc<Self>, address: String) {
        let mut lifecycle = self.lifecycle();
        let mut tick = tokio::time::interval(REPORT_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = lifecycle.wait_for(|state| *state == Lifecycle::Stopped) => break,
            }
            let report = crate::store::NodeRecord {
                id: self.node_id.clone(),
                address: address.clone(),
                connections: self.metrics.connections.get().max(0) as u64,
                started_ms: self.started_ms,
                seen_ms: crate::store::now_ms(),
            };
            if let Err(error) = self.store.report_node(report).await {
                tracing::warn!("cannot report this node to the store: {}", error.message);
            }
            if let Some(cluster) = &self.mesh_cluster {
                cluster.report_seen().await;
            }
        }
        if let Some(cluster) = &self.mesh_cluster {
            cluster.forget().await;
        }
        let _ = self.store.forget_node(&self.node_id).await;
    }

    /// What one call's SQL may spend: until the call's deadline
    /// ([`time_left`]) or the node's `max_statement_seconds`, whichever
    /// comes first, and at most `max_result_bytes` of result. Hold the
    /// [`StopOnDrop`] for as long as the call lives.
    pub fn sql_budget<T>(&self, request: &tonic::Request<T>) -> (Budget, StopOnDrop) {
        Budget::new(
            time_left(request),
            self.config.max_statement,
            self.config.max_result_bytes,
        )
    }

    /// A resource path as a request gives it: a path (normalised, see
    /// [`paths::normalize`]) or `id:<uuid>`, the resource with that id
    /// wherever it has moved (docs/security.md: an unknown id is NOT_FOUND;
    /// the rights checks that follow are the path's).
    pub async fn path(&self, given: &str) -> Result<String> {
        let Some(id) = given.strip_prefix("id:") else {
            return paths::normalize(given);
        };
        let id = id.trim();
        match self.store.resource_path(id).await? {
            Some(path) => Ok(path),
            None => Err(Error::not_found(format!(
                "no resource has id {id:?}; ids look like id:3f2c…, as `get` and `ls` show them"
            ))),
        }
    }

    pub fn lifecycle(&self) -> watch::Receiver<Lifecycle> {
        self.lifecycle.subscribe()
    }

    pub fn begin_shutdown(&self) {
        let grace_ms = self.config.grace_period.as_millis() as i64;
        self.lifecycle.send_replace(Lifecycle::ShuttingDown {
            grace_ms,
            at_ms: now_ms(),
        });
    }

    pub fn stop(&self) {
        self.lifecycle.send_replace(Lifecycle::Stopped);
    }
}

/// Resolves once the node has stopped serving streams.
pub async fn stopped(mut lifecycle: watch::Receiver<Lifecycle>) -> Error {
    let _ = lifecycle
        .wait_for(|state| *state == Lifecycle::Stopped)
        .await;
    Error::unavailable(
        "the node stopped after its shutdown grace period; reconnect to another node or retry",
    )
}

/// The authenticated caller the call layer attached to a request.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Error::unauthenticated("this call needs a session; log in first").into())
}

/// A call's caller and message, for handlers that need nothing else of it.
pub fn caller_and_message<T>(request: tonic::Request<T>) -> Result<(Caller, T), tonic::Status> {
    let caller = caller(&request)?;
    Ok((caller, request.into_inner()))
}

/// The time a call has left now: its `grpc-timeout` less the time since
/// its headers arrived (the body of a large request takes a while).
pub fn time_left<T>(request: &tonic::Request<T>) -> Option<std::time::Duration> {
    let timeout = call_timeout(request.metadata())?;
    let arrived = request.extensions().get::<crate::grpc::layer::Arrived>();
    Some(timeout.saturating_sub(arrived.map_or(Default::default(), |a| a.0.elapsed())))
}

/// The time a call has left, from its `grpc-timeout` header (1 to 8 digits
/// and a unit: H, M, S, m, u or n); `None` when it has none or a bad one
/// (tonic refuses a bad one before a service sees the call).
fn call_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::call_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_parse() {
        let with = |value: &str| {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            call_timeout(&metadata)
        };
        assert_eq!(with("3S"), Some(Duration::from_secs(3)));
        assert_eq!(with("250m"), Some(Duration::from_millis(250)));
        assert_eq!(with("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(with("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(with("123456789S"), None);
        assert_eq!(with("S"), None);
        assert_eq!(with("5x"), None);
        assert_eq!(call_timeout(&tonic::metadata::MetadataMap::new()), None);
    }
}
