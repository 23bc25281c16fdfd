//! Certificate sources: what issues a proxy certificate for a mesh's enabled backend. Behind the
//! small [`CertSource`] trait (so that the engine's scheduling can be unit-tested with fakes):
//!
//! - [`VaultSource`]: `<pki>/issue/<role>` through a [`VaultIssuer`] built from the backend's
//!   `conf.fromCp` with the zone's Secrets and files; its token (given, or a login's: cert,
//!   AppRole, JWT) is kept alive by `login::keep` (renewed, replaced by a login before it
//!   expires, `file:` credentials read again); every login is counted
//!   (`kmesh_vault_logins_total`) and the login's health goes to the zone's Vault check. When
//!   Vault answers "permission denied" (after the client's own login again, for a login) the
//!   data sources are read again (a token rotated in its file or Secret) and, if they changed,
//!   the client is rebuilt and the request retried.
//!   Every request is bounded by the zone's `--vault-timeout`; a 429 with `Retry-After` makes
//!   the source answer from memory (the same error, no request) until that time has passed.
//! - [`LocalSource`]: the builtin CA (the mesh Secrets `<mesh>.ca-builtin-cert/key-<backend>`) or
//!   the provided CA (`conf.cert` / `conf.key`), signing in `spawn_blocking`.
//!
//! Every source returns the leaf with its intermediates, the key, and the trust anchors the leaf
//! chains to. [`backend_material`] hashes what a source is built from beyond the backend's spec,
//! so that the engine rebuilds a source exactly when its inputs change.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use common::ca::{CaError, CaKeyPair, CaSigner, LeafRequest, builtin_secret_names, uri_sans_for};
use common::datasource::SecretLookup;
use common::model::{Backend, BackendConf, DataSource, FromCp};
use common::store::Store;
use common::vault::{AuthMode, IssueRequest, Lease, Timeouts, VaultError, VaultIssuer};
use common::x509;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};

use super::login::{self, Keeping, RenewFailure};
use crate::metrics::LoginLabels;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an issuance failed, for the `certificates_failed` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// Vault could not be reached, or is sealed.
    Unreachable,
    /// Vault refused the credentials.
    Denied,
    /// The backend refused the request (role, mount, SANs, common name, conf).
    Refused,
    /// The certificate came back expired or not yet valid by the zone's clock.
    ClockSkew,
    Other,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Unreachable => "unreachable",
            FailReason::Denied => "denied",
            FailReason::Refused => "refused",
            FailReason::ClockSkew => "clock_skew",
            FailReason::Other => "other",
        }
    }
}

/// A failed issuance (or source build). `per_proxy`: the failure concerns this proxy's request
/// only (its SANs or common name): the backend answered, so it does not count for the breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub reason: FailReason,
    pub message: String,
    pub per_proxy: bool,
}

impl SourceError {
    pub fn other(message: impl Into<String>) -> Self {
        Self {
            reason: FailReason::Other,
            message: message.into(),
            per_proxy: false,
        }
    }

    pub fn from_vault(e: &VaultError) -> Self {
        let reason = match e {
            VaultError::Unreachable { .. }
            | VaultError::Unavailable { .. }
            | VaultError::Timeout { .. }
            | VaultError::Sealed { .. }
            | VaultError::RateLimited { .. }
            | VaultError::ServerError { .. } => FailReason::Unreachable,
            VaultError::PermissionDenied { .. } | VaultError::LoginRefused { .. } => {
                FailReason::Denied
            }
            VaultError::Conf { .. }
            | VaultError::MountMissing { .. }
            | VaultError::UnknownRole { .. }
            | VaultError::UriSanNotAllowed { .. }
            | VaultError::CommonNameNotAllowed { .. }
            | VaultError::BadRequest { .. } => FailReason::Refused,
            VaultError::Tls { .. } | VaultError::BadResponse { .. } | VaultError::Other { .. } => {
                FailReason::Other
            }
        };
        let per_proxy = match e {
            VaultError::UriSanNotAllowed { .. } | VaultError::CommonNameNotAllowed { .. } => true,
            VaultError::Conf { field, .. } => field == "fromCp.commonName",
            _ => false,
        };
        Self {
            reason,
            message: e.to_string(),
            per_proxy,
        }
    }

