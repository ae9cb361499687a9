//! The cluster's series engine: time series in the shared PostgreSQL, in
//! the node's own schema `busbar` (user SQL never reaches it), with the
//! embedded engine's semantics and the same Arrow on the wire.
//!
//! Storage: `busbar.series` holds each series' definition (as the embedded
//! files store it) and its point count; each series has a table of its own,
//! `busbar."series_<id without dashes>"`, one row per point (`t` epoch ms,
//! the primary key; `flags`; `value`). A table per series keeps every read
//! a range scan of one primary key, and a deleted series one `DROP TABLE`.
//!
//! Writes replace an interval, all or nothing, in one transaction (or in a
//! savepoint of the session's): the points are checked on a blocking thread
//! by the model's [`WriteCheck`], exactly as embedded, and cross in binary
//! `COPY` chunks of [`CHUNK_POINTS`]; each chunk first deletes the old
//! points up to its last one, and the end of the interval is cleared last.
//! Writers of one series take turns: a write first locks the series' table
//! `IN EXCLUSIVE MODE` (readers are not blocked), and a session keeps that
//! lock until it ends, as an embedded session keeps its file's writer lock;
//! another writer waits up to [`LOCK_WAIT`] and then gets CONFLICT.
//!
//! Reads: one snapshot (a REPEATABLE READ READ ONLY transaction, or the
//! session's transaction, which holds the series' lock) gives the extent
//! and the points, streamed by `COPY ... TO STDOUT (FORMAT binary)` in
//! batches of [`CHUNK_POINTS`] into the same message builders the embedded
//! engine uses. The point count is kept beside the definition, so an extent
//! is two index probes and one row rather than a count of every point.

use crate::error::{Error, ErrorCode, Result};
use crate::sessions::{DataSession, Part};
use crate::store::postgres_reason;
use crate::timeseries::embedded::{
    CHUNK_POINTS, Points, PointsColumns, PointsMessage, spec_from_json, spec_to_json,
};
use crate::timeseries::model::{Extent, SeriesSpec, WriteCheck, WriteSummary, time_zone_of};
use crate::timeseries::{
    BatchSource, ExtentFirst, IntervalWrite, PointsSink, SeriesEngine, SeriesInterval,
};
use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use deadpool_postgres::{Object, Pool};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS busbar.series (
    id         TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    points     BIGINT NOT NULL DEFAULT 0
);
";

/// How long a write waits for another writer of the same series (an open
/// session holds a series until it ends): SQLite's busy timeout on an
/// embedded node.
const LOCK_WAIT: &str = "5s";

/// The cluster's time series; cheap to clone.
#[derive(Clone)]
pub struct PostgresSeries {
    pool: Pool,
    /// Definitions never change: read once per node.
    specs: Arc<Mutex<HashMap<String, Arc<SeriesSpec>>>>,
}

/// A series' table, quoted. Ids are UUIDs; anything else is refused rather
/// than spliced into SQL.
fn table_of(id: &str) -> Result<String> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(Error::internal(format!("bad series id {id:?}")));
    }
    Ok(format!("busbar.\"series_{}\"", id.replace('-', "")))
}

/// A PostgreSQL failure of a series operation as the crate's error.
fn pg(error: tokio_postgres::Error) -> Error {
    let code = match error.as_db_error().map(|db| db.code().clone()) {
        None => ErrorCode::Unavailable,
        Some(SqlState::LOCK_NOT_AVAILABLE) => {
            return Error::conflict(
                "the series is locked by another writer (an open session holds it until it \
                 commits or rolls back); retry",
            );
        }
        Some(SqlState::UNDEFINED_TABLE) => {
            return Error::not_found("the series was deleted");
        }
        Some(SqlState::T_R_SERIALIZATION_FAILURE | SqlState::T_R_DEADLOCK_DETECTED) => {
            ErrorCode::Conflict
        }
        Some(_) => ErrorCode::Internal,
    };
    Error {
        code,
        message: format!("time series storage: {}", postgres_reason(&error)),
    }
}

fn pool_error(error: deadpool_postgres::PoolError) -> Error {
    match error {
        deadpool_postgres::PoolError::Backend(error) => pg(error),
        other => Error {
            code: ErrorCode::Unavailable,
            message: format!("time series storage: PostgreSQL cannot be reached: {other}"),
        },
    }
}

