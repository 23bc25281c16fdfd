//! `auth.approle` and `auth.jwt` end to end, with the real binaries and a real OpenBao whose raw
//! audit log says what reached it: four meshes — AppRole and JWT, each in the root namespace and
//! in a child namespace — admitted by global (which logs in to check each), a zone issuing 10 s
//! certificates to a proxy of each with login tokens of 20 s TTL and 40 s max TTL, for more than
//! three max TTLs. Meanwhile: the zone's token revoked (a 403: the zone logs in again at once and
//! no issuance fails), a secret ID rotated through its Secret (the old one destroyed), and a JWT
//! rotated in its file while Vault switches to the new signing key — both picked up without a
//! restart. Then: every proxy rotated throughout, no issuance failed, logins are bounded (the
//! zone's `kmesh_vault_logins_total` and Vault's audit log agree), and once the secret ID is
//! destroyed the zone's check at global says the login is refused and why, with one log line for
//! it however often the zone tries. No credential (role and secret IDs, JWTs, login tokens) is in
//! any log or API answer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::cluster::{
    GlobalOptions, GlobalProc, ProxyProc, ProxySpec, ZoneOptions, ZoneProc, secret_yaml,
    vault_auth_mesh,
};
use testkit::openbao::auth::{self, JwtSigner, MeshPki, TokenTtls};
use testkit::openbao::{BaoCli, BaoServer, audit, seed};
use testkit::wait::wait_until;

const NS: &str = "team-a";
const AUDIENCE: &str = "kmesh";
/// How long proxies are watched after their first certificate: more than three max TTLs.
const RUN: Duration = Duration::from_secs(130);
/// Certificates of 10 s: rotated every ~8 s.
const EXPIRATION: &str = "10s";
const LOG: &str = "info,zone=debug,global=debug,common=debug";

/// One mesh and the Vault login its backend uses.
struct Login {
    mesh: &'static str,
    /// The namespace's path in the audit log (`team-a/`; empty for the root namespace).
    ns_path: String,
    cli: BaoCli,
    method: &'static str,
    pki: MeshPki,
    /// AppRole: the role ID and the secret IDs made so far.
    role_id: String,
    secret_ids: Vec<String>,
    /// JWT: its file, and every JWT written to it.
    jwt_file: PathBuf,
    jwts: Vec<String>,
}

impl Login {
    fn yaml(&self, address: &str) -> String {
        let ns = self.ns_path.trim_end_matches('/');
        match self.method {
            "approle" => format!(
                "{}---\n{}---\n{}",
                vault_auth_mesh(
                    self.mesh,
                    address,
                    ns,
                    &self.pki.pki,
                    EXPIRATION,
                    "approle:\n  roleId: { secret: role-id }\n  secretId: { secret: secret-id }\n"
                ),
                secret_yaml(self.mesh, "role-id", &self.role_id),
                secret_yaml(self.mesh, "secret-id", self.secret_ids.last().unwrap())
            ),
            _ => vault_auth_mesh(
                self.mesh,
                address,
                ns,
                &self.pki.pki,
                EXPIRATION,
                &format!(
                    "jwt:\n  role: {}\n  token: {{ file: {} }}\n",
                    self.mesh,
                    self.jwt_file.display()
                ),
            ),
        }
    }

    /// Vault's successful logins for this backend so far (global's, the checks', the zone's).
    fn vault_logins(&self, audit_log: &Path) -> Vec<audit::AuditLogin> {
        audit::logins_at(audit_log, &self.ns_path, self.method)
            .unwrap()
            .into_iter()
            .filter(|l| l.ok)
            .collect()
    }

    /// Revokes every token a login of this backend got (the zone's current one among them).
    fn revoke_tokens(&self, audit_log: &Path) -> usize {
        let accessors: Vec<String> = self
            .vault_logins(audit_log)
            .into_iter()
            .filter_map(|l| l.accessor)
            .collect();
        auth::revoke_accessors(&self.cli, &accessors).unwrap()
    }
}

