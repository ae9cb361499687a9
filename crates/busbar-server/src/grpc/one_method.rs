//! A gRPC service with one method answered by hand and the others by its
//! generated server, for methods whose responses skip tonic's encoder.

use futures::future::BoxFuture;
use std::sync::Arc;
use tonic::body::Body;

/// Answers the one method's requests, whole.
pub type Handler =
    Arc<dyn Fn(http::Request<Body>) -> BoxFuture<'static, http::Response<Body>> + Send + Sync>;

/// `generated`, except that requests for `path` ("/package.Service/Method")
/// go to `handler`.
#[derive(Clone)]
pub struct OneMethod<G> {
    generated: G,
    path: &'static str,
    handler: Handler,
}

impl<G> OneMethod<G> {
    pub fn new(generated: G, path: &'static str, handler: Handler) -> OneMethod<G> {
        OneMethod {
            generated,
            path,
            handler,
        }
    }
}

impl<G: tonic::server::NamedService> tonic::server::NamedService for OneMethod<G> {
    const NAME: &'static str = G::NAME;
}

impl<G> tower::Service<http::Request<Body>> for OneMethod<G>
where
    G: tower::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
        >,
    G::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.generated.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != self.path {
            return Box::pin(self.generated.call(request));
        }
        let answer = (self.handler)(request);
        Box::pin(async move { Ok(answer.await) })
    }
}
