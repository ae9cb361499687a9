//! SQL databases, one job in one place. The services (`busbar.v1.Sql`
//! in `service`, Flight SQL in `flight_sql`) check rights with [`open`] and
//! reach storage only through the [`SqlEngine`] trait; the embedded engine
//! (`embedded`: one SQLite file per database, sandboxed) is the only code
//! that holds connections and transactions. A cluster's engine fills the
//! same trait on PostgreSQL (docs/architecture.md).

mod budget;
pub mod embedded;
pub mod flight_sql;
mod flight_statements;
pub mod postgres;
pub mod service;

pub use budget::{Budget, StopOnDrop};
pub use busbar_types::SqlParam;
pub use embedded::SqlDatabases;

use crate::auth::access::Caller;
use crate::error::{Error, ErrorCode, Result};
use crate::node::Node;
use crate::sessions::DataSession;
use crate::store::{ResourceKind, Right};
use arrow_array::RecordBatch;
use arrow_schema::DataType;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Rows per record batch of a result.
pub(crate) const BATCH_ROWS: usize = 8192;
/// Bytes of values after which a result's record batch goes out before it is full.
pub(crate) const BATCH_BYTES: usize = 8 << 20;

/// The error of a result past `max_result_bytes`.
pub(crate) fn result_too_large(max_result_bytes: usize) -> Error {
    Error::resource_exhausted(format!(
        "the result is larger than this node returns for one call \
         (max_result_bytes = {max_result_bytes}); narrow it with WHERE or LIMIT, or page \
         through it"
    ))
}

/// Parameters: by position (`?`, `?NNN`) or by name (`:name`, `@name`, `$name`).
#[derive(Debug, Clone, Default)]
pub struct SqlParams {
    pub positional: Vec<SqlParam>,
    pub named: Vec<(String, SqlParam)>,
}

/// What a statement did besides returning rows.
#[derive(Debug, Clone, Default)]
pub struct SqlSummary {
    pub rows: u64,
    pub rows_affected: u64,
    pub last_insert_rowid: i64,
    /// Column name, declared type, Arrow type.
    pub columns: Vec<(String, String, DataType)>,
}

/// A statement's shape without running it to completion (Flight SQL's
/// prepared statements).
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    /// Result columns: name and Arrow type.
    pub columns: Vec<(String, DataType)>,
    /// Parameter names in order (`:name`, `?3`; empty for a bare `?`).
    pub parameters: Vec<String>,
    /// Whether the engine says the statement does not write.
    pub read_only: bool,
}

/// A stored procedure: named, parameterized SQL kept in its database.
#[derive(Debug, Clone, PartialEq)]
pub struct Procedure {
    pub name: String,
    pub params: Vec<String>,
    pub body: String,
    pub created_ms: i64,
}

impl crate::calls::Replay for Procedure {
    fn encode(&self) -> Vec<u8> {
        serde_json::json!({
            "name": self.name,
            "params": self.params,
            "body": self.body,
            "created_ms": self.created_ms,
        })
        .to_string()
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Procedure> {
        let unreadable = || Error::internal("a kept procedure's outcome cannot be read");
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| unreadable())?;
        let text = |field: &str| value[field].as_str().map(str::to_string);
        Ok(Procedure {
            name: text("name").ok_or_else(unreadable)?,
            params: serde_json::from_value(value["params"].clone()).map_err(|_| unreadable())?,
            body: text("body").ok_or_else(unreadable)?,
            created_ms: value["created_ms"].as_i64().ok_or_else(unreadable)?,
        })
    }
}

/// Arguments of a procedure run: by position or by name.
#[derive(Debug, Clone, Default)]
pub struct Arguments {
    pub positional: Vec<SqlParam>,
    pub named: HashMap<String, SqlParam>,
}

/// A database a call may use, as the rights check found it.
#[derive(Debug, Clone)]
pub struct Database {
    pub path: String,
    /// The resource id, which names its storage.
    pub id: String,
    /// The caller holds read but not write: nothing it runs may write.
    pub read_only: bool,
}

