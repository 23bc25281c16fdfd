//! The last validation of each Mesh: the backend checks (their steps and warnings) of the last
//! admission that stored the Mesh with checks, when it ran, kept in the store's `mesh-validation`
//! record tree so that every replica shows it (`GET /meshes/{name}/validation`, the GUI's mesh
//! page). A write that runs no check (an unchanged backend) keeps the previous record; deleting
//! the Mesh forgets it. Bookkeeping: losing it loses no resource, so a failure to write it is
//! logged, never a refused write.

use std::collections::BTreeMap;

use common::coordination::{CoordinationError, Coordinator};
use common::store::Store;
use serde::{Deserialize, Serialize};

use super::BackendCheck;

/// The record tree (key: the Mesh's name).
pub const TREE: &str = "mesh-validation";

/// The last validation of one Mesh.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastValidation {
    pub mesh: String,
    /// RFC 3339, when the admission ran.
    pub at: String,
    pub checks: Vec<BackendCheck>,
}

/// Keeps the checks of a stored admission, per Mesh.
pub async fn remember(store: &Store, checks: &[BackendCheck]) {
    let mut by_mesh: BTreeMap<&str, Vec<BackendCheck>> = BTreeMap::new();
    for c in checks {
        by_mesh.entry(&c.mesh).or_default().push(c.clone());
    }
    let at = common::clock::rfc3339_ms(common::clock::now_ms()).unwrap_or_default();
    for (mesh, checks) in by_mesh {
        let record = LastValidation {
            mesh: mesh.to_string(),
            at: at.clone(),
            checks,
        };
        let written = match store.records(TREE) {
            Ok(r) => r.put(mesh, &record).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::warn!(%mesh, error = %e, "the mesh's last validation was not kept");
        }
    }
}

/// Forgets a deleted Mesh's validation.
pub async fn forget(store: &Store, mesh: &str) {
    let removed = match store.records(TREE) {
        Ok(r) => r.remove(mesh).await.map(drop),
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        tracing::warn!(%mesh, error = %e, "a deleted mesh's last validation was not forgotten");
    }
}

/// The last validation of `mesh` as the store holds it now (fresh on PostgreSQL, so a write
/// through another replica shows at once).
pub async fn last(
    coordinator: &Coordinator,
    mesh: &str,
) -> Result<Option<LastValidation>, CoordinationError> {
    Ok(coordinator
        .get(TREE, mesh)
        .await?
        .and_then(|text| serde_json::from_str(&text).ok()))
}