    pub fn from_ca(e: &CaError) -> Self {
        let per_proxy = matches!(
            e,
            CaError::MissingService
                | CaError::InvalidSan { .. }
                | CaError::NotAnSvid(_)
                | CaError::InvalidCommonName { .. }
        );
        Self {
            reason: if per_proxy {
                FailReason::Refused
            } else {
                FailReason::Other
            },
            message: e.to_string(),
            per_proxy,
        }
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub mesh: String,
    /// All tags of the proxy (`Dataplane::tags`), shared with the engine's state.
    pub tags: Arc<BTreeMap<String, Vec<String>>>,
    pub ttl: Duration,
    /// `dpCert.uriSans` of the backend.
    pub uri_sans: common::model::UriSans,
}

/// An issued certificate. `Debug` never shows the key.
#[derive(Clone)]
pub struct Issued {
    /// The leaf, then its intermediates (PEM).
    pub chain_pem: String,
    pub key_pem: String,
    /// The trust anchors the leaf chains to (PEM, one certificate each).
    pub anchors: Vec<String>,
    /// Lower-case hex bytes separated by `:`.
    pub serial: String,
    /// Validity, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// How far the backend's clock is from the zone's, when its answer said (Vault's `Date`).
    pub backend_clock: Option<common::clock::Skew>,
}

impl Issued {
    /// Completes an issued chain with what its leaf says.
    pub fn new(
        chain_pem: String,
        key_pem: String,
        anchors: Vec<String>,
    ) -> Result<Self, SourceError> {
        let (serial, not_before, not_after) =
            leaf_serial_and_validity(&chain_pem).map_err(|e| {
                SourceError::other(format!("the issued certificate cannot be read: {e}"))
            })?;
        Ok(Self {
            chain_pem,
            key_pem,
            anchors,
            serial,
            not_before,
            not_after,
            backend_clock: None,
        })
    }
}

/// The serial (as `x509::summarize_der` writes it) and validity (unix seconds) of the first
/// certificate of a PEM chain. Only what the engine needs of every issued certificate: the
/// extensions are not decoded (`x509::summarize_pem` decodes and formats everything).
fn leaf_serial_and_validity(chain_pem: &str) -> Result<(String, i64, i64), String> {
    use x509_parser::nom::Parser;
    // The leaf comes first; only if it does not, every block is read to find it.
    let leaf = match pem::parse(chain_pem) {
        Ok(p) if p.tag() == "CERTIFICATE" => p,
        _ => pem::parse_many(chain_pem)
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|p| p.tag() == "CERTIFICATE")
            .ok_or_else(|| "no PEM certificate".to_string())?,
    };
    let (_, cert) = x509_parser::certificate::X509CertificateParser::new()
        .with_deep_parse_extensions(false)
        .parse(leaf.contents())
        .map_err(|e| format!("not a certificate: {e}"))?;
    let validity = cert.validity();
    Ok((
        cert.raw_serial_as_string(),
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("chain_pem", &self.chain_pem)
            .field("key_pem", &"<redacted>")
            .field("anchors", &self.anchors.len())
            .field("serial", &self.serial)
            .finish()
    }
}

/// Issues proxy certificates for one backend of one mesh.
pub trait CertSource: Send + Sync {
    fn issue<'a>(&'a self, spec: &'a LeafSpec) -> BoxFut<'a, Result<Issued, SourceError>>;
    /// A certificate for the key of a checked CSR (`dpCert.keyGeneration: proxy`), with the names
    /// of `spec` (never the CSR's); the result has no key.
    fn sign<'a>(
        &'a self,
        spec: &'a LeafSpec,
        csr: &'a common::csr::CheckedCsr,
    ) -> BoxFut<'a, Result<Issued, SourceError>>;
    /// The trust anchors of the backend as it stands (PEM, one certificate each).
    fn anchors(&self) -> BoxFut<'_, Result<Vec<String>, SourceError>>;
    /// Whether the backend's Vault login works, once known (`None`: no login, or not yet).
    fn login_health(&self) -> Option<Result<(), String>> {
        None
    }
}

/// Builds sources (the real ones, or fakes in unit tests).
pub trait SourceFactory: Send + Sync {
    /// A hash of everything the backend's source is built from beyond its spec: the resolved data
    /// sources (tokens, CA files, client certificates) or the CA Secrets. Never fails: a data
    /// source that cannot be resolved hashes as its error, so that fixing it changes the hash.
    fn material(&self, mesh: &str, backend: &Backend, store: &Store) -> String;
    fn build<'a>(
        &'a self,
        mesh: &'a str,
        backend: &'a Backend,
        store: &'a Store,
    ) -> BoxFut<'a, Result<Arc<dyn CertSource>, SourceError>>;
}

