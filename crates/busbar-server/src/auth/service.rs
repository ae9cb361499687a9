//! `busbar.v1.Auth`: login, sessions, identities, API tokens, groups.

use crate::auth::access::{Caller, CallerInfo};
use crate::calls::{CallKey, first_outcome};
use crate::error::{Error, Result};
use crate::grpc::{Reply, reply};
use crate::node::{Node, caller, caller_and_message};
use crate::resources::paths::validate_identity_name;
use crate::store::{
    CertificateHolder, CertificateRecord, IdentityKind, IdentityRecord, IssuedCertificate,
    NewIdentity, TokenRecord,
};
use base64::Engine;
use busbar_proto::v1::{self as pb, auth_server::Auth, login_request::Credential};
use std::sync::Arc;
use std::time::Duration;
use tonic::Request;

pub struct AuthService {
    pub node: Arc<Node>,
}

impl AuthService {
    async fn identity_pb(&self, record: IdentityRecord) -> Result<pb::Identity> {
        let groups = self.node.store.groups_of(&record.name).await?;
        let as_caller = Caller::new(CallerInfo {
            identity_id: record.id.clone().into(),
            name: record.name.clone().into(),
            groups: groups.clone().into(),
            token_id: None,
            token_expires_ms: 0,
            password: None,
            certificate: None,
        });
        let admin = self.node.access.is_root_admin(&as_caller).await?;
        Ok(pb::Identity {
            id: record.id,
            home: format!("/home/{}", record.name),
            name: record.name,
            kind: record.kind as i32,
            admin,
            created_ms: record.created_ms,
            revoked: record.revoked,
            groups,
            public_key: record
                .public_key
                .map(|key| base64::engine::general_purpose::STANDARD.encode(key))
                .unwrap_or_default(),
        })
    }

    async fn session_pb(
        &self,
        (record, token, expires_ms): (IdentityRecord, String, i64),
    ) -> Result<pb::Session> {
        Ok(pb::Session {
            token,
            expires_ms,
            identity: Some(self.identity_pb(record).await?),
        })
    }

    async fn require_root_admin(&self, caller: &Caller, what: &str) -> Result<()> {
        if self.node.access.is_root_admin(caller).await? {
            Ok(())
        } else {
            Err(Error::permission_denied(format!(
                "{} lacks admin on /, which {what} needs; ask an admin",
                caller.name
            )))
        }
    }

    /// A request's message, once its caller is shown to hold admin on "/".
    async fn admin_request<T>(
        &self,
        request: Request<T>,
        what: &str,
    ) -> std::result::Result<T, tonic::Status> {
        let caller = caller(&request)?;
        self.require_root_admin(&caller, what).await?;
        Ok(request.into_inner())
    }

    /// The idempotency key a call of `method` carries, if any.
    fn key<T: prost::Message>(
        &self,
        request: &Request<T>,
        method: &str,
    ) -> std::result::Result<Option<CallKey>, tonic::Status> {
        let caller = caller(request)?;
        Ok(CallKey::of(&self.node, request, &caller, method)?)
    }

    /// `IssueCertificate`'s answer for a recorded certificate.
    async fn issued_pb(
        &self,
        issued: IssuedCertificate,
        ca_pem: &str,
    ) -> Result<pb::IssueCertificateResponse> {
        let info = certificate_pb(issued.certificate, &issued.identity.name);
        Ok(pb::IssueCertificateResponse {
            certificate_pem: issued.pem,
            ca_pem: ca_pem.to_string(),
            info: Some(info),
            identity: Some(self.identity_pb(issued.identity).await?),
        })
    }

    async fn identity_named(&self, name: &str) -> Result<IdentityRecord> {
        self.node
            .store
            .identity_by_name(name)
            .await?
            .ok_or_else(|| Error::not_found(format!("no identity named {name}")))
    }

    fn certificates(&self) -> Result<&Arc<crate::tls::ClientCertificates>> {
        self.node.certificates.as_ref().ok_or_else(|| {
            Error::failed_precondition(
                "this node serves plaintext (--insecure), so it has no CA and takes no client certificates",
            )
        })
    }

