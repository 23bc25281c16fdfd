//! `scenarios bench api`: applies per second through global's HTTP API with C concurrent clients,
//! their latencies, and a check that nothing acknowledged is lost.
//!
//! A real `global` on loopback; C client tasks (`--clients`), each with its own HTTP client and
//! connection and the admin token, take the next operation of a phase from a shared counter until
//! the phase is done. Each phase is timed on its own, with every request's latency:
//! 1. `PUT /meshes/bench/secrets/s-<i>`: N new Secrets (`--ops`, small base64 data);
//! 2. `PUT /meshes/m-<i>`: Meshes without mTLS (`--meshes`);
//! 3. `PUT /meshes/b-<i>`: Meshes with a builtin backend (`--builtin-meshes`): global generates an
//!    RSA CA on each admission, so this phase is much slower and kept smaller;
//! 4. `POST /apply` of Meshes with a vault backend and their token Secret (`--vault-meshes`): each
//!    admission issues and inspects a test certificate from a real OpenBao (EC role, widened to
//!    the bench's Mesh names); the baseline is the same number of certificates issued straight
//!    from OpenBao with as many requests in flight, in the same run;
//! 5. the N Secrets again with new data (each must answer `updated`);
//! 6. `DELETE` of every other Secret.
//!
//! Any non-2xx answer, transport error or unexpected `result` counts as a failure; the bench prints
//! the first ones and fails. Then "nothing lost", checked through the API against exactly what got
//! a 2xx, once while global runs and again after a restart (SIGTERM, same data directory): `GET
//! /meshes` (every Mesh present with the label written, nothing else), `GET
//! /meshes/bench/secrets` (the surviving Secrets, no deleted one), each builtin Mesh's two CA
//! Secrets and each vault Mesh's token Secret, and — since the API never shows Secret data — every
//! surviving Secret applied again with the data last written in `POST /apply` batches, which must
//! answer `unchanged` for each (global compares content hashes: an `updated` means the stored data
//! differed; that write also repairs it, so a data difference is reported by the first check
//! only). global's CPU seconds (per phase and in all) and RSS come from `/proc`.
//!
//! `--tls` measures what HTTPS costs a Secret PUT instead (`api_tls`).
//!
//! `--store postgres` runs global on a private PostgreSQL server instead of sled; `--store both`
//! runs the whole bench on sled, then on PostgreSQL, and prints their applies/s side by side, so
//! the two stores are compared within one run on the same machine.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use reqwest::Method;
use serde_json::Value;

use testkit::openbao::seed::{self, RoleOptions};

use crate::bench::issue::{bao_pid, cpu_secs, hwm_kb, raw_issue, rss_kb};
use crate::report::{Stats, Table};
use testkit::api::Api;
use testkit::cluster::{GlobalOptions, GlobalProc};
use testkit::cluster::{MESH, PKI, ROLE, Vault, builtin_mesh_yaml, vault_mesh_yaml};

#[derive(Debug, Clone, clap::Args)]
pub struct ApiBench {
    /// Concurrent clients, each with its own HTTP connection.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Secrets created (then all updated, and half of them deleted).
    #[arg(long, default_value_t = 10000)]
    pub ops: usize,
    /// Meshes without mTLS created.
    #[arg(long, default_value_t = 2000)]
    pub meshes: usize,
    /// Meshes with a builtin backend created (each admission generates an RSA CA).
    #[arg(long, default_value_t = 200)]
    pub builtin_meshes: usize,
    /// Meshes with a vault backend created, each admission issuing a test certificate from a real
    /// OpenBao (EC role), against raw OpenBao issuance with as many in flight; 0 skips.
    #[arg(long, default_value_t = 200)]
    pub vault_meshes: usize,
    /// global's store: `sled` (embedded), `postgres` (a private PostgreSQL server started for the
    /// run) or `both`, one after the other in the same run, with their applies/s side by side.
    #[arg(long, value_enum, default_value_t = StoreChoice::Sled)]
    pub store: StoreChoice,
    /// Measure instead what HTTPS costs a Secret PUT: `--ops` PUTs per protocol over plain HTTP,
    /// HTTPS with HTTP/1.1 and HTTPS with h2, `--clients` clients each, in the same run (sled).
    #[arg(long)]
    pub tls: bool,
}

