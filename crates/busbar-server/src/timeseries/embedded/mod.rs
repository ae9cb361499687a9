//! Embedded time series: one SQLite file per TIMESERIES resource under
//! `<data>/timeseries/`, WAL with `synchronous = FULL`. Points are kept in
//! chunks of up to [`CHUNK_POINTS`] points, each chunk one row holding three
//! little-endian column blobs (times, flags, values), keyed by its first
//! timestamp. Chunks never overlap, so a read of `[start, end)` is a range
//! scan over a few large rows, and a write replaces whole chunks except at the
//! interval's two edges.

pub mod points_wire;

pub use points_wire::{PointsColumns, PointsMessage};

use crate::error::{Error, Result};
use crate::sessions::DataSession;
use crate::sql::embedded::transaction::SqliteTransaction;
use crate::sql::embedded::writers::{SharedWriter, WriterPool};
use crate::sql::embedded::{Held, in_session};
use crate::timeseries::model::{
    Extent, Grid, ResolutionGrid, SeriesSpec, WriteSummary, columns, row_error, show_time,
};
use crate::timeseries::{BatchSource, PointsSink, SeriesEngine, SeriesRead};
use arrow_array::{Array, RecordBatch};
use async_trait::async_trait;
use busbar_proto::v1::PointFlag;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Points per stored chunk (about 640 KiB of column data when full).
pub const CHUNK_POINTS: usize = 32 * 1024;

/// Columns of points, in time order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Points {
    pub times: Vec<i64>,
    pub flags: Vec<u32>,
    pub values: Vec<f64>,
}

impl Points {
    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    fn push(&mut self, time: i64, flags: u32, value: f64) {
        self.times.push(time);
        self.flags.push(flags);
        self.values.push(value);
    }

    fn extend_from(&mut self, other: &Points, range: std::ops::Range<usize>) {
        self.times.extend_from_slice(&other.times[range.clone()]);
        self.flags.extend_from_slice(&other.flags[range.clone()]);
        self.values.extend_from_slice(&other.values[range]);
    }

    fn slice(&self, range: std::ops::Range<usize>) -> Points {
        let mut points = Points::default();
        points.extend_from(self, range);
        points
    }

    /// The points as a record batch of [`POINTS_SCHEMA`].
    #[cfg(test)]
    pub fn into_batch(self) -> RecordBatch {
        use crate::timeseries::model::POINTS_SCHEMA;
        use arrow_array::{ArrayRef, Float64Array, TimestampMillisecondArray, UInt32Array};
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from(self.times).with_timezone("UTC")),
            Arc::new(UInt32Array::from(self.flags)),
            Arc::new(Float64Array::from(self.values)),
        ];
        RecordBatch::try_new(POINTS_SCHEMA.clone(), columns)
            .expect("three equal columns of the points schema")
    }
}

fn encode<T: Copy, const N: usize>(values: &[T], to_bytes: fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * N);
    for value in values {
        out.extend_from_slice(&to_bytes(*value));
    }
    out
}

fn decode<T, const N: usize>(bytes: &[u8], from_bytes: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|piece| from_bytes(piece.try_into().expect("chunks_exact gives N bytes")))
        .collect()
}

pub(super) fn corrupt(what: &str) -> Error {
    Error::internal(format!("time-series storage is damaged: {what}"))
}

/// One stored chunk, decoded, from a row of `CHUNK_COLUMNS`.
fn read_chunk(row: &rusqlite::Row<'_>) -> Result<(i64, Points)> {
    let (start, last): (i64, i64) = (row.get(0)?, row.get(1)?);
    let count = usize::try_from(row.get::<_, i64>(2)?)
        .ok()
        .filter(|&n| n <= CHUNK_POINTS)
        .ok_or_else(|| corrupt(&format!("chunk {start} has a point count out of range")))?;
    let uneven = || corrupt(&format!("chunk {start} has uneven columns"));
    let blob = |i: usize| -> Result<&[u8]> { row.get_ref(i)?.as_blob().map_err(|_| uneven()) };
    // A column kept as a rule has an empty blob (see `insert_chunk`).
    let times = match row.get::<_, Option<i64>>(6)? {
        Some(step) if blob(3)?.is_empty() && checked_step(start, count, step).is_some() => {
            (0..count as i64).map(|i| start + i * step).collect()
        }
        _ => decode(blob(3)?, i64::from_le_bytes),
    };
    let flags = match row.get::<_, Option<i64>>(7)? {
        Some(flags) if blob(4)?.is_empty() => {
            vec![u32::try_from(flags).map_err(|_| uneven())?; count]
        }
        _ => decode(blob(4)?, u32::from_le_bytes),
    };
    let values = decode(blob(5)?, f64::from_le_bytes);
    if (times.first(), times.last()) != (Some(&start), Some(&last))
        || [times.len(), flags.len(), values.len()] != [count; 3]
    {
        return Err(uneven());
    }
    Ok((
        start,
        Points {
            times,
            flags,
            values,
        },
    ))
}

