//! The TLS identity of the sync server: the operator's certificate and key
//! (`--kds-tls-cert/--kds-tls-key`), or else a private CA and a server certificate generated on
//! first start and kept in `<data-dir>/kds-tls/` (keys mode 0600). The generated CA is written to
//! `<data-dir>/kds-ca.pem`: that is the file zones are given as `--global-ca-file`.

use std::path::{Path, PathBuf};

/// Where the sync server's certificate comes from.
#[derive(Debug, Clone, Default)]
pub enum KdsTls {
    /// Generate a private CA and server certificate in the data directory (kept across restarts).
    #[default]
    Generated,
    /// PEM files given by the operator (the certificate file may hold the chain).
    Files { cert: PathBuf, key: PathBuf },
}

pub use common::tls::TlsMaterial;

/// Name of the CA file written for zones.
pub const CA_FILE: &str = "kds-ca.pem";

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
    let (material, _) = common::tls::load_or_generate(
        data_dir,
        &common::tls::GeneratedIdentity {
            dir: "kds-tls",
            ca_file: CA_FILE,
            ca_common_name: "kmesh global KDS CA",
            server_common_name: "kmesh global KDS",
            clients_flag: "--global-ca-file",
            extra_names: &[],
        },
    )?;
    Ok(material)
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
    }
}
