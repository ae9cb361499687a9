//! Files of time-series points, by extension: CSV (`utc_time,flags,value`
//! with a header; `flags` may be left out), Arrow IPC file (`.arrow`,
//! `.feather`), Arrow IPC stream (`.arrows`, `.ipc`) and Parquet
//! (`.parquet`). Times in CSV and on the command line are RFC 3339 / ISO 8601
//! (`2026-03-29T01:00:00+02:00`, `2026-03-29T01:00:00Z`; without an offset
//! they are UTC; a bare date is midnight UTC) or epoch milliseconds.

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt32Type};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Rows per batch read from CSV.
const CSV_BATCH: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    ArrowFile,
    ArrowStream,
    Parquet,
}

impl Format {
    pub fn of(path: &Path) -> Result<Format, String> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        Ok(match extension.as_str() {
            "csv" => Format::Csv,
            "arrow" | "feather" => Format::ArrowFile,
            "arrows" | "ipc" => Format::ArrowStream,
            "parquet" | "pq" => Format::Parquet,
            _ => {
                return Err(format!(
                    "cannot tell the format of {}: name it .csv, .arrow, .feather, .arrows, .ipc or .parquet",
                    path.display()
                ));
            }
        })
    }
}

/// A time: RFC 3339 with an offset, a naive date-time (UTC), a date
/// (midnight UTC) or epoch milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    busbar_types::parse_time(text).map_err(|bad| bad.to_string())
}

pub use busbar_types::show_time;

/// Every batch of points in a file (read whole, so a broken file is found
/// before anything is sent).
pub fn read(path: &Path, format: Format) -> Result<Vec<RecordBatch>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    decode(bytes::Bytes::from(data), format).map_err(|e| match format {
        Format::Csv => format!("{} {e}", path.display()),
        _ => format!("cannot read {}: {e}", path.display()),
    })
}

/// The batches of a points file's contents. A file is the user's but not
/// trusted: Arrow IPC goes through busbar-ipc's checks (no message larger
/// than the file, every buffer inside its message), so a damaged or
/// hostile file is an error, never a crash. `make fuzz` runs this
/// (`cli_import`).
pub fn decode(data: bytes::Bytes, format: Format) -> Result<Vec<RecordBatch>, String> {
    match format {
        Format::Csv => read_csv(&data[..]),
        Format::ArrowFile => {
            busbar_ipc::read_file(arrow_buffer::Buffer::from(data)).map_err(|e| e.to_string())
        }
        Format::ArrowStream => {
            busbar_ipc::read_stream(arrow_buffer::Buffer::from(data)).map_err(|e| e.to_string())
        }
        Format::Parquet => {
            use parquet::arrow::arrow_reader::{
                ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
            };
            let bad = |e: parquet::errors::ParquetError| e.to_string();
            // The Arrow schema a writer may embed (ARROW:schema, IPC bytes)
            // is not read: arrow-ipc panics on some (`make fuzz`,
            // cli_import), and Parquet's own types say all points need.
            let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
            // The parquet reader asserts on some malformed metadata (a
            // negative column offset, found by `make fuzz`): caught, refused.
            busbar_ipc::caught(|| {
                ParquetRecordBatchReaderBuilder::try_new_with_options(data, options)
                    .map_err(bad)?
                    .build()
                    .map_err(bad)?
                    .map(|batch| batch.map_err(|e| e.to_string()))
                    .collect()
            })
            .unwrap_or_else(|| Err("the Parquet file is malformed".to_string()))
        }
    }
}

/// The fuzz target `cli_import` (`fuzz/`, `make fuzz`): a points file's
/// contents; the first byte picks the format (CSV, Arrow file, Arrow
/// stream, Parquet).
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    let Some((&format, contents)) = data.split_first() else {
        return;
    };
    let format = [
        Format::Csv,
        Format::ArrowFile,
        Format::ArrowStream,
        Format::Parquet,
    ][usize::from(format) % 4];
    let _ = decode(bytes::Bytes::copy_from_slice(contents), format);
}

