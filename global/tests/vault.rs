//! Global's admission of vault backends against a real OpenBao set up with the reference page's
//! steps: `global validate` (no server), `apply --dry-run` and `apply` through the real binary, and
//! refusals naming the field and the reason. Nothing refused or dry-run is stored.

mod support;

use base64::Engine;
use support::{TestGlobal, write_file};
use testkit::cluster::global_output;
use testkit::openbao::BaoServer;
use testkit::openbao::seed::{self, RoleOptions};
use testkit::proc::{stderr, stdout};

/// The page's Universal Mesh plus the token Secret, pointed at `address`.
fn mesh_file(address: &str, role: &str, expiration: &str, token: &str) -> String {
    format!(
        "{}---\n{}",
        testkit::cluster::VaultMesh::new(address, expiration)
            .role(role)
            .yaml(),
        testkit::cluster::token_secret(token)
    )
}

struct Vault {
    bao: BaoServer,
    token: String,
}

async fn seeded_vault() -> Vault {
    let bao = BaoServer::start().await.expect("OpenBao starts");
    let cli = bao.admin();
    seed::setup_root_ca(&cli, "default", "kmesh-pki-default").unwrap();
    seed::create_role(
        &cli,
        "kmesh-pki-default",
        "dataplane-proxies",
        &RoleOptions::seed("default"),
    )
    .unwrap();
    // An EC role for speed where RSA is not the point.
    seed::create_role(
        &cli,
        "kmesh-pki-default",
        "ec",
        &RoleOptions::seed_ec("default"),
    )
    .unwrap();
    let p1 = seed::write_policy(&cli, "default", "kmesh-pki-default", "dataplane-proxies").unwrap();
    let p2 = seed::write_policy(&cli, "default", "kmesh-pki-default", "ec").unwrap();
    let token = seed::create_token(&cli, &[&p1, &p2]).unwrap();
    Vault { bao, token }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_without_a_server_reports_each_check_and_exit_codes() {
    let v = seeded_vault().await;
    let dir = tempfile::tempdir().unwrap();
    // The page's setup: valid, with the key-usage warning.
    let good = write_file(
        dir.path(),
        "good.yaml",
        &mesh_file(&v.bao.addr(), "dataplane-proxies", "24h", &v.token),
    );
    let out = global_output(&["validate", "-f", good.to_str().unwrap()], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains("Mesh \"default\": VALID"), "{text}");
    assert!(text.contains("PASS"), "{text}");
    assert!(text.contains("WARN"), "key usage warning missing: {text}");
    assert!(!text.contains(&v.token), "the token leaked into the report");

    // TTL above the role's max_ttl: refused with both numbers, exit 1.
    let long = write_file(
        dir.path(),
        "long.yaml",
        &mesh_file(&v.bao.addr(), "dataplane-proxies", "1000h", &v.token),
    );
    let out = global_output(&["validate", "-f", long.to_str().unwrap()], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("720h") && text.contains("1000h"), "{text}");

    // Wrong token: refused, permission denied.
    let bad = write_file(
        dir.path(),
        "bad.yaml",
        &mesh_file(&v.bao.addr(), "ec", "24h", "not-a-token"),
    );
    let out = global_output(&["validate", "-f", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("permission denied"),
        "{}",
        stdout(&out)
    );

    // Unreachable Vault: exit 3.
    let gone = write_file(
        dir.path(),
        "gone.yaml",
        &mesh_file("http://127.0.0.1:9", "ec", "24h", &v.token),
    );
    let out = global_output(&["validate", "-f", gone.to_str().unwrap()], &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );

    // The page's own YAML sets both auth methods: refused with that reason, before any Vault call.
    let both = mesh_file(&v.bao.addr(), "ec", "24h", &v.token).replace(
        "            secret: token-1  # can be file, secret or inlineString\n",
        "            secret: token-1\n          tls:\n            clientKey:\n              secret: token-1\n            clientCert:\n              file: /tmp/cert.pem\n",
    );
    let both = write_file(dir.path(), "both.yaml", &both);
    let out = global_output(&["validate", "-f", both.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("mtls.backends[0].conf.fromCp.auth"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_dry_run_stores_nothing_and_apply_stores_the_mesh_and_secret() {
    let v = seeded_vault().await;
    let g = TestGlobal::start().await;
    let file = write_file(
        g.dir.path(),
        "mesh.yaml",
        &mesh_file(&v.bao.addr(), "ec", "24h", &v.token),
    );
    let f = file.to_str().unwrap();

    let out = g.cli(&["apply", "--dry-run", "-f", f]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("PASS"), "{}", stdout(&out));
    assert_eq!(g.mesh_count().await, 0, "dry run stored the mesh");
    let (_, secrets) = g.get("/meshes/default/secrets").await;
    assert_eq!(secrets["total"], 0, "dry run stored the secret");

    // Vault unreachable: refused, and the exit code says it was reachability (3).
    let gone = write_file(
        g.dir.path(),
        "gone.yaml",
        &mesh_file("http://127.0.0.1:9", "ec", "24h", &v.token),
    );
    let out = g.cli(&["apply", "--dry-run", "-f", gone.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("cannot reach Vault"),
        "{}",
        stderr(&out)
    );

    let out = g.cli(&["apply", "-f", f]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("mesh \"default\" created"),
        "{}",
        stdout(&out)
    );
    assert_eq!(g.mesh_count().await, 1);

    // Unchanged backend: no new Vault check (the role could even be gone).
    let out = g.cli(&["apply", "-f", f]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("PASS"),
        "unchanged backend was checked again: {}",
        stdout(&out)
    );

    // A changed backend that Vault refuses: 400 naming the field, and the stored mesh is untouched.
    let changed = mesh_file(&v.bao.addr(), "no-such-role", "24h", &v.token);
    let out = g.cli(&[
        "apply",
        "-f",
        write_file(g.dir.path(), "bad.yaml", &changed)
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("mtls.backends[0]"), "{err}");
    assert!(err.contains("no-such-role"), "{err}");
    assert!(!err.contains(&v.token), "the token leaked into an error");
    let (_, mesh) = g.get("/meshes/default").await;
    assert_eq!(mesh["mtls"]["backends"][0]["conf"]["fromCp"]["role"], "ec");

    // `get` shows it; the token secret's data never appears.
    let out = g.cli(&["get", "meshes"]);
    assert!(stdout(&out).contains("vault-1/vault"), "{}", stdout(&out));
    let out = g.cli(&["get", "secrets", "--mesh", "default", "-o", "json"]);
    assert!(stdout(&out).contains("token-1"));
    assert!(!stdout(&out).contains(&base64::engine::general_purpose::STANDARD.encode(&v.token)));

    // Rotating the token Secret re-runs the check: a token Vault refuses is refused (field
    // `data`, stored Secret unchanged), a good new token is accepted.
    let secret = |token: &str| {
        format!(
            "type: Secret\nname: token-1\nmesh: default\ndata: {}\n",
            base64::engine::general_purpose::STANDARD.encode(token)
        )
    };
    let (status, body) = g
        .put(
            "/meshes/default/secrets/token-1",
            &secret("revoked-or-wrong"),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["invalid_parameters"][0]["field"], "data", "{body}");
    assert!(body.to_string().contains("permission denied"), "{body}");
    let new_token = seed::create_token(&v.bao.admin(), &["kmesh-default-ec"]).unwrap();
    let (status, body) = g
        .put("/meshes/default/secrets/token-1", &secret(&new_token))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"][0]["ok"], true, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refusal_for_truncated_ttl_names_both_numbers() {
    let v = seeded_vault().await;
    let g = TestGlobal::start().await;
    let token = base64::engine::general_purpose::STANDARD.encode(&v.token);
    let (status, body) = g.post("/apply", &format!("type: Mesh\nname: default\n---\ntype: Secret\nname: token-1\nmesh: default\ndata: {token}\n")).await;
    assert_eq!(status, 200, "{body}");
    let file = mesh_file(&v.bao.addr(), "ec", "1000h", &v.token);
    let mesh_doc = file.split("---").next().unwrap();
    let (status, body) = g.put("/meshes/default", mesh_doc).await;
    assert_eq!(status, 400, "{body}");
    let params = body["invalid_parameters"].as_array().unwrap();
    let reason = params
        .iter()
        .map(|p| p["reason"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        reason.contains("720h") && reason.contains("1000h"),
        "{body}"
    );
    assert!(
        !body["checks"].as_array().unwrap().is_empty(),
        "the check report is returned: {body}"
    );
    let (_, mesh) = g.get("/meshes/default").await;
    assert!(
        mesh.get("mtls").is_none(),
        "the refused update was stored: {mesh}"
    );
}
