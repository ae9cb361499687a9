//! Providing services through the node (mesh). A provider dials out: one
//! stream to the node carries every call routed to it, so it needs no
//! inbound port, and its services live exactly as long as that stream.
//!
//! ```no_run
//! # async fn demo(client: busbar_client::Client, descriptors: Vec<u8>) -> busbar_client::Result<()> {
//! use busbar_client::{Offer, ProviderCall};
//! let offer = Offer::new(["mesh.demo.Echo"], descriptors);
//! let provider = client
//!     .provide(offer, |mut call: ProviderCall| async move {
//!         while let Some(request) = call.next_request().await {
//!             call.send(request).await?; // echo every request back
//!         }
//!         Ok(())
//!     })
//!     .await?;
//! provider.close(std::time::Duration::from_secs(5)).await; // drains
//! # Ok(()) }
//! ```
//!
//! Callers call the provided methods like any other, by full name, through
//! the node: the dynamic `call`/`stream`, or a tonic client pointed at the
//! node.

use crate::client::Client;
use crate::error::{Error, ErrorCode, Result};
use busbar_proto::v1::{self as pb, from_provider, to_provider};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// Messages queued to the node before handlers wait.
const OUTBOUND: usize = 256;

/// What a provider offers: services by protobuf full name, and the
/// descriptors that define them (an encoded `FileDescriptorSet` with every
/// file they import, save the well-known types).
#[derive(Debug, Clone)]
pub struct Offer {
    pub services: Vec<String>,
    pub file_descriptor_set: Vec<u8>,
    /// Calls run at once (0: the node's default, 64); more wait here.
    pub concurrency: u32,
}

impl Offer {
    pub fn new<S: Into<String>>(
        services: impl IntoIterator<Item = S>,
        file_descriptor_set: Vec<u8>,
    ) -> Offer {
        Offer {
            services: services.into_iter().map(Into::into).collect(),
            file_descriptor_set,
            concurrency: 0,
        }
    }

    pub fn concurrency(mut self, calls: u32) -> Offer {
        self.concurrency = calls;
        self
    }
}

/// Who called and how: what the node tells a provider about each call.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// "/package.Service/Method".
    pub method: String,
    /// The caller's identity, authenticated by the node.
    pub caller: String,
    pub trace_id: String,
    /// The caller's `x-` metadata.
    pub metadata: HashMap<String, String>,
    /// When the caller stops waiting, if it set a deadline.
    pub deadline: Option<Instant>,
}

impl CallContext {
    /// Time left until the caller's deadline.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// One call routed to this provider. The handler reads requests with
/// [`next_request`](Self::next_request), answers with [`send`](Self::send)
/// and ends the call by returning: `Ok(())` or the error the caller gets.
/// A bidirectional handler that reads in one task while it answers in
/// another [`split`](Self::split)s the call in two.
pub struct ProviderCall {
    pub context: CallContext,
    requests: CallRequests,
    responses: CallResponses,
}

/// The reading half of a [`ProviderCall`].
pub struct CallRequests {
    id: u64,
    requests: mpsc::Receiver<Bytes>,
    /// Request messages read since credit was last granted.
    read: u32,
    window: u32,
    outbound: mpsc::Sender<pb::FromProvider>,
}

/// The answering half of a [`ProviderCall`]. The call ends when the
/// handler returns, whichever half it still holds.
pub struct CallResponses {
    method: String,
    id: u64,
    responses: Arc<Semaphore>,
    streaming_response: bool,
    /// A unary answer waits here to go out with the call's end, as one message.
    held: Arc<Mutex<Option<Bytes>>>,
    outbound: mpsc::Sender<pb::FromProvider>,
}

impl ProviderCall {
    /// The next request message; `None` once the caller has sent its last.
    pub async fn next_request(&mut self) -> Option<Bytes> {
        self.requests.next_request().await
    }

    /// Sends a response message (an encoded message of the method's output
    /// type); waits while the caller is behind.
    pub async fn send(&mut self, message: Bytes) -> Result<()> {
        self.responses.send(message).await
    }

