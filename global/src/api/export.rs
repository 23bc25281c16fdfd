//! `GET /export`: every resource in the Universal form `apply` takes back — Meshes, and with
//! `?includeSecrets=true` (admin only) every Secret with its data — for `global export`, a backup
//! that restores into a fresh global with the same content hashes.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use common::model::Kind;
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::state::ApiState;
use super::types::List;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportQuery {
    #[serde(default)]
    pub include_secrets: bool,
}

pub(super) async fn export(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(query): Query<ExportQuery>,
) -> ApiResult<Json<List<Value>>> {
    if query.include_secrets && !state.admin.matches(&headers) {
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "exporting Secrets needs the admin token: send Authorization: Bearer <token>",
        );
        e.title = "Unauthorized".into();
        return Err(e);
    }
    let admin = state.admin.matches(&headers);
    let mut items: Vec<Value> = state
        .store
        .list(Kind::Mesh, None)?
        .into_iter()
        .map(|r| {
            if admin {
                r.spec
            } else {
                common::http::redact_inline(&r.spec)
            }
        })
        .collect();
    if query.include_secrets {
        items.extend(
            state
                .store
                .list(Kind::Secret, None)?
                .into_iter()
                .map(|r| r.spec),
        );
    }
    Ok(Json(List::new(items)))
}
