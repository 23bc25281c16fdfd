//! `scenarios vault-outage`: Vault is stopped for longer than a rotation interval, then comes back.
//!
//! What it shows: with Vault gone, the proxies' rotation point passes and the zones' renewals
//! fail, yet every proxy keeps its certificate, key and trust bundle untouched (valid until its
//! own expiry); the zones report the outage to global (`GET /zones/{name}` → `vault`: not ok,
//! with the reason); when Vault is back (a dev server keeps nothing, so the page's steps run
//! again: a new root CA, the same token) the zones recover by themselves: every proxy gets a
//! certificate from the new CA, the trust bundles switch to the new root, the zones report Vault
//! ok again, and a cross-zone mTLS handshake works with the new certificates.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{CommonArgs, WorkDir, describe_cluster, describe_ids, wait_usable};
use crate::report::{Report, Steps};
use common::clock::now_unix;
use testkit::certs::{ProxyIdentity, human_secs, short_serial};
use testkit::cluster::ProxySpec;
use testkit::cluster::{Cluster, ClusterOptions, MESH, describe_vault, vault_ok};
use testkit::wait::wait_until;

/// The zones' `--trust-grace` in this drill.
const TRUST_GRACE: Duration = Duration::from_secs(5);

/// Options of the vault-outage drill.
#[derive(Debug, Clone, clap::Args)]
pub struct VaultOutageOptions {
    #[arg(long, default_value_t = 2)]
    pub zones: usize,
    /// Proxies per zone.
    #[arg(long, default_value_t = 1)]
    pub proxies: usize,
    /// dpCert.rotation.expiration: the outage lasts past the rotation point (4/5 of it).
    #[arg(long, default_value = "30s")]
    pub expiration: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Default for VaultOutageOptions {
    fn default() -> Self {
        Self {
            zones: 2,
            proxies: 1,
            expiration: "30s".into(),
            common: CommonArgs::default(),
        }
    }
}

pub async fn run(opts: VaultOutageOptions) -> Result<Report> {
    let work = WorkDir::new("kmesh-vault-outage", opts.common.dir.as_deref())?;
    let mut steps = Steps::new(
        "vault-outage: Vault stopped past a rotation point; proxies keep their certificates, zones report it and recover",
    );
    let outcome = body(&opts, &work, &mut steps).await;
    let report = steps.finish(outcome);
    print!("\n{}", report.summary());
    work.finish(report.passed());
    Ok(report)
}

/// A token id for `bao token create -id=...` (no `s.`/`hvs.` prefix: those are refused).
fn token_id() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("kmesh-drill-{:x}-{}", nanos, std::process::id())
}

