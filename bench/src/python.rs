//! Scenario: Python (the scenario 6). The Busbar Python SDK (sync
//! `busbar.Connection` and asyncio `busbar.aio.Connection`) against stock
//! grpcio calling the same RPCs on the same node, from `bench/python_peer.py`
//! run with the bench venv's python:
//!
//! * unary latency of `busbar.v1.Node/Status`, p50 and p99 over N sequential
//!   calls per client (Busbar sync ÷ grpcio, Busbar asyncio ÷ grpc.aio);
//! * reading P points of one series into a `pyarrow.Table`: Busbar's
//!   `conn.timeseries.read` against grpcio reading `busbar.v1.TimeSeries/Read`
//!   (Arrow IPC pieces in a protobuf `bytes` field, joined and opened with
//!   `pyarrow.ipc.open_stream`): same server, same data, only the client
//!   differs;
//! * a stream of 64 B chunks into Python: each client subscribed to a fresh
//!   wire (Busbar's `wire.subscribe()`, grpcio's `busbar.v1.Wires/Subscribe`)
//!   that a publisher in another process feeds as fast as it can.
//!
//! The script writes the series once (from Python) before any timing, then
//! runs each library in a process of its own, the processes taking turns: a
//! library's threads and state in a shared process change the other's
//! latency.

use crate::ctx::Ctx;
use crate::procs::{self, Result};
use crate::report::{Better, Row, Target};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python_peer.py")
}

