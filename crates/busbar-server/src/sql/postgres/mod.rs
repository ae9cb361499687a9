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

mod calls;
mod roles;
mod statements;
pub mod text;
mod values;

use crate::calls::{CallKey, Replay};
use crate::cluster::PgTls;
use crate::error::{Error, Result};
use crate::sessions::Part;
use crate::sql::embedded::procedures::{at_statement, bind_arguments, check_new};
use crate::sql::{
    Arguments, Budget, Database, Description, MaybeBound, On, Procedure, Query, Rows, SqlEngine,
    SqlParam, SqlParams, SqlSummary,
};
use crate::store::{Store, now_ms};
use async_trait::async_trait;
use calls::{
    Ending, SessionCall, first_word, guarded, is_read_only_refusal, refuse_transaction_control,
    sql_error, statement_timeout,
};
use deadpool_postgres::{Object, Pool};
use roles::{Names, Roles};
use statements::{Kept, Sink, bind, prepare, stream};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use tokio_postgres::Client;

/// Role pools one node keeps open; past this the least recently used closes.
const MAX_POOLS: usize = 64;

/// Work on a call's connection, borrowing it.
type Work<'c, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'c>>;

/// What is kept of a keyed call's outcome with its key.
type Keep<T> = fn(&T) -> Vec<u8>;

