//! TLS material of a node: on first start a CA and a server certificate are
//! generated into `<data>/tls/`; the server certificate is re-issued (by the
//! same CA) when the set of names it must cover changes. The same CA issues
//! client certificates (mTLS), which the handshake checks against it.

use crate::config::ClientCerts;
use crate::error::{Error, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock};

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
pub fn ca_params() -> Result<CertificateParams> {
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

/// The node's CA as an issuer, from its key (its parameters are fixed).
fn ca_issuer(key_path: &Path) -> Result<Issuer<'static, KeyPair>> {
    let key_pem = std::fs::read_to_string(key_path).map_err(io("read", key_path))?;
    let key = KeyPair::from_pem(&key_pem).map_err(tls_error)?;
    Ok(Issuer::new(ca_params()?, key))
}

/// The SHA-256 of a certificate (DER): its fingerprint, as pinned by
/// clients and as the store and the revoked set know client certificates.
pub fn fingerprint(der: &[u8]) -> Vec<u8> {
    Sha256::digest(der).to_vec()
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

/// The name of the cluster's CA among the store's secrets.
const CLUSTER_CA_SECRET: &str = "tls.cluster-ca";

/// A new CA as `key PEM` NUL `certificate PEM` (empty if generation failed,
/// which the caller reports).
fn new_ca_secret() -> Vec<u8> {
    let make = || -> Result<Vec<u8>> {
        let key = KeyPair::generate().map_err(tls_error)?;
        let cert = ca_params()?.self_signed(&key).map_err(tls_error)?;
        Ok(format!("{}\0{}", key.serialize_pem(), cert.pem()).into_bytes())
    };
    make().unwrap_or_default()
}

/// Makes every node of a cluster use one CA, kept among the shared store's
/// secrets (the first node to start makes it): so one `ca_pem` in a client
/// config trusts every node, and a client certificate any node issued is
/// taken by all. Writes it into `<data_dir>/tls` for [`ensure`], which then
/// issues this node's server certificate from it.
pub async fn adopt_cluster_ca(data_dir: &Path, store: &dyn crate::store::Store) -> Result<()> {
    let secret = store.secret(CLUSTER_CA_SECRET, new_ca_secret).await?;
    let text = String::from_utf8(secret).unwrap_or_default();
    let Some((key_pem, ca_pem)) = text.split_once('\0') else {
        return Err(Error::internal(
            "the cluster's CA in the store is unreadable (or could not be generated)",
        ));
    };
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let ca_pem_path = dir.join("ca.pem");
    if std::fs::read_to_string(&ca_pem_path).ok().as_deref() != Some(ca_pem) {
        write_private(&dir.join("ca.key"), key_pem)?;
        std::fs::write(&ca_pem_path, ca_pem).map_err(io("write", &ca_pem_path))?;
        // A server certificate from another CA is issued again.
        let _ = std::fs::remove_file(dir.join("names.txt"));
    }
    Ok(())
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
        let issuer = ca_issuer(&ca_key_path)?;
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
        fingerprint: hex::encode(fingerprint(&der)),
    })
}

fn rustls_pemfile_first_cert(pem: &str) -> Result<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(|c| c.ok())
        .map(|c| c.to_vec())
        .ok_or_else(|| Error::internal("server.pem holds no certificate"))
}

/// SubjectPublicKeyInfo DER prefixes of the key kinds a client certificate
/// may hold; the key's bytes follow. Both are fixed-length encodings, so a
/// prefix and a length identify the algorithm without an ASN.1 parser.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The public key of a client certificate's holder, who keeps the private key.
struct HolderKey {
    raw: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
}

impl HolderKey {
    fn from_spki(der: &[u8]) -> Result<HolderKey> {
        if let Some(point) = der.strip_prefix(&P256_SPKI_PREFIX[..])
            && point.len() == 65
            && point[0] == 0x04
        {
            return Ok(HolderKey {
                raw: point.to_vec(),
                algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
            });
        }
        if let Some(key) = der.strip_prefix(&ED25519_SPKI_PREFIX[..])
            && key.len() == 32
        {
            return Ok(HolderKey {
                raw: key.to_vec(),
                algorithm: &rcgen::PKCS_ED25519,
            });
        }
        Err(Error::invalid_argument(
            "bad public_key: expected the DER SubjectPublicKeyInfo of an ECDSA P-256 (uncompressed) or Ed25519 key",
        ))
    }
}

impl rcgen::PublicKeyData for HolderKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

/// A client certificate just issued.
pub struct IssuedCertificate {
    pub pem: String,
    /// SHA-256 of the DER.
    pub fingerprint: Vec<u8>,
    pub serial: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// Longest validity of a client certificate, in days.
pub const MAX_CERTIFICATE_DAYS: u32 = 3650;
/// Validity when the request names none.
pub const DEFAULT_CERTIFICATE_DAYS: u32 = 90;

/// The node's CA as the issuer of client certificates (mTLS), and the
/// fingerprints of the revoked ones, which the TLS handshake refuses.
pub struct ClientCertificates {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
    roots: Arc<rustls::RootCertStore>,
    revoked: RwLock<HashSet<Vec<u8>>>,
}

impl std::fmt::Debug for ClientCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificates").finish_non_exhaustive()
    }
}

