//! Python tools from PyPI in virtualenvs ([`Venv`]), each made once under `<target>/<name>`
//! (`python3 -m venv`, then `pip install` of its pinned packages) under a lock file shared by
//! parallel test processes; a finished virtualenv is marked with the list it holds, so a changed
//! list makes it anew. The real SPIFFE clients ([`PYSPIFFE`]: py-spiffe and its TLS helpers) run
//! snippets: to completion and bounded in time ([`run`]), or in the background with their output
//! in a log ([`spawn`]); schemathesis ([`SCHEMATHESIS`]) is run by `crate::schemathesis`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bins::target_dir;
use crate::proc::{CmdOutput, Proc, run_bounded};

/// A virtualenv of pinned PyPI packages under `<target>/<dir>`.
#[derive(Debug, Clone, Copy)]
pub struct Venv {
    pub dir: &'static str,
    pub packages: &'static [&'static str],
}

/// What the py-spiffe virtualenv holds: the py-spiffe release the tests were written against,
/// and its TLS helpers.
pub const PACKAGES: &[&str] = &["spiffe==0.3.2", "spiffe-tls==0.4.0"];

/// The real SPIFFE clients.
pub const PYSPIFFE: Venv = Venv {
    dir: "pyspiffe",
    packages: PACKAGES,
};

/// schemathesis, the OpenAPI conformance checker, at the release the API tests were written
/// against.
pub const SCHEMATHESIS: Venv = Venv {
    dir: "schemathesis",
    packages: &["schemathesis==4.32.5"],
};

/// How long making a virtualenv may take (pip downloads).
const INSTALL_LIMIT: Duration = Duration::from_secs(600);

static MADE: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());

/// The py-spiffe virtualenv's `python`, made first if needed.
pub fn python() -> Result<PathBuf> {
    venv_python(&PYSPIFFE)
}

/// `venv`'s `python`, made first if needed; its other programs are beside it.
pub fn venv_python(venv: &Venv) -> Result<PathBuf> {
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = made.iter().find(|(d, _)| *d == venv.dir) {
        return Ok(p.clone());
    }
    let p = make_venv(venv)?;
    made.push((venv.dir, p.clone()));
    Ok(p)
}

fn make_venv(venv: &Venv) -> Result<PathBuf> {
    let marker_text = venv.packages.join("\n");
    let target = target_dir();
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let dir = target.join(venv.dir);
    let python = dir.join("bin").join("python");
    let marker = dir.join(".kmesh-packages");
    let ready = || std::fs::read_to_string(&marker).ok().as_deref() == Some(&marker_text);
    if ready() {
        return Ok(python);
    }
    let lock_path = target.join(format!("{}.install.lock", venv.dir));
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
    let mut make = Command::new("python3");
    make.args(["-m", "venv"]).arg(&dir);
    let out = run_bounded(make, INSTALL_LIMIT)?;
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
    .args(venv.packages);
    let out = run_bounded(pip, INSTALL_LIMIT)?;
    if out.code != Some(0) {
        let _ = std::fs::remove_dir_all(&dir);
        bail!(
            "`pip install {}` into {} failed ({:?}): {}",
            venv.packages.join(" "),
            dir.display(),
            out.code,
            out.text().trim()
        );
    }
    std::fs::write(&marker, &marker_text)
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
