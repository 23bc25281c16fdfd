//! A real mTLS exchange between two proxies' files with the `openssl` command: `openssl s_server
//! -Verify 1 -verify_return_error -www` with one proxy's `cert.pem`/`key.pem`/`ca.pem` on a free
//! loopback port, and `openssl s_client -verify_return_error` with the other's, sending one HTTP
//! request. Both are subprocesses, bounded in time and killed if they overrun. Also
//! `openssl verify` of a proxy's chain against a trust anchor.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::free_port;

/// `openssl ARGS`.
pub fn openssl(args: &[&str]) -> std::io::Result<Output> {
    Command::new("openssl").args(args).output()
}

/// `openssl verify -CAfile ca cert` (the chain in `cert` as untrusted intermediates).
pub fn openssl_verify(ca: &Path, cert: &Path) -> std::io::Result<Output> {
    let mut cmd = Command::new("openssl");
    cmd.arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg("-untrusted")
        .arg(cert)
        .arg(cert);
    cmd.output()
}

/// What the exchange showed.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The client verified the server, the server required and verified the client's
    /// certificate, and the request got its answer.
    pub ok: bool,
    /// s_client's `Verify return code: ...` line.
    pub client_verify: String,
    /// The protocol and cipher s_client reports.
    pub protocol: String,
    /// The client certificate's subject, as s_server reports verifying it.
    pub server_saw_client: String,
    pub port: u16,
    /// Both outputs, for a failure report.
    pub transcript: String,
}

impl Handshake {
    pub fn describe(&self) -> String {
        format!(
            "127.0.0.1:{}: {}; client: {}; server saw client certificate: {}",
            self.port,
            if self.protocol.is_empty() {
                "no session"
            } else {
                &self.protocol
            },
            if self.client_verify.is_empty() {
                "no verify result"
            } else {
                &self.client_verify
            },
            if self.server_saw_client.is_empty() {
                "none"
            } else {
                &self.server_saw_client
            }
        )
    }
}

/// The certificates after the leaf in `dir/cert.pem`, written next to `scratch` for
/// `-cert_chain` (openssl's `-cert` reads only the first certificate of the file).
fn chain_file(dir: &Path, scratch: &Path, tag: &str) -> Result<Option<PathBuf>> {
    let text = std::fs::read_to_string(dir.join("cert.pem"))
        .with_context(|| format!("reading {}", dir.join("cert.pem").display()))?;
    let ders = common::x509::pem_to_ders(&text)?;
    if ders.len() < 2 {
        return Ok(None);
    }
    let pem: String = ders[1..]
        .iter()
        .map(|d| common::x509::der_to_pem(d))
        .collect();
    std::fs::create_dir_all(scratch)?;
    let path = scratch.join(format!("{tag}-chain.pem"));
    std::fs::write(&path, pem)?;
    Ok(Some(path))
}

fn tls_args(cmd: &mut Command, dir: &Path, chain: Option<PathBuf>) {
    cmd.arg("-cert")
        .arg(dir.join("cert.pem"))
        .arg("-key")
        .arg(dir.join("key.pem"))
        .arg("-CAfile")
        .arg(dir.join("ca.pem"));
    if let Some(chain) = chain {
        cmd.arg("-cert_chain").arg(chain);
    }
}

fn wait_bounded(mut child: Child, limit: Duration) -> (Option<i32>, String, String) {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    match child.wait_with_output() {
        Ok(out) => (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(e) => (None, String::new(), e.to_string()),
    }
}

/// `openssl s_server` with the files in `server_dir` (an agent's output directory) requiring a
/// client certificate, `openssl s_client` with the files in `client_dir`; `scratch` holds the
/// chain files. Each process is killed after `limit`.
pub fn mtls_handshake(
    server_dir: &Path,
    client_dir: &Path,
    scratch: &Path,
    limit: Duration,
) -> Result<Handshake> {
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-naccept",
            "1",
            "-Verify",
            "1",
            "-verify_return_error",
            "-www",
        ]);
    tls_args(
        &mut cmd,
        server_dir,
        chain_file(server_dir, scratch, "server")?,
    );
    let mut server = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `openssl s_server` (is the openssl command installed?)")?;
    let stdout = server.stdout.take().context("s_server stdout")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("ACCEPT") {
                let _ = ready_tx.send(());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    if ready_rx.recv_timeout(limit).is_err() {
        let (_, _, err) = wait_bounded(server, Duration::from_millis(10));
        let out = reader.join().unwrap_or_default();
        bail!("openssl s_server did not start listening within {limit:?}: {out}{err}");
    }
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-verify_return_error", "-ign_eof"]);
    tls_args(
        &mut cmd,
        client_dir,
        chain_file(client_dir, scratch, "client")?,
    );
    let mut client = match cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = wait_bounded(server, Duration::from_millis(10));
            return Err(e).context("cannot run `openssl s_client`");
        }
    };
    if let Some(mut stdin) = client.stdin.take() {
        let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
    }
    let (client_code, client_out, client_err) = wait_bounded(client, limit);
    let (_, _, server_err) = wait_bounded(server, Duration::from_secs(2));
    let server_out = reader.join().unwrap_or_default();

    let client_verify = client_out
        .lines()
        .find(|l| l.contains("Verify return code:"))
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    let protocol = client_out
        .lines()
        .find(|l| l.trim_start().starts_with("New, "))
        .map(|l| l.trim().trim_start_matches("New, ").to_string())
        .unwrap_or_default();
    // s_server prints the client chain it verified: `depth=0 CN = web.mesh`, `verify return:1`
    // (`depth=0` alone for a leaf with an empty subject).
    let server_saw_client = server_out
        .lines()
        .chain(server_err.lines())
        .filter_map(|l| l.trim().strip_prefix("depth=0"))
        .next_back()
        .map(|s| {
            let s = s.trim();
            if s.is_empty() {
                "(empty subject)".to_string()
            } else {
                s.to_string()
            }
        })
        .unwrap_or_default();
    let ok = client_code == Some(0)
        && client_verify.contains("0 (ok)")
        && client_out.contains("HTTP/1.0 200")
        && !server_saw_client.is_empty();
    Ok(Handshake {
        ok,
        client_verify,
        protocol,
        server_saw_client,
        port,
        transcript: format!(
            "---- s_client (exit {client_code:?})\n{client_out}{client_err}\n---- s_server\n{server_out}{server_err}"
        ),
    })
}
