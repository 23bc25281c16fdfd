//! Signed tokens: zone tokens (`global zone-token`), dataplane tokens (`global
//! dataplane-token`) and user tokens (`global generate user-token`), through one signer. A token is a standard JWT (RFC 7519) signed with Ed25519
//! (`alg: EdDSA`) by a key that global creates on first start in
//! `<data-dir>/token-signing-key.pem` (PKCS#8, mode 0600). The claims are `scope`, `iat`, `exp`,
//! `jti` plus the scope's own claims (`zone` for zone tokens; `mesh` and `name` for dataplane
//! tokens; `name`, `group` and `meshes` for user tokens). Verification needs only the public keys
//! (`TokenVerifier`): global sends them to zones over the sync stream with the ids of revoked
//! tokens, and zones verify proxies' dataplane tokens with them (`KeySet`, which refuses a revoked
//! `jti`). Global may hold several keys at once (rotation): each token names its key in `kid`.
//!
//! Signing lives here too (not only in global) so that the signer and the verifier are tested
//! together and tests can mint tokens (expired, forged) without a running global.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File name of the signing key in the data directory.
pub const KEY_FILE: &str = "token-signing-key.pem";
/// Scope of zone tokens.
pub const ZONE_SCOPE: &str = "zone";
/// Scope of dataplane tokens.
pub const DATAPLANE_SCOPE: &str = "dataplane";
/// Scope of user tokens (the API's users).
pub const USER_SCOPE: &str = "user";
/// Default validity of a token (`--valid-for`).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(720 * 3600);
/// The only algorithm of verifying keys.
pub const ED25519_ALGORITHM: &str = "Ed25519";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token signature is invalid (forged, or signed by another global control plane)")]
    BadSignature,
    #[error("the token expired at {0}")]
    Expired(String),
    #[error("the token is not valid before {0}")]
    NotYetValid(String),
    #[error("the token has scope {found:?}, expected {expected:?}")]
    WrongScope { expected: String, found: String },
    #[error("the token {0} was revoked")]
    Revoked(String),
}

impl TokenError {
    /// A short stable name of the cause, for metrics and log keys.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Expired(_) => "expired",
            TokenError::BadSignature => "forged",
            TokenError::WrongScope { .. } => "wrong_scope",
            TokenError::NotYetValid(_) => "not_yet_valid",
            TokenError::Malformed(_) => "malformed",
            TokenError::Revoked(_) => "revoked",
        }
    }
}

/// The claims every token carries, with the scope's own claims flattened in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims<T> {
    pub scope: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// Unique token id.
    pub jti: String,
    #[serde(flatten)]
    pub body: T,
}

/// The claim of a zone token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneClaim {
    pub zone: String,
}

/// The groups of API users (`global generate user-token --group`), as SPEC.md defines them:
/// `admin` may do everything; `operator` writes, deletes and reads the Secrets of its meshes and
/// reads everything else but Secrets; `viewer` reads meshes, zones, dataplanes and replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    Admin,
    Operator,
    Viewer,
}

impl Group {
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Admin => "admin",
            Group::Operator => "operator",
            Group::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Group {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Group::Admin),
            "operator" => Ok(Group::Operator),
            "viewer" => Ok(Group::Viewer),
            _ => Err(format!(
                "{s:?} is not a group: use admin, operator or viewer"
            )),
        }
    }
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims of a user token: who (for the audit log), the group, and for operators the meshes
/// they may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaim {
    pub name: String,
    pub group: Group,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meshes: Vec<String>,
}

/// The claims of a dataplane token: the one mesh and dataplane name it is good for, the service
/// the proxy may register and the tags it must register with the values bound here (as Kuma's
/// dataplane tokens bind tags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneClaim {
    pub mesh: String,
    pub name: String,
    /// The `kuma.io/service` the proxy may register. `None` in tokens made before services were
    /// bound, and in those made for any service (`any_service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// More tags the proxy must register, with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Made with `--any-service`: the proxy may register any service.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_service: bool,
}

/// Why a dataplane token does not allow what a proxy registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotGranted {
    /// A short cause, for metrics and logs (`other_service`, `other_tag`).
    pub cause: &'static str,
    pub message: String,
}

impl DataplaneClaim {
    /// A claim for proxy `name` of `mesh`, bound to `service`.
    pub fn bound(mesh: &str, name: &str, service: &str) -> Self {
        Self {
            mesh: mesh.to_string(),
            name: name.to_string(),
            service: Some(service.to_string()),
            tags: BTreeMap::new(),
            any_service: false,
        }
    }

