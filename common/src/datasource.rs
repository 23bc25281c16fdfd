//! Resolution of data sources (`secret`, `file`, `inline`, `inlineString`) to bytes. Secrets are
//! looked up through [`SecretLookup`], which the global store, a zone store and `global validate`
//! (Secrets from the same files) each implement.

use std::collections::HashMap;

use base64::Engine;

use crate::limits::DATA_BYTES;
use crate::model::{DataSource, Secret};

/// Finds the decoded data of a Secret of a mesh.
pub trait SecretLookup: Send + Sync {
    fn secret_data(&self, mesh: &str, name: &str) -> Option<Vec<u8>>;
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
            return read_file(path).map_err(|reason| DataSourceError::File {
                path: path.clone(),
                reason,
            });
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
fn read_file(path: &str) -> Result<Vec<u8>, String> {
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
        .custom_flags(libc::O_NONBLOCK)
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
}
