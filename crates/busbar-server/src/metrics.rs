//! Prometheus metrics, served as text on `/metrics` of the metrics listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Open client connections (TCP, TLS or not).
    pub connections: Gauge,
    /// Connections closed at accept because `max_connections` were open.
    pub refused_connections: Counter,
    /// Finished calls by full method name and final gRPC code.
    pub calls: Family<CallLabels, Counter>,
    /// Events emitted into rooms.
    pub room_events: Counter,
    /// Room events delivered to members' queues.
    pub room_deliveries: Counter,
    /// Bytes published into wires.
    pub wire_bytes: Counter,
    /// Subscribers cut for falling behind, by kind ("room", "wire").
    pub slow_consumer_drops: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("busbar");
        let metrics = Metrics {
            connections: Gauge::default(),
            refused_connections: Counter::default(),
            calls: Family::default(),
            room_events: Counter::default(),
            room_deliveries: Counter::default(),
            wire_bytes: Counter::default(),
            slow_consumer_drops: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open client connections",
            metrics.connections.clone(),
        );
        registry.register(
            "refused_connections",
            "Connections closed at accept because max_connections were open",
            metrics.refused_connections.clone(),
        );
        registry.register(
            "calls",
            "Finished calls by method and gRPC code",
            metrics.calls.clone(),
        );
        registry.register(
            "room_events",
            "Events emitted into rooms",
            metrics.room_events.clone(),
        );
        registry.register(
            "room_deliveries",
            "Room events queued for members",
            metrics.room_deliveries.clone(),
        );
        registry.register(
            "wire_bytes",
            "Bytes published into wires",
            metrics.wire_bytes.clone(),
        );
        registry.register(
            "slow_consumer_drops",
            "Subscribers cut for falling behind their bounded queue",
            metrics.slow_consumer_drops.clone(),
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
