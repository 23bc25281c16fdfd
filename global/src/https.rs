//! The API over HTTPS (`--api-tls-addr`) and what keeps plain HTTP off the network. It owns where
//! the HTTPS listener's certificate comes from — the operator's files (`--api-tls-cert`,
//! `--api-tls-key`), or a private CA kept in `<data-dir>/api-tls/` and a server certificate it
//! issues for localhost, the listener's address and every `--api-host` (issued anew from the same
//! CA when those names change), the CA written to `<data-dir>/api-ca.pem` for clients
//! (`--ca-file`) and, on PostgreSQL, shared between replicas through `shared` so that the file is
//! the same on every replica — and the rule that the plain-HTTP `--api-addr` is a loopback address
//! unless the operator passes `--api-insecure-http`. The listener itself is served by
//! `common::http::serve_https` with the same router as the plain one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;

/// Name of the CA file written for clients (`global ... --ca-file <data-dir>/api-ca.pem`).
pub const CA_FILE: &str = "api-ca.pem";
/// Folder of the data directory holding the generated identity.
pub const DIR: &str = "api-tls";

/// Where the HTTPS listener's certificate comes from.
#[derive(Debug, Clone, Default)]
pub enum ApiTls {
    /// Generated from a private CA kept in the data directory (`api-ca.pem` for clients).
    #[default]
    Generated,
    /// PEM files given by the operator (the certificate file may hold the chain).
    Files { cert: PathBuf, key: PathBuf },
}

/// The HTTPS listener of the API and its certificate.
pub struct ApiTlsEndpoint {
    pub listener: TcpListener,
    pub tls: ApiTls,
}

impl ApiTlsEndpoint {
    /// An HTTPS listener with a generated certificate.
    pub fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            tls: ApiTls::Generated,
        }
    }
}

/// How the generated identity is named; `extra_names` are what the certificate carries besides
/// the loopback names.
pub fn generated_identity(extra_names: &[String]) -> common::tls::GeneratedIdentity<'_> {
    common::tls::GeneratedIdentity {
        dir: DIR,
        ca_file: CA_FILE,
        ca_common_name: "kmesh global API CA",
        server_common_name: "kmesh global API",
        clients_flag: "--ca-file",
        extra_names,
    }
}

/// The names of the generated certificate besides the loopback ones: the listener's address
/// (unless unspecified, such as 0.0.0.0) and every `--api-host`.
pub fn certificate_names(listener: Option<SocketAddr>, api_hosts: &[String]) -> Vec<String> {
    listener
        .map(|a| a.ip().to_string())
        .into_iter()
        .chain(api_hosts.iter().cloned())
        .collect()
}

/// The rustls configuration of the HTTPS listener: the operator's pair (checked: both parse, the
/// key is the certificate's) or the generated identity, offering h2 and HTTP/1.1.
pub fn server_config(
    data_dir: &Path,
    tls: &ApiTls,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let material = match tls {
        ApiTls::Files { cert, key } => common::tls::load_files(&common::tls::TlsFiles {
            cert,
            key,
            cert_flag: "--api-tls-cert",
            key_flag: "--api-tls-key",
        })
        .map_err(|e| e.to_string())?,
        ApiTls::Generated => {
            common::tls::load_or_generate(data_dir, &generated_identity(names))
                .map_err(|e| format!("cannot prepare its generated certificate: {e}"))?
                .0
        }
    };
    common::tls::server_config(&material, &common::http::HTTPS_ALPN)
}

/// Why `global run` refuses to serve plain HTTP on `--api-addr` (resolved to `addrs`), or `None`
/// when it may: every address is a loopback one, or the operator said `--api-insecure-http`.
pub fn plain_http_refusal(api_addr: &str, addrs: &[SocketAddr], insecure: bool) -> Option<String> {
    if insecure || (!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())) {
        return None;
    }
    Some(format!(
        "--api-addr {api_addr} is not a loopback address: plain HTTP would carry the admin token and Secrets in clear over the network. \
         Serve other hosts through the HTTPS listener (--api-tls-addr HOST:PORT, default 127.0.0.1:5682, with --api-tls-cert/--api-tls-key \
         or the generated certificate whose CA is <data-dir>/{CA_FILE}) and keep --api-addr on loopback, \
         or pass --api-insecure-http to serve plain HTTP there anyway"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_stays_on_loopback_unless_told() {
        let loopback: Vec<SocketAddr> = vec!["127.0.0.1:5681".parse().unwrap()];
        let v6: Vec<SocketAddr> = vec!["[::1]:5681".parse().unwrap()];
        let any: Vec<SocketAddr> = vec!["0.0.0.0:5681".parse().unwrap()];
        let mixed: Vec<SocketAddr> = vec![loopback[0], "10.0.0.5:5681".parse().unwrap()];
        assert_eq!(plain_http_refusal("127.0.0.1:5681", &loopback, false), None);
        assert_eq!(plain_http_refusal("[::1]:5681", &v6, false), None);
        for addrs in [&any, &mixed] {
            let refusal = plain_http_refusal("x:5681", addrs, false).unwrap();
            assert!(
                refusal.contains("--api-tls-addr") && refusal.contains("--api-insecure-http"),
                "{refusal}"
            );
            assert_eq!(plain_http_refusal("x:5681", addrs, true), None);
        }
        assert!(plain_http_refusal("nowhere:1", &[], false).is_some());
    }

    #[test]
    fn the_listener_and_api_hosts_are_named() {
        let names = certificate_names(
            Some("10.0.0.5:5682".parse().unwrap()),
            &["cp.example.com".into()],
        );
        assert_eq!(names, vec!["10.0.0.5", "cp.example.com"]);
        let dir = tempfile::tempdir().unwrap();
        server_config(dir.path(), &ApiTls::Generated, &names).unwrap();
        let cert = std::fs::read_to_string(dir.path().join(DIR).join("cert.pem")).unwrap();
        let held = common::tls::certificate_names(&cert).unwrap();
        assert!(
            held.contains(&"10.0.0.5".to_string()) && held.contains(&"cp.example.com".to_string()),
            "{held:?}"
        );
        assert!(dir.path().join(CA_FILE).exists());
    }
}
