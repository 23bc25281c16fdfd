//! The command line of the `global` binary (SPEC.md): `run`, `apply`, `get`, `delete` and
//! `validate`. Commands that talk to a running global use its HTTP API; `validate` needs no server.
//! Exit codes: 0 success, 1 refused or invalid, 2 usage, 3 server or Vault unreachable.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use common::datasource::SecretMap;
use common::model::Resource;
use serde_json::Value;

use crate::accept::{self, BackendCheck};

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

/// `--vault-timeout`: the bounds of every Vault request of this process.
fn vault_timeouts(text: &str) -> Result<common::vault::Timeouts, Failure> {
    let d = common::duration::parse_duration(text)
        .map_err(|e| Failure::usage(format!("--vault-timeout: {e}")))?;
    if d.is_zero() {
        return Err(Failure::usage("--vault-timeout must be more than 0s"));
    }
    Ok(common::vault::Timeouts::with_request(d))
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
    fn refused(message: impl Into<String>) -> Self {
        Self {
            code: exit::REFUSED,
            message: message.into(),
        }
    }
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: exit::USAGE,
            message: message.into(),
        }
    }
    fn unreachable(message: impl Into<String>) -> Self {
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
            let vault_timeouts = vault_timeouts(&vault_timeout)?;
            let listener = tokio::net::TcpListener::bind(&api_addr)
                .await
                .map_err(|e| {
                    Failure::usage(format!("cannot listen on --api-addr {api_addr}: {e}"))
                })?;
            let kds_listener = tokio::net::TcpListener::bind(&kds_addr)
                .await
                .map_err(|e| {
                    Failure::usage(format!("cannot listen on --kds-addr {kds_addr}: {e}"))
                })?;
            let mut kds = crate::KdsEndpoint::new(kds_listener);
            if let (Some(cert), Some(key)) = (kds_tls_cert, kds_tls_key) {
                kds.tls = crate::kds::KdsTls::Files { cert, key };
            }
            let listeners = crate::Listeners {
                api: listener,
                kds: Some(kds),
            };
            crate::run(
                crate::GlobalConfig {
                    data_dir,
                    vault_timeouts,
                },
                listeners,
                common::shutdown::signal(),
            )
            .await
            .map_err(|e| Failure::refused(e.to_string()))
        }
        Command::ZoneToken {
            zone,
            valid_for,
            api,
        } => zone_token(&zone, &valid_for, &api).await,
        Command::DataplaneToken {
            mesh,
            name,
            valid_for,
            api,
        } => dataplane_token(&mesh, &name, &valid_for, &api).await,
        Command::Apply {
            files,
            dry_run,
            api,
        } => apply(&files, dry_run, &api).await,
        Command::Get {
            what,
            name,
            mesh,
            output,
            api,
        } => get(what, name, &mesh, output, &api).await,
        Command::Delete {
            what,
            name,
            mesh,
            api,
        } => delete(what, &name, &mesh, &api).await,
        Command::Validate {
            files,
            output,
            vault_timeout,
        } => validate(&files, output, vault_timeouts(&vault_timeout)?).await,
    }
}

