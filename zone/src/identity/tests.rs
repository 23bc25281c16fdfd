//! The engine's scheduling with fake certificate sources and paused tokio time: issuance and
//! rotation at 4/5 of the lifetime, retries bounded by the circuit breaker and recovery without a
//! storm, the concurrency limit, the trust bundle across a backend switch, and tag changes.
//! (Real backends — OpenBao, builtin, provided — are exercised in `zone/tests/identity.rs`.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::model::{Backend, Dataplane, Inbound, Mesh, Networking, Resource};
use common::store::{Op, Store};
use tokio::time::Instant;

use super::source::{BoxFut, CertSource, FailReason, Issued, LeafSpec, SourceError, SourceFactory};
use super::*;
use crate::config::ZoneConfig;
use crate::state::ZoneCtx;

/// A self-signed CA certificate (PEM), so that anchor sets differ per backend.
fn ca_pem(cn: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.self_signed(&key).unwrap().pem()
}

/// Shared by every source the fake factory builds.
struct FakeShared {
    base: Instant,
    base_unix_ms: i64,
    failing: AtomicBool,
    delay: Mutex<Duration>,
    calls: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    serial: AtomicU64,
    /// backend name -> CA PEM.
    cas: Mutex<BTreeMap<String, String>>,
    /// The backend's clock minus the zone's, in seconds.
    offset_s: AtomicI64,
    /// CSRs signed.
    signed: AtomicU64,
}

impl FakeShared {
    fn now_unix(&self) -> i64 {
        (self.base_unix_ms + self.base.elapsed().as_millis() as i64) / 1000
    }
}

struct FakeFactory(Arc<FakeShared>);

struct FakeSource {
    shared: Arc<FakeShared>,
    ca: String,
    backend: String,
}

impl SourceFactory for FakeFactory {
    fn material(&self, _mesh: &str, _backend: &Backend, _store: &Store) -> String {
        "fake".into()
    }

    fn build<'a>(
        &'a self,
        _mesh: &'a str,
        backend: &'a Backend,
        _store: &'a Store,
    ) -> BoxFut<'a, Result<Arc<dyn CertSource>, SourceError>> {
        Box::pin(async move {
            let ca = self
                .0
                .cas
                .lock()
                .unwrap()
                .entry(backend.name.clone())
                .or_insert_with(|| ca_pem(&backend.name))
                .clone();
            Ok(Arc::new(FakeSource {
                shared: self.0.clone(),
                ca,
                backend: backend.name.clone(),
            }) as Arc<dyn CertSource>)
        })
    }
}

impl CertSource for FakeSource {
    fn issue<'a>(&'a self, spec: &'a LeafSpec) -> BoxFut<'a, Result<Issued, SourceError>> {
        Box::pin(async move {
            let s = &self.shared;
            s.calls.fetch_add(1, Ordering::SeqCst);
            let n = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            s.max_in_flight.fetch_max(n, Ordering::SeqCst);
            let delay = *s.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
            if s.failing.load(Ordering::SeqCst) {
                return Err(SourceError {
                    reason: FailReason::Unreachable,
                    message: "cannot reach Vault at http://fake: connection refused".into(),
                    per_proxy: false,
                });
            }
            let offset = s.offset_s.load(Ordering::SeqCst);
            let now = s.now_unix() + offset;
            Ok(Issued {
                chain_pem: format!("LEAF {} {:?}\n", self.backend, spec.tags),
                key_pem: "KEY".into(),
                anchors: vec![self.ca.clone()],
                serial: format!("{:02x}", s.serial.fetch_add(1, Ordering::SeqCst)),
                not_before: now - 10,
                not_after: now + spec.ttl.as_secs() as i64,
                backend_clock: Some(common::clock::Skew {
                    ms: offset * 1000,
                    error_ms: 0,
                }),
            })
        })
    }

