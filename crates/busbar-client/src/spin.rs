//! Spinning before parking, for a thread that blocks on an answer another
//! thread will give soon (a blocking call waiting for its runtime task).
//!
//! Why: a thread that parks lets its CPU go idle, and on a virtual machine
//! an idle vCPU halts; waking it again is an exit to the hypervisor and back.
//! Measured on a 2-vCPU Firecracker VM whose guest does not poll before
//! halting: a one-byte TCP ping-pong between two processes took 82-92 µs at
//! p50 with both ends parked, 24 µs with one end spinning. Linux's own
//! `cpuidle-haltpoll` polls for up to 200 µs before it halts a vCPU for the
//! same reason; where the guest kernel does that, spinning here changes
//! little, and where it does not (as on that VM), it is most of a short
//! call's latency.
//!
//! The window adapts the way haltpoll's does, so waits that spinning cannot
//! shorten stop costing CPU: a wait that ends within the window keeps it; one
//! that ends later but within the limit doubles it (from [`GROW_START`]); one
//! longer than the limit halves it. Only one thread per process spins at a
//! time (others park at once), so spinning never takes more than one CPU.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The limit to opt in with, when one is wanted: haltpoll's default.
/// Spinning is off unless a program asks for it.
pub const DEFAULT_LIMIT: Duration = Duration::from_micros(200);

/// The largest limit accepted: beyond it a wait is no longer "soon".
pub const MAX_LIMIT: Duration = Duration::from_millis(10);

/// The window after the first wait that spinning could have shortened.
pub const GROW_START: Duration = Duration::from_micros(25);

/// An adaptive spin window shared by the threads of a process.
pub struct SpinWait {
    /// The most a wait may spin, in ns; 0 turns spinning off.
    limit_ns: AtomicU64,
    /// How long the next wait spins, in ns (at most `limit_ns`).
    window_ns: AtomicU64,
    /// Whether a thread is spinning now.
    spinning: AtomicBool,
}

impl SpinWait {
    pub const fn new(limit: Duration) -> SpinWait {
        SpinWait {
            limit_ns: AtomicU64::new(limit.as_nanos() as u64),
            window_ns: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
        }
    }

    /// Sets the limit; `Duration::ZERO` turns spinning off. Refuses a limit
    /// over [`MAX_LIMIT`] (and leaves the old one).
    pub fn set_limit(&self, limit: Duration) -> crate::Result<()> {
        if limit > MAX_LIMIT {
            return Err(crate::Error::invalid_argument(format!(
                "a spin limit of {limit:?} is over the largest, {MAX_LIMIT:?}; use 0 to turn spinning off"
            )));
        }
        let limit_ns = limit.as_nanos() as u64;
        self.limit_ns.store(limit_ns, Ordering::Relaxed);
        self.window_ns.fetch_min(limit_ns, Ordering::Relaxed);
        Ok(())
    }

    pub fn limit(&self) -> Duration {
        Duration::from_nanos(self.limit_ns.load(Ordering::Relaxed))
    }

