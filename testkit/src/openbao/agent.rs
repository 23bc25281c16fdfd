//! A Vault Agent (`bao agent`) on a loopback port in front of a [`BaoServer`]: auto-auth with a
//! token file, the token added to every proxied request (the reference page's `agentAddress`).
//! Killed on drop.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server::free_loopback_port;
use super::{BaoError, BaoServer, ENV_TO_CLEAR, READY_TIMEOUT, health_status, io_err};
use crate::proc::{ProcessGroup, log_tail};

/// A running `bao agent` on a loopback port (plain HTTP) that proxies to a [`BaoServer`] with its
/// auto-auth token. Killed on drop.
pub struct BaoAgent {
    _dir: tempfile::TempDir,
    port: u16,
    log_path: PathBuf,
    child: ProcessGroup,
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
    pub(super) async fn start(server: &BaoServer, token: &str) -> Result<Self, BaoError> {
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
        let child = ProcessGroup::spawn(&mut cmd).map_err(io_err("cannot start bao agent"))?;
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
    crate::proc::write_private(path, data)
        .map_err(io_err(format!("cannot write {}", path.display())))
}
