//! The engine's state, behind its one lock: the table of proxies (each with the phase of its
//! issuance cycle, [`Work`], [`Health`] and [`Holding`]), their timers, the meshes with the
//! enabled backend each uses ([`Slot`]), breakers, Vault checks and the known anchor sets. Only
//! data and the bookkeeping that keeps it consistent; the decisions are in the sibling modules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::model::{Backend, Dataplane};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use super::check::CheckState;
use super::policy::Breaker;
use super::records::{BackendRecord, CertMeta, DpRecord};
use super::reports::AgentState;
use super::source::CertSource;
use super::{BackendId, DataplaneView, DpKey, IdentityBundle};

/// Why a certificate is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    Expiry,
    BackendChange,
    TagsChange,
}

impl Cause {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Cause::Expiry => "expiry",
            Cause::BackendChange => "backend_change",
            Cause::TagsChange => "tags_change",
        }
    }
}

pub(super) type SourceCell = Arc<tokio::sync::Mutex<Option<Arc<dyn CertSource>>>>;

/// A set of trust anchors, with its certificates split once for chain verification.
pub(super) struct AnchorSet {
    pub(super) pems: Vec<String>,
    pub(super) roots: Vec<Vec<u8>>,
    pub(super) others: Vec<Vec<u8>>,
}

impl AnchorSet {
    pub(super) fn new(pems: Vec<String>) -> Self {
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

pub(super) fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

pub(super) fn tags_hash(tags: &BTreeMap<String, Vec<String>>) -> String {
    short_hash(&serde_json::to_vec(tags).unwrap_or_default())
}

/// The enabled backend of a mesh as the engine uses it.
pub(super) struct Slot {
    pub(super) backend: Arc<Backend>,
    pub(super) type_str: &'static str,
    pub(super) ttl: Duration,
    pub(super) material: String,
    /// What a certificate must have been issued under to be current: the backend's spec, and
    /// for local CAs the CA itself (a new CA means new certificates; a new Vault token does not).
    pub(super) backend_gen: String,
    /// The backend's trust anchors, once known.
    pub(super) anchors_id: Option<String>,
    pub(super) source: SourceCell,
}

pub(super) struct MeshState {
    pub(super) slot: Option<Slot>,
    /// Why there is no slot.
    pub(super) problem: Option<String>,
    /// The trust bundle last computed, and the anchor sets it was made of (in order).
    pub(super) trust: Arc<str>,
    pub(super) trust_ids: Vec<String>,
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
pub(super) struct Snap {
    pub(super) bid: BackendId,
    pub(super) backend: Arc<Backend>,
    pub(super) type_str: &'static str,
    pub(super) ttl: Duration,
    pub(super) backend_gen: String,
    pub(super) anchors: Option<(String, Arc<AnchorSet>)>,
    pub(super) source: SourceCell,
    pub(super) tags: Arc<BTreeMap<String, Vec<String>>>,
    pub(super) tags_hash: String,
    pub(super) record_cert: Option<CertMeta>,
}

pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) tx: watch::Sender<Option<Arc<IdentityBundle>>>,
    /// The chain the proxy presented, until it is evaluated.
    pub(super) presented: Option<String>,
    /// Where CSR requests go; None for an agent that cannot answer them (`Stream`).
    pub(super) asks: Option<watch::Sender<Option<super::keygen::CsrAsk>>>,
}

/// Whether a work task runs for a proxy. At most one does: a reason to look again while it
/// runs (a reconnection, a timer, a mesh change) makes it go round once more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Work {
    /// No task: the timer says when the scheduler dispatches one.
    Idle,
    /// A task is deciding or issuing.
    Running,
    /// A task is running and must decide again once its step ends.
    RunningAgain,
}

/// How the proxy's last issuance attempts went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    /// The last attempt succeeded (or there was none).
    Healthy,
    /// `failures` attempts failed in a row, retried with backoff; `backend`: the last failure
    /// was the backend's (not this proxy's request), so it is retried at once when the backend
    /// answers again.
    Failing { failures: u32, backend: bool },
}

impl Health {
    /// Consecutive failures (0 when healthy).
    pub(super) fn failures(self) -> u32 {
        match self {
            Health::Healthy => 0,
            Health::Failing { failures, .. } => failures,
        }
    }
}

/// What the engine knows of the certificate the proxy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holding {
    /// The certificate on record, or the chain it presented, still to be evaluated.
    Known,
    /// Nothing it can keep (it presented nothing, or what it presented was refused): issue one.
    Unknown,
}

