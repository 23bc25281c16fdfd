//! The resource model: Mesh (with its mTLS CA backends), Secret and Dataplane, in the Universal form
//! of the reference page. Only the shapes live here; parsing of documents is in `parse`, semantic
//! checks in `validate`. Secret material (Secret data, inline data sources) is redacted from `Debug`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// The kinds of resource the control planes know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Mesh,
    Secret,
    Dataplane,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mesh => "Mesh",
            Kind::Secret => "Secret",
            Kind::Dataplane => "Dataplane",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resource of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Mesh(Mesh),
    Secret(Secret),
    Dataplane(Dataplane),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Mesh(_) => Kind::Mesh,
            Resource::Secret(_) => Kind::Secret,
            Resource::Dataplane(_) => Kind::Dataplane,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Resource::Mesh(m) => &m.name,
            Resource::Secret(s) => &s.name,
            Resource::Dataplane(d) => &d.name,
        }
    }

    /// The mesh a resource belongs to; a Mesh belongs to itself.
    pub fn mesh(&self) -> &str {
        match self {
            Resource::Mesh(m) => &m.name,
            Resource::Secret(s) => &s.mesh,
            Resource::Dataplane(d) => &d.mesh,
        }
    }
}

/// `type: Mesh`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mesh {
    #[serde(rename = "type", default = "mesh_type")]
    pub type_: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
}

fn mesh_type() -> String {
    "Mesh".to_string()
}

impl Mesh {
    /// The enabled backend, if mTLS is on and `enabledBackend` names one.
    pub fn enabled_backend(&self) -> Option<&Backend> {
        let mtls = self.mtls.as_ref()?;
        let name = mtls.enabled_backend.as_deref()?;
        mtls.backends.iter().find(|b| b.name == name)
    }

    pub fn backends(&self) -> &[Backend] {
        self.mtls
            .as_ref()
            .map(|m| m.backends.as_slice())
            .unwrap_or(&[])
    }
}

/// `mtls:` of a Mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mtls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_backend: Option<String>,
    #[serde(default)]
    pub backends: Vec<Backend>,
}

/// One CA backend. `conf` is kept raw here and typed per `type` by [`Backend::typed_conf`], so that
/// validation can name the exact field path of any problem inside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_cert: Option<DpCert>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<serde_json::Value>,
}

/// Default lifetime of a proxy certificate when `dpCert.rotation.expiration` is not set (Kuma's).
pub const DEFAULT_DP_CERT_EXPIRATION: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

impl Backend {
    pub fn backend_type(&self) -> Option<BackendType> {
        BackendType::parse(&self.type_)
    }

    /// `dpCert.rotation.expiration`, or 24h.
    pub fn dp_cert_expiration(&self) -> std::time::Duration {
        self.dp_cert
            .as_ref()
            .and_then(|d| d.rotation.as_ref())
            .and_then(|r| r.expiration.as_ref())
            .map(|e| e.as_duration())
            .unwrap_or(DEFAULT_DP_CERT_EXPIRATION)
    }

    /// `dpCert.keyGeneration`, or the control plane.
    pub fn key_generation(&self) -> KeyGeneration {
        self.dp_cert
            .as_ref()
            .and_then(|d| d.key_generation)
            .unwrap_or_default()
    }

    /// `dpCert.keyType`, or EC P-256.
    pub fn key_type(&self) -> KeyType {
        self.dp_cert
            .as_ref()
            .and_then(|d| d.key_type)
            .unwrap_or_default()
    }

    /// `dpCert.uriSans`, or Kuma's.
    pub fn uri_sans(&self) -> UriSans {
        self.dp_cert
            .as_ref()
            .and_then(|d| d.uri_sans)
            .unwrap_or_default()
    }

    /// The conf parsed for this backend's type. Errors carry the field path below `conf`
    /// (e.g. `fromCp.auth.token`).
    pub fn typed_conf(&self) -> Result<BackendConf, ConfError> {
        let raw = self.conf.clone().unwrap_or(serde_json::Value::Null);
        let raw = if raw.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            raw
        };
        match self.backend_type() {
            Some(BackendType::Builtin) => from_value(raw).map(BackendConf::Builtin),
            Some(BackendType::Provided) => from_value(raw).map(BackendConf::Provided),
            Some(BackendType::Vault) => from_value(raw).map(BackendConf::Vault),
            None => Err(ConfError {
                path: String::new(),
                reason: format!(
                    "unknown backend type {:?}: must be builtin, provided or vault",
                    self.type_
                ),
            }),
        }
    }
}

