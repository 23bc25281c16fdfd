//! The JSON bodies of global's HTTP API (SPEC.md) as types: the handlers answer with them and the
//! command line reads them back with them, so a field is named once. Times are RFC 3339 strings,
//! `null` when never; every field listed here is always present on the wire (a `None` is a
//! `null`), except where a `skip_serializing_if` says otherwise.

use std::collections::BTreeMap;

use common::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::admission::BackendCheck;
pub use crate::kds::zones::Rejected;

/// The error body of every refused request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_parameters: Vec<FieldError>,
    /// Backend check reports, when a Mesh was refused because of one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<BackendCheck>,
    /// True when the refusal is only that Vault could not be reached (clients exit 3 on it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vault_unreachable: bool,
}

/// `{"total": N, "items": [...], "next": URL}`: every list, a page at a time (`common::page`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    /// How many items the whole list holds.
    pub total: usize,
    pub items: Vec<T>,
    /// The URL of the next page; `null` on the last.
    #[serde(default)]
    pub next: Option<String>,
}

impl<T> List<T> {
    /// The whole list at once (an answer that is not a paged read).
    pub fn new(items: Vec<T>) -> Self {
        Self {
            total: items.len(),
            items,
            next: None,
        }
    }

    /// The page `request` asks for of `items` (sorted).
    pub fn page(items: Vec<T>, request: &common::page::ListRequest) -> Self {
        let (total, items, next) = request.cut(items);
        Self { total, items, next }
    }
}

/// A stored Mesh or Secret: its Universal form (a Secret without its data) plus its times.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceView {
    #[serde(flatten)]
    pub spec: Map<String, Value>,
    pub creation_time: String,
    pub modification_time: String,
}

impl ResourceView {
    /// A string field of the resource's spec (`name`, `mesh`), empty when absent.
    pub fn field(&self, name: &str) -> &str {
        self.spec.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

/// What a write did to one resource: an item of a batch apply, the answer to
/// `DELETE /meshes/{mesh}/secrets/{name}`, and the head of [`WriteResult`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResourceResult {
    #[serde(rename = "type")]
    pub type_: String,
    pub mesh: String,
    pub name: String,
    /// `created`, `updated`, `unchanged`, `valid` for a dry run, or `deleted`.
    pub result: String,
}

/// The answer to `PUT /meshes/{name}` and `PUT /meshes/{mesh}/secrets/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WriteResult {
    #[serde(flatten)]
    pub resource: ResourceResult,
    pub dry_run: bool,
    pub warnings: Vec<String>,
    pub checks: Vec<BackendCheck>,
}

/// The answer to `POST /apply`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    pub dry_run: bool,
    pub results: Vec<ResourceResult>,
    pub warnings: Vec<String>,
    pub checks: Vec<BackendCheck>,
}

/// The answer to `DELETE /meshes/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshDeleted {
    #[serde(rename = "type")]
    pub type_: String,
    pub name: String,
    pub result: String,
    pub owned_deleted: usize,
}

/// Body of `POST /tokens/zone`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneTokenRequest {
    #[schema(example = "zone-1")]
    pub zone: String,
    /// Validity, e.g. `720h` (the default), `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "720h")]
    pub valid_for: Option<String>,
}

/// Body of `POST /tokens/dataplane`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneTokenRequest {
    #[schema(example = "default")]
    pub mesh: String,
    #[schema(example = "web-1")]
    pub name: String,
    /// The `kuma.io/service` the proxy may register (or `anyService`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "web")]
    pub service: Option<String>,
    /// More tags the proxy must register with these values.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// The proxy may register any service.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_service: bool,
    /// Validity, e.g. `720h` (the default), `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "720h")]
    pub valid_for: Option<String>,
}

/// The answer to `POST /tokens/zone`. `Debug` never shows the token.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct ZoneToken {
    pub zone: String,
    pub expires: String,
    /// The token's `jti`, to revoke it (`global revoke-token --id`).
    #[serde(default)]
    pub id: String,
    pub token: String,
}

/// The answer to `POST /tokens/dataplane`. `Debug` never shows the token.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct DataplaneToken {
    pub mesh: String,
    pub name: String,
    pub expires: String,
    #[serde(default)]
    pub id: String,
    pub token: String,
}

/// Body of `POST /tokens/user`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserTokenRequest {
    /// Who the token is for (the audit log's actor).
    #[schema(example = "alice")]
    pub name: String,
    /// `admin`, `operator` or `viewer`.
    #[schema(example = "operator")]
    pub group: String,
    /// The meshes an operator may change (operators only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(example = json!(["default"]))]
    pub meshes: Vec<String>,
    /// Validity, e.g. `24h` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for: Option<String>,
}

/// The answer to `POST /tokens/user`. `Debug` never shows the token.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct UserToken {
    pub name: String,
    pub group: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meshes: Vec<String>,
    pub expires: String,
    pub id: String,
    pub token: String,
}

macro_rules! redacted_debug {
    ($t:ty, $($field:ident),*) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    $(.field(stringify!($field), &self.$field))*
                    .field("token", &"<redacted>")
                    .finish()
            }
        }
    };
}
redacted_debug!(ZoneToken, zone, expires, id);
redacted_debug!(DataplaneToken, mesh, name, expires, id);
redacted_debug!(UserToken, name, group, meshes, expires, id);

