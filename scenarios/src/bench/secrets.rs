//! `scenarios bench secrets`: what sealing Secrets at rest costs a Secret write (issue 13, target:
//! under 5% slower than without it).
//!
//! In this process, against the store itself (`common::store::Store`, the layer that seals), on
//! sled in a temporary directory and (`--store postgres|both`) on a private PostgreSQL server:
//! C writers (`--clients`) each take the next index from a shared counter and write one Secret per
//! store write, N new Secrets (`--ops`), then the same N with new data, each write durable
//! (flushed, or committed) before the next. Each round runs once with sealing on (the store as the
//! control planes open it, with a key) and once off (`Store::open_unsealed_bench_baseline`, a
//! constructor only this bench uses; no flag or setting reaches it), on a fresh store each time,
//! alternating which goes first, so that the machine's noise falls on both alike, after a short
//! warm-up round of each that is not counted. Per mode:
//! writes/s and p50/p99 latency of each phase, and this process's CPU time per write; the
//! sealed / plain ratio of writes/s over all rounds and its median over the rounds' pairs. The cost of
//! one seal and one open of a Secret's spec (`--data-bytes` of data) is measured alone too, next
//! to the SHA-256 content hash every write computes anyway.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use common::model::{Resource, Secret};
use common::sealing::SecretsKey;
use common::store::{Op, Outcome, Store};

use crate::bench::issue::cpu_secs;
use crate::report::{Stats, Table};

#[derive(Debug, Clone, clap::Args)]
pub struct SecretsBench {
    /// Concurrent writers.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Secrets created, then updated, per round and mode.
    #[arg(long, default_value_t = 5000)]
    pub ops: usize,
    /// Rounds; each runs sealing on and off once, on fresh stores.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Bytes of each Secret's data (before base64): 1700 is an RSA-2048 key in PEM.
    #[arg(long, default_value_t = 1700)]
    pub data_bytes: usize,
    /// The store: sled, postgres (a private server started for the run), or both.
    #[arg(long, value_enum, default_value_t = crate::bench::api::StoreChoice::Sled)]
    pub store: crate::bench::api::StoreChoice,
}

/// The Mesh of the bench's Secrets.
const MESH: &str = "bench";

/// One phase of one mode: latencies (ms), time, CPU seconds of this process.
#[derive(Default, Clone)]
struct Phase {
    latencies: Vec<f64>,
    elapsed: Duration,
    cpu: f64,
}

impl Phase {
    fn merge(&mut self, other: &Phase) {
        self.latencies.extend_from_slice(&other.latencies);
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn cpu_us_per_write(&self) -> f64 {
        self.cpu * 1e6 / (self.latencies.len().max(1) as f64)
    }
}

/// The data of Secret `i` in `version`: `bytes` of noise (xorshift), different for each, as
/// incompressible as real keys and tokens (PostgreSQL compresses large values: repetitive data
/// would flatter the plain baseline, whose rows it compresses, against sealed ones it cannot).
fn data(i: usize, version: u32, bytes: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(version);
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// `n` writes of one Secret each by `clients` writers; every write must answer `expect`.
async fn phase(
    store: &Store,
    clients: usize,
    n: usize,
    version: u32,
    bytes: usize,
    expect: Outcome,
) -> Result<Phase> {
    let next = Arc::new(AtomicUsize::new(0));
    let pid = std::process::id();
    let cpu = cpu_secs(pid);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(done);
                    }
                    let secret = Secret::new(MESH, &format!("s-{i}"), &data(i, version, bytes));
                    let t = Instant::now();
                    let out = store.write(vec![Op::Put(Resource::Secret(secret))]).await?;
                    done.push(t.elapsed().as_secs_f64() * 1000.0);
                    if out != [expect] {
                        bail!("write of s-{i}: {out:?}, expected {expect:?}");
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Phase {
        latencies,
        elapsed: start.elapsed(),
        cpu: cpu_secs(pid) - cpu,
    })
}

/// A fresh store: sled in a new temporary directory, or a new database on `pg`.
async fn fresh_store(
    sealed: bool,
    pg: Option<&testkit::postgres::PgServer>,
    n: usize,
) -> Result<(Store, Option<tempfile::TempDir>)> {
    match pg {
        None => {
            let dir = tempfile::tempdir()?;
            let store = if sealed {
                Store::open(dir.path(), SecretsKey::generate()?)?
            } else {
                Store::open_unsealed_bench_baseline(dir.path())?
            };
            Ok((store, Some(dir)))
        }
        Some(pg) => {
            let db = format!("round{n}");
            pg.psql(&format!("CREATE DATABASE {db}"))?;
            let url = pg.url().replace("/kmesh", &format!("/{db}"));
            let store = if sealed {
                Store::connect(&url, SecretsKey::generate()?).await?
            } else {
                Store::connect_unsealed_bench_baseline(&url).await?
            };
            Ok((store, None))
        }
    }
}

/// Per mode (sealed, plain): the create phase and the update phase over every round; and per
/// round and phase, the sealed / plain writes/s ratio of that round's pair of runs.
struct Modes {
    phases: [(Phase, Phase); 2],
    ratios: [Vec<f64>; 2],
}

/// The median of `v` (0 when empty).
fn median(v: &[f64]) -> f64 {
    Stats::of(v).p50
}

async fn measure(p: &SecretsBench, postgres: bool) -> Result<Modes> {
    let pg = if postgres {
        Some(tokio::task::spawn_blocking(testkit::postgres::PgServer::start).await??)
    } else {
        None
    };
    let mut modes = Modes {
        phases: Default::default(),
        ratios: Default::default(),
    };
    let mut db = 0;
    // A short round of each mode first, not counted: the runtime's threads, the allocator and
    // PostgreSQL's caches warm up on it.
    for sealed in [true, false] {
        db += 1;
        let (store, _dir) = fresh_store(sealed, pg.as_ref(), db).await?;
        let warmup = (p.ops / 10).max(1);
        phase(&store, p.clients, warmup, 1, p.data_bytes, Outcome::Created).await?;
    }
    for round in 0..p.rounds {
        let mut rates = [(0.0, 0.0); 2];
        // Alternate which mode goes first.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for sealed in order {
            db += 1;
            let (store, _dir) = fresh_store(sealed, pg.as_ref(), db).await?;
            let mesh: common::model::Mesh =
                serde_json::from_value(serde_json::json!({"type": "Mesh", "name": MESH}))?;
            store.write(vec![Op::Put(Resource::Mesh(mesh))]).await?;
            let created =
                phase(&store, p.clients, p.ops, 1, p.data_bytes, Outcome::Created).await?;
            let updated =
                phase(&store, p.clients, p.ops, 2, p.data_bytes, Outcome::Updated).await?;
            rates[usize::from(!sealed)] = (created.rate(), updated.rate());
            let slot = &mut modes.phases[usize::from(!sealed)];
            slot.0.merge(&created);
            slot.1.merge(&updated);
            eprintln!(
                "round {} {}: create {:.0}/s, update {:.0}/s",
                round + 1,
                if sealed { "sealed" } else { "plain " },
                created.rate(),
                updated.rate()
            );
        }
        let [(sc, su), (pc, pu)] = rates;
        modes.ratios[0].push(sc / pc.max(1e-9));
        modes.ratios[1].push(su / pu.max(1e-9));
    }
    Ok(modes)
}