/// Whether `step` makes `count` times from `start` without overflowing:
/// the last time, when it does.
pub(super) fn checked_step(start: i64, count: usize, step: i64) -> Option<i64> {
    if step < 0 || (count > 1 && step == 0) {
        return None;
    }
    (count.max(1) as i64 - 1)
        .checked_mul(step)
        .and_then(|span| start.checked_add(span))
}

/// The columns of a chunk row that [`read_chunk`] decodes.
const CHUNK_COLUMNS: &str = "start_ms, last_ms, count, times, flags, vals, step_ms, same_flags";

/// The step between the times when it is one step throughout (0 for a
/// single point), for a chunk's `step_ms`.
fn regular_step(times: &[i64]) -> Option<i64> {
    let step = match times {
        [] => return None,
        [_] => return Some(0),
        [first, second, ..] => second.checked_sub(*first)?,
    };
    times
        .windows(2)
        .all(|pair| pair[1].checked_sub(pair[0]) == Some(step))
        .then_some(step)
}

/// The flags every point has, when they all have the same, for a chunk's
/// `same_flags`.
fn same_flags(flags: &[u32]) -> Option<u32> {
    let first = *flags.first()?;
    flags.iter().all(|&f| f == first).then_some(first)
}

/// Stores a chunk. Times on one step and flags that are all the same are
/// kept as that rule (`step_ms`, `same_flags`) with an empty blob: a regular
/// series without flags stores 8 bytes per point instead of 20.
fn insert_chunk(conn: &Connection, points: &Points) -> Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    let step = regular_step(&points.times);
    let flags = same_flags(&points.flags);
    let unless = |rule: bool, blob: fn(&Points) -> Vec<u8>| {
        if rule { Vec::new() } else { blob(points) }
    };
    conn.prepare_cached(
        "INSERT INTO chunks (start_ms, last_ms, count, times, flags, vals, step_ms, same_flags)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        points.times[0],
        points.times[points.len() - 1],
        points.len() as i64,
        unless(step.is_some(), |p| encode(&p.times, i64::to_le_bytes)),
        unless(flags.is_some(), |p| encode(&p.flags, u32::to_le_bytes)),
        encode(&points.values, f64::to_le_bytes),
        step,
        flags,
    ])?;
    Ok(())
}

fn delete_chunk(conn: &Connection, start: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM chunks WHERE start_ms = ?1")?
        .execute([start])?;
    Ok(())
}

/// Chunks that may hold points in `[from, to)`, oldest first: the last chunk
/// starting at or before `from`, and every chunk starting before `to` after it.
fn chunks_between(conn: &Connection, from: i64, to: i64) -> Result<Vec<(i64, Points)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CHUNK_COLUMNS} FROM chunks
         WHERE start_ms >= coalesce((SELECT max(start_ms) FROM chunks WHERE start_ms <= ?1), ?1)
           AND start_ms < ?2 ORDER BY start_ms"
    ))?;
    let mut rows = stmt.query([from, to])?;
    let mut chunks = Vec::new();
    while let Some(row) = rows.next()? {
        chunks.push(read_chunk(row)?);
    }
    Ok(chunks)
}

/// Deletes the points in `[from, to)`; returns how many there were.
fn clear(conn: &Connection, from: i64, to: i64) -> Result<u64> {
    if from >= to {
        return Ok(0);
    }
    // Chunks wholly inside go without reading their blobs; only the (at most
    // two) chunks across an edge are decoded and split.
    let extents: Vec<(i64, i64, u64)> = conn
        .prepare_cached(
            "SELECT start_ms, last_ms, count FROM chunks
             WHERE start_ms >= coalesce((SELECT max(start_ms) FROM chunks WHERE start_ms <= ?1), ?1)
               AND start_ms < ?2 ORDER BY start_ms",
        )?
        .query_map([from, to], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut deleted = 0;
    for (start, last, count) in extents {
        if last < from {
            continue;
        }
        if start >= from && last < to {
            delete_chunk(conn, start)?;
            deleted += count;
            continue;
        }
        let Some((_, points)) = chunks_between(conn, start, start + 1)?.pop() else {
            continue;
        };
        let lo = points.times.partition_point(|&t| t < from);
        let hi = points.times.partition_point(|&t| t < to);
        if lo == hi {
            continue;
        }
        deleted += (hi - lo) as u64;
        delete_chunk(conn, start)?;
        insert_chunk(conn, &points.slice(0..lo))?;
        insert_chunk(conn, &points.slice(hi..points.len()))?;
    }
    Ok(deleted)
}

/// Merges runs of neighbouring small chunks around `[from, to]`, so that many
/// small writes do not leave the series in many tiny chunks.
fn compact(conn: &Connection, from: i64, to: i64) -> Result<()> {
    let sizes: Vec<(i64, usize)> = conn
        .prepare_cached(
            "SELECT start_ms, count FROM chunks
             WHERE start_ms >= coalesce((SELECT max(start_ms) FROM chunks WHERE start_ms < ?1), ?1)
               AND start_ms <= coalesce((SELECT min(start_ms) FROM chunks WHERE start_ms > ?2), ?2)
             ORDER BY start_ms",
        )?
        .query_map([from, to], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)? as usize))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut group: Vec<(i64, usize)> = Vec::new();
    let merge = |group: &mut Vec<(i64, usize)>| -> Result<()> {
        if group.len() > 1 {
            let first = group[0].0;
            let last = group[group.len() - 1].0;
            let mut merged = Points::default();
            for (start, points) in chunks_between(conn, first, last + 1)? {
                merged.extend_from(&points, 0..points.len());
                delete_chunk(conn, start)?;
            }
            insert_chunk(conn, &merged)?;
        }
        group.clear();
        Ok(())
    };
    for chunk in sizes {
        let total: usize = group.iter().map(|(_, n)| n).sum();
        if total + chunk.1 > CHUNK_POINTS {
            merge(&mut group)?;
        }
        group.push(chunk);
    }
    merge(&mut group)
}

