//! Resolution of data sources (`secret`, `file`, `inline`, `inlineString`) to bytes. Secrets are
//! looked up through [`SecretLookup`], which the global store, a zone store and `global validate`
//! (Secrets from the same files) each implement. `file:` sources are read only where the lookup's
//! [`FileRoots`] allow: a running control plane confines them to the directories its operator
//! named (`run --data-source-dir`), never its own data directory, never through a link that
//! leads out; `global validate` on the operator's machine reads what it is given.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;

use crate::limits::DATA_BYTES;
use crate::model::{DataSource, Secret};

/// Finds the decoded data of a Secret of a mesh, and says where `file:` sources may be read.
pub trait SecretLookup: Send + Sync {
    fn secret_data(&self, mesh: &str, name: &str) -> Option<Vec<u8>>;

    /// Where `file:` data sources may be read; None: anywhere (the operator's own tools).
    fn file_roots(&self) -> Option<Arc<FileRoots>> {
        None
    }
}

/// The directories a control plane reads `file:` data sources from (`run --data-source-dir`),
/// canonical, and its own data directory, which is never read through a data source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRoots {
    allowed: Vec<PathBuf>,
    data_dir: PathBuf,
}

impl FileRoots {
    /// The roots of a control plane with data in `data_dir`. Every allowed directory must exist;
    /// one inside the data directory (or holding it) is refused.
    pub fn new(allowed: &[PathBuf], data_dir: &Path) -> Result<Self, String> {
        let data_dir = std::fs::canonicalize(data_dir)
            .map_err(|e| format!("the data directory {}: {e}", data_dir.display()))?;
        let mut roots = Vec::new();
        for dir in allowed {
            let c = std::fs::canonicalize(dir)
                .map_err(|e| format!("--data-source-dir {}: {e}", dir.display()))?;
            if !c.is_dir() {
                return Err(format!(
                    "--data-source-dir {}: not a directory",
                    dir.display()
                ));
            }
            if c.starts_with(&data_dir) || data_dir.starts_with(&c) {
                return Err(format!(
                    "--data-source-dir {}: it holds or is inside the data directory {}, whose files (tokens, keys) no data source may read",
                    dir.display(),
                    data_dir.display()
                ));
            }
            roots.push(c);
        }
        Ok(Self {
            allowed: roots,
            data_dir,
        })
    }

    /// The canonical path to read for `path`, or why it may not be read.
    pub fn check(&self, path: &str) -> Result<PathBuf, String> {
        if self.allowed.is_empty() {
            return Err(
                "file: data sources are not allowed on this control plane: start it with --data-source-dir DIR (repeatable) to allow the files under DIR, or use a Secret".to_string(),
            );
        }
        if !Path::new(path).is_absolute() {
            return Err("a file: data source must be an absolute path".to_string());
        }
        // Every link resolved: a link that leads out of the allowed tree is out.
        let real = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
        if real.starts_with(&self.data_dir) {
            return Err(
                "it is inside the control plane's own data directory, whose files no data source may read".to_string(),
            );
        }
        if !self.allowed.iter().any(|d| real.starts_with(d)) {
            let dirs: Vec<String> = self
                .allowed
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            return Err(format!(
                "it is not under a --data-source-dir of this control plane ({}){}",
                dirs.join(", "),
                if real != Path::new(path) {
                    format!("; it leads to {}", real.display())
                } else {
                    String::new()
                }
            ));
        }
        Ok(real)
    }
}

