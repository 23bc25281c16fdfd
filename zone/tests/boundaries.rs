//! Trust boundaries (issue #18) with the real binaries and a raw gRPC client: a proxy gets only the
//! identity its token grants (another zone's `kuma.io/zone`, too many or too large tags, tags that
//! would make a malformed URI SAN are refused, naming the tag); readers without the admin token
//! never see inline credentials, on global or on a zone; both APIs answer only to the Host names
//! they serve; data directories and every file in them are private.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use proto::dpid::IdentityRequest;
use proto::dpid::dataplane_identity_client::DataplaneIdentityClient;
use testkit::cluster::{GlobalProc, ZoneProc, builtin_mesh_yaml};

async fn register(
    zone: &ZoneProc,
    token: &str,
    tags: HashMap<String, String>,
) -> Result<proto::dpid::IdentityResponse, tonic::Status> {
    register_as(
        zone,
        token,
        IdentityRequest {
            mesh: "default".into(),
            name: "web-1".into(),
            tags,
            ..Default::default()
        },
    )
    .await
}

async fn register_as(
    zone: &ZoneProc,
    token: &str,
    req: IdentityRequest,
) -> Result<proto::dpid::IdentityResponse, tonic::Status> {
    let channel = zone.dp_channel().await.unwrap();
    let mut request = tonic::Request::new(req);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut stream = DataplaneIdentityClient::new(channel)
        .stream(request)
        .await?
        .into_inner();
    Ok(
        tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("an answer in time")?
            .expect("a bundle"),
    )
}

