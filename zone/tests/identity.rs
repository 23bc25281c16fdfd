//! The zone's identity engine in process, against a real OpenBao dev server (`testkit::openbao`)
//! set up with the reference page's Vault steps, and with builtin and provided CAs: certificates
//! verify (`openssl verify` and `common::x509::verify_chain`) with the right URI SANs, common name
//! and lifetime; conf, tag and backend changes re-issue; a backend switch keeps both CAs trusted
//! until every proxy is re-issued; a restarted zone keeps presented certificates (zero
//! issuances); a stopped Vault leaves certificates in place, shows as unreachable, is not hammered
//! (breaker), and recovery has no storm; 1,000 proxies at once stay within the concurrency limit;
//! a 20 s certificate rotates before it expires while the Vault token is renewed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::ca::{CaKeyPair, builtin_secret_names, generate_builtin_ca};
use common::model::{BuiltinConf, Dataplane, Inbound, Mesh, Networking, Resource, Secret};
use common::store::{Op, Store};
use common::x509;
use serde_json::{Value, json};
use testkit::openbao::seed::{self, RoleOptions};
use testkit::openbao::{BaoCli, BaoServer};
use zone::identity::{IdentityBundle, IdentityManager, IdentitySubscription, IssuanceConfig};
use zone::{ZoneConfig, ZoneCtx};

const PKI: &str = "kmesh-pki-default";
const ROLE: &str = "dataplane-proxies";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

struct Zone {
    ctx: Arc<ZoneCtx>,
    manager: Arc<IdentityManager>,
    stop: common::shutdown::Trigger,
    run: tokio::task::JoinHandle<()>,
}

async fn start_zone(dir: &Path, config: IssuanceConfig) -> Zone {
    let store = Store::open(
        dir,
        common::sealing::SecretsKey::for_data_dir(dir, None).unwrap(),
    )
    .expect("store opens");
    let zc = ZoneConfig::new(
        "zone-1",
        "grpcs://127.0.0.1:1",
        dir.join("zone-token"),
        dir.to_path_buf(),
    );
    let ctx = Arc::new(ZoneCtx::new(zc, store).unwrap());
    let manager = IdentityManager::new(ctx.clone(), config);
    let (stop, rx) = common::shutdown::Trigger::new();
    let run = tokio::spawn(manager.clone().run(rx));
    Zone {
        ctx,
        manager,
        stop,
        run,
    }
}

impl Zone {
    async fn put(&self, resources: Vec<Resource>) {
        self.ctx
            .store
            .write(resources.into_iter().map(Op::Put).collect())
            .await
            .unwrap();
    }

