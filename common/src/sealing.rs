//! Sealing of Secret data at rest: the one place that knows the Secrets key and the envelope
//! format. A [`SecretsKey`] is 32 random bytes (a key file holds them in base64, mode 0600 at
//! most), used with AES-256-GCM (aws-lc-rs) and named by a key id, the first 8 bytes of the
//! SHA-256 of the key, so that an envelope says which key sealed it (what a later rotation needs
//! to tell keys apart). An envelope is `version (1) | key id (8) | nonce (12) | ciphertext | tag
//! (16)`, with a random nonce per seal; the associated data binds the version, the key id and the
//! identity of the resource it belongs to (`Secret/<mesh>/<name>`), so a sealed value moved to
//! another resource, a tampered one, or one opened with another key is refused, never returned
//! as garbage. The store (`store`, `store_pg`) calls [`SecretsKey::seal`] and
//! [`SecretsKey::open`]; the control planes load or generate the key file at start
//! ([`SecretsKey::load`], [`SecretsKey::load_or_generate`]). A key may carry extra keys
//! ([`SecretsKey::with_extra`], `--secrets-extra-key-file`): they open what they sealed, never
//! seal, and [`SecretsKey::is_current`] tells what the stores must seal again (a rotation). The
//! key never appears in `Debug`, errors or logs: only its id and the file it came from do.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine;
use sha2::{Digest, Sha256};

/// The file name of a generated key in a control plane's data directory.
pub const KEY_FILE: &str = "secrets.key";
/// Bytes of a Secrets key (AES-256).
pub const KEY_LEN: usize = 32;
/// Bytes of a key id.
pub const KEY_ID_LEN: usize = 8;
/// The envelope version this binary writes (and the only one it reads).
const VERSION: u8 = 1;
/// version | key id | nonce.
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// The AES-GCM tag.
const TAG_LEN: usize = 16;
/// The first bytes of every associated data: what the envelope is for.
const AAD_CONTEXT: &[u8] = b"kmesh sealed resource\0";

/// Which key sealed an envelope: the first 8 bytes of the SHA-256 of the key (hex when shown).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl KeyId {
    /// The id's bytes, as envelopes carry them (after the version byte).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id shown as `Display` shows it (16 hex digits).
    pub fn parse(hex_id: &str) -> Option<Self> {
        let bytes = hex::decode(hex_id).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a key file cannot be used. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the Secrets key file {path} does not exist (it holds 32 random bytes in base64; make one with `head -c 32 /dev/urandom | base64 > {path} && chmod 600 {path}`)"
    )]
    Missing { path: PathBuf },
    #[error("cannot read the Secrets key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the Secrets key file {path} is readable or writable by other users (mode {mode:o}): make it private with `chmod 600 {path}`"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "the Secrets key file {path} is not base64: it must hold 32 random bytes in base64 (`head -c 32 /dev/urandom | base64`)"
    )]
    NotBase64 { path: PathBuf },
    #[error(
        "the Secrets key file {path} holds {found} bytes once decoded: a Secrets key is exactly 32 random bytes in base64"
    )]
    WrongLength { path: PathBuf, found: usize },
    #[error("cannot write the new Secrets key file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the AES-256-GCM key cannot be set up (aws-lc-rs refused it)")]
    Crypto,
}

/// Why a sealed value cannot be opened (or a value sealed). Never holds data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("it is not a sealed value ({reason})")]
    Malformed { reason: &'static str },
    #[error("it is sealed in envelope version {found}, this binary reads version {VERSION}")]
    Version { found: u8 },
    #[error(
        "it was sealed with key id {sealed_with}, the key given has id {held}: start with the key that sealed it"
    )]
    OtherKey { sealed_with: KeyId, held: KeyId },
    #[error(
        "it does not authenticate: it was altered, or moved from another resource ({identity})"
    )]
    Unauthentic { identity: String },
    #[error("AES-256-GCM sealing failed (aws-lc-rs)")]
    Crypto,
}

