//! `scenarios bench zones`: many zone streams spread over global's replicas on PostgreSQL. The
//! bench plays the zones itself (as `bench issue` plays the proxies): each played zone has its own
//! zone token, its own TLS connection to one replica (round robin), subscribes to Meshes and
//! Secrets as a zone does, and acknowledges every response. It measures:
//! 1. each replica's memory per zone stream: its RSS with every stream synced, less its RSS before
//!    the streams, over the streams it holds;
//! 2. fan-out: a Mesh changed through the first replica's API, timed from just before the `PUT`
//!    until every played zone, on every replica, has received it (receipt times taken in this
//!    process as each response arrives, so the figure does not depend on polling).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Method;
use tokio::sync::Mutex;

use crate::bench::issue::rss_kb;
use crate::report::{Stats, Table};
use testkit::cluster::start_replicas;
use testkit::kds::RawZone;
use testkit::postgres::PgServer;
use testkit::wait::wait_until;

#[derive(Debug, Clone, clap::Args)]
pub struct ZonesBench {
    /// Zone streams played, spread round robin over the replicas.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// global replicas on one private PostgreSQL server.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Mesh changes whose fan-out to every stream is timed.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
}

/// The Mesh whose changes are timed.
const FANOUT_MESH: &str = "bench-fanout";
/// Streams connecting at once.
const CONNECT_CONCURRENCY: usize = 50;

/// What every played zone shares with the bench: the round being timed and, per stream, when it
/// received that round's change.
struct Shared {
    round: AtomicUsize,
    /// Per stream: (round, received at) of the last fan-out Mesh received.
    received: Vec<Mutex<(usize, Option<Instant>)>>,
    /// Streams that have received both initial states.
    synced: AtomicUsize,
}

pub async fn run(p: ZonesBench) -> Result<()> {
    if p.streams == 0 || p.replicas == 0 {
        bail!("--streams and --replicas must be at least 1");
    }
    let dir = tempfile::Builder::new().prefix("bench-zones-").tempdir()?;
    println!(
        "bench zones: {} zone streams over {} replicas, {} changes (logs in {})",
        p.streams,
        p.replicas,
        p.changes,
        dir.path().display()
    );
    let result = measure(&p, dir.path()).await;
    if result.is_err() {
        let kept = dir.keep();
        eprintln!("logs kept in {}", kept.display());
    }
    result
}

