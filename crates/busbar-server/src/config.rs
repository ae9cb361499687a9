//! Server configuration. Sources, strongest first: command-line flags,
//! `BUSBAR_*` environment variables, the TOML file given with
//! `--config-file`, built-in defaults. Every value is checked at start and a
//! bad one stops the server with a message naming it.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings as they come from one source: everything optional. The TOML file
/// uses these names (unknown names are an error).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Data directory (default `./busbar-data`).
    pub data: Option<PathBuf>,
    /// Address to serve gRPC on (default `127.0.0.1:7070`; port 0 picks a free port).
    pub listen: Option<String>,
    /// Extra names and addresses for the server certificate.
    pub hostnames: Option<Vec<String>>,
    /// Serve plaintext instead of TLS.
    pub insecure: Option<bool>,
    /// Seconds the node keeps serving after announcing shutdown (default 5).
    pub grace_seconds: Option<f64>,
    /// Address of the Prometheus `/metrics` listener, or "off" (default `127.0.0.1:7071`).
    pub metrics_listen: Option<String>,
    /// Lifetime of a session token in seconds (default 900).
    pub session_ttl_seconds: Option<f64>,
    /// Events queued per room member before it is cut as a slow consumer (default 1024).
    pub room_queue: Option<usize>,
    /// Chunks queued per wire subscriber (default 64).
    pub wire_queue: Option<usize>,
    /// Seconds a publisher waits for a full wire subscriber before cutting it (default 10).
    pub wire_stall_seconds: Option<f64>,
    /// Largest accepted message in bytes (default 16 MiB).
    pub max_message_bytes: Option<usize>,
    /// Open client connections beyond which new ones are closed at once (default 16384).
    pub max_connections: Option<usize>,
    /// Seconds a data session may sit idle before it is rolled back (default 300).
    pub data_session_idle_seconds: Option<f64>,
    /// Open data sessions per node beyond which Open is refused (default 1024).
    pub max_data_sessions: Option<usize>,
    /// Seconds one SQL call may run before it is stopped with TIMEOUT,
    /// whatever deadline the caller set (default 60).
    pub max_statement_seconds: Option<f64>,
    /// Arrow bytes one SQL call may return before it fails with
    /// RESOURCE_EXHAUSTED (default 1 GiB).
    pub max_result_bytes: Option<usize>,
    /// Memory all SQL statements of the node may hold at once, SQLite's
    /// hard heap limit; past it a statement fails with RESOURCE_EXHAUSTED
    /// (default 2 GiB).
    pub sql_memory_bytes: Option<usize>,
    /// Seconds a client has to finish its TLS handshake before the
    /// connection is closed (default 10).
    pub handshake_timeout_seconds: Option<f64>,
    /// Seconds a connection may send nothing before it is closed (default
    /// 90). Healthy clients answer the node's keepalive pings, sent every
    /// third of this (at most every 30 s), so only silent peers meet it.
    pub idle_timeout_seconds: Option<f64>,
    /// Client certificates (mTLS): "optional" (the default: a client may
    /// present one the node's CA issued, and log in with it), "required"
    /// (every connection must present one) or "off" (none is asked for).
    pub client_certs: Option<String>,
    /// How the large `bytes` fields of time-series reads and the events of
    /// room joins are framed: "zero-copy" (the default: written to the
    /// connection without another copy, room events encoded once for all
    /// members) or "tonic" (every message encoded by tonic's generated
    /// server). A switch for measuring the trick and for ruling it out.
    pub framing: Option<String>,
    /// Microseconds the thread waiting for I/O polls for events before it
    /// sleeps (default 200; 0 turns it off). Waking a sleeping thread costs
    /// tens of microseconds on virtual machines, more than a short call; the
    /// window adapts, so a quiet node does not spin. See the README's "How
    /// it behaves".
    pub idle_spin_microseconds: Option<u64>,
    /// HTTP/2 flow-control window per stream: bytes a client may send on one
    /// call before the node has read them (default 1 MiB).
    pub stream_window_bytes: Option<usize>,
    /// HTTP/2 flow-control window per connection (default 16 MiB; at least
    /// the stream window). See the README's "How it behaves" for why it is
    /// 16 times hyper's default.
    pub connection_window_bytes: Option<usize>,
    /// A cluster's PostgreSQL for metadata (`postgres://USER[:PASSWORD]@HOST:PORT/DB`,
    /// `?sslmode=require` for TLS); with `bus`, this node joins the cluster
    /// that shares them. Absent: the embedded store under `data`.
    pub store: Option<String>,
    /// PEM file of the CA that signed PostgreSQL's certificate.
    pub store_ca: Option<PathBuf>,
    /// A cluster's NATS (`nats://[USER:PASSWORD@]HOST:PORT`, several
    /// separated by commas); goes with `store`.
    pub bus: Option<String>,
    /// PEM file of the CA that signed NATS's certificate (TLS to NATS).
    pub bus_ca: Option<PathBuf>,
    /// Address of the WebSocket gateway for browsers (docs/websocket.md),
    /// or "off" (default `127.0.0.1:7072`).
    pub ws_listen: Option<String>,
    /// Origins whose pages may open a gateway socket, e.g.
    /// `https://console.example.com:8443` (default: the gateway's own
    /// origins only: its address, and localhost and each hostname at its port).
    pub ws_origins: Option<Vec<String>>,
    /// Open gateway sockets beyond which new ones are refused (default 1024).
    pub ws_max_sockets: Option<usize>,
    /// Calls in flight on one gateway socket beyond which a new one is
    /// refused with RESOURCE_EXHAUSTED (default 256).
    pub ws_max_calls: Option<usize>,
    /// Bytes queued to one gateway socket; a producer waits while it is full
    /// (default 8 MiB).
    pub ws_queue_bytes: Option<usize>,
    /// Seconds the queue of a socket may stay full before the socket is cut
    /// as a slow consumer (default 10).
    pub ws_stall_seconds: Option<f64>,
    /// Seconds a gateway socket has to log in before it is closed (default 10).
    pub ws_login_timeout_seconds: Option<f64>,
}

