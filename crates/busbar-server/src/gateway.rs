//! The WebSocket gateway for browsers (docs/websocket.md is its spec).
//!
//! Browsers cannot speak gRPC with trailers, so every node also listens for
//! WebSockets. Each socket, once it has logged in, holds a
//! [`busbar_client::Client`] connected to the node's own gRPC listener over
//! loopback and logged in with the socket's credential; each call the socket
//! names runs through that client's dynamic JSON API (`Client::call` and
//! `Client::stream` by full method name, shapes from reflection). So the
//! gateway has no code per method, every method the node serves (its own
//! and the mesh providers') is reached with the same JSON mapping as the
//! dynamic `call`, and rights, auditing, metrics, limits and the mesh stay
//! where they are for every other client: the gateway adds no second way in.
//!
//! A socket is three parts: the reader loop here (frames in, calls started,
//! fed, cancelled), one task per call, and a writer task that owns the
//! socket's sending half. Everything sent goes through [`Out`], a queue
//! bounded in bytes: a call whose frame does not fit waits (backpressure to
//! its gRPC stream and so to the producer), and a queue that stays full for
//! the stall time cuts the socket as a slow consumer (close code 4008).

use crate::config::GatewayConfig;
use crate::metrics::{KindLabels, Metrics};
use crate::node::Lifecycle;
use busbar_client::{Client, ConnectOptions, Credential, ErrorCode, MethodKind};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

/// The version of the framing, in `hello` and as the subprotocol.
pub const PROTOCOL: &str = "busbar.v1";
/// The path the gateway answers on.
pub const PATH: &str = "/ws";

/// Close codes (docs/websocket.md, "Close codes").
mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const NOT_UTF8: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const LOGIN_TIMEOUT: u16 = 4001;
    pub const IDLE: u16 = 4002;
    pub const LOGINS: u16 = 4003;
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// Failed logins on one socket before it is closed (4003).
const MAX_FAILED_LOGINS: u32 = 5;
/// Request messages of one streaming call buffered between the socket and
/// the call's gRPC stream.
const CALL_INPUT: usize = 16;
/// Longest call id, in bytes.
const MAX_ID_BYTES: usize = 64;

/// What every socket of the gateway shares.
pub(crate) struct Gateway {
    pub config: GatewayConfig,
    /// The node's gRPC address (`https://127.0.0.1:PORT`) and CA.
    pub node_address: String,
    pub ca_pem: Option<String>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Allowed origins, lower case.
    pub origins: Vec<String>,
    pub max_message_bytes: usize,
    pub handshake_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub metrics: Arc<Metrics>,
    pub lifecycle: watch::Receiver<Lifecycle>,
    pub sockets: Arc<Semaphore>,
}

/// The origins a page served by the gateway itself has: its scheme with the
/// bound address, localhost and each certificate hostname, at its port.
pub(crate) fn own_origins(bound: SocketAddr, tls: bool, hostnames: &[String]) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    let dial = crate::bootstrap::dial_address(bound, tls);
    let host_port = dial.rsplit("://").next().unwrap_or_default().to_string();
    let port = bound.port();
    let mut origins = vec![format!("{scheme}://{host_port}")];
    for host in std::iter::once("localhost").chain(hostnames.iter().map(String::as_str)) {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        origins.push(format!("{scheme}://{host}:{port}").to_ascii_lowercase());
    }
    // Browsers leave the scheme's default port out of an origin.
    if (tls && port == 443) || (!tls && port == 80) {
        let bare: Vec<String> = origins
            .iter()
            .map(|o| o.trim_end_matches(&format!(":{port}")).to_string())
            .collect();
        origins.extend(bare);
    }
    origins
}

/// Resolves once `watch` holds a value that passes `test` (or its sender
/// is gone), holding no borrow of it across the wait's end.
async fn until<T>(watch: &mut watch::Receiver<T>, test: impl FnMut(&T) -> bool) {
    let _ = watch.wait_for(test).await;
}

/// Byte streams a socket runs over (TLS or plain TCP).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

