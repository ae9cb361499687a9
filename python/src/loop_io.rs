//! An asyncio connection's socket and background work on its event loop's
//! own thread.
//!
//! With the work on Busbar's runtime thread, every await took two thread
//! hand-offs (loop → runtime → loop); a thread wake-up costs about 35 µs on
//! the 2-core VM the benchmarks run on. Here the loop thread builds and
//! writes the request itself, watches the socket (`loop.add_reader`), and
//! runs TLS, HTTP/2 and the call's completion when the answer arrives, as a
//! pure-asyncio client does: an await wakes no other thread.
//!
//! * `Exec` is a run queue per loop. The loop drains it in one callback;
//!   a task woken from another thread (a runtime timer, the session task)
//!   rings a pipe the loop watches.
//! * `LoopTransport` is busbar-client's `Transport`: tonic spawns the
//!   HTTP/2 connection task and the channel's buffer worker through it, and
//!   it wraps the TCP stream in a `LoopIo`, a non-blocking socket whose
//!   readiness the loop reports.
//! * A connection belongs to the loop that opened it (its socket is
//!   registered there); `LoopTransport::check_here` refuses the others.

use crate::locked;
use pyo3::prelude::*;
use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};

type Work = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// Whether this thread is draining a loop executor's queue right now:
    /// a task woken meanwhile is polled in the same drain, with no ring.
    static DRAINING: Cell<bool> = const { Cell::new(false) };
    /// Bytes read from sockets in the current drain (see `READ_PER_TURN`).
    static READ_THIS_TURN: Cell<usize> = const { Cell::new(0) };
}

/// How much a connection reads in one turn of the loop before it lets the
/// loop run its other callbacks: a large read (a 1 M-point series is 16 MB
/// of TLS) would otherwise hold the loop for its whole length.
const READ_PER_TURN: usize = 1 << 20;

/// Polls in one turn of the loop, at most: a task that keeps waking itself
/// must not hold the loop either. The rest waits for the next turn.
const POLLS_PER_TURN: usize = 1024;

pub(crate) struct Exec {
    queue: Mutex<VecDeque<Arc<Task>>>,
    /// Readers that used up their turn: woken on the loop's next turn.
    next_turn: Mutex<Vec<Waker>>,
    signalled: AtomicBool,
    reader: std::io::PipeReader,
    writer: std::io::PipeWriter,
    /// A weak reference to the loop: the loop holds this executor's reader.
    event_loop: Py<PyAny>,
    /// The loop's thread.
    thread: std::thread::ThreadId,
}

pub(crate) struct Task {
    work: Mutex<Option<Work>>,
    queued: AtomicBool,
    exec: Weak<Exec>,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(exec) = self.exec.upgrade() {
            exec.push(self.clone());
        }
    }
}

impl Task {
    pub(crate) fn abort(&self) {
        locked(&self.work).take();
    }
}

impl Exec {
    /// The loop, unless it is gone.
    fn event_loop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let event_loop = self.event_loop.bind(py).call0()?;
        if event_loop.is_none() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "the event loop of this connection is gone",
            ));
        }
        Ok(event_loop)
    }

    /// Whether this thread is running this executor's loop right now.
    fn is_here(&self) -> bool {
        std::thread::current().id() == self.thread
            && Python::attach(|py| {
                let running = py
                    .import("asyncio")
                    .and_then(|asyncio| asyncio.call_method0("_get_running_loop"));
                match (running, self.event_loop(py)) {
                    (Ok(running), Ok(own)) => running.is(&own),
                    _ => false,
                }
            })
    }

    fn push(&self, task: Arc<Task>) {
        locked(&self.queue).push_back(task);
        if !DRAINING.get() {
            self.ring();
        }
    }

    pub(crate) fn spawn(self: &Arc<Self>, work: Work) -> Arc<Task> {
        let task = Arc::new(Task {
            work: Mutex::new(Some(work)),
            queued: AtomicBool::new(false),
            exec: Arc::downgrade(self),
        });
        task.wake_by_ref();
        task
    }

    /// Spawns `work` and polls it at once, on this (the loop's) thread.
    pub(crate) fn spawn_now(self: &Arc<Self>, work: Work) -> Arc<Task> {
        let outer = DRAINING.replace(true);
        let task = self.spawn(work);
        DRAINING.set(outer);
        self.drain();
        task
    }

    /// Polls every queued task, and those they wake, until none is left
    /// (or `POLLS_PER_TURN` polls are done: the pipe then brings the loop
    /// back for the rest).
    pub(crate) fn drain(&self) {
        let outer = DRAINING.replace(true);
        if !outer {
            READ_THIS_TURN.set(0);
        }
        let _runtime = crate::bridge::runtime().enter();
        for _ in 0..POLLS_PER_TURN {
            let next = locked(&self.queue).pop_front();
            let Some(task) = next else { break };
            task.queued.store(false, Ordering::Release);
            let waker = Waker::from(task.clone());
            let mut slot = locked(&task.work);
            if let Some(work) = slot.as_mut()
                && work
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_ready()
            {
                *slot = None;
            }
        }
        DRAINING.set(outer);
        if !locked(&self.queue).is_empty() {
            self.ring();
        }
    }

    /// Makes the loop call `LoopExec.ring` (once, however often rung).
    fn ring(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            let _ = (&self.writer).write_all(&[1]);
        }
    }

    /// Wakes `waker` on the loop's next turn.
    fn next_turn(&self, waker: &Waker) {
        locked(&self.next_turn).push(waker.clone());
        self.ring();
    }
}

