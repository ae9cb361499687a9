//! `Store`: the node's metadata (identities, credentials, resources,
//! grants, secrets). Nothing outside this module knows which backend runs;
//! the embedded one is SQLite (`meta.db`) under the data directory. Every
//! write is durable (fsynced) before the call returns, so a write
//! acknowledged to a client survives `kill -9`.

pub(crate) mod embedded;
mod postgres;

pub use embedded::SqliteStore;
pub use postgres::{PostgresStore, postgres_reason};
pub(crate) use postgres::{cached, ensure_schema, execute_cached, row_lock};

use crate::error::Result;
use async_trait::async_trait;

/// Rights (weakest first; a stronger right implies the weaker) and resource
/// kinds: the proto's enums, stored as their numbers.
pub use busbar_proto::v1::{ResourceKind, Right};

/// A proto enum's value by number, if it names one (UNSPECIFIED does not).
pub fn known<E: TryFrom<i32> + PartialEq + Default>(value: i32) -> Option<E> {
    E::try_from(value).ok().filter(|e| *e != E::default())
}

/// The lower-case name of a right or kind, as messages say it ("read",
/// "database").
pub trait LowerName {
    fn name(self) -> String;
}

impl LowerName for Right {
    fn name(self) -> String {
        self.as_str_name().to_lowercase()
    }
}

impl LowerName for ResourceKind {
    fn name(self) -> String {
        self.as_str_name().to_lowercase()
    }
}

/// What a kind of resource is called in prose ("time series").
pub fn noun(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Timeseries => "time series",
        ResourceKind::Transport => "transport session",
        ResourceKind::Folder => "folder",
        ResourceKind::Database => "database",
        ResourceKind::Room => "room",
        ResourceKind::Wire => "wire",
        ResourceKind::Service => "service",
        _ => "resource",
    }
}

/// How an identity logs in: the proto's enum, stored as its number.
pub use busbar_proto::v1::IdentityKind;

#[derive(Debug, Clone)]
pub struct IdentityRecord {
    pub id: String,
    pub name: String,
    pub kind: IdentityKind,
    /// argon2 PHC string (users only).
    pub password_hash: Option<String>,
    /// 32-byte Ed25519 public key (key identities only).
    pub public_key: Option<Vec<u8>>,
    pub created_ms: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: String,
    pub identity_id: String,
    pub name: String,
    /// SHA-256 of the token's secret; the secret itself is never stored.
    pub hash: Vec<u8>,
    pub created_ms: i64,
    /// 0: never expires.
    pub expires_ms: i64,
    pub revoked: bool,
}

/// Who a certificate being recorded is for.
pub enum CertificateHolder {
    Existing(IdentityRecord),
    /// A CERTIFICATE identity made with it.
    New(NewIdentity),
}

/// A recorded certificate: what `IssueCertificate` answers (and a repeat of
/// its key answers again).
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub identity: IdentityRecord,
    pub certificate: CertificateRecord,
    pub pem: String,
}

impl crate::calls::Replay for IssuedCertificate {
    fn encode(&self) -> Vec<u8> {
        let identity: serde_json::Value =
            serde_json::from_slice(&self.identity.encode()).expect("an identity encodes to JSON");
        let c = &self.certificate;
        serde_json::json!({
            "identity": identity,
            "fingerprint": hex::encode(&c.fingerprint),
            "serial": c.serial,
            "created_ms": c.created_ms,
            "expires_ms": c.expires_ms,
            "pem": self.pem,
        })
        .to_string()
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<IssuedCertificate> {
        let bad =
            || crate::error::Error::internal("a kept outcome is not the certificate it should be");
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad())?;
        let identity = IdentityRecord::decode(value["identity"].to_string().as_bytes())?;
        let text = |field: &str| value[field].as_str().ok_or_else(bad);
        let number = |field: &str| value[field].as_i64().ok_or_else(bad);
        Ok(IssuedCertificate {
            certificate: CertificateRecord {
                fingerprint: hex::decode(text("fingerprint")?).map_err(|_| bad())?,
                identity_id: identity.id.clone(),
                serial: text("serial")?.to_string(),
                created_ms: number("created_ms")?,
                expires_ms: number("expires_ms")?,
                revoked: false,
            },
            pem: text("pem")?.to_string(),
            identity,
        })
    }
}

