//! Scenario 4 (part of the scenario 7, scale): N idle authenticated
//! connections; the server's resident memory per connection (VmRSS of the
//! server process before and after), and how fast they connect.
//!
//! Each system gets a fresh server process, so memory freed by earlier
//! scenarios cannot hide the growth.
//!
//! * Busbar: N `Client`s, each its own TCP + TLS + HTTP/2 connection that
//!   logged in with an API token (a session per connection), then idle.
//! * NATS: N clients, each TCP + TLS + CONNECT, then idle.

use crate::ctx::Ctx;
use crate::procs::{self, Result};
use crate::report::{Better, Row, Target};
use busbar_client::{ClientConfig, ConnectOptions};
use futures::StreamExt;
use std::future::Future;
use std::time::{Duration, Instant};

/// Connections opened at once while building up.
const PARALLEL: usize = 32;

struct Scaled {
    connected: usize,
    per_connection_kib: f64,
    connect_rate: f64,
    note: Option<String>,
}

/// Opens `n` connections with `connect`, keeping them; measures `pid`'s RSS.
async fn hold<T, F, Fut>(pid: u32, n: usize, cap: Duration, connect: F) -> Result<Scaled>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procs::rss_kib(pid)?;
    let start = Instant::now();
    let deadline = start + cap;
    let mut held = Vec::with_capacity(n);
    let mut first_error = None;
    let mut failures = 0usize;
    let mut attempts = futures::stream::iter(0..n)
        .map(|_| connect())
        .buffer_unordered(PARALLEL);
    loop {
        match tokio::time::timeout_at(deadline.into(), attempts.next()).await {
            Ok(Some(Ok(connection))) => held.push(connection),
            Ok(Some(Err(error))) => {
                failures += 1;
                first_error.get_or_insert_with(|| error.to_string());
            }
            Ok(None) => break,
            Err(_) => {
                first_error.get_or_insert_with(|| format!("stopped at the {cap:?} cap"));
                break;
            }
        }
    }
    drop(attempts);
    let elapsed = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procs::rss_kib(pid)?;
    let connected = held.len();
    let note =
        first_error.map(|e| format!("{failures} connections failed or were not made; first: {e}"));
    drop(held);
    Ok(Scaled {
        connected,
        per_connection_kib: after.saturating_sub(before) as f64 / connected.max(1) as f64,
        connect_rate: connected as f64 / elapsed.as_secs_f64().max(1e-9),
        note,
    })
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Waits (at most 10 s) for closed connections to release their descriptors.
async fn settle_fds(below: usize) {
    for _ in 0..100 {
        if open_fds() < below {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(ctx: &Ctx, fd_limit: u64) -> Result<Vec<Row>> {
    let wanted: usize = ctx.pick(500, 10_000);
    // This process holds the client ends; keep a margin for everything else.
    let room = (fd_limit as usize).saturating_sub(open_fds() + 256);
    let n = wanted.min(room);
    let mut notes = vec![format!(
        "{n} idle connections, opened {PARALLEL} at a time; fresh server process per system"
    )];
    if n < wanted {
        notes.push(format!(
            "only {n} of {wanted} connections: the open-files limit is {fd_limit} and could not be raised further"
        ));
    }
    let cap = ctx.pick(Duration::from_secs(30), Duration::from_secs(120));

    eprintln!("bench: scale, {n} idle connections to a fresh busbar node");
    let data = ctx.work_dir.join("busbar-scale");
    let node = procs::Busbar::start(&ctx.busbar_binary, &data)?;
    let admin = busbar_client::Client::from_config_file(&node.admin_config).await?;
    let (token, _) = admin.create_token("bench-scale", None).await?;
    let config = ClientConfig::from_file(&node.admin_config)?;
    let b = hold(node.guard.pid(), n, cap, || {
        let (config, token) = (config.clone(), token.clone());
        async move {
            Ok(ConnectOptions::from_config(&config)?
                .token(token)
                .connect_timeout(Duration::from_secs(20))
                .connect()
                .await?)
        }
    })
    .await?;
    drop(admin);
    drop(node);
    settle_fds(512).await;
    if let Some(note) = &b.note {
        notes.push(format!("busbar: {note}"));
    }
    notes.push(format!("busbar held {}", b.connected));

    let mut nats = None;
    if let Some(binary) = &ctx.nats_binary {
        eprintln!("bench: scale, {n} idle connections to a fresh nats-server");
        let server = procs::Nats::start(binary, &ctx.tls, &ctx.work_dir.join("nats-scale.log"))?;
        let (url, ca) = (server.url.clone(), ctx.tls.ca.clone());
        let scaled = hold(server.guard.pid(), n, cap, || {
            let (url, ca) = (url.clone(), ca.clone());
            async move { crate::peers::nats_connect(&url, &ca).await }
        })
        .await?;
        drop(server);
        settle_fds(512).await;
        if let Some(note) = &scaled.note {
            notes.push(format!("nats: {note}"));
        }
        notes.push(format!("nats held {}", scaled.connected));
        nats = Some(scaled);
    } else if let Some(skipped) = &ctx.nats_skipped {
        notes.push(skipped.clone());
    }

    let with_notes = |row: Row| notes.iter().fold(row, |row, note| row.note(note.clone()));
    Ok(vec![
        with_notes(
            Row::new(
                format!("scale {n} idle conns: server memory per connection"),
                "KiB",
                Better::Lower,
                b.per_connection_kib,
            )
            .peer("nats", nats.as_ref().map(|s| s.per_connection_kib))
            .target(Target::absolute_at_most(20.0)),
        ),
        with_notes(
            Row::new(
                format!("scale {n} idle conns: connect + authenticate"),
                "conns/s",
                Better::Higher,
                b.connect_rate,
            )
            .peer("nats", nats.as_ref().map(|s| s.connect_rate)),
        ),
    ])
}
