//! `scenarios store-damage`: global's store damaged, cut short, restored from an older copy and
//! wiped, with zones and proxies running; no zone loses a resource.
//!
//! Step by step: a cluster (global, two zones, a builtin Mesh, a proxy per zone, more Meshes); a
//! backup of global's data directory, then more writes; bytes flipped at many offsets of global's
//! store files (each copy is refused, exit 1 naming the store and the ways out, or served whole);
//! the store alone restored from the backup, and a wiped store with the keys kept (refused); the
//! whole data directory restored from the backup (global starts, every zone NACKs its state with
//! the reason and keeps every Mesh; proxies keep their certificates); the operator's
//! `--accept-store-rollback` (a new epoch: zones take global's state, logging each deletion);
//! `global export --include-secrets` restored into a fresh global with the same digest.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

use super::{CommonArgs, WorkDir, describe_ids, wait_usable};
use crate::report::{Report, Steps};
use testkit::cluster::{
    BackendKind, Cluster, ClusterOptions, GlobalOptions, GlobalProc, MESH, ProxySpec,
};
use testkit::disk::{copy_dir, flip_bytes, spread_offsets};
use testkit::wait::wait_until;

/// Options of the store-damage drill.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreDamageOptions {
    /// Offsets damaged per store file (3 for small files).
    #[arg(long, default_value_t = 8)]
    pub offsets: u64,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(opts: StoreDamageOptions) -> Result<Report> {
    let work = WorkDir::new("kmesh-store-damage", opts.common.dir.as_deref())?;
    let mut steps = Steps::new(
        "store-damage: global's store damaged, cut short, rolled back and wiped; no zone loses a resource",
    );
    let outcome = body(&opts, &work, &mut steps).await;
    let report = steps.finish(outcome);
    print!("\n{}", report.summary());
    work.finish(report.passed());
    Ok(report)
}

fn docs(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("---\ntype: Mesh\nname: {n}\n"))
        .collect()
}

/// Every zone's Meshes, sorted.
async fn zone_meshes(c: &Cluster) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for z in &c.zones {
        let mut m = z.meshes().await?;
        m.sort();
        out.push(m);
    }
    Ok(out)
}

async fn wait_zones_hold(c: &Cluster, want: &[String], timeout: Duration) -> Result<()> {
    let mut want = want.to_vec();
    want.sort();
    wait_until(
        "every zone to hold exactly the expected Meshes",
        timeout,
        Duration::from_millis(100),
        || async {
            let all = zone_meshes(c).await.ok()?;
            all.iter().all(|m| *m == want).then_some(())
        },
    )
    .await
}

/// Stops global and starts it again on its directory with `options` (its ports kept).
async fn restart_global(c: &mut Cluster, extra: &[&str]) -> Result<()> {
    let options = c.global.options();
    let dir = c.global.dir.clone();
    c.global.proc.stop(Duration::from_secs(10));
    c.global = GlobalProc::start_with(
        &dir,
        GlobalOptions {
            extra: vec![],
            ..options
        }
        .args(extra),
    )
    .await?;
    Ok(())
}

/// The first line of a refusal's message.
fn refusal_line(text: &str) -> String {
    text.lines()
        .find(|l| l.contains("refuses to start"))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| text.to_string())
}

