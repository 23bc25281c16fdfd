//! Drills: each one deploys what it needs on loopback (OpenBao with the reference page's steps,
//! global, zones, proxies), breaks something on purpose, and checks step by step what users rely
//! on, ending with a summary table and an exit code (0 only if every step passed).
//!
//! - [`failover_global`]: global killed; zones keep issuing and renewing, a zone restarted
//!   meanwhile still works; global back: zones resync and catch up on changes.
//! - [`failover_zone`]: a zone killed mid-issuance and restarted: store intact, proxies back, no
//!   certificate lost or issued twice without need, global sees it offline then online.
//! - [`failover_replica`]: three global replicas on PostgreSQL under 50 writers: replicas
//!   SIGKILLed and hung, PostgreSQL restarted; zones move, nothing acknowledged is lost.
//! - [`vault_outage`]: Vault stopped past a rotation point: proxies keep valid certificates,
//!   zones report the outage to global, and recover by themselves when Vault returns.
//! - [`dry_run`]: `global validate` and `apply --dry-run` on good and broken backends.
//! - [`store_damage`]: global's store damaged, cut short, rolled back and wiped: refused or
//!   served whole, zones keep everything until the operator accepts; export and restore.

pub mod dry_run;
pub mod failover_global;
pub mod failover_replica;
pub mod failover_zone;
pub mod store_damage;
pub mod vault_outage;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use common::clock::now_unix;
use testkit::certs::{ProxyIdentity, human_secs, short_serial};
use testkit::cluster::Cluster;

/// Options every drill takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// Give the Vault role EC P-256 keys (fast) instead of the page's RSA 2048.
    #[arg(long)]
    pub ec: bool,
    /// Work in this directory (kept afterwards) instead of a temporary one (removed when every
    /// step passed, kept for its logs otherwise).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Where a scenario keeps data and logs.
pub struct WorkDir {
    path: PathBuf,
    temp: Option<tempfile::TempDir>,
}

impl WorkDir {
    pub fn new(prefix: &str, dir: Option<&Path>) -> Result<Self> {
        match dir {
            Some(d) => {
                // A previous run's stores and tokens would not match a new OpenBao.
                if std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()) {
                    anyhow::bail!(
                        "{} is not empty: give --dir a new or empty directory",
                        d.display()
                    );
                }
                std::fs::create_dir_all(d)?;
                Ok(Self {
                    path: std::fs::canonicalize(d)?,
                    temp: None,
                })
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("{prefix}-"))
                    .tempdir()?;
                Ok(Self {
                    path: t.path().to_path_buf(),
                    temp: Some(t),
                })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes a temporary directory when everything passed; otherwise keeps it and says where.
    pub fn finish(self, passed: bool) {
        match self.temp {
            Some(t) if passed => {
                println!(
                    "removed {} (pass --dir DIR to keep data and logs)",
                    t.path().display()
                );
                drop(t);
            }
            Some(t) => {
                let kept = t.keep();
                println!("logs and data kept in {}", kept.display());
            }
            None => println!("logs and data in {}", self.path.display()),
        }
    }
}

/// Waits until every named proxy holds a usable identity; returns them in order.
pub async fn wait_usable(
    cluster: &mut Cluster,
    names: &[String],
    timeout: Duration,
) -> Result<Vec<ProxyIdentity>> {
    let mut out = Vec::new();
    for n in names {
        let p = cluster.proxy_mut(n)?;
        out.push(
            p.wait_identity(timeout, "usable certificate", |id| id.usable())
                .await?,
        );
    }
    Ok(out)
}

/// `name (zone): serial …, expires in …` for each proxy.
pub fn describe_ids(names: &[String], ids: &[ProxyIdentity]) -> String {
    names
        .iter()
        .zip(ids)
        .map(|(n, id)| {
            format!(
                "{n}: serial {}, {}, expires in {}",
                short_serial(id.serial()),
                id.leaf.uri_sans.first().map(String::as_str).unwrap_or(""),
                human_secs(id.leaf.not_after - now_unix())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where each process of a cluster listens and logs.
pub fn describe_cluster(c: &Cluster) -> String {
    let mut lines = Vec::new();
    if let Some(v) = &c.vault {
        lines.push(format!(
            "OpenBao  {}  log {}",
            v.addr(),
            v.server.log_path().display()
        ));
    }
    lines.push(format!(
        "global   API {}  sync {}  log {}",
        c.global.api_url(),
        c.global.kds_address(),
        c.global.proc.log.display()
    ));
    for z in &c.zones {
        lines.push(format!(
            "{}   API {}  proxies {}  log {}",
            z.name,
            z.api_url(),
            z.dp_address(),
            z.proc.log.display()
        ));
    }
    lines.join("\n")
}
