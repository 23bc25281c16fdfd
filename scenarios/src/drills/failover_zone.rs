//! `scenarios failover-zone`: a zone is killed with SIGKILL while its proxies are getting their
//! certificates, then started again on the same ports and data directory.
//!
//! What it shows: global marks the zone offline; the proxies that already had files keep them;
//! the restarted zone's store is intact (the same Meshes and Secrets, by digest, and the
//! dataplanes it registered); global marks it online again; every proxy reconnects and holds a
//! certificate; the proxies that held one keep the very same certificate (the zone takes it back
//! instead of issuing again), the restarted zone issues exactly one certificate to each proxy
//! that had none, no two proxies share a serial, and the zone's view matches the files.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use super::{CommonArgs, WorkDir, describe_cluster};
use crate::report::{Report, Steps};
use testkit::certs::short_serial;
use testkit::cluster::ProxySpec;
use testkit::cluster::{Cluster, ClusterOptions, MESH};
use testkit::wait::wait_until;

/// Options of the failover-zone drill.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverZoneOptions {
    /// Proxies started at once in the zone that is killed.
    #[arg(long, default_value_t = 24)]
    pub proxies: usize,
    /// The zone's --max-concurrent-issuance (small: the burst lasts long enough to be cut).
    #[arg(long, default_value_t = 2)]
    pub max_concurrent: usize,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Default for FailoverZoneOptions {
    fn default() -> Self {
        Self {
            proxies: 24,
            max_concurrent: 2,
            common: CommonArgs::default(),
        }
    }
}

const ZONE: &str = "zone-1";

pub async fn run(opts: FailoverZoneOptions) -> Result<Report> {
    let work = WorkDir::new("kmesh-failover-zone", opts.common.dir.as_deref())?;
    let mut steps = Steps::new(
        "failover-zone: a zone killed (SIGKILL) mid-issuance and restarted; nothing lost, nothing issued twice",
    );
    let outcome = body(&opts, &work, &mut steps).await;
    let report = steps.finish(outcome);
    print!("\n{}", report.summary());
    work.finish(report.passed());
    Ok(report)
}

/// (count, digest) of each synced type in a zone's `GET /status`.
fn held(status: &Value) -> BTreeMap<String, (Value, Value)> {
    status["types"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(t, v)| (t.clone(), (v["count"].clone(), v["digest"].clone())))
        .collect()
}

