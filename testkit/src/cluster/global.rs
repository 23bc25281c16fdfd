//! A `global run` process on loopback ([`GlobalProc`]): started with its data directory, ports,
//! working directory and log filter ([`GlobalOptions`]), waited for until `/healthz` answers, its
//! admin token read, restarted on the same ports; its API, its tokens (by API or by the real
//! `global` command line) and the `global` command line run against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::api::Api;
use crate::bins::binary;
use crate::proc::{CmdOutput, Proc, free_port, output_text, run_bounded, write_private};

/// `RUST_LOG` of the control planes and agents started here unless told otherwise
/// (`SCENARIOS_LOG`, default `info`).
pub(crate) fn log_filter() -> String {
    std::env::var("SCENARIOS_LOG").unwrap_or_else(|_| "info".into())
}

/// `RUST_LOG=filter` for the child, or no `RUST_LOG` at all when `filter` is empty (so that its
/// `--log-level` decides).
pub(crate) fn set_rust_log(cmd: &mut Command, filter: &str) {
    if filter.is_empty() {
        cmd.env_remove("RUST_LOG");
    } else {
        cmd.env("RUST_LOG", filter);
    }
}

/// Waits until `GET {base}/healthz` answers 200, or fails with the tail of the log.
pub(crate) async fn wait_healthy(
    what: &str,
    base: &str,
    proc: &mut Proc,
    timeout: Duration,
) -> Result<()> {
    let probe = Api::new(base, None);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = probe.get("/healthz").await {
            return Ok(());
        }
        if !proc.is_running() {
            let status = proc
                .stop(Duration::ZERO)
                .map_or_else(|| "status unknown".to_string(), |s| s.to_string());
            bail!(
                "{what} exited ({status}) before answering on {base}; last lines of {}:\n{}",
                proc.log.display(),
                proc.log_tail(20)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{what} did not answer on {base} within {timeout:?}; last lines of {}:\n{}",
                proc.log.display(),
                proc.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a global is started: ports (free ones unless given: the plain API, the sync server and the
/// HTTPS API), working directory (where `file:` data sources with `/proc/self/cwd/...` paths
/// resolve; this process's own unless given) and `RUST_LOG`.
#[derive(Debug, Clone)]
pub struct GlobalOptions {
    pub api_port: u16,
    pub kds_port: u16,
    /// `--api-tls-addr 127.0.0.1:PORT`: never global's default port, which parallel globals
    /// would share.
    pub api_tls_port: u16,
    /// The host of `--api-addr` (`127.0.0.1` unless given; the API is asked on 127.0.0.1).
    pub api_bind: String,
    pub cwd: Option<PathBuf>,
    /// `RUST_LOG` (none when empty).
    pub rust_log: String,
    /// `--store` (sled when unset).
    pub store: Option<String>,
    /// More `global run` arguments.
    pub extra: Vec<String>,
}

impl Default for GlobalOptions {
    fn default() -> Self {
        Self {
            api_port: free_port(),
            kds_port: free_port(),
            api_tls_port: free_port(),
            api_bind: "127.0.0.1".into(),
            cwd: None,
            rust_log: log_filter(),
            store: None,
            extra: Vec::new(),
        }
    }
}

impl GlobalOptions {
    /// Free ports, working directory `dir` (where a test puts the files its `file:` data
    /// sources name) and `RUST_LOG` `rust_log`.
    pub fn in_dir(dir: &Path, rust_log: &str) -> Self {
        Self::default().cwd(dir).rust_log(rust_log)
    }

    /// More `global run` arguments.
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    pub fn ports(mut self, api_port: u16, kds_port: u16) -> Self {
        self.api_port = api_port;
        self.kds_port = kds_port;
        self
    }

    pub fn cwd(mut self, cwd: &Path) -> Self {
        self.cwd = Some(cwd.to_path_buf());
        self
    }

    /// `--api-addr HOST:<api port>` (e.g. `0.0.0.0`, with `--api-insecure-http`).
    pub fn api_bind(mut self, host: &str) -> Self {
        self.api_bind = host.to_string();
        self
    }

    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_string();
        self
    }

    /// `--store URL` (a PostgreSQL store shared by replicas).
    pub fn store(mut self, url: &str) -> Self {
        self.store = Some(url.to_string());
        self
    }
}

/// A `global run` process.
pub struct GlobalProc {
    pub proc: Proc,
    pub dir: PathBuf,
    pub api_port: u16,
    pub kds_port: u16,
    pub api_tls_port: u16,
    /// The API with the admin token.
    pub api: Api,
    /// The admin token.
    pub token: String,
    options: GlobalOptions,
}

impl GlobalProc {
    pub async fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, GlobalOptions::default()).await
    }

    pub async fn start_on(dir: &Path, api_port: u16, kds_port: u16) -> Result<Self> {
        Self::start_with(dir, GlobalOptions::default().ports(api_port, kds_port)).await
    }

    /// Starts global with its data in and running in `dir`, logging with `rust_log`.
    pub async fn start_in(dir: &Path, rust_log: &str) -> Result<Self> {
        Self::start_with(dir, GlobalOptions::in_dir(dir, rust_log)).await
    }

    pub async fn start_with(dir: &Path, options: GlobalOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (api_port, kds_port, api_tls_port) =
            (options.api_port, options.kds_port, options.api_tls_port);
        let mut cmd = Command::new(binary("global")?);
        cmd.arg("run")
            .arg("--data-dir")
            .arg(dir)
            .args(["--api-addr", &format!("{}:{api_port}", options.api_bind)])
            .args(["--kds-addr", &format!("127.0.0.1:{kds_port}")])
            .args(["--api-tls-addr", &format!("127.0.0.1:{api_tls_port}")]);
        set_rust_log(&mut cmd, &options.rust_log);
        if let Some(store) = &options.store {
            cmd.args(["--store", store]);
            // Replicas on one database share its Secrets key file (a PostgreSQL server of this
            // process has one); a test passing its own keeps it.
            let named = options.extra.iter().any(|a| a == "--secrets-key-file");
            if !named && let Some(key) = crate::postgres::secrets_key_file_for(store) {
                cmd.arg("--secrets-key-file").arg(key);
            }
        }
        cmd.args(&options.extra);
        if let Some(cwd) = &options.cwd {
            cmd.current_dir(cwd);
        }
        let mut proc = Proc::spawn("global", cmd, dir.join("global.log"))?;
        let base = format!("http://127.0.0.1:{api_port}");
        wait_healthy("global", &base, &mut proc, Duration::from_secs(30)).await?;
        let token = std::fs::read_to_string(dir.join("admin-token"))?
            .trim()
            .to_string();
        Ok(Self {
            proc,
            dir: dir.to_path_buf(),
            api_port,
            kds_port,
            api_tls_port,
            api: Api::new(&base, Some(token.clone())),
            token,
            options,
        })
    }

    /// Starts global, telling a refused start (exit status 1: `Ok(Err(text))`, the text holding
    /// the last lines of its log) from one that serves (`Ok(Ok(global))`); anything else is an
    /// error.
    pub async fn start_or_refusal(
        dir: &Path,
        options: GlobalOptions,
    ) -> Result<std::result::Result<Self, String>> {
        match Self::start_with(dir, options).await {
            Ok(g) => Ok(Ok(g)),
            Err(e) => {
                let text = format!("{e:#}");
                if text.contains("exited (exit status: 1)") {
                    Ok(Err(text))
                } else {
                    Err(e)
                }
            }
        }
    }

    /// How it was started (ports included), to start it again with changes.
    pub fn options(&self) -> GlobalOptions {
        self.options.clone()
    }

    /// The same global again: same data directory, ports and options (after `kill9` or `stop`).
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.stop(Duration::from_secs(5));
        *self = Self::start_with(&self.dir, self.options.clone()).await?;
        Ok(())
    }

    /// SIGTERM; panics with the logs unless global exits successfully within 10 s.
    pub fn terminate(&mut self) {
        self.proc.terminate(&self.dir);
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// `http://127.0.0.1:<api port>{path}`.
    pub fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    /// `https://127.0.0.1:<HTTPS API port>`.
    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_tls_port)
    }

    /// The CA of the HTTPS API's generated certificate (`<data-dir>/api-ca.pem`).
    pub fn api_ca_file(&self) -> PathBuf {
        self.dir.join("api-ca.pem")
    }

    /// The API over HTTPS with the admin token, trusting `api-ca.pem` only; `h2` asks for
    /// HTTP/2 (by ALPN), else HTTP/1.1.
    pub fn https_api(&self, h2: bool) -> Result<Api> {
        let client = crate::api::https_client(&std::fs::read(self.api_ca_file())?, h2)?;
        Ok(Api::with_client(
            &self.https_url(),
            Some(self.token.clone()),
            client,
        ))
    }

    pub fn kds_address(&self) -> String {
        format!("grpcs://127.0.0.1:{}", self.kds_port)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("kds-ca.pem")
    }

    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.join("admin-token")
    }

    /// A zone token from `POST /tokens/zone`, written to `<dir>/<zone>.token`.
    pub async fn zone_token_file(&self, zone: &str, dir: &Path) -> Result<PathBuf> {
        let body = serde_json::json!({ "zone": zone }).to_string();
        self.token_file("/tokens/zone", &body, &dir.join(format!("{zone}.token")))
            .await
    }

    /// A dataplane token from `POST /tokens/dataplane` that lets the proxy register any service
    /// (for tests of other things than the binding), written to `<dir>/<mesh>-<name>.token`.
    pub async fn dataplane_token_file(
        &self,
        mesh: &str,
        name: &str,
        dir: &Path,
    ) -> Result<PathBuf> {
        let body = serde_json::json!({ "mesh": mesh, "name": name, "anyService": true });
        self.token_file(
            "/tokens/dataplane",
            &body.to_string(),
            &dir.join(format!("{mesh}-{name}.token")),
        )
        .await
    }

    /// A dataplane token from `POST /tokens/dataplane` bound to `service`, written to
    /// `<dir>/<mesh>-<name>.token`.
    pub async fn bound_dataplane_token_file(
        &self,
        mesh: &str,
        name: &str,
        service: &str,
        dir: &Path,
    ) -> Result<PathBuf> {
        let body = serde_json::json!({ "mesh": mesh, "name": name, "service": service });
        self.token_file(
            "/tokens/dataplane",
            &body.to_string(),
            &dir.join(format!("{mesh}-{name}.token")),
        )
        .await
    }

    async fn token_file(&self, path: &str, body: &str, file: &Path) -> Result<PathBuf> {
        let v = self.api.write_ok(reqwest::Method::POST, path, body).await?;
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("no token in the answer of POST {path}"))?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_private(file, token.as_bytes())
            .with_context(|| format!("cannot write {}", file.display()))?;
        Ok(file.to_path_buf())
    }

    /// A token made with the real command line (`global zone-token --zone ZONE`,
    /// `global dataplane-token --mesh M --name N`), which must print a JWT, written to `path`.
    pub fn cli_token_file(&self, args: &[&str], path: &Path) -> Result<PathBuf> {
        let out = self.cli_env(args)?;
        if !out.status.success() {
            bail!("global {args:?}: {}", output_text(&out));
        }
        let token = String::from_utf8(out.stdout)?;
        if token.trim().split('.').count() != 3 {
            bail!("global {args:?} printed no JWT: {token}");
        }
        std::fs::write(path, token)?;
        Ok(path.to_path_buf())
    }

    /// A zone token made with `global zone-token`, written to `<dir>/<zone>.token`.
    pub fn cli_zone_token_file(&self, zone: &str, dir: &Path) -> Result<PathBuf> {
        self.cli_token_file(
            &["zone-token", "--zone", zone],
            &dir.join(format!("{zone}.token")),
        )
    }

    /// A dataplane token made with `global dataplane-token ... --any-service` (any service: for
    /// tests of other things than the binding), written to `<dir>/<mesh>-<name>.token`.
    pub fn cli_dataplane_token_file(&self, mesh: &str, name: &str, dir: &Path) -> Result<PathBuf> {
        self.cli_token_file(
            &[
                "dataplane-token",
                "--mesh",
                mesh,
                "--name",
                name,
                "--any-service",
            ],
            &dir.join(format!("{mesh}-{name}.token")),
        )
    }

    /// `POST /apply` of a YAML stream, which must answer 200.
    pub async fn apply(&self, yaml: &str) -> Result<Value> {
        let (status, body) = self.api.send(reqwest::Method::POST, "/apply", yaml).await?;
        if status != 200 {
            bail!("apply: {status} {body}\n{yaml}");
        }
        Ok(body)
    }

    /// `PUT {path}` of a YAML resource, which must be created or updated (200 or 201).
    pub async fn put(&self, path: &str, yaml: &str) -> Result<Value> {
        let (status, body) = self.api.send(reqwest::Method::PUT, path, yaml).await?;
        if status != 200 && status != 201 {
            bail!("PUT {path}: {status} {body}");
        }
        Ok(body)
    }

    /// `DELETE {path}`, which must answer 200.
    pub async fn delete(&self, path: &str) -> Result<Value> {
        let (status, body) = self.api.delete(path).await?;
        if status != 200 {
            bail!("DELETE {path}: {status} {body}");
        }
        Ok(body)
    }

    /// `GET /zones/{name}`, which must answer 200.
    pub async fn zone(&self, name: &str) -> Result<Value> {
        self.api.get_ok(&format!("/zones/{name}")).await
    }

    /// Runs the real `global` binary with `args` against this global (`--api`, and
    /// `--admin-token-file` for the commands that take it).
    pub fn cli(&self, args: &[&str]) -> Result<CmdOutput> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let takes_api = matches!(
            args.first().copied(),
            Some(
                "apply"
                    | "get"
                    | "delete"
                    | "export"
                    | "zone-token"
                    | "dataplane-token"
                    | "generate"
                    | "revoke-token"
                    | "rotate-signing-key"
                    | "retire-signing-key"
            )
        );
        if takes_api {
            all.extend(["--api".to_string(), self.api_url()]);
            all.push("--admin-token-file".to_string());
            all.push(self.admin_token_file().display().to_string());
        }
        run_global(&all, Duration::from_secs(120))
    }

    /// Runs the real `global` binary with `args`, pointed at this global by the environment
    /// (`GLOBAL_API`, `GLOBAL_ADMIN_TOKEN_FILE`).
    pub fn cli_env(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(binary("global")?)
            .args(args)
            .env("GLOBAL_API", self.url(""))
            .env("GLOBAL_ADMIN_TOKEN_FILE", self.admin_token_file())
            .output()?)
    }
}

/// Runs the real `global` binary with `args` and the variables `env` (without the caller's
/// `VAULT_ADDR`/`VAULT_TOKEN`) to completion; panics when it cannot be found or run.
pub fn global_output(args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = binary("global").expect("the global binary");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot run the global binary")
}

/// Runs `global ARGS` (the real binary) with a time limit.
pub fn run_global(args: &[String], limit: Duration) -> Result<CmdOutput> {
    let mut cmd = Command::new(binary("global")?);
    cmd.args(args).env("RUST_LOG", "warn");
    run_bounded(cmd, limit)
}
