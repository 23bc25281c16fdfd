//! Issuance and its outcomes: through the concurrency semaphore and the backend's breaker to
//! the source, then a new certificate judged by the zone's clock (`policy::Arrival`) and
//! installed and sent (counting rotations by cause), or a failure recorded (per-proxy backoff,
//! the breaker fed, the Vault check told) and, when a backend answers again, the proxies waiting
//! for it woken. A certificate that arrives expired or not yet valid is a failure; one that
//! arrives already due is given but counts as one, so the next issuance waits a backoff step. The
//! backend's clock, read from its answer, goes to the zone's `clocks`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use tokio::time::Instant;

use super::keygen::CsrNext;
use super::policy::{self, Admission, Arrival, Breaker};
use super::records::CertMeta;
use super::source::{FailReason, Issued, LeafSpec, SourceError};
use super::table::{Cause, Health, Holding, Snap, State};
use super::{BackendId, DpKey, IdentityBundle, IdentityManager};
use crate::metrics::{BackendLabels, BackendTypeLabels, CauseLabels, ReasonLabels};

impl IdentityManager {
    /// Issues a certificate for a proxy, within the concurrency limit and the breaker; for a
    /// `keyGeneration: proxy` backend, once its agent sent a CSR (see `keygen`).
    pub(super) async fn issue(&self, key: &DpKey, cause: Option<Cause>, snap: &Snap) -> bool {
        let csr = match snap.backend.key_generation() {
            common::model::KeyGeneration::ControlPlane => None,
            common::model::KeyGeneration::Proxy => match self.csr_for(key, snap) {
                CsrNext::Sign(csr) => Some(csr),
                CsrNext::Wait => return false,
                CsrNext::Fail(e) => {
                    self.proxy_failed(key, e);
                    return false;
                }
            },
        };
        let Ok(permit) = self.semaphore.clone().acquire_owned().await else {
            return false;
        };
        let admission = {
            let mut st = self.lock();
            let cooldown = self.config.breaker_cooldown;
            let now = Instant::now();
            // The breaker may not outlive a share of what this proxy's certificate has left.
            let left = self.lifetime_left(&st, key);
            let b = self.breaker(&mut st, &snap.bid);
            let a = b.admit(now);
            let code = b.state.code();
            if a == Admission::Deny {
                b.parked.insert(key.clone());
                b.probe_by(now + policy::breaker_cooldown(cooldown, left));
                let why = format!(
                    "waiting for backend {:?}, which is failing (retried once per {}s): {}",
                    snap.bid.1,
                    cooldown.as_secs(),
                    b.last_error.as_deref().unwrap_or("a probe is in flight")
                );
                if let Some(p) = st.proxies.get_mut(key) {
                    p.parked_on = Some(snap.bid.clone());
                    if p.last_error.is_none() {
                        p.last_error = Some(why);
                    }
                }
            }
            self.breaker_metric(&snap.bid, code);
            a
        };
        if admission == Admission::Deny {
            return false;
        }
        if admission == Admission::Probe {
            tracing::info!(mesh = %snap.bid.0, backend = %snap.bid.1, "probing the CA backend");
        }
        let n = self.counters.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters.max_in_flight.fetch_max(n, Ordering::Relaxed);
        self.metrics().issuing.inc();
        self.counters.attempts.fetch_add(1, Ordering::Relaxed);
        self.metrics().attempts.inc();
        let result = self.issue_with_source(snap, csr.as_deref()).await;
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics().issuing.dec();
        match result {
            Ok(issued) => {
                // The next proxy may go to the backend while this one's bundle is prepared.
                drop(permit);
                self.on_issued(key, cause, snap, issued)
            }
            Err(e) => {
                // Counted before the next request is admitted, so the breaker opens in time.
                self.on_failure(key, snap, e);
                drop(permit);
                false
            }
        }
    }

    pub(super) async fn issue_with_source(
        &self,
        snap: &Snap,
        csr: Option<&common::csr::CheckedCsr>,
    ) -> Result<Issued, SourceError> {
        let source = self.ensure_source(snap).await?;
        let spec = LeafSpec {
            mesh: snap.bid.0.clone(),
            tags: snap.tags.clone(),
            ttl: snap.ttl,
            uri_sans: snap.backend.uri_sans(),
        };
        match csr {
            Some(csr) => source.sign(&spec, csr).await,
            None => source.issue(&spec).await,
        }
    }

