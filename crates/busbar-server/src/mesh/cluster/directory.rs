//! Which providers live on which node: a row per provider in PostgreSQL
//! (`busbar.mesh_providers`), written when a provider's offer is accepted,
//! deleted when it goes, and marked seen by its node's heartbeat (every
//! 5 s), so the rows of a node that died stop counting after
//! [`LISTED_FOR_MS`] and are deleted after a minute. A row carries the
//! offer itself (services and descriptor files), so every node can route
//! to the provider and serve its descriptors through reflection.
//!
//! Offers are checked and recorded under one advisory lock, so two nodes
//! cannot accept two different definitions of one service at once.

use crate::error::Result;
use crate::node::LISTED_FOR_MS;
use crate::store::{cached, execute_cached, now_ms};
use deadpool_postgres::Pool;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS busbar.mesh_providers (
    node_id     TEXT NOT NULL,
    provider    TEXT NOT NULL,
    identity    TEXT NOT NULL,
    services    TEXT[] NOT NULL,
    files       BYTEA NOT NULL,
    concurrency BIGINT NOT NULL,
    since_ms    BIGINT NOT NULL,
    seen_ms     BIGINT NOT NULL,
    PRIMARY KEY (node_id, provider)
);
";

/// Held (per transaction) while an offer is checked against every node's
/// providers and recorded (a row of `busbar.locks`: `store::row_lock`).
const OFFER_LOCK: &str = "mesh/offers";

/// Rows not seen for this long are deleted by whichever node reports next.
const FORGOTTEN_AFTER_MS: i64 = 60_000;

/// One provider as its node recorded it.
#[derive(Debug, Clone)]
pub(crate) struct ProviderRow {
    pub node: String,
    pub provider: String,
    pub identity: String,
    pub services: Vec<String>,
    /// The offer's `FileDescriptorSet`, as the node checked it.
    pub files: Vec<u8>,
    pub concurrency: i64,
    pub since_ms: i64,
}

const COLUMNS: &str = "node_id, provider, identity, services, files, concurrency, since_ms";

fn row(row: &tokio_postgres::Row) -> ProviderRow {
    ProviderRow {
        node: row.get(0),
        provider: row.get(1),
        identity: row.get(2),
        services: row.get(3),
        files: row.get(4),
        concurrency: row.get(5),
        since_ms: row.get(6),
    }
}

pub(crate) struct Directory {
    pool: Pool,
}

impl Directory {
    /// The directory in the store's database (its pool), the table made
    /// when missing.
    pub async fn open(pool: Pool) -> Result<Directory> {
        crate::store::ensure_schema(&pool, SCHEMA).await?;
        Ok(Directory { pool })
    }

    /// The providers of every node but `node` seen lately.
    pub async fn others(&self, node: &str) -> Result<Vec<ProviderRow>> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM busbar.mesh_providers WHERE seen_ms >= $1 AND node_id <> $2"
        );
        let rows = client
            .query(
                &cached(&client, &sql).await?,
                &[&(now_ms() - LISTED_FOR_MS), &node],
            )
            .await?;
        Ok(rows.iter().map(row).collect())
    }

    /// Records `new` if `check`, given every other node's providers (read
    /// under the offer lock), accepts it; nothing is recorded otherwise.
    pub async fn offer(
        &self,
        new: &ProviderRow,
        check: impl FnOnce(Vec<ProviderRow>) -> Result<()>,
    ) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        crate::store::row_lock(&tx, OFFER_LOCK).await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM busbar.mesh_providers WHERE seen_ms >= $1 AND node_id <> $2"
        );
        let others = tx
            .query(
                &cached(&tx, &sql).await?,
                &[&(now_ms() - LISTED_FOR_MS), &new.node],
            )
            .await?;
        check(others.iter().map(row).collect())?;
        insert(&tx, new).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a provider that went.
    pub async fn withdraw(&self, node: &str, provider: &str) -> Result<()> {
        let client = self.pool.get().await?;
        execute_cached(&client, DELETE_PROVIDER, &[&node, &provider]).await?;
        Ok(())
    }

    /// The node's heartbeat: its rows are exactly `live` (a row a failed
    /// delete left goes, one lost in an outage comes back), marked seen;
    /// rows nobody has seen for a minute go.
    pub async fn seen(&self, node: &str, live: &[ProviderRow]) -> Result<()> {
        let client = self.pool.get().await?;
        let now = now_ms();
        let ids: Vec<&str> = live.iter().map(|r| r.provider.as_str()).collect();
        execute_cached(&client, DELETE_GONE, &[&node, &ids]).await?;
        let marked = execute_cached(&client, MARK_SEEN, &[&node, &now]).await?;
        if (marked as usize) < live.len() {
            for provider in live {
                insert(&client, provider).await?;
            }
        }
        execute_cached(&client, DELETE_FORGOTTEN, &[&(now - FORGOTTEN_AFTER_MS)]).await?;
        Ok(())
    }

    /// Deletes every row of a node that stops.
    pub async fn forget(&self, node: &str) -> Result<()> {
        let client = self.pool.get().await?;
        execute_cached(&client, DELETE_NODE, &[&node]).await?;
        Ok(())
    }
}

/// One provider of a node.
const DELETE_PROVIDER: &str =
    "DELETE FROM busbar.mesh_providers WHERE node_id = $1 AND provider = $2";
/// A node's providers but those listed (`$2`).
const DELETE_GONE: &str =
    "DELETE FROM busbar.mesh_providers WHERE node_id = $1 AND NOT (provider = ANY($2))";
/// Marks a node's providers seen at `$2`.
const MARK_SEEN: &str = "UPDATE busbar.mesh_providers SET seen_ms = $2 WHERE node_id = $1";
/// Rows nobody has marked seen since `$1`.
const DELETE_FORGOTTEN: &str = "DELETE FROM busbar.mesh_providers WHERE seen_ms < $1";
/// Every provider of a node.
const DELETE_NODE: &str = "DELETE FROM busbar.mesh_providers WHERE node_id = $1";

/// Inserts (or marks seen) one provider's row.
async fn insert(db: &impl deadpool_postgres::GenericClient, new: &ProviderRow) -> Result<()> {
    let sql = format!(
        "INSERT INTO busbar.mesh_providers ({COLUMNS}, seen_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (node_id, provider) DO UPDATE SET seen_ms = EXCLUDED.seen_ms"
    );
    db.execute(
        &cached(db, &sql).await?,
        &[
            &new.node,
            &new.provider,
            &new.identity,
            &new.services,
            &new.files,
            &new.concurrency,
            &new.since_ms,
            &now_ms(),
        ],
    )
    .await?;
    Ok(())
}
