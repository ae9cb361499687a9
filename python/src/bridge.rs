//! The one place where the two faces differ: a blocking call waits on
//! Busbar's runtime with the GIL released; an asyncio call returns an
//! `asyncio.Future` that its work resolves on the loop's thread (`loop_io`),
//! or, on a loop that cannot watch descriptors, a runtime task resolves
//! through the event loop.

use crate::convert::{ToPython, to_pyerr};
use crate::locked;
use busbar_client::Error;
use busbar_client::spin::SpinWait;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::IntoPyDict;
use std::future::Future;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::runtime::Runtime;

/// Threads of Busbar's runtime. One thread carries every connection's I/O:
/// with two, a call from Python woke one worker and that worker woke the
/// other to look for work, so a unary call cost the client 6.1 context
/// switches and 102 µs of CPU; with one, 3.6 and 67 µs, and sequential calls
/// took 8-15 % less time (sync and asyncio alike). Reads of 1 M points, one
/// or four at a time, were as fast as with two (measured on 2 cores).
const RUNTIME_THREADS: usize = 1;

/// Busbar's own runtime, made again in a child after `fork()` (the parent's
/// worker threads do not exist there). Connections made before a fork belong
/// to the parent's runtime and are not usable in the child.
pub(crate) fn runtime() -> &'static Runtime {
    static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);
    let mut slot = locked(&RUNTIME);
    let pid = std::process::id();
    match *slot {
        Some((owner, runtime)) if owner == pid => runtime,
        _ => {
            // The old runtime (if any) is the parent's: leaked, never dropped,
            // because dropping would wait for threads that are not there.
            let runtime: &'static Runtime = Box::leak(Box::new(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(RUNTIME_THREADS)
                    .thread_name("busbar-runtime")
                    .enable_all()
                    .build()
                    .expect("a tokio runtime can be built"),
            ));
            *slot = Some((pid, runtime));
            runtime
        }
    }
}

/// Runtime threads inside Python right now, and whether the interpreter is
/// exiting. A runtime thread that waits for the GIL while the interpreter
/// finalizes is ended by CPython mid-call (an abort), so `at_exit` stops new
/// entries and waits for the ones in flight before finalization starts.
static IN_PYTHON: AtomicUsize = AtomicUsize::new(0);
static EXITING: AtomicBool = AtomicBool::new(false);

/// Runs `f` with the GIL from a runtime thread, unless the interpreter exits.
fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    IN_PYTHON.fetch_add(1, Ordering::SeqCst);
    let result = if EXITING.load(Ordering::SeqCst) {
        None
    } else {
        Python::try_attach(f)
    };
    IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
    result
}

/// Registered with `atexit` by `busbar/__init__.py`.
#[pyfunction]
pub(crate) fn at_exit(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while IN_PYTHON.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
}

/// Which face an object serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Face {
    Blocking,
    Asyncio,
}

/// The work behind a Python call: a future a runtime thread can take.
pub(crate) trait Work<T>: Future<Output = Result<T, Error>> + Send + 'static {}
impl<T, F: Future<Output = Result<T, Error>> + Send + 'static> Work<T> for F {}

/// What that work gives back: a value Python gets.
pub(crate) trait Value: ToPython + Send + 'static {}
impl<T: ToPython + Send + 'static> Value for T {}

/// A Python call's answer: its result (blocking face) or an awaitable.
pub(crate) type Answer<'py> = PyResult<Bound<'py, PyAny>>;

