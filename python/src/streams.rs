//! Streams handed to Python: calls, wire subscriptions and publishers, room
//! memberships. Each is read with `next()` (one item, `None` at the end) so
//! the Python layer can make iterators, async iterators and handler
//! dispatchers of it; whatever arrives before Python reads waits in the
//! Rust client's bounded buffers (and then slows the sender), never dropped.

use crate::bridge::{Face, finish, finish_read, finish_send, runtime};
use crate::convert::{ToPython, invalid, py_to_bytes, py_to_json, py_to_json_list};
use crate::locked;
use busbar_client::{
    BoxStream, CallSender, Client, DynamicCall, Error, ErrorCode, PublishSummary, RoomEventKind,
    RoomMembership,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use pyo3::prelude::*;
use serde_json::Value;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

const OPEN: u8 = 0;
const CLOSED: u8 = 1;
const CANCELLED: u8 = 2;

/// A stream read one item at a time from any thread or task, that can be
/// stopped while a read waits.
pub(crate) struct Pull<S> {
    stream: tokio::sync::Mutex<Option<S>>,
    /// When the whole stream must have ended (a call's `timeout=`).
    deadline: Option<tokio::time::Instant>,
    state: AtomicU8,
    stopped: Notify,
}

impl<S, T> Pull<S>
where
    S: Stream<Item = Result<T, Error>> + Unpin + Send + 'static,
{
    pub(crate) fn new(stream: S) -> Arc<Pull<S>> {
        Pull::with_deadline(stream, None)
    }

    pub(crate) fn with_deadline(stream: S, deadline: Option<tokio::time::Instant>) -> Arc<Pull<S>> {
        Arc::new(Pull {
            stream: tokio::sync::Mutex::new(Some(stream)),
            deadline,
            state: AtomicU8::new(OPEN),
            stopped: Notify::new(),
        })
    }

    /// The next item; `None` when the stream ended or was closed.
    pub(crate) async fn next(&self) -> Result<Option<T>, Error> {
        let stopped = self.stopped.notified();
        let mut guard = tokio::select! {
            guard = self.stream.lock() => guard,
            _ = stopped => return self.after_stop(),
        };
        if self.state.load(Ordering::Acquire) != OPEN {
            *guard = None;
            return self.after_stop();
        }
        let Some(stream) = guard.as_mut() else {
            return Ok(None);
        };
        let stopped = self.stopped.notified();
        let expired = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = expired => {
                *guard = None;
                Err(Error::new(
                    ErrorCode::Timeout,
                    "the call's deadline passed before it finished; raise the timeout or retry",
                ))
            }
            item = stream.next() => match item {
                Some(Ok(item)) => Ok(Some(item)),
                Some(Err(error)) => {
                    *guard = None;
                    Err(error)
                }
                None => {
                    *guard = None;
                    Ok(None)
                }
            },
            _ = stopped => {
                *guard = None;
                self.after_stop()
            }
        }
    }

    fn after_stop(&self) -> Result<Option<T>, Error> {
        match self.state.load(Ordering::Acquire) {
            CANCELLED => Err(Error::new(
                ErrorCode::Cancelled,
                "the call was cancelled by this client",
            )),
            _ => Ok(None),
        }
    }

    /// Stops the stream: waiting and later reads end (`cancel`: raise CANCELLED).
    pub(crate) fn stop(&self, cancel: bool) {
        let state = if cancel { CANCELLED } else { CLOSED };
        let _ = self
            .state
            .compare_exchange(OPEN, state, Ordering::AcqRel, Ordering::Acquire);
        self.stopped.notify_waiters();
        if let Ok(mut guard) = self.stream.try_lock() {
            *guard = None; // dropping the stream ends the call on the server too
        }
    }
}

/// A streaming call (`Connection.stream`).
#[pyclass(frozen, module = "busbar._core")]
pub(crate) struct CoreCall {
    pub(crate) face: Face,
    pub(crate) responses: Arc<Pull<DynamicCall>>,
    pub(crate) sender: Mutex<Option<CallSender>>,
}

impl CoreCall {
    pub(crate) fn new(
        face: Face,
        mut call: DynamicCall,
        deadline: Option<tokio::time::Instant>,
    ) -> CoreCall {
        let sender = call.take_sender();
        CoreCall {
            face,
            responses: Pull::with_deadline(call, deadline),
            sender: Mutex::new(Some(sender)),
        }
    }
}

