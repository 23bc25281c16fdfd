//! The handlers of Meshes and Secrets: `GET`/`PUT`/`DELETE /meshes[/{name}]`,
//! `/meshes/{mesh}/secrets[/{name}]` and `POST /apply`, with their presenters. A write is parsed
//! and checked against its path here, then handed to `admission`; its answer is built from what
//! admission returned.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::ValidationErrors;
use common::clock::rfc3339;
use common::model::{Kind, Resource};
use common::page::ListRequest;
use common::store::{Op, Outcome, ResourceKey, StoredResource};
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::state::{ApiState, Caller};
use super::types::{ApplyResult, List, MeshDeleted, ResourceResult, ResourceView, WriteResult};
use crate::admission::Admitted;

/// `?dryRun=true`: validate fully (the Vault test certificate included) and store nothing.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// `true` (or `1`, or empty): a dry run.
    #[serde(default, rename = "dryRun")]
    #[param(rename = "dryRun")]
    pub dry_run: Option<String>,
}

impl WriteQuery {
    fn dry_run(&self) -> bool {
        matches!(self.dry_run.as_deref(), Some("true" | "1" | ""))
    }
}

/// A stored resource as the API shows it: its Universal form plus times, secret data removed.
pub fn present(r: &StoredResource) -> ResourceView {
    let mut spec = match &r.spec {
        Value::Object(map) => map.clone(),
        _ => Default::default(),
    };
    if r.key.kind == Kind::Secret {
        spec.remove("data");
    }
    spec.remove("creationTime");
    spec.remove("modificationTime");
    ResourceView {
        spec,
        creation_time: rfc3339(r.created_unix as i64).unwrap_or_default(),
        modification_time: rfc3339(r.modified_unix as i64).unwrap_or_default(),
    }
}

fn list_body(items: Vec<StoredResource>, request: &ListRequest) -> List<ResourceView> {
    List::page(items.iter().map(present).collect(), request)
}

/// A Mesh as `caller` may see it: `inline`/`inlineString` values redacted unless admin.
fn present_mesh(r: &StoredResource, caller: &Caller) -> ResourceView {
    let mut view = present(r);
    if !caller.is_admin() {
        view.spec = match common::http::redact_inline(&Value::Object(view.spec)) {
            Value::Object(m) => m,
            _ => Default::default(),
        };
    }
    view
}

/// `GET /meshes`: a page of Meshes (`inline` values redacted unless admin).
#[utoipa::path(get, path = "/meshes", tag = "meshes", params(super::openapi::PageParams),
    responses((status = 200, description = "A page of Meshes", body = List<ResourceView>)))]
pub(super) async fn list_meshes(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    request: ListRequest,
) -> ApiResult<Json<List<ResourceView>>> {
    let meshes = state.store.list(Kind::Mesh, None)?;
    Ok(Json(List::page(
        meshes.iter().map(|r| present_mesh(r, &caller)).collect(),
        &request,
    )))
}

/// `GET /meshes/{name}`.
#[utoipa::path(get, path = "/meshes/{name}", tag = "meshes", params(("name" = String, Path, description = "The Mesh", example = "default")),
    responses((status = 200, description = "The Mesh", body = ResourceView)))]
pub(super) async fn get_mesh(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<ResourceView>> {
    match state.store.get(&ResourceKey::mesh(&name))? {
        Some(r) => Ok(Json(present_mesh(&r, &caller))),
        None => Err(ApiError::not_found(format!("mesh {name:?} not found"))),
    }
}

/// `GET /meshes/{name}/validation`: the backend checks of the last admission that stored the
/// Mesh with checks (steps, warnings), and when it ran.
#[utoipa::path(get, path = "/meshes/{name}/validation", tag = "meshes",
    params(("name" = String, Path, description = "The mesh", example = "default")),
    responses((status = 200, description = "The mesh's last validation at global", body = crate::admission::history::LastValidation)))]