/// Replaces an interval of one series with new points, batch by batch, inside
/// the caller's transaction. Points are checked as they arrive; the first bad
/// row fails the write, and the caller rolls the transaction back.
pub struct SeriesWrite<'c> {
    conn: &'c Connection,
    grid: Grid,
    start: Option<i64>,
    end: Option<i64>,
    /// Old points before this time (from the interval's start) are gone.
    cleared_to: Option<i64>,
    pending: Points,
    first: Option<i64>,
    last: Option<i64>,
    row: u64,
    summary: WriteSummary,
}

impl<'c> SeriesWrite<'c> {
    pub fn new(
        conn: &'c Connection,
        spec: &SeriesSpec,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<SeriesWrite<'c>> {
        if let (Some(start), Some(end)) = (start, end)
            && start >= end
        {
            return Err(Error::invalid_argument(format!(
                "the interval [{}, {}) is empty: start must be before end",
                show_time(start),
                show_time(end)
            )));
        }
        Ok(SeriesWrite {
            conn,
            grid: Grid::new(spec)?,
            start,
            end,
            cleared_to: start,
            pending: Points::default(),
            first: None,
            last: None,
            row: 0,
            summary: WriteSummary::default(),
        })
    }

    /// Checks and takes one batch of points (any timestamp unit; naive
    /// timestamps are UTC; integer flags and numeric values are widened).
    pub fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        let (times, flags, values) = columns(batch, self.row)?;
        for i in 0..batch.num_rows() {
            self.row += 1;
            let row = self.row;
            for (name, column) in [("utc_time", &times as &dyn Array), ("flags", &flags)] {
                if column.is_null(i) {
                    return Err(row_error(row, format!("{name} is null")));
                }
            }
            let time = times.value(i);
            if let Some(last) = self.last
                && time <= last
            {
                return Err(row_error(
                    row,
                    if time == last {
                        format!("{} repeats the previous row's timestamp", show_time(time))
                    } else {
                        format!(
                            "{} is before the previous row's {}: rows must be sorted by time",
                            show_time(time),
                            show_time(last)
                        )
                    },
                ));
            }
            if let Some(start) = self.start
                && time < start
            {
                return Err(row_error(
                    row,
                    format!(
                        "{} is before the interval's start {}",
                        show_time(time),
                        show_time(start)
                    ),
                ));
            }
            if let Some(end) = self.end
                && time >= end
            {
                return Err(row_error(
                    row,
                    format!(
                        "{} is at or after the interval's end {}",
                        show_time(time),
                        show_time(end)
                    ),
                ));
            }
            if !self.grid.holds(time) {
                return Err(row_error(
                    row,
                    format!(
                        "{} is not on the series' {} grid{}",
                        show_time(time),
                        self.grid.resolution.describe(),
                        if self.grid.utc {
                            String::new()
                        } else {
                            format!(
                                " in {}",
                                self.grid.zone.iana_name().unwrap_or("its time zone")
                            )
                        }
                    ),
                ));
            }
            self.first.get_or_insert(time);
            self.last = Some(time);
            // A null value is a missing point, as pandas and pyarrow
            // spell one: stored as NaN with the MISSING flag, which is how
            // reads give it back (docs/data.md).
            let (flag, value) = if values.is_null(i) {
                (flags.value(i) | PointFlag::Missing as u32, f64::NAN)
            } else {
                (flags.value(i), values.value(i))
            };
            self.pending.push(time, flag, value);
            if self.pending.len() == CHUNK_POINTS {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let first = self.pending.times[0];
        let last = self.pending.times[self.pending.len() - 1];
        let from = *self.cleared_to.get_or_insert(first);
        self.summary.deleted += clear(self.conn, from, last + 1)?;
        self.cleared_to = Some(last + 1);
        insert_chunk(self.conn, &self.pending)?;
        self.summary.written += self.pending.len() as u64;
        self.pending = Points::default();
        Ok(())
    }

    /// Writes what is pending, deletes the rest of the interval and tidies
    /// the chunks at its edges.
    pub fn finish(mut self) -> Result<WriteSummary> {
        self.flush()?;
        let (Some(start), Some(end)) = (
            self.start.or(self.first),
            self.end.or(self.last.map(|t| t + 1)),
        ) else {
            return Err(Error::invalid_argument(
                "an empty table writes nothing unless start and end name the interval to delete",
            ));
        };
        let from = self.cleared_to.unwrap_or(start);
        self.summary.deleted += clear(self.conn, from, end)?;
        compact(self.conn, start, end)?;
        self.summary.start_ms = start;
        self.summary.end_ms = end;
        Ok(self.summary)
    }
}

pub fn extent(conn: &Connection) -> Result<Extent> {
    Ok(conn.query_row(
        "SELECT coalesce(sum(count), 0), min(start_ms), max(last_ms) FROM chunks",
        [],
        |row| {
            Ok(Extent {
                points: row.get::<_, i64>(0)? as u64,
                first_ms: row.get(1)?,
                last_ms: row.get(2)?,
            })
        },
    )?)
}

/// Columns `chunks` gained after the first release. A file made before
/// them gets them the first time a node opens it; its old chunks hold NULL
/// there (shape unknown), so reads send their columns row by row.
const ADDED_CHUNK_COLUMNS: [&str; 2] = ["step_ms INTEGER", "same_flags INTEGER"];

/// Idle read-only connections kept for reuse, per series and in all.
/// Opening one costs a file open, SQLite's parse of the schema and a mapping
/// of the WAL index (about half a millisecond on the benchmark machine,
/// against a few microseconds for a kept one). A reader finished when its
/// series already has this many idle, or the node this many in all, is
/// closed.
const IDLE_READERS_PER_SERIES: usize = 4;
const IDLE_READERS: usize = 64;

/// Idle readers by series id, and how many in all.
#[derive(Default)]
struct IdleReaders {
    by_series: HashMap<String, Vec<Connection>>,
    count: usize,
}

/// A read-only connection to one series file, lent by the store; it goes
/// back to the store's idle readers when dropped.
pub struct Reader<'s> {
    store: &'s SeriesFiles,
    id: &'s str,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        // A reader left inside a transaction would pin an old snapshot; one
        // of a series removed while it read would hold a deleted file.
        if !conn.is_autocommit() || !self.store.lock_current().contains(self.id) {
            return;
        }
        let mut idle = self.store.lock_idle();
        let idle = &mut *idle;
        let kept = idle.by_series.entry(self.id.to_string()).or_default();
        if kept.len() < IDLE_READERS_PER_SERIES && idle.count < IDLE_READERS {
            kept.push(conn);
            idle.count += 1;
        }
    }
}