fn damaged(what: &str) -> Error {
    Error::internal(format!("time-series storage is damaged: {what}"))
}

/// The rows a simple-protocol statement changed (its last command's count).
async fn changed(client: &Client, sql: &str) -> Result<u64> {
    let messages = client.simple_query(sql).await.map_err(pg)?;
    Ok(messages
        .iter()
        .rev()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(0))
}

/// Deletes the points in `[from, to)`; returns how many there were.
async fn clear(client: &Client, table: &str, from: i64, to: i64) -> Result<u64> {
    if from >= to {
        return Ok(0);
    }
    // Integers spliced into the text: no statement to prepare, one trip.
    changed(
        client,
        &format!("DELETE FROM {table} WHERE t >= {from} AND t < {to}"),
    )
    .await
}

/// The extent, in the snapshot of the statement (or transaction) it runs in.
async fn extent_on(client: &Client, id: &str, table: &str) -> Result<Extent> {
    let sql = format!(
        "SELECT s.points, (SELECT min(t) FROM {table}), (SELECT max(t) FROM {table}) \
         FROM busbar.series s WHERE s.id = $1"
    );
    let rows = client
        .query_typed(&sql, &[(&id, Type::TEXT)])
        .await
        .map_err(pg)?;
    let row = rows
        .first()
        .ok_or_else(|| Error::not_found("the series was deleted"))?;
    let points: i64 = row.get(0);
    Ok(Extent {
        points: u64::try_from(points).map_err(|_| damaged("a negative point count"))?,
        first_ms: row.get(1),
        last_ms: row.get(2),
    })
}

/// A connection from the pool with a transaction begun: how a session's
/// transaction on a series starts.
async fn begin(pool: Pool, sql: &'static str) -> Result<Object> {
    let client = pool.get().await.map_err(pool_error)?;
    client.batch_execute(sql).await.map_err(pg)?;
    Ok(client)
}

/// Ends a transaction of our own on a pooled connection: commits, or rolls
/// back. A connection whose transaction may still be open never goes back
/// to the pool.
async fn end(client: Object, commit: bool) -> Result<()> {
    let sql = if commit { "COMMIT" } else { "ROLLBACK" };
    match client.batch_execute(sql).await {
        Ok(()) => Ok(()),
        Err(error) => {
            drop(Object::take(client));
            Err(pg(error))
        }
    }
}

impl PostgresSeries {
    /// Series in the store's database (its pool); `busbar.series` made when
    /// missing.
    pub async fn open(pool: Pool) -> Result<PostgresSeries> {
        crate::store::ensure_schema(&pool, SCHEMA).await?;
        Ok(PostgresSeries {
            pool,
            specs: Arc::default(),
        })
    }

    fn lock_specs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SeriesSpec>>> {
        self.specs.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// The session's connection on a series, if it has written there.
fn held(
    session: Option<&DataSession>,
    id: &str,
) -> Result<Option<crate::sessions::postgres::Held>> {
    match session {
        Some(session) => crate::sessions::postgres::held(session, Part::Series, id),
        None => Ok(None),
    }
}

#[async_trait]
impl SeriesEngine for PostgresSeries {
    async fn create(&self, id: &str, spec: &SeriesSpec) -> Result<()> {
        time_zone_of(spec)?;
        let table = table_of(id)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                 t     BIGINT PRIMARY KEY,
                 flags BIGINT NOT NULL,
                 value DOUBLE PRECISION NOT NULL
             )"
        ))
        .await
        .map_err(pg)?;
        tx.execute(
            "INSERT INTO busbar.series (id, definition) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&id, &spec_to_json(spec)],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        self.lock_specs()
            .insert(id.to_string(), Arc::new(spec.clone()));
        Ok(())
    }

    async fn remove(&self, id: &str) {
        self.lock_specs().remove(id);
        let Ok(table) = table_of(id) else { return };
        let (pool, id) = (self.pool.clone(), id.to_string());
        let series = id.clone();
        // In a task of its own, so a caller that goes away cannot stop it
        // half done. DROP waits for reads in progress and for a session
        // that holds the series (until it ends); nothing new can start,
        // the resource being gone already.
        let dropping = tokio::spawn(async move {
            let client = begin(pool, "BEGIN").await?;
            let dropped = async {
                client
                    .execute("DELETE FROM busbar.series WHERE id = $1", &[&id])
                    .await
                    .map_err(pg)?;
                client
                    .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
                    .await
                    .map_err(pg)
            }
            .await;
            end(client, dropped.is_ok()).await?;
            dropped
        });
        match dropping.await.map_err(Error::from) {
            Ok(Ok(())) => {}
            Ok(Err(error)) | Err(error) => {
                tracing::warn!(%series, "dropping a deleted series' table: {}", error.message);
            }
        }
    }

