//! The token authority of global: the ring of keys that sign and verify every token (zone,
//! dataplane, user), and the list of revoked tokens. Both live in the store (record trees
//! `token-signing-keys`, each key sealed with the store's Secrets key, and `token-revocations`), so every replica on one PostgreSQL store signs
//! with the same key and refuses the same tokens: each replica reads them again from the store
//! every [`REFRESH`] (fresh reads, not its own copy), so a revocation or rotation made on one
//! replica holds on all of them within that time. New tokens are signed by the newest key; older
//! keys keep verifying until an operator retires them. The first key of the ring is the one
//! earlier releases kept in `<data-dir>/token-signing-key.pem`, so their tokens stay valid.
//!
//! Every change (a key added or retired, a token revoked) bumps a generation that the sync
//! server watches: zones get the new public keys and revocation list at once.
//!
//! This module knows nothing of HTTP or gRPC: the API and the sync server call it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::coordination::{CoordinationError, Coordinator};
use common::shutdown::Shutdown;
use common::store::{Store, StoreError};
use common::tokens::{KeySet, TokenSigner};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How often a replica reads the keys and revocations again from the store.
pub const REFRESH: Duration = Duration::from_secs(1);
/// The record tree of the signing keys (key: kid).
const KEYS_TREE: &str = "token-signing-keys";
/// The record tree of revoked tokens (key: jti).
const REVOKED_TREE: &str = "token-revocations";

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("token signing keys: {0}")]
    Store(#[from] StoreError),
    #[error("token signing keys: {0}")]
    Coordination(#[from] CoordinationError),
    #[error("the signing key {kid} in the store cannot be read: {reason}")]
    BadKey { kid: String, reason: String },
    #[error("the signing key file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no signing key {0:?}: `global get signing-keys` lists them")]
    NoSuchKey(String),
    #[error(
        "the signing key {0} signs new tokens and cannot be retired: rotate first (`global rotate-signing-key`), then retire it"
    )]
    ActiveKey(String),
}

/// A signing key as the store keeps it: sealed with the store's Secrets key, as Secrets are.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredKey {
    /// Base64 of the sealed PKCS#8 PEM of the Ed25519 key (`Store::seal_bytes`, bound to the
    /// key's id).
    sealed: String,
    /// When it was made (unix ms); 0 for the key of an earlier release's key file.
    created_ms: i64,
}

/// What a signing key is sealed under: its kid, so a sealed key cannot pass for another.
fn sealed_as(kid: &str) -> String {
    format!("token-signing-key/{kid}")
}

/// A revoked token as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    pub revoked_at_ms: i64,
    /// Who revoked it (the audit log's actor).
    pub by: String,
}

/// A key of the ring as the API shows it (no private part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub kid: String,
    pub created_ms: i64,
    /// New tokens are signed with it.
    pub active: bool,
}

struct Key {
    kid: String,
    created_ms: i64,
    signer: Arc<TokenSigner>,
}

/// What the authority holds at one time.
struct Ring {
    /// Oldest first; the last one signs.
    keys: Vec<Key>,
    revoked: BTreeMap<String, Revocation>,
    verify: KeySet,
}

/// The token authority. Cheap to clone.
#[derive(Clone)]
pub struct Authority {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    coordinator: Coordinator,
    ring: RwLock<Arc<Ring>>,
    generation: watch::Sender<u64>,
}

impl Authority {
    /// Reads the ring from the store; an empty ring starts with the key of
    /// `<dir>/token-signing-key.pem` (made there on first start), as earlier releases signed with.
    pub async fn load(store: &Store, dir: &Path) -> Result<Self, AuthorityError> {
        let coordinator = Coordinator::new(store);
        let authority = Self {
            inner: Arc::new(Inner {
                store: store.clone(),
                coordinator,
                ring: RwLock::new(Arc::new(Ring {
                    keys: Vec::new(),
                    revoked: BTreeMap::new(),
                    verify: KeySet::default(),
                })),
                generation: watch::channel(0).0,
            }),
        };
        authority.refresh().await?;
        authority.seal_again().await?;
        if authority.ring().keys.is_empty() {
            let path = dir.join(common::tokens::KEY_FILE);
            let file_err = |source| AuthorityError::File {
                path: path.display().to_string(),
                source,
            };
            let signer = TokenSigner::load_or_create(dir).map_err(file_err)?;
            let pem = std::fs::read_to_string(&path).map_err(file_err)?;
            // Replicas starting at once seed the same key (the shared file): same record.
            let kid = signer.verifier().kid().to_string();
            let stored = authority.stored(&kid, &pem, 0)?;
            authority.keys_tree()?.put(&kid, &stored).await?;
            authority.refresh().await?;
        }
        Ok(authority)
    }

