//! The HTTP API of global (axum): meshes, secrets, batch apply, dataplanes, health and metrics, in
//! the shapes of SPEC.md. It owns request parsing, authorization and the error body; admission is
//! delegated to `accept`, storage to `common::store`. Secret data never leaves through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use common::datasource::SecretLookup;
use common::model::{Kind, Mesh, Resource};
use common::store::{Op, Outcome, ResourceKey, Store, StoredResource};
use common::{FieldError, ValidationErrors};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::accept::{self, Admitted, BackendCheck, Existing, Refused};
use crate::auth::{self, AdminToken};
use crate::metrics::{Metrics, RequestLabels};

/// Shared state of the API.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub admin: AdminToken,
    pub metrics: Arc<Metrics>,
    /// Admissions are serialized: each one compares against the state it will replace.
    pub admit_lock: Arc<Mutex<()>>,
    /// What global knows of each zone (sync server).
    pub zones: crate::kds::Zones,
    /// Signs zone (and dataplane) tokens.
    pub tokens: Arc<crate::tokens::TokenSigner>,
    /// Bounds of every Vault request of the admissions.
    pub vault_timeouts: common::vault::Timeouts,
}

/// The error body of SPEC.md.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_parameters: Vec<FieldError>,
    /// Backend check reports, when a Mesh was refused because of one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Value>,
    /// True when the refusal is only that Vault could not be reached (clients exit 3 on it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vault_unreachable: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            invalid_parameters: vec![],
            checks: vec![],
            vault_unreachable: false,
        }
    }

    fn invalid(detail: impl Into<String>, errors: ValidationErrors) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, detail);
        e.title = "Invalid resource".into();
        e.invalid_parameters = errors.errors;
        e
    }

    fn refused(r: Refused) -> Self {
        let vault_unreachable = r.unreachable && !r.checks.is_empty();
        let mut e = Self::invalid(r.to_string(), r.errors);
        e.vault_unreachable = vault_unreachable;
        e.checks = r
            .checks
            .iter()
            .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
            .collect();
        e
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}

impl From<common::store::StoreError> for ApiError {
    fn from(e: common::store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, Deserialize, Default)]
pub struct WriteQuery {
    #[serde(default, rename = "dryRun")]
    pub dry_run: Option<String>,
}

impl WriteQuery {
    fn dry_run(&self) -> bool {
        matches!(self.dry_run.as_deref(), Some("true" | "1" | ""))
    }
}

/// The router with every route and middleware.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/meshes", get(list_meshes))
        .route(
            "/meshes/{name}",
            put(put_mesh).get(get_mesh).delete(delete_mesh),
        )
        .route("/meshes/{mesh}/secrets", get(list_secrets))
        .route(
            "/meshes/{mesh}/secrets/{name}",
            put(put_secret).get(get_secret).delete(delete_secret),
        )
        .route(
            "/meshes/{mesh}/dataplanes",
            get(crate::kds::zones::list_dataplanes),
        )
        .route("/apply", post(apply_batch))
        .route("/zones", get(crate::kds::zones::list_zones))
        .route("/zones/{name}", get(crate::kds::zones::get_zone))
        .route("/tokens/zone", post(crate::tokens::issue_zone_token))
        .route(
            "/tokens/dataplane",
            post(crate::tokens::issue_dataplane_token),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API path") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(DefaultBodyLimit::max(common::limits::API_BODY_BYTES))
        .with_state(state)
}

async fn authorize(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let path = req.uri().path().to_string();
    let response = if auth::needs_admin(&method, &path, peer) && !state.admin.matches(req.headers())
    {
        tracing::info!(%method, %path, peer = ?peer, "request without a valid admin token refused");
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this request needs the admin token: send Authorization: Bearer <token> (global run writes it to <data-dir>/admin-token)",
        );
        e.title = "Unauthorized".into();
        let mut resp = e.into_response();
        resp.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        resp
    } else {
        next.run(req).await
    };
    state
        .metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method: method.to_string(),
            status: response.status().as_u16(),
        })
        .inc();
    tracing::debug!(%method, %path, status = response.status().as_u16(), elapsed_ms = start.elapsed().as_millis() as u64, "request");
    response
}

