//! The optimistic commit of admissions: [`Admission`] holds the store, the admission lock and the
//! metrics, admits a batch without a lock against a view that notes every version it reads
//! ([`ReadSet`]), and stores it with what it read as the write's expectations
//! ([`Store::write_checked`]), checked inside the store's write (under the sled write lock, or in
//! the PostgreSQL transaction, where another replica may have written meanwhile): so concurrent
//! writes commit together. When what it read changed (seen before the write, or as a conflict of
//! the store), admission runs again under the admission lock, which serializes only those retries
//! so that they make progress. Deletes take the lock and the same expectations. Refusals come back typed ([`AdmissionError`],
//! [`DeleteError`]); how they are shown to a client is the API's business.

use std::sync::Arc;
use std::time::Instant;

use common::datasource::SecretLookup;
use common::model::{Kind, Mesh, Resource};
use common::store::{Expect, Op, Outcome, ResourceKey, Store, StoreError};
use tokio::sync::Mutex;

use super::pipeline::{self, Admitted, Existing, Refused};
use crate::metrics::Metrics;

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// Refused by validation or a backend check: every bad field and the check reports.
    #[error("{0}")]
    Refused(Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a delete did nothing.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("mesh {mesh:?} not found")]
    MeshNotFound { mesh: String },
    #[error("secret {name:?} not found in mesh {mesh:?}")]
    SecretNotFound { mesh: String, name: String },
    /// The Secret is referenced by its Mesh (`users`: where).
    #[error("secret {name:?} is used by mesh {mesh:?} at {}: change the Mesh first", users.join(", "))]
    SecretInUse {
        mesh: String,
        name: String,
        users: Vec<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How many times a write that conflicted with another replica's is admitted again before the
/// conflict is returned.
const CONFLICT_RETRIES: usize = 8;

/// The one way writes reach the store. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    store: Store,
    metrics: Arc<Metrics>,
    /// Bounds of every Vault request of the backend checks.
    vault_timeouts: common::vault::Timeouts,
    /// Admissions are serialized: each one compares against the state it will replace.
    lock: Arc<Mutex<()>>,
}

impl Existing for Store {
    fn mesh(&self, name: &str) -> Option<Mesh> {
        self.get_mesh(name).ok().flatten()
    }
}

