//! Embedded SQL databases: one SQLite file per DATABASE resource under
//! `<data>/databases/`, in WAL mode with `synchronous = FULL`. Statements run
//! on tokio's blocking pool; rows become Arrow record batches typed from the
//! columns' declared types.

mod prepared;
pub mod procedures;
pub mod sandbox;
pub mod transaction;
pub(crate) mod writers;

use crate::error::{Error, Result};
use crate::sessions::{DataSession, Part};
use crate::sql::{
    Arguments, Budget, Database, Description, MaybeBound, On, Procedure, Query, Rows, SqlEngine,
    SqlParam, SqlParams, SqlSummary,
};
use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use prepared::run_each;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use transaction::SqliteTransaction;
use writers::{SharedWriter, WriterPool};

use crate::sql::{BATCH_BYTES, BATCH_ROWS};

/// The SQL databases of a node, with their writer connections kept for
/// reuse. Cheap to clone: clones share the writers.
#[derive(Clone)]
pub struct SqlDatabases {
    dir: Arc<Path>,
    writers: Arc<WriterPool>,
}

pub(crate) fn sql_error(error: rusqlite::Error) -> Error {
    let failure = match &error {
        rusqlite::Error::SqliteFailure(failure, _) => Some(failure),
        rusqlite::Error::SqlInputError { error, .. } => Some(error),
        _ => None,
    };
    // The authorizer says what it refused; SQLite reports a refused function
    // as a plain syntax error, so the refusal itself decides.
    let refused = sandbox::take_refusal();
    if let Some(failure) = failure {
        match failure.code {
            rusqlite::ErrorCode::AuthorizationForStatementDenied | rusqlite::ErrorCode::Unknown
                if refused.is_some() || failure.code != rusqlite::ErrorCode::Unknown =>
            {
                let what = refused
                    .unwrap_or_else(|| "the statement does something user SQL may not".into());
                return Error::permission_denied(format!("refused by the SQL sandbox: {what}"));
            }
            rusqlite::ErrorCode::OperationInterrupted => {
                return Error::cancelled(sandbox::INTERRUPTED);
            }
            rusqlite::ErrorCode::OutOfMemory => {
                return Error::resource_exhausted(
                    "the statement needed more memory than the node gives SQL (sql_memory_bytes); \
                     narrow it (LIMIT, WHERE, fewer columns)",
                );
            }
            rusqlite::ErrorCode::TooBig => {
                return Error::resource_exhausted(format!(
                    "a value or the statement is larger than the sandbox allows ({} bytes for a \
                     value, {} for a statement's text)",
                    sandbox::LIMITS[0].1,
                    sandbox::LIMITS[1].1
                ));
            }
            _ => {}
        }
    }
    match &error {
        rusqlite::Error::SqlInputError { msg, offset, .. } => {
            Error::invalid_argument(format!("SQL error at byte {offset}: {msg}"))
        }
        rusqlite::Error::SqliteFailure(failure, Some(msg)) => match failure.code {
            rusqlite::ErrorCode::ReadOnly => Error::permission_denied(format!(
                "{msg}: with read rights only statements that do not write may run"
            )),
            rusqlite::ErrorCode::ConstraintViolation => {
                Error::failed_precondition(format!("constraint failed: {msg}"))
            }
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                // One wording for every lock wait that ran out (see transaction.rs).
                Error::from(error)
            }
            _ => Error::invalid_argument(format!("SQL error: {msg}")),
        },
        rusqlite::Error::MultipleStatement => {
            Error::invalid_argument("run one statement per call (the SQL holds more than one)")
        }
        rusqlite::Error::InvalidParameterCount(given, wanted) => Error::invalid_argument(format!(
            "the statement takes {wanted} parameters but {given} were given"
        )),
        _ => Error::invalid_argument(format!("SQL error: {error}")),
    }
}

impl SqlDatabases {
    pub fn new(data_dir: &Path) -> SqlDatabases {
        SqlDatabases {
            dir: data_dir.join("databases").into(),
            writers: Arc::default(),
        }
    }

