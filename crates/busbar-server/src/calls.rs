//! Idempotency keys: a write sent again (its client lost the connection
//! before the answer, so it cannot know whether the write happened) is
//! applied once. The client makes one key per logical call and sends it
//! with each try (`x-busbar-idempotency-key`); a cluster node records the
//! key and the call's outcome in PostgreSQL **in the same transaction as
//! the write**, so either both are there or neither is. A second try whose
//! write reaches the same point finds the key (waiting, if the first try's
//! transaction is still open, until it commits or rolls back), rolls its
//! own write back, and answers with the first outcome.
//!
//! Keys are remembered for [`KEPT_FOR_MS`]; a key is scoped to its caller
//! and, for SQL, to its database's role. A key sent again with a different
//! request is refused. Embedded nodes do not take keys (there is no other
//! node to retry on): they never tell clients they honour them, so clients
//! do not retry unknown outcomes there.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};

/// How long a key's first outcome is kept: a day.
pub const KEPT_FOR_MS: i64 = 24 * 60 * 60 * 1000;

/// Outcomes larger than this are not kept whole; a retry learns the call
/// was applied, but not its result.
pub const MAX_OUTCOME_BYTES: usize = 1 << 20;

/// One keyed call: its key (scoped to the caller) and a digest of what was
/// asked, so the same key with another request is refused.
#[derive(Debug, Clone)]
pub struct CallKey {
    pub key: String,
    pub request: Vec<u8>,
}

impl CallKey {
    /// The key a call of `method` carries, on a node that keeps keys (a
    /// cluster's); an embedded node spends nothing on them.
    pub fn of<M: prost::Message>(
        node: &crate::node::Node,
        request: &tonic::Request<M>,
        caller: &crate::auth::access::Caller,
        method: &str,
    ) -> Result<Option<CallKey>> {
        if node.config.store.is_none() {
            return Ok(None);
        }
        CallKey::from_metadata(
            request.metadata(),
            &caller.identity_id,
            method,
            &request.get_ref().encode_to_vec(),
        )
    }

    /// The key a request carries, if any ([`key_in`]), bound to `request`:
    /// what the call asks (method and message).
    pub fn from_metadata(
        metadata: &tonic::metadata::MetadataMap,
        identity: &str,
        method: &str,
        request: &[u8],
    ) -> Result<Option<CallKey>> {
        let key = key_in(metadata, identity)?;
        Ok(key.map(|key| CallKey::bound(key, method, request)))
    }

    /// A scoped key ([`key_in`]) bound to what its call asks, digested.
    pub fn bound(key: String, method: &str, request: &[u8]) -> CallKey {
        let mut digest = Sha256::new();
        digest.update(method.as_bytes());
        digest.update([0]);
        digest.update(request);
        CallKey {
            key,
            request: digest.finalize().to_vec(),
        }
    }
}

/// The key a request carries, if any: checked (1 to 128 characters of
/// letters, digits, `-` and `_`) and scoped to `identity`, not yet bound to
/// a request (a streamed call's digest is known only at its end).
pub fn key_in(metadata: &tonic::metadata::MetadataMap, identity: &str) -> Result<Option<String>> {
    let Some(value) = metadata.get(busbar_proto::IDEMPOTENCY_KEY_METADATA_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or("");
    if !busbar_proto::is_idempotency_key(key) {
        return Err(Error::invalid_argument(format!(
            "bad {}: use 1 to 128 letters, digits, - and _ (a UUID, say), made once per call",
            busbar_proto::IDEMPOTENCY_KEY_METADATA_KEY
        )));
    }
    Ok(Some(format!("{identity}/{key}")))
}

/// An outcome that can be kept with its key and given again.
pub trait Replay: Sized {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Result<Self>;
}

impl Replay for u64 {
    fn encode(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<u64> {
        Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| {
            Error::internal("a kept outcome is not the count it should be")
        })?))
    }
}

/// The outcome kept in place of one too large to keep.
pub const TOO_LARGE: &[u8] = b"busbar: outcome too large to keep";

