//! Why talking to Vault failed: [`VaultError`], each variant a message that says what to fix
//! (timeout, unreachable, TLS, sealed, 429 with `Retry-After`, 5xx, permission denied, a refused
//! login — cert, AppRole or JWT, with Vault's reason —, missing mount or role, SANs or common
//! name the role forbids, ...), and the classifiers that turn an answer (status, `errors` body,
//! `Retry-After`), a transport failure (connect, TLS, timeout, walked through the error's
//! sources) or a vaultrs error into one.

use std::time::Duration;

use serde::Deserialize;

use super::timeouts::Timeouts;

/// The mount of the TLS certificate auth method used for `auth.tls`.
pub const CERT_AUTH_MOUNT: &str = "cert";

/// `1s`, `0.5s`, `10s`: a bound as operators write it.
fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The reason phrase of a status Vault or a proxy in front of it answers with.
fn status_text(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Why talking to Vault failed, classified from OpenBao's answers. Each message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// The backend's conf cannot be used (`field` is relative to the backend's `conf`).
    #[error("conf.{field}: {reason}")]
    Conf { field: String, reason: String },
    #[error(
        "cannot reach Vault at {address}: {reason}; check conf.fromCp.{address_field} and that Vault is running and reachable from this control plane"
    )]
    Unreachable {
        address: String,
        address_field: &'static str,
        reason: String,
    },
    #[error(
        "TLS with Vault at {address} failed: {reason}; check conf.fromCp.tls.caCert (the CA that signed Vault's server certificate) and tls.serverName (skipVerify is for development only)"
    )]
    Tls { address: String, reason: String },
    /// Vault (or whatever is in front of it) accepted no connection, or gave no answer, within
    /// the configured bound.
    #[error(
        "Vault at {address} did not answer within {after}{connecting}; check that Vault is healthy and not overloaded (the bound is --vault-timeout); retried with backoff",
        after = secs(*after),
        connecting = if *connecting { " (no connection established)" } else { "" }
    )]
    Timeout {
        address: String,
        after: Duration,
        connecting: bool,
    },
    #[error(
        "Vault at {address} refused the token: permission denied on {path}; the token was revoked or expired, or no policy allows update on {path}: put a valid token in conf.fromCp.auth.token (its Secret or file is read again on the next attempt)"
    )]
    PermissionDenied { address: String, path: String },
    /// A login (`auth/<mount>/login`) that Vault refused; `reason` is Vault's.
    #[error("{}", login_refused(*method, address, mount, namespace.as_deref(), reason))]
    LoginRefused {
        address: String,
        method: LoginMethod,
        mount: String,
        namespace: Option<String>,
        reason: String,
    },
    #[error(
        "Vault at {address} has no PKI secrets engine at {pki} (no handler for route {path}); check conf.fromCp.pki (and conf.fromCp.namespace)"
    )]
    MountMissing {
        address: String,
        pki: String,
        path: String,
    },
    #[error(
        "the PKI {pki} at Vault {address} has no role {role:?}; check conf.fromCp.role or create the role (vault write {pki}/roles/{role} ...)"
    )]
    UnknownRole {
        address: String,
        pki: String,
        role: String,
    },
    #[error(
        "role {role} of {pki} does not allow the URI SANs {uri_sans:?} (Vault: {message}); set allowed_uri_sans=\"spiffe://<mesh>/*,kuma://*\" on the role"
    )]
    UriSanNotAllowed {
        pki: String,
        role: String,
        uri_sans: Vec<String>,
        message: String,
    },
    #[error(
        "role {role} of {pki} does not allow the common name {common_name:?} (Vault: {message}); set allowed_domains/allow_subdomains on the role to allow it, or change conf.fromCp.commonName"
    )]
    CommonNameNotAllowed {
        pki: String,
        role: String,
        common_name: String,
        message: String,
    },
    #[error("Vault at {address} refused the request to {path}: {message}")]
    BadRequest {
        address: String,
        path: String,
        message: String,
    },
    #[error(
        "Vault at {address} is sealed or unavailable ({message}); unseal it or wait until it is active"
    )]
    Unavailable { address: String, message: String },
    #[error(
        "Vault is sealed: Vault at {address} answered {path} with \"{message}\"; unseal it (bao operator unseal); issuance resumes once it is unsealed"
    )]
    Sealed {
        address: String,
        path: String,
        message: String,
    },
    #[error(
        "Vault answered 429 Too Many Requests (rate limited) on {path} at {address}{after}; lower the issuance rate (--max-concurrent-issuance) or raise Vault's rate limit quota",
        after = match retry_after { Some(s) => format!(", asking to retry after {s}s"), None => String::new() }
    )]
    RateLimited {
        address: String,
        path: String,
        /// `Retry-After` in seconds, when Vault sent one.
        retry_after: Option<u64>,
    },
    #[error(
        "Vault answered {status} {text} on {path} at {address}: {message}; a failure on Vault's side (or of a proxy in front of it): check its logs; retried with backoff",
        text = status_text(*status)
    )]
    ServerError {
        address: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("Vault at {address} answered {path} with an unusable response: {reason}")]
    BadResponse {
        address: String,
        path: String,
        reason: String,
    },
    #[error("Vault at {address} answered {status} on {path}: {message}")]
    Other {
        address: String,
        path: String,
        status: u16,
        message: String,
    },
}

