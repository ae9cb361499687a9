//! The async client. A [`Client`] is a cheap-to-clone handle: tonic's channel
//! task owns the HTTP/2 connection (and reconnects), and a session task in the
//! same runtime renews the session before it expires. Authentication happens
//! once per connection; calls carry the session token.

use crate::config::{ClientConfig, CredentialConfig};
use crate::error::{Error, ErrorCode, Result, TransportFailure};
use base64::Engine;
use busbar_proto::v1 as pb;
use ed25519_dalek::Signer;
use pb::{
    auth_client::AuthClient, node_client::NodeClient, resources_client::ResourcesClient,
    rooms_client::RoomsClient, wires_client::WiresClient,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, RwLock, Weak};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The largest HTTP/2 frame the client accepts (the protocol allows up to
/// 16 MiB; the default is 16 KiB).
const MAX_FRAME_BYTES: u32 = 1 << 20;

/// HTTP/2 flow-control windows of a connection's responses: how much the
/// node may send on one stream, and on the connection, before this client
/// has read it. The stream window is hyper's default; the connection window
/// is 32 MiB instead of 5 because h2 (0.4.20 on) closes a connection
/// (ENHANCE_YOUR_CALM, "too_many_data_frames") once the DATA frames under
/// 256 B it holds unread count for more than half the connection window, at
/// 256 B each. A subscriber that stops reading a wire fed one 64 B chunk at
/// a time holds one 71 B frame per chunk: with 5 MiB it closed its own
/// connection (every call on it) after about 14,500 chunks, before the
/// node's backpressure and `SLOW_CONSUMER` could apply. With 32 MiB (16 MiB
/// counted) a full 2 MiB stream of frames of 29 B or more stays inside it,
/// as do three such streams of 64 B chunks at once.
const STREAM_WINDOW_BYTES: u32 = 2 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// How to log in.
#[derive(Clone)]
pub enum Credential {
    Password {
        user: String,
        password: String,
    },
    Token(String),
    Key {
        name: String,
        key: ed25519_dalek::SigningKey,
    },
    /// The identity of the client certificate the connection presents
    /// (see [`ConnectOptions::certificate`]).
    Certificate,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Password { user, .. } => write!(f, "Password({user})"),
            Credential::Token(_) => write!(f, "Token(..)"),
            Credential::Key { name, .. } => write!(f, "Key({name})"),
            Credential::Certificate => write!(f, "Certificate"),
        }
    }
}

