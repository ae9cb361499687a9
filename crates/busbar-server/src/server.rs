//! Assembles a node from its configuration and serves it until shutdown.

use crate::auth::Authenticator;
use crate::auth::access::AccessControl;
use crate::auth::service::AuthService;
use crate::bootstrap;
use crate::bus::LocalBus;
use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::grpc::flight::BusbarFlight;
use crate::grpc::layer::CallLayer;
use crate::metrics::{KindLabels, Metrics};
use crate::node::service::NodeService;
use crate::node::{Lifecycle, Node};
use crate::resources::ResourcesService;
use crate::rooms::{self, RoomsService};
use crate::sessions::service::SessionsService;
use crate::sql::service::SqlService;
use crate::store::now_ms;
use crate::timeseries::{self, service::TimeSeriesService};
use crate::tls;
use crate::wires::WiresService;
use arrow_flight::flight_service_server::FlightServiceServer;
use busbar_proto::v1::{
    auth_server::AuthServer, node_server::NodeServer, resources_server::ResourcesServer,
    sessions_server::SessionsServer, sql_server::SqlServer, wires_server::WiresServer,
};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The largest HTTP/2 frame the node accepts (the protocol allows up to
/// 16 MiB; the default is 16 KiB).
const MAX_FRAME_BYTES: u32 = 1 << 20;

/// How clients reach a started node.
#[derive(Debug, Clone)]
pub struct Started {
    /// The address clients dial, e.g. `https://127.0.0.1:7070`.
    pub address: String,
    pub bound: SocketAddr,
    pub admin_config: PathBuf,
    pub metrics: Option<SocketAddr>,
    /// The WebSocket gateway's URL, e.g. `wss://127.0.0.1:7072/`, when on.
    pub gateway: Option<String>,
}

/// An accepted connection: counted in the `busbar_connections` gauge while
/// open, and closed once the peer
/// has sent nothing for the idle timeout. Healthy peers answer the
/// keepalive pings the node sends every third of that, so the cut only
/// meets silent ones, above all one that finished its TLS handshake (or
/// connected without TLS) and never sent the HTTP/2 preface, which no
/// other timer covers.
struct CountedStream {
    inner: TcpStream,
    metrics: Arc<Metrics>,
    idle: Duration,
    last_read: tokio::time::Instant,
    /// Fires at the earliest moment the connection can have been idle too
    /// long; re-armed from `last_read` when it fires early, so a read costs
    /// one clock reading and no timer update.
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Tells the node when the connection closes.
    _open: Option<crate::node::connections::ConnectionGuard>,
}

impl CountedStream {
    fn new(
        inner: TcpStream,
        metrics: Arc<Metrics>,
        idle: Duration,
        connections: &Arc<crate::node::connections::Connections>,
    ) -> CountedStream {
        let now = tokio::time::Instant::now();
        let pair = inner.local_addr().ok().zip(inner.peer_addr().ok());
        CountedStream {
            _open: pair.map(|pair| connections.opened(pair)),
            inner,
            metrics,
            idle,
            last_read: now,
            deadline: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// Ready with an error once the peer has been silent for `idle`.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        while self.deadline.as_mut().poll(cx).is_ready() {
            let due = self.last_read + self.idle;
            if tokio::time::Instant::now() >= due {
                return Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer sent nothing for the idle timeout",
                ));
            }
            self.deadline.as_mut().reset(due);
        }
        Poll::Pending
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}

impl Connected for CountedStream {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.last_read = tokio::time::Instant::now();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
            other => other,
        }
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Connections the kernel may hold completed but not yet accepted. The
/// default (128) overflowed under bursts of new connections: the kernel
/// dropped the SYNs past it, and each such client waited a full second for
/// its retransmit (about one in 160 during a 10,000-connection run, so the
/// node seemed to accept only ~300 connections a second while idle). The
/// kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio's bind do: a restarted node can take its port back
    // while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A third of the idle timeout, at most 30 s.
fn keepalive_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 3).min(Duration::from_secs(30))
}

/// Connections accepted but not yet taken by the server. Each holds a
/// counted connection, so the connection limit bounds what waits here too.
const ACCEPTED_QUEUE: usize = 1024;

