//! `auth.approle` and `auth.jwt` at global's admission, with the real binary and a real OpenBao
//! (PKI, policy, AppRole and JWT auth inside a child namespace): a Mesh whose login works is
//! admitted (credentials from Secrets and from a `file:` under `--data-source-dir`); a wrong
//! secret ID, a JWT signed by another key, and a secret ID rotated in its Secret to a wrong one
//! are refused — by `apply`, its dry run and `global validate` alike — naming
//! `mtls.backends[0].conf.fromCp.auth.<method>` and Vault's reason, with nothing stored and no
//! credential in any answer.

use std::time::Duration;

use serde_json::Value;
use testkit::cluster::{GlobalOptions, GlobalProc, global_output, secret_yaml, vault_auth_mesh};
use testkit::openbao::auth::{self, JwtSigner, TokenTtls};
use testkit::openbao::{BaoServer, seed};
use testkit::proc::stdout;

const NS: &str = "team-a";

fn approle_mesh(address: &str, pki: &str, role_id: &str, secret_id: &str) -> String {
    format!(
        "{}---\n{}---\n{}",
        vault_auth_mesh(
            "approle",
            address,
            NS,
            pki,
            "1h",
            "approle:\n  roleId: { secret: role-id }\n  secretId: { secret: secret-id }\n"
        ),
        secret_yaml("approle", "role-id", role_id),
        secret_yaml("approle", "secret-id", secret_id)
    )
}

fn jwt_mesh(address: &str, pki: &str, jwt_file: &str) -> String {
    vault_auth_mesh(
        "jwt",
        address,
        NS,
        pki,
        "1h",
        &format!("jwt:\n  role: jwt\n  token: {{ file: {jwt_file} }}\n"),
    )
}

