//! The public keys that verify dataplane tokens, and the ids of revoked tokens. Global sends them
//! on the sync stream (`TokenKeys`); the zone keeps them in its store (the `dp-token-keys` record
//! tree, flushed), so a zone restarted while global is away still verifies its proxies' tokens
//! and still refuses the revoked ones.

use common::store::Store;
use common::tokens::{ED25519_ALGORITHM, KeySet, TokenVerifier};
use proto::kds;
use serde::{Deserialize, Serialize};

const TREE: &str = "dp-token-keys";
const KEY: &str = "keys";
const REVOKED: &str = "revoked";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    algorithm: String,
    /// Hex of the raw public key.
    public_key: String,
}

/// Replaces the stored keys with `msg`'s. Returns whether they changed; keys of an unknown
/// algorithm or that do not parse are skipped (and named in the error when none is usable).
pub async fn save(store: &Store, msg: &kds::TokenKeys) -> Result<bool, String> {
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for k in &msg.keys {
        if k.algorithm != ED25519_ALGORITHM {
            skipped.push(format!(
                "{}: algorithm {:?} is not supported",
                k.kid, k.algorithm
            ));
            continue;
        }
        match TokenVerifier::from_public_key(&k.public_key) {
            Ok(v) => keys.push(StoredKey {
                kid: v.kid().to_string(),
                algorithm: k.algorithm.clone(),
                public_key: hex::encode(v.public_key()),
            }),
            Err(e) => skipped.push(format!("{}: {e}", k.kid)),
        }
    }
    if keys.is_empty() && !msg.keys.is_empty() {
        return Err(format!(
            "no usable dataplane token key from global: {}",
            skipped.join("; ")
        ));
    }
    for s in &skipped {
        tracing::warn!(key = %s, "skipped a dataplane token key from global");
    }
    let records = store.records(TREE).map_err(|e| e.to_string())?;
    let held: Option<Vec<StoredKey>> = records.get(KEY).map_err(|e| e.to_string())?;
    let mut revoked = msg.revoked_token_ids.clone();
    revoked.sort();
    revoked.dedup();
    let held_revoked: Vec<String> = records
        .get(REVOKED)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    if held.as_ref() == Some(&keys) && held_revoked == revoked {
        return Ok(false);
    }
    // The revocations first: a crash between the two writes never un-revokes a token.
    records
        .put(REVOKED, &revoked)
        .await
        .map_err(|e| e.to_string())?;
    records.put(KEY, &keys).await.map_err(|e| e.to_string())?;
    Ok(true)
}

/// The keys held (empty before the first sync with global).
pub fn load(store: &Store) -> Result<KeySet, String> {
    let records = store.records(TREE).map_err(|e| e.to_string())?;
    let held: Vec<StoredKey> = records
        .get(KEY)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let revoked: Vec<String> = records
        .get(REVOKED)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    Ok(KeySet::new(
        held.iter()
            .filter_map(|k| hex::decode(&k.public_key).ok())
            .filter_map(|bytes| TokenVerifier::from_public_key(&bytes).ok())
            .collect(),
    )
    .with_revoked(revoked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::tokens::{DATAPLANE_SCOPE, DataplaneClaim, TokenSigner};

    #[tokio::test]
    async fn keys_survive_a_reopen_and_verify_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let signer = TokenSigner::generate();
        let msg = kds::TokenKeys {
            keys: vec![kds::TokenKey {
                kid: signer.verifier().kid().to_string(),
                algorithm: ED25519_ALGORITHM.into(),
                public_key: signer.verifier().public_key().to_vec(),
            }],
            revoked_token_ids: vec![],
        };
        {
            let store = Store::open(
                dir.path(),
                common::sealing::SecretsKey::for_data_dir(dir.path(), None).unwrap(),
            )
            .unwrap();
            assert!(load(&store).unwrap().is_empty());
            assert!(save(&store, &msg).await.unwrap());
            assert!(!save(&store, &msg).await.unwrap(), "unchanged");
        }
        let store = Store::open(
            dir.path(),
            common::sealing::SecretsKey::for_data_dir(dir.path(), None).unwrap(),
        )
        .unwrap();
        let keys = load(&store).unwrap();
        let token = signer.issue_dataplane_token(
            common::tokens::DataplaneClaim::bound("m", "n", "s"),
            std::time::Duration::from_secs(60),
        );
        let claims = keys
            .verify::<DataplaneClaim>(&token, DATAPLANE_SCOPE)
            .unwrap();
        assert_eq!(claims.body.name, "n");
        let bad = kds::TokenKeys {
            keys: vec![kds::TokenKey {
                kid: "x".into(),
                algorithm: "RS256".into(),
                public_key: vec![1, 2, 3],
            }],
            revoked_token_ids: vec![],
        };
        assert!(save(&store, &bad).await.is_err());
        assert!(!load(&store).unwrap().is_empty(), "the good keys are kept");
        // A revocation arrives: the token is refused, also after a reopen.
        let revoked = kds::TokenKeys {
            revoked_token_ids: vec![claims.jti.clone()],
            ..msg.clone()
        };
        assert!(save(&store, &revoked).await.unwrap());
        drop(store);
        let store = Store::open(
            dir.path(),
            common::sealing::SecretsKey::for_data_dir(dir.path(), None).unwrap(),
        )
        .unwrap();
        let e = load(&store)
            .unwrap()
            .verify::<DataplaneClaim>(&token, DATAPLANE_SCOPE)
            .unwrap_err();
        assert_eq!(e.code(), "revoked");
    }
}
