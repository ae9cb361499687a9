//! Mesh providers for Python (`conn.provide`) and the descriptors of a
//! Python interface (`@busbar.interface`).
//!
//! A provider is busbar-client's JSON provider; each call routed to it
//! becomes a `CoreProviderCall` that Python pulls with
//! `CoreProvider.next_call` (a thread for the blocking face, a task for the
//! asyncio one) and answers from a worker thread or a task. So no runtime
//! thread ever waits for the GIL: the runtime carries every connection's
//! I/O, and a handler holding the GIL must not stall it.

use crate::bridge::{Face, finish, finish_read, finish_send};
use crate::convert::{ToPython, invalid, py_to_json, to_pyerr};
use crate::locked;
use busbar_client::{CallContext, Client, Error, ErrorCode, InterfaceSchema, JsonCall, Offer};
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The calls run at once when `concurrency=` is not given: the node's
/// default too.
const DEFAULT_CONCURRENCY: u32 = 64;

/// `busbar._core.interface_descriptors(schema)`: the encoded
/// FileDescriptorSet of an interface schema (see
/// `busbar_client::InterfaceSchema`); INVALID_ARGUMENT naming what
/// protobuf cannot express.
#[pyfunction]
pub(crate) fn interface_descriptors<'py>(
    py: Python<'py>,
    schema: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let built = py_to_json(&schema).and_then(|json| {
        let schema: InterfaceSchema = serde_json::from_value(json)
            .map_err(|e| invalid(format!("bad interface schema: {e}")))?;
        busbar_client::interface_descriptors(&schema)
    });
    match built {
        Ok(bytes) => Ok(PyBytes::new(py, &bytes)),
        Err(error) => Err(to_pyerr(py, &error)),
    }
}

fn face(asyncio: bool) -> Face {
    if asyncio {
        Face::Asyncio
    } else {
        Face::Blocking
    }
}

/// Offers `services` (defined by the encoded FileDescriptorSet
/// `descriptors`); returns once the node accepted the offer.
pub(crate) async fn provide(
    face: Face,
    client: Client,
    services: Vec<String>,
    descriptors: Vec<u8>,
    concurrency: u32,
) -> Result<CoreProvider, Error> {
    let concurrency = if concurrency == 0 {
        DEFAULT_CONCURRENCY
    } else {
        concurrency
    };
    // At most `concurrency` handlers run (the client's permit), so each
    // finds room here.
    let (calls_in, calls) = mpsc::channel(concurrency as usize);
    let sender = Arc::new(Mutex::new(Some(calls_in)));
    let handing = sender.clone();
    let offer = Offer::new(services, descriptors).concurrency(concurrency);
    let provided = client
        .provide_json(offer, move |call: JsonCall| {
            let sender = locked(&handing).clone();
            hand_over(sender, call)
        })
        .await?;
    Ok(CoreProvider {
        face,
        id: provided.id.clone(),
        paths: provided.paths.clone(),
        provided: Mutex::new(Some(provided)),
        sender,
        calls: Arc::new(tokio::sync::Mutex::new(calls)),
    })
}

/// One call's handler on the Rust side: hands the call to Python and waits
/// for Python to finish it. Dropped when the caller cancels (or its
/// deadline passes): the call is then marked cancelled, which ends
/// whatever Python waits for in it.
async fn hand_over(
    sender: Option<mpsc::Sender<CoreProviderCall>>,
    call: JsonCall,
) -> Result<(), Error> {
    let closing = || Error::new(ErrorCode::Unavailable, "this provider is closing");
    let sender = sender.ok_or_else(closing)?;
    let (done_in, done) = oneshot::channel();
    let (stage, _) = watch::channel(Stage::Running);
    let stage = Arc::new(stage);
    let _cancel = CancelOnDrop(stage.clone());
    let method = call.method();
    let (client_streaming, server_streaming) =
        (method.is_client_streaming(), method.is_server_streaming());
    let context = call.context.clone();
    let slot = Arc::new(tokio::sync::Mutex::new(Some(call)));
    let _release = Release(slot.clone());
    let handed = CoreProviderCall {
        context,
        client_streaming,
        server_streaming,
        call: slot.clone(),
        stage,
        done: Mutex::new(Some(done_in)),
    };
    sender.send(handed).await.map_err(|_| closing())?;
    let outcome = done.await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorCode::Internal,
            "the provider's handler ended without an answer",
        ))
    });
    // Reads and sends still waiting end with the stage; then the call's
    // half of the stream goes (see `Release`).
    slot.lock().await.take();
    outcome
}

