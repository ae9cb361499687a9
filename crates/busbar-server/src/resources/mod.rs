//! `busbar.v1.Resources`: the tree of folders and named resources, and grants.

pub mod paths;

use crate::auth::access::Caller;
use crate::bus::BusMessage;
use crate::calls::{CallKey, first_outcome};
use crate::error::{Error, Result};
use crate::grpc::{Reply, reply};
use crate::node::{Node, caller, caller_and_message};
use crate::store::{LowerName, NewResource, ResourceKind, ResourceRecord, Right, known};
use busbar_proto::v1::{self as pb, resources_server::Resources};
use prost::Message;
use std::sync::Arc;
use tonic::Request;

pub struct ResourcesService {
    pub node: Arc<Node>,
}

impl ResourcesService {
    /// `Create` with `exist_ok` of a path that exists: the resource when it
    /// is what was asked for (same kind, same series definition).
    async fn existing(
        &self,
        caller: &Caller,
        path: &str,
        kind: ResourceKind,
        series: Option<&crate::timeseries::SeriesSpec>,
    ) -> Reply<pb::Resource> {
        let record = self
            .node
            .access
            .require_resource(caller, path, Right::Read)
            .await?;
        let already = |what: String| -> tonic::Status {
            Error {
                code: crate::error::ErrorCode::AlreadyExists,
                message: format!("{path} already exists {what}"),
            }
            .into()
        };
        if record.kind != kind {
            return Err(already(format!(
                "as a {}, not a {}",
                record.kind.name(),
                kind.name()
            )));
        }
        if let Some(wanted) = series
            && *self.node.timeseries.spec(&record.id).await? != *wanted
        {
            return Err(already("with another definition".into()));
        }
        reply(self.resource_pb(Arc::unwrap_or_clone(record)).await)
    }

    /// A resource as returned to clients; series carry their definition.
    async fn resource_pb(&self, record: ResourceRecord) -> pb::Resource {
        let series = match record.kind {
            ResourceKind::Timeseries => self.node.timeseries.spec(&record.id).await.ok(),
            _ => None,
        }
        .map(|spec| spec.to_proto());
        pb::Resource {
            series,
            ..resource_pb(record)
        }
    }
}

pub fn resource_pb(record: ResourceRecord) -> pb::Resource {
    pb::Resource {
        series: None,
        name: paths::name(&record.path).to_string(),
        id: record.id,
        path: record.path,
        kind: record.kind as i32,
        owner: record.owner,
        created_ms: record.created_ms,
    }
}

/// Bus subject of a room's events or a wire's chunks; by id, so moves do not matter.
pub fn subject(kind: ResourceKind, id: &str) -> String {
    format!("{}.{id}", kind.name())
}

fn right(value: i32) -> Result<Right> {
    known::<Right>(value).ok_or_else(|| {
        Error::invalid_argument(format!(
            "bad right {value}: use READ (1), WRITE (2) or ADMIN (3)"
        ))
    })
}

impl ResourcesService {
    /// Deleting or moving `path` needs write on its parent or admin on it.
    async fn require_removable(&self, caller: &Caller, path: &str) -> Result<()> {
        let access = &self.node.access;
        let parent = paths::parent(path).unwrap_or("/");
        if access.right(caller, parent).await? >= Some(Right::Write)
            || access.right(caller, path).await? == Some(Right::Admin)
        {
            return Ok(());
        }
        access.require(caller, parent, Right::Write).await
    }

    async fn validate_principal(&self, principal: &str) -> Result<()> {
        match principal.strip_prefix("group:") {
            Some(group) => paths::validate_identity_name(group),
            None => {
                paths::validate_identity_name(principal)?;
                match self.node.store.identity_by_name(principal).await? {
                    Some(_) => Ok(()),
                    None => Err(Error::not_found(format!(
                        "no identity named {principal}; grants name an identity or group:<name>"
                    ))),
                }
            }
        }
    }

    /// Ends the member streams of deleted rooms and the subscriptions of deleted wires.
    async fn announce_deleted(&self, deleted: &[ResourceRecord]) {
        for record in deleted {
            let payload = match record.kind {
                ResourceKind::Room => pb::RoomEvent {
                    kind: pb::room_event::Kind::Deleted as i32,
                    room: record.id.clone(),
                    path: record.path.clone(),
                    ..Default::default()
                }
                .encode_to_vec()
                .into(),
                ResourceKind::Wire => bytes::Bytes::new(),
                ResourceKind::Database => {
                    self.node.sql.remove(&record.id).await;
                    continue;
                }
                ResourceKind::Timeseries => {
                    self.node.timeseries.remove(&record.id).await;
                    continue;
                }
                ResourceKind::Transport => {
                    // A deleted session is a released one.
                    if let Err(error) = self.node.transport.drop_session(&record.id).await {
                        tracing::warn!(path = %record.path, "dropping a deleted session's queues: {}", error.message);
                    }
                    self.node.wake_transport_session(&record.id, true).await;
                    continue;
                }
                _ => continue,
            };
            let message = BusMessage {
                payload,
                last: true,
            };
            self.node
                .bus
                .publish(&subject(record.kind, &record.id), message, None)
                .await;
        }
    }

