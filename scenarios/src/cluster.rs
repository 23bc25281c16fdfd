//! A whole deployment on loopback, as the reference page sets it up: a real OpenBao configured
//! with the page's Vault steps (PKI mount, root or intermediate CA, role, policy, token), global,
//! N zones with their tokens, and the page's Mesh (vault backend, or builtin/provided) applied.
//! Demo, drills and benchmarks build on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use common::openbao::seed::{self, RoleOptions};
use common::openbao::{BaoCli, BaoServer};

use serde_json::Value;

use crate::harness::{GlobalProc, ProxyProc, ProxySpec, ZoneProc, wait_until};

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
    /// Create the step-4 token with this id (`bao token create -id=...`), so that a dev server
    /// restarted after an outage (which forgets everything) can be given the same token back, as
    /// a real Vault keeps its tokens. `None`: Vault picks the token, as on the page.
    pub token_id: Option<String>,
    /// More `zone run` arguments (e.g. `--max-concurrent-issuance 4`).
    pub zone_args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            zones: 2,
            backend: BackendKind::Vault,
            intermediate: false,
            ec_role: false,
            expiration: "24h".into(),
            token_id: None,
            zone_args: Vec::new(),
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
    intermediate: bool,
    ec_role: bool,
    token_id: Option<String>,
}

impl Vault {
    pub async fn start(intermediate: bool, ec_role: bool) -> Result<Self> {
        Self::start_with(intermediate, ec_role, None).await
    }

    pub async fn start_with(
        intermediate: bool,
        ec_role: bool,
        token_id: Option<String>,
    ) -> Result<Self> {
        let server = BaoServer::start().await.context("starting OpenBao")?;
        let admin = server.admin();
        let tid = token_id.clone();
        let (token, root_pem) = tokio::task::spawn_blocking(move || {
            Self::configure(&admin, intermediate, ec_role, tid.as_deref())
        })
        .await??;
        Ok(Self {
            server,
            token,
            root_pem,
            intermediate,
            ec_role,
            token_id,
        })
    }

    /// The page's steps 1–4 against a (fresh) server. Returns (token, root PEM).
    pub fn configure(
        cli: &BaoCli,
        intermediate: bool,
        ec_role: bool,
        token_id: Option<&str>,
    ) -> Result<(String, String)> {
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
        let token = match token_id {
            None => seed::create_policy_and_token(cli, MESH, PKI, ROLE)?,
            Some(id) => {
                let policy = seed::write_policy(cli, MESH, PKI, ROLE)?;
                let out = cli.run_json(&[
                    "token",
                    "create",
                    "-format=json",
                    &format!("-id={id}"),
                    &format!("-policy={policy}"),
                ])?;
                out["auth"]["client_token"]
                    .as_str()
                    .context("no auth.client_token from `token create`")?
                    .to_string()
            }
        };
        Ok((token, root_pem))
    }

    /// After `server.stop()`: the server again on the same address, and — since a dev server
    /// keeps nothing — the page's steps again (a new root CA; the same token when `token_id` was
    /// set). Returns the new root CA.
    pub async fn start_again(&mut self) -> Result<String> {
        self.server
            .start_again()
            .await
            .context("restarting OpenBao")?;
        let admin = self.server.admin();
        let (intermediate, ec_role, tid) = (self.intermediate, self.ec_role, self.token_id.clone());
        let (token, root_pem) = tokio::task::spawn_blocking(move || {
            Self::configure(&admin, intermediate, ec_role, tid.as_deref())
        })
        .await??;
        self.token = token;
        self.root_pem = root_pem.clone();
        Ok(root_pem)
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

/// The Mesh (and Secrets) of `options` for the given Vault, if any.
pub fn mesh_yaml(vault: Option<&Vault>, options: &ClusterOptions) -> Result<String> {
    Ok(match (vault, options.backend) {
        (Some(v), _) => vault_mesh_yaml(&v.addr(), &v.token, &options.expiration),
        (None, BackendKind::Provided) => provided_mesh_yaml(MESH, &options.expiration)?,
        (None, _) => builtin_mesh_yaml(MESH, &options.expiration),
    })
}

/// OpenBao (for a vault backend), global and zones, with the Mesh applied, and the proxies
/// started on it.
pub struct Cluster {
    pub dir: PathBuf,
    pub vault: Option<Vault>,
    pub global: GlobalProc,
    pub zones: Vec<ZoneProc>,
    pub proxies: Vec<ProxyProc>,
    pub options: ClusterOptions,
    /// global's answer to the apply of the Mesh (results, checks, warnings).
    pub applied: Value,
}

impl Cluster {
    pub async fn start(dir: &Path, options: ClusterOptions) -> Result<Self> {
        let vault = match options.backend {
            BackendKind::Vault => Some(
                Vault::start_with(
                    options.intermediate,
                    options.ec_role,
                    options.token_id.clone(),
                )
                .await?,
            ),
            _ => None,
        };
        let global = GlobalProc::start(&dir.join("global")).await?;
        let mut zones = Vec::new();
        for i in 1..=options.zones {
            zones.push(start_zone(&global, dir, &format!("zone-{i}"), &options.zone_args).await?);
        }
        let yaml = mesh_yaml(vault.as_ref(), &options)?;
        let applied = global.apply(&yaml).await.context("applying the Mesh")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            vault,
            global,
            zones,
            proxies: Vec::new(),
            options,
            applied,
        })
    }