    /// A claim for proxy `name` of `mesh` that lets it register any service.
    pub fn any_service(mesh: &str, name: &str) -> Self {
        Self {
            any_service: true,
            service: None,
            ..Self::bound(mesh, name, "")
        }
    }

    /// Whether the token allows a proxy registering `tags`: `Ok(Some(warning))` for a token
    /// made before services were bound (it works, for its name, as it did).
    pub fn allows(&self, tags: &BTreeMap<String, String>) -> Result<Option<String>, NotGranted> {
        let shown = |v: Option<&String>| v.map_or("none".to_string(), |v| format!("{v:?}"));
        if let Some(service) = &self.service {
            let asked = tags.get(crate::model::SERVICE_TAG);
            if asked != Some(service) {
                return Err(NotGranted {
                    cause: "other_service",
                    message: format!(
                        "dataplane token refused: it grants service {service:?}, but this proxy registers service {}",
                        shown(asked)
                    ),
                });
            }
        }
        for (k, v) in &self.tags {
            let asked = tags.get(k);
            if asked != Some(v) {
                return Err(NotGranted {
                    cause: "other_tag",
                    message: format!(
                        "dataplane token refused: it binds tag {k}={v:?}, but this proxy registers {k}={}",
                        shown(asked)
                    ),
                });
            }
        }
        Ok((self.service.is_none() && !self.any_service).then(|| {
            "its dataplane token binds no service (made before tokens bound services): make a new one with `global dataplane-token --mesh M --name N --service S`".to_string()
        }))
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    #[serde(default)]
    kid: String,
}

/// [`crate::clock::now_unix`] as token claims carry it (`iat`, `exp`: unsigned seconds).
pub fn now_unix() -> u64 {
    u64::try_from(crate::clock::now_unix()).unwrap_or(0)
}

/// RFC 3339 of unix seconds (the number itself when out of range).
pub fn rfc3339(unix: u64) -> String {
    crate::clock::rfc3339(unix as i64).unwrap_or_else(|| unix.to_string())
}

/// Key id: the first 8 bytes of the SHA-256 of the public key, hex.
fn key_id(public: &[u8]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// Signs tokens with global's key. `Debug` never shows the key.
pub struct TokenSigner {
    key: Ed25519KeyPair,
    verifier: TokenVerifier,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.verifier.kid)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A fresh key that lives in memory only (tests).
    pub fn generate() -> Self {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .expect("Ed25519 key generation does not fail");
        Self::from_pkcs8(doc.as_ref()).expect("a freshly generated key parses")
    }

    /// A fresh key and its PKCS#8 PEM (to be stored: `Debug` of the signer never shows it).
    pub fn generate_pem() -> (Self, String) {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .expect("Ed25519 key generation does not fail");
        let text = pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()));
        let signer = Self::from_pkcs8(doc.as_ref()).expect("a freshly generated key parses");
        (signer, text)
    }

    /// A signer from a PKCS#8 PEM (`PRIVATE KEY`) as [`Self::generate_pem`] made it.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let block = pem::parse(text.as_bytes()).map_err(|e| e.to_string())?;
        Self::from_pkcs8(block.contents())
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let key = Ed25519KeyPair::from_pkcs8(der).map_err(|e| e.to_string())?;
        let public = key.public_key().as_ref().to_vec();
        Ok(Self {
            verifier: TokenVerifier {
                kid: key_id(&public),
                public,
            },
            key,
        })
    }

    /// Reads `<dir>/token-signing-key.pem`, creating it (mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(KEY_FILE);
        let invalid = |reason: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {reason}", path.display()),
            )
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let block = pem::parse(text.as_bytes()).map_err(|e| invalid(e.to_string()))?;
                return Self::from_pkcs8(block.contents()).map_err(invalid);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| invalid(e.to_string()))?;
        let text = pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()));
        crate::file::write_atomic(&path, text.as_bytes(), 0o600)?;
        Self::from_pkcs8(doc.as_ref()).map_err(invalid)
    }

    /// The public half, enough to verify.
    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    /// Signs claims as they are (the caller sets `iat`/`exp`; tests use this for expired tokens).
    pub fn sign<T: Serialize>(&self, claims: &Claims<T>) -> String {
        let header = Header {
            alg: "EdDSA".into(),
            typ: "JWT".into(),
            kid: self.verifier.kid.clone(),
        };
        let header = B64.encode(serde_json::to_vec(&header).expect("header serializes"));
        let claims = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signing_input = format!("{header}.{claims}");
        let signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(signature.as_ref()))
    }

    /// Issues a token of `scope` valid for `valid_for` from now.
    pub fn issue<T: Serialize>(&self, scope: &str, body: T, valid_for: Duration) -> String {
        let iat = now_unix();
        let jti: [u8; 16] = rand::random();
        self.sign(&Claims {
            scope: scope.to_string(),
            iat,
            exp: iat.saturating_add(valid_for.as_secs()),
            jti: hex::encode(jti),
            body,
        })
    }

    /// A zone token for `zone`.
    pub fn issue_zone_token(&self, zone: &str, valid_for: Duration) -> String {
        self.issue(
            ZONE_SCOPE,
            ZoneClaim {
                zone: zone.to_string(),
            },
            valid_for,
        )
    }

    /// A dataplane token for the dataplane `name` of `mesh`.
    pub fn issue_dataplane_token(&self, claim: DataplaneClaim, valid_for: Duration) -> String {
        self.issue(DATAPLANE_SCOPE, claim, valid_for)
    }

    /// A user token of the API.
    pub fn issue_user_token(&self, claim: UserClaim, valid_for: Duration) -> String {
        self.issue(USER_SCOPE, claim, valid_for)
    }
}

