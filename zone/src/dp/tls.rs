//! The TLS identity of the proxy identity service (`--dp-addr`): private keys travel on that
//! stream, so it is TLS only. On first start the zone generates a private CA and a server
//! certificate for localhost, 127.0.0.1 and ::1, kept in `<data-dir>/dp-tls/` (keys mode 0600),
//! and writes the CA to `<data-dir>/dp-ca.pem`: the file proxies are given as `--zone-ca-file`.

use std::path::Path;

pub use common::tls::TlsMaterial;

/// Name of the CA file written for proxies.
pub const CA_FILE: &str = "dp-ca.pem";

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
