//! SQL databases of a cluster node: PostgreSQL schemas, one per DATABASE
//! resource, in PostgreSQL's own dialect (docs/cluster.md says what differs
//! from the embedded node). User SQL runs over connections logged in as the
//! database's own roles (`roles`), never as the node; the call's deadline
//! is both PostgreSQL's `statement_timeout` and a cancel sent from outside
//! (user SQL can change a setting, not the node's clock).
//!
//! Every call runs in a transaction of its own (`BEGIN`, or `BEGIN READ
//! ONLY` for a caller holding read) that commits only when the whole call
//! succeeded; in a data session, inside a savepoint of the session's
//! transaction, so a failed call leaves the session's earlier work alone.

mod roles;
pub mod text;
mod values;

use crate::calls::{CallKey, Replay, settle};
use crate::cluster::PgTls;
use crate::error::{Error, ErrorCode, Result};
use crate::sessions::{DataSession, Part};
use crate::sql::embedded::procedures::{at_statement, bind_arguments, check_new};
use crate::sql::{
    Arguments, Budget, Database, Description, On, Procedure, Rows, SqlEngine, SqlParam, SqlParams,
    SqlSummary,
};
use crate::store::{Store, now_ms};
use arrow_array::RecordBatch;
use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use futures::StreamExt;
use roles::{Names, Roles};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use values::{Batches, Param};

/// Role pools one node keeps open; past this the least recently used closes.
const MAX_POOLS: usize = 64;

/// Work on a call's connection, borrowing it.
type Work<'c, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'c>>;

pub struct PostgresSql {
    /// The node's own connections: for making and dropping schemas and roles.
    admin: Pool,
    roles: Roles,
    pools: Mutex<Pools>,
}

#[derive(Default)]
struct Pools {
    by_role: HashMap<String, (Pool, u64)>,
    uses: u64,
}

impl PostgresSql {
    /// The engine on the cluster's PostgreSQL: `admin` is the node's pool,
    /// `node` and `tls` how it connects (roles connect the same way).
    pub async fn open(
        admin: Pool,
        node: tokio_postgres::Config,
        tls: PgTls,
        store: &dyn Store,
    ) -> Result<PostgresSql> {
        let key = store
            .secret("sql.role-key", || {
                crate::auth::random_bytes::<32>().to_vec()
            })
            .await?;
        Ok(PostgresSql {
            admin,
            roles: Roles::new(node, tls, key),
            pools: Mutex::default(),
        })
    }

