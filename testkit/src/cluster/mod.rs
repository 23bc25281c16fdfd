//! THE multi-process harness of every test and scenario: the real binaries on loopback, each in
//! its own process group with its log in a file, and a whole deployment as the reference page sets
//! it up. `global` ([`GlobalProc`]), `zone` ([`ZoneProc`]) and `proxy` ([`ProxyProc`]) run one
//! process each; `vault` is a real OpenBao configured with the page's Vault steps and the page's
//! Meshes as YAML; [`Cluster`] puts them together (OpenBao for a vault backend, global, N zones
//! with their tokens, the Mesh applied, proxies). Demo, drills, benchmarks and the multi-process
//! tests of `global` and `zone` build on it.

mod global;
mod proxy;
mod vault;
mod zone;

pub use global::{GlobalOptions, GlobalProc, global_output, run_global};
pub use proxy::{ProxyProc, ProxySpec};
pub use vault::{
    MESH, PKI, ROLE, Vault, VaultMesh, b64, builtin_mesh_yaml, provided_mesh_yaml, secret_yaml,
    token_secret, vault_auth_mesh, vault_mesh, vault_mesh_yaml,
};
pub use zone::{ZoneOptions, ZoneProc};

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

use crate::wait::wait_until;

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
    /// More replicas of global beside `global` (on `postgres`); empty for a single global.
    pub replicas: Vec<GlobalProc>,
    /// The PostgreSQL store of the replicas, when there are several.
    pub postgres: Option<crate::postgres::PgServer>,
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
            replicas: Vec::new(),
            postgres: None,
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

    /// A dataplane token for `mesh`/`name` from global, bound to `service`, in `<dir>/tokens/`.
    pub async fn dataplane_token(&self, mesh: &str, name: &str, service: &str) -> Result<PathBuf> {
        self.global
            .bound_dataplane_token_file(mesh, name, service, &self.dir.join("tokens"))
            .await
    }

    /// Starts a proxy in `zone` with a token bound to its service, minted now (global must be up).
    pub async fn start_proxy(&mut self, zone: &str, spec: &ProxySpec) -> Result<()> {
        let token = self
            .dataplane_token(&spec.mesh, &spec.name, &spec.service)
            .await?;
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

/// `n` global replicas on the PostgreSQL store at `store_url`, data in `<dir>/global-<i>` (from 1),
/// started at once (they race for the shared admin token and keys, as replicas do).
pub async fn start_replicas(dir: &Path, n: usize, store_url: &str) -> Result<Vec<GlobalProc>> {
    futures::future::try_join_all((1..=n).map(|i| {
        let dir = dir.join(format!("global-{i}"));
        let options = GlobalOptions::default().store(store_url);
        async move { GlobalProc::start_with(&dir, options).await }
    }))
    .await
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
