//! The zone's read-only HTTP API: its index (`/`), what it holds from global (`/meshes`, never
//! Secret data), its dataplanes and their certificates (`/dataplanes`), the state of its sync with
//! global (`/status`), health and metrics, and their description (`/openapi.json`, [`ZoneApi`]).
//! The bodies are the types of `views`; lists come a page at a time (`common::page`), errors as
//! `application/problem+json`.

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::model::Kind;
use common::page::ListRequest;
use common::store::ResourceKey;
use utoipa::OpenApi;

use crate::identity::IdentityManager;
use crate::state::ZoneCtx;
use crate::views::{
    DataplaneView, ErrorBody, GlobalView, ListView, ResourceView, StatusView, TypeView,
    VaultCheckView,
};

fn error(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = ErrorBody {
        detail: detail.into(),
        status: status.as_u16(),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
    };
    common::http::problem(status, &body)
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "internal error");
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

pub fn router(ctx: Arc<ZoneCtx>, identity: Arc<IdentityManager>) -> Router {
    let http_metrics = ctx.metrics.http.clone();
    Router::new()
        .route("/", get(index))
        .route("/openapi.json", get(openapi_json))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/meshes", get(list_meshes))
        .route("/meshes/{name}", get(get_mesh))
        .route("/status", get(status))
        .route("/dataplanes", get(list_dataplanes))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such API path (GET /openapi.json lists them)",
            )
        })
        .layer(Extension(identity))
        .layer(axum::middleware::from_fn_with_state(
            common::http::AllowedHosts::new(&ctx.config.api_hosts),
            common::http::check_host,
        ))
        .layer(axum::middleware::from_fn(common::http::problem_errors))
        // After routing (the route's pattern is known), around everything else.
        .layer(axum::middleware::from_fn_with_state(
            http_metrics,
            common::metrics::track_requests,
        ))
        .with_state(ctx)
}

/// The description of the zone's API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kmesh zone API",
        description = "The read-only HTTP API of a kmesh zone control plane: what it holds from global, its dataplanes and its status. Lists are paged (size, offset, next); errors are application/problem+json."
    ),
    paths(index, openapi_json, healthz, readyz, metrics, list_meshes, get_mesh, list_dataplanes, status),
    components(schemas(common::http::Problem)),
    modifiers(&ProblemAnswers),
)]
pub struct ZoneApi;

/// Every operation answers its errors as problem+json.
struct ProblemAnswers;

impl utoipa::Modify for ProblemAnswers {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let problem = ResponseBuilder::new()
            .description("The request was refused or failed (RFC 9457 problem details)")
            .content(
                common::http::PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(Ref::from_schema_name("Problem"))))
                    .build(),
            )
            .build();
        for item in api.paths.paths.values_mut() {
            if let Some(op) = item.get.as_mut() {
                op.responses
                    .responses
                    .insert("default".into(), RefOr::T(problem.clone()));
            }
        }
    }
}

/// `?size=N&offset=K` of every list (`common::page`).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by `ListRequest`; here only to be described
struct PageParams {
    /// Items per page: 1 to 1000 (100 when not given).
    #[param(minimum = 1, maximum = 1000)]
    size: Option<u32>,
    /// Items to skip (0 when not given).
    #[param(minimum = 0)]
    offset: Option<u64>,
}

/// `GET /`: what answers here.
#[utoipa::path(get, path = "/", tag = "meta",
    responses((status = 200, description = "What answers here", body = common::about::Index)))]
async fn index() -> Json<common::about::Index> {
    Json(common::about::Index::new(common::about::Mode::Zone))
}

/// `GET /openapi.json`: this description.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", body = serde_json::Value)))]
async fn openapi_json() -> Response {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let json = JSON.get_or_init(|| {
        ZoneApi::openapi()
            .to_pretty_json()
            .expect("the description serializes")
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json.clone(),
    )
        .into_response()
}

/// `GET /healthz`: the process serves.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The process serves", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /dataplanes`: every dataplane registered in the zone, with its certificate.
#[utoipa::path(get, path = "/dataplanes", tag = "zone", params(PageParams),
    responses((status = 200, description = "A page of the zone's dataplanes", body = ListView<DataplaneView>)))]
async fn list_dataplanes(
    Extension(identity): Extension<Arc<IdentityManager>>,
    request: ListRequest,
) -> Response {
    let mut dataplanes = identity.dataplanes();
    dataplanes.sort_by(|a, b| (&a.mesh, &a.name).cmp(&(&b.mesh, &b.name)));
    Json(ListView::page(dataplanes, &request)).into_response()
}

/// Ready when the store answers: a zone serves from its store whether or not global is reachable.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses((status = 200, description = "Ready", body = String, content_type = "text/plain")))]
async fn readyz(State(ctx): State<Arc<ZoneCtx>>) -> Response {
    match ctx.store.list(Kind::Mesh, None) {
        Ok(_) => "ready".into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Every metric, named kmesh_*", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
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

/// `GET /meshes`: a page of the meshes the zone holds.
#[utoipa::path(get, path = "/meshes", tag = "zone", params(PageParams),
    responses((status = 200, description = "A page of the meshes the zone holds", body = ListView<ResourceView>)))]
async fn list_meshes(State(ctx): State<Arc<ZoneCtx>>, request: ListRequest) -> Response {
    match ctx.store.list(Kind::Mesh, None) {
        Ok(items) => Json(ListView::page(
            items.iter().map(ResourceView::of).collect(),
            &request,
        ))
        .into_response(),
        Err(e) => internal(e),
    }
}

/// A mesh with the names of its Secrets (never their data).
#[utoipa::path(get, path = "/meshes/{name}", tag = "zone", params(("name" = String, Path, description = "The mesh")),
    responses((status = 200, description = "The mesh, with the names of its Secrets", body = ResourceView)))]
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

/// `GET /status`: the connection to global, each synced type, the Vault checks, the clocks.
#[utoipa::path(get, path = "/status", tag = "zone",
    responses((status = 200, description = "The zone's state", body = StatusView)))]
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
