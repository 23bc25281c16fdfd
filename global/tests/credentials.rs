//! Credentials, with the real binaries: the admin token on every write and secret read, zone token
//! refusals logged once per reason, no secret in any log or API answer of a full scenario, private
//! files 0600, TLS 1.2 at least on every TLS listener (the HTTPS API included), and idle or slow
//! HTTP clients, or HTTPS clients that never start their handshake, cut off.
//! (What global/tests/api.rs, global/tests/sync.rs and zone/tests/proxy.rs already prove is not
//! repeated here: see the notes on each test.)

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use testkit::cluster::{Cluster, ClusterOptions};
use testkit::cluster::{GlobalProc, ProxySpec, ZoneProc};
use testkit::proc::run_bounded;
use testkit::wait::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Everything a client can see of global's state (admin view).
async fn snapshot(g: &GlobalProc) -> Vec<Value> {
    let meshes = g.api.get_ok("/meshes").await.unwrap();
    let mut out = vec![meshes.clone()];
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

/// `api.rs` covers PUT /meshes without and with a wrong token, and GET of the secret list and
/// DELETE of a mesh without one. This covers every other write and secret read, with every kind of
/// bad credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_and_secret_read_needs_the_exact_admin_token() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    let admin = std::fs::read_to_string(g.admin_token_file())
        .unwrap()
        .trim()
        .to_string();
    g.apply("type: Mesh\nname: default\n---\ntype: Secret\nmesh: default\nname: s1\ndata: c2VjcmV0LXZhbHVlLTE=\n")
        .await
        .unwrap();
    let zone_token = g
        .api
        .write_ok(reqwest::Method::POST, "/tokens/zone", r#"{"zone":"east"}"#)
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let before = snapshot(&g).await;

    let mut last = admin.clone();
    last.pop();
    let credentials: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("wrong", Some("Bearer wrong".into())),
        ("empty bearer", Some("Bearer ".into())),
        (
            "admin token minus a character",
            Some(format!("Bearer {last}")),
        ),
        (
            "admin token plus a character",
            Some(format!("Bearer {admin}x")),
        ),
        ("admin token as Basic", Some(format!("Basic {admin}"))),
        ("admin token without scheme", Some(admin.clone())),
        ("a zone token", Some(format!("Bearer {zone_token}"))),
    ];
    let requests: Vec<(reqwest::Method, &str, &str)> = vec![
        (
            reqwest::Method::PUT,
            "/meshes/other",
            "type: Mesh\nname: other\n",
        ),
        (
            reqwest::Method::PUT,
            "/meshes/default",
            "type: Mesh\nname: default\nlabels:\n  a: b\n",
        ),
        (
            reqwest::Method::PUT,
            "/meshes/default/secrets/s1",
            "type: Secret\nmesh: default\nname: s1\ndata: YQ==\n",
        ),
        (
            reqwest::Method::PUT,
            "/meshes/default/secrets/s2",
            "type: Secret\nmesh: default\nname: s2\ndata: YQ==\n",
        ),
        (reqwest::Method::DELETE, "/meshes/default/secrets/s1", ""),
        (reqwest::Method::DELETE, "/meshes/default", ""),
        (reqwest::Method::POST, "/apply", "type: Mesh\nname: other\n"),
        (
            reqwest::Method::POST,
            "/apply?dryRun=true",
            "type: Mesh\nname: other\n",
        ),
        (reqwest::Method::GET, "/meshes/default/secrets", ""),
        (reqwest::Method::GET, "/meshes/default/secrets/s1", ""),
        (reqwest::Method::POST, "/tokens/zone", r#"{"zone":"west"}"#),
        (
            reqwest::Method::POST,
            "/tokens/dataplane",
            r#"{"mesh":"default","name":"web-1","service":"web"}"#,
        ),
    ];
    let http = reqwest::Client::new();
    for (what, auth) in &credentials {
        for (method, path, body) in &requests {
            let mut req = http
                .request(method.clone(), format!("{}{path}", g.api_url()))
                .header("content-type", "application/yaml")
                .body(body.to_string());
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert_eq!(status, 401, "{what}: {method} {path}: {text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["status"], 401, "{text}");
            assert!(
                !text.contains("token\":\"ey"),
                "{what}: {method} {path} gave a token: {text}"
            );
            assert!(!text.contains(&admin), "the answer holds the admin token");
        }
    }
    assert_eq!(
        snapshot(&g).await,
        before,
        "a refused request changed the store"
    );
    // The right token still works, and the refusals did not log the tokens presented.
    assert_eq!(
        g.api.get("/meshes/default/secrets/s1").await.unwrap().0,
        200
    );
    let log = std::fs::read_to_string(&g.proc.log).unwrap();
    assert!(
        !log.contains(&admin[..admin.len() - 1]),
        "admin token in the log"
    );
    assert!(!log.contains(&zone_token), "zone token in the log");
}

/// `sync.rs` proves the three refusals and that the forged one is logged once. This proves the
/// expired and another-zone refusals are logged once too, after several reconnect attempts each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_other_zone_tokens_are_refused_and_logged_once_each() {
    use global::tokens::{Claims, TokenSigner, ZONE_SCOPE, ZoneClaim};
    let tmp = tempfile::tempdir().unwrap();
    let gdir = tmp.path().join("global");
    let g = GlobalProc::start(&gdir).await.unwrap();
    let expired = TokenSigner::load_or_create(&gdir).unwrap().sign(&Claims {
        scope: ZONE_SCOPE.into(),
        iat: 1_000,
        exp: 2_000,
        jti: "x".into(),
        body: ZoneClaim {
            zone: "late".into(),
        },
    });
    let expired_file = tmp.path().join("late.token");
    std::fs::write(&expired_file, &expired).unwrap();
    let west = g.zone_token_file("west", tmp.path()).await.unwrap();
    let z1 = ZoneProc::start("late", &g, &expired_file, &tmp.path().join("late"))
        .await
        .unwrap();
    let z2 = ZoneProc::start("intruder", &g, &west, &tmp.path().join("intruder"))
        .await
        .unwrap();
    // Several attempts each (the counter counts every one).
    wait_until(
        "three refusals of each zone",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let text = g.api.get_text("/metrics").await.ok()?;
            let count = |reason: &str| {
                text.lines()
                    .find(|l| {
                        l.starts_with(&format!(
                            "kmesh_sync_auth_refusals_total{{reason=\"{reason}\"}}"
                        ))
                    })
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|n| n.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            (count("expired") >= 3.0 && count("wrong_zone") >= 3.0).then_some(())
        },
    )
    .await
    .unwrap();
    let log = std::fs::read_to_string(&g.proc.log).unwrap();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sync stream refused"))
        .collect();
    let expired_lines = refused.iter().filter(|l| l.contains("expired")).count();
    let wrong_lines = refused
        .iter()
        .filter(|l| {
            l.contains("issued for zone \\\"west\\\"") || l.contains("issued for zone \"west\"")
        })
        .count();
    assert_eq!(expired_lines, 1, "{}", refused.join("\n"));
    assert_eq!(wrong_lines, 1, "{}", refused.join("\n"));
    // Neither token is in any log.
    for (name, dir) in [("late", &z1.dir), ("intruder", &z2.dir)] {
        let zlog = std::fs::read_to_string(dir.join("zone.log")).unwrap();
        assert!(zlog.contains("unauthenticated"), "{name}: {zlog}");
        let west_token = std::fs::read_to_string(&west).unwrap();
        for t in [&expired, &west_token] {
            assert!(
                !zlog.contains(t.as_str()) && !log.contains(t.as_str()),
                "{name}: a token in a log"
            );
        }
    }
    let zones = g.api.get_ok("/zones").await.unwrap();
    assert_eq!(zones["total"], 0, "{zones}");
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The base64 body lines of a PEM block (what would leak if a key leaked).
fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        .map(str::to_string)
        .collect()
}

/// Opens a TCP connection to `port` and sends `bytes` one per second (none when empty); returns
/// how long until the server closed it (or `None` if still open after `limit`).
async fn time_to_close(port: u16, bytes: &'static [u8], limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    while started.elapsed() < limit {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue, // a 408 before the close
            Err(_) => {}
        }
        if sent < bytes.len() {
            if s.write_all(&bytes[sent..sent + 1]).await.is_err() {
                return Some(started.elapsed());
            }
            sent += 1;
        }
    }
    None
}