pub(super) async fn get_validation(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<crate::admission::history::LastValidation>> {
    if state.store.get(&ResourceKey::mesh(&name))?.is_none() {
        return Err(ApiError::not_found(format!("mesh {name:?} not found")));
    }
    match crate::admission::history::last(&state.replicas.coordinator(), &name).await {
        Ok(Some(v)) => Ok(Json(v)),
        Ok(None) => Err(ApiError::not_found(format!(
            "mesh {name:?} has no validation on record (stored by a release that kept none, or with no backend check)"
        ))),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

/// `GET /meshes/{mesh}/secrets`: a page of a mesh's Secrets, without their data.
#[utoipa::path(get, path = "/meshes/{mesh}/secrets", tag = "secrets",
    params(("mesh" = String, Path, description = "The mesh", example = "default"), super::openapi::PageParams),
    responses((status = 200, description = "A page of Secrets, without their data", body = List<ResourceView>)))]
pub(super) async fn list_secrets(
    State(state): State<ApiState>,
    Path(mesh): Path<String>,
    request: ListRequest,
) -> ApiResult<Json<List<ResourceView>>> {
    Ok(Json(list_body(
        state.store.list(Kind::Secret, Some(&mesh))?,
        &request,
    )))
}

/// `GET /meshes/{mesh}/secrets/{name}`: a Secret without its data.
#[utoipa::path(get, path = "/meshes/{mesh}/secrets/{name}", tag = "secrets",
    params(("mesh" = String, Path, description = "The mesh", example = "default"), ("name" = String, Path, description = "The Secret", example = "sec-1")),
    responses((status = 200, description = "The Secret, without its data", body = ResourceView)))]
pub(super) async fn get_secret(
    State(state): State<ApiState>,
    Path((mesh, name)): Path<(String, String)>,
) -> ApiResult<Json<ResourceView>> {
    match state
        .store
        .get(&ResourceKey::new(Kind::Secret, &mesh, &name))?
    {
        Some(r) => Ok(Json(present(&r))),
        None => Err(ApiError::not_found(format!(
            "secret {name:?} not found in mesh {mesh:?}"
        ))),
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let mut e = ApiError::new(status, rejection.body_text());
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            e.detail = format!(
                "request body is larger than {} bytes",
                common::limits::API_BODY_BYTES
            );
        }
        e
    })
}

/// What a write did, as the API names it.
fn result_name(outcome: Outcome, dry_run: bool) -> &'static str {
    if dry_run {
        "valid"
    } else {
        match outcome {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            _ => "unchanged",
        }
    }
}

/// The response to a successful write.
fn write_response(
    outcome: Outcome,
    resource: &Resource,
    admitted: &Admitted,
    dry_run: bool,
) -> Response {
    let status = if outcome == Outcome::Created && !dry_run {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = WriteResult {
        resource: ResourceResult {
            type_: resource.kind().as_str().to_string(),
            mesh: resource.mesh().to_string(),
            name: resource.name().to_string(),
            result: result_name(outcome, dry_run).to_string(),
        },
        dry_run,
        warnings: admitted.warnings.clone(),
        checks: admitted.checks.clone(),
    };
    (status, Json(body)).into_response()
}

/// A client-supplied string as quoted in an error: at most 128 characters, so that an error never
/// echoes a huge input back.
pub fn shown(s: &str) -> String {
    const MAX: usize = 128;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}... ({} bytes)", s.len())
    }
}

fn check_url_identity(resource: &Resource, kind: Kind, mesh: &str, name: &str) -> ApiResult<()> {
    let mut errors = ValidationErrors::new();
    if resource.kind() != kind {
        errors.push(
            "type",
            format!(
                "this path takes a {kind}, the body is a {}",
                resource.kind()
            ),
        );
    }
    if resource.name() != name {
        errors.push(
            "name",
            format!(
                "name {} does not match the name in the path {}",
                shown(resource.name()),
                shown(name)
            ),
        );
    }
    if kind != Kind::Mesh && resource.mesh() != mesh {
        errors.push(
            "mesh",
            format!(
                "mesh {} does not match the mesh in the path {}",
                shown(resource.mesh()),
                shown(mesh)
            ),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "the body does not match the path",
            errors,
        ))
    }
}

