//! The client config file: what `busbar serve` writes as `admin.json` and
//! `busbar identity new` writes for a new identity. One file holds the
//! address, how to trust the server and the credential.
//!
//! ```json
//! {
//!   "address": "https://127.0.0.1:7070",
//!   "addresses": ["https://127.0.0.1:7071"],
//!   "server_name": "localhost",
//!   "ca_pem": "-----BEGIN CERTIFICATE-----\n...",
//!   "server_fingerprint_sha256": "9f86d0...",
//!   "credential": {"kind": "password", "user": "admin", "password": "..."}
//! }
//! ```
//! Credentials: `{"kind": "password", "user", "password"}`,
//! `{"kind": "token", "token"}`, `{"kind": "key", "name", "private_key"}`
//! (standard base64 of the 32-byte Ed25519 seed) or
//! `{"kind": "certificate", "certificate_pem", "private_key_pem"}` (a client
//! certificate the node's CA issued, presented in the TLS handshake).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `https://host:port` (TLS) or `http://host:port` (plaintext).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// The nodes of a cluster, tried in turn: the client uses the first that
    /// answers and moves to the next when its connection is lost (after
    /// `address`, when both are given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Name to verify the server certificate against (default: the address's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM of the CA that signed the server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Hex SHA-256 of the server certificate; when set, only that certificate is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_fingerprint_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialConfig>,
    /// A client certificate presented in the TLS handshake without logging
    /// in with it, for nodes that require one (`--client-certs required`);
    /// the credential still picks the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificateConfig {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CredentialConfig {
    Password {
        user: String,
        password: String,
    },
    Token {
        token: String,
    },
    Key {
        name: String,
        private_key: String,
    },
    Certificate {
        certificate_pem: String,
        private_key_pem: String,
    },
}

impl ClientConfig {
    pub fn from_json(text: &str) -> Result<ClientConfig> {
        serde_json::from_str(text)
            .map_err(|e| Error::invalid_argument(format!("bad client config: {e}")))
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<ClientConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_argument(format!(
                "cannot read client config {}: {e}; `busbar serve` writes admin.json into its data directory",
                path.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::invalid_argument(format!("bad client config {}: {e}", path.display()))
        })
    }

    /// Writes the config readable by its owner only (it holds a credential).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        use std::io::Write;
        let path = path.as_ref();
        let text = serde_json::to_string_pretty(self).expect("config serializes") + "\n";
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| {
            Error::invalid_argument(format!("cannot create {}: {e}", path.display()))
        })?;
        file.write_all(text.as_bytes())
            .map_err(|e| Error::invalid_argument(format!("cannot write {}: {e}", path.display())))
    }
}