/// The series files of a node, with their definitions cached.
/// The files of a node's time series.
pub struct SeriesFiles {
    dir: PathBuf,
    specs: Mutex<HashMap<String, Arc<SeriesSpec>>>,
    writers: WriterPool,
    /// Series whose file this process has seen with every chunk column.
    current: Mutex<HashSet<String>>,
    idle: Mutex<IdleReaders>,
}

/// The node's time series; cheap to clone (clones share the files, specs,
/// writers and idle readers).
#[derive(Clone)]
pub struct TimeSeriesStore(Arc<SeriesFiles>);

impl TimeSeriesStore {
    pub fn new(data_dir: &Path) -> TimeSeriesStore {
        TimeSeriesStore(Arc::new(SeriesFiles::new(data_dir)))
    }
}

impl std::ops::Deref for TimeSeriesStore {
    type Target = SeriesFiles;
    fn deref(&self) -> &SeriesFiles {
        &self.0
    }
}

impl SeriesFiles {
    fn new(data_dir: &Path) -> SeriesFiles {
        SeriesFiles {
            dir: data_dir.join("timeseries"),
            specs: Mutex::new(HashMap::new()),
            writers: WriterPool::default(),
            current: Mutex::new(HashSet::new()),
            idle: Mutex::new(IdleReaders::default()),
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, IdleReaders> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read-only connection to a series file: an idle one when there is
    /// one, else a new one (see [`IDLE_READERS`]).
    pub fn reader<'s>(&'s self, id: &'s str) -> Result<Reader<'s>> {
        let kept = {
            let mut idle = self.lock_idle();
            let conn = idle.by_series.get_mut(id).and_then(Vec::pop);
            if conn.is_some() {
                idle.count -= 1;
            }
            conn
        };
        let conn = match kept {
            Some(conn) => conn,
            None => self.open_reader(id)?,
        };
        Ok(Reader {
            store: self,
            id,
            conn: Some(conn),
        })
    }

    fn file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.sqlite"))
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read-write connection to a series file.
    pub fn open_writer(&self, id: &str) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(self.file(id), flags)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        self.bring_up_to_date(id, &conn)?;
        Ok(conn)
    }

    /// Adds the chunk columns an older file lacks, once per file and process
    /// (the lock held throughout, so two first opens cannot both add them).
    fn bring_up_to_date(&self, id: &str, conn: &Connection) -> Result<()> {
        let mut current = self.lock_current();
        if current.contains(id) {
            return Ok(());
        }
        let have: HashSet<String> = conn
            .prepare("SELECT name FROM pragma_table_info('chunks')")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for column in ADDED_CHUNK_COLUMNS {
            let name = column.split(' ').next().expect("a name first");
            if !have.contains(name) {
                conn.execute_batch(&format!("ALTER TABLE chunks ADD COLUMN {column}"))?;
            }
        }
        current.insert(id.to_string());
        Ok(())
    }

    /// A connection that can only read (WAL: it never waits for writers).
    fn open_reader(&self, id: &str) -> Result<Connection> {
        if !self.lock_current().contains(id) {
            // A read-only connection cannot add the columns reads ask for.
            self.open_writer(id)?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(self.file(id), flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }

    /// Creates the file of a new TIMESERIES resource.
    fn create_file(&self, id: &str, spec: &SeriesSpec) -> Result<()> {
        spec.validate()?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", self.dir.display())))?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(self.file(id), flags)?;
        // Large pages: a chunk spans a few pages instead of a hundred.
        conn.pragma_update(None, "page_size", 65536)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE spec (id INTEGER PRIMARY KEY CHECK (id = 1), definition TEXT NOT NULL);
             CREATE TABLE chunks (
                 start_ms INTEGER PRIMARY KEY,
                 last_ms INTEGER NOT NULL,
                 count INTEGER NOT NULL,
                 times BLOB NOT NULL,
                 flags BLOB NOT NULL,
                 vals BLOB NOT NULL,
                 step_ms INTEGER,
                 same_flags INTEGER
             );",
        )?;
        conn.execute(
            "INSERT INTO spec (id, definition) VALUES (1, ?1)",
            [spec.to_json()],
        )?;
        self.lock_current().insert(id.to_string());
        self.lock_specs()
            .insert(id.to_string(), Arc::new(spec.clone()));
        Ok(())
    }

    /// Removes a deleted series' files.
    fn remove_file(&self, id: &str) {
        self.lock_specs().remove(id);
        self.lock_current().remove(id);
        let mut idle = self.lock_idle();
        if let Some(closed) = idle.by_series.remove(id) {
            idle.count -= closed.len();
        }
        drop(idle);
        self.writers.remove(id);
        let file = self.file(id);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }

    fn lock_specs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SeriesSpec>>> {
        self.specs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A series' definition (cached after the first read of its file).
    pub fn spec_of(&self, id: &str) -> Result<Arc<SeriesSpec>> {
        if let Some(spec) = self.lock_specs().get(id) {
            return Ok(spec.clone());
        }
        let conn = self.reader(id)?;
        let text: String = conn
            .query_row("SELECT definition FROM spec WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()?
            .ok_or_else(|| corrupt("no definition"))?;
        let spec = Arc::new(SeriesSpec::from_json(&text).ok_or_else(|| corrupt("bad definition"))?);
        self.lock_specs().insert(id.to_string(), spec.clone());
        Ok(spec)
    }

    /// The writer connection of a series: writes from outside sessions take
    /// turns on it instead of spinning on SQLite's lock (kept for reuse,
    /// bounded: see [`WriterPool`]).
    pub fn writer(&self, id: &str) -> Result<SharedWriter> {
        self.writers.get(id, || self.open_writer(id))
    }
}

/// Runs `work` on a connection that sees the session's changes when
/// `session` holds this series, or on a fresh reader otherwise. Blocks.
fn with_reader<T>(
    store: &TimeSeriesStore,
    session: Option<&DataSession>,
    id: &str,
    work: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    if let Some(session) = session {
        let mut held = session.work()?;
        if let Some(transaction) = held.series_if_open(id) {
            return work(SqliteTransaction::connection(transaction));
        }
    }
    work(&*store.reader(id)?)
}

/// Replaces an interval with the points `source` hands over, on `conn`
/// inside the caller's transaction.
fn write_on(
    conn: &Connection,
    spec: &SeriesSpec,
    range: (Option<i64>, Option<i64>),
    source: BatchSource,
) -> Result<WriteSummary> {
    let mut write = SeriesWrite::new(conn, spec, range.0, range.1)?;
    source(&mut |batch| write.push(batch))?;
    write.finish()
}

#[async_trait]
impl SeriesEngine for TimeSeriesStore {
    fn create(&self, id: &str, spec: &SeriesSpec) -> Result<()> {
        self.create_file(id, spec)
    }

    fn remove(&self, id: &str) {
        self.remove_file(id)
    }

    async fn spec(&self, id: &str) -> Result<Arc<SeriesSpec>> {
        let (store, id) = (self.clone(), id.to_string());
        tokio::task::spawn_blocking(move || store.spec_of(&id)).await?
    }

    async fn extent(&self, session: Option<Arc<DataSession>>, id: &str) -> Result<Extent> {
        let (store, id) = (self.clone(), id.to_string());
        tokio::task::spawn_blocking(move || with_reader(&store, session.as_deref(), &id, extent))
            .await?
    }

    async fn read(
        &self,
        read: SeriesRead,
        header: Option<oneshot::Sender<Extent>>,
        sink: PointsSink,
    ) -> Result<u64> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let gone = || Error::cancelled("the caller went away");
            with_reader(&store, read.session.as_deref(), &read.id, |conn| {
                // A session's connection already reads in its transaction.
                let _snapshot = match conn.is_autocommit() {
                    true => Some(conn.unchecked_transaction()?),
                    false => None,
                };
                if let Some(header) = header {
                    // Nobody waiting for it means the caller went away.
                    header.send(extent(conn)?).map_err(|_| gone())?;
                }
                let (from, to) = read.range;
                match sink {
                    PointsSink::Ipc(sink) => points_wire::read(conn, from, to, &mut |message| {
                        sink.blocking_send(message).map_err(|_| gone())
                    }),
                    PointsSink::Columns(sink) => {
                        points_wire::read_columns(conn, from, to, &mut |columns| {
                            sink.blocking_send(columns).map_err(|_| gone())
                        })
                    }
                }
            })
        })
        .await?
    }

    async fn write(
        &self,
        session: Option<Arc<DataSession>>,
        id: &str,
        range: (Option<i64>, Option<i64>),
        source: BatchSource,
    ) -> Result<WriteSummary> {
        let (store, id) = (self.clone(), id.to_string());
        tokio::task::spawn_blocking(move || {
            let spec = store.spec_of(&id)?;
            match session {
                Some(session) => {
                    let connect = || store.open_writer(&id);
                    in_session(&session, Held::Series, &id, true, connect, |conn| {
                        conn.execute_batch("SAVEPOINT series_write")?;
                        let result = write_on(conn, &spec, range, source);
                        if result.is_err() {
                            conn.execute_batch("ROLLBACK TO series_write")?;
                        }
                        conn.execute_batch("RELEASE series_write")?;
                        result
                    })
                }
                None => {
                    let writer = store.writer(&id)?;
                    let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
                    let tx =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let summary = write_on(&tx, &spec, range, source)?;
                    tx.commit()?;
                    Ok(summary)
                }
            }
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeseries::model::{Curve, Resolution};
    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampMillisecondType;

    fn spec(resolution: Resolution, zone: Option<&str>) -> SeriesSpec {
        SeriesSpec {
            resolution,
            unit: "MW".into(),
            curve: Curve::Staircase,
            time_zone: zone.map(str::to_string),
        }
    }

    fn series() -> (tempfile::TempDir, TimeSeriesStore, Connection, SeriesSpec) {
        let dir = tempfile::tempdir().unwrap();
        let store = TimeSeriesStore::new(dir.path());
        let spec = spec(Resolution::Breakpoint, None);
        store.create("s", &spec).unwrap();
        let conn = store.open_writer("s").unwrap();
        (dir, store, conn, spec)
    }

    fn points(times: &[i64]) -> RecordBatch {
        Points {
            times: times.to_vec(),
            flags: vec![0; times.len()],
            values: times.iter().map(|t| *t as f64).collect(),
        }
        .into_batch()
    }

    fn write(
        conn: &Connection,
        spec: &SeriesSpec,
        range: (Option<i64>, Option<i64>),
        times: &[i64],
    ) -> Result<WriteSummary> {
        let tx = conn.unchecked_transaction()?;
        let mut write = SeriesWrite::new(&tx, spec, range.0, range.1)?;
        write.push(&points(times))?;
        let summary = write.finish()?;
        tx.commit()?;
        Ok(summary)
    }

    fn all(conn: &Connection) -> Vec<i64> {
        let mut out = Vec::new();
        super::points_wire::read(conn, None, None, &mut |message| {
            out.extend(
                message
                    .batch()?
                    .column(0)
                    .as_primitive::<TimestampMillisecondType>()
                    .values()
                    .iter(),
            );
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn writes_replace_their_interval_and_keep_chunks_large() {
        let (_dir, _store, conn, spec) = series();
        let many: Vec<i64> = (0..100_000).map(|i| i * 10).collect();
        write(&conn, &spec, (None, None), &many).unwrap();
        assert_eq!(all(&conn), many);
        // Replace [100, 200) with two points: eight old ones go.
        let summary = write(&conn, &spec, (Some(100), Some(200)), &[105, 150]).unwrap();
        assert_eq!((summary.written, summary.deleted), (2, 10));
        let mut expected: Vec<i64> = many
            .iter()
            .copied()
            .filter(|t| !(100..200).contains(t))
            .collect();
        expected.extend([105, 150]);
        expected.sort();
        assert_eq!(all(&conn), expected);
        // Many one-point appends merge into the last chunk.
        for t in 1_000_000..1_000_050 {
            write(&conn, &spec, (None, None), &[t]).unwrap();
        }
        let chunks: i64 = conn
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
            .unwrap();
        assert!(chunks <= 5, "{chunks} chunks for 100 050 points");
        // An empty table with an interval deletes it.
        let summary = write(&conn, &spec, (Some(0), Some(1_000_000)), &[]).unwrap();
        assert_eq!(summary.deleted, 99_992);
        assert_eq!(all(&conn), (1_000_000..1_000_050).collect::<Vec<_>>());
    }

    /// The points of a read in the columns form, rules expanded, and how
    /// many batches sent their times and their flags as rules.
    fn all_in_columns(
        conn: &Connection,
        from: Option<i64>,
        to: Option<i64>,
    ) -> (Points, usize, usize) {
        use super::points_wire::{Column, read_columns};
        let mut out = Points::default();
        let (mut time_rules, mut flag_rules) = (0, 0);
        read_columns(conn, from, to, &mut |batch| {
            match batch.times {
                Column::Rule(step) => {
                    time_rules += 1;
                    let rows = batch.rows as i64;
                    out.times
                        .extend((0..rows).map(|i| step.first_ms + i * step.step_ms));
                }
                Column::Values(bytes) => out.times.extend(decode(&bytes, i64::from_le_bytes)),
            }
            match batch.flags {
                Column::Rule(flags) => {
                    flag_rules += 1;
                    out.flags.extend(std::iter::repeat_n(flags, batch.rows));
                }
                Column::Values(bytes) => out.flags.extend(decode(&bytes, u32::from_le_bytes)),
            }
            out.values.extend(decode(&batch.values, f64::from_le_bytes));
            Ok(())
        })
        .unwrap();
        (out, time_rules, flag_rules)
    }

    fn all_in_ipc(conn: &Connection, from: Option<i64>, to: Option<i64>) -> Points {
        let mut out = Points::default();
        super::points_wire::read(conn, from, to, &mut |message| {
            let batch = message.batch()?;
            let column = |i: usize| batch.column(i).to_data().buffers()[0].clone();
            out.times
                .extend(decode(column(0).as_slice(), i64::from_le_bytes));
            out.flags
                .extend(decode(column(1).as_slice(), u32::from_le_bytes));
            out.values
                .extend(decode(column(2).as_slice(), f64::from_le_bytes));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn the_columns_form_sends_rules_for_regular_chunks_and_the_same_points() {
        let (_dir, _store, conn, spec) = series();
        let many: Vec<i64> = (0..100_000).map(|i| i * 10).collect();
        write(&conn, &spec, (None, None), &many).unwrap();
        // One chunk turns irregular, and one gets a flag.
        write(&conn, &spec, (Some(100), Some(200)), &[105, 150]).unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        let mut flagged = SeriesWrite::new(&tx, &spec, None, None).unwrap();
        let batch = Points {
            times: vec![500_000, 500_010],
            flags: vec![0, 2],
            values: vec![1.0, 2.0],
        };
        flagged.push(&batch.into_batch()).unwrap();
        flagged.finish().unwrap();
        tx.commit().unwrap();
        let chunks: usize = conn
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
            .unwrap();
        // A rule is stored instead of its column, not beside it.
        let stored: (i64, i64) = conn
            .query_row(
                "SELECT sum(length(times)), sum(length(flags)) FROM chunks
                 WHERE step_ms IS NOT NULL AND same_flags IS NOT NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(stored, (0, 0));
        for (from, to) in [
            (None, None),
            (Some(55), Some(700_005)),
            (Some(499_990), Some(500_011)),
        ] {
            let (columns, time_rules, flag_rules) = all_in_columns(&conn, from, to);
            let ipc = all_in_ipc(&conn, from, to);
            assert!(!ipc.is_empty());
            assert_eq!(columns, ipc, "{from:?}..{to:?}");
            if from.is_none() {
                // Every chunk but the one around 105 and 150 is regular, and
                // every one but the one around 500 010 has flags 0 only.
                assert_eq!((time_rules, flag_rules), (chunks - 1, chunks - 1));
            }
        }
        // A step that does not match the chunk's extent is damage.
        conn.execute("UPDATE chunks SET step_ms = 7 WHERE start_ms = 0", [])
            .unwrap();
        let error =
            super::points_wire::read_columns(&conn, None, None, &mut |_| Ok(())).unwrap_err();
        assert!(error.message.contains("does not match"), "{error}");
    }

    /// A series file made before chunks recorded their shape is brought up
    /// to date when opened: its old chunks read in full, new ones as rules.
    #[test]
    fn files_without_chunk_shapes_gain_them_and_still_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("timeseries")).unwrap();
        let spec = spec(Resolution::Breakpoint, None);
        {
            let old = Connection::open(dir.path().join("timeseries/old.sqlite")).unwrap();
            old.execute_batch(
                "CREATE TABLE spec (id INTEGER PRIMARY KEY CHECK (id = 1), definition TEXT NOT NULL);
                 CREATE TABLE chunks (start_ms INTEGER PRIMARY KEY, last_ms INTEGER NOT NULL,
                     count INTEGER NOT NULL, times BLOB NOT NULL, flags BLOB NOT NULL, vals BLOB NOT NULL);",
            )
            .unwrap();
            old.execute("INSERT INTO spec VALUES (1, ?1)", [spec.to_json()])
                .unwrap();
            old.execute(
                "INSERT INTO chunks VALUES (10, 30, 3, ?1, ?2, ?3)",
                params![
                    encode(&[10i64, 20, 30], i64::to_le_bytes),
                    encode(&[0u32; 3], u32::to_le_bytes),
                    encode(&[1.0f64, 2.0, 3.0], f64::to_le_bytes),
                ],
            )
            .unwrap();
        }
        let store = TimeSeriesStore::new(dir.path());
        let reader = store.open_reader("old").unwrap();
        let (points, time_rules, flag_rules) = all_in_columns(&reader, None, None);
        assert_eq!(points.times, vec![10, 20, 30]);
        assert_eq!(points.values, vec![1.0, 2.0, 3.0]);
        assert_eq!((time_rules, flag_rules), (0, 0));
        let writer = store.open_writer("old").unwrap();
        write(&writer, &spec, (None, None), &[100, 200, 300]).unwrap();
        let (points, time_rules, flag_rules) = all_in_columns(&reader, None, None);
        assert_eq!(points.times, vec![10, 20, 30, 100, 200, 300]);
        // The old chunk and the new one merged into one written now.
        assert_eq!((time_rules, flag_rules), (0, 1));
        assert_eq!(
            store.spec_of("old").unwrap().resolution,
            Resolution::Breakpoint
        );
    }

    #[test]
    fn idle_readers_are_kept_within_bounds_and_not_for_removed_series() {
        let (_dir, store, _conn, _spec) = series();
        let (a, b) = (store.reader("s").unwrap(), store.reader("s").unwrap());
        drop((a, b));
        assert_eq!(store.lock_idle().count, 2);
        let again = store.reader("s").unwrap();
        assert_eq!(store.lock_idle().count, 1);
        let many: Vec<_> = (0..6).map(|_| store.reader("s").unwrap()).collect();
        drop((many, again));
        assert_eq!(store.lock_idle().count, IDLE_READERS_PER_SERIES);
        // A reader still lent when its series goes is closed, not kept.
        let lent = store.reader("s").unwrap();
        store.remove("s");
        drop(lent);
        assert_eq!(store.lock_idle().count, 0);
    }

    #[test]
    fn chunk_shapes() {
        assert_eq!(regular_step(&[]), None);
        assert_eq!(regular_step(&[5]), Some(0));
        assert_eq!(regular_step(&[5, 8, 11]), Some(3));
        assert_eq!(regular_step(&[5, 8, 12]), None);
        assert_eq!(regular_step(&[i64::MIN, i64::MAX]), None);
        assert_eq!(regular_step(&[-1, 0, i64::MAX]), None);
        assert_eq!(same_flags(&[]), None);
        assert_eq!(same_flags(&[2, 2]), Some(2));
        assert_eq!(same_flags(&[0, 2]), None);
    }

    #[test]
    fn grids_follow_the_time_zone() {
        let oslo = Grid::new(&spec(Resolution::Day, Some("Europe/Oslo"))).unwrap();
        // 2026-03-29 is 23 hours long in Oslo: midnights at 23:00Z and 22:00Z.
        assert!(oslo.holds(1_774_738_800_000)); // 2026-03-28T23:00:00Z
        assert!(oslo.holds(1_774_821_600_000)); // 2026-03-29T22:00:00Z
        assert!(!oslo.holds(1_774_825_200_000)); // 2026-03-29T23:00:00Z
        let month = Grid::new(&spec(Resolution::Month, None)).unwrap();
        assert!(month.holds(1_775_001_600_000)); // 2026-04-01T00:00:00Z
        assert!(!month.holds(1_775_088_000_000)); // 2026-04-02
        let week = Grid::new(&spec(Resolution::Week, None)).unwrap();
        assert!(week.holds(1_774_828_800_000)); // Monday 2026-03-30
        assert!(!week.holds(1_774_742_400_000)); // Sunday 2026-03-29
        // Kathmandu is UTC+05:45: its half hours fall on a quarter past in UTC.
        let half = Grid::new(&spec(Resolution::Min30, Some("Asia/Kathmandu"))).unwrap();
        assert!(half.holds(1_774_743_300_000)); // 2026-03-29T00:15:00Z, 06:00 local
        assert!(!half.holds(1_774_742_400_000)); // 2026-03-29T00:00:00Z, 05:45 local
    }
}
