//! Wiring of the global control plane: opens the store and the admin token in the data directory,
//! serves the API on the given listener and the sync server (KDS) on its own, and stops
//! everything on the one shutdown signal.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use common::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::admission::Admission;
use crate::api::{self, ApiState};
use crate::auth::AdminToken;
use crate::kds::{KdsConfig, KdsServer, KdsTls, Zones};
use crate::metrics::Metrics;
use crate::tokens::TokenSigner;

/// Where and how the sync server (KDS) listens.
pub struct KdsEndpoint {
    pub listener: TcpListener,
    pub tls: KdsTls,
    pub config: KdsConfig,
}

impl KdsEndpoint {
    /// A sync server with a generated certificate and default settings.
    pub fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            tls: KdsTls::Generated,
            config: KdsConfig::default(),
        }
    }
}

/// The sockets global serves on. Without `kds`, no sync server runs (API-only tests).
pub struct Listeners {
    pub api: TcpListener,
    pub kds: Option<KdsEndpoint>,
}

impl From<TcpListener> for Listeners {
    fn from(api: TcpListener) -> Self {
        Self { api, kds: None }
    }
}

/// Configuration of a global control plane.
#[derive(Debug, Clone)]
pub struct GlobalConfig {
    pub data_dir: PathBuf,
    /// Bounds of every Vault request (the backend checks of admissions).
    pub vault_timeouts: common::vault::Timeouts,
}

#[derive(Debug, thiserror::Error)]
pub enum GlobalError {
    #[error(transparent)]
    Store(#[from] common::store::StoreError),
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("API server failed: {0}")]
    Serve(std::io::Error),
    #[error("sync server (KDS): {0}")]
    Kds(String),
}

/// Runs global until `shutdown` completes. `listeners` is the API listener alone (no sync server)
/// or a `Listeners` with the KDS endpoint.
pub async fn run(
    config: GlobalConfig,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GlobalError> {
    let Listeners {
        api: api_listener,
        kds,
    } = listeners.into();
    let data_dir_err = |source| GlobalError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(data_dir_err)?;
    let admin = AdminToken::load_or_create(&config.data_dir).map_err(data_dir_err)?;
    let tokens = Arc::new(TokenSigner::load_or_create(&config.data_dir).map_err(data_dir_err)?);
    let store = common::store::Store::open(&config.data_dir)?;
    let metrics = Arc::new(Metrics::new());
    metrics.meshes.set(store.list_meshes()?.len() as i64);
    let (stop, stopped) = Shutdown::from_future(shutdown);
    let identity = crate::replicas::Identity::new(
        api_listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        kds.as_ref()
            .and_then(|k| k.listener.local_addr().ok())
            .map(|a| a.to_string())
            .unwrap_or_default(),
    );
    let replicas = crate::replicas::Replicas::new(&store, identity);
    let zones = Zones::load(&store)?
        .with_gauge(metrics.kds.zones_online.clone())
        .with_replica(replicas.id());
    // The first round before serving: this replica is listed (and a sled global leads) at once.
    replicas.round(&zones).await;
    tracing::info!(replica = %replicas.id(), leader = replicas.is_leader(), "replica registered");
    let replicas_task = tokio::spawn(replicas.clone().run(zones.clone(), stopped.clone()));
    let kds_task = match kds {
        Some(kds) => {
            let tls = crate::kds::tls::load(&config.data_dir, &kds.tls)
                .map_err(|e| GlobalError::Kds(e.to_string()))?;
            tracing::info!(
                kds = %kds.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                "sync server (KDS) listening"
            );
            let server = KdsServer::new(
                store.clone(),
                zones.clone(),
                tokens.verifier().clone(),
                metrics.kds.clone(),
                kds.config,
                stopped.clone(),
            );
            Some(tokio::spawn(server.serve(kds.listener, tls)))
        }
        None => None,
    };
    let state = ApiState {
        admission: Admission::new(store.clone(), metrics.clone(), config.vault_timeouts),
        store,
        admin,
        metrics,
        zones,
        tokens,
        replicas,
    };
    let app = api::router(state);
    tracing::info!(
        api = %api_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        data_dir = %config.data_dir.display(),
        "global control plane started"
    );
    let api = serve_http(api_listener, app, async move { stopped.wait().await });
    let result = match kds_task {
        None => api.await.map_err(GlobalError::Serve),
        Some(mut kds_task) => {
            tokio::pin!(api);
            tokio::select! {
                r = &mut api => {
                    stop.fire();
                    let kds = kds_task.await;
                    r.map_err(GlobalError::Serve).and(kds_result(kds))
                }
                r = &mut kds_task => {
                    // The sync server only ends first when it failed: stop the API too.
                    stop.fire();
                    let api = api.await;
                    kds_result(r).and(api.map_err(GlobalError::Serve))
                }
            }
        }
    };
    stop.fire();
    let _ = replicas_task.await;
    tracing::info!("global control plane stopped");
    result
}

fn kds_result(
    r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), GlobalError> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(GlobalError::Kds(e.to_string())),
        Err(e) => Err(GlobalError::Kds(e.to_string())),
    }
}

pub use common::http::serve_http;
