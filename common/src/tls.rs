//! TLS identities of the control planes' listeners (global's sync server and HTTPS API, a zone's
//! proxy identity service) and the rustls server configuration made from them.
//!
//! Generated identities: on first start a private CA and a server certificate for localhost,
//! 127.0.0.1, ::1 and the listener's own names are generated and kept in a folder of the data
//! directory (keys mode 0600, the CA's key beside it), and the CA is written beside the folder for
//! clients to trust. Later starts load them; when the server certificate no longer fits (a name
//! added, another CA, expired, a key that is not its own) a new one is issued from the same CA, so
//! the file clients trust never changes. Identities made before the CA key was kept are loaded as
//! they are.
//!
//! Operators' identities: PEM files given with a certificate and key flag pair, parsed and matched
//! at start ([`load_files`]) so that a wrong pair is a clear start-up error naming the flags.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use crate::file::write_atomic;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PEM certificate chain and key to serve. `Debug` never shows the key.
#[derive(Clone)]
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
    /// Folder below the data directory holding ca.pem, ca-key.pem, cert.pem and key.pem.
    pub dir: &'a str,
    /// File in the data directory where the CA is written for clients (e.g. `kds-ca.pem`).
    pub ca_file: &'a str,
    pub ca_common_name: &'a str,
    pub server_common_name: &'a str,
    /// The client flag that takes the CA file (`--global-ca-file`), named in the log line said
    /// when the identity is generated.
    pub clients_flag: &'a str,
    /// Names the server certificate carries besides localhost, 127.0.0.1 and ::1: DNS names or
    /// IP addresses (`name:port` and `[v6]:port` are taken without the port; unspecified
    /// addresses such as 0.0.0.0 are left out).
    pub extra_names: &'a [String],
}

/// The names every generated server certificate carries.
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Files of a generated identity's folder.
pub const CA_PEM: &str = "ca.pem";
pub const CA_KEY_PEM: &str = "ca-key.pem";
pub const CERT_PEM: &str = "cert.pem";
pub const KEY_PEM: &str = "key.pem";

/// Lifetime of generated CAs and server certificates.
const GENERATED_LIFETIME_DAYS: i64 = 3650;

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// A name as a certificate holds it: an IP address in its canonical form, or a lower-case DNS
/// name; `None` for what no certificate should name (empty, an unspecified address).
fn san_name(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Ok(sa) = raw.parse::<std::net::SocketAddr>() {
        sa.ip().to_string()
    } else if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or("").to_string()
    } else {
        match raw.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':')
                    && !port.is_empty()
                    && port.chars().all(|c| c.is_ascii_digit()) =>
            {
                name.to_string()
            }
            _ => raw.to_string(),
        }
    };
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => None,
        Ok(ip) => Some(ip.to_string()),
        Err(_) if host.is_empty() => None,
        Err(_) => Some(host.to_ascii_lowercase()),
    }
}

/// The names a generated server certificate must carry: the loopback ones, then `extra`, each
/// once.
pub fn wanted_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = LOOPBACK_NAMES.iter().map(|s| s.to_string()).collect();
    for n in extra.iter().filter_map(|n| san_name(n)) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// The DNS and IP subject alternative names of the first certificate of `pem_text`, as
/// [`san_name`] writes them.
pub fn certificate_names(pem_text: &str) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer;
    let ders = crate::x509::pem_to_ders(pem_text).map_err(|e| e.to_string())?;
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(&ders[0]).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).map(IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*b).map(IpAddr::from).ok(),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(names)
}

/// A new private CA: (certificate PEM, key PEM).
fn generate_ca(names: &GeneratedIdentity<'_>) -> std::io::Result<(String, String)> {
    let now = crate::clock::now_utc();
    let ca_key = KeyPair::generate().map_err(other)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.ca_common_name);
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - time::Duration::minutes(5);
    ca_params.not_after = now + time::Duration::days(GENERATED_LIFETIME_DAYS);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(other)?;
    Ok((ca_cert.pem(), ca_key.serialize_pem()))
}

/// A server certificate for `wanted`, signed by the CA: (certificate PEM, key PEM).
fn issue_server_cert(
    ca_pem: &str,
    ca_key_pem: &str,
    names: &GeneratedIdentity<'_>,
    wanted: &[String],
) -> std::io::Result<(String, String)> {
    let now = crate::clock::now_utc();
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(other)?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(other)?;
    let key = KeyPair::generate().map_err(other)?;
    let mut params = CertificateParams::new(wanted.to_vec()).map_err(|e| {
        other(format!(
            "cannot put the names {wanted:?} in a certificate: {e}"
        ))
    })?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.server_common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(GENERATED_LIFETIME_DAYS);
    let cert = params.signed_by(&key, &issuer).map_err(other)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Why a kept server certificate cannot be served as it is, or `None` when it can: its key, its
/// CA (and validity now), its names.
fn server_cert_problem(cert: &str, key: &str, ca: &str, wanted: &[String]) -> Option<String> {
    if !crate::x509::private_key_matches_cert(cert, key) {
        return Some("its key is not the certificate's".into());
    }
    if let Err(e) = crate::x509::verify_chain_pem(cert, &[], &[ca]) {
        return Some(format!("it does not verify with the CA: {e}"));
    }
    let held = match certificate_names(cert) {
        Ok(h) => h,
        Err(e) => return Some(format!("its names cannot be read: {e}")),
    };
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|w| !held.contains(w))
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| format!("it does not name {}", missing.join(", ")))
}