/// A client certificate the node's CA issued (mTLS).
#[derive(Debug, Clone)]
pub struct CertificateRecord {
    /// SHA-256 of the certificate (DER): what a TLS handshake presents.
    pub fingerprint: Vec<u8>,
    pub identity_id: String,
    /// Hex serial number.
    pub serial: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct ResourceRecord {
    pub id: String,
    pub path: String,
    pub kind: ResourceKind,
    /// Identity name of the creator; the owner holds admin on the resource.
    pub owner: String,
    pub created_ms: i64,
}

impl ResourceRecord {
    /// A new resource's record, under a fresh id.
    pub fn new(path: &str, kind: ResourceKind, owner: &str) -> ResourceRecord {
        ResourceRecord {
            id: new_id(),
            path: path.to_string(),
            kind,
            owner: owner.to_string(),
            created_ms: now_ms(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// Path of the resource the grant is set on.
    pub path: String,
    /// An identity name or "group:<name>".
    pub principal: String,
    pub right: Right,
}

/// A new identity together with what comes with it: a home folder
/// `/home/<name>` it owns, and optionally admin on "/".
#[derive(Debug, Clone)]
pub struct NewIdentity {
    pub name: String,
    pub kind: IdentityKind,
    pub password_hash: Option<String>,
    pub public_key: Option<Vec<u8>>,
    pub admin: bool,
}

/// A resource to create at `path`, owned by `owner`; with `parents`,
/// missing ancestors are created as folders owned by `owner` too.
#[derive(Debug, Clone, Copy)]
pub struct NewResource<'a> {
    pub path: &'a str,
    pub kind: ResourceKind,
    pub owner: &'a str,
    pub parents: bool,
}

impl<'a> NewResource<'a> {
    /// One whose parent folder must exist.
    pub fn new(path: &'a str, kind: ResourceKind, owner: &'a str) -> Self {
        NewResource {
            path,
            kind,
            owner,
            parents: false,
        }
    }

    /// Missing ancestors are created as folders when `parents`.
    pub fn parents(self, parents: bool) -> Self {
        NewResource { parents, ..self }
    }
}

impl NewIdentity {
    /// The record a store keeps for it, under a fresh id.
    pub fn record(&self) -> IdentityRecord {
        IdentityRecord {
            id: new_id(),
            name: self.name.clone(),
            kind: self.kind,
            password_hash: self.password_hash.clone(),
            public_key: self.public_key.clone(),
            created_ms: now_ms(),
            revoked: false,
        }
    }

    /// The answer when its name is taken.
    pub fn taken(&self) -> crate::error::Error {
        crate::error::Error::already_exists(format!(
            "identity {} already exists (names stay reserved after revocation)",
            self.name
        ))
    }
}

/// A fresh id for a stored thing (identities, tokens, resources).
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Durable state. Implementations make each method atomic and durable before
/// returning; errors use the crate's error model (NOT_FOUND, ALREADY_EXISTS,
/// FAILED_PRECONDITION with a message naming the thing).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name, reported by `Node.Status`.
    fn backend(&self) -> &'static str;

    /// A named secret, created with `make` on first use and the same forever
    /// after (e.g. the session-signing key shared by every node).
    async fn secret(&self, name: &str, make: fn() -> Vec<u8>) -> Result<Vec<u8>>;

    async fn create_identity(&self, new: NewIdentity) -> Result<IdentityRecord>;
    /// [`Store::create_identity`] under a call's idempotency key (see
    /// [`Store::create_resource_keyed`]): a repeat answers with the
    /// identity the first try made.
    async fn create_identity_keyed(
        &self,
        new: NewIdentity,
        key: &crate::calls::CallKey,
    ) -> Result<IdentityRecord> {
        let _ = key;
        self.create_identity(new).await
    }
    async fn identity_by_name(&self, name: &str) -> Result<Option<IdentityRecord>>;
    async fn identity_by_id(&self, id: &str) -> Result<Option<IdentityRecord>>;
    async fn list_identities(&self) -> Result<Vec<IdentityRecord>>;
    async fn set_password_hash(&self, name: &str, hash: &str) -> Result<()>;
    /// Marks the identity revoked and revokes all its tokens.
    async fn revoke_identity(&self, name: &str) -> Result<()>;

    async fn add_group_member(&self, group: &str, identity: &str) -> Result<()>;
    async fn remove_group_member(&self, group: &str, identity: &str) -> Result<bool>;
    async fn groups_of(&self, identity: &str) -> Result<Vec<String>>;

    async fn create_token(&self, token: TokenRecord) -> Result<()>;
    /// Creates `token` under a call's idempotency key. A repeat of the key
    /// (its client never saw the first answer, so never had the first
    /// secret) revokes the token its earlier try made and creates this one
    /// in its place, in one transaction: the caller ends with one live
    /// token, whose secret it holds. `Ok(true)` when an earlier token was
    /// revoked. A store that keeps no keys (the embedded one: no other node
    /// to retry on) creates the token.
    async fn create_token_keyed(
        &self,
        token: TokenRecord,
        key: &crate::calls::CallKey,
    ) -> Result<bool> {
        let _ = key;
        self.create_token(token).await.map(|()| false)
    }
    async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRecord>>;
    async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>>;
    async fn list_tokens(&self, identity_id: &str) -> Result<Vec<TokenRecord>>;
    async fn revoke_token(&self, identity_id: &str, name: &str) -> Result<()>;

    async fn create_certificate(&self, certificate: CertificateRecord) -> Result<()>;
    /// Records a certificate the node's CA signed for `holder` (made first
    /// when new; `certificate.identity_id` is then filled in), with the PEM
    /// its caller gets. Under a call's key the whole is one change (see
    /// [`Store::create_resource_keyed`]): a repeat answers with the first
    /// try's certificate and PEM (`false`) and records nothing.
    async fn record_certificate(
        &self,
        holder: CertificateHolder,
        certificate: CertificateRecord,
        pem: String,
        key: Option<&crate::calls::CallKey>,
    ) -> Result<(IssuedCertificate, bool)> {
        let _ = key;
        let identity = match holder {
            CertificateHolder::Existing(identity) => identity,
            CertificateHolder::New(new) => self.create_identity(new).await?,
        };
        let certificate = CertificateRecord {
            identity_id: identity.id.clone(),
            ..certificate
        };
        self.create_certificate(certificate.clone()).await?;
        let issued = IssuedCertificate {
            identity,
            certificate,
            pem,
        };
        Ok((issued, true))
    }
    async fn certificate(&self, fingerprint: &[u8]) -> Result<Option<CertificateRecord>>;
    async fn list_certificates(&self, identity_id: &str) -> Result<Vec<CertificateRecord>>;
    /// Marks a certificate revoked; NOT_FOUND if no certificate has that fingerprint.
    async fn revoke_certificate(&self, fingerprint: &[u8]) -> Result<CertificateRecord>;
    /// Fingerprints of every revoked certificate that has not yet expired
    /// (an expired one is refused for its dates anyway).
    async fn revoked_certificates(&self) -> Result<Vec<Vec<u8>>>;

    /// [`Store::create_resource`], [`Store::delete_resource`] and
    /// [`Store::move_resource`] under a call's idempotency key: the change
    /// and the key's record commit together, and a repeat of the key answers
    /// with the first outcome and changes nothing (`false` beside the
    /// outcome: it is a repeat's, so whatever followed the first try's
    /// change is not done again, beyond making storage the first try may
    /// not have lived to make). A store that keeps no keys (the embedded
    /// one: no other node to retry on) makes the change.
    async fn create_resource_keyed(
        &self,
        new: NewResource<'_>,
        key: &crate::calls::CallKey,
    ) -> Result<(ResourceRecord, bool)> {
        let _ = key;
        Ok((self.create_resource(new).await?, true))
    }
    async fn delete_resource_keyed(
        &self,
        path: &str,
        recursive: bool,
        key: &crate::calls::CallKey,
    ) -> Result<(Vec<ResourceRecord>, bool)> {
        let _ = key;
        Ok((self.delete_resource(path, recursive).await?, true))
    }
    async fn move_resource_keyed(
        &self,
        from: &str,
        to: &str,
        key: &crate::calls::CallKey,
    ) -> Result<(ResourceRecord, bool)> {
        let _ = key;
        Ok((self.move_resource(from, to).await?, true))
    }
    /// The request digest and first outcome recorded under a keyed
    /// change's key, once its first try committed.
    async fn earlier_call(
        &self,
        key: &crate::calls::CallKey,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let _ = key;
        Ok(None)
    }
    /// Forgets a keyed change's record: the change was undone after it
    /// committed (a resource whose file could not be made).
    async fn forget_call(&self, key: &crate::calls::CallKey) -> Result<()> {
        let _ = key;
        Ok(())
    }

    async fn resource(&self, path: &str) -> Result<Option<ResourceRecord>>;
    /// The path of the resource with this id (ids survive moves).
    async fn resource_path(&self, id: &str) -> Result<Option<String>>;
    /// Creates a resource (its parent must be a folder, unless `parents`).
    async fn create_resource(&self, new: NewResource<'_>) -> Result<ResourceRecord>;
    async fn list_resources(&self, path: &str, recursive: bool) -> Result<Vec<ResourceRecord>>;
    /// Deletes `path` (and with `recursive`, everything below it) with its
    /// grants; returns what was deleted, deepest first.
    async fn delete_resource(&self, path: &str, recursive: bool) -> Result<Vec<ResourceRecord>>;
    /// Moves or renames `from` (and its subtree, keeping ids and grants) to `to`.
    async fn move_resource(&self, from: &str, to: &str) -> Result<ResourceRecord>;

    async fn set_grant(&self, path: &str, principal: &str, right: Right) -> Result<()>;
    async fn remove_grant(&self, path: &str, principal: &str) -> Result<bool>;
    /// Grants set on any of `paths`.
    async fn grants_on(&self, paths: &[String]) -> Result<Vec<GrantRecord>>;

    /// Records that a node is alive (what `busbar status` lists).
    async fn report_node(&self, node: NodeRecord) -> Result<()>;
    /// The nodes that reported at `since_ms` or later, by start time.
    async fn nodes(&self, since_ms: i64) -> Result<Vec<NodeRecord>>;
    /// Forgets a node that stopped.
    async fn forget_node(&self, id: &str) -> Result<()>;
}

/// A running node as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: String,
    pub address: String,
    pub connections: u64,
    pub started_ms: i64,
    pub seen_ms: i64,
}

/// The rules of the tree every backend keeps the same way.
pub(crate) mod tree {
    use super::{ResourceKind, ResourceRecord};
    use crate::error::{Error, Result};
    use crate::resources::paths;