async fn body(opts: &VaultOutageOptions, work: &WorkDir, steps: &mut Steps) -> Result<()> {
    let expiration = common::duration::parse_duration(&opts.expiration)?;
    let options = ClusterOptions {
        zones: opts.zones.max(1),
        ec_role: opts.common.ec,
        expiration: opts.expiration.clone(),
        token_id: Some(token_id()),
        // The old root stays trusted this long after the last proxy got a certificate of the
        // new one (the zone's default is 60 s); the drill checks that it then leaves.
        zone_args: vec![
            "--trust-grace".into(),
            format!("{}s", TRUST_GRACE.as_secs()),
        ],
        ..Default::default()
    };
    let mut c = steps.must(
        "cluster up",
        async {
            let c = Cluster::start(work.path(), options).await?;
            c.wait_mesh_in_zones(MESH, Duration::from_secs(30)).await?;
            let detail = format!(
                "OpenBao with the page's steps (the token created with a fixed id, so that it can be given back after the restart), global, {} zones, Mesh {MESH} (vault, expiration {})\n{}",
                c.zones.len(),
                opts.expiration,
                describe_cluster(&c)
            );
            Ok((c, detail))
        }
        .await,
    )?;
    let zone_names: Vec<String> = c.zones.iter().map(|z| z.name.clone()).collect();
    let mut names = Vec::new();
    for (i, z) in zone_names.iter().enumerate() {
        for j in 1..=opts.proxies.max(1) {
            let spec = ProxySpec::new(MESH, &format!("web-z{}-{j}", i + 1), "web");
            c.start_proxy(z, &spec).await?;
            names.push(spec.name);
        }
    }
    steps.must(
        "proxies certified, zones report Vault ok to global",
        async {
            let ids = wait_usable(&mut c, &names, Duration::from_secs(60)).await?;
            let zones = c.wait_zones_ready(Duration::from_secs(60)).await?;
            let vault: Vec<String> = zones
                .iter()
                .map(|z| {
                    format!(
                        "{}: {}",
                        z["name"].as_str().unwrap_or(""),
                        describe_vault(z)
                    )
                })
                .collect();
            Ok((
                (),
                format!("{}\n{}", describe_ids(&names, &ids), vault.join("\n")),
            ))
        }
        .await,
    )?;
    let old_root = c
        .vault
        .as_ref()
        .map(|v| v.root_pem.clone())
        .unwrap_or_default();

    // The outage. What each proxy holds now is what it must keep.
    let held: Vec<ProxyIdentity> = names
        .iter()
        .map(|n| c.proxy(n).ok().and_then(|p| p.identity()))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| anyhow::anyhow!("a proxy lost its files"))?;
    let vault_addr = c.vault.as_ref().map(|v| v.addr()).unwrap_or_default();
    if let Some(v) = c.vault.as_mut() {
        v.server.stop();
    }
    let stopped_at = Instant::now();
    steps.pass(
        "Vault stopped",
        format!("{vault_addr} refuses connections from now on"),
    );

    // The latest rotation point of the certificates held: 4/5 of the lifetime, +5% jitter.
    let rotation_due = held
        .iter()
        .map(|id| id.leaf.not_after - (expiration.as_secs_f64() * 0.15).ceil() as i64)
        .max()
        .unwrap_or_else(now_unix);
    steps.check(
        "proxies keep their certificates past the rotation point",
        async {
            let mut checks = 0;
            while now_unix() <= rotation_due + 1 {
                for (name, id) in names.iter().zip(&held) {
                    let now = c.proxy(name)?.identity();
                    match now {
                        Some(cur) if cur.serial() == id.serial() && cur.key_matches && cur.verifies.is_ok() => {}
                        Some(cur) => bail!("{name}: the files changed during the outage (serial {})", cur.serial()),
                        None => bail!("{name}: the files are gone"),
                    }
                }
                checks += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let mut lines = vec![format!(
                "rotation point passed {}s into the outage; files checked {checks} times, unchanged",
                stopped_at.elapsed().as_secs()
            )];
            for (name, id) in names.iter().zip(&held) {
                let left = id.leaf.not_after - now_unix();
                lines.push(format!(
                    "{name}: serial {} kept, {}",
                    short_serial(id.serial()),
                    if left > 0 {
                        format!("still valid for {}", human_secs(left))
                    } else {
                        "expired".to_string()
                    }
                ));
            }
            Ok(lines.join("\n"))
        }
        .await,
    );

    steps.check(
        "zones report the outage to global",
        async {
            let mut lines = Vec::new();
            for z in &zone_names {
                let v = wait_until(
                    &format!("{z} to report Vault down"),
                    Duration::from_secs(60),
                    Duration::from_millis(200),
                    || async {
                        let v = c.global.api.get_ok(&format!("/zones/{z}")).await.ok()?;
                        (vault_ok(&v) == Some(false)).then_some(v)
                    },
                )
                .await?;
                lines.push(format!("GET /zones/{z} vault: {}", describe_vault(&v)));
            }
            let dps = c.zone(&zone_names[0])?.dataplanes().await?;
            if let Some(e) = dps.iter().find_map(|d| d["lastError"].as_str()) {
                lines.push(format!("{} GET /dataplanes lastError: {e}", zone_names[0]));
            }
            Ok(lines.join("\n"))
        }
        .await,
    );

    let down_for = stopped_at.elapsed();
    let new_root = steps.must(
        "Vault back: same address, the page's steps again (new root CA, same token)",
        async {
            let v = c
                .vault
                .as_mut()
                .ok_or_else(|| anyhow::anyhow!("no Vault"))?;
            let root = v.start_again().await?;
            let summary = common::x509::summarize_pem(&root)?;
            let old = common::x509::summarize_pem(&old_root)?;
            if summary.serial == old.serial {
                bail!("the root CA did not change");
            }
            Ok((
                root,
                format!(
                    "down for {}; new root CA {} serial {} (was {}): trust bundles must change",
                    human_secs(down_for.as_secs() as i64),
                    summary.subject,
                    short_serial(&summary.serial),
                    short_serial(&old.serial)
                ),
            ))
        }
        .await,
    )?;
    let back_at = Instant::now();

    let recovered = steps.check(
        "zones recover by themselves: new certificates from the new CA",
        async {
            let mut lines = Vec::new();
            for (name, old) in names.iter().zip(&held) {
                let root = new_root.clone();
                let id = c
                    .proxy_mut(name)?
                    .wait_identity(
                        Duration::from_secs(120),
                        "certificate from the new CA",
                        |id| id.key_matches && id.verifies.is_ok() && id.chains_to(&root),
                    )
                    .await?;
                let gap = now_unix() - old.leaf.not_after;
                lines.push(format!(
                    "{name}: serial {} → {} after {:.1}s{}",
                    short_serial(old.serial()),
                    short_serial(id.serial()),
                    back_at.elapsed().as_secs_f64(),
                    if gap > 0 {
                        format!(" (the old certificate had expired {}s earlier)", gap)
                    } else {
                        String::new()
                    }
                ));
            }
            for z in &zone_names {
                let v = wait_until(
                    &format!("{z} to report Vault ok again"),
                    Duration::from_secs(90),
                    Duration::from_millis(200),
                    || async {
                        let v = c.global.api.get_ok(&format!("/zones/{z}")).await.ok()?;
                        (vault_ok(&v) == Some(true)).then_some(v)
                    },
                )
                .await?;
                lines.push(format!("GET /zones/{z} vault: {}", describe_vault(&v)));
            }
            Ok(lines.join("\n"))
        }
        .await,
    );

    if recovered {
        steps.check(
            "trust bundles switch to the new root",
            async {
                for name in &names {
                    let (root, old) = (new_root.clone(), old_root.clone());
                    c.proxy_mut(name)?
                        .wait_identity(
                            Duration::from_secs(60) + TRUST_GRACE,
                            "ca.pem with only the new root (after the zone's trust grace)",
                            |id| id.trusts(&root) && !id.trusts(&old),
                        )
                        .await?;
                }
                Ok(format!(
                    "ca.pem of all {} proxies holds the new root and no longer the old one",
                    names.len()
                ))
            }
            .await,
        );
        if zone_names.len() >= 2 {
            let client = names[0].clone();
            let server = names[names.len() - 1].clone();
            steps.check(
                &format!("cross-zone mTLS with the new certificates: {client} → {server}"),
                async {
                    let (cdir, sdir) = (
                        c.proxy(&client)?.out_dir.clone(),
                        c.proxy(&server)?.out_dir.clone(),
                    );
                    let scratch = work.path().join("handshake");
                    let h = tokio::task::spawn_blocking(move || {
                        testkit::openssl::mtls_handshake(
                            &sdir,
                            &cdir,
                            &scratch,
                            Duration::from_secs(10),
                        )
                    })
                    .await??;
                    if !h.ok {
                        bail!("{}\n{}", h.describe(), h.transcript);
                    }
                    Ok(h.describe())
                }
                .await,
            );
        }
    }
    Ok(())
}
