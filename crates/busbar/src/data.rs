//! `busbar ts …` and `busbar proc …`: time series and stored procedures.

use crate::commands::{print_table, rows_affected, sql_param};
use busbar::points_file::{self, Format};
use busbar_client::{
    Client, Curve, Interval, ProcedureArgs, Resolution, SeriesChunk, SeriesSpec, curve_name,
    parse_curve, parse_resolution, resolution_name,
};
use clap::Subcommand;
use futures::StreamExt;
use std::path::PathBuf;

type Outcome = Result<(), String>;

#[derive(Subcommand)]
pub enum TsCommand {
    /// Create a time series.
    Create {
        path: String,
        /// breakpoint, 1min, 5min, 10min, 15min, 30min, hour, day, week, month or year
        #[arg(long)]
        resolution: String,
        /// Unit of the values, e.g. MW
        #[arg(long, default_value = "")]
        unit: String,
        /// staircase (a value holds until the next point) or linear
        #[arg(long, default_value = "staircase")]
        curve: String,
        /// IANA time zone of the series' calendar (days, weeks, months); default UTC
        #[arg(long = "tz")]
        time_zone: Option<String>,
        /// Create missing parent folders too.
        #[arg(short, long)]
        parents: bool,
    },
    /// Replace an interval of a series with the points in FILE (.csv,
    /// .arrow/.feather, .arrows/.ipc, .parquet). The interval defaults to the
    /// file's first timestamp up to one millisecond past its last.
    Write {
        path: String,
        file: PathBuf,
        /// Start of the interval replaced (included), as for `ts read`
        #[arg(long)]
        start: Option<String>,
        /// End of the interval replaced (excluded), as for `ts read`
        #[arg(long)]
        end: Option<String>,
    },
    /// Read the points in [start, end) as CSV on stdout, or into --out FILE
    /// (format by extension).
    Read {
        path: String,
        /// First time to read (included): RFC 3339 such as 2026-03-29T01:00:00+02:00 (no offset: UTC), a date, or epoch ms; default: the first point
        #[arg(long)]
        start: Option<String>,
        /// Time to stop at (excluded), as --start; default: past the last point
        #[arg(long)]
        end: Option<String>,
        /// Write the points to FILE instead of CSV on stdout: .csv, .arrow/.feather, .arrows/.ipc or .parquet
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List the time series under a folder, with their definitions and extent.
    Ls {
        #[arg(default_value = "/")]
        path: String,
    },
}

#[derive(Subcommand)]
pub enum ProcCommand {
    /// Create (or with --replace, replace) a stored procedure.
    Create {
        database: String,
        name: String,
        /// SQL statements, separated by semicolons, using :name parameters.
        body: String,
        /// A parameter name, in positional order (repeat for each).
        #[arg(long = "param")]
        params: Vec<String>,
        #[arg(long)]
        replace: bool,
    },
    /// Run a procedure with arguments VALUE (by position) or NAME=VALUE (by name).
    Run {
        database: String,
        name: String,
        args: Vec<String>,
    },
    /// List a database's procedures.
    List { database: String },
    /// Drop a procedure.
    Drop { database: String, name: String },
}

fn interval(start: Option<String>, end: Option<String>) -> Result<Interval, String> {
    let parse = |text: Option<String>| text.as_deref().map(points_file::parse_time).transpose();
    Ok(Interval {
        start_ms: parse(start)?,
        end_ms: parse(end)?,
    })
}

pub async fn ts(client: &Client, command: TsCommand) -> Outcome {
    let e = |error: busbar_client::Error| error.to_string();
    match command {
        TsCommand::Create {
            path,
            resolution: r,
            unit,
            curve,
            time_zone,
            parents,
        } => {
            let mut spec = SeriesSpec::new(parse_resolution(&r).map_err(e)?).unit(unit);
            spec = spec.curve(parse_curve(&curve).map_err(e)?);
            if let Some(zone) = time_zone {
                spec = spec.time_zone(zone);
            }
            client
                .create_series(&path, &spec, parents)
                .await
                .map_err(e)?;
        }
        TsCommand::Write {
            path,
            file,
            start,
            end,
        } => {
            let interval = interval(start, end)?;
            let format = Format::of(&file)?;
            let batches = points_file::read(&file, format)?;
            let total: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
            let progress = points_file::Progress::new(total, "writing");
            let counter = progress.clone();
            let stream = futures::stream::iter(batches).inspect(move |batch| {
                counter.add(batch.num_rows() as u64);
            });
            let summary = client
                .write_series_stream(&path, interval, stream)
                .await
                .map_err(e)?;
            progress.finish();
            eprintln!(
                "wrote {} points, replaced {} in [{}, {})",
                summary.points_written,
                summary.points_deleted,
                points_file::show_time(summary.start_ms),
                points_file::show_time(summary.end_ms)
            );
        }
        TsCommand::Read {
            path,
            start,
            end,
            out,
        } => {
            let interval = interval(start, end)?;
            let mut chunks = client
                .read_series_stream(&[path.as_str()], interval)
                .await
                .map_err(e)?;
            let mut sink = match &out {
                Some(file) => points_file::Sink::create(file, Format::of(file)?)?,
                None => points_file::Sink::csv_stdout(),
            };
            let mut progress = None;
            while let Some(chunk) = chunks.next().await {
                match chunk.map_err(e)? {
                    SeriesChunk::Start(info) => {
                        progress = Some(points_file::Progress::new(info.points, "reading"));
                    }
                    SeriesChunk::Points(batch) => {
                        if let Some(progress) = &progress {
                            progress.add(batch.num_rows() as u64);
                        }
                        sink.write(&batch)?;
                    }
                }
            }
            if let Some(progress) = progress {
                progress.finish();
            }
            let written = sink.finish()?;
            if let Some(file) = out {
                eprintln!("wrote {written} points to {}", file.display());
            }
        }
        TsCommand::Ls { path } => {
            let mut rows = Vec::new();
            for resource in client.ls(&path, true).await.map_err(e)? {
                let Some(spec) = resource.series else {
                    continue;
                };
                let info = client.describe_series(&resource.path).await.map_err(e)?;
                let resolution = Resolution::try_from(spec.resolution)
                    .map(resolution_name)
                    .unwrap_or_default();
                let curve = Curve::try_from(spec.curve)
                    .map(curve_name)
                    .unwrap_or_default();
                let time = |ms: Option<i64>| ms.map(points_file::show_time).unwrap_or_default();
                rows.push(serde_json::json!({
                    "path": resource.path,
                    "resolution": resolution,
                    "unit": spec.unit,
                    "curve": curve,
                    "tz": if spec.time_zone.is_empty() { "UTC".to_string() } else { spec.time_zone },
                    "points": info.points,
                    "first": time(info.first_ms),
                    "last": time(info.last_ms),
                }));
            }
            let columns: Vec<String> = [
                "path",
                "resolution",
                "unit",
                "curve",
                "tz",
                "points",
                "first",
                "last",
            ]
            .map(String::from)
            .to_vec();
            print_table(&columns, &rows);
        }
    }
    Ok(())
}

pub async fn proc(client: &Client, command: ProcCommand) -> Outcome {
    let e = |error: busbar_client::Error| error.to_string();
    match command {
        ProcCommand::Create {
            database,
            name,
            body,
            params,
            replace,
        } => {
            let params: Vec<&str> = params.iter().map(String::as_str).collect();
            client
                .create_procedure(&database, &name, &params, &body, replace)
                .await
                .map_err(e)?;
        }
        ProcCommand::Run {
            database,
            name,
            args,
        } => {
            let mut call = ProcedureArgs::new();
            for arg in &args {
                call = match sql_param(arg) {
                    (Some(name), value) => call.kwarg(name, value),
                    (None, value) => call.arg(value),
                };
            }
            let (rows, summary) = client
                .run_procedure_json(&database, &name, call)
                .await
                .map_err(e)?;
            if summary.columns.is_empty() {
                println!("{}", rows_affected(summary.rows_affected));
            } else {
                let columns: Vec<String> = summary.columns.into_iter().map(|c| c.name).collect();
                print_table(&columns, &rows);
            }
        }
        ProcCommand::List { database } => {
            let rows: Vec<serde_json::Value> = client
                .procedures(&database)
                .await
                .map_err(e)?
                .into_iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.name,
                        "params": p.params.join(", "),
                        "body": p.body,
                    })
                })
                .collect();
            print_table(&["name", "params", "body"].map(String::from), &rows);
        }
        ProcCommand::Drop { database, name } => {
            client.drop_procedure(&database, &name).await.map_err(e)?;
        }
    }
    Ok(())
}
