//! The sandbox every connection that runs user SQL sits in, after SQLite's
//! own advice for untrusted SQL ("Defense Against the Dark Arts"):
//!
//! - an authorizer that allows what a database user needs on its own
//!   database and refuses everything else, unknown actions included
//!   (ATTACH/DETACH, `VACUUM [INTO]`, PRAGMAs beyond a read-only allow-list,
//!   functions and virtual-table modules beyond an allow-list, transaction
//!   control the server did not start);
//! - limits on lengths, depths and attached databases (zero), defensive
//!   mode on, schemas untrusted, no extensions;
//! - a [`Budget`] per call: a progress handler stops the statement at the
//!   call's deadline, at the node's ceiling, and when the caller goes away,
//!   and a result ceiling bounds what one call may return.
//!
//! docs/security.md lists the same values; a change here changes it there.

use crate::error::{Error, Result};
pub use crate::sql::budget::{Budget, INTERRUPTED};
use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use std::cell::{Cell, RefCell};

/// Per-connection limits (`sqlite3_limit`), in the order docs/security.md lists them.
pub const LIMITS: [(Limit, i32); 11] = [
    // Largest string, blob or row: 64 MiB (the default is 1 GB).
    (Limit::SQLITE_LIMIT_LENGTH, 64 << 20),
    // Longest statement text: 1 MiB.
    (Limit::SQLITE_LIMIT_SQL_LENGTH, 1 << 20),
    (Limit::SQLITE_LIMIT_COLUMN, 2000),
    (Limit::SQLITE_LIMIT_EXPR_DEPTH, 100),
    (Limit::SQLITE_LIMIT_COMPOUND_SELECT, 100),
    (Limit::SQLITE_LIMIT_VDBE_OP, 1_000_000),
    (Limit::SQLITE_LIMIT_FUNCTION_ARG, 64),
    // No database but the connection's own can ever be attached.
    (Limit::SQLITE_LIMIT_ATTACHED, 0),
    (Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1000),
    (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 10),
    (Limit::SQLITE_LIMIT_WORKER_THREADS, 0),
];

/// PRAGMAs a user may run. Each only reads; those that take an argument take
/// a table or index name of the user's own database.
pub const PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "collation_list",
    "function_list",
    "module_list",
    "pragma_list",
    "compile_options",
];

/// PRAGMAs a user may read but not set.
pub const READ_ONLY_PRAGMAS: &[&str] = &[
    "user_version",
    "schema_version",
    "application_id",
    "page_count",
    "page_size",
    "freelist_count",
    "encoding",
    "foreign_keys",
    "data_version",
    "auto_vacuum",
];

/// SQLite's built-in SQL functions a user may call: core scalar, aggregate,
/// window, date/time, math and JSON functions, and the FTS5/R*Tree helpers.
/// A function not named here (or in [`DENIED_FUNCTIONS`]) is refused; a unit
/// test checks every function the linked SQLite offers is in one list or the
/// other, so an upgrade that adds one forces a decision.
pub const FUNCTIONS: &[&str] = &[
    // core scalar
    "abs",
    "changes",
    "char",
    "coalesce",
    "concat",
    "concat_ws",
    "format",
    "glob",
    "hex",
    "ifnull",
    "iif",
    "if",
    "instr",
    "last_insert_rowid",
    "length",
    "like",
    "likelihood",
    "likely",
    "lower",
    "ltrim",
    "max",
    "min",
    "nullif",
    "octet_length",
    "printf",
    "quote",
    "random",
    "randomblob",
    "replace",
    "round",
    "rtrim",
    "sign",
    "soundex",
    "sqlite_source_id",
    "sqlite_version",
    "substr",
    "substring",
    "total_changes",
    "trim",
    "typeof",
    "unhex",
    "unicode",
    "unlikely",
    "upper",
    "zeroblob",
    "unistr",
    "unistr_quote",
    "sqlite_offset",
    "sqlite_compileoption_get",
    "sqlite_compileoption_used",
    "stat_get",
    "stat_init",
    "stat_push",
    "sqlite_rename_column",
    "sqlite_rename_table",
    "sqlite_rename_test",
    "sqlite_rename_quotefix",
    "sqlite_drop_column",
    "noop",
    "implies_nonnull_row",
    "expr_compare",
    "expr_implies_expr",
    "affinity",
    "fpdecode",
    "subtype",
    // aggregate
    "avg",
    "count",
    "group_concat",
    "string_agg",
    "sum",
    "total",
    "median",
    "percentile",
    "percentile_cont",
    "percentile_disc",
    // window
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // date and time
    "date",
    "time",
    "datetime",
    "julianday",
    "unixepoch",
    "strftime",
    "timediff",
    "current_date",
    "current_time",
    "current_timestamp",
    // math
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "ceil",
    "ceiling",
    "cos",
    "cosh",
    "degrees",
    "exp",
    "floor",
    "ln",
    "log",
    "log10",
    "log2",
    "mod",
    "pi",
    "pow",
    "power",
    "radians",
    "sin",
    "sinh",
    "sqrt",
    "tan",
    "tanh",
    "trunc",
    // JSON
    "json",
    "jsonb",
    "json_array",
    "jsonb_array",
    "json_array_length",
    "json_error_position",
    "json_extract",
    "jsonb_extract",
    "json_insert",
    "jsonb_insert",
    "json_object",
    "jsonb_object",
    "json_patch",
    "jsonb_patch",
    "json_pretty",
    "json_quote",
    "json_remove",
    "jsonb_remove",
    "json_replace",
    "jsonb_replace",
    "json_set",
    "jsonb_set",
    "json_type",
    "json_valid",
    "json_group_array",
    "jsonb_group_array",
    "json_group_object",
    "jsonb_group_object",
    "->",
    "->>",
    // FTS5, FTS3/4 and R*Tree helpers (used inside their own virtual tables)
    "bm25",
    "highlight",
    "snippet",
    "fts5",
    "fts5_source_id",
    "fts5_get_locale",
    "fts5_insttoken",
    "fts5_locale",
    "matchinfo",
    "offsets",
    "optimize",
    "rtreecheck",
    "rtreedepth",
    "rtreenode",
    "match",
];

