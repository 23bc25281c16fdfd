//! User rights on the real binary, table-driven: every route of the API (the table is checked
//! against the router's routes, so a new route cannot go untested) for every kind of caller — the
//! admin token file, user tokens of groups admin, operator (of mesh `default`) and viewer, no token
//! (from loopback), a malformed token, a forged one, an expired one and a revoked one. An allowed
//! request must not get 401 or 403 (nor a 5xx); a refused one gets exactly 401 (authenticate) or
//! 403 (a right is missing, named in the answer).

use std::time::Duration;

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use testkit::cluster::{GlobalProc, builtin_mesh_yaml};

/// What a route needs, as SPEC.md defines the groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Open,
    Read,
    /// Reads the Secrets of mesh `default` / another mesh.
    SecretsOwn,
    SecretsOther,
    /// Changes mesh `default` / another mesh.
    WriteOwn,
    WriteOther,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    AdminFile,
    AdminUser,
    Operator,
    Viewer,
    Anonymous,
    Malformed,
    Forged,
    Expired,
    Revoked,
}

const EVERYONE: [Who; 9] = [
    Who::AdminFile,
    Who::AdminUser,
    Who::Operator,
    Who::Viewer,
    Who::Anonymous,
    Who::Malformed,
    Who::Forged,
    Who::Expired,
    Who::Revoked,
];

/// The status class `who` must get for `need`: `None` allowed, else 401 or 403.
fn expected(who: Who, need: Need) -> Option<u16> {
    use Need::*;
    match who {
        Who::AdminFile | Who::AdminUser => None,
        _ if need == Open => None,
        Who::Malformed | Who::Forged | Who::Expired | Who::Revoked => Some(401),
        Who::Anonymous => (need != Read).then_some(401),
        Who::Viewer => (need != Read).then_some(403),
        Who::Operator => match need {
            Read | SecretsOwn | WriteOwn => None,
            _ => Some(403),
        },
    }
}

struct Route {
    /// As the router names it (checked against global/src/api/mod.rs).
    pattern: &'static str,
    method: Method,
    path: String,
    body: String,
    need: Need,
}

fn route(pattern: &'static str, method: Method, path: &str, body: &str, need: Need) -> Route {
    Route {
        pattern,
        method,
        path: path.to_string(),
        body: body.to_string(),
        need,
    }
}

