//! Hostile input: a committed table of malformed and hostile requests sent, as raw bytes, to the
//! real `global` binary. Each must get a 4xx with the error body of SPEC.md (naming the field where
//! one is at fault), nothing may panic (the server keeps answering and its log has no "panicked"),
//! and the store must be exactly as it was before the table.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::cluster::GlobalProc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One raw HTTP/1.1 request; returns (status, JSON body or Null).
pub async fn raw_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) and close before reading everything: ignore write errors.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    /// Accepted statuses.
    status: &'static [u16],
    /// A field that must be named in `invalid_parameters[].field` (exact or prefix match).
    field: Option<&'static str>,
}

fn case(
    what: &'static str,
    path: &str,
    body: impl Into<Vec<u8>>,
    field: Option<&'static str>,
) -> Case {
    Case {
        what,
        method: "PUT",
        path: path.to_string(),
        content_type: "application/yaml",
        body: body.into(),
        status: &[400],
        field,
    }
}

fn apply(what: &'static str, body: impl Into<Vec<u8>>, field: Option<&'static str>) -> Case {
    Case {
        method: "POST",
        ..case(what, "/apply", body, field)
    }
}

const VAULT_PREFIX: &str = "type: Mesh\nname: m1\nmtls:\n  enabledBackend: v\n  backends:\n  - name: v\n    type: vault\n    dpCert:\n      rotation:\n        expiration: 24h\n    conf:\n      fromCp:\n        address: http://127.0.0.1:1\n        pki: p\n        role: r\n        auth:\n          token:\n            inlineString: t\n";

fn vault_cn(cn: &str) -> String {
    format!(
        "{VAULT_PREFIX}        commonName: '{}'\n",
        cn.replace('\'', "''")
    )
}

