//! Each SQL database of a cluster is a PostgreSQL schema with two login
//! roles of its own: `bb_<id>_w` owns the schema (what a caller with write
//! runs as) and `bb_<id>_r` may only read it (what a caller with read runs
//! as). Neither is a superuser, a member of any other role, or able to
//! create roles or databases, so user SQL reaches its own schema and
//! nothing else: not the node's metadata (schema `busbar`), not another
//! database, not the server's files (`pg_read_file`, `COPY … TO`, `lo_import`
//! need superuser or roles these never get). `SET ROLE`, `RESET ROLE` and
//! `SET SESSION AUTHORIZATION` lead nowhere: the login role is the boundary.
//!
//! Passwords are never stored: each is an HMAC of its role's name under a
//! key kept in the store's secrets (`sql.role-key`), so every node derives
//! the same one; PostgreSQL is given only its SCRAM verifier.

use crate::cluster::PgTls;
use crate::error::{Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Connections one node keeps per role.
const POOL_SIZE: usize = 8;
/// Connections PostgreSQL allows each role, over every node.
const CONNECTION_LIMIT: u32 = 64;

/// What follows every call's COMMIT or ROLLBACK on a pooled connection, in
/// the same round trip (its own message: it cannot run inside a
/// transaction block): whatever user SQL set on the session is undone
/// (settings, cursors, LISTEN, advisory locks, temp tables, prepared
/// statements), so nothing one caller set reaches the next. A connection
/// whose call did not get this far is closed, never pooled (`Ending`).
pub const RESET: &str = "DISCARD ALL";

/// The PostgreSQL names of one database resource.
pub struct Names {
    pub schema: String,
    pub writer: String,
    pub reader: String,
}

impl Names {
    /// Names built from the resource id's hex digits only, so they are
    /// valid unquoted identifiers whatever the id.
    pub fn of(id: &str) -> Names {
        let hex: String = id
            .chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_lowercase())
            .take(32)
            .collect();
        Names {
            schema: format!("db_{hex}"),
            writer: format!("bb_{hex}_w"),
            reader: format!("bb_{hex}_r"),
        }
    }

    pub fn role(&self, write: bool) -> &str {
        if write { &self.writer } else { &self.reader }
    }
}

/// Makes and reaches the roles.
pub struct Roles {
    /// How the node itself connects (host, port, database, TLS settings).
    node: tokio_postgres::Config,
    tls: PgTls,
    key: Vec<u8>,
}

impl Roles {
    pub fn new(node: tokio_postgres::Config, tls: PgTls, key: Vec<u8>) -> Roles {
        Roles { node, tls, key }
    }

    pub fn tls(&self) -> &PgTls {
        &self.tls
    }

    fn password(&self, role: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(role.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The statements that make a database's schema and roles, run by the
    /// node's own user (which needs CREATEROLE, or to be a superuser).
    pub fn create_statements(&self, names: &Names) -> String {
        let Names {
            schema,
            writer,
            reader,
        } = names;
        let role = |name: &str| {
            let verifier =
                postgres_protocol::password::scram_sha_256(self.password(name).as_bytes());
            format!(
                "CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT \
                 NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {CONNECTION_LIMIT} \
                 PASSWORD '{verifier}';\n\
                 ALTER ROLE {name} SET search_path = {schema};\n"
            )
        };
        format!(
            "{}{}\
             GRANT {writer} TO CURRENT_USER;\n\
             CREATE SCHEMA {schema} AUTHORIZATION {writer};\n\
             GRANT USAGE ON SCHEMA {schema} TO {reader};\n\
             ALTER DEFAULT PRIVILEGES FOR ROLE {writer} IN SCHEMA {schema} \
             GRANT SELECT ON TABLES TO {reader};\n",
            role(writer),
            role(reader)
        )
    }

    /// The statements that remove them again, each on its own so one that
    /// finds nothing (a half-made database) does not stop the rest.
    pub fn drop_statements(names: &Names) -> Vec<String> {
        let Names {
            schema,
            writer,
            reader,
        } = names;
        vec![
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename IN ('{writer}', '{reader}')"
            ),
            format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
            format!("DROP OWNED BY {writer}, {reader}"),
            format!("DROP ROLE IF EXISTS {reader}"),
            format!("DROP ROLE IF EXISTS {writer}"),
        ]
    }

    /// A pool of connections logged in as `role`.
    pub fn pool(&self, role: &str) -> Result<Pool> {
        let mut config = self.node.clone();
        config.user(role).password(self.password(role));
        config.application_name("busbar user sql");
        let manager = Manager::from_config(
            config,
            self.tls.clone(),
            ManagerConfig {
                // Calls reset their connection as they end (RESET), and
                // one that could not is closed rather than returned.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(POOL_SIZE)
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::internal(format!("a SQL connection pool: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_identifiers_whatever_the_id() {
        let names = Names::of("0A1b-2c3d\"; DROP TABLE x; --");
        for name in [&names.schema, &names.writer, &names.reader] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
        let id = "5f0e8c1a-9b7d-4c2e-8a6f-1d3b5c7e9f00";
        assert_eq!(
            Names::of(id).role(true),
            "bb_5f0e8c1a9b7d4c2e8a6f1d3b5c7e9f00_w"
        );
        assert_eq!(
            Names::of(id).role(false),
            "bb_5f0e8c1a9b7d4c2e8a6f1d3b5c7e9f00_r"
        );
    }
}
