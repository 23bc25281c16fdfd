//! Registration: a proxy connecting (`IdentityManager::connect`, returning its subscription)
//! and leaving (its `ConnGuard` dropped), the listing of the zone's dataplanes, and the
//! write-behind of their records (without keys) to the zone's store, in batches within a second.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use common::model::Dataplane;
use tokio::sync::watch;
use tokio::time::Instant;

use super::records::DpRecord;
use super::table::{Conn, Holding, Proxy, Work, tags_hash};
use super::{DataplaneView, DpKey, IdentityBundle, IdentityError, IdentityManager};

/// A changed dataplane record is written at most this long after its first change.
const RECORDS_FLUSH: Duration = Duration::from_secs(1);
/// Records copied out of the engine's state at a time when writing them.
const RECORDS_BATCH: usize = 64;

/// A proxy's subscription to its identity. Dropping it marks the proxy disconnected. A newer
/// connection of the same dataplane replaces this one: `updates` then reports the channel closed.
pub struct IdentitySubscription {
    /// `None` until the first bundle is ready; then the latest bundle.
    pub updates: watch::Receiver<Option<Arc<IdentityBundle>>>,
    /// The zone asks for a CSR (`dpCert.keyGeneration: proxy`): the latest ask.
    pub csr_asks: watch::Receiver<Option<super::keygen::CsrAsk>>,
    _guard: ConnGuard,
}

impl IdentitySubscription {
    /// Where this connection's agent reports go.
    pub fn reporter(&self) -> super::reports::AgentReporter {
        super::reports::AgentReporter {
            manager: self._guard.manager.clone(),
            key: self._guard.key.clone(),
            conn: self._guard.conn,
        }
    }
}

impl fmt::Debug for IdentitySubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentitySubscription")
            .field("mesh", &self._guard.key.0)
            .field("name", &self._guard.key.1)
            .finish_non_exhaustive()
    }
}
pub(super) struct ConnGuard {
    pub(super) manager: Weak<IdentityManager>,
    pub(super) key: DpKey,
    pub(super) conn: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(m) = self.manager.upgrade() {
            m.disconnect(&self.key, self.conn);
        }
    }
}

impl IdentityManager {
    /// Registers a connected proxy (authenticated as mesh/name by the caller). `presented` is
    /// the certificate chain (PEM, leaf first) the proxy holds, if any: kept when still good.
    pub fn connect(
        &self,
        dp: Dataplane,
        presented: Option<String>,
    ) -> Result<IdentitySubscription, IdentityError> {
        self.connect_with(dp, presented, false)
    }

    /// [`Self::connect`] for a proxy whose agent answers CSR requests (`csr`: it came over
    /// `Session`), as `dpCert.keyGeneration: proxy` needs.
    pub fn connect_with(
        &self,
        dp: Dataplane,
        presented: Option<String>,
        csr: bool,
    ) -> Result<IdentitySubscription, IdentityError> {
        common::validate::validate_dataplane(&dp)
            .map_err(|e| IdentityError::InvalidDataplane(e.to_string()))?;
        let (_, meshes) = self.ctx.store.versions(common::model::Kind::Mesh);
        if !meshes.contains_key(&(dp.mesh.clone(), dp.mesh.clone())) {
            return Err(IdentityError::MeshNotFound(dp.mesh.clone()));
        }
        let key: DpKey = (dp.mesh.clone(), dp.name.clone());
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let (asks_tx, asks_rx) = watch::channel(None);
        let presented = presented.filter(|p| p.contains("BEGIN CERTIFICATE"));
        let now = Instant::now();
        {
            let mut st = self.lock();
            let p = st
                .proxies
                .entry(key.clone())
                .or_insert_with(|| Box::new(Proxy::new(dp.clone())));
            p.tags = Arc::new(dp.tags());
            p.tags_hash = tags_hash(&p.tags);
            p.dp = dp;
            p.holding = if presented.is_none() {
                Holding::Unknown
            } else {
                Holding::Known
            };
            let newly = p.conn.is_none();
            // What the agent said was about its previous connection.
            p.agent = None;
            // A replaced connection's receivers see their channel closed.
            p.conn = Some(Conn {
                id,
                tx,
                presented,
                asks: csr.then_some(asks_tx),
            });
            // A CSR asked on the previous connection will not come.
            p.csr = super::keygen::CsrState::None;
            let cert = p.cert.clone();
            p.last_connected_ms = self.clock.now_ms().max(0) as u64;
            if p.work == Work::Running {
                p.work = Work::RunningAgain;
            }
            let in_backoff = p.health.failures() > 0 && p.timer.is_some_and(|t| t > now);
            if newly {
                st.trust_ref(&key.0, cert.as_ref(), true);
            }
            st.connected
                .entry(key.0.clone())
                .or_default()
                .insert(key.1.clone());
            if !in_backoff {
                st.set_timer(&key, Some(now));
            }
            let n: usize = st.connected.values().map(BTreeSet::len).sum();
            self.metrics().proxies_connected.set(n as i64);
            self.record_changed(&key);
        }
        self.wake.notify_one();
        self.dirty.notify_one();
        Ok(IdentitySubscription {
            updates: rx,
            csr_asks: asks_rx,
            _guard: ConnGuard {
                manager: self.me.clone(),
                key,
                conn: id,
            },
        })
    }

