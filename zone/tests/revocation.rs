//! Revocation and signing-key rotation reach the zones, with the real binaries on loopback
//! (`global run`, `zone run`, the proxies' identity stream):
//!
//! - a dataplane token revoked with `global revoke-token` ends the stream opened with it and is
//!   refused on the next connection; the other proxies' tokens keep working;
//! - `global rotate-signing-key`: the zone learns the new public key over the sync stream, so a
//!   token of the new key is accepted, and tokens of the old key stay valid until `global
//!   retire-signing-key`, which ends their streams, refuses them, and ends the zone's own stream
//!   (its zone token was signed by the retired key) until it gets a new token;
//! - a zone token revoked ends that zone's stream at global;
//! - a zone restarted while global is away still refuses the revoked token.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::cluster::*;
use testkit::wait::{WAIT, wait_for};

/// An open identity stream: its first bundle was received.
struct Open(tonic::Streaming<proto::dpid::IdentityResponse>);

/// Opens the identity stream of `name` (service web) with `token`: the stream after its first
/// bundle, or the refusal.
async fn open(zone: &ZoneProc, token: &str, name: &str) -> Result<Open, tonic::Status> {
    let (_, stream) = zone.identity_stream(Some(token), "default", name).await?;
    Ok(Open(stream))
}