/// Built-in functions refused by name: they load code, set pointers or
/// write the log. (Everything not allowed is refused anyway; the test that
/// walks the linked SQLite's functions checks each is in one list.)
#[cfg(test)]
const DENIED_FUNCTIONS: &[&str] = &["load_extension", "fts3_tokenizer", "sqlite_log"];

/// Virtual-table modules a user may create a table of.
pub const MODULES: &[&str] = &["fts5", "rtree", "rtree_i32"];

/// Eponymous virtual tables (table-valued functions) a user may read.
pub const TABLE_FUNCTIONS: &[&str] = &["json_each", "json_tree", "jsonb_each", "jsonb_tree"];

thread_local! {
    /// Set while the server itself runs transaction control on this thread.
    static TRUSTED: Cell<bool> = const { Cell::new(false) };
    /// Why the authorizer last refused something on this thread.
    static REFUSED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs the server's own transaction control (BEGIN, COMMIT, ROLLBACK,
/// SAVEPOINT) on a sandboxed connection; user SQL may not.
pub fn trusted<T>(work: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            TRUSTED.with(|t| t.set(self.0));
        }
    }
    let _reset = Reset(TRUSTED.with(|t| t.replace(true)));
    work()
}

/// Runs `sql` (the server's own transaction control) on `conn`.
pub fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    trusted(|| conn.execute_batch(sql))
}

/// Caps the memory every SQLite connection of the process may hold at once
/// (`sqlite3_hard_heap_limit64`): a statement that needs more fails with
/// SQLITE_NOMEM, which the caller sees as RESOURCE_EXHAUSTED, and the node
/// lives on. Page caches count too; SQLite spills sorts to temporary files.
pub fn limit_memory(bytes: usize) {
    // SAFETY: a plain setter, callable at any time from any thread.
    unsafe {
        rusqlite::ffi::sqlite3_hard_heap_limit64(bytes as i64);
    }
}

/// Prepares one statement of user SQL. VACUUM is refused here by its first
/// keyword, since SQLite asks no authorizer about it (plain VACUUM would be
/// refused when it runs, for the file it attaches; inside a transaction
/// SQLite would refuse it with a message that does not say why).
pub fn prepare<'c>(conn: &'c Connection, sql: &str) -> Result<rusqlite::Statement<'c>> {
    if first_keyword(sql).eq_ignore_ascii_case("VACUUM") {
        return Err(Error::permission_denied(
            "refused by the SQL sandbox: VACUUM and VACUUM INTO are not available (VACUUM INTO \
             writes a file; the node looks after its databases' files itself)",
        ));
    }
    conn.prepare(sql).map_err(super::sql_error)
}

/// The first word of a statement, after blanks and comments.
fn first_keyword(sql: &str) -> &str {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Puts a fresh connection in the sandbox: limits, configuration, authorizer.
pub fn harden(conn: &Connection) -> Result<()> {
    use rusqlite::config::DbConfig;
    for (limit, value) in LIMITS {
        conn.set_limit(limit, value)?;
    }
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_WRITABLE_SCHEMA, false)?;
    // SAFETY: a valid open handle; 0 turns both the C API and the SQL
    // function load_extension() off for this connection.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION,
            0,
            std::ptr::null_mut::<i32>(),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(Error::internal("cannot turn off extension loading"));
    }
    conn.authorizer(Some(authorize));
    Ok(())
}