fn cases() -> Vec<Case> {
    let deep_block = {
        let mut s = String::from("type: Mesh\nname: m1\nlabels:\n");
        for i in 0..200 {
            s.push_str(&format!("{}k{i}:\n", "  ".repeat(i + 1)));
        }
        s
    };
    let deep_flow = format!(
        "type: Mesh\nname: m1\nlabels: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let deep_json = format!(
        "{{\"type\":\"Mesh\",\"name\":\"m1\",\"labels\":{}1{}}}",
        "{\"a\":".repeat(5000),
        "}".repeat(5000)
    );
    let deep_tag = {
        let mut t = "\"kuma.io/service\"".to_string();
        for _ in 0..200 {
            t = format!("(tag {t})");
        }
        format!("{{{{ tag {t} }}}}")
    };
    let laughs = {
        let mut s = String::from(
            "type: Mesh\nname: m1\nlabels:\n  a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for i in 1..10 {
            let p = i - 1;
            s.push_str(&format!(
                "  a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
            ));
        }
        s
    };
    let mut bad_utf8 = b"type: Mesh\nname: m1\nlabels:\n  a: \"".to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    bad_utf8.extend_from_slice(b"\"\n");
    let mut bad_utf8_name = b"type: Mesh\nname: m\xc0\xaf1\n".to_vec();
    bad_utf8_name.push(b'\n');
    let mut nul = b"type: Mesh\nname: m1\x00\n".to_vec();
    nul.push(b'\n');
    let ten_mb = format!(
        "type: Mesh\nname: m1\nlabels:\n  a: \"{}\"\n",
        "x".repeat(10 * 1024 * 1024)
    );
    let secret = |name: &str, data: &str| {
        format!("type: Secret\nmesh: default\nname: {name}\ndata: {data}\n")
    };
    let s = "/meshes/default/secrets/s2";

    vec![
        // ---- structure ----
        case("deep YAML block nesting", "/meshes/m1", deep_block, None),
        case(
            "deep YAML flow nesting (100k brackets)",
            "/meshes/m1",
            deep_flow,
            None,
        ),
        Case {
            content_type: "application/json",
            ..case("deep JSON nesting", "/meshes/m1", deep_json, None)
        },
        apply(
            "deep flow nesting in a batch",
            format!(
                "type: Mesh\nname: m1\nlabels: {}\n",
                "{a: ".repeat(300) + &"}".repeat(300)
            ),
            None,
        ),
        case(
            "billion laughs (anchors and aliases)",
            "/meshes/m1",
            laughs,
            None,
        ),
        case(
            "alias to an undefined anchor",
            "/meshes/m1",
            "type: Mesh\nname: *nope\n",
            None,
        ),
        case(
            "duplicate keys",
            "/meshes/m1",
            "type: Mesh\nname: m1\nname: m2\n",
            None,
        ),
        case(
            "duplicate nested keys",
            "/meshes/m1",
            "type: Mesh\nname: m1\nlabels:\n  a: x\n  a: y\n",
            None,
        ),
        case(
            "multi-document body on a single PUT",
            "/meshes/m1",
            "type: Mesh\nname: m1\n---\ntype: Mesh\nname: m2\n",
            None,
        ),
        case("empty body", "/meshes/m1", "", None),
        case("only a document separator", "/meshes/m1", "---\n", None),
        case(
            "YAML syntax error",
            "/meshes/m1",
            "type: Mesh\nname: [m1\n",
            None,
        ),
        case("a scalar document", "/meshes/m1", "42\n", None),
        case(
            "a list document",
            "/meshes/m1",
            "- type: Mesh\n- name: m1\n",
            None,
        ),
        case("null document", "/meshes/m1", "null\n", None),
        // ---- sizes ----
        Case {
            status: &[413],
            ..case("10 MB body", "/meshes/m1", ten_mb.clone(), None)
        },
        Case {
            status: &[413],
            ..apply("10 MB body on /apply", ten_mb, None)
        },
        case(
            "huge name (1 MB)",
            "/meshes/m1",
            format!("type: Mesh\nname: {}\n", "a".repeat(1 << 20)),
            Some("name"),
        ),
        Case {
            content_type: "application/json",
            ..case(
                "huge label key",
                "/meshes/m1",
                format!(
                    "{{\"type\":\"Mesh\",\"name\":\"m1\",\"labels\":{{\"{}\":\"x\"}}}}",
                    "k".repeat(100_000)
                ),
                Some("labels"),
            )
        },
        case(
            "huge YAML implicit key",
            "/meshes/m1",
            format!(
                "type: Mesh\nname: m1\nlabels:\n  {}: x\n",
                "k".repeat(100_000)
            ),
            None,
        ),
        case(
            "huge label value",
            "/meshes/m1",
            format!(
                "type: Mesh\nname: m1\nlabels:\n  k: {}\n",
                "v".repeat(100_000)
            ),
            Some("labels"),
        ),
        case(
            "huge secret name in the body",
            s,
            secret(&"s".repeat(100_000), "YQ=="),
            Some("name"),
        ),
        // ---- encoding ----
        case("bad UTF-8 in a label", "/meshes/m1", bad_utf8.clone(), None),
        case(
            "overlong UTF-8 in the name",
            "/meshes/m1",
            bad_utf8_name,
            None,
        ),
        apply("bad UTF-8 in a batch", bad_utf8, None),
        case("NUL byte in the name", "/meshes/m1", nul, None),
        case(
            "bad base64 in Secret data",
            s,
            secret("s2", "not*base64!!"),
            Some("data"),
        ),
        case(
            "base64 with bad padding",
            s,
            secret("s2", "YWJj="),
            Some("data"),
        ),
        case(
            "Secret data of the wrong type",
            s,
            secret("s2", "{a: 1}"),
            Some("data"),
        ),
        case(
            "Secret data missing",
            s,
            "type: Secret\nmesh: default\nname: s2\n",
            Some("data"),
        ),
        // ---- template injection in commonName ----
        case(
            "commonName {{ . }}",
            "/meshes/m1",
            vault_cn("{{ . }}"),
            Some("mtls.backends[0].conf.fromCp.commonName"),
        ),
        case(
            "commonName {{ printf }}",
            "/meshes/m1",
            vault_cn("{{ printf \"%s\" \"x\" }}"),
            Some("mtls.backends[0].conf.fromCp.commonName"),
        ),
        case(
            "commonName {{ .Env }}",
            "/meshes/m1",
            vault_cn("{{ .Env.VAULT_TOKEN }}"),
            Some("mtls.backends[0].conf.fromCp.commonName"),
        ),
        case(
            "commonName deep tag nesting",
            "/meshes/m1",
            vault_cn(&deep_tag),
            Some("mtls.backends[0].conf.fromCp.commonName"),
        ),
        case(
            "commonName very long",
            "/meshes/m1",
            vault_cn(&"{{ tag \"a\" }}".repeat(20_000)),
            Some("mtls.backends[0].conf.fromCp.commonName"),
        ),
        case(
            "commonName unterminated action",
            "/meshes/m1",
            vault_cn("{{ tag \"a\""),
            Some("mtls.backends[0].conf.fromCp.commonName"),
        ),
        // ---- unknown fields, wrong types, nulls ----
        case(
            "unknown top-level field",
            "/meshes/m1",
            "type: Mesh\nname: m1\nspec: {}\n",
            Some("spec"),
        ),
        case(
            "unknown field in mtls",
            "/meshes/m1",
            "type: Mesh\nname: m1\nmtls:\n  enabled: true\n",
            Some("mtls.enabled"),
        ),
        case(
            "unknown field in a backend",
            "/meshes/m1",
            "type: Mesh\nname: m1\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    extra: 1\n",
            Some("mtls.backends[0].extra"),
        ),
        case(
            "unknown field deep in vault conf",
            "/meshes/m1",
            format!("{VAULT_PREFIX}            bogus: 1\n"),
            Some("mtls.backends[0].conf.fromCp.auth.token.bogus"),
        ),
        case(
            "name of the wrong type",
            "/meshes/m1",
            "type: Mesh\nname: [m1]\n",
            Some("name"),
        ),
        case(
            "labels of the wrong type",
            "/meshes/m1",
            "type: Mesh\nname: m1\nlabels: [a, b]\n",
            Some("labels"),
        ),
        case(
            "label value of the wrong type",
            "/meshes/m1",
            "type: Mesh\nname: m1\nlabels:\n  a: {b: c}\n",
            Some("labels"),
        ),
        case(
            "backends of the wrong type",
            "/meshes/m1",
            "type: Mesh\nname: m1\nmtls:\n  backends: ca-1\n",
            Some("mtls.backends"),
        ),
        case(
            "expiration of the wrong type",
            "/meshes/m1",
            "type: Mesh\nname: m1\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: [1h]\n",
            Some("mtls.backends[0].dpCert.rotation.expiration"),
        ),
        case(
            "bad duration",
            "/meshes/m1",
            "type: Mesh\nname: m1\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 99999999999999999999h\n",
            Some("mtls.backends[0].dpCert.rotation.expiration"),
        ),
        case(
            "null mtls",
            "/meshes/m1",
            "type: Mesh\nname: m1\nmtls:\n  backends: null\n  enabledBackend: x\n",
            Some("mtls"),
        ),
        case(
            "null backend conf",
            "/meshes/m1",
            "type: Mesh\nname: m1\nmtls:\n  enabledBackend: v\n  backends:\n  - name: v\n    type: vault\n    conf: null\n",
            Some("mtls.backends[0].conf"),
        ),
        case(
            "null name",
            "/meshes/m1",
            "type: Mesh\nname: null\n",
            Some("name"),
        ),
        case("type missing", "/meshes/m1", "name: m1\n", Some("type")),
        case(
            "unknown type",
            "/meshes/m1",
            "type: Zone\nname: m1\n",
            Some("type"),
        ),
        case(
            "type of the wrong case",
            "/meshes/m1",
            "type: mesh\nname: m1\n",
            Some("type"),
        ),
        case(
            "body is a Secret on a Mesh path",
            "/meshes/m1",
            secret("m1", "YQ=="),
            Some("type"),
        ),
        case(
            "name does not match the path",
            "/meshes/m1",
            "type: Mesh\nname: m2\n",
            Some("name"),
        ),
        // ---- Kubernetes form ----
        case(
            "Kubernetes form, bad apiVersion",
            "/meshes/m1",
            "apiVersion: kuma.io/v9\nkind: Mesh\nmetadata:\n  name: m1\n",
            Some("apiVersion"),
        ),
        case(
            "Kubernetes form, bad kind",
            "/meshes/m1",
            "apiVersion: kuma.io/v1alpha1\nkind: Pod\nmetadata:\n  name: m1\n",
            Some("kind"),
        ),
        case(
            "Kubernetes form, metadata missing",
            "/meshes/m1",
            "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nspec: {}\n",
            Some("metadata"),
        ),
        case(
            "Kubernetes form, metadata of the wrong type",
            "/meshes/m1",
            "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata: m1\n",
            Some("metadata"),
        ),
        // ---- names with path characters ----
        case(
            "Secret for a mesh named a/b",
            "/meshes/a%2Fb/secrets/s2",
            "type: Secret\nmesh: a/b\nname: s2\ndata: YQ==\n",
            Some("mesh"),
        ),
        case(
            "Secret for a mesh named ..",
            "/meshes/%2E%2E/secrets/s2",
            "type: Secret\nmesh: ..\nname: s2\ndata: YQ==\n",
            Some("mesh"),
        ),
        case(
            "Secret named ../x",
            "/meshes/default/secrets/..%2Fx",
            "type: Secret\nmesh: default\nname: ../x\ndata: YQ==\n",
            Some("name"),
        ),
        case(
            "Mesh named with a NUL",
            "/meshes/m%001",
            "type: Mesh\nname: \"m\\u00001\"\n",
            Some("name"),
        ),
        apply(
            "batch Secret for a mesh named ../etc",
            "type: Secret\nmesh: ../etc\nname: s2\ndata: YQ==\n",
            Some("mesh"),
        ),
        apply(
            "batch with a hostile second document",
            "type: Mesh\nname: m1\n---\ntype: Mesh\nname: m2\nlabels: 5\n",
            Some("labels"),
        ),
        apply(
            "batch Secret for a missing mesh",
            "type: Secret\nmesh: nomesh\nname: s2\ndata: YQ==\n",
            Some("mesh"),
        ),
        // ---- content types ----
        Case {
            content_type: "application/json",
            ..case(
                "JSON with a trailing garbage",
                "/meshes/m1",
                "{\"type\":\"Mesh\",\"name\":\"m1\"} {}",
                None,
            )
        },
        Case {
            content_type: "application/json",
            ..case(
                "JSON with a huge number",
                "/meshes/m1",
                format!(
                    "{{\"type\":\"Mesh\",\"name\":\"m1\",\"labels\":{{\"a\":1{}}}}}",
                    "0".repeat(10_000)
                ),
                Some("labels"),
            )
        },
    ]
}

