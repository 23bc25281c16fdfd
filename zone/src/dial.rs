//! Dialing a gRPC peer over TLS from a zone: global's sync server (`zone run --global-address`)
//! and a zone's identity service (`zone proxy --zone-address`). Both take a `grpcs://HOST:PORT`
//! address checked once at start, trust a CA file or (explicitly) nothing, and connect with
//! HTTP/2 keepalive so a dead peer is noticed within seconds. [`Redial`] is the retry side of both
//! connections: exponential backoff with jitter, reset after a connection that lasted, and logs
//! that say each new failure once. The start and end of a session are shared too: [`open`] reads
//! the token file and connects (giving up when the shutdown fires), [`authorize`] sets the bearer
//! header, and [`End`] says how a session ended. A leaf: it knows neither the control plane nor
//! the agent, which both use it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::backoff::{Backoff, Jitter};
use common::shutdown::Shutdown;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How the peer's certificate is verified.
#[derive(Debug, Clone)]
pub enum Trust {
    CaFile(PathBuf),
    InsecureSkipVerify,
}

/// The flags a target comes from, for messages that name them.
pub struct Flags {
    /// e.g. `--global-address`.
    pub address: &'static str,
    /// e.g. `--global-ca-file`.
    pub ca_file: &'static str,
    /// Who the peer is, e.g. `global` or `the zone`.
    pub peer: &'static str,
    /// Why TLS is required, for the message refusing a plain address.
    pub why_tls: &'static str,
    /// Where the port comes from, e.g. `global's --kds-addr, 5685 by default`.
    pub port_hint: &'static str,
    /// Where the CA file comes from, e.g. `global writes <data-dir>/kds-ca.pem`.
    pub ca_hint: &'static str,
}

/// Where and how to reach a peer, checked once at start.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address as given (trimmed), e.g. `grpcs://HOST:PORT`: what status and logs show.
    pub address: String,
    /// `https://HOST:PORT` (gRPC over TLS).
    pub uri: String,
    /// The name the certificate must carry (host name or IP).
    pub server_name: String,
    pub trust: Trust,
    ca_flag: &'static str,
    peer: &'static str,
}

impl Target {
    pub fn parse(
        flags: &Flags,
        address: &str,
        ca_file: Option<&PathBuf>,
        insecure_skip_verify: bool,
    ) -> Result<Self, String> {
        let (flag, addr) = (flags.address, address.trim());
        let rest = addr
            .strip_prefix("grpcs://")
            .or_else(|| addr.strip_prefix("https://"))
            .ok_or_else(|| {
                format!(
                    "{flag} {addr:?} must be grpcs://HOST:PORT: {}",
                    flags.why_tls
                )
            })?;
        let uri = format!("https://{}", rest.trim_end_matches('/'));
        let parsed: tonic::transport::Uri = uri
            .parse()
            .map_err(|e| format!("{flag} {addr:?} is not a valid address: {e}"))?;
        let host = parsed
            .host()
            .ok_or_else(|| format!("{flag} {addr:?} has no host"))?;
        if parsed.port_u16().is_none() {
            return Err(format!(
                "{flag} {addr:?} needs a port ({})",
                flags.port_hint
            ));
        }
        let server_name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let trust = match (ca_file, insecure_skip_verify) {
            (_, true) => Trust::InsecureSkipVerify,
            (Some(ca), false) => Trust::CaFile(ca.clone()),
            (None, false) => {
                return Err(format!(
                    "{} is required to verify {}'s certificate ({}); --insecure-skip-verify turns verification off",
                    flags.ca_file, flags.peer, flags.ca_hint
                ));
            }
        };
        Ok(Self {
            address: addr.to_string(),
            uri,
            server_name,
            trust,
            ca_flag: flags.ca_file,
            peer: flags.peer,
        })
    }