impl Gateway {
    /// Accepts sockets until the node stops.
    pub(crate) async fn run(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let mut lifecycle = self.lifecycle.clone();
        loop {
            let accepted = tokio::select! {
                _ = until(&mut lifecycle, |state| *state == Lifecycle::Stopped) => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!(%error, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let gateway = self.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let deadline = tokio::time::Instant::now() + gateway.handshake_timeout;
                // The listener also serves the web console: plain HTTP
                // requests go there, WebSocket handshakes on (console.rs).
                let routed = tokio::time::timeout_at(deadline, async {
                    let io: Box<dyn Io> = match &gateway.tls {
                        Some(tls) => Box::new(tls.accept(tcp).await.ok()?),
                        None => Box::new(tcp),
                    };
                    crate::console::route(io, PATH).await
                })
                .await;
                let io: Box<dyn Io> = match routed {
                    Ok(Some(crate::console::Route::WebSocket(io))) => Box::new(io),
                    Ok(Some(crate::console::Route::Console(io))) => {
                        let tls = gateway.tls.is_some();
                        return crate::console::serve(io, tls, gateway.origins.clone()).await;
                    }
                    _ => {
                        tracing::debug!(%peer, "gateway connection closed before a request");
                        return;
                    }
                };
                let permit = gateway.sockets.clone().try_acquire_owned().ok();
                let opened = tokio::time::timeout_at(deadline, async {
                    let full = permit.is_none();
                    #[allow(clippy::result_large_err)]
                    let check = |request: &Request, response: Response| {
                        gateway.check_handshake(request, response, full)
                    };
                    tokio_tungstenite::accept_hdr_async_with_config(
                        io,
                        check,
                        Some(gateway.websocket_config()),
                    )
                    .await
                    .ok()
                })
                .await;
                match (opened, permit) {
                    (Ok(Some(socket)), Some(permit)) => {
                        tracing::debug!(%peer, "gateway socket opened");
                        gateway.serve_socket(socket).await;
                        drop(permit);
                    }
                    _ => tracing::debug!(%peer, "gateway handshake refused or timed out"),
                }
            });
        }
    }

    fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
    }

    /// The handshake's checks: path, sockets per node, Origin, subprotocol.
    /// (The result's type is tungstenite's callback's.)
    #[allow(clippy::result_large_err)]
    fn check_handshake(
        &self,
        request: &Request,
        mut response: Response,
        full: bool,
    ) -> Result<Response, ErrorResponse> {
        let refuse = |status: u16, text: String| {
            let mut refusal = ErrorResponse::new(Some(text));
            *refusal.status_mut() = http::StatusCode::from_u16(status).expect("valid status");
            Err(refusal)
        };
        if request.uri().path() != PATH {
            return refuse(404, format!("the gateway answers on {PATH}\n"));
        }
        if full {
            return refuse(
                503,
                format!(
                    "the node has {} gateway sockets open (ws_max_sockets); try again later\n",
                    self.config.max_sockets
                ),
            );
        }
        // Browsers always send Origin; a request without one comes from a
        // program, which has no victim's ambient authority to borrow (the
        // gateway uses no cookies) and must log in like anyone.
        if let Some(origin) = request.headers().get(http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
            if !self.origins.contains(&origin) {
                return refuse(
                    403,
                    format!(
                        "origin {origin:?} is not allowed to open gateway sockets (ws_origins)\n"
                    ),
                );
            }
        }
        let offered = request
            .headers()
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        if !offered.is_empty() {
            if !offered.contains(&PROTOCOL) {
                return refuse(
                    400,
                    format!("this gateway speaks the subprotocol {PROTOCOL} only\n"),
                );
            }
            response.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(PROTOCOL),
            );
        }
        Ok(response)
    }

    async fn serve_socket(
        self: &Arc<Self>,
        socket: tokio_tungstenite::WebSocketStream<Box<dyn Io>>,
    ) {
        let (sink, mut incoming) = socket.split();
        let (closing, closed) = watch::channel(None::<(u16, String)>);
        let closing = Arc::new(closing);
        let (queue, queued) = mpsc::unbounded_channel();
        let out = Out {
            queue,
            room: Arc::new(Semaphore::new(self.config.queue_bytes)),
            limit: self.config.queue_bytes,
            stall: self.config.stall,
            closing: closing.clone(),
            metrics: self.metrics.clone(),
        };
        let writer = tokio::spawn(write(sink, queued, closed.clone()));
        let mut socket = Socket {
            gateway: self.clone(),
            out: out.clone(),
            client: None,
            failed_logins: 0,
            calls: HashMap::new(),
            tasks: tokio::task::JoinSet::new(),
            by_task: HashMap::new(),
        };
        out.json(json!({
            "op": "hello",
            "protocol": PROTOCOL,
            "limits": {
                "max_message_bytes": self.max_message_bytes,
                "max_calls": self.config.max_calls,
                "queue_bytes": self.config.queue_bytes,
                "stall_ms": self.config.stall.as_millis() as u64,
                "login_timeout_ms": self.config.login_timeout.as_millis() as u64,
                "idle_timeout_ms": self.idle_timeout.as_millis() as u64,
            },
        }))
        .await;
        let login_deadline = tokio::time::sleep(self.config.login_timeout);
        tokio::pin!(login_deadline);
        let mut ticks =
            tokio::time::interval((self.idle_timeout / 3).max(Duration::from_millis(100)));
        ticks.tick().await;
        let mut last_heard = Instant::now();
        let mut lifecycle = self.lifecycle.clone();
        let mut closed = closed;
        loop {
            tokio::select! {
                biased;
                _ = until(&mut closed, Option::is_some) => break,
                _ = until(&mut lifecycle, |state| *state == Lifecycle::Stopped) => {
                    out.close(close::GOING_AWAY, "the node is stopping");
                }
                _ = &mut login_deadline, if socket.client.is_none() => {
                    out.close(close::LOGIN_TIMEOUT, "not logged in within ws_login_timeout_seconds");
                }
                Some(done) = socket.tasks.join_next_with_id() => socket.finished(done).await,
                _ = ticks.tick() => {
                    if last_heard.elapsed() > self.idle_timeout {
                        out.close(close::IDLE, "nothing heard within the idle timeout");
                    } else {
                        out.send(Message::Ping(Default::default())).await;
                    }
                }
                frame = incoming.next() => {
                    last_heard = Instant::now();
                    match frame {
                        None => out.close(close::NORMAL, ""),
                        Some(Ok(Message::Text(text))) => socket.frame(text.as_str()).await,
                        Some(Ok(Message::Binary(_))) => {
                            out.socket_error(
                                ErrorCode::InvalidArgument,
                                "clients send text frames of JSON; binary frames come only from the node",
                            )
                            .await;
                        }
                        Some(Ok(Message::Close(_))) => out.close(close::NORMAL, ""),
                        Some(Ok(_)) => {}
                        Some(Err(error)) => {
                            let (code, reason) = match error {
                                tungstenite::Error::Capacity(_) => (
                                    close::TOO_BIG,
                                    format!(
                                        "a frame or message was over {} bytes (max_message_bytes)",
                                        self.max_message_bytes
                                    ),
                                ),
                                tungstenite::Error::Utf8(_) => {
                                    (close::NOT_UTF8, "a text frame was not UTF-8".into())
                                }
                                tungstenite::Error::Protocol(error) => {
                                    (close::PROTOCOL, error.to_string())
                                }
                                _ => (close::NORMAL, String::new()),
                            };
                            out.close(code, &reason);
                        }
                    }
                }
            }
        }
        // Calls end with their socket.
        socket.tasks.abort_all();
        drop(socket);
        let _ = writer.await;
    }
}

/// A socket's outgoing queue, bounded in bytes.
#[derive(Clone)]
struct Out {
    queue: mpsc::UnboundedSender<(Message, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
    limit: usize,
    stall: Duration,
    closing: Arc<watch::Sender<Option<(u16, String)>>>,
    metrics: Arc<Metrics>,
}

impl Out {
    /// Queues `message`, waiting while the queue is full; false once the
    /// socket is closing (a queue full for the stall time closes it).
    async fn send(&self, message: Message) -> bool {
        let size = message.len().clamp(1, self.limit) as u32;
        match tokio::time::timeout(self.stall, self.room.clone().acquire_many_owned(size)).await {
            Ok(Ok(permit)) => self.queue.send((message, permit)).is_ok(),
            Ok(Err(_)) => false,
            Err(_) => {
                if self.closing.borrow().is_none() {
                    self.metrics
                        .slow_consumer_drops
                        .get_or_create(&KindLabels { kind: "websocket" })
                        .inc();
                }
                self.close(
                    close::SLOW_CONSUMER,
                    "slow consumer: the socket's queue stayed full for ws_stall_seconds",
                );
                false
            }
        }
    }

    async fn json(&self, value: Value) -> bool {
        self.send(Message::text(value.to_string())).await
    }