/// `kmesh_vault_logins_total` of `mesh` with `result` (ok or refused).
async fn zone_logins(zone: &ZoneProc, mesh: &str, result: &str) -> u64 {
    let text = zone.api.get_text("/metrics").await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("kmesh_vault_logins_total{"))
        .filter(|l| {
            l.contains(&format!("mesh=\"{mesh}\"")) && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until the zone logged in for `mesh` more than `before` times.
async fn wait_zone_login(zone: &ZoneProc, mesh: &str, before: u64, what: &str) {
    wait_until(
        what,
        Duration::from_secs(40),
        Duration::from_millis(200),
        || async { (zone_logins(zone, mesh, "ok").await > before).then_some(()) },
    )
    .await
    .unwrap();
}

/// The `vault` entry of `mesh` in global's `GET /zones/zone-1`.
async fn zone_check(g: &GlobalProc, mesh: &str) -> Option<Value> {
    let z = g.zone("zone-1").await.ok()?;
    z["vault"]
        .as_array()?
        .iter()
        .find(|c| c["mesh"] == mesh)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_and_jwt_logins_keep_issuing_past_their_max_ttl_in_root_and_child_namespaces() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let bao = BaoServer::start_audited().await.unwrap();
    let audit_log = bao.audit_log().unwrap().to_path_buf();
    let admin = bao.admin();
    seed::create_namespace(&admin, NS).unwrap();
    let ttls = TokenTtls::new("20s", "40s");
    let signer = JwtSigner::generate().unwrap();
    let creds = root.join("creds");
    std::fs::create_dir_all(&creds).unwrap();

    let mut logins: Vec<Login> = Vec::new();
    for (mesh, ns, method) in [
        ("approle-root", "", "approle"),
        ("approle-team", NS, "approle"),
        ("jwt-root", "", "jwt"),
        ("jwt-team", NS, "jwt"),
    ] {
        let cli = admin.namespace(ns);
        let pki = auth::mesh_pki(&cli, mesh).unwrap();
        let mut l = Login {
            mesh,
            ns_path: if ns.is_empty() {
                String::new()
            } else {
                format!("{ns}/")
            },
            method,
            pki,
            role_id: String::new(),
            secret_ids: Vec::new(),
            jwt_file: creds.join(format!("{mesh}.jwt")),
            jwts: Vec::new(),
            cli,
        };
        if method == "approle" {
            auth::create_approle(&l.cli, "approle", mesh, &[&l.pki.policy], &ttls).unwrap();
            l.role_id = auth::approle_role_id(&l.cli, "approle", mesh).unwrap();
            l.secret_ids
                .push(auth::approle_secret_id(&l.cli, "approle", mesh).unwrap());
        } else {
            auth::configure_jwt(&l.cli, "jwt", &[signer.public_pem()]).unwrap();
            auth::create_jwt_role(&l.cli, "jwt", mesh, AUDIENCE, &[&l.pki.policy], &ttls).unwrap();
            let jwt = signer
                .token(
                    &format!("zone-1.{mesh}"),
                    AUDIENCE,
                    Duration::from_secs(3600),
                )
                .unwrap();
            std::fs::write(&l.jwt_file, &jwt).unwrap();
            l.jwts.push(jwt);
        }
        logins.push(l);
    }

    // Global admits the four meshes (it logs in to check each); a zone and a proxy per mesh.
    let creds_arg = creds.display().to_string();
    let g = GlobalProc::start_with(
        &root.join("global"),
        GlobalOptions::default()
            .args(&["--data-source-dir", &creds_arg])
            .rust_log(LOG),
    )
    .await
    .unwrap();
    let stream: Vec<String> = logins.iter().map(|l| l.yaml(&bao.addr())).collect();
    let applied = g.apply(&stream.join("---\n")).await.unwrap();
    let mut answers: Vec<(String, String)> = vec![("apply".into(), applied.to_string())];
    let tokens = root.join("tokens");
    let zone_token = g.zone_token_file("zone-1", &tokens).await.unwrap();
    let zone = ZoneProc::start_opts(
        "zone-1",
        &g.kds_address(),
        &g.ca_file(),
        &zone_token,
        &root.join("zone-1"),
        ZoneOptions::default()
            .args(&["--data-source-dir", &creds_arg])
            .rust_log(LOG),
    )
    .await
    .unwrap();
    let mut proxies: Vec<ProxyProc> = Vec::new();
    for l in &logins {
        let name = format!("web-{}", l.mesh);
        let token = g
            .bound_dataplane_token_file(l.mesh, &name, "web", &tokens)
            .await
            .unwrap();
        let spec = ProxySpec::new(l.mesh, &name, "web");
        proxies.push(
            ProxyProc::start(&zone, &spec, &token, &root.join("proxies").join(&name)).unwrap(),
        );
    }
    for p in proxies.iter_mut() {
        p.wait_identity(Duration::from_secs(60), "a first identity", |id| {
            id.usable()
        })
        .await
        .unwrap();
    }
    let logins_at_start: Vec<u64> = {
        let mut v = Vec::new();
        for l in &logins {
            v.push(zone_logins(&zone, l.mesh, "ok").await);
        }
        v
    };
    eprintln!(
        "set up in {:?}; zone logins so far {logins_at_start:?}",
        started.elapsed()
    );

    // Watch the proxies for RUN, with three events on the way.
    let t0 = Instant::now();
    let mut serials: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut events = 0;
    while t0.elapsed() < RUN {
        for p in &proxies {
            if let Some(id) = p.identity().filter(|id| id.usable()) {
                serials
                    .entry(p.mesh.clone())
                    .or_default()
                    .insert(id.serial().to_string());
            }
        }
        let at = t0.elapsed();
        if events == 0 && at > Duration::from_secs(25) {
            // A 403: approle-root's tokens revoked; its next issuance logs in again at once.
            let revoked = logins[0].revoke_tokens(&audit_log);
            assert!(revoked >= 1, "nothing to revoke");
            events += 1;
            eprintln!("{at:?}: approle-root's token revoked");
        } else if events == 1 && at > Duration::from_secs(40) {
            // approle-team's secret ID rotated through its Secret; once the zone logged in with
            // it, the old one is destroyed and the tokens revoked: only the new one works now.
            let l = &mut logins[1];
            let before = zone_logins(&zone, l.mesh, "ok").await;
            let new = auth::approle_secret_id(&l.cli, "approle", l.mesh).unwrap();
            l.secret_ids.push(new.clone());
            g.apply(&secret_yaml(l.mesh, "secret-id", &new))
                .await
                .unwrap();
            wait_zone_login(
                &zone,
                l.mesh,
                before,
                "approle-team logged in with the new secret ID",
            )
            .await;
            auth::destroy_secret_id(&l.cli, "approle", l.mesh, &l.secret_ids[0]).unwrap();
            l.revoke_tokens(&audit_log);
            events += 1;
            eprintln!("{:?}: approle-team's secret ID rotated", t0.elapsed());
        } else if events == 2 && at > Duration::from_secs(60) {
            // jwt-root's JWT rotated in its file while Vault moves to the new signing key: the
            // zone reads the file again and logs in with it; then only the new key is trusted
            // and the tokens are revoked.
            let l = &mut logins[2];
            let next = JwtSigner::generate().unwrap();
            auth::configure_jwt(&l.cli, "jwt", &[signer.public_pem(), next.public_pem()]).unwrap();
            let before = zone_logins(&zone, l.mesh, "ok").await;
            let jwt = next
                .token(
                    &format!("zone-1.{}", l.mesh),
                    AUDIENCE,
                    Duration::from_secs(3600),
                )
                .unwrap();
            std::fs::write(&l.jwt_file, &jwt).unwrap();
            l.jwts.push(jwt);
            wait_zone_login(&zone, l.mesh, before, "jwt-root logged in with the new JWT").await;
            auth::configure_jwt(&l.cli, "jwt", &[next.public_pem()]).unwrap();
            l.revoke_tokens(&audit_log);
            events += 1;
            eprintln!("{:?}: jwt-root's JWT rotated", t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let run = t0.elapsed();
    assert_eq!(events, 3);

    // Every proxy rotated all along and holds a valid certificate of its mesh's CA.
    for (p, l) in proxies.iter().zip(&logins) {
        let seen = serials.get(l.mesh).map_or(0, BTreeSet::len);
        assert!(
            seen as u64 >= run.as_secs() / 10,
            "{}: {seen} certificates in {run:?}",
            l.mesh
        );
        let id = p.identity().unwrap();
        assert!(
            id.usable() && id.chains_to(&l.pki.root_pem),
            "{}",
            id.describe()
        );
    }
    // No issuance failed: no token ever lapsed, a 403 was answered by a login at once.
    let failed = zone.metric("kmesh_certificates_failed").await.unwrap();
    assert_eq!(
        failed,
        0.0,
        "{}",
        zone.api.get_text("/metrics").await.unwrap()
    );
    // The zone's checks, as global shows them: all ok.
    for l in &logins {
        let c = zone_check(&g, l.mesh).await.unwrap();
        assert_eq!(c["ok"], true, "{c}");
    }

    // Logins bounded: the zone's count, Vault's view of it.
    for (l, start) in logins.iter().zip(&logins_at_start) {
        let zone_ok = zone_logins(&zone, l.mesh, "ok").await;
        let zone_refused = zone_logins(&zone, l.mesh, "refused").await;
        let vault_ok = l.vault_logins(&audit_log).len() as u64;
        eprintln!(
            "{}: zone logins {zone_ok} ({} during the run), refused {zone_refused}; Vault saw {vault_ok} (with global's and the checks')",
            l.mesh,
            zone_ok - start
        );
        // A login at least every max TTL (40 s), at most one per capped renewal (~35 s), plus
        // the events' (a 403's, a new credential's, a rebuild's) and a little slack.
        let during = zone_ok - start;
        assert!(during >= run.as_secs() / 40, "{}: {during} logins", l.mesh);
        assert!(
            during <= run.as_secs() / 30 + 5,
            "{}: {during} logins",
            l.mesh
        );
        assert_eq!(zone_refused, 0, "{}", l.mesh);
        // Vault saw the zone's logins and a few more: global's admission (and its check of a
        // rotated Secret) and the zone's own check, each revoked after.
        assert!(
            (zone_ok..=zone_ok + 4).contains(&vault_ok),
            "{}: Vault saw {vault_ok}, the zone counted {zone_ok}",
            l.mesh
        );
    }

    // approle-root's secret ID destroyed and its tokens revoked: the zone's check at global says
    // the login is refused and why, and the zone says so once in its log.
    let l = &logins[0];
    auth::destroy_secret_id(&l.cli, "approle", l.mesh, &l.secret_ids[0]).unwrap();
    l.revoke_tokens(&audit_log);
    let refused_before = audit::logins_at(&audit_log, "", "approle")
        .unwrap()
        .iter()
        .filter(|l| !l.ok)
        .count();
    let check = wait_until(
        "the zone's check of approle-root failing at global",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            zone_check(&g, "approle-root")
                .await
                .filter(|c| c["ok"] == false)
        },
    )
    .await
    .unwrap();
    let error = check["error"].as_str().unwrap();
    assert!(
        error.contains("login refused by Vault: invalid role or secret ID"),
        "{check}"
    );
    // The zone keeps trying, with backoff, and says it once.
    wait_until(
        "three refused logins",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let refused = audit::logins_at(&audit_log, "", "approle")
                .unwrap()
                .iter()
                .filter(|l| !l.ok)
                .count();
            (refused >= refused_before + 3).then_some(())
        },
    )
    .await
    .unwrap();
    let zone_log = std::fs::read_to_string(zone.dir.join("zone.log")).unwrap();
    let lines: Vec<&str> = zone_log
        .lines()
        .filter(|line| line.contains("Vault login failed") && line.contains("approle-root"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("invalid role or secret ID"),
        "{}",
        lines[0]
    );

    // ---- no credential in any log or answer ----
    for path in [
        "/meshes",
        "/meshes/approle-root",
        "/meshes/approle-root/secrets",
        "/zones",
        "/zones/zone-1",
        "/metrics",
    ] {
        answers.push((
            format!("global {path}"),
            g.api.get_text(path).await.unwrap(),
        ));
    }
    for path in ["/meshes", "/status", "/dataplanes", "/metrics"] {
        answers.push((
            format!("zone {path}"),
            zone.api.get_text(path).await.unwrap(),
        ));
    }
    let mut zone = zone;
    let mut g = g;
    for p in proxies.iter_mut() {
        p.proc.stop(Duration::from_secs(5));
    }
    zone.proc.stop(Duration::from_secs(5));
    g.proc.stop(Duration::from_secs(5));
    let mut secrets: Vec<(String, String)> = Vec::new();
    for l in &logins {
        if !l.role_id.is_empty() {
            secrets.push((format!("{} role ID", l.mesh), l.role_id.clone()));
        }
        for (i, s) in l.secret_ids.iter().enumerate() {
            secrets.push((format!("{} secret ID {i}", l.mesh), s.clone()));
        }
        for (i, j) in l.jwts.iter().enumerate() {
            secrets.push((format!("{} JWT {i}", l.mesh), j.clone()));
            // Its signature alone, too.
            secrets.push((
                format!("{} JWT {i} signature", l.mesh),
                j.rsplit('.').next().unwrap().to_string(),
            ));
        }
    }
    let all_logins = audit::logins(&audit_log).unwrap();
    for (i, t) in all_logins
        .iter()
        .filter_map(|l| l.token.clone())
        .enumerate()
    {
        secrets.push((format!("login token {i}"), t));
    }
    assert!(secrets.len() >= 20, "{}", secrets.len());
    let logs = testkit::leaks::logs_under(root);
    assert!(
        logs.len() >= 6,
        "{:?}",
        logs.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
    answers.extend(logs);
    let leaks = testkit::leaks::find(&secrets, &answers);
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
    eprintln!(
        "{} credentials looked for in {} logs and answers; whole test {:?}",
        secrets.len(),
        answers.len(),
        started.elapsed()
    );
}
