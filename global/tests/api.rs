//! The HTTP API of a real global server (in-process, port 0): refusals of invalid Meshes with the
//! field named and nothing stored, the admin token, dry runs, builtin CA generation, secrets never
//! shown, and persistence across a restart.

mod support;

use support::TestGlobal;

/// A Mesh document with `mtls` replaced by the given YAML (indented under `mtls:`).
fn mesh_with(name: &str, mtls: &str) -> String {
    format!("type: Mesh\nname: {name}\nmtls:\n{mtls}")
}

fn vault_backend(extra: &str) -> String {
    format!(
        r#"  enabledBackend: vault-1
  backends:
  - name: vault-1
    type: vault
    dpCert:
      rotation:
        expiration: 24h
    conf:
      fromCp:
{extra}"#
    )
}

const GOOD_FROM_CP: &str = r#"        address: http://127.0.0.1:1
        pki: kmesh-pki-default
        role: dataplane-proxies
        auth:
          token:
            inlineString: t
"#;

/// (description, body, expected field path)
fn invalid_meshes() -> Vec<(&'static str, String, &'static str)> {
    let v = |s: &str| mesh_with("default", &vault_backend(s));
    vec![
        (
            "bad mesh name",
            "type: Mesh\nname: Bad_Name\n".into(),
            "name",
        ),
        (
            "name too long",
            format!("type: Mesh\nname: {}\n", "a".repeat(64)),
            "name",
        ),
        (
            "unknown top-level field",
            "type: Mesh\nname: default\nmtlss: {}\n".into(),
            "mtlss",
        ),
        (
            "mtls wrong type",
            "type: Mesh\nname: default\nmtls: 5\n".into(),
            "mtls",
        ),
        (
            "enabledBackend names nothing",
            mesh_with(
                "default",
                "  enabledBackend: nope\n  backends:\n  - name: ca-1\n    type: builtin\n",
            ),
            "mtls.enabledBackend",
        ),
        (
            "duplicate backend names",
            mesh_with(
                "default",
                "  backends:\n  - name: ca-1\n    type: builtin\n  - name: ca-1\n    type: builtin\n",
            ),
            "mtls.backends[1].name",
        ),
        (
            "unknown backend type",
            mesh_with("default", "  backends:\n  - name: ca-1\n    type: magic\n"),
            "mtls.backends[0].type",
        ),
        (
            "bad backend name",
            mesh_with(
                "default",
                "  backends:\n  - name: CA_1\n    type: builtin\n",
            ),
            "mtls.backends[0].name",
        ),
        (
            "bad expiration",
            mesh_with(
                "default",
                "  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 24 hours\n",
            ),
            "mtls.backends[0].dpCert.rotation.expiration",
        ),
        (
            "zero expiration",
            mesh_with(
                "default",
                "  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 0s\n",
            ),
            "mtls.backends[0].dpCert.rotation.expiration",
        ),
        (
            "builtin RSAbits",
            mesh_with(
                "default",
                "  backends:\n  - name: ca-1\n    type: builtin\n    conf:\n      caCert:\n        RSAbits: 1000\n",
            ),
            "mtls.backends[0].conf.caCert.RSAbits",
        ),
        (
            "builtin unknown conf field",
            mesh_with(
                "default",
                "  backends:\n  - name: ca-1\n    type: builtin\n    conf:\n      bogus: 1\n",
            ),
            "mtls.backends[0].conf.bogus",
        ),
        (
            "provided without key",
            mesh_with(
                "default",
                "  backends:\n  - name: ca-1\n    type: provided\n    conf:\n      cert:\n        inlineString: x\n",
            ),
            "mtls.backends[0].conf.key",
        ),
        (
            "provided missing secret",
            mesh_with(
                "default",
                "  backends:\n  - name: ca-1\n    type: provided\n    conf:\n      cert:\n        secret: nope\n      key:\n        secret: nope2\n",
            ),
            "mtls.backends[0].conf.cert.secret",
        ),
        (
            "vault without fromCp",
            mesh_with(
                "default",
                "  backends:\n  - name: v\n    type: vault\n    conf: {}\n",
            ),
            "mtls.backends[0].conf.fromCp",
        ),
        (
            "vault without address",
            v(
                "        pki: p\n        role: r\n        auth:\n          token:\n            inlineString: t\n",
            ),
            "mtls.backends[0].conf.fromCp.address",
        ),
        (
            "vault address not a URL",
            v(
                "        address: not a url\n        pki: p\n        role: r\n        auth:\n          token:\n            inlineString: t\n",
            ),
            "mtls.backends[0].conf.fromCp.address",
        ),
        (
            "vault address typo vault.8200",
            v(
                "        address: https://vault.8200\n        pki: p\n        role: r\n        tls:\n          skipVerify: true\n        auth:\n          token:\n            inlineString: t\n",
            ),
            "mtls.backends[0].conf.fromCp.address",
        ),
        (
            "vault without pki",
            v(
                "        address: http://127.0.0.1:8200\n        role: r\n        auth:\n          token:\n            inlineString: t\n",
            ),
            "mtls.backends[0].conf.fromCp.pki",
        ),
        (
            "vault without role",
            v(
                "        address: http://127.0.0.1:8200\n        pki: p\n        auth:\n          token:\n            inlineString: t\n",
            ),
            "mtls.backends[0].conf.fromCp.role",
        ),
        (
            "vault without auth",
            v("        address: http://127.0.0.1:8200\n        pki: p\n        role: r\n"),
            "mtls.backends[0].conf.fromCp.auth",
        ),
        (
            "vault both auth methods",
            v(
                "        address: http://127.0.0.1:8200\n        pki: p\n        role: r\n        auth:\n          token:\n            inlineString: t\n          tls:\n            clientKey:\n              inlineString: k\n            clientCert:\n              inlineString: c\n",
            ),
            "mtls.backends[0].conf.fromCp.auth",
        ),
        (
            "vault tls auth without clientCert",
            v(
                "        address: http://127.0.0.1:8200\n        pki: p\n        role: r\n        auth:\n          tls:\n            clientKey:\n              inlineString: k\n",
            ),
            "mtls.backends[0].conf.fromCp.auth.tls.clientCert",
        ),
        (
            "vault https without caCert",
            v(
                "        address: https://127.0.0.1:8200\n        pki: p\n        role: r\n        auth:\n          token:\n            inlineString: t\n",
            ),
            "mtls.backends[0].conf.fromCp.tls.caCert",
        ),
        (
            "vault token secret missing",
            v(
                "        address: http://127.0.0.1:8200\n        pki: p\n        role: r\n        auth:\n          token:\n            secret: token-1\n",
            ),
            "mtls.backends[0].conf.fromCp.auth.token.secret",
        ),
        (
            "data source with two fields",
            v(
                "        address: http://127.0.0.1:8200\n        pki: p\n        role: r\n        auth:\n          token:\n            inlineString: t\n            file: /tmp/t\n",
            ),
            "mtls.backends[0].conf.fromCp.auth.token",
        ),
        (
            "data source bad base64",
            v(
                "        address: http://127.0.0.1:8200\n        pki: p\n        role: r\n        auth:\n          token:\n            inline: '%%%'\n",
            ),
            "mtls.backends[0].conf.fromCp.auth.token.inline",
        ),
        (
            "relative file path",
            v(
                "        address: http://127.0.0.1:8200\n        pki: p\n        role: r\n        auth:\n          token:\n            file: token.txt\n",
            ),
            "mtls.backends[0].conf.fromCp.auth.token.file",
        ),
        (
            "bad commonName template",
            v(&format!(
                "{GOOD_FROM_CP}        commonName: '{{{{ nope \"x\" }}}}'\n"
            )),
            "mtls.backends[0].conf.fromCp.commonName",
        ),
        (
            "unterminated template",
            v(&format!(
                "{GOOD_FROM_CP}        commonName: '{{{{ tag \"x\"'\n"
            )),
            "mtls.backends[0].conf.fromCp.commonName",
        ),
        (
            "unknown fromCp field",
            v(&format!("{GOOD_FROM_CP}        adress: x\n")),
            "mtls.backends[0].conf.fromCp.adress",
        ),
        (
            "pki with slash",
            v(
                "        address: http://127.0.0.1:8200\n        pki: /p/\n        role: r\n        auth:\n          token:\n            inlineString: t\n",
            ),
            "mtls.backends[0].conf.fromCp.pki",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_mesh_is_refused_with_its_field_and_nothing_is_stored() {
    let g = TestGlobal::start().await;
    let cases = invalid_meshes();
    assert!(cases.len() >= 25);
    for (what, body, field) in &cases {
        let name = body
            .lines()
            .find_map(|l| l.strip_prefix("name: "))
            .unwrap_or("default")
            .to_string();
        let (status, v) = g.put(&format!("/meshes/{name}"), body).await;
        assert_eq!(status, 400, "{what}: expected 400, got {status}: {v}");
        let params = v["invalid_parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no invalid_parameters in {v}"));
        assert!(
            params.iter().any(|p| p["field"] == *field),
            "{what}: expected field {field:?} in {params:?}"
        );
        for p in params {
            assert!(
                !p["reason"].as_str().unwrap().is_empty(),
                "{what}: empty reason"
            );
        }
        assert_eq!(v["status"], 400);
        assert!(
            v["title"].is_string() && v["detail"].is_string(),
            "{what}: error body {v}"
        );
    }
    assert_eq!(g.mesh_count().await, 0, "a refused mesh was stored");
    let (_, secrets) = g.get("/meshes/default/secrets").await;
    assert_eq!(secrets["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_secrets_need_the_admin_token() {
    let g = TestGlobal::start().await;
    let url = &g.url;
    let body = "type: Mesh\nname: default\n";
    // No token.
    let r = g
        .http
        .put(format!("{url}/meshes/default"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], 401);
    // Wrong token.
    let r = g
        .http
        .put(format!("{url}/meshes/default"))
        .bearer_auth("wrong")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(g.mesh_count().await, 0);
    // With the token it works; reads of meshes are open on loopback, secrets are not.
    assert_eq!(g.put("/meshes/default", body).await.0, 201);
    let r = g.http.get(format!("{url}/meshes")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = g
        .http
        .get(format!("{url}/meshes/default/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = g
        .http
        .delete(format!("{url}/meshes/default"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(g.mesh_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_mesh_gets_a_ca_secret_data_is_never_shown_and_everything_survives_restart() {
    let g = TestGlobal::start().await;
    let body = mesh_with(
        "default",
        "  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
    );
    let (status, v) = g.put("/meshes/default", &body).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["result"], "created");
    // Same body again: 200, unchanged, and the CA is not regenerated.
    let (status, v) = g.put("/meshes/default", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], "unchanged");
    let (_, secrets) = g.get("/meshes/default/secrets").await;
    let names: Vec<&str> = secrets["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "default.ca-builtin-cert-ca-1",
            "default.ca-builtin-key-ca-1"
        ]
    );
    for s in secrets["items"].as_array().unwrap() {
        assert!(s.get("data").is_none(), "secret data shown: {s}");
    }
    let (status, key) = g
        .get("/meshes/default/secrets/default.ca-builtin-key-ca-1")
        .await;
    assert_eq!(status, 200);
    assert!(key.get("data").is_none());
    assert!(!key.to_string().contains("PRIVATE"));
    // The CA secret is in use: deleting it is refused.
    let (status, v) = g
        .delete("/meshes/default/secrets/default.ca-builtin-key-ca-1")
        .await;
    assert_eq!(status, 409, "{v}");
    // A plain secret: created, readable without data.
    let secret = "type: Secret\nname: sec-1\nmesh: default\ndata: aGVsbG8=\n";
    assert_eq!(g.put("/meshes/default/secrets/sec-1", secret).await.0, 201);
    let (_, s) = g.get("/meshes/default/secrets/sec-1").await;
    assert!(s.get("data").is_none() && !s.to_string().contains("aGVsbG8="));

    // Restart: everything is still there.
    let dir = g.stop().await;
    let g = TestGlobal::start_in(dir).await;
    assert_eq!(g.mesh_count().await, 1);
    let (_, secrets) = g.get("/meshes/default/secrets").await;
    assert_eq!(secrets["total"], 3);
    // Deleting the mesh deletes what is in it.
    let (status, _) = g.delete("/meshes/default").await;
    assert_eq!(status, 200);
    assert_eq!(g.mesh_count().await, 0);
    let (_, secrets) = g.get("/meshes/default/secrets").await;
    assert_eq!(secrets["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_store_nothing() {
    let g = TestGlobal::start().await;
    let body = mesh_with(
        "default",
        "  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
    );
    let (status, v) = g.put("/meshes/default?dryRun=true", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], "valid");
    assert_eq!(v["dryRun"], true);
    let batch = format!("{body}\n---\ntype: Mesh\nname: other\n");
    let (status, v) = g.post("/apply?dryRun=true", &batch).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    // An invalid dry run is refused like a real one.
    let (status, _) = g
        .put(
            "/meshes/default?dryRun=true",
            "type: Mesh\nname: default\nmtls: {enabledBackend: x}\n",
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(g.mesh_count().await, 0);
    let (_, secrets) = g.get("/meshes/default/secrets").await;
    assert_eq!(secrets["total"], 0, "a dry run stored the builtin CA");
    // The CLI's dry run too.
    let f = support::write_file(g.dir.path(), "m.yaml", &batch);
    let out = g.cli(&["apply", "--dry-run", "-f", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", testkit::proc::stderr(&out));
    assert!(testkit::proc::stdout(&out).contains("nothing was stored"));
    assert_eq!(g.mesh_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_apply_is_all_or_nothing_and_body_must_match_path() {
    let g = TestGlobal::start().await;
    let batch = "type: Mesh\nname: m1\n---\ntype: Mesh\nname: m2\nmtls:\n  enabledBackend: nope\n";
    let (status, v) = g.post("/apply", batch).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(
        g.mesh_count().await,
        0,
        "half of a refused batch was stored"
    );
    let (status, v) = g.put("/meshes/m1", "type: Mesh\nname: m2\n").await;
    assert_eq!(status, 400);
    assert_eq!(v["invalid_parameters"][0]["field"], "name");
    // A secret whose mesh does not exist is refused.
    let (status, v) = g
        .put(
            "/meshes/ghost/secrets/s",
            "type: Secret\nname: s\nmesh: ghost\ndata: aGk=\n",
        )
        .await;
    assert_eq!(status, 400, "{v}");
    // Mesh and its secret in one batch work.
    let (status, v) = g
        .post(
            "/apply",
            "type: Secret\nname: s\nmesh: m1\ndata: aGk=\n---\ntype: Mesh\nname: m1\n",
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(g.mesh_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_garbage_bodies_get_the_error_body() {
    let g = TestGlobal::start().await;
    let huge = format!(
        "type: Mesh\nname: default\nlabels:\n  a: \"{}\"\n",
        "x".repeat(5 * 1024 * 1024)
    );
    // The server answers 413 once it has read past the limit and closes the connection without
    // reading the rest (as HTTP allows); a client that only reads after writing everything may
    // see the close instead of the answer, so read the answer while the body is being written.
    let (status, v) = raw_put(&g, "/meshes/default", huge.into_bytes()).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["status"], 413);
    let (status, v) = g.put("/meshes/default", "{{{{ not yaml").await;
    assert_eq!(status, 400, "{v}");
    assert!(v["detail"].is_string());
    let (status, _) = g.get("/nope").await;
    assert_eq!(status, 404);
    assert_eq!(g.mesh_count().await, 0);
    let r = g
        .http
        .get(format!("{}/metrics", g.url))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("kmesh_http_request_duration_seconds_count"),
        "{text}"
    );
    assert!(text.contains("kmesh_admissions_total"), "{text}");
}

/// Sends a PUT over a raw connection, writing in a task while reading the answer.
async fn raw_put(g: &TestGlobal, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = g.url.trim_start_matches("http://").to_string();
    let conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/yaml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        g.token,
        body.len()
    );
    let writer = tokio::spawn(async move {
        // The server may close before all is written: that is the point.
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&body).await;
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        rd.read_to_end(&mut answer),
    )
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // The body may be chunked: take the JSON object inside it.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b > a => serde_json::from_str(&body[a..=b]).unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    (status, json)
}

/// Admission runs outside the admission lock (optimistic): a Secret admitted while its Mesh is
/// deleted must be admitted again and refused, never stored without its Mesh. Raced many times;
/// the metric must show that re-admissions happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_never_leave_a_secret_without_its_mesh() {
    let g = std::sync::Arc::new(TestGlobal::start().await);
    for round in 0..30 {
        let (status, v) = g.put("/meshes/race", "type: Mesh\nname: race\n").await;
        assert!(status == 200 || status == 201, "{v}");
        let mut tasks = Vec::new();
        for i in 0..16 {
            let gi = g.clone();
            tasks.push(tokio::spawn(async move {
                let g = gi;
                let body = format!("type: Secret\nname: s{round}-{i}\nmesh: race\ndata: aGk=\n");
                g.put(&format!("/meshes/race/secrets/s{round}-{i}"), &body)
                    .await
            }));
            if i == 8 {
                let g = g.clone();
                tasks.push(tokio::spawn(async move { g.delete("/meshes/race").await }));
            }
        }
        for t in tasks {
            let (status, v) = t.await.unwrap();
            assert!(
                matches!(status, 200 | 201 | 400),
                "unexpected answer {status}: {v}"
            );
        }
        let (status, _) = g.get("/meshes/race").await;
        assert_eq!(status, 404, "round {round}: the Mesh survived its delete");
        let (_, secrets) = g.get("/meshes/race/secrets").await;
        let n = secrets["items"].as_array().map_or(0, |a| a.len());
        assert_eq!(
            n, 0,
            "round {round}: Secrets stored without their Mesh: {secrets}"
        );
    }
    let metrics = g
        .http
        .get(format!("{}/metrics", g.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The race really happened: some admissions found what they read changed and ran again
    // (otherwise this test would prove nothing about the optimistic path).
    let retries: f64 = metrics
        .lines()
        .find(|l| l.starts_with("kmesh_admission_retries_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .expect("kmesh_admission_retries_total in /metrics");
    eprintln!("re-admissions: {retries}");
    assert!(
        retries > 0.0,
        "no admission overlapped a delete in 30 rounds"
    );
}
