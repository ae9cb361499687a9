//! Typed calls: node, identities and tokens, resources and grants.

use crate::client::Client;
use crate::error::{Error, Result};
use busbar_proto::v1 as pb;
use futures::{Stream, StreamExt};
use std::time::Duration;

pub use pb::{Grant, Identity, NodeEvent, NodeStatus, Resource, ResourceKind, Right, TokenInfo};

/// Streams of server messages, with errors in the client's error model.
pub type BoxStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T>> + Send>>;

pub(crate) fn error_stream<T: Send + 'static>(stream: tonic::Streaming<T>) -> BoxStream<T> {
    Box::pin(stream.map(|item| item.map_err(Error::from)))
}

impl Client {
    pub async fn status(&self) -> Result<NodeStatus> {
        self.again(pb::StatusRequest {}, async |client, request| {
            Ok(client.node_client().status(request).await?.into_inner())
        })
        .await
    }

    /// Node events: READY first, SHUTTING_DOWN with its grace period when the
    /// node is stopping.
    pub async fn node_events(&self) -> Result<BoxStream<NodeEvent>> {
        let stream = self
            .node_client()
            .events(pb::NodeEventsRequest {})
            .await?
            .into_inner();
        Ok(error_stream(stream))
    }

    pub async fn whoami(&self) -> Result<Identity> {
        self.again(pb::WhoAmIRequest {}, async |client, request| {
            Ok(client.auth_client().who_am_i(request).await?.into_inner())
        })
        .await
    }

