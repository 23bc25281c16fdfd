//! A zone's API as a Kuma user expects it, against the real binaries (global, a zone, two
//! proxies): `GET /` says a zone answers; `/meshes` and `/dataplanes` come a page at a time with
//! an absolute `next`, bad paging is a 400 naming the parameter, and `zone get` follows `next` to
//! the end; every error is `application/problem+json`; every metric of the zone (and of global's
//! sync server) is `kmesh_*`, with the build and each route's request durations; `/openapi.json`
//! describes every route of the zone's router.

use std::time::Duration;

use serde_json::Value;
use testkit::cluster::{GlobalProc, ProxyProc, ProxySpec, builtin_mesh_yaml, start_zone};
use testkit::wait::wait_until;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zone_api_pages_errors_metrics_and_description() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    // One mesh with a builtin CA and 100 without mTLS: more than one default page.
    let mut docs = vec![builtin_mesh_yaml("default", "24h")];
    docs.extend((0..100).map(|i| format!("type: Mesh\nname: plain-{i:03}\n")));
    g.apply(&docs.join("---\n")).await.unwrap();
    let zone = start_zone(&g, tmp.path(), "zone-1", &[]).await.unwrap();
    let mut proxies = Vec::new();
    for name in ["web-1", "web-2"] {
        let token = g
            .bound_dataplane_token_file("default", name, "web", &tmp.path().join("tokens"))
            .await
            .unwrap();
        let p = ProxyProc::start(
            &zone,
            &ProxySpec::new("default", name, "web"),
            &token,
            &tmp.path().join(name),
        )
        .unwrap();
        p.wait_leaf(tmp.path(), None, WAIT).await.unwrap();
        proxies.push(p);
    }
    wait_until(
        "every mesh in the zone",
        WAIT,
        Duration::from_millis(200),
        || async {
            let (_, v) = zone.api.get("/meshes?size=1").await.ok()?;
            (v["total"] == 101).then_some(())
        },
    )
    .await
    .unwrap();

    // GET /: a zone answers, and has no GUI.
    let (status, index) = zone.api.get("/").await.unwrap();
    assert_eq!(status, 200, "{index}");
    assert_eq!(index["product"], "kmesh");
    assert_eq!(index["mode"], "zone");
    assert_eq!(index["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(index["commit"], common::about::commit());
    assert_eq!(index["gui"], Value::Null);

    // The default page is 100; `next` is absolute, built from the request.
    let (_, first) = zone.api.get("/meshes").await.unwrap();
    assert_eq!(first["total"], 101);
    assert_eq!(first["items"].as_array().unwrap().len(), 100);
    assert_eq!(
        first["next"].as_str(),
        Some(format!("{}/meshes?offset=100", zone.api_url()).as_str())
    );
    let (_, last) = testkit::api::get_json(first["next"].as_str().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(last["items"].as_array().unwrap().len(), 1);
    assert_eq!(last["next"], Value::Null);
    let (_, dps) = zone.api.get("/dataplanes?size=1").await.unwrap();
    assert_eq!(dps["total"], 2, "{dps}");
    assert_eq!(dps["items"][0]["name"], "web-1", "{dps}");
    let (_, dps2) = testkit::api::get_json(dps["next"].as_str().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(dps2["items"][0]["name"], "web-2", "{dps2}");
    assert_eq!(dps2["next"], Value::Null);

    // `zone get` reads every page.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zone"))
        .args(["get", "meshes", "-o", "json", "--api", &zone.api_url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 101);
    assert_eq!(all["next"], Value::Null);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zone"))
        .args(["get", "meshes", "--api", &zone.api_url()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("plain-099") && table.contains("default"),
        "{table}"
    );

    // Errors: problem+json, bad paging naming its parameter.
    let http = reqwest::Client::new();
    for (path, method, want, field) in [
        ("/meshes?size=0", reqwest::Method::GET, 400, Some("size")),
        (
            "/dataplanes?offset=x",
            reqwest::Method::GET,
            400,
            Some("offset"),
        ),
        ("/meshes/none", reqwest::Method::GET, 404, None),
        ("/nowhere", reqwest::Method::GET, 404, None),
        ("/meshes", reqwest::Method::DELETE, 405, None),
    ] {
        let resp = http
            .request(method.clone(), zone.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want, "{method} {path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/problem+json"), "{path}: {ct}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["status"], want, "{v}");
        if let Some(field) = field {
            assert_eq!(v["invalid_parameters"][0]["field"], field, "{v}");
        }
    }

    // Metrics: all kmesh_*, with the build, the sync and each route's durations.
    zone.api.get_ok("/meshes/default").await.unwrap();
    let text = zone.api.get_text("/metrics").await.unwrap();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for f in &families {
        assert!(
            f.starts_with("kmesh_"),
            "zone metric family {f} is not kmesh_*"
        );
    }
    for f in [
        "kmesh_build_info",
        "kmesh_http_request_duration_seconds",
        "kmesh_sync_connected",
        "kmesh_sync_applied_resources",
        "kmesh_certificates_issued",
        "kmesh_proxies_connected",
    ] {
        assert!(families.contains(&f), "{f} missing: {families:?}");
    }
    assert!(text.contains("kmesh_sync_connected 1"), "{text}");
    assert!(
        text.contains(r#"kmesh_http_request_duration_seconds_count{route="/meshes/{name}",method="GET",status="200"} 1"#),
        "{text}"
    );
    assert!(!text.contains("route=\"/meshes/default\""), "{text}");
    assert_eq!(
        testkit::api::metric_sum(&text, "kmesh_certificates_issued_total"),
        2.0
    );
    let global_text = g.api.get_text("/metrics").await.unwrap();
    for line in global_text.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(line.starts_with("# TYPE kmesh_"), "{line}");
    }
    assert!(
        testkit::api::metric_sum(&global_text, "kmesh_sync_sent_bytes_total") > 0.0,
        "{global_text}"
    );
    assert!(
        global_text.contains(r#"kmesh_sync_sent_resources_total{zone="zone-1",type="Mesh"} 101"#),
        "{global_text}"
    );

    // The description covers every route of the zone's router.
    let spec = zone.api.get_ok("/openapi.json").await.unwrap();
    testkit::routes::check_description(&spec, concat!(env!("CARGO_MANIFEST_DIR"), "/src/api.rs"));
}