fn descriptors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/busbar-proto/src/generated/busbar_descriptor.bin")
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let calls: usize = ctx.pick(600, 6_000);
    let n: usize = ctx.pick(100_000, 1_000_000);
    let chunks: usize = ctx.pick(5_000, 20_000);
    let turns: usize = ctx.pick(2, 3);
    let timeout = ctx.pick(Duration::from_secs(60), Duration::from_secs(300));
    let label = crate::report::count_label(n);
    let unary_name = |face: &str, what: &str| format!("python unary Status, {face}: {what}");
    let read_name = |face: &str| format!("python timeseries {label} points into pyarrow, {face}");

    let python = procs::bench_python()
        .ok_or("python rows skipped: no bench venv python (make bench installs .venv)")?;
    let folder = "/home/admin/bench-py";
    ctx.admin.mkdir(folder, true).await?;
    let ca = ctx.work_dir.join("busbar-ca-python.pem");
    std::fs::write(&ca, ctx.busbar_config.ca_pem.as_deref().unwrap_or_default())?;
    let mut args = vec![
        "--address".to_string(),
        ctx.busbar_config.address.clone(),
        "--ca".into(),
        ca.display().to_string(),
        "--descriptors".into(),
        descriptors().display().to_string(),
        "--series".into(),
        format!("{folder}/points"),
        "--calls".into(),
        calls.to_string(),
        "--points".into(),
        n.to_string(),
        "--chunks".into(),
        chunks.to_string(),
        "--turns".into(),
        turns.to_string(),
    ];
    args.extend(["--server-pid".into(), ctx.busbar_pid.to_string()]);
    if let Some(name) = &ctx.busbar_config.server_name {
        args.extend(["--server-name".into(), name.clone()]);
    }
    // The floor under any Python client: the Rust client's own Status latency,
    // sequential, in the same run (the Python SDK wraps this client). On a
    // runtime worker, like the unary scenario's calls: awaited on the main
    // thread (inside `block_on`) each call would pay two thread hand-offs.
    let rust = ctx.busbar_client().await?;
    let mut samples = tokio::spawn(async move {
        for _ in 0..50 {
            rust.status().await?;
        }
        let mut samples = crate::stats::Samples::with_capacity(calls);
        for _ in 0..calls {
            let started = std::time::Instant::now();
            rust.status().await?;
            samples.push(started.elapsed());
        }
        Ok::<_, busbar_client::Error>(samples)
    })
    .await??;
    let rust_note = format!(
        "reference, same node, same run: the Rust client (busbar-client, which the Python SDK wraps) makes {calls} sequential Status calls at p50 {:.0} µs, p99 {:.0} µs",
        samples.percentile_us(50.0),
        samples.percentile_us(99.0)
    );
    eprintln!(
        "bench: python, {calls} Status calls, {turns} reads of {n} points and {turns} streams of {chunks} chunks per client"
    );
    let out = procs::run_script_json(
        &python,
        &script(),
        &args,
        &[("BUSBAR_BENCH_TOKEN", &ctx.busbar_token)],
        timeout,
    );
    let _ = ctx.admin.rm(folder, true).await;
    let out = out?;

    let mut notes = vec![
        format!(
            "unary: {calls} sequential busbar.v1.Node/Status calls per face over {turns} turns; each library runs in a process of its own (one per library and turn, taking turns; only that library imported), warmed up in each; one connection each, TLS"
        ),
        "Busbar sync: conn.status() (returns a dict); Busbar asyncio: await conn.status(); both as they come (spinning off, the default), and again opted in to spinning with busbar.set_spin_limit(0.0002) in the \"spin on\" rows (200 µs: a waiting call spins, or keeps its event loop turning, before it sleeps; it pays only on VMs without halt-polling; docs/python.md); grpcio / grpc.aio: the same RPC, classes from busbar_descriptor.bin via google.protobuf message_factory, session token from Auth/Login as Bearer metadata".to_string(),
        format!(
            "read: {n} points of one MIN1 series (written once before timing), one untimed read and then one timed per process, best of {turns}; Busbar conn.timeseries.read(path) returns the pyarrow.Table; grpcio reads TimeSeries/Read and joins the arrow_ipc bytes fields into pyarrow.ipc.open_stream(...).read_all()"
        ),
        format!(
            "read: the MIN1 series has regular times and no flags, so Busbar's client (which asks for the columns form) receives only its values, 8 B per point, and grpcio (the default Arrow IPC form) 20 B; the irregular row reads a BREAKPOINT series of {n} points whose times are off the minute and every third point flagged, so all three columns cross for both (sync faces)"
        ),
        format!(
            "stream: {chunks} chunks of 64 B from the first one received, best of {turns}; each client subscribes to a fresh wire that a Busbar publisher in another Python process feeds as fast as it can; Busbar iterates bytes, grpcio WireChunk messages from Wires/Subscribe"
        ),
    ];
    notes.push(rust_note);
    if let Some(versions) = out["versions"].as_object() {
        let list: Vec<String> = versions
            .iter()
            .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
            .collect();
        notes.push(format!("versions: {}", list.join(", ")));
    }
    if let Some(skipped) = out["skipped"].as_object() {
        for (client, why) in skipped {
            notes.push(format!("{client} skipped: {}", why.as_str().unwrap_or("?")));
        }
    }
    let read = &out["read"];
    for (client, figures) in read.as_object().into_iter().flatten() {
        let per_point = |key: &str| figures[key].as_f64().unwrap_or(f64::NAN) * 1e9 / n as f64;
        notes.push(format!(
            "read, {client}: client CPU {:.1}, server CPU {:.1} ns per point (client process time; the node's from /proc in 10 ms ticks; mean over turns)",
            per_point("cpu_s"),
            per_point("server_cpu_s")
        ));
    }
    let unary = &out["unary"];
    let latency = |client: &str, key: &str| unary[client][key].as_f64();
    // Items per second in a client's best turn, from "read" or "stream".
    let per_second = |section: &str, client: &str, count: &str| {
        let figures = &out[section][client];
        Some(figures[count].as_f64()? / figures["best_s"].as_f64()?)
    };
    let rate = |client: &str| per_second("read", client, "points");
    let chunk_rate = |client: &str| per_second("stream", client, "chunks");
    let with_notes = |row: Row| notes.iter().fold(row, |row, note| row.note(note.clone()));

    let mut rows = Vec::new();
    for (face, busbar, peer) in [
        ("sync", "busbar", "grpcio"),
        ("asyncio", "busbar.aio", "grpcio.aio"),
    ] {
        for (key, what) in [("p50_us", "p50 latency"), ("p99_us", "p99 latency")] {
            if let Some(value) = latency(busbar, key) {
                rows.push(with_notes(
                    Row::new(unary_name(face, what), "µs", Better::Lower, value)
                        .peer(peer, latency(peer, key))
                        .target(Target::ratio_at_most(peer, 0.5)),
                ));
            }
        }
    }
    // No target: the same calls opted in to spinning
    // (`busbar.set_spin_limit(0.0002)`), to show what opting in buys on this
    // machine; the rows above are the default, spinning off.
    for (face, busbar, peer) in [
        ("sync", "busbar spin on", "grpcio"),
        ("asyncio", "busbar.aio spin on", "grpcio.aio"),
    ] {
        if let Some(value) = latency(busbar, "p50_us") {
            rows.push(with_notes(
                Row::new(
                    unary_name(face, "p50 latency, spin on"),
                    "µs",
                    Better::Lower,
                    value,
                )
                .peer(peer, latency(peer, "p50_us")),
            ));
        }
    }
    for (face, busbar) in [("sync", "busbar"), ("asyncio", "busbar.aio")] {
        if let Some(value) = rate(busbar) {
            rows.push(with_notes(
                Row::new(read_name(face), "points/s", Better::Higher, value)
                    .peer("grpcio", rate("grpcio"))
                    .target(Target::ratio_at_least("grpcio", 5.0)),
            ));
        }
    }
    // No target: the same read of a series whose columns follow no rule.
    if let Some(value) = rate("busbar ragged") {
        rows.push(with_notes(
            Row::new(
                format!("python timeseries {label} irregular points into pyarrow, sync"),
                "points/s",
                Better::Higher,
                value,
            )
            .peer("grpcio", rate("grpcio ragged")),
        ));
    }
    // No target in the issue: how fast a stream's messages reach Python code.
    for (face, busbar, peer) in [
        ("sync", "busbar", "grpcio"),
        ("asyncio", "busbar.aio", "grpcio.aio"),
    ] {
        if let Some(value) = chunk_rate(busbar) {
            rows.push(with_notes(
                Row::new(
                    format!("python wire stream 64 B chunks, {face}"),
                    "chunks/s",
                    Better::Higher,
                    value,
                )
                .peer(peer, chunk_rate(peer)),
            ));
        }
    }
    if rows.is_empty() {
        return Err(format!("python rows skipped: {}", out["skipped"]).into());
    }
    Ok(rows)
}
