//! The global-to-zone sync stream, end to end on loopback.
//!
//! Multi-process tests run the real `global` and `zone` binaries: three zones receive a Mesh and
//! its Secrets and then the deletes; global restarted with a zone connected resyncs without
//! resending unchanged resources (asserted on the sent counters of `GET /zones/{name}`); a zone
//! started while global is down serves from its store and catches up (including removals)
//! when global returns; forged, expired and other-zone tokens are refused, visibly. Protocol
//! tests drive a hand-written client against the real global: a NACKed resource is reported
//! with its reason while the rest flows on; oversized resources are skipped and recorded, big
//! deltas are split, and a zone that stops reading is dropped without blocking the others.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use proto::kds::zone_sync_client::ZoneSyncClient;
use proto::kds::{self, GlobalMessage, ZoneMessage, global_message, zone_message};
use serde_json::Value;
use testkit::api::get_json;
use testkit::cluster::{GlobalOptions, GlobalProc, ZoneOptions, ZoneProc};
use testkit::proc::free_port;
use testkit::wait::wait_for_at_most;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const WAIT: Duration = Duration::from_secs(20);

/// Polls `f` until it yields a value; panics with the processes' logs after `WAIT`.
async fn wait_for<T, F, Fut>(what: &str, logs_dir: &Path, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_at_most(what, logs_dir, WAIT, f).await
}

/// Global with its data in `dir` on the given ports (so it can be started again where its zones
/// expect it), the sync stream logged at debug.
async fn start_global_on(dir: &Path, api_port: u16, kds_port: u16) -> GlobalProc {
    GlobalProc::start_with(
        dir,
        GlobalOptions::in_dir(dir, "info,global::kds=debug").ports(api_port, kds_port),
    )
    .await
    .unwrap()
}

fn mesh(name: &str) -> String {
    format!("type: Mesh\nname: {name}\n")
}

fn mesh_labelled(name: &str, label: &str) -> String {
    format!("type: Mesh\nname: {name}\nlabels:\n  team: {label}\n")
}

fn secret(mesh: &str, name: &str, data: &str) -> String {
    format!("type: Secret\nname: {name}\nmesh: {mesh}\ndata: {data}\n")
}