    /// An error about the socket or a frame, ending no call.
    async fn socket_error(&self, code: ErrorCode, message: &str) {
        self.json(json!({"op": "error", "code": code.as_str_name(), "message": message}))
            .await;
    }

    /// Closes the socket with `code` (the first reason given wins).
    fn close(&self, code: u16, reason: &str) {
        // Close reasons are at most 123 bytes.
        let mut reason = reason.to_string();
        while reason.len() > 123 {
            reason.pop();
        }
        self.closing.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some((code, reason));
            true
        });
    }
}

/// The writer task: sends what is queued until the socket closes, then the
/// close frame (if the peer still reads; at most a second is spent on it).
async fn write(
    mut sink: futures::stream::SplitSink<tokio_tungstenite::WebSocketStream<Box<dyn Io>>, Message>,
    mut queued: mpsc::UnboundedReceiver<(Message, OwnedSemaphorePermit)>,
    mut closed: watch::Receiver<Option<(u16, String)>>,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = until(&mut closed, Option::is_some) => break,
            next = queued.recv() => next,
        };
        let Some((message, permit)) = next else { break };
        tokio::select! {
            biased;
            _ = until(&mut closed, Option::is_some) => break,
            sent = sink.send(message) => if sent.is_err() { return },
        }
        drop(permit);
    }
    let (code, reason) = closed
        .borrow()
        .clone()
        .unwrap_or((close::NORMAL, String::new()));
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
}

/// A call in flight on a socket.
struct Call {
    input: Option<mpsc::Sender<Value>>,
    abort: tokio::task::AbortHandle,
    cancelled: bool,
}

/// How a call ended: its last frame.
type Ending = Value;

struct Socket {
    gateway: Arc<Gateway>,
    out: Out,
    client: Option<Client>,
    failed_logins: u32,
    calls: HashMap<String, Call>,
    tasks: tokio::task::JoinSet<Ending>,
    by_task: HashMap<tokio::task::Id, String>,
}

/// A frame from the client (docs/websocket.md, "Client frames"). Unknown
/// fields are ignored, so later versions may add some.
#[derive(serde::Deserialize)]
struct Frame {
    op: String,
    id: Option<Value>,
    method: Option<String>,
    message: Option<Value>,
    credential: Option<Value>,
    timeout_ms: Option<u64>,
    trace_id: Option<String>,
    metadata: Option<HashMap<String, String>>,
    binary: Option<bool>,
}

fn error_frame(id: Option<&str>, error: &busbar_client::Error) -> Value {
    let mut frame = json!({
        "op": "error",
        "code": error.code().as_str_name(),
        "message": error.message(),
    });
    if let Some(id) = id {
        frame["id"] = id.into();
    }
    if let Some(trace) = error.trace_id() {
        frame["trace_id"] = trace.into();
    }
    frame
}

fn failure(code: ErrorCode, message: impl Into<String>) -> busbar_client::Error {
    busbar_client::Error::new(code, message)
}

