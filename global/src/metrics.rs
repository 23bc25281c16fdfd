//! Prometheus metrics of global, served at `GET /metrics` in the text format, every one named
//! `kmesh_*` (`common::metrics`): build info, API request durations per route, admissions by kind
//! and result and how long each took, the backend checks by result, and the sync server's
//! (`kmesh_sync_*`).

use common::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmitLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub backend_type: String,
    pub result: String,
}

/// All metrics of global. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// API requests by route, method and status, with their durations.
    pub http: common::metrics::HttpMetrics,
    pub admissions: Family<AdmitLabels, Counter>,
    pub backend_checks: Family<CheckLabels, Counter>,
    /// How long each admission took, backend checks (a Vault test certificate) included.
    pub admission_seconds: Histogram,
    pub meshes: Gauge,
    /// Admissions run again because what they read changed while they ran.
    pub admission_retries: Counter,
    /// The sync server's metrics (`kmesh_sync_*`).
    pub kds: crate::kds::KdsMetrics,
    /// API requests that needed the admin token and did not bring a valid one.
    pub auth_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = common::metrics::registry();
        let http = common::metrics::HttpMetrics::register(&mut registry);
        let admissions = register(
            &mut registry,
            "admissions",
            "Resources admitted or refused, by kind and result",
            Family::<AdmitLabels, Counter>::default(),
        );
        let backend_checks = register(
            &mut registry,
            "backend_checks",
            "CA backend checks (Vault test certificates, provided CA checks) by result",
            Family::<CheckLabels, Counter>::default(),
        );
        let admission_seconds = register(
            &mut registry,
            "admission_duration_seconds",
            "Duration of each admission of a write or dry run: validation and backend checks (a Vault test certificate, a provided CA, a builtin CA's generation)",
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        );
        let meshes = register(&mut registry, "meshes", "Meshes stored", Gauge::default());
        let admission_retries = register(
            &mut registry,
            "admission_retries",
            "Writes (admissions and deletes) run again, under the lock, because a resource they read changed meanwhile",
            Counter::default(),
        );
        let kds = crate::kds::KdsMetrics::register(&mut registry);
        let auth_failures = register(
            &mut registry,
            "api_auth_failures",
            "API requests refused for a missing, unknown, expired or revoked token",
            Counter::default(),
        );
        Self {
            auth_failures,
            registry,
            http,
            admissions,
            backend_checks,
            admission_seconds,
            meshes,
            admission_retries,
            kds,
        }
    }

    pub fn count_check(&self, backend_type: &str, ok: bool) {
        self.backend_checks
            .get_or_create(&CheckLabels {
                backend_type: backend_type.to_string(),
                result: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
    }

    pub fn count_admission(&self, kind: &str, result: &str) {
        self.admissions
            .get_or_create(&AdmitLabels {
                kind: kind.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        common::metrics::encode(&self.registry)
    }
}
