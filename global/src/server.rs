//! Wiring of the global control plane: opens the store (sled in the data directory, or a
//! PostgreSQL database shared by replicas, waited for with backoff while it is unreachable) and the
//! admin token, signing key, sync identity and HTTPS API CA (shared through the store on
//! PostgreSQL), serves the API on the given plain listener and, with the same router, on the HTTPS
//! one (`https`), the sync server (KDS) on its own, and stops everything on the one shutdown
//! signal.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use common::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::admission::Admission;
use crate::api::{self, ApiState};
use crate::auth::AdminToken;
use crate::authority::Authority;
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

/// The sockets global serves on. Without `kds`, no sync server runs (API-only tests); without
/// `api_tls`, the API is served in plain HTTP only.
pub struct Listeners {
    pub api: TcpListener,
    pub kds: Option<KdsEndpoint>,
    /// The API over HTTPS (`--api-tls-addr`), the same routes as `api`.
    pub api_tls: Option<crate::https::ApiTlsEndpoint>,
}

impl From<TcpListener> for Listeners {
    fn from(api: TcpListener) -> Self {
        Self {
            api,
            kds: None,
            api_tls: None,
        }
    }
}

/// Which store global keeps its state in (`--store`).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum StoreKind {
    /// sled under the data directory (the default).
    #[default]
    Sled,
    /// A PostgreSQL database shared by every replica: `postgres://USER[:PASS]@HOST[:PORT]/DB`.
    Postgres(String),
}

impl std::fmt::Debug for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        match self {
            StoreKind::Sled => f.write_str("sled"),
            StoreKind::Postgres(_) => f.write_str("postgres(<url redacted>)"),
        }
    }
}

impl std::str::FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "sled" {
            Ok(StoreKind::Sled)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreKind::Postgres(s.to_string()))
        } else {
            Err("expected sled or postgres://USER[:PASS]@HOST[:PORT]/DB".into())
        }
    }
}