    /// The identity a token call is about: the caller, or (for admins of "/") the named one.
    async fn token_owner(&self, caller: &Caller, named: &str) -> Result<IdentityRecord> {
        if named.is_empty() || named == &*caller.name {
            return self.identity_named(&caller.name).await;
        }
        self.require_root_admin(caller, "managing another identity's tokens")
            .await?;
        self.identity_named(named).await
    }
}

fn certificate_pb(record: CertificateRecord, identity: &str) -> pb::CertificateInfo {
    pb::CertificateInfo {
        fingerprint: hex::encode(&record.fingerprint),
        identity: identity.to_string(),
        serial: record.serial,
        created_ms: record.created_ms,
        expires_ms: record.expires_ms,
        revoked: record.revoked,
    }
}

fn token_pb(record: TokenRecord, identity: &str) -> pb::TokenInfo {
    pb::TokenInfo {
        id: record.id,
        name: record.name,
        identity: identity.to_string(),
        created_ms: record.created_ms,
        expires_ms: record.expires_ms,
        revoked: record.revoked,
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn challenge(
        &self,
        request: Request<pb::ChallengeRequest>,
    ) -> Reply<pb::ChallengeResponse> {
        let name = request.into_inner().name;
        validate_identity_name(&name)?;
        let (nonce, expires_ms) = self.node.auth.challenge(&name);
        reply(pb::ChallengeResponse {
            nonce: nonce.into(),
            expires_ms,
        })
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Reply<pb::Session> {
        let auth = &self.node.auth;
        let peer = request.remote_addr().map(|a| a.ip());
        let presented = request.peer_certs();
        let outcome = match request.into_inner().credential {
            Some(Credential::Password(p)) => {
                auth.login_password(&p.user, &p.password, peer).await?
            }
            Some(Credential::Token(token)) => auth.login_token(&token).await?,
            Some(Credential::Key(k)) => auth.login_key(&k.name, &k.nonce, &k.signature).await?,
            Some(Credential::Certificate(_)) => {
                auth.login_certificate(presented.as_ref().and_then(|c| c.first()).map(|c| &c[..]))
                    .await?
            }
            None => {
                return Err(Error::invalid_argument(
                    "login needs a credential: password, token, key or certificate",
                )
                .into());
            }
        };
        let mut response = tonic::Response::new(self.session_pb(outcome).await?);
        if self.node.config.store.is_some() {
            // A cluster node keeps idempotency keys (crate::calls): the
            // client may retry a keyed write whose outcome it lost.
            response.metadata_mut().insert(
                busbar_proto::IDEMPOTENCY_HONOURED_METADATA_KEY,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        Ok(response)
    }

    async fn refresh(&self, request: Request<pb::RefreshRequest>) -> Reply<pb::Session> {
        let caller = caller(&request)?;
        let identity = self.identity_named(&caller.name).await?;
        let (token, expires_ms) = self.node.auth.refresh(&caller, &identity).await?;
        reply(self.session_pb((identity, token, expires_ms)).await?)
    }

    async fn who_am_i(&self, request: Request<pb::WhoAmIRequest>) -> Reply<pb::Identity> {
        let caller = caller(&request)?;
        reply(
            self.identity_pb(self.identity_named(&caller.name).await?)
                .await?,
        )
    }

    async fn create_user(&self, request: Request<pb::CreateUserRequest>) -> Reply<pb::Identity> {
        let key = self.key(&request, "CreateUser")?;
        let r = self.admin_request(request, "creating users").await?;
        let record = self
            .node
            .auth
            .create_user(&r.name, &r.password, r.admin, key.as_ref())
            .await?;
        let identity = self.identity_pb(record).await?;
        reply(self.node.access.changed(identity).await)
    }

    async fn set_password(
        &self,
        request: Request<pb::SetPasswordRequest>,
    ) -> Reply<pb::SetPasswordResponse> {
        let (caller, r) = caller_and_message(request)?;
        let name = if r.name.is_empty() {
            caller.name.to_string()
        } else {
            r.name
        };
        if *name != *caller.name {
            self.require_root_admin(&caller, "setting another user's password")
                .await?;
        }
        self.node.auth.set_password(&name, &r.password).await?;
        // Sessions issued under the old password end at once (access.rs).
        reply(self.node.access.changed(pb::SetPasswordResponse {}).await)
    }

    async fn register_key(&self, request: Request<pb::RegisterKeyRequest>) -> Reply<pb::Identity> {
        let key = self.key(&request, "RegisterKey")?;
        let r = self
            .admin_request(request, "registering key identities")
            .await?;
        let record = self
            .node
            .auth
            .register_key(&r.name, &r.public_key, r.admin, key.as_ref())
            .await?;
        let identity = self.identity_pb(record).await?;
        reply(self.node.access.changed(identity).await)
    }

    async fn list_identities(
        &self,
        request: Request<pb::ListIdentitiesRequest>,
    ) -> Reply<pb::ListIdentitiesResponse> {
        self.admin_request(request, "listing identities").await?;
        let mut identities = Vec::new();
        for record in self.node.store.list_identities().await? {
            identities.push(self.identity_pb(record).await?);
        }
        reply(pb::ListIdentitiesResponse { identities })
    }

    async fn revoke_identity(
        &self,
        request: Request<pb::RevokeIdentityRequest>,
    ) -> Reply<pb::RevokeIdentityResponse> {
        let caller = caller(&request)?;
        self.require_root_admin(&caller, "revoking identities")
            .await?;
        let name = request.into_inner().name;
        if *name == *caller.name {
            return Err(Error::failed_precondition(
                "you cannot revoke your own identity; ask another admin",
            )
            .into());
        }
        self.node.store.revoke_identity(&name).await?;
        if let Some(certificates) = &self.node.certificates {
            certificates.reload(self.node.store.as_ref()).await?;
        }
        reply(
            self.node
                .access
                .changed(pb::RevokeIdentityResponse {})
                .await,
        )
    }

    async fn issue_certificate(
        &self,
        request: Request<pb::IssueCertificateRequest>,
    ) -> Reply<pb::IssueCertificateResponse> {
        let key = self.key(&request, "IssueCertificate")?;
        let r = self
            .admin_request(request, "issuing client certificates")
            .await?;
        let certificates = self.certificates()?;
        validate_identity_name(&r.name)?;
        // A repeat of a keyed issue whose first try committed: the same
        // certificate again (its identity, made by that try, exists now).
        if let Some(first) = first_outcome::<IssuedCertificate>(&self.node, &key).await? {
            return reply(self.issued_pb(first, &certificates.ca_pem).await?);
        }
        // Everything is checked before anything is written: a bad key or
        // validity creates no identity.
        let issued = certificates.issue(&r.name, &r.public_key, r.days)?;
        let holder = match self.node.store.identity_by_name(&r.name).await? {
            Some(identity) if identity.revoked => {
                return Err(Error::failed_precondition(format!(
                    "identity {} has been revoked; it gets no new certificates",
                    r.name
                ))
                .into());
            }
            Some(_) if r.create => {
                return Err(Error::already_exists(format!(
                    "identity {} already exists; issue it another certificate with `busbar identity cert {}`",
                    r.name, r.name
                ))
                .into());
            }
            Some(identity) => CertificateHolder::Existing(identity),
            None if r.create => CertificateHolder::New(NewIdentity {
                name: r.name.clone(),
                kind: IdentityKind::Certificate,
                password_hash: None,
                public_key: None,
                admin: r.admin,
            }),
            None => {
                return Err(Error::not_found(format!(
                    "no identity named {}; create it with the certificate (create = true, or `busbar identity new {} --cert`)",
                    r.name, r.name
                ))
                .into());
            }
        };
        let record = CertificateRecord {
            fingerprint: issued.fingerprint,
            identity_id: String::new(),
            serial: issued.serial,
            created_ms: issued.created_ms,
            expires_ms: issued.expires_ms,
            revoked: false,
        };
        let (recorded, _) = self
            .node
            .store
            .record_certificate(holder, record, issued.pem, key.as_ref())
            .await?;
        let answer = self.issued_pb(recorded, &certificates.ca_pem).await?;
        reply(self.node.access.changed(answer).await)
    }

    async fn list_certificates(
        &self,
        request: Request<pb::ListCertificatesRequest>,
    ) -> Reply<pb::ListCertificatesResponse> {
        let r = self
            .admin_request(request, "listing client certificates")
            .await?;
        let identity = self.identity_named(&r.identity).await?;
        let records = self.node.store.list_certificates(&identity.id).await?;
        reply(pb::ListCertificatesResponse {
            certificates: records
                .into_iter()
                .map(|record| certificate_pb(record, &identity.name))
                .collect(),
        })
    }

    async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeCertificateRequest>,
    ) -> Reply<pb::RevokeCertificateResponse> {
        let given = self
            .admin_request(request, "revoking client certificates")
            .await?
            .fingerprint;
        let certificates = self.certificates()?;
        let fingerprint = hex::decode(given.trim().replace(':', ""))
            .ok()
            .filter(|bytes| bytes.len() == 32)
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "bad fingerprint {given:?}: expected 64 hex digits of SHA-256, as `busbar identity certs NAME` lists them"
                ))
            })?;
        let record = self.node.store.revoke_certificate(&fingerprint).await?;
        certificates.revoke(record.fingerprint);
        reply(
            self.node
                .access
                .changed(pb::RevokeCertificateResponse {})
                .await,
        )
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Reply<pb::CreateTokenResponse> {
        let caller = caller(&request)?;
        let key = self.key(&request, "CreateToken")?;
        let r = request.into_inner();
        if r.ttl_seconds < 0 {
            return Err(Error::invalid_argument(
                "ttl_seconds must be 0 (never expires) or positive",
            )
            .into());
        }
        let owner = self.token_owner(&caller, &r.identity).await?;
        let ttl = (r.ttl_seconds > 0).then(|| Duration::from_secs(r.ttl_seconds as u64));
        let made = self
            .node
            .auth
            .create_token(&owner, &r.name, ttl, key.as_ref())
            .await?;
        let response = pb::CreateTokenResponse {
            token: made.secret,
            info: Some(token_pb(made.record, &owner.name)),
        };
        if made.replaced {
            // The token the call's earlier try made is revoked: every node
            // forgets it at once.
            return reply(self.node.access.changed(response).await);
        }
        reply(response)
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Reply<pb::ListTokensResponse> {
        let caller = caller(&request)?;
        let owner = self
            .token_owner(&caller, &request.get_ref().identity)
            .await?;
        let tokens = self.node.store.list_tokens(&owner.id).await?;
        reply(pb::ListTokensResponse {
            tokens: tokens
                .into_iter()
                .map(|t| token_pb(t, &owner.name))
                .collect(),
        })
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Reply<pb::RevokeTokenResponse> {
        let (caller, r) = caller_and_message(request)?;
        let owner = self.token_owner(&caller, &r.identity).await?;
        self.node.store.revoke_token(&owner.id, &r.name).await?;
        reply(self.node.access.changed(pb::RevokeTokenResponse {}).await)
    }

    async fn add_group_member(
        &self,
        request: Request<pb::GroupMemberRequest>,
    ) -> Reply<pb::GroupMemberResponse> {
        let r = self.admin_request(request, "managing groups").await?;
        validate_identity_name(&r.group)?;
        self.identity_named(&r.identity).await?;
        self.node
            .store
            .add_group_member(&r.group, &r.identity)
            .await?;
        reply(self.node.access.changed(pb::GroupMemberResponse {}).await)
    }

    async fn remove_group_member(
        &self,
        request: Request<pb::GroupMemberRequest>,
    ) -> Reply<pb::GroupMemberResponse> {
        let r = self.admin_request(request, "managing groups").await?;
        if !self
            .node
            .store
            .remove_group_member(&r.group, &r.identity)
            .await?
        {
            return Err(
                Error::not_found(format!("{} is not in group {}", r.identity, r.group)).into(),
            );
        }
        reply(self.node.access.changed(pb::GroupMemberResponse {}).await)
    }
}