async fn measure(p: &ZonesBench, dir: &std::path::Path) -> Result<()> {
    let pg = tokio::task::spawn_blocking(PgServer::start).await??;
    let globals = start_replicas(dir, p.replicas, &pg.url()).await?;
    globals[0]
        .apply(&format!(
            "type: Mesh\nname: {FANOUT_MESH}\nlabels:\n  seq: \"0\"\n"
        ))
        .await?;
    // Tokens first, so that minting them is not counted in any replica's memory.
    let names: Vec<String> = (0..p.streams).map(|i| format!("z-{i:05}")).collect();
    let mut tokens = Vec::with_capacity(p.streams);
    for name in &names {
        let v = globals[0]
            .api
            .write_ok(
                Method::POST,
                "/tokens/zone",
                &serde_json::json!({ "zone": name }).to_string(),
            )
            .await?;
        tokens.push(
            v["token"]
                .as_str()
                .ok_or_else(|| anyhow!("no token in POST /tokens/zone"))?
                .to_string(),
        );
    }
    let pids: Vec<u32> = globals.iter().map(|g| g.proc.pid().unwrap_or(0)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before: Vec<u64> = pids.iter().map(|pid| rss_kb(*pid)).collect();

    let shared = Arc::new(Shared {
        round: AtomicUsize::new(0),
        received: (0..p.streams).map(|_| Mutex::new((0, None))).collect(),
        synced: AtomicUsize::new(0),
    });
    let ca = std::fs::read(globals[0].ca_file())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let connect_start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = Vec::with_capacity(p.streams);
    for (i, (name, token)) in names.iter().zip(tokens).enumerate() {
        let g = &globals[i % globals.len()];
        let permit = sem.clone().acquire_owned().await?;
        let zone = RawZone::connect(g.kds_port, &ca, name, &token).await;
        drop(permit);
        let zone = zone.with_context(|| format!("stream {name} to replica {}", g.kds_port))?;
        tasks.push(tokio::spawn(play_zone(
            i,
            zone,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    wait_until(
        "every played zone to receive both initial states",
        Duration::from_secs(300),
        Duration::from_millis(50),
        || async {
            if tasks.iter().any(|t| t.is_finished()) {
                return Some(Err(anyhow!("a played zone's stream ended")));
            }
            (shared.synced.load(Ordering::SeqCst) == p.streams).then_some(Ok(()))
        },
    )
    .await??;
    let connected_in = connect_start.elapsed();
    // Let the replicas settle (zone records persisted, buffers sized) before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after: Vec<u64> = pids.iter().map(|pid| rss_kb(*pid)).collect();

    // Fan-out of one change to every stream.
    let mut to_all = Vec::new();
    let mut per_stream = Vec::new();
    for round in 1..=p.changes {
        shared.round.store(round, Ordering::SeqCst);
        let t0 = Instant::now();
        globals[0]
            .api
            .write_ok(
                Method::PUT,
                &format!("/meshes/{FANOUT_MESH}"),
                &format!("type: Mesh\nname: {FANOUT_MESH}\nlabels:\n  seq: \"{round}\"\n"),
            )
            .await?;
        let times = wait_until(
            "every played zone to receive the change",
            Duration::from_secs(60),
            Duration::from_millis(2),
            || async {
                let mut out = Vec::with_capacity(p.streams);
                for slot in &shared.received {
                    match *slot.lock().await {
                        (r, Some(at)) if r == round => out.push(at),
                        _ => return None,
                    }
                }
                Some(out)
            },
        )
        .await?;
        let lat: Vec<f64> = times
            .iter()
            .map(|at| at.saturating_duration_since(t0).as_secs_f64() * 1000.0)
            .collect();
        to_all.push(lat.iter().cloned().fold(0.0, f64::max));
        per_stream.extend(lat);
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        t.abort();
    }
    let to_all = Stats::of(&to_all);
    let per_stream = Stats::of(&per_stream);

    let mut t = Table::new(&["measure", "value", "target"]);
    t.row(&[
        format!(
            "{} zone streams connected and synced (from the first dial)",
            p.streams
        ),
        format!("{:.2} s", connected_in.as_secs_f64()),
        String::new(),
    ]);
    for (i, g) in globals.iter().enumerate() {
        let held = (0..p.streams).filter(|s| s % globals.len() == i).count();
        let delta = rss_after[i].saturating_sub(rss_before[i]);
        t.row(&[
            format!(
                "replica {} (API :{}): RSS before / with {held} streams, per stream",
                i + 1,
                g.api_port
            ),
            format!(
                "{:.1} / {:.1} MB, {:.1} KB",
                rss_before[i] as f64 / 1024.0,
                rss_after[i] as f64 / 1024.0,
                delta as f64 / held.max(1) as f64
            ),
            "< 100 KB per stream".into(),
        ]);
    }
    t.row(&[
        format!(
            "one Mesh change → all {} streams, p50 / p99 ({} changes)",
            p.streams, to_all.n
        ),
        format!("{:.1} / {:.1} ms", to_all.p50, to_all.p99),
        "p99 < 500 ms".into(),
    ]);
    t.row(&[
        "one Mesh change → one stream, p50 / p99".into(),
        format!("{:.1} / {:.1} ms", per_stream.p50, per_stream.p99),
        String::new(),
    ]);
    println!("\n{}", t.render());
    drop(globals);
    drop(pg);
    Ok(())
}

/// One played zone: subscribes to every synced kind with nothing held, acknowledges every
/// response, and notes when it receives the fan-out Mesh of the current round.
async fn play_zone(
    index: usize,
    mut zone: RawZone,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let mut initial_seen = 0;
    loop {
        let resp = tokio::select! {
            r = zone.next() => r?,
            _ = stop.changed() => return Ok(()),
        };
        let Some(resp) = resp else {
            bail!("global ended the stream of played zone {index}");
        };
        if resp.r#type == "Mesh" && resp.resources.iter().any(|r| r.name == FANOUT_MESH) {
            let round = shared.round.load(Ordering::SeqCst);
            *shared.received[index].lock().await = (round, Some(Instant::now()));
        }
        if resp.initial && !resp.more {
            initial_seen += 1;
            if initial_seen == common::sync::SYNCED_KINDS.len() {
                shared.synced.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}