    fn file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.sqlite"))
    }

    /// A new read-write connection to a database (sessions hold their own).
    pub fn connect(&self, id: &str) -> Result<Connection> {
        Self::open_writer(&self.file(id), false)
    }

    /// A new connection that cannot write, whatever it is asked.
    pub fn connect_read_only(&self, id: &str) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let reader = Connection::open_with_flags(self.file(id), flags)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        reader.pragma_update(None, "query_only", true)?;
        sandbox::harden(&reader)?;
        Ok(reader)
    }

    /// Every connection runs user SQL, so each is sandboxed as it opens
    /// (after the node's own settings, which the sandbox would refuse).
    fn open_writer(path: &Path, create: bool) -> Result<Connection> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        sandbox::harden(&conn)?;
        Ok(conn)
    }

    /// Creates the database file of a new DATABASE resource.
    fn create_file(&self, id: &str) -> Result<()> {
        std::fs::create_dir_all(&*self.dir)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", self.dir.display())))?;
        let conn = Self::open_writer(&self.file(id), true)?;
        self.writers.keep(id, Arc::new(Mutex::new(conn)));
        Ok(())
    }

    /// Removes a deleted database's files.
    fn remove_files(&self, id: &str) {
        self.writers.remove(id);
        let file = self.file(id);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }

    /// The database's shared writer connection; writers take turns on it
    /// (kept for reuse, bounded: see [`WriterPool`]).
    pub fn writer(&self, id: &str) -> Result<SharedWriter> {
        self.writers
            .get(id, || Self::open_writer(&self.file(id), false))
    }

    /// Runs one statement, sending record batches to `sink` as they fill.
    /// Statements that do not write, and every statement when `read_only`,
    /// run on a read-only connection: SQLite itself refuses any write,
    /// whatever the statement's text.
    async fn execute_alone(
        &self,
        id: &str,
        sql: String,
        params: SqlParams,
        read_only: bool,
        sink: mpsc::Sender<RecordBatch>,
        budget: Budget,
    ) -> Result<SqlSummary> {
        let databases = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            let reader = databases.connect_read_only(&id)?;
            // A statement that does not write runs on the read-only connection,
            // so streaming a large result to a slow client never holds the
            // writer; with read rights, nothing else may run at all.
            let writes = !sandbox::prepare(&reader, &sql)?.readonly();
            if read_only || !writes {
                return budget.run(&reader, || run(&reader, &sql, &params, &sink, &budget));
            }
            drop(reader);
            let writer = databases.writer(&id)?;
            let conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            budget.run(&conn, || run(&conn, &sql, &params, &sink, &budget))
        })
        .await?
    }
}

/// Runs one statement on a connection the caller already holds (a session's
/// transaction). With `read_only`, a statement that would write is refused
/// by SQLite's own judgement of it, not by reading its text.
pub fn execute_on(
    conn: &Connection,
    sql: &str,
    params: &SqlParams,
    read_only: bool,
    sink: &mpsc::Sender<RecordBatch>,
    budget: &Budget,
) -> Result<SqlSummary> {
    if read_only && !sandbox::prepare(conn, sql)?.readonly() {
        return Err(Error::permission_denied(
            "with read rights only statements that do not write may run",
        ));
    }
    budget.run(conn, || run(conn, sql, params, sink, budget))
}

pub(super) fn value(param: &SqlParam) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match param {
        SqlParam::Null => Value::Null,
        SqlParam::Integer(i) | SqlParam::TimestampMs(i) => Value::Integer(*i),
        SqlParam::Real(r) => Value::Real(*r),
        SqlParam::Text(t) => Value::Text(t.clone()),
        SqlParam::Blob(b) => Value::Blob(b.clone()),
        SqlParam::Boolean(b) => Value::Integer(*b as i64),
    }
}

