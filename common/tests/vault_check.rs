//! The vault backend against a real OpenBao dev server (started by `testkit::openbao`, never a fake):
//! the reference page's Vault steps (Root CA, Intermediate CA, role, policy, token) are accepted by
//! the backend check with the page's Mesh; token, TLS client-certificate and Vault Agent auth work;
//! namespaces, caCert, serverName and skipVerify are honoured; and every way the check refuses a
//! backend says why, in words an operator can act on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::datasource::SecretMap;
use common::model::{Backend, DataSource, FromCp, Mesh, VaultAuth, VaultAuthTls, VaultTls};
use common::vault::{
    IssueRequest, SUGGESTED_KEY_USAGE, Timeouts, VaultCheckReport, VaultError, VaultIssuer,
};
use common::x509;
use testkit::openbao::seed::{self, RoleOptions};
use testkit::openbao::{BaoCli, BaoServer};

const MESH: &str = "default";

/// The backend check with the default bounds.
async fn check_backend(mesh: &str, backend: &Backend, secrets: &SecretMap) -> VaultCheckReport {
    common::vault::check_backend(mesh, backend, secrets, Timeouts::default()).await
}

/// A client with the default bounds.
async fn connect(
    mesh: &str,
    conf: &FromCp,
    secrets: &SecretMap,
) -> Result<VaultIssuer, VaultError> {
    VaultIssuer::connect(mesh, conf, secrets, Timeouts::default()).await
}

/// The Universal Mesh of the reference page, pointed at `address` (token auth from Secret
/// `token-1`; the page's `tls.caCert` and `auth.tls` are left out for plain HTTP).
fn seed_mesh_yaml(address: &str, pki: &str, role: &str, expiration: &str) -> String {
    testkit::cluster::VaultMesh::new(address, expiration)
        .pki(pki)
        .role(role)
        .yaml()
}

fn seed_backend(address: &str, pki: &str, role: &str, expiration: &str) -> Backend {
    let mesh: Mesh = serde_norway::from_str(&seed_mesh_yaml(address, pki, role, expiration))
        .expect("the page's Mesh parses");
    mesh.enabled_backend().expect("enabled backend").clone()
}

fn backend(from_cp: &FromCp, expiration: &str) -> Backend {
    serde_json::from_value(serde_json::json!({
        "name": "vault-1",
        "type": "vault",
        "dpCert": {"rotation": {"expiration": expiration}},
        "conf": {"fromCp": from_cp},
    }))
    .unwrap()
}

