//! `scenarios failover-global`: global is killed (SIGKILL) while zones and proxies run.
//!
//! What it shows, step by step: zones notice and keep serving from their own store; a zone issues
//! a certificate to a proxy that starts during the outage; certificates are renewed during the
//! outage (the Mesh's short expiration puts a rotation inside it); a zone restarted during the
//! outage works from its store (its proxies reconnect, a new proxy gets a certificate); global
//! restarted on the same ports and data directory gets a new Mesh applied before the zones are
//! back; the zones reconnect, resync and receive it; global lists every dataplane again, those
//! born during the outage included.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use super::{CommonArgs, WorkDir, describe_cluster, describe_ids, wait_usable};
use crate::report::{Report, Steps};
use common::clock::now_unix;
use testkit::certs::{human_secs, short_serial};
use testkit::cluster::ProxySpec;
use testkit::cluster::{Cluster, ClusterOptions, MESH, builtin_mesh_yaml};
use testkit::wait::wait_until;

/// Options of the failover-global drill.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverGlobalOptions {
    /// Zones (at least 2: one keeps running, one is restarted during the outage).
    #[arg(long, default_value_t = 2)]
    pub zones: usize,
    /// Proxies per zone started before the outage.
    #[arg(long, default_value_t = 1)]
    pub proxies: usize,
    /// dpCert.rotation.expiration: short, so that renewals happen during the outage.
    #[arg(long, default_value = "20s")]
    pub expiration: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Default for FailoverGlobalOptions {
    fn default() -> Self {
        Self {
            zones: 2,
            proxies: 1,
            expiration: "20s".into(),
            common: CommonArgs::default(),
        }
    }
}

/// The Mesh applied to global right after its restart, before the zones are back.
const NEW_MESH: &str = "after-outage";

pub async fn run(opts: FailoverGlobalOptions) -> Result<Report> {
    let work = WorkDir::new("kmesh-failover-global", opts.common.dir.as_deref())?;
    let mut steps = Steps::new(
        "failover-global: global killed; zones keep issuing and renewing; global back, zones resync",
    );
    let outcome = body(&opts, &work, &mut steps).await;
    let report = steps.finish(outcome);
    print!("\n{}", report.summary());
    work.finish(report.passed());
    Ok(report)
}

async fn zone_global_connected(c: &Cluster, zone: &str) -> Option<(bool, String)> {
    let s = c.zone(zone).ok()?.api.get_ok("/status").await.ok()?;
    Some((
        s["global"]["connected"] == true,
        s["global"]["lastError"].as_str().unwrap_or("").to_string(),
    ))
}

