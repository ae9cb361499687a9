//! Password guessing must not exhaust the node. Argon2 verifications (about
//! 19 MiB and tens of milliseconds each) run a bounded number at a time
//! with a bounded queue, one address may have only a few logins in flight,
//! and repeated failures for one user name are slowed down before the
//! password is even checked.
//!
//! Policy (docs/security.md): the first [`FREE_FAILURES`] failures for a
//! name within [`FORGET_AFTER`] cost nothing; each later attempt for that
//! name first waits [`BASE_DELAY`] doubled per failure, up to
//! [`MAX_DELAY`]; a successful login clears the count. One peer address may
//! have [`MAX_PER_PEER`] password logins in flight (waiting or being
//! checked); at most [`MAX_WAITING`] logins wait for a verification slot in
//! all. Past either, a login is refused at once with RESOURCE_EXHAUSTED,
//! before any argon2 work.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub const FREE_FAILURES: u32 = 5;
pub const BASE_DELAY: Duration = Duration::from_millis(250);
pub const MAX_DELAY: Duration = Duration::from_secs(8);
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
pub const MAX_WAITING: usize = 256;
pub const MAX_PER_PEER: usize = 8;
/// Names remembered at most; the oldest go first.
pub const MAX_TRACKED: usize = 10_000;

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failure counts by key, bounded in size and age.
struct Ledger<K> {
    entries: HashMap<K, Failures>,
}

impl<K: Hash + Eq + Clone> Ledger<K> {
    fn new() -> Self {
        Ledger {
            entries: HashMap::new(),
        }
    }

    fn count(&self, key: &K, now: Instant) -> u32 {
        self.entries
            .get(key)
            .filter(|f| now.duration_since(f.last) < FORGET_AFTER)
            .map_or(0, |f| f.count)
    }

    fn fail(&mut self, key: K, now: Instant) {
        if self.entries.len() >= MAX_TRACKED && !self.entries.contains_key(&key) {
            self.entries
                .retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            if self.entries.len() >= MAX_TRACKED
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        let count = self.count(&key, now) + 1;
        self.entries.insert(key, Failures { count, last: now });
    }

    fn clear(&mut self, key: &K) {
        self.entries.remove(key);
    }
}

/// The delay before an attempt after `failures` recent failures.
pub fn delay_after(failures: u32) -> Duration {
    if failures < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES).min(16);
    (BASE_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
}

pub struct LoginThrottle {
    slots: Semaphore,
    waiting: AtomicUsize,
    by_name: Mutex<Ledger<String>>,
    in_flight: Mutex<HashMap<IpAddr, usize>>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        // Half the cores (at least one) verify at once: a flood of bad
        // logins leaves the other half to every other call.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        LoginThrottle::new((cores / 2).max(1))
    }
}