impl Socket {
    async fn frame(&mut self, text: &str) {
        let frame: Frame = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(error) => {
                let message = format!(
                    "malformed frame: {error}; send a JSON object with an \"op\" (docs/websocket.md)"
                );
                return self
                    .out
                    .socket_error(ErrorCode::InvalidArgument, &message)
                    .await;
            }
        };
        let id = match &frame.id {
            None => None,
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_BYTES => {
                Some(id.clone())
            }
            Some(_) => {
                let message = format!("bad id: a call id is a string of 1 to {MAX_ID_BYTES} bytes");
                return self
                    .out
                    .socket_error(ErrorCode::InvalidArgument, &message)
                    .await;
            }
        };
        match frame.op.as_str() {
            "login" => self.login(id, frame.credential).await,
            "ping" => {
                let mut pong = json!({"op": "pong"});
                if let Some(id) = id {
                    pong["id"] = id.into();
                }
                self.out.json(pong).await;
            }
            "call" => match id {
                Some(id) => self.start(id, frame).await,
                None => {
                    self.out
                        .socket_error(ErrorCode::InvalidArgument, "a call frame needs an id")
                        .await
                }
            },
            "send" | "end" | "cancel" => {
                let Some(id) = id else {
                    let message = format!("a {} frame needs the id of its call", frame.op);
                    return self
                        .out
                        .socket_error(ErrorCode::InvalidArgument, &message)
                        .await;
                };
                self.follow(&id, &frame.op, frame.message).await
            }
            other => {
                let message =
                    format!("unknown op {other:?}: use login, call, send, end, cancel or ping");
                self.out
                    .socket_error(ErrorCode::InvalidArgument, &message)
                    .await
            }
        }
    }

    async fn login(&mut self, id: Option<String>, credential: Option<Value>) {
        let gateway = &self.gateway;
        let login = async {
            let credential = credential_of(credential)?;
            // No default deadline: a call has one when its frame gives one.
            let mut options = ConnectOptions::new(gateway.node_address.clone())
                .credential(credential)
                .connect_timeout(Duration::from_secs(10));
            if let Some(ca) = &gateway.ca_pem {
                options = options.ca_pem(ca.clone()).server_name("localhost");
            }
            let client = options.connect().await?;
            let identity = client.call("busbar.v1.Auth/WhoAmI", json!({})).await?;
            Ok::<_, busbar_client::Error>((client, identity))
        };
        let result = match tokio::time::timeout(Duration::from_secs(30), login).await {
            Ok(result) => result,
            Err(_) => Err(failure(
                ErrorCode::Timeout,
                "the login took over 30 s; try again",
            )),
        };
        match result {
            Ok((client, identity)) => {
                self.client = Some(client);
                self.failed_logins = 0;
                let mut frame = json!({"op": "logged_in", "identity": identity});
                if let Some(id) = id {
                    frame["id"] = id.into();
                }
                self.out.json(frame).await;
            }
            Err(error) => {
                self.failed_logins += 1;
                self.out.json(error_frame(id.as_deref(), &error)).await;
                if self.failed_logins >= MAX_FAILED_LOGINS {
                    self.out.close(close::LOGINS, "too many failed logins");
                }
            }
        }
    }

    async fn start(&mut self, id: String, frame: Frame) {
        if self.calls.contains_key(&id) {
            // Not ended with the id: that would end the call in flight.
            let message = format!("call id {id:?} is in flight already; use a new id per call");
            return self
                .out
                .socket_error(ErrorCode::InvalidArgument, &message)
                .await;
        }
        let refused = |error: busbar_client::Error| error_frame(Some(&id), &error);
        let Some(client) = self.client.clone() else {
            let error = failure(
                ErrorCode::Unauthenticated,
                "log in first: send {\"op\": \"login\", \"credential\": {...}}",
            );
            self.out.json(refused(error)).await;
            return;
        };
        if self.calls.len() >= self.gateway.config.max_calls {
            let error = failure(
                ErrorCode::ResourceExhausted,
                format!(
                    "{} calls are in flight on this socket (ws_max_calls); wait for one to end",
                    self.gateway.config.max_calls
                ),
            );
            self.out.json(refused(error)).await;
            return;
        }
        let Some(method) = frame.method else {
            let error = failure(ErrorCode::InvalidArgument, "a call frame needs a method");
            self.out.json(refused(error)).await;
            return;
        };
        let mut client = client;
        if let Some(ms) = frame.timeout_ms {
            client = client.with_timeout(Duration::from_millis(ms.max(1)));
        }
        let prepared = (|| {
            if let Some(trace) = &frame.trace_id {
                client = client.with_trace_id(trace)?;
            }
            if let Some(metadata) = &frame.metadata {
                client = client.with_metadata(metadata.iter())?;
            }
            Ok::<_, busbar_client::Error>(())
        })();
        if let Err(error) = prepared {
            self.out.json(refused(error)).await;
            return;
        }
        let (input, requests) = mpsc::channel(CALL_INPUT);
        let task = run_call(
            client,
            id.clone(),
            method,
            frame.message,
            requests,
            frame.binary.unwrap_or(true),
            self.out.clone(),
        );
        let abort = self.tasks.spawn(task);
        self.by_task.insert(abort.id(), id.clone());
        self.calls.insert(
            id,
            Call {
                input: Some(input),
                abort,
                cancelled: false,
            },
        );
    }

    /// `send`, `end` or `cancel` for the call `id`.
    async fn follow(&mut self, id: &str, op: &str, message: Option<Value>) {
        let Some(call) = self.calls.get_mut(id) else {
            if op == "cancel" {
                // It ended before the cancel arrived: nothing to do.
                return;
            }
            let message = format!("no call {id:?} is in flight (it ended, or never started)");
            return self
                .out
                .socket_error(ErrorCode::InvalidArgument, &message)
                .await;
        };
        match op {
            "cancel" => {
                call.cancelled = true;
                call.abort.abort();
            }
            "end" => call.input = None,
            _ => {
                let Some(input) = &call.input else {
                    let message = format!("call {id:?} has ended its sending already");
                    return self
                        .out
                        .socket_error(ErrorCode::InvalidArgument, &message)
                        .await;
                };
                let message = message.unwrap_or_else(|| json!({}));
                // A method that does not read its requests holds the socket's
                // reader back for at most the stall time, then fails.
                let sent = tokio::time::timeout(self.gateway.config.stall, input.send(message));
                if !matches!(sent.await, Ok(Ok(()))) && !call.abort.is_finished() {
                    call.abort.abort();
                    call.cancelled = false;
                    call.input = None;
                }
            }
        }
    }

    /// A call's task ended: its last frame goes out and its id is free.
    async fn finished(&mut self, done: Result<(tokio::task::Id, Ending), tokio::task::JoinError>) {
        let (task, ending) = match done {
            Ok((task, ending)) => (task, Some(ending)),
            Err(error) => (error.id(), None),
        };
        let Some(id) = self.by_task.remove(&task) else {
            return;
        };
        let call = self.calls.remove(&id);
        let ending = ending.unwrap_or_else(|| {
            let error = if call.is_some_and(|call| call.cancelled) {
                failure(ErrorCode::Cancelled, "cancelled by the client")
            } else {
                failure(
                    ErrorCode::ResourceExhausted,
                    format!(
                        "the method did not take the next request message within {:?} (ws_stall_seconds)",
                        self.gateway.config.stall
                    ),
                )
            };
            error_frame(Some(&id), &error)
        });
        self.out.json(ending).await;
    }
}