/// Runs `work` for `face`: the result itself (blocking) or an awaitable.
pub(crate) fn finish<T: Value>(py: Python<'_>, face: Face, work: impl Work<T>) -> Answer<'_> {
    finish_from(py, face, work, Start::OnRuntime)
}

/// `finish` for a stream's send, which waits for room in a queue: its
/// caller never spins, since the wait ends when the far end catches up and
/// spinning would take a CPU from it (a publisher faster than its
/// subscribers spun the whole time and slowed their delivery).
pub(crate) fn finish_send(py: Python<'_>, face: Face, work: impl Work<()>) -> Answer<'_> {
    finish_from(py, face, work, Start::Queued)
}

/// `finish` for reading a stream's next item, which is often buffered
/// already: the asyncio face then returns it without handing the read to a
/// runtime thread and back (the blocking face always looks first).
pub(crate) fn finish_read<T: Value>(py: Python<'_>, face: Face, work: impl Work<T>) -> Answer<'_> {
    finish_from(py, face, work, Start::HereFirst)
}

/// Where work is polled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Asyncio: on a runtime thread, since the work may do more than look at
    /// a buffer before its first await, which must not hold up the event
    /// loop. Blocking: once on the caller's thread, then as a runtime task
    /// (`wait_for_task`).
    OnRuntime,
    /// Asyncio: once on the awaiting thread, then on a runtime thread if not
    /// ready. Blocking: on the caller's thread until done, so a stream item
    /// that arrives wakes the reader directly. Never spins: a stream may be
    /// quiet for long.
    HereFirst,
    /// As `OnRuntime`, for a wait for room in a queue: never spins.
    Queued,
}

fn finish_from<'py, T: Value>(
    py: Python<'py>,
    face: Face,
    work: impl Work<T>,
    start: Start,
) -> Answer<'py> {
    match face {
        Face::Blocking => {
            let outcome = py.detach(|| {
                let outcome = match start {
                    Start::OnRuntime => wait_for_task(work, Some(&SPIN)),
                    Start::Queued => wait_for_task(work, None),
                    Start::HereFirst => runtime().block_on(interruptible(work)),
                };
                // A (daemon) thread must not take the GIL back while the
                // interpreter finalizes: CPython would end it mid-frame.
                while EXITING.load(Ordering::SeqCst) {
                    std::thread::park();
                }
                outcome
            });
            match outcome {
                Ok(value) => value.to_python(py).map(|v| v.into_bound(py)),
                Err(Interrupted::Failed(error)) => Err(to_pyerr(py, &error)),
                Err(Interrupted::Signal(error)) => Err(error),
            }
        }
        Face::Asyncio => {
            let work: PendingWork = Box::pin(async move {
                let value = work.await?;
                Ok(Box::new(move |py: Python<'_>| value.to_python(py)) as Convert)
            });
            let pending = Pending {
                work: Mutex::new(Some(work)),
                start,
            };
            Ok(Bound::new(py, pending)?.into_any())
        }
    }
}

enum Interrupted {
    Failed(Error),
    Signal(PyErr),
}

/// Polls `work` once on this thread, in `runtime`'s context, with a waker
/// that does nothing: when it is not ready, the runtime task it is handed to
/// polls it again at once, with its own waker.
fn poll_here<F: Future + ?Sized>(
    runtime: &Runtime,
    work: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    let _runtime = runtime.enter();
    work.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

/// How long a blocking call spins for its outcome before it parks
/// (`busbar.set_spin_limit`; see `busbar_client::spin` for why). Off until
/// the user opts in: spinning spends the user's CPU, and it pays only on
/// virtual machines where nothing polls before an idle vCPU halts (the
/// host's halt-polling off, no guest haltpoll); elsewhere the kernel
/// already does this.
static SPIN: SpinWait = SpinWait::new(std::time::Duration::ZERO);

/// How long an awaited call keeps its event loop turning (polling instead of
/// sleeping in its selector) for the answer: the same rule, on the loop's
/// thread (`busbar._bridge.spin`), with a window of its own; off as `SPIN`.
static LOOP_SPIN: SpinWait = SpinWait::new(std::time::Duration::ZERO);

/// `busbar.set_spin_limit(seconds)`: the most a blocking call spins before
/// it parks; 0 (the default) turns spinning off.
#[pyfunction]
pub(crate) fn set_spin_limit(py: Python<'_>, seconds: Bound<'_, PyAny>) -> PyResult<()> {
    let invalid = |why: String| {
        to_pyerr(
            py,
            &Error::new(busbar_client::ErrorCode::InvalidArgument, why),
        )
    };
    let value: f64 = seconds.extract().map_err(|_| {
        invalid(format!(
            "the spin limit is a number of seconds, not {seconds}"
        ))
    })?;
    if !value.is_finite() || value < 0.0 {
        return Err(invalid(format!(
            "the spin limit is 0 or more seconds, not {value}"
        )));
    }
    let limit = std::time::Duration::from_secs_f64(value);
    SPIN.set_limit(limit)
        .and_then(|()| LOOP_SPIN.set_limit(limit))
        .map_err(|error| to_pyerr(py, &error))
}

/// `busbar.spin_limit()`: the limit in seconds.
#[pyfunction]
pub(crate) fn spin_limit() -> f64 {
    SPIN.limit().as_secs_f64()
}

/// How often a blocked caller looks for a Python signal (Ctrl-C).
const SIGNAL_CHECK_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs `work` as a runtime task and waits for its outcome on this thread,
/// checking every `SIGNAL_CHECK_PERIOD` whether Python has a signal to
/// handle; a signal aborts the task, which cancels the work.
///
/// Work that is ready at once (a chunk into a queue with room) returns
/// without a hand-off. Otherwise the caller spins for the outcome for
/// `spin`'s window (if given), then parks. The call finishes on the runtime thread,
/// next to the connection task: when the caller polled it itself
/// (`block_on`), each step of the response (headers, data, trailers) could
/// wake the caller separately, and the caller took h2's stream lock from
/// another thread than the connection's. The wait is a channel with a
/// timeout, so no runtime timer is armed per call either.
fn wait_for_task<T, F>(work: F, spin: Option<&SpinWait>) -> Result<T, Interrupted>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    let runtime = runtime();
    let mut work = Box::pin(work);
    if let std::task::Poll::Ready(outcome) = poll_here(runtime, work.as_mut()) {
        return outcome.map_err(Interrupted::Failed);
    }
    let started = std::time::Instant::now();
    let (done, outcome) = std::sync::mpsc::sync_channel(1);
    let task = runtime.spawn(async move {
        // The caller may be gone (a signal): nobody needs the outcome then.
        let _ = done.send(work.await);
    });
    let finished = |outcome: Result<T, Error>| {
        if let Some(spin) = spin {
            spin.finished(started.elapsed());
        }
        outcome.map_err(Interrupted::Failed)
    };
    if let Some(outcome) = spin.and_then(|spin| spin.spin(started, || outcome.try_recv().ok())) {
        return finished(outcome);
    }
    loop {
        match outcome.recv_timeout(SIGNAL_CHECK_PERIOD) {
            Ok(outcome) => return finished(outcome),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Some(Err(error)) = with_python(|py| py.check_signals()) {
                    task.abort();
                    return Err(Interrupted::Signal(error));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Interrupted::Failed(Error::new(
                    busbar_client::ErrorCode::Internal,
                    "the call's task ended without an outcome (it panicked)",
                )));
            }
        }
    }
}

/// Waits for `work`, checking every `SIGNAL_CHECK_PERIOD` whether Python has
/// a signal to handle (Ctrl-C) so a blocking read can be interrupted; the
/// work is dropped, which cancels it.
async fn interruptible<T, F>(work: F) -> Result<T, Interrupted>
where
    F: Future<Output = Result<T, Error>>,
{
    let signals = async {
        // The first check comes after one period: a call that ends sooner
        // (most do) never takes the GIL back just to look for signals.
        let period = SIGNAL_CHECK_PERIOD;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tick.tick().await;
            if let Some(Err(error)) = with_python(|py| py.check_signals()) {
                return error;
            }
        }
    };
    tokio::select! {
        // The work first: when it is ready at once (a buffered stream item),
        // the signal timer is never registered.
        biased;
        outcome = work => outcome.map_err(Interrupted::Failed),
        error = signals => Err(Interrupted::Signal(error)),
    }
}

