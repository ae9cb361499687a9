//! The live services: which providers offer each, the shape of each method
//! (how it streams, whether it may be retried), and the descriptor files
//! reflection serves for them. On a cluster node the providers include
//! those of the other nodes ([`RemoteProvider`], kept in step with the
//! cluster's directory by `cluster`), so a call is balanced over every
//! node's providers.

use super::cluster::{
    Peer, ProviderRow,
    frames::{Load, NodeCalls},
};
use super::files::{DescriptorFiles, Offered};
use crate::error::{Error, Result};
use busbar_proto::v1 as pb;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{Semaphore, mpsc};

/// How one method streams, and whether a call may go to another provider
/// when its provider is lost before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MethodShape {
    pub client_streaming: bool,
    pub server_streaming: bool,
    pub idempotent: bool,
}

/// A service as its providers describe it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ServiceShape {
    pub name: String,
    pub path: String,
    /// By method name.
    pub methods: HashMap<String, MethodShape>,
    /// "Name(input) -> output" per method, sorted: what must match between
    /// providers of one service.
    pub signature: Vec<String>,
}

/// What a call in flight at a provider hears back from it.
pub(crate) enum ProviderEvent {
    Response(pb::ProviderResponse),
    /// The provider sent more than its credit, or broke the protocol.
    Broken(String),
    /// A provider on another node was lost while it had the call (or its
    /// node is): as when a provider's stream ends, with the reason.
    Lost(String),
    /// A provider on another node never had the call (it had gone by the
    /// time the call reached its node): the call may go elsewhere.
    NotStarted(String),
}

/// A call in flight at a provider: where its responses go and the request
/// credit the provider has granted.
pub(crate) struct CallSlot {
    pub responses: mpsc::Sender<ProviderEvent>,
    pub request_credit: Arc<Semaphore>,
}

/// One provider: one Provide stream.
pub(crate) struct Provider {
    pub id: String,
    pub identity: Arc<str>,
    pub since_ms: i64,
    pub services: Vec<String>,
    /// Messages to the provider, bounded: a provider that does not read
    /// holds back the calls routed to it, no one else.
    pub outbound: mpsc::Sender<Result<pb::ToProvider, tonic::Status>>,
    pub calls: Mutex<HashMap<u64, CallSlot>>,
    pub in_flight: AtomicU64,
    pub served: AtomicU64,
    pub concurrency: u64,
    pub draining: AtomicBool,
    /// Set, under the calls' lock, once the provider is gone: no call may
    /// be added after.
    pub gone: AtomicBool,
}

impl Provider {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Fails every call in flight (their response channels close) and
    /// returns how many there were.
    pub fn drop_calls(&self) -> usize {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        self.gone.store(true, Ordering::Relaxed);
        let count = calls.len();
        calls.clear();
        count
    }

    /// Adds a call; `false` when the provider is already gone.
    pub fn add_call(&self, call: u64, slot: CallSlot) -> bool {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if self.gone.load(Ordering::Relaxed) {
            return false;
        }
        calls.insert(call, slot);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn slot(&self, call: u64) -> Option<(mpsc::Sender<ProviderEvent>, Arc<Semaphore>)> {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls
            .get(&call)
            .map(|slot| (slot.responses.clone(), slot.request_credit.clone()))
    }

    /// Takes a call out of the table; `true` when it was there.
    pub fn end_call(&self, call: u64) -> bool {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.remove(&call).is_some()
    }
}

/// A provider on another node of the cluster, as this node knows it.
pub(crate) struct RemoteProvider {
    pub id: String,
    pub peer: Arc<Peer>,
    pub identity: Arc<str>,
    pub since_ms: i64,
    pub services: Vec<String>,
    /// Names of the descriptor files its offer brought.
    pub files: Vec<String>,
    pub concurrency: u64,
    /// Calls this node has in flight there.
    pub in_flight: AtomicU64,
    /// What its node last said of it (every second): the calls in flight
    /// there that came from elsewhere than this node, the calls it served,
    /// whether it drains.
    pub others_in_flight: AtomicU64,
    pub reported_served: AtomicU64,
    pub draining: AtomicBool,
    /// Its node said it no longer has it: no new call goes there.
    pub gone: AtomicBool,
}

/// Where a call can go: a provider on this node, or on another node.
#[derive(Clone)]
pub(crate) enum Target {
    Local(Arc<Provider>),
    Remote(Arc<RemoteProvider>),
}

impl Target {
    pub fn id(&self) -> &str {
        match self {
            Target::Local(p) => &p.id,
            Target::Remote(p) => &p.id,
        }
    }

