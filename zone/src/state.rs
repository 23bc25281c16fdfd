//! The zone's shared state: its store, the state of its connection to global, per synced type
//! what it applied, and the source of the extra status (dataplanes, backend checks) that other
//! parts of the zone add to the report to global.

use std::collections::BTreeMap;
use std::sync::{Mutex, Weak};

use common::model::Kind;
use common::store::{Records, Store, StoreError};
use proto::kds;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::config::ZoneConfig;
use crate::metrics::ZoneMetrics;

/// Last rejection of a type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    /// Unix milliseconds (`common::clock::now_ms`).
    pub at_ms: i64,
    pub error: String,
    pub resources: Vec<(String, String, String)>,
}

/// Per synced type, persisted in the `sync` record tree so it survives restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TypeSync {
    /// Global's system version of the last response applied.
    pub system_version: u64,
    pub last_applied_ms: i64,
    /// Counted over the life of the zone's data directory.
    pub responses_applied: u64,
    pub responses_rejected: u64,
    pub last_nack: Option<Nack>,
}

/// The connection to global, in memory.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// The address of global this zone is connected to, or dialing (the last one tried).
    pub address: String,
    pub connected: bool,
    /// When the current stream was established (or the last one, when disconnected).
    pub since_ms: i64,
    pub last_error: String,
    pub last_error_ms: i64,
    pub connects: u64,
    /// Responses applied / rejected on the current stream, per type.
    pub applied: BTreeMap<&'static str, (u64, u64)>,
}

/// What other parts of the zone add to its status report (dataplanes, backend checks).
#[derive(Debug, Clone, Default)]
pub struct StatusExtra {
    pub dataplanes: Vec<kds::DataplaneStatus>,
    pub backend_checks: Vec<kds::BackendCheck>,
}

/// Supplies [`StatusExtra`] when a report is built. The report lists every dataplane, so it is
/// made only when it is about to be sent, never kept.
pub trait StatusSource: Send + Sync {
    fn status_extra(&self) -> StatusExtra;
    /// The backend checks alone (cheap).
    fn backend_checks(&self) -> Vec<kds::BackendCheck>;
}

pub struct ZoneCtx {
    pub config: ZoneConfig,
    pub store: Store,
    pub metrics: ZoneMetrics,
    /// How far global's and each Vault's clock are from the zone's.
    pub clocks: crate::clocks::Clocks,
    pub connection: Mutex<Connection>,
    types: Mutex<BTreeMap<&'static str, TypeSync>>,
    sync_records: Records,
    /// Global's store identity and the highest revision applied (see `rollback`).
    held: Mutex<Option<crate::rollback::Held>>,
    status_source: Mutex<Option<Weak<dyn StatusSource>>>,
    /// Notified when the status report should be resent (what the status source reports changed).
    pub report_now: Notify,
    /// Bumped when global's token keys or revocation list change: proxies' streams check their
    /// token again (a revoked one ends).
    pub token_keys: tokio::sync::watch::Sender<u64>,
}

/// Bytes of dataplanes one status report lists at most: well within the sync stream's bound.
pub const REPORT_BUDGET: usize = common::limits::SYNC_MESSAGE_BYTES / 2;

impl ZoneCtx {
    pub fn new(config: ZoneConfig, store: Store) -> Result<Self, StoreError> {
        let sync_records = store.records("sync")?;
        let mut types = BTreeMap::new();
        for kind in common::sync::SYNCED_KINDS {
            let t: TypeSync = sync_records.get(kind.as_str())?.unwrap_or_default();
            types.insert(kind.as_str(), t);
        }
        let held = sync_records.get(crate::rollback::HELD_KEY)?;
        let metrics = ZoneMetrics::new();
        Ok(Self {
            held: Mutex::new(held),
            connection: Mutex::new(Connection {
                address: config.global_address().to_string(),
                ..Connection::default()
            }),
            config,
            store,
            clocks: crate::clocks::Clocks::new(metrics.clock_skew_seconds.clone()),
            metrics,
            types: Mutex::new(types),
            sync_records,
            status_source: Mutex::new(None),
            report_now: Notify::new(),
            token_keys: tokio::sync::watch::channel(0).0,
        })
    }