fn authorize(context: AuthContext<'_>) -> Authorization {
    match judge(&context) {
        Ok(()) => Authorization::Allow,
        Err(reason) => {
            REFUSED.with(|r| *r.borrow_mut() = Some(reason));
            Authorization::Deny
        }
    }
}

/// Databases a statement may name: its own and its temporary one.
fn own_database(context: &AuthContext<'_>) -> bool {
    matches!(context.database_name, None | Some("main") | Some("temp"))
}

fn judge(context: &AuthContext<'_>) -> std::result::Result<(), String> {
    use AuthAction::*;
    let own = own_database(context);
    let elsewhere = || {
        format!(
            "only the database itself may be used (not {:?})",
            context.database_name.unwrap_or("")
        )
    };
    match context.action {
        Select | Recursive => Ok(()),
        Read { table_name, .. } => {
            if let Some(pragma) = table_name.strip_prefix("pragma_") {
                return pragma_allowed(pragma, None);
            }
            if own { Ok(()) } else { Err(elsewhere()) }
        }
        Insert { .. }
        | Update { .. }
        | Delete { .. }
        | CreateTable { .. }
        | CreateTempTable { .. }
        | CreateIndex { .. }
        | CreateTempIndex { .. }
        | CreateView { .. }
        | CreateTempView { .. }
        | CreateTrigger { .. }
        | CreateTempTrigger { .. }
        | DropTable { .. }
        | DropTempTable { .. }
        | DropIndex { .. }
        | DropTempIndex { .. }
        | DropView { .. }
        | DropTempView { .. }
        | DropTrigger { .. }
        | DropTempTrigger { .. }
        | AlterTable { .. }
        | Reindex { .. }
        | Analyze { .. } => {
            if own {
                Ok(())
            } else {
                Err(elsewhere())
            }
        }
        Function { function_name } => {
            let name = function_name.to_ascii_lowercase();
            if FUNCTIONS.contains(&name.as_str()) || TABLE_FUNCTIONS.contains(&name.as_str()) {
                Ok(())
            } else {
                Err(format!("the function {function_name}() is not available"))
            }
        }
        CreateVtable { module_name, .. } | DropVtable { module_name, .. } => {
            if MODULES.contains(&module_name.to_ascii_lowercase().as_str()) && own {
                Ok(())
            } else {
                Err(format!(
                    "virtual tables of module {module_name} are not available (allowed: {})",
                    MODULES.join(", ")
                ))
            }
        }
        Pragma {
            pragma_name,
            pragma_value,
        } => pragma_allowed(&pragma_name.to_ascii_lowercase(), pragma_value),
        Transaction { .. } | Savepoint { .. } => {
            if TRUSTED.with(Cell::get) {
                Ok(())
            } else {
                Err(
                    "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT) belongs to the \
                     node: use a data session for a transaction"
                        .into(),
                )
            }
        }
        Attach { .. } => Err("ATTACH is not available: a statement sees only its own \
                              database; VACUUM and VACUUM INTO, which attach a file, are \
                              refused for the same reason"
            .into()),
        Detach { .. } => Err("DETACH is not available".into()),
        _ => Err(format!("{:?} is not available", context.action)),
    }
}

fn pragma_allowed(name: &str, value: Option<&str>) -> std::result::Result<(), String> {
    if PRAGMAS.contains(&name) || (value.is_none() && READ_ONLY_PRAGMAS.contains(&name)) {
        return Ok(());
    }
    if READ_ONLY_PRAGMAS.contains(&name) {
        return Err(format!("PRAGMA {name} may be read but not set"));
    }
    Err(format!(
        "PRAGMA {name} is not available (allowed: {} and, to read, {})",
        PRAGMAS.join(", "),
        READ_ONLY_PRAGMAS.join(", ")
    ))
}

/// What the authorizer last refused on this thread, taken.
pub fn take_refusal() -> Option<String> {
    REFUSED.with(|r| r.borrow_mut().take())
}

/// VM instructions between two checks of the budget: a check is an atomic
/// load and a clock read, so this costs well under 1% of a statement.
const CHECK_EVERY: i32 = 1000;

