//! The zone control plane. It holds a copy of global's Meshes and Secrets in its own sled store,
//! kept current over one sync stream to global (`client`), each update validated and applied in
//! one transaction (`apply`), and serves from that store whether or not global is reachable. It
//! issues and rotates its proxies' certificates (`identity`) and hands them out over the proxy
//! identity service on `--dp-addr` (`dp`), to the agents of its proxies (`agent`, `zone proxy`).
//! Its read-only HTTP API (`api`) shows what it holds, its dataplanes and the state of the
//! connection, with bodies typed in `views`. `config` is what `run` takes; `dial` (TLS dialing,
//! reconnect policy) is shared by the sync client and the agent, which uses nothing else of the
//! control plane; `failover` orders the dialing of global's addresses when there are several.
//! The `zone` binary only parses flags (`cli`) and calls `run` (or `agent::run`);
//! tests call them with port-0 listeners. Every task stops on one `common::shutdown::Shutdown`.

pub mod agent;
pub mod api;
pub mod apply;
pub mod cli;
pub mod client;
pub mod clocks;
pub mod config;
pub mod dial;
pub mod dp;
pub mod failover;
pub mod identity;
pub mod metrics;
pub mod rollback;
pub mod state;
pub mod views;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::ZoneConfig;
pub use state::ZoneCtx;

/// The sockets a zone serves on: its HTTP API and, when given, the proxy identity service.
pub struct Listeners {
    pub api: TcpListener,
    pub dp: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(api: TcpListener) -> Self {
        Self { api, dp: None }
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
    #[error("proxy identity service (--dp-addr): {0}")]
    Dp(String),
    #[error(transparent)]
    SecretsKey(#[from] common::sealing::KeyError),
    #[error(
        "the zone's store at {path} is damaged ({reason}), and global cannot be reached ({global}) to take its state again.\nWays out: make global reachable and start the zone again (it then moves the damaged store aside and takes global's state, global being the source of truth), or restore the zone's data directory from a backup."
    )]
    DamagedStore {
        path: String,
        reason: String,
        global: String,
    },
}

