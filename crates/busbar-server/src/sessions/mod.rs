//! Data sessions: server-side workspaces. A session holds one open
//! transaction per database or series it touched, so its own calls read its
//! uncommitted changes and nobody else sees them until commit. Sessions that
//! sit idle longer than the node's idle timeout are rolled back by a sweeper.
//!
//! Backend-neutral: a session holds each transaction as its backend made it
//! (a [`Transaction`]), and only that backend looks inside. With the
//! embedded backend a session that touched a database or series holds that
//! file's writer lock until it ends: other writers wait up to SQLite's busy
//! timeout (5 s) and then get CONFLICT, while readers go on reading the last
//! committed state.

pub mod postgres;
pub mod service;

use crate::error::{Error, ErrorCode, Result};
use crate::store::now_ms;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// One open transaction of a session on one database or series, as the
/// backend that began it holds it.
pub trait Transaction: Send + 'static {
    fn commit(self: Box<Self>) -> Result<()>;
    fn rollback(self: Box<Self>);
    /// For the backend that made it, to reach its own type.
    fn as_any(&mut self) -> &mut dyn std::any::Any;
}

/// What a session's transaction is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Database,
    Series,
}

/// The open transactions of one session.
#[derive(Default)]
pub struct Work {
    databases: HashMap<String, Box<dyn Transaction>>,
    series: HashMap<String, Box<dyn Transaction>>,
}

impl Work {
    /// The session's transaction on `id`, begun with `begin` on first use
    /// (for backends that begin transactions synchronously, under the lock).
    pub fn begun(
        &mut self,
        part: Part,
        id: &str,
        begin: impl FnOnce() -> Result<Box<dyn Transaction>>,
    ) -> Result<&mut dyn Transaction> {
        let held = self.part(part);
        if !held.contains_key(id) {
            held.insert(id.to_string(), begin()?);
        }
        Ok(held.get_mut(id).expect("inserted above").as_mut())
    }

    fn part(&mut self, part: Part) -> &mut HashMap<String, Box<dyn Transaction>> {
        match part {
            Part::Database => &mut self.databases,
            Part::Series => &mut self.series,
        }
    }

    /// The session's transaction on `id` if it has one (for backends that
    /// begin transactions asynchronously, outside this lock: see [`Work::hold`]).
    pub fn held(&mut self, part: Part, id: &str) -> Option<&mut dyn Transaction> {
        self.part(part).get_mut(id).map(|t| t.as_mut())
    }

    /// Keeps `transaction` as the session's on `id`, begun while the lock
    /// was not held. Should another call of the session have begun one in
    /// the meantime, that one stays and this one is rolled back.
    pub fn hold(
        &mut self,
        part: Part,
        id: &str,
        transaction: Box<dyn Transaction>,
    ) -> &mut dyn Transaction {
        let held = self.part(part);
        if held.contains_key(id) {
            transaction.rollback();
        } else {
            held.insert(id.to_string(), transaction);
        }
        held.get_mut(id).expect("inserted above").as_mut()
    }

    /// Commits every transaction, databases first. Each commits atomically;
    /// should one commit fail, the ones after it roll back.
    fn commit(&mut self) -> Result<(u32, u32)> {
        let counts = (self.databases.len() as u32, self.series.len() as u32);
        let mut failed: Option<Error> = None;
        for (_, transaction) in self.databases.drain().chain(self.series.drain()) {
            if failed.is_some() {
                transaction.rollback();
            } else if let Err(error) = transaction.commit() {
                failed = Some(error);
            }
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(counts),
        }
    }

    fn rollback(&mut self) -> (u32, u32) {
        let counts = (self.databases.len() as u32, self.series.len() as u32);
        for (_, transaction) in self.databases.drain().chain(self.series.drain()) {
            transaction.rollback();
        }
        counts
    }
}

pub struct DataSession {
    pub id: String,
    owner: Arc<str>,
    last_used_ms: AtomicI64,
    work: Mutex<Work>,
    /// Why the session was rolled back under its owner, once it was.
    lost: Mutex<Option<String>>,
}