/// The credential of a login frame: `{"kind": "password", "user", "password"}`
/// or `{"kind": "token", "token"}`.
fn credential_of(value: Option<Value>) -> busbar_client::Result<Credential> {
    let bad = || {
        failure(
            ErrorCode::InvalidArgument,
            "a login frame needs a credential: {\"kind\": \"password\", \"user\": ..., \"password\": ...} \
             or {\"kind\": \"token\", \"token\": ...}",
        )
    };
    let value = value.ok_or_else(bad)?;
    let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_string);
    match value.get("kind").and_then(Value::as_str) {
        Some("password") => Ok(Credential::Password {
            user: text("user").ok_or_else(bad)?,
            password: text("password").ok_or_else(bad)?,
        }),
        Some("token") => Ok(Credential::Token(text("token").ok_or_else(bad)?)),
        _ => Err(bad()),
    }
}

/// Runs one call; returns its last frame (`end` or `error`).
async fn run_call(
    client: Client,
    id: String,
    method: String,
    first: Option<Value>,
    mut requests: mpsc::Receiver<Value>,
    binary: bool,
    out: Out,
) -> Ending {
    let result = async {
        let kind = client.describe(&method).await?;
        let kind = match (kind.is_client_streaming(), kind.is_server_streaming()) {
            (false, false) => MethodKind::Unary,
            (false, true) => MethodKind::ServerStreaming,
            (true, false) => MethodKind::ClientStreaming,
            (true, true) => MethodKind::BidiStreaming,
        };
        if kind == MethodKind::Unary {
            let request = first.unwrap_or_else(|| json!({}));
            let response = client.call_as(&method, request, reply_of).await?;
            deliver(&out, &id, response, binary).await;
            return Ok(());
        }
        let first = match kind {
            MethodKind::ServerStreaming => Some(first.unwrap_or_else(|| json!({}))),
            _ => first,
        };
        let mut call = client.stream_as(&method, first, reply_of).await?;
        let mut started = call.take_started();
        let mut sender = matches!(
            kind,
            MethodKind::ClientStreaming | MethodKind::BidiStreaming
        )
        .then(|| call.take_sender());
        loop {
            tokio::select! {
                request = requests.recv(), if sender.is_some() => match request {
                    Some(request) => {
                        if let Some(sending) = &sender
                            && let Err(error) = sending.send(request).await
                        {
                            // The call ended on its side: its own ending
                            // (read below) says why, not this.
                            if error.code() != ErrorCode::Cancelled {
                                return Err(error);
                            }
                            sender = None;
                        }
                    }
                    None => sender = None,
                },
                accepted = async { started.as_mut().expect("checked").await }, if started.is_some() => {
                    started = None;
                    if accepted.is_ok() && !announce_started(&out, &id).await {
                        return Ok(());
                    }
                }
                response = call.next_message() => match response {
                    Some(response) => {
                        // The headers came before any response: `started`
                        // goes first even when both were ready at once.
                        if let Some(mut pending) = started.take()
                            && pending.try_recv().is_ok()
                            && !announce_started(&out, &id).await
                        {
                            return Ok(());
                        }
                        if !deliver(&out, &id, response?, binary).await {
                            return Ok(());
                        }
                    }
                    None => return Ok(()),
                },
            }
        }
    }
    .await;
    match result {
        Ok(()) => json!({"op": "end", "id": id}),
        Err(error) => error_frame(Some(&id), &error),
    }
}