    pub(super) fn disconnect(&self, key: &DpKey, conn: u64) {
        let mut st = self.lock();
        let Some(p) = st.proxies.get_mut(key) else {
            return;
        };
        if p.conn.as_ref().map(|c| c.id) != Some(conn) {
            return;
        }
        p.conn = None;
        p.agent = None;
        p.csr = super::keygen::CsrState::None;
        let parked = p.parked_on.take();
        let cert = p.cert.clone();
        st.trust_ref(&key.0, cert.as_ref(), false);
        st.set_timer(key, None);
        if let Some(bid) = parked
            && let Some(b) = st.breakers.get_mut(&bid)
        {
            b.parked.remove(key);
        }
        if let Some(names) = st.connected.get_mut(&key.0) {
            names.remove(&key.1);
        }
        let n: usize = st.connected.values().map(BTreeSet::len).sum();
        self.metrics().proxies_connected.set(n as i64);
        self.record_changed(key);
        // The trust bundle may shrink now that this proxy's certificate no longer counts.
        self.refresh_trust(&mut st, &key.0, None);
        drop(st);
        self.dirty.notify_one();
    }

    /// Every dataplane known to the zone, sorted by mesh and name.
    pub fn dataplanes(&self) -> Vec<DataplaneView> {
        let now = self.clock.now_unix();
        let st = self.lock();
        let mut out: Vec<DataplaneView> = st.proxies.values().map(|p| p.view(now)).collect();
        drop(st);
        out.sort_by(|a, b| (&a.mesh, &a.name).cmp(&(&b.mesh, &b.name)));
        out
    }

    /// One dataplane.
    pub fn dataplane(&self, mesh: &str, name: &str) -> Option<DataplaneView> {
        let now = self.clock.now_unix();
        self.lock()
            .proxies
            .get(&(mesh.to_string(), name.to_string()))
            .map(|p| p.view(now))
    }

    /// Notes that a dataplane's record must be written. Records are written behind, in batches
    /// (`records_loop`): one write for a burst of changes of a proxy (its connection, then the
    /// certificate issued for it), none of them on the paths that serve proxies. They are
    /// bookkeeping that may lag (what a restarted zone lists, and the metadata that lets it keep
    /// presented certificates, which it can also verify without it); everything pending is
    /// written when the engine stops.
    pub(super) fn record_changed(&self, key: &DpKey) {
        if self.persist.is_none() {
            return;
        }
        let first = {
            let mut dirty = self.dirty_records.lock().unwrap_or_else(|e| e.into_inner());
            let first = dirty.is_empty();
            dirty.insert(key.clone());
            first
        };
        if first {
            self.records_due.notify_one();
        }
    }

    pub(super) async fn records_loop(self: Arc<Self>) {
        loop {
            self.records_due.notified().await;
            tokio::time::sleep(RECORDS_FLUSH).await;
            self.flush_records();
        }
    }

    /// Writes the records of the dataplanes that changed.
    pub(super) fn flush_records(&self) {
        let Some(per) = &self.persist else {
            return;
        };
        let keys =
            std::mem::take(&mut *self.dirty_records.lock().unwrap_or_else(|e| e.into_inner()));
        if keys.is_empty() {
            return;
        }
        // In small batches: the lock is not held for long, and the copies stay few.
        let keys: Vec<DpKey> = keys.into_iter().collect();
        for batch in keys.chunks(RECORDS_BATCH) {
            let records: Vec<DpRecord> = {
                let st = self.lock();
                batch
                    .iter()
                    .filter_map(|k| st.proxies.get(k).map(|p| p.record()))
                    .collect()
            };
            for r in &records {
                per.put_dp(r);
            }
        }
    }
}
