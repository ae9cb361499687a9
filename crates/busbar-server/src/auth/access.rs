//! Rights: who may do what on which resource. Grants are set on a resource
//! for an identity or a group and inherited by everything below it; the owner
//! of a resource holds admin on it. Lookups are cached per node; any change
//! to identities, groups, grants or the tree clears every node's cache through
//! the `Bus`.

use crate::auth::{Authenticator, Principal};
use crate::bus::{Bus, BusMessage, Overflow, SubscribeOptions};
use crate::error::{Error, Result};
use crate::resources::paths;
use crate::store::{LowerName, ResourceKind, ResourceRecord, Right, Store};
use bytes::Bytes;
/// The caches hash on every call (a session token, paths): foldhash, seeded
/// per map, is several times faster than the default SipHash on such keys,
/// and their keys are verified tokens and the paths of authenticated callers.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

const INVALIDATE_SUBJECT: &str = "_busbar.access.invalidate";

/// In a cluster, the longest a node may act on an access decision it cached
/// before a change made through another node (docs/cluster.md).
const CLUSTER_CACHE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(2);
/// Entries per cache before it is cleared wholesale.
const MAX_CACHED: usize = 65_536;

/// What the node knows about a caller beyond its session. One reference
/// count to clone: the call layer attaches a clone to every authenticated
/// request, from a cache shared by all workers.
#[derive(Debug, Clone)]
pub struct Caller(Arc<CallerInfo>);

impl Caller {
    pub fn new(info: CallerInfo) -> Caller {
        Caller(Arc::new(info))
    }
}

impl std::ops::Deref for Caller {
    type Target = CallerInfo;
    fn deref(&self) -> &CallerInfo {
        &self.0
    }
}

#[derive(Debug)]
pub struct CallerInfo {
    pub identity_id: Arc<str>,
    pub name: Arc<str>,
    pub groups: Arc<[String]>,
    /// The API token the session came from, if any.
    pub token_id: Option<Arc<str>>,
    /// When the API token behind the session expires (epoch ms; 0: never or no token).
    pub token_expires_ms: i64,
    /// The fingerprint of the identity's current password hash, if it has one.
    pub password: Option<Arc<str>>,
    /// Hex fingerprint of the client certificate the session came from, if any.
    pub certificate: Option<Arc<str>>,
}

/// A session from a password login ends when the password changes.
fn password_unchanged(principal: &Principal, caller: Caller) -> Result<Caller> {
    match &principal.password {
        Some(issued_under) if caller.password.as_deref() != Some(issued_under.as_str()) => {
            Err(Error::unauthenticated(format!(
                "the password of {} was changed after this session began; log in again",
                principal.name
            )))
        }
        _ => Ok(caller),
    }
}

fn token_expired() -> Error {
    Error::unauthenticated(
        "the API token this session came from has expired; create a new one (busbar token create)",
    )
}

/// Lookups on the hot path borrow their keys: a cache hit allocates nothing.
#[derive(Default)]
struct Caches {
    /// Verified session token → its caller and the session's expiry.
    sessions: HashMap<String, (Caller, i64)>,
    /// By identity id, API token id and certificate fingerprint.
    callers: HashMap<(String, Option<String>, Option<String>), Caller>,
    resources: HashMap<String, Option<Arc<ResourceRecord>>>,
    /// Identity name → path → right.
    rights: HashMap<Arc<str>, HashMap<String, Option<Right>>>,
    entries: usize,
}

pub struct AccessControl {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    generation: AtomicU64,
    /// Read on every call by every worker, written on a miss: a read lock
    /// lets hits on different threads proceed together.
    caches: RwLock<Caches>,
}