impl FileRoots {
    /// Whether a resource may name `path` as a `file:` source: [`FileRoots::check`], except that
    /// a file that does not exist (yet) passes — reading it is checked again, and reported.
    pub fn permits(&self, path: &str) -> Result<(), String> {
        match self.check(path) {
            Ok(_) => Ok(()),
            Err(_)
                if !self.allowed.is_empty()
                    && Path::new(path).is_absolute()
                    && std::fs::symlink_metadata(path).is_err() =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Every `file:` data source of a Mesh's backends: (field path, file path).
pub fn file_sources(mesh: &crate::model::Mesh) -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(f) = map.get("file").and_then(|f| f.as_str()) {
                    out.push((format!("{path}.file"), f.to_string()));
                }
                for (k, child) in map {
                    walk(child, &format!("{path}.{k}"), out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (i, b) in mesh.backends().iter().enumerate() {
        if let Some(conf) = &b.conf {
            walk(conf, &format!("mtls.backends[{i}].conf"), &mut out);
        }
    }
    out
}

/// Secrets held in memory, keyed by (mesh, name): used by `global validate` and by tests.
#[derive(Default, Clone)]
pub struct SecretMap(pub HashMap<(String, String), Vec<u8>>);

impl SecretMap {
    pub fn insert(&mut self, mesh: &str, name: &str, data: Vec<u8>) {
        self.0.insert((mesh.to_string(), name.to_string()), data);
    }

    pub fn insert_secret(&mut self, secret: &Secret) -> Result<(), base64::DecodeError> {
        let data = secret.decode()?;
        self.insert(&secret.mesh, &secret.name, data);
        Ok(())
    }
}

impl SecretLookup for SecretMap {
    fn secret_data(&self, mesh: &str, name: &str) -> Option<Vec<u8>> {
        self.0.get(&(mesh.to_string(), name.to_string())).cloned()
    }
}

/// Why a data source could not be read. Messages never include the data itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DataSourceError {
    #[error("exactly one of secret, file, inline, inlineString must be set ({0} are)")]
    NotExactlyOne(usize),
    #[error("secret {name:?} not found in mesh {mesh:?}")]
    SecretNotFound { mesh: String, name: String },
    #[error("cannot read file {path:?}: {reason}")]
    File { path: String, reason: String },
    #[error("inline data is not valid base64: {0}")]
    Base64(String),
}

impl DataSource {
    /// Reads the bytes this data source points at.
    pub fn resolve(
        &self,
        mesh: &str,
        secrets: &dyn SecretLookup,
    ) -> Result<Vec<u8>, DataSourceError> {
        match self.set_count() {
            1 => {}
            n => return Err(DataSourceError::NotExactlyOne(n)),
        }
        if let Some(name) = &self.secret {
            return secrets.secret_data(mesh, name).ok_or_else(|| {
                DataSourceError::SecretNotFound {
                    mesh: mesh.to_string(),
                    name: name.clone(),
                }
            });
        }
        if let Some(path) = &self.file {
            let err = |reason| DataSourceError::File {
                path: path.clone(),
                reason,
            };
            return match secrets.file_roots() {
                // The canonical path, opened without following a link swapped in meanwhile.
                Some(roots) => read_file(&roots.check(path).map_err(err)?, true).map_err(err),
                None => read_file(Path::new(path), false).map_err(err),
            };
        }
        if let Some(b64) = &self.inline {
            return base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| DataSourceError::Base64(e.to_string()));
        }
        Ok(self.inline_string.clone().unwrap_or_default().into_bytes())
    }
}

/// Reads a `file:` data source: a regular file of at most [`DATA_BYTES`]. A device, FIFO or
/// directory is refused before it is read (`/dev/zero` would never end, a FIFO would block the
/// reader until someone writes to it), and so is a file that grows past the limit while read.
fn read_file(path: &Path, no_follow: bool) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    let regular = |m: &std::fs::Metadata| {
        if m.is_file() {
            Ok(())
        } else {
            Err("not a regular file".to_string())
        }
    };
    regular(&std::fs::metadata(path).map_err(|e| e.to_string())?)?;
    // O_NONBLOCK: should the path be swapped for a FIFO after the check, opening it does not wait
    // for a writer (the read below then fails or returns nothing instead of hanging).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | if no_follow { libc::O_NOFOLLOW } else { 0 })
        .open(path)
        .map_err(|e| e.to_string())?;
    regular(&file.metadata().map_err(|e| e.to_string())?)?;
    let mut data = Vec::new();
    file.take(DATA_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    if data.len() > DATA_BYTES {
        return Err(format!("larger than {} bytes", DATA_BYTES));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_each_kind() {
        let mut secrets = SecretMap::default();
        secrets.insert("default", "sec-1", b"hello".to_vec());
        assert_eq!(
            DataSource::secret("sec-1")
                .resolve("default", &secrets)
                .unwrap(),
            b"hello"
        );
        assert_eq!(
            DataSource::secret("sec-1").resolve("other", &secrets),
            Err(DataSourceError::SecretNotFound {
                mesh: "other".into(),
                name: "sec-1".into()
            })
        );
        assert_eq!(
            DataSource::inline_string("x")
                .resolve("m", &secrets)
                .unwrap(),
            b"x"
        );
        let inline = DataSource {
            inline: Some("aGk=".into()),
            ..Default::default()
        };
        assert_eq!(inline.resolve("m", &secrets).unwrap(), b"hi");
        let bad = DataSource {
            inline: Some("%%%".into()),
            ..Default::default()
        };
        assert!(matches!(
            bad.resolve("m", &secrets),
            Err(DataSourceError::Base64(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"file!").unwrap();
        assert_eq!(
            DataSource::file(p.to_str().unwrap())
                .resolve("m", &secrets)
                .unwrap(),
            b"file!"
        );
        assert!(matches!(
            DataSource::file("/nonexistent/x").resolve("m", &secrets),
            Err(DataSourceError::File { .. })
        ));
        assert_eq!(
            DataSource::default().resolve("m", &secrets),
            Err(DataSourceError::NotExactlyOne(0))
        );
    }

    #[test]
    fn file_sources_are_regular_files_within_the_limit() {
        let secrets = SecretMap::default();
        let refused = |path: &str, needle: &str| match DataSource::file(path).resolve("m", &secrets)
        {
            Err(DataSourceError::File { reason, .. }) => {
                assert!(reason.contains(needle), "{path}: {reason}")
            }
            other => panic!("{path}: {other:?}"),
        };
        // Devices and directories are refused before reading (/dev/zero never ends).
        refused("/dev/zero", "not a regular file");
        refused("/dev/urandom", "not a regular file");
        refused("/", "not a regular file");
        // A FIFO with no writer would block the reader forever.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .args(["-m", "600"])
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        refused(fifo.to_str().unwrap(), "not a regular file");
        // At most DATA_BYTES.
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; DATA_BYTES + 1]).unwrap();
        refused(big.to_str().unwrap(), "larger than");
        let max = dir.path().join("max");
        std::fs::write(&max, vec![b'a'; DATA_BYTES]).unwrap();
        assert_eq!(
            DataSource::file(max.to_str().unwrap())
                .resolve("m", &secrets)
                .unwrap()
                .len(),
            DATA_BYTES
        );
    }

    #[test]
    fn debug_redacts_inline_values() {
        let ds = DataSource {
            inline_string: Some("s3cr3t-token".into()),
            ..Default::default()
        };
        assert!(!format!("{ds:?}").contains("s3cr3t"));
        let s = Secret::new("m", "n", b"topsecret");
        assert!(!format!("{s:?}").contains(&s.data));
    }

    #[test]
    fn file_sources_are_confined_to_the_operators_directories() {
        struct Confined(Arc<FileRoots>);
        impl SecretLookup for Confined {
            fn secret_data(&self, _: &str, _: &str) -> Option<Vec<u8>> {
                None
            }
            fn file_roots(&self) -> Option<Arc<FileRoots>> {
                Some(self.0.clone())
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let (data, allowed, outside) = (
            tmp.path().join("data"),
            tmp.path().join("allowed"),
            tmp.path().join("outside"),
        );
        for d in [&data, &allowed, &outside] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(data.join("admin-token"), b"root-of-all").unwrap();
        std::fs::write(allowed.join("token"), b"ok").unwrap();
        std::fs::write(outside.join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), allowed.join("escape")).unwrap();
        std::os::unix::fs::symlink(data.join("admin-token"), allowed.join("into-data")).unwrap();
        let read = |roots: &FileRoots, path: &std::path::Path| {
            DataSource::file(path.to_str().unwrap())
                .resolve("m", &Confined(Arc::new(roots.clone())))
                .map_err(|e| e.to_string())
        };
        // None allowed: every file refused, saying how to allow it.
        let none = FileRoots::new(&[], &data).unwrap();
        assert!(
            read(&none, &allowed.join("token"))
                .unwrap_err()
                .contains("--data-source-dir")
        );
        let roots = FileRoots::new(std::slice::from_ref(&allowed), &data).unwrap();
        assert_eq!(read(&roots, &allowed.join("token")).unwrap(), b"ok");
        for (path, why) in [
            (outside.join("secret"), "not under a --data-source-dir"),
            (allowed.join("escape"), "leads to"),
            (allowed.join("into-data"), "own data directory"),
            (data.join("admin-token"), "own data directory"),
            (allowed.join("../outside/secret"), "not under"),
        ] {
            let e = read(&roots, &path).unwrap_err();
            assert!(e.contains(why), "{}: {e}", path.display());
            assert!(!e.contains("root-of-all"));
        }
        assert!(roots.check("token").unwrap_err().contains("absolute"));
        // A file that does not exist yet may be named (reading it is checked again).
        assert!(
            roots
                .permits(allowed.join("later").to_str().unwrap())
                .is_ok()
        );
        assert!(
            roots
                .permits(outside.join("secret").to_str().unwrap())
                .is_err()
        );
        // The data directory can never be allowed.
        assert!(FileRoots::new(std::slice::from_ref(&data), &data).is_err());
        assert!(FileRoots::new(&[tmp.path().to_path_buf()], &data).is_err());
        assert!(FileRoots::new(&[tmp.path().join("nope")], &data).is_err());
    }
}
