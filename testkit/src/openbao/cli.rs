//! Running the `bao` CLI against one server with one token (optionally a namespace and a CA
//! file), with the caller's `VAULT_*`/`BAO_*` environment cleared. `Debug` never shows the token.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{BaoError, ENV_TO_CLEAR, io_err};

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
