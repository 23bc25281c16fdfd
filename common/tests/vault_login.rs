//! `auth.approle` and `auth.jwt` against a real OpenBao dev server (its raw audit log tells what
//! reached Vault): the backend check logs in with each, in the root namespace and in a child
//! namespace, and revokes its token after; a wrong secret ID, a JWT with a bad signature and a
//! login outside the role's namespace are refused with the method named and Vault's reason, and
//! no credential is in any report. A client's token lease is renewed until Vault caps it at the
//! max TTL; a revoked token (403) makes one login, however many requests saw it; a refused login
//! holds its error for a backoff, without more requests.

use std::time::{Duration, Instant};

use common::datasource::SecretMap;
use common::model::{Backend, DataSource, FromCp, VaultAuth, VaultAuthAppRole, VaultAuthJwt};
use common::vault::{
    IssueRequest, LoginMethod, Timeouts, VaultCheckReport, VaultError, VaultIssuer,
};
use testkit::openbao::auth::{self, JwtSigner, TokenTtls};
use testkit::openbao::{BaoCli, BaoServer, audit, seed};

const AUDIENCE: &str = "kmesh";

fn backend(from_cp: &FromCp) -> Backend {
    serde_json::from_value(serde_json::json!({
        "name": "vault-1",
        "type": "vault",
        "dpCert": {"rotation": {"expiration": "1h"}},
        "conf": {"fromCp": from_cp},
    }))
    .unwrap()
}