    pub fn identity(&self) -> &str {
        match self {
            Target::Local(p) => &p.identity,
            Target::Remote(p) => &p.identity,
        }
    }

    fn is_draining(&self) -> bool {
        match self {
            Target::Local(p) => p.is_draining(),
            Target::Remote(p) => p.draining.load(Ordering::Relaxed),
        }
    }

    /// Whether it is there to be listed and called: a remote one whose
    /// node went silent, or that its node disowned, is not.
    fn is_reachable(&self) -> bool {
        match self {
            Target::Local(_) => true,
            Target::Remote(p) => !p.gone.load(Ordering::Relaxed) && p.peer.alive(),
        }
    }

    /// Calls in flight per unit of concurrency, in 1/1024ths. For a provider
    /// on another node: the calls this node has there now, and those of
    /// other nodes as its node last reported them (at most a second ago).
    fn load(&self) -> u64 {
        let (in_flight, concurrency) = match self {
            Target::Local(p) => (p.in_flight.load(Ordering::Relaxed), p.concurrency),
            Target::Remote(p) => (
                p.in_flight.load(Ordering::Relaxed) + p.others_in_flight.load(Ordering::Relaxed),
                p.concurrency,
            ),
        };
        in_flight * 1024 / concurrency.max(1)
    }

    /// How `busbar service ls` shows it.
    pub fn info(&self) -> pb::ProviderInfo {
        match self {
            Target::Local(p) => pb::ProviderInfo {
                id: p.id.clone(),
                identity: p.identity.to_string(),
                since_unix_ms: p.since_ms,
                calls_in_flight: p.in_flight.load(Ordering::Relaxed),
                calls_served: p.served.load(Ordering::Relaxed),
                draining: p.is_draining(),
            },
            Target::Remote(p) => pb::ProviderInfo {
                id: p.id.clone(),
                identity: p.identity.to_string(),
                since_unix_ms: p.since_ms,
                calls_in_flight: p.in_flight.load(Ordering::Relaxed)
                    + p.others_in_flight.load(Ordering::Relaxed),
                calls_served: p.reported_served.load(Ordering::Relaxed),
                draining: p.draining.load(Ordering::Relaxed),
            },
        }
    }
}

struct LiveService {
    shape: Arc<ServiceShape>,
    providers: Vec<Target>,
    /// Where the next tie between equally loaded providers is broken.
    turn: usize,
}

#[derive(Default)]
struct Live {
    services: HashMap<String, LiveService>,
    /// This node's providers, by id.
    local: HashMap<String, Arc<Provider>>,
    /// Other nodes' providers, by id.
    remote: HashMap<String, Arc<RemoteProvider>>,
}

impl Live {
    /// Adds `provider` to the live service `shape` describes, making the
    /// service live if it was not.
    fn offer(&mut self, shape: ServiceShape, provider: Target) {
        let service = (self.services.entry(shape.name.clone())).or_insert_with(|| LiveService {
            shape: Arc::new(shape),
            providers: Vec::new(),
            turn: 0,
        });
        service.providers.push(provider);
    }

