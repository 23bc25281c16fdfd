//! `GET /replicas`: every global replica on the store (its heartbeat record: identity, aliveness,
//! leadership) with the zones whose stream it holds, read from the store at the request, so any
//! replica answers the same. The heartbeats and the leadership are `crate::replicas`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::error::ApiError;
use super::state::ApiState;
use super::types::{List, ReplicaList, ReplicaView};

/// `GET /replicas`.
#[utoipa::path(get, path = "/replicas", tag = "zones", params(super::openapi::PageParams),
    responses((status = 200, description = "A page of global's replicas", body = List<ReplicaView>)))]
pub async fn list_replicas(
    State(state): State<ApiState>,
    request: common::page::ListRequest,
) -> Result<Json<ReplicaList>, ApiError> {
    let snapshot = state.replicas.snapshot().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the replicas from the store: {e}"),
        )
    })?;
    Ok(Json(List::page(snapshot.present(), &request)))
}
