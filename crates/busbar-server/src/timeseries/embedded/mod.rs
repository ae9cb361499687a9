//! Embedded time series: one SQLite file per TIMESERIES resource under
//! `<data>/timeseries/`, WAL with `synchronous = FULL`. Points are kept in
//! chunks of up to [`CHUNK_POINTS`] points, each chunk one row holding three
//! little-endian column blobs (times, flags, values), keyed by its first
//! timestamp. Chunks never overlap, so a read of `[start, end)` is a range
//! scan over a few large rows, and a write replaces whole chunks except at the
//! interval's two edges.

mod chunks;
mod files;
pub mod points_wire;
mod write;

pub use chunks::*;
pub use files::*;
pub use write::*;

pub use points_wire::{PointsColumns, PointsMessage};

use crate::error::{Error, Result};
use crate::sessions::{DataSession, Part};
use crate::sql::embedded::in_session;
use crate::sql::embedded::transaction::SqliteTransaction;
use crate::sql::embedded::writers::{SharedWriter, WriterPool};
use crate::timeseries::model::{Extent, SeriesSpec, WriteCheck, WriteSummary};
use crate::timeseries::{
    BatchSource, ExtentFirst, IntervalWrite, PointsSink, SeriesEngine, SeriesInterval,
};
use arrow_array::RecordBatch;
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
        if let Some(transaction) = held.held(Part::Series, id) {
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
    async fn create(&self, id: &str, spec: &SeriesSpec) -> Result<()> {
        self.create_file(id, spec)
    }

    async fn remove(&self, id: &str) {
        self.remove_file(id)
    }

    async fn spec(&self, id: &str) -> Result<Arc<SeriesSpec>> {
        // Definitions never change: a cached one needs no trip to a thread.
        if let Some(spec) = self.cached_spec(id) {
            return Ok(spec);
        }
        let (store, id) = (self.clone(), id.to_string());
        tokio::task::spawn_blocking(move || store.spec_of(&id)).await?
    }

    async fn extent(&self, session: Option<Arc<DataSession>>, id: &str) -> Result<Extent> {
        let (store, id) = (self.clone(), id.to_string());
        tokio::task::spawn_blocking(move || with_reader(&store, session.as_deref(), &id, extent))
            .await?
    }

    async fn read(&self, of: SeriesInterval, header: ExtentFirst, sink: PointsSink) -> Result<u64> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let gone = || Error::cancelled("the caller went away");
            with_reader(&store, of.session.as_deref(), &of.id, |conn| {
                // A session's connection already reads in its transaction.
                let _snapshot = match conn.is_autocommit() {
                    true => Some(conn.unchecked_transaction()?),
                    false => None,
                };
                if let Some(header) = header {
                    // Nobody waiting for it means the caller went away.
                    header.send(extent(conn)?).map_err(|_| gone())?;
                }
                let (from, to) = of.range;
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

    async fn write(&self, write: IntervalWrite) -> Result<WriteSummary> {
        // An embedded node keeps no keys (no other node to retry on).
        let IntervalWrite {
            interval, source, ..
        } = write;
        let SeriesInterval { session, id, range } = interval;
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let spec = store.spec_of(&id)?;
            match session {
                Some(session) => {
                    let connect = || store.open_writer(&id);
                    in_session(&session, Part::Series, &id, true, connect, |conn| {
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
    use crate::timeseries::model::{Curve, Grid, Resolution};
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
        store.create_file("s", &spec).unwrap();
        let conn = store.open_writer("s").unwrap();
        (dir, store, conn, spec)
    }

    /// [`series`], written with 100,000 points ten milliseconds apart
    /// (which it returns too).
    fn series_of_many() -> (
        tempfile::TempDir,
        TimeSeriesStore,
        Connection,
        SeriesSpec,
        Vec<i64>,
    ) {
        let (dir, store, conn, spec) = series();
        let many: Vec<i64> = (0..100_000).map(|i| i * 10).collect();
        write(&conn, &spec, (None, None), &many).unwrap();
        (dir, store, conn, spec, many)
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
        let (_dir, _store, conn, spec, many) = series_of_many();
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
        let (_dir, _store, conn, spec, _many) = series_of_many();
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
            old.execute(
                "INSERT INTO spec VALUES (1, ?1)",
                [files::spec_to_json(&spec)],
            )
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
        store.remove_file("s");
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
