//! Around every call: the trace id (taken from `x-trace-id` or generated, and
//! echoed back), a tracing span carrying it, authentication of busbar methods
//! and the per-method call metrics.

use crate::access::AccessControl;
use crate::auth::Authenticator;
use crate::error::Error;
use crate::metrics::{CallLabels, Metrics};
use busbar_proto::v1::ErrorCode;
use busbar_proto::{ERROR_CODE_METADATA_KEY, TRACE_ID_METADATA_KEY};
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tracing::Instrument;

/// Busbar methods callable without a session.
const PUBLIC_METHODS: &[&str] = &[
    "/busbar.v1.Auth/Challenge",
    "/busbar.v1.Auth/Login",
    "/arrow.flight.protocol.FlightService/Handshake",
];

/// Arrow Flight (and Flight SQL) calls, authenticated like busbar methods.
const FLIGHT_PREFIX: &str = "/arrow.flight.protocol.FlightService/";

#[derive(Clone)]
pub struct CallLayer {
    pub auth: Arc<Authenticator>,
    pub access: Arc<AccessControl>,
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for CallLayer {
    type Service = CallService<S>;
    fn layer(&self, inner: S) -> CallService<S> {
        CallService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallService<S> {
    inner: S,
    layer: CallLayer,
}

/// A trace id for a call that came without one. Not a secret: the thread's
/// RNG serves, with no system call per call.
fn new_trace_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The token of an `x-busbar-session` header (what Busbar's clients send),
/// or else of an `authorization: Bearer <token>` header (what any gRPC or
/// Flight client can send; the scheme name is case-insensitive, as HTTP says).
fn session_token(request: &Request<Body>) -> Option<&str> {
    let headers = request.headers();
    if let Some(value) = headers.get(busbar_proto::SESSION_METADATA_KEY) {
        return value.to_str().ok().map(str::trim);
    }
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl CallLayer {
    /// Attaches the caller to busbar requests that need one.
    async fn authenticate(&self, request: &mut Request<Body>) -> Result<(), Error> {
        let path = request.uri().path();
        let flight = path.starts_with(FLIGHT_PREFIX);
        if !(flight || path.starts_with("/busbar.v1.")) || PUBLIC_METHODS.contains(&path) {
            return Ok(());
        }
        let token = session_token(request).ok_or_else(|| {
            Error::unauthenticated(if flight {
                "this Flight call needs credentials: Handshake with user:password (HTTP Basic) and send the 'authorization: Bearer <session token>' it returns, or send 'authorization: Bearer <bbt_ API token>'"
            } else {
                "this call needs credentials: log in (Auth/Login) and send 'authorization: Bearer <session token>'"
            })
        })?;
        // Flight clients may send an API token on every call, with no login step.
        let caller = if flight && token.starts_with(crate::auth::TOKEN_PREFIX) {
            let (_, session, _) = self.auth.login_token(token).await?;
            let principal = self.auth.verify_session(&session)?;
            self.access.caller(&principal).await?
        } else {
            self.access.authenticate(&self.auth, token).await?
        };
        request.extensions_mut().insert(caller);
        Ok(())
    }
}

impl<S, E> tower::Service<Request<Body>> for CallService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = E> + Clone + Send + 'static,
    S::Future: Send + 'static,
    E: Send + 'static,
{
    type Response = Response<Body>;
    type Error = E;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The clone that was driven to readiness serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let method = request.uri().path().to_string();
        let trace_id = request
            .headers()
            .get(TRACE_ID_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(new_trace_id);
        let mut trace_header = HeaderValue::from_str(&trace_id).expect("checked ASCII");
        // A value new on every call: kept out of the HPACK tables (indexing
        // it would only evict the entries that repeat, call after call).
        trace_header.set_sensitive(true);
        request
            .headers_mut()
            .insert(TRACE_ID_METADATA_KEY, trace_header.clone());
        let span = tracing::info_span!("call", method = %method, trace_id = %trace_id);
        Box::pin(
            async move {
                let mut response = match layer.authenticate(&mut request).await {
                    Ok(()) => inner.call(request).await?,
                    Err(error) => {
                        tracing::info!(code = ?error.code, "rejected: {}", error.message);
                        tonic::Status::from(error).into_http()
                    }
                };
                response
                    .headers_mut()
                    .insert(TRACE_ID_METADATA_KEY, trace_header);
                classify_codec_error(response.headers_mut());
                // Unknown names share one label, so callers cannot grow the metrics without bound.
                let method = if name_unknown_method(response.headers_mut(), &method) {
                    "<unknown>".into()
                } else {
                    method
                };
                let recorder = CallRecorder {
                    metrics: layer.metrics.clone(),
                    method,
                    span: tracing::Span::current(),
                };
                // A trailers-only response (most errors) carries its status in the headers.
                if let Some(code) = status_of(response.headers()) {
                    recorder.record(code);
                    return Ok(response);
                }
                Ok(response.map(|body| {
                    Body::new(MeteredBody {
                        inner: body,
                        recorder: Some(recorder),
                    })
                }))
            }
            .instrument(span),
        )
    }
}

/// Failures raised by the gRPC codec before a handler sees the request get
/// the stable code they deserve: a request that does not decode (bad
/// protobuf, invalid UTF-8 in a string) is INVALID_ARGUMENT, not INTERNAL; one
/// over the size limit is RESOURCE_EXHAUSTED, as the gRPC spec asks.
fn classify_codec_error(headers: &mut http::HeaderMap) {
    if headers.contains_key(ERROR_CODE_METADATA_KEY) {
        return;
    }
    let status = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (grpc, code) = match status {
        Some("13")
            if message.starts_with("failed%20to%20decode")
                || message.starts_with("failed to decode") =>
        {
            ("3", ErrorCode::InvalidArgument)
        }
        Some("11") if message.contains("too%20large") || message.contains("too large") => {
            ("8", ErrorCode::ResourceExhausted)
        }
        _ => return,
    };
    headers.insert("grpc-status", HeaderValue::from_static(grpc));
    headers.insert(
        ERROR_CODE_METADATA_KEY,
        HeaderValue::from_static(code.as_str_name()),
    );
}

/// tonic answers an unknown method with a bare UNIMPLEMENTED; ours says which
/// method and carries the stable code like every other failure.
/// Returns whether the method was unknown.
fn name_unknown_method(headers: &mut http::HeaderMap, method: &str) -> bool {
    let status = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    if status != Some("12") || headers.contains_key(ERROR_CODE_METADATA_KEY) {
        return false;
    }
    let message =
        format!("unknown method {method}; list the methods with gRPC reflection (busbar call)");
    if let Ok(value) = HeaderValue::from_str(&percent_encode(&message)) {
        headers.insert("grpc-message", value);
    }
    headers.insert(
        ERROR_CODE_METADATA_KEY,
        HeaderValue::from_static(ErrorCode::Unimplemented.as_str_name()),
    );
    true
}

/// grpc-message encoding: bytes outside printable ASCII, and '%', as %XX.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// gRPC status code names, indexed by code.
const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The gRPC status name in `headers` (or trailers), if they carry one.
fn status_of(headers: &http::HeaderMap) -> Option<&'static str> {
    let status = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<usize>()
        .ok()?;
    Some(GRPC_CODE_NAMES.get(status).copied().unwrap_or("UNKNOWN"))
}

struct CallRecorder {
    metrics: Arc<Metrics>,
    method: String,
    /// The call's span (with its trace id), entered when the outcome is logged.
    span: tracing::Span,
}

impl CallRecorder {
    fn record(self, code: &'static str) {
        if code == "OK" {
            tracing::debug!(parent: &self.span, code, "call finished");
        } else {
            tracing::info!(parent: &self.span, code, "call failed");
        }
        let labels = CallLabels {
            method: self.method,
            code: code.to_string(),
        };
        self.metrics.calls.get_or_create(&labels).inc();
    }
}

/// Counts the call when its trailers (with the final status) go out, or as
/// cancelled if the body is dropped before that.
struct MeteredBody {
    inner: Body,
    recorder: Option<CallRecorder>,
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if let Some(recorder) = self.recorder.take() {
            recorder.record("CANCELLED");
        }
    }
}

impl HttpBody for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            classify_codec_error(trailers);
            if let Some(recorder) = self.recorder.take() {
                recorder.record(status_of(trailers).unwrap_or("OK"));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