    fn pool(&self, database: &Database) -> Result<Pool> {
        let names = Names::of(&database.id);
        let role = names.role(!database.read_only);
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.uses += 1;
        let now = pools.uses;
        if let Some((pool, used)) = pools.by_role.get_mut(role) {
            *used = now;
            return Ok(pool.clone());
        }
        if pools.by_role.len() >= MAX_POOLS {
            let oldest = pools
                .by_role
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(role, _)| role.clone());
            if let Some(oldest) = oldest {
                pools.by_role.remove(&oldest);
            }
        }
        let pool = self.roles.pool(role)?;
        pools.by_role.insert(role.to_string(), (pool.clone(), now));
        Ok(pool)
    }

    async fn connect(&self, database: &Database, budget: &Budget) -> Result<Object> {
        let pool = self.pool(database)?;
        match tokio::time::timeout(budget.remaining(), pool.get()).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(deadpool_postgres::PoolError::Backend(error))) => Err(sql_error(&error)),
            Ok(Err(error)) => Err(Error::unavailable(format!(
                "no connection to PostgreSQL for {}: {error}",
                database.path
            ))),
            Err(_) => Err(budget
                .exhausted()
                .unwrap_or_else(|| Error::unavailable("no connection to PostgreSQL came in time"))),
        }
    }

    /// Runs `work` on a connection for `on` under `budget`, in a transaction
    /// (or a session savepoint) that keeps its effects only if it succeeds.
    async fn run<T, F>(&self, on: &On, budget: &Budget, work: F) -> Result<T>
    where
        T: Send,
        F: for<'c> FnOnce(&'c Client) -> Work<'c, T> + Send,
    {
        let timeout = statement_timeout(budget);
        let Some(session) = &on.session else {
            let mut ending = Ending(Some(self.connect(&on.database, budget).await?));
            let client: &Client = ending.0.as_ref().expect("held until dropped");
            let begin = if on.database.read_only {
                format!("BEGIN READ ONLY; {timeout}")
            } else {
                format!("BEGIN; {timeout}")
            };
            let result = guarded(client, self.roles.tls(), budget, async {
                // BEGIN goes out with the work's first statement, in one
                // round trip; PostgreSQL runs them in order.
                let (begun, result) = tokio::join!(client.batch_execute(&begin), work(client));
                begun.map_err(|e| sql_error(&e))?;
                result
            })
            .await;
            let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
            let (ended, reset) = tokio::join!(
                client.batch_execute(end),
                client.batch_execute(roles::RESET)
            );
            let ended = ended.and(reset).map_err(|e| sql_error(&e));
            if ended.is_ok() {
                ending.finished();
            }
            return result.and_then(|value| ended.map(|_| value));
        };
        let label = if on.database.read_only {
            "read rights"
        } else {
            "write rights"
        };
        let begin = async {
            let connection = self.connect(&on.database, budget).await?;
            let begin = if on.database.read_only {
                "BEGIN READ ONLY"
            } else {
                "BEGIN"
            };
            connection
                .batch_execute(begin)
                .await
                .map_err(|e| sql_error(&e))?;
            Ok(connection)
        };
        let held = crate::sessions::postgres::connection(
            session,
            Part::Database,
            &on.database.id,
            label,
            begin,
        )
        .await?;
        let connection = held.lock().await;
        let client: &Client = &connection;
        let call = SessionCall(Some(session));
        let result = guarded(client, self.roles.tls(), budget, async {
            client
                .batch_execute(&format!("SAVEPOINT busbar_call; {timeout}"))
                .await
                .map_err(|e| sql_error(&e))?;
            work(client).await
        })
        .await;
        let settle = if result.is_ok() {
            "RELEASE SAVEPOINT busbar_call"
        } else {
            "ROLLBACK TO SAVEPOINT busbar_call; RELEASE SAVEPOINT busbar_call"
        };
        let settled = client.batch_execute(settle).await;
        call.done();
        if let Err(error) = settled {
            let why = match &result {
                Err(error) => error.message.clone(),
                Ok(_) => format!(
                    "the session's transaction ended inside a statement ({})",
                    crate::store::postgres_reason(&error)
                ),
            };
            let mut work = session.work()?;
            return Err(session.abandon(&mut work, &why));
        }
        session.touch();
        result
    }
}

/// A call's pooled connection: back to the pool once the call ended it
/// cleanly (committed or rolled back, and reset), otherwise closed.
struct Ending(Option<Object>);

impl Ending {
    fn finished(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            drop(Object::take(connection));
        }
    }
}

/// Abandons its session if dropped before [`SessionCall::done`]: a call
/// whose future was dropped mid-statement left the session's connection in
/// a state nobody knows.
struct SessionCall<'s>(Option<&'s std::sync::Arc<DataSession>>);

impl SessionCall<'_> {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for SessionCall<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.0.take()
            && let Ok(mut work) = session.work()
        {
            session.abandon(&mut work, "a call of the session was stopped mid-statement");
        }
    }
}

fn statement_timeout(budget: &Budget) -> String {
    // 0 would mean no limit.
    let ms = budget.remaining().as_millis().clamp(1, i32::MAX as u128);
    format!("SET LOCAL statement_timeout = {ms}")
}

/// Cancels the statement running on a connection when dropped armed: the
/// call's future was dropped (its client went away) mid-statement.
struct Cancel {
    token: Option<tokio_postgres::CancelToken>,
    tls: PgTls,
}

impl Cancel {
    async fn now(&mut self) {
        if let Some(token) = self.token.take() {
            let _ = token.cancel_query(self.tls.clone()).await;
        }
    }
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let _ = token.cancel_query(tls).await;
            });
        }
    }
}

/// Runs `work` on `client` until it ends or `budget` runs out; then cancels
/// the statement from outside and waits for `work` to see it, so the
/// connection is idle again when this returns.
async fn guarded<T>(
    client: &Client,
    tls: &PgTls,
    budget: &Budget,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let mut cancel = Cancel {
        token: Some(client.cancel_token()),
        tls: tls.clone(),
    };
    tokio::pin!(work);
    let result = tokio::select! {
        done = &mut work => done,
        why = budget.interrupted() => {
            cancel.now().await;
            let _ = work.await;
            Err(why)
        }
    };
    cancel.token = None;
    result.map_err(|error| match error.code {
        ErrorCode::Cancelled | ErrorCode::Timeout => budget.exhausted().unwrap_or(error),
        _ => error,
    })
}

