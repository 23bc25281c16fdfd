//! Replicas: real `global` processes on one private PostgreSQL server (`testkit::postgres`).
//! What one replica acknowledges is read at once on another, reaches the zones of another, and
//! tokens, the admin token and the sync CA are the same on all; conflicting writes on two
//! replicas never both win; a restart keeps everything; with PostgreSQL stopped writes answer 503
//! naming the store while reads go on, and writes work again once it is back.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use testkit::cluster::{GlobalOptions, GlobalProc, ZoneProc};
use testkit::postgres::PgServer;

async fn replica(dir: &Path, pg: &PgServer) -> GlobalProc {
    GlobalProc::start_with(dir, GlobalOptions::default().store(&pg.url()))
        .await
        .unwrap()
}

fn mesh(name: &str) -> String {
    format!("type: Mesh\nname: {name}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_writes_tokens_identity_and_zones() {
    let pg = PgServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a, b) = tokio::join!(replica(&dir_a, &pg), replica(&dir_b, &pg));
    let mut b = b;
    // Started at once, they agree on what must be shared.
    assert_eq!(a.token, b.token, "the admin token differs between replicas");
    let ca = |g: &GlobalProc| std::fs::read_to_string(g.ca_file()).unwrap();
    assert_eq!(ca(&a), ca(&b), "kds-ca.pem differs between replicas");

    // Read your writes across replicas: a PUT on A is on B's API at once.
    for i in 0..20 {
        let name = format!("m{i}");
        a.api
            .write_ok(Method::PUT, &format!("/meshes/{name}"), &mesh(&name))
            .await
            .unwrap();
        let (status, v) = b.api.get(&format!("/meshes/{name}")).await.unwrap();
        assert_eq!(status, 200, "mesh {name} written on A not read on B: {v}");
    }
    // A delete too (a tombstone).
    let (status, _) = b.api.delete("/meshes/m19").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(a.api.get("/meshes/m19").await.unwrap().0, 404);

    // A zone token made on A authenticates on B; the zone trusts B with A's CA file; a change
    // applied on A reaches the zone on B.
    let token = a.zone_token_file("z1", tmp.path()).await.unwrap();
    let zone = ZoneProc::start_with(
        "z1",
        &b.kds_address(),
        &a.ca_file(),
        &token,
        &tmp.path().join("z1"),
        &[],
    )
    .await
    .unwrap();
    zone.wait_synced(&["m0", "m18"], Duration::from_secs(20))
        .await
        .unwrap();
    a.api
        .write_ok(Method::PUT, "/meshes/late", &mesh("late"))
        .await
        .unwrap();
    zone.wait_synced(&["late"], Duration::from_secs(10))
        .await
        .unwrap();

    // A restarted replica keeps everything (and the same shared files).
    b.restart().await.unwrap();
    assert_eq!(b.token, a.token);
    let (_, meshes) = b.api.get("/meshes").await.unwrap();
    assert_eq!(meshes["items"].as_array().unwrap().len(), 20, "{meshes}");
    zone.wait_synced(&["late"], Duration::from_secs(20))
        .await
        .unwrap();
}