pub(super) fn bind(stmt: &mut rusqlite::Statement<'_>, params: &SqlParams) -> Result<()> {
    let wanted = stmt.parameter_count();
    if !params.positional.is_empty() && !params.named.is_empty() {
        return Err(Error::invalid_argument(
            "pass parameters by position or by name, not both",
        ));
    }
    if !params.named.is_empty() {
        let mut bound = vec![false; wanted + 1];
        for (name, param) in &params.named {
            let index = if name.starts_with([':', '@', '$']) {
                stmt.parameter_index(name).map_err(sql_error)?
            } else {
                [':', '@', '$'].iter().find_map(|prefix| {
                    stmt.parameter_index(&format!("{prefix}{name}"))
                        .ok()
                        .flatten()
                })
            };
            let index = index.ok_or_else(|| {
                Error::invalid_argument(format!("the statement has no parameter named {name:?}"))
            })?;
            stmt.raw_bind_parameter(index, value(param))
                .map_err(sql_error)?;
            bound[index] = true;
        }
        if let Some(missing) = (1..=wanted).find(|&i| !bound[i]) {
            let name = stmt.parameter_name(missing).unwrap_or("?").to_string();
            return Err(Error::invalid_argument(format!(
                "no value given for parameter {name}"
            )));
        }
        return Ok(());
    }
    if params.positional.len() != wanted {
        return Err(Error::invalid_argument(format!(
            "the statement takes {wanted} parameters but {} were given",
            params.positional.len()
        )));
    }
    for (i, param) in params.positional.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, value(param))
            .map_err(sql_error)?;
    }
    Ok(())
}

/// The Arrow type for a declared SQLite column type (by SQLite's affinity
/// rules, plus BOOLEAN and TIMESTAMP/DATETIME as integer milliseconds UTC).
pub(super) fn arrow_type(declared: &str) -> Option<DataType> {
    let upper = declared.to_ascii_uppercase();
    Some(if upper.contains("BOOL") {
        DataType::Boolean
    } else if upper.contains("TIMESTAMP") || upper.contains("DATETIME") {
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    } else if upper.contains("INT") {
        DataType::Int64
    } else if upper.contains("CHAR") || upper.contains("CLOB") || upper.contains("TEXT") {
        DataType::Utf8
    } else if upper.contains("BLOB") {
        DataType::Binary
    } else if upper.contains("REAL")
        || upper.contains("FLOA")
        || upper.contains("DOUB")
        || upper.contains("NUM")
        || upper.contains("DEC")
    {
        DataType::Float64
    } else {
        return None;
    })
}

pub(super) fn inferred_type(value: ValueRef<'_>) -> Option<DataType> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(_) => Some(DataType::Int64),
        ValueRef::Real(_) => Some(DataType::Float64),
        ValueRef::Text(_) => Some(DataType::Utf8),
        ValueRef::Blob(_) => Some(DataType::Binary),
    }
}

enum Builder {
    Int(Int64Builder),
    Real(Float64Builder),
    Text(StringBuilder),
    Blob(BinaryBuilder),
    Bool(BooleanBuilder),
    Time(TimestampMillisecondBuilder),
}

impl Builder {
    fn new(data_type: &DataType) -> Builder {
        match data_type {
            DataType::Int64 => Builder::Int(Int64Builder::new()),
            DataType::Float64 => Builder::Real(Float64Builder::new()),
            DataType::Binary => Builder::Blob(BinaryBuilder::new()),
            DataType::Boolean => Builder::Bool(BooleanBuilder::new()),
            DataType::Timestamp(..) => {
                Builder::Time(TimestampMillisecondBuilder::new().with_timezone("UTC"))
            }
            _ => Builder::Text(StringBuilder::new()),
        }
    }

