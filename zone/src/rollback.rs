//! The zone's guard against a state that goes backwards. The zone remembers the identity of
//! global's store it applied from (id, epoch) and the highest revision it applied (`Held`, in the
//! `sync` record tree). On each stream, the first response says whose state global serves: the
//! same store and epoch at a revision not older, or a newer epoch (an operator accepted a
//! rollback), is trusted; anything else (another store, an older epoch, an older revision) is
//! foreign, and a foreign response that would delete or change what the zone holds is refused:
//! NACKed with the reason, nothing applied, and every later response of that stream refused too,
//! so the zone keeps serving everything it holds. A foreign state that only adds is applied, and
//! its identity adopted once every synced type's full state went through.

use std::collections::BTreeSet;

use common::model::Kind;
use common::store::{ResourceKey, Store};
use proto::kds;
use serde::{Deserialize, Serialize};

/// The key of [`Held`] in the `sync` record tree.
pub const HELD_KEY: &str = "global-store";
/// Resources named in a refusal, at most.
const NAMED: usize = 5;

/// What the zone applied from: global's store identity and the highest revision applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Held {
    pub store_id: String,
    pub epoch: u64,
    pub revision: u64,
}

/// Whose state a stream carries, from the zone's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Trusted,
    /// Why not (another store, an older epoch or revision).
    Foreign(String),
}

/// Judges what global offers against what the zone holds (pure).
pub fn standing(held: Option<&Held>, store_id: &str, epoch: u64, revision: u64) -> Standing {
    let Some(held) = held else {
        return Standing::Trusted;
    };
    if held.store_id != store_id {
        // Another store: trusted only once its operator started an epoch on it.
        return if epoch > 0 {
            Standing::Trusted
        } else {
            Standing::Foreign(format!(
                "global serves another store (id {store_id}) than the one this zone applied from (id {}), and no operator accepted it",
                held.store_id
            ))
        };
    }
    match epoch.cmp(&held.epoch) {
        std::cmp::Ordering::Greater => Standing::Trusted,
        std::cmp::Ordering::Less => Standing::Foreign(format!(
            "global's store is at epoch {epoch}, older than epoch {} this zone applied from",
            held.epoch
        )),
        std::cmp::Ordering::Equal if revision < held.revision => Standing::Foreign(format!(
            "global's store is at revision {revision}, older than revision {} this zone applied (a store restored from an older copy, or read short)",
            held.revision
        )),
        std::cmp::Ordering::Equal => Standing::Trusted,
    }
}

/// The guard of one stream.
#[derive(Debug, Default)]
pub struct StreamGuard {
    standing: Option<Standing>,
    refused: Option<String>,
    /// Types whose full state went through on this stream.
    initial_done: BTreeSet<String>,
    /// The store identity global said with its first responses (later ones leave it out).
    offered: Option<(String, u64)>,
}

