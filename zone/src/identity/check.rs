//! The zone's own check of each vault backend of each mesh it holds: from this zone's network and
//! with this zone's `file:` paths, issue a test certificate (`common::vault::check_backend`) when
//! the backend appears or its conf changes, and again every `vault_recheck` while it fails. While
//! it passes, a `sys/health` ping every `vault_recheck` notices a Vault that went away (as does
//! a failed proxy issuance, at once, and a Vault login of the backend's source that fails:
//! [`IdentityManager::sync_login_health`]). Each result (ok or the reason), when the zone last
//! issued with the backend, and how many certificates it issued, go into the status report to
//! global.

use std::sync::Arc;

use common::model::{Backend, BackendConf};
use common::vault::{Timeouts, VaultIssuer};
use tokio::time::Instant;

use super::{BackendId, IdentityManager};

pub(super) struct CheckState {
    pub backend: Backend,
    /// Hash of the backend's spec: a change starts the checks over.
    pub spec_hash: String,
    /// None until the first check completes.
    pub ok: Option<bool>,
    pub error: String,
    pub checked_at_ms: u64,
    pub last_issued_ms: u64,
    pub issued: u64,
    pub next: Option<Instant>,
    /// The next check issues a test certificate (else: a health ping).
    pub full: bool,
    pub running: bool,
}

impl CheckState {
    pub fn new(backend: Backend, spec_hash: String, now: Instant) -> Self {
        Self {
            backend,
            spec_hash,
            ok: None,
            error: String::new(),
            checked_at_ms: 0,
            last_issued_ms: 0,
            issued: 0,
            next: Some(now),
            full: true,
            running: false,
        }
    }

    /// A proxy issuance with this backend failed on the backend's side.
    pub fn failed_by_issuance(&mut self, error: &str, now_ms: i64, recheck_at: Instant) {
        self.ok = Some(false);
        self.error = error.to_string();
        self.checked_at_ms = now_ms.max(0) as u64;
        self.full = true;
        if !self.running {
            self.next = Some(self.next.map_or(recheck_at, |n| n.min(recheck_at)));
        }
    }

    pub fn report(&self, mesh: &str, backend: &str) -> proto::kds::BackendCheck {
        proto::kds::BackendCheck {
            mesh: mesh.to_string(),
            backend: backend.to_string(),
            backend_type: "vault".to_string(),
            ok: self.ok == Some(true),
            error: match self.ok {
                None => "not checked yet".to_string(),
                Some(_) => self.error.clone(),
            },
            checked_at_unix_ms: self.checked_at_ms as i64,
            issued: self.issued,
            last_issued_unix_ms: self.last_issued_ms as i64,
        }
    }
}

/// The prefix of a check's error that came from the source's login.
const LOGIN_FAILED: &str = "auth: ";

impl IdentityManager {
    /// Brings the login health of every mesh's Vault source into its backend's check: a failing
    /// login fails the check at once with Vault's reason (a full check runs again after
    /// `vault_recheck`); a login that works again has a failed check run again now.
    pub(super) fn sync_login_health(&self) {
        let now = Instant::now();
        let now_ms = self.clock.now_ms().max(0) as u64;
        let mut st = self.lock();
        let healths: Vec<(BackendId, Result<(), String>)> = st
            .meshes
            .iter()
            .filter_map(|(mesh, ms)| {
                let slot = ms.slot.as_ref()?;
                let cell = slot.source.try_lock().ok()?;
                let health = cell.as_ref()?.login_health()?;
                Some(((mesh.clone(), slot.backend.name.clone()), health))
            })
            .collect();
        let mut changed = false;
        for (bid, health) in healths {
            let Some(c) = st.checks.get_mut(&bid) else {
                continue;
            };
            match health {
                Err(e) => {
                    let error = format!("{LOGIN_FAILED}{e}");
                    if c.ok != Some(false) || c.error != error {
                        c.ok = Some(false);
                        c.error = error;
                        c.checked_at_ms = now_ms;
                        c.full = true;
                        if !c.running {
                            c.next = Some(now + self.config.vault_recheck);
                        }
                        changed = true;
                    }
                }
                Ok(()) => {
                    if c.ok == Some(false) && c.error.starts_with(LOGIN_FAILED) && !c.running {
                        c.full = true;
                        c.next = Some(now);
                        changed = true;
                    }
                }
            }
        }
        drop(st);
        if changed {
            self.wake.notify_one();
            self.dirty.notify_one();
        }
    }

    pub(super) async fn run_check(self: Arc<Self>, bid: BackendId, backend: Backend, full: bool) {
        let result: Result<(), String> = if full {
            let report = common::vault::check_backend(
                &bid.0,
                &backend,
                &self.ctx.store,
                self.ctx.config.vault_timeouts,
            )
            .await;
            if report.ok {
                Ok(())
            } else {
                Err(report
                    .failures()
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect::<Vec<_>>()
                    .join("; "))
            }
        } else {
            ping(
                &bid.0,
                &backend,
                &self.ctx.store,
                self.ctx.config.vault_timeouts,
            )
            .await
        };
        let now = Instant::now();
        {
            let mut st = self.lock();
            let Some(c) = st.checks.get_mut(&bid) else {
                return;
            };
            c.running = false;
            if c.backend != backend {
                // Changed while we checked: the new conf is checked at once.
                c.next = Some(now);
                drop(st);
                self.wake.notify_one();
                return;
            }
            c.checked_at_ms = self.clock.now_ms().max(0) as u64;
            c.next = Some(now + self.config.vault_recheck);
            match &result {
                Ok(()) => {
                    c.ok = Some(true);
                    c.error.clear();
                    c.full = false;
                }
                Err(e) => {
                    c.ok = Some(false);
                    c.error = e.clone();
                    c.full = true;
                }
            }
            if result.is_ok() && full {
                // Vault works from here: let the proxies waiting for it through.
                self.backend_ok(&mut st, &bid);
            }
        }
        match &result {
            Ok(()) if full => {
                tracing::info!(mesh = %bid.0, backend = %bid.1, "Vault check passed from this zone")
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(mesh = %bid.0, backend = %bid.1, error = %e, "Vault check failed from this zone")
            }
        }
        self.wake.notify_one();
        self.dirty.notify_one();
    }
}

/// `sys/health` through the backend's conf.
async fn ping(
    mesh: &str,
    backend: &Backend,
    store: &common::store::Store,
    timeouts: Timeouts,
) -> Result<(), String> {
    let from_cp = match backend.typed_conf() {
        Ok(BackendConf::Vault(v)) => v.from_cp.ok_or("conf.fromCp must be set")?,
        Ok(_) => return Err("not a vault backend".into()),
        Err(e) => return Err(format!("conf.{}: {}", e.path, e.reason)),
    };
    let issuer =
        VaultIssuer::from_conf(mesh, &from_cp, store, timeouts).map_err(|e| e.to_string())?;
    issuer.health().await.map(|_| ()).map_err(|e| e.to_string())
}