/// What a token says of itself, read without checking its signature: its id (`jti`), the key
/// that signed it (`kid`), its scope and expiry. For naming a token to revoke (`global
/// revoke-token --token-file`), never for trusting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenId {
    pub jti: String,
    pub kid: String,
    pub scope: String,
    pub exp: u64,
}

/// Reads a token's [`TokenId`] without verifying it.
pub fn token_id(token: &str) -> Result<TokenId, TokenError> {
    let parts = split(token)?;
    #[derive(Deserialize)]
    struct Seen {
        scope: String,
        exp: u64,
        jti: String,
    }
    let seen: Seen = serde_json::from_slice(&decode("claims", parts.claims_b64)?)
        .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
    Ok(TokenId {
        jti: seen.jti,
        kid: parts.kid,
        scope: seen.scope,
        exp: seen.exp,
    })
}

/// Verifies tokens with global's public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenVerifier {
    kid: String,
    public: Vec<u8>,
}

impl TokenVerifier {
    /// A verifier from a raw Ed25519 public key (as sent to zones).
    pub fn from_public_key(public: &[u8]) -> Result<Self, String> {
        if public.len() != 32 {
            return Err(format!(
                "an Ed25519 public key has 32 bytes, this one {}",
                public.len()
            ));
        }
        Ok(Self {
            kid: key_id(public),
            public: public.to_vec(),
        })
    }

    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// The key id, as in the `kid` header of the tokens it verifies.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks signature, scope and validity period; returns the claims.
    pub fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        scope: &str,
    ) -> Result<Claims<T>, TokenError> {
        self.verify_at(token, scope, now_unix())
    }

    pub fn verify_at<T: DeserializeOwned>(
        &self,
        token: &str,
        scope: &str,
        now: u64,
    ) -> Result<Claims<T>, TokenError> {
        verify_token(std::slice::from_ref(self), false, token, scope, now)
    }
}

/// The verifying keys a control plane holds, and the ids of revoked tokens: a token is checked
/// with the key its `kid` names (or every key when it names none), then refused when revoked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<TokenVerifier>,
    revoked: std::collections::BTreeSet<String>,
}

impl KeySet {
    pub fn new(keys: Vec<TokenVerifier>) -> Self {
        Self {
            keys,
            revoked: Default::default(),
        }
    }

    /// The same keys, refusing the tokens whose `jti` is in `revoked`.
    pub fn with_revoked(mut self, revoked: impl IntoIterator<Item = String>) -> Self {
        self.revoked = revoked.into_iter().collect();
        self
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.contains(jti)
    }

    pub fn revoked(&self) -> &std::collections::BTreeSet<String> {
        &self.revoked
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[TokenVerifier] {
        &self.keys
    }

    pub fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        scope: &str,
    ) -> Result<Claims<T>, TokenError> {
        self.verify_at(token, scope, now_unix())
    }

    pub fn verify_at<T: DeserializeOwned>(
        &self,
        token: &str,
        scope: &str,
        now: u64,
    ) -> Result<Claims<T>, TokenError> {
        let claims: Claims<T> = verify_token(&self.keys, true, token, scope, now)?;
        if self.revoked.contains(&claims.jti) {
            return Err(TokenError::Revoked(claims.jti));
        }
        Ok(claims)
    }
}

