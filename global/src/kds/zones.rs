//! Global's record of every zone that ever connected: online or not, since when, last seen, why
//! its last stream ended, per synced type what was sent, acknowledged and rejected, resources too
//! large to send, and the status the zone reported. Records live in memory and in the `zones`
//! record tree of global's store (never synced to zones), so `GET /zones` still lists them, offline,
//! after a restart. They are served by `api::zones` (`GET /zones`, `GET /zones/{name}`,
//! `GET /meshes/{mesh}/dataplanes`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::shutdown::{Shutdown, Trigger};
use common::store::{Records, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One rejected resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rejected {
    pub mesh: String,
    pub name: String,
    pub reason: String,
}

/// The last rejection of a type by the zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastNack {
    pub at_ms: u64,
    pub nonce: String,
    pub error: String,
    pub resources: Vec<Rejected>,
}

/// Per synced type, counted over the current (or last) stream of the zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TypeStats {
    /// Discovery responses sent.
    pub responses_sent: u64,
    /// Resources sent (added or changed), over all responses.
    pub resources_sent: u64,
    /// Removals sent.
    pub removed_sent: u64,
    /// Bytes sent (encoded responses, before compression).
    pub bytes_sent: u64,
    pub acked: u64,
    pub nacked: u64,
    /// Global's system version of the last response acknowledged.
    pub acked_version: u64,
    pub last_sent_ms: u64,
    pub last_acked_ms: u64,
    pub last_nack: Option<LastNack>,
}

/// A resource that was not sent because it alone exceeds the message size limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TooLarge {
    #[serde(rename = "type")]
    pub type_: String,
    pub mesh: String,
    pub name: String,
    pub version: String,
    pub size: u64,
    pub limit: u64,
    pub at_ms: u64,
}

/// A refused stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    pub at_ms: u64,
    /// The name the client called itself, or the name in its token.
    pub zone: String,
    pub peer: String,
    pub reason: String,
}

/// A dataplane as its zone last reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DataplaneReport {
    pub mesh: String,
    pub name: String,
    pub service: String,
    pub tags: BTreeMap<String, String>,
    /// The CA backend of its current certificate (empty: none yet).
    pub backend: String,
    pub serial: String,
    /// Expiry of its current certificate, unix milliseconds (0: none).
    pub expires_ms: i64,
    /// When the zone means to replace it, unix milliseconds (0: none, or a zone too old to say;
    /// absent from records written before).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rotates_ms: i64,
    pub connected: bool,
    /// What the zone warns about this proxy (a token that binds no service).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub warning: String,
    /// The last failure the zone knows of: its issuance, or the proxy agent's (files not written,
    /// bundle refused).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// In words, e.g. `ok`, `holding an expired certificate on disk` (empty from older zones).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl From<&proto::kds::DataplaneStatus> for DataplaneReport {
    /// What a zone reported, kept printable (control characters removed).
    fn from(d: &proto::kds::DataplaneStatus) -> Self {
        use common::http::printable as p;
        Self {
            mesh: p(&d.mesh),
            name: p(&d.name),
            service: p(&d.service),
            tags: d.tags.iter().map(|(k, v)| (p(k), p(v))).collect(),
            backend: p(&d.backend),
            serial: p(&d.cert_serial),
            expires_ms: d.cert_expires_unix_ms,
            rotates_ms: d.cert_rotates_unix_ms,
            connected: d.connected,
            warning: p(&d.warning),
            last_error: p(&d.last_error),
            state: p(&d.state),
        }
    }
}

/// Why a zone record cannot be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("the zone is online: it can be deleted once it is offline (stopped)")]
    Online,
    #[error(transparent)]
    Store(StoreError),
}