    pub(super) fn breaker_metric(&self, bid: &BackendId, code: i64) {
        self.metrics()
            .breaker_state
            .get_or_create(&BackendLabels {
                mesh: bid.0.clone(),
                backend: bid.1.clone(),
            })
            .set(code);
    }

    /// A backend answered: close its breaker and wake who waited for it.
    pub(super) fn backend_ok(&self, st: &mut State, bid: &BackendId) {
        let Some(b) = st.breakers.get_mut(bid) else {
            return;
        };
        if !b.success() {
            return;
        }
        tracing::info!(mesh = %bid.0, backend = %bid.1, "CA backend answers again: circuit breaker closed");
        let parked: Vec<DpKey> = std::mem::take(&mut b.parked).into_iter().collect();
        self.breaker_metric(bid, 0);
        let now = Instant::now();
        for key in parked {
            if let Some(p) = st.proxies.get_mut(&key) {
                p.parked_on = None;
            }
            st.set_timer(&key, Some(now));
        }
        // Proxies backing off after backend failures retry now (through the semaphore).
        let names: Vec<String> = st
            .connected
            .get(&bid.0)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        for name in names {
            let key = (bid.0.clone(), name);
            if st.proxies.get(&key).is_some_and(|p| {
                matches!(p.health, Health::Failing { backend: true, .. }) && p.timer.is_some()
            }) {
                st.set_timer(&key, Some(now));
            }
        }
        self.wake.notify_one();
    }

    /// Seconds the certificate of `key` has left by the zone's clock (0 or less: expired; None:
    /// it holds none, so there is no certificate to hold back).
    pub(super) fn lifetime_left(&self, st: &State, key: &DpKey) -> Option<i64> {
        st.proxies
            .get(key)
            .and_then(|p| p.cert.as_ref())
            .map(|c| c.not_after - self.clock.now_unix())
    }

    pub(super) fn on_issued(
        &self,
        key: &DpKey,
        cause: Option<Cause>,
        snap: &Snap,
        issued: Issued,
    ) -> bool {
        let now_unix = self.clock.now_unix();
        if let Some(skew) = issued.backend_clock {
            let peer = crate::clocks::vault_peer(&snap.bid.0, &snap.bid.1);
            if self.ctx.clocks.observe(&peer, skew) {
                self.ctx.report_now.notify_one();
            }
        }
        let rotate_at = policy::rotate_at_unix(
            issued.not_before,
            issued.not_after,
            snap.ttl,
            self.config.rotation_fraction,
            policy::rotation_jitter(),
        );
        let leeway = common::clock::LEEWAY.as_secs() as i64;
        // How long after issuance a certificate of this lifetime is due (see `rotate_at_unix`).
        let lifetime = (issued.not_after - issued.not_before).min(snap.ttl.as_secs() as i64);
        let expected_wait = (lifetime as f64 * self.config.rotation_fraction) as i64;
        let arrival = Arrival::judge(
            issued.not_before,
            issued.not_after,
            rotate_at,
            now_unix,
            leeway,
            expected_wait,
        );
        let problem = arrival.problem(&issued.serial);
        if !arrival.usable() {
            // The backend answered: this is no reason to open its breaker, nor to ask at once.
            self.on_failure(
                key,
                snap,
                SourceError {
                    reason: FailReason::ClockSkew,
                    message: problem.unwrap_or_default(),
                    per_proxy: true,
                },
            );
            self.clock_suspected(&snap.bid);
            return false;
        }
        let mut st = self.lock();
        self.backend_ok(&mut st, &snap.bid);
        let anchors_id = st.register_anchors(issued.anchors.clone(), self.persist.as_ref());
        self.set_slot_anchors(&mut st, snap, &anchors_id);
        if let Some(c) = st.checks.get_mut(&snap.bid) {
            c.issued += 1;
            c.last_issued_ms = self.clock.now_ms().max(0) as u64;
            if c.ok == Some(false) && !c.running {
                c.next = Some(Instant::now());
            }
        }
        self.counters.issued.fetch_add(1, Ordering::Relaxed);
        self.metrics()
            .issued
            .get_or_create(&BackendTypeLabels {
                backend_type: snap.type_str.to_string(),
            })
            .inc();
        match st.still_applies(key, snap) {
            None => return false,
            // Issued for a backend or tags that changed meanwhile: issue again.
            Some(false) => return true,
            Some(true) => {}
        }
        let meta = CertMeta {
            serial: issued.serial.clone(),
            backend: snap.backend.name.clone(),
            backend_type: snap.type_str.to_string(),
            backend_gen: snap.backend_gen.clone(),
            anchors_id,
            not_before: issued.not_before,
            not_after: issued.not_after,
            tags_hash: snap.tags_hash.clone(),
            rotate_at,
        };
        let Some(p) = st.proxies.get_mut(key) else {
            return false;
        };
        let had_cert = p.cert.is_some();
        // The proxy gets this certificate and its key: whatever chain it presented is obsolete
        // (reusing it later would pair that chain with the new key).
        if let Some(c) = p.conn.as_mut() {
            c.presented = None;
        }
        p.issued_count += 1;
        // An issuance before the last certificate's rotation point is early: early ones in a row
        // are paced (`policy::pace`), whatever asked for them.
        let early = snap.record_cert.is_some() && cause != Some(Cause::Expiry);
        p.early_streak = if early {
            p.early_streak.saturating_add(1)
        } else {
            0
        };
        p.next_issue = Some(
            Instant::now()
                + policy::pace(
                    p.early_streak,
                    self.config.backoff_initial,
                    self.config.backoff_max,
                ),
        );
        // Counted before the proxy can see it.
        if let (Some(cause), true) = (cause, had_cert) {
            self.counters.rotations.fetch_add(1, Ordering::Relaxed);
            self.metrics()
                .rotations
                .get_or_create(&CauseLabels {
                    cause: cause.as_str().to_string(),
                })
                .inc();
        }
        let due = problem.is_some();
        // A signed CSR comes without a key: the proxy holds it.
        let key_pem = Some(issued.key_pem).filter(|k| !k.is_empty());
        self.install_as(st, key, meta, issued.chain_pem, key_pem, problem);
        if due {
            self.clock_suspected(&snap.bid);
        }
        false
    }

