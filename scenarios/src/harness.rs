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

/// Path of a workspace binary (`global`, `zone`) of the same profile as this executable, built
/// with cargo first if it is missing or when `SCENARIOS_BUILD=1`.
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = bin_dir();
    let path = dir.join(name);
    let built = BUILT.get_or_init(|| {
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "global", "-p", "zone"])
            .current_dir(common::openbao::workspace_root());
        if release {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build of global and zone failed: {s}")),
            Err(e) => Err(format!("cannot run cargo to build global and zone: {e}")),
        }
    });
    if let Err(e) = built {
        if !path.exists() {
            bail!("{e}");
        }
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
            .env(
                "RUST_LOG",
                std::env::var("SCENARIOS_LOG").unwrap_or_else(|_| "info".into()),
            );
        let proc = Proc::spawn("global", cmd, dir.join("global.log"))?;
        let base = format!("http://127.0.0.1:{api_port}");
        let probe = Api::new(&base, None);
        wait_until(
            "global to answer",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || {
                let probe = probe.clone();
                async move { probe.get("/healthz").await.ok().filter(|(s, _)| *s == 200) }
            },
        )
        .await
        .map_err(|e| anyhow!("{e}\n{}", proc.log_tail(20)))?;
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
        let v = self
            .api
            .write_ok(
                reqwest::Method::POST,
                "/tokens/zone",
                &format!("{{\"zone\": \"{zone}\"}}"),
            )
            .await?;
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("no token in {v}"))?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{zone}.token"));
        std::fs::write(&path, token)?;
        Ok(path)
    }

    /// `POST /apply` of a YAML stream.
    pub async fn apply(&self, yaml: &str) -> Result<Value> {
        self.api
            .write_ok(reqwest::Method::POST, "/apply", yaml)
            .await
    }
}

/// A `zone run` process.
pub struct ZoneProc {
    pub name: String,
    pub proc: Proc,
    pub dir: PathBuf,
    pub api_port: u16,
    pub dp_port: u16,
    pub api: Api,
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
        std::fs::create_dir_all(dir)?;
        let api_port = free_port();
        let dp_port = free_port();
        let mut cmd = Command::new(binary("zone")?);
        cmd.args(["run", "--name", name, "--global-address", global_address])
            .arg("--global-ca-file")
            .arg(ca_file)
            .arg("--token-file")
            .arg(token_file)
            .arg("--data-dir")
            .arg(dir)
            .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
            .args(["--dp-addr", &format!("127.0.0.1:{dp_port}")])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("SCENARIOS_LOG").unwrap_or_else(|_| "info".into()),
            );
        let proc = Proc::spawn(&format!("zone {name}"), cmd, dir.join("zone.log"))?;
        let base = format!("http://127.0.0.1:{api_port}");
        let api = Api::new(&base, None);
        let probe = api.clone();
        wait_until(
            "the zone to answer",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || {
                let probe = probe.clone();
                async move { probe.get("/healthz").await.ok().filter(|(s, _)| *s == 200) }
            },
        )
        .await
        .map_err(|e| anyhow!("{e}\n{}", proc.log_tail(20)))?;
        Ok(Self {
            name: name.to_string(),
            proc,
            dir: dir.to_path_buf(),
            api_port,
            dp_port,
            api,
        })
    }
}