fn counter(zone: &Value, type_: &str, field: &str) -> u64 {
    zone["types"][type_][field].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_zones_receive_meshes_and_secrets_then_deletes() {
    let tmp = tempfile::tempdir().unwrap();
    let global = GlobalProc::start_in(&tmp.path().join("global"), "info,global::kds=debug")
        .await
        .unwrap();
    let mut zones = Vec::new();
    for i in 1..=3 {
        let name = format!("zone-{i}");
        let token = global.cli_zone_token_file(&name, tmp.path()).unwrap();
        zones.push(
            ZoneProc::start_with_token(
                &name,
                &global,
                &token,
                &tmp.path().join(&name),
                ZoneOptions::in_dir(&tmp.path().join(&name), "info,zone=debug"),
            )
            .await
            .unwrap(),
        );
    }
    // All three online.
    wait_for("3 zones online", tmp.path(), || async {
        let (_, body) = global.api.get("/zones").await.unwrap();
        let online = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|z| z["online"] == true)
            .count();
        (online == 3).then_some(())
    })
    .await;

    let started = Instant::now();
    global
        .put("/meshes/payments", &mesh("payments"))
        .await
        .unwrap();
    global
        .put(
            "/meshes/payments/secrets/ca-cert",
            &secret("payments", "ca-cert", "Y2VydA=="),
        )
        .await
        .unwrap();
    global
        .put(
            "/meshes/payments/secrets/token",
            &secret("payments", "token", "dG9rZW4="),
        )
        .await
        .unwrap();
    for z in &zones {
        wait_for(
            &format!("{} to hold the mesh and its secrets", z.name),
            tmp.path(),
            || async {
                (z.secrets("payments").await.unwrap()
                    == Some(vec!["ca-cert".into(), "token".into()]))
                .then_some(())
            },
        )
        .await;
    }
    eprintln!(
        "a Mesh and 2 Secrets reached 3 zones in {:?}",
        started.elapsed()
    );
    // Secret data never shows on the zone API.
    let body = zones[0].api.get_ok("/meshes/payments").await.unwrap();
    assert!(!body.to_string().contains("dG9rZW4="), "{body}");

    // Global's view: each zone was sent each resource once and acknowledged.
    for z in &zones {
        let record = wait_for("the acknowledgements", tmp.path(), || async {
            let r = global.zone(&z.name).await.unwrap();
            (counter(&r, "Secret", "acked") >= 1
                && counter(&r, "Mesh", "acked") >= 1
                && counter(&r, "Secret", "acked") == counter(&r, "Secret", "sent"))
            .then_some(r)
        })
        .await;
        assert_eq!(record["online"], true);
        assert_eq!(counter(&record, "Mesh", "resourcesSent"), 1, "{record}");
        assert_eq!(counter(&record, "Secret", "resourcesSent"), 2, "{record}");
        assert_eq!(counter(&record, "Secret", "nacked"), 0);
        assert!(record["connectedSince"].is_string());
        // The zone's status report arrived.
        let types = record["status"]["types"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(types.iter().any(|t| t["type"] == "Mesh"), "{record}");
    }

    // `global get zones`.
    let out = global.cli_env(&["get", "zones"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(table.matches("online").count(), 3, "{table}");
    assert!(table.contains("zone-2"), "{table}");

    // Deletes reach every zone: a Secret, then the Mesh.
    global
        .delete("/meshes/payments/secrets/token")
        .await
        .unwrap();
    for z in &zones {
        wait_for("the secret delete", tmp.path(), || async {
            (z.secrets("payments").await.unwrap() == Some(vec!["ca-cert".into()])).then_some(())
        })
        .await;
    }
    global.delete("/meshes/payments").await.unwrap();
    for z in &zones {
        wait_for("the mesh delete", tmp.path(), || async {
            (z.meshes().await.unwrap().is_empty()).then_some(())
        })
        .await;
    }
    let record = global.zone("zone-1").await.unwrap();
    assert_eq!(counter(&record, "Mesh", "removedSent"), 1, "{record}");
    assert_eq!(counter(&record, "Secret", "removedSent"), 2, "{record}");

    // Metrics per zone and type.
    let metrics = reqwest::get(global.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"kmesh_sync_sent_responses_total{zone="zone-1",type="Secret"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"kmesh_sync_acked_responses_total{zone="zone-3",type="Mesh"}"#));
    assert!(metrics.contains(r#"kmesh_sync_stream_connects_total{zone="zone-2"} 1"#));
    assert!(metrics.contains("kmesh_sync_zones_online 3"));

    // A zone that dies without a word (stopped, its socket still open) is marked offline by
    // the keepalive within seconds.
    let stopped_at = Instant::now();
    zones[2].proc.signal(libc::SIGSTOP);
    wait_for(
        "the frozen zone to be marked offline",
        tmp.path(),
        || async { (global.zone("zone-3").await.unwrap()["online"] == false).then_some(()) },
    )
    .await;
    let took = stopped_at.elapsed();
    eprintln!("a frozen zone was marked offline after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let record = global.zone("zone-3").await.unwrap();
    assert!(record["lastDisconnectReason"].is_string(), "{record}");
    zones[2].proc.signal(libc::SIGCONT);

    for z in &mut zones {
        z.terminate();
    }
    let mut global = global;
    global.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_resync_without_resending_and_zones_serve_while_global_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let gdir = tmp.path().join("global");
    let (api_port, kds_port) = (free_port(), free_port());
    let mut global = start_global_on(&gdir, api_port, kds_port).await;
    let token = global.cli_zone_token_file("east", tmp.path()).unwrap();
    let zdir = tmp.path().join("east");
    let mut zone = ZoneProc::start_with_token(
        "east",
        &global,
        &token,
        &zdir,
        ZoneOptions::in_dir(&zdir, "info,zone=debug"),
    )
    .await
    .unwrap();

    global.put("/meshes/m1", &mesh("m1")).await.unwrap();
    global.put("/meshes/m2", &mesh("m2")).await.unwrap();
    global
        .put("/meshes/m1/secrets/s1", &secret("m1", "s1", "czE="))
        .await
        .unwrap();
    global
        .put("/meshes/m1/secrets/s2", &secret("m1", "s2", "czI="))
        .await
        .unwrap();
    wait_for("the zone to hold everything", tmp.path(), || async {
        (zone.meshes().await.unwrap() == ["m1", "m2"]
            && zone.secrets("m1").await.unwrap() == Some(vec!["s1".into(), "s2".into()]))
        .then_some(())
    })
    .await;
    let record = global.zone("east").await.unwrap();
    assert_eq!(counter(&record, "Mesh", "resourcesSent"), 2, "{record}");
    assert_eq!(counter(&record, "Secret", "resourcesSent"), 2, "{record}");

    // A change to one Mesh resends that Mesh only.
    global
        .put("/meshes/m1", &mesh_labelled("m1", "blue"))
        .await
        .unwrap();
    wait_for("the label to arrive", tmp.path(), || async {
        let m = zone.api.get_ok("/meshes/m1").await.unwrap();
        (m["labels"]["team"] == "blue").then_some(())
    })
    .await;
    let record = global.zone("east").await.unwrap();
    assert_eq!(counter(&record, "Mesh", "resourcesSent"), 3, "{record}");
    assert_eq!(counter(&record, "Secret", "resourcesSent"), 2, "{record}");

    // Global restarts with the zone connected: the zone resubscribes with the versions it holds,
    // and nothing is resent.
    global.terminate();
    let restarted = Instant::now();
    let global = start_global_on(&gdir, api_port, kds_port).await;
    let record = wait_for(
        "the zone to reconnect and acknowledge",
        tmp.path(),
        || async {
            let r = global.zone("east").await.unwrap();
            (r["online"] == true
                && r["connects"] == 2
                && counter(&r, "Mesh", "acked") >= 1
                && counter(&r, "Secret", "acked") >= 1)
                .then_some(r)
        },
    )
    .await;
    eprintln!(
        "the zone was back in sync {:?} after global's restart began",
        restarted.elapsed()
    );
    for t in ["Mesh", "Secret"] {
        assert_eq!(
            counter(&record, t, "resourcesSent"),
            0,
            "{t} resent after restart: {record}"
        );
        assert_eq!(counter(&record, t, "removedSent"), 0, "{record}");
        assert_eq!(
            counter(&record, t, "sent"),
            1,
            "one (empty) initial response: {record}"
        );
    }
    let status = zone.api.get_ok("/status").await.unwrap();
    assert_eq!(status["global"]["connected"], true, "{status}");
    assert_eq!(status["global"]["connects"], 2, "{status}");

    // The zone stops; global sees it go at once.
    zone.terminate();
    wait_for("the zone to be offline", tmp.path(), || async {
        (global.zone("east").await.unwrap()["online"] == false).then_some(())
    })
    .await;
    // Changes while the zone is away: one Mesh removed, one added.
    global.delete("/meshes/m2").await.unwrap();
    global.put("/meshes/m3", &mesh("m3")).await.unwrap();
    let mut global = global;
    global.terminate();

    // The zone starts while global is down: it serves what its store holds.
    std::fs::rename(zdir.join("zone.log"), zdir.join("zone-first-run.log")).unwrap();
    let zone = ZoneProc::start_with_token(
        "east",
        &global,
        &token,
        &zdir,
        ZoneOptions::in_dir(&zdir, "info,zone=debug"),
    )
    .await
    .unwrap();
    assert_eq!(zone.meshes().await.unwrap(), ["m1", "m2"]);
    assert_eq!(
        zone.secrets("m1").await.unwrap(),
        Some(vec!["s1".into(), "s2".into()])
    );
    let status = wait_for(
        "the zone to report global unreachable",
        tmp.path(),
        || async {
            let s = zone.api.get_ok("/status").await.unwrap();
            s["global"]["lastError"].is_string().then_some(s)
        },
    )
    .await;
    assert_eq!(status["global"]["connected"], false, "{status}");
    let ready = get_json(&zone.url("/readyz"), None).await.unwrap();
    assert_eq!(ready.0, 200);

    // Global returns: the zone catches up; its first response removes what global no longer has
    // and sends only what is new.
    let global = start_global_on(&gdir, api_port, kds_port).await;
    wait_for("the zone to catch up", tmp.path(), || async {
        (zone.meshes().await.unwrap() == ["m1", "m3"]).then_some(())
    })
    .await;
    let record = wait_for("the acknowledgements", tmp.path(), || async {
        let r = global.zone("east").await.unwrap();
        (counter(&r, "Mesh", "acked") >= 1 && counter(&r, "Secret", "acked") >= 1).then_some(r)
    })
    .await;
    assert_eq!(
        counter(&record, "Mesh", "resourcesSent"),
        1,
        "only m3: {record}"
    );
    assert_eq!(
        counter(&record, "Mesh", "removedSent"),
        1,
        "m2 removed: {record}"
    );
    assert_eq!(counter(&record, "Secret", "resourcesSent"), 0, "{record}");
    assert_eq!(
        zone.secrets("m1").await.unwrap(),
        Some(vec!["s1".into(), "s2".into()])
    );
    // The zone logged losing global once, not once per failed retry.
    let log = std::fs::read_to_string(zdir.join("zone.log")).unwrap();
    assert_eq!(
        log.matches("cannot sync with global").count(),
        1,
        "repeated log lines:\n{log}"
    );
    let mut zone = zone;
    zone.terminate();
    let mut global = global;
    global.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_other_zone_tokens_are_refused() {
    use global::tokens::{Claims, TokenSigner, ZONE_SCOPE, ZoneClaim};
    let tmp = tempfile::tempdir().unwrap();
    let gdir = tmp.path().join("global");
    let global = GlobalProc::start_in(&gdir, "info,global::kds=debug")
        .await
        .unwrap();

    // Forged: a well-formed token signed by another key.
    let forged = TokenSigner::generate().issue_zone_token("forged", Duration::from_secs(3600));
    // Expired: signed with global's own key (read from its data directory), expiry past.
    let expired = TokenSigner::load_or_create(&gdir).unwrap().sign(&Claims {
        scope: ZONE_SCOPE.into(),
        iat: 1_000,
        exp: 2_000,
        jti: "x".into(),
        body: ZoneClaim {
            zone: "expired".into(),
        },
    });
    let write = |name: &str, token: &str| {
        let p = tmp.path().join(format!("{name}.token"));
        std::fs::write(&p, token).unwrap();
        p
    };
    let forged_file = write("forged", &forged);
    let expired_file = write("expired", &expired);
    // Another zone's token: issued for "west", used by "intruder".
    let west_file = global.cli_zone_token_file("west", tmp.path()).unwrap();

    let cases = [
        ("forged", forged_file.clone(), "signature is invalid"),
        ("expired", expired_file, "expired"),
        ("intruder", west_file, "issued for zone \"west\""),
    ];
    let mut zones = Vec::new();
    for (name, file, _) in &cases {
        zones.push(
            ZoneProc::start_with_token(
                name,
                &global,
                file,
                &tmp.path().join(name),
                ZoneOptions::in_dir(&tmp.path().join(name), "info,zone=debug"),
            )
            .await
            .unwrap(),
        );
    }
    for (z, (name, _, reason)) in zones.iter().zip(&cases) {
        let status = wait_for(&format!("{name} to be refused"), tmp.path(), || async {
            let s = z.api.get_ok("/status").await.unwrap();
            s["global"]["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("unauthenticated"))
                .then_some(s)
        })
        .await;
        let error = status["global"]["lastError"].as_str().unwrap();
        assert!(error.contains(reason), "{name}: {error}");
        assert_eq!(status["global"]["connected"], false);
    }
    // Global shows the refusals and no such zone.
    let (_, body) = global.api.get("/zones").await.unwrap();
    assert_eq!(body["total"], 0, "{body}");
    let refusals = body["refusals"].to_string();
    for (name, _, reason) in &cases {
        assert!(
            refusals.contains(&format!("\"zone\":\"{name}\"")),
            "{name}: {refusals}"
        );
        assert!(
            refusals.contains(&reason.replace('"', "\\\"")),
            "{reason}: {refusals}"
        );
    }
    let metrics = reqwest::get(global.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["forged", "expired", "wrong_zone"] {
        assert!(
            metrics.contains(&format!(
                "kmesh_sync_auth_refusals_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
    // Global logs a repeated refusal once.
    let log = std::fs::read_to_string(gdir.join("global.log")).unwrap();
    assert_eq!(
        log.matches("sync stream refused: zone token refused: the token signature is invalid")
            .count(),
        1,
        "{log}"
    );

    // The token file is read again on each attempt: a valid token lets the zone in.
    let good = global.cli_zone_token_file("forged", tmp.path()).unwrap();
    std::fs::rename(&good, &forged_file).unwrap();
    wait_for(
        "the zone with a new token to connect",
        tmp.path(),
        || async {
            let (status, body) = global.api.get("/zones/forged").await.unwrap();
            (status == 200 && body["online"] == true).then_some(())
        },
    )
    .await;

    // A missing token is refused too.
    let ca = std::fs::read(global.ca_file()).unwrap();
    let mut client = hand_client(global.kds_port, &ca).await;
    let (_tx, request) = stream_request(None, None);
    let err = client.sync(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("no zone token"), "{}", err.message());

    for z in &mut zones {
        z.terminate();
    }
    let mut global = global;
    global.terminate();
}

// ---- protocol tests with a hand-driven client -------------------------------------------------

async fn hand_client(kds_port: u16, ca: &[u8]) -> ZoneSyncClient<Channel> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{kds_port}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .domain_name("127.0.0.1")
                .ca_certificate(Certificate::from_pem(ca)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    ZoneSyncClient::new(channel).max_decoding_message_size(16 * 1024 * 1024)
}

fn stream_request(
    token: Option<&str>,
    zone: Option<&str>,
) -> (
    mpsc::Sender<ZoneMessage>,
    tonic::Request<ReceiverStream<ZoneMessage>>,
) {
    let (tx, rx) = mpsc::channel(16);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    if let Some(z) = zone {
        request
            .metadata_mut()
            .insert("x-zone-name", z.parse().unwrap());
    }
    (tx, request)
}

fn subscribe(type_: &str, held: Vec<kds::ResourceVersion>) -> ZoneMessage {
    ZoneMessage {
        message: Some(zone_message::Message::Request(kds::DiscoveryRequest {
            r#type: type_.into(),
            initial_resource_versions: held,
            ..Default::default()
        })),
    }
}

fn answer(resp: &kds::DiscoveryResponse, rejected: Vec<kds::Rejection>) -> ZoneMessage {
    let error_detail = (!rejected.is_empty()).then(|| kds::ErrorDetail {
        code: 3,
        message: format!("{} resources rejected", rejected.len()),
    });
    ZoneMessage {
        message: Some(zone_message::Message::Request(kds::DiscoveryRequest {
            r#type: resp.r#type.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail,
            rejected,
            ..Default::default()
        })),
    }
}

async fn next_response(stream: &mut tonic::Streaming<GlobalMessage>) -> kds::DiscoveryResponse {
    loop {
        let msg = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("a response in time")
            .expect("the stream is healthy")
            .expect("the stream is open");
        match msg.message {
            Some(global_message::Message::Response(r)) => return r,
            // The dataplane token keys, sent first on every stream.
            Some(global_message::Message::TokenKeys(_)) => continue,
            None => panic!("an empty message"),
        }
    }
}

fn names(resp: &kds::DiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(|r| r.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_resource_is_reported_and_the_rest_still_flows() {
    let tmp = tempfile::tempdir().unwrap();
    let global = GlobalProc::start_in(&tmp.path().join("global"), "info,global::kds=debug")
        .await
        .unwrap();
    global.put("/meshes/m1", &mesh("m1")).await.unwrap();
    for s in ["a", "b", "c"] {
        global
            .put(&format!("/meshes/m1/secrets/{s}"), &secret("m1", s, "eA=="))
            .await
            .unwrap();
    }
    let token_file = global.cli_zone_token_file("hand", tmp.path()).unwrap();
    let token = std::fs::read_to_string(token_file).unwrap();
    let ca = std::fs::read(global.ca_file()).unwrap();
    let mut client = hand_client(global.kds_port, &ca).await;
    let (tx, request) = stream_request(Some(token.trim()), Some("hand"));
    tx.send(subscribe("Secret", vec![])).await.unwrap();
    let mut inbound = client.sync(request).await.unwrap().into_inner();

    // The initial state: all three; the zone rejects "b" and keeps the others.
    let first = next_response(&mut inbound).await;
    assert!(first.initial);
    assert_eq!(names(&first), ["a", "b", "c"]);
    let payload: Value = serde_json::from_slice(&first.resources[0].payload).unwrap();
    assert_eq!(payload["name"], "a");
    tx.send(answer(
        &first,
        vec![kds::Rejection {
            mesh: "m1".into(),
            name: "b".into(),
            reason: "cannot parse: data is not a PEM certificate".into(),
        }],
    ))
    .await
    .unwrap();
    let record = wait_for("the NACK to be recorded", tmp.path(), || async {
        let r = global.zone("hand").await.unwrap();
        (counter(&r, "Secret", "nacked") == 1).then_some(r)
    })
    .await;
    let nack = &record["types"]["Secret"]["lastNack"];
    assert_eq!(nack["error"], "1 resources rejected", "{record}");
    assert_eq!(nack["resources"][0]["name"], "b", "{record}");
    assert_eq!(
        nack["resources"][0]["reason"],
        "cannot parse: data is not a PEM certificate"
    );
    assert_eq!(record["lastError"], Value::Null);

    // Later changes still flow, each sent alone; the rejected one is not resent until it changes.
    global
        .put("/meshes/m1/secrets/d", &secret("m1", "d", "eQ=="))
        .await
        .unwrap();
    let next = next_response(&mut inbound).await;
    assert!(!next.initial);
    assert_eq!(names(&next), ["d"]);
    tx.send(answer(&next, vec![])).await.unwrap();
    global
        .put("/meshes/m1/secrets/b", &secret("m1", "b", "eg=="))
        .await
        .unwrap();
    let next = next_response(&mut inbound).await;
    assert_eq!(names(&next), ["b"]);
    tx.send(answer(&next, vec![])).await.unwrap();
    let record = wait_for("the ACKs", tmp.path(), || async {
        let r = global.zone("hand").await.unwrap();
        (counter(&r, "Secret", "acked") == 2).then_some(r)
    })
    .await;
    assert_eq!(counter(&record, "Secret", "resourcesSent"), 5, "{record}");
    // The NACK stays visible.
    assert_eq!(
        record["types"]["Secret"]["lastNack"]["resources"][0]["name"],
        "b"
    );

    // A resubscription with versions held: only the difference comes back.
    let held: Vec<kds::ResourceVersion> = first
        .resources
        .iter()
        .filter(|r| r.name != "b")
        .map(|r| kds::ResourceVersion {
            mesh: r.mesh.clone(),
            name: r.name.clone(),
            version: r.version.clone(),
        })
        .chain([kds::ResourceVersion {
            mesh: "m1".into(),
            name: "gone".into(),
            version: "0".into(),
        }])
        .collect();
    drop(tx);
    drop(inbound);
    let (tx, request) = stream_request(Some(token.trim()), None);
    tx.send(subscribe("Secret", held)).await.unwrap();
    let mut inbound = client.sync(request).await.unwrap().into_inner();
    let first = next_response(&mut inbound).await;
    assert!(first.initial);
    assert_eq!(names(&first), ["b", "d"]);
    assert_eq!(first.removed_resources.len(), 1);
    assert_eq!(first.removed_resources[0].name, "gone");

    // A zone that names itself differently from its token is refused.
    let (_tx2, request) = stream_request(Some(token.trim()), Some("other"));
    let err = client.sync(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    drop(tx);
    let mut global = global;
    global.terminate();
}

/// A real global, in process, with a small message limit and send timeout.
struct InProcessGlobal {
    url: String,
    kds_port: u16,
    dir: tempfile::TempDir,
    token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl InProcessGlobal {
    async fn start(max_message_bytes: usize, send_timeout: Duration) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let kds = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", api.local_addr().unwrap());
        let kds_port = kds.local_addr().unwrap().port();
        let mut endpoint = global::KdsEndpoint::new(kds);
        endpoint.config.max_message_bytes = max_message_bytes;
        endpoint.config.send_timeout = send_timeout;
        let listeners = global::Listeners {
            api,
            kds: Some(endpoint),
            api_tls: None,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let config = global::GlobalConfig {
            data_dir: dir.path().to_path_buf(),
            store: Default::default(),
            vault_timeouts: Default::default(),
            accept_store_rollback: false,
            api_hosts: vec![],
            data_source_dirs: vec![],
            secrets_key_file: None,
            secrets_extra_key_files: Vec::new(),
        };
        let handle = tokio::spawn(async move {
            global::run(config, listeners, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let health = format!("{url}/healthz");
        wait_for("global in process", dir.path(), || async {
            get_json(&health, None).await.filter(|(s, _)| *s == 200)
        })
        .await;
        let token = std::fs::read_to_string(dir.path().join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            url,
            kds_port,
            dir,
            token,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    async fn put(&self, path: &str, yaml: &str) {
        let resp = reqwest::Client::new()
            .put(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "PUT {path}: {}", resp.status());
    }

    async fn zone(&self, name: &str) -> Value {
        get_json(&format!("{}/zones/{name}", self.url), Some(&self.token))
            .await
            .unwrap()
            .1
    }

    async fn zone_token(&self, zone: &str) -> String {
        // The token alone, as text/plain (what `curl ... > token` keeps).
        reqwest::Client::new()
            .post(format!("{}/tokens/zone", self.url))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"zone": zone}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn client(&self) -> ZoneSyncClient<Channel> {
        let ca = std::fs::read(self.dir.path().join("kds-ca.pem")).unwrap();
        hand_client(self.kds_port, &ca).await
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .expect("global stops promptly with streams open")
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_resources_are_skipped_big_deltas_split_and_stalled_zones_dropped() {
    const LIMIT: usize = 64 * 1024;
    let global = InProcessGlobal::start(LIMIT, Duration::from_secs(1)).await;
    global.put("/meshes/big", &mesh("big")).await;
    // 10 Secrets of ~20 KiB each (too many for one 64 KiB response) and one of ~100 KiB.
    let blob = |n: usize| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(vec![7u8; n])
    };
    for i in 0..10 {
        global
            .put(
                &format!("/meshes/big/secrets/s{i}"),
                &secret("big", &format!("s{i}"), &blob(15_000)),
            )
            .await;
    }
    global
        .put(
            "/meshes/big/secrets/huge",
            &secret("big", "huge", &blob(75_000)),
        )
        .await;

    let token = global.zone_token("small").await;
    let mut client = global.client().await;
    let (tx, request) = stream_request(Some(&token), Some("small"));
    tx.send(subscribe("Secret", vec![])).await.unwrap();
    let mut inbound = client.sync(request).await.unwrap().into_inner();
    let mut got = Vec::new();
    let mut responses = 0;
    let mut skipped = Vec::new();
    loop {
        let r = next_response(&mut inbound).await;
        responses += 1;
        assert!(r.initial);
        assert!(prost::Message::encoded_len(&r) <= LIMIT);
        got.extend(names(&r));
        skipped.extend(r.skipped.iter().map(|s| (s.name.clone(), s.size)));
        tx.send(answer(&r, vec![])).await.unwrap();
        if !r.more {
            break;
        }
    }
    assert!(responses >= 3, "{responses} responses");
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(!got.contains(&"huge".to_string()));
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].0, "huge");
    assert!(skipped[0].1 > LIMIT as u64);
    let record = wait_for("the acks", global.dir.path(), || async {
        let r = global.zone("small").await;
        (counter(&r, "Secret", "acked") == responses).then_some(r)
    })
    .await;
    assert_eq!(record["online"], true, "the stream survived: {record}");
    let too_large = &record["tooLarge"][0];
    assert_eq!(too_large["name"], "huge", "{record}");
    assert_eq!(too_large["type"], "Secret");
    assert!(too_large["size"].as_u64().unwrap() > LIMIT as u64);
    assert_eq!(too_large["limit"], LIMIT as u64);
    assert_eq!(counter(&record, "Secret", "resourcesSent"), 10);

    // A second zone subscribes and then never reads: once its queue is full global drops it
    // after the send timeout, while the first zone keeps getting updates.
    let token2 = global.zone_token("stalled").await;
    let mut client2 = global.client().await;
    let (tx2, request) = stream_request(Some(&token2), Some("stalled"));
    tx2.send(subscribe("Secret", vec![])).await.unwrap();
    let _stalled = client2.sync(request).await.unwrap().into_inner();
    for round in 0..30 {
        for i in 0..10 {
            global
                .put(
                    &format!("/meshes/big/secrets/s{i}"),
                    &secret("big", &format!("s{i}"), &blob(45_000 + round + 1)),
                )
                .await;
        }
        // The reading zone follows.
        let mut seen = 0;
        while seen < 10 {
            let r = next_response(&mut inbound).await;
            seen += r.resources.len();
            tx.send(answer(&r, vec![])).await.unwrap();
        }
        if global.zone("stalled").await["online"] == false {
            break;
        }
    }
    let record = wait_for(
        "the stalled zone to be dropped",
        global.dir.path(),
        || async {
            let r = global.zone("stalled").await;
            (r["online"] == false).then_some(r)
        },
    )
    .await;
    assert!(
        record["lastDisconnectReason"]
            .as_str()
            .unwrap()
            .contains("did not read"),
        "{record}"
    );
    assert_eq!(global.zone("small").await["online"], true);
    drop(tx2);
    // Shutdown with a stream open completes.
    global.stop().await;
    let end = tokio::time::timeout(WAIT, inbound.message()).await.unwrap();
    assert!(!matches!(end, Ok(Some(_))), "the stream ended: {end:?}");
}