/// A PostgreSQL error as the caller should see it.
fn sql_error(error: &tokio_postgres::Error) -> Error {
    let Some(db) = error.as_db_error() else {
        return Error::unavailable(crate::store::postgres_reason(error));
    };
    let mut message = db.message().to_string();
    if let Some(detail) = db.detail() {
        message = format!("{message} ({detail})");
    }
    if let Some(hint) = db.hint() {
        message = format!("{message}; {hint}");
    }
    let state = db.code().code();
    let code = match *db.code() {
        SqlState::INSUFFICIENT_PRIVILEGE => {
            return Error::permission_denied(format!("PostgreSQL refused: {message}"));
        }
        SqlState::READ_ONLY_SQL_TRANSACTION => {
            return Error::permission_denied(format!(
                "{message}: the caller holds only read on this database"
            ));
        }
        SqlState::QUERY_CANCELED => {
            return Error {
                code: ErrorCode::Timeout,
                message: format!("the statement was stopped: {message}"),
            };
        }
        SqlState::UNIQUE_VIOLATION => ErrorCode::AlreadyExists,
        SqlState::T_R_SERIALIZATION_FAILURE | SqlState::T_R_DEADLOCK_DETECTED => {
            ErrorCode::Conflict
        }
        _ if state.starts_with("23") => ErrorCode::FailedPrecondition,
        _ if state.starts_with("53") || state.starts_with("54") => ErrorCode::ResourceExhausted,
        _ if state.starts_with("08") || state.starts_with("57P") => ErrorCode::Unavailable,
        _ if state.starts_with("28") => ErrorCode::FailedPrecondition,
        _ => ErrorCode::InvalidArgument,
    };
    Error {
        code,
        message: format!("SQL error {state}: {message}"),
    }
}

/// Transaction control belongs to the node (each call's transaction) and
/// to sessions (Commit, Rollback): statements that would take it are refused.
fn refuse_transaction_control(sql: &str) -> Result<()> {
    const CONTROL: [&str; 8] = [
        "begin",
        "start",
        "commit",
        "end",
        "rollback",
        "abort",
        "savepoint",
        "release",
    ];
    let first = first_word(sql);
    if CONTROL.contains(&first.as_str()) {
        return Err(Error::permission_denied(format!(
            "{} is not for user SQL: every call runs in a transaction of its own; to group \
             statements, use a session (commit or roll it back) or a procedure",
            first.to_uppercase()
        )));
    }
    Ok(())
}

/// The statement's first keyword, lower case, after comments and parentheses.
fn first_word(sql: &str) -> String {
    let mut rest = sql;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, next)| next);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, next)| next);
        } else {
            break;
        }
    }
    rest.chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// `sql` numbered for PostgreSQL, and its parameter values in order.
