//! The command line of the `global` binary (SPEC.md): the flags, the dispatch and the exit codes
//! (0 success, 1 refused or invalid, 2 usage, 3 server or Vault unreachable). `run` starts the
//! server (`run`); `apply`, `get`, `delete` and the token commands talk to a running global over
//! its HTTP API (`client`) and print what it answered (`print`); `validate` needs no server
//! (`validate`).

mod client;
mod print;
mod run;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use common::model::Resource;

pub use client::describe_api_error;
pub use validate::{ResourceReport, validate_resources};

#[derive(Parser, Debug)]
#[command(
    name = "global",
    version,
    about = "Global control plane: holds Meshes and Secrets, validates CA backends, syncs zones"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// URL of the global API.
    #[arg(long, default_value = "http://127.0.0.1:5681", env = "GLOBAL_API")]
    pub api: String,
    /// File holding the admin token (written by `global run` to <data-dir>/admin-token).
    #[arg(long, env = "GLOBAL_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the global control plane.
    Run {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:5681")]
        api_addr: String,
        /// Address of the sync server zones dial (gRPC over TLS).
        #[arg(long, default_value = "127.0.0.1:5685")]
        kds_addr: String,
        /// PEM certificate (chain) of the sync server; without it one is generated and its CA
        /// written to <data-dir>/kds-ca.pem.
        #[arg(long, requires = "kds_tls_key")]
        kds_tls_cert: Option<PathBuf>,
        /// PEM private key of the sync server.
        #[arg(long, requires = "kds_tls_cert")]
        kds_tls_key: Option<PathBuf>,
        /// Bound on each request to Vault during admission (the test certificate), e.g. 10s.
        #[arg(long, default_value = "10s")]
        vault_timeout: String,
    },
    /// Print a token with which a zone authenticates to global.
    ZoneToken {
        #[arg(long)]
        zone: String,
        /// How long the token is valid, e.g. 720h, 30d.
        #[arg(long, default_value = "720h")]
        valid_for: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a token with which one proxy authenticates to its zone (`zone proxy --token-file`);
    /// it is bound to that mesh and dataplane name.
    DataplaneToken {
        #[arg(long)]
        mesh: String,
        #[arg(long)]
        name: String,
        /// How long the token is valid, e.g. 720h, 30d.
        #[arg(long, default_value = "720h")]
        valid_for: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create or update resources from files (`-f -` reads stdin), all or nothing.
    Apply {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<String>,
        /// Validate fully (the Vault test certificate included) and store nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Read resources.
    Get {
        what: GetKind,
        name: Option<String>,
        #[arg(long, default_value = "default")]
        mesh: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a mesh (with everything in it) or a secret.
    Delete {
        what: DeleteKind,
        name: String,
        #[arg(long, default_value = "default")]
        mesh: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Validate resource files without a running global: parse, validate, resolve data sources
    /// (Secrets from the same files), issue the Vault test certificate, print a report.
    Validate {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Bound on each request to Vault (the test certificate), e.g. 10s.
        #[arg(long, default_value = "10s")]
        vault_timeout: String,
    },
}

/// `--vault-timeout`: sets the bounds of every Vault request of this process.
fn set_vault_timeout(text: &str) -> Result<(), Failure> {
    let d = common::duration::parse_duration(text)
        .map_err(|e| Failure::usage(format!("--vault-timeout: {e}")))?;
    if d.is_zero() {
        return Err(Failure::usage("--vault-timeout must be more than 0s"));
    }
    common::vault::Timeouts::set_configured(common::vault::Timeouts::with_request(d));
    Ok(())
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetKind {
    Meshes,
    Mesh,
    Secrets,
    Secret,
    Zones,
    Zone,
    Dataplanes,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteKind {
    Mesh,
    Secret,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

/// Exit codes of SPEC.md.
pub mod exit {
    pub const OK: u8 = 0;
    pub const REFUSED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
}

/// A command failure carrying its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Self {
            code: exit::REFUSED,
            message: message.into(),
        }
    }
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: exit::USAGE,
            message: message.into(),
        }
    }
    pub(crate) fn unreachable(message: impl Into<String>) -> Self {
        Self {
            code: exit::UNREACHABLE,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::refused(format!("{e:#}"))
    }
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
        Command::Run {
            data_dir,
            api_addr,
            kds_addr,
            kds_tls_cert,
            kds_tls_key,
            vault_timeout,
        } => {
            init_tracing();
            set_vault_timeout(&vault_timeout)?;
            run::run(run::RunArgs {
                data_dir,
                api_addr,
                kds_addr,
                kds_tls_cert,
                kds_tls_key,
            })
            .await
        }
        Command::ZoneToken {
            zone,
            valid_for,
            api,
        } => client::zone_token(&zone, &valid_for, &api).await,
        Command::DataplaneToken {
            mesh,
            name,
            valid_for,
            api,
        } => client::dataplane_token(&mesh, &name, &valid_for, &api).await,
        Command::Apply {
            files,
            dry_run,
            api,
        } => client::apply(&files, dry_run, &api).await,
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
            set_vault_timeout(&vault_timeout)?;
            validate::validate(&files, output).await
        }
    }
}

/// Reads the files (`-` is stdin) and returns their text with a label for messages.
pub(crate) fn read_inputs(files: &[String]) -> Result<Vec<(String, String)>, Failure> {
    let mut out = Vec::new();
    for f in files {
        let text = if f == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
            s
        } else {
            std::fs::read_to_string(f)
                .map_err(|e| Failure::usage(format!("cannot read {f}: {e}")))?
        };
        out.push((
            if f == "-" {
                "stdin".to_string()
            } else {
                f.clone()
            },
            text,
        ));
    }
    Ok(out)
}

pub(crate) fn parse_inputs(inputs: &[(String, String)]) -> Result<Vec<Resource>, Failure> {
    let mut all = Vec::new();
    for (label, text) in inputs {
        let resources = common::parse::parse_documents(text).map_err(|e| {
            Failure::refused(format!("{label}: document {}: {}", e.document, e.errors))
        })?;
        all.extend(resources);
    }
    Ok(all)
}

/// Reads a token file for tests and tools.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}
