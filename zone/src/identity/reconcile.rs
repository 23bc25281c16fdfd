//! Reconciliation with the store: each mesh's enabled backend becomes its [`Slot`] (a new one
//! when its spec, or a local CA, changes; the client rebuilt, certificates kept, when only its
//! credentials change), and each vault backend gets a Vault check. Proxies of a changed mesh are
//! looked at again at once.

use std::collections::HashSet;
use std::sync::Arc;

use common::model::BackendType;
use tokio::time::Instant;

use super::IdentityManager;
use super::check::CheckState;
use super::records;
use super::table::{MeshState, Slot, short_hash};

impl IdentityManager {
    /// Follows the store: the enabled backend of every mesh, and the Vault backends to check.
    pub(super) fn reconcile(&self) {
        let meshes = match self.ctx.store.list_meshes() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the meshes");
                return;
            }
        };
        let now = Instant::now();
        let mut st = self.lock();
        let mut seen_meshes = HashSet::new();
        let mut seen_checks = HashSet::new();
        let mut changed = Vec::new();
        for mesh in &meshes {
            seen_meshes.insert(mesh.name.clone());
            let desired = match mesh.enabled_backend() {
                None => Err(format!("mesh {:?} has no enabled mTLS backend", mesh.name)),
                Some(b) => match b.backend_type() {
                    None => Err(format!("backend {:?} has an unknown type", b.name)),
                    Some(t) => Ok((b.clone(), t)),
                },
            };
            let prior = st.meshes.remove(&mesh.name).unwrap_or_default();
            let mut ms = MeshState {
                slot: None,
                problem: None,
                trust: prior.trust,
                trust_ids: prior.trust_ids,
            };
            match desired {
                Err(problem) => {
                    if prior.slot.is_some() {
                        changed.push(mesh.name.clone());
                    }
                    ms.problem = Some(problem);
                }
                Ok((backend, t)) => {
                    let spec = short_hash(&serde_json::to_vec(&backend).unwrap_or_default());
                    let material = self.factory.material(&mesh.name, &backend, &self.ctx.store);
                    let backend_gen = match t {
                        BackendType::Vault => short_hash(format!("vault/{spec}").as_bytes()),
                        _ => short_hash(format!("{}/{spec}/{material}", t.as_str()).as_bytes()),
                    };
                    match prior.slot {
                        Some(mut s) if s.backend_gen == backend_gen => {
                            if s.material != material {
                                // New credentials (or CA file) for the same backend: rebuild
                                // the client, keep the certificates.
                                s.material = material;
                                s.source = Arc::new(tokio::sync::Mutex::new(None));
                            }
                            s.backend = Arc::new(backend);
                            ms.slot = Some(s);
                        }
                        _ => {
                            let rec_key = records::dp_key(&mesh.name, &backend.name);
                            let anchors_id = st
                                .backend_records
                                .get(&rec_key)
                                .filter(|r| {
                                    r.backend_gen == backend_gen
                                        && st.anchors.contains_key(&r.anchors_id)
                                })
                                .map(|r| r.anchors_id.clone());
                            let bid = (mesh.name.clone(), backend.name.clone());
                            // A new backend configuration starts with a closed breaker.
                            if let Some(b) = st.breakers.remove(&bid) {
                                for key in b.parked {
                                    if let Some(p) = st.proxies.get_mut(&key) {
                                        p.parked_on = None;
                                    }
                                }
                            }
                            ms.slot = Some(Slot {
                                ttl: backend.dp_cert_expiration(),
                                type_str: t.as_str(),
                                backend: Arc::new(backend),
                                material,
                                backend_gen,
                                anchors_id,
                                source: Arc::new(tokio::sync::Mutex::new(None)),
                            });
                            changed.push(mesh.name.clone());
                        }
                    }
                }
            }
            st.meshes.insert(mesh.name.clone(), ms);
            for b in mesh.backends() {
                if b.backend_type() != Some(BackendType::Vault) {
                    continue;
                }
                let bid = (mesh.name.clone(), b.name.clone());
                seen_checks.insert(bid.clone());
                let spec = short_hash(&serde_json::to_vec(b).unwrap_or_default());
                let fresh = st.checks.get(&bid).is_none_or(|c| c.spec_hash != spec);
                if fresh {
                    st.checks.insert(bid, CheckState::new(b.clone(), spec, now));
                }
            }
        }
        st.meshes.retain(|name, _| seen_meshes.contains(name));
        st.checks.retain(|bid, _| seen_checks.contains(bid));
        st.breakers.retain(|bid, _| seen_meshes.contains(&bid.0));
        for mesh in changed {
            self.refresh_trust(&mut st, &mesh, None);
            let names: Vec<String> = st
                .connected
                .get(&mesh)
                .map(|n| n.iter().cloned().collect())
                .unwrap_or_default();
            for name in names {
                st.set_timer(&(mesh.clone(), name), Some(now));
            }
        }
        drop(st);
        self.wake.notify_one();
        self.dirty.notify_one();
    }
}
