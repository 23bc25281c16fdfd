//! The logins of a vault client ([`VaultIssuer`]): a TLS client certificate (`auth/cert/login`,
//! through vaultrs), AppRole (`role_id`, `secret_id`) and JWT (`role`, `jwt`) at
//! `auth/<mount>/login`, each inside the backend's namespace (`X-Vault-Namespace`). A login gives
//! a token and its [`Lease`]; `renew-self` extends a renewable one until Vault caps it at the
//! token's max TTL ([`Lease::capped`]: only a new login helps then). Logins of one client are
//! serialized, a 403 logs in again only if no other login happened since the refused request,
//! and a refused login holds its error for a backoff ([`LOGIN_BACKOFF_INITIAL`] doubling up to
//! [`LOGIN_BACKOFF_MAX`]): whoever asks meanwhile gets that error without a request, so neither
//! a burst of 403s nor a retrying caller becomes a loop of logins. Credentials and tokens are
//! held as [`Secret`]s: never in `Debug` output, logs or error messages.
//!
//! AppRole and JWT logins are raw requests on the client's own HTTP client (its TLS, timeouts
//! and namespace), not vaultrs' `approle::login`/`oidc::login`: those go through rustify, which
//! logs every refused request as an error event of its own, one more line for each retry.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::client::{VaultIssuer, resolve};
use super::error::{
    CERT_AUTH_MOUNT, LoginMethod, VaultError, classify_body, classify_vaultrs, conf_err,
};
use crate::datasource::SecretLookup;
use crate::model::{DataSource, VaultAuthAppRole, VaultAuthJwt};