fn bind(sql: &str, params: &SqlParams) -> Result<(String, Vec<SqlParam>)> {
    if !params.positional.is_empty() && !params.named.is_empty() {
        return Err(Error::invalid_argument(
            "pass parameters by position or by name, not both",
        ));
    }
    let (numbered, names) = text::number_names(sql)?;
    if names.is_empty() {
        if !params.named.is_empty() {
            return Err(Error::invalid_argument(
                "the statement has no :name parameters; PostgreSQL's positional ones are $1, $2, …",
            ));
        }
        let wanted = text::positional_count(sql)? as usize;
        if wanted != params.positional.len() {
            return Err(Error::invalid_argument(format!(
                "the statement takes {wanted} parameters ($1 … ${wanted}) but {} were given",
                params.positional.len()
            )));
        }
        return Ok((numbered, params.positional.clone()));
    }
    let given: HashMap<&str, &SqlParam> = params
        .named
        .iter()
        .map(|(name, value)| (name.trim_start_matches([':', '@', '$']), value))
        .collect();
    if let Some(unknown) = given.keys().find(|name| !names.iter().any(|n| n == *name)) {
        return Err(Error::invalid_argument(format!(
            "the statement has no parameter named {unknown:?}"
        )));
    }
    let values = names
        .iter()
        .map(|name| {
            given
                .get(name.as_str())
                .map(|v| (*v).clone())
                .ok_or_else(|| {
                    Error::invalid_argument(format!("no value given for parameter :{name}"))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((numbered, values))
}

async fn prepare(
    client: &Client,
    sql: &str,
    values: &[SqlParam],
) -> Result<tokio_postgres::Statement> {
    let declared: Vec<_> = values.iter().map(|v| Param(v).declared()).collect();
    client
        .prepare_typed(sql, &declared)
        .await
        .map_err(|e| sql_error(&e))
}

/// Where a statement's rows go.
enum Sink<'a> {
    /// Nowhere: only what it changed counts.
    None,
    /// To the caller as they come.
    Send(&'a Rows),
    /// Kept, to go out once the call's idempotency key is settled.
    Keep(&'a mut Vec<RecordBatch>),
}

/// Whether a statement that returned no rows may still have columns (so
/// its empty result must carry a schema): writes without `RETURNING` and
/// statements that never return rows do not.
fn may_have_columns(sql: &str) -> bool {
    let returning = sql.to_ascii_lowercase().contains("returning");
    match first_word(sql).as_str() {
        "insert" | "update" | "delete" | "merge" => returning,
        "create" | "alter" | "drop" | "set" | "reset" | "grant" | "revoke" | "comment"
        | "truncate" | "vacuum" | "analyze" | "do" | "lock" | "discard" | "listen" | "unlisten"
        | "notify" | "prepare" | "deallocate" | "refresh" | "security" | "cluster" | "reindex"
        | "checkpoint" | "load" => false,
        _ => true,
    }
}

/// A result's columns as a summary lists them: name, declared type, Arrow type.
type Described = Vec<(String, String, arrow_schema::DataType)>;

/// The Arrow batches of a result and the summary's column list, from the
/// result's columns.
fn result_of(columns: &[tokio_postgres::Column]) -> Result<(Batches, Described)> {
    let schema = values::schema(columns)?;
    let described = columns
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            (
                c.name().to_string(),
                c.type_().name().to_string(),
                f.data_type().clone(),
            )
        })
        .collect();
    Ok((Batches::new(schema, columns), described))
}

/// Runs one statement in one round trip (parse, bind and execute together,
/// parameters typed by their values), sending its rows to `sink` in bounded
/// batches. The first batch goes out even when empty: it carries the
/// schema (learnt, for an empty result, by describing the statement).
async fn stream(
    client: &Client,
    sql: &str,
    values: &[SqlParam],
    sink: Sink<'_>,
    budget: &Budget,
) -> Result<SqlSummary> {
    stream_noting_writes(client, sql, values, sink, budget, None).await
}

/// [`stream`], and with `wrote`, whether the transaction has written
/// anything by the statement's end, asked in the same round trip (so a
/// keyed call that only read needs no more).
async fn stream_noting_writes(
    client: &Client,
    sql: &str,
    values: &[SqlParam],
    mut sink: Sink<'_>,
    budget: &Budget,
    wrote: Option<&mut bool>,
) -> Result<SqlSummary> {
    let typed = values.iter().map(|v| (Param(v), Param(v).declared()));
    let rows = client
        .query_typed_raw(sql, typed)
        .await
        .map_err(|e| sql_error(&e))?;
    // Sent now, behind the statement; answered after its rows.
    let mut asked = wrote.is_some().then(|| {
        Box::pin(client.query_typed("SELECT pg_current_xact_id_if_assigned() IS NOT NULL", &[]))
    });
    if let Some(asking) = &mut asked {
        let _ = futures::poll!(asking.as_mut());
    }
    tokio::pin!(rows);
    let mut summary = SqlSummary::default();
    let mut batches: Option<Batches> = None;
    let mut sent = 0usize;
    let mut send = async |batches: &mut Batches, sink: &mut Sink<'_>| -> Result<()> {
        let batch = batches.take()?;
        sent = sent.saturating_add(batch.get_array_memory_size());
        if sent > budget.max_result_bytes {
            return Err(crate::sql::result_too_large(budget.max_result_bytes));
        }
        match sink {
            Sink::Send(rows) => rows
                .send(batch)
                .await
                .map_err(|_| Error::cancelled("the caller went away")),
            Sink::Keep(kept) => {
                kept.push(batch);
                Ok(())
            }
            Sink::None => Ok(()),
        }
    };
    let mut first = true;
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| sql_error(&e))?;
        summary.rows += 1;
        if matches!(sink, Sink::None) {
            continue;
        }
        let filling = match &mut batches {
            Some(filling) => filling,
            None => {
                let (filling, columns) = result_of(row.columns())?;
                summary.columns = columns;
                batches.insert(filling)
            }
        };
        filling.push(&row)?;
        if filling.full() {
            send(filling, &mut sink).await?;
            first = false;
        }
    }
    summary.rows_affected = rows.rows_affected().unwrap_or(0);
    if let (Some(wrote), Some(asking)) = (wrote, asked) {
        let answer = asking.await.map_err(|e| sql_error(&e))?;
        *wrote = answer.first().is_some_and(|row| row.get::<_, bool>(0));
    }
    if matches!(sink, Sink::None) {
        return Ok(summary);
    }
    if batches.is_none() && may_have_columns(sql) {
        let statement = prepare(client, sql, values).await?;
        if !statement.columns().is_empty() {
            let (filling, columns) = result_of(statement.columns())?;
            summary.columns = columns;
            batches = Some(filling);
        }
    }
    if let Some(filling) = &mut batches
        && (first || filling.rows > 0)
    {
        send(filling, &mut sink).await?;
    }
    Ok(summary)
}

