//! Proxies get their identity from their zone, end to end with the real binaries on loopback:
//! `global run`, two `zone run` and several `zone proxy` agents, and a real OpenBao set up with the
//! reference page's steps (EC role for speed).
//!
//! - Proxies in two zones get Vault certificates that `openssl verify` accepts against the
//!   agents' `ca.pem` and Vault's root, with the URI SANs `spiffe://default/<svc>` and
//!   `kuma://<tag>/<value>`, the rendered common name and the mesh's lifetime; `key.pem` is 0600.
//! - A real mTLS exchange (`openssl s_server -Verify 1 -verify_return_error` against
//!   `openssl s_client`) between a proxy of zone 1 and a proxy of zone 2 succeeds, and fails with a
//!   certificate from another mesh's (builtin) CA.
//! - Both control planes list the dataplanes (`GET /dataplanes`, `zone get dataplanes`,
//!   `GET /meshes/default/dataplanes`, `global get dataplanes`).
//! - A zone restarted with connected proxies: they reconnect, present their certificates and zero
//!   new certificates are issued (the restarted zone's `certificates_issued` counter stays 0).
//! - With a 20 s expiration the files are replaced before the certificate expires and `--exec`
//!   runs after each change.
//! - Dataplane tokens: missing, forged, expired, for another name, for another mesh, and a zone
//!   token are refused UNAUTHENTICATED with a clear message (logged once per cause); a zone
//!   restarted while global is down still verifies tokens with the keys it persisted.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::tokens::{Claims, DATAPLANE_SCOPE, DataplaneClaim, TokenSigner};
use testkit::bins::binary;
use testkit::cluster::*;
use testkit::openssl::{mtls_handshake, openssl_verify};
use testkit::proc::{logs, output_text};
use testkit::wait::{WAIT, wait_for, wait_for_at_most};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hex_serial(s: &str) -> String {
    s.replace(':', "").to_lowercase()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `openssl s_server` with the files of `server` against `openssl s_client` with those of
/// `client`: whether a request went through, and both outputs.
fn handshake(server: &Path, client: &Path) -> (bool, String) {
    let scratch = server.parent().unwrap();
    let h = mtls_handshake(server, client, scratch, Duration::from_secs(10)).unwrap();
    (h.ok, h.transcript)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_in_two_zones_get_vault_identities_talk_mtls_rotate_and_survive_a_zone_restart() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let vault = Vault::start(false, true).await.unwrap();
    let vault_root = root.join("vault-root.pem");
    std::fs::write(&vault_root, &vault.root_pem).unwrap();

    let global = GlobalProc::start_in(&root.join("global"), "info")
        .await
        .unwrap();
    let mesh = vault_mesh(&vault.server.addr(), "1h", "secret: token-1");
    global
        .apply(&format!(
            "{}---\n{mesh}---\n{}",
            token_secret(&vault.token),
            builtin_mesh_yaml("other", "1h")
        ))
        .await
        .unwrap();
    let mut z1 = ZoneProc::start_minted(
        "zone-1",
        &global,
        &root.join("zone-1"),
        ZoneOptions::in_dir(&root.join("zone-1"), "info,zone::dp=debug"),
    )
    .await
    .unwrap();
    let z2 = ZoneProc::start_minted(
        "zone-2",
        &global,
        &root.join("zone-2"),
        ZoneOptions::in_dir(&root.join("zone-2"), "info,zone::dp=debug"),
    )
    .await
    .unwrap();
    z1.wait_synced(&["default", "other"], WAIT).await.unwrap();
    z2.wait_synced(&["default", "other"], WAIT).await.unwrap();

    let marker = root.join("exec-web-1.log");
    let web = ProxyProc::start(
        &z1,
        &ProxySpec::new("default", "web-1", "web")
            .tag("version", "v1")
            .exec(&format!(
                "echo \"reload $KMESH_DATAPLANE\" >> {}",
                marker.display()
            ))
            .rust_log("info,zone::agent=debug"),
        &global
            .cli_dataplane_token_file("default", "web-1", root)
            .unwrap(),
        &root.join("web-1"),
    )
    .unwrap();
    let backend = ProxyProc::start(
        &z2,
        &ProxySpec::new("default", "backend-1", "backend").rust_log("info,zone::agent=debug"),
        &global
            .cli_dataplane_token_file("default", "backend-1", root)
            .unwrap(),
        &root.join("backend-1"),
    )
    .unwrap();
    let stranger = ProxyProc::start(
        &z2,
        &ProxySpec::new("other", "stranger-1", "backend").rust_log("info,zone::agent=debug"),
        &global
            .cli_dataplane_token_file("other", "stranger-1", root)
            .unwrap(),
        &root.join("stranger-1"),
    )
    .unwrap();
    let web_leaf = web.wait_leaf(root, None, WAIT).await.unwrap();
    let backend_leaf = backend.wait_leaf(root, None, WAIT).await.unwrap();
    stranger.wait_leaf(root, None, WAIT).await.unwrap();
    eprintln!(
        "3 proxies in 2 zones certified {:?} after the start",
        started.elapsed()
    );

    // Vault's certificates, as the page's role makes them.
    for p in [&web, &backend] {
        let ca = p.file("ca.pem");
        let cert = p.file("cert.pem");
        for anchor in [&ca, &vault_root] {
            let out = openssl_verify(anchor, &cert).unwrap();
            assert!(
                out.status.success() && output_text(&out).contains(": OK"),
                "openssl verify -CAfile {}: {}",
                anchor.display(),
                output_text(&out)
            );
        }
        assert_eq!(mode(&p.file("key.pem")), 0o600);
    }
    for uri in [
        "spiffe://default/web",
        "kuma://kuma.io/service/web",
        "kuma://version/v1",
    ] {
        assert!(
            web_leaf.uri_sans.iter().any(|u| u == uri),
            "{uri} missing: {:?}",
            web_leaf.uri_sans
        );
    }
    assert!(
        backend_leaf
            .uri_sans
            .iter()
            .any(|u| u == "spiffe://default/backend"),
        "{:?}",
        backend_leaf.uri_sans
    );
    assert_eq!(web_leaf.common_name.as_deref(), Some("web.mesh"));
    assert_eq!(backend_leaf.common_name.as_deref(), Some("backend.mesh"));
    let left = web_leaf.not_after - now();
    assert!(
        (3600 - 120..=3600 + 5).contains(&left),
        "a 1h certificate expires in {left}s"
    );
    assert!(web_leaf.client_auth && web_leaf.server_auth, "{web_leaf:?}");

    // mTLS between zone 1's and zone 2's proxies; another mesh's CA is refused.
    let (ok, out) = handshake(&web.out_dir, &backend.out_dir);
    assert!(ok, "web-1 (zone-1) <- backend-1 (zone-2) must work:\n{out}");
    let (ok, out) = handshake(&backend.out_dir, &web.out_dir);
    assert!(ok, "backend-1 (zone-2) <- web-1 (zone-1) must work:\n{out}");
    let (ok, out) = handshake(&web.out_dir, &stranger.out_dir);
    assert!(!ok, "a certificate of mesh other must be refused:\n{out}");
    assert!(
        out.contains("certificate") || out.contains("alert"),
        "the refusal is a certificate error:\n{out}"
    );

    // The zone's view, over the API and the CLI.
    let dps = z1.dataplanes().await.unwrap();
    let d = dps.iter().find(|d| d["name"] == "web-1").expect("web-1");
    assert_eq!(d["connected"], true, "{d}");
    assert_eq!(d["service"], "web");
    assert_eq!(d["backend"], "vault-1");
    assert_eq!(
        hex_serial(d["serial"].as_str().unwrap()),
        hex_serial(&web_leaf.serial)
    );
    let out = std::process::Command::new(binary("zone").unwrap())
        .args(["get", "dataplanes", "--api", &z1.url("")])
        .output()
        .unwrap();
    let table = output_text(&out);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("NAME") && table.contains("web-1") && table.contains("vault-1"),
        "{table}"
    );

    // Global's view: every zone's dataplanes of the mesh.
    let items = wait_for("global to list both dataplanes", root, || async {
        let (_, body) = global.api.get("/meshes/default/dataplanes").await.unwrap();
        let items = body["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 2 && items.iter().all(|d| d["certificate"]["serial"].is_string()))
            .then_some(items)
    })
    .await;
    let by_name = |n: &str| items.iter().find(|d| d["name"] == n).unwrap().clone();
    assert_eq!(by_name("web-1")["zone"], "zone-1");
    assert_eq!(by_name("backend-1")["zone"], "zone-2");
    assert_eq!(
        by_name("web-1")["networking"]["inbound"][0]["tags"]["version"],
        "v1"
    );
    assert_eq!(by_name("backend-1")["certificate"]["backend"], "vault-1");
    let out = global
        .cli_env(&["get", "dataplanes", "--mesh", "default"])
        .unwrap();
    let table = output_text(&out);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("web-1") && table.contains("zone-1") && table.contains("zone-2"),
        "{table}"
    );
    let (_, other) = global.api.get("/meshes/other/dataplanes").await.unwrap();
    assert_eq!(other["total"], 1, "{other}");

    // Zone 1 restarts under its connected proxy: the proxy reconnects, presents its certificate,
    // keeps it, and the new zone process issues nothing.
    let issued_before = z1.metric("kmesh_certificates_issued").await.unwrap();
    assert!(issued_before >= 1.0, "zone-1 issued {issued_before}");
    z1.terminate();
    z1.restart().await.unwrap();
    wait_for("web-1 to reconnect to the restarted zone", root, || async {
        let dps = z1.dataplanes().await.unwrap();
        dps.iter()
            .any(|d| d["name"] == "web-1" && d["connected"] == true)
            .then_some(())
    })
    .await;
    // Long enough for an issuance to have happened if one were going to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        z1.metric("kmesh_certificates_issued").await.unwrap(),
        0.0,
        "the restarted zone issued certificates\n{}",
        logs(root)
    );
    assert!(z1.metric("kmesh_certificates_reused").await.unwrap() >= 1.0);
    assert_eq!(
        web.leaf().unwrap().serial,
        web_leaf.serial,
        "the proxy kept its certificate"
    );
    let lines = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(lines.lines().count(), 1, "--exec ran once so far: {lines}");

    // A 20 s lifetime: the conf change rotates at once, then the files are replaced before the
    // certificate expires, and --exec runs after each change.
    global
        .apply(&vault_mesh(&vault.server.addr(), "20s", "secret: token-1"))
        .await
        .unwrap();
    let short = web
        .wait_leaf(root, Some(&web_leaf.serial), WAIT)
        .await
        .unwrap();
    let lifetime = short.not_after - now();
    assert!(
        (10..=21).contains(&lifetime),
        "a 20s certificate expires in {lifetime}s"
    );
    let renewed = wait_for_at_most(
        "the 20s certificate to be replaced",
        root,
        Duration::from_secs(25),
        || async { web.leaf().filter(|l| l.serial != short.serial) },
    )
    .await;
    let replaced_at = now();
    assert!(
        replaced_at < short.not_after,
        "replaced at {replaced_at}, after the expiry {}",
        short.not_after
    );
    eprintln!(
        "20s certificate replaced {}s before its expiry",
        short.not_after - replaced_at
    );
    assert!(renewed.not_after > short.not_after);
    wait_for("--exec after each change", root, || async {
        let lines = std::fs::read_to_string(&marker).unwrap_or_default();
        (lines.lines().count() >= 3 && lines.contains("reload web-1")).then_some(())
    })
    .await;
    // The rotated certificates still talk to each other across zones.
    backend
        .wait_leaf(root, Some(&backend_leaf.serial), WAIT)
        .await
        .unwrap();
    let (ok, out) = handshake(&web.out_dir, &backend.out_dir);
    assert!(ok, "after rotation:\n{out}");
    eprintln!("whole test: {:?}", started.elapsed());
}

