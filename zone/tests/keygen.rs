//! `dpCert.keyGeneration: proxy` with the real binaries and OpenBao: a Vault token whose policy
//! allows only `<pki>/sign/<role>` is enough (global's admission test-signs a CSR, the zone signs
//! the agents' CSRs); a key type the role refuses is refused at admission, naming the fix; the
//! proxy's key exists only in its out-dir (never in the zone's data directory, logs or API); a
//! restarted zone lets the proxy keep its certificate (proof of possession with the proxy's own
//! key); every rotation brings a new key.

use std::path::Path;
use std::time::Duration;

use testkit::cluster::{GlobalProc, MESH, ProxyProc, ProxySpec, Vault, ZoneProc};
use testkit::wait::wait_until;

/// The page's Mesh with keys made on the proxies, of `key_type`.
fn mesh_yaml(vault: &Vault, token: &str, key_type: &str) -> String {
    testkit::cluster::vault_mesh_yaml(&vault.addr(), token, "20s").replacen(
        "        expiration: 20s",
        &format!("        expiration: 20s\n      keyGeneration: proxy\n      keyType: {key_type}"),
        1,
    )
}

/// Every file under `dir`, read as bytes, searched for `needle`.
fn found_under(dir: &Path, needle: &str) -> Vec<String> {
    testkit::disk::files_under(dir)
        .unwrap()
        .into_iter()
        .filter(|f| {
            std::fs::read(f)
                .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .map(|f| f.display().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_on_the_proxy_with_a_sign_only_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The role makes EC keys (key_type=ec): EC CSRs are signed, RSA ones refused.
    let vault = Vault::start(false, true).await.unwrap();
    let token = vault.sign_policy_token().unwrap();
    let global = GlobalProc::start(&dir.join("global")).await.unwrap();

    // A key type the role refuses: refused by `global apply --dry-run` with the fix.
    let file = dir.join("mesh-rsa.yaml");
    std::fs::write(&file, mesh_yaml(&vault, &token, "rsa-2048")).unwrap();
    let out = global
        .cli(&["apply", "--dry-run", "-f", &file.display().to_string()])
        .unwrap();
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, Some(1), "{text}");
    assert!(
        text.contains("requires keys of type") && text.contains("dpCert.keyType"),
        "{text}"
    );

    // The role as the page makes it takes a signed certificate's names from the CSR
    // (use_csr_sans): refused, naming the fix.
    let err = global
        .apply(&mesh_yaml(&vault, &token, "ec-p256"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("use_csr_sans=false"), "{err}");
    vault.names_from_requests().unwrap();

    // EC keys with a token that may only sign: admitted (global test-signed a CSR).
    let applied = global
        .apply(&mesh_yaml(&vault, &token, "ec-p256"))
        .await
        .unwrap();
    assert!(
        applied
            .to_string()
            .contains("signed by kmesh-pki-default/sign"),
        "{applied:#}"
    );
    let mut zone =
        ZoneProc::start_minted("zone-1", &global, &dir.join("zone-1"), Default::default())
            .await
            .unwrap();
    zone.wait_synced(&[MESH], Duration::from_secs(30))
        .await
        .unwrap();
    let token_file = global
        .dataplane_token_file(MESH, "web-1", &dir.join("tokens"))
        .await
        .unwrap();
    let proxy = ProxyProc::start(
        &zone,
        &ProxySpec::new(MESH, "web-1", "web"),
        &token_file,
        &dir.join("web-1"),
    )
    .unwrap();
    let first = proxy
        .wait_leaf(dir, None, Duration::from_secs(30))
        .await
        .unwrap();
    let key = std::fs::read_to_string(proxy.file("key.pem")).unwrap();
    assert!(key.contains("PRIVATE KEY"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(proxy.file("key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        first.key_algorithm.contains("EC"),
        "{}",
        first.key_algorithm
    );
    // The key's body appears nowhere but in the proxy's out-dir.
    let body: String = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    // Past the PKCS#8 header every P-256 key shares: the private scalar itself.
    let needle = &body[48..88];
    for place in [dir.join("zone-1"), dir.join("global")] {
        assert!(
            found_under(&place, needle).is_empty(),
            "the proxy's key is in {}",
            place.display()
        );
    }
    let api = zone.api.get_text("/dataplanes").await.unwrap();
    assert!(!api.contains(needle));

    // The zone restarts: the proxy presents its certificate with proof it holds the key, and
    // keeps it.
    zone.restart().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        proxy.leaf().unwrap().serial,
        first.serial,
        "reissued after a restart"
    );
    assert_eq!(std::fs::read_to_string(proxy.file("key.pem")).unwrap(), key);

    // The rotation (at 4/5 of 20 s) brings a new certificate for a new key.
    let second = proxy
        .wait_leaf(dir, Some(&first.serial), Duration::from_secs(30))
        .await
        .unwrap();
    let rotated_key = wait_until(
        "the new key",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async {
            let k = std::fs::read_to_string(proxy.file("key.pem")).ok()?;
            let chain = std::fs::read_to_string(proxy.file("cert.pem")).ok()?;
            common::x509::private_key_matches_cert(&chain, &k).then_some(k)
        },
    )
    .await
    .unwrap();
    assert_ne!(rotated_key, key, "a new key at every rotation");
    assert_ne!(second.serial, first.serial);
    assert!(proxy.log().contains("made a new key and sent its CSR"));
}