/// The rights a write of `resource` needs beyond its route's: its mesh (in a batch, each
/// resource's), and admin for a Mesh with `file:` data sources.
fn check_resource_rights(caller: &Caller, resource: &Resource) -> ApiResult<()> {
    let need = crate::rights::Need::Write(resource.mesh().to_string());
    crate::rights::check(caller, &need).map_err(ApiError::denied)?;
    if let Resource::Mesh(mesh) = resource {
        crate::rights::check_file_sources(caller, mesh).map_err(ApiError::denied)?;
    }
    Ok(())
}

async fn put_resource(
    state: ApiState,
    caller: Caller,
    kind: Kind,
    mesh: String,
    name: String,
    query: WriteQuery,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body_bytes(body)?;
    let resource = common::parse::parse_body(&body).map_err(|errors| {
        state.metrics.count_admission(kind.as_str(), "unparsable");
        ApiError::invalid(
            format!("{kind} {} could not be parsed", shown(&name)),
            errors,
        )
    })?;
    check_url_identity(&resource, kind, &mesh, &name)?;
    check_resource_rights(&caller, &resource)?;
    let dry_run = query.dry_run();
    let (admitted, outcomes) = state
        .admission
        .admit_and_store(vec![resource.clone()], dry_run)
        .await?;
    let key = ResourceKey::of(&resource);
    let outcome = admitted
        .ops
        .iter()
        .zip(outcomes.iter())
        .find(|(op, _)| matches!(op, Op::Put(r) if ResourceKey::of(r) == key))
        .map(|(_, o)| *o)
        .unwrap_or(Outcome::Unchanged);
    if !dry_run {
        tracing::info!(kind = %kind, mesh = %mesh, name = %name, ?outcome, "stored");
    }
    Ok(write_response(outcome, &resource, &admitted, dry_run))
}

/// `PUT /meshes/{name}[?dryRun=true]`: creates or updates a Mesh through admission.
#[utoipa::path(put, path = "/meshes/{name}", tag = "meshes",
    params(("name" = String, Path, description = "The Mesh (as the body names it)", example = "default"), WriteQuery),
    request_body(description = "A Mesh in the Universal or Kubernetes form, JSON or YAML",
        content((super::openapi::ResourceBody = "application/json",
            example = json!({"type": "Mesh", "name": "default", "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}})),
            (String = "application/yaml"))),
    responses(
        (status = 200, description = "Updated, unchanged, or valid (dry run)", body = WriteResult),
        (status = 201, description = "Created", body = WriteResult)))]
pub(super) async fn put_mesh(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<WriteQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    put_resource(state, caller, Kind::Mesh, name.clone(), name, query, body).await
}

/// `PUT /meshes/{mesh}/secrets/{name}[?dryRun=true]`.
#[utoipa::path(put, path = "/meshes/{mesh}/secrets/{name}", tag = "secrets",
    params(("mesh" = String, Path, description = "The mesh", example = "default"), ("name" = String, Path, description = "The Secret", example = "sec-1"), WriteQuery),
    request_body(description = "A Secret (`type: Secret`, `name`, `mesh`, `data`: base64), JSON or YAML",
        content((super::openapi::ResourceBody = "application/json",
            example = json!({"type": "Secret", "mesh": "default", "name": "sec-1", "data": "c2VjcmV0LXZhbHVl"})),
            (String = "application/yaml"))),
    responses(
        (status = 200, description = "Updated, unchanged, or valid (dry run)", body = WriteResult),
        (status = 201, description = "Created", body = WriteResult)))]