fn token_conf(address: &str, pki: &str, role: &str, token: &str) -> FromCp {
    FromCp {
        address: address.to_string(),
        pki: pki.to_string(),
        role: role.to_string(),
        auth: Some(VaultAuth {
            token: Some(DataSource::inline_string(token)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn check<'a>(report: &'a VaultCheckReport, name: &str) -> &'a common::vault::CheckResult {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#?}"))
}

/// The report refused the backend at step `step`, with every one of `texts` in the reason.
#[track_caller]
fn assert_refused(report: &VaultCheckReport, step: &str, texts: &[&str]) {
    eprintln!("refused at {step}: {}", report.summary());
    assert!(!report.ok, "expected a refusal at {step}: {report:#?}");
    let c = check(report, step);
    assert!(!c.passed, "step {step} passed: {report:#?}");
    for t in texts {
        assert!(
            c.detail.contains(t),
            "step {step}: {:?} does not contain {t:?}",
            c.detail
        );
    }
    assert!(report.summary().contains(&c.detail), "{}", report.summary());
}

#[track_caller]
fn assert_ok(report: &VaultCheckReport) {
    assert!(report.ok, "{}\n{report:#?}", report.summary());
    assert!(report.checks.iter().all(|c| c.passed), "{report:#?}");
}

fn has_key_usage_warning(report: &VaultCheckReport) -> bool {
    report
        .warnings
        .iter()
        .any(|w| w.contains("no Key Usage extension"))
}

fn rcgen_ca(cn: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(p, key))
}

/// A client certificate signed by `issuer`; `cn: None` leaves the subject empty (URI SAN only).
fn rcgen_client(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    cn: Option<&str>,
) -> (String, String) {
    use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    p.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://default/control-plane".try_into().unwrap(),
    )];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The page's Root CA steps, the page's role, policy and token: the page's Mesh passes the check
/// (RSA leaves, as the page's role sets no key_type), with the Key Usage warning; a role with the
/// short key_usage names gets no such warning. Also the issuer used directly.
#[tokio::test]
async fn seed_root_ca_with_token_auth() {
    let t0 = Instant::now();
    let bao = BaoServer::start().await.unwrap();
    let admin = bao.admin();
    let pki = "kmesh-pki-default";
    let root = seed::setup_root_ca(&admin, MESH, pki).unwrap();
    assert!(x509::summarize_pem(&root).unwrap().self_signed);
    seed::create_role(&admin, pki, "dataplane-proxies", &RoleOptions::seed(MESH)).unwrap();
    let token = seed::create_policy_and_token(&admin, MESH, pki, "dataplane-proxies").unwrap();
    assert_ne!(token, "root");

    let mut secrets = SecretMap::default();
    secrets.insert(MESH, "token-1", format!("{token}\n").into_bytes());
    let be = seed_backend(&bao.addr(), pki, "dataplane-proxies", "24h");
    let report = check_backend(MESH, &be, &secrets).await;
    assert_ok(&report);
    for step in [
        "conf",
        "connect",
        "auth",
        "issue",
        "clock skew",
        "lifetime",
        "extendedKeyUsage",
        "uriSans",
    ] {
        assert!(check(&report, step).passed);
    }
    // OpenBao dates its answers: the skew is measured, and nil on one host.
    assert!(
        check(&report, "clock skew")
            .detail
            .contains("agrees with the clock of Vault within"),
        "{report:#?}"
    );
    assert_eq!(check(&report, "commonName").detail, "kmesh-ca-check.mesh");
    assert!(
        check(&report, "issue").detail.contains("RSA 2048"),
        "{report:#?}"
    );
    assert!(has_key_usage_warning(&report), "{report:#?}");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains(SUGGESTED_KEY_USAGE)),
        "{:?}",
        report.warnings
    );
    assert!(!report.summary().contains(&token));
    assert!(!format!("{report:?}").contains(&token));

    // The issuer on its own: the proxy's SANs, the chain to the page's root.
    let conf = token_conf(&bao.addr(), pki, "dataplane-proxies", &token);
    let issuer = connect(MESH, &conf, &secrets).await.unwrap();
    assert!(!format!("{issuer:?}").contains(&token));
    let mut tags = BTreeMap::new();
    tags.insert("kuma.io/service".to_string(), "backend".to_string());
    let cn = issuer.render_common_name(&tags).unwrap();
    let uri_sans = vec![
        "spiffe://default/backend".to_string(),
        "kuma://kuma.io/service/backend".to_string(),
        "kuma://version/v1".to_string(),
    ];
    let cert = issuer
        .issue(&IssueRequest {
            uri_sans: uri_sans.clone(),
            common_name: None,
            ttl: Duration::from_secs(3600),
        })
        .await
        .unwrap();
    assert_eq!(cn, None); // conf without commonName
    assert!(!format!("{cert:?}").contains("PRIVATE KEY"));
    let s = cert.summary().unwrap();
    assert_eq!(s.uri_sans, uri_sans);
    assert_eq!(s.serial, cert.serial);
    assert!(s.server_auth && s.client_auth && !s.is_ca);
    assert!((s.lifetime_secs() - 3600).abs() <= 60, "{s:?}");
    assert!(x509::private_key_matches_cert(
        &cert.certificate_pem,
        &cert.private_key_pem
    ));
    assert_eq!(cert.root_pems().len(), 1);
    assert_eq!(
        x509::pem_to_ders(&cert.root_pems()[0]).unwrap(),
        x509::pem_to_ders(&root).unwrap()
    );
    x509::verify_chain_pem(&cert.chain_pem(), &[], &[&root]).unwrap();

    // The same PKI with a role using the short key_usage names: no warning.
    let ku_role = RoleOptions::seed_ec(MESH)
        .key_usage(SUGGESTED_KEY_USAGE)
        .ext_key_usage("ServerAuth,ClientAuth");
    seed::create_role(&admin, pki, "dataplane-proxies-ku", &ku_role).unwrap();
    let ku_token =
        seed::create_policy_and_token(&admin, MESH, pki, "dataplane-proxies-ku").unwrap();
    secrets.insert(MESH, "token-1", ku_token.into_bytes());
    let be = seed_backend(&bao.addr(), pki, "dataplane-proxies-ku", "24h");
    let report = check_backend(MESH, &be, &secrets).await;
    assert_ok(&report);
    assert!(!has_key_usage_warning(&report), "{report:#?}");
    let ku = &check(&report, "keyUsage").detail;
    for name in ["DigitalSignature", "KeyEncipherment", "KeyAgreement"] {
        assert!(ku.contains(name), "{ku}");
    }
    assert!(check(&report, "issue").detail.contains("EC P-256"));

    // Strict X.509-SVIDs (dpCert.uriSans: spiffe): the short-named role passes with one URI SAN;
    // the page's role, whose KeyUsage* names OpenBao ignores, is refused, naming the fix.
    let mut strict = be.clone();
    strict.dp_cert.as_mut().unwrap().uri_sans = Some(common::model::UriSans::Spiffe);
    let report = check_backend(MESH, &strict, &secrets).await;
    assert_ok(&report);
    assert_eq!(
        check(&report, "uriSans").detail,
        format!("spiffe://{MESH}/kmesh-ca-check")
    );
    assert!(check(&report, "svid").passed, "{report:#?}");
    let page_token = seed::create_policy_and_token(&admin, MESH, pki, "dataplane-proxies").unwrap();
    secrets.insert(MESH, "token-1", page_token.into_bytes());
    let mut strict_page = seed_backend(&bao.addr(), pki, "dataplane-proxies", "24h");
    strict_page.dp_cert.as_mut().unwrap().uri_sans = Some(common::model::UriSans::Spiffe);
    let report = check_backend(MESH, &strict_page, &secrets).await;
    assert!(!report.ok, "{report:#?}");
    let svid = check(&report, "svid");
    assert!(!svid.passed);
    assert!(
        svid.detail.contains("digitalSignature") && svid.detail.contains("key_usage=\""),
        "{}",
        svid.detail
    );
    assert_eq!(svid.field.as_deref(), Some("conf.fromCp.role"));
    eprintln!("seed_root_ca_with_token_auth: {:?}", t0.elapsed());
}