/// Reads the files (`-` is stdin) and returns their text with a label for messages.
fn read_inputs(files: &[String]) -> Result<Vec<(String, String)>, Failure> {
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

fn parse_inputs(inputs: &[(String, String)]) -> Result<Vec<Resource>, Failure> {
    let mut all = Vec::new();
    for (label, text) in inputs {
        let resources = common::parse::parse_documents(text).map_err(|e| {
            Failure::refused(format!("{label}: document {}: {}", e.document, e.errors))
        })?;
        all.extend(resources);
    }
    Ok(all)
}

/// An HTTP client for the global API.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(args: &ApiArgs) -> Result<Self, Failure> {
        let token = match &args.admin_token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| {
                        Failure::usage(format!(
                            "cannot read --admin-token-file {}: {e}",
                            p.display()
                        ))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| Failure::refused(e.to_string()))?;
        Ok(Self {
            http,
            base: args.api.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Sends a request; returns the JSON body of a 2xx, or a Failure with the API's error.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let resp = req.send().await.map_err(|e| {
            Failure::unreachable(format!(
                "cannot reach global at {}: {}",
                self.base,
                error_chain(&e)
            ))
        })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = describe_api_error(status.as_u16(), &body);
        if body.get("vault_unreachable").and_then(Value::as_bool) == Some(true) {
            return Err(Failure::unreachable(message));
        }
        Err(Failure::refused(message))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Renders the API error body for a terminal.
pub fn describe_api_error(status: u16, body: &Value) -> String {
    let mut out = format!(
        "{} ({}): {}",
        body.get("title")
            .and_then(Value::as_str)
            .unwrap_or("request failed"),
        status,
        body.get("detail").and_then(Value::as_str).unwrap_or("")
    );
    if let Some(params) = body.get("invalid_parameters").and_then(Value::as_array) {
        for p in params {
            out.push_str(&format!(
                "\n  * {}: {}",
                p.get("field").and_then(Value::as_str).unwrap_or(""),
                p.get("reason").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    if status == 401 {
        out.push_str("\n  (pass --admin-token-file <data-dir>/admin-token)");
    }
    out
}

async fn apply(files: &[String], dry_run: bool, api: &ApiArgs) -> Result<(), Failure> {
    let inputs = read_inputs(files)?;
    // Parse locally first so that a typo is reported with its file, before anything is sent.
    parse_inputs(&inputs)?;
    let body = inputs
        .iter()
        .map(|(_, t)| t.trim_start_matches("---").to_string())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let client = Client::new(api)?;
    let path = if dry_run {
        "/apply?dryRun=true"
    } else {
        "/apply"
    };
    let resp = client
        .send(
            client
                .request(reqwest::Method::POST, path)
                .header("content-type", "application/yaml")
                .body(body),
        )
        .await?;
    for r in resp
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = r
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_lowercase();
        let name = r.get("name").and_then(Value::as_str).unwrap_or("");
        let mesh = r.get("mesh").and_then(Value::as_str).unwrap_or("");
        let result = r.get("result").and_then(Value::as_str).unwrap_or("");
        if kind == "mesh" {
            println!("mesh {name:?} {result}");
        } else {
            println!("{kind} {name:?} (mesh {mesh:?}) {result}");
        }
    }
    print_checks(resp.get("checks"));
    for w in resp
        .get("warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!("warning: {}", w.as_str().unwrap_or(""));
    }
    if dry_run {
        println!("dry run: nothing was stored");
    }
    Ok(())
}

fn print_checks(checks: Option<&Value>) {
    for c in checks.and_then(Value::as_array).into_iter().flatten() {
        let backend = c.get("backend").and_then(Value::as_str).unwrap_or("");
        let mesh = c.get("mesh").and_then(Value::as_str).unwrap_or("");
        for step in c
            .get("checks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let passed = step.get("passed").and_then(Value::as_bool).unwrap_or(false);
            println!(
                "  {} mesh {mesh:?} backend {backend:?} {}: {}",
                if passed { "PASS" } else { "FAIL" },
                step.get("name").and_then(Value::as_str).unwrap_or(""),
                step.get("detail").and_then(Value::as_str).unwrap_or("")
            );
        }
    }
}

async fn get(
    what: GetKind,
    name: Option<String>,
    mesh: &str,
    output: Format,
    api: &ApiArgs,
) -> Result<(), Failure> {
    let client = Client::new(api)?;
    let path = match (what, &name) {
        (GetKind::Meshes | GetKind::Mesh, None) => "/meshes".to_string(),
        (GetKind::Meshes | GetKind::Mesh, Some(n)) => format!("/meshes/{n}"),
        (GetKind::Secrets | GetKind::Secret, None) => format!("/meshes/{mesh}/secrets"),
        (GetKind::Secrets | GetKind::Secret, Some(n)) => format!("/meshes/{mesh}/secrets/{n}"),
        (GetKind::Zones | GetKind::Zone, None) => "/zones".to_string(),
        (GetKind::Zones | GetKind::Zone, Some(n)) => format!("/zones/{n}"),
        (GetKind::Dataplanes, _) => format!("/meshes/{mesh}/dataplanes"),
    };
    let body = client
        .send(client.request(reqwest::Method::GET, &path))
        .await?;
    match output {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        ),
        Format::Yaml => print!("{}", serde_norway::to_string(&body).unwrap_or_default()),
        Format::Table => {
            let mut items: Vec<Value> = match body.get("items").and_then(Value::as_array) {
                Some(items) => items.clone(),
                None => vec![body],
            };
            // Dataplanes are listed per mesh; a NAME narrows the list.
            if let (GetKind::Dataplanes, Some(n)) = (what, &name) {
                items.retain(|d| s(d, &["name"]) == n);
            }
            print_table(what, &items);
        }
    }
    Ok(())
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(c) => cur = c,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

fn print_table(what: GetKind, items: &[Value]) {
    let mut rows: Vec<Vec<String>> = Vec::new();
    match what {
        GetKind::Meshes | GetKind::Mesh => {
            rows.push(vec![
                "NAME".into(),
                "MTLS".into(),
                "BACKENDS".into(),
                "MODIFIED".into(),
            ]);
            for m in items {
                let enabled = s(m, &["mtls", "enabledBackend"]);
                let backends: Vec<String> = m
                    .get("mtls")
                    .and_then(|x| x.get("backends"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|b| format!("{}/{}", s(b, &["name"]), s(b, &["type"])))
                    .collect();
                rows.push(vec![
                    s(m, &["name"]).into(),
                    if enabled.is_empty() {
                        "off".into()
                    } else {
                        enabled.into()
                    },
                    backends.join(","),
                    s(m, &["modificationTime"]).into(),
                ]);
            }
        }
        GetKind::Secrets | GetKind::Secret => {
            rows.push(vec!["MESH".into(), "NAME".into(), "MODIFIED".into()]);
            for x in items {
                rows.push(vec![
                    s(x, &["mesh"]).into(),
                    s(x, &["name"]).into(),
                    s(x, &["modificationTime"]).into(),
                ]);
            }
        }
        GetKind::Zones | GetKind::Zone => {
            rows.push(vec![
                "NAME".into(),
                "STATUS".into(),
                "LAST SEEN".into(),
                "VAULT".into(),
            ]);
            for z in items {
                let online = z.get("online").and_then(Value::as_bool).unwrap_or(false);
                let vault = z
                    .get("vault")
                    .and_then(Value::as_array)
                    .map(|checks| {
                        checks
                            .iter()
                            .map(|c| {
                                let ok = c.get("ok").and_then(Value::as_bool).unwrap_or(false);
                                format!(
                                    "{}/{}={}",
                                    s(c, &["mesh"]),
                                    s(c, &["backend"]),
                                    if ok {
                                        "ok".to_string()
                                    } else {
                                        format!("FAILED ({})", s(c, &["error"]))
                                    }
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                rows.push(vec![
                    s(z, &["name"]).into(),
                    if online {
                        "online".into()
                    } else {
                        "offline".into()
                    },
                    s(z, &["lastSeen"]).into(),
                    vault,
                ]);
            }
        }
        GetKind::Dataplanes => {
            rows.push(vec![
                "MESH".into(),
                "NAME".into(),
                "ZONE".into(),
                "SERVICE".into(),
                "BACKEND".into(),
                "SERIAL".into(),
                "EXPIRES".into(),
                "CONNECTED".into(),
            ]);
            for d in items {
                let service = d
                    .get("networking")
                    .and_then(|n| n.get("inbound"))
                    .and_then(Value::as_array)
                    .and_then(|i| i.first())
                    .map(|i| s(i, &["tags", "kuma.io/service"]).to_string())
                    .unwrap_or_default();
                rows.push(vec![
                    s(d, &["mesh"]).into(),
                    s(d, &["name"]).into(),
                    s(d, &["zone"]).into(),
                    service,
                    s(d, &["certificate", "backend"]).into(),
                    s(d, &["certificate", "serial"]).into(),
                    s(d, &["certificate", "expiration"]).into(),
                    match (
                        d.get("connected").and_then(Value::as_bool),
                        d.get("zoneOnline").and_then(Value::as_bool),
                    ) {
                        (_, Some(false)) => "unknown (zone offline)".into(),
                        (Some(true), _) => "yes".into(),
                        _ => "no".into(),
                    },
                ]);
            }
        }
    }
    print!("{}", common::table::render(&rows));
}

async fn delete(what: DeleteKind, name: &str, mesh: &str, api: &ApiArgs) -> Result<(), Failure> {
    let client = Client::new(api)?;
    let path = match what {
        DeleteKind::Mesh => format!("/meshes/{name}"),
        DeleteKind::Secret => format!("/meshes/{mesh}/secrets/{name}"),
    };
    client
        .send(client.request(reqwest::Method::DELETE, &path))
        .await?;
    match what {
        DeleteKind::Mesh => println!("mesh {name:?} deleted"),
        DeleteKind::Secret => println!("secret {name:?} (mesh {mesh:?}) deleted"),
    }
    Ok(())
}

/// `zone-token`: asks the running global (admin token needed) and prints the token alone.
async fn zone_token(zone: &str, valid_for: &str, api: &ApiArgs) -> Result<(), Failure> {
    crate::tokens::check_zone_name(zone).map_err(Failure::usage)?;
    common::duration::parse_duration(valid_for)
        .map_err(|e| Failure::usage(format!("--valid-for: {e}")))?;
    let client = Client::new(api)?;
    let body = serde_json::json!({"zone": zone, "validFor": valid_for});
    let resp = client
        .send(
            client
                .request(reqwest::Method::POST, "/tokens/zone")
                .json(&body),
        )
        .await?;
    let token = resp
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::refused("global answered without a token"))?;
    println!("{token}");
    Ok(())
}

/// `dataplane-token`: asks the running global (admin token needed) and prints the token alone.
async fn dataplane_token(
    mesh: &str,
    name: &str,
    valid_for: &str,
    api: &ApiArgs,
) -> Result<(), Failure> {
    crate::tokens::check_dataplane_names(mesh, name).map_err(|errs| {
        Failure::usage(
            errs.errors
                .iter()
                .map(|e| format!("--{}: {}", e.field, e.reason))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    common::duration::parse_duration(valid_for)
        .map_err(|e| Failure::usage(format!("--valid-for: {e}")))?;
    let client = Client::new(api)?;
    let body = serde_json::json!({"mesh": mesh, "name": name, "validFor": valid_for});
    let resp = client
        .send(
            client
                .request(reqwest::Method::POST, "/tokens/dataplane")
                .json(&body),
        )
        .await?;
    let token = resp
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::refused("global answered without a token"))?;
    println!("{token}");
    Ok(())
}

/// The `validate` report of one resource.
#[derive(Debug, serde::Serialize)]
pub struct ResourceReport {
    pub kind: String,
    pub name: String,
    pub mesh: String,
    pub valid: bool,
    pub errors: Vec<common::FieldError>,
    pub checks: Vec<BackendCheck>,
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub unreachable: bool,
}

/// Validates every resource of the files on its own, with the Secrets of the files resolvable.
pub async fn validate_resources(
    resources: Vec<Resource>,
    bounds: common::vault::Timeouts,
) -> Vec<ResourceReport> {
    let mut secrets = SecretMap::default();
    for r in &resources {
        if let Resource::Secret(s) = r {
            let _ = secrets.insert_secret(s);
        }
    }
    let mut reports = Vec::new();
    for r in resources {
        let mut report = ResourceReport {
            kind: r.kind().to_string(),
            name: r.name().to_string(),
            mesh: r.mesh().to_string(),
            valid: true,
            errors: vec![],
            checks: vec![],
            warnings: vec![],
            unreachable: false,
        };
        match r {
            Resource::Mesh(m) => match accept::admit_mesh(m, None, &secrets, true, bounds).await {
                Ok(a) => {
                    report.checks = a.checks;
                    report.warnings = a.warnings;
                }
                Err(refused) => {
                    report.valid = false;
                    report.errors = refused.errors.errors;
                    report.warnings = refused
                        .checks
                        .iter()
                        .flat_map(|c| {
                            c.warnings
                                .iter()
                                .map(move |w| format!("backend {:?}: {w}", c.backend))
                        })
                        .collect();
                    report.checks = refused.checks;
                    report.unreachable = refused.unreachable;
                }
            },
            Resource::Secret(s) => {
                if let Err(e) = common::validate::validate_secret(&s) {
                    report.valid = false;
                    report.errors = e.errors;
                }
            }
            Resource::Dataplane(d) => {
                if let Err(e) = common::validate::validate_dataplane(&d) {
                    report.valid = false;
                    report.errors = e.errors;
                }
            }
        }
        reports.push(report);
    }
    reports
}

async fn validate(
    files: &[String],
    output: Format,
    vault_timeouts: common::vault::Timeouts,
) -> Result<(), Failure> {
    let inputs = read_inputs(files)?;
    let resources = parse_inputs(&inputs)?;
    if resources.is_empty() {
        return Err(Failure::usage("no resources in the given files"));
    }
    let reports = validate_resources(resources, vault_timeouts).await;
    match output {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&reports).unwrap_or_default()
        ),
        Format::Yaml => print!("{}", serde_norway::to_string(&reports).unwrap_or_default()),
        Format::Table => print_report(&reports),
    }
    let invalid: Vec<&ResourceReport> = reports.iter().filter(|r| !r.valid).collect();
    if invalid.is_empty() {
        Ok(())
    } else if invalid.iter().all(|r| r.unreachable) {
        Err(Failure::unreachable(format!(
            "{} of {} resources could not be validated: Vault unreachable",
            invalid.len(),
            reports.len()
        )))
    } else {
        Err(Failure::refused(format!(
            "{} of {} resources are invalid",
            invalid.len(),
            reports.len()
        )))
    }
}

fn print_report(reports: &[ResourceReport]) {
    for r in reports {
        let scope = if r.kind == "Mesh" {
            String::new()
        } else {
            format!(" (mesh {:?})", r.mesh)
        };
        println!(
            "{} {:?}{}: {}",
            r.kind,
            r.name,
            scope,
            if r.valid { "VALID" } else { "INVALID" }
        );
        for c in &r.checks {
            for step in &c.checks {
                // Warnings are listed once, below.
                if step.passed && step.detail.starts_with("warning:") {
                    continue;
                }
                let field = step
                    .field
                    .as_deref()
                    .map(|f| format!(" [{f}]"))
                    .unwrap_or_default();
                println!(
                    "  {}  {} {}{}: {}",
                    if step.passed { "PASS" } else { "FAIL" },
                    c.backend,
                    step.name,
                    if step.passed { String::new() } else { field },
                    step.detail
                );
            }
        }
        // Errors that repeat a failed check above are not printed twice.
        let failed_details: Vec<&str> = r
            .checks
            .iter()
            .flat_map(|c| c.checks.iter())
            .filter(|s| !s.passed)
            .map(|s| s.detail.as_str())
            .collect();
        for e in &r.errors {
            if failed_details.iter().any(|d| e.reason.contains(d)) {
                continue;
            }
            println!("  FAIL  {}: {}", e.field, e.reason);
        }
        for w in &r.warnings {
            println!("  WARN  {w}");
        }
    }
    let valid = reports.iter().filter(|r| r.valid).count();
    println!(
        "{valid} of {} resources valid; nothing was stored",
        reports.len()
    );
}

/// Reads a token file for tests and tools.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}
