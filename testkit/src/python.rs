//! Python with the real SPIFFE clients: a virtualenv made once under `<target>/pyspiffe`
//! (`python3 -m venv`, then `pip install` of [`PACKAGES`]: py-spiffe and py-spiffe's TLS helpers)
//! under a lock file shared by parallel test processes, and snippets run with it: to completion
//! and bounded in time ([`run`]), or in the background with their output in a log ([`spawn`]).
//! A finished virtualenv is marked with the list it holds, so a changed list makes it anew.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bins::target_dir;
use crate::proc::{CmdOutput, Proc, run_bounded};

/// What the virtualenv holds: the py-spiffe release the tests were written against, and its TLS
/// helpers.
pub const PACKAGES: &[&str] = &["spiffe==0.3.2", "spiffe-tls==0.4.0"];

/// How long making the virtualenv may take (pip downloads).
const INSTALL_LIMIT: Duration = Duration::from_secs(600);

static PYTHON: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The virtualenv's `python`, made first if needed.
pub fn python() -> Result<PathBuf> {
    let mut cached = PYTHON.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cached.as_ref() {
        return Ok(p.clone());
    }
    let p = make_venv()?;
    *cached = Some(p.clone());
    Ok(p)
}

fn marker_text() -> String {
    PACKAGES.join("\n")
}

fn make_venv() -> Result<PathBuf> {
    let target = target_dir();
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let dir = target.join("pyspiffe");
    let python = dir.join("bin").join("python");
    let marker = dir.join(".kmesh-packages");
    let ready = || std::fs::read_to_string(&marker).ok().as_deref() == Some(&marker_text());
    if ready() {
        return Ok(python);
    }
    let lock_path = target.join("pyspiffe.install.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    // Another process may have made it while we waited for the lock.
    if ready() {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut venv = Command::new("python3");
    venv.args(["-m", "venv"]).arg(&dir);
    let out = run_bounded(venv, INSTALL_LIMIT)?;
    if out.code != Some(0) {
        bail!(
            "`python3 -m venv {}` failed ({:?}): {}",
            dir.display(),
            out.code,
            out.text().trim()
        );
    }
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
    ])
    .args(PACKAGES);
    let out = run_bounded(pip, INSTALL_LIMIT)?;
    if out.code != Some(0) {
        let _ = std::fs::remove_dir_all(&dir);
        bail!(
            "`pip install {}` into {} failed ({:?}): {}",
            PACKAGES.join(" "),
            dir.display(),
            out.code,
            out.text().trim()
        );
    }
    std::fs::write(&marker, marker_text())
        .with_context(|| format!("cannot write {}", marker.display()))?;
    drop(lock);
    Ok(python)
}

/// Runs `script` with the virtualenv's python and `env`, killed after `limit`.
pub fn run(script: &str, env: &[(&str, &str)], limit: Duration) -> Result<CmdOutput> {
    let mut cmd = Command::new(python()?);
    cmd.arg("-c")
        .arg(script)
        .envs(env.iter().copied())
        .env("PYTHONUNBUFFERED", "1");
    run_bounded(cmd, limit)
}

/// Runs `script` as in [`run`], failing with its output unless it exits 0; returns its stdout.
pub fn run_ok(script: &str, env: &[(&str, &str)], limit: Duration) -> Result<String> {
    let out = run(script, env, limit)?;
    if out.code != Some(0) {
        bail!(
            "the python snippet exited with {:?}:\n{}\n--- snippet ---\n{script}",
            out.code,
            out.text()
        );
    }
    Ok(out.stdout)
}

/// Starts `script` in the background (its own process group, killed on drop) with its stdout and
/// stderr appended to `log`.
pub fn spawn(name: &str, script: &str, env: &[(&str, &str)], log: PathBuf) -> Result<Proc> {
    let mut cmd = Command::new(python()?);
    cmd.arg("-c")
        .arg(format!("import sys\nsys.stdout = sys.stderr\n{script}"))
        .envs(env.iter().copied())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null());
    Proc::spawn(name, cmd, log)
}