/// A problem with a backend's conf: `path` is relative to `conf` (empty for the conf itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError {
    pub path: String,
    pub reason: String,
}

fn from_value<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ConfError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        ConfError {
            path: if path == "." { String::new() } else { path },
            reason: e.into_inner().to_string(),
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendType {
    Builtin,
    Provided,
    Vault,
}

impl BackendType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "builtin" => Some(Self::Builtin),
            "provided" => Some(Self::Provided),
            "vault" => Some(Self::Vault),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Builtin => "builtin",
            Self::Provided => "provided",
            Self::Vault => "vault",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DpCert {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
    /// Who generates a proxy's key (default: the control plane, as the reference page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_generation: Option<KeyGeneration>,
    /// The key a proxy generates (`keyGeneration: proxy` only; default EC P-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<KeyType>,
    /// Which URI SANs a proxy certificate carries (default: Kuma's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_sans: Option<UriSans>,
}

/// `dpCert.keyGeneration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyGeneration {
    /// The zone obtains key and certificate (vault: `<pki>/issue/<role>`).
    #[default]
    ControlPlane,
    /// The proxy's agent generates its key and sends a CSR (vault: `<pki>/sign/<role>`): the key
    /// never leaves the proxy's host.
    Proxy,
}

/// `dpCert.keyType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KeyType {
    #[default]
    #[serde(rename = "ec-p256")]
    EcP256,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyType {
    /// The type of `dpCert.keyType` words (`ec-p256`, `rsa-2048`, `rsa-4096`).
    pub fn parse(s: &str) -> Option<Self> {
        [Self::EcP256, Self::Rsa2048, Self::Rsa4096]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa4096 => "rsa-4096",
        }
    }
}

/// `dpCert.uriSans`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UriSans {
    /// The SPIFFE ID and one `kuma://TAG/VALUE` per tag, as Kuma.
    #[default]
    Kuma,
    /// Exactly one URI SAN, the SPIFFE ID `spiffe://<mesh>/<service>`: an X.509-SVID.
    Spiffe,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rotation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<HumanDuration>,
}

/// A backend's conf, typed. Short-lived (built on demand from the raw conf), so variant sizes
/// do not matter.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum BackendConf {
    Builtin(BuiltinConf),
    Provided(ProvidedConf),
    Vault(VaultConf),
}

/// `conf` of a builtin backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuiltinConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<BuiltinCaCert>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinCaCert {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<HumanDuration>,
    #[serde(rename = "RSAbits", default, skip_serializing_if = "Option::is_none")]
    pub rsa_bits: Option<u32>,
}

/// `conf` of a provided backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProvidedConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<DataSource>,
}

/// `conf` of a vault backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_cp: Option<FromCp>,
}

/// `conf.fromCp` of a vault backend: how the control plane reaches Vault.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromCp {
    #[serde(default)]
    pub address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default)]
    pub pki: String,
    #[serde(default)]
    pub role: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub common_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<VaultTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<VaultAuth>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<DataSource>,
    #[serde(default)]
    pub skip_verify: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_name: String,
}

/// `conf.fromCp.auth`: exactly one of `token`, `tls`, `approle`, `jwt` (checked by validation).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<VaultAuthTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approle: Option<VaultAuthAppRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<VaultAuthJwt>,
}

/// The mount of AppRole auth when `auth.approle.mount` is not set.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";
/// The mount of JWT auth when `auth.jwt.mount` is not set.
pub const DEFAULT_JWT_MOUNT: &str = "jwt";

impl VaultAuth {
    /// The names of the methods set (`token`, `tls`, `approle`, `jwt`), in that order.
    pub fn methods(&self) -> Vec<&'static str> {
        [
            ("token", self.token.is_some()),
            ("tls", self.tls.is_some()),
            ("approle", self.approle.is_some()),
            ("jwt", self.jwt.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name)
        .collect()
    }

    /// Every data source of the block, with its field below `auth` (`token`,
    /// `tls.clientCert`, `approle.secretId`, `jwt.token`...): what a login is made of.
    pub fn data_sources(&self) -> Vec<(&'static str, &DataSource)> {
        let tls = self.tls.as_ref();
        let approle = self.approle.as_ref();
        [
            ("token", self.token.as_ref()),
            ("tls.clientCert", tls.and_then(|t| t.client_cert.as_ref())),
            ("tls.clientKey", tls.and_then(|t| t.client_key.as_ref())),
            ("approle.roleId", approle.and_then(|a| a.role_id.as_ref())),
            (
                "approle.secretId",
                approle.and_then(|a| a.secret_id.as_ref()),
            ),
            (
                "jwt.token",
                self.jwt.as_ref().and_then(|j| j.token.as_ref()),
            ),
        ]
        .into_iter()
        .filter_map(|(field, ds)| ds.map(|ds| (field, ds)))
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultAuthTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<DataSource>,
}

/// `auth.approle`: a Vault AppRole login (`auth/<mount>/login` with `role_id` and `secret_id`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultAuthAppRole {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_id: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<DataSource>,
    /// Where AppRole auth is enabled (default [`DEFAULT_APPROLE_MOUNT`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mount: String,
}

