//! Around every call: the trace id (taken from `x-trace-id` or generated, and
//! echoed back), a debug-level tracing span carrying it (failures are logged
//! at info with the method and trace id), authentication of busbar methods
//! and the per-method call metrics.

use crate::auth::Authenticator;
use crate::auth::access::AccessControl;
use crate::error::Error;
use crate::metrics::{GRPC_CODE_NAMES, Metrics};
use busbar_proto::v1::ErrorCode;
use busbar_proto::{ERROR_CODE_METADATA_KEY, SESSION_METADATA_KEY, TRACE_ID_METADATA_KEY};
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode, utf8_percent_encode};
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

/// A mesh provider's stream.
const PROVIDE: &str = "/busbar.v1.Mesh/Provide";

/// Arrow Flight (and Flight SQL) calls, authenticated like busbar methods.
const FLIGHT_PREFIX: &str = "/arrow.flight.protocol.FlightService/";

/// Without credentials it lists nothing rather than failing: Flight clients
/// probe a server with it (pyarrow's `wait_for_available`), and an empty
/// list tells an anonymous caller nothing.
const LIST_FLIGHTS: &str = "/arrow.flight.protocol.FlightService/ListFlights";

/// Paths anyone may call without credentials: health and reflection (a
/// reflection call that carries a valid session sees the provided services
/// its caller may read as well).
fn open_to_anyone(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// The call's trace id, as the call layer settled it (the caller's, or a
/// new one), for handlers that pass it on.
#[derive(Clone)]
pub(crate) struct TraceId(pub String);

/// When the call's headers arrived: its `grpc-timeout` counts from about
/// then, while a handler starts only once the request's body is in.
#[derive(Clone, Copy)]
pub(crate) struct Arrived(pub std::time::Instant);

/// Marks a response to a method the node does not serve, so the call
/// metrics count it under one label instead of the name the caller chose.
#[derive(Clone, Copy)]
pub(crate) struct UnlistedMethod;

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
            layer: Arc::new(self.clone()),
        }
    }
}

#[derive(Clone)]
pub struct CallService<S> {
    inner: S,
    /// Shared by the service's clones: one reference count per call, not three.
    layer: Arc<CallLayer>,
}

// The headers the layer reads or writes on every call, parsed once: a
// lookup by `&str` parses and validates the name each time.
static TRACE_ID: HeaderName = HeaderName::from_static(TRACE_ID_METADATA_KEY);
static SESSION: HeaderName = HeaderName::from_static(SESSION_METADATA_KEY);
static ERROR_CODE: HeaderName = HeaderName::from_static(ERROR_CODE_METADATA_KEY);
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A trace id for a call that came without one (or with a malformed one):
/// 16 hex digits. Not a secret: the thread's RNG serves, with no system call
/// per call.
fn new_trace_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u64>();
    let mut digits = [0u8; 16];
    for (i, digit) in digits.iter_mut().enumerate() {
        *digit = HEX[(bits >> (60 - 4 * i)) as usize & 0xf];
    }
    HeaderValue::from_bytes(&digits).expect("hex digits are visible ASCII")
}

/// A trace id a client may choose: 1 to 64 visible ASCII characters.
fn valid_trace_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 64 && bytes.iter().all(u8::is_ascii_graphic)
}