/// Splits `token`, checks its signature with one of `keys` (with `by_kid`, only those its `kid`
/// names, or every key when it names none), then its scope and validity period at `now`.
fn verify_token<T: DeserializeOwned>(
    keys: &[TokenVerifier],
    by_kid: bool,
    token: &str,
    scope: &str,
    now: u64,
) -> Result<Claims<T>, TokenError> {
    let parts = split(token)?;
    let signed = keys
        .iter()
        .filter(|k| !by_kid || parts.kid.is_empty() || k.kid == parts.kid)
        .any(|k| check_signature(&k.public, &parts).is_ok());
    if !signed {
        return Err(TokenError::BadSignature);
    }
    parts.claims(scope, now)
}

/// A token cut into its parts, the header checked.
struct Parts<'a> {
    kid: String,
    signing_input: &'a str,
    claims_b64: &'a str,
    signature: Vec<u8>,
}

fn decode(what: &str, part: &str) -> Result<Vec<u8>, TokenError> {
    B64.decode(part)
        .map_err(|e| TokenError::Malformed(format!("{what} is not base64url: {e}")))
}

fn split(token: &str) -> Result<Parts<'_>, TokenError> {
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three dot-separated parts (a JWT)".into(),
        ));
    };
    let header: Header = serde_json::from_slice(&decode("header", h)?)
        .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
    if header.alg != "EdDSA" {
        return Err(TokenError::Malformed(format!(
            "algorithm {:?} is not accepted (EdDSA only)",
            header.alg
        )));
    }
    Ok(Parts {
        kid: header.kid,
        signing_input: &token[..h.len() + 1 + c.len()],
        claims_b64: c,
        signature: decode("signature", s)?,
    })
}

fn check_signature(public: &[u8], parts: &Parts<'_>) -> Result<(), TokenError> {
    UnparsedPublicKey::new(&ED25519, public)
        .verify(parts.signing_input.as_bytes(), &parts.signature)
        .map_err(|_| TokenError::BadSignature)
}

impl Parts<'_> {
    /// Claims are only parsed once the signature holds.
    fn claims<T: DeserializeOwned>(&self, scope: &str, now: u64) -> Result<Claims<T>, TokenError> {
        let bytes = decode("claims", self.claims_b64)?;
        // The scope first: a token of another scope lacks this scope's claims.
        #[derive(Deserialize)]
        struct Scope {
            scope: String,
        }
        let found: Scope = serde_json::from_slice(&bytes)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        if found.scope != scope {
            return Err(TokenError::WrongScope {
                expected: scope.to_string(),
                found: found.scope,
            });
        }
        let claims: Claims<T> = serde_json::from_slice(&bytes)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        if claims.scope != scope {
            return Err(TokenError::WrongScope {
                expected: scope.to_string(),
                found: claims.scope,
            });
        }
        // The signer's clock and ours may disagree: both ends get the stated leeway.
        let leeway = crate::clock::LEEWAY.as_secs();
        if now >= claims.exp.saturating_add(leeway) {
            return Err(TokenError::Expired(rfc3339(claims.exp)));
        }
        if claims.iat > now + leeway {
            return Err(TokenError::NotYetValid(rfc3339(claims.iat)));
        }
        Ok(claims)
    }
}