/// The page's Intermediate CA steps (organization root at `pki`, the mesh's intermediate signed by
/// it, set with the bundle intermediate + root): the check passes and the chain goes through the
/// intermediate to the organization root.
#[tokio::test]
async fn seed_intermediate_ca() {
    let t0 = Instant::now();
    let bao = BaoServer::start().await.unwrap();
    let admin = bao.admin();
    let pki = "kmesh-pki-default";
    let root = seed::setup_intermediate_ca(&admin, MESH, pki, "pki").unwrap();
    assert_eq!(
        x509::summarize_pem(&root).unwrap().common_name.as_deref(),
        Some("Organization CA")
    );
    seed::create_role(
        &admin,
        pki,
        "dataplane-proxies",
        &RoleOptions::seed_ec(MESH),
    )
    .unwrap();
    let token = seed::create_policy_and_token(&admin, MESH, pki, "dataplane-proxies").unwrap();
    let mut secrets = SecretMap::default();
    secrets.insert(MESH, "token-1", token.clone().into_bytes());
    let report = check_backend(
        MESH,
        &seed_backend(&bao.addr(), pki, "dataplane-proxies", "1d"),
        &secrets,
    )
    .await;
    assert_ok(&report);
    assert!(
        check(&report, "chain").detail.contains("1 intermediate"),
        "{report:#?}"
    );

    let issuer = connect(
        MESH,
        &token_conf(&bao.addr(), pki, "dataplane-proxies", &token),
        &secrets,
    )
    .await
    .unwrap();
    let cert = issuer
        .issue(&IssueRequest {
            uri_sans: vec!["spiffe://default/web".into()],
            common_name: Some("web.mesh".into()),
            ttl: Duration::from_secs(600),
        })
        .await
        .unwrap();
    assert_eq!(
        cert.summary().unwrap().common_name.as_deref(),
        Some("web.mesh")
    );
    let roots = cert.root_pems();
    assert_eq!(roots.len(), 1);
    assert_eq!(
        x509::pem_to_ders(&roots[0]).unwrap(),
        x509::pem_to_ders(&root).unwrap()
    );
    let inters = cert.intermediate_pems();
    assert_eq!(inters.len(), 1);
    let inter = x509::summarize_pem(&inters[0]).unwrap();
    assert!(inter.is_ca && !inter.self_signed, "{inter:?}");
    assert_eq!(inter.common_name.as_deref(), Some("Kong Mesh Mesh default"));
    // The chain needs the intermediate: leaf alone to the root fails, naming the leaf's issuer.
    let err = x509::verify_chain_pem(&cert.certificate_pem, &[], &[&root]).unwrap_err();
    assert!(err.to_string().contains("Kong Mesh Mesh default"), "{err}");
    x509::verify_chain_pem(&cert.chain_pem(), &[], &[&root]).unwrap();
    let ca_chain = issuer.ca_chain().await.unwrap();
    assert_eq!(x509::pem_to_ders(&ca_chain).unwrap().len(), 2);
    eprintln!("seed_intermediate_ca: {:?}", t0.elapsed());
}

