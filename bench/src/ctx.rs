//! What every scenario needs: the running systems and how to connect to them.

use crate::procs::Result;
use busbar_client::{Client, ClientConfig, ConnectOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Ctx {
    pub quick: bool,
    /// The Busbar node's admin.json (address, CA, fingerprint).
    pub busbar_config: ClientConfig,
    /// An API token of the admin: load clients log in with it (one SHA-256
    /// check per connection instead of an argon2 password hash).
    pub busbar_token: String,
    /// The admin client (setup only).
    pub admin: Client,
    pub tls: crate::tls::Files,
    pub tonic_address: String,
    /// NATS URL, when nats-server runs.
    pub nats_url: Option<String>,
    /// Why the NATS rows are missing, when they are.
    pub nats_skipped: Option<String>,
    pub nats_binary: Option<PathBuf>,
    pub busbar_binary: PathBuf,
    /// The Busbar node's process, for its CPU time.
    pub busbar_pid: u32,
    pub work_dir: PathBuf,
    /// The origin of the timestamps embedded in payloads.
    pub base: Instant,
}

impl Ctx {
    /// A new Busbar connection (TLS, HTTP/2) logged in with the token.
    pub async fn busbar_client(&self) -> Result<Client> {
        Ok(ConnectOptions::from_config(&self.busbar_config)?
            .token(self.busbar_token.clone())
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await?)
    }

    pub async fn nats_client(&self) -> Result<Option<async_nats::Client>> {
        match &self.nats_url {
            Some(url) => Ok(Some(crate::peers::nats_connect(url, &self.tls.ca).await?)),
            None => Ok(None),
        }
    }

    /// Scales a duration for quick runs.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}
