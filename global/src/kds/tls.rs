//! The TLS identity of the sync server: the operator's certificate and key
//! (`--kds-tls-cert/--kds-tls-key`), or else a private CA and a server certificate generated on
//! first start and kept in `<data-dir>/kds-tls/` (keys mode 0600). The generated CA is written to
//! `<data-dir>/kds-ca.pem`: that is the file zones are given as `--global-ca-file`.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Where the sync server's certificate comes from.
#[derive(Debug, Clone, Default)]
pub enum KdsTls {
    /// Generate a private CA and server certificate in the data directory (kept across restarts).
    #[default]
    Generated,
    /// PEM files given by the operator (the certificate file may hold the chain).
    Files { cert: PathBuf, key: PathBuf },
}

/// PEM certificate chain and key to serve.
pub struct TlsMaterial {
    pub cert_chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

/// Name of the CA file written for zones.
pub const CA_FILE: &str = "kds-ca.pem";
const DIR: &str = "kds-tls";

fn write_private(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Loads the operator's files, or the generated identity (creating it on first start).
pub fn load(data_dir: &Path, tls: &KdsTls) -> std::io::Result<TlsMaterial> {
    match tls {
        KdsTls::Files { cert, key } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot read {}: {e}", p.display()))
                })
            };
            Ok(TlsMaterial {
                cert_chain_pem: read(cert)?,
                key_pem: read(key)?,
            })
        }
        KdsTls::Generated => load_or_generate(data_dir),
    }
}

fn load_or_generate(data_dir: &Path) -> std::io::Result<TlsMaterial> {
    let dir = data_dir.join(DIR);
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
        // Keep kds-ca.pem in place even if someone removed it.
        if std::fs::read_to_string(data_dir.join(CA_FILE))
            .ok()
            .as_deref()
            != Some(ca.as_str())
        {
            write_private(&data_dir.join(CA_FILE), &ca, 0o644)?;
        }
        return Ok(TlsMaterial {
            cert_chain_pem: format!("{cert}{ca}"),
            key_pem: key,
        });
    }
    std::fs::create_dir_all(&dir)?;

    let ca_key = KeyPair::generate().map_err(other)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kmesh global KDS CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    ca_params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
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
    dn.push(DnType::CommonName, "kmesh global KDS");
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    let cert = params.signed_by(&key, &issuer).map_err(other)?;

    let (ca_pem, cert_pem, key_pem) = (ca_cert.pem(), cert.pem(), key.serialize_pem());
    write_private(&key_path, &key_pem, 0o600)?;
    write_private(&cert_path, &cert_pem, 0o644)?;
    // The CA last: its presence marks a complete identity.
    write_private(&ca_path, &ca_pem, 0o644)?;
    write_private(&data_dir.join(CA_FILE), &ca_pem, 0o644)?;
    tracing::info!(
        ca = %data_dir.join(CA_FILE).display(),
        "generated a KDS server certificate for localhost, 127.0.0.1 and ::1; give zones the CA file as --global-ca-file"
    );
    Ok(TlsMaterial {
        cert_chain_pem: format!("{cert_pem}{ca_pem}"),
        key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load(dir.path(), &KdsTls::Generated).unwrap();
        let ca = std::fs::read_to_string(dir.path().join(CA_FILE)).unwrap();
        assert!(a.cert_chain_pem.ends_with(&ca));
        let b = load(dir.path(), &KdsTls::Generated).unwrap();
        assert_eq!(a.cert_chain_pem, b.cert_chain_pem);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("kds-tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