    async fn shutdown(self) {
        self.stop.fire();
        let _ = self.run.await;
        drop(self.manager);
        drop(self.ctx);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Waits until the zone's check of (mesh, backend) satisfies `f`.
    async fn wait_check(
        &self,
        mesh: &str,
        backend: &str,
        within: Duration,
        f: impl Fn(&proto::kds::BackendCheck) -> bool,
    ) -> proto::kds::BackendCheck {
        let deadline = Instant::now() + within;
        loop {
            let found = self
                .ctx
                .backend_checks()
                .iter()
                .find(|c| c.mesh == mesh && c.backend == backend)
                .cloned();
            if let Some(c) = &found
                && f(c)
            {
                return c.clone();
            }
            assert!(
                Instant::now() < deadline,
                "check of {mesh}/{backend} not as expected: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn dataplane(mesh: &str, name: &str, service: &str, extra: &[(&str, &str)]) -> Dataplane {
    let mut tags = BTreeMap::from([("kuma.io/service".to_string(), service.to_string())]);
    for (k, v) in extra {
        tags.insert(k.to_string(), v.to_string());
    }
    Dataplane {
        type_: "Dataplane".into(),
        name: name.into(),
        mesh: mesh.into(),
        labels: BTreeMap::new(),
        networking: Networking {
            address: "127.0.0.1".into(),
            inbound: vec![Inbound {
                port: Some(8080),
                tags,
            }],
        },
    }
}

/// Waits for the next bundle of a subscription.
async fn next_bundle(sub: &mut IdentitySubscription, within: Duration) -> Arc<IdentityBundle> {
    tokio::time::timeout(within, sub.updates.changed())
        .await
        .expect("a bundle in time")
        .expect("the subscription is open");
    sub.updates.borrow_and_update().clone().expect("a bundle")
}

fn vault_backend(name: &str, address: &str, expiration: &str, cn: &str, token: Value) -> Value {
    let mut from_cp = json!({
        "address": address,
        "pki": PKI,
        "role": ROLE,
        "auth": {"token": token},
    });
    if !cn.is_empty() {
        from_cp["commonName"] = json!(cn);
    }
    json!({
        "name": name,
        "type": "vault",
        "dpCert": {"rotation": {"expiration": expiration}},
        "conf": {"fromCp": from_cp},
    })
}

fn mesh(name: &str, enabled: &str, backends: Vec<Value>) -> Resource {
    let m: Mesh = serde_json::from_value(json!({
        "type": "Mesh",
        "name": name,
        "mtls": {"enabledBackend": enabled, "backends": backends},
    }))
    .unwrap();
    Resource::Mesh(m)
}

/// The reference page's Vault steps for `mesh`: a root (or intermediate) CA at `PKI`, the role
/// (`RoleOptions`), the policy and a token.
fn seed_vault(bao: &BaoServer, mesh: &str, role: &RoleOptions, intermediate: bool) -> String {
    let cli = bao.admin();
    if intermediate {
        seed::setup_intermediate_ca(&cli, mesh, PKI, "kmesh-root-ca").unwrap();
    } else {
        seed::setup_root_ca(&cli, mesh, PKI).unwrap();
    }
    seed::create_role(&cli, PKI, ROLE, role).unwrap();
    seed::create_policy_and_token(&cli, mesh, PKI, ROLE).unwrap()
}

/// `openssl verify` of a chain (leaf first) against a trust bundle.
fn openssl_verify(trust: &str, chain: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let leaf = dir.path().join("leaf.pem");
    let untrusted = dir.path().join("chain.pem");
    std::fs::write(&ca, trust).unwrap();
    let ders = x509::pem_to_ders(chain).unwrap();
    std::fs::write(&leaf, x509::der_to_pem(&ders[0])).unwrap();
    std::fs::write(&untrusted, chain).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(&ca)
        .arg("-untrusted")
        .arg(&untrusted)
        .arg(&leaf)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Checks what a proxy certificate must be: verifies to `trust` (ours and openssl), the key
/// matches, URI SANs exactly, the common name, and the lifetime.
fn assert_proxy_cert(
    b: &IdentityBundle,
    key: &str,
    mesh: &str,
    tags: &[(&str, &str)],
    cn: Option<&str>,
    lifetime: i64,
) {
    x509::verify_chain_pem(&b.cert_chain_pem, &[], &[&b.trust_bundle_pem])
        .unwrap_or_else(|e| panic!("chain does not verify: {e}"));
    openssl_verify(&b.trust_bundle_pem, &b.cert_chain_pem);
    assert!(x509::private_key_matches_cert(&b.cert_chain_pem, key));
    let s = x509::summarize_pem(&b.cert_chain_pem).unwrap();
    let service = tags
        .iter()
        .find(|(k, _)| *k == "kuma.io/service")
        .unwrap()
        .1;
    let mut want: Vec<String> = vec![format!("spiffe://{mesh}/{service}")];
    let mut sorted: Vec<&(&str, &str)> = tags.iter().collect();
    sorted.sort();
    want.extend(sorted.iter().map(|(k, v)| format!("kuma://{k}/{v}")));
    let mut got = s.uri_sans.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "URI SANs");
    assert_eq!(s.common_name.as_deref(), cn, "common name");
    assert!(s.server_auth && s.client_auth, "EKU serverAuth+clientAuth");
    let left = s.not_after - now_unix();
    assert!(
        (lifetime - 120..=lifetime + 5).contains(&left),
        "expires in {left}s, expected {lifetime}s"
    );
    assert_eq!(b.serial, s.serial);
    assert_eq!(b.not_after_unix, s.not_after);
}

fn metrics(zone: &Zone) -> String {
    zone.ctx.metrics.encode()
}

// ---------------------------------------------------------------------------------------------
// A counting HTTP proxy in front of OpenBao: measures how many issue requests are in flight.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Concurrency {
    now: Arc<AtomicU64>,
    max: Arc<AtomicU64>,
    issues: Arc<AtomicU64>,
}

async fn counting_proxy(target: String) -> (String, Concurrency) {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::response::Response;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let counts = Concurrency::default();
    let client = reqwest::Client::builder().build().unwrap();
    let c = counts.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let client = client.clone();
        let c = c.clone();
        let target = target.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let issue = parts.uri.path().contains("/issue/");
            let url = format!(
                "{target}{}",
                parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
            );
            let mut rb = client.request(parts.method.clone(), url).body(body);
            for (k, v) in parts.headers.iter() {
                if k != "host" && k != "content-length" {
                    rb = rb.header(k, v);
                }
            }
            if issue {
                c.issues.fetch_add(1, Ordering::SeqCst);
                let n = c.now.fetch_add(1, Ordering::SeqCst) + 1;
                c.max.fetch_max(n, Ordering::SeqCst);
            }
            let resp = rb.send().await;
            let out = match resp {
                Ok(r) => {
                    let status = r.status();
                    let ct = r.headers().get("content-type").cloned();
                    let bytes = r.bytes().await.unwrap_or_default();
                    let mut b = Response::builder().status(status);
                    if let Some(ct) = ct {
                        b = b.header("content-type", ct);
                    }
                    b.body(Body::from(bytes)).unwrap()
                }
                Err(_) => Response::builder().status(502).body(Body::empty()).unwrap(),
            };
            if issue {
                c.now.fetch_sub(1, Ordering::SeqCst);
            }
            out
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, counts)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The page's intermediate-CA setup with an EC role: certificates verify to Vault's root with
/// the right SANs, common name and lifetime; the zone's Vault check passes and is reported; a tag
/// change and a conf change re-issue; a token rotated in its Secret is picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_certificates_verify_and_follow_changes() {
    let started = Instant::now();
    let bao = BaoServer::start().await.unwrap();
    let token = seed_vault(&bao, "default", &RoleOptions::seed_ec("default"), true);
    let root = bao
        .cli(&["read", "-field=certificate", "kmesh-root-ca/cert/ca"])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let zone = start_zone(dir.path(), IssuanceConfig::default()).await;
    let cn = r#"{{ tag "kuma.io/service" }}.mesh"#;
    let backend = vault_backend(
        "vault-1",
        &bao.addr(),
        "24h",
        cn,
        json!({"secret": "token-1"}),
    );
    zone.put(vec![
        Resource::Secret(Secret::new("default", "token-1", token.as_bytes())),
        mesh("default", "vault-1", vec![backend.clone()]),
    ])
    .await;

    let web_tags = [("kuma.io/service", "web"), ("version", "v1")];
    let mut web = zone
        .manager
        .connect(dataplane("default", "web-1", "web", &web_tags[1..]), None)
        .unwrap();
    let mut api = zone
        .manager
        .connect(dataplane("default", "api-1", "api", &[]), None)
        .unwrap();
    let w1 = next_bundle(&mut web, Duration::from_secs(10)).await;
    let a1 = next_bundle(&mut api, Duration::from_secs(10)).await;
    let w1_key = w1.key_pem.clone().expect("a new key");
    assert_proxy_cert(&w1, &w1_key, "default", &web_tags, Some("web.mesh"), 86_400);
    assert_proxy_cert(
        &a1,
        a1.key_pem.as_deref().unwrap(),
        "default",
        &[("kuma.io/service", "api")],
        Some("api.mesh"),
        86_400,
    );
    // The trust bundle is Vault's root, not the intermediate; the chain carries the intermediate.
    assert_eq!(w1.trust_bundle_pem.trim(), root.trim());
    assert_eq!(x509::pem_to_ders(&w1.cert_chain_pem).unwrap().len(), 2);
    assert_eq!(w1.backend, "vault-1");
    assert!(
        x509::summarize_pem(&w1.cert_chain_pem)
            .unwrap()
            .key_algorithm
            .starts_with("EC")
    );

    // The zone's own check passed and is reported, with the last issuance.
    let check = zone
        .wait_check("default", "vault-1", Duration::from_secs(10), |c| {
            c.ok && c.issued >= 2
        })
        .await;
    assert!(check.error.is_empty());
    assert!(check.last_issued_unix_ms > 0 && check.checked_at_unix_ms > 0);
    let views = zone.manager.dataplanes();
    assert_eq!(views.len(), 2);
    let wv = views.iter().find(|v| v.name == "web-1").unwrap();
    assert_eq!(wv.serial.as_deref(), Some(w1.serial.as_str()));
    assert_eq!(wv.backend.as_deref(), Some("vault-1"));
    assert_eq!(wv.tags["version"], "v1");
    assert!(wv.connected && wv.expiration.is_some());

    // New tags on reconnect (presenting the old certificate): a new certificate at once.
    drop(web);
    let v2_tags = [("kuma.io/service", "web"), ("version", "v2")];
    let mut web = zone
        .manager
        .connect(
            dataplane("default", "web-1", "web", &v2_tags[1..]),
            Some(w1.cert_chain_pem.clone()),
        )
        .unwrap();
    let w2 = next_bundle(&mut web, Duration::from_secs(10)).await;
    assert_ne!(w2.serial, w1.serial);
    assert_proxy_cert(
        &w2,
        w2.key_pem.as_deref().unwrap(),
        "default",
        &v2_tags,
        Some("web.mesh"),
        86_400,
    );
    assert!(metrics(&zone).contains("kmesh_certificate_rotations_total{cause=\"tags_change\"} 1"));

    // A token rotated in its Secret is picked up (the old one is revoked).
    let new_token =
        seed::create_token(&bao.admin(), &[&seed::policy_name("default", ROLE)]).unwrap();
    zone.put(vec![Resource::Secret(Secret::new(
        "default",
        "token-1",
        new_token.as_bytes(),
    ))])
    .await;
    bao.cli(&["token", "revoke", &token]).unwrap();
    let mut db = zone
        .manager
        .connect(dataplane("default", "db-1", "db", &[]), None)
        .unwrap();
    let d1 = next_bundle(&mut db, Duration::from_secs(10)).await;
    assert!(d1.key_pem.is_some());

    // A conf change (the commonName template): every connected proxy is re-issued.
    let cn2 = r#"{{ tag "kuma.io/service" }}.svc.mesh"#;
    let backend2 = vault_backend(
        "vault-1",
        &bao.addr(),
        "24h",
        cn2,
        json!({"secret": "token-1"}),
    );
    zone.put(vec![mesh("default", "vault-1", vec![backend2])])
        .await;
    for (sub, cn) in [
        (&mut web, "web.svc.mesh"),
        (&mut api, "api.svc.mesh"),
        (&mut db, "db.svc.mesh"),
    ] {
        let b = next_bundle(sub, Duration::from_secs(10)).await;
        let s = x509::summarize_pem(&b.cert_chain_pem).unwrap();
        assert_eq!(s.common_name.as_deref(), Some(cn));
    }
    let m = metrics(&zone);
    assert!(
        m.contains("kmesh_certificate_rotations_total{cause=\"backend_change\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("kmesh_certificates_issued_total{backend_type=\"vault\"} 7"),
        "{m}"
    );
    assert!(m.contains("kmesh_vault_request_duration_seconds_count"));
    assert_eq!(zone.manager.stats().failed, 0);
    eprintln!(
        "vault_certificates_verify_and_follow_changes: {:?}",
        started.elapsed()
    );
    zone.shutdown().await;
}

/// The page's root CA with the page's (RSA) role and a `file:` token: certificates verify; after
/// a zone restart the dataplanes are listed (disconnected), and proxies presenting their valid
/// certificates keep them: zero issuances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_rsa_role_and_restart_keeps_presented_certificates() {
    let started = Instant::now();
    let bao = BaoServer::start().await.unwrap();
    let token = seed_vault(&bao, "default", &RoleOptions::seed("default"), false);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let data = dir.path().join("zone");
    let resources = vec![mesh(
        "default",
        "vault-1",
        vec![vault_backend(
            "vault-1",
            &bao.addr(),
            "24h",
            r#"{{ tag "kuma.io/service" }}.mesh"#,
            json!({"file": token_file.display().to_string()}),
        )],
    )];
    let zone = start_zone(&data, IssuanceConfig::default()).await;
    zone.put(resources).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut sub = zone
            .manager
            .connect(
                dataplane("default", &format!("web-{i}"), "web", &[("zone", "z1")]),
                None,
            )
            .unwrap();
        let b = next_bundle(&mut sub, Duration::from_secs(20)).await;
        assert_proxy_cert(
            &b,
            b.key_pem.as_deref().unwrap(),
            "default",
            &[("kuma.io/service", "web"), ("zone", "z1")],
            Some("web.mesh"),
            86_400,
        );
        assert!(
            x509::summarize_pem(&b.cert_chain_pem)
                .unwrap()
                .key_algorithm
                .starts_with("RSA")
        );
        held.push((b, sub));
    }
    assert_eq!(zone.manager.stats().issued, 3);
    zone.shutdown().await;
    let held: Vec<Arc<IdentityBundle>> = held.into_iter().map(|(b, _)| b).collect();

    // Restart on the same data directory.
    let zone = start_zone(&data, IssuanceConfig::default()).await;
    let listed = zone.manager.dataplanes();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|v| !v.connected && v.serial.is_some()));
    let mut subs = Vec::new();
    for (i, old) in held.iter().enumerate() {
        let mut sub = zone
            .manager
            .connect(
                dataplane("default", &format!("web-{i}"), "web", &[("zone", "z1")]),
                Some(old.cert_chain_pem.clone()),
            )
            .unwrap();
        let b = next_bundle(&mut sub, Duration::from_secs(10)).await;
        assert_eq!(b.serial, old.serial, "the presented certificate is kept");
        assert!(b.key_pem.is_none(), "no new key");
        assert_eq!(b.cert_chain_pem, old.cert_chain_pem);
        assert_eq!(b.trust_bundle_pem, old.trust_bundle_pem);
        subs.push(sub);
    }
    let s = zone.manager.stats();
    assert_eq!(
        (s.attempts, s.issued, s.reused),
        (0, 0, 3),
        "zero new issuances"
    );
    assert!(metrics(&zone).contains("kmesh_certificates_reused_total 3"));
    // A certificate that does not match the proxy's tags is not kept.
    let mut other = zone
        .manager
        .connect(
            dataplane("default", "api-1", "api", &[]),
            Some(held[0].cert_chain_pem.clone()),
        )
        .unwrap();
    let b = next_bundle(&mut other, Duration::from_secs(20)).await;
    assert!(b.key_pem.is_some());
    assert_eq!(zone.manager.stats().issued, 1);
    eprintln!(
        "seed_rsa_role_and_restart_keeps_presented_certificates: {:?}",
        started.elapsed()
    );
    zone.shutdown().await;
}

