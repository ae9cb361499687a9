//! Scenario: time series (the scenario 4). Write N points of one
//! minute series, then read them all back, in points per second:
//!
//! * Busbar native: the Rust client's `write_series_stream` /
//!   `read_series_stream` (`TimeSeries/Write` and `Read`, Arrow IPC in gRPC);
//! * Busbar over Arrow Flight: DoPut / GetFlightInfo + DoGet against the same
//!   node, from `flight_peer.py client` (pyarrow.flight);
//! * the peer: the same client against `flight_peer.py serve`, a pyarrow.flight
//!   server that keeps what DoPut sends in memory and serves it from memory.
//!
//! Both Flight rows use the same Python client, so client cost is equal. Every
//! write goes to a fresh series (no old points to replace); each read reads
//! back what that turn wrote. Points are built before the clock starts, in
//! batches of 32 768 (Busbar's chunk size) for every system. TLS everywhere.

use crate::ctx::Ctx;
use crate::procs::{self, Result};
use crate::report::{Better, Row, Target};
use busbar_client::{Interval, Resolution, SeriesChunk, SeriesSpec};
use futures::StreamExt;
use std::time::{Duration, Instant};

/// Points per batch (Busbar's chunk size).
const BATCH: usize = 32_768;
/// 2026-01-01T00:00:00Z, on the minute grid (the same as flight_peer.py).
const T0_MS: i64 = 1_767_225_600_000;
const MINUTE_MS: i64 = 60_000;

/// One timed transfer: wall time and the CPU time the server and the client
/// processes spent meanwhile.
#[derive(Default, Clone, Copy)]
struct Measured {
    wall_s: f64,
    server_cpu_s: f64,
    client_cpu_s: f64,
}

/// CPU seconds of the server process `pid` and of the client; `client` is
/// None when the client is another process that reports its own.
struct CpuClock {
    pid: u32,
    server: f64,
    client: f64,
    started: Instant,
}

impl CpuClock {
    fn start(pid: u32) -> CpuClock {
        CpuClock {
            pid,
            server: procs::cpu_seconds(&pid.to_string()),
            client: procs::cpu_seconds("self"),
            started: Instant::now(),
        }
    }

    fn stop(&self) -> Measured {
        Measured {
            wall_s: self.started.elapsed().as_secs_f64(),
            server_cpu_s: procs::cpu_seconds(&self.pid.to_string()) - self.server,
            client_cpu_s: procs::cpu_seconds("self") - self.client,
        }
    }
}

/// Per system: the best (highest) rates over the turns, and the CPU cost of
/// every turn summed.
#[derive(Default, Clone, Copy)]
struct Rates {
    write: f64,
    read: f64,
    write_cost: Measured,
    read_cost: Measured,
    turns: u32,
    /// Flight only: the best rate of a client process's first read, which
    /// is not timed (`flight_turn`).
    first_read: f64,
}

impl Rates {
    fn add(&mut self, n: usize, write: Measured, read: Measured) {
        self.write = self.write.max(n as f64 / write.wall_s);
        self.read = self.read.max(n as f64 / read.wall_s);
        for (sum, one) in [(&mut self.write_cost, write), (&mut self.read_cost, read)] {
            sum.wall_s += one.wall_s;
            sum.server_cpu_s += one.server_cpu_s;
            sum.client_cpu_s += one.client_cpu_s;
        }
        self.turns += 1;
    }

    fn add_flight(&mut self, n: usize, write: Measured, read: Measured, first_read: f64) {
        self.add(n, write, read);
        self.first_read = self.first_read.max(first_read);
    }

    /// "read: wall W, server CPU S, client CPU C ns/point; write: …".
    fn describe(&self, n: usize) -> String {
        let per = |seconds: f64| seconds * 1e9 / (n as f64 * f64::from(self.turns.max(1)));
        let one = |m: &Measured| {
            format!(
                "wall {:.1}, server CPU {:.1}, client CPU {:.1}",
                per(m.wall_s),
                per(m.server_cpu_s),
                per(m.client_cpu_s)
            )
        };
        format!(
            "read {}; write {}",
            one(&self.read_cost),
            one(&self.write_cost)
        )
    }
}

/// Where a Flight client connects and how it logs in.
struct FlightServer<'a> {
    location: &'a str,
    ca: &'a std::path::Path,
    server_name: Option<&'a str>,
    token: Option<&'a str>,
    /// The server process, for its CPU time.
    pid: u32,
}

