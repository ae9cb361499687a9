//! The embedded `Store`: one SQLite file (`meta.db`) in WAL mode with
//! `synchronous = FULL`, so a commit is on disk before a call is acknowledged.
//! Calls run on tokio's blocking pool behind one connection; metadata writes
//! are rare and small, and hot-path reads are cached above the store.

use super::*;
use crate::error::Error;
use crate::resources::paths;
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;
use std::sync::{Arc, Mutex};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS identities (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    kind          INTEGER NOT NULL,
    password_hash TEXT,
    public_key    BLOB,
    created_ms    INTEGER NOT NULL,
    revoked       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS group_members (
    grp      TEXT NOT NULL,
    identity TEXT NOT NULL,
    PRIMARY KEY (grp, identity)
);
CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,
    identity_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    hash        BLOB NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_live_name ON tokens (identity_id, name) WHERE revoked = 0;
CREATE TABLE IF NOT EXISTS certificates (
    fingerprint BLOB PRIMARY KEY,
    identity_id TEXT NOT NULL,
    serial      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS certificates_identity ON certificates (identity_id);
CREATE TABLE IF NOT EXISTS resources (
    id         TEXT PRIMARY KEY,
    path       TEXT NOT NULL UNIQUE,
    kind       INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    path      TEXT NOT NULL,
    principal TEXT NOT NULL,
    rights    INTEGER NOT NULL,
    PRIMARY KEY (path, principal)
);
";

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Only this node uses an embedded store: its report needs no disk.
    nodes: Mutex<Vec<NodeRecord>>,
}

impl SqliteStore {
    /// Opens (creating if needed) `meta.db` in `dir`, with the root folders
    /// "/" and "/home".
    pub fn open(dir: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(dir.join("meta.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        for root in ["/", "/home"] {
            conn.execute(
                "INSERT OR IGNORE INTO resources (id, path, kind, owner, created_ms) VALUES (?1, ?2, ?3, '', ?4)",
                params![new_id(), root, ResourceKind::Folder as i32, now_ms()],
            )?;
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            nodes: Mutex::default(),
        })
    }

    async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        run_locked(&self.conn, work).await
    }

    /// The row `sql` finds with `params`, if any.
    async fn one<T, P>(&self, sql: String, params: P, row: RowReader<T>) -> Result<Option<T>>
    where
        T: Send + 'static,
        P: rusqlite::Params + Send + 'static,
    {
        self.run(move |conn| Ok(conn.query_row(&sql, params, row).optional()?))
            .await
    }

    /// Every row `sql` finds with `params`, in its order.
    async fn all<T, P>(&self, sql: String, params: P, row: RowReader<T>) -> Result<Vec<T>>
    where
        T: Send + 'static,
        P: rusqlite::Params + Send + 'static,
    {
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params, row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

type RowReader<T> = fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>;

/// Runs `work` on the blocking pool with the connection, locked (a
/// poisoned lock still holds a usable connection).
pub(crate) async fn run_locked<T, F>(conn: &Arc<Mutex<Connection>>, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
{
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&mut conn)
    })
    .await?
}

fn identity_row(row: &Row) -> rusqlite::Result<IdentityRecord> {
    Ok(IdentityRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        kind: IdentityKind::try_from(row.get::<_, i32>(2)?).unwrap_or(IdentityKind::User),
        password_hash: row.get(3)?,
        public_key: row.get(4)?,
        created_ms: row.get(5)?,
        revoked: row.get::<_, i64>(6)? != 0,
    })
}
const IDENTITY_COLUMNS: &str = "id, name, kind, password_hash, public_key, created_ms, revoked";

fn token_row(row: &Row) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: row.get(0)?,
        identity_id: row.get(1)?,
        name: row.get(2)?,
        hash: row.get(3)?,
        created_ms: row.get(4)?,
        expires_ms: row.get(5)?,
        revoked: row.get::<_, i64>(6)? != 0,
    })
}
const TOKEN_COLUMNS: &str = "id, identity_id, name, hash, created_ms, expires_ms, revoked";

