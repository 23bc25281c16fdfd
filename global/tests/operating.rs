//! What an operator meets running `global`, with the real binary: `run`'s flags from
//! `KMESH_GLOBAL_*` variables and `--config FILE` (every flag, and a flag beating the variable
//! beating the file on a running global's API address), an unknown key or a bad value refused
//! with exit 2 naming it; logs as JSON lines or plain text without escape codes when written to
//! a file, the first line naming the version and commit, `--log-level` and `RUST_LOG`;
//! `--version` with the commit; help text on every flag and command; completion scripts for
//! bash, zsh and fish; a port in use is exit 1 naming the address; `apply -f DIR` and `-m`; the
//! spinner of `validate` on a terminal only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testkit::bins::binary;
use testkit::cluster::{GlobalOptions, GlobalProc, run_global};
use testkit::proc::{CmdOutput, Proc, free_port, run_bounded};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `global ARGS` with the variables `env` (and no `KMESH_GLOBAL_*` or `RUST_LOG` of the caller's).
fn global(args: &[&str], env: &[(&str, &str)]) -> CmdOutput {
    let mut cmd = Command::new(binary("global").unwrap());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("KMESH_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    run_bounded(cmd, Duration::from_secs(60)).unwrap()
}

/// Does something answer `GET /healthz` on `port`?
async fn healthy(port: u16) -> bool {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// `global run ARGS` with `env`, logging to `<dir>/global.log`, until it answers on `port`
/// (panics with the log otherwise).
async fn run_until_healthy(dir: &Path, args: &[&str], env: &[(&str, &str)], port: u16) -> Proc {
    let mut cmd = Command::new(binary("global").unwrap());
    cmd.arg("run").args(args).env_remove("RUST_LOG");
    cmd.envs(env.iter().copied());
    let mut proc = Proc::spawn("global", cmd, dir.join("global.log")).unwrap();
    for _ in 0..300 {
        if healthy(port).await {
            return proc;
        }
        assert!(proc.is_running(), "global exited:\n{}", proc.log_tail(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("global did not answer on {port}:\n{}", proc.log_tail(30));
}

#[test]
fn every_flag_and_command_has_help() {
    let missing = testkit::cli_tree::missing_help(&global::cli::command());
    assert!(missing.is_empty(), "without help text: {missing:#?}");
    let no_m = testkit::cli_tree::mesh_without_m(&global::cli::command());
    assert!(no_m.is_empty(), "--mesh without -m: {no_m:#?}");
}

#[test]
fn every_run_flag_is_settable_by_its_variable_and_the_config_file() {
    let flags = testkit::cli_tree::assert_run_flags_settable::<global::cli::Cli>(
        &global::cli::command(),
        &global::cli::SOURCES,
    );
    for f in [
        "data-dir",
        "api-addr",
        "store",
        "api-host",
        "log-level",
        "log-format",
    ] {
        assert!(flags.iter().any(|g| g == f), "{f} not among {flags:?}");
    }
}

/// The API address from the file, then from the variable over the file, then from the flag
/// over both: each time global answers there and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_variable_and_flag_on_a_running_global() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (by_file, by_var, by_flag) = (free_port(), free_port(), free_port());
    let config = write(
        dir,
        "global.yaml",
        &format!(
            "# global's settings\ndata-dir: {}\napi-addr: 127.0.0.1:{by_file}\napi-tls-addr: 127.0.0.1:{}\nkds-addr: \"127.0.0.1:{}\"\napi-host: [cp.example.com, cp2.example.com]\nvault-timeout: 5s\nlog-level: info\n",
            dir.join("data").display(),
            free_port(),
            free_port()
        ),
    );
    let config_arg = config.display().to_string();
    let var = format!("127.0.0.1:{by_var}");

    let mut g = run_until_healthy(dir, &["--config", &config_arg], &[], by_file).await;
    assert!(!healthy(by_var).await && !healthy(by_flag).await);
    // A list in the file: both names served.
    let status = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{by_file}/healthz"))
        .header("host", "cp2.example.com")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    g.stop(Duration::from_secs(10));

    // The file named by its variable, the address by another.
    let mut g = run_until_healthy(
        dir,
        &[],
        &[
            ("KMESH_GLOBAL_CONFIG", &config_arg),
            ("KMESH_GLOBAL_API_ADDR", &var),
        ],
        by_var,
    )
    .await;
    assert!(!healthy(by_file).await && !healthy(by_flag).await);
    g.stop(Duration::from_secs(10));

    let mut g = run_until_healthy(
        dir,
        &[
            "--config",
            &config_arg,
            "--api-addr",
            &format!("127.0.0.1:{by_flag}"),
        ],
        &[("KMESH_GLOBAL_API_ADDR", &var)],
        by_flag,
    )
    .await;
    assert!(!healthy(by_file).await && !healthy(by_var).await);
    g.stop(Duration::from_secs(10));
    // The same data directory every time: the file's.
    assert!(dir.join("data").join("admin-token").is_file());
}

#[test]
fn an_unknown_key_or_a_bad_value_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = format!("data-dir: {}\n", dir.join("data").display());
    for (text, says) in [
        ("api-adress: 127.0.0.1:1\n", "unknown key \"api-adress\""),
        (
            "vault-timeout: [1s, 2s]\n",
            "key \"vault-timeout\": expected one value, found a list",
        ),
        (
            "api-insecure-http: sometimes\n",
            "key \"api-insecure-http\": expected true or false",
        ),
        (
            "log-level: loud\n",
            "key \"log-level\": invalid value 'loud'",
        ),
        (
            "store: mysql://x\n",
            "key \"store\": invalid value 'mysql://x'",
        ),
    ] {
        let file = write(dir, "bad.yaml", &format!("{data}{text}"));
        let out = global(&["run", "--config", &file.display().to_string()], &[]);
        assert_eq!(out.code, Some(2), "{text}: {}", out.text());
        assert!(
            out.stderr.contains(&file.display().to_string()) && out.stderr.contains(says),
            "{text}: {}",
            out.stderr
        );
    }
    let out = global(
        &["run", "--data-dir", &dir.join("data").display().to_string()],
        &[("KMESH_GLOBAL_LOG_FORMAT", "xml")],
    );
    assert_eq!(out.code, Some(2), "{}", out.text());
    assert!(
        out.stderr.contains("KMESH_GLOBAL_LOG_FORMAT") && out.stderr.contains("'xml'"),
        "{}",
        out.stderr
    );
    // Nothing was started: no data directory.
    assert!(!dir.join("data").exists());
}

fn head_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(testkit::bins::workspace_root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn version_names_the_commit() {
    let out = global(&["--version"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.text());
    let line = out.stdout.trim();
    let commit = line
        .strip_prefix(&format!("global {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line}"));
    match head_commit() {
        Some(head) => assert!(
            head.starts_with(commit) && commit.len() >= 7,
            "{commit} vs {head}"
        ),
        None => assert_eq!(commit, "unknown"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_objects_and_text_logs_in_a_file_have_no_escape_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let version = global(&["--version"], &[]).stdout;
    let commit = version
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string();

    let json_dir = tmp.path().join("json");
    let mut g = GlobalProc::start_with(
        &json_dir,
        GlobalOptions::default().rust_log("").args(&[
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ]),
    )
    .await
    .unwrap();
    g.apply("type: Mesh\nname: logged\n").await.unwrap();
    g.terminate();
    let text = std::fs::read_to_string(json_dir.join("global.log")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() > 3, "{text}");
    for l in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(l[field].is_string(), "{field} missing in {l}");
        }
    }
    assert!(
        lines[0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("(commit {commit})")),
        "{}",
        lines[0]
    );
    assert_eq!(lines[0]["commit"], commit.as_str());
    assert!(lines.iter().any(|l| l["level"] == "DEBUG"), "{text}");

    // Text to a file: no colour codes. RUST_LOG, when set, is the filter over --log-level.
    let text_dir = tmp.path().join("text");
    let mut g = GlobalProc::start_with(
        &text_dir,
        GlobalOptions::default()
            .rust_log("info")
            .args(&["--log-level", "trace"]),
    )
    .await
    .unwrap();
    g.apply("type: Mesh\nname: logged\n").await.unwrap();
    g.terminate();
    let text = std::fs::read_to_string(text_dir.join("global.log")).unwrap();
    assert!(!text.contains('\u{1b}'), "escape codes in {text}");
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains("INFO")
            && first.contains(&format!("global {}", env!("CARGO_PKG_VERSION")))
            && first.contains(&format!("(commit {commit})")),
        "{first}"
    );
    assert!(!text.contains("DEBUG") && !text.contains("TRACE"), "{text}");
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = global(&["completion", shell], &[]);
        assert_eq!(out.code, Some(0), "{shell}: {}", out.text());
        for word in ["apply", "validate", "api-addr", "log-format", "completion"] {
            assert!(
                out.stdout.contains(word),
                "{shell}: no {word} in\n{}",
                out.stdout
            );
        }
        // The shell itself reads the script without a syntax error, where it is installed.
        let check = Command::new(shell)
            .arg("-n")
            .arg("-c")
            .arg(&out.stdout)
            .output();
        match check {
            Ok(o) => assert!(
                o.status.success(),
                "{shell} -n: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(_) => eprintln!("SKIPPED: {shell} is not installed to check its script"),
        }
    }
    let out = global(&["completion", "tcsh"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_exit_1_naming_the_address() {
    let tmp = tempfile::tempdir().unwrap();
    let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = held.local_addr().unwrap().to_string();
    for flag in ["--api-addr", "--api-tls-addr", "--kds-addr"] {
        let mut args = vec![
            "run".to_string(),
            "--data-dir".into(),
            tmp.path().join("data").display().to_string(),
        ];
        for other in ["--api-addr", "--api-tls-addr", "--kds-addr"] {
            args.push(other.into());
            args.push(if other == flag {
                addr.clone()
            } else {
                format!("127.0.0.1:{}", free_port())
            });
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = global(&args, &[]);
        assert_eq!(out.code, Some(1), "{flag}: {}", out.text());
        assert!(
            out.stderr.contains(&format!(
                "cannot listen on {addr}: address already in use ({flag})"
            )),
            "{flag}: {}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_takes_a_directory_and_m_is_short_for_mesh() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    let res = tmp.path().join("resources");
    std::fs::create_dir(&res).unwrap();
    write(&res, "10-mesh.yaml", "type: Mesh\nname: dir-a\n");
    write(
        &res,
        "20-secret.yml",
        "type: Secret\nname: s1\nmesh: dir-a\ndata: aGVsbG8=\n",
    );
    write(&res, "30-mesh.json", r#"{"type": "Mesh", "name": "dir-b"}"#);
    write(&res, "notes.txt", "not a resource: {");
    let out = g.cli(&["apply", "-f", &res.display().to_string()]).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.text());
    let out = g.cli(&["get", "meshes", "-o", "json"]).unwrap();
    assert!(
        out.stdout.contains("dir-a") && out.stdout.contains("dir-b"),
        "{}",
        out.text()
    );
    let out = g.cli(&["get", "secrets", "-m", "dir-a"]).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(out.stdout.contains("s1"), "{}", out.text());
    let out = g.cli(&["delete", "secret", "s1", "-m", "dir-a"]).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.text());
    // An empty directory is a usage error.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = g
        .cli(&["apply", "-f", &empty.display().to_string()])
        .unwrap();
    assert_eq!(out.code, Some(2), "{}", out.text());
    assert!(
        out.stderr.contains("no .yaml, .yml or .json file"),
        "{}",
        out.text()
    );
}

/// `validate` of a vault backend whose Vault accepts connections and never answers: on a
/// terminal (a pty from `script`) a spinner says what it waits for; piped, stderr holds the
/// report's error alone, no spinner and no escape code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_says_what_it_waits_for_on_a_terminal_only() {
    let tmp = tempfile::tempdir().unwrap();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accept and hold connections without a word.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mesh = write(
        tmp.path(),
        "mesh.yaml",
        &format!(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: vault-1\n  backends:\n  - name: vault-1\n    type: vault\n    conf:\n      fromCp:\n        address: http://127.0.0.1:{port}\n        pki: pki\n        role: role\n        auth:\n          token:\n            inlineString: not-a-real-token\n"
        ),
    );
    let args = [
        "validate".to_string(),
        "-f".into(),
        mesh.display().to_string(),
        "--vault-timeout".into(),
        "2s".into(),
    ];
    let waits = format!(
        "waiting for Vault: a test certificate for default/vault-1 (http://127.0.0.1:{port})"
    );

    let piped = run_global(&args, Duration::from_secs(60)).unwrap();
    assert_eq!(piped.code, Some(3), "{}", piped.text());
    assert!(
        !piped.stderr.contains("waiting for Vault"),
        "{}",
        piped.stderr
    );
    assert!(!piped.text().contains('\u{1b}'), "{}", piped.text());

    let line = format!("{} {}", binary("global").unwrap().display(), args.join(" "));
    let mut cmd = Command::new("script");
    cmd.args(["-qefc", &line, "/dev/null"]);
    let tty = run_bounded(cmd, Duration::from_secs(60)).unwrap();
    assert!(tty.stdout.contains(&waits), "{}", tty.text());
    holder.abort();
}