/// Records `key` with `outcome` in the transaction open on `client`.
/// Returns `outcome` when this try is the first, or the first try's
/// outcome after rolling this transaction back.
pub async fn settle<T: Replay, C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    key: &CallKey,
    outcome: T,
) -> Result<T> {
    let failed = |e: tokio_postgres::Error| {
        Error::unavailable(format!(
            "recording the call's idempotency key: {}",
            crate::store::postgres_reason(&e)
        ))
    };
    let encoded = kept(&outcome);
    let row = client
        .query_one(
            "SELECT fresh, request, outcome FROM busbar_calls.record($1, $2, $3, $4)",
            &[&key.key, &key.request, &encoded, &crate::store::now_ms()],
        )
        .await
        .map_err(failed)?;
    if row.get::<_, bool>(0) {
        return Ok(outcome);
    }
    // An earlier try of this call committed first: this one's write goes.
    client.batch_execute("ROLLBACK").await.map_err(failed)?;
    replay(key, row.get(1), row.get(2))
}

/// What is kept of `outcome` with its key: all of it, up to
/// [`MAX_OUTCOME_BYTES`].
pub fn kept<T: Replay>(outcome: &T) -> Vec<u8> {
    let encoded = outcome.encode();
    if encoded.len() > MAX_OUTCOME_BYTES {
        return TOO_LARGE.to_vec();
    }
    encoded
}

/// The SQLSTATE `busbar_calls.record_first` aborts a repeat with.
pub const REPEATED: &str = "BBK01";

/// The first outcome of `key`, if a try of it was recorded already (for a
/// retry that cannot reach the point where it would record: a full queue,
/// a name its first try took). Any role may ask, for its own keys only.
pub async fn earlier<T: Replay>(
    client: &(impl tokio_postgres::GenericClient + Sync),
    key: &CallKey,
) -> Result<Option<T>> {
    let row = client
        .query_opt(
            "SELECT request, outcome FROM busbar_calls.earlier($1)",
            &[&key.key],
        )
        .await
        .map_err(|e| {
            Error::unavailable(format!(
                "reading the call's idempotency key: {}",
                crate::store::postgres_reason(&e)
            ))
        })?;
    row.map(|row| replay(key, row.get(0), row.get(1)))
        .transpose()
}

/// The first outcome of a keyed change to the node's own records (the
/// tree, identities, certificates) whose first try committed, if `key` has
/// one: asked before the change's checks, which its first try's change
/// would now fail (the path is taken, the name exists).
pub(crate) async fn first_outcome<T: Replay>(
    node: &crate::node::Node,
    key: &Option<CallKey>,
) -> Result<Option<T>> {
    let Some(key) = key else {
        return Ok(None);
    };
    match node.store.earlier_call(key).await? {
        Some((request, outcome)) => replay(key, request, outcome).map(Some),
        None => Ok(None),
    }
}

/// Refuses a key recorded for another request than the one it came with.
pub(crate) fn same_request(key: &CallKey, recorded: &[u8]) -> Result<()> {
    if recorded != key.request {
        return Err(Error::invalid_argument(
            "this idempotency key was used for another call (a different method or request); \
             make a new key for each call",
        ));
    }
    Ok(())
}

/// The first outcome of `key`, given again; refused when the key was made
/// for another request.
pub(crate) fn replay<T: Replay>(key: &CallKey, request: Vec<u8>, earlier: Vec<u8>) -> Result<T> {
    same_request(key, &request)?;
    if earlier == TOO_LARGE {
        return Err(Error::failed_precondition(
            "this call was applied by an earlier try with the same idempotency key; its result \
             was too large to keep, so it cannot be given again",
        ));
    }
    T::decode(&earlier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_scoped_and_tied_to_their_request() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert!(
            CallKey::from_metadata(&metadata, "i", "m", b"r")
                .unwrap()
                .is_none()
        );
        metadata.insert(
            busbar_proto::IDEMPOTENCY_KEY_METADATA_KEY,
            "k-1".parse().unwrap(),
        );
        let key = CallKey::from_metadata(&metadata, "ident", "m", b"r")
            .unwrap()
            .unwrap();
        assert_eq!(key.key, "ident/k-1");
        let other = CallKey::from_metadata(&metadata, "ident", "m", b"s")
            .unwrap()
            .unwrap();
        assert_ne!(
            key.request, other.request,
            "another request, another digest"
        );
        for bad in ["", "a b", "a/b", &"x".repeat(129)] {
            metadata.insert(
                busbar_proto::IDEMPOTENCY_KEY_METADATA_KEY,
                bad.parse().unwrap(),
            );
            assert!(
                CallKey::from_metadata(&metadata, "i", "m", b"r").is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(u64::decode(&7u64.encode()).unwrap(), 7);
        assert!(u64::decode(b"no").is_err());
    }
}