fn ec_ca(cn: &str) -> CaKeyPair {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap();
    CaKeyPair::new(cert.pem(), key.serialize_pem())
}

fn builtin_secrets(mesh: &str, backend: &str) -> (CaKeyPair, Vec<Resource>) {
    let pair = generate_builtin_ca(mesh, &BuiltinConf::default()).unwrap();
    let (c, k) = builtin_secret_names(mesh, backend);
    let secrets = vec![
        Resource::Secret(Secret::new(mesh, &c, pair.cert_pem.as_bytes())),
        Resource::Secret(Secret::new(mesh, &k, pair.key_pem().as_bytes())),
    ];
    (pair, secrets)
}

/// builtin (CA from the synced Secrets) and provided (conf.cert/conf.key) backends: certificates
/// verify to the CA, with the right SANs and lifetime, and a fresh key each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_and_provided_backends_issue_locally() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let zone = start_zone(dir.path(), IssuanceConfig::default()).await;
    let (builtin, mut resources) = builtin_secrets("m-builtin", "ca-1");
    resources.push(mesh(
        "m-builtin",
        "ca-1",
        vec![json!({"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": "2h"}}})],
    ));
    let provided = ec_ca("Provided CA");
    resources.push(Resource::Secret(Secret::new(
        "m-provided",
        "ca-key",
        provided.key_pem().as_bytes(),
    )));
    resources.push(mesh(
        "m-provided",
        "ca-2",
        vec![json!({"name": "ca-2", "type": "provided",
            "dpCert": {"rotation": {"expiration": "1h"}},
            "conf": {"cert": {"inlineString": provided.cert_pem}, "key": {"secret": "ca-key"}}})],
    ));
    zone.put(resources).await;

    let tags = [("kuma.io/service", "web"), ("version", "v1")];
    let mut a = zone
        .manager
        .connect(dataplane("m-builtin", "web-1", "web", &tags[1..]), None)
        .unwrap();
    let mut b = zone
        .manager
        .connect(dataplane("m-builtin", "web-2", "web", &tags[1..]), None)
        .unwrap();
    let mut c = zone
        .manager
        .connect(dataplane("m-provided", "web-1", "web", &tags[1..]), None)
        .unwrap();
    let ba = next_bundle(&mut a, Duration::from_secs(10)).await;
    let bb = next_bundle(&mut b, Duration::from_secs(10)).await;
    let bc = next_bundle(&mut c, Duration::from_secs(10)).await;
    assert_proxy_cert(
        &ba,
        ba.key_pem.as_deref().unwrap(),
        "m-builtin",
        &tags,
        None,
        7200,
    );
    assert_proxy_cert(
        &bb,
        bb.key_pem.as_deref().unwrap(),
        "m-builtin",
        &tags,
        None,
        7200,
    );
    assert_proxy_cert(
        &bc,
        bc.key_pem.as_deref().unwrap(),
        "m-provided",
        &tags,
        None,
        3600,
    );
    assert_ne!(ba.key_pem, bb.key_pem, "a fresh key per certificate");
    assert_eq!(ba.trust_bundle_pem.trim(), builtin.cert_pem.trim());
    assert_eq!(bc.trust_bundle_pem.trim(), provided.cert_pem.trim());
    assert_eq!((ba.backend.as_str(), bc.backend.as_str()), ("ca-1", "ca-2"));
    // Another mesh's CA does not verify these certificates.
    assert!(x509::verify_chain_pem(&ba.cert_chain_pem, &[], &[&bc.trust_bundle_pem]).is_err());
    let m = metrics(&zone);
    assert!(m.contains("kmesh_certificates_issued_total{backend_type=\"builtin\"} 2"));
    assert!(m.contains("kmesh_certificates_issued_total{backend_type=\"provided\"} 1"));
    eprintln!(
        "builtin_and_provided_backends_issue_locally: {:?}",
        started.elapsed()
    );
    zone.shutdown().await;
}