#[pymethods]
impl CoreCall {
    /// The next response (a dict) or None when the call ended.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let responses = self.responses.clone();
        finish_read(py, self.face, async move { responses.next().await })
    }

    /// Sends one more request message.
    fn send<'py>(
        &self,
        py: Python<'py>,
        message: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sender = locked(&self.sender).clone();
        let message = py_to_json(&message);
        finish_send(py, self.face, async move {
            let sender = sender.ok_or_else(|| {
                invalid("this call's sending side was ended with end(); nothing more can be sent")
            })?;
            sender.send(message?).await
        })
    }

    /// Ends the request stream; responses keep coming.
    fn end(&self) {
        locked(&self.sender).take();
    }

    /// Cancels the call; reads raise Cancelled.
    fn cancel(&self) {
        self.end();
        self.responses.stop(true);
    }
}

/// A wire subscription: byte chunks.
#[pyclass(frozen, module = "busbar._core")]
pub(crate) struct CoreSubscription {
    pub(crate) face: Face,
    pub(crate) chunks: Arc<Pull<BoxStream<Bytes>>>,
    /// How often a resuming subscription was opened again after a lost
    /// connection (chunks published meanwhile were missed).
    pub(crate) resubscribed: Arc<std::sync::atomic::AtomicU64>,
}

impl CoreSubscription {
    /// A subscription's chunks: as they come, or (with `resume`) kept
    /// across lost connections, each new start counted in `resubscribed`.
    pub(crate) async fn open(
        face: Face,
        client: &busbar_client::Client,
        path: &str,
        resume: bool,
    ) -> busbar_client::Result<CoreSubscription> {
        let resubscribed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let chunks: BoxStream<Bytes> = if resume {
            let counted = resubscribed.clone();
            let events = client.subscribe_resuming(path).await?;
            Box::pin(events.filter_map(move |event| {
                let counted = counted.clone();
                async move {
                    match event {
                        Ok(busbar_client::WireEvent::Chunk(chunk)) => Some(Ok(chunk)),
                        Ok(busbar_client::WireEvent::Resubscribed) => {
                            counted.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                        Err(error) => Some(Err(error)),
                    }
                }
            }))
        } else {
            client.subscribe(path).await?
        };
        Ok(CoreSubscription {
            face,
            chunks: Pull::new(chunks),
            resubscribed,
        })
    }
}

#[pymethods]
impl CoreSubscription {
    /// How often the subscription was opened again after a lost connection.
    #[getter]
    fn resubscribed(&self) -> u64 {
        self.resubscribed.load(Ordering::Relaxed)
    }

    /// The next chunk (bytes) or None when the subscription ended.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let chunks = self.chunks.clone();
        finish_read(py, self.face, async move { chunks.next().await })
    }

    /// Ends the subscription; reads return None.
    fn close(&self) {
        self.chunks.stop(false);
    }
}

/// Chunks a publisher holds before `send` waits for the network.
const PUBLISH_QUEUE: usize = 16;

type PublishTask = tokio::task::JoinHandle<Result<PublishSummary, Error>>;

/// The sending side of `Wire.publish`: chunks go through a bounded queue to
/// a task that streams them to the node.
#[pyclass(frozen, module = "busbar._core")]
pub(crate) struct CorePublisher {
    face: Face,
    sender: Mutex<Option<tokio::sync::mpsc::Sender<Bytes>>>,
    task: Arc<Mutex<Option<PublishTask>>>,
}

impl CorePublisher {
    pub(crate) fn start(face: Face, client: Client, path: String) -> CorePublisher {
        let (sender, receiver) = tokio::sync::mpsc::channel(PUBLISH_QUEUE);
        let chunks = tokio_stream::wrappers::ReceiverStream::new(receiver);
        let task = runtime().spawn(async move { client.publish(&path, chunks).await });
        CorePublisher {
            face,
            sender: Mutex::new(Some(sender)),
            task: Arc::new(Mutex::new(Some(task))),
        }
    }
}

fn take(slot: &Mutex<Option<PublishTask>>) -> Option<PublishTask> {
    locked(slot).take()
}

/// The publish's outcome: its summary as JSON, or why it failed.
async fn summary(task: Option<PublishTask>) -> Result<Value, Error> {
    let task = task.ok_or_else(|| invalid("this publisher has finished"))?;
    let summary = task
        .await
        .map_err(|e| Error::new(ErrorCode::Cancelled, format!("the publish ended: {e}")))??;
    Ok(crate::convert::message_to_json(&summary))
}