/// Tells the client its streaming call was accepted (docs/websocket.md,
/// `started`): a subscription is in place once this is sent.
async fn announce_started(out: &Out, id: &str) -> bool {
    out.json(json!({"op": "started", "id": id})).await
}

/// A response as a socket sends it, made on the call's own task straight
/// from the decoded message: no JSON value in between, and Arrow bytes
/// never base64-encoded only to be decoded again.
enum Reply {
    /// The `arrow_ipc` bytes of a message that has only that field.
    Arrow(bytes::Bytes),
    /// The message as JSON text (the dynamic `call`'s mapping).
    Json(String),
}

fn reply_of(message: &prost_reflect::DynamicMessage) -> busbar_client::Result<Reply> {
    use prost_reflect::ReflectMessage;
    // The fields its JSON shows: those without presence always, the others
    // (a oneof's members, messages, `optional`) when set.
    let descriptor = message.descriptor();
    let mut fields = (descriptor.fields())
        .filter(|field| !field.supports_presence() || message.has_field(field));
    if let (Some(only), None) = (fields.next(), fields.next())
        && only.name() == "arrow_ipc"
        && let prost_reflect::Value::Bytes(bytes) = message.get_field(&only).as_ref()
    {
        return Ok(Reply::Arrow(bytes.clone()));
    }
    busbar_client::to_json_text(message).map(Reply::Json)
}

/// Sends one response: Arrow IPC bytes as a binary frame (unless the call
/// asked for none), anything else as a `message` frame.
async fn deliver(out: &Out, id: &str, response: Reply, binary: bool) -> bool {
    let text = match response {
        Reply::Arrow(bytes) if binary => {
            let mut frame = Vec::with_capacity(2 + id.len() + bytes.len());
            frame.push(1u8);
            frame.push(id.len() as u8);
            frame.extend_from_slice(id.as_bytes());
            frame.extend_from_slice(&bytes);
            return out.send(Message::binary(frame)).await;
        }
        Reply::Arrow(bytes) => {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            json!({ "arrow_ipc": encoded }).to_string()
        }
        Reply::Json(text) => text,
    };
    // The frame around the message's own text: the id is JSON-escaped, the
    // message is JSON already.
    let id = Value::from(id).to_string();
    let frame = format!(r#"{{"op":"message","id":{id},"message":{text}}}"#);
    out.send(Message::text(frame)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_origins_cover_the_names_of_the_certificate() {
        let origins = own_origins(
            "0.0.0.0:7072".parse().unwrap(),
            true,
            &["Node.Example".into()],
        );
        assert_eq!(
            origins,
            [
                "https://127.0.0.1:7072",
                "https://localhost:7072",
                "https://node.example:7072"
            ]
        );
        let origins = own_origins("127.0.0.1:443".parse().unwrap(), true, &[]);
        assert!(
            origins.contains(&"https://localhost".to_string()),
            "{origins:?}"
        );
    }

    #[test]
    fn credentials_are_read_or_explained() {
        let ok = credential_of(Some(json!({"kind": "token", "token": "t"}))).unwrap();
        assert!(matches!(ok, Credential::Token(token) if token == "t"));
        for bad in [
            None,
            Some(json!({"kind": "key"})),
            Some(json!({"kind": "password"})),
        ] {
            let error = credential_of(bad).expect_err("refused");
            assert_eq!(error.code(), ErrorCode::InvalidArgument);
        }
    }
}
