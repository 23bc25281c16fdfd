//! Secrets at rest, with the real binaries: distinctive Secret values written through global's
//! API (sled, and PostgreSQL) reach a zone, which issues a proxy's certificate from the
//! `provided` CA whose certificate and key are Secrets; then no file of global's data directory,
//! the zone's, or PostgreSQL's data directory holds any value, nor its base64. A store opened
//! with another key, an exposed key file, or a PostgreSQL global without `--secrets-key-file`
//! refuses to start, saying why; a store a previous release wrote, with its manifest, opens and
//! is sealed without being taken for a damaged one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use testkit::cluster::{GlobalOptions, GlobalProc, ProxyProc, ProxySpec, ZoneOptions, ZoneProc};
use testkit::postgres::PgServer;

const WAIT: Duration = Duration::from_secs(30);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            found.extend(files_holding(&entry.path(), needle));
        } else if kind.is_file() {
            // A file may go away while we look (PostgreSQL's temporary files).
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(entry.path().display().to_string());
            }
        }
    }
    found
}

/// The Secrets of one test: a Mesh with a `provided` CA whose certificate is a Secret and whose
/// key is inline in the Mesh (Kuma's `inline`: a credential in a Mesh, sealed as Secrets are),
/// the same key as a Secret too, and a token Secret with a value made for this run.
struct Material {
    yaml: String,
    ca_cert: String,
    /// (Secret name, its value): what must be found nowhere, as is or in base64.
    hidden: Vec<(String, Vec<u8>)>,
}

impl Material {
    fn new(mesh: &str) -> Self {
        let ca = common::ca::generate_builtin_ca(mesh, &Default::default()).unwrap();
        let token = format!(
            "at-rest-{}-never-on-disk",
            hex::encode(rand::random::<[u8; 8]>())
        );
        let yaml = format!(
            "type: Mesh\nname: {mesh}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: provided\n    dpCert:\n      rotation:\n        expiration: 24h\n    conf:\n      cert:\n        secret: ca-cert\n      key:\n        inline: {key}\n---\ntype: Secret\nname: ca-cert\nmesh: {mesh}\ndata: {cert}\n---\ntype: Secret\nname: ca-key\nmesh: {mesh}\ndata: {key}\n---\ntype: Secret\nname: token\nmesh: {mesh}\ndata: {token}\n",
            cert = b64(ca.cert_pem.as_bytes()),
            key = b64(ca.key_pem().as_bytes()),
            token = b64(token.as_bytes()),
        );
        Self {
            yaml,
            ca_cert: ca.cert_pem.clone(),
            hidden: vec![
                ("ca-key".into(), ca.key_pem().as_bytes().to_vec()),
                ("token".into(), token.into_bytes()),
            ],
        }
    }

    /// Asserts that `global` serves every hidden value whole to its admin (`/export`).
    async fn assert_served(&self, global: &GlobalProc) {
        let export = global
            .api
            .get_ok("/export?includeSecrets=true")
            .await
            .unwrap()
            .to_string();
        for (name, value) in &self.hidden {
            assert!(export.contains(&b64(value)), "Secret {name} served");
        }
    }

    /// Asserts that no file under `dirs` holds a hidden value or the base64 of one, nor the
    /// base64 of the CA certificate (the certificate itself is public: the zone keeps it as its
    /// trust anchor, and proxies get it).
    fn assert_nowhere(&self, dirs: &[PathBuf]) {
        let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
        for (name, value) in &self.hidden {
            needles.push((format!("{name} (plain)"), value.clone()));
            needles.push((format!("{name} (base64)"), b64(value).into_bytes()));
        }
        // The body of the PEM key, in case it were stored re-encoded without its armour.
        let key_body: String = String::from_utf8(self.hidden[0].1.clone())
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_string();
        needles.push(("ca-key (first PEM line)".into(), key_body.into_bytes()));
        needles.push((
            "ca-cert (base64)".into(),
            b64(self.ca_cert.as_bytes()).into_bytes(),
        ));
        for dir in dirs {
            assert!(dir.is_dir(), "{} is searched", dir.display());
            for (what, needle) in &needles {
                assert_eq!(
                    files_holding(dir, needle),
                    Vec::<String>::new(),
                    "{what} found under {}",
                    dir.display()
                );
            }
        }
    }
}

