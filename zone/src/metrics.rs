//! Prometheus metrics of a zone (`GET /metrics`), every one named `kmesh_*` (`common::metrics`):
//! build info and API request durations per route; the sync with global (`kmesh_sync_*`:
//! responses applied and rejected per type, resources applied and removed, reconnections, whether
//! the zone is connected); under `identity`, the proxy certificates (issued, failed, rotated,
//! reused, Vault latency, breakers); and how far the peers' clocks are from the zone's.

use common::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
}

pub struct ZoneMetrics {
    registry: Registry,
    /// API requests by route, method and status, with their durations.
    pub http: common::metrics::HttpMetrics,
    pub syncs_applied: Family<TypeLabels, Counter>,
    pub resources_applied: Family<TypeLabels, Counter>,
    pub resources_removed: Family<TypeLabels, Counter>,
    pub nacks: Family<TypeLabels, Counter>,
    pub reconnects: Counter,
    pub connected: Gauge,
    /// How far each peer's clock (global, each Vault) is from the zone's (`crate::clocks`).
    pub clock_skew_seconds: crate::clocks::SkewGauge,
    pub identity: IdentityMetrics,
}

impl Default for ZoneMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ZoneMetrics {
    pub fn new() -> Self {
        let mut r = common::metrics::registry();
        let http = common::metrics::HttpMetrics::register(&mut r);
        let syncs_applied = register(
            &mut r,
            "sync_applied_responses",
            "Responses from global applied to the store, per type",
            Family::default(),
        );
        let resources_applied = register(
            &mut r,
            "sync_applied_resources",
            "Resources added or changed from global, per type",
            Family::default(),
        );
        let resources_removed = register(
            &mut r,
            "sync_removed_resources",
            "Resources removed on global's word, per type",
            Family::default(),
        );
        let nacks = register(
            &mut r,
            "sync_rejected_responses",
            "Responses from global rejected (wholly or in part), per type",
            Family::default(),
        );
        let reconnects = register(
            &mut r,
            "sync_reconnects",
            "Connection attempts to global after the first",
            Counter::default(),
        );
        let connected = register(
            &mut r,
            "sync_connected",
            "1 while the sync stream to global is up",
            Gauge::default(),
        );
        let clock_skew_seconds = register(
            &mut r,
            "clock_skew_seconds",
            "How far a peer's clock (global, a Vault backend) is from the zone's; positive: the peer is ahead",
            crate::clocks::SkewGauge::default(),
        );
        let identity = IdentityMetrics::register(&mut r);
        Self {
            clock_skew_seconds,
            http,
            registry: r,
            identity,
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
        common::metrics::encode(&self.registry)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendTypeLabels {
    /// vault, builtin or provided.
    pub backend_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// unreachable, denied, refused or other.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    /// expiry, backend_change or tags_change.
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub mesh: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    pub mesh: String,
    pub backend: String,
    /// tls, approle or jwt.
    pub method: String,
    /// ok or refused (by Vault, or Vault could not be reached).
    pub result: String,
}

/// Metrics of proxy certificate issuance (`zone/src/identity`).
pub struct IdentityMetrics {
    pub issued: Family<BackendTypeLabels, Counter>,
    pub failed: Family<ReasonLabels, Counter>,
    pub rotations: Family<CauseLabels, Counter>,
    /// Certificates presented by reconnecting proxies and kept (no issuance).
    pub reused: Counter,
    /// Issuance requests sent to a backend (each retry counts).
    pub attempts: Counter,
    pub vault_request_seconds: Histogram,
    /// Login attempts of the zone's Vault clients (their own checks' logins are not counted).
    pub vault_logins: Family<LoginLabels, Counter>,
    /// Seconds until the earliest certificate of a connected proxy expires (negative: expired).
    pub earliest_expiry_seconds: Gauge,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: Family<BackendLabels, Gauge>,
    pub proxies_connected: Gauge,
    pub issuing: Gauge,
}

impl IdentityMetrics {
    fn register(r: &mut Registry) -> Self {
        Self {
            issued: register(
                r,
                "certificates_issued",
                "Proxy certificates issued, per backend type",
                Family::default(),
            ),
            failed: register(
                r,
                "certificates_failed",
                "Failed proxy certificate issuances, per reason (unreachable, denied, refused, other)",
                Family::default(),
            ),
            rotations: register(
                r,
                "certificate_rotations",
                "Proxy certificates replaced, per cause (expiry, backend_change, tags_change)",
                Family::default(),
            ),
            reused: register(
                r,
                "certificates_reused",
                "Certificates presented by reconnecting proxies and kept without a new issuance",
                Counter::default(),
            ),
            attempts: register(
                r,
                "issuance_attempts",
                "Issuance requests sent to a CA backend, retries included",
                Counter::default(),
            ),
            vault_request_seconds: register(
                r,
                "vault_request_duration_seconds",
                "Latency of certificate requests to Vault",
                Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ),
            vault_logins: register(
                r,
                "vault_logins",
                "Logins of the zone's Vault clients (auth.tls, auth.approle, auth.jwt), per mesh, backend, method and result (ok, refused)",
                Family::default(),
            ),
            earliest_expiry_seconds: register(
                r,
                "certificate_earliest_expiry_seconds",
                "Seconds until the earliest certificate of a connected proxy expires",
                Gauge::default(),
            ),
            breaker_state: register(
                r,
                "ca_breaker_state",
                "Circuit breaker of a mesh's CA backend: 0 closed, 1 open, 2 half-open",
                Family::default(),
            ),
            proxies_connected: register(
                r,
                "proxies_connected",
                "Proxies connected to the identity service",
                Gauge::default(),
            ),
            issuing: register(
                r,
                "issuances_in_flight",
                "Certificate issuances in progress",
                Gauge::default(),
            ),
        }
    }
}
