//! Running the real binaries on loopback: finding (or building) `global` and `zone`, starting them
//! as child processes in their own process groups with logs in files, waiting until they answer,
//! and stopping them (SIGTERM, or SIGKILL for crash drills). Everything a scenario starts is
//! stopped when its handle is dropped, so Ctrl-C or a failed step leaves no process behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// A free TCP port on loopback (bound and released: good enough on a quiet machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The directory holding this executable's sibling binaries (`target/<profile>/`).
fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .map(|p| {
            if p.ends_with("deps") {
                p.parent().map(Path::to_path_buf).unwrap_or(p)
            } else {
                p
            }
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a workspace binary (`global`, `zone`) of the same profile as this executable. The first
/// call in a process runs `cargo build -p global -p zone` (a no-op when they are up to date), so a
/// scenario never runs stale binaries; when cargo is not available, existing binaries are used.
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = bin_dir();
    let path = dir.join(name);
    let built = BUILT.get_or_init(|| {
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "global", "-p", "zone"])
            .current_dir(common::openbao::workspace_root());
        if !dir.join("global").exists() || !dir.join("zone").exists() {
            eprintln!(
                "building the global and zone binaries (the first time takes a few minutes)..."
            );
        } else {
            cmd.arg("--quiet");
        }
        if release {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build of global and zone failed: {s}")),
            Err(e) => Err(format!("cannot run cargo to build global and zone: {e}")),
        }
        .inspect_err(|e| eprintln!("warning: {e}; using the binaries already built"))
    });
    if let Err(e) = built
        && !path.exists()
    {
        bail!("{e}");
    }
    if !path.exists() {
        bail!("no {name} binary at {}", path.display());
    }
    Ok(path)
}

/// A child process in its own process group, with stderr in a log file. Dropped = killed.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open log {}", log.display()))?;
        cmd.stdout(Stdio::null())
            .stderr(file)
            .stdin(Stdio::null())
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on the process group this child leads; no memory is shared.
            unsafe {
                libc::kill(-(pid as i32), sig);
            }
        }
    }

    /// SIGTERM, then wait up to `grace`, then SIGKILL. Returns the exit status if it exited.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        self.signal_pid(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.signal_pid(child.id(), libc::SIGKILL);
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL at once (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.signal_pid(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }

    fn signal_pid(&self, pid: u32, sig: i32) {
        // SAFETY: as in `signal`.
        unsafe {
            libc::kill(-(pid as i32), sig);
        }
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        common::openbao::log_tail(&self.log, n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGKILL);
            if let Some(mut c) = self.child.take() {
                let _ = c.wait();
            }
        }
    }
}

/// A small JSON client for the control planes' HTTP APIs.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build()
                .expect("a default reqwest client builds"),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// GET, returning (status, JSON body).
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let resp = self.req(reqwest::Method::GET, path).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// GET that must answer 200.
    pub async fn get_ok(&self, path: &str) -> Result<Value> {
        let (status, body) = self.get(path).await?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        Ok(self
            .req(reqwest::Method::GET, path)
            .send()
            .await?
            .text()
            .await?)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &str,
    ) -> Result<(u16, Value)> {
        let resp = self
            .req(method, path)
            .header("content-type", "application/yaml")
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// A write that must succeed (2xx).
    pub async fn write_ok(&self, method: reqwest::Method, path: &str, body: &str) -> Result<Value> {
        let (status, v) = self.send(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {v}");
        }
        Ok(v)
    }
}

/// Polls `f` every `every` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// `RUST_LOG` of the control planes and agents started here (`SCENARIOS_LOG`, default `info`).
fn log_filter() -> String {
    std::env::var("SCENARIOS_LOG").unwrap_or_else(|_| "info".into())
}

