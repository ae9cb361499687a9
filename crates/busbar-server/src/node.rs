//! The shared state of one running node, handed to every service.

use crate::access::{AccessControl, Caller};
use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::config::ServerConfig;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::{Store, now_ms};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{Notify, watch};

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

/// A room member on this node, so `Leave` can end its stream.
pub struct LocalMember {
    pub identity_id: std::sync::Arc<str>,
    pub leave: Arc<Notify>,
}

pub struct Node {
    pub config: ServerConfig,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub access: Arc<AccessControl>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    pub node_id: String,
    pub started: Instant,
    pub started_ms: i64,
    pub tls: bool,
    pub lifecycle: watch::Sender<Lifecycle>,
    pub members: Mutex<HashMap<String, LocalMember>>,
    /// Open SQL databases (DATABASE resources).
    pub sql: Arc<crate::store::SqlDatabases>,
    /// Time series files (TIMESERIES resources).
    pub timeseries: Arc<crate::store::TimeSeriesStore>,
    /// Open data sessions.
    pub sessions: Arc<crate::sessions::DataSessions>,
}

impl Node {
    pub fn lifecycle(&self) -> watch::Receiver<Lifecycle> {
        self.lifecycle.subscribe()
    }

    pub fn members(&self) -> std::sync::MutexGuard<'_, HashMap<String, LocalMember>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
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
