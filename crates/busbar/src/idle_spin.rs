//! Idle spinning for the node: the thread that waits for I/O polls for a
//! short, adaptive window before it sleeps in the kernel.
//!
//! Why: a sleeping thread lets its CPU go idle, and on a virtual machine an
//! idle vCPU halts; the next packet then has to wake it through the
//! hypervisor. On the 2-vCPU VM of `bench/README.md` that is most of a short
//! call's latency. Go's scheduler, and so NATS, polls the network before it
//! sleeps for the same reason, and Linux's `cpuidle-haltpoll` does it below
//! the guest.
//!
//! How: tokio's I/O driver waits in `epoll_wait` (through mio), and neither
//! offers a hook inside that wait. So this binary defines `epoll_wait`
//! itself: the linker binds mio's calls to a definition in the executable
//! before libc's. A wait with a timeout first polls (`epoll_pwait` with a
//! zero timeout), giving the CPU to any other runnable thread between polls
//! so that a spinning node does not starve a database or a client on the
//! same machine; it returns as soon as events come, and otherwise goes on
//! to the real wait with what is left of the timeout. Only the worker that
//! owns tokio's driver waits there, so the spinning thread is always the one
//! that will handle the I/O. (A first version spun in tokio's park hook
//! instead, where it cannot know which worker will own the driver; a mesh
//! call through the node was 17 % slower that way.)
//!
//! The window adapts as haltpoll's does ([`SpinWait`]): waits that spinning
//! could not have shortened shrink it to nothing, so a quiet node does not
//! spin, and only one thread spins at a time. `--idle-spin-microseconds`
//! sets its limit; 0 turns it off, and every wait goes straight to the
//! kernel as before.

use busbar_client::spin::SpinWait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Off until the node's configuration sets a limit.
static SPIN: SpinWait = SpinWait::new(Duration::ZERO);
/// Spins begun, and spins that ended because events came.
static SPINS: AtomicU64 = AtomicU64::new(0);
static SPINS_WITH_EVENTS: AtomicU64 = AtomicU64::new(0);

/// Sets how long a wait for I/O may spin; zero turns spinning off. A limit
/// over `SpinWait`'s largest is refused and changes nothing.
pub fn set_limit(limit: Duration) -> busbar_client::Result<()> {
    SPIN.set_limit(limit)
}

/// Spins begun, and of those the ones that ended because events came.
pub fn counts() -> (u64, u64) {
    (
        SPINS.load(Ordering::Relaxed),
        SPINS_WITH_EVENTS.load(Ordering::Relaxed),
    )
}

/// `epoll_wait(2)`, spinning first (see the module's documentation).
/// Linux only: elsewhere tokio waits in kqueue or IOCP, and the setting
/// changes nothing.
///
/// # Safety
/// As `epoll_wait(2)`: `events` must have room for `max_events` entries.
#[cfg(target_os = "linux")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_wait(
    epoll: libc::c_int,
    events: *mut libc::epoll_event,
    max_events: libc::c_int,
    timeout_ms: libc::c_int,
) -> libc::c_int {
    // SAFETY: the caller's arguments, passed on; `epoll_pwait` with no
    // signal mask is `epoll_wait` (and the one of the two every Linux
    // architecture has).
    let wait = |timeout_ms: libc::c_int| unsafe {
        libc::syscall(
            libc::SYS_epoll_pwait,
            epoll,
            events,
            max_events,
            timeout_ms,
            std::ptr::null::<libc::sigset_t>(),
            8,
        ) as libc::c_int
    };
    // A zero window still times the wait: that is how the window grows.
    if timeout_ms == 0 || SPIN.limit().is_zero() {
        return wait(timeout_ms);
    }
    let started = Instant::now();
    let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
    let mut polled = false;
    let spun = SPIN.spin(started, || {
        polled = true;
        let ready = wait(0);
        if ready != 0 {
            return Some(ready);
        }
        if timeout.is_some_and(|timeout| started.elapsed() >= timeout) {
            return Some(0);
        }
        std::thread::yield_now();
        None
    });
    if polled {
        SPINS.fetch_add(1, Ordering::Relaxed);
    }
    let ready = match spun {
        Some(ready) => {
            if ready > 0 {
                SPINS_WITH_EVENTS.fetch_add(1, Ordering::Relaxed);
            }
            ready
        }
        // What is left of the timeout, rounded up as mio rounds it: a wait
        // never ends before its timeout.
        None => wait(timeout.map_or(-1, |timeout| {
            let left = timeout.saturating_sub(started.elapsed());
            left.as_micros().div_ceil(1000) as libc::c_int
        })),
    };
    SPIN.finished(started.elapsed());
    ready
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Mutex;

    /// The tests share the process's spin settings.
    static SETTINGS: Mutex<()> = Mutex::new(());

    /// Spinning on, the runtime serves I/O as before, its waits spin (so
    /// mio's calls reach this `epoll_wait`), and spins end when a request
    /// arrives.
    #[test]
    fn spins_end_when_io_arrives_and_io_is_served() {
        let _settings = SETTINGS.lock().unwrap_or_else(|p| p.into_inner());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        set_limit(busbar_client::spin::MAX_LIMIT).unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut byte = [0u8; 1];
            while socket.read_exact(&mut byte).await.is_ok() {
                socket.write_all(&byte).await.unwrap();
            }
        });
        let mut client = std::net::TcpStream::connect(address).unwrap();
        let (spins, with_events) = counts();
        for round in 0..200u32 {
            client.write_all(&[round as u8]).unwrap();
            let mut echo = [0u8; 1];
            client.read_exact(&mut echo).unwrap();
            assert_eq!(echo[0], round as u8);
            std::thread::sleep(Duration::from_micros(500));
        }
        let (spins_after, with_events_after) = counts();
        set_limit(Duration::ZERO).unwrap();
        assert!(spins_after > spins, "the driver's waits spun");
        assert!(
            with_events_after > with_events,
            "a spin ended with a request"
        );
    }

    /// A wait that times out while spinning returns no events, on time.
    #[test]
    fn a_spinning_wait_keeps_its_timeout() {
        let _settings = SETTINGS.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: plain descriptor calls; the descriptor is closed below.
        unsafe {
            let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            assert!(epoll >= 0);
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // Off; a window shorter than the timeout (a spin, then the rest
            // in the kernel); one longer (the whole wait spins).
            for limit_us in [0, 1_000, 10_000] {
                set_limit(Duration::from_micros(limit_us)).unwrap();
                // Grow the window to the limit, as a busy node's would.
                for _ in 0..20 {
                    SPIN.finished(Duration::from_micros(limit_us / 2));
                }
                let started = Instant::now();
                assert_eq!(epoll_wait(epoll, events.as_mut_ptr(), 4, 3), 0);
                let took = started.elapsed();
                assert!(
                    took >= Duration::from_millis(3) && took < Duration::from_secs(1),
                    "limit {limit_us} µs: {took:?}"
                );
            }
            set_limit(Duration::ZERO).unwrap();
            libc::close(epoll);
        }
    }
}
