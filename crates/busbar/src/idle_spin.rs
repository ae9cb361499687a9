//! Idle spinning for the node's runtime: a worker thread that runs out of
//! work polls for new work for a short, adaptive window before it sleeps.
//!
//! Why: a sleeping thread lets its CPU go idle, and on a virtual machine an
//! idle vCPU halts; the next packet then has to wake it through the
//! hypervisor. On the 2-vCPU VM of `bench/README.md` that is most of a short
//! call's latency (a unary call's p50 went from 170–184 µs to 96–131 µs with
//! this on). Go's scheduler, and so NATS, spins before it sleeps for the
//! same reason, and Linux's `cpuidle-haltpoll` does it below the guest.
//!
//! How: tokio has no spin of its own, but it calls a hook just before a
//! worker parks and another when it wakes. The park hook polls the runtime's
//! epoll instance with a zero timeout, giving the CPU to any other runnable
//! thread between polls (so a spinning node does not starve a database or a
//! client on the same machine), and returns as soon as I/O is ready; the
//! worker then parks and finds it at once. The epoll descriptors are the
//! ones that building the runtime opened (read from `/proc/self/fd`); where
//! none is found, spinning stays off.
//!
//! Only the worker that will own tokio's I/O driver gains from spinning: a
//! worker without it sleeps on a condition variable, and the kernel wakes
//! the driver's owner anyway. tokio does not say who owns it, so the hooks
//! keep a model of it ([`DriverModel`]): the first worker to park takes it,
//! and gives it back when it wakes. A worker spins only while the model says
//! the driver is free.
//!
//! The window adapts as haltpoll's does ([`SpinWait`]): waits that spinning
//! cannot shorten shrink it to nothing, so a quiet node does not spin, and
//! only one thread spins at a time. `--idle-spin-microseconds` sets its
//! limit (0 turns it off).

use busbar_client::spin::SpinWait;
use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Off until the node's configuration sets a limit.
static SPIN: SpinWait = SpinWait::new(Duration::ZERO);
/// The runtime's epoll descriptors, at most [`MAX_WATCHED`].
static WATCHED: OnceLock<Vec<RawFd>> = OnceLock::new();
static DRIVER: DriverModel = DriverModel::new();
/// Spins begun, and spins that ended because work came.
static SPINS: AtomicU64 = AtomicU64::new(0);
static SPINS_WITH_WORK: AtomicU64 = AtomicU64::new(0);

/// More epoll instances than this means the runtime is not the one this
/// module knows; it stays off.
const MAX_WATCHED: usize = 4;

thread_local! {
    /// When this worker began to park, and whether the model gave it the driver.
    static PARKING: Cell<Option<(Instant, bool)>> = const { Cell::new(None) };
}

/// Builds the node's runtime with the spinning hooks (inert until
/// [`set_limit`]).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let before = epoll_descriptors();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(before_park)
        .on_thread_unpark(after_unpark)
        .build()?;
    let opened: Vec<RawFd> = epoll_descriptors()
        .into_iter()
        .filter(|fd| !before.contains(fd))
        .collect();
    let _ = WATCHED.set(opened);
    Ok(runtime)
}

/// Sets how long an idle worker may spin; zero turns spinning off.
pub fn set_limit(limit: Duration) {
    let watched = WATCHED.get().map_or(0, Vec::len);
    if limit.is_zero() || !(1..=MAX_WATCHED).contains(&watched) {
        if !limit.is_zero() {
            tracing::info!(
                "idle spinning is off: the runtime's epoll descriptor was not found ({watched} candidates)"
            );
        }
        let _ = SPIN.set_limit(Duration::ZERO);
        return;
    }
    if let Err(error) = SPIN.set_limit(limit) {
        // The configuration checks the same bound.
        tracing::warn!("idle spinning is off: {}", error.message());
        let _ = SPIN.set_limit(Duration::ZERO);
    }
}

/// Spins begun, and of those the ones that ended because work came.
pub fn counts() -> (u64, u64) {
    (
        SPINS.load(Ordering::Relaxed),
        SPINS_WITH_WORK.load(Ordering::Relaxed),
    )
}