impl Credential {
    /// A key-pair credential from the private key as configs hold it:
    /// standard base64 of the 32-byte Ed25519 seed.
    pub fn key(name: impl Into<String>, private_key_base64: &str) -> Result<Credential> {
        let seed = base64::engine::general_purpose::STANDARD
            .decode(private_key_base64.trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| {
                Error::invalid_argument(
                    "bad private_key: expected standard base64 of a 32-byte Ed25519 seed",
                )
            })?;
        Ok(Credential::Key {
            name: name.into(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// A credential from a client config's `credential` section.
    pub fn from_config(config: &CredentialConfig) -> Result<Credential> {
        Ok(match config {
            CredentialConfig::Password { user, password } => Credential::Password {
                user: user.clone(),
                password: password.clone(),
            },
            CredentialConfig::Token { token } => Credential::Token(token.clone()),
            CredentialConfig::Key { name, private_key } => Credential::key(name, private_key)?,
            CredentialConfig::Certificate { .. } => Credential::Certificate,
        })
    }
}

/// A byte stream the client's TLS and HTTP/2 run over.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A future a connection runs in the background until it ends.
pub type BackgroundWork = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A connection's background work spawned somewhere else than on tokio: the
/// HTTP/2 connection task and the channel's buffer worker, and the socket
/// they run over (an event loop's own, for example).
pub trait Transport: Send + Sync + 'static {
    /// Wraps a connected TCP stream.
    fn wrap(&self, tcp: tokio::net::TcpStream) -> std::io::Result<Box<dyn Io>>;
    /// Runs a background future of the connection until it ends.
    fn spawn(&self, work: BackgroundWork);
}

#[derive(Clone)]
struct TransportExecutor(Arc<dyn Transport>);

impl hyper::rt::Executor<BackgroundWork> for TransportExecutor {
    fn execute(&self, work: BackgroundWork) {
        self.0.spawn(work)
    }
}

/// Everything needed to connect, on one builder.
#[derive(Clone)]
pub struct ConnectOptions {
    address: String,
    server_name: Option<String>,
    ca_pem: Option<String>,
    fingerprint: Option<String>,
    client_certificate: Option<crate::tls::ClientCertificate>,
    credential: Option<Credential>,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    connections: usize,
    more_addresses: Vec<String>,
    windows: (u32, u32),
    transport: Option<Arc<dyn Transport>>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field("timeout", &self.timeout)
            .field("connections", &self.connections)
            .field("transport", &self.transport.is_some())
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// Options for `address`: `https://host:port` (TLS; give a CA or a
    /// fingerprint) or `http://host:port` (plaintext, for `--insecure` nodes).
    pub fn new(address: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            address: address.into(),
            server_name: None,
            ca_pem: None,
            fingerprint: None,
            client_certificate: None,
            credential: None,
            timeout: None,
            connect_timeout: Duration::from_secs(10),
            connections: 1,
            more_addresses: Vec::new(),
            windows: (STREAM_WINDOW_BYTES, CONNECTION_WINDOW_BYTES),
            transport: None,
        }
    }

    /// More nodes of the same cluster, tried in turn after the address given
    /// to [`ConnectOptions::new`]: the client uses the first that answers and
    /// moves to the next when its connection is lost. Rooms rejoin and
    /// streams are opened again there as after a reconnect; a call in flight
    /// when the connection went fails (`UNAVAILABLE`).
    pub fn addresses(
        mut self,
        more: impl IntoIterator<Item = impl Into<String>>,
    ) -> ConnectOptions {
        self.more_addresses = more.into_iter().map(Into::into).collect();
        self
    }

    /// HTTP/2 flow-control windows: bytes the node may send on one call, and
    /// on one connection, before this client has read them (defaults 2 MiB
    /// and 32 MiB; `connect` refuses a stream window under 65,535, the
    /// HTTP/2 default, or a connection window under the stream window).
    pub fn windows(mut self, stream_bytes: u32, connection_bytes: u32) -> ConnectOptions {
        self.windows = (stream_bytes, connection_bytes);
        self
    }

    /// Runs the connection's background work and socket through `transport`.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> ConnectOptions {
        self.transport = Some(transport);
        self
    }

    /// Options from a client config (such as `admin.json`).
    pub fn from_config(config: &ClientConfig) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new(config.address.clone());
        options.more_addresses = config.addresses.clone();
        options.server_name = config.server_name.clone();
        options.ca_pem = config.ca_pem.clone();
        options.fingerprint = config.server_fingerprint_sha256.clone();
        options.credential = config
            .credential
            .as_ref()
            .map(Credential::from_config)
            .transpose()?;
        if let Some(presented) = &config.client_certificate {
            options =
                options.client_certificate(&presented.certificate_pem, &presented.private_key_pem);
        }
        if let Some(CredentialConfig::Certificate {
            certificate_pem,
            private_key_pem,
        }) = &config.credential
        {
            options = options.client_certificate(certificate_pem, private_key_pem);
        }
        Ok(options)
    }

    /// Trust servers whose certificate this CA (PEM) signed.
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Accept only the server certificate with this SHA-256 (hex).
    pub fn pin_fingerprint(mut self, sha256_hex: impl Into<String>) -> Self {
        self.fingerprint = Some(sha256_hex.into());
        self
    }

