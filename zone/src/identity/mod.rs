//! The zone's identity engine: every connected proxy holds a valid certificate of its mesh's
//! enabled CA backend, issued by this zone, rotated before it expires, and kept through outages.
//!
//! - **Registration.** [`IdentityManager::connect`] registers a proxy (already authenticated by the
//!   identity service as mesh/name) and returns an [`IdentitySubscription`] whose `watch` channel
//!   carries [`IdentityBundle`]s; dropping it marks the proxy disconnected. Dataplanes and the
//!   metadata of their certificates (never keys) are persisted in record trees of the zone's store
//!   (`records.rs`), so a restarted zone lists them (disconnected) and knows what it issued. They
//!   are written behind, in batches, at most a second after a change and when the engine stops.
//! - **Issuance** goes to the mesh's enabled backend through a [`source::CertSource`]: Vault
//!   (`<pki>/issue/<role>`; one cached client per backend, rebuilt when its conf or the Secrets and
//!   files it reads change; renewable tokens renewed), or the builtin/provided CA signing locally.
//!   URI SANs come from `common::ca::leaf_uri_sans`, the lifetime is `dpCert.rotation.expiration`.
//! - **Reuse.** A reconnecting proxy presents the chain it holds; when it chains to the current
//!   backend's anchors, carries the SANs (and common name) for the proxy's tags, was issued under
//!   the current backend conf and is before its rotation point, no certificate is issued: the
//!   bundle repeats that chain with `key_pem: None`.
//! - **Rotation** at `rotation_fraction` of the lifetime ±5% jitter, and at once when the mesh's
//!   enabled backend or its conf (or, for local CAs, the CA) changes, or the proxy's tags change.
//! - **Trust.** A mesh's trust bundle is the union of the current backend's anchors and the
//!   anchors of every connected proxy's certificate: after a backend switch every proxy trusts the
//!   old and new CAs (pushed before the first new certificate is issued) until the last connected
//!   proxy holds a new certificate; then only the new CA.
//! - **Failures.** Proxies keep their certificates (an empty or partial bundle is never sent).
//!   Retries per proxy back off exponentially with full jitter; a per-backend circuit breaker
//!   parks proxies while the backend is down and lets one probe through per cooldown; a semaphore
//!   bounds concurrent issuances. When the breaker closes, the waiting proxies go through the
//!   semaphore again: no storm.
//! - **Vault check** (`check.rs`): per mesh and vault backend, the zone issues its own test
//!   certificate (`common::vault::check_backend`) when the backend appears or changes and again
//!   every `vault_recheck` while failing (while healthy, a `sys/health` ping); results and the
//!   dataplanes go into the zone's status report to global, built when it is sent (the engine is
//!   the zone's `StatusSource`) and asked for at most every 200 ms, less often as the zone grows.
//!
//! All timing uses tokio time, so unit tests run the scheduling with paused time and fake sources.

mod check;
mod policy;
mod records;
pub mod source;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::model::{Backend, BackendType, Dataplane};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use crate::ZoneCtx;
use crate::metrics::{BackendLabels, BackendTypeLabels, CauseLabels, ReasonLabels};
use crate::state::{StatusExtra, StatusSource};
use check::CheckState;
use policy::{Admission, Breaker};
use records::{BackendRecord, CertMeta, DpRecord, Persist};
use source::{CertSource, Issued, LeafSpec, RealFactory, SourceError, SourceFactory};

/// (mesh, dataplane name).
pub(crate) type DpKey = (String, String);
/// (mesh, backend name).
type BackendId = (String, String);

/// How issuance is paced.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuanceConfig {
    /// Issuances in flight at most (all backends together).
    pub max_concurrent: usize,
    /// First retry delay of a proxy whose issuance failed; doubles per failure (full jitter).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Consecutive backend failures that open a backend's circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker waits before letting one probe through.
    pub breaker_cooldown: Duration,
    /// Fraction of a certificate's lifetime after which it is replaced (±5% jitter).
    pub rotation_fraction: f64,
    /// How often a failing Vault check is repeated (and a healthy Vault pinged).
    pub vault_recheck: Duration,
    /// How long a CA stays in its mesh's trust bundle after the last connected proxy holding a
    /// certificate of it got a new one (or left): the time for every proxy to receive its new
    /// bundle and load it, so that no proxy still presenting the old certificate meets a peer
    /// that no longer trusts it.
    pub trust_grace: Duration,
}

impl Default for IssuanceConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 32,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            rotation_fraction: 0.8,
            vault_recheck: Duration::from_secs(60),
            trust_grace: Duration::from_secs(60),
        }
    }
}

/// What a proxy gets: its certificate chain, the key when it is new, and the trust bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityBundle {
    /// Increases with every bundle this zone sends.
    pub generation: u64,
    /// The leaf, then its intermediates (PEM).
    pub cert_chain_pem: String,
    /// The leaf's key (PEM); `None`: unchanged, keep the key you have (the certificate you
    /// presented was kept, or only the trust bundle changed since the key was sent).
    pub key_pem: Option<String>,
    /// The CA certificates to trust (PEM); one string shared by every bundle of the mesh.
    pub trust_bundle_pem: Arc<str>,
    /// The backend that issued the certificate.
    pub backend: String,
    /// Lower-case hex bytes separated by `:`.
    pub serial: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

