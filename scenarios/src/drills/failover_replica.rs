//! `scenarios failover-replica`: global runs as three replicas on one PostgreSQL while 50 writers
//! create and update Secrets through all of them; replicas are SIGKILLed, one is hung (SIGSTOP),
//! PostgreSQL restarts.
//!
//! What it shows, step by step: every replica lists three alive with one leader; the zone whose
//! replica is SIGKILLed moves to another within 10 s and its proxies keep their certificates; the
//! zones on a hung replica move too and leadership, if it held it, moves within 30 s; while
//! PostgreSQL is down writes answer 503 and resume by themselves; the killed replica restarted on
//! its data directory and ports serves the same Meshes and Secrets as the others; after more
//! SIGKILLs of random replicas under the writers, no acknowledged write is lost (every Secret
//! present with the version last acknowledged, on every replica); global lists every dataplane.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use reqwest::Method;
use serde_json::Value;

use super::{CommonArgs, WorkDir};
use crate::report::{Report, Steps};
use testkit::api::Api;
use testkit::certs::short_serial;
use testkit::cluster::{
    GlobalProc, MESH, ProxyProc, ProxySpec, ZoneOptions, ZoneProc, b64, builtin_mesh_yaml,
    start_replicas,
};
use testkit::postgres::PgServer;
use testkit::wait::wait_until;

/// Options of the failover-replica drill.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverReplicaOptions {
    /// Concurrent writers (each PUTs Secrets round-robin over the replicas).
    #[arg(long, default_value_t = 50)]
    pub writers: usize,
    /// SIGKILLs of replicas in all (the first in step 3, the others of random replicas).
    #[arg(long, default_value_t = 4)]
    pub kills: usize,
    /// Proxies per zone.
    #[arg(long, default_value_t = 2)]
    pub proxies: usize,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Default for FailoverReplicaOptions {
    fn default() -> Self {
        Self {
            writers: 50,
            kills: 4,
            proxies: 2,
            common: CommonArgs::default(),
        }
    }
}

const REPLICAS: usize = 3;
/// The Mesh holding the writers' Secrets (no mTLS).
const WRITES_MESH: &str = "writes";
/// Any request to a replica: a hung one must not hold up a writer or a check.
const REQUEST_LIMIT: Duration = Duration::from_secs(3);

pub async fn run(opts: FailoverReplicaOptions) -> Result<Report> {
    let work = WorkDir::new("kmesh-failover-replica", opts.common.dir.as_deref())?;
    let mut steps = Steps::new(
        "failover-replica: 3 replicas on PostgreSQL under writers; SIGKILL, SIGSTOP, PostgreSQL restart",
    );
    let outcome = body(&opts, &work, &mut steps).await;
    let report = steps.finish(outcome);
    print!("\n{}", report.summary());
    work.finish(report.passed());
    Ok(report)
}

/// A request bounded by [`REQUEST_LIMIT`].
async fn bounded<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(REQUEST_LIMIT, f)
        .await
        .map_err(|_| anyhow!("no answer within {REQUEST_LIMIT:?}"))?
}

