//! The builtin and provided CAs and proxy certificate issuance, checked with real tools: the
//! `openssl` CLI inspects and verifies what `common::ca` produces, makes the provided CAs that
//! `validate_provided` must accept or refuse, and runs real mTLS handshakes (`s_server` / `s_client`)
//! between issued proxy certificates.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::ca::{
    self, CaError, CaKeyPair, CaSigner, IssuedLeaf, LeafRequest, ProvidedField, issue_leaf,
    validate_provided, validate_provided_detailed,
};
use common::duration::HumanDuration;
use common::model::{BuiltinCaCert, BuiltinConf};

// ---------------------------------------------------------------------------------------------
// helpers

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, data).unwrap();
    p
}

/// Runs `openssl ARGS` in `dir`; returns the output whatever the exit status.
fn openssl_raw(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed")
}

/// Runs `openssl ARGS` in `dir`, asserting success; returns stdout.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = openssl_raw(dir, args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn text(dir: &Path, cert: &str) -> String {
    openssl(dir, &["x509", "-in", cert, "-noout", "-text"])
}

/// The line after the one containing `header` in `openssl x509 -text` output, trimmed.
fn ext_value(text: &str, header: &str) -> String {
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.contains(header) {
            return lines.next().unwrap_or_default().trim().to_string();
        }
    }
    panic!("no {header:?} in:\n{text}")
}

fn tags(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
        .collect()
}

fn request(mesh: &str, service: &str) -> LeafRequest {
    LeafRequest {
        mesh: mesh.to_string(),
        tags: tags(&[("kuma.io/service", &[service])]),
        common_name: None,
        lifetime: Duration::from_secs(3600),
        uri_sans: common::model::UriSans::Kuma,
    }
}

fn builtin(mesh: &str, bits: Option<u32>, expiration: Option<&str>) -> CaKeyPair {
    let conf = BuiltinConf {
        ca_cert: Some(BuiltinCaCert {
            expiration: expiration.map(|e| HumanDuration::parse(e).unwrap()),
            rsa_bits: bits,
        }),
    };
    ca::generate_builtin_ca(mesh, &conf).unwrap()
}

/// The base64 body of a PEM key: what must never leak into Debug output or errors.
fn key_body(key_pem: &str) -> String {
    key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("")
}

fn assert_no_key(haystack: &str, key_pem: &str) {
    assert!(!haystack.contains(key_pem), "key PEM leaked: {haystack}");
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!haystack.contains(line), "key material leaked: {haystack}");
    }
    assert!(!haystack.contains(&key_body(key_pem)));
}

/// Kinds of key the openssl CLI writes, in the encodings users hand us.
#[derive(Clone, Copy, Debug)]
enum KeyKind {
    /// `openssl genpkey -algorithm RSA`: PKCS#8 `PRIVATE KEY`.
    RsaPkcs8(u32),
    /// `openssl genrsa -traditional`: PKCS#1 `RSA PRIVATE KEY`.
    RsaPkcs1(u32),
    /// `openssl genpkey -algorithm EC`: PKCS#8.
    EcPkcs8(&'static str),
    /// `openssl ecparam -genkey`: `EC PARAMETERS` then SEC1 `EC PRIVATE KEY`.
    EcSec1(&'static str),
}

fn gen_key(dir: &Path, name: &str, kind: KeyKind) -> PathBuf {
    let path = dir.join(name);
    let p = path.to_str().unwrap();
    match kind {
        KeyKind::RsaPkcs8(bits) => {
            let bits = format!("rsa_keygen_bits:{bits}");
            openssl(
                dir,
                &["genpkey", "-algorithm", "RSA", "-pkeyopt", &bits, "-out", p],
            );
        }
        KeyKind::RsaPkcs1(bits) => {
            openssl(
                dir,
                &["genrsa", "-traditional", "-out", p, &bits.to_string()],
            );
        }
        KeyKind::EcPkcs8(curve) => {
            let curve = format!("ec_paramgen_curve:{curve}");
            openssl(
                dir,
                &["genpkey", "-algorithm", "EC", "-pkeyopt", &curve, "-out", p],
            );
        }
        KeyKind::EcSec1(curve) => {
            openssl(dir, &["ecparam", "-name", curve, "-genkey", "-out", p]);
        }
    }
    path
}

const CA_EXT: &str = "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n";

/// A self-signed certificate made by `openssl req -x509` with exactly the extensions in `ext`
/// (openssl.cnf syntax). Returns (cert PEM, key PEM).
fn openssl_self_signed(
    dir: &Path,
    name: &str,
    cn: &str,
    kind: KeyKind,
    ext: &str,
    days: u32,
) -> (String, String) {
    let key = gen_key(dir, &format!("{name}.key"), kind);
    let cnf = write(
        dir,
        &format!("{name}.cnf"),
        format!(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nO = Acme Corp\nCN = {cn}\n[ext]\n{ext}"
        ),
    );
    let out = dir.join(format!("{name}.pem"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-config",
            cnf.to_str().unwrap(),
            "-extensions",
            "ext",
            "-key",
            key.to_str().unwrap(),
            "-days",
            &days.to_string(),
            "-out",
            out.to_str().unwrap(),
        ],
    );
    (
        fs::read_to_string(out).unwrap(),
        fs::read_to_string(key).unwrap(),
    )
}

/// A certificate for a new key, signed by `issuer` with `openssl x509 -req`.
fn openssl_signed(
    dir: &Path,
    name: &str,
    cn: &str,
    issuer: (&Path, &Path),
    ext: &str,
) -> (String, String) {
    let key = gen_key(dir, &format!("{name}.key"), KeyKind::EcPkcs8("P-256"));
    let csr = dir.join(format!("{name}.csr"));
    let subj = format!("/O=Acme Corp/CN={cn}");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            &subj,
            "-out",
            csr.to_str().unwrap(),
        ],
    );
    let extfile = write(dir, &format!("{name}.ext"), format!("[ext]\n{ext}"));
    let out = dir.join(format!("{name}.pem"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            issuer.0.to_str().unwrap(),
            "-CAkey",
            issuer.1.to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            extfile.to_str().unwrap(),
            "-extensions",
            "ext",
            "-out",
            out.to_str().unwrap(),
        ],
    );
    (
        fs::read_to_string(out).unwrap(),
        fs::read_to_string(key).unwrap(),
    )
}