/// Loads the generated identity from `data_dir`, creating it on first start and issuing a new
/// server certificate from the kept CA when the one on disk does not fit (see the module's
/// documentation). Returns the material and whether the CA was generated now.
pub fn load_or_generate(
    data_dir: &Path,
    names: &GeneratedIdentity<'_>,
) -> std::io::Result<(TlsMaterial, bool)> {
    let dir = data_dir.join(names.dir);
    let ca_file = data_dir.join(names.ca_file);
    let (ca_path, ca_key_path, cert_path, key_path) = (
        dir.join(CA_PEM),
        dir.join(CA_KEY_PEM),
        dir.join(CERT_PEM),
        dir.join(KEY_PEM),
    );
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let wanted = wanted_names(names.extra_names);
    crate::file::private_dir(&dir)?;

    let new_ca = || -> std::io::Result<(String, Option<String>)> {
        let (ca, key) = generate_ca(names)?;
        // The key first: the CA's presence marks a complete CA.
        write_atomic(&ca_key_path, key.as_bytes(), 0o600)?;
        write_atomic(&ca_path, ca.as_bytes(), 0o600)?;
        Ok((ca, Some(key)))
    };
    let mut fresh = false;
    let (mut ca, mut ca_key) = match read(&ca_path) {
        Some(ca) => {
            let key = read(&ca_key_path);
            let usable = key
                .clone()
                .filter(|k| crate::x509::private_key_matches_cert(&ca, k));
            if key.is_some() && usable.is_none() {
                tracing::warn!(
                    file = %ca_key_path.display(),
                    "the kept CA key is not the key of {}: ignored", ca_path.display()
                );
            }
            (ca, usable)
        }
        None => {
            fresh = true;
            new_ca()?
        }
    };
    let kept = match (read(&cert_path), read(&key_path)) {
        (Some(c), Some(k)) => Some((c, k)),
        _ => None,
    };
    let checked = match kept {
        Some((c, k)) => match server_cert_problem(&c, &k, &ca, &wanted) {
            None => Ok((c, k)),
            Some(why) => Err((Some((c, k)), why)),
        },
        None => Err((None, "there is none".to_string())),
    };
    let (cert, key) = match checked {
        Ok(leaf) => leaf,
        Err((Some(leaf), why)) if ca_key.is_none() => {
            // Made before the CA key was kept: served as it is.
            tracing::warn!(
                cert = %cert_path.display(),
                "the generated certificate of {} cannot be served as wanted ({why}) and its CA key was not kept: served as it is",
                names.server_common_name
            );
            leaf
        }
        Err((_, why)) => {
            if ca_key.is_none() {
                // Neither a certificate nor the CA's key: everything anew.
                fresh = true;
                (ca, ca_key) = new_ca()?;
            }
            let ca_key_pem = ca_key.as_deref().unwrap_or_default();
            let (cert, key) = issue_server_cert(&ca, ca_key_pem, names, &wanted)?;
            write_atomic(&key_path, key.as_bytes(), 0o600)?;
            write_atomic(&cert_path, cert.as_bytes(), 0o600)?;
            if !fresh {
                tracing::info!(
                    cert = %cert_path.display(), names = %wanted.join(", "),
                    "issued a new certificate for {} from its kept CA: the previous one could not be served ({why})",
                    names.server_common_name
                );
            }
            (cert, key)
        }
    };
    // Keep the clients' CA file in place even if someone removed or changed it.
    if read(&ca_file).as_deref() != Some(ca.as_str()) {
        write_atomic(&ca_file, ca.as_bytes(), 0o600)?;
    }
    if fresh {
        tracing::info!(
            ca = %ca_file.display(),
            "generated a certificate for {} ({}); give clients the CA file as {}",
            names.server_common_name,
            wanted.join(", "),
            names.clients_flag
        );
    }
    let material = TlsMaterial {
        cert_chain_pem: format!("{cert}{ca}"),
        key_pem: key,
    };
    Ok((material, fresh))
}

