//! The PostgreSQL backend of `store::Store`, for global replicas sharing one database. Each replica
//! holds the whole resource set and the record trees in memory, so reads stay synchronous and keep
//! answering while PostgreSQL is unreachable. Concurrent writes of a replica commit in groups; a
//! group is one transaction that first locks the
//! one-row `revision` table (which serializes writers across replicas), catches up with what other
//! replicas committed since this one last looked, checks what the writer expects, writes rows
//! carrying their content hash (the per-resource version, the same on every replica) and the
//! revision of their last change (deletions leave tombstones), bumps the revision and `NOTIFY`s.
//! A listener task on its own connection `LISTEN`s and reads every row with `revision >
//! last_seen` on each notification and every few seconds, so a missed notification loses nothing
//! and the store's revision watch fires on every replica. The schema is versioned
//! (`schema_migrations`); migrations are embedded and applied on connect; a database migrated by
//! a newer binary is refused. A Secret's or Mesh's spec is sealed (`store_sealing`): its row holds the
//! envelope in `sealed` and no `spec`; rows an older version wrote in plain text are sealed on
//! connect, in one transaction, hash and revision untouched (so no replica or zone sees a change).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, Client, GenericClient, NoTls};

use crate::model::Kind;
use crate::store::{
    Existing, Expect, Op, Outcome, ResourceKey, Store, StoreError, StoredResource, index_changes,
    prepare, replacement,
};
use crate::store_sealing::{KEY_ID_SHARED, Sealing, sealed_kind};

/// A version index change: the key and its new version (`None`: deleted).
type IndexChange = (ResourceKey, Option<String>);

/// The notification channel of revision changes.
const CHANNEL: &str = "kmesh_revision";
/// How often a replica looks for changes without a notification.
const POLL: Duration = Duration::from_secs(2);
/// Serializes migrations of replicas starting at once.
const MIGRATION_LOCK: i64 = 0x6b6d_6573_6801;

/// The schema, one entry per version, applied in order and never edited once released.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE revision (id int PRIMARY KEY CHECK (id = 1), value bigint NOT NULL);
     INSERT INTO revision VALUES (1, 0);
     CREATE TABLE resources (
         kind text NOT NULL, mesh text NOT NULL, name text NOT NULL,
         hash text, -- NULL: deleted (a tombstone, so that other replicas see the delete)
         revision bigint NOT NULL,
         created_unix bigint NOT NULL, modified_unix bigint NOT NULL,
         spec text,
         PRIMARY KEY (kind, mesh, name));
     CREATE INDEX resources_by_revision ON resources (revision);
     CREATE TABLE records (tree text NOT NULL, key text NOT NULL, value text NOT NULL,
         PRIMARY KEY (tree, key));
     CREATE TABLE shared (name text PRIMARY KEY, value text NOT NULL);",
    ),
    // The envelope of a sealed spec (Secrets): `spec` is then NULL.
    (2, "ALTER TABLE resources ADD COLUMN sealed bytea;"),
];

/// The newest schema version this binary knows.
fn known_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// A refused statement is `Postgres`; a lost connection, a server shutting down (class 57) or a
/// connection failure (class 08) is `Unavailable`.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let refused = e.as_db_error().is_some_and(|db| {
        let code = db.code().code();
        !(code.starts_with("57") || code.starts_with("08"))
    });
    if refused && !e.is_closed() {
        StoreError::Postgres {
            source: Arc::new(e),
        }
    } else {
        StoreError::Unavailable {
            source: Arc::new(e),
        }
    }
}

fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| StoreError::Url {
            reason: e.to_string(),
        })
}

async fn connect_client(config: &tokio_postgres::Config) -> Result<Client, StoreError> {
    let (client, connection) = config.connect(NoTls).await.map_err(pg_err)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    // A replica that hangs (SIGSTOP, a frozen VM) in the middle of a write keeps its transaction,
    // and with it the lock on the revision row, which every other replica's writes wait for:
    // PostgreSQL ends such a session after this long, so a hung replica stalls the others' writes
    // for seconds, never until it is killed.
    client
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}'"
        ))
        .await
        .map_err(pg_err)?;
    Ok(client)
}

