//! The TLS of a client to Vault: the server verified with `tls.caCert` (or the system roots)
//! against `tls.serverName` when set ([`FixedServerName`]) or not at all with `skipVerify`, and
//! the client certificate of `auth.tls`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::error::{VaultError, conf_err};

/// Verifies the server certificate against a fixed name instead of the URL's host (`serverName`).
/// The SNI sent stays the URL's host (none for an IP address).
#[derive(Debug)]
struct FixedServerName {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The PEM certificates of `pem` (at least one), for `field`.
pub(super) fn parse_certs(
    pem: &[u8],
    field: &str,
) -> Result<Vec<CertificateDer<'static>>, VaultError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| conf_err(field, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(conf_err(field, "holds no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

/// What the TLS of a client to Vault is built from (`conf.fromCp.tls`, `auth.tls`).
pub(super) struct TlsSettings {
    /// `tls.caCert`; the system roots when `None`.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    pub skip_verify: bool,
    /// `tls.serverName`: verified instead of the URL's host.
    pub server_name: Option<ServerName<'static>>,
    /// The client certificate and key of `auth.tls`.
    pub client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

/// The rustls configuration of a client to Vault (HTTP/1.1 only).
pub(super) fn rustls_config(tls: TlsSettings) -> Result<rustls::ClientConfig, VaultError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| conf_err("fromCp.tls", e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.skip_verify {
        crate::tls::SkipVerify::new()
    } else if let Some(ca) = tls.ca {
        let mut roots = rustls::RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| {
                conf_err(
                    "fromCp.tls.caCert",
                    format!("not a usable CA certificate: {e}"),
                )
            })?;
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| conf_err("fromCp.tls.caCert", e.to_string()))?
    } else {
        Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone())
                .map_err(|e| conf_err("fromCp.tls", format!("no system trust store: {e}")))?,
        )
    };
    let verifier: Arc<dyn ServerCertVerifier> = match tls.server_name {
        Some(name) if !tls.skip_verify => Arc::new(FixedServerName {
            inner: verifier,
            name,
        }),
        _ => verifier,
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match tls.client {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
            conf_err(
                "fromCp.auth.tls",
                format!("clientCert and clientKey do not form a usable pair: {e}"),
            )
        })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
