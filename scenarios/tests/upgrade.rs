//! Upgrades lose nothing: the data directories that release 0.1.0 wrote (`tests/fixtures/`,
//! made by `scripts/make-upgrade-fixture` with the released binaries) start under the binaries
//! of this tree with every resource, Secret, token, CA and proxy certificate intact.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::certs::ProxyIdentity;
use testkit::cluster::{GlobalProc, ProxyProc, ProxySpec, ZoneProc};
use testkit::wait::wait_for_at_most;

const WAIT: Duration = Duration::from_secs(30);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/release-0.1.0")
}

/// Copies the fixture as an installation would hold it: directories 0700, keys and tokens 0600
/// (git keeps no modes but the executable bit).
fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let private = name.ends_with("key.pem") || name.ends_with("token");
            let mode = if private { 0o600 } else { 0o644 };
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

/// A serial as hex digits without separators or leading zeros, upper case: openssl prints
/// `DF9C...`, the APIs `00:df:9c:...`.
fn serial_digits(s: &str) -> String {
    s.trim()
        .trim_start_matches("serial=")
        .replace(':', "")
        .trim_start_matches('0')
        .to_uppercase()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn data_written_by_release_0_1_0_opens_with_these_binaries() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    copy_tree(&fx, root);
    let old_serial = serial_digits(&read(&fx.join("web-1.serial")));

    // Global: the same admin token, sync CA, Meshes and Secrets.
    let global = GlobalProc::start(&root.join("global")).await.unwrap();
    assert_eq!(global.token, read(&fx.join("global/admin-token")).trim());
    assert_eq!(
        read(&root.join("global/kds-ca.pem")),
        read(&fx.join("global/kds-ca.pem")),
        "the sync CA the zones trust is kept"
    );
    let meshes = global.api.get_ok("/meshes").await.unwrap();
    assert_eq!(names(&meshes), ["default", "plain"]);
    let mesh = global.api.get_ok("/meshes/default").await.unwrap();
    assert_eq!(mesh["mtls"]["enabledBackend"], "ca-1");
    let secrets = global.api.get_ok("/meshes/default/secrets").await.unwrap();
    assert_eq!(
        names(&secrets),
        [
            "default.ca-builtin-cert-ca-1",
            "default.ca-builtin-key-ca-1",
            "token-1"
        ]
    );

    // The zone, with the zone token the old global signed (the signing key is kept), serves the
    // same dp CA and its dataplane record before any proxy reconnects.
    let zone = ZoneProc::start(
        "zone-1",
        &global,
        &root.join("zone-1.token"),
        &root.join("zone-1"),
    )
    .await
    .unwrap();
    zone.wait_synced(&["default", "plain"], WAIT).await.unwrap();
    assert_eq!(
        read(&root.join("zone-1/dp-ca.pem")),
        read(&fx.join("zone-1/dp-ca.pem")),
        "the dp CA the proxies trust is kept"
    );
    let record = zone
        .dataplanes()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d["name"] == "web-1")
        .expect("the dataplane record of web-1 is kept");
    assert_eq!(
        serial_digits(record["serial"].as_str().unwrap()),
        old_serial
    );

    // The proxy, with its old out-dir and the dataplane token the old global signed, keeps the
    // very certificate it had: reused, not reissued.
    let proxy_dir = root.join("proxy");
    std::fs::create_dir_all(&proxy_dir).unwrap();
    std::fs::rename(root.join("proxy-web-1"), proxy_dir.join("out")).unwrap();
    let spec = ProxySpec::new("default", "web-1", "web").tag("version", "v1");
    let _proxy = ProxyProc::start(&zone, &spec, &root.join("web-1.token"), &proxy_dir).unwrap();
    wait_for_at_most("web-1 connected to the zone", root, WAIT, || async {
        let dps = zone.dataplanes().await.ok()?;
        dps.iter()
            .any(|d| d["name"] == "web-1" && d["connected"] == true)
            .then_some(())
    })
    .await;
    let reused = zone.metric("kmesh_certificates_reused").await.unwrap();
    assert!(reused >= 1.0, "the held certificate was reused ({reused})");
    assert_eq!(zone.metric("kmesh_certificates_issued").await.unwrap(), 0.0);
    let held = ProxyIdentity::read(&proxy_dir.join("out")).unwrap();
    assert_eq!(
        serial_digits(held.serial()),
        old_serial,
        "cert.pem is the one release 0.1.0 issued"
    );
    assert!(
        held.usable(),
        "key, chain and trust bundle still fit together"
    );

    // Global lists it again, as the zone reports it.
    wait_for_at_most("global lists web-1", root, WAIT, || async {
        let list = global.api.get_ok("/meshes/default/dataplanes").await.ok()?;
        list["items"]
            .as_array()?
            .iter()
            .any(|d| {
                d["name"] == "web-1"
                    && d["zone"] == "zone-1"
                    && d["certificate"]["serial"]
                        .as_str()
                        .is_some_and(|s| serial_digits(s) == old_serial)
            })
            .then_some(())
    })
    .await;
}
