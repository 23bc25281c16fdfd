//! Tokens through the API (admin only, as `crate::rights` decides): issuance (`POST
//! /tokens/zone`, `/tokens/dataplane`, `/tokens/user`), revocation (`POST /tokens/revoke`, `GET
//! /tokens/revoked`) and the signing keys (`GET|POST /tokens/signing-keys`: list, rotate;
//! `DELETE /tokens/signing-keys/{kid}`: retire). Signing, keys and revocations are
//! `crate::authority`; this module parses the requests and presents the answers. A new token is
//! answered as Kuma's API does, the token alone as `text/plain` (`curl ... > token`), unless the
//! request asks for `Accept: application/json`: then its id (`jti`) and expiry come with it (the
//! command line asks so). Each answer names the token's id for the audit log.

use std::time::Duration;

use super::error::ApiError;
use super::state::ApiState;
use super::types::{
    DataplaneToken, DataplaneTokenRequest, RevokeRequest, Revoked, RevokedView, SigningKeyView,
    UserToken, UserTokenRequest, ZoneToken, ZoneTokenRequest,
};
use crate::tokens::{DEFAULT_VALIDITY, check_zone_name, dataplane_claim};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// The JSON body of a token request, or a refusal saying which `shape` it must have.
fn parse_request<T: DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request("", format!("the body must be {shape}: {e}")))
}

fn validity(valid_for: &Option<String>) -> Result<Duration, ApiError> {
    let valid_for = match valid_for {
        None => DEFAULT_VALIDITY,
        Some(text) => common::duration::parse_duration(text)
            .map_err(|e| ApiError::invalid_request("validFor", e.to_string()))?,
    };
    if valid_for.as_secs() == 0 {
        return Err(ApiError::invalid_request(
            "validFor",
            "must be at least 1s".into(),
        ));
    }
    Ok(valid_for)
}

/// When a token issued now for `valid_for` expires, as RFC 3339 (the number of seconds itself
/// when out of range).
fn expires(valid_for: Duration) -> String {
    let exp = u64::try_from(common::clock::now_unix())
        .unwrap_or(0)
        .saturating_add(valid_for.as_secs());
    i64::try_from(exp)
        .ok()
        .and_then(common::clock::rfc3339)
        .unwrap_or_else(|| exp.to_string())
}

/// The id of a token just signed (its `jti`).
fn id_of(token: &str) -> String {
    common::tokens::token_id(token)
        .map(|t| t.jti)
        .unwrap_or_default()
}

/// `body` as JSON, with `detail` for the request's audit line.
fn audited<T: serde::Serialize>(detail: String, body: T) -> Response {
    ([(super::AUDIT_DETAIL_HEADER, detail)], Json(body)).into_response()
}

/// Whether the request's `Accept` asks for JSON (a media range `application/json` whose `q` is
/// not 0).
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/json") && !refused
        })
}

/// A new token as the request asks: `body` (the token with its id and expiry) as JSON, or the
/// token alone as `text/plain`; with `detail` for the audit line either way.
fn token_answer<T: serde::Serialize>(
    headers: &HeaderMap,
    detail: String,
    token: &str,
    body: T,
) -> Response {
    if wants_json(headers) {
        return audited(detail, body);
    }
    (
        [
            (
                header::CONTENT_TYPE.as_str(),
                "text/plain; charset=utf-8".to_string(),
            ),
            (super::AUDIT_DETAIL_HEADER, detail),
        ],
        token.to_string(),
    )
        .into_response()
}

/// `POST /tokens/zone` (admin only): `{"zone": NAME, "validFor": "720h"}` -> the token (or
/// `{"token": ..., "id": ..., "expires": ...}` with `Accept: application/json`).
#[utoipa::path(post, path = "/tokens/zone", tag = "tokens", request_body = ZoneTokenRequest,
    responses((status = 200, description = "A token for a zone: the token alone as text/plain, or with its id and expiry as JSON (Accept: application/json)",
        content((String = "text/plain"), (ZoneToken = "application/json")))))]
pub async fn issue_zone_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ZoneTokenRequest = parse_request(&body, r#"{"zone": NAME, "validFor": DURATION}"#)?;
    check_zone_name(&req.zone).map_err(|e| ApiError::invalid_request("zone", e))?;
    let valid_for = validity(&req.valid_for)?;
    let token = state
        .authority
        .signer()
        .issue_zone_token(&req.zone, valid_for);
    let expires = expires(valid_for);
    let id = id_of(&token);
    tracing::info!(zone = %req.zone, %expires, %id, "zone token issued");
    Ok(token_answer(
        &headers,
        format!("id={id} zone={}", req.zone),
        &token,
        ZoneToken {
            zone: req.zone,
            expires,
            id,
            token: token.clone(),
        },
    ))
}