impl VaultAuthAppRole {
    /// `mount`, or [`DEFAULT_APPROLE_MOUNT`].
    pub fn mount_or_default(&self) -> &str {
        mount_or(&self.mount, DEFAULT_APPROLE_MOUNT)
    }
}

/// `auth.jwt`: a Vault JWT login (`auth/<mount>/login` with `role` and `jwt`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultAuthJwt {
    /// The role of the JWT auth method to log in with.
    #[serde(default)]
    pub role: String,
    /// The JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<DataSource>,
    /// Where JWT auth is enabled (default [`DEFAULT_JWT_MOUNT`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mount: String,
}

impl VaultAuthJwt {
    /// `mount`, or [`DEFAULT_JWT_MOUNT`].
    pub fn mount_or_default(&self) -> &str {
        mount_or(&self.mount, DEFAULT_JWT_MOUNT)
    }
}

fn mount_or<'a>(mount: &'a str, default: &'a str) -> &'a str {
    match mount.trim().trim_matches('/') {
        "" => default,
        m => m,
    }
}

/// Where a piece of configuration data comes from: exactly one field must be set (checked by
/// validation). Inline values may be secrets, so `Debug` never prints them.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_string: Option<String>,
}

impl fmt::Debug for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("DataSource");
        if let Some(s) = &self.secret {
            d.field("secret", s);
        }
        if let Some(p) = &self.file {
            d.field("file", p);
        }
        if self.inline.is_some() {
            d.field("inline", &"<redacted>");
        }
        if self.inline_string.is_some() {
            d.field("inlineString", &"<redacted>");
        }
        d.finish()
    }
}

impl DataSource {
    pub fn secret(name: &str) -> Self {
        Self {
            secret: Some(name.to_string()),
            ..Default::default()
        }
    }

    pub fn file(path: &str) -> Self {
        Self {
            file: Some(path.to_string()),
            ..Default::default()
        }
    }

    pub fn inline_string(text: &str) -> Self {
        Self {
            inline_string: Some(text.to_string()),
            ..Default::default()
        }
    }

    /// How many of the four fields are set (validation wants exactly one).
    pub fn set_count(&self) -> usize {
        [
            self.secret.is_some(),
            self.file.is_some(),
            self.inline.is_some(),
            self.inline_string.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }
}

/// `type: Secret`: base64 data scoped to one mesh. `Debug` never prints the data.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    #[serde(rename = "type", default = "secret_type")]
    pub type_: String,
    pub name: String,
    pub mesh: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub data: String,
}

fn secret_type() -> String {
    "Secret".to_string()
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("mesh", &self.mesh)
            .field("data", &"<redacted>")
            .finish()
    }
}

impl Secret {
    pub fn new(mesh: &str, name: &str, bytes: &[u8]) -> Self {
        use base64::Engine;
        Self {
            type_: secret_type(),
            name: name.to_string(),
            mesh: mesh.to_string(),
            labels: BTreeMap::new(),
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// The decoded data (validation guarantees it decodes for stored Secrets).
    pub fn decode(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(self.data.trim())
    }
}

/// `type: Dataplane`: a proxy registered in a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dataplane {
    #[serde(rename = "type", default = "dataplane_type")]
    pub type_: String,
    pub name: String,
    pub mesh: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub networking: Networking,
}

fn dataplane_type() -> String {
    "Dataplane".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Networking {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default)]
    pub inbound: Vec<Inbound>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inbound {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The tag every inbound must carry.
pub const SERVICE_TAG: &str = "kuma.io/service";

impl Dataplane {
    /// All tags of the proxy: for each key, the sorted distinct values over its inbounds.
    pub fn tags(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for inbound in &self.networking.inbound {
            for (k, v) in &inbound.tags {
                let values = out.entry(k.clone()).or_default();
                if !values.contains(v) {
                    values.push(v.clone());
                    values.sort();
                }
            }
        }
        out
    }

    /// The `kuma.io/service` values of the proxy.
    pub fn services(&self) -> Vec<String> {
        self.tags().remove(SERVICE_TAG).unwrap_or_default()
    }
}
