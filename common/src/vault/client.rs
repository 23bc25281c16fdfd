//! The client of one vault backend, [`VaultIssuer`], built from a backend's `conf.fromCp` (data
//! sources resolved) and a [`Timeouts`]: it talks to the Vault address (or, when `agentAddress`
//! is set, to a Vault Agent that adds the token itself), sends `X-Vault-Namespace`, uses the TLS
//! of [`super::tls`], and authenticates with a token or logs in ([`super::login`]: a TLS client
//! certificate, AppRole or JWT, inside the namespace). It issues from `<pki>/issue/<role>` (a
//! login's token refused with 403 makes it log in again once and retry), reads `sys/health`,
//! the token's TTL and the PKI's CA chain; failures are classified by [`super::error`]. Tokens
//! and credentials never appear in `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};

use super::error::{
    Ctx, LoginMethod, VaultError, classify_body, classify_transport, conf_err, retry_after_header,
};
use super::issued::{IssueAnswer, IssueRequest, IssuedCert, TokenInfo};
use super::login::{Held, Lease, Login, LoginObserver, Secret, credential};
use super::timeouts::Timeouts;
use super::tls::{TlsSettings, parse_certs, rustls_config};
use crate::datasource::SecretLookup;
use crate::model::{DataSource, FromCp};

/// The [`TokenInfo`] of Vault's `data` (lookup) or `auth` (renewal) object, its TTL in `ttl_key`.
fn token_info_of(v: &serde_json::Value, ttl_key: &str) -> TokenInfo {
    TokenInfo {
        ttl: Duration::from_secs(v[ttl_key].as_u64().unwrap_or(0)),
        renewable: v["renewable"].as_bool().unwrap_or(false),
    }
}

/// Reads the data source at `field` of the conf.
pub(super) fn resolve(
    ds: &DataSource,
    field: &str,
    mesh: &str,
    secrets: &dyn SecretLookup,
) -> Result<Vec<u8>, VaultError> {
    ds.resolve(mesh, secrets)
        .map_err(|e| conf_err(field, e.to_string()))
}

/// How a client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// A token from `auth.token`.
    Token,
    /// A token from `auth/cert/login` with the client certificate of `auth.tls`.
    Cert,
    /// A token from `auth/<mount>/login` with the role ID and secret ID of `auth.approle`.
    AppRole,
    /// A token from `auth/<mount>/login` with the role and JWT of `auth.jwt`.
    Jwt,
    /// `agentAddress`: the agent adds its own token.
    Agent,
}

impl AuthMode {
    /// `token`, `tls`, `approle`, `jwt` (the keys of `conf.fromCp.auth`), or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Token => "token",
            AuthMode::Cert => "tls",
            AuthMode::AppRole => "approle",
            AuthMode::Jwt => "jwt",
            AuthMode::Agent => "agent",
        }
    }

    /// The login it makes, if it logs in.
    pub fn login_method(self) -> Option<LoginMethod> {
        match self {
            AuthMode::Cert => Some(LoginMethod::Cert),
            AuthMode::AppRole => Some(LoginMethod::AppRole),
            AuthMode::Jwt => Some(LoginMethod::Jwt),
            AuthMode::Token | AuthMode::Agent => None,
        }
    }
}

/// A client of one vault backend: issues proxy certificates from `<pki>/issue/<role>`. Not
/// `Clone`: share it in an `Arc` (issuing is `&self` and concurrent).
pub struct VaultIssuer {
    pub(super) mesh: String,
    pub(super) address: String,
    pub(super) auth: AuthMode,
    pub(super) namespace: Option<String>,
    pki: String,
    role: String,
    common_name: Option<String>,
    pub(super) http: reqwest::Client,
    pub(super) token: RwLock<Option<Secret>>,
    pub(super) timeouts: Timeouts,
    /// The credentials of a login (`auth.tls`, `auth.approle`, `auth.jwt`).
    pub(super) login: Option<Login>,
    /// The lease of the token in use, once known (a login's, a renewal's, a lookup's).
    pub(super) lease: Mutex<Option<Lease>>,
    /// Bumped whenever `lease` changes.
    pub(super) lease_tx: tokio::sync::watch::Sender<u64>,
    /// Successful logins so far: which token a request was made with.
    pub(super) logins: AtomicU64,
    /// Serializes logins.
    pub(super) gate: tokio::sync::Mutex<()>,
    /// A refused login's error, held for its backoff.
    pub(super) held: Mutex<Held>,
    pub(super) observer: OnceLock<LoginObserver>,
}