impl ClientCertificates {
    /// The CA of `material` (its key in `<data_dir>/tls`, made by
    /// [`ensure`]) and the revoked set as the store has it.
    pub async fn load(
        data_dir: &Path,
        material: &TlsMaterial,
        store: &dyn crate::store::Store,
    ) -> Result<ClientCertificates> {
        let issuer = ca_issuer(&data_dir.join("tls").join("ca.key"))?;
        let ca_pem = material.ca_pem.clone();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pemfile_first_cert(&ca_pem)?.into())
            .map_err(|e| Error::internal(format!("the node's CA certificate is unusable: {e}")))?;
        let certificates = ClientCertificates {
            issuer,
            ca_pem,
            roots: Arc::new(roots),
            revoked: RwLock::default(),
        };
        certificates.reload(store).await?;
        Ok(certificates)
    }

    /// Re-reads the revoked set (after an identity, and so its certificates, is revoked).
    pub async fn reload(&self, store: &dyn crate::store::Store) -> Result<()> {
        let revoked: HashSet<Vec<u8>> = store.revoked_certificates().await?.into_iter().collect();
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = revoked;
        Ok(())
    }

    /// Refuses this certificate in every handshake from now on.
    pub fn revoke(&self, fingerprint: Vec<u8>) {
        self.revoked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fingerprint);
    }

    fn is_revoked(&self, der: &[u8]) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&fingerprint(der))
    }

    /// Signs a client certificate for `name` over the holder's public key
    /// (DER SubjectPublicKeyInfo), valid from now for `days`.
    pub fn issue(&self, name: &str, public_key: &[u8], days: u32) -> Result<IssuedCertificate> {
        let days = if days == 0 {
            DEFAULT_CERTIFICATE_DAYS
        } else {
            days
        };
        if days > MAX_CERTIFICATE_DAYS {
            return Err(Error::invalid_argument(format!(
                "bad days {days}: a client certificate lives 1 to {MAX_CERTIFICATE_DAYS} days"
            )));
        }
        let key = HolderKey::from_spki(public_key)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Busbar");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let mut serial = crate::auth::random_bytes::<16>();
        serial[0] &= 0x7f; // positive, as X.509 wants
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        // A few minutes back, for clients whose clocks run a little behind.
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(days.into());
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| Error::internal(format!("signing the client certificate failed: {e}")))?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            fingerprint: fingerprint(cert.der()),
            serial: hex::encode(serial),
            created_ms: (now.unix_timestamp_nanos() / 1_000_000) as i64,
            expires_ms: (params.not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        })
    }
}

/// rustls's chain, date and usage checks against the node's CA, then the
/// revoked set: a revoked certificate fails the handshake with the
/// `certificate_revoked` alert, which clients report by name.
#[derive(Debug)]
struct ClientCertVerifier {
    chain: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    certificates: Arc<ClientCertificates>,
}

impl rustls::server::danger::ClientCertVerifier for ClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.chain.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.certificates.is_revoked(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The node's rustls config: its server certificate, h2, and client
/// certificates as `mode` says.
pub fn server_config(
    material: &TlsMaterial,
    mode: ClientCerts,
    certificates: &Arc<ClientCertificates>,
) -> Result<rustls::ServerConfig> {
    let setup = |e: &dyn std::fmt::Display| Error::internal(format!("TLS configuration: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(&e))?;
    let builder = if mode == ClientCerts::Off {
        builder.with_no_client_auth()
    } else {
        let chain = rustls::server::WebPkiClientVerifier::builder_with_provider(
            certificates.roots.clone(),
            provider,
        );
        let chain = if mode == ClientCerts::Optional {
            chain.allow_unauthenticated()
        } else {
            chain
        };
        builder.with_client_cert_verifier(Arc::new(ClientCertVerifier {
            chain: chain.build().map_err(|e| setup(&e))?,
            certificates: certificates.clone(),
        }))
    };
    let chain = CertificateDer::pem_slice_iter(material.cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| setup(&e))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes())
        .map_err(|e| setup(&e))?;
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| setup(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_keys_of_both_kinds_are_recognised_and_others_refused() {
        for algorithm in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(algorithm).unwrap();
            let holder =
                HolderKey::from_spki(&rcgen::PublicKeyData::subject_public_key_info(&key)).unwrap();
            assert_eq!(holder.raw, key.public_key_raw());
        }
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let p384 = rcgen::PublicKeyData::subject_public_key_info(&p384);
        for bad in [&p384[..], b"", &P256_SPKI_PREFIX[..]] {
            let err = HolderKey::from_spki(bad).err().expect("refused");
            assert!(
                err.message.contains("SubjectPublicKeyInfo"),
                "{}",
                err.message
            );
        }
    }
}