/// Waits until `GET {base}/healthz` answers 200, or fails with the tail of the log.
async fn wait_healthy(what: &str, base: &str, proc: &mut Proc, timeout: Duration) -> Result<()> {
    let probe = Api::new(base, None);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = probe.get("/healthz").await {
            return Ok(());
        }
        if !proc.is_running() {
            bail!(
                "{what} exited before answering on {base}; last lines of {}:\n{}",
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

/// A `global run` process.
pub struct GlobalProc {
    pub proc: Proc,
    pub dir: PathBuf,
    pub api_port: u16,
    pub kds_port: u16,
    pub api: Api,
}

impl GlobalProc {
    pub async fn start(dir: &Path) -> Result<Self> {
        Self::start_on(dir, free_port(), free_port()).await
    }

    pub async fn start_on(dir: &Path, api_port: u16, kds_port: u16) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(binary("global")?);
        cmd.arg("run")
            .arg("--data-dir")
            .arg(dir)
            .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
            .args(["--kds-addr", &format!("127.0.0.1:{kds_port}")])
            .env("RUST_LOG", log_filter());
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
            api: Api::new(&base, Some(token)),
        })
    }

    /// The same global again: same data directory, same ports (after `kill9` or `stop`).
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.stop(Duration::from_secs(5));
        *self = Self::start_on(&self.dir, self.api_port, self.kds_port).await?;
        Ok(())
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
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

    /// A dataplane token from `POST /tokens/dataplane`, written to `<dir>/<mesh>-<name>.token`.
    pub async fn dataplane_token_file(
        &self,
        mesh: &str,
        name: &str,
        dir: &Path,
    ) -> Result<PathBuf> {
        let body = serde_json::json!({ "mesh": mesh, "name": name }).to_string();
        self.token_file(
            "/tokens/dataplane",
            &body,
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
        write_private(file, token)?;
        Ok(file.to_path_buf())
    }

    /// `POST /apply` of a YAML stream.
    pub async fn apply(&self, yaml: &str) -> Result<Value> {
        self.api
            .write_ok(reqwest::Method::POST, "/apply", yaml)
            .await
    }

    /// Runs the real `global` binary with `args` against this global (`--api`, and
    /// `--admin-token-file` for the commands that take it).
    pub fn cli(&self, args: &[&str]) -> Result<CmdOutput> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let takes_api = matches!(
            args.first().copied(),
            Some("apply" | "get" | "delete" | "zone-token" | "dataplane-token")
        );
        if takes_api {
            all.extend(["--api".to_string(), self.api_url()]);
            all.push("--admin-token-file".to_string());
            all.push(self.admin_token_file().display().to_string());
        }
        run_global(&all, Duration::from_secs(120))
    }
}

/// Writes a secret file with mode 0600.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    common::file::write_atomic(path, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// `None` when it was killed (signal or timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// stdout then stderr.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs a command to completion with a time limit (killed after it), capturing its output.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Result<CmdOutput> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .spawn()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(CmdOutput {
        code: status.and_then(|s| s.code()),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Runs `global ARGS` (the real binary) with a time limit.
pub fn run_global(args: &[String], limit: Duration) -> Result<CmdOutput> {
    let mut cmd = Command::new(binary("global")?);
    cmd.args(args).env("RUST_LOG", "warn");
    run_bounded(cmd, limit)
}

/// How a zone was started, so that it can be started again the same way.
#[derive(Debug, Clone)]
struct ZoneSpec {
    global_address: String,
    ca_file: PathBuf,
    token_file: PathBuf,
    extra: Vec<String>,
}

/// A `zone run` process.
pub struct ZoneProc {
    pub name: String,
    pub proc: Proc,
    pub dir: PathBuf,
    pub api_port: u16,
    pub dp_port: u16,
    pub api: Api,
    spec: ZoneSpec,
}

impl ZoneProc {
    pub async fn start(
        name: &str,
        global: &GlobalProc,
        token_file: &Path,
        dir: &Path,
    ) -> Result<Self> {
        Self::start_with(
            name,
            &global.kds_address(),
            &global.ca_file(),
            token_file,
            dir,
            &[],
        )
        .await
    }

