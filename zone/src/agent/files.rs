//! The agent's output directory: `cert.pem` (leaf then chain), `key.pem` (mode 0600) and `ca.pem`
//! (trust bundle). A bundle is validated in full before anything is written (every PEM parses,
//! the leaf is valid now by this host's clock with [`common::clock::LEEWAY`] for a NotBefore
//! slightly ahead, it chains to the trust bundle, the private key matches the leaf), and each
//! file is replaced atomically
//! (a temporary file in the same directory, fsync, rename, fsync of the directory) and only when
//! its content changes. Good files are never deleted or truncated: a bundle that fails validation,
//! or a write that fails, leaves the directory as it was. Each refusal or failure says its kind
//! ([`AgentProblem`]: disk full, read-only, permission, expired, not yet valid, chain, ...), which
//! the agent reports to its zone.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::clock::now_unix;
use common::x509;
use proto::dpid::AgentProblem;

pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
pub const CA_FILE: &str = "ca.pem";

/// What the zone sent, as the agent applies it (the key filled in from the stream when the zone
/// said "keep your key").
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    pub generation: u64,
    pub cert_chain_pem: String,
    /// `None`: keep the key in `key.pem`.
    pub key_pem: Option<String>,
    pub trust_bundle_pem: String,
    pub backend: String,
    pub serial: String,
    pub not_after_unix: i64,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("generation", &self.generation)
            .field("backend", &self.backend)
            .field("serial", &self.serial)
            .field("not_after_unix", &self.not_after_unix)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// What applying a bundle changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    pub files: Vec<&'static str>,
    /// Serial and expiry of the leaf now on disk.
    pub serial: String,
    pub not_after_unix: i64,
}

impl Changed {
    pub fn any(&self) -> bool {
        !self.files.is_empty()
    }
}

/// The certificate the agent holds and can present to the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub cert_chain_pem: String,
    pub serial: String,
    pub not_after_unix: i64,
}

/// Why a bundle was not applied: its kind, and in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApplyError {
    pub problem: AgentProblem,
    pub message: String,
}

impl ApplyError {
    fn invalid(problem: AgentProblem, message: impl Into<String>) -> Self {
        Self {
            problem,
            message: message.into(),
        }
    }

    /// A file could not be written: why, by the error's kind.
    pub fn write(e: &std::io::Error, message: String) -> Self {
        use std::io::ErrorKind as K;
        let problem = match e.kind() {
            K::StorageFull | K::QuotaExceeded => AgentProblem::DiskFull,
            K::ReadOnlyFilesystem => AgentProblem::ReadOnly,
            K::PermissionDenied => AgentProblem::Permission,
            _ => AgentProblem::Write,
        };
        Self { problem, message }
    }

    /// Whether it is worth trying the same bundle again (the disk may recover; the bundle won't).
    pub fn retry(&self) -> bool {
        matches!(
            self.problem,
            AgentProblem::DiskFull
                | AgentProblem::ReadOnly
                | AgentProblem::Permission
                | AgentProblem::Write
        )
    }
}

#[derive(Debug, Clone)]
pub struct OutDir {
    dir: PathBuf,
}

fn with_newline(s: &str) -> String {
    let t = s.trim_end();
    format!("{t}\n")
}