fn approle_conf(address: &str, ns: &str, pki: &str) -> FromCp {
    FromCp {
        address: address.to_string(),
        namespace: ns.to_string(),
        pki: pki.to_string(),
        role: "dataplane-proxies".into(),
        auth: Some(VaultAuth {
            approle: Some(VaultAuthAppRole {
                role_id: Some(DataSource::secret("role-id")),
                secret_id: Some(DataSource::secret("secret-id")),
                mount: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn jwt_conf(address: &str, ns: &str, pki: &str, role: &str) -> FromCp {
    FromCp {
        auth: Some(VaultAuth {
            jwt: Some(VaultAuthJwt {
                role: role.to_string(),
                token: Some(DataSource::secret("jwt")),
                mount: String::new(),
            }),
            ..Default::default()
        }),
        ..approle_conf(address, ns, pki)
    }
}

/// A PKI for `mesh` in the namespace of `cli`, an AppRole role and a JWT role named `mesh`
/// granting its policy, tokens living `ttls`. Returns the PKI, the role ID and a secret ID.
fn logins_for(
    cli: &BaoCli,
    mesh: &str,
    signer: &JwtSigner,
    ttls: &TokenTtls,
) -> (String, String, String) {
    let pki = auth::mesh_pki(cli, mesh).unwrap();
    auth::create_approle(cli, "approle", mesh, &[&pki.policy], ttls).unwrap();
    let role_id = auth::approle_role_id(cli, "approle", mesh).unwrap();
    let secret_id = auth::approle_secret_id(cli, "approle", mesh).unwrap();
    auth::configure_jwt(cli, "jwt", &[signer.public_pem()]).unwrap();
    auth::create_jwt_role(cli, "jwt", mesh, AUDIENCE, &[&pki.policy], ttls).unwrap();
    (pki.pki, role_id, secret_id)
}

fn secrets(role_id: &str, secret_id: &str, jwt: &str) -> SecretMap {
    let mut s = SecretMap::default();
    s.insert("default", "role-id", role_id.as_bytes().to_vec());
    s.insert(
        "default",
        "secret-id",
        format!("{secret_id}\n").into_bytes(),
    );
    s.insert("default", "jwt", jwt.as_bytes().to_vec());
    s
}

fn step<'a>(report: &'a VaultCheckReport, name: &str) -> &'a common::vault::CheckResult {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {report:#?}"))
}

#[track_caller]
fn assert_ok(report: &VaultCheckReport) {
    assert!(report.ok, "{}", report.summary());
}

#[track_caller]
fn assert_login_refused(report: &VaultCheckReport, method: &str, reason: &str) {
    assert!(!report.ok, "{}", report.summary());
    let auth = step(report, "auth");
    assert!(!auth.passed, "{}", report.summary());
    assert_eq!(
        auth.field.as_deref(),
        Some(format!("conf.fromCp.auth.{method}").as_str()),
        "{}",
        report.summary()
    );
    assert!(
        auth.detail
            .starts_with(&format!("login refused by Vault: {reason}")),
        "{}",
        auth.detail
    );
    assert!(!report.unreachable);
    eprintln!("refused: {}", auth.detail);
}

/// No credential in what a report says (serialized as global's API and `validate` show it).
#[track_caller]
fn assert_no_credential(report: &VaultCheckReport, credentials: &[&str]) {
    let text = serde_json::to_string(report).unwrap() + &report.summary();
    for c in credentials {
        assert!(!text.contains(c), "a credential in {text}");
    }
}

#[tokio::test]
async fn approle_and_jwt_logins_in_the_root_and_a_child_namespace() {
    let t0 = Instant::now();
    let bao = BaoServer::start_audited().await.unwrap();
    let audit_log = bao.audit_log().unwrap().to_path_buf();
    let admin = bao.admin();
    seed::create_namespace(&admin, "team-a").unwrap();
    let child = admin.namespace("team-a");
    let signer = JwtSigner::generate().unwrap();
    let ttls = TokenTtls::new("20s", "40s");
    let jwt = signer
        .token("zone-1", AUDIENCE, Duration::from_secs(600))
        .unwrap();
    let stranger_jwt = JwtSigner::generate()
        .unwrap()
        .token("zone-1", AUDIENCE, Duration::from_secs(600))
        .unwrap();

    for (ns, cli) in [("", &admin), ("team-a", &child)] {
        let (pki, role_id, secret_id) = logins_for(cli, "default", &signer, &ttls);
        let creds = [role_id.as_str(), secret_id.as_str(), jwt.as_str()];
        let good = secrets(&role_id, &secret_id, &jwt);
        let in_ns = if ns.is_empty() {
            String::new()
        } else {
            format!(" in namespace {ns}")
        };

        // AppRole and JWT pass the check, logged in inside the namespace.
        for (method, conf) in [
            ("approle", approle_conf(&bao.addr(), ns, &pki)),
            ("jwt", jwt_conf(&bao.addr(), ns, &pki, "default")),
        ] {
            let report = common::vault::check_backend(
                "default",
                &backend(&conf),
                &good,
                Timeouts::default(),
            )
            .await;
            assert_ok(&report);
            let detail = &step(&report, "auth").detail;
            assert!(
                detail.starts_with(&format!("logged in at auth/{method}/login{in_ns} with ")),
                "{detail}"
            );
            assert!(detail.contains("a token for 20s, renewable"), "{detail}");
            assert_no_credential(&report, &creds);
        }
        let ns_path = if ns.is_empty() {
            String::new()
        } else {
            format!("{ns}/")
        };
        for mount in ["approle", "jwt"] {
            let logins = audit::logins_at(&audit_log, &ns_path, mount).unwrap();
            assert_eq!(logins.len(), 1, "{ns:?} {mount}: {logins:?}");
            assert!(logins[0].ok, "{logins:?}");
        }

        // A wrong secret ID, a JWT signed by another key, a role that does not exist.
        let wrong = secrets(&role_id, &format!("{secret_id}x"), &stranger_jwt);
        let report = common::vault::check_backend(
            "default",
            &backend(&approle_conf(&bao.addr(), ns, &pki)),
            &wrong,
            Timeouts::default(),
        )
        .await;
        assert_login_refused(&report, "approle", "invalid role or secret ID");
        assert_no_credential(&report, &creds);
        let report = common::vault::check_backend(
            "default",
            &backend(&jwt_conf(&bao.addr(), ns, &pki, "default")),
            &wrong,
            Timeouts::default(),
        )
        .await;
        assert_login_refused(&report, "jwt", "error validating token");
        assert!(
            step(&report, "auth").detail.contains("signature"),
            "{}",
            report.summary()
        );
        assert_no_credential(&report, &[&stranger_jwt]);
        let report = common::vault::check_backend(
            "default",
            &backend(&jwt_conf(&bao.addr(), ns, &pki, "nobody")),
            &good,
            Timeouts::default(),
        )
        .await;
        assert_login_refused(&report, "jwt", "role \"nobody\" could not be found");
    }

    // The child namespace's role ID, sent without the namespace: not a role of the root's AppRole.
    let role_id = auth::approle_role_id(&child, "approle", "default").unwrap();
    let secret_id = auth::approle_secret_id(&child, "approle", "default").unwrap();
    let report = common::vault::check_backend(
        "default",
        &backend(&approle_conf(&bao.addr(), "", "kmesh-pki-default")),
        &secrets(&role_id, &secret_id, &jwt),
        Timeouts::default(),
    )
    .await;
    assert_login_refused(&report, "approle", "invalid role or secret ID");

    // Every token a check's login got was revoked when the check ended.
    let mut revoked: Vec<String> = std::fs::read_to_string(&audit_log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "response" && v["request"]["path"] == "auth/token/revoke-self")
        .filter_map(|v| v["auth"]["accessor"].as_str().map(str::to_string))
        .collect();
    let mut logged_in: Vec<String> = audit::logins(&audit_log)
        .unwrap()
        .into_iter()
        .filter_map(|l| l.accessor)
        .collect();
    revoked.sort();
    logged_in.sort();
    assert_eq!(logged_in.len(), 4);
    assert!(
        logged_in.iter().all(|a| revoked.contains(a)),
        "logins {logged_in:?}, revoked {revoked:?}"
    );
    eprintln!(
        "approle_and_jwt_logins_in_the_root_and_a_child_namespace: {:?}",
        t0.elapsed()
    );
}

/// The lifecycle a zone builds on, on one client with short TTLs (3 s, at most 5 s): the lease
/// of a login, renewals until Vault caps the token at its max TTL, a login after a 403 — one for
/// four requests refused at once — and a refused login held for its backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_renew_until_capped_and_a_403_logs_in_again_once() {
    let t0 = Instant::now();
    let bao = BaoServer::start_audited().await.unwrap();
    let audit_log = bao.audit_log().unwrap().to_path_buf();
    let admin = bao.admin();
    let signer = JwtSigner::generate().unwrap();
    let (pki, role_id, secret_id) =
        logins_for(&admin, "default", &signer, &TokenTtls::new("3s", "5s"));
    let good = secrets(&role_id, &secret_id, "");
    let issuer = VaultIssuer::from_conf(
        "default",
        &approle_conf(&bao.addr(), "", &pki),
        &good,
        Timeouts::default(),
    )
    .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    issuer.set_login_observer(std::sync::Arc::new(move |m, ok| {
        s.lock().unwrap().push((m, ok))
    }));
    let lease = issuer.login().await.unwrap().unwrap();
    assert_eq!(
        (lease.ttl, lease.renewable, lease.capped),
        (Duration::from_secs(3), true, false)
    );
    assert_eq!(issuer.login_count(), 1);

    // Renewed at 1 s: 3 s more (4 s from the login, within 5 s). At 3 s: capped at what is left.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let renewed = issuer.renew().await.unwrap().unwrap();
    assert!(
        !renewed.capped && renewed.ttl == Duration::from_secs(3),
        "{renewed:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let capped = issuer.renew().await.unwrap().unwrap();
    assert!(
        capped.capped && capped.ttl < Duration::from_secs(3),
        "{capped:?}"
    );
    assert_eq!(issuer.lease(), Some(capped));

    // The token revoked: four issuances at once see 403, one login serves them all.
    let req = IssueRequest {
        uri_sans: vec!["spiffe://default/web".into()],
        common_name: None,
        ttl: Duration::from_secs(600),
    };
    let accessors: Vec<String> = audit::logins(&audit_log)
        .unwrap()
        .into_iter()
        .filter_map(|l| l.accessor)
        .collect();
    assert_eq!(auth::revoke_accessors(&admin, &accessors).unwrap(), 1);
    let issued = futures::future::join_all((0..4).map(|_| issuer.issue(&req))).await;
    for r in &issued {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(issuer.login_count(), 2);
    assert_eq!(
        audit::logins_at(&audit_log, "", "approle").unwrap().len(),
        2
    );

    // The secret ID destroyed and the token revoked: the 403's login is refused, and whoever
    // asks during its backoff gets the same refusal without a request.
    auth::destroy_secret_id(&admin, "approle", "default", &secret_id).unwrap();
    let accessors: Vec<String> = audit::logins(&audit_log)
        .unwrap()
        .into_iter()
        .filter_map(|l| l.accessor)
        .collect();
    auth::revoke_accessors(&admin, &accessors).unwrap();
    let err = issuer.issue(&req).await.unwrap_err();
    assert!(
        matches!(
            &err,
            VaultError::LoginRefused {
                method: LoginMethod::AppRole,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("login refused by Vault: invalid role or secret ID"),
        "{err}"
    );
    assert!(issuer.login_held_until().is_some());
    let again = issuer.login().await.unwrap_err();
    assert_eq!(again, err);
    let logins = audit::logins_at(&audit_log, "", "approle").unwrap();
    assert_eq!(logins.len(), 3, "{logins:?}");
    assert!(!logins[2].ok && logins[2].error.as_deref() == Some("invalid role or secret ID"));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (LoginMethod::AppRole, true),
            (LoginMethod::AppRole, true),
            (LoginMethod::AppRole, false)
        ]
    );
    eprintln!(
        "leases_renew_until_capped_and_a_403_logs_in_again_once: {:?}",
        t0.elapsed()
    );
}