/// `POST /tokens/dataplane` (admin only): `{"mesh": M, "name": N, "service": S, "tags": {...},
/// "validFor": "720h"}` (or `"anyService": true` instead of a service) -> `{"token": ...}`: a
/// token with which the proxy `N` of mesh `M` authenticates to its zone, registering service `S`
/// and the bound tags. The mesh need not exist yet (tokens may be prepared before the Mesh).
#[utoipa::path(post, path = "/tokens/dataplane", tag = "tokens", request_body = DataplaneTokenRequest,
    responses((status = 200, description = "A token for a proxy: the token alone as text/plain, or with its id and expiry as JSON (Accept: application/json)",
        content((String = "text/plain"), (DataplaneToken = "application/json")))))]
pub async fn issue_dataplane_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: DataplaneTokenRequest = parse_request(
        &body,
        r#"{"mesh": MESH, "name": NAME, "service": SERVICE, "tags": {TAG: VALUE}, "validFor": DURATION} (or "anyService": true instead of "service")"#,
    )?;
    let claim = match dataplane_claim(
        &req.mesh,
        &req.name,
        req.service.as_deref(),
        &req.tags,
        req.any_service,
    ) {
        Ok(c) => c,
        Err(errs) => {
            let mut e = ApiError::new(StatusCode::BAD_REQUEST, errs.to_string());
            e.title = "Invalid request".into();
            e.invalid_parameters = errs.errors;
            return Err(e);
        }
    };
    let valid_for = validity(&req.valid_for)?;
    let token = state
        .authority
        .signer()
        .issue_dataplane_token(claim, valid_for);
    let expires = expires(valid_for);
    let id = id_of(&token);
    tracing::info!(mesh = %req.mesh, name = %req.name, service = ?req.service, tags = ?req.tags, any_service = req.any_service, %expires, %id, "dataplane token issued");
    Ok(token_answer(
        &headers,
        format!("id={id} mesh={} name={}", req.mesh, req.name),
        &token,
        DataplaneToken {
            mesh: req.mesh,
            name: req.name,
            expires,
            id,
            token: token.clone(),
        },
    ))
}

/// Default validity of a user token.
pub const USER_TOKEN_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Checks a user token request and makes its claim, naming each bad field.
pub fn user_claim(
    req: &UserTokenRequest,
) -> Result<common::tokens::UserClaim, common::ValidationErrors> {
    use common::tokens::Group;
    let mut errs = common::ValidationErrors::new();
    let name = req.name.trim();
    if name.is_empty() || name.len() > 253 || name.chars().any(|c| c.is_control()) {
        errs.push(
            "name",
            "required: who the token is for, 1 to 253 printable characters",
        );
    }
    let group = match req.group.parse::<Group>() {
        Ok(g) => Some(g),
        Err(e) => {
            errs.push("group", e);
            None
        }
    };
    for (i, m) in req.meshes.iter().enumerate() {
        common::validate::validate_mesh_name(&format!("meshes[{i}]"), m, &mut errs);
    }
    match group {
        Some(Group::Operator) if req.meshes.is_empty() => errs.push(
            "meshes",
            "an operator needs the meshes it may change (--mesh M, repeatable)",
        ),
        Some(Group::Admin | Group::Viewer) if !req.meshes.is_empty() => errs.push(
            "meshes",
            "only an operator's rights are per mesh: admin and viewer take no meshes",
        ),
        _ => {}
    }
    match group {
        Some(group) if errs.is_empty() => Ok(common::tokens::UserClaim {
            name: name.to_string(),
            group,
            meshes: req.meshes.clone(),
        }),
        _ => Err(errs),
    }
}

/// `POST /tokens/user` (admin only): `{"name": N, "group": "admin|operator|viewer", "meshes":
/// [...], "validFor": "24h"}` -> `{"token": ..., "id": JTI}`.
#[utoipa::path(post, path = "/tokens/user", tag = "tokens", request_body = UserTokenRequest,
    responses((status = 200, description = "A token for a user: the token alone as text/plain, or with its id and expiry as JSON (Accept: application/json)",
        content((String = "text/plain"), (UserToken = "application/json")))))]
pub async fn issue_user_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: UserTokenRequest = parse_request(
        &body,
        r#"{"name": NAME, "group": "admin"|"operator"|"viewer", "meshes": [MESH], "validFor": DURATION}"#,
    )?;
    let claim = user_claim(&req).map_err(|errs| {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, errs.to_string());
        e.title = "Invalid request".into();
        e.invalid_parameters = errs.errors;
        e
    })?;
    let valid_for = match &req.valid_for {
        None => USER_TOKEN_VALIDITY,
        Some(_) => validity(&req.valid_for)?,
    };
    let token = state
        .authority
        .signer()
        .issue_user_token(claim.clone(), valid_for);
    let expires = expires(valid_for);
    let id = id_of(&token);
    tracing::info!(user = %claim.name, group = %claim.group, meshes = ?claim.meshes, %expires, %id, "user token issued");
    Ok(token_answer(
        &headers,
        format!("id={id} user={} group={}", claim.name, claim.group),
        &token,
        UserToken {
            name: claim.name,
            group: claim.group.to_string(),
            meshes: claim.meshes,
            expires,
            id,
            token: token.clone(),
        },
    ))
}

