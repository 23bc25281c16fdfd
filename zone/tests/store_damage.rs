//! A damaged zone store (issue #17) with the real binaries: overwritten or cut to half, it is
//! said loudly at start; with global reachable the zone moves it aside and takes global's state
//! again, and with global away it exits 1 naming the store and the fix (never a panic, never
//! half a store served as if whole).

use std::path::Path;
use std::time::Duration;

use testkit::cluster::{GlobalProc, ZoneProc};
use testkit::disk::{cut_short, flip_bytes};

fn moved_aside(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("store.damaged-")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_zone_store_is_replaced_from_global_or_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("m-{i:02}")).collect();
    let docs: String = names
        .iter()
        .map(|n| format!("---\ntype: Mesh\nname: {n}\n"))
        .collect();
    g.apply(&docs).await.unwrap();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let zdir = tmp.path().join("zone-1");
    let token = g.zone_token_file("zone-1", tmp.path()).await.unwrap();
    let mut zone = ZoneProc::start("zone-1", &g, &token, &zdir).await.unwrap();
    zone.wait_synced(&refs, Duration::from_secs(20))
        .await
        .unwrap();
    let db = zdir.join("store").join("db");

    // Overwritten, then cut to half: each time said at start, moved aside, global's state taken.
    for round in 1..=2 {
        zone.terminate();
        if round == 1 {
            flip_bytes(&db, 0).unwrap();
        } else {
            cut_short(&db, 1, 2).unwrap();
        }
        zone.restart().await.unwrap();
        zone.wait_synced(&refs, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(moved_aside(&zdir), round, "the damaged store is kept aside");
        let log = std::fs::read_to_string(&zone.proc.log).unwrap();
        assert!(log.contains("the zone's store is damaged"), "{log}");
        assert!(log.contains("moved the damaged store aside"), "{log}");
    }

    // Damaged while global is away: exit 1, naming the store and the fix.
    zone.terminate();
    g.terminate();
    cut_short(&db, 1, 2).unwrap();
    let err = zone.restart().await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("exit status: 1"), "{text}");
    assert!(
        text.contains(&format!(
            "the zone's store at {} is damaged",
            zdir.join("store").display()
        )),
        "{text}"
    );
    assert!(text.contains("make global reachable"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

/// A zone whose disk fills up (a small tmpfs): global's updates are NACKed saying so, the zone's
/// report to global carries it, the stream stays up (no re-download loop), and once space comes
/// back the zone subscribes again and catches up by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_with_a_full_disk_says_so_and_catches_up_when_space_returns() {
    if !testkit::disk::is_root() {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    g.apply("type: Mesh\nname: first\n").await.unwrap();
    let disk = testkit::disk::Tmpfs::mount(&tmp.path().join("disk"), 8 * 1024).unwrap();
    let zdir = disk.dir.join("zone-1");
    let token = g.zone_token_file("zone-1", tmp.path()).await.unwrap();
    let zone = ZoneProc::start("zone-1", &g, &token, &zdir).await.unwrap();
    zone.wait_synced(&["first"], Duration::from_secs(20))
        .await
        .unwrap();
    let connects = |s: &serde_json::Value| s["global"]["connects"].as_u64().unwrap_or(0);
    let before = connects(&zone.api.get_ok("/status").await.unwrap());

    disk.fill().unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("m-{i:02}")).collect();
    let big = "x".repeat(4000);
    let docs: String = names
        .iter()
        .map(|n| format!("---\ntype: Mesh\nname: {n}\nlabels:\n  pad: {big}\n"))
        .collect();
    g.apply(&docs).await.unwrap();
    let view = testkit::wait::wait_until(
        "global to show the zone's full disk",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let z = g.zone("zone-1").await.ok()?;
            let store_error = z["status"]["storeError"].as_str()?.to_string();
            let nack = z["types"]["Mesh"]["lastNack"]["error"]
                .as_str()?
                .to_string();
            (store_error.contains("is full") && nack.contains("is full")).then_some(z)
        },
    )
    .await
    .unwrap();
    assert_eq!(view["online"], true, "{view}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = zone.api.get_ok("/status").await.unwrap();
    assert_eq!(connects(&status), before, "no reconnection loop: {status}");
    assert_eq!(status["global"]["connected"], true, "{status}");

    disk.free().unwrap();
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.push("first");
    zone.wait_synced(&all, Duration::from_secs(30))
        .await
        .unwrap();
    let status = zone.api.get_ok("/status").await.unwrap();
    assert_eq!(
        connects(&status),
        before + 1,
        "one resubscription: {status}"
    );
}