/// Mean time of `f` over `n` calls, in microseconds.
fn time_us(n: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// The cost of sealing and opening one Secret's spec, and of its content hash, alone.
fn seal_costs(bytes: usize) -> Result<(f64, f64, f64)> {
    let key = SecretsKey::generate()?;
    let secret = Secret::new(MESH, "s-1", &data(1, 1, bytes));
    let spec = serde_json::to_vec(&secret)?;
    let identity = b"Secret/bench/s-1";
    let sealed = key.seal(identity, &spec)?;
    let n = 20_000;
    let seal = time_us(n, || {
        std::hint::black_box(key.seal(identity, &spec).expect("seals"));
    });
    let open = time_us(n, || {
        std::hint::black_box(key.open(identity, &sealed).expect("opens"));
    });
    let value = serde_json::to_value(&secret)?;
    let hash = time_us(n, || {
        std::hint::black_box(common::store::content_hash(&value));
    });
    Ok((seal, open, hash))
}

pub async fn run(p: SecretsBench) -> Result<()> {
    if p.clients == 0 || p.ops == 0 || p.rounds == 0 {
        bail!("--clients, --ops and --rounds must be at least 1");
    }
    println!(
        "bench secrets: {} writers, {} Secrets of {} bytes created then updated, {} rounds of sealed and plain stores",
        p.clients, p.ops, p.data_bytes, p.rounds
    );
    let (seal, open, hash) = seal_costs(p.data_bytes)?;
    let mut t = Table::new(&["one Secret spec", "µs"]);
    t.row(&[
        "seal (AES-256-GCM, random nonce)".into(),
        format!("{seal:.2}"),
    ]);
    t.row(&["open".into(), format!("{open:.2}")]);
    t.row(&[
        "content hash (SHA-256, every write)".into(),
        format!("{hash:.2}"),
    ]);
    println!("\n== alone\n{}", t.render());

    for postgres in p.store.runs() {
        let name = if *postgres { "PostgreSQL" } else { "sled" };
        let modes = measure(&p, *postgres).await?;
        let mut t = Table::new(&[
            "phase",
            "sealed: writes/s, p50 / p99 ms",
            "plain: writes/s, p50 / p99 ms",
            "sealed / plain writes/s: all, median of rounds (min-max)",
            "bench CPU µs per write, sealed / plain",
        ]);
        for (i, phase) in ["create", "update"].iter().enumerate() {
            let pick = |m: &(Phase, Phase)| if i == 0 { m.0.clone() } else { m.1.clone() };
            let (sealed, plain) = (pick(&modes.phases[0]), pick(&modes.phases[1]));
            let ratios = Stats::of(&modes.ratios[i]);
            let (s, q) = (Stats::of(&sealed.latencies), Stats::of(&plain.latencies));
            t.row(&[
                format!(
                    "PUT Secret, {phase} ({} writes per mode)",
                    sealed.latencies.len()
                ),
                format!("{:.0}, {:.2} / {:.2}", sealed.rate(), s.p50, s.p99),
                format!("{:.0}, {:.2} / {:.2}", plain.rate(), q.p50, q.p99),
                format!(
                    "{:.3}, {:.3} ({:.2}-{:.2})",
                    sealed.rate() / plain.rate().max(1e-9),
                    median(&modes.ratios[i]),
                    ratios.min,
                    ratios.max
                ),
                format!(
                    "{:.0} / {:.0}",
                    sealed.cpu_us_per_write(),
                    plain.cpu_us_per_write()
                ),
            ]);
        }
        println!(
            "\n== {name} (target: sealed / plain >= 0.95)\n{}",
            t.render()
        );
    }
    Ok(())
}