async fn replicas_view(g: &Api) -> Option<Value> {
    bounded(g.get_ok("/replicas")).await.ok()
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// API addresses (`127.0.0.1:port`) of the alive leaders in a `GET /replicas` answer.
fn leaders(v: &Value) -> Vec<String> {
    items(v)
        .iter()
        .filter(|r| r["leader"] == true && r["alive"] == true)
        .filter_map(|r| r["apiAddress"].as_str().map(str::to_string))
        .collect()
}

fn api_addr(g: &GlobalProc) -> String {
    format!("127.0.0.1:{}", g.api_port)
}

/// Index of the replica whose sync address a zone's `/status` names, with the status.
async fn zone_on(z: &ZoneProc, gs: &[GlobalProc]) -> Option<usize> {
    let s = bounded(z.api.get_ok("/status")).await.ok()?;
    if s["global"]["connected"] != true {
        return None;
    }
    let addr = s["global"]["address"].as_str()?;
    gs.iter().position(|g| g.kds_address() == addr)
}

fn secret_yaml(name: &str, version: u64) -> String {
    format!(
        "type: Secret\nname: {name}\nmesh: {WRITES_MESH}\nlabels:\n  version: \"{version}\"\ndata: {}\n",
        b64(&format!("{name}-v{version}"))
    )
}

/// What the writers saw.
#[derive(Default)]
struct Ledger {
    /// Secret → version of the last acknowledged write (200/201).
    acked: BTreeMap<String, u64>,
    /// Secrets whose last write got no acknowledgement: their state is unknown.
    unknown: BTreeMap<String, u64>,
    ok: usize,
    /// 503 answers (PostgreSQL away).
    unavailable: usize,
    /// No answer or a connection error (a killed or hung replica).
    no_answer: usize,
    /// Any other answer: a real failure (how many, and the first ones).
    others: usize,
    other: Vec<String>,
}

struct Writers {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_writers(n: usize, apis: Vec<Api>) -> Writers {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let turn = Arc::new(AtomicUsize::new(0));
    let apis = Arc::new(apis);
    let tasks = (0..n)
        .map(|w| {
            let (ledger, stop, turn, apis) =
                (ledger.clone(), stop.clone(), turn.clone(), apis.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    // Every third write updates this writer's previous Secret (a new version).
                    let (name, version) = if seq.is_multiple_of(3) {
                        (format!("w{w}-{}", seq - 1), 2)
                    } else {
                        (format!("w{w}-{seq}"), 1)
                    };
                    let api = &apis[turn.fetch_add(1, Ordering::Relaxed) % apis.len()];
                    let path = format!("/meshes/{WRITES_MESH}/secrets/{name}");
                    let answer =
                        bounded(api.send(Method::PUT, &path, &secret_yaml(&name, version))).await;
                    {
                        let mut l = ledger.lock().unwrap();
                        match answer {
                            Ok((200 | 201, _)) => {
                                l.ok += 1;
                                l.unknown.remove(&name);
                                l.acked.insert(name, version);
                            }
                            Ok((status, body)) => {
                                if status == 503 {
                                    l.unavailable += 1;
                                } else {
                                    l.others += 1;
                                    if l.other.len() < 5 {
                                        l.other.push(format!("PUT {path}: {status} {body}"));
                                    }
                                }
                                l.acked.remove(&name);
                                l.unknown.insert(name, version);
                            }
                            Err(_) => {
                                l.no_answer += 1;
                                l.acked.remove(&name);
                                l.unknown.insert(name, version);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    Writers {
        ledger,
        stop,
        tasks,
    }
}

impl Writers {
    fn counts(&self) -> String {
        let l = self.ledger.lock().unwrap();
        format!(
            "{} acknowledged, {} answered 503, {} without answer (killed or hung replica), {} other failures",
            l.ok, l.unavailable, l.no_answer, l.others
        )
    }

    fn ok(&self) -> usize {
        self.ledger.lock().unwrap().ok
    }

    fn unavailable(&self) -> usize {
        self.ledger.lock().unwrap().unavailable
    }
}

/// Sorted Mesh names and `name=version` of every Secret in [`WRITES_MESH`], on one replica.
async fn contents(g: &Api) -> Result<(Vec<String>, BTreeMap<String, u64>)> {
    let meshes = bounded(g.get_ok("/meshes")).await?;
    let mut names: Vec<String> = items(&meshes)
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    let secrets = bounded(g.get_ok(&format!("/meshes/{WRITES_MESH}/secrets"))).await?;
    let mut held = BTreeMap::new();
    for s in items(&secrets) {
        let name = s["name"].as_str().unwrap_or("").to_string();
        let version = s["labels"]["version"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        held.insert(name, version);
    }
    Ok((names, held))
}

fn serials(proxies: &[ProxyProc]) -> Vec<String> {
    proxies
        .iter()
        .map(|p| {
            p.identity()
                .map(|id| id.serial().to_string())
                .unwrap_or_default()
        })
        .collect()
}

async fn body(opts: &FailoverReplicaOptions, work: &WorkDir, steps: &mut Steps) -> Result<()> {
    let root = work.path();
    let mut pg = steps.must(
        "PostgreSQL up",
        PgServer::start().map(|pg| {
            let d = format!(
                "private PostgreSQL at {}, data {}, log {}",
                pg.url(),
                pg.data_dir().display(),
                pg.log_path().display()
            );
            (pg, d)
        }),
    )?;
    let url = pg.url();

    // Three replicas, two zones given every address, a builtin Mesh, proxies.
    let (mut gs, mut zones, mut proxies) = steps.must(
        "cluster up",
        async {
            let gs: Vec<GlobalProc> = start_replicas(root, REPLICAS, &url).await?;
            let mut lines = Vec::new();
            for g in &gs {
                let v = wait_until(
                    &format!("{} to list 3 alive replicas and one leader", api_addr(g)),
                    Duration::from_secs(30),
                    Duration::from_millis(200),
                    || async {
                        let v = replicas_view(&g.api).await?;
                        let alive = items(&v).iter().filter(|r| r["alive"] == true).count();
                        (alive == REPLICAS && leaders(&v).len() == 1).then_some(v)
                    },
                )
                .await?;
                lines.push(format!(
                    "replica {}  API {}  sync {}  log {}: GET /replicas shows 3 alive, leader {}",
                    gs.iter().position(|x| x.api_port == g.api_port).unwrap() + 1,
                    g.api_url(),
                    g.kds_address(),
                    g.proc.log.display(),
                    leaders(&v)[0]
                ));
            }
            gs[0].apply(&builtin_mesh_yaml(MESH, "1h")).await?;
            gs[0]
                .apply(&format!("type: Mesh\nname: {WRITES_MESH}\n"))
                .await?;
            let addresses: Vec<String> = gs.iter().map(GlobalProc::kds_address).collect();
            let addresses = addresses.join(",");
            let mut zones = Vec::new();
            for i in 1..=2 {
                let name = format!("zone-{i}");
                let zdir = root.join(&name);
                let token = gs[0].zone_token_file(&name, &zdir).await?;
                zones.push(
                    ZoneProc::start_opts(
                        &name,
                        &addresses,
                        &gs[0].ca_file(),
                        &token,
                        &zdir,
                        ZoneOptions::default(),
                    )
                    .await?,
                );
            }
            for z in &zones {
                let at = wait_until(
                    &format!("{} connected with Mesh {MESH}", z.name),
                    Duration::from_secs(30),
                    Duration::from_millis(200),
                    || async {
                        let at = zone_on(z, &gs).await?;
                        let (s, _) = bounded(z.api.get(&format!("/meshes/{MESH}"))).await.ok()?;
                        (s == 200).then_some(at)
                    },
                )
                .await?;
                lines.push(format!(
                    "{}  API {}  proxies {}  log {}: /status names {} (replica {})",
                    z.name,
                    z.api_url(),
                    z.dp_address(),
                    z.proc.log.display(),
                    gs[at].kds_address(),
                    at + 1
                ));
            }
            let mut proxies = Vec::new();
            for z in &zones {
                for j in 1..=opts.proxies.max(1) {
                    let name = format!("web-{}-{j}", z.name);
                    let token = gs[0]
                        .dataplane_token_file(MESH, &name, &root.join("tokens"))
                        .await?;
                    let spec = ProxySpec::new(MESH, &name, "web");
                    proxies.push(ProxyProc::start(
                        z,
                        &spec,
                        &token,
                        &root.join("proxies").join(&name),
                    )?);
                }
            }
            for p in proxies.iter_mut() {
                let id = p
                    .wait_identity(Duration::from_secs(60), "usable certificate", |id| {
                        id.usable()
                    })
                    .await?;
                lines.push(format!(
                    "{} ({}): serial {}",
                    p.name,
                    p.zone,
                    short_serial(id.serial())
                ));
            }
            lines.push(format!(
                "PostgreSQL {}  log {}",
                url,
                pg.log_path().display()
            ));
            Ok(((gs, zones, proxies), lines.join("\n")))
        }
        .await,
    )?;
    let before = serials(&proxies);

    let writers = start_writers(opts.writers, gs.iter().map(|g| g.api.clone()).collect());
    steps.must(
        "writers running",
        async {
            wait_until(
                "first acknowledged writes",
                Duration::from_secs(30),
                Duration::from_millis(200),
                || async { (writers.ok() >= opts.writers).then_some(()) },
            )
            .await?;
            Ok((
                (),
                format!(
                    "{} writers, Secret PUTs round-robin over the 3 replicas: {}",
                    opts.writers,
                    writers.counts()
                ),
            ))
        }
        .await,
    )?;

    // Step 3: SIGKILL zone-1's replica.
    let killed = wait_until(
        "zone-1 connected",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || zone_on(&zones[0], &gs),
    )
    .await?;
    let mut kills = 1;
    let watcher = (killed + 1) % REPLICAS;
    let killed_led = replicas_view(&gs[watcher].api)
        .await
        .is_some_and(|v| leaders(&v).contains(&api_addr(&gs[killed])));
    gs[killed].proc.kill9();
    let killed_at = Instant::now();
    let ok_at_kill = writers.ok();
    steps.check(
        &format!("SIGKILL of replica {} (zone-1's): zone-1 moves", killed + 1),
        async {
            let to = wait_until(
                "zone-1 on another replica",
                Duration::from_secs(30),
                Duration::from_millis(100),
                || async { zone_on(&zones[0], &gs).await.filter(|i| *i != killed) },
            )
            .await?;
            let moved = killed_at.elapsed();
            if moved > Duration::from_secs(10) {
                bail!("zone-1 moved in {:.1}s (over 10 s)", moved.as_secs_f64());
            }
            let mut same = Vec::new();
            for (p, old) in proxies.iter().zip(&before) {
                let now = p.identity().map(|id| id.serial().to_string());
                if now.as_deref() != Some(old.as_str()) || !p.identity().is_some_and(|i| i.usable())
                {
                    bail!("{}: serial {old} → {now:?}", p.name);
                }
                same.push(format!("{} {}", p.name, short_serial(old)));
            }
            let leadership = if killed_led {
                let to = wait_until(
                    "leadership to move",
                    Duration::from_secs(30),
                    Duration::from_millis(200),
                    || async {
                        let v = replicas_view(&gs[watcher].api).await?;
                        let l = leaders(&v);
                        (l.len() == 1 && l[0] != api_addr(&gs[killed])).then(|| l[0].clone())
                    },
                )
                .await?;
                let n = gs.iter().position(|g| api_addr(g) == to).map_or(0, |i| i + 1);
                format!(
                    "it was the leader: replica {n} ({to}) leads after {:.1}s (measured)",
                    killed_at.elapsed().as_secs_f64()
                )
            } else {
                "it was not the leader".to_string()
            };
            wait_until(
                "writes to go on",
                Duration::from_secs(20),
                Duration::from_millis(200),
                || async { (writers.ok() >= ok_at_kill + opts.writers).then_some(()) },
            )
            .await?;
            Ok(format!(
                "zone-1 moved to replica {} in {:.1}s (measured); {leadership}; proxies keep their certificates ({}); writes go on: {}",
                to + 1,
                moved.as_secs_f64(),
                same.join(", "),
                writers.counts()
            ))
        }
        .await,
    );

    // Step 4: hang another replica: the one holding the most zones, else any live one.
    let live: Vec<usize> = (0..REPLICAS).filter(|i| *i != killed).collect();
    let mut held = [0; REPLICAS];
    for z in &zones {
        if let Some(i) = zone_on(z, &gs).await {
            held[i] += 1;
        }
    }
    let hung = *live.iter().max_by_key(|i| held[**i]).unwrap();
    let other = *live.iter().find(|i| **i != hung).unwrap();
    let view = replicas_view(&gs[other].api).await;
    let was_leader = view
        .as_ref()
        .is_some_and(|v| leaders(v).contains(&api_addr(&gs[hung])));
    let on_hung: Vec<usize> = {
        let mut v = Vec::new();
        for (k, z) in zones.iter().enumerate() {
            if zone_on(z, &gs).await == Some(hung) {
                v.push(k);
            }
        }
        v
    };
    gs[hung].proc.signal(libc::SIGSTOP);
    let hung_at = Instant::now();
    steps.check(
        &format!("SIGSTOP of replica {} (hung), then SIGCONT", hung + 1),
        async {
            let mut lines = Vec::new();
            for k in &on_hung {
                let z = &zones[*k];
                wait_until(
                    &format!("{} off the hung replica", z.name),
                    Duration::from_secs(20),
                    Duration::from_millis(100),
                    || async { zone_on(z, &gs).await.filter(|i| *i == other) },
                )
                .await?;
                let t = hung_at.elapsed();
                if t > Duration::from_secs(15) {
                    bail!("{} moved in {:.1}s", z.name, t.as_secs_f64());
                }
                lines.push(format!(
                    "{} moved to replica {} in {:.1}s",
                    z.name,
                    other + 1,
                    t.as_secs_f64()
                ));
            }
            if on_hung.is_empty() {
                lines.push("no zone was on it".into());
            }
            if was_leader {
                wait_until(
                    "leadership to move",
                    Duration::from_secs(30),
                    Duration::from_millis(200),
                    || async {
                        let v = replicas_view(&gs[other].api).await?;
                        (leaders(&v) == vec![api_addr(&gs[other])]).then_some(())
                    },
                )
                .await?;
                lines.push(format!(
                    "it was the leader: replica {} leads after {:.1}s",
                    other + 1,
                    hung_at.elapsed().as_secs_f64()
                ));
            } else {
                lines.push("it was not the leader: leadership stays".into());
            }
            Ok(lines.join("; "))
        }
        .await,
    );
    gs[hung].proc.signal(libc::SIGCONT);
    let resumed = wait_until(
        "the resumed replica to answer",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            bounded(gs[hung].api.get("/readyz"))
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
        },
    )
    .await
    .is_ok();
    steps.note(&format!(
        "SIGCONT: replica {} answers again: {resumed}",
        hung + 1
    ));

    // Step 5: PostgreSQL restart.
    steps.check(
        "PostgreSQL restarted: writes answer 503 meanwhile, then resume; /readyz recovers",
        async {
            let unavailable_before = writers.unavailable();
            pg.stop()?;
            let down_at = Instant::now();
            wait_until(
                "writes to answer 503",
                Duration::from_secs(20),
                Duration::from_millis(100),
                || async { (writers.unavailable() > unavailable_before).then_some(()) },
            )
            .await?;
            let (s, _) = bounded(gs[other].api.get("/readyz")).await?;
            if s != 503 {
                bail!("/readyz answers {s} with PostgreSQL down");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            pg.start_again()?;
            let outage = down_at.elapsed();
            let back_at = Instant::now();
            let ok_back = writers.ok();
            wait_until(
                "writes to resume",
                Duration::from_secs(30),
                Duration::from_millis(100),
                || async { (writers.ok() > ok_back).then_some(()) },
            )
            .await?;
            let writes_after = back_at.elapsed();
            for i in (0..REPLICAS).filter(|i| *i != killed) {
                wait_until(
                    "/readyz 200",
                    Duration::from_secs(30),
                    Duration::from_millis(100),
                    || async {
                        bounded(gs[i].api.get("/readyz"))
                            .await
                            .ok()
                            .filter(|(s, _)| *s == 200)
                    },
                )
                .await?;
            }
            Ok(format!(
                "PostgreSQL down {:.1}s: {} writes answered 503 (counted, not lost); writes resumed {:.1}s and /readyz 200 on the live replicas {:.1}s after it was back",
                outage.as_secs_f64(),
                writers.unavailable() - unavailable_before,
                writes_after.as_secs_f64(),
                back_at.elapsed().as_secs_f64()
            ))
        }
        .await,
    );

    // Step 6: the killed replica back.
    steps.check(
        &format!(
            "replica {} back on its data dir and ports serves everything",
            killed + 1
        ),
        async {
            gs[killed].restart().await?;
            // What was acknowledged before the reads: later writes may not be in them.
            let acked = writers.ledger.lock().unwrap().acked.clone();
            let (mine, held) = contents(&gs[killed].api).await?;
            let (theirs, _) = contents(&gs[other].api).await?;
            if mine != theirs {
                bail!("Meshes {mine:?} vs {theirs:?}");
            }
            let missing: Vec<&String> = acked
                .iter()
                .filter(|(n, v)| held.get(*n).is_none_or(|h| h < v))
                .map(|(n, _)| n)
                .collect();
            if !missing.is_empty() {
                bail!("{} acknowledged Secrets missing: {missing:?}", missing.len());
            }
            Ok(format!(
                "Meshes {mine:?} as on the others; all {} Secrets acknowledged so far present ({} held)",
                acked.len(),
                held.len()
            ))
        }
        .await,
    );

    // More SIGKILLs of random replicas under the writers.
    let mut seed = now_seed();
    let mut killed_list = vec![killed + 1];
    while kills < opts.kills {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let i = (seed >> 33) as usize % REPLICAS;
        gs[i].proc.kill9();
        kills += 1;
        killed_list.push(i + 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        gs[i].restart().await?;
    }

    // Step 7: writers stopped; nothing acknowledged lost.
    writers.stop.store(true, Ordering::Relaxed);
    for t in writers.tasks {
        let _ = t.await;
    }
    let ledger = std::mem::take(&mut *writers.ledger.lock().unwrap());
    steps.check(
        "writers stopped: no acknowledged write lost, on every replica",
        async {
            let mut lines = Vec::new();
            let mut reference = None;
            for (i, g) in gs.iter().enumerate() {
                let (meshes, held) = wait_until(
                    "a replica's contents",
                    Duration::from_secs(20),
                    Duration::from_millis(500),
                    || async { contents(&g.api).await.ok() },
                )
                .await?;
                let mut lost = Vec::new();
                for (n, v) in &ledger.acked {
                    match held.get(n) {
                        Some(h) if h == v => {}
                        other => lost.push(format!("{n} v{v} (held: {other:?})")),
                    }
                }
                if !lost.is_empty() {
                    bail!(
                        "replica {}: {} acknowledged writes lost: {:?}",
                        i + 1,
                        lost.len(),
                        &lost[..lost.len().min(10)]
                    );
                }
                match &reference {
                    None => reference = Some((meshes, held.clone())),
                    Some(r) if *r != (meshes.clone(), held.clone()) => {
                        bail!("replica {} holds other contents than replica 1", i + 1)
                    }
                    _ => {}
                }
                lines.push(format!(
                    "replica {}: {} Secrets, every acknowledged one with its version",
                    i + 1,
                    held.len()
                ));
            }
            if ledger.others > 0 {
                bail!("{} unexpected answers, first: {:?}", ledger.others, ledger.other);
            }
            Ok(format!(
                "{} writes acknowledged ({} distinct Secrets, their last version checked), 0 lost; {} answered 503, {} without answer, {} of unknown outcome; {kills} SIGKILLs (replicas {:?})\n{}",
                ledger.ok,
                ledger.acked.len(),
                ledger.unavailable,
                ledger.no_answer,
                ledger.unknown.len(),
                killed_list,
                lines.join("\n")
            ))
        }
        .await,
    );

    // Step 8: every dataplane listed again.
    let names: Vec<String> = proxies.iter().map(|p| p.name.clone()).collect();
    steps.check(
        "global lists every dataplane again",
        async {
            let mut lines = Vec::new();
            for (i, g) in gs.iter().enumerate() {
                let n = wait_until(
                    "every dataplane connected with a certificate",
                    Duration::from_secs(60),
                    Duration::from_millis(300),
                    || async {
                        let v = bounded(g.api.get_ok(&format!("/meshes/{MESH}/dataplanes")))
                            .await
                            .ok()?;
                        let items = items(&v);
                        names
                            .iter()
                            .all(|n| {
                                items.iter().any(|d| {
                                    d["name"] == n.as_str()
                                        && d["connected"] == true
                                        && d["certificate"]["serial"].is_string()
                                })
                            })
                            .then_some(items.len())
                    },
                )
                .await?;
                lines.push(format!("replica {}: {n} dataplanes", i + 1));
            }
            let after = serials(&proxies);
            let kept = after.iter().zip(&before).filter(|(a, b)| a == b).count();
            Ok(format!(
                "{}; {kept} of {} proxies still hold their first certificate",
                lines.join(", "),
                names.len()
            ))
        }
        .await,
    );
    for p in proxies.iter_mut() {
        p.proc.stop(Duration::from_secs(2));
    }
    for z in zones.iter_mut() {
        z.proc.stop(Duration::from_secs(2));
    }
    for g in gs.iter_mut() {
        g.proc.stop(Duration::from_secs(2));
    }
    let _ = pg.stop();
    Ok(())
}

fn now_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}