/// Writes the material through global's API, lets it reach a zone, has a proxy certified from
/// the provided CA, and checks the values are served back whole (export) and the search finds
/// them where they are meant to be (so that finding nothing elsewhere means something).
async fn write_sync_issue(
    global: &GlobalProc,
    m: &Material,
    mesh: &str,
    tmp: &Path,
) -> (ZoneProc, ProxyProc) {
    let input = tmp.join("input");
    std::fs::create_dir_all(&input).unwrap();
    let yaml_file = input.join("resources.yaml");
    std::fs::write(&yaml_file, &m.yaml).unwrap();
    global.apply(&m.yaml).await.unwrap();
    // Served whole to an admin.
    let export = global
        .api
        .get_ok("/export?includeSecrets=true")
        .await
        .unwrap();
    for (name, value) in &m.hidden {
        let item = export["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"] == "Secret" && i["name"] == name.as_str())
            .unwrap_or_else(|| panic!("Secret {name} exported: {export}"));
        assert_eq!(item["data"], b64(value));
    }
    // The search finds the values where they are: the file they were applied from.
    assert_eq!(
        files_holding(&input, b64(&m.hidden[1].1).as_bytes()),
        [yaml_file.display().to_string()]
    );

    let token = global.zone_token_file("zone-1", tmp).await.unwrap();
    let zone = ZoneProc::start("zone-1", global, &token, &tmp.join("zone-1"))
        .await
        .unwrap();
    zone.wait_synced(&[mesh], WAIT).await.unwrap();
    let proxy_dir = tmp.join("proxy");
    let dp_token = global
        .dataplane_token_file(mesh, "web-1", &proxy_dir)
        .await
        .unwrap();
    let spec = ProxySpec::new(mesh, "web-1", "web");
    let proxy = ProxyProc::start(&zone, &spec, &dp_token, &proxy_dir).unwrap();
    proxy.wait_leaf(tmp, None, WAIT).await.unwrap();
    let identity = proxy.identity().expect("the proxy's files");
    assert!(identity.usable(), "{}", identity.describe());
    assert!(
        identity.chains_to(&m.ca_cert),
        "issued by the provided CA whose key is inline in the sealed Mesh"
    );
    (zone, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_secret_values_reach_issuance_and_no_file_of_either_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let m = Material::new("default");
    let mut global = GlobalProc::start(&root.join("global")).await.unwrap();
    let (mut zone, mut proxy) = write_sync_issue(&global, &m, "default", root).await;
    // Every process stopped, so that whatever they write on the way out is searched too.
    proxy.terminate();
    zone.terminate();
    global.terminate();
    m.assert_nowhere(&[root.join("global"), root.join("zone-1")]);
    // The keys are where SPEC.md says, private.
    for dir in ["global", "zone-1"] {
        use std::os::unix::fs::PermissionsExt;
        let key = root.join(dir).join("secrets.key");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_secret_values_reach_issuance_and_no_file_of_the_database_or_stores() {
    let pg = PgServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let m = Material::new("default");
    let mut global = GlobalProc::start_with(
        &root.join("global"),
        GlobalOptions::default().store(&pg.url()),
    )
    .await
    .unwrap();
    let (mut zone, mut proxy) = write_sync_issue(&global, &m, "default", root).await;
    // A second replica with the same key file reads them (from its own load of the database).
    let b = GlobalProc::start_with(
        &root.join("global-b"),
        GlobalOptions::default().store(&pg.url()),
    )
    .await
    .unwrap();
    m.assert_served(&b).await;
    drop(b);
    proxy.terminate();
    zone.terminate();
    global.terminate();
    // Everything PostgreSQL holds in memory goes to its files.
    pg.psql("CHECKPOINT").unwrap();
    m.assert_nowhere(&[
        pg.data_dir().to_path_buf(),
        root.join("global"),
        root.join("global-b"),
        root.join("zone-1"),
    ]);
    // The rows hold envelopes, not specs.
    let rows = pg
        .psql("SELECT kind, name, spec IS NULL, length(sealed) > 0 FROM resources ORDER BY kind, name")
        .unwrap();
    assert_eq!(
        rows,
        "Mesh|default|t|t\nSecret|ca-cert|t|t\nSecret|ca-key|t|t\nSecret|token|t|t"
    );
    // The replicas' key is the operator's file: neither data directory has one of its own.
    assert!(!root.join("global/secrets.key").exists());

    // Another key: refused, naming both key ids.
    let other = root.join("other.key");
    common::sealing::SecretsKey::load_or_generate(&other).unwrap();
    let options = GlobalOptions::default()
        .store(&pg.url())
        .args(&["--secrets-key-file", other.to_str().unwrap()]);
    let refusal = GlobalProc::start_or_refusal(&root.join("global-c"), options)
        .await
        .unwrap()
        .err()
        .expect("a replica with another key must not start");
    assert!(refusal.contains("cannot be unsealed"), "{refusal}");
    assert!(
        refusal.contains("its replicas seal with another key"),
        "{refusal}"
    );
    let ids = [
        common::sealing::SecretsKey::load(&pg.secrets_key_file())
            .unwrap()
            .id(),
        common::sealing::SecretsKey::load(&other).unwrap().id(),
    ];
    for id in ids {
        assert!(refusal.contains(&id.to_string()), "{refusal}");
    }
    assert!(
        refusal.contains("start with the key that sealed it"),
        "{refusal}"
    );
}

/// What replicas on one database share (the admin token, the token signing key, the sync
/// server's and the HTTPS API CA's private keys) is sealed in it: no file of PostgreSQL holds the
/// token or a key. A group an earlier build stored in clear is sealed by the next replica to
/// start, which still gets the same files from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_shared_keys_and_admin_token_are_sealed_and_clear_ones_get_sealed() {
    let pg = PgServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut a = GlobalProc::start_with(&root.join("a"), GlobalOptions::default().store(&pg.url()))
        .await
        .unwrap();
    let token = std::fs::read_to_string(root.join("a/admin-token")).unwrap();
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("admin token".into(), token.trim().as_bytes().to_vec()),
        (
            "admin token (base64)".into(),
            b64(token.trim().as_bytes()).into_bytes(),
        ),
    ];
    for key in [
        common::tokens::KEY_FILE,
        "kds-tls/key.pem",
        "api-tls/ca-key.pem",
    ] {
        let pem = std::fs::read_to_string(root.join("a").join(key)).unwrap();
        let body = pem.lines().nth(1).unwrap().to_string();
        needles.push((format!("{key} (first PEM line)"), body.into_bytes()));
    }
    let groups = pg
        .psql("SELECT name || ' ' || left(value, 7) FROM shared WHERE name IN ('admin-token', 'api-ca', 'kds-identity', 'token-signing-key') ORDER BY name")
        .unwrap();
    assert_eq!(
        groups,
        "admin-token sealed:\napi-ca sealed:\nkds-identity sealed:\ntoken-signing-key sealed:"
    );
    a.terminate();
    pg.psql("CHECKPOINT").unwrap();
    for (what, needle) in &needles {
        assert_eq!(
            files_holding(pg.data_dir(), needle),
            Vec::<String>::new(),
            "{what} found in PostgreSQL's files"
        );
    }

    // An earlier build's clear admin token: the next replica reads it, then seals it.
    let clear = serde_json::json!({ "admin-token": token }).to_string();
    pg.psql(&format!(
        "UPDATE shared SET value = '{}' WHERE name = 'admin-token'",
        clear.replace('\'', "''")
    ))
    .unwrap();
    let b = GlobalProc::start_with(&root.join("b"), GlobalOptions::default().store(&pg.url()))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("b/admin-token")).unwrap(),
        token,
        "the replica got the admin token the store held"
    );
    b.api.get_ok("/export?includeSecrets=true").await.unwrap();
    assert_eq!(
        pg.psql("SELECT left(value, 7) FROM shared WHERE name = 'admin-token'")
            .unwrap(),
        "sealed:"
    );
}