    /// The call's two halves, to read requests in one task while another
    /// sends responses (a bidirectional stream that answers as it goes).
    /// Flow control holds on each half as on the whole call.
    pub fn split(self) -> (CallRequests, CallResponses) {
        (self.requests, self.responses)
    }
}

impl CallRequests {
    /// The next request message; `None` once the caller has sent its last.
    pub async fn next_request(&mut self) -> Option<Bytes> {
        let message = self.requests.recv().await?;
        self.read += 1;
        if self.read >= self.window / 2 {
            let credit = from_provider::Message::Credit(pb::Credit {
                call: self.id,
                messages: self.read,
            });
            self.read = 0;
            let _ = self
                .outbound
                .send(pb::FromProvider {
                    message: Some(credit),
                })
                .await;
        }
        Some(message)
    }
}

impl CallResponses {
    /// Sends a response message (an encoded message of the method's output
    /// type); waits while the caller is behind.
    pub async fn send(&mut self, message: Bytes) -> Result<()> {
        if !self.streaming_response {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.is_some() {
                return Err(Error::invalid_argument(format!(
                    "{} answers with one message; this is a second",
                    self.method
                )));
            }
            *held = Some(message);
            return Ok(());
        }
        self.responses
            .acquire()
            .await
            .map_err(|_| Error::new(ErrorCode::Cancelled, "the call is over"))?
            .forget();
        self.respond(Some(message), None).await
    }

    async fn respond(&self, message: Option<Bytes>, end: Option<pb::CallStatus>) -> Result<()> {
        let response = pb::ProviderResponse {
            call: self.id,
            message,
            end,
        };
        self.outbound
            .send(pb::FromProvider {
                message: Some(from_provider::Message::Response(response)),
            })
            .await
            .map_err(|_| {
                Error::new(
                    ErrorCode::Unavailable,
                    "the provider's stream to the node ended",
                )
            })
    }
}

/// A call running at this provider: its handler's task, where its request
/// messages go (until the caller half-closes) and its response credit.
type RunningCall = (JoinHandle<()>, Option<mpsc::Sender<Bytes>>, Arc<Semaphore>);

/// Calls running at this provider.
#[derive(Default)]
struct Running {
    calls: HashMap<u64, RunningCall>,
}

/// A running provider. Dropping it cuts its stream at once (calls in flight
/// fail at their callers with UNAVAILABLE); [`close`](Self::close) drains.
///
/// When its stream is lost without being closed (the node restarts, the
/// connection moves to another node), the provider offers its services
/// again by itself, backing off from 100 ms to 5 s with jitter, until the
/// node takes them or refuses them for good (rights, a clashing
/// definition, credentials no longer valid).
pub struct Provided {
    /// The provider's id on the node when it first offered (a new offer
    /// after a loss gets a new one: [`current_id`](Self::current_id)).
    pub id: String,
    /// The paths of the service resources.
    pub paths: Vec<String>,
    link: Arc<Mutex<Link>>,
    running: Arc<Mutex<Running>>,
    /// Serves the stream in use, and offers again after a loss.
    reader: JoinHandle<()>,
}

/// What the provider's streams share as one replaces another.
struct Link {
    /// The queue to the node of the stream in use. The stream ends, after
    /// what is queued has gone, once this and the senders of calls still
    /// running are dropped (the reader holds only a weak one).
    outbound: Option<mpsc::Sender<pb::FromProvider>>,
    /// Fires when the node has read the Drain: no call comes after.
    drained: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The provider's id on the node of the stream in use.
    id: String,
    /// Closing or closed: a lost stream is not replaced.
    closing: bool,
}

impl Provided {
    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.running.lock().map(|r| r.calls.len()).unwrap_or(0)
    }

    /// The provider's id on the node now.
    pub fn current_id(&self) -> String {
        self.link
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .id
            .clone()
    }