/// `dpCert.uriSans: spiffe`: a proxy's certificate is an X.509-SVID (one URI SAN, the SPIFFE ID,
/// digitalSignature, not a CA); turning it on re-issues, and a proxy registering two services on
/// such a mesh is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_style_meshes_issue_x509_svids() {
    let dir = tempfile::tempdir().unwrap();
    let zone = start_zone(dir.path(), IssuanceConfig::default()).await;
    let (_, mut resources) = builtin_secrets("m-svid", "ca-1");
    let backend = |uri_sans: &str| {
        json!({"name": "ca-1", "type": "builtin",
            "dpCert": {"rotation": {"expiration": "1h"}, "uriSans": uri_sans}})
    };
    resources.push(mesh("m-svid", "ca-1", vec![backend("kuma")]));
    zone.put(resources).await;
    let mut a = zone
        .manager
        .connect(
            dataplane("m-svid", "web-1", "web", &[("version", "v1")]),
            None,
        )
        .unwrap();
    let kuma = next_bundle(&mut a, Duration::from_secs(10)).await;
    let s = x509::summarize_pem(&kuma.cert_chain_pem).unwrap();
    assert_eq!(s.uri_sans.len(), 3, "{:?}", s.uri_sans);
    zone.put(vec![mesh("m-svid", "ca-1", vec![backend("spiffe")])])
        .await;
    let svid = next_bundle(&mut a, Duration::from_secs(10)).await;
    assert_ne!(
        svid.serial, kuma.serial,
        "the new style means a new certificate"
    );
    let s = x509::summarize_pem(&svid.cert_chain_pem).unwrap();
    assert_eq!(s.uri_sans, vec!["spiffe://m-svid/web".to_string()]);
    assert!(!s.is_ca);
    assert!(s.key_usage.unwrap().contains(&"DigitalSignature"));
    let mut two = dataplane("m-svid", "web-2", "web", &[]);
    two.networking.inbound[0]
        .tags
        .insert("kuma.io/service".into(), "web".into());
    two.networking.inbound.push(Inbound {
        port: Some(8081),
        tags: BTreeMap::from([("kuma.io/service".to_string(), "api".to_string())]),
    });
    let _b = zone.manager.connect(two, None).unwrap();
    let row = testkit::wait::wait_for("the refusal", dir.path(), || async {
        zone.manager
            .dataplane("m-svid", "web-2")
            .filter(|d| d.last_error.is_some())
    })
    .await;
    assert!(
        row.last_error.unwrap().contains("exactly one SPIFFE ID"),
        "two services cannot make one SVID"
    );
    zone.shutdown().await;
}

