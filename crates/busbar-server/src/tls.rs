//! TLS material of a node: on first start a CA and a server certificate are
//! generated into `<data>/tls/`; the server certificate is re-issued (by the
//! same CA) when the set of names it must cover changes.

use crate::error::{Error, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use sha2::{Digest, Sha256};
use std::path::Path;

/// What a node serves with and what its clients need to trust it.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Hex SHA-256 of the server certificate (DER), for pinning.
    pub fingerprint: String,
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let message = format!("cannot {what} {}", path.display());
    move |e| Error::internal(format!("{message}: {e}"))
}

fn tls_error(e: rcgen::Error) -> Error {
    Error::internal(format!("generating TLS material failed: {e}"))
}

/// CA parameters are fixed, so the issuer can be rebuilt from the stored key.
fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Busbar");
    params
        .distinguished_name
        .push(DnType::CommonName, "Busbar node CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

pub(crate) fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io("write", path))?;
    file.write_all(contents.as_bytes())
        .map_err(io("write", path))?;
    file.sync_all().map_err(io("sync", path))
}

/// Loads or creates the node's TLS material in `<data_dir>/tls`.
pub fn ensure(data_dir: &Path, hostnames: &[String]) -> Result<TlsMaterial> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let (ca_pem_path, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert_path, key_path, names_path) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("names.txt"),
    );

    if !ca_key_path.exists() {
        let key = KeyPair::generate().map_err(tls_error)?;
        let cert = ca_params()?.self_signed(&key).map_err(tls_error)?;
        write_private(&ca_key_path, &key.serialize_pem())?;
        std::fs::write(&ca_pem_path, cert.pem()).map_err(io("write", &ca_pem_path))?;
        let _ = std::fs::remove_file(&names_path);
    }
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(io("read", &ca_pem_path))?;

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for host in hostnames {
        if !names.contains(host) {
            names.push(host.clone());
        }
    }
    let wanted = names.join("\n");
    let current = std::fs::read_to_string(&names_path).unwrap_or_default();
    if current != wanted || !cert_path.exists() || !key_path.exists() {
        let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io("read", &ca_key_path))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(tls_error)?;
        let issuer = Issuer::new(ca_params()?, ca_key);
        let key = KeyPair::generate().map_err(tls_error)?;
        let mut params = CertificateParams::new(names.clone()).map_err(tls_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "busbar node");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer).map_err(tls_error)?;
        write_private(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, cert.pem()).map_err(io("write", &cert_path))?;
        std::fs::write(&names_path, &wanted).map_err(io("write", &names_path))?;
    }
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
    let key_pem = std::fs::read_to_string(&key_path).map_err(io("read", &key_path))?;
    let der = rustls_pemfile_first_cert(&cert_pem)?;
    Ok(TlsMaterial {
        ca_pem,
        cert_pem,
        key_pem,
        fingerprint: hex::encode(Sha256::digest(der)),
    })
}

fn rustls_pemfile_first_cert(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(|c| c.ok())
        .map(|c| c.to_vec())
        .ok_or_else(|| Error::internal("server.pem holds no certificate"))
}