    /// A certificate of `bid` arrived that the zone's clock finds wrong: have the backend's check
    /// (which names the skew) run in full now.
    fn clock_suspected(&self, bid: &BackendId) {
        let mut st = self.lock();
        if let Some(c) = st.checks.get_mut(bid)
            && !c.running
            && (c.ok != Some(false) || !c.error.starts_with("clock skew"))
        {
            c.full = true;
            c.next = Some(Instant::now());
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Gives a proxy the certificate of `meta` (issued, or presented and kept): recorded with
    /// the trust counts kept right, its failures forgotten, its timer set to the rotation point,
    /// and its bundle sent with the mesh's trust. `key_pem: None`: the proxy keeps its key.
    pub(super) fn install(
        &self,
        st: MutexGuard<'_, State>,
        key: &DpKey,
        meta: CertMeta,
        cert_chain_pem: String,
        key_pem: Option<String>,
    ) {
        self.install_as(st, key, meta, cert_chain_pem, key_pem, None);
    }

    /// [`Self::install`]; with `due` (why the certificate arrived already due), the proxy counts
    /// one more failure and looks again after a backoff step instead of at its rotation point.
    pub(super) fn install_as(
        &self,
        mut st: MutexGuard<'_, State>,
        key: &DpKey,
        meta: CertMeta,
        cert_chain_pem: String,
        key_pem: Option<String>,
        due: Option<String>,
    ) {
        let Some(p) = st.proxies.get_mut(key) else {
            return;
        };
        p.holding = Holding::Known;
        let rotate_at = meta.rotate_at;
        let next = match due {
            None => {
                p.health = Health::Healthy;
                p.last_error = None;
                self.clock.instant_at(rotate_at)
            }
            Some(why) => {
                let failures = p.health.failures() + 1;
                p.health = Health::Failing {
                    failures,
                    backend: false,
                };
                tracing::debug!(mesh = %key.0, dataplane = %key.1, failures, "{why}");
                p.last_error = Some(why);
                Instant::now() + self.proxy_backoff(failures)
            }
        };
        let (backend, serial) = (meta.backend.clone(), meta.serial.clone());
        let (not_before_unix, not_after_unix) = (meta.not_before, meta.not_after);
        st.set_cert(key, meta);
        st.set_timer(key, Some(next));
        let trust = self.refresh_trust(&mut st, &key.0, Some(key));
        let bundle = IdentityBundle {
            generation: self.next_generation(),
            cert_chain_pem,
            key_pem,
            trust_bundle_pem: trust,
            backend,
            serial,
            not_before_unix,
            not_after_unix,
        };
        if let Some(conn) = st.proxies.get(key).and_then(|p| p.conn.as_ref()) {
            conn.tx.send_replace(Some(Arc::new(bundle)));
        }
        drop(st);
        self.record_changed(key);
        self.dirty.notify_one();
    }

    /// The wait after a proxy's own failure number `failures` (not the backend's): at least half
    /// its step, so that one proxy is asked for at most once per step.
    fn proxy_backoff(&self, failures: u32) -> std::time::Duration {
        common::backoff::delay(
            failures,
            self.config.backoff_initial,
            self.config.backoff_max,
            common::backoff::Jitter::UpperHalf,
        )
    }

    /// The breaker of a backend (a closed one when it has none yet).
    fn breaker<'a>(&self, st: &'a mut State, bid: &BackendId) -> &'a mut Breaker {
        let (threshold, cooldown) = (self.config.breaker_threshold, self.config.breaker_cooldown);
        st.breakers
            .entry(bid.clone())
            .or_insert_with(|| Breaker::new(threshold, cooldown))
    }

