//! `busbar.v1.Sessions`: opening, keeping and ending data sessions.

use crate::error::Error;
use crate::grpc::{Reply, reply};
use crate::node::{Node, caller};
use busbar_proto::v1::{self as pb, sessions_server::Sessions};
use std::sync::Arc;
use tonic::Request;

pub struct SessionsService {
    pub node: Arc<Node>,
}

impl SessionsService {
    fn info(&self, session: &crate::sessions::DataSession) -> pb::SessionInfo {
        pb::SessionInfo {
            session: session.id.clone(),
            idle_timeout_ms: self.node.sessions.idle.as_millis() as i64,
            expires_ms: self.node.sessions.expires_ms(session),
        }
    }

    async fn end(
        &self,
        request: Request<pb::SessionRequest>,
        commit: bool,
    ) -> Reply<pb::SessionEnded> {
        let caller = caller(&request)?;
        let id = request.into_inner().session;
        let sessions = self.node.sessions.clone();
        // Commit fsyncs every file the session wrote: off the async threads.
        let (databases, series) =
            tokio::task::spawn_blocking(move || sessions.end(&id, &caller.identity_id, commit))
                .await
                .map_err(Error::from)??;
        reply(pb::SessionEnded { databases, series })
    }
}

#[tonic::async_trait]
impl Sessions for SessionsService {
    async fn open(&self, request: Request<pb::OpenSessionRequest>) -> Reply<pb::SessionInfo> {
        let caller = caller(&request)?;
        let session = self.node.sessions.open(&caller.identity_id)?;
        reply(self.info(&session))
    }

    async fn keep_alive(&self, request: Request<pb::SessionRequest>) -> Reply<pb::SessionInfo> {
        let caller = caller(&request)?;
        let session = self
            .node
            .sessions
            .get(&request.get_ref().session, &caller.identity_id)?;
        reply(self.info(&session))
    }

    async fn commit(&self, request: Request<pb::SessionRequest>) -> Reply<pb::SessionEnded> {
        self.end(request, true).await
    }

    async fn rollback(&self, request: Request<pb::SessionRequest>) -> Reply<pb::SessionEnded> {
        self.end(request, false).await
    }
}
