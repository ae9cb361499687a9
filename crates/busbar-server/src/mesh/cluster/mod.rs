//! Mesh services across a cluster's nodes: a caller on one node reaches a
//! provider on another, and every node balances over the providers of all.
//! Only a cluster node (`--store`, `--bus`) makes a [`MeshCluster`]; an
//! embedded node runs none of this.
//!
//! - **Who provides what, where** lives in PostgreSQL ([`directory`]): a row
//!   per provider with its offer. Each node reads the other nodes' rows
//!   every second, and at once when a call or a reflection request names
//!   something it does not know (at most every 100 ms), and keeps them in
//!   its registry beside its own providers. So balancing always sees every
//!   node's providers, and a service offered on one node is callable
//!   through every other as soon as the offer is answered.
//! - **Liveness and load** travel on the bus: every node says it lives
//!   every second ([`frames::Alive`]), with its providers' calls in flight.
//!   A node not heard for [`SILENT_AFTER`] gets no new calls.
//! - **A forwarded call** is the local call's messages (`CallStart`,
//!   requests, credit, cancel, responses) in [`frames::Frame`]s on the
//!   receiving node's subject, numbered per call and direction; the
//!   provider's node runs it against its provider as it runs a local call
//!   ([`relay`]). Credit is end to end: the provider's node passes on a
//!   response only within the caller's node's credit, and grants the
//!   provider more only as it does; requests likewise. A message larger
//!   than the bus carries travels in pieces.
//! - **Nothing hangs on a lost frame or node.** A frame out of turn fails
//!   its call with UNAVAILABLE. While calls are open between two nodes,
//!   each tells the other every second which ones it still has
//!   ([`frames::Open`]); a call its peer has not confirmed for
//!   [`SILENT_AFTER`] is over: the caller's node fails it with UNAVAILABLE
//!   (the provider, or its node, was lost), the provider's node cancels it
//!   (its caller is gone). Deadlines are kept by the caller's node and
//!   again by the provider's.

pub(crate) mod directory;
pub(crate) mod frames;
mod relay;

pub(crate) use directory::{Directory, ProviderRow};

use super::files::Offered;
use super::registry::{Provider, ProviderEvent, RemoteProvider};
use super::route::WINDOW;
use crate::bus::{Bus, BusMessage, Overflow, SubscribeOptions, Subscription};
use crate::error::{Error, Result};
use crate::node::{Lifecycle, Node};
use busbar_proto::v1 as pb;
use frames::{Alive, Assembled, Body, Frame, Open, Partial};
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// Where every node says it lives.
const ALIVE_SUBJECT: &str = "_busbar.mesh.alive";
/// How often a node says it lives and confirms its open calls.
const BEAT: Duration = Duration::from_secs(1);
/// A node not heard for this long gets no new calls, and a call its peer
/// has not confirmed for this long is over.
pub(crate) const SILENT_AFTER: Duration = Duration::from_secs(3);
/// How often the directory is read, and how soon again on a miss.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
const REFRESH_ON_MISS: Duration = Duration::from_millis(100);
const READ_WAIT: Duration = Duration::from_secs(2);
/// Frames queued for a node before the bus waits, and how long it waits
/// before it cuts the subscription (which is then made again; the calls
/// whose frames were lost fail on the gap).
const INBOX: usize = 4096;
const INBOX_STALL: Duration = Duration::from_secs(5);
/// The most message bytes in one frame, and what is kept free in a bus
/// message for the rest of the frame (metadata included).
const MAX_PIECE: usize = 512 << 10;
const FRAME_ROOM: usize = 64 << 10;
/// Call ids per beat frame, and providers per `Alive`: either stays well
/// under the bus's message size.
const IDS_PER_BEAT: usize = 8192;
const LOADS_PER_ALIVE: usize = 1024;

/// The subject of a node's mesh frames.
fn node_subject(node: &str) -> String {
    format!("_busbar.mesh.node.{node}")
}

/// Another node, as far as this one hears it.
pub(crate) struct Peer {
    pub id: String,
    heard: Mutex<Option<Instant>>,
    known_since: Instant,
}

