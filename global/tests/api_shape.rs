//! Global's API as a Kuma user expects it, against the real binary: `GET /` says what answers;
//! every list comes a page at a time (`size`, `offset`, an absolute `next`), bad paging is a 400
//! naming the parameter, and `global get` / `global export` follow `next` to the end; a new token
//! is the token alone as `text/plain` unless JSON is asked for, audited either way; every error
//! is `application/problem+json`; and every metric is `kmesh_*`, with the build and each route's
//! request durations (labelled by the router's pattern, never the raw path).

use reqwest::Method;
use serde_json::Value;
use testkit::cluster::{GlobalProc, builtin_mesh_yaml};

const PROBLEM: &str = "application/problem+json";

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A request's status, content type and body as text.
async fn call(req: reqwest::RequestBuilder) -> (u16, String, String) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = content_type(&resp);
    (status, ct, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_says_what_answers_and_is_open() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    // No token: the index is open, like health and metrics.
    let (status, ct, body) = call(reqwest::Client::new().get(g.url("/"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(ct.starts_with("application/json"), "{ct}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["product"], "kmesh");
    assert_eq!(v["mode"], "global");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["commit"], common::about::commit());
    assert_eq!(v["gui"], "/gui/");
    assert_eq!(v["hostname"], common::about::hostname());
    // The GUI is where the index says.
    let gui = reqwest::get(g.url(v["gui"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(gui.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_come_a_page_at_a_time_and_the_cli_reads_them_all() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    // 5 meshes and 105 Secrets (more than one default page), in one batch.
    let mut docs: Vec<String> = (1..=5)
        .map(|i| format!("type: Mesh\nname: m-{i}\n"))
        .collect();
    docs.extend(
        (0..105)
            .map(|i| format!("type: Secret\nmesh: m-1\nname: s-{i:03}\ndata: c2VjcmV0LXZhbHVl\n")),
    );
    g.apply(&docs.join("---\n")).await.unwrap();

    // Pages of 2 meshes, linked by absolute URLs built from the request, as Kuma's API does.
    let mut names = Vec::new();
    let mut url = g.url("/meshes?size=2");
    let mut pages = 0;
    loop {
        let (status, v) = testkit::api::get_json(&url, Some(&g.token)).await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["total"], 5, "{v}");
        pages += 1;
        for m in v["items"].as_array().unwrap() {
            names.push(m["name"].as_str().unwrap().to_string());
        }
        match v["next"].as_str() {
            Some(next) => {
                assert_eq!(v["items"].as_array().unwrap().len(), 2, "{v}");
                assert_eq!(
                    next,
                    format!("{}/meshes?size=2&offset={}", g.api_url(), pages * 2),
                    "{v}"
                );
                url = next.to_string();
            }
            None => {
                assert!(v.get("next").is_some(), "next is null, not absent: {v}");
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["m-1", "m-2", "m-3", "m-4", "m-5"]);

    // The default page is 100 items; past the end, nothing and no next page.
    let (_, first) = g.api.get("/meshes/m-1/secrets").await.unwrap();
    assert_eq!(first["total"], 105);
    assert_eq!(first["items"].as_array().unwrap().len(), 100);
    assert_eq!(
        first["next"].as_str(),
        Some(format!("{}/meshes/m-1/secrets?offset=100", g.api_url()).as_str())
    );
    let (_, beyond) = g.api.get("/meshes?offset=50").await.unwrap();
    assert_eq!(beyond["items"], serde_json::json!([]));
    assert_eq!(beyond["next"], Value::Null);
    // The largest page is 1000.
    let (status, all) = g.api.get("/meshes/m-1/secrets?size=1000").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(all["items"].as_array().unwrap().len(), 105);
    assert_eq!(all["next"], Value::Null);

    // Every list is paged.
    for path in [
        "/meshes",
        "/meshes/m-1/secrets",
        "/meshes/m-1/dataplanes",
        "/zones",
        "/replicas",
        "/export",
        "/tokens/revoked",
        "/tokens/signing-keys",
    ] {
        let (status, v) = g.api.get(&format!("{path}?size=1&offset=0")).await.unwrap();
        assert_eq!(status, 200, "{path}: {v}");
        assert!(
            v["items"].as_array().unwrap().len() <= 1 && v.get("next").is_some(),
            "{path}: {v}"
        );
    }

    // Bad paging: 400 naming the parameter.
    for (query, parameter) in [
        ("size=0", "size"),
        ("size=1001", "size"),
        ("size=ten", "size"),
        ("offset=-1", "offset"),
        ("size=2&size=3", "size"),
    ] {
        let (status, ct, body) = call(
            reqwest::Client::new()
                .get(g.url(&format!("/meshes?{query}")))
                .bearer_auth(&g.token),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(ct.starts_with(PROBLEM), "{query}: {ct}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["invalid_parameters"][0]["field"], parameter, "{body}");
        assert!(
            v["detail"].as_str().unwrap().starts_with(parameter),
            "{body}"
        );
    }

    // The command line follows `next` to the end.
    let out = g
        .cli(&["get", "secrets", "--mesh", "m-1", "-o", "json"])
        .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.text());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 105, "{}", out.stdout);
    assert_eq!(v["next"], Value::Null);
    let out = g.cli(&["get", "secrets", "--mesh", "m-1"]).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(
        out.stdout.contains("s-000") && out.stdout.contains("s-104"),
        "{}",
        out.stdout
    );
    let out = g
        .cli(&["export", "--include-secrets", "-o", "json"])
        .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.text());
    let exported: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(exported.as_array().unwrap().len(), 110, "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_token_is_plain_text_unless_json_is_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    g.apply(&builtin_mesh_yaml("default", "24h")).await.unwrap();
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (path, body) in [
        ("/tokens/zone", r#"{"zone":"zone-1"}"#),
        (
            "/tokens/dataplane",
            r#"{"mesh":"default","name":"web-1","service":"web"}"#,
        ),
        ("/tokens/user", r#"{"name":"vera","group":"viewer"}"#),
    ] {
        // As `curl ... > token` would keep it: the token alone.
        let (status, ct, text) = call(
            http.post(g.url(path))
                .bearer_auth(&g.token)
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert_eq!(status, 200, "{path}: {text}");
        assert!(ct.starts_with("text/plain"), "{path}: {ct}");
        assert_eq!(text.split('.').count(), 3, "{path}: a JWT alone: {text}");
        assert!(!text.contains('{') && !text.contains('\n'), "{text}");
        let id = common::tokens::token_id(&text).unwrap().jti;
        ids.push(id);
        // With Accept: application/json, the token with its id and expiry.
        let (status, ct, json) = call(
            http.post(g.url(path))
                .bearer_auth(&g.token)
                .header("accept", "application/json")
                .body(body),
        )
        .await;
        assert_eq!(status, 200, "{path}: {json}");
        assert!(ct.starts_with("application/json"), "{path}: {ct}");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            common::tokens::token_id(v["token"].as_str().unwrap())
                .unwrap()
                .jti,
            v["id"].as_str().unwrap()
        );
        assert!(v["expires"].as_str().unwrap().ends_with('Z'), "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // The plain-text user token works as one.
    let (_, _, user) = call(
        http.post(g.url("/tokens/user"))
            .bearer_auth(&g.token)
            .body(r#"{"name":"otto","group":"viewer"}"#),
    )
    .await;
    assert_eq!(
        http.get(g.url("/zones"))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // The CLI asks for JSON: the token on stdout, its id on stderr.
    let out = g.cli(&["zone-token", "--zone", "zone-2"]).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert_eq!(out.stdout.trim().split('.').count(), 3, "{}", out.stdout);
    let cli_id = common::tokens::token_id(out.stdout.trim()).unwrap().jti;
    assert!(out.stderr.contains(&cli_id), "{}", out.stderr);
    // Every issuance is audited with its token's id, whichever form it was answered in; never the
    // token itself.
    let audit = testkit::wait::wait_until(
        "the audit lines",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(50),
        || async {
            let text = std::fs::read_to_string(g.dir.join("audit.log")).ok()?;
            ids.iter()
                .all(|id| text.contains(&format!("id={id}")))
                .then_some(text)
        },
    )
    .await
    .unwrap();
    assert!(!audit.contains(&user), "no token in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_problem_json() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    let http = reqwest::Client::new();
    let admin = |r: reqwest::RequestBuilder| r.bearer_auth(&g.token);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("unknown path", admin(http.get(g.url("/nowhere"))), 404),
        ("unknown mesh", admin(http.get(g.url("/meshes/none"))), 404),
        (
            "invalid resource",
            admin(
                http.put(g.url("/meshes/bad"))
                    .header("content-type", "application/yaml")
                    .body("type: Mesh\nname: bad\nmtls:\n  enabledBackend: nope\n"),
            ),
            400,
        ),
        (
            "no token",
            http.put(g.url("/meshes/m")).body("type: Mesh\nname: m\n"),
            401,
        ),
        (
            "method not allowed",
            admin(http.request(Method::PATCH, g.url("/meshes"))),
            405,
        ),
        (
            "query of the wrong type",
            admin(http.get(g.url("/export?includeSecrets=maybe"))),
            400,
        ),
        (
            "host not served",
            admin(http.get(g.url("/meshes")).header("host", "evil.example")),
            421,
        ),
        (
            "body too large",
            admin(
                http.post(g.url("/apply"))
                    .body(vec![b'a'; common::limits::API_BODY_BYTES + 1]),
            ),
            413,
        ),
        (
            "token request that is not JSON",
            admin(http.post(g.url("/tokens/zone")).body("zone: z")),
            400,
        ),
    ];
    for (what, req, want) in cases {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = content_type(&resp);
        let allow = resp.headers().get("allow").cloned();
        let body = resp.text().await.unwrap();
        assert_eq!(status, want, "{what}: {body}");
        assert!(ct.starts_with(PROBLEM), "{what}: {ct} {body}");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
        assert_eq!(v["status"], want, "{what}: {body}");
        assert!(
            !v["title"].as_str().unwrap_or("").is_empty()
                && !v["detail"].as_str().unwrap_or("").is_empty(),
            "{what}: {body}"
        );
        if want == 405 {
            assert!(allow.is_some(), "405 keeps its Allow header");
        }
        if what == "invalid resource" {
            assert_eq!(
                v["invalid_parameters"][0]["field"], "mtls.enabledBackend",
                "{body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_kmesh_with_build_and_route_durations() {
    let tmp = tempfile::tempdir().unwrap();
    let g = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    g.apply(&builtin_mesh_yaml("default", "24h")).await.unwrap();
    g.api.get_ok("/meshes/default").await.unwrap();
    let (status, _) = g.api.get("/meshes/a-name-of-its-own").await.unwrap();
    assert_eq!(status, 404);
    let (status, _) = g.api.get("/no/such/path/anywhere").await.unwrap();
    assert_eq!(status, 404);
    let text = g.api.get_text("/metrics").await.unwrap();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(families.len() >= 8, "{text}");
    for f in &families {
        assert!(f.starts_with("kmesh_"), "metric family {f} is not kmesh_*");
    }
    for f in [
        "kmesh_build_info",
        "kmesh_http_request_duration_seconds",
        "kmesh_admission_duration_seconds",
        "kmesh_admissions",
        "kmesh_sync_zones_online",
    ] {
        assert!(families.contains(&f), "{f} missing: {families:?}");
    }
    assert!(
        text.contains(&format!(
            "kmesh_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            common::about::commit()
        )),
        "{text}"
    );
    for series in [
        r#"kmesh_http_request_duration_seconds_count{route="/meshes/{name}",method="GET",status="200"} 1"#,
        r#"kmesh_http_request_duration_seconds_count{route="/meshes/{name}",method="GET",status="404"} 1"#,
        r#"kmesh_http_request_duration_seconds_count{route="/apply",method="POST",status="200"} 1"#,
        r#"kmesh_http_request_duration_seconds_count{route="unmatched",method="GET",status="404"} 1"#,
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    // The raw paths never become labels.
    assert!(
        !text.contains("a-name-of-its-own") && !text.contains("/no/such"),
        "{text}"
    );
    assert!(
        testkit::api::metric_sum(&text, "kmesh_admission_duration_seconds_count") >= 1.0,
        "{text}"
    );
}