    fn sign<'a>(
        &'a self,
        spec: &'a LeafSpec,
        _csr: &'a common::csr::CheckedCsr,
    ) -> BoxFut<'a, Result<Issued, SourceError>> {
        Box::pin(async move {
            let mut issued = self.issue(spec).await?;
            issued.key_pem.clear();
            self.shared.signed.fetch_add(1, Ordering::SeqCst);
            Ok(issued)
        })
    }

    fn anchors(&self) -> BoxFut<'_, Result<Vec<String>, SourceError>> {
        let ca = self.ca.clone();
        let failing = self.shared.failing.load(Ordering::SeqCst);
        Box::pin(async move {
            if failing {
                Err(SourceError::other("down"))
            } else {
                Ok(vec![ca])
            }
        })
    }
}

struct Harness {
    manager: Arc<IdentityManager>,
    fake: Arc<FakeShared>,
    ctx: Arc<ZoneCtx>,
    _stop: common::shutdown::Trigger,
}

fn mesh(enabled: &str, expiration: &str) -> Mesh {
    serde_json::from_value(serde_json::json!({
        "type": "Mesh",
        "name": "m",
        "mtls": {
            "enabledBackend": enabled,
            "backends": [
                {"name": "ca-a", "type": "builtin", "dpCert": {"rotation": {"expiration": expiration}}},
                {"name": "ca-b", "type": "builtin", "dpCert": {"rotation": {"expiration": expiration}}},
            ],
        },
    }))
    .unwrap()
}

fn dp(name: &str, service: &str, extra: &[(&str, &str)]) -> Dataplane {
    let mut tags = BTreeMap::from([("kuma.io/service".to_string(), service.to_string())]);
    for (k, v) in extra {
        tags.insert(k.to_string(), v.to_string());
    }
    Dataplane {
        type_: "Dataplane".into(),
        name: name.into(),
        mesh: "m".into(),
        labels: BTreeMap::new(),
        networking: Networking {
            address: String::new(),
            inbound: vec![Inbound {
                port: Some(8080),
                tags,
            }],
        },
    }
}

async fn harness(config: IssuanceConfig, m: Mesh) -> Harness {
    let store = Store::temporary().unwrap();
    store.write(vec![Op::Put(Resource::Mesh(m))]).await.unwrap();
    let config_zone = ZoneConfig::new(
        "z1",
        "grpcs://127.0.0.1:1",
        PathBuf::from("/nonexistent/token"),
        PathBuf::from("/nonexistent/data"),
    );
    let ctx = Arc::new(ZoneCtx::new(config_zone, store).unwrap());
    let fake = Arc::new(FakeShared {
        base: Instant::now(),
        base_unix_ms: 1_700_000_000_000,
        failing: AtomicBool::new(false),
        delay: Mutex::new(Duration::from_millis(10)),
        calls: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        serial: AtomicU64::new(1),
        cas: Mutex::new(BTreeMap::new()),
        offset_s: AtomicI64::new(0),
        signed: AtomicU64::new(0),
    });
    let clock = Clock {
        tokio: true,
        base_unix_ms: fake.base_unix_ms,
        base: fake.base,
    };
    let manager = IdentityManager::build(
        ctx.clone(),
        config,
        Arc::new(FakeFactory(fake.clone())),
        clock,
        Arc::new(tokio::sync::Notify::new()),
    );
    let (stop_tx, stop_rx) = common::shutdown::Trigger::new();
    tokio::spawn(manager.clone().run(stop_rx));
    Harness {
        manager,
        fake,
        ctx,
        _stop: stop_tx,
    }
}

/// Waits (in paused time) for the next bundle.
async fn next_bundle(sub: &mut IdentitySubscription, within: Duration) -> Arc<IdentityBundle> {
    tokio::time::timeout(within, sub.updates.changed())
        .await
        .expect("a bundle in time")
        .expect("channel open");
    sub.updates.borrow_and_update().clone().expect("a bundle")
}

