//! What tells a store apart from a damaged, short or older copy of itself: the store's identity
//! (an id made once when the store is created, and an epoch that only an operator's acceptance of
//! a rollback moves), a fingerprint of what it holds (revision, resource count, and a set digest
//! over every resource's key and content hash, kept up to date by the version index), and the
//! manifest a control plane writes beside its store after commits: the last fingerprint it saw,
//! so that damage to the store cannot erase the evidence too. `check` compares a store opened at
//! start with the manifest (pure); global refuses to start on a finding.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::shutdown::Shutdown;
use crate::store::{ResourceKey, Store};

/// The manifest is rewritten at most this often while writes go on.
const MANIFEST_INTERVAL: Duration = Duration::from_millis(200);

/// The file, in a control plane's data directory, that records what it last committed.
pub const MANIFEST_FILE: &str = "store-manifest.json";

/// An order-independent digest of a set of (key, content hash) entries: the XOR of the SHA-256 of
/// each entry, so that adding or removing one entry is one toggle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetDigest([u8; 32]);

impl SetDigest {
    /// Adds the entry when absent, removes it when present.
    pub fn toggle(&mut self, key: &ResourceKey, hash: &str) {
        let mut h = Sha256::new();
        for part in [key.kind.as_str(), &key.mesh, &key.name, hash] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        for (a, b) in self.0.iter_mut().zip(h.finalize()) {
            *a ^= b;
        }
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// What a store holds, in three figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub revision: u64,
    pub resources: u64,
    /// Hex set digest of every resource's key and content hash.
    pub digest: String,
}

/// Who a store is: made once with the store, and the epoch an operator's acceptance started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreIdentity {
    pub id: String,
    pub epoch: u64,
}

impl StoreIdentity {
    /// A new random id (128 bits, hex).
    pub fn new_id() -> String {
        hex::encode(rand::random::<[u8; 16]>())
    }
}

/// The manifest: the identity and fingerprint of the store as this control plane last committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub store_id: String,
    pub epoch: u64,
    pub revision: u64,
    pub resources: u64,
    pub digest: String,
}

impl Manifest {
    pub fn of(identity: &StoreIdentity, fingerprint: &Fingerprint) -> Self {
        Self {
            store_id: identity.id.clone(),
            epoch: identity.epoch,
            revision: fingerprint.revision,
            resources: fingerprint.resources,
            digest: fingerprint.digest.clone(),
        }
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    /// The manifest in `dir`, `None` when there is none (a first start, or a data directory of a
    /// release that wrote none).
    pub fn read(dir: &Path) -> Result<Option<Self>, String> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{} is not a valid manifest: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the manifest atomically (0600).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("manifests serialize");
        crate::file::write_atomic(&Self::path(dir), &bytes, 0o600)
    }
}

/// What a start found wrong with its store, against the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Not the store this control plane used (wiped and created anew, or another one).
    OtherStore { found: String, expected: String },
    /// An epoch before the one last committed (a copy from before an accepted rollback).
    OlderEpoch { found: u64, expected: u64 },
    /// Fewer revisions than last committed: restored from an older copy, or read short.
    OlderRevision {
        found: u64,
        expected: u64,
        resources_found: u64,
        resources_expected: u64,
    },
    /// The revision last committed, with other content: damaged.
    OtherContent { revision: u64 },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::OtherStore { found, expected } => write!(
                f,
                "it is not the store this control plane last committed to (store id {found}, expected {expected}): it was wiped or replaced"
            ),
            Finding::OlderEpoch { found, expected } => write!(
                f,
                "it is at epoch {found}, older than epoch {expected} last committed: a copy from before an accepted rollback"
            ),
            Finding::OlderRevision {
                found,
                expected,
                resources_found,
                resources_expected,
            } => write!(
                f,
                "it holds revision {found} ({resources_found} resources), older than revision {expected} ({resources_expected} resources) last committed: it was restored from an older copy, or damaged and read short"
            ),
            Finding::OtherContent { revision } => write!(
                f,
                "its content at revision {revision} differs from what was committed at that revision (digest mismatch): it is damaged"
            ),
        }
    }
}

/// Compares a store as opened with the manifest of the last commit. A store ahead of the manifest
/// is fine (the manifest is written after the commit, so it may lag after a crash).
pub fn check(
    manifest: &Manifest,
    identity: &StoreIdentity,
    found: &Fingerprint,
) -> Option<Finding> {
    if identity.id != manifest.store_id {
        return Some(Finding::OtherStore {
            found: identity.id.clone(),
            expected: manifest.store_id.clone(),
        });
    }
    if identity.epoch < manifest.epoch {
        return Some(Finding::OlderEpoch {
            found: identity.epoch,
            expected: manifest.epoch,
        });
    }
    if identity.epoch > manifest.epoch {
        // A later epoch was started (by another replica's acceptance): what it holds is accepted.
        return None;
    }
    if found.revision < manifest.revision {
        return Some(Finding::OlderRevision {
            found: found.revision,
            expected: manifest.revision,
            resources_found: found.resources,
            resources_expected: manifest.resources,
        });
    }
    if found.revision == manifest.revision && found.digest != manifest.digest {
        return Some(Finding::OtherContent {
            revision: found.revision,
        });
    }
    None
}