    /// Seals again with the Secrets key the signing keys an extra key sealed (a rotation of the
    /// Secrets key), so that the extra key can go. Replicas starting at once may both do it: the
    /// same key either way.
    async fn seal_again(&self) -> Result<(), AuthorityError> {
        use base64::Engine;
        let keys = self.inner.coordinator.list(KEYS_TREE).await?.records;
        for (kid, text) in keys {
            let Ok(stored) = serde_json::from_str::<StoredKey>(&text) else {
                continue;
            };
            let Ok(sealed) = base64::engine::general_purpose::STANDARD.decode(&stored.sealed)
            else {
                continue;
            };
            if self.inner.store.sealed_with_current_key(&sealed) {
                continue;
            }
            // One that does not open was reported by `refresh`.
            let Ok(pem) = self.inner.store.open_bytes(&sealed_as(&kid), &sealed) else {
                continue;
            };
            let pem = String::from_utf8_lossy(&pem).into_owned();
            let again = self.stored(&kid, &pem, stored.created_ms)?;
            self.keys_tree()?.put(&kid, &again).await?;
            tracing::info!(%kid, "token signing key sealed again with the Secrets key");
        }
        Ok(())
    }

    /// A key as the store keeps it: its PEM sealed.
    fn stored(&self, kid: &str, pem: &str, created_ms: i64) -> Result<StoredKey, StoreError> {
        use base64::Engine;
        let sealed = self
            .inner
            .store
            .seal_bytes(&sealed_as(kid), pem.as_bytes())?;
        Ok(StoredKey {
            sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
            created_ms,
        })
    }

