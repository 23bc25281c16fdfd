//! `scenarios bench sync`: how fast and how cheaply Meshes and Secrets reach zones. Real `global`
//! and `zone` processes on loopback. Latencies are taken from global's own record of each zone's
//! ACK (`GET /zones` → `types.Mesh.lastAcked`), which the zone sends after the update is committed
//! to its sled store, so the figures do not depend on how often the bench polls.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

use crate::report::{Stats, Table};
use testkit::cluster::{GlobalProc, ZoneProc};
use testkit::wait::wait_until;

/// Parameters of the sync benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct SyncBench {
    /// Zones connected during the latency measurement.
    #[arg(long, default_value_t = 10)]
    pub zones: usize,
    /// Mesh changes whose propagation is timed.
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// Meshes stored for the initial-sync and per-change-size measurements.
    #[arg(long, default_value_t = 1000)]
    pub meshes: usize,
    /// Secrets stored (spread over the meshes).
    #[arg(long, default_value_t = 10000)]
    pub secrets: usize,
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn parse_ms(v: &Value) -> Option<f64> {
    let s = v.as_str()?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e6)
}

fn type_stat(zone: &Value, ty: &str, field: &str) -> u64 {
    zone.get("types")
        .and_then(|t| t.get(ty))
        .and_then(|t| t.get(field))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

async fn zones_view(global: &GlobalProc) -> Result<Vec<Value>> {
    let v = global.api.get_ok("/zones").await?;
    Ok(v.get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

async fn zone_view(global: &GlobalProc, name: &str) -> Result<Value> {
    global.api.get_ok(&format!("/zones/{name}")).await
}

pub async fn run(params: SyncBench) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("bench-sync-").tempdir()?;
    println!(
        "bench sync: {} zones, {} changes, {} meshes, {} secrets (logs in {})",
        params.zones,
        params.changes,
        params.meshes,
        params.secrets,
        dir.path().display()
    );
    let global = GlobalProc::start(&dir.path().join("global")).await?;
    let mut zones = Vec::new();
    for i in 0..params.zones {
        let name = format!("zone-{i}");
        let token = global.zone_token_file(&name, dir.path()).await?;
        zones.push(ZoneProc::start(&name, &global, &token, &dir.path().join(&name)).await?);
    }
    let names: Vec<String> = zones.iter().map(|z| z.name.clone()).collect();
    // All zones online and subscribed.
    wait_until(
        "all zones online",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let all = zones_view(&global).await.ok()?;
            let online = all.iter().filter(|z| z["online"] == true).count();
            (online == names.len()).then_some(())
        },
    )
    .await?;

    // 1. Propagation latency of one Mesh change to every zone's store.
    global
        .apply("type: Mesh\nname: bench-prop\nlabels:\n  seq: \"0\"\n")
        .await?;
    wait_acked(&global, &names, "Mesh", None).await?;
    let mut to_all = Vec::new();
    let mut per_zone = Vec::new();
    let mut bytes_small = Vec::new();
    for seq in 1..=params.changes {
        let before: Vec<(u64, u64)> = {
            let all = zones_view(&global).await?;
            names
                .iter()
                .map(|n| {
                    let z = all
                        .iter()
                        .find(|z| z["name"] == n.as_str())
                        .cloned()
                        .unwrap_or(Value::Null);
                    (
                        type_stat(&z, "Mesh", "acked"),
                        type_stat(&z, "Mesh", "bytesSent"),
                    )
                })
                .collect()
        };
        let t0 = now_ms();
        global
            .api
            .write_ok(
                reqwest::Method::PUT,
                "/meshes/bench-prop",
                &format!("type: Mesh\nname: bench-prop\nlabels:\n  seq: \"{seq}\"\n"),
            )
            .await?;
        let after = wait_acked(
            &global,
            &names,
            "Mesh",
            Some(&before.iter().map(|b| b.0).collect::<Vec<_>>()),
        )
        .await?;
        let mut worst: f64 = 0.0;
        for (i, z) in after.iter().enumerate() {
            let acked_at = parse_ms(&z["types"]["Mesh"]["lastAcked"])
                .ok_or_else(|| anyhow!("no lastAcked in {z}"))?;
            let lat = (acked_at - t0).max(0.0);
            per_zone.push(lat);
            worst = worst.max(lat);
            bytes_small.push((type_stat(z, "Mesh", "bytesSent") - before[i].1) as f64);
        }
        to_all.push(worst);
    }
    let to_all = Stats::of(&to_all);
    let per_zone = Stats::of(&per_zone);
    let bytes_small = Stats::of(&bytes_small);

    // 2. Load the store: meshes and secrets, in batches of one mesh with its secrets per document set.
    let load_start = Instant::now();
    let per_mesh = params.secrets.div_ceil(params.meshes.max(1));
    let mut made_secrets = 0;
    let batch_meshes = 50;
    for chunk_start in (0..params.meshes).step_by(batch_meshes) {
        let mut yaml = String::new();
        for m in chunk_start..(chunk_start + batch_meshes).min(params.meshes) {
            yaml.push_str(&format!("---\ntype: Mesh\nname: m-{m:05}\n"));
            for s in 0..per_mesh {
                if made_secrets >= params.secrets {
                    break;
                }
                made_secrets += 1;
                // 96 bytes of data, like a token.
                yaml.push_str(&format!(
                    "---\ntype: Secret\nname: s-{s:03}\nmesh: m-{m:05}\ndata: {}\n",
                    testkit::cluster::b64(&format!("{m:05}-{s:03}-{}", "x".repeat(84)))
                ));
            }
        }
        global
            .apply(&yaml)
            .await
            .context("loading meshes and secrets")?;
    }
    let load_secs = load_start.elapsed().as_secs_f64();
    // The connected zones catch up too.
    let total_meshes = params.meshes as u64 + 1;
    let total_secrets = made_secrets as u64;
    wait_zone_counts(
        &zones[0],
        total_meshes,
        total_secrets,
        Duration::from_secs(120),
    )
    .await?;

    // 3. A new zone's initial sync of everything.
    let fresh_name = "zone-fresh";
    let token = global.zone_token_file(fresh_name, dir.path()).await?;
    let t0 = Instant::now();
    let t0_wall = now_ms();
    let fresh = ZoneProc::start(fresh_name, &global, &token, &dir.path().join(fresh_name)).await?;
    let started = t0.elapsed();
    wait_zone_counts(
        &fresh,
        total_meshes,
        total_secrets,
        Duration::from_secs(120),
    )
    .await?;
    let synced = t0.elapsed();
    let status = fresh.api.get_ok("/status").await?;
    let connected_ms = parse_ms(&status["global"]["since"]).unwrap_or(0.0);
    let fresh_view = zone_view(&global, fresh_name).await?;
    let initial_bytes =
        type_stat(&fresh_view, "Mesh", "bytesSent") + type_stat(&fresh_view, "Secret", "bytesSent");
    let initial_responses =
        type_stat(&fresh_view, "Mesh", "sent") + type_stat(&fresh_view, "Secret", "sent");

    // 4. Bytes sent to a zone for one Mesh change with the full store.
    let mut bytes_big = Vec::new();
    for seq in 1..=10 {
        let before = type_stat(&zone_view(&global, fresh_name).await?, "Mesh", "acked");
        let before_bytes = type_stat(&zone_view(&global, fresh_name).await?, "Mesh", "bytesSent");
        global
            .api
            .write_ok(
                reqwest::Method::PUT,
                "/meshes/m-00000",
                &format!("type: Mesh\nname: m-00000\nlabels:\n  seq: \"{seq}\"\n"),
            )
            .await?;
        let after = wait_acked(&global, &[fresh_name.to_string()], "Mesh", Some(&[before])).await?;
        bytes_big.push((type_stat(&after[0], "Mesh", "bytesSent") - before_bytes) as f64);
    }
    let bytes_big = Stats::of(&bytes_big);

    let mut t = Table::new(&["measure", "value", "target"]);
    t.row(&[
        "Mesh change → all zones' stores, p50".into(),
        format!("{:.1} ms", to_all.p50),
        "".into(),
    ]);
    t.row(&[
        "Mesh change → all zones' stores, p99".into(),
        format!("{:.1} ms", to_all.p99),
        "< 50 ms (Kuma: 1 s refresh)".into(),
    ]);
    t.row(&[
        "Mesh change → one zone's store, p50 / p99".into(),
        format!("{:.1} / {:.1} ms", per_zone.p50, per_zone.p99),
        "".into(),
    ]);
    t.row(&[
        format!(
            "bytes per Mesh change, 1 mesh stored ({} samples)",
            bytes_small.n
        ),
        format!("{:.0} B", bytes_small.p50),
        "".into(),
    ]);
    t.row(&[
        format!("bytes per Mesh change, {} meshes stored", total_meshes),
        format!("{:.0} B", bytes_big.p50),
        "must not grow".into(),
    ]);
    t.row(&[
        format!(
            "load {} meshes + {} secrets through the API",
            params.meshes, made_secrets
        ),
        format!("{:.2} s", load_secs),
        "".into(),
    ]);
    t.row(&[
        "initial sync of a new zone: process start → store complete".into(),
        format!("{:.2} s", synced.as_secs_f64()),
        "< 2 s".into(),
    ]);
    t.row(&[
        "  of which: process start → API up".into(),
        format!("{:.2} s", started.as_secs_f64()),
        "".into(),
    ]);
    if connected_ms > 0.0 {
        let since_connect = t0_wall + synced.as_secs_f64() * 1000.0 - connected_ms;
        t.row(&[
            "  of which: stream connected → store complete".into(),
            format!("{:.2} s", since_connect / 1000.0),
            "".into(),
        ]);
    }
    t.row(&[
        "initial sync bytes (before gzip) / responses".into(),
        format!(
            "{:.1} MB / {}",
            initial_bytes as f64 / 1e6,
            initial_responses
        ),
        "".into(),
    ]);
    println!("\n{}", t.render());
    drop(fresh);
    drop(zones);
    drop(global);
    Ok(())
}

/// Waits until every named zone's `acked` count of `ty` exceeds `before` (or, without `before`,
/// until each has acknowledged at least once and is not behind), returning their views.
async fn wait_acked(
    global: &GlobalProc,
    names: &[String],
    ty: &str,
    before: Option<&[u64]>,
) -> Result<Vec<Value>> {
    wait_until(
        "zones to acknowledge",
        Duration::from_secs(30),
        Duration::from_millis(2),
        || async {
            let all = zones_view(global).await.ok()?;
            let mut out = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let z = all.iter().find(|z| z["name"] == n.as_str())?.clone();
                let acked = type_stat(&z, ty, "acked");
                let sent = type_stat(&z, ty, "sent");
                let done = match before {
                    Some(b) => acked > b[i] && acked >= sent,
                    None => acked >= 1 && acked >= sent,
                };
                if !done {
                    return None;
                }
                out.push(z);
            }
            Some(out)
        },
    )
    .await
}

async fn wait_zone_counts(
    zone: &ZoneProc,
    meshes: u64,
    secrets: u64,
    timeout: Duration,
) -> Result<()> {
    wait_until(
        "the zone's store to hold everything",
        timeout,
        Duration::from_millis(10),
        || async {
            let s = zone.api.get_ok("/status").await.ok()?;
            let m = s["types"]["Mesh"]["count"].as_u64()?;
            let sec = s["types"]["Secret"]["count"].as_u64()?;
            (m >= meshes && sec >= secrets).then_some(())
        },
    )
    .await
}
