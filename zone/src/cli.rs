//! The command line of the `zone` binary (SPEC.md). Today: `zone run`. Exit codes: 0 success,
//! 1 refused or failed, 2 usage, 3 unreachable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::ZoneConfig;

#[derive(Parser, Debug)]
#[command(
    name = "zone",
    version,
    about = "Zone control plane: keeps a copy of global's Meshes and Secrets and serves from it"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a zone control plane.
    Run(RunArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The zone's name: the one its token was issued for (`global zone-token --zone NAME`).
    #[arg(long)]
    pub name: String,
    /// Global's sync server, grpcs://HOST:PORT (global's --kds-addr).
    #[arg(long, default_value = "grpcs://127.0.0.1:5685")]
    pub global_address: String,
    /// PEM CA that signs global's sync certificate (global writes <data-dir>/kds-ca.pem).
    #[arg(long)]
    pub global_ca_file: Option<PathBuf>,
    /// Do not verify global's certificate (testing only).
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// File holding the zone token.
    #[arg(long)]
    pub token_file: PathBuf,
    /// Where the zone keeps its store.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address of the zone's HTTP API.
    #[arg(long, default_value = "127.0.0.1:5682")]
    pub api_addr: String,
    /// Address of the proxy identity service (served once dataplane support lands).
    #[arg(long)]
    pub dp_addr: Option<String>,
}

pub mod exit {
    pub const OK: u8 = 0;
    pub const REFUSED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit::REFUSED);
        }
    };
    match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
    }
}

async fn run(args: RunArgs) -> ExitCode {
    init_tracing();
    let mut config = ZoneConfig::new(
        &args.name,
        &args.global_address,
        args.token_file.clone(),
        args.data_dir.clone(),
    );
    config.global_ca_file = args.global_ca_file.clone();
    config.insecure_skip_verify = args.insecure_skip_verify;
    if let Err(e) = crate::client::Target::new(&config) {
        eprintln!("error: {e}");
        return ExitCode::from(exit::USAGE);
    }
    if args.insecure_skip_verify {
        tracing::warn!("--insecure-skip-verify: global's certificate is NOT verified");
    }
    if let Some(dp) = &args.dp_addr {
        tracing::info!(dp_addr = %dp, "--dp-addr noted: the proxy identity service is not served by this version yet");
    }
    let listener = match tokio::net::TcpListener::bind(&args.api_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on --api-addr {}: {e}", args.api_addr);
            return ExitCode::from(exit::USAGE);
        }
    };
    match crate::run(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::REFUSED)
        }
    }
}