    /// The signer of a stored key.
    fn unsealed(&self, kid: &str, text: &str) -> Result<(TokenSigner, i64), String> {
        use base64::Engine;
        let stored: StoredKey = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&stored.sealed)
            .map_err(|e| e.to_string())?;
        let pem = self
            .inner
            .store
            .open_bytes(&sealed_as(kid), &sealed)
            .map_err(|e| e.to_string())?;
        let pem = String::from_utf8(pem).map_err(|e| e.to_string())?;
        Ok((TokenSigner::from_pem(&pem)?, stored.created_ms))
    }

    fn keys_tree(&self) -> Result<common::store::Records, StoreError> {
        self.inner.store.records(KEYS_TREE)
    }

    fn ring(&self) -> Arc<Ring> {
        self.inner
            .ring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The key new tokens are signed with.
    pub fn signer(&self) -> Arc<TokenSigner> {
        self.ring()
            .keys
            .last()
            .map(|k| k.signer.clone())
            .expect("the ring holds a key once loaded")
    }

    /// Every key that verifies, and the revoked token ids.
    pub fn key_set(&self) -> KeySet {
        self.ring().verify.clone()
    }

    /// The keys, oldest first.
    pub fn keys(&self) -> Vec<KeyView> {
        let ring = self.ring();
        let last = ring.keys.len().saturating_sub(1);
        ring.keys
            .iter()
            .enumerate()
            .map(|(i, k)| KeyView {
                kid: k.kid.clone(),
                created_ms: k.created_ms,
                active: i == last,
            })
            .collect()
    }

    /// The revoked tokens, by id.
    pub fn revocations(&self) -> BTreeMap<String, Revocation> {
        self.ring().revoked.clone()
    }

    /// Changes with every change of keys or revocations.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Adds a new key that signs from now on; returns its kid. Older keys keep verifying.
    pub async fn rotate(&self) -> Result<String, AuthorityError> {
        let (signer, pem) = TokenSigner::generate_pem();
        let kid = signer.verifier().kid().to_string();
        let created_ms = common::clock::now_ms().max(self.newest_ms() + 1);
        let stored = self.stored(&kid, &pem, created_ms)?;
        self.keys_tree()?.put(&kid, &stored).await?;
        self.refresh().await?;
        Ok(kid)
    }

    fn newest_ms(&self) -> i64 {
        self.ring().keys.last().map_or(0, |k| k.created_ms)
    }

    /// Removes a key: tokens it signed are refused from now on. The key that signs cannot go.
    pub async fn retire(&self, kid: &str) -> Result<(), AuthorityError> {
        self.refresh().await?;
        let ring = self.ring();
        if !ring.keys.iter().any(|k| k.kid == kid) {
            return Err(AuthorityError::NoSuchKey(kid.to_string()));
        }
        if ring.keys.last().is_some_and(|k| k.kid == kid) {
            return Err(AuthorityError::ActiveKey(kid.to_string()));
        }
        self.keys_tree()?.remove(kid).await?;
        self.refresh().await?;
        Ok(())
    }

    /// Revokes the token `jti`; returns whether it was revoked already.
    pub async fn revoke(&self, jti: &str, by: &str) -> Result<bool, AuthorityError> {
        self.refresh().await?;
        if self.ring().revoked.contains_key(jti) {
            return Ok(true);
        }
        self.inner
            .store
            .records(REVOKED_TREE)?
            .put(
                jti,
                &Revocation {
                    revoked_at_ms: common::clock::now_ms(),
                    by: by.to_string(),
                },
            )
            .await?;
        self.refresh().await?;
        Ok(false)
    }

    /// Reads keys and revocations from the store (fresh on PostgreSQL); returns whether they
    /// changed. A key that cannot be read is skipped with an error logged (the others still
    /// verify), unless it is the only one.
    pub async fn refresh(&self) -> Result<bool, AuthorityError> {
        let keys = self.inner.coordinator.list(KEYS_TREE).await?.records;
        let revoked = self.inner.coordinator.list(REVOKED_TREE).await?.records;
        let current = self.ring();
        let mut ring_keys = Vec::with_capacity(keys.len());
        let mut bad = None;
        for (kid, text) in keys {
            // Unchanged keys are not parsed again.
            if let Some(k) = current.keys.iter().find(|k| k.kid == kid) {
                ring_keys.push(Key {
                    kid,
                    created_ms: k.created_ms,
                    signer: k.signer.clone(),
                });
                continue;
            }
            match self.unsealed(&kid, &text) {
                Ok((signer, created_ms)) => ring_keys.push(Key {
                    kid,
                    created_ms,
                    signer: Arc::new(signer),
                }),
                Err(reason) => {
                    tracing::error!(%kid, %reason, "a token signing key in the store cannot be read: tokens it signed are refused");
                    bad = Some(AuthorityError::BadKey { kid, reason });
                }
            }
        }
        if ring_keys.is_empty()
            && let Some(e) = bad
        {
            return Err(e);
        }
        ring_keys.sort_by(|a, b| (a.created_ms, &a.kid).cmp(&(b.created_ms, &b.kid)));
        let revoked: BTreeMap<String, Revocation> = revoked
            .into_iter()
            .filter_map(|(jti, text)| serde_json::from_str(&text).ok().map(|r| (jti, r)))
            .collect();
        let same_keys = ring_keys.len() == current.keys.len()
            && ring_keys
                .iter()
                .zip(&current.keys)
                .all(|(a, b)| a.kid == b.kid);
        if same_keys && revoked == current.revoked {
            return Ok(false);
        }
        let verify = KeySet::new(
            ring_keys
                .iter()
                .map(|k| k.signer.verifier().clone())
                .collect(),
        )
        .with_revoked(revoked.keys().cloned());
        *self.inner.ring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Ring {
            keys: ring_keys,
            revoked,
            verify,
        });
        self.inner.generation.send_modify(|g| *g += 1);
        Ok(true)
    }

    /// Reads the store again every [`REFRESH`] until `shutdown` (what other replicas changed).
    /// Failures are logged once per change of state: the keys held keep working meanwhile.
    pub async fn run(self, shutdown: Shutdown) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = shutdown.wait() => return,
            }
            match self.refresh().await {
                Ok(changed) => {
                    if failing {
                        tracing::info!("token keys and revocations read from the store again");
                        failing = false;
                    }
                    if changed {
                        tracing::info!(
                            keys = self.ring().keys.len(),
                            revoked = self.ring().revoked.len(),
                            "token keys or revocations changed"
                        );
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read token keys and revocations from the store: the ones held stay in force");
                        failing = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::tokens::{Claims, ZONE_SCOPE, ZoneClaim};

    #[tokio::test]
    async fn rotation_keeps_old_tokens_until_their_key_is_retired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::temporary().unwrap();
        let a = Authority::load(&store, dir.path()).await.unwrap();
        let first = a.signer();
        let old = first.issue_zone_token("z", Duration::from_secs(60));
        let kid = a.rotate().await.unwrap();
        assert_ne!(kid, first.verifier().kid());
        assert_eq!(a.signer().verifier().kid(), kid);
        let new = a.signer().issue_zone_token("z", Duration::from_secs(60));
        for t in [&old, &new] {
            a.key_set().verify::<ZoneClaim>(t, ZONE_SCOPE).unwrap();
        }
        assert!(matches!(
            a.retire(&kid).await,
            Err(AuthorityError::ActiveKey(_))
        ));
        assert!(matches!(
            a.retire("nope").await,
            Err(AuthorityError::NoSuchKey(_))
        ));
        a.retire(first.verifier().kid()).await.unwrap();
        assert!(a.key_set().verify::<ZoneClaim>(&old, ZONE_SCOPE).is_err());
        a.key_set().verify::<ZoneClaim>(&new, ZONE_SCOPE).unwrap();
        // The keys are sealed in the store: no PEM in the record.
        let records = store.records(KEYS_TREE).unwrap();
        let stored: Vec<(String, serde_json::Value)> = records.list().unwrap();
        assert!(
            stored
                .iter()
                .all(|(_, v)| !v.to_string().contains("PRIVATE KEY"))
        );
        // A restart reads the same ring (the old key file is not used again).
        let again = Authority::load(&store, dir.path()).await.unwrap();
        assert_eq!(again.signer().verifier().kid(), kid);
        assert_eq!(again.keys().len(), 1);
    }

    #[tokio::test]
    async fn revoked_tokens_are_refused_and_changes_are_announced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::temporary().unwrap();
        let a = Authority::load(&store, dir.path()).await.unwrap();
        let mut changes = a.subscribe();
        changes.borrow_and_update();
        let token = a.signer().issue_zone_token("z", Duration::from_secs(60));
        let claims: Claims<ZoneClaim> = a.key_set().verify(&token, ZONE_SCOPE).unwrap();
        assert!(!a.revoke(&claims.jti, "admin").await.unwrap());
        assert!(a.revoke(&claims.jti, "admin").await.unwrap());
        assert!(changes.has_changed().unwrap());
        let e = a
            .key_set()
            .verify::<ZoneClaim>(&token, ZONE_SCOPE)
            .unwrap_err();
        assert_eq!(e.code(), "revoked");
        assert_eq!(a.revocations()[&claims.jti].by, "admin");
    }

    #[tokio::test]
    async fn the_first_key_is_the_earlier_releases_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = TokenSigner::load_or_create(dir.path()).unwrap();
        let token = legacy.issue_zone_token("z", Duration::from_secs(60));
        let store = Store::temporary().unwrap();
        let a = Authority::load(&store, dir.path()).await.unwrap();
        assert_eq!(a.signer().verifier().kid(), legacy.verifier().kid());
        a.key_set().verify::<ZoneClaim>(&token, ZONE_SCOPE).unwrap();
    }
}