fn certificate_row(row: &Row) -> rusqlite::Result<CertificateRecord> {
    Ok(CertificateRecord {
        fingerprint: row.get(0)?,
        identity_id: row.get(1)?,
        serial: row.get(2)?,
        created_ms: row.get(3)?,
        expires_ms: row.get(4)?,
        revoked: row.get::<_, i64>(5)? != 0,
    })
}
const CERTIFICATE_COLUMNS: &str =
    "fingerprint, identity_id, serial, created_ms, expires_ms, revoked";

fn resource_row(row: &Row) -> rusqlite::Result<ResourceRecord> {
    Ok(ResourceRecord {
        id: row.get(0)?,
        path: row.get(1)?,
        kind: known(row.get(2)?).unwrap_or(ResourceKind::Folder),
        owner: row.get(3)?,
        created_ms: row.get(4)?,
    })
}
const RESOURCE_COLUMNS: &str = "id, path, kind, owner, created_ms";

fn get_resource(conn: &Connection, path: &str) -> Result<Option<ResourceRecord>> {
    Ok(conn
        .query_row(
            &format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE path = ?1"),
            [path],
            resource_row,
        )
        .optional()?)
}

/// Descendants of `path` (not `path` itself), ordered by path. Uses a range
/// scan on the unique index: every descendant sorts between "<path>/" and
/// "<path>0" ('0' follows '/').
fn descendants(conn: &Connection, path: &str) -> Result<Vec<ResourceRecord>> {
    let (low, high) = if path == "/" {
        ("/".to_string(), "0".to_string())
    } else {
        (format!("{path}/"), format!("{path}0"))
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RESOURCE_COLUMNS} FROM resources WHERE path > ?1 AND path < ?2 ORDER BY path"
    ))?;
    let rows = stmt.query_map(params![low, high], resource_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn insert_resource(
    conn: &Connection,
    path: &str,
    kind: ResourceKind,
    owner: &str,
) -> Result<ResourceRecord> {
    let record = ResourceRecord::new(path, kind, owner);
    conn.execute(
        "INSERT INTO resources (id, path, kind, owner, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            record.id,
            record.path,
            kind as i32,
            record.owner,
            record.created_ms
        ],
    )?;
    Ok(record)
}

