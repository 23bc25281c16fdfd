//! A damaged, short, rolled-back or wiped store never spreads to the zones (issue #17), with the
//! real binaries: bytes overwritten at many offsets of global's sled files and a truncated store
//! (global refuses to start, exit 1 naming the store and the ways out, or serves everything), a
//! store restored from an older copy and a wiped store with the keys kept (refused), a whole data
//! directory restored from an older copy (global starts; the zone NACKs its state and keeps every
//! Mesh), then the operator's `--accept-store-rollback` (a new epoch: the zone converges, logging
//! each deletion).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use testkit::cluster::{
    GlobalOptions, GlobalProc, ZoneProc, builtin_mesh_yaml, provided_mesh_yaml,
};
use testkit::disk::{copy_dir, cut_short, flip_bytes, spread_offsets};
use testkit::wait::wait_until;

const MESHES: usize = 50;

fn mesh_docs(names: impl IntoIterator<Item = String>) -> String {
    names
        .into_iter()
        .map(|n| format!("---\ntype: Mesh\nname: {n}\nlabels:\n  owner: team-{n}\n"))
        .collect()
}

/// Mesh name -> its `owner` label, as global serves them.
async fn served(g: &GlobalProc) -> Vec<(String, String)> {
    let v = g.api.get_ok("/meshes?size=1000").await.unwrap();
    let mut out: Vec<(String, String)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["labels"]["owner"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Starts global on `dir`: `Ok` when it serves, `Err(text)` when it refused to start (asserted to
/// be exit 1 with the store and the ways out named).
async fn start_or_refusal(dir: &Path, options: GlobalOptions) -> Result<GlobalProc, String> {
    let store = dir.join("store").display().to_string();
    start_or_refusal_of(dir, options, &store).await
}

/// [`start_or_refusal`] with the store named as `store`.
async fn start_or_refusal_of(
    dir: &Path,
    options: GlobalOptions,
    store: &str,
) -> Result<GlobalProc, String> {
    match GlobalProc::start_or_refusal(dir, options).await.unwrap() {
        Ok(g) => Ok(g),
        Err(text) => {
            assert!(
                text.contains("global refuses to start")
                    && text.contains("--accept-store-rollback"),
                "the refusal must say why and the ways out: {text}"
            );
            assert!(
                text.contains(store),
                "the refusal must name the store: {text}"
            );
            Err(text)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_truncated_store_files_are_refused_or_served_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let gdir = tmp.path().join("global");
    let pristine = tmp.path().join("pristine");
    let quiet = || GlobalOptions::default().rust_log("warn");
    let mut g = GlobalProc::start_with(&gdir, quiet()).await.unwrap();
    g.apply(&mesh_docs((0..MESHES).map(|i| format!("m-{i:02}"))))
        .await
        .unwrap();
    let expected = served(&g).await;
    assert_eq!(expected.len(), MESHES);
    g.terminate();
    drop(g);
    copy_dir(&gdir, &pristine).unwrap();
    let trials = spread_offsets(&pristine.join("store"), 12).unwrap();
    assert!(!trials.is_empty());
    let (mut refused, mut whole) = (Vec::new(), 0);
    for (rel, offset) in &trials {
        copy_dir(&pristine, &gdir).unwrap();
        flip_bytes(&gdir.join("store").join(rel), *offset).unwrap();
        match start_or_refusal(&gdir, quiet()).await {
            Ok(mut g) => {
                assert_eq!(
                    served(&g).await,
                    expected,
                    "{} damaged at {offset}: global started, so it must serve everything",
                    rel.display()
                );
                g.terminate();
                whole += 1;
            }
            Err(_) => refused.push(format!("{}@{offset}", rel.display())),
        }
    }
    eprintln!(
        "{} damaged copies: {} refused ({:?}), {whole} served whole",
        trials.len(),
        refused.len(),
        refused
    );
    assert!(!refused.is_empty(), "damage must be found somewhere");

    // Cut short: half of the main file.
    copy_dir(&pristine, &gdir).unwrap();
    cut_short(&gdir.join("store").join("db"), 1, 2).unwrap();
    if let Ok(mut g) = start_or_refusal(&gdir, quiet()).await {
        assert_eq!(served(&g).await, expected, "a truncated store served short");
        g.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_store_never_empties_a_zone_until_the_operator_accepts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let gdir = tmp.path().join("global");
    let backup = tmp.path().join("backup");
    let mut g = GlobalProc::start(&gdir).await.unwrap();
    let old: Vec<String> = (0..5).map(|i| format!("old-{i}")).collect();
    g.apply(&mesh_docs(old.clone())).await.unwrap();
    g.terminate();
    drop(g);
    copy_dir(&gdir, &backup).unwrap();

    // After the backup: more Meshes, one deleted; the zone holds them all.
    let options = GlobalOptions::default();
    let mut g = GlobalProc::start_with(&gdir, options.clone())
        .await
        .unwrap();
    let new: Vec<String> = (0..5).map(|i| format!("new-{i}")).collect();
    g.apply(&mesh_docs(new.clone())).await.unwrap();
    g.delete("/meshes/old-0").await.unwrap();
    let token = g.zone_token_file("zone-1", tmp.path()).await.unwrap();
    let zone = ZoneProc::start("zone-1", &g, &token, &tmp.path().join("zone-1"))
        .await
        .unwrap();
    let held: Vec<String> = old[1..].iter().chain(&new).cloned().collect();
    let held_refs: Vec<&str> = held.iter().map(String::as_str).collect();
    zone.wait_synced(&held_refs, Duration::from_secs(20))
        .await
        .unwrap();
    g.terminate();
    drop(g);

    // 1. The store alone restored from the older copy: refused, the manifest knows better.
    std::fs::remove_dir_all(gdir.join("store")).unwrap();
    copy_dir(&backup.join("store"), &gdir.join("store")).unwrap();
    let why = start_or_refusal(&gdir, options.clone())
        .await
        .err()
        .unwrap();
    assert!(why.contains("older than revision"), "{why}");

    // 2. A wiped store with the keys (and manifest) kept: refused.
    std::fs::remove_dir_all(gdir.join("store")).unwrap();
    let why = start_or_refusal(&gdir, options.clone())
        .await
        .err()
        .unwrap();
    assert!(why.contains("wiped or replaced"), "{why}");

    // 3. The whole data directory restored from the older copy: global starts (its manifest is
    //    as old), and the zone refuses its state, keeping every Mesh it holds.
    copy_dir(&backup, &gdir).unwrap();
    let mut g = GlobalProc::start_with(&gdir, options.clone())
        .await
        .unwrap();
    let view: Value = wait_until(
        "the zone to NACK the older state at global",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let z = g.zone("zone-1").await.ok()?;
            let nack = z["types"]["Mesh"]["lastNack"]["error"]
                .as_str()?
                .to_string();
            nack.contains("refused global's state").then_some(z)
        },
    )
    .await
    .unwrap();
    let nack = view["types"]["Mesh"]["lastNack"]["error"].as_str().unwrap();
    assert!(nack.contains("older than revision"), "{nack}");
    assert!(nack.contains("--accept-store-rollback"), "{nack}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut now = zone.meshes().await.unwrap();
    now.sort();
    let mut want = held.clone();
    want.sort();
    assert_eq!(now, want, "the zone keeps serving everything it holds");
    let status = zone.api.get_ok("/status").await.unwrap();
    assert!(
        status.to_string().contains("refused global's state"),
        "the zone's status says why: {status}"
    );

    // 4. The operator accepts: a new epoch, and the zone takes global's state.
    g.terminate();
    drop(g);
    let mut g = GlobalProc::start_with(&gdir, options.clone().args(&["--accept-store-rollback"]))
        .await
        .unwrap();
    let old_refs: Vec<&str> = old.iter().map(String::as_str).collect();
    wait_until(
        "the zone to hold global's state",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let mut m = zone.meshes().await.ok()?;
            m.sort();
            (m == old).then_some(())
        },
    )
    .await
    .unwrap();
    zone.wait_synced(&old_refs, Duration::from_secs(5))
        .await
        .unwrap();
    let log = std::fs::read_to_string(&zone.proc.log).unwrap();
    for n in &new {
        assert!(
            log.lines().any(
                |l| l.contains("deleted: global's full state does not hold it")
                    && l.contains(&format!("Mesh {n}/{n}"))
            ),
            "the zone logs the deletion of {n}"
        );
    }
    // Restarted without the flag, global serves the accepted epoch; the zone stays in step.
    g.terminate();
    drop(g);
    let mut g = GlobalProc::start_with(&gdir, options.clone())
        .await
        .unwrap();
    g.apply(&mesh_docs(["after".to_string()])).await.unwrap();
    zone.wait_synced(&["after"], Duration::from_secs(20))
        .await
        .unwrap();
    g.terminate();
}

/// The manifest's digest and resource count of a stopped global.
fn digest_of(dir: &Path) -> (String, u64) {
    let m = common::integrity::Manifest::read(dir).unwrap().unwrap();
    (m.digest, m.resources)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_restores_into_a_fresh_global_with_the_same_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = GlobalProc::start(&tmp.path().join("a")).await.unwrap();
    a.apply(&builtin_mesh_yaml("web", "24h")).await.unwrap();
    a.apply(&provided_mesh_yaml("pay", "1h").unwrap())
        .await
        .unwrap();
    a.apply(&format!(
        "{}---\ntype: Secret\nname: token-1\nmesh: m-01\ndata: {}\n",
        mesh_docs((0..3).map(|i| format!("m-{i:02}"))),
        testkit::cluster::b64("s3cr3t")
    ))
    .await
    .unwrap();

    // Without the admin token, Secrets are not exported; without the flag, they are left out.
    let out = testkit::cluster::run_global(
        &[
            "export".into(),
            "--include-secrets".into(),
            "--api".into(),
            a.api_url(),
        ],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(out.text().contains("admin token"), "{}", out.text());
    let meshes_only = a.cli(&["export"]).unwrap();
    assert_eq!(meshes_only.code, Some(0), "{}", meshes_only.text());
    assert_eq!(meshes_only.stdout.matches("type: Mesh").count(), 5);
    assert!(!meshes_only.stdout.contains("type: Secret"));

    for format in ["yaml", "json"] {
        let out = a
            .cli(&["export", "--include-secrets", "-o", format])
            .unwrap();
        assert_eq!(out.code, Some(0), "{}", out.text());
        let file = tmp.path().join(format!("export.{format}"));
        std::fs::write(&file, &out.stdout).unwrap();
        let mut b = GlobalProc::start(&tmp.path().join(format!("b-{format}")))
            .await
            .unwrap();
        let applied = b.cli(&["apply", "-f", file.to_str().unwrap()]).unwrap();
        assert_eq!(applied.code, Some(0), "{}", applied.text());
        b.terminate();
        let restored = digest_of(&b.dir);
        a.terminate();
        assert_eq!(
            restored,
            digest_of(&a.dir),
            "{format}: the same content, to the digest"
        );
        assert_eq!(
            restored.1,
            5 + 2 + 2 + 1,
            "5 Meshes, 2 builtin CA, 2 provided CA and 1 Secret"
        );
        a.restart().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_postgresql_table_files_are_refused_or_served_whole() {
    let mut pg = testkit::postgres::PgServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let gdir = tmp.path().join("global");
    let options = GlobalOptions::default().store(&pg.url()).rust_log("warn");
    let mut g = GlobalProc::start_with(&gdir, options.clone())
        .await
        .unwrap();
    g.apply(&mesh_docs((0..MESHES).map(|i| format!("m-{i:02}"))))
        .await
        .unwrap();
    let expected = served(&g).await;
    g.terminate();
    drop(g);
    let table = pg
        .data_dir()
        .join(pg.psql("SELECT pg_relation_filepath('resources')").unwrap());
    pg.stop().unwrap();
    let pristine = tmp.path().join("pg-pristine");
    copy_dir(pg.data_dir(), &pristine).unwrap();
    let len = std::fs::metadata(&table).unwrap().len();
    assert!(len > 0);
    let (mut refused, mut whole) = (0, 0);
    for k in 0..8u64 {
        copy_dir(&pristine, pg.data_dir()).unwrap();
        flip_bytes(&table, len * k / 8 + 101).unwrap();
        pg.start_again().unwrap();
        match start_or_refusal_of(&gdir, options.clone(), "(PostgreSQL, given with --store)").await
        {
            Ok(mut g) => {
                assert_eq!(
                    served(&g).await,
                    expected,
                    "offset {}: served short",
                    len * k / 8
                );
                g.terminate();
                whole += 1;
            }
            Err(_) => refused += 1,
        }
        pg.stop().unwrap();
    }
    eprintln!("8 damaged copies of the resources table: {refused} refused, {whole} served whole");
    assert!(refused > 0, "damage must be found somewhere");
}