/// The real sources.
pub struct RealFactory {
    pub vault_latency: Histogram,
    /// Logins to Vault, per mesh, backend, method and result.
    pub vault_logins: Family<LoginLabels, Counter>,
    /// Notified when a source's login health changes.
    pub login_changed: Arc<Notify>,
    /// Bounds on every request to Vault (`--vault-timeout`).
    pub timeouts: Timeouts,
}

impl SourceFactory for RealFactory {
    fn material(&self, mesh: &str, backend: &Backend, store: &Store) -> String {
        backend_material(mesh, backend, store)
    }

    fn build<'a>(
        &'a self,
        mesh: &'a str,
        backend: &'a Backend,
        store: &'a Store,
    ) -> BoxFut<'a, Result<Arc<dyn CertSource>, SourceError>> {
        Box::pin(async move {
            match backend.typed_conf() {
                Ok(BackendConf::Vault(v)) => {
                    let from_cp = v.from_cp.ok_or_else(|| SourceError {
                        reason: FailReason::Refused,
                        message: "conf.fromCp must be set".into(),
                        per_proxy: false,
                    })?;
                    let src = VaultSource::new(
                        mesh,
                        &backend.name,
                        from_cp,
                        store.clone(),
                        VaultSourceMetrics {
                            latency: self.vault_latency.clone(),
                            logins: self.vault_logins.clone(),
                            login_changed: self.login_changed.clone(),
                        },
                        self.timeouts,
                    )
                    .await?;
                    Ok(src as Arc<dyn CertSource>)
                }
                Ok(BackendConf::Builtin(_)) | Ok(BackendConf::Provided(_)) => {
                    let pair = local_ca(mesh, backend, store)?;
                    let signer = tokio::task::spawn_blocking(move || CaSigner::new(&pair))
                        .await
                        .map_err(|e| SourceError::other(format!("CA task failed: {e}")))?
                        .map_err(|e| SourceError::other(format!("the mesh CA is unusable: {e}")))?;
                    Ok(Arc::new(LocalSource::new(signer)) as Arc<dyn CertSource>)
                }
                Err(e) => Err(SourceError {
                    reason: FailReason::Refused,
                    message: format!("conf.{}: {}", e.path, e.reason),
                    per_proxy: false,
                }),
            }
        })
    }
}

/// The CA certificate and key of a builtin or provided backend.
fn local_ca(mesh: &str, backend: &Backend, store: &Store) -> Result<CaKeyPair, SourceError> {
    let (cert, key) = local_ca_bytes(mesh, backend, store)?;
    let text = |b: Vec<u8>, what: &str| {
        String::from_utf8(b).map_err(|_| SourceError::other(format!("{what} is not PEM text")))
    };
    Ok(CaKeyPair::new(
        text(cert, "the CA certificate")?,
        text(key, "the CA key")?,
    ))
}

fn local_ca_bytes(
    mesh: &str,
    backend: &Backend,
    store: &Store,
) -> Result<(Vec<u8>, Vec<u8>), SourceError> {
    match backend.typed_conf() {
        Ok(BackendConf::Builtin(_)) => {
            let (cert_name, key_name) = builtin_secret_names(mesh, &backend.name);
            let get = |name: &str| {
                store.secret_data(mesh, name).ok_or_else(|| {
                    SourceError::other(format!(
                        "the builtin CA Secret {name:?} of mesh {mesh:?} is not in this zone (not synced from global yet?)"
                    ))
                })
            };
            Ok((get(&cert_name)?, get(&key_name)?))
        }
        Ok(BackendConf::Provided(p)) => {
            let get = |ds: &Option<DataSource>, field: &str| {
                let ds = ds.as_ref().ok_or_else(|| SourceError {
                    reason: FailReason::Refused,
                    message: format!("conf.{field} must be set"),
                    per_proxy: false,
                })?;
                ds.resolve(mesh, store).map_err(|e| SourceError {
                    reason: FailReason::Refused,
                    message: format!("conf.{field}: {e}"),
                    per_proxy: false,
                })
            };
            Ok((get(&p.cert, "cert")?, get(&p.key, "key")?))
        }
        _ => Err(SourceError::other("not a builtin or provided backend")),
    }
}

fn hash_parts(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..16])
}