/// Which store(s) `bench api` runs global on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreChoice {
    Sled,
    Postgres,
    Both,
}

impl StoreChoice {
    /// The stores to measure, in order: `true` for PostgreSQL.
    pub(crate) fn runs(self) -> &'static [bool] {
        match self {
            StoreChoice::Sled => &[false],
            StoreChoice::Postgres => &[true],
            StoreChoice::Both => &[false, true],
        }
    }
}

/// Applies per second of each phase of one run, for the side-by-side table of `--store both`.
type Rates = Vec<(String, f64)>;

/// The Mesh holding the bench's Secrets.
const SECRETS_MESH: &str = "bench";
/// Secrets per `POST /apply` batch of the data check.
const CHECK_BATCH: usize = 500;
/// Failures printed when the bench fails.
const SHOWN_FAILURES: usize = 10;

/// One request of a phase: method, path, body, and the `result` a 2xx must carry (each of the
/// `results` for `POST /apply`).
pub(crate) struct Request {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) body: String,
    pub(crate) expect: &'static str,
}

/// What one phase did.
pub(crate) struct Phase {
    pub(crate) name: String,
    pub(crate) elapsed: Duration,
    /// Latency of every request, ms.
    pub(crate) latencies: Vec<f64>,
    /// Per operation index: did it get the expected 2xx?
    pub(crate) ok: Vec<bool>,
    pub(crate) failures: Vec<String>,
    pub(crate) global_cpu: f64,
}

pub(crate) fn secret_data(i: usize, version: u32) -> String {
    testkit::cluster::b64(&format!("v{version}-secret-{i}-payload"))
}

fn secret_yaml(i: usize, version: u32) -> String {
    format!(
        "type: Secret\nname: s-{i}\nmesh: {SECRETS_MESH}\ndata: {}\n",
        secret_data(i, version)
    )
}

fn plain_mesh_yaml(i: usize) -> String {
    format!("type: Mesh\nname: m-{i}\nlabels:\n  seq: \"{i}\"\n")
}

/// Runs `n` operations with one task per client, each taking the next index from a shared counter.
pub(crate) async fn run_phase<F>(name: &str, clients: &[Api], pid: u32, n: usize, op: F) -> Phase
where
    F: Fn(usize) -> Request + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = cpu_secs(pid);
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|api| {
            let op = op.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let req = op(i);
                    let t = Instant::now();
                    let r = api.send(req.method.clone(), &req.path, &req.body).await;
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    let failure = match r {
                        Ok((status, body)) if (200..300).contains(&status) => {
                            let result = match body.get("results").and_then(Value::as_array) {
                                Some(all) if all.iter().all(|r| r["result"] == req.expect) => {
                                    Some(req.expect)
                                }
                                Some(_) => Some("(not all)"),
                                None => body.get("result").and_then(Value::as_str),
                            };
                            (result != Some(req.expect)).then(|| {
                                format!(
                                    "{} {}: {status} with result {result:?}, expected {:?}",
                                    req.method, req.path, req.expect
                                )
                            })
                        }
                        Ok((status, body)) => {
                            Some(format!("{} {}: {status} {body}", req.method, req.path))
                        }
                        Err(e) => Some(format!("{} {}: {e:#}", req.method, req.path)),
                    };
                    done.push((i, ms, failure));
                }
                done
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    let mut ok = vec![false; n];
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(done) => {
                for (i, ms, failure) in done {
                    latencies.push(ms);
                    match failure {
                        None => ok[i] = true,
                        Some(f) => failures.push(f),
                    }
                }
            }
            Err(e) => failures.push(format!("client task failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    if ok.iter().any(|o| !o) && failures.is_empty() {
        failures.push("some operations never ran".into());
    }
    Phase {
        name: name.to_string(),
        elapsed,
        latencies,
        ok,
        failures,
        global_cpu: cpu_secs(pid) - cpu,
    }
}

