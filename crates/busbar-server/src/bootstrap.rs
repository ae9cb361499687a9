//! First start: the admin identity and `admin.json`, the client config every
//! SDK loads in one call. The file is rewritten at each start with the
//! node's current address and TLS material; its credential is kept.

use crate::auth::Authenticator;
use crate::error::{Error, Result};
use crate::store::{CertificateRecord, NewResource, Store};
use crate::tls::{ClientCertificates, TlsMaterial, write_private};
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
/// Whether a `client_certificate` section of admin.json holds a
/// certificate the store knows as neither revoked nor expired.
async fn still_live(auth: &Authenticator, section: &serde_json::Value) -> bool {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let Some(pem) = section.get("certificate_pem").and_then(|p| p.as_str()) else {
        return false;
    };
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(pem.as_bytes()).next() else {
        return false;
    };
    let fingerprint = hex::encode(crate::tls::fingerprint(&der));
    auth.live_certificate(&fingerprint).await.is_ok()
}

/// A client certificate for the admin, so admin.json can connect to a node
/// that requires one (`client_certs = "required"`); the admin still logs
/// in with its password. Issued for a year; a new one replaces it at the
/// next start once it has expired or been revoked.
async fn admin_transport_certificate(
    store: &dyn Store,
    certificates: &ClientCertificates,
) -> Result<serde_json::Value> {
    use rcgen::PublicKeyData;
    let admin = store
        .identity_by_name(ADMIN_NAME)
        .await?
        .ok_or_else(|| Error::internal("the admin identity is missing"))?;
    let key = rcgen::KeyPair::generate()
        .map_err(|e| Error::internal(format!("generating the admin's key failed: {e}")))?;
    let issued = certificates.issue(ADMIN_NAME, &key.subject_public_key_info(), 365)?;
    store
        .create_certificate(CertificateRecord {
            fingerprint: issued.fingerprint,
            identity_id: admin.id,
            serial: issued.serial,
            created_ms: issued.created_ms,
            expires_ms: issued.expires_ms,
            revoked: false,
        })
        .await?;
    Ok(serde_json::json!({
        "certificate_pem": issued.pem,
        "private_key_pem": key.serialize_pem(),
    }))
}

/// Creates the folders the node keeps (`/services`, where provided services
/// live, and `/transport`, where transport sessions do), owned by the
/// admin, when they are missing. A resource of another kind already there
/// is left alone, with a warning.
pub async fn ensure_folders(store: &dyn Store) -> Result<()> {
    use crate::store::ResourceKind::Folder;
    for folder in [
        crate::mesh::files::SERVICES_FOLDER,
        crate::transport::TRANSPORT_FOLDER,
    ] {
        match store.resource(folder).await? {
            None => {
                store
                    .create_resource(NewResource::new(folder, Folder, ADMIN_NAME))
                    .await?;
            }
            Some(record) if record.kind != Folder => {
                tracing::warn!(
                    "{folder} is a {:?}, not a folder: what lives there cannot be made until it is moved away",
                    record.kind
                );
            }
            Some(_) => {}
        }
    }
    Ok(())
}

pub async fn ensure_admin(
    data_dir: &Path,
    store: &dyn Store,
    auth: &Authenticator,
    address: &str,
    tls: Option<&TlsMaterial>,
    transport_certificate: Option<&ClientCertificates>,
    shared_store: bool,
) -> Result<std::path::PathBuf> {
    let path = data_dir.join("admin.json");
    let existing: Option<serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let mut credential = existing
        .as_ref()
        .and_then(|config| config.get("credential").cloned());

    let admin = store.identity_by_name(ADMIN_NAME).await?;
    if shared_store && admin.is_some() && credential.is_none() {
        // A cluster's admin was made by the node that started first; its
        // operator holds the password, which another node must not reset.
        tracing::info!(path = %path.display(), "the cluster's admin exists: this node's admin.json names no credential (use the first node's, or busbar user passwd)");
    } else if admin.is_none() || credential.is_none() {
        // Either the first start, or admin.json was lost: whoever can read the
        // data directory is the node's operator, so a new password is issued.
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(crate::auth::random_bytes::<24>());
        match admin {
            None => {
                auth.create_user(ADMIN_NAME, &password, true, None).await?;
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
        // A cluster's nodes each have their own certificate from the one CA:
        // pinning this node's would keep a client from moving to another.
        if !shared_store {
            config["server_fingerprint_sha256"] = tls.fingerprint.clone().into();
        }
    }
    if let Some(certificates) = transport_certificate {
        let kept = existing
            .as_ref()
            .and_then(|config| config.get("client_certificate").cloned());
        config["client_certificate"] = match kept {
            Some(kept) if still_live(auth, &kept).await => kept,
            _ => admin_transport_certificate(store, certificates).await?,
        };
    }
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::internal(format!("cannot encode admin.json: {e}")))?;
    write_private(&path, &(text + "\n"))?;
    Ok(path)
}