impl Admission {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        vault_timeouts: common::vault::Timeouts,
    ) -> Self {
        Self {
            store,
            metrics,
            vault_timeouts,
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Admits and (unless dry run) stores one batch. Returns the admission and the per-op outcomes.
    ///
    /// Admission is optimistic: it runs without the admission lock (the Vault test certificate and
    /// builtin CA generation take from milliseconds to a second, and must not hold up every other
    /// write) against a view of the store that notes the version of every resource it read. Under
    /// the lock, the batch is stored only if none of them changed since; otherwise admission runs
    /// again, under the lock, against what is stored then. So a write is never admitted against
    /// state that another write replaced in the meantime.
    pub async fn admit_and_store(
        &self,
        batch: Vec<Resource>,
        dry_run: bool,
    ) -> Result<(Admitted, Vec<Outcome>), AdmissionError> {
        let kinds: Vec<&'static str> = batch.iter().map(|r| r.kind().as_str()).collect();
        let count = |ok: bool| {
            for k in &kinds {
                self.metrics
                    .count_admission(k, if ok { "admitted" } else { "refused" });
            }
        };
        let refused = |r: Refused| {
            tracing::info!(resource = %r.resource, errors = %r.errors, "refused");
            count(false);
            AdmissionError::Refused(r)
        };
        let view = ReadSet::new(&self.store);
        let admitted = self
            .admit_observed(batch.clone(), &view, dry_run)
            .await
            .map_err(refused)?;
        if dry_run {
            count(true);
            let n = admitted.ops.len();
            return Ok((admitted, vec![Outcome::Unchanged; n]));
        }
        // The store checks what admission read inside its write (`write_checked`), so concurrent
        // writes need no lock here and commit together; the lock only serializes admissions
        // that must run again because what they read changed, so that they make progress.
        let mut relock = None;
        let (mut admitted, mut expected) = if view.unchanged() {
            let expected = view.expected();
            (admitted, expected)
        } else {
            relock = Some(self.lock.lock().await);
            self.metrics.admission_retries.inc();
            tracing::debug!("what the admission read changed meanwhile: admitting again");
            self.admit_again(batch.clone()).await.map_err(refused)?
        };
        let mut attempt = 0;
        let outcomes = loop {
            match self
                .store
                .write_checked(admitted.ops.clone(), &expected)
                .await
            {
                Ok(outcomes) => break outcomes,
                Err(StoreError::Conflict { .. }) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    if relock.is_none() {
                        relock = Some(self.lock.lock().await);
                    }
                    self.metrics.admission_retries.inc();
                    tracing::debug!(
                        "another writer changed what the admission read: admitting again"
                    );
                    (admitted, expected) =
                        self.admit_again(batch.clone()).await.map_err(refused)?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        drop(relock);
        count(true);
        self.metrics.meshes.set(self.store.count(Kind::Mesh) as i64);
        super::history::remember(&self.store, &admitted.checks).await;
        Ok((admitted, outcomes))
    }

    /// Admission again (under the lock), against what is stored now, noting what it reads.
    async fn admit_again(&self, batch: Vec<Resource>) -> Result<(Admitted, Vec<Expect>), Refused> {
        let view = ReadSet::new(&self.store);
        let admitted = self.admit_observed(batch, &view, false).await?;
        Ok((admitted, view.expected()))
    }

    /// One admission, with its metrics.
    async fn admit_observed(
        &self,
        batch: Vec<Resource>,
        existing: &dyn Existing,
        dry_run: bool,
    ) -> Result<Admitted, Refused> {
        let started = Instant::now();
        let result = pipeline::admit(batch, existing, dry_run, self.vault_timeouts).await;
        let elapsed = started.elapsed().as_secs_f64();
        let checks = match &result {
            Ok(a) => &a.checks,
            Err(r) => &r.checks,
        };
        self.metrics.admission_seconds.observe(elapsed);
        for c in checks {
            self.metrics.count_check(&c.type_, c.ok);
        }
        result
    }

    /// Deletes a Mesh and everything in it in one transaction; returns how many owned resources
    /// went with it.
    pub async fn delete_mesh(&self, name: &str) -> Result<usize, DeleteError> {
        // Checked inside the store's write: the lock only serializes retries after a conflict.
        let mut relock = None;
        let mut attempt = 0;
        loop {
            match self.try_delete_mesh(name).await {
                Err(DeleteError::Store(StoreError::Conflict { .. }))
                    if attempt < CONFLICT_RETRIES =>
                {
                    attempt += 1;
                    // What the delete read changed (a write raced it): counted as a write that
                    // runs again, as admissions are.
                    self.metrics.admission_retries.inc();
                    if relock.is_none() {
                        relock = Some(self.lock.lock().await);
                    }
                }
                r => {
                    if r.is_ok() {
                        super::history::forget(&self.store, name).await;
                    }
                    return r;
                }
            }
        }
    }

    async fn try_delete_mesh(&self, name: &str) -> Result<usize, DeleteError> {
        let mesh_version = self.store.version_of(&ResourceKey::mesh(name));
        if mesh_version.is_none() || self.store.get(&ResourceKey::mesh(name))?.is_none() {
            return Err(DeleteError::MeshNotFound {
                mesh: name.to_string(),
            });
        }
        let mut owned = std::collections::BTreeMap::new();
        let mut expected = vec![Expect::Version(ResourceKey::mesh(name), mesh_version)];
        for kind in [Kind::Secret, Kind::Dataplane] {
            let keys: Vec<ResourceKey> = self
                .store
                .list(kind, Some(name))?
                .into_iter()
                .map(|r| r.key)
                .collect();
            // Nothing may be added to the mesh meanwhile (by another replica): it would be left
            // without its mesh.
            expected.push(Expect::Members {
                kind,
                mesh: name.to_string(),
                names: keys.iter().map(|k| k.name.clone()).collect(),
            });
            owned.insert(kind, keys);
        }
        let ops = pipeline::mesh_delete_ops(name, &owned);
        let n = ops.len() - 1;
        self.store.write_checked(ops, &expected).await?;
        Ok(n)
    }

    /// Deletes a Secret its Mesh does not use.
    pub async fn delete_secret(&self, mesh: &str, name: &str) -> Result<(), DeleteError> {
        // Checked inside the store's write: the lock only serializes retries after a conflict.
        let mut relock = None;
        let mut attempt = 0;
        loop {
            match self.try_delete_secret(mesh, name).await {
                Err(DeleteError::Store(StoreError::Conflict { .. }))
                    if attempt < CONFLICT_RETRIES =>
                {
                    attempt += 1;
                    // What the delete read changed (a write raced it): counted as a write that
                    // runs again, as admissions are.
                    self.metrics.admission_retries.inc();
                    if relock.is_none() {
                        relock = Some(self.lock.lock().await);
                    }
                }
                r => return r,
            }
        }
    }

    async fn try_delete_secret(&self, mesh: &str, name: &str) -> Result<(), DeleteError> {
        let key = ResourceKey::new(Kind::Secret, mesh, name);
        // The Mesh may start using the Secret meanwhile (on another replica).
        let expected = vec![
            Expect::Version(key.clone(), self.store.version_of(&key)),
            Expect::Version(
                ResourceKey::mesh(mesh),
                self.store.version_of(&ResourceKey::mesh(mesh)),
            ),
        ];
        if self.store.get(&key)?.is_none() {
            return Err(DeleteError::SecretNotFound {
                mesh: mesh.to_string(),
                name: name.to_string(),
            });
        }
        if let Some(m) = self.store.get_mesh(mesh)? {
            let users = pipeline::secret_users(&m, name);
            if !users.is_empty() {
                return Err(DeleteError::SecretInUse {
                    mesh: mesh.to_string(),
                    name: name.to_string(),
                    users,
                });
            }
        }
        self.store
            .write_checked(vec![Op::Delete(key)], &expected)
            .await?;
        Ok(())
    }
}

/// The store as one admission sees it, noting the version of every resource read (absent ones
/// too), so that [`ReadSet::unchanged`] can tell whether the admission still holds. The version is
/// noted before the resource is read: a write in between shows as a change.
pub struct ReadSet<'a> {
    store: &'a Store,
    seen: std::sync::Mutex<Vec<(ResourceKey, Option<String>)>>,
}

impl<'a> ReadSet<'a> {
    pub fn new(store: &'a Store) -> Self {
        Self {
            store,
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn note(&self, key: ResourceKey) {
        let version = self.store.version_of(&key);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key, version));
    }

    /// What the store must still hold for the admission to stand: every version read.
    pub fn expected(&self) -> Vec<Expect> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(key, version)| Expect::Version(key.clone(), version.clone()))
            .collect()
    }

    /// Whether every resource read still has the version it had when read.
    pub fn unchanged(&self) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .all(|(key, version)| self.store.version_of(key) == *version)
    }
}

