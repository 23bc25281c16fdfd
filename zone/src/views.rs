//! The bodies of the zone's read-only HTTP API, as types: `GET /meshes` and `/meshes/{name}`
//! ([`ResourceView`]), `GET /dataplanes` ([`DataplaneView`]), `GET /status` ([`StatusView`]), lists
//! ([`ListView`], a page at a time: `common::page`) and errors ([`ErrorBody`], served as
//! `application/problem+json`). The handlers (`api`) build them, `zone get` (`cli`) reads them, and
//! `/openapi.json` describes them (utoipa), so the three cannot drift apart. Fields are declared in the order of their
//! JSON names, so a body is written exactly as before (sorted keys). Times are RFC 3339 strings,
//! `null` for never.

use std::collections::BTreeMap;

use common::model::Kind;
use common::store::StoredResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// RFC 3339 of unix milliseconds; `None` ("never", `null`) for 0.
fn time_ms(ms: i64) -> Option<String> {
    common::clock::rfc3339_ms(ms)
}

/// `{"items": [...], "next": URL, "total": N}`: a page of a list (`common::page`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListView<T> {
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
    /// The URL of the next page; `null` on the last.
    #[serde(default)]
    pub next: Option<String>,
    /// How many items the whole list holds.
    #[serde(default)]
    pub total: usize,
}

impl<T> ListView<T> {
    /// The whole list at once.
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
        Self { items, next, total }
    }
}

/// An error answer: `{"detail", "status", "title"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ErrorBody {
    pub detail: String,
    pub status: u16,
    pub title: String,
}

/// A stored resource as shown: its Universal form plus its times, Secret data removed; a mesh
/// read alone also lists the names of its Secrets (never their data).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceView {
    /// The Universal form (an object).
    pub spec: Value,
    pub creation_time: Option<String>,
    pub modification_time: Option<String>,
    /// Only for `GET /meshes/{name}`.
    pub secrets: Option<Vec<String>>,
}

impl ResourceView {
    /// What the zone's API shows of a stored resource: never a Secret's data, and a Mesh's
    /// `inline`/`inlineString` values redacted (the zone's API has no admin).
    pub fn of(r: &StoredResource) -> Self {
        let mut spec = common::http::redact_inline(&r.spec);
        if r.key.kind == Kind::Secret
            && let Value::Object(map) = &mut spec
        {
            map.remove("data");
        }
        Self {
            spec,
            creation_time: time_ms(r.created_unix as i64 * 1000),
            modification_time: time_ms(r.modified_unix as i64 * 1000),
            secrets: None,
        }
    }

    /// The JSON object: the spec's fields and the view's, in one object of sorted keys.
    fn to_value(&self) -> Value {
        let mut v = self.spec.clone();
        if let Value::Object(map) = &mut v {
            let time = |t: &Option<String>| t.clone().map_or(Value::Null, Value::String);
            map.insert("creationTime".into(), time(&self.creation_time));
            map.insert("modificationTime".into(), time(&self.modification_time));
            if let Some(secrets) = &self.secrets {
                map.insert(
                    "secrets".into(),
                    secrets.iter().cloned().map(Value::String).collect(),
                );
            }
        }
        v
    }
}

/// Its description in `/openapi.json`: the resource's own fields, its times and (read alone) the
/// names of its Secrets.
impl utoipa::PartialSchema for ResourceView {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AdditionalProperties, ArrayBuilder, ObjectBuilder, SchemaType, Type,
        };
        let time = || {
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                .description(Some("RFC 3339"))
        };
        ObjectBuilder::new()
            .description(Some(
                "A resource the zone holds (its Universal form, Secret data never shown) with its times",
            ))
            .property("creationTime", time())
            .required("creationTime")
            .property("modificationTime", time())
            .required("modificationTime")
            .property(
                "secrets",
                ArrayBuilder::new()
                    .items(ObjectBuilder::new().schema_type(Type::String))
                    .description(Some("The names of the mesh's Secrets (GET /meshes/{name} only)")),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl utoipa::ToSchema for ResourceView {}

impl Serialize for ResourceView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

/// A dataplane with the state of its certificate (`GET /dataplanes`, `zone get dataplanes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct DataplaneView {
    /// How far the agent's clock is from the zone's (positive: ahead), as it last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_clock_skew_ms: Option<i64>,
    /// The backend that issued the current certificate.
    pub backend: Option<String>,
    pub backend_type: Option<String>,
    /// The certificate the agent's files hold, as it last reported (`Session` agents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_on_disk: Option<DiskCertView>,
    pub connected: bool,
    /// Expiry of the current certificate, RFC 3339.
    pub expiration: Option<String>,
    pub expiration_unix: Option<i64>,
    /// Certificates issued to this dataplane by this zone.
    pub issued_count: u64,
    /// The last failure, cleared by the next success: the zone's issuance, else what the agent
    /// reported (files not written, bundle refused).
    pub last_error: Option<String>,
    pub mesh: String,
    pub name: String,
    pub serial: Option<String>,
    /// The `kuma.io/service` value(s), comma-separated.
    pub service: String,
    /// In words: `ok`, `holding an expired certificate on disk`, `disconnected`, ...
    #[serde(default)]
    pub state: String,
    /// Every tag; several values of one tag are comma-separated.
    pub tags: BTreeMap<String, String>,
}