/// How long a session may sit inside a transaction without sending anything.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "5s";

async fn migrate(client: &mut Client) -> Result<i64, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version bigint PRIMARY KEY, applied_unix bigint NOT NULL)",
    )
    .await
    .map_err(pg_err)?;
    let current: Option<i64> = tx
        .query_one("SELECT max(version) FROM schema_migrations", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    let current = current.unwrap_or(0);
    if current > known_version() {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known: known_version(),
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO schema_migrations VALUES ($1, $2)",
            &[version, &crate::clock::now_unix()],
        )
        .await
        .map_err(pg_err)?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(known_version())
}

/// Refuses a key other than the one the replicas of this database seal with: the first replica
/// to connect names its key's id in `shared`, and every later one must hold the same key (so a
/// replica given another file never starts, even before any Secret is stored). A replica whose
/// extra keys hold the one named rotates the store to its own key: every row is sealed again
/// ([`seal_plain_rows`]) and then its key is named. Returns whether it rotates.
async fn check_key(client: &Client, sealing: &Sealing) -> Result<bool, StoreError> {
    let Some(id) = sealing.key_id() else {
        return Ok(false);
    };
    client
        .execute(
            "INSERT INTO shared (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&KEY_ID_SHARED, &id.to_string()],
        )
        .await
        .map_err(pg_err)?;
    let stored: String = client
        .query_one(
            "SELECT value FROM shared WHERE name = $1",
            &[&KEY_ID_SHARED],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    match crate::sealing::KeyId::parse(&stored) {
        Some(theirs) if theirs == id => Ok(false),
        Some(theirs) if sealing.opens(theirs) => Ok(true),
        Some(theirs) => Err(sealing.refusal(
            "the Secrets of this PostgreSQL store (its replicas seal with another key)".into(),
            crate::sealing::SealError::OtherKey {
                sealed_with: theirs,
                held: id,
            },
        )),
        None => Err(StoreError::Corrupt {
            key: format!("shared value {KEY_ID_SHARED}"),
            reason: format!("{stored:?} is not a key id"),
        }),
    }
}

/// Seals, in one transaction, every row of a sealed kind an older version stored in plain text
/// (its spec moves into `sealed`; hash, revision and times stay, so no replica or zone sees a
/// change) or an extra key sealed (a rotation); returns how many in all. Replicas starting at once take
/// turns (the migration lock); a row changed meanwhile (its hash moved) is left to its writer.
async fn seal_plain_rows(client: &mut Client, sealing: &Sealing) -> Result<usize, StoreError> {
    let Some(current) = sealing.key_id() else {
        return Ok(0);
    };
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    let (mut plain, mut rotated) = (0u64, 0u64);
    for kind in [Kind::Mesh, Kind::Secret, Kind::Dataplane] {
        if !sealed_kind(kind) {
            continue;
        }
        let rows = tx
            .query(
                "SELECT mesh, name, hash, spec, sealed FROM resources
                 WHERE kind = $1 AND hash IS NOT NULL
                   AND (sealed IS NULL OR substring(sealed FROM 2 FOR 8) <> $2) FOR UPDATE",
                &[&kind.as_str(), &current.as_bytes()],
            )
            .await
            .map_err(pg_err)?;
        for row in rows {
            let key = ResourceKey::new(kind, row.get(0), row.get(1));
            let hash: String = row.get(2);
            let spec: Option<String> = row.get(3);
            let old: Option<Vec<u8>> = row.get(4);
            let was_plain = old.is_none();
            let spec: serde_json::Value = match old {
                Some(e) if sealing.is_current(&e) => continue,
                Some(e) => sealing.open(&key, &e)?,
                None => serde_json::from_str(spec.as_deref().unwrap_or("null")).map_err(|e| {
                    StoreError::Corrupt {
                        key: format!("{key:?}"),
                        reason: e.to_string(),
                    }
                })?,
            };
            let Some(envelope) = sealing.seal(&key, &spec)? else {
                continue;
            };
            let changed = tx
                .execute(
                    "UPDATE resources SET spec = NULL, sealed = $4
                     WHERE kind = $1 AND mesh = $2 AND name = $3 AND hash = $5",
                    &[&kind.as_str(), &key.mesh, &key.name, &envelope, &hash],
                )
                .await
                .map_err(pg_err)?;
            *(if was_plain { &mut plain } else { &mut rotated }) += changed;
        }
    }
    tx.commit().await.map_err(pg_err)?;
    if plain > 0 {
        tracing::info!(
            resources = plain,
            "sealed the Secrets and Meshes an older version stored in plain text (PostgreSQL)"
        );
    }
    if rotated > 0 {
        tracing::info!(
            resources = rotated,
            "sealed again with the key the Secrets and Meshes an extra key sealed (PostgreSQL)"
        );
    }
    let sealed = usize::try_from(plain + rotated).unwrap_or(usize::MAX);
    if sealed > 0 {
        // The plain rows are dead tuples now: rewriting the table drops them from its files
        // (PostgreSQL's WAL and backups made before keep them until they are recycled).
        if let Err(e) = client.batch_execute("VACUUM FULL resources").await {
            tracing::warn!(error = %e, "VACUUM FULL resources failed: the plain rows an older version wrote stay in the table's free space until PostgreSQL reuses it");
        }
    }
    Ok(sealed)
}

pub(crate) async fn migrate_only(url: &str) -> Result<i64, StoreError> {
    let mut client = connect_client(&parse_url(url)?).await?;
    migrate(&mut client).await
}

/// What a replica holds of the database.
#[derive(Default)]
struct Mem {
    resources: BTreeMap<Vec<u8>, StoredResource>,
    records: HashMap<String, BTreeMap<String, Vec<u8>>>,
}

/// The PostgreSQL side of a store: the connection writes use and the replica's copy.
pub struct Pg {
    config: tokio_postgres::Config,
    /// The connection of writes (under the store's write lock) and record writes; `None` after
    /// it was lost, until the next write reconnects.
    client: tokio::sync::Mutex<Option<Client>>,
    mem: RwLock<Mem>,
    /// Whether the last contact with PostgreSQL (a write, a catch-up, the listener) worked.
    reachable: std::sync::atomic::AtomicBool,
    /// When the last catch-up on the write connection started: requests that arrived before it
    /// need no catch-up of their own once it is done (concurrent reads share one).
    caught_up_from: std::sync::Mutex<std::time::Instant>,
    /// Batches waiting for the next group commit (see `write`).
    queue: std::sync::Mutex<std::collections::VecDeque<Pending>>,
    /// How Secrets are sealed in their rows.
    sealing: Sealing,
}

fn kind_of(s: &str) -> Option<Kind> {
    [Kind::Mesh, Kind::Secret, Kind::Dataplane]
        .into_iter()
        .find(|k| k.as_str() == s)
}

/// One row of `resources`: the resource (its spec unsealed), or `None` for a tombstone.
fn row_resource(
    row: &tokio_postgres::Row,
    sealing: &Sealing,
) -> Result<(ResourceKey, Option<StoredResource>, u64), StoreError> {
    let kind: String = row.get("kind");
    let key = ResourceKey {
        kind: kind_of(&kind).ok_or_else(|| StoreError::Corrupt {
            key: kind.clone(),
            reason: "unknown kind".into(),
        })?,
        mesh: row.get("mesh"),
        name: row.get("name"),
    };
    let revision = u64::try_from(row.get::<_, i64>("revision")).unwrap_or(0);
    let hash: Option<String> = row.get("hash");
    let Some(hash) = hash else {
        return Ok((key, None, revision));
    };
    let sealed: Option<Vec<u8>> = row.get("sealed");
    let spec = match sealed {
        Some(envelope) => sealing.open(&key, &envelope)?,
        None => {
            let spec: Option<String> = row.get("spec");
            serde_json::from_str(spec.as_deref().unwrap_or("null")).map_err(|e| {
                StoreError::Corrupt {
                    key: format!("{key:?}"),
                    reason: e.to_string(),
                }
            })?
        }
    };
    let stored = StoredResource {
        key: key.clone(),
        hash,
        revision,
        created_unix: u64::try_from(row.get::<_, i64>("created_unix")).unwrap_or(0),
        modified_unix: u64::try_from(row.get::<_, i64>("modified_unix")).unwrap_or(0),
        spec,
    };
    Ok((key, Some(stored), revision))
}

const COLUMNS: &str = "kind, mesh, name, hash, revision, created_unix, modified_unix, spec, sealed";

impl Pg {
    /// Connects, migrates and loads everything: the backend, the resources and the revision.
    pub(crate) async fn connect(
        url: &str,
        sealing: Sealing,
    ) -> Result<(Arc<Pg>, Vec<StoredResource>, u64), StoreError> {
        let config = parse_url(url)?;
        let mut client = connect_client(&config).await?;
        migrate(&mut client).await?;
        let rotating = check_key(&client, &sealing).await?;
        seal_plain_rows(&mut client, &sealing).await?;
        if rotating && let Some(id) = sealing.key_id() {
            client
                .execute(
                    "UPDATE shared SET value = $2 WHERE name = $1",
                    &[&KEY_ID_SHARED, &id.to_string()],
                )
                .await
                .map_err(pg_err)?;
            tracing::info!(key_id = %id, "the replicas of this PostgreSQL store seal with this key from now on");
        }
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err)?;
        let revision: i64 = tx
            .query_one("SELECT value FROM revision WHERE id = 1", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        let mut mem = Mem::default();
        let mut resources = Vec::new();
        let rows = tx
            .query(
                &format!("SELECT {COLUMNS} FROM resources WHERE hash IS NOT NULL"),
                &[],
            )
            .await
            .map_err(pg_err)?;
        for row in &rows {
            if let (key, Some(r), _) = row_resource(row, &sealing)? {
                mem.resources.insert(key.encode(), r.clone());
                resources.push(r);
            }
        }
        for row in tx
            .query("SELECT tree, key, value FROM records", &[])
            .await
            .map_err(pg_err)?
        {
            let (tree, key, value): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            mem.records
                .entry(tree)
                .or_default()
                .insert(key, value.into_bytes());
        }
        tx.commit().await.map_err(pg_err)?;
        let pg = Arc::new(Pg {
            config,
            client: tokio::sync::Mutex::new(Some(client)),
            mem: RwLock::new(mem),
            reachable: std::sync::atomic::AtomicBool::new(true),
            caught_up_from: std::sync::Mutex::new(std::time::Instant::now()),
            queue: std::sync::Mutex::new(std::collections::VecDeque::new()),
            sealing,
        });
        Ok((pg, resources, u64::try_from(revision).unwrap_or(0)))
    }

    pub(crate) fn reachable(&self) -> bool {
        self.reachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes how the last contact with PostgreSQL went.
    fn note<T>(&self, result: &Result<T, StoreError>) {
        let down = matches!(result, Err(StoreError::Unavailable { .. }));
        self.reachable
            .store(!down, std::sync::atomic::Ordering::Relaxed);
    }

    fn mem(&self) -> std::sync::RwLockReadGuard<'_, Mem> {
        self.mem.read().unwrap_or_else(|e| e.into_inner())
    }

    fn mem_mut(&self) -> std::sync::RwLockWriteGuard<'_, Mem> {
        self.mem.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, key: &ResourceKey) -> Option<StoredResource> {
        self.mem().resources.get(&key.encode()).cloned()
    }

    pub(crate) fn list(&self, kind: Kind, mesh: Option<&str>) -> Vec<StoredResource> {
        let prefix = ResourceKey::prefix(kind, mesh);
        self.mem()
            .resources
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub(crate) fn record(&self, tree: &str, key: &str) -> Option<Vec<u8>> {
        self.mem()
            .records
            .get(tree)
            .and_then(|t| t.get(key))
            .cloned()
    }

    pub(crate) fn records(&self, tree: &str) -> Vec<(String, Vec<u8>)> {
        self.mem()
            .records
            .get(tree)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// The write connection, connected again when it was lost.
    async fn client<'a>(
        &self,
        guard: &'a mut tokio::sync::MutexGuard<'_, Option<Client>>,
    ) -> Result<&'a mut Client, StoreError> {
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            **guard = None;
            **guard = Some(connect_client(&self.config).await?);
        }
        Ok(guard.as_mut().expect("connected just above"))
    }

    /// Writes (or with `None` deletes) a record; returns whether it existed.
    pub(crate) async fn put_record(
        &self,
        tree: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let mut guard = self.client.lock().await;
        let client = self.client(&mut guard).await?;
        let result = match &value {
            Some(v) => {
                let text = String::from_utf8_lossy(v).into_owned();
                client
                    .execute(
                        "INSERT INTO records (tree, key, value) VALUES ($1, $2, $3)
                         ON CONFLICT (tree, key) DO UPDATE SET value = excluded.value",
                        &[&tree, &key, &text],
                    )
                    .await
            }
            None => {
                client
                    .execute(
                        "DELETE FROM records WHERE tree = $1 AND key = $2",
                        &[&tree, &key],
                    )
                    .await
            }
        };
        let n = result.map_err(pg_err)?;
        drop(guard);
        let mut mem = self.mem_mut();
        let t = mem.records.entry(tree.to_string()).or_default();
        match value {
            Some(v) => {
                t.insert(key.to_string(), v);
            }
            None => {
                t.remove(key);
            }
        }
        Ok(n > 0)
    }

    /// Holds the record at once and writes it in the background (bookkeeping that may lag).
    pub(crate) fn put_record_buffered(self: &Arc<Self>, tree: &str, key: &str, value: Vec<u8>) {
        self.mem_mut()
            .records
            .entry(tree.to_string())
            .or_default()
            .insert(key.to_string(), value.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (pg, tree, key) = (self.clone(), tree.to_string(), key.to_string());
            rt.spawn(async move {
                if let Err(e) = pg.put_record(&tree, &key, Some(value)).await {
                    tracing::debug!(error = %e, tree, key, "record not written to PostgreSQL");
                }
            });
        }
    }

    pub(crate) async fn shared_value(&self, name: &str) -> Result<Option<String>, StoreError> {
        let mut guard = self.client.lock().await;
        let client = self.client(&mut guard).await?;
        let row = client
            .query_opt("SELECT value FROM shared WHERE name = $1", &[&name])
            .await
            .map_err(pg_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(crate) async fn share(&self, name: &str, proposed: &str) -> Result<String, StoreError> {
        let mut guard = self.client.lock().await;
        let client = self.client(&mut guard).await?;
        client
            .execute(
                "INSERT INTO shared (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &proposed],
            )
            .await
            .map_err(pg_err)?;
        let row = client
            .query_one("SELECT value FROM shared WHERE name = $1", &[&name])
            .await
            .map_err(pg_err)?;
        Ok(row.get(0))
    }

    /// Sets the shared value `name` (insert or replace).
    pub(crate) async fn set_shared(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let mut guard = self.client.lock().await;
        let client = self.client(&mut guard).await?;
        client
            .execute(
                "INSERT INTO shared (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[&name, &value],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    /// Applies rows read from `resources` to the replica's copy; returns the index changes.
    fn apply_rows(
        &self,
        rows: &[tokio_postgres::Row],
    ) -> Result<(Vec<IndexChange>, u64), StoreError> {
        let mut changes = Vec::with_capacity(rows.len());
        let mut max = 0;
        let mut mem = self.mem_mut();
        for row in rows {
            let (key, stored, revision) = row_resource(row, &self.sealing)?;
            max = max.max(revision);
            match stored {
                Some(r) => {
                    changes.push((key.clone(), Some(r.hash.clone())));
                    mem.resources.insert(key.encode(), r);
                }
                None => {
                    if mem.resources.remove(&key.encode()).is_some() {
                        changes.push((key, None));
                    }
                }
            }
        }
        Ok((changes, max))
    }
}

/// Reads what other replicas committed since `store.revision()` and applies it. Called under the
/// store's write lock.
async fn catch_up(store: &Store, pg: &Pg, client: &impl GenericClient) -> Result<(), StoreError> {
    let last_seen = i64::try_from(store.revision()).unwrap_or(i64::MAX);
    let revision: i64 = client
        .query_one("SELECT value FROM revision WHERE id = 1", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    if revision <= last_seen {
        return Ok(());
    }
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM resources WHERE revision > $1 ORDER BY revision"),
            &[&last_seen],
        )
        .await
        .map_err(pg_err)?;
    let (changes, max) = pg.apply_rows(&rows)?;
    store.apply_index(&changes, max.max(u64::try_from(revision).unwrap_or(0)));
    Ok(())
}

/// Catches up now, on the write connection.
pub(crate) async fn refresh(store: &Store, pg: &Pg) -> Result<(), StoreError> {
    let arrived = std::time::Instant::now();
    let _write = store.write_lock.lock().await;
    {
        let mut from = pg.caught_up_from.lock().unwrap_or_else(|e| e.into_inner());
        if *from >= arrived && pg.reachable() {
            // A catch-up (or a write) that started after this request arrived is done.
            return Ok(());
        }
        *from = std::time::Instant::now();
    }
    let mut guard = pg.client.lock().await;
    let client = pg.client(&mut guard).await;
    pg.note(&client);
    let client = client?;
    let result = catch_up(store, pg, &*client).await;
    if guard.as_ref().is_some_and(|c| c.is_closed()) {
        *guard = None;
    }
    pg.note(&result);
    result
}

/// A write of the PostgreSQL backend (called under the store's write lock).
/// One writer's batch waiting for a group commit, and where its answer goes.
pub(crate) struct Pending {
    prepared: Vec<crate::store::PreparedOp>,
    keys: Vec<ResourceKey>,
    expected: Vec<Expect>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Outcome>, StoreError>>,
}

impl Pending {
    /// Whether this batch reads or writes anything in `written` (keys written earlier in the same
    /// group): it must then wait for the next group, to see those writes.
    fn touches(&self, written: &std::collections::HashSet<ResourceKey>) -> bool {
        self.keys.iter().any(|k| written.contains(k))
            || self.expected.iter().any(|e| match e {
                Expect::Version(k, _) => written.contains(k),
                Expect::Members { kind, mesh, .. } => {
                    written.iter().any(|w| w.kind == *kind && w.mesh == *mesh)
                }
            })
    }
}

/// The most batches one transaction commits.
const GROUP_MAX: usize = 256;

/// Writes a batch. Concurrent writers of this replica commit in groups: each queues its batch,
/// and whoever takes the write lock commits every queued batch in ONE transaction (one revision
/// lock, one catch-up, one commit and one notification for the group), each batch checked against
/// what it expects and given its own revision, in queue order; a batch that touches what an
/// earlier one of the group writes waits for the next group. A batch's answer is the same as
/// alone: all of it or none of it, `Conflict` when its expectations no longer hold.
pub(crate) async fn write(
    store: &Store,
    pg: &Arc<Pg>,
    ops: Vec<Op>,
    expected: &[Expect],
) -> Result<Vec<Outcome>, StoreError> {
    let (prepared, keys) = prepare(&ops);
    let (reply, mut answer) = tokio::sync::oneshot::channel();
    pg.queue
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_back(Pending {
            prepared,
            keys,
            expected: expected.to_vec(),
            reply,
        });
    loop {
        let guard = tokio::select! {
            biased;
            r = &mut answer => return r.unwrap_or_else(|_| Err(dropped())),
            g = store.write_lock.clone().lock_owned() => g,
        };
        if let Ok(r) = answer.try_recv() {
            return r;
        }
        // The group runs on its own task: a writer that gives up (its request dropped) never
        // cuts a group, and everyone else's answer, short.
        let (store, pg) = (store.clone(), pg.clone());
        let _ = tokio::spawn(async move {
            let _guard = guard;
            let group: Vec<Pending> = {
                let mut q = pg.queue.lock().unwrap_or_else(|e| e.into_inner());
                let n = q.len().min(GROUP_MAX);
                q.drain(..n).collect()
            };
            let deferred = commit_group(&store, &pg, group).await;
            let mut q = pg.queue.lock().unwrap_or_else(|e| e.into_inner());
            for p in deferred.into_iter().rev() {
                q.push_front(p);
            }
        })
        .await;
        // Answered by this group, or (deferred, or beyond the group's size) by a later one.
        if let Ok(r) = answer.try_recv() {
            return r;
        }
    }
}

fn dropped() -> StoreError {
    StoreError::Conflict {
        key: "a write whose group was abandoned".into(),
    }
}

/// What one batch of a group wrote: its answer, the records for the replica's copy, its revision.
type Written = (Vec<Outcome>, Vec<(Vec<u8>, Option<StoredResource>)>, u64);

/// Commits `group` in one transaction and answers each batch in it; returns the batches deferred
/// to the next group.
async fn commit_group(store: &Store, pg: &Pg, group: Vec<Pending>) -> Vec<Pending> {
    let now = u64::try_from(crate::clock::now_unix()).unwrap_or(0);
    let mut guard = pg.client.lock().await;
    let mut deferred = Vec::new();
    let mut results: Vec<(Pending, Result<Written, StoreError>)> = Vec::new();
    let mut pending: std::collections::VecDeque<Pending> = group.into();
    let committed: Result<(), StoreError> = async {
        let client = pg.client(&mut guard).await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // Locks the revision: writers of every replica queue here, so what is read below is the
        // state the writes replace.
        let current: i64 = tx
            .query_one("SELECT value FROM revision WHERE id = 1 FOR UPDATE", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        *pg.caught_up_from.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        catch_up(store, pg, &tx).await?;
        let mut revision = current;
        let mut written = std::collections::HashSet::new();
        while let Some(p) = pending.pop_front() {
            if p.touches(&written) {
                deferred.push(p);
                continue;
            }
            if let Err(e) = store.check_expected(&p.expected) {
                results.push((p, Err(e)));
                continue;
            }
            let next = revision + 1;
            let next_u = u64::try_from(next).unwrap_or(0);
            let mut outcomes = Vec::with_capacity(p.prepared.len());
            let mut records = Vec::new();
            let statements: Result<(), StoreError> = async {
            for ((_, put), key) in p.prepared.iter().zip(&p.keys) {
                let existing = pg.get(key);
                match put {
                    Some((spec, hash)) => {
                        let Some((record, outcome)) =
                            replacement(existing.as_ref().map(Existing::of), key, spec, hash, next_u, now)
                        else {
                            outcomes.push(Outcome::Unchanged);
                            continue;
                        };
                        // A sealed kind's row holds the envelope and no plain spec.
                        let sealed = pg.sealing.seal(key, spec)?;
                        let plain = sealed.is_none().then(|| spec.to_string());
                        tx.execute(
                            &format!(
                                "INSERT INTO resources ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                                 ON CONFLICT (kind, mesh, name) DO UPDATE SET hash = excluded.hash,
                                 revision = excluded.revision, created_unix = excluded.created_unix,
                                 modified_unix = excluded.modified_unix, spec = excluded.spec,
                                 sealed = excluded.sealed"
                            ),
                            &[
                                &key.kind.as_str(),
                                &key.mesh,
                                &key.name,
                                hash,
                                &next,
                                &i64::try_from(record.created_unix).unwrap_or(0),
                                &i64::try_from(now).unwrap_or(0),
                                &plain,
                                &sealed,
                            ],
                        )
                        .await
                        .map_err(pg_err)?;
                        outcomes.push(outcome);
                        records.push((key.encode(), Some(record)));
                    }
                    None => {
                        if existing.is_none() {
                            outcomes.push(Outcome::NotFound);
                            continue;
                        }
                        tx.execute(
                            "UPDATE resources SET hash = NULL, spec = NULL, sealed = NULL, revision = $4,
                             modified_unix = $5 WHERE kind = $1 AND mesh = $2 AND name = $3",
                            &[
                                &key.kind.as_str(),
                                &key.mesh,
                                &key.name,
                                &next,
                                &i64::try_from(now).unwrap_or(0),
                            ],
                        )
                        .await
                        .map_err(pg_err)?;
                        outcomes.push(Outcome::Deleted);
                        records.push((key.encode(), None));
                    }
                }
            }
            Ok(())
            }
            .await;
            if let Err(e) = statements {
                results.push((p, Err(e.clone())));
                return Err(e);
            }
            if !records.is_empty() {
                revision = next;
                written.extend(p.keys.iter().cloned());
            }
            results.push((p, Ok((outcomes, records, u64::try_from(revision).unwrap_or(0)))));
        }
        if revision == current {
            tx.rollback().await.map_err(pg_err)?;
            return Ok(());
        }
        tx.execute("UPDATE revision SET value = $1 WHERE id = 1", &[&revision])
            .await
            .map_err(pg_err)?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &revision.to_string()])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(())
    }
    .await;
    if guard.as_ref().is_some_and(|c| c.is_closed()) {
        *guard = None;
    }
    drop(guard);
    pg.note(&committed);
    if let Err(e) = committed {
        // Nothing of the group was committed: every batch in it fails, those not reached and
        // the deferred ones too.
        let all = results
            .into_iter()
            .map(|(p, _)| p)
            .chain(pending)
            .chain(deferred);
        for p in all {
            let _ = p.reply.send(Err(e.clone()));
        }
        return Vec::new();
    }
    for (p, result) in results {
        if let Ok((outcomes, records, revision)) = &result
            && !records.is_empty()
        {
            {
                let mut mem = pg.mem_mut();
                for (k, r) in records {
                    match r {
                        Some(r) => {
                            mem.resources.insert(k.clone(), r.clone());
                        }
                        None => {
                            mem.resources.remove(k);
                        }
                    }
                }
            }
            store.apply_index(&index_changes(&p.keys, &p.prepared, outcomes), *revision);
        }
        let _ = p.reply.send(result.map(|(outcomes, _, _)| outcomes));
    }
    deferred
}

/// Follows the other replicas: on each notification and every `POLL`, catches up. Reconnects
/// with backoff, logging once per change of state; ends when the store is dropped.
pub(crate) fn spawn_listener(store: &Store, pg: Arc<Pg>) {
    let weak = store.downgrade(&pg);
    let config = pg.config.clone();
    drop(pg);
    tokio::spawn(async move {
        let mut backoff = crate::backoff::Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(5),
            crate::backoff::Jitter::UpperHalf,
        );
        let mut connected = true;
        loop {
            if weak.upgrade().is_none() {
                return;
            }
            let (client, mut connection) = match config.connect(NoTls).await {
                Ok(c) => c,
                Err(e) => {
                    if let Some(store) = weak.upgrade()
                        && let Some(pg) = store.pg()
                    {
                        pg.reachable
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    if connected {
                        tracing::warn!(error = %e, "PostgreSQL unreachable: following other replicas' writes paused, retrying");
                        connected = false;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
            let driver = tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(m)) = messages.next().await {
                    if let AsyncMessage::Notification(_) = m {
                        let _ = tx.try_send(());
                    }
                }
            });
            if client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .is_err()
            {
                driver.abort();
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            if !connected {
                tracing::info!("PostgreSQL reachable again: following other replicas' writes");
                connected = true;
            }
            backoff.reset();
            loop {
                let Some(store) = weak.upgrade() else {
                    driver.abort();
                    return;
                };
                let Some(pg) = store.pg() else { return };
                let result = {
                    let _guard = store.write_lock.lock().await;
                    catch_up(&store, &pg, &client).await
                };
                drop((store, pg));
                if let Err(e) = result {
                    tracing::debug!(error = %e, "catching up with PostgreSQL failed");
                    if client.is_closed() {
                        break;
                    }
                }
                tokio::select! {
                    r = rx.recv() => if r.is_none() { break },
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            driver.abort();
        }
    });
}

impl Pg {
    /// How this replica reaches the database (the coordination connections of `coordination`).
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}
