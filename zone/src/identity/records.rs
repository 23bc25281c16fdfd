//! What the identity engine keeps in the zone's store, in record trees beside the synced resources
//! (they are not resources: no revision bump, not synced): per dataplane its registration and the
//! metadata of its current certificate (never the key), the trust anchor sets those certificates
//! chain to, and per backend the anchors it was last seen with. A restarted zone therefore lists
//! its dataplanes (disconnected), knows which backend issued each certificate, and can accept the
//! certificates proxies present when they reconnect without a new issuance.

use std::collections::HashMap;
use std::sync::Arc;

use common::model::Dataplane;
use common::store::{Records, Store, StoreError};
use serde::{Deserialize, Serialize};

pub const DATAPLANES: &str = "identity-dataplanes";
pub const ANCHORS: &str = "identity-anchors";
pub const BACKENDS: &str = "identity-backends";

/// Metadata of a proxy's current certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertMeta {
    /// Lower-case hex bytes separated by `:`.
    pub serial: String,
    pub backend: String,
    pub backend_type: String,
    /// The backend generation it was issued under (see `Slot::backend_gen`).
    pub backend_gen: String,
    /// The anchor set it chains to.
    pub anchors_id: String,
    pub not_before: i64,
    pub not_after: i64,
    /// Hash of the proxy's tags it was issued for.
    pub tags_hash: String,
    /// When it should be replaced (unix seconds, jitter included).
    pub rotate_at: i64,
}

/// One dataplane, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DpRecord {
    pub dataplane: Dataplane,
    #[serde(default)]
    pub cert: Option<CertMeta>,
    #[serde(default)]
    pub issued_count: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_connected_ms: u64,
}

/// A set of trust anchors (PEM, one certificate each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorRecord {
    pub pems: Vec<String>,
}

/// The anchors a backend generation was last seen with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRecord {
    pub backend_gen: String,
    pub anchors_id: String,
}

/// What [`Persist::load`] found.
pub struct Loaded {
    pub dataplanes: Vec<DpRecord>,
    /// Anchor set id -> its certificates.
    pub anchors: HashMap<String, Arc<Vec<String>>>,
    /// `mesh/backend` -> the anchors it was last seen with.
    pub backends: HashMap<String, BackendRecord>,
}

pub struct Persist {
    pub dataplanes: Records,
    pub anchors: Records,
    pub backends: Records,
}

pub fn dp_key(mesh: &str, name: &str) -> String {
    format!("{mesh}/{name}")
}

impl Persist {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            dataplanes: store.records(DATAPLANES)?,
            anchors: store.records(ANCHORS)?,
            backends: store.records(BACKENDS)?,
        })
    }

    /// Everything persisted; a tree that cannot be read is logged and skipped.
    pub fn load(&self) -> Loaded {
        let dps = match self.dataplanes.list::<DpRecord>() {
            Ok(l) => l.into_iter().map(|(_, r)| r).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the dataplane records");
                Vec::new()
            }
        };
        let anchors = match self.anchors.list::<AnchorRecord>() {
            Ok(l) => l.into_iter().map(|(k, r)| (k, Arc::new(r.pems))).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the trust anchor records");
                HashMap::new()
            }
        };
        let backends = match self.backends.list::<BackendRecord>() {
            Ok(l) => l.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the backend records");
                HashMap::new()
            }
        };
        Loaded {
            dataplanes: dps,
            anchors,
            backends,
        }
    }

    pub fn put_dp(&self, r: &DpRecord) {
        let key = dp_key(&r.dataplane.mesh, &r.dataplane.name);
        if let Err(e) = self.dataplanes.put_buffered(&key, r) {
            tracing::warn!(dataplane = %key, error = %e, "cannot persist the dataplane record");
        }
    }

    pub fn put_anchors(&self, id: &str, pems: &[String]) {
        let rec = AnchorRecord {
            pems: pems.to_vec(),
        };
        if let Err(e) = self.anchors.put_buffered(id, &rec) {
            tracing::warn!(error = %e, "cannot persist a trust anchor set");
        }
    }

    pub fn put_backend(&self, mesh: &str, backend: &str, r: &BackendRecord) {
        if let Err(e) = self.backends.put_buffered(&dp_key(mesh, backend), r) {
            tracing::warn!(error = %e, "cannot persist the backend record");
        }
    }
}
