//! A SQL call's budget: how long its statements may run (the call's
//! deadline or the node's ceiling) and how many result bytes they may
//! return, and whether the caller is still there. Backend-neutral: each
//! engine enforces it its own way (SQLite: a progress handler).

use crate::error::{Error, ErrorCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long and how much one call's SQL may run, and whether its caller is
/// still there. Cloned into the blocking task that runs the statement.
#[derive(Clone, Debug)]
pub struct Budget {
    deadline: Instant,
    /// Which limit `deadline` is, for the error message.
    deadline_is: &'static str,
    limit: Duration,
    stopped: Arc<AtomicBool>,
    /// Arrow bytes one call may return.
    pub max_result_bytes: usize,
}

/// Stops the statements of a [`Budget`] when dropped: held by the call's
/// future (or the task streaming its reply), so a cancelled, timed-out or
/// disconnected call stops its statement.
#[derive(Debug)]
pub struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Budget {
    /// A budget ending at the call's deadline (`timeout`, from `grpc-timeout`)
    /// or the node's ceiling, whichever comes first.
    pub fn new(
        timeout: Option<Duration>,
        ceiling: Duration,
        max_result_bytes: usize,
    ) -> (Budget, StopOnDrop) {
        let (limit, deadline_is) = match timeout {
            Some(timeout) if timeout < ceiling => (timeout, "the call's deadline"),
            _ => (ceiling, "the node's limit (max_statement_seconds)"),
        };
        let stopped = Arc::new(AtomicBool::new(false));
        let budget = Budget {
            deadline: Instant::now() + limit,
            deadline_is,
            limit,
            stopped: stopped.clone(),
            max_result_bytes,
        };
        (budget, StopOnDrop(stopped))
    }

    /// Why statements of this budget must stop now, if they must.
    pub fn exhausted(&self) -> Option<Error> {
        if self.stopped.load(Ordering::Relaxed) {
            return Some(Error::cancelled(
                "the call was cancelled or its client went away; its statement was stopped",
            ));
        }
        if Instant::now() >= self.deadline {
            return Some(Error {
                code: ErrorCode::Timeout,
                message: format!(
                    "the statement ran past {} ({:.3} s) and was stopped",
                    self.deadline_is,
                    self.limit.as_secs_f64()
                ),
            });
        }
        None
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Resolves, with the reason, once statements of this budget must stop:
    /// at the deadline, or within a few milliseconds of the call going away.
    pub async fn interrupted(&self) -> Error {
        loop {
            if let Some(why) = self.exhausted() {
                return why;
            }
            let wait = self.remaining().min(Duration::from_millis(20));
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// An interrupted statement's error, replaced by why this budget stopped it.
    pub fn explain(&self, error: Error) -> Error {
        if error.code == ErrorCode::Cancelled && error.message.ends_with(INTERRUPTED) {
            return self.exhausted().unwrap_or(error);
        }
        error
    }
}

/// The message the embedded engine gives an interrupted statement.
pub const INTERRUPTED: &str = "the statement was interrupted";
