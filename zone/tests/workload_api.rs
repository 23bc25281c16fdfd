//! `zone proxy --workload-api unix:///PATH` with the real binaries on loopback (global, zones,
//! agents) and the real py-spiffe client (`spiffe==0.3.2`, and `spiffe-tls` for TLS) in a
//! virtualenv of the test kit (`testkit::python`):
//!
//! - A mesh whose certificates carry several URI SANs (the default, `kuma` URI SANs) cannot serve
//!   X.509-SVIDs: py-spiffe's fetches fail with FAILED_PRECONDITION saying to set
//!   `dpCert.uriSans: spiffe`. Calls without the `workload.spiffe.io: true` metadata get
//!   INVALID_ARGUMENT, the JWT calls UNIMPLEMENTED; the socket is 0600 and is removed when the
//!   agent stops; an endpoint that is not `unix://` is a usage error (exit 2) naming the flag.
//! - A mesh with `dpCert: {rotation: {expiration: 20s}, uriSans: spiffe}` on a builtin backend
//!   serves X.509-SVIDs: py-spiffe fetches the SVID (SPIFFE ID, the chain of `cert.pem`, the key
//!   of `key.pem`) and the bundle of trust domain `default` (the certificates of `ca.pem`); a
//!   watching client receives every rotation, the last one being what the files hold; two
//!   workloads of proxies in two zones complete an mTLS exchange with spiffe-tls, each
//!   authorizing the other's SPIFFE ID, and a client expecting another ID is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::time::Instant;

use testkit::bins::binary;
use testkit::cluster::*;
use testkit::python;
use testkit::wait::WAIT;

/// What a snippet may take (py-spiffe's own timeouts are shorter).
const SNIPPET: Duration = Duration::from_secs(60);

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

fn endpoint(sock: &Path) -> String {
    format!("unix://{}", sock.display())
}

/// Runs a py-spiffe snippet with `SOCK` set to the endpoint of `sock`; its stdout.
async fn py(script: &str, sock: &Path) -> String {
    let (script, ep) = (script.to_string(), endpoint(sock));
    tokio::task::spawn_blocking(move || python::run_ok(&script, &[("SOCK", &ep)], SNIPPET))
        .await
        .unwrap()
        .unwrap()
}

/// A proxy serving the Workload API on `<dir>/<name>.sock`.
fn api_proxy(mesh: &str, name: &str, service: &str, dir: &Path) -> (ProxySpec, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    let spec = ProxySpec::new(mesh, name, service)
        .rust_log("info,zone::agent=debug")
        .args(&["--workload-api", &endpoint(&sock)]);
    (spec, sock)
}

