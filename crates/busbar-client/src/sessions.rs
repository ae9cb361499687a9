//! Data sessions: server-side workspaces for SQL and time-series writes that
//! become visible together at commit.

use crate::client::Client;
use crate::error::Result;
use busbar_proto::v1::{self as pb, sessions_client::SessionsClient};
use std::sync::Arc;
use std::time::Duration;

pub use pb::SessionEnded;

/// An open session. It derefs to a [`Client`] whose SQL, procedure and
/// time-series calls run inside the session: they see its uncommitted
/// changes, and nobody else does until [`Session::commit`].
///
/// While the session is open, one task on the client's runtime keeps it
/// alive (no thread per session). Dropping it without committing rolls it
/// back.
pub struct Session {
    client: Client,
    id: Arc<str>,
    keep_alive: tokio::task::JoinHandle<()>,
    ended: bool,
}

impl std::ops::Deref for Session {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

impl Client {
    fn sessions_client(&self) -> SessionsClient<crate::client::Intercepted> {
        SessionsClient::with_interceptor(self.inner.channel(), self.context())
    }

    /// Opens a data session.
    pub async fn session(&self) -> Result<Session> {
        let info = self
            .sessions_client()
            .open(pb::OpenSessionRequest {})
            .await?
            .into_inner();
        let id: Arc<str> = info.session.into();
        // A third of the idle timeout between pings leaves room for two to fail.
        let every = Duration::from_millis((info.idle_timeout_ms.max(300) / 3) as u64);
        let pinger = self.with_timeout(every);
        let ping_id = id.to_string();
        let keep_alive = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let request = pb::SessionRequest {
                    session: ping_id.clone(),
                };
                if let Err(error) = pinger.sessions_client().keep_alive(request).await
                    && error.code() == tonic::Code::NotFound
                {
                    return; // ended or expired: nothing left to keep
                }
            }
        });
        Ok(Session {
            client: Client {
                data_session: Some(id.clone()),
                ..self.clone()
            },
            id,
            keep_alive,
            ended: false,
        })
    }

    /// The session id data calls carry, or "" outside a session.
    pub(crate) fn session_id(&self) -> String {
        self.data_session.as_deref().unwrap_or_default().to_string()
    }
}

impl Session {
    /// The session's id, as the server knows it.
    pub fn id(&self) -> &str {
        &self.id
    }

    async fn end(mut self, commit: bool) -> Result<SessionEnded> {
        self.ended = true;
        self.keep_alive.abort();
        let request = pb::SessionRequest {
            session: self.id.to_string(),
        };
        let mut sessions = self.client.sessions_client();
        let ended = if commit {
            sessions.commit(request).await?
        } else {
            sessions.rollback(request).await?
        };
        Ok(ended.into_inner())
    }

    /// Makes every change of the session durable and visible, and ends it.
    pub async fn commit(self) -> Result<SessionEnded> {
        self.end(true).await
    }

    /// Discards every change of the session, and ends it.
    pub async fn rollback(self) -> Result<SessionEnded> {
        self.end(false).await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keep_alive.abort();
        if self.ended {
            return;
        }
        // Roll back now rather than when the server's idle timeout ends it.
        let mut sessions = self.client.sessions_client();
        let request = pb::SessionRequest {
            session: self.id.to_string(),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = sessions.rollback(request).await;
            });
        }
    }
}