/// `POST /tokens/revoke` (admin only): `{"id": JTI}`. Every replica refuses the token within
/// `authority::REFRESH`; zones get the list over the sync stream.
#[utoipa::path(post, path = "/tokens/revoke", tag = "tokens", request_body = RevokeRequest,
    responses((status = 200, description = "Revoked (or already)", body = Revoked)))]
pub async fn revoke(
    State(state): State<ApiState>,
    Extension(caller): Extension<crate::rights::Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RevokeRequest = parse_request(&body, r#"{"id": TOKEN_ID}"#)?;
    let id = req.id.trim().to_string();
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::invalid_request(
            "id",
            "a token id (its jti claim: letters, digits, '-' or '_'; `global revoke-token --token-file F` reads it from the token)".into(),
        ));
    }
    let already = state
        .authority
        .revoke(&id, &caller.actor())
        .await
        .map_err(authority_error)?;
    tracing::info!(%id, already, "token revoked");
    Ok(audited(
        format!("id={id}"),
        Revoked {
            id,
            result: if already {
                "already revoked"
            } else {
                "revoked"
            }
            .into(),
        },
    ))
}

/// `GET /tokens/revoked` (admin only): the revoked token ids, when and by whom.
#[utoipa::path(get, path = "/tokens/revoked", tag = "tokens", params(super::openapi::PageParams),
    responses((status = 200, description = "A page of revoked token ids", body = super::types::List<RevokedView>)))]
pub async fn list_revoked(
    State(state): State<ApiState>,
    request: common::page::ListRequest,
) -> Json<super::types::List<RevokedView>> {
    Json(super::types::List::page(
        state
            .authority
            .revocations()
            .into_iter()
            .map(|(id, r)| RevokedView {
                id,
                revoked_at: common::clock::rfc3339_ms(r.revoked_at_ms).unwrap_or_default(),
                by: r.by,
            })
            .collect(),
        &request,
    ))
}

fn key_views(state: &ApiState) -> Vec<SigningKeyView> {
    state
        .authority
        .keys()
        .into_iter()
        .map(|k| SigningKeyView {
            kid: k.kid,
            created: if k.created_ms == 0 {
                String::new()
            } else {
                common::clock::rfc3339_ms(k.created_ms).unwrap_or_default()
            },
            active: k.active,
        })
        .collect()
}

/// `GET /tokens/signing-keys` (admin only): the keys, oldest first; the active one signs.
#[utoipa::path(get, path = "/tokens/signing-keys", tag = "tokens", params(super::openapi::PageParams),
    responses((status = 200, description = "A page of the signing keys, oldest first", body = super::types::List<SigningKeyView>)))]
pub async fn list_signing_keys(
    State(state): State<ApiState>,
    request: common::page::ListRequest,
) -> Json<super::types::List<SigningKeyView>> {
    Json(super::types::List::page(key_views(&state), &request))
}

/// `POST /tokens/signing-keys` (admin only): a new key signs from now on; older ones keep
/// verifying until retired. Zones get the new public key over the sync stream.
#[utoipa::path(post, path = "/tokens/signing-keys", tag = "tokens",
    responses((status = 200, description = "Every key, the new one active", body = super::types::List<SigningKeyView>)))]
pub async fn rotate_signing_key(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let kid = state.authority.rotate().await.map_err(authority_error)?;
    tracing::info!(%kid, "token signing key rotated");
    Ok(audited(
        format!("kid={kid}"),
        super::types::List::new(key_views(&state)),
    ))
}

/// `DELETE /tokens/signing-keys/{kid}` (admin only): tokens signed by that key are refused from
/// now on (zones too, and streams opened with them end).
#[utoipa::path(delete, path = "/tokens/signing-keys/{kid}", tag = "tokens", params(("kid" = String, Path, description = "The key's id", example = "no-such-key")),
    responses((status = 200, description = "The keys left", body = super::types::List<SigningKeyView>)))]
pub async fn retire_signing_key(
    State(state): State<ApiState>,
    Path(kid): Path<String>,
) -> Result<Response, ApiError> {
    state
        .authority
        .retire(&kid)
        .await
        .map_err(authority_error)?;
    tracing::info!(%kid, "token signing key retired");
    Ok(audited(
        format!("kid={kid}"),
        super::types::List::new(key_views(&state)),
    ))
}

fn authority_error(e: crate::authority::AuthorityError) -> ApiError {
    use crate::authority::AuthorityError as E;
    match e {
        E::NoSuchKey(_) => ApiError::not_found(e.to_string()),
        E::ActiveKey(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        E::Store(ref s) if matches!(s, common::store::StoreError::Unavailable { .. }) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_only_when_the_request_accepts_it() {
        let with = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, accept.parse().unwrap());
            wants_json(&h)
        };
        assert!(!wants_json(&HeaderMap::new()));
        assert!(with("application/json"));
        assert!(with("text/plain, Application/JSON;q=0.5"));
        assert!(!with("*/*"));
        assert!(!with("text/plain"));
        assert!(!with("application/json;q=0"));
    }
}
