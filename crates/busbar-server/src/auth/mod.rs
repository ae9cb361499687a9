//! Who is calling. A client authenticates once per connection (password, API
//! token or a signed nonce) and receives a short-lived session token; every
//! later call carries it as `authorization: Bearer <session>`, which costs one
//! HMAC check, not a password hash or a signature.
//!
//! Session tokens and challenge nonces are HMAC-signed with a key kept in the
//! `Store`, so any node of a cluster can verify them.

pub mod access;
pub mod login_throttle;
pub mod service;

use crate::auth::login_throttle::LoginThrottle;
use crate::error::{Error, Result};
use crate::store::{
    CertificateRecord, IdentityKind, IdentityRecord, NewIdentity, Store, TokenRecord, now_ms,
};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of API tokens, so they are recognisable in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "bbt_";
const SESSION_PREFIX: &str = "bbs1.";
/// How long a challenge nonce may be signed and used.
const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Most nonces remembered as used at once; beyond it login by key waits for
/// old ones to expire (answers UNAVAILABLE), so memory stays bounded.
const MAX_USED_NONCES: usize = 100_000;

/// The caller of a request, attached to it by the authentication layer.
#[derive(Debug, Clone)]
pub struct Principal {
    pub identity_id: String,
    pub name: String,
    /// Id of the API token the session came from, if any; revoking the token
    /// ends the session too.
    pub token_id: Option<String>,
    /// When the session expires, epoch ms.
    pub expires_ms: i64,
    /// For a session from a password login: the fingerprint of the password
    /// hash it was issued under, so a changed password ends it.
    pub password: Option<String>,
    /// Hex fingerprint of the client certificate the session came from, if
    /// any; revoking the certificate ends the session too.
    pub certificate: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SessionClaims {
    /// identity id
    id: String,
    /// identity name
    n: String,
    /// expiry, epoch ms
    exp: i64,
    /// API token id the session came from
    #[serde(skip_serializing_if = "Option::is_none")]
    tok: Option<String>,
    /// fingerprint of the password hash, for sessions from a password login
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pw: Option<String>,
    /// hex fingerprint of the client certificate the session came from
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crt: Option<String>,
}

/// The credential a session comes from, where it outlives the login: calls
/// check it is still live, and a refresh keeps it.
#[derive(Debug, Clone, Default)]
pub enum SessionSource {
    /// A password or a signed nonce: checked once, at login.
    #[default]
    Login,
    /// An API token (its id).
    Token(String),
    /// A client certificate: hex fingerprint and expiry (epoch ms); the
    /// session never outlives the certificate.
    Certificate {
        fingerprint: String,
        expires_ms: i64,
    },
}

/// Signs and checks credentials.
pub struct Authenticator {
    store: Arc<dyn Store>,
    key: Vec<u8>,
    session_ttl: Duration,
    used_nonces: Mutex<HashMap<Vec<u8>, i64>>,
    /// A valid hash for a throw-away password, verified when the user does not
    /// exist so that timing does not tell which users exist.
    decoy_hash: String,
    /// Bounds argon2 work and slows repeated password failures.
    throttle: LoginThrottle,
}

pub fn hash_password(password: &str) -> Result<String> {
    if password.len() < 8 {
        return Err(Error::invalid_argument(
            "password too short: use at least 8 characters",
        ));
    }
    if password.len() > 1024 {
        return Err(Error::invalid_argument(
            "password too long: use at most 1024 bytes",
        ));
    }
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::internal(format!("hashing the password failed: {e}")))
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// A short fingerprint of a password hash (the hash is salted, so a new
/// password, even the same one again, has a new fingerprint).
pub fn password_fingerprint(hash: &str) -> String {
    hex::encode(&Sha256::digest(hash.as_bytes())[..8])
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

impl Authenticator {
    pub async fn new(store: Arc<dyn Store>, session_ttl: Duration) -> Result<Authenticator> {
        let key = store
            .secret("session-hmac", || random_bytes::<32>().to_vec())
            .await?;
        let decoy_hash =
            tokio::task::spawn_blocking(|| hash_password("decoy-password-never-used")).await??;
        Ok(Authenticator {
            store,
            key,
            session_ttl,
            used_nonces: Mutex::new(HashMap::new()),
            decoy_hash,
            throttle: LoginThrottle::default(),
        })
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(data);
        mac
    }

    /// A nonce for `name` to sign: random bytes, expiry and an HMAC binding
    /// them to the name, so any node can check it without shared state.
    pub fn challenge(&self, name: &str) -> (Vec<u8>, i64) {
        let expires = now_ms() + CHALLENGE_TTL.as_millis() as i64;
        let mut nonce = random_bytes::<16>().to_vec();
        nonce.extend_from_slice(&expires.to_be_bytes());
        let mut mac = self.mac(&nonce);
        mac.update(name.as_bytes());
        nonce.extend_from_slice(&mac.finalize().into_bytes());
        (nonce, expires)
    }

    fn check_challenge(&self, name: &str, nonce: &[u8]) -> Result<()> {
        let bad = || {
            Error::unauthenticated(
                "bad key login: the nonce is not one this server issued for that name; call Challenge again and sign its nonce",
            )
        };
        if nonce.len() != 16 + 8 + 32 {
            return Err(bad());
        }
        let (body, tag) = nonce.split_at(24);
        let mut mac = self.mac(body);
        mac.update(name.as_bytes());
        mac.verify_slice(tag).map_err(|_| bad())?;
        let expires = i64::from_be_bytes(body[16..24].try_into().expect("8 bytes"));
        let now = now_ms();
        if expires < now {
            return Err(Error::unauthenticated(
                "key login nonce expired (nonces live 60 s); call Challenge again",
            ));
        }
        let mut used = self.used_nonces.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, exp| *exp >= now);
        if used.len() >= MAX_USED_NONCES {
            return Err(Error::unavailable(
                "too many key logins in flight; retry in a minute",
            ));
        }
        if used.insert(nonce.to_vec(), expires).is_some() {
            return Err(Error::unauthenticated(
                "key login nonce already used; call Challenge again for a fresh one",
            ));
        }
        Ok(())
    }

    fn issue(&self, identity: &IdentityRecord, source: SessionSource) -> (String, i64) {
        let mut exp = now_ms() + self.session_ttl.as_millis() as i64;
        let (mut pw, mut tok, mut crt) = (None, None, None);
        match source {
            SessionSource::Login => {
                pw = identity.password_hash.as_deref().map(password_fingerprint)
            }
            SessionSource::Token(id) => tok = Some(id),
            SessionSource::Certificate {
                fingerprint,
                expires_ms,
            } => {
                exp = exp.min(expires_ms);
                crt = Some(fingerprint);
            }
        }
        let claims = SessionClaims {
            id: identity.id.clone(),
            n: identity.name.clone(),
            exp,
            pw,
            tok,
            crt,
        };
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let tag = URL_SAFE_NO_PAD.encode(self.mac(body.as_bytes()).finalize().into_bytes());
        (format!("{SESSION_PREFIX}{body}.{tag}"), exp)
    }

    /// Checks a session token's signature and expiry (no storage access).
    pub fn verify_session(&self, token: &str) -> Result<Principal> {
        let malformed = || {
            Error::unauthenticated(
                "the session token is not valid here (malformed or signed by another server); log in again",
            )
        };
        let rest = token.strip_prefix(SESSION_PREFIX).ok_or_else(malformed)?;
        let (body, tag) = rest.split_once('.').ok_or_else(malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| malformed())?;
        self.mac(body.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| malformed())?;
        let claims: SessionClaims = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or_else(malformed)?;
        if claims.exp < now_ms() {
            return Err(Error::unauthenticated(
                "session expired; log in again (clients refresh sessions before they expire)",
            ));
        }
        Ok(Principal {
            identity_id: claims.id,
            name: claims.n,
            token_id: claims.tok,
            expires_ms: claims.exp,
            password: claims.pw,
            certificate: claims.crt,
        })
    }

    /// A new session for the caller of a live one, for another full lifetime,
    /// from the same API token or client certificate if it came from one (so
    /// revoking that still ends it, and a certificate's expiry still bounds it).
    pub async fn refresh(
        &self,
        caller: &crate::auth::access::Caller,
        identity: &IdentityRecord,
    ) -> Result<(String, i64)> {
        let source = if let Some(token_id) = &caller.token_id {
            SessionSource::Token(token_id.to_string())
        } else if let Some(fingerprint) = &caller.certificate {
            let record = self.live_certificate(fingerprint).await?;
            SessionSource::Certificate {
                fingerprint: fingerprint.to_string(),
                expires_ms: record.expires_ms,
            }
        } else {
            SessionSource::Login
        };
        Ok(self.issue(identity, source))
    }

    /// The record of a certificate this node issued, if it is neither revoked nor expired.
    pub async fn live_certificate(&self, fingerprint_hex: &str) -> Result<CertificateRecord> {
        let fingerprint = hex::decode(fingerprint_hex).unwrap_or_default();
        match self.store.certificate(&fingerprint).await? {
            Some(record) if record.revoked => Err(Error::unauthenticated(format!(
                "the client certificate {fingerprint_hex} has been revoked; ask an admin for a new one (busbar identity cert)"
            ))),
            Some(record) if record.expires_ms < now_ms() => Err(Error::unauthenticated(format!(
                "the client certificate {fingerprint_hex} expired; ask an admin for a new one (busbar identity cert)"
            ))),
            Some(record) => Ok(record),
            None => Err(Error::unauthenticated(format!(
                "the client certificate {fingerprint_hex} was not issued by this node's `busbar identity` commands, so it names no identity here"
            ))),
        }
    }

    /// Logs in as the identity of the client certificate the connection
    /// presented (the TLS handshake has checked its chain, dates and
    /// revocation; this finds whose it is and checks it again).
    pub async fn login_certificate(
        &self,
        presented: Option<&[u8]>,
    ) -> Result<(IdentityRecord, String, i64)> {
        let der = presented.ok_or_else(|| {
            Error::unauthenticated(
                "certificate login needs a client certificate in the TLS handshake, and this connection presented none; connect with the config `busbar identity new NAME --cert` wrote",
            )
        })?;
        let fingerprint = hex::encode(crate::tls::fingerprint(der));
        let record = self.live_certificate(&fingerprint).await?;
        let identity = self.active_identity(&record.identity_id).await?;
        let (session, exp) = self.issue(
            &identity,
            SessionSource::Certificate {
                fingerprint,
                expires_ms: record.expires_ms,
            },
        );
        Ok((identity, session, exp))
    }

    /// Checks a user's password. `peer` is the caller's address, for the
    /// throttle's per-address count (see [`LoginThrottle`]).
    pub async fn login_password(
        &self,
        user: &str,
        password: &str,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(IdentityRecord, String, i64)> {
        let wrong = || {
            Error::unauthenticated(
                "wrong user name or password; check both, or ask an admin to reset it (busbar user passwd)",
            )
        };
        let found = self.store.identity_by_name(user).await?;
        let hash = found
            .as_ref()
            .and_then(|identity| identity.password_hash.clone())
            .unwrap_or_else(|| self.decoy_hash.clone());
        let password = password.to_string();
        let matches = self
            .throttle
            .check(user, peer, move || verify_password(&password, &hash))
            .await?;
        match found {
            Some(identity) if matches && identity.kind == IdentityKind::User => {
                if identity.revoked {
                    return Err(Error::unauthenticated(format!(
                        "identity {user} has been revoked; ask an admin for a new one"
                    )));
                }
                let (session, exp) = self.issue(&identity, SessionSource::Login);
                Ok((identity, session, exp))
            }
            _ => Err(wrong()),
        }
    }

    pub async fn login_token(&self, token: &str) -> Result<(IdentityRecord, String, i64)> {
        let unknown = || {
            Error::unauthenticated(
                "unknown API token; check it was copied whole, or create a new one (busbar token create)",
            )
        };
        if !token.starts_with(TOKEN_PREFIX) {
            return Err(unknown());
        }
        let record = self
            .store
            .token_by_hash(&token_hash(token))
            .await?
            .ok_or_else(unknown)?;
        if record.revoked {
            return Err(Error::unauthenticated(format!(
                "API token {} has been revoked; create a new one (busbar token create)",
                record.name
            )));
        }
        if record.expires_ms != 0 && record.expires_ms < now_ms() {
            return Err(Error::unauthenticated(format!(
                "API token {} expired; create a new one (busbar token create)",
                record.name
            )));
        }
        let identity = self.active_identity(&record.identity_id).await?;
        let (session, exp) = self.issue(&identity, SessionSource::Token(record.id));
        Ok((identity, session, exp))
    }

    pub async fn login_key(
        &self,
        name: &str,
        nonce: &[u8],
        signature: &[u8],
    ) -> Result<(IdentityRecord, String, i64)> {
        self.check_challenge(name, nonce)?;
        let unknown = || {
            Error::unauthenticated(format!(
                "no key identity named {name} is registered here; ask an admin to register its public key (busbar identity new)"
            ))
        };
        let identity = self
            .store
            .identity_by_name(name)
            .await?
            .ok_or_else(unknown)?;
        let Some(public_key) = identity
            .public_key
            .as_deref()
            .filter(|_| identity.kind == IdentityKind::Key)
        else {
            return Err(unknown());
        };
        if identity.revoked {
            return Err(Error::unauthenticated(format!(
                "identity {name} has been revoked; ask an admin for a new one"
            )));
        }
        let key = <[u8; 32]>::try_from(public_key)
            .ok()
            .and_then(|bytes| ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok())
            .ok_or_else(|| Error::internal(format!("stored public key of {name} is unusable")))?;
        let signature = ed25519_dalek::Signature::from_slice(signature).map_err(|_| {
            Error::unauthenticated(
                "bad signature: expected 64 bytes of Ed25519 signature over the nonce",
            )
        })?;
        key.verify_strict(nonce, &signature).map_err(|_| {
            Error::unauthenticated(format!(
                "bad signature: the nonce was not signed with the private key registered for {name}; check the client config holds that identity's key"
            ))
        })?;
        let (session, exp) = self.issue(&identity, SessionSource::Login);
        Ok((identity, session, exp))
    }

    async fn active_identity(&self, id: &str) -> Result<IdentityRecord> {
        match self.store.identity_by_id(id).await? {
            Some(identity) if !identity.revoked => Ok(identity),
            Some(identity) => Err(Error::unauthenticated(format!(
                "identity {} has been revoked; ask an admin for a new one",
                identity.name
            ))),
            None => Err(Error::unauthenticated(
                "the identity no longer exists; log in again",
            )),
        }
    }

    /// Creates an API token for `identity`; its secret is shown once. With
    /// an idempotency key, a repeat replaces the token an earlier try of the
    /// call made ([`Store::create_token_keyed`]).
    pub async fn create_token(
        &self,
        identity: &IdentityRecord,
        name: &str,
        ttl: Option<Duration>,
        key: Option<&crate::calls::CallKey>,
    ) -> Result<MadeToken> {
        crate::resources::paths::validate_identity_name(name).map_err(|_| {
            Error::invalid_argument(format!(
                "bad token name {name:?}: use 1 to 64 letters, digits, '_', '-' or '.'"
            ))
        })?;
        let secret = format!(
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(random_bytes::<32>())
        );
        let now = now_ms();
        let record = TokenRecord {
            id: uuid::Uuid::new_v4().to_string(),
            identity_id: identity.id.clone(),
            name: name.to_string(),
            hash: token_hash(&secret),
            created_ms: now,
            expires_ms: ttl.map_or(0, |ttl| now + ttl.as_millis() as i64),
            revoked: false,
        };
        let replaced = match key {
            Some(key) => self.store.create_token_keyed(record.clone(), key).await?,
            None => {
                self.store.create_token(record.clone()).await?;
                false
            }
        };
        Ok(MadeToken {
            secret,
            record,
            replaced,
        })
    }

    /// Makes a user; with an idempotency key, a repeat answers with the
    /// user its first try made ([`Store::create_identity_keyed`]).
    pub async fn create_user(
        &self,
        name: &str,
        password: &str,
        admin: bool,
        key: Option<&crate::calls::CallKey>,
    ) -> Result<IdentityRecord> {
        crate::resources::paths::validate_identity_name(name)?;
        let password = password.to_string();
        let hash = tokio::task::spawn_blocking(move || hash_password(&password)).await??;
        let new = NewIdentity {
            name: name.to_string(),
            kind: IdentityKind::User,
            password_hash: Some(hash),
            public_key: None,
            admin,
        };
        self.create_identity(new, key).await
    }

    async fn create_identity(
        &self,
        new: NewIdentity,
        key: Option<&crate::calls::CallKey>,
    ) -> Result<IdentityRecord> {
        match key {
            Some(key) => self.store.create_identity_keyed(new, key).await,
            None => self.store.create_identity(new).await,
        }
    }

    pub async fn register_key(
        &self,
        name: &str,
        public_key_b64: &str,
        admin: bool,
        call_key: Option<&crate::calls::CallKey>,
    ) -> Result<IdentityRecord> {
        crate::resources::paths::validate_identity_name(name)?;
        let key = STANDARD
            .decode(public_key_b64.trim())
            .ok()
            .filter(|bytes| bytes.len() == 32)
            .filter(|bytes| {
                ed25519_dalek::VerifyingKey::from_bytes(bytes.as_slice().try_into().expect("32"))
                    .is_ok()
            })
            .ok_or_else(|| {
                Error::invalid_argument(
                    "bad public key: expected standard base64 of a 32-byte Ed25519 public key",
                )
            })?;
        let new = NewIdentity {
            name: name.to_string(),
            kind: IdentityKind::Key,
            password_hash: None,
            public_key: Some(key),
            admin,
        };
        self.create_identity(new, call_key).await
    }

    pub async fn set_password(&self, name: &str, password: &str) -> Result<()> {
        let password = password.to_string();
        let hash = tokio::task::spawn_blocking(move || hash_password(&password)).await??;
        self.store.set_password_hash(name, &hash).await
    }
}

/// A token just made: its secret (shown this once), its record, and
/// whether it replaced the token an earlier try of the same call made.
pub struct MadeToken {
    pub secret: String,
    pub record: TokenRecord,
    pub replaced: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use ed25519_dalek::Signer;

    async fn authenticator() -> (tempfile::TempDir, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        (
            dir,
            Authenticator::new(store, Duration::from_secs(60))
                .await
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn sessions_verify_and_tampering_fails() {
        let (_dir, auth) = authenticator().await;
        auth.create_user("bob", "correct horse", false, None)
            .await
            .unwrap();
        let (_, session, _) = auth
            .login_password("bob", "correct horse", None)
            .await
            .unwrap();
        assert_eq!(auth.verify_session(&session).unwrap().name, "bob");
        let mut tampered = session.clone();
        tampered.insert(10, 'x');
        assert_eq!(
            auth.verify_session(&tampered).unwrap_err().code,
            crate::error::ErrorCode::Unauthenticated
        );
        let wrong = auth
            .login_password("bob", "wrong horse", None)
            .await
            .unwrap_err();
        let nobody = auth
            .login_password("nobody", "wrong horse", None)
            .await
            .unwrap_err();
        assert_eq!(wrong.message, nobody.message, "no hint which users exist");
    }

    #[tokio::test]
    async fn key_login_nonce_is_single_use_and_bound_to_name() {
        let (_dir, auth) = authenticator().await;
        let key = ed25519_dalek::SigningKey::from_bytes(&random_bytes::<32>());
        let public = STANDARD.encode(key.verifying_key().as_bytes());
        auth.register_key("robot", &public, false, None)
            .await
            .unwrap();
        let (nonce, _) = auth.challenge("robot");
        let signature = key.sign(&nonce).to_bytes();
        auth.login_key("robot", &nonce, &signature).await.unwrap();
        let again = auth
            .login_key("robot", &nonce, &signature)
            .await
            .unwrap_err();
        assert!(again.message.contains("already used"), "{}", again.message);
        let (other, _) = auth.challenge("someone-else");
        let err = auth
            .login_key("robot", &other, &key.sign(&other).to_bytes())
            .await
            .unwrap_err();
        assert!(
            err.message.contains("not one this server issued"),
            "{}",
            err.message
        );
        let (nonce, _) = auth.challenge("robot");
        let wrong_key = ed25519_dalek::SigningKey::from_bytes(&random_bytes::<32>());
        let err = auth
            .login_key("robot", &nonce, &wrong_key.sign(&nonce).to_bytes())
            .await
            .unwrap_err();
        assert!(err.message.contains("bad signature"), "{}", err.message);
    }
}