/// See [`SourceFactory::material`].
pub fn backend_material(mesh: &str, backend: &Backend, store: &Store) -> String {
    match backend.typed_conf() {
        Ok(BackendConf::Vault(v)) => {
            let Some(f) = v.from_cp else {
                return "no fromCp".into();
            };
            vault_material(mesh, &f, store)
        }
        Ok(BackendConf::Builtin(_)) | Ok(BackendConf::Provided(_)) => {
            match local_ca_bytes(mesh, backend, store) {
                Ok((c, k)) => hash_parts(&[&c, &k]),
                Err(e) => format!("error: {}", e.message),
            }
        }
        Err(e) => format!("error: {}", e.reason),
    }
}

/// A hash of what the client of `f` is built from: the CA certificate and every data source of
/// the auth block (token, client certificate, AppRole IDs, JWT), read now.
fn vault_material(mesh: &str, f: &FromCp, secrets: &dyn SecretLookup) -> String {
    let auth = f.auth.clone().unwrap_or_default();
    let mut sources: Vec<Option<&DataSource>> =
        vec![f.tls.as_ref().and_then(|t| t.ca_cert.as_ref())];
    sources.extend(auth.data_sources().into_iter().map(|(_, ds)| Some(ds)));
    let resolved: Vec<Vec<u8>> = sources
        .iter()
        .map(|ds| match ds {
            None => b"-".to_vec(),
            Some(ds) => match ds.resolve(mesh, secrets) {
                Ok(b) => b,
                Err(e) => format!("error: {e}").into_bytes(),
            },
        })
        .collect();
    let refs: Vec<&[u8]> = resolved.iter().map(Vec::as_slice).collect();
    hash_parts(&refs)
}

/// The first value of each tag: what the `commonName` template sees.
pub fn template_tags(tags: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|(k, v)| v.first().map(|f| (k.clone(), f.clone())))
        .collect()
}

/// The common name a certificate of this backend must carry for these tags (vault with a
/// `commonName` template only).
pub fn expected_common_name(
    backend: &Backend,
    tags: &BTreeMap<String, Vec<String>>,
) -> Option<String> {
    let Ok(BackendConf::Vault(v)) = backend.typed_conf() else {
        return None;
    };
    let template = v.from_cp?.common_name;
    if template.trim().is_empty() {
        return None;
    }
    common::template::render(template.trim(), &template_tags(tags)).ok()
}

/// PEM of one DER certificate, with `\n` line ends (what proxies write to disk).
fn to_pem(der: &[u8]) -> String {
    x509::der_to_pem(der).replace("\r\n", "\n")
}

/// Splits PEM text into one PEM per certificate; the self-signed ones are the roots.
fn split_roots(pems: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut roots = Vec::new();
    let mut others = Vec::new();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for p in pems {
        let Ok(ders) = x509::pem_to_ders(p) else {
            continue;
        };
        for d in ders {
            if seen.contains(&d) {
                continue;
            }
            if x509::der_is_self_signed(&d) {
                roots.push(to_pem(&d));
            } else {
                others.push(to_pem(&d));
            }
            seen.push(d);
        }
    }
    (roots, others)
}

// ---------------------------------------------------------------------------------------------
// Vault
// ---------------------------------------------------------------------------------------------

struct LastChain {
    issuing_ca: String,
    ca_chain: Vec<String>,
    parts: Arc<ChainParts>,
}

/// The roots and intermediates of one CA chain as Vault returns it, worked out once.
struct ChainParts {
    anchors: Vec<String>,
    intermediates: String,
}

/// A client from `from_cp` and the credentials as they read now, logged in if it logs in, its
/// login attempts counted in `logins` and its lease changes told on `epoch`.
async fn connect_with(
    mesh: &str,
    backend: &str,
    from_cp: &FromCp,
    store: &Store,
    timeouts: Timeouts,
    epoch: &watch::Sender<u64>,
    logins: &Family<LoginLabels, Counter>,
) -> Result<VaultIssuer, VaultError> {
    let issuer =
        VaultIssuer::from_conf(mesh, from_cp, store, timeouts)?.with_lease_changes(epoch.clone());
    let (logins, m, b) = (logins.clone(), mesh.to_string(), backend.to_string());
    issuer.set_login_observer(Arc::new(move |method, ok| {
        logins
            .get_or_create(&LoginLabels {
                mesh: m.clone(),
                backend: b.clone(),
                method: method.as_str().to_string(),
                result: if ok { "ok" } else { "refused" }.to_string(),
            })
            .inc();
    }));
    issuer.authenticate().await?;
    if issuer.auth_mode() == AuthMode::Token {
        // A given token: its TTL says whether (and when) to renew it.
        if let Err(e) = issuer.read_lease().await {
            tracing::debug!(mesh = %mesh, backend = %backend, error = %e, "cannot look up the Vault token; it is not renewed");
        }
    }
    Ok(issuer)
}

