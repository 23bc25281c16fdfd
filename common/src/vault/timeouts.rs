//! The bounds on talking to Vault: [`Timeouts`], a plain value that each client and each backend
//! check is given (from `--vault-timeout` of `global run|validate` and `zone run`, or the
//! defaults). There is no process-wide setting.

use std::time::Duration;

/// Default bound on establishing a connection to Vault.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on one request to Vault, connection included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
}