/// Why an operator's certificate and key cannot be served. Every message names the flags and
/// files; none quotes key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {path}: {source}")]
    Read {
        flag: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {path}: {reason}")]
    Parse {
        flag: String,
        path: String,
        reason: String,
    },
    #[error("{cert_flag} {cert} and {key_flag} {key} cannot be served together: {reason}")]
    Mismatch {
        cert_flag: String,
        cert: String,
        key_flag: String,
        key: String,
        reason: String,
    },
}

/// An operator's certificate (chain) and key files, with the flags that named them.
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub cert_flag: &'a str,
    pub key_flag: &'a str,
}

fn chain_from_pem(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate chain ({e})"))?;
    if certs.is_empty() {
        return Err("holds no PEM CERTIFICATE block".into());
    }
    for (i, der) in certs.iter().enumerate() {
        crate::x509::summarize_der(der).map_err(|e| {
            format!(
                "certificate {} of the file is not a valid X.509 certificate ({e})",
                i + 1
            )
        })?;
    }
    Ok(certs)
}

fn key_from_pem(text: &str) -> Result<PrivateKeyDer<'static>, String> {
    // The parser's own messages are not quoted: they could echo the file's bytes.
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|_| {
        "holds no readable PEM private key (PKCS#8 PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)"
            .to_string()
    })
}

/// Reads an operator's certificate and key and checks that they can be served together (both
/// parse, the key is the certificate's, the key type is supported). A certificate outside its
/// validity period is served, with a warning.
pub fn load_files(files: &TlsFiles<'_>) -> Result<TlsMaterial, TlsError> {
    let read = |flag: &str, path: &Path| {
        std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            flag: flag.to_string(),
            path: path.display().to_string(),
            source,
        })
    };
    let material = TlsMaterial {
        cert_chain_pem: read(files.cert_flag, files.cert)?,
        key_pem: read(files.key_flag, files.key)?,
    };
    let chain = chain_from_pem(&material.cert_chain_pem).map_err(|reason| TlsError::Parse {
        flag: files.cert_flag.to_string(),
        path: files.cert.display().to_string(),
        reason,
    })?;
    key_from_pem(&material.key_pem).map_err(|reason| TlsError::Parse {
        flag: files.key_flag.to_string(),
        path: files.key.display().to_string(),
        reason,
    })?;
    server_config(&material, &[]).map_err(|reason| TlsError::Mismatch {
        cert_flag: files.cert_flag.to_string(),
        cert: files.cert.display().to_string(),
        key_flag: files.key_flag.to_string(),
        key: files.key.display().to_string(),
        reason,
    })?;
    if let Ok(leaf) = crate::x509::summarize_der(&chain[0]) {
        let now = crate::clock::now_ms() / 1000;
        if now < leaf.not_before || now > leaf.not_after {
            tracing::warn!(
                cert = %files.cert.display(),
                "the certificate of {} is not valid now: clients will refuse it",
                files.cert_flag
            );
        }
    }
    Ok(material)
}

