//! The handlers of what global knows of its zones: `GET /zones`, `GET /zones/{name}` and
//! `GET /meshes/{mesh}/dataplanes` (the dataplanes as every zone last reported them), with their
//! presenters. The records themselves are kept by the sync server (`kds::zones`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use common::clock::rfc3339_ms;
use common::page::ListRequest;
use serde_json::Value;

use super::error::ApiError;
use super::state::ApiState;
use super::types::{
    CertificateView, DataplaneView, Inbound, List, NackView, Networking, RefusalView, TooLargeView,
    TypeStatsView, ZoneDeleted, ZoneList, ZoneView,
};
use crate::kds::zones::{DataplaneReport, Refusal, ZoneRecord};

fn present_refusal(r: &Refusal) -> RefusalView {
    RefusalView {
        at: rfc3339_ms(r.at_ms as i64),
        zone: r.zone.clone(),
        peer: r.peer.clone(),
        reason: r.reason.clone(),
    }
}

/// The API view of a zone record.
pub fn present(r: &ZoneRecord) -> ZoneView {
    let types = r
        .types
        .iter()
        .map(|(t, s)| {
            let view = TypeStatsView {
                sent: s.responses_sent,
                acked: s.acked,
                nacked: s.nacked,
                resources_sent: s.resources_sent,
                removed_sent: s.removed_sent,
                bytes_sent: s.bytes_sent,
                acked_version: s.acked_version,
                last_sent: rfc3339_ms(s.last_sent_ms as i64),
                last_acked: rfc3339_ms(s.last_acked_ms as i64),
                last_nack: s.last_nack.as_ref().map(|n| NackView {
                    at: rfc3339_ms(n.at_ms as i64),
                    error: n.error.clone(),
                    resources: n.resources.clone(),
                }),
            };
            (t.clone(), view)
        })
        .collect();
    let too_large = r
        .too_large
        .iter()
        .map(|t| TooLargeView {
            type_: t.type_.clone(),
            mesh: t.mesh.clone(),
            name: t.name.clone(),
            version: t.version.clone(),
            size: t.size,
            limit: t.limit,
            at: rfc3339_ms(t.at_ms as i64),
        })
        .collect();
    let last_seen = if r.online {
        common::clock::now_ms().max(0) as u64
    } else {
        r.last_seen_ms
    };
    // Per mesh and vault backend, the zone's own check of Vault as it last reported it:
    // {mesh, backend, type, ok, error, checkedAt, issued, lastIssuedAt}.
    let vault: Vec<Value> = r
        .status
        .as_ref()
        .and_then(|s| s.get("backendChecks"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            if let Value::Object(m) = &mut c {
                m.entry("lastIssuedAt").or_insert(Value::Null);
            }
            c
        })
        .collect();
    let last_error = if !r.last_error.is_empty() {
        Some(r.last_error.clone())
    } else if !r.online && !r.last_disconnect_reason.is_empty() {
        Some(r.last_disconnect_reason.clone())
    } else {
        None
    };
    ZoneView {
        name: r.name.clone(),
        online: r.online,
        connected_since: if r.online {
            rfc3339_ms(r.connected_since_ms as i64)
        } else {
            None
        },
        last_connected: rfc3339_ms(r.connected_since_ms as i64),
        last_seen: rfc3339_ms(last_seen as i64),
        last_disconnect: rfc3339_ms(r.last_disconnect_ms as i64),
        last_disconnect_reason: (!r.last_disconnect_reason.is_empty())
            .then(|| r.last_disconnect_reason.clone()),
        last_error,
        peer: r.peer.clone(),
        connects: r.connects,
        disconnects: r.disconnects,
        token_expires: rfc3339_ms(r.token_expires_ms as i64),
        types,
        too_large,
        last_refusal: r.last_refusal.as_ref().map(present_refusal),
        vault,
        status: r.status.clone(),
        replica: (!r.replica.is_empty()).then(|| r.replica.clone()),
    }
}

/// `GET /zones`.
#[utoipa::path(get, path = "/zones", tag = "zones", params(super::openapi::PageParams),
    responses((status = 200, description = "A page of zones, and the last refused sync streams", body = ZoneList)))]
pub async fn list_zones(State(state): State<ApiState>, request: ListRequest) -> Json<ZoneList> {
    // Sorted by name, so pages do not overlap.
    let zones = state.zones.list();
    let (total, items, next) = request.cut(zones.iter().map(present).collect());
    let refusals = state.zones.refusals().iter().map(present_refusal).collect();
    Json(ZoneList {
        total,
        items,
        next,
        refusals,
    })
}

/// `GET /zones/{name}`.
#[utoipa::path(get, path = "/zones/{name}", tag = "zones", params(("name" = String, Path, description = "The zone", example = "zone-1")),
    responses((status = 200, description = "What global knows of the zone", body = ZoneView)))]
pub async fn get_zone(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ZoneView>, ApiError> {
    match state.zones.get(&name) {
        Some(r) => Ok(Json(present(&r))),
        None => Err(ApiError::not_found(format!(
            "zone {name:?} is not known: it never connected"
        ))),
    }
}

/// `DELETE /zones/{name}` (admin): forgets an offline zone and everything it reported; 409 while
/// it is online, 404 when it is not known.
#[utoipa::path(delete, path = "/zones/{name}", tag = "zones", params(("name" = String, Path, description = "The zone", example = "zone-1")),
    responses((status = 200, description = "The record is deleted", body = ZoneDeleted)))]
