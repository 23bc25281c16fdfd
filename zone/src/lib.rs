//! The zone control plane. It holds a copy of global's Meshes and Secrets in its own sled store,
//! kept current over one sync stream to global (`client`), each update validated and applied in
//! one transaction (`apply`), and serves from that store whether or not global is reachable. Its
//! read-only HTTP API (`api`) shows what it holds and the state of the connection. The `zone`
//! binary only parses flags (`cli`) and calls `run`; tests call `run` with port-0 listeners.

pub mod api;
pub mod apply;
pub mod cli;
pub mod client;
pub mod metrics;
pub mod state;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use state::ZoneCtx;

/// Configuration of a zone control plane.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// The zone's name; must be the one its token was issued for.
    pub name: String,
    /// `grpcs://HOST:PORT` of global's sync server.
    pub global_address: String,
    /// PEM CA bundle that signs global's sync certificate (`<global data-dir>/kds-ca.pem`).
    pub global_ca_file: Option<PathBuf>,
    /// Skip verification of global's certificate (explicit opt-in only).
    pub insecure_skip_verify: bool,
    /// File holding the zone token (re-read on every connection attempt).
    pub token_file: PathBuf,
    pub data_dir: PathBuf,
    /// Reconnection backoff: the first retry comes within `reconnect_initial`, the delay doubles
    /// up to `reconnect_max`, each with jitter.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl ZoneConfig {
    pub fn new(name: &str, global_address: &str, token_file: PathBuf, data_dir: PathBuf) -> Self {
        Self {
            name: name.to_string(),
            global_address: global_address.to_string(),
            global_ca_file: None,
            insecure_skip_verify: false,
            token_file,
            data_dir,
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// The sockets a zone serves on. The proxy identity service (`--dp-addr`) joins with the
/// dataplane work.
pub struct Listeners {
    pub api: TcpListener,
}

impl From<TcpListener> for Listeners {
    fn from(api: TcpListener) -> Self {
        Self { api }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error(transparent)]
    Store(#[from] common::store::StoreError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("API server failed: {0}")]
    Serve(std::io::Error),
}

/// Runs the zone until `shutdown` completes.
pub async fn run(
    config: ZoneConfig,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ZoneError> {
    let listeners = listeners.into();
    // Checked before anything is opened, so that a bad flag fails fast.
    let target = client::Target::new(&config).map_err(ZoneError::Config)?;
    let store = common::store::Store::open(&config.data_dir)?;
    let ctx = Arc::new(ZoneCtx::new(config.clone(), store)?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let sync = tokio::spawn(client::run(ctx.clone(), target, stop_rx.clone()));
    tracing::info!(
        zone = %config.name,
        api = %listeners.api.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        global = %config.global_address,
        data_dir = %config.data_dir.display(),
        meshes = ctx.store.versions(common::model::Kind::Mesh).1.len(),
        "zone control plane started"
    );
    let mut api_stop = stop_rx.clone();
    let served = axum::serve(
        listeners.api,
        api::router(ctx.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = api_stop.wait_for(|v| *v).await;
    })
    .await;
    let _ = sync.await;
    tracing::info!(zone = %config.name, "zone control plane stopped");
    served.map_err(ZoneError::Serve)
}