/// What global keeps about one zone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZoneRecord {
    pub name: String,
    pub online: bool,
    pub connected_since_ms: u64,
    pub last_seen_ms: u64,
    pub last_disconnect_ms: u64,
    pub last_disconnect_reason: String,
    pub last_error: String,
    pub peer: String,
    pub connects: u64,
    pub disconnects: u64,
    pub token_expires_ms: u64,
    pub types: BTreeMap<String, TypeStats>,
    pub too_large: Vec<TooLarge>,
    pub last_refusal: Option<Refusal>,
    /// The last status report of the zone, as JSON (see `ZoneStatus` in kds.proto), without its
    /// dataplanes, which are kept in `dataplanes`.
    pub status: Option<Value>,
    /// The dataplanes of the zone's last status report (kept while the zone is offline).
    pub dataplanes: Vec<DataplaneReport>,
    /// When that report was made, unix milliseconds.
    pub dataplanes_reported_ms: u64,
    /// The id of the global replica that holds (or last held) the zone's stream.
    pub replica: String,
}

struct Entry {
    record: ZoneRecord,
    /// The live stream, if any: its id and the trigger that ends it.
    session: Option<(u64, Trigger)>,
    /// When a status report was last persisted, and whether a later write is scheduled.
    status_persisted: Option<std::time::Instant>,
    status_write_scheduled: bool,
}

/// A zone's status reports (every dataplane of the zone) are written to the store at most this
/// often; the latest is always written (the write is delayed, not dropped), and every connect and
/// disconnect writes the whole record.
const STATUS_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

struct Inner {
    zones: HashMap<String, Entry>,
    refusals: VecDeque<Refusal>,
}

/// The registry of zones. Cheap to clone.
#[derive(Clone)]
pub struct Zones {
    inner: Arc<Mutex<Inner>>,
    records: Records,
    next_session: Arc<std::sync::atomic::AtomicU64>,
    online_gauge: Option<prometheus_client::metrics::gauge::Gauge>,
    /// The id of this replica, written on the records of the zones it holds.
    replica: Arc<str>,
    /// On a store shared by replicas: how a disconnect checks that no other replica took the
    /// zone meanwhile.
    coordinator: Option<Arc<common::coordination::Coordinator>>,
}

const MAX_REFUSALS: usize = 20;
const MAX_TOO_LARGE: usize = 50;

