//! What every stream of the sync server shares: the store, the zone records, the token authority,
//! the metrics, the tunables ([`KdsConfig`]) and the shutdown signal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::shutdown::Shutdown;
use common::store::Store;

use super::metrics::KdsMetrics;
use super::zones::Zones;

/// Tunables of the sync server.
#[derive(Debug, Clone)]
pub struct KdsConfig {
    pub max_message_bytes: usize,
    /// HTTP/2 pings: a zone that does not answer within the timeout is dropped (and offline).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A zone that does not read a response for this long is disconnected.
    pub send_timeout: Duration,
}

impl Default for KdsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: common::limits::SYNC_MESSAGE_BYTES,
            keepalive_interval: Duration::from_secs(3),
            keepalive_timeout: Duration::from_secs(3),
            send_timeout: Duration::from_secs(30),
        }
    }
}

pub(crate) struct Ctx {
    pub store: Store,
    pub zones: Zones,
    /// Verifies zone tokens; its changes are sent to zones (`TokenKeys`).
    pub authority: crate::authority::Authority,
    pub metrics: KdsMetrics,
    pub config: KdsConfig,
    pub shutdown: Shutdown,
    /// The store's identity, sent with every response (empty id: not known).
    pub identity: common::integrity::StoreIdentity,
    /// When each kind of refusal was last logged at warn level (peer, name, reason).
    pub refusal_log: Mutex<HashMap<String, Instant>>,
}