    /// What the zone applied from: global's store identity and revision.
    pub fn held(&self) -> Option<crate::rollback::Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Remembers what the zone applied from (flushed before it returns).
    pub async fn set_held(&self, held: crate::rollback::Held) -> Result<(), StoreError> {
        self.sync_records
            .put(crate::rollback::HELD_KEY, &held)
            .await?;
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(held);
        Ok(())
    }

    /// Sets where the dataplanes and backend checks of the status report come from.
    pub fn set_status_source(&self, source: Weak<dyn StatusSource>) {
        *self.status_source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    fn status_source(&self) -> Option<std::sync::Arc<dyn StatusSource>> {
        self.status_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Weak::upgrade)
    }

    /// The dataplanes and backend checks as they stand (empty without a source).
    pub fn status_extra(&self) -> StatusExtra {
        self.status_source()
            .map(|s| s.status_extra())
            .unwrap_or_default()
    }

    /// The backend checks as they stand.
    pub fn backend_checks(&self) -> Vec<kds::BackendCheck> {
        self.status_source()
            .map(|s| s.backend_checks())
            .unwrap_or_default()
    }

    pub fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn type_sync(&self, kind: Kind) -> TypeSync {
        self.types
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind.as_str())
            .cloned()
            .unwrap_or_default()
    }

    /// Updates and persists the bookkeeping of a type (without waiting for the disk: it is
    /// informative, and the resources themselves were flushed by their write).
    pub fn update_type(&self, kind: Kind, f: impl FnOnce(&mut TypeSync)) {
        let value = {
            let mut types = self.types.lock().unwrap_or_else(|e| e.into_inner());
            let t = types.entry(kind.as_str()).or_default();
            f(t);
            t.clone()
        };
        if let Err(e) = self.sync_records.put_buffered(kind.as_str(), &value) {
            tracing::warn!(error = %e, "cannot persist the sync bookkeeping");
        }
    }

    /// The versions the zone holds of a type, as sent when subscribing.
    pub fn held_versions(&self, kind: Kind) -> Vec<kds::ResourceVersion> {
        let (_, map) = self.store.versions(kind);
        map.iter()
            .map(|((mesh, name), version)| kds::ResourceVersion {
                mesh: mesh.clone(),
                name: name.clone(),
                version: version.clone(),
            })
            .collect()
    }

    /// Count and digest of what the zone holds of a type.
    pub fn held_digest(&self, kind: Kind) -> (u64, String) {
        let (_, map) = self.store.versions(kind);
        let mut h = Sha256::new();
        for ((mesh, name), version) in map.iter() {
            h.update(mesh.as_bytes());
            h.update([0]);
            h.update(name.as_bytes());
            h.update([0]);
            h.update(version.as_bytes());
            h.update([b'\n']);
        }
        (map.len() as u64, hex::encode(h.finalize()))
    }

    /// The status report sent to global. Its dataplanes are listed up to `REPORT_BUDGET` bytes,
    /// the rest counted in `dataplanes_omitted`: a report never exceeds the stream's bound, which
    /// would end the stream.
    pub fn status_report(&self) -> kds::ZoneStatus {
        let conn = self.connection().clone();
        let mut extra = self.status_extra();
        let mut used = 0usize;
        let fits = extra
            .dataplanes
            .iter()
            .take_while(|d| {
                used += prost::Message::encoded_len(*d) + 8;
                used <= REPORT_BUDGET
            })
            .count();
        let omitted = extra.dataplanes.len() - fits;
        extra.dataplanes.truncate(fits);
        let types = common::sync::SYNCED_KINDS
            .iter()
            .map(|kind| {
                let (count, digest) = self.held_digest(*kind);
                let t = self.type_sync(*kind);
                let (applied, rejected) =
                    conn.applied.get(kind.as_str()).copied().unwrap_or((0, 0));
                kds::TypeStatus {
                    r#type: kind.as_str().to_string(),
                    count,
                    digest,
                    system_version: t.system_version,
                    applied,
                    rejected,
                }
            })
            .collect();
        kds::ZoneStatus {
            zone: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            connected_since_unix_ms: conn.since_ms,
            reported_at_unix_ms: common::clock::now_ms(),
            types,
            dataplanes: extra.dataplanes,
            backend_checks: extra.backend_checks,
            global_address: conn.address,
            store_error: self
                .store
                .write_failure()
                .borrow()
                .clone()
                .unwrap_or_default(),
            dataplanes_omitted: omitted as u64,
            clocks: self.clocks.report(),
        }
    }
}