    /// Connects with HTTP/2 keepalive every `keepalive` (and the same timeout). The TCP connection
    /// and the TLS handshake are each bounded by [`CONNECT_TIMEOUT`], so a peer that accepts but
    /// never answers (a hung process still has its listening socket) is a failure, not a wait.
    pub async fn connect(&self, keepalive: Duration) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(self.uri.clone())
            .map_err(|e| error_chain(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let tls = ClientTlsConfig::new()
            .domain_name(self.server_name.clone())
            .timeout(CONNECT_TIMEOUT);
        let endpoint = match &self.trust {
            Trust::CaFile(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {} {}: {e}", self.ca_flag, path.display()))?;
                endpoint.tls_config(tls.ca_certificate(Certificate::from_pem(pem)))
            }
            Trust::InsecureSkipVerify => {
                endpoint.tls_config_with_verifier(tls, common::tls::SkipVerify::new())
            }
        }
        .map_err(|e| format!("TLS configuration: {}", error_chain(&e)))?;
        endpoint.connect().await.map_err(|e| {
            format!(
                "cannot connect to {} at {}: {}",
                self.peer,
                self.uri,
                error_chain(&e)
            )
        })
    }
}

/// Bound on the TCP connection to a peer, and on the TLS handshake after it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection up at least this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Whether a connection that was up for `lasted` counts as one that lasted (it resets the
/// backoff; for a zone with several global addresses, its loss starts a new round).
pub fn lasted(lasted: Duration) -> bool {
    lasted >= STABLE_AFTER
}

/// The retry side of a long-lived connection to a peer (global for `zone run`, the zone for
/// `zone proxy`): backoff between attempts, reset once a connection lasted [`STABLE_AFTER`] (or did
/// useful work), and a warning for each new failure, not for each retry failing the same way.
/// A peer reachable at several addresses (`zone run --global-address A,B`) has one backoff, between
/// rounds over them, and remembers the last failure logged per address ([`Redial::peers`]).
#[derive(Debug)]
pub struct Redial {
    backoff: Backoff,
    /// Per address of the peer, the kind of the last failure logged (see [`failure_kind`]).
    last_logged: Vec<Option<String>>,
}

/// The kind of a failure, for telling a new failure from the same one again: its text with every
/// number masked. A retry that fails the same way says so with other numbers (rustls puts the
/// times it compared in "certificate not valid yet", an error may carry a duration or a count);
/// what it says around them is the kind. Addresses are masked too, which is fine: each address of
/// a peer has its own slot.
pub fn failure_kind(error: &str) -> String {
    let mut kind = String::with_capacity(error.len());
    let mut in_number = false;
    for c in error.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                kind.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            kind.push(c);
        }
    }
    kind
}

impl Redial {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            backoff: Backoff::new(initial, max, Jitter::UpperHalf),
            last_logged: vec![None],
        }
    }

    /// The peer has `n` addresses (at least one), whose failures are logged apart.
    pub fn peers(mut self, n: usize) -> Self {
        self.last_logged = vec![None; n.max(1)];
        self
    }

    /// The connection is up: the next failure, at any address, is news again.
    pub fn connected(&mut self) {
        self.last_logged.fill(None);
    }

    /// A connection that was up for `lasted` ended with `error`; `useful`: it delivered something,
    /// so the next attempt starts from the first delay whatever its length. `what` is the warning.
    pub fn lost(&mut self, error: String, lasted: Duration, useful: bool, what: &str) {
        self.lost_at(0, error, lasted, useful, what);
    }

    /// [`Redial::lost`] for the peer's address `at`.
    pub fn lost_at(
        &mut self,
        at: usize,
        error: String,
        lasted: Duration,
        useful: bool,
        what: &str,
    ) {
        tracing::warn!(error = %error, "{what}");
        if self::lasted(lasted) || useful {
            self.backoff.reset();
        }
        *self.slot(at) = Some(failure_kind(&error));
    }

    /// An attempt failed before the connection was up; `what` is the warning, given only when the
    /// error differs from the last one logged.
    pub fn failed(&mut self, error: String, what: &str) {
        self.failed_at(0, error, what);
    }

    /// [`Redial::failed`] for the peer's address `at`.
    pub fn failed_at(&mut self, at: usize, error: String, what: &str) {
        let kind = failure_kind(&error);
        let slot = self.slot(at);
        if slot.as_deref() == Some(kind.as_str()) {
            tracing::debug!(error = %error, "retry failed the same way");
        } else {
            tracing::warn!(error = %error, "{what}");
            *slot = Some(kind);
        }
    }

    fn slot(&mut self, at: usize) -> &mut Option<String> {
        if at >= self.last_logged.len() {
            self.last_logged.resize(at + 1, None);
        }
        &mut self.last_logged[at]
    }

    /// Waits the next delay; `false` when `shutdown` fired meanwhile.
    pub async fn pause(&mut self, shutdown: &Shutdown) -> bool {
        let delay = self.backoff.next_delay();
        tracing::debug!(
            delay_ms = delay.as_millis() as u64,
            "next connection attempt"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.wait() => false,
        }
    }
}