/// A new key file (0600) at `dir/name`; its path and its key id.
fn new_key(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let (key, _) = common::sealing::SecretsKey::load_or_generate(&path).unwrap();
    (path.display().to_string(), key.id().to_string())
}

/// How many times `text` appears in the file at `path`.
fn times_in(path: &Path, text: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches(text)
        .count()
}

/// Rotating the Secrets key of a sled global and of a zone: started with the new key and the old
/// one as an extra key, each seals everything again with the new one (Secrets, and global's
/// token signing keys), so that the old key can go: started with the new key alone, both serve
/// every Secret (a proxy is issued from the provided CA whose key is inline in the Mesh); with the old key
/// alone, global is refused, naming the new key's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_key_rotates_on_global_and_zone_through_an_extra_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let keys = root.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (old, _) = new_key(&keys, "old.key");
    let (new, new_id) = new_key(&keys, "new.key");
    let (zone_old, _) = new_key(&keys, "zone-old.key");
    let (zone_new, _) = new_key(&keys, "zone-new.key");
    let m = Material::new("default");
    let gdir = root.join("global");
    let mut global = GlobalProc::start_with(
        &gdir,
        GlobalOptions::default().args(&["--secrets-key-file", &old]),
    )
    .await
    .unwrap();
    global.apply(&m.yaml).await.unwrap();
    let token = global.zone_token_file("zone-1", root).await.unwrap();
    let mut zone = ZoneProc::start_with_token(
        "zone-1",
        &global,
        &token,
        &root.join("zone-1"),
        ZoneOptions::default().args(&["--secrets-key-file", &zone_old]),
    )
    .await
    .unwrap();
    let three = |zone: &ZoneProc| {
        let zone = zone.api.clone();
        async move {
            testkit::wait::wait_until(
                "the zone to hold the 3 Secrets",
                WAIT,
                Duration::from_millis(100),
                || {
                    let zone = zone.clone();
                    async move {
                        let mesh = zone.get_ok("/meshes/default").await.ok()?;
                        (mesh["secrets"].as_array()?.len() == 3).then_some(())
                    }
                },
            )
            .await
            .unwrap()
        }
    };
    three(&zone).await;
    let restart = |global: &mut GlobalProc, args: &[&str]| {
        let mut options = global.options();
        options.extra = args.iter().map(|a| a.to_string()).collect();
        global.terminate();
        options
    };
    let log = gdir.join("global.log");
    let zone_log = root.join("zone-1/zone.log");
    let sealed_again = "sealed again with the key the Secrets and Meshes an extra key sealed";

    // The rotation: the new key seals, the old one only opens.
    let options = restart(
        &mut global,
        &["--secrets-key-file", &new, "--secrets-extra-key-file", &old],
    );
    global = GlobalProc::start_with(&gdir, options).await.unwrap();
    assert_eq!(
        times_in(&log, sealed_again),
        1,
        "{}",
        global.proc.log_tail(20)
    );
    assert_eq!(
        times_in(&log, "token signing key sealed again"),
        1,
        "{}",
        global.proc.log_tail(20)
    );
    m.assert_served(&global).await;
    zone.restart_with_args(&[
        "--secrets-key-file",
        &zone_new,
        "--secrets-extra-key-file",
        &zone_old,
    ])
    .await
    .unwrap();
    three(&zone).await;
    assert_eq!(
        times_in(&zone_log, sealed_again),
        1,
        "{}",
        zone.proc.log_tail(20)
    );

    // The old keys go: everything opens with the new ones alone, and nothing is sealed again.
    let options = restart(&mut global, &["--secrets-key-file", &new]);
    global = GlobalProc::start_with(&gdir, options).await.unwrap();
    m.assert_served(&global).await;
    assert_eq!(times_in(&log, sealed_again), 1);
    zone.restart_with_args(&["--secrets-key-file", &zone_new])
        .await
        .unwrap();
    three(&zone).await;
    assert_eq!(times_in(&zone_log, sealed_again), 1);
    let proxy_dir = root.join("proxy");
    let dp_token = global
        .dataplane_token_file("default", "web-1", &proxy_dir)
        .await
        .unwrap();
    let mut proxy = ProxyProc::start(
        &zone,
        &ProxySpec::new("default", "web-1", "web"),
        &dp_token,
        &proxy_dir,
    )
    .unwrap();
    proxy.wait_leaf(root, None, WAIT).await.unwrap();
    assert!(
        proxy.identity().unwrap().chains_to(&m.ca_cert),
        "issued by the provided CA whose key (in the Mesh) the zone unsealed with its new key"
    );
    proxy.terminate();

    // The old key alone no longer opens anything.
    let options = restart(&mut global, &["--secrets-key-file", &old]);
    let refusal = GlobalProc::start_or_refusal(&gdir, options)
        .await
        .unwrap()
        .err()
        .expect("global must not start with the retired key");
    assert!(refusal.contains(&new_id), "{refusal}");
    assert!(
        refusal.contains("start with the key that sealed it"),
        "{refusal}"
    );
    zone.terminate();
}

