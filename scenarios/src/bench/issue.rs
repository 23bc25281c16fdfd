//! `scenarios bench issue`: certifying proxies through a zone, against raw OpenBao in the same run.
//!
//! 1. Raw baseline: N certificates straight from OpenBao's `<pki>/issue/<role>` (same role, SANs,
//!    TTL) with C requests in flight.
//! 2. The zone: N proxies open identity streams at once (the bench plays the agents: real gRPC
//!    over TLS with dataplane tokens, 100 streams per connection) and the zone issues with
//!    `--max-concurrent-issuance C`; timed until every proxy has its first certificate.
//! 3. Zone restart with those N proxies: they reconnect presenting their certificates; counted:
//!    issuances after the restart (should be 0) and time until every proxy is served again.
//! 4. Memory: the zone's RSS with M registered proxies (builtin backend, so the figure is the
//!    zone's own cost, not Vault's).
//!
//! With `--key-generation proxy` instead: N EC P-256 CSRs made up front (on a proxy's host, in
//! reality), signed by raw OpenBao `<pki>/sign/<role>` with C in flight, then by the zone: N
//! `Session` streams, each answering the zone's CSR request with one of those CSRs, timed until
//! every proxy holds its certificate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use proto::dpid::dataplane_identity_client::DataplaneIdentityClient;
use proto::dpid::{IdentityRequest, IdentityResponse};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::report::Table;
use testkit::api::metric_sum;
use testkit::cluster::{GlobalProc, ZoneProc};
use testkit::cluster::{MESH, PKI, ROLE, Vault, builtin_mesh_yaml, vault_mesh_yaml};

#[derive(Debug, Clone, clap::Args)]
pub struct IssueBench {
    /// Proxies certified in the timed runs.
    #[arg(long, default_value_t = 1000)]
    pub proxies: usize,
    /// Issuance requests in flight (the zone's --max-concurrent-issuance and the baseline's).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Proxies for the RSA run with the reference page's role (RSA-2048 issuance is slow: ~47/s).
    #[arg(long, default_value_t = 200)]
    pub rsa_proxies: usize,
    /// Proxies registered for the memory measurement.
    #[arg(long, default_value_t = 10000)]
    pub memory_proxies: usize,
    /// `proxy`: measure `dpCert.keyGeneration: proxy` (CSRs signed) instead.
    #[arg(long, value_enum, default_value_t = KeyGen::ControlPlane)]
    pub key_generation: KeyGen,
}

/// Who makes the proxies' keys in the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyGen {
    ControlPlane,
    Proxy,
}

/// Streams per HTTP/2 connection from the bench to the zone.
const STREAMS_PER_CONNECTION: usize = 100;