    pub async fn start_with(
        name: &str,
        global_address: &str,
        ca_file: &Path,
        token_file: &Path,
        dir: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let spec = ZoneSpec {
            global_address: global_address.to_string(),
            ca_file: ca_file.to_path_buf(),
            token_file: token_file.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        Self::launch(name, dir, spec, free_port(), free_port()).await
    }

    async fn launch(
        name: &str,
        dir: &Path,
        spec: ZoneSpec,
        api_port: u16,
        dp_port: u16,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(binary("zone")?);
        cmd.args([
            "run",
            "--name",
            name,
            "--global-address",
            &spec.global_address,
        ])
        .arg("--global-ca-file")
        .arg(&spec.ca_file)
        .arg("--token-file")
        .arg(&spec.token_file)
        .arg("--data-dir")
        .arg(dir)
        .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
        .args(["--dp-addr", &format!("127.0.0.1:{dp_port}")])
        .args(&spec.extra)
        .env("RUST_LOG", log_filter());
        let mut proc = Proc::spawn(&format!("zone {name}"), cmd, dir.join("zone.log"))?;
        let base = format!("http://127.0.0.1:{api_port}");
        wait_healthy(
            &format!("zone {name}"),
            &base,
            &mut proc,
            Duration::from_secs(30),
        )
        .await?;
        Ok(Self {
            name: name.to_string(),
            proc,
            dir: dir.to_path_buf(),
            api_port,
            dp_port,
            api: Api::new(&base, None),
            spec,
        })
    }

    /// The same zone again: same name, data directory, token and ports (after `kill9` or `stop`).
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.stop(Duration::from_secs(5));
        *self = Self::launch(
            &self.name,
            &self.dir,
            self.spec.clone(),
            self.api_port,
            self.dp_port,
        )
        .await?;
        Ok(())
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// What proxies dial: `grpcs://127.0.0.1:<dp port>`.
    pub fn dp_address(&self) -> String {
        format!("grpcs://127.0.0.1:{}", self.dp_port)
    }

    /// The CA of the zone's proxy-facing certificate (`<data-dir>/dp-ca.pem`).
    pub fn dp_ca_file(&self) -> PathBuf {
        self.dir.join("dp-ca.pem")
    }

    /// `GET /dataplanes` items.
    pub async fn dataplanes(&self) -> Result<Vec<Value>> {
        let v = self.api.get_ok("/dataplanes").await?;
        Ok(v.get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// The value of a counter in `GET /metrics` (summed over its label sets), 0 when absent.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let text = self.api.get_text("/metrics").await?;
        Ok(metric_sum(&text, name))
    }
}

/// Sums the samples of metric `name` (any labels) in a Prometheus / OpenMetrics text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let metric = head.split('{').next()?.trim();
            (metric == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// A `zone proxy` agent: one dataplane of a mesh, keeping `cert.pem`, `key.pem` and `ca.pem` in
/// its output directory.
pub struct ProxyProc {
    pub name: String,
    pub mesh: String,
    pub service: String,
    /// The zone it connects to.
    pub zone: String,
    pub proc: Proc,
    pub out_dir: PathBuf,
}

/// What a proxy is.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub mesh: String,
    pub name: String,
    pub service: String,
    pub tags: Vec<(String, String)>,
}

impl ProxySpec {
    pub fn new(mesh: &str, name: &str, service: &str) -> Self {
        Self {
            mesh: mesh.to_string(),
            name: name.to_string(),
            service: service.to_string(),
            tags: Vec::new(),
        }
    }

    pub fn tag(mut self, k: &str, v: &str) -> Self {
        self.tags.push((k.to_string(), v.to_string()));
        self
    }
}

impl ProxyProc {
    /// Starts `zone proxy` against `zone` with the dataplane token in `token_file`; files go to
    /// `dir/out`, the log to `dir/proxy.log`.
    pub fn start(zone: &ZoneProc, spec: &ProxySpec, token_file: &Path, dir: &Path) -> Result<Self> {
        let out_dir = dir.join("out");
        std::fs::create_dir_all(&out_dir)?;
        let mut cmd = Command::new(binary("zone")?);
        cmd.args(["proxy", "--zone-address", &zone.dp_address()])
            .arg("--zone-ca-file")
            .arg(zone.dp_ca_file())
            .arg("--token-file")
            .arg(token_file)
            .args(["--mesh", &spec.mesh, "--name", &spec.name])
            .args(["--service", &spec.service])
            .arg("--out-dir")
            .arg(&out_dir)
            .env("RUST_LOG", log_filter());
        for (k, v) in &spec.tags {
            cmd.arg("--tag").arg(format!("{k}={v}"));
        }
        let proc = Proc::spawn(&format!("proxy {}", spec.name), cmd, dir.join("proxy.log"))?;
        Ok(Self {
            name: spec.name.clone(),
            mesh: spec.mesh.clone(),
            service: spec.service.clone(),
            zone: zone.name.clone(),
            proc,
            out_dir,
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.out_dir.join(name)
    }

    /// The files as they are now, if all three are there and the certificate parses.
    pub fn identity(&self) -> Option<crate::certs::ProxyIdentity> {
        crate::certs::ProxyIdentity::read(&self.out_dir).ok()
    }

    /// Waits until the files hold an identity for which `accept` is true.
    pub async fn wait_identity(
        &mut self,
        timeout: Duration,
        what: &str,
        accept: impl Fn(&crate::certs::ProxyIdentity) -> bool,
    ) -> Result<crate::certs::ProxyIdentity> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.identity().filter(|id| accept(id)) {
                return Ok(id);
            }
            if !self.proc.is_running() {
                bail!(
                    "proxy {} exited; last lines of {}:\n{}",
                    self.name,
                    self.proc.log.display(),
                    self.proc.log_tail(10)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "proxy {}: no {what} within {timeout:?}; last lines of {}:\n{}",
                    self.name,
                    self.proc.log.display(),
                    self.proc.log_tail(10)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
