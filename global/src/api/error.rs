//! How refusals become HTTP answers: the constructors of the error body ([`ApiError`], defined
//! with the other bodies in `types`, served as `application/problem+json`) and the status of each
//! typed refusal of admission.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::ValidationErrors;

use crate::admission::{AdmissionError, DeleteError, Refused};

pub use super::types::ApiError;

pub type ApiResult<T> = Result<T, ApiError>;

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

    pub fn invalid(detail: impl Into<String>, errors: ValidationErrors) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, detail);
        e.title = "Invalid resource".into();
        e.invalid_parameters = errors.errors;
        e
    }

    /// A 400 "Invalid request" naming one field (token requests).
    pub fn invalid_request(field: &str, reason: String) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, reason.clone());
        e.title = "Invalid request".into();
        e.invalid_parameters = vec![common::FieldError::new(field, reason)];
        e
    }

    pub fn refused(r: Refused) -> Self {
        let vault_unreachable = r.unreachable && !r.checks.is_empty();
        let mut e = Self::invalid(r.to_string(), r.errors);
        e.vault_unreachable = vault_unreachable;
        e.checks = r.checks;
        e
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }

    /// 401 (authenticate) or 403 (a right is missing), as `crate::rights` decided.
    pub fn denied(d: crate::rights::Denied) -> Self {
        let (status, title, detail) = match d {
            crate::rights::Denied::Unauthenticated(m) => {
                (StatusCode::UNAUTHORIZED, "Unauthorized", m)
            }
            crate::rights::Denied::Forbidden(m) => (StatusCode::FORBIDDEN, "Forbidden", m),
        };
        let mut e = Self::new(status, detail);
        e.title = title.into();
        e
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        common::http::problem(status, &self)
    }
}

impl From<common::store::StoreError> for ApiError {
    fn from(e: common::store::StoreError) -> Self {
        use common::store::StoreError;
        match e {
            // The message names the store (PostgreSQL) and what went wrong; nothing was written.
            StoreError::Unavailable { .. } => {
                let mut api = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                api.title = "Store unavailable".into();
                api
            }
            StoreError::Conflict { .. } => {
                let mut api = ApiError::new(StatusCode::CONFLICT, e.to_string());
                api.title = "Conflicting write".into();
                api
            }
            StoreError::DiskFull { .. } => {
                let mut api = ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string());
                api.title = "Store disk full".into();
                api
            }
            e => ApiError::internal(e),
        }
    }
}

impl From<AdmissionError> for ApiError {
    fn from(e: AdmissionError) -> Self {
        match e {
            AdmissionError::Refused(r) => ApiError::refused(r),
            AdmissionError::Store(e) => e.into(),
        }
    }
}

impl From<DeleteError> for ApiError {
    fn from(e: DeleteError) -> Self {
        match e {
            DeleteError::MeshNotFound { .. } | DeleteError::SecretNotFound { .. } => {
                ApiError::not_found(e.to_string())
            }
            DeleteError::SecretInUse { .. } => {
                let mut api = ApiError::new(StatusCode::CONFLICT, e.to_string());
                api.title = "Secret in use".into();
                api
            }
            DeleteError::Store(e) => e.into(),
        }
    }
}