/// Opens the zone's store. A damaged one is said loudly; when global can be reached it is moved
/// aside (`store.damaged-<unix ms>`) and a fresh store takes global's state, since global is
/// the source of truth; otherwise the zone does not start, rather than serve half a store.
async fn open_store(
    config: &ZoneConfig,
    targets: &[client::Target],
) -> Result<common::store::Store, ZoneError> {
    use common::integrity::{Manifest, check};
    use common::store::{Store, StoreError};
    common::file::private_dir(&config.data_dir).map_err(|e| {
        ZoneError::Config(format!(
            "cannot prepare the data directory {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let key = std::sync::Arc::new(common::sealing::SecretsKey::for_data_dir_with_extra(
        &config.data_dir,
        config.secrets_key_file.as_deref(),
        &config.secrets_extra_key_files,
    )?);
    let (path, reason) = match Store::open(&config.data_dir, key.clone()) {
        Err(StoreError::Damaged { path, reason }) => (path, reason),
        Err(e) => return Err(e.into()),
        Ok(store) => {
            // Read short or rolled back: as damaged (the zone cannot tell what is missing).
            let finding = match Manifest::read(&config.data_dir) {
                Ok(Some(m)) => {
                    check(&m, &store.identity().await?, &store.fingerprint()).map(|f| f.to_string())
                }
                Ok(None) => None,
                Err(e) => Some(e),
            };
            match finding {
                None => return Ok(store),
                Some(f) => {
                    drop(store);
                    (config.data_dir.join("store").display().to_string(), f)
                }
            }
        }
    };
    tracing::error!(store = %path, reason = %reason, "the zone's store is damaged");
    let mut errors = Vec::new();
    let mut reached = None;
    for t in targets {
        match t.connect(dial::CONNECT_TIMEOUT).await {
            Ok(_) => {
                reached = Some(t.address.clone());
                break;
            }
            Err(e) => errors.push(e),
        }
    }
    let Some(global) = reached else {
        return Err(ZoneError::DamagedStore {
            path,
            reason,
            global: errors.join("; "),
        });
    };
    let aside = config
        .data_dir
        .join(format!("store.damaged-{}", common::clock::now_ms()));
    std::fs::rename(config.data_dir.join("store"), &aside).map_err(|e| {
        ZoneError::Config(format!(
            "cannot move the damaged store {path} aside to {}: {e}",
            aside.display()
        ))
    })?;
    tracing::error!(
        moved_to = %aside.display(), global = %global,
        "moved the damaged store aside: taking global's state again (proxies are certified anew)"
    );
    Ok(Store::open(&config.data_dir, key)?)
}

/// Runs the zone until `shutdown` completes.
pub async fn run(
    config: ZoneConfig,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ZoneError> {
    let listeners = listeners.into();
    // Checked before anything is opened, so that a bad flag fails fast.
    let targets = client::targets(&config).map_err(ZoneError::Config)?;
    let store = open_store(&config, &targets).await?;
    // `file:` data sources only under the operator's directories, never the data directory.
    store.confine_files(
        common::datasource::FileRoots::new(&config.data_source_dirs, &config.data_dir)
            .map_err(ZoneError::Config)?,
    );
    let store_identity = store.identity().await?;
    common::integrity::write_manifest(&store, &config.data_dir, &store_identity)
        .map_err(|e| ZoneError::Config(format!("cannot write the store manifest: {e}")))?;
    let ctx = Arc::new(ZoneCtx::new(config.clone(), store)?);
    let (stop, shutdown) = common::shutdown::Shutdown::from_future(shutdown);
    let manifest = tokio::spawn(common::integrity::keep_manifest(
        ctx.store.clone(),
        config.data_dir.clone(),
        store_identity,
        shutdown.clone(),
    ));
    let dp_tls = match &listeners.dp {
        Some(_) => Some(dp::tls::load(&config.data_dir, &config.dp_tls).map_err(ZoneError::Dp)?),
        None => None,
    };
    let sync = tokio::spawn(client::run(ctx.clone(), targets, shutdown.clone()));
    let identity = identity::IdentityManager::new(ctx.clone(), config.issuance.clone());
    let issuance = tokio::spawn(identity.clone().run(shutdown.clone()));
    let dp_addr = listeners
        .dp
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let dp_task = match (listeners.dp, dp_tls) {
        (Some(listener), Some(tls)) => {
            let server = dp::DpServer::new(ctx.clone(), identity.clone(), shutdown.clone());
            let stop = stop.clone();
            Some(tokio::spawn(async move {
                let r = server.serve(listener, tls).await;
                if let Err(e) = &r {
                    // The zone is of little use to its proxies without it: stop everything.
                    tracing::error!(error = %e, "the proxy identity service failed");
                    stop.fire();
                }
                r.map_err(|e| ZoneError::Dp(dial::error_chain(&e)))
            }))
        }
        _ => None,
    };
    tracing::info!(
        zone = %config.name,
        api = %listeners.api.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        dp = %dp_addr,
        global = %config.global_addresses.join(","),
        data_dir = %config.data_dir.display(),
        meshes = ctx.store.versions(common::model::Kind::Mesh).1.len(),
        "zone control plane started"
    );
    let api_stop = shutdown.clone();
    let served = common::http::serve_http(
        listeners.api,
        api::router(ctx.clone(), identity.clone()),
        async move { api_stop.wait().await },
    )
    .await;
    // Whatever ended first, everything stops.
    stop.fire();
    let dp_result = match dp_task {
        Some(t) => t
            .await
            .unwrap_or_else(|e| Err(ZoneError::Dp(e.to_string()))),
        None => Ok(()),
    };
    let _ = sync.await;
    let _ = issuance.await;
    let _ = manifest.await;
    tracing::info!(zone = %config.name, "zone control plane stopped");
    served.map_err(ZoneError::Serve).and(dp_result)
}