/// A keyed call's outcome: its summary and the rows it returned.
struct Kept {
    summary: SqlSummary,
    batches: Vec<RecordBatch>,
}

impl Kept {
    /// Sends the rows to the caller; the summary is the call's answer.
    async fn deliver(self, rows: &Rows) -> Result<SqlSummary> {
        for batch in self.batches {
            rows.send(batch)
                .await
                .map_err(|_| Error::cancelled("the caller went away"))?;
        }
        Ok(self.summary)
    }
}

impl Replay for Kept {
    fn encode(&self) -> Vec<u8> {
        // A JSON header line (counts, column names and declared types),
        // then the rows as one Arrow IPC stream (which carries the types).
        let header = serde_json::json!({
            "rows": self.summary.rows,
            "rows_affected": self.summary.rows_affected,
            "columns": self.summary.columns.iter().map(|(n, d, _)| [n, d]).collect::<Vec<_>>(),
        });
        let mut out = header.to_string().into_bytes();
        out.push(b'\n');
        if let Some(first) = self.batches.first() {
            let written = arrow_ipc::writer::StreamWriter::try_new(&mut out, &first.schema())
                .and_then(|mut writer| {
                    for batch in &self.batches {
                        writer.write(batch)?;
                    }
                    writer.finish()
                });
            if written.is_err() {
                // Kept as too large: a retry learns the call was applied.
                return vec![0; crate::calls::MAX_OUTCOME_BYTES + 1];
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Kept> {
        let bad = || Error::internal("a kept outcome could not be read back");
        let split = bytes.iter().position(|b| *b == b'\n').ok_or_else(bad)?;
        let header: serde_json::Value =
            serde_json::from_slice(&bytes[..split]).map_err(|_| bad())?;
        let batches = if bytes.len() > split + 1 {
            arrow_ipc::reader::StreamReader::try_new(&bytes[split + 1..], None)
                .map_err(|_| bad())?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| bad())?
        } else {
            Vec::new()
        };
        let types: Vec<arrow_schema::DataType> = batches
            .first()
            .map(|b| {
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.data_type().clone())
                    .collect()
            })
            .unwrap_or_default();
        let columns = header["columns"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .zip(types)
            .map(|(pair, kind)| {
                (
                    pair[0].as_str().unwrap_or_default().to_string(),
                    pair[1].as_str().unwrap_or_default().to_string(),
                    kind,
                )
            })
            .collect();
        Ok(Kept {
            summary: SqlSummary {
                rows: header["rows"].as_u64().ok_or_else(bad)?,
                rows_affected: header["rows_affected"].as_u64().ok_or_else(bad)?,
                last_insert_rowid: 0,
                columns,
            },
            batches,
        })
    }
}

const PROCEDURES: &str = "CREATE TABLE IF NOT EXISTS busbar_procedures (
    name TEXT PRIMARY KEY,
    params TEXT NOT NULL,
    body TEXT NOT NULL,
    created_ms BIGINT NOT NULL
)";

async fn procedures(client: &Client) -> Result<Vec<Procedure>> {
    let exists = client
        .query_one("SELECT to_regclass('busbar_procedures') IS NOT NULL", &[])
        .await
        .map_err(|e| sql_error(&e))?;
    if !exists.get::<_, bool>(0) {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT name, params, body, created_ms FROM busbar_procedures ORDER BY name",
            &[],
        )
        .await
        .map_err(|e| sql_error(&e))?;
    Ok(rows
        .iter()
        .map(|row| Procedure {
            name: row.get(0),
            params: serde_json::from_str(row.get(1)).unwrap_or_default(),
            body: row.get(2),
            created_ms: row.get(3),
        })
        .collect())
}

#[async_trait]
impl SqlEngine for PostgresSql {
    async fn create(&self, id: &str) -> Result<()> {
        let names = Names::of(id);
        let mut admin = self.admin.get().await?;
        let transaction = admin.transaction().await?;
        transaction
            .batch_execute(&self.roles.create_statements(&names))
            .await
            .map_err(|e| {
                Error::failed_precondition(format!(
                    "PostgreSQL did not make the database's schema and roles ({}); the node's \
                     PostgreSQL user needs CREATEROLE (docs/cluster.md)",
                    crate::store::postgres_reason(&e)
                ))
            })?;
        transaction.commit().await?;
        Ok(())
    }

