//! `global run`: binds the listeners the flags name (plain HTTP on loopback only unless
//! `--api-insecure-http`) and runs the server until Ctrl-C or SIGTERM. A listener that cannot be
//! opened (an address in use) is said with its address and flag: exit 1.

use super::args::RunFlags;
use super::failure::Failure;

pub(super) async fn run(flags: RunFlags) -> Result<(), Failure> {
    let RunFlags {
        config: _,
        log: _,
        data_dir,
        api_addr,
        api_insecure_http,
        api_tls_addr,
        api_tls_cert,
        api_tls_key,
        kds_addr,
        kds_tls_cert,
        kds_tls_key,
        vault_timeout,
        store,
        accept_store_rollback,
        api_hosts,
        data_source_dirs,
        secrets_key_file,
        secrets_extra_key_files,
    } = flags;
    let vault_timeouts = super::vault_timeouts(&vault_timeout)?;
    if matches!(store, crate::StoreKind::Postgres(_)) && secrets_key_file.is_none() {
        return Err(Failure::usage(
            crate::GlobalError::SecretsKeyRequired.to_string(),
        ));
    }
    // Plain HTTP stays on loopback unless the operator says otherwise, checked before binding.
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(&api_addr)
        .await
        .map_err(|e| Failure::usage(format!("--api-addr {api_addr}: {e}")))?
        .collect();
    if let Some(refusal) = crate::https::plain_http_refusal(&api_addr, &resolved, api_insecure_http)
    {
        return Err(Failure::usage(refusal));
    }
    let listener = listen(&api_addr, "--api-addr").await?;
    if !resolved.iter().all(|a| a.ip().is_loopback()) {
        tracing::warn!(
            api = %api_addr,
            "--api-insecure-http: the API is served in plain HTTP beyond loopback; the admin token and Secrets cross the network in clear"
        );
    }
    let tls_listener = listen(&api_tls_addr, "--api-tls-addr").await?;
    let mut api_tls = crate::ApiTlsEndpoint::new(tls_listener);
    if let (Some(cert), Some(key)) = (api_tls_cert, api_tls_key) {
        api_tls.tls = crate::ApiTls::Files { cert, key };
    }
    let kds_listener = listen(&kds_addr, "--kds-addr").await?;
    let mut kds = crate::KdsEndpoint::new(kds_listener);
    if let (Some(cert), Some(key)) = (kds_tls_cert, kds_tls_key) {
        kds.tls = crate::kds::KdsTls::Files { cert, key };
    }
    let listeners = crate::Listeners {
        api: listener,
        kds: Some(kds),
        api_tls: Some(api_tls),
    };
    crate::run(
        crate::GlobalConfig {
            data_dir,
            store,
            vault_timeouts,
            accept_store_rollback,
            api_hosts,
            data_source_dirs,
            secrets_key_file,
            secrets_extra_key_files,
        },
        listeners,
        common::shutdown::signal(),
    )
    .await
    .map_err(|e| Failure::refused(e.to_string()))
}

/// Binds the address of `flag`: in use, not on this host or not allowed is exit 1.
async fn listen(addr: &str, flag: &str) -> Result<tokio::net::TcpListener, Failure> {
    common::cli::listen(addr, flag).await.map_err(|e| Failure {
        code: e.code,
        message: e.message,
    })
}

/// `global migrate --store URL`: applies the migrations this binary knows, nothing else.
pub(super) async fn migrate(store: crate::StoreKind) -> Result<(), Failure> {
    let crate::StoreKind::Postgres(url) = store else {
        return Err(Failure::usage(
            "global migrate needs --store postgres://...: sled has no schema",
        ));
    };
    match common::store::Store::migrate(&url).await {
        Ok(version) => {
            println!("PostgreSQL schema at version {version}");
            Ok(())
        }
        Err(e @ common::store::StoreError::Unavailable { .. }) => {
            Err(Failure::unreachable(e.to_string()))
        }
        Err(e) => Err(Failure::refused(e.to_string())),
    }
}