impl LoginThrottle {
    pub fn new(slots: usize) -> LoginThrottle {
        LoginThrottle {
            slots: Semaphore::new(slots),
            waiting: AtomicUsize::new(0),
            by_name: Mutex::new(Ledger::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Ledger<String>> {
        self.by_name.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long an attempt for `name` waits before it is checked.
    pub fn delay(&self, name: &str) -> Duration {
        delay_after(self.names().count(&name.to_string(), Instant::now()))
    }

    /// Runs `verify` (an argon2 check) for `name` from `peer`: after the
    /// delay its recent failures earn, in a bounded slot, on the blocking
    /// pool. `verify` returns whether the credential matched; the outcome
    /// is recorded.
    pub async fn check(
        &self,
        name: &str,
        peer: Option<IpAddr>,
        verify: impl FnOnce() -> bool + Send + 'static,
    ) -> Result<bool> {
        let _peer = match peer {
            Some(peer) => Some(PeerTurn::take(self, peer)?),
            None => None,
        };
        let delay = self.delay(name);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(busy("this node"));
        }
        let waiting = Counted(&self.waiting);
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Error::unavailable("the node is shutting down"))?;
        drop(waiting);
        let matched = tokio::task::spawn_blocking(verify).await?;
        if matched {
            self.names().clear(&name.to_string());
        } else {
            self.names().fail(name.to_string(), Instant::now());
        }
        Ok(matched)
    }
}

fn busy(where_: &str) -> Error {
    Error::resource_exhausted(format!(
        "too many logins are being checked for {where_} right now; retry in a moment"
    ))
}

/// Decrements a counter when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One of a peer's [`MAX_PER_PEER`] logins in flight, given back when dropped.
struct PeerTurn<'a> {
    throttle: &'a LoginThrottle,
    peer: IpAddr,
}

impl<'a> PeerTurn<'a> {
    fn take(throttle: &'a LoginThrottle, peer: IpAddr) -> Result<PeerTurn<'a>> {
        let mut in_flight = throttle.in_flight();
        let count = in_flight.entry(peer).or_insert(0);
        if *count >= MAX_PER_PEER {
            return Err(busy("this address"));
        }
        *count += 1;
        Ok(PeerTurn { throttle, peer })
    }
}

impl Drop for PeerTurn<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.throttle.in_flight();
        if let Some(count) = in_flight.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_after_the_free_failures_and_are_capped() {
        assert_eq!(delay_after(0), Duration::ZERO);
        assert_eq!(delay_after(FREE_FAILURES - 1), Duration::ZERO);
        assert_eq!(delay_after(FREE_FAILURES), BASE_DELAY);
        assert_eq!(delay_after(FREE_FAILURES + 2), BASE_DELAY * 4);
        assert_eq!(delay_after(1000), MAX_DELAY);
    }

    #[tokio::test]
    async fn failures_for_a_name_slow_its_next_attempt_and_success_clears() {
        let throttle = LoginThrottle::new(1);
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert!(!throttle.check("eve", Some(peer), || false).await.unwrap());
        }
        assert_eq!(throttle.delay("eve"), BASE_DELAY);
        assert_eq!(throttle.delay("someone-else"), Duration::ZERO);
        let started = Instant::now();
        assert!(throttle.check("eve", Some(peer), || true).await.unwrap());
        assert!(started.elapsed() >= BASE_DELAY);
        assert_eq!(throttle.delay("eve"), Duration::ZERO);
        assert!(throttle.in_flight().is_empty());
    }

    #[tokio::test]
    async fn one_address_has_a_few_logins_in_flight() {
        let throttle = LoginThrottle::new(1);
        let peer: IpAddr = "10.0.0.7".parse().unwrap();
        let turns: Vec<PeerTurn> = (0..MAX_PER_PEER)
            .map(|_| PeerTurn::take(&throttle, peer).unwrap())
            .collect();
        let refused = throttle.check("x", Some(peer), || true).await.unwrap_err();
        assert_eq!(refused.code, crate::error::ErrorCode::ResourceExhausted);
        assert!(
            throttle
                .check("x", Some("10.0.0.8".parse().unwrap()), || true)
                .await
                .unwrap()
        );
        drop(turns);
        assert!(throttle.check("x", Some(peer), || true).await.unwrap());
    }

    #[test]
    fn the_ledger_stays_bounded() {
        let mut ledger = Ledger::new();
        let now = Instant::now();
        for i in 0..MAX_TRACKED + 50 {
            ledger.fail(i, now);
        }
        assert!(ledger.entries.len() <= MAX_TRACKED);
    }

    #[tokio::test]
    async fn the_queue_is_bounded() {
        let throttle = std::sync::Arc::new(LoginThrottle::new(1));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy = throttle.clone();
        let holder =
            tokio::spawn(async move { busy.check("a", None, move || hold.recv().is_err()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        throttle.waiting.store(MAX_WAITING, Ordering::Relaxed);
        let refused = throttle.check("b", None, || true).await.unwrap_err();
        assert_eq!(refused.code, crate::error::ErrorCode::ResourceExhausted);
        throttle.waiting.store(0, Ordering::Relaxed);
        drop(release);
        holder.await.unwrap().unwrap();
    }
}