impl fmt::Debug for IdentityBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityBundle")
            .field("generation", &self.generation)
            .field("backend", &self.backend)
            .field("serial", &self.serial)
            .field("not_before_unix", &self.not_before_unix)
            .field("not_after_unix", &self.not_after_unix)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A proxy's subscription to its identity. Dropping it marks the proxy disconnected. A newer
/// connection of the same dataplane replaces this one: `updates` then reports the channel closed.
pub struct IdentitySubscription {
    /// `None` until the first bundle is ready; then the latest bundle.
    pub updates: watch::Receiver<Option<Arc<IdentityBundle>>>,
    _guard: ConnGuard,
}

impl fmt::Debug for IdentitySubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentitySubscription")
            .field("mesh", &self._guard.key.0)
            .field("name", &self._guard.key.1)
            .finish_non_exhaustive()
    }
}

struct ConnGuard {
    manager: Weak<IdentityManager>,
    key: DpKey,
    conn: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(m) = self.manager.upgrade() {
            m.disconnect(&self.key, self.conn);
        }
    }
}

/// A dataplane with the state of its certificate (`GET /dataplanes`, the status report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneView {
    pub mesh: String,
    pub name: String,
    /// The `kuma.io/service` value(s), comma-separated.
    pub service: String,
    /// Every tag; several values of one tag are comma-separated.
    pub tags: BTreeMap<String, String>,
    pub connected: bool,
    /// The backend that issued the current certificate.
    pub backend: Option<String>,
    pub backend_type: Option<String>,
    pub serial: Option<String>,
    /// Expiry of the current certificate, RFC 3339.
    pub expiration: Option<String>,
    pub expiration_unix: Option<i64>,
    /// The last issuance failure, cleared by the next success.
    pub last_error: Option<String>,
    /// Certificates issued to this dataplane by this zone.
    pub issued_count: u64,
}

/// Why a proxy cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("mesh {0:?} does not exist in this zone (not synced from global yet?)")]
    MeshNotFound(String),
    #[error("invalid dataplane: {0}")]
    InvalidDataplane(String),
    #[error("the zone's store failed: {0}")]
    Store(String),
}

/// Counters, for tests and benchmarks (the same numbers are in the zone's metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdentityStats {
    /// Issuance requests sent to a backend, retries included.
    pub attempts: u64,
    pub issued: u64,
    pub failed: u64,
    /// Presented certificates kept without issuance.
    pub reused: u64,
    pub rotations: u64,
    pub in_flight: u64,
    /// Most issuances in flight at once.
    pub max_in_flight: u64,
    /// Times a breaker opened.
    pub breaker_opened: u64,
    pub connected: u64,
}

/// Why a certificate is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Expiry,
    BackendChange,
    TagsChange,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Expiry => "expiry",
            Cause::BackendChange => "backend_change",
            Cause::TagsChange => "tags_change",
        }
    }
}

type SourceCell = Arc<tokio::sync::Mutex<Option<Arc<dyn CertSource>>>>;

/// A set of trust anchors, with its certificates split once for chain verification.
struct AnchorSet {
    pems: Vec<String>,
    roots: Vec<Vec<u8>>,
    others: Vec<Vec<u8>>,
}

impl AnchorSet {
    fn new(pems: Vec<String>) -> Self {
        let mut roots = Vec::new();
        let mut others = Vec::new();
        for p in &pems {
            if let Ok(ders) = common::x509::pem_to_ders(p) {
                for d in ders {
                    if common::x509::der_is_self_signed(&d) {
                        roots.push(d);
                    } else {
                        others.push(d);
                    }
                }
            }
        }
        Self {
            pems,
            roots,
            others,
        }
    }
}

