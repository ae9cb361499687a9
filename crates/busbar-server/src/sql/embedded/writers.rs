//! Kept writer connections, one per file, bounded.
//!
//! Writes from outside sessions take turns on one writer connection per
//! SQL database or series file instead of spinning on SQLite's lock. Keeping
//! every one a node ever opened would hold a file descriptor and SQLite's
//! page cache per file for as long as the node runs, so at most
//! [`KEPT_WRITERS`] are kept: when a new one would go over, the least
//! recently used connection that no write holds is closed. A connection a
//! write holds is never closed under it, so while more than that many files
//! are written at once the pool holds one per write in flight (bounded by
//! the node's concurrent calls) and shrinks back on the next opens.

use crate::error::Result;
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Writer connections kept open per store (SQL databases, series files).
/// Opening one costs a file open, SQLite's schema parse and a WAL-index
/// mapping (about half a millisecond); 64 covers the files a node writes
/// often while keeping descriptors well inside the default limit of 1024.
pub const KEPT_WRITERS: usize = 64;

/// A shared writer connection: whoever locks it writes.
pub type SharedWriter = Arc<Mutex<Connection>>;

struct Kept {
    conn: SharedWriter,
    /// The pool's use count when this was last handed out (LRU order).
    used: u64,
}

#[derive(Default)]
struct Pool {
    by_file: HashMap<String, Kept>,
    uses: u64,
}

impl Pool {
    /// `id`'s kept writer, now the most recently used.
    fn take(&mut self, id: &str) -> Option<SharedWriter> {
        let kept = self.by_file.get_mut(id)?;
        self.uses += 1;
        kept.used = self.uses;
        Some(kept.conn.clone())
    }
}

/// Writer connections by file id, at most [`KEPT_WRITERS`] idle ones.
pub struct WriterPool {
    pool: Mutex<Pool>,
    limit: usize,
}

impl Default for WriterPool {
    fn default() -> WriterPool {
        WriterPool::with_limit(KEPT_WRITERS)
    }
}

impl WriterPool {
    fn with_limit(limit: usize) -> WriterPool {
        WriterPool {
            pool: Mutex::default(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer of `id`: the kept one, or one `open` makes (opened without
    /// the pool's lock, so a slow open holds up no other file; when two
    /// opens race, both get the one kept first).
    pub fn get(&self, id: &str, open: impl FnOnce() -> Result<Connection>) -> Result<SharedWriter> {
        if let Some(conn) = self.take(id) {
            return Ok(conn);
        }
        let opened = Arc::new(Mutex::new(open()?));
        Ok(self.keep(id, opened))
    }

    fn take(&self, id: &str) -> Option<SharedWriter> {
        self.lock().take(id)
    }

    /// Keeps `conn` as `id`'s writer unless one is kept already, and returns
    /// the kept one.
    pub fn keep(&self, id: &str, conn: SharedWriter) -> SharedWriter {
        let mut pool = self.lock();
        // Looked up again under the same lock as the insert: two racing
        // opens of one file must not both be kept.
        if let Some(kept) = pool.take(id) {
            return kept;
        }
        pool.uses += 1;
        let uses = pool.uses;
        while pool.by_file.len() >= self.limit {
            // Only the pool holds an idle one, and only under this lock can
            // it be handed out, so it cannot become busy while it is closed.
            let idle = pool
                .by_file
                .iter()
                .filter(|(_, kept)| Arc::strong_count(&kept.conn) == 1)
                .min_by_key(|(_, kept)| kept.used)
                .map(|(id, _)| id.clone());
            match idle {
                Some(id) => pool.by_file.remove(&id),
                None => break,
            };
        }
        pool.by_file.insert(
            id.to_string(),
            Kept {
                conn: conn.clone(),
                used: uses,
            },
        );
        conn
    }

    /// Closes `id`'s writer when no write holds it (its file is deleted).
    pub fn remove(&self, id: &str) {
        self.lock().by_file.remove(id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_file.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Result<Connection> {
        Ok(Connection::open_in_memory()?)
    }

    #[test]
    fn keeps_one_writer_per_file() {
        let pool = WriterPool::with_limit(4);
        let a = pool.get("a", open).unwrap();
        let again = pool.get("a", || panic!("a kept writer is reused")).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        // A racing open loses to the writer kept first.
        let raced = pool.keep("a", Arc::new(Mutex::new(open().unwrap())));
        assert!(Arc::ptr_eq(&a, &raced));
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn closes_the_least_recently_used_idle_writer_when_full() {
        let pool = WriterPool::with_limit(3);
        for id in ["a", "b", "c"] {
            pool.get(id, open).unwrap();
        }
        pool.get("a", open).unwrap(); // a is now newer than b
        pool.get("d", open).unwrap();
        assert_eq!(pool.len(), 3);
        let mut reopened = Vec::new();
        for id in ["a", "b", "c", "d"] {
            pool.get(id, || {
                reopened.push(id);
                open()
            })
            .unwrap();
        }
        // b was closed for d; reopening b closed c, reopening c closed d...
        assert_eq!(reopened[0], "b");
        assert!(pool.len() <= 3);
    }

    #[test]
    fn never_closes_a_writer_in_use() {
        let pool = WriterPool::with_limit(2);
        let a = pool.get("a", open).unwrap();
        let b = pool.get("b", open).unwrap();
        // Both are held: the pool grows past its limit rather than close one.
        let c = pool.get("c", open).unwrap();
        assert_eq!(pool.len(), 3);
        let still_a = pool
            .get("a", || panic!("a is held, so it is kept"))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &still_a));
        drop((still_a, b, c));
        // Released: the next open brings the pool back to its limit.
        pool.get("d", open).unwrap();
        assert_eq!(pool.len(), 2);
        drop(a);
    }
}