/// What a [`VaultSource`] reports to.
pub struct VaultSourceMetrics {
    pub latency: Histogram,
    pub logins: Family<LoginLabels, Counter>,
    pub login_changed: Arc<Notify>,
}

pub struct VaultSource {
    mesh: String,
    backend: String,
    from_cp: FromCp,
    store: Store,
    latency: Histogram,
    logins: Family<LoginLabels, Counter>,
    /// Whether the login works (None: not known yet, or no login).
    health: Mutex<Option<Result<(), String>>>,
    login_changed: Arc<Notify>,
    /// Bumped by every client of this source when its lease changes, and by a rebuild.
    epoch: watch::Sender<u64>,
    issuer: RwLock<Arc<VaultIssuer>>,
    material: Mutex<String>,
    /// Serializes rebuilding the client.
    rebuild: tokio::sync::Mutex<()>,
    /// Why the last rebuild failed (Vault away), so that it is logged once.
    rebuild_error: Mutex<Option<String>>,
    chains: Mutex<HashMap<String, Arc<ChainParts>>>,
    /// The chain of the last issuance as Vault returned it, and its parts: nearly every
    /// issuance returns the same CA chain, recognised here by comparison, without hashing it.
    last_chain: Mutex<Option<LastChain>>,
    /// The task keeping the token alive (`login::keep`).
    keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    timeouts: Timeouts,
    /// Vault asked (429 `Retry-After`) not to be called before this instant: until then the
    /// error is repeated without a request.
    hold: Mutex<Option<(tokio::time::Instant, VaultError)>>,
}

impl Drop for VaultSource {
    fn drop(&mut self) {
        if let Some(h) = self.keeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
    }
}

impl VaultSource {
    pub async fn new(
        mesh: &str,
        backend: &str,
        from_cp: FromCp,
        store: Store,
        metrics: VaultSourceMetrics,
        timeouts: Timeouts,
    ) -> Result<Arc<Self>, SourceError> {
        let material = vault_material(mesh, &from_cp, &store);
        let epoch = watch::Sender::new(0);
        let issuer = connect_with(
            mesh,
            backend,
            &from_cp,
            &store,
            timeouts,
            &epoch,
            &metrics.logins,
        )
        .await
        .map_err(|e| SourceError::from_vault(&e))?;
        let logs_in = issuer.can_login();
        let src = Arc::new(Self {
            mesh: mesh.to_string(),
            backend: backend.to_string(),
            from_cp,
            store,
            latency: metrics.latency,
            logins: metrics.logins,
            health: Mutex::new(None),
            login_changed: metrics.login_changed,
            epoch,
            issuer: RwLock::new(Arc::new(issuer)),
            material: Mutex::new(material),
            rebuild: tokio::sync::Mutex::new(()),
            rebuild_error: Mutex::new(None),
            chains: Mutex::new(HashMap::new()),
            last_chain: Mutex::new(None),
            keeper: Mutex::new(None),
            timeouts,
            hold: Mutex::new(None),
        });
        if logs_in {
            src.set_health(Ok(()));
        }
        let handle = tokio::spawn(login::keep(Arc::downgrade(&src)));
        *src.keeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(src)
    }

    /// [`connect_with`] this source's conf; a login's success is its health.
    async fn connect(&self) -> Result<Arc<VaultIssuer>, VaultError> {
        let issuer = connect_with(
            &self.mesh,
            &self.backend,
            &self.from_cp,
            &self.store,
            self.timeouts,
            &self.epoch,
            &self.logins,
        )
        .await?;
        if issuer.can_login() {
            self.set_health(Ok(()));
        }
        Ok(Arc::new(issuer))
    }

    fn issuer(&self) -> Arc<VaultIssuer> {
        self.issuer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the login's health; a change is logged once and told to the Vault check.
    fn set_health(&self, health: Result<(), String>) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if h.as_ref() == Some(&health) {
            return;
        }
        let before = h.replace(health.clone());
        drop(h);
        let (mesh, backend) = (&self.mesh, &self.backend);
        match (&before, &health) {
            (_, Err(e)) => {
                tracing::warn!(mesh = %mesh, backend = %backend, error = %e, "Vault login failed; retried with backoff")
            }
            (Some(Err(_)), Ok(())) => {
                tracing::info!(mesh = %mesh, backend = %backend, "Vault login works again")
            }
            (_, Ok(())) => {
                tracing::info!(mesh = %mesh, backend = %backend, method = %self.issuer().auth_mode().as_str(), "logged in to Vault")
            }
        }
        self.login_changed.notify_one();
    }

