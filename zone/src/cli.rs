//! The command line of the `zone` binary (SPEC.md): `zone run`, `zone proxy` (a proxy's agent),
//! `zone get dataplanes|meshes|status` and `zone completion`. The flags of `zone run` also come
//! from `KMESH_ZONE_*` variables and `--config FILE` ([`SOURCES`], over `common::config`), those
//! of `zone proxy` from `KMESH_PROXY_*` variables and its own `--config FILE`; `zone run`'s
//! defaults are Kuma's zone control plane's (API on 127.0.0.1:5681, proxies on 5678). Exit codes:
//! 0 success, 1 refused or failed (an address in use too), 2 usage, 3 unreachable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::ZoneConfig;
use crate::views::{DataplaneView, ErrorBody, ListView};

#[derive(Parser, Debug)]
#[command(
    name = "zone",
    version = common::cli::VERSION,
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
    /// Run a proxy's agent: register the dataplane with its zone and keep DIR/cert.pem,
    /// DIR/key.pem and DIR/ca.pem current.
    Proxy(ProxyArgs),
    /// Read what the zone holds.
    Get {
        /// What to read.
        what: GetKind,
        /// URL of the zone's HTTP API (its --api-addr).
        #[arg(long, default_value = "http://127.0.0.1:5681", env = "ZONE_API")]
        api: String,
        /// table, yaml or json.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Print a shell completion script: `source <(zone completion bash)`.
    Completion {
        /// The shell: bash, zsh or fish (also elvish, powershell).
        shell: clap_complete::Shell,
    },
}

/// Where `zone run`'s flags come from besides the command line: `KMESH_ZONE_<FLAG>` variables
/// and `--config FILE`.
pub const SOURCES: common::config::Sources = common::config::Sources {
    prefix: "KMESH_ZONE",
    subcommand: "run",
};

/// Where `zone proxy`'s flags come from besides the command line: `KMESH_PROXY_<FLAG>`
/// variables (`KMESH_PROXY_TOKEN_FILE`, as a sidecar's environment sets them) and `--config FILE`.
pub const PROXY_SOURCES: common::config::Sources = common::config::Sources {
    prefix: "KMESH_PROXY",
    subcommand: "proxy",
};