#[pymethods]
impl CorePublisher {
    /// Queues one chunk; waits while the queue is full.
    fn send<'py>(&self, py: Python<'py>, chunk: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let chunk = py_to_bytes(&chunk);
        let sender = locked(&self.sender).clone();
        let slot = self.task.clone();
        finish_send(py, self.face, async move {
            let sender = sender.ok_or_else(|| invalid("this publisher has finished"))?;
            if sender.send(chunk?).await.is_ok() {
                return Ok(());
            }
            // The publish ended early: its task says why.
            summary(take(&slot)).await?;
            Err(Error::new(ErrorCode::Cancelled, "the publish has ended"))
        })
    }

    /// Ends the stream and returns the summary (a dict).
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        locked(&self.sender).take();
        let task = take(&self.task);
        finish(py, self.face, summary(task))
    }

    /// Abandons the publish.
    fn cancel(&self) {
        locked(&self.sender).take();
        if let Some(task) = take(&self.task) {
            task.abort();
        }
    }
}

/// A joined room: its events, and emit/leave as its current member id (which
/// changes when the membership rejoins after a reconnect).
#[pyclass(frozen, module = "busbar._core")]
pub(crate) struct CoreMembership {
    pub(crate) face: Face,
    pub(crate) client: Client,
    pub(crate) path: String,
    pub(crate) member_id: Arc<Mutex<String>>,
    pub(crate) events: Arc<Pull<MembershipEvents>>,
}

/// A membership whose member id is copied out whenever it rejoins.
pub(crate) struct MembershipEvents {
    membership: RoomMembership,
    member_id: Arc<Mutex<String>>,
}

impl MembershipEvents {
    pub(crate) fn new(membership: RoomMembership, member_id: Arc<Mutex<String>>) -> Self {
        *locked(&member_id) = membership.member_id().to_string();
        MembershipEvents {
            membership,
            member_id,
        }
    }
}

/// One room event for Python: (kind, event, args, sender).
pub(crate) struct PyRoomEvent {
    kind: &'static str,
    event: String,
    args: Vec<Value>,
    sender: String,
}

impl ToPython for PyRoomEvent {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let args = Value::Array(self.args).to_python(py)?;
        Ok((self.kind, self.event, args, self.sender)
            .into_pyobject(py)?
            .into_any()
            .unbind())
    }
}

impl ToPython for Option<PyRoomEvent> {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self {
            Some(event) => event.to_python(py),
            None => Ok(py.None()),
        }
    }
}

impl Stream for MembershipEvents {
    type Item = Result<PyRoomEvent, Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        let polled = std::task::ready!(this.membership.poll_next_unpin(cx));
        std::task::Poll::Ready(polled.map(|item| {
            item.map(|event| {
                let kind = match event.kind {
                    RoomEventKind::Emit => "emit",
                    RoomEventKind::Left => "left",
                    RoomEventKind::Deleted => "deleted",
                    RoomEventKind::Rejoined => {
                        *locked(&this.member_id) = this.membership.member_id().to_string();
                        "rejoined"
                    }
                };
                PyRoomEvent {
                    kind,
                    event: event.event,
                    args: event.args,
                    sender: event.sender,
                }
            })
        }))
    }
}

#[pymethods]
impl CoreMembership {
    /// The next event as (kind, event, args, sender), or None at the end.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let events = self.events.clone();
        finish_read(py, self.face, async move { events.next().await })
    }

    #[pyo3(signature = (event, args, peers_only, timeout=None))]
    fn emit<'py>(
        &self,
        py: Python<'py>,
        event: String,
        args: Bound<'py, PyAny>,
        peers_only: bool,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = py_to_json_list(&args);
        let client = crate::connection::with_timeout(&self.client, timeout);
        let (path, member_id) = (self.path.clone(), self.member_id());
        finish(py, self.face, async move {
            client?
                .emit_as(&path, &event, args?, &member_id, peers_only)
                .await
        })
    }

    #[pyo3(signature = (timeout=None))]
    fn leave<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let client = crate::connection::with_timeout(&self.client, timeout);
        let member_id = self.member_id();
        finish(py, self.face, async move {
            client?.leave_member(&member_id).await
        })
    }

    /// Stops reading events without leaving (the server ends the membership
    /// when the stream closes).
    fn close(&self) {
        self.events.stop(false);
    }

    #[getter]
    fn member_id(&self) -> String {
        locked(&self.member_id).clone()
    }

    #[getter]
    fn path(&self) -> String {
        self.path.clone()
    }
}