impl VaultError {
    /// The field of the backend (e.g. `conf.fromCp.role`) to blame, when one is clearly at fault.
    pub fn field(&self) -> Option<String> {
        Some(match self {
            VaultError::Conf { field, .. } => format!("conf.{field}"),
            VaultError::Unreachable { address_field, .. } => format!("conf.fromCp.{address_field}"),
            VaultError::Tls { .. } => "conf.fromCp.tls".to_string(),
            VaultError::PermissionDenied { .. } => "conf.fromCp.auth".to_string(),
            VaultError::LoginRefused { method, .. } => {
                format!("conf.fromCp.auth.{}", method.as_str())
            }
            VaultError::MountMissing { .. } => "conf.fromCp.pki".to_string(),
            VaultError::UnknownRole { .. } | VaultError::UriSanNotAllowed { .. } => {
                "conf.fromCp.role".to_string()
            }
            VaultError::CommonNameNotAllowed { .. } => "conf.fromCp.commonName".to_string(),
            _ => return None,
        })
    }

    /// Vault could not be reached or is not serving (connection refused, timeout, sealed): not a
    /// mistake in the resource.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            VaultError::Unreachable { .. }
                | VaultError::Unavailable { .. }
                | VaultError::Timeout { .. }
                | VaultError::Sealed { .. }
                | VaultError::RateLimited { .. }
                | VaultError::ServerError { .. }
        )
    }

    /// How long Vault asked to be left alone (`Retry-After` of a 429).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            VaultError::RateLimited {
                retry_after: Some(s),
                ..
            } => Some(Duration::from_secs(*s)),
            _ => None,
        }
    }
}

/// The auth methods that log in (`auth.tls`, `auth.approle`, `auth.jwt`), by their name in the
/// auth block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoginMethod {
    /// `auth.tls`: the TLS client certificate at `auth/cert/login`.
    Cert,
    AppRole,
    Jwt,
}

impl LoginMethod {
    /// The method's key in `conf.fromCp.auth`: `tls`, `approle`, `jwt`.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginMethod::Cert => "tls",
            LoginMethod::AppRole => "approle",
            LoginMethod::Jwt => "jwt",
        }
    }
}

/// The message of a refused login: Vault's reason first, then where and what to check.
fn login_refused(
    method: LoginMethod,
    address: &str,
    mount: &str,
    namespace: Option<&str>,
    reason: &str,
) -> String {
    let ns = namespace
        .map(|n| format!(" in namespace {n}"))
        .unwrap_or_default();
    match method {
        LoginMethod::Cert => format!(
            "Vault at {address} refused the TLS client certificate login on auth/{mount}/login{ns}: {reason}; check that cert auth is enabled at auth/{mount} and trusts the CA of conf.fromCp.auth.tls.clientCert (and that the certificate has a common name)"
        ),
        LoginMethod::AppRole => format!(
            "login refused by Vault: {reason} (auth/{mount}/login at {address}{ns}); check auth.approle.roleId and secretId (a secret ID expires and may be limited to a number of uses) and that AppRole auth is enabled at auth/{mount}{ns}"
        ),
        LoginMethod::Jwt => format!(
            "login refused by Vault: {reason} (auth/{mount}/login at {address}{ns}); check the JWT of auth.jwt.token (its signature, expiry, and the audience and claims the role binds), auth.jwt.role, and that JWT auth is enabled at auth/{mount}{ns}"
        ),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Vault and is ignored), at most an
/// hour.
pub(super) fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| s.min(3600))
}

