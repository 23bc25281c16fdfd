//! The configuration of a zone control plane (`zone run`'s flags, as the library takes them):
//! where global is (one address or several replicas, dialed in order) and how to trust it, the zone token, the data directory, the reconnection
//! backoff, the proxy identity service's certificate, and the tunables of certificate issuance
//! and of requests to Vault.

use std::path::PathBuf;
use std::time::Duration;

/// Configuration of a zone control plane.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// The zone's name; must be the one its token was issued for.
    pub name: String,
    /// `grpcs://HOST:PORT` of global's sync server, one per replica (at least one): dialed in this
    /// order, moving to the next when one fails (`failover`). They share the CA file and the token.
    pub global_addresses: Vec<String>,
    /// PEM CA bundle that signs global's sync certificate (`<global data-dir>/kds-ca.pem`).
    pub global_ca_file: Option<PathBuf>,
    /// Skip verification of global's certificate (explicit opt-in only).
    pub insecure_skip_verify: bool,
    /// File holding the zone token (re-read on every connection attempt).
    pub token_file: PathBuf,
    pub data_dir: PathBuf,
    /// Reconnection backoff: the first retry comes within `reconnect_initial`, the delay doubles
    /// up to `reconnect_max`, each with jitter.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// Proxy certificate issuance (`--max-concurrent-issuance` and the engine's tunables).
    pub issuance: IssuanceConfig,
    /// Bounds on every request to Vault (`--vault-timeout`): issuance, CA reads, checks.
    pub vault_timeouts: common::vault::Timeouts,
    /// Names the API answers to besides the loopback ones (`--api-host`).
    pub api_hosts: Vec<String>,
    /// The only directories `file:` data sources are read from (`--data-source-dir`); empty:
    /// none. Applied by `zone::run` (a zone embedded in a test reads any).
    pub data_source_dirs: Vec<PathBuf>,
    /// The certificate of the proxy identity service (`--dp-tls-cert/--dp-tls-key`, or generated).
    pub dp_tls: crate::dp::tls::DpTls,
    /// The key the Secrets the zone holds are sealed with at rest (`--secrets-key-file`); `None`:
    /// `<data-dir>/secrets.key`, generated on the first start.
    pub secrets_key_file: Option<PathBuf>,
    /// Keys that open what they sealed and never seal (`--secrets-extra-key-file`): a rotation.
    pub secrets_extra_key_files: Vec<PathBuf>,
}

impl ZoneConfig {
    /// A zone dialing global at one address; [`ZoneConfig::with_global_addresses`] gives several.
    pub fn new(name: &str, global_address: &str, token_file: PathBuf, data_dir: PathBuf) -> Self {
        Self {
            name: name.to_string(),
            global_addresses: vec![global_address.to_string()],
            global_ca_file: None,
            insecure_skip_verify: false,
            token_file,
            data_dir,
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            issuance: IssuanceConfig::default(),
            vault_timeouts: common::vault::Timeouts::default(),
            api_hosts: Vec::new(),
            data_source_dirs: Vec::new(),
            dp_tls: Default::default(),
            secrets_key_file: None,
            secrets_extra_key_files: Vec::new(),
        }
    }

    /// The same zone dialing these addresses of global, in this order.
    pub fn with_global_addresses(mut self, addresses: Vec<String>) -> Self {
        self.global_addresses = addresses;
        self
    }

    /// The first (preferred) address of global; the only one for most zones.
    pub fn global_address(&self) -> &str {
        self.global_addresses.first().map_or("", String::as_str)
    }
}

/// How issuance is paced.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuanceConfig {
    /// Issuances in flight at most (all backends together).
    pub max_concurrent: usize,
    /// First retry delay of a proxy whose issuance failed; doubles per failure (full jitter).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Consecutive backend failures that open a backend's circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker waits before letting one probe through.
    pub breaker_cooldown: Duration,
    /// Fraction of a certificate's lifetime after which it is replaced (±5% jitter).
    pub rotation_fraction: f64,
    /// How often a failing Vault check is repeated (and a healthy Vault pinged).
    pub vault_recheck: Duration,
    /// How long a CA stays in its mesh's trust bundle after the last connected proxy holding a
    /// certificate of it got a new one (or left): the time for every proxy to receive its new
    /// bundle and load it, so that no proxy still presenting the old certificate meets a peer
    /// that no longer trusts it.
    pub trust_grace: Duration,
}

impl Default for IssuanceConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 32,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            rotation_fraction: 0.8,
            vault_recheck: Duration::from_secs(60),
            trust_grace: Duration::from_secs(60),
        }
    }
}