    /// Keeps the direct children of `path` among its descendants.
    pub fn keep_children(path: &str, below: &mut Vec<ResourceRecord>) {
        let depth = if path == "/" {
            1
        } else {
            path.matches('/').count() + 1
        };
        below.retain(|r| r.path.matches('/').count() == depth);
    }

    pub fn missing(path: &str) -> Error {
        Error::not_found(format!("{path} does not exist"))
    }

    /// Refuses to delete the roots, or a non-empty folder without `recursive`.
    pub fn check_delete(path: &str, below: usize, recursive: bool) -> Result<()> {
        if path == "/" || path == "/home" {
            return Err(Error::failed_precondition(format!(
                "{path} cannot be deleted"
            )));
        }
        if below > 0 && !recursive {
            return Err(Error::failed_precondition(format!(
                "{path} is not empty ({below} resources below it); delete recursively to remove them too"
            )));
        }
        Ok(())
    }

    /// Refuses to move a root, or a folder into itself.
    pub fn check_move(from: &str, to: &str) -> Result<()> {
        if paths::is_within(to, from) {
            return Err(Error::invalid_argument(format!(
                "cannot move {from} into itself ({to})"
            )));
        }
        if from == "/" || from == "/home" {
            return Err(Error::failed_precondition(format!(
                "{from} cannot be moved"
            )));
        }
        Ok(())
    }

