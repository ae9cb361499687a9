//! The life of one call on a PostgreSQL connection: its budget enforced
//! from outside (a cancel request at the deadline or when its caller goes
//! away), how its connection ends (reset and pooled, or closed), and what
//! PostgreSQL's errors mean to the caller.

use crate::cluster::PgTls;
use crate::error::{Error, ErrorCode, Result};
use crate::sessions::DataSession;
use crate::sql::Budget;
use deadpool_postgres::Object;
use std::future::Future;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// A call's pooled connection: back to the pool once the call ended it
/// cleanly (committed or rolled back, and reset), otherwise closed.
pub(super) struct Ending(pub Option<Object>);

impl Ending {
    pub(super) fn finished(&mut self) {
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
pub(super) struct SessionCall<'s>(pub Option<&'s std::sync::Arc<DataSession>>);

impl SessionCall<'_> {
    pub(super) fn done(mut self) {
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

pub(super) fn statement_timeout(budget: &Budget) -> String {
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
pub(super) async fn guarded<T>(
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

/// How a statement refused by a read-only transaction is told to its
/// caller (SQLSTATE 25006).
const READ_ONLY_REFUSAL: &str = "the caller holds only read on this database";

/// Whether `error` is [`sql_error`]'s answer to a statement that a
/// read-only transaction refused (one that would have written).
pub(super) fn is_read_only_refusal(error: &Error) -> bool {
    error.code == ErrorCode::PermissionDenied && error.message.ends_with(READ_ONLY_REFUSAL)
}

/// A PostgreSQL error as the caller should see it.
pub(super) fn sql_error(error: &tokio_postgres::Error) -> Error {
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
            return Error::permission_denied(format!("{message}: {READ_ONLY_REFUSAL}"));
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
pub(super) fn refuse_transaction_control(sql: &str) -> Result<()> {
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
pub(super) fn first_word(sql: &str) -> String {
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
}