#[tokio::test(start_paused = true)]
async fn issues_then_rotates_at_four_fifths_with_jitter() {
    let h = harness(IssuanceConfig::default(), mesh("ca-a", "100s")).await;
    let mut sub = h.manager.connect(dp("web-1", "web", &[]), None).unwrap();
    let t0 = Instant::now();
    let b1 = next_bundle(&mut sub, Duration::from_secs(5)).await;
    assert!(b1.key_pem.is_some());
    assert_eq!(b1.backend, "ca-a");
    assert!(b1.trust_bundle_pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(b1.not_after_unix - h.fake.now_unix(), 100);
    let b2 = next_bundle(&mut sub, Duration::from_secs(200)).await;
    let at = t0.elapsed().as_secs_f64();
    assert!((74.0..=86.0).contains(&at), "rotated after {at}s");
    assert_ne!(b2.serial, b1.serial);
    assert!(b2.generation > b1.generation);
    let s = h.manager.stats();
    assert_eq!((s.issued, s.rotations, s.attempts), (2, 1, 2));
    let v = h.manager.dataplane("m", "web-1").unwrap();
    assert_eq!(v.serial.as_deref(), Some(b2.serial.as_str()));
    assert_eq!(v.issued_count, 2);
    assert!(v.connected);
    // Disconnected: still listed.
    drop(sub);
    assert!(!h.manager.dataplane("m", "web-1").unwrap().connected);
    assert_eq!(h.manager.stats().connected, 0);
}

#[tokio::test(start_paused = true)]
async fn breaker_bounds_attempts_and_recovery_has_no_storm() {
    let config = IssuanceConfig {
        max_concurrent: 4,
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_secs(10),
        ..Default::default()
    };
    let h = harness(config, mesh("ca-a", "1h")).await;
    h.fake.failing.store(true, Ordering::SeqCst);
    let mut subs: Vec<IdentitySubscription> = (0..20)
        .map(|i| {
            h.manager
                .connect(dp(&format!("p-{i}"), "web", &[]), None)
                .unwrap()
        })
        .collect();
    // 100 s of a dead backend.
    tokio::time::sleep(Duration::from_secs(100)).await;
    let during = h.manager.stats();
    // At most threshold + (max_concurrent - 1) before the breaker opens, then one probe per
    // cooldown.
    assert!(
        during.attempts <= 3 + 3 + 100 / 10 + 1,
        "attempts {}",
        during.attempts
    );
    assert!(
        during.attempts >= 3 + 8,
        "probes happen: {}",
        during.attempts
    );
    assert_eq!(during.issued, 0);
    assert_eq!(h.manager.breaker_state("m", "ca-a"), "open");
    assert!(subs.iter().all(|s| s.updates.borrow().is_none()));
    let v = h.manager.dataplane("m", "p-3").unwrap();
    assert!(v.last_error.unwrap().contains("connection refused"));

    // Back: the next probe closes the breaker and every proxy is served, 4 at a time.
    h.fake.failing.store(false, Ordering::SeqCst);
    h.fake.max_in_flight.store(0, Ordering::SeqCst);
    let t = Instant::now();
    for s in subs.iter_mut() {
        next_bundle(s, Duration::from_secs(30)).await;
    }
    assert!(t.elapsed() <= Duration::from_secs(12), "{:?}", t.elapsed());
    let after = h.manager.stats();
    assert_eq!(after.issued, 20);
    assert_eq!(after.attempts - during.attempts, 20, "no retry storm");
    assert!(h.fake.max_in_flight.load(Ordering::SeqCst) <= 4);
    assert!(after.max_in_flight <= 4);
    assert_eq!(h.manager.breaker_state("m", "ca-a"), "closed");
    assert!(
        h.ctx
            .metrics
            .encode()
            .contains("kmesh_certificates_failed_total{reason=\"unreachable\"}")
    );
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_shapes_a_burst() {
    let config = IssuanceConfig {
        max_concurrent: 8,
        ..Default::default()
    };
    let h = harness(config, mesh("ca-a", "1h")).await;
    *h.fake.delay.lock().unwrap() = Duration::from_millis(100);
    let mut subs: Vec<IdentitySubscription> = (0..200)
        .map(|i| {
            h.manager
                .connect(dp(&format!("p-{i}"), "web", &[]), None)
                .unwrap()
        })
        .collect();
    let t = Instant::now();
    for s in subs.iter_mut() {
        next_bundle(s, Duration::from_secs(60)).await;
    }
    // 200 at 8 in parallel, 100 ms each: 2.5 s.
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(2400) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(h.fake.max_in_flight.load(Ordering::SeqCst), 8);
    assert_eq!(h.manager.stats().attempts, 200);
}

#[tokio::test(start_paused = true)]
async fn backend_switch_trusts_both_until_every_proxy_is_reissued() {
    let grace = Duration::from_secs(20);
    let config = IssuanceConfig {
        max_concurrent: 1,
        trust_grace: grace,
        ..Default::default()
    };
    // A long lifetime: while the store writes (real I/O), paused time runs through timers.
    let h = harness(config, mesh("ca-a", "8760h")).await;
    *h.fake.delay.lock().unwrap() = Duration::from_secs(1);
    let mut subs: Vec<IdentitySubscription> = (0..3)
        .map(|i| {
            h.manager
                .connect(dp(&format!("p-{i}"), "web", &[]), None)
                .unwrap()
        })
        .collect();
    for s in subs.iter_mut() {
        next_bundle(s, Duration::from_secs(10)).await;
    }
    let ca_a = h.fake.cas.lock().unwrap()["ca-a"].clone();
    for s in &subs {
        let b = s.updates.borrow().clone().unwrap();
        assert_eq!(b.trust_bundle_pem.trim(), ca_a.trim());
    }
    h.ctx
        .store
        .write(vec![Op::Put(Resource::Mesh(mesh("ca-b", "8760h")))])
        .await
        .unwrap();
    // Follow every bundle of every proxy until all hold ca-b certificates with a ca-b-only trust.
    let mut seen: Vec<Vec<Arc<IdentityBundle>>> = vec![Vec::new(); 3];
    let mut last_b_cert: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(30) + grace;
    loop {
        for (i, s) in subs.iter_mut().enumerate() {
            if s.updates.has_changed().unwrap() {
                let b = s.updates.borrow_and_update().clone().unwrap();
                let new_cert = seen[i]
                    .last()
                    .is_none_or(|prev| prev.cert_chain_pem != b.cert_chain_pem);
                if b.backend == "ca-b" && new_cert {
                    last_b_cert = Some(Instant::now());
                }
                seen[i].push(b);
            }
        }
        let ca_b = h.fake.cas.lock().unwrap().get("ca-b").cloned();
        let done = ca_b.as_ref().is_some_and(|b| {
            subs.iter().all(|s| {
                let cur = s.updates.borrow().clone().unwrap();
                cur.backend == "ca-b" && cur.trust_bundle_pem.trim() == b.trim()
            })
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "switch did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca_b = h.fake.cas.lock().unwrap()["ca-b"].clone();
    // The old CA left the bundles only after the grace that followed the last new certificate.
    let narrowed = Instant::now();
    let last = last_b_cert.expect("ca-b certificates were handed out");
    assert!(
        narrowed >= last + grace,
        "trust narrowed {:?} after the last new certificate (grace {grace:?})",
        narrowed - last
    );
    for bundles in &seen {
        // Every certificate of ca-b was handed out with a trust bundle holding both CAs, the
        // last one included: proxies still presenting ca-a certificates are trusted meanwhile.
        let first_b = bundles.iter().find(|b| b.backend == "ca-b").unwrap();
        assert!(first_b.key_pem.is_some());
        assert!(
            first_b.trust_bundle_pem.contains(ca_a.trim())
                && first_b.trust_bundle_pem.contains(ca_b.trim()),
            "a ca-b certificate came with a bundle that no longer trusts ca-a"
        );
        // Before any ca-b certificate, the proxy was told to trust ca-b too.
        let trusted_b_before = bundles.iter().take_while(|b| b.backend == "ca-a").any(|b| {
            b.trust_bundle_pem.contains(ca_b.trim()) && b.trust_bundle_pem.contains(ca_a.trim())
        });
        assert!(
            trusted_b_before,
            "no two-CA bundle before the switch reached this proxy"
        );
    }
    let s = h.manager.stats();
    assert_eq!(s.rotations, 3, "{s:?}");
    assert!(
        h.ctx
            .metrics
            .encode()
            .contains("kmesh_certificate_rotations_total{cause=\"backend_change\"} 3")
    );
}

#[tokio::test(start_paused = true)]
async fn new_tags_mean_a_new_certificate() {
    let h = harness(IssuanceConfig::default(), mesh("ca-a", "1h")).await;
    let mut sub = h.manager.connect(dp("web-1", "web", &[]), None).unwrap();
    let b1 = next_bundle(&mut sub, Duration::from_secs(5)).await;
    drop(sub);
    let mut sub = h
        .manager
        .connect(dp("web-1", "web", &[("version", "v2")]), None)
        .unwrap();
    let b2 = next_bundle(&mut sub, Duration::from_secs(5)).await;
    assert_ne!(b1.serial, b2.serial);
    assert!(b2.cert_chain_pem.contains("v2"));
    assert!(
        h.ctx
            .metrics
            .encode()
            .contains("kmesh_certificate_rotations_total{cause=\"tags_change\"} 1")
    );
    // The status report carries the dataplane.
    let extra = h.ctx.status_report();
    assert_eq!(extra.dataplanes.len(), 1);
    assert_eq!(extra.dataplanes[0].cert_serial, b2.serial);
    assert_eq!(extra.dataplanes[0].tags["version"], "v2");
    assert!(extra.dataplanes[0].connected);
}

#[tokio::test(start_paused = true)]
async fn refusals() {
    let h = harness(IssuanceConfig::default(), mesh("ca-a", "1h")).await;
    let mut other = dp("x", "web", &[]);
    other.mesh = "nope".into();
    assert_eq!(
        h.manager.connect(other, None).unwrap_err(),
        IdentityError::MeshNotFound("nope".into())
    );
    let mut bad = dp("x", "web", &[]);
    bad.networking.inbound[0].tags.clear();
    assert!(matches!(
        h.manager.connect(bad, None).unwrap_err(),
        IdentityError::InvalidDataplane(_)
    ));
    // A newer connection replaces the older one, whose channel closes.
    let mut first = h.manager.connect(dp("a", "web", &[]), None).unwrap();
    let second = h.manager.connect(dp("a", "web", &[]), None).unwrap();
    assert!(first.updates.changed().await.is_err());
    drop(first);
    assert!(h.manager.dataplane("m", "a").unwrap().connected);
    drop(second);
    assert!(!h.manager.dataplane("m", "a").unwrap().connected);
    // Debug never shows a key.
    let b = IdentityBundle {
        generation: 1,
        cert_chain_pem: String::new(),
        key_pem: Some("SECRET-KEY".into()),
        trust_bundle_pem: "".into(),
        backend: "b".into(),
        serial: "01".into(),
        not_before_unix: 0,
        not_after_unix: 1,
    };
    assert!(!format!("{b:?}").contains("SECRET"));
}

#[test]
fn issued_reads_serial_and_validity_as_the_full_summary_does() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["leaf.example".to_string()]).unwrap();
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&[
        0x00, 0x8f, 0x12, 0xab, 0x01,
    ]));
    p.not_before = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(1_700_086_400).unwrap();
    let leaf = p.self_signed(&key).unwrap().pem();
    // A chain: a stray block before it, the leaf, then a CA.
    let chain = format!(
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{leaf}{}",
        ca_pem("ca")
    );
    let full = common::x509::summarize_pem(&chain).unwrap();
    let issued = Issued::new(chain, "KEY".into(), Vec::new()).unwrap();
    assert_eq!(issued.serial, full.serial);
    assert_eq!(issued.not_before, full.not_before);
    assert_eq!(issued.not_after, full.not_after);
    assert_eq!(
        (issued.not_before, issued.not_after),
        (1_700_000_000, 1_700_086_400)
    );
    assert!(Issued::new("not PEM".into(), String::new(), Vec::new()).is_err());
}

/// One proxy on a backend whose clock is `offset_s` from the zone's, with `ttl` certificates, for
/// `run` of paused time: the issuances it got (the backend was called), and the proxy's row.
async fn skewed(offset_s: i64, ttl: &str, run: Duration) -> (u64, DataplaneView, Harness) {
    let h = harness(IssuanceConfig::default(), mesh("ca-a", ttl)).await;
    h.fake.offset_s.store(offset_s, Ordering::SeqCst);
    let sub = h.manager.connect(dp("web-1", "web", &[]), None).unwrap();
    tokio::time::sleep(run).await;
    let calls = h.fake.calls.load(Ordering::SeqCst);
    let view = h.manager.dataplane("m", "web-1").unwrap();
    drop(sub);
    (calls, view, h)
}

/// The most issuances one proxy can get in `run` when each failure waits at least half its step
/// (1 s doubling): the first, then one after each of 0.5, 1, 2, 4, ... seconds.
fn bound(run: Duration) -> u64 {
    let (mut t, mut step, mut n) = (0.0, 0.5, 1);
    while t + step <= run.as_secs_f64() {
        t += step;
        step *= 2.0;
        n += 1;
    }
    n
}

#[tokio::test(start_paused = true)]
async fn a_zone_ahead_of_its_backend_never_loops() {
    // Two days ahead with 24 h certificates: each arrives expired. Given to no one, retried
    // with backoff, the skew named.
    let run = Duration::from_secs(120);
    let (calls, view, h) = skewed(-2 * 86_400, "24h", run).await;
    assert!(
        calls >= 3 && calls <= bound(run),
        "{calls} issuances in {run:?}"
    );
    assert_eq!(view.serial, None, "no expired certificate was handed out");
    let e = view.last_error.unwrap();
    assert!(
        e.contains("clock skew") && e.contains("already expired"),
        "{e}"
    );
    assert_eq!(view.state, "issuance failing");
    let clocks = h.ctx.clocks.views();
    assert_eq!(clocks[0].peer, "vault m/ca-a");
    assert!(
        clocks[0].skewed && clocks[0].detail.contains("2d 0h ahead of"),
        "{clocks:?}"
    );
    let metrics = h.ctx.metrics.encode();
    assert!(
        metrics.contains("kmesh_certificates_failed_total{reason=\"clock_skew\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kmesh_clock_skew_seconds{peer=\"vault m/ca-a\"} -172800"),
        "{metrics}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_zone_behind_its_backend_never_loops() {
    // Five minutes behind: each certificate is valid only later.
    let run = Duration::from_secs(60);
    let (calls, view, _h) = skewed(300, "1h", run).await;
    assert!(calls <= bound(run), "{calls} issuances in {run:?}");
    assert_eq!(view.serial, None);
    assert!(view.last_error.unwrap().contains("valid only in"));
}

#[tokio::test(start_paused = true)]
async fn a_certificate_due_on_arrival_is_given_and_the_next_waits() {
    // 50 s ahead with 1 m certificates: each arrives with 20 s left (backdated 10 s), past its
    // rotation point. The proxy gets it, and asks again only after backoff steps.
    let h = harness(IssuanceConfig::default(), mesh("ca-a", "60s")).await;
    h.fake.offset_s.store(-50, Ordering::SeqCst);
    let mut sub = h.manager.connect(dp("web-1", "web", &[]), None).unwrap();
    let b = next_bundle(&mut sub, Duration::from_secs(5)).await;
    assert!(b.not_after_unix > h.fake.now_unix() - 50);
    let run = Duration::from_secs(60);
    tokio::time::sleep(run).await;
    let calls = h.fake.calls.load(Ordering::SeqCst);
    assert!(calls <= bound(run) + 1, "{calls} issuances in {run:?}");
    let view = h.manager.dataplane("m", "web-1").unwrap();
    assert!(view.serial.is_some());
    assert!(view.last_error.unwrap().contains("already due"));
    // Between two steps the certificate runs out (it had 20 s); either way the next one waits.
    assert!(
        view.state == "ok, but the next issuance is failing" || view.state == "certificate expired",
        "{}",
        view.state
    );
}

#[tokio::test(start_paused = true)]
async fn whatever_asks_one_proxy_gets_one_issuance_per_step() {
    // A proxy that reconnects every 100 ms presenting nothing (a crash loop), on a backend whose
    // CA changes every 300 ms: both ask for early certificates, which are paced.
    let h = harness(IssuanceConfig::default(), mesh("ca-a", "1h")).await;
    let run = Duration::from_secs(30);
    let start = Instant::now();
    let mut flip = false;
    let mut i = 0u32;
    while start.elapsed() < run {
        let sub = h.manager.connect(dp("web-1", "web", &[]), None).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(sub);
        i += 1;
        if i.is_multiple_of(3) {
            flip = !flip;
            let enabled = if flip { "ca-b" } else { "ca-a" };
            h.ctx
                .store
                .write(vec![Op::Put(Resource::Mesh(mesh(enabled, "1h")))])
                .await
                .unwrap();
        }
    }
    let calls = h.fake.calls.load(Ordering::SeqCst);
    // The first, then one per pace step (at least 0.5, 1, 2, ... s).
    assert!(
        calls <= bound(run) + 1,
        "{calls} issuances in {:?}",
        start.elapsed()
    );
    // Not stuck: more than the first. (Paused time jumps while the store's flushes run on real
    // threads, so on a loaded machine fewer pace steps fit in the 30 s than the bound allows.)
    assert!(calls >= 2, "{calls}");
}

#[tokio::test(start_paused = true)]
async fn the_breaker_never_outlives_the_short_certificates_it_holds_back() {
    // 30 s certificates; the backend goes away before the first rotation and comes back 12 s
    // later. With a 30 s cooldown the proxies would wait up to 30 s; the cooldown is cut to a
    // quarter of what their certificates have left, so they are served within seconds.
    let config = IssuanceConfig {
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_secs(30),
        ..Default::default()
    };
    let h = harness(config, mesh("ca-a", "30s")).await;
    let mut subs: Vec<IdentitySubscription> = (0..10)
        .map(|i| {
            h.manager
                .connect(dp(&format!("p-{i}"), "web", &[]), None)
                .unwrap()
        })
        .collect();
    for s in subs.iter_mut() {
        next_bundle(s, Duration::from_secs(5)).await;
    }
    h.fake.failing.store(true, Ordering::SeqCst);
    // The rotations (at 24 s +- 1.5 s) fail and open the breaker; the certificates expire at 30 s.
    tokio::time::sleep(Duration::from_secs(27)).await;
    assert_eq!(h.manager.breaker_state("m", "ca-a"), "open");
    tokio::time::sleep(Duration::from_secs(9)).await;
    let down = h.manager.stats();
    h.fake.failing.store(false, Ordering::SeqCst);
    let back = Instant::now();
    for s in subs.iter_mut() {
        next_bundle(s, Duration::from_secs(30)).await;
    }
    assert!(
        back.elapsed() <= Duration::from_secs(3),
        "served {:?} after the backend came back",
        back.elapsed()
    );
    // No storm while it was down: a probe per cooldown of at least a second.
    assert!(down.attempts <= 10 + 10 + 3 + 12 + 4, "{down:?}");
}

#[tokio::test(start_paused = true)]
async fn an_agent_report_shows_in_the_row_and_the_status_report() {
    let h = harness(IssuanceConfig::default(), mesh("ca-a", "1h")).await;
    let mut sub = h.manager.connect(dp("web-1", "web", &[]), None).unwrap();
    let b = next_bundle(&mut sub, Duration::from_secs(5)).await;
    assert_eq!(h.manager.dataplane("m", "web-1").unwrap().state, "ok");
    let reporter = sub.reporter();
    let zone_now_ms = h.fake.now_unix() * 1000;
    // The agent could not write the new files: its disk holds an older, expired certificate.
    assert!(reporter.report(proto::dpid::AgentStatus {
        agent_time_unix_ms: common::clock::now_ms(),
        generation: b.generation,
        problem: proto::dpid::AgentProblem::DiskFull as i32,
        error: "cannot write out/.cert.pem.tmp: No space left on device (os error 28)".into(),
        disk_serial: "0a".into(),
        disk_not_after_unix: zone_now_ms / 1000 - 5,
    }));
    let v = h.manager.dataplane("m", "web-1").unwrap();
    assert_eq!(v.state, "holding an expired certificate on disk");
    let e = v.last_error.unwrap();
    assert!(
        e.contains("disk full") && e.contains("No space left"),
        "{e}"
    );
    assert_eq!(v.certificate_on_disk.unwrap().serial, "0a");
    let report = h.ctx.status_report();
    assert_eq!(
        report.dataplanes[0].state,
        "holding an expired certificate on disk"
    );
    assert!(report.dataplanes[0].last_error.contains("disk full"));
    // Written at last: nothing wrong any more.
    assert!(reporter.report(proto::dpid::AgentStatus {
        agent_time_unix_ms: common::clock::now_ms(),
        generation: b.generation,
        problem: 0,
        error: String::new(),
        disk_serial: b.serial.clone(),
        disk_not_after_unix: b.not_after_unix,
    }));
    let v = h.manager.dataplane("m", "web-1").unwrap();
    assert_eq!((v.state.as_str(), v.last_error), ("ok", None));
    // A report of a replaced connection is dropped.
    let newer = h.manager.connect(dp("web-1", "web", &[]), None).unwrap();
    assert!(!reporter.report(proto::dpid::AgentStatus::default()));
    drop(newer);
}

fn proxy_keygen_mesh(ttl: &str) -> Mesh {
    serde_json::from_value(serde_json::json!({
        "type": "Mesh",
        "name": "m",
        "mtls": {
            "enabledBackend": "ca-a",
            "backends": [{"name": "ca-a", "type": "builtin",
                "dpCert": {"rotation": {"expiration": ttl}, "keyGeneration": "proxy"}}],
        },
    }))
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn keys_made_by_the_proxy_are_asked_for_checked_and_signed() {
    let h = harness(IssuanceConfig::default(), proxy_keygen_mesh("1h")).await;
    let mut sub = h
        .manager
        .connect_with(dp("web-1", "web", &[]), None, true)
        .unwrap();
    let reporter = sub.reporter();
    // The zone asks for a CSR of the backend's key type.
    tokio::time::timeout(Duration::from_secs(5), sub.csr_asks.changed())
        .await
        .unwrap()
        .unwrap();
    let ask = (*sub.csr_asks.borrow_and_update()).unwrap();
    assert_eq!(ask.key_type, common::model::KeyType::EcP256);
    // A CSR of another key type is refused, and asked again after a backoff.
    let rsa = common::csr::generate(common::model::KeyType::Rsa2048).unwrap();
    assert!(reporter.csr(ask.nonce, &rsa.csr_der));
    let v = h.manager.dataplane("m", "web-1").unwrap();
    assert!(v.last_error.unwrap().contains("keyType is ec-p256"));
    tokio::time::timeout(Duration::from_secs(5), sub.csr_asks.changed())
        .await
        .unwrap()
        .unwrap();
    let ask = (*sub.csr_asks.borrow_and_update()).unwrap();
    // A good one is signed: the bundle carries no key.
    let g = common::csr::generate(common::model::KeyType::EcP256).unwrap();
    assert!(reporter.csr(ask.nonce, &g.csr_der));
    let b = next_bundle(&mut sub, Duration::from_secs(5)).await;
    assert!(b.key_pem.is_none(), "the key stays with the proxy");
    assert_eq!(h.fake.signed.load(Ordering::SeqCst), 1);
    // An answer to an old request is ignored.
    assert!(reporter.csr(ask.nonce, &g.csr_der));
    assert_eq!(h.fake.signed.load(Ordering::SeqCst), 1);
    drop(sub);

    // An agent that cannot answer (older, on Stream) is told why.
    let _old = h.manager.connect(dp("web-2", "web", &[]), None).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = h.manager.dataplane("m", "web-2").unwrap();
    assert!(v.last_error.unwrap().contains("upgrade zone proxy"));
    // One that does not answer in time fails, and is asked again later.
    let mut silent = h
        .manager
        .connect_with(dp("web-3", "web", &[]), None, true)
        .unwrap();
    silent.csr_asks.changed().await.unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let v = h.manager.dataplane("m", "web-3").unwrap();
    assert!(v.last_error.unwrap().contains("did not send the CSR"));
}