async fn snapshot(g: &GlobalProc) -> Vec<Value> {
    let mut out = Vec::new();
    let meshes = g.api.get_ok("/meshes").await.unwrap();
    out.push(meshes.clone());
    for m in meshes["items"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        out.push(
            g.api
                .get_ok(&format!("/meshes/{name}/secrets"))
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_resources_get_a_4xx_naming_the_field_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    let token = std::fs::read_to_string(g.admin_token_file()).unwrap();
    let token = token.trim();
    g.apply(&format!(
        "{}---\ntype: Secret\nmesh: default\nname: s1\ndata: YQ==\n",
        testkit::cluster::builtin_mesh_yaml("default", "24h")
    ))
    .await
    .unwrap();
    let before = snapshot(&g).await;
    assert_eq!(before[0]["total"], 1);

    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let started = Instant::now();
        let (status, body) = raw_request(
            g.api_port,
            c.method,
            &c.path,
            Some(token),
            c.content_type,
            &c.body,
        )
        .await;
        let elapsed = started.elapsed();
        let mut problems = Vec::new();
        if !c.status.contains(&status) {
            problems.push(format!("status {status}, expected {:?}", c.status));
        }
        if body["status"].as_u64() != Some(status as u64)
            || !body["detail"].is_string()
            || !body["title"].is_string()
        {
            problems.push("not the error body (title, status, detail)".to_string());
        }
        if let Some(field) = c.field {
            let fields: Vec<&str> = body["invalid_parameters"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p["field"].as_str()).collect())
                .unwrap_or_default();
            if !fields.iter().any(|f| {
                *f == field
                    || f.starts_with(&format!("{field}."))
                    || f.starts_with(&format!("{field}["))
            }) {
                problems.push(format!("field {field:?} not named in {fields:?}"));
            }
        }
        if elapsed > Duration::from_secs(5) {
            problems.push(format!("took {elapsed:?}"));
        }
        // The answer never echoes a huge input back.
        if body.to_string().len() > 16 * 1024 {
            problems.push(format!("error body of {} bytes", body.to_string().len()));
        }
        if !problems.is_empty() {
            let mut shown = body.to_string();
            shown.truncate(600);
            failures.push(format!("{}: {} -- {shown}", c.what, problems.join("; ")));
        }
    }
    // Still alive, nothing panicked, nothing changed.
    let (status, _) = g.api.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
    let log = std::fs::read_to_string(&g.proc.log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(snapshot(&g).await, before, "the store changed");
}

/// A `file:` data source is a way to make global read, and send away, a file of its host: a Mesh
/// whose Vault token is global's own admin token file, with a Vault address of the writer's
/// choosing. Refused without `--data-source-dir`, refused inside the data directory and through a
/// link that leads out of the allowed tree even with it, and nothing reaches the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_data_sources_cannot_reach_beyond_the_operators_directories() {
    use testkit::cluster::GlobalOptions;
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    // A listener posing as Vault: it must never be asked anything.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap();
    let mesh = |token_file: &str| {
        format!(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: v\n  backends:\n  - name: v\n    type: vault\n    conf:\n      fromCp:\n        address: http://{trap_addr}\n        pki: p\n        role: r\n        auth:\n          token:\n            file: {token_file}\n"
        )
    };
    for (allow, why) in [(false, "--data-source-dir"), (true, "own data directory")] {
        let dir = tmp.path().join(format!("global-{allow}"));
        let mut options = GlobalOptions::in_dir(tmp.path(), "info");
        if allow {
            options = options.args(&["--data-source-dir", allowed.to_str().unwrap()]);
        }
        let g = GlobalProc::start_with(&dir, options).await.unwrap();
        let admin_token = g.admin_token_file();
        std::os::unix::fs::symlink(&admin_token, allowed.join(format!("link-{allow}"))).unwrap();
        for (path, reason) in [
            (admin_token.display().to_string(), why),
            (
                allowed.join(format!("link-{allow}")).display().to_string(),
                if allow { "own data directory" } else { why },
            ),
        ] {
            let err = g.apply(&mesh(&path)).await.unwrap_err().to_string();
            assert!(
                err.contains("mtls.backends[0].conf.fromCp.auth.token") && err.contains(reason),
                "{path}: {err}"
            );
            let token = std::fs::read_to_string(&admin_token).unwrap();
            assert!(!err.contains(token.trim()), "the refusal shows the token");
        }
    }
    // A connection made meanwhile would wait in the backlog.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), trap.accept())
            .await
            .is_err(),
        "global sent something to the writer's listener"
    );
}
