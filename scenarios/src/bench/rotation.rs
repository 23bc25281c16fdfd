//! `scenarios bench rotation`: a zone holding P concurrent proxy streams — its CPU and memory, and
//! the time to push a CA rotation to every one of them.
//!
//! global and one zone on loopback, the Mesh with a builtin backend `ca-1` (local signing in the
//! zone: the figures are the zone's own, not Vault's). The bench plays P agents (`--proxies`):
//! identity streams over TLS with dataplane tokens, 100 per connection, each waiting for its first
//! certificate; then the zone's RSS and CPU are read. Every stream is then read by its own task,
//! which counts its messages and stamps the first bundle issued by `ca-2`. The Mesh is applied
//! again with a second builtin backend `ca-2` enabled; from the apply's 2xx the bench waits until
//! every stream has received a `ca-2` certificate (the zone first pushes a trust bundle holding
//! both CAs, then reissues every proxy from the new backend). Reported: the time until the last
//! proxy had its new certificate and the per-proxy distribution, zone and global CPU seconds during
//! the rotation, zone RSS before / after / peak (VmHWM). Afterwards every new certificate is
//! verified against the new CA (the one anchor of the trust bundles the old certificates do not
//! chain to) and must not verify against `ca-1`; streams that errored or ended and proxies without
//! a verified `ca-2` certificate must both be 0, or the bench fails. With `--vault` the switch is to
//! the page's vault backend `vault-1` instead (a real OpenBao, EC role): the zone issues every new
//! certificate from Vault, and they must chain to the root OpenBao was set up with.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use proto::dpid::IdentityResponse;
use tokio::sync::{Notify, watch};

use crate::bench::issue::{
    MemoryRun, bao_pid, cpu_secs, dataplane_tokens, hwm_kb, open_streams, rss_kb,
};
use crate::report::{Stats, Table};
use testkit::cluster::{MESH, Vault, vault_mesh_yaml};

#[derive(Debug, Clone, clap::Args)]
pub struct RotationBench {
    /// Proxies holding an identity stream to the zone.
    #[arg(long, default_value_t = 10000)]
    pub proxies: usize,
    /// The zone's --max-concurrent-issuance.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds to wait for every proxy to get its new certificate.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Switch to the page's vault backend `vault-1` (a real OpenBao, EC role) instead of `ca-2`:
    /// the zone then issues every new certificate from Vault.
    #[arg(long)]
    pub vault: bool,
}

/// The Mesh with `ca-1` kept and `ca-2` added and enabled.
fn switched_mesh_yaml() -> String {
    let backend = |name: &str| {
        format!(
            "  - name: {name}\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 24h\n"
        )
    };
    format!(
        "type: Mesh\nname: {MESH}\nmtls:\n  enabledBackend: ca-2\n  backends:\n{}{}",
        backend("ca-1"),
        backend("ca-2")
    )
}

/// What one stream received during the rotation.
#[derive(Default)]
struct Seen {
    messages: u32,
    /// Messages that arrived before the apply was sent (nothing should be pushed to idle proxies).
    before: u32,
    /// The first bundle from backend `ca-2`: when, its chain and trust bundle.
    new_at: Option<Instant>,
    new_chain: String,
    new_trust: String,
    /// A bundle whose trust held more than one CA arrived no later than the new certificate.
    both_trusted_first: bool,
    last_trust: String,
    error: Option<String>,
}

fn cert_count(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// Reads one stream until `stop`, recording what arrived.
async fn watch_stream(
    mut stream: tonic::Streaming<IdentityResponse>,
    mut stop: watch::Receiver<bool>,
    new_backend: Arc<str>,
    applied: Arc<AtomicBool>,
    rotated: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    notify: Arc<Notify>,
) -> (Seen, tonic::Streaming<IdentityResponse>) {
    let mut seen = Seen::default();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            m = stream.message() => match m {
                Ok(Some(m)) => {
                    let now = Instant::now();
                    seen.messages += 1;
                    if !applied.load(Ordering::Relaxed) {
                        seen.before += 1;
                    }
                    if seen.new_at.is_none() {
                        if cert_count(&m.trust_bundle_pem) > 1 {
                            seen.both_trusted_first = true;
                        }
                        if m.backend == *new_backend {
                            seen.new_at = Some(now);
                            seen.new_chain = m.cert_chain_pem;
                            seen.new_trust = m.trust_bundle_pem.clone();
                            rotated.fetch_add(1, Ordering::Relaxed);
                            notify.notify_one();
                        }
                    }
                    seen.last_trust = m.trust_bundle_pem;
                }
                Ok(None) => {
                    seen.error = Some("the stream ended".into());
                    break;
                }
                Err(s) => {
                    seen.error = Some(format!("{s}"));
                    break;
                }
            }
        }
    }
    if seen.error.is_some() {
        failed.fetch_add(1, Ordering::Relaxed);
        notify.notify_one();
    }
    (seen, stream)
}