/// Budgets are enforced on SQLite by its progress handler.
impl Budget {
    /// Runs `work` on `conn` with this budget's progress handler installed;
    /// an interrupted statement's error says why it was stopped.
    pub fn run<T>(&self, conn: &Connection, work: impl FnOnce() -> Result<T>) -> Result<T> {
        if let Some(error) = self.exhausted() {
            return Err(error);
        }
        let watch = self.clone();
        conn.progress_handler(CHECK_EVERY, Some(move || watch.exhausted().is_some()));
        let result = work();
        conn.progress_handler(0, None::<fn() -> bool>);
        result.map_err(|error| self.explain(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use std::time::{Duration, Instant};

    fn sandboxed() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        harden(&conn).unwrap();
        conn
    }

    fn refused(conn: &Connection, sql: &str) -> String {
        let error = conn.execute_batch(sql).expect_err(sql);
        let error = super::super::sql_error(error);
        assert_eq!(error.code, ErrorCode::PermissionDenied, "{sql}: {error:?}");
        error.message
    }

    #[test]
    fn attach_and_vacuum_into_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = sandboxed();
        let target = dir.path().join("other.db");
        let message = refused(
            &conn,
            &format!("ATTACH DATABASE '{}' AS m", target.display()),
        );
        assert!(message.contains("ATTACH"), "{message}");
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        let into = dir.path().join("copy.db");
        let message = refused(&conn, &format!("VACUUM INTO '{}'", into.display()));
        assert!(message.contains("VACUUM INTO"), "{message}");
        assert!(!into.exists(), "VACUUM INTO wrote a file");
        refused(&conn, "VACUUM");
        assert!(!target.exists());
    }

    #[test]
    fn vacuum_is_found_behind_comments() {
        assert_eq!(first_keyword("  -- x\n /* y */vacuum into 'f'"), "vacuum");
        assert_eq!(first_keyword("/* never closed"), "");
        assert_eq!(first_keyword("SELECT 1"), "SELECT");
        let conn = sandboxed();
        for sql in ["VACUUM", " vacuum INTO '/tmp/x'", "/**/VaCuUm"] {
            let error = prepare(&conn, sql).map(|_| ()).unwrap_err();
            assert_eq!(error.code, ErrorCode::PermissionDenied, "{sql}");
        }
        prepare(&conn, "SELECT 'vacuum'").unwrap();
    }

    #[test]
    fn pragmas_outside_the_list_are_refused() {
        let conn = sandboxed();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        conn.query_row("SELECT count(*) FROM pragma_table_info('t')", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap();
        conn.prepare("PRAGMA table_info(t)").unwrap();
        conn.prepare("PRAGMA user_version").unwrap();
        refused(&conn, "PRAGMA user_version = 3");
        refused(&conn, "PRAGMA database_list");
        refused(&conn, "SELECT * FROM pragma_database_list");
        refused(&conn, "PRAGMA writable_schema = 1");
        refused(&conn, "PRAGMA journal_mode = DELETE");
    }

    #[test]
    fn transaction_control_is_the_servers() {
        let conn = sandboxed();
        refused(&conn, "BEGIN");
        refused(&conn, "SAVEPOINT s");
        control(&conn, "BEGIN IMMEDIATE").unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        refused(&conn, "COMMIT");
        control(&conn, "COMMIT").unwrap();
        assert!(conn.is_autocommit());
    }

    #[test]
    fn unlisted_functions_are_refused() {
        let conn = sandboxed();
        let message = refused(&conn, "SELECT load_extension('x')");
        assert!(message.contains("load_extension"), "{message}");
        conn.prepare("SELECT json_extract('{\"a\":1}', '$.a'), upper('x'), count(*) OVER ()")
            .unwrap();
    }

    #[test]
    fn every_builtin_function_is_allowed_or_denied_by_name() {
        let conn = Connection::open_in_memory().unwrap();
        let mut stmt = conn
            .prepare("SELECT DISTINCT name FROM pragma_function_list ORDER BY name")
            .unwrap();
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let unlisted: Vec<&String> = names
            .iter()
            .filter(|n| {
                !FUNCTIONS.contains(&n.as_str())
                    && !DENIED_FUNCTIONS.contains(&n.as_str())
                    && !TABLE_FUNCTIONS.contains(&n.as_str())
            })
            .collect();
        assert!(
            unlisted.is_empty(),
            "decide on these functions: {unlisted:?}"
        );
    }

    #[test]
    fn limits_are_in_force() {
        let conn = sandboxed();
        let deep = format!("SELECT {}1{}", "abs(".repeat(200), ")".repeat(200));
        assert!(conn.prepare(&deep).is_err());
        let error = conn
            .query_row("SELECT length(zeroblob(100000000))", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap_err();
        assert!(error.to_string().contains("too big"), "{error}");
    }

    #[test]
    fn a_budget_stops_a_runaway_statement() {
        let conn = sandboxed();
        let (budget, _stop) = Budget::new(Some(Duration::from_millis(200)), Duration::MAX, 0);
        let started = Instant::now();
        let error = budget
            .run(&conn, || {
                conn.query_row(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) \
                     SELECT count(*) FROM c",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(super::super::sql_error)
            })
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::Timeout, "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(2));

        let (budget, stop) = Budget::new(None, Duration::from_secs(60), 0);
        drop(stop);
        let error = budget.run(&conn, || Ok(())).unwrap_err();
        assert_eq!(error.code, ErrorCode::Cancelled);
    }
}