async fn body(opts: &FailoverGlobalOptions, work: &WorkDir, steps: &mut Steps) -> Result<()> {
    let zones = opts.zones.max(2);
    let expiration = common::duration::parse_duration(&opts.expiration)?;
    let options = ClusterOptions {
        zones,
        ec_role: opts.common.ec,
        expiration: opts.expiration.clone(),
        ..Default::default()
    };
    let mut c = steps.must(
        "cluster up",
        async {
            let c = Cluster::start(work.path(), options).await?;
            c.wait_mesh_in_zones(MESH, Duration::from_secs(30)).await?;
            c.wait_zones_ready(Duration::from_secs(60)).await?;
            let detail = format!(
                "OpenBao with the page's steps, global, {zones} zones online, Mesh {MESH} (vault, expiration {})\n{}",
                opts.expiration,
                describe_cluster(&c)
            );
            Ok((c, detail))
        }
        .await,
    )?;
    let zone_names: Vec<String> = c.zones.iter().map(|z| z.name.clone()).collect();
    let restarted = zone_names[1].clone();

    // Proxies before the outage.
    let mut first = Vec::new();
    for (i, z) in zone_names.iter().enumerate() {
        for j in 1..=opts.proxies.max(1) {
            let spec =
                ProxySpec::new(MESH, &format!("web-z{}-{j}", i + 1), "web").tag("version", "v1");
            c.start_proxy(z, &spec).await?;
            first.push(spec.name);
        }
    }
    let before = steps.must(
        "proxies certified",
        async {
            let ids = wait_usable(&mut c, &first, Duration::from_secs(60)).await?;
            let d = describe_ids(&first, &ids);
            Ok((ids, d))
        }
        .await,
    )?;
    // Tokens for the proxies that start during the outage are minted now: global signs them.
    let late: Vec<(String, String)> = zone_names
        .iter()
        .take(2)
        .enumerate()
        .map(|(i, z)| (z.clone(), format!("late-z{}", i + 1)))
        .collect();
    let mut late_tokens = Vec::new();
    for (_, name) in &late {
        late_tokens.push(c.dataplane_token(MESH, name, "late").await?);
    }

    // The outage. What the proxies hold at this moment is what must be renewed without global.
    c.global.proc.kill9();
    let killed_at = Instant::now();
    let mut at_kill = Vec::new();
    for (name, fallback) in first.iter().zip(&before) {
        at_kill.push(
            c.proxy(name)?
                .identity()
                .unwrap_or_else(|| fallback.clone()),
        );
    }
    steps.must(
        "global killed (SIGKILL)",
        async {
            let mut lines = Vec::new();
            for z in &zone_names {
                let err = wait_until(
                    &format!("{z} to notice that global is gone"),
                    Duration::from_secs(30),
                    Duration::from_millis(100),
                    || async {
                        zone_global_connected(&c, z)
                            .await
                            .filter(|(connected, _)| !connected)
                            .map(|(_, e)| e)
                    },
                )
                .await?;
                lines.push(format!("{z}: GET /status global.connected=false ({err})"));
            }
            Ok((
                (),
                format!(
                    "{} zones see global gone and serve from their own store\n{}",
                    zone_names.len(),
                    lines.join("\n")
                ),
            ))
        }
        .await,
    )?;

    let (z1, n1) = late[0].clone();
    let spec1 = ProxySpec::new(MESH, &n1, "late");
    steps.check(
        &format!("{z1} issues to a new proxy while global is down"),
        async {
            c.start_proxy_with_token(&z1, &spec1, &late_tokens[0])?;
            let id = c
                .proxy_mut(&n1)?
                .wait_identity(Duration::from_secs(60), "usable certificate", |id| {
                    id.usable()
                })
                .await?;
            Ok(format!("{n1}: {}", id.describe()))
        }
        .await,
    );

    steps.check(
        "certificates renewed while global is down",
        async {
            let mut lines = Vec::new();
            for (name, old) in first.iter().zip(&at_kill) {
                let old_serial = old.serial().to_string();
                let old_after = old.leaf.not_after;
                let id = c
                    .proxy_mut(name)?
                    .wait_identity(
                        expiration + Duration::from_secs(30),
                        "renewed certificate",
                        |id| {
                            id.usable()
                                && id.serial() != old_serial
                                && id.leaf.not_after > old_after
                        },
                    )
                    .await?;
                lines.push(format!(
                    "{name}: serial {} → {}, now expires in {} (the old one {})",
                    short_serial(&old_serial),
                    short_serial(id.serial()),
                    human_secs(id.leaf.not_after - now_unix()),
                    if old_after > now_unix() {
                        format!("had {} left", human_secs(old_after - now_unix()))
                    } else {
                        "has expired since".into()
                    }
                ));
            }
            if c.global.proc.is_running() {
                bail!("global is running again?");
            }
            lines.push(format!(
                "global down for {} so far",
                human_secs(killed_at.elapsed().as_secs() as i64)
            ));
            Ok(lines.join("\n"))
        }
        .await,
    );

    let (z2, n2) = late[1].clone();
    let spec2 = ProxySpec::new(MESH, &n2, "late");
    let restarted_proxies: Vec<String> = c
        .proxies
        .iter()
        .filter(|p| p.zone == restarted)
        .map(|p| p.name.clone())
        .collect();
    steps.check(
        &format!("{restarted} restarted while global is down works from its store"),
        async {
            c.zone_mut(&restarted)?.restart().await?;
            let z = c.zone(&restarted)?;
            let (status, _) = z.api.get(&format!("/meshes/{MESH}")).await?;
            if status != 200 {
                bail!("GET /meshes/{MESH} on the restarted zone: {status}");
            }
            let st = z.api.get_ok("/status").await?;
            wait_until(
                "the restarted zone's proxies to reconnect",
                Duration::from_secs(60),
                Duration::from_millis(100),
                || async {
                    let dps = c.zone(&restarted).ok()?.dataplanes().await.ok()?;
                    restarted_proxies
                        .iter()
                        .all(|n| dps.iter().any(|d| d["name"] == n.as_str() && d["connected"] == true))
                        .then_some(())
                },
            )
            .await?;
            c.start_proxy_with_token(&z2, &spec2, &late_tokens[1])?;
            let id = c
                .proxy_mut(&n2)?
                .wait_identity(Duration::from_secs(60), "usable certificate", |id| id.usable())
                .await?;
            Ok(format!(
                "store: Mesh {} / Secret {} held; global.connected={}; {} reconnected; new proxy {n2}: serial {}, {}",
                st["types"]["Mesh"]["count"],
                st["types"]["Secret"]["count"],
                st["global"]["connected"],
                restarted_proxies.join(", "),
                short_serial(id.serial()),
                id.leaf.uri_sans.join(" ")
            ))
        }
        .await,
    );

    // Global back, and a change made while the zones are still away.
    let down_for = killed_at.elapsed();
    let back_at = steps.must(
        "global back on the same ports and data dir, a new Mesh applied at once",
        async {
            c.global.restart().await?;
            let back_at = Instant::now();
            c.global.apply(&builtin_mesh_yaml(NEW_MESH, "1h")).await?;
            let applied_after = back_at.elapsed();
            let zones_view = c.global.api.get_ok("/zones").await?;
            let online: Vec<String> = zones_view["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|z| format!("{}={}", z["name"].as_str().unwrap_or(""), if z["online"] == true { "online" } else { "offline" }))
                .collect();
            Ok((
                back_at,
                format!(
                    "global was down {}; API {} again; Mesh {NEW_MESH} (builtin) applied {:.0} ms after the restart, zones then: {}",
                    human_secs(down_for.as_secs() as i64),
                    c.global.api_url(),
                    applied_after.as_secs_f64() * 1000.0,
                    online.join(", ")
                ),
            ))
        }
        .await,
    )?;

    steps.check(
        "zones reconnect and resync; the change made while they were away arrives",
        async {
            let mut lines = Vec::new();
            for z in &zone_names {
                wait_until(
                    &format!("{z} online at global with {NEW_MESH}"),
                    Duration::from_secs(90),
                    Duration::from_millis(100),
                    || async {
                        let v = c.global.api.get_ok(&format!("/zones/{z}")).await.ok()?;
                        if v["online"] != true {
                            return None;
                        }
                        let zone = c.zone(z).ok()?;
                        let (s, _) = zone.api.get(&format!("/meshes/{NEW_MESH}")).await.ok()?;
                        (s == 200).then_some(())
                    },
                )
                .await?;
                lines.push(format!(
                    "{z}: online, holds Mesh {NEW_MESH} {:.1}s after global came back",
                    back_at.elapsed().as_secs_f64()
                ));
            }
            // Same contents everywhere: equal digests of what each zone holds.
            let mut digests = Vec::new();
            for z in &zone_names {
                let st = c.zone(z)?.api.get_ok("/status").await?;
                digests.push((
                    st["types"]["Mesh"]["digest"].clone(),
                    st["types"]["Secret"]["digest"].clone(),
                    st["types"]["Mesh"]["count"].clone(),
                ));
            }
            if digests.windows(2).any(|w| w[0] != w[1]) {
                bail!("zones hold different contents: {digests:?}");
            }
            let meshes = c.global.api.get_ok("/meshes").await?;
            if meshes["total"] != digests[0].2 {
                bail!(
                    "global holds {} Meshes, zones {}",
                    meshes["total"],
                    digests[0].2
                );
            }
            lines.push(format!(
                "every zone holds the same {} Meshes as global (equal digests)",
                meshes["total"]
            ));
            Ok(lines.join("\n"))
        }
        .await,
    );

    let all: Vec<String> = c.proxies.iter().map(|p| p.name.clone()).collect();
    steps.check(
        "global lists every dataplane, those born during the outage included",
        async {
            let items: Vec<Value> = wait_until(
                "global to list every dataplane with a certificate",
                Duration::from_secs(60),
                Duration::from_millis(200),
                || async {
                    let v = c
                        .global
                        .api
                        .get_ok(&format!("/meshes/{MESH}/dataplanes"))
                        .await
                        .ok()?;
                    let items = v["items"].as_array()?.clone();
                    all.iter()
                        .all(|n| {
                            items.iter().any(|d| {
                                d["name"] == n.as_str()
                                    && d["connected"] == true
                                    && d["certificate"]["serial"].is_string()
                            })
                        })
                        .then_some(items)
                },
            )
            .await?;
            let born: Vec<&str> = late.iter().map(|(_, n)| n.as_str()).collect();
            let lines: Vec<String> = items
                .iter()
                .map(|d| {
                    format!(
                        "{} ({}): {} serial {}",
                        d["name"].as_str().unwrap_or(""),
                        d["zone"].as_str().unwrap_or(""),
                        d["certificate"]["backend"].as_str().unwrap_or(""),
                        short_serial(d["certificate"]["serial"].as_str().unwrap_or(""))
                    )
                })
                .collect();
            Ok(format!(
                "GET /meshes/{MESH}/dataplanes: {} dataplanes with certificates, {} born during the outage\n{}",
                items.len(),
                born.join(" and "),
                lines.join("\n")
            ))
        }
        .await,
    );
    Ok(())
}
