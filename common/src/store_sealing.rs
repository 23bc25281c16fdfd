//! How the store applies `sealing` to what it writes: which records are sealed (Secrets and
//! Meshes, whose backends may hold inline credentials: their whole spec, with the resource's key
//! as the identity bound to the envelope), the shape of a
//! record on sled's disk (the plain spec, or the envelope in its place), and, on sled, sealing at
//! open what an older version stored in plain text (one batch, hashes and revisions untouched) after
//! checking that every sealed record opens with the key given. PostgreSQL's columns and its
//! migration are in `store_pg`; both call [`Sealing::seal`] and [`Sealing::open`] here.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::Kind;
use crate::sealing::SecretsKey;
use crate::store::{ResourceKey, StoreError, StoredResource};

/// Whether and with which key a store seals Secrets.
#[derive(Clone)]
pub(crate) enum Sealing {
    Key(Arc<SecretsKey>),
    /// Nothing sealed: only the benchmark's baseline (`Store::open_unsealed_bench_baseline`).
    Off,
}

/// The shared value (PostgreSQL) naming the id of the key the replicas seal with: the first
/// replica's, and every later one must hold the same key.
pub(crate) const KEY_ID_SHARED: &str = "secrets-key-id";

/// Whether records of `kind` are sealed: Secrets, and Meshes, whose backends may hold inline
/// credentials (a Vault token, an AppRole secret ID) where a `secret:` source is not used.
pub(crate) fn sealed_kind(kind: Kind) -> bool {
    matches!(kind, Kind::Secret | Kind::Mesh)
}

impl Sealing {
    /// The envelope of `spec` when records of its kind are sealed; `None` when it is stored as is.
    pub(crate) fn seal(
        &self,
        key: &ResourceKey,
        spec: &serde_json::Value,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Sealing::Key(k) = self else {
            return Ok(None);
        };
        if !sealed_kind(key.kind) {
            return Ok(None);
        }
        let mut plain = serde_json::to_vec(spec).expect("JSON values always serialize");
        let sealed = k
            .seal(&key.encode(), &plain)
            .map_err(|e| self.error(key, e));
        plain.fill(0);
        sealed.map(Some)
    }

    /// The spec sealed in `envelope` for the resource `key`.
    pub(crate) fn open(
        &self,
        key: &ResourceKey,
        envelope: &[u8],
    ) -> Result<serde_json::Value, StoreError> {
        let Sealing::Key(k) = self else {
            return Err(StoreError::Corrupt {
                key: describe(key),
                reason: "it is sealed, and this store was opened without a key".into(),
            });
        };
        let mut plain = k
            .open(&key.encode(), envelope)
            .map_err(|e| self.error(key, e))?;
        let spec = serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt {
            key: describe(key),
            reason: format!("its sealed spec is not JSON: {e}"),
        });
        plain.fill(0);
        spec
    }

    /// Whether `envelope` is sealed with the key that seals now (always, when not sealing): what
    /// is not (an extra key's, during a rotation) is sealed again at start.
    pub(crate) fn is_current(&self, envelope: &[u8]) -> bool {
        match self {
            Sealing::Key(k) => k.is_current(envelope),
            Sealing::Off => true,
        }
    }

    /// Whether the key or one of its extras opens what `id` sealed.
    pub(crate) fn opens(&self, id: crate::sealing::KeyId) -> bool {
        match self {
            Sealing::Key(k) => k.opens(id),
            Sealing::Off => false,
        }
    }

    /// The id of the key, when sealing.
    pub(crate) fn key_id(&self) -> Option<crate::sealing::KeyId> {
        match self {
            Sealing::Key(k) => Some(k.id()),
            Sealing::Off => None,
        }
    }

    fn error(&self, key: &ResourceKey, source: crate::sealing::SealError) -> StoreError {
        self.refusal(format!("{} in the store", describe(key)), source)
    }

    /// `what` cannot be unsealed with this key, for `source`.
    pub(crate) fn refusal(&self, what: String, source: crate::sealing::SealError) -> StoreError {
        let origin = match self {
            Sealing::Key(k) => format!("{} (key id {})", k.origin(), k.id()),
            Sealing::Off => "(none)".into(),
        };
        StoreError::Unseal {
            what,
            origin,
            source,
        }
    }
}

/// `Secret default/token-1`, as messages name a resource.
fn describe(key: &ResourceKey) -> String {
    format!("{} {}/{}", key.kind.as_str(), key.mesh, key.name)
}

/// A record as sled holds it. A plain record (every kind but Secret, and what older versions
/// wrote) is the JSON of `StoredResource`, byte for byte what older versions wrote. A sealed
/// record is `0x01 | length of the JSON (4 bytes, big endian) | the JSON of the metadata (no
/// spec) | the envelope`: the envelope stays binary (base64 in the JSON would make every sealed
/// record a third larger, and sled's writes with it), and JSON never starts with 0x01.
#[derive(Serialize, Deserialize)]
struct DiskRecord {
    key: ResourceKey,
    hash: String,
    revision: u64,
    created_unix: u64,
    modified_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec: Option<serde_json::Value>,
}