impl SecretLookup for ReadSet<'_> {
    fn secret_data(&self, mesh: &str, name: &str) -> Option<Vec<u8>> {
        self.note(ResourceKey::new(Kind::Secret, mesh, name));
        self.store.secret_data(mesh, name)
    }

    fn file_roots(&self) -> Option<std::sync::Arc<common::datasource::FileRoots>> {
        self.store.file_roots()
    }
}

impl Existing for ReadSet<'_> {
    fn mesh(&self, name: &str) -> Option<Mesh> {
        self.note(ResourceKey::mesh(name));
        self.store.get_mesh(name).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_set_notices_every_change_to_what_it_read() {
        let store = Store::temporary().unwrap();
        let mesh = |name: &str| {
            Resource::Mesh(Mesh {
                type_: "Mesh".into(),
                name: name.into(),
                labels: Default::default(),
                mtls: None,
            })
        };
        let secret = |data: &[u8]| Resource::Secret(common::model::Secret::new("m", "s", data));
        store
            .write(vec![Op::Put(mesh("m")), Op::Put(secret(b"one"))])
            .await
            .unwrap();

        // Nothing written since the reads: the admission holds.
        let view = ReadSet::new(&store);
        assert!(view.mesh("m").is_some());
        assert_eq!(view.secret_data("m", "s").as_deref(), Some(&b"one"[..]));
        assert!(view.secret_data("m", "absent").is_none());
        store.write(vec![Op::Put(mesh("other"))]).await.unwrap();
        assert!(view.unchanged(), "a write of something not read");

        // The Mesh a Secret's admission found is deleted meanwhile (the Secret would be orphaned).
        let view = ReadSet::new(&store);
        assert!(view.mesh("m").is_some());
        store
            .write(vec![Op::Delete(ResourceKey::mesh("m"))])
            .await
            .unwrap();
        assert!(!view.unchanged());
        store.write(vec![Op::Put(mesh("m"))]).await.unwrap();

        // A Secret read by a vault backend's check changes meanwhile.
        let view = ReadSet::new(&store);
        assert!(view.secret_data("m", "s").is_some());
        store.write(vec![Op::Put(secret(b"two"))]).await.unwrap();
        assert!(!view.unchanged());

        // Something found absent appears meanwhile (a builtin CA another request generated).
        let view = ReadSet::new(&store);
        assert!(view.secret_data("m", "new").is_none());
        store
            .write(vec![Op::Put(Resource::Secret(common::model::Secret::new(
                "m", "new", b"x",
            )))])
            .await
            .unwrap();
        assert!(!view.unchanged());

        // Written again with the same content: same version, the admission still holds.
        let view = ReadSet::new(&store);
        assert!(view.secret_data("m", "s").is_some());
        store.write(vec![Op::Put(secret(b"two"))]).await.unwrap();
        assert!(view.unchanged());
    }
}