    pub(super) fn on_failure(&self, key: &DpKey, snap: &Snap, e: SourceError) {
        let now = Instant::now();
        let mut st = self.lock();
        if e.per_proxy {
            // The backend answered; only this proxy's request was refused.
            self.backend_ok(&mut st, &snap.bid);
        } else {
            // The breaker may stay open a share of the shortest lifetime it holds back at most.
            let parked: Vec<DpKey> = st
                .breakers
                .get(&snap.bid)
                .map(|b| b.parked.iter().cloned().collect())
                .unwrap_or_default();
            let shortest = parked
                .iter()
                .chain(std::iter::once(key))
                .filter_map(|k| self.lifetime_left(&st, k))
                .min();
            let cooldown = policy::breaker_cooldown(self.config.breaker_cooldown, shortest);
            let b = self.breaker(&mut st, &snap.bid);
            b.last_error = Some(e.message.clone());
            if b.failure(now, cooldown) {
                self.counters.breaker_opened.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(mesh = %snap.bid.0, backend = %snap.bid.1, error = %e, cooldown_s = cooldown.as_secs_f32(), "CA backend failing: circuit breaker open");
            }
            let code = b.state.code();
            self.breaker_metric(&snap.bid, code);
            if let Some(c) = st.checks.get_mut(&snap.bid) {
                c.failed_by_issuance(
                    &e.message,
                    self.clock.now_ms(),
                    now + self.config.vault_recheck.min(cooldown),
                );
            }
        }
        drop(st);
        self.proxy_failed(key, e);
    }

    /// A failure of one proxy's issuance (counted; the proxy backs off): the backend's, or its
    /// own (a refused request, a certificate its clock refuses, a CSR that did not come).
    pub(super) fn proxy_failed(&self, key: &DpKey, e: SourceError) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        self.metrics()
            .failed
            .get_or_create(&ReasonLabels {
                reason: e.reason.as_str().to_string(),
            })
            .inc();
        let now = Instant::now();
        let mut st = self.lock();
        let Some(p) = st.proxies.get_mut(key) else {
            return;
        };
        let failures = p.health.failures() + 1;
        p.health = Health::Failing {
            failures,
            backend: !e.per_proxy,
        };
        p.last_error = Some(e.message.clone());
        let delay = if e.per_proxy {
            self.proxy_backoff(failures)
        } else {
            // Backend failures: spread wide (the breaker wakes them when it closes).
            policy::backoff(
                failures,
                self.config.backoff_initial,
                self.config.backoff_max,
            )
        };
        let connected = p.conn.is_some();
        if connected {
            st.set_timer(key, Some(now + delay));
        }
        drop(st);
        tracing::debug!(mesh = %key.0, dataplane = %key.1, failures, retry_in_ms = delay.as_millis() as u64, error = %e, "issuance failed");
        self.record_changed(key);
        self.wake.notify_one();
        self.dirty.notify_one();
    }
}