    /// Appends one value; `None` when it does not fit the column's type.
    fn push(&mut self, value: ValueRef<'_>) -> Option<()> {
        match (self, value) {
            (Builder::Int(b), ValueRef::Null) => b.append_null(),
            (Builder::Real(b), ValueRef::Null) => b.append_null(),
            (Builder::Text(b), ValueRef::Null) => b.append_null(),
            (Builder::Blob(b), ValueRef::Null) => b.append_null(),
            (Builder::Bool(b), ValueRef::Null) => b.append_null(),
            (Builder::Time(b), ValueRef::Null) => b.append_null(),
            (Builder::Int(b), ValueRef::Integer(i)) => b.append_value(i),
            (Builder::Real(b), ValueRef::Real(r)) => b.append_value(r),
            (Builder::Real(b), ValueRef::Integer(i)) => b.append_value(i as f64),
            (Builder::Text(b), ValueRef::Text(t)) => b.append_value(std::str::from_utf8(t).ok()?),
            (Builder::Text(b), ValueRef::Integer(i)) => b.append_value(i.to_string()),
            (Builder::Text(b), ValueRef::Real(r)) => b.append_value(r.to_string()),
            (Builder::Blob(b), ValueRef::Blob(v) | ValueRef::Text(v)) => b.append_value(v),
            (Builder::Bool(b), ValueRef::Integer(i)) => b.append_value(i != 0),
            (Builder::Time(b), ValueRef::Integer(i)) => b.append_value(i),
            _ => return None,
        }
        Some(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Real(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Blob(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
        }
    }
}

fn kind_name(value: ValueRef<'_>) -> &'static str {
    match value {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "INTEGER",
        ValueRef::Real(_) => "REAL",
        ValueRef::Text(_) => "TEXT (or invalid UTF-8)",
        ValueRef::Blob(_) => "BLOB",
    }
}

fn run(
    conn: &Connection,
    sql: &str,
    params: &SqlParams,
    sink: &mpsc::Sender<RecordBatch>,
    budget: &Budget,
) -> Result<SqlSummary> {
    let mut stmt = sandbox::prepare(conn, sql)?;
    bind(&mut stmt, params)?;
    stream_rows(conn, stmt, sink, budget.max_result_bytes)
}

/// Steps a bound statement, sending its rows as record batches. A batch goes
/// out when it holds [`BATCH_ROWS`] rows or about [`BATCH_BYTES`], so what one
/// call holds in memory stays small whatever its rows are; past
/// `max_result_bytes` in all, the call fails with RESOURCE_EXHAUSTED.
pub(super) fn stream_rows(
    conn: &Connection,
    mut stmt: rusqlite::Statement<'_>,
    sink: &mpsc::Sender<RecordBatch>,
    max_result_bytes: usize,
) -> Result<SqlSummary> {
    let names: Vec<String> = stmt.column_names().iter().map(|n| n.to_string()).collect();
    let declared: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| c.decl_type().unwrap_or("").to_string())
        .collect();
    let mut summary = SqlSummary::default();
    if names.is_empty() {
        summary.rows_affected = stmt.raw_execute().map_err(sql_error)? as u64;
        summary.last_insert_rowid = conn.last_insert_rowid();
        return Ok(summary);
    }
    // Types come from declarations; expression columns take the type of their
    // first non-NULL value in the first batch (Utf8 if it has none), so that
    // batch is held until every column has a type.
    let mut types: Vec<Option<DataType>> = declared.iter().map(|d| arrow_type(d)).collect();
    let mut rows = stmt.raw_query();
    let mut first: Vec<Vec<rusqlite::types::Value>> = Vec::new();
    let mut first_bytes = 0;
    while first.len() < BATCH_ROWS && first_bytes < BATCH_BYTES {
        let Some(row) = rows.next().map_err(sql_error)? else {
            break;
        };
        let mut values = Vec::with_capacity(names.len());
        for (i, kind) in types.iter_mut().enumerate() {
            let value = row.get_ref(i).map_err(sql_error)?;
            first_bytes += value_bytes(value);
            if kind.is_none() {
                *kind = inferred_type(value);
            }
            values.push(value.into());
        }
        first.push(values);
    }
    let fields: Vec<Field> = names
        .iter()
        .zip(&types)
        .map(|(name, kind)| Field::new(name, kind.clone().unwrap_or(DataType::Utf8), true))
        .collect();
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let mut builders: Vec<Builder> = schema
        .fields()
        .iter()
        .map(|f| Builder::new(f.data_type()))
        .collect();
    let mut sent_bytes = 0usize;
    let mut flush = |builders: &mut Vec<Builder>| -> Result<()> {
        let columns: Vec<ArrayRef> = builders.iter_mut().map(Builder::finish).collect();
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| Error::internal(format!("building a record batch: {e}")))?;
        sent_bytes = sent_bytes.saturating_add(batch.get_array_memory_size());
        if sent_bytes > max_result_bytes {
            return Err(crate::sql::result_too_large(max_result_bytes));
        }
        sink.blocking_send(batch).map_err(|_| Error {
            code: crate::error::ErrorCode::Cancelled,
            message: "the caller went away".into(),
        })
    };
    let push = |builders: &mut Vec<Builder>, row: usize, value: ValueRef<'_>, column: usize| {
        builders[column]
            .push(value)
            .ok_or_else(|| mismatch(&names[column], &declared[column], row, value))
    };
    for values in &first {
        for (column, value) in values.iter().enumerate() {
            push(&mut builders, summary.rows as usize, value.into(), column)?;
        }
        summary.rows += 1;
    }
    // The first batch goes out even when empty: it carries the schema.
    flush(&mut builders)?;
    let (mut in_batch, mut batch_bytes) = (0, 0);
    while let Some(row) = rows.next().map_err(sql_error)? {
        for column in 0..builders.len() {
            let value = row.get_ref(column).map_err(sql_error)?;
            batch_bytes += value_bytes(value);
            push(&mut builders, summary.rows as usize, value, column)?;
        }
        summary.rows += 1;
        in_batch += 1;
        if in_batch == BATCH_ROWS || batch_bytes >= BATCH_BYTES {
            flush(&mut builders)?;
            (in_batch, batch_bytes) = (0, 0);
        }
    }
    if in_batch > 0 {
        flush(&mut builders)?;
    }
    summary.rows_affected = conn.changes();
    summary.last_insert_rowid = conn.last_insert_rowid();
    summary.columns = names
        .into_iter()
        .zip(declared)
        .zip(schema.fields().iter())
        .map(|((name, declared), field)| (name, declared, field.data_type().clone()))
        .collect();
    Ok(summary)
}

