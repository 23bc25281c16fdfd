//! The API over HTTPS (`global run --api-tls-addr`), with the real `global` binary and real TLS
//! handshakes: the generated certificate (its CA in `<data-dir>/api-ca.pem`, kept across
//! restarts and the same on every PostgreSQL replica; the listener's address and every
//! `--api-host` among its names) trusted by the real CLI with `--ca-file` and refused without it
//! with a message that names the URL and the way out; HTTP/1.1 and h2 negotiated by ALPN (checked
//! with `openssl s_client -alpn`) on the same routes, Host check and body limit as the plain
//! listener; an operator's certificate served instead, and a key that is not its own refused at
//! start; plain HTTP beyond loopback refused (exit 2) unless `--api-insecure-http`; a client that
//! connects and never starts its handshake dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use testkit::bins::binary;
use testkit::cluster::{GlobalOptions, GlobalProc, run_global};
use testkit::pki::OperatorPki;
use testkit::postgres::PgServer;
use tokio::io::AsyncReadExt;

const MESH: &str = "type: Mesh\nname: secure\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `global ARGS --api URL --admin-token-file ... [--ca-file CA]`, the real binary.
fn cli(g: &GlobalProc, url: &str, ca: Option<&Path>, args: &[&str]) -> testkit::proc::CmdOutput {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--api".into(), url.into(), "--admin-token-file".into()]);
    all.push(g.admin_token_file().display().to_string());
    if let Some(ca) = ca {
        all.extend(["--ca-file".into(), ca.display().to_string()]);
    }
    run_global(&all, Duration::from_secs(60)).unwrap()
}

/// `openssl s_client` to `port` offering `alpn`, trusting `ca`, asking for `servername`: its
/// output (the handshake's summary and the server's certificates).
fn s_client(port: u16, alpn: &str, ca: &Path, servername: &str) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-alpn", alpn, "-servername", servername, "-showcerts"])
        .arg("-CAfile")
        .arg(ca);
    let out = testkit::proc::run_bounded(cmd, Duration::from_secs(30)).unwrap();
    out.text()
}