type Convert = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;
type PendingWork = std::pin::Pin<Box<dyn Future<Output = Result<Convert, Error>> + Send>>;

/// The awaitable the asyncio face returns. Like a coroutine, nothing happens
/// until it is awaited (in a running event loop); then the work runs on the
/// loop's thread (`loop_io`; on Busbar's runtime where the loop has no
/// executor) and cancelling the await cancels it.
#[pyclass(module = "busbar._core")]
struct Pending {
    work: Mutex<Option<PendingWork>>,
    start: Start,
}

#[pymethods]
impl Pending {
    fn __await__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let work = locked(&self.work).take();
        let work = work.ok_or_else(|| {
            to_pyerr(
                py,
                &Error::new(
                    busbar_client::ErrorCode::FailedPrecondition,
                    "this awaitable was already awaited; call the method again",
                ),
            )
        })?;
        spawn_for_asyncio(py, work, self.start)?.call_method0("__await__")
    }
}

/// `asyncio.get_running_loop`, the future class and the doorbell lookup,
/// looked up once: each await would otherwise import and look them up again.
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static AWAITED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static DOORBELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOOP_EXEC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SPIN_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn resolve_function(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    RESOLVE.import(py, "busbar._bridge", "resolve")
}

fn spawn_for_asyncio<'py>(
    py: Python<'py>,
    mut work: PendingWork,
    start: Start,
) -> PyResult<Bound<'py, PyAny>> {
    let event_loop = GET_RUNNING_LOOP
        .import(py, "asyncio", "get_running_loop")?
        .call0()
        .map_err(|_| {
            to_pyerr(
                py,
                &Error::new(
                    busbar_client::ErrorCode::FailedPrecondition,
                    "busbar.aio is used from a coroutine with a running event loop; use busbar.Connection outside asyncio",
                ),
            )
        })?;
    let loop_argument = [("loop", &event_loop)].into_py_dict(py)?;
    let future = AWAITED
        .import(py, "busbar._bridge", "Awaited")?
        .call((), Some(&loop_argument))?;
    let runtime = runtime();
    if start == Start::HereFirst
        && let std::task::Poll::Ready(outcome) = poll_here(runtime, work.as_mut())
    {
        let (error, value) = settle(py, outcome);
        resolve_function(py)?.call1((&future, error, value))?;
        return Ok(future);
    }
    let future_handle = future.clone().unbind();
    let exec = LOOP_EXEC
        .import(py, "busbar._bridge", "loop_exec")?
        .call1((&event_loop,))?;
    if let Ok(exec) = exec.cast::<crate::loop_io::LoopExec>() {
        // The work runs on the loop's thread: polled at once, so a request
        // is on the wire before the await yields, and it resolves the
        // future in place when done.
        let exec = exec.get().0.clone();
        let started = std::time::Instant::now();
        let spins = start == Start::OnRuntime;
        let task = exec.spawn_now(Box::pin(async move {
            let outcome = work.await;
            if spins {
                LOOP_SPIN.finished(started.elapsed());
            }
            Python::attach(|py| {
                let (error, value) = settle(py, outcome);
                if let Ok(resolve) = resolve_function(py) {
                    let _ = resolve.call1((future_handle, error, value));
                }
            });
        }));
        future.setattr("abort", AbortTask(Abort::Loop(task)))?;
        let window = LOOP_SPIN.window();
        if spins && !window.is_zero() && !future.call_method0("done")?.is_truthy()? {
            SPIN_LOOP.import(py, "busbar._bridge", "spin")?.call1((
                &event_loop,
                &future,
                window.as_secs_f64(),
            ))?;
        }
        return Ok(future);
    }
    let doorbell = DOORBELL
        .import(py, "busbar._bridge", "doorbell")?
        .call1((&event_loop,))?;
    let task = match doorbell.cast::<Doorbell>() {
        Ok(doorbell) => {
            let bell = doorbell.get().0.clone();
            runtime.spawn(async move { bell.ring(future_handle, work.await) })
        }
        Err(_) => {
            let (resolve, loop_handle) =
                (resolve_function(py)?.clone().unbind(), event_loop.unbind());
            runtime.spawn(async move {
                let outcome = work.await;
                with_python(|py| {
                    let (error, value) = settle(py, outcome);
                    // A closed loop cannot take the result: nobody waits for it any more.
                    let _ = loop_handle.bind(py).call_method1(
                        "call_soon_threadsafe",
                        (resolve, future_handle, error, value),
                    );
                });
            })
        }
    };
    // `Awaited.cancel` calls it: a cancelled await cancels the work.
    future.setattr("abort", AbortTask(Abort::Tokio(task.abort_handle())))?;
    Ok(future)
}

