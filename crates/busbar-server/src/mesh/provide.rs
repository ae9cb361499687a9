//! `busbar.v1.Mesh`: a provider's stream (Provide) and the listing of live
//! services.

use super::files::SERVICES_FOLDER;
use super::registry::{Provider, ProviderEvent};
use crate::auth::access::Caller;
use crate::error::{Error, Result};
use crate::grpc::{Reply, reply};
use crate::node::{Node, caller, stopped};
use crate::store::{LowerName, NewResource, ResourceKind, Right, now_ms};
use busbar_proto::v1::{self as pb, from_provider::Message as FromMessage, mesh_server::Mesh};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Request, Status, Streaming};

/// How often a provider's credentials are checked again while its stream
/// lasts: a revoked identity, API token, certificate or changed password
/// cuts it within this.
const RECHECK_CREDENTIALS: Duration = Duration::from_secs(2);

/// How long a new Provide stream may take to send its Offer.
const OFFER_WAIT: Duration = Duration::from_secs(10);

/// Messages queued to one provider before the calls routed to it wait.
const OUTBOUND: usize = 256;

/// A provider's concurrency when its offer gives none, and the most it may give.
const DEFAULT_CONCURRENCY: u32 = 64;
const MAX_CONCURRENCY: u32 = 65_536;

#[derive(Clone)]
pub struct MeshService {
    pub node: Arc<Node>,
}

type ToProviderStream = Pin<Box<dyn Stream<Item = Result<pb::ToProvider, Status>> + Send>>;

impl MeshService {
    /// Makes sure `path` is a SERVICE resource the caller may provide:
    /// creates it, owned by the caller, when it is missing and the caller
    /// may write to /services.
    async fn service_resource(&self, caller: &Caller, path: &str) -> Result<()> {
        let access = &self.node.access;
        match access.resource(path).await? {
            Some(record) if record.kind == ResourceKind::Service => {
                access.require(caller, path, Right::Write).await
            }
            Some(record) => Err(Error::failed_precondition(format!(
                "{path} is a {}, not a service",
                record.kind.name()
            ))),
            None => {
                access
                    .require(caller, SERVICES_FOLDER, Right::Write)
                    .await
                    .map_err(|_| {
                        Error::not_found(format!(
                            "{path} does not exist and {} may not create it (that needs write on {SERVICES_FOLDER}); ask an admin to run: busbar service create {}",
                            caller.name,
                            path.trim_start_matches("/services/")
                        ))
                    })?;
                match self
                    .node
                    .store
                    .create_resource(NewResource::new(path, ResourceKind::Service, &caller.name))
                    .await
                {
                    // Two providers creating it at once: the other one won.
                    Err(error) if error.code == crate::error::ErrorCode::AlreadyExists => {}
                    created => {
                        created?;
                    }
                }
                access.invalidate().await;
                Ok(())
            }
        }
    }
}

/// The first message of a Provide stream, which must be an Offer.
async fn first_offer(inbound: &mut Streaming<pb::FromProvider>) -> Result<pb::Offer> {
    let first = tokio::time::timeout(OFFER_WAIT, inbound.message())
        .await
        .map_err(|_| {
            Error::invalid_argument(format!(
                "a Provide stream sends its Offer first, within {OFFER_WAIT:?}"
            ))
        })?
        .map_err(|status| Error::invalid_argument(status.message().to_string()))?;
    match first.and_then(|m| m.message) {
        Some(FromMessage::Offer(offer)) => Ok(offer),
        _ => Err(Error::invalid_argument(
            "the first message of a Provide stream is an Offer",
        )),
    }
}