impl fmt::Debug for VaultIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultIssuer")
            .field("mesh", &self.mesh)
            .field("address", &self.address)
            .field("auth", &self.auth.as_str())
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
    /// authenticates: with `auth.token` nothing is sent yet; with `auth.tls`, `auth.approle` or
    /// `auth.jwt` it logs in (see [`VaultIssuer::login`]); with `agentAddress` the agent
    /// authenticates. Every request is bounded by `timeouts`.
    pub async fn connect(
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
        let mut login = None;
        let auth = if via_agent {
            AuthMode::Agent
        } else {
            if auth_conf.methods().len() > 1 {
                return Err(conf_err(
                    "fromCp.auth",
                    "exactly one of token, tls, approle, jwt must be set",
                ));
            }
            if let Some(ds) = &auth_conf.token {
                token = Some(credential(
                    ds,
                    "fromCp.auth.token",
                    "a Vault token",
                    mesh,
                    secrets,
                )?);
                AuthMode::Token
            } else if let Some(tls) = &auth_conf.tls {
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
                login = Some(Login::Cert);
                AuthMode::Cert
            } else if let Some(a) = &auth_conf.approle {
                login = Some(Login::approle(a, mesh, secrets)?);
                AuthMode::AppRole
            } else if let Some(j) = &auth_conf.jwt {
                login = Some(Login::jwt(j, mesh, secrets)?);
                AuthMode::Jwt
            } else {
                return Err(conf_err(
                    "fromCp.auth",
                    "one of token, tls, approle, jwt must be set (or agentAddress)",
                ));
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
            login,
            lease: Mutex::new(None),
            lease_tx: tokio::sync::watch::Sender::new(0),
            logins: AtomicU64::new(0),
            gate: tokio::sync::Mutex::new(()),
            held: Mutex::new(Held::default()),
            observer: OnceLock::new(),
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

    /// How this client authenticates.
    pub fn auth_mode(&self) -> AuthMode {
        self.auth
    }

    /// `<pki>/issue/<role>`.
    pub fn issue_path(&self) -> String {
        format!("{}/issue/{}", self.pki, self.role)
    }

    /// `<pki>/sign/<role>`: where CSRs are signed (`dpCert.keyGeneration: proxy`).
    pub fn sign_path(&self) -> String {
        format!("{}/sign/{}", self.pki, self.role)
    }

    fn address_field(&self) -> &'static str {
        if self.auth == AuthMode::Agent {
            "agentAddress"
        } else {
            "address"
        }
    }

    /// What a failed request to `path` (for `req`, if an issue) is classified with.
    pub(super) fn ctx<'a>(&'a self, path: &'a str, req: Option<&'a IssueRequest>) -> Ctx<'a> {
        Ctx {
            address: &self.address,
            address_field: self.address_field(),
            pki: &self.pki,
            role: &self.role,
            timeouts: self.timeouts,
            path,
            uri_sans: req.map(|r| r.uri_sans.as_slice()).unwrap_or_default(),
            common_name: req.and_then(|r| r.common_name.as_deref()),
            login: self
                .login
                .as_ref()
                .map(|l| (l.method(), l.mount()))
                .filter(|_| super::error::is_login(path)),
            namespace: self.namespace.as_deref(),
        }
    }

    /// A token of our own is in use (not through an agent, and not before a login).
    pub(super) fn has_own_token(&self) -> bool {
        self.auth != AuthMode::Agent && self.current_token().is_some()
    }

    pub(super) fn current_token(&self) -> Option<Secret> {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A vaultrs client on our HTTP client (same TLS settings and timeouts), with the given
    /// token and, if `with_namespace`, the namespace.
    pub(super) fn vaultrs_client(
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

    /// `sys/health` (unauthenticated): reachable, TLS verified, initialized and unsealed.
    // Raw request: vaultrs' `sys::health` fails on OpenBao's answer, whose JSON has no
    // `performance_standby` field that vaultrs' response type requires.
    pub async fn health(&self) -> Result<String, VaultError> {
        let path = "sys/health";
        let (status, retry_after, text) = self
            .exchange(
                path,
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
            _ => Err(classify_body(
                &self.ctx(path, None),
                status,
                text,
                retry_after,
            )),
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

    /// Issues a certificate from `<pki>/issue/<role>`. With a login whose token was refused
    /// (expired, revoked), logs in again at once and retries once.
    pub async fn issue(&self, req: &IssueRequest) -> Result<IssuedCert, VaultError> {
        let seen = self.login_count();
        match self.request_cert(req, None).await {
            Err(VaultError::PermissionDenied { .. }) if self.login.is_some() => {
                self.relogin_after(seen).await?;
                self.request_cert(req, None).await
            }
            other => other,
        }
    }

    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
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

    /// Has `<pki>/sign/<role>` sign `csr_pem` with the names and lifetime of `req` (the CSR's own
    /// names are refused before: see `common::csr`). With a login whose token was refused, logs
    /// in again at once and retries once. The answer has no private key.
    pub async fn sign(&self, req: &IssueRequest, csr_pem: &str) -> Result<IssuedCert, VaultError> {
        let seen = self.login_count();
        match self.request_cert(req, Some(csr_pem)).await {
            Err(VaultError::PermissionDenied { .. }) if self.login.is_some() => {
                self.relogin_after(seen).await?;
                self.request_cert(req, Some(csr_pem)).await
            }
            other => other,
        }
    }

    // Raw request: vaultrs' GenerateCertificateResponse drops `warnings`.
    async fn request_cert(
        &self,
        req: &IssueRequest,
        csr_pem: Option<&str>,
    ) -> Result<IssuedCert, VaultError> {
        let path = match csr_pem {
            Some(_) => self.sign_path(),
            None => self.issue_path(),
        };
        let mut body = serde_json::json!({
            "uri_sans": req.uri_sans,
            "ttl": format!("{}s", req.ttl.as_secs().max(1)),
        });
        if let Some(cn) = &req.common_name {
            body["common_name"] = serde_json::Value::String(cn.clone());
        }
        if let Some(csr) = csr_pem {
            body["csr"] = serde_json::Value::String(csr.to_string());
        }
        let sent_ms = crate::clock::now_ms();
        let (status, retry_after, text, date) = self
            .exchange_dated(
                &path,
                self.request(reqwest::Method::POST, &path).json(&body),
            )
            .await?;
        let mut cert = self.read_answer(&path, req, status, retry_after, &text)?;
        cert.vault_clock = date
            .map(|d| crate::clock::Skew::measure(d * 1000, sent_ms, crate::clock::now_ms(), 1000));
        Ok(cert)
    }

    /// Sends a request to `path` and reads the whole answer: status, `Retry-After` seconds and
    /// body. A failure below HTTP (connect, TLS, timeout) is classified here; the answer is the
    /// caller's.
    pub(super) async fn exchange(
        &self,
        path: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<(u16, Option<u64>, String), VaultError> {
        let (status, retry_after, text, _) = self.exchange_dated(path, rb).await?;
        Ok((status, retry_after, text))
    }

    /// [`Self::exchange`], with the unix seconds of the answer's `Date` header (Vault's clock).
    async fn exchange_dated(
        &self,
        path: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<(u16, Option<u64>, String, Option<i64>), VaultError> {
        let ctx = self.ctx(path, None);
        let resp = rb.send().await.map_err(|e| classify_transport(&ctx, &e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after_header(resp.headers());
        let date = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::clock::parse_http_date);
        let text = resp
            .text()
            .await
            .map_err(|e| classify_transport(&ctx, &e))?;
        Ok((status, retry_after, text, date))
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
        self.read_answer(&self.issue_path(), req, status, retry_after, text)
    }

    /// [`Self::read_issue_answer`] for `path` (`issue` or `sign`).
    fn read_answer(
        &self,
        path: &str,
        req: &IssueRequest,
        status: u16,
        retry_after: Option<u64>,
        text: &str,
    ) -> Result<IssuedCert, VaultError> {
        let path = path.to_string();
        if !(200..300).contains(&status) {
            return Err(classify_body(
                &self.ctx(&path, Some(req)),
                status,
                text,
                retry_after,
            ));
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
            vault_clock: None,
        })
    }

    /// `auth/token/lookup-self`: the remaining TTL of the token in use and whether it can be
    /// renewed. `None` when there is no token to look up (through an agent, or before a cert
    /// login). A TTL of zero means the token never expires (a root token).
    pub async fn token_info(&self) -> Result<Option<TokenInfo>, VaultError> {
        if !self.has_own_token() {
            return Ok(None);
        }
        let v = self
            .token_call(reqwest::Method::GET, "auth/token/lookup-self", None)
            .await?;
        Ok(Some(token_info_of(&v["data"], "ttl")))
    }

    pub(super) async fn token_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VaultError> {
        let mut rb = self.request(method, path);
        if let Some(b) = &body {
            rb = rb.json(b);
        }
        let (status, retry_after, text) = self.exchange(path, rb).await?;
        if !(200..300).contains(&status) {
            return Err(classify_body(
                &self.ctx(path, None),
                status,
                &text,
                retry_after,
            ));
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
            .exchange(&path, self.request(reqwest::Method::GET, &path))
            .await?;
        if !(200..300).contains(&status) {
            return Err(classify_body(
                &self.ctx(&path, None),
                status,
                &text,
                retry_after,
            ));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            vault_clock: None,
        };
        assert!(!format!("{cert:?}").contains("SECRETKEY"));
        let conf = FromCp {
            address: "http://127.0.0.1:1".into(),
            pki: "p".into(),
            role: "r".into(),
            auth: Some(crate::model::VaultAuth {
                token: Some(DataSource::inline_string("s.SECRETTOKEN")),
                ..Default::default()
            }),
            ..Default::default()
        };
        let secrets = crate::datasource::SecretMap::default();
        let issuer = VaultIssuer::from_conf("m", &conf, &secrets, Timeouts::default()).unwrap();
        assert!(!format!("{issuer:?}").contains("SECRETTOKEN"));

        // AppRole and JWT credentials: neither in Debug nor in the errors about them.
        let mut secrets = crate::datasource::SecretMap::default();
        secrets.insert("m", "approle-1", b"SECRETID-1\n".to_vec());
        let approle = FromCp {
            auth: Some(crate::model::VaultAuth {
                approle: Some(crate::model::VaultAuthAppRole {
                    role_id: Some(DataSource::inline_string("ROLEID-1")),
                    secret_id: Some(DataSource::secret("approle-1")),
                    mount: String::new(),
                }),
                ..Default::default()
            }),
            namespace: "team-a/".into(),
            ..conf.clone()
        };
        let issuer = VaultIssuer::from_conf("m", &approle, &secrets, Timeouts::default()).unwrap();
        let debug = format!("{issuer:?}");
        assert!(
            !debug.contains("ROLEID") && !debug.contains("SECRETID"),
            "{debug}"
        );
        assert_eq!(issuer.auth_mode(), AuthMode::AppRole);
        assert_eq!(issuer.login_mount(), Some("approle"));
        assert_eq!(issuer.namespace(), Some("team-a"));
        assert!(issuer.can_login() && issuer.lease().is_none());

        let jwt = |token: &str| FromCp {
            auth: Some(crate::model::VaultAuth {
                jwt: Some(crate::model::VaultAuthJwt {
                    role: "kmesh".into(),
                    token: Some(DataSource::inline_string(token)),
                    mount: "jwt/k8s".into(),
                }),
                ..Default::default()
            }),
            ..conf.clone()
        };
        let issuer = VaultIssuer::from_conf(
            "m",
            &jwt("HEAD.SECRETCLAIMS.SIG"),
            &secrets,
            Timeouts::default(),
        )
        .unwrap();
        assert!(!format!("{issuer:?}").contains("SECRETCLAIMS"));
        assert_eq!(issuer.login_mount(), Some("jwt/k8s"));
        assert_eq!(issuer.login_role(), Some("kmesh"));
        for bad in ["SECRET NOT A JWT", "SECRETNOTAJWT"] {
            let e = VaultIssuer::from_conf("m", &jwt(bad), &secrets, Timeouts::default())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("conf.fromCp.auth.jwt.token: "), "{e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
        // Two methods at once are refused here too (validation says it first).
        let mut both = approle.clone();
        both.auth.as_mut().unwrap().token = Some(DataSource::inline_string("t"));
        let e = VaultIssuer::from_conf("m", &both, &secrets, Timeouts::default()).unwrap_err();
        assert_eq!(e.field().as_deref(), Some("conf.fromCp.auth"));
    }

    /// A refused AppRole or JWT login: Vault's reason first, the method's field blamed.
    #[test]
    fn refused_logins_name_the_method_and_the_reason() {
        use super::super::error::LoginMethod;
        let e = VaultError::LoginRefused {
            address: "http://v".into(),
            method: LoginMethod::AppRole,
            mount: "approle".into(),
            namespace: Some("team-a".into()),
            reason: "invalid role or secret ID".into(),
        };
        assert_eq!(e.field().as_deref(), Some("conf.fromCp.auth.approle"));
        let text = e.to_string();
        assert!(
            text.starts_with("login refused by Vault: invalid role or secret ID (auth/approle/login at http://v in namespace team-a)"),
            "{text}"
        );
        let e = VaultError::LoginRefused {
            address: "http://v".into(),
            method: LoginMethod::Jwt,
            mount: "jwt".into(),
            namespace: None,
            reason: "error validating token".into(),
        };
        assert_eq!(e.field().as_deref(), Some("conf.fromCp.auth.jwt"));
        assert!(e.to_string().starts_with(
            "login refused by Vault: error validating token (auth/jwt/login at http://v)"
        ));
        assert!(!e.is_unreachable());
    }
}