/// Body of `POST /tokens/revoke`: the token's id (`jti`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[schema(example = "0f5c2a9e-never-issued")]
    pub id: String,
}

/// The answer to `POST /tokens/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    pub id: String,
    /// `revoked`, or `already revoked`.
    pub result: String,
}

/// A revoked token (`GET /tokens/revoked`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedView {
    /// The token's id (`jti`).
    pub id: String,
    /// RFC 3339.
    pub revoked_at: String,
    /// Who revoked it (the audit log's actor).
    pub by: String,
}

/// A token signing key (`GET /tokens/signing-keys`): never its private part.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyView {
    pub kid: String,
    /// RFC 3339; empty for the key of an earlier release's key file.
    pub created: String,
    /// New tokens are signed with it.
    pub active: bool,
}

/// A refused sync stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RefusalView {
    pub at: Option<String>,
    pub zone: String,
    pub peer: String,
    pub reason: String,
}

/// The last rejection of a type by a zone.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NackView {
    pub at: Option<String>,
    pub error: String,
    pub resources: Vec<Rejected>,
}

/// Per synced type, what was sent to a zone and what it answered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatsView {
    pub sent: u64,
    pub acked: u64,
    pub nacked: u64,
    pub resources_sent: u64,
    pub removed_sent: u64,
    pub bytes_sent: u64,
    pub acked_version: u64,
    pub last_sent: Option<String>,
    pub last_acked: Option<String>,
    pub last_nack: Option<NackView>,
}

/// A resource not sent to a zone because it alone exceeds the message size limit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TooLargeView {
    #[serde(rename = "type")]
    pub type_: String,
    pub mesh: String,
    pub name: String,
    pub version: String,
    pub size: u64,
    pub limit: u64,
    pub at: Option<String>,
}

/// `GET /zones/{name}`: what global knows of one zone.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZoneView {
    pub name: String,
    pub online: bool,
    pub connected_since: Option<String>,
    pub last_connected: Option<String>,
    pub last_seen: Option<String>,
    pub last_disconnect: Option<String>,
    pub last_disconnect_reason: Option<String>,
    pub last_error: Option<String>,
    pub peer: String,
    pub connects: u64,
    pub disconnects: u64,
    pub token_expires: Option<String>,
    pub types: BTreeMap<String, TypeStatsView>,
    pub too_large: Vec<TooLargeView>,
    pub last_refusal: Option<RefusalView>,
    /// The zone's own checks of Vault as it last reported them (see [`ZoneVaultCheck`]), passed
    /// through from its status report.
    pub vault: Vec<Value>,
    /// The zone's last status report.
    pub status: Option<Value>,
    /// The id of the global replica that holds (or last held) the zone's stream.
    #[serde(default)]
    pub replica: Option<String>,
}

/// One entry of [`ZoneView::vault`], as the command line reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ZoneVaultCheck {
    pub mesh: String,
    pub backend: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub ok: bool,
    pub error: String,
    pub checked_at: Option<String>,
    pub issued: u64,
    pub last_issued_at: Option<String>,
}

/// `GET /zones`: a page of zones, and the last sync streams refused.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ZoneList {
    pub total: usize,
    pub items: Vec<ZoneView>,
    #[serde(default)]
    pub next: Option<String>,
    pub refusals: Vec<RefusalView>,
}

/// The answer to `DELETE /zones/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ZoneDeleted {
    pub name: String,
    /// `deleted`.
    pub result: String,
}

/// The current certificate of a dataplane.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CertificateView {
    pub backend: String,
    pub serial: String,
    pub expiration: Option<String>,
    /// When its zone means to replace it (`null`: a zone too old to say).
    #[serde(default)]
    pub rotation: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Inbound {
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Networking {
    pub inbound: Vec<Inbound>,
}

/// A dataplane as its zone last reported it (`GET /meshes/{mesh}/dataplanes`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneView {
    #[serde(rename = "type")]
    pub type_: String,
    pub mesh: String,
    pub name: String,
    pub zone: String,
    pub networking: Networking,
    pub certificate: Option<CertificateView>,
    pub connected: bool,
    pub zone_online: bool,
    pub reported_at: Option<String>,
    /// What the zone warns about this proxy (a token that binds no service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Set when more than one zone reports a dataplane of this name: each claim is shown apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
    /// As its zone last reported: `ok`, `holding an expired certificate on disk`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The last failure its zone reported: issuance, or the proxy agent's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One global replica in `GET /replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    pub id: String,
    pub hostname: String,
    pub api_address: String,
    pub kds_address: String,
    pub started_at: Option<String>,
    pub last_heartbeat: Option<String>,
    /// Its last heartbeat is recent (within three heartbeat intervals).
    pub alive: bool,
    /// It holds the leadership: of the alive replicas whose last heartbeat claimed it, the one
    /// heard of last (at most one replica is shown leading).
    pub leader: bool,
    /// The online zones whose stream it holds, sorted.
    pub zones: Vec<String>,
}

/// `GET /replicas`: every replica on the store, sorted by id.
pub type ReplicaList = List<ReplicaView>;
