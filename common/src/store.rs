//! The resource store, used by global (the source of truth) and by zones (their copy of what
//! global sent). It has two backends behind one API: sled (embedded, the default, the only one of
//! zones) and PostgreSQL (global replicas sharing one database, `store_pg`). It owns durability and
//! atomicity: every write is a batch of puts and deletes applied in one transaction (sled's, or
//! PostgreSQL's) and flushed or committed before the call returns, so a refused or failed
//! write leaves nothing behind and an acknowledged one survives a crash. Each write bumps a store
//! revision published on a `watch` channel, which is how the sync server learns of changes without
//! polling. Each stored resource carries a content hash (its version on the sync stream), and an
//! in-memory index of those hashes per kind (`versions`) lets the sync server diff what a zone
//! holds against the store without decoding records. Side tables that are not resources (global's
//! zone records, a zone's sync bookkeeping) live in named record trees (`records`).
//!
//! Secret data is sealed at rest (`sealing`): the store seals a Secret's spec as it encodes the
//! record for sled or PostgreSQL and opens it as it decodes one, so everything above the store
//! (reads, the sync stream, admission, issuance) sees plain resources, and the content hash (the
//! per-resource version) is computed from the plain spec as before: the same on every replica
//! and across restarts, never dependent on a nonce. A store opened with a key checks every sealed
//! Secret against it and seals, in one batch and without touching hashes or revisions, what an
//! older version stored in plain text.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::watch;

use crate::datasource::SecretLookup;
use crate::model::{Dataplane, Kind, Mesh, Resource, Secret};
use crate::sealing::{SealError, SecretsKey};
pub use crate::store_records::Records;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: String, reason: String },
    /// The disk holding the store is full: nothing was written.
    #[error("the disk of the store at {path} is full: {reason}")]
    DiskFull { path: String, reason: String },
    /// The store's files fail their checks (checksums, truncation, undecodable records).
    #[error("the store at {path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
    /// The PostgreSQL store cannot be reached: nothing was written.
    #[error("the store (PostgreSQL) is unavailable: {source}")]
    Unavailable {
        #[source]
        source: Arc<tokio_postgres::Error>,
    },
    /// PostgreSQL refused a statement: nothing was written.
    #[error("the store (PostgreSQL) failed: {source}")]
    Postgres {
        #[source]
        source: Arc<tokio_postgres::Error>,
    },
    /// Something a checked write expected changed (another writer, possibly another replica,
    /// came first): nothing was written.
    #[error("conflicting write: {key} changed since it was read")]
    Conflict { key: String },
    /// The database was migrated by a newer binary.
    #[error(
        "the PostgreSQL schema is at version {found}, this binary knows versions up to {known}: run a newer global"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("invalid store URL: {reason}")]
    Url { reason: String },
    /// A sealed Secret does not open with the key given (another key, or altered): nothing of it
    /// is served.
    #[error("{what} cannot be unsealed with the Secrets key {origin}: {source}")]
    Unseal {
        what: String,
        origin: String,
        #[source]
        source: SealError,
    },
}

/// What a checked write expects of the store (see [`Store::write_checked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The resource has this version (`None`: it is absent).
    Version(ResourceKey, Option<String>),
    /// The resources of `kind` in `mesh` are exactly these names (a Mesh delete takes what it
    /// owns: nothing may have been added meanwhile).
    Members {
        kind: Kind,
        mesh: String,
        names: Vec<String>,
    },
}

/// Identity of a stored resource. A Mesh has `mesh == name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub mesh: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: Kind, mesh: &str, name: &str) -> Self {
        Self {
            kind,
            mesh: mesh.to_string(),
            name: name.to_string(),
        }
    }

    pub fn mesh(name: &str) -> Self {
        Self::new(Kind::Mesh, name, name)
    }

    pub fn of(r: &Resource) -> Self {
        Self::new(r.kind(), r.mesh(), r.name())
    }

    /// sled key: `<Kind>/<mesh>/<name>`. Names are DNS names, so they never contain `/`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        format!("{}/{}/{}", self.kind.as_str(), self.mesh, self.name).into_bytes()
    }

    pub(crate) fn prefix(kind: Kind, mesh: Option<&str>) -> Vec<u8> {
        match mesh {
            Some(m) => format!("{}/{}/", kind.as_str(), m).into_bytes(),
            None => format!("{}/", kind.as_str()).into_bytes(),
        }
    }
}

/// A resource as stored, with its metadata.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResource {
    pub key: ResourceKey,
    /// Hex SHA-256 of the canonical JSON of `spec`: changes exactly when the content changes.
    pub hash: String,
    /// Store revision of the write that last changed this resource.
    pub revision: u64,
    pub created_unix: u64,
    pub modified_unix: u64,
    /// The resource in its Universal form.
    pub spec: serde_json::Value,
}

impl std::fmt::Debug for StoredResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // spec may hold Secret data: never print it.
        f.debug_struct("StoredResource")
            .field("key", &self.key)
            .field("hash", &self.hash)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl StoredResource {
    /// Decodes the stored spec back into a resource.
    pub fn resource(&self) -> Result<Resource, StoreError> {
        let corrupt = |e: serde_json::Error| StoreError::Corrupt {
            key: format!("{:?}", self.key),
            reason: e.to_string(),
        };
        Ok(match self.key.kind {
            Kind::Mesh => {
                Resource::Mesh(serde_json::from_value(self.spec.clone()).map_err(corrupt)?)
            }
            Kind::Secret => {
                Resource::Secret(serde_json::from_value(self.spec.clone()).map_err(corrupt)?)
            }
            Kind::Dataplane => {
                Resource::Dataplane(serde_json::from_value(self.spec.clone()).map_err(corrupt)?)
            }
        })
    }
}

/// The Universal JSON form of a resource.
pub fn resource_json(r: &Resource) -> serde_json::Value {
    let v = match r {
        Resource::Mesh(m) => serde_json::to_value(m),
        Resource::Secret(s) => serde_json::to_value(s),
        Resource::Dataplane(d) => serde_json::to_value(d),
    };
    v.expect("model types always serialize to JSON")
}

/// What a put needs of the record it replaces: its content hash and creation time.
pub(crate) struct Existing<'a> {
    pub hash: &'a str,
    pub created_unix: u64,
}

impl<'a> Existing<'a> {
    pub(crate) fn of(r: &'a StoredResource) -> Self {
        Self {
            hash: &r.hash,
            created_unix: r.created_unix,
        }
    }
}

/// The record a put of `spec` (content hash `hash`) leaves in place of `existing` at `revision`,
/// and the outcome: `None` when the content is unchanged (nothing is written). Both backends write
/// exactly this.
pub(crate) fn replacement(
    existing: Option<Existing<'_>>,
    key: &ResourceKey,
    spec: &serde_json::Value,
    hash: &str,
    revision: u64,
    now: u64,
) -> Option<(StoredResource, Outcome)> {
    if existing.as_ref().is_some_and(|e| e.hash == hash) {
        return None;
    }
    let record = StoredResource {
        key: key.clone(),
        hash: hash.to_string(),
        revision,
        created_unix: existing.as_ref().map_or(now, |e| e.created_unix),
        modified_unix: now,
        spec: spec.clone(),
    };
    let outcome = if existing.is_some() {
        Outcome::Updated
    } else {
        Outcome::Created
    };
    Some((record, outcome))
}

/// Content hash of a resource's JSON form (serde_json maps are sorted, so this is canonical).
pub fn content_hash(spec: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec(spec).expect("JSON values always serialize");
    hex::encode(Sha256::digest(&bytes))
}

/// An op ready for the transaction: the encoded key and, for a put, the JSON and its hash.
pub(crate) type PreparedOp = (Vec<u8>, Option<(serde_json::Value, String)>);

