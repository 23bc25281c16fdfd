//! Crashes: the real `global` and `zone` binaries killed with SIGKILL at random (seeded) moments
//! while writes flow. Global must keep every acknowledged write, intact, and nothing half-written;
//! a zone must resync to exactly global's state after each restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::model::Kind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use testkit::cluster::{GlobalProc, ZoneProc};

const SEED: u64 = 0x6b696c6c39;
const MESHES: usize = 6;
const SECRETS: usize = 16;
/// The mesh holding the plain Secrets; never deleted.
const DATA_MESH: &str = "data";

/// What a key holds: `None` = absent, `Some(label v, secret data)`.
type Content = Option<(u64, String)>;

#[derive(Debug, Clone)]
enum Slot {
    Known(Content),
    /// An operation was in flight when global died: either candidate may be stored.
    Unknown(Vec<Content>),
}

#[derive(Default)]
struct Model {
    /// "mesh/<name>" or "secret/<name>" (in DATA_MESH).
    slots: BTreeMap<String, Slot>,
    acked: usize,
}

impl Model {
    fn current(&self, key: &str) -> Option<Content> {
        match self.slots.get(key) {
            None => Some(None),
            Some(Slot::Known(c)) => Some(c.clone()),
            Some(Slot::Unknown(_)) => None,
        }
    }
}

fn mesh_body(name: &str, v: u64) -> String {
    format!(
        "type: Mesh\nname: {name}\nlabels:\n  v: \"{v}\"\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 24h\n"
    )
}

fn secret_body(name: &str, v: u64, data: &str) -> String {
    format!("type: Secret\nmesh: {DATA_MESH}\nname: {name}\nlabels:\n  v: \"{v}\"\ndata: {data}\n")
}

/// Runs random operations until a request fails (global died) or `stop` is set.
async fn client(
    base: String,
    token: String,
    model: Arc<Mutex<Model>>,
    mut rng: StdRng,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> StdRng {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut n: u64 = rng.random();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let is_mesh = rng.random_bool(0.4);
        let delete = rng.random_bool(0.3);
        let (key, path, new, body) = if is_mesh {
            let name = format!("m{}", rng.random_range(0..MESHES));
            let path = format!("/meshes/{name}");
            let body = mesh_body(&name, n);
            (format!("mesh/{name}"), path, Some((n, String::new())), body)
        } else {
            let name = format!("s{}", rng.random_range(0..SECRETS));
            let path = format!("/meshes/{DATA_MESH}/secrets/{name}");
            let raw: Vec<u8> = (0..rng.random_range(1..512))
                .map(|_| rng.random())
                .collect();
            let data = base64::engine::general_purpose::STANDARD.encode(raw);
            let body = secret_body(&name, n, &data);
            (format!("secret/{name}"), path, Some((n, data)), body)
        };
        let new = if delete { None } else { new };
        let old = {
            let mut m = model.lock().unwrap();
            let Some(old) = m.current(&key) else {
                // Settled only at the next restart check.
                continue;
            };
            m.slots
                .insert(key.clone(), Slot::Unknown(vec![old.clone(), new.clone()]));
            old
        };
        let req = if delete {
            http.delete(format!("{base}{path}"))
        } else {
            http.put(format!("{base}{path}"))
                .header("content-type", "application/yaml")
                .body(body)
        };
        match req.bearer_auth(&token).send().await {
            Ok(resp) if resp.status().is_success() => {
                let mut m = model.lock().unwrap();
                m.slots.insert(key, Slot::Known(new));
                m.acked += 1;
            }
            Ok(resp) if resp.status().is_client_error() => {
                // Refused (e.g. deleting what is absent): nothing stored.
                let status = resp.status();
                assert!(
                    delete && status == 404 && old.is_none(),
                    "{key}: unexpected {status}: {}",
                    resp.text().await.unwrap_or_default()
                );
                model.lock().unwrap().slots.insert(key, Slot::Known(old));
            }
            Ok(resp) => panic!("{key}: {}", resp.status()),
            // Global died under this request: it stays Unknown.
            Err(_) => break,
        }
    }
    rng
}