/// The `invalid_parameters` of a refusal as `field: reason` lines.
fn refusals(body: &Value) -> Vec<String> {
    body["invalid_parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("no invalid_parameters in {body}"))
        .iter()
        .map(|p| {
            format!(
                "{}: {}",
                p["field"].as_str().unwrap(),
                p["reason"].as_str().unwrap()
            )
        })
        .collect()
}

#[track_caller]
fn assert_refused_login(status: u16, body: &Value, method: &str, reason: &str) {
    assert_eq!(status, 400, "{body}");
    let lines = refusals(body);
    let field = format!("mtls.backends[0].conf.fromCp.auth.{method}: ");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&field)
                && l.contains(&format!("login refused by Vault: {reason}"))),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_are_validation_errors_naming_the_method_and_vaults_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let bao = BaoServer::start().await.unwrap();
    let admin = bao.admin();
    seed::create_namespace(&admin, NS).unwrap();
    let ns = admin.namespace(NS);
    let ttls = TokenTtls::new("20s", "40s");
    let signer = JwtSigner::generate().unwrap();
    let pki_a = auth::mesh_pki(&ns, "approle").unwrap();
    auth::create_approle(&ns, "approle", "approle", &[&pki_a.policy], &ttls).unwrap();
    let role_id = auth::approle_role_id(&ns, "approle", "approle").unwrap();
    let secret_id = auth::approle_secret_id(&ns, "approle", "approle").unwrap();
    let pki_j = auth::mesh_pki(&ns, "jwt").unwrap();
    auth::configure_jwt(&ns, "jwt", &[signer.public_pem()]).unwrap();
    auth::create_jwt_role(&ns, "jwt", "jwt", "kmesh", &[&pki_j.policy], &ttls).unwrap();
    let jwt = signer
        .token("zone", "kmesh", Duration::from_secs(3600))
        .unwrap();
    let stranger = JwtSigner::generate()
        .unwrap()
        .token("zone", "kmesh", Duration::from_secs(3600))
        .unwrap();

    let creds = tmp.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    let jwt_file = creds.join("vault.jwt");
    std::fs::write(&jwt_file, &jwt).unwrap();
    let creds_dir = creds.to_str().unwrap().to_string();
    let g = GlobalProc::start_with(
        &tmp.path().join("global"),
        GlobalOptions::default().args(&["--data-source-dir", &creds_dir]),
    )
    .await
    .unwrap();
    let addr = bao.addr();
    let mut answers: Vec<String> = Vec::new();

    // Logins that work: admitted, each check says where it logged in.
    let body = g
        .apply(&approle_mesh(&addr, &pki_a.pki, &role_id, &secret_id))
        .await
        .unwrap();
    assert!(
        body.to_string()
            .contains("logged in at auth/approle/login in namespace team-a"),
        "{body}"
    );
    answers.push(body.to_string());
    let body = g
        .apply(&jwt_mesh(&addr, &pki_j.pki, jwt_file.to_str().unwrap()))
        .await
        .unwrap();
    assert!(
        body.to_string().contains(
            "logged in at auth/jwt/login in namespace team-a with the JWT of auth.jwt as role jwt"
        ),
        "{body}"
    );
    answers.push(body.to_string());

    // The Secrets the auth block names are in use: deleting one is refused, naming the field.
    let (status, body) = g
        .api
        .delete("/meshes/approle/secrets/secret-id")
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        body.to_string()
            .contains("mtls.backends[0].conf.fromCp.auth.approle.secretId"),
        "{body}"
    );
    // A JWT file outside the --data-source-dir is not read.
    let outside = tmp.path().join("outside.jwt");
    std::fs::write(&outside, &jwt).unwrap();
    let (status, body) = g
        .api
        .send(
            reqwest::Method::POST,
            "/apply",
            &jwt_mesh(&addr, &pki_j.pki, outside.to_str().unwrap()).replace("1h", "3h"),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let lines = refusals(&body);
    assert!(
        lines.iter().any(
            |l| l.starts_with("mtls.backends[0].conf.fromCp.auth.jwt.token")
                && l.contains("--data-source-dir")
        ),
        "{lines:#?}"
    );

    // A wrong secret ID: refused by apply and by its dry run; nothing stored.
    let wrong = approle_mesh(&addr, &pki_a.pki, &role_id, "0000-not-the-secret-id")
        .replace("expiration: 1h", "expiration: 2h");
    for path in ["/apply?dryRun=true", "/apply"] {
        let (status, body) = g
            .api
            .send(reqwest::Method::POST, path, &wrong)
            .await
            .unwrap();
        assert_refused_login(status, &body, "approle", "invalid role or secret ID");
        answers.push(body.to_string());
    }
    let (_, stored) = g.api.get("/meshes/approle").await.unwrap();
    assert_eq!(
        stored["mtls"]["backends"][0]["dpCert"]["rotation"]["expiration"], "1h",
        "the refused Mesh was stored: {stored}"
    );
    // The secret ID rotated in its Secret alone, to a wrong one: the Secret is refused.
    let (status, body) = g
        .api
        .send(
            reqwest::Method::PUT,
            "/meshes/approle/secrets/secret-id",
            &secret_yaml("approle", "secret-id", "0000-not-the-secret-id"),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string()
            .contains("login refused by Vault: invalid role or secret ID"),
        "{body}"
    );
    answers.push(body.to_string());

    // A JWT signed by another key.
    std::fs::write(&jwt_file, &stranger).unwrap();
    let (status, body) = g
        .api
        .send(
            reqwest::Method::POST,
            "/apply",
            &jwt_mesh(&addr, &pki_j.pki, jwt_file.to_str().unwrap()).replace("1h", "2h"),
        )
        .await
        .unwrap();
    assert_refused_login(status, &body, "jwt", "error validating token");
    assert!(body.to_string().contains("signature"), "{body}");
    answers.push(body.to_string());

    // `global validate`, no server: the same refusals, exit 1.
    let file = tmp.path().join("wrong.yaml");
    let both = format!(
        "{wrong}---\n{}",
        jwt_mesh(&addr, &pki_j.pki, jwt_file.to_str().unwrap())
    );
    std::fs::write(&file, &both).unwrap();
    let out = global_output(&["validate", "-f", file.to_str().unwrap()], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for (field, reason) in [
        ("approle", "invalid role or secret ID"),
        ("jwt", "error validating token"),
    ] {
        // validate prints each step of the backend with the field it blames.
        assert!(
            text.contains(&format!(
                "FAIL  vault-1 auth [conf.fromCp.auth.{field}]: login refused by Vault: {reason}"
            )),
            "{text}"
        );
    }
    answers.push(text);
    answers.push(g.api.get_text("/meshes").await.unwrap());
    answers.push(g.api.get_text("/meshes/approle/secrets").await.unwrap());

    // No credential in any answer.
    for a in &answers {
        for c in [&role_id, &secret_id, &jwt, &stranger] {
            assert!(!a.contains(c.as_str()), "a credential in {a}");
        }
    }
}
