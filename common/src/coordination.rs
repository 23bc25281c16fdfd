//! What the replicas of one store coordinate through, beside the resources: fresh reads of a
//! record tree as the database holds it now (not the replica's copy), a compare-and-set of one
//! record, a heartbeat that stamps a record with the store's own clock, and the leader lock. On
//! PostgreSQL these run on connections of their own (one for records, one holding the lock), so
//! they never wait behind the resource writes. The leader lock is a session-level
//! `pg_try_advisory_lock` held by its dedicated connection: it goes when that connection dies (a
//! SIGKILLed leader's socket is closed by the kernel, so the server drops its lock at once), and
//! that session sets `idle_session_timeout` so that a leader that hangs while holding it loses it
//! too. On sled there is a single process per store (sled locks its directory): it is always the
//! leader, and its record trees are the fresh state.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::store::{Store, StoreError};
use crate::store_pg::pg_err;

/// The advisory lock key of the leader ("kmesh" + 2).
const LEADER_LOCK: i64 = 0x6b6d_6573_6802;
/// A leader whose lock session stays idle this long (it hung) loses the lock.
const LOCK_IDLE_TIMEOUT: &str = "15s";
/// The bound of every statement here.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The name of the JSON field a heartbeat stamps with the store's clock (unix milliseconds).
pub const HEARTBEAT_FIELD: &str = "lastHeartbeatMs";

/// Fresh records of one tree, with the store's clock when they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshRecords {
    /// `(key, JSON text)`, sorted by key.
    pub records: Vec<(String, String)>,
    /// The store's clock at the read, unix milliseconds (PostgreSQL's, or this process's on sled).
    pub now_ms: i64,
}

/// A coordination call that failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store (PostgreSQL) did not answer within {0:?}")]
    Timeout(Duration),
}

/// Coordination of the replicas of a store.
pub struct Coordinator {
    backend: Backend,
}

enum Backend {
    Sled(Store),
    Pg(Box<PgSessions>),
}

/// The PostgreSQL sessions of coordination.
struct PgSessions {
    config: tokio_postgres::Config,
    /// Record reads and writes.
    client: tokio::sync::Mutex<Option<Client>>,
    /// The session that holds (or tries to take) the leader lock, and whether it holds it.
    lock: tokio::sync::Mutex<Option<(Client, bool)>>,
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, StoreError> {
    let (client, connection) = config.connect(NoTls).await.map_err(pg_err)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL coordination connection ended");
        }
    });
    Ok(client)
}

/// Runs `f` bounded by `STATEMENT_TIMEOUT`; a timeout counts as the store being unreachable.
async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, CoordinationError> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(CoordinationError::Timeout(STATEMENT_TIMEOUT)),
    }
}

const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

impl Coordinator {
    /// The coordinator of `store`'s replicas (nothing is connected before the first call).
    pub fn new(store: &Store) -> Self {
        let backend = match store.pg() {
            Some(pg) => Backend::Pg(Box::new(PgSessions {
                config: pg.config().clone(),
                client: tokio::sync::Mutex::new(None),
                lock: tokio::sync::Mutex::new(None),
            })),
            None => Backend::Sled(store.clone()),
        };
        Self { backend }
    }

    /// Whether several processes may share the store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    /// Runs `f` on the records connection, reconnecting when it was lost.
    async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, CoordinationError> {
        let Backend::Pg(pg) = &self.backend else {
            unreachable!("only called on PostgreSQL");
        };
        let PgSessions { config, client, .. } = &**pg;
        bounded(async {
            let mut guard = client.lock().await;
            if guard.as_ref().is_none_or(|c| c.is_closed()) {
                *guard = Some(connect(config).await?);
            }
            let c = guard.as_ref().expect("connected just above");
            let r = f(c).await.map_err(pg_err);
            if c.is_closed() {
                *guard = None;
            }
            r
        })
        .await
    }

    /// Every record of `tree` as the store holds it now.
    pub async fn list(&self, tree: &str) -> Result<FreshRecords, CoordinationError> {
        if let Backend::Sled(store) = &self.backend {
            let records = store
                .records(tree)?
                .list::<serde_json::Value>()?
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect();
            return Ok(FreshRecords {
                records,
                now_ms: crate::clock::now_ms(),
            });
        }
        let tree = tree.to_string();
        self.with_client(async move |c| {
            let now: i64 = c.query_one(&format!("SELECT {NOW_MS}"), &[]).await?.get(0);
            let rows = c
                .query(
                    "SELECT key, value FROM records WHERE tree = $1 ORDER BY key",
                    &[&tree],
                )
                .await?;
            Ok(FreshRecords {
                records: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
                now_ms: now,
            })
        })
        .await
    }