    async fn spec(&self, id: &str) -> Result<Arc<SeriesSpec>> {
        if let Some(spec) = self.lock_specs().get(id).cloned() {
            return Ok(spec);
        }
        let client = self.client().await?;
        let row = client
            .query_opt(
                &crate::store::cached(
                    &client,
                    "SELECT definition FROM busbar.series WHERE id = $1",
                )
                .await?,
                &[&id],
            )
            .await
            .map_err(pg)?
            .ok_or_else(|| Error::not_found("the series was deleted"))?;
        let spec =
            Arc::new(spec_from_json(row.get(0)).ok_or_else(|| damaged("a bad series definition"))?);
        self.lock_specs().insert(id.to_string(), spec.clone());
        Ok(spec)
    }

    async fn extent(&self, session: Option<Arc<DataSession>>, id: &str) -> Result<Extent> {
        let table = table_of(id)?;
        if let Some(held) = held(session.as_deref(), id)? {
            let client = held.lock().await;
            return extent_on(&client, id, &table).await;
        }
        // One statement: one snapshot.
        let client = self.client().await?;
        extent_on(&client, id, &table).await
    }

    async fn read(&self, of: SeriesInterval, header: ExtentFirst, sink: PointsSink) -> Result<u64> {
        let table = table_of(&of.id)?;
        if let Some(held) = held(of.session.as_deref(), &of.id)? {
            // The session's transaction holds the series' lock: its
            // statements see one state of it, its own.
            let client = held.lock().await;
            return read_on(&client, &of, &table, header, sink).await;
        }
        let client = match header {
            // Extent and points from one snapshot.
            Some(_) => {
                begin(
                    self.pool.clone(),
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                )
                .await?
            }
            None => self.client().await?,
        };
        let in_transaction = header.is_some();
        match read_on(&client, &of, &table, header, sink).await {
            Ok(points) if in_transaction => end(client, true).await.map(|()| points),
            Ok(points) => Ok(points),
            Err(error) => {
                // Stopped part way (the caller went away, most often): the
                // rest of the COPY would still have to cross, so the
                // connection is closed instead of going back to the pool.
                drop(Object::take(client));
                Err(error)
            }
        }
    }

    async fn write(&self, write: IntervalWrite) -> Result<WriteSummary> {
        let IntervalWrite {
            interval,
            source,
            key,
        } = write;
        let SeriesInterval { session, id, range } = interval;
        let table = table_of(&id)?;
        let spec = self.spec(&id).await?;
        // An empty interval or a bad time zone is refused before anything.
        let check = WriteCheck::new(&spec, range.0, range.1)?;
        let start = check.start();
        let (chunks, received) = mpsc::channel(2);
        let producing = tokio::task::spawn_blocking(move || produce(check, source, chunks));
        let replace = Replace {
            id,
            table,
            start,
            received,
            producing,
        };
        let pool = self.pool.clone();
        // In a task of its own: a caller that goes away must not stop the
        // write between two statements of a session's transaction.
        tokio::spawn(async move {
            match session {
                Some(session) => replace.in_session(&pool, &session).await,
                None => {
                    let client = begin(pool, "BEGIN").await?;
                    let result = match replace.run(&client).await {
                        Ok(summary) => match key {
                            Some(key) => settle_write(&client, key, summary).await,
                            None => Ok(summary),
                        },
                        failed => failed,
                    };
                    let committed = end(client, result.is_ok()).await;
                    let summary = result?;
                    committed.map_err(|error| Error {
                        code: ErrorCode::Conflict,
                        message: format!(
                            "the write was not committed, so nothing of it is kept: {}",
                            error.message
                        ),
                    })?;
                    Ok(summary)
                }
            }
        })
        .await?
    }
}