/// Finished work as the `(error, value)` pair `busbar._bridge.resolve` takes.
fn settle(py: Python<'_>, outcome: Result<Convert, Error>) -> (Py<PyAny>, Py<PyAny>) {
    let converted = match outcome {
        Ok(convert) => convert(py),
        Err(error) => Err(to_pyerr(py, &error)),
    };
    match converted {
        Ok(value) => (py.None(), value),
        Err(error) => (error.into_value(py).into_any(), py.None()),
    }
}

/// How finished asyncio work reaches an event loop without an executor
/// (`busbar._bridge.loop_exec` gave none): the runtime thread queues
/// the outcome and writes one byte to a pipe the loop watches (`add_reader`);
/// the loop's thread converts and resolves everything queued.
///
/// A runtime thread never takes the GIL for this. Handing results over with
/// `call_soon_threadsafe` needed it, and the GIL went back and forth between
/// the runtime thread and the loop's thread: three thread wake-ups per await
/// where this takes one. Measured on a 2-core VM, an await that fails before
/// the network (so only the hand-offs count) took 155 µs and now takes 118.
#[pyclass(frozen, module = "busbar._core")]
pub(crate) struct Doorbell(Arc<Bell>);

/// A finished await: its asyncio future and what the work produced.
type Rung = (Py<PyAny>, Result<Convert, Error>);

