//! The HTTP API of global (axum): the index, meshes, secrets, batch apply, zones, dataplanes,
//! tokens, health and metrics, in the shapes of SPEC.md (`types`) and as Kuma's API shapes them:
//! lists a page at a time (`common::page`), errors as `application/problem+json`, every route
//! described in `/openapi.json` (`openapi`). It owns routing, request parsing, authorization,
//! every presenter and the mapping of refusals to statuses (`error`); writes are handed to
//! `admission`, reads go to `common::store` and the zone records of `kds::zones`. Secret data
//! never leaves through it.

pub mod error;
pub mod export;
pub mod openapi;
pub mod replicas;
pub mod resources;
pub mod state;
pub mod tokens;
pub mod types;
pub mod zones;

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use common::model::Kind;

use crate::rights;

pub use error::{ApiError, ApiResult};
pub use resources::{WriteQuery, present, shown};
pub use state::ApiState;

/// The router with every route and middleware.
pub fn router(state: ApiState) -> Router {
    use resources::*;
    Router::new()
        .route("/", get(index))
        .route("/openapi.json", get(openapi::serve))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/meshes", get(list_meshes))
        .route(
            "/meshes/{name}",
            put(put_mesh).get(get_mesh).delete(delete_mesh),
        )
        .route("/meshes/{name}/validation", get(get_validation))
        .route("/meshes/{mesh}/secrets", get(list_secrets))
        .route(
            "/meshes/{mesh}/secrets/{name}",
            put(put_secret).get(get_secret).delete(delete_secret),
        )
        .route("/meshes/{mesh}/dataplanes", get(zones::list_dataplanes))
        .route("/apply", post(apply_batch))
        .route("/export", get(export::export))
        .route("/zones", get(zones::list_zones))
        .route(
            "/zones/{name}",
            get(zones::get_zone).delete(zones::delete_zone),
        )
        .route("/replicas", get(replicas::list_replicas))
        .route("/tokens/zone", post(tokens::issue_zone_token))
        .route("/tokens/dataplane", post(tokens::issue_dataplane_token))
        .route("/tokens/user", post(tokens::issue_user_token))
        .route("/tokens/revoke", post(tokens::revoke))
        .route("/tokens/revoked", get(tokens::list_revoked))
        .route(
            "/tokens/signing-keys",
            get(tokens::list_signing_keys).post(tokens::rotate_signing_key),
        )
        .route(
            "/tokens/signing-keys/{kid}",
            axum::routing::delete(tokens::retire_signing_key),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such API path (GET /openapi.json lists them)",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        // Every error of the API as problem+json (the GUI's pages, merged below, stay HTML).
        .layer(axum::middleware::from_fn(common::http::problem_errors))
        .merge(crate::gui::router()) // static pages only: their reads come back through `authorize`
        .layer(axum::middleware::from_fn_with_state(
            state.hosts.clone(),
            common::http::check_host,
        ))
        // After routing (the route's pattern is known), around everything else: every answer timed.
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.http.clone(),
            common::metrics::track_requests,
        ))
        .layer(DefaultBodyLimit::max(common::limits::API_BODY_BYTES))
        .with_state(state)
}

/// How long a read waits to catch up with the other replicas before answering from what this
/// replica holds (PostgreSQL unreachable or slow).
const READ_REFRESH_LIMIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The caller of a request: the admin token, a valid user token, or nobody. `Err` carries why a
/// presented token was not accepted (for the log; the answer never says which part was wrong).
fn caller_of(
    state: &ApiState,
    headers: &axum::http::HeaderMap,
    loopback: bool,
) -> Result<rights::Caller, &'static str> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(rights::Caller::Anonymous { loopback });
    };
    if state.admin.matches(headers) {
        return Ok(rights::Caller::Admin);
    }
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("malformed")?;
    state
        .authority
        .key_set()
        .verify::<common::tokens::UserClaim>(token.trim(), common::tokens::USER_SCOPE)
        .map(|c| rights::Caller::User(c.body))
        .map_err(|e| e.code())
}

/// A 401 or 403 in the API's error shape.
fn denied(d: rights::Denied) -> Response {
    let mut resp = ApiError::denied(d).into_response();
    if resp.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    resp
}