/// A CA certificate valid only during 2020, made with `openssl ca -selfsign`.
fn openssl_expired_ca(dir: &Path) -> (String, String) {
    let d = dir.join("expired");
    fs::create_dir(&d).unwrap();
    write(&d, "index.txt", "");
    write(&d, "serial", "01\n");
    write(
        &d,
        "ca.cnf",
        format!(
            "[ca]\ndefault_ca = myca\n[myca]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
             default_md = sha256\npolicy = pol\nunique_subject = no\n[pol]\ncommonName = supplied\n\
             [req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = expired-ca\n[ext]\n{CA_EXT}"
        ),
    );
    let key = gen_key(&d, "k.pem", KeyKind::RsaPkcs8(2048));
    openssl(
        &d,
        &[
            "req",
            "-new",
            "-config",
            "ca.cnf",
            "-key",
            key.to_str().unwrap(),
            "-out",
            "r.csr",
        ],
    );
    openssl(
        &d,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            "k.pem",
            "-in",
            "r.csr",
            "-out",
            "c.pem",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20210101000000Z",
            "-extensions",
            "ext",
            "-notext",
        ],
    );
    (
        fs::read_to_string(d.join("c.pem")).unwrap(),
        fs::read_to_string(key).unwrap(),
    )
}

/// Writes a leaf's files as the proxy agent does: cert.pem (leaf then chain), key.pem, ca.pem.
fn write_leaf(dir: &Path, prefix: &str, leaf: &IssuedLeaf) -> (PathBuf, PathBuf, PathBuf) {
    (
        write(dir, &format!("{prefix}-cert.pem"), &leaf.cert_pem),
        write(dir, &format!("{prefix}-key.pem"), &leaf.key_pem),
        write(dir, &format!("{prefix}-ca.pem"), &leaf.ca_pem),
    )
}

fn pubkey_of_key(dir: &Path, key: &str) -> String {
    openssl(dir, &["pkey", "-in", key, "-pubout"])
}

fn pubkey_of_cert(dir: &Path, cert: &str) -> String {
    openssl(dir, &["x509", "-in", cert, "-noout", "-pubkey"])
}

fn checkend(dir: &Path, cert: &str, secs: u64) -> bool {
    openssl_raw(
        dir,
        &[
            "x509",
            "-in",
            cert,
            "-noout",
            "-checkend",
            &secs.to_string(),
        ],
    )
    .status
    .success()
}

