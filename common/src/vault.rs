//! The vault CA backend's client and its check. [`VaultIssuer`] is built from a backend's
//! `conf.fromCp` (data sources resolved): it talks to the Vault address (or, when `agentAddress`
//! is set, to a Vault Agent that adds the token itself), sends `X-Vault-Namespace`, verifies the
//! server with `tls.caCert` (or the system roots) against `tls.serverName` when set (or skips
//! verification with `skipVerify`), and authenticates with a token or with a TLS client
//! certificate (`auth/cert/login`). [`VaultIssuer::issue`] calls `<pki>/issue/<role>`; OpenBao's
//! answers are classified into [`VaultError`]s that say what to fix. [`check_backend`] is the test
//! certificate of the reference page ("Kong Mesh validates the connection by issuing a test
//! certificate"), extended: it refuses a backend whose certificates would silently be shorter than
//! `dpCert.rotation.expiration`, lack serverAuth/clientAuth or the requested URI SANs, or do not
//! chain to a self-signed root that Vault returns, and warns when they lack a Key Usage extension.
//!
//! vaultrs 0.8 is used for the cert login, on a `VaultClient` assembled around our
//! own reqwest client (vaultrs' own constructor reads `VAULT_*` variables from the environment, takes
//! CA certificates only as file paths and cannot verify against a server name other than the URL's
//! host). `issue` and the CA chain are requested raw, because vaultrs' response types drop Vault's
//! `warnings` (which carry the TTL truncation notice) and `sys/health` too, because vaultrs' health
//! response type requires a field OpenBao does not send. Tokens and private keys never appear in
//! `Debug` output, logs or error messages.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

use crate::datasource::SecretLookup;
use crate::model::{Backend, BackendConf, DataSource, FromCp, SERVICE_TAG};
use crate::x509;

/// Default bound on establishing a connection to Vault.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on one request to Vault, connection included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The service name of the test certificate issued by [`check_backend`].
pub const CHECK_SERVICE: &str = "kmesh-ca-check";

/// The mount of the TLS certificate auth method used for `auth.tls`.
pub const CERT_AUTH_MOUNT: &str = "cert";

/// Bounds on talking to Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            request: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The process-wide bounds set by a binary's `--vault-timeout` ([`Timeouts::set_configured`]).
static CONFIGURED: RwLock<Timeouts> = RwLock::new(Timeouts {
    connect: DEFAULT_CONNECT_TIMEOUT,
    request: DEFAULT_REQUEST_TIMEOUT,
});

impl Timeouts {
    /// One bound on a whole request (`--vault-timeout`); connecting gets at most
    /// [`DEFAULT_CONNECT_TIMEOUT`] of it.
    pub fn with_request(request: Duration) -> Self {
        let request = request.max(Duration::from_millis(1));
        Self {
            connect: request.min(DEFAULT_CONNECT_TIMEOUT),
            request,
        }
    }

    /// The bounds this process uses when none are given explicitly (what [`check_backend`] and
    /// [`VaultIssuer::connect`] use): the defaults, or what [`Timeouts::set_configured`] set.
    pub fn configured() -> Self {
        *CONFIGURED.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets [`Timeouts::configured`] for the whole process (a binary's `--vault-timeout`).
    pub fn set_configured(t: Timeouts) {
        *CONFIGURED.write().unwrap_or_else(|e| e.into_inner()) = t;
    }
}

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

/// A secret string (a token): `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

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
    #[error(
        "Vault at {address} refused the TLS client certificate login on auth/{mount}/login: {reason}; check that cert auth is enabled at auth/{mount} and trusts the CA of conf.fromCp.auth.tls.clientCert (and that the certificate has a common name)"
    )]
    LoginRefused {
        address: String,
        mount: String,
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
            VaultError::LoginRefused { .. } => "conf.fromCp.auth.tls".to_string(),
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

/// `Retry-After` in seconds (the HTTP-date form is not used by Vault and is ignored), at most an
/// hour.
fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| s.min(3600))
}

/// What an error answer was about, for classifying it.
struct Ctx<'a> {
    issuer: &'a VaultIssuer,
    path: &'a str,
    req: Option<&'a IssueRequest>,
}

