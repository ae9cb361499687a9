//! A session's transaction on PostgreSQL: one connection, taken from a pool
//! at the session's first use of a database or series and held, with its
//! transaction open, until the session ends. Calls of the session take
//! turns on it (the connection's async lock), so the session's own
//! statements see its uncommitted work and nobody else does.

use super::{DataSession, Part, Transaction};
use crate::error::{Error, Result};
use deadpool_postgres::Object;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Mutex;

/// A session's connection, its transaction open.
pub type Held = Arc<Mutex<Object>>;

pub struct PgTransaction {
    connection: Held,
    /// How it was begun (say, the role and rights it runs with): a later
    /// call of the session that would begin it otherwise is refused.
    label: String,
    runtime: tokio::runtime::Handle,
}

impl PgTransaction {
    /// Wraps `connection`, on which the caller has just begun a transaction.
    pub fn new(connection: Object, label: &str) -> PgTransaction {
        PgTransaction {
            connection: Arc::new(Mutex::new(connection)),
            label: label.to_string(),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl Transaction for PgTransaction {
    fn commit(self: Box<Self>) -> Result<()> {
        // Sessions end on a blocking thread (`DataSessions::end`), where
        // waiting for the runtime is allowed.
        let connection = self.connection.clone();
        self.runtime.block_on(async move {
            let connection = connection.lock().await;
            connection.batch_execute("COMMIT").await.map_err(|error| {
                Error::conflict(format!(
                    "PostgreSQL did not commit the session's transaction, so none of it is kept: {}",
                    crate::store::postgres_reason(&error)
                ))
            })
        })
    }

    fn rollback(self: Box<Self>) {
        // Rolled back off the caller's thread: the caller may be async code
        // or the sweeper, and nothing waits for the answer.
        let connection = self.connection;
        self.runtime.spawn(async move {
            let rolled_back = connection.lock().await.batch_execute("ROLLBACK").await;
            if rolled_back.is_err() {
                // Never pool a connection whose transaction may be open.
                if let Some(connection) = Arc::into_inner(connection) {
                    drop(Object::take(connection.into_inner()));
                }
            }
        });
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The session's connection on `id`, with its transaction open: the one it
/// holds, or a new one from `begin` (which takes a connection and begins
/// it as `label` says). A held one begun under another label is refused.
pub async fn connection<F>(
    session: &DataSession,
    part: Part,
    id: &str,
    label: &str,
    begin: F,
) -> Result<Held>
where
    F: Future<Output = Result<Object>>,
{
    if let Some(held) = held_as(session, part, id, label)? {
        return Ok(held);
    }
    let begun = Box::new(PgTransaction::new(begin.await?, label));
    let mut work = session.work()?;
    let transaction = ours(work.hold(part, id, begun));
    if transaction.label != label {
        return Err(relabelled(&transaction.label, label));
    }
    Ok(transaction.connection.clone())
}

/// The session's connection on `id` if it holds one (its transaction
/// open), without beginning one: a read sees the session's writes there.
pub fn held(session: &DataSession, part: Part, id: &str) -> Result<Option<Held>> {
    let mut work = session.work()?;
    Ok(work.held(part, id).map(|t| ours(t).connection.clone()))
}

fn held_as(session: &DataSession, part: Part, id: &str, label: &str) -> Result<Option<Held>> {
    let mut work = session.work()?;
    match work.held(part, id).map(ours) {
        Some(transaction) if transaction.label != label => {
            Err(relabelled(&transaction.label, label))
        }
        Some(transaction) => Ok(Some(transaction.connection.clone())),
        None => Ok(None),
    }
}

fn relabelled(was: &str, now: &str) -> Error {
    Error::failed_precondition(format!(
        "this session began its transaction here with {was}, and this call has {now}; \
         your rights changed during the session: commit or roll it back and open a new one"
    ))
}

fn ours(transaction: &mut dyn Transaction) -> &mut PgTransaction {
    transaction
        .as_any()
        .downcast_mut::<PgTransaction>()
        .expect("a cluster node's sessions hold only PostgreSQL transactions")
}
