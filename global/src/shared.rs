//! What every replica on one PostgreSQL store must hold identically, kept in the store and
//! written to each replica's data directory: the admin token (`admin-token`), the token signing
//! key (so a token made on one replica verifies on another), the generated sync server identity
//! (so `kds-ca.pem` is the same everywhere) and the generated HTTPS API's CA and its key (so
//! `api-ca.pem` is the same everywhere; each replica issues its own server certificate from it,
//! for its own names). The first replica to start proposes the files it loaded
//! or created; the store keeps the first proposal (`INSERT ... ON CONFLICT DO NOTHING`, then read
//! back), so replicas starting at once agree, and every replica writes what the store holds. On
//! sled nothing is shared and the files stay as they are. Each group is sealed in the store with
//! the Secrets key, bound to its name, as Secrets are: the database and its backups hold no admin
//! token and no private key in clear. A group an earlier build stored in clear, or an extra key
//! sealed (a rotation of the Secrets key), is sealed again in place on first read.

use std::collections::BTreeMap;
use std::path::Path;

use common::store::{Store, StoreError};

/// Why the shared files could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the shared value {name} in the store is not readable: {reason}")]
    Corrupt { name: String, reason: String },
}

/// How a sealed group starts in the store; an earlier build's clear JSON starts with `{`.
const SEALED_PREFIX: &str = "sealed:";

/// What a group is sealed as (the associated data of its envelope).
fn sealed_as(group: &str) -> String {
    format!("shared/{group}")
}

/// The store's form of a group's files: sealed with the Secrets key, in base64.
fn seal(store: &Store, group: &str, map: &BTreeMap<String, String>) -> Result<String, ShareError> {
    use base64::Engine;
    let json = serde_json::to_string(map).expect("strings always serialize");
    let sealed = store.seal_bytes(&sealed_as(group), json.as_bytes())?;
    Ok(format!(
        "{SEALED_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(sealed)
    ))
}

/// The files of a group as the store holds them, and whether they are to be sealed again: held
/// in clear (an earlier build's form) or sealed with an extra key (a rotation).
fn open(
    store: &Store,
    group: &str,
    stored: &str,
) -> Result<(BTreeMap<String, String>, bool), ShareError> {
    use base64::Engine;
    let corrupt = |reason: String| ShareError::Corrupt {
        name: group.to_string(),
        reason,
    };
    let (json, clear) = match stored.strip_prefix(SEALED_PREFIX) {
        Some(b64) => {
            let sealed = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| corrupt(format!("its envelope is not base64 ({e})")))?;
            let stale = !store.sealed_with_current_key(&sealed);
            (store.open_bytes(&sealed_as(group), &sealed)?, stale)
        }
        None => (stored.as_bytes().to_vec(), true),
    };
    let map = serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?;
    Ok((map, clear))
}

/// One shared group: its name in the store and its files (path under the data directory, mode).
pub struct Group<'a> {
    pub name: &'a str,
    pub files: &'a [(&'a str, u32)],
}

pub const ADMIN_TOKEN: Group<'static> = Group {
    name: "admin-token",
    files: &[("admin-token", 0o600)],
};

pub const SIGNING_KEY: Group<'static> = Group {
    name: "token-signing-key",
    files: &[(crate::tokens::KEY_FILE, 0o600)],
};

pub const KDS_IDENTITY: Group<'static> = Group {
    name: "kds-identity",
    files: &[
        ("kds-tls/ca.pem", 0o600),
        ("kds-tls/cert.pem", 0o600),
        ("kds-tls/key.pem", 0o600),
        (crate::kds::tls::CA_FILE, 0o600),
    ],
};

/// The CA of the generated HTTPS API identity: its key first (the CA's presence marks a complete
/// CA), then the CA and the clients' copy. Server certificates stay each replica's own.
pub const API_CA: Group<'static> = Group {
    name: "api-ca",
    files: &[
        ("api-tls/ca-key.pem", 0o600),
        ("api-tls/ca.pem", 0o600),
        (crate::https::CA_FILE, 0o600),
    ],
};

/// Makes the group's files in `dir` those the store holds; when it holds none yet, `create`
/// loads or creates them locally and they are proposed. A no-op on sled.
pub async fn files(
    store: &Store,
    dir: &Path,
    group: &Group<'_>,
    create: impl FnOnce() -> std::io::Result<()>,
) -> Result<(), ShareError> {
    if !store.is_shared() {
        return Ok(());
    }
    let file_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| ShareError::File { path, source }
    };
    let stored = match store.shared_value(group.name).await? {
        Some(v) => v,
        None => {
            create().map_err(file_err(dir))?;
            let mut local = BTreeMap::new();
            for (file, _) in group.files {
                let path = dir.join(file);
                let text = std::fs::read_to_string(&path).map_err(file_err(&path))?;
                local.insert(file.to_string(), text);
            }
            store
                .share(group.name, &seal(store, group.name, &local)?)
                .await?
        }
    };
    let (map, stale) = open(store, group.name, &stored)?;
    if stale {
        // Replicas upgrading at once may both seal it: the same files either way.
        store
            .replace_shared(group.name, &seal(store, group.name, &map)?)
            .await?;
        tracing::info!(
            group = group.name,
            "shared value sealed with the Secrets key"
        );
    }
    for (file, mode) in group.files {
        let path = dir.join(file);
        let Some(text) = map.get(*file) else {
            continue;
        };
        if std::fs::read_to_string(&path).ok().as_ref() == Some(text) {
            continue;
        }
        if let Some(parent) = path.parent() {
            common::file::private_dir(parent).map_err(file_err(parent))?;
        }
        common::file::write_atomic(&path, text.as_bytes(), *mode).map_err(file_err(&path))?;
    }
    Ok(())
}