/// The id of an anchor set: a hash of its certificates, order-independent.
fn anchors_id(pems: &[String]) -> String {
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

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

fn tags_hash(tags: &BTreeMap<String, Vec<String>>) -> String {
    short_hash(&serde_json::to_vec(tags).unwrap_or_default())
}

/// The enabled backend of a mesh as the engine uses it.
struct Slot {
    backend: Arc<Backend>,
    type_str: &'static str,
    ttl: Duration,
    material: String,
    /// What a certificate must have been issued under to be current: the backend's spec, and
    /// for local CAs the CA itself (a new CA means new certificates; a new Vault token does not).
    backend_gen: String,
    /// The backend's trust anchors, once known.
    anchors_id: Option<String>,
    source: SourceCell,
}

struct MeshState {
    slot: Option<Slot>,
    /// Why there is no slot.
    problem: Option<String>,
    /// The trust bundle last computed, and the anchor sets it was made of (in order).
    trust: Arc<str>,
    trust_ids: Vec<String>,
}

impl Default for MeshState {
    fn default() -> Self {
        Self {
            slot: None,
            problem: None,
            trust: Arc::from(""),
            trust_ids: Vec::new(),
        }
    }
}

/// What a work task needs to know about the slot, taken under the lock.
#[derive(Clone)]
struct Snap {
    bid: BackendId,
    backend: Arc<Backend>,
    type_str: &'static str,
    ttl: Duration,
    backend_gen: String,
    anchors: Option<(String, Arc<AnchorSet>)>,
    source: SourceCell,
    tags: Arc<BTreeMap<String, Vec<String>>>,
    tags_hash: String,
    record_cert: Option<CertMeta>,
}

struct Conn {
    id: u64,
    tx: watch::Sender<Option<Arc<IdentityBundle>>>,
    /// The chain the proxy presented, until it is evaluated.
    presented: Option<String>,
}

struct Proxy {
    dp: Dataplane,
    tags: Arc<BTreeMap<String, Vec<String>>>,
    tags_hash: String,
    conn: Option<Conn>,
    cert: Option<CertMeta>,
    timer: Option<Instant>,
    in_flight: bool,
    again: bool,
    /// The proxy holds no certificate we know of: issue one.
    force: bool,
    failures: u32,
    /// The last failure was the backend's (woken when its breaker closes).
    backend_failure: bool,
    parked_on: Option<BackendId>,
    last_error: Option<String>,
    issued_count: u64,
    last_connected_ms: u64,
}

impl Proxy {
    fn new(dp: Dataplane) -> Self {
        let tags = Arc::new(dp.tags());
        let tags_hash = tags_hash(&tags);
        Self {
            dp,
            tags,
            tags_hash,
            conn: None,
            cert: None,
            timer: None,
            in_flight: false,
            again: false,
            force: false,
            failures: 0,
            backend_failure: false,
            parked_on: None,
            last_error: None,
            issued_count: 0,
            last_connected_ms: 0,
        }
    }

    fn record(&self) -> DpRecord {
        DpRecord {
            dataplane: self.dp.clone(),
            cert: self.cert.clone(),
            issued_count: self.issued_count,
            last_error: self.last_error.clone(),
            last_connected_ms: self.last_connected_ms,
        }
    }

    fn service(&self) -> String {
        self.tags
            .get(common::model::SERVICE_TAG)
            .map(|v| v.join(","))
            .unwrap_or_default()
    }

    fn view(&self) -> DataplaneView {
        DataplaneView {
            mesh: self.dp.mesh.clone(),
            name: self.dp.name.clone(),
            service: self.service(),
            tags: self
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.join(",")))
                .collect(),
            connected: self.conn.is_some(),
            backend: self.cert.as_ref().map(|c| c.backend.clone()),
            backend_type: self.cert.as_ref().map(|c| c.backend_type.clone()),
            serial: self.cert.as_ref().map(|c| c.serial.clone()),
            expiration: self
                .cert
                .as_ref()
                .and_then(|c| common::clock::rfc3339(c.not_after)),
            expiration_unix: self.cert.as_ref().map(|c| c.not_after),
            last_error: self.last_error.clone(),
            issued_count: self.issued_count,
        }
    }
}

#[derive(Default)]
struct State {
    /// Boxed: a proxy is large, and the table is sized for many.
    proxies: HashMap<DpKey, Box<Proxy>>,
    timers: BTreeSet<(Instant, DpKey)>,
    meshes: HashMap<String, MeshState>,
    breakers: HashMap<BackendId, Breaker>,
    checks: BTreeMap<BackendId, CheckState>,
    anchors: HashMap<String, Arc<AnchorSet>>,
    backend_records: HashMap<String, BackendRecord>,
    /// mesh -> names of its connected proxies.
    connected: HashMap<String, BTreeSet<String>>,
    /// mesh -> anchor set id -> how many connected proxies hold a certificate chaining to it.
    trust_refs: HashMap<String, BTreeMap<String, usize>>,
    /// mesh -> anchor set id -> until when it stays trusted though no connected proxy's
    /// certificate chains to it any more (see `IssuanceConfig::trust_grace`).
    retiring: HashMap<String, BTreeMap<String, Instant>>,
    trust_grace: Duration,
    /// Anchor PEMs as a source returned them -> their set id (saves parsing them per issuance).
    anchor_ids: HashMap<Vec<String>, String>,
}

impl State {
    fn set_timer(&mut self, key: &DpKey, at: Option<Instant>) {
        let Some(p) = self.proxies.get_mut(key) else {
            return;
        };
        if let Some(old) = p.timer.take() {
            self.timers.remove(&(old, key.clone()));
        }
        if let Some(at) = at {
            p.timer = Some(at);
            self.timers.insert((at, key.clone()));
        }
    }