/// What a 2xx told us is stored.
#[derive(Default)]
struct Expected {
    /// Mesh name → its `seq` label (None for the builtin Meshes and the Secrets' Mesh).
    meshes: BTreeMap<String, Option<String>>,
    /// Mesh name → how many Secrets it holds (the builtin CA's two, the vault token's one).
    owned_secrets: BTreeMap<String, usize>,
    /// Secret index → version of the data last written.
    secrets: BTreeMap<usize, u32>,
    /// Secrets whose last request failed: their state is unknown and not compared.
    unknown: BTreeSet<usize>,
}

fn names(list: &Value) -> BTreeMap<String, Value> {
    list.get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v.get("name")?.as_str()?.to_string(), v.clone())))
        .collect()
}

/// Compares global's content with `expected` through the API. Returns the differences found.
async fn check_stored(api: &Api, clients: &[Api], expected: &Expected) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    // Meshes: exactly the acknowledged ones, with the label written.
    let meshes = names(&api.get_ok("/meshes").await?);
    for (name, seq) in &expected.meshes {
        match meshes.get(name) {
            None => diffs.push(format!("Mesh {name} missing")),
            Some(m) => {
                let got = m["labels"]["seq"].as_str().map(str::to_string);
                if seq.is_some() && &got != seq {
                    diffs.push(format!("Mesh {name}: label seq {got:?}, wrote {seq:?}"));
                }
            }
        }
    }
    for name in meshes.keys() {
        if !expected.meshes.contains_key(name) {
            diffs.push(format!("Mesh {name} present but never acknowledged"));
        }
    }
    // Secrets: the surviving ones, no deleted one.
    let secrets = names(
        &api.get_ok(&format!("/meshes/{SECRETS_MESH}/secrets"))
            .await?,
    );
    for i in expected.secrets.keys() {
        if !secrets.contains_key(&format!("s-{i}")) {
            diffs.push(format!("Secret s-{i} missing"));
        }
    }
    for name in secrets.keys() {
        let i = name
            .strip_prefix("s-")
            .and_then(|s| s.parse::<usize>().ok());
        let known =
            i.is_some_and(|i| expected.secrets.contains_key(&i) || expected.unknown.contains(&i));
        if !known {
            diffs.push(format!(
                "Secret {name} present but deleted (or never written)"
            ));
        }
    }
    // Each builtin Mesh's generated CA (two Secrets), each vault Mesh's token.
    let owned: Vec<(String, usize)> = expected
        .owned_secrets
        .iter()
        .map(|(m, n)| (m.clone(), *n))
        .collect();
    let per_client = owned.len().div_ceil(clients.len().max(1)).max(1);
    let lookups = owned
        .chunks(per_client)
        .zip(clients.iter().cloned())
        .map(|(chunk, c)| {
            let chunk = chunk.to_vec();
            async move {
                let mut out = Vec::new();
                for (mesh, want) in chunk {
                    match c.get_ok(&format!("/meshes/{mesh}/secrets")).await {
                        Ok(v) => {
                            let n = names(&v).len();
                            if n != want {
                                out.push(format!("Mesh {mesh}: {n} Secrets, expected {want}"));
                            }
                        }
                        Err(e) => out.push(format!("Mesh {mesh}: {e:#}")),
                    }
                }
                out
            }
        });
    for out in futures::future::join_all(lookups).await {
        diffs.extend(out);
    }
    // Secret data: applied again, each must be `unchanged`.
    let surviving: Vec<(usize, u32)> = expected.secrets.iter().map(|(i, v)| (*i, *v)).collect();
    let batches: Vec<Vec<(usize, u32)>> =
        surviving.chunks(CHECK_BATCH).map(<[_]>::to_vec).collect();
    let per_client = batches.len().div_ceil(clients.len().max(1)).max(1);
    let applies = batches
        .chunks(per_client)
        .zip(clients.iter().cloned())
        .map(|(chunk, c)| {
            let chunk = chunk.to_vec();
            async move {
                let mut out = Vec::new();
                for batch in chunk {
                    let yaml = batch
                        .iter()
                        .map(|(i, v)| secret_yaml(*i, *v))
                        .collect::<Vec<_>>()
                        .join("---\n");
                    match c.write_ok(Method::POST, "/apply", &yaml).await {
                        Ok(v) => {
                            let results = v["results"].as_array().cloned().unwrap_or_default();
                            if results.len() != batch.len() {
                                out.push(format!(
                                    "data check: {} results for {} Secrets",
                                    results.len(),
                                    batch.len()
                                ));
                            }
                            for r in results {
                                if r["result"] != "unchanged" {
                                    out.push(format!(
                                        "Secret {}: stored data differs from the last written ({})",
                                        r["name"], r["result"]
                                    ));
                                }
                            }
                        }
                        Err(e) => out.push(format!("data check: {e:#}")),
                    }
                }
                out
            }
        });
    for out in futures::future::join_all(applies).await {
        diffs.extend(out);
    }
    Ok(diffs)
}