pub async fn run(p: IssueBench) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("bench-issue-").tempdir()?;
    println!(
        "bench issue: {} proxies, concurrency {}, RSA run {} proxies, memory run {} proxies (logs in {})",
        p.proxies,
        p.concurrency,
        p.rsa_proxies,
        p.memory_proxies,
        dir.path().display()
    );
    let mut table = Table::new(&["measure", "value", "target / baseline"]);
    if p.key_generation == KeyGen::Proxy {
        return sign_bench(&p, dir.path(), table).await;
    }

    // EC role: zone vs raw OpenBao, then the restart.
    let mut ec = VaultRun::start(&dir.path().join("ec"), true, p.concurrency).await?;
    let cpu = ec.cpu();
    let raw = raw_issue(&ec.vault, p.proxies, p.concurrency).await?;
    let raw_cpu = ec.cpu().since(&cpu);
    let cpu = ec.cpu();
    let (zone_time, chains) = ec.certify(p.proxies, "ec", &[]).await?;
    let zone_cpu = ec.cpu().since(&cpu);
    table.row(&[
        format!(
            "raw OpenBao: {} EC certs, {} in flight",
            p.proxies, p.concurrency
        ),
        format!(
            "{:.2} s ({:.0}/s)",
            raw.as_secs_f64(),
            p.proxies as f64 / raw.as_secs_f64()
        ),
        "baseline".into(),
    ]);
    table.row(&[
        "  CPU s: OpenBao / bench client".into(),
        format!("{:.2} / {:.2}", raw_cpu.vault, raw_cpu.bench),
        String::new(),
    ]);
    table.row(&[
        format!("zone: {} proxies certified (EC role)", p.proxies),
        format!(
            "{:.2} s ({:.0}/s)",
            zone_time.as_secs_f64(),
            p.proxies as f64 / zone_time.as_secs_f64()
        ),
        String::new(),
    ]);
    table.row(&[
        "  CPU s: OpenBao / zone / global / bench client".into(),
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2}",
            zone_cpu.vault, zone_cpu.zone, zone_cpu.global, zone_cpu.bench
        ),
        String::new(),
    ]);
    table.row(&[
        "ratio zone / raw (EC)".into(),
        format!("{:.2}", zone_time.as_secs_f64() / raw.as_secs_f64()),
        "< 1.2".into(),
    ]);

    let restart = ec.restart_with(chains).await?;

    table.row(&[
        format!(
            "zone restart with {} proxies: issuances after restart",
            p.proxies
        ),
        format!("{}", restart.issued),
        "0".into(),
    ]);
    table.row(&[
        "  certificates kept (reused)".into(),
        format!("{}", restart.reused),
        format!("{}", p.proxies),
    ]);
    table.row(&[
        "  zone process start → every proxy served again".into(),
        format!("{:.2} s", restart.ready.as_secs_f64()),
        String::new(),
    ]);

    // The reference page's role (RSA-2048): zone vs raw.
    if p.rsa_proxies > 0 {
        let rsa = VaultRun::start(&dir.path().join("rsa"), false, p.concurrency).await?;
        let raw = raw_issue(&rsa.vault, p.rsa_proxies, p.concurrency).await?;
        let (zone_time, _) = rsa.certify(p.rsa_proxies, "rsa", &[]).await?;
        table.row(&[
            format!(
                "raw OpenBao: {} RSA-2048 certs (page's role)",
                p.rsa_proxies
            ),
            format!(
                "{:.2} s ({:.0}/s)",
                raw.as_secs_f64(),
                p.rsa_proxies as f64 / raw.as_secs_f64()
            ),
            "baseline".into(),
        ]);
        table.row(&[
            format!(
                "zone: {} proxies certified (page's RSA role)",
                p.rsa_proxies
            ),
            format!(
                "{:.2} s ({:.0}/s)",
                zone_time.as_secs_f64(),
                p.rsa_proxies as f64 / zone_time.as_secs_f64()
            ),
            String::new(),
        ]);
        table.row(&[
            "ratio zone / raw (RSA)".into(),
            format!("{:.2}", zone_time.as_secs_f64() / raw.as_secs_f64()),
            String::new(),
        ]);
    }

    // Memory with many registered proxies (builtin backend).
    if p.memory_proxies > 0 {
        let mem = MemoryRun::start(&dir.path().join("mem"), p.concurrency).await?;
        let before = rss_kb(mem.zone.proc.pid().unwrap_or(0));
        let cpu = mem.cpu();
        let (elapsed, _streams) = mem.certify_and_hold(p.memory_proxies).await?;
        let mem_cpu = mem.cpu().since(&cpu);
        let after = rss_kb(mem.zone.proc.pid().unwrap_or(0));
        let peak = hwm_kb(mem.zone.proc.pid().unwrap_or(0));
        table.row(&[
            "zone RSS idle (builtin mesh)".into(),
            format!("{:.1} MB", before as f64 / 1024.0),
            String::new(),
        ]);
        table.row(&[
            format!(
                "zone RSS with {} proxies connected and certified",
                p.memory_proxies
            ),
            format!(
                "{:.1} MB (peak {:.1} MB)",
                after as f64 / 1024.0,
                peak as f64 / 1024.0
            ),
            "< 150 MB".into(),
        ]);
        table.row(&[
            format!(
                "  time to certify {} proxies (builtin, local signing)",
                p.memory_proxies
            ),
            format!("{:.2} s", elapsed.as_secs_f64()),
            String::new(),
        ]);
        table.row(&[
            "  CPU s until measured: zone / global / bench client".into(),
            format!(
                "{:.2} / {:.2} / {:.2}",
                mem_cpu.zone, mem_cpu.global, mem_cpu.bench
            ),
            String::new(),
        ]);
    }
    println!("\n{}", table.render());
    Ok(())
}