    /// How long the next wait spins.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns.load(Ordering::Relaxed))
    }

    /// Calls `poll` until it gives a value or the window (counted from
    /// `started`) has passed; `None` then, and the caller parks. Returns
    /// `None` at once when another thread is spinning or the window is 0.
    /// Whoever calls this reports the whole wait to `finished` afterwards.
    pub fn spin<T>(&self, started: Instant, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
        let window = self.window();
        if window.is_zero()
            || self
                .spinning
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        let outcome = loop {
            if let Some(value) = poll() {
                break Some(value);
            }
            if started.elapsed() >= window {
                break None;
            }
            std::hint::spin_loop();
        };
        self.spinning.store(false, Ordering::Release);
        outcome
    }

    /// Adapts the window to a wait that took `waited` in all.
    pub fn finished(&self, waited: Duration) {
        let limit = self.limit_ns.load(Ordering::Relaxed);
        let window = self.window_ns.load(Ordering::Relaxed);
        let waited = waited.as_nanos().min(u64::MAX as u128) as u64;
        let next = if waited <= window {
            window
        } else if waited <= limit {
            (window * 2).max(GROW_START.as_nanos() as u64).min(limit)
        } else {
            window / 2
        };
        // Racing threads may each store their own; any of them is a fair guess.
        self.window_ns.store(next, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn the_window_grows_to_waits_under_the_limit_and_shrinks_for_longer_ones() {
        let spin = SpinWait::new(us(200));
        assert_eq!(spin.window(), Duration::ZERO);
        spin.finished(us(150));
        assert_eq!(spin.window(), GROW_START);
        spin.finished(us(150));
        assert_eq!(spin.window(), us(50));
        spin.finished(us(150));
        spin.finished(us(150));
        assert_eq!(spin.window(), us(200), "doubles, capped at the limit");
        spin.finished(us(90));
        assert_eq!(spin.window(), us(200), "a wait inside the window keeps it");
        spin.finished(us(5_000));
        assert_eq!(spin.window(), us(100), "a wait over the limit halves it");
        for _ in 0..40 {
            spin.finished(us(5_000));
        }
        assert_eq!(spin.window(), Duration::ZERO, "long waits end spinning");
    }

    #[test]
    fn a_zero_limit_never_spins_and_a_lower_limit_cuts_the_window() {
        let spin = SpinWait::new(us(200));
        for _ in 0..4 {
            spin.finished(us(150));
        }
        assert_eq!(spin.window(), us(200));
        spin.set_limit(us(60)).unwrap();
        assert_eq!(spin.window(), us(60));
        spin.set_limit(Duration::ZERO).unwrap();
        spin.finished(us(150));
        assert_eq!(spin.window(), Duration::ZERO);
        let mut polls = 0;
        assert_eq!(
            spin.spin(Instant::now(), || {
                polls += 1;
                Some(1)
            }),
            None
        );
        assert_eq!(polls, 0, "a zero window does not even poll");
    }

    #[test]
    fn a_limit_over_the_largest_is_refused_and_changes_nothing() {
        let spin = SpinWait::new(us(200));
        let error = spin.set_limit(MAX_LIMIT + us(1)).unwrap_err();
        assert_eq!(error.code(), crate::ErrorCode::InvalidArgument);
        assert_eq!(spin.limit(), us(200));
    }

    #[test]
    fn spinning_returns_the_value_once_ready_or_gives_up_after_the_window() {
        let spin = SpinWait::new(us(200));
        for _ in 0..4 {
            spin.finished(us(150));
        }
        let mut polls = 0;
        let got = spin.spin(Instant::now(), || {
            polls += 1;
            (polls == 3).then_some("ready")
        });
        assert_eq!((got, polls), (Some("ready"), 3));

        let started = Instant::now();
        assert_eq!(spin.spin(started, || None::<()>), None);
        assert!(started.elapsed() >= us(200), "spun for the whole window");
    }

    #[test]
    fn only_one_thread_spins_at_a_time() {
        let spin = std::sync::Arc::new(SpinWait::new(MAX_LIMIT));
        while spin.window() < MAX_LIMIT {
            spin.finished(MAX_LIMIT);
        }
        // An attempt counts when the first spinner held its place until it
        // was released; on a machine so loaded that its 10 ms window ran out
        // first, the attempt is made again.
        for _ in 0..5 {
            let (entered, release) = (
                std::sync::Arc::new(AtomicBool::new(false)),
                std::sync::Arc::new(AtomicBool::new(false)),
            );
            let spinner = {
                let (spin, entered, release) = (spin.clone(), entered.clone(), release.clone());
                std::thread::spawn(move || {
                    spin.spin(Instant::now(), || {
                        entered.store(true, Ordering::SeqCst);
                        release.load(Ordering::SeqCst).then_some(())
                    })
                })
            };
            while !entered.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            let mut polls = 0;
            let second = spin.spin(Instant::now(), || {
                polls += 1;
                Some(())
            });
            release.store(true, Ordering::SeqCst);
            if spinner.join().unwrap().is_some() {
                assert_eq!((second, polls), (None, 0), "a second thread spun");
                return;
            }
        }
        panic!("the first spinner never held its place for 10 ms");
    }
}