fn tags(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn assert_private(dir: &Path) {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let m = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o700, "{} is {m:o}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                todo.push(p);
            } else if meta.is_file() && p.extension().is_none_or(|e| e != "log") {
                let m = meta.permissions().mode() & 0o777;
                assert_eq!(m & 0o077, 0, "{} is {m:o}", p.display());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_a_reader_and_a_browser_get_only_what_they_are_granted() {
    let tmp = tempfile::tempdir().unwrap();
    // Logs go beside, so the data directories hold only what the control planes write.
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    // A Mesh whose provided CA is given inline: its key must never reach a reader.
    let ca = common::ca::generate_builtin_ca("creds", &Default::default()).unwrap();
    let key_b64 = testkit::cluster::b64(ca.key_pem());
    g.apply(&format!(
        "{}---\ntype: Mesh\nname: creds\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: provided\n    conf:\n      cert:\n        inline: {}\n      key:\n        inline: {key_b64}\n",
        builtin_mesh_yaml("default", "1h"),
        testkit::cluster::b64(&ca.cert_pem),
    ))
    .await
    .unwrap();
    let token = g.zone_token_file("zone-1", tmp.path()).await.unwrap();
    let zone = ZoneProc::start("zone-1", &g, &token, &tmp.path().join("zone-1"))
        .await
        .unwrap();
    zone.wait_synced(&["default"], Duration::from_secs(20))
        .await
        .unwrap();
    let dp_token = std::fs::read_to_string(
        g.bound_dataplane_token_file("default", "web-1", "web", tmp.path())
            .await
            .unwrap(),
    )
    .unwrap();
    let dp_token = dp_token.trim();

    // Another zone's kuma.io/zone: refused. Its own: taken.
    let e = register(
        &zone,
        dp_token,
        tags(&[("kuma.io/service", "web"), ("kuma.io/zone", "zone-2")]),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("zone-1"), "{}", e.message());
    let web1 = register(
        &zone,
        dp_token,
        tags(&[("kuma.io/service", "web"), ("kuma.io/zone", "zone-1")]),
    )
    .await
    .unwrap();

    // Another proxy presenting web-1's (valid, public) certificate is not given it: without the
    // key it cannot prove possession, so it gets a certificate and key of its own. With the key,
    // the same certificate is kept (reused, no key sent).
    let web2_token = std::fs::read_to_string(
        g.bound_dataplane_token_file("default", "web-2", "web", tmp.path())
            .await
            .unwrap(),
    )
    .unwrap();
    let leaf = common::x509::pem_to_ders(&web1.cert_chain_pem).unwrap()[0].clone();
    let stranger = rcgen::KeyPair::generate().unwrap().serialize_pem();
    for (what, key) in [
        ("no proof", None),
        ("a proof by another key", Some(stranger.as_str())),
    ] {
        let now = common::clock::now_unix();
        let signature = key
            .map(|k| {
                let msg = common::x509::possession_message("default", "web-2", now, &leaf);
                common::x509::sign_possession(k, &msg).unwrap()
            })
            .unwrap_or_default();
        let got = register_as(
            &zone,
            web2_token.trim(),
            IdentityRequest {
                mesh: "default".into(),
                name: "web-2".into(),
                tags: tags(&[("kuma.io/service", "web")]),
                cert_chain_pem: web1.cert_chain_pem.clone(),
                possession_signature: signature,
                possession_unix: now,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(got.key_pem.is_some(), "{what}: a key of its own");
        assert_ne!(got.serial, web1.serial, "{what}: never web-1's certificate");
    }
    let now = common::clock::now_unix();
    let msg = common::x509::possession_message("default", "web-1", now, &leaf);
    let proof = common::x509::sign_possession(web1.key_pem.as_deref().unwrap(), &msg).unwrap();
    let again = register_as(
        &zone,
        dp_token,
        IdentityRequest {
            mesh: "default".into(),
            name: "web-1".into(),
            tags: tags(&[("kuma.io/service", "web"), ("kuma.io/zone", "zone-1")]),
            cert_chain_pem: web1.cert_chain_pem.clone(),
            possession_signature: proof,
            possession_unix: now,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        again.key_pem.is_none(),
        "its own certificate, proven: reused"
    );
    assert_eq!(again.serial, web1.serial);

    // Too many tags, too many bytes, and tags that would make malformed URIs: refused, named.
    let mut many = tags(&[("kuma.io/service", "web")]);
    for i in 0..70 {
        many.insert(format!("t{i}"), "v".into());
    }
    let e = register(&zone, dp_token, many).await.unwrap_err();
    assert!(e.message().contains("at most 64"), "{}", e.message());
    let mut big = tags(&[("kuma.io/service", "web")]);
    for i in 0..40 {
        big.insert(format!("t{i}"), "v".repeat(250));
    }
    let e = register(&zone, dp_token, big).await.unwrap_err();
    assert!(e.message().contains("8192"), "{}", e.message());
    for (k, v, named) in [
        ("version", "..", "version"),
        ("version", "a?x=1#frag", "version"),
        ("version", "<img src=x>", "version"),
        ("a/../admin", "v", "a/../admin"),
        ("team", "a b", "team"),
    ] {
        let e = register(&zone, dp_token, tags(&[("kuma.io/service", "web"), (k, v)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{k}={v}: {e:?}");
        assert!(e.message().contains(named), "{k}={v}: {}", e.message());
    }

    // Readers without the admin token never see inline credentials; the admin does (global).
    let (_, body) = testkit::api::Api::new(&g.api_url(), None)
        .get("/meshes/creds")
        .await
        .unwrap();
    let shown = body.to_string();
    assert!(
        !shown.contains(&key_b64) && shown.contains("(redacted)"),
        "{shown}"
    );
    let admin = g.api.get_ok("/meshes/creds").await.unwrap().to_string();
    assert!(admin.contains(&key_b64), "the admin reads what it wrote");
    zone.wait_synced(&["creds"], Duration::from_secs(20))
        .await
        .unwrap();
    let on_zone = zone.api.get_ok("/meshes/creds").await.unwrap().to_string();
    assert!(!on_zone.contains(&key_b64), "{on_zone}");
    let listed = zone.api.get_ok("/meshes").await.unwrap().to_string();
    assert!(!listed.contains(&key_b64), "{listed}");

    // A Host the APIs do not serve: 421 (DNS rebinding); loopback names: served.
    let http = reqwest::Client::new();
    for base in [g.api_url(), zone.api_url()] {
        let resp = http
            .get(format!("{base}/meshes"))
            .header("host", "evil.example:5681")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 421, "{base}");
        // Probes are asked by address (a kubelet, a Prometheus) and hold nothing to steal.
        let resp = http
            .get(format!("{base}/healthz"))
            .header("host", "10.1.2.3:5681")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{base}");
        let resp = http
            .get(format!("{base}/meshes"))
            .header("host", "localhost:5681")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{base}");
    }

    // Data directories 0700, every file in them private (sled's included).
    assert_private(&g.dir);
    assert_private(&zone.dir);
}

/// A connection that never completes its TLS handshake is closed by the sync and proxy listeners
/// (after `limits::TLS_HANDSHAKE_TIMEOUT`, 10 s), instead of being held forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_by_the_tls_listeners() {
    use tokio::io::AsyncReadExt;
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    let token = g.zone_token_file("zone-1", tmp.path()).await.unwrap();
    let zone = ZoneProc::start("zone-1", &g, &token, &tmp.path().join("zone-1"))
        .await
        .unwrap();
    let ports = [g.kds_port, zone.dp_port];
    let closed = ports.map(|port| async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("the listener closes a silent connection")
            .unwrap_or(0);
        (n, started.elapsed())
    });
    let [(n1, t1), (n2, t2)] = futures::future::join_all(closed).await.try_into().unwrap();
    for (n, t, what) in [(n1, t1, "sync"), (n2, t2, "proxy")] {
        assert_eq!(n, 0, "{what}: closed without a byte");
        assert!(
            t >= Duration::from_secs(9) && t < Duration::from_secs(20),
            "{what}: closed after {t:?}"
        );
    }
}