/// Waits for the end of an open stream; returns the status it ended with and how long it took.
async fn ended(stream: &mut Open) -> (tonic::Status, Duration) {
    let start = Instant::now();
    loop {
        match tokio::time::timeout(WAIT, stream.0.message()).await {
            Err(_) => panic!("the stream did not end within {WAIT:?}"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => return (status, start.elapsed()),
        }
    }
}

fn refused(r: Result<Open, tonic::Status>, what: &str, needle: &str) {
    match r {
        Ok(_) => panic!("{what}: accepted"),
        Err(s) => {
            assert_eq!(
                s.code(),
                tonic::Code::Unauthenticated,
                "{what}: {}",
                s.message()
            );
            assert!(
                s.message().contains(needle),
                "{what}: {:?} lacks {needle:?}",
                s.message()
            );
        }
    }
}

/// A dataplane token for `name` (service web) with `global generate dataplane-token`: (token, id).
fn dataplane_token(global: &GlobalProc, name: &str, dir: &Path) -> (String, String) {
    let path = dir.join(format!("{name}.token"));
    global
        .cli_token_file(
            &[
                "generate",
                "dataplane-token",
                "-m",
                "default",
                "--name",
                name,
                "--service",
                "web",
            ],
            &path,
        )
        .unwrap();
    let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    let id = common::tokens::token_id(&token).unwrap().jti;
    (token, id)
}

fn cli_ok(global: &GlobalProc, args: &[&str]) -> String {
    let out = global.cli(args).unwrap();
    assert_eq!(out.code, Some(0), "global {args:?}: {}", out.text());
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_key_rotations_reach_zones_and_end_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut global = GlobalProc::start_in(&root.join("global"), "info")
        .await
        .unwrap();
    global
        .apply(&builtin_mesh_yaml("default", "1h"))
        .await
        .unwrap();
    let mut zone = ZoneProc::start_minted(
        "zone-1",
        &global,
        &root.join("zone-1"),
        ZoneOptions::in_dir(&root.join("zone-1"), "info,zone::dp=debug"),
    )
    .await
    .unwrap();
    zone.wait_synced(&["default"], WAIT).await.unwrap();

    let (a, a_id) = dataplane_token(&global, "web-1", root);
    let (b, _) = dataplane_token(&global, "web-2", root);
    let mut a_stream = open(&zone, &a, "web-1").await.expect("token a accepted");
    let _first_b = open(&zone, &b, "web-2").await.expect("token b accepted");

    // Revoked: its stream ends, a new connection is refused, the other token still works.
    let asked = Instant::now();
    let said = cli_ok(&global, &["revoke-token", "--id", &a_id]);
    assert!(said.contains("revoked"), "{said}");
    let (status, _) = ended(&mut a_stream).await;
    eprintln!(
        "revoked dataplane token: its stream ended {:?} after `global revoke-token` started",
        asked.elapsed()
    );
    assert_eq!(
        status.code(),
        tonic::Code::Unauthenticated,
        "{}",
        status.message()
    );
    assert!(status.message().contains("revoked"), "{}", status.message());
    refused(open(&zone, &a, "web-1").await, "revoked token", "revoked");
    open(&zone, &b, "web-2")
        .await
        .expect("another proxy's token still works");

    // Rotation: the zone learns the new key; the old key's tokens still work.
    let old_kid = common::tokens::token_id(&b).unwrap().kid;
    let keys = cli_ok(&global, &["rotate-signing-key"]);
    assert!(
        keys.contains(&old_kid) && keys.contains("signing"),
        "{keys}"
    );
    let (c, _) = dataplane_token(&global, "web-3", root);
    assert_ne!(common::tokens::token_id(&c).unwrap().kid, old_kid);
    let _c_stream = wait_for(
        "a token of the new key accepted by the zone",
        root,
        || async { open(&zone, &c, "web-3").await.ok() },
    )
    .await;
    // (This connection replaces the first one of web-2.)
    let mut b_stream = open(&zone, &b, "web-2")
        .await
        .expect("tokens of the older key stay valid");

    // Retired: streams of its tokens end, its tokens are refused, and the zone's own stream (its
    // token was signed by that key) ends at global.
    let asked = Instant::now();
    cli_ok(&global, &["retire-signing-key", "--kid", &old_kid]);
    let (status, _) = ended(&mut b_stream).await;
    eprintln!(
        "retired key: a stream of its token ended {:?} after `global retire-signing-key` started",
        asked.elapsed()
    );
    assert_eq!(
        status.code(),
        tonic::Code::Unauthenticated,
        "{}",
        status.message()
    );
    refused(open(&zone, &b, "web-2").await, "retired key", "signature");
    let zone_view = wait_for("global refuses the zone's old-key token", root, || async {
        let z = global.zone("zone-1").await.ok()?;
        (z["online"] == false && !z["lastRefusal"].is_null()).then_some(z)
    })
    .await;
    let reason = zone_view["lastDisconnectReason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("zone token refused"), "{zone_view}");
    open(&zone, &c, "web-3")
        .await
        .expect("the new key's tokens are verified with the keys the zone holds");

    // A zone token revoked: that zone's stream ends.
    let (zone2_token, zone2_id) = {
        let path = root.join("zone-2.token");
        global
            .cli_token_file(&["generate", "zone-token", "--zone", "zone-2"], &path)
            .unwrap();
        let t = std::fs::read_to_string(&path).unwrap();
        let id = common::tokens::token_id(&t).unwrap().jti;
        (path, id)
    };
    let zone2 = ZoneProc::start_with_token(
        "zone-2",
        &global,
        &zone2_token,
        &root.join("zone-2"),
        ZoneOptions::in_dir(&root.join("zone-2"), "info"),
    )
    .await
    .unwrap();
    zone2.wait_synced(&["default"], WAIT).await.unwrap();
    cli_ok(&global, &["revoke-token", "--id", &zone2_id]);
    let z = wait_for("zone-2 disconnected, its token revoked", root, || async {
        let z: Value = global.zone("zone-2").await.ok()?;
        (z["online"] == false).then_some(z)
    })
    .await;
    let reason = z["lastDisconnectReason"].as_str().unwrap_or_default();
    assert!(reason.contains("revoked"), "{z}");

    // Zone-1 back with a token of the new key (the zone reads its token file at each
    // connection); then a token of the new key is revoked, and the zone refuses it.
    global
        .cli_token_file(
            &["generate", "zone-token", "--zone", "zone-1"],
            &root.join("zone-1").join("zone-1.token"),
        )
        .unwrap();
    wait_for("zone-1 connected again with a new token", root, || async {
        let z: Value = global.zone("zone-1").await.ok()?;
        (z["online"] == true).then_some(())
    })
    .await;
    let (d, d_id) = dataplane_token(&global, "web-4", root);
    open(&zone, &d, "web-4").await.expect("token d accepted");
    cli_ok(
        &global,
        &[
            "revoke-token",
            "--from-file",
            root.join("web-4.token").to_str().unwrap(),
        ],
    );
    wait_for("the zone refuses the revoked token d", root, || async {
        match open(&zone, &d, "web-4").await {
            Err(s) if s.message().contains("revoked") => Some(()),
            _ => None,
        }
    })
    .await;
    let listed = cli_ok(&global, &["get", "revoked-tokens"]);
    assert!(listed.contains(&d_id) && listed.contains(&a_id), "{listed}");

    // Global away, zone restarted: the revocation still holds there.
    global.terminate();
    zone.restart().await.unwrap();
    refused(
        open(&zone, &d, "web-4").await,
        "revoked token after a zone restart without global",
        "revoked",
    );
    open(&zone, &c, "web-3")
        .await
        .expect("a valid token still works without global");
}
