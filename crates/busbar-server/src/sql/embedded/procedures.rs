//! Stored procedures: named, parameterized SQL kept in the database they run
//! in (table `busbar_procedures`), run atomically: every statement or none.

use super::sandbox::{self, Budget};
use super::{sql_error, stream_rows, value};
use crate::error::{Error, Result};
use crate::sql::{Arguments, Procedure, SqlParam, SqlSummary};
use crate::store::now_ms;
use arrow_array::RecordBatch;
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;
use tokio::sync::mpsc;

const TABLE: &str = "CREATE TABLE IF NOT EXISTS busbar_procedures (
    name TEXT PRIMARY KEY,
    params TEXT NOT NULL,
    body TEXT NOT NULL,
    created_ms INTEGER NOT NULL
)";

fn identifier(what: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if valid {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "bad {what} {name:?}: use letters, digits and _, starting with a letter (at most 128)"
        )))
    }
}

fn has_table(conn: &Connection) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'busbar_procedures'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Refuses a procedure that is not well formed: its name, its parameters'
/// names (each once), a body. Every engine checks this first.
pub(crate) fn check_new(procedure: &Procedure) -> Result<()> {
    identifier("procedure name", &procedure.name)?;
    let mut seen = std::collections::HashSet::new();
    for param in &procedure.params {
        identifier("parameter name", param)?;
        if !seen.insert(param) {
            return Err(Error::invalid_argument(format!(
                "parameter {param} is declared twice"
            )));
        }
    }
    if procedure.body.trim().is_empty() {
        return Err(Error::invalid_argument(
            "a procedure needs a body of SQL statements",
        ));
    }
    Ok(())
}

/// Creates (or with `replace`, replaces) a procedure.
pub fn create(conn: &Connection, procedure: &Procedure, replace: bool) -> Result<Procedure> {
    check_new(procedure)?;
    conn.execute_batch(TABLE)?;
    let params = serde_json::to_string(&procedure.params).expect("strings serialize");
    let created_ms = now_ms();
    let sql = if replace {
        "INSERT OR REPLACE INTO busbar_procedures (name, params, body, created_ms) VALUES (?1, ?2, ?3, ?4)"
    } else {
        "INSERT INTO busbar_procedures (name, params, body, created_ms) VALUES (?1, ?2, ?3, ?4)"
    };
    match conn.execute(sql, (&procedure.name, &params, &procedure.body, created_ms)) {
        Ok(_) => Ok(Procedure {
            created_ms,
            ..procedure.clone()
        }),
        Err(rusqlite::Error::SqliteFailure(failure, _))
            if failure.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(Error::already_exists(format!(
                "a procedure named {} exists; replace it or drop it first",
                procedure.name
            )))
        }
        Err(error) => Err(sql_error(error)),
    }
}

pub fn drop(conn: &Connection, name: &str) -> Result<()> {
    let dropped = has_table(conn)?
        && conn.execute("DELETE FROM busbar_procedures WHERE name = ?1", [name])? > 0;
    if dropped {
        Ok(())
    } else {
        Err(Error::not_found(format!("no procedure named {name}")))
    }
}