/// Waits for `child` up to `limit`, killing it if it runs over; returns whether it exited 0.
fn wait_for(child: &mut std::process::Child, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Handshake {
    client_ok: bool,
    client_out: String,
    client_err: String,
    server_err: String,
}

/// A real mTLS handshake: `openssl s_server -Verify 1 -verify_return_error -www` with the server's
/// files, on a free loopback port, and `openssl s_client -verify_return_error` with the client's
/// files sending one HTTP request. The `-www` page echoes the client certificate the server accepted.
fn mtls(dir: &Path, server: (&Path, &Path, &Path), client: (&Path, &Path, &Path)) -> Handshake {
    let port = testkit::proc::free_port();
    let accept = format!("127.0.0.1:{port}");
    let srv_out = dir.join(format!("s_server-{port}.out"));
    let srv_err = dir.join(format!("s_server-{port}.err"));
    let mut server_proc = Command::new("openssl")
        .args(["s_server", "-accept", &accept, "-naccept", "1", "-www"])
        .args(["-Verify", "1", "-verify_return_error"])
        .arg("-cert")
        .arg(server.0)
        .arg("-key")
        .arg(server.1)
        .arg("-CAfile")
        .arg(server.2)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&srv_out).unwrap())
        .stderr(fs::File::create(&srv_err).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !fs::read_to_string(&srv_out).unwrap().contains("ACCEPT") {
        if let Some(status) = server_proc.try_wait().unwrap() {
            panic!(
                "s_server exited early ({status}): {}",
                fs::read_to_string(&srv_err).unwrap()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "s_server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let cli_out = dir.join(format!("s_client-{port}.out"));
    let cli_err = dir.join(format!("s_client-{port}.err"));
    let connect = format!("127.0.0.1:{port}");
    let mut client_proc = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &connect,
            "-verify_return_error",
            "-quiet",
        ])
        .arg("-cert")
        .arg(client.0)
        .arg("-key")
        .arg(client.1)
        .arg("-CAfile")
        .arg(client.2)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&cli_out).unwrap())
        .stderr(fs::File::create(&cli_err).unwrap())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = client_proc.stdin.take().unwrap();
        let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
    }
    let client_ok = wait_for(&mut client_proc, Duration::from_secs(20));
    if !wait_for(&mut server_proc, Duration::from_secs(5)) {
        // s_server may still wait when the client never completed; it has been killed.
    }
    Handshake {
        client_ok,
        client_out: fs::read_to_string(cli_out).unwrap(),
        client_err: fs::read_to_string(cli_err).unwrap(),
        server_err: fs::read_to_string(srv_err).unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------
// builtin CA

#[test]
fn builtin_ca_is_what_openssl_expects() {
    let dir = tmp();
    let d = dir.path();
    let started = Instant::now();
    let pair = ca::generate_builtin_ca("default", &BuiltinConf::default()).unwrap();
    eprintln!(
        "timing: builtin CA, RSA 2048 (default): {:?}",
        started.elapsed()
    );
    write(d, "ca.pem", &pair.cert_pem);
    write(d, "ca-key.pem", pair.key_pem());

    let t = text(d, "ca.pem");
    assert!(t.contains("Public-Key: (2048 bit)"), "{t}");
    assert!(
        t.contains("Signature Algorithm: sha256WithRSAEncryption"),
        "{t}"
    );
    assert!(t.contains("Subject: CN = default"), "{t}");
    assert!(t.contains("Issuer: CN = default"), "{t}");
    assert_eq!(
        ext_value(&t, "X509v3 Basic Constraints: critical"),
        "CA:TRUE"
    );
    assert_eq!(
        ext_value(&t, "X509v3 Key Usage: critical"),
        "Digital Signature, Certificate Sign, CRL Sign"
    );
    assert_eq!(
        ext_value(&t, "X509v3 Subject Alternative Name"),
        "URI:spiffe://default"
    );
    assert!(t.contains("X509v3 Subject Key Identifier"), "{t}");

    // Random, positive, 128-bit serial (Kuma uses 0).
    let serial = openssl(d, &["x509", "-in", "ca.pem", "-noout", "-serial"]);
    let serial = serial.trim().strip_prefix("serial=").unwrap();
    assert_eq!(serial.len(), 32, "{serial}");
    assert!(serial.chars().any(|c| c != '0'));
    assert!(!t.contains("(Negative)"));
    let other = ca::generate_builtin_ca("default", &BuiltinConf::default()).unwrap();
    assert_ne!(other.cert_pem, pair.cert_pem);
    write(d, "other.pem", &other.cert_pem);
    let other_serial = openssl(d, &["x509", "-in", "other.pem", "-noout", "-serial"]);
    assert_ne!(other_serial.trim(), format!("serial={serial}"));

    // Self-signed and verifiable as a trust anchor; the key is the certificate's, and sound.
    assert_eq!(
        openssl(d, &["verify", "-CAfile", "ca.pem", "ca.pem"]).trim(),
        "ca.pem: OK"
    );
    assert_eq!(pubkey_of_key(d, "ca-key.pem"), pubkey_of_cert(d, "ca.pem"));
    assert!(openssl(d, &["rsa", "-in", "ca-key.pem", "-check", "-noout"]).contains("RSA key ok"));

    // NotBefore one minute back, NotAfter ten years on.
    let year = 365 * 86_400;
    assert!(checkend(d, "ca.pem", 10 * year - 3600));
    assert!(!checkend(d, "ca.pem", 10 * year + 3600));
    let der = pem::parse(&pair.cert_pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let not_before = cert.validity().not_before.timestamp();
    assert!(
        (now - 70..=now - 55).contains(&not_before),
        "{not_before} vs {now}"
    );
}

#[test]
fn builtin_ca_honours_rsa_bits_and_expiration() {
    let dir = tmp();
    let d = dir.path();
    for bits in [3072u32, 4096] {
        let started = Instant::now();
        let pair = builtin("m1", Some(bits), Some("1y"));
        eprintln!("timing: builtin CA, RSA {bits}: {:?}", started.elapsed());
        let name = format!("ca-{bits}.pem");
        write(d, &name, &pair.cert_pem);
        let key = format!("key-{bits}.pem");
        write(d, &key, pair.key_pem());
        let t = text(d, &name);
        assert!(t.contains(&format!("Public-Key: ({bits} bit)")), "{t}");
        assert!(
            openssl(d, &["rsa", "-in", &key, "-text", "-noout"])
                .contains(&format!("Private-Key: ({bits} bit"))
        );
        assert!(checkend(d, &name, 364 * 86_400));
        assert!(!checkend(d, &name, 366 * 86_400));
        assert_eq!(
            ext_value(&t, "X509v3 Subject Alternative Name"),
            "URI:spiffe://m1"
        );
    }
    let bad = BuiltinConf {
        ca_cert: Some(BuiltinCaCert {
            expiration: None,
            rsa_bits: Some(1024),
        }),
    };
    let err = ca::generate_builtin_ca("m1", &bad).unwrap_err();
    assert_eq!(err, CaError::UnsupportedRsaBits(1024));
    assert!(err.to_string().contains("2048, 3072 or 4096"));
}

#[test]
fn builtin_secret_names_are_kumas() {
    assert_eq!(
        ca::builtin_secret_names("default", "ca-1"),
        (
            "default.ca-builtin-cert-ca-1".to_string(),
            "default.ca-builtin-key-ca-1".to_string()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// leaves

#[test]
fn leaf_from_builtin_ca_verifies_and_has_kumas_shape() {
    let dir = tmp();
    let d = dir.path();
    let pair = builtin("default", None, None);
    let req = LeafRequest {
        mesh: "default".into(),
        tags: tags(&[
            ("kuma.io/service", &["web"]),
            ("version", &["v1"]),
            ("kuma.io/zone", &["east"]),
        ]),
        common_name: None,
        lifetime: Duration::from_secs(3600),
        uri_sans: common::model::UriSans::Kuma,
    };
    let started = Instant::now();
    let leaf = issue_leaf(&pair, &req).unwrap();
    eprintln!(
        "timing: issue_leaf (one-shot, RSA 2048 CA): {:?}",
        started.elapsed()
    );
    write(d, "ca.pem", &pair.cert_pem);
    write(d, "leaf.pem", &leaf.cert_pem);
    write(d, "leaf-key.pem", &leaf.key_pem);
    assert_eq!(leaf.ca_pem, pair.cert_pem);
    assert_eq!(
        leaf.cert_pem.matches("BEGIN CERTIFICATE").count(),
        1,
        "no chain for a root CA"
    );

    assert_eq!(
        openssl(d, &["verify", "-CAfile", "ca.pem", "leaf.pem"]).trim(),
        "leaf.pem: OK"
    );
    for purpose in ["sslserver", "sslclient"] {
        assert_eq!(
            openssl(
                d,
                &[
                    "verify", "-purpose", purpose, "-CAfile", "ca.pem", "leaf.pem"
                ]
            )
            .trim(),
            "leaf.pem: OK",
            "{purpose}"
        );
    }

    let t = text(d, "leaf.pem");
    assert_eq!(
        ext_value(&t, "X509v3 Subject Alternative Name: critical"),
        "URI:spiffe://default/web, URI:kuma://kuma.io/service/web, URI:kuma://kuma.io/zone/east, URI:kuma://version/v1"
    );
    assert_eq!(
        ext_value(&t, "X509v3 Key Usage: critical"),
        "Digital Signature, Key Encipherment, Key Agreement"
    );
    assert_eq!(
        ext_value(&t, "X509v3 Extended Key Usage"),
        "TLS Web Server Authentication, TLS Web Client Authentication"
    );
    assert_eq!(ext_value(&t, "X509v3 Basic Constraints"), "CA:FALSE");
    assert!(
        t.contains("Public-Key: (256 bit)") && t.contains("NIST CURVE: P-256"),
        "{t}"
    );
    assert!(
        t.contains("Signature Algorithm: sha256WithRSAEncryption"),
        "{t}"
    );
    let ca_text = text(d, "ca.pem");
    assert_eq!(
        ext_value(&t, "X509v3 Authority Key Identifier"),
        ext_value(&ca_text, "X509v3 Subject Key Identifier")
    );

    let subject = openssl(d, &["x509", "-in", "leaf.pem", "-noout", "-subject"]);
    assert_eq!(subject.trim(), "subject=", "empty subject");
    let serial = openssl(d, &["x509", "-in", "leaf.pem", "-noout", "-serial"]);
    assert_eq!(
        serial.trim(),
        format!("serial={}", leaf.serial_hex.to_uppercase())
    );
    assert_eq!(leaf.serial_hex.len(), 32);
    assert!(leaf.serial_hex.chars().any(|c| c != '0'));

    // NotBefore now-10s, NotAfter now+1h.
    assert_eq!(leaf.not_after - leaf.not_before, 3610);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (now - 15..=now - 5).contains(&leaf.not_before),
        "{} vs {now}",
        leaf.not_before
    );
    assert!(checkend(d, "leaf.pem", 3500));
    assert!(!checkend(d, "leaf.pem", 3700));

    // The key is the certificate's, and every leaf gets a fresh one and a fresh serial.
    assert_eq!(
        pubkey_of_key(d, "leaf-key.pem"),
        pubkey_of_cert(d, "leaf.pem")
    );
    let again = issue_leaf(&pair, &req).unwrap();
    assert_ne!(again.key_pem, leaf.key_pem);
    assert_ne!(again.serial_hex, leaf.serial_hex);
}

#[test]
fn leaf_common_name_and_several_services() {
    let dir = tmp();
    let d = dir.path();
    let pair = builtin("m2", None, None);
    let req = LeafRequest {
        mesh: "m2".into(),
        tags: tags(&[("kuma.io/service", &["b-svc", "a-svc"])]),
        common_name: Some("a-svc.mesh".into()),
        lifetime: Duration::from_secs(600),
        uri_sans: common::model::UriSans::Kuma,
    };
    let leaf = issue_leaf(&pair, &req).unwrap();
    write(d, "leaf.pem", &leaf.cert_pem);
    let subject = openssl(d, &["x509", "-in", "leaf.pem", "-noout", "-subject"]);
    assert_eq!(subject.trim(), "subject=CN = a-svc.mesh");
    let t = text(d, "leaf.pem");
    // With a subject, the SAN extension is no longer critical.
    assert_eq!(
        ext_value(&t, "X509v3 Subject Alternative Name"),
        "URI:spiffe://m2/a-svc, URI:spiffe://m2/b-svc, URI:kuma://kuma.io/service/a-svc, URI:kuma://kuma.io/service/b-svc"
    );
    assert_eq!(
        issue_leaf(
            &pair,
            &LeafRequest {
                tags: tags(&[("team", &["x"])]),
                ..req
            }
        ),
        Err(CaError::MissingService)
    );
}

#[test]
fn mtls_handshake_between_leaves_of_one_builtin_ca() {
    let dir = tmp();
    let d = dir.path();
    let pair = builtin("default", None, None);
    let signer = CaSigner::new(&pair).unwrap();
    let server = signer.issue(&request("default", "backend")).unwrap();
    let client = signer.issue(&request("default", "frontend")).unwrap();
    let (sc, sk, sca) = write_leaf(d, "server", &server);
    let (cc, ck, cca) = write_leaf(d, "client", &client);
    let hs = mtls(d, (&sc, &sk, &sca), (&cc, &ck, &cca));
    assert!(
        hs.client_ok,
        "handshake failed:\nclient: {}\n{}\nserver: {}",
        hs.client_out, hs.client_err, hs.server_err
    );
    assert!(
        hs.client_out.starts_with("HTTP/1.0 200 ok"),
        "{}",
        hs.client_out
    );
    // The server saw and accepted the client's certificate (its -www page prints it).
    assert!(
        hs.client_out.contains("Client certificate"),
        "{}",
        hs.client_out
    );
    assert!(
        hs.client_out.contains("URI:spiffe://default/frontend"),
        "{}",
        hs.client_out
    );
}

#[test]
fn mtls_handshake_refuses_leaf_of_another_ca() {
    let dir = tmp();
    let d = dir.path();
    let ours = builtin("default", None, None);
    let theirs = builtin("default", None, None);
    let server = issue_leaf(&ours, &request("default", "backend")).unwrap();
    let intruder = issue_leaf(&theirs, &request("default", "frontend")).unwrap();
    let (sc, sk, sca) = write_leaf(d, "server", &server);
    // The intruder trusts our CA (so it accepts the server), but its own cert is from another CA.
    let (ic, ik, _) = write_leaf(d, "intruder", &intruder);
    let hs = mtls(d, (&sc, &sk, &sca), (&ic, &ik, &sca));
    assert!(!hs.client_ok, "handshake should fail: {}", hs.client_out);
    assert!(!hs.client_out.contains("200 ok"), "{}", hs.client_out);
    assert!(
        hs.server_err.contains("certificate verify failed"),
        "server: {}",
        hs.server_err
    );
    assert!(
        hs.client_err.contains("unknown ca"),
        "client: {}",
        hs.client_err
    );
}

// ---------------------------------------------------------------------------------------------
// provided CA

#[test]
fn provided_cas_made_by_openssl_are_accepted_and_issue_verifiable_leaves() {
    let cases = [
        (
            KeyKind::RsaPkcs8(2048),
            "RSA 2048",
            "sha256WithRSAEncryption",
        ),
        (
            KeyKind::RsaPkcs1(3072),
            "RSA 3072",
            "sha256WithRSAEncryption",
        ),
        (
            KeyKind::EcPkcs8("P-256"),
            "ECDSA P-256",
            "ecdsa-with-SHA256",
        ),
        (
            KeyKind::EcSec1("prime256v1"),
            "ECDSA P-256",
            "ecdsa-with-SHA256",
        ),
        (
            KeyKind::EcSec1("secp384r1"),
            "ECDSA P-384",
            "ecdsa-with-SHA384",
        ),
    ];
    for (i, (kind, alg, sig)) in cases.into_iter().enumerate() {
        let dir = tmp();
        let d = dir.path();
        let (cert, key) = openssl_self_signed(d, "ca", &format!("Provided {i}"), kind, CA_EXT, 365);
        let info = validate_provided(cert.as_bytes(), key.as_bytes())
            .unwrap_or_else(|e| panic!("{kind:?} refused: {e:?}"));
        assert_eq!(info.key_algorithm, alg, "{kind:?}");
        assert_eq!(info.subject, format!("O=Acme Corp, CN=Provided {i}"));
        assert!(info.warnings.is_empty(), "{:?}", info.warnings);
        assert_eq!(info.chain_len, 1);
        let serial = openssl(d, &["x509", "-in", "ca.pem", "-noout", "-serial"]);
        assert_eq!(
            serial.trim().to_lowercase(),
            format!("serial={}", info.serial_hex)
        );

        let leaf = issue_leaf(&CaKeyPair::new(cert, key), &request("m", "web")).unwrap();
        write(d, "leaf.pem", &leaf.cert_pem);
        assert_eq!(
            openssl(d, &["verify", "-CAfile", "ca.pem", "leaf.pem"]).trim(),
            "leaf.pem: OK",
            "{kind:?}"
        );
        let t = text(d, "leaf.pem");
        assert!(
            t.contains(&format!("Signature Algorithm: {sig}")),
            "{kind:?}: {t}"
        );
        let ca_text = text(d, "ca.pem");
        assert_eq!(
            ext_value(&t, "X509v3 Authority Key Identifier"),
            ext_value(&ca_text, "X509v3 Subject Key Identifier")
        );
        let issuer = openssl(d, &["x509", "-in", "leaf.pem", "-noout", "-issuer"]);
        assert_eq!(
            issuer.trim(),
            format!("issuer=O = Acme Corp, CN = Provided {i}")
        );
    }
}

#[test]
fn provided_intermediate_with_chain_issues_leaves_that_chain_to_the_root() {
    let dir = tmp();
    let d = dir.path();
    let (root, _) = openssl_self_signed(d, "root", "Root", KeyKind::RsaPkcs8(2048), CA_EXT, 365);
    let (inter, inter_key) = openssl_signed(
        d,
        "inter",
        "Intermediate",
        (&d.join("root.pem"), &d.join("root.key")),
        &format!("{CA_EXT}authorityKeyIdentifier = keyid\n"),
    );
    let bundle = format!("{inter}{root}");
    let info = validate_provided(bundle.as_bytes(), inter_key.as_bytes()).unwrap();
    assert_eq!(info.chain_len, 2);
    assert_eq!(info.subject, "O=Acme Corp, CN=Intermediate");

    let leaf = issue_leaf(
        &CaKeyPair::new(bundle.clone(), inter_key.clone()),
        &request("m", "web"),
    )
    .unwrap();
    // cert.pem is the leaf then the intermediate; the trust bundle holds the whole CA bundle.
    assert_eq!(leaf.cert_pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert_eq!(leaf.ca_pem.matches("BEGIN CERTIFICATE").count(), 2);
    write(d, "cert.pem", &leaf.cert_pem);
    assert_eq!(
        openssl(
            d,
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "cert.pem",
                "cert.pem"
            ]
        )
        .trim(),
        "cert.pem: OK"
    );
    // Without the chain it does not verify against the root alone: the chain is really needed.
    let leaf_only = &leaf.cert_pem[..leaf.cert_pem.find("-----END CERTIFICATE-----").unwrap() + 26];
    write(d, "leaf-only.pem", leaf_only);
    assert!(
        !openssl_raw(d, &["verify", "-CAfile", "root.pem", "leaf-only.pem"])
            .status
            .success()
    );

    // Bundle in the wrong order: refused.
    let wrong = format!("{root}{inter}");
    let err = validate_provided(wrong.as_bytes(), inter_key.as_bytes()).unwrap_err();
    assert!(err.iter().any(|r| r.contains("does not match")), "{err:?}");
    assert!(
        err.iter()
            .any(|r| r.contains("is not the issuer of certificate 1")),
        "{err:?}"
    );

    // The intermediate without its root: proxies would have no root to verify peers with
    // (openssl refuses the intermediate alone as a trust anchor), so it is refused.
    write(d, "inter-only.pem", &inter);
    assert!(
        !openssl_raw(
            d,
            &[
                "verify",
                "-CAfile",
                "inter-only.pem",
                "-untrusted",
                "cert.pem",
                "cert.pem"
            ]
        )
        .status
        .success(),
        "openssl accepted an intermediate alone as trust anchor"
    );
    let err = validate_provided(inter.as_bytes(), inter_key.as_bytes()).unwrap_err();
    assert!(
        err.iter()
            .any(|r| r.contains("does not end with a self-signed root")),
        "{err:?}"
    );
}

#[test]
fn provided_refusals_name_the_reason() {
    let dir = tmp();
    let d = dir.path();
    let (good_cert, good_key) =
        openssl_self_signed(d, "good", "Good", KeyKind::EcPkcs8("P-256"), CA_EXT, 365);

    // Not a CA: CA:FALSE and no keyCertSign.
    let (leafish, leafish_key) = openssl_self_signed(
        d,
        "leafish",
        "Not A CA",
        KeyKind::RsaPkcs8(2048),
        "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n",
        365,
    );
    let err = validate_provided(leafish.as_bytes(), leafish_key.as_bytes()).unwrap_err();
    assert!(
        err.iter()
            .any(|r| r.contains("basic constraint 'CA' must be set to 'true'")),
        "{err:?}"
    );
    assert!(
        err.iter().any(|r| r.contains("'keyCertSign' must be set")),
        "{err:?}"
    );

    // A CA without a key usage extension at all: keyCertSign missing.
    let (no_ku, no_ku_key) = openssl_self_signed(
        d,
        "noku",
        "No KU",
        KeyKind::EcPkcs8("P-256"),
        "basicConstraints = critical,CA:TRUE\n",
        365,
    );
    let err = validate_provided(no_ku.as_bytes(), no_ku_key.as_bytes()).unwrap_err();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].contains("'keyCertSign' must be set"), "{err:?}");

    // keyAgreement (Kuma's rule, from X509-SVID).
    let (ka, ka_key) = openssl_self_signed(
        d,
        "ka",
        "Key Agreement CA",
        KeyKind::EcPkcs8("P-256"),
        "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign,keyAgreement\n",
        365,
    );
    let err = validate_provided(ka.as_bytes(), ka_key.as_bytes()).unwrap_err();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].contains("'keyAgreement' must NOT be set"), "{err:?}");

    // Mismatched key, attributed to conf.key.
    let err = validate_provided_detailed(good_cert.as_bytes(), leafish_key.as_bytes()).unwrap_err();
    assert_eq!(err.len(), 1, "{err:?}");
    assert_eq!(err[0].field, ProvidedField::Key);
    assert!(
        err[0]
            .reason
            .contains("does not match the certificate's public key"),
        "{err:?}"
    );
    assert_no_key(&format!("{err:?}"), &leafish_key);

    // Expired.
    let (expired, expired_key) = openssl_expired_ca(d);
    let err = validate_provided(expired.as_bytes(), expired_key.as_bytes()).unwrap_err();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].contains("has expired: it was valid until 2021-01-01T00:00:00Z"),
        "{err:?}"
    );
    // ...and a zone holding it refuses to issue.
    assert_eq!(
        issue_leaf(&CaKeyPair::new(expired, expired_key), &request("m", "web")),
        Err(CaError::CaExpired("2021-01-01T00:00:00Z".into()))
    );

    // Garbage.
    let err = validate_provided_detailed(b"this is not PEM", good_key.as_bytes()).unwrap_err();
    assert_eq!(err.len(), 1, "{err:?}");
    assert_eq!(err[0].field, ProvidedField::Cert);
    assert!(
        err[0].reason.contains("no PEM-encoded certificate found"),
        "{err:?}"
    );
    let corrupt = good_cert.replace("MI", "@@");
    let err = validate_provided(corrupt.as_bytes(), good_key.as_bytes()).unwrap_err();
    assert!(
        err[0].contains("not valid PEM") || err[0].contains("not a valid X.509"),
        "{err:?}"
    );
    let err = validate_provided_detailed(good_cert.as_bytes(), b"garbage").unwrap_err();
    assert_eq!(err.len(), 1, "{err:?}");
    assert_eq!(err[0].field, ProvidedField::Key);
    assert!(
        err[0].reason.contains("no PEM-encoded private key found"),
        "{err:?}"
    );

    // The key pasted into the certificate field: refused without echoing it.
    let err = validate_provided(good_key.as_bytes(), good_key.as_bytes()).unwrap_err();
    assert!(err[0].contains("is a private key"), "{err:?}");
    assert_no_key(&format!("{err:?}"), &good_key);

    // An encrypted key.
    write(d, "good.key.plain", &good_key);
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "good.key.plain",
            "-out",
            "enc.key",
            "-v2",
            "aes256",
            "-passout",
            "pass:secret",
        ],
    );
    let enc = fs::read_to_string(d.join("enc.key")).unwrap();
    let err = validate_provided(good_cert.as_bytes(), enc.as_bytes()).unwrap_err();
    assert!(err[0].contains("encrypted"), "{err:?}");

    // A 1024-bit RSA CA: refused for the certificate's key size and as an unusable key.
    let (weak, weak_key) =
        openssl_self_signed(d, "weak", "Weak", KeyKind::RsaPkcs8(1024), CA_EXT, 365);
    let err = validate_provided_detailed(weak.as_bytes(), weak_key.as_bytes()).unwrap_err();
    assert_eq!(err.len(), 2, "{err:?}");
    assert_eq!(err[0].field, ProvidedField::Cert, "{err:?}");
    assert!(
        err[0]
            .reason
            .contains("has 1024 bits: at least 2048 are required"),
        "{err:?}"
    );
    assert_eq!(err[1].field, ProvidedField::Key, "{err:?}");
    assert!(err[1].reason.contains("could not be parsed"), "{err:?}");
    assert_no_key(&format!("{err:?}"), &weak_key);

    // A subject rcgen cannot re-encode byte for byte as the issuer of the leaves (a repeated
    // attribute type): caught by the probe issuance, not left for the zones to find out.
    let key = gen_key(d, "dup.key", KeyKind::EcPkcs8("P-256"));
    let cnf = write(
        d,
        "dup.cnf",
        format!("[req]\ndistinguished_name = dn\n[dn]\n[ext]\n{CA_EXT}"),
    );
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-config",
            cnf.to_str().unwrap(),
            "-extensions",
            "ext",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            "/O=Acme/OU=a/OU=b/CN=dup",
            "-days",
            "30",
            "-out",
            "dup.pem",
        ],
    );
    let dup = fs::read_to_string(d.join("dup.pem")).unwrap();
    let err = validate_provided(dup.as_bytes(), fs::read(&key).unwrap().as_slice()).unwrap_err();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].contains("cannot be reproduced as the issuer name"),
        "{err:?}"
    );

    // And the good one passes, as a control.
    validate_provided(good_cert.as_bytes(), good_key.as_bytes()).unwrap();
}