/// The Secrets key: AES-256-GCM with random nonces, and its id. `Debug` shows the id and where
/// the key came from, never the key.
pub struct SecretsKey {
    key: RandomizedNonceKey,
    id: KeyId,
    origin: String,
    /// Keys that open what they sealed and never seal: the key being rotated out (or, on a
    /// PostgreSQL store, the next one, given to every replica before any seals with it).
    extra: Vec<SecretsKey>,
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsKey")
            .field("id", &self.id)
            .field("origin", &self.origin)
            .field("key", &"<redacted>")
            .field("extra", &self.extra)
            .finish()
    }
}

impl SecretsKey {
    /// The key of these 32 bytes; `origin` names where they came from in messages.
    fn from_bytes(bytes: &[u8; KEY_LEN], origin: String) -> Result<Self, KeyError> {
        let key = RandomizedNonceKey::new(&AES_256_GCM, bytes).map_err(|_| KeyError::Crypto)?;
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Ok(Self {
            key,
            id: KeyId(id),
            origin,
            extra: Vec::new(),
        })
    }

    /// This key, also opening what the `extra` keys sealed (they never seal). An extra key
    /// equal to this one, or to an earlier extra, is dropped.
    pub fn with_extra(mut self, extra: Vec<SecretsKey>) -> Self {
        for k in extra {
            if k.id != self.id && !self.extra.iter().any(|e| e.id == k.id) {
                self.extra.push(SecretsKey {
                    extra: Vec::new(),
                    ..k
                });
            }
        }
        self
    }

    /// Whether this key or one of its extras opens what `id` sealed.
    pub fn opens(&self, id: KeyId) -> bool {
        id == self.id || self.extra.iter().any(|k| k.id == id)
    }

    /// Whether `envelope` was sealed with this key (not an extra one): what is not gets sealed
    /// again by the stores at start, so that the extra keys can then be dropped.
    pub fn is_current(&self, envelope: &[u8]) -> bool {
        envelope_key_id(envelope).is_ok_and(|id| id == self.id)
    }

