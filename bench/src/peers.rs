//! The peers Busbar is compared with, as far as this binary runs them:
//!
//! * `peer-server`, a child process (so the load generator and the servers
//!   never share a runtime, as with Busbar): a bare tonic server with TLS that
//!   serves the same `busbar.v1.Node/Status` message as Busbar but nothing
//!   around it (no auth, no call layer, no metrics), and the NATS responder
//!   for request/reply.
//! * Client helpers for both, and for NATS.

use crate::procs::Result;
use busbar_proto::v1 as pb;
use bytes::Bytes;
use futures::StreamExt;
use pb::node_server::{Node, NodeServer};
use prost::Message;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};
use tonic::{Request, Response, Status};

/// NATS subject of the request/reply responder.
pub const ECHO_SUBJECT: &str = "bench.echo";

/// A status of the same shape and size as Busbar's reply.
fn status_message(started: Instant, started_ms: i64) -> pb::NodeStatus {
    pb::NodeStatus {
        version: "0.1.0".into(),
        node_id: "00000000-0000-4000-8000-000000000000".into(),
        uptime_ms: started.elapsed().as_millis() as i64,
        started_ms,
        store: "sqlite".into(),
        bus: "local".into(),
        tls: true,
        connections: 0,
        // Counters a few varint bytes long, as a busy node's are.
        calls_total: 1 << 20,
        call_errors_total: 1 << 10,
        nodes: vec![pb::ClusterNode {
            node_id: "00000000-0000-4000-8000-000000000000".into(),
            address: "https://127.0.0.1:7070".into(),
            connections: 1,
            started_ms,
            seen_ms: started_ms,
        }],
        store_healthy: true,
        bus_healthy: true,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct BareNode {
    started: Instant,
    started_ms: i64,
}

#[tonic::async_trait]
impl Node for BareNode {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> std::result::Result<Response<pb::NodeStatus>, Status> {
        Ok(Response::new(status_message(self.started, self.started_ms)))
    }

    type EventsStream =
        Pin<Box<dyn futures::Stream<Item = std::result::Result<pb::NodeEvent, Status>> + Send>>;

    async fn events(
        &self,
        _request: Request<pb::NodeEventsRequest>,
    ) -> std::result::Result<Response<Self::EventsStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }
}

/// The connections a listener accepts, with Nagle off (as Busbar's node
/// sets it); failed accepts are skipped.
pub fn nodelay_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(|accepted| async move {
        let stream = accepted.ok()?;
        let _ = stream.set_nodelay(true);
        Some(Ok(stream))
    })
}

/// Connects to NATS over TLS, trusting the bench CA.
pub async fn nats_connect(url: &str, ca: &Path) -> Result<async_nats::Client> {
    Ok(async_nats::ConnectOptions::new()
        .add_root_certificates(ca.to_path_buf())
        .require_tls(true)
        .connection_timeout(Duration::from_secs(10))
        .connect(url)
        .await?)
}

/// A plain tonic client of the bare server (TLS, one HTTP/2 connection).
pub async fn tonic_client(
    address: &str,
    ca: &Path,
) -> Result<pb::node_client::NodeClient<Channel>> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{address}"))?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(pb::node_client::NodeClient::new(channel))
}

pub struct PeerArgs {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub nats: Option<String>,
}

fn parse(args: &[String]) -> Result<PeerArgs> {
    parse_with("peer-server", args, |_, _| false)
}

/// A child's `--cert C --key K --ca CA [--nats URL]`; other flags go to
/// `extra`, which says whether it knew them.
pub fn parse_with(
    mode: &str,
    args: &[String],
    mut extra: impl FnMut(&str, &str) -> bool,
) -> Result<PeerArgs> {
    let mut parsed = PeerArgs {
        cert: PathBuf::new(),
        key: PathBuf::new(),
        ca: PathBuf::new(),
        nats: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--cert" => parsed.cert = value.into(),
            "--key" => parsed.key = value.into(),
            "--ca" => parsed.ca = value.into(),
            "--nats" => parsed.nats = Some(value.clone()),
            other if extra(other, value) => {}
            other => return Err(format!("{mode}: unknown flag {other}").into()),
        }
    }
    Ok(parsed)
}

/// `busbar-bench peer-server --cert C --key K --ca CA [--nats URL]`: prints
/// `tonic HOST:PORT`, `nats-responder ready` (with --nats) and `ready`, then
/// serves until its stdin closes.
pub fn serve_main(args: &[String]) -> Result<()> {
    let args = parse(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: PeerArgs) -> Result<()> {
    let started = Instant::now();
    let started_ms = now_ms();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let identity = Identity::from_pem(std::fs::read(&args.cert)?, std::fs::read(&args.key)?);
    // The same transport settings as Busbar's server, and nothing else.
    let router = tonic::transport::Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity))?
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(1024))
        .add_service(NodeServer::new(BareNode {
            started,
            started_ms,
        }));
    let incoming = nodelay_incoming(listener);
    tokio::spawn(async move {
        if let Err(error) = router.serve_with_incoming(incoming).await {
            eprintln!("peer-server: tonic server failed: {error}");
        }
    });
    println!("tonic {address}");

    if let Some(url) = &args.nats {
        match nats_responder(url, &args.ca, started, started_ms).await {
            Ok(()) => println!("nats-responder ready"),
            Err(error) => eprintln!("peer-server: NATS responder not started: {error}"),
        }
    }
    serve_until_stdin_closes().await
}

/// Says `ready` to the parent, then serves until it closes our stdin (or
/// dies): how every helper process of the bench ends.
pub async fn serve_until_stdin_closes() -> Result<()> {
    println!("ready");
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await?;
    Ok(())
}

/// Answers every request on [`ECHO_SUBJECT`] with an encoded status, then
/// checks with a request of its own that the responder is live.
async fn nats_responder(url: &str, ca: &Path, started: Instant, started_ms: i64) -> Result<()> {
    let client = nats_connect(url, ca).await?;
    let mut requests = client.subscribe(ECHO_SUBJECT).await?;
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            if let Some(reply) = message.reply {
                let payload = Bytes::from(status_message(started, started_ms).encode_to_vec());
                if responder.publish(reply, payload).await.is_err() {
                    break;
                }
            }
        }
    });
    client.flush().await?;
    let probe = nats_connect(url, ca).await?;
    for _ in 0..50 {
        let request = probe.request(ECHO_SUBJECT, Bytes::new());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), request).await {
            return Ok(());
        }
    }
    Err("the NATS responder did not answer a probe request within 10 s".into())
}
