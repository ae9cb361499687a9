//! The blocking client: the async [`crate::Client`] driven by a runtime this
//! wrapper owns (one worker thread, which also keeps sessions alive). Same
//! method names and arguments; streams become iterators.

use crate::{
    BoxStream, ConnectOptions, Grant, Identity, NodeStatus, PublishSummary, Resource, ResourceKind,
    Result, Right, RoomEvent, TokenInfo,
};
use busbar_proto::v1 as pb;
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// A blocking connection to a Busbar node. Clone it freely; safe to share
/// between threads.
#[derive(Clone)]
pub struct Client {
    inner: crate::Client,
    runtime: Arc<tokio::runtime::Runtime>,
}

fn runtime() -> Result<Arc<tokio::runtime::Runtime>> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("busbar-client")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| crate::Error::unavailable(format!("cannot start the client runtime: {e}")))
}

/// Generates blocking twins of async `Client` methods.
macro_rules! blocking {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        impl Client {
            $(
                $(#[$doc])*
                pub fn $name(&self $(, $arg: $ty)*) -> Result<$ret> {
                    self.runtime.block_on(self.inner.$name($($arg),*))
                }
            )*
        }
    };
}

blocking! {
    fn status(&self) -> NodeStatus;
    fn whoami(&self) -> Identity;
    fn login(&self) -> ();
    fn refresh(&self) -> ();
    fn create_user(&self, name: &str, password: &str, admin: bool) -> Identity;
    fn set_password(&self, name: &str, password: &str) -> ();
    fn register_key(&self, name: &str, public_key_base64: &str, admin: bool) -> Identity;
    fn identities(&self) -> Vec<Identity>;
    fn revoke_identity(&self, name: &str) -> ();
    fn issue_certificate(&self, request: pb::IssueCertificateRequest) -> pb::IssueCertificateResponse;
    fn new_certificate(&self, name: &str, days: u32, create: Option<bool>) -> crate::NewCertificate;
    fn certificates(&self, identity: &str) -> Vec<pb::CertificateInfo>;
    fn revoke_certificate(&self, fingerprint: &str) -> ();
    fn create_token(&self, name: &str, ttl: Option<Duration>) -> (String, TokenInfo);
    fn tokens(&self) -> Vec<TokenInfo>;
    fn revoke_token(&self, name: &str) -> ();
    fn add_group_member(&self, group: &str, identity: &str) -> ();
    fn remove_group_member(&self, group: &str, identity: &str) -> ();
    fn get(&self, path: &str) -> Resource;
    fn ls(&self, path: &str, recursive: bool) -> Vec<Resource>;
    fn create(&self, path: &str, kind: ResourceKind, parents: bool) -> Resource;
    fn mkdir(&self, path: &str, parents: bool) -> Resource;
    fn rm(&self, path: &str, recursive: bool) -> u64;
    fn mv(&self, from: &str, to: &str) -> Resource;
    fn grant(&self, path: &str, principal: &str, right: Right) -> Vec<Grant>;
    fn revoke(&self, path: &str, principal: &str) -> Vec<Grant>;
    fn grants(&self, path: &str, effective: bool) -> Vec<Grant>;
    fn emit(&self, path: &str, event: &str, args: Vec<serde_json::Value>) -> u32;
    fn call(&self, method: &str, request: serde_json::Value) -> serde_json::Value;
    fn create_procedure(&self, database: &str, name: &str, params: &[&str], body: &str, replace: bool) -> crate::Procedure;
    fn drop_procedure(&self, database: &str, name: &str) -> ();
    fn procedures(&self, database: &str) -> Vec<crate::Procedure>;
    fn run_procedure(&self, database: &str, name: &str, args: crate::ProcedureArgs) -> crate::SqlResult;
    fn create_series(&self, path: &str, spec: &crate::SeriesSpec, parents: bool) -> Resource;
    fn ensure_series(&self, path: &str, spec: &crate::SeriesSpec, parents: bool) -> Resource;
    fn describe_series(&self, path: &str) -> crate::SeriesInfo;
    fn read_series(&self, path: &str, interval: crate::Interval) -> crate::SeriesData;
    fn read_many_series(&self, paths: &[&str], interval: crate::Interval) -> Vec<crate::SeriesData>;
    fn write_series(&self, path: &str, interval: crate::Interval, batches: Vec<arrow_array::RecordBatch>) -> crate::WriteSeriesResponse;
}

impl Client {
    pub fn connect(options: ConnectOptions) -> Result<Client> {
        let runtime = runtime()?;
        let inner = runtime.block_on(crate::Client::connect(options))?;
        Ok(Client { inner, runtime })
    }