/// Reads a provider's stream until it ends, passing responses and credit
/// to the calls they belong to.
async fn serve_provider(
    node: Arc<Node>,
    provider: Arc<Provider>,
    mut inbound: Streaming<pb::FromProvider>,
    files: Vec<String>,
    principal: crate::auth::Principal,
    _ends_outbound: tokio::sync::oneshot::Sender<()>,
) {
    let stopped = stopped(node.lifecycle());
    tokio::pin!(stopped);
    let mut recheck = tokio::time::interval(RECHECK_CREDENTIALS);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            _ = &mut stopped => break "the node stopped".to_string(),
            _ = recheck.tick() => {
                match node.access.caller(&node.auth, &principal).await {
                    Ok(_) => continue,
                    Err(error) => {
                        let reason = format!("its credentials no longer hold: {}", error.message);
                        let _ = provider.outbound.try_send(Err(error.into()));
                        break reason;
                    }
                }
            }
        };
        let message = match message {
            Ok(Some(pb::FromProvider { message: Some(m) })) => m,
            Ok(Some(_)) => continue,
            Ok(None) => break "it closed its stream".to_string(),
            Err(status) => break format!("its stream failed: {}", status.message()),
        };
        match message {
            FromMessage::Response(response) => {
                let call = response.call;
                let ends = response.end.is_some();
                if let Some((sink, _)) = provider.slot(call) {
                    // The node's channel holds the provider's whole credit:
                    // full means the provider sent past it.
                    if sink.try_send(ProviderEvent::Response(response)).is_err() {
                        let _ = sink.try_send(ProviderEvent::Broken(
                            "the provider sent more responses than its credit".into(),
                        ));
                        provider.end_call(call);
                    } else if ends {
                        provider.end_call(call);
                    }
                }
                // A response for a call that is over (cancelled, timed out): dropped.
            }
            FromMessage::Credit(credit) => {
                if let Some((_, requests)) = provider.slot(credit.call) {
                    let grant = (credit.messages as usize).min(super::route::WINDOW as usize);
                    if requests.available_permits() + grant <= 2 * super::route::WINDOW as usize {
                        requests.add_permits(grant);
                    }
                }
            }
            FromMessage::Drain(_) => {
                provider.draining.store(true, Ordering::Relaxed);
                tracing::info!(provider = %provider.id, "provider draining");
                // After every Start sent before the flag was set, so the
                // provider knows when it has all its calls.
                let drained = pb::ToProvider {
                    message: Some(pb::to_provider::Message::Drained(pb::Drain {})),
                };
                let _ = provider.outbound.send(Ok(drained)).await;
            }
            FromMessage::Offer(_) => {
                let _ = provider
                    .outbound
                    .send(Err(Error::invalid_argument(
                        "one Offer per Provide stream; open another stream to offer more services",
                    )
                    .into()))
                    .await;
                break "it sent a second Offer".to_string();
            }
        }
    };
    let in_flight = provider.calls.lock().map(|c| c.len()).unwrap_or(0);
    tracing::info!(provider = %provider.id, identity = %provider.identity, in_flight, "provider gone: {reason}");
    node.mesh.remove(&provider, &files);
    if let Some(cluster) = &node.mesh_cluster {
        cluster.withdraw(&provider.id).await;
    }
}

/// The messages queued to a provider, ending once `ended` fires and what
/// was queued before it (a final error included) has gone out.
fn until_ended(
    queued: mpsc::Receiver<Result<pb::ToProvider, Status>>,
    ended: tokio::sync::oneshot::Receiver<()>,
) -> impl Stream<Item = Result<pb::ToProvider, Status>> {
    futures::stream::unfold(
        (queued, Some(ended)),
        |(mut queued, mut ended)| async move {
            loop {
                let Some(signal) = ended.as_mut() else {
                    let next = queued.recv().await?;
                    return Some((next, (queued, None)));
                };
                tokio::select! {
                    biased;
                    next = queued.recv() => return next.map(|next| (next, (queued, ended))),
                    _ = signal => {
                        queued.close();
                        ended = None;
                    }
                }
            }
        },
    )
}

#[tonic::async_trait]
impl Mesh for MeshService {
    type ProvideStream = ToProviderStream;