impl DataSession {
    /// Rolls the whole session back because one of its transactions was
    /// lost (SQLite, for one, rolls a transaction back when a statement that
    /// writes is stopped); its next use says why. Returns the error to give now.
    pub fn abandon(&self, work: &mut Work, why: &str) -> Error {
        work.rollback();
        let message = format!(
            "{why}; the database rolled back the session's transaction, so session {} was rolled back \
             as a whole: nothing it did is kept. Open a new session",
            self.id
        );
        *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.clone());
        Error::failed_precondition(message)
    }

    /// The session's transactions; calls in one session take turns. A call
    /// that waited its turn behind the one that lost the session is refused.
    pub fn work(&self) -> Result<MutexGuard<'_, Work>> {
        let work = self.lock_work();
        match self.lost() {
            Some(message) => Err(Error::failed_precondition(message)),
            None => Ok(work),
        }
    }

    fn lock_work(&self) -> MutexGuard<'_, Work> {
        self.work.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn touch(&self) {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// The open sessions of a node.
pub struct DataSessions {
    open: Mutex<HashMap<String, Arc<DataSession>>>,
    pub idle: Duration,
    max: usize,
    /// Random per process, part of every session id: a session named by a
    /// client after a restart is known to have been lost with the node.
    incarnation: String,
}

impl DataSessions {
    pub fn new(idle: Duration, max: usize) -> DataSessions {
        DataSessions {
            open: Mutex::new(HashMap::new()),
            idle,
            max,
            incarnation: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<DataSession>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(&self, owner: &Arc<str>) -> Result<Arc<DataSession>> {
        let mut open = self.lock();
        if open.len() >= self.max {
            return Err(Error {
                code: ErrorCode::ResourceExhausted,
                message: format!(
                    "this node has {} open sessions, its limit (max_data_sessions); commit or roll back some",
                    self.max
                ),
            });
        }
        let session = Arc::new(DataSession {
            id: format!("ses_{}_{}", self.incarnation, uuid::Uuid::new_v4().simple()),
            owner: owner.clone(),
            last_used_ms: AtomicI64::new(now_ms()),
            work: Mutex::new(Work::default()),
            lost: Mutex::new(None),
        });
        open.insert(session.id.clone(), session.clone());
        Ok(session)
    }

    /// An open session of `owner`, marked as used now.
    pub fn get(&self, id: &str, owner: &str) -> Result<Arc<DataSession>> {
        let session = self.lock().get(id).cloned().ok_or_else(|| {
            let incarnation = id.strip_prefix("ses_").and_then(|rest| rest.split_once('_'));
            match incarnation {
                Some((of, _)) if of != self.incarnation => Error::not_found(format!(
                    "session {id:?} was lost when the node restarted: sessions live in the node's memory, so a restart rolls back what they had not committed; open a new one"
                )),
                _ => Error::not_found(format!(
                    "no open session {id:?}: it was committed, rolled back, or expired after {} s idle",
                    self.idle.as_secs()
                )),
            }
        })?;
        if &*session.owner != owner {
            return Err(Error::permission_denied(format!(
                "session {id:?} belongs to another identity"
            )));
        }
        if let Some(message) = session.lost() {
            self.lock().remove(id);
            return Err(Error::failed_precondition(message));
        }
        session.touch();
        Ok(session)
    }

    /// When an unused session expires, epoch ms.
    pub fn expires_ms(&self, session: &DataSession) -> i64 {
        session.last_used_ms.load(Ordering::Relaxed) + self.idle.as_millis() as i64
    }

    /// Ends a session: commits it, or rolls it back. Returns how many
    /// databases and series it held.
    pub fn end(&self, id: &str, owner: &str, commit: bool) -> Result<(u32, u32)> {
        let session = self.get(id, owner)?;
        self.lock().remove(id);
        let mut work = session.lock_work();
        if let Some(message) = session.lost() {
            return Err(Error::failed_precondition(message));
        }
        if commit {
            work.commit()
        } else {
            Ok(work.rollback())
        }
    }

    /// Rolls back sessions idle past the timeout; returns how many.
    pub fn expire(&self) -> usize {
        let now = now_ms();
        let expired: Vec<Arc<DataSession>> = {
            let mut open = self.lock();
            let ids: Vec<String> = open
                .values()
                .filter(|s| self.expires_ms(s) <= now)
                .map(|s| s.id.clone())
                .collect();
            ids.iter().filter_map(|id| open.remove(id)).collect()
        };
        for session in &expired {
            session.lock_work().rollback();
        }
        expired.len()
    }
}