/// One change in a write batch.
#[derive(Debug, Clone)]
pub enum Op {
    Put(Resource),
    Delete(ResourceKey),
}

/// What a write did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    Deleted,
    NotFound,
}

const REVISION_KEY: &[u8] = b"revision";
const STORE_ID_KEY: &[u8] = b"store-id";
const EPOCH_KEY: &[u8] = b"epoch";
/// The same on PostgreSQL, as shared values.
const STORE_ID_SHARED: &str = "store-id";
const EPOCH_SHARED: &str = "store-epoch";
const RECORDS_PREFIX: &str = "records/";

/// The versions of every resource of one kind: `(mesh, name)` -> content hash, sorted.
pub type VersionMap = BTreeMap<(String, String), String>;

/// The version index: per kind, a copy-on-write map, with the revision it reflects.
#[derive(Default)]
pub(crate) struct VersionIndex {
    revision: u64,
    kinds: HashMap<Kind, Arc<VersionMap>>,
    /// Per kind, the revision of the last write that changed it.
    changed_at: HashMap<Kind, u64>,
    /// What the index holds, as a set digest kept up to date by every change.
    digest: crate::integrity::SetDigest,
}

impl VersionIndex {
    /// The index of `entries` (key, version) at `revision`.
    fn of(revision: u64, entries: impl IntoIterator<Item = (ResourceKey, String)>) -> Self {
        let mut index = VersionIndex {
            revision,
            ..Default::default()
        };
        let mut maps: HashMap<Kind, VersionMap> = HashMap::new();
        for (key, hash) in entries {
            index.digest.toggle(&key, &hash);
            maps.entry(key.kind)
                .or_default()
                .insert((key.mesh, key.name), hash);
        }
        for (kind, map) in maps {
            index.kinds.insert(kind, Arc::new(map));
            index.changed_at.insert(kind, revision);
        }
        index
    }
}

/// A consistent view of one kind's versions.
#[derive(Debug, Clone)]
pub struct VersionSnapshot {
    /// The store revision the map reflects.
    pub revision: u64,
    /// The revision of the last write that changed this kind (at most `revision`).
    pub changed_at: u64,
    pub map: Arc<VersionMap>,
}

/// The store. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// How Secrets are sealed on disk (`store_sealing`).
    pub(crate) sealing: crate::store_sealing::Sealing,
    /// Where `file:` data sources may be read (see [`Store::confine_files`]); None: anywhere.
    file_roots: Arc<RwLock<Option<Arc<crate::datasource::FileRoots>>>>,
    pub(crate) revision_tx: std::sync::Arc<watch::Sender<u64>>,
    pub(crate) write_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    pub(crate) index: Arc<RwLock<VersionIndex>>,
}

#[derive(Clone)]
enum Backend {
    Sled(Arc<crate::store_sled::Sled>),
    Pg(Arc<crate::store_pg::Pg>),
}

/// A store that does not keep its database alive (the PostgreSQL listener holds one).
pub(crate) struct WeakStore {
    pg: std::sync::Weak<crate::store_pg::Pg>,
    revision_tx: std::sync::Weak<watch::Sender<u64>>,
    write_lock: std::sync::Weak<tokio::sync::Mutex<()>>,
    index: std::sync::Weak<RwLock<VersionIndex>>,
    file_roots: std::sync::Weak<RwLock<Option<Arc<crate::datasource::FileRoots>>>>,
    sealing: crate::store_sealing::Sealing,
}

impl WeakStore {
    pub(crate) fn upgrade(&self) -> Option<Store> {
        Some(Store {
            backend: Backend::Pg(self.pg.upgrade()?),
            revision_tx: self.revision_tx.upgrade()?,
            write_lock: self.write_lock.upgrade()?,
            index: self.index.upgrade()?,
            file_roots: self.file_roots.upgrade()?,
            sealing: self.sealing.clone(),
        })
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, sealing Secrets with `key`. Every record is read
    /// once, which checks sled's checksums of all of them: a store that fails is
    /// `StoreError::Damaged`. Every sealed Secret is opened once with `key` (another key is
    /// `StoreError::Unseal`), and Secrets an older version stored in plain text are sealed.
    pub fn open(dir: &Path, key: impl Into<Arc<SecretsKey>>) -> Result<Self, StoreError> {
        Self::open_with(dir, crate::store_sealing::Sealing::Key(key.into()))
    }

    /// A sled store that seals nothing: the baseline of `scenarios bench secrets`, which measures
    /// what sealing costs a Secret write. No control plane opens a store this way.
    #[doc(hidden)]
    pub fn open_unsealed_bench_baseline(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, crate::store_sealing::Sealing::Off)
    }