async fn readyz(State(state): State<ApiState>) -> ApiResult<&'static str> {
    state.store.list(Kind::Mesh, None)?;
    Ok("ready")
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// RFC 3339 from unix seconds.
fn rfc3339(unix: u64) -> String {
    common::clock::rfc3339(unix as i64).unwrap_or_default()
}

/// A stored resource as the API shows it: its Universal form plus times, secret data removed.
pub fn present(r: &StoredResource) -> Value {
    let mut v = r.spec.clone();
    if let Value::Object(map) = &mut v {
        if r.key.kind == Kind::Secret {
            map.remove("data");
        }
        map.insert("creationTime".into(), json!(rfc3339(r.created_unix)));
        map.insert("modificationTime".into(), json!(rfc3339(r.modified_unix)));
    }
    v
}

fn list_body(items: Vec<StoredResource>) -> Value {
    let items: Vec<Value> = items.iter().map(present).collect();
    json!({ "total": items.len(), "items": items })
}

async fn list_meshes(State(state): State<ApiState>) -> ApiResult<Json<Value>> {
    Ok(Json(list_body(state.store.list(Kind::Mesh, None)?)))
}

async fn get_mesh(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    match state.store.get(&ResourceKey::mesh(&name))? {
        Some(r) => Ok(Json(present(&r))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("mesh {name:?} not found"),
        )),
    }
}

async fn list_secrets(
    State(state): State<ApiState>,
    Path(mesh): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(list_body(
        state.store.list(Kind::Secret, Some(&mesh))?,
    )))
}