    /// Record `key` of `tree` (its JSON text) as the store holds it now.
    pub async fn get(&self, tree: &str, key: &str) -> Result<Option<String>, CoordinationError> {
        if let Backend::Sled(store) = &self.backend {
            return Ok(store
                .records(tree)?
                .get::<serde_json::Value>(key)?
                .map(|v| v.to_string()));
        }
        let (tree, key) = (tree.to_string(), key.to_string());
        self.with_client(async move |c| {
            let row = c
                .query_opt(
                    "SELECT value FROM records WHERE tree = $1 AND key = $2",
                    &[&tree, &key],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    /// Writes `value` (a JSON object) as record `key` of `tree`, with `HEARTBEAT_FIELD` set to the
    /// store's clock. Returns the stamp.
    pub async fn heartbeat(
        &self,
        tree: &str,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<i64, CoordinationError> {
        if let Backend::Sled(store) = &self.backend {
            let now = crate::clock::now_ms();
            let mut value = value.clone();
            if let Some(m) = value.as_object_mut() {
                m.insert(HEARTBEAT_FIELD.into(), now.into());
            }
            store.records(tree)?.put_buffered(key, &value)?;
            return Ok(now);
        }
        let (tree, key, text) = (tree.to_string(), key.to_string(), value.to_string());
        self.with_client(async move |c| {
            let row = c
                .query_one(
                    &format!(
                        "INSERT INTO records (tree, key, value)
                         VALUES ($1, $2, jsonb_set($3::text::jsonb, '{{{HEARTBEAT_FIELD}}}', to_jsonb({NOW_MS}))::text)
                         ON CONFLICT (tree, key) DO UPDATE SET value = excluded.value
                         RETURNING (value::jsonb ->> '{HEARTBEAT_FIELD}')::bigint"
                    ),
                    &[&tree, &key, &text],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    /// Replaces record `key` of `tree` by `new` (`None`: removes it) only if it is still exactly
    /// `old` (the JSON text `list` returned; `None`: absent). Returns whether it was replaced.
    pub async fn compare_and_set(
        &self,
        tree: &str,
        key: &str,
        old: Option<&str>,
        new: Option<&serde_json::Value>,
    ) -> Result<bool, CoordinationError> {
        if let Backend::Sled(store) = &self.backend {
            // One process per sled store: nothing can come between the read and the write but
            // this process, whose writers of a record are the record's own owner.
            let records = store.records(tree)?;
            let current = records
                .get::<serde_json::Value>(key)?
                .map(|v| v.to_string());
            if current.as_deref() != old {
                return Ok(false);
            }
            match new {
                Some(v) => records.put(key, v).await?,
                None => {
                    records.remove(key).await?;
                }
            }
            return Ok(true);
        }
        let (tree, key) = (tree.to_string(), key.to_string());
        let old = old.map(str::to_string);
        let new = new.map(|v| v.to_string());
        self.with_client(async move |c| {
            let n = match (old, new) {
                (Some(old), Some(new)) => {
                    c.execute(
                        "UPDATE records SET value = $4 WHERE tree = $1 AND key = $2 AND value = $3",
                        &[&tree, &key, &old, &new],
                    )
                    .await?
                }
                (Some(old), None) => {
                    c.execute(
                        "DELETE FROM records WHERE tree = $1 AND key = $2 AND value = $3",
                        &[&tree, &key, &old],
                    )
                    .await?
                }
                (None, Some(new)) => {
                    c.execute(
                        "INSERT INTO records (tree, key, value) VALUES ($1, $2, $3)
                         ON CONFLICT (tree, key) DO NOTHING",
                        &[&tree, &key, &new],
                    )
                    .await?
                }
                (None, None) => 0,
            };
            Ok(n > 0)
        })
        .await
    }

    /// Whether this process is the leader now: takes the leader lock when it is free, keeps it
    /// while its session lives. Call it every few seconds; an error means not the leader.
    pub async fn lead(&self) -> Result<bool, CoordinationError> {
        let Backend::Pg(pg) = &self.backend else {
            return Ok(true);
        };
        let PgSessions { config, lock, .. } = &**pg;
        bounded(async {
            let mut guard = lock.lock().await;
            if guard.as_ref().is_some_and(|(c, _)| c.is_closed()) {
                *guard = None;
            }
            let result = async {
                if guard.is_none() {
                    let c = connect(config).await?;
                    // Ignored before PostgreSQL 14, which lacks the setting.
                    let _ = c
                        .batch_execute(&format!("SET idle_session_timeout = '{LOCK_IDLE_TIMEOUT}'"))
                        .await;
                    *guard = Some((c, false));
                }
                let (c, held) = guard.as_mut().expect("connected just above");
                if *held {
                    // Keeps the session busy (so not idle) and checks it still lives.
                    c.batch_execute("SELECT 1").await.map_err(pg_err)?;
                } else {
                    *held = c
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                        .await
                        .map_err(pg_err)?
                        .get(0);
                }
                Ok(*held)
            }
            .await;
            if result.is_err() {
                // The session (and any lock it held) is gone or unusable: start over.
                *guard = None;
            }
            result
        })
        .await
    }

    /// Gives up the leader lock (shutdown): its session is closed, so another replica takes it at
    /// once.
    pub async fn resign(&self) {
        if let Backend::Pg(pg) = &self.backend {
            let taken = pg.lock.lock().await.take();
            // Released before the session closes: the server notices a closed session a moment
            // later, and another replica may ask meanwhile.
            if let Some((c, true)) = &taken {
                let _ = bounded(async {
                    c.execute("SELECT pg_advisory_unlock($1)", &[&LEADER_LOCK])
                        .await
                        .map_err(pg_err)
                })
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two replicas on one database: one lock holder at a time, taken over at once when the
    /// holder resigns; heartbeats carry the store's clock; compare-and-set refuses a stale read.
    #[tokio::test]
    async fn postgres_one_leader_stamped_heartbeats_and_compare_and_set() {
        let pg = testkit::postgres::PgServer::start().unwrap();
        // Replicas share the Secrets key.
        let key = std::sync::Arc::new(crate::sealing::SecretsKey::generate().unwrap());
        let (a, b) = (
            Store::connect(&pg.url(), key.clone()).await.unwrap(),
            Store::connect(&pg.url(), key).await.unwrap(),
        );
        let (a, b) = (Coordinator::new(&a), Coordinator::new(&b));
        assert!(a.is_shared());
        assert!(a.lead().await.unwrap());
        assert!(!b.lead().await.unwrap());
        assert!(a.lead().await.unwrap(), "the holder keeps it");
        a.resign().await;
        assert!(b.lead().await.unwrap());
        assert!(!a.lead().await.unwrap());

        let stamp = a
            .heartbeat("t", "r1", &serde_json::json!({"id": "r1"}))
            .await
            .unwrap();
        let fresh = b.list("t").await.unwrap();
        assert!((fresh.now_ms - stamp).abs() < 60_000);
        assert_eq!(fresh.records.len(), 1);
        let (key, text) = &fresh.records[0];
        assert_eq!(key, "r1");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v[HEARTBEAT_FIELD], stamp);
        // Another write since the read: the stale compare fails, a fresh one wins.
        a.heartbeat("t", "r1", &serde_json::json!({"id": "r1", "n": 2}))
            .await
            .unwrap();
        assert!(
            !b.compare_and_set("t", "r1", Some(text), None)
                .await
                .unwrap()
        );
        let now = b.get("t", "r1").await.unwrap().unwrap();
        assert!(
            b.compare_and_set("t", "r1", Some(&now), None)
                .await
                .unwrap()
        );
        assert!(b.get("t", "r1").await.unwrap().is_none());
        let new = serde_json::json!({"x": 1});
        assert!(b.compare_and_set("t", "k", None, Some(&new)).await.unwrap());
        assert!(!a.compare_and_set("t", "k", None, Some(&new)).await.unwrap());
    }

    #[tokio::test]
    async fn a_sled_store_always_leads() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(dir.path(), crate::sealing::SecretsKey::generate().unwrap()).unwrap();
        let c = Coordinator::new(&store);
        assert!(!c.is_shared());
        assert!(c.lead().await.unwrap());
        c.heartbeat("t", "r", &serde_json::json!({"id": "r"}))
            .await
            .unwrap();
        let fresh = c.list("t").await.unwrap();
        let text = fresh.records[0].1.clone();
        assert!(
            c.compare_and_set("t", "r", Some(&text), None)
                .await
                .unwrap()
        );
        assert!(c.list("t").await.unwrap().records.is_empty());
    }
}