fn openssl(port: u16, version: &str) -> (bool, String) {
    let mut cmd = std::process::Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        version,
        // Let the client offer old versions at all (OpenSSL 3 refuses them by default): the
        // refusal must come from the server.
        "-cipher",
        "DEFAULT@SECLEVEL=0",
    ]);
    let out = run_bounded(cmd, Duration::from_secs(15)).unwrap();
    let text = out.text();
    let ok =
        out.code == Some(0) && text.contains("Cipher is") && !text.contains("Cipher is (NONE)");
    (ok, text)
}

/// A full scenario (OpenBao, global, a zone, two proxies with Vault identities): no Vault token,
/// Secret value, token or private key in any log or API answer; private files 0600; TLS 1.2 at
/// least on the KDS and dp listeners; idle and slow HTTP clients of both APIs disconnected.
/// (A proxy asking for another dataplane's identity is refused in zone/tests/proxy.rs; request
/// body limits are in hostile.rs and api.rs; sync message limits in sync.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_scenario_leaks_nothing_keeps_keys_private_and_cuts_slow_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut c = Cluster::start(
        root,
        ClusterOptions {
            zones: 1,
            ec_role: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Slow clients first: they take the longest, and run while the rest goes on.
    let gport = c.global.api_port;
    let zport = c.zones[0].api_port;
    let limit = Duration::from_secs(25);
    let slow = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let timers = [
        (
            "global idle",
            tokio::spawn(time_to_close(gport, b"", limit)),
        ),
        (
            "global slow headers",
            tokio::spawn(time_to_close(gport, slow, limit)),
        ),
        (
            "global HTTPS, no TLS handshake",
            tokio::spawn(time_to_close(c.global.api_tls_port, b"", limit)),
        ),
        ("zone idle", tokio::spawn(time_to_close(zport, b"", limit))),
        (
            "zone slow headers",
            tokio::spawn(time_to_close(zport, slow, limit)),
        ),
    ];

    c.wait_mesh_in_zones("default", Duration::from_secs(30))
        .await
        .unwrap();
    for name in ["web-1", "backend-1"] {
        let service = name.trim_end_matches("-1");
        c.start_proxy("zone-1", &ProxySpec::new("default", name, service))
            .await
            .unwrap();
    }
    for p in c.proxies.iter_mut() {
        p.wait_identity(Duration::from_secs(60), "a first identity", |_| true)
            .await
            .unwrap();
    }

    // ---- what must never be shown ----
    let vault = c.vault.as_ref().unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut secrets: Vec<(String, String)> = vec![
        ("vault token".into(), vault.token.clone()),
        ("vault token (base64)".into(), b64(&vault.token)),
        (
            "vault root token".into(),
            vault.server.root_token().to_string(),
        ),
        (
            "admin token".into(),
            std::fs::read_to_string(c.global.admin_token_file())
                .unwrap()
                .trim()
                .to_string(),
        ),
    ];
    for f in testkit::leaks::files_under(&root.join("tokens")) {
        let t = std::fs::read_to_string(&f).unwrap();
        secrets.push((format!("token {}", f.display()), t.trim().to_string()));
    }
    let mut key_files = Vec::new();
    for p in &c.proxies {
        key_files.push(p.file("key.pem"));
    }
    key_files.push(c.global.dir.join("token-signing-key.pem"));
    for f in testkit::leaks::files_under(root) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name == "key.pem" && !key_files.contains(&f) {
            key_files.push(f);
        }
    }
    for f in &key_files {
        let pem = std::fs::read_to_string(f).unwrap();
        for (i, line) in pem_body_lines(&pem).into_iter().enumerate() {
            secrets.push((format!("{} line {i}", f.display()), line));
        }
    }
    assert!(secrets.len() > 10, "{secrets:?}");

    // Answers: everything both APIs show, plus refusals that quote a Vault conf.
    let mut answers: Vec<(String, String)> = Vec::new();
    let g = &c.global;
    for path in [
        "/meshes",
        "/meshes/default",
        "/meshes/default/secrets",
        "/meshes/default/secrets/token-1",
        "/meshes/default/dataplanes",
        "/zones",
        "/zones/zone-1",
        "/metrics",
    ] {
        answers.push((
            format!("global {path}"),
            g.api.get_text(path).await.unwrap(),
        ));
    }
    let z = &c.zones[0];
    for path in [
        "/meshes",
        "/meshes/default",
        "/status",
        "/dataplanes",
        "/metrics",
    ] {
        answers.push((format!("zone {path}"), z.api.get_text(path).await.unwrap()));
    }
    let mesh_yaml = testkit::cluster::vault_mesh_yaml(&vault.addr(), &vault.token, "24h");
    // A dry run of the real Mesh (the check runs against Vault), a refused one with the token
    // inline and a bad field, and one whose Vault refuses the token.
    let (_, v) = g
        .api
        .send(reqwest::Method::POST, "/apply?dryRun=true", &mesh_yaml)
        .await
        .unwrap();
    answers.push(("dry run".into(), v.to_string()));
    let inline = mesh_yaml
        .replace("secret: token-1", &format!("inlineString: {}", vault.token))
        .replace("pki: kmesh-pki-default", "pki: [bad]");
    let (status, v) = g
        .api
        .send(reqwest::Method::POST, "/apply", &inline)
        .await
        .unwrap();
    assert_eq!(status, 400, "{v}");
    answers.push(("refused inline token".into(), v.to_string()));
    // (With the Mesh changed too: a changed token Secret alone does not re-run the check.)
    let wrong =
        testkit::cluster::vault_mesh_yaml(&vault.addr(), &format!("{}x", vault.token), "23h");
    let (status, v) = g
        .api
        .send(reqwest::Method::POST, "/apply", &wrong)
        .await
        .unwrap();
    assert!(status >= 400, "{v}");
    answers.push(("refused wrong token".into(), v.to_string()));
    for args in [
        vec!["get", "meshes"],
        vec!["get", "meshes", "-o", "yaml"],
        vec!["get", "secrets", "--mesh", "default"],
        vec!["get", "secrets", "--mesh", "default", "-o", "json"],
    ] {
        let out = g.cli(&args).unwrap();
        answers.push((format!("global {}", args.join(" ")), out.text()));
    }

    // ---- idle and slow clients ----
    // (Awaited before anything is stopped, so that a close is the server's doing.)
    let bound = common::limits::HTTP_HEADER_READ_TIMEOUT + Duration::from_secs(3);
    for (what, t) in timers {
        let closed = t.await.unwrap();
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open after {limit:?}"));
        assert!(
            closed <= bound,
            "{what}: closed after {closed:?}, bound {bound:?}"
        );
        eprintln!("{what}: closed after {closed:?}");
    }

    // ---- TLS 1.2 at least ----
    for (what, port) in [
        ("KDS", c.global.kds_port),
        ("dp", c.zones[0].dp_port),
        ("HTTPS API", c.global.api_tls_port),
    ] {
        let (ok, text) = openssl(port, "-tls1_1");
        assert!(!ok, "{what} accepted TLS 1.1:\n{text}");
        let (ok, text) = openssl(port, "-tls1");
        assert!(!ok, "{what} accepted TLS 1.0:\n{text}");
        let (ok, text) = openssl(port, "-tls1_2");
        assert!(
            ok && text.contains("TLSv1.2"),
            "{what} refused TLS 1.2:\n{text}"
        );
        let (ok, text) = openssl(port, "-tls1_3");
        assert!(
            ok && text.contains("TLSv1.3"),
            "{what} refused TLS 1.3:\n{text}"
        );
    }

    // Stop everything so the logs are complete, then read every log.
    for p in c.proxies.iter_mut() {
        p.proc.stop(Duration::from_secs(5));
    }
    for z in c.zones.iter_mut() {
        z.proc.stop(Duration::from_secs(5));
    }
    let logs = testkit::leaks::logs_under(root);
    assert!(
        logs.len() >= 4,
        "{:?}",
        logs.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
    // The one search of every log and answer (zone/tests/vault_auth.rs runs it with AppRole and
    // JWT credentials and login tokens).
    let shown: Vec<(String, String)> = answers.iter().chain(logs.iter()).cloned().collect();
    let leaks = testkit::leaks::find(&secrets, &shown);
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
    eprintln!(
        "{} secret values looked for in {} answers and {} logs",
        secrets.len(),
        answers.len(),
        logs.len()
    );

    // ---- private files ----
    let mut private = vec![
        c.global.admin_token_file(),
        c.global.dir.join("token-signing-key.pem"),
    ];
    private.extend(key_files.iter().cloned());
    for f in testkit::leaks::files_under(root) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".token") || name.contains("key") && name.ends_with(".pem") {
            private.push(f);
        }
    }
    private.sort();
    private.dedup();
    // The KDS and dp TLS keys, and each proxy's key.
    let keys = private
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "key.pem"))
        .count();
    assert!(keys >= 4, "{private:?}");
    for f in &private {
        assert_eq!(mode(f), 0o600, "{} is {:o}", f.display(), mode(f));
    }
}