async fn body(opts: &StoreDamageOptions, work: &WorkDir, steps: &mut Steps) -> Result<()> {
    let root = work.path();
    let options = ClusterOptions {
        zones: 2,
        backend: BackendKind::Builtin,
        ..Default::default()
    };
    let first: Vec<String> = (0..20).map(|i| format!("app-{i:02}")).collect();
    let mut c = steps.must(
        "cluster up",
        async {
            let mut c = Cluster::start(root, options).await?;
            c.global.apply(&docs(&first)).await?;
            for z in ["zone-1", "zone-2"] {
                let spec = ProxySpec::new(MESH, &format!("web-{z}"), "web");
                c.start_proxy(z, &spec).await?;
            }
            let names = vec!["web-zone-1".to_string(), "web-zone-2".to_string()];
            let ids = wait_usable(&mut c, &names, Duration::from_secs(60)).await?;
            let detail = format!(
                "global, 2 zones, Mesh {MESH} (builtin CA) and 20 more, a proxy per zone\n{}",
                describe_ids(&names, &ids)
            );
            Ok((c, detail))
        }
        .await,
    )?;
    let gdir = c.global.dir.clone();
    let backup = root.join("global-backup");

    // A backup, then more writes that zones receive.
    let late: Vec<String> = (0..10).map(|i| format!("late-{i:02}")).collect();
    let before_backup: Vec<String> = std::iter::once(MESH.to_string())
        .chain(first.iter().cloned())
        .collect();
    let held: Vec<String> = before_backup
        .iter()
        .filter(|m| *m != "app-00")
        .chain(&late)
        .cloned()
        .collect();
    steps.must(
        "backup of global's data directory, then 10 Meshes added and 1 deleted",
        async {
            c.global.terminate();
            copy_dir(&gdir, &backup)?;
            c.global.restart().await?;
            c.global.apply(&docs(&late)).await?;
            c.global.delete("/meshes/app-00").await?;
            wait_zones_hold(&c, &held, Duration::from_secs(30)).await?;
            Ok((
                (),
                format!(
                    "backup in {}; both zones hold {} Meshes",
                    backup.display(),
                    held.len()
                ),
            ))
        }
        .await,
    )?;
    let pristine = root.join("global-pristine");
    c.global.terminate();
    copy_dir(&gdir, &pristine)?;

    // Damaged copies: refused, or served whole.
    let trials = spread_offsets(&pristine.join("store"), opts.offsets)?;
    let result: Result<String> = async {
        let (mut refused, mut whole) = (0, 0);
        let mut example = String::new();
        for (rel, offset) in &trials {
            copy_dir(&pristine, &gdir)?;
            flip_bytes(&gdir.join("store").join(rel), *offset)?;
            match GlobalProc::start_or_refusal(&gdir, c.global.options()).await? {
                Err(text) => {
                    if !text.contains("--accept-store-rollback") {
                        bail!("{}@{offset}: refused without the ways out: {text}", rel.display());
                    }
                    refused += 1;
                    if example.is_empty() {
                        example = format!("{}@{offset}: {}", rel.display(), refusal_line(&text));
                    }
                }
                Ok(mut g) => {
                    let n = g.api.get_ok("/meshes?size=1000").await?["total"]
                        .as_u64()
                        .unwrap_or(0);
                    g.proc.stop(Duration::from_secs(10));
                    if n as usize != held.len() {
                        bail!(
                            "{}@{offset}: global started serving {n} Meshes of {}",
                            rel.display(),
                            held.len()
                        );
                    }
                    whole += 1;
                }
            }
        }
        Ok(format!(
            "{} copies with 8 bytes flipped: {refused} refused (exit 1), {whole} served whole, 0 served short\ne.g. {example}",
            trials.len()
        ))
    }
    .await;
    steps.check("damaged store files: refused or served whole", result);

    // The store alone restored from the backup; a wiped store with the keys kept.
    for (name, prepare, expect) in [
        (
            "store restored alone from the older backup: refused",
            "restore",
            "older than revision",
        ),
        (
            "store wiped, keys and manifest kept: refused",
            "wipe",
            "wiped or replaced",
        ),
    ] {
        let result: Result<String> = async {
            copy_dir(&pristine, &gdir)?;
            std::fs::remove_dir_all(gdir.join("store"))?;
            if prepare == "restore" {
                copy_dir(&backup.join("store"), &gdir.join("store"))?;
            }
            match GlobalProc::start_or_refusal(&gdir, c.global.options()).await? {
                Err(text) if text.contains(expect) => Ok(refusal_line(&text)),
                Err(text) => bail!("refused, but not saying {expect:?}: {text}"),
                Ok(_) => bail!("global started"),
            }
        }
        .await;
        steps.check(name, result);
    }

    // The whole data directory restored: global starts; zones refuse its state.
    copy_dir(&backup, &gdir)?;
    let ids_before = wait_usable(
        &mut c,
        &["web-zone-1".to_string(), "web-zone-2".to_string()],
        Duration::from_secs(5),
    )
    .await?;
    let result: Result<String> = async {
        c.global = GlobalProc::start_with(&gdir, c.global.options()).await?;
        let mut lines = Vec::new();
        for z in ["zone-1", "zone-2"] {
            let nack = wait_until(
                &format!("{z} to NACK global's older state"),
                Duration::from_secs(30),
                Duration::from_millis(100),
                || async {
                    let v = c.global.zone(z).await.ok()?;
                    let e = v["types"]["Mesh"]["lastNack"]["error"]
                        .as_str()?
                        .to_string();
                    e.contains("refused global's state").then_some(e)
                },
            )
            .await?;
            lines.push(format!(
                "{z} NACKed: {}",
                nack.chars().take(160).collect::<String>()
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut want = held.clone();
        want.sort();
        for (z, m) in ["zone-1", "zone-2"].iter().zip(zone_meshes(&c).await?) {
            if m != want {
                bail!("{z} holds {} Meshes, expected {}", m.len(), want.len());
            }
        }
        let ids = wait_usable(
            &mut c,
            &["web-zone-1".to_string(), "web-zone-2".to_string()],
            Duration::from_secs(5),
        )
        .await?;
        for (a, b) in ids_before.iter().zip(&ids) {
            if a.serial() != b.serial() {
                bail!("a proxy's certificate changed");
            }
        }
        lines.push(format!(
            "both zones keep all {} Meshes; proxies keep their certificates",
            want.len()
        ));
        Ok(lines.join("\n"))
    }
    .await;
    steps.check(
        "whole data directory restored from the backup: global starts, zones refuse its state and keep everything",
        result,
    );

    // The operator accepts: a new epoch.
    let result: Result<String> = async {
        restart_global(&mut c, &["--accept-store-rollback"]).await?;
        wait_zones_hold(&c, &before_backup, Duration::from_secs(30)).await?;
        let mut lines = vec![format!(
            "both zones hold the backup's {} Meshes",
            before_backup.len()
        )];
        for z in &c.zones {
            let log = std::fs::read_to_string(&z.proc.log)?;
            let n = log
                .lines()
                .filter(|l| l.contains("deleted: global's full state does not hold it"))
                .count();
            if n < late.len() {
                bail!("{}: {n} deletions logged, expected {}", z.name, late.len());
            }
            lines.push(format!("{}: {n} deletions logged", z.name));
        }
        Ok(lines.join("\n"))
    }
    .await;
    steps.check(
        "operator accepts with --accept-store-rollback: zones take global's state, logging each deletion",
        result,
    );

    // Export and restore into a fresh global.
    let result: Result<String> = async {
        let out = c.global.cli(&["export", "--include-secrets"])?;
        if out.code != Some(0) {
            bail!("global export: {}", out.text());
        }
        let file = root.join("export.yaml");
        std::fs::write(&file, &out.stdout)?;
        let mut fresh = GlobalProc::start(&root.join("global-restored")).await?;
        let applied = fresh.cli(&["apply", "-f", &file.display().to_string()])?;
        if applied.code != Some(0) {
            bail!("global apply: {}", applied.text());
        }
        fresh.terminate();
        c.global.terminate();
        let a = digest(&gdir)?;
        let b = digest(&fresh.dir)?;
        if a != b {
            bail!("digests differ: {a:?} vs {b:?}");
        }
        Ok(format!(
            "{} resources exported to {}; restored into a fresh global: digest {} on both",
            a.1,
            file.display(),
            &a.0[..16]
        ))
    }
    .await;
    steps.check(
        "global export --include-secrets, restored into a fresh global: same digest",
        result,
    );
    Ok(())
}

fn digest(dir: &Path) -> Result<(String, u64)> {
    let m = common::integrity::Manifest::read(dir)
        .map_err(|e| anyhow!(e))?
        .ok_or_else(|| anyhow!("no manifest in {}", dir.display()))?;
    Ok((m.digest, m.resources))
}