    /// Stops taking calls (the node routes new ones elsewhere), lets those
    /// in flight finish for up to `grace`, then ends the stream. Calls the
    /// node routed here before it read the Drain count as in flight: close
    /// waits for the node's answer to the Drain before it counts.
    pub async fn close(mut self, grace: Duration) {
        let (outbound, drained) = {
            let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
            link.closing = true;
            (link.outbound.clone(), link.drained.take())
        };
        if let Some(outbound) = outbound {
            let _ = outbound
                .send(pb::FromProvider {
                    message: Some(from_provider::Message::Drain(pb::Drain {})),
                })
                .await;
        }
        let until = Instant::now() + grace;
        if let Some(drained) = drained {
            let _ = tokio::time::timeout_at(until.into(), drained).await;
        }
        while self.in_flight() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Half-closes the stream; the node ends its side in turn.
        self.link.lock().unwrap_or_else(|p| p.into_inner()).outbound = None;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
    }
}

impl Drop for Provided {
    fn drop(&mut self) {
        self.reader.abort();
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|p| p.into_inner()));
        for (task, _, _) in running.calls.into_values() {
            task.abort();
        }
    }
}

/// One Provide stream the node accepted: the queue to it, what it sends,
/// and its answer to the offer.
struct Stream {
    outbound: mpsc::Sender<pb::FromProvider>,
    inbound: tonic::Streaming<pb::ToProvider>,
    offered: pb::Offered,
}

/// Opens a Provide stream and offers `offer` on it.
async fn open_stream(client: &Client, offer: &Offer) -> Result<Stream> {
    let (outbound, queued) = mpsc::channel(OUTBOUND);
    outbound
        .send(pb::FromProvider {
            message: Some(from_provider::Message::Offer(pb::Offer {
                services: offer.services.clone(),
                file_descriptor_set: offer.file_descriptor_set.clone().into(),
                concurrency: offer.concurrency,
            })),
        })
        .await
        .expect("a new channel has room");
    let mut inbound = client
        .mesh_client()
        .provide(tokio_stream::wrappers::ReceiverStream::new(queued))
        .await?
        .into_inner();
    match inbound.message().await? {
        Some(pb::ToProvider {
            message: Some(to_provider::Message::Offered(offered)),
        }) => Ok(Stream {
            outbound,
            inbound,
            offered,
        }),
        _ => Err(Error::new(
            ErrorCode::Internal,
            "the node did not answer the offer",
        )),
    }
}

/// Whether a stream that ended with `code` (or an offer refused with it)
/// is worth offering again: not when the node refused the provider itself.
fn worth_offering_again(code: ErrorCode) -> bool {
    !matches!(
        code,
        ErrorCode::Unauthenticated
            | ErrorCode::PermissionDenied
            | ErrorCode::InvalidArgument
            | ErrorCode::FailedPrecondition
            | ErrorCode::NotFound
    )
}

/// What every stream of a provider serves with.
struct Serving<F> {
    client: Client,
    offer: Offer,
    link: Arc<Mutex<Link>>,
    running: Arc<Mutex<Running>>,
    handler: Arc<F>,
    concurrency: Arc<Semaphore>,
    streaming: HashMap<String, bool>,
}

impl<F, Fut> Serving<F>
where
    F: Fn(ProviderCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    /// Serves `stream`, then each stream that replaces a lost one.
    async fn run(self, mut stream: Stream, mut drained: tokio::sync::oneshot::Sender<()>) {
        loop {
            let outbound = stream.outbound.downgrade();
            drop(stream.outbound);
            let ended = serve(
                stream.inbound,
                outbound,
                self.running.clone(),
                self.handler.clone(),
                self.concurrency.clone(),
                self.streaming.clone(),
                drained,
            )
            .await;
            if self.closing() || ended.is_some_and(|code| !worth_offering_again(code)) {
                return;
            }
            match self.offer_again().await {
                Some((next, next_drained)) => (stream, drained) = (next, next_drained),
                None => return,
            }
        }
    }

    fn closing(&self) -> bool {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).closing
    }

    /// Offers again until the node takes the offer (the new stream) or
    /// refuses it for good, or the provider is closed (`None`).
    async fn offer_again(&self) -> Option<(Stream, tokio::sync::oneshot::Sender<()>)> {
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::time::sleep(crate::rooms::jittered(backoff)).await;
            if self.closing() {
                return None;
            }
            match open_stream(&self.client, &self.offer).await {
                Ok(stream) => {
                    let (drained_in, drained) = tokio::sync::oneshot::channel();
                    let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
                    if link.closing {
                        return None;
                    }
                    link.outbound = Some(stream.outbound.clone());
                    link.drained = Some(drained);
                    link.id = stream.offered.provider.clone();
                    return Some((stream, drained_in));
                }
                Err(error) if !worth_offering_again(error.code()) => return None,
                Err(_) => backoff = (backoff * 2).min(Duration::from_secs(5)),
            }
        }
    }
}

