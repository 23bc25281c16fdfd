//! What the command lines of both control planes share: the exit codes of SPEC.md, logging to
//! stderr (`RUST_LOG`, `info` by default) and the start of the process (the TLS crypto provider,
//! the tokio runtime).

use std::process::ExitCode;

/// Exit codes of SPEC.md.
pub mod exit {
    pub const OK: u8 = 0;
    pub const REFUSED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs the process's TLS crypto provider and starts the runtime; on failure, says why on
/// stderr and returns the exit code to end with.
pub fn start() -> Result<tokio::runtime::Runtime, ExitCode> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("error: cannot start the runtime: {e}");
        ExitCode::from(exit::REFUSED)
    })
}
