//! The APIs' own descriptions (`GET /openapi.json`) held against the real binaries: each describes
//! every route of its router (read from its source, as tests/rights.rs does) and nothing more, and
//! schemathesis, a real OpenAPI client from PyPI, sends generated requests (the description's
//! examples, each schema's boundary cases, random valid and invalid data) to every operation of a
//! running global (with the admin token) and of its zone, both holding a mesh with a builtin CA, a
//! Secret, a zone and a proxy, and finds every answer conforming: no 5xx, and a status, content
//! type, headers and body the description lists.

use std::time::{Duration, Instant};

use testkit::cluster::{BackendKind, Cluster, ClusterOptions, GlobalProc, MESH, ProxySpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_describes_every_route_of_its_router() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    let spec = g.api.get_ok("/openapi.json").await.unwrap();
    testkit::routes::check_description(
        &spec,
        concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs"),
    );
    // Lists say how they are paged, token answers both of their forms.
    let list = &spec["paths"]["/meshes"]["get"];
    let params: Vec<&str> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(params, ["size", "offset"], "{list}");
    let token = &spec["paths"]["/tokens/zone"]["post"]["responses"]["200"]["content"];
    assert!(
        token.get("text/plain").is_some() && token.get("application/json").is_some(),
        "{token}"
    );
}

fn schemathesis(base: &str, token: Option<&str>, dir: &std::path::Path) {
    let started = Instant::now();
    let out = testkit::schemathesis::run(&testkit::schemathesis::Run {
        base,
        token,
        max_examples: 20,
        dir,
        limit: Duration::from_secs(600),
    })
    .expect("schemathesis runs");
    let text = out.text();
    eprintln!(
        "schemathesis against {base}: exit {:?} in {:.1}s\n{}",
        out.code,
        started.elapsed().as_secs_f64(),
        text.lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        out.code,
        Some(0),
        "schemathesis found answers of {base} that do not conform to its /openapi.json:\n{text}"
    );
    // The summary line "N generated, N passed", N read as a number ("1220 generated" holds
    // "0 generated", and warnings say "rejected generated data").
    let generated: u64 = text
        .lines()
        .filter_map(|l| l.trim().split_once(" generated,")?.0.parse().ok())
        .max()
        .unwrap_or(0);
    assert!(
        text.contains("passed") && generated > 0,
        "schemathesis tested nothing:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_every_answer_of_global_and_zone_conforming() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(
        tmp.path(),
        ClusterOptions {
            zones: 1,
            backend: BackendKind::Builtin,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.global
        .put(
            &format!("/meshes/{MESH}/secrets/sec-1"),
            &format!("type: Secret\nmesh: {MESH}\nname: sec-1\ndata: c2VjcmV0LXZhbHVl\n"),
        )
        .await
        .unwrap();
    c.wait_mesh_in_zones(MESH, Duration::from_secs(30))
        .await
        .unwrap();
    c.start_proxy("zone-1", &ProxySpec::new(MESH, "web-1", "web"))
        .await
        .unwrap();
    c.proxy("web-1")
        .unwrap()
        .wait_leaf(tmp.path(), None, Duration::from_secs(30))
        .await
        .unwrap();
    // What global and the zone serve now has real data in every list.
    testkit::wait::wait_until(
        "the proxy at global",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let v = c
                .global
                .api
                .get_ok(&format!("/meshes/{MESH}/dataplanes"))
                .await
                .ok()?;
            (v["total"] == 1).then_some(())
        },
    )
    .await
    .unwrap();
    let zone = c.zone("zone-1").unwrap();
    schemathesis(&zone.api_url(), None, &tmp.path().join("st-zone"));
    schemathesis(
        &c.global.api_url(),
        Some(&c.global.token),
        &tmp.path().join("st-global"),
    );
    // Nothing it sent broke either process.
    assert_eq!(c.global.api.get("/healthz").await.unwrap().0, 200);
    assert_eq!(zone.api.get("/healthz").await.unwrap().0, 200);
}