/// How one session with the peer ended.
pub enum End {
    Shutdown,
    Failed {
        error: String,
        /// How long the stream was up, when it was established before it ended.
        lasted: Option<Duration>,
        /// Whether it delivered something (the next attempt then starts from the first delay).
        delivered: bool,
    },
}

/// A session that failed before its stream was up.
pub fn failed(error: impl Into<String>) -> End {
    End::Failed {
        error: error.into(),
        lasted: None,
        delivered: false,
    }
}

/// The first steps of a session: the token in `token_file`, then a connection to `target` with
/// HTTP/2 keepalive every `keepalive`, unless `shutdown` fires meanwhile.
pub async fn open(
    target: &Target,
    token_file: &Path,
    keepalive: Duration,
    shutdown: &Shutdown,
) -> Result<(String, Channel), End> {
    let token = read_token(token_file).map_err(failed)?;
    tokio::select! {
        c = target.connect(keepalive) => c.map(|c| (token, c)).map_err(failed),
        _ = shutdown.wait() => Err(End::Shutdown),
    }
}

/// The token in `file`, read on every attempt (so a rotated token is picked up).
fn read_token(file: &Path) -> Result<String, String> {
    match std::fs::read_to_string(file) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(format!("the token file {} is empty", file.display())),
        Err(e) => Err(format!(
            "cannot read the token file {}: {e}",
            file.display()
        )),
    }
}

/// Sets the request's `authorization` header to `Bearer <token>`.
pub fn authorize<T>(request: &mut tonic::Request<T>, token: &str) -> Result<(), String> {
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token file does not hold a valid token".to_string())?;
    request.metadata_mut().insert("authorization", value);
    Ok(())
}

/// An error and its sources, each once: `a: b: c`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}

/// What a gRPC status from `peer` means to `me` (`"global"`, `"zone"`), for logs and status.
pub(crate) fn describe(status: &tonic::Status, peer: &str, me: &str) -> String {
    use std::error::Error as _;
    match status.code() {
        tonic::Code::Unauthenticated => format!(
            "{peer} refused this {me} (unauthenticated): {}",
            status.message()
        ),
        tonic::Code::Unavailable if status.message().is_empty() => {
            format!("{peer} is unavailable: {}", error_chain(status))
        }
        code => {
            let chain = status
                .source()
                .map(error_chain)
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            format!("{code:?}: {}{chain}", status.message())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_compared_by_kind_not_by_their_numbers() {
        let a = "cannot connect to the zone at https://127.0.0.1:5678: invalid peer certificate: certificate not valid yet: 1796544134 < 1796544200";
        let b = "cannot connect to the zone at https://127.0.0.1:5678: invalid peer certificate: certificate not valid yet: 1796544139 < 1796544200";
        assert_eq!(failure_kind(a), failure_kind(b));
        assert_ne!(
            failure_kind(a),
            failure_kind(
                "cannot connect to the zone at https://127.0.0.1:5678: connection refused"
            )
        );
        let mut r = Redial::new(Duration::from_secs(1), Duration::from_secs(2));
        r.failed(a.into(), "first");
        assert_eq!(r.last_logged[0].as_deref(), Some(failure_kind(b).as_str()));
    }
}