    async fn remove(&self, id: &str) {
        let names = Names::of(id);
        {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.by_role.remove(&names.writer);
            pools.by_role.remove(&names.reader);
        }
        let Ok(admin) = self.admin.get().await else {
            tracing::warn!(id, "could not reach PostgreSQL to drop a deleted database");
            return;
        };
        for statement in Roles::drop_statements(&names) {
            if let Err(error) = admin.batch_execute(&statement).await {
                tracing::warn!(
                    id,
                    "dropping a deleted database: {}",
                    crate::store::postgres_reason(&error)
                );
            }
        }
    }

    async fn execute(
        &self,
        on: On,
        sql: String,
        params: SqlParams,
        rows: Rows,
        budget: Budget,
    ) -> Result<SqlSummary> {
        text::one_statement(&sql)?;
        refuse_transaction_control(&sql)?;
        let (sql, values) = bind(&sql, &params)?;
        let budget_in = budget.clone();
        let Some(key) = keyed(&on) else {
            return self
                .run(&on, &budget, move |client| {
                    Box::pin(async move {
                        stream(client, &sql, &values, Sink::Send(&rows), &budget_in).await
                    })
                })
                .await;
        };
        let kept = self
            .run(&on, &budget, move |client| {
                Box::pin(async move {
                    let (mut batches, mut wrote) = (Vec::new(), false);
                    let sink = Sink::Keep(&mut batches);
                    let noted = Some(&mut wrote);
                    let summary =
                        stream_noting_writes(client, &sql, &values, sink, &budget_in, noted)
                            .await?;
                    let kept = Kept { summary, batches };
                    // A statement that wrote nothing needs no key.
                    if !wrote {
                        return Ok(kept);
                    }
                    settle(client, &key, kept).await
                })
            })
            .await?;
        kept.deliver(&rows).await
    }

    async fn execute_each(
        &self,
        on: On,
        sql: String,
        rows: Vec<SqlParams>,
        budget: Budget,
    ) -> Result<u64> {
        text::one_statement(&sql)?;
        refuse_transaction_control(&sql)?;
        let bound = rows
            .iter()
            .map(|params| bind(&sql, params))
            .collect::<Result<Vec<_>>>()?;
        let budget_in = budget.clone();
        let key = keyed(&on);
        self.run(&on, &budget, move |client| {
            Box::pin(async move {
                let mut changed = 0;
                for (sql, values) in &bound {
                    changed += stream(client, sql, values, Sink::None, &budget_in)
                        .await?
                        .rows_affected;
                }
                match &key {
                    Some(key) => settle(client, key, changed).await,
                    None => Ok(changed),
                }
            })
        })
        .await
    }

