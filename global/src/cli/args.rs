//! The flags of the `global` command line (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "global",
    version = common::cli::VERSION,
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
    #[arg(long, env = "GLOBAL_ADMIN_TOKEN_FILE", conflicts_with = "token_file")]
    pub admin_token_file: Option<PathBuf>,
    /// File holding a user token (`global generate user-token`), instead of the admin token.
    #[arg(long, env = "GLOBAL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM bundle of the CAs to trust for an https:// --api, instead of the system's (global's
    /// generated certificate: <data-dir>/api-ca.pem).
    #[arg(long, env = "GLOBAL_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// `zone-token` / `generate zone-token`.
#[derive(clap::Args, Debug)]
pub struct ZoneTokenArgs {
    /// The zone the token is for (its name, as `zone run --name`).
    #[arg(long)]
    pub zone: String,
    /// How long the token is valid, e.g. 720h, 30d.
    #[arg(long, default_value = "720h")]
    pub valid_for: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `dataplane-token` / `generate dataplane-token`.
#[derive(clap::Args, Debug)]
pub struct DataplaneTokenArgs {
    /// The mesh of the proxy.
    #[arg(short = 'm', long)]
    pub mesh: String,
    /// The dataplane's name (as `zone proxy --name`).
    #[arg(long)]
    pub name: String,
    /// The kuma.io/service the proxy may register.
    #[arg(
        long,
        required_unless_present = "any_service",
        conflicts_with = "any_service"
    )]
    pub service: Option<String>,
    /// A tag the proxy must register with this value (repeatable), K=V.
    #[arg(long = "tag", value_name = "K=V")]
    pub tags: Vec<String>,
    /// Let the proxy register any service.
    #[arg(long)]
    pub any_service: bool,
    /// How long the token is valid, e.g. 720h, 30d.
    #[arg(long, default_value = "720h")]
    pub valid_for: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `generate user-token`.