    async fn provide(
        &self,
        request: Request<Streaming<pb::FromProvider>>,
    ) -> Reply<Self::ProvideStream> {
        let caller = caller(&request)?;
        let principal = request
            .extensions()
            .get::<crate::auth::Principal>()
            .cloned()
            .ok_or_else(|| Error::unauthenticated("a provider logs in with a session first"))?;
        let mut inbound = request.into_inner();
        let offer = first_offer(&mut inbound).await?;
        let offered = self
            .node
            .mesh
            .files()
            .check_offer(&offer.services, &offer.file_descriptor_set)?;
        for shape in &offered.shapes {
            self.service_resource(&caller, &shape.path).await?;
        }
        let concurrency = match offer.concurrency {
            0 => DEFAULT_CONCURRENCY,
            n if n <= MAX_CONCURRENCY => n,
            n => {
                return Err(Error::invalid_argument(format!(
                    "bad concurrency {n}: use 1 to {MAX_CONCURRENCY}, or 0 for {DEFAULT_CONCURRENCY}"
                ))
                .into());
            }
        };
        let (outbound, queued) = mpsc::channel(OUTBOUND);
        let provider = Arc::new(Provider {
            id: self.node.mesh.provider_id(),
            identity: caller.name.clone(),
            since_ms: now_ms(),
            services: offered.shapes.iter().map(|s| s.name.clone()).collect(),
            outbound,
            calls: Default::default(),
            in_flight: AtomicU64::new(0),
            served: AtomicU64::new(0),
            concurrency: u64::from(concurrency),
            draining: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        });
        let paths: Vec<String> = offered.shapes.iter().map(|s| s.path.clone()).collect();
        let files: Vec<String> = offered.files.iter().map(|f| f.name().to_string()).collect();
        // The answer goes first, before any call can be routed here.
        let answer = pb::ToProvider {
            message: Some(pb::to_provider::Message::Offered(pb::Offered {
                provider: provider.id.clone(),
                paths,
            })),
        };
        provider
            .outbound
            .try_send(Ok(answer))
            .expect("a new channel has room");
        match &self.node.mesh_cluster {
            // Checked against every node's providers, and recorded for them.
            Some(cluster) => {
                cluster
                    .offer(&self.node, provider.clone(), offered, &files)
                    .await?
            }
            None => self.node.mesh.add(provider.clone(), offered)?,
        }
        tracing::info!(provider = %provider.id, identity = %caller.name, services = ?provider.services, "provider offered services");
        // The stream to the provider ends with the stream from it (calls
        // still holding the provider keep its sender alive).
        let (ends_outbound, ended) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_provider(
            self.node.clone(),
            provider,
            inbound,
            files,
            principal,
            ends_outbound,
        ));
        reply(Box::pin(until_ended(queued, ended)) as ToProviderStream)
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Reply<pb::ListServicesResponse> {
        let caller = caller(&request)?;
        let given = request.get_ref().path.trim();
        let path = if given.is_empty() {
            SERVICES_FOLDER.to_string()
        } else {
            self.node.path(given).await?
        };
        // Like listing a folder, listing needs read on the path; /services
        // itself, the node's folder, lists what the caller may read.
        if path != SERVICES_FOLDER {
            self.node
                .access
                .require(&caller, &path, Right::Read)
                .await?;
        }
        if let Some(cluster) = &self.node.mesh_cluster {
            cluster.refresh_soon(&self.node).await;
        }
        let mut services = Vec::new();
        for (shape, providers) in self.node.mesh.list(&path) {
            if self.node.access.right(&caller, &shape.path).await? < Some(Right::Read) {
                continue;
            }
            let mut methods: Vec<String> = shape.methods.keys().cloned().collect();
            methods.sort();
            services.push(pb::ServiceInfo {
                name: shape.name.clone(),
                path: shape.path.clone(),
                methods,
                providers: providers.iter().map(|p| p.info()).collect(),
            });
        }
        reply(pb::ListServicesResponse { services })
    }
}
