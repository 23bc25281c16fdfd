//! Dataplanes at global, end to end with the real binaries on loopback (the multi-process harness
//! is shared with `zone/tests/proxy.rs`) and a real OpenBao set up with the reference page's steps:
//!
//! - `global dataplane-token` needs the admin token, checks its flags (exit 2) and prints a token
//!   bound to the mesh and the dataplane name.
//! - A zone that cannot use the mesh's vault conf is shown failing at global, with the reason,
//!   while the other zone is ok. The conf reads the Vault token from a `file:` that only exists on
//!   "zone 1's host": every process runs in its own working directory and the path is
//!   `/proc/self/cwd/vault-token`, an absolute path that, like a path on separate hosts, names a
//!   different file for each control plane (global and zone 1 have one, zone 2 has none).
//! - `GET /meshes/{mesh}/dataplanes` and `global get dataplanes` list every zone's dataplanes
//!   with their zone, tags and certificate.
//! - Vault stopped: the proxies keep their certificates on disk, and global shows the zone's
//!   Vault unreachable with the reason.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use testkit::bins::binary;
use testkit::cluster::*;
use testkit::openssl::openssl_verify;
use testkit::proc::output_text;
use testkit::wait::{WAIT, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_token_needs_the_admin_token_and_binds_mesh_and_name() {
    let tmp = tempfile::tempdir().unwrap();
    let global = GlobalProc::start_in(&tmp.path().join("global"), "info")
        .await
        .unwrap();

    let out = global
        .cli_env(&[
            "dataplane-token",
            "--mesh",
            "default",
            "--name",
            "web-1",
            "--valid-for",
            "1h",
        ])
        .unwrap();
    // The service the proxy may register is required (or --any-service).
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("--service"),
        "{}",
        output_text(&out)
    );
    let out = global
        .cli_env(&[
            "dataplane-token",
            "--mesh",
            "default",
            "--name",
            "web-1",
            "--service",
            "web",
            "--tag",
            "version=v1",
            "--valid-for",
            "1h",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = token.trim().split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["scope"], "dataplane");
    assert_eq!(claims["mesh"], "default");
    assert_eq!(claims["name"], "web-1");
    assert_eq!(claims["service"], "web");
    assert_eq!(claims["tags"]["version"], "v1");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );

    // Without the admin token: refused by global (exit 1).
    let out = std::process::Command::new(binary("global").unwrap())
        .args(["dataplane-token", "--mesh", "default", "--name", "web-1"])
        .args(["--service", "web", "--api", &global.url("")])
        .env_remove("GLOBAL_ADMIN_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("admin token"),
        "{}",
        output_text(&out)
    );
    // Bad flags: usage errors (exit 2), nothing asked.
    for args in [
        &["--mesh", "Bad_Mesh", "--name", "web-1", "--service", "web"][..],
        &["--mesh", "default", "--name", "", "--service", "web"],
        &[
            "--mesh",
            "default",
            "--name",
            "web-1",
            "--service",
            "web",
            "--valid-for",
            "soon",
        ],
        &["--mesh", "default", "--service", "web"],
        &["--mesh", "default", "--name", "web-1", "--service", "a/b"],
        &[
            "--mesh",
            "default",
            "--name",
            "web-1",
            "--service",
            "web",
            "--any-service",
        ],
        &[
            "--mesh",
            "default",
            "--name",
            "web-1",
            "--service",
            "web",
            "--tag",
            "kuma.io/zone=z",
        ],
    ] {
        let mut all = vec!["dataplane-token"];
        all.extend_from_slice(args);
        let out = global.cli_env(&all).unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            output_text(&out)
        );
    }
    // The API names the bad field.
    let resp = reqwest::Client::new()
        .post(global.url("/tokens/dataplane"))
        .bearer_auth(&global.token)
        .json(&serde_json::json!({"mesh": "default", "name": "Web 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["invalid_parameters"][0]["field"], "name", "{body}");
}

/// The Vault check entry of `zone` for mesh default, backend vault-1, as global shows it; `None`
/// also while global does not know the zone yet (a zone answers its health check before its
/// first stream is up, so a poll may come first).
async fn vault_entry(global: &GlobalProc, zone: &str) -> Option<Value> {
    let z = global.zone(zone).await.ok()?;
    z["vault"]
        .as_array()?
        .iter()
        .find(|c| c["mesh"] == "default" && c["backend"] == "vault-1")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_that_cannot_use_the_vault_conf_is_shown_failing_and_a_vault_outage_keeps_certificates()
 {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut vault = Vault::start(false, true).await.unwrap();
    // Where each control plane runs: the token file exists for global and zone 1 only.
    let cwd = |name: &str, with_token: bool| {
        let dir = root.join(format!("{name}-host"));
        std::fs::create_dir_all(&dir).unwrap();
        if with_token {
            std::fs::write(dir.join("vault-token"), &vault.token).unwrap();
        }
        dir
    };
    let (global_cwd, z1_cwd, z2_cwd) = (
        cwd("global", true),
        cwd("zone-1", true),
        cwd("zone-2", false),
    );
    // Each control plane reads `file:` sources only under its --data-source-dir: its host dir.
    let allow =
        |dir: &std::path::Path| vec!["--data-source-dir".to_string(), dir.display().to_string()];
    let global = GlobalProc::start_with(
        &root.join("global"),
        GlobalOptions::in_dir(&global_cwd, "info").args(
            &allow(&global_cwd)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ),
    )
    .await
    .unwrap();
    global
        .apply(&vault_mesh(
            &vault.server.addr(),
            "1h",
            "file: /proc/self/cwd/vault-token",
        ))
        .await
        .unwrap();
    let z1 = ZoneProc::start_minted(
        "zone-1",
        &global,
        &root.join("zone-1"),
        ZoneOptions::in_dir(&z1_cwd, "info,zone::dp=debug").args(
            &allow(&z1_cwd)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ),
    )
    .await
    .unwrap();
    let z2 = ZoneProc::start_minted(
        "zone-2",
        &global,
        &root.join("zone-2"),
        ZoneOptions::in_dir(&z2_cwd, "info,zone::dp=debug").args(
            &allow(&z2_cwd)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ),
    )
    .await
    .unwrap();

    let ok = wait_for("zone-1's Vault check to pass", root, || async {
        vault_entry(&global, "zone-1")
            .await
            .filter(|c| c["ok"] == true)
    })
    .await;
    assert_eq!(ok["type"], "vault", "{ok}");
    let failing = wait_for("zone-2's Vault check to fail", root, || async {
        vault_entry(&global, "zone-2")
            .await
            .filter(|c| c["ok"] == false && c["checkedAt"].is_string())
    })
    .await;
    let reason = failing["error"].as_str().unwrap();
    eprintln!("zone-2's Vault check: {reason}");
    assert!(
        reason.contains("/proc/self/cwd/vault-token"),
        "the reason names the file: {reason}"
    );
    let out = global.cli_env(&["get", "zones"]).unwrap();
    let table = output_text(&out);
    assert!(out.status.success(), "{table}");
    let line = |zone: &str| {
        table
            .lines()
            .find(|l| l.starts_with(zone))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("zone-1").contains("default/vault-1=ok"), "{table}");
    assert!(line("zone-2").contains("default/vault-1=FAILED"), "{table}");

    // Proxies: zone 1's gets a certificate, zone 2's cannot.
    let proxy = |zone: &ZoneProc, name: &str, service: &str| {
        ProxyProc::start(
            zone,
            &ProxySpec::new("default", name, service)
                .tag("team", "a")
                .rust_log("info,zone::agent=debug"),
            &global
                .cli_dataplane_token_file("default", name, root)
                .unwrap(),
            &root.join(name),
        )
        .unwrap()
    };
    let web = proxy(&z1, "web-1", "web");
    let backend = proxy(&z2, "backend-1", "backend");
    let web_leaf = web.wait_leaf(root, None, WAIT).await.unwrap();
    let items = wait_for("global to list both dataplanes", root, || async {
        let (_, body) = global.api.get("/meshes/default/dataplanes").await.unwrap();
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let web_ok = items
            .iter()
            .any(|d| d["name"] == "web-1" && d["certificate"]["serial"].is_string());
        (items.len() == 2 && web_ok).then_some(items)
    })
    .await;
    let web_dp = items.iter().find(|d| d["name"] == "web-1").unwrap();
    assert_eq!(web_dp["zone"], "zone-1");
    assert_eq!(web_dp["connected"], true);
    assert_eq!(web_dp["networking"]["inbound"][0]["tags"]["team"], "a");
    assert_eq!(
        web_dp["networking"]["inbound"][0]["tags"]["kuma.io/service"],
        "web"
    );
    assert_eq!(web_dp["certificate"]["backend"], "vault-1");
    assert!(web_dp["certificate"]["expiration"].is_string());
    let backend_dp = items.iter().find(|d| d["name"] == "backend-1").unwrap();
    assert_eq!(backend_dp["zone"], "zone-2");
    assert_eq!(backend_dp["certificate"], Value::Null, "{backend_dp}");
    assert!(!backend.file("cert.pem").exists());
    let out = global
        .cli_env(&["get", "dataplanes", "--mesh", "default"])
        .unwrap();
    let table = output_text(&out);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("ZONE") && table.contains("web-1") && table.contains("zone-2"),
        "{table}"
    );
    let zone_2_view = z2.dataplanes().await.unwrap();
    assert!(
        zone_2_view[0]["lastError"].is_string(),
        "zone-2 says why backend-1 has no certificate: {zone_2_view:?}"
    );

    // Vault goes away: certificates stay on disk; zone 1 notices on its next issuance and
    // global shows it unreachable, with the reason.
    vault.server.stop();
    let cert_before = std::fs::read(web.file("cert.pem")).unwrap();
    let _web2 = proxy(&z1, "web-2", "web");
    let down = wait_for("global to show zone-1's Vault failing", root, || async {
        vault_entry(&global, "zone-1")
            .await
            .filter(|c| c["ok"] == false)
    })
    .await;
    let reason = down["error"].as_str().unwrap().to_lowercase();
    eprintln!("zone-1's Vault check with Vault stopped: {reason}");
    assert!(
        reason.contains("connect") || reason.contains("unreachable") || reason.contains("refused"),
        "the reason says Vault cannot be reached: {reason}"
    );
    let out = global.cli_env(&["get", "zones"]).unwrap();
    assert!(
        output_text(&out)
            .lines()
            .any(|l| l.starts_with("zone-1") && l.contains("FAILED")),
        "{}",
        output_text(&out)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(std::fs::read(web.file("cert.pem")).unwrap(), cert_before);
    assert_eq!(web.leaf().unwrap().serial, web_leaf.serial);
    let out = openssl_verify(&web.file("ca.pem"), &web.file("cert.pem")).unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    eprintln!("whole test: {:?}", started.elapsed());
}
