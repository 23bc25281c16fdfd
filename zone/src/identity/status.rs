//! What the engine shows: the counters and breaker states of its API, the status report it is
//! the source of (`StatusSource`: dataplanes and Vault checks, built when the report is sent),
//! how often a report is asked for (less often as the zone grows), and the expiry gauge.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::table::{Proxy, State};
use super::{IdentityManager, IdentityStats};
use crate::state::{StatusExtra, StatusSource};

/// At most this often a status report is asked for.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(200);
/// At least this often a status report is asked for while things change.
const STATUS_INTERVAL_MAX: Duration = Duration::from_secs(5);
/// The wait between status reports per dataplane the zone knows (see `status_interval`).
const STATUS_INTERVAL_PER_DATAPLANE: Duration = Duration::from_millis(1);
/// The expiry gauge is refreshed at least this often.
const GAUGE_REFRESH: Duration = Duration::from_secs(15);

impl IdentityManager {
    /// Counters of the engine.
    pub fn stats(&self) -> IdentityStats {
        let c = &self.counters;
        let connected = self
            .lock()
            .connected
            .values()
            .map(BTreeSet::len)
            .sum::<usize>() as u64;
        IdentityStats {
            attempts: c.attempts.load(Ordering::Relaxed),
            issued: c.issued.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            reused: c.reused.load(Ordering::Relaxed),
            rotations: c.rotations.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
            max_in_flight: c.max_in_flight.load(Ordering::Relaxed),
            breaker_opened: c.breaker_opened.load(Ordering::Relaxed),
            connected,
        }
    }

    /// The state of a backend's circuit breaker: "closed", "open" or "half-open".
    pub fn breaker_state(&self, mesh: &str, backend: &str) -> &'static str {
        match self
            .lock()
            .breakers
            .get(&(mesh.to_string(), backend.to_string()))
            .map(|b| b.state.code())
        {
            Some(1) => "open",
            Some(2) => "half-open",
            _ => "closed",
        }
    }

    /// Asks for a status report when something changed, at most once per status interval (see
    /// [`IdentityManager::status_interval`]), and keeps the expiry gauge fresh.
    pub(super) async fn status_loop(self: Arc<Self>) {
        loop {
            let refresh = tokio::time::timeout(GAUGE_REFRESH, self.dirty.notified()).await;
            if refresh.is_ok() {
                self.publish();
                tokio::time::sleep(self.status_interval()).await;
            } else {
                self.update_expiry_gauge();
            }
        }
    }

    /// How long to wait after asking for a status report before asking again. A report lists
    /// every dataplane (and global decodes and stores each one), so its cost grows with the
    /// zone: the wait grows with it, `STATUS_INTERVAL_PER_DATAPLANE` per dataplane, from
    /// `STATUS_DEBOUNCE` (up to 200 dataplanes) to `STATUS_INTERVAL_MAX` (from 5,000). Reporting
    /// thus costs about the same per second whatever the size of the zone.
    pub(super) fn status_interval(&self) -> Duration {
        let n = self.lock().proxies.len() as u32;
        STATUS_INTERVAL_PER_DATAPLANE
            .saturating_mul(n)
            .clamp(STATUS_DEBOUNCE, STATUS_INTERVAL_MAX)
    }

    pub(super) fn update_expiry_gauge(&self) {
        let st = self.lock();
        let earliest = st
            .proxies
            .values()
            .filter(|p| p.conn.is_some())
            .filter_map(|p| p.cert.as_ref().map(|c| c.not_after))
            .min();
        drop(st);
        let secs = earliest.map_or(0, |na| na - self.clock.now_unix());
        self.metrics().earliest_expiry_seconds.set(secs);
    }

    /// Asks for the zone's status report to be sent (it is built when it is sent, see
    /// [`StatusSource`]).
    pub(super) fn publish(&self) {
        self.ctx.report_now.notify_one();
        self.update_expiry_gauge();
    }
}

impl IdentityManager {
    pub(super) fn checks_of(st: &State) -> Vec<proto::kds::BackendCheck> {
        st.checks
            .iter()
            .map(|((mesh, backend), c)| c.report(mesh, backend))
            .collect()
    }
}

impl StatusSource for IdentityManager {
    fn backend_checks(&self) -> Vec<proto::kds::BackendCheck> {
        Self::checks_of(&self.lock())
    }

    /// The dataplanes (sorted by mesh and name) and the backend checks, as they stand.
    fn status_extra(&self) -> StatusExtra {
        let now = self.clock.now_unix();
        let st = self.lock();
        let mut dps: Vec<&Proxy> = st.proxies.values().map(|p| &**p).collect();
        dps.sort_unstable_by(|a, b| (&a.dp.mesh, &a.dp.name).cmp(&(&b.dp.mesh, &b.dp.name)));
        let dataplanes: Vec<proto::kds::DataplaneStatus> = dps
            .into_iter()
            .map(|p| proto::kds::DataplaneStatus {
                mesh: p.dp.mesh.clone(),
                name: p.dp.name.clone(),
                service: p.service(),
                tags: p
                    .tags
                    .iter()
                    .map(|(k, v)| (k.clone(), v.join(",")))
                    .collect(),
                backend: p
                    .cert
                    .as_ref()
                    .map(|c| c.backend.clone())
                    .unwrap_or_default(),
                cert_serial: p
                    .cert
                    .as_ref()
                    .map(|c| c.serial.clone())
                    .unwrap_or_default(),
                cert_expires_unix_ms: p.cert.as_ref().map_or(0, |c| c.not_after * 1000),
                cert_rotates_unix_ms: p.cert.as_ref().map_or(0, |c| c.rotate_at * 1000),
                connected: p.conn.is_some(),
                warning: p
                    .dp
                    .labels
                    .get(crate::dp::TOKEN_WARNING_LABEL)
                    .map(|_| {
                        "its dataplane token binds no service (made before tokens bound services): make a new one with global dataplane-token --service".to_string()
                    })
                    .unwrap_or_default(),
                last_error: p.shown_error().unwrap_or_default(),
                state: p.state(now).to_string(),
            })
            .collect();
        let backend_checks = Self::checks_of(&st);
        drop(st);
        StatusExtra {
            dataplanes,
            backend_checks,
        }
    }
}
