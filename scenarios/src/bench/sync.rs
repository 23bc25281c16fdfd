//! `scenarios bench sync`: how fast and how cheaply Meshes and Secrets reach zones. Real `global`
//! and `zone` processes on loopback. Latencies are taken from global's own record of each zone's
//! ACK (`GET /zones` → `types.Mesh.lastAcked`), which the zone sends after the update is committed
//! to its sled store, so the figures do not depend on how often the bench polls. With
//! `--replicas N` global runs as N replicas on a private PostgreSQL server; each change is made on
//! the first, and the zones held by the others give the cross-replica figure.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

use crate::report::{Stats, Table};
use testkit::cluster::{GlobalProc, ZoneProc, start_replicas};
use testkit::postgres::PgServer;
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
    /// global replicas: with more than 1, they share a private PostgreSQL server, zone `i` is
    /// given replica `i mod N` alone, every change is made through the first replica, and the
    /// latencies of the zones on the other replicas are reported apart.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
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

/// global's replicas, and which one each zone was given (the first unless said otherwise). A
/// zone's record is read from the replica holding its stream, whose counts are live.
struct Fleet {
    globals: Vec<GlobalProc>,
    home: HashMap<String, usize>,
}

impl Fleet {
    fn home_of(&self, zone: &str) -> &GlobalProc {
        &self.globals[self.home.get(zone).copied().unwrap_or(0)]
    }

    /// Every zone's record, each from its own replica.
    async fn zones_view(&self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for (i, g) in self.globals.iter().enumerate() {
            let v = g.api.get_ok("/zones").await?;
            out.extend(
                v.get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|z| {
                        let name = z["name"].as_str().unwrap_or("");
                        self.home.get(name).copied().unwrap_or(0) == i
                    })
                    .cloned(),
            );
        }
        Ok(out)
    }

    async fn zone_view(&self, name: &str) -> Result<Value> {
        self.home_of(name)
            .api
            .get_ok(&format!("/zones/{name}"))
            .await
    }
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
    let replicas = params.replicas.max(1);
    let pg = if replicas > 1 {
        Some(tokio::task::spawn_blocking(PgServer::start).await??)
    } else {
        None
    };
    let mut fleet = Fleet {
        globals: match &pg {
            Some(pg) => start_replicas(dir.path(), replicas, &pg.url()).await?,
            None => vec![GlobalProc::start(&dir.path().join("global")).await?],
        },
        home: HashMap::new(),
    };
    let mut zones = Vec::new();
    for i in 0..params.zones {
        let name = format!("zone-{i}");
        let token = fleet.globals[0].zone_token_file(&name, dir.path()).await?;
        let home = &fleet.globals[i % replicas];
        zones.push(ZoneProc::start(&name, home, &token, &dir.path().join(&name)).await?);
        fleet.home.insert(name, i % replicas);
    }
    let global = &fleet.globals[0];
    let names: Vec<String> = zones.iter().map(|z| z.name.clone()).collect();
    // All zones online and subscribed.
    wait_until(
        "all zones online",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let all = fleet.zones_view().await.ok()?;
            let online = all.iter().filter(|z| z["online"] == true).count();
            (online == names.len()).then_some(())
        },
    )
    .await?;

    // 1. Propagation latency of one Mesh change to every zone's store.
    global
        .apply("type: Mesh\nname: bench-prop\nlabels:\n  seq: \"0\"\n")
        .await?;
    wait_acked(&fleet, &names, "Mesh", None).await?;
    let mut to_all = Vec::new();
    let mut per_zone = Vec::new();
    // Zones on another replica than the one the change was made on.
    let mut other_replica = Vec::new();
    let mut bytes_small = Vec::new();
    for seq in 1..=params.changes {
        let before: Vec<(u64, u64)> = {
            let all = fleet.zones_view().await?;
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
            &fleet,
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
            if fleet.home.get(&names[i]).copied().unwrap_or(0) != 0 {
                other_replica.push(lat);
            }
            worst = worst.max(lat);
            bytes_small.push((type_stat(z, "Mesh", "bytesSent") - before[i].1) as f64);
        }
        to_all.push(worst);
    }
    let to_all = Stats::of(&to_all);
    let per_zone = Stats::of(&per_zone);
    let other_replica = Stats::of(&other_replica);
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
    // With replicas it is given the last one, so it syncs from a replica that took no write.
    let fresh_name = "zone-fresh";
    let token = global.zone_token_file(fresh_name, dir.path()).await?;
    fleet.home.insert(fresh_name.to_string(), replicas - 1);
    let t0 = Instant::now();
    let t0_wall = now_ms();
    let fresh = ZoneProc::start(
        fresh_name,
        fleet.home_of(fresh_name),
        &token,
        &dir.path().join(fresh_name),
    )
    .await?;
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
    let fresh_view = fleet.zone_view(fresh_name).await?;
    let initial_bytes =
        type_stat(&fresh_view, "Mesh", "bytesSent") + type_stat(&fresh_view, "Secret", "bytesSent");
    let initial_responses =
        type_stat(&fresh_view, "Mesh", "sent") + type_stat(&fresh_view, "Secret", "sent");

    // 4. Bytes sent to a zone for one Mesh change with the full store.
    let mut bytes_big = Vec::new();
    for seq in 1..=10 {
        let before = type_stat(&fleet.zone_view(fresh_name).await?, "Mesh", "acked");
        let before_bytes = type_stat(&fleet.zone_view(fresh_name).await?, "Mesh", "bytesSent");
        fleet.globals[0]
            .api
            .write_ok(
                reqwest::Method::PUT,
                "/meshes/m-00000",
                &format!("type: Mesh\nname: m-00000\nlabels:\n  seq: \"{seq}\"\n"),
            )
            .await?;
        let after = wait_acked(&fleet, &[fresh_name.to_string()], "Mesh", Some(&[before])).await?;
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
    if replicas > 1 {
        t.row(&[
            format!(
                "change on replica 1 → ACK by a zone on another of the {replicas} replicas, p50 / p99"
            ),
            format!("{:.1} / {:.1} ms", other_replica.p50, other_replica.p99),
            "p99 < 100 ms".into(),
        ]);
    }
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
    drop(fleet);
    drop(pg);
    Ok(())
}

/// Waits until every named zone's `acked` count of `ty` exceeds `before` (or, without `before`,
/// until each has acknowledged at least once and is not behind), returning their views.
async fn wait_acked(
    fleet: &Fleet,
    names: &[String],
    ty: &str,
    before: Option<&[u64]>,
) -> Result<Vec<Value>> {
    wait_until(
        "zones to acknowledge",
        Duration::from_secs(30),
        Duration::from_millis(2),
        || async {
            let all = fleet.zones_view().await.ok()?;
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