/// The whole command line as clap sees it (each `run` and `proxy` flag's help names its
/// variable): what parses, what `--help` and completion scripts show.
pub fn command() -> clap::Command {
    let cmd = common::config::document(Cli::command(), &SOURCES);
    common::config::document(cmd, &PROXY_SOURCES)
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetKind {
    /// The proxies registered here, with their certificates.
    Dataplanes,
    /// The meshes the zone holds from global.
    Meshes,
    /// The connection to global, synced types, Vault checks and clocks.
    Status,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// A YAML file of flags of this command: flat keys named after the long flags
    /// (`token-file: /var/run/secrets/kmesh/token`; a list for a repeatable flag). A flag given
    /// here beats its variable, which beats the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The zone's proxy identity service, grpcs://HOST:PORT (the zone's --dp-addr).
    #[arg(long, default_value = "grpcs://127.0.0.1:5678")]
    pub zone_address: String,
    /// PEM CA that signs the zone's certificate (the zone writes <data-dir>/dp-ca.pem).
    #[arg(long)]
    pub zone_ca_file: Option<PathBuf>,
    /// Do not verify the zone's certificate (testing only: private keys travel on this stream).
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// File holding the dataplane token (`global dataplane-token --mesh MESH --name NAME`).
    #[arg(long)]
    pub token_file: PathBuf,
    /// The mesh the proxy belongs to: the one its token was issued for.
    #[arg(short = 'm', long)]
    pub mesh: String,
    /// The dataplane's name: the one its token was issued for.
    #[arg(long)]
    pub name: String,
    /// The kuma.io/service tag.
    #[arg(long)]
    pub service: String,
    /// More inbound tags, K=V (repeatable).
    #[arg(long = "tag", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Where cert.pem, key.pem and ca.pem are kept.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Command run with `sh -c` after each change of the files.
    #[arg(long)]
    pub exec: Option<String>,
    /// How long --exec may run before it is killed.
    #[arg(long, default_value = "30s")]
    pub exec_timeout: String,
    /// Also serve the SPIFFE Workload API on this unix socket (unix:///ABSOLUTE/PATH, mode 0600),
    /// as SPIRE's agent does: the proxy's certificate and key as its X.509-SVID, the mesh's trust
    /// bundle, a new message on every rotation. The mesh's backend needs `dpCert.uriSans: spiffe`.
    #[arg(long, value_name = "unix:///PATH")]
    pub workload_api: Option<String>,
    #[command(flatten)]
    pub log: common::logging::LogArgs,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not K=V")),
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// A YAML file of flags of this command: flat keys named after the long flags
    /// (`api-addr: 127.0.0.1:5681`; a list for a repeatable flag). A flag given here beats its
    /// variable, which beats the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The zone's name: the one its token was issued for (`global zone-token --zone NAME`).
    #[arg(long)]
    pub name: String,
    /// Global's sync server, grpcs://HOST:PORT (global's --kds-addr). Several replicas: repeat the
    /// flag or separate with commas; they are dialed in order, moving to the next when one is
    /// unreachable, refuses the stream or goes silent.
    #[arg(long, value_delimiter = ',', default_value = "grpcs://127.0.0.1:5685")]
    pub global_address: Vec<String>,
    /// PEM CA that signs global's sync certificate (global writes <data-dir>/kds-ca.pem).
    #[arg(long)]
    pub global_ca_file: Option<PathBuf>,
    /// A name (or address) the API answers to besides the loopback ones (repeatable); any
    /// other Host header gets 421.
    #[arg(long = "api-host", value_name = "NAME")]
    pub api_hosts: Vec<String>,
    /// Do not verify global's certificate (testing only).
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// File holding the zone token.
    #[arg(long)]
    pub token_file: PathBuf,
    /// Where the zone keeps its store.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address of the zone's HTTP API (read-only), as Kuma's zone control plane.
    #[arg(long, default_value = "127.0.0.1:5681")]
    pub api_addr: String,
    /// Address of the proxy identity service proxies dial (gRPC over TLS; the CA of its generated
    /// certificate is written to <data-dir>/dp-ca.pem), as Kuma's zone control plane.
    #[arg(long, default_value = "127.0.0.1:5678")]
    pub dp_addr: String,
    /// PEM certificate (chain) the proxy identity service serves instead of the generated one
    /// (proxies then trust its CA with --zone-ca-file).
    #[arg(long, requires = "dp_tls_key", value_name = "FILE")]
    pub dp_tls_cert: Option<PathBuf>,
    /// PEM private key of --dp-tls-cert.
    #[arg(long, requires = "dp_tls_cert", value_name = "FILE")]
    pub dp_tls_key: Option<PathBuf>,
    /// Certificates issued at once, at most (shapes the burst when many proxies need one).
    #[arg(long)]
    pub max_concurrent_issuance: Option<usize>,
    /// Bound on each request to Vault (issuance, CA reads, the zone's checks), e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub vault_timeout: String,
    /// How long a mesh's old CA stays trusted after the last proxy holding a certificate of it
    /// got a new one (a CA switch): time for every proxy to load its new bundle. 0s: at once.
    #[arg(long, default_value = "60s")]
    pub trust_grace: String,
    /// How long a CA backend's open circuit breaker waits before it lets one probe through; it
    /// never waits more than a quarter of what the certificates it holds back have left.
    #[arg(long, default_value = "30s")]
    pub breaker_cooldown: String,
    /// Consecutive backend failures that open its circuit breaker.
    #[arg(long, default_value_t = 5)]
    pub breaker_threshold: u32,
    /// First wait before a proxy's failed issuance is retried; it doubles per failure.
    #[arg(long, default_value = "1s")]
    pub backoff_initial: String,
    /// Longest wait between a proxy's retries.
    #[arg(long, default_value = "5m")]
    pub backoff_max: String,
    /// A directory whose files `file:` data sources may read (repeatable); none by default, so a
    /// Mesh with a `file:` source is refused (NACKed with the reason). Never the data directory.
    #[arg(long = "data-source-dir", value_name = "DIR")]
    pub data_source_dirs: Vec<PathBuf>,
    /// The key the zone seals the Secrets it holds with (32 random bytes in base64, private to
    /// its owner); by default <data-dir>/secrets.key, generated on the first start.
    #[arg(long, value_name = "FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// Another key that opens Secrets it sealed and never seals (repeatable): the key being
    /// rotated out; what it sealed is sealed again with the zone's key at start.
    #[arg(long = "secrets-extra-key-file", value_name = "FILE")]
    pub secrets_extra_key_files: Vec<PathBuf>,
    /// Share of a certificate's lifetime after which it is replaced (±5% jitter), above 0 and
    /// below 1.
    #[arg(long, default_value_t = 0.8)]
    pub rotation_fraction: f64,
    #[command(flatten)]
    pub log: common::logging::LogArgs,
}

/// The issuance tuning of `zone run`'s flags, checked.
pub fn issuance_flags(
    args: &RunArgs,
    mut issuance: crate::config::IssuanceConfig,
) -> Result<crate::config::IssuanceConfig, String> {
    let duration = |flag: &str, value: &str| {
        common::duration::parse_duration(value).map_err(|e| format!("{flag}: {e}"))
    };
    issuance.trust_grace = duration("--trust-grace", &args.trust_grace)?;
    issuance.breaker_cooldown = duration("--breaker-cooldown", &args.breaker_cooldown)?;
    issuance.backoff_initial = duration("--backoff-initial", &args.backoff_initial)?;
    issuance.backoff_max = duration("--backoff-max", &args.backoff_max)?;
    if issuance.breaker_cooldown.is_zero() {
        return Err("--breaker-cooldown must be more than 0s".into());
    }
    if issuance.backoff_initial.is_zero() {
        return Err("--backoff-initial must be more than 0s".into());
    }
    if issuance.backoff_max < issuance.backoff_initial {
        return Err(format!(
            "--backoff-max ({}) must not be below --backoff-initial ({})",
            args.backoff_max, args.backoff_initial
        ));
    }
    if args.breaker_threshold == 0 {
        return Err("--breaker-threshold must be at least 1".into());
    }
    issuance.breaker_threshold = args.breaker_threshold;
    if !(args.rotation_fraction > 0.0 && args.rotation_fraction < 1.0) {
        return Err(format!(
            "--rotation-fraction {} must be above 0 and below 1 (0.8: replace a certificate after 80% of its lifetime)",
            args.rotation_fraction
        ));
    }
    issuance.rotation_fraction = args.rotation_fraction;
    if let Some(n) = args.max_concurrent_issuance {
        if n == 0 {
            return Err("--max-concurrent-issuance must be at least 1".into());
        }
        issuance.max_concurrent = n;
    }
    Ok(issuance)
}

pub use common::cli::{exit, init_tracing};

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli: Cli = common::config::parse_any(&[SOURCES, PROXY_SOURCES]);
    if let Command::Completion { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command(), "zone", &mut script);
        return common::cli::print_stdout(&script);
    }
    let runtime = match common::cli::start() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Proxy(args) => runtime.block_on(proxy(args)),
        Command::Get { what, api, output } => runtime.block_on(get(what, &api, output)),
        Command::Completion { .. } => ExitCode::from(exit::OK),
    }
}

