//! libfaketime (Debian's `faketime` package), which shifts one process's wall clock: what a test
//! of clock skew puts in a binary's environment ([`env`]) to run it days ahead or minutes behind
//! the rest of the machine. Only the wall clock moves (`FAKETIME_DONT_FAKE_MONOTONIC`): timers and
//! timeouts run as usual. `./scripts/test` installs the package when it is missing and it can;
//! without it, [`env`] says None and the tests that need it print SKIPPED.

use std::path::PathBuf;

/// Where libfaketime may be: `$FAKETIME_LIB`, else Debian's and Fedora's paths.
fn candidates() -> Vec<PathBuf> {
    let mut c: Vec<PathBuf> = std::env::var_os("FAKETIME_LIB")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    for dir in [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib64/faketime",
        "/usr/lib/faketime",
    ] {
        c.push(PathBuf::from(dir).join("libfaketime.so.1"));
    }
    c
}

/// The library, when installed.
pub fn library() -> Option<PathBuf> {
    candidates().into_iter().find(|p| p.is_file())
}

/// The environment that runs a process with its wall clock shifted by `offset` (libfaketime's
/// relative syntax: `+2d`, `-5m`, `+50s`, `+1h`); None when libfaketime is not installed.
pub fn env(offset: &str) -> Option<Vec<(String, String)>> {
    let lib = library()?;
    Some(vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        ("FAKETIME".into(), offset.to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_shifted_process_sees_the_shifted_clock() {
        let Some(env) = super::env("+2d") else {
            eprintln!("SKIPPED: libfaketime is not installed");
            return;
        };
        let out = std::process::Command::new("date")
            .arg("+%s")
            .envs(env)
            .output()
            .unwrap();
        let shifted: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let now = common::clock::now_unix();
        assert!(
            (shifted - now - 2 * 86_400).abs() < 60,
            "{shifted} vs {now}"
        );
    }
}