/// vault -> builtin: every proxy is re-issued by the builtin CA; before the first builtin
/// certificate every proxy trusts both CAs, and once all hold builtin certificates only the
/// builtin CA is trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_vault_to_builtin_trusts_both_until_all_are_reissued() {
    let started = Instant::now();
    let bao = BaoServer::start().await.unwrap();
    let token = seed_vault(&bao, "default", &RoleOptions::seed_ec("default"), false);
    let dir = tempfile::tempdir().unwrap();
    let zone = start_zone(
        dir.path(),
        IssuanceConfig {
            max_concurrent: 2,
            trust_grace: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    let (builtin, mut resources) = builtin_secrets("default", "ca-1");
    let vault = vault_backend(
        "vault-1",
        &bao.addr(),
        "24h",
        "",
        json!({"inlineString": token}),
    );
    let local =
        json!({"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": "24h"}}});
    resources.push(mesh(
        "default",
        "vault-1",
        vec![vault.clone(), local.clone()],
    ));
    zone.put(resources).await;
    const N: usize = 20;
    let mut subs: Vec<IdentitySubscription> = (0..N)
        .map(|i| {
            zone.manager
                .connect(dataplane("default", &format!("p-{i}"), "svc", &[]), None)
                .unwrap()
        })
        .collect();
    let mut vault_root = String::new();
    for s in subs.iter_mut() {
        let b = next_bundle(s, Duration::from_secs(20)).await;
        assert_eq!(b.backend, "vault-1");
        vault_root = b.trust_bundle_pem.to_string();
    }
    let vault_cert = subs[0].updates.borrow().clone().unwrap();

    // Every bundle each proxy receives from now on, in order.
    let mut collectors = Vec::new();
    for mut s in subs {
        collectors.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(20), s.updates.changed()).await {
                    Ok(Ok(())) => {
                        let b = s.updates.borrow_and_update().clone().unwrap();
                        let done = b.backend == "ca-1"
                            && x509::pem_to_ders(&b.trust_bundle_pem).unwrap().len() == 1;
                        seen.push(b);
                        if done {
                            return (s, seen);
                        }
                    }
                    _ => panic!("no final bundle; got {} bundles", seen.len()),
                }
            }
        }));
    }
    zone.put(vec![mesh("default", "ca-1", vec![vault, local])])
        .await;
    let mut finals = Vec::new();
    for c in collectors {
        let (s, seen) = c.await.unwrap();
        let first_builtin = seen.iter().position(|b| b.backend == "ca-1").unwrap();
        // Before (or with) its first builtin certificate, the proxy trusted both CAs.
        assert!(
            seen[..=first_builtin].iter().any(|b| {
                b.trust_bundle_pem.contains(builtin.cert_pem.trim())
                    && b.trust_bundle_pem.contains(vault_root.trim())
            }),
            "a proxy got a builtin certificate without trusting both CAs first"
        );
        let fb = &seen[first_builtin];
        assert!(fb.key_pem.is_some());
        // Every new certificate, the last one's included, comes with a bundle that still trusts
        // the old CA (for `trust_grace`): old and new certificates both verify against it.
        x509::verify_chain_pem(&vault_cert.cert_chain_pem, &[], &[&fb.trust_bundle_pem])
            .unwrap_or_else(|e| {
                panic!(
                    "a builtin certificate came with a bundle that no longer trusts Vault's CA: {e}"
                )
            });
        x509::verify_chain_pem(&fb.cert_chain_pem, &[], &[&fb.trust_bundle_pem]).unwrap();
        finals.push((s, seen.last().unwrap().clone()));
    }
    for (_, last) in &finals {
        assert_eq!(last.backend, "ca-1");
        assert_eq!(last.trust_bundle_pem.trim(), builtin.cert_pem.trim());
        openssl_verify(&last.trust_bundle_pem, &last.cert_chain_pem);
    }
    let m = metrics(&zone);
    assert!(
        m.contains(&format!(
            "kmesh_certificate_rotations_total{{cause=\"backend_change\"}} {N}"
        )),
        "{m}"
    );
    eprintln!(
        "switching_vault_to_builtin_trusts_both_until_all_are_reissued: {:?}",
        started.elapsed()
    );
    zone.shutdown().await;
}

