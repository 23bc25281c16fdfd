//! The audit log: one JSON line per API request that changes something or tried to — a write, a
//! delete, an apply, a token made, a zone forgotten — saying when, who (`admin`: the admin token;
//! `anonymous`: none or a wrong one), from where, what (method, path and query, never a body:
//! Secret data cannot reach it) and the answer's status. Appended to `<data-dir>/audit.log` (mode
//! 0600; each replica keeps its own) by one task through a bounded queue: a request never waits
//! for the disk, and a line that finds the queue full is counted and said in the log instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;

/// The audit log's file name under the data directory.
pub const AUDIT_FILE: &str = "audit.log";

/// Lines queued at most before they are dropped (and counted).
const QUEUE: usize = 4096;

/// One audited request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// RFC 3339 with milliseconds.
    pub time: String,
    pub actor: String,
    pub source: String,
    /// What was asked, in words: `write`, `delete`, `apply`, `zone-token`, `dataplane-token`,
    /// `user-token`, `revoke-token`, `rotate-signing-key`, `retire-signing-key`, `forget-zone`
    /// (see [`action_of`]).
    pub action: String,
    /// The resource it was about, when the path names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Target>,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub query: String,
    /// `ok` (2xx), `refused` (4xx) or `failed` (5xx), and the status itself.
    pub result: &'static str,
    pub status: u16,
    /// What the handler adds: the id (`jti`) of a token made or revoked, a signing key's id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The resource of an audited request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Target {
    pub kind: &'static str,
    pub mesh: String,
    pub name: String,
}

/// The action and resource of a request to `path` with `method`, from the API's routes.
pub fn action_of(method: &str, path: &str) -> (String, Option<Target>) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let verb = if method == "DELETE" {
        "delete"
    } else {
        "write"
    };
    match parts.as_slice() {
        ["meshes", mesh] => (
            verb.into(),
            Some(Target {
                kind: "Mesh",
                mesh: mesh.to_string(),
                name: mesh.to_string(),
            }),
        ),
        ["meshes", mesh, "secrets", name] => (
            verb.into(),
            Some(Target {
                kind: "Secret",
                mesh: mesh.to_string(),
                name: name.to_string(),
            }),
        ),
        ["zones", zone] if method == "DELETE" => (
            "forget-zone".into(),
            Some(Target {
                kind: "Zone",
                mesh: String::new(),
                name: zone.to_string(),
            }),
        ),
        ["apply"] => ("apply".into(), None),
        ["tokens", "revoke"] => ("revoke-token".into(), None),
        ["tokens", "signing-keys"] => ("rotate-signing-key".into(), None),
        ["tokens", "signing-keys", _] => ("retire-signing-key".into(), None),
        ["tokens", kind] => (format!("{kind}-token"), None),
        _ => (method.to_lowercase(), None),
    }
}

/// The `result` of a status.
pub fn result_of(status: u16) -> &'static str {
    match status {
        200..=399 => "ok",
        400..=499 => "refused",
        _ => "failed",
    }
}

/// Where audit lines go. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Entry>,
    dropped: Arc<AtomicU64>,
    path: Arc<PathBuf>,
}

impl Audit {
    /// Opens (creates) `<data_dir>/audit.log` and starts its writer.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join(AUDIT_FILE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let (tx, mut rx) = mpsc::channel::<Entry>(QUEUE);
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || {
            while let Some(entry) = rx.blocking_recv() {
                let mut line = serde_json::to_vec(&entry).unwrap_or_default();
                line.push(b'\n');
                if let Err(e) = file.write_all(&line) {
                    tracing::error!(file = %shown, error = %e, "cannot write the audit log");
                }
            }
        });
        Ok(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            path: Arc::new(path),
        })
    }

    /// Records a request; never waits.
    pub fn record(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::error!(file = %self.path.display(), dropped = n, "the audit log cannot keep up: lines dropped");
            }
        }
    }

    /// Lines that found the queue full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Whether a request of `method` is audited: everything but reads.
pub fn audited(method: &axum::http::Method) -> bool {
    !matches!(
        *method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_appended_as_json_without_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path()).unwrap();
        for status in [201, 401] {
            let (action, resource) = action_of("PUT", "/meshes/default/secrets/s");
            audit.record(Entry {
                time: "2026-12-06T09:00:00Z".into(),
                actor: "admin".into(),
                source: "127.0.0.1:5000".into(),
                action,
                resource,
                method: "PUT".into(),
                path: "/meshes/default/secrets/s".into(),
                query: "dryRun=true".into(),
                result: result_of(status),
                status,
                detail: String::new(),
            });
        }
        drop(audit);
        let path = dir.path().join(AUDIT_FILE);
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["status"], 401);
        assert_eq!(lines[1]["result"], "refused");
        assert_eq!(lines[0]["action"], "write");
        assert_eq!(lines[0]["resource"]["kind"], "Secret");
        assert_eq!(action_of("DELETE", "/zones/z1").0, "forget-zone");
        assert_eq!(action_of("POST", "/tokens/dataplane").0, "dataplane-token");
        assert_eq!(lines[0]["query"], "dryRun=true");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(audited(&axum::http::Method::DELETE));
        assert!(!audited(&axum::http::Method::GET));
    }
}