/// The sync server's message bound (`limits::SYNC_MESSAGE_BYTES`): an authenticated zone sending a
/// bigger message gets its stream ended with an error, and global goes on. (The bound on what
/// global sends is in sync.rs; request bodies in hostile.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_server_refuses_messages_over_its_bound() {
    use proto::kds::zone_sync_client::ZoneSyncClient;
    use proto::kds::{self, ZoneMessage, zone_message};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    let token_file = g.zone_token_file("east", tmp.path()).await.unwrap();
    let token = std::fs::read_to_string(token_file).unwrap();
    let ca = std::fs::read(g.ca_file()).unwrap();
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", g.kds_port))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .domain_name("127.0.0.1")
                .ca_certificate(Certificate::from_pem(ca)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ZoneSyncClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token.trim()).parse().unwrap(),
    );
    request
        .metadata_mut()
        .insert("x-zone-name", "east".parse().unwrap());
    let subscribe = |detail: Option<String>| ZoneMessage {
        message: Some(zone_message::Message::Request(kds::DiscoveryRequest {
            r#type: "Mesh".into(),
            error_detail: detail.map(|message| kds::ErrorDetail { code: 3, message }),
            ..Default::default()
        })),
    };
    tx.send(subscribe(None)).await.unwrap();
    let mut stream = client.sync(request).await.unwrap().into_inner();
    let limit = common::limits::SYNC_MESSAGE_BYTES;
    tx.send(subscribe(Some("x".repeat(limit + 1024))))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        }
    })
    .await
    .expect("the stream did not end after an oversized message");
    if let Some(status) = ended {
        assert_ne!(status.code(), tonic::Code::Ok, "{status:?}");
    }
    // Global dropped the zone for that message, said why, and goes on.
    let log = wait_until(
        "global to log the oversized message",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let log = std::fs::read_to_string(&g.proc.log).ok()?;
            log.contains("message length too large").then_some(log)
        },
    )
    .await
    .unwrap();
    assert!(log.contains("zone disconnected"), "{log}");
    let zone = g.api.get_ok("/zones/east").await.unwrap();
    assert_eq!(zone["online"], false, "{zone}");
    // Global goes on.
    assert_eq!(g.api.get("/healthz").await.unwrap().0, 200);
    let log = std::fs::read_to_string(&g.proc.log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}
