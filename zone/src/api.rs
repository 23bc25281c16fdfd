//! The zone's read-only HTTP API: what it holds from global (`/meshes`, never Secret data), its
//! dataplanes and their certificates (`/dataplanes`), the state of its sync with global
//! (`/status`), health and metrics. The bodies are the types of `views`.

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::model::Kind;
use common::store::ResourceKey;

use crate::identity::IdentityManager;
use crate::state::ZoneCtx;
use crate::views::{
    ErrorBody, GlobalView, ListView, ResourceView, StatusView, TypeView, VaultCheckView,
};

fn error(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = ErrorBody {
        detail: detail.into(),
        status: status.as_u16(),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
    };
    (status, Json(body)).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "internal error");
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

pub fn router(ctx: Arc<ZoneCtx>, identity: Arc<IdentityManager>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/meshes", get(list_meshes))
        .route("/meshes/{name}", get(get_mesh))
        .route("/status", get(status))
        .route("/dataplanes", get(list_dataplanes))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API path") })
        .layer(Extension(identity))
        .layer(axum::middleware::from_fn_with_state(
            common::http::AllowedHosts::new(&ctx.config.api_hosts),
            common::http::check_host,
        ))
        .with_state(ctx)
}

/// `GET /dataplanes`: every dataplane registered in the zone, with its certificate.
async fn list_dataplanes(Extension(identity): Extension<Arc<IdentityManager>>) -> Response {
    Json(ListView::new(identity.dataplanes())).into_response()
}

/// Ready when the store answers: a zone serves from its store whether or not global is reachable.
async fn readyz(State(ctx): State<Arc<ZoneCtx>>) -> Response {
    match ctx.store.list(Kind::Mesh, None) {
        Ok(_) => "ready".into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn metrics(State(ctx): State<Arc<ZoneCtx>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.encode(),
    )
        .into_response()
}

async fn list_meshes(State(ctx): State<Arc<ZoneCtx>>) -> Response {
    match ctx.store.list(Kind::Mesh, None) {
        Ok(items) => {
            Json(ListView::new(items.iter().map(ResourceView::of).collect())).into_response()
        }
        Err(e) => internal(e),
    }
}

/// A mesh with the names of its Secrets (never their data).
async fn get_mesh(State(ctx): State<Arc<ZoneCtx>>, Path(name): Path<String>) -> Response {
    let mesh = match ctx.store.get(&ResourceKey::mesh(&name)) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("mesh {name:?} not found in this zone"),
            );
        }
        Err(e) => return internal(e),
    };
    let secrets = match ctx.store.list(Kind::Secret, Some(&name)) {
        Ok(s) => s,
        Err(e) => return internal(e),
    };
    let mut view = ResourceView::of(&mesh);
    view.secrets = Some(secrets.iter().map(|s| s.key.name.clone()).collect());
    Json(view).into_response()
}

async fn status(State(ctx): State<Arc<ZoneCtx>>) -> Response {
    let conn = ctx.connection().clone();
    let types = common::sync::SYNCED_KINDS
        .iter()
        .map(|kind| {
            let (count, digest) = ctx.held_digest(*kind);
            let t = ctx.type_sync(*kind);
            (kind.as_str().to_string(), TypeView::of(count, digest, &t))
        })
        .collect();
    Json(StatusView {
        clocks: ctx.clocks.views(),
        global: GlobalView::of(&ctx.config.global_addresses, &conn),
        types,
        vault: ctx
            .backend_checks()
            .iter()
            .map(VaultCheckView::of)
            .collect(),
        zone: ctx.config.name.clone(),
    })
    .into_response()
}