/// A rustls server configuration (aws-lc-rs, TLS 1.2 and 1.3) serving `material`, offering the
/// ALPN protocols `alpn` in order of preference. The error says why the pair cannot be served
/// (unreadable, a key that is not the certificate's, an unsupported key type).
pub fn server_config(
    material: &TlsMaterial,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = chain_from_pem(&material.cert_chain_pem)?;
    let key = key_from_pem(&material.key_pem)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key is not the key of the certificate (the first of the chain)"
                    .to_string()
            }
            e => format!("the key cannot be used with the certificate: {e}"),
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
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

    fn names(extra: &[String]) -> GeneratedIdentity<'_> {
        GeneratedIdentity {
            dir: "x-tls",
            ca_file: "x-ca.pem",
            ca_common_name: "test CA",
            server_common_name: "test",
            clients_flag: "--ca-file",
            extra_names: extra,
        }
    }

    #[test]
    fn generated_identity_is_kept_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, fresh) = load_or_generate(dir.path(), &names(&[])).unwrap();
        assert!(fresh);
        let ca = std::fs::read_to_string(dir.path().join("x-ca.pem")).unwrap();
        assert!(a.cert_chain_pem.ends_with(&ca));
        std::fs::remove_file(dir.path().join("x-ca.pem")).unwrap();
        let (b, fresh) = load_or_generate(dir.path(), &names(&[])).unwrap();
        assert!(!fresh);
        assert_eq!(a.cert_chain_pem, b.cert_chain_pem);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x-ca.pem")).unwrap(),
            ca
        );
        for f in ["x-tls/key.pem", "x-tls/ca-key.pem", "x-ca.pem"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert!(!format!("{a:?}").contains("PRIVATE"));
        server_config(&a, &[b"h2"]).unwrap();
    }

    #[test]
    fn a_new_name_gets_a_new_certificate_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = load_or_generate(dir.path(), &names(&[])).unwrap();
        let ca = std::fs::read_to_string(dir.path().join("x-ca.pem")).unwrap();
        let extra = vec![
            "cp.example.com:5682".to_string(),
            "10.1.2.3:5682".to_string(),
            "0.0.0.0:5682".to_string(),
            "[fd00::1]:5682".to_string(),
        ];
        let (b, fresh) = load_or_generate(dir.path(), &names(&extra)).unwrap();
        assert!(!fresh);
        assert_ne!(a.cert_chain_pem, b.cert_chain_pem);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x-ca.pem")).unwrap(),
            ca,
            "the CA clients trust changed"
        );
        let held = certificate_names(&b.cert_chain_pem).unwrap();
        for n in [
            "localhost",
            "127.0.0.1",
            "::1",
            "cp.example.com",
            "10.1.2.3",
            "fd00::1",
        ] {
            assert!(held.contains(&n.to_string()), "{n} not in {held:?}");
        }
        assert!(!held.contains(&"0.0.0.0".to_string()), "{held:?}");
        crate::x509::verify_chain_pem(&b.cert_chain_pem, &[], &[&ca]).unwrap();
        // The same names again: the same certificate.
        let (c, _) = load_or_generate(dir.path(), &names(&extra)).unwrap();
        assert_eq!(b.cert_chain_pem, c.cert_chain_pem);
        // Another CA put in place (a replica taking the shared one): a certificate of that CA.
        let other = tempfile::tempdir().unwrap();
        load_or_generate(other.path(), &names(&[])).unwrap();
        for f in ["ca.pem", "ca-key.pem"] {
            std::fs::copy(
                other.path().join("x-tls").join(f),
                dir.path().join("x-tls").join(f),
            )
            .unwrap();
        }
        let (d, _) = load_or_generate(dir.path(), &names(&extra)).unwrap();
        let other_ca = std::fs::read_to_string(other.path().join("x-ca.pem")).unwrap();
        crate::x509::verify_chain_pem(&d.cert_chain_pem, &[], &[&other_ca]).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x-ca.pem")).unwrap(),
            other_ca
        );
    }

    #[test]
    fn an_identity_made_before_the_ca_key_was_kept_is_served_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = load_or_generate(dir.path(), &names(&[])).unwrap();
        std::fs::remove_file(dir.path().join("x-tls/ca-key.pem")).unwrap();
        let (b, fresh) = load_or_generate(dir.path(), &names(&[])).unwrap();
        assert!(!fresh);
        assert_eq!(a.cert_chain_pem, b.cert_chain_pem);
        // A name it lacks cannot be added without the CA key: served as it is.
        let (c, fresh) = load_or_generate(dir.path(), &names(&["cp.example.com".into()])).unwrap();
        assert!(!fresh);
        assert_eq!(a.cert_chain_pem, c.cert_chain_pem);
    }

    #[test]
    fn an_operators_pair_is_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = load_or_generate(dir.path(), &names(&[])).unwrap();
        let other = tempfile::tempdir().unwrap();
        let (b, _) = load_or_generate(other.path(), &names(&[])).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let cert = write("cert.pem", &a.cert_chain_pem);
        let key = write("key.pem", &a.key_pem);
        let wrong_key = write("wrong-key.pem", &b.key_pem);
        let garbage = write("garbage.pem", "not a PEM file at all");
        fn files<'a>(cert: &'a Path, key: &'a Path) -> TlsFiles<'a> {
            TlsFiles {
                cert,
                key,
                cert_flag: "--x-cert",
                key_flag: "--x-key",
            }
        }
        load_files(&files(&cert, &key)).unwrap();
        let e = load_files(&files(&cert, &wrong_key))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--x-cert") && e.contains("--x-key") && e.contains("not the key"),
            "{e}"
        );
        let e = load_files(&files(&garbage, &key)).unwrap_err().to_string();
        assert!(
            e.contains("--x-cert") && e.contains("no PEM CERTIFICATE"),
            "{e}"
        );
        let e = load_files(&files(&cert, &garbage)).unwrap_err().to_string();
        assert!(e.contains("--x-key") && e.contains("private key"), "{e}");
        let e = load_files(&files(&cert, &dir.path().join("absent.pem")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read --x-key"), "{e}");
        assert!(!e.contains("PRIVATE KEY-----"), "{e}");
    }

    #[test]
    fn names_are_taken_without_ports_and_once() {
        let w = wanted_names(&[
            "LocalHost:1".into(),
            "127.0.0.1:5682".into(),
            "[::1]:5682".into(),
            "api.example".into(),
            "::".into(),
            "".into(),
        ]);
        assert_eq!(w, vec!["localhost", "127.0.0.1", "::1", "api.example"]);
    }
}
