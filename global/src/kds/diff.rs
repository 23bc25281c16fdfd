//! The pure part of the sync server: what differs between the store and what a zone was sent
//! (or holds), and how a delta is cut into responses that respect the message size limit.

use std::collections::HashMap;

use common::store::VersionMap;
use prost::Message;
use proto::kds;

/// What a zone was sent (or, right after its subscription, holds): `(mesh, name)` -> version.
pub type Sent = HashMap<(String, String), String>;

/// Room kept in every response for its own fields (type, nonce, versions, flags).
pub const RESPONSE_OVERHEAD: usize = 1024;

/// The keys to send (added or changed) and to remove.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub changed: Vec<(String, String)>,
    pub removed: Vec<(String, String)>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

/// O(n) hash comparisons, both lists sorted.
pub fn diff(current: &VersionMap, sent: &Sent) -> Delta {
    let changed = current
        .iter()
        .filter(|(k, v)| sent.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    let mut removed: Vec<(String, String)> = sent
        .keys()
        .filter(|k| !current.contains_key(*k))
        .cloned()
        .collect();
    removed.sort();
    Delta { changed, removed }
}

/// One response's worth of resources and removals.
#[derive(Debug, Default, PartialEq)]
pub struct Chunk {
    pub resources: Vec<kds::Resource>,
    pub removed: Vec<kds::ResourceId>,
}

/// A resource too large to be sent alone.
#[derive(Debug, PartialEq, Eq)]
pub struct Oversized {
    pub mesh: String,
    pub name: String,
    pub version: String,
    pub size: usize,
}

/// Size of one element of a repeated message field: tag, length, body.
fn field_len(body: usize) -> usize {
    1 + prost::length_delimiter_len(body) + body
}

/// Cuts resources and removals into chunks whose responses stay within `limit` bytes. A resource
/// that cannot fit even alone is returned as oversized instead. Always returns at least one chunk
/// (possibly empty), so that an initial state is always answered.
pub fn split(
    resources: Vec<kds::Resource>,
    removed: Vec<kds::ResourceId>,
    limit: usize,
) -> (Vec<Chunk>, Vec<Oversized>) {
    let budget = limit.saturating_sub(RESPONSE_OVERHEAD);
    let mut chunks = vec![Chunk::default()];
    let mut used = 0usize;
    let mut oversized = Vec::new();
    for r in resources {
        let len = field_len(r.encoded_len());
        if len > budget {
            let size = r.encoded_len();
            oversized.push(Oversized {
                mesh: r.mesh,
                name: r.name,
                version: r.version,
                size,
            });
            continue;
        }
        if used + len > budget {
            chunks.push(Chunk::default());
            used = 0;
        }
        used += len;
        chunks.last_mut().expect("never empty").resources.push(r);
    }
    for id in removed {
        let len = field_len(id.encoded_len());
        if used + len > budget {
            chunks.push(Chunk::default());
            used = 0;
        }
        used += len;
        chunks.last_mut().expect("never empty").removed.push(id);
    }
    (chunks, oversized)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(m: &str, n: &str) -> (String, String) {
        (m.to_string(), n.to_string())
    }

    #[test]
    fn diff_sends_changed_and_missing_and_removes_extra() {
        let mut current = VersionMap::new();
        current.insert(key("a", "a"), "1".into());
        current.insert(key("b", "b"), "2".into());
        current.insert(key("c", "c"), "3".into());
        let mut sent = Sent::new();
        sent.insert(key("a", "a"), "1".into()); // unchanged
        sent.insert(key("b", "b"), "old".into()); // changed
        sent.insert(key("z", "z"), "9".into()); // gone from global
        let d = diff(&current, &sent);
        assert_eq!(d.changed, vec![key("b", "b"), key("c", "c")]);
        assert_eq!(d.removed, vec![key("z", "z")]);
        sent.insert(key("b", "b"), "2".into());
        sent.insert(key("c", "c"), "3".into());
        sent.remove(&key("z", "z"));
        assert!(diff(&current, &sent).is_empty());
    }

    fn res(name: &str, size: usize) -> kds::Resource {
        kds::Resource {
            mesh: "m".into(),
            name: name.into(),
            version: "v".into(),
            payload: vec![b'x'; size],
        }
    }

    #[test]
    fn split_respects_the_limit_and_skips_oversized() {
        let limit = RESPONSE_OVERHEAD + 3000;
        let resources = vec![
            res("a", 1000),
            res("b", 1000),
            res("big", 5000),
            res("c", 1000),
        ];
        let removed = vec![kds::ResourceId {
            mesh: "m".into(),
            name: "gone".into(),
        }];
        let (chunks, oversized) = split(resources, removed, limit);
        assert_eq!(oversized.len(), 1);
        assert_eq!(oversized[0].name, "big");
        assert!(oversized[0].size > 5000);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].resources.len(), 2);
        assert_eq!(chunks[1].resources.len(), 1);
        assert_eq!(chunks[1].removed.len(), 1);
        for c in &chunks {
            let resp = kds::DiscoveryResponse {
                r#type: "Secret".into(),
                nonce: "123456".into(),
                system_version: u64::MAX,
                resources: c.resources.clone(),
                removed_resources: c.removed.clone(),
                skipped: vec![],
                initial: true,
                more: true,
                store_id: "f".repeat(32),
                store_epoch: u64::MAX,
                sent_at_unix_ms: i64::MAX,
            };
            assert!(resp.encoded_len() <= limit);
        }
        let (chunks, oversized) = split(vec![], vec![], limit);
        assert_eq!((chunks.len(), oversized.len()), (1, 0));
    }
}
