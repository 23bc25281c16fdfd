//! OpenBao's raw audit log ([`super::BaoServer::start_audited`]) read back: every login Vault
//! answered ([`AuditLogin`]: where, in which namespace, whether it gave a token, the token and its
//! accessor, the credentials sent) — what tests count logins with, revoke tokens by, and look
//! for in logs and API answers that must never show them.

use std::path::Path;

use super::{BaoError, io_err};

/// One answer to `auth/<mount>/login`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditLogin {
    /// `auth/approle/login`, ...
    pub path: String,
    /// The namespace's path (`team-a/`), empty for the root namespace.
    pub namespace: String,
    /// Vault gave a token.
    pub ok: bool,
    pub token: Option<String>,
    pub accessor: Option<String>,
    /// Vault's error, for a refused login.
    pub error: Option<String>,
    /// The string values the login request carried (role and secret IDs, a JWT, a role name).
    pub sent: Vec<String>,
}

impl std::fmt::Debug for AuditLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLogin")
            .field("path", &self.path)
            .field("namespace", &self.namespace)
            .field("ok", &self.ok)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Every login answered so far, in order.
pub fn logins(audit_log: &Path) -> Result<Vec<AuditLogin>, BaoError> {
    let text = std::fs::read_to_string(audit_log)
        .map_err(io_err(format!("cannot read {}", audit_log.display())))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "response")
        .filter(|v| {
            v["request"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("auth/") && p.ends_with("/login"))
        })
        .map(|v| {
            let auth = &v["response"]["auth"];
            let token = auth["client_token"].as_str().map(str::to_string);
            let sent = v["request"]["data"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            AuditLogin {
                path: v["request"]["path"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                namespace: v["request"]["namespace"]["path"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                ok: token.is_some(),
                token,
                accessor: auth["accessor"].as_str().map(str::to_string),
                error: v["response"]["data"]["error"]
                    .as_str()
                    .or_else(|| v["error"].as_str())
                    .map(str::to_string),
                sent,
            }
        })
        .collect())
}

/// The logins at `auth/<mount>/login` of namespace `namespace` (its path, `team-a/`; empty for
/// the root namespace).
pub fn logins_at(
    audit_log: &Path,
    namespace: &str,
    mount: &str,
) -> Result<Vec<AuditLogin>, BaoError> {
    let path = format!("auth/{mount}/login");
    Ok(logins(audit_log)?
        .into_iter()
        .filter(|l| l.path == path && l.namespace == namespace)
        .collect())
}