/// Whether `name` can name a zone: a DNS label (lowercase letters, digits, `-`), 1 to 63 long.
pub fn check_zone_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty()
        || name.len() > 63
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "{name:?} is not a valid zone name: use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod binding_tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_token_allows_only_the_service_and_tags_it_binds() {
        let mut c = DataplaneClaim::bound("m", "web-1", "web");
        c.tags.insert("version".into(), "v1".into());
        let ok = tags(&[("kuma.io/service", "web"), ("version", "v1"), ("team", "a")]);
        assert_eq!(c.allows(&ok), Ok(None));
        let e = c
            .allows(&tags(&[("kuma.io/service", "backend"), ("version", "v1")]))
            .unwrap_err();
        assert_eq!(e.cause, "other_service");
        let e = c
            .allows(&tags(&[("kuma.io/service", "web"), ("version", "v2")]))
            .unwrap_err();
        assert_eq!(e.cause, "other_tag");
        assert!(e.message.contains("version=\"v1\""), "{}", e.message);
        let e = c.allows(&tags(&[("kuma.io/service", "web")])).unwrap_err();
        assert!(
            e.message.contains("registers version=none"),
            "{}",
            e.message
        );
        let any = DataplaneClaim::any_service("m", "web-1");
        assert_eq!(any.allows(&tags(&[("kuma.io/service", "x")])), Ok(None));
        // Made before services were bound: allowed, with a warning.
        let legacy = DataplaneClaim {
            service: None,
            ..DataplaneClaim::bound("m", "web-1", "")
        };
        assert!(legacy.allows(&ok).unwrap().is_some());
        // An old token's JSON (mesh and name only) still reads.
        let old: DataplaneClaim = serde_json::from_str(r#"{"mesh":"m","name":"n"}"#).unwrap();
        assert_eq!((old.service, old.any_service), (None, false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_token_roundtrip_and_refusals() {
        let signer = TokenSigner::generate();
        let token = signer.issue_zone_token("zone-1", Duration::from_secs(3600));
        let claims: Claims<ZoneClaim> = signer.verifier().verify(&token, ZONE_SCOPE).unwrap();
        assert_eq!(claims.body.zone, "zone-1");
        assert_eq!(claims.exp - claims.iat, 3600);
        assert_eq!(claims.jti.len(), 32);

        // Another key: forged.
        let other = TokenSigner::generate();
        let forged = other.issue_zone_token("zone-1", Duration::from_secs(3600));
        assert_eq!(
            signer.verifier().verify::<ZoneClaim>(&forged, ZONE_SCOPE),
            Err(TokenError::BadSignature)
        );
        // Tampered claims keep the old signature: forged too.
        let parts: Vec<&str> = token.split('.').collect();
        let tampered_claims = B64.encode(
            serde_json::to_vec(&Claims {
                body: ZoneClaim {
                    zone: "zone-2".into(),
                },
                ..claims.clone()
            })
            .unwrap(),
        );
        let tampered = format!("{}.{}.{}", parts[0], tampered_claims, parts[2]);
        assert_eq!(
            signer.verifier().verify::<ZoneClaim>(&tampered, ZONE_SCOPE),
            Err(TokenError::BadSignature)
        );
        // Expired.
        let expired = signer.sign(&Claims {
            scope: ZONE_SCOPE.into(),
            iat: 1,
            exp: 2,
            jti: "x".into(),
            body: ZoneClaim {
                zone: "zone-1".into(),
            },
        });
        assert!(matches!(
            signer.verifier().verify::<ZoneClaim>(&expired, ZONE_SCOPE),
            Err(TokenError::Expired(_))
        ));
        // Wrong scope.
        assert!(matches!(
            signer
                .verifier()
                .verify::<ZoneClaim>(&token, DATAPLANE_SCOPE),
            Err(TokenError::WrongScope { .. })
        ));
        // Garbage.
        assert!(matches!(
            signer.verifier().verify::<ZoneClaim>("abc", ZONE_SCOPE),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn dataplane_tokens_verify_with_the_public_key_alone() {
        let signer = TokenSigner::generate();
        let token = signer.issue_dataplane_token(
            DataplaneClaim::bound("default", "web-1", "web"),
            Duration::from_secs(60),
        );
        // What a zone gets over the sync stream: the raw public key.
        let verifier = TokenVerifier::from_public_key(signer.verifier().public_key()).unwrap();
        assert_eq!(verifier.kid(), signer.verifier().kid());
        let keys = KeySet::new(vec![
            TokenVerifier::from_public_key(TokenSigner::generate().verifier().public_key())
                .unwrap(),
            verifier,
        ]);
        let claims: Claims<DataplaneClaim> = keys.verify(&token, DATAPLANE_SCOPE).unwrap();
        assert_eq!(
            claims.body,
            DataplaneClaim::bound("default", "web-1", "web")
        );
        // A zone token is not a dataplane token.
        let zone = signer.issue_zone_token("z", Duration::from_secs(60));
        assert!(matches!(
            keys.verify::<DataplaneClaim>(&zone, DATAPLANE_SCOPE),
            Err(TokenError::WrongScope { .. })
        ));
        // Another global's token, and no keys at all.
        let forged = TokenSigner::generate().issue_dataplane_token(
            DataplaneClaim::bound("default", "web-1", "web"),
            Duration::MAX,
        );
        assert_eq!(
            keys.verify::<DataplaneClaim>(&forged, DATAPLANE_SCOPE),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            KeySet::default().verify::<DataplaneClaim>(&token, DATAPLANE_SCOPE),
            Err(TokenError::BadSignature)
        );
        assert!(TokenVerifier::from_public_key(b"short").is_err());
    }

    #[test]
    fn key_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = TokenSigner::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = TokenSigner::load_or_create(dir.path()).unwrap();
        let token = a.issue_zone_token("z", Duration::from_secs(60));
        assert!(b.verifier().verify::<ZoneClaim>(&token, ZONE_SCOPE).is_ok());
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }
}