/// About what a value takes in a record batch.
fn value_bytes(value: ValueRef<'_>) -> usize {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes.len() + 4,
        _ => 8,
    }
}

fn mismatch(name: &str, declared: &str, row: usize, value: ValueRef<'_>) -> Error {
    let declared = if declared.is_empty() {
        "an expression"
    } else {
        declared
    };
    Error::invalid_argument(format!(
        "column {name} ({declared}) holds a {} in row {}, which does not fit its type; CAST it in the query",
        kind_name(value),
        row + 1
    ))
}

/// Runs `work` on the right connection: the session's transaction on the
/// database, else a read-only connection for read-rights callers, else the
/// database's writer. Blocks: call it on the blocking pool.
fn with_connection<T>(
    databases: &SqlDatabases,
    on: &On,
    work: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    let database = &on.database;
    if let Some(session) = &on.session {
        let connect = || databases.connect(&database.id);
        return in_session(
            session,
            Part::Database,
            &database.id,
            !database.read_only,
            connect,
            work,
        );
    }
    if database.read_only {
        return work(&databases.connect_read_only(&database.id)?);
    }
    let writer = databases.writer(&database.id)?;
    let conn = writer.lock().unwrap_or_else(|p| p.into_inner());
    work(&conn)
}

/// Runs `work` inside `session`'s transaction on the file `id` (a database
/// or a series), begun with a connection from `connect` on first use. A
/// statement that ended the transaction (SQLite rolls back a write it
/// stopped) loses the whole session, which says so.
pub(crate) fn in_session<T>(
    session: &DataSession,
    part: Part,
    id: &str,
    write: bool,
    connect: impl FnOnce() -> Result<Connection>,
    work: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    let mut held = session.work()?;
    let begin = || SqliteTransaction::begin(connect()?, write);
    let transaction = held.begun(part, id, begin)?;
    let conn = SqliteTransaction::connection(transaction);
    let result = work(conn);
    if conn.is_autocommit() {
        let why = match &result {
            Err(error) => error.message.clone(),
            Ok(_) => "the session's transaction ended inside a statement".into(),
        };
        return Err(session.abandon(&mut held, &why));
    }
    session.touch();
    result
}

impl SqlDatabases {
    /// Runs `work` with a connection for `on` on the blocking pool.
    async fn on_connection<T: Send + 'static>(
        &self,
        on: On,
        work: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let databases = self.clone();
        tokio::task::spawn_blocking(move || with_connection(&databases, &on, work)).await?
    }
}

#[async_trait]
impl SqlEngine for SqlDatabases {
    async fn create(&self, id: &str) -> Result<()> {
        self.create_file(id)
    }

    async fn remove(&self, id: &str) {
        self.remove_files(id)
    }

