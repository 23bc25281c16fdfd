//! The replicas of one global: every `global run` on a store is a replica with an identity made
//! at start (a random id, the hostname, its API and sync addresses, when it started). A task
//! writes the replica's record in the store's `replicas` tree every `HEARTBEAT` (stamped with the
//! store's clock, so replicas on different hosts compare stamps of one clock); a replica is alive
//! while its last heartbeat is within `ALIVE_WITHIN`. Exactly one replica is the leader: the
//! holder of the store's leader lock (`common::coordination`: a PostgreSQL advisory lock held by a
//! session, which goes with the session when the leader dies, so leadership moves within a few
//! heartbeats; a sled global is one replica, always the leader). The leader runs what must run
//! once: zones whose stream was held by a replica that is no longer alive are marked offline
//! (compare-and-set, so a zone that reconnected meanwhile is left alone), and records of replicas
//! dead for `PRUNE_AFTER` are removed. Each round also adopts the zone records other replicas
//! wrote, so every replica's `GET /zones` shows every zone. One log line per change of state.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::about::hostname;
use common::coordination::{CoordinationError, Coordinator, FreshRecords};
use common::shutdown::Shutdown;
use common::store::Store;
use serde::{Deserialize, Serialize};

use crate::api::types::ReplicaView;
use crate::kds::Zones;
use crate::kds::zones::ZoneRecord;

/// The record tree of replicas.
pub const TREE: &str = "replicas";
/// The record tree of zones (`kds::zones`).
const ZONES_TREE: &str = "zones";
/// How often a replica writes its heartbeat (and the leader does its rounds).
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica whose last heartbeat is older than this is dead.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(6);
/// Records of replicas dead this long are removed by the leader.
pub const PRUNE_AFTER: Duration = Duration::from_secs(3600);

/// A replica as its heartbeat record holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ReplicaRecord {
    pub id: String,
    pub hostname: String,
    pub api_address: String,
    pub kds_address: String,
    pub started_at_ms: i64,
    /// The store's clock at the last heartbeat, unix milliseconds.
    pub last_heartbeat_ms: i64,
    /// Whether it held the leadership at its last heartbeat.
    pub leader: bool,
}

/// Whether a replica last heard of at `last_heartbeat_ms` is alive at `now_ms` (one clock, the
/// store's). A stamp ahead of `now_ms` is alive.
pub fn is_alive(last_heartbeat_ms: i64, now_ms: i64, within: Duration) -> bool {
    now_ms.saturating_sub(last_heartbeat_ms) <= within.as_millis() as i64
}

/// Who this replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub hostname: String,
    pub api_address: String,
    pub kds_address: String,
    pub started_at_ms: i64,
}

impl Identity {
    /// A new identity: a random id, this host's name, now.
    pub fn new(api_address: String, kds_address: String) -> Self {
        let bytes: [u8; 6] = rand::random();
        Self {
            id: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            hostname: hostname(),
            api_address,
            kds_address,
            started_at_ms: common::clock::now_ms(),
        }
    }
}

/// The replicas and zones as the store holds them now.
pub struct Snapshot {
    /// Replica records with their JSON text as read (for compare-and-set).
    pub replicas: Vec<(ReplicaRecord, String)>,
    /// Zone records with their JSON text as read (for compare-and-set).
    pub zones: Vec<(ZoneRecord, String)>,
    pub now_ms: i64,
}

impl Snapshot {
    fn alive(&self, r: &ReplicaRecord) -> bool {
        is_alive(r.last_heartbeat_ms, self.now_ms, ALIVE_WITHIN)
    }