/// The names (DNS and IP SANs) of the certificate the server presented, read from s_client's
/// output.
fn served_names(s_client_output: &str) -> Vec<String> {
    let begin = s_client_output
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate in {s_client_output}"));
    common::tls::certificate_names(&s_client_output[begin..]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_certificate_serves_the_cli_http1_and_h2_and_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = GlobalProc::start(&tmp.path().join("g")).await.unwrap();
    let ca = g.api_ca_file();
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let https = g.https_url();
    let mesh = write(tmp.path(), "mesh.yaml", MESH);

    // The CLI with the CA global wrote: apply and get over HTTPS.
    let out = cli(
        &g,
        &https,
        Some(&ca),
        &["apply", "-f", mesh.to_str().unwrap()],
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    let out = cli(&g, &https, Some(&ca), &["get", "meshes", "-o", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(out.stdout.contains("\"secure\""), "{}", out.text());
    // The same by the name localhost.
    let by_name = https.replace("127.0.0.1", "localhost");
    let out = cli(&g, &by_name, Some(&ca), &["get", "meshes"]);
    assert_eq!(out.code, Some(0), "{}", out.text());

    // Without --ca-file the certificate does not verify: exit 3, the URL and the way out said.
    let out = cli(&g, &https, None, &["get", "meshes"]);
    assert_eq!(out.code, Some(3), "{}", out.text());
    for part in [https.as_str(), "certificate", "--ca-file", "api-ca.pem"] {
        assert!(out.stderr.contains(part), "{part:?} not in {}", out.stderr);
    }
    // A CA file that is not one: a usage error naming it.
    let bogus = write(tmp.path(), "bogus.pem", "not a certificate");
    let out = cli(&g, &https, Some(&bogus), &["get", "meshes"]);
    assert_eq!(out.code, Some(2), "{}", out.text());
    assert!(out.stderr.contains("--ca-file"), "{}", out.stderr);

    // ALPN: h2 when offered, HTTP/1.1 otherwise, the chain verified with api-ca.pem.
    let h2 = s_client(g.api_tls_port, "h2", &ca, "localhost");
    assert!(h2.contains("ALPN protocol: h2"), "{h2}");
    assert!(h2.contains("Verify return code: 0 (ok)"), "{h2}");
    let h1 = s_client(g.api_tls_port, "http/1.1", &ca, "localhost");
    assert!(h1.contains("ALPN protocol: http/1.1"), "{h1}");

    // The same routes, authorization, Host check and body limit on both protocols.
    for (h2, version) in [
        (true, reqwest::Version::HTTP_2),
        (false, reqwest::Version::HTTP_11),
    ] {
        let api = g.https_api(h2).unwrap();
        let path = format!("/meshes/secure/secrets/s-{h2}");
        let secret = format!("type: Secret\nname: s-{h2}\nmesh: secure\ndata: aGVsbG8=\n");
        let (status, body) = api.send(Method::PUT, &path, &secret).await.unwrap();
        assert_eq!(status, 201, "{body}");
        let client = testkit::api::https_client(ca_pem.as_bytes(), h2).unwrap();
        let r = client.get(api.url("/meshes/secure")).send().await.unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        // No token: the secret is not readable.
        let r = client.get(api.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 401);
        // A Host it does not serve.
        let r = client
            .get(api.url("/meshes"))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 421, "{version:?}");
        // A body over the limit.
        let big = "x".repeat(common::limits::API_BODY_BYTES + 1);
        let r = client
            .put(api.url("/meshes/big"))
            .bearer_auth(&g.token)
            .body(big)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{version:?}");
    }

    // A restart keeps the CA: api-ca.pem unchanged, the CLI with it still works.
    g.restart().await.unwrap();
    assert_eq!(std::fs::read_to_string(&ca).unwrap(), ca_pem);
    let out = cli(
        &g,
        &https,
        Some(&ca),
        &["get", "secrets", "--mesh", "secure"],
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(out.stdout.contains("s-true"), "{}", out.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_hosts_are_named_by_the_generated_certificate_from_the_same_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let mut g = GlobalProc::start(&dir).await.unwrap();
    let ca = g.api_ca_file();
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let names = served_names(&s_client(g.api_tls_port, "h2", &ca, "localhost"));
    assert!(!names.contains(&"cp.example.com".to_string()), "{names:?}");

    // Started again with names: the served certificate carries them, from the same CA.
    g.proc.stop(Duration::from_secs(10));
    let options = g
        .options()
        .args(&["--api-host", "cp.example.com", "--api-host", "10.11.12.13"]);
    g = GlobalProc::start_with(&dir, options).await.unwrap();
    assert_eq!(std::fs::read_to_string(&ca).unwrap(), ca_pem);
    let out = s_client(g.api_tls_port, "h2", &ca, "cp.example.com");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    let names = served_names(&out);
    for n in [
        "localhost",
        "127.0.0.1",
        "::1",
        "cp.example.com",
        "10.11.12.13",
    ] {
        assert!(names.contains(&n.to_string()), "{n} not in {names:?}");
    }
    // The name is verified by a real client, and answered (it is an --api-host).
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .resolve(
            "cp.example.com",
            format!("127.0.0.1:{}", g.api_tls_port).parse().unwrap(),
        )
        .build()
        .unwrap();
    let r = client
        .get(format!("https://cp.example.com:{}/meshes", g.api_tls_port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_certificate_is_served_and_a_foreign_key_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let pki =
        OperatorPki::create(tmp.path(), "op", "Operator API", &["127.0.0.1", "cp.test"]).unwrap();
    let other = OperatorPki::create(tmp.path(), "other", "Other", &["127.0.0.1"]).unwrap();
    let (ca, cert, key, other_key) = (&pki.ca, &pki.cert, &pki.key, &other.key);
    let ca_pem = pki.ca_pem().unwrap();

    // A key that is not the certificate's: refused at start (exit 1), the flags and reason said.
    let options = GlobalOptions::default().args(&[
        "--api-tls-cert",
        cert.to_str().unwrap(),
        "--api-tls-key",
        other_key.to_str().unwrap(),
    ]);
    let refusal = GlobalProc::start_or_refusal(&tmp.path().join("bad"), options)
        .await
        .unwrap()
        .err()
        .expect("global started with a key that is not its certificate's");
    for part in [
        "--api-tls-cert",
        "--api-tls-key",
        "not the key of the certificate",
    ] {
        assert!(refusal.contains(part), "{part:?} not in {refusal}");
    }
    // One of the pair alone: a usage error.
    let out = Command::new(binary("global").unwrap())
        .args(["run", "--data-dir"])
        .arg(tmp.path().join("half"))
        .args(["--api-addr", "127.0.0.1:0", "--kds-addr", "127.0.0.1:0"])
        .args(["--api-tls-addr", "127.0.0.1:0", "--api-tls-cert"])
        .arg(cert)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--api-tls-key"),
        "{out:?}"
    );

    // The pair: served, trusted by the CLI with the operator's CA and by no generated one.
    let dir = tmp.path().join("g");
    let options = GlobalOptions::default().args(&[
        "--api-tls-cert",
        cert.to_str().unwrap(),
        "--api-tls-key",
        key.to_str().unwrap(),
        "--api-host",
        "cp.test",
    ]);
    let g = GlobalProc::start_with(&dir, options).await.unwrap();
    assert!(
        !dir.join("api-ca.pem").exists(),
        "a CA was generated although the operator gave a certificate"
    );
    let mesh = write(tmp.path(), "mesh.yaml", MESH);
    let out = cli(
        &g,
        &g.https_url(),
        Some(ca),
        &["apply", "-f", mesh.to_str().unwrap()],
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    let served = s_client(g.api_tls_port, "h2", ca, "cp.test");
    assert!(served.contains("Verify return code: 0 (ok)"), "{served}");
    assert!(served.contains("Operator API server"), "{served}");
    // Another CA (the KDS one global generated) does not verify it.
    let out = cli(&g, &g.https_url(), Some(&g.ca_file()), &["get", "meshes"]);
    assert_eq!(out.code, Some(3), "{}", out.text());
    // By its DNS name, over h2.
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .http2_prior_knowledge()
        .resolve(
            "cp.test",
            format!("127.0.0.1:{}", g.api_tls_port).parse().unwrap(),
        )
        .build()
        .unwrap();
    let r = client
        .get(format!("https://cp.test:{}/meshes/secure", g.api_tls_port))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_beyond_loopback_needs_api_insecure_http() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(binary("global").unwrap())
        .args(["run", "--data-dir"])
        .arg(tmp.path().join("refused"))
        .args(["--api-addr", "0.0.0.0:0", "--kds-addr", "127.0.0.1:0"])
        .args(["--api-tls-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [
        "--api-addr 0.0.0.0:0",
        "--api-tls-addr",
        "--api-insecure-http",
    ] {
        assert!(stderr.contains(part), "{part:?} not in {stderr}");
    }
    assert!(
        !tmp.path().join("refused").join("admin-token").exists(),
        "global prepared its data directory before refusing"
    );

    // With the flag it starts, and serves on every address (asked here on loopback).
    let options = GlobalOptions::default()
        .api_bind("0.0.0.0")
        .args(&["--api-insecure-http"]);
    let g = GlobalProc::start_with(&tmp.path().join("g"), options)
        .await
        .unwrap();
    g.put("/meshes/open", "type: Mesh\nname: open\n")
        .await
        .unwrap();
    let log = std::fs::read_to_string(g.dir.join("global.log")).unwrap();
    assert!(log.contains("--api-insecure-http"), "no warning in {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_starts_its_handshake_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("g")).await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", g.api_tls_port))
        .await
        .unwrap();
    let started = Instant::now();
    // Far above the bound (limits::TLS_HANDSHAKE_TIMEOUT): only a server that never drops it
    // makes this fail.
    let give_up = common::limits::TLS_HANDSHAKE_TIMEOUT * 6;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(give_up, silent.read(&mut buf)).await;
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("the server sent {n} bytes to a client that said nothing"),
        Err(_) => panic!("still connected after {give_up:?}"),
    }
    assert!(
        started.elapsed() + Duration::from_millis(100) >= common::limits::TLS_HANDSHAKE_TIMEOUT,
        "dropped after {:?}, before the bound",
        started.elapsed()
    );
    // The listener still serves others.
    g.https_api(true).unwrap().get_ok("/meshes").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_serve_the_same_api_ca() {
    let pg = PgServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a, b) = tokio::join!(
        GlobalProc::start_with(&dir_a, GlobalOptions::default().store(&pg.url())),
        GlobalProc::start_with(&dir_b, GlobalOptions::default().store(&pg.url())),
    );
    let (a, mut b) = (a.unwrap(), b.unwrap());
    let ca_a = std::fs::read_to_string(a.api_ca_file()).unwrap();
    assert_eq!(
        ca_a,
        std::fs::read_to_string(b.api_ca_file()).unwrap(),
        "api-ca.pem differs between replicas"
    );
    // Each replica's certificate verifies with the one CA file.
    for g in [&a, &b] {
        let out = cli(
            g,
            &g.https_url(),
            Some(&a.api_ca_file()),
            &["get", "replicas"],
        );
        assert_eq!(out.code, Some(0), "{}", out.text());
    }
    // A replica started later, with its own names, and a restart: the same CA.
    let c = GlobalProc::start_with(
        &tmp.path().join("c"),
        GlobalOptions::default()
            .store(&pg.url())
            .args(&["--api-host", "replica-c.example"]),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read_to_string(c.api_ca_file()).unwrap(), ca_a);
    let out = s_client(c.api_tls_port, "h2", &a.api_ca_file(), "replica-c.example");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(served_names(&out).contains(&"replica-c.example".to_string()));
    b.restart().await.unwrap();
    assert_eq!(std::fs::read_to_string(b.api_ca_file()).unwrap(), ca_a);
}
