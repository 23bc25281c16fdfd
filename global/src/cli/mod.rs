//! The command line of the `global` binary (SPEC.md): the flags (`args`), the dispatch and the
//! exit codes (`failure`: 0 success, 1 refused or invalid, 2 usage, 3 server or Vault
//! unreachable). `run` starts the server (`run`); `apply`, `get`, `delete` and the token commands
//! talk to a running global over its HTTP API (`client`) and print what it answered (`print`);
//! `validate` needs no server (`validate`). Resource files are read by `input`. The flags of
//! `run` also come from `KMESH_GLOBAL_*` variables and `--config FILE` ([`SOURCES`], over
//! `common::config`); what waits on a terminal says so (`spinner`).

mod args;
mod client;
mod failure;
mod input;
mod print;
mod run;
mod spinner;
mod validate;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

pub use args::{ApiArgs, Cli, Command, DeleteKind, Format, GetKind};
pub use client::describe_api_error;
pub use common::cli::init_tracing;
pub use failure::{Failure, exit};
pub use validate::{ResourceReport, validate_resources};

/// `--vault-timeout`: the bounds of every Vault request of this process.
fn vault_timeouts(text: &str) -> Result<common::vault::Timeouts, Failure> {
    let d = common::duration::parse_duration(text)
        .map_err(|e| Failure::usage(format!("--vault-timeout: {e}")))?;
    if d.is_zero() {
        return Err(Failure::usage("--vault-timeout must be more than 0s"));
    }
    Ok(common::vault::Timeouts::with_request(d))
}

/// Where `global run`'s flags come from besides the command line: `KMESH_GLOBAL_<FLAG>`
/// variables and `--config FILE`.
pub const SOURCES: common::config::Sources = common::config::Sources {
    prefix: "KMESH_GLOBAL",
    subcommand: "run",
};

/// The whole command line as clap sees it (each `run` flag's help names its variable): what
/// parses, what `--help` and completion scripts show.
pub fn command() -> clap::Command {
    common::config::document(Cli::command(), &SOURCES)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli: Cli = common::config::parse(&SOURCES);
    if let Command::Completion { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command(), "global", &mut script);
        return common::cli::print_stdout(&script);
    }
    let runtime = match common::cli::start() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run(flags) => {
            common::logging::init("global", &flags.log);
            run::run(flags).await
        }
        Command::Completion { .. } => Ok(()),
        Command::Migrate { store } => {
            init_tracing();
            run::migrate(store).await
        }
        Command::ZoneToken(a)
        | Command::Generate {
            what: args::Generate::ZoneToken(a),
        } => client::zone_token(&a).await,
        Command::DataplaneToken(a)
        | Command::Generate {
            what: args::Generate::DataplaneToken(a),
        } => client::dataplane_token(&a).await,
        Command::Generate {
            what: args::Generate::UserToken(a),
        } => client::user_token(&a).await,
        Command::RevokeToken { id, from_file, api } => {
            client::revoke_token(id, from_file.as_deref(), &api).await
        }
        Command::RotateSigningKey { api } => client::rotate_signing_key(&api).await,
        Command::RetireSigningKey { kid, api } => client::retire_signing_key(&kid, &api).await,
        Command::Apply {
            files,
            dry_run,
            api,
        } => client::apply(&files, dry_run, &api).await,
        Command::Export {
            output,
            include_secrets,
            api,
        } => client::export(output, include_secrets, &api).await,
        Command::Get {
            what,
            name,
            mesh,
            output,
            api,
        } => client::get(what, name, &mesh, output, &api).await,
        Command::Delete {
            what,
            name,
            mesh,
            api,
        } => client::delete(what, &name, &mesh, &api).await,
        Command::Validate {
            files,
            output,
            vault_timeout,
        } => {
            let reports = validate::validate(&files, vault_timeouts(&vault_timeout)?).await?;
            print::validate_report(output, &reports);
            validate::verdict(&reports)
        }
    }
}

/// Reads a token file for tests and tools.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}
