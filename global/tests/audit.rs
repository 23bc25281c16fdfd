//! The audit log with the real binary: every request that changes something, or tried to, is one
//! JSON line of `<data-dir>/audit.log` with the actor, the source, the method and path, the query
//! and the status; reads are not; Secret data never appears in it, raw or base64.

use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use testkit::cluster::{GlobalProc, builtin_mesh_yaml};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_and_attempt_is_one_line_and_no_secret_is_in_it() {
    let tmp = tempfile::tempdir().unwrap();
    let global = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    global
        .apply(&builtin_mesh_yaml("default", "24h"))
        .await
        .unwrap();
    let value = "audit-canary-7d1f0b2c-do-not-log";
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    let secret = format!("type: Secret\nname: canary\nmesh: default\ndata: {b64}\n");
    global
        .put("/meshes/default/secrets/canary", &secret)
        .await
        .unwrap();
    let _ = global.api.get_ok("/meshes/default/secrets/canary").await;
    let (status, _) = global
        .api
        .send(
            reqwest::Method::PUT,
            "/meshes/default/secrets/canary?dryRun=true",
            &secret,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    global.zone_token_file("zone-1", tmp.path()).await.unwrap();
    global
        .delete("/meshes/default/secrets/canary")
        .await
        .unwrap();
    // Without the token: refused, and audited as such.
    let anonymous = reqwest::Client::new()
        .put(global.url("/meshes/default/secrets/canary"))
        .header("content-type", "application/yaml")
        .body(secret.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    let path = global.dir.join("audit.log");
    let mut lines: Vec<Value> = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen: Vec<(String, String, u64, String)> = lines
        .iter()
        .map(|l| {
            (
                l["method"].as_str().unwrap().to_string(),
                l["path"].as_str().unwrap().to_string(),
                l["status"].as_u64().unwrap(),
                l["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = [
        ("POST", "/apply", 200, "admin"),
        ("PUT", "/meshes/default/secrets/canary", 201, "admin"),
        ("PUT", "/meshes/default/secrets/canary", 200, "admin"),
        ("POST", "/tokens/zone", 200, "admin"),
        ("DELETE", "/meshes/default/secrets/canary", 200, "admin"),
        ("PUT", "/meshes/default/secrets/canary", 401, "anonymous"),
    ];
    let expect: Vec<(String, String, u64, String)> = expect
        .iter()
        .map(|(m, p, s, a)| (m.to_string(), p.to_string(), *s, a.to_string()))
        .collect();
    assert_eq!(seen, expect, "{lines:#?}");
    assert_eq!(lines[2]["query"], "dryRun=true");
    assert_eq!(lines[1]["action"], "write");
    assert_eq!(lines[1]["resource"]["kind"], "Secret");
    assert_eq!(lines[1]["resource"]["name"], "canary");
    assert_eq!(lines[3]["action"], "zone-token");
    assert_eq!(lines[4]["action"], "delete");
    assert_eq!(lines[5]["result"], "refused");
    assert!(
        lines
            .iter()
            .all(|l| l["source"].as_str().unwrap().starts_with("127.0.0.1:"))
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(value) && !text.contains(&b64),
        "Secret data in the audit log"
    );
    let token = std::fs::read_to_string(global.admin_token_file()).unwrap();
    assert!(
        !text.contains(token.trim()),
        "the admin token in the audit log"
    );
    // Failed authentications are counted, and said once per source and minute.
    for _ in 0..5 {
        let r = reqwest::Client::new()
            .delete(global.url("/meshes/default"))
            .header("authorization", "Bearer wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    let metrics = global.api.get_text("/metrics").await.unwrap();
    assert_eq!(
        testkit::api::metric_sum(&metrics, "kmesh_api_auth_failures"),
        6.0
    );
    let log = std::fs::read_to_string(global.dir.join("global.log")).unwrap();
    assert_eq!(
        log.matches("without a valid token refused").count(),
        1,
        "{log}"
    );
}