/// Binds the address of `flag`, or says why not (an address in use is exit 1).
async fn listen(addr: &str, flag: &str) -> Result<tokio::net::TcpListener, ExitCode> {
    common::cli::listen(addr, flag).await.map_err(|e| {
        eprintln!("error: {}", e.message);
        ExitCode::from(e.code)
    })
}

async fn run(args: RunArgs) -> ExitCode {
    common::logging::init("zone", &args.log);
    let mut config = ZoneConfig::new(
        &args.name,
        "",
        args.token_file.clone(),
        args.data_dir.clone(),
    )
    .with_global_addresses(args.global_address.clone());
    config.global_ca_file = args.global_ca_file.clone();
    config.insecure_skip_verify = args.insecure_skip_verify;
    config.api_hosts = args.api_hosts.clone();
    config.data_source_dirs = args.data_source_dirs.clone();
    if let (Some(cert), Some(key)) = (args.dp_tls_cert.clone(), args.dp_tls_key.clone()) {
        config.dp_tls = crate::dp::tls::DpTls::Files { cert, key };
    }
    config.secrets_key_file = args.secrets_key_file.clone();
    config.secrets_extra_key_files = args.secrets_extra_key_files.clone();
    if let Err(e) = crate::client::targets(&config) {
        eprintln!("error: {e}");
        return ExitCode::from(exit::USAGE);
    }
    if args.insecure_skip_verify {
        tracing::warn!("--insecure-skip-verify: global's certificate is NOT verified");
    }
    match issuance_flags(&args, config.issuance.clone()) {
        Ok(issuance) => config.issuance = issuance,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::USAGE);
        }
    }
    match common::duration::parse_duration(&args.vault_timeout) {
        Ok(d) if !d.is_zero() => {
            config.vault_timeouts = common::vault::Timeouts::with_request(d);
        }
        Ok(_) => {
            eprintln!("error: --vault-timeout must be more than 0s");
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => {
            eprintln!("error: --vault-timeout: {e}");
            return ExitCode::from(exit::USAGE);
        }
    }
    let listener = match listen(&args.api_addr, "--api-addr").await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let dp = match listen(&args.dp_addr, "--dp-addr").await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let listeners = crate::Listeners {
        api: listener,
        dp: Some(dp),
    };
    match crate::run(config, listeners, common::shutdown::signal()).await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::REFUSED)
        }
    }
}