/// A loop's executor, for Python: `loop.add_reader(exec.fileno(), exec.ring)`.
#[pyclass(frozen, module = "busbar._core")]
pub(crate) struct LoopExec(pub(crate) Arc<Exec>);

#[pymethods]
impl LoopExec {
    #[new]
    fn new(py: Python<'_>, event_loop: Bound<'_, PyAny>) -> PyResult<LoopExec> {
        let event_loop = py
            .import("weakref")?
            .call_method1("ref", (event_loop,))?
            .unbind();
        let (reader, writer) = std::io::pipe()?;
        Ok(LoopExec(Arc::new(Exec {
            queue: Mutex::new(VecDeque::new()),
            next_turn: Mutex::new(Vec::new()),
            signalled: AtomicBool::new(false),
            reader,
            writer,
            event_loop,
            thread: std::thread::current().id(),
        })))
    }

    fn fileno(&self) -> i32 {
        self.0.reader.as_raw_fd()
    }

    /// The pipe is readable: one byte is there.
    fn ring(&self) -> PyResult<()> {
        (&self.0.reader).read_exact(&mut [0])?;
        self.0.signalled.store(false, Ordering::Release);
        let waiting = std::mem::take(&mut *locked(&self.0.next_turn));
        let outer = DRAINING.replace(true);
        waiting.into_iter().for_each(Waker::wake);
        DRAINING.set(outer);
        self.0.drain();
        Ok(())
    }
}

/// The socket's registration with the loop. Its executor is held weakly:
/// the executor's queue holds the task that holds this socket, and a
/// connection left open when its loop is gone must not keep both alive.
struct Interest {
    exec: Weak<Exec>,
    fd: i32,
    read: Mutex<Option<Waker>>,
    write: Mutex<Option<Waker>>,
    writing: AtomicBool,
    closed: AtomicBool,
}

#[pyclass(frozen)]
struct Ready {
    interest: Arc<Interest>,
    writable: bool,
}

#[pymethods]
impl Ready {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let interest = &self.interest;
        let Some(exec) = interest.exec.upgrade() else {
            return Ok(());
        };
        let waker = if self.writable {
            interest.writing.store(false, Ordering::Release);
            exec.event_loop(py)?
                .call_method1("remove_writer", (interest.fd,))?;
            locked(&interest.write).take()
        } else {
            locked(&interest.read).take()
        };
        let outer = DRAINING.replace(true);
        if let Some(waker) = waker {
            waker.wake();
        }
        DRAINING.set(outer);
        exec.drain();
        Ok(())
    }
}

impl Interest {
    fn stop_reading(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let Some(exec) = self.exec.upgrade() else {
                return;
            };
            Python::attach(|py| {
                if let Ok(event_loop) = exec.event_loop(py) {
                    let _ = event_loop.call_method1("remove_reader", (self.fd,));
                    let _ = event_loop.call_method1("remove_writer", (self.fd,));
                }
            });
        }
    }
}

pub(crate) struct LoopIo {
    socket: std::net::TcpStream,
    interest: Arc<Interest>,
}

impl Drop for LoopIo {
    fn drop(&mut self) {
        self.interest.stop_reading();
    }
}

