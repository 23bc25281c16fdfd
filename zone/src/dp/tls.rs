//! The TLS identity of the proxy identity service (`--dp-addr`): private keys travel on that
//! stream, so it is TLS only. On first start the zone generates a private CA and a server
//! certificate for localhost, 127.0.0.1 and ::1, kept in `<data-dir>/dp-tls/` (keys mode 0600),
//! and writes the CA to `<data-dir>/dp-ca.pem`: the file proxies are given as `--zone-ca-file`.

use std::io::Write;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Name of the CA file written for proxies.
pub const CA_FILE: &str = "dp-ca.pem";
const DIR: &str = "dp-tls";

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

fn write_file(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Loads the generated identity, creating it on first start.
pub fn load_or_generate(data_dir: &Path) -> std::io::Result<TlsMaterial> {
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
        // Keep dp-ca.pem in place even if someone removed it.
        if std::fs::read_to_string(data_dir.join(CA_FILE))
            .ok()
            .as_deref()
            != Some(ca.as_str())
        {
            write_file(&data_dir.join(CA_FILE), &ca, 0o644)?;
        }
        return Ok(TlsMaterial {
            cert_chain_pem: format!("{cert}{ca}"),
            key_pem: key,
        });
    }
    std::fs::create_dir_all(&dir)?;
    let now = time::OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate().map_err(other)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kmesh zone dataplane service CA");
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
    dn.push(DnType::CommonName, "kmesh zone dataplane service");
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.signed_by(&key, &issuer).map_err(other)?;

    let (ca_pem, cert_pem, key_pem) = (ca_cert.pem(), cert.pem(), key.serialize_pem());
    write_file(&key_path, &key_pem, 0o600)?;
    write_file(&cert_path, &cert_pem, 0o644)?;
    // The CA last: its presence marks a complete identity.
    write_file(&ca_path, &ca_pem, 0o644)?;
    write_file(&data_dir.join(CA_FILE), &ca_pem, 0o644)?;
    tracing::info!(
        ca = %data_dir.join(CA_FILE).display(),
        "generated a certificate for the dataplane service (localhost, 127.0.0.1, ::1); give proxies the CA file as --zone-ca-file"
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
    fn generated_identity_is_kept_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_generate(dir.path()).unwrap();
        let ca = std::fs::read_to_string(dir.path().join(CA_FILE)).unwrap();
        assert!(a.cert_chain_pem.ends_with(&ca));
        std::fs::remove_file(dir.path().join(CA_FILE)).unwrap();
        let b = load_or_generate(dir.path()).unwrap();
        assert_eq!(a.cert_chain_pem, b.cert_chain_pem);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CA_FILE)).unwrap(),
            ca
        );
        let mode = std::fs::metadata(dir.path().join("dp-tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }
}