impl Settings {
    /// Reads a TOML file of [`Settings`].
    pub fn from_file(path: &std::path::Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_argument(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text).map_err(|e| {
            Error::invalid_argument(format!("bad config file {}: {e}", path.display()))
        })
    }

    /// `self` where set, otherwise `weaker`.
    pub fn or(self, weaker: Settings) -> Settings {
        Settings {
            data: self.data.or(weaker.data),
            listen: self.listen.or(weaker.listen),
            hostnames: self.hostnames.or(weaker.hostnames),
            insecure: self.insecure.or(weaker.insecure),
            grace_seconds: self.grace_seconds.or(weaker.grace_seconds),
            metrics_listen: self.metrics_listen.or(weaker.metrics_listen),
            session_ttl_seconds: self.session_ttl_seconds.or(weaker.session_ttl_seconds),
            room_queue: self.room_queue.or(weaker.room_queue),
            wire_queue: self.wire_queue.or(weaker.wire_queue),
            wire_stall_seconds: self.wire_stall_seconds.or(weaker.wire_stall_seconds),
            max_message_bytes: self.max_message_bytes.or(weaker.max_message_bytes),
            max_connections: self.max_connections.or(weaker.max_connections),
            data_session_idle_seconds: self
                .data_session_idle_seconds
                .or(weaker.data_session_idle_seconds),
            max_data_sessions: self.max_data_sessions.or(weaker.max_data_sessions),
            max_statement_seconds: self.max_statement_seconds.or(weaker.max_statement_seconds),
            max_result_bytes: self.max_result_bytes.or(weaker.max_result_bytes),
            sql_memory_bytes: self.sql_memory_bytes.or(weaker.sql_memory_bytes),
            handshake_timeout_seconds: self
                .handshake_timeout_seconds
                .or(weaker.handshake_timeout_seconds),
            idle_timeout_seconds: self.idle_timeout_seconds.or(weaker.idle_timeout_seconds),
            client_certs: self.client_certs.or(weaker.client_certs),
            framing: self.framing.or(weaker.framing),
            idle_spin_microseconds: self
                .idle_spin_microseconds
                .or(weaker.idle_spin_microseconds),
            stream_window_bytes: self.stream_window_bytes.or(weaker.stream_window_bytes),
            connection_window_bytes: self
                .connection_window_bytes
                .or(weaker.connection_window_bytes),
            store: self.store.or(weaker.store),
            store_ca: self.store_ca.or(weaker.store_ca),
            ws_listen: self.ws_listen.or(weaker.ws_listen),
            ws_origins: self.ws_origins.or(weaker.ws_origins),
            ws_max_sockets: self.ws_max_sockets.or(weaker.ws_max_sockets),
            ws_max_calls: self.ws_max_calls.or(weaker.ws_max_calls),
            ws_queue_bytes: self.ws_queue_bytes.or(weaker.ws_queue_bytes),
            ws_stall_seconds: self.ws_stall_seconds.or(weaker.ws_stall_seconds),
            ws_login_timeout_seconds: self
                .ws_login_timeout_seconds
                .or(weaker.ws_login_timeout_seconds),
            bus: self.bus.or(weaker.bus),
            bus_ca: self.bus_ca.or(weaker.bus_ca),
        }
    }
}