    pub fn from_config_file(path: impl AsRef<std::path::Path>) -> Result<Client> {
        let runtime = runtime()?;
        let inner = runtime.block_on(crate::Client::from_config_file(path))?;
        Ok(Client { inner, runtime })
    }

    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            inner: self.inner.with_timeout(timeout),
            runtime: self.runtime.clone(),
        }
    }

    /// The async client underneath, for use inside the runtime.
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    pub fn node_events(&self) -> Result<Iter<crate::NodeEvent>> {
        let stream = self.runtime.block_on(self.inner.node_events())?;
        Ok(Iter {
            stream,
            runtime: self.runtime.clone(),
        })
    }

    pub fn join(&self, path: &str) -> Result<RoomMembership> {
        let membership = self.runtime.block_on(self.inner.join(path))?;
        Ok(RoomMembership {
            membership,
            runtime: self.runtime.clone(),
        })
    }

    /// Publishes chunks from an iterator; blocks until all are sent.
    pub fn publish<I>(&self, path: &str, chunks: I) -> Result<PublishSummary>
    where
        I: IntoIterator<Item = Bytes>,
        I::IntoIter: Send + 'static,
    {
        // The iterator may block (e.g. reading stdin): it runs on its own thread.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let chunks = chunks.into_iter();
        let reader = std::thread::spawn(move || {
            for chunk in chunks {
                if tx.blocking_send(chunk).is_err() {
                    break;
                }
            }
        });
        let result = self.runtime.block_on(
            self.inner
                .publish(path, tokio_stream::wrappers::ReceiverStream::new(rx)),
        );
        let _ = reader.join();
        result
    }

    pub fn subscribe(&self, path: &str) -> Result<Iter<Bytes>> {
        let stream = self.runtime.block_on(self.inner.subscribe(path))?;
        Ok(Iter {
            stream,
            runtime: self.runtime.clone(),
        })
    }

    /// An emitter for the room at `path` (see [`crate::RoomEmitter`]).
    pub fn emitter(&self, path: &str) -> RoomEmitter {
        let _in_runtime = self.runtime.enter();
        RoomEmitter {
            emitter: self.inner.emitter(path),
            runtime: self.runtime.clone(),
        }
    }

    pub fn stream(&self, method: &str, request: Option<serde_json::Value>) -> Result<DynamicCall> {
        let call = self.runtime.block_on(self.inner.stream(method, request))?;
        Ok(DynamicCall {
            call,
            runtime: self.runtime.clone(),
        })
    }
}

/// A blocking iterator over a server stream.
pub struct Iter<T> {
    stream: BoxStream<T>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl<T> Iterator for Iter<T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        self.runtime.block_on(self.stream.next())
    }
}

/// A joined room; iterate it for events.
pub struct RoomMembership {
    membership: crate::RoomMembership,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl RoomMembership {
    pub fn member_id(&self) -> &str {
        self.membership.member_id()
    }
    pub fn emit(&self, event: &str, args: Vec<serde_json::Value>) -> Result<u32> {
        self.runtime.block_on(self.membership.emit(event, args))
    }
    pub fn emit_peers(&self, event: &str, args: Vec<serde_json::Value>) -> Result<u32> {
        self.runtime
            .block_on(self.membership.emit_peers(event, args))
    }
    pub fn leave(&self) -> Result<()> {
        self.runtime.block_on(self.membership.leave())
    }
}

impl Iterator for RoomMembership {
    type Item = Result<RoomEvent>;
    fn next(&mut self) -> Option<Result<RoomEvent>> {
        self.runtime.block_on(self.membership.next())
    }
}

/// Emits many events over one stream, in order; see [`crate::RoomEmitter`].
pub struct RoomEmitter {
    emitter: crate::RoomEmitter,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl RoomEmitter {
    pub fn emit(&self, event: &str, args: Vec<serde_json::Value>) -> Result<()> {
        self.runtime.block_on(self.emitter.emit(event, args))
    }
    pub fn emit_peers(&self, event: &str, args: Vec<serde_json::Value>) -> Result<()> {
        self.runtime.block_on(self.emitter.emit_peers(event, args))
    }
    pub fn finish(self) -> Result<crate::EmitStreamSummary> {
        self.runtime.block_on(self.emitter.finish())
    }
}

/// A blocking streaming call by method name.
pub struct DynamicCall {
    call: crate::DynamicCall,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl DynamicCall {
    pub fn send(&self, message: serde_json::Value) -> Result<()> {
        self.runtime.block_on(self.call.send(message))
    }
    pub fn close_send(&mut self) {
        self.call.close_send();
    }
    pub fn cancel(self) {
        self.call.cancel();
    }
}

impl Iterator for DynamicCall {
    type Item = Result<serde_json::Value>;
    fn next(&mut self) -> Option<Result<serde_json::Value>> {
        self.runtime.block_on(self.call.next())
    }
}