fn flight_turn(
    python: &std::path::Path,
    server: &FlightServer,
    path: &str,
    n: usize,
    timeout: Duration,
) -> Result<(Measured, Measured, f64)> {
    let mut args = vec![
        "client".to_string(),
        "--location".into(),
        server.location.into(),
        "--ca".into(),
        server.ca.display().to_string(),
        "--path".into(),
        path.into(),
        "--points".into(),
        n.to_string(),
    ];
    if let Some(name) = server.server_name {
        args.extend(["--server-name".into(), name.into()]);
    }
    let envs: Vec<(&str, &str)> = server
        .token
        .map(|t| ("BUSBAR_BENCH_TOKEN", t))
        .into_iter()
        .collect();
    let server_before = procs::cpu_seconds(&server.pid.to_string());
    let out = procs::run_python_json(python, &args, &envs, timeout)?;
    // The client reports its own times; the server's CPU is split between
    // put, first get and get in proportion to their wall times (the server
    // is idle while the client builds its points).
    let server_cpu = procs::cpu_seconds(&server.pid.to_string()) - server_before;
    let figure = |key: &str| {
        out[key]
            .as_f64()
            .ok_or_else(|| format!("no {key} in {out}"))
    };
    let got = figure("got_points")? as usize;
    if got != n {
        return Err(format!("read {got} of {n} points over Flight").into());
    }
    let (put_s, first_get_s, get_s) = (figure("put_s")?, figure("first_get_s")?, figure("get_s")?);
    let share = |s: f64| server_cpu * s / (put_s + first_get_s + get_s).max(1e-9);
    Ok((
        Measured {
            wall_s: put_s,
            server_cpu_s: share(put_s),
            client_cpu_s: figure("put_cpu_s")?,
        },
        Measured {
            wall_s: get_s,
            server_cpu_s: share(get_s),
            client_cpu_s: figure("get_cpu_s")?,
        },
        n as f64 / first_get_s,
    ))
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let n: usize = ctx.pick(200_000, 10_000_000);
    let turns = ctx.pick(2, 3);
    let timeout = ctx.pick(Duration::from_secs(30), Duration::from_secs(180));
    let folder = "/home/admin/bench-ts";
    ctx.admin.mkdir(folder, true).await?;
    eprintln!("bench: timeseries, building {n} points");
    // Built before the clock starts, in Busbar's chunk size.
    let data = (0..n.div_ceil(BATCH))
        .map(|k| {
            let range = k * BATCH..n.min((k + 1) * BATCH);
            let times = range
                .clone()
                .map(|i| T0_MS + i as i64 * MINUTE_MS)
                .collect();
            let values = range
                .clone()
                .map(|i| (i as f64 / 1440.0).sin() * 100.0)
                .collect();
            busbar_client::points(times, vec![0; range.len()], values)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let spec = SeriesSpec::new(Resolution::Min1).unit("MW");
    let client = ctx.busbar_client().await?;
    // One native turn: write every batch to a fresh series, read them back.
    let native_turn = |path: String| {
        let (client, data, spec) = (client.clone(), data.clone(), spec.clone());
        async move {
            ctx.admin.create_series(&path, &spec, false).await?;
            let clock = CpuClock::start(ctx.busbar_pid);
            let summary = client
                .write_series_stream(&path, Interval::all(), futures::stream::iter(data))
                .await?;
            let write = clock.stop();
            if summary.points_written as usize != n {
                return Err(format!("wrote {} of {n} points", summary.points_written).into());
            }
            let clock = CpuClock::start(ctx.busbar_pid);
            let mut chunks = client.read_series_stream(&[&path], Interval::all()).await?;
            let mut got = 0usize;
            while let Some(chunk) = chunks.next().await {
                if let SeriesChunk::Points(batch) = chunk? {
                    got += batch.num_rows();
                }
            }
            let read = clock.stop();
            ctx.admin.rm(&path, false).await?;
            if got != n {
                return Err(format!("read {got} of {n} points").into());
            }
            Result::Ok((write, read))
        }
    };

    let mut notes = vec![
        format!(
            "{n} points of one MIN1 series in batches of {BATCH}; best of {turns} turn(s); every write to a fresh series"
        ),
        "Busbar's writes are durable (SQLite WAL, synchronous=FULL: on disk before the acknowledgement); the pyarrow.flight peer keeps DoPut in memory".to_string(),
        "both Flight rows use the same pyarrow.flight client (flight_peer.py client: DoPut, then GetFlightInfo + DoGet twice, the second timed)".to_string(),
    ];

    // The Flight peer and the Busbar node's Flight address.
    let python = procs::bench_python();
    let mut peer = None;
    match &python {
        None => notes.push(
            "pyarrow.flight rows skipped: no bench venv python (make bench installs .venv)".into(),
        ),
        Some(python) => match procs::FlightPeer::start(python, &ctx.tls) {
            Ok(p) => {
                eprintln!(
                    "bench: pyarrow.flight peer {} (pid {})",
                    p.location,
                    p.guard.pid()
                );
                peer = Some(p);
            }
            Err(error) => notes.push(format!("pyarrow.flight peer not started: {error}")),
        },
    }
    let busbar_location = ctx.busbar_config.address.replace("https://", "grpc+tls://");
    let busbar_ca = ctx.work_dir.join("busbar-ca.pem");
    std::fs::write(
        &busbar_ca,
        ctx.busbar_config.ca_pem.as_deref().unwrap_or_default(),
    )?;
    let busbar_flight = FlightServer {
        location: &busbar_location,
        ca: &busbar_ca,
        server_name: ctx.busbar_config.server_name.as_deref(),
        token: Some(&ctx.busbar_token),
        pid: ctx.busbar_pid,
    };

    let mut native = Rates::default();
    let mut flight: Option<Rates> = None;
    let mut pyarrow: Option<Rates> = None;
    for turn in 0..turns {
        eprintln!("bench: timeseries turn {}: busbar native", turn + 1);
        let path = format!("{folder}/native-{turn}");
        let (w, r) = native_turn(path).await?;
        native.add(n, w, r);

        let (Some(python), Some(peer)) = (&python, &peer) else {
            continue;
        };
        eprintln!("bench: timeseries turn {}: busbar over Flight", turn + 1);
        let path = format!("{folder}/flight-{turn}");
        ctx.admin.create_series(&path, &spec, false).await?;
        match flight_turn(python, &busbar_flight, &path, n, timeout) {
            Ok((w, r, first)) => flight.get_or_insert_default().add_flight(n, w, r, first),
            Err(error) => notes.push(format!("busbar Flight turn failed: {error}")),
        }
        ctx.admin.rm(&path, false).await?;

        eprintln!("bench: timeseries turn {}: pyarrow.flight", turn + 1);
        let peer_flight = FlightServer {
            location: &peer.location,
            ca: &ctx.tls.ca,
            server_name: None,
            token: None,
            pid: peer.guard.pid(),
        };
        // The same key every turn: the peer replaces the table it held.
        match flight_turn(python, &peer_flight, "bench/points", n, timeout) {
            Ok((w, r, first)) => pyarrow.get_or_insert_default().add_flight(n, w, r, first),
            Err(error) => notes.push(format!("pyarrow.flight turn failed: {error}")),
        }
    }
    drop(peer);
    let _ = ctx.admin.rm(folder, true).await;
    // Where the time goes, per point, averaged over the turns.
    notes.push(format!(
        "ns per point, averaged over the turns (server CPU from /proc/<pid>/stat in 10 ms ticks, coarse at quick sizes; the Python client's from its process time), busbar native: {}",
        native.describe(n)
    ));
    if let Some(flight) = &flight {
        notes.push(format!(
            "ns per point, busbar Flight: {}",
            flight.describe(n)
        ));
    }
    if let Some(pyarrow) = &pyarrow {
        notes.push(format!(
            "ns per point, pyarrow.flight: {}",
            pyarrow.describe(n)
        ));
    }

    if let (Some(flight), Some(pyarrow)) = (&flight, &pyarrow) {
        notes.push(format!(
            "first (untimed) DoGet of each Flight client process, best of the turns: busbar {:.1}, pyarrow.flight {:.1} M points/s",
            flight.first_read / 1e6,
            pyarrow.first_read / 1e6
        ));
    }
    let label = crate::report::count_label(n);
    let with_notes = |row: Row| notes.iter().fold(row, |row, note| row.note(note.clone()));
    let peer_read = pyarrow.map(|p| p.read);
    let peer_write = pyarrow.map(|p| p.write);
    let mut rows = vec![with_notes(
        Row::new(
            format!("timeseries {label} points, native client: read"),
            "points/s",
            Better::Higher,
            native.read,
        )
        .peer("pyarrow.flight", peer_read)
        .target(Target::ratio_at_least("pyarrow.flight", 0.8)),
    )];
    if let Some(flight) = flight {
        rows.push(with_notes(
            Row::new(
                format!("timeseries {label} points, Flight DoGet: read"),
                "points/s",
                Better::Higher,
                flight.read,
            )
            .peer("pyarrow.flight", peer_read)
            .target(Target::ratio_at_least("pyarrow.flight", 0.8)),
        ));
    }
    rows.push(with_notes(
        Row::new(
            format!("timeseries {label} points, native client: durable write"),
            "points/s",
            Better::Higher,
            native.write,
        )
        .peer("pyarrow.flight", peer_write)
        .target(Target::absolute_at_least(10_000_000.0)),
    ));
    if let Some(flight) = flight {
        rows.push(with_notes(
            Row::new(
                format!("timeseries {label} points, Flight DoPut: durable write"),
                "points/s",
                Better::Higher,
                flight.write,
            )
            .peer("pyarrow.flight", peer_write)
            .target(Target::absolute_at_least(10_000_000.0)),
        ));
    }
    Ok(rows)
}
