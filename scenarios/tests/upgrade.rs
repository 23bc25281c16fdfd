//! Upgrades lose nothing: the data directories that release 0.1.0 wrote (`tests/fixtures/`,
//! made by `scripts/make-upgrade-fixture` with the released binaries) start under the binaries
//! of this tree with every resource, Secret, token, CA and proxy certificate intact. The Secrets
//! that release stored in plain text are sealed at the first start, in global's store and in the
//! zone's, without the zone being sent or applying anything again.

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

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            found.extend(files_holding(&entry.path(), needle));
        } else {
            let bytes = std::fs::read(entry.path()).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(entry.path().display().to_string());
            }
        }
    }
    found
}

/// The lines of a log that say `text`, without colour codes.
fn log_lines(log: &Path, text: &str) -> Vec<String> {
    read(log)
        .lines()
        .map(strip_colours)
        .filter(|l| l.contains(text))
        .collect()
}

/// `line` without ANSI colour sequences (`ESC [ ... m`).
fn strip_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Global's sync counters of one type for `zone` on its current stream (`GET /zones/{zone}`):
/// (responses acknowledged, resources sent).
async fn sync_counters(global: &GlobalProc, zone: &str, kind: &str) -> (u64, u64) {
    let z = global.zone(zone).await.unwrap();
    let t = &z["types"][kind];
    (
        t["acked"].as_u64().unwrap_or(0),
        t["resourcesSent"].as_u64().unwrap_or(0),
    )
}

const SEALED_LOG: &str = "sealed the Secrets and Meshes an older version stored in plain text";

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

    // The Secrets the old release stored in plain text were sealed, once, and every one is
    // served as it was written.
    let sealed = log_lines(&root.join("global/global.log"), SEALED_LOG);
    assert_eq!(sealed.len(), 1, "{sealed:?}");
    assert!(
        sealed[0].contains("resources=5"),
        "3 Secrets, 2 Meshes: {sealed:?}"
    );
    let export = global
        .api
        .get_ok("/export?includeSecrets=true")
        .await
        .unwrap();
    let secret_data: Vec<(String, String)> = export["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "Secret")
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["data"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(secret_data.len(), 3, "{export}");
    assert!(
        secret_data.contains(&(
            "token-1".to_string(),
            "dXBncmFkZS1maXh0dXJlLXNlY3JldA==".to_string()
        )),
        "token-1 keeps the data release 0.1.0 stored: {secret_data:?}"
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
    // The zone sealed its copies too, and global sent it nothing again: the versions (content
    // hashes of the plain resources) did not move, on either side.
    let sealed = log_lines(&root.join("zone-1/zone.log"), SEALED_LOG);
    assert_eq!(sealed.len(), 1, "{sealed:?}");
    assert!(
        sealed[0].contains("resources=5"),
        "3 Secrets, 2 Meshes: {sealed:?}"
    );
    // (Global's counters are per stream: they start at 0 when the zone connects.)
    let (mesh, secret) = wait_for_at_most(
        "zone-1 acknowledged its first responses",
        root,
        WAIT,
        || async {
            let mesh = sync_counters(&global, "zone-1", "Mesh").await;
            let secret = sync_counters(&global, "zone-1", "Secret").await;
            (mesh.0 >= 1 && secret.0 >= 1).then_some((mesh, secret))
        },
    )
    .await;
    assert_eq!(mesh.1, 0, "no Mesh sent again");
    assert_eq!(secret.1, 0, "no Secret sent again");
    assert_eq!(zone.metric("kmesh_resources_applied").await.unwrap(), 0.0);
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

    // A new proxy is certified by the zone from the builtin CA, whose key is one of the sealed
    // Secrets: the zone reads it back.
    let new_dir = root.join("proxy-2");
    let token = global
        .dataplane_token_file("default", "web-2", &new_dir)
        .await
        .unwrap();
    let spec2 = ProxySpec::new("default", "web-2", "web").tag("version", "v2");
    let proxy2 = ProxyProc::start(&zone, &spec2, &token, &new_dir).unwrap();
    proxy2.wait_leaf(root, None, WAIT).await.unwrap();
    let issued = ProxyIdentity::read(&new_dir.join("out")).unwrap();
    assert!(issued.usable(), "{}", issued.describe());
    assert!(
        issued.chains_to(&held.ca_pem),
        "issued by the CA release 0.1.0 made"
    );

    // No file of either store holds a Secret's data in plain text any more, nor its base64.
    for (name, data) in &secret_data {
        use base64::Engine;
        let plain = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        for dir in [root.join("global"), root.join("zone-1")] {
            assert_eq!(
                files_holding(&dir, data.as_bytes()),
                Vec::<String>::new(),
                "base64 of Secret {name}"
            );
            // The CA certificate is public, and the zone keeps it as a trust anchor.
            if !name.contains("-cert-") {
                assert_eq!(
                    files_holding(&dir, &plain),
                    Vec::<String>::new(),
                    "data of Secret {name}"
                );
            }
        }
    }

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
