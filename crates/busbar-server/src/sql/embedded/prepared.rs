//! What prepared statements (Flight SQL) need from the engine besides
//! [`SqlDatabases::execute`]: a statement's result columns and parameters
//! without running it to completion, and one statement run once per
//! parameter row inside one transaction.

use super::sandbox::{self, Budget};
use super::{SqlDatabases, arrow_type, bind, inferred_type, sql_error};
use crate::error::{Error, Result};
use crate::sql::{Description, SqlParams};
use arrow_schema::DataType;
use rusqlite::Connection;

/// Rows a description may read to type columns that have no declared type.
const DESCRIBE_ROWS: usize = 100;

impl SqlDatabases {
    /// Describes one statement. Columns take their declared types as
    /// [`SqlDatabases::execute`] does; a column without one (an expression)
    /// is typed from its first non-NULL value in the first rows, read only
    /// when the statement does not write and `params` are given (or it takes
    /// none); Utf8 otherwise. Nothing is written.
    pub(super) async fn describe_on(
        &self,
        id: &str,
        sql: String,
        params: Option<SqlParams>,
        budget: Budget,
    ) -> Result<Description> {
        let databases = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            let reader = databases.connect_read_only(&id)?;
            budget.run(&reader, || describe(&reader, &sql, params))
        })
        .await?
    }

    /// Runs `sql` once per entry of `rows`, in one transaction: either every
    /// run applies or none does. Returns the rows changed in total. With
    /// `read_only` it runs on a read-only connection, so SQLite refuses any
    /// write.
    pub(super) async fn execute_each_alone(
        &self,
        id: &str,
        sql: String,
        rows: Vec<SqlParams>,
        read_only: bool,
        budget: Budget,
    ) -> Result<u64> {
        let databases = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            if read_only {
                let reader = databases.connect_read_only(&id)?;
                return budget.run(&reader, || run_each(&reader, &sql, &rows));
            }
            let writer = databases.writer(&id)?;
            let conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            sandbox::control(&conn, "BEGIN IMMEDIATE")?;
            let changed = budget.run(&conn, || run_each(&conn, &sql, &rows));
            // A statement stopped while writing has rolled the transaction
            // back already; the shared writer is never left inside one.
            let ended = match (&changed, conn.is_autocommit()) {
                (_, true) => Ok(()),
                (Ok(_), false) => sandbox::control(&conn, "COMMIT"),
                (Err(_), false) => sandbox::control(&conn, "ROLLBACK"),
            };
            if let Err(error) = ended {
                if !conn.is_autocommit() {
                    let _ = sandbox::control(&conn, "ROLLBACK");
                }
                return Err(sql_error(error));
            }
            changed
        })
        .await?
    }
}

pub(crate) fn run_each(conn: &Connection, sql: &str, rows: &[SqlParams]) -> Result<u64> {
    let mut stmt = sandbox::prepare(conn, sql)?;
    let mut changed = 0;
    for (n, params) in rows.iter().enumerate() {
        bind(&mut stmt, params).map_err(|e| in_row(e, n, rows.len()))?;
        // Rows a RETURNING clause yields are not wanted here: step through them.
        let mut results = stmt.raw_query();
        while results
            .next()
            .map_err(|e| in_row(sql_error(e), n, rows.len()))?
            .is_some()
        {}
        drop(results);
        changed += conn.changes();
        stmt.clear_bindings();
    }
    Ok(changed)
}

/// Names the parameter row an error came from, when there are several.
fn in_row(mut error: Error, n: usize, of: usize) -> Error {
    if of > 1 {
        error.message = format!("parameter row {} of {of}: {}", n + 1, error.message);
    }
    error
}

fn describe(reader: &Connection, sql: &str, params: Option<SqlParams>) -> Result<Description> {
    let mut stmt = sandbox::prepare(reader, sql)?;
    let parameters = (1..=stmt.parameter_count())
        .map(|i| stmt.parameter_name(i).unwrap_or("").to_string())
        .collect();
    let read_only = stmt.readonly();
    let names: Vec<String> = stmt.column_names().iter().map(|n| n.to_string()).collect();
    let mut types: Vec<Option<DataType>> = stmt
        .columns()
        .iter()
        .map(|c| arrow_type(c.decl_type().unwrap_or("")))
        .collect();
    let params = match params {
        Some(params) => Some(params),
        None if stmt.parameter_count() == 0 => Some(SqlParams::default()),
        None => None,
    };
    if let Some(params) = params.filter(|_| read_only && types.iter().any(Option::is_none)) {
        bind(&mut stmt, &params)?;
        let mut rows = stmt.raw_query();
        let mut seen = 0;
        while seen < DESCRIBE_ROWS && types.iter().any(Option::is_none) {
            let Some(row) = rows.next().map_err(sql_error)? else {
                break;
            };
            for (i, kind) in types.iter_mut().enumerate() {
                if kind.is_none() {
                    *kind = inferred_type(row.get_ref(i).map_err(sql_error)?);
                }
            }
            seen += 1;
        }
    }
    let columns = names
        .into_iter()
        .zip(types)
        .map(|(name, kind)| (name, kind.unwrap_or(DataType::Utf8)))
        .collect();
    Ok(Description {
        columns,
        parameters,
        read_only,
    })
}