/// Vault stopped: proxies keep their certificates, the zone's check shows Vault unreachable with
/// the reason, new proxies' attempts are bounded by the breaker; Vault back (a new dev server,
/// set up again, with a new token in the token file): issuance resumes without a storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_outage_keeps_certificates_and_recovers_without_storm() {
    let started = Instant::now();
    let mut bao = BaoServer::start().await.unwrap();
    let token = seed_vault(&bao, "default", &RoleOptions::seed_ec("default"), false);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, &token).unwrap();
    let config = IssuanceConfig {
        max_concurrent: 4,
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_secs(2),
        vault_recheck: Duration::from_secs(1),
        ..Default::default()
    };
    let zone = start_zone(&dir.path().join("zone"), config).await;
    zone.put(vec![mesh(
        "default",
        "vault-1",
        vec![vault_backend(
            "vault-1",
            &bao.addr(),
            "24h",
            "",
            json!({"file": token_file.display().to_string()}),
        )],
    )])
    .await;
    let mut old: Vec<IdentitySubscription> = (0..10)
        .map(|i| {
            zone.manager
                .connect(dataplane("default", &format!("old-{i}"), "web", &[]), None)
                .unwrap()
        })
        .collect();
    let mut old_bundles = Vec::new();
    for s in old.iter_mut() {
        old_bundles.push(next_bundle(s, Duration::from_secs(10)).await);
    }
    zone.wait_check("default", "vault-1", Duration::from_secs(10), |c| c.ok)
        .await;

    bao.stop();
    let check = zone
        .wait_check("default", "vault-1", Duration::from_secs(10), |c| !c.ok)
        .await;
    assert!(
        check.error.contains("cannot reach Vault"),
        "{}",
        check.error
    );
    eprintln!("zone check while Vault is down: {}", check.error);

    let before = zone.manager.stats();
    let mut new: Vec<IdentitySubscription> = (0..30)
        .map(|i| {
            zone.manager
                .connect(dataplane("default", &format!("new-{i}"), "api", &[]), None)
                .unwrap()
        })
        .collect();
    let window = Duration::from_secs(8);
    tokio::time::sleep(window).await;
    let during = zone.manager.stats();
    let attempts = during.attempts - before.attempts;
    eprintln!(
        "attempts over {window:?} of outage with 30 proxies waiting: {attempts} (breaker opened {} time(s))",
        during.breaker_opened
    );
    // Before the breaker opens: threshold + (max_concurrent - 1); then one probe per cooldown.
    assert!(attempts <= 3 + 3 + 8 / 2 + 1, "attempts {attempts}");
    assert!(during.breaker_opened >= 1);
    // Open, or half-open while its one probe per cooldown is in flight: never closed.
    let state = zone.manager.breaker_state("default", "vault-1");
    assert!(matches!(state, "open" | "half-open"), "breaker {state}");
    // Nothing was sent to anyone: the old proxies keep their certificates.
    for (s, b) in old.iter().zip(&old_bundles) {
        assert!(!s.updates.has_changed().unwrap());
        assert_eq!(s.updates.borrow().as_ref().unwrap().serial, b.serial);
    }
    assert!(new.iter().all(|s| s.updates.borrow().is_none()));
    let v = zone.manager.dataplane("default", "new-7").unwrap();
    assert!(
        v.last_error.as_deref().unwrap_or("").contains("Vault"),
        "{v:?}"
    );
    let m = metrics(&zone);
    assert!(m.contains("kmesh_certificates_failed_total{reason=\"unreachable\"}"));
    assert!(m.contains("kmesh_ca_breaker_state{mesh=\"default\",backend=\"vault-1\"} 1"));

    // Vault back: a fresh dev server, set up again, with a new token in the token file.
    bao.start_again().await.unwrap();
    let new_token = seed_vault(&bao, "default", &RoleOptions::seed_ec("default"), false);
    let resumed = zone.manager.stats();
    std::fs::write(&token_file, &new_token).unwrap();
    let t = Instant::now();
    for s in new.iter_mut() {
        let b = next_bundle(s, Duration::from_secs(15)).await;
        x509::verify_chain_pem(&b.cert_chain_pem, &[], &[&b.trust_bundle_pem]).unwrap();
    }
    let after = zone.manager.stats();
    let recovery_attempts = after.attempts - resumed.attempts;
    eprintln!(
        "recovery: 30 proxies certified {:?} after the token was written, {recovery_attempts} attempts, max in flight {}",
        t.elapsed(),
        after.max_in_flight
    );
    assert!(
        recovery_attempts <= 30 + 4,
        "no storm: {recovery_attempts} attempts"
    );
    assert!(after.max_in_flight <= 4);
    zone.wait_check("default", "vault-1", Duration::from_secs(10), |c| c.ok)
        .await;
    // The old proxies kept their certificates; they now also trust the new Vault CA.
    for (s, b) in old.iter().zip(&old_bundles) {
        assert_eq!(s.updates.borrow().as_ref().unwrap().serial, b.serial);
    }
    eprintln!(
        "vault_outage_keeps_certificates_and_recovers_without_storm: {:?}",
        started.elapsed()
    );
    zone.shutdown().await;
}