async fn authorize(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or_default().to_string();
    // Printable, and never a body: nothing secret reaches the audit log this way.
    let query = common::http::printable(&raw_query);
    let loopback = peer.map(|p| p.ip().is_loopback()).unwrap_or(false);
    let need = rights::need(&method, &path, &raw_query);
    let caller = caller_of(&state, req.headers(), loopback);
    let verdict = match &caller {
        // A token that is not accepted is refused, whatever the route (but health and metrics).
        Err(_) if need != rights::Need::Open => Err(rights::Denied::Unauthenticated(
            "the token was not accepted (unknown, malformed, expired or revoked): send Authorization: Bearer <token> with a valid one".into(),
        )),
        Err(_) => Ok(()),
        Ok(c) => rights::check(c, &need),
    };
    let caller = caller.unwrap_or(rights::Caller::Anonymous { loopback });
    let mut response = match verdict {
        Err(d) => {
            if matches!(d, rights::Denied::Unauthenticated(_)) {
                state.metrics.auth_failures.inc();
                // Said once per source and minute: a brute force does not flood the log.
                if state.auth_log.first_in_a_while(peer.map(|p| p.ip())) {
                    tracing::warn!(%method, %path, peer = ?peer, "request without a valid token refused (further ones from this address are counted in kmesh_api_auth_failures_total, logged again in a minute)");
                }
            }
            denied(d)
        }
        Ok(()) => {
            req.extensions_mut().insert(caller.clone());
            // Read your writes across replicas: first what the others committed (PostgreSQL),
            // so that a read, or a delete's "not found", is never older than a write
            // acknowledged elsewhere.
            state.store.refresh(READ_REFRESH_LIMIT).await;
            next.run(req).await
        }
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), elapsed_ms = start.elapsed().as_millis() as u64, "request");
    if crate::audit::audited(&method) {
        let (action, resource) = crate::audit::action_of(method.as_str(), &path);
        let status = response.status().as_u16();
        // What a handler adds (the id of a token it made or revoked, a key's id): for the
        // audit line only.
        let detail = response
            .headers_mut()
            .remove(AUDIT_DETAIL_HEADER)
            .and_then(|v| v.to_str().ok().map(common::http::printable))
            .unwrap_or_default();
        state.audit.record(crate::audit::Entry {
            time: common::clock::rfc3339_ms(common::clock::now_ms()).unwrap_or_default(),
            actor: caller.actor(),
            source: peer.map(|p| p.to_string()).unwrap_or_default(),
            action,
            resource,
            method: method.to_string(),
            path: common::http::printable(&path),
            query,
            result: crate::audit::result_of(status),
            status,
            detail,
        });
    }
    response
}

/// A response header a handler sets to add a detail to the request's audit line (a token's id).
pub const AUDIT_DETAIL_HEADER: &str = "x-kmesh-audit";

/// `GET /`: what answers here (product, version, commit, mode, host, the GUI's path).
#[utoipa::path(get, path = "/", tag = "meta", security(()),
    responses((status = 200, description = "What answers here", body = common::about::Index)))]
pub(super) async fn index() -> axum::Json<common::about::Index> {
    axum::Json(common::about::Index::new(common::about::Mode::Global))
}

/// `GET /healthz`: the process serves.
#[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
    responses((status = 200, description = "The process serves", body = String, content_type = "text/plain")))]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the store answers and takes writes.
#[utoipa::path(get, path = "/readyz", tag = "meta", security(()),
    responses((status = 200, description = "Ready", body = String, content_type = "text/plain")))]
pub(super) async fn readyz(State(state): State<ApiState>) -> ApiResult<&'static str> {
    if !state.store.reachable() {
        let why = state.store.write_failure().borrow().clone();
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            match why {
                Some(why) => format!("writes to the store fail until it can write again: {why}"),
                None => {
                    "the store (PostgreSQL) is unreachable: writes fail until it is back".into()
                }
            },
        );
        e.title = "Store unavailable".into();
        return Err(e);
    }
    state.store.list(Kind::Mesh, None)?;
    Ok("ready")
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "meta", security(()),
    responses((status = 200, description = "Every metric, named kmesh_*", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub(super) async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