async fn get_secret(
    State(state): State<ApiState>,
    Path((mesh, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    match state
        .store
        .get(&ResourceKey::new(Kind::Secret, &mesh, &name))?
    {
        Some(r) => Ok(Json(present(&r))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("secret {name:?} not found in mesh {mesh:?}"),
        )),
    }
}

impl Existing for Store {
    fn mesh(&self, name: &str) -> Option<Mesh> {
        self.get_mesh(name).ok().flatten()
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

/// The response to a successful write.
fn write_response(
    outcome: Outcome,
    resource: &Resource,
    admitted: &Admitted,
    dry_run: bool,
) -> Response {
    let result = if dry_run {
        "valid"
    } else {
        match outcome {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            _ => "unchanged",
        }
    };
    let status = if outcome == Outcome::Created && !dry_run {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let checks: Vec<&BackendCheck> = admitted.checks.iter().collect();
    (
        status,
        Json(json!({
            "type": resource.kind().as_str(),
            "name": resource.name(),
            "mesh": resource.mesh(),
            "result": result,
            "dryRun": dry_run,
            "warnings": admitted.warnings,
            "checks": checks,
        })),
    )
        .into_response()
}

/// Admits and (unless dry run) stores one batch. Returns the admission and the per-op outcomes.
///
/// Admission is optimistic: it runs without the admission lock (the Vault test certificate and
/// builtin CA generation take from milliseconds to a second, and must not hold up every other
/// write) against a view of the store that notes the version of every resource it read. Under the
/// lock, the batch is stored only if none of them changed since; otherwise admission runs again,
/// under the lock, against what is stored then. So a write is never admitted against state that
/// another write replaced in the meantime.
async fn admit_and_store(
    state: &ApiState,
    batch: Vec<Resource>,
    dry_run: bool,
) -> ApiResult<(Admitted, Vec<Outcome>)> {
    let kinds: Vec<&'static str> = batch.iter().map(|r| r.kind().as_str()).collect();
    let count = |ok: bool| {
        for k in &kinds {
            state
                .metrics
                .count_admission(k, if ok { "admitted" } else { "refused" });
        }
    };
    let refused = |r: Refused| {
        tracing::info!(resource = %r.resource, errors = %r.errors, "refused");
        count(false);
        ApiError::refused(r)
    };
    let view = ReadSet::new(&state.store);
    let admitted = admit_observed(state, batch.clone(), &view, dry_run)
        .await
        .map_err(refused)?;
    if dry_run {
        count(true);
        let n = admitted.ops.len();
        return Ok((admitted, vec![Outcome::Unchanged; n]));
    }
    let _guard = state.admit_lock.lock().await;
    let admitted = if view.unchanged() {
        admitted
    } else {
        state.metrics.admission_retries.inc();
        tracing::debug!("what the admission read changed meanwhile: admitting again");
        admit_observed(state, batch, &state.store, false)
            .await
            .map_err(refused)?
    };
    count(true);
    let outcomes = state.store.write(admitted.ops.clone()).await?;
    state
        .metrics
        .meshes
        .set(state.store.count(Kind::Mesh) as i64);
    Ok((admitted, outcomes))
}

/// One admission, with its metrics.
async fn admit_observed(
    state: &ApiState,
    batch: Vec<Resource>,
    existing: &dyn Existing,
    dry_run: bool,
) -> Result<Admitted, accept::Refused> {
    let started = Instant::now();
    let result = accept::admit(batch, existing, dry_run, state.vault_timeouts).await;
    let elapsed = started.elapsed().as_secs_f64();
    let checks = match &result {
        Ok(a) => &a.checks,
        Err(r) => &r.checks,
    };
    if !checks.is_empty() {
        state.metrics.vault_check_seconds.observe(elapsed);
    }
    for c in checks {
        state.metrics.count_check(&c.type_, c.ok);
    }
    result
}

/// The store as one admission sees it, noting the version of every resource read (absent ones
/// too), so that [`ReadSet::unchanged`] can tell whether the admission still holds. The version is
/// noted before the resource is read: a write in between shows as a change.
struct ReadSet<'a> {
    store: &'a Store,
    seen: std::sync::Mutex<Vec<(ResourceKey, Option<String>)>>,
}

impl<'a> ReadSet<'a> {
    fn new(store: &'a Store) -> Self {
        Self {
            store,
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn note(&self, key: ResourceKey) {
        let version = self.store.version_of(&key);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key, version));
    }

    /// Whether every resource read still has the version it had when read.
    fn unchanged(&self) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .all(|(key, version)| self.store.version_of(key) == *version)
    }
}

impl SecretLookup for ReadSet<'_> {
    fn secret_data(&self, mesh: &str, name: &str) -> Option<Vec<u8>> {
        self.note(ResourceKey::new(Kind::Secret, mesh, name));
        self.store.secret_data(mesh, name)
    }
}

impl Existing for ReadSet<'_> {
    fn mesh(&self, name: &str) -> Option<Mesh> {
        self.note(ResourceKey::mesh(name));
        self.store.get_mesh(name).ok().flatten()
    }
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

async fn put_resource(
    state: ApiState,
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
    let dry_run = query.dry_run();
    let (admitted, outcomes) = admit_and_store(&state, vec![resource.clone()], dry_run).await?;
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

async fn put_mesh(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<WriteQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    put_resource(state, Kind::Mesh, name.clone(), name, query, body).await
}

async fn put_secret(
    State(state): State<ApiState>,
    Path((mesh, name)): Path<(String, String)>,
    Query(query): Query<WriteQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    put_resource(state, Kind::Secret, mesh, name, query, body).await
}

async fn delete_mesh(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let _guard = state.admit_lock.lock().await;
    if state.store.get(&ResourceKey::mesh(&name))?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("mesh {name:?} not found"),
        ));
    }
    // The Mesh and everything in it go in one transaction.
    let mut ops = vec![Op::Delete(ResourceKey::mesh(&name))];
    for kind in [Kind::Secret, Kind::Dataplane] {
        for r in state.store.list(kind, Some(&name))? {
            ops.push(Op::Delete(r.key));
        }
    }
    let n = ops.len() - 1;
    state.store.write(ops).await?;
    tracing::info!(mesh = %name, owned = n, "mesh deleted");
    Ok((
        StatusCode::OK,
        Json(json!({"type": "Mesh", "name": name, "result": "deleted", "ownedDeleted": n})),
    )
        .into_response())
}