/// Drops a call's `JsonCall` once its handler is over, whoever still holds
/// the Python object (a handler may keep it): what the call holds at the
/// provider goes with the call, not with Python's garbage collector.
struct Release(Arc<tokio::sync::Mutex<Option<JsonCall>>>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Ok(mut call) = self.0.try_lock() {
            call.take();
        }
    }
}

/// Where a call stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Running,
    /// Python finished it (answered or failed).
    Finished,
    /// The caller cancelled it, its deadline passed or the provider closed.
    Cancelled,
}

struct CancelOnDrop(Arc<watch::Sender<Stage>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.send_if_modified(|stage| {
            let running = *stage == Stage::Running;
            if running {
                *stage = Stage::Cancelled;
            }
            running
        });
    }
}

/// `work`, unless the call ends first: a handler still reading or sending
/// after its call was cancelled gets CANCELLED instead of waiting for ever.
async fn unless_ended<T>(
    mut stage: watch::Receiver<Stage>,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let ended = |stage: Stage| match stage {
        Stage::Cancelled => Error::new(
            ErrorCode::Cancelled,
            "the call was cancelled (by its caller, its deadline, or the provider closing)",
        ),
        _ => over(),
    };
    let now = *stage.borrow_and_update();
    if now != Stage::Running {
        return Err(ended(now));
    }
    tokio::select! {
        result = work => result,
        over = stage.wait_for(|s| *s != Stage::Running) => {
            Err(ended(over.map(|s| *s).unwrap_or(Stage::Cancelled)))
        }
    }
}

fn over() -> Error {
    Error::new(
        ErrorCode::FailedPrecondition,
        "this call was already finished",
    )
}

/// A running provider.
#[pyclass(frozen, module = "busbar._core")]
pub(crate) struct CoreProvider {
    face: Face,
    id: String,
    paths: Vec<String>,
    provided: Mutex<Option<busbar_client::Provided>>,
    /// Where handlers hand calls over; emptied by `close`, which ends
    /// `next_call` once the calls already handed over are taken.
    sender: Arc<Mutex<Option<mpsc::Sender<CoreProviderCall>>>>,
    calls: Arc<tokio::sync::Mutex<mpsc::Receiver<CoreProviderCall>>>,
}

impl ToPython for CoreProvider {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(Py::new(py, self)?.into_any())
    }
}

impl ToPython for Option<CoreProviderCall> {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self {
            Some(call) => Ok(Py::new(py, call)?.into_any()),
            None => Ok(py.None()),
        }
    }
}

impl ToPython for bool {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.into_py_any(py)
    }
}

#[pymethods]
impl CoreProvider {
    /// The provider's id on the node (`busbar service ls`).
    #[getter]
    fn id(&self) -> String {
        self.id.clone()
    }

    /// The service resources' paths.
    #[getter]
    fn paths(&self) -> Vec<String> {
        self.paths.clone()
    }

    #[getter]
    fn closed(&self) -> bool {
        locked(&self.provided).is_none()
    }

    /// Calls running now.
    #[getter]
    fn in_flight(&self) -> usize {
        locked(&self.provided).as_ref().map_or(0, |p| p.in_flight())
    }

    /// The next call routed here (a `CoreProviderCall`), or None once the
    /// provider is closed or its stream ended. Blocking, or awaitable with
    /// `asyncio`.
    fn next_call<'py>(&self, py: Python<'py>, asyncio: bool) -> PyResult<Bound<'py, PyAny>> {
        let calls = self.calls.clone();
        finish_read(py, face(asyncio), async move {
            Ok(calls.lock().await.recv().await)
        })
    }

    /// Drains: the node routes no new calls here, those in flight finish
    /// for up to `grace` seconds, then the stream ends and `next_call`
    /// gives None. A second close does nothing.
    fn close<'py>(&self, py: Python<'py>, grace: f64) -> PyResult<Bound<'py, PyAny>> {
        let provided = locked(&self.provided).take();
        let sender = self.sender.clone();
        let grace = if grace.is_finite() && grace >= 0.0 {
            Ok(Duration::from_secs_f64(grace.min(1e6)))
        } else {
            Err(invalid(format!("bad grace {grace}: use 0 or more seconds")))
        };
        finish(py, self.face, async move {
            let grace = grace?;
            if let Some(provided) = provided {
                provided.close(grace).await;
            }
            locked(&sender).take();
            Ok(())
        })
    }
}

