//! First start: the admin identity and `admin.json`, the client config every
//! SDK loads in one call. The file is rewritten at each start with the
//! node's current address and TLS material; its credential is kept.

use crate::auth::Authenticator;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::tls::{TlsMaterial, write_private};
use base64::Engine;
use std::net::SocketAddr;
use std::path::Path;

pub const ADMIN_NAME: &str = "admin";

/// The address clients should dial for a listener bound to `bound`
/// (a wildcard address becomes loopback).
pub fn dial_address(bound: SocketAddr, tls: bool) -> String {
    let ip = match bound.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".parse().expect("valid"),
        ip if ip.is_unspecified() => "::1".parse().expect("valid"),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, bound.port()))
}

/// Makes sure the admin identity exists and `admin.json` can log in as it.
pub async fn ensure_admin(
    data_dir: &Path,
    store: &dyn Store,
    auth: &Authenticator,
    address: &str,
    tls: Option<&TlsMaterial>,
) -> Result<std::path::PathBuf> {
    let path = data_dir.join("admin.json");
    let existing: Option<serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let mut credential = existing
        .as_ref()
        .and_then(|config| config.get("credential").cloned());

    let admin = store.identity_by_name(ADMIN_NAME).await?;
    if admin.is_none() || credential.is_none() {
        // Either the first start, or admin.json was lost: whoever can read the
        // data directory is the node's operator, so a new password is issued.
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(crate::auth::random_bytes::<24>());
        match admin {
            None => {
                auth.create_user(ADMIN_NAME, &password, true).await?;
            }
            Some(_) => {
                tracing::warn!(path = %path.display(), "admin.json was missing; issued a new admin password");
                auth.set_password(ADMIN_NAME, &password).await?;
            }
        }
        credential = Some(serde_json::json!({
            "kind": "password",
            "user": ADMIN_NAME,
            "password": password,
        }));
    }

    let mut config = serde_json::json!({
        "address": address,
        "credential": credential,
    });
    if let Some(tls) = tls {
        config["server_name"] = "localhost".into();
        config["ca_pem"] = tls.ca_pem.clone().into();
        config["server_fingerprint_sha256"] = tls.fingerprint.clone().into();
    }
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::internal(format!("cannot encode admin.json: {e}")))?;
    write_private(&path, &(text + "\n"))?;
    Ok(path)
}
