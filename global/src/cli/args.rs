//! The flags of the `global` command line (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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

/// The flags of `global run`.
#[derive(clap::Args, Debug)]
pub struct RunFlags {
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:5681")]
    pub api_addr: String,
    /// Address of the sync server zones dial (gRPC over TLS).
    #[arg(long, default_value = "127.0.0.1:5685")]
    pub kds_addr: String,
    /// PEM certificate (chain) of the sync server; without it one is generated and its CA
    /// written to <data-dir>/kds-ca.pem.
    #[arg(long, requires = "kds_tls_key")]
    pub kds_tls_cert: Option<PathBuf>,
    /// PEM private key of the sync server.
    #[arg(long, requires = "kds_tls_cert")]
    pub kds_tls_key: Option<PathBuf>,
    /// Bound on each request to Vault during admission (the test certificate), e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub vault_timeout: String,
    /// The store: sled (embedded under --data-dir) or postgres://USER[:PASS]@HOST[:PORT]/DB,
    /// shared by every replica.
    #[arg(long, default_value = "sled")]
    pub store: crate::StoreKind,
    /// Start even when the store is older than what this global last committed, or is not the
    /// store it committed to (restored from an old backup, wiped, damaged and read short): serve
    /// what it holds as a new epoch, which zones accept (deleting what it lacks).
    #[arg(long)]
    pub accept_store_rollback: bool,
    /// A name (or address) the API answers to besides the loopback ones (repeatable); any
    /// other Host header gets 421.
    #[arg(long = "api-host", value_name = "NAME")]
    pub api_hosts: Vec<String>,
    /// A directory whose files `file:` data sources may read (repeatable); none by default, so a
    /// `file:` source is refused. Never the data directory.
    #[arg(long = "data-source-dir", value_name = "DIR")]
    pub data_source_dirs: Vec<PathBuf>,
    /// The key Secrets are sealed with at rest (AES-256-GCM): a file of 32 random bytes in
    /// base64, private to its owner. Required with --store postgres://... (the same file on every
    /// replica); with sled, <data-dir>/secrets.key is generated on the first start.
    #[arg(long, value_name = "FILE")]
    pub secrets_key_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the global control plane.
    Run(RunFlags),
    /// Apply the PostgreSQL store's schema migrations and exit.
    Migrate {
        /// postgres://USER[:PASS]@HOST[:PORT]/DB
        #[arg(long)]
        store: crate::StoreKind,
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
    /// it is bound to that mesh and dataplane name, the service it may register and the tags given.
    DataplaneToken {
        #[arg(short = 'm', long)]
        mesh: String,
        #[arg(long)]
        name: String,
        /// The kuma.io/service the proxy may register.
        #[arg(
            long,
            required_unless_present = "any_service",
            conflicts_with = "any_service"
        )]
        service: Option<String>,
        /// A tag the proxy must register with this value (repeatable), K=V.
        #[arg(long = "tag", value_name = "K=V")]
        tags: Vec<String>,
        /// Let the proxy register any service.
        #[arg(long)]
        any_service: bool,
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
    /// Print every resource as a multi-document file that `global apply -f` takes back: Meshes,
    /// and every Secret with its data with --include-secrets (admin token needed).
    Export {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ExportFormat::Yaml)]
        output: ExportFormat,
        /// Include every Secret with its data (needs the admin token).
        #[arg(long)]
        include_secrets: bool,
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

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetKind {
    Meshes,
    Mesh,
    Secrets,
    Secret,
    Zones,
    Zone,
    Dataplanes,
    /// The global replicas on the store (a sled global is one).
    Replicas,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteKind {
    Mesh,
    Secret,
    /// An offline zone's record and everything it reported.
    Zone,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

/// Output of `global export`: YAML documents separated by `---`, or a JSON array.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Yaml,
    Json,
}