/// Opens the identity stream with `token` and returns the first message or the refusal.
async fn open_stream(
    zone: &ZoneProc,
    token: Option<&str>,
    mesh: &str,
    name: &str,
) -> Result<proto::dpid::IdentityResponse, tonic::Status> {
    zone.identity_stream(token, mesh, name)
        .await
        .map(|(first, _)| first)
}

fn refused(r: Result<proto::dpid::IdentityResponse, tonic::Status>, what: &str, needle: &str) {
    match r {
        Ok(_) => panic!("{what}: accepted"),
        Err(s) => {
            // Not who it says (unauthenticated), or not allowed what it asks (permission denied).
            assert!(
                matches!(
                    s.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ),
                "{what}: {:?} {}",
                s.code(),
                s.message()
            );
            assert!(
                s.message().contains(needle),
                "{what}: {:?} lacks {needle:?}",
                s.message()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_tokens_are_checked_and_survive_a_zone_restart_without_global() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut global = GlobalProc::start_in(&root.join("global"), "info")
        .await
        .unwrap();
    global
        .apply(&format!(
            "{}---\n{}",
            builtin_mesh_yaml("default", "1h"),
            builtin_mesh_yaml("other", "1h")
        ))
        .await
        .unwrap();
    let mut zone = ZoneProc::start_minted(
        "zone-1",
        &global,
        &root.join("zone-1"),
        ZoneOptions::in_dir(&root.join("zone-1"), "info,zone::dp=debug"),
    )
    .await
    .unwrap();
    zone.wait_synced(&["default", "other"], WAIT).await.unwrap();
    let token = |mesh: &str, name: &str| {
        let path = global.cli_dataplane_token_file(mesh, name, root).unwrap();
        std::fs::read_to_string(path).unwrap().trim().to_string()
    };
    let good = token("default", "web-1");

    // The good token works: a bundle with a key.
    let bundle = open_stream(&zone, Some(&good), "default", "web-1")
        .await
        .expect("the good token is accepted");
    assert!(bundle.key_pem.is_some() && !bundle.cert_chain_pem.is_empty());

    refused(
        open_stream(&zone, None, "default", "web-1").await,
        "no token",
        "no dataplane token",
    );
    let forged = TokenSigner::generate().issue_dataplane_token(
        DataplaneClaim::bound("default", "web-1", "web"),
        Duration::from_secs(3600),
    );
    refused(
        open_stream(&zone, Some(&forged), "default", "web-1").await,
        "forged",
        "signature is invalid",
    );
    // Expired, signed with global's own key.
    let signer = TokenSigner::load_or_create(&global.dir).unwrap();
    let expired = signer.sign(&Claims {
        scope: DATAPLANE_SCOPE.to_string(),
        iat: now() as u64 - 7200,
        exp: now() as u64 - 3600,
        jti: "expired".into(),
        body: DataplaneClaim::bound("default", "web-1", "web"),
    });
    refused(
        open_stream(&zone, Some(&expired), "default", "web-1").await,
        "expired",
        "expired",
    );
    refused(
        open_stream(&zone, Some(&token("default", "web-2")), "default", "web-1").await,
        "another name",
        "issued for dataplane \"web-2\"",
    );
    refused(
        open_stream(&zone, Some(&token("other", "web-1")), "default", "web-1").await,
        "another mesh",
        "issued for mesh \"other\"",
    );
    // A token bound to another service, or to a tag the proxy does not register: refused.
    let bound = |args: &[&str], file: &str| {
        let mut all = vec!["dataplane-token", "--mesh", "default", "--name", "web-1"];
        all.extend_from_slice(args);
        let path = global.cli_token_file(&all, &root.join(file)).unwrap();
        std::fs::read_to_string(path).unwrap().trim().to_string()
    };
    refused(
        open_stream(
            &zone,
            Some(&bound(&["--service", "backend"], "backend.token")),
            "default",
            "web-1",
        )
        .await,
        "another service",
        "it grants service \"backend\", but this proxy registers service \"web\"",
    );
    refused(
        open_stream(
            &zone,
            Some(&bound(
                &["--service", "web", "--tag", "version=v2"],
                "v2.token",
            )),
            "default",
            "web-1",
        )
        .await,
        "a bound tag",
        "it binds tag version=\"v2\"",
    );
    let bundle = open_stream(
        &zone,
        Some(&bound(&["--service", "web"], "web.token")),
        "default",
        "web-1",
    )
    .await
    .expect("a token bound to the service it registers is accepted");
    assert!(!bundle.cert_chain_pem.is_empty());
    // A token made before tokens bound services (no service claim): works for its name, and
    // global lists the dataplane with a warning.
    let legacy = signer.sign(&Claims {
        scope: DATAPLANE_SCOPE.to_string(),
        iat: now() as u64,
        exp: now() as u64 + 3600,
        jti: "legacy".into(),
        body: DataplaneClaim {
            service: None,
            ..DataplaneClaim::bound("default", "web-1", "")
        },
    });
    let _bundle = open_stream(&zone, Some(&legacy), "default", "web-1")
        .await
        .expect("a legacy token still works for its name");
    let zone_token =
        std::fs::read_to_string(global.cli_zone_token_file("zone-9", root).unwrap()).unwrap();
    refused(
        open_stream(&zone, Some(zone_token.trim()), "default", "web-1").await,
        "a zone token",
        "scope",
    );

    // The agent with a token for another name: refused, retried with backoff, no files, and the
    // zone logs the cause once.
    let mut agent = ProxyProc::start(
        &zone,
        &ProxySpec::new("default", "web-1", "web").rust_log("info,zone::agent=debug"),
        &global
            .cli_dataplane_token_file("default", "web-3", root)
            .unwrap(),
        &root.join("agent"),
    )
    .unwrap();
    wait_for(
        "the zone to log the repeated refusal at debug level",
        root,
        || async {
            let log = std::fs::read_to_string(zone.dir.join("zone.log")).unwrap_or_default();
            log.contains("proxy refused again").then_some(())
        },
    )
    .await;
    let zone_log = std::fs::read_to_string(zone.dir.join("zone.log")).unwrap();
    let warned = zone_log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("proxy refused:") && l.contains("other_name"))
        .count();
    assert_eq!(warned, 1, "logged once:\n{zone_log}");
    let agent_log = agent.log();
    assert!(
        agent_log.contains("refused this proxy (unauthenticated)")
            && agent_log.contains("issued for dataplane \"web-3\""),
        "{agent_log}"
    );
    assert_eq!(
        agent_log.matches("cannot get an identity").count(),
        1,
        "the agent logs the state once: {agent_log}"
    );
    assert!(!agent.file("cert.pem").exists());
    agent.terminate();

    // Global goes away; the zone restarts: it verifies tokens with the keys it persisted.
    global.terminate();
    zone.terminate();
    zone.restart().await.unwrap();
    let bundle = open_stream(&zone, Some(&good), "default", "web-1")
        .await
        .expect("the good token is accepted by the restarted zone without global");
    assert!(!bundle.cert_chain_pem.is_empty());
    refused(
        open_stream(&zone, Some(&forged), "default", "web-1").await,
        "forged, without global",
        "signature is invalid",
    );
}
