//! Token issuance through the API: `POST /tokens/zone` and `POST /tokens/dataplane` (admin only).
//! Signing is `crate::tokens` (`common::tokens`); this module parses the requests and presents
//! the tokens.

use std::time::Duration;

use super::error::ApiError;
use super::state::ApiState;
use super::types::{DataplaneToken, DataplaneTokenRequest, ZoneToken, ZoneTokenRequest};
use crate::tokens::{DEFAULT_VALIDITY, check_zone_name, dataplane_claim};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
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

/// `POST /tokens/zone` (admin only): `{"zone": NAME, "validFor": "720h"}` -> `{"token": ...}`.
pub async fn issue_zone_token(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Json<ZoneToken>, ApiError> {
    let req: ZoneTokenRequest = parse_request(&body, r#"{"zone": NAME, "validFor": DURATION}"#)?;
    check_zone_name(&req.zone).map_err(|e| ApiError::invalid_request("zone", e))?;
    let valid_for = validity(&req.valid_for)?;
    let token = state.tokens.issue_zone_token(&req.zone, valid_for);
    let expires = expires(valid_for);
    tracing::info!(zone = %req.zone, %expires, "zone token issued");
    Ok(Json(ZoneToken {
        zone: req.zone,
        expires,
        token,
    }))
}

/// `POST /tokens/dataplane` (admin only): `{"mesh": M, "name": N, "service": S, "tags": {...},
/// "validFor": "720h"}` (or `"anyService": true` instead of a service) -> `{"token": ...}`: a
/// token with which the proxy `N` of mesh `M` authenticates to its zone, registering service `S`
/// and the bound tags. The mesh need not exist yet (tokens may be prepared before the Mesh).
pub async fn issue_dataplane_token(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Json<DataplaneToken>, ApiError> {
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
    let token = state.tokens.issue_dataplane_token(claim, valid_for);
    let expires = expires(valid_for);
    tracing::info!(mesh = %req.mesh, name = %req.name, service = ?req.service, tags = ?req.tags, any_service = req.any_service, %expires, "dataplane token issued");
    Ok(Json(DataplaneToken {
        mesh: req.mesh,
        name: req.name,
        expires,
        token,
    }))
}