/// Checked, complete configuration of one node.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub hostnames: Vec<String>,
    pub insecure: bool,
    pub grace_period: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub session_ttl: Duration,
    pub room_queue: usize,
    pub wire_queue: usize,
    pub wire_stall: Duration,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    pub data_session_idle: Duration,
    pub max_data_sessions: usize,
    pub max_statement: Duration,
    pub max_result_bytes: usize,
    pub sql_memory_bytes: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub client_certs: ClientCerts,
    pub framing: Framing,
    /// How long a wait for I/O polls before it sleeps (zero: it never does).
    pub idle_spin: Duration,
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
    /// PostgreSQL URL of a cluster's store (None: embedded).
    pub store: Option<String>,
    pub store_ca: Option<PathBuf>,
    /// NATS URL of a cluster's bus (None: in-process).
    pub bus: Option<String>,
    pub bus_ca: Option<PathBuf>,
    /// The WebSocket gateway (docs/websocket.md); `None`: off.
    pub gateway: Option<GatewayConfig>,
}

/// The WebSocket gateway's settings, checked.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Allowed `Origin`s as given; `None`: the gateway's own origins.
    pub origins: Option<Vec<String>>,
    pub max_sockets: usize,
    pub max_calls: usize,
    pub queue_bytes: usize,
    pub stall: Duration,
    pub login_timeout: Duration,
}

/// See [`Settings::framing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    ZeroCopy,
    Tonic,
}

impl Framing {
    fn parse(value: Option<&str>) -> Result<Framing> {
        match value.unwrap_or("zero-copy") {
            "zero-copy" => Ok(Framing::ZeroCopy),
            "tonic" => Ok(Framing::Tonic),
            other => Err(Error::invalid_argument(format!(
                "bad framing {other:?}: use zero-copy or tonic"
            ))),
        }
    }
}

/// Whether the TLS handshake asks for a client certificate (see
/// [`Settings::client_certs`]). A certificate that is presented must chain
/// to the node's CA, be in date and not be revoked, in every mode but `Off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    Off,
    Optional,
    Required,
}

impl ClientCerts {
    fn parse(value: Option<&str>, insecure: bool) -> Result<ClientCerts> {
        let mode = match value.unwrap_or("optional") {
            "off" => ClientCerts::Off,
            "optional" => ClientCerts::Optional,
            "required" => ClientCerts::Required,
            other => {
                return Err(Error::invalid_argument(format!(
                    "bad client_certs {other:?}: use optional, required or off"
                )));
            }
        };
        if insecure && mode == ClientCerts::Required {
            return Err(Error::invalid_argument(
                "client_certs = required needs TLS, and the node is set to serve plaintext (insecure)",
            ));
        }
        Ok(mode)
    }
}