async fn delete_secret(
    State(state): State<ApiState>,
    Path((mesh, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let _guard = state.admit_lock.lock().await;
    let key = ResourceKey::new(Kind::Secret, &mesh, &name);
    if state.store.get(&key)?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("secret {name:?} not found in mesh {mesh:?}"),
        ));
    }
    if let Some(m) = state.store.get_mesh(&mesh)? {
        let users = accept::secret_users(&m, &name);
        if !users.is_empty() {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "secret {name:?} is used by mesh {mesh:?} at {}: change the Mesh first",
                    users.join(", ")
                ),
            );
            e.title = "Secret in use".into();
            return Err(e);
        }
    }
    state.store.write(vec![Op::Delete(key)]).await?;
    tracing::info!(mesh = %mesh, name = %name, "secret deleted");
    Ok((
        StatusCode::OK,
        Json(json!({"type": "Secret", "mesh": mesh, "name": name, "result": "deleted"})),
    )
        .into_response())
}

/// `POST /apply[?dryRun=true]`: several documents (YAML stream or JSON), admitted and stored as one
/// all-or-nothing batch. Secrets in the batch count for the Meshes in it, so a dry run of a file
/// with a Mesh and its Secrets validates exactly what a real apply would.
async fn apply_batch(
    State(state): State<ApiState>,
    Query(query): Query<WriteQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
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
    let dry_run = query.dry_run();
    let (admitted, outcomes) = admit_and_store(&state, resources.clone(), dry_run).await?;
    let mut results = Vec::new();
    for (op, outcome) in admitted.ops.iter().zip(outcomes.iter()) {
        if let Op::Put(r) = op {
            results.push(json!({
                "type": r.kind().as_str(),
                "mesh": r.mesh(),
                "name": r.name(),
                "result": if dry_run { "valid" } else { match outcome {
                    Outcome::Created => "created",
                    Outcome::Updated => "updated",
                    _ => "unchanged",
                }},
            }));
        }
    }
    Ok((
        StatusCode::OK,
        Json(json!({
            "dryRun": dry_run,
            "results": results,
            "warnings": admitted.warnings,
            "checks": admitted.checks,
        })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_set_notices_every_change_to_what_it_read() {
        let store = Store::temporary().unwrap();
        let mesh = |name: &str| {
            Resource::Mesh(Mesh {
                type_: "Mesh".into(),
                name: name.into(),
                labels: Default::default(),
                mtls: None,
            })
        };
        let secret = |data: &[u8]| Resource::Secret(common::model::Secret::new("m", "s", data));
        store
            .write(vec![Op::Put(mesh("m")), Op::Put(secret(b"one"))])
            .await
            .unwrap();

        // Nothing written since the reads: the admission holds.
        let view = ReadSet::new(&store);
        assert!(view.mesh("m").is_some());
        assert_eq!(view.secret_data("m", "s").as_deref(), Some(&b"one"[..]));
        assert!(view.secret_data("m", "absent").is_none());
        store.write(vec![Op::Put(mesh("other"))]).await.unwrap();
        assert!(view.unchanged(), "a write of something not read");

        // The Mesh a Secret's admission found is deleted meanwhile (the Secret would be orphaned).
        let view = ReadSet::new(&store);
        assert!(view.mesh("m").is_some());
        store
            .write(vec![Op::Delete(ResourceKey::mesh("m"))])
            .await
            .unwrap();
        assert!(!view.unchanged());
        store.write(vec![Op::Put(mesh("m"))]).await.unwrap();

        // A Secret read by a vault backend's check changes meanwhile.
        let view = ReadSet::new(&store);
        assert!(view.secret_data("m", "s").is_some());
        store.write(vec![Op::Put(secret(b"two"))]).await.unwrap();
        assert!(!view.unchanged());

        // Something found absent appears meanwhile (a builtin CA another request generated).
        let view = ReadSet::new(&store);
        assert!(view.secret_data("m", "new").is_none());
        store
            .write(vec![Op::Put(Resource::Secret(common::model::Secret::new(
                "m", "new", b"x",
            )))])
            .await
            .unwrap();
        assert!(!view.unchanged());

        // Written again with the same content: same version, the admission still holds.
        let view = ReadSet::new(&store);
        assert!(view.secret_data("m", "s").is_some());
        store.write(vec![Op::Put(secret(b"two"))]).await.unwrap();
        assert!(view.unchanged());
    }
}