    pub async fn create_user(&self, name: &str, password: &str, admin: bool) -> Result<Identity> {
        let request = pb::CreateUserRequest {
            name: name.into(),
            password: password.into(),
            admin,
        };
        self.keyed_with(request, async |client, request| {
            Ok(client
                .auth_client()
                .create_user(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Sets `name`'s password (an empty name means the caller).
    pub async fn set_password(&self, name: &str, password: &str) -> Result<()> {
        let request = pb::SetPasswordRequest {
            name: name.into(),
            password: password.into(),
        };
        self.again(request, async |client, request| {
            client.auth_client().set_password(request).await?;
            Ok(())
        })
        .await
    }

    /// Registers a key identity from its Ed25519 public key (standard base64).
    pub async fn register_key(
        &self,
        name: &str,
        public_key_base64: &str,
        admin: bool,
    ) -> Result<Identity> {
        let request = pb::RegisterKeyRequest {
            name: name.into(),
            public_key: public_key_base64.into(),
            admin,
        };
        self.keyed_with(request, async |client, request| {
            Ok(client
                .auth_client()
                .register_key(request)
                .await?
                .into_inner())
        })
        .await
    }

    pub async fn identities(&self) -> Result<Vec<Identity>> {
        self.again(pb::ListIdentitiesRequest {}, async |client, request| {
            let listed = client.auth_client().list_identities(request).await?;
            Ok(listed.into_inner().identities)
        })
        .await
    }

    pub async fn revoke_identity(&self, name: &str) -> Result<()> {
        let request = pb::RevokeIdentityRequest { name: name.into() };
        self.removal(request, async |client, request| {
            client.auth_client().revoke_identity(request).await?;
            Ok(())
        })
        .await
        .map(drop)
    }

    /// Has the node's CA sign a client certificate over the holder's public
    /// key (`request.public_key`: DER SubjectPublicKeyInfo, ECDSA P-256 or
    /// Ed25519), creating the CERTIFICATE identity when `request.create`.
    pub async fn issue_certificate(
        &self,
        request: pb::IssueCertificateRequest,
    ) -> Result<pb::IssueCertificateResponse> {
        self.keyed_with(request, async |client, request| {
            Ok(client
                .auth_client()
                .issue_certificate(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Makes a key pair here (the private key never leaves this process)
    /// and has the node's CA sign a client certificate over its public key
    /// for `name`, valid `days` (0: 90). `create`: make the CERTIFICATE
    /// identity, with admin on / or not; `None`: the identity exists (a
    /// renewal, or a certificate for a password user).
    pub async fn new_certificate(
        &self,
        name: &str,
        days: u32,
        create: Option<bool>,
    ) -> Result<crate::NewCertificate> {
        let (public_key, private_key_pem) = crate::tls::client_key_pair()?;
        let issued = self
            .issue_certificate(pb::IssueCertificateRequest {
                name: name.into(),
                public_key: public_key.into(),
                days,
                create: create.is_some(),
                admin: create.unwrap_or(false),
            })
            .await?;
        Ok(crate::NewCertificate {
            certificate_pem: issued.certificate_pem,
            private_key_pem,
            ca_pem: issued.ca_pem,
            info: issued.info.unwrap_or_default(),
        })
    }

    /// The client certificates issued to an identity.
    pub async fn certificates(&self, identity: &str) -> Result<Vec<pb::CertificateInfo>> {
        let request = pb::ListCertificatesRequest {
            identity: identity.into(),
        };
        self.again(request, async |client, request| {
            let listed = client.auth_client().list_certificates(request).await?;
            Ok(listed.into_inner().certificates)
        })
        .await
    }

    /// Revokes a client certificate by its hex SHA-256 fingerprint.
    pub async fn revoke_certificate(&self, fingerprint: &str) -> Result<()> {
        let request = pb::RevokeCertificateRequest {
            fingerprint: fingerprint.into(),
        };
        self.removal(request, async |client, request| {
            client.auth_client().revoke_certificate(request).await?;
            Ok(())
        })
        .await
        .map(drop)
    }

    /// Creates an API token for the caller; returns its secret (shown once) and info.
    ///
    /// Sent with an idempotency key: on a cluster, a call whose answer was
    /// lost with its node is sent again to the next node, which revokes the
    /// token the lost try made (its secret never reached anyone) and makes
    /// this one in its place, so the caller ends with one live token whose
    /// secret it holds.
    pub async fn create_token(
        &self,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<(String, TokenInfo)> {
        let request = pb::CreateTokenRequest {
            name: name.into(),
            ttl_seconds: ttl.map_or(0, |ttl| ttl.as_secs().max(1) as i64),
            identity: String::new(),
        };
        self.keyed(|client| {
            let request = request.clone();
            async move {
                let response = client
                    .auth_client()
                    .create_token(request)
                    .await?
                    .into_inner();
                Ok((response.token, response.info.unwrap_or_default()))
            }
        })
        .await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.again(pb::ListTokensRequest::default(), async |client, request| {
            let listed = client.auth_client().list_tokens(request).await?;
            Ok(listed.into_inner().tokens)
        })
        .await
    }

    pub async fn revoke_token(&self, name: &str) -> Result<()> {
        let request = pb::RevokeTokenRequest {
            name: name.into(),
            identity: String::new(),
        };
        self.removal(request, async |client, request| {
            client.auth_client().revoke_token(request).await?;
            Ok(())
        })
        .await
        .map(drop)
    }

    pub async fn add_group_member(&self, group: &str, identity: &str) -> Result<()> {
        let request = pb::GroupMemberRequest {
            group: group.into(),
            identity: identity.into(),
        };
        self.again(request, async |client, request| {
            client.auth_client().add_group_member(request).await?;
            Ok(())
        })
        .await
    }

    pub async fn remove_group_member(&self, group: &str, identity: &str) -> Result<()> {
        let request = pb::GroupMemberRequest {
            group: group.into(),
            identity: identity.into(),
        };
        self.removal(request, async |client, request| {
            client.auth_client().remove_group_member(request).await?;
            Ok(())
        })
        .await
        .map(drop)
    }

    pub async fn get(&self, path: &str) -> Result<Resource> {
        let request = pb::GetResourceRequest { path: path.into() };
        self.again(request, async |client, request| {
            Ok(client.resources_client().get(request).await?.into_inner())
        })
        .await
    }

    /// Children of a folder (or everything below it with `recursive`).
    pub async fn ls(&self, path: &str, recursive: bool) -> Result<Vec<Resource>> {
        let request = pb::ListResourcesRequest {
            path: path.into(),
            recursive,
        };
        self.again(request, async |client, request| {
            let listed = client.resources_client().list(request).await?;
            Ok(listed.into_inner().resources)
        })
        .await
    }

    /// Creates a resource of `kind`; with `parents`, missing folders too.
    /// Time series need a definition: create them with [`Client::create_series`].
    pub async fn create(&self, path: &str, kind: ResourceKind, parents: bool) -> Result<Resource> {
        self.create_kind(path, kind, parents, false).await
    }

    /// Like [`create`](Self::create), but an existing resource of that kind
    /// is returned instead of ALREADY_EXISTS (one of another kind is still
    /// an error): for code that owns its resources, and `mkdir -p`.
    pub async fn ensure(&self, path: &str, kind: ResourceKind, parents: bool) -> Result<Resource> {
        self.create_kind(path, kind, parents, true).await
    }

    async fn create_kind(
        &self,
        path: &str,
        kind: ResourceKind,
        parents: bool,
        exist_ok: bool,
    ) -> Result<Resource> {
        self.create_resource(pb::CreateResourceRequest {
            path: path.into(),
            kind: kind as i32,
            parents,
            series: None,
            exist_ok,
        })
        .await
    }

    /// Creates a resource. With `exist_ok` the call is safe to send again
    /// as it is; without, it is keyed (on a cluster, a repeat whose first
    /// try was applied answers with its outcome).
    pub(crate) async fn create_resource(
        &self,
        request: pb::CreateResourceRequest,
    ) -> Result<Resource> {
        let create = async |client: Client, request| {
            Ok(client
                .resources_client()
                .create(request)
                .await?
                .into_inner())
        };
        if request.exist_ok {
            return self.again(request, create).await;
        }
        self.keyed_with(request, create).await
    }

    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<Resource> {
        self.create(path, ResourceKind::Folder, parents).await
    }

    /// Deletes a resource; a non-empty folder needs `recursive`. Returns how many were deleted.
    pub async fn rm(&self, path: &str, recursive: bool) -> Result<u64> {
        let request = pb::DeleteResourceRequest {
            path: path.into(),
            recursive,
        };
        self.keyed_with(request, async |client, request| {
            Ok(client
                .resources_client()
                .delete(request)
                .await?
                .into_inner()
                .deleted)
        })
        .await
    }

    /// Moves a resource and everything below it, with their grants.
    pub async fn mv(&self, from: &str, to: &str) -> Result<Resource> {
        let request = pb::MoveResourceRequest {
            from: from.into(),
            to: to.into(),
        };
        self.keyed_with(request, async |client, request| {
            Ok(client
                .resources_client()
                .r#move(request)
                .await?
                .into_inner())
        })
        .await
    }

    /// Grants `right` on `path` to an identity name or `group:<name>`.
    pub async fn grant(&self, path: &str, principal: &str, right: Right) -> Result<Vec<Grant>> {
        let request = pb::GrantRequest {
            path: path.into(),
            principal: principal.into(),
            right: right as i32,
        };
        self.again(request, async |client, request| {
            Ok(client
                .resources_client()
                .grant(request)
                .await?
                .into_inner()
                .grants)
        })
        .await
    }

    /// Removes the grant set on `path` for `principal`.
    pub async fn revoke(&self, path: &str, principal: &str) -> Result<Vec<Grant>> {
        let request = pb::GrantRequest {
            path: path.into(),
            principal: principal.into(),
            right: 0,
        };
        let revoke = async |client: Client, request| {
            Ok(client
                .resources_client()
                .revoke(request)
                .await?
                .into_inner()
                .grants)
        };
        match self.removal(request, revoke).await {
            // A repeat found the grant gone (its first try removed it): the
            // grants set on the path now.
            Ok(None) => self.grants(path, false).await,
            other => other.map(Option::unwrap_or_default),
        }
    }

    /// Grants set on `path`; with `effective`, also those inherited from its ancestors.
    pub async fn grants(&self, path: &str, effective: bool) -> Result<Vec<Grant>> {
        let request = pb::ListGrantsRequest {
            path: path.into(),
            effective,
        };
        self.again(request, async |client, request| {
            let listed = client.resources_client().list_grants(request).await?;
            Ok(listed.into_inner().grants)
        })
        .await
    }
}

impl Client {
    /// `call` with `request`, sent again as it is when its outcome is lost
    /// ([`Client::repeatable`]): for calls that are safe to repeat.
    pub(crate) async fn again<R, T, F>(&self, request: R, call: F) -> Result<T>
    where
        R: Clone,
        F: AsyncFn(Client, R) -> Result<T>,
    {
        self.repeatable(|client| call(client, request.clone()))
            .await
    }

    /// A removal (a revocation, a group member or grant removed), sent again
    /// as it is when its outcome is lost: its end state is the same either
    /// way. A repeat that finds the thing gone (`NOT_FOUND`) after a try
    /// whose outcome was lost means that try removed it: done, `None`.
    pub(crate) async fn removal<R, T, F>(&self, request: R, call: F) -> Result<Option<T>>
    where
        R: Clone,
        F: AsyncFn(Client, R) -> Result<T>,
    {
        let lost = std::sync::atomic::AtomicBool::new(false);
        let (call, lost) = (&call, &lost);
        self.repeatable(|client| {
            let earlier_lost = lost.load(std::sync::atomic::Ordering::Relaxed);
            let request = request.clone();
            async move {
                let result = call(client, request).await;
                if result.as_ref().is_err_and(Error::outcome_unknown) {
                    lost.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                removed(result, earlier_lost)
            }
        })
        .await
    }

    /// `call` with `request`, keyed ([`Client::keyed`]): for writes that
    /// must not be applied twice.
    pub(crate) async fn keyed_with<R, T, F>(&self, request: R, call: F) -> Result<T>
    where
        R: Clone,
        F: AsyncFn(Client, R) -> Result<T>,
    {
        self.keyed(|client| call(client, request.clone())).await
    }
}

/// A removal's answer: `NOT_FOUND` after an earlier try whose outcome was
/// lost means that try removed it (`None`); otherwise the answer as it is.
fn removed<T>(result: Result<T>, earlier_lost: bool) -> Result<Option<T>> {
    match result {
        Err(error) if earlier_lost && error.code() == crate::ErrorCode::NotFound => Ok(None),
        other => other.map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn a_removal_found_gone_is_done_only_after_a_try_whose_outcome_was_lost() {
        let gone = || Err::<(), _>(Error::new(ErrorCode::NotFound, "no live token named ci"));
        assert!(matches!(removed(gone(), true), Ok(None)));
        assert_eq!(
            removed(gone(), false).unwrap_err().code(),
            ErrorCode::NotFound,
            "never sent before: the thing was not there"
        );
        assert!(matches!(removed(Ok(7), true), Ok(Some(7))));
        let refused = Err::<(), _>(Error::new(ErrorCode::PermissionDenied, "no"));
        assert!(removed(refused, true).is_err());
    }
}