    /// A new random key (held in memory only: a temporary store, tests).
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = random_key()?;
        let key = Self::from_bytes(&bytes, "a key generated in memory".into());
        bytes.fill(0);
        key
    }

    /// The key in the file at `path`: it must exist, be private to its owner (no access for
    /// other users), and hold exactly 32 bytes in base64 (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::Missing {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(KeyError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(text.trim_ascii());
        text.fill(0);
        let mut decoded = decoded.map_err(|_| KeyError::NotBase64 {
            path: path.to_path_buf(),
        })?;
        let Ok(mut bytes) = <[u8; KEY_LEN]>::try_from(decoded.as_slice()) else {
            let found = decoded.len();
            decoded.fill(0);
            return Err(KeyError::WrongLength {
                path: path.to_path_buf(),
                found,
            });
        };
        decoded.fill(0);
        let key = Self::from_bytes(&bytes, path.display().to_string());
        bytes.fill(0);
        key
    }

    /// The key in `path`, or, when there is no such file, a new random key written there first
    /// (0600, whole or not at all, never over a file another process wrote meanwhile). The
    /// flag says whether it was generated now.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool), KeyError> {
        match Self::load(path) {
            Err(KeyError::Missing { .. }) => {}
            other => return other.map(|k| (k, false)),
        }
        let write_err = |source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = random_key()?;
        let mut text = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into_bytes();
        text.push(b'\n');
        bytes.fill(0);
        // Written aside, then linked into place: a link never replaces a file, so of two
        // processes generating at once one key wins and both load it.
        let mut aside_name = path.file_name().unwrap_or_default().to_os_string();
        aside_name.push(format!(".new-{}", std::process::id()));
        let aside = path.with_file_name(aside_name);
        let written = crate::file::write_atomic(&aside, &text, 0o600);
        text.fill(0);
        written.map_err(write_err)?;
        let linked = std::fs::hard_link(&aside, path);
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => Ok((Self::load(path)?, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((Self::load(path)?, false))
            }
            Err(e) => Err(write_err(e)),
        }
    }

    /// The key a control plane with data in `data_dir` seals with: the file the operator named
    /// (`--secrets-key-file`, which must exist), else `<data-dir>/secrets.key`, generated on the
    /// first start (the data directory made first, 0700, as the store would). A key generated
    /// now says so in messages (a store sealed with another key then tells that the key file was
    /// lost), and the start logs it.
    pub fn for_data_dir(data_dir: &Path, named: Option<&Path>) -> Result<Self, KeyError> {
        if let Some(path) = named {
            return Self::load(path);
        }
        let path = data_dir.join(KEY_FILE);
        crate::file::private_dir(data_dir).map_err(|source| KeyError::Write {
            path: path.clone(),
            source,
        })?;
        let (mut key, generated) = Self::load_or_generate(&path)?;
        if generated {
            tracing::info!(key_file = %path.display(), key_id = %key.id, "generated the Secrets key (back it up with the data directory)");
            key.origin = format!(
                "{} (generated at this start: it was missing)",
                path.display()
            );
        }
        Ok(key)
    }

    /// [`SecretsKey::for_data_dir`], also opening what the keys in the `extra` files sealed
    /// (each loaded as [`SecretsKey::load`] does: it must exist and be private).
    pub fn for_data_dir_with_extra(
        data_dir: &Path,
        named: Option<&Path>,
        extra: &[PathBuf],
    ) -> Result<Self, KeyError> {
        let key = Self::for_data_dir(data_dir, named)?;
        let extra = extra
            .iter()
            .map(|p| Self::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(key.with_extra(extra))
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Where the key came from (its file), for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The associated data of an envelope: context, version, key id, the resource's identity.
    fn aad(version: u8, id: &KeyId, identity: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(AAD_CONTEXT.len() + 1 + KEY_ID_LEN + identity.len());
        aad.extend_from_slice(AAD_CONTEXT);
        aad.push(version);
        aad.extend_from_slice(&id.0);
        aad.extend_from_slice(identity);
        aad
    }

    /// Seals `plaintext` as the data of the resource `identity` (e.g. `Secret/<mesh>/<name>`):
    /// a new envelope with a fresh random nonce.
    pub fn seal(&self, identity: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let aad = Self::aad(VERSION, &self.id, identity);
        let mut in_out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        in_out.extend_from_slice(plaintext);
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(aad.as_slice()), &mut in_out)
            .map_err(|_| SealError::Crypto)?;
        let mut out = Vec::with_capacity(HEADER_LEN + in_out.len());
        out.push(VERSION);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&in_out);
        Ok(out)
    }

    /// Opens an envelope sealed for the resource `identity`: its plaintext, or why not (another
    /// key, another resource, altered, not an envelope).
    pub fn open(&self, identity: &[u8], envelope: &[u8]) -> Result<Vec<u8>, SealError> {
        let sealed_with = envelope_key_id(envelope)?;
        if sealed_with != self.id {
            return match self.extra.iter().find(|k| k.id == sealed_with) {
                Some(k) => k.open(identity, envelope),
                None => Err(SealError::OtherKey {
                    sealed_with,
                    held: self.id,
                }),
            };
        }
        if envelope.len() < HEADER_LEN + TAG_LEN {
            return Err(SealError::Malformed {
                reason: "shorter than a header and a tag",
            });
        }
        let nonce = Nonce::try_assume_unique_for_key(&envelope[1 + KEY_ID_LEN..HEADER_LEN])
            .map_err(|_| SealError::Malformed {
                reason: "bad nonce",
            })?;
        let aad = Self::aad(VERSION, &self.id, identity);
        let mut in_out = envelope[HEADER_LEN..].to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_slice()), &mut in_out)
            .map_err(|_| SealError::Unauthentic {
                identity: String::from_utf8_lossy(identity).into_owned(),
            })?
            .len();
        in_out.truncate(plain_len);
        Ok(in_out)
    }
}

