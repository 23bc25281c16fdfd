//! Every bound the control planes put on what peers and users send, in one place, so that the two
//! sides of a connection cannot disagree and an operator can read them all at once. Each is
//! enforced where the input arrives; this module only names them.

use std::time::Duration;

/// Largest message on the global<->zone sync stream, either way (Kuma's KDS bound).
pub const SYNC_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// Largest request on a proxy's identity stream (OUT_OF_RANGE beyond).
pub const DP_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Identity streams one HTTP/2 connection may hold at once (tonic's default is unbounded).
pub const DP_STREAMS_PER_CONNECTION: u32 = 256;
/// SPIFFE Workload API streams (`FetchX509SVID`, `FetchX509Bundles`) one proxy agent serves at
/// once, over all its connections (RESOURCE_EXHAUSTED beyond).
pub const WORKLOAD_API_STREAMS: usize = 64;
/// Connections to one proxy agent's Workload API socket at once (a new one beyond is closed).
pub const WORKLOAD_API_CONNECTIONS: usize = 256;
/// Largest request on the Workload API socket (its requests are empty or a few audiences).
pub const WORKLOAD_API_REQUEST_BYTES: usize = 64 * 1024;
/// Largest HTTP request body of global's API (413 beyond).
pub const API_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Largest Secret (decoded) or data source (`inline`, `inlineString`, `file`).
pub const DATA_BYTES: usize = 1024 * 1024;
/// Largest document `parse` reads (YAML or JSON, one or many resources).
pub const INPUT_BYTES: usize = 4 * 1024 * 1024;
/// An HTTP client must send a request's headers within this; also the idle keep-alive limit.
pub const HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS client of the sync, proxy or HTTPS API listener must complete its handshake within
/// this; a silent connection is closed after it.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole HTTP request once its headers are in (408 and close after it).
pub const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests in flight at once on one h2 connection of the HTTPS API.
pub const HTTP2_STREAMS_PER_CONNECTION: u32 = 100;