    async fn describe(
        &self,
        database: &Database,
        sql: String,
        params: Option<SqlParams>,
        budget: Budget,
    ) -> Result<Description> {
        text::one_statement(&sql)?;
        let (numbered, names) = text::number_names(&sql)?;
        let values = match &params {
            Some(params) => bind(&sql, params)?.1,
            None => Vec::new(),
        };
        let on = On::from(database.clone());
        let (columns, count) = self
            .run(&on, &budget, move |client| {
                Box::pin(async move {
                    let statement = prepare(client, &numbered, &values).await?;
                    let schema = values::schema(statement.columns())?;
                    let columns: Vec<_> = schema
                        .fields()
                        .iter()
                        .map(|f| (f.name().clone(), f.data_type().clone()))
                        .collect();
                    Ok((columns, statement.params().len()))
                })
            })
            .await?;
        let parameters = if names.is_empty() {
            vec![String::new(); count]
        } else {
            names.iter().map(|n| format!(":{n}")).collect()
        };
        // PostgreSQL cannot say whether a statement writes without running
        // it; this reading of its first word only decides when Flight SQL
        // runs it, never what it may do (the read role cannot write).
        let read_only = matches!(
            first_word(&sql).as_str(),
            "select" | "values" | "table" | "show" | "explain"
        );
        Ok(Description {
            columns,
            parameters,
            read_only,
        })
    }

    async fn tables(&self, database: &Database, budget: Budget) -> Result<Vec<(String, String)>> {
        let on = On::from(database.clone());
        self.run(&on, &budget, |client| {
            Box::pin(async move {
                let rows = client
                    .query(
                        "SELECT c.relname::text, CASE WHEN c.relkind IN ('v', 'm') THEN 'view' \
                         ELSE 'table' END FROM pg_class c \
                         WHERE c.relnamespace = current_schema()::regnamespace \
                         AND c.relkind IN ('r', 'p', 'v', 'm') AND c.relname <> 'busbar_procedures' \
                         ORDER BY 1",
                        &[],
                    )
                    .await
                    .map_err(|e| sql_error(&e))?;
                Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
            })
        })
        .await
    }

    async fn create_procedure(
        &self,
        on: On,
        procedure: Procedure,
        replace: bool,
    ) -> Result<Procedure> {
        check_new(&procedure)?;
        for statement in text::statements(&procedure.body)? {
            refuse_transaction_control(statement)?;
        }
        let (budget, _stop) = procedure_budget();
        let created_ms = now_ms();
        let params = serde_json::to_string(&procedure.params).expect("strings serialize");
        let saved = Procedure {
            created_ms,
            ..procedure
        };
        let row = saved.clone();
        self.run(&on, &budget, move |client| {
            Box::pin(async move {
                client
                    .batch_execute(PROCEDURES)
                    .await
                    .map_err(|e| sql_error(&e))?;
                let sql = if replace {
                    "INSERT INTO busbar_procedures (name, params, body, created_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET \
                     params = excluded.params, body = excluded.body, created_ms = excluded.created_ms"
                } else {
                    "INSERT INTO busbar_procedures (name, params, body, created_ms) \
                     VALUES ($1, $2, $3, $4)"
                };
                let inserted = client
                    .execute(sql, &[&row.name, &params, &row.body, &row.created_ms])
                    .await;
                match inserted {
                    Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                        Err(Error::already_exists(format!(
                            "a procedure named {} exists; replace it or drop it first",
                            row.name
                        )))
                    }
                    other => other.map(|_| ()).map_err(|e| sql_error(&e)),
                }
            })
        })
        .await?;
        Ok(saved)
    }

    async fn drop_procedure(&self, on: On, name: String) -> Result<()> {
        let (budget, _stop) = procedure_budget();
        self.run(&on, &budget, move |client| {
            Box::pin(async move {
                let known = procedures(client).await?.iter().any(|p| p.name == name);
                if !known {
                    return Err(Error::not_found(format!("no procedure named {name}")));
                }
                client
                    .execute("DELETE FROM busbar_procedures WHERE name = $1", &[&name])
                    .await
                    .map_err(|e| sql_error(&e))?;
                Ok(())
            })
        })
        .await
    }

    async fn list_procedures(&self, on: On) -> Result<Vec<Procedure>> {
        let (budget, _stop) = procedure_budget();
        self.run(&on, &budget, |client| Box::pin(procedures(client)))
            .await
    }