/// The router's paths, read from its source: the table must cover each.
fn router_patterns() -> Vec<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs"))
        .expect("the router's source");
    src.split(".route(")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_for_every_caller() {
    let tmp = tempfile::tempdir().unwrap();
    let global = GlobalProc::start(&tmp.path().join("global")).await.unwrap();
    for mesh in ["default", "other"] {
        global.apply(&builtin_mesh_yaml(mesh, "24h")).await.unwrap();
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode("rights-test-value");
    let secret = |mesh: &str| format!("type: Secret\nname: s1\nmesh: {mesh}\ndata: {b64}\n");
    for mesh in ["default", "other"] {
        global
            .put(&format!("/meshes/{mesh}/secrets/s1"), &secret(mesh))
            .await
            .unwrap();
    }

    // The callers' tokens.
    let user = |name: &str, group: &str, meshes: &[&str]| {
        let body = json!({"name": name, "group": group, "meshes": meshes}).to_string();
        let global = &global;
        async move {
            let v = global
                .api
                .write_ok(Method::POST, "/tokens/user", &body)
                .await
                .unwrap();
            (
                v["token"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            )
        }
    };
    let (admin_user, _) = user("ada", "admin", &[]).await;
    let (operator, _) = user("otto", "operator", &["default"]).await;
    let (viewer, _) = user("vera", "viewer", &[]).await;
    let (revoked, revoked_id) = user("rex", "viewer", &[]).await;
    global
        .api
        .write_ok(
            Method::POST,
            "/tokens/revoke",
            &json!({ "id": revoked_id }).to_string(),
        )
        .await
        .unwrap();
    let forged = common::tokens::TokenSigner::generate().issue_user_token(
        common::tokens::UserClaim {
            name: "mallory".into(),
            group: common::tokens::Group::Admin,
            meshes: vec![],
        },
        Duration::from_secs(3600),
    );
    let now = common::tokens::now_unix();
    let expired = common::tokens::TokenSigner::load_or_create(&global.dir)
        .unwrap()
        .sign(&common::tokens::Claims {
            scope: common::tokens::USER_SCOPE.into(),
            iat: now - 7200,
            exp: now - 3600,
            jti: "expired-1".into(),
            body: common::tokens::UserClaim {
                name: "old".into(),
                group: common::tokens::Group::Admin,
                meshes: vec![],
            },
        });
    let token_of = |who: Who| -> Option<String> {
        match who {
            Who::AdminFile => Some(global.token.clone()),
            Who::AdminUser => Some(admin_user.clone()),
            Who::Operator => Some(operator.clone()),
            Who::Viewer => Some(viewer.clone()),
            Who::Anonymous => None,
            Who::Malformed => Some("not-a-token".into()),
            Who::Forged => Some(forged.clone()),
            Who::Expired => Some(expired.clone()),
            Who::Revoked => Some(revoked.clone()),
        }
    };

    let mesh_body = |mesh: &str| builtin_mesh_yaml(mesh, "24h");
    let batch = |mesh: &str| secret(mesh).replace("s1", "s2");
    use Need::*;
    let routes = vec![
        route("/", Method::GET, "/", "", Open),
        route("/openapi.json", Method::GET, "/openapi.json", "", Read),
        route("/healthz", Method::GET, "/healthz", "", Open),
        route("/readyz", Method::GET, "/readyz", "", Open),
        route("/metrics", Method::GET, "/metrics", "", Open),
        route("/meshes", Method::GET, "/meshes", "", Read),
        route("/meshes/{name}", Method::GET, "/meshes/default", "", Read),
        route(
            "/meshes/{name}",
            Method::PUT,
            "/meshes/default?dryRun=true",
            &mesh_body("default"),
            WriteOwn,
        ),
        route(
            "/meshes/{name}",
            Method::PUT,
            "/meshes/other?dryRun=true",
            &mesh_body("other"),
            WriteOther,
        ),
        route(
            "/meshes/{name}",
            Method::DELETE,
            "/meshes/gone",
            "",
            WriteOther,
        ),
        route(
            "/meshes/{name}/validation",
            Method::GET,
            "/meshes/default/validation",
            "",
            Read,
        ),
        route(
            "/meshes/{mesh}/secrets",
            Method::GET,
            "/meshes/default/secrets",
            "",
            SecretsOwn,
        ),
        route(
            "/meshes/{mesh}/secrets",
            Method::GET,
            "/meshes/other/secrets",
            "",
            SecretsOther,
        ),
        route(
            "/meshes/{mesh}/secrets/{name}",
            Method::GET,
            "/meshes/default/secrets/s1",
            "",
            SecretsOwn,
        ),
        route(
            "/meshes/{mesh}/secrets/{name}",
            Method::GET,
            "/meshes/other/secrets/s1",
            "",
            SecretsOther,
        ),
        route(
            "/meshes/{mesh}/secrets/{name}",
            Method::PUT,
            "/meshes/default/secrets/s1?dryRun=true",
            &secret("default"),
            WriteOwn,
        ),
        route(
            "/meshes/{mesh}/secrets/{name}",
            Method::PUT,
            "/meshes/other/secrets/s1?dryRun=true",
            &secret("other"),
            WriteOther,
        ),
        route(
            "/meshes/{mesh}/secrets/{name}",
            Method::DELETE,
            "/meshes/default/secrets/none",
            "",
            WriteOwn,
        ),
        route(
            "/meshes/{mesh}/secrets/{name}",
            Method::DELETE,
            "/meshes/other/secrets/none",
            "",
            WriteOther,
        ),
        route(
            "/meshes/{mesh}/dataplanes",
            Method::GET,
            "/meshes/default/dataplanes",
            "",
            Read,
        ),
        route(
            "/apply",
            Method::POST,
            "/apply?dryRun=true",
            &batch("default"),
            WriteOwn,
        ),
        route(
            "/apply",
            Method::POST,
            "/apply?dryRun=true",
            &batch("other"),
            WriteOther,
        ),
        route("/export", Method::GET, "/export", "", Read),
        route(
            "/export",
            Method::GET,
            "/export?includeSecrets=true",
            "",
            Admin,
        ),
        route("/zones", Method::GET, "/zones", "", Read),
        route("/zones/{name}", Method::GET, "/zones/nowhere", "", Read),
        route("/zones/{name}", Method::DELETE, "/zones/nowhere", "", Admin),
        route("/replicas", Method::GET, "/replicas", "", Read),
        route(
            "/tokens/zone",
            Method::POST,
            "/tokens/zone",
            r#"{"zone":"z1"}"#,
            Admin,
        ),
        route(
            "/tokens/dataplane",
            Method::POST,
            "/tokens/dataplane",
            r#"{"mesh":"default","name":"d1","service":"web"}"#,
            Admin,
        ),
        route(
            "/tokens/user",
            Method::POST,
            "/tokens/user",
            r#"{"name":"u","group":"viewer"}"#,
            Admin,
        ),
        route(
            "/tokens/revoke",
            Method::POST,
            "/tokens/revoke",
            r#"{"id":"never-issued"}"#,
            Admin,
        ),
        route("/tokens/revoked", Method::GET, "/tokens/revoked", "", Admin),
        route(
            "/tokens/signing-keys",
            Method::GET,
            "/tokens/signing-keys",
            "",
            Admin,
        ),
        route(
            "/tokens/signing-keys",
            Method::POST,
            "/tokens/signing-keys",
            "",
            Admin,
        ),
        route(
            "/tokens/signing-keys/{kid}",
            Method::DELETE,
            "/tokens/signing-keys/no-such-kid",
            "",
            Admin,
        ),
    ];
    for pattern in router_patterns() {
        assert!(
            routes.iter().any(|r| r.pattern == pattern),
            "route {pattern} of the router is not in this test's table"
        );
    }

    let client = reqwest::Client::new();
    let mut checked = 0;
    let mut failures = Vec::new();
    for r in &routes {
        for who in EVERYONE {
            let mut req = client
                .request(r.method.clone(), global.url(&r.path))
                .header("content-type", "application/yaml");
            if !r.body.is_empty() {
                req = req.body(r.body.clone());
            }
            if let Some(t) = token_of(who) {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let want = expected(who, r.need);
            let ok = match want {
                None => !matches!(status, 401 | 403) && status < 500,
                Some(s) => status == s,
            };
            if !ok {
                failures.push(format!(
                    "{who:?} {} {}: got {status}, expected {} ({body})",
                    r.method,
                    r.path,
                    want.map_or("allowed".to_string(), |s| s.to_string())
                ));
            }
            if want == Some(403) && status == 403 {
                let detail = body["detail"].as_str().unwrap_or_default();
                assert!(
                    detail.contains("needs group admin"),
                    "a 403 names the missing right: {detail}"
                );
            }
            if want == Some(401) && status == 401 && who != Who::Anonymous {
                // Never which part of the token was wrong.
                let detail = body["detail"].as_str().unwrap_or_default();
                assert!(
                    detail.contains("unknown, malformed, expired or revoked"),
                    "{detail}"
                );
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, routes.len() * EVERYONE.len());

    // An operator's writes of its own mesh are stored, and named in the audit log by user.
    let resp = client
        .put(global.url("/meshes/default/secrets/s3"))
        .bearer_auth(&operator)
        .header("content-type", "application/yaml")
        .body(secret("default").replace("s1", "s3"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    // Only an admin writes a Mesh with `file:` data sources.
    let file_mesh = "type: Mesh\nname: default\nmtls:\n  enabledBackend: p\n  backends:\n  - name: p\n    type: provided\n    conf:\n      cert: { file: /etc/hostname }\n      key: { secret: s1 }\n";
    let resp = client
        .put(global.url("/meshes/default?dryRun=true"))
        .bearer_auth(&operator)
        .header("content-type", "application/yaml")
        .body(file_mesh)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("file: data source"),
        "{body}"
    );
    let audit = std::fs::read_to_string(global.dir.join("audit.log")).unwrap();
    assert!(
        audit.lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["actor"] == "otto (operator)" && v["path"] == "/meshes/default/secrets/s3"
        }),
        "the operator's write is audited with its name"
    );
    assert!(
        audit.lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["action"] == "revoke-token"
                && v["detail"].as_str().unwrap_or_default() == format!("id={revoked_id}")
        }),
        "the revocation is audited with the token's id"
    );
    for token in [&admin_user, &operator, &viewer, &revoked] {
        assert!(!audit.contains(token.as_str()), "no token in the audit log");
    }
}

/// Polls `f` every 100 ms until it holds; returns how long that took (printed: the SPEC bound is
/// 2 s, the test allows more so a loaded machine does not fail it).
async fn time_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> Duration {
    let start = std::time::Instant::now();
    loop {
        if f().await {
            let took = start.elapsed();
            eprintln!("{what}: {took:?}");
            return took;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: not within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_with(g: &GlobalProc, token: &str, path: &str) -> u16 {
    reqwest::Client::new()
        .get(g.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// On PostgreSQL replicas: a user token revoked through one replica is refused by the other, and
/// a key rotated on one signs tokens the other accepts; retiring the first key on one replica
/// makes the other refuse the tokens it signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_rotation_reach_every_replica() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = testkit::postgres::PgServer::start().unwrap();
    let replicas = testkit::cluster::start_replicas(tmp.path(), 2, &pg.url())
        .await
        .unwrap();
    let (a, b) = (&replicas[0], &replicas[1]);
    let user = |group: &str, name: &str| json!({"name": name, "group": group}).to_string();
    let mint = |g: &GlobalProc, body: String| {
        let api = g.api.clone();
        async move {
            let v = api
                .write_ok(Method::POST, "/tokens/user", &body)
                .await
                .unwrap();
            (
                v["token"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            )
        }
    };
    let (viewer, viewer_id) = mint(a, user("viewer", "vera")).await;
    assert_eq!(status_with(b, &viewer, "/meshes").await, 200);
    a.api
        .write_ok(
            Method::POST,
            "/tokens/revoke",
            &json!({"id": viewer_id}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(
        status_with(a, &viewer, "/meshes").await,
        401,
        "at once on the replica that revoked"
    );
    time_until("revocation seen by the other replica", || async {
        status_with(b, &viewer, "/meshes").await == 401
    })
    .await;

    // Rotation on a; a token of the new key works on b; the old key's still work.
    let (old, _) = mint(a, user("viewer", "old")).await;
    let old_kid = common::tokens::token_id(&old).unwrap().kid;
    let keys = a
        .api
        .write_ok(Method::POST, "/tokens/signing-keys", "")
        .await
        .unwrap();
    let active: Vec<&str> = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["active"] == true)
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(active.len(), 1);
    assert_ne!(active[0], old_kid);
    let (new, _) = mint(a, user("viewer", "new")).await;
    assert_eq!(common::tokens::token_id(&new).unwrap().kid, active[0]);
    time_until(
        "a new key's token accepted by the other replica",
        || async { status_with(b, &new, "/meshes").await == 200 },
    )
    .await;
    // b signs with the new key too once it has read the ring.
    time_until("the other replica signs with the new key", || async {
        let (t, _) = mint(b, user("viewer", "from-b")).await;
        common::tokens::token_id(&t).unwrap().kid == active[0]
    })
    .await;
    assert_eq!(
        status_with(b, &old, "/meshes").await,
        200,
        "older keys verify until retired"
    );
    let (status, body) = b
        .api
        .delete(&format!("/tokens/signing-keys/{old_kid}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    time_until(
        "the retired key's token refused by the other replica",
        || async { status_with(a, &old, "/meshes").await == 401 },
    )
    .await;
    assert_eq!(status_with(a, &new, "/meshes").await, 200);
    // The admin token file (not a signed token) is not affected by key changes.
    assert_eq!(a.api.get("/tokens/signing-keys").await.unwrap().0, 200);
}
