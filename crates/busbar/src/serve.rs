//! `busbar serve`.

use busbar_server::Settings;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Data directory [default: ./busbar-data]
    #[arg(long, env = "BUSBAR_DATA")]
    data: Option<PathBuf>,
    /// Address to serve on [default: 127.0.0.1:7070; port 0 picks a free one]
    #[arg(long, env = "BUSBAR_LISTEN")]
    listen: Option<String>,
    /// Extra certificate names (DNS names or IPs); repeat or comma-separate.
    #[arg(long = "hostname", env = "BUSBAR_HOSTNAMES", value_delimiter = ',')]
    hostnames: Vec<String>,
    /// Serve plaintext instead of TLS (logs a warning).
    #[arg(long, env = "BUSBAR_INSECURE")]
    insecure: bool,
    /// Seconds to keep serving after announcing shutdown [default: 5]
    #[arg(long = "grace", env = "BUSBAR_GRACE_SECONDS")]
    grace_seconds: Option<f64>,
    /// Prometheus /metrics listener, or "off" [default: 127.0.0.1:7071]
    #[arg(long, env = "BUSBAR_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Events queued per room member before it is cut [default: 1024]
    #[arg(long, env = "BUSBAR_ROOM_QUEUE")]
    room_queue: Option<usize>,
    /// Chunks queued per wire subscriber [default: 64]
    #[arg(long, env = "BUSBAR_WIRE_QUEUE")]
    wire_queue: Option<usize>,
    /// Seconds a wire publisher waits on a full subscriber before cutting it [default: 10]
    #[arg(long = "wire-stall", env = "BUSBAR_WIRE_STALL_SECONDS")]
    wire_stall_seconds: Option<f64>,
    /// Largest accepted message in bytes [default: 16777216]
    #[arg(long, env = "BUSBAR_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Open connections beyond which new ones are closed at once [default: 16384]
    #[arg(long, env = "BUSBAR_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Session lifetime in seconds [default: 900]
    #[arg(long = "session-ttl", env = "BUSBAR_SESSION_TTL_SECONDS")]
    session_ttl_seconds: Option<f64>,
    /// Seconds an idle data session lives before it is rolled back [default: 300]
    #[arg(long = "data-session-idle", env = "BUSBAR_DATA_SESSION_IDLE_SECONDS")]
    data_session_idle_seconds: Option<f64>,
    /// Open data sessions beyond which new ones are refused [default: 1024]
    #[arg(long, env = "BUSBAR_MAX_DATA_SESSIONS")]
    max_data_sessions: Option<usize>,
    /// Seconds one SQL call may run before it is stopped, whatever its deadline [default: 60]
    #[arg(long, env = "BUSBAR_MAX_STATEMENT_SECONDS")]
    max_statement_seconds: Option<f64>,
    /// Arrow bytes one SQL call may return [default: 1073741824]
    #[arg(long, env = "BUSBAR_MAX_RESULT_BYTES")]
    max_result_bytes: Option<usize>,
    /// Memory all SQL statements may hold at once (SQLite's heap limit) [default: 2147483648]
    #[arg(long, env = "BUSBAR_SQL_MEMORY_BYTES")]
    sql_memory_bytes: Option<usize>,
    /// HTTP/2 window per call: bytes a client may send before the node reads them [default: 1048576]
    #[arg(long, env = "BUSBAR_STREAM_WINDOW_BYTES")]
    stream_window_bytes: Option<usize>,
    /// HTTP/2 window per connection, at least the stream window [default: 16777216]
    #[arg(long, env = "BUSBAR_CONNECTION_WINDOW_BYTES")]
    connection_window_bytes: Option<usize>,
    /// A cluster's PostgreSQL for metadata: postgres://USER[:PASSWORD]@HOST:PORT/DB (with --bus)
    #[arg(long, env = "BUSBAR_STORE")]
    store: Option<String>,
    /// PEM file of the CA of PostgreSQL's certificate (with sslmode=require)
    #[arg(long, env = "BUSBAR_STORE_CA")]
    store_ca: Option<std::path::PathBuf>,
    /// A cluster's NATS: nats://HOST:PORT, several separated by commas (with --store)
    #[arg(long, env = "BUSBAR_BUS")]
    bus: Option<String>,
    /// PEM file of the CA of NATS's certificate (TLS to NATS)
    #[arg(long, env = "BUSBAR_BUS_CA")]
    bus_ca: Option<std::path::PathBuf>,
    /// Seconds a client has to finish its TLS handshake [default: 10]
    #[arg(long = "handshake-timeout", env = "BUSBAR_HANDSHAKE_TIMEOUT_SECONDS")]
    handshake_timeout_seconds: Option<f64>,
    /// Seconds a connection may send nothing (not even a keepalive answer) before it is closed [default: 90]
    #[arg(long = "idle-timeout", env = "BUSBAR_IDLE_TIMEOUT_SECONDS")]
    idle_timeout_seconds: Option<f64>,
    /// Client certificates (mTLS): optional, required or off [default: optional]
    #[arg(long, env = "BUSBAR_CLIENT_CERTS")]
    client_certs: Option<String>,
    /// Framing of time-series reads and room events: zero-copy or tonic [default: zero-copy]
    #[arg(long, env = "BUSBAR_FRAMING")]
    framing: Option<String>,
    /// Microseconds a wait for I/O polls before it sleeps; 0 turns it off [default: 200]
    #[arg(long, env = "BUSBAR_IDLE_SPIN_MICROSECONDS")]
    idle_spin_microseconds: Option<u64>,
    /// WebSocket gateway for browsers (docs/websocket.md), or "off" [default: 127.0.0.1:7072]
    #[arg(long, env = "BUSBAR_WS_LISTEN")]
    ws_listen: Option<String>,
    /// Origins whose pages may open gateway sockets; repeat or comma-separate [default: the gateway's own]
    #[arg(long = "ws-origins", env = "BUSBAR_WS_ORIGINS", value_delimiter = ',')]
    ws_origins: Vec<String>,
    /// Open gateway sockets beyond which new ones are refused [default: 1024]
    #[arg(long, env = "BUSBAR_WS_MAX_SOCKETS")]
    ws_max_sockets: Option<usize>,
    /// Calls in flight per gateway socket [default: 256]
    #[arg(long, env = "BUSBAR_WS_MAX_CALLS")]
    ws_max_calls: Option<usize>,
    /// Bytes queued to one gateway socket before its calls wait [default: 8388608]
    #[arg(long, env = "BUSBAR_WS_QUEUE_BYTES")]
    ws_queue_bytes: Option<usize>,
    /// Seconds a gateway socket's queue may stay full before it is cut [default: 10]
    #[arg(long = "ws-stall", env = "BUSBAR_WS_STALL_SECONDS")]
    ws_stall_seconds: Option<f64>,
    /// Seconds a gateway socket has to log in [default: 10]
    #[arg(long = "ws-login-timeout", env = "BUSBAR_WS_LOGIN_TIMEOUT_SECONDS")]
    ws_login_timeout_seconds: Option<f64>,
    /// TOML file with the same settings (flags and BUSBAR_* variables win).
    #[arg(long, env = "BUSBAR_CONFIG_FILE")]
    config_file: Option<PathBuf>,
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn run(args: ServeArgs) -> Result<(), String> {
    let from_flags = Settings {
        data: args.data,
        listen: args.listen,
        hostnames: (!args.hostnames.is_empty()).then_some(args.hostnames),
        insecure: args.insecure.then_some(true),
        grace_seconds: args.grace_seconds,
        metrics_listen: args.metrics_listen,
        session_ttl_seconds: args.session_ttl_seconds,
        room_queue: args.room_queue,
        wire_queue: args.wire_queue,
        wire_stall_seconds: args.wire_stall_seconds,
        max_message_bytes: args.max_message_bytes,
        max_connections: args.max_connections,
        data_session_idle_seconds: args.data_session_idle_seconds,
        max_data_sessions: args.max_data_sessions,
        max_statement_seconds: args.max_statement_seconds,
        max_result_bytes: args.max_result_bytes,
        sql_memory_bytes: args.sql_memory_bytes,
        handshake_timeout_seconds: args.handshake_timeout_seconds,
        idle_timeout_seconds: args.idle_timeout_seconds,
        client_certs: args.client_certs,
        framing: args.framing,
        idle_spin_microseconds: args.idle_spin_microseconds,
        stream_window_bytes: args.stream_window_bytes,
        connection_window_bytes: args.connection_window_bytes,
        store: args.store,
        store_ca: args.store_ca,
        bus: args.bus,
        bus_ca: args.bus_ca,
        ws_listen: args.ws_listen,
        ws_origins: (!args.ws_origins.is_empty()).then_some(args.ws_origins),
        ws_max_sockets: args.ws_max_sockets,
        ws_max_calls: args.ws_max_calls,
        ws_queue_bytes: args.ws_queue_bytes,
        ws_stall_seconds: args.ws_stall_seconds,
        ws_login_timeout_seconds: args.ws_login_timeout_seconds,
    };
    let from_file = match &args.config_file {
        Some(path) => Settings::from_file(path).map_err(|e| e.message)?,
        None => Settings::default(),
    };
    let config = busbar_server::ServerConfig::from_settings(from_flags.or(from_file))
        .map_err(|e| e.message)?;
    let data = config.data_dir.clone();
    crate::idle_spin::set_limit(config.idle_spin).map_err(|e| e.message().to_string())?;
    busbar_server::serve(config, shutdown_signal(), |started| {
        let tls = if started.address.starts_with("https") {
            "TLS"
        } else {
            "PLAINTEXT"
        };
        println!(
            "busbar {} serving on {} ({tls}, data in {})",
            env!("CARGO_PKG_VERSION"),
            started.address,
            data.display()
        );
        println!("admin config: {}", started.admin_config.display());
        if let Some(metrics) = started.metrics {
            println!("metrics: http://{metrics}/metrics");
        }
        if let Some(gateway) = &started.gateway {
            println!("websocket: {gateway}");
            println!("console: {}", console_url(gateway));
        }
        println!(
            "try: busbar --config {} status",
            started.admin_config.display()
        );
    })
    .await
    .map_err(|e| e.to_string())?;
    let (spins, with_work) = crate::idle_spin::counts();
    tracing::info!("idle spinning: {spins} spins, {with_work} of them ended by events");
    Ok(())
}

/// The web console's URL from the gateway's (`wss://HOST:PORT/ws` ->
/// `https://HOST:PORT/`): the gateway's listener serves both.
fn console_url(gateway: &str) -> String {
    let page = gateway
        .replacen("wss://", "https://", 1)
        .replacen("ws://", "http://", 1);
    match page.strip_suffix("/ws") {
        Some(origin) => format!("{origin}/"),
        None => page,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_console_is_at_the_root_of_the_gateways_origin() {
        assert_eq!(
            super::console_url("wss://127.0.0.1:7072/ws"),
            "https://127.0.0.1:7072/"
        );
        assert_eq!(
            super::console_url("ws://[::1]:7072/ws"),
            "http://[::1]:7072/"
        );
    }
}