pub(super) async fn put_secret(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((mesh, name)): Path<(String, String)>,
    Query(query): Query<WriteQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    put_resource(state, caller, Kind::Secret, mesh, name, query, body).await
}

/// `DELETE /meshes/{name}`: the Mesh and everything in it.
#[utoipa::path(delete, path = "/meshes/{name}", tag = "meshes", params(("name" = String, Path, description = "The Mesh", example = "default")),
    responses((status = 200, description = "Deleted", body = MeshDeleted)))]
pub(super) async fn delete_mesh(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<MeshDeleted>> {
    let n = state.admission.delete_mesh(&name).await?;
    tracing::info!(mesh = %name, owned = n, "mesh deleted");
    Ok(Json(MeshDeleted {
        type_: "Mesh".into(),
        name,
        result: "deleted".into(),
        owned_deleted: n,
    }))
}

/// `DELETE /meshes/{mesh}/secrets/{name}`: refused while a Mesh uses it.
#[utoipa::path(delete, path = "/meshes/{mesh}/secrets/{name}", tag = "secrets",
    params(("mesh" = String, Path, description = "The mesh", example = "default"), ("name" = String, Path, description = "The Secret", example = "sec-1")),
    responses((status = 200, description = "Deleted", body = ResourceResult)))]
pub(super) async fn delete_secret(
    State(state): State<ApiState>,
    Path((mesh, name)): Path<(String, String)>,
) -> ApiResult<Json<ResourceResult>> {
    state.admission.delete_secret(&mesh, &name).await?;
    tracing::info!(mesh = %mesh, name = %name, "secret deleted");
    Ok(Json(ResourceResult {
        type_: "Secret".into(),
        mesh,
        name,
        result: "deleted".into(),
    }))
}

/// `POST /apply[?dryRun=true]`: several documents (YAML stream or JSON), admitted and stored as one
/// all-or-nothing batch. Secrets in the batch count for the Meshes in it, so a dry run of a file
/// with a Mesh and its Secrets validates exactly what a real apply would.
#[utoipa::path(post, path = "/apply", tag = "meshes", params(WriteQuery),
    request_body(description = "Resources: a YAML stream (documents separated by ---) or JSON",
        content((String = "application/yaml"), (super::openapi::ResourceBody = "application/json"))),
    responses((status = 200, description = "What each resource became", body = ApplyResult)))]
pub(super) async fn apply_batch(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<WriteQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ApplyResult>> {
    let body = body_bytes(body)?;
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::invalid(
            "the body is not UTF-8",
            ValidationErrors::single("", "the body is not valid UTF-8"),
        )
    })?;
    let mut resources = common::parse::parse_documents(text).map_err(|e| {
        ApiError::invalid(
            format!("document {} could not be parsed", e.document),
            e.errors.clone(),
        )
    })?;
    // Meshes before their Secrets would fail the mesh-exists check for new meshes, and Secrets
    // before Meshes are needed for references: admission sees the whole batch, so order by kind.
    resources.sort_by_key(|r| match r.kind() {
        Kind::Mesh => 1,
        Kind::Secret => 0,
        Kind::Dataplane => 2,
    });
    // Every resource of the batch is checked before any is admitted: all or nothing.
    for r in &resources {
        check_resource_rights(&caller, r)?;
    }
    let dry_run = query.dry_run();
    let (admitted, outcomes) = state.admission.admit_and_store(resources, dry_run).await?;
    let results = admitted
        .ops
        .iter()
        .zip(outcomes.iter())
        .filter_map(|(op, outcome)| match op {
            Op::Put(r) => Some(ResourceResult {
                type_: r.kind().as_str().to_string(),
                mesh: r.mesh().to_string(),
                name: r.name().to_string(),
                result: result_name(*outcome, dry_run).to_string(),
            }),
            Op::Delete(_) => None,
        })
        .collect();
    Ok(Json(ApplyResult {
        dry_run,
        results,
        warnings: admitted.warnings,
        checks: admitted.checks,
    }))
}
