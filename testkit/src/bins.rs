//! Where the workspace is and its binaries: the workspace root (the only place
//! `CARGO_MANIFEST_DIR` is compiled in, and only into the test kit), the target directory, and
//! [`binary`], the path of the `global` or `zone` binary of the running profile, built first by
//! asking cargo (a no-op when up to date) so that no test or scenario runs stale binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Result, bail};

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

/// The directory holding this executable's sibling binaries (`target/<profile>/`; a test
/// executable lives in `target/<profile>/deps/`).
fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .map(|p| {
            if p.ends_with("deps") {
                p.parent().map(Path::to_path_buf).unwrap_or(p)
            } else {
                p
            }
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a workspace binary (`global`, `zone`) of the same profile as this executable. The first
/// call in a process runs `cargo build -p global -p zone` (a no-op when they are up to date; a
/// test target only gets its own package's binaries built), so nothing runs stale binaries; when
/// cargo is not available, existing binaries are used.
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = bin_dir();
    let path = dir.join(name);
    let built = BUILT.get_or_init(|| {
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "global", "-p", "zone"])
            .current_dir(workspace_root());
        if !dir.join("global").exists() || !dir.join("zone").exists() {
            eprintln!(
                "building the global and zone binaries (the first time takes a few minutes)..."
            );
        } else {
            cmd.arg("--quiet");
        }
        if release {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build of global and zone failed: {s}")),
            Err(e) => Err(format!("cannot run cargo to build global and zone: {e}")),
        }
        .inspect_err(|e| eprintln!("warning: {e}; using the binaries already built"))
    });
    if let Err(e) = built
        && !path.exists()
    {
        bail!("{e}");
    }
    if !path.exists() {
        bail!("no {name} binary at {}", path.display());
    }
    Ok(path)
}
