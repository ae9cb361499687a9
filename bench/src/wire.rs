//! Scenario 3: wire stream throughput against raw TCP on loopback.
//!
//! * Busbar: one connection `subscribe`s to a wire, another `publish`es a
//!   stream of 256 KiB chunks into it (publisher → node → subscriber, TLS on
//!   both legs).
//! * tcp: a tokio sender writes the same chunks straight to a tokio receiver
//!   (plaintext, no relay): the ceiling the issue measures against.
//! * tcp+tls: the same through rustls (ring), to show what encryption alone
//!   costs on this machine.

use crate::ctx::Ctx;
use crate::procs::Result;
use crate::report::{Better, Row, Target};
use busbar_client::ResourceKind;
use bytes::Bytes;
use futures::StreamExt;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CHUNK: usize = 256 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

struct Transfer {
    bytes: u64,
    elapsed: Duration,
    note: Option<String>,
}

impl Transfer {
    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / MIB / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Reads until `total` bytes arrived, EOF or the deadline; returns the byte
/// count and when the last one arrived.
async fn drain<R: AsyncRead + Unpin>(
    mut reader: R,
    total: u64,
    deadline: Instant,
) -> (u64, Instant) {
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    let mut last = Instant::now();
    while bytes < total {
        match tokio::time::timeout_at(deadline.into(), reader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                bytes += n as u64;
                last = Instant::now();
            }
            _ => break,
        }
    }
    (bytes, last)
}

async fn pump<W: AsyncWrite + Unpin>(mut writer: W, chunks: u64) -> std::io::Result<()> {
    let chunk = vec![0x5au8; CHUNK];
    for _ in 0..chunks {
        writer.write_all(&chunk).await?;
    }
    writer.shutdown().await
}

async fn tcp(chunks: u64, cap: Duration, tls: Option<&crate::tls::Files>) -> Result<Transfer> {
    let total = chunks * CHUNK as u64;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let start = Instant::now();
    let deadline = start + cap;
    let acceptor = tls
        .map(crate::tls::server_config)
        .transpose()?
        .map(tokio_rustls::TlsAcceptor::from);
    let receiver = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        Ok::<_, std::io::Error>(match acceptor {
            Some(acceptor) => drain(acceptor.accept(stream).await?, total, deadline).await,
            None => drain(stream, total, deadline).await,
        })
    });
    let stream = tokio::net::TcpStream::connect(address).await?;
    let sent = match tls {
        Some(files) => {
            let connector = tokio_rustls::TlsConnector::from(crate::tls::client_config(files)?);
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let stream = connector.connect(name, stream).await?;
            tokio::time::timeout_at(deadline.into(), pump(stream, chunks)).await
        }
        None => tokio::time::timeout_at(deadline.into(), pump(stream, chunks)).await,
    };
    let (bytes, last) = receiver.await??;
    let note = match sent {
        Err(_) => Some(format!("stopped at the {cap:?} cap")),
        Ok(Err(error)) => Some(format!("send failed: {error}")),
        Ok(Ok(())) => None,
    };
    Ok(Transfer {
        bytes,
        elapsed: last - start,
        note,
    })
}

async fn busbar(ctx: &Ctx, chunks: u64, cap: Duration) -> Result<Transfer> {
    let path = "/home/admin/bench-wire";
    ctx.admin.create(path, ResourceKind::Wire, true).await?;
    let subscriber = ctx.busbar_client().await?;
    let publisher = ctx.busbar_client().await?;
    let total = chunks * CHUNK as u64;
    let mut stream = subscriber.subscribe(path).await?;
    let start = Instant::now();
    let deadline = start + cap;
    let receiver = tokio::spawn(async move {
        let (mut bytes, mut last, mut error) = (0u64, Instant::now(), None);
        while bytes < total {
            match tokio::time::timeout_at(deadline.into(), stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    bytes += chunk.len() as u64;
                    last = Instant::now();
                }
                Ok(Some(Err(e))) => {
                    error = Some(e.to_string());
                    break;
                }
                _ => break,
            }
        }
        (bytes, last, error)
    });
    let chunk = Bytes::from(vec![0x5au8; CHUNK]);
    let chunks_stream = futures::stream::iter(0..chunks).map(move |_| chunk.clone());
    let published =
        tokio::time::timeout_at(deadline.into(), publisher.publish(path, chunks_stream)).await;
    let (bytes, last, error) = receiver.await?;
    let note = match (published, error) {
        (Err(_), _) => Some(format!("stopped at the {cap:?} cap")),
        (Ok(Err(error)), _) => Some(format!("publish failed: {error}")),
        (_, Some(error)) => Some(format!("subscriber failed: {error}")),
        _ => None,
    };
    ctx.admin.rm(path, false).await?;
    Ok(Transfer {
        bytes,
        elapsed: last - start,
        note,
    })
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let chunks: u64 = ctx.pick(2048, 8192);
    let cap = ctx.pick(Duration::from_secs(10), Duration::from_secs(30));
    eprintln!(
        "bench: wire, {} MiB in 256 KiB chunks",
        chunks * CHUNK as u64 / (1024 * 1024)
    );
    let b = busbar(ctx, chunks, cap).await?;
    let raw = tcp(chunks, cap, None).await?;
    let tls = tcp(chunks, cap, Some(&ctx.tls)).await?;
    let mut row = Row::new(
        "wire stream: throughput",
        "MiB/s",
        Better::Higher,
        b.mib_per_s(),
    )
    .peer("tcp", Some(raw.mib_per_s()))
    .peer("tcp+tls", Some(tls.mib_per_s()))
    .target(Target::ratio_at_least("tcp", 0.7))
    .note(format!(
        "{} MiB in 256 KiB chunks; busbar relays publisher → node → subscriber over two TLS connections, tcp is one direct plaintext connection",
        chunks * CHUNK as u64 / (1024 * 1024)
    ));
    for (system, transfer) in [("busbar", &b), ("tcp", &raw), ("tcp+tls", &tls)] {
        if let Some(note) = &transfer.note {
            row = row.note(format!("{system}: {note}"));
        }
    }
    Ok(vec![row])
}