/// Makes the virtualenv before the binaries start, so that its first install (pip downloads)
/// does not eat into what the cluster waits for.
async fn venv() {
    tokio::task::spawn_blocking(python::python)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_with_several_uri_sans_are_refused_with_what_to_set_and_the_api_is_guarded() {
    venv().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let global = GlobalProc::start_in(&root.join("global"), "info")
        .await
        .unwrap();
    global
        .apply(&builtin_mesh_yaml("default", "1h"))
        .await
        .unwrap();
    let zone = ZoneProc::start_minted(
        "zone-1",
        &global,
        &root.join("zone-1"),
        ZoneOptions::in_dir(&root.join("zone-1"), "info"),
    )
    .await
    .unwrap();
    zone.wait_synced(&["default"], WAIT).await.unwrap();

    // Not unix://: a usage error naming the flag, before anything starts.
    let token = global
        .cli_dataplane_token_file("default", "web-1", root)
        .unwrap();
    let out = std::process::Command::new(binary("zone").unwrap())
        .args(["proxy", "--zone-address", &zone.dp_address()])
        .arg("--zone-ca-file")
        .arg(zone.dp_ca_file())
        .arg("--token-file")
        .arg(&token)
        .args(["--mesh", "default", "--name", "web-1", "--service", "web"])
        .arg("--out-dir")
        .arg(root.join("unused"))
        .args(["--workload-api", "tcp://127.0.0.1:8081"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--workload-api") && stderr.contains("unix:///"),
        "{stderr}"
    );

    let (spec, sock) = api_proxy("default", "web-1", "web", root);
    let mut web = ProxyProc::start(
        &zone,
        &spec.tag("version", "v1"),
        &token,
        &root.join("web-1"),
    )
    .unwrap();
    let leaf = web.wait_leaf(root, None, WAIT).await.unwrap();
    assert!(leaf.uri_sans.len() > 1, "{:?}", leaf.uri_sans);
    assert_eq!(mode(&sock), 0o600);

    // py-spiffe: both X.509 fetches fail, saying what to set.
    let out = py(
        r#"
import os
from spiffe import WorkloadApiClient
c = WorkloadApiClient(socket_path=os.environ["SOCK"])
for name, call in [("svid", c.fetch_x509_svid), ("bundles", c.fetch_x509_bundles)]:
    try:
        call(timeout=10)
        print(f"{name}: served")
    except Exception as e:
        print(f"{name}: {type(e).__name__}: {e}")
"#,
        &sock,
    )
    .await;
    for line in out.lines() {
        assert!(
            line.contains("FAILED_PRECONDITION") && line.contains("dpCert.uriSans: spiffe"),
            "{out}"
        );
    }
    assert!(out.contains("svid: FetchX509SvidError"), "{out}");
    assert!(out.contains("bundles: FetchX509BundleError"), "{out}");

    // Without the metadata: INVALID_ARGUMENT, on every call; with it, the JWT calls are
    // UNIMPLEMENTED (raw stubs of py-spiffe's generated code, which add no metadata).
    let out = py(
        r#"
import os, grpc
from spiffe._proto import workload_pb2 as w, workload_pb2_grpc as g
stub = g.SpiffeWorkloadAPIStub(grpc.insecure_channel(os.environ["SOCK"]))
md = [("workload.spiffe.io", "true")]
calls = {
    "FetchX509SVID": lambda m: next(stub.FetchX509SVID(w.X509SVIDRequest(), metadata=m, timeout=10)),
    "FetchX509Bundles": lambda m: next(stub.FetchX509Bundles(w.X509BundlesRequest(), metadata=m, timeout=10)),
    "FetchJWTSVID": lambda m: stub.FetchJWTSVID(w.JWTSVIDRequest(audience=["a"]), metadata=m, timeout=10),
    "FetchJWTBundles": lambda m: next(stub.FetchJWTBundles(w.JWTBundlesRequest(), metadata=m, timeout=10)),
    "ValidateJWTSVID": lambda m: stub.ValidateJWTSVID(w.ValidateJWTSVIDRequest(audience="a", svid="x"), metadata=m, timeout=10),
}
for with_md in (False, True):
    for name, call in calls.items():
        try:
            call(md if with_md else None)
            print(name, with_md, "OK")
        except grpc.RpcError as e:
            print(name, with_md, e.code().name, e.details())
"#,
        &sock,
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10, "{out}");
    for l in &lines[..5] {
        assert!(
            l.contains(" False INVALID_ARGUMENT") && l.contains("workload.spiffe.io"),
            "{out}"
        );
    }
    for call in ["FetchJWTSVID", "FetchJWTBundles", "ValidateJWTSVID"] {
        assert!(
            out.contains(&format!("{call} True UNIMPLEMENTED")),
            "{call}: {out}"
        );
    }
    assert!(
        out.contains("FetchX509SVID True FAILED_PRECONDITION"),
        "{out}"
    );

    // The agent's one shutdown path removes the socket.
    web.terminate();
    assert!(!sock.exists(), "{} is left behind", sock.display());
}

/// A builtin Mesh whose certificates are X.509-SVIDs for keys the proxies make themselves
/// (`keyGeneration: proxy`), and last 20 s (renewed at about 16 s).
fn svid_mesh_yaml(mesh: &str) -> String {
    format!(
        "type: Mesh\nname: {mesh}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 20s\n      uriSans: spiffe\n      keyGeneration: proxy\n"
    )
}

/// The DER certificates of a PEM file, as lower-case hex, concatenated.
fn ders_hex(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    hex::encode(common::x509::pem_to_ders(&text).unwrap().concat())
}

/// Lines of `log` that start with `prefix`, without it.
fn lines_of(log: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(prefix).map(str::to_string))
        .collect()
}

/// What py-spiffe's one-shot fetches return, printed as `key=value` lines.
const FETCH: &str = r#"
import os
from cryptography.hazmat.primitives import serialization as s
from spiffe import WorkloadApiClient, TrustDomain
c = WorkloadApiClient(socket_path=os.environ["SOCK"])
svid = c.fetch_x509_svid(timeout=10)
print("id=" + str(svid.spiffe_id))
print("serial=" + format(svid.leaf.serial_number, "x"))
print("chain=" + b"".join(x.public_bytes(s.Encoding.DER) for x in svid.cert_chain).hex())
pk = lambda k: k.public_bytes(s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo)
print("key_is_leafs=" + str(pk(svid.private_key.public_key()) == pk(svid.leaf.public_key())))
on_disk = s.load_pem_private_key(open(os.environ["KEY"], "rb").read(), None)
p8 = lambda k: k.private_bytes(s.Encoding.DER, s.PrivateFormat.PKCS8, s.NoEncryption())
print("key_is_key_pem=" + str(p8(svid.private_key) == p8(on_disk)))
bundles = c.fetch_x509_bundles(timeout=10)
print("domains=" + ",".join(sorted(str(b.trust_domain) for b in bundles.bundles)))
b = bundles.get_bundle_for_trust_domain(TrustDomain("default"))
print("authorities=" + ",".join(sorted(a.public_bytes(s.Encoding.DER).hex() for a in b.x509_authorities)))
"#;

/// A client that watches FetchX509SVID and prints each SVID it receives.
const WATCH: &str = r#"
import os, threading
from spiffe import WorkloadApiClient
c = WorkloadApiClient(socket_path=os.environ["SOCK"])
def got(ctx):
    svid = ctx.default_svid
    print("SVID " + str(svid.spiffe_id) + " " + format(svid.leaf.serial_number, "x"), flush=True)
def failed(e):
    print("ERROR " + str(e), flush=True)
c.stream_x509_contexts(got, failed)
threading.Event().wait()
"#;

/// A spiffe-tls server: one mTLS connection from a client with the SPIFFE ID `PEER`, answered
/// with `hello from ID`.
const SERVE: &str = r#"
import os
from spiffe import X509Source, SpiffeId
from spiffetls import listen, ListenOptions
from spiffetls.tlsconfig.authorize import authorize_id
source = X509Source(socket_path=os.environ["SOCK"], timeout_in_seconds=30)
server = listen("127.0.0.1:" + os.environ["PORT"], source, ListenOptions(authorize_fn=authorize_id(SpiffeId(os.environ["PEER"]))))
print("LISTENING", flush=True)
while True:
    conn, _ = server.accept()
    try:
        conn.do_handshake()
        msg = conn.recv(1024)
        print("SERVED " + msg.decode(), flush=True)
        conn.sendall(b"hello from " + str(source.svid.spiffe_id).encode())
        conn.shutdown()
    except Exception as e:
        print("REFUSED " + type(e).__name__ + ": " + str(e), flush=True)
    finally:
        conn.close()
"#;

/// A spiffe-tls client that expects the server's SPIFFE ID to be `PEER`.
const DIAL: &str = r#"
import os
from spiffe import X509Source, SpiffeId
from spiffetls import dial
from spiffetls.tlsconfig.authorize import authorize_id
source = X509Source(socket_path=os.environ["SOCK"], timeout_in_seconds=30)
try:
    conn = dial("127.0.0.1:" + os.environ["PORT"], source, authorize_fn=authorize_id(SpiffeId(os.environ["PEER"])))
    conn.sendall(b"ping from " + str(source.svid.spiffe_id).encode())
    print("ANSWER " + conn.recv(1024).decode())
    conn.close()
except Exception as e:
    print("FAILED " + type(e).__name__ + ": " + str(e))
source.close()
"#;

/// `key=value` lines as pairs.
fn fields(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_gets_svids_and_bundles_follows_rotations_and_talks_mtls_across_zones() {
    venv().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let global = GlobalProc::start_in(&root.join("global"), "info")
        .await
        .unwrap();
    global.apply(&svid_mesh_yaml("default")).await.unwrap();
    let mut zones = Vec::new();
    for name in ["zone-1", "zone-2"] {
        let z = ZoneProc::start_minted(
            name,
            &global,
            &root.join(name),
            ZoneOptions::in_dir(&root.join(name), "info"),
        )
        .await
        .unwrap();
        z.wait_synced(&["default"], WAIT).await.unwrap();
        zones.push(z);
    }
    let (web_spec, web_sock) = api_proxy("default", "web-1", "web", root);
    let web = ProxyProc::start(
        &zones[0],
        &web_spec.tag("version", "v1"),
        &global
            .cli_dataplane_token_file("default", "web-1", root)
            .unwrap(),
        &root.join("web-1"),
    )
    .unwrap();
    let (backend_spec, backend_sock) = api_proxy("default", "backend-1", "backend", root);
    let backend = ProxyProc::start(
        &zones[1],
        &backend_spec,
        &global
            .cli_dataplane_token_file("default", "backend-1", root)
            .unwrap(),
        &root.join("backend-1"),
    )
    .unwrap();
    let first = web.wait_leaf(root, None, WAIT).await.unwrap();
    backend.wait_leaf(root, None, WAIT).await.unwrap();
    // One URI SAN, tags or not: an X.509-SVID.
    assert_eq!(first.uri_sans, vec!["spiffe://default/web".to_string()]);
    assert_eq!(mode(&web_sock), 0o600);

    // A watching client, from the first certificate on.
    let watch_log = root.join("watch.log");
    let ep = endpoint(&web_sock);
    let _watcher = python::spawn(
        "py-spiffe watcher",
        WATCH,
        &[("SOCK", &ep)],
        watch_log.clone(),
    )
    .unwrap();

    // The one-shot fetches: what the files hold (a rotation in between makes us look again).
    let key = web.file("key.pem").display().to_string();
    let (got, chain) = {
        let mut tries = 0;
        loop {
            let before = ders_hex(&web.file("cert.pem"));
            let (script, env_sock, env_key) = (FETCH.to_string(), ep.clone(), key.clone());
            let out = tokio::task::spawn_blocking(move || {
                python::run_ok(&script, &[("SOCK", &env_sock), ("KEY", &env_key)], SNIPPET)
            })
            .await
            .unwrap()
            .unwrap();
            let got = fields(&out);
            tries += 1;
            if (got["chain"] == before && ders_hex(&web.file("cert.pem")) == before) || tries == 3 {
                break (got, before);
            }
        }
    };
    assert_eq!(got["id"], "spiffe://default/web");
    assert_eq!(got["chain"], chain, "the SVID's chain is cert.pem's");
    assert_eq!(got["key_is_leafs"], "True");
    assert_eq!(got["key_is_key_pem"], "True");
    assert_eq!(got["domains"], "default");
    let ca_text = std::fs::read_to_string(web.file("ca.pem")).unwrap();
    let mut authorities: Vec<String> = common::x509::pem_to_ders(&ca_text)
        .unwrap()
        .iter()
        .map(hex::encode)
        .collect();
    authorities.sort();
    assert_eq!(got["authorities"], authorities.join(","));

    // Rotations reach the watching client: at least two SVIDs, the last one what cert.pem holds.
    let started = Instant::now();
    let seen = loop {
        let seen = lines_of(&watch_log, "SVID ");
        let on_disk = web.leaf().map(|l| {
            l.serial
                .replace(':', "")
                .trim_start_matches('0')
                .to_string()
        });
        let last = seen
            .last()
            .and_then(|l| l.split_whitespace().nth(1))
            .map(|s| s.trim_start_matches('0').to_string());
        let distinct: std::collections::BTreeSet<&String> = seen.iter().collect();
        if distinct.len() >= 2 && last.is_some() && last == on_disk {
            break seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no rotation reached the watcher in 60 s: {seen:?}, on disk {on_disk:?}\n{}",
            std::fs::read_to_string(&watch_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        seen.iter().all(|l| l.starts_with("spiffe://default/web ")),
        "{seen:?}"
    );
    assert!(lines_of(&watch_log, "ERROR ").is_empty(), "{seen:?}");

    // mTLS between the workloads of zone-1's and zone-2's proxies, with their SVIDs.
    let port = testkit::proc::free_port().to_string();
    let serve_log = root.join("serve.log");
    let backend_ep = endpoint(&backend_sock);
    let _server = python::spawn(
        "spiffe-tls server",
        SERVE,
        &[
            ("SOCK", &backend_ep),
            ("PORT", &port),
            ("PEER", "spiffe://default/web"),
        ],
        serve_log.clone(),
    )
    .unwrap();
    let started = Instant::now();
    while lines_of(&serve_log, "LISTENING").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the spiffe-tls server did not start:\n{}",
            std::fs::read_to_string(&serve_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dial = |peer: &'static str| {
        let (ep, port) = (ep.clone(), port.clone());
        tokio::task::spawn_blocking(move || {
            python::run_ok(
                DIAL,
                &[("SOCK", &ep), ("PORT", &port), ("PEER", peer)],
                SNIPPET,
            )
        })
    };
    let out = dial("spiffe://default/backend").await.unwrap().unwrap();
    assert_eq!(
        out.trim(),
        "ANSWER hello from spiffe://default/backend",
        "{out}\n{}",
        std::fs::read_to_string(&serve_log).unwrap_or_default()
    );
    assert_eq!(
        lines_of(&serve_log, "SERVED "),
        vec!["ping from spiffe://default/web".to_string()]
    );
    // A client that expects another identity refuses the server.
    let out = dial("spiffe://default/nobody").await.unwrap().unwrap();
    assert!(out.starts_with("FAILED "), "{out}");
}
