//! A zone given several global addresses (`zone run --global-address A --global-address B`, or
//! `A,B`) follows them, end to end with the real binaries on loopback (no PostgreSQL: the second
//! global runs on a copy of the first one's data directory, the same keys, admin token and sync CA,
//! standing in for a replica):
//!
//! - a first address where nothing listens is left at once for the live one (no backoff between
//!   them, measured from the zone's own log), and `/status` and the status report name it;
//! - the zone's global SIGKILLed, a replica started on a copy of its data: the zone moves to it
//!   within 10 s, resuming with the versions it holds (the replica sends no resource and no
//!   removal, the zone removes nothing), a Mesh applied on the replica reaches it, and a proxy of
//!   the zone keeps its certificate throughout; the move is logged once;
//! - the zone's global hung (SIGSTOP): the keepalive notices and the zone moves to the other
//!   replica within 10 s, and stays there once the first one resumes (SIGCONT).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::cluster::*;
use testkit::proc::{free_port, logs, signal_pid};
use testkit::wait::{WAIT, wait_for, wait_for_at_most};

/// Copies a stopped global's data directory (not its log): the stand-in for a replica.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&src, &dst);
        } else if entry.file_name() != "global.log" {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// The time at the start of the first line of `log` containing `needle` (tracing's RFC 3339
/// timestamps, colours stripped).
fn line_time(log: &str, needle: &str) -> time::OffsetDateTime {
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{log}"));
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let stamp = plain.split_whitespace().next().unwrap_or_default();
    time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{stamp:?} in {line:?}: {e}"))
}

fn counter(record: &Value, kind: &str, name: &str) -> u64 {
    record["types"][kind][name].as_u64().unwrap_or(0)
}

/// The zone's `/status` once it is connected to `address`, waiting at most `limit`.
async fn connected_to(zone: &ZoneProc, address: &str, limit: Duration, logs_dir: &Path) -> Value {
    wait_for_at_most(
        &format!("zone {} to be connected to {address}", zone.name),
        logs_dir,
        limit,
        || async {
            let s = zone.api.get_ok("/status").await.ok()?;
            (s["global"]["connected"] == true && s["global"]["address"] == address).then_some(s)
        },
    )
    .await
}

/// Global's record of `zone` once its stream there is up, both types acknowledged, and its status
/// report says it came through `address`.
async fn record_on(global: &GlobalProc, zone: &str, address: &str, logs_dir: &Path) -> Value {
    wait_for(
        &format!("global to hold the stream of {zone}"),
        logs_dir,
        || async {
            let r = global.zone(zone).await.ok()?;
            (r["online"] == true
                && counter(&r, "Mesh", "acked") >= 1
                && counter(&r, "Secret", "acked") >= 1
                && r["status"]["globalAddress"] == address)
                .then_some(r)
        },
    )
    .await
}

fn moves_logged(zone: &ZoneProc) -> usize {
    std::fs::read_to_string(zone.dir.join("zone.log"))
        .unwrap_or_default()
        .matches("connected to global at another address")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_address_where_nothing_listens_is_left_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let global = GlobalProc::start_in(&root.join("global"), "info")
        .await
        .unwrap();
    let (dead, live) = (
        format!("grpcs://127.0.0.1:{}", free_port()),
        global.kds_address(),
    );
    let zdir = root.join("east");
    std::fs::create_dir_all(&zdir).unwrap();
    let token = global.cli_zone_token_file("east", &zdir).unwrap();
    let mut zone = ZoneProc::start_opts(
        "east",
        &format!("{dead},{live}"),
        &global.ca_file(),
        &token,
        &zdir,
        ZoneOptions::in_dir(&zdir, "info"),
    )
    .await
    .unwrap();
    let status = connected_to(&zone, &live, Duration::from_secs(10), root).await;
    assert_eq!(
        status["global"]["addresses"],
        json!([dead, live]),
        "{status}"
    );
    assert_eq!(status["global"]["connects"], 1, "{status}");

    // From the zone's own log: the refusal at the first address, then the connection to the
    // second, with no backoff between them (its first step is at least 500 ms).
    let log = std::fs::read_to_string(zdir.join("zone.log")).unwrap();
    let refused = line_time(
        &log,
        &format!(
            "cannot sync with global at {dead}; serving from the local store and trying {live} now"
        ),
    );
    let connected = line_time(&log, "connected to global");
    let gap = connected - refused;
    eprintln!("refused at {dead}, connected to {live} {gap} later");
    assert!(
        gap >= time::Duration::ZERO && gap < time::Duration::milliseconds(300),
        "{gap}\n{log}"
    );
    assert_eq!(zone.metric("kmesh_sync_reconnects").await.unwrap(), 1.0);
    assert_eq!(moves_logged(&zone), 0, "{log}");

    // Global learns the address from the status report.
    let record = record_on(&global, "east", &live, root).await;
    assert_eq!(record["connects"], 1, "{record}");

    zone.terminate();
    let mut global = global;
    global.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_global_is_left_for_a_replica_without_resend_or_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (dir_a, dir_b) = (root.join("global-a"), root.join("global-b"));
    let mut a = GlobalProc::start_in(&dir_a, "info").await.unwrap();
    a.apply(&builtin_mesh_yaml("default", "1h")).await.unwrap();
    let (api_b, kds_b) = (free_port(), free_port());
    let addr_b = format!("grpcs://127.0.0.1:{kds_b}");
    let zdir = root.join("east");
    std::fs::create_dir_all(&zdir).unwrap();
    let token = a.cli_zone_token_file("east", &zdir).unwrap();
    let mut zone = ZoneProc::start_opts(
        "east",
        &a.kds_address(),
        &a.ca_file(),
        &token,
        &zdir,
        ZoneOptions::in_dir(&zdir, "info").args(&["--global-address", &addr_b]),
    )
    .await
    .unwrap();
    zone.wait_synced(&["default"], WAIT).await.unwrap();
    connected_to(&zone, &a.kds_address(), WAIT, root).await;
    let mut proxy = ProxyProc::start(
        &zone,
        &ProxySpec::new("default", "web-1", "web"),
        &a.cli_dataplane_token_file("default", "web-1", root)
            .unwrap(),
        &root.join("web-1"),
    )
    .unwrap();
    let serial = proxy.wait_leaf(root, None, WAIT).await.unwrap().serial;
    let keeps_its_certificate = |proxy: &ProxyProc| {
        let leaf = proxy.leaf().map(|l| l.serial);
        assert_eq!(
            leaf.as_deref(),
            Some(serial.as_str()),
            "the proxy lost or changed its certificate\n{}",
            logs(root)
        );
    };
    let secrets = zone.secrets("default").await.unwrap();
    assert!(
        secrets.as_ref().is_some_and(|s| !s.is_empty()),
        "{secrets:?}"
    );
    let applied = zone.metric("kmesh_sync_applied_resources").await.unwrap();
    assert_eq!(
        zone.metric("kmesh_sync_removed_resources").await.unwrap(),
        0.0
    );

    // Global A dies; a replica starts on a copy of its data, at the zone's second address.
    a.proc.kill9();
    let killed = Instant::now();
    copy_dir(&dir_a, &dir_b);
    let b = GlobalProc::start_with(
        &dir_b,
        GlobalOptions::in_dir(&dir_b, "info").ports(api_b, kds_b),
    )
    .await
    .unwrap();
    let b_up = killed.elapsed();
    let moved = wait_for_at_most(
        "the zone to move to B",
        root,
        Duration::from_secs(15),
        || {
            let (zone, proxy) = (&zone, &proxy);
            let addr_b = &addr_b;
            async move {
                keeps_its_certificate(proxy);
                let s = zone.api.get_ok("/status").await.ok()?;
                (s["global"]["connected"] == true && s["global"]["address"] == addr_b.as_str())
                    .then(|| killed.elapsed())
            }
        },
    )
    .await;
    eprintln!("global A killed; replica B answering after {b_up:?}; the zone on B after {moved:?}");
    assert!(moved < Duration::from_secs(10), "{moved:?}\n{}", logs(root));

    // B sent nothing the zone held and removed nothing: one (empty) response per type.
    let record = record_on(&b, "east", &addr_b, root).await;
    for t in ["Mesh", "Secret"] {
        assert_eq!(counter(&record, t, "resourcesSent"), 0, "{t}: {record}");
        assert_eq!(counter(&record, t, "removedSent"), 0, "{t}: {record}");
        assert_eq!(counter(&record, t, "sent"), 1, "{t}: {record}");
    }
    assert_eq!(zone.meshes().await.unwrap(), ["default"]);
    assert_eq!(zone.secrets("default").await.unwrap(), secrets);
    assert_eq!(
        zone.metric("kmesh_sync_removed_resources").await.unwrap(),
        0.0
    );
    assert_eq!(
        zone.metric("kmesh_sync_applied_resources").await.unwrap(),
        applied
    );
    assert_eq!(moves_logged(&zone), 1, "{}", logs(&zdir));

    // Writes on B reach the zone.
    b.apply(&builtin_mesh_yaml("other", "1h")).await.unwrap();
    zone.wait_synced(&["default", "other"], WAIT).await.unwrap();
    keeps_its_certificate(&proxy);
    assert!(proxy.proc.is_running());

    proxy.terminate();
    zone.terminate();
    let mut b = b;
    b.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_global_is_left_for_the_next_replica_which_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (dir_a, dir_b) = (root.join("global-a"), root.join("global-b"));
    let mut a = GlobalProc::start_in(&dir_a, "info").await.unwrap();
    a.apply(&builtin_mesh_yaml("default", "1h")).await.unwrap();
    let zdir = root.join("east");
    std::fs::create_dir_all(&zdir).unwrap();
    let token = a.cli_zone_token_file("east", &zdir).unwrap();
    // Two replicas with the same data: A stopped cleanly, copied, and both started.
    a.terminate();
    copy_dir(&dir_a, &dir_b);
    a.restart().await.unwrap();
    let b = GlobalProc::start_in(&dir_b, "info").await.unwrap();
    let mut zone = ZoneProc::start_opts(
        "east",
        &a.kds_address(),
        &a.ca_file(),
        &token,
        &zdir,
        ZoneOptions::in_dir(&zdir, "info").args(&["--global-address", &b.kds_address()]),
    )
    .await
    .unwrap();
    zone.wait_synced(&["default"], WAIT).await.unwrap();
    connected_to(&zone, &a.kds_address(), WAIT, root).await;

    let pid = a.proc.pid().unwrap();
    signal_pid(pid, libc::SIGSTOP);
    let stopped = Instant::now();
    let status = connected_to(&zone, &b.kds_address(), Duration::from_secs(15), root).await;
    let moved = stopped.elapsed();
    eprintln!("global A hung (SIGSTOP); the zone on B after {moved:?}");
    assert!(moved < Duration::from_secs(10), "{moved:?}\n{}", logs(root));
    assert_eq!(status["global"]["connects"], 2, "{status}");
    let record = record_on(&b, "east", &b.kds_address(), root).await;
    for t in ["Mesh", "Secret"] {
        assert_eq!(counter(&record, t, "resourcesSent"), 0, "{t}: {record}");
        assert_eq!(counter(&record, t, "removedSent"), 0, "{t}: {record}");
    }
    b.apply(&builtin_mesh_yaml("other", "1h")).await.unwrap();
    zone.wait_synced(&["default", "other"], WAIT).await.unwrap();

    // A resumes: the zone keeps its working stream to B.
    signal_pid(pid, libc::SIGCONT);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = zone.api.get_ok("/status").await.unwrap();
    assert_eq!(status["global"]["address"], b.kds_address(), "{status}");
    assert_eq!(status["global"]["connected"], true, "{status}");
    assert_eq!(status["global"]["connects"], 2, "{status}");
    assert_eq!(moves_logged(&zone), 1, "{}", logs(&zdir));

    zone.terminate();
    let mut b = b;
    b.terminate();
    a.terminate();
}
