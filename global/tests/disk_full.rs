//! A full disk under global's store (issue #17), on a small tmpfs with the real binary: a write
//! that is not durable is never visible (answered 507 naming the disk, absent from reads and
//! after a restart), `/readyz` fails meanwhile, and once space comes back the store recovers by
//! itself: writes succeed again without a restart.

use std::time::Duration;

use testkit::cluster::{GlobalOptions, GlobalProc};
use testkit::disk::{Tmpfs, is_root};
use testkit::wait::wait_until;

fn secret(name: &str) -> String {
    format!(
        "type: Secret\nname: {name}\nmesh: m\ndata: {}\n",
        testkit::cluster::b64(&"x".repeat(2000))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_visibly_and_recovers_by_itself() {
    if !is_root() {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), 8 * 1024).unwrap();
    let _keep = tmp.path().to_path_buf();
    let dir = disk.dir.join("global");
    let mut g = GlobalProc::start_with(&dir, GlobalOptions::default().rust_log("info"))
        .await
        .unwrap();
    g.apply("type: Mesh\nname: m\n").await.unwrap();
    g.put("/meshes/m/secrets/before", &secret("before"))
        .await
        .unwrap();

    disk.fill().unwrap();
    // Writes now fail: 507 naming the disk, and nothing of them is visible.
    let mut refused = Vec::new();
    for i in 0..20 {
        let name = format!("phantom-{i}");
        let (status, body) = g
            .api
            .send(
                reqwest::Method::PUT,
                &format!("/meshes/m/secrets/{name}"),
                &secret(&name),
            )
            .await
            .unwrap();
        if status == 507 {
            assert!(
                body["detail"].as_str().unwrap_or("").contains("is full"),
                "{body}"
            );
            refused.push(name);
        } else {
            assert!(
                (200..300).contains(&status),
                "{name}: {status} {body}\n{}",
                std::fs::read_to_string(&g.proc.log).unwrap_or_default()
            );
        }
    }
    assert!(!refused.is_empty(), "the full disk refused no write");
    let listed = g.api.get_ok("/meshes/m/secrets").await.unwrap().to_string();
    for name in &refused {
        assert!(
            !listed.contains(name),
            "{name} was refused but is listed: {listed}"
        );
    }
    let (status, body) = g.api.get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("is full"), "{body}");

    // Space comes back: the store recovers by itself.
    disk.free().unwrap();
    wait_until(
        "global to be ready again",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async { (g.api.get("/readyz").await.ok()?.0 == 200).then_some(()) },
    )
    .await
    .unwrap();
    g.put("/meshes/m/secrets/after", &secret("after"))
        .await
        .unwrap();
    // A restart finds what was acknowledged, and nothing that was refused.
    g.restart().await.unwrap();
    let listed = g.api.get_ok("/meshes/m/secrets").await.unwrap().to_string();
    assert!(
        listed.contains("\"before\"") && listed.contains("\"after\""),
        "{listed}"
    );
    for name in &refused {
        assert!(
            !listed.contains(name),
            "{name} came back after a restart: {listed}"
        );
    }
    g.terminate();
}