pub async fn run(p: RotationBench) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("bench-rotation-")
        .tempdir()?;
    println!(
        "bench rotation: {} proxies, zone concurrency {} (logs in {})",
        p.proxies,
        p.concurrency,
        dir.path().display()
    );
    let result = measure(&p, dir.path()).await;
    if result.is_err() {
        let kept = dir.keep();
        eprintln!("logs kept in {}", kept.display());
    }
    result
}

async fn measure(p: &RotationBench, dir: &std::path::Path) -> Result<()> {
    let n = p.proxies;
    let vault = match p.vault {
        true => Some(Vault::start(false, true).await?),
        false => None,
    };
    let (new_backend, switch_yaml) = match &vault {
        Some(v) => ("vault-1", vault_mesh_yaml(&v.addr(), &v.token, "24h")),
        None => ("ca-2", switched_mesh_yaml()),
    };
    let bao = vault
        .as_ref()
        .and_then(|v| bao_pid(v.server.port()))
        .unwrap_or(0);
    let new_name: Arc<str> = Arc::from(new_backend);
    let run = MemoryRun::start(dir, p.concurrency).await?;
    let zone_pid = run.zone.proc.pid().unwrap_or(0);
    let idle_rss = rss_kb(zone_pid);
    let cpu = run.cpu();
    let tokens = dataplane_tokens(&run.global, "rot", n).await?;
    let (certified_in, chains, streams) = open_streams(&run.zone, "rot", &tokens, &[]).await?;
    // Let the zone settle (status reports, records) before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let certify_cpu = run.cpu().since(&cpu);
    let held_rss = rss_kb(zone_pid);
    let held_peak = hwm_kb(zone_pid);

    // One reader per stream.
    let (stop_tx, stop_rx) = watch::channel(false);
    let applied = Arc::new(AtomicBool::new(false));
    let rotated = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let notify = Arc::new(Notify::new());
    let readers: Vec<_> = streams
        .into_iter()
        .map(|s| {
            tokio::spawn(watch_stream(
                s,
                stop_rx.clone(),
                new_name.clone(),
                applied.clone(),
                rotated.clone(),
                failed.clone(),
                notify.clone(),
            ))
        })
        .collect();

    let cpu = run.cpu();
    let bao_cpu = cpu_secs(bao);
    applied.store(true, Ordering::Relaxed);
    let sent = Instant::now();
    run.global.apply(&switch_yaml).await?;
    let acked = Instant::now();
    let deadline = acked + Duration::from_secs(p.timeout);
    loop {
        let done = rotated.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        if done >= n || Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let rotation_cpu = run.cpu().since(&cpu);
    let bao_cpu = cpu_secs(bao) - bao_cpu;
    let after_rss = rss_kb(zone_pid);
    // What follows the last new certificate (the trust bundle narrowed to ca-2) is counted too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    let mut seen = Vec::with_capacity(n);
    let mut held = Vec::with_capacity(n);
    for r in readers {
        let (s, stream) = r.await?;
        seen.push(s);
        held.push(stream);
    }
    let peak_rss = hwm_kb(zone_pid);
    let settled_rss = rss_kb(zone_pid);

    // The CAs: every anchor of the trust bundles seen; ca-1 is what the first certificates chain
    // to, ca-2 the other one.
    let mut anchors = BTreeSet::new();
    for s in &seen {
        for pem in [&s.new_trust, &s.last_trust] {
            if let Ok(ders) = common::x509::pem_to_ders(pem) {
                anchors.extend(ders);
            }
        }
    }
    let sample = chains.first().cloned().unwrap_or_default();
    let (old_ca, new_ca): (Vec<Vec<u8>>, Vec<Vec<u8>>) = anchors.into_iter().partition(|der| {
        common::x509::verify_chain_pem(&sample, &[], &[&common::x509::der_to_pem(der)]).is_ok()
    });
    let old_pem: Vec<String> = old_ca.iter().map(|d| common::x509::der_to_pem(d)).collect();
    let new_pem: Vec<String> = new_ca.iter().map(|d| common::x509::der_to_pem(d)).collect();
    let mut problems = Vec::new();
    if old_pem.len() != 1 || new_pem.len() != 1 {
        problems.push(format!(
            "expected one old and one new CA in the trust bundles, found {} and {}",
            old_pem.len(),
            new_pem.len()
        ));
    }
    // With Vault, the new certificates must chain to the root OpenBao was set up with.
    let new_pem = match &vault {
        Some(v) => vec![v.root_pem.clone()],
        None => new_pem,
    };
    let old_refs: Vec<&str> = old_pem.iter().map(String::as_str).collect();
    let new_refs: Vec<&str> = new_pem.iter().map(String::as_str).collect();
    let first_not_old = chains
        .iter()
        .filter(|c| common::x509::verify_chain_pem(c, &[], &old_refs).is_err())
        .count();
    let mut without_new = 0;
    for (i, s) in seen.iter().enumerate() {
        let verified = s.new_at.is_some()
            && !new_refs.is_empty()
            && common::x509::verify_chain_pem(&s.new_chain, &[], &new_refs).is_ok()
            && common::x509::verify_chain_pem(&s.new_chain, &[], &old_refs).is_err();
        if !verified {
            without_new += 1;
            if without_new <= 5 {
                problems.push(format!(
                    "stream {i}: no verified {new_backend} certificate ({} messages{})",
                    s.messages,
                    s.error
                        .as_ref()
                        .map(|e| format!(", error: {e}"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    let errored: Vec<&String> = seen.iter().filter_map(|s| s.error.as_ref()).collect();
    for e in errored.iter().take(5) {
        problems.push(format!("stream error: {e}"));
    }
    let per_proxy: Vec<f64> = seen
        .iter()
        .filter_map(|s| s.new_at)
        .map(|t| t.saturating_duration_since(acked).as_secs_f64())
        .collect();
    let to_all = seen
        .iter()
        .filter_map(|s| s.new_at)
        .max()
        .map(|t| t.saturating_duration_since(acked));
    let stats = Stats::of(&per_proxy);
    let msgs: Vec<f64> = seen.iter().map(|s| f64::from(s.messages)).collect();
    let msg_stats = Stats::of(&msgs);
    let before: u32 = seen.iter().map(|s| s.before).sum();
    let both_first = seen.iter().filter(|s| s.both_trusted_first).count();
    let new_with_old_trusted = seen
        .iter()
        .filter(|s| s.new_at.is_some() && cert_count(&s.new_trust) > 1)
        .count();
    let narrowed = seen
        .iter()
        .filter(|s| {
            common::x509::pem_to_ders(&s.last_trust)
                .map(|d| d.len() == 1 && new_ca.first() == d.first())
                .unwrap_or(false)
        })
        .count();

    let mb = |kb: u64| format!("{:.1} MB", kb as f64 / 1024.0);
    let mut t = Table::new(&["measure", "value", "target"]);
    t.row(&[
        format!("{n} proxies certified by ca-1 (streams held)"),
        format!(
            "{:.2} s; CPU s zone / global / bench {:.2} / {:.2} / {:.2}",
            certified_in.as_secs_f64(),
            certify_cpu.zone,
            certify_cpu.global,
            certify_cpu.bench
        ),
        String::new(),
    ]);
    t.row(&[
        "zone RSS idle / holding the streams (peak)".into(),
        format!("{} / {} ({})", mb(idle_rss), mb(held_rss), mb(held_peak)),
        String::new(),
    ]);
    t.row(&[
        match &vault {
            Some(_) => "apply of the Mesh switching to vault-1 (global's Vault check)".into(),
            None => "apply of the Mesh switching to ca-2 (global generates the CA)".into(),
        },
        format!("{:.2} s", acked.duration_since(sent).as_secs_f64()),
        String::new(),
    ]);
    t.row(&[
        format!("apply 2xx → all {n} proxies hold a {new_backend} certificate"),
        to_all.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        String::new(),
    ]);
    t.row(&[
        "  per proxy: p50 / p99 / max".into(),
        format!("{:.2} / {:.2} / {:.2} s", stats.p50, stats.p99, stats.max),
        String::new(),
    ]);
    t.row(&[
        "  CPU s during the rotation: zone / global / bench / OpenBao".into(),
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2}",
            rotation_cpu.zone, rotation_cpu.global, rotation_cpu.bench, bao_cpu
        ),
        String::new(),
    ]);
    t.row(&[
        "zone RSS after the rotation / 3 s later (peak VmHWM)".into(),
        format!("{} / {} ({})", mb(after_rss), mb(settled_rss), mb(peak_rss)),
        String::new(),
    ]);
    t.row(&[
        "messages per stream: min / p50 / max (before the apply)".into(),
        format!(
            "{:.0} / {:.0} / {:.0} ({before})",
            msg_stats.min, msg_stats.p50, msg_stats.max
        ),
        "(0)".into(),
    ]);
    t.row(&[
        format!("streams told to trust both CAs no later than their {new_backend} certificate"),
        format!(
            "{both_first} ({new_backend} certificate sent with both trusted: {new_with_old_trusted})"
        ),
        String::new(),
    ]);
    t.row(&[
        "streams whose last trust bundle is the new CA alone".into(),
        narrowed.to_string(),
        String::new(),
    ]);
    t.row(&[
        "first certificates not chaining to ca-1".into(),
        first_not_old.to_string(),
        "0".into(),
    ]);
    t.row(&[
        "streams errored or ended".into(),
        errored.len().to_string(),
        "0".into(),
    ]);
    t.row(&[
        format!("proxies without a verified {new_backend} certificate"),
        without_new.to_string(),
        "0".into(),
    ]);
    println!("\n{}", t.render());
    drop(held);
    if first_not_old > 0 || !errored.is_empty() || without_new > 0 || !problems.is_empty() {
        for p in &problems {
            eprintln!("  {p}");
        }
        bail!(
            "{} streams errored, {without_new} proxies without a {new_backend} certificate (zone log: {})",
            errored.len(),
            run.zone.proc.log.display()
        );
    }
    Ok(())
}