impl Peer {
    /// Heard lately, or met lately and not yet heard (its first word may be
    /// on its way).
    pub fn alive(&self) -> bool {
        match *self.heard.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(heard) => heard.elapsed() < SILENT_AFTER,
            None => self.known_since.elapsed() < SILENT_AFTER,
        }
    }

    fn heard_now(&self) {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

/// A call this node sent to a provider on another node.
struct Outgoing {
    peer: Arc<Peer>,
    link: Arc<CallLink>,
    responses: mpsc::Sender<ProviderEvent>,
    request_credit: Arc<Semaphore>,
    frames: Reassembly,
    /// When the provider's node last showed it has the call.
    confirmed: Instant,
    /// Its end has arrived (it waits to be read).
    ended: bool,
}

/// A call another node sent to a provider here.
struct Incoming {
    /// Its provider, once its start has come.
    provider: String,
    /// To the call's relay; none while its start is still arriving.
    input: Option<mpsc::Sender<relay::Input>>,
    frames: Reassembly,
    /// When the caller's node last showed it still waits on the call.
    confirmed: Instant,
}

/// One direction of a call's frames, checked for order and put back
/// together.
#[derive(Default)]
struct Reassembly {
    expect: u64,
    partial: Option<Partial>,
}

/// What a frame came to.
enum Taken {
    /// A whole message.
    Body(Body),
    /// Nothing yet (a piece, or a frame with no message).
    Nothing,
    /// The call cannot go on: why.
    Lost(String),
}

impl Reassembly {
    fn take(&mut self, frame: Frame, max_message: usize, sender: &str) -> Taken {
        if frame.seq != self.expect {
            return Taken::Lost(
                "frames of the call were lost between the nodes (the bus dropped them)".into(),
            );
        }
        self.expect += 1;
        let Some(body) = frame.body else {
            return Taken::Nothing;
        };
        match frames::assemble(&mut self.partial, body, frame.more, max_message) {
            Assembled::Whole(body) => Taken::Body(body),
            Assembled::Waiting => Taken::Nothing,
            Assembled::Broken(why) => Taken::Lost(format!("{sender} sent {why}")),
        }
    }
}

pub(crate) struct MeshCluster {
    node_id: String,
    bus: Arc<dyn Bus>,
    directory: Directory,
    max_message: usize,
    piece: usize,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    outgoing: Mutex<HashMap<u64, Outgoing>>,
    incoming: Mutex<HashMap<(String, u64), Incoming>>,
    /// This node's providers as recorded in the directory.
    mine: Mutex<HashMap<String, ProviderRow>>,
    /// When the directory was last read; held while it is applied (and
    /// while an offer is checked), so one change applies at a time.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl MeshCluster {
    pub fn new(
        node_id: String,
        bus: Arc<dyn Bus>,
        directory: Directory,
        max_message: usize,
    ) -> MeshCluster {
        let piece = bus
            .max_payload()
            .saturating_sub(FRAME_ROOM)
            .clamp(1024, MAX_PIECE);
        MeshCluster {
            node_id,
            bus,
            directory,
            max_message,
            piece,
            peers: Mutex::default(),
            outgoing: Mutex::default(),
            incoming: Mutex::default(),
            mine: Mutex::default(),
            refreshed: tokio::sync::Mutex::new(None),
        }
    }

    /// Subscribes to this node's frames and the cluster's beats (before it
    /// returns: nothing sent after is missed), and starts the tasks that
    /// hear them, beat, and read the directory, until the node stops.
    pub async fn start(self: &Arc<Self>, node: &Arc<Node>) {
        let (inbox, alive) = self.subscribe().await;
        tokio::spawn(self.clone().hear(node.clone(), inbox, alive));
        tokio::spawn(self.clone().beat(node.clone()));
        tokio::spawn(self.clone().poll_directory(node.clone()));
    }

    async fn subscribe(&self) -> (Subscription, Subscription) {
        let inbox = SubscribeOptions {
            capacity: INBOX,
            overflow: Overflow::Backpressure { stall: INBOX_STALL },
            tag: None,
        };
        let alive = SubscribeOptions {
            capacity: 1024,
            overflow: Overflow::Disconnect,
            tag: None,
        };
        (
            self.bus
                .subscribe(&node_subject(&self.node_id), inbox)
                .await,
            self.bus.subscribe(ALIVE_SUBJECT, alive).await,
        )
    }

    fn peer(&self, id: &str) -> Arc<Peer> {
        lock(&self.peers)
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(Peer {
                    id: id.to_string(),
                    heard: Mutex::new(None),
                    known_since: Instant::now(),
                })
            })
            .clone()
    }

    // --- the directory ---

    /// Reads the directory and applies it to the registry.
    async fn refresh(&self, node: &Node) -> Result<()> {
        let mut last = self.refreshed.lock().await;
        let started = Instant::now();
        let rows = self.read().await?;
        self.apply(node, rows);
        *last = Some(started);
        Ok(())
    }

    /// The other nodes' providers, from the directory, waiting at most
    /// [`READ_WAIT`] (a store that does not answer must not hold up the
    /// calls that wait for a reading).
    async fn read(&self) -> Result<Vec<ProviderRow>> {
        match tokio::time::timeout(READ_WAIT, self.directory.others(&self.node_id)).await {
            Ok(read) => read,
            Err(_) => Err(Error::unavailable(format!(
                "the metadata store (PostgreSQL) did not answer within {READ_WAIT:?}"
            ))),
        }
    }

    fn apply(&self, node: &Node, rows: Vec<ProviderRow>) {
        node.mesh.sync_remote(rows, |id| self.peer(id));
        // Peers neither listed nor heard for a minute are forgotten.
        let listed: std::collections::HashSet<String> =
            node.mesh.remote_nodes().into_iter().collect();
        lock(&self.peers).retain(|id, peer| {
            listed.contains(id)
                || lock(&peer.heard).is_some_and(|h| h.elapsed() < Duration::from_secs(60))
                || peer.known_since.elapsed() < Duration::from_secs(60)
        });
    }

    /// Reads the directory again, unless a reading began since this was
    /// asked: for a call or a lookup that names something this node does
    /// not know, or a node that names a provider it does not know. Readings
    /// are at least [`REFRESH_ON_MISS`] apart, and those asked meanwhile
    /// share one.
    pub async fn refresh_soon(&self, node: &Node) {
        let asked = Instant::now();
        let mut last = self.refreshed.lock().await;
        if let Some(started) = *last {
            if started >= asked {
                return;
            }
            tokio::time::sleep_until(started + REFRESH_ON_MISS).await;
        }
        let started = Instant::now();
        match self.read().await {
            Ok(rows) => {
                self.apply(node, rows);
                *last = Some(started);
            }
            Err(error) => tracing::warn!(
                "cannot read the cluster's mesh providers: {}",
                error.message
            ),
        }
    }

    async fn poll_directory(self: Arc<Self>, node: Arc<Node>) {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        while *node.lifecycle().borrow() != Lifecycle::Stopped {
            tick.tick().await;
            match self.refresh(&node).await {
                Ok(()) => failing = false,
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(
                        "cannot read the cluster's mesh providers (calls go to those known): {}",
                        error.message
                    );
                }
                Err(_) => {}
            }
        }
    }

    /// Accepts an offer cluster-wide: checked against every node's live
    /// providers and recorded in the directory under one lock, so another
    /// node cannot accept a different definition of a service meanwhile.
    /// Nothing changes when it is refused.
    pub async fn offer(
        &self,
        node: &Node,
        provider: Arc<Provider>,
        offered: Offered,
        file_names: &[String],
    ) -> Result<()> {
        let row = ProviderRow {
            node: self.node_id.clone(),
            provider: provider.id.clone(),
            identity: provider.identity.to_string(),
            services: provider.services.clone(),
            files: prost_types::FileDescriptorSet {
                file: offered.files.clone(),
            }
            .encode_to_vec(),
            concurrency: provider.concurrency as i64,
            since_ms: provider.since_ms,
        };
        let mut last = self.refreshed.lock().await;
        let started = Instant::now();
        let (mut read, mut added) = (false, false);
        let recorded = self
            .directory
            .offer(&row, |others| {
                read = true;
                self.apply(node, others);
                node.mesh.add(provider.clone(), offered)?;
                added = true;
                Ok(())
            })
            .await;
        if read {
            *last = Some(started);
        }
        drop(last);
        match recorded {
            Ok(()) => {
                lock(&self.mine).insert(row.provider.clone(), row);
                // The other nodes hear of it now, not at the next beat.
                self.announce(node).await;
                Ok(())
            }
            Err(error) => {
                if added {
                    node.mesh.remove(&provider, file_names);
                }
                Err(error)
            }
        }
    }

    /// Takes a provider that went out of the directory.
    pub async fn withdraw(&self, provider: &str) {
        lock(&self.mine).remove(provider);
        if let Err(error) = self.directory.withdraw(&self.node_id, provider).await {
            // The next heartbeat deletes it (`seen`).
            tracing::warn!(%provider, "cannot take a provider out of the cluster's directory: {}", error.message);
        }
    }

    /// The node's heartbeat in the directory (with `Node::report_alive`).
    pub async fn report_seen(&self) {
        let mine: Vec<ProviderRow> = lock(&self.mine).values().cloned().collect();
        if let Err(error) = self.directory.seen(&self.node_id, &mine).await {
            tracing::warn!("cannot mark this node's providers seen: {}", error.message);
        }
    }

    /// Takes every provider of this node out of the directory (it stops).
    pub async fn forget(&self) {
        let _ = self.directory.forget(&self.node_id).await;
    }

    // --- calls this node sends to other nodes ---

    /// Registers a call to `provider` on another node; its frames back go
    /// to `responses`, request credit to `request_credit`. The returned
    /// link sends the call's frames there, in order.
    pub fn open_call(
        self: &Arc<Self>,
        call: u64,
        provider: &RemoteProvider,
        responses: mpsc::Sender<ProviderEvent>,
        request_credit: Arc<Semaphore>,
    ) -> Arc<CallLink> {
        let link = Arc::new(CallLink {
            cluster: self.clone(),
            subject: node_subject(&provider.peer.id),
            provider: provider.id.clone(),
            call,
            seq: tokio::sync::Mutex::new(0),
        });
        lock(&self.outgoing).insert(
            call,
            Outgoing {
                peer: provider.peer.clone(),
                link: link.clone(),
                responses,
                request_credit,
                frames: Reassembly::default(),
                confirmed: Instant::now(),
                ended: false,
            },
        );
        link
    }

    /// Takes a call out when it ends here; `true` when it was still open
    /// (so its provider's node may still have it).
    pub fn close_call(&self, call: u64) -> bool {
        lock(&self.outgoing).remove(&call).is_some()
    }

    /// Publishes `body` as frames of one call to `subject`, from `seq` on.
    async fn publish(&self, subject: &str, call: u64, seq: &mut u64, reply: bool, body: Body) {
        for (body, more) in frames::split(body, self.piece) {
            let frame = Frame {
                from: self.node_id.clone(),
                call,
                seq: *seq,
                more,
                reply,
                body: Some(body),
            };
            *seq += 1;
            let message = BusMessage {
                payload: frame.encode_to_vec().into(),
                last: false,
            };
            self.bus.publish(subject, message, None).await;
        }
    }

    /// A frame for a call this node sent (from the provider's node).
    fn reply_frame(&self, frame: Frame) {
        let mut outgoing = lock(&self.outgoing);
        let Some(entry) = outgoing.get_mut(&frame.call) else {
            return; // over here already
        };
        if entry.peer.id != frame.from {
            return;
        }
        entry.confirmed = Instant::now();
        let call = frame.call;
        let body = match entry.frames.take(frame, self.max_message, "its node") {
            Taken::Body(body) => body,
            Taken::Nothing => return,
            Taken::Lost(why) => {
                let entry = outgoing.remove(&call).expect("there");
                drop(outgoing);
                lose(entry, &why);
                return;
            }
        };
        use pb::from_provider::Message as From;
        match body {
            Body::FromProvider(pb::FromProvider {
                message: Some(From::Response(response)),
            }) => {
                let ends = response.end.is_some();
                if entry
                    .responses
                    .try_send(ProviderEvent::Response(response))
                    .is_err()
                {
                    // Its channel holds the whole credit: full means the
                    // provider's node sent past it.
                    let entry = outgoing.remove(&call).expect("there");
                    drop(outgoing);
                    let _ = entry.responses.try_send(ProviderEvent::Broken(
                        "its node sent more responses than the call's credit".into(),
                    ));
                    cancel(&entry, "protocol violation");
                } else if ends {
                    entry.ended = true;
                }
            }
            Body::FromProvider(pb::FromProvider {
                message: Some(From::Credit(credit)),
            }) => {
                let grant = (credit.messages as usize).min(WINDOW as usize);
                if entry.request_credit.available_permits() + grant <= 2 * WINDOW as usize {
                    entry.request_credit.add_permits(grant);
                }
            }
            Body::Gone(gone) => {
                let entry = outgoing.remove(&call).expect("there");
                drop(outgoing);
                let event = if gone.started {
                    ProviderEvent::Lost(gone.reason)
                } else {
                    ProviderEvent::NotStarted(gone.reason)
                };
                let _ = entry.responses.try_send(event);
            }
            _ => {}
        }
    }

    // --- calls other nodes send to providers here ---

    /// A frame for a call another node sent to a provider here.
    fn call_frame(self: &Arc<Self>, node: &Arc<Node>, frame: Frame) {
        let key = (frame.from.clone(), frame.call);
        let mut incoming = lock(&self.incoming);
        if matches!(frame.body, Some(Body::Start(_))) {
            if frame.seq != 0 || incoming.contains_key(&key) {
                return;
            }
            incoming.insert(
                key.clone(),
                Incoming {
                    provider: String::new(),
                    input: None,
                    frames: Reassembly::default(),
                    confirmed: Instant::now(),
                },
            );
        }
        let Some(entry) = incoming.get_mut(&key) else {
            return; // over here already
        };
        entry.confirmed = Instant::now();
        let body = match entry
            .frames
            .take(frame, self.max_message, "the caller's node")
        {
            Taken::Body(body) => body,
            Taken::Nothing => return,
            Taken::Lost(why) => {
                let entry = incoming.remove(&key).expect("there");
                if let Some(input) = entry.input {
                    let _ = input.try_send(relay::Input::Broken(why));
                }
                return;
            }
        };
        use pb::to_provider::Message as To;
        let input = match body {
            Body::Start(start) => {
                let (input, inputs) = mpsc::channel(relay::INPUT);
                entry.input = Some(input);
                entry.provider = start.provider.clone();
                drop(incoming);
                tokio::spawn(relay::run(node.clone(), self.clone(), key, start, inputs));
                return;
            }
            Body::ToProvider(pb::ToProvider {
                message: Some(To::Request(request)),
            }) => relay::Input::Request {
                message: request.message,
                half_closed: request.half_closed,
            },
            Body::ToProvider(pb::ToProvider {
                message: Some(To::Credit(credit)),
            }) => relay::Input::Credit(credit.messages),
            Body::ToProvider(pb::ToProvider {
                message: Some(To::Cancel(cancel)),
            }) => relay::Input::Cancel(cancel.reason),
            _ => return,
        };
        let Some(sender) = &entry.input else {
            return;
        };
        if sender.try_send(input).is_err() {
            // Its queue holds what the call's credit allows: full means the
            // caller's node sent past it. Dropping the queue ends the relay,
            // which cancels the call at its provider.
            incoming.remove(&key);
        }
    }

    /// A relay is done with its call.
    fn relay_done(&self, key: &(String, u64)) {
        lock(&self.incoming).remove(key);
    }

    // --- beats ---

    /// Which calls between this node and `from` that node still has.
    fn open_frame(&self, from: &str, open: Open) {
        let now = Instant::now();
        {
            let mut outgoing = lock(&self.outgoing);
            for call in open.serving {
                if let Some(entry) = outgoing.get_mut(&call)
                    && entry.peer.id == from
                {
                    entry.confirmed = now;
                }
            }
        }
        let mut incoming = lock(&self.incoming);
        for call in open.awaiting {
            if let Some(entry) = incoming.get_mut(&(from.to_string(), call)) {
                entry.confirmed = now;
            }
        }
    }

    /// Every second: says this node lives (with its providers' load), tells
    /// each node it has calls with which ones are open here, and ends the
    /// calls the other side has stopped confirming.
    async fn beat(self: Arc<Self>, node: Arc<Node>) {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while *node.lifecycle().borrow() != Lifecycle::Stopped {
            tick.tick().await;
            self.announce(&node).await;

            let now = Instant::now();
            let mut open: HashMap<String, Open> = HashMap::new();
            let mut lost = Vec::new();
            {
                let mut outgoing = lock(&self.outgoing);
                let over: Vec<u64> = outgoing
                    .iter()
                    .filter(|(_, entry)| {
                        !entry.ended
                            && (now.duration_since(entry.confirmed) > SILENT_AFTER
                                || !entry.peer.alive())
                    })
                    .map(|(call, _)| *call)
                    .collect();
                for call in over {
                    lost.extend(outgoing.remove(&call));
                }
                for (call, entry) in outgoing.iter() {
                    open.entry(entry.peer.id.clone())
                        .or_default()
                        .awaiting
                        .push(*call);
                }
            }
            for entry in lost {
                let why = if entry.peer.alive() {
                    format!(
                        "its node stopped confirming the call for {} s",
                        SILENT_AFTER.as_secs()
                    )
                } else {
                    format!(
                        "its node has not been heard for {} s (it stopped, or the bus cannot reach it)",
                        SILENT_AFTER.as_secs()
                    )
                };
                lose(entry, &why);
            }
            {
                let mut incoming = lock(&self.incoming);
                incoming.retain(|(from, call), entry| {
                    if now.duration_since(entry.confirmed) > SILENT_AFTER {
                        // Its caller's node no longer waits on it: dropping
                        // the relay's input cancels it at the provider.
                        return false;
                    }
                    open.entry(from.clone()).or_default().serving.push(*call);
                    true
                });
            }
            for (peer, calls) in open {
                let subject = node_subject(&peer);
                let (serving, awaiting) = (calls.serving, calls.awaiting);
                let beats = serving
                    .len()
                    .max(awaiting.len())
                    .div_ceil(IDS_PER_BEAT)
                    .max(1);
                for n in 0..beats {
                    let part = |ids: &Vec<u64>| {
                        ids.iter()
                            .skip(n * IDS_PER_BEAT)
                            .take(IDS_PER_BEAT)
                            .copied()
                            .collect()
                    };
                    let body = Body::Open(Open {
                        serving: part(&serving),
                        awaiting: part(&awaiting),
                    });
                    self.publish(&subject, 0, &mut 0, false, body).await;
                }
            }
        }
    }

    /// Tells every node that this one lives, and how busy its providers are.
    async fn announce(&self, node: &Node) {
        let mut relayed: HashMap<(String, String), u64> = HashMap::new();
        for ((from, _), entry) in lock(&self.incoming).iter() {
            if !entry.provider.is_empty() {
                *relayed
                    .entry((entry.provider.clone(), from.clone()))
                    .or_default() += 1;
            }
        }
        let loads = node.mesh.local_loads(&relayed);
        // In parts, so that many providers never make one too large for
        // the bus (and one, empty, when there are none).
        let mut parts: Vec<Vec<frames::Load>> =
            loads.chunks(LOADS_PER_ALIVE).map(<[_]>::to_vec).collect();
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        for providers in parts {
            let alive = Alive {
                node: self.node_id.clone(),
                providers,
            };
            let message = BusMessage {
                payload: alive.encode_to_vec().into(),
                last: false,
            };
            self.bus.publish(ALIVE_SUBJECT, message, None).await;
        }
    }

    /// Hears this node's frames and the cluster's beats until the node
    /// stops, subscribing again when a subscription is cut.
    async fn hear(
        self: Arc<Self>,
        node: Arc<Node>,
        mut inbox: Subscription,
        mut alive: Subscription,
    ) {
        let mut lifecycle = node.lifecycle();
        loop {
            let cut = tokio::select! {
                message = inbox.next() => match message {
                    Ok(Some(message)) => {
                        self.hear_frame(&node, message.payload);
                        false
                    }
                    _ => true,
                },
                message = alive.next() => match message {
                    Ok(Some(message)) => {
                        self.hear_alive(&node, message.payload);
                        false
                    }
                    _ => true,
                },
                _ = lifecycle.wait_for(|state| *state == Lifecycle::Stopped) => return,
            };
            if cut {
                tracing::warn!("the mesh's subscriptions on the bus were cut; subscribing again");
                tokio::time::sleep(Duration::from_millis(100)).await;
                (inbox, alive) = self.subscribe().await;
            }
        }
    }

    fn hear_frame(self: &Arc<Self>, node: &Arc<Node>, payload: bytes::Bytes) {
        let frame = match Frame::decode(payload) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!("a mesh frame on the bus does not decode: {error}");
                return;
            }
        };
        match frame.body {
            Some(Body::Open(_)) => {
                self.peer(&frame.from).heard_now();
                if let Some(Body::Open(open)) = frame.body {
                    self.open_frame(&frame.from, open);
                }
            }
            _ if frame.reply => self.reply_frame(frame),
            _ => self.call_frame(node, frame),
        }
    }

    fn hear_alive(self: &Arc<Self>, node: &Arc<Node>, payload: bytes::Bytes) {
        let Ok(alive) = Alive::decode(payload) else {
            return;
        };
        if alive.node == self.node_id {
            return;
        }
        self.peer(&alive.node).heard_now();
        node.mesh.remote_loads(&alive.providers, &self.node_id);
        if !node.mesh.knows_remote(&alive.providers) {
            // A provider offered there since the directory was read.
            let (cluster, node) = (self.clone(), node.clone());
            tokio::spawn(async move { cluster.refresh_soon(&node).await });
        }
    }
}

