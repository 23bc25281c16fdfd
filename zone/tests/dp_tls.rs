//! `zone run --dp-tls-cert/--dp-tls-key`: the proxy listener serves the operator's certificate
//! instead of the generated one, with the real binaries on loopback (global, a zone, `zone
//! proxy` agents) and real TLS handshakes. A proxy trusting only the operator's CA
//! (`--zone-ca-file`) gets its certificate; one trusting another CA does not, and says why; the
//! zone generates no CA of its own. A key that is not the certificate's, or a file that is not
//! PEM, is refused at start (exit 1) naming the flags and the reason; one flag of the pair alone
//! is a usage error (exit 2).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::bins::binary;
use testkit::cluster::*;
use testkit::pki::OperatorPki;
use testkit::proc::run_bounded;
use testkit::wait::wait_for;

const MESH: &str = "default";

/// `zone run` with these TLS flags against an address nothing listens on (trusting `global_ca`):
/// it must exit at start.
fn zone_run(dir: &Path, global_ca: &Path, tls: &[&std::ffi::OsStr]) -> testkit::proc::CmdOutput {
    let token = dir.join("zone.token");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&token, "not-used").unwrap();
    let mut cmd = Command::new(binary("zone").unwrap());
    cmd.args([
        "run",
        "--name",
        "z1",
        "--global-address",
        "grpcs://127.0.0.1:9",
    ])
    .arg("--global-ca-file")
    .arg(global_ca)
    .arg("--token-file")
    .arg(&token)
    .arg("--data-dir")
    .arg(dir.join("data"))
    .args(["--api-addr", "127.0.0.1:0", "--dp-addr", "127.0.0.1:0"])
    .args(tls);
    run_bounded(cmd, Duration::from_secs(60)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_listener_serves_the_operators_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pki = OperatorPki::create(root, "dp", "Operator DP", &["127.0.0.1", "localhost"]).unwrap();

    let global = GlobalProc::start(&root.join("global")).await.unwrap();
    global.apply(&builtin_mesh_yaml(MESH, "1h")).await.unwrap();
    let zone_dir = root.join("zone");
    let options = ZoneOptions::default().args(&[
        "--dp-tls-cert",
        pki.cert.to_str().unwrap(),
        "--dp-tls-key",
        pki.key.to_str().unwrap(),
    ]);
    let zone = ZoneProc::start_minted("z1", &global, &zone_dir, options)
        .await
        .unwrap();
    zone.wait_synced(&[MESH], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        !zone.dp_ca_file().exists(),
        "the zone generated a CA although the operator gave a certificate"
    );

    // A real handshake on the proxy listener: the operator's certificate, verified by its CA.
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{}", zone.dp_port),
    ])
    .args(["-alpn", "h2", "-servername", "localhost", "-CAfile"])
    .arg(&pki.ca);
    let out = run_bounded(cmd, Duration::from_secs(30)).unwrap().text();
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("Operator DP server"), "{out}");

    // A proxy trusting only the operator's CA gets its certificate.
    let token = global
        .dataplane_token_file(MESH, "web-1", &root.join("tokens"))
        .await
        .unwrap();
    let spec = ProxySpec::new(MESH, "web-1", "web").zone_ca_file(&pki.ca);
    let proxy = ProxyProc::start(&zone, &spec, &token, &root.join("web-1")).unwrap();
    let leaf = proxy
        .wait_leaf(root, None, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        leaf.uri_sans.contains(&"spiffe://default/web".to_string()),
        "{leaf:?}"
    );

    // A proxy trusting another CA (global's sync CA) gets nothing, and says the certificate is
    // why.
    let token = global
        .dataplane_token_file(MESH, "web-2", &root.join("tokens"))
        .await
        .unwrap();
    let spec = ProxySpec::new(MESH, "web-2", "web").zone_ca_file(&global.ca_file());
    let stranger = ProxyProc::start(&zone, &spec, &token, &root.join("web-2")).unwrap();
    wait_for("the stranger's refusal in its log", root, || {
        let log = stranger.log().to_lowercase();
        async move { log.contains("unknownissuer").then_some(()) }
    })
    .await;
    assert!(
        stranger.leaf().is_none(),
        "a proxy trusting another CA got a certificate"
    );
}

#[tokio::test]
async fn a_wrong_pair_is_refused_at_start_naming_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = OperatorPki::create(tmp.path(), "dp", "Operator DP", &["127.0.0.1"]).unwrap();
    let other = OperatorPki::create(tmp.path(), "other", "Other", &["127.0.0.1"]).unwrap();
    let flag = |s: &'static str| std::ffi::OsStr::new(s);

    // A key that is not the certificate's.
    let out = zone_run(
        &tmp.path().join("a"),
        &other.ca,
        &[
            flag("--dp-tls-cert"),
            pki.cert.as_os_str(),
            flag("--dp-tls-key"),
            other.key.as_os_str(),
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.text());
    for part in [
        "--dp-tls-cert",
        "--dp-tls-key",
        "not the key of the certificate",
    ] {
        assert!(out.stderr.contains(part), "{part:?} not in {}", out.stderr);
    }
    assert!(!out.text().contains("PRIVATE KEY-----"), "{}", out.text());

    // A certificate file that is not PEM.
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let out = zone_run(
        &tmp.path().join("b"),
        &other.ca,
        &[
            flag("--dp-tls-cert"),
            garbage.as_os_str(),
            flag("--dp-tls-key"),
            pki.key.as_os_str(),
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(
        out.stderr.contains("--dp-tls-cert") && out.stderr.contains("no PEM CERTIFICATE"),
        "{}",
        out.stderr
    );

    // One of the pair alone: a usage error naming the other.
    let out = zone_run(
        &tmp.path().join("c"),
        &other.ca,
        &[flag("--dp-tls-cert"), pki.cert.as_os_str()],
    );
    assert_eq!(out.code, Some(2), "{}", out.text());
    assert!(out.stderr.contains("--dp-tls-key"), "{}", out.stderr);
}
