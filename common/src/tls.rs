//! Self-generated TLS identities for the control planes' gRPC listeners (global's sync server,
//! a zone's proxy identity service): on first start a private CA and a server certificate for
//! localhost, 127.0.0.1 and ::1 are generated and kept in a folder of the data directory (keys
//! mode 0600), and the CA is written beside it for clients to trust. Later starts load them.

use std::path::Path;

use crate::file::write_atomic;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// PEM certificate chain and key to serve. `Debug` never shows the key.
pub struct TlsMaterial {
    pub cert_chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

/// Where and under which names an identity is generated.
pub struct GeneratedIdentity<'a> {
    /// Folder below the data directory holding ca.pem, cert.pem and key.pem.
    pub dir: &'a str,
    /// File in the data directory where the CA is written for clients (e.g. `kds-ca.pem`).
    pub ca_file: &'a str,
    pub ca_common_name: &'a str,
    pub server_common_name: &'a str,
    /// The client flag that takes the CA file (`--global-ca-file`), named in the log line said
    /// when the identity is generated.
    pub clients_flag: &'a str,
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Loads the generated identity from `data_dir`, creating it on first start. Returns the
/// material and whether it was generated now.
pub fn load_or_generate(
    data_dir: &Path,
    names: &GeneratedIdentity<'_>,
) -> std::io::Result<(TlsMaterial, bool)> {
    let dir = data_dir.join(names.dir);
    let ca_file = data_dir.join(names.ca_file);
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    if let (Ok(ca), Ok(cert), Ok(key)) = (
        std::fs::read_to_string(&ca_path),
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        // Keep the clients' CA file in place even if someone removed it.
        if std::fs::read_to_string(&ca_file).ok().as_deref() != Some(ca.as_str()) {
            write_atomic(&ca_file, ca.as_bytes(), 0o600)?;
        }
        let material = TlsMaterial {
            cert_chain_pem: format!("{cert}{ca}"),
            key_pem: key,
        };
        return Ok((material, false));
    }
    crate::file::private_dir(&dir)?;
    let now = crate::clock::now_utc();

    let ca_key = KeyPair::generate().map_err(other)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.ca_common_name);
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - time::Duration::minutes(5);
    ca_params.not_after = now + time::Duration::days(3650);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(other)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().map_err(other)?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(other)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.server_common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.signed_by(&key, &issuer).map_err(other)?;

    let (ca_pem, cert_pem, key_pem) = (ca_cert.pem(), cert.pem(), key.serialize_pem());
    write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert_pem.as_bytes(), 0o600)?;
    // The CA last: its presence marks a complete identity.
    write_atomic(&ca_path, ca_pem.as_bytes(), 0o600)?;
    write_atomic(&ca_file, ca_pem.as_bytes(), 0o600)?;
    let material = TlsMaterial {
        cert_chain_pem: format!("{cert_pem}{ca_pem}"),
        key_pem,
    };
    tracing::info!(
        ca = %ca_file.display(),
        "generated a certificate for {} (localhost, 127.0.0.1, ::1); give clients the CA file as {}",
        names.server_common_name,
        names.clients_flag
    );
    Ok((material, true))
}

/// Accepts any server certificate (an operator's explicit skip-verify: `skipVerify: true` of a
/// vault backend, `--insecure-skip-verify`), still checking the handshake signatures so the TLS
/// session itself is sound.
#[derive(Debug)]
pub struct SkipVerify(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl SkipVerify {
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        )))
    }
}

impl rustls::client::danger::ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_is_kept_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let names = GeneratedIdentity {
            dir: "x-tls",
            ca_file: "x-ca.pem",
            ca_common_name: "test CA",
            server_common_name: "test",
            clients_flag: "--ca-file",
        };
        let dir = tempfile::tempdir().unwrap();
        let (a, fresh) = load_or_generate(dir.path(), &names).unwrap();
        assert!(fresh);
        let ca = std::fs::read_to_string(dir.path().join("x-ca.pem")).unwrap();
        assert!(a.cert_chain_pem.ends_with(&ca));
        std::fs::remove_file(dir.path().join("x-ca.pem")).unwrap();
        let (b, fresh) = load_or_generate(dir.path(), &names).unwrap();
        assert!(!fresh);
        assert_eq!(a.cert_chain_pem, b.cert_chain_pem);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x-ca.pem")).unwrap(),
            ca
        );
        let mode = std::fs::metadata(dir.path().join("x-tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }
}
