//! `scenarios bench api --tls`: what HTTPS costs a Secret PUT, measured against plain HTTP in the
//! same run on the same global.
//!
//! A real `global` (sled) on loopback serves its API on both listeners: plain HTTP (`--api-addr`)
//! and HTTPS (`--api-tls-addr`, the generated certificate, trusted through `api-ca.pem`). Three
//! sets of C clients (`--clients`), each client with its own connection and the admin token:
//! plain HTTP/1.1, HTTPS with HTTP/1.1 and HTTPS with h2 (each by ALPN). Every client first makes
//! one `GET /healthz` to open its connection (the TLS handshake: its latency is reported apart),
//! then the phases `PUT /meshes/bench/secrets/<proto>-<round>-<i>` (new Secrets, small base64
//! data) run one protocol at a time, in rounds whose order rotates so that none always meets the
//! fuller store; `--ops` Secrets per protocol in all. Per protocol: PUTs per second, p50/p99/max
//! latency and global's CPU per PUT, and each against plain HTTP. Any non-2xx answer or
//! transport error fails the bench.

use std::time::Instant;

use anyhow::{Result, bail};
use reqwest::Method;

use super::api::{Phase, Request, run_phase, secret_data};
use crate::report::{Stats, Table};
use testkit::api::{Api, https_client};
use testkit::cluster::GlobalProc;

/// The Mesh holding the Secrets.
const MESH: &str = "bench";
/// Rounds each protocol's Secrets are split into (the order of the protocols rotates).
const ROUNDS: usize = 3;

/// One way of reaching the API.
struct Protocol {
    name: &'static str,
    key: &'static str,
    clients: Vec<Api>,
    /// Latency of each client's first request (connection and, over TLS, handshake), ms.
    connect_ms: Vec<f64>,
    phases: Vec<Phase>,
}

pub async fn run(clients: usize, ops: usize) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("bench-api-tls-")
        .tempdir()?;
    println!(
        "bench api --tls: {clients} clients per protocol, {ops} Secret PUTs per protocol in {ROUNDS} rounds (logs in {})",
        dir.path().display()
    );
    match measure(clients, ops, dir.path()).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let kept = dir.keep();
            eprintln!("logs kept in {}", kept.display());
            Err(e)
        }
    }
}

async fn measure(clients: usize, ops: usize, dir: &std::path::Path) -> Result<()> {
    let global = GlobalProc::start(&dir.join("global")).await?;
    let pid = global.proc.pid().unwrap_or(0);
    let ca = std::fs::read(global.api_ca_file())?;
    let token = Some(global.token.clone());
    let make = |name, key, mk: &dyn Fn() -> Result<Api>| -> Result<Protocol> {
        Ok(Protocol {
            name,
            key,
            clients: (0..clients).map(|_| mk()).collect::<Result<_>>()?,
            connect_ms: Vec::new(),
            phases: Vec::new(),
        })
    };
    let plain = global.api_url();
    let https = global.https_url();
    let mut protocols = vec![
        make("HTTP/1.1 (plain)", "http", &|| {
            Ok(Api::new(&plain, token.clone()))
        })?,
        make("HTTPS, HTTP/1.1", "h1", &|| {
            Ok(Api::with_client(
                &https,
                token.clone(),
                https_client(&ca, false)?,
            ))
        })?,
        make("HTTPS, h2", "h2", &|| {
            Ok(Api::with_client(
                &https,
                token.clone(),
                https_client(&ca, true)?,
            ))
        })?,
    ];
    global.apply(&format!("type: Mesh\nname: {MESH}\n")).await?;

    // Each client's connection, opened before the timed phases.
    for p in &mut protocols {
        let opened = p.clients.iter().map(|c| async move {
            let t = Instant::now();
            c.get_ok("/healthz")
                .await
                .map(|_| t.elapsed().as_secs_f64() * 1000.0)
        });
        for r in futures::future::join_all(opened).await {
            p.connect_ms.push(r?);
        }
    }

    let per_round = ops.div_ceil(ROUNDS);
    for round in 0..ROUNDS {
        let n = per_round.min(ops - (per_round * round).min(ops));
        let order: Vec<usize> = (0..protocols.len())
            .map(|k| (k + round) % protocols.len())
            .collect();
        for k in order {
            let p = &mut protocols[k];
            let key = p.key;
            let phase = run_phase(p.name, &p.clients, pid, n, move |i| Request {
                method: Method::PUT,
                path: format!("/meshes/{MESH}/secrets/{key}-{round}-{i}"),
                body: format!(
                    "type: Secret\nname: {key}-{round}-{i}\nmesh: {MESH}\ndata: {}\n",
                    secret_data(i, 1)
                ),
                expect: "created",
            })
            .await;
            p.phases.push(phase);
        }
    }

    let mut table = Table::new(&[
        "protocol",
        "PUTs",
        "wall s",
        "PUTs/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "failed",
        "global CPU ms/PUT",
        "first request p50 ms",
    ]);
    let mut summary = Vec::new();
    let mut problems = Vec::new();
    let mut failures = 0;
    for p in &protocols {
        let latencies: Vec<f64> = p
            .phases
            .iter()
            .flat_map(|ph| ph.latencies.clone())
            .collect();
        let wall: f64 = p.phases.iter().map(|ph| ph.elapsed.as_secs_f64()).sum();
        let done: usize = p.phases.iter().map(|ph| ph.ok.len()).sum();
        let failed: usize = p
            .phases
            .iter()
            .map(|ph| ph.ok.iter().filter(|o| !**o).count())
            .sum();
        failures += failed;
        let cpu: f64 = p.phases.iter().map(|ph| ph.global_cpu).sum();
        for ph in &p.phases {
            problems.extend(
                ph.failures
                    .iter()
                    .take(5)
                    .map(|f| format!("{}: {f}", p.name)),
            );
        }
        let s = Stats::of(&latencies);
        let rate = done as f64 / wall.max(1e-9);
        table.row(&[
            p.name.to_string(),
            done.to_string(),
            format!("{wall:.2}"),
            format!("{rate:.0}"),
            format!("{:.1}", s.p50),
            format!("{:.1}", s.p99),
            format!("{:.1}", s.max),
            failed.to_string(),
            format!("{:.3}", cpu * 1000.0 / done.max(1) as f64),
            format!("{:.1}", Stats::of(&p.connect_ms).p50),
        ]);
        summary.push((p.name, rate, s));
    }
    let mut versus = Table::new(&["against plain HTTP", "PUTs/s", "p50", "p99"]);
    if let Some((_, base_rate, base)) = summary.first().cloned() {
        for (name, rate, s) in summary.iter().skip(1) {
            versus.row(&[
                name.to_string(),
                format!("{:.2}x", rate / base_rate.max(1e-9)),
                format!("{:.2}x", s.p50 / base.p50.max(1e-9)),
                format!("{:.2}x", s.p99 / base.p99.max(1e-9)),
            ]);
        }
    }
    println!("\n{}\n{}", table.render(), versus.render());
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("  {p}");
        }
        bail!(
            "{failures} requests failed (first ones above; global's log: {})",
            global.proc.log.display()
        );
    }
    Ok(())
}