#[derive(clap::Args, Debug)]
pub struct UserTokenArgs {
    /// Who the token is for (the audit log names them).
    #[arg(long)]
    pub name: String,
    /// admin (everything), operator (writes and Secrets of its meshes, reads the rest but
    /// Secrets) or viewer (reads meshes, zones, dataplanes and replicas).
    #[arg(long)]
    pub group: String,
    /// A mesh an operator may change (repeatable; operators only).
    #[arg(short = 'm', long = "mesh", value_name = "MESH")]
    pub meshes: Vec<String>,
    /// How long the token is valid, e.g. 24h, 30d.
    #[arg(long, default_value = "24h")]
    pub valid_for: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// What `global generate` makes (kumactl's verbs: the names are the subcommands').
#[derive(Subcommand, Debug)]
#[allow(clippy::enum_variant_names)]
pub enum Generate {
    /// A token with which a zone authenticates to global.
    ZoneToken(ZoneTokenArgs),
    /// A token with which one proxy authenticates to its zone.
    DataplaneToken(DataplaneTokenArgs),
    /// A token with which a user calls the API, with the rights of its group.
    UserToken(UserTokenArgs),
}

/// The flags of `global run`.
#[derive(clap::Args, Debug)]
pub struct RunFlags {
    /// A YAML file of flags of this command: flat keys named after the long flags
    /// (`api-addr: 127.0.0.1:5681`; a list for a repeatable flag). A flag given here beats its
    /// variable, which beats the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where global keeps its store (sled), admin token, keys, generated certificates and audit
    /// log (0700).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Address of the API in plain HTTP: a loopback address unless --api-insecure-http.
    #[arg(long, default_value = "127.0.0.1:5681")]
    pub api_addr: String,
    /// Serve the plain-HTTP --api-addr on a non-loopback address too (the admin token and
    /// Secrets then cross the network in clear).
    #[arg(long)]
    pub api_insecure_http: bool,
    /// Address of the API over HTTPS (HTTP/1.1 and h2): the same routes as --api-addr.
    #[arg(long, default_value = "127.0.0.1:5682")]
    pub api_tls_addr: String,
    /// PEM certificate (chain) of the HTTPS API; without it one is generated for localhost, the
    /// listener's address and every --api-host, and its CA written to <data-dir>/api-ca.pem.
    #[arg(long, requires = "api_tls_key", value_name = "FILE")]
    pub api_tls_cert: Option<PathBuf>,
    /// PEM private key of the HTTPS API.
    #[arg(long, requires = "api_tls_cert", value_name = "FILE")]
    pub api_tls_key: Option<PathBuf>,
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
    /// Another key that opens Secrets it sealed and never seals (repeatable): the key being
    /// rotated out, whose Secrets are sealed again with --secrets-key-file at start; on
    /// PostgreSQL also the next key, given to every replica before any seals with it.
    #[arg(long = "secrets-extra-key-file", value_name = "FILE")]
    pub secrets_extra_key_files: Vec<PathBuf>,
    #[command(flatten)]
    pub log: common::logging::LogArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the global control plane.
    Run(RunFlags),
    /// Apply the PostgreSQL store's schema migrations and exit.
    Migrate {
        /// The PostgreSQL store to migrate: postgres://USER[:PASS]@HOST[:PORT]/DB.
        #[arg(long)]
        store: crate::StoreKind,
    },
    /// Print a token with which a zone authenticates to global.
    ZoneToken(ZoneTokenArgs),
    /// Print a token with which one proxy authenticates to its zone (`zone proxy --token-file`);
    /// it is bound to that mesh and dataplane name, the service it may register and the tags given.
    DataplaneToken(DataplaneTokenArgs),
    /// Print a token (zone, dataplane or user), as kumactl's `generate`.
    Generate {
        /// The token to make.
        #[command(subcommand)]
        what: Generate,
    },
    /// Revoke a token (user, zone or dataplane) by its id: refused everywhere within seconds,
    /// by zones too (even while global is away from them).
    RevokeToken {
        /// The token's id (its `jti` claim; token generation prints it on stderr).
        #[arg(
            long,
            required_unless_present = "from_file",
            conflicts_with = "from_file"
        )]
        id: Option<String>,
        /// Read the id from this token file.
        #[arg(long, value_name = "TOKEN_FILE")]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Make a new token signing key: new tokens are signed with it; tokens of older keys stay
    /// valid until their key is retired.
    RotateSigningKey {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Retire a token signing key: tokens it signed are refused from now on.
    RetireSigningKey {
        /// The key's id (`global get signing-keys`).
        #[arg(long)]
        kid: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create or update resources from files (`-f -` reads stdin), all or nothing.
    Apply {
        /// A resource file (YAML documents or JSON), `-` for stdin, or a directory (every .yaml,
        /// .yml and .json in it, in name order); repeatable.
        #[arg(short = 'f', long = "file", required = true, value_name = "FILE|DIR|-")]
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
        /// yaml (documents separated by ---) or json (an array).
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
        /// What to read.
        what: GetKind,
        /// One resource by name (all of them without it).
        name: Option<String>,
        /// The mesh of secrets and dataplanes.
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        /// table, yaml or json.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a mesh (with everything in it) or a secret.
    Delete {
        /// What to delete.
        what: DeleteKind,
        /// Its name.
        name: String,
        /// The mesh of a secret.
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Validate resource files without a running global: parse, validate, resolve data sources
    /// (Secrets from the same files), issue the Vault test certificate, print a report.
    Validate {
        /// A resource file (YAML documents or JSON), `-` for stdin, or a directory (every .yaml,
        /// .yml and .json in it, in name order); repeatable.
        #[arg(short = 'f', long = "file", required = true, value_name = "FILE|DIR|-")]
        files: Vec<String>,
        /// table, yaml or json.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Bound on each request to Vault (the test certificate), e.g. 10s.
        #[arg(long, default_value = "10s")]
        vault_timeout: String,
    },
    /// Print a shell completion script: `source <(global completion bash)`.
    Completion {
        /// The shell: bash, zsh or fish (also elvish, powershell).
        shell: clap_complete::Shell,
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
    /// The token signing keys (admin).
    SigningKeys,
    /// The revoked tokens (admin).
    RevokedTokens,
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