    /// Name to verify the certificate against (default: the address's host).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    pub fn password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credential = Some(Credential::Password {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.credential = Some(Credential::Token(token.into()));
        self
    }

    /// Logs in with `credential` (see [`Credential`]).
    pub fn credential(mut self, credential: Credential) -> Self {
        self.credential = Some(credential);
        self
    }

    pub fn key(mut self, name: impl Into<String>, key: ed25519_dalek::SigningKey) -> Self {
        self.credential = Some(Credential::Key {
            name: name.into(),
            key,
        });
        self
    }

    /// Logs in as the identity of a client certificate the node's CA issued
    /// (`busbar identity new NAME --cert`), presented in the TLS handshake.
    pub fn certificate(
        self,
        certificate_pem: impl Into<String>,
        private_key_pem: impl Into<String>,
    ) -> Self {
        let mut options = self.client_certificate(certificate_pem, private_key_pem);
        options.credential = Some(Credential::Certificate);
        options
    }

    /// Presents a client certificate in the TLS handshake without logging
    /// in with it: for a node started with `--client-certs required`, where
    /// a password, token or key then picks the identity.
    pub fn client_certificate(
        mut self,
        certificate_pem: impl Into<String>,
        private_key_pem: impl Into<String>,
    ) -> Self {
        self.client_certificate = Some(crate::tls::ClientCertificate {
            certificate_pem: certificate_pem.into(),
            private_key_pem: private_key_pem.into(),
        });
        self
    }

    /// Default deadline of every call (none by default); see [`Client::with_timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How many HTTP/2 connections to spread calls over (default 1, at most
    /// 64). One connection serialises its frames, so a client making many
    /// concurrent calls goes faster with a few; they share one session.
    pub fn connections(mut self, count: usize) -> Self {
        self.connections = count;
        self
    }

    /// How long to wait for the TCP, TLS and HTTP/2 handshakes (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub async fn connect(self) -> Result<Client> {
        Client::connect(self).await
    }
}

#[derive(Clone)]
struct SessionToken {
    header: MetadataValue<Ascii>,
    expires_ms: i64,
}

pub(crate) struct Inner {
    /// One HTTP/2 connection each (each with its own task that reconnects);
    /// calls take turns, because one connection serialises its writes.
    channels: Vec<Channel>,
    next_channel: AtomicUsize,
    credential: Option<Credential>,
    session: RwLock<Option<SessionToken>>,
    identity: RwLock<Option<pb::Identity>>,
    pub(crate) address: String,
    pub(crate) descriptors: crate::dynamic::DescriptorCache,
    /// The node said at login that it keeps idempotency keys (a cluster
    /// node): keyed writes whose outcome was lost may be sent again.
    keys_honoured: std::sync::atomic::AtomicBool,
}

/// Adds the session token and the deadline to every outgoing call.
#[derive(Clone)]
pub struct CallContext {
    inner: Arc<Inner>,
    timeout: Option<Duration>,
    trace_id: Option<MetadataValue<Ascii>>,
    metadata: Option<Arc<CallerMetadata>>,
}

/// Tries of a keyed write whose outcome was lost (see [`Client::keyed`]).
pub const KEYED_TRIES: u32 = 4;

/// `x-` metadata every call of a handle carries (see [`Client::with_metadata`]).
type CallerMetadata = Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)>;

impl tonic::service::Interceptor for CallContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        self.decorate(request.metadata_mut());
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        Ok(request)
    }
}

// Parsed once: a key given as `&str` is parsed and validated on every call.
static SESSION_KEY: LazyLock<MetadataKey<Ascii>> =
    LazyLock::new(|| MetadataKey::from_static(busbar_proto::SESSION_METADATA_KEY));
static TRACE_ID_KEY: LazyLock<MetadataKey<Ascii>> =
    LazyLock::new(|| MetadataKey::from_static(busbar_proto::TRACE_ID_METADATA_KEY));

impl CallContext {
    /// Adds the session token to a call's metadata.
    pub(crate) fn decorate(&self, metadata: &mut tonic::metadata::MetadataMap) {
        let session = self.inner.session.read().unwrap_or_else(|p| p.into_inner());
        if let Some(session) = session.as_ref() {
            metadata.insert(SESSION_KEY.clone(), session.header.clone());
        }
        if let Some(trace_id) = &self.trace_id {
            metadata.insert(TRACE_ID_KEY.clone(), trace_id.clone());
        }
        for (key, value) in self.metadata.iter().flat_map(|given| given.iter()) {
            metadata.insert(key.clone(), value.clone());
        }
    }
}

pub(crate) type Intercepted = InterceptedService<Channel, CallContext>;

/// A connection to a Busbar node. Clone it freely: clones share the connection.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) trace_id: Option<MetadataValue<Ascii>>,
    pub(crate) metadata: Option<Arc<CallerMetadata>>,
    /// The data session data calls run in (see [`crate::Session`]).
    pub(crate) data_session: Option<Arc<str>>,
}

impl Inner {
    /// The next connection in turn.
    pub(crate) fn channel(&self) -> Channel {
        let turn = self.next_channel.fetch_add(1, Ordering::Relaxed);
        self.channels[turn % self.channels.len()].clone()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.inner.address)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Explains the usual reasons a first call fails at the transport level,
/// from what the error's causes were (see [`TransportFailure`]).
/// One node a client may dial.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    address: String,
    tls: bool,
    host: String,
    port: u16,
}