    async fn run_procedure(
        &self,
        on: On,
        name: String,
        args: Arguments,
        rows: Rows,
        budget: Budget,
    ) -> Result<SqlSummary> {
        let budget_in = budget.clone();
        let key = keyed(&on);
        let sink = rows.clone();
        let kept = self
            .run(&on, &budget, move |client| {
                Box::pin(async move {
                    let procedure = procedures(client)
                        .await?
                        .into_iter()
                        .find(|p| p.name == name)
                        .ok_or_else(|| Error::not_found(format!("no procedure named {name}")))?;
                    let values = bind_arguments(&procedure, args)?;
                    let pieces = text::statements(&procedure.body)?;
                    let mut summary = SqlSummary::default();
                    let mut batches = Vec::new();
                    let mut changed = 0;
                    for (number, piece) in pieces.iter().enumerate() {
                        let at = at_statement(&procedure, number);
                        refuse_transaction_control(piece).map_err(at)?;
                        let given = SqlParams {
                            positional: Vec::new(),
                            named: text::number_names(piece)
                                .map_err(at)?
                                .1
                                .into_iter()
                                .map(|param| {
                                    let value = values.get(&param).cloned().ok_or_else(|| {
                                        at(Error::invalid_argument(format!(
                                            "parameter :{param} is not one of the procedure's ({})",
                                            procedure.params.join(", ")
                                        )))
                                    })?;
                                    Ok((param, value))
                                })
                                .collect::<Result<_>>()?,
                        };
                        let (sql, bound) = bind(piece, &given).map_err(at)?;
                        let last = number + 1 == pieces.len();
                        let sink = match (last, key.is_some()) {
                            (false, _) => Sink::None,
                            (true, false) => Sink::Send(&sink),
                            (true, true) => Sink::Keep(&mut batches),
                        };
                        let ran = stream(client, &sql, &bound, sink, &budget_in)
                            .await
                            .map_err(at)?;
                        changed += ran.rows_affected;
                        if last {
                            summary = ran;
                        }
                    }
                    summary.rows_affected = changed;
                    let kept = Kept { summary, batches };
                    match &key {
                        Some(key) => settle(client, key, kept).await,
                        None => Ok(kept),
                    }
                })
            })
            .await?;
        kept.deliver(&rows).await
    }
}

/// The key a call's write is recorded under: only for calls outside a
/// session (a session lives on its node, so its calls are never retried
/// elsewhere) by a caller that may write.
fn keyed(on: &On) -> Option<CallKey> {
    on.key
        .clone()
        .filter(|_| on.session.is_none() && !on.database.read_only)
}

/// Procedure bookkeeping is quick: a budget of its own (the call's future
/// holds the [`StopOnDrop`], so a caller going away still stops it).
fn procedure_budget() -> (Budget, crate::sql::StopOnDrop) {
    Budget::new(None, std::time::Duration::from_secs(30), 1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_refused_however_it_is_spelled() {
        for sql in [
            "BEGIN",
            " commit;",
            "/* x */ ROLLBACK",
            "-- c\nSavepoint s",
            "START TRANSACTION",
        ] {
            assert!(refuse_transaction_control(sql).is_err(), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "(SELECT 1)",
        ] {
            assert!(refuse_transaction_control(sql).is_ok(), "{sql}");
        }
    }

    #[test]
    fn parameters_bind_by_name_or_number_and_mismatches_are_refused() {
        let named = SqlParams {
            positional: vec![],
            named: vec![
                (":a".into(), SqlParam::Integer(1)),
                ("b".into(), SqlParam::Null),
            ],
        };
        let (sql, values) = bind("SELECT :a, :b, :a", &named).unwrap();
        assert_eq!(sql, "SELECT $1, $2, $1");
        assert_eq!(values, vec![SqlParam::Integer(1), SqlParam::Null]);
        assert!(bind("SELECT :a", &named).is_err(), "b is unknown");
        let positional = SqlParams {
            positional: vec![SqlParam::Integer(1)],
            named: vec![],
        };
        assert!(bind("SELECT $1", &positional).is_ok());
        assert!(bind("SELECT $1, $2", &positional).is_err());
        assert!(bind("SELECT :a", &positional).is_err());
    }
}