/// Accepts connections on the node's port: counts them against the limit,
/// and runs each one's handshake in its own task so a slow client delays
/// nobody else.
struct Acceptor {
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    connections: Arc<crate::node::connections::Connections>,
    max_connections: i64,
    idle: Duration,
}

impl Acceptor {
    /// Accepts until the returned stream is dropped (the server stopped),
    /// then closes the listening socket. `handshake` turns an accepted
    /// connection into what the server reads, or drops it.
    fn spawn<S, H, F>(self, handshake: H) -> impl futures::Stream<Item = std::io::Result<S>>
    where
        S: Send + 'static,
        H: Fn(CountedStream) -> F + Send + Sync + 'static,
        F: Future<Output = Option<S>> + Send + 'static,
    {
        let (ready, incoming) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE);
        let handshake = Arc::new(handshake);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = self.listener.accept() => accepted,
                    _ = ready.closed() => return,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of descriptors (EMFILE) or memory: retrying at
                        // once would spin a core, so accepting pauses briefly.
                        tracing::warn!(%error, "accepting a connection failed; pausing 100 ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Bounded: past the limit a new connection is closed at once, so
                // a flood of idle connections cannot exhaust memory or descriptors.
                if self.metrics.connections.get() >= self.max_connections {
                    if self.metrics.refused_connections.inc().is_multiple_of(1000) {
                        tracing::warn!(
                            max_connections = self.max_connections,
                            "connection limit reached; closing new connections"
                        );
                    }
                    continue;
                }
                let _ = stream.set_nodelay(true);
                self.metrics.connections.inc();
                let stream =
                    CountedStream::new(stream, self.metrics.clone(), self.idle, &self.connections);
                let (handshake, ready) = (handshake.clone(), ready.clone());
                // The handshake's future is made inside the task, not
                // captured by it, and the finished stream waits for a slot
                // rather than inside a send: the task's memory holds the
                // handshake or one copy of the stream, not both (a pending
                // connection cost 16 KiB the other way, 7 with tonic's TLS).
                tokio::spawn(async move {
                    if let Some(stream) = handshake(stream).await
                        && let Ok(slot) = ready.reserve().await
                    {
                        slot.send(Ok(stream));
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(incoming)
    }
}

/// How long a connection whose client certificate was refused is held open
/// (sending nothing, reading and discarding) so the client reads the alert.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// The TLS handshake of one connection, within `timeout` (so silent
/// connections cannot hold the connection limit).
async fn handshake(
    tls: &tokio_rustls::TlsAcceptor,
    stream: CountedStream,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<CountedStream>> {
    let (error, io) = match tokio::time::timeout(timeout, tls.accept(stream).into_fallible()).await
    {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(failed)) => failed,
        Err(_) => {
            tracing::debug!("a TLS handshake timed out");
            return None;
        }
    };
    // Only a failed handshake asks who the peer was.
    let peer = io.inner.peer_addr().ok();
    let refused_certificate = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        });
    if !refused_certificate {
        tracing::debug!(?peer, %error, "TLS handshake failed");
        return None;
    }
    // An operator wants to see who was turned away. In TLS 1.3 the client
    // has finished its side of the handshake and is already sending its
    // first bytes: closing now would answer them with a reset that can
    // destroy the alert (naming the reason) before the client reads it.
    // So the node says nothing more, ends its side, and drains a moment.
    tracing::info!(?peer, %error, "TLS handshake refused the client certificate");
    // Boxed, so the buffer it reads into costs only connections refused,
    // not every pending handshake's task.
    Box::pin(linger(io)).await;
    None
}

/// Ends the node's side of a refused connection and reads (discarding) what
/// the client still sends, for at most [`REFUSAL_LINGER`].
async fn linger(mut io: CountedStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let _ = io.shutdown().await;
        let mut sink = vec![0u8; 4096];
        while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::unavailable(format!("{what}: {e}"))
}

/// Runs a node until `shutdown` resolves, then announces SHUTTING_DOWN, keeps
/// serving for the grace period, ends open streams and returns. `on_started`
/// is called once the node accepts connections.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_started: impl FnOnce(&Started),
) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        Error::invalid_argument(format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let crate::cluster::Engines {
        store,
        queues,
        sql,
        timeseries,
        mesh: mesh_directory,
    } = crate::cluster::open_engines(&config).await?;
    let metrics = Arc::new(Metrics::default());
    let drops = metrics.slow_consumer_drops.clone();
    let local_bus = LocalBus::new().with_slow_consumer_hook(Arc::new(move |subject: &str| {
        let kind = if subject.starts_with("wire.") {
            "wire"
        } else {
            "room"
        };
        drops.get_or_create(&KindLabels { kind }).inc();
    }));
    let bus = crate::cluster::open_bus(&config, local_bus).await?;
    let access = AccessControl::new(store.clone(), bus.clone()).await;
    let auth = Arc::new(Authenticator::new(store.clone(), config.session_ttl).await?);
    let tls_material = if config.insecure {
        tracing::warn!(
            "serving PLAINTEXT (--insecure): credentials and data cross the network unencrypted"
        );
        None
    } else {
        if config.store.is_some() {
            tls::adopt_cluster_ca(&config.data_dir, store.as_ref()).await?;
        }
        Some(tls::ensure(&config.data_dir, &config.hostnames)?)
    };

    // TLS is done by the node rather than by tonic so the handshake can
    // check client certificates against the revoked set (tonic takes only a
    // CA). Built before listening, so a bad setting stops the start.
    let (certificates, tls_acceptor) = match &tls_material {
        Some(material) => {
            let certificates = Arc::new(
                tls::ClientCertificates::load(&config.data_dir, material, store.as_ref()).await?,
            );
            let rustls_config = tls::server_config(material, config.client_certs, &certificates)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(rustls_config));
            (Some(certificates), Some(acceptor))
        }
        None => (None, None),
    };

    let listener =
        listen(config.listen).map_err(io_error(format!("cannot listen on {}", config.listen)))?;
    let bound = listener
        .local_addr()
        .map_err(io_error("listener address".into()))?;
    let address = bootstrap::dial_address(bound, tls_material.is_some());
    let admin_config = bootstrap::ensure_admin(
        &config.data_dir,
        store.as_ref(),
        &auth,
        &address,
        tls_material.as_ref(),
        certificates
            .as_deref()
            .filter(|_| config.client_certs == crate::config::ClientCerts::Required),
        config.store.is_some(),
    )
    .await?;
    bootstrap::ensure_folders(store.as_ref()).await?;
    let metrics_listener = crate::metrics::bind(config.metrics_listen)
        .await
        .map_err(io_error(format!(
            "cannot listen for metrics on {:?} (use --metrics-listen off to disable)",
            config.metrics_listen
        )))?;
    let metrics_bound = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(listener) = metrics_listener {
        tokio::spawn(metrics.clone().serve(listener));
    }

    crate::sql::embedded::sandbox::limit_memory(config.sql_memory_bytes);
    let (lifecycle, _) = tokio::sync::watch::channel(Lifecycle::Serving);
    let node_id = uuid::Uuid::new_v4().to_string();
    // On a cluster, provider ids name their node, so they are unique in it.
    let provider_suffix = match &mesh_directory {
        Some(_) => format!("@{}", &node_id[..8]),
        None => String::new(),
    };
    let mesh_cluster = mesh_directory.map(|directory| {
        Arc::new(crate::mesh::cluster::MeshCluster::new(
            node_id.clone(),
            bus.clone(),
            directory,
            config.max_message_bytes,
        ))
    });
    let node = Arc::new(Node {
        store,
        bus,
        access: access.clone(),
        auth: auth.clone(),
        metrics: metrics.clone(),
        node_id,
        started: Instant::now(),
        started_ms: now_ms(),
        certificates: certificates.clone(),
        lifecycle,
        members: Default::default(),
        sql,
        timeseries,
        sessions: Arc::new(crate::sessions::DataSessions::new(
            config.data_session_idle,
            config.max_data_sessions,
        )),
        config: config.clone(),
        transport: queues,
        transport_waiters: Default::default(),
        connections: Default::default(),
        mesh: crate::mesh::Registry::new(
            crate::mesh::files::DescriptorFiles::own(&[
                busbar_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ])?,
            provider_suffix,
        ),
        mesh_cluster,
    });
    if let Some(cluster) = &node.mesh_cluster {
        cluster.start(&node).await;
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Health answers for the whole node ("") and for each busbar service by name.
    const SERVICES: [&str; 11] = [
        "busbar.v1.Transport",
        "busbar.v1.Mesh",
        crate::grpc::flight::SERVICE_NAME,
        "busbar.v1.Auth",
        "busbar.v1.Sessions",
        "busbar.v1.Sql",
        "busbar.v1.TimeSeries",
        "busbar.v1.Node",
        "busbar.v1.Resources",
        "busbar.v1.Rooms",
        "busbar.v1.Wires",
    ];
    for service in SERVICES {
        health_reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = crate::mesh::reflection::Reflection { node: node.clone() };
    let reflection_v1 =
        tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer::new(
            reflection.clone(),
        );
    let reflection_v1alpha =
        tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer::new(
            reflection,
        );

    let limit = config.max_message_bytes;
    use busbar_proto::v1::mesh_server::MeshServer;
    use busbar_proto::v1::transport_server::TransportServer;
    macro_rules! limited {
        ($server:ident, $service:expr) => {
            $server::new($service)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        };
    }
    let builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Pings keep a healthy connection's bytes coming well inside the
        // idle timeout (CountedStream).
        .http2_keepalive_interval(Some(keepalive_interval(config.idle_timeout)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(1024))
        // Streamed Arrow pieces arrive in few large frames rather than in
        // 16 KiB ones, each handled and flow-controlled on its own.
        .max_frame_size(Some(MAX_FRAME_BYTES))
        // Settings (config.rs): the defaults and why are in the README's
        // "How it behaves".
        .initial_stream_window_size(Some(config.stream_window_bytes))
        .initial_connection_window_size(Some(config.connection_window_bytes));
    let router = builder
        .layer(CallLayer {
            auth,
            access,
            metrics: metrics.clone(),
        })
        .layer(crate::mesh::MeshLayer { node: node.clone() })
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(limited!(AuthServer, AuthService { node: node.clone() }))
        .add_service(limited!(NodeServer, NodeService { node: node.clone() }))
        .add_service(limited!(
            ResourcesServer,
            ResourcesService { node: node.clone() }
        ))
        .add_service(rooms::router(
            RoomsService { node: node.clone() },
            limit,
            config.framing,
        ))
        .add_service(limited!(WiresServer, WiresService { node: node.clone() }))
        .add_service(limited!(
            TransportServer,
            crate::transport::service::TransportService { node: node.clone() }
        ))
        .add_service(limited!(
            MeshServer,
            crate::mesh::MeshService { node: node.clone() }
        ))
        .add_service(limited!(SqlServer, SqlService { node: node.clone() }))
        .add_service(limited!(
            SessionsServer,
            SessionsService { node: node.clone() }
        ))
        .add_service(timeseries::service::router(
            TimeSeriesService { node: node.clone() },
            limit,
            config.framing,
        ))
        .add_service(limited!(
            FlightServiceServer,
            BusbarFlight::new(node.clone())
        ));

    // Leases of popped transport messages go back to their queues as the
    // connection that popped them closes.
    let mut returns = node.connections.returns();
    let returner = node.clone();
    tokio::spawn(async move {
        while let Some(leases) = returns.recv().await {
            for lease in leases {
                // A lease settled already is simply not there any more.
                if returner
                    .transport
                    .nak(&lease.session, &lease.receipt)
                    .await
                    .is_ok()
                {
                    returner.wake_transport_session(&lease.session, false).await;
                }
            }
        }
    });

    // Idle data sessions are rolled back by one sweeper, a few times per timeout.
    let sweeper = node.sessions.clone();
    let sweep_every = (config.data_session_idle / 4).max(Duration::from_millis(250));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(sweep_every);
        loop {
            tick.tick().await;
            let sessions = sweeper.clone();
            let expired = tokio::task::spawn_blocking(move || sessions.expire())
                .await
                .unwrap_or(0);
            if expired > 0 {
                tracing::info!(expired, "rolled back idle data sessions");
            }
        }
    });

    // The WebSocket gateway: bound before the node says it started, so a
    // busy port stops the start as the other listeners do.
    let gateway = match &config.gateway {
        Some(settings) => {
            let listener = listen(settings.listen).map_err(io_error(format!(
                "cannot listen for the WebSocket gateway on {} (use --ws-listen off to disable)",
                settings.listen
            )))?;
            let bound = listener
                .local_addr()
                .map_err(io_error("gateway address".into()))?;
            // Browsers offer http/1.1 for WebSockets, and present no client
            // certificate: the gateway asks for none.
            let tls = match (&tls_material, &certificates) {
                (Some(material), Some(certificates)) => {
                    let mut rustls_config = tls::server_config(
                        material,
                        crate::config::ClientCerts::Off,
                        certificates,
                    )?;
                    rustls_config.alpn_protocols = vec![b"http/1.1".to_vec()];
                    Some(tokio_rustls::TlsAcceptor::from(Arc::new(rustls_config)))
                }
                _ => None,
            };
            let url = format!(
                "{}{}",
                bootstrap::dial_address(bound, tls.is_some())
                    .replacen("https://", "wss://", 1)
                    .replacen("http://", "ws://", 1),
                crate::gateway::PATH
            );
            let gateway = Arc::new(crate::gateway::Gateway {
                origins: settings.origins.clone().unwrap_or_else(|| {
                    crate::gateway::own_origins(bound, tls.is_some(), &config.hostnames)
                }),
                config: settings.clone(),
                node_address: address.clone(),
                ca_pem: tls_material.as_ref().map(|m| m.ca_pem.clone()),
                tls,
                max_message_bytes: config.max_message_bytes,
                handshake_timeout: config.handshake_timeout,
                idle_timeout: config.idle_timeout,
                metrics: metrics.clone(),
                lifecycle: node.lifecycle(),
                sockets: Arc::new(tokio::sync::Semaphore::new(settings.max_sockets)),
            });
            tokio::spawn(gateway.run(listener));
            Some(url)
        }
        None => None,
    };

    let acceptor = Acceptor {
        listener,
        metrics: metrics.clone(),
        connections: node.connections.clone(),
        max_connections: config.max_connections as i64,
        idle: config.idle_timeout,
    };
    tokio::spawn(node.clone().report_alive(address.clone()));
    if config.store.is_some() {
        tokio::spawn(node.clone().hear_transport_wakes());
    }
    on_started(&Started {
        address,
        bound,
        admin_config,
        metrics: metrics_bound,
        gateway,
    });
    tracing::info!(%bound, node_id = %node.node_id, "serving");

    let grace = config.grace_period;
    let stopping = node.clone();
    let graceful = async move {
        shutdown.await;
        tracing::info!(
            ?grace,
            "shutting down: announcing and serving out the grace period"
        );
        stopping.begin_shutdown();
        for service in std::iter::once("").chain(SERVICES) {
            health_reporter
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
        tokio::time::sleep(grace).await;
        stopping.stop();
    };
    let handshake_timeout = config.handshake_timeout;
    let served = async move {
        match tls_acceptor {
            Some(tls) => {
                let incoming = acceptor.spawn(move |stream| {
                    let tls = tls.clone();
                    async move { handshake(&tls, stream, handshake_timeout).await }
                });
                router
                    .serve_with_incoming_shutdown(incoming, graceful)
                    .await
            }
            None => {
                let incoming = acceptor.spawn(|stream| async move { Some(stream) });
                router
                    .serve_with_incoming_shutdown(incoming, graceful)
                    .await
            }
        }
        .map_err(|e| Error::internal(format!("server failed: {e}")))
    };
    // Connections that do not close within a few seconds of the stop are dropped.
    let mut lifecycle = node.lifecycle();
    let hard_stop = async move {
        let _ = lifecycle
            .wait_for(|state| *state == Lifecycle::Stopped)
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    tokio::select! {
        result = served => result?,
        _ = hard_stop => tracing::warn!("connections still open 3 s after stop; closing them"),
    }
    tracing::info!("stopped");
    Ok(())
}