pub async fn delete_zone(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ZoneDeleted>, ApiError> {
    match state.zones.remove(&name).await {
        Ok(true) => {
            tracing::info!(zone = %name, "zone record deleted");
            Ok(Json(ZoneDeleted {
                name,
                result: "deleted".into(),
            }))
        }
        Ok(false) => Err(ApiError::not_found(format!("zone {name:?} is not known"))),
        Err(crate::kds::zones::RemoveError::Online) => {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                format!("zone {name:?} is online: stop it first, then delete its record"),
            );
            e.title = "Zone online".into();
            Err(e)
        }
        Err(crate::kds::zones::RemoveError::Store(e)) => Err(e.into()),
    }
}

/// The API view of a dataplane reported by `zone`.
pub fn present_dataplane(zone: &ZoneRecord, d: &DataplaneReport) -> DataplaneView {
    let mut tags = d.tags.clone();
    if !d.service.is_empty() {
        tags.entry(common::model::SERVICE_TAG.to_string())
            .or_insert_with(|| d.service.clone());
    }
    let certificate = (!d.serial.is_empty()).then(|| CertificateView {
        backend: d.backend.clone(),
        serial: d.serial.clone(),
        expiration: rfc3339_ms(d.expires_ms.max(0)),
        rotation: (d.rotates_ms > 0)
            .then(|| rfc3339_ms(d.rotates_ms))
            .flatten(),
    });
    DataplaneView {
        type_: "Dataplane".into(),
        mesh: d.mesh.clone(),
        name: d.name.clone(),
        zone: zone.name.clone(),
        networking: Networking {
            inbound: vec![Inbound { tags }],
        },
        certificate,
        connected: d.connected,
        zone_online: zone.online,
        reported_at: rfc3339_ms(zone.dataplanes_reported_ms as i64),
        warning: Some(d.warning.clone()).filter(|w| !w.is_empty()),
        conflict: None,
        state: Some(d.state.clone()).filter(|s| !s.is_empty()),
        last_error: Some(d.last_error.clone()).filter(|e| !e.is_empty()),
    }
}

/// `GET /meshes/{mesh}/dataplanes`: the dataplanes of the mesh as every zone last reported them,
/// sorted by zone and name.
#[utoipa::path(get, path = "/meshes/{mesh}/dataplanes", tag = "zones",
    params(("mesh" = String, Path, description = "The mesh", example = "default"), super::openapi::PageParams),
    responses((status = 200, description = "A page of the mesh's dataplanes as their zones reported them", body = List<DataplaneView>)))]
pub async fn list_dataplanes(
    State(state): State<ApiState>,
    Path(mesh): Path<String>,
    request: ListRequest,
) -> Json<List<DataplaneView>> {
    let zones = state.zones.list();
    let mut items: Vec<DataplaneView> = zones
        .iter()
        .flat_map(|z| {
            let mut dps: Vec<&DataplaneReport> =
                z.dataplanes.iter().filter(|d| d.mesh == mesh).collect();
            dps.sort_by(|a, b| a.name.cmp(&b.name));
            dps.into_iter()
                .map(|d| present_dataplane(z, d))
                .collect::<Vec<_>>()
        })
        .collect();
    // Each zone's report is its own claim: a name claimed by several zones is shown as a
    // conflict on each, never merged into one.
    let mut claimed: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for d in &items {
        claimed
            .entry(d.name.clone())
            .or_default()
            .push(d.zone.clone());
    }
    for d in &mut items {
        let others: Vec<&String> = claimed[&d.name].iter().filter(|z| **z != d.zone).collect();
        if !others.is_empty() {
            d.conflict = Some(format!(
                "also reported by zone {}",
                others
                    .iter()
                    .map(|z| z.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Json(List::page(items, &request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offline_zone_shows_why() {
        // A zone record as `Zones::load` leaves it after a restart.
        let r = ZoneRecord {
            name: "east".into(),
            connects: 2,
            connected_since_ms: 1,
            last_disconnect_reason: "global restarted".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(present(&r)).unwrap();
        assert_eq!(v["online"], false);
        assert_eq!(v["connectedSince"], Value::Null);
        assert_eq!(v["lastError"], "global restarted");
    }

    #[test]
    fn a_certificate_shows_its_next_rotation_when_the_zone_said_it() {
        let zone = ZoneRecord {
            name: "east".into(),
            ..Default::default()
        };
        // A record written before zones reported rotations has none.
        let old: DataplaneReport = serde_json::from_value(serde_json::json!({
            "mesh": "default", "name": "web-1", "backend": "ca-1", "serial": "aa",
            "expiresMs": 1_700_000_000_000i64, "connected": true,
        }))
        .unwrap();
        let v = serde_json::to_value(present_dataplane(&zone, &old)).unwrap();
        assert_eq!(v["certificate"]["expiration"], "2023-11-14T22:13:20Z");
        assert_eq!(v["certificate"]["rotation"], Value::Null);
        let new = DataplaneReport {
            rotates_ms: 1_699_999_000_000,
            ..old
        };
        let v = serde_json::to_value(present_dataplane(&zone, &new)).unwrap();
        assert_eq!(v["certificate"]["rotation"], "2023-11-14T21:56:40Z");
    }
}