impl Client {
    /// Offers services to the node; every call routed to this provider runs
    /// `handler` on a task of its own (aborted when the caller cancels or
    /// its deadline passes). Returns once the node has accepted the offer.
    pub async fn provide<F, Fut>(&self, offer: Offer, handler: F) -> Result<Provided>
    where
        F: Fn(ProviderCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let concurrency = Arc::new(Semaphore::new(match offer.concurrency {
            0 => 64,
            n => n as usize,
        }));
        // The stream lasts as long as the provider: a default deadline of
        // this handle's calls must not end it.
        let client = Client {
            timeout: None,
            ..self.clone()
        };
        let stream = open_stream(&client, &offer).await?;
        let (drained_in, drained) = tokio::sync::oneshot::channel();
        let link = Arc::new(Mutex::new(Link {
            outbound: Some(stream.outbound.clone()),
            drained: Some(drained),
            id: stream.offered.provider.clone(),
            closing: false,
        }));
        let running = Arc::new(Mutex::new(Running::default()));
        let (id, paths) = (
            stream.offered.provider.clone(),
            stream.offered.paths.clone(),
        );
        let serving = Serving {
            streaming: server_streaming(&offer.file_descriptor_set),
            client,
            offer,
            link: link.clone(),
            running: running.clone(),
            handler: Arc::new(handler),
            concurrency,
        };
        let reader = tokio::spawn(serving.run(stream, drained_in));
        Ok(Provided {
            id,
            paths,
            link,
            running,
            reader,
        })
    }

    /// Live services at or below `path` ("/services" when empty), with
    /// their providers.
    pub async fn services(&self, path: &str) -> Result<Vec<pb::ServiceInfo>> {
        let request = pb::ListServicesRequest { path: path.into() };
        self.again(request, async |client, request| {
            let listed = client.mesh_client().list_services(request).await?;
            Ok(listed.into_inner().services)
        })
        .await
    }
}