/// OpenBao with the page's steps, global, one zone, the page's Mesh.
struct VaultRun {
    vault: Vault,
    global: GlobalProc,
    zone: Option<ZoneProc>,
    dir: std::path::PathBuf,
    zone_token: std::path::PathBuf,
    concurrency: usize,
}

struct Restart {
    issued: u64,
    reused: u64,
    ready: Duration,
}

impl VaultRun {
    async fn start(dir: &std::path::Path, ec_role: bool, concurrency: usize) -> Result<Self> {
        let vault = Vault::start(false, ec_role).await?;
        let global = GlobalProc::start(&dir.join("global")).await?;
        global
            .apply(&vault_mesh_yaml(&vault.addr(), &vault.token, "24h"))
            .await?;
        let zone_token = global.zone_token_file("zone-1", dir).await?;
        let zone = start_zone(&global, &zone_token, &dir.join("zone-1"), concurrency).await?;
        Ok(Self {
            vault,
            global,
            zone: Some(zone),
            dir: dir.to_path_buf(),
            zone_token,
            concurrency,
        })
    }

    fn zone(&self) -> &ZoneProc {
        self.zone.as_ref().expect("zone running")
    }

    /// CPU time used so far by each process of the run.
    fn cpu(&self) -> Cpu {
        Cpu {
            vault: bao_pid(self.vault.server.port()).map_or(0.0, cpu_secs),
            zone: self
                .zone
                .as_ref()
                .and_then(|z| z.proc.pid())
                .map_or(0.0, cpu_secs),
            global: self.global.proc.pid().map_or(0.0, cpu_secs),
            bench: cpu_secs(std::process::id()),
        }
    }

    /// Certifies `n` proxies; returns the time and each proxy's chain.
    async fn certify(
        &self,
        n: usize,
        prefix: &str,
        presented: &[String],
    ) -> Result<(Duration, Vec<String>)> {
        let tokens = dataplane_tokens(&self.global, prefix, n).await?;
        let (elapsed, chains, _streams) =
            open_streams(self.zone(), prefix, &tokens, presented).await?;
        Ok((elapsed, chains))
    }

    /// Restarts the zone (SIGTERM, same data dir) and reconnects the proxies with their chains.
    async fn restart_with(&mut self, chains: Vec<String>) -> Result<Restart> {
        if let Some(mut z) = self.zone.take() {
            z.proc.stop(Duration::from_secs(10));
        }
        let t0 = Instant::now();
        let zone = start_zone(
            &self.global,
            &self.zone_token,
            &self.dir.join("zone-1"),
            self.concurrency,
        )
        .await?;
        self.zone = Some(zone);
        let n = chains.len();
        let tokens = dataplane_tokens(&self.global, "ec", n).await?;
        let (_, _, _streams) = open_streams(self.zone(), "ec", &tokens, &chains).await?;
        let ready = t0.elapsed();
        let metrics = self.zone().api.get_text("/metrics").await?;
        Ok(Restart {
            issued: metric_sum(&metrics, "kmesh_certificates_issued_total") as u64,
            reused: metric_sum(&metrics, "kmesh_certificates_reused_total") as u64,
            ready,
        })
    }
}

