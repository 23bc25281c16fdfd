//! How far the clocks of the zone's peers are from the zone's own: global's (each sync response
//! carries the time it was sent) and each Vault backend's (the `Date` of its answers). One reading
//! per peer, kept as [`Skew`]s; a peer whose clock moves past the tolerance, or back within it,
//! is logged once per change of state (never per reading). The readings are the
//! `kmesh_clock_skew_seconds{peer}` gauge, the `clocks` of `GET /status` and of the status report
//! to global. A leaf: it knows neither the sync stream nor the identity engine, which feed it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use common::clock::Skew;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

/// The `peer` label of [`Clocks`]' gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

/// The gauge family: seconds, positive when the peer's clock is ahead of the zone's.
pub type SkewGauge = Family<PeerLabels, Gauge<f64, AtomicU64>>;

/// The peer name of global.
pub const GLOBAL: &str = "global";

/// The peer name of a mesh's vault backend.
pub fn vault_peer(mesh: &str, backend: &str) -> String {
    format!("vault {mesh}/{backend}")
}

/// How a peer is named in sentences: `Vault (default/vault-1)`, `global`.
fn spoken(peer: &str) -> String {
    match peer.strip_prefix("vault ") {
        Some(rest) => format!("Vault ({rest})"),
        None => peer.to_string(),
    }
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    skew: Skew,
    at_ms: i64,
}

/// The clock readings of the zone's peers. See the module documentation.
pub struct Clocks {
    readings: Mutex<BTreeMap<String, Reading>>,
    gauge: SkewGauge,
}

/// One peer's clock in `GET /status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClockView {
    pub peer: String,
    /// Positive: the peer is ahead of the zone.
    pub skew_ms: i64,
    pub error_ms: i64,
    /// Beyond the tolerance: certificates and tokens may be judged wrongly.
    pub skewed: bool,
    /// In words.
    pub detail: String,
    pub measured_at: Option<String>,
}

impl Clocks {
    pub fn new(gauge: SkewGauge) -> Self {
        Self {
            readings: Mutex::new(BTreeMap::new()),
            gauge,
        }
    }

    /// A new reading of `peer`'s clock. Logs when the peer's clock crosses the tolerance (either
    /// way); returns true then.
    pub fn observe(&self, peer: &str, skew: Skew) -> bool {
        let before = {
            let mut r = self.readings.lock().unwrap_or_else(|e| e.into_inner());
            let before = r.get(peer).map(|r| r.skew.is_notable());
            r.insert(
                peer.to_string(),
                Reading {
                    skew,
                    at_ms: common::clock::now_ms(),
                },
            );
            before
        };
        self.gauge
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .set(skew.ms as f64 / 1000.0);
        let now = skew.is_notable();
        if before == Some(now) || (before.is_none() && !now) {
            return false;
        }
        if now {
            tracing::warn!(
                peer,
                skew_ms = skew.ms,
                error_ms = skew.error_ms,
                "clock skew: {}",
                skew.describe(&spoken(peer))
            );
        } else {
            tracing::info!(
                peer,
                skew_ms = skew.ms,
                "clock skew gone: {}",
                skew.describe(&spoken(peer))
            );
        }
        true
    }

    /// Forgets a peer (a backend that went away).
    pub fn forget(&self, peer: &str) {
        self.readings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
        self.gauge.remove(&PeerLabels {
            peer: peer.to_string(),
        });
    }

    /// The last reading of `peer`.
    pub fn get(&self, peer: &str) -> Option<Skew> {
        self.readings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .map(|r| r.skew)
    }

    /// Every peer's reading, by peer name.
    pub fn views(&self) -> Vec<ClockView> {
        let r = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        r.iter()
            .map(|(peer, r)| ClockView {
                peer: peer.clone(),
                skew_ms: r.skew.ms,
                error_ms: r.skew.error_ms,
                skewed: r.skew.is_notable(),
                detail: r.skew.describe(&spoken(peer)),
                measured_at: common::clock::rfc3339_ms(r.at_ms),
            })
            .collect()
    }

    /// The readings for the status report to global.
    pub fn report(&self) -> Vec<proto::kds::ClockReading> {
        let r = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        r.iter()
            .map(|(peer, r)| proto::kds::ClockReading {
                peer: peer.clone(),
                skew_ms: r.skew.ms,
                error_ms: r.skew.error_ms,
                measured_at_unix_ms: r.at_ms,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_of_state_is_news_a_reading_is_not() {
        let clocks = Clocks::new(SkewGauge::default());
        let ok = Skew {
            ms: 400,
            error_ms: 500,
        };
        let ahead = Skew {
            ms: -172_800_000,
            error_ms: 500,
        };
        assert!(
            !clocks.observe(GLOBAL, ok),
            "agreeing from the start: nothing to say"
        );
        assert!(clocks.observe(GLOBAL, ahead));
        assert!(!clocks.observe(GLOBAL, ahead), "still skewed: said already");
        assert!(clocks.observe(GLOBAL, ok), "back within the tolerance");
        let peer = vault_peer("default", "vault-1");
        assert!(
            clocks.observe(&peer, ahead),
            "skewed from the first reading"
        );
        let views = clocks.views();
        assert_eq!(views.len(), 2);
        assert!(views[1].skewed, "{views:?}");
        assert!(
            views[1]
                .detail
                .contains("2d 0h ahead of the clock of Vault (default/vault-1)")
        );
        assert_eq!(clocks.report()[1].skew_ms, -172_800_000);
        clocks.forget(&peer);
        assert_eq!(clocks.views().len(), 1);
    }
}