fn ms(v: f64) -> String {
    format!("{v:.1}")
}

pub async fn run(p: ApiBench) -> Result<()> {
    if p.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if p.tls {
        return super::api_tls::run(p.clients, p.ops).await;
    }
    let dir = tempfile::Builder::new().prefix("bench-api-").tempdir()?;
    println!(
        "bench api: {} clients, {} Secrets, {} Meshes, {} builtin Meshes, {} vault Meshes, store {:?} (logs in {})",
        p.clients,
        p.ops,
        p.meshes,
        p.builtin_meshes,
        p.vault_meshes,
        p.store,
        dir.path().display()
    );
    let mut rates: Vec<(&str, Rates)> = Vec::new();
    for &postgres in p.store.runs() {
        let label = if postgres { "postgres" } else { "sled" };
        println!("\n== store: {label}");
        match measure(p.clone(), &dir.path().join(label), postgres).await {
            Ok(r) => rates.push((label, r)),
            Err(e) => {
                let kept = dir.keep();
                eprintln!("logs kept in {}", kept.display());
                return Err(e);
            }
        }
    }
    if let [(_, sled), (_, pg)] = rates.as_slice() {
        let mut t = Table::new(&[
            "phase",
            "sled applies/s",
            "postgres applies/s",
            "postgres / sled",
            "target",
        ]);
        for ((name, a), (_, b)) in sled.iter().zip(pg) {
            t.row(&[
                name.clone(),
                format!("{a:.0}"),
                format!("{b:.0}"),
                format!("{:.2}", b / a.max(1e-9)),
                ">= 0.5".into(),
            ]);
        }
        println!("\n== the two stores in this run\n{}", t.render());
    }
    Ok(())
}

