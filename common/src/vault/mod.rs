//! The vault CA backend: a client built from a backend's `conf.fromCp` ([`VaultIssuer`], in
//! `client`), its logins and their leases (cert, AppRole, JWT: `login`), the classification of Vault's failures into [`VaultError`]s that say what to fix
//! (`error`), the TLS of the client (`tls`), what is asked and issued (`issued`), the bounds of
//! every request ([`Timeouts`], a value each caller passes), and the backend check that issues
//! and inspects a test certificate ([`check_backend`], in `check`).
//!
//! vaultrs 0.8 is used for the cert login, on a `VaultClient` assembled around our
//! own reqwest client (vaultrs' own constructor reads `VAULT_*` variables from the environment, takes
//! CA certificates only as file paths and cannot verify against a server name other than the URL's
//! host). `issue` and the CA chain are requested raw, because vaultrs' response types drop Vault's
//! `warnings` (which carry the TTL truncation notice) and `sys/health` too, because vaultrs' health
//! response type requires a field OpenBao does not send. Tokens and private keys never appear in
//! `Debug` output, logs or error messages.

mod check;
mod client;
mod error;
mod issued;
mod login;
mod timeouts;
mod tls;

pub use check::{
    CHECK_SERVICE, CheckResult, SUGGESTED_KEY_USAGE, VaultCheckReport, check_backend,
    inspect_test_certificate,
};
pub use client::{AuthMode, VaultIssuer};
pub use error::{CERT_AUTH_MOUNT, LoginMethod, VaultError};
pub use issued::{IssueRequest, IssuedCert, TokenInfo};
pub use login::{LOGIN_BACKOFF_INITIAL, LOGIN_BACKOFF_MAX, Lease, LoginObserver};
pub use timeouts::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, Timeouts};
