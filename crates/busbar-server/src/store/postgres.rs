//! The cluster's `Store`: metadata in PostgreSQL, shared by every node.
//! Each method is one transaction on a pooled connection; PostgreSQL makes
//! a commit durable before it returns, so an acknowledged write survives the
//! loss of any node. Uniqueness (names, paths, live token names) is kept by
//! PostgreSQL's constraints, so two nodes racing to create the same thing
//! give one success and one ALREADY_EXISTS.

use super::*;
use crate::calls::CallKey;
use crate::error::{Error, ErrorCode};
use crate::resources::paths;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

/// Tables in their own schema, so a database shared with other programs
/// keeps them apart. Created under an advisory lock: nodes starting at the
/// same moment would otherwise race on `CREATE ... IF NOT EXISTS`.
const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS busbar;
CREATE TABLE IF NOT EXISTS busbar.secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS busbar.identities (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    kind          INTEGER NOT NULL,
    password_hash TEXT,
    public_key    BYTEA,
    created_ms    BIGINT NOT NULL,
    revoked       BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS busbar.group_members (
    grp      TEXT NOT NULL,
    identity TEXT NOT NULL,
    PRIMARY KEY (grp, identity)
);
CREATE TABLE IF NOT EXISTS busbar.tokens (
    id          TEXT PRIMARY KEY,
    identity_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    hash        BYTEA NOT NULL UNIQUE,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    revoked     BOOLEAN NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_live_name ON busbar.tokens (identity_id, name) WHERE NOT revoked;
CREATE TABLE IF NOT EXISTS busbar.certificates (
    fingerprint BYTEA PRIMARY KEY,
    identity_id TEXT NOT NULL,
    serial      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    revoked     BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS certificates_identity ON busbar.certificates (identity_id);
CREATE TABLE IF NOT EXISTS busbar.resources (
    id         TEXT PRIMARY KEY,
    path       TEXT COLLATE \"C\" NOT NULL UNIQUE,
    kind       INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS busbar.nodes (
    id          TEXT PRIMARY KEY,
    address     TEXT NOT NULL,
    connections BIGINT NOT NULL,
    started_ms  BIGINT NOT NULL,
    seen_ms     BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS busbar.grants (
    path      TEXT NOT NULL,
    principal TEXT NOT NULL,
    rights    INTEGER NOT NULL,
    PRIMARY KEY (path, principal)
);
-- Locks the nodes take on each other (see `row_lock`): rows, not advisory
-- locks, which any PostgreSQL role could take too.
CREATE TABLE IF NOT EXISTS busbar.locks (
    name TEXT PRIMARY KEY
);
-- Idempotency keys: the first outcome of each keyed write (crate::calls).
CREATE TABLE IF NOT EXISTS busbar.calls (
    scope      TEXT NOT NULL,
    key        TEXT NOT NULL,
    request    BYTEA NOT NULL,
    outcome    BYTEA NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS calls_created ON busbar.calls (created_ms);
-- Recording goes through this function only: it runs as the node's user
-- (SECURITY DEFINER), so the SQL databases' roles record their writes'
-- keys in the same transaction as the writes without reaching the table;
-- the scope is the login role (session_user, which user SQL cannot
-- change), so one database cannot see or take another's keys.
CREATE SCHEMA IF NOT EXISTS busbar_calls;
CREATE OR REPLACE FUNCTION busbar_calls.record(
    call_key TEXT, call_request BYTEA, call_outcome BYTEA, at_ms BIGINT
) RETURNS TABLE (fresh BOOLEAN, request BYTEA, outcome BYTEA)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- Recorded even when the call wrote no row: a sequence's nextval
    -- changes what a repeat would get without taking a transaction id.
    INSERT INTO busbar.calls (scope, key, request, outcome, created_ms)
    VALUES (session_user, call_key, call_request, call_outcome, at_ms)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        RETURN QUERY SELECT true, call_request, NULL::BYTEA;
    ELSE
        RETURN QUERY SELECT false, c.request, c.outcome FROM busbar.calls c
            WHERE c.scope = session_user AND c.key = call_key;
    END IF;
END
$$;
-- `record` for a call that sends its COMMIT in the same round trip: a
-- repeat (the key is there already) aborts the transaction instead of
-- answering, so that COMMIT rolls the repeat's work back; the node then
-- reads the first outcome with `earlier`.
CREATE OR REPLACE FUNCTION busbar_calls.record_first(
    call_key TEXT, call_request BYTEA, call_outcome BYTEA, at_ms BIGINT
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO busbar.calls (scope, key, request, outcome, created_ms)
    VALUES (session_user, call_key, call_request, call_outcome, at_ms)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'an earlier try of this call was applied' USING ERRCODE = 'BBK01';
    END IF;
END
$$;
-- The first outcome recorded under a key, for a repeat that cannot get as
-- far as recording (its own change was refused: a name taken by the first
-- try, a full queue); the same scope as `record`.
CREATE OR REPLACE FUNCTION busbar_calls.earlier(call_key TEXT)
RETURNS TABLE (request BYTEA, outcome BYTEA)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.request, c.outcome FROM busbar.calls c
    WHERE c.scope = session_user AND c.key = call_key
$$;
GRANT USAGE ON SCHEMA busbar_calls TO PUBLIC;
";

/// The scope of keyed token creations in `busbar.calls` (SQL's keys are
/// scoped to their database's login role, which cannot be this).
const KEYED_TOKENS: &str = "busbar: tokens";

/// The scope of keyed changes to the resource tree in `busbar.calls`.
const KEYED_METADATA: &str = "busbar: metadata";

fn insert_token() -> String {
    format!("INSERT INTO busbar.tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, false)")
}

/// A new token's values, in [`insert_token`]'s order.
fn token_values(token: &TokenRecord) -> [&(dyn tokio_postgres::types::ToSql + Sync); 6] {
    [
        &token.id,
        &token.identity_id,
        &token.name,
        &token.hash,
        &token.created_ms,
        &token.expires_ms,
    ]
}

fn token_exists(name: &str) -> Error {
    Error::already_exists(format!(
        "a token named {name} already exists; revoke it or pick another name"
    ))
}

/// Any number that no other program's advisory lock on the same database
/// is likely to use ("busbar" in ASCII).
pub(crate) const SCHEMA_LOCK: i64 = 0x6275_7362_6172;

/// Connections one node keeps to PostgreSQL.
const POOL_SIZE: usize = 16;

pub struct PostgresStore {
    pool: Pool,
}

impl From<tokio_postgres::Error> for Error {
    fn from(error: tokio_postgres::Error) -> Self {
        let Some(db) = error.as_db_error() else {
            // No answer from the server: connection lost, refused, timed out.
            return Error {
                code: ErrorCode::Unavailable,
                message: format!("the metadata store (PostgreSQL) cannot be reached: {error}"),
            };
        };
        let code = match *db.code() {
            SqlState::UNIQUE_VIOLATION => ErrorCode::AlreadyExists,
            SqlState::T_R_SERIALIZATION_FAILURE | SqlState::T_R_DEADLOCK_DETECTED => {
                ErrorCode::Conflict
            }
            _ => ErrorCode::Internal,
        };
        Error {
            code,
            message: format!("metadata store: {}", db.message()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(error) => error.into(),
            other => Error {
                code: ErrorCode::Unavailable,
                message: format!("the metadata store (PostgreSQL) cannot be reached: {other}"),
            },
        }
    }
}

/// What PostgreSQL said, or why it could not be reached: the message of an
/// error for a person.
pub fn postgres_reason(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => format!("PostgreSQL cannot be reached: {error}"),
    }
}

/// Holds the lock `name` until the end of `tx`: a row of `busbar.locks`,
/// which only the nodes' own user can reach. (PostgreSQL's advisory locks
/// have no owner: user SQL on a cluster database could take the same key
/// and hold the nodes up.)
pub(crate) async fn row_lock(tx: &deadpool_postgres::Transaction<'_>, name: &str) -> Result<()> {
    tx.execute(
        &cached(
            tx,
            "INSERT INTO busbar.locks (name) VALUES ($1) \
             ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name",
        )
        .await?,
        &[&name],
    )
    .await?;
    Ok(())
}

/// Runs `ddl` (statements that make tables when missing) in one
/// transaction under the cluster's schema lock, so nodes starting at once
/// do not race to make the same table.
pub(crate) async fn ensure_schema(pool: &Pool, ddl: &str) -> Result<()> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        &cached(&tx, "SELECT pg_advisory_xact_lock($1)").await?,
        &[&SCHEMA_LOCK],
    )
    .await?;
    tx.batch_execute(ddl).await?;
    tx.commit().await?;
    Ok(())
}

impl PostgresStore {
    /// Connects to `config` (its TLS already chosen by `tls`), creates the
    /// schema when missing and the root folders "/" and "/home".
    pub async fn open(config: tokio_postgres::Config, tls: crate::cluster::PgTls) -> Result<Self> {
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                // A connection PostgreSQL closed (restart, failover) is
                // found out before a call gets it, not by the call.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::invalid_argument(format!("bad store settings: {e}")))?;
        let mut roots = String::new();
        for root in ["/", "/home"] {
            roots += &format!(
                "INSERT INTO busbar.resources (id, path, kind, owner, created_ms) \
                 VALUES ('{}', '{root}', {}, '', {}) ON CONFLICT (path) DO NOTHING;\n",
                new_id(),
                ResourceKind::Folder as i32,
                now_ms()
            );
        }
        ensure_schema(&pool, &format!("{SCHEMA}{roots}")).await?;
        Ok(PostgresStore { pool })
    }

    /// The pool, for the cluster's other tables in the same database.
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }

    /// Runs `change` in a transaction of its own; with `key`, one that also
    /// records the key with its outcome. The key is claimed first: a repeat
    /// whose first try is still open waits for it, and one whose first try
    /// committed answers with the first outcome and changes nothing. A
    /// change that fails records nothing. `true` with the outcome of a
    /// first try, `false` with a repeat's.
    async fn keyed<T, F>(&self, key: Option<&CallKey>, change: F) -> Result<(T, bool)>
    where
        T: crate::calls::Replay + Send,
        F: for<'t> FnOnce(
                &'t deadpool_postgres::Transaction<'t>,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<T>> + Send + 't>,
            > + Send,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(key) = key
            && let Some(first) = claim(&tx, KEYED_METADATA, key).await?
        {
            return Ok((T::decode(&first)?, false));
        }
        let outcome = change(&tx).await?;
        if let Some(key) = key {
            record_outcome(&tx, KEYED_METADATA, key, &outcome.encode()).await?;
        }
        tx.commit().await?;
        Ok((outcome, true))
    }

    /// The row `sql` finds with `params`, if any.
    async fn one<T>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        read: fn(&Row) -> T,
    ) -> Result<Option<T>> {
        let client = self.client().await?;
        let statement = cached(&client, sql).await?;
        Ok(client
            .query_opt(&statement, params)
            .await?
            .as_ref()
            .map(read))
    }

    /// Every row `sql` finds with `params`, in its order.
    async fn all<T>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        read: fn(&Row) -> T,
    ) -> Result<Vec<T>> {
        let client = self.client().await?;
        let statement = cached(&client, sql).await?;
        Ok(client
            .query(&statement, params)
            .await?
            .iter()
            .map(read)
            .collect())
    }

    /// Rows `sql` changed.
    async fn change(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        let client = self.client().await?;
        let statement = cached(&client, sql).await?;
        Ok(client.execute(&statement, params).await?)
    }
}

/// `sql` through the pooled connection's statement cache: parsed once per
/// connection instead of on every call (which costs a round trip each).
pub(crate) async fn cached(
    db: &impl GenericClient,
    sql: &str,
) -> Result<tokio_postgres::Statement> {
    Ok(db.prepare_cached(sql).await?)
}

/// Runs `sql`, prepared once per connection, with `params`: the rows it
/// changed.
pub(crate) async fn execute_cached(
    db: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64> {
    Ok(db.execute(&cached(db, sql).await?, params).await?)
}

fn identity_row(row: &Row) -> IdentityRecord {
    IdentityRecord {
        id: row.get(0),
        name: row.get(1),
        kind: IdentityKind::try_from(row.get::<_, i32>(2)).unwrap_or(IdentityKind::User),
        password_hash: row.get(3),
        public_key: row.get(4),
        created_ms: row.get(5),
        revoked: row.get(6),
    }
}
const IDENTITY_COLUMNS: &str = "id, name, kind, password_hash, public_key, created_ms, revoked";

fn token_row(row: &Row) -> TokenRecord {
    TokenRecord {
        id: row.get(0),
        identity_id: row.get(1),
        name: row.get(2),
        hash: row.get(3),
        created_ms: row.get(4),
        expires_ms: row.get(5),
        revoked: row.get(6),
    }
}
const TOKEN_COLUMNS: &str = "id, identity_id, name, hash, created_ms, expires_ms, revoked";

fn certificate_row(row: &Row) -> CertificateRecord {
    CertificateRecord {
        fingerprint: row.get(0),
        identity_id: row.get(1),
        serial: row.get(2),
        created_ms: row.get(3),
        expires_ms: row.get(4),
        revoked: row.get(5),
    }
}
const CERTIFICATE_COLUMNS: &str =
    "fingerprint, identity_id, serial, created_ms, expires_ms, revoked";

fn resource_row(row: &Row) -> ResourceRecord {
    ResourceRecord {
        id: row.get(0),
        path: row.get(1),
        kind: known(row.get(2)).unwrap_or(ResourceKind::Folder),
        owner: row.get(3),
        created_ms: row.get(4),
    }
}
const RESOURCE_COLUMNS: &str = "id, path, kind, owner, created_ms";

async fn get_resource(db: &impl GenericClient, path: &str) -> Result<Option<ResourceRecord>> {
    let sql = format!("SELECT {RESOURCE_COLUMNS} FROM busbar.resources WHERE path = $1");
    Ok(db
        .query_opt(&cached(db, &sql).await?, &[&path])
        .await?
        .as_ref()
        .map(resource_row))
}

/// Descendants of `path` (not `path` itself), ordered by path: a range scan
/// on the unique index (the column sorts bytewise, "C"), as in the embedded
/// store; `FOR UPDATE` holds them against a concurrent move or delete.
async fn descendants(
    db: &impl GenericClient,
    path: &str,
    lock: bool,
) -> Result<Vec<ResourceRecord>> {
    let (low, high) = if path == "/" {
        ("/".to_string(), "0".to_string())
    } else {
        (format!("{path}/"), format!("{path}0"))
    };
    let sql = format!(
        "SELECT {RESOURCE_COLUMNS} FROM busbar.resources WHERE path > $1 AND path < $2 \
         ORDER BY path{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(db
        .query(&cached(db, &sql).await?, &[&low, &high])
        .await?
        .iter()
        .map(resource_row)
        .collect())
}

/// Creates `path` whose parent must exist as a folder, or with `parents`
/// creates missing ancestors as folders (an ancestor another node creates
/// at the same moment is taken as found).
async fn create_resource_in(
    db: &impl GenericClient,
    path: &str,
    kind: ResourceKind,
    owner: &str,
    parents: bool,
) -> Result<ResourceRecord> {
    let mut missing = Vec::new();
    let mut at = path;
    loop {
        let parent = paths::parent(at).ok_or_else(|| Error::already_exists("/ already exists"))?;
        if tree::check_parent(parent, get_resource(db, parent).await?.as_ref(), parents)? {
            break;
        }
        missing.push(parent.to_string());
        at = parent;
    }
    let insert = "INSERT INTO busbar.resources (id, path, kind, owner, created_ms) \
                  VALUES ($1, $2, $3, $4, $5) ON CONFLICT (path) DO NOTHING";
    for folder in missing.iter().rev() {
        let folder_kind = ResourceKind::Folder as i32;
        db.execute(
            &cached(db, insert).await?,
            &[&new_id(), folder, &folder_kind, &owner, &now_ms()],
        )
        .await?;
    }
    let record = ResourceRecord::new(path, kind, owner);
    let inserted = db
        .execute(
            &cached(db, insert).await?,
            &[
                &record.id,
                &record.path,
                &(kind as i32),
                &record.owner,
                &record.created_ms,
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(Error::already_exists(format!("{path} already exists")));
    }
    Ok(record)
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn secret(&self, name: &str, make: fn() -> Vec<u8>) -> Result<Vec<u8>> {
        // Whoever inserts first wins; every node then reads the same value.
        self.change(
            "INSERT INTO busbar.secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &make()],
        )
        .await?;
        self.one(
            "SELECT value FROM busbar.secrets WHERE name = $1",
            &[&name],
            |row| row.get(0),
        )
        .await?
        .ok_or_else(|| Error::internal(format!("secret {name} vanished after its insert")))
    }

    async fn create_identity(&self, new: NewIdentity) -> Result<IdentityRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let record = create_identity_in(&tx, &new).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn create_identity_keyed(
        &self,
        new: NewIdentity,
        key: &CallKey,
    ) -> Result<IdentityRecord> {
        let made = self.keyed(Some(key), move |tx| {
            Box::pin(async move { create_identity_in(tx, &new).await })
        });
        Ok(made.await?.0)
    }

    async fn identity_by_name(&self, name: &str) -> Result<Option<IdentityRecord>> {
        let sql = format!("SELECT {IDENTITY_COLUMNS} FROM busbar.identities WHERE name = $1");
        self.one(&sql, &[&name], identity_row).await
    }

    async fn identity_by_id(&self, id: &str) -> Result<Option<IdentityRecord>> {
        let sql = format!("SELECT {IDENTITY_COLUMNS} FROM busbar.identities WHERE id = $1");
        self.one(&sql, &[&id], identity_row).await
    }

    async fn list_identities(&self) -> Result<Vec<IdentityRecord>> {
        let sql = format!("SELECT {IDENTITY_COLUMNS} FROM busbar.identities ORDER BY name");
        self.all(&sql, &[], identity_row).await
    }

    async fn set_password_hash(&self, name: &str, hash: &str) -> Result<()> {
        let changed = self
            .change(
                "UPDATE busbar.identities SET password_hash = $2 \
                 WHERE name = $1 AND kind = $3 AND NOT revoked",
                &[&name, &hash, &(IdentityKind::User as i32)],
            )
            .await?;
        if changed == 0 {
            return Err(Error::not_found(format!("no active user named {name}")));
        }
        Ok(())
    }

    async fn revoke_identity(&self, name: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id: Option<String> = tx
            .query_opt(
                &cached(
                    &tx,
                    "UPDATE busbar.identities SET revoked = true WHERE name = $1 RETURNING id",
                )
                .await?,
                &[&name],
            )
            .await?
            .map(|row| row.get(0));
        let Some(id) = id else {
            return Err(Error::not_found(format!("no identity named {name}")));
        };
        for table in ["tokens", "certificates"] {
            tx.execute(
                &format!("UPDATE busbar.{table} SET revoked = true WHERE identity_id = $1"),
                &[&id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn add_group_member(&self, group: &str, identity: &str) -> Result<()> {
        self.change(
            "INSERT INTO busbar.group_members (grp, identity) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&group, &identity],
        )
        .await?;
        Ok(())
    }

    async fn remove_group_member(&self, group: &str, identity: &str) -> Result<bool> {
        let sql = "DELETE FROM busbar.group_members WHERE grp = $1 AND identity = $2";
        Ok(self.change(sql, &[&group, &identity]).await? > 0)
    }

    async fn groups_of(&self, identity: &str) -> Result<Vec<String>> {
        let sql = "SELECT grp FROM busbar.group_members WHERE identity = $1 ORDER BY grp";
        self.all(sql, &[&identity], |row| row.get(0)).await
    }

    async fn create_token(&self, token: TokenRecord) -> Result<()> {
        match self.change(&insert_token(), &token_values(&token)).await {
            Err(error) if error.code == ErrorCode::AlreadyExists => Err(token_exists(&token.name)),
            other => other.map(drop),
        }
    }

    async fn create_token_keyed(&self, token: TokenRecord, key: &CallKey) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let replaced = match claim(&tx, KEYED_TOKENS, key).await? {
            // A repeat: the token its earlier try made goes.
            Some(earlier) => {
                let earlier = String::from_utf8(earlier).unwrap_or_default();
                tx.execute(
                    &cached(
                        &tx,
                        "UPDATE busbar.tokens SET revoked = true \
                         WHERE id = $1 AND identity_id = $2 AND NOT revoked",
                    )
                    .await?,
                    &[&earlier, &token.identity_id],
                )
                .await?
                    > 0
            }
            None => false,
        };
        record_outcome(&tx, KEYED_TOKENS, key, token.id.as_bytes()).await?;
        let inserted = tx
            .execute(&cached(&tx, &insert_token()).await?, &token_values(&token))
            .await;
        match inserted.map_err(Error::from) {
            Err(error) if error.code == ErrorCode::AlreadyExists => {
                return Err(token_exists(&token.name));
            }
            other => other?,
        };
        tx.commit().await?;
        Ok(replaced)
    }

    async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM busbar.tokens WHERE hash = $1");
        self.one(&sql, &[&hash], token_row).await
    }

    async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM busbar.tokens WHERE id = $1");
        self.one(&sql, &[&id], token_row).await
    }

    async fn list_tokens(&self, identity_id: &str) -> Result<Vec<TokenRecord>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM busbar.tokens WHERE identity_id = $1 ORDER BY created_ms"
        );
        self.all(&sql, &[&identity_id], token_row).await
    }

    async fn revoke_token(&self, identity_id: &str, name: &str) -> Result<()> {
        let changed = self
            .change(
                "UPDATE busbar.tokens SET revoked = true \
                 WHERE identity_id = $1 AND name = $2 AND NOT revoked",
                &[&identity_id, &name],
            )
            .await?;
        if changed == 0 {
            return Err(Error::not_found(format!("no live token named {name}")));
        }
        Ok(())
    }

    async fn create_certificate(&self, certificate: CertificateRecord) -> Result<()> {
        create_certificate_in(&self.client().await?, &certificate).await
    }

    async fn record_certificate(
        &self,
        holder: CertificateHolder,
        certificate: CertificateRecord,
        pem: String,
        key: Option<&CallKey>,
    ) -> Result<(IssuedCertificate, bool)> {
        self.keyed(key, move |tx| {
            Box::pin(async move {
                let identity = match holder {
                    CertificateHolder::Existing(identity) => identity,
                    CertificateHolder::New(new) => create_identity_in(tx, &new).await?,
                };
                let certificate = CertificateRecord {
                    identity_id: identity.id.clone(),
                    ..certificate
                };
                create_certificate_in(tx, &certificate).await?;
                Ok(IssuedCertificate {
                    identity,
                    certificate,
                    pem,
                })
            })
        })
        .await
    }

    async fn certificate(&self, fingerprint: &[u8]) -> Result<Option<CertificateRecord>> {
        let sql =
            format!("SELECT {CERTIFICATE_COLUMNS} FROM busbar.certificates WHERE fingerprint = $1");
        self.one(&sql, &[&fingerprint], certificate_row).await
    }

    async fn list_certificates(&self, identity_id: &str) -> Result<Vec<CertificateRecord>> {
        let sql = format!(
            "SELECT {CERTIFICATE_COLUMNS} FROM busbar.certificates \
             WHERE identity_id = $1 ORDER BY created_ms"
        );
        self.all(&sql, &[&identity_id], certificate_row).await
    }

    async fn revoke_certificate(&self, fingerprint: &[u8]) -> Result<CertificateRecord> {
        let sql = format!(
            "UPDATE busbar.certificates SET revoked = true WHERE fingerprint = $1 \
             RETURNING {CERTIFICATE_COLUMNS}"
        );
        self.one(&sql, &[&fingerprint], certificate_row)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "no certificate with fingerprint {}; list them with busbar identity certs NAME",
                    hex::encode(fingerprint)
                ))
            })
    }

    async fn revoked_certificates(&self) -> Result<Vec<Vec<u8>>> {
        let sql = "SELECT fingerprint FROM busbar.certificates WHERE revoked AND expires_ms >= $1";
        self.all(sql, &[&now_ms()], |row| row.get(0)).await
    }

    async fn resource(&self, path: &str) -> Result<Option<ResourceRecord>> {
        get_resource(&self.client().await?, path).await
    }

    async fn resource_path(&self, id: &str) -> Result<Option<String>> {
        let sql = "SELECT path FROM busbar.resources WHERE id = $1";
        self.one(sql, &[&id], |row| row.get(0)).await
    }

    async fn create_resource(&self, new: NewResource<'_>) -> Result<ResourceRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let record = create_resource_in(&tx, new.path, new.kind, new.owner, new.parents).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn list_resources(&self, path: &str, recursive: bool) -> Result<Vec<ResourceRecord>> {
        let client = self.client().await?;
        let found = get_resource(&client, path)
            .await?
            .ok_or_else(|| tree::missing(path))?;
        if found.kind != ResourceKind::Folder {
            return Ok(vec![found]);
        }
        let mut all = descendants(&client, path, false).await?;
        if !recursive {
            tree::keep_children(path, &mut all);
        }
        Ok(all)
    }

    async fn delete_resource(&self, path: &str, recursive: bool) -> Result<Vec<ResourceRecord>> {
        tree::check_delete(path, 0, recursive)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let doomed = delete_resource_in(&tx, path, recursive).await?;
        tx.commit().await?;
        Ok(doomed)
    }

    async fn move_resource(&self, from: &str, to: &str) -> Result<ResourceRecord> {
        tree::check_move(from, to)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let moved = move_resource_in(&tx, from, to).await?;
        tx.commit().await?;
        Ok(moved)
    }

    async fn create_resource_keyed(
        &self,
        new: NewResource<'_>,
        key: &CallKey,
    ) -> Result<(ResourceRecord, bool)> {
        let (path, owner) = (new.path.to_string(), new.owner.to_string());
        let (kind, parents) = (new.kind, new.parents);
        self.keyed(Some(key), move |tx| {
            Box::pin(async move { create_resource_in(tx, &path, kind, &owner, parents).await })
        })
        .await
    }

    async fn delete_resource_keyed(
        &self,
        path: &str,
        recursive: bool,
        key: &CallKey,
    ) -> Result<(Vec<ResourceRecord>, bool)> {
        tree::check_delete(path, 0, recursive)?;
        let path = path.to_string();
        self.keyed(Some(key), move |tx| {
            Box::pin(async move { delete_resource_in(tx, &path, recursive).await })
        })
        .await
    }

    async fn move_resource_keyed(
        &self,
        from: &str,
        to: &str,
        key: &CallKey,
    ) -> Result<(ResourceRecord, bool)> {
        tree::check_move(from, to)?;
        let (from, to) = (from.to_string(), to.to_string());
        self.keyed(Some(key), move |tx| {
            Box::pin(async move { move_resource_in(tx, &from, &to).await })
        })
        .await
    }

    async fn earlier_call(&self, key: &CallKey) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        // A claim not yet committed has no outcome to give.
        let sql = "SELECT request, outcome FROM busbar.calls \
                   WHERE scope = $1 AND key = $2 AND outcome <> ''::bytea";
        self.one(sql, &[&KEYED_METADATA, &key.key], |row| {
            (row.get(0), row.get(1))
        })
        .await
    }

    async fn forget_call(&self, key: &CallKey) -> Result<()> {
        self.change(
            "DELETE FROM busbar.calls WHERE scope = $1 AND key = $2",
            &[&KEYED_METADATA, &key.key],
        )
        .await?;
        Ok(())
    }

    async fn set_grant(&self, path: &str, principal: &str, right: Right) -> Result<()> {
        // One statement, so a resource deleted meanwhile leaves no grant behind.
        let changed = self
            .change(
                "INSERT INTO busbar.grants (path, principal, rights) \
                 SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM busbar.resources WHERE path = $1) \
                 ON CONFLICT (path, principal) DO UPDATE SET rights = EXCLUDED.rights",
                &[&path, &principal, &(right as i32)],
            )
            .await?;
        if changed == 0 {
            return Err(tree::missing(path));
        }
        Ok(())
    }

    async fn remove_grant(&self, path: &str, principal: &str) -> Result<bool> {
        let sql = "DELETE FROM busbar.grants WHERE path = $1 AND principal = $2";
        Ok(self.change(sql, &[&path, &principal]).await? > 0)
    }

    async fn grants_on(&self, paths: &[String]) -> Result<Vec<GrantRecord>> {
        // One round trip for all of them, in the order they were asked for.
        let sql = "SELECT g.path, g.principal, g.rights \
                   FROM unnest($1::text[]) WITH ORDINALITY AS asked(path, n) \
                   JOIN busbar.grants g ON g.path = asked.path \
                   ORDER BY asked.n, g.principal";
        self.all(sql, &[&paths], |row| GrantRecord {
            path: row.get(0),
            principal: row.get(1),
            right: known(row.get(2)).unwrap_or(Right::Read),
        })
        .await
    }

    async fn report_node(&self, node: NodeRecord) -> Result<()> {
        self.change(
            "INSERT INTO busbar.nodes (id, address, connections, started_ms, seen_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
             address = EXCLUDED.address, connections = EXCLUDED.connections, seen_ms = EXCLUDED.seen_ms",
            &[
                &node.id,
                &node.address,
                &(node.connections as i64),
                &node.started_ms,
                &node.seen_ms,
            ],
        )
        .await?;
        // Nodes gone for a minute are forgotten by whoever reports next,
        // and so are idempotency keys past their window.
        self.change(
            "DELETE FROM busbar.nodes WHERE seen_ms < $1",
            &[&(node.seen_ms - 60_000)],
        )
        .await?;
        self.change(
            "DELETE FROM busbar.calls WHERE created_ms < $1",
            &[&(node.seen_ms - crate::calls::KEPT_FOR_MS)],
        )
        .await?;
        Ok(())
    }

    async fn nodes(&self, since_ms: i64) -> Result<Vec<NodeRecord>> {
        let sql = "SELECT id, address, connections, started_ms, seen_ms FROM busbar.nodes \
                   WHERE seen_ms >= $1 ORDER BY started_ms, id";
        self.all(sql, &[&since_ms], |row| NodeRecord {
            id: row.get(0),
            address: row.get(1),
            connections: row.get::<_, i64>(2) as u64,
            started_ms: row.get(3),
            seen_ms: row.get(4),
        })
        .await
    }

    async fn forget_node(&self, id: &str) -> Result<()> {
        self.change("DELETE FROM busbar.nodes WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }
}

/// Claims `key` under `scope` in `tx`: `None` when this try is the first
/// (its outcome to be recorded with [`record_outcome`] before `tx`
/// commits), or the first try's outcome. A repeat whose first try is still
/// open waits for it here, and repeats of one key take turns (the row is
/// locked). A key recorded for another request is refused.
async fn claim(tx: &impl GenericClient, scope: &str, key: &CallKey) -> Result<Option<Vec<u8>>> {
    let at = crate::store::now_ms();
    let claimed = tx
        .execute(
            &cached(
                tx,
                "INSERT INTO busbar.calls (scope, key, request, outcome, created_ms) \
                 VALUES ($1, $2, $3, ''::bytea, $4) ON CONFLICT DO NOTHING",
            )
            .await?,
            &[&scope, &key.key, &key.request, &at],
        )
        .await?
        == 1;
    if claimed {
        return Ok(None);
    }
    let row = tx
        .query_one(
            &cached(
                tx,
                "SELECT request, outcome FROM busbar.calls \
                 WHERE scope = $1 AND key = $2 FOR UPDATE",
            )
            .await?,
            &[&scope, &key.key],
        )
        .await?;
    crate::calls::same_request(key, &row.get::<_, Vec<u8>>(0))?;
    Ok(Some(row.get(1)))
}

/// Records the outcome of the call that claimed `key`.
async fn record_outcome(
    tx: &impl GenericClient,
    scope: &str,
    key: &CallKey,
    outcome: &[u8],
) -> Result<()> {
    tx.execute(
        &cached(
            tx,
            "UPDATE busbar.calls SET outcome = $3 WHERE scope = $1 AND key = $2",
        )
        .await?,
        &[&scope, &key.key, &outcome],
    )
    .await?;
    Ok(())
}

/// Makes an identity, its home folder and (for an admin) its grant on `/`,
/// in `tx`.
async fn create_certificate_in(
    db: &impl GenericClient,
    certificate: &CertificateRecord,
) -> Result<()> {
    let sql = format!(
        "INSERT INTO busbar.certificates ({CERTIFICATE_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, false)"
    );
    db.execute(
        &sql,
        &[
            &certificate.fingerprint,
            &certificate.identity_id,
            &certificate.serial,
            &certificate.created_ms,
            &certificate.expires_ms,
        ],
    )
    .await?;
    Ok(())
}

async fn create_identity_in(tx: &impl GenericClient, new: &NewIdentity) -> Result<IdentityRecord> {
    let record = new.record();
    let inserted = tx
        .execute(
            &format!(
                "INSERT INTO busbar.identities ({IDENTITY_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, false) ON CONFLICT (name) DO NOTHING"
            ),
            &[
                &record.id,
                &record.name,
                &(record.kind as i32),
                &record.password_hash,
                &record.public_key,
                &record.created_ms,
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(new.taken());
    }
    let home = format!("/home/{}", record.name);
    if get_resource(tx, &home).await?.is_none() {
        create_resource_in(tx, &home, ResourceKind::Folder, &record.name, true).await?;
    }
    if new.admin {
        tx.execute(
            &cached(
                tx,
                "INSERT INTO busbar.grants (path, principal, rights) VALUES ('/', $1, $2) \
                 ON CONFLICT (path, principal) DO UPDATE SET rights = EXCLUDED.rights",
            )
            .await?,
            &[&record.name, &(Right::Admin as i32)],
        )
        .await?;
    }
    Ok(record)
}

/// Deletes `path` (and, with `recursive`, everything below it) with their
/// grants, in `tx`; the records deleted, deepest first.
async fn delete_resource_in(
    tx: &impl GenericClient,
    path: &str,
    recursive: bool,
) -> Result<Vec<ResourceRecord>> {
    let found = get_resource(tx, path)
        .await?
        .ok_or_else(|| tree::missing(path))?;
    let mut doomed = descendants(tx, path, true).await?;
    tree::check_delete(path, doomed.len(), recursive)?;
    doomed.reverse();
    doomed.push(found);
    for record in &doomed {
        tx.execute(
            &cached(tx, "DELETE FROM busbar.resources WHERE id = $1").await?,
            &[&record.id],
        )
        .await?;
        tx.execute(
            &cached(tx, "DELETE FROM busbar.grants WHERE path = $1").await?,
            &[&record.path],
        )
        .await?;
    }
    Ok(doomed)
}

/// Moves `from` (and everything below it, with their grants) to `to`, in
/// `tx`; the moved record.
async fn move_resource_in(tx: &impl GenericClient, from: &str, to: &str) -> Result<ResourceRecord> {
    let moved_root = get_resource(tx, from)
        .await?
        .ok_or_else(|| tree::missing(from))?;
    if get_resource(tx, to).await?.is_some() {
        return Err(Error::already_exists(format!("{to} already exists")));
    }
    let parent = paths::parent(to).unwrap_or("/");
    tree::check_move_parent(parent, get_resource(tx, parent).await?.as_ref())?;
    let mut moving = descendants(tx, from, true).await?;
    moving.insert(0, moved_root);
    for record in &moving {
        let new_path = tree::moved_path(record, from, to);
        tx.execute(
            &cached(tx, "UPDATE busbar.resources SET path = $2 WHERE id = $1").await?,
            &[&record.id, &new_path],
        )
        .await?;
        tx.execute(
            &cached(tx, "UPDATE busbar.grants SET path = $2 WHERE path = $1").await?,
            &[&record.path, &new_path],
        )
        .await?;
    }
    get_resource(tx, to)
        .await?
        .ok_or_else(|| Error::internal(format!("{to} missing after its move")))
}