    /// Reads the data sources again; if they changed (a rotated token, a new secret ID or JWT),
    /// rebuilds the client (logging in with them). Returns true when a new client is in place.
    async fn refresh(&self) -> bool {
        self.rebuild_if_changed().await == Some(Ok(()))
    }

    /// [`Self::refresh`]: `None` when nothing changed, else how the rebuild went.
    async fn rebuild_if_changed(&self) -> Option<Result<(), String>> {
        let _guard = self.rebuild.lock().await;
        let material = vault_material(&self.mesh, &self.from_cp, &self.store);
        if *self.material.lock().unwrap_or_else(|e| e.into_inner()) == material {
            return None;
        }
        match self.connect().await {
            Ok(issuer) => {
                *self.issuer.write().unwrap_or_else(|e| e.into_inner()) = issuer;
                *self.material.lock().unwrap_or_else(|e| e.into_inner()) = material;
                *self.rebuild_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.epoch.send_modify(|n| *n += 1);
                tracing::info!(mesh = %self.mesh, backend = %self.backend, "Vault credentials changed: client rebuilt");
                Some(Ok(()))
            }
            Err(e) => {
                let message = e.to_string();
                if matches!(e, VaultError::LoginRefused { .. } | VaultError::Conf { .. }) {
                    // Refused credentials are not tried again until they change (a new client
                    // has no backoff of its own); Vault being away is no verdict on them.
                    *self.material.lock().unwrap_or_else(|e| e.into_inner()) = material;
                    self.set_health(Err(message.clone()));
                } else {
                    // Tried again on the next poll or refusal: said once per reason.
                    let mut last = self.rebuild_error.lock().unwrap_or_else(|e| e.into_inner());
                    if last.as_deref() != Some(message.as_str()) {
                        tracing::warn!(mesh = %self.mesh, backend = %self.backend, error = %e, "cannot rebuild the Vault client");
                        *last = Some(message.clone());
                    }
                }
                Some(Err(message))
            }
        }
    }

    fn chain_parts(&self, issuing_ca: &str, ca_chain: &[String]) -> Arc<ChainParts> {
        if let Some(last) = self
            .last_chain
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|l| l.issuing_ca == issuing_ca && l.ca_chain == ca_chain)
        {
            return last.parts.clone();
        }
        let parts = self.chain_parts_hashed(issuing_ca, ca_chain);
        *self.last_chain.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastChain {
            issuing_ca: issuing_ca.to_string(),
            ca_chain: ca_chain.to_vec(),
            parts: parts.clone(),
        });
        parts
    }

    fn chain_parts_hashed(&self, issuing_ca: &str, ca_chain: &[String]) -> Arc<ChainParts> {
        let mut h = Sha256::new();
        h.update(issuing_ca.as_bytes());
        for c in ca_chain {
            h.update([0]);
            h.update(c.as_bytes());
        }
        let key = hex::encode(h.finalize());
        if let Some(p) = self
            .chains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return p.clone();
        }
        let mut pems: Vec<&str> = ca_chain.iter().map(String::as_str).collect();
        pems.push(issuing_ca);
        let (mut roots, inters) = split_roots(&pems);
        if roots.is_empty() {
            // An intermediate set without its root: trust the top of the chain.
            if let Some(top) = inters.last() {
                roots.push(top.clone());
            }
        }
        let mut intermediates = String::new();
        for i in &inters {
            intermediates.push_str(i.trim_end());
            intermediates.push('\n');
        }
        let parts = Arc::new(ChainParts {
            anchors: roots,
            intermediates,
        });
        let mut chains = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        if chains.len() > 16 {
            chains.clear();
        }
        chains.insert(key, parts.clone());
        parts
    }

    /// The error Vault's last `Retry-After` still stands for.
    fn held(&self) -> Option<SourceError> {
        let mut hold = self.hold.lock().unwrap_or_else(|e| e.into_inner());
        match &*hold {
            Some((until, e)) if tokio::time::Instant::now() < *until => {
                Some(SourceError::from_vault(e))
            }
            Some(_) => {
                *hold = None;
                None
            }
            None => None,
        }
    }

    /// Records a 429's `Retry-After`.
    fn note(&self, e: &VaultError) {
        if let Some(after) = e.retry_after() {
            tracing::debug!(mesh = %self.mesh, retry_after_s = after.as_secs(), "Vault rate limits: holding requests");
            *self.hold.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((tokio::time::Instant::now() + after, e.clone()));
        }
    }

    async fn issue_inner(
        &self,
        spec: &LeafSpec,
        csr: Option<&common::csr::CheckedCsr>,
    ) -> Result<Issued, SourceError> {
        if let Some(e) = self.held() {
            return Err(e);
        }
        let mut retried = false;
        loop {
            let issuer = self.issuer();
            let common_name = issuer
                .render_common_name(&template_tags(&spec.tags))
                .map_err(|e| SourceError::from_vault(&e))?;
            let req = IssueRequest {
                uri_sans: uri_sans_for(spec.uri_sans, &spec.mesh, &spec.tags).map_err(|e| {
                    SourceError {
                        reason: FailReason::Refused,
                        message: e,
                        per_proxy: true,
                    }
                })?,
                common_name,
                ttl: spec.ttl,
            };
            let started = tokio::time::Instant::now();
            let res = match csr {
                Some(csr) => issuer.sign(&req, &csr.pem).await,
                None => issuer.issue(&req).await,
            };
            self.latency.observe(started.elapsed().as_secs_f64());
            match res {
                Ok(cert) => {
                    if csr.is_some() {
                        signed_as_asked(&cert.certificate_pem, &req, &issuer)?;
                    }
                    let parts = self.chain_parts(&cert.issuing_ca_pem, &cert.ca_chain_pem);
                    let mut chain_pem = cert.certificate_pem.trim_end().to_string();
                    chain_pem.push('\n');
                    chain_pem.push_str(&parts.intermediates);
                    return Issued::new(chain_pem, cert.private_key_pem, parts.anchors.clone())
                        .map(|mut issued| {
                            issued.backend_clock = cert.vault_clock;
                            issued
                        });
                }
                Err(
                    e @ (VaultError::PermissionDenied { .. }
                    | VaultError::LoginRefused { .. }
                    | VaultError::Tls { .. }),
                ) => {
                    if !retried && self.refresh().await {
                        retried = true;
                        continue;
                    }
                    return Err(SourceError::from_vault(&e));
                }
                Err(e) => {
                    self.note(&e);
                    return Err(SourceError::from_vault(&e));
                }
            }
        }
    }
}

