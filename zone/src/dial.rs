//! Dialing a gRPC peer over TLS from a zone: global's sync server (`zone run --global-address`)
//! and a zone's identity service (`zone proxy --zone-address`). Both take a `grpcs://HOST:PORT`
//! address checked once at start, trust a CA file or (explicitly) nothing, and connect with
//! HTTP/2 keepalive so a dead peer is noticed within seconds.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::client::error_chain;

/// How the peer's certificate is verified.
#[derive(Debug, Clone)]
pub enum Trust {
    CaFile(PathBuf),
    InsecureSkipVerify,
}

/// The flags a target comes from, for messages that name them.
pub struct Flags {
    /// e.g. `--global-address`.
    pub address: &'static str,
    /// e.g. `--global-ca-file`.
    pub ca_file: &'static str,
    /// Who the peer is, e.g. `global` or `the zone`.
    pub peer: &'static str,
    /// Why TLS is required, for the message refusing a plain address.
    pub why_tls: &'static str,
    /// Where the port comes from, e.g. `global's --kds-addr, 5685 by default`.
    pub port_hint: &'static str,
    /// Where the CA file comes from, e.g. `global writes <data-dir>/kds-ca.pem`.
    pub ca_hint: &'static str,
}

/// Where and how to reach a peer, checked once at start.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https://HOST:PORT` (gRPC over TLS).
    pub uri: String,
    /// The name the certificate must carry (host name or IP).
    pub server_name: String,
    pub trust: Trust,
    ca_flag: &'static str,
    peer: &'static str,
}

impl Target {
    pub fn parse(
        flags: &Flags,
        address: &str,
        ca_file: Option<&PathBuf>,
        insecure_skip_verify: bool,
    ) -> Result<Self, String> {
        let (flag, addr) = (flags.address, address.trim());
        let rest = addr
            .strip_prefix("grpcs://")
            .or_else(|| addr.strip_prefix("https://"))
            .ok_or_else(|| {
                format!(
                    "{flag} {addr:?} must be grpcs://HOST:PORT: {}",
                    flags.why_tls
                )
            })?;
        let uri = format!("https://{}", rest.trim_end_matches('/'));
        let parsed: tonic::transport::Uri = uri
            .parse()
            .map_err(|e| format!("{flag} {addr:?} is not a valid address: {e}"))?;
        let host = parsed
            .host()
            .ok_or_else(|| format!("{flag} {addr:?} has no host"))?;
        if parsed.port_u16().is_none() {
            return Err(format!(
                "{flag} {addr:?} needs a port ({})",
                flags.port_hint
            ));
        }
        let server_name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let trust = match (ca_file, insecure_skip_verify) {
            (_, true) => Trust::InsecureSkipVerify,
            (Some(ca), false) => Trust::CaFile(ca.clone()),
            (None, false) => {
                return Err(format!(
                    "{} is required to verify {}'s certificate ({}); --insecure-skip-verify turns verification off",
                    flags.ca_file, flags.peer, flags.ca_hint
                ));
            }
        };
        Ok(Self {
            uri,
            server_name,
            trust,
            ca_flag: flags.ca_file,
            peer: flags.peer,
        })
    }

    /// Connects with HTTP/2 keepalive every `keepalive` (and the same timeout).
    pub async fn connect(&self, keepalive: Duration) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(self.uri.clone())
            .map_err(|e| error_chain(&e))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let tls = ClientTlsConfig::new().domain_name(self.server_name.clone());
        let endpoint = match &self.trust {
            Trust::CaFile(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {} {}: {e}", self.ca_flag, path.display()))?;
                endpoint.tls_config(tls.ca_certificate(Certificate::from_pem(pem)))
            }
            Trust::InsecureSkipVerify => {
                endpoint.tls_config_with_verifier(tls, common::tls::SkipVerify::new())
            }
        }
        .map_err(|e| format!("TLS configuration: {}", error_chain(&e)))?;
        endpoint.connect().await.map_err(|e| {
            format!(
                "cannot connect to {} at {}: {}",
                self.peer,
                self.uri,
                error_chain(&e)
            )
        })
    }
}
