//! `GET /export`: every resource in the Universal form `apply` takes back — Meshes, and with
//! `?includeSecrets=true` (admin only) every Secret with its data — for `global export`, a backup
//! that restores into a fresh global with the same content hashes.

use axum::Json;
use axum::extract::{Extension, Query, State};

use common::model::Kind;
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::state::ApiState;
use super::types::List;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct ExportQuery {
    /// Every Secret with its data too (admin only).
    #[serde(default)]
    pub include_secrets: bool,
}

/// `GET /export[?includeSecrets=true]`: a page of every resource, as `apply` takes it back.
#[utoipa::path(get, path = "/export", tag = "meshes", params(ExportQuery, super::openapi::PageParams),
    responses((status = 200, description = "A page of resources in the Universal form", body = List<Value>)))]
pub(super) async fn export(
    State(state): State<ApiState>,
    Extension(caller): Extension<crate::rights::Caller>,
    Query(query): Query<ExportQuery>,
    request: common::page::ListRequest,
) -> ApiResult<Json<List<Value>>> {
    // `crate::rights` let only admins ask for Secrets.
    let admin = caller.is_admin();
    if query.include_secrets && !admin {
        return Err(ApiError::denied(crate::rights::Denied::Forbidden(
            "exporting Secrets needs group admin".into(),
        )));
    }
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
    Ok(Json(List::page(items, &request)))
}