    /// Takes the provider `this` picks out of each of `services`; a service
    /// left with none is no longer live.
    fn withdraw(&mut self, services: &[String], this: impl Fn(&Target) -> bool) {
        for name in services {
            if let Some(service) = self.services.get_mut(name) {
                service.providers.retain(|p| !this(p));
                if service.providers.is_empty() {
                    self.services.remove(name);
                }
            }
        }
    }
}

/// The node's mesh registry.
pub(crate) struct Registry {
    live: Mutex<Live>,
    files: RwLock<DescriptorFiles>,
    next_provider: AtomicU64,
    next_call: AtomicU64,
    /// Appended to provider ids: on a cluster node, `@` and the start of
    /// the node's id, so ids are unique across the cluster.
    id_suffix: String,
}

impl Registry {
    pub fn new(files: DescriptorFiles, id_suffix: String) -> Registry {
        Registry {
            live: Mutex::default(),
            files: RwLock::new(files),
            next_provider: AtomicU64::new(1),
            next_call: AtomicU64::new(1),
            id_suffix,
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn files(&self) -> std::sync::RwLockReadGuard<'_, DescriptorFiles> {
        self.files.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn call_id(&self) -> u64 {
        self.next_call.fetch_add(1, Ordering::Relaxed)
    }

    pub fn provider_id(&self) -> String {
        format!(
            "p{}{}",
            self.next_provider.fetch_add(1, Ordering::Relaxed),
            self.id_suffix
        )
    }

    /// Adds a provider of `offered`'s services. Refused, changing nothing,
    /// when a service is live with another shape or a file conflicts with
    /// a live one of the same name.
    pub fn add(&self, provider: Arc<Provider>, offered: Offered) -> Result<()> {
        let mut live = self.live();
        for shape in &offered.shapes {
            if let Some(service) = live.services.get(&shape.name)
                && service.shape.signature != shape.signature
            {
                return Err(Error::failed_precondition(format!(
                    "service {} is live with other methods ({}); this offer has ({}). Stop its providers first, or give the changed interface a new name (e.g. a version suffix)",
                    shape.name,
                    service.shape.signature.join(", "),
                    shape.signature.join(", ")
                )));
            }
        }
        {
            let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
            files.add(&offered.files)?;
        }
        for shape in offered.shapes {
            live.offer(shape, Target::Local(provider.clone()));
        }
        live.local.insert(provider.id.clone(), provider);
        Ok(())
    }

    /// Removes a provider whose stream ended; its calls fail.
    pub fn remove(&self, provider: &Provider, file_names: &[String]) {
        let mut live = self.live();
        let this = |p: &Target| matches!(p, Target::Local(p) if p.id == provider.id);
        live.withdraw(&provider.services, this);
        live.local.remove(&provider.id);
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .release(file_names);
        drop(live);
        provider.drop_calls();
    }

    /// The shape of a live service.
    pub fn shape(&self, service: &str) -> Option<Arc<ServiceShape>> {
        self.live().services.get(service).map(|s| s.shape.clone())
    }

    /// The provider a new call of `service` goes to: the one with the
    /// fewest calls in flight for its concurrency, ties broken in turn
    /// (round robin); never a draining one nor one in `skip`.
    pub fn pick(&self, service: &str, skip: &[String]) -> Option<Target> {
        let mut live = self.live();
        let entry = live.services.get_mut(service)?;
        let count = entry.providers.len();
        let mut best: Option<(u64, usize)> = None;
        for offset in 0..count {
            let index = (entry.turn + offset) % count;
            let provider = &entry.providers[index];
            if provider.is_draining()
                || !provider.is_reachable()
                || skip.iter().any(|id| id == provider.id())
            {
                continue;
            }
            let load = provider.load();
            if best.is_none_or(|(least, _)| load < least) {
                best = Some((load, index));
            }
        }
        let (_, index) = best?;
        entry.turn = (index + 1) % count;
        Some(entry.providers[index].clone())
    }

    /// Live services whose path is `path` or lies below it, with their
    /// reachable providers.
    pub fn list(&self, path: &str) -> Vec<(Arc<ServiceShape>, Vec<Target>)> {
        let live = self.live();
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let mut found: Vec<_> = live
            .services
            .values()
            .filter(|s| s.shape.path == path || s.shape.path.starts_with(&prefix))
            .map(|s| {
                let reachable = s.providers.iter().filter(|p| p.is_reachable());
                (s.shape.clone(), reachable.cloned().collect::<Vec<_>>())
            })
            .filter(|(_, providers)| !providers.is_empty())
            .collect();
        found.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        found
    }

    /// Names of the live services.
    pub fn names(&self) -> Vec<(String, String)> {
        let live = self.live();
        live.services
            .values()
            .filter(|s| s.providers.iter().any(Target::is_reachable))
            .map(|s| (s.shape.name.clone(), s.shape.path.clone()))
            .collect()
    }

    /// Whether this node knows (or left out) every provider in `loads`.
    pub fn knows_remote(&self, loads: &[Load]) -> bool {
        let live = self.live();
        loads.iter().all(|l| live.remote.contains_key(&l.provider))
    }

    /// The nodes the other nodes' providers are on.
    pub fn remote_nodes(&self) -> Vec<String> {
        self.live()
            .remote
            .values()
            .map(|p| p.peer.id.clone())
            .collect()
    }

    /// One of this node's providers, by id.
    pub fn local(&self, id: &str) -> Option<Arc<Provider>> {
        self.live().local.get(id).cloned()
    }

    /// How busy this node's providers are, for the other nodes;
    /// `relayed` counts the calls other nodes sent, by provider and node.
    pub fn local_loads(&self, relayed: &HashMap<(String, String), u64>) -> Vec<Load> {
        self.live()
            .local
            .values()
            .map(|p| Load {
                provider: p.id.clone(),
                in_flight: p.in_flight.load(Ordering::Relaxed),
                served: p.served.load(Ordering::Relaxed),
                draining: p.is_draining(),
                from_nodes: relayed
                    .iter()
                    .filter(|((provider, _), _)| *provider == p.id)
                    .map(|((_, node), calls)| NodeCalls {
                        node: node.clone(),
                        calls: *calls,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Takes in what another node says of its providers (`me`: this node).
    pub fn remote_loads(&self, loads: &[Load], me: &str) {
        let live = self.live();
        for load in loads {
            if let Some(provider) = live.remote.get(&load.provider) {
                let mine = load
                    .from_nodes
                    .iter()
                    .find(|n| n.node == me)
                    .map_or(0, |n| n.calls);
                provider
                    .others_in_flight
                    .store(load.in_flight.saturating_sub(mine), Ordering::Relaxed);
                provider
                    .reported_served
                    .store(load.served, Ordering::Relaxed);
                provider.draining.store(load.draining, Ordering::Relaxed);
            }
        }
    }

    /// Makes the other nodes' providers those of `rows` (the cluster's
    /// directory): new ones are added, ones no longer there removed (calls
    /// in flight there go on: whether they end well is for their nodes to
    /// say). A row that does not fit what lives here (another definition
    /// of a live service, a clashing file) is left out, with a warning.
    pub fn sync_remote(&self, rows: Vec<ProviderRow>, peer: impl Fn(&str) -> Arc<Peer>) {
        let present: HashSet<String> = self.live().remote.keys().cloned().collect();
        let listed: HashSet<String> = rows.iter().map(|r| r.provider.clone()).collect();
        // Checked before the registry is locked: checking builds a pool.
        let mut new = Vec::new();
        for row in rows {
            if present.contains(&row.provider) {
                continue;
            }
            match self.files().check_offer(&row.services, &row.files) {
                Ok(offered) => new.push((row, offered)),
                Err(error) => tracing::warn!(
                    provider = %row.provider, node = %row.node,
                    "a provider on another node is left out here: {}", error.message
                ),
            }
        }
        let mut live = self.live();
        let gone: Vec<Arc<RemoteProvider>> = live
            .remote
            .values()
            .filter(|p| !listed.contains(&p.id))
            .cloned()
            .collect();
        for provider in gone {
            live.remote.remove(&provider.id);
            provider.gone.store(true, Ordering::Relaxed);
            let this = |p: &Target| matches!(p, Target::Remote(p) if p.id == provider.id);
            live.withdraw(&provider.services, this);
            self.files
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .release(&provider.files);
        }
        'rows: for (row, offered) in new {
            for shape in &offered.shapes {
                if let Some(service) = live.services.get(&shape.name)
                    && service.shape.signature != shape.signature
                {
                    tracing::warn!(
                        provider = %row.provider, node = %row.node, service = %shape.name,
                        "a provider on another node is left out here: the service lives here with other methods"
                    );
                    continue 'rows;
                }
            }
            if let Err(error) = self
                .files
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .add(&offered.files)
            {
                tracing::warn!(
                    provider = %row.provider, node = %row.node,
                    "a provider on another node is left out here: {}", error.message
                );
                continue;
            }
            let provider = Arc::new(RemoteProvider {
                id: row.provider.clone(),
                peer: peer(&row.node),
                identity: row.identity.as_str().into(),
                since_ms: row.since_ms,
                services: offered.shapes.iter().map(|s| s.name.clone()).collect(),
                files: offered.files.iter().map(|f| f.name().to_string()).collect(),
                concurrency: row.concurrency.max(1) as u64,
                in_flight: AtomicU64::new(0),
                others_in_flight: AtomicU64::new(0),
                reported_served: AtomicU64::new(0),
                draining: AtomicBool::new(false),
                gone: AtomicBool::new(false),
            });
            for shape in offered.shapes {
                live.offer(shape, Target::Remote(provider.clone()));
            }
            live.remote.insert(provider.id.clone(), provider);
        }
    }
}
