//! What an operator meets running `zone`, with the real binaries: Kuma's defaults (API on
//! 127.0.0.1:5681, proxies on 5678); `zone run`'s flags from `KMESH_ZONE_*` variables and
//! `--config FILE` (every flag; a zone started from a file and a variable syncs with a real
//! global and logs JSON lines), an unknown key refused with exit 2; help text and `-m` on every
//! flag; `--version` with the commit; completion scripts; a port in use is exit 1 naming it.
//! `zone proxy`'s flags likewise from `KMESH_PROXY_*` variables and its own `--config FILE` (a
//! proxy set up only so gets its certificate).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testkit::bins::binary;
use testkit::cli_tree::default_of;
use testkit::cluster::{GlobalProc, ZoneProc, builtin_mesh_yaml};
use testkit::proc::{CmdOutput, Proc, free_port, run_bounded};

/// `zone ARGS` with the variables `env` (and none of the caller's `KMESH_*` or `RUST_LOG`).
fn zone(args: &[&str], env: &[(&str, &str)]) -> CmdOutput {
    let mut cmd = Command::new(binary("zone").unwrap());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("KMESH_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    run_bounded(cmd, Duration::from_secs(60)).unwrap()
}

#[test]
fn defaults_are_kumas_zone_control_plane() {
    let cmd = zone::cli::command();
    assert_eq!(
        default_of(&cmd, &["run"], "api-addr").as_deref(),
        Some("127.0.0.1:5681")
    );
    assert_eq!(
        default_of(&cmd, &["run"], "dp-addr").as_deref(),
        Some("127.0.0.1:5678")
    );
    assert_eq!(
        default_of(&cmd, &["proxy"], "zone-address").as_deref(),
        Some("grpcs://127.0.0.1:5678")
    );
    assert_eq!(
        default_of(&cmd, &["get"], "api").as_deref(),
        Some("http://127.0.0.1:5681")
    );
}

#[test]
fn every_flag_and_command_has_help_and_mesh_has_m() {
    let cmd = zone::cli::command();
    let missing = testkit::cli_tree::missing_help(&cmd);
    assert!(missing.is_empty(), "without help text: {missing:#?}");
    let no_m = testkit::cli_tree::mesh_without_m(&cmd);
    assert!(no_m.is_empty(), "--mesh without -m: {no_m:#?}");
}

#[test]
fn every_run_flag_is_settable_by_its_variable_and_the_config_file() {
    let flags = testkit::cli_tree::assert_run_flags_settable::<zone::cli::Cli>(
        &zone::cli::command(),
        &zone::cli::SOURCES,
    );
    for f in [
        "name",
        "global-address",
        "dp-addr",
        "data-source-dir",
        "log-format",
    ] {
        assert!(flags.iter().any(|g| g == f), "{f} not among {flags:?}");
    }
}

#[test]
fn every_proxy_flag_is_settable_by_its_variable_and_the_config_file() {
    let flags = testkit::cli_tree::assert_run_flags_settable::<zone::cli::Cli>(
        &zone::cli::command(),
        &zone::cli::PROXY_SOURCES,
    );
    for f in ["zone-address", "token-file", "mesh", "name", "workload-api"] {
        assert!(flags.iter().any(|g| g == f), "{f} not among {flags:?}");
    }
    let help = zone(&["proxy", "--help"], &[]);
    assert!(
        help.stdout.contains("[env: KMESH_PROXY_TOKEN_FILE]"),
        "{}",
        help.stdout
    );
}

/// A proxy set up as a sidecar's environment sets it: the zone's address, its CA and the token
/// from `KMESH_PROXY_*` variables, the rest from the file `KMESH_PROXY_CONFIG` names; a flag on
/// the command line still beats both. It registers and gets its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_from_its_variables_and_config_file_gets_its_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let global = GlobalProc::start(&root.join("global")).await.unwrap();
    global
        .apply(&builtin_mesh_yaml("default", "1h"))
        .await
        .unwrap();
    let token = global.cli_zone_token_file("zone-1", root).unwrap();
    let zone = ZoneProc::start("zone-1", &global, &token, &root.join("zone-1"))
        .await
        .unwrap();
    zone.wait_synced(&["default"], Duration::from_secs(20))
        .await
        .unwrap();
    let dp_token = global
        .cli_dataplane_token_file("default", "web-1", root)
        .unwrap();
    let out = root.join("out");
    let config = root.join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "mesh: default\nname: web-1\nservice: web\ntag: [\"version=v1\"]\nout-dir: {}\nexec-timeout: 5s\n",
            out.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(binary("zone").unwrap());
    cmd.args(["proxy", "--name", "web-1"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("KMESH_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("KMESH_PROXY_ZONE_ADDRESS", zone.dp_address())
        .env("KMESH_PROXY_ZONE_CA_FILE", zone.dp_ca_file())
        .env("KMESH_PROXY_TOKEN_FILE", &dp_token)
        .env("KMESH_PROXY_CONFIG", &config)
        // The command line's --name beats the variable's.
        .env("KMESH_PROXY_NAME", "not-web-1");
    let mut proc = Proc::spawn("proxy", cmd, root.join("proxy.log")).unwrap();
    let mut leaf = None;
    for _ in 0..400 {
        if let Ok(id) = testkit::certs::ProxyIdentity::read(&out) {
            leaf = Some(id);
            break;
        }
        assert!(
            proc.is_running(),
            "the proxy exited:\n{}",
            proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leaf = leaf.unwrap_or_else(|| panic!("no certificate:\n{}", proc.log_tail(30)));
    assert!(
        leaf.leaf.uri_sans.iter().any(|u| u.contains("web")),
        "{:?}",
        leaf.leaf.uri_sans
    );
    let dataplanes = zone.api.get_ok("/dataplanes").await.unwrap().to_string();
    assert!(dataplanes.contains("\"web-1\""), "{dataplanes}");
    assert!(
        dataplanes.contains("version"),
        "the file's tag: {dataplanes}"
    );
    proc.terminate(root);
}

#[test]
fn version_completion_and_refused_keys() {
    let out = zone(&["--version"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(
        out.stdout
            .starts_with(&format!("zone {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{}",
        out.stdout
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = zone(&["completion", shell], &[]);
        assert_eq!(out.code, Some(0), "{shell}: {}", out.text());
        for word in ["proxy", "dp-addr", "global-address", "log-level"] {
            assert!(out.stdout.contains(word), "{shell}: no {word}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zone.yaml");
    std::fs::write(&file, "name: z1\nglobal-adress: grpcs://127.0.0.1:5685\n").unwrap();
    let out = zone(&["run", "--config", &file.display().to_string()], &[]);
    assert_eq!(out.code, Some(2), "{}", out.text());
    assert!(
        out.stderr.contains(&file.display().to_string())
            && out.stderr.contains("unknown key \"global-adress\""),
        "{}",
        out.stderr
    );
}

async fn wait_healthy(proc: &mut Proc, port: u16) {
    for _ in 0..600 {
        let ok = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return;
        }
        assert!(proc.is_running(), "zone exited:\n{}", proc.log_tail(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("zone did not answer on {port}:\n{}", proc.log_tail(30));
}

fn write_config(dir: &Path, global: &GlobalProc, token: &Path, api: u16, dp: &str) -> String {
    let file = dir.join("zone.yaml");
    std::fs::write(
        &file,
        format!(
            "name: zone-cfg\nglobal-address: [\"{}\"]\nglobal-ca-file: {}\ntoken-file: {}\ndata-dir: {}\napi-addr: 127.0.0.1:{api}\ndp-addr: {dp}\nbreaker-threshold: 3\nrotation-fraction: 0.7\n",
            global.kds_address(),
            global.ca_file().display(),
            token.display(),
            dir.join("data").display(),
        ),
    )
    .unwrap();
    file.display().to_string()
}

/// A zone whose every setting comes from its config file, the log format from a variable:
/// it syncs with a real global, serves on the file's addresses and logs JSON lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_from_its_config_file_syncs_and_logs_json() {
    let tmp = tempfile::tempdir().unwrap();
    let global = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    global.apply("type: Mesh\nname: cfg\n").await.unwrap();
    let dir = tmp.path().join("zone");
    std::fs::create_dir_all(&dir).unwrap();
    let token = global.cli_zone_token_file("zone-cfg", &dir).unwrap();
    let api = free_port();
    let config = write_config(
        &dir,
        &global,
        &token,
        api,
        &format!("127.0.0.1:{}", free_port()),
    );

    let mut cmd = Command::new(binary("zone").unwrap());
    cmd.args(["run", "--config", &config])
        .env_remove("RUST_LOG")
        .env("KMESH_ZONE_LOG_FORMAT", "json");
    let mut proc = Proc::spawn("zone", cmd, dir.join("zone.log")).unwrap();
    wait_healthy(&mut proc, api).await;
    let base = format!("http://127.0.0.1:{api}");
    let mut synced = false;
    for _ in 0..400 {
        let status: Value = match reqwest::get(format!("{base}/status")).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let meshes: Value = match reqwest::get(format!("{base}/meshes")).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if status["global"]["connected"] == true && meshes.to_string().contains("\"cfg\"") {
            synced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(synced, "{}", proc.log_tail(30));
    assert_eq!(
        global.zone("zone-cfg").await.unwrap()["online"],
        true,
        "global sees the zone"
    );
    proc.terminate(&dir);
    let text = std::fs::read_to_string(dir.join("zone.log")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(l[field].is_string(), "{field} missing in {l}");
        }
    }
    assert!(
        lines[0]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("zone {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{}",
        lines[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_exit_1_naming_the_address() {
    let tmp = tempfile::tempdir().unwrap();
    let global = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    let dir = tmp.path().join("zone");
    std::fs::create_dir_all(&dir).unwrap();
    let token = global.cli_zone_token_file("zone-busy", &dir).unwrap();
    let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let config = write_config(&dir, &global, &token, free_port(), &addr);
    let out = zone(&["run", "--config", &config], &[]);
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(
        out.stderr.contains(&format!(
            "cannot listen on {addr}: address already in use (--dp-addr)"
        )),
        "{}",
        out.stderr
    );
    let out = zone(
        &[
            "run",
            "--config",
            &config,
            "--dp-addr",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[("KMESH_ZONE_API_ADDR", &addr)],
    );
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(
        out.stderr.contains(&format!(
            "cannot listen on {addr}: address already in use (--api-addr)"
        )),
        "{}",
        out.stderr
    );
}