async fn proxy(args: ProxyArgs) -> ExitCode {
    common::logging::init("zone proxy", &args.log);
    let exec_timeout = match common::duration::parse_duration(&args.exec_timeout) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --exec-timeout: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let mut config = crate::agent::AgentConfig::new(
        &args.zone_address,
        args.token_file.clone(),
        &args.mesh,
        &args.name,
        &args.service,
        args.out_dir.clone(),
    );
    for (k, v) in &args.tags {
        if k == common::model::SERVICE_TAG && v != &args.service {
            eprintln!(
                "error: --tag {k}={v} contradicts --service {}: the service tag is set by --service",
                args.service
            );
            return ExitCode::from(exit::USAGE);
        }
        config.tags.insert(k.clone(), v.clone());
    }
    config.zone_ca_file = args.zone_ca_file.clone();
    config.insecure_skip_verify = args.insecure_skip_verify;
    config.exec = args.exec.clone();
    config.exec_timeout = exec_timeout;
    config.workload_api = args.workload_api.clone();
    if let Err(e) = crate::agent::check(&config) {
        eprintln!("error: {e}");
        return ExitCode::from(exit::USAGE);
    }
    if args.insecure_skip_verify {
        tracing::warn!(
            "--insecure-skip-verify: the zone's certificate is NOT verified, and private keys travel on this stream"
        );
    }
    match crate::agent::run(config, common::shutdown::signal()).await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(crate::agent::AgentError::Config(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::USAGE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::REFUSED)
        }
    }
}

/// `zone get dataplanes|meshes|status`: the zone's dataplanes with their certificates, the meshes
/// it holds, or its status (global, synced types, Vault checks, clocks).
async fn get(what: GetKind, api: &str, output: Format) -> ExitCode {
    let path = match what {
        GetKind::Dataplanes => "dataplanes",
        GetKind::Meshes => "meshes",
        GetKind::Status => "status",
    };
    let base = api.trim_end_matches('/');
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::REFUSED);
        }
    };
    let mut body = match fetch(&client, base, &format!("/{path}")).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    // A list comes a page at a time: follow `next` to the end, on the URL we were given.
    let mut next = common::page::next_of(&body);
    let mut pages = 1;
    while let Some(path) = next {
        pages += 1;
        if pages > common::page::MAX_PAGES {
            eprintln!(
                "error: the zone's list did not end after {} pages",
                common::page::MAX_PAGES
            );
            return ExitCode::from(exit::REFUSED);
        }
        let page = match fetch(&client, base, &path).await {
            Ok(b) => b,
            Err(code) => return code,
        };
        next = common::page::append_page(&mut body, page);
    }
    match output {
        Format::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            );
            return ExitCode::from(exit::OK);
        }
        Format::Yaml => {
            print!("{}", serde_norway::to_string(&body).unwrap_or_default());
            return ExitCode::from(exit::OK);
        }
        Format::Table => {}
    }
    let rows = match what {
        GetKind::Dataplanes => dataplane_rows(body),
        GetKind::Meshes => mesh_rows(&body),
        GetKind::Status => status_rows(&body),
    };
    print!("{}", common::table::render(&rows));
    ExitCode::from(exit::OK)
}

