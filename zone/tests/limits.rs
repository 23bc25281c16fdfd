//! The request size limit of the proxy identity service (`zone/src/dp/codec.rs`: 4 MiB, no
//! compression), against the real `global` and `zone` binaries on loopback (builtin CA, no Vault).
//!
//! Over a TLS gRPC channel to the zone's dp port, with a valid dataplane token (so that the size
//! is the only reason to refuse):
//! - an `IdentityRequest` whose `cert_chain_pem` is 5 MiB is refused OUT_OF_RANGE;
//! - one with 1,000,000 tags (about 13 MiB encoded) is refused the same way;
//! - a gzip-compressed request that would inflate past the limit is refused (compression is not
//!   accepted at all);
//! - a request just under the limit (3 MiB of `cert_chain_pem`) is still decoded and served, so
//!   the refusals above are the limit's doing;
//! - afterwards the zone still answers its API, a normal proxy request is served on it, and it
//!   stops cleanly on SIGTERM (it did not crash).

use std::collections::HashMap;
use std::time::Instant;

use proto::dpid::IdentityRequest;
use proto::dpid::dataplane_identity_client::DataplaneIdentityClient;
use testkit::api::get_json;
use testkit::cluster::*;
use testkit::proc::logs;
use testkit::wait::WAIT;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;

fn request(name: &str) -> IdentityRequest {
    IdentityRequest {
        mesh: "default".into(),
        name: name.into(),
        tags: [("kuma.io/service".to_string(), "web".to_string())].into(),
        ..Default::default()
    }
}

/// Sends `req` with `token` on `channel` (gzip-compressed when asked) and returns the first
/// bundle or the refusal. Bounded: a hung server fails the test.
async fn send(
    channel: Channel,
    token: &str,
    req: IdentityRequest,
    gzip: bool,
) -> Result<proto::dpid::IdentityResponse, tonic::Status> {
    let mut request = tonic::Request::new(req);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut client = DataplaneIdentityClient::new(channel);
    if gzip {
        client = client.send_compressed(CompressionEncoding::Gzip);
    }
    tokio::time::timeout(WAIT, async move {
        let mut stream = client.stream(request).await?.into_inner();
        Ok(stream.message().await?.expect("a bundle"))
    })
    .await
    .expect("an answer in time")
}

