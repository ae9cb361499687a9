//! What every embedded store shares: a data session's transaction on one
//! SQLite file (a database or a series), its own connection inside BEGIN
//! until the session ends; and how a SQLite failure becomes a Busbar error.

use super::sandbox;
use crate::error::{Error, ErrorCode, Result};
use crate::sessions::Transaction;
use rusqlite::Connection;

pub struct SqliteTransaction(Connection);

impl SqliteTransaction {
    /// Begins on `conn`. For a session that may write, IMMEDIATE takes the
    /// writer lock now, so a later write in the session can never fail on a
    /// snapshot another writer moved on.
    pub fn begin(conn: Connection, write: bool) -> Result<Box<dyn Transaction>> {
        sandbox::control(
            &conn,
            if write {
                "BEGIN IMMEDIATE"
            } else {
                "BEGIN DEFERRED"
            },
        )?;
        Ok(Box::new(SqliteTransaction(conn)))
    }

    /// The connection of a transaction this backend began.
    pub fn connection(transaction: &mut dyn Transaction) -> &Connection {
        &transaction
            .as_any()
            .downcast_mut::<SqliteTransaction>()
            .expect("the embedded backend begins every transaction of an embedded node")
            .0
    }
}

impl Transaction for SqliteTransaction {
    fn commit(self: Box<Self>) -> Result<()> {
        sandbox::control(&self.0, "COMMIT").map_err(Error::from)
    }

    fn rollback(self: Box<Self>) {
        let _ = sandbox::control(&self.0, "ROLLBACK");
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// A storage failure of the embedded backend: a lock wait that ran out is
/// CONFLICT (one wording for every one), anything else INTERNAL and logged.
impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(failure, _) = &error
            && matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
        {
            return Error {
                code: ErrorCode::Conflict,
                message: "the data is locked by another writer (an open session holds it until \
                          it commits or rolls back); retry"
                    .into(),
            };
        }
        tracing::error!(%error, "storage failure");
        Error::internal(format!("storage failure: {error}; see the server log"))
    }
}