    async fn execute(&self, on: On, query: Query, rows: Rows) -> Result<SqlSummary> {
        let (sql, params, budget) = query.parts();
        if on.session.is_none() {
            return self
                .execute_alone(
                    &on.database.id,
                    sql,
                    params,
                    on.database.read_only,
                    rows,
                    budget,
                )
                .await;
        }
        let read_only = on.database.read_only;
        self.on_connection(on, move |conn| {
            execute_on(conn, &sql, &params, read_only, &rows, &budget)
        })
        .await
    }

    async fn execute_each(&self, on: On, query: Query<Vec<SqlParams>>) -> Result<u64> {
        let (sql, rows, budget) = query.parts();
        if on.session.is_none() {
            return self
                .execute_each_alone(&on.database.id, sql, rows, on.database.read_only, budget)
                .await;
        }
        self.on_connection(on, move |conn| {
            sandbox::control(conn, "SAVEPOINT executemany")?;
            let changed = budget.run(conn, || run_each(conn, &sql, &rows));
            if changed.is_err() && !conn.is_autocommit() {
                sandbox::control(conn, "ROLLBACK TO executemany")?;
            }
            if !conn.is_autocommit() {
                sandbox::control(conn, "RELEASE executemany")?;
            }
            changed
        })
        .await
    }

    async fn describe(&self, db: &Database, query: MaybeBound) -> Result<Description> {
        self.describe_on(&db.id, query.sql, query.params, query.budget)
            .await
    }

    async fn tables(&self, database: &Database, budget: Budget) -> Result<Vec<(String, String)>> {
        let databases = self.clone();
        let id = database.id.clone();
        tokio::task::spawn_blocking(move || {
            let reader = databases.connect_read_only(&id)?;
            budget.run(&reader, || {
                // SQLite's own tables (sqlite_%) are left out.
                let mut stmt = sandbox::prepare(
                    &reader,
                    "SELECT name, type FROM sqlite_schema WHERE type IN ('table', 'view') \
                     AND name NOT LIKE 'sqlite_%' ORDER BY name",
                )?;
                let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
        .await?
    }

    async fn create_procedure(&self, on: On, given: Procedure, replace: bool) -> Result<Procedure> {
        self.on_connection(on, move |conn| procedures::create(conn, &given, replace))
            .await
    }

    async fn drop_procedure(&self, on: On, name: String) -> Result<()> {
        self.on_connection(on, move |conn| procedures::drop(conn, &name))
            .await
    }

    async fn list_procedures(&self, on: On) -> Result<Vec<Procedure>> {
        self.on_connection(on, procedures::list).await
    }

    async fn run_procedure(&self, on: On, run: Query<Arguments>, rows: Rows) -> Result<SqlSummary> {
        let (name, args, budget) = run.parts();
        self.on_connection(on, move |conn| {
            procedures::run(conn, &name, args, &rows, &budget)
        })
        .await
    }
}

/// The fuzz target `sql` (see `crate::fuzzing`): one statement with
/// `params` on a sandboxed in-memory database. Whatever it is, the
/// connection stays in autocommit (no transaction left open) and no
/// database is attached.
#[doc(hidden)]
pub fn fuzz_statement(text: &str, params: &SqlParams) {
    let conn = Connection::open_in_memory().expect("in-memory database");
    sandbox::harden(&conn).expect("sandbox");
    conn.execute_batch("CREATE TABLE t (a INTEGER, b TEXT, c BLOB)")
        .expect("table");
    let (sink, batches) = tokio::sync::mpsc::channel(4);
    drop(batches); // the first batch ends the run: prepare and bind are what is fuzzed
    let (budget, _running) = Budget::new(
        Some(std::time::Duration::from_millis(100)),
        std::time::Duration::MAX,
        1 << 20,
    );
    let _ = execute_on(&conn, text, params, false, &sink, &budget);
    assert!(conn.is_autocommit(), "user SQL left a transaction open");
    // SAFETY: a valid handle; index 2 is the first attached database, if any.
    let attached = unsafe { rusqlite::ffi::sqlite3_db_name(conn.handle(), 2) };
    assert!(attached.is_null(), "user SQL attached a database");
}
