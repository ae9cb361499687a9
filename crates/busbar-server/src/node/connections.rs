//! The node's open connections, by socket pair, so a call can leave
//! something in the care of the connection it came on: a transport message
//! leased by a popper goes back to its queue the moment that popper's
//! connection closes, not when the lease ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// A connection's (local, remote) addresses: unique while it is open.
pub(crate) type SocketPair = (SocketAddr, SocketAddr);

/// A leased transport message a connection holds.
#[derive(Debug, Clone)]
pub(crate) struct HeldLease {
    /// The session's resource id.
    pub session: String,
    pub receipt: String,
}

/// Leases handed back at once when their connection closes, in batches.
const RETURN_QUEUE: usize = 1024;

#[derive(Default)]
pub(crate) struct Connections {
    open: Mutex<HashMap<SocketPair, Vec<HeldLease>>>,
    /// Where a closed connection's leases go to be returned.
    returns: OnceLock<mpsc::Sender<Vec<HeldLease>>>,
}

impl Connections {
    /// The queue of leases to return; the node starts the task that reads it.
    pub fn returns(&self) -> mpsc::Receiver<Vec<HeldLease>> {
        let (sender, receiver) = mpsc::channel(RETURN_QUEUE);
        let _ = self.returns.set(sender);
        receiver
    }

    /// Records an open connection until the guard drops.
    pub fn opened(self: &Arc<Self>, pair: SocketPair) -> ConnectionGuard {
        self.lock().insert(pair, Vec::new());
        ConnectionGuard {
            pair,
            connections: self.clone(),
        }
    }

    /// Puts a lease in the care of a connection; `false` when that
    /// connection is not open (it closed as the call ran).
    pub fn hold(&self, pair: SocketPair, lease: HeldLease) -> bool {
        match self.lock().get_mut(&pair) {
            Some(leases) => {
                leases.push(lease);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketPair, Vec<HeldLease>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn closed(&self, pair: SocketPair) {
        let leases = self.lock().remove(&pair).unwrap_or_default();
        if leases.is_empty() {
            return;
        }
        let sent = self
            .returns
            .get()
            .is_some_and(|returns| returns.try_send(leases).is_ok());
        if !sent {
            // They return when their leases end, as documented.
            tracing::warn!(
                "too many closed connections' leases to return at once; they return when their leases end"
            );
        }
    }
}

/// Marks a connection closed when dropped (with the connection's stream).
pub(crate) struct ConnectionGuard {
    pair: SocketPair,
    connections: Arc<Connections>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections.closed(self.pair);
    }
}

/// The socket pair of the connection a request came on.
pub(crate) fn socket_pair<T>(request: &tonic::Request<T>) -> Option<SocketPair> {
    let extensions = request.extensions();
    let tcp = extensions.get::<TcpConnectInfo>().cloned().or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(|tls| tls.get_ref().clone())
    })?;
    Some((tcp.local_addr()?, tcp.remote_addr()?))
}