/// Records a keyed write's key with its outcome, in its transaction:
/// `summary` if this try is the first, else the first try's (this one's
/// points rolled back).
async fn settle_write(
    client: &Client,
    key: oneshot::Receiver<crate::calls::CallKey>,
    summary: WriteSummary,
) -> Result<WriteSummary> {
    let key = key
        .await
        .map_err(|_| Error::cancelled("the write's stream ended before its key was known"))?;
    crate::calls::settle(client, &key, summary).await
}

impl crate::calls::Replay for WriteSummary {
    fn encode(&self) -> Vec<u8> {
        let fields = [
            self.written as i64,
            self.deleted as i64,
            self.start_ms,
            self.end_ms,
        ];
        fields.iter().flat_map(|f| f.to_be_bytes()).collect()
    }

    fn decode(bytes: &[u8]) -> Result<WriteSummary> {
        let field = |n: usize| -> Option<i64> {
            Some(i64::from_be_bytes(
                bytes.get(n * 8..n * 8 + 8)?.try_into().ok()?,
            ))
        };
        match (bytes.len(), field(0), field(1), field(2), field(3)) {
            (32, Some(written), Some(deleted), Some(start_ms), Some(end_ms)) => Ok(WriteSummary {
                written: written as u64,
                deleted: deleted as u64,
                start_ms,
                end_ms,
            }),
            _ => Err(Error::internal(
                "a kept write outcome is not the summary it should be",
            )),
        }
    }
}