pub(crate) struct MemoryRun {
    pub(crate) global: GlobalProc,
    pub(crate) zone: ZoneProc,
}

impl MemoryRun {
    pub(crate) fn cpu(&self) -> Cpu {
        Cpu {
            vault: 0.0,
            zone: self.zone.proc.pid().map_or(0.0, cpu_secs),
            global: self.global.proc.pid().map_or(0.0, cpu_secs),
            bench: cpu_secs(std::process::id()),
        }
    }

    pub(crate) async fn start(dir: &std::path::Path, concurrency: usize) -> Result<Self> {
        let global = GlobalProc::start(&dir.join("global")).await?;
        global.apply(&builtin_mesh_yaml(MESH, "24h")).await?;
        let token = global.zone_token_file("zone-1", dir).await?;
        let zone = start_zone(&global, &token, &dir.join("zone-1"), concurrency).await?;
        Ok(Self { global, zone })
    }

    async fn certify_and_hold(
        &self,
        n: usize,
    ) -> Result<(Duration, Vec<tonic::Streaming<IdentityResponse>>)> {
        let tokens = dataplane_tokens(&self.global, "mem", n).await?;
        let (elapsed, _, streams) = open_streams(&self.zone, "mem", &tokens, &[]).await?;
        // Let the zone settle (status reports, records) before reading its memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok((elapsed, streams))
    }
}

pub(crate) async fn start_zone(
    global: &GlobalProc,
    token: &std::path::Path,
    dir: &std::path::Path,
    concurrency: usize,
) -> Result<ZoneProc> {
    let c = concurrency.to_string();
    let zone = ZoneProc::start_with(
        "zone-1",
        &global.kds_address(),
        &global.ca_file(),
        token,
        dir,
        &["--max-concurrent-issuance", &c],
    )
    .await?;
    // Wait until the zone holds the mesh (it may be serving from its store already).
    testkit::wait::wait_until(
        "the zone to hold the mesh",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let v = zone.api.get_ok(&format!("/meshes/{MESH}")).await.ok()?;
            Some(v).filter(|v| v.get("name").is_some())
        },
    )
    .await?;
    Ok(zone)
}

/// `n` dataplane tokens `<prefix>-<i>`.
pub(crate) async fn dataplane_tokens(
    global: &GlobalProc,
    prefix: &str,
    n: usize,
) -> Result<Vec<String>> {
    let tokens = futures::stream::iter(0..n)
        .map(|i| {
            let api = global.api.clone();
            async move {
                let v = api
                    .write_ok(
                        reqwest::Method::POST,
                        "/tokens/dataplane",
                        &format!(
                            "{{\"mesh\": \"{MESH}\", \"name\": \"{prefix}-{i}\", \"anyService\": true}}"
                        ),
                    )
                    .await?;
                v.get("token")
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("no token in {v}"))
            }
        })
        .buffered(32)
        .collect::<Vec<Result<String>>>()
        .await;
    tokens.into_iter().collect()
}

pub(crate) async fn zone_channel(zone: &ZoneProc) -> Result<Channel> {
    let ca = std::fs::read(zone.dir.join("dp-ca.pem")).context("reading the zone's dp-ca.pem")?;
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", zone.dp_port))?
        .tls_config(
            ClientTlsConfig::new()
                .domain_name("localhost")
                .ca_certificate(Certificate::from_pem(ca)),
        )?
        .tcp_nodelay(true);
    Ok(endpoint.connect().await?)
}

/// Enough connections to the zone's identity service for `n` streams
/// (`STREAMS_PER_CONNECTION` each).
async fn zone_channels(zone: &ZoneProc, n: usize) -> Result<Arc<Vec<Channel>>> {
    let mut channels = Vec::new();
    for _ in 0..n.div_ceil(STREAMS_PER_CONNECTION) {
        channels.push(zone_channel(zone).await?);
    }
    Ok(Arc::new(channels))
}

