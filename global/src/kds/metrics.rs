//! Metrics of the sync server, registered in global's registry (served at `GET /metrics`) as
//! `kmesh_sync_*`, units before `_total` (`kmesh_sync_sent_bytes_total`):
//! per zone and type the responses sent, acknowledged and rejected and the resources sent; stream
//! connects and disconnects per zone; refused streams by reason; zones online.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneTypeLabels {
    pub zone: String,
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabels {
    pub zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Default)]
pub struct KdsMetrics {
    pub responses_sent: Family<ZoneTypeLabels, Counter>,
    pub responses_acked: Family<ZoneTypeLabels, Counter>,
    pub responses_nacked: Family<ZoneTypeLabels, Counter>,
    pub resources_sent: Family<ZoneTypeLabels, Counter>,
    pub bytes_sent: Family<ZoneTypeLabels, Counter>,
    pub resources_too_large: Family<ZoneTypeLabels, Counter>,
    pub stream_connects: Family<ZoneLabels, Counter>,
    pub stream_disconnects: Family<ZoneLabels, Counter>,
    pub auth_refusals: Family<ReasonLabels, Counter>,
    pub zones_online: Gauge,
    /// Entries of zone reports dropped (a dataplane or Vault check of a mesh global does not hold).
    pub report_entries_dropped: Family<ZoneLabels, Counter>,
}

impl KdsMetrics {
    /// Creates the metrics and registers them under `sync_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("sync");
        r.register(
            "sent_responses",
            "Discovery responses sent, per zone and type",
            m.responses_sent.clone(),
        );
        r.register(
            "acked_responses",
            "Discovery responses acknowledged by the zone, per zone and type",
            m.responses_acked.clone(),
        );
        r.register(
            "nacked_responses",
            "Discovery responses rejected (wholly or in part) by the zone, per zone and type",
            m.responses_nacked.clone(),
        );
        r.register(
            "sent_resources",
            "Resources sent (added or changed), per zone and type",
            m.resources_sent.clone(),
        );
        r.register(
            "sent_bytes",
            "Encoded size of the discovery responses sent (before compression), per zone and type",
            m.bytes_sent.clone(),
        );
        r.register(
            "too_large_resources",
            "Resources not sent because one alone exceeds the message size limit",
            m.resources_too_large.clone(),
        );
        r.register(
            "stream_connects",
            "Sync streams established, per zone",
            m.stream_connects.clone(),
        );
        r.register(
            "stream_disconnects",
            "Sync streams ended, per zone",
            m.stream_disconnects.clone(),
        );
        r.register(
            "auth_refusals",
            "Sync streams refused at authentication, by reason",
            m.auth_refusals.clone(),
        );
        r.register(
            "dropped_report_entries",
            "Entries of zone status reports dropped because global holds no such mesh, per zone",
            m.report_entries_dropped.clone(),
        );
        r.register(
            "zones_online",
            "Zones with a live sync stream to this replica",
            m.zones_online.clone(),
        );
        m
    }

    pub fn zone_type(zone: &str, type_: &str) -> ZoneTypeLabels {
        ZoneTypeLabels {
            zone: zone.to_string(),
            r#type: type_.to_string(),
        }
    }
}