/// `idle_spin_microseconds`: 200 (haltpoll's default) unless set; at most
/// the client's spin limit (beyond it a wait is not "soon", and spinning
/// only burns a core).
fn idle_spin(value: Option<u64>) -> Result<Duration> {
    let most = busbar_client::spin::MAX_LIMIT.as_micros() as u64;
    let micros = value.unwrap_or(busbar_client::spin::DEFAULT_LIMIT.as_micros() as u64);
    if micros > most {
        return Err(Error::invalid_argument(format!(
            "bad idle_spin_microseconds: {micros}; use 0 (off) to {most}"
        )));
    }
    Ok(Duration::from_micros(micros))
}

fn seconds(name: &str, value: Option<f64>, default: f64, min: f64, max: f64) -> Result<Duration> {
    let value = value.unwrap_or(default);
    if !value.is_finite() || value < min || value > max {
        return Err(Error::invalid_argument(format!(
            "bad {name}: {value}; use a number of seconds from {min} to {max}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

fn count(
    name: &str,
    value: Option<usize>,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize> {
    let value = value.unwrap_or(default);
    if value < min || value > max {
        return Err(Error::invalid_argument(format!(
            "bad {name}: {value}; use {min} to {max}"
        )));
    }
    Ok(value)
}

/// An allowed origin as browsers send it: `scheme://host[:port]`, no path,
/// lower case (an origin is compared as a whole).
fn gateway_origin(value: &str) -> Result<String> {
    let origin = value.trim().trim_end_matches('/').to_ascii_lowercase();
    let valid = (origin.starts_with("https://") || origin.starts_with("http://"))
        && origin.split_once("://").is_some_and(|(_, rest)| {
            !rest.is_empty() && !rest.contains(['/', '?', '#', '@', ' ', '*'])
        });
    if !valid {
        return Err(Error::invalid_argument(format!(
            "bad ws_origins entry {value:?}: use scheme://host[:port], e.g. https://console.example.com:8443"
        )));
    }
    Ok(origin)
}

fn address(name: &str, value: &str) -> Result<SocketAddr> {
    value.parse().map_err(|_| {
        Error::invalid_argument(format!(
            "bad {name}: {value:?}; use IP:PORT such as 127.0.0.1:7070 or [::1]:7070"
        ))
    })
}

impl ServerConfig {
    pub fn from_settings(settings: Settings) -> Result<ServerConfig> {
        let listen = address(
            "listen",
            settings.listen.as_deref().unwrap_or("127.0.0.1:7070"),
        )?;
        let metrics_listen = match settings
            .metrics_listen
            .as_deref()
            .unwrap_or("127.0.0.1:7071")
        {
            "off" | "" => None,
            value => Some(address("metrics_listen", value)?),
        };
        let hostnames = settings.hostnames.unwrap_or_default();
        for host in &hostnames {
            let valid = !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
            if !valid {
                return Err(Error::invalid_argument(format!(
                    "bad hostname {host:?}: use a DNS name or an IP address"
                )));
            }
        }
        let insecure = settings.insecure.unwrap_or(false);
        // HTTP/2's own default (65,535) is the floor; past 1 GiB one
        // connection could make the node hold more than any use needs.
        let stream_window_bytes = count(
            "stream_window_bytes",
            settings.stream_window_bytes,
            1 << 20,
            65_535,
            1 << 30,
        )?;
        // The connection window is 16 times hyper's 1 MiB default because h2
        // (0.4.20 on) closes a connection with ENHANCE_YOUR_CALM
        // ("too_many_data_frames") once the DATA frames under 256 B it holds
        // unread cost more than half the connection window, at 256 B a
        // frame. A client stream the node has stopped reading (a wire
        // publisher held back by a full subscriber) fills its stream window
        // with one frame per message: 64 B chunks, 71 B frames, 1 MiB in
        // about 14,800 frames, counted as 2.6 MiB; at 1 MiB the publisher's
        // whole connection was closed at 512 KiB. With 16 MiB (8 MiB counted)
        // one stalled stream of frames of 29 B or more stays within it.
        let connection_window_bytes = count(
            "connection_window_bytes",
            settings.connection_window_bytes,
            (16 << 20).max(stream_window_bytes),
            stream_window_bytes,
            1 << 30,
        )?;
        let store = settings.store.filter(|url| !url.is_empty());
        let bus = settings.bus.filter(|url| !url.is_empty());
        if store.is_some() != bus.is_some() {
            return Err(Error::invalid_argument(
                "store and bus go together: a cluster node needs both a PostgreSQL (--store) \
                 and a NATS (--bus); give neither for the embedded node",
            ));
        }
        if let Some(url) = &store
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(Error::invalid_argument(format!(
                "bad store {}: use postgres://USER@HOST:PORT/DATABASE",
                crate::cluster::redacted(url)
            )));
        }
        if let Some(url) = &bus
            && !url
                .split(',')
                .all(|one| one.starts_with("nats://") || one.starts_with("tls://"))
        {
            return Err(Error::invalid_argument(format!(
                "bad bus {}: use nats://HOST:PORT (or tls://), several separated by commas",
                crate::cluster::redacted(url)
            )));
        }
        let client_certs = ClientCerts::parse(settings.client_certs.as_deref(), insecure)?;
        let ws_listen = settings.ws_listen.as_deref();
        let gateway = match ws_listen.unwrap_or("127.0.0.1:7072") {
            "off" | "" => None,
            // A browser has no client certificate to present, and the
            // gateway's loopback calls would need one: the two exclude each
            // other, so the gateway is off unless asked for, and then refused.
            _ if client_certs == ClientCerts::Required && ws_listen.is_none() => None,
            _ if client_certs == ClientCerts::Required => {
                return Err(Error::invalid_argument(
                    "ws_listen needs client_certs optional or off: browsers present no \
                     client certificate (use --ws-listen off with --client-certs required)",
                ));
            }
            value => Some(GatewayConfig {
                listen: address("ws_listen", value)?,
                origins: match settings.ws_origins {
                    Some(origins) => Some(
                        origins
                            .into_iter()
                            .map(|origin| gateway_origin(&origin))
                            .collect::<Result<_>>()?,
                    ),
                    None => None,
                },
                max_sockets: count("ws_max_sockets", settings.ws_max_sockets, 1024, 1, 1 << 20)?,
                max_calls: count("ws_max_calls", settings.ws_max_calls, 256, 1, 1 << 16)?,
                queue_bytes: count(
                    "ws_queue_bytes",
                    settings.ws_queue_bytes,
                    8 << 20,
                    64 << 10,
                    1 << 30,
                )?,
                stall: seconds(
                    "ws_stall_seconds",
                    settings.ws_stall_seconds,
                    10.0,
                    0.01,
                    3600.0,
                )?,
                login_timeout: seconds(
                    "ws_login_timeout_seconds",
                    settings.ws_login_timeout_seconds,
                    10.0,
                    0.1,
                    600.0,
                )?,
            }),
        };
        Ok(ServerConfig {
            gateway,
            store,
            store_ca: settings.store_ca,
            bus,
            bus_ca: settings.bus_ca,
            stream_window_bytes: stream_window_bytes as u32,
            connection_window_bytes: connection_window_bytes as u32,
            client_certs,
            framing: Framing::parse(settings.framing.as_deref())?,
            idle_spin: idle_spin(settings.idle_spin_microseconds)?,
            data_dir: settings
                .data
                .unwrap_or_else(|| PathBuf::from("busbar-data")),
            listen,
            hostnames,
            insecure,
            grace_period: seconds("grace_seconds", settings.grace_seconds, 5.0, 0.0, 3600.0)?,
            metrics_listen,
            session_ttl: seconds(
                "session_ttl_seconds",
                settings.session_ttl_seconds,
                900.0,
                10.0,
                86_400.0,
            )?,
            room_queue: count("room_queue", settings.room_queue, 1024, 1, 1 << 20)?,
            wire_queue: count("wire_queue", settings.wire_queue, 64, 1, 1 << 16)?,
            wire_stall: seconds(
                "wire_stall_seconds",
                settings.wire_stall_seconds,
                10.0,
                0.01,
                3600.0,
            )?,
            max_message_bytes: count(
                "max_message_bytes",
                settings.max_message_bytes,
                16 << 20,
                1024,
                1 << 30,
            )?,
            max_connections: count(
                "max_connections",
                settings.max_connections,
                16_384,
                1,
                1 << 20,
            )?,
            data_session_idle: seconds(
                "data_session_idle_seconds",
                settings.data_session_idle_seconds,
                300.0,
                1.0,
                86_400.0,
            )?,
            max_data_sessions: count(
                "max_data_sessions",
                settings.max_data_sessions,
                1024,
                1,
                1 << 16,
            )?,
            max_statement: seconds(
                "max_statement_seconds",
                settings.max_statement_seconds,
                60.0,
                0.01,
                86_400.0,
            )?,
            max_result_bytes: count(
                "max_result_bytes",
                settings.max_result_bytes,
                1 << 30,
                1024,
                1 << 40,
            )?,
            sql_memory_bytes: count(
                "sql_memory_bytes",
                settings.sql_memory_bytes,
                2 << 30,
                64 << 20,
                1 << 40,
            )?,
            handshake_timeout: seconds(
                "handshake_timeout_seconds",
                settings.handshake_timeout_seconds,
                10.0,
                0.1,
                600.0,
            )?,
            idle_timeout: seconds(
                "idle_timeout_seconds",
                settings.idle_timeout_seconds,
                90.0,
                1.0,
                86_400.0,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_precedence() {
        let flags = Settings {
            listen: Some("127.0.0.1:9000".into()),
            ..Default::default()
        };
        let file: Settings =
            toml::from_str("listen = \"127.0.0.1:8000\"\ngrace_seconds = 2\n").unwrap();
        let config = ServerConfig::from_settings(flags.or(file)).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.grace_period, Duration::from_secs(2));
        assert_eq!(config.room_queue, 1024);
        assert_eq!(config.idle_spin, Duration::from_micros(200));
        assert!(!config.insecure);
    }

    #[test]
    fn bad_values_name_the_setting() {
        // Each as a TOML file would give it, so the keys are the documented ones.
        let cases = [
            ("listen = \"nowhere\"", "listen"),
            ("grace_seconds = -1.0", "grace_seconds"),
            ("room_queue = 0", "room_queue"),
            ("hostnames = [\"a b\"]", "hostname"),
            ("max_statement_seconds = 0.0", "max_statement_seconds"),
            ("max_result_bytes = 10", "max_result_bytes"),
            (
                "framing = \"fast\"",
                "bad framing \"fast\": use zero-copy or tonic",
            ),
            ("stream_window_bytes = 1024", "stream_window_bytes"),
            (
                "idle_spin_microseconds = 10001",
                "bad idle_spin_microseconds: 10001; use 0 (off) to 10000",
            ),
            ("ws_listen = \"nowhere\"", "ws_listen"),
            ("ws_origins = [\"https://a/b\"]", "bad ws_origins entry"),
            ("ws_queue_bytes = 10", "ws_queue_bytes"),
            (
                "client_certs = \"required\"\nws_listen = \"127.0.0.1:0\"",
                "ws_listen needs client_certs optional or off",
            ),
            ("store = \"postgres://u@h/db\"", "store and bus go together"),
            (
                "store = \"mysql://u:pw@h/db\"\nbus = \"nats://h:4222\"",
                "bad store mysql://u@h/db",
            ),
            (
                "stream_window_bytes = 4194304\nconnection_window_bytes = 1048576",
                "bad connection_window_bytes: 1048576; use 4194304 to",
            ),
        ];
        for (file, expected) in cases {
            let settings: Settings = toml::from_str(file).unwrap();
            let error = ServerConfig::from_settings(settings).unwrap_err().message;
            assert!(error.contains(expected), "{file}: {error}");
        }
        assert!(
            toml::from_str::<Settings>("lisen = 1").is_err(),
            "unknown keys are rejected"
        );
    }
}