    /// Checks what a move's target parent turned out to be.
    pub fn check_move_parent(parent: &str, found: Option<&ResourceRecord>) -> Result<()> {
        match found {
            Some(p) if p.kind == ResourceKind::Folder => Ok(()),
            Some(_) => Err(Error::failed_precondition(format!(
                "{parent} is not a folder"
            ))),
            None => Err(Error::not_found(format!("folder {parent} does not exist"))),
        }
    }

    /// What a new resource's parent must be: a folder. `Ok(false)` when it
    /// is missing and may be made (`parents`).
    pub fn check_parent(
        parent: &str,
        found: Option<&ResourceRecord>,
        parents: bool,
    ) -> Result<bool> {
        match found {
            Some(found) if found.kind == ResourceKind::Folder => Ok(true),
            Some(found) => Err(Error::failed_precondition(format!(
                "{parent} is a {}, not a folder; resources live in folders",
                super::LowerName::name(found.kind)
            ))),
            None if parents => Ok(false),
            None => Err(Error::not_found(format!(
                "parent folder {parent} does not exist; create it first or pass parents"
            ))),
        }
    }

    /// `record`'s path once its subtree moved from `from` to `to`.
    pub fn moved_path(record: &ResourceRecord, from: &str, to: &str) -> String {
        format!("{to}{}", &record.path[from.len()..])
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl ResourceRecord {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "path": self.path,
            "kind": self.kind as i32,
            "owner": self.owner,
            "created_ms": self.created_ms,
        })
    }

