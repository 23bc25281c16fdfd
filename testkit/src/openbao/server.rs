//! A running `bao server -dev` on a free loopback port, plain HTTP or `-dev-tls`, its state in
//! memory: started (retrying when the port was taken meanwhile), waited for until `sys/health`
//! answers, stopped, started again on the same port, sealed and unsealed; optionally with a raw
//! file audit log (declared in a config file: OpenBao refuses to enable audit devices through
//! its API), which [`super::audit`] reads. The process group is killed on drop.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::install::bao_binary;
use super::{
    BaoAgent, BaoCli, BaoError, ENV_TO_CLEAR, READY_TIMEOUT, ROOT_TOKEN, health_status, io_err,
};
use crate::proc::{ProcessGroup, log_tail};

pub(super) fn free_loopback_port() -> Result<u16, BaoError> {
    match crate::proc::free_port() {
        0 => Err(io_err("cannot bind a free loopback port")(
            std::io::Error::from(std::io::ErrorKind::AddrInUse),
        )),
        port => Ok(port),
    }
}

/// A running `bao server -dev` on 127.0.0.1 (plain HTTP or TLS), its state in memory. The child and
/// its process group are killed on drop.
pub struct BaoServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
    child: ProcessGroup,
    log_path: PathBuf,
    ca_pem: Option<String>,
    starts: u32,
    /// The raw audit log, when the server keeps one.
    audit_log: Option<PathBuf>,
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
        Self::launch(false, false).await
    }

    /// Starts a dev server with `-dev-tls`: HTTPS with a CA that OpenBao generates and writes to
    /// [`BaoServer::ca_file`].
    pub async fn start_tls() -> Result<Self, BaoError> {
        Self::launch(true, false).await
    }

    /// Starts a plain-HTTP dev server that writes every request and answer, unhashed, to its
    /// audit log ([`BaoServer::audit_log`]): what tests count logins and find tokens with.
    pub async fn start_audited() -> Result<Self, BaoError> {
        Self::launch(false, true).await
    }

    async fn launch(tls: bool, audit: bool) -> Result<Self, BaoError> {
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
            let audit_log = audit.then(|| dir.path().join("audit.log"));
            let child = spawn_server(&bin, dir.path(), &log_path, port, tls, audit_log.as_deref())?;
            let mut server = Self {
                bin: bin.clone(),
                port,
                tls,
                child,
                log_path,
                ca_pem: None,
                starts: 1,
                dir,
                audit_log,
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

    /// The raw audit log ([`BaoServer::start_audited`] only): one JSON object per request and
    /// per answer, credentials and tokens unhashed.
    pub fn audit_log(&self) -> Option<&Path> {
        self.audit_log.as_deref()
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
        self.child.is_running()
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
            self.audit_log.as_deref(),
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
    audit_log: Option<&Path>,
) -> Result<ProcessGroup, BaoError> {
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
    if let Some(audit_log) = audit_log {
        // Declarative: OpenBao refuses `audit enable` through its API.
        let config = dir.join("audit.hcl");
        let hcl = format!(
            "audit \"file\" \"raw\" {{\n  options {{\n    file_path = \"{}\"\n    log_raw = \"true\"\n  }}\n}}\n",
            audit_log.display()
        );
        std::fs::write(&config, hcl)
            .map_err(io_err(format!("cannot write {}", config.display())))?;
        cmd.arg(format!("-config={}", config.display()));
    }
    // The dev server writes the root token to ~/.vault-token: keep that in the temporary directory.
    cmd.env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    for var in ENV_TO_CLEAR {
        cmd.env_remove(var);
    }
    ProcessGroup::spawn(&mut cmd).map_err(io_err(format!("cannot start {}", bin.display())))
}
