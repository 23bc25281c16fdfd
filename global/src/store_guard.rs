//! Global's guard against serving a damaged, short or rolled-back store: at start, the store as
//! opened is compared with the manifest this global wrote after its last commits
//! (`<data-dir>/store-manifest.json`, see `common::integrity`); a finding refuses the start
//! (exit 1) with the store named and the ways out, unless the operator accepted it with
//! `--accept-store-rollback`, which starts a new epoch of the store (zones accept a full state
//! that deletes what they hold only from a newer epoch). While global runs,
//! `common::integrity::keep_manifest` rewrites the manifest after commits.

use std::path::{Path, PathBuf};

use common::integrity::{Manifest, StoreIdentity, check};
use common::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(
        "global refuses to start: the store {store}: {finding}.\nWays out: restore the data directory (or database) from a backup taken after the last commit; or, after checking what the store holds, start with `global run --accept-store-rollback`: global then serves what the store holds as a new epoch, and zones, which keep what they hold until then, accept it and delete what it lacks."
    )]
    Refused { store: String, finding: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the store manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How a PostgreSQL store is named in messages (its URL may hold a password).
pub const POSTGRES: &str = "(PostgreSQL, given with --store)";

/// How the store is named in messages: its directory (sled) or [`POSTGRES`].
pub fn describe(store: &Store, data_dir: &Path) -> String {
    if store.is_shared() {
        POSTGRES.to_string()
    } else {
        format!("at {} (sled)", data_dir.join("store").display())
    }
}

/// Checks the opened store against the manifest; returns the identity global serves under (a new
/// epoch when `accept_rollback`). Writes the manifest of what is accepted.
pub async fn verify(
    store: &Store,
    data_dir: &Path,
    accept_rollback: bool,
) -> Result<StoreIdentity, GuardError> {
    let mut identity = store.identity().await?;
    let found = store.fingerprint();
    let manifest = Manifest::read(data_dir).map_err(|reason| GuardError::Refused {
        store: describe(store, data_dir),
        finding: format!("it cannot be checked: {reason}"),
    })?;
    let finding = manifest.as_ref().and_then(|m| check(m, &identity, &found));
    match (&finding, accept_rollback) {
        (Some(f), false) => {
            return Err(GuardError::Refused {
                store: describe(store, data_dir),
                finding: f.to_string(),
            });
        }
        (_, true) => {
            let epoch = identity.epoch.max(manifest.as_ref().map_or(0, |m| m.epoch)) + 1;
            store.set_epoch(epoch).await?;
            identity.epoch = epoch;
            match &finding {
                Some(f) => tracing::warn!(
                    store = %describe(store, data_dir), finding = %f, epoch,
                    revision = found.revision, resources = found.resources,
                    "--accept-store-rollback: serving what the store holds as a new epoch; zones will accept it and delete what it lacks"
                ),
                None => tracing::warn!(
                    store = %describe(store, data_dir), epoch,
                    revision = found.revision, resources = found.resources,
                    "--accept-store-rollback: the store matches its manifest; a new epoch starts anyway, which zones accept even where it deletes what they hold"
                ),
            }
        }
        (None, false) => {
            if manifest.is_none() && found.revision > 0 {
                tracing::info!(
                    store = %describe(store, data_dir), revision = found.revision,
                    "no store manifest yet (first start of this release): writing one"
                );
            }
        }
    }
    common::integrity::write_manifest(store, data_dir, &identity).map_err(|source| {
        GuardError::Manifest {
            path: Manifest::path(data_dir),
            source,
        }
    })?;
    Ok(identity)
}