impl Target {
    fn parse(given: &str) -> Result<Target> {
        let address = given.trim_end_matches('/').to_string();
        let bad = || {
            Error::invalid_argument(format!(
                "bad address {address:?}: use https://host:port or http://host:port"
            ))
        };
        let uri: http::Uri = address.parse().map_err(|_| bad())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let host = uri
            .host()
            .ok_or_else(|| Error::invalid_argument(format!("bad address {address:?}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target {
            address,
            tls,
            host,
            port,
        })
    }
}

/// Opens a connection's socket: to the node in use, or, when it does not
/// answer, to the next address in turn, which becomes the one in use
/// (a cluster's nodes serve the same world, and a session from one is
/// good on all). tonic dials again after a connection is lost, so a lost
/// node's calls move on by themselves.
struct Dialer {
    targets: Vec<Target>,
    current: AtomicUsize,
    connector: Option<tokio_rustls::TlsConnector>,
    server_name: Option<String>,
    transport: Option<Arc<dyn Transport>>,
    timeout: Duration,
}

impl Dialer {
    async fn dial(&self) -> std::io::Result<Box<dyn Io>> {
        let first = self.current.load(Ordering::Relaxed);
        let mut last_error = None;
        for step in 0..self.targets.len() {
            let index = (first + step) % self.targets.len();
            let attempt = tokio::time::timeout(self.timeout, self.dial_one(&self.targets[index]));
            match attempt.await {
                Ok(Ok(io)) => {
                    if index != first {
                        tracing::info!(address = %self.targets[index].address, "connected to the next node");
                    }
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(io);
                }
                Ok(Err(error)) => last_error = Some(error),
                Err(_) => {
                    last_error = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{} did not answer in time", self.targets[index].address),
                    ))
                }
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("no address to dial")))
    }

    async fn dial_one(&self, target: &Target) -> std::io::Result<Box<dyn Io>> {
        let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &self.transport {
            Some(transport) => transport.wrap(tcp)?,
            None => Box::new(tcp),
        };
        let Some(connector) = &self.connector else {
            return Ok(io);
        };
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| target.host.clone());
        let server_name = rustls::pki_types::ServerName::try_from(name)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let stream = connector.connect(server_name, io).await?;
        let stream = crate::tls::ReadAhead::first_bytes(stream).await?;
        Ok(Box::new(stream))
    }
}

fn connect_hint(error: Error, address: &str, tls: bool) -> Error {
    let Some(failure) = error.transport() else {
        return error;
    };
    let (code, hint) = match (failure, tls) {
        (TransportFailure::Refused, _) => (
            ErrorCode::Unavailable,
            "nothing listens there: is `busbar serve` running, and is the address right?",
        ),
        // Something accepted the connection (or the packets went nowhere)
        // and no TLS or HTTP/2 answer came in time.
        (TransportFailure::TimedOut, _) => (
            ErrorCode::Timeout,
            "no answer within the connect timeout; is the address that of a Busbar node, and does the network let the packets through?",
        ),
        (TransportFailure::UntrustedServer, _) => (
            ErrorCode::Unavailable,
            "the server's certificate is not trusted: use the CA and fingerprint from the node's admin.json",
        ),
        (TransportFailure::NotTls, _) => (
            ErrorCode::Unavailable,
            "TLS handshake failed: the server may be plaintext (started with --insecure); connect with http://",
        ),
        (TransportFailure::Broken, false) => (
            ErrorCode::Unavailable,
            "the server closed the plaintext HTTP/2 connection: it probably requires TLS (the default); connect with https:// and the CA from its admin.json",
        ),
        (TransportFailure::Broken, true) => {
            return Error::new(
                error.code(),
                format!("cannot reach {address}: {}", error.message()),
            );
        }
    };
    Error::new(
        code,
        format!("cannot reach {address}: {hint} ({})", error.message()),
    )
}