pub fn list(conn: &Connection) -> Result<Vec<Procedure>> {
    if !has_table(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt =
        conn.prepare("SELECT name, params, body, created_ms FROM busbar_procedures ORDER BY name")?;
    let rows = stmt.query_map([], |row| {
        Ok(Procedure {
            name: row.get(0)?,
            params: serde_json::from_str(&row.get::<_, String>(1)?).unwrap_or_default(),
            body: row.get(2)?,
            created_ms: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn find(conn: &Connection, name: &str) -> Result<Procedure> {
    list(conn)?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Error::not_found(format!("no procedure named {name}")))
}

/// Values for each declared parameter, from positional or named arguments.
pub(crate) fn bind_arguments(
    procedure: &Procedure,
    args: Arguments,
) -> Result<HashMap<String, SqlParam>> {
    let Procedure { name, params, .. } = procedure;
    match (args.positional.is_empty(), args.named.is_empty()) {
        (false, false) => Err(Error::invalid_argument(
            "pass a procedure's arguments by position or by name, not both",
        )),
        (false, true) => {
            if args.positional.len() != params.len() {
                return Err(Error::invalid_argument(format!(
                    "procedure {name} takes {} arguments ({}) but {} were given",
                    params.len(),
                    params.join(", "),
                    args.positional.len()
                )));
            }
            Ok(params.iter().cloned().zip(args.positional).collect())
        }
        _ => {
            if let Some(unknown) = args.named.keys().find(|k| !params.contains(k)) {
                return Err(Error::invalid_argument(format!(
                    "procedure {name} has no parameter {unknown} (it takes {})",
                    if params.is_empty() {
                        "none".to_string()
                    } else {
                        params.join(", ")
                    }
                )));
            }
            if let Some(missing) = params.iter().find(|p| !args.named.contains_key(*p)) {
                return Err(Error::invalid_argument(format!(
                    "procedure {name} needs a value for {missing}"
                )));
            }
            Ok(args.named)
        }
    }
}

/// Runs a procedure's statements in order inside a savepoint: if any fails,
/// none of them took effect. Rows of the last statement go to `sink`.
///
/// The body runs in the SQL sandbox under `budget`; a statement stopped
/// while it writes makes SQLite roll back the whole transaction it is in
/// (the savepoint with it), which the caller sees as the connection back in
/// autocommit.
pub fn run(
    conn: &Connection,
    name: &str,
    args: Arguments,
    sink: &mpsc::Sender<RecordBatch>,
    budget: &Budget,
) -> Result<SqlSummary> {
    let procedure = find(conn, name)?;
    let values = bind_arguments(&procedure, args)?;
    sandbox::control(conn, "SAVEPOINT busbar_procedure")?;
    let result = budget.run(conn, || {
        run_body(conn, &procedure, &values, sink, budget.max_result_bytes)
    });
    if conn.is_autocommit() {
        return result; // already rolled back, savepoint and all
    }
    if result.is_err() {
        sandbox::control(conn, "ROLLBACK TO busbar_procedure")?;
    }
    sandbox::control(conn, "RELEASE busbar_procedure")?;
    result
}

/// The statements of a body, split where SQLite itself sees a statement end
/// (`sqlite3_complete`: semicolons in strings, comments and trigger bodies
/// do not count). Statements are prepared one at a time, after the ones
/// before them ran, so a body may create a table and then use it.
fn statements(body: &str) -> Vec<&str> {
    let complete = |text: &str| {
        let Ok(text) = std::ffi::CString::new(text) else {
            return false;
        };
        // SAFETY: a NUL-terminated string that outlives the call.
        unsafe { rusqlite::ffi::sqlite3_complete(text.as_ptr()) != 0 }
    };
    let mut out = Vec::new();
    let mut start = 0;
    for (at, _) in body.match_indices(';') {
        let piece = &body[start..=at];
        if complete(piece) {
            out.push(piece);
            start = at + 1;
        }
    }
    out.push(&body[start..]);
    out.retain(|piece| !piece.trim().trim_matches(';').trim().is_empty());
    out
}

/// Puts which statement of a procedure failed in front of its error.
pub(crate) fn at_statement(
    procedure: &Procedure,
    index: usize,
) -> impl Fn(Error) -> Error + Copy + '_ {
    move |error| Error {
        message: format!(
            "procedure {} statement {}: {}",
            procedure.name,
            index + 1,
            error.message
        ),
        ..error
    }
}

fn run_body(
    conn: &Connection,
    procedure: &Procedure,
    values: &HashMap<String, SqlParam>,
    sink: &mpsc::Sender<RecordBatch>,
    max_result_bytes: usize,
) -> Result<SqlSummary> {
    let changes_before = conn.total_changes();
    let pieces = statements(&procedure.body);
    let mut summary = SqlSummary::default();
    for (number, text) in pieces.iter().enumerate() {
        let at = at_statement(procedure, number);
        let mut stmt = sandbox::prepare(conn, text).map_err(at)?;
        for index in 1..=stmt.parameter_count() {
            let name = stmt.parameter_name(index).unwrap_or("?").to_string();
            let given = values.get(name.get(1..).unwrap_or("")).ok_or_else(|| {
                at(Error::invalid_argument(format!(
                    "parameter {name} is not one of the procedure's ({}); use :name parameters",
                    procedure.params.join(", ")
                )))
            })?;
            stmt.raw_bind_parameter(index, value(given))
                .map_err(|e| at(sql_error(e)))?;
        }
        if number + 1 == pieces.len() {
            summary = stream_rows(conn, stmt, sink, max_result_bytes).map_err(at)?;
        } else {
            let mut rows = stmt.raw_query();
            while rows.next().map_err(|e| at(sql_error(e)))?.is_some() {}
        }
    }
    summary.rows_affected = conn.total_changes() - changes_before;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_where_sqlite_ends_a_statement() {
        let body = "CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('a;b'); -- c;\n\
                    CREATE TRIGGER g AFTER INSERT ON t BEGIN DELETE FROM t; END;\n SELECT 1";
        let pieces = statements(body);
        assert_eq!(pieces.len(), 4, "{pieces:?}");
        assert!(pieces[2].contains("END;"));
        assert_eq!(pieces[3].trim(), "SELECT 1");
        assert_eq!(statements("SELECT 1; ;  ").len(), 1);
    }
}