/// Ends a call this node sent: its caller hears that the provider (or
/// its node) was lost, and the provider's node is told to stop it.
fn lose(entry: Outgoing, why: &str) {
    let _ = entry
        .responses
        .try_send(ProviderEvent::Lost(why.to_string()));
    cancel(&entry, why);
}

fn cancel(entry: &Outgoing, why: &str) {
    let link = entry.link.clone();
    let reason = why.to_string();
    tokio::spawn(async move { link.cancel(reason).await });
}

/// Sends one call's frames to the provider's node, in order.
pub(crate) struct CallLink {
    cluster: Arc<MeshCluster>,
    subject: String,
    provider: String,
    call: u64,
    /// The next frame's number; held while a message goes out.
    seq: tokio::sync::Mutex<u64>,
}

impl CallLink {
    /// Sends a message of the call (as the node sends it to a local
    /// provider); `false` when it cannot go.
    pub async fn send(&self, message: pb::to_provider::Message) -> bool {
        let body = match message {
            pb::to_provider::Message::Start(start) => Body::Start(frames::Start {
                provider: self.provider.clone(),
                start: Some(start),
            }),
            other => Body::ToProvider(pb::ToProvider {
                message: Some(other),
            }),
        };
        let mut seq = self.seq.lock().await;
        self.cluster
            .publish(&self.subject, self.call, &mut seq, false, body)
            .await;
        true
    }

    /// Tells the provider's node to stop the call.
    pub async fn cancel(&self, reason: String) {
        let cancel = pb::to_provider::Message::Cancel(pb::CallCancel {
            call: self.call,
            reason,
        });
        self.send(cancel).await;
    }

    pub fn cluster(&self) -> &MeshCluster {
        &self.cluster
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_alive_while_heard_or_just_met() {
        let peer = Peer {
            id: "n".into(),
            heard: Mutex::new(None),
            known_since: Instant::now(),
        };
        assert!(peer.alive());
        let old = Peer {
            id: "o".into(),
            heard: Mutex::new(None),
            known_since: Instant::now() - SILENT_AFTER * 2,
        };
        assert!(!old.alive());
        old.heard_now();
        assert!(old.alive());
    }
}