fn read_csv(data: &[u8]) -> Result<Vec<RecordBatch>, String> {
    let mut lines = data.lines().enumerate();
    let at = |line: usize, what: String| format!("line {}: {what}", line + 1);
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let header = header.map_err(|e| at(0, e.to_string()))?;
    let names: Vec<String> = header
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .collect();
    let column = |name: &str| names.iter().position(|n| n == name);
    let (Some(time_at), Some(value_at)) = (column("utc_time"), column("value")) else {
        return Err(at(
            0,
            format!(
                "the header must name utc_time and value (and may name flags); it is {header:?}"
            ),
        ));
    };
    let flags_at = column("flags");
    let mut batches = Vec::new();
    let (mut times, mut flags, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for (n, line) in lines {
        let line = line.map_err(|e| at(n, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        let cell = |i: usize| cells.get(i).copied().unwrap_or("");
        times.push(parse_time(cell(time_at)).map_err(|e| at(n, e))?);
        flags.push(match flags_at {
            Some(i) => cell(i)
                .parse::<u32>()
                .map_err(|_| at(n, format!("flags {:?} is not a whole number", cell(i))))?,
            None => 0,
        });
        let value = cell(value_at);
        values.push(if value.is_empty() {
            f64::NAN
        } else {
            value
                .parse::<f64>()
                .map_err(|_| at(n, format!("value {value:?} is not a number")))?
        });
        if times.len() == CSV_BATCH {
            batches.push(batch(&mut times, &mut flags, &mut values)?);
        }
    }
    if !times.is_empty() {
        batches.push(batch(&mut times, &mut flags, &mut values)?);
    }
    Ok(batches)
}

fn batch(
    times: &mut Vec<i64>,
    flags: &mut Vec<u32>,
    values: &mut Vec<f64>,
) -> Result<RecordBatch, String> {
    busbar_client::points(
        std::mem::take(times),
        std::mem::take(flags),
        std::mem::take(values),
    )
    .map_err(|e| e.to_string())
}

/// Where read points go.
pub enum Sink {
    Csv(Box<dyn Write>, u64),
    ArrowFile(arrow_ipc::writer::FileWriter<std::fs::File>, u64),
    ArrowStream(arrow_ipc::writer::StreamWriter<std::fs::File>, u64),
    Parquet(parquet::arrow::ArrowWriter<std::fs::File>, u64),
}

impl Sink {
    pub fn csv_stdout() -> Sink {
        Sink::Csv(Box::new(std::io::BufWriter::new(std::io::stdout())), 0)
    }

    pub fn create(path: &Path, format: Format) -> Result<Sink, String> {
        let file = std::fs::File::create(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let schema = busbar_client::POINTS_SCHEMA.clone();
        let bad = |e: arrow_schema::ArrowError| e.to_string();
        Ok(match format {
            Format::Csv => Sink::Csv(Box::new(std::io::BufWriter::new(file)), 0),
            Format::ArrowFile => Sink::ArrowFile(
                arrow_ipc::writer::FileWriter::try_new(file, &schema).map_err(bad)?,
                0,
            ),
            Format::ArrowStream => Sink::ArrowStream(
                arrow_ipc::writer::StreamWriter::try_new(file, &schema).map_err(bad)?,
                0,
            ),
            Format::Parquet => Sink::Parquet(
                parquet::arrow::ArrowWriter::try_new(file, schema, None)
                    .map_err(|e| e.to_string())?,
                0,
            ),
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let bad = |e: arrow_schema::ArrowError| e.to_string();
        match self {
            Sink::Csv(out, count) => {
                if *count == 0 {
                    writeln!(out, "utc_time,flags,value").map_err(|e| e.to_string())?;
                }
                let times = batch.column(0).as_primitive::<TimestampMillisecondType>();
                let flags = batch.column(1).as_primitive::<UInt32Type>();
                let values = batch.column(2).as_primitive::<Float64Type>();
                for i in 0..batch.num_rows() {
                    writeln!(
                        out,
                        "{},{},{}",
                        show_time(times.value(i)),
                        flags.value(i),
                        values.value(i)
                    )
                    .map_err(|e| e.to_string())?;
                }
                *count += batch.num_rows() as u64;
            }
            Sink::ArrowFile(writer, count) => {
                writer.write(batch).map_err(bad)?;
                *count += batch.num_rows() as u64;
            }
            Sink::ArrowStream(writer, count) => {
                writer.write(batch).map_err(bad)?;
                *count += batch.num_rows() as u64;
            }
            Sink::Parquet(writer, count) => {
                writer.write(batch).map_err(|e| e.to_string())?;
                *count += batch.num_rows() as u64;
            }
        }
        Ok(())
    }

    /// Closes the file; returns how many points went in.
    pub fn finish(self) -> Result<u64, String> {
        let bad = |e: arrow_schema::ArrowError| e.to_string();
        match self {
            Sink::Csv(mut out, count) => {
                if count == 0 {
                    writeln!(out, "utc_time,flags,value").map_err(|e| e.to_string())?;
                }
                out.flush().map_err(|e| e.to_string())?;
                Ok(count)
            }
            Sink::ArrowFile(mut writer, count) => writer.finish().map_err(bad).map(|_| count),
            Sink::ArrowStream(mut writer, count) => writer.finish().map_err(bad).map(|_| count),
            Sink::Parquet(writer, count) => {
                writer.close().map_err(|e| e.to_string()).map(|_| count)
            }
        }
    }
}

/// A progress bar on stderr that shows itself only once a transfer has
/// taken more than half a second, and only on a terminal.
#[derive(Clone)]
pub struct Progress {
    bar: indicatif::ProgressBar,
    started: Instant,
    shown: Arc<AtomicBool>,
}

/// A rate as a whole number with separators ("1,234,568"), not
/// indicatif's raw float ("1234567.8912").
fn rate_text(per_sec: f64) -> String {
    indicatif::HumanCount(per_sec.max(0.0).round() as u64).to_string()
}

impl Progress {
    pub fn new(total: u64, what: &str) -> Progress {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::hidden(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {human_pos}/{human_len} points ({rate} points/s, {eta} left)",
        ) {
            let rate = |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = out.write_str(&rate_text(state.per_sec()));
            };
            bar.set_style(style.with_key("rate", rate));
        }
        bar.set_message(what.to_string());
        Progress {
            bar,
            started: Instant::now(),
            shown: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn add(&self, points: u64) {
        self.bar.inc(points);
        if self.started.elapsed().as_millis() > 500 && !self.shown.swap(true, Ordering::Relaxed) {
            self.bar
                .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_rate_is_a_rounded_whole_number() {
        assert_eq!(rate_text(1_234_567.891_2), "1,234,568");
        assert_eq!(rate_text(0.4), "0");
        assert_eq!(rate_text(f64::NAN), "0");
    }
}