/// The wait after the first refused login of a client; it doubles with each refusal in a row.
pub const LOGIN_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The longest wait between two refused logins of a client.
pub const LOGIN_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A secret string (a token, a role or secret ID, a JWT): `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Secret(pub(super) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Told of every login attempt that reached Vault: its method and whether it gave a token.
pub type LoginObserver = Arc<dyn Fn(LoginMethod, bool) + Send + Sync>;

/// The credentials of a login.
pub(super) enum Login {
    /// `auth.tls`: the client certificate is part of the TLS configuration.
    Cert,
    AppRole {
        mount: String,
        role_id: Secret,
        secret_id: Secret,
    },
    Jwt {
        mount: String,
        role: String,
        jwt: Secret,
    },
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("method", &self.method().as_str())
            .field("mount", &self.mount())
            .finish_non_exhaustive()
    }
}

impl Login {
    /// `auth.approle`, its data sources read.
    pub(super) fn approle(
        a: &VaultAuthAppRole,
        mesh: &str,
        secrets: &dyn SecretLookup,
    ) -> Result<Self, VaultError> {
        let role_id = a
            .role_id
            .as_ref()
            .ok_or_else(|| conf_err("fromCp.auth.approle.roleId", "must be set"))?;
        let secret_id = a
            .secret_id
            .as_ref()
            .ok_or_else(|| conf_err("fromCp.auth.approle.secretId", "must be set"))?;
        Ok(Login::AppRole {
            mount: a.mount_or_default().to_string(),
            role_id: credential(
                role_id,
                "fromCp.auth.approle.roleId",
                "an AppRole role ID",
                mesh,
                secrets,
            )?,
            secret_id: credential(
                secret_id,
                "fromCp.auth.approle.secretId",
                "an AppRole secret ID",
                mesh,
                secrets,
            )?,
        })
    }

    /// `auth.jwt`, its token read.
    pub(super) fn jwt(
        j: &VaultAuthJwt,
        mesh: &str,
        secrets: &dyn SecretLookup,
    ) -> Result<Self, VaultError> {
        let role = j.role.trim();
        if role.is_empty() || role.contains('/') {
            return Err(conf_err(
                "fromCp.auth.jwt.role",
                "must be set to a role name",
            ));
        }
        let token = j
            .token
            .as_ref()
            .ok_or_else(|| conf_err("fromCp.auth.jwt.token", "must be set"))?;
        let jwt = credential(token, "fromCp.auth.jwt.token", "a JWT", mesh, secrets)?;
        if jwt.0.split('.').count() != 3 {
            return Err(conf_err(
                "fromCp.auth.jwt.token",
                "is not a JWT (three base64url parts separated by '.')",
            ));
        }
        Ok(Login::Jwt {
            mount: j.mount_or_default().to_string(),
            role: role.to_string(),
            jwt,
        })
    }

    pub(super) fn method(&self) -> LoginMethod {
        match self {
            Login::Cert => LoginMethod::Cert,
            Login::AppRole { .. } => LoginMethod::AppRole,
            Login::Jwt { .. } => LoginMethod::Jwt,
        }
    }

    pub(super) fn mount(&self) -> &str {
        match self {
            Login::Cert => CERT_AUTH_MOUNT,
            Login::AppRole { mount, .. } | Login::Jwt { mount, .. } => mount,
        }
    }
}

/// A credential from the data source at `field`: UTF-8 text, trimmed, not empty, printable
/// ASCII without spaces (`what` says what it should be). No error quotes it.
pub(super) fn credential(
    ds: &DataSource,
    field: &str,
    what: &str,
    mesh: &str,
    secrets: &dyn SecretLookup,
) -> Result<Secret, VaultError> {
    let raw = resolve(ds, field, mesh, secrets)?;
    let text = String::from_utf8(raw).map_err(|_| conf_err(field, "is not UTF-8 text"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(conf_err(field, "is empty"));
    }
    if !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err(conf_err(
            field,
            format!("contains whitespace, control or non-ASCII characters: not {what}"),
        ));
    }
    Ok(Secret(text.to_string()))
}

/// The lease of the token in use, as Vault last gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// When Vault gave this TTL (tokio's clock, so that tests can pause it).
    pub at: Instant,
    /// What was left of the token's life then; zero: it never expires.
    pub ttl: Duration,
    pub renewable: bool,
    /// The last renewal got less than it asked for: the token's max TTL is near, and only a new
    /// login gives a token past it.
    pub capped: bool,
    /// What a renewal asks for: the TTL the login (or the token's creation) gave.
    pub increment: Duration,
}

impl Lease {
    /// When the token expires (meaningless for a TTL of zero, which never expires).
    pub fn expires(&self) -> Instant {
        self.at + self.ttl
    }
}

/// Refused logins in a row, and the error held until the next may be tried.
#[derive(Debug, Default)]
pub(super) struct Held {
    failures: u32,
    hold: Option<(Instant, VaultError)>,
}

fn secs(v: &serde_json::Value) -> Duration {
    Duration::from_secs(v.as_u64().unwrap_or(0))
}

impl VaultIssuer {
    /// Whether this client logs in (`auth.tls`, `auth.approle`, `auth.jwt`), and so can get a
    /// new token by itself.
    pub fn can_login(&self) -> bool {
        self.login.is_some()
    }

    /// The mount of its login (`cert`, `approle`...), if it logs in.
    pub fn login_mount(&self) -> Option<&str> {
        self.login.as_ref().map(Login::mount)
    }

    /// The role of a JWT login.
    pub fn login_role(&self) -> Option<&str> {
        match &self.login {
            Some(Login::Jwt { role, .. }) => Some(role),
            _ => None,
        }
    }

    /// Successful logins of this client so far.
    pub fn login_count(&self) -> u64 {
        self.logins.load(Ordering::SeqCst)
    }

    /// The lease of the token in use, once a login, renewal or lookup told it.
    pub fn lease(&self) -> Option<Lease> {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes whenever [`Self::lease`] does (a login, a renewal, a token dropped).
    pub fn lease_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.lease_tx.subscribe()
    }

    /// Until when a refused login holds its error (None: a login may be tried now).
    pub fn login_held_until(&self) -> Option<Instant> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.hold
            .as_ref()
            .map(|(until, _)| *until)
            .filter(|until| *until > Instant::now())
    }

    /// Sets what is told of every login attempt (once; later calls are ignored).
    pub fn set_login_observer(&self, observer: LoginObserver) {
        let _ = self.observer.set(observer);
    }

    fn set_lease(&self, lease: Option<Lease>) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = lease;
        self.lease_tx.send_modify(|n| *n += 1);
    }

    /// Tells lease changes on `tx` instead of a channel of its own (a caller that replaces its
    /// client keeps one channel across them).
    pub fn with_lease_changes(mut self, tx: tokio::sync::watch::Sender<u64>) -> Self {
        self.lease_tx = tx;
        self
    }

    /// Forgets the token's lease (Vault refused the token), and a login's token: the next
    /// request needs a login. A given token (`auth.token`) stays, as there is no other.
    pub fn forget_token(&self) {
        if self.login.is_some() {
            *self.token.write().unwrap_or_else(|e| e.into_inner()) = None;
        }
        self.set_lease(None);
    }

    /// Logs in (`auth.tls`, `auth.approle`, `auth.jwt`); nothing to do for a token or an agent.
    pub async fn authenticate(&self) -> Result<(), VaultError> {
        self.login().await.map(|_| ())
    }

    /// Logs in and returns the new token's lease; `None` for a client that does not log in. While
    /// a refused login's backoff runs, its error comes back without a request.
    pub async fn login(&self) -> Result<Option<Lease>, VaultError> {
        if self.login.is_none() {
            return Ok(None);
        }
        let _serial = self.gate.lock().await;
        self.login_locked().await.map(Some)
    }

    /// After a 403 to a request made with the token of login number `seen`: logs in again, unless
    /// another login happened since (whose token the retry then uses).
    pub(super) async fn relogin_after(&self, seen: u64) -> Result<(), VaultError> {
        let _serial = self.gate.lock().await;
        if self.login_count() != seen {
            return Ok(());
        }
        self.login_locked().await.map(|_| ())
    }

    async fn login_locked(&self) -> Result<Lease, VaultError> {
        let Some(login) = &self.login else {
            return Err(conf_err("fromCp.auth", "this backend does not log in"));
        };
        if let Some((until, e)) = &self.held.lock().unwrap_or_else(|e| e.into_inner()).hold
            && Instant::now() < *until
        {
            return Err(e.clone());
        }
        let result = self.send_login(login).await;
        if let Some(observe) = self.observer.get() {
            observe(login.method(), result.is_ok());
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok((token, ttl, renewable)) => {
                held.failures = 0;
                held.hold = None;
                drop(held);
                *self.token.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
                self.logins.fetch_add(1, Ordering::SeqCst);
                let lease = Lease {
                    at: Instant::now(),
                    ttl,
                    renewable,
                    capped: false,
                    increment: ttl,
                };
                self.set_lease(Some(lease));
                Ok(lease)
            }
            Err(e) => {
                held.failures = held.failures.saturating_add(1);
                let wait = crate::backoff::delay(
                    held.failures,
                    LOGIN_BACKOFF_INITIAL,
                    LOGIN_BACKOFF_MAX,
                    crate::backoff::Jitter::UpperHalf,
                );
                held.hold = Some((Instant::now() + wait, e.clone()));
                Err(e)
            }
        }
    }

    /// One login request: the token, its TTL and whether it is renewable.
    async fn send_login(&self, login: &Login) -> Result<(Secret, Duration, bool), VaultError> {
        let path = format!("auth/{}/login", login.mount());
        let body = match login {
            Login::Cert => {
                let client = self.vaultrs_client(None, true)?;
                let info = vaultrs::auth::cert::login(&client, CERT_AUTH_MOUNT, "")
                    .await
                    .map_err(|e| classify_vaultrs(&self.ctx(&path, None), e))?;
                if info.client_token.is_empty() {
                    return Err(self.bad_login(&path, "the login returned no token"));
                }
                return Ok((
                    Secret(info.client_token),
                    Duration::from_secs(info.lease_duration),
                    info.renewable,
                ));
            }
            Login::AppRole {
                role_id, secret_id, ..
            } => serde_json::json!({"role_id": role_id.0, "secret_id": secret_id.0}),
            Login::Jwt { role, jwt, .. } => serde_json::json!({"role": role, "jwt": jwt.0}),
        };
        let mut rb = self
            .http
            .post(format!("{}/v1/{path}", self.address))
            .header("X-Vault-Request", "true");
        if let Some(ns) = &self.namespace {
            rb = rb.header("X-Vault-Namespace", ns);
        }
        let (status, retry_after, text) = self.exchange(&path, rb.json(&body)).await?;
        if !(200..300).contains(&status) {
            return Err(classify_body(
                &self.ctx(&path, None),
                status,
                &text,
                retry_after,
            ));
        }
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| self.bad_login(&path, &format!("not the expected JSON: {e}")))?;
        let auth = &v["auth"];
        let token = auth["client_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.bad_login(&path, "the login returned no token"))?;
        Ok((
            Secret(token.to_string()),
            secs(&auth["lease_duration"]),
            auth["renewable"].as_bool().unwrap_or(false),
        ))
    }

    fn bad_login(&self, path: &str, reason: &str) -> VaultError {
        VaultError::BadResponse {
            address: self.address.clone(),
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    /// `auth/token/renew-self` for as long as the login gave: the new lease (capped when Vault
    /// gave less, the token's max TTL being near). `None` when there is no token of our own.
    pub async fn renew(&self) -> Result<Option<Lease>, VaultError> {
        if !self.has_own_token() {
            return Ok(None);
        }
        let seen = self.login_count();
        let increment = self.lease().map(|l| l.increment).filter(|d| !d.is_zero());
        let body = increment.map(|d| serde_json::json!({"increment": format!("{}s", d.as_secs())}));
        let v = self
            .token_call(reqwest::Method::POST, "auth/token/renew-self", body)
            .await?;
        let ttl = secs(&v["auth"]["lease_duration"]);
        let warned = v["warnings"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains("capped")))
        });
        let asked = increment.unwrap_or(ttl);
        let lease = Lease {
            at: Instant::now(),
            ttl,
            renewable: v["auth"]["renewable"].as_bool().unwrap_or(false),
            capped: warned || ttl + Duration::from_secs(1) < asked,
            increment: asked,
        };
        if self.login_count() != seen {
            // A login happened meanwhile: its lease is the newer one.
            return Ok(self.lease());
        }
        self.set_lease(Some(lease));
        Ok(Some(lease))
    }

    /// `auth/token/lookup-self`: the lease of the token in use (a token given in `auth.token`,
    /// whose TTL nothing else tells). `None` when there is no token of our own.
    pub async fn read_lease(&self) -> Result<Option<Lease>, VaultError> {
        if !self.has_own_token() {
            return Ok(None);
        }
        let v = self
            .token_call(reqwest::Method::GET, "auth/token/lookup-self", None)
            .await?;
        let data = &v["data"];
        let ttl = secs(&data["ttl"]);
        let created = secs(&data["creation_ttl"]);
        let lease = Lease {
            at: Instant::now(),
            ttl,
            renewable: data["renewable"].as_bool().unwrap_or(false),
            capped: false,
            increment: if created.is_zero() { ttl } else { created },
        };
        self.set_lease(Some(lease));
        Ok(Some(lease))
    }

    /// Revokes the token of our own login (`auth/token/revoke-self`), at the end of a one-off
    /// check: no token is left behind until its TTL runs out. Best effort: a failure is only
    /// logged at debug level.
    pub async fn revoke_login(&self) {
        if self.login.is_none() || !self.has_own_token() {
            return;
        }
        let path = "auth/token/revoke-self";
        match self.token_call(reqwest::Method::POST, path, None).await {
            Ok(_) => {}
            // An empty 204 answer is not JSON: that is success too.
            Err(VaultError::BadResponse { .. }) => {}
            Err(e) => {
                tracing::debug!(mesh = %self.mesh, error = %e, "could not revoke the login's token")
            }
        }
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.set_lease(None);
    }
}
