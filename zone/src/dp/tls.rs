//! The TLS identity of the proxy identity service (`--dp-addr`): private keys travel on that
//! stream, so it is TLS only. The operator's certificate and key (`--dp-tls-cert`,
//! `--dp-tls-key`: checked at start, both parse and the key is the certificate's), or else on
//! first start the zone generates a private CA and a server certificate for localhost, 127.0.0.1
//! and ::1, kept in `<data-dir>/dp-tls/` (keys mode 0600), and writes the CA to
//! `<data-dir>/dp-ca.pem`: the file proxies are given as `--zone-ca-file`.

use std::path::{Path, PathBuf};

pub use common::tls::TlsMaterial;

/// Name of the CA file written for proxies.
pub const CA_FILE: &str = "dp-ca.pem";

/// Where the proxy identity service's certificate comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DpTls {
    /// Generated from a private CA kept in the data directory (`dp-ca.pem` for proxies).
    #[default]
    Generated,
    /// PEM files given by the operator (the certificate file may hold the chain).
    Files { cert: PathBuf, key: PathBuf },
}

/// The certificate and key to serve: the operator's (checked) or the generated identity.
pub fn load(data_dir: &Path, tls: &DpTls) -> Result<TlsMaterial, String> {
    match tls {
        DpTls::Files { cert, key } => common::tls::load_files(&common::tls::TlsFiles {
            cert,
            key,
            cert_flag: "--dp-tls-cert",
            key_flag: "--dp-tls-key",
        })
        .map_err(|e| e.to_string()),
        DpTls::Generated => load_or_generate(data_dir)
            .map_err(|e| format!("cannot prepare its TLS certificate: {e}")),
    }
}

/// Loads the generated identity, creating it on first start.
pub fn load_or_generate(data_dir: &Path) -> std::io::Result<TlsMaterial> {
    let (material, _) = common::tls::load_or_generate(
        data_dir,
        &common::tls::GeneratedIdentity {
            dir: "dp-tls",
            ca_file: CA_FILE,
            ca_common_name: "kmesh zone dataplane service CA",
            server_common_name: "kmesh zone dataplane service",
            clients_flag: "--zone-ca-file",
            extra_names: &[],
        },
    )?;
    Ok(material)
}