    pub fn zone(&self, name: &str) -> Result<&ZoneProc> {
        self.zones
            .iter()
            .find(|z| z.name == name)
            .ok_or_else(|| anyhow!("no zone {name}"))
    }

    pub fn zone_mut(&mut self, name: &str) -> Result<&mut ZoneProc> {
        self.zones
            .iter_mut()
            .find(|z| z.name == name)
            .ok_or_else(|| anyhow!("no zone {name}"))
    }

    pub fn proxy(&self, name: &str) -> Result<&ProxyProc> {
        self.proxies
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow!("no proxy {name}"))
    }

    pub fn proxy_mut(&mut self, name: &str) -> Result<&mut ProxyProc> {
        self.proxies
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow!("no proxy {name}"))
    }

    /// A dataplane token for `mesh`/`name` from global, in `<dir>/tokens/`.
    pub async fn dataplane_token(&self, mesh: &str, name: &str) -> Result<PathBuf> {
        self.global
            .dataplane_token_file(mesh, name, &self.dir.join("tokens"))
            .await
    }

    /// Starts a proxy in `zone` with a token minted now (global must be up).
    pub async fn start_proxy(&mut self, zone: &str, spec: &ProxySpec) -> Result<()> {
        let token = self.dataplane_token(&spec.mesh, &spec.name).await?;
        self.start_proxy_with_token(zone, spec, &token)
    }

    /// Starts a proxy in `zone` with a token minted earlier (works while global is down).
    pub fn start_proxy_with_token(
        &mut self,
        zone: &str,
        spec: &ProxySpec,
        token: &Path,
    ) -> Result<()> {
        let dir = self.dir.join("proxies").join(&spec.name);
        let p = ProxyProc::start(self.zone(zone)?, spec, token, &dir)?;
        self.proxies.push(p);
        Ok(())
    }

    /// Waits until every zone holds `mesh` (synced from global).
    pub async fn wait_mesh_in_zones(&self, mesh: &str, timeout: Duration) -> Result<()> {
        for z in &self.zones {
            wait_until(
                &format!("mesh {mesh} in zone {}", z.name),
                timeout,
                Duration::from_millis(50),
                || async {
                    z.api
                        .get(&format!("/meshes/{mesh}"))
                        .await
                        .ok()
                        .filter(|(s, _)| *s == 200)
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Waits until global sees every zone online (and, with a vault backend, every zone's own
    /// Vault check passed); returns `GET /zones` items.
    pub async fn wait_zones_ready(&self, timeout: Duration) -> Result<Vec<Value>> {
        let names: Vec<String> = self.zones.iter().map(|z| z.name.clone()).collect();
        let vault = self.vault.is_some();
        wait_until(
            "every zone online at global (and its Vault check ok)",
            timeout,
            Duration::from_millis(100),
            || async {
                let v = self.global.api.get_ok("/zones").await.ok()?;
                let items = v.get("items")?.as_array()?.clone();
                let ready = names.iter().all(|n| {
                    items.iter().any(|z| {
                        z["name"] == n.as_str()
                            && z["online"] == true
                            && (!vault || vault_ok(z) == Some(true))
                    })
                });
                ready.then_some(items)
            },
        )
        .await
    }
}

/// A zone named `name` with a fresh token, data in `<dir>/<name>`.
pub async fn start_zone(
    global: &GlobalProc,
    dir: &Path,
    name: &str,
    extra: &[String],
) -> Result<ZoneProc> {
    let token = global.zone_token_file(name, &dir.join("tokens")).await?;
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    ZoneProc::start_with(
        name,
        &global.kds_address(),
        &global.ca_file(),
        &token,
        &dir.join(name),
        &extra,
    )
    .await
}

/// The `vault` entries of a `GET /zones/{name}` view: `Some(true)` when there is at least one
/// and all are ok, `Some(false)` when one is not, `None` when there is none yet.
pub fn vault_ok(zone: &Value) -> Option<bool> {
    let checks = zone.get("vault")?.as_array()?;
    if checks.is_empty() {
        return None;
    }
    Some(checks.iter().all(|c| c["ok"] == true))
}

/// `mesh/backend: ok` or `mesh/backend: FAILED (reason)` for each `vault` entry of a zone view.
pub fn describe_vault(zone: &Value) -> String {
    zone.get("vault")
        .and_then(Value::as_array)
        .map(|checks| {
            checks
                .iter()
                .map(|c| {
                    let id = format!(
                        "{}/{}",
                        c["mesh"].as_str().unwrap_or(""),
                        c["backend"].as_str().unwrap_or("")
                    );
                    if c["ok"] == true {
                        format!("{id}: ok (issued {})", c["issued"])
                    } else {
                        format!("{id}: FAILED ({})", c["error"].as_str().unwrap_or(""))
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}
