//! Trust bundles: which anchor sets a mesh's bundle is made of (the current backend's, those of
//! every connected proxy's certificate, and those retiring within `trust_grace`), the one
//! string per mesh shared by its bundles and pushed to its proxies when it changes, and learning
//! a backend's anchors (from its source, built on first use) before its first certificate.

use std::collections::HashSet;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::policy::Breaker;
use super::records::{self, BackendRecord, CertMeta, Persist};
use super::source::{CertSource, SourceError};
use super::table::{AnchorSet, Snap, State};
use super::{DpKey, IdentityManager};

/// The id of an anchor set: a hash of its certificates, order-independent.
pub(super) fn anchors_id(pems: &[String]) -> String {
    let mut ders: Vec<Vec<u8>> = pems
        .iter()
        .filter_map(|p| common::x509::pem_to_ders(p).ok())
        .flatten()
        .collect();
    ders.sort();
    ders.dedup();
    let mut h = Sha256::new();
    for d in &ders {
        h.update((d.len() as u64).to_be_bytes());
        h.update(d);
    }
    hex::encode(&h.finalize()[..16])
}

impl State {
    /// Counts (or stops counting) a connected proxy's certificate in its mesh's trust bundle.
    pub(super) fn trust_ref(&mut self, mesh: &str, cert: Option<&CertMeta>, add: bool) {
        let Some(c) = cert else {
            return;
        };
        let refs = self.trust_refs.entry(mesh.to_string()).or_default();
        if add {
            *refs.entry(c.anchors_id.clone()).or_default() += 1;
            if let Some(r) = self.retiring.get_mut(mesh) {
                r.remove(&c.anchors_id);
            }
        } else if let Some(n) = refs.get_mut(&c.anchors_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                refs.remove(&c.anchors_id);
                if !self.trust_grace.is_zero() {
                    self.retiring
                        .entry(mesh.to_string())
                        .or_default()
                        .insert(c.anchors_id.clone(), Instant::now() + self.trust_grace);
                }
            }
        }
    }

    /// Replaces a proxy's certificate, keeping the trust counts right.
    pub(super) fn set_cert(&mut self, key: &DpKey, meta: CertMeta) {
        let Some(p) = self.proxies.get_mut(key) else {
            return;
        };
        let connected = p.conn.is_some();
        let old = p.cert.replace(meta.clone());
        if connected {
            self.trust_ref(&key.0, old.as_ref(), false);
            self.trust_ref(&key.0, Some(&meta), true);
        }
    }

    pub(super) fn register_anchors(
        &mut self,
        pems: Vec<String>,
        persist: Option<&Persist>,
    ) -> String {
        if let Some(id) = self.anchor_ids.get(&pems) {
            return id.clone();
        }
        let id = anchors_id(&pems);
        if self.anchor_ids.len() > 64 {
            self.anchor_ids.clear();
        }
        self.anchor_ids.insert(pems.clone(), id.clone());
        if !self.anchors.contains_key(&id) {
            if let Some(p) = persist {
                p.put_anchors(&id, &pems);
            }
            self.anchors
                .insert(id.clone(), Arc::new(AnchorSet::new(pems)));
        }
        id
    }

    /// The anchor sets of a mesh's trust bundle: the slot's first, then those of every connected
    /// proxy's certificate (only sets whose certificates are known).
    pub(super) fn trust_ids(&self, mesh: &str) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        if let Some(id) = self
            .meshes
            .get(mesh)
            .and_then(|m| m.slot.as_ref())
            .and_then(|s| s.anchors_id.as_ref())
        {
            ids.push(id.clone());
        }
        if let Some(refs) = self.trust_refs.get(mesh) {
            for (id, n) in refs {
                if *n > 0 && !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
        }
        if let Some(r) = self.retiring.get(mesh) {
            let now = Instant::now();
            for (id, until) in r {
                if *until > now && !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
        }
        ids.retain(|id| self.anchors.contains_key(id));
        ids
    }

    /// The trust bundle made of these anchor sets, each certificate once.
    pub(super) fn trust_of(&self, ids: &[String]) -> String {
        let mut seen = HashSet::new();
        let mut out = String::new();
        for id in ids {
            if let Some(set) = self.anchors.get(id) {
                for p in &set.pems {
                    let p = p.trim();
                    if !p.is_empty() && seen.insert(p) {
                        out.push_str(p);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

impl IdentityManager {
    /// Builds the slot's source if needed. A new source is asked for its anchors at once, so
    /// that every proxy of the mesh trusts the backend's CA before any certificate of it is
    /// handed out (the trust bundle is pushed when the anchors are learnt).
    pub(super) async fn ensure_source(
        &self,
        snap: &Snap,
    ) -> Result<Arc<dyn CertSource>, SourceError> {
        let mut cell = snap.source.lock().await;
        if let Some(s) = cell.as_ref() {
            return Ok(s.clone());
        }
        let s = self
            .factory
            .build(&snap.bid.0, &snap.backend, &self.ctx.store)
            .await?;
        *cell = Some(s.clone());
        let known = self
            .lock()
            .meshes
            .get(&snap.bid.0)
            .and_then(|m| m.slot.as_ref())
            .is_some_and(|sl| sl.anchors_id.is_some());
        if !known {
            match s.anchors().await {
                Ok(pems) => {
                    self.learn_anchors(snap, pems);
                }
                Err(e) => {
                    tracing::debug!(mesh = %snap.bid.0, backend = %snap.bid.1, error = %e, "cannot read the backend's CA yet");
                }
            }
        }
        Ok(s)
    }

    /// Asks the backend for its anchors (when its breaker is closed) and records them.
    pub(super) async fn fetch_anchors(&self, snap: &Snap) -> Option<(String, Arc<AnchorSet>)> {
        let closed = self
            .lock()
            .breakers
            .get(&snap.bid)
            .is_none_or(Breaker::is_closed);
        if !closed {
            return None;
        }
        let source = self.ensure_source(snap).await.ok()?;
        {
            let st = self.lock();
            if let Some(id) = st
                .meshes
                .get(&snap.bid.0)
                .and_then(|m| m.slot.as_ref())
                .filter(|sl| sl.backend_gen == snap.backend_gen)
                .and_then(|sl| sl.anchors_id.clone())
                && let Some(set) = st.anchors.get(&id)
            {
                return Some((id, set.clone()));
            }
        }
        match source.anchors().await {
            Ok(pems) => self.learn_anchors(snap, pems),
            Err(e) => {
                tracing::debug!(mesh = %snap.bid.0, backend = %snap.bid.1, error = %e, "cannot read the backend's CA");
                None
            }
        }
    }

    /// Records the anchors of the slot `snap` was taken from; the trust bundle follows.
    pub(super) fn learn_anchors(
        &self,
        snap: &Snap,
        pems: Vec<String>,
    ) -> Option<(String, Arc<AnchorSet>)> {
        if pems.is_empty() {
            return None;
        }
        let mut st = self.lock();
        let id = st.register_anchors(pems, self.persist.as_ref());
        let set = st.anchors.get(&id).cloned()?;
        self.set_slot_anchors(&mut st, snap, &id);
        Some((id, set))
    }

    pub(super) fn set_slot_anchors(&self, st: &mut State, snap: &Snap, id: &str) {
        let mesh = &snap.bid.0;
        let Some(slot) = st.meshes.get_mut(mesh).and_then(|m| m.slot.as_mut()) else {
            return;
        };
        if slot.backend_gen != snap.backend_gen || slot.anchors_id.as_deref() == Some(id) {
            return;
        }
        slot.anchors_id = Some(id.to_string());
        let rec = BackendRecord {
            backend_gen: snap.backend_gen.clone(),
            anchors_id: id.to_string(),
        };
        if let Some(p) = &self.persist {
            p.put_backend(mesh, &snap.bid.1, &rec);
        }
        st.backend_records
            .insert(records::dp_key(mesh, &snap.bid.1), rec);
        self.refresh_trust(st, mesh, None);
    }

    /// Recomputes a mesh's trust bundle; when it changed, sends it to every connected proxy of
    /// the mesh that already has a bundle (but `except`, which is about to get one). Anchor sets
    /// are immutable (their id is a hash of their certificates), so the bundle is rebuilt only
    /// when the list of sets changes, and every bundle of the mesh shares the one string.
    pub(super) fn refresh_trust(
        &self,
        st: &mut State,
        mesh: &str,
        except: Option<&DpKey>,
    ) -> Arc<str> {
        let ids = st.trust_ids(mesh);
        if let Some(ms) = st.meshes.get(mesh)
            && ms.trust_ids == ids
        {
            return ms.trust.clone();
        }
        let trust: Arc<str> = Arc::from(st.trust_of(&ids));
        let Some(ms) = st.meshes.get_mut(mesh) else {
            return trust;
        };
        ms.trust_ids = ids;
        if *ms.trust == *trust {
            return ms.trust.clone();
        }
        ms.trust = trust.clone();
        if trust.is_empty() {
            return trust;
        }
        let names: Vec<String> = st
            .connected
            .get(mesh)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        for name in names {
            let key = (mesh.to_string(), name);
            if except == Some(&key) {
                continue;
            }
            let Some(conn) = st.proxies.get(&key).and_then(|p| p.conn.as_ref()) else {
                continue;
            };
            let last = conn.tx.borrow().clone();
            if let Some(last) = last
                && last.trust_bundle_pem != trust
            {
                let mut b = (*last).clone();
                b.trust_bundle_pem = trust.clone();
                b.generation = self.next_generation();
                conn.tx.send_replace(Some(Arc::new(b)));
            }
        }
        trust
    }
}