/// HTTPS dev server: caCert verifies it; serverName is what the certificate is checked against
/// (`localhost` passes, another name fails even though the address is 127.0.0.1, which the
/// certificate covers); a wrong caCert fails the TLS handshake; skipVerify needs no caCert.
#[tokio::test]
async fn tls_ca_cert_server_name_and_skip_verify() {
    let t0 = Instant::now();
    let bao = BaoServer::start_tls().await.unwrap();
    assert!(bao.addr().starts_with("https://127.0.0.1:"));
    let admin = bao.admin();
    let pki = "kmesh-pki-tls";
    seed::setup_root_ca(&admin, MESH, pki).unwrap();
    seed::create_role(
        &admin,
        pki,
        "dataplane-proxies",
        &RoleOptions::seed_ec(MESH),
    )
    .unwrap();
    let token = seed::create_policy_and_token(&admin, MESH, pki, "dataplane-proxies").unwrap();
    let mut secrets = SecretMap::default();
    secrets.insert(MESH, "sec-1", bao.ca_pem().unwrap().as_bytes().to_vec());
    let (other_ca, _) = rcgen_ca("Some Other CA");
    secrets.insert(MESH, "other-ca", other_ca.pem().into_bytes());

    let with_tls = |tls: VaultTls| FromCp {
        tls: Some(tls),
        ..token_conf(&bao.addr(), pki, "dataplane-proxies", &token)
    };
    let ca = |name: &str| Some(DataSource::secret(name));

    // caCert.
    let conf = with_tls(VaultTls {
        ca_cert: ca("sec-1"),
        ..Default::default()
    });
    assert_ok(&check_backend(MESH, &backend(&conf, "24h"), &secrets).await);

    // caCert from a file, serverName localhost.
    let conf = with_tls(VaultTls {
        ca_cert: Some(DataSource::file(bao.ca_file().unwrap().to_str().unwrap())),
        server_name: "localhost".into(),
        ..Default::default()
    });
    assert_ok(&check_backend(MESH, &backend(&conf, "24h"), &secrets).await);

    // serverName the certificate does not cover.
    let conf = with_tls(VaultTls {
        ca_cert: ca("sec-1"),
        server_name: "vault.example.com".into(),
        ..Default::default()
    });
    let report = check_backend(MESH, &backend(&conf, "24h"), &secrets).await;
    assert_refused(
        &report,
        "connect",
        &[
            "TLS with Vault at https://127.0.0.1:",
            "not valid for name \"vault.example.com\"",
            "serverName",
        ],
    );
    assert!(!report.unreachable);
    assert_eq!(
        check(&report, "connect").field.as_deref(),
        Some("conf.fromCp.tls")
    );

    // A caCert that did not sign the server's certificate.
    let conf = with_tls(VaultTls {
        ca_cert: ca("other-ca"),
        ..Default::default()
    });
    let report = check_backend(MESH, &backend(&conf, "24h"), &secrets).await;
    assert_refused(
        &report,
        "connect",
        &[
            "TLS with Vault",
            "not signed by a trusted CA",
            "UnknownIssuer",
            "caCert",
        ],
    );
    let issuer = connect(MESH, &conf, &secrets).await.unwrap();
    let err = issuer
        .issue(&IssueRequest {
            uri_sans: vec![],
            common_name: None,
            ttl: Duration::from_secs(60),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Tls { .. }), "{err:?}");

    // No caCert: the system roots do not know the dev CA.
    let conf = with_tls(VaultTls::default());
    let report = check_backend(MESH, &backend(&conf, "24h"), &secrets).await;
    assert_refused(&report, "connect", &["TLS with Vault"]);

    // A caCert that is not PEM.
    secrets.insert(MESH, "garbage", b"not a certificate".to_vec());
    let conf = with_tls(VaultTls {
        ca_cert: ca("garbage"),
        ..Default::default()
    });
    let report = check_backend(MESH, &backend(&conf, "24h"), &secrets).await;
    assert_refused(&report, "conf", &["conf.fromCp.tls.caCert"]);

    // skipVerify without caCert.
    let conf = with_tls(VaultTls {
        skip_verify: true,
        ..Default::default()
    });
    assert_ok(&check_backend(MESH, &backend(&conf, "24h"), &secrets).await);
    eprintln!(
        "tls_ca_cert_server_name_and_skip_verify: {:?}",
        t0.elapsed()
    );
}