pub(super) struct Proxy {
    pub(super) dp: Dataplane,
    pub(super) tags: Arc<BTreeMap<String, Vec<String>>>,
    pub(super) tags_hash: String,
    pub(super) conn: Option<Conn>,
    pub(super) cert: Option<CertMeta>,
    /// When the scheduler looks at it next (mirrored in `State::timers`).
    pub(super) timer: Option<Instant>,
    pub(super) work: Work,
    pub(super) health: Health,
    pub(super) holding: Holding,
    /// The backend whose open breaker it waits for (woken to probe, or when it closes).
    pub(super) parked_on: Option<BackendId>,
    pub(super) last_error: Option<String>,
    pub(super) issued_count: u64,
    pub(super) last_connected_ms: u64,
    /// What its agent last reported on this connection (`Session` only).
    pub(super) agent: Option<AgentState>,
    /// Issuances in a row that came before the last certificate's rotation point (see
    /// `policy::pace`).
    pub(super) early_streak: u32,
    /// No issuance before this instant (the pace of early issuances).
    pub(super) next_issue: Option<Instant>,
    /// `dpCert.keyGeneration: proxy`: the CSR asked for, or received and checked.
    pub(super) csr: super::keygen::CsrState,
}

impl Proxy {
    pub(super) fn new(dp: Dataplane) -> Self {
        let tags = Arc::new(dp.tags());
        let tags_hash = tags_hash(&tags);
        Self {
            dp,
            tags,
            tags_hash,
            conn: None,
            cert: None,
            timer: None,
            work: Work::Idle,
            health: Health::Healthy,
            holding: Holding::Known,
            parked_on: None,
            last_error: None,
            issued_count: 0,
            last_connected_ms: 0,
            agent: None,
            early_streak: 0,
            next_issue: None,
            csr: super::keygen::CsrState::None,
        }
    }

    pub(super) fn record(&self) -> DpRecord {
        DpRecord {
            dataplane: self.dp.clone(),
            cert: self.cert.clone(),
            issued_count: self.issued_count,
            last_error: self.last_error.clone(),
            last_connected_ms: self.last_connected_ms,
        }
    }

    pub(super) fn service(&self) -> String {
        self.tags
            .get(common::model::SERVICE_TAG)
            .map(|v| v.join(","))
            .unwrap_or_default()
    }

    /// Its row at the zone's clock `now` (unix seconds).
    pub(super) fn view(&self, now: i64) -> DataplaneView {
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
            last_error: self.shown_error(),
            issued_count: self.issued_count,
            state: self.state(now).to_string(),
            certificate_on_disk: self.agent.as_ref().and_then(|a| {
                (!a.disk_serial.is_empty()).then(|| crate::views::DiskCertView {
                    serial: a.disk_serial.clone(),
                    expiration: common::clock::rfc3339(a.disk_not_after),
                })
            }),
            agent_clock_skew_ms: self.agent.as_ref().map(|a| a.skew.ms),
        }
    }
}

#[derive(Default)]
pub(super) struct State {
    /// Boxed: a proxy is large, and the table is sized for many.
    pub(super) proxies: HashMap<DpKey, Box<Proxy>>,
    pub(super) timers: BTreeSet<(Instant, DpKey)>,
    pub(super) meshes: HashMap<String, MeshState>,
    pub(super) breakers: HashMap<BackendId, Breaker>,
    pub(super) checks: BTreeMap<BackendId, CheckState>,
    pub(super) anchors: HashMap<String, Arc<AnchorSet>>,
    pub(super) backend_records: HashMap<String, BackendRecord>,
    /// mesh -> names of its connected proxies.
    pub(super) connected: HashMap<String, BTreeSet<String>>,
    /// mesh -> anchor set id -> how many connected proxies hold a certificate chaining to it.
    pub(super) trust_refs: HashMap<String, BTreeMap<String, usize>>,
    /// mesh -> anchor set id -> until when it stays trusted though no connected proxy's
    /// certificate chains to it any more (see `IssuanceConfig::trust_grace`).
    pub(super) retiring: HashMap<String, BTreeMap<String, Instant>>,
    pub(super) trust_grace: Duration,
    /// Anchor PEMs as a source returned them -> their set id (saves parsing them per issuance).
    pub(super) anchor_ids: HashMap<Vec<String>, String>,
}

impl State {
    /// Whether the outcome of a step taken for `key` on `snap` still applies: `None` when the
    /// proxy is gone or disconnected; `Some(false)` when its mesh's enabled backend or its tags
    /// changed meanwhile (decide again).
    pub(super) fn still_applies(&self, key: &DpKey, snap: &Snap) -> Option<bool> {
        let current = self
            .meshes
            .get(&key.0)
            .and_then(|m| m.slot.as_ref())
            .is_some_and(|s| s.backend_gen == snap.backend_gen);
        let p = self.proxies.get(key).filter(|p| p.conn.is_some())?;
        Some(current && p.tags_hash == snap.tags_hash)
    }

    pub(super) fn set_timer(&mut self, key: &DpKey, at: Option<Instant>) {
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
}
