//! The live services of this node: which providers offer each, the shape of
//! each method (how it streams, whether it may be retried), and the
//! descriptor files reflection serves for them.

use super::files::{DescriptorFiles, Offered};
use crate::error::{Error, Result};
use busbar_proto::v1 as pb;
use std::collections::HashMap;
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

struct LiveService {
    shape: Arc<ServiceShape>,
    providers: Vec<Arc<Provider>>,
    /// Where the next tie between equally loaded providers is broken.
    turn: usize,
}

#[derive(Default)]
struct Live {
    services: HashMap<String, LiveService>,
}

/// The node's mesh registry.
pub(crate) struct Registry {
    live: Mutex<Live>,
    files: RwLock<DescriptorFiles>,
    next_provider: AtomicU64,
    next_call: AtomicU64,
}

impl Registry {
    pub fn new(files: DescriptorFiles) -> Registry {
        Registry {
            live: Mutex::default(),
            files: RwLock::new(files),
            next_provider: AtomicU64::new(1),
            next_call: AtomicU64::new(1),
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
        format!("p{}", self.next_provider.fetch_add(1, Ordering::Relaxed))
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
            let entry = live
                .services
                .entry(shape.name.clone())
                .or_insert_with(|| LiveService {
                    shape: Arc::new(shape),
                    providers: Vec::new(),
                    turn: 0,
                });
            entry.providers.push(provider.clone());
        }
        Ok(())
    }

    /// Removes a provider whose stream ended; its calls fail.
    pub fn remove(&self, provider: &Provider, file_names: &[String]) {
        let mut live = self.live();
        for name in &provider.services {
            if let Some(service) = live.services.get_mut(name) {
                service.providers.retain(|p| p.id != provider.id);
                if service.providers.is_empty() {
                    live.services.remove(name);
                }
            }
        }
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
    pub fn pick(&self, service: &str, skip: &[String]) -> Option<Arc<Provider>> {
        let mut live = self.live();
        let entry = live.services.get_mut(service)?;
        let count = entry.providers.len();
        let mut best: Option<(u64, usize)> = None;
        for offset in 0..count {
            let index = (entry.turn + offset) % count;
            let provider = &entry.providers[index];
            if provider.is_draining() || skip.contains(&provider.id) {
                continue;
            }
            // Load as calls per unit of concurrency, in 1/1024ths.
            let load = provider.in_flight.load(Ordering::Relaxed) * 1024 / provider.concurrency;
            if best.is_none_or(|(least, _)| load < least) {
                best = Some((load, index));
            }
        }
        let (_, index) = best?;
        entry.turn = (index + 1) % count;
        Some(entry.providers[index].clone())
    }

    /// Live services whose path is `path` or lies below it.
    pub fn list(&self, path: &str) -> Vec<(Arc<ServiceShape>, Vec<Arc<Provider>>)> {
        let live = self.live();
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let mut found: Vec<_> = live
            .services
            .values()
            .filter(|s| s.shape.path == path || s.shape.path.starts_with(&prefix))
            .map(|s| (s.shape.clone(), s.providers.clone()))
            .collect();
        found.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        found
    }

    /// Names of the live services.
    pub fn names(&self) -> Vec<(String, String)> {
        let live = self.live();
        live.services
            .values()
            .map(|s| (s.shape.name.clone(), s.shape.path.clone()))
            .collect()
    }
}