impl Keeping for VaultSource {
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    fn lease(&self) -> Option<Lease> {
        self.issuer().lease()
    }

    fn can_login(&self) -> bool {
        self.issuer().can_login()
    }

    fn login_held_until(&self) -> Option<tokio::time::Instant> {
        self.issuer().login_held_until()
    }

    fn polls_files(&self) -> bool {
        self.from_cp
            .auth
            .as_ref()
            .is_some_and(|a| a.data_sources().iter().any(|(_, ds)| ds.file.is_some()))
    }

    fn credentials_changed(&self) -> bool {
        vault_material(&self.mesh, &self.from_cp, &self.store)
            != *self.material.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn login(&self) -> BoxFut<'_, Result<(), String>> {
        Box::pin(async move {
            let issuer = self.issuer();
            match issuer.login().await {
                Ok(_) => {
                    tracing::debug!(mesh = %self.mesh, backend = %self.backend, "logged in to Vault again");
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn renew(&self) -> BoxFut<'_, Result<(), RenewFailure>> {
        Box::pin(async move {
            let issuer = self.issuer();
            match issuer.renew().await {
                Ok(lease) => {
                    tracing::debug!(mesh = %self.mesh, backend = %self.backend, ttl_s = lease.map(|l| l.ttl.as_secs()), "renewed the Vault token");
                    Ok(())
                }
                Err(VaultError::PermissionDenied { .. }) => {
                    issuer.forget_token();
                    Err(RenewFailure::Refused)
                }
                Err(e) => Err(RenewFailure::Failed(e.to_string())),
            }
        })
    }

    fn rebuild(&self) -> BoxFut<'_, Result<(), String>> {
        Box::pin(async move { self.rebuild_if_changed().await.unwrap_or(Ok(())) })
    }

    fn report(&self, health: &Result<(), String>) {
        if self.issuer().can_login() {
            self.set_health(health.clone());
        }
    }
}

impl CertSource for VaultSource {
    fn login_health(&self) -> Option<Result<(), String>> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn issue<'a>(&'a self, spec: &'a LeafSpec) -> BoxFut<'a, Result<Issued, SourceError>> {
        Box::pin(self.issue_inner(spec, None))
    }

    fn sign<'a>(
        &'a self,
        spec: &'a LeafSpec,
        csr: &'a common::csr::CheckedCsr,
    ) -> BoxFut<'a, Result<Issued, SourceError>> {
        Box::pin(self.issue_inner(spec, Some(csr)))
    }

    fn anchors(&self) -> BoxFut<'_, Result<Vec<String>, SourceError>> {
        Box::pin(async move {
            if let Some(e) = self.held() {
                return Err(e);
            }
            let pem = self.issuer().ca_chain().await.map_err(|e| {
                self.note(&e);
                SourceError::from_vault(&e)
            })?;
            let parts = self.chain_parts(&pem, &[]);
            if parts.anchors.is_empty() {
                return Err(SourceError::other(format!(
                    "Vault returned no CA certificate for {}",
                    self.from_cp.pki
                )));
            }
            Ok(parts.anchors.clone())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// builtin and provided
// ---------------------------------------------------------------------------------------------

pub struct LocalSource {
    signer: Arc<CaSigner>,
    anchors: Vec<String>,
}

impl LocalSource {
    pub fn new(signer: CaSigner) -> Self {
        let anchors = x509::pem_to_ders(signer.ca_pem())
            .map(|ders| ders.iter().map(|d| to_pem(d)).collect())
            .unwrap_or_default();
        Self {
            signer: Arc::new(signer),
            anchors,
        }
    }
}

impl CertSource for LocalSource {
    fn issue<'a>(&'a self, spec: &'a LeafSpec) -> BoxFut<'a, Result<Issued, SourceError>> {
        self.local(spec, None)
    }

    fn sign<'a>(
        &'a self,
        spec: &'a LeafSpec,
        csr: &'a common::csr::CheckedCsr,
    ) -> BoxFut<'a, Result<Issued, SourceError>> {
        self.local(spec, Some(csr))
    }

    fn anchors(&self) -> BoxFut<'_, Result<Vec<String>, SourceError>> {
        let a = self.anchors.clone();
        Box::pin(async move { Ok(a) })
    }
}

impl LocalSource {
    /// Issues (a new key) or signs (a CSR's key) locally, off the async threads.
    fn local<'a>(
        &'a self,
        spec: &'a LeafSpec,
        csr: Option<&'a common::csr::CheckedCsr>,
    ) -> BoxFut<'a, Result<Issued, SourceError>> {
        let signer = self.signer.clone();
        let csr = csr.cloned();
        let req = LeafRequest {
            mesh: spec.mesh.clone(),
            tags: (*spec.tags).clone(),
            common_name: None,
            lifetime: spec.ttl,
            uri_sans: spec.uri_sans,
        };
        let anchors = self.anchors.clone();
        Box::pin(async move {
            let leaf = tokio::task::spawn_blocking(move || match &csr {
                Some(csr) => signer.sign_csr(&req, csr),
                None => signer.issue(&req),
            })
            .await
            .map_err(|e| SourceError::other(format!("signing task failed: {e}")))?
            .map_err(|e| SourceError::from_ca(&e))?;
            Issued::new(leaf.cert_pem.clone(), leaf.key_pem.clone(), anchors)
        })
    }
}