/// Creates `path` whose parent must exist as a folder, or with `parents`
/// creates missing ancestors as folders.
fn create_resource_in(
    conn: &Connection,
    path: &str,
    kind: ResourceKind,
    owner: &str,
    parents: bool,
) -> Result<ResourceRecord> {
    if get_resource(conn, path)?.is_some() {
        return Err(Error::already_exists(format!("{path} already exists")));
    }
    let parent = paths::parent(path).ok_or_else(|| Error::already_exists("/ already exists"))?;
    if !tree::check_parent(parent, get_resource(conn, parent)?.as_ref(), parents)? {
        create_resource_in(conn, parent, ResourceKind::Folder, owner, true)?;
    }
    insert_resource(conn, path, kind, owner)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn secret(&self, name: &str, make: fn() -> Vec<u8>) -> Result<Vec<u8>> {
        let name = name.to_string();
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let existing: Option<Vec<u8>> = tx
                .query_row("SELECT value FROM secrets WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()?;
            let value = match existing {
                Some(value) => value,
                None => {
                    let value = make();
                    tx.execute(
                        "INSERT INTO secrets (name, value) VALUES (?1, ?2)",
                        params![name, value],
                    )?;
                    value
                }
            };
            tx.commit()?;
            Ok(value)
        })
        .await
    }

    async fn create_identity(&self, new: NewIdentity) -> Result<IdentityRecord> {
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let exists: bool = tx
                .query_row(
                    "SELECT 1 FROM identities WHERE name = ?1",
                    [&new.name],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if exists {
                return Err(new.taken());
            }
            let record = new.record();
            tx.execute(
                &format!(
                    "INSERT INTO identities ({IDENTITY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)"
                ),
                params![
                    record.id,
                    record.name,
                    record.kind as i32,
                    record.password_hash,
                    record.public_key,
                    record.created_ms
                ],
            )?;
            let home = format!("/home/{}", record.name);
            if get_resource(&tx, &home)?.is_none() {
                create_resource_in(&tx, &home, ResourceKind::Folder, &record.name, true)?;
            }
            if new.admin {
                tx.execute(
                    "INSERT OR REPLACE INTO grants (path, principal, rights) VALUES ('/', ?1, ?2)",
                    params![record.name, Right::Admin as i32],
                )?;
            }
            tx.commit()?;
            Ok(record)
        })
        .await
    }

    async fn identity_by_name(&self, name: &str) -> Result<Option<IdentityRecord>> {
        self.one(
            format!("SELECT {IDENTITY_COLUMNS} FROM identities WHERE name = ?1"),
            [name.to_owned()],
            identity_row,
        )
        .await
    }

    async fn identity_by_id(&self, id: &str) -> Result<Option<IdentityRecord>> {
        self.one(
            format!("SELECT {IDENTITY_COLUMNS} FROM identities WHERE id = ?1"),
            [id.to_owned()],
            identity_row,
        )
        .await
    }

    async fn list_identities(&self) -> Result<Vec<IdentityRecord>> {
        self.all(
            format!("SELECT {IDENTITY_COLUMNS} FROM identities ORDER BY name"),
            [],
            identity_row,
        )
        .await
    }

    async fn set_password_hash(&self, name: &str, hash: &str) -> Result<()> {
        let (name, hash) = (name.to_string(), hash.to_string());
        self.run(move |conn| {
            let changed = conn.execute(
                "UPDATE identities SET password_hash = ?2 WHERE name = ?1 AND kind = ?3 AND revoked = 0",
                params![name, hash, IdentityKind::User as i32],
            )?;
            if changed == 0 {
                return Err(Error::not_found(format!("no active user named {name}")));
            }
            Ok(())
        })
        .await
    }

    async fn revoke_identity(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let id: Option<String> = tx
                .query_row("SELECT id FROM identities WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(id) = id else {
                return Err(Error::not_found(format!("no identity named {name}")));
            };
            tx.execute("UPDATE identities SET revoked = 1 WHERE id = ?1", [&id])?;
            for table in ["tokens", "certificates"] {
                tx.execute(
                    &format!("UPDATE {table} SET revoked = 1 WHERE identity_id = ?1"),
                    [&id],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn add_group_member(&self, group: &str, identity: &str) -> Result<()> {
        let (group, identity) = (group.to_string(), identity.to_string());
        self.run(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO group_members (grp, identity) VALUES (?1, ?2)",
                params![group, identity],
            )?;
            Ok(())
        })
        .await
    }

    async fn remove_group_member(&self, group: &str, identity: &str) -> Result<bool> {
        let (group, identity) = (group.to_string(), identity.to_string());
        self.run(move |conn| {
            Ok(conn.execute(
                "DELETE FROM group_members WHERE grp = ?1 AND identity = ?2",
                params![group, identity],
            )? > 0)
        })
        .await
    }

    async fn groups_of(&self, identity: &str) -> Result<Vec<String>> {
        let identity = identity.to_string();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT grp FROM group_members WHERE identity = ?1 ORDER BY grp")?;
            let rows = stmt.query_map([identity], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .await
    }

    async fn create_token(&self, token: TokenRecord) -> Result<()> {
        self.run(move |conn| {
            let taken: bool = conn
                .query_row(
                    "SELECT 1 FROM tokens WHERE identity_id = ?1 AND name = ?2 AND revoked = 0",
                    params![token.identity_id, token.name],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if taken {
                return Err(Error::already_exists(format!(
                    "a token named {} already exists; revoke it or pick another name",
                    token.name
                )));
            }
            conn.execute(
                &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)"),
                params![
                    token.id,
                    token.identity_id,
                    token.name,
                    token.hash,
                    token.created_ms,
                    token.expires_ms
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRecord>> {
        self.one(
            format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"),
            [hash.to_owned()],
            token_row,
        )
        .await
    }

    async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.one(
            format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
            [id.to_owned()],
            token_row,
        )
        .await
    }

    async fn list_tokens(&self, identity_id: &str) -> Result<Vec<TokenRecord>> {
        self.all(
            format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens WHERE identity_id = ?1 ORDER BY created_ms"
            ),
            [identity_id.to_owned()],
            token_row,
        )
        .await
    }

    async fn revoke_token(&self, identity_id: &str, name: &str) -> Result<()> {
        let (identity_id, name) = (identity_id.to_string(), name.to_string());
        self.run(move |conn| {
            let changed = conn.execute(
                "UPDATE tokens SET revoked = 1 WHERE identity_id = ?1 AND name = ?2 AND revoked = 0",
                params![identity_id, name],
            )?;
            if changed == 0 {
                return Err(Error::not_found(format!("no live token named {name}")));
            }
            Ok(())
        })
        .await
    }

    async fn create_certificate(&self, certificate: CertificateRecord) -> Result<()> {
        self.run(move |conn| {
            conn.execute(
                &format!(
                    "INSERT INTO certificates ({CERTIFICATE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, 0)"
                ),
                params![
                    certificate.fingerprint,
                    certificate.identity_id,
                    certificate.serial,
                    certificate.created_ms,
                    certificate.expires_ms
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn certificate(&self, fingerprint: &[u8]) -> Result<Option<CertificateRecord>> {
        self.one(
            format!("SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE fingerprint = ?1"),
            [fingerprint.to_owned()],
            certificate_row,
        )
        .await
    }

    async fn list_certificates(&self, identity_id: &str) -> Result<Vec<CertificateRecord>> {
        self.all(format!("SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE identity_id = ?1 ORDER BY created_ms"), [identity_id.to_owned()], certificate_row)
            .await
    }

    async fn revoke_certificate(&self, fingerprint: &[u8]) -> Result<CertificateRecord> {
        let fingerprint = fingerprint.to_vec();
        self.run(move |conn| {
            conn.execute(
                "UPDATE certificates SET revoked = 1 WHERE fingerprint = ?1",
                [&fingerprint],
            )?;
            conn.query_row(
                &format!("SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE fingerprint = ?1"),
                [&fingerprint],
                certificate_row,
            )
            .optional()?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "no certificate with fingerprint {}; list them with busbar identity certs NAME",
                    hex::encode(&fingerprint)
                ))
            })
        })
        .await
    }

    async fn revoked_certificates(&self) -> Result<Vec<Vec<u8>>> {
        let now = now_ms();
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT fingerprint FROM certificates WHERE revoked = 1 AND expires_ms >= ?1",
            )?;
            let rows = stmt.query_map([now], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<Vec<u8>>>>()?)
        })
        .await
    }

    async fn resource(&self, path: &str) -> Result<Option<ResourceRecord>> {
        let path = path.to_string();
        self.run(move |conn| get_resource(conn, &path)).await
    }

    async fn resource_path(&self, id: &str) -> Result<Option<String>> {
        let id = id.to_string();
        self.run(move |conn| {
            Ok(conn
                .query_row("SELECT path FROM resources WHERE id = ?1", [&id], |row| {
                    row.get(0)
                })
                .optional()?)
        })
        .await
    }

    async fn create_resource(&self, new: NewResource<'_>) -> Result<ResourceRecord> {
        let (path, owner) = (new.path.to_string(), new.owner.to_string());
        let (kind, parents) = (new.kind, new.parents);
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let record = create_resource_in(&tx, &path, kind, &owner, parents)?;
            tx.commit()?;
            Ok(record)
        })
        .await
    }

    async fn list_resources(&self, path: &str, recursive: bool) -> Result<Vec<ResourceRecord>> {
        let path = path.to_string();
        self.run(move |conn| {
            let found = get_resource(conn, &path)?.ok_or_else(|| tree::missing(&path))?;
            if found.kind != ResourceKind::Folder {
                return Ok(vec![found]);
            }
            let mut all = descendants(conn, &path)?;
            if !recursive {
                tree::keep_children(&path, &mut all);
            }
            Ok(all)
        })
        .await
    }

    async fn delete_resource(&self, path: &str, recursive: bool) -> Result<Vec<ResourceRecord>> {
        let path = path.to_string();
        self.run(move |conn| {
            tree::check_delete(&path, 0, recursive)?;
            let tx = conn.transaction()?;
            let found = get_resource(&tx, &path)?.ok_or_else(|| tree::missing(&path))?;
            let mut doomed = descendants(&tx, &path)?;
            tree::check_delete(&path, doomed.len(), recursive)?;
            doomed.reverse();
            doomed.push(found);
            for record in &doomed {
                tx.execute("DELETE FROM resources WHERE id = ?1", [&record.id])?;
                tx.execute("DELETE FROM grants WHERE path = ?1", [&record.path])?;
            }
            tx.commit()?;
            Ok(doomed)
        })
        .await
    }

    async fn move_resource(&self, from: &str, to: &str) -> Result<ResourceRecord> {
        let (from, to) = (from.to_string(), to.to_string());
        self.run(move |conn| {
            tree::check_move(&from, &to)?;
            let tx = conn.transaction()?;
            if get_resource(&tx, &from)?.is_none() {
                return Err(tree::missing(&from));
            }
            if get_resource(&tx, &to)?.is_some() {
                return Err(Error::already_exists(format!("{to} already exists")));
            }
            let parent = paths::parent(&to).unwrap_or("/");
            tree::check_move_parent(parent, get_resource(&tx, parent)?.as_ref())?;
            let mut moving = descendants(&tx, &from)?;
            moving.insert(0, get_resource(&tx, &from)?.expect("checked above"));
            for record in &moving {
                let new_path = tree::moved_path(record, &from, &to);
                tx.execute(
                    "UPDATE resources SET path = ?2 WHERE id = ?1",
                    params![record.id, new_path],
                )?;
                tx.execute(
                    "UPDATE grants SET path = ?2 WHERE path = ?1",
                    params![record.path, new_path],
                )?;
            }
            let moved = get_resource(&tx, &to)?.expect("just moved");
            tx.commit()?;
            Ok(moved)
        })
        .await
    }

    async fn set_grant(&self, path: &str, principal: &str, right: Right) -> Result<()> {
        let (path, principal) = (path.to_string(), principal.to_string());
        self.run(move |conn| {
            if get_resource(conn, &path)?.is_none() {
                return Err(tree::missing(&path));
            }
            conn.execute(
                "INSERT OR REPLACE INTO grants (path, principal, rights) VALUES (?1, ?2, ?3)",
                params![path, principal, right as i32],
            )?;
            Ok(())
        })
        .await
    }

    async fn remove_grant(&self, path: &str, principal: &str) -> Result<bool> {
        let (path, principal) = (path.to_string(), principal.to_string());
        self.run(move |conn| {
            Ok(conn.execute(
                "DELETE FROM grants WHERE path = ?1 AND principal = ?2",
                params![path, principal],
            )? > 0)
        })
        .await
    }

    async fn grants_on(&self, paths: &[String]) -> Result<Vec<GrantRecord>> {
        let paths = paths.to_vec();
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT path, principal, rights FROM grants WHERE path = ?1 ORDER BY principal",
            )?;
            let mut out = Vec::new();
            for path in &paths {
                let rows = stmt.query_map([path], |r| {
                    Ok(GrantRecord {
                        path: r.get(0)?,
                        principal: r.get(1)?,
                        right: known(r.get(2)?).unwrap_or(Right::Read),
                    })
                })?;
                for row in rows {
                    out.push(row?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn report_node(&self, node: NodeRecord) -> Result<()> {
        let mut nodes = self.node_list();
        nodes.retain(|known| known.id != node.id);
        nodes.push(node);
        Ok(())
    }

    async fn nodes(&self, since_ms: i64) -> Result<Vec<NodeRecord>> {
        let mut nodes = self.node_list().clone();
        nodes.retain(|node| node.seen_ms >= since_ms);
        Ok(nodes)
    }

    async fn forget_node(&self, id: &str) -> Result<()> {
        self.node_list().retain(|node| node.id != id);
        Ok(())
    }
}

impl SqliteStore {
    fn node_list(&self) -> std::sync::MutexGuard<'_, Vec<NodeRecord>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn tree_create_list_move_delete() {
        let (_dir, store) = store();
        store
            .create_resource(NewResource::new("/a/b/c", ResourceKind::Room, "bob").parents(true))
            .await
            .unwrap();
        let err = store
            .create_resource(NewResource::new("/a/b/c/d", ResourceKind::Room, "bob").parents(false))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::FailedPrecondition, "{err}");
        let err = store
            .create_resource(NewResource::new("/x/y", ResourceKind::Room, "bob").parents(false))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        store
            .create_resource(NewResource::new("/ab", ResourceKind::Wire, "bob").parents(false))
            .await
            .unwrap();

        let children: Vec<_> = store
            .list_resources("/a", false)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.path)
            .collect();
        assert_eq!(children, vec!["/a/b"]);
        let all: Vec<_> = store
            .list_resources("/a", true)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.path)
            .collect();
        assert_eq!(all, vec!["/a/b", "/a/b/c"]);

        store
            .set_grant("/a/b", "carol", Right::Write)
            .await
            .unwrap();
        let id = store.resource("/a/b/c").await.unwrap().unwrap().id;
        store.move_resource("/a", "/z").await.unwrap();
        assert_eq!(store.resource("/z/b/c").await.unwrap().unwrap().id, id);
        assert!(store.resource("/a").await.unwrap().is_none());
        let grants = store.grants_on(&["/z/b".to_string()]).await.unwrap();
        assert_eq!(grants.len(), 1);

        let err = store.delete_resource("/z", false).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::FailedPrecondition);
        let deleted = store.delete_resource("/z", true).await.unwrap();
        assert_eq!(
            deleted.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            vec!["/z/b/c", "/z/b", "/z"]
        );
        assert!(
            store
                .grants_on(&["/z/b".to_string()])
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.resource("/ab").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn identity_gets_home_and_tokens_are_unique_while_live() {
        let (_dir, store) = store();
        let bob = store
            .create_identity(NewIdentity {
                name: "bob".into(),
                kind: IdentityKind::User,
                password_hash: Some("h".into()),
                public_key: None,
                admin: false,
            })
            .await
            .unwrap();
        let home = store.resource("/home/bob").await.unwrap().unwrap();
        assert_eq!(home.owner, "bob");
        let token = |name: &str, hash: &[u8]| TokenRecord {
            id: new_id(),
            identity_id: bob.id.clone(),
            name: name.into(),
            hash: hash.to_vec(),
            created_ms: 1,
            expires_ms: 0,
            revoked: false,
        };
        store.create_token(token("ci", b"1")).await.unwrap();
        assert_eq!(
            store
                .create_token(token("ci", b"2"))
                .await
                .unwrap_err()
                .code,
            ErrorCode::AlreadyExists
        );
        store.revoke_token(&bob.id, "ci").await.unwrap();
        store.create_token(token("ci", b"3")).await.unwrap();
        assert!(store.token_by_hash(b"1").await.unwrap().unwrap().revoked);
    }
}
