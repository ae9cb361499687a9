//! Mesh: clients provide services that other clients call through the node.
//!
//! - `registry`: the live services, their providers and how a call picks one;
//! - `files`: the descriptor files of the node and of live services (what
//!   an offer must be, what reflection serves);
//! - `provide`: `busbar.v1.Mesh` (a provider's stream, the listing);
//! - `route`: calls to provided methods, forwarded as bytes with flow
//!   control per call;
//! - `reflection`: gRPC reflection over the node's own and the live files;
//! - `cluster`: on a cluster node, the providers of the other nodes and the
//!   calls forwarded to and from them over the bus.

pub(crate) mod cluster;
pub(crate) mod files;
pub(crate) mod provide;
pub(crate) mod reflection;
pub(crate) mod registry;
pub(crate) mod route;

pub use provide::MeshService;
pub(crate) use registry::Registry;

use crate::node::Node;
use std::sync::Arc;
use tonic::body::Body;

/// Sends calls to services that are not the node's own to the mesh, the
/// rest to the node's routes.
#[derive(Clone)]
pub(crate) struct MeshLayer {
    pub node: Arc<Node>,
}

impl<S> tower::Layer<S> for MeshLayer {
    type Service = MeshRoutes<S>;
    fn layer(&self, inner: S) -> MeshRoutes<S> {
        MeshRoutes {
            inner,
            node: self.node.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct MeshRoutes<S> {
    inner: S,
    node: Arc<Node>,
}

impl<S, E> tower::Service<http::Request<Body>> for MeshRoutes<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = E>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    E: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = E;
    type Future = futures::future::BoxFuture<'static, Result<http::Response<Body>, E>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if route::is_own_service(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let node = self.node.clone();
        Box::pin(async move { Ok(route::serve_call(node, request).await) })
    }
}
