//! The zone's read-only HTTP API: what it holds from global (`/meshes`, never Secret data), its
//! dataplanes and their certificates (`/dataplanes`), the state of its sync with global
//! (`/status`), health and metrics.

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::model::Kind;
use common::store::{ResourceKey, StoredResource};
use serde_json::{Value, json};

use crate::identity::IdentityManager;
use crate::state::ZoneCtx;

fn rfc3339_ms(ms: u64) -> Value {
    common::clock::rfc3339_ms(ms as i64).map_or(Value::Null, Value::String)
}

fn error(status: StatusCode, detail: impl Into<String>) -> Response {
    (
        status,
        Json(json!({
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail.into(),
        })),
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "internal error");
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// A stored resource as shown: its Universal form plus times; Secret data removed.
fn present(r: &StoredResource) -> Value {
    let mut v = r.spec.clone();
    if let Value::Object(map) = &mut v {
        if r.key.kind == Kind::Secret {
            map.remove("data");
        }
        map.insert("creationTime".into(), rfc3339_ms(r.created_unix * 1000));
        map.insert(
            "modificationTime".into(),
            rfc3339_ms(r.modified_unix * 1000),
        );
    }
    v
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
        .with_state(ctx)
}

/// `GET /dataplanes`: every dataplane registered in the zone, with its certificate.
async fn list_dataplanes(Extension(identity): Extension<Arc<IdentityManager>>) -> Response {
    let items = identity.dataplanes();
    Json(json!({"total": items.len(), "items": items})).into_response()
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
            let items: Vec<Value> = items.iter().map(present).collect();
            Json(json!({"total": items.len(), "items": items})).into_response()
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
    let mut v = present(&mesh);
    if let Value::Object(map) = &mut v {
        map.insert(
            "secrets".into(),
            secrets
                .iter()
                .map(|s| Value::String(s.key.name.clone()))
                .collect(),
        );
    }
    Json(v).into_response()
}

async fn status(State(ctx): State<Arc<ZoneCtx>>) -> Response {
    let conn = ctx.connection().clone();
    let mut types = serde_json::Map::new();
    for kind in common::sync::SYNCED_KINDS {
        let (count, digest) = ctx.held_digest(kind);
        let t = ctx.type_sync(kind);
        types.insert(
            kind.as_str().to_string(),
            json!({
                "count": count,
                "digest": digest,
                "systemVersion": t.system_version,
                "lastApplied": rfc3339_ms(t.last_applied_ms),
                "responsesApplied": t.responses_applied,
                "responsesRejected": t.responses_rejected,
                "lastNack": t.last_nack.as_ref().map(|n| json!({
                    "at": rfc3339_ms(n.at_ms),
                    "error": n.error,
                    "resources": n.resources.iter().map(|(mesh, name, reason)| json!({
                        "mesh": mesh, "name": name, "reason": reason,
                    })).collect::<Vec<_>>(),
                })),
            }),
        );
    }
    let vault: Vec<Value> = ctx
        .backend_checks()
        .iter()
        .map(|c| {
            json!({
                "mesh": c.mesh, "backend": c.backend, "type": c.backend_type, "ok": c.ok,
                "error": c.error, "checkedAt": rfc3339_ms(c.checked_at_unix_ms.max(0) as u64),
                "issued": c.issued,
            })
        })
        .collect();
    Json(json!({
        "zone": ctx.config.name,
        "global": {
            "address": ctx.config.global_address,
            "connected": conn.connected,
            "since": rfc3339_ms(conn.since_ms),
            "connects": conn.connects,
            "lastError": if conn.last_error.is_empty() { Value::Null } else { Value::String(conn.last_error.clone()) },
            "lastErrorAt": rfc3339_ms(conn.last_error_ms),
        },
        "types": types,
        "vault": vault,
    }))
    .into_response()
}
