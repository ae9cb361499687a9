//! Scenario: the WebSocket gateway (issue 25's first row). One call at a
//! time, `busbar.v1.Node/Status` with JSON, over a WebSocket (TLS, the
//! node's CA; `docs/websocket.md` framing) against the same call by its
//! name over gRPC with the Rust client's dynamic JSON `call`, which is what
//! the gateway itself makes on the node's behalf. Both against one node.

use crate::ctx::Ctx;
use crate::procs::{self, Result};
use crate::report::{Better, Row, Target};
use crate::stats::Samples;
use busbar_client::{ClientConfig, ConnectOptions};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

const METHOD: &str = "busbar.v1.Node/Status";

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Largest WebSocket message (and frame) the bench accepts: far above what
/// any scenario receives, so only a runaway peer hits it.
const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The next text frame as JSON.
pub(crate) async fn next_json(socket: &mut Socket) -> Result<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .map_err(|_| "no frame from the gateway within 10 s")?;
        match frame {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
            Some(Ok(Message::Close(_))) | None => {
                return Err("the gateway closed the socket".into());
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.into()),
        }
    }
}

/// Trust roots holding the certificates in `pem`.
pub(crate) fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        roots.add(certificate?)?;
    }
    Ok(roots)
}

/// A WebSocket over TLS (server name `localhost`, trusting `roots`) to
/// `url` (`wss://HOST:PORT[/path]`), handshake done.
pub(crate) async fn connect(url: &str, roots: rustls::RootCertStore) -> Result<Socket> {
    let without_scheme = url.strip_prefix("wss://").ok_or("not a wss:// URL")?;
    let host_port = without_scheme.split('/').next().unwrap_or(without_scheme);
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(host_port).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect("localhost".try_into()?, tcp)
        .await?;
    let request = url.into_client_request()?;
    let limits = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let (socket, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(limits)).await?;
    Ok(socket)
}

/// A logged-in socket to the gateway at `url`.
pub(crate) async fn open(url: &str, config: &ClientConfig, token: &str) -> Result<Socket> {
    let ca = config
        .ca_pem
        .as_deref()
        .ok_or("the node's config has no CA")?;
    let mut socket = connect(url, roots_from_pem(ca.as_bytes())?).await?;
    let hello = next_json(&mut socket).await?;
    if hello["op"] != "hello" {
        return Err(format!("the gateway began with {hello}").into());
    }
    let login = json!({"op": "login", "id": "l", "credential": {"kind": "token", "token": token}});
    socket.send(Message::text(login.to_string())).await?;
    let answer = next_json(&mut socket).await?;
    if answer["op"] != "logged_in" {
        return Err(format!("the gateway refused the login: {answer}").into());
    }
    Ok(socket)
}

/// One unary call over the socket, to its `end`.
async fn call(socket: &mut Socket, id: u64) -> Result<()> {
    let frame = json!({"op": "call", "id": id.to_string(), "method": METHOD, "message": {}});
    socket.send(Message::text(frame.to_string())).await?;
    loop {
        let got = next_json(socket).await?;
        match got["op"].as_str() {
            Some("message") => continue,
            Some("end") => return Ok(()),
            _ => return Err(format!("the call failed: {got}").into()),
        }
    }
}

/// A node of its own with its gateway on, its admin, an API token, and a
/// gRPC client logged in with that token.
pub struct GatewayNode {
    /// Stops when it drops, after the scenario.
    pub node: procs::Busbar,
    pub url: String,
    pub config: ClientConfig,
    pub token: String,
    pub admin: busbar_client::Client,
    pub client: busbar_client::Client,
}

impl GatewayNode {
    /// Starts it with its data in the run's `name` folder.
    pub async fn start(ctx: &Ctx, name: &str) -> Result<GatewayNode> {
        let node = procs::Busbar::start_with(
            &ctx.busbar_binary,
            &ctx.work_dir.join(name),
            "127.0.0.1:0",
            &["--ws-listen", "127.0.0.1:0"],
        )?;
        let url = (node.websocket.clone()).ok_or("busbar serve printed no websocket URL")?;
        let config = ClientConfig::from_file(&node.admin_config)?;
        let admin = busbar_client::Client::from_config_file(&node.admin_config).await?;
        let (token, _) = admin.create_token(&format!("bench-{name}"), None).await?;
        let options = ConnectOptions::from_config(&config)?.token(token.clone());
        let client = options.connect().await?;
        Ok(GatewayNode {
            node,
            url,
            config,
            token,
            admin,
            client,
        })
    }
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let calls = ctx.pick(2_000u64, 10_000);
    let node = GatewayNode::start(ctx, "gateway").await?;
    let grpc = &node.client;
    let mut socket = open(&node.url, &node.config, &node.token).await?;

    // Warm both paths (descriptors, connections), then take turns.
    for n in 0..200 {
        call(&mut socket, n).await?;
        grpc.call(METHOD, json!({})).await?;
    }
    let (mut over_ws, mut over_grpc) = (Samples::default(), Samples::default());
    for n in 0..calls {
        let started = Instant::now();
        call(&mut socket, 1_000 + n).await?;
        over_ws.push(started.elapsed());
        let started = Instant::now();
        grpc.call(METHOD, json!({})).await?;
        over_grpc.push(started.elapsed());
    }
    let note = format!(
        "gateway: {METHOD} with JSON, one call at a time, {calls} calls each, turns alternating; WebSocket (TLS, docs/websocket.md framing) vs the Rust client's dynamic JSON call over gRPC to the same node"
    );
    let mut rows = Vec::new();
    for (figure, p) in [("p50", 50.0), ("p99", 99.0)] {
        rows.push(
            Row::new(
                format!("gateway unary Status over WebSocket, 1 in flight: {figure} latency"),
                "µs",
                Better::Lower,
                over_ws.percentile_us(p),
            )
            .peer("grpc", Some(over_grpc.percentile_us(p)))
            .target(Target::ratio_at_most("grpc", 1.5))
            .note(note.clone()),
        );
    }
    drop(node);
    Ok(rows)
}