impl LoopIo {
    fn would_block<T>(
        &self,
        result: std::io::Result<T>,
        cx: &mut Context<'_>,
        writing: bool,
    ) -> Poll<std::io::Result<T>> {
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let interest = &self.interest;
                if writing {
                    *locked(&interest.write) = Some(cx.waker().clone());
                    if !interest.writing.swap(true, Ordering::AcqRel) {
                        let registered = Python::attach(|py| {
                            let ready = Py::new(
                                py,
                                Ready {
                                    interest: interest.clone(),
                                    writable: true,
                                },
                            )?;
                            let exec = interest.exec.upgrade().ok_or_else(|| {
                                pyo3::exceptions::PyRuntimeError::new_err(
                                    "the event loop of this connection is gone",
                                )
                            })?;
                            exec.event_loop(py)?
                                .call_method1("add_writer", (interest.fd, ready))?;
                            PyResult::Ok(())
                        });
                        if let Err(e) = registered {
                            return Poll::Ready(Err(std::io::Error::other(e.to_string())));
                        }
                    }
                } else {
                    *locked(&interest.read) = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            other => Poll::Ready(other),
        }
    }
}

impl tokio::io::AsyncRead for LoopIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if READ_THIS_TURN.get() >= READ_PER_TURN {
            match this.interest.exec.upgrade() {
                Some(exec) => exec.next_turn(cx.waker()),
                None => return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            }
            return Poll::Pending;
        }
        let result = (&this.socket).read(buf.initialize_unfilled());
        match this.would_block(result, cx, false) {
            Poll::Ready(Ok(n)) => {
                if n == 0 {
                    this.interest.stop_reading();
                }
                READ_THIS_TURN.set(READ_THIS_TURN.get() + n);
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for LoopIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = (&this.socket).write(buf);
        this.would_block(result, cx, true)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = (&this.socket).write_vectored(bufs);
        this.would_block(result, cx, true)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.socket.shutdown(std::net::Shutdown::Write))
    }
}

/// busbar-client's hook for an asyncio connection: its socket and
/// background work on the loop that awaits the connect (looked up when the
/// connect first needs it), or on Busbar's runtime when that loop has no
/// executor (`busbar._bridge.loop_exec`).
#[derive(Default)]
pub(crate) struct LoopTransport(std::sync::OnceLock<Option<Arc<Exec>>>);

impl LoopTransport {
    /// The executor, once the connect has looked it up.
    pub(crate) fn bound(&self) -> Option<&Arc<Exec>> {
        self.0.get().and_then(Option::as_ref)
    }

    /// FAILED_PRECONDITION unless this runs in the loop the connection was
    /// opened in: its socket is watched there, and that loop may never run
    /// again.
    pub(crate) fn check_here(&self) -> Result<(), busbar_client::Error> {
        match self.bound() {
            Some(exec) if !exec.is_here() => Err(busbar_client::Error::new(
                busbar_client::ErrorCode::FailedPrecondition,
                "this busbar.aio.Connection belongs to the event loop that opened it; open one in this loop",
            )),
            _ => Ok(()),
        }
    }

    fn exec(&self) -> Option<&Arc<Exec>> {
        self.0
            .get_or_init(|| {
                Python::attach(|py| {
                    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
                    let exec = py
                        .import("busbar._bridge")?
                        .call_method1("loop_exec", (event_loop,))?;
                    PyResult::Ok(exec.cast::<LoopExec>().ok().map(|e| e.get().0.clone()))
                })
                .ok()
                .flatten()
            })
            .as_ref()
    }
}

impl busbar_client::Transport for LoopTransport {
    fn wrap(&self, tcp: tokio::net::TcpStream) -> std::io::Result<Box<dyn busbar_client::Io>> {
        let Some(exec) = self.exec() else {
            return Ok(Box::new(tcp));
        };
        let socket = tcp.into_std()?;
        socket.set_nonblocking(true)?;
        let interest = Arc::new(Interest {
            exec: Arc::downgrade(exec),
            fd: socket.as_raw_fd(),
            read: Mutex::new(None),
            write: Mutex::new(None),
            writing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        Python::attach(|py| {
            let ready = Py::new(
                py,
                Ready {
                    interest: interest.clone(),
                    writable: false,
                },
            )?;
            exec.event_loop(py)?
                .call_method1("add_reader", (interest.fd, ready))?;
            PyResult::Ok(())
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Box::new(LoopIo { socket, interest }))
    }

    fn spawn(&self, work: Work) {
        match self.exec() {
            Some(exec) => {
                exec.spawn(work);
            }
            None => {
                crate::bridge::runtime().spawn(work);
            }
        }
    }
}