#[test]
fn provided_ca_expiring_within_30_days_warns() {
    let dir = tmp();
    let d = dir.path();
    let (cert, key) = openssl_self_signed(d, "soon", "Soon", KeyKind::EcPkcs8("P-256"), CA_EXT, 10);
    let info = validate_provided(cert.as_bytes(), key.as_bytes()).unwrap();
    assert_eq!(info.warnings.len(), 1, "{:?}", info.warnings);
    assert!(
        info.warnings[0].contains("expires in 10 day(s)"),
        "{:?}",
        info.warnings
    );
    let (cert, key) =
        openssl_self_signed(d, "later", "Later", KeyKind::EcPkcs8("P-256"), CA_EXT, 31);
    assert!(
        validate_provided(cert.as_bytes(), key.as_bytes())
            .unwrap()
            .warnings
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// secrets stay secret; throughput

#[test]
fn debug_output_never_contains_private_keys() {
    // The certificates are printed (and share public-key bytes with the keys), so the key lines
    // are looked for in Debug output of copies whose certificate fields are emptied.
    let pair = builtin("default", None, None);
    let dbg = format!("{pair:?} {pair:#?}");
    assert!(dbg.contains("BEGIN CERTIFICATE") && dbg.contains("<redacted>"));
    assert!(!dbg.contains("PRIVATE KEY"));
    let key_only = CaKeyPair::new("", pair.key_pem());
    assert_no_key(&format!("{key_only:?} {key_only:#?}"), pair.key_pem());

    let signer = CaSigner::new(&pair).unwrap();
    let dbg = format!("{signer:?} {signer:#?}");
    assert!(dbg.contains("CN=default"), "{dbg}");
    assert_no_key(&dbg, pair.key_pem());

    let leaf = signer.issue(&request("default", "web")).unwrap();
    let dbg = format!("{leaf:?} {leaf:#?}");
    assert!(!dbg.contains("PRIVATE KEY"));
    assert!(dbg.contains(&leaf.serial_hex));
    let key_only = IssuedLeaf {
        cert_pem: String::new(),
        ca_pem: String::new(),
        ..leaf.clone()
    };
    assert_no_key(&format!("{key_only:?} {key_only:#?}"), &leaf.key_pem);

    // Errors about a CA whose key does not fit do not quote it either.
    let other = builtin("default", None, None);
    let mixed = CaKeyPair::new(pair.cert_pem.clone(), other.key_pem().to_string());
    let err = CaSigner::new(&mixed).unwrap_err();
    assert_eq!(err, CaError::KeyMismatch);
    assert_no_key(&format!("{err} {err:?}"), other.key_pem());
    let err = validate_provided(pair.cert_pem.as_bytes(), other.key_pem().as_bytes()).unwrap_err();
    assert_no_key(&format!("{err:?}"), other.key_pem());
}

#[test]
fn issuance_timings() {
    for (label, pair) in [
        ("RSA 2048 builtin", builtin("t", None, None)),
        ("EC P-256", {
            let dir = tmp();
            let (c, k) = openssl_self_signed(
                dir.path(),
                "ec",
                "EC",
                KeyKind::EcPkcs8("P-256"),
                CA_EXT,
                30,
            );
            CaKeyPair::new(c, k)
        }),
    ] {
        let started = Instant::now();
        let signer = CaSigner::new(&pair).unwrap();
        let prep = started.elapsed();
        let n = 200;
        let started = Instant::now();
        let mut serials = std::collections::HashSet::new();
        for _ in 0..n {
            serials.insert(signer.issue(&request("t", "web")).unwrap().serial_hex);
        }
        let per = started.elapsed() / n;
        assert_eq!(serials.len(), n as usize, "serials are unique");
        eprintln!("timing: {label} CA: CaSigner::new {prep:?}, issue {per:?}/leaf");
        assert!(
            per < Duration::from_millis(500),
            "{label}: {per:?} per leaf"
        );
    }
}

/// RSA key generation cost of builtin CAs, by size (run with `--ignored --nocapture`).
#[test]
#[ignore = "timing report, slow"]
fn rsa_keygen_timing_report() {
    for bits in ca::SUPPORTED_RSA_BITS {
        let mut times: Vec<Duration> = (0..10)
            .map(|_| {
                let started = Instant::now();
                builtin("t", Some(bits), None);
                started.elapsed()
            })
            .collect();
        times.sort();
        eprintln!(
            "timing: RSA {bits} builtin CA x10: min {:?}, median {:?}, max {:?}",
            times[0], times[5], times[9]
        );
    }
}

/// Found by the provided_ca fuzzer: a self-issued CA certificate whose outer signature algorithm
/// was changed to an unknown one (openssl still takes it as a trust anchor, without checking its
/// self-signature) was accepted, and the zone then did not recognise it as a root. Its
/// self-signature must verify.
#[test]
fn a_root_whose_self_signature_cannot_be_verified_is_refused() {
    let pair = ca::generate_builtin_ca("default", &BuiltinConf::default()).unwrap();
    let der = pem::parse(&pair.cert_pem).unwrap().into_contents();
    // The outer signatureAlgorithm is the last OID of the certificate: sha256WithRSAEncryption.
    let oid = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
    ];
    let at = der
        .windows(oid.len())
        .rposition(|w| w == oid)
        .expect("the signature algorithm OID");
    for (last_byte, what) in [(0x0c, "another known algorithm"), (0x7f, "an unknown one")] {
        let mut bad = der.clone();
        bad[at + oid.len() - 1] = last_byte;
        let pem_text = pem::encode(&pem::Pem::new("CERTIFICATE", bad));
        let err = validate_provided(pem_text.as_bytes(), pair.key_pem().as_bytes()).unwrap_err();
        assert!(
            err.iter()
                .any(|r| r.contains("self-issued but its signature")),
            "{what}: {err:?}"
        );
    }
    // Untouched, it is accepted.
    validate_provided(pair.cert_pem.as_bytes(), pair.key_pem().as_bytes()).unwrap();
}