/// The id of the key that sealed `envelope` (checks the version too).
pub fn envelope_key_id(envelope: &[u8]) -> Result<KeyId, SealError> {
    let Some(&version) = envelope.first() else {
        return Err(SealError::Malformed { reason: "empty" });
    };
    if version != VERSION {
        return Err(SealError::Version { found: version });
    }
    let Some(id) = envelope.get(1..1 + KEY_ID_LEN) else {
        return Err(SealError::Malformed {
            reason: "shorter than a header",
        });
    };
    let mut out = [0u8; KEY_ID_LEN];
    out.copy_from_slice(id);
    Ok(KeyId(out))
}

fn random_key() -> Result<[u8; KEY_LEN], KeyError> {
    let mut bytes = [0u8; KEY_LEN];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyError::Crypto)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const ID: &[u8] = b"Secret/m/s";

    fn key_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("k");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn seals_and_opens_with_a_fresh_nonce_each_time() {
        let k = SecretsKey::generate().unwrap();
        let a = k.seal(ID, b"hello").unwrap();
        let b = k.seal(ID, b"hello").unwrap();
        assert_ne!(a, b, "a random nonce per seal");
        assert_eq!(a.len(), HEADER_LEN + 5 + TAG_LEN);
        assert_eq!(a[0], VERSION);
        assert_eq!(envelope_key_id(&a).unwrap(), k.id());
        assert!(!a.windows(5).any(|w| w == b"hello"), "no plaintext");
        assert_eq!(k.open(ID, &a).unwrap(), b"hello");
        assert_eq!(k.open(ID, &b).unwrap(), b"hello");
        assert_eq!(k.open(ID, &k.seal(ID, b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn extra_keys_open_what_they_sealed_and_never_seal() {
        let old = SecretsKey::generate().unwrap();
        let (old_id, by_old) = (old.id(), old.seal(ID, b"before").unwrap());
        let new = SecretsKey::generate().unwrap();
        let new_id = new.id();
        let stranger = SecretsKey::generate().unwrap();
        let by_stranger = stranger.seal(ID, b"x").unwrap();
        let third = SecretsKey::generate().unwrap();
        let third_id = third.id();
        let ring = new.with_extra(vec![old, third]);
        assert!(ring.opens(old_id) && ring.opens(third_id) && ring.opens(new_id));
        assert!(!ring.opens(stranger.id()));
        assert_eq!(ring.open(ID, &by_old).unwrap(), b"before");
        assert!(
            !ring.is_current(&by_old),
            "sealed by an extra key: to seal again"
        );
        let by_ring = ring.seal(ID, b"after").unwrap();
        assert_eq!(
            envelope_key_id(&by_ring).unwrap(),
            new_id,
            "seals with its own key"
        );
        assert!(ring.is_current(&by_ring));
        assert_eq!(
            ring.open(ID, &by_stranger).unwrap_err(),
            SealError::OtherKey {
                sealed_with: stranger.id(),
                held: new_id
            }
        );
        // The extra key's identity binding holds as the key's own does.
        assert!(matches!(
            ring.open(b"Secret/m/other", &by_old).unwrap_err(),
            SealError::Unauthentic { .. }
        ));
        assert!(!format!("{ring:?}").contains("before"));
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let k = SecretsKey::generate().unwrap();
        let sealed = k.seal(ID, b"some secret data").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = k.open(ID, &bad).unwrap_err();
            match i {
                0 => assert_eq!(err, SealError::Version { found: VERSION ^ 1 }),
                1..=8 => assert!(matches!(err, SealError::OtherKey { .. }), "{i}: {err}"),
                _ => assert!(matches!(err, SealError::Unauthentic { .. }), "{i}: {err}"),
            }
        }
        // Cut short, or extended.
        assert!(k.open(ID, &sealed[..sealed.len() - 1]).is_err());
        assert!(k.open(ID, &sealed[..HEADER_LEN]).is_err());
        assert!(k.open(ID, &sealed[..3]).is_err());
        assert!(k.open(ID, &[]).is_err());
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(k.open(ID, &longer).is_err());
    }

    #[test]
    fn a_value_moved_to_another_resource_is_refused() {
        let k = SecretsKey::generate().unwrap();
        let sealed = k.seal(b"Secret/m/a", b"data").unwrap();
        for other in [&b"Secret/m/b"[..], b"Secret/n/a", b"Mesh/m/a", b""] {
            let err = k.open(other, &sealed).unwrap_err();
            assert!(matches!(err, SealError::Unauthentic { .. }), "{err}");
        }
        assert_eq!(k.open(b"Secret/m/a", &sealed).unwrap(), b"data");
    }

    #[test]
    fn another_key_is_named_by_its_id() {
        let a = SecretsKey::generate().unwrap();
        let b = SecretsKey::generate().unwrap();
        assert_ne!(a.id(), b.id());
        let sealed = a.seal(ID, b"data").unwrap();
        let err = b.open(ID, &sealed).unwrap_err();
        assert_eq!(
            err,
            SealError::OtherKey {
                sealed_with: a.id(),
                held: b.id()
            }
        );
        let text = err.to_string();
        assert!(text.contains(&a.id().to_string()), "{text}");
        assert!(text.contains(&b.id().to_string()), "{text}");
        // The same id with other key bytes (a forged header): the tag still refuses it.
        let mut forged = b.seal(ID, b"data").unwrap();
        forged[1..9].copy_from_slice(&a.id().0);
        assert!(matches!(
            a.open(ID, &forged).unwrap_err(),
            SealError::Unauthentic { .. }
        ));
    }

    #[test]
    fn key_files_are_checked_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let k = SecretsKey::load(&key_file(dir.path(), &format!("  {good}\n"), 0o600)).unwrap();
        let again = SecretsKey::load(&key_file(dir.path(), &good, 0o400)).unwrap();
        assert_eq!(k.id(), again.id(), "the id depends on the key alone");
        let expected = hex::encode(&Sha256::digest([7u8; 32])[..8]);
        assert_eq!(k.id().to_string(), expected);

        let missing = SecretsKey::load(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, KeyError::Missing { .. }), "{missing}");
        assert!(missing.to_string().contains("does not exist"));
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let err = SecretsKey::load(&key_file(dir.path(), &short, 0o600)).unwrap_err();
        assert!(
            matches!(err, KeyError::WrongLength { found: 16, .. }),
            "{err}"
        );
        let err = SecretsKey::load(&key_file(dir.path(), "not base64 at all!", 0o600)).unwrap_err();
        assert!(matches!(err, KeyError::NotBase64 { .. }), "{err}");
        let err = SecretsKey::load(&key_file(dir.path(), "", 0o600)).unwrap_err();
        assert!(
            matches!(err, KeyError::WrongLength { found: 0, .. }),
            "{err}"
        );
        for mode in [0o604, 0o644, 0o602, 0o666] {
            let err = SecretsKey::load(&key_file(dir.path(), &good, mode)).unwrap_err();
            assert!(matches!(err, KeyError::Exposed { .. }), "{mode:o}: {err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        // Messages name the file, never its content.
        let err = SecretsKey::load(&key_file(dir.path(), &good, 0o644)).unwrap_err();
        assert!(!err.to_string().contains(&good));
        assert!(!format!("{err:?}").contains(&good));
    }

    #[test]
    fn a_missing_key_file_is_generated_once_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let (k, generated) = SecretsKey::load_or_generate(&path).unwrap();
        assert!(generated);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap();
        assert_eq!(bytes.len(), KEY_LEN);
        let (again, generated) = SecretsKey::load_or_generate(&path).unwrap();
        assert!(!generated);
        assert_eq!(again.id(), k.id());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "nothing left aside"
        );
        // An unusable file is not replaced.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SecretsKey::load_or_generate(&path).unwrap_err(),
            KeyError::Exposed { .. }
        ));
    }

    #[test]
    fn debug_shows_the_id_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let raw = [0x42u8; 32];
        let text = base64::engine::general_purpose::STANDARD.encode(raw);
        let k = SecretsKey::load(&key_file(dir.path(), &text, 0o600)).unwrap();
        let debug = format!("{k:?}");
        assert!(debug.contains(&k.id().to_string()), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
        assert!(!debug.contains(&text), "{debug}");
        assert!(!debug.contains(&hex::encode(raw)), "{debug}");
        assert!(!debug.contains("66, 66"), "{debug}");
    }
}
