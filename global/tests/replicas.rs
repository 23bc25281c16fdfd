//! Replicas and their leader, with real processes: `global` replicas on one private PostgreSQL
//! server (`testkit::postgres`) list each other with exactly one leader on every replica's
//! `GET /replicas`; a SIGKILLed leader is replaced well within 30 s; a zone whose replica died is
//! marked offline by the new leader and, connected to another replica, shows that replica. A sled
//! global is one replica, always the leader (`GET /replicas` and `global get replicas`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::cluster::{GlobalOptions, GlobalProc, ZoneProc};
use testkit::postgres::PgServer;

async fn replica(dir: &Path, pg: &PgServer) -> GlobalProc {
    GlobalProc::start_with(dir, GlobalOptions::default().store(&pg.url()))
        .await
        .unwrap()
}

async fn replicas(g: &GlobalProc) -> Value {
    g.api.get_ok("/replicas").await.unwrap()
}

fn items(v: &Value) -> &Vec<Value> {
    v["items"].as_array().unwrap()
}

/// The ids of the alive leaders in a `GET /replicas` answer.
fn leaders(v: &Value) -> Vec<String> {
    items(v)
        .iter()
        .filter(|r| r["leader"] == true)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Polls `f` every 200 ms until it returns `Some`, failing after `limit`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The id of the replica `g` is, by its API address.
fn id_of(list: &Value, g: &GlobalProc) -> String {
    let api = format!("127.0.0.1:{}", g.api_port);
    items(list)
        .iter()
        .find(|r| r["apiAddress"] == api.as_str())
        .unwrap_or_else(|| panic!("no replica at {api}: {list}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_leader_which_moves_when_killed_and_zones_follow() {
    let pg = PgServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = ["a", "b", "c"].map(|d| tmp.path().join(d));
    let (a, b, c) = tokio::join!(
        replica(&dirs[0], &pg),
        replica(&dirs[1], &pg),
        replica(&dirs[2], &pg)
    );
    let mut procs = vec![a, b, c];

    // Every replica lists all three, alive, with the same single leader.
    let mut leader = String::new();
    for g in &procs {
        let v = until(Duration::from_secs(15), "three alive replicas", || async {
            let v = replicas(g).await;
            let alive = items(&v).iter().filter(|r| r["alive"] == true).count();
            (v["total"] == 3 && alive == 3 && leaders(&v).len() == 1).then_some(v)
        })
        .await;
        for r in items(&v) {
            for field in [
                "hostname",
                "apiAddress",
                "kdsAddress",
                "startedAt",
                "lastHeartbeat",
            ] {
                assert!(
                    r[field].as_str().is_some_and(|s| !s.is_empty()),
                    "{field}: {r}"
                );
            }
        }
        let l = leaders(&v).remove(0);
        assert!(
            leader.is_empty() || leader == l,
            "two leaders: {leader} and {l}"
        );
        leader = l;
    }
    let list = replicas(&procs[0]).await;
    let at = procs
        .iter()
        .position(|g| id_of(&list, g) == leader)
        .unwrap();
    let mut old = procs.remove(at);
    let (b, c) = (&procs[0], &procs[1]);
    let b_id = id_of(&list, b);

    // A zone on the leader: every replica shows it held by the leader.
    let token = old.zone_token_file("z1", tmp.path()).await.unwrap();
    let mut zone = ZoneProc::start_with(
        "z1",
        &old.kds_address(),
        &old.ca_file(),
        &token,
        &tmp.path().join("z1"),
        &[],
    )
    .await
    .unwrap();
    until(
        Duration::from_secs(15),
        "zone shown on the leader's record",
        || async {
            let z = c.api.get_ok("/zones/z1").await.ok()?;
            let v = replicas(b).await;
            let held = items(&v)
                .iter()
                .find(|r| r["id"] == leader.as_str())
                .is_some_and(|r| r["zones"] == serde_json::json!(["z1"]));
            (z["online"] == true && z["replica"] == leader.as_str() && held).then_some(())
        },
    )
    .await;

    // SIGKILL the leader: another replica leads, within 30 s.
    old.proc.kill9();
    let killed = Instant::now();
    until(
        Duration::from_secs(30),
        "another replica takes the lock",
        || async {
            let v = replicas(b).await;
            leaders(&v).iter().any(|l| *l != leader).then_some(())
        },
    )
    .await;
    eprintln!("lock taken by another replica in {:?}", killed.elapsed());
    let new_leader = until(Duration::from_secs(30), "a new leader", || async {
        let v = replicas(b).await;
        let l = leaders(&v);
        (l.len() == 1 && l[0] != leader).then(|| l[0].clone())
    })
    .await;
    let moved = killed.elapsed();
    eprintln!("leadership moved (shown on another replica) in {moved:?}");
    assert!(moved < Duration::from_secs(30), "{moved:?}");
    let v = replicas(c).await;
    assert_eq!(leaders(&v), vec![new_leader.clone()], "{v}");
    // The dead replica is shown dead once its heartbeat is older than 6 s.
    let v = until(
        Duration::from_secs(15),
        "the killed replica shown dead",
        || async {
            let v = replicas(c).await;
            let dead = items(&v).iter().find(|r| r["id"] == leader.as_str())?;
            (dead["alive"] == false).then(|| v.clone())
        },
    )
    .await;
    eprintln!("killed replica shown dead after {:?}", killed.elapsed());
    assert_eq!(leaders(&v), vec![new_leader.clone()], "{v}");

    // Its zone is marked offline (by the new leader), on every replica.
    for g in [b, c] {
        until(
            Duration::from_secs(20),
            "zone of the dead replica offline",
            || async {
                let z = g.api.get_ok("/zones/z1").await.ok()?;
                (z["online"] == false).then_some(z)
            },
        )
        .await;
    }
    let z = b.api.get_ok("/zones/z1").await.unwrap();
    assert!(
        z["lastDisconnectReason"]
            .as_str()
            .is_some_and(|r| r.contains(&leader)),
        "{z}"
    );
    let v = replicas(b).await;
    let dead = items(&v)
        .iter()
        .find(|r| r["id"] == leader.as_str())
        .unwrap();
    assert_eq!(dead["zones"], serde_json::json!([]), "{v}");

    // The zone connects to another replica: online again, held by it.
    zone.terminate();
    let _zone = ZoneProc::start_with(
        "z1",
        &b.kds_address(),
        &b.ca_file(),
        &token,
        &tmp.path().join("z1"),
        &[],
    )
    .await
    .unwrap();
    until(
        Duration::from_secs(20),
        "zone online on its new replica",
        || async {
            let z = c.api.get_ok("/zones/z1").await.ok()?;
            let v = replicas(c).await;
            let held = items(&v)
                .iter()
                .find(|r| r["id"] == b_id.as_str())
                .is_some_and(|r| r["zones"] == serde_json::json!(["z1"]));
            (z["online"] == true && z["replica"] == b_id.as_str() && held).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_global_is_one_replica_and_its_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("g")).await.unwrap();
    let v = replicas(&g).await;
    assert_eq!(v["total"], 1, "{v}");
    let r = &items(&v)[0];
    assert_eq!(r["alive"], true, "{r}");
    assert_eq!(r["leader"], true, "{r}");
    assert_eq!(r["apiAddress"], format!("127.0.0.1:{}", g.api_port));
    assert_eq!(r["kdsAddress"], format!("127.0.0.1:{}", g.kds_port));
    let id = r["id"].as_str().unwrap().to_string();

    let token = g.zone_token_file("z1", tmp.path()).await.unwrap();
    let _zone = ZoneProc::start("z1", &g, &token, &tmp.path().join("z1"))
        .await
        .unwrap();
    until(
        Duration::from_secs(15),
        "zone held by the one replica",
        || async {
            let z = g.api.get_ok("/zones/z1").await.ok()?;
            let v = replicas(&g).await;
            (z["replica"] == id.as_str() && items(&v)[0]["zones"] == serde_json::json!(["z1"]))
                .then_some(())
        },
    )
    .await;

    let out = g.cli(&["get", "replicas"]).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut lines = out.stdout.lines();
    let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        head,
        [
            "ID",
            "HOSTNAME",
            "API",
            "ALIVE",
            "LEADER",
            "ZONES",
            "LAST",
            "HEARTBEAT"
        ]
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with(&id), "{row}");
    assert!(row.contains(" yes ") && row.contains(" z1 "), "{row}");
    let out = g.cli(&["get", "replicas", "-o", "json"]).unwrap();
    let json: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["items"][0]["id"], id.as_str());
    let out = g.cli(&["get", "replicas", "-o", "yaml"]).unwrap();
    assert!(
        out.stdout.contains("id: ") && out.stdout.contains(&id),
        "{}",
        out.stdout
    );
}

/// A leader that hangs (SIGSTOP) keeps its session open, but the session goes idle: PostgreSQL
/// ends it (`idle_session_timeout`), the lock goes with it and another replica leads within
/// 30 s; resumed, the old leader finds its lock gone and stays a follower: one leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_leader_is_replaced_and_stays_a_follower_when_it_resumes() {
    let pg = PgServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = ["a", "b"].map(|d| tmp.path().join(d));
    let (a, b) = tokio::join!(replica(&dirs[0], &pg), replica(&dirs[1], &pg));
    let v = until(
        Duration::from_secs(15),
        "two replicas, one leader",
        || async {
            let v = replicas(&a).await;
            (v["total"] == 2 && leaders(&v).len() == 1).then_some(v)
        },
    )
    .await;
    let leader = leaders(&v).remove(0);
    let (hung, other) = if id_of(&v, &a) == leader {
        (&a, &b)
    } else {
        (&b, &a)
    };
    hung.proc.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    until(
        Duration::from_secs(30),
        "a leader other than the hung one",
        || async {
            let v = replicas(other).await;
            let l = leaders(&v);
            (l.len() == 1 && l[0] != leader).then_some(())
        },
    )
    .await;
    eprintln!("hung leader replaced in {:?}", stopped.elapsed());
    hung.proc.signal(libc::SIGCONT);
    // Two more rounds of both: still the one new leader, the old one alive again and following.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let v = replicas(hung).await;
    let l = leaders(&v);
    assert_eq!(l.len(), 1, "{v}");
    assert_ne!(l[0], leader, "{v}");
    let old = items(&v)
        .iter()
        .find(|r| r["id"] == leader.as_str())
        .unwrap();
    assert_eq!(old["alive"], true, "{v}");
}