/// 1,000 proxies connect at once, max_concurrent = 16 (EC role): all get certificates and Vault
/// never sees more than 16 issue requests at once. Also measured: raw OpenBao issuing 1,000
/// certificates through the same path at the same concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_proxies_at_once_within_the_concurrency_limit() {
    let bao = BaoServer::start().await.unwrap();
    let token = seed_vault(&bao, "default", &RoleOptions::seed_ec("default"), false);
    let (addr, counts) = counting_proxy(bao.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let zone = start_zone(
        dir.path(),
        IssuanceConfig {
            max_concurrent: 16,
            ..Default::default()
        },
    )
    .await;
    let backend = vault_backend(
        "vault-1",
        &addr,
        "24h",
        r#"{{ tag "kuma.io/service" }}.mesh"#,
        json!({"inlineString": token}),
    );
    zone.put(vec![mesh("default", "vault-1", vec![backend.clone()])])
        .await;
    zone.wait_check("default", "vault-1", Duration::from_secs(10), |c| c.ok)
        .await;
    counts.max.store(0, Ordering::SeqCst);
    counts.issues.store(0, Ordering::SeqCst);

    const N: usize = 1000;
    let t = Instant::now();
    let mut subs: Vec<IdentitySubscription> = (0..N)
        .map(|i| {
            zone.manager
                .connect(
                    dataplane(
                        "default",
                        &format!("p-{i}"),
                        &format!("svc-{}", i % 50),
                        &[],
                    ),
                    None,
                )
                .unwrap()
        })
        .collect();
    let registered = t.elapsed();
    for s in subs.iter_mut() {
        s.updates.wait_for(|b| b.is_some()).await.expect("a bundle");
    }
    let zone_time = t.elapsed();
    let zone_max = counts.max.load(Ordering::SeqCst);
    assert_eq!(counts.issues.load(Ordering::SeqCst), N as u64);
    assert!(zone_max <= 16, "Vault saw {zone_max} concurrent issues");
    assert!(zone_max >= 8, "the limit is used: {zone_max}");
    let stats = zone.manager.stats();
    assert_eq!((stats.issued, stats.attempts), (N as u64, N as u64));
    assert!(stats.max_in_flight <= 16);
    let b = subs[999].updates.borrow().clone().unwrap();
    x509::verify_chain_pem(&b.cert_chain_pem, &[], &[&b.trust_bundle_pem]).unwrap();

    // Raw OpenBao: 1,000 issues with the same role and concurrency, through the same proxy.
    let from_cp: common::model::FromCp =
        serde_json::from_value(backend["conf"]["fromCp"].clone()).unwrap();
    let secrets = common::datasource::SecretMap::default();
    let issuer = Arc::new(
        common::vault::VaultIssuer::connect(
            "default",
            &from_cp,
            &secrets,
            common::vault::Timeouts::default(),
        )
        .await
        .unwrap(),
    );
    counts.max.store(0, Ordering::SeqCst);
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let issuer = issuer.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= N as u64 {
                        return;
                    }
                    let svc = format!("svc-{}", i % 50);
                    let req = common::vault::IssueRequest {
                        uri_sans: vec![
                            format!("spiffe://default/{svc}"),
                            format!("kuma://kuma.io/service/{svc}"),
                        ],
                        common_name: Some(format!("{svc}.mesh")),
                        ttl: Duration::from_secs(86_400),
                    };
                    issuer.issue(&req).await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let raw_time = t.elapsed();
    eprintln!(
        "1,000 proxies (EC role, concurrency 16): zone {zone_time:?} (of which registering them {registered:?}; max {zone_max} in flight at Vault), raw OpenBao {raw_time:?} (max {} in flight): ratio {:.2}",
        counts.max.load(Ordering::SeqCst),
        zone_time.as_secs_f64() / raw_time.as_secs_f64()
    );
    zone.shutdown().await;
}

