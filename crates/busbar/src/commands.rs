//! Client commands: each connects with the client config and makes its calls.

use crate::Command;
use base64::Engine;
use busbar_client::{
    Client, ClientConfig, ConnectOptions, CredentialConfig, ResourceKind, Right, RoomEventKind,
    SqlParam, Statement,
};
use bytes::{Bytes, BytesMut};
use clap::Subcommand;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Outcome = Result<(), String>;

#[derive(Subcommand)]
pub enum IdentityCommand {
    /// Create a key-pair identity (or, with --cert, a client-certificate
    /// one); writes a client config holding its private key.
    New {
        name: String,
        /// Where to write the config [default: ./<name>.json]
        #[arg(long)]
        out: Option<PathBuf>,
        /// Give it admin on /.
        #[arg(long)]
        admin: bool,
        /// Log in with a client certificate the node's CA signs (mTLS)
        /// instead of a signed nonce.
        #[arg(long)]
        cert: bool,
        /// With --cert: days the certificate is valid [default: 90; at most 3650]
        #[arg(long, requires = "cert")]
        days: Option<u32>,
    },
    /// Issue another client certificate to a certificate identity (to renew
    /// one before it expires); writes a new client config.
    Cert {
        name: String,
        /// Where to write the config [default: ./<name>.json]
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid [default: 90; at most 3650]
        #[arg(long)]
        days: Option<u32>,
    },
    /// List the client certificates of an identity.
    Certs { name: String },
    /// Revoke one client certificate by its fingerprint (as `certs` lists it).
    RevokeCert { fingerprint: String },
    /// List identities.
    List,
    /// Revoke an identity (and its tokens and certificates); its name stays reserved.
    Revoke { name: String },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a password user.
    Add {
        name: String,
        /// The password (or BUSBAR_PASSWORD; otherwise read from stdin).
        #[arg(long, env = "BUSBAR_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long)]
        admin: bool,
    },
    /// Set a user's password (your own, or any as admin).
    Passwd {
        name: String,
        #[arg(long, env = "BUSBAR_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token; prints only the token on stdout.
    Create {
        name: String,
        /// Lifetime in seconds (default: never expires).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// List your tokens.
    List,
    /// Revoke one of your tokens.
    Revoke { name: String },
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Add an identity to a group.
    Add { group: String, identity: String },
    /// Remove an identity from a group.
    Rm { group: String, identity: String },
}

#[derive(Subcommand)]
pub enum RoomCommand {
    /// Create a room.
    Create {
        path: String,
        #[arg(short, long)]
        parents: bool,
    },
    /// Emit an event; each ARG is a JSON value (quote strings: '"hi"').
    Emit {
        path: String,
        event: String,
        args: Vec<String>,
    },
    /// Join and print a "joined" line, then every event, as JSON lines until interrupted.
    Listen { path: String },
}

#[derive(Subcommand)]
pub enum WireCommand {
    /// Create a wire.
    Create {
        path: String,
        #[arg(short, long)]
        parents: bool,
    },
    /// Publish stdin into the wire, in chunks, until end of input.
    Pub { path: String },
    /// Write everything published into the wire to stdout.
    Sub { path: String },
}

#[derive(Subcommand)]
pub enum DbCommand {
    /// Create a SQL database (an embedded SQLite database, durable on every write).
    Create {
        path: String,
        #[arg(short, long)]
        parents: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum ServiceCommand {
    /// Create the resource of a service at /services/NAME, so identities
    /// granted write on it may provide it (a provider with write on
    /// /services creates it itself on its first offer).
    Create {
        /// The service's protobuf full name, e.g. mesh.trust.Tokenizer
        name: String,
    },
    /// List live services with their providers (identity, since when,
    /// calls in flight, calls served).
    Ls {
        /// A service path or a folder [default: /services]
        path: Option<String>,
    },
}

#[derive(clap::Subcommand)]
pub enum SessionCommand {
    /// Push a payload (PAYLOAD, or stdin when absent) to a topic; opens the
    /// session first (creating it when missing).
    Push {
        session: String,
        payload: Option<String>,
        #[arg(long, default_value = "")]
        topic: String,
        /// Metadata KEY=VALUE; repeat for more.
        #[arg(long = "meta")]
        metadata: Vec<String>,
    },
    /// Pop the oldest payload of a topic to stdout; waits up to --timeout
    /// seconds, and exits 1 with a message on stderr when none came.
    Pop {
        session: String,
        #[arg(long, default_value = "")]
        topic: String,
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Print the oldest payload of a topic without removing it.
    Peek {
        session: String,
        #[arg(long, default_value = "")]
        topic: String,
    },
    /// End a session: its queues are dropped.
    Release { session: String },
}

/// `KEY=VALUE` pairs from the command line.
fn key_values(pairs: &[String]) -> Result<std::collections::HashMap<String, String>, String> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("bad --meta {pair:?}: use KEY=VALUE"))
        })
        .collect()
}

/// A `--param`: NAME=VALUE is named, anything else positional; VALUE is JSON
/// when it parses, else text.
pub fn sql_param(arg: &str) -> (Option<String>, SqlParam) {
    let named = arg.split_once('=').filter(|(name, _)| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    });
    let (name, text) = match named {
        Some((name, value)) => (Some(name.to_string()), value),
        None => (None, arg),
    };
    let value = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Null) => SqlParam::Null,
        Ok(serde_json::Value::Bool(b)) => SqlParam::Boolean(b),
        Ok(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => SqlParam::Integer(i),
            None => SqlParam::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Ok(serde_json::Value::String(s)) => SqlParam::Text(s),
        _ => SqlParam::Text(text.to_string()),
    };
    (name, value)
}

