//! TLS for the client: trust a given CA, or pin the server certificate's
//! SHA-256 fingerprint, or both. rustls with the ring provider.

use crate::error::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Checks the chain against the CA (when given) and the leaf against the pin (when given).
#[derive(Debug)]
struct BusbarVerifier {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    pin: Option<Vec<u8>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for BusbarVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = &self.pin
            && Sha256::digest(end_entity.as_ref()).as_slice() != pin.as_slice()
        {
            return Err(rustls::Error::General(
                "the server certificate does not match the pinned fingerprint (server_fingerprint_sha256); \
                 the node's certificate changed or this is another server"
                    .into(),
            ));
        }
        match &self.chain {
            Some(chain) => {
                chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// ring's provider with AES-128-GCM offered first. rustls offers AES-256-GCM
/// first and a node (rustls too) takes the client's order, so every byte
/// would pay 14 AES rounds instead of 10: on the benchmark machine a 1 M-point
/// read spends a tenth of its CPU in AES-GCM. AES-128-GCM is what BoringSSL
/// (grpcio, Chrome) and Go prefer on hardware with AES instructions, and
/// both stay offered, as does ChaCha20-Poly1305.
fn provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    let aes_128 = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != aes_128.suite());
    provider
}

/// A rustls client config trusting `ca_pem` and/or the pinned fingerprint, speaking h2.
pub(crate) fn client_config(
    ca_pem: Option<&str>,
    fingerprint: Option<&str>,
) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(provider());
    let chain = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert
                    .map_err(|e| Error::invalid_argument(format!("bad CA certificate PEM: {e}")))?;
                roots.add(cert).map_err(|e| {
                    Error::invalid_argument(format!("unusable CA certificate: {e}"))
                })?;
            }
            if roots.is_empty() {
                return Err(Error::invalid_argument("the CA PEM holds no certificate"));
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| Error::invalid_argument(format!("unusable CA: {e}")))?;
            Some(verifier)
        }
        None => None,
    };
    let pin = match fingerprint {
        Some(hex_text) => {
            let bytes = hex::decode(hex_text.trim().replace(':', ""))
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    Error::invalid_argument(
                        "bad server fingerprint: expected 64 hex digits of SHA-256",
                    )
                })?;
            Some(bytes)
        }
        None => None,
    };
    if chain.is_none() && pin.is_none() {
        return Err(Error::invalid_argument(
            "TLS needs a CA certificate (ca_pem) or a pinned server fingerprint; both are in admin.json",
        ));
    }
    let verifier = Arc::new(BusbarVerifier {
        chain,
        pin,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid_argument(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite;

    #[test]
    fn offers_aes_128_gcm_first_and_keeps_every_suite() {
        let suites: Vec<CipherSuite> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], CipherSuite::TLS13_AES_128_GCM_SHA256);
        let default = rustls::crypto::ring::default_provider().cipher_suites;
        assert_eq!(suites.len(), default.len());
        assert!(default.iter().all(|s| suites.contains(&s.suite())));
    }
}