/// Rotating the Secrets key of PostgreSQL replicas: a replica given the new key as an extra key
/// changes nothing; one started with the new key and the old one as an extra key seals every Secret row, the shared values and the signing keys again
/// and names the new key as the one the replicas seal with; then a replica with the new key
/// alone starts, and one with the old key alone is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_rotate_the_secrets_key_through_an_extra_key() {
    use base64::Engine;
    let pg = PgServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let old = pg.secrets_key_file().display().to_string();
    let old_id = common::sealing::SecretsKey::load(&pg.secrets_key_file())
        .unwrap()
        .id()
        .to_string();
    let (new, new_id) = new_key(root, "new.key");
    let m = Material::new("default");
    let mut a = GlobalProc::start_with(&root.join("a"), GlobalOptions::default().store(&pg.url()))
        .await
        .unwrap();
    a.apply(&m.yaml).await.unwrap();
    a.terminate();
    let key_ids = |pg: &PgServer| {
        let rows = pg
            .psql("SELECT DISTINCT encode(substring(sealed FROM 2 FOR 8), 'hex') FROM resources WHERE sealed IS NOT NULL")
            .unwrap();
        let shared = pg
            .psql("SELECT value FROM shared WHERE name IN ('admin-token', 'api-ca', 'kds-identity', 'token-signing-key')")
            .unwrap();
        let mut ids: Vec<String> = shared
            .lines()
            .map(|v| {
                let sealed = base64::engine::general_purpose::STANDARD
                    .decode(v.strip_prefix("sealed:").unwrap())
                    .unwrap();
                hex::encode(&sealed[1..9])
            })
            .collect();
        ids.extend(rows.lines().map(str::to_string));
        ids.sort();
        ids.dedup();
        let named = pg
            .psql("SELECT value FROM shared WHERE name = 'secrets-key-id'")
            .unwrap();
        (ids, named)
    };
    assert_eq!(key_ids(&pg), (vec![old_id.clone()], old_id.clone()));

    // A replica in `dir` with these key flags: it serves every hidden value, then stops.
    let replica = |dir: &'static str, args: Vec<&str>| {
        let options = GlobalOptions::default().store(&pg.url()).args(&args);
        let (dir, m) = (root.join(dir), &m);
        async move {
            let replica = GlobalProc::start_with(&dir, options).await.unwrap();
            m.assert_served(&replica).await;
        }
    };
    let extra = "--secrets-extra-key-file";

    // Step 1 of the rolling rotation: the new key as an extra key changes nothing.
    replica("a", vec!["--secrets-key-file", &old, extra, &new]).await;
    assert_eq!(key_ids(&pg), (vec![old_id.clone()], old_id.clone()));
    // Step 2: the new key seals, the old one opens: everything is sealed again.
    replica("b", vec!["--secrets-key-file", &new, extra, &old]).await;
    assert_eq!(key_ids(&pg), (vec![new_id.clone()], new_id.clone()));
    // Step 3: the old key goes.
    replica("c", vec!["--secrets-key-file", &new]).await;

    let refusal =
        GlobalProc::start_or_refusal(&root.join("d"), GlobalOptions::default().store(&pg.url()))
            .await
            .unwrap()
            .err()
            .expect("a replica with the retired key alone must not start");
    assert!(refusal.contains(&new_id), "{refusal}");
}

