//! The state every handler of the API shares: the store it reads, the admission every write goes
//! through, the admin token, the zone records, the token signer and the metrics.

use std::sync::Arc;

use common::store::Store;

use crate::admission::Admission;
use crate::auth::AdminToken;
use crate::metrics::Metrics;

/// Shared state of the API.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub admin: AdminToken,
    pub metrics: Arc<Metrics>,
    /// Every write goes through it (the admission lock is inside).
    pub admission: Admission,
    /// What global knows of each zone (sync server).
    pub zones: crate::kds::Zones,
    /// Signs every token, verifies user tokens, and keeps the revocation list.
    pub authority: crate::authority::Authority,
    /// This replica and the others on the store (`GET /replicas`).
    pub replicas: crate::replicas::Replicas,
    /// The `Host` names the API answers to (421 otherwise).
    pub hosts: common::http::AllowedHosts,
    /// Every request that changes something, or tried to (`crate::audit`).
    pub audit: crate::audit::Audit,
    /// When each source's refused request was last logged.
    pub auth_log: crate::auth::OncePerMinute,
}

/// Who sent a request, as the authorization middleware found (`crate::rights`).
pub use crate::rights::Caller;
