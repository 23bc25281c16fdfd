//! What the command lines of both control planes share: the exit codes of SPEC.md, the version
//! and commit they report (`--version`, the first log line), listening on an operator's address
//! (an address in use is said with the address, exit 1) and the start of the process (the TLS
//! crypto provider, the tokio runtime). Logs are `logging`'s, the `run` flags' other sources
//! (variables, `--config`) `config`'s.

use std::process::ExitCode;

/// Exit codes of SPEC.md.
pub mod exit {
    pub const OK: u8 = 0;
    pub const REFUSED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
}

/// The release (the workspace's version).
pub const PACKAGE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binaries were built from (`git rev-parse --short HEAD` by the build
/// script), `unknown` when built outside git.
pub const COMMIT: &str = env!("KMESH_COMMIT");

/// What `--version` prints after the binary's name: `0.1.0 (commit 1a2b3c4)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KMESH_COMMIT"),
    ")"
);

/// Logs to stderr as text at `info` (`RUST_LOG` when set); what commands without log flags use.
pub fn init_tracing() {
    crate::logging::init(
        &std::env::args().next().unwrap_or_default(),
        &crate::logging::LogArgs::default(),
    );
}

/// Why a listener could not be opened, with the exit code it ends the process with.
#[derive(Debug)]
pub struct ListenError {
    pub code: u8,
    pub message: String,
}

/// Binds `addr` (given by the operator with `flag`). An address in use, not on this host or not
/// allowed is a refusal (exit 1) naming the address; an address that does not parse or resolve
/// is a usage error (exit 2).
pub async fn listen(addr: &str, flag: &str) -> Result<tokio::net::TcpListener, ListenError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| listen_error(addr, flag, &e))
}

/// The message and exit code of a failed bind of `addr` (`flag`).
pub fn listen_error(addr: &str, flag: &str, e: &std::io::Error) -> ListenError {
    use std::io::ErrorKind;
    let (code, reason) = match e.kind() {
        ErrorKind::AddrInUse => (exit::REFUSED, "address already in use".to_string()),
        ErrorKind::PermissionDenied => (exit::REFUSED, "permission denied".to_string()),
        ErrorKind::AddrNotAvailable => (
            exit::REFUSED,
            "address not available on this host".to_string(),
        ),
        _ => (exit::USAGE, e.to_string()),
    };
    ListenError {
        code,
        message: format!("cannot listen on {addr}: {reason} ({flag})"),
    }
}

/// Writes `bytes` (a completion script, a whole document) to stdout: a reader that went away (a
/// closed pipe, `| head`) ends the command quietly, any other failure is said (exit 1).
pub fn print_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            ExitCode::from(exit::REFUSED)
        }
    }
}

/// Installs the process's TLS crypto provider and starts the runtime; on failure, says why on
/// stderr and returns the exit code to end with.
pub fn start() -> Result<tokio::runtime::Runtime, ExitCode> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("error: cannot start the runtime: {e}");
        ExitCode::from(exit::REFUSED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_in_use_is_a_refusal_naming_it() {
        let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = held.local_addr().unwrap().to_string();
        let e = listen(&addr, "--api-addr").await.unwrap_err();
        assert_eq!(e.code, exit::REFUSED);
        assert_eq!(
            e.message,
            format!("cannot listen on {addr}: address already in use (--api-addr)")
        );
        let e = listen("not an address", "--api-addr").await.unwrap_err();
        assert_eq!(e.code, exit::USAGE, "{}", e.message);
        assert!(e.message.contains("not an address"), "{}", e.message);
    }

    #[test]
    fn the_version_names_the_commit() {
        assert!(VERSION.starts_with(PACKAGE_VERSION));
        assert!(VERSION.contains(&format!("(commit {COMMIT})")));
        assert!(!COMMIT.is_empty());
    }
}
