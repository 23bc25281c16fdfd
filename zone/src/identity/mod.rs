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
//!   files it reads change; its token — given, or a cert, AppRole or JWT login's — kept alive by
//!   `login`: renewed, replaced by a login before its max TTL and at once after a 403), or the
//!   builtin/provided CA signing locally.
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
//!
//! Where each part lives: `registry` (connect, disconnect, listing, record write-behind),
//! `schedule` (the run loop, timers, work tasks and their plan), `reuse` (presented chains),
//! `outcome` (issuance through semaphore and breaker, success and failure), `trust` (anchors and
//! trust bundles), `reconcile` (meshes and backends from the store), `status` (counters, status
//! report, gauges); the state they share is `table` (a proxy's phase is its `Work`, `Health` and
//! `Holding`), with `policy` (backoff, rotation point, breaker), `source`, `login` (the Vault
//! token's life), `records`, `check` and `clock` below them.

mod check;
mod clock;
mod keygen;
mod login;
mod outcome;
mod policy;
mod reconcile;
mod records;
mod registry;
mod reports;
mod reuse;
mod schedule;
pub mod source;
mod status;
mod table;
mod trust;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{Notify, Semaphore};

use crate::state::{StatusSource, ZoneCtx};
use clock::Clock;
use records::Persist;
use source::{RealFactory, SourceFactory};
use table::{AnchorSet, Proxy, State};

/// (mesh, dataplane name).
pub(crate) type DpKey = (String, String);
/// (mesh, backend name).
type BackendId = (String, String);

/// How issuance is paced (`zone run`'s tunables; defined with the zone's configuration).
pub use crate::config::IssuanceConfig;

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

pub use keygen::CsrAsk;
pub use registry::IdentitySubscription;
pub use reports::AgentReporter;

/// The dataplane rows of `GET /dataplanes` and the status report (defined with the API bodies).
pub use crate::views::DataplaneView;

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
    /// A Vault source's login health changed (see `check::sync_login_health`).
    login_changed: Arc<Notify>,
    me: Weak<IdentityManager>,
}

impl IdentityManager {
    /// The engine of the zone `ctx`, with what the zone's store remembers (its dataplanes, the
    /// metadata of their certificates). Call [`IdentityManager::run`] to start it.
    pub fn new(ctx: Arc<ZoneCtx>, config: IssuanceConfig) -> Arc<Self> {
        let login_changed = Arc::new(Notify::new());
        let factory = Arc::new(RealFactory {
            vault_latency: ctx.metrics.identity.vault_request_seconds.clone(),
            vault_logins: ctx.metrics.identity.vault_logins.clone(),
            login_changed: login_changed.clone(),
            timeouts: ctx.config.vault_timeouts,
        });
        Self::build(ctx, config, factory, Clock::system(), login_changed)
    }

    fn build(
        ctx: Arc<ZoneCtx>,
        config: IssuanceConfig,
        factory: Arc<dyn SourceFactory>,
        clock: Clock,
        login_changed: Arc<Notify>,
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
            login_changed,
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

    fn next_generation(&self) -> u64 {
        self.counters.generation.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[cfg(test)]
mod tests;