/// Writes the manifest of what `store` holds now.
pub fn write_manifest(store: &Store, dir: &Path, identity: &StoreIdentity) -> std::io::Result<()> {
    Manifest::of(identity, &store.fingerprint()).write(dir)
}

/// Rewrites the manifest in `dir` after the store's revision moves (every write the store
/// acknowledges is durable before its revision is published, so the manifest never claims more
/// than the store holds), at most every `MANIFEST_INTERVAL`, and once more on shutdown. A failed
/// write is logged once and retried at the next change.
pub async fn keep_manifest(
    store: Store,
    dir: PathBuf,
    identity: StoreIdentity,
    shutdown: Shutdown,
) {
    let mut revision = store.subscribe();
    let mut failing = false;
    loop {
        tokio::select! {
            changed = revision.changed() => if changed.is_err() { break },
            _ = shutdown.wait() => break,
        }
        match write_manifest(&store, &dir, &identity) {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("store manifest written again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, path = %Manifest::path(&dir).display(), "cannot write the store manifest; retrying at the next change");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(MANIFEST_INTERVAL) => {}
            _ = shutdown.wait() => break,
        }
    }
    let _ = write_manifest(&store, &dir, &identity);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    fn fp(revision: u64, digest: &str) -> Fingerprint {
        Fingerprint {
            revision,
            resources: revision,
            digest: digest.into(),
        }
    }

    #[test]
    fn set_digest_is_order_independent_and_toggles() {
        let a = ResourceKey::mesh("a");
        let b = ResourceKey::new(Kind::Secret, "a", "s");
        let mut one = SetDigest::default();
        one.toggle(&a, "h1");
        one.toggle(&b, "h2");
        let mut two = SetDigest::default();
        two.toggle(&b, "h2");
        two.toggle(&a, "h1");
        assert_eq!(one.hex(), two.hex());
        two.toggle(&b, "h2");
        assert_ne!(one.hex(), two.hex());
        two.toggle(&b, "h3");
        assert_ne!(
            one.hex(),
            two.hex(),
            "another content hash is another digest"
        );
        two.toggle(&b, "h3");
        two.toggle(&a, "h1");
        assert_eq!(two, SetDigest::default());
        // Field boundaries count: ("ab", "c") is not ("a", "bc").
        let mut x = SetDigest::default();
        x.toggle(&ResourceKey::new(Kind::Secret, "ab", "c"), "h");
        let mut y = SetDigest::default();
        y.toggle(&ResourceKey::new(Kind::Secret, "a", "bc"), "h");
        assert_ne!(x, y);
    }

    #[test]
    fn check_names_each_way_a_store_goes_wrong() {
        let id = StoreIdentity {
            id: "s1".into(),
            epoch: 2,
        };
        let m = Manifest::of(&id, &fp(10, "d10"));
        assert_eq!(check(&m, &id, &fp(10, "d10")), None);
        assert_eq!(
            check(&m, &id, &fp(12, "d12")),
            None,
            "ahead of the manifest"
        );
        assert!(matches!(
            check(&m, &id, &fp(9, "d9")),
            Some(Finding::OlderRevision {
                found: 9,
                expected: 10,
                ..
            })
        ));
        assert_eq!(
            check(&m, &id, &fp(10, "other")),
            Some(Finding::OtherContent { revision: 10 })
        );
        let wiped = StoreIdentity {
            id: "s2".into(),
            epoch: 0,
        };
        assert!(matches!(
            check(&m, &wiped, &fp(0, "")),
            Some(Finding::OtherStore { .. })
        ));
        let before = StoreIdentity {
            id: "s1".into(),
            epoch: 1,
        };
        assert_eq!(
            check(&m, &before, &fp(20, "x")),
            Some(Finding::OlderEpoch {
                found: 1,
                expected: 2
            })
        );
        let after = StoreIdentity {
            id: "s1".into(),
            epoch: 3,
        };
        assert_eq!(check(&m, &after, &fp(1, "x")), None);
        for f in [check(&m, &id, &fp(9, "d9")), check(&m, &wiped, &fp(0, ""))] {
            assert!(f.unwrap().to_string().len() > 40);
        }
    }

    #[test]
    fn manifest_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), None);
        let m = Manifest::of(
            &StoreIdentity {
                id: StoreIdentity::new_id(),
                epoch: 0,
            },
            &fp(3, "abc"),
        );
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), Some(m));
        std::fs::write(Manifest::path(dir.path()), b"{").unwrap();
        assert!(
            Manifest::read(dir.path())
                .unwrap_err()
                .contains("not a valid manifest")
        );
    }
}
