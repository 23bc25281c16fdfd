//! What agents say about their files (`Session`'s `AgentStatus`): whether the last bundle was
//! written and, when not, why (the disk, or a bundle the agent refused), what the files hold, and
//! the agent's clock. The engine keeps the last report of each connected proxy ([`AgentState`]),
//! logs a change of problem once, and shows it: the dataplane's `lastError` and its `state` ("ok",
//! "holding an expired certificate on disk", ...), at the zone and, through the status report, at
//! global. A report is for one connection: a stale one (of a replaced connection) is dropped.

use std::sync::Weak;

use common::clock::Skew;
use proto::dpid::{AgentProblem, AgentStatus};

use super::table::{Health, Proxy};
use super::{DpKey, IdentityManager};

/// The last report of a proxy's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AgentState {
    pub problem: AgentProblem,
    pub error: String,
    /// The leaf on disk: serial (empty: none usable) and expiry.
    pub disk_serial: String,
    pub disk_not_after: i64,
    /// The agent's clock against the zone's (positive: the agent is ahead).
    pub skew: Skew,
}

impl AgentState {
    fn of(status: &AgentStatus, received_ms: i64) -> Self {
        let problem = AgentProblem::try_from(status.problem).unwrap_or(AgentProblem::Invalid);
        Self {
            problem,
            error: common::http::printable(&status.error),
            disk_serial: common::http::printable(&status.disk_serial),
            disk_not_after: status.disk_not_after_unix,
            // An agent that did not say its time (0) is not judged.
            skew: if status.agent_time_unix_ms > 0 {
                Skew::measure(status.agent_time_unix_ms, received_ms, received_ms, 0)
            } else {
                Skew { ms: 0, error_ms: 0 }
            },
        }
    }

    /// Whether the agent could not write its files.
    fn write_failed(&self) -> bool {
        matches!(
            self.problem,
            AgentProblem::DiskFull
                | AgentProblem::ReadOnly
                | AgentProblem::Permission
                | AgentProblem::Write
        )
    }

    /// The agent's failure, in words, for `lastError`.
    fn error_line(&self) -> Option<String> {
        if self.problem == AgentProblem::None {
            return None;
        }
        let what = if self.write_failed() {
            "the agent could not write its files"
        } else {
            "the agent refused its bundle"
        };
        let mut line = format!("{what} ({}): {}", kind(self.problem), self.error);
        if self.skew.is_notable() {
            // Said from the proxy's side: its clock against the zone's.
            let from_proxy = Skew {
                ms: -self.skew.ms,
                error_ms: self.skew.error_ms,
            };
            line.push_str(&format!(
                "; {}",
                from_proxy
                    .describe("the zone")
                    .replace("this host's", "the proxy's")
            ));
        }
        Some(line)
    }
}

/// The short name of a problem (logs, `lastError`).
pub(super) fn kind(p: AgentProblem) -> &'static str {
    match p {
        AgentProblem::None => "none",
        AgentProblem::DiskFull => "disk full",
        AgentProblem::ReadOnly => "read-only file system",
        AgentProblem::Permission => "permission denied",
        AgentProblem::Write => "write failed",
        AgentProblem::Expired => "expired",
        AgentProblem::NotYetValid => "not yet valid",
        AgentProblem::Chain => "chain",
        AgentProblem::Key => "key mismatch",
        AgentProblem::Invalid => "invalid",
    }
}

impl Proxy {
    /// The failure to show: the zone's issuance first, else the agent's.
    pub(super) fn shown_error(&self) -> Option<String> {
        self.last_error
            .clone()
            .or_else(|| self.agent.as_ref().and_then(AgentState::error_line))
    }

    /// The proxy's state in words, by the zone's clock `now` (unix seconds).
    pub(super) fn state(&self, now: i64) -> &'static str {
        if self.conn.is_none() {
            return "disconnected";
        }
        if let Some(a) = &self.agent {
            if !a.disk_serial.is_empty() && a.disk_not_after <= now {
                return "holding an expired certificate on disk";
            }
            if a.problem != AgentProblem::None {
                if a.disk_serial.is_empty() {
                    return "holding no certificate on disk";
                }
                return if a.write_failed() {
                    "holding an older certificate on disk: cannot write its files"
                } else {
                    "holding an older certificate on disk: refused its bundle"
                };
            }
        }
        match (&self.cert, self.health) {
            (Some(c), _) if c.not_after <= now => "certificate expired",
            (None, Health::Healthy) => "waiting for a certificate",
            (None, Health::Failing { .. }) => "issuance failing",
            (Some(_), Health::Failing { .. }) => "ok, but the next issuance is failing",
            (Some(_), Health::Healthy) => "ok",
        }
    }
}

/// Hands an agent's reports to the engine, for one connection.
pub struct AgentReporter {
    pub(super) manager: Weak<IdentityManager>,
    pub(super) key: DpKey,
    pub(super) conn: u64,
}

impl AgentReporter {
    /// One report; false when the engine or the connection is gone (stop reading).
    pub fn report(&self, status: AgentStatus) -> bool {
        match self.manager.upgrade() {
            Some(m) => m.agent_status(&self.key, self.conn, &status),
            None => false,
        }
    }

    /// The answer to CSR request `nonce` (`dpCert.keyGeneration: proxy`); false when the engine
    /// or the connection is gone.
    pub fn csr(&self, nonce: u64, der: &[u8]) -> bool {
        match self.manager.upgrade() {
            Some(m) => m.agent_csr(&self.key, self.conn, nonce, der),
            None => false,
        }
    }
}

impl IdentityManager {
    /// The agent of `key`'s connection `conn` reports; false when that connection is gone.
    pub(super) fn agent_status(&self, key: &DpKey, conn: u64, status: &AgentStatus) -> bool {
        let state = AgentState::of(status, self.clock.now_ms());
        let mut st = self.lock();
        let Some(p) = st.proxies.get_mut(key) else {
            return false;
        };
        if p.conn.as_ref().map(|c| c.id) != Some(conn) {
            return false;
        }
        let before = p.agent.replace(state.clone());
        drop(st);
        let (was, was_skewed) = before.as_ref().map_or((AgentProblem::None, false), |b| {
            (b.problem, b.skew.is_notable())
        });
        if was != state.problem {
            if state.problem == AgentProblem::None {
                tracing::info!(mesh = %key.0, dataplane = %key.1, serial = %state.disk_serial, "the agent wrote its files again");
            } else {
                tracing::warn!(mesh = %key.0, dataplane = %key.1, problem = kind(state.problem), error = %state.error, "the agent reports a failure");
            }
        }
        if was_skewed != state.skew.is_notable() && state.skew.is_notable() {
            tracing::warn!(mesh = %key.0, dataplane = %key.1, skew_ms = state.skew.ms, "clock skew: {}", state.skew.describe("the proxy"));
        }
        if before.as_ref() != Some(&state) {
            self.dirty.notify_one();
        }
        true
    }
}