/// The race of `api.rs`'s `concurrent_writes_never_leave_a_secret_without_its_mesh`, across two
/// processes: Secrets PUT on A while B deletes their Mesh. Never both win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writes_on_two_replicas_never_both_win() {
    let pg = PgServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = replica(&tmp.path().join("a"), &pg).await;
    let b = replica(&tmp.path().join("b"), &pg).await;
    for round in 0..10 {
        a.api
            .write_ok(Method::PUT, "/meshes/race", &mesh("race"))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let api = a.api.clone();
            tasks.push(tokio::spawn(async move {
                let body = format!("type: Secret\nname: s{round}-{i}\nmesh: race\ndata: aGk=\n");
                api.send(
                    Method::PUT,
                    &format!("/meshes/race/secrets/s{round}-{i}"),
                    &body,
                )
                .await
                .unwrap()
            }));
            if i == 4 {
                let api = b.api.clone();
                tasks.push(tokio::spawn(async move {
                    api.delete("/meshes/race").await.unwrap()
                }));
            }
        }
        for t in tasks {
            let (status, v) = t.await.unwrap();
            assert!(
                matches!(status, 200 | 201 | 400 | 404),
                "unexpected answer {status}: {v}"
            );
        }
        for g in [&a, &b] {
            assert_eq!(g.api.get("/meshes/race").await.unwrap().0, 404);
            let (_, secrets) = g.api.get("/meshes/race/secrets").await.unwrap();
            let n = secrets["items"].as_array().map_or(0, |a| a.len());
            assert_eq!(n, 0, "round {round}: Secrets without their Mesh: {secrets}");
        }
        let orphans = pg
            .psql("SELECT count(*) FROM resources WHERE kind = 'Secret' AND hash IS NOT NULL")
            .unwrap();
        assert_eq!(
            orphans, "0",
            "round {round}: Secrets without their Mesh in PostgreSQL"
        );
    }
    // The race really happened: some writes were admitted again (their reads changed, in this
    // process or in PostgreSQL) or B's delete found Secrets it had to take.
    let text = a.api.get_text("/metrics").await.unwrap();
    let retries = testkit::api::metric_sum(&text, "kmesh_admission_retries");
    eprintln!("re-admissions on A: {retries}");
    assert!(retries > 0.0, "no write on A overlapped a delete on B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_writes_answer_503_and_reads_go_on() {
    let mut pg = PgServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = replica(&tmp.path().join("a"), &pg).await;
    a.api
        .write_ok(Method::PUT, "/meshes/kept", &mesh("kept"))
        .await
        .unwrap();
    pg.stop().unwrap();
    let (status, v) = a
        .api
        .send(Method::PUT, "/meshes/new", &mesh("new"))
        .await
        .unwrap();
    assert_eq!(status, 503, "{v}");
    assert!(v.to_string().contains("PostgreSQL"), "{v}");
    let (status, v) = a.api.get("/meshes/kept").await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(a.api.get("/readyz").await.unwrap().0, 503);
    pg.start_again().unwrap();
    a.api
        .write_ok(Method::PUT, "/meshes/new", &mesh("new"))
        .await
        .unwrap();
    assert_eq!(a.api.get("/meshes/new").await.unwrap().0, 200);
    assert_eq!(a.api.get("/readyz").await.unwrap().0, 200);
}

/// A database migrated by a newer binary: global refuses to start, saying so (exit 1); `global
/// migrate` alone applies the schema.
#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    let pg = PgServer::start().unwrap();
    let global = testkit::bins::binary("global").unwrap();
    let out = std::process::Command::new(&global)
        .args(["migrate", "--store", &pg.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("version 2"));
    pg.psql("INSERT INTO schema_migrations VALUES (99, 0)")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&global)
        .args(["run", "--store", &pg.url(), "--data-dir"])
        .arg(tmp.path())
        .arg("--secrets-key-file")
        .arg(pg.secrets_key_file())
        .args(["--api-addr", "127.0.0.1:0", "--kds-addr", "127.0.0.1:0"])
        .args(["--api-tls-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("schema is at version 99"), "{stderr}");
}

/// PostgreSQL unreachable at start: global stays up, says so once, and starts when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_waits_for_an_unreachable_postgres_at_start() {
    // Built first (the first call runs cargo build), so the wait below is global's own.
    testkit::bins::binary("global").unwrap();
    let mut pg = PgServer::start().unwrap();
    pg.stop().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let url = pg.url();
    let starting = {
        let dir = dir.clone();
        tokio::spawn(async move {
            GlobalProc::start_with(&dir, GlobalOptions::default().store(&url)).await
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !starting.is_finished(),
        "global gave up or started without PostgreSQL"
    );
    pg.start_again().unwrap();
    let a = starting.await.unwrap().unwrap();
    a.api
        .write_ok(Method::PUT, "/meshes/m", &mesh("m"))
        .await
        .unwrap();
    let log = std::fs::read_to_string(dir.join("global.log")).unwrap();
    assert_eq!(
        log.matches("PostgreSQL store unreachable").count(),
        1,
        "one line per change of state:\n{log}"
    );
    assert!(log.contains("PostgreSQL store reachable"), "{log}");
}