/// How a call outside a session ended ([`PostgresSql::alone`]).
enum Alone<T> {
    Done(T),
    /// Its key was recorded by an earlier try; this one was rolled back.
    Repeat,
}

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
            return match self.alone(on, budget, None, work).await? {
                Alone::Done(value) => Ok(value),
                Alone::Repeat => Err(Error::internal("a call without a key was a repeat")),
            };
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

    /// [`PostgresSql::run`] for a call that may carry a key (`keyed`): once
    /// `work` succeeds, the key's record goes out with the `COMMIT` and the
    /// reset, in one round trip. A repeat's record aborts the transaction
    /// (so the `COMMIT` rolls its work back) and the first try's outcome,
    /// read back, is the answer.
    async fn run_keyed<T, F>(
        &self,
        on: &On,
        budget: &Budget,
        key: Option<CallKey>,
        work: F,
    ) -> Result<T>
    where
        T: Replay + Send,
        F: for<'c> FnOnce(&'c Client) -> Work<'c, T> + Send,
    {
        let Some(key) = key.filter(|_| on.session.is_none()) else {
            return self.run(on, budget, work).await;
        };
        match self
            .alone(on, budget, Some((&key, crate::calls::kept::<T>)), work)
            .await?
        {
            Alone::Done(value) => Ok(value),
            // This try's work was rolled back: the first outcome answers.
            Alone::Repeat => {
                let client = self.connect(&on.database, budget).await?;
                let first = crate::calls::earlier(&**client, &key).await?;
                first.ok_or_else(|| {
                    Error::unavailable(
                        "an earlier try of this call was recorded, then vanished; retry",
                    )
                })
            }
        }
    }

    /// A call outside a session, on a pooled connection of its own: `BEGIN`
    /// goes out with the work's first statement, in one round trip
    /// (PostgreSQL runs them in order); then the `COMMIT` (or `ROLLBACK`)
    /// and the connection's reset, with `key`'s record (of the outcome as
    /// `kept` encodes it) before them once the work succeeded, in one more.
    /// `Alone::Repeat`: the key was recorded already, so the record aborted
    /// the transaction and that `COMMIT` rolled this try back.
    async fn alone<T, F>(
        &self,
        on: &On,
        budget: &Budget,
        key: Option<(&CallKey, Keep<T>)>,
        work: F,
    ) -> Result<Alone<T>>
    where
        T: Send,
        F: for<'c> FnOnce(&'c Client) -> Work<'c, T> + Send,
    {
        let mut ending = Ending(Some(self.connect(&on.database, budget).await?));
        let client: &Client = ending.0.as_ref().expect("held until dropped");
        let begin = begin(on.database.read_only, budget);
        let result = guarded(client, self.roles.tls(), budget, async {
            let (begun, result) = tokio::join!(client.batch_execute(&begin), work(client));
            begun.map_err(|e| sql_error(&e))?;
            result
        })
        .await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                let (ended, reset) = tokio::join!(
                    client.batch_execute("ROLLBACK"),
                    client.batch_execute(roles::RESET)
                );
                if ended.is_ok() && reset.is_ok() {
                    ending.finished();
                }
                return Err(error);
            }
        };
        use tokio_postgres::types::{ToSql, Type};
        let (kept, now) = (key.map(|(_, kept)| kept(&outcome)), now_ms());
        let record: Option<[(&(dyn ToSql + Sync), Type); 4]> =
            key.zip(kept.as_ref()).map(|((key, _), kept)| {
                [
                    (&key.key as &(dyn ToSql + Sync), Type::TEXT),
                    (&key.request, Type::BYTEA),
                    (kept, Type::BYTEA),
                    (&now, Type::INT8),
                ]
            });
        // Sent in this order: each request goes out when first polled.
        let recording = async {
            match &record {
                Some(record) => Some(
                    client
                        .query_typed("SELECT busbar_calls.record_first($1, $2, $3, $4)", record)
                        .await,
                ),
                None => None,
            }
        };
        let (recorded, ended, reset) = tokio::join!(
            recording,
            client.batch_execute("COMMIT"),
            client.batch_execute(roles::RESET),
        );
        let ended = ended.and(reset).map_err(|e| sql_error(&e));
        if ended.is_ok() {
            ending.finished();
        }
        match recorded {
            None | Some(Ok(_)) => ended.map(|()| Alone::Done(outcome)),
            Some(Err(error))
                if error
                    .code()
                    .is_some_and(|c| c.code() == crate::calls::REPEATED) =>
            {
                ended.map(|()| Alone::Repeat)
            }
            Some(Err(error)) => Err(Error::unavailable(format!(
                "recording the call's idempotency key: {}",
                crate::store::postgres_reason(&error)
            ))),
        }
    }

    /// One statement outside a session in one round trip: `BEGIN`, the
    /// statement, `COMMIT` and the connection's reset go out together,
    /// in that order, and PostgreSQL runs them in order (a failed statement
    /// turns the `COMMIT` into a rollback). With `read_guard` the
    /// transaction is read only, so a statement that would write fails
    /// instead: `Ok(None)`, nothing kept, and nothing went to `sink`'s
    /// caller when `sink` keeps.
    ///
    /// The order on the wire is the order of first polls: tokio-postgres
    /// sends each request when its future is first polled, and the
    /// statement's future (`stream`) does nothing before sending it.
    /// `a_statement_runs_inside_its_own_transaction` checks it.
    async fn run_one(
        &self,
        on: &On,
        budget: &Budget,
        (sql, values): (&str, &[SqlParam]),
        sink: Sink<'_>,
        read_guard: bool,
    ) -> Result<Option<SqlSummary>> {
        let mut ending = Ending(Some(self.connect(&on.database, budget).await?));
        let client: &Client = ending.0.as_ref().expect("held until dropped");
        let begin = begin(on.database.read_only || read_guard, budget);
        let ran = guarded(client, self.roles.tls(), budget, async {
            Ok(tokio::join!(
                client.batch_execute(&begin),
                stream(client, sql, values, sink, budget),
                // A failed statement leaves the transaction aborted, and
                // PostgreSQL answers this COMMIT by rolling it back.
                client.batch_execute("COMMIT"),
                client.batch_execute(roles::RESET),
            ))
        })
        .await;
        let (begun, result, ended, reset) = ran?;
        let ended = begun.and(ended).and(reset).map_err(|e| sql_error(&e));
        if ended.is_ok() {
            ending.finished();
        }
        let summary = match result {
            // A writer's statement met the read guard: it would have written.
            Err(error) if read_guard && is_read_only_refusal(&error) => return Ok(None),
            other => other?,
        };
        ended.map(|()| Some(summary))
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
        // Made already: a keyed create's repeat finishes what a node that
        // died after the resource's commit left undone, and finds the rest
        // done (schema and roles are made in one transaction, so all or none).
        let made = transaction
            .query_opt(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1",
                &[&names.schema],
            )
            .await
            .map_err(|e| sql_error(&e))?;
        if made.is_some() {
            return Ok(());
        }
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

    async fn execute(&self, on: On, query: Query, rows: Rows) -> Result<SqlSummary> {
        let (sql, params, budget) = query.parts();
        text::one_statement(&sql)?;
        refuse_transaction_control(&sql)?;
        let (sql, values) = bind(&sql, &params)?;
        let key = keyed(&on);
        if on.session.is_none() {
            let statement = (sql.as_str(), values.as_slice());
            if key.is_none() {
                let sink = Sink::Send(&rows);
                let summary = self.run_one(&on, &budget, statement, sink, false).await?;
                return summary.ok_or_else(|| Error::internal("a call without a key was guarded"));
            }
            if expected_to_read(&sql) {
                let mut batches = Vec::new();
                let sink = Sink::Keep(&mut batches);
                if let Some(summary) = self.run_one(&on, &budget, statement, sink, true).await? {
                    return Kept { summary, batches }.deliver(&rows).await;
                }
            }
        }
        let budget_in = budget.clone();
        let Some(key) = key else {
            return self
                .run(&on, &budget, move |client| {
                    Box::pin(async move {
                        stream(client, &sql, &values, Sink::Send(&rows), &budget_in).await
                    })
                })
                .await;
        };
        // Recorded whatever the statement changed: one that wrote no row
        // may still have changed something (a sequence's `nextval`).
        let kept = self
            .run_keyed(&on, &budget, Some(key), move |client| {
                Box::pin(async move {
                    let mut batches = Vec::new();
                    let sink = Sink::Keep(&mut batches);
                    let summary = stream(client, &sql, &values, sink, &budget_in).await?;
                    Ok(Kept { summary, batches })
                })
            })
            .await?;
        kept.deliver(&rows).await
    }

    async fn execute_each(&self, on: On, query: Query<Vec<SqlParams>>) -> Result<u64> {
        let (sql, rows, budget) = query.parts();
        text::one_statement(&sql)?;
        refuse_transaction_control(&sql)?;
        let bound = rows
            .iter()
            .map(|params| bind(&sql, params))
            .collect::<Result<Vec<_>>>()?;
        let budget_in = budget.clone();
        let key = keyed(&on);
        self.run_keyed(&on, &budget, key, move |client| {
            Box::pin(async move {
                let mut changed = 0;
                for (sql, values) in &bound {
                    changed += stream(client, sql, values, Sink::None, &budget_in)
                        .await?
                        .rows_affected;
                }
                Ok(changed)
            })
        })
        .await
    }

    async fn describe(&self, db: &Database, query: MaybeBound) -> Result<Description> {
        let (sql, params, budget) = query.parts();
        text::one_statement(&sql)?;
        let (numbered, names) = text::number_names(&sql)?;
        let values = match &params {
            Some(params) => bind(&sql, params)?.1,
            None => Vec::new(),
        };
        let on = On::from(db.clone());
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
        let read_only = reads_by_first_word(&sql);
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

    async fn create_procedure(&self, on: On, given: Procedure, replace: bool) -> Result<Procedure> {
        check_new(&given)?;
        for statement in text::statements(&given.body)? {
            refuse_transaction_control(statement)?;
        }
        let (budget, _stop) = procedure_budget();
        let created_ms = now_ms();
        let params = serde_json::to_string(&given.params).expect("strings serialize");
        let saved = Procedure {
            created_ms,
            ..given
        };
        // With `replace` the call sets the procedure: sent again as it is,
        // it needs no key.
        let key = keyed(&on).filter(|_| !replace);
        let asking = key.clone();
        self.run_keyed(&on, &budget, key, move |client| {
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
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING"
                };
                let inserted = client
                    .execute(sql, &[&saved.name, &params, &saved.body, &saved.created_ms])
                    .await
                    .map_err(|e| sql_error(&e))?;
                if inserted == 0 {
                    // The name is taken: by this call's own first try (this
                    // is a repeat of its key: its record, sent next, finds
                    // the key and the first outcome answers), or by someone
                    // else.
                    if let Some(key) = &asking
                        && let Some(first) = crate::calls::earlier(client, key).await?
                    {
                        return Ok(first);
                    }
                    return Err(Error::already_exists(format!(
                        "a procedure named {} exists; replace it or drop it first",
                        saved.name
                    )));
                }
                Ok(saved)
            })
        })
        .await
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

    async fn run_procedure(&self, on: On, run: Query<Arguments>, rows: Rows) -> Result<SqlSummary> {
        let (name, args, budget) = run.parts();
        let budget_in = budget.clone();
        let key = keyed(&on);
        let keeping = key.is_some();
        let sink = rows.clone();
        let kept = self
            .run_keyed(&on, &budget, key, move |client| {
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
                        let sink = match (last, keeping) {
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
                    Ok(Kept { summary, batches })
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

/// What opens a call's own transaction: read only for a caller holding
/// read (and for a writer's statement expected only to read), with the
/// call's deadline as PostgreSQL's statement timeout.
fn begin(read_only: bool, budget: &Budget) -> String {
    let mode = if read_only { " READ ONLY" } else { "" };
    format!("BEGIN{mode}; {}", statement_timeout(budget))
}

/// Whether a statement is expected only to read, by its first word: such a
/// keyed call goes out in one round trip in a read-only transaction (and
/// runs again, keyed, if it would have written after all: a data-modifying
/// `WITH`, a function that writes, `nextval`, `FOR UPDATE`); any other goes
/// the keyed way at once. A read-only transaction cannot be made writable
/// once a query has run in it, and one statement is all a call holds.
fn expected_to_read(sql: &str) -> bool {
    reads_by_first_word(sql) || first_word(sql) == "with"
}

/// Statements whose first word says they read (a `WITH` may still write).
fn reads_by_first_word(sql: &str) -> bool {
    matches!(
        first_word(sql).as_str(),
        "select" | "values" | "table" | "show" | "explain"
    )
}
