//! `zone proxy --workload-api unix:///PATH` with the real binaries on loopback (global, zones,
//! agents) and the real py-spiffe client (`spiffe==0.3.2`, and `spiffe-tls` for TLS) in a
//! virtualenv of the test kit (`testkit::python`):
//!
//! - A mesh whose certificates carry several URI SANs (the default, `kuma` URI SANs) cannot serve
//!   X.509-SVIDs: py-spiffe's fetches fail with FAILED_PRECONDITION saying to set
//!   `dpCert.uriSans: spiffe`. Calls without the `workload.spiffe.io: true` metadata get
//!   INVALID_ARGUMENT, the JWT calls UNIMPLEMENTED; the socket is 0600 and is removed when the
//!   agent stops; an endpoint that is not `unix://` is a usage error (exit 2) naming the flag.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