/// What a failed request was about, for classifying it: where it went (the client's address and
/// the conf field that set it, its PKI and role, its bounds), its path and, for an issue, what
/// was asked.
pub(super) struct Ctx<'a> {
    pub address: &'a str,
    pub address_field: &'static str,
    pub pki: &'a str,
    pub role: &'a str,
    pub timeouts: Timeouts,
    pub path: &'a str,
    /// The URI SANs and common name of the certificate asked for (an issue request only).
    pub uri_sans: &'a [String],
    pub common_name: Option<&'a str>,
    /// For a login: the method, its mount and the namespace (a refusal is a
    /// [`VaultError::LoginRefused`]).
    pub login: Option<(LoginMethod, &'a str)>,
    pub namespace: Option<&'a str>,
}

pub(super) fn classify_answer(
    ctx: &Ctx<'_>,
    status: u16,
    errors: &[String],
    body: &str,
    retry_after: Option<u64>,
) -> VaultError {
    let address = ctx.address.to_string();
    let message = if errors.is_empty() {
        let b = body.trim();
        if b.is_empty() {
            format!("HTTP {status}")
        } else {
            truncate(b, 300)
        }
    } else {
        errors.join("; ")
    };
    let lower = message.to_lowercase();
    let pki = ctx.pki.to_string();
    let role = ctx.role.to_string();
    if lower.contains("vault is sealed") || (status == 503 && lower.contains("sealed")) {
        return VaultError::Sealed {
            address,
            path: ctx.path.to_string(),
            message,
        };
    }
    if status == 429 {
        return VaultError::RateLimited {
            address,
            path: ctx.path.to_string(),
            retry_after,
        };
    }
    // A login's 500 is OpenBao refusing the certificate (e.g. no common name): see below.
    if matches!(status, 502..=504) || (status == 500 && !is_login(ctx.path)) {
        return VaultError::ServerError {
            address,
            path: ctx.path.to_string(),
            status,
            message,
        };
    }
    if matches!(status, 472 | 473 | 501) {
        return VaultError::Unavailable {
            address,
            message: format!("HTTP {status}: {message}"),
        };
    }
    if is_login(ctx.path) {
        let (method, mount) = ctx.login.unwrap_or((LoginMethod::Cert, CERT_AUTH_MOUNT));
        return VaultError::LoginRefused {
            address,
            method,
            mount: mount.to_string(),
            namespace: ctx.namespace.map(str::to_string),
            reason: message,
        };
    }
    match status {
        403 => VaultError::PermissionDenied {
            address,
            path: ctx.path.to_string(),
        },
        404 if lower.contains("no handler for route") => VaultError::MountMissing {
            address,
            pki,
            path: ctx.path.to_string(),
        },
        400 if lower.contains("unknown role") => VaultError::UnknownRole { address, pki, role },
        400 if lower.contains("uri subject alternative names") => VaultError::UriSanNotAllowed {
            pki,
            role,
            uri_sans: ctx.uri_sans.to_vec(),
            message,
        },
        400 if lower.contains("common name") && lower.contains("not allowed") => {
            VaultError::CommonNameNotAllowed {
                pki,
                role,
                common_name: ctx.common_name.unwrap_or_default().to_string(),
                message,
            }
        }
        400 => VaultError::BadRequest {
            address,
            path: ctx.path.to_string(),
            message,
        },
        _ => VaultError::Other {
            address,
            path: ctx.path.to_string(),
            status,
            message,
        },
    }
}

/// [`classify_answer`] for an answer's raw body (Vault's `{"errors": [...]}` when it has one).
pub(super) fn classify_body(
    ctx: &Ctx<'_>,
    status: u16,
    body: &str,
    retry_after: Option<u64>,
) -> VaultError {
    let errors = serde_json::from_str::<ErrorBody>(body)
        .map(|b| b.errors)
        .unwrap_or_default();
    classify_answer(ctx, status, &errors, body, retry_after)
}

