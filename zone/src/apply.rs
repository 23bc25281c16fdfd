//! Applying one response from global: every resource is parsed into the model and checked
//! (identity matches, backend confs parse, Secret data decodes); the valid ones and the removals
//! go to the store in ONE transaction, and the invalid ones are returned with their reasons for
//! the NACK. A rejected resource never stops the others.

use common::model::{Kind, Mesh, Resource, Secret};
use common::store::{Op, Outcome, ResourceKey, Store, StoreError};
use proto::kds;

/// What applying a response did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Resources added or changed.
    pub changed: usize,
    /// Resources sent again without change.
    pub unchanged: usize,
    pub removed: usize,
    pub rejected: Vec<kds::Rejection>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("type {0:?} is not one this zone receives")]
    UnknownType(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Parses and checks one received resource; a Mesh whose `file:` data sources this zone may not
/// read (`roots`: its `--data-source-dir`s) is refused with the reason.
pub fn validate(
    kind: Kind,
    r: &kds::Resource,
    roots: Option<&common::datasource::FileRoots>,
) -> Result<Resource, String> {
    match kind {
        Kind::Mesh => {
            let m: Mesh =
                serde_json::from_slice(&r.payload).map_err(|e| format!("not a valid Mesh: {e}"))?;
            if m.name != r.name || r.mesh != r.name {
                return Err(format!(
                    "the payload is Mesh {:?}, the response says {:?} (mesh {:?})",
                    m.name, r.name, r.mesh
                ));
            }
            if m.type_ != "Mesh" {
                return Err(format!("type is {:?}, expected \"Mesh\"", m.type_));
            }
            for (i, b) in m.backends().iter().enumerate() {
                if let Err(e) = b.typed_conf() {
                    let at = if e.path.is_empty() {
                        String::new()
                    } else {
                        format!(".{}", e.path)
                    };
                    return Err(format!("mtls.backends[{i}].conf{at}: {}", e.reason));
                }
            }
            if let Some(roots) = roots {
                for (field, path) in common::datasource::file_sources(&m) {
                    if let Err(reason) = roots.permits(&path) {
                        return Err(format!(
                            "{field}: this zone may not read {path:?}: {reason}"
                        ));
                    }
                }
            }
            Ok(Resource::Mesh(m))
        }
        Kind::Secret => {
            let s: Secret = serde_json::from_slice(&r.payload)
                .map_err(|e| format!("not a valid Secret: {e}"))?;
            if s.name != r.name || s.mesh != r.mesh {
                return Err(format!(
                    "the payload is Secret {:?} of mesh {:?}, the response says {:?} of mesh {:?}",
                    s.name, s.mesh, r.name, r.mesh
                ));
            }
            if s.type_ != "Secret" {
                return Err(format!("type is {:?}, expected \"Secret\"", s.type_));
            }
            s.decode()
                .map_err(|e| format!("data is not valid base64: {e}"))?;
            Ok(Resource::Secret(s))
        }
        Kind::Dataplane => Err("Dataplanes are not received from global".into()),
    }
}

/// Validates a response and applies what is valid in one store transaction.
pub async fn apply(
    store: &Store,
    response: &kds::DiscoveryResponse,
) -> Result<Applied, ApplyError> {
    let kind = common::sync::parse_kind(&response.r#type)
        .ok_or_else(|| ApplyError::UnknownType(response.r#type.clone()))?;
    let mut ops = Vec::with_capacity(response.resources.len() + response.removed_resources.len());
    let mut rejected = Vec::new();
    let roots = common::datasource::SecretLookup::file_roots(store);
    for r in &response.resources {
        match validate(kind, r, roots.as_deref()) {
            Ok(resource) => ops.push(Op::Put(resource)),
            Err(reason) => rejected.push(kds::Rejection {
                mesh: r.mesh.clone(),
                name: r.name.clone(),
                reason,
            }),
        }
    }
    for id in &response.removed_resources {
        ops.push(Op::Delete(ResourceKey::new(kind, &id.mesh, &id.name)));
    }
    let outcomes = if ops.is_empty() {
        vec![]
    } else {
        store.write(ops).await?
    };
    let mut applied = Applied {
        rejected,
        ..Default::default()
    };
    for o in outcomes {
        match o {
            Outcome::Created | Outcome::Updated => applied.changed += 1,
            Outcome::Unchanged => applied.unchanged += 1,
            Outcome::Deleted => applied.removed += 1,
            Outcome::NotFound => {}
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(mesh: &str, name: &str, payload: serde_json::Value) -> kds::Resource {
        kds::Resource {
            mesh: mesh.into(),
            name: name.into(),
            version: "v".into(),
            payload: serde_json::to_vec(&payload).unwrap(),
        }
    }

    #[test]
    fn a_mesh_naming_a_file_this_zone_may_not_read_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, allowed) = (tmp.path().join("data"), tmp.path().join("allowed"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::write(data.join("zone-token"), b"t").unwrap();
        let mesh = |file: &std::path::Path| {
            res(
                "m",
                "m",
                serde_json::json!({"type": "Mesh", "name": "m", "mtls": {"enabledBackend": "v",
                    "backends": [{"name": "v", "type": "vault", "conf": {"fromCp": {
                        "address": "http://127.0.0.1:8200", "pki": "p", "role": "r",
                        "auth": {"token": {"file": file.display().to_string()}}}}}]}}),
            )
        };
        let roots =
            common::datasource::FileRoots::new(std::slice::from_ref(&allowed), &data).unwrap();
        let e = validate(Kind::Mesh, &mesh(&data.join("zone-token")), Some(&roots)).unwrap_err();
        assert!(
            e.starts_with("mtls.backends[0].conf.fromCp.auth.token.file: this zone may not read"),
            "{e}"
        );
        // Under an allowed directory (existing or not yet): taken.
        validate(Kind::Mesh, &mesh(&allowed.join("token")), Some(&roots)).unwrap();
        // A zone embedded without roots reads anything.
        validate(Kind::Mesh, &mesh(&data.join("zone-token")), None).unwrap();
    }

    #[tokio::test]
    async fn invalid_resources_are_rejected_and_the_rest_applied_in_one_write() {
        let store = Store::temporary().unwrap();
        let response = kds::DiscoveryResponse {
            r#type: "Secret".into(),
            nonce: "1".into(),
            resources: vec![
                res(
                    "m",
                    "good",
                    serde_json::json!({"type": "Secret", "name": "good", "mesh": "m", "data": "aGVsbG8="}),
                ),
                res(
                    "m",
                    "bad-b64",
                    serde_json::json!({"type": "Secret", "name": "bad-b64", "mesh": "m", "data": "%%%"}),
                ),
                res(
                    "m",
                    "unknown-field",
                    serde_json::json!({"type": "Secret", "name": "unknown-field", "mesh": "m", "data": "", "extra": 1}),
                ),
                res(
                    "m",
                    "renamed",
                    serde_json::json!({"type": "Secret", "name": "other", "mesh": "m", "data": ""}),
                ),
            ],
            ..Default::default()
        };
        let out = apply(&store, &response).await.unwrap();
        assert_eq!(out.changed, 1);
        assert_eq!(store.revision(), 1);
        let names: Vec<&str> = out.rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["bad-b64", "unknown-field", "renamed"]);
        assert!(
            out.rejected[0].reason.contains("base64"),
            "{:?}",
            out.rejected[0]
        );
        assert!(
            out.rejected[1].reason.contains("extra"),
            "{:?}",
            out.rejected[1]
        );
        assert_eq!(
            store
                .get_secret("m", "good")
                .unwrap()
                .unwrap()
                .decode()
                .unwrap(),
            b"hello"
        );

        // Removal and re-send of an unchanged resource.
        let response = kds::DiscoveryResponse {
            r#type: "Secret".into(),
            nonce: "2".into(),
            resources: vec![res(
                "m",
                "good",
                serde_json::json!({"type": "Secret", "name": "good", "mesh": "m", "data": "aGVsbG8="}),
            )],
            removed_resources: vec![kds::ResourceId {
                mesh: "m".into(),
                name: "good".into(),
            }],
            ..Default::default()
        };
        let out = apply(&store, &response).await.unwrap();
        assert_eq!((out.unchanged, out.removed), (1, 1));
        assert!(store.get_secret("m", "good").unwrap().is_none());
    }

    #[tokio::test]
    async fn meshes_are_checked() {
        let store = Store::temporary().unwrap();
        let response = kds::DiscoveryResponse {
            r#type: "Mesh".into(),
            resources: vec![
                res("a", "a", serde_json::json!({"type": "Mesh", "name": "a"})),
                res(
                    "b",
                    "b",
                    serde_json::json!({"type": "Mesh", "name": "b", "mtls": {"enabledBackend": "x", "backends": [{"name": "x", "type": "builtin", "conf": {"bogus": true}}]}}),
                ),
                res(
                    "c",
                    "c",
                    serde_json::json!({"type": "Mesh", "name": "c", "mtls": {"enabledBackend": "x", "backends": [{"name": "x", "type": "nope"}]}}),
                ),
            ],
            ..Default::default()
        };
        let out = apply(&store, &response).await.unwrap();
        assert_eq!(out.changed, 1);
        assert_eq!(out.rejected.len(), 2);
        assert!(
            out.rejected[0].reason.starts_with("mtls.backends[0].conf"),
            "{:?}",
            out.rejected[0]
        );
        assert!(matches!(
            apply(
                &store,
                &kds::DiscoveryResponse {
                    r#type: "Zone".into(),
                    ..Default::default()
                }
            )
            .await,
            Err(ApplyError::UnknownType(_))
        ));
    }
}
