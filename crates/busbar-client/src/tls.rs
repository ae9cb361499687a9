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

/// A client certificate and its private key, both PEM (what `busbar
/// identity new NAME --cert` writes), presented in the TLS handshake.
#[derive(Clone)]
pub struct ClientCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

impl ClientCertificate {
    fn chain_and_key(
        &self,
    ) -> Result<(
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )> {
        let chain = CertificateDer::pem_slice_iter(self.certificate_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid_argument(format!("bad client certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(Error::invalid_argument(
                "the client certificate PEM holds no certificate",
            ));
        }
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.private_key_pem.as_bytes())
            .map_err(|e| Error::invalid_argument(format!("bad client private key PEM: {e}")))?;
        Ok((chain, key))
    }
}

/// A client certificate just issued, with the private key made for it.
#[derive(Clone)]
pub struct NewCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
    /// The node's CA: trust it to reach the node.
    pub ca_pem: String,
    pub info: busbar_proto::v1::CertificateInfo,
}

impl std::fmt::Debug for NewCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCertificate")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// A new ECDSA P-256 key pair for a client certificate: the public key as
/// DER SubjectPublicKeyInfo (what the node signs over) and the private key
/// as PKCS#8 PEM.
pub(crate) fn client_key_pair() -> Result<(Vec<u8>, String)> {
    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::generate().map_err(|e| {
        Error::new(
            crate::ErrorCode::Internal,
            format!("generating a key pair failed: {e}"),
        )
    })?;
    Ok((key.subject_public_key_info(), key.serialize_pem()))
}

/// A rustls client config trusting `ca_pem` and/or the pinned fingerprint,
/// presenting `certificate` when given, speaking h2.
pub(crate) fn client_config(
    ca_pem: Option<&str>,
    fingerprint: Option<&str>,
    certificate: Option<&ClientCertificate>,
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
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid_argument(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match certificate {
        Some(certificate) => {
            let (chain, key) = certificate.chain_and_key()?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::invalid_argument(format!(
                    "the client certificate and private key do not go together: {e}"
                ))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS stream with the node's first bytes read ahead. In TLS 1.3 the node
/// checks a client certificate (or its absence, when it requires one) after
/// the client has finished its side of the handshake, so a refusal arrives
/// as an alert on the first read. Read here, it fails the connect with the
/// alert (which names the reason: revoked, expired, unknown CA, required)
/// as a typed error; read by HTTP/2 instead, it would arrive as text, or be
/// lost to the reset that answers the client's first write. The cost is
/// that the client's HTTP/2 preface waits for the node's settings, which
/// the node sends as soon as it has accepted the handshake.
pub(crate) struct ReadAhead<S> {
    first: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> ReadAhead<S> {
    /// Waits for the node's first bytes (its HTTP/2 settings, sent once it
    /// has accepted the handshake).
    pub(crate) async fn first_bytes(mut inner: S) -> std::io::Result<ReadAhead<S>> {
        use tokio::io::AsyncReadExt;
        let mut first = vec![0; 16 * 1024];
        let read = inner.read(&mut first).await?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the node closed the connection right after the TLS handshake",
            ));
        }
        first.truncate(read);
        Ok(ReadAhead {
            first,
            at: 0,
            inner,
        })
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.first.len() {
            let take = buf.remaining().min(this.first.len() - this.at);
            buf.put_slice(&this.first[this.at..this.at + take]);
            this.at += take;
            if this.at == this.first.len() {
                this.first = Vec::new();
                this.at = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
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