/// `auth.tls`: cert auth enabled in OpenBao trusting a client CA, the control plane logs in at
/// auth/cert/login with clientCert/clientKey (key from a Secret, certificate from a file) over
/// HTTPS verified with caCert. A certificate from another CA, and one without a CN, are refused.
#[tokio::test]
async fn tls_client_certificate_auth() {
    let t0 = Instant::now();
    let bao = BaoServer::start_tls().await.unwrap();
    let admin = bao.admin();
    let pki = "kmesh-pki-default";
    seed::setup_root_ca(&admin, MESH, pki).unwrap();
    seed::create_role(
        &admin,
        pki,
        "dataplane-proxies",
        &RoleOptions::seed_ec(MESH),
    )
    .unwrap();
    let policy = seed::write_policy(&admin, MESH, pki, "dataplane-proxies").unwrap();
    let (client_ca, client_issuer) = rcgen_ca("Control Plane Clients");
    seed::enable_cert_auth(&admin, "kmesh-cp", &client_ca.pem(), &policy).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut secrets = SecretMap::default();
    secrets.insert(MESH, "sec-1", bao.ca_pem().unwrap().as_bytes().to_vec());
    let conf_for = |secrets: &mut SecretMap, name: &str, cert: (String, String)| {
        let cert_path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&cert_path, &cert.0).unwrap();
        secrets.insert(MESH, &format!("{name}-key"), cert.1.into_bytes());
        FromCp {
            address: bao.addr(),
            pki: pki.into(),
            role: "dataplane-proxies".into(),
            common_name: r#"{{ tag "kuma.io/service" }}.mesh"#.into(),
            tls: Some(VaultTls {
                ca_cert: Some(DataSource::secret("sec-1")),
                ..Default::default()
            }),
            auth: Some(VaultAuth {
                tls: Some(VaultAuthTls {
                    client_key: Some(DataSource::secret(&format!("{name}-key"))),
                    client_cert: Some(DataSource::file(cert_path.to_str().unwrap())),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    };

    let good = conf_for(
        &mut secrets,
        "cp",
        rcgen_client(&client_issuer, Some("kmesh-cp")),
    );
    let report = check_backend(MESH, &backend(&good, "24h"), &secrets).await;
    assert_ok(&report);
    assert!(
        check(&report, "auth")
            .detail
            .contains("logged in at auth/cert/login")
    );
    let issuer = connect(MESH, &good, &secrets).await.unwrap();
    let cert = issuer
        .issue(&IssueRequest {
            uri_sans: vec!["spiffe://default/web".into()],
            common_name: None,
            ttl: Duration::from_secs(600),
        })
        .await
        .unwrap();
    assert_eq!(
        cert.summary().unwrap().uri_sans,
        vec!["spiffe://default/web".to_string()]
    );

    // A client certificate from a CA that cert auth does not trust.
    let (_, stranger) = rcgen_ca("Stranger CA");
    let bad = conf_for(
        &mut secrets,
        "stranger",
        rcgen_client(&stranger, Some("kmesh-cp")),
    );
    let report = check_backend(MESH, &backend(&bad, "24h"), &secrets).await;
    assert_refused(
        &report,
        "auth",
        &["refused the TLS client certificate login on auth/cert/login"],
    );
    assert_eq!(
        check(&report, "auth").field.as_deref(),
        Some("conf.fromCp.auth.tls")
    );
    let err = connect(MESH, &bad, &secrets).await.unwrap_err();
    assert!(matches!(err, VaultError::LoginRefused { .. }), "{err:?}");

    // A trusted client certificate with URI SANs only and no CN: OpenBao answers 500.
    let no_cn = conf_for(&mut secrets, "nocn", rcgen_client(&client_issuer, None));
    let report = check_backend(MESH, &backend(&no_cn, "24h"), &secrets).await;
    assert_refused(&report, "auth", &["missing name in alias", "common name"]);

    // Key and certificate that do not belong together are refused before any request.
    let mut mismatched = good.clone();
    mismatched
        .auth
        .as_mut()
        .unwrap()
        .tls
        .as_mut()
        .unwrap()
        .client_key = Some(DataSource::secret("stranger-key"));
    let report = check_backend(MESH, &backend(&mismatched, "24h"), &secrets).await;
    assert_refused(
        &report,
        "conf",
        &["conf.fromCp.auth.tls", "do not form a usable pair"],
    );
    eprintln!("tls_client_certificate_auth: {:?}", t0.elapsed());
}

/// `namespace`: a namespace with the PKI, role, policy and token inside it; requests carry
/// X-Vault-Namespace. Without the namespace the same conf is refused.
#[tokio::test]
async fn namespace() {
    let t0 = Instant::now();
    let bao = BaoServer::start().await.unwrap();
    let admin = bao.admin();
    seed::create_namespace(&admin, "team-a").unwrap();
    let ns: BaoCli = admin.namespace("team-a");
    let pki = "kmesh-pki-default";
    seed::setup_root_ca(&ns, MESH, pki).unwrap();
    seed::create_role(&ns, pki, "dataplane-proxies", &RoleOptions::seed_ec(MESH)).unwrap();
    let token = seed::create_policy_and_token(&ns, MESH, pki, "dataplane-proxies").unwrap();
    // Nothing at the root namespace.
    assert!(
        admin
            .run(&["read", &format!("{pki}/roles/dataplane-proxies")])
            .is_err()
    );

    let secrets = SecretMap::default();
    let conf = FromCp {
        namespace: "team-a".into(),
        ..token_conf(&bao.addr(), pki, "dataplane-proxies", &token)
    };
    let report = check_backend(MESH, &backend(&conf, "24h"), &secrets).await;
    assert_ok(&report);
    assert!(
        check(&report, "conf")
            .detail
            .contains("in namespace team-a")
    );

    let without = FromCp {
        namespace: String::new(),
        ..conf.clone()
    };
    let report = check_backend(MESH, &backend(&without, "24h"), &secrets).await;
    assert_refused(&report, "issue", &["permission denied"]);

    // With the root token the mount is simply not there outside the namespace.
    let root_conf = token_conf(&bao.addr(), pki, "dataplane-proxies", "root");
    let report = check_backend(MESH, &backend(&root_conf, "24h"), &secrets).await;
    assert_refused(
        &report,
        "issue",
        &["no PKI secrets engine at kmesh-pki-default"],
    );
    eprintln!("namespace: {:?}", t0.elapsed());
}

/// `agentAddress`: a real `bao agent` (auto-auth with the page's token, `use_auto_auth_token`)
/// in front of the server; the conf has no auth at all and the check passes through the agent.
#[tokio::test]
async fn agent_address() {
    let t0 = Instant::now();
    let bao = BaoServer::start().await.unwrap();
    let admin = bao.admin();
    let pki = "kmesh-pki-default";
    seed::setup_root_ca(&admin, MESH, pki).unwrap();
    seed::create_role(
        &admin,
        pki,
        "dataplane-proxies",
        &RoleOptions::seed_ec(MESH),
    )
    .unwrap();
    let token = seed::create_policy_and_token(&admin, MESH, pki, "dataplane-proxies").unwrap();
    let agent = bao.start_agent(&token).await.unwrap();

    let conf = FromCp {
        address: bao.addr(),
        agent_address: agent.addr(),
        pki: pki.into(),
        role: "dataplane-proxies".into(),
        ..Default::default()
    };
    let secrets = SecretMap::default();
    let report = check_backend(MESH, &backend(&conf, "24h"), &secrets).await;
    assert_ok(&report);
    assert!(
        check(&report, "auth").detail.contains("Vault Agent"),
        "{report:#?}"
    );
    assert!(check(&report, "conf").detail.contains(&agent.addr()));

    // The same conf straight at the server, without a token, is refused.
    let direct = FromCp {
        agent_address: String::new(),
        ..conf.clone()
    };
    let report = check_backend(MESH, &backend(&direct, "24h"), &secrets).await;
    assert_refused(&report, "conf", &["conf.fromCp.auth"]);
    eprintln!("agent_address: {:?}", t0.elapsed());
}

/// One refusal per failure, each with its reason, against one server: wrong token, a token whose
/// policy is for another role, missing mount, unknown role, URI SAN not allowed, common name not
/// allowed, TTL truncated by max_ttl, missing serverAuth / clientAuth, sealed, unreachable.
#[tokio::test]
async fn refusals() {
    let t0 = Instant::now();
    let mut bao = BaoServer::start().await.unwrap();
    let admin = bao.admin();
    let addr = bao.addr();
    let pki = "kmesh-pki-refusals";
    seed::setup_root_ca(&admin, MESH, pki).unwrap();
    let roles = [
        ("ok", RoleOptions::seed_ec(MESH)),
        (
            "other-uris",
            RoleOptions::seed_ec(MESH).allowed_uri_sans("spiffe://other/*"),
        ),
        ("no-server", RoleOptions::seed_ec(MESH).server_flag(false)),
        ("no-client", RoleOptions::seed_ec(MESH).client_flag(false)),
    ];
    for (name, opts) in &roles {
        seed::create_role(&admin, pki, name, opts).unwrap();
    }
    let token = seed::create_policy_and_token(&admin, MESH, pki, "ok").unwrap();
    let secrets = SecretMap::default();
    let run = |conf: FromCp, expiration: &'static str| {
        let secrets = secrets.clone();
        async move { check_backend(MESH, &backend(&conf, expiration), &secrets).await }
    };

    // Baseline.
    assert_ok(&run(token_conf(&addr, pki, "ok", &token), "24h").await);

    // Wrong token.
    let report = run(token_conf(&addr, pki, "ok", "s.not-a-real-token"), "24h").await;
    assert_refused(
        &report,
        "issue",
        &[
            &format!("Vault at {addr} refused the token: permission denied"),
            "policy allows update on kmesh-pki-refusals/issue/ok",
        ],
    );
    assert_eq!(
        check(&report, "issue").field.as_deref(),
        Some("conf.fromCp.auth")
    );
    assert!(!report.summary().contains("s.not-a-real-token"));

    // A valid token whose policy covers another role.
    let report = run(token_conf(&addr, pki, "no-server", &token), "24h").await;
    assert_refused(
        &report,
        "issue",
        &["permission denied", "kmesh-pki-refusals/issue/no-server"],
    );

    // Missing mount.
    let report = run(token_conf(&addr, "kmesh-pki-nope", "ok", "root"), "24h").await;
    assert_refused(
        &report,
        "issue",
        &[
            "no PKI secrets engine at kmesh-pki-nope",
            "kmesh-pki-nope/issue/ok",
            "conf.fromCp.pki",
        ],
    );
    assert_eq!(
        check(&report, "issue").field.as_deref(),
        Some("conf.fromCp.pki")
    );

    // Unknown role.
    let report = run(token_conf(&addr, pki, "nope", "root"), "24h").await;
    assert_refused(
        &report,
        "issue",
        &["has no role \"nope\"", "conf.fromCp.role"],
    );

    // URI SANs not allowed by the role.
    let report = run(token_conf(&addr, pki, "other-uris", "root"), "24h").await;
    assert_refused(
        &report,
        "issue",
        &[
            "role other-uris of kmesh-pki-refusals does not allow the URI SANs",
            "spiffe://default/kmesh-ca-check",
            "URI Subject Alternative Names were provided via the API which are not valid for this role",
            "allowed_uri_sans",
        ],
    );

    // Common name not allowed by the role (allowed_domains=mesh).
    let conf = FromCp {
        common_name: r#"{{ tag "kuma.io/service" }}.example.com"#.into(),
        ..token_conf(&addr, pki, "ok", &token)
    };
    let report = run(conf, "24h").await;
    assert_refused(
        &report,
        "issue",
        &[
            "does not allow the common name \"kmesh-ca-check.example.com\"",
            "allowed_domains",
        ],
    );
    assert_eq!(
        check(&report, "issue").field.as_deref(),
        Some("conf.fromCp.commonName")
    );

    // A commonName template that does not render.
    let conf = FromCp {
        common_name: r#"{{ tag "version" }}.mesh"#.into(),
        ..token_conf(&addr, pki, "ok", &token)
    };
    let report = run(conf, "24h").await;
    assert_refused(&report, "issue", &["conf.fromCp.commonName"]);

    // TTL above the role's max_ttl: Vault truncates silently (200 with a warning).
    let report = run(token_conf(&addr, pki, "ok", &token), "1000h").await;
    assert_refused(
        &report,
        "lifetime",
        &[
            "Vault issued a certificate valid for 720h but dpCert.rotation.expiration asks for 1000h",
            "max_ttl",
            r#"TTL "1000h0m0s" is longer than permitted maxTTL "720h0m0s""#,
        ],
    );
    assert_eq!(
        check(&report, "lifetime").field.as_deref(),
        Some("dpCert.rotation.expiration")
    );
    assert!(
        report.warnings.iter().any(|w| w.contains("maxTTL")),
        "{:?}",
        report.warnings
    );
    // The other checks of that certificate still ran and passed.
    assert!(check(&report, "extendedKeyUsage").passed && check(&report, "chain").passed);

    // Missing serverAuth / clientAuth.
    let report = run(token_conf(&addr, pki, "no-server", "root"), "24h").await;
    assert_refused(
        &report,
        "extendedKeyUsage",
        &["serverAuth", "server_flag=true", "role no-server"],
    );
    assert!(
        !check(&report, "extendedKeyUsage")
            .detail
            .contains("client_flag")
    );
    let report = run(token_conf(&addr, pki, "no-client", "root"), "24h").await;
    assert_refused(
        &report,
        "extendedKeyUsage",
        &["clientAuth", "client_flag=true"],
    );

    // The issuer's own errors are classified.
    let issuer = connect(MESH, &token_conf(&addr, pki, "nope", "root"), &secrets)
        .await
        .unwrap();
    let req = IssueRequest {
        uri_sans: vec!["spiffe://default/x".into()],
        common_name: None,
        ttl: Duration::from_secs(60),
    };
    let err = issuer.issue(&req).await.unwrap_err();
    assert!(
        matches!(&err, VaultError::UnknownRole { role, .. } if role == "nope"),
        "{err:?}"
    );

    // Sealed.
    let ok_issuer = connect(MESH, &token_conf(&addr, pki, "ok", &token), &secrets)
        .await
        .unwrap();
    admin.run(&["operator", "seal"]).unwrap();
    let report = run(token_conf(&addr, pki, "ok", &token), "24h").await;
    assert_refused(&report, "connect", &["sealed"]);
    assert!(report.unreachable);
    let err = ok_issuer.issue(&req).await.unwrap_err();
    assert!(matches!(err, VaultError::Sealed { .. }), "{err:?}");

    // Unreachable: the server is gone.
    bao.stop();
    let report = run(token_conf(&addr, pki, "ok", &token), "24h").await;
    assert_refused(
        &report,
        "connect",
        &[
            &format!("cannot reach Vault at {addr}"),
            "conf.fromCp.address",
        ],
    );
    assert!(report.unreachable);
    let err = ok_issuer.issue(&req).await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");

    // Back on the same address: a dev server forgets everything on restart.
    bao.start_again().await.unwrap();
    assert_eq!(bao.addr(), addr);
    let report = run(token_conf(&addr, pki, "ok", "root"), "24h").await;
    assert_refused(
        &report,
        "issue",
        &["no PKI secrets engine at kmesh-pki-refusals"],
    );
    eprintln!("refusals: {:?}", t0.elapsed());
}

/// The conf step: a missing Secret, a non-vault backend, both auth methods.
#[tokio::test]
async fn conf_refusals() {
    let secrets = SecretMap::default();
    let be = seed_backend("http://127.0.0.1:1", "p", "r", "24h");
    let report = check_backend(MESH, &be, &secrets).await;
    assert_refused(
        &report,
        "conf",
        &["conf.fromCp.auth.token", "secret \"token-1\" not found"],
    );

    let mut conf = token_conf("http://127.0.0.1:1", "p", "r", "t");
    conf.auth.as_mut().unwrap().tls = Some(VaultAuthTls::default());
    let report = check_backend(MESH, &backend(&conf, "24h"), &secrets).await;
    assert_refused(&report, "conf", &["exactly one of token, tls"]);

    let builtin: Backend =
        serde_json::from_value(serde_json::json!({"name": "b", "type": "builtin"})).unwrap();
    let report = check_backend(MESH, &builtin, &secrets).await;
    assert_refused(&report, "conf", &["not vault"]);
}