impl Client {
    /// Connects and, when the options hold a credential, logs in.
    pub async fn connect(options: ConnectOptions) -> Result<Client> {
        if !(1..=64).contains(&options.connections) {
            return Err(Error::invalid_argument(format!(
                "bad connections {}: use 1 to 64",
                options.connections
            )));
        }
        let (stream_window, connection_window) = options.windows;
        if !(65_535..=1 << 30).contains(&stream_window)
            || !(stream_window..=1 << 30).contains(&connection_window)
        {
            return Err(Error::invalid_argument(format!(
                "bad windows ({stream_window}, {connection_window}): use a stream window of \
                 65535 to 1073741824 bytes and a connection window from it to 1073741824"
            )));
        }
        if options.address.is_empty() && options.more_addresses.is_empty() {
            return Err(Error::invalid_argument(
                "no address: give one (https://host:port) or a list of a cluster's nodes",
            ));
        }
        let mut targets: Vec<Target> = Vec::new();
        for given in std::iter::once(&options.address)
            .chain(&options.more_addresses)
            .filter(|a| !a.is_empty())
        {
            let target = Target::parse(given)?;
            if targets.first().is_some_and(|first| first.tls != target.tls) {
                return Err(Error::invalid_argument(format!(
                    "bad address {given:?}: a client's addresses are all https:// or all http://"
                )));
            }
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        let tls = targets[0].tls;
        let address = targets[0].address.clone();
        let attempts = targets.len() as u32;
        let mut endpoint =
            Endpoint::from_shared(format!("http://{}:{}", targets[0].host, targets[0].port))
                .map_err(|e| Error::invalid_argument(format!("bad address {address:?}: {e}")))?
                // Each address gets the whole connect timeout in turn.
                .connect_timeout(options.connect_timeout * attempts)
                .tcp_nodelay(true)
                // Large streamed messages (Arrow pieces) arrive in few frames,
                // instead of 64 frames of 16 KiB per MiB, each handled and
                // flow-controlled on its own.
                .max_frame_size(MAX_FRAME_BYTES)
                .initial_stream_window_size(stream_window)
                .initial_connection_window_size(connection_window)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                // A call the application stops (its deadline passed, its
                // stream dropped) is reset while the node may still be
                // answering it. h2 ignores frames for streams it remembers
                // as reset and counts any others against the node, closing
                // the connection after 1024 of them; by default it
                // remembers 50 for 1 s, which bursts of cancellations
                // outrun. Remembering more for longer keeps ordinary
                // cancelling from ever costing the connection.
                .http2_max_concurrent_reset_streams(1024)
                .http2_reset_stream_duration(Duration::from_secs(30));
        if let Some(transport) = &options.transport {
            endpoint = endpoint.executor(TransportExecutor(transport.clone()));
        }
        let connector = if tls {
            let config = crate::tls::client_config(
                options.ca_pem.as_deref(),
                options.fingerprint.as_deref(),
                options.client_certificate.as_ref(),
            )?;
            if let Some(name) = &options.server_name {
                rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| Error::invalid_argument(format!("bad server name {name:?}")))?;
            }
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        let dialer = Arc::new(Dialer {
            targets,
            current: AtomicUsize::new(0),
            connector,
            server_name: options.server_name.clone(),
            transport: options.transport.clone(),
            timeout: options.connect_timeout,
        });
        let dial = tower::service_fn(move |_: http::Uri| {
            let dialer = dialer.clone();
            async move { dialer.dial().await.map(hyper_util::rt::TokioIo::new) }
        });
        let channels: Vec<Channel> = (0..options.connections)
            .map(|_| endpoint.connect_with_connector_lazy(dial.clone()))
            .collect();
        let inner = Arc::new(Inner {
            channels,
            next_channel: AtomicUsize::new(0),
            credential: options.credential,
            session: RwLock::new(None),
            identity: RwLock::new(None),
            address: address.clone(),
            descriptors: Default::default(),
            keys_honoured: Default::default(),
        });
        let client = Client {
            inner,
            timeout: options.timeout,
            trace_id: None,
            metadata: None,
            data_session: None,
        };
        if client.inner.credential.is_some() {
            client
                .login()
                .await
                .map_err(|e| connect_hint(e, &address, tls))?;
            tokio::spawn(keep_session(Arc::downgrade(&client.inner)));
        } else {
            client
                .status()
                .await
                .map_err(|e| connect_hint(e, &address, tls))?;
        }
        Ok(client)
    }

    /// Connects with a client config file such as `admin.json`.
    pub async fn from_config_file(path: impl AsRef<std::path::Path>) -> Result<Client> {
        let config = ClientConfig::from_file(path)?;
        ConnectOptions::from_config(&config)?.connect().await
    }

    /// A handle whose calls have `timeout` as their deadline; the server stops
    /// working on a call whose deadline passed and the call fails with TIMEOUT.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            timeout: Some(timeout),
            ..self.clone()
        }
    }

    /// A handle whose calls carry `trace_id` (1 to 64 visible ASCII
    /// characters) in `x-trace-id`; the server logs it with the call. Without
    /// one, the server generates a trace id per call.
    pub fn with_trace_id(&self, trace_id: &str) -> Result<Client> {
        let valid = !trace_id.is_empty()
            && trace_id.len() <= 64
            && trace_id.bytes().all(|b| b.is_ascii_graphic());
        let value = MetadataValue::try_from(trace_id)
            .ok()
            .filter(|_| valid)
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "bad trace id {trace_id:?}: use 1 to 64 visible ASCII characters"
                ))
            })?;
        Ok(Client {
            trace_id: Some(value),
            ..self.clone()
        })
    }

    /// A handle whose calls carry `metadata`: keys that start with `x-`
    /// (lower case letters, digits, `-`, `_` and `.`; at most 16 pairs),
    /// values of visible ASCII and spaces, at most 1 KiB each. A mesh
    /// provider's handler sees them; `x-busbar-` keys are the node's own.
    pub fn with_metadata<K, V>(&self, metadata: impl IntoIterator<Item = (K, V)>) -> Result<Client>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut pairs = CallerMetadata::new();
        for (key, value) in metadata {
            let (key, value) = (key.as_ref(), value.as_ref());
            let key_ok = key.len() > 2
                && key.starts_with("x-")
                && !key.starts_with("x-busbar-")
                && key != busbar_proto::TRACE_ID_METADATA_KEY
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            let parsed_key = MetadataKey::from_bytes(key.as_bytes())
                .ok()
                .filter(|_| key_ok);
            let value_ok =
                value.len() <= 1024 && value.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
            let parsed_value = MetadataValue::try_from(value).ok().filter(|_| value_ok);
            match (parsed_key, parsed_value) {
                (Some(key), Some(value)) => pairs.push((key, value)),
                (None, _) => {
                    return Err(Error::invalid_argument(format!(
                        "bad metadata key {key:?}: use x- and lower case letters, digits, '-', '_' or '.' (not x-busbar- or x-trace-id)"
                    )));
                }
                (_, None) => {
                    return Err(Error::invalid_argument(format!(
                        "bad metadata value for {key}: use at most 1024 visible ASCII characters or spaces"
                    )));
                }
            }
        }
        if pairs.len() > 16 {
            return Err(Error::invalid_argument(format!(
                "{} metadata pairs: at most 16",
                pairs.len()
            )));
        }
        Ok(Client {
            metadata: (!pairs.is_empty()).then(|| Arc::new(pairs)),
            ..self.clone()
        })
    }

    /// A handle whose writes carry `key` as their idempotency key, instead
    /// of one made per call: for a program that keeps the key of a write
    /// and sends the write again after it restarts. On a cluster the write
    /// is applied once whichever node gets it, and every later send with
    /// the key answers with the first outcome (keys are kept for a day);
    /// the same key with a different request is refused. Use a new key for
    /// each write: letters, digits, `-` and `_`, 1 to 128 of them.
    pub fn with_idempotency_key(&self, key: &str) -> Result<Client> {
        if !busbar_proto::is_idempotency_key(key) {
            return Err(Error::invalid_argument(format!(
                "bad idempotency key {key:?}: use 1 to 128 letters, digits, - and _"
            )));
        }
        Ok(self.keyed_by(key))
    }

    fn keyed_by(&self, key: &str) -> Client {
        let mut pairs: CallerMetadata = self.metadata.as_deref().cloned().unwrap_or_default();
        pairs.retain(|(name, _)| name != busbar_proto::IDEMPOTENCY_KEY_METADATA_KEY);
        pairs.push((
            MetadataKey::from_static(busbar_proto::IDEMPOTENCY_KEY_METADATA_KEY),
            MetadataValue::try_from(key).expect("checked keys are metadata"),
        ));
        Client {
            metadata: Some(Arc::new(pairs)),
            ..self.clone()
        }
    }

    /// The address this client dials.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The logged-in identity, as of the last login or refresh.
    pub fn identity(&self) -> Option<pb::Identity> {
        self.inner
            .identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn context(&self) -> CallContext {
        CallContext {
            inner: self.inner.clone(),
            timeout: self.timeout,
            trace_id: self.trace_id.clone(),
            metadata: self.metadata.clone(),
        }
    }

    /// A connection in turn with this client's call context, for calls
    /// made below tonic's generated clients (`crate::pieces`).
    pub(crate) fn intercepted(&self) -> Intercepted {
        InterceptedService::new(self.inner.channel(), self.context())
    }

    pub(crate) fn auth_client(&self) -> AuthClient<Intercepted> {
        AuthClient::with_interceptor(self.inner.channel(), self.context())
            .max_decoding_message_size(usize::MAX)
    }
    pub(crate) fn node_client(&self) -> NodeClient<Intercepted> {
        NodeClient::with_interceptor(self.inner.channel(), self.context())
    }
    pub(crate) fn resources_client(&self) -> ResourcesClient<Intercepted> {
        ResourcesClient::with_interceptor(self.inner.channel(), self.context())
            .max_decoding_message_size(usize::MAX)
    }
    pub(crate) fn rooms_client(&self) -> RoomsClient<Intercepted> {
        RoomsClient::with_interceptor(self.inner.channel(), self.context())
            .max_decoding_message_size(usize::MAX)
    }
    pub(crate) fn transport_client(&self) -> pb::transport_client::TransportClient<Intercepted> {
        pb::transport_client::TransportClient::with_interceptor(
            self.inner.channel(),
            self.context(),
        )
        .max_decoding_message_size(usize::MAX)
    }

    pub(crate) fn mesh_client(&self) -> pb::mesh_client::MeshClient<Intercepted> {
        pb::mesh_client::MeshClient::with_interceptor(self.inner.channel(), self.context())
            .max_decoding_message_size(usize::MAX)
    }

    pub(crate) fn wires_client(&self) -> WiresClient<Intercepted> {
        WiresClient::with_interceptor(self.inner.channel(), self.context())
            .max_decoding_message_size(usize::MAX)
    }

    fn store_session(&self, session: pb::Session) -> Result<()> {
        let header = MetadataValue::try_from(session.token.as_str()).map_err(|_| {
            Error::new(
                ErrorCode::Internal,
                "the server sent an unusable session token",
            )
        })?;
        *self
            .inner
            .session
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(SessionToken {
            header,
            expires_ms: session.expires_ms,
        });
        *self
            .inner
            .identity
            .write()
            .unwrap_or_else(|p| p.into_inner()) = session.identity;
        Ok(())
    }

    /// Logs in again with the connection's credential.
    pub async fn login(&self) -> Result<()> {
        let credential = self.inner.credential.clone().ok_or_else(|| {
            Error::invalid_argument("this client has no credential to log in with")
        })?;
        let mut auth = AuthClient::new(self.inner.channel());
        let credential = match credential {
            Credential::Password { user, password } => {
                pb::login_request::Credential::Password(pb::PasswordCredential { user, password })
            }
            Credential::Token(token) => pb::login_request::Credential::Token(token),
            Credential::Key { name, key } => {
                let challenge = auth
                    .challenge(pb::ChallengeRequest { name: name.clone() })
                    .await?
                    .into_inner();
                let signature = key.sign(&challenge.nonce).to_bytes().to_vec();
                pb::login_request::Credential::Key(pb::KeyCredential {
                    name,
                    nonce: challenge.nonce,
                    signature: signature.into(),
                })
            }
            Credential::Certificate => {
                pb::login_request::Credential::Certificate(pb::CertificateCredential {})
            }
        };
        let mut request = tonic::Request::new(pb::LoginRequest {
            credential: Some(credential),
        });
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        let response = auth.login(request).await?;
        let honoured = response
            .metadata()
            .contains_key(busbar_proto::IDEMPOTENCY_HONOURED_METADATA_KEY);
        self.inner.keys_honoured.store(honoured, Ordering::Relaxed);
        self.store_session(response.into_inner())
    }

    /// Runs a write that may be sent more than once: with a key made once
    /// for it (`x-busbar-idempotency-key`), and, when its outcome is lost
    /// with the connection (or no node could be reached), again with the
    /// same key, up to [`KEYED_TRIES`] tries with jittered backoff, on
    /// whichever node the client reaches next. A node that keeps keys (a
    /// cluster node) applies it once and answers each try with the first
    /// outcome. Against a node that does not, and in a data session (which
    /// lives on one node), the call is made once: a lost outcome stays
    /// UNAVAILABLE, saying it is unknown.
    pub(crate) async fn keyed<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let honoured = self.inner.keys_honoured.load(Ordering::Relaxed);
        let given = self.metadata.as_deref().is_some_and(|pairs| {
            pairs
                .iter()
                .any(|(key, _)| key == busbar_proto::IDEMPOTENCY_KEY_METADATA_KEY)
        });
        // A node that keeps no keys (an embedded one) gets none made for it,
        // and a session's calls are never sent twice.
        if self.data_session.is_some() || !(honoured || given) {
            return call(self.clone()).await;
        }
        let keyed = if given {
            self.clone()
        } else {
            self.keyed_by(&uuid::Uuid::new_v4().simple().to_string())
        };
        keyed.tried(honoured, call).await
    }

    /// Runs a call that is safe to send again as it is: a read, or a write
    /// that sets rather than adds (a grant, a password, `ensure`). Like a
    /// keyed write, it is sent again when its outcome is lost with the
    /// connection or no node could be reached, on whichever node the
    /// client reaches next, on a cluster and outside a data session.
    pub(crate) async fn repeatable<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let cluster = self.inner.keys_honoured.load(Ordering::Relaxed);
        self.tried(cluster && self.data_session.is_none(), call)
            .await
    }

    /// `call` with this client, sent again (when `again` allows) while its
    /// outcome is lost or no node answers, up to [`KEYED_TRIES`] tries with
    /// jittered backoff.
    async fn tried<T, F, Fut>(&self, again: bool, call: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut backoff = Duration::from_millis(100);
        for tries in 1.. {
            let result = call(self.clone()).await;
            let lost = match &result {
                Err(error) => error.may_retry_keyed(),
                Ok(_) => false,
            };
            if !lost || tries >= KEYED_TRIES || !again {
                return result;
            }
            tokio::time::sleep(crate::rooms::jittered(backoff)).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        unreachable!("the loop returns")
    }

    /// Renews the session now (the client also does this on its own).
    pub async fn refresh(&self) -> Result<()> {
        let session = self
            .auth_client()
            .refresh(pb::RefreshRequest {})
            .await?
            .into_inner();
        self.store_session(session)
    }

    fn session_expires_ms(&self) -> Option<i64> {
        self.inner
            .session
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.expires_ms)
    }
}