    /// The storage behind a new database or series.
    async fn make_file(
        &self,
        record: &ResourceRecord,
        series: Option<&crate::timeseries::SeriesSpec>,
    ) -> Result<()> {
        match (record.kind, series) {
            (ResourceKind::Database, _) => self.node.sql.create(&record.id).await,
            (ResourceKind::Timeseries, Some(spec)) => {
                self.node.timeseries.create(&record.id, spec).await
            }
            _ => Ok(()),
        }
    }

    async fn grants(&self, path: &str, effective: bool) -> Result<pb::GrantsResponse> {
        let lineage = if effective {
            paths::lineage(path)
        } else {
            vec![path.to_string()]
        };
        let grants = self.node.store.grants_on(&lineage).await?;
        Ok(pb::GrantsResponse {
            grants: grants
                .into_iter()
                .map(|g| pb::Grant {
                    principal: g.principal,
                    right: g.right as i32,
                    path: g.path,
                })
                .collect(),
        })
    }
}

#[tonic::async_trait]
impl Resources for ResourcesService {
    async fn get(&self, request: Request<pb::GetResourceRequest>) -> Reply<pb::Resource> {
        let caller = caller(&request)?;
        let path = self.node.path(&request.get_ref().path).await?;
        let record = self
            .node
            .access
            .require_resource(&caller, &path, Right::Read)
            .await?;
        reply(self.resource_pb(Arc::unwrap_or_clone(record)).await)
    }

    async fn list(
        &self,
        request: Request<pb::ListResourcesRequest>,
    ) -> Reply<pb::ListResourcesResponse> {
        let caller = caller(&request)?;
        let path = self.node.path(&request.get_ref().path).await?;
        self.node
            .access
            .require(&caller, &path, Right::Read)
            .await?;
        let records = self
            .node
            .store
            .list_resources(&path, request.get_ref().recursive)
            .await?;
        reply(pb::ListResourcesResponse {
            resources: futures::future::join_all(records.into_iter().map(|r| self.resource_pb(r)))
                .await,
        })
    }

    async fn create(&self, request: Request<pb::CreateResourceRequest>) -> Reply<pb::Resource> {
        let caller = caller(&request)?;
        let key = CallKey::of(&self.node, &request, &caller, "CreateResource")?;
        let r = request.into_inner();
        let path = self.node.path(&r.path).await?;
        let kind = match known::<ResourceKind>(r.kind) {
            Some(
                kind @ (ResourceKind::Folder
                | ResourceKind::Room
                | ResourceKind::Wire
                | ResourceKind::Database
                | ResourceKind::Timeseries
                | ResourceKind::Service),
            ) => kind,
            Some(other) => {
                return Err(Error {
                    code: crate::error::ErrorCode::Unimplemented,
                    message: format!(
                        "{} resources are not available in this version; folders, rooms, wires, databases and time series are",
                        other.name()
                    ),
                }
                .into());
            }
            None => {
                return Err(Error::invalid_argument(format!(
                    "bad kind {}: use FOLDER (1), ROOM (2), WIRE (3), DATABASE (4), TIMESERIES (5) or SERVICE (6)",
                    r.kind
                ))
                .into());
            }
        };
        let series = match kind {
            ResourceKind::Timeseries => Some(crate::timeseries::service::spec_from_pb(r.series)?),
            _ if r.series.is_some() => {
                return Err(Error::invalid_argument(format!(
                    "a series definition belongs to TIMESERIES resources, not to a {}",
                    kind.name()
                ))
                .into());
            }
            _ => None,
        };
        let parent = paths::parent(&path).unwrap_or("/");
        if kind == ResourceKind::Service {
            // A service's path is derived from its protobuf full name.
            let folder = crate::mesh::files::SERVICES_FOLDER;
            let name = path.strip_prefix(folder).and_then(|p| p.strip_prefix('/'));
            match name {
                Some(name) if parent == folder => crate::mesh::files::check_service_name(name)?,
                _ => {
                    return Err(Error::invalid_argument(format!(
                        "a service lives at {folder}/<protobuf full name>, e.g. {folder}/mesh.trust.Tokenizer; not at {path}"
                    ))
                    .into());
                }
            }
        }
        self.node
            .access
            .require(&caller, parent, Right::Write)
            .await?;
        let new = NewResource::new(&path, kind, &caller.name).parents(r.parents);
        let created = match &key {
            Some(key) => self.node.store.create_resource_keyed(new, key).await,
            None => self
                .node
                .store
                .create_resource(new)
                .await
                .map(|r| (r, true)),
        };
        let record = match created {
            Err(error) if r.exist_ok && error.code == crate::error::ErrorCode::AlreadyExists => {
                return self.existing(&caller, &path, kind, series.as_ref()).await;
            }
            // A repeat of a keyed create. The first try made the file too,
            // unless its node died between the two: made again here (both
            // engines make it only when missing) while the resource stands.
            Ok((record, false)) => {
                let standing = self.node.store.resource(&record.path).await?;
                if standing.is_some_and(|now| now.id == record.id) {
                    self.make_file(&record, series.as_ref()).await?;
                }
                return reply(self.resource_pb(record).await);
            }
            created => created?.0,
        };
        if let Err(error) = self.make_file(&record, series.as_ref()).await {
            // No resource without its file: undo the entry (and its key's
            // record, so a repeat makes it again), report the cause.
            let _ = self.node.store.delete_resource(&path, false).await;
            if let Some(key) = &key {
                let _ = self.node.store.forget_call(key).await;
            }
            return Err(error.into());
        }
        let answer = self.resource_pb(record).await;
        reply(self.node.access.changed(answer).await)
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteResourceRequest>,
    ) -> Reply<pb::DeleteResourceResponse> {
        let caller = caller(&request)?;
        let key = CallKey::of(&self.node, &request, &caller, "DeleteResource")?;
        let path = self.node.path(&request.get_ref().path).await?;
        let recursive = request.get_ref().recursive;
        // A repeat of a keyed delete finds the path gone: the first
        // outcome answers it.
        if let Some(deleted) = first_outcome::<Vec<ResourceRecord>>(&self.node, &key).await? {
            return reply(pb::DeleteResourceResponse {
                deleted: deleted.len() as u64,
            });
        }
        self.require_removable(&caller, &path).await?;
        let store = &self.node.store;
        let deleted = match &key {
            Some(key) => store.delete_resource_keyed(&path, recursive, key).await?.0,
            None => store.delete_resource(&path, recursive).await?,
        };
        self.node.access.invalidate().await;
        self.announce_deleted(&deleted).await;
        reply(pb::DeleteResourceResponse {
            deleted: deleted.len() as u64,
        })
    }