struct Bell {
    rung: Mutex<Vec<Rung>>,
    /// Whether a byte is in the pipe that `drain` has not read yet: at most
    /// one ever is, so neither end can block.
    signalled: AtomicBool,
    reader: std::io::PipeReader,
    writer: std::io::PipeWriter,
}

impl Bell {
    fn ring(&self, future: Py<PyAny>, outcome: Result<Convert, Error>) {
        locked(&self.rung).push((future, outcome));
        if !self.signalled.swap(true, Ordering::AcqRel) {
            // Fails only when the reading end is gone, with the loop.
            let _ = (&self.writer).write_all(&[1]);
        }
    }
}

#[pymethods]
impl Doorbell {
    #[new]
    fn new() -> PyResult<Doorbell> {
        let (reader, writer) = std::io::pipe()?;
        Ok(Doorbell(Arc::new(Bell {
            rung: Mutex::new(Vec::new()),
            signalled: AtomicBool::new(false),
            reader,
            writer,
        })))
    }

    /// The descriptor the event loop watches.
    fn fileno(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.0.reader.as_raw_fd()
    }

    /// Called by the event loop when the pipe is readable: resolves every
    /// finished future (one that was cancelled meanwhile stays cancelled).
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let bell = &self.0;
        // Readable means the one byte is there; reading it before taking the
        // queue means work queued after the take rings again.
        (&bell.reader).read_exact(&mut [0])?;
        bell.signalled.store(false, Ordering::Release);
        let rung = std::mem::take(&mut *locked(&bell.rung));
        let resolve = resolve_function(py)?;
        let mut first_failure = None;
        for (future, outcome) in rung {
            let (error, value) = settle(py, outcome);
            if let Err(failure) = resolve.call1((future, error, value)) {
                first_failure.get_or_insert(failure);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}

/// Called by `Awaited.cancel`: a cancelled await cancels the work.
#[pyclass]
struct AbortTask(Abort);

enum Abort {
    Tokio(tokio::task::AbortHandle),
    Loop(Arc<crate::loop_io::Task>),
}

#[pymethods]
impl AbortTask {
    fn __call__(&self) {
        match &self.0 {
            Abort::Tokio(handle) => handle.abort(),
            Abort::Loop(task) => task.abort(),
        }
    }
}