/// The certificate in an agent's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskCertView {
    pub serial: String,
    pub expiration: Option<String>,
}

/// `GET /status`: the zone, its connection to global, each synced type and its Vault checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusView {
    /// How far each peer's clock is from the zone's (absent from older zones' answers).
    #[serde(default)]
    pub clocks: Vec<crate::clocks::ClockView>,
    pub global: GlobalView,
    /// Per synced type (`Mesh`, `Secret`).
    pub types: BTreeMap<String, TypeView>,
    pub vault: Vec<VaultCheckView>,
    pub zone: String,
}

/// The connection to global.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GlobalView {
    /// The address of global the zone is connected to; while disconnected, the one it is dialing
    /// (or last tried).
    pub address: String,
    /// Every `--global-address`, in the order they are tried.
    #[serde(default)]
    pub addresses: Vec<String>,
    pub connected: bool,
    pub connects: u64,
    /// `None` (`null`) when there was none.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub since: Option<String>,
}

impl GlobalView {
    pub fn of(addresses: &[String], c: &crate::state::Connection) -> Self {
        Self {
            address: c.address.clone(),
            addresses: addresses.to_vec(),
            connected: c.connected,
            connects: c.connects,
            last_error: Some(c.last_error.clone()).filter(|e| !e.is_empty()),
            last_error_at: time_ms(c.last_error_ms),
            since: time_ms(c.since_ms),
        }
    }
}

/// One synced type: what the zone holds and what it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TypeView {
    pub count: u64,
    pub digest: String,
    pub last_applied: Option<String>,
    pub last_nack: Option<NackView>,
    pub responses_applied: u64,
    pub responses_rejected: u64,
    pub system_version: u64,
}

impl TypeView {
    pub fn of(count: u64, digest: String, t: &crate::state::TypeSync) -> Self {
        Self {
            count,
            digest,
            last_applied: time_ms(t.last_applied_ms),
            last_nack: t.last_nack.as_ref().map(NackView::of),
            responses_applied: t.responses_applied,
            responses_rejected: t.responses_rejected,
            system_version: t.system_version,
        }
    }
}

/// The last rejection of a type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NackView {
    pub at: Option<String>,
    pub error: String,
    pub resources: Vec<NackedResource>,
}

impl NackView {
    fn of(n: &crate::state::Nack) -> Self {
        Self {
            at: time_ms(n.at_ms),
            error: n.error.clone(),
            resources: n
                .resources
                .iter()
                .map(|(mesh, name, reason)| NackedResource {
                    mesh: mesh.clone(),
                    name: name.clone(),
                    reason: reason.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NackedResource {
    pub mesh: String,
    pub name: String,
    pub reason: String,
}

/// The zone's own check of a vault backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultCheckView {
    pub backend: String,
    pub checked_at: Option<String>,
    pub error: String,
    pub issued: u64,
    pub mesh: String,
    pub ok: bool,
    #[serde(rename = "type")]
    pub backend_type: String,
}

impl VaultCheckView {
    pub fn of(c: &proto::kds::BackendCheck) -> Self {
        Self {
            backend: c.backend.clone(),
            checked_at: time_ms(c.checked_at_unix_ms),
            error: c.error.clone(),
            issued: c.issued,
            mesh: c.mesh.clone(),
            ok: c.ok,
            backend_type: c.backend_type.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_keep_their_json_names_and_order() {
        let list = ListView::new(vec![DataplaneView {
            mesh: "m".into(),
            name: "d".into(),
            ..Default::default()
        }]);
        let v = serde_json::to_value(&list).unwrap();
        assert_eq!(v["total"], 1);
        assert_eq!(v["items"][0]["issuedCount"], 0);
        assert!(v["items"][0]["lastError"].is_null());
        let text = serde_json::to_string(&list).unwrap();
        let sorted = serde_json::to_string(&v).unwrap();
        assert_eq!(text, sorted, "written in the order of its JSON names");
        let check = VaultCheckView {
            backend: "b".into(),
            checked_at: None,
            error: String::new(),
            issued: 2,
            mesh: "m".into(),
            ok: true,
            backend_type: "vault".into(),
        };
        assert_eq!(
            serde_json::to_string(&check).unwrap(),
            r#"{"backend":"b","checkedAt":null,"error":"","issued":2,"mesh":"m","ok":true,"type":"vault"}"#
        );
        let r = ResourceView {
            spec: serde_json::json!({"type": "Mesh", "name": "m"}),
            creation_time: Some("t".into()),
            modification_time: None,
            secrets: Some(vec!["s".into()]),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"creationTime":"t","modificationTime":null,"name":"m","secrets":["s"],"type":"Mesh"}"#
        );
    }
}