    fn open_with(dir: &Path, sealing: crate::store_sealing::Sealing) -> Result<Self, StoreError> {
        let damaged = |reason: String| StoreError::Damaged {
            path: dir.join("store").display().to_string(),
            reason,
        };
        let (sled, handles) = crate::store_sled::Sled::open(dir)?;
        let index =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::load_index(&handles)));
        match index {
            Ok(Err(StoreError::Sled(e))) if crate::store_sled::is_damage(&e) => {
                Err(damaged(e.to_string()))
            }
            Ok(Err(StoreError::Corrupt { key, reason })) => {
                Err(damaged(format!("record {key:?}: {reason}")))
            }
            Ok(r) => {
                let index = r?;
                let (plain, rotated) =
                    match crate::store_sealing::seal_plain_sled(&sealing, &handles) {
                        Err(StoreError::Corrupt { key, reason }) => {
                            return Err(damaged(format!("record {key:?}: {reason}")));
                        }
                        r => r?,
                    };
                if plain > 0 {
                    tracing::info!(
                        store = %dir.join("store").display(), resources = plain,
                        "sealed the Secrets and Meshes an older version stored in plain text"
                    );
                }
                if rotated > 0 {
                    tracing::info!(
                        store = %dir.join("store").display(), resources = rotated,
                        "sealed again with the key the Secrets and Meshes an extra key sealed"
                    );
                }
                if plain + rotated > 0 {
                    // sled's log still holds the plain values (or those the extra key sealed):
                    // the database is rewritten into fresh files, opened in its place.
                    match crate::store_sled::rewrite_copy(dir, &handles) {
                        Ok(()) => {
                            drop((sled, handles));
                            return Self::open_with(dir, sealing);
                        }
                        Err(e) => tracing::warn!(
                            store = %dir.join("store").display(), error = %e,
                            "the store's files could not be rewritten: the plain values stay in them until sled reclaims their space"
                        ),
                    }
                }
                Ok(Self::with_backend(Backend::Sled(sled), index, sealing))
            }
            Err(p) => Err(damaged(crate::store_sled::panic_text(p))),
        }
    }

    /// A store that lives in memory only (unit tests), sealing with a key of its own.
    pub fn temporary() -> Result<Self, StoreError> {
        let (sled, handles) = crate::store_sled::Sled::temporary()?;
        let index = Self::load_index(&handles)?;
        let key = SecretsKey::generate().map_err(|e| StoreError::Open {
            path: "(in memory)".into(),
            reason: e.to_string(),
        })?;
        let sealing = crate::store_sealing::Sealing::Key(Arc::new(key));
        Ok(Self::with_backend(Backend::Sled(sled), index, sealing))
    }

    /// The version index of what the database holds.
    fn load_index(h: &crate::store_sled::Handles) -> Result<VersionIndex, StoreError> {
        let revision = match h.meta.get(REVISION_KEY)? {
            Some(v) => decode_u64(&v),
            None => 0,
        };
        // Only the key and hash of each record are decoded.
        #[derive(Deserialize)]
        struct KeyAndHash {
            key: ResourceKey,
            hash: String,
        }
        let mut entries = Vec::new();
        for item in h.resources.iter() {
            let (k, v) = item?;
            let (json, _) = crate::store_sealing::split_sled(&k, &v)?;
            let r: KeyAndHash = serde_json::from_slice(json).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: e.to_string(),
            })?;
            entries.push((r.key, r.hash));
        }
        Ok(VersionIndex::of(revision, entries))
    }

    fn with_backend(
        backend: Backend,
        index: VersionIndex,
        sealing: crate::store_sealing::Sealing,
    ) -> Self {
        let (revision_tx, _) = watch::channel(index.revision);
        let store = Self {
            backend,
            sealing,
            revision_tx: std::sync::Arc::new(revision_tx),
            write_lock: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            index: Arc::new(RwLock::new(index)),
            file_roots: Arc::new(RwLock::new(None)),
        };
        if let Backend::Sled(sled) = &store.backend {
            // Opened again after a failed write: the index follows what is on disk (a write that
            // failed may still have reached it), and readers are told when the revision moved.
            let (index, revision_tx) = (store.index.clone(), store.revision_tx.clone());
            sled.on_reopen(Box::new(move |h| {
                let Ok(fresh) = Self::load_index(h) else {
                    return;
                };
                let revision = fresh.revision;
                {
                    let mut current = index.write().unwrap_or_else(|e| e.into_inner());
                    if current.revision == revision && current.digest == fresh.digest {
                        return;
                    }
                    *current = fresh;
                }
                revision_tx.send_replace(revision);
            }));
        }
        store
    }

    /// Connects to the PostgreSQL store at `url` (`postgres://USER[:PASS]@HOST[:PORT]/DB`),
    /// applies the migrations this binary knows, loads every resource and record into memory and
    /// follows the other replicas' writes (LISTEN/NOTIFY, and a poll as a safety net). One
    /// attempt: a database that cannot be reached is `StoreError::Unavailable`. Secrets are
    /// sealed with `key` (the same on every replica); every sealed row is opened once with it
    /// (another key is `StoreError::Unseal`) and rows an older version wrote in plain text are
    /// sealed, in one transaction.
    pub async fn connect(url: &str, key: impl Into<Arc<SecretsKey>>) -> Result<Self, StoreError> {
        Self::connect_with(url, crate::store_sealing::Sealing::Key(key.into())).await
    }

    /// A PostgreSQL store that seals nothing: the baseline of `scenarios bench secrets` only.
    #[doc(hidden)]
    pub async fn connect_unsealed_bench_baseline(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, crate::store_sealing::Sealing::Off).await
    }

    async fn connect_with(
        url: &str,
        sealing: crate::store_sealing::Sealing,
    ) -> Result<Self, StoreError> {
        let (pg, resources, revision) = crate::store_pg::Pg::connect(url, sealing.clone()).await?;
        let index = VersionIndex::of(revision, resources.into_iter().map(|r| (r.key, r.hash)));
        let store = Self::with_backend(Backend::Pg(pg.clone()), index, sealing);
        crate::store_pg::spawn_listener(&store, pg);
        Ok(store)
    }

    /// Applies the PostgreSQL migrations this binary knows and nothing else; returns the schema
    /// version.
    pub async fn migrate(url: &str) -> Result<i64, StoreError> {
        crate::store_pg::migrate_only(url).await
    }

    /// Whether the store is shared by several processes (PostgreSQL): then what every replica
    /// must agree on lives in it ([`Store::share`]).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    /// The shared value `name`, if some replica stored one (always `None` on sled).
    pub async fn shared_value(&self, name: &str) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Sled(_) => Ok(None),
            Backend::Pg(pg) => pg.shared_value(name).await,
        }
    }

    /// Stores `proposed` as the shared value `name` unless one is there already, and returns the
    /// value stored: replicas starting at once agree on the first one. On sled, `proposed`.
    pub async fn share(&self, name: &str, proposed: &str) -> Result<String, StoreError> {
        match &self.backend {
            Backend::Sled(_) => Ok(proposed.to_string()),
            Backend::Pg(pg) => pg.share(name, proposed).await,
        }
    }

    /// Replaces the shared value `name` (a no-op on sled): only for a value whose meaning does
    /// not change, such as the same files sealed where an earlier build stored them in clear.
    pub async fn replace_shared(&self, name: &str, value: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(_) => Ok(()),
            Backend::Pg(pg) => pg.set_shared(name, value).await,
        }
    }

    /// Catches up with what other replicas committed (PostgreSQL; a no-op on sled), so that a
    /// read after it sees every write acknowledged anywhere before it. Gives up quietly after
    /// `limit` or when PostgreSQL is unreachable: reads then answer from what the replica holds.
    pub async fn refresh(&self, limit: std::time::Duration) {
        if let Backend::Pg(pg) = &self.backend
            && let Ok(Err(e)) =
                tokio::time::timeout(limit, crate::store_pg::refresh(self, pg)).await
        {
            tracing::debug!(error = %e, "reading from what this replica holds");
        }
    }

    /// Whether the store can take writes now: on sled, unless a write failed (a full disk) and
    /// no probe succeeded since; on PostgreSQL, whether the last contact with the database worked
    /// (what `/readyz` reports).
    pub fn reachable(&self) -> bool {
        match &self.backend {
            Backend::Sled(sled) => sled.failing().borrow().is_none(),
            Backend::Pg(pg) => pg.reachable(),
        }
    }

    /// Why writes fail now, on sled (a full disk), with every change of it; always `None` on
    /// PostgreSQL (see [`Store::reachable`]).
    pub fn write_failure(&self) -> watch::Receiver<Option<String>> {
        match &self.backend {
            Backend::Sled(sled) => sled.failing(),
            Backend::Pg(_) => watch::channel(None).1,
        }
    }

    pub(crate) fn pg(&self) -> Option<Arc<crate::store_pg::Pg>> {
        match &self.backend {
            Backend::Pg(pg) => Some(pg.clone()),
            Backend::Sled(_) => None,
        }
    }

    pub(crate) fn downgrade(&self, pg: &Arc<crate::store_pg::Pg>) -> WeakStore {
        WeakStore {
            pg: Arc::downgrade(pg),
            revision_tx: Arc::downgrade(&self.revision_tx),
            write_lock: Arc::downgrade(&self.write_lock),
            index: Arc::downgrade(&self.index),
            file_roots: Arc::downgrade(&self.file_roots),
            sealing: self.sealing.clone(),
        }
    }

    /// Records changes (key, new version or `None` when deleted) in the version index at
    /// `revision`, and publishes the revision when it moved.
    pub(crate) fn apply_index(&self, changes: &[(ResourceKey, Option<String>)], revision: u64) {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let idx = &mut *index;
        for (key, version) in changes {
            let map = Arc::make_mut(idx.kinds.entry(key.kind).or_default());
            let id = (key.mesh.clone(), key.name.clone());
            let old = match version {
                Some(hash) => map.insert(id, hash.clone()),
                None => map.remove(&id),
            };
            if let Some(old) = old {
                idx.digest.toggle(key, &old);
            }
            if let Some(hash) = version {
                idx.digest.toggle(key, hash);
            }
            idx.changed_at.insert(key.kind, revision);
        }
        if revision > index.revision {
            index.revision = revision;
            drop(index);
            self.revision_tx.send_replace(revision);
        }
    }

    /// Whether what a checked write expects still holds (called under the write lock, after the
    /// PostgreSQL backend caught up with the database).
    pub(crate) fn check_expected(&self, expected: &[Expect]) -> Result<(), StoreError> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        for e in expected {
            match e {
                Expect::Version(key, version) => {
                    let now = index
                        .kinds
                        .get(&key.kind)
                        .and_then(|m| m.get(&(key.mesh.clone(), key.name.clone())));
                    if now != version.as_ref() {
                        return Err(StoreError::Conflict {
                            key: format!("{} {}/{}", key.kind.as_str(), key.mesh, key.name),
                        });
                    }
                }
                Expect::Members { kind, mesh, names } => {
                    let now: Vec<&String> = index
                        .kinds
                        .get(kind)
                        .map(|m| {
                            m.keys()
                                .filter(|(m, _)| m == mesh)
                                .map(|(_, n)| n)
                                .collect()
                        })
                        .unwrap_or_default();
                    let mut want: Vec<&String> = names.iter().collect();
                    want.sort();
                    if now != want {
                        return Err(StoreError::Conflict {
                            key: format!("the {}s of mesh {mesh}", kind.as_str()),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The versions of every resource of a kind and the revision they reflect, as one consistent
    /// snapshot (cheap: the map is shared until the next write changes that kind).
    pub fn versions(&self, kind: Kind) -> (u64, Arc<VersionMap>) {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let map = index.kinds.get(&kind).cloned().unwrap_or_default();
        (index.revision, map)
    }

    /// The version (content hash) of one resource as stored now; `None` when absent.
    pub fn version_of(&self, key: &ResourceKey) -> Option<String> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .kinds
            .get(&key.kind)
            .and_then(|m| m.get(&(key.mesh.clone(), key.name.clone())))
            .cloned()
    }

    /// How many resources of a kind are stored (from the version index: no record is read).
    pub fn count(&self, kind: Kind) -> usize {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.kinds.get(&kind).map_or(0, |m| m.len())
    }

    /// The revision, resource count and set digest of everything held, read together: what a
    /// manifest records and what a later start compares with it.
    pub fn fingerprint(&self) -> crate::integrity::Fingerprint {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        crate::integrity::Fingerprint {
            revision: index.revision,
            resources: index.kinds.values().map(|m| m.len() as u64).sum(),
            digest: index.digest.hex(),
        }
    }

    /// The store's identity: an id made once, when the store is created, and the epoch (0 until
    /// an operator accepts a rollback, then one more at each acceptance).
    pub async fn identity(&self) -> Result<crate::integrity::StoreIdentity, StoreError> {
        let fresh = crate::integrity::StoreIdentity::new_id();
        let (id, epoch) = match &self.backend {
            Backend::Sled(sled) => {
                let h = sled.handles()?;
                let id = match h.meta.get(STORE_ID_KEY)? {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None => {
                        h.meta.insert(STORE_ID_KEY, fresh.as_bytes())?;
                        sled.flush(&h).await?;
                        fresh
                    }
                };
                (id, h.meta.get(EPOCH_KEY)?.map_or(0, |v| decode_u64(&v)))
            }
            Backend::Pg(pg) => {
                let id = pg.share(STORE_ID_SHARED, &fresh).await?;
                let epoch = pg
                    .shared_value(EPOCH_SHARED)
                    .await?
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                (id, epoch)
            }
        };
        Ok(crate::integrity::StoreIdentity { id, epoch })
    }

    /// Starts epoch `epoch` of this store (an operator accepted what it holds).
    pub async fn set_epoch(&self, epoch: u64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(sled) => {
                let h = sled.handles()?;
                h.meta.insert(EPOCH_KEY, &epoch.to_be_bytes())?;
                sled.flush(&h).await?;
            }
            Backend::Pg(pg) => pg.set_shared(EPOCH_SHARED, &epoch.to_string()).await?,
        }
        Ok(())
    }

    /// Like `versions`, with the revision at which the kind last changed, so that a reader can
    /// skip kinds that did not change since it last looked.
    pub fn snapshot(&self, kind: Kind) -> VersionSnapshot {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        VersionSnapshot {
            revision: index.revision,
            changed_at: index.changed_at.get(&kind).copied().unwrap_or(0),
            map: index.kinds.get(&kind).cloned().unwrap_or_default(),
        }
    }

    /// Seals `plaintext` with the store's Secrets key, bound to `identity` (it opens only under
    /// that identity): for the records that hold keys (global's token signing keys), which are
    /// no resources and so not sealed by the store itself. Without a key (the bench baseline
    /// alone) the bytes are kept as they are.
    pub fn seal_bytes(&self, identity: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        match &self.sealing {
            crate::store_sealing::Sealing::Key(k) => k
                .seal(identity.as_bytes(), plaintext)
                .map_err(|e| self.sealing.refusal(identity.to_string(), e)),
            crate::store_sealing::Sealing::Off => Ok(plaintext.to_vec()),
        }
    }

    /// Whether `sealed` (from [`Store::seal_bytes`]) is sealed with the key that seals now: what
    /// an extra key sealed (a rotation) is to be sealed again, so the extra key can go.
    pub fn sealed_with_current_key(&self, sealed: &[u8]) -> bool {
        self.sealing.is_current(sealed)
    }

    /// What [`Store::seal_bytes`] sealed under `identity`.
    pub fn open_bytes(&self, identity: &str, envelope: &[u8]) -> Result<Vec<u8>, StoreError> {
        match &self.sealing {
            crate::store_sealing::Sealing::Key(k) => k
                .open(identity.as_bytes(), envelope)
                .map_err(|e| self.sealing.refusal(identity.to_string(), e)),
            crate::store_sealing::Sealing::Off => Ok(envelope.to_vec()),
        }
    }

    /// A named tree of records that are not resources (no revision, not synced, not in `list`).
    pub fn records(&self, name: &str) -> Result<Records, StoreError> {
        Ok(match &self.backend {
            Backend::Sled(sled) => Records::sled(sled.clone(), format!("{RECORDS_PREFIX}{name}")),
            Backend::Pg(pg) => Records::pg(pg.clone(), name.to_string()),
        })
    }

    /// The current revision; bumped by every write that changed something.
    pub fn revision(&self) -> u64 {
        *self.revision_tx.borrow()
    }

    /// A receiver that wakes on every revision change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }

    pub fn get(&self, key: &ResourceKey) -> Result<Option<StoredResource>, StoreError> {
        let resources = match &self.backend {
            Backend::Sled(sled) => {
                if let Some(before) = sled.hidden().get(&key.encode()) {
                    return before
                        .as_ref()
                        .map(|b| self.sealing.decode_sled(&key.encode(), b))
                        .transpose();
                }
                sled.handles()?.resources
            }
            Backend::Pg(pg) => return Ok(pg.get(key)),
        };
        match resources.get(key.encode())? {
            Some(bytes) => Ok(Some(self.sealing.decode_sled(&key.encode(), &bytes)?)),
            None => Ok(None),
        }
    }

    pub fn get_mesh(&self, name: &str) -> Result<Option<Mesh>, StoreError> {
        match self.get(&ResourceKey::mesh(name))? {
            Some(r) => match r.resource()? {
                Resource::Mesh(m) => Ok(Some(m)),
                _ => Ok(None),
            },
            None => Ok(None),
        }
    }

    pub fn get_secret(&self, mesh: &str, name: &str) -> Result<Option<Secret>, StoreError> {
        match self.get(&ResourceKey::new(Kind::Secret, mesh, name))? {
            Some(r) => match r.resource()? {
                Resource::Secret(s) => Ok(Some(s)),
                _ => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// Every stored resource of a kind, optionally within one mesh, sorted by key.
    pub fn list(&self, kind: Kind, mesh: Option<&str>) -> Result<Vec<StoredResource>, StoreError> {
        let sled = match &self.backend {
            Backend::Sled(sled) => sled,
            Backend::Pg(pg) => return Ok(pg.list(kind, mesh)),
        };
        let prefix = ResourceKey::prefix(kind, mesh);
        let hidden = sled.hidden();
        let mut found: BTreeMap<Vec<u8>, sled::IVec> = BTreeMap::new();
        for item in sled.handles()?.resources.scan_prefix(&prefix) {
            let (k, v) = item?;
            found.insert(k.to_vec(), v);
        }
        // What failed writes changed is served as it was before them.
        for (k, before) in hidden.range(prefix.clone()..) {
            if !k.starts_with(&prefix) {
                break;
            }
            match before {
                Some(v) => found.insert(k.clone(), v.clone()),
                None => found.remove(k),
            };
        }
        found
            .iter()
            .map(|(k, v)| self.sealing.decode_sled(k, v))
            .collect()
    }

    pub fn list_meshes(&self) -> Result<Vec<Mesh>, StoreError> {
        let mut out = Vec::new();
        for r in self.list(Kind::Mesh, None)? {
            if let Resource::Mesh(m) = r.resource()? {
                out.push(m);
            }
        }
        Ok(out)
    }

    pub fn list_dataplanes(&self, mesh: Option<&str>) -> Result<Vec<Dataplane>, StoreError> {
        let mut out = Vec::new();
        for r in self.list(Kind::Dataplane, mesh)? {
            if let Resource::Dataplane(d) = r.resource()? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Applies a batch atomically and durably: all of it or none of it. Returns one outcome per op.
    pub async fn write(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, StoreError> {
        self.write_checked(ops, &[]).await
    }

    /// Like [`Store::write`], but only if everything in `expected` still holds when the batch is
    /// applied, checked under the write lock (sled) or inside the PostgreSQL transaction, after
    /// catching up with every other replica's writes; else `StoreError::Conflict` and nothing is
    /// written. This is what makes optimistic admission hold across replicas.
    pub async fn write_checked(
        &self,
        ops: Vec<Op>,
        expected: &[Expect],
    ) -> Result<Vec<Outcome>, StoreError> {
        let sled = match &self.backend {
            Backend::Sled(sled) => sled,
            // Writers of a replica commit in groups (see `store_pg::write`).
            Backend::Pg(pg) => return crate::store_pg::write(self, pg, ops, expected).await,
        };
        // Writers are serialized so that revisions are assigned in commit order.
        let _guard = self.write_lock.lock().await;
        sled.writable()?;
        let h = sled.handles()?;
        self.check_expected(expected)?;
        let current = self.revision();
        let next = current + 1;
        let now = u64::try_from(crate::clock::now_unix()).unwrap_or(0);
        let (prepared, keys) = prepare(&ops);
        // What the batch may change, as it is now: what reads see if the write fails.
        let mut before = Vec::with_capacity(prepared.len());
        for (k, _) in &prepared {
            before.push((k.clone(), h.resources.get(k)?));
        }

        let result: Result<Vec<Outcome>, TransactionError<StoreError>> = (&h.resources, &h.meta)
            .transaction(|(res, meta)| {
                let mut outcomes = Vec::with_capacity(prepared.len());
                let mut changed = false;
                for ((key_bytes, put), key) in prepared.iter().zip(&keys) {
                    // Hash and creation time only: the spec is not unsealed.
                    let existing = match res.get(key_bytes)? {
                        Some(bytes) => Some(
                            crate::store_sealing::DiskMeta::decode(key_bytes, &bytes)
                                .map_err(ConflictableTransactionError::Abort)?,
                        ),
                        None => None,
                    };
                    match put {
                        Some((spec, hash)) => {
                            let old = existing.as_ref().map(|e| Existing {
                                hash: &e.hash,
                                created_unix: e.created_unix,
                            });
                            let Some((record, outcome)) =
                                replacement(old, key, spec, hash, next, now)
                            else {
                                outcomes.push(Outcome::Unchanged);
                                continue;
                            };
                            let bytes = self
                                .sealing
                                .encode_sled(&record)
                                .map_err(ConflictableTransactionError::Abort)?;
                            res.insert(key_bytes.as_slice(), bytes)?;
                            changed = true;
                            outcomes.push(outcome);
                        }
                        None => {
                            if existing.is_some() {
                                res.remove(key_bytes.as_slice())?;
                                changed = true;
                                outcomes.push(Outcome::Deleted);
                            } else {
                                outcomes.push(Outcome::NotFound);
                            }
                        }
                    }
                }
                if changed {
                    meta.insert(REVISION_KEY, &next.to_be_bytes())?;
                }
                Ok(outcomes)
            });
        let outcomes = match result {
            Ok(o) => o,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(sled.write_failed(e, before)),
        };
        if let Err(e) = h.db.flush_async().await {
            // Applied in memory but not on disk: never to be seen.
            return Err(sled.write_failed(e, before));
        }
        let changes = index_changes(&keys, &prepared, &outcomes);
        if !changes.is_empty() {
            self.apply_index(&changes, next);
        }
        Ok(outcomes)
    }
}

/// The version index changes of a write: (key, new version, `None` when deleted).
pub(crate) fn index_changes(
    keys: &[ResourceKey],
    prepared: &[PreparedOp],
    outcomes: &[Outcome],
) -> Vec<(ResourceKey, Option<String>)> {
    keys.iter()
        .zip(prepared)
        .zip(outcomes)
        .filter_map(|((key, put), outcome)| match (outcome, put) {
            (Outcome::Created | Outcome::Updated, (_, Some((_, hash)))) => {
                Some((key.clone(), Some(hash.clone())))
            }
            (Outcome::Deleted, _) => Some((key.clone(), None)),
            _ => None,
        })
        .collect()
}

/// Prepares a batch: per op the encoded key and, for a put, the JSON and its hash; and the keys.
pub(crate) fn prepare(ops: &[Op]) -> (Vec<PreparedOp>, Vec<ResourceKey>) {
    let prepared = ops
        .iter()
        .map(|op| match op {
            Op::Put(r) => {
                let spec = resource_json(r);
                let hash = content_hash(&spec);
                (ResourceKey::of(r).encode(), Some((spec, hash)))
            }
            Op::Delete(k) => (k.encode(), None),
        })
        .collect();
    let keys = ops
        .iter()
        .map(|op| match op {
            Op::Put(r) => ResourceKey::of(r),
            Op::Delete(k) => k.clone(),
        })
        .collect();
    (prepared, keys)
}

impl SecretLookup for Store {
    fn secret_data(&self, mesh: &str, name: &str) -> Option<Vec<u8>> {
        self.get_secret(mesh, name)
            .ok()
            .flatten()
            .and_then(|s| s.decode().ok())
    }

    fn file_roots(&self) -> Option<Arc<crate::datasource::FileRoots>> {
        self.file_roots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Store {
    /// From now on, `file:` data sources resolved through this store are read only under
    /// `roots` (a running control plane's `--data-source-dir`s).
    pub fn confine_files(&self, roots: crate::datasource::FileRoots) {
        *self.file_roots.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(roots));
    }
}

fn decode_u64(v: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = v.len().min(8);
    buf[8 - n..].copy_from_slice(&v[v.len() - n..]);
    u64::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(name: &str) -> Resource {
        Resource::Mesh(Mesh {
            type_: "Mesh".into(),
            name: name.into(),
            labels: Default::default(),
            mtls: None,
        })
    }

    /// The Secrets key of every test store (a reopen must use the same).
    static KEY: std::sync::LazyLock<Arc<SecretsKey>> =
        std::sync::LazyLock::new(|| Arc::new(SecretsKey::generate().unwrap()));

    fn key() -> Arc<SecretsKey> {
        KEY.clone()
    }

    /// Where a test store lives: a sled directory, or a private PostgreSQL server.
    enum TestDb {
        Sled(tempfile::TempDir),
        Pg(testkit::postgres::PgServer),
    }

    impl TestDb {
        fn sled() -> Self {
            TestDb::Sled(tempfile::tempdir().unwrap())
        }

        fn pg() -> Self {
            TestDb::Pg(testkit::postgres::PgServer::start().unwrap())
        }

        /// Opens the store (again: a reopen after the previous one was dropped).
        async fn open(&self) -> Store {
            match self {
                TestDb::Sled(dir) => Store::open(dir.path(), key()).unwrap(),
                TestDb::Pg(pg) => Store::connect(&pg.url(), key()).await.unwrap(),
            }
        }
    }

    async fn writes_are_atomic_and_versioned(db: TestDb) {
        let store = db.open().await;
        let mut rx = store.subscribe();
        let out = store
            .write(vec![
                Op::Put(mesh("a")),
                Op::Put(Resource::Secret(Secret::new("a", "s", b"x"))),
            ])
            .await
            .unwrap();
        assert_eq!(out, vec![Outcome::Created, Outcome::Created]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        // Same content again: unchanged, no new revision.
        let out = store.write(vec![Op::Put(mesh("a"))]).await.unwrap();
        assert_eq!(out, vec![Outcome::Unchanged]);
        assert_eq!(store.revision(), 1);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(store.list(Kind::Secret, Some("a")).unwrap().len(), 1);
        assert_eq!(store.list(Kind::Secret, Some("b")).unwrap().len(), 0);
        assert_eq!(store.secret_data("a", "s").unwrap(), b"x");
        let out = store
            .write(vec![
                Op::Delete(ResourceKey::new(Kind::Secret, "a", "s")),
                Op::Delete(ResourceKey::new(Kind::Secret, "a", "nope")),
            ])
            .await
            .unwrap();
        assert_eq!(out, vec![Outcome::Deleted, Outcome::NotFound]);
        assert_eq!(store.revision(), 2);
    }

    async fn version_index_follows_writes_and_reopen(db: TestDb) {
        let secret = Resource::Secret(Secret::new("a", "s", b"x"));
        {
            let store = db.open().await;
            assert!(store.versions(Kind::Mesh).1.is_empty());
            store
                .write(vec![
                    Op::Put(mesh("a")),
                    Op::Put(mesh("b")),
                    Op::Put(secret.clone()),
                ])
                .await
                .unwrap();
            let (rev, meshes) = store.versions(Kind::Mesh);
            assert_eq!(rev, 1);
            assert_eq!(meshes.len(), 2);
            let stored = store.get(&ResourceKey::mesh("a")).unwrap().unwrap();
            assert_eq!(meshes[&("a".to_string(), "a".to_string())], stored.hash);
            // A snapshot taken before a write is not changed by it.
            store
                .write(vec![Op::Delete(ResourceKey::mesh("b"))])
                .await
                .unwrap();
            assert_eq!(meshes.len(), 2);
            assert_eq!(store.versions(Kind::Mesh).1.len(), 1);
            assert_eq!(store.versions(Kind::Mesh).0, 2);
            let snap = store.snapshot(Kind::Secret);
            assert_eq!((snap.revision, snap.changed_at, snap.map.len()), (2, 1, 1));
            assert_eq!(store.snapshot(Kind::Mesh).changed_at, 2);
            assert_eq!(store.snapshot(Kind::Dataplane).changed_at, 0);
            let records = store.records("zones").unwrap();
            records
                .put("z1", &serde_json::json!({"online": false}))
                .await
                .unwrap();
        }
        let store = db.open().await;
        let (rev, meshes) = store.versions(Kind::Mesh);
        assert_eq!((rev, meshes.len()), (2, 1));
        let secrets = store.versions(Kind::Secret).1;
        assert!(secrets.contains_key(&("a".to_string(), "s".to_string())));
        let records = store.records("zones").unwrap();
        let all: Vec<(String, serde_json::Value)> = records.list().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1["online"], false);
        // Records are neither resources nor revisions.
        assert_eq!(store.revision(), 2);
        assert!(records.remove("z1").await.unwrap());
        assert!(records.get::<serde_json::Value>("z1").unwrap().is_none());
    }

    async fn survives_reopen(db: TestDb) {
        {
            let store = db.open().await;
            store.write(vec![Op::Put(mesh("m1"))]).await.unwrap();
        }
        let store = db.open().await;
        assert_eq!(store.revision(), 1);
        assert_eq!(store.list_meshes().unwrap()[0].name, "m1");
    }

    async fn checked_writes_refuse_what_changed(db: TestDb) {
        let store = db.open().await;
        store.write(vec![Op::Put(mesh("m"))]).await.unwrap();
        let v = store.version_of(&ResourceKey::mesh("m"));
        let secret = || Op::Put(Resource::Secret(Secret::new("m", "s", b"x")));
        let expect_mesh = [Expect::Version(ResourceKey::mesh("m"), v.clone())];
        store
            .write(vec![Op::Delete(ResourceKey::mesh("m"))])
            .await
            .unwrap();
        let err = store.write_checked(vec![secret()], &expect_mesh).await;
        assert!(matches!(err, Err(StoreError::Conflict { .. })), "{err:?}");
        assert!(store.get_secret("m", "s").unwrap().is_none());
        store.write(vec![Op::Put(mesh("m"))]).await.unwrap();
        let members = [Expect::Members {
            kind: Kind::Secret,
            mesh: "m".into(),
            names: vec![],
        }];
        store.write(vec![secret()]).await.unwrap();
        let err = store
            .write_checked(vec![Op::Delete(ResourceKey::mesh("m"))], &members)
            .await;
        assert!(matches!(err, Err(StoreError::Conflict { .. })), "{err:?}");
        let members = [Expect::Members {
            kind: Kind::Secret,
            mesh: "m".into(),
            names: vec!["s".into()],
        }];
        let out = store
            .write_checked(vec![Op::Delete(ResourceKey::mesh("m"))], &members)
            .await
            .unwrap();
        assert_eq!(out, vec![Outcome::Deleted]);
    }

    macro_rules! on_both {
        ($($name:ident),*) => {
            mod sled_backend {
                $(#[tokio::test]
                async fn $name() {
                    super::$name(super::TestDb::sled()).await
                })*
            }
            mod postgres_backend {
                $(#[tokio::test]
                async fn $name() {
                    super::$name(super::TestDb::pg()).await
                })*
            }
        };
    }

    /// The bytes a test store holds for `key`: sled's record, or PostgreSQL's row as
    /// `spec|hex of sealed` (psql's output).
    fn raw_bytes(db: &TestDb, store: &Store, key: &ResourceKey) -> Vec<u8> {
        match (db, &store.backend) {
            (TestDb::Sled(_), Backend::Sled(sled)) => sled
                .handles()
                .unwrap()
                .resources
                .get(key.encode())
                .unwrap()
                .expect("the record is there")
                .to_vec(),
            (TestDb::Pg(pg), _) => pg
                .psql(&format!(
                    "SELECT coalesce(spec, ''), coalesce(encode(sealed, 'hex'), '') FROM resources
                     WHERE kind = '{}' AND mesh = '{}' AND name = '{}'",
                    key.kind.as_str(),
                    key.mesh,
                    key.name
                ))
                .unwrap()
                .into_bytes(),
            _ => unreachable!(),
        }
    }

    /// Every file under `dir` whose bytes hold `needle`.
    fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
        let mut found = vec![];
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                found.extend(files_holding(&e.path(), needle));
            } else if contains(&std::fs::read(e.path()).unwrap(), needle) {
                found.push(e.path().display().to_string());
            }
        }
        found
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    /// What the test Secrets hold: distinctive, so that finding it (or its base64) anywhere in
    /// the store's bytes is meaningful.
    const SECRET_VALUE: &[u8] = b"sealed-at-rest-4f2a9c-value";

    fn secret_b64() -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(SECRET_VALUE)
    }

    async fn secrets_are_sealed_on_disk_and_read_plain(db: TestDb) {
        let secret = Secret::new("m", "s", SECRET_VALUE);
        let key = ResourceKey::new(Kind::Secret, "m", "s");
        let expected_hash = content_hash(&resource_json(&Resource::Secret(secret.clone())));
        {
            let store = db.open().await;
            store
                .write(vec![
                    Op::Put(mesh("m")),
                    Op::Put(Resource::Secret(secret.clone())),
                ])
                .await
                .unwrap();
            assert_eq!(store.get_secret("m", "s").unwrap().unwrap(), secret);
            assert_eq!(
                store.version_of(&key).unwrap(),
                expected_hash,
                "hash of the plain spec"
            );
            let raw = raw_bytes(&db, &store, &key);
            assert!(
                !contains(&raw, &secret_b64()),
                "{}",
                String::from_utf8_lossy(&raw)
            );
            assert!(!contains(&raw, "sealed-at-rest"));
            // Meshes are sealed too (their backends may hold inline credentials).
            let raw = raw_mesh(&db, &store);
            assert!(!raw.is_empty());
            assert!(
                !contains(&raw, "\"type\":\"Mesh\""),
                "{}",
                String::from_utf8_lossy(&raw)
            );
            // A second write of the same data is unchanged (the hash is the plain one, whatever
            // the nonce of the stored envelope).
            let out = store
                .write(vec![Op::Put(Resource::Secret(secret.clone()))])
                .await
                .unwrap();
            assert_eq!(out, vec![Outcome::Unchanged]);
            // And an update re-seals.
            let other = Secret::new("m", "s", b"second-value-77d1");
            let out = store
                .write(vec![Op::Put(Resource::Secret(other.clone()))])
                .await
                .unwrap();
            assert_eq!(out, vec![Outcome::Updated]);
            assert_eq!(store.get_secret("m", "s").unwrap().unwrap(), other);
            assert!(!contains(&raw_bytes(&db, &store, &key), "second-value"));
            store
                .write(vec![Op::Put(Resource::Secret(secret.clone()))])
                .await
                .unwrap();
        }
        // After a reopen: the same versions, the same plain data.
        let store = db.open().await;
        assert_eq!(store.version_of(&key).unwrap(), expected_hash);
        assert_eq!(
            store.list(Kind::Secret, Some("m")).unwrap()[0]
                .resource()
                .unwrap(),
            Resource::Secret(secret.clone())
        );
        assert_eq!(store.secret_data("m", "s").unwrap(), SECRET_VALUE);
    }

    fn raw_mesh(db: &TestDb, store: &Store) -> Vec<u8> {
        raw_bytes(db, store, &ResourceKey::mesh("m"))
    }

    async fn another_key_is_refused_at_open(db: TestDb) {
        {
            let store = db.open().await;
            store
                .write(vec![Op::Put(Resource::Secret(Secret::new(
                    "m",
                    "s",
                    SECRET_VALUE,
                )))])
                .await
                .unwrap();
        }
        let other = Arc::new(SecretsKey::generate().unwrap());
        let err = match &db {
            TestDb::Sled(dir) => Store::open(dir.path(), other.clone()).err().unwrap(),
            TestDb::Pg(pg) => Store::connect(&pg.url(), other.clone())
                .await
                .err()
                .unwrap(),
        };
        let StoreError::Unseal { what, source, .. } = &err else {
            panic!("{err:?}");
        };
        let expected = match &db {
            TestDb::Sled(_) => "Secret m/s in the store",
            // PostgreSQL knows the replicas' key before it reads a row.
            TestDb::Pg(_) => {
                "the Secrets of this PostgreSQL store (its replicas seal with another key)"
            }
        };
        assert_eq!(what, expected);
        assert_eq!(
            source,
            &SealError::OtherKey {
                sealed_with: key().id(),
                held: other.id()
            }
        );
        let text = err.to_string();
        for part in [key().id().to_string(), other.id().to_string()] {
            assert!(text.contains(&part), "{text}");
        }
        assert!(!text.contains(&secret_b64()));
        // The right key still opens it.
        assert_eq!(db.open().await.secret_data("m", "s").unwrap(), SECRET_VALUE);
    }

    async fn plain_secrets_of_an_older_version_are_sealed_at_open(db: TestDb) {
        // An older version wrote its records with the spec in plain text: the unsealed baseline
        // writes exactly that (sled: the same bytes; PostgreSQL: `spec` set, `sealed` NULL).
        let (before_fp, before_versions) = {
            let store = match &db {
                TestDb::Sled(dir) => Store::open_unsealed_bench_baseline(dir.path()).unwrap(),
                TestDb::Pg(pg) => Store::connect_unsealed_bench_baseline(&pg.url())
                    .await
                    .unwrap(),
            };
            let mut ops = vec![Op::Put(mesh("m"))];
            for i in 0..5 {
                ops.push(Op::Put(Resource::Secret(Secret::new(
                    "m",
                    &format!("s{i}"),
                    SECRET_VALUE,
                ))));
            }
            store.write(ops).await.unwrap();
            store
                .write(vec![Op::Delete(ResourceKey::new(Kind::Secret, "m", "s4"))])
                .await
                .unwrap();
            let raw = raw_bytes(&db, &store, &ResourceKey::new(Kind::Secret, "m", "s0"));
            assert!(
                contains(&raw, &secret_b64()),
                "the older version's plain record"
            );
            (store.fingerprint(), store.versions(Kind::Secret).1)
        };
        let store = db.open().await;
        assert_eq!(
            store.fingerprint(),
            before_fp,
            "revision, count and digest unchanged"
        );
        assert_eq!(store.versions(Kind::Secret).1, before_versions);
        for i in 0..4 {
            let key = ResourceKey::new(Kind::Secret, "m", &format!("s{i}"));
            let raw = raw_bytes(&db, &store, &key);
            assert!(
                !contains(&raw, &secret_b64()),
                "{}",
                String::from_utf8_lossy(&raw)
            );
            assert_eq!(
                store.get(&key).unwrap().unwrap().revision,
                1,
                "revision kept"
            );
            assert_eq!(
                store.secret_data("m", &format!("s{i}")).unwrap(),
                SECRET_VALUE
            );
        }
        assert_eq!(store.revision(), 2);
        drop(store);
        // Opened again: nothing left to seal, the same state.
        let store = db.open().await;
        assert_eq!(store.fingerprint(), before_fp);
        if let TestDb::Pg(pg) = &db {
            // The table was rewritten: no file of it holds a plain row (the WAL still does, until
            // PostgreSQL recycles it).
            pg.psql("CHECKPOINT").unwrap();
            assert_eq!(
                files_holding(&pg.data_dir().join("base"), &secret_b64()),
                Vec::<String>::new()
            );
        }
        if let TestDb::Sled(dir) = &db {
            // sled's log held the plain values: the files were rewritten, and none is left.
            drop(store);
            assert_eq!(
                files_holding(dir.path(), &secret_b64()),
                Vec::<String>::new()
            );
            let names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, ["store"], "nothing of the rewrite left beside it");
        }
    }

    on_both!(
        writes_are_atomic_and_versioned,
        version_index_follows_writes_and_reopen,
        survives_reopen,
        checked_writes_refuse_what_changed,
        secrets_are_sealed_on_disk_and_read_plain,
        another_key_is_refused_at_open,
        plain_secrets_of_an_older_version_are_sealed_at_open
    );

    /// A start that stopped in the middle of a rewrite: a complete copy is swapped in at the
    /// next open, an incomplete one deleted; either way the store holds everything.
    #[tokio::test]
    async fn an_interrupted_rewrite_is_finished_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let fingerprint = {
            let store = Store::open_unsealed_bench_baseline(dir.path()).unwrap();
            store
                .write(vec![
                    Op::Put(mesh("m")),
                    Op::Put(Resource::Secret(Secret::new("m", "s", SECRET_VALUE))),
                ])
                .await
                .unwrap();
            store.fingerprint()
        };
        {
            // Sealed and copied, then stopped before the swap.
            let (sled, handles) = crate::store_sled::Sled::open(dir.path()).unwrap();
            let sealing = crate::store_sealing::Sealing::Key(key());
            assert_eq!(
                crate::store_sealing::seal_plain_sled(&sealing, &handles).unwrap(),
                (2, 0),
                "the Mesh and the Secret"
            );
            crate::store_sled::rewrite_copy(dir.path(), &handles).unwrap();
            drop((sled, handles));
        }
        assert!(dir.path().join("store.rewritten").is_dir());
        let store = Store::open(dir.path(), key()).unwrap();
        assert_eq!(store.fingerprint(), fingerprint);
        assert_eq!(store.secret_data("m", "s").unwrap(), SECRET_VALUE);
        drop(store);
        assert_eq!(
            files_holding(dir.path(), &secret_b64()),
            Vec::<String>::new()
        );
        assert!(!dir.path().join("store.rewritten").exists());
        assert!(!dir.path().join("store.replaced").exists());

        // An incomplete copy is dropped; the store in place is the one served.
        std::fs::create_dir(dir.path().join("store.rewriting")).unwrap();
        std::fs::write(dir.path().join("store.rewriting/db"), b"half").unwrap();
        let store = Store::open(dir.path(), key()).unwrap();
        assert_eq!(store.fingerprint(), fingerprint);
        assert!(!dir.path().join("store.rewriting").exists());
    }

    /// A quick figure, not a timed test: `cargo test -p common --lib write_rate -- --ignored
    /// --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn write_rate() {
        for db in [TestDb::sled(), TestDb::pg()] {
            let store = db.open().await;
            let n = 500;
            let started = std::time::Instant::now();
            for i in 0..n {
                store
                    .write(vec![Op::Put(mesh(&format!("m{i}")))])
                    .await
                    .unwrap();
            }
            let rate = f64::from(n) / started.elapsed().as_secs_f64();
            let name = if store.is_shared() {
                "postgres"
            } else {
                "sled"
            };
            eprintln!("{name}: {rate:.0} sequential one-resource writes/s");
        }
    }

    #[tokio::test]
    async fn temporary_store_works() {
        let store = Store::temporary().unwrap();
        store.write(vec![Op::Put(mesh("a"))]).await.unwrap();
        assert_eq!(store.revision(), 1);
    }

    /// Concurrent writers commit in groups, yet each is answered as if alone: every plain write
    /// lands with a revision of its own, and of writers racing to create one key with
    /// "absent" expected, exactly one wins and the others get `Conflict`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_group_commit_answers_each_writer_as_alone() {
        let db = TestDb::pg();
        let store = db.open().await;
        store.write(vec![Op::Put(mesh("m"))]).await.unwrap();
        let before = store.revision();
        let plain = (0..100).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(vec![Op::Put(Resource::Secret(Secret::new(
                        "m",
                        &format!("s-{i}"),
                        b"x",
                    )))])
                    .await
            })
        });
        let racing = (0..20).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write_checked(
                        vec![Op::Put(Resource::Secret(Secret::new(
                            "m",
                            "shared",
                            format!("{i}").as_bytes(),
                        )))],
                        &[Expect::Version(
                            ResourceKey::new(Kind::Secret, "m", "shared"),
                            None,
                        )],
                    )
                    .await
            })
        });
        let plain: Vec<_> = futures::future::join_all(plain).await;
        let racing: Vec<_> = futures::future::join_all(racing).await;
        for r in plain {
            assert_eq!(r.unwrap().unwrap(), vec![Outcome::Created]);
        }
        let won = racing
            .into_iter()
            .map(|r| r.unwrap())
            .filter(|r| match r {
                Ok(o) => {
                    assert_eq!(o, &vec![Outcome::Created]);
                    true
                }
                Err(StoreError::Conflict { .. }) => false,
                Err(e) => panic!("{e:?}"),
            })
            .count();
        assert_eq!(won, 1);
        assert_eq!(store.count(Kind::Secret), 101);
        assert_eq!(
            store.revision(),
            before + 101,
            "one revision per write that changed something"
        );
        // What the replica holds is what the database holds.
        drop(store);
        let again = db.open().await;
        assert_eq!(again.revision(), before + 101);
        assert_eq!(again.count(Kind::Secret), 101);
    }

    /// Two replicas on one database: each sees the other's writes (revision watch, deletes via
    /// tombstones), versions are the same on both, a checked write on one sees the other's.
    #[tokio::test]
    async fn postgres_replicas_follow_each_other() {
        let db = TestDb::pg();
        let a = db.open().await;
        let b = db.open().await;
        let mut rx = b.subscribe();
        a.write(vec![Op::Put(mesh("m"))]).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(|r| *r >= 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            b.version_of(&ResourceKey::mesh("m")),
            a.version_of(&ResourceKey::mesh("m"))
        );
        let v = b.version_of(&ResourceKey::mesh("m"));
        a.write(vec![Op::Delete(ResourceKey::mesh("m"))])
            .await
            .unwrap();
        // Whether or not b heard of the delete yet, its checked write catches up first.
        let err = b
            .write_checked(
                vec![Op::Put(Resource::Secret(Secret::new("m", "s", b"x")))],
                &[Expect::Version(ResourceKey::mesh("m"), v)],
            )
            .await;
        assert!(matches!(err, Err(StoreError::Conflict { .. })), "{err:?}");
        assert!(b.get(&ResourceKey::mesh("m")).unwrap().is_none());
        assert_eq!(b.revision(), 2);
        // Shared values: the first proposal wins.
        assert_eq!(a.share("k", "one").await.unwrap(), "one");
        assert_eq!(b.share("k", "two").await.unwrap(), "one");
        assert_eq!(b.shared_value("k").await.unwrap().as_deref(), Some("one"));
    }

    /// Replicas must share the key: one given another file is refused at connect, even while
    /// the database holds no Secret yet (nothing it wrote could be read by the others).
    #[tokio::test]
    async fn postgres_a_replica_with_another_key_is_refused_before_any_secret() {
        let db = TestDb::pg();
        let first = db.open().await;
        assert_eq!(first.count(Kind::Secret), 0);
        let TestDb::Pg(pg) = &db else { unreachable!() };
        let other = Arc::new(SecretsKey::generate().unwrap());
        let err = Store::connect(&pg.url(), other.clone())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, StoreError::Unseal { source: SealError::OtherKey { sealed_with, held }, .. }
                if *sealed_with == key().id() && *held == other.id()),
            "{err}"
        );
        // The same key is welcome.
        db.open().await;
    }

    #[tokio::test]
    async fn postgres_schema_from_a_newer_binary_is_refused() {
        let TestDb::Pg(pg) = TestDb::pg() else {
            unreachable!()
        };
        assert_eq!(Store::migrate(&pg.url()).await.unwrap(), 2);
        pg.psql("INSERT INTO schema_migrations VALUES (99, 0)")
            .unwrap();
        let err = Store::connect(&pg.url(), key()).await.err().unwrap();
        assert!(
            matches!(
                err,
                StoreError::SchemaTooNew {
                    found: 99,
                    known: 2
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[tokio::test]
    async fn postgres_down_writes_fail_as_unavailable_and_reads_go_on() {
        let TestDb::Pg(mut pg) = TestDb::pg() else {
            unreachable!()
        };
        let store = Store::connect(&pg.url(), key()).await.unwrap();
        store.write(vec![Op::Put(mesh("m"))]).await.unwrap();
        pg.stop().unwrap();
        let err = store.write(vec![Op::Put(mesh("n"))]).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains("PostgreSQL"), "{err}");
        assert_eq!(store.list_meshes().unwrap().len(), 1);
        pg.start_again().unwrap();
        store.write(vec![Op::Put(mesh("n"))]).await.unwrap();
        assert_eq!(store.list_meshes().unwrap().len(), 2);
    }
}