/// One call routed to a Python provider.
#[pyclass(frozen, module = "busbar._core")]
pub(crate) struct CoreProviderCall {
    context: CallContext,
    client_streaming: bool,
    server_streaming: bool,
    /// Taken when the handler is over (`Release`).
    call: Arc<tokio::sync::Mutex<Option<JsonCall>>>,
    stage: Arc<watch::Sender<Stage>>,
    done: Mutex<Option<oneshot::Sender<Result<(), Error>>>>,
}

#[pymethods]
impl CoreProviderCall {
    /// "package.Service/Method".
    #[getter]
    fn method(&self) -> String {
        self.context.method.trim_start_matches('/').to_string()
    }

    #[getter]
    fn client_streaming(&self) -> bool {
        self.client_streaming
    }

    #[getter]
    fn server_streaming(&self) -> bool {
        self.server_streaming
    }

    /// Whether the call was cancelled (by its caller, its deadline or the
    /// provider closing): what a plain handler, which runs to its end on
    /// its thread, checks to stop early.
    #[getter]
    fn cancelled(&self) -> bool {
        *self.stage.borrow() == Stage::Cancelled
    }

    /// What the node told about the call: a dict with method, caller,
    /// trace_id, metadata and time_left (seconds until the caller's
    /// deadline, now; None without one).
    fn context<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let context = &self.context;
        let value = serde_json::json!({
            "method": self.method(),
            "caller": context.caller,
            "trace_id": context.trace_id,
            "metadata": context.metadata,
            "time_left": context.time_left().map(|left| left.as_secs_f64()),
        });
        crate::convert::json_to_py(py, &value)
    }

    /// The next request (a dict), None after the caller's last. Blocking,
    /// or awaitable with `asyncio`.
    fn next<'py>(&self, py: Python<'py>, asyncio: bool) -> PyResult<Bound<'py, PyAny>> {
        let call = self.call.clone();
        let stage = self.stage.subscribe();
        finish_read(
            py,
            face(asyncio),
            unless_ended(stage, async move {
                match call.lock().await.as_mut() {
                    Some(call) => call.next_request().await,
                    None => Err(over()),
                }
            }),
        )
    }

    /// Sends one answer (a dict of the method's output type); waits while
    /// the caller is behind. Blocking, or awaitable with `asyncio`.
    fn send<'py>(
        &self,
        py: Python<'py>,
        message: Bound<'py, PyAny>,
        asyncio: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let message = py_to_json(&message);
        let call = self.call.clone();
        let stage = self.stage.subscribe();
        finish_send(
            py,
            face(asyncio),
            unless_ended(stage, async move {
                match call.lock().await.as_mut() {
                    Some(call) => call.send(message?).await,
                    None => Err(over()),
                }
            }),
        )
    }

    /// Ends the call: with no `code` it succeeded; otherwise the caller
    /// gets the error of that stable code (INTERNAL for one it does not
    /// know) with `message`. Later calls do nothing.
    #[pyo3(signature = (code=None, message=None))]
    fn finish(&self, code: Option<&str>, message: Option<String>) {
        let outcome = match code {
            None => Ok(()),
            Some(code) => Err(Error::new(
                ErrorCode::from_str_name(code).unwrap_or(ErrorCode::Internal),
                message.unwrap_or_default(),
            )),
        };
        self.stage.send_if_modified(|stage| {
            let running = *stage == Stage::Running;
            if running {
                *stage = Stage::Finished;
            }
            running
        });
        if let Some(done) = locked(&self.done).take() {
            let _ = done.send(outcome);
        }
    }

    /// Waits until the call ends; True when it was cancelled (by its
    /// caller, its deadline or the provider closing), False when `finish`
    /// ended it. Blocking, or awaitable with `asyncio`.
    fn ended<'py>(&self, py: Python<'py>, asyncio: bool) -> PyResult<Bound<'py, PyAny>> {
        let mut stage = self.stage.subscribe();
        finish_read(py, face(asyncio), async move {
            let over = stage.wait_for(|s| *s != Stage::Running).await.map(|s| *s);
            Ok(!matches!(over, Ok(Stage::Finished)))
        })
    }
}