/// Configuration of a global control plane.
#[derive(Debug, Clone)]
pub struct GlobalConfig {
    pub data_dir: PathBuf,
    pub store: StoreKind,
    /// Bounds of every Vault request (the backend checks of admissions).
    pub vault_timeouts: common::vault::Timeouts,
    /// Start even when the store is older than, or not, the one last committed to, as a new
    /// epoch (`--accept-store-rollback`).
    pub accept_store_rollback: bool,
    /// Names the API answers to besides the loopback ones (`--api-host`).
    pub api_hosts: Vec<String>,
    /// The only directories `file:` data sources are read from (`--data-source-dir`); empty:
    /// none (a `file:` source is refused, saying how to allow it).
    pub data_source_dirs: Vec<PathBuf>,
    /// The key Secrets are sealed with at rest (`--secrets-key-file`): required with PostgreSQL
    /// (the same file on every replica); on sled `None` is `<data-dir>/secrets.key`, generated on
    /// the first start.
    pub secrets_key_file: Option<PathBuf>,
    /// Keys that open what they sealed and never seal (`--secrets-extra-key-file`): a rotation.
    pub secrets_extra_key_files: Vec<PathBuf>,
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
    #[error("{0}")]
    DataSources(String),
    #[error("sync server (KDS): {0}")]
    Kds(String),
    #[error("HTTPS API (--api-tls-addr): {0}")]
    ApiTls(String),
    #[error("state shared by the replicas: {0}")]
    Shared(#[from] crate::shared::ShareError),
    #[error("stopped while waiting for the store")]
    Stopped,
    #[error(transparent)]
    Guard(#[from] crate::store_guard::GuardError),
    #[error(transparent)]
    Authority(#[from] crate::authority::AuthorityError),
    #[error(transparent)]
    SecretsKey(#[from] common::sealing::KeyError),
    #[error(
        "a PostgreSQL store needs --secrets-key-file FILE: the key Secrets are sealed with, the same file on every replica (32 random bytes in base64: `head -c 32 /dev/urandom | base64 > FILE && chmod 600 FILE`)"
    )]
    SecretsKeyRequired,
}

/// Opens the store; PostgreSQL is waited for with backoff while it is unreachable (one log line
/// per change of state). Other failures (a schema from a newer binary, a bad URL) end the start.
async fn open_store(
    config: &GlobalConfig,
    stopped: &Shutdown,
) -> Result<common::store::Store, GlobalError> {
    use common::store::{Store, StoreError};
    if matches!(config.store, StoreKind::Postgres(_)) && config.secrets_key_file.is_none() {
        return Err(GlobalError::SecretsKeyRequired);
    }
    let key = std::sync::Arc::new(common::sealing::SecretsKey::for_data_dir_with_extra(
        &config.data_dir,
        config.secrets_key_file.as_deref(),
        &config.secrets_extra_key_files,
    )?);
    let url = match &config.store {
        StoreKind::Sled => {
            return Store::open(&config.data_dir, key).map_err(|e| match e {
                StoreError::Damaged { path, reason } => crate::store_guard::GuardError::Refused {
                    store: format!("at {path} (sled)"),
                    finding: format!("cannot be read: {reason}"),
                }
                .into(),
                e => e.into(),
            });
        }
        StoreKind::Postgres(url) => url,
    };
    let mut backoff = common::backoff::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
        common::backoff::Jitter::UpperHalf,
    );
    let mut waiting = false;
    loop {
        match Store::connect(url, key.clone()).await {
            Ok(store) => {
                if waiting {
                    tracing::info!("PostgreSQL store reachable: starting");
                } else {
                    tracing::info!("PostgreSQL store connected");
                }
                return Ok(store);
            }
            Err(e @ StoreError::Unavailable { .. }) => {
                if !waiting {
                    tracing::warn!(error = %e, "PostgreSQL store unreachable: retrying with backoff");
                    waiting = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stopped.wait() => return Err(GlobalError::Stopped),
                }
            }
            // Read, but not as a store: damaged pages (PostgreSQL's checksums), undecodable rows.
            Err(e @ (StoreError::Postgres { .. } | StoreError::Corrupt { .. })) => {
                return Err(crate::store_guard::GuardError::Refused {
                    store: crate::store_guard::POSTGRES.into(),
                    finding: format!("it cannot be read: {e}"),
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        }
    }
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
        api_tls,
    } = listeners.into();
    let data_dir_err = |source| GlobalError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    };
    common::file::private_dir(&config.data_dir).map_err(data_dir_err)?;
    let (stop, stopped) = Shutdown::from_future(shutdown);
    let store = match open_store(&config, &stopped).await {
        Err(GlobalError::Stopped) => return Ok(()),
        r => r?,
    };
    // `file:` data sources only under the operator's directories, never the data directory.
    let roots = common::datasource::FileRoots::new(&config.data_source_dirs, &config.data_dir)
        .map_err(GlobalError::DataSources)?;
    store.confine_files(roots);
    let store_identity =
        crate::store_guard::verify(&store, &config.data_dir, config.accept_store_rollback).await?;
    tracing::info!(
        store_id = %store_identity.id, epoch = store_identity.epoch,
        revision = store.revision(), resources = store.fingerprint().resources,
        "store checked against its manifest"
    );
    let manifest_task = tokio::spawn(common::integrity::keep_manifest(
        store.clone(),
        config.data_dir.clone(),
        store_identity.clone(),
        stopped.clone(),
    ));
    let dir = &config.data_dir;
    crate::shared::files(&store, dir, &crate::shared::ADMIN_TOKEN, || {
        AdminToken::load_or_create(dir).map(drop)
    })
    .await?;
    crate::shared::files(&store, dir, &crate::shared::SIGNING_KEY, || {
        TokenSigner::load_or_create(dir).map(drop)
    })
    .await?;
    let admin = AdminToken::load_or_create(&config.data_dir).map_err(data_dir_err)?;
    let authority = Authority::load(&store, &config.data_dir).await?;
    let authority_task = tokio::spawn(authority.clone().run(stopped.clone()));
    let metrics = Arc::new(Metrics::new());
    metrics.meshes.set(store.list_meshes()?.len() as i64);
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
        .with_replica(replicas.id())
        .with_coordinator(replicas.coordinator());
    // The first round before serving: this replica is listed (and a sled global leads) at once.
    // Bounded: an unreachable store delays the start by at most this much.
    let _ = tokio::time::timeout(crate::replicas::HEARTBEAT * 3, replicas.round(&zones)).await;
    tracing::info!(replica = %replicas.id(), leader = replicas.is_leader(), "replica registered");
    let replicas_task = tokio::spawn(replicas.clone().run(zones.clone(), stopped.clone()));
    let kds_task = match kds {
        Some(kds) => {
            if let crate::kds::KdsTls::Generated = kds.tls {
                crate::shared::files(&store, dir, &crate::shared::KDS_IDENTITY, || {
                    crate::kds::tls::load(dir, &kds.tls).map(drop)
                })
                .await?;
            }
            let tls = crate::kds::tls::load(&config.data_dir, &kds.tls)
                .map_err(|e| GlobalError::Kds(e.to_string()))?;
            tracing::info!(
                kds = %kds.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                "sync server (KDS) listening"
            );
            let server = KdsServer::new(
                store.clone(),
                zones.clone(),
                authority.clone(),
                metrics.kds.clone(),
                kds.config,
                stopped.clone(),
            )
            .with_identity(store_identity);
            Some(tokio::spawn(server.serve(kds.listener, tls)))
        }
        None => None,
    };
    let https = match api_tls {
        Some(endpoint) => {
            let local = endpoint.listener.local_addr().ok();
            let names = crate::https::certificate_names(local, &config.api_hosts);
            if let crate::https::ApiTls::Generated = endpoint.tls {
                crate::shared::files(&store, dir, &crate::shared::API_CA, || {
                    crate::https::server_config(dir, &endpoint.tls, &names)
                        .map(drop)
                        .map_err(std::io::Error::other)
                })
                .await?;
            }
            let tls = crate::https::server_config(dir, &endpoint.tls, &names)
                .map_err(GlobalError::ApiTls)?;
            Some((endpoint.listener, tls))
        }
        None => None,
    };
    let state = ApiState {
        admission: Admission::new(store.clone(), metrics.clone(), config.vault_timeouts),
        store,
        admin,
        metrics,
        zones,
        authority,
        replicas,
        hosts: common::http::AllowedHosts::new(&config.api_hosts),
        audit: crate::audit::Audit::open(&config.data_dir).map_err(data_dir_err)?,
        auth_log: Default::default(),
    };
    let app = api::router(state);
    tracing::info!(
        api = %api_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        api_tls = %https
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        data_dir = %config.data_dir.display(),
        store = ?config.store,
        "global control plane started"
    );
    let api = {
        let plain_stop = stopped.clone();
        let plain = serve_http(
            api_listener,
            app.clone(),
            async move { plain_stop.wait().await },
        );
        let tls_stop = stopped.clone();
        async move {
            match https {
                None => plain.await,
                Some((listener, tls)) => {
                    let secure = common::http::serve_https(listener, app, tls, async move {
                        tls_stop.wait().await
                    });
                    let (a, b) = tokio::join!(plain, secure);
                    a.and(b)
                }
            }
        }
    };
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
    let _ = manifest_task.await;
    let _ = authority_task.await;
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