/// Opens one identity stream per token (proxy `<prefix>-<i>`, service `svc-<i % 50>`), all at
/// once, and waits for each first bundle. Returns the time from the first open to the last bundle,
/// the chains, and the open streams (dropping them disconnects the proxies).
pub(crate) async fn open_streams(
    zone: &ZoneProc,
    prefix: &str,
    tokens: &[String],
    presented: &[String],
) -> Result<(
    Duration,
    Vec<String>,
    Vec<tonic::Streaming<IdentityResponse>>,
)> {
    let n = tokens.len();
    let channels = zone_channels(zone, n).await?;
    let start = Instant::now();
    let results = futures::stream::iter(0..n)
        .map(|i| {
            let channels = channels.clone();
            let token = tokens[i].clone();
            // What a proxy held: its chain, then its key, in one PEM text.
            let held = presented.get(i).cloned().unwrap_or_default();
            let key_at = ["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"]
                .iter()
                .find_map(|k| held.find(&format!("-----BEGIN {k}-----")));
            let (chain, proof) = match key_at {
                Some(at) => {
                    let (chain, key) = held.split_at(at);
                    let now = common::clock::now_unix();
                    let name = format!("{prefix}-{i}");
                    let leaf = common::x509::pem_to_ders(chain)
                        .ok()
                        .and_then(|d| d.into_iter().next())
                        .unwrap_or_default();
                    let msg = common::x509::possession_message(MESH, &name, now, &leaf);
                    let sig = common::x509::sign_possession(key, &msg).unwrap_or_default();
                    (chain.to_string(), (sig, now))
                }
                None => (String::new(), (Vec::new(), 0)),
            };
            let prefix = prefix.to_string();
            async move {
                let channel = channels[i / STREAMS_PER_CONNECTION].clone();
                let mut client = DataplaneIdentityClient::new(channel);
                let mut tags = HashMap::new();
                tags.insert("kuma.io/service".to_string(), format!("svc-{}", i % 50));
                let mut req = tonic::Request::new(IdentityRequest {
                    mesh: MESH.into(),
                    name: format!("{prefix}-{i}"),
                    tags,
                    cert_chain_pem: chain,
                    agent_version: "bench".into(),
                    possession_signature: proof.0,
                    possession_unix: proof.1,
                });
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
                let mut stream = client
                    .stream(req)
                    .await
                    .map_err(|s| anyhow!("proxy {i}: {s}"))?
                    .into_inner();
                let first = tokio::time::timeout(Duration::from_secs(300), stream.message())
                    .await
                    .map_err(|_| anyhow!("proxy {i}: no certificate within 300 s"))?
                    .map_err(|s| anyhow!("proxy {i}: {s}"))?
                    .ok_or_else(|| anyhow!("proxy {i}: stream ended"))?;
                let held = format!(
                    "{}{}",
                    first.cert_chain_pem,
                    first.key_pem.unwrap_or_default()
                );
                Ok::<_, anyhow::Error>((i, held, stream))
            }
        })
        .buffer_unordered(n.max(1))
        .collect::<Vec<_>>()
        .await;
    let elapsed = start.elapsed();
    // Results arrive in completion order: put each chain back at its proxy's index.
    let mut chains = vec![String::new(); n];
    let mut streams = Vec::with_capacity(n);
    for r in results {
        let (i, chain, stream) = r?;
        chains[i] = chain;
        streams.push(stream);
    }
    if let Some(missing) = chains.iter().position(String::is_empty) {
        bail!("proxy {missing} was not served");
    }
    Ok((elapsed, chains, streams))
}