fn before_park() {
    let started = Instant::now();
    if DRIVER.is_free() && !SPIN.window().is_zero() {
        let watched = WATCHED.get().map(Vec::as_slice).unwrap_or_default();
        SPINS.fetch_add(1, Ordering::Relaxed);
        let work = SPIN.spin(started, || {
            // Another worker parked first: it has the driver now.
            if any_ready(watched) || !DRIVER.is_free() {
                return Some(());
            }
            std::thread::yield_now();
            None
        });
        if work.is_some() {
            SPINS_WITH_WORK.fetch_add(1, Ordering::Relaxed);
        }
    }
    PARKING.with(|parking| parking.set(Some((started, DRIVER.take()))));
}

fn after_unpark() {
    if let Some((started, took)) = PARKING.with(Cell::take) {
        if took {
            DRIVER.give_back();
        }
        SPIN.finished(started.elapsed());
    }
}

/// Who owns tokio's I/O driver, as far as the park hooks can tell: the
/// first worker to park takes it (tokio's `try_lock`), and a worker that
/// wakes gives back what it took. It can be wrong for the moment between
/// tokio releasing the driver and the wake hook running; then a worker
/// spins without gain, or does not spin, once.
struct DriverModel {
    free: AtomicBool,
}

impl DriverModel {
    const fn new() -> DriverModel {
        DriverModel {
            free: AtomicBool::new(true),
        }
    }

    fn is_free(&self) -> bool {
        self.free.load(Ordering::Acquire)
    }

    /// A worker parks: whether it gets the driver.
    fn take(&self) -> bool {
        self.free.swap(false, Ordering::AcqRel)
    }

    fn give_back(&self) {
        self.free.store(true, Ordering::Release);
    }
}

/// Whether any of `descriptors` is readable now (for an epoll instance:
/// whether events wait on it).
fn any_ready(descriptors: &[RawFd]) -> bool {
    let mut polled = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_WATCHED];
    let count = descriptors.len().min(MAX_WATCHED);
    for (slot, &fd) in polled.iter_mut().zip(descriptors) {
        *slot = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
    }
    // SAFETY: `polled` holds `count` initialized entries; a zero timeout
    // never blocks.
    unsafe { libc::poll(polled.as_mut_ptr(), count as libc::nfds_t, 0) > 0 }
}

/// The process's open epoll instances.
fn epoll_descriptors() -> Vec<RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventpoll]")
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_first_worker_to_park_takes_the_driver_until_it_wakes() {
        let model = DriverModel::new();
        assert!(model.is_free());
        assert!(model.take(), "first to park");
        assert!(!model.is_free());
        assert!(!model.take(), "the second parks without it");
        model.give_back();
        assert!(model.is_free());
    }

    #[test]
    fn an_epoll_instance_reads_ready_once_an_event_waits_on_it() {
        // SAFETY: plain descriptor calls; every descriptor is closed below.
        unsafe {
            let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            let event = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
            assert!(epoll >= 0 && event >= 0);
            let mut interest = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: 1,
            };
            assert_eq!(
                libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, event, &mut interest),
                0
            );
            assert!(!any_ready(&[epoll]));
            let one = 1u64.to_ne_bytes();
            assert_eq!(libc::write(event, one.as_ptr().cast(), 8), 8);
            assert!(any_ready(&[epoll]));
            assert!(!any_ready(&[]), "nothing watched is never ready");
            libc::close(event);
            libc::close(epoll);
        }
    }

    /// The node's runtime with spinning on serves I/O as before, and its
    /// spins end when a request arrives.
    #[test]
    fn spins_end_when_io_arrives_and_io_is_served() {
        let runtime = runtime().unwrap();
        set_limit(busbar_client::spin::MAX_LIMIT);
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
        let (spins, with_work) = counts();
        for round in 0..200u32 {
            client.write_all(&[round as u8]).unwrap();
            let mut echo = [0u8; 1];
            client.read_exact(&mut echo).unwrap();
            assert_eq!(echo[0], round as u8);
            std::thread::sleep(Duration::from_micros(500));
        }
        let (spins_after, with_work_after) = counts();
        set_limit(Duration::ZERO);
        assert!(spins_after > spins, "the workers spun");
        assert!(with_work_after > with_work, "a spin ended with a request");
    }
}