impl AccessControl {
    pub async fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Arc<AccessControl> {
        let access = Arc::new(AccessControl {
            store,
            bus: bus.clone(),
            generation: AtomicU64::new(0),
            caches: RwLock::new(Caches::default()),
        });
        // Changes made through other nodes clear this node's cache too.
        let mut invalidations = bus
            .subscribe(
                INVALIDATE_SUBJECT,
                SubscribeOptions {
                    capacity: 64,
                    overflow: Overflow::Backpressure {
                        stall: std::time::Duration::from_secs(60),
                    },
                    tag: None,
                },
            )
            .await;
        if bus.backend() != "local" {
            // NATS core may lose an invalidation (a node cut off from it for
            // a moment): no cached decision outlives this, whatever happens.
            let weak = Arc::downgrade(&access);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(CLUSTER_CACHE_MAX_AGE);
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(access) => access.clear_local(),
                        None => break,
                    }
                }
            });
        }
        let weak = Arc::downgrade(&access);
        tokio::spawn(async move {
            while let Ok(Some(_)) = invalidations.next().await {
                match weak.upgrade() {
                    Some(access) => access.clear_local(),
                    None => break,
                }
            }
        });
        access
    }

    fn caches(&self) -> std::sync::RwLockReadGuard<'_, Caches> {
        self.caches.read().unwrap_or_else(|p| p.into_inner())
    }

    fn caches_mut(&self) -> std::sync::RwLockWriteGuard<'_, Caches> {
        self.caches.write().unwrap_or_else(|p| p.into_inner())
    }

    fn clear_local(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        *self.caches_mut() = Caches::default();
    }

    /// Changes whenever the caches are cleared: a check made while it was
    /// `g` still holds while it is `g` (as a cache hit would).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Call after any change to identities, tokens, groups, grants or the tree.
    pub async fn invalidate(&self) {
        self.clear_local();
        let message = BusMessage {
            payload: Bytes::new(),
            last: false,
        };
        self.bus.publish(INVALIDATE_SUBJECT, message, None).await;
    }

    /// `answer`, once the caches are cleared: how a call that changed who
    /// may do what replies, so its caller's next call already sees it.
    pub async fn changed<T>(&self, answer: T) -> T {
        self.invalidate().await;
        answer
    }

    /// Stores `value` unless the caches were cleared since `generation` was read.
    fn remember(&self, generation: u64, insert: impl FnOnce(&mut Caches)) {
        let mut caches = self.caches_mut();
        if self.generation.load(Ordering::SeqCst) == generation {
            if caches.entries >= MAX_CACHED {
                *caches = Caches::default();
            }
            caches.entries += 1;
            insert(&mut caches);
        }
    }

    /// The caller behind a session token: checked once (signature, expiry,
    /// identity and token still live), then served from the cache until the
    /// session expires or anything about access changes.
    pub async fn authenticate(&self, auth: &Authenticator, token: &str) -> Result<Caller> {
        let now = crate::store::now_ms();
        if let Some((caller, session_expires_ms)) = self.caches().sessions.get(token)
            && *session_expires_ms >= now
        {
            if caller.token_expires_ms != 0 && caller.token_expires_ms < now {
                return Err(token_expired());
            }
            return Ok(caller.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let principal = auth.verify_session(token)?;
        let caller = self.caller(auth, &principal).await?;
        self.remember(generation, |c| {
            c.sessions
                .insert(token.to_string(), (caller.clone(), principal.expires_ms));
        });
        Ok(caller)
    }

    /// Checks that the session's identity (and API token) are still live.
    pub async fn caller(&self, auth: &Authenticator, principal: &Principal) -> Result<Caller> {
        let key = (
            principal.identity_id.clone(),
            principal.token_id.clone(),
            principal.certificate.clone(),
        );
        let cached = self.caches().callers.get(&key).cloned();
        if let Some(caller) = cached {
            if caller.token_expires_ms != 0 && caller.token_expires_ms < crate::store::now_ms() {
                return Err(token_expired());
            }
            return password_unchanged(principal, caller);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let identity = self.store.identity_by_id(&principal.identity_id).await?;
        let identity = match identity {
            Some(identity) if !identity.revoked => identity,
            _ => {
                return Err(Error::unauthenticated(format!(
                    "identity {} has been revoked or removed; ask an admin for a new one",
                    principal.name
                )));
            }
        };
        let mut token_expires_ms = 0;
        if let Some(token_id) = &principal.token_id {
            match self.store.token_by_id(token_id).await? {
                Some(token)
                    if token.expires_ms != 0 && token.expires_ms < crate::store::now_ms() =>
                {
                    return Err(token_expired());
                }
                Some(token) if !token.revoked => token_expires_ms = token.expires_ms,
                _ => {
                    return Err(Error::unauthenticated(
                        "the API token this session came from has been revoked; create a new one (busbar token create)",
                    ));
                }
            }
        }
        if let Some(fingerprint) = &principal.certificate {
            auth.live_certificate(fingerprint).await?;
        }
        let groups = self.store.groups_of(&identity.name).await?;
        let caller = Caller::new(CallerInfo {
            identity_id: identity.id.into(),
            name: identity.name.into(),
            groups: groups.into(),
            token_id: principal.token_id.as_deref().map(Arc::from),
            token_expires_ms,
            password: identity
                .password_hash
                .as_deref()
                .map(|hash| crate::auth::password_fingerprint(hash).into()),
            certificate: principal.certificate.as_deref().map(Arc::from),
        });
        self.remember(generation, |c| {
            c.callers.insert(key, caller.clone());
        });
        password_unchanged(principal, caller)
    }

    /// The resource at a normalised path, cached.
    pub async fn resource(&self, path: &str) -> Result<Option<Arc<ResourceRecord>>> {
        if let Some(found) = self.caches().resources.get(path) {
            return Ok(found.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let found = self.store.resource(path).await?.map(Arc::new);
        self.remember(generation, |c| {
            c.resources.insert(path.to_string(), found.clone());
        });
        Ok(found)
    }

    /// The strongest right `caller` holds on `path`, from grants on the path
    /// and its ancestors and from owning any of them.
    pub async fn right(&self, caller: &Caller, path: &str) -> Result<Option<Right>> {
        if let Some(right) = self
            .caches()
            .rights
            .get(&*caller.name)
            .and_then(|paths| paths.get(path))
        {
            return Ok(*right);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let lineage = paths::lineage(path);
        let mut best: Option<Right> = None;
        for ancestor in &lineage {
            if let Some(resource) = self.resource(ancestor).await?
                && *resource.owner == *caller.name
            {
                best = Some(Right::Admin);
                break;
            }
        }
        if best != Some(Right::Admin) {
            for grant in self.store.grants_on(&lineage).await? {
                let applies = *grant.principal == *caller.name
                    || grant
                        .principal
                        .strip_prefix("group:")
                        .is_some_and(|group| caller.groups.iter().any(|g| g == group));
                if applies {
                    best = best.max(Some(grant.right));
                }
            }
        }
        self.remember(generation, |c| {
            let paths = c.rights.entry(caller.name.clone()).or_default();
            paths.insert(path.to_string(), best);
        });
        Ok(best)
    }

    /// Fails with PERMISSION_DENIED naming the resource and the missing right.
    pub async fn require(&self, caller: &Caller, path: &str, needed: Right) -> Result<()> {
        match self.right(caller, path).await? {
            Some(held) if held >= needed => Ok(()),
            _ => Err(Error::permission_denied(format!(
                "{} lacks {} on {path}; ask an admin of {path} to grant it (busbar grant {path} {} {})",
                caller.name,
                needed.name(),
                caller.name,
                needed.name()
            ))),
        }
    }

    /// Whether `caller` holds admin on "/".
    pub async fn is_root_admin(&self, caller: &Caller) -> Result<bool> {
        Ok(self.right(caller, "/").await? == Some(Right::Admin))
    }

    /// Requires `needed` on `path`, then returns the resource there, which must exist.
    pub async fn require_resource(
        &self,
        caller: &Caller,
        path: &str,
        needed: Right,
    ) -> Result<Arc<ResourceRecord>> {
        self.require(caller, path, needed).await?;
        self.resource(path)
            .await?
            .ok_or_else(|| Error::not_found(format!("{path} does not exist")))
    }

    /// [`require_resource`](Self::require_resource), for a resource that
    /// must be a `kind`: FAILED_PRECONDITION says what it is instead.
    pub async fn require_kind(
        &self,
        caller: &Caller,
        path: &str,
        needed: Right,
        kind: ResourceKind,
    ) -> Result<Arc<ResourceRecord>> {
        let record = self.require_resource(caller, path, needed).await?;
        if record.kind != kind {
            return Err(Error::failed_precondition(format!(
                "{path} is a {}, not a {}",
                record.kind.name(),
                crate::store::noun(kind)
            )));
        }
        Ok(record)
    }
}