/// `--key-generation proxy`: raw OpenBao `sign` of N CSRs against the zone signing the same CSRs
/// for N proxies.
async fn sign_bench(p: &IssueBench, dir: &std::path::Path, mut table: Table) -> Result<()> {
    let n = p.proxies;
    let made = Instant::now();
    let csrs: Vec<Vec<u8>> = (0..n)
        .map(|_| common::csr::generate(common::model::KeyType::EcP256).map(|g| g.csr_der))
        .collect::<Result<_, _>>()?;
    println!(
        "{n} EC P-256 keys and CSRs made in {:.2} s (not timed below)",
        made.elapsed().as_secs_f64()
    );
    let mut vault = Vault::start(false, true).await?;
    // A token that may only sign, as a cluster in proxy mode needs; the raw baseline uses it too.
    vault.token = vault.sign_only()?;
    let global = GlobalProc::start(&dir.join("global")).await?;
    let yaml = vault_mesh_yaml(&vault.addr(), &vault.token, "24h").replacen(
        "        expiration: 24h",
        "        expiration: 24h\n      keyGeneration: proxy",
        1,
    );
    global.apply(&yaml).await?;
    let token = global.zone_token_file("zone-1", dir).await?;
    let zone = start_zone(&global, &token, &dir.join("zone-1"), p.concurrency).await?;

    let raw = raw_sign(&vault, &csrs, p.concurrency).await?;
    let tokens = dataplane_tokens(&global, "csr", n).await?;
    let zone_time = open_sessions(&zone, "csr", &tokens, &csrs).await?;
    table.row(&[
        format!(
            "raw OpenBao: {n} EC CSRs signed, {} in flight",
            p.concurrency
        ),
        format!(
            "{:.2} s ({:.0}/s)",
            raw.as_secs_f64(),
            n as f64 / raw.as_secs_f64()
        ),
        "baseline".into(),
    ]);
    table.row(&[
        format!("zone: {n} proxies certified from their CSRs (keyGeneration: proxy)"),
        format!(
            "{:.2} s ({:.0}/s)",
            zone_time.as_secs_f64(),
            n as f64 / zone_time.as_secs_f64()
        ),
        String::new(),
    ]);
    table.row(&[
        "ratio zone / raw (sign)".into(),
        format!("{:.2}", zone_time.as_secs_f64() / raw.as_secs_f64()),
        "< 1.1".into(),
    ]);
    println!("\n{}", table.render());
    Ok(())
}

/// Raw OpenBao: each CSR signed by `<pki>/sign/<role>` with `c` in flight.
async fn raw_sign(vault: &Vault, csrs: &[Vec<u8>], c: usize) -> Result<Duration> {
    raw_requests(vault, "sign", csrs.len(), c, |i, body| {
        body["csr"] = serde_json::Value::String(common::csr::pem_of(&csrs[i]));
    })
    .await
}

/// One `Session` per token (proxy `<prefix>-<i>`), all at once, each answering the zone's CSR
/// request with `csrs[i]`; the time from the first open until every proxy holds a certificate.
async fn open_sessions(
    zone: &ZoneProc,
    prefix: &str,
    tokens: &[String],
    csrs: &[Vec<u8>],
) -> Result<Duration> {
    use proto::dpid::{AgentMessage, Csr, agent_message};
    let n = tokens.len();
    let channels = zone_channels(zone, n).await?;
    let start = Instant::now();
    let results = futures::stream::iter(0..n)
        .map(|i| {
            let channels = channels.clone();
            let token = tokens[i].clone();
            let csr = csrs[i].clone();
            let name = format!("{prefix}-{i}");
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(2);
                let mut tags = HashMap::new();
                tags.insert("kuma.io/service".to_string(), format!("svc-{}", i % 50));
                tx.send(AgentMessage {
                    message: Some(agent_message::Message::Hello(IdentityRequest {
                        mesh: MESH.into(),
                        name,
                        tags,
                        agent_version: "bench".into(),
                        ..Default::default()
                    })),
                })
                .await?;
                let outbound = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|m| (m, rx))
                });
                let mut req = tonic::Request::new(outbound);
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
                let mut client =
                    DataplaneIdentityClient::new(channels[i / STREAMS_PER_CONNECTION].clone());
                let mut inbound = client
                    .session(req)
                    .await
                    .map_err(|s| anyhow!("proxy {i}: {s}"))?
                    .into_inner();
                loop {
                    let msg = tokio::time::timeout(Duration::from_secs(300), inbound.message())
                        .await
                        .map_err(|_| anyhow!("proxy {i}: no certificate within 300 s"))?
                        .map_err(|s| anyhow!("proxy {i}: {s}"))?
                        .ok_or_else(|| anyhow!("proxy {i}: stream ended"))?;
                    match msg.csr_request {
                        Some(ask) => {
                            tx.send(AgentMessage {
                                message: Some(agent_message::Message::Csr(Csr {
                                    der: csr.clone(),
                                    nonce: ask.nonce,
                                })),
                            })
                            .await?;
                        }
                        None if !msg.cert_chain_pem.is_empty() => {
                            return Ok::<_, anyhow::Error>((tx, inbound));
                        }
                        None => {}
                    }
                }
            }
        })
        .buffer_unordered(n.max(1))
        .collect::<Vec<_>>()
        .await;
    let elapsed = start.elapsed();
    let mut held = Vec::with_capacity(n);
    for r in results {
        held.push(r?);
    }
    drop(held);
    Ok(elapsed)
}