/// Reads the points of `read.range` on `client` (inside the snapshot the
/// caller chose), first the extent into `header` when asked.
async fn read_on(
    client: &Client,
    read: &SeriesInterval,
    table: &str,
    header: Option<oneshot::Sender<Extent>>,
    sink: PointsSink,
) -> Result<u64> {
    let gone = || Error::cancelled("the caller went away");
    if let Some(header) = header {
        let extent = extent_on(client, &read.id, table).await?;
        header.send(extent).map_err(|_| gone())?;
    }
    let (from, to) = read.range;
    let (from, to) = (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
    if from >= to {
        return Ok(0);
    }
    let copy = format!(
        "COPY (SELECT t, flags, value FROM {table} WHERE t >= {from} AND t < {to} ORDER BY t) \
         TO STDOUT (FORMAT binary)"
    );
    let stream = client.copy_out(copy.as_str()).await.map_err(pg)?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = copy_binary::Rows::default();
    let mut points = Points::default();
    let mut read_points = 0u64;
    let send = |points: Points| {
        let sink = &sink;
        async move {
            match sink {
                PointsSink::Ipc(sink) => sink
                    .send(PointsMessage::from_points(&points)?)
                    .await
                    .map_err(|_| gone()),
                PointsSink::Columns(sink) => sink
                    .send(PointsColumns::from_points(&points))
                    .await
                    .map_err(|_| gone()),
            }
        }
    };
    while let Some(data) = stream.next().await {
        rows.take(data.map_err(pg)?, &mut |time, flags, value| {
            points.push(time, flags, value);
        })?;
        if points.len() >= CHUNK_POINTS {
            read_points += points.len() as u64;
            send(std::mem::take(&mut points)).await?;
        }
    }
    rows.finish()?;
    if !points.is_empty() {
        read_points += points.len() as u64;
        send(points).await?;
    }
    Ok(read_points)
}

/// The points of a write on their way: binary `COPY` data and what it holds.
struct Chunk {
    first: i64,
    last: i64,
    rows: u64,
    copy: Bytes,
}

/// Checks a write's points on the blocking thread the source needs, and
/// hands them on in chunks; returns the interval the write replaces.
fn produce(
    mut check: WriteCheck,
    source: BatchSource,
    chunks: mpsc::Sender<Chunk>,
) -> Result<(i64, i64)> {
    let mut pending = copy_binary::Writer::default();
    let send = |pending: &mut copy_binary::Writer| {
        let chunk = std::mem::take(pending).finish();
        // A closed queue: the storing side failed, and its error is the one
        // the caller gets.
        chunks
            .blocking_send(chunk)
            .map_err(|_| Error::cancelled("the write stopped"))
    };
    source(&mut |batch| {
        check.push(batch, |time, flags, value| {
            pending.push(time, flags, value);
            if pending.rows() == CHUNK_POINTS {
                send(&mut pending)?;
            }
            Ok(())
        })
    })?;
    if pending.rows() > 0 {
        send(&mut pending)?;
    }
    check.interval()
}

/// One interval replaced: the storing side of a write.
struct Replace {
    id: String,
    table: String,
    start: Option<i64>,
    received: mpsc::Receiver<Chunk>,
    producing: tokio::task::JoinHandle<Result<(i64, i64)>>,
}

impl Replace {
    /// Inside `session`'s transaction on the series, in a savepoint: a
    /// failed write leaves the session's earlier work as it was.
    async fn in_session(self, pool: &Pool, session: &DataSession) -> Result<WriteSummary> {
        let begun = begin(pool.clone(), "BEGIN");
        let held = crate::sessions::postgres::connection(
            session,
            Part::Series,
            &self.id,
            "a series write",
            begun,
        )
        .await?;
        let client = held.lock().await;
        client
            .batch_execute("SAVEPOINT series_write")
            .await
            .map_err(pg)?;
        let result = self.run(&client).await;
        let close = match result {
            Ok(_) => "RELEASE series_write",
            Err(_) => "ROLLBACK TO series_write; RELEASE series_write",
        };
        if let Err(error) = client.batch_execute(close).await {
            drop(client);
            let why = format!(
                "a write of the session could not be settled ({})",
                postgres_reason(&error)
            );
            let mut work = session.work()?;
            return Err(session.abandon(&mut work, &why));
        }
        result
    }

    /// The statements of the write, in the caller's transaction on `client`.
    async fn run(mut self, client: &Client) -> Result<WriteSummary> {
        let table = &self.table;
        client
            .batch_execute(&format!(
                "SET LOCAL lock_timeout = '{LOCK_WAIT}'; LOCK TABLE {table} IN EXCLUSIVE MODE"
            ))
            .await
            .map_err(pg)?;
        let copy = format!("COPY {table} (t, flags, value) FROM STDIN (FORMAT binary)");
        let mut summary = WriteSummary::default();
        // Old points before this time (from the interval's start) are gone.
        let mut cleared_to = self.start;
        while let Some(chunk) = self.received.recv().await {
            let from = *cleared_to.get_or_insert(chunk.first);
            summary.deleted += clear(client, table, from, chunk.last + 1).await?;
            cleared_to = Some(chunk.last + 1);
            let sink = client.copy_in(copy.as_str()).await.map_err(pg)?;
            let mut sink = std::pin::pin!(sink);
            sink.send(chunk.copy).await.map_err(pg)?;
            let copied = sink.as_mut().finish().await.map_err(pg)?;
            if copied != chunk.rows {
                return Err(damaged("COPY stored another number of points than sent"));
            }
            summary.written += chunk.rows;
        }
        // Every point is in (or the source failed, and its error is the write's).
        let (start, end) = self.producing.await??;
        summary.deleted += clear(client, table, cleared_to.unwrap_or(start), end).await?;
        let added = summary.written as i64 - summary.deleted as i64;
        if added != 0 {
            client
                .query_typed(
                    "UPDATE busbar.series SET points = points + $1 WHERE id = $2",
                    &[(&added, Type::INT8), (&self.id, Type::TEXT)],
                )
                .await
                .map_err(pg)?;
        }
        summary.start_ms = start;
        summary.end_ms = end;
        Ok(summary)
    }
}

/// PostgreSQL's binary `COPY` format for a series' rows (three 8-byte
/// fields: `t` and `flags` as int8, `value` as float8, big-endian): made
/// for writes and read back for reads without a row object per point.
mod copy_binary {
    use super::*;

    const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
    /// The signature, flags (none) and the header extension's length (0).
    const HEADER_LEN: usize = 11 + 4 + 4;
    /// A row: the field count, then three fields of a length and 8 bytes.
    const ROW_LEN: usize = 2 + 3 * (4 + 8);
    const FIELDS: i16 = 3;

    /// `COPY ... FROM STDIN (FORMAT binary)` data, built row by row.
    pub(super) struct Writer {
        data: BytesMut,
        rows: usize,
        first: i64,
        last: i64,
    }

    impl Default for Writer {
        fn default() -> Self {
            let mut data = BytesMut::with_capacity(HEADER_LEN + CHUNK_POINTS * ROW_LEN + 2);
            data.put_slice(SIGNATURE);
            data.put_i32(0);
            data.put_i32(0);
            Writer {
                data,
                rows: 0,
                first: 0,
                last: 0,
            }
        }
    }

    impl Writer {
        #[inline]
        pub(super) fn push(&mut self, time: i64, flags: u32, value: f64) {
            if self.rows == 0 {
                self.first = time;
            }
            self.last = time;
            self.rows += 1;
            self.data.put_i16(FIELDS);
            self.data.put_i32(8);
            self.data.put_i64(time);
            self.data.put_i32(8);
            self.data.put_i64(i64::from(flags));
            self.data.put_i32(8);
            self.data.put_f64(value);
        }

        pub(super) fn rows(&self) -> usize {
            self.rows
        }

        pub(super) fn finish(mut self) -> Chunk {
            self.data.put_i16(-1);
            Chunk {
                first: self.first,
                last: self.last,
                rows: self.rows as u64,
                copy: self.data.freeze(),
            }
        }
    }

    /// `COPY ... TO STDOUT (FORMAT binary)` data, parsed as it arrives in
    /// pieces of any size.
    #[derive(Default)]
    pub(super) struct Rows {
        pending: BytesMut,
        header_done: bool,
        ended: bool,
    }

    impl Rows {
        /// Takes one piece, handing every whole row in it to `point`.
        pub(super) fn take(
            &mut self,
            data: Bytes,
            point: &mut dyn FnMut(i64, u32, f64),
        ) -> Result<()> {
            self.pending.extend_from_slice(&data);
            let buf = &mut self.pending;
            if !self.header_done {
                if buf.len() < HEADER_LEN {
                    return Ok(());
                }
                let extension = u32::from_be_bytes(buf[15..19].try_into().expect("4 bytes"));
                if &buf[..11] != SIGNATURE {
                    return Err(damaged("COPY data without its signature"));
                }
                if buf.len() < HEADER_LEN + extension as usize {
                    return Ok(());
                }
                buf.advance(HEADER_LEN + extension as usize);
                self.header_done = true;
            }
            while buf.len() >= 2 && !self.ended {
                let fields = i16::from_be_bytes([buf[0], buf[1]]);
                if fields == -1 {
                    buf.advance(2);
                    self.ended = true;
                    break;
                }
                if fields != FIELDS {
                    return Err(damaged("a row of another shape"));
                }
                if buf.len() < ROW_LEN {
                    break;
                }
                let mut row = buf.split_to(ROW_LEN);
                row.advance(2);
                let mut field = || -> Result<[u8; 8]> {
                    if row.get_i32() != 8 {
                        return Err(damaged("a field that is not 8 bytes"));
                    }
                    let mut bytes = [0; 8];
                    row.copy_to_slice(&mut bytes);
                    Ok(bytes)
                };
                let time = i64::from_be_bytes(field()?);
                let flags = u32::try_from(i64::from_be_bytes(field()?))
                    .map_err(|_| damaged("flags out of range"))?;
                let value = f64::from_be_bytes(field()?);
                point(time, flags, value);
            }
            Ok(())
        }

        /// Checks the data ended where it should.
        pub(super) fn finish(&self) -> Result<()> {
            if !self.ended || !self.pending.is_empty() {
                return Err(damaged("COPY data cut short"));
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rows_written_read_back_in_pieces_of_any_size() {
            let mut writer = Writer::default();
            let points = [(-5i64, 0u32, 1.5f64), (0, u32::MAX, f64::NAN), (7, 2, -0.0)];
            for (time, flags, value) in points {
                writer.push(time, flags, value);
            }
            let chunk = writer.finish();
            assert_eq!((chunk.first, chunk.last, chunk.rows), (-5, 7, 3));
            for piece in [1, 5, 19, 38, 1000] {
                let mut rows = Rows::default();
                let mut got = Vec::new();
                for part in chunk.copy.chunks(piece) {
                    rows.take(Bytes::copy_from_slice(part), &mut |t, f, v| {
                        got.push((t, f, v.to_bits()))
                    })
                    .unwrap();
                }
                rows.finish().unwrap();
                let want: Vec<_> = points
                    .iter()
                    .map(|&(t, f, v)| (t, f, v.to_bits()))
                    .collect();
                assert_eq!(got, want, "pieces of {piece}");
            }
            let mut cut = Rows::default();
            cut.take(chunk.copy.slice(..40), &mut |_, _, _| {}).unwrap();
            assert!(cut.finish().is_err());
        }
    }
}
