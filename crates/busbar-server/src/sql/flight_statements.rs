//! Flight SQL prepared statements held between calls: bounded in number
//! (per identity and per node) and forgotten after they sit idle.

use crate::error::{Error, Result};
use crate::sql::SqlParams;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Open prepared statements one identity may hold; past it, creating one fails.
pub const MAX_PER_IDENTITY: usize = 128;
/// Open prepared statements on one node.
pub const MAX_PER_NODE: usize = 8192;
/// A statement unused for this long is closed.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(10 * 60);
/// Parameter rows one bind may hold.
pub const MAX_BOUND_ROWS: usize = 100_000;

#[derive(Debug, Clone)]
pub struct Prepared {
    /// The identity that created it; nobody else can use it.
    pub owner: Arc<str>,
    /// The database's resource path, resolved against the caller on every use.
    pub database: String,
    pub sql: String,
    pub parameters: Vec<String>,
    /// The parameter rows bound last (DoPut), if any.
    pub bound: Vec<SqlParams>,
}

struct Entry {
    prepared: Prepared,
    used: Instant,
}

#[derive(Default)]
pub struct PreparedStatements {
    open: Mutex<HashMap<String, Entry>>,
}

fn unknown() -> Error {
    Error::not_found(format!(
        "no such prepared statement: it was closed, expired after {} minutes idle, belongs to \
         another identity or was made by another node; prepare it again",
        IDLE_EXPIRY.as_secs() / 60
    ))
}

impl PreparedStatements {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `prepared` and returns its handle.
    pub fn insert(&self, prepared: Prepared) -> Result<String> {
        let mut open = self.lock();
        open.retain(|_, entry| entry.used.elapsed() < IDLE_EXPIRY);
        let mine = open
            .values()
            .filter(|entry| entry.prepared.owner == prepared.owner)
            .count();
        if mine >= MAX_PER_IDENTITY {
            return Err(Error::resource_exhausted(format!(
                "{mine} prepared statements are open for this identity (the limit); close the ones \
                 you no longer need (idle ones close after {} minutes)",
                IDLE_EXPIRY.as_secs() / 60
            )));
        }
        if open.len() >= MAX_PER_NODE {
            return Err(Error::resource_exhausted(
                "this node holds as many prepared statements as it may; retry later or close some",
            ));
        }
        let handle = uuid::Uuid::new_v4().to_string();
        open.insert(
            handle.clone(),
            Entry {
                prepared,
                used: Instant::now(),
            },
        );
        Ok(handle)
    }

    fn with<T>(
        &self,
        owner: &str,
        handle: &[u8],
        f: impl FnOnce(&mut Prepared) -> Result<T>,
    ) -> Result<T> {
        let handle = std::str::from_utf8(handle).map_err(|_| unknown())?;
        let mut open = self.lock();
        let entry = open
            .get_mut(handle)
            .filter(|e| &*e.prepared.owner == owner && e.used.elapsed() < IDLE_EXPIRY)
            .ok_or_else(unknown)?;
        entry.used = Instant::now();
        f(&mut entry.prepared)
    }

    /// The statement behind `handle`, if `owner` made it and it is still open.
    pub fn get(&self, owner: &str, handle: &[u8]) -> Result<Prepared> {
        self.with(owner, handle, |prepared| Ok(prepared.clone()))
    }

    /// Replaces the bound parameter rows.
    pub fn bind(&self, owner: &str, handle: &[u8], rows: Vec<SqlParams>) -> Result<()> {
        self.with(owner, handle, |prepared| {
            prepared.bound = rows;
            Ok(())
        })
    }

    /// Closes `owner`'s statement; closing one that is already gone succeeds.
    pub fn close(&self, owner: &str, handle: &[u8]) {
        let Ok(handle) = std::str::from_utf8(handle) else {
            return;
        };
        let mut open = self.lock();
        if open
            .get(handle)
            .is_some_and(|e| &*e.prepared.owner == owner)
        {
            open.remove(handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(owner: &str) -> Prepared {
        Prepared {
            owner: owner.into(),
            database: "/db".into(),
            sql: "SELECT 1".into(),
            parameters: vec![],
            bound: vec![],
        }
    }

    #[test]
    fn handles_belong_to_their_owner_and_are_bounded() {
        let statements = PreparedStatements::default();
        let handle = statements.insert(prepared("a")).unwrap();
        assert!(statements.get("a", handle.as_bytes()).is_ok());
        assert_eq!(
            statements.get("b", handle.as_bytes()).unwrap_err().code,
            crate::error::ErrorCode::NotFound
        );
        statements.close("b", handle.as_bytes());
        assert!(statements.get("a", handle.as_bytes()).is_ok());
        for _ in 1..MAX_PER_IDENTITY {
            statements.insert(prepared("a")).unwrap();
        }
        let full = statements.insert(prepared("a")).unwrap_err();
        assert_eq!(full.code, crate::error::ErrorCode::ResourceExhausted);
        assert!(statements.insert(prepared("b")).is_ok());
        statements.close("a", handle.as_bytes());
        assert!(statements.get("a", handle.as_bytes()).is_err());
        assert!(statements.insert(prepared("a")).is_ok());
    }
}