/// "1 row affected", "2 rows affected".
pub fn rows_affected(count: u64) -> String {
    format!("{count} row{} affected", if count == 1 { "" } else { "s" })
}

/// Rows as an aligned table, columns in the statement's order.
pub fn print_table(columns: &[String], rows: &[serde_json::Value]) {
    let cell = |value: &serde_json::Value| match value {
        serde_json::Value::Null => "NULL".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| cell(&row[c.as_str()])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", padded.join(" | ").trim_end());
    };
    line(columns.iter().map(String::as_str).collect());
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RightArg {
    Read,
    Write,
    Admin,
}

const PUBLISH_CHUNK: usize = 256 * 1024;

async fn connect(config: &Path, timeout: Option<f64>) -> Result<(Client, ClientConfig), String> {
    let file = ClientConfig::from_file(config).map_err(|e| e.to_string())?;
    let mut options = ConnectOptions::from_config(&file).map_err(|e| e.to_string())?;
    if let Some(seconds) = timeout {
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err(format!(
                "bad --timeout {seconds}: use a positive number of seconds"
            ));
        }
        options = options.timeout(Duration::from_secs_f64(seconds));
    }
    let client = options.connect().await.map_err(|e| e.to_string())?;
    Ok((client, file))
}

fn read_password(given: Option<String>) -> Result<String, String> {
    if let Some(password) = given {
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialize")
    );
}

fn kind_name(kind: i32) -> &'static str {
    ResourceKind::try_from(kind)
        .map(|k| k.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// Where `identity new` / `identity cert` write the new config: never over an existing file.
fn config_out(name: &str, out: Option<PathBuf>) -> Result<PathBuf, String> {
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}.json")));
    if out.exists() {
        return Err(format!(
            "{} already exists; pass --out to write elsewhere",
            out.display()
        ));
    }
    Ok(out)
}