/// Renews the session at two thirds of its life; if renewal fails (e.g. the
/// node restarted with new keys), logs in again, backing off up to 30 s.
/// Ends when the last `Client` handle is dropped.
async fn keep_session(inner: Weak<Inner>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = {
            let Some(inner) = inner.upgrade() else { return };
            let client = Client {
                inner,
                timeout: None,
                trace_id: None,
                metadata: None,
                data_session: None,
            };
            let remaining = client.session_expires_ms().unwrap_or(0) - now_ms();
            Duration::from_millis((remaining.max(0) as u64) / 3 * 2).max(Duration::from_millis(500))
        };
        tokio::time::sleep(wait).await;
        let Some(inner) = inner.upgrade() else { return };
        let client = Client {
            inner,
            timeout: Some(Duration::from_secs(30)),
            trace_id: None,
            metadata: None,
            data_session: None,
        };
        let renewed = match client.refresh().await {
            Ok(()) => Ok(()),
            Err(_) => client.login().await,
        };
        match renewed {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(error) => {
                tracing::warn!(%error, "renewing the busbar session failed; retrying");
                drop(client);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn windows_out_of_range_are_refused_before_dialling() {
        // Port 1 on loopback: a dial would fail with UNAVAILABLE, not this.
        let options = ConnectOptions::new("http://127.0.0.1:1");
        for (stream, connection) in [(1024, 1 << 20), (1 << 20, 65_535), (1 << 31, 1 << 31)] {
            let error = options
                .clone()
                .windows(stream, connection)
                .connect()
                .await
                .unwrap_err();
            assert_eq!(error.code(), ErrorCode::InvalidArgument, "{error}");
            assert!(error.message().contains("bad windows"), "{error}");
        }
    }
}