    /// The API view: every replica, sorted by id, with the online zones it holds.
    pub fn present(&self) -> Vec<ReplicaView> {
        let leader = self.leader().map(|r| r.id.clone());
        let mut out: Vec<ReplicaView> = self
            .replicas
            .iter()
            .map(|(r, _)| {
                let alive = self.alive(r);
                let zones: BTreeSet<String> = self
                    .zones
                    .iter()
                    .filter(|(z, _)| z.online && z.replica == r.id)
                    .map(|(z, _)| z.name.clone())
                    .collect();
                ReplicaView {
                    id: r.id.clone(),
                    hostname: r.hostname.clone(),
                    api_address: r.api_address.clone(),
                    kds_address: r.kds_address.clone(),
                    started_at: common::clock::rfc3339_ms(r.started_at_ms),
                    last_heartbeat: common::clock::rfc3339_ms(r.last_heartbeat_ms),
                    alive,
                    leader: leader.as_deref() == Some(r.id.as_str()),
                    zones: zones.into_iter().collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The leader: of the alive replicas that held the lock at their last heartbeat, the one
    /// heard of last. The lock has one holder at a time and a round takes it before it writes the
    /// heartbeat, so a later claim is the truth (an earlier claimant died or lost the lock since).
    pub fn leader(&self) -> Option<&ReplicaRecord> {
        self.replicas
            .iter()
            .map(|(r, _)| r)
            .filter(|r| r.leader && self.alive(r))
            .max_by_key(|r| r.last_heartbeat_ms)
    }

    /// The zones the leader must mark offline: online, held by a replica that is not alive (or
    /// whose record is gone).
    fn orphaned(&self) -> Vec<&(ZoneRecord, String)> {
        self.zones
            .iter()
            .filter(|(z, _)| {
                z.online
                    && !z.replica.is_empty()
                    && !self
                        .replicas
                        .iter()
                        .any(|(r, _)| r.id == z.replica && self.alive(r))
            })
            .collect()
    }

    /// Replica records the leader removes: dead for `prune_after` (on sled every other one: a
    /// sled store has one process).
    fn prunable(&self, me: &str, prune_after: Duration) -> Vec<&(ReplicaRecord, String)> {
        self.replicas
            .iter()
            .filter(|(r, _)| r.id != me && !is_alive(r.last_heartbeat_ms, self.now_ms, prune_after))
            .collect()
    }
}

fn parse<T: serde::de::DeserializeOwned>(fresh: &FreshRecords) -> Vec<(T, String)> {
    fresh
        .records
        .iter()
        .filter_map(|(key, text)| match serde_json::from_str(text) {
            Ok(v) => Some((v, text.clone())),
            Err(e) => {
                tracing::debug!(key, error = %e, "unreadable record skipped");
                None
            }
        })
        .collect()
}

struct State {
    leader: bool,
    /// Whether the last heartbeat failed (logged once per change).
    failing: bool,
    /// Rounds run.
    rounds: u64,
}

/// This replica: its identity, its heartbeat and leadership. Cheap to clone.
#[derive(Clone)]
pub struct Replicas {
    identity: Arc<Identity>,
    coordinator: Arc<Coordinator>,
    state: Arc<Mutex<State>>,
}

impl Replicas {
    pub fn new(store: &Store, identity: Identity) -> Self {
        Self {
            identity: Arc::new(identity),
            coordinator: Arc::new(Coordinator::new(store)),
            state: Arc::new(Mutex::new(State {
                leader: false,
                failing: false,
                rounds: 0,
            })),
        }
    }

    pub fn id(&self) -> &str {
        &self.identity.id
    }

    /// The coordination of the store's replicas (shared with `kds::Zones`).
    pub fn coordinator(&self) -> Arc<Coordinator> {
        self.coordinator.clone()
    }

    /// Whether this replica was the leader at its last round.
    pub fn is_leader(&self) -> bool {
        self.lock().leader
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replicas and zones as the store holds them now.
    pub async fn snapshot(&self) -> Result<Snapshot, CoordinationError> {
        let replicas = self.coordinator.list(TREE).await?;
        let zones = self.coordinator.list(ZONES_TREE).await?;
        Ok(Snapshot {
            replicas: parse(&replicas),
            zones: parse(&zones),
            now_ms: replicas.now_ms,
        })
    }

    /// One round: leadership, heartbeat, then (leader) the work that runs once, and the zone
    /// records of other replicas adopted.
    pub async fn round(&self, zones: &Zones) {
        let leader = match self.coordinator.lead().await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "leader lock not reachable");
                false
            }
        };
        let was = std::mem::replace(&mut self.lock().leader, leader);
        if leader != was {
            if leader {
                tracing::info!(replica = %self.id(), "this replica became the leader");
            } else {
                tracing::warn!(replica = %self.id(), "this replica lost the leadership");
            }
        }
        let record = ReplicaRecord {
            id: self.identity.id.clone(),
            hostname: self.identity.hostname.clone(),
            api_address: self.identity.api_address.clone(),
            kds_address: self.identity.kds_address.clone(),
            started_at_ms: self.identity.started_at_ms,
            last_heartbeat_ms: 0,
            leader,
        };
        let value = serde_json::to_value(&record).expect("a replica record serializes");
        let beat = self.coordinator.heartbeat(TREE, self.id(), &value).await;
        {
            let mut state = self.lock();
            match (&beat, state.failing) {
                (Err(e), false) => {
                    tracing::warn!(error = %e, "replica heartbeat failed: other replicas will see this one dead until it resumes");
                    state.failing = true;
                }
                (Ok(_), true) => {
                    tracing::info!("replica heartbeat resumed");
                    state.failing = false;
                }
                _ => {}
            }
        }
        let first = {
            let mut state = self.lock();
            state.rounds += 1;
            state.rounds == 1
        };
        // A sled store has this one process: nothing to adopt, no zone of another replica; the
        // records of earlier runs are pruned once.
        if beat.is_err() || !self.coordinator.is_shared() && !first {
            return;
        }
        let snapshot = match self.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "replica records not readable");
                return;
            }
        };
        let marked = leader && self.lead_round(&snapshot).await;
        if self.coordinator.is_shared() {
            // Let this replica show what the others hold (read again after the leader's marks).
            let fresh = if marked {
                match self.coordinator.list(ZONES_TREE).await {
                    Ok(f) => parse::<ZoneRecord>(&f),
                    Err(_) => return,
                }
            } else {
                snapshot.zones
            };
            zones.adopt(fresh.into_iter().map(|(z, _)| z).collect());
        }
    }

    /// What the leader runs once per round; returns whether it marked a zone offline.
    async fn lead_round(&self, snapshot: &Snapshot) -> bool {
        let mut marked = false;
        for (zone, text) in snapshot.orphaned() {
            let mut offline = zone.clone();
            offline.online = false;
            offline.last_disconnect_ms = snapshot.now_ms.max(0) as u64;
            offline.last_disconnect_reason = format!(
                "global replica {} holding the stream stopped heartbeating",
                zone.replica
            );
            offline.disconnects += 1;
            let value = serde_json::to_value(&offline).expect("a zone record serializes");
            match self
                .coordinator
                .compare_and_set(ZONES_TREE, &zone.name, Some(text), Some(&value))
                .await
            {
                Ok(true) => {
                    marked = true;
                    tracing::info!(zone = %zone.name, replica = %zone.replica, "zone marked offline: the replica holding its stream is dead");
                }
                Ok(false) => {} // it reconnected meanwhile
                Err(e) => tracing::debug!(zone = %zone.name, error = %e, "zone not marked offline"),
            }
        }
        let prune_after = if self.coordinator.is_shared() {
            PRUNE_AFTER
        } else {
            Duration::ZERO
        };
        for (r, text) in snapshot.prunable(self.id(), prune_after) {
            match self
                .coordinator
                .compare_and_set(TREE, &r.id, Some(text), None)
                .await
            {
                Ok(true) => {
                    tracing::info!(replica = %r.id, "record of a long dead replica removed")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(replica = %r.id, error = %e, "replica record not removed")
                }
            }
        }
        marked
    }

    /// Runs rounds every `HEARTBEAT` until `shutdown`; then gives up the leadership.
    pub async fn run(self, zones: Zones, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => break,
            }
            // A round waiting on an unreachable store does not hold up the shutdown.
            tokio::select! {
                _ = self.round(&zones) => {}
                _ = shutdown.wait() => break,
            }
        }
        self.coordinator.resign().await;
        if self.lock().leader {
            tracing::info!(replica = %self.id(), "leadership given up: stopping");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_800_000_000_000;

    fn replica(id: &str, last: i64, leader: bool) -> (ReplicaRecord, String) {
        let r = ReplicaRecord {
            id: id.into(),
            last_heartbeat_ms: last,
            leader,
            ..Default::default()
        };
        let text = serde_json::to_string(&r).unwrap();
        (r, text)
    }

    fn zone(name: &str, replica: &str, online: bool) -> (ZoneRecord, String) {
        let z = ZoneRecord {
            name: name.into(),
            replica: replica.into(),
            online,
            ..Default::default()
        };
        let text = serde_json::to_string(&z).unwrap();
        (z, text)
    }

    #[test]
    fn aliveness_from_timestamps() {
        let w = Duration::from_secs(6);
        assert!(is_alive(T, T, w));
        assert!(is_alive(T - 6_000, T, w));
        assert!(!is_alive(T - 6_001, T, w));
        // A stamp ahead of the reader's clock is alive.
        assert!(is_alive(T + 500, T, w));
        assert!(!is_alive(0, T, w));
    }

    #[test]
    fn view_leader_is_alive_only_and_zones_follow_their_replica() {
        let s = Snapshot {
            replicas: vec![
                replica("b", T - 1_000, false),
                replica("a", T - 60_000, true),
            ],
            zones: vec![
                zone("east", "a", true),
                zone("west", "b", true),
                zone("north", "b", false),
            ],
            now_ms: T,
        };
        let v = s.present();
        assert_eq!(v[0].id, "a");
        assert!(!v[0].alive);
        assert!(!v[0].leader, "a dead replica is never shown leading");
        assert_eq!(v[0].zones, vec!["east".to_string()]);
        assert!(v[1].alive);
        assert_eq!(v[1].zones, vec!["west".to_string()]);
        let orphaned: Vec<&str> = s.orphaned().iter().map(|(z, _)| z.name.as_str()).collect();
        assert_eq!(orphaned, vec!["east"]);
        assert!(s.prunable("b", PRUNE_AFTER).is_empty());
        assert_eq!(s.prunable("b", Duration::from_secs(30))[0].0.id, "a");
        // Two alive claimants (the old leader died a moment ago): the later claim leads.
        let s = Snapshot {
            replicas: vec![replica("a", T - 3_000, true), replica("b", T - 1_000, true)],
            zones: vec![],
            now_ms: T,
        };
        let v = s.present();
        assert_eq!((v[0].leader, v[1].leader), (false, true));
        assert_eq!(s.leader().unwrap().id, "b");
    }
}