/// Raw OpenBao: `n` certificates from `<pki>/issue/<role>` with `c` in flight.
pub(crate) async fn raw_issue(vault: &Vault, n: usize, c: usize) -> Result<Duration> {
    raw_requests(vault, "issue", n, c, |_, _| {}).await
}

/// `n` requests to `<pki>/<op>/<role>` with `c` in flight, each with the names and TTL a proxy of
/// service `svc-<i % 50>` gets, and what `more` adds to request `i`'s body.
async fn raw_requests(
    vault: &Vault,
    op: &str,
    n: usize,
    c: usize,
    more: impl Fn(usize, &mut serde_json::Value),
) -> Result<Duration> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(c * 2)
        .build()?;
    let url = format!("{}/v1/{PKI}/{op}/{ROLE}", vault.addr());
    let bodies: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let svc = format!("svc-{}", i % 50);
            let mut body = serde_json::json!({
                "common_name": format!("{svc}.mesh"),
                "uri_sans": format!("spiffe://{MESH}/{svc},kuma://kuma.io/service/{svc}"),
                "ttl": "24h",
            });
            more(i, &mut body);
            body
        })
        .collect();
    let start = Instant::now();
    let results = futures::stream::iter(bodies.into_iter().enumerate())
        .map(|(i, body)| {
            let http = http.clone();
            let url = url.clone();
            let token = vault.token.clone();
            async move {
                let resp = http
                    .post(&url)
                    .header("X-Vault-Token", token)
                    .json(&body)
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!(
                        "raw {op} {i}: {} {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    );
                }
                let _ = resp.bytes().await?;
                Ok(())
            }
        })
        .buffer_unordered(c)
        .collect::<Vec<Result<()>>>()
        .await;
    let elapsed = start.elapsed();
    for r in results {
        r?;
    }
    Ok(elapsed)
}

/// CPU seconds (user + system) of the processes of a run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    pub(crate) vault: f64,
    pub(crate) zone: f64,
    pub(crate) global: f64,
    pub(crate) bench: f64,
}

impl Cpu {
    pub(crate) fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            vault: self.vault - before.vault,
            zone: self.zone - before.zone,
            global: self.global - before.global,
            bench: self.bench - before.bench,
        }
    }
}

/// utime + stime of a process, in seconds (all its threads; 0 when it is gone).
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks_per_sec()
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The OpenBao dev server listening on `port` (found by its command line).
pub(crate) fn bao_pid(port: u16) -> Option<u32> {
    let needle = format!("-dev-listen-address=127.0.0.1:{port}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains(&needle).then_some(pid)
    })
}

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmRSS:")
}

pub(crate) fn hwm_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmHWM:")
}
