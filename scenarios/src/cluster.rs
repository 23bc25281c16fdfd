//! A whole deployment on loopback, as the reference page sets it up: a real OpenBao configured
//! with the page's Vault steps (PKI mount, root or intermediate CA, role, policy, token), global,
//! N zones with their tokens, and the page's Mesh (vault backend, or builtin/provided) applied.
//! Demo, drills and benchmarks build on it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use common::openbao::seed::{self, RoleOptions};
use common::openbao::{BaoCli, BaoServer};

use crate::harness::{GlobalProc, ZoneProc};

pub const MESH: &str = "default";
pub const PKI: &str = "kmesh-pki-default";
pub const ROLE: &str = "dataplane-proxies";

/// Which CA backend the Mesh gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Vault,
    Builtin,
    Provided,
}

/// Options of a deployment.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub zones: usize,
    pub backend: BackendKind,
    /// Use the page's Intermediate CA steps instead of the Root CA ones.
    pub intermediate: bool,
    /// Give the role `key_type=ec` (fast) instead of the page's RSA default.
    pub ec_role: bool,
    /// `dpCert.rotation.expiration` of the Mesh.
    pub expiration: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            zones: 2,
            backend: BackendKind::Vault,
            intermediate: false,
            ec_role: false,
            expiration: "24h".into(),
        }
    }
}

/// OpenBao set up with the reference page's steps.
pub struct Vault {
    pub server: BaoServer,
    /// The token of step 4 (policy `kmesh-default-dataplane-proxies`).
    pub token: String,
    /// The root CA certificate (what proxies' chains verify to).
    pub root_pem: String,
}

impl Vault {
    pub async fn start(intermediate: bool, ec_role: bool) -> Result<Self> {
        let server = BaoServer::start().await.context("starting OpenBao")?;
        let (token, root_pem) = Self::configure(&server.admin(), intermediate, ec_role)?;
        Ok(Self {
            server,
            token,
            root_pem,
        })
    }

    /// The page's steps 1–4 against a (fresh) server. Returns (token, root PEM).
    pub fn configure(cli: &BaoCli, intermediate: bool, ec_role: bool) -> Result<(String, String)> {
        let root_pem = if intermediate {
            seed::setup_intermediate_ca(cli, MESH, PKI, "pki")?
        } else {
            seed::setup_root_ca(cli, MESH, PKI)?
        };
        let opts = if ec_role {
            RoleOptions::seed_ec(MESH)
        } else {
            RoleOptions::seed(MESH)
        };
        seed::create_role(cli, PKI, ROLE, &opts)?;
        let token = seed::create_policy_and_token(cli, MESH, PKI, ROLE)?;
        Ok((token, root_pem))
    }

    pub fn addr(&self) -> String {
        self.server.addr()
    }
}

/// The page's Universal Mesh (vault backend, token from Secret `token-1`) and that Secret.
pub fn vault_mesh_yaml(address: &str, token: &str, expiration: &str) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(token);
    format!(
        r#"type: Mesh
name: {MESH}
mtls:
  enabledBackend: vault-1
  backends:
  - name: vault-1
    type: vault
    dpCert:
      rotation:
        expiration: {expiration} # must be lower than max_ttl in Vault role
    conf:
      fromCp:
        address: {address}
        agentAddress: "" # optional
        namespace: "" # optional
        pki: {PKI} # name of the configured PKI
        role: {ROLE} # name of the role that will be used to generate data plane proxy certificates
        commonName: '{{{{ tag "kuma.io/service" }}}}.mesh' # optional
        tls:
          skipVerify: false # if set to true, caCert is optional. Set to true only for development
          serverName: "" # verify sever name
        auth: # only one auth options is allowed so it's either "token" or "tls"
          token:
            secret: token-1  # can be file, secret or inlineString
---
type: Secret
name: token-1
mesh: {MESH}
data: {data}
"#
    )
}

/// A Mesh with a builtin backend.
pub fn builtin_mesh_yaml(mesh: &str, expiration: &str) -> String {
    format!(
        "type: Mesh\nname: {mesh}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: {expiration}\n"
    )
}

/// A Mesh with a provided backend whose CA (generated here) is given as two Secrets.
pub fn provided_mesh_yaml(mesh: &str, expiration: &str) -> Result<String> {
    let ca = common::ca::generate_builtin_ca(mesh, &Default::default())?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    Ok(format!(
        "type: Mesh\nname: {mesh}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: provided\n    dpCert:\n      rotation:\n        expiration: {expiration}\n    conf:\n      cert:\n        secret: provided-ca-cert\n      key:\n        secret: provided-ca-key\n---\ntype: Secret\nname: provided-ca-cert\nmesh: {mesh}\ndata: {}\n---\ntype: Secret\nname: provided-ca-key\nmesh: {mesh}\ndata: {}\n",
        b64(&ca.cert_pem),
        b64(ca.key_pem())
    ))
}

/// OpenBao (for a vault backend), global and zones, with the Mesh applied.
pub struct Cluster {
    pub dir: PathBuf,
    pub vault: Option<Vault>,
    pub global: GlobalProc,
    pub zones: Vec<ZoneProc>,
    pub options: ClusterOptions,
}

impl Cluster {
    pub async fn start(dir: &Path, options: ClusterOptions) -> Result<Self> {
        let vault = match options.backend {
            BackendKind::Vault => Some(Vault::start(options.intermediate, options.ec_role).await?),
            _ => None,
        };
        let global = GlobalProc::start(&dir.join("global")).await?;
        let mut zones = Vec::new();
        for i in 1..=options.zones {
            let name = format!("zone-{i}");
            let token = global.zone_token_file(&name, &dir.join("tokens")).await?;
            zones.push(ZoneProc::start(&name, &global, &token, &dir.join(&name)).await?);
        }
        let yaml = match (&vault, options.backend) {
            (Some(v), _) => vault_mesh_yaml(&v.addr(), &v.token, &options.expiration),
            (None, BackendKind::Provided) => provided_mesh_yaml(MESH, &options.expiration)?,
            (None, _) => builtin_mesh_yaml(MESH, &options.expiration),
        };
        global.apply(&yaml).await.context("applying the Mesh")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            vault,
            global,
            zones,
            options,
        })
    }
}
