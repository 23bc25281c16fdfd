//! Token issuance through the API: `POST /tokens/zone` and `POST /tokens/dataplane` (admin only).
//! The tokens themselves (JWTs signed with global's Ed25519 key, and their verification) live in
//! `common::tokens`, re-exported here, so that zones verify dataplane tokens with the same code;
//! the public key reaches zones over the sync stream (`kds`).

use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;

pub use common::tokens::{
    Claims, DATAPLANE_SCOPE, DEFAULT_VALIDITY, DataplaneClaim, KEY_FILE, KeySet, TokenError,
    TokenSigner, TokenVerifier, ZONE_SCOPE, ZoneClaim, check_zone_name,
};
use common::tokens::{now_unix, rfc3339};

use crate::api::{ApiError, ApiState};

/// Body of `POST /tokens/zone`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneTokenRequest {
    pub zone: String,
    /// Validity, e.g. `720h` (the default), `30d`.
    #[serde(default)]
    pub valid_for: Option<String>,
}

/// Body of `POST /tokens/dataplane`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneTokenRequest {
    pub mesh: String,
    pub name: String,
    /// Validity, e.g. `720h` (the default), `30d`.
    #[serde(default)]
    pub valid_for: Option<String>,
}

fn invalid(field: &str, reason: String) -> ApiError {
    let mut e = ApiError::new(StatusCode::BAD_REQUEST, reason.clone());
    e.title = "Invalid request".into();
    e.invalid_parameters = vec![common::FieldError::new(field, reason)];
    e
}

fn validity(valid_for: &Option<String>) -> Result<Duration, ApiError> {
    let valid_for = match valid_for {
        None => DEFAULT_VALIDITY,
        Some(text) => common::duration::parse_duration(text)
            .map_err(|e| invalid("validFor", e.to_string()))?,
    };
    if valid_for.as_secs() == 0 {
        return Err(invalid("validFor", "must be at least 1s".into()));
    }
    Ok(valid_for)
}

/// `POST /tokens/zone` (admin only): `{"zone": NAME, "validFor": "720h"}` -> `{"token": ...}`.
pub async fn issue_zone_token(
    axum::extract::State(state): axum::extract::State<ApiState>,
    body: axum::body::Bytes,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let req: ZoneTokenRequest = serde_json::from_slice(&body).map_err(|e| {
        invalid(
            "",
            format!("the body must be {{\"zone\": NAME, \"validFor\": DURATION}}: {e}"),
        )
    })?;
    check_zone_name(&req.zone).map_err(|e| invalid("zone", e))?;
    let valid_for = validity(&req.valid_for)?;
    let token = state.tokens.issue_zone_token(&req.zone, valid_for);
    let exp = now_unix().saturating_add(valid_for.as_secs());
    tracing::info!(zone = %req.zone, expires = %rfc3339(exp), "zone token issued");
    Ok(axum::Json(serde_json::json!({
        "zone": req.zone,
        "expires": rfc3339(exp),
        "token": token,
    })))
}

/// Checks the mesh and dataplane names of a dataplane token request, naming each bad field.
pub fn check_dataplane_names(mesh: &str, name: &str) -> Result<(), common::ValidationErrors> {
    let mut errs = common::ValidationErrors::new();
    common::validate::validate_mesh_name("mesh", mesh, &mut errs);
    common::validate::validate_object_name("name", name, &mut errs);
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// `POST /tokens/dataplane` (admin only): `{"mesh": M, "name": N, "validFor": "720h"}` ->
/// `{"token": ...}`: a token with which the proxy `N` of mesh `M` authenticates to its zone. The
/// mesh need not exist yet (tokens may be prepared before the Mesh is applied).
pub async fn issue_dataplane_token(
    axum::extract::State(state): axum::extract::State<ApiState>,
    body: axum::body::Bytes,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let req: DataplaneTokenRequest = serde_json::from_slice(&body).map_err(|e| {
        invalid(
            "",
            format!(
                "the body must be {{\"mesh\": MESH, \"name\": NAME, \"validFor\": DURATION}}: {e}"
            ),
        )
    })?;
    if let Err(errs) = check_dataplane_names(&req.mesh, &req.name) {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, errs.to_string());
        e.title = "Invalid request".into();
        e.invalid_parameters = errs.errors;
        return Err(e);
    }
    let valid_for = validity(&req.valid_for)?;
    let token = state
        .tokens
        .issue_dataplane_token(&req.mesh, &req.name, valid_for);
    let exp = now_unix().saturating_add(valid_for.as_secs());
    tracing::info!(mesh = %req.mesh, name = %req.name, expires = %rfc3339(exp), "dataplane token issued");
    Ok(axum::Json(serde_json::json!({
        "mesh": req.mesh,
        "name": req.name,
        "expires": rfc3339(exp),
        "token": token,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataplane_names_are_checked() {
        assert!(check_dataplane_names("default", "web-1").is_ok());
        let errs = check_dataplane_names("Bad_Mesh", "").unwrap_err();
        let fields: Vec<&str> = errs.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["mesh", "name"]);
    }
}