async fn body(opts: &FailoverZoneOptions, work: &WorkDir, steps: &mut Steps) -> Result<()> {
    let n = opts.proxies.max(2);
    let options = ClusterOptions {
        zones: 1,
        ec_role: opts.common.ec,
        zone_args: vec![
            "--max-concurrent-issuance".into(),
            opts.max_concurrent.max(1).to_string(),
        ],
        ..Default::default()
    };
    let (mut c, store_before) = steps.must(
        "cluster up",
        async {
            let c = Cluster::start(work.path(), options).await?;
            c.wait_mesh_in_zones(MESH, Duration::from_secs(30)).await?;
            c.wait_zones_ready(Duration::from_secs(60)).await?;
            let status = c.zone(ZONE)?.api.get_ok("/status").await?;
            let detail = format!(
                "OpenBao with the page's steps, global, {ZONE} (--max-concurrent-issuance {}), Mesh {MESH} (vault)\n{}",
                opts.max_concurrent,
                describe_cluster(&c)
            );
            Ok(((c, held(&status)), detail))
        }
        .await,
    )?;

    // Tokens first, so that the proxies start as one burst.
    let names: Vec<String> = (1..=n).map(|i| format!("app-{i:02}")).collect();
    let mut tokens = Vec::new();
    for name in &names {
        tokens.push(c.dataplane_token(MESH, name, "app").await?);
    }
    let started = Instant::now();
    for (name, token) in names.iter().zip(&tokens) {
        let spec = ProxySpec::new(MESH, name, "app").tag("version", "v1");
        c.start_proxy_with_token(ZONE, &spec, token)?;
    }

    // Kill the zone while the burst is being served.
    let (holders, registered): (BTreeMap<String, String>, usize) = steps.must(
        &format!("{ZONE} killed (SIGKILL) mid-issuance"),
        async {
            // A quarter of the proxies served: the burst is well under way, most still wait.
            let threshold = (n / 4).max(1);
            wait_until(
                "the first proxy certificates",
                Duration::from_secs(60),
                Duration::from_millis(5),
                || async {
                    let served = c.proxies.iter().filter(|p| p.file("cert.pem").exists()).count();
                    (served >= threshold).then_some(())
                },
            )
            .await?;
            let registered = c.zone(ZONE)?.dataplanes().await.map(|d| d.len()).unwrap_or(0);
            c.zone_mut(ZONE)?.proc.kill9();
            let killed_after = started.elapsed();
            // An agent may be writing what it received just before the kill.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let holders: BTreeMap<String, String> = c
                .proxies
                .iter()
                .filter_map(|p| p.identity().map(|id| (p.name.clone(), id.serial().to_string())))
                .collect();
            if holders.len() == n {
                bail!(
                    "all {n} proxies already had certificates {:.2}s after they started: not mid-issuance (lower --max-concurrent-issuance or raise --proxies)",
                    killed_after.as_secs_f64()
                );
            }
            let detail = format!(
                "killed {:.2}s after {n} proxies started, with {} of them holding a certificate and {} still waiting ({registered} registered)",
                killed_after.as_secs_f64(),
                holders.len(),
                n - holders.len()
            );
            Ok(((holders, registered), detail))
        }
        .await,
    )?;

    steps.check(
        "global marks the zone offline",
        async {
            let v = wait_until(
                "global to mark the zone offline",
                Duration::from_secs(30),
                Duration::from_millis(50),
                || async {
                    let v = c.global.api.get_ok(&format!("/zones/{ZONE}")).await.ok()?;
                    (v["online"] == false).then_some(v)
                },
            )
            .await?;
            Ok(format!(
                "GET /zones/{ZONE}: online=false, lastDisconnectReason: {}",
                v["lastDisconnectReason"].as_str().unwrap_or("")
            ))
        }
        .await,
    );

    steps.check(
        "proxies keep their files while the zone is down",
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut bad = Vec::new();
            for (name, serial) in &holders {
                match c.proxy(name)?.identity() {
                    Some(id) if id.serial() == serial && id.usable() => {}
                    Some(id) => bad.push(format!(
                        "{name}: now {} usable={}",
                        id.serial(),
                        id.usable()
                    )),
                    None => bad.push(format!("{name}: files gone")),
                }
            }
            if !bad.is_empty() {
                bail!("{}", bad.join("; "));
            }
            Ok(format!(
                "{} proxies still hold the same valid certificate, key and trust bundle",
                holders.len()
            ))
        }
        .await,
    );

    let restart_at = Instant::now();
    steps.must(
        "zone restarted: its store is intact",
        async {
            c.zone_mut(ZONE)?.restart().await?;
            let z = c.zone(ZONE)?;
            let after = held(&z.api.get_ok("/status").await?);
            if after != store_before {
                bail!("the store changed: before {store_before:?}, after {after:?}");
            }
            // Dataplane records are written without waiting for the disk: the last moments
            // before a SIGKILL may be missing, and the proxies register again when they reconnect.
            let dps = z.dataplanes().await?;
            let with_cert = dps.iter().filter(|d| d["serial"].is_string()).count();
            let types: Vec<String> = after
                .iter()
                .map(|(t, (count, _))| format!("{t} {count}"))
                .collect();
            Ok((
                (),
                format!(
                    "same Meshes and Secrets as before the kill (by digest): {}; dataplane records: {} of the {registered} registered before the kill, {} with a certificate",
                    types.join(", "),
                    dps.len(),
                    with_cert
                ),
            ))
        }
        .await,
    )?;

    steps.check(
        "global marks the zone online again",
        async {
            let v = wait_until(
                "global to mark the zone online",
                Duration::from_secs(60),
                Duration::from_millis(50),
                || async {
                    let v = c.global.api.get_ok(&format!("/zones/{ZONE}")).await.ok()?;
                    (v["online"] == true).then_some(v)
                },
            )
            .await?;
            Ok(format!(
                "GET /zones/{ZONE}: online=true, connects={}, disconnects={}",
                v["connects"], v["disconnects"]
            ))
        }
        .await,
    );

    let ok = steps.check(
        "every proxy reconnects and holds a certificate",
        async {
            let mut serials = BTreeMap::new();
            for name in &names {
                let id = c
                    .proxy_mut(name)?
                    .wait_identity(Duration::from_secs(90), "usable certificate", |id| id.usable())
                    .await?;
                serials.insert(name.clone(), id.serial().to_string());
            }
            wait_until(
                "every dataplane connected with the serial its files hold",
                Duration::from_secs(60),
                Duration::from_millis(100),
                || async {
                    let dps = c.zone(ZONE).ok()?.dataplanes().await.ok()?;
                    names
                        .iter()
                        .all(|name| {
                            dps.iter().any(|d| {
                                d["name"] == name.as_str()
                                    && d["connected"] == true
                                    && d["serial"].as_str() == serials.get(name).map(String::as_str)
                            })
                        })
                        .then_some(())
                },
            )
            .await?;
            Ok(format!(
                "{n} of {n} connected with usable certificates, {:.1}s after the restart; GET /dataplanes shows the serials the files hold",
                restart_at.elapsed().as_secs_f64()
            ))
        }
        .await,
    );

    if ok {
        steps.check(
            "no certificate lost or issued twice without need",
            async {
                let mut kept = 0;
                let mut changed = Vec::new();
                let mut seen = HashSet::new();
                for name in &names {
                    let id = c
                        .proxy(name)?
                        .identity()
                        .ok_or_else(|| anyhow::anyhow!("{name} has no files"))?;
                    if !seen.insert(id.serial().to_string()) {
                        bail!("serial {} held by two proxies", id.serial());
                    }
                    if let Some(before) = holders.get(name) {
                        if before == id.serial() {
                            kept += 1;
                        } else {
                            changed.push(format!(
                                "{name}: {} → {}",
                                short_serial(before),
                                short_serial(id.serial())
                            ));
                        }
                    }
                }
                let z = c.zone(ZONE)?;
                let issued = z.metric("kmesh_certificates_issued_total").await?;
                let reused = z.metric("kmesh_certificates_reused_total").await?;
                let needed = (n - holders.len()) as f64;
                if !changed.is_empty() {
                    bail!(
                        "certificates replaced although the proxies held valid ones: {}",
                        changed.join("; ")
                    );
                }
                if issued != needed {
                    bail!(
                        "the restarted zone issued {issued} certificates; {needed} proxies had none"
                    );
                }
                Ok(format!(
                    "{kept} proxies kept the certificate they held (restarted zone: kmesh_certificates_reused_total {reused}); \
                     it issued {issued} = one for each of the {needed} proxies without one; {n} distinct serials"
                ))
            }
            .await,
        );
    }
    Ok(())
}