/// Where a call's SQL runs: its database and, when the call names one, the
/// data session whose transaction on that database it joins; and the
/// call's idempotency key, when it carries one (`crate::calls`).
#[derive(Clone)]
pub struct On {
    pub database: Database,
    pub session: Option<Arc<DataSession>>,
    pub key: Option<crate::calls::CallKey>,
}

impl From<Database> for On {
    fn from(database: Database) -> On {
        On {
            database,
            session: None,
            key: None,
        }
    }
}

/// A statement as a call gives it: its text, its parameters (one set,
/// several rows of them, none yet, or a procedure's arguments) and the
/// budget it runs under.
pub struct Query<P = SqlParams> {
    /// The statement's text; for a procedure run, the procedure's name.
    pub sql: String,
    pub params: P,
    pub budget: Budget,
}

impl<P> Query<P> {
    pub fn new(sql: String, params: P, budget: Budget) -> Query<P> {
        Query {
            sql,
            params,
            budget,
        }
    }

    /// Text, parameters and budget, to be used apart.
    pub fn parts(self) -> (String, P, Budget) {
        (self.sql, self.params, self.budget)
    }
}

/// A statement whose parameters may not be known yet: Flight SQL describes
/// a prepared statement before it is bound.
pub type MaybeBound = Query<Option<SqlParams>>;

/// Where result batches go, as the engine fills them.
pub type Rows = mpsc::Sender<RecordBatch>;

/// Everything the services ask of SQL databases. Each method runs under
/// `budget` where it takes one; with `on.database.read_only` nothing may
/// write (the engine's own judgement of the statement, not its text).
#[async_trait]
pub trait SqlEngine: Send + Sync + 'static {
    /// Makes the storage of a new DATABASE resource.
    async fn create(&self, id: &str) -> Result<()>;
    /// Drops the storage of a deleted one.
    async fn remove(&self, id: &str);
    /// Runs one statement, sending its rows to `rows`.
    async fn execute(&self, on: On, query: Query, rows: Rows) -> Result<SqlSummary>;
    /// Runs one statement once per parameter row, all or none (in a
    /// session, the session's earlier work is kept if a row fails).
    /// Returns the rows changed in total.
    async fn execute_each(&self, on: On, query: Query<Vec<SqlParams>>) -> Result<u64>;
    /// A statement's columns and parameters; with `params`, a statement that
    /// does not write may be run a little to type expression columns.
    async fn describe(&self, db: &Database, query: MaybeBound) -> Result<Description>;
    /// The user's tables and views: name and "table" or "view".
    async fn tables(&self, database: &Database, budget: Budget) -> Result<Vec<(String, String)>>;
    async fn create_procedure(&self, on: On, given: Procedure, replace: bool) -> Result<Procedure>;
    async fn drop_procedure(&self, on: On, name: String) -> Result<()>;
    async fn list_procedures(&self, on: On) -> Result<Vec<Procedure>>;
    /// Runs a procedure atomically, sending the rows of its last statement.
    async fn run_procedure(&self, on: On, run: Query<Arguments>, rows: Rows) -> Result<SqlSummary>;
}

/// The database `given` names (a path or `id:<uuid>`), if `caller` may read
/// it: the one rights rule of `Sql`, `Sessions` and Flight SQL. `hint` ends
/// the message when the resource is not a database.
pub async fn open(node: &Node, caller: &Caller, given: &str, hint: &str) -> Result<Database> {
    let path = node.path(given).await?;
    let kind = ResourceKind::Database;
    let record = (node
        .access
        .require_kind(caller, &path, Right::Read, kind)
        .await)
        .map_err(|mut error| {
            if error.code == ErrorCode::FailedPrecondition {
                error.message.push_str(hint);
            }
            error
        })?;
    let read_only = node.access.right(caller, &path).await? < Some(Right::Write);
    Ok(Database {
        id: record.id.clone(),
        path,
        read_only,
    })
}