    /// Counts (or stops counting) a connected proxy's certificate in its mesh's trust bundle.
    fn trust_ref(&mut self, mesh: &str, cert: Option<&CertMeta>, add: bool) {
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
    fn set_cert(&mut self, key: &DpKey, meta: CertMeta) {
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

    fn register_anchors(&mut self, pems: Vec<String>, persist: Option<&Persist>) -> String {
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
    fn trust_ids(&self, mesh: &str) -> Vec<String> {
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
    fn trust_of(&self, ids: &[String]) -> String {
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

/// Wall clock in unix time, or (in unit tests) a clock that follows tokio's paused time.
struct Clock {
    tokio: bool,
    base_unix_ms: i64,
    base: Instant,
}

impl Clock {
    fn system() -> Self {
        Self {
            tokio: false,
            base_unix_ms: 0,
            base: Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        if self.tokio {
            self.base_unix_ms + self.base.elapsed().as_millis() as i64
        } else {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        }
    }

    fn now_unix(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// The tokio instant of a unix time (now, if it is past).
    fn instant_at(&self, unix: i64) -> Instant {
        let ms = unix * 1000 - self.now_ms();
        Instant::now() + Duration::from_millis(ms.max(0) as u64)
    }
}

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    issued: AtomicU64,
    failed: AtomicU64,
    reused: AtomicU64,
    rotations: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    breaker_opened: AtomicU64,
    generation: AtomicU64,
}

/// The identity engine of a zone. See the module documentation.
pub struct IdentityManager {
    ctx: Arc<ZoneCtx>,
    config: IssuanceConfig,
    factory: Arc<dyn SourceFactory>,
    persist: Option<Persist>,
    state: Mutex<State>,
    /// Wakes the run loop (timers changed).
    wake: Notify,
    /// The status report should be refreshed.
    dirty: Notify,
    semaphore: Arc<Semaphore>,
    counters: Counters,
    /// Dataplanes whose record changed since it was last written (see `record_changed`).
    dirty_records: Mutex<HashSet<DpKey>>,
    /// Wakes the record writer.
    records_due: Notify,
    next_conn: AtomicU64,
    clock: Clock,
    me: Weak<IdentityManager>,
}

/// How long a parked proxy woken to probe a breaker has before another is woken.
const PROBE_GRACE: Duration = Duration::from_secs(5);
/// At most this often a status report is asked for.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(200);
/// At least this often a status report is asked for while things change.
const STATUS_INTERVAL_MAX: Duration = Duration::from_secs(5);
/// The wait between status reports per dataplane the zone knows (see `status_interval`).
const STATUS_INTERVAL_PER_DATAPLANE: Duration = Duration::from_millis(1);
/// A changed dataplane record is written at most this long after its first change.
const RECORDS_FLUSH: Duration = Duration::from_secs(1);
/// Records copied out of the engine's state at a time when writing them.
const RECORDS_BATCH: usize = 64;
/// The expiry gauge is refreshed at least this often.
const GAUGE_REFRESH: Duration = Duration::from_secs(15);

/// What a work task does next for a proxy.
enum Plan {
    Nothing,
    Evaluate(String, Box<Snap>),
    Issue(Option<Cause>, Box<Snap>),
}

impl IdentityManager {
    /// The engine of the zone `ctx`, with what the zone's store remembers (its dataplanes, the
    /// metadata of their certificates). Call [`IdentityManager::run`] to start it.
    pub fn new(ctx: Arc<ZoneCtx>, config: IssuanceConfig) -> Arc<Self> {
        let factory = Arc::new(RealFactory {
            vault_latency: ctx.metrics.identity.vault_request_seconds.clone(),
            timeouts: ctx.config.vault_timeouts,
        });
        Self::build(ctx, config, factory, Clock::system())
    }

    fn build(
        ctx: Arc<ZoneCtx>,
        config: IssuanceConfig,
        factory: Arc<dyn SourceFactory>,
        clock: Clock,
    ) -> Arc<Self> {
        let persist = match Persist::open(&ctx.store) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(error = %e, "cannot open the identity records: dataplanes will not survive a restart");
                None
            }
        };
        let mut state = State {
            trust_grace: config.trust_grace,
            ..State::default()
        };
        if let Some(p) = &persist {
            let loaded = p.load();
            for (id, pems) in loaded.anchors {
                state
                    .anchors
                    .insert(id, Arc::new(AnchorSet::new(pems.to_vec())));
            }
            state.backend_records = loaded.backends;
            for r in loaded.dataplanes {
                let key = (r.dataplane.mesh.clone(), r.dataplane.name.clone());
                let mut p = Proxy::new(r.dataplane);
                p.cert = r.cert;
                p.issued_count = r.issued_count;
                p.last_error = r.last_error;
                p.last_connected_ms = r.last_connected_ms;
                state.proxies.insert(key, Box::new(p));
            }
        }
        let max = config.max_concurrent.max(1);
        let manager = Arc::new_cyclic(|me| Self {
            ctx,
            config,
            factory,
            persist,
            state: Mutex::new(state),
            wake: Notify::new(),
            dirty: Notify::new(),
            semaphore: Arc::new(Semaphore::new(max)),
            counters: Counters::default(),
            dirty_records: Mutex::new(HashSet::new()),
            records_due: Notify::new(),
            next_conn: AtomicU64::new(1),
            clock,
            me: me.clone(),
        });
        let source: Weak<dyn StatusSource> = Arc::downgrade(&manager) as Weak<dyn StatusSource>;
        manager.ctx.set_status_source(source);
        manager
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn metrics(&self) -> &crate::metrics::IdentityMetrics {
        &self.ctx.metrics.identity
    }

    /// Registers a connected proxy (authenticated as mesh/name by the caller). `presented` is
    /// the certificate chain (PEM, leaf first) the proxy holds, if any: kept when still good.
    pub fn connect(
        &self,
        dp: Dataplane,
        presented: Option<String>,
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
            p.force = presented.is_none();
            let newly = p.conn.is_none();
            // A replaced connection's receivers see their channel closed.
            p.conn = Some(Conn { id, tx, presented });
            let cert = p.cert.clone();
            p.last_connected_ms = self.clock.now_ms().max(0) as u64;
            if p.in_flight {
                p.again = true;
            }
            let in_backoff = p.failures > 0 && p.timer.is_some_and(|t| t > now);
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
            _guard: ConnGuard {
                manager: self.me.clone(),
                key,
                conn: id,
            },
        })
    }

    fn disconnect(&self, key: &DpKey, conn: u64) {
        let mut st = self.lock();
        let Some(p) = st.proxies.get_mut(key) else {
            return;
        };
        if p.conn.as_ref().map(|c| c.id) != Some(conn) {
            return;
        }
        p.conn = None;
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
        let st = self.lock();
        let mut out: Vec<DataplaneView> = st.proxies.values().map(|p| p.view()).collect();
        drop(st);
        out.sort_by(|a, b| (&a.mesh, &a.name).cmp(&(&b.mesh, &b.name)));
        out
    }

    /// One dataplane.
    pub fn dataplane(&self, mesh: &str, name: &str) -> Option<DataplaneView> {
        self.lock()
            .proxies
            .get(&(mesh.to_string(), name.to_string()))
            .map(|p| p.view())
    }

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

    /// Runs the engine until `stop` turns true: follows the store (Meshes, Secrets), rotation
    /// deadlines, retries, breaker probes, Vault checks, and refreshes the status report.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let status = tokio::spawn(self.clone().status_loop());
        let records = tokio::spawn(self.clone().records_loop());
        let mut revisions = self.ctx.store.subscribe();
        let mut seen = self.store_marks();
        self.reconcile();
        loop {
            let next = self.next_deadline();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                biased;
                _ = stop.wait_for(|v| *v) => break,
                changed = revisions.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let marks = self.store_marks();
                    if marks != seen {
                        seen = marks;
                        self.reconcile();
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next.unwrap_or(far)) => {}
            }
            self.tick();
        }
        status.abort();
        records.abort();
        self.flush_records();
        self.publish();
    }

    /// Notes that a dataplane's record must be written. Records are written behind, in batches
    /// (`records_loop`): one write for a burst of changes of a proxy (its connection, then the
    /// certificate issued for it), none of them on the paths that serve proxies. They are
    /// bookkeeping that may lag (what a restarted zone lists, and the metadata that lets it keep
    /// presented certificates, which it can also verify without it); everything pending is
    /// written when the engine stops.
    fn record_changed(&self, key: &DpKey) {
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

    async fn records_loop(self: Arc<Self>) {
        loop {
            self.records_due.notified().await;
            tokio::time::sleep(RECORDS_FLUSH).await;
            self.flush_records();
        }
    }

    /// Writes the records of the dataplanes that changed.
    fn flush_records(&self) {
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

    /// When Meshes and Secrets last changed.
    fn store_marks(&self) -> (u64, u64) {
        use common::model::Kind;
        (
            self.ctx.store.snapshot(Kind::Mesh).changed_at,
            self.ctx.store.snapshot(Kind::Secret).changed_at,
        )
    }

    fn next_deadline(&self) -> Option<Instant> {
        let st = self.lock();
        let mut next = st.timers.first().map(|(t, _)| *t);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for b in st.breakers.values() {
            consider(b.probe_due());
        }
        for c in st.checks.values() {
            if !c.running {
                consider(c.next);
            }
        }
        for r in st.retiring.values() {
            consider(r.values().min().copied());
        }
        next
    }

    /// Starts whatever is due.
    fn tick(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        while let Some((t, key)) = st.timers.first().cloned() {
            if t > now {
                break;
            }
            st.timers.remove(&(t, key.clone()));
            if let Some(p) = st.proxies.get_mut(&key) {
                p.timer = None;
            }
            self.dispatch(&mut st, &key);
        }
        // CAs whose grace ended leave their mesh's trust bundle.
        let ended: Vec<String> = st
            .retiring
            .iter_mut()
            .filter_map(|(mesh, r)| {
                let before = r.len();
                r.retain(|_, until| *until > now);
                (r.len() < before).then(|| mesh.clone())
            })
            .collect();
        st.retiring.retain(|_, r| !r.is_empty());
        for mesh in ended {
            self.refresh_trust(&mut st, &mesh, None);
        }
        // Breakers whose cooldown ended: wake one parked proxy to probe.
        let due: Vec<BackendId> = st
            .breakers
            .iter()
            .filter(|(_, b)| b.probe_due().is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for bid in due {
            while let Some(key) = st.breakers.get_mut(&bid).and_then(|b| b.parked.pop_first()) {
                let usable = st
                    .proxies
                    .get(&key)
                    .is_some_and(|p| p.conn.is_some() && p.parked_on.as_ref() == Some(&bid));
                if let Some(p) = st.proxies.get_mut(&key) {
                    p.parked_on = None;
                }
                if usable {
                    if let Some(b) = st.breakers.get_mut(&bid) {
                        b.probe_woken_until = Some(now + PROBE_GRACE);
                    }
                    self.dispatch(&mut st, &key);
                    break;
                }
            }
        }
        // Vault checks.
        let checks: Vec<BackendId> = st
            .checks
            .iter()
            .filter(|(_, c)| !c.running && c.next.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for bid in checks {
            if let Some(c) = st.checks.get_mut(&bid) {
                c.running = true;
                c.next = None;
                let full = c.full;
                let backend = c.backend.clone();
                if let Some(me) = self.me.upgrade() {
                    tokio::spawn(me.run_check(bid, backend, full));
                }
            }
        }
    }

    /// Starts a work task for a connected proxy (or asks the running one to go again).
    fn dispatch(&self, st: &mut State, key: &DpKey) {
        let Some(p) = st.proxies.get_mut(key) else {
            return;
        };
        if p.conn.is_none() {
            return;
        }
        if p.in_flight {
            p.again = true;
            return;
        }
        p.in_flight = true;
        if let Some(me) = self.me.upgrade() {
            let key = key.clone();
            tokio::spawn(async move { me.work(key).await });
        }
    }

    async fn work(self: Arc<Self>, key: DpKey) {
        loop {
            let again_now = self.work_once(&key).await;
            let mut st = self.lock();
            let Some(p) = st.proxies.get_mut(&key) else {
                return;
            };
            if p.conn.is_some() && (again_now || p.again) {
                p.again = false;
                continue;
            }
            p.again = false;
            p.in_flight = false;
            drop(st);
            // Its timer may have moved.
            self.wake.notify_one();
            return;
        }
    }

    /// Decides what a proxy needs, under the lock.
    fn plan(&self, st: &mut State, key: &DpKey) -> Plan {
        let now_unix = self.clock.now_unix();
        let Some(p) = st.proxies.get(key) else {
            return Plan::Nothing;
        };
        if p.conn.is_none() {
            return Plan::Nothing;
        }
        let problem = match st.meshes.get(&key.0) {
            None => Some(format!("mesh {:?} is not in this zone", key.0)),
            Some(m) if m.slot.is_none() => Some(
                m.problem
                    .clone()
                    .unwrap_or_else(|| format!("mesh {:?} has no enabled mTLS backend", key.0)),
            ),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            // Woken again when the mesh changes.
            if let Some(p) = st.proxies.get_mut(key) {
                p.last_error = Some(problem);
            }
            self.dirty.notify_one();
            return Plan::Nothing;
        }
        let slot = st.meshes[&key.0].slot.as_ref().expect("checked above");
        let snap = Snap {
            bid: (key.0.clone(), slot.backend.name.clone()),
            backend: slot.backend.clone(),
            type_str: slot.type_str,
            ttl: slot.ttl,
            backend_gen: slot.backend_gen.clone(),
            anchors: slot
                .anchors_id
                .as_ref()
                .and_then(|id| st.anchors.get(id).map(|a| (id.clone(), a.clone()))),
            source: slot.source.clone(),
            tags: p.tags.clone(),
            tags_hash: p.tags_hash.clone(),
            record_cert: p.cert.clone(),
        };
        let cause = match &p.cert {
            None => None,
            Some(c) if c.backend_gen != snap.backend_gen => Some(Cause::BackendChange),
            Some(c) if c.tags_hash != p.tags_hash => Some(Cause::TagsChange),
            Some(c) if now_unix >= c.rotate_at => Some(Cause::Expiry),
            Some(_) => None,
        };
        let needed = p.force || p.cert.is_none() || cause.is_some();
        let rotate_at = p.cert.as_ref().map(|c| c.rotate_at);
        let p = st.proxies.get_mut(key).expect("present");
        if let Some(presented) = p.conn.as_mut().and_then(|c| c.presented.take()) {
            return Plan::Evaluate(presented, Box::new(snap));
        }
        if needed {
            return Plan::Issue(cause, Box::new(snap));
        }
        if let Some(at) = rotate_at {
            let at = self.clock.instant_at(at);
            st.set_timer(key, Some(at));
        }
        Plan::Nothing
    }

    /// One step for a proxy; true: decide again at once.
    async fn work_once(&self, key: &DpKey) -> bool {
        let plan = {
            let mut st = self.lock();
            self.plan(&mut st, key)
        };
        match plan {
            Plan::Nothing => false,
            Plan::Evaluate(presented, snap) => {
                let anchors = match &snap.anchors {
                    Some(a) => Some(a.clone()),
                    None => self.fetch_anchors(&snap).await,
                };
                let verdict = match &anchors {
                    Some((id, set)) => self.evaluate(&presented, set, &snap).map(|m| (id, m)),
                    None => Err("the backend's CA is not known yet".to_string()),
                };
                match verdict {
                    Ok((id, meta)) => self.install_reused(key, &snap, id, meta, presented),
                    Err(why) => {
                        tracing::debug!(mesh = %key.0, dataplane = %key.1, reason = %why, "presented certificate not kept");
                        if let Some(p) = self.lock().proxies.get_mut(key) {
                            p.force = true;
                        }
                        true
                    }
                }
            }
            Plan::Issue(cause, snap) => self.issue(key, cause, &snap).await,
        }
    }

    /// Checks a presented chain; returns the metadata to keep it under, or why not.
    fn evaluate(&self, presented: &str, set: &AnchorSet, snap: &Snap) -> Result<CertMeta, String> {
        let ders = common::x509::pem_to_ders(presented).map_err(|e| e.to_string())?;
        let leaf = &ders[0];
        let s = common::x509::summarize_der(leaf).map_err(|e| e.to_string())?;
        let want: BTreeSet<String> = common::ca::leaf_uri_sans(&snap.bid.0, &snap.tags)
            .into_iter()
            .collect();
        let got: BTreeSet<String> = s.uri_sans.iter().cloned().collect();
        if want != got {
            return Err(format!("URI SANs {got:?} are not {want:?}"));
        }
        if let Some(cn) = source::expected_common_name(&snap.backend, &snap.tags)
            && s.common_name.as_deref() != Some(cn.as_str())
        {
            return Err(format!("common name is not {cn:?}"));
        }
        let mut inters: Vec<Vec<u8>> = ders[1..].to_vec();
        inters.extend(set.others.iter().cloned());
        common::x509::verify_chain(leaf, &inters, &set.roots).map_err(|e| e.to_string())?;
        let ttl = snap.ttl.as_secs() as i64;
        match &snap.record_cert {
            Some(r) if r.serial == s.serial => {
                if r.backend_gen != snap.backend_gen {
                    return Err("issued under another backend configuration".into());
                }
            }
            _ => {
                let lifetime = s.not_after - s.not_before;
                if lifetime > ttl + 120 || lifetime < ttl - 120 {
                    return Err(format!(
                        "its lifetime {lifetime}s is not the configured {ttl}s"
                    ));
                }
            }
        }
        let now = self.clock.now_unix();
        let fraction = self.config.rotation_fraction;
        if now >= policy::rotate_at_unix(s.not_before, s.not_after, snap.ttl, fraction, 0.0) {
            return Err("past its rotation point".into());
        }
        let rotate_at = policy::rotate_at_unix(
            s.not_before,
            s.not_after,
            snap.ttl,
            fraction,
            policy::rotation_jitter(),
        )
        .max(now);
        Ok(CertMeta {
            serial: s.serial,
            backend: snap.backend.name.clone(),
            backend_type: snap.type_str.to_string(),
            backend_gen: snap.backend_gen.clone(),
            anchors_id: String::new(),
            not_before: s.not_before,
            not_after: s.not_after,
            tags_hash: snap.tags_hash.clone(),
            rotate_at,
        })
    }

    /// Builds the slot's source if needed. A new source is asked for its anchors at once, so
    /// that every proxy of the mesh trusts the backend's CA before any certificate of it is
    /// handed out (the trust bundle is pushed when the anchors are learnt).
    async fn ensure_source(&self, snap: &Snap) -> Result<Arc<dyn CertSource>, SourceError> {
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
    async fn fetch_anchors(&self, snap: &Snap) -> Option<(String, Arc<AnchorSet>)> {
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
    fn learn_anchors(&self, snap: &Snap, pems: Vec<String>) -> Option<(String, Arc<AnchorSet>)> {
        if pems.is_empty() {
            return None;
        }
        let mut st = self.lock();
        let id = st.register_anchors(pems, self.persist.as_ref());
        let set = st.anchors.get(&id).cloned()?;
        self.set_slot_anchors(&mut st, snap, &id);
        Some((id, set))
    }

    fn set_slot_anchors(&self, st: &mut State, snap: &Snap, id: &str) {
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
    fn refresh_trust(&self, st: &mut State, mesh: &str, except: Option<&DpKey>) -> Arc<str> {
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

    fn next_generation(&self) -> u64 {
        self.counters.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn install_reused(
        &self,
        key: &DpKey,
        snap: &Snap,
        anchors_id: &str,
        mut meta: CertMeta,
        presented: String,
    ) -> bool {
        let mut st = self.lock();
        let current = st
            .meshes
            .get(&key.0)
            .and_then(|m| m.slot.as_ref())
            .is_some_and(|s| s.backend_gen == snap.backend_gen);
        let Some(p) = st.proxies.get_mut(key) else {
            return false;
        };
        if p.conn.is_none() {
            return false;
        }
        if !current || p.tags_hash != snap.tags_hash {
            // Things moved while we looked: decide again (the proxy still holds that chain).
            if let Some(c) = p.conn.as_mut() {
                c.presented = Some(presented);
            }
            return true;
        }
        meta.anchors_id = anchors_id.to_string();
        let rotate_at = meta.rotate_at;
        let bundle_meta = meta.clone();
        p.force = false;
        p.failures = 0;
        p.backend_failure = false;
        p.last_error = None;
        st.set_cert(key, meta);
        st.set_timer(key, Some(self.clock.instant_at(rotate_at)));
        let trust = self.refresh_trust(&mut st, &key.0, Some(key));
        let bundle = IdentityBundle {
            generation: self.next_generation(),
            cert_chain_pem: presented,
            key_pem: None,
            trust_bundle_pem: trust,
            backend: bundle_meta.backend.clone(),
            serial: bundle_meta.serial.clone(),
            not_before_unix: bundle_meta.not_before,
            not_after_unix: bundle_meta.not_after,
        };
        self.counters.reused.fetch_add(1, Ordering::Relaxed);
        self.metrics().reused.inc();
        if let Some(conn) = st.proxies.get(key).and_then(|p| p.conn.as_ref()) {
            conn.tx.send_replace(Some(Arc::new(bundle)));
        }
        drop(st);
        self.record_changed(key);
        self.dirty.notify_one();
        false
    }

    /// Issues a certificate for a proxy, within the concurrency limit and the breaker.
    async fn issue(&self, key: &DpKey, cause: Option<Cause>, snap: &Snap) -> bool {
        let Ok(permit) = self.semaphore.clone().acquire_owned().await else {
            return false;
        };
        let admission = {
            let mut st = self.lock();
            let (threshold, cooldown) =
                (self.config.breaker_threshold, self.config.breaker_cooldown);
            let b = st
                .breakers
                .entry(snap.bid.clone())
                .or_insert_with(|| Breaker::new(threshold, cooldown));
            let a = b.admit(Instant::now());
            let code = b.state.code();
            if a == Admission::Deny {
                b.parked.insert(key.clone());
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
        let result = self.issue_with_source(snap).await;
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

    async fn issue_with_source(&self, snap: &Snap) -> Result<Issued, SourceError> {
        let source = self.ensure_source(snap).await?;
        let spec = LeafSpec {
            mesh: snap.bid.0.clone(),
            tags: snap.tags.clone(),
            ttl: snap.ttl,
        };
        source.issue(&spec).await
    }

    fn breaker_metric(&self, bid: &BackendId, code: i64) {
        self.metrics()
            .breaker_state
            .get_or_create(&BackendLabels {
                mesh: bid.0.clone(),
                backend: bid.1.clone(),
            })
            .set(code);
    }

    /// A backend answered: close its breaker and wake who waited for it.
    fn backend_ok(&self, st: &mut State, bid: &BackendId) {
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
            if st
                .proxies
                .get(&key)
                .is_some_and(|p| p.backend_failure && p.timer.is_some())
            {
                st.set_timer(&key, Some(now));
            }
        }
        self.wake.notify_one();
    }

    fn on_issued(&self, key: &DpKey, cause: Option<Cause>, snap: &Snap, issued: Issued) -> bool {
        let now_unix = self.clock.now_unix();
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
        let current = st
            .meshes
            .get(&key.0)
            .and_then(|m| m.slot.as_ref())
            .is_some_and(|s| s.backend_gen == snap.backend_gen);
        let Some(p) = st.proxies.get_mut(key) else {
            return false;
        };
        if p.conn.is_none() {
            return false;
        }
        if !current || p.tags_hash != snap.tags_hash {
            // Issued for a backend or tags that changed meanwhile: issue again.
            return true;
        }
        let rotate_at = policy::rotate_at_unix(
            issued.not_before,
            issued.not_after,
            snap.ttl,
            self.config.rotation_fraction,
            policy::rotation_jitter(),
        )
        .max(now_unix);
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
        let had_cert = p.cert.is_some();
        // The proxy gets this certificate and its key: whatever chain it presented is obsolete
        // (reusing it later would pair that chain with the new key).
        if let Some(c) = p.conn.as_mut() {
            c.presented = None;
        }
        p.force = false;
        p.failures = 0;
        p.backend_failure = false;
        p.last_error = None;
        p.issued_count += 1;
        st.set_cert(key, meta);
        st.set_timer(key, Some(self.clock.instant_at(rotate_at)));
        let trust = self.refresh_trust(&mut st, &key.0, Some(key));
        let bundle = IdentityBundle {
            generation: self.next_generation(),
            cert_chain_pem: issued.chain_pem,
            key_pem: Some(issued.key_pem),
            trust_bundle_pem: trust,
            backend: snap.backend.name.clone(),
            serial: issued.serial,
            not_before_unix: issued.not_before,
            not_after_unix: issued.not_after,
        };
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
        if let Some(conn) = st.proxies.get(key).and_then(|p| p.conn.as_ref()) {
            conn.tx.send_replace(Some(Arc::new(bundle)));
        }
        drop(st);
        self.record_changed(key);
        self.dirty.notify_one();
        false
    }

    fn on_failure(&self, key: &DpKey, snap: &Snap, e: SourceError) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        self.metrics()
            .failed
            .get_or_create(&ReasonLabels {
                reason: e.reason.as_str().to_string(),
            })
            .inc();
        let now = Instant::now();
        let mut st = self.lock();
        if e.per_proxy {
            // The backend answered; only this proxy's request was refused.
            self.backend_ok(&mut st, &snap.bid);
        } else {
            let (threshold, cooldown) =
                (self.config.breaker_threshold, self.config.breaker_cooldown);
            let b = st
                .breakers
                .entry(snap.bid.clone())
                .or_insert_with(|| Breaker::new(threshold, cooldown));
            b.last_error = Some(e.message.clone());
            if b.failure(now) {
                self.counters.breaker_opened.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(mesh = %snap.bid.0, backend = %snap.bid.1, error = %e, cooldown_s = cooldown.as_secs_f32(), "CA backend failing: circuit breaker open");
            }
            let code = b.state.code();
            self.breaker_metric(&snap.bid, code);
            if let Some(c) = st.checks.get_mut(&snap.bid) {
                c.failed_by_issuance(
                    &e.message,
                    self.clock.now_ms(),
                    now + self.config.vault_recheck,
                );
            }
        }
        let Some(p) = st.proxies.get_mut(key) else {
            return;
        };
        p.failures += 1;
        p.backend_failure = !e.per_proxy;
        p.last_error = Some(e.message.clone());
        let delay = policy::backoff(
            p.failures,
            self.config.backoff_initial,
            self.config.backoff_max,
        );
        let failures = p.failures;
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

    /// Follows the store: the enabled backend of every mesh, and the Vault backends to check.
    fn reconcile(&self) {
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

    /// Asks for a status report when something changed, at most once per status interval (see
    /// [`IdentityManager::status_interval`]), and keeps the expiry gauge fresh.
    async fn status_loop(self: Arc<Self>) {
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
    fn status_interval(&self) -> Duration {
        let n = self.lock().proxies.len() as u32;
        STATUS_INTERVAL_PER_DATAPLANE
            .saturating_mul(n)
            .clamp(STATUS_DEBOUNCE, STATUS_INTERVAL_MAX)
    }

    fn update_expiry_gauge(&self) {
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
    fn publish(&self) {
        self.ctx.report_now.notify_one();
        self.update_expiry_gauge();
    }
}

impl IdentityManager {
    fn checks_of(st: &State) -> Vec<proto::kds::BackendCheck> {
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
                connected: p.conn.is_some(),
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

#[cfg(test)]
mod tests;
