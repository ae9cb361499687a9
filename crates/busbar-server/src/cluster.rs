//! Which engines a node runs on: embedded (SQLite files and in-process
//! channels, the default) or a cluster's shared PostgreSQL (`--store`) and
//! NATS (`--bus`). Only this module and the backends themselves know.

use crate::bus::{Bus, LocalBus, NatsBus, connect_nats};
use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::store::{PostgresStore, SqliteStore, Store};
use std::path::Path;
use std::sync::Arc;

/// TLS for PostgreSQL connections (used when the URL's `sslmode` asks).
pub type PgTls = tokio_postgres_rustls::MakeRustlsConnect;

/// `url` without its password, for logs and messages (credentials are never
/// printed).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // A password may also come as a query parameter (`?password=...`).
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| !pair.starts_with("password="))
                .collect();
            if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => tail.to_string(),
    };
    let host = match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or("");
            format!("{user}@{host}")
        }
        None => authority.to_string(),
    };
    format!("{scheme}://{host}{tail}")
}

/// The engines a node's jobs run on.
pub struct Engines {
    pub store: Arc<dyn Store>,
    pub queues: Arc<dyn crate::transport::QueueEngine>,
    pub sql: Arc<dyn crate::sql::SqlEngine>,
    pub timeseries: Arc<dyn crate::timeseries::SeriesEngine>,
    /// Which providers live on which node (a cluster's; none embedded).
    pub mesh: Option<crate::mesh::cluster::Directory>,
}

/// The engines `config` names: embedded files under the data directory, or
/// the cluster's PostgreSQL.
pub async fn open_engines(config: &ServerConfig) -> Result<Engines> {
    let Some(url) = &config.store else {
        let dir = &config.data_dir;
        return Ok(Engines {
            store: Arc::new(SqliteStore::open(dir)?),
            queues: Arc::new(crate::transport::embedded::EmbeddedQueues::open(dir)?),
            sql: Arc::new(crate::sql::SqlDatabases::new(dir)),
            timeseries: Arc::new(crate::timeseries::TimeSeriesStore::new(dir)),
            mesh: None,
        });
    };
    let pg_config: tokio_postgres::Config = url.parse().map_err(|e| {
        Error::invalid_argument(format!(
            "bad store {}: {e}; use postgres://USER@HOST:PORT/DATABASE",
            redacted(url)
        ))
    })?;
    let tls = pg_tls(config.store_ca.as_deref())?;
    let in_store = |e: Error| Error {
        code: e.code,
        message: format!("store {}: {}", redacted(url), e.message),
    };
    let store = PostgresStore::open(pg_config.clone(), tls.clone())
        .await
        .map_err(in_store)?;
    let sql = crate::sql::postgres::PostgresSql::open(store.pool(), pg_config, tls, &store)
        .await
        .map_err(in_store)?;
    let queues = crate::transport::postgres::PostgresQueues::open(store.pool())
        .await
        .map_err(in_store)?;
    let timeseries = crate::timeseries::postgres::PostgresSeries::open(store.pool())
        .await
        .map_err(in_store)?;
    let mesh = crate::mesh::cluster::Directory::open(store.pool())
        .await
        .map_err(in_store)?;
    tracing::info!(store = %redacted(url), "metadata, transport queues, time series and mesh providers in PostgreSQL");
    Ok(Engines {
        store: Arc::new(store),
        queues: Arc::new(queues),
        sql: Arc::new(sql),
        timeseries: Arc::new(timeseries),
        mesh: Some(mesh),
    })
}

fn pg_tls(ca: Option<&Path>) -> Result<PgTls> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| {
            Error::invalid_argument(format!("cannot read store_ca {}: {e}", ca.display()))
        })?;
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate = certificate.map_err(|e| {
                Error::invalid_argument(format!("bad store_ca {}: {e}", ca.display()))
            })?;
            roots.add(certificate).map_err(|e| {
                Error::invalid_argument(format!("bad store_ca {}: {e}", ca.display()))
            })?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::internal(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
}

/// The bus `config` names; `local` delivers within the node either way.
pub async fn open_bus(config: &ServerConfig, local: LocalBus) -> Result<Arc<dyn Bus>> {
    let Some(url) = &config.bus else {
        return Ok(Arc::new(local));
    };
    let client = connect_nats(url, config.bus_ca.as_deref()).await?;
    tracing::info!(bus = %redacted(url), "messages between nodes over NATS");
    Ok(Arc::new(NatsBus::new(client, local)))
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(
            redacted("postgres://busbar:s3cret@db:5432/busbar?sslmode=require"),
            "postgres://busbar@db:5432/busbar?sslmode=require"
        );
        assert_eq!(redacted("nats://a:b@h:4222"), "nats://a@h:4222");
        assert_eq!(redacted("nats://h:4222"), "nats://h:4222");
        assert_eq!(
            redacted("postgres://u@h/db?password=s3cret&sslmode=require"),
            "postgres://u@h/db?sslmode=require"
        );
    }
}