/// A 20 s certificate is replaced before it expires (at about 16 s), while the Vault token (TTL
/// 6 s, renewable) is kept alive by renew-self.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_certificates_rotate_before_expiry_with_a_renewed_token() {
    let started = Instant::now();
    let bao = BaoServer::start().await.unwrap();
    let cli: BaoCli = bao.admin();
    seed::setup_root_ca(&cli, "default", PKI).unwrap();
    seed::create_role(&cli, PKI, ROLE, &RoleOptions::seed_ec("default")).unwrap();
    let policy = seed::write_policy(&cli, "default", PKI, ROLE).unwrap();
    let out = cli
        .run_json(&[
            "token",
            "create",
            "-format=json",
            &format!("-policy={policy}"),
            "-ttl=6s",
            "-explicit-max-ttl=120s",
        ])
        .unwrap();
    let token = out["auth"]["client_token"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let zone = start_zone(dir.path(), IssuanceConfig::default()).await;
    zone.put(vec![mesh(
        "default",
        "vault-1",
        vec![vault_backend(
            "vault-1",
            &bao.addr(),
            "20s",
            "",
            json!({"inlineString": token}),
        )],
    )])
    .await;
    let mut sub = zone
        .manager
        .connect(dataplane("default", "web-1", "web", &[]), None)
        .unwrap();
    let b1 = next_bundle(&mut sub, Duration::from_secs(10)).await;
    let t1 = Instant::now();
    assert_proxy_cert(
        &b1,
        b1.key_pem.as_deref().unwrap(),
        "default",
        &[("kuma.io/service", "web")],
        None,
        20,
    );
    let b2 = next_bundle(&mut sub, Duration::from_secs(25)).await;
    let after = t1.elapsed();
    eprintln!("a 20 s certificate was replaced after {after:?}");
    assert!(
        after >= Duration::from_secs(14) && after <= Duration::from_secs(18),
        "{after:?}"
    );
    assert!(now_unix() < b1.not_after_unix, "replaced before expiry");
    assert_ne!(b2.serial, b1.serial);
    assert!(b2.key_pem.is_some());
    assert_proxy_cert(
        &b2,
        b2.key_pem.as_deref().unwrap(),
        "default",
        &[("kuma.io/service", "web")],
        None,
        20,
    );
    // The token's own TTL (6 s) ran out twice over: it was renewed.
    assert_eq!(zone.manager.stats().failed, 0);
    assert!(metrics(&zone).contains("kmesh_certificate_rotations_total{cause=\"expiry\"} 1"));
    eprintln!(
        "short_certificates_rotate_before_expiry_with_a_renewed_token: {:?}",
        started.elapsed()
    );
    zone.shutdown().await;
}