    async fn r#move(&self, request: Request<pb::MoveResourceRequest>) -> Reply<pb::Resource> {
        let caller = caller(&request)?;
        let key = CallKey::of(&self.node, &request, &caller, "MoveResource")?;
        let from = self.node.path(&request.get_ref().from).await?;
        let to = self.node.path(&request.get_ref().to).await?;
        // A repeat of a keyed move finds `from` gone: the first outcome
        // answers it.
        if let Some(moved) = first_outcome::<ResourceRecord>(&self.node, &key).await? {
            return reply(self.resource_pb(moved).await);
        }
        self.require_removable(&caller, &from).await?;
        self.node
            .access
            .require(&caller, paths::parent(&to).unwrap_or("/"), Right::Write)
            .await?;
        let record = match &key {
            Some(key) => {
                self.node
                    .store
                    .move_resource_keyed(&from, &to, key)
                    .await?
                    .0
            }
            None => self.node.store.move_resource(&from, &to).await?,
        };
        let answer = self.resource_pb(record).await;
        reply(self.node.access.changed(answer).await)
    }

    async fn grant(&self, request: Request<pb::GrantRequest>) -> Reply<pb::GrantsResponse> {
        let (caller, r) = caller_and_message(request)?;
        let path = self.node.path(&r.path).await?;
        let right = right(r.right)?;
        self.node
            .access
            .require_resource(&caller, &path, Right::Admin)
            .await?;
        self.validate_principal(&r.principal).await?;
        self.node
            .store
            .set_grant(&path, &r.principal, right)
            .await?;
        let answer = self.grants(&path, false).await?;
        reply(self.node.access.changed(answer).await)
    }

    async fn revoke(&self, request: Request<pb::GrantRequest>) -> Reply<pb::GrantsResponse> {
        let (caller, r) = caller_and_message(request)?;
        let path = self.node.path(&r.path).await?;
        self.node
            .access
            .require_resource(&caller, &path, Right::Admin)
            .await?;
        if !self.node.store.remove_grant(&path, &r.principal).await? {
            return Err(
                Error::not_found(format!("{} holds no grant set on {path}", r.principal)).into(),
            );
        }
        let answer = self.grants(&path, false).await?;
        reply(self.node.access.changed(answer).await)
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Reply<pb::GrantsResponse> {
        let caller = caller(&request)?;
        let path = self.node.path(&request.get_ref().path).await?;
        self.node
            .access
            .require_resource(&caller, &path, Right::Read)
            .await?;
        reply(self.grants(&path, request.get_ref().effective).await?)
    }
}