fn assert_refused(
    what: &str,
    r: Result<proto::dpid::IdentityResponse, tonic::Status>,
    code: tonic::Code,
) {
    match r {
        Ok(b) => panic!("{what}: accepted (serial {})", b.serial),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            eprintln!("{what}: refused {:?}: {}", s.code(), s.message());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_identity_requests_are_refused_and_the_zone_keeps_serving() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let global = GlobalProc::start_in(&root.join("global"), "info")
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
    let token = |name: &str| {
        std::fs::read_to_string(
            global
                .cli_dataplane_token_file("default", name, root)
                .unwrap(),
        )
        .unwrap()
        .trim()
        .to_string()
    };
    let ch = zone.dp_channel().await.unwrap();

    // A proxy is served before anything else, on the channel the big requests will use.
    let first = send(ch.clone(), &token("web-1"), request("web-1"), false).await;
    let first = first.unwrap_or_else(|s| panic!("a normal request: {s:?}"));
    assert!(first.key_pem.is_some() && !first.cert_chain_pem.is_empty());

    // 5 MiB of presented chain: refused before the handler runs.
    let mut big = request("big-1");
    big.cert_chain_pem = "A".repeat(5 * MIB);
    let t = Instant::now();
    let r = send(ch.clone(), &token("big-1"), big, false).await;
    assert_refused("5 MiB cert_chain_pem", r, tonic::Code::OutOfRange);
    eprintln!("  answered in {:?}", t.elapsed());

    // 1,000,000 tags.
    let mut many = request("many-1");
    many.tags = (0..1_000_000)
        .map(|i| (format!("t{i}"), "v".to_string()))
        .collect::<HashMap<_, _>>();
    many.tags.insert("kuma.io/service".into(), "web".into());
    let t = Instant::now();
    let r = send(ch.clone(), &token("many-1"), many, false).await;
    assert_refused("1,000,000 tags", r, tonic::Code::OutOfRange);
    eprintln!("  answered in {:?}", t.elapsed());

    // A few KiB of gzip that would inflate to 5 MiB: compression is not accepted at all.
    let mut bomb = request("bomb-1");
    bomb.cert_chain_pem = "A".repeat(5 * MIB);
    let r = send(ch.clone(), &token("bomb-1"), bomb, true).await;
    assert_refused("gzip inflating to 5 MiB", r, tonic::Code::Unimplemented);

    // Just under the limit: decoded and served (the presented "chain" is junk, so the zone
    // issues a fresh certificate).
    let mut under = request("under-1");
    under.cert_chain_pem = "A".repeat(3 * MIB);
    let r = send(ch.clone(), &token("under-1"), under, false).await;
    let r = r.unwrap_or_else(|s| panic!("3 MiB cert_chain_pem: {s:?}"));
    assert!(r.key_pem.is_some(), "a fresh key for a junk chain");

    // The zone is still up and serving: its API, and a normal proxy on a new channel and on the
    // channel that carried the big requests.
    let health = get_json(&zone.url("/healthz"), None).await;
    assert_eq!(health.map(|(s, _)| s), Some(200), "{}", logs(&zone.dir));
    let r = send(
        zone.dp_channel().await.unwrap(),
        &token("web-2"),
        request("web-2"),
        false,
    )
    .await;
    let r = r.unwrap_or_else(|s| panic!("a normal request afterwards: {s:?}"));
    assert!(r.key_pem.is_some() && !r.cert_chain_pem.is_empty());
    let r = send(ch, &token("web-3"), request("web-3"), false).await;
    r.unwrap_or_else(|s| panic!("a normal request afterwards, same channel: {s:?}"));
    let names: Vec<String> = zone
        .dataplanes()
        .await
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str().map(str::to_string))
        .collect();
    for refused in ["big-1", "many-1", "bomb-1"] {
        assert!(
            !names.iter().any(|n| n == refused),
            "{refused} registered: {names:?}"
        );
    }
    for served in ["web-1", "under-1", "web-2", "web-3"] {
        assert!(
            names.iter().any(|n| n == served),
            "{served} missing: {names:?}"
        );
    }

    // It did not crash: SIGTERM stops it cleanly (`terminate` checks the exit status).
    zone.terminate();
    let log = std::fs::read_to_string(zone.dir.join("zone.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    eprintln!("whole test: {:?}", started.elapsed());
}

/// One connection holds at most `limits::DP_STREAMS_PER_CONNECTION` identity streams (tonic leaves the
/// count unbounded): the next stream on it waits until one closes, while a new connection is
/// served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_a_bounded_number_of_identity_streams() {
    const MAX: usize = common::limits::DP_STREAMS_PER_CONNECTION as usize;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let global = GlobalProc::start_in(&root.join("global"), "info")
        .await
        .unwrap();
    global
        .apply(&builtin_mesh_yaml("default", "1h"))
        .await
        .unwrap();
    let zone = ZoneProc::start_minted(
        "zone-1",
        &global,
        &root.join("zone-1"),
        ZoneOptions::in_dir(&root.join("zone-1"), "info,zone::dp=debug"),
    )
    .await
    .unwrap();
    zone.wait_synced(&["default"], WAIT).await.unwrap();
    // Tokens from the API (one CLI process per token would take long).
    let admin = global.token.clone();
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();
    for i in 0..=MAX {
        // The token alone, as text/plain.
        let token = http
            .post(global.url("/tokens/dataplane"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"mesh": "default", "name": format!("p-{i}"), "anyService": true}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        tokens.push(token);
    }
    let ch = zone.dp_channel().await.unwrap();
    let open = |i: usize, ch: Channel| {
        let mut request = tonic::Request::new(request(&format!("p-{i}")));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", tokens[i]).parse().unwrap(),
        );
        async move {
            let mut stream = DataplaneIdentityClient::new(ch)
                .stream(request)
                .await?
                .into_inner();
            let first = stream.message().await?.expect("a bundle");
            Ok::<_, tonic::Status>((first, stream))
        }
    };
    let mut held = Vec::new();
    for r in futures::future::join_all((0..MAX).map(|i| open(i, ch.clone()))).await {
        held.push(r.expect("a stream within the bound is served"));
    }
    // One more on the same connection: not served while the others are open.
    let extra = tokio::spawn(open(MAX, ch.clone()));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        !extra.is_finished(),
        "stream {} was served on a full connection",
        MAX + 1
    );
    // A proxy on its own connection is not held up by that.
    let other = send(
        zone.dp_channel().await.unwrap(),
        &tokens[0],
        request("p-0"),
        false,
    )
    .await;
    other.unwrap_or_else(|s| panic!("a new connection: {s:?}"));
    // One stream closes: the waiting one is served.
    held.pop();
    let (bundle, _stream) = tokio::time::timeout(WAIT, extra)
        .await
        .expect("served once a slot is free")
        .unwrap()
        .unwrap_or_else(|s| panic!("the waiting stream: {s:?}"));
    assert!(!bundle.cert_chain_pem.is_empty());
}
