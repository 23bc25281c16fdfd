//! The `zone` binary on its own: flag errors exit 2 before anything starts; without a reachable
//! global it still serves its API, reports the failure at `/status`, retries with backoff and
//! logs the failure once, and stops cleanly on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::proc::free_port;

fn zone() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zone"))
}

#[test]
fn flag_errors_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let base = |extra: &[&str]| {
        let mut c = zone();
        c.args(["run", "--name", "z1", "--data-dir"])
            .arg(dir.path())
            .arg("--token-file")
            .arg(&token)
            .args(["--api-addr", "127.0.0.1:0"])
            .args(extra);
        c.output().unwrap()
    };
    // No way to trust global's certificate.
    let out = base(&["--global-address", "grpcs://127.0.0.1:5685"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--global-ca-file"));
    // Plain text is refused.
    let out = base(&[
        "--global-address",
        "http://127.0.0.1:5685",
        "--insecure-skip-verify",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("grpcs://"));
    // A duration that does not parse names its flag.
    let out = base(&[
        "--global-address",
        "grpcs://127.0.0.1:5685",
        "--insecure-skip-verify",
        "--trust-grace",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trust-grace"));
    // The issuance tuning is checked, each bad value naming its flag.
    for (flag, value, says) in [
        ("--rotation-fraction", "1.5", "above 0 and below 1"),
        ("--rotation-fraction", "0", "above 0 and below 1"),
        ("--breaker-cooldown", "0s", "more than 0s"),
        ("--breaker-cooldown", "later", "--breaker-cooldown"),
        (
            "--backoff-max",
            "100ms",
            "must not be below --backoff-initial",
        ),
        ("--breaker-threshold", "0", "at least 1"),
    ] {
        let out = base(&[
            "--global-address",
            "grpcs://127.0.0.1:5685",
            "--insecure-skip-verify",
            flag,
            value,
        ]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag} {value}: {err}"
        );
    }
    // Every one of several global addresses is checked, and a bad one is named.
    for extra in [
        &[
            "--global-address",
            "grpcs://127.0.0.1:5685",
            "--global-address",
            "grpcs://replica-2",
        ][..],
        &[
            "--global-address",
            "grpcs://127.0.0.1:5685,grpcs://replica-2",
        ][..],
    ] {
        let out = base(&[extra, &["--insecure-skip-verify"]].concat());
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("\"grpcs://replica-2\"") && err.contains("port"),
            "{err}"
        );
    }
    let out = base(&[
        "--global-address",
        "grpcs://127.0.0.1:5685,grpcs://127.0.0.1:5685",
        "--insecure-skip-verify",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("given twice"));
    // Missing required flag (clap).
    let out = zone().args(["run", "--name", "z1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

async fn get(url: &str) -> Option<(u16, serde_json::Value)> {
    let resp = reqwest::get(url).await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
}

#[tokio::test]
async fn without_global_it_serves_reports_and_logs_once() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "not-a-real-token").unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "").unwrap();
    let api = free_port();
    let log = dir.path().join("zone.log");
    let mut child = zone()
        .args(["run", "--name", "lonely"])
        .args([
            "--global-address",
            &format!("grpcs://127.0.0.1:{}", free_port()),
        ])
        .arg("--global-ca-file")
        .arg(&ca)
        .arg("--token-file")
        .arg(&token)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--api-addr", &format!("127.0.0.1:{api}")])
        .args(["--dp-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info,zone=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{api}");
    let start = Instant::now();
    // Serves at once, reports the failure, and keeps retrying.
    let status = loop {
        if let Some((200, s)) = get(&format!("{base}/status")).await
            && s["global"]["lastError"].is_string()
            && s["global"]["connected"] == false
        {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no status");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(status["zone"], "lonely");
    assert_eq!(status["types"]["Mesh"]["count"], 0);
    assert_eq!(get(&format!("{base}/readyz")).await.unwrap().0, 200);
    assert_eq!(get(&format!("{base}/meshes")).await.unwrap().1["total"], 0);
    let (code, body) = get(&format!("{base}/meshes/nope")).await.unwrap();
    assert_eq!(code, 404, "{body}");
    // zone get meshes|status, as a table, YAML and JSON.
    let cli = |args: &[&str]| {
        let out = zone()
            .arg("get")
            .args(args)
            .args(["--api", &base])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = cli(&["status"]);
    assert!(
        table.contains("lonely") && table.contains("disconnected"),
        "{table}"
    );
    assert!(table.contains("Mesh resources held"), "{table}");
    let yaml = cli(&["status", "-o", "yaml"]);
    assert!(yaml.contains("zone: lonely"), "{yaml}");
    let json: serde_json::Value = serde_json::from_str(&cli(&["status", "-o", "json"])).unwrap();
    assert_eq!(json["zone"], "lonely");
    let meshes = cli(&["meshes"]);
    assert!(
        meshes.starts_with("NAME") && meshes.contains("ENABLED BACKEND"),
        "{meshes}"
    );
    // Two retries at least (first within a second, then within two more).
    let metrics_url = format!("{base}/metrics");
    loop {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|l| {
            l.starts_with("kmesh_sync_reconnects_total ")
                && !l.ends_with(" 0")
                && !l.ends_with(" 1")
        }) {
            assert!(text.contains("kmesh_sync_connected 0"), "{text}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no retries: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "no exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log.matches("cannot sync with global").count(), 1, "{log}");
    assert!(log.contains("retry failed the same way"), "{log}");
    // The proxy identity service was served, with a generated certificate whose CA is kept.
    assert!(log.contains("--zone-ca-file"), "{log}");
    assert!(dir.path().join("data/dp-ca.pem").exists());
}