impl StreamGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether this stream's state was refused (every later response is refused too).
    pub fn is_refusing(&self) -> bool {
        self.refused.is_some()
    }

    /// Before a response is applied: `Ok` with the held resources it deletes (named as
    /// `Kind mesh/name`, for the log), or `Err` with the reason it is refused (nothing applied).
    pub fn check(
        &mut self,
        store: &Store,
        held: Option<&Held>,
        resp: &kds::DiscoveryResponse,
        kind: Kind,
    ) -> Result<Vec<String>, String> {
        if let Some(reason) = &self.refused {
            return Err(reason.clone());
        }
        let deletes: Vec<String> = resp
            .removed_resources
            .iter()
            .filter(|id| {
                store
                    .version_of(&ResourceKey::new(kind, &id.mesh, &id.name))
                    .is_some()
            })
            .map(|id| format!("{} {}/{}", kind.as_str(), id.mesh, id.name))
            .collect();
        let Some((store_id, epoch)) = self.offered(resp) else {
            // A global that does not say which store it serves: nothing to judge by.
            return Ok(deletes);
        };
        let standing = self
            .standing
            .get_or_insert_with(|| standing(held, &store_id, epoch, resp.system_version))
            .clone();
        let Standing::Foreign(why) = standing else {
            return Ok(deletes);
        };
        let changes: Vec<String> = resp
            .resources
            .iter()
            .filter(|r| {
                store
                    .version_of(&ResourceKey::new(kind, &r.mesh, &r.name))
                    .is_some_and(|v| v != r.version)
            })
            .map(|r| format!("{} {}/{}", kind.as_str(), r.mesh, r.name))
            .collect();
        if deletes.is_empty() && changes.is_empty() {
            return Ok(deletes);
        }
        let named: Vec<&str> = deletes
            .iter()
            .chain(&changes)
            .take(NAMED)
            .map(String::as_str)
            .collect();
        let reason = format!(
            "refused global's state: {why}; it would delete {} and change {} of the resources this zone holds ({}{}). This zone keeps serving what it holds; to make it take global's state, global's operator starts a new epoch with `global run --accept-store-rollback`",
            deletes.len(),
            changes.len(),
            named.join(", "),
            if deletes.len() + changes.len() > NAMED {
                ", ..."
            } else {
                ""
            }
        );
        self.refused = Some(reason.clone());
        Err(reason)
    }

    /// The store identity of this stream: said by `resp`, or by an earlier response.
    fn offered(&mut self, resp: &kds::DiscoveryResponse) -> Option<(String, u64)> {
        if !resp.store_id.is_empty() {
            self.offered = Some((resp.store_id.clone(), resp.store_epoch));
        }
        self.offered.clone()
    }

    /// After a response was applied: the `Held` to remember, when it changed.
    pub fn applied(&mut self, held: Option<&Held>, resp: &kds::DiscoveryResponse) -> Option<Held> {
        let (store_id, store_epoch) = self.offered(resp)?;
        if let Some(Standing::Foreign(_)) = self.standing {
            if resp.initial && !resp.more {
                self.initial_done.insert(resp.r#type.clone());
            }
            let all = common::sync::SYNCED_KINDS
                .iter()
                .all(|k| self.initial_done.contains(k.as_str()));
            if !all {
                return None;
            }
            // Every full state went through without deleting or changing anything held.
            self.standing = Some(Standing::Trusted);
            return Some(Held {
                store_id,
                epoch: store_epoch,
                revision: resp.system_version,
            });
        }
        let next = match held {
            Some(h) if h.store_id == store_id && h.epoch == store_epoch => Held {
                revision: h.revision.max(resp.system_version),
                ..h.clone()
            },
            _ => Held {
                store_id,
                epoch: store_epoch,
                revision: resp.system_version,
            },
        };
        (held != Some(&next)).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::model::{Mesh, Resource};
    use common::store::Op;

    fn held(id: &str, epoch: u64, revision: u64) -> Held {
        Held {
            store_id: id.into(),
            epoch,
            revision,
        }
    }

    #[test]
    fn standing_follows_store_epoch_and_revision() {
        assert_eq!(standing(None, "a", 0, 0), Standing::Trusted);
        let h = held("a", 1, 10);
        assert_eq!(standing(Some(&h), "a", 1, 10), Standing::Trusted);
        assert_eq!(standing(Some(&h), "a", 1, 11), Standing::Trusted);
        assert_eq!(standing(Some(&h), "a", 2, 1), Standing::Trusted);
        assert!(
            matches!(standing(Some(&h), "a", 1, 9), Standing::Foreign(w) if w.contains("revision 9"))
        );
        assert!(
            matches!(standing(Some(&h), "a", 0, 99), Standing::Foreign(w) if w.contains("epoch 0"))
        );
        assert!(
            matches!(standing(Some(&h), "b", 0, 99), Standing::Foreign(w) if w.contains("another store"))
        );
        assert_eq!(standing(Some(&h), "b", 1, 0), Standing::Trusted);
    }

    fn response(
        kind: &str,
        resources: &[(&str, &str)],
        removed: &[&str],
    ) -> kds::DiscoveryResponse {
        kds::DiscoveryResponse {
            r#type: kind.into(),
            nonce: "1".into(),
            system_version: 3,
            resources: resources
                .iter()
                .map(|(name, version)| kds::Resource {
                    mesh: name.to_string(),
                    name: name.to_string(),
                    version: version.to_string(),
                    payload: vec![],
                })
                .collect(),
            removed_resources: removed
                .iter()
                .map(|n| kds::ResourceId {
                    mesh: n.to_string(),
                    name: n.to_string(),
                })
                .collect(),
            initial: true,
            store_id: "b".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_foreign_state_that_deletes_is_refused_for_the_whole_stream() {
        let store = Store::temporary().unwrap();
        let mesh = |n: &str| {
            Op::Put(Resource::Mesh(Mesh {
                type_: "Mesh".into(),
                name: n.into(),
                labels: Default::default(),
                mtls: None,
            }))
        };
        store.write(vec![mesh("m1"), mesh("m2")]).await.unwrap();
        let v1 = store.version_of(&ResourceKey::mesh("m1")).unwrap();
        let h = held("a", 0, 10);
        // Adds only, the same versions: applied, identity adopted once both types went through.
        let mut g = StreamGuard::new();
        let secrets = response("Secret", &[], &[]);
        assert_eq!(
            g.check(&store, Some(&h), &secrets, Kind::Secret),
            Ok(vec![])
        );
        assert_eq!(g.applied(Some(&h), &secrets), None);
        let meshes = response("Mesh", &[("m1", &v1), ("m3", "x")], &[]);
        assert_eq!(g.check(&store, Some(&h), &meshes, Kind::Mesh), Ok(vec![]));
        assert_eq!(g.applied(Some(&h), &meshes), Some(held("b", 0, 3)));
        // A deletion: refused, and so is everything after it on the stream.
        let mut g = StreamGuard::new();
        let deletes = response("Mesh", &[], &["m2"]);
        let why = g.check(&store, Some(&h), &deletes, Kind::Mesh).unwrap_err();
        assert!(
            why.contains("delete 1") && why.contains("Mesh m2/m2"),
            "{why}"
        );
        assert!(why.contains("--accept-store-rollback"), "{why}");
        let harmless = response("Secret", &[], &[]);
        assert_eq!(g.check(&store, Some(&h), &harmless, Kind::Secret), Err(why));
        // A change of content: refused too.
        let mut g = StreamGuard::new();
        let changes = response("Mesh", &[("m1", "other")], &[]);
        assert!(
            g.check(&store, Some(&h), &changes, Kind::Mesh)
                .unwrap_err()
                .contains("change 1")
        );
        // From a newer epoch of the same store: trusted, deletions listed for the log.
        let mut g = StreamGuard::new();
        let mut accepted = response("Mesh", &[], &["m2"]);
        accepted.store_id = "a".into();
        accepted.store_epoch = 1;
        assert_eq!(
            g.check(&store, Some(&h), &accepted, Kind::Mesh),
            Ok(vec!["Mesh m2/m2".to_string()])
        );
        assert_eq!(g.applied(Some(&h), &accepted), Some(held("a", 1, 3)));
    }
}
