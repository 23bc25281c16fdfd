//! Prometheus metrics of a zone (`GET /metrics`): responses applied and rejected per type,
//! resources applied, reconnections, and whether the zone is connected to global.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
}

pub struct ZoneMetrics {
    registry: Registry,
    pub syncs_applied: Family<TypeLabels, Counter>,
    pub resources_applied: Family<TypeLabels, Counter>,
    pub resources_removed: Family<TypeLabels, Counter>,
    pub nacks: Family<TypeLabels, Counter>,
    pub reconnects: Counter,
    pub connected: Gauge,
}

impl Default for ZoneMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ZoneMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("zone");
        let syncs_applied = Family::<TypeLabels, Counter>::default();
        registry.register(
            "syncs_applied",
            "Responses from global applied to the store, per type",
            syncs_applied.clone(),
        );
        let resources_applied = Family::<TypeLabels, Counter>::default();
        registry.register(
            "resources_applied",
            "Resources added or changed from global, per type",
            resources_applied.clone(),
        );
        let resources_removed = Family::<TypeLabels, Counter>::default();
        registry.register(
            "resources_removed",
            "Resources removed on global's word, per type",
            resources_removed.clone(),
        );
        let nacks = Family::<TypeLabels, Counter>::default();
        registry.register(
            "nacks",
            "Responses from global rejected (wholly or in part), per type",
            nacks.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "reconnects",
            "Connection attempts to global after the first",
            reconnects.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "connected",
            "1 while the sync stream to global is up",
            connected.clone(),
        );
        Self {
            registry,
            syncs_applied,
            resources_applied,
            resources_removed,
            nacks,
            reconnects,
            connected,
        }
    }

    pub fn labels(type_: &str) -> TypeLabels {
        TypeLabels {
            r#type: type_.to_string(),
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