/// What global serves now, as the model sees it.
async fn actual(g: &GlobalProc) -> BTreeMap<String, Content> {
    let mut out = BTreeMap::new();
    let meshes = g.api.get_ok("/meshes").await.unwrap();
    let mut builtin = Vec::new();
    for m in meshes["items"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap().to_string();
        if name == DATA_MESH {
            continue;
        }
        let v: u64 = m["labels"]["v"].as_str().unwrap().parse().unwrap();
        out.insert(format!("mesh/{name}"), Some((v, String::new())));
        builtin.push(name);
    }
    // Nothing half-written: every builtin Mesh has both of its CA Secrets, and no more.
    for name in &builtin {
        let secrets = g
            .api
            .get_ok(&format!("/meshes/{name}/secrets"))
            .await
            .unwrap();
        let mut names: Vec<String> = secrets["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        let (cert, key) = common::ca::builtin_secret_names(name, "ca-1");
        let mut want = vec![cert, key];
        want.sort();
        assert_eq!(names, want, "CA Secrets of mesh {name}");
    }
    let secrets = g
        .api
        .get_ok(&format!("/meshes/{DATA_MESH}/secrets"))
        .await
        .unwrap();
    for s in secrets["items"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let v: u64 = s["labels"]["v"].as_str().unwrap().parse().unwrap();
        // The data is checked in the store itself at the end (the API never shows it).
        out.insert(format!("secret/{name}"), Some((v, String::new())));
    }
    out
}

fn label_only(c: &Content) -> Content {
    c.as_ref().map(|(v, _)| (*v, String::new()))
}

/// Checks global against the model and settles the Unknown slots.
async fn check_and_settle(g: &GlobalProc, model: &Mutex<Model>) {
    let actual = actual(g).await;
    let mut m = model.lock().unwrap();
    let keys: Vec<String> = m
        .slots
        .keys()
        .cloned()
        .chain(actual.keys().cloned())
        .collect();
    for key in keys {
        let got = actual.get(&key).cloned().unwrap_or(None);
        let slot = m.slots.get(&key).cloned().unwrap_or(Slot::Known(None));
        match slot {
            Slot::Known(want) => {
                assert_eq!(
                    got,
                    label_only(&want),
                    "{key}: an acknowledged write is not there"
                );
            }
            Slot::Unknown(candidates) => {
                let hit = candidates.iter().find(|c| label_only(c) == got);
                let hit = hit.unwrap_or_else(|| {
                    panic!("{key}: {got:?} is none of the possible states {candidates:?}")
                });
                let settled = hit.clone();
                m.slots.insert(key, Slot::Known(settled));
            }
        }
    }
}

/// Checks the secret data in global's store (opened directly: global is stopped).
fn check_store_data(dir: &Path, model: &Model) {
    let store = common::store::Store::open(
        dir,
        common::sealing::SecretsKey::for_data_dir(dir, None).unwrap(),
    )
    .unwrap();
    for (key, slot) in &model.slots {
        let Some(name) = key.strip_prefix("secret/") else {
            continue;
        };
        let Slot::Known(want) = slot else { continue };
        let got = store
            .get(&common::store::ResourceKey::new(
                Kind::Secret,
                DATA_MESH,
                name,
            ))
            .unwrap();
        match (want, got) {
            (None, None) => {}
            (Some((_, data)), Some(r)) => {
                assert_eq!(r.spec["data"].as_str(), Some(data.as_str()), "{key} data");
                assert_eq!(r.hash, common::store::content_hash(&r.spec), "{key} hash");
            }
            (w, g) => panic!("{key}: want {w:?}, store has {:?}", g.map(|r| r.spec)),
        }
    }
    // Every Secret's mesh exists.
    let meshes: Vec<String> = store
        .list(Kind::Mesh, None)
        .unwrap()
        .into_iter()
        .map(|r| r.key.name)
        .collect();
    for s in store.list(Kind::Secret, None).unwrap() {
        assert!(meshes.contains(&s.key.mesh), "orphan Secret {:?}", s.key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_killed_at_random_keeps_every_acknowledged_write_and_nothing_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("global");
    let mut g = GlobalProc::start(&dir).await.unwrap();
    g.apply(&format!("type: Mesh\nname: {DATA_MESH}\n"))
        .await
        .unwrap();
    let token = std::fs::read_to_string(g.admin_token_file())
        .unwrap()
        .trim()
        .to_string();
    let model = Arc::new(Mutex::new(Model::default()));
    let mut rng = StdRng::seed_from_u64(SEED);
    let started = Instant::now();
    let mut kills = 0;
    while kills < 5 || model.lock().unwrap().acked < 200 {
        assert!(
            kills < 30,
            "too few operations acknowledged: {}",
            model.lock().unwrap().acked
        );
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client_rng = StdRng::seed_from_u64(rng.random());
        let task = tokio::spawn(client(
            g.api_url(),
            token.clone(),
            model.clone(),
            client_rng,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        g.proc.kill9();
        kills += 1;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        task.await.unwrap();
        g.restart().await.unwrap();
        check_and_settle(&g, &model).await;
    }
    let acked = model.lock().unwrap().acked;
    g.proc.kill9();
    check_store_data(&dir, &model.lock().unwrap());
    assert!(
        !std::fs::read_to_string(dir.join("global.log"))
            .unwrap()
            .contains("panicked")
    );
    eprintln!(
        "{kills} kills, {acked} acknowledged operations, {:?}",
        started.elapsed()
    );
}

// ---- zone ----------------------------------------------------------------------------------

/// Global's digests of what zones should hold, computed from its store as the zone does.
fn global_digests(dir: &Path) -> BTreeMap<String, (u64, String)> {
    use sha2::Digest;
    let store = common::store::Store::open(
        dir,
        common::sealing::SecretsKey::for_data_dir(dir, None).unwrap(),
    )
    .unwrap();
    let mut out = BTreeMap::new();
    for kind in [Kind::Mesh, Kind::Secret] {
        let (_, map) = store.versions(kind);
        let mut h = sha2::Sha256::new();
        for ((mesh, name), version) in map.iter() {
            h.update(mesh.as_bytes());
            h.update([0]);
            h.update(name.as_bytes());
            h.update([0]);
            h.update(version.as_bytes());
            h.update([b'\n']);
        }
        out.insert(
            kind.as_str().to_string(),
            (map.len() as u64, hex::encode(h.finalize())),
        );
    }
    out
}

async fn zone_digests(z: &ZoneProc) -> Option<BTreeMap<String, (u64, String)>> {
    let (status, s) = z.api.get("/status").await.ok()?;
    if status != 200 {
        return None;
    }
    let mut out = BTreeMap::new();
    for kind in ["Mesh", "Secret"] {
        let t = s.get("types")?.get(kind)?;
        out.insert(
            kind.to_string(),
            (t["count"].as_u64()?, t["digest"].as_str()?.to_string()),
        );
    }
    Some(out)
}

fn names(v: &Value) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or("").to_string(),
                        m["labels"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_killed_while_updates_stream_in_resyncs_to_exactly_globals_state() {
    let tmp = tempfile::tempdir().unwrap();
    let gdir = tmp.path().join("global");
    let mut g = GlobalProc::start(&gdir).await.unwrap();
    g.apply(&format!("type: Mesh\nname: {DATA_MESH}\n"))
        .await
        .unwrap();
    let token = g.zone_token_file("east", tmp.path()).await.unwrap();
    let mut z = ZoneProc::start("east", &g, &token, &tmp.path().join("east"))
        .await
        .unwrap();
    let admin = std::fs::read_to_string(g.admin_token_file())
        .unwrap()
        .trim()
        .to_string();
    let model = Arc::new(Mutex::new(Model::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut rng = StdRng::seed_from_u64(SEED ^ 0x20e);
    let writer = tokio::spawn(client(
        g.api_url(),
        admin,
        model.clone(),
        StdRng::seed_from_u64(rng.random()),
        stop.clone(),
    ));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        z.proc.kill9();
        // Changes keep coming while the zone is down, too.
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        z.restart().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let acked = model.lock().unwrap().acked;
    assert!(acked >= 50, "only {acked} writes during the zone kills");

    // The zone's view of meshes equals global's.
    let global_meshes = names(&g.api.get_ok("/meshes").await.unwrap());
    testkit::wait::wait_until(
        "the zone to hold global's meshes",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let zm = z.api.get_ok("/meshes").await.ok()?;
            (names(&zm) == global_meshes).then_some(())
        },
    )
    .await
    .unwrap();
    // Everything global sent was acknowledged, twice in a row: nothing is in flight (the mesh
    // names alone can match while a Secret's last update is still on its way).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut settled = 0;
    while settled < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the zone did not acknowledge all global sent within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let all_acked = g.zone("east").await.is_ok_and(|z| {
            ["Mesh", "Secret"].iter().all(|k| {
                let t = &z["types"][k];
                t["sent"].as_u64().is_some() && t["sent"] == t["acked"]
            })
        });
        settled = if all_acked { settled + 1 } else { 0 };
    }
    // Exactly global's content: stop global (the zone keeps serving) and compare the digests of
    // its store with the zone's.
    g.proc.stop(Duration::from_secs(10));
    let want = global_digests(&gdir);
    let got = testkit::wait::wait_until(
        "the zone's digests",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { zone_digests(&z).await },
    )
    .await
    .unwrap();
    assert_eq!(got, want, "zone and global differ");
    let log = std::fs::read_to_string(z.dir.join("zone.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    eprintln!("3 zone kills, {acked} writes streamed");
    let _ = &mut g;
}