/// The first byte of a sealed record.
const SEALED_RECORD: u8 = 0x01;

/// What a write needs of a record on disk, read without unsealing it.
#[derive(Deserialize)]
pub(crate) struct DiskMeta {
    pub hash: String,
    pub created_unix: u64,
}

fn corrupt(key: &[u8], reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

/// A sled record's JSON (the whole of a plain record, the metadata of a sealed one) and, when
/// sealed, its envelope.
pub(crate) fn split_sled<'a>(
    key: &[u8],
    bytes: &'a [u8],
) -> Result<(&'a [u8], Option<&'a [u8]>), StoreError> {
    if bytes.first() != Some(&SEALED_RECORD) {
        return Ok((bytes, None));
    }
    let len = bytes
        .get(1..5)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .ok_or_else(|| corrupt(key, "a sealed record cut short"))?;
    let json = bytes
        .get(5..5 + len)
        .ok_or_else(|| corrupt(key, "a sealed record cut short"))?;
    Ok((json, Some(&bytes[5 + len..])))
}

impl Sealing {
    /// The bytes sled stores for `record` (its spec sealed when its kind is).
    pub(crate) fn encode_sled(&self, record: &StoredResource) -> Result<Vec<u8>, StoreError> {
        let sealed = self.seal(&record.key, &record.spec)?;
        let disk = DiskRecord {
            key: record.key.clone(),
            hash: record.hash.clone(),
            revision: record.revision,
            created_unix: record.created_unix,
            modified_unix: record.modified_unix,
            spec: sealed.is_none().then(|| record.spec.clone()),
        };
        let json = serde_json::to_vec(&disk).expect("stored records always serialize");
        let Some(envelope) = sealed else {
            return Ok(json);
        };
        let len = u32::try_from(json.len()).expect("a record's metadata is small");
        let mut out = Vec::with_capacity(5 + json.len() + envelope.len());
        out.push(SEALED_RECORD);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&envelope);
        Ok(out)
    }

    /// The record sled holds as `bytes` under `key`, its spec unsealed.
    pub(crate) fn decode_sled(
        &self,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<StoredResource, StoreError> {
        let (json, envelope) = split_sled(key, bytes)?;
        let disk: DiskRecord = serde_json::from_slice(json).map_err(|e| corrupt(key, e))?;
        let spec = match (disk.spec, envelope) {
            (None, Some(envelope)) => self.open(&disk.key, envelope)?,
            (Some(spec), None) => spec,
            (Some(_), Some(_)) => return Err(corrupt(key, "it holds a spec and a sealed one")),
            (None, None) => return Err(corrupt(key, "it holds no spec")),
        };
        Ok(StoredResource {
            key: disk.key,
            hash: disk.hash,
            revision: disk.revision,
            created_unix: disk.created_unix,
            modified_unix: disk.modified_unix,
            spec,
        })
    }
}

impl DiskMeta {
    pub(crate) fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        let (json, _) = split_sled(key, bytes)?;
        serde_json::from_slice(json).map_err(|e| corrupt(key, e))
    }
}

/// On a sled store just opened: every sealed record is opened once with the key (a wrong key or
/// an altered record is `StoreError::Unseal` before anything is served), and every record of a
/// sealed kind still in plain text (written by an older version) or sealed with an extra key (a
/// rotation) is sealed with the key, all in one batch, flushed, with its hash, revision and
/// times unchanged. Returns how many were sealed: those in plain text, those an extra key sealed.
pub(crate) fn seal_plain_sled(
    sealing: &Sealing,
    h: &crate::store_sled::Handles,
) -> Result<(usize, usize), StoreError> {
    let Sealing::Key(_) = sealing else {
        return Ok((0, 0));
    };
    let mut batch = sled::Batch::default();
    let (mut plain, mut rotated) = (0, 0);
    for kind in [Kind::Mesh, Kind::Secret, Kind::Dataplane] {
        if !sealed_kind(kind) {
            continue;
        }
        for item in h.resources.scan_prefix(ResourceKey::prefix(kind, None)) {
            let (k, v) = item?;
            let (_, envelope) = split_sled(&k, &v)?;
            // Decoding opens a sealed spec: the key is checked against every record.
            let record = sealing.decode_sled(&k, &v)?;
            let counter = match envelope {
                None => &mut plain,
                Some(e) if !sealing.is_current(e) => &mut rotated,
                Some(_) => continue,
            };
            batch.insert(k, sealing.encode_sled(&record)?);
            *counter += 1;
        }
    }
    if plain + rotated > 0 {
        h.resources.apply_batch(batch)?;
        h.db.flush()?;
    }
    Ok((plain, rotated))
}