impl OutDir {
    /// Creates the directory if needed.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.path(file)).ok()
    }

    /// The certificate on disk, when it parses, is still valid and `key.pem` matches it: what the
    /// agent presents so that a restarted zone can let it keep it.
    pub fn held(&self) -> Option<Held> {
        let chain = self.read(CERT_FILE)?;
        let key = self.read(KEY_FILE)?;
        let leaf = x509::summarize_pem(&chain).ok()?;
        if leaf.not_after <= now_unix() || !x509::private_key_matches_cert(&chain, &key) {
            return None;
        }
        Some(Held {
            cert_chain_pem: chain,
            serial: leaf.serial,
            not_after_unix: leaf.not_after,
        })
    }

    /// The leaf in `cert.pem` as it is, valid or not: serial and expiry (what the agent reports).
    pub fn on_disk(&self) -> Option<(String, i64)> {
        let leaf = x509::summarize_pem(&self.read(CERT_FILE)?).ok()?;
        Some((leaf.serial, leaf.not_after))
    }

    /// Proof that this agent holds the key of `held` (see `x509::possession_message`), made now:
    /// the signature and its time; `None` when the key cannot sign.
    pub fn possession_proof(&self, held: &Held, mesh: &str, name: &str) -> Option<(Vec<u8>, i64)> {
        let key = self.read(KEY_FILE)?;
        let leaf = x509::pem_to_ders(&held.cert_chain_pem)
            .ok()?
            .into_iter()
            .next()?;
        let now = now_unix();
        let msg = x509::possession_message(mesh, name, now, &leaf);
        x509::sign_possession(&key, &msg).ok().map(|sig| (sig, now))
    }

    /// Checks `bundle` and returns the files' new contents (cert, key when it changes, CA).
    fn check(&self, bundle: &Bundle) -> Result<[(&'static str, String, u32); 3], ApplyError> {
        use AgentProblem as P;
        let invalid = ApplyError::invalid;
        let chain = x509::pem_to_ders(&bundle.cert_chain_pem).map_err(|e| {
            invalid(
                P::Invalid,
                format!("the certificate chain is unusable: {e}"),
            )
        })?;
        let leaf = x509::summarize_der(&chain[0])
            .map_err(|e| invalid(P::Invalid, format!("the leaf certificate is unusable: {e}")))?;
        let now = now_unix();
        let at = |t: i64| common::clock::rfc3339(t).unwrap_or_else(|| t.to_string());
        if leaf.not_after <= now {
            return Err(invalid(
                P::Expired,
                format!(
                    "the leaf certificate (serial {}) has already expired by this host's clock: it expired at {}, this host's clock says {}",
                    leaf.serial,
                    at(leaf.not_after),
                    at(now)
                ),
            ));
        }
        if leaf.not_before > now + common::clock::LEEWAY.as_secs() as i64 {
            return Err(invalid(
                P::NotYetValid,
                format!(
                    "the leaf certificate (serial {}) is not valid yet by this host's clock: valid from {}, this host's clock says {}",
                    leaf.serial,
                    at(leaf.not_before),
                    at(now)
                ),
            ));
        }
        if leaf.is_ca {
            return Err(invalid(
                P::Invalid,
                format!(
                    "the leaf certificate (serial {}) is a CA certificate",
                    leaf.serial
                ),
            ));
        }
        let trust = x509::pem_to_ders(&bundle.trust_bundle_pem)
            .map_err(|e| invalid(P::Invalid, format!("the trust bundle is unusable: {e}")))?;
        // The leaf must chain to what peers are told to trust (its self-signed roots; any other
        // certificate of the bundle may serve as an intermediate).
        let (roots, others): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            trust.into_iter().partition(|d| x509::der_is_self_signed(d));
        if !roots.is_empty() {
            let mut intermediates: Vec<Vec<u8>> = chain[1..].to_vec();
            intermediates.extend(others);
            // Validity was judged above, with the leeway: the chain is checked at a time the leaf
            // is valid.
            let at = now.max(leaf.not_before);
            x509::verify_chain_at_unix(&chain[0], &intermediates, &roots, at).map_err(|e| {
                invalid(
                    P::Chain,
                    format!(
                        "the leaf certificate (serial {}) does not chain to the trust bundle: {e}",
                        leaf.serial
                    ),
                )
            })?;
        }
        let key = match &bundle.key_pem {
            Some(k) => k.clone(),
            None => self.read(KEY_FILE).ok_or_else(|| {
                invalid(
                    P::Key,
                    format!("the zone sent no private key and {KEY_FILE} cannot be read"),
                )
            })?,
        };
        if !x509::private_key_matches_cert(&bundle.cert_chain_pem, &key) {
            return Err(invalid(
                P::Key,
                match &bundle.key_pem {
                    Some(_) => "the private key does not match the leaf certificate".to_string(),
                    None => format!(
                        "the zone sent no private key and the one in {KEY_FILE} does not match the leaf certificate"
                    ),
                },
            ));
        }
        Ok([
            // The CA first, then the key, then the certificate: the renames happen back to back.
            (CA_FILE, with_newline(&bundle.trust_bundle_pem), 0o644),
            (KEY_FILE, with_newline(&key), 0o600),
            (CERT_FILE, with_newline(&bundle.cert_chain_pem), 0o644),
        ])
    }

    /// Validates the bundle, then replaces each file whose content changes. Nothing is written
    /// when the bundle is invalid; on a write error the files not yet renamed keep their content.
    pub fn apply(&self, bundle: &Bundle) -> Result<Changed, ApplyError> {
        let files = self.check(bundle)?;
        let leaf = x509::summarize_pem(&bundle.cert_chain_pem)
            .map_err(|e| ApplyError::invalid(AgentProblem::Invalid, e.to_string()))?;
        let mut changed = Changed {
            files: vec![],
            serial: leaf.serial,
            not_after_unix: leaf.not_after,
        };
        let mut staged = Vec::new();
        for (name, content, mode) in files {
            let path = self.path(name);
            let mode_ok = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777 == mode)
                .unwrap_or(false);
            if self.read(name).as_deref() == Some(content.as_str()) && mode_ok {
                continue;
            }
            let tmp = self.path(&format!(".{name}.tmp"));
            if let Err(e) = write_synced(&tmp, content.as_bytes(), mode) {
                for (_, t, _) in &staged {
                    let _ = std::fs::remove_file(t);
                }
                let _ = std::fs::remove_file(&tmp);
                return Err(ApplyError::write(
                    &e,
                    format!("cannot write {}: {e}", tmp.display()),
                ));
            }
            staged.push((name, tmp, path));
        }
        for (name, tmp, path) in staged {
            if let Err(e) = std::fs::rename(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(ApplyError::write(
                    &e,
                    format!("cannot replace {}: {e}", path.display()),
                ));
            }
            changed.files.push(name);
        }
        if changed.any() {
            sync_dir(&self.dir);
        }
        Ok(changed)
    }
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    // A leftover temporary file may have another mode: start afresh.
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(ca: &rcgen::Issuer<'_, rcgen::KeyPair>, secs: i64) -> (String, String) {
        issue_from(ca, -60, secs)
    }

    /// A leaf valid from `from` to `to` seconds from now.
    fn issue_from(ca: &rcgen::Issuer<'_, rcgen::KeyPair>, from: i64, to: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_before = time::OffsetDateTime::now_utc() + time::Duration::seconds(from);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(to);
        let cert = params.signed_by(&key, ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (rcgen::Issuer::new(params, key), cert.pem())
    }

    fn bundle(cert: &str, key: Option<&str>, ca: &str) -> Bundle {
        Bundle {
            generation: 1,
            cert_chain_pem: cert.to_string(),
            key_pem: key.map(str::to_string),
            trust_bundle_pem: ca.to_string(),
            backend: "b".into(),
            serial: String::new(),
            not_after_unix: 0,
        }
    }

    #[test]
    fn writes_validated_bundles_and_never_replaces_good_files_with_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutDir::open(&dir.path().join("out")).unwrap();
        let (issuer, ca_pem) = ca();
        let (cert, key) = issue(&issuer, 3600);
        assert!(out.held().is_none());
        // A bundle without a key, with no key on disk: refused, nothing written.
        assert!(out.apply(&bundle(&cert, None, &ca_pem)).is_err());
        assert!(!out.path(CERT_FILE).exists());

        let changed = out.apply(&bundle(&cert, Some(&key), &ca_pem)).unwrap();
        assert_eq!(changed.files, vec![CA_FILE, KEY_FILE, CERT_FILE]);
        let mode = std::fs::metadata(out.path(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(out.held().unwrap().cert_chain_pem.trim(), cert.trim());
        // The same again: nothing changes.
        assert!(
            !out.apply(&bundle(&cert, Some(&key), &ca_pem))
                .unwrap()
                .any()
        );

        // Garbage, a mismatched key, an expired leaf, one not valid yet, one of another CA, a
        // missing trust bundle: all refused, each with its kind.
        let (other_cert, other_key) = issue(&issuer, 3600);
        let (expired, expired_key) = issue(&issuer, -10);
        let (later, later_key) = issue_from(&issuer, 600, 3600);
        let (stranger_issuer, _) = ca();
        let (stranger, stranger_key) = issue(&stranger_issuer, 3600);
        use AgentProblem as P;
        for (b, why, problem) in [
            (
                bundle("garbage", Some(&key), &ca_pem),
                "unusable",
                P::Invalid,
            ),
            (
                bundle(&cert, Some(&other_key), &ca_pem),
                "does not match",
                P::Key,
            ),
            (bundle(&other_cert, None, &ca_pem), "does not match", P::Key),
            (
                bundle(&expired, Some(&expired_key), &ca_pem),
                "expired",
                P::Expired,
            ),
            (
                bundle(&later, Some(&later_key), &ca_pem),
                "not valid yet",
                P::NotYetValid,
            ),
            (
                bundle(&stranger, Some(&stranger_key), &ca_pem),
                "does not chain",
                P::Chain,
            ),
            (bundle(&cert, Some(&key), ""), "trust bundle", P::Invalid),
        ] {
            let e = out.apply(&b).unwrap_err();
            assert_eq!(e.problem, problem, "{e}");
            assert!(!e.retry(), "{e}");
            assert!(e.to_string().contains(why), "{e}");
        }
        assert_eq!(
            std::fs::read_to_string(out.path(CERT_FILE)).unwrap().trim(),
            cert.trim()
        );
        assert_eq!(
            std::fs::read_to_string(out.path(KEY_FILE)).unwrap().trim(),
            key.trim()
        );

        // A new certificate for the same key, without the key: only cert.pem changes.
        let key_pair = rcgen::KeyPair::from_pem(&key).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
        let renewed = params.signed_by(&key_pair, &issuer).unwrap().pem();
        let changed = out.apply(&bundle(&renewed, None, &ca_pem)).unwrap();
        assert_eq!(changed.files, vec![CERT_FILE]);
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}