/// Reads the node's messages for this provider until its stream ends;
/// returns the code it ended with, if the node ended it with an error.
async fn serve<F, Fut>(
    mut inbound: tonic::Streaming<pb::ToProvider>,
    outbound: mpsc::WeakSender<pb::FromProvider>,
    running: Arc<Mutex<Running>>,
    handler: Arc<F>,
    concurrency: Arc<Semaphore>,
    streaming: HashMap<String, bool>,
    drained: tokio::sync::oneshot::Sender<()>,
) -> Option<ErrorCode>
where
    F: Fn(ProviderCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let mut drained = Some(drained);
    loop {
        let message = match inbound.next().await {
            Some(Ok(message)) => message,
            Some(Err(status)) => return Some(Error::from(status).code()),
            None => return None,
        };
        let Some(message) = message.message else {
            continue;
        };
        match message {
            to_provider::Message::Start(start) => {
                // Closed: the node was told (Drain), and takes none further.
                let Some(outbound) = outbound.upgrade() else {
                    continue;
                };
                let window = start.window.max(1);
                let (requests_in, requests) = mpsc::channel(window as usize + 1);
                if let Some(first) = start.message {
                    let _ = requests_in.try_send(first);
                }
                let responses = Arc::new(Semaphore::new(window as usize));
                let streaming_response = streaming.get(&start.method).copied().unwrap_or(true);
                let call = ProviderCall {
                    requests: CallRequests {
                        id: start.call,
                        requests,
                        read: 0,
                        window,
                        outbound: outbound.clone(),
                    },
                    responses: CallResponses {
                        method: start.method.clone(),
                        id: start.call,
                        responses: responses.clone(),
                        streaming_response,
                        held: Arc::default(),
                        outbound,
                    },
                    context: CallContext {
                        method: start.method,
                        caller: start.caller,
                        trace_id: start.trace_id,
                        metadata: start.metadata,
                        deadline: (start.timeout_ms > 0)
                            .then(|| Instant::now() + Duration::from_millis(start.timeout_ms)),
                    },
                };
                let requests_in = (!start.half_closed).then_some(requests_in);
                // Listed before the handler can end (and unlist itself).
                let mut listed = running.lock().unwrap_or_else(|p| p.into_inner());
                let task = tokio::spawn(run(
                    call,
                    handler.clone(),
                    concurrency.clone(),
                    running.clone(),
                ));
                listed
                    .calls
                    .insert(start.call, (task, requests_in, responses));
            }
            to_provider::Message::Request(request) => {
                let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((_, requests, _)) = running.calls.get_mut(&request.call) {
                    if let (Some(message), Some(queue)) = (request.message, requests.as_ref()) {
                        let _ = queue.try_send(message);
                    }
                    if request.half_closed {
                        *requests = None;
                    }
                }
            }
            to_provider::Message::Credit(credit) => {
                let running = running.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((_, _, responses)) = running.calls.get(&credit.call) {
                    responses.add_permits(credit.messages.min(1024) as usize);
                }
            }
            to_provider::Message::Cancel(cancel) => {
                let taken = running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .calls
                    .remove(&cancel.call);
                if let Some((task, _, _)) = taken {
                    task.abort();
                }
            }
            to_provider::Message::Drained(_) => {
                if let Some(drained) = drained.take() {
                    let _ = drained.send(());
                }
            }
            to_provider::Message::Offered(_) => {}
        }
    }
}

/// Runs one call's handler and sends its end.
async fn run<F, Fut>(
    call: ProviderCall,
    handler: Arc<F>,
    concurrency: Arc<Semaphore>,
    running: Arc<Mutex<Running>>,
) where
    F: Fn(ProviderCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let _permit = concurrency.acquire_owned().await;
    let responses = &call.responses;
    let (id, outbound, held) = (
        responses.id,
        responses.outbound.clone(),
        responses.held.clone(),
    );
    // A handler that panics ends its call with INTERNAL at once, rather
    // than leaving the caller to its deadline.
    let result = std::panic::AssertUnwindSafe(async { handler(call).await })
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorCode::Internal,
                "the provider's handler panicked",
            ))
        });
    let held = held.lock().unwrap_or_else(|p| p.into_inner()).take();
    let end = match result {
        Ok(()) => pb::CallStatus::default(),
        Err(error) => pb::CallStatus {
            code: busbar_proto::grpc_code(error.code()) as i32,
            message: error.message().to_string(),
            error_code: error.code().as_str_name().to_string(),
        },
    };
    running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .calls
        .remove(&id);
    let _ = outbound
        .send(pb::FromProvider {
            message: Some(from_provider::Message::Response(pb::ProviderResponse {
                call: id,
                message: held,
                end: Some(end),
            })),
        })
        .await;
}

/// Whether each method ("/package.Service/Method") of the descriptor set
/// streams its responses; a unary answer goes out with the call's end.
fn server_streaming(file_descriptor_set: &[u8]) -> HashMap<String, bool> {
    let mut pool = prost_reflect::DescriptorPool::global();
    if pool
        .decode_file_descriptor_set(file_descriptor_set)
        .is_err()
    {
        // The node refuses such an offer, with the reason.
        return HashMap::new();
    }
    pool.services()
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .map(|method| {
            (
                format!("/{}/{}", method.parent_service().full_name(), method.name()),
                method.is_server_streaming(),
            )
        })
        .collect()
}