impl Zones {
    /// Loads the known zones (all offline: no stream survives a restart).
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let records = store.records("zones")?;
        let mut zones = HashMap::new();
        for (name, mut record) in records.list::<ZoneRecord>()? {
            if record.online {
                record.online = false;
                record.last_disconnect_ms = record.last_seen_ms;
                record.last_disconnect_reason = "global restarted".into();
            }
            zones.insert(
                name,
                Entry {
                    record,
                    session: None,
                    status_persisted: None,
                    status_write_scheduled: false,
                },
            );
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                zones,
                refusals: VecDeque::new(),
            })),
            records,
            next_session: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            online_gauge: None,
            replica: Arc::from(""),
            coordinator: None,
        })
    }

    /// On a store shared by replicas, a disconnect here never overwrites the record of a zone
    /// that another replica took meanwhile.
    pub fn with_coordinator(mut self, c: Arc<common::coordination::Coordinator>) -> Self {
        if c.is_shared() {
            self.coordinator = Some(c);
        }
        self
    }

    /// Writes `id` (this replica's) on the records of the zones whose stream it takes.
    pub fn with_replica(mut self, id: &str) -> Self {
        self.replica = Arc::from(id);
        self
    }

    /// Takes what another replica wrote of the zones this one holds no stream of (`records`:
    /// zone records as the store holds them now), so that every replica shows every zone.
    pub fn adopt(&self, records: Vec<ZoneRecord>) {
        let mut inner = self.lock();
        // A zone whose record is gone from the store (`global delete zone` on any replica) and
        // that holds no stream here is gone here too.
        let names: std::collections::HashSet<String> =
            records.iter().map(|r| r.name.clone()).collect();
        inner
            .zones
            .retain(|name, e| e.session.is_some() || names.contains(name));
        for record in records {
            match inner.zones.get_mut(&record.name) {
                Some(entry) if entry.session.is_some() => {}
                Some(entry) => entry.record = record,
                None => {
                    inner.zones.insert(
                        record.name.clone(),
                        Entry {
                            record,
                            session: None,
                            status_persisted: None,
                            status_write_scheduled: false,
                        },
                    );
                }
            }
        }
    }

    /// Forgets an offline zone: its record, its reported dataplanes and checks (its claims).
    /// `Ok(false)` when no such zone is known; `Err(Online)` while it holds a stream.
    pub async fn remove(&self, name: &str) -> Result<bool, RemoveError> {
        {
            let mut inner = self.lock();
            match inner.zones.get(name) {
                None => return Ok(false),
                Some(e) if e.session.is_some() || e.record.online => {
                    return Err(RemoveError::Online);
                }
                Some(_) => {
                    inner.zones.remove(name);
                }
            }
            self.update_gauge(&inner);
        }
        self.records
            .remove(name)
            .await
            .map_err(RemoveError::Store)?;
        Ok(true)
    }

    /// Keeps the `zones_online` gauge current.
    pub fn with_gauge(mut self, gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        self.online_gauge = Some(gauge);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_gauge(&self, inner: &Inner) {
        if let Some(g) = &self.online_gauge {
            // The zones whose stream this replica holds (others' are adopted records).
            g.set(inner.zones.values().filter(|e| e.session.is_some()).count() as i64);
        }
    }

    /// Writes the record and waits for the disk (connects, disconnects, refusals).
    async fn persist(&self, name: &str) {
        let record = self.lock().zones.get(name).map(|e| e.record.clone());
        if let Some(record) = record
            && let Err(e) = self.records.put(name, &record).await
        {
            tracing::warn!(zone = %name, error = %e, "cannot persist the zone record");
        }
    }

    /// Writes the record without waiting for the disk (status reports, NACKs: frequent, and
    /// flushed with the next connect or disconnect at the latest).
    fn persist_buffered(&self, name: &str) {
        let record = self.lock().zones.get(name).map(|e| e.record.clone());
        if let Some(record) = record
            && let Err(e) = self.records.put_buffered(name, &record)
        {
            tracing::warn!(zone = %name, error = %e, "cannot persist the zone record");
        }
    }

    /// A new stream of `name`: it replaces any older one (which is ended). Returns the session id
    /// and the handle that stops when the session must end.
    pub async fn connect(&self, name: &str, peer: &str, token_expires_ms: u64) -> (u64, Shutdown) {
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = Trigger::new();
        {
            let mut inner = self.lock();
            let entry = inner
                .zones
                .entry(name.to_string())
                .or_insert_with(|| Entry {
                    record: ZoneRecord {
                        name: name.to_string(),
                        ..Default::default()
                    },
                    session: None,
                    status_persisted: None,
                    status_write_scheduled: false,
                });
            if let Some((old, old_tx)) = entry.session.take() {
                tracing::info!(zone = %name, old_session = old, "a new stream of the zone replaces its previous one");
                old_tx.fire();
            }
            let now = common::clock::now_ms() as u64;
            let r = &mut entry.record;
            r.online = true;
            r.connected_since_ms = now;
            r.last_seen_ms = now;
            r.peer = peer.to_string();
            r.replica = self.replica.to_string();
            r.connects += 1;
            r.token_expires_ms = token_expires_ms;
            r.last_error.clear();
            // Counters describe the current stream.
            r.types.clear();
            r.too_large.clear();
            entry.session = Some((id, tx));
            self.update_gauge(&inner);
        }
        self.persist(name).await;
        (id, rx)
    }

    /// The stream `session` of `name` ended.
    pub async fn disconnect(&self, name: &str, session: u64, reason: &str) {
        {
            let mut inner = self.lock();
            let Some(entry) = inner.zones.get_mut(name) else {
                return;
            };
            let now = common::clock::now_ms() as u64;
            entry.record.disconnects += 1;
            if entry.session.as_ref().map(|s| s.0) == Some(session) {
                entry.session = None;
                entry.record.online = false;
                entry.record.last_seen_ms = now;
                entry.record.last_disconnect_ms = now;
                entry.record.last_disconnect_reason = reason.to_string();
            }
            self.update_gauge(&inner);
        }
        self.persist_checked(name).await;
    }

    /// `persist`, except that on a shared store the record of a zone another replica holds now
    /// is left as it is.
    async fn persist_checked(&self, name: &str) {
        match &self.coordinator {
            Some(c) => self.persist_unless_taken(c, name).await,
            None => self.persist(name).await,
        }
    }

    /// Writes the record unless the store's copy says another replica holds the zone's stream
    /// now (then that copy is taken instead): compare-and-set against what was read.
    async fn persist_unless_taken(&self, c: &common::coordination::Coordinator, name: &str) {
        for _ in 0..3 {
            let Some(record) = self.get(name) else {
                return;
            };
            let current = match c.get("zones", name).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(zone = %name, error = %e, "zone record not checked: writing it");
                    return self.persist(name).await;
                }
            };
            let theirs = current
                .as_deref()
                .and_then(|t| serde_json::from_str::<ZoneRecord>(t).ok());
            if let Some(theirs) = theirs
                && theirs.online
                && theirs.replica != record.replica
            {
                tracing::info!(zone = %name, replica = %theirs.replica, "the zone's stream is held by another replica now: its record is kept");
                self.adopt(vec![theirs]);
                return;
            }
            let value = serde_json::to_value(&record).expect("a zone record serializes");
            match c
                .compare_and_set("zones", name, current.as_deref(), Some(&value))
                .await
            {
                Ok(true) => return,
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(zone = %name, error = %e, "cannot persist the zone record");
                    return;
                }
            }
        }
    }

    /// Applies `f` to the record of `name` if `session` is its live stream.
    pub fn update(&self, name: &str, session: u64, f: impl FnOnce(&mut ZoneRecord)) {
        let mut inner = self.lock();
        if let Some(entry) = inner.zones.get_mut(name)
            && entry.session.as_ref().map(|s| s.0) == Some(session)
        {
            entry.record.last_seen_ms = common::clock::now_ms() as u64;
            f(&mut entry.record);
        }
    }

    /// Like `update`, then persists the record (buffered).
    pub fn update_persist(&self, name: &str, session: u64, f: impl FnOnce(&mut ZoneRecord)) {
        self.update(name, session, f);
        self.persist_buffered(name);
    }

    /// Like `update`, for a status report: the record is persisted (buffered) at once if none was
    /// in the last `STATUS_PERSIST_INTERVAL`, else once that interval has passed, with whatever
    /// the zone reported last. A report lists every dataplane of the zone, so writing each one
    /// would make the store's work grow with the zone's size times its report rate.
    pub fn update_status(&self, name: &str, session: u64, f: impl FnOnce(&mut ZoneRecord)) {
        self.update(name, session, f);
        let wait = {
            let mut inner = self.lock();
            let Some(entry) = inner.zones.get_mut(name) else {
                return;
            };
            if entry.status_write_scheduled {
                return;
            }
            let since = entry.status_persisted.map(|t| t.elapsed());
            match since {
                Some(since) if since < STATUS_PERSIST_INTERVAL => {
                    entry.status_write_scheduled = true;
                    Some(STATUS_PERSIST_INTERVAL - since)
                }
                _ => {
                    entry.status_persisted = Some(std::time::Instant::now());
                    None
                }
            }
        };
        match wait {
            None => self.persist_buffered(name),
            Some(wait) => {
                let zones = self.clone();
                let name = name.to_string();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    if let Some(entry) = zones.lock().zones.get_mut(&name) {
                        entry.status_write_scheduled = false;
                        entry.status_persisted = Some(std::time::Instant::now());
                    }
                    zones.persist_buffered(&name);
                });
            }
        }
    }

    pub fn record_too_large(&self, name: &str, session: u64, item: TooLarge) {
        self.update(name, session, |r| {
            r.too_large
                .retain(|t| !(t.type_ == item.type_ && t.mesh == item.mesh && t.name == item.name));
            r.too_large.push(item);
            if r.too_large.len() > MAX_TOO_LARGE {
                r.too_large.remove(0);
            }
        });
    }

    /// A refused stream: kept in a short list, and on the record of the zone it names if known.
    pub async fn refused(&self, refusal: Refusal) {
        let known = {
            let mut inner = self.lock();
            inner.refusals.push_back(refusal.clone());
            while inner.refusals.len() > MAX_REFUSALS {
                inner.refusals.pop_front();
            }
            match inner.zones.get_mut(&refusal.zone) {
                Some(entry) => {
                    entry.record.last_refusal = Some(refusal.clone());
                    true
                }
                None => false,
            }
        };
        if known {
            self.persist_checked(&refusal.zone).await;
        }
    }

    pub fn get(&self, name: &str) -> Option<ZoneRecord> {
        self.lock().zones.get(name).map(|e| e.record.clone())
    }

    pub fn list(&self) -> Vec<ZoneRecord> {
        let mut all: Vec<ZoneRecord> = self
            .lock()
            .zones
            .values()
            .map(|e| e.record.clone())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn refusals(&self) -> Vec<Refusal> {
        self.lock().refusals.iter().cloned().collect()
    }

    /// Ends every live stream (shutdown) and marks the zones offline.
    pub async fn disconnect_all(&self, reason: &str) {
        let names: Vec<(String, u64)> = self
            .lock()
            .zones
            .iter()
            .filter_map(|(n, e)| e.session.as_ref().map(|s| (n.clone(), s.0)))
            .collect();
        for (name, session) in names {
            if let Some(tx) = self
                .lock()
                .zones
                .get(&name)
                .and_then(|e| e.session.as_ref().map(|s| s.1.clone()))
            {
                tx.fire();
            }
            self.disconnect(&name, session, reason).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_a_restart_as_offline() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(
                dir.path(),
                common::sealing::SecretsKey::for_data_dir(dir.path(), None).unwrap(),
            )
            .unwrap();
            let zones = Zones::load(&store).unwrap();
            let (session, _cancel) = zones.connect("east", "127.0.0.1:1", 0).await;
            zones.update_persist("east", session, |r| {
                r.types.entry("Mesh".into()).or_default().resources_sent = 3;
            });
            // A second stream of the same zone replaces the first, which is told to end.
            let (second, cancel2) = zones.connect("east", "127.0.0.1:2", 0).await;
            assert!(!cancel2.is_shutdown());
            zones.disconnect("east", session, "old stream ended").await;
            assert!(
                zones.get("east").unwrap().online,
                "the newer stream keeps it online"
            );
            zones.update("east", second, |r| r.last_error = "x".into());
            // No disconnect of the live stream: as after a crash.
        }
        let store = Store::open(
            dir.path(),
            common::sealing::SecretsKey::for_data_dir(dir.path(), None).unwrap(),
        )
        .unwrap();
        let zones = Zones::load(&store).unwrap();
        let r = zones.get("east").unwrap();
        assert!(!r.online);
        assert_eq!(r.connects, 2);
        assert_eq!(r.last_disconnect_reason, "global restarted");
        // What the API shows of it: `api::zones::tests::an_offline_zone_shows_why`.
        // Updates for a session that is not live are ignored.
        zones.update("east", 99, |r| r.peer = "nope".into());
        assert_ne!(zones.get("east").unwrap().peer, "nope");
    }

    #[tokio::test]
    async fn adopted_records_never_replace_a_live_stream_and_name_the_replica() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            common::sealing::SecretsKey::for_data_dir(dir.path(), None).unwrap(),
        )
        .unwrap();
        let zones = Zones::load(&store).unwrap().with_replica("r1");
        zones.connect("east", "127.0.0.1:1", 0).await;
        assert_eq!(zones.get("east").unwrap().replica, "r1");
        let other = |name: &str| ZoneRecord {
            name: name.into(),
            online: true,
            replica: "r2".into(),
            ..Default::default()
        };
        zones.adopt(vec![other("east"), other("west")]);
        assert_eq!(
            zones.get("east").unwrap().replica,
            "r1",
            "a live stream is this replica's"
        );
        assert_eq!(zones.get("west").unwrap(), other("west"));
        let mut offline = other("west");
        offline.online = false;
        zones.adopt(vec![offline.clone()]);
        assert_eq!(zones.get("west").unwrap(), offline);
    }
}
