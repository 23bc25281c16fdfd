//! A named tree of JSON records beside a store's resources (global's zone and replica records, a
//! zone's sync bookkeeping): no revision, never synced, not in `Store::list`. On sled a tree of
//! the database (by name: no handle is kept, so the database can be opened again after a failed
//! write); on PostgreSQL held in the replica's memory and written through.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::StoreError;

/// A named tree of JSON records beside the resources (e.g. global's zone records). Writes are
/// flushed before they return.
#[derive(Clone)]
pub struct Records(RecordsBackend);

impl Records {
    pub(crate) fn sled(sled: Arc<crate::store_sled::Sled>, tree: String) -> Self {
        Self(RecordsBackend::Sled { sled, tree })
    }

    pub(crate) fn pg(pg: Arc<crate::store_pg::Pg>, tree: String) -> Self {
        Self(RecordsBackend::Pg { pg, tree })
    }
}

#[derive(Clone)]
enum RecordsBackend {
    /// The database and the tree's name (no handle is kept: the database may be opened again).
    Sled {
        sled: Arc<crate::store_sled::Sled>,
        tree: String,
    },
    /// Held in memory, written through to PostgreSQL.
    Pg {
        pg: Arc<crate::store_pg::Pg>,
        tree: String,
    },
}

impl Records {
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let tree = match &self.0 {
            RecordsBackend::Sled { sled, tree } => sled.tree(tree)?,
            RecordsBackend::Pg { pg, tree } => {
                return match pg.record(tree, key) {
                    Some(bytes) => Ok(Some(decode_json(key.as_bytes(), &bytes)?)),
                    None => Ok(None),
                };
            }
        };
        match tree.get(key.as_bytes())? {
            Some(bytes) => Ok(Some(decode_json(key.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Every record, sorted by key.
    pub fn list<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        let tree = match &self.0 {
            RecordsBackend::Sled { sled, tree } => sled.tree(tree)?,
            RecordsBackend::Pg { pg, tree } => {
                return pg
                    .records(tree)
                    .into_iter()
                    .map(|(k, v)| Ok((k.clone(), decode_json(k.as_bytes(), &v)?)))
                    .collect();
            }
        };
        let mut out = Vec::new();
        for item in tree.iter() {
            let (k, v) = item?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                decode_json(&k, &v)?,
            ));
        }
        Ok(out)
    }

    pub async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        match &self.0 {
            RecordsBackend::Sled { sled, tree } => {
                let bytes = encode_json(key, value)?;
                let h = sled.handles()?;
                let flushed = match h.db.open_tree(tree) {
                    Ok(t) => t.insert(key.as_bytes(), bytes).map(drop),
                    Err(e) => Err(e),
                };
                let flushed = match flushed {
                    Ok(()) => h.db.flush_async().await.map(drop),
                    Err(e) => Err(e),
                };
                if let Err(e) = flushed {
                    return Err(sled.write_failed(e, vec![]));
                }
            }
            RecordsBackend::Pg { pg, tree } => {
                pg.put_record(tree, key, Some(encode_json(key, value)?))
                    .await?;
            }
        }
        Ok(())
    }

    /// Writes without waiting for the disk: durable at sled's next periodic flush (about half a
    /// second), for bookkeeping that may lag after a crash.
    /// On PostgreSQL the record is held at once and written in the background.
    pub fn put_buffered<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = encode_json(key, value)?;
        match &self.0 {
            RecordsBackend::Sled { sled, tree } => {
                sled.tree(tree)?.insert(key.as_bytes(), bytes)?;
            }
            RecordsBackend::Pg { pg, tree } => pg.put_record_buffered(tree, key, bytes),
        }
        Ok(())
    }

    pub async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        match &self.0 {
            RecordsBackend::Sled { sled, tree } => {
                let h = sled.handles()?;
                let removed = match h.db.open_tree(tree) {
                    Ok(t) => t.remove(key.as_bytes()),
                    Err(e) => Err(e),
                };
                let existed = match removed {
                    Ok(r) => r.is_some(),
                    Err(e) => return Err(sled.write_failed(e, vec![])),
                };
                if let Err(e) = h.db.flush_async().await {
                    return Err(sled.write_failed(e, vec![]));
                }
                Ok(existed)
            }
            RecordsBackend::Pg { pg, tree } => pg.put_record(tree, key, None).await,
        }
    }
}

fn encode_json<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn decode_json<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}