pub(super) fn is_login(path: &str) -> bool {
    path.starts_with("auth/") && path.ends_with("/login")
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Classifies a failure below HTTP (connect, TLS, timeout) by walking the error's sources.
pub(super) fn classify_transport(
    ctx: &Ctx<'_>,
    err: &(dyn std::error::Error + 'static),
) -> VaultError {
    let address = ctx.address.to_string();
    let mut timeout = false;
    let mut connecting = false;
    let mut innermost = err.to_string();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return VaultError::Tls {
                address,
                reason: explain_tls(tls),
            };
        }
        // The TLS error sits inside (possibly nested) io::Errors, whose `source()` skips it.
        let mut io = e.downcast_ref::<std::io::Error>();
        while let Some(inner) = io.and_then(|i| i.get_ref()) {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return VaultError::Tls {
                    address,
                    reason: explain_tls(tls),
                };
            }
            io = inner.downcast_ref::<std::io::Error>();
        }
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            timeout |= r.is_timeout();
            connecting |= r.is_connect();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            timeout = true;
        }
        innermost = e.to_string();
        cur = e.source();
    }
    if timeout {
        return VaultError::Timeout {
            address,
            after: if connecting {
                ctx.timeouts.connect
            } else {
                ctx.timeouts.request
            },
            connecting,
        };
    }
    VaultError::Unreachable {
        address,
        address_field: ctx.address_field,
        reason: innermost,
    }
}

/// rustls' error in words, for the common cases of a wrong caCert or serverName.
fn explain_tls(err: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let what = match err {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "the server certificate is not signed by a trusted CA"
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server certificate has expired"
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the server certificate is not valid yet"
        }
        rustls::Error::InvalidCertificate(C::BadSignature) => {
            "the server certificate's signature does not verify"
        }
        _ => return err.to_string(),
    };
    format!("{what} ({err})")
}

/// Maps a vaultrs error (login, health) to a [`VaultError`].
pub(super) fn classify_vaultrs(ctx: &Ctx<'_>, err: vaultrs::error::ClientError) -> VaultError {
    use vaultrs::error::ClientError as E;
    match err {
        E::APIError { code, errors } => classify_answer(ctx, code, &errors, "", None),
        E::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, content } => {
                classify_body(ctx, code, &content.unwrap_or_default(), None)
            }
            other @ rustify::errors::ClientError::RequestError { .. } => {
                classify_transport(ctx, &other)
            }
            other => VaultError::BadResponse {
                address: ctx.address.to_string(),
                path: ctx.path.to_string(),
                reason: other.to_string(),
            },
        },
        E::ResponseEmptyError | E::ResponseDataEmptyError => VaultError::BadResponse {
            address: ctx.address.to_string(),
            path: ctx.path.to_string(),
            reason: "empty response".to_string(),
        },
        other => VaultError::BadResponse {
            address: ctx.address.to_string(),
            path: ctx.path.to_string(),
            reason: other.to_string(),
        },
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

/// A [`VaultError::Conf`] at `field` (relative to the backend's `conf`).
pub(super) fn conf_err(field: &str, reason: impl Into<String>) -> VaultError {
    VaultError::Conf {
        field: field.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::timeouts::DEFAULT_CONNECT_TIMEOUT;

    #[test]
    fn timeouts_and_retry_after() {
        let t = Timeouts::with_request(Duration::from_secs(1));
        assert_eq!(t.connect, Duration::from_secs(1));
        let t = Timeouts::with_request(Duration::from_secs(30));
        assert_eq!(t.connect, DEFAULT_CONNECT_TIMEOUT);
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after_header(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after_header(&h), Some(7));
        h.insert(reqwest::header::RETRY_AFTER, "99999".parse().unwrap());
        assert_eq!(retry_after_header(&h), Some(3600));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_header(&h), None);
        let e = VaultError::Timeout {
            address: "http://v".into(),
            after: Duration::from_millis(1500),
            connecting: false,
        };
        assert!(e.to_string().contains("did not answer within 1.5s"), "{e}");
        assert!(e.is_unreachable());
        let e = VaultError::RateLimited {
            address: "http://v".into(),
            path: "p".into(),
            retry_after: Some(3),
        };
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(
            e.to_string()
                .contains("429 Too Many Requests (rate limited)")
        );
    }
}