async fn measure(p: ApiBench, dir: &std::path::Path, postgres: bool) -> Result<Rates> {
    let p = &p;
    let global_dir = dir.join("global");
    // The private PostgreSQL server lives as long as this run.
    let pg = if postgres {
        Some(tokio::task::spawn_blocking(testkit::postgres::PgServer::start).await??)
    } else {
        None
    };
    let mut options = GlobalOptions::default();
    if let Some(pg) = &pg {
        options = options.store(&pg.url());
    }
    let mut global = GlobalProc::start_with(&global_dir, options.clone()).await?;
    let pid = global.proc.pid().unwrap_or(0);
    let cpu_start = cpu_secs(pid);
    let token = std::fs::read_to_string(global.admin_token_file())?
        .trim()
        .to_string();
    let base = global.api_url();
    let clients: Vec<Api> = (0..p.clients)
        .map(|_| Api::new(&base, Some(token.clone())))
        .collect();
    let mut expected = Expected::default();
    global
        .apply(&format!("type: Mesh\nname: {SECRETS_MESH}\n"))
        .await?;
    expected.meshes.insert(SECRETS_MESH.into(), None);

    let mut phases = Vec::new();
    let n = p.ops;
    let created = run_phase("PUT new Secret", &clients, pid, n, |i| Request {
        method: Method::PUT,
        path: format!("/meshes/{SECRETS_MESH}/secrets/s-{i}"),
        body: secret_yaml(i, 1),
        expect: "created",
    })
    .await;
    for (i, ok) in created.ok.iter().enumerate() {
        if *ok {
            expected.secrets.insert(i, 1);
        } else {
            expected.unknown.insert(i);
        }
    }
    phases.push(created);

    let meshes = run_phase("PUT new Mesh (no mTLS)", &clients, pid, p.meshes, |i| {
        Request {
            method: Method::PUT,
            path: format!("/meshes/m-{i}"),
            body: plain_mesh_yaml(i),
            expect: "created",
        }
    })
    .await;
    for (i, ok) in meshes.ok.iter().enumerate() {
        if *ok {
            expected
                .meshes
                .insert(format!("m-{i}"), Some(i.to_string()));
        }
    }
    phases.push(meshes);

    let builtin = run_phase(
        "PUT new Mesh (builtin CA generated)",
        &clients,
        pid,
        p.builtin_meshes,
        |i| Request {
            method: Method::PUT,
            path: format!("/meshes/b-{i}"),
            body: builtin_mesh_yaml(&format!("b-{i}"), "24h"),
            expect: "created",
        },
    )
    .await;
    for (i, ok) in builtin.ok.iter().enumerate() {
        if *ok {
            expected.meshes.insert(format!("b-{i}"), None);
            expected.owned_secrets.insert(format!("b-{i}"), 2);
        }
    }
    phases.push(builtin);

    // Vault Meshes: each admission issues a test certificate from OpenBao; raw issuance with as
    // many in flight is the baseline. The server stays up until the end.
    let mut vault_run = None;
    if p.vault_meshes > 0 {
        let vault = Vault::start(false, true).await?;
        // The page's role allows the SANs of Mesh `default` only: widen it to the Meshes v-<i>.
        let admin = vault.server.admin();
        tokio::task::spawn_blocking(move || {
            seed::create_role(
                &admin,
                PKI,
                ROLE,
                &RoleOptions::seed_ec(MESH).allowed_uri_sans("spiffe://*,kuma://*"),
            )
        })
        .await??;
        let bao = bao_pid(vault.server.port()).unwrap_or(0);
        let cpu = cpu_secs(bao);
        let raw = raw_issue(&vault, p.vault_meshes, p.clients).await?;
        let raw_cpu = cpu_secs(bao) - cpu;
        let template = vault_mesh_yaml(&vault.addr(), &vault.token, "24h");
        let cpu = cpu_secs(bao);
        let phase = run_phase(
            "POST /apply new Mesh (vault, test certificate)",
            &clients,
            pid,
            p.vault_meshes,
            move |i| Request {
                method: Method::POST,
                path: "/apply".into(),
                body: template
                    .replace(&format!("name: {MESH}\n"), &format!("name: v-{i}\n"))
                    .replace(&format!("mesh: {MESH}\n"), &format!("mesh: v-{i}\n")),
                expect: "created",
            },
        )
        .await;
        let phase_cpu = cpu_secs(bao) - cpu;
        for (i, ok) in phase.ok.iter().enumerate() {
            if *ok {
                expected.meshes.insert(format!("v-{i}"), None);
                expected.owned_secrets.insert(format!("v-{i}"), 1);
            }
        }
        phases.push(phase);
        vault_run = Some((vault, raw, raw_cpu, phase_cpu));
    }

    let updated = run_phase("PUT Secret, new data", &clients, pid, n, |i| Request {
        method: Method::PUT,
        path: format!("/meshes/{SECRETS_MESH}/secrets/s-{i}"),
        body: secret_yaml(i, 2),
        expect: "updated",
    })
    .await;
    for (i, ok) in updated.ok.iter().enumerate() {
        if *ok {
            expected.secrets.insert(i, 2);
        } else {
            expected.secrets.remove(&i);
            expected.unknown.insert(i);
        }
    }
    phases.push(updated);

    // Every other Secret (even indices).
    let deleted = run_phase("DELETE Secret", &clients, pid, n.div_ceil(2), |k| Request {
        method: Method::DELETE,
        path: format!("/meshes/{SECRETS_MESH}/secrets/s-{}", 2 * k),
        body: String::new(),
        expect: "deleted",
    })
    .await;
    for (k, ok) in deleted.ok.iter().enumerate() {
        expected.secrets.remove(&(2 * k));
        if !ok {
            expected.unknown.insert(2 * k);
        }
    }
    phases.push(deleted);

    let cpu_phases = cpu_secs(pid) - cpu_start;
    let live = check_stored(&global.api, &clients, &expected).await?;
    let cpu_total = cpu_secs(pid) - cpu_start;
    let rss = rss_kb(pid);
    let peak = hwm_kb(pid);

    let stop_start = Instant::now();
    let exit = global.proc.stop(Duration::from_secs(30));
    let stopped_in = stop_start.elapsed();
    let start_again = Instant::now();
    global = GlobalProc::start_with(&global_dir, options.ports(global.api_port, global.kds_port))
        .await?;
    let ready_in = start_again.elapsed();
    let restarted = check_stored(&global.api, &clients, &expected).await?;

    let mut table = Table::new(&[
        "phase",
        "ops",
        "wall s",
        "applies/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "failed",
        "global CPU s",
    ]);
    if let Some((_, raw, _, _)) = &vault_run {
        table.row(&[
            format!("raw OpenBao issue, {} in flight (baseline)", p.clients),
            p.vault_meshes.to_string(),
            format!("{:.2}", raw.as_secs_f64()),
            format!("{:.0}", p.vault_meshes as f64 / raw.as_secs_f64().max(1e-9)),
            "-".into(),
            "-".into(),
            "-".into(),
            "0".into(),
            "-".into(),
        ]);
    }
    for ph in &phases {
        let s = Stats::of(&ph.latencies);
        let total = ph.ok.len();
        let failed = ph.ok.iter().filter(|o| !**o).count();
        table.row(&[
            ph.name.clone(),
            total.to_string(),
            format!("{:.2}", ph.elapsed.as_secs_f64()),
            format!("{:.0}", total as f64 / ph.elapsed.as_secs_f64().max(1e-9)),
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            failed.to_string(),
            format!("{:.2}", ph.global_cpu),
        ]);
    }
    let mut checks = Table::new(&["measure", "value", "target"]);
    let verdict = |d: &[String]| {
        if d.is_empty() {
            format!(
                "identical ({} Meshes, {} Secrets, data of each)",
                expected.meshes.len(),
                expected.secrets.len()
            )
        } else {
            format!("{} differences", d.len())
        }
    };
    let failed: usize = phases.iter().map(|ph| ph.failures.len()).sum();
    checks.row(&[
        "requests failed (non-2xx, transport, wrong result)".into(),
        failed.to_string(),
        "0".into(),
    ]);
    checks.row(&[
        "stored vs acknowledged, global running".into(),
        verdict(&live),
        "identical".into(),
    ]);
    checks.row(&[
        "stored vs acknowledged, after restart".into(),
        verdict(&restarted),
        "identical".into(),
    ]);
    checks.row(&[
        "  global stop (SIGTERM) / start until healthy".into(),
        format!(
            "{:.2} s ({}) / {:.2} s",
            stopped_in.as_secs_f64(),
            exit.map_or("not stopped".to_string(), |s| s.to_string()),
            ready_in.as_secs_f64()
        ),
        String::new(),
    ]);
    checks.row(&[
        "global CPU s: phases / with the live check".into(),
        format!("{cpu_phases:.2} / {cpu_total:.2}"),
        String::new(),
    ]);
    if let Some((_, _, raw_cpu, phase_cpu)) = &vault_run {
        checks.row(&[
            "OpenBao CPU s: raw baseline / vault Mesh phase".into(),
            format!("{raw_cpu:.2} / {phase_cpu:.2}"),
            String::new(),
        ]);
    }
    checks.row(&[
        "global RSS at the end (peak)".into(),
        format!(
            "{:.1} MB ({:.1} MB)",
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        ),
        String::new(),
    ]);
    println!("\n{}\n{}", table.render(), checks.render());

    let rates = phases
        .iter()
        .map(|ph| {
            (
                ph.name.clone(),
                ph.ok.len() as f64 / ph.elapsed.as_secs_f64().max(1e-9),
            )
        })
        .collect();
    let mut problems = Vec::new();
    for ph in &phases {
        for f in ph.failures.iter().take(SHOWN_FAILURES) {
            problems.push(format!("{}: {f}", ph.name));
        }
    }
    for d in live.iter().take(SHOWN_FAILURES) {
        problems.push(format!("live check: {d}"));
    }
    for d in restarted.iter().take(SHOWN_FAILURES) {
        problems.push(format!("after restart: {d}"));
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("  {p}");
        }
        bail!(
            "{failed} requests failed, {} differences live, {} after restart (first ones above; global's log: {})",
            live.len(),
            restarted.len(),
            global.proc.log.display()
        );
    }
    drop(global);
    drop(pg);
    Ok(rates)
}