    fn from_json(value: &serde_json::Value) -> Option<ResourceRecord> {
        Some(ResourceRecord {
            id: value["id"].as_str()?.to_string(),
            path: value["path"].as_str()?.to_string(),
            kind: ResourceKind::try_from(i32::try_from(value["kind"].as_i64()?).ok()?).ok()?,
            owner: value["owner"].as_str()?.to_string(),
            created_ms: value["created_ms"].as_i64()?,
        })
    }
}

fn unreadable() -> crate::error::Error {
    crate::error::Error::internal("a kept outcome is not the resource record it should be")
}

/// A keyed create's or move's outcome, kept as JSON.
impl crate::calls::Replay for ResourceRecord {
    fn encode(&self) -> Vec<u8> {
        self.to_json().to_string().into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<ResourceRecord> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| unreadable())?;
        ResourceRecord::from_json(&value).ok_or_else(unreadable)
    }
}

/// A keyed delete's outcome: the records deleted.
impl crate::calls::Replay for Vec<ResourceRecord> {
    fn encode(&self) -> Vec<u8> {
        serde_json::Value::Array(self.iter().map(ResourceRecord::to_json).collect())
            .to_string()
            .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Vec<ResourceRecord>> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| unreadable())?;
        value
            .as_array()
            .ok_or_else(unreadable)?
            .iter()
            .map(|one| ResourceRecord::from_json(one).ok_or_else(unreadable))
            .collect()
    }
}

/// A keyed identity creation's outcome. Its password hash is not kept
/// with the key (a repeat's answer never shows it).
impl crate::calls::Replay for IdentityRecord {
    fn encode(&self) -> Vec<u8> {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "kind": self.kind as i32,
            "public_key": self.public_key.as_deref().map(hex::encode),
            "created_ms": self.created_ms,
        })
        .to_string()
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<IdentityRecord> {
        let bad =
            || crate::error::Error::internal("a kept outcome is not the identity it should be");
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad())?;
        let kind = i32::try_from(value["kind"].as_i64().ok_or_else(bad)?).map_err(|_| bad())?;
        Ok(IdentityRecord {
            id: value["id"].as_str().ok_or_else(bad)?.to_string(),
            name: value["name"].as_str().ok_or_else(bad)?.to_string(),
            kind: IdentityKind::try_from(kind).map_err(|_| bad())?,
            password_hash: None,
            public_key: match value["public_key"].as_str() {
                Some(text) => Some(hex::decode(text).map_err(|_| bad())?),
                None => None,
            },
            created_ms: value["created_ms"].as_i64().ok_or_else(bad)?,
            revoked: false,
        })
    }
}