/// Epoch milliseconds as an RFC 3339 UTC time.
fn utc_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// Has the node's CA sign a certificate over a key pair made here (see
/// [`Client::new_certificate`]) and writes a client config holding both.
/// `create`: make the identity, with admin or not; `None`: it exists.
async fn write_certificate_config(
    client: &Client,
    file: ClientConfig,
    name: &str,
    out: &Path,
    days: Option<u32>,
    create: Option<bool>,
) -> Outcome {
    let issued = client
        .new_certificate(name, days.unwrap_or(0), create)
        .await
        .map_err(|e| e.to_string())?;
    let new_config = ClientConfig {
        ca_pem: Some(issued.ca_pem),
        credential: Some(CredentialConfig::Certificate {
            certificate_pem: issued.certificate_pem,
            private_key_pem: issued.private_key_pem,
        }),
        // The caller's own transport certificate stays the caller's.
        client_certificate: None,
        ..file
    };
    new_config.write(out).map_err(|e| e.to_string())?;
    println!("{}", out.display());
    Ok(())
}

pub async fn run(config: &Path, timeout: Option<f64>, command: Command) -> Outcome {
    let (client, file) = connect(config, timeout).await?;
    let e = |error: busbar_client::Error| error.to_string();
    match command {
        Command::Serve(_) => unreachable!("handled in main"),
        Command::Status => {
            let status = client.status().await.map_err(e)?;
            let me = client.identity().map(|i| i.name).unwrap_or_default();
            print_json(&serde_json::json!({
                "address": client.address(),
                "identity": me,
                "version": status.version,
                "node_id": status.node_id,
                "uptime_ms": status.uptime_ms,
                "store": status.store,
                "bus": status.bus,
                "tls": status.tls,
                "connections": status.connections,
                "store_healthy": status.store_healthy,
                "bus_healthy": status.bus_healthy,
                "nodes": status.nodes.iter().map(|n| serde_json::json!({
                    "node_id": n.node_id,
                    "address": n.address,
                    "connections": n.connections,
                    "seen_ms": n.seen_ms,
                })).collect::<Vec<_>>(),
            }));
        }
        Command::Identity(IdentityCommand::New {
            name,
            out,
            admin,
            cert: true,
            days,
        }) => {
            let out = config_out(&name, out)?;
            write_certificate_config(&client, file, &name, &out, days, Some(admin)).await?;
        }
        Command::Identity(IdentityCommand::Cert { name, out, days }) => {
            let out = config_out(&name, out)?;
            write_certificate_config(&client, file, &name, &out, days, None).await?;
        }
        Command::Identity(IdentityCommand::Certs { name }) => {
            for cert in client.certificates(&name).await.map_err(e)? {
                let state = if cert.revoked {
                    "revoked"
                } else if cert.expires_ms < jiff::Timestamp::now().as_millisecond() {
                    "expired"
                } else {
                    "live"
                };
                println!(
                    "{}  expires {}  {state}",
                    cert.fingerprint,
                    utc_text(cert.expires_ms)
                );
            }
        }
        Command::Identity(IdentityCommand::RevokeCert { fingerprint }) => {
            client.revoke_certificate(&fingerprint).await.map_err(e)?
        }
        Command::Identity(IdentityCommand::New {
            name, out, admin, ..
        }) => {
            let seed = rand::random::<[u8; 32]>();
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let b64 = base64::engine::general_purpose::STANDARD;
            let out = config_out(&name, out)?;
            client
                .register_key(&name, &b64.encode(key.verifying_key().as_bytes()), admin)
                .await
                .map_err(e)?;
            let new_config = ClientConfig {
                credential: Some(CredentialConfig::Key {
                    name: name.clone(),
                    private_key: b64.encode(seed),
                }),
                // The caller's own transport certificate stays the caller's.
                client_certificate: None,
                ..file
            };
            new_config.write(&out).map_err(e)?;
            println!("{}", out.display());
        }
        Command::Identity(IdentityCommand::List) => {
            for identity in client.identities().await.map_err(e)? {
                let kind = busbar_client::proto::IdentityKind::try_from(identity.kind)
                    .map(|k| k.as_str_name())
                    .unwrap_or("?");
                let flags = [(identity.admin, "admin"), (identity.revoked, "revoked")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, name)| *name)
                    .collect::<Vec<_>>()
                    .join(",");
                println!(
                    "{:<24} {:<11} {}",
                    identity.name,
                    kind.to_lowercase(),
                    flags
                );
            }
        }
        Command::Identity(IdentityCommand::Revoke { name }) => {
            client.revoke_identity(&name).await.map_err(e)?
        }
        Command::User(UserCommand::Add {
            name,
            password,
            admin,
        }) => {
            let password = read_password(password)?;
            client
                .create_user(&name, &password, admin)
                .await
                .map_err(e)?;
        }
        Command::User(UserCommand::Passwd { name, password }) => {
            let password = read_password(password)?;
            client.set_password(&name, &password).await.map_err(e)?;
        }
        Command::Token(TokenCommand::Create { name, ttl }) => {
            let (token, _) = client
                .create_token(&name, ttl.map(Duration::from_secs))
                .await
                .map_err(e)?;
            println!("{token}");
        }
        Command::Token(TokenCommand::List) => {
            for token in client.tokens().await.map_err(e)? {
                let state = if token.revoked {
                    "revoked".to_string()
                } else if token.expires_ms == 0 {
                    "never expires".to_string()
                } else {
                    format!("expires_ms={}", token.expires_ms)
                };
                println!("{:<24} {state}", token.name);
            }
        }
        Command::Token(TokenCommand::Revoke { name }) => {
            client.revoke_token(&name).await.map_err(e)?
        }
        Command::Group(GroupCommand::Add { group, identity }) => client
            .add_group_member(&group, &identity)
            .await
            .map_err(e)?,
        Command::Group(GroupCommand::Rm { group, identity }) => client
            .remove_group_member(&group, &identity)
            .await
            .map_err(e)?,
        Command::Ls { path, recursive } => {
            for resource in client.ls(&path, recursive).await.map_err(e)? {
                println!(
                    "{:<10} {}",
                    kind_name(resource.kind).to_lowercase(),
                    resource.path
                );
            }
        }
        Command::Mkdir { path, parents } => {
            // -p as in POSIX mkdir: parents made, an existing folder is fine.
            let made = if parents {
                client.ensure(&path, ResourceKind::Folder, true).await
            } else {
                client.mkdir(&path, false).await
            };
            made.map_err(e)?;
        }
        Command::Rm { path, recursive } => {
            client.rm(&path, recursive).await.map_err(e)?;
        }
        Command::Mv { from, to } => {
            client.mv(&from, &to).await.map_err(e)?;
        }
        Command::Grant {
            path,
            principal,
            right,
        } => {
            let right = match right {
                RightArg::Read => Right::Read,
                RightArg::Write => Right::Write,
                RightArg::Admin => Right::Admin,
            };
            client.grant(&path, &principal, right).await.map_err(e)?;
        }
        Command::Revoke { path, principal } => {
            client.revoke(&path, &principal).await.map_err(e)?;
        }
        Command::Grants { path, effective } => {
            for grant in client.grants(&path, effective).await.map_err(e)? {
                let right = Right::try_from(grant.right)
                    .map(|r| r.as_str_name())
                    .unwrap_or("?");
                println!(
                    "{:<24} {:<6} {}",
                    grant.principal,
                    right.to_lowercase(),
                    grant.path
                );
            }
        }
        Command::Room(RoomCommand::Create { path, parents }) => {
            client
                .create(&path, ResourceKind::Room, parents)
                .await
                .map_err(e)?;
        }
        Command::Room(RoomCommand::Emit { path, event, args }) => {
            let mut values = Vec::with_capacity(args.len());
            for (i, arg) in args.iter().enumerate() {
                values.push(serde_json::from_str(arg).map_err(|error| {
                    format!("argument {} ({arg:?}) is not JSON ({error}); quote strings like '\"text\"'", i + 1)
                })?);
            }
            client.emit(&path, &event, values).await.map_err(e)?;
        }
        Command::Room(RoomCommand::Listen { path }) => {
            let mut room = client.join(&path).await.map_err(e)?;
            // First line: the membership is live; every later emit reaches it.
            println!(
                "{}",
                serde_json::json!({"kind": "joined", "member_id": room.member_id(), "path": room.path()})
            );
            while let Some(event) = room.next().await {
                let event = event.map_err(e)?;
                let kind = match event.kind {
                    RoomEventKind::Emit => "emit",
                    RoomEventKind::Left => "left",
                    RoomEventKind::Deleted => "deleted",
                    RoomEventKind::Rejoined => "rejoined",
                };
                println!(
                    "{}",
                    serde_json::json!({"kind": kind, "event": event.event, "args": event.args, "sender": event.sender})
                );
            }
        }
        Command::Wire(WireCommand::Create { path, parents }) => {
            client
                .create(&path, ResourceKind::Wire, parents)
                .await
                .map_err(e)?;
        }
        Command::Wire(WireCommand::Pub { path }) => {
            let stdin = tokio::io::stdin();
            let chunks = futures::stream::unfold(stdin, |mut stdin| async move {
                let mut buffer = BytesMut::with_capacity(PUBLISH_CHUNK);
                // Fill whole chunks: fewer, larger messages move faster.
                while buffer.len() < PUBLISH_CHUNK {
                    match stdin.read_buf(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                (!buffer.is_empty()).then(|| (buffer.freeze(), stdin))
            });
            let chunks = chunks.map(|chunk: Bytes| chunk);
            let summary = client.publish(&path, chunks).await.map_err(e)?;
            if summary.unheard_chunks > 0 {
                eprintln!(
                    "note: {} of {} chunks reached no subscriber (none was subscribed as they passed)",
                    summary.unheard_chunks, summary.chunks
                );
            }
        }
        Command::Wire(WireCommand::Sub { path }) => {
            let mut chunks = client.subscribe(&path).await.map_err(e)?;
            // On stderr, so the data on stdout stays exactly what was published.
            eprintln!("busbar: subscribed to {path}");
            let mut stdout = tokio::io::stdout();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(e)?;
                if stdout.write_all(&chunk).await.is_err() {
                    return Ok(()); // the reader went away: a pipe closed downstream
                }
                let _ = stdout.flush().await;
            }
        }
        Command::Db(DbCommand::Create { path, parents }) => {
            client
                .create(&path, ResourceKind::Database, parents)
                .await
                .map_err(e)?;
        }
        Command::Session(SessionCommand::Push {
            session,
            payload,
            topic,
            metadata,
        }) => {
            let metadata = key_values(&metadata)?;
            let payload = match payload {
                Some(text) => Bytes::from(text),
                None => {
                    let mut all = Vec::new();
                    tokio::io::stdin()
                        .read_to_end(&mut all)
                        .await
                        .map_err(|error| format!("reading stdin: {error}"))?;
                    Bytes::from(all)
                }
            };
            client
                .transport_open(&session, Default::default())
                .await
                .map_err(e)?;
            client
                .transport_push(&session, &topic, payload, metadata)
                .await
                .map_err(e)?;
        }
        Command::Session(SessionCommand::Pop {
            session,
            topic,
            timeout,
        }) => {
            if !timeout.is_finite() || !(0.0..=300.0).contains(&timeout) {
                return Err(format!("bad --timeout {timeout}: use 0 to 300 seconds"));
            }
            let waited = Duration::from_secs_f64(timeout);
            let popped = client
                .with_timeout(waited + Duration::from_secs(5))
                .transport_pop(&session, &topic, waited, None)
                .await
                .map_err(e)?;
            let Some(message) = popped else {
                return Err(format!(
                    "no message on topic {topic:?} of session {session} within {timeout} s"
                ));
            };
            let mut stdout = tokio::io::stdout();
            let _ = stdout.write_all(&message.payload).await;
            let _ = stdout.flush().await;
        }
        Command::Session(SessionCommand::Peek { session, topic }) => {
            if let Some(message) = client.transport_peek(&session, &topic).await.map_err(e)? {
                let mut stdout = tokio::io::stdout();
                let _ = stdout.write_all(&message.payload).await;
                let _ = stdout.flush().await;
            }
        }
        Command::Session(SessionCommand::Release { session }) => {
            let dropped = client.transport_release(&session).await.map_err(e)?;
            eprintln!("released {session}: {dropped} messages dropped");
        }
        Command::Service(ServiceCommand::Create { name }) => {
            client
                .create(&format!("/services/{name}"), ResourceKind::Service, false)
                .await
                .map_err(e)?;
        }
        Command::Service(ServiceCommand::Ls { path }) => {
            let services = client
                .services(path.as_deref().unwrap_or(""))
                .await
                .map_err(e)?;
            for service in services {
                println!("{}  ({})", service.name, service.methods.join(", "));
                if service.providers.is_empty() {
                    println!("  no provider");
                }
                for p in service.providers {
                    let since = busbar_types::show_time(p.since_unix_ms);
                    println!(
                        "  {}  {}  since {since}  in flight {}  served {}{}",
                        p.id,
                        p.identity,
                        p.calls_in_flight,
                        p.calls_served,
                        if p.draining { "  draining" } else { "" }
                    );
                }
            }
        }
        Command::Sql {
            database,
            sql,
            params,
            json,
            arrow,
        } => {
            let mut statement = Statement::new(sql);
            for arg in &params {
                statement = match sql_param(arg) {
                    (Some(name), value) => statement.bind_named(name, value),
                    (None, value) => statement.bind(value),
                };
            }
            if let Some(file) = arrow {
                let result = client.sql(&database, statement).await.map_err(e)?;
                let Some(schema) = result.schema else {
                    return Err("the statement returned no columns; nothing to write".into());
                };
                let out = std::fs::File::create(&file)
                    .map_err(|error| format!("cannot create {}: {error}", file.display()))?;
                let mut writer = arrow_ipc::writer::StreamWriter::try_new(out, &schema)
                    .map_err(|e| e.to_string())?;
                for batch in &result.batches {
                    writer.write(batch).map_err(|e| e.to_string())?;
                }
                writer.finish().map_err(|e| e.to_string())?;
                eprintln!("wrote {} rows to {}", result.summary.rows, file.display());
                return Ok(());
            }
            let (rows, summary) = client.sql_json(&database, statement).await.map_err(e)?;
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else if summary.columns.is_empty() {
                println!("{}", rows_affected(summary.rows_affected));
            } else {
                let columns: Vec<String> = summary.columns.into_iter().map(|c| c.name).collect();
                print_table(&columns, &rows);
            }
        }
        Command::Ts(command) => crate::data::ts(&client, command).await?,
        Command::Proc(command) => crate::data::proc(&client, command).await?,
        Command::Call { method, json } => {
            let request: serde_json::Value = serde_json::from_str(&json)
                .map_err(|error| format!("the request is not JSON: {error}"))?;
            let kind = client.describe(&method).await.map_err(e)?;
            if !kind.is_client_streaming() && !kind.is_server_streaming() {
                print_json(&client.call(&method, request).await.map_err(e)?);
                return Ok(());
            }
            let mut call = client.stream(&method, Some(request)).await.map_err(e)?;
            if kind.is_client_streaming() {
                let mut lines = String::new();
                tokio::io::stdin()
                    .read_to_string(&mut lines)
                    .await
                    .map_err(|e| e.to_string())?;
                for (n, line) in lines.lines().filter(|l| !l.trim().is_empty()).enumerate() {
                    let value = serde_json::from_str(line)
                        .map_err(|error| format!("stdin line {} is not JSON: {error}", n + 1))?;
                    call.send(value).await.map_err(e)?;
                }
                call.close_send();
            }
            while let Some(response) = call.next().await {
                println!("{}", response.map_err(e)?);
            }
        }
    }
    Ok(())
}