/// Vault signs a CSR with the names asked for unless its role copies the CSR's (`use_csr_sans`,
/// `use_csr_common_name`); the CSRs taken here ask for none, so a certificate whose URI SANs or
/// common name differ from the request's is never handed out.
fn signed_as_asked(
    cert_pem: &str,
    req: &IssueRequest,
    issuer: &VaultIssuer,
) -> Result<(), SourceError> {
    let s = x509::summarize_pem(cert_pem)
        .map_err(|e| SourceError::other(format!("the signed certificate cannot be read: {e}")))?;
    let mut got = s.uri_sans.clone();
    got.sort();
    let mut want = req.uri_sans.clone();
    want.sort();
    let cn_ok = req
        .common_name
        .as_ref()
        .is_none_or(|cn| s.common_name.as_deref() == Some(cn.as_str()));
    if got == want && cn_ok {
        return Ok(());
    }
    Err(SourceError {
        reason: FailReason::Refused,
        message: format!(
            "{} signed the CSR with other names than asked (URI SANs {got:?}, common name {:?}; asked {want:?}, {:?}): set use_csr_sans=false and use_csr_common_name=false on role {} of {}",
            issuer.sign_path(),
            s.common_name,
            req.common_name,
            issuer.role(),
            issuer.pki()
        ),
        per_proxy: true,
    })
}
