//! Sets `KMESH_COMMIT` to the git commit the build is made from (`git rev-parse --short HEAD`),
//! `unknown` outside a git checkout (a source tarball) or without git: what `--version`, the first
//! log line and `GET /` report. Cargo runs this again when HEAD moves (a checkout) or the branch
//! HEAD points to gets a new commit, and only then.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KMESH_COMMIT={commit}");
    // `--git-path` finds the files of a linked worktree too (HEAD in its own directory, the
    // branch's ref in the common one).
    // (Only files that exist: Cargo reruns a script on every build for a missing one.)
    let mut watched = vec!["HEAD".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
        // A branch whose ref was packed lives in packed-refs until its next commit.
        watched.push("packed-refs".into());
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]).map(|p| absolute(&p))
            && path.is_file()
        {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// `git rev-parse --git-path` answers relative to the current directory (the crate's) in a plain
/// checkout.
fn absolute(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}
