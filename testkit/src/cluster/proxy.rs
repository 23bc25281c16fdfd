//! A `zone proxy` agent process ([`ProxyProc`]): one dataplane of a mesh ([`ProxySpec`]: mesh,
//! name, service, tags, an optional `--exec` command, more agent arguments such as
//! `--workload-api`), keeping `cert.pem`, `key.pem` and `ca.pem`
//! in its output directory; reading and waiting for the identity it writes there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::global::log_filter;
use super::zone::ZoneProc;
use crate::bins::binary;
use crate::certs::ProxyIdentity;
use crate::proc::{Proc, logs};

/// What a proxy is.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub mesh: String,
    pub name: String,
    pub service: String,
    pub tags: Vec<(String, String)>,
    /// `--exec` (a command the agent runs and keeps informed).
    pub exec: Option<String>,
    /// `RUST_LOG` of the agent.
    pub rust_log: String,
    /// More environment variables (e.g. [`crate::faketime::env`]).
    pub env: Vec<(String, String)>,
    /// More `zone proxy` arguments (e.g. `--workload-api unix:///PATH`).
    pub args: Vec<String>,
    /// `--zone-ca-file` (the zone's generated `dp-ca.pem` unless given: an operator's CA when
    /// the zone serves `--dp-tls-cert`).
    pub zone_ca_file: Option<PathBuf>,
}

impl ProxySpec {
    pub fn new(mesh: &str, name: &str, service: &str) -> Self {
        Self {
            mesh: mesh.to_string(),
            name: name.to_string(),
            service: service.to_string(),
            tags: Vec::new(),
            exec: None,
            rust_log: log_filter(),
            env: Vec::new(),
            args: Vec::new(),
            zone_ca_file: None,
        }
    }

    /// `--zone-ca-file FILE` instead of the zone's generated `dp-ca.pem`.
    pub fn zone_ca_file(mut self, file: &Path) -> Self {
        self.zone_ca_file = Some(file.to_path_buf());
        self
    }

    /// More `zone proxy` arguments, after the others.
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, vars: Vec<(String, String)>) -> Self {
        self.env.extend(vars);
        self
    }

    pub fn tag(mut self, k: &str, v: &str) -> Self {
        self.tags.push((k.to_string(), v.to_string()));
        self
    }

    pub fn exec(mut self, command: &str) -> Self {
        self.exec = Some(command.to_string());
        self
    }

    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_string();
        self
    }
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
    /// Holds `proxy.log` and the output directory `out/`.
    pub dir: PathBuf,
    pub out_dir: PathBuf,
}

impl ProxyProc {
    /// Starts `zone proxy` against `zone` with the dataplane token in `token_file`; files go to
    /// `dir/out`, the log to `dir/proxy.log`.
    pub fn start(zone: &ZoneProc, spec: &ProxySpec, token_file: &Path, dir: &Path) -> Result<Self> {
        let out_dir = dir.join("out");
        std::fs::create_dir_all(&out_dir)?;
        let mut cmd = std::process::Command::new(binary("zone")?);
        cmd.args(["proxy", "--zone-address", &zone.dp_address()])
            .arg("--zone-ca-file")
            .arg(
                spec.zone_ca_file
                    .clone()
                    .unwrap_or_else(|| zone.dp_ca_file()),
            )
            .arg("--token-file")
            .arg(token_file)
            .args(["--mesh", &spec.mesh, "--name", &spec.name])
            .args(["--service", &spec.service])
            .arg("--out-dir")
            .arg(&out_dir)
            .env("RUST_LOG", &spec.rust_log)
            .envs(spec.env.iter().map(|(k, v)| (k, v)));
        for (k, v) in &spec.tags {
            cmd.arg("--tag").arg(format!("{k}={v}"));
        }
        if let Some(e) = &spec.exec {
            cmd.args(["--exec", e]);
        }
        cmd.args(&spec.args);
        let proc = Proc::spawn(&format!("proxy {}", spec.name), cmd, dir.join("proxy.log"))?;
        Ok(Self {
            name: spec.name.clone(),
            mesh: spec.mesh.clone(),
            service: spec.service.clone(),
            zone: zone.name.clone(),
            proc,
            dir: dir.to_path_buf(),
            out_dir,
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.out_dir.join(name)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    /// SIGTERM; panics with the logs unless the agent exits successfully within 10 s.
    pub fn terminate(&mut self) {
        self.proc.terminate(&self.dir);
    }

    /// The leaf of `cert.pem`, once it is there and complete with its key.
    pub fn leaf(&self) -> Option<common::x509::CertSummary> {
        let chain = std::fs::read_to_string(self.file("cert.pem")).ok()?;
        let key = std::fs::read_to_string(self.file("key.pem")).ok()?;
        if !common::x509::private_key_matches_cert(&chain, &key) {
            return None;
        }
        common::x509::summarize_pem(&chain).ok()
    }

    /// Waits up to `timeout` for a complete certificate (other than `not_serial`) on disk; the
    /// error carries the logs under `logs_dir`.
    pub async fn wait_leaf(
        &self,
        logs_dir: &Path,
        not_serial: Option<&str>,
        timeout: Duration,
    ) -> Result<common::x509::CertSummary> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .leaf()
                .filter(|l| Some(l.serial.as_str()) != not_serial)
            {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for a certificate for {}\n{}",
                    self.name,
                    logs(logs_dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The files as they are now, if all three are there and the certificate parses.
    pub fn identity(&self) -> Option<ProxyIdentity> {
        ProxyIdentity::read(&self.out_dir).ok()
    }

    /// Waits until the files hold an identity for which `accept` is true.
    pub async fn wait_identity(
        &mut self,
        timeout: Duration,
        what: &str,
        accept: impl Fn(&ProxyIdentity) -> bool,
    ) -> Result<ProxyIdentity> {
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