#[tokio::test]
async fn postgres_without_a_key_file_exits_2_saying_so() {
    let pg = PgServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(testkit::bins::binary("global").unwrap())
        .args(["run", "--store", &pg.url(), "--data-dir"])
        .arg(tmp.path())
        .args(["--api-addr", "127.0.0.1:0", "--kds-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--secrets-key-file"), "{stderr}");
    assert!(stderr.contains("every replica"), "{stderr}");
    // Nothing was touched: not even the schema.
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'resources'")
            .unwrap(),
        "0"
    );
}

/// Replaces the key file at `path` with a new random key (0600).
fn replace_key(path: &Path) {
    std::fs::remove_file(path).unwrap();
    common::sealing::SecretsKey::load_or_generate(path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_lost_or_exposed_key_is_a_clear_start_up_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let m = Material::new("default");
    let gdir = root.join("global");
    let mut global = GlobalProc::start(&gdir).await.unwrap();
    let (mut zone, mut proxy) = write_sync_issue(&global, &m, "default", root).await;
    proxy.terminate();
    zone.terminate();
    let options = global.options();
    global.terminate();
    let key = gdir.join("secrets.key");
    let good = std::fs::read(&key).unwrap();
    let refused = |text: Option<String>| text.expect("global must not start");

    // Another key.
    replace_key(&key);
    let text = refused(
        GlobalProc::start_or_refusal(&gdir, options.clone())
            .await
            .unwrap()
            .err(),
    );
    assert!(text.contains("cannot be unsealed"), "{text}");
    assert!(text.contains(&key.display().to_string()), "{text}");
    assert!(text.contains("start with the key that sealed it"), "{text}");
    for (_, value) in &m.hidden {
        assert!(!text.contains(&b64(value)), "no Secret data in the refusal");
    }

    // A lost key file: a new one is generated, and the refusal says the file was missing.
    std::fs::remove_file(&key).unwrap();
    let text = refused(
        GlobalProc::start_or_refusal(&gdir, options.clone())
            .await
            .unwrap()
            .err(),
    );
    assert!(text.contains("generated at this start"), "{text}");

    // The right key, readable by others: refused before anything is opened.
    std::fs::write(&key, &good).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let text = refused(
        GlobalProc::start_or_refusal(&gdir, options.clone())
            .await
            .unwrap()
            .err(),
    );
    assert!(text.contains("chmod 600"), "{text}");

    // Made private again: global starts and serves the Secrets.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let global = GlobalProc::start_with(&gdir, options).await.unwrap();
    m.assert_served(&global).await;

    // The zone, with another key: refused too, naming its key file.
    let zkey = root.join("zone-1/secrets.key");
    replace_key(&zkey);
    let Err(err) = zone.restart().await else {
        panic!("the zone must not start with another key");
    };
    let text = format!("{err:#}");
    assert!(text.contains("exited (exit status: 1)"), "{text}");
    assert!(text.contains("cannot be unsealed"), "{text}");
    assert!(text.contains(&zkey.display().to_string()), "{text}");
}

/// A data directory of the previous release: Secrets in plain text, and the store manifest that
/// release kept beside its store. The new binary seals them and the store guard still finds the
/// store to be the one last committed (the fingerprint is made of content hashes, which sealing
/// leaves alone): it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_release_store_with_its_manifest_is_sealed_and_not_taken_for_damaged() {
    use common::model::{Resource, Secret};
    use common::store::{Op, Store};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("global");
    let value = b"previous-release-plain-value-93b1";
    {
        // What the previous release wrote (records with the plain spec), and its manifest.
        let store = Store::open_unsealed_bench_baseline(&dir).unwrap();
        store
            .write(vec![
                Op::Put(Resource::Mesh(
                    serde_json::from_str(r#"{"type":"Mesh","name":"default"}"#).unwrap(),
                )),
                Op::Put(Resource::Secret(Secret::new("default", "old", value))),
            ])
            .await
            .unwrap();
        let identity = store.identity().await.unwrap();
        common::integrity::write_manifest(&store, &dir, &identity).unwrap();
    }
    assert!(!files_holding(&dir, b64(value).as_bytes()).is_empty());
    let mut global = GlobalProc::start(&dir).await.unwrap();
    let log = std::fs::read_to_string(dir.join("global.log")).unwrap();
    assert!(log.contains("store checked against its manifest"), "{log}");
    assert!(
        log.lines().any(|l| l
            .contains("sealed the Secrets and Meshes an older version stored in plain text")
            && l.contains("resources=2")),
        "{log}"
    );
    let export = global
        .api
        .get_ok("/export?includeSecrets=true")
        .await
        .unwrap();
    assert!(export.to_string().contains(&b64(value)), "{export}");
    global.terminate();
    assert_eq!(
        files_holding(&dir, b64(value).as_bytes()),
        Vec::<String>::new()
    );
    assert_eq!(files_holding(&dir, value), Vec::<String>::new());
}
