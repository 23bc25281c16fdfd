//! `global run`: binds the listeners the flags name and runs the server until Ctrl-C or SIGTERM.

use super::args::RunFlags;
use super::failure::Failure;

pub(super) async fn run(flags: RunFlags) -> Result<(), Failure> {
    let RunFlags {
        data_dir,
        api_addr,
        kds_addr,
        kds_tls_cert,
        kds_tls_key,
        vault_timeout,
    } = flags;
    let vault_timeouts = super::vault_timeouts(&vault_timeout)?;
    let listener = tokio::net::TcpListener::bind(&api_addr)
        .await
        .map_err(|e| Failure::usage(format!("cannot listen on --api-addr {api_addr}: {e}")))?;
    let kds_listener = tokio::net::TcpListener::bind(&kds_addr)
        .await
        .map_err(|e| Failure::usage(format!("cannot listen on --kds-addr {kds_addr}: {e}")))?;
    let mut kds = crate::KdsEndpoint::new(kds_listener);
    if let (Some(cert), Some(key)) = (kds_tls_cert, kds_tls_key) {
        kds.tls = crate::kds::KdsTls::Files { cert, key };
    }
    let listeners = crate::Listeners {
        api: listener,
        kds: Some(kds),
    };
    crate::run(
        crate::GlobalConfig {
            data_dir,
            vault_timeouts,
        },
        listeners,
        common::shutdown::signal(),
    )
    .await
    .map_err(|e| Failure::refused(e.to_string()))
}