/// `GET {base}{path}`: the JSON body of a 2xx, or the exit code after saying why on stderr.
async fn fetch(client: &reqwest::Client, base: &str, path: &str) -> Result<Value, ExitCode> {
    let resp = match client.get(format!("{base}{path}")).send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "error: cannot reach the zone at {base}: {}",
                crate::dial::error_chain(&e)
            );
            return Err(ExitCode::from(exit::UNREACHABLE));
        }
    };
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        eprintln!(
            "error: the zone answered {status}: {}",
            serde_json::from_value::<ErrorBody>(body)
                .map(|e| e.detail)
                .unwrap_or_default()
        );
        return Err(ExitCode::from(exit::REFUSED));
    }
    Ok(body)
}

/// The table of `zone get meshes`.
fn mesh_rows(body: &Value) -> Vec<Vec<String>> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut rows = vec![
        ["NAME", "ENABLED BACKEND", "BACKENDS", "MODIFIED"]
            .map(String::from)
            .to_vec(),
    ];
    for m in body["items"].as_array().into_iter().flatten() {
        let backends: Vec<String> = m["mtls"]["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| format!("{} ({})", s(&b["name"]), s(&b["type"])))
            .collect();
        rows.push(vec![
            s(&m["name"]),
            s(&m["mtls"]["enabledBackend"]),
            backends.join(", "),
            s(&m["modificationTime"]),
        ]);
    }
    rows
}

/// The table of `zone get status`: one line per fact.
fn status_rows(body: &Value) -> Vec<Vec<String>> {
    let s = |v: &Value| match v {
        Value::String(t) => t.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let g = &body["global"];
    let mut rows = vec![
        ["WHAT", "VALUE"].map(String::from).to_vec(),
        vec!["zone".into(), s(&body["zone"])],
        vec![
            "global".into(),
            format!(
                "{} {}{}",
                s(&g["address"]),
                if g["connected"] == true {
                    "connected"
                } else {
                    "disconnected"
                },
                g["lastError"]
                    .as_str()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            ),
        ],
    ];
    if let Some(types) = body["types"].as_object() {
        for (kind, t) in types {
            rows.push(vec![
                format!("{kind} resources held"),
                format!(
                    "{} (system version {})",
                    s(&t["count"]),
                    s(&t["systemVersion"])
                ),
            ]);
        }
    }
    for c in body["vault"].as_array().into_iter().flatten() {
        rows.push(vec![
            format!("vault {}/{}", s(&c["mesh"]), s(&c["backend"])),
            if c["ok"] == true {
                format!("ok, {} issued", s(&c["issued"]))
            } else {
                s(&c["error"])
            },
        ]);
    }
    for c in body["clocks"].as_array().into_iter().flatten() {
        rows.push(vec![format!("clock of {}", s(&c["peer"])), s(&c["detail"])]);
    }
    rows
}

/// The table of `zone get dataplanes`.
fn dataplane_rows(body: Value) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "NAME",
            "MESH",
            "SERVICE",
            "BACKEND",
            "SERIAL",
            "EXPIRES",
            "CONNECTED",
            "STATE",
            "LAST ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let list: ListView<DataplaneView> =
        serde_json::from_value(body).unwrap_or_else(|_| ListView::new(Vec::new()));
    for d in list.items {
        rows.push(vec![
            d.name,
            d.mesh,
            d.service,
            d.backend.unwrap_or_default(),
            d.serial.unwrap_or_default(),
            d.expiration.unwrap_or_default(),
            if d.connected { "yes" } else { "no" }.to_string(),
            d.state,
            d.last_error.unwrap_or_default(),
        ]);
    }
    rows
}