fn classify_answer(
    ctx: &Ctx<'_>,
    status: u16,
    errors: &[String],
    body: &str,
    retry_after: Option<u64>,
) -> VaultError {
    let address = ctx.issuer.address.clone();
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
    let pki = ctx.issuer.pki.clone();
    let role = ctx.issuer.role.clone();
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
        return VaultError::LoginRefused {
            address,
            mount: CERT_AUTH_MOUNT.to_string(),
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
            uri_sans: ctx.req.map(|r| r.uri_sans.clone()).unwrap_or_default(),
            message,
        },
        400 if lower.contains("common name") && lower.contains("not allowed") => {
            VaultError::CommonNameNotAllowed {
                pki,
                role,
                common_name: ctx
                    .req
                    .and_then(|r| r.common_name.clone())
                    .unwrap_or_default(),
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
fn classify_body(ctx: &Ctx<'_>, status: u16, body: &str, retry_after: Option<u64>) -> VaultError {
    let errors = serde_json::from_str::<ErrorBody>(body)
        .map(|b| b.errors)
        .unwrap_or_default();
    classify_answer(ctx, status, &errors, body, retry_after)
}

fn is_login(path: &str) -> bool {
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
fn classify_transport(issuer: &VaultIssuer, err: &(dyn std::error::Error + 'static)) -> VaultError {
    let address = issuer.address.clone();
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
                issuer.timeouts.connect
            } else {
                issuer.timeouts.request
            },
            connecting,
        };
    }
    VaultError::Unreachable {
        address,
        address_field: issuer.address_field(),
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
fn classify_vaultrs(ctx: &Ctx<'_>, err: vaultrs::error::ClientError) -> VaultError {
    use vaultrs::error::ClientError as E;
    match err {
        E::APIError { code, errors } => classify_answer(ctx, code, &errors, "", None),
        E::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, content } => {
                classify_body(ctx, code, &content.unwrap_or_default(), None)
            }
            other @ rustify::errors::ClientError::RequestError { .. } => {
                classify_transport(ctx.issuer, &other)
            }
            other => VaultError::BadResponse {
                address: ctx.issuer.address.clone(),
                path: ctx.path.to_string(),
                reason: other.to_string(),
            },
        },
        E::ResponseEmptyError | E::ResponseDataEmptyError => VaultError::BadResponse {
            address: ctx.issuer.address.clone(),
            path: ctx.path.to_string(),
            reason: "empty response".to_string(),
        },
        other => VaultError::BadResponse {
            address: ctx.issuer.address.clone(),
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

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// Verifies the server certificate against a fixed name instead of the URL's host (`serverName`).
/// The SNI sent stays the URL's host (none for an IP address).
#[derive(Debug)]
struct FixedServerName {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn conf_err(field: &str, reason: impl Into<String>) -> VaultError {
    VaultError::Conf {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn resolve(
    ds: &DataSource,
    field: &str,
    mesh: &str,
    secrets: &dyn SecretLookup,
) -> Result<Vec<u8>, VaultError> {
    ds.resolve(mesh, secrets)
        .map_err(|e| conf_err(field, e.to_string()))
}

fn parse_certs(pem: &[u8], field: &str) -> Result<Vec<CertificateDer<'static>>, VaultError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| conf_err(field, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(conf_err(field, "holds no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

struct TlsSettings {
    ca: Option<Vec<CertificateDer<'static>>>,
    skip_verify: bool,
    server_name: Option<ServerName<'static>>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

fn rustls_config(tls: TlsSettings) -> Result<rustls::ClientConfig, VaultError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| conf_err("fromCp.tls", e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.skip_verify {
        crate::tls::SkipVerify::new()
    } else if let Some(ca) = tls.ca {
        let mut roots = rustls::RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| {
                conf_err(
                    "fromCp.tls.caCert",
                    format!("not a usable CA certificate: {e}"),
                )
            })?;
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| conf_err("fromCp.tls.caCert", e.to_string()))?
    } else {
        Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone())
                .map_err(|e| conf_err("fromCp.tls", format!("no system trust store: {e}")))?,
        )
    };
    let verifier: Arc<dyn ServerCertVerifier> = match tls.server_name {
        Some(name) if !tls.skip_verify => Arc::new(FixedServerName {
            inner: verifier,
            name,
        }),
        _ => verifier,
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match tls.client {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
            conf_err(
                "fromCp.auth.tls",
                format!("clientCert and clientKey do not form a usable pair: {e}"),
            )
        })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// The issuer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthMode {
    /// A token from `auth.token`.
    Token,
    /// A token from `auth/cert/login` with the client certificate of `auth.tls`.
    Cert,
    /// `agentAddress`: the agent adds its own token.
    Agent,
}

/// A certificate request to `<pki>/issue/<role>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    pub uri_sans: Vec<String>,
    pub common_name: Option<String>,
    pub ttl: Duration,
}

/// What Vault says about the token in use (`auth/token/lookup-self`, `renew-self`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenInfo {
    /// Remaining lifetime; zero for a token that never expires.
    pub ttl: Duration,
    pub renewable: bool,
}

/// A certificate issued by Vault. `Debug` never shows the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub certificate_pem: String,
    pub private_key_pem: String,
    /// `rsa`, `ec`, ...
    pub private_key_type: String,
    pub issuing_ca_pem: String,
    /// The issuer's chain as Vault returns it (`ca_chain`): intermediate(s), then the root when
    /// the PKI was set up with it.
    pub ca_chain_pem: Vec<String>,
    /// As Vault prints it: lower-case hex bytes separated by `:`.
    pub serial: String,
    /// Unix seconds of `notAfter`, as Vault reports it.
    pub expiration: Option<i64>,
    /// Vault's `warnings`.
    pub warnings: Vec<String>,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("expiration", &self.expiration)
            .field("private_key_pem", &"<redacted>")
            .field("private_key_type", &self.private_key_type)
            .field("ca_chain_len", &self.ca_chain_pem.len())
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The DER of every CA certificate Vault returned (`ca_chain`, then `issuing_ca`), without
    /// duplicates.
    fn ca_ders(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for pem_text in self
            .ca_chain_pem
            .iter()
            .chain(std::iter::once(&self.issuing_ca_pem))
        {
            if let Ok(ders) = x509::pem_to_ders(pem_text) {
                for d in ders {
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
            }
        }
        out
    }

    /// The self-signed roots among the CA certificates Vault returned: the trust anchors of the
    /// mesh (PEM, one certificate each). Empty when the PKI was given an intermediate without its
    /// root.
    pub fn root_pems(&self) -> Vec<String> {
        self.ca_ders()
            .into_iter()
            .filter(|d| x509::der_is_self_signed(d))
            .map(|d| x509::der_to_pem(&d))
            .collect()
    }

    /// The CA certificates that are not self-signed roots (PEM, one certificate each).
    pub fn intermediate_pems(&self) -> Vec<String> {
        self.ca_ders()
            .into_iter()
            .filter(|d| !x509::der_is_self_signed(d))
            .map(|d| x509::der_to_pem(&d))
            .collect()
    }

    /// The leaf followed by its intermediates (no root): what a proxy presents.
    pub fn chain_pem(&self) -> String {
        let mut out = self.certificate_pem.trim_end().to_string();
        out.push('\n');
        for p in self.intermediate_pems() {
            out.push_str(p.trim_end());
            out.push('\n');
        }
        out
    }

    /// The leaf's summary.
    pub fn summary(&self) -> Result<x509::CertSummary, x509::X509Error> {
        x509::summarize_pem(&self.certificate_pem)
    }
}

#[derive(Deserialize)]
struct IssueAnswer {
    data: Option<IssueData>,
    #[serde(default)]
    warnings: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct IssueData {
    certificate: String,
    #[serde(default)]
    issuing_ca: String,
    #[serde(default)]
    ca_chain: Option<Vec<String>>,
    private_key: String,
    #[serde(default)]
    private_key_type: String,
    #[serde(default)]
    serial_number: String,
    #[serde(default)]
    expiration: Option<i64>,
}

/// A client of one vault backend: issues proxy certificates from `<pki>/issue/<role>`. Not
/// `Clone`: share it in an `Arc` (issuing is `&self` and concurrent).
pub struct VaultIssuer {
    mesh: String,
    address: String,
    auth: AuthMode,
    namespace: Option<String>,
    pki: String,
    role: String,
    common_name: Option<String>,
    http: reqwest::Client,
    token: RwLock<Option<Secret>>,
    timeouts: Timeouts,
}

impl fmt::Debug for VaultIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultIssuer")
            .field("mesh", &self.mesh)
            .field("address", &self.address)
            .field("auth", &self.auth)
            .field("namespace", &self.namespace)
            .field("pki", &self.pki)
            .field("role", &self.role)
            .field("common_name", &self.common_name)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl VaultIssuer {
    /// Builds the client from `conf` (data sources resolved against the mesh's Secrets) and
    /// authenticates: with `auth.token` nothing is sent yet; with `auth.tls` the client certificate
    /// logs in at `auth/cert/login`; with `agentAddress` the agent authenticates.
    pub async fn connect(
        mesh: &str,
        conf: &FromCp,
        secrets: &dyn SecretLookup,
    ) -> Result<VaultIssuer, VaultError> {
        Self::connect_with(mesh, conf, secrets, Timeouts::configured()).await
    }

    /// [`VaultIssuer::connect`] with other timeouts.
    pub async fn connect_with(
        mesh: &str,
        conf: &FromCp,
        secrets: &dyn SecretLookup,
        timeouts: Timeouts,
    ) -> Result<VaultIssuer, VaultError> {
        let issuer = Self::from_conf(mesh, conf, secrets, timeouts)?;
        issuer.authenticate().await?;
        Ok(issuer)
    }

    /// Builds the client without contacting Vault: resolves data sources, parses the CA and
    /// client certificate, prepares TLS. Errors are [`VaultError::Conf`].
    pub fn from_conf(
        mesh: &str,
        conf: &FromCp,
        secrets: &dyn SecretLookup,
        timeouts: Timeouts,
    ) -> Result<VaultIssuer, VaultError> {
        let via_agent = !conf.agent_address.trim().is_empty();
        let (address, address_field) = if via_agent {
            (conf.agent_address.trim(), "fromCp.agentAddress")
        } else {
            (conf.address.trim(), "fromCp.address")
        };
        if address.is_empty() {
            return Err(conf_err("fromCp.address", "must be set (or agentAddress)"));
        }
        let url = url::Url::parse(address)
            .map_err(|e| conf_err(address_field, format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(conf_err(
                address_field,
                "must be an http:// or https:// URL with a host",
            ));
        }
        let address = address.trim_end_matches('/').to_string();
        let pki = conf.pki.trim().trim_matches('/').to_string();
        if pki.is_empty() {
            return Err(conf_err("fromCp.pki", "must be set"));
        }
        let role = conf.role.trim().to_string();
        if role.is_empty() || role.contains('/') {
            return Err(conf_err("fromCp.role", "must be set to a role name"));
        }

        let tls_conf = conf.tls.clone().unwrap_or_default();
        let ca = match &tls_conf.ca_cert {
            Some(ds) => {
                let pem = resolve(ds, "fromCp.tls.caCert", mesh, secrets)?;
                Some(parse_certs(&pem, "fromCp.tls.caCert")?)
            }
            None => None,
        };
        let server_name = match tls_conf.server_name.trim() {
            "" => None,
            name => Some(ServerName::try_from(name.to_string()).map_err(|e| {
                conf_err(
                    "fromCp.tls.serverName",
                    format!("not a DNS name or IP address: {e}"),
                )
            })?),
        };

        let auth_conf = conf.auth.clone().unwrap_or_default();
        let mut token = None;
        let mut client = None;
        let auth = if via_agent {
            AuthMode::Agent
        } else {
            match (&auth_conf.token, &auth_conf.tls) {
                (Some(_), Some(_)) => {
                    return Err(conf_err(
                        "fromCp.auth",
                        "exactly one of token, tls must be set",
                    ));
                }
                (None, None) => {
                    return Err(conf_err(
                        "fromCp.auth",
                        "one of token, tls must be set (or agentAddress)",
                    ));
                }
                (Some(ds), None) => {
                    let raw = resolve(ds, "fromCp.auth.token", mesh, secrets)?;
                    let text = String::from_utf8(raw)
                        .map_err(|_| conf_err("fromCp.auth.token", "is not UTF-8 text"))?;
                    let text = text.trim();
                    if text.is_empty() {
                        return Err(conf_err("fromCp.auth.token", "is empty"));
                    }
                    if !text.chars().all(|c| c.is_ascii_graphic()) {
                        return Err(conf_err(
                            "fromCp.auth.token",
                            "contains whitespace, control or non-ASCII characters: not a Vault token",
                        ));
                    }
                    token = Some(Secret(text.to_string()));
                    AuthMode::Token
                }
                (None, Some(tls)) => {
                    let cert_ds = tls
                        .client_cert
                        .as_ref()
                        .ok_or_else(|| conf_err("fromCp.auth.tls.clientCert", "must be set"))?;
                    let key_ds = tls
                        .client_key
                        .as_ref()
                        .ok_or_else(|| conf_err("fromCp.auth.tls.clientKey", "must be set"))?;
                    let cert_pem = resolve(cert_ds, "fromCp.auth.tls.clientCert", mesh, secrets)?;
                    let key_pem = resolve(key_ds, "fromCp.auth.tls.clientKey", mesh, secrets)?;
                    let certs = parse_certs(&cert_pem, "fromCp.auth.tls.clientCert")?;
                    // The parse error of a key never includes the key itself.
                    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
                        conf_err(
                            "fromCp.auth.tls.clientKey",
                            "not a PEM private key (PKCS#8, SEC1 or PKCS#1)",
                        )
                    })?;
                    client = Some((certs, key));
                    AuthMode::Cert
                }
            }
        };

        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .http1_only();
        if url.scheme() == "https" {
            let config = rustls_config(TlsSettings {
                ca,
                skip_verify: tls_conf.skip_verify,
                server_name,
                client,
            })?;
            builder = builder.tls_backend_preconfigured(config);
        } else if client.is_some() {
            return Err(conf_err(
                "fromCp.auth.tls",
                format!("a TLS client certificate needs an https:// address, not {address}"),
            ));
        }
        let http = builder
            .build()
            .map_err(|e| conf_err("fromCp", format!("cannot build the HTTP client: {e}")))?;

        let namespace = match conf.namespace.trim().trim_matches('/') {
            "" => None,
            ns => Some(ns.to_string()),
        };
        let common_name = match conf.common_name.trim() {
            "" => None,
            t => Some(t.to_string()),
        };
        Ok(VaultIssuer {
            mesh: mesh.to_string(),
            address,
            auth,
            namespace,
            pki,
            role,
            common_name,
            http,
            token: RwLock::new(token),
            timeouts,
        })
    }

    /// The address requests go to (the agent's when `agentAddress` is set).
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn mesh(&self) -> &str {
        &self.mesh
    }

    pub fn pki(&self) -> &str {
        &self.pki
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// `true` when `agentAddress` is used.
    pub fn via_agent(&self) -> bool {
        self.auth == AuthMode::Agent
    }

    /// `<pki>/issue/<role>`.
    pub fn issue_path(&self) -> String {
        format!("{}/issue/{}", self.pki, self.role)
    }

    fn address_field(&self) -> &'static str {
        if self.auth == AuthMode::Agent {
            "agentAddress"
        } else {
            "address"
        }
    }

    fn current_token(&self) -> Option<Secret> {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A vaultrs client on our HTTP client (same TLS settings and timeouts), with the given
    /// token and, if `with_namespace`, the namespace.
    fn vaultrs_client(
        &self,
        token: Option<&Secret>,
        with_namespace: bool,
    ) -> Result<vaultrs::client::VaultClient, VaultError> {
        let token = token.map(|t| t.0.clone()).unwrap_or_default();
        let namespace = if with_namespace {
            self.namespace.clone()
        } else {
            None
        };
        // Every field is set, so that nothing is taken from VAULT_* environment variables.
        let settings = vaultrs::client::VaultClientSettingsBuilder::default()
            .address(&self.address)
            .token(token.clone())
            .namespace(namespace.clone())
            .ca_certs(Vec::new())
            .identity(None)
            .verify(true)
            .timeout(Some(self.timeouts.request))
            .version(1)
            .wrapping(false)
            .build()
            .map_err(|e| conf_err("fromCp", format!("cannot configure the Vault client: {e}")))?;
        Ok(vaultrs::client::VaultClient {
            http: rustify::clients::reqwest::Client::new(&self.address, self.http.clone()),
            middle: vaultrs::api::EndpointMiddleware {
                token,
                version: "v1".to_string(),
                wrap: None,
                namespace,
            },
            settings,
        })
    }

    /// Logs in with the client certificate (`auth.tls`); nothing to do for a token or an agent.
    pub async fn authenticate(&self) -> Result<(), VaultError> {
        if self.auth != AuthMode::Cert {
            return Ok(());
        }
        let client = self.vaultrs_client(None, true)?;
        let path = format!("auth/{CERT_AUTH_MOUNT}/login");
        let info = vaultrs::auth::cert::login(&client, CERT_AUTH_MOUNT, "")
            .await
            .map_err(|e| {
                classify_vaultrs(
                    &Ctx {
                        issuer: self,
                        path: &path,
                        req: None,
                    },
                    e,
                )
            })?;
        if info.client_token.is_empty() {
            return Err(VaultError::BadResponse {
                address: self.address.clone(),
                path,
                reason: "the login returned no token".to_string(),
            });
        }
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = Some(Secret(info.client_token));
        Ok(())
    }

    /// `sys/health` (unauthenticated): reachable, TLS verified, initialized and unsealed.
    // Raw request: vaultrs' `sys::health` fails on OpenBao's answer, whose JSON has no
    // `performance_standby` field that vaultrs' response type requires.
    pub async fn health(&self) -> Result<String, VaultError> {
        let path = "sys/health";
        let (status, retry_after, text) = self
            .exchange(
                self.http
                    .get(format!("{}/v1/{path}", self.address))
                    .header("X-Vault-Request", "true"),
            )
            .await?;
        self.read_health_answer(status, retry_after, &text)
    }

    /// Reads Vault's answer to `sys/health` (status, `Retry-After` seconds, body). Pure.
    pub fn read_health_answer(
        &self,
        status: u16,
        retry_after: Option<u64>,
        text: &str,
    ) -> Result<String, VaultError> {
        let path = "sys/health";
        let unavailable = |message: &str| VaultError::Unavailable {
            address: self.address.clone(),
            message: format!("{path}: {message}"),
        };
        // sys/health answers with its JSON for every state; anything else (an `errors` body, no
        // body) came from something failing in front of Vault or from Vault failing.
        let health: Option<serde_json::Value> = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .filter(|v| v.get("sealed").is_some());
        let sealed = health
            .as_ref()
            .and_then(|v| v["sealed"].as_bool())
            .unwrap_or(false);
        match status {
            200 => Ok("active and unsealed".to_string()),
            429 if health.is_some() => Ok("a standby node, unsealed".to_string()),
            473 => Ok("a performance standby node, unsealed".to_string()),
            472 => Err(unavailable("disaster recovery secondary")),
            501 => Err(unavailable("not initialized")),
            503 if sealed => Err(VaultError::Sealed {
                address: self.address.clone(),
                path: path.to_string(),
                message: "Vault is sealed".to_string(),
            }),
            _ => {
                let ctx = Ctx {
                    issuer: self,
                    path,
                    req: None,
                };
                Err(classify_body(&ctx, status, text, retry_after))
            }
        }
    }

    /// Renders the `commonName` template with a proxy's tags (`None` when no template is set).
    pub fn render_common_name(
        &self,
        tags: &BTreeMap<String, String>,
    ) -> Result<Option<String>, VaultError> {
        match &self.common_name {
            None => Ok(None),
            Some(t) => crate::template::render(t, tags)
                .map(Some)
                .map_err(|e| conf_err("fromCp.commonName", e.to_string())),
        }
    }

    /// Issues a certificate from `<pki>/issue/<role>`. With a cert login whose token was
    /// refused (expired), logs in again once and retries.
    pub async fn issue(&self, req: &IssueRequest) -> Result<IssuedCert, VaultError> {
        match self.issue_once(req).await {
            Err(VaultError::PermissionDenied { .. }) if self.auth == AuthMode::Cert => {
                self.authenticate().await?;
                self.issue_once(req).await
            }
            other => other,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .request(method, format!("{}/v1/{}", self.address, path))
            .header("X-Vault-Request", "true");
        if let Some(ns) = &self.namespace {
            rb = rb.header("X-Vault-Namespace", ns);
        }
        if self.auth != AuthMode::Agent
            && let Some(token) = self.current_token()
        {
            let mut value = reqwest::header::HeaderValue::from_str(&token.0)
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
            value.set_sensitive(true);
            rb = rb.header("X-Vault-Token", value);
        }
        rb
    }

    // Raw request: vaultrs' GenerateCertificateResponse drops `warnings`.
    async fn issue_once(&self, req: &IssueRequest) -> Result<IssuedCert, VaultError> {
        let path = self.issue_path();
        let mut body = serde_json::json!({
            "uri_sans": req.uri_sans,
            "ttl": format!("{}s", req.ttl.as_secs().max(1)),
        });
        if let Some(cn) = &req.common_name {
            body["common_name"] = serde_json::Value::String(cn.clone());
        }
        let (status, retry_after, text) = self
            .exchange(self.request(reqwest::Method::POST, &path).json(&body))
            .await?;
        self.read_issue_answer(req, status, retry_after, &text)
    }

    /// Sends a request and reads the whole answer: status, `Retry-After` seconds and body. A
    /// failure below HTTP (connect, TLS, timeout) is classified here; the answer is the caller's.
    async fn exchange(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<(u16, Option<u64>, String), VaultError> {
        let resp = rb.send().await.map_err(|e| classify_transport(self, &e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after_header(resp.headers());
        let text = resp
            .text()
            .await
            .map_err(|e| classify_transport(self, &e))?;
        Ok((status, retry_after, text))
    }

    /// Reads Vault's answer to `<pki>/issue/<role>` (status, `Retry-After` seconds, body): the
    /// issued certificate, or the error it stands for. Pure (no I/O), so that hostile answers
    /// can be fuzzed.
    pub fn read_issue_answer(
        &self,
        req: &IssueRequest,
        status: u16,
        retry_after: Option<u64>,
        text: &str,
    ) -> Result<IssuedCert, VaultError> {
        let path = self.issue_path();
        let ctx = Ctx {
            issuer: self,
            path: &path,
            req: Some(req),
        };
        if !(200..300).contains(&status) {
            return Err(classify_body(&ctx, status, text, retry_after));
        }
        let bad = |reason: String| VaultError::BadResponse {
            address: self.address.clone(),
            path: path.clone(),
            reason,
        };
        let answer: IssueAnswer =
            serde_json::from_str(text).map_err(|e| bad(format!("not the expected JSON: {e}")))?;
        let data = answer
            .data
            .ok_or_else(|| bad("no data in the answer".to_string()))?;
        Ok(IssuedCert {
            certificate_pem: data.certificate,
            private_key_pem: data.private_key,
            private_key_type: data.private_key_type,
            issuing_ca_pem: data.issuing_ca,
            ca_chain_pem: data.ca_chain.unwrap_or_default(),
            serial: data.serial_number,
            expiration: data.expiration,
            warnings: answer.warnings.unwrap_or_default(),
        })
    }

    /// `auth/token/lookup-self`: the remaining TTL of the token in use and whether it can be
    /// renewed. `None` when there is no token to look up (through an agent, or before a cert
    /// login). A TTL of zero means the token never expires (a root token).
    pub async fn token_info(&self) -> Result<Option<TokenInfo>, VaultError> {
        if self.auth == AuthMode::Agent || self.current_token().is_none() {
            return Ok(None);
        }
        let v = self
            .token_call(reqwest::Method::GET, "auth/token/lookup-self", None)
            .await?;
        let data = &v["data"];
        Ok(Some(TokenInfo {
            ttl: Duration::from_secs(data["ttl"].as_u64().unwrap_or(0)),
            renewable: data["renewable"].as_bool().unwrap_or(false),
        }))
    }

    /// `auth/token/renew-self`: renews the token in use (by `increment`, or by its own period or
    /// default TTL) and returns its new TTL. `None` when there is no token (see [`Self::token_info`]).
    pub async fn renew_token(
        &self,
        increment: Option<Duration>,
    ) -> Result<Option<TokenInfo>, VaultError> {
        if self.auth == AuthMode::Agent || self.current_token().is_none() {
            return Ok(None);
        }
        let body = increment.map(|d| serde_json::json!({"increment": format!("{}s", d.as_secs())}));
        let v = self
            .token_call(reqwest::Method::POST, "auth/token/renew-self", body)
            .await?;
        let auth = &v["auth"];
        Ok(Some(TokenInfo {
            ttl: Duration::from_secs(auth["lease_duration"].as_u64().unwrap_or(0)),
            renewable: auth["renewable"].as_bool().unwrap_or(false),
        }))
    }

    async fn token_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VaultError> {
        let mut rb = self.request(method, path);
        if let Some(b) = &body {
            rb = rb.json(b);
        }
        let (status, retry_after, text) = self.exchange(rb).await?;
        if !(200..300).contains(&status) {
            let ctx = Ctx {
                issuer: self,
                path,
                req: None,
            };
            return Err(classify_body(&ctx, status, &text, retry_after));
        }
        serde_json::from_str(&text).map_err(|e| VaultError::BadResponse {
            address: self.address.clone(),
            path: path.to_string(),
            reason: format!("not the expected JSON: {e}"),
        })
    }

    /// `<pki>/ca_chain` (unauthenticated, PEM): the chain of the PKI's default issuer.
    pub async fn ca_chain(&self) -> Result<String, VaultError> {
        let path = format!("{}/ca_chain", self.pki);
        let (status, retry_after, text) = self
            .exchange(self.request(reqwest::Method::GET, &path))
            .await?;
        if !(200..300).contains(&status) {
            let ctx = Ctx {
                issuer: self,
                path: &path,
                req: None,
            };
            return Err(classify_body(&ctx, status, &text, retry_after));
        }
        Ok(text)
    }
}

// ---------------------------------------------------------------------------------------------
// The backend check
// ---------------------------------------------------------------------------------------------

/// One step of [`check_backend`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    /// The backend field to blame when the step failed (e.g. `conf.fromCp.role`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The outcome of [`check_backend`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VaultCheckReport {
    pub mesh: String,
    pub backend: String,
    pub ok: bool,
    pub checks: Vec<CheckResult>,
    pub warnings: Vec<String>,
    /// The check failed because Vault could not be reached or is not serving (exit code 3).
    pub unreachable: bool,
    /// Serial of the test certificate, when one was issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl VaultCheckReport {
    pub fn new(mesh: &str, backend: &str) -> Self {
        Self {
            mesh: mesh.to_string(),
            backend: backend.to_string(),
            ok: true,
            checks: Vec::new(),
            warnings: Vec::new(),
            unreachable: false,
            serial: None,
        }
    }

    fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.checks.push(CheckResult {
            name: name.to_string(),
            passed: true,
            detail: detail.into(),
            field: None,
        });
    }

    fn fail(&mut self, name: &str, detail: impl Into<String>, field: Option<String>) {
        self.ok = false;
        self.checks.push(CheckResult {
            name: name.to_string(),
            passed: false,
            detail: detail.into(),
            field,
        });
    }

    fn fail_err(&mut self, name: &str, err: &VaultError) {
        if err.is_unreachable() {
            self.unreachable = true;
        }
        self.fail(name, err.to_string(), err.field());
    }

    /// The failed steps.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// One line: what failed (each failed step's detail), or that the test certificate was
    /// issued and checked.
    pub fn summary(&self) -> String {
        let prefix = format!("vault backend {:?} of mesh {:?}", self.backend, self.mesh);
        if self.ok {
            let serial = self.serial.as_deref().unwrap_or("?");
            let mut s = format!("{prefix}: test certificate {serial} issued and checked");
            if !self.warnings.is_empty() {
                s.push_str(&format!(
                    " ({} warning(s): {})",
                    self.warnings.len(),
                    self.warnings.join("; ")
                ));
            }
            s
        } else {
            let reasons: Vec<String> = self
                .failures()
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            format!("{prefix} refused: {}", reasons.join("; "))
        }
    }
}

/// `720h`, `90m`, `45s`.
fn human(secs: i64) -> String {
    if secs != 0 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs != 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The key usages a proxy certificate should carry, in the spelling OpenBao honours.
pub const SUGGESTED_KEY_USAGE: &str = "DigitalSignature,KeyEncipherment,KeyAgreement";

/// Slack allowed between the requested and the issued lifetime (clock, rounding).
const LIFETIME_SLACK_SECS: i64 = 90;

/// Checks a vault backend of `mesh` the way Kong Mesh did on create/update, and more: resolves
/// its conf, reaches Vault (`sys/health`), authenticates, issues a test certificate for the
/// service [`CHECK_SERVICE`] with the URI SANs `spiffe://<mesh>/<svc>` and
/// `kuma://kuma.io/service/<svc>`, the `commonName` template rendered with
/// `{kuma.io/service: <svc>}`, and the TTL `dpCert.rotation.expiration`, then checks that
/// certificate:
///
/// - `lifetime`: Vault silently truncates a TTL above the role's `max_ttl` (or the mount's
///   max-lease-ttl) and only warns; a shorter certificate than asked is refused, naming both;
/// - `extendedKeyUsage`: serverAuth and clientAuth (role flags `server_flag`, `client_flag`);
/// - `uriSans`: every requested URI SAN is present; `commonName`: the rendered name, if any;
/// - `chain`: the leaf verifies through Vault's `ca_chain`/`issuing_ca` up to a self-signed root
///   that Vault returns. That root is what proxies trust, so a PKI given an intermediate without
///   its root (the page's `bundle.pem` concatenates them for this reason) is refused: there would
///   be no trust anchor to hand out;
/// - `keyUsage`: a certificate without a Key Usage extension passes with a warning (the page's
///   `KeyUsage*` spellings are accepted but ignored by OpenBao).
///
/// Vault's own warnings are passed through. Never panics; every outcome is in the report.
pub async fn check_backend(
    mesh: &str,
    backend: &Backend,
    secrets: &dyn SecretLookup,
) -> VaultCheckReport {
    check_backend_with(mesh, backend, secrets, Timeouts::configured()).await
}

/// [`check_backend`] with explicit timeouts ([`check_backend`] uses [`Timeouts::configured`]).
pub async fn check_backend_with(
    mesh: &str,
    backend: &Backend,
    secrets: &dyn SecretLookup,
    timeouts: Timeouts,
) -> VaultCheckReport {
    let mut report = VaultCheckReport::new(mesh, &backend.name);

    // conf
    let from_cp = match backend.typed_conf() {
        Ok(BackendConf::Vault(v)) => match v.from_cp {
            Some(f) => f,
            None => {
                report.fail(
                    "conf",
                    "conf.fromCp must be set",
                    Some("conf.fromCp".to_string()),
                );
                return report;
            }
        },
        Ok(_) => {
            report.fail(
                "conf",
                format!("backend type is {:?}, not vault", backend.type_),
                Some("type".to_string()),
            );
            return report;
        }
        Err(e) => {
            let field = if e.path.is_empty() {
                "conf".to_string()
            } else {
                format!("conf.{}", e.path)
            };
            report.fail("conf", format!("{field}: {}", e.reason), Some(field));
            return report;
        }
    };
    let issuer = match VaultIssuer::from_conf(mesh, &from_cp, secrets, timeouts) {
        Ok(i) => i,
        Err(e) => {
            report.fail_err("conf", &e);
            return report;
        }
    };
    report.pass(
        "conf",
        format!(
            "data sources resolved; requests go to {}{}",
            issuer.address(),
            issuer
                .namespace()
                .map(|n| format!(" in namespace {n}"))
                .unwrap_or_default()
        ),
    );

    // connect
    match issuer.health().await {
        Ok(state) => report.pass(
            "connect",
            format!("Vault at {} is {state}", issuer.address()),
        ),
        Err(e) => {
            report.fail_err("connect", &e);
            return report;
        }
    }

    // auth
    match issuer.auth {
        AuthMode::Cert => match issuer.authenticate().await {
            Ok(()) => report.pass(
                "auth",
                format!("logged in at auth/{CERT_AUTH_MOUNT}/login with the client certificate"),
            ),
            Err(e) => {
                report.fail_err("auth", &e);
                return report;
            }
        },
        AuthMode::Token => report.pass(
            "auth",
            "token from conf.fromCp.auth.token (its policy is checked by the test issue)",
        ),
        AuthMode::Agent => report.pass(
            "auth",
            format!("the Vault Agent at {} adds its own token", issuer.address()),
        ),
    }

    // issue
    let svc = CHECK_SERVICE;
    let mut tags = BTreeMap::new();
    tags.insert(SERVICE_TAG.to_string(), svc.to_string());
    let common_name = match issuer.render_common_name(&tags) {
        Ok(cn) => cn,
        Err(e) => {
            report.fail_err("issue", &e);
            return report;
        }
    };
    let ttl = backend.dp_cert_expiration();
    let req = IssueRequest {
        uri_sans: vec![
            format!("spiffe://{mesh}/{svc}"),
            format!("kuma://{SERVICE_TAG}/{svc}"),
        ],
        common_name: common_name.clone(),
        ttl,
    };
    let started = now_unix();
    let cert = match issuer.issue(&req).await {
        Ok(c) => c,
        Err(e) => {
            report.fail_err("issue", &e);
            return report;
        }
    };
    inspect_test_certificate(&mut report, &issuer, &req, &cert, started);
    report
}

/// The checks of a test certificate Vault issued for `req` (asked at unix `started`): parses,
/// key matches, lifetime as asked, extended key usages, URI SANs, common name, chain to a
/// self-signed root Vault returned, Key Usage present. Pure (no I/O), so that hostile answers
/// can be fuzzed.
pub fn inspect_test_certificate(
    report: &mut VaultCheckReport,
    issuer: &VaultIssuer,
    req: &IssueRequest,
    cert: &IssuedCert,
    started: i64,
) {
    let ttl = req.ttl;
    let common_name = &req.common_name;
    report.serial = Some(cert.serial.clone());
    report
        .warnings
        .extend(cert.warnings.iter().map(|w| format!("Vault: {w}")));
    let summary = match cert.summary() {
        Ok(s) => s,
        Err(e) => {
            report.fail(
                "issue",
                format!("Vault returned a certificate that cannot be parsed: {e}"),
                None,
            );
            return;
        }
    };
    if !x509::private_key_matches_cert(&cert.certificate_pem, &cert.private_key_pem) {
        report.fail(
            "issue",
            "Vault returned a private key that does not belong to the certificate",
            None,
        );
        return;
    }
    report.pass(
        "issue",
        format!(
            "test certificate {} ({}) issued from {}",
            cert.serial,
            summary.key_algorithm,
            issuer.issue_path()
        ),
    );

    // lifetime
    let asked = ttl.as_secs() as i64;
    let got = summary.not_after - started;
    if got + LIFETIME_SLACK_SECS < asked {
        let vault_said: Vec<&String> = cert
            .warnings
            .iter()
            .filter(|w| w.contains("TTL") || w.to_lowercase().contains("ttl"))
            .collect();
        let mut detail = format!(
            "Vault issued a certificate valid for {} but dpCert.rotation.expiration asks for {}: the role's max_ttl (or the PKI mount's max-lease-ttl) is lower; raise max_ttl on role {} of {} or lower the expiration",
            human(round_lifetime(got)),
            human(asked),
            issuer.role,
            issuer.pki
        );
        if !vault_said.is_empty() {
            let texts: Vec<&str> = vault_said.iter().map(|s| s.as_str()).collect();
            detail.push_str(&format!(" (Vault said: {})", texts.join("; ")));
        }
        report.fail(
            "lifetime",
            detail,
            Some("dpCert.rotation.expiration".to_string()),
        );
    } else {
        report.pass("lifetime", format!("valid for {} as asked", human(asked)));
    }

    // extendedKeyUsage
    let mut missing = Vec::new();
    if !summary.server_auth {
        missing.push(("serverAuth", "server_flag=true"));
    }
    if !summary.client_auth {
        missing.push(("clientAuth", "client_flag=true"));
    }
    if missing.is_empty() {
        report.pass("extendedKeyUsage", "serverAuth and clientAuth");
    } else {
        let names: Vec<&str> = missing.iter().map(|m| m.0).collect();
        let fixes: Vec<&str> = missing.iter().map(|m| m.1).collect();
        report.fail(
            "extendedKeyUsage",
            format!(
                "the test certificate lacks the extended key usage {}: proxies need both serverAuth and clientAuth for mTLS; set {} on role {} of {}",
                names.join(" and "),
                fixes.join(" "),
                issuer.role,
                issuer.pki
            ),
            Some("conf.fromCp.role".to_string()),
        );
    }

    // uriSans
    let absent: Vec<&String> = req
        .uri_sans
        .iter()
        .filter(|u| !summary.uri_sans.contains(u))
        .collect();
    if absent.is_empty() {
        report.pass("uriSans", req.uri_sans.join(", "));
    } else {
        report.fail(
            "uriSans",
            format!(
                "Vault issued the test certificate without the URI SANs {absent:?} (it has {:?}); check role {} of {}",
                summary.uri_sans, issuer.role, issuer.pki
            ),
            Some("conf.fromCp.role".to_string()),
        );
    }

    // commonName
    if let Some(cn) = &common_name {
        if summary.common_name.as_deref() == Some(cn.as_str()) {
            report.pass("commonName", cn.clone());
        } else {
            report.fail(
                "commonName",
                format!(
                    "asked for common name {cn:?}, Vault issued {:?}",
                    summary.common_name.as_deref().unwrap_or("")
                ),
                Some("conf.fromCp.commonName".to_string()),
            );
        }
    }

    // chain
    let roots = cert.root_pems();
    if roots.is_empty() {
        report.fail(
            "chain",
            format!(
                "the CA chain Vault returns for {} has no self-signed root certificate, so proxies would have no trust anchor; set the signed intermediate together with its root (bundle.pem = intermediate + root, vault write {}/intermediate/set-signed certificate=@bundle.pem)",
                issuer.pki, issuer.pki
            ),
            Some("conf.fromCp.pki".to_string()),
        );
    } else {
        let inters = cert.intermediate_pems();
        let inter_refs: Vec<&str> = inters.iter().map(String::as_str).collect();
        let root_refs: Vec<&str> = roots.iter().map(String::as_str).collect();
        match x509::verify_chain_pem(&cert.certificate_pem, &inter_refs, &root_refs) {
            Ok(()) => report.pass(
                "chain",
                format!(
                    "verifies through {} intermediate(s) to a self-signed root",
                    inters.len()
                ),
            ),
            Err(e) => report.fail(
                "chain",
                format!("the test certificate does not verify to the CA Vault returns: {e}"),
                Some("conf.fromCp.pki".to_string()),
            ),
        }
    }

    // keyUsage
    match &summary.key_usage {
        Some(ku) => report.pass("keyUsage", ku.join(", ")),
        None => {
            let w = format!(
                "the test certificate has no Key Usage extension: OpenBao ignores key_usage names spelled KeyUsage* (as in the reference page's role); set key_usage=\"{SUGGESTED_KEY_USAGE}\" on role {} of {}",
                issuer.role, issuer.pki
            );
            report.pass("keyUsage", format!("warning: {w}"));
            report.warnings.push(w);
        }
    }
}

/// Rounds an issued lifetime (measured from when the request started) to the nearest minute so
/// that `720h` reads as `720h`, not `719h59m58s`.
fn round_lifetime(secs: i64) -> i64 {
    ((secs + 30) / 60) * 60
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn human_durations() {
        assert_eq!(human(720 * 3600), "720h");
        assert_eq!(human(90 * 60), "90m");
        assert_eq!(human(45), "45s");
        assert_eq!(human(round_lifetime(720 * 3600 - 3)), "720h");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let cert = IssuedCert {
            certificate_pem: String::new(),
            private_key_pem: "-----BEGIN EC PRIVATE KEY-----SECRETKEY".into(),
            private_key_type: "ec".into(),
            issuing_ca_pem: String::new(),
            ca_chain_pem: vec![],
            serial: "01".into(),
            expiration: None,
            warnings: vec![],
        };
        assert!(!format!("{cert:?}").contains("SECRETKEY"));
        let conf = FromCp {
            address: "http://127.0.0.1:1".into(),
            pki: "p".into(),
            role: "r".into(),
            auth: Some(crate::model::VaultAuth {
                token: Some(DataSource::inline_string("s.SECRETTOKEN")),
                tls: None,
            }),
            ..Default::default()
        };
        let secrets = crate::datasource::SecretMap::default();
        let issuer = VaultIssuer::from_conf("m", &conf, &secrets, Timeouts::default()).unwrap();
        assert!(!format!("{issuer:?}").contains("SECRETTOKEN"));
    }
}
