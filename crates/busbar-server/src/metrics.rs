//! Prometheus metrics, served as text on `/metrics` of the metrics listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: String,
    pub code: String,
}

/// Calls through the mesh: by service, the identity of the provider that
/// answered, and the final gRPC code. Identities, not provider ids, so the
/// label set stays bounded as providers come and go.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeshLabels {
    pub service: String,
    pub provider: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// gRPC status code names, indexed by code.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The gRPC code number that stands for codes outside the known range.
const GRPC_UNKNOWN: usize = 2;

/// One method's call counters, one per gRPC code, made on first use.
type MethodCounters = [OnceLock<Counter>; GRPC_CODE_NAMES.len()];

/// `busbar_calls_total{method, code}`, counted on every call without
/// building the label set: the family's own lookup allocates two label
/// strings and hashes them with SipHash, per call. Each method's counters
/// are found by one hash of the method name and are the family's own
/// counters, so `/metrics` shows them as usual.
#[derive(Default)]
pub struct CallCounters {
    family: Family<CallLabels, Counter>,
    /// Grows by one entry per method that was ever called: the caller passes
    /// a shared name for methods that do not exist.
    methods: RwLock<HashMap<Box<str>, MethodCounters, foldhash::fast::RandomState>>,
}

impl CallCounters {
    /// Counts one finished call of `method` with gRPC code `code` (codes
    /// past the known ones count as UNKNOWN).
    pub fn inc(&self, method: &str, code: usize) {
        let code = if code < GRPC_CODE_NAMES.len() {
            code
        } else {
            GRPC_UNKNOWN
        };
        let count = |counters: &MethodCounters| {
            counters[code]
                .get_or_init(|| {
                    self.family
                        .get_or_create(&CallLabels {
                            method: method.to_string(),
                            code: GRPC_CODE_NAMES[code].to_string(),
                        })
                        .clone()
                })
                .inc()
        };
        if let Some(counters) = self
            .methods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(method)
        {
            count(counters);
            return;
        }
        let mut methods = self.methods.write().unwrap_or_else(|p| p.into_inner());
        count(methods.entry(method.into()).or_default());
    }

    /// Calls finished so far, and those of them that failed: summed from
    /// the per-method counters when asked (a status call), so the call path
    /// counts each call once.
    pub fn totals(&self) -> (u64, u64) {
        let methods = self.methods.read().unwrap_or_else(|p| p.into_inner());
        let mut by_code = [0u64; GRPC_CODE_NAMES.len()];
        for counters in methods.values() {
            for (code, counter) in counters.iter().enumerate() {
                by_code[code] += counter.get().map_or(0, |c| c.get());
            }
        }
        let failed = by_code[1..].iter().sum();
        (by_code[0] + failed, failed)
    }
}

pub struct Metrics {
    registry: Registry,
    /// Open client connections (TCP, TLS or not).
    pub connections: Gauge,
    /// Connections closed at accept because `max_connections` were open.
    pub refused_connections: Counter,
    /// Finished calls by full method name and final gRPC code.
    pub calls: CallCounters,
    /// Events emitted into rooms.
    pub room_events: Counter,
    /// Room events delivered to members' queues.
    pub room_deliveries: Counter,
    /// Bytes published into wires.
    pub wire_bytes: Counter,
    /// Subscribers cut for falling behind, by kind ("room", "wire").
    pub slow_consumer_drops: Family<KindLabels, Counter>,
    /// Calls routed to providers.
    pub mesh_calls: Family<MeshLabels, Counter>,
}

/// Registers each named field of `metrics` under its own name.
macro_rules! register {
    ($registry:ident, $metrics:ident, $($field:ident: $help:literal),* $(,)?) => {
        $($registry.register(stringify!($field), $help, $metrics.$field.clone());)*
    };
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("busbar");
        let metrics = Metrics {
            connections: Gauge::default(),
            refused_connections: Counter::default(),
            calls: CallCounters::default(),
            room_events: Counter::default(),
            room_deliveries: Counter::default(),
            wire_bytes: Counter::default(),
            slow_consumer_drops: Family::default(),
            mesh_calls: Family::default(),
            registry: Registry::default(),
        };
        register!(
            registry,
            metrics,
            connections: "Open client connections",
            refused_connections: "Connections closed at accept because max_connections were open",
            room_events: "Events emitted into rooms",
            room_deliveries: "Room events queued for members",
            wire_bytes: "Bytes published into wires",
            slow_consumer_drops: "Subscribers cut for falling behind their bounded queue",
            mesh_calls: "Calls routed to providers, by service, provider identity and gRPC code",
        );
        registry.register(
            "calls",
            "Finished calls by method and gRPC code",
            metrics.calls.family.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Serves `GET /metrics` over HTTP/1 on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        use http_body_util::Full;
        use hyper::service::service_fn;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let response = if request.uri().path() == "/metrics" {
                            hyper::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(bytes::Bytes::from(metrics.render())))
                        } else {
                            hyper::Response::builder()
                                .status(404)
                                .body(Full::new(bytes::Bytes::from_static(b"try /metrics\n")))
                        };
                        Ok::<_, http::Error>(response.expect("static response parts are valid"))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    }
}

/// Binds the metrics listener; `None` when metrics are off.
pub async fn bind(address: Option<SocketAddr>) -> std::io::Result<Option<tokio::net::TcpListener>> {
    match address {
        Some(address) => Ok(Some(tokio::net::TcpListener::bind(address).await?)),
        None => Ok(None),
    }
}