/// The token of an `x-busbar-session` header (what Busbar's clients send),
/// or else of an `authorization: Bearer <token>` header (what any gRPC or
/// Flight client can send; the scheme name is case-insensitive, as HTTP says).
fn session_token(request: &Request<Body>) -> Option<&str> {
    let headers = request.headers();
    if let Some(value) = headers.get(&SESSION) {
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
        if PUBLIC_METHODS.contains(&path) {
            return Ok(());
        }
        if open_to_anyone(path) {
            // Credentials are optional here; bad ones count as none.
            if let Some(token) = session_token(request)
                && let Ok(caller) = self.access.authenticate(&self.auth, token).await
            {
                request.extensions_mut().insert(caller);
            }
            return Ok(());
        }
        let Some(token) = session_token(request) else {
            if path == LIST_FLIGHTS {
                return Ok(());
            }
            return Err(Error::unauthenticated(if flight {
                "this Flight call needs credentials: Handshake with user:password (HTTP Basic) and send the 'authorization: Bearer <session token>' it returns, or send 'authorization: Bearer <bbt_ API token>'"
            } else {
                "this call needs credentials: log in (Auth/Login) and send 'authorization: Bearer <session token>'"
            }));
        };
        // Flight clients may send an API token on every call, with no login step.
        let caller = if flight && token.starts_with(crate::auth::TOKEN_PREFIX) {
            let (_, session, _) = self.auth.login_token(token).await?;
            let principal = self.auth.verify_session(&session)?;
            self.access.caller(&self.auth, &principal).await?
        } else {
            self.access.authenticate(&self.auth, token).await?
        };
        if path == PROVIDE {
            // A provider's stream outlives the check made here: it checks
            // its credentials again while it lasts (mesh/provide.rs).
            let principal = self.auth.verify_session(token)?;
            request.extensions_mut().insert(principal);
        }
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
        // Shares the request's bytes: the method name is not copied.
        let path = request.uri().path_and_query().cloned();
        let mut trace_header = request
            .headers()
            .get(&TRACE_ID)
            .filter(|value| valid_trace_id(value))
            .cloned()
            .unwrap_or_else(new_trace_id);
        // A value new on every call: kept out of the HPACK tables (indexing
        // it would only evict the entries that repeat, call after call).
        trace_header.set_sensitive(true);
        let method = path.as_ref().map_or("", PathAndQuery::path);
        let trace_id = trace_header.to_str().expect("checked visible ASCII");
        // A debug span: at the default level (info) it is disabled and costs
        // nothing per call (the fmt subscriber formats an enabled span's
        // fields into a new String as the span is made). At info, each failed
        // call gets one line of its own with the method, trace id, code and
        // message, so lines a handler logs without the span (a storage
        // failure) still meet their trace id there.
        let span = tracing::debug_span!("call", method = %method, trace_id = %trace_id);
        let extensions = request.extensions_mut();
        extensions.insert(TraceId(trace_id.to_string()));
        extensions.insert(Arrived(std::time::Instant::now()));
        Box::pin(
            async move {
                let mut response = match layer.authenticate(&mut request).await {
                    Ok(()) => inner.call(request).await?,
                    // Logged below with the other failures, on one line.
                    Err(error) => tonic::Status::from(error).into_http(),
                };
                let unlisted = response.extensions().get::<UnlistedMethod>().is_some();
                let headers = response.headers_mut();
                headers.insert(TRACE_ID.clone(), trace_header.clone());
                let recorder = CallRecorder {
                    layer,
                    path,
                    unlisted,
                    trace_id: trace_header,
                    span: tracing::Span::current(),
                };
                // A trailers-only response (most errors) carries its status in the headers.
                if let Some(outcome) = settle(headers, recorder.method()) {
                    recorder.record(outcome);
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

/// How a call ended: its gRPC code, whether the method does not exist, and
/// a failure's (percent-encoded) message.
#[derive(Debug)]
struct Outcome {
    code: usize,
    unknown_method: bool,
    message: Option<HeaderValue>,
}

impl Outcome {
    fn new(code: usize) -> Outcome {
        Outcome {
            code,
            unknown_method: false,
            message: None,
        }
    }
}

/// Reads the final gRPC status from `headers` (a trailers-only response's
/// headers, or trailers), if they carry one, and gives failures that tonic
/// raises on its own the stable codes Busbar promises, from their gRPC
/// code alone:
/// - a request that does not decode (bad protobuf, invalid UTF-8 in a
///   string) is INVALID_ARGUMENT, not INTERNAL; one over the size limit is
///   RESOURCE_EXHAUSTED, as the gRPC spec asks;
/// - tonic answers an unknown method with a bare UNIMPLEMENTED; ours says
///   which method and carries the stable code like every other failure.
fn settle(headers: &mut HeaderMap, method: &str) -> Option<Outcome> {
    let (code, unknown_method) = classify(headers, method)?;
    // A failure's message goes into the log line that names the call (a
    // storage failure's line, logged while serving it, has no trace id).
    let message = if code == 0 {
        None
    } else {
        headers.get(&GRPC_MESSAGE).cloned()
    };
    Some(Outcome {
        code,
        unknown_method,
        message,
    })
}

/// The final code and whether the method is unknown; see [`settle`].
fn classify(headers: &mut HeaderMap, method: &str) -> Option<(usize, bool)> {
    let code: usize = headers.get(&GRPC_STATUS)?.to_str().ok()?.parse().ok()?;
    if code == 0 || headers.contains_key(&ERROR_CODE) {
        return Some((code, false));
    }
    // Every failure the node's handlers and the mesh make carries its
    // stable code, so one without was raised by tonic below them, where
    // the code alone says what happened (no message text is read):
    let (code, grpc, error_code) = match code {
        // the request did not decode (prost's error, a frame cut short or
        // with a compression flag the node did not offer);
        13 => (3, "3", ErrorCode::InvalidArgument),
        // a message over the size limit, which the gRPC spec calls
        // RESOURCE_EXHAUSTED;
        11 => (8, "8", ErrorCode::ResourceExhausted),
        // the call's grpc-timeout passed (tonic's server reports its own
        // deadline as CANCELLED), which is DEADLINE_EXCEEDED;
        1 => (4, "4", ErrorCode::Timeout),
        // an unknown method:
        12 => {
            let message = format!(
                "unknown method {method}; list the methods with gRPC reflection (busbar call)"
            );
            let encoded = utf8_percent_encode(&message, GRPC_MESSAGE_ENCODED).to_string();
            if let Ok(value) = HeaderValue::from_str(&encoded) {
                headers.insert(GRPC_MESSAGE.clone(), value);
            }
            headers.insert(
                ERROR_CODE.clone(),
                HeaderValue::from_static(ErrorCode::Unimplemented.as_str_name()),
            );
            return Some((code, true));
        }
        _ => return Some((code, false)),
    };
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from_static(grpc));
    headers.insert(
        ERROR_CODE.clone(),
        HeaderValue::from_static(error_code.as_str_name()),
    );
    Some((code, false))
}

/// What grpc-message percent-encodes, as the gRPC spec says: bytes outside
/// printable ASCII (the crate always encodes non-ASCII), and '%'.
const GRPC_MESSAGE_ENCODED: &AsciiSet = &CONTROLS.add(b'%');

struct CallRecorder {
    layer: Arc<CallLayer>,
    path: Option<PathAndQuery>,
    /// A method the node does not serve (see [`UnlistedMethod`]).
    unlisted: bool,
    trace_id: HeaderValue,
    /// The call's span (with its trace id), entered when the outcome is logged.
    span: tracing::Span,
}

impl CallRecorder {
    fn method(&self) -> &str {
        self.path.as_ref().map_or("", PathAndQuery::path)
    }

    fn record(self, outcome: Outcome) {
        let code = GRPC_CODE_NAMES
            .get(outcome.code)
            .copied()
            .unwrap_or("UNKNOWN");
        if outcome.code == 0 {
            tracing::debug!(parent: &self.span, code, "call finished");
        } else {
            let message = outcome
                .message
                .as_ref()
                .map(|m| {
                    percent_decode(m.as_bytes())
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .unwrap_or_default();
            tracing::info!(
                method = self.method(),
                trace_id = self.trace_id.to_str().unwrap_or_default(),
                code,
                error = message,
                "call failed"
            );
        }
        // Unknown names share one label, so callers cannot grow the metrics without bound.
        let method = if outcome.unknown_method || self.unlisted {
            "<unknown>"
        } else {
            self.method()
        };
        self.layer.metrics.calls.inc(method, outcome.code);
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
            recorder.record(Outcome::new(1));
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
            && let Some(recorder) = self.recorder.take()
        {
            // tonic always puts the status in the trailers; none counts as OK.
            let outcome = settle(trailers, recorder.method()).unwrap_or(Outcome::new(0));
            recorder.record(outcome);
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
