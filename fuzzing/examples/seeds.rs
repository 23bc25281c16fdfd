//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/seed-*`: the reference
//! page's resources in both forms, real answers of a real OpenBao (issued certificates with RSA
//! and EC roles, with and without an intermediate, and its error answers), real sync messages and
//! tokens, and HTTP/2 as Workload API clients send it. Run once by hand (`cargo run -p fuzzing
//! --example seeds`, or `-- workload_api` for that target's seeds alone, which need no OpenBao);
//! the fuzzer grows the corpus from them.

use std::path::{Path, PathBuf};

use prost::Message;
use proto::kds;
use testkit::openbao::{BaoServer, seed};

fn corpus(target: &str) -> PathBuf {
    let dir = testkit::bins::workspace_root()
        .join("fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn put(target: &str, name: &str, data: impl AsRef<[u8]>) {
    std::fs::write(corpus(target).join(format!("seed-{name}")), data).unwrap();
}

const PAGE_MESH: &str = r#"type: Mesh
name: default
mtls:
  enabledBackend: vault-1
  backends:
    - name: vault-1
      type: vault
      dpCert:
        rotation:
          expiration: 1d
      conf:
        fromCp:
          address: http://127.0.0.1:8200
          agentAddress: ""
          namespace: admin/zone1
          pki: kmesh-pki-default
          role: dataplane-proxies
          commonName: '{{ tag "kuma.io/service" }}.mesh'
          tls:
            caCert:
              secret: sec-1
            skipVerify: false
            serverName: vault.local
          auth:
            token:
              secret: token-1
"#;

const PAGE_MESH_K8S: &str = r#"apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata:
  name: default
spec:
  mtls:
    enabledBackend: vault-1
    backends:
      - name: vault-1
        type: vault
        dpCert:
          rotation:
            expiration: 24h
        conf:
          fromCp:
            address: https://vault.example:8200
            pki: kmesh-pki-default
            role: dataplane-proxies
            commonName: '{{ tag "kuma.io/service" | replace "-" "_" }}.mesh'
            auth:
              tls:
                clientKey:
                  secret: client-key
                clientCert:
                  file: /etc/certs/client.pem
"#;

const OTHERS: &str = r#"type: Mesh
name: builtin-mesh
labels:
  team: a
mtls:
  enabledBackend: ca-1
  backends:
    - name: ca-1
      type: builtin
      dpCert:
        rotation:
          expiration: 1h30m
      conf:
        caCert:
          RSAbits: 2048
          expiration: 10y
---
type: Mesh
name: provided
mtls:
  enabledBackend: ca-p
  backends:
    - name: ca-p
      type: provided
      conf:
        cert:
          secret: ca-cert
        key:
          inline: aGVsbG8=
---
type: Secret
name: token-1
mesh: default
data: cy5mdXp6LXRva2Vu
---
apiVersion: v1
kind: Secret
metadata:
  name: sec-1
  namespace: kuma-system
  labels:
    kuma.io/mesh: default
type: system.kuma.io/secret
data:
  value: aGVsbG8=
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound:
    - port: 8080
      tags:
        kuma.io/service: web
        version: v1
"#;

fn yaml_docs() -> Vec<(&'static str, String)> {
    let mut docs = vec![
        ("page-mesh", PAGE_MESH.to_string()),
        ("page-mesh-k8s", PAGE_MESH_K8S.to_string()),
        ("others", OTHERS.to_string()),
    ];
    for (i, d) in OTHERS.split("---\n").enumerate() {
        docs.push((
            ["builtin", "provided", "secret", "secret-k8s", "dataplane"][i],
            d.to_string(),
        ));
    }
    docs
}

async fn vault_answers() {
    let mut bao = BaoServer::start()
        .await
        .expect("OpenBao (run scripts/test once to install it)");
    let cli = bao.admin();
    seed::setup_root_ca(&cli, "default", "pki-root").unwrap();
    seed::create_role(&cli, "pki-root", "rsa", &seed::RoleOptions::seed("default")).unwrap();
    seed::setup_intermediate_ca(&cli, "default", "pki-int", "pki-int-root").unwrap();
    seed::create_role(
        &cli,
        "pki-int",
        "ec",
        &seed::RoleOptions::seed_ec("default")
            .max_ttl("1h")
            .ttl("1h"),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let call = async |method: reqwest::Method, path: &str, token: &str, body: serde_json::Value| {
        let resp = http
            .request(method, format!("{}/v1/{path}", bao.addr()))
            .header("X-Vault-Token", token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    };
    let issue = serde_json::json!({
        "common_name": "web.mesh",
        "uri_sans": "spiffe://default/web,kuma://kuma.io/service/web",
        "ttl": "24h",
    });
    let answers = [
        (
            "issue-rsa-root",
            call(
                reqwest::Method::POST,
                "pki-root/issue/rsa",
                "root",
                issue.clone(),
            )
            .await,
        ),
        (
            "issue-ec-intermediate-truncated",
            call(
                reqwest::Method::POST,
                "pki-int/issue/ec",
                "root",
                issue.clone(),
            )
            .await,
        ),
        (
            "unknown-role",
            call(
                reqwest::Method::POST,
                "pki-root/issue/nope",
                "root",
                issue.clone(),
            )
            .await,
        ),
        (
            "no-mount",
            call(
                reqwest::Method::POST,
                "nothing/issue/rsa",
                "root",
                issue.clone(),
            )
            .await,
        ),
        (
            "permission-denied",
            call(
                reqwest::Method::POST,
                "pki-root/issue/rsa",
                "bad",
                issue.clone(),
            )
            .await,
        ),
        (
            "uri-san-refused",
            call(
                reqwest::Method::POST,
                "pki-root/issue/rsa",
                "root",
                serde_json::json!({"common_name": "web.mesh", "uri_sans": "spiffe://other/x"}),
            )
            .await,
        ),
        (
            "health",
            call(
                reqwest::Method::GET,
                "sys/health",
                "",
                serde_json::json!({}),
            )
            .await,
        ),
    ];
    bao.seal().unwrap();
    let sealed = call(
        reqwest::Method::POST,
        "pki-root/issue/rsa",
        "root",
        issue.clone(),
    )
    .await;
    let sealed_health = call(
        reqwest::Method::GET,
        "sys/health",
        "",
        serde_json::json!({}),
    )
    .await;
    bao.stop();
    let index = |status: u16| {
        fuzzing::STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(0) as u8
    };
    for (name, (status, body)) in answers
        .into_iter()
        .chain([("sealed", sealed), ("sealed-health", sealed_health)])
    {
        let mut data = vec![index(status), 0];
        data.extend_from_slice(body.as_bytes());
        put("vault_answer", name, &data);
        if name.starts_with("issue") {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let d = &v["data"];
            let chain = format!(
                "{}\n{}",
                d["certificate"].as_str().unwrap(),
                d["ca_chain"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            let mut c = vec![0u8];
            c.extend_from_slice(chain.as_bytes());
            put("certificate", name, &c);
            let der = common::x509::pem_to_ders(d["certificate"].as_str().unwrap()).unwrap();
            let mut c = vec![1u8];
            c.extend_from_slice(&der[0]);
            put("certificate", &format!("{name}-der"), &c);
        }
    }
    // A 429 with Retry-After, and a proxy's HTML 502.
    put(
        "vault_answer",
        "rate-limited",
        [index(429), 5]
            .iter()
            .copied()
            .chain(
                b"{\"errors\":[\"rate limit quota exceeded\"]}"
                    .iter()
                    .copied(),
            )
            .collect::<Vec<u8>>(),
    );
    put(
        "vault_answer",
        "bad-gateway",
        [index(502), 0]
            .iter()
            .copied()
            .chain(b"<html><body>502 Bad Gateway</body></html>".iter().copied())
            .collect::<Vec<u8>>(),
    );
}

fn cas() {
    {
        let (name, conf) = ("rsa", common::model::BuiltinConf::default());
        let pair = common::ca::generate_builtin_ca("default", &conf).unwrap();
        let mut d = vec![0u8];
        d.extend_from_slice(pair.cert_pem.as_bytes());
        d.push(0xFF);
        d.extend_from_slice(pair.key_pem().as_bytes());
        put("provided_ca", &format!("{name}-pem"), &d);
        let der = common::x509::pem_to_ders(&pair.cert_pem).unwrap();
        let mut d = vec![1u8];
        d.extend_from_slice(&der[0]);
        put("provided_ca", &format!("{name}-cert-der"), &d);
        let key = pem::parse(pair.key_pem()).unwrap();
        let mut d = vec![2u8];
        d.extend_from_slice(key.contents());
        put("provided_ca", &format!("{name}-key-der"), &d);
        let mut c = vec![0u8];
        c.extend_from_slice(pair.cert_pem.as_bytes());
        put("certificate", &format!("builtin-{name}"), &c);
    }
}

fn sync_messages() {
    let resource = |mesh: &str, name: &str, payload: serde_json::Value| kds::Resource {
        mesh: mesh.into(),
        name: name.into(),
        version: "3".into(),
        payload: serde_json::to_vec(&payload).unwrap(),
    };
    let docs = common::parse::parse_documents(&format!("{PAGE_MESH}---\n{OTHERS}")).unwrap();
    let mut meshes = Vec::new();
    let mut secrets = Vec::new();
    for r in docs {
        match r {
            common::model::Resource::Mesh(m) => meshes.push(resource(
                &m.name,
                &m.name,
                serde_json::to_value(&m).unwrap(),
            )),
            common::model::Resource::Secret(s) => secrets.push(resource(
                &s.mesh,
                &s.name,
                serde_json::to_value(&s).unwrap(),
            )),
            _ => {}
        }
    }
    let response = |ty: &str, resources: Vec<kds::Resource>, removed: Vec<kds::ResourceId>| {
        kds::GlobalMessage {
            message: Some(kds::global_message::Message::Response(
                kds::DiscoveryResponse {
                    r#type: ty.into(),
                    nonce: "7".into(),
                    resources,
                    removed_resources: removed,
                    ..Default::default()
                },
            )),
        }
        .encode_to_vec()
    };
    put("sync_message", "meshes", response("Mesh", meshes, vec![]));
    put(
        "sync_message",
        "secrets",
        response("Secret", secrets, vec![]),
    );
    put(
        "sync_message",
        "removal",
        response(
            "Secret",
            vec![],
            vec![kds::ResourceId {
                mesh: "default".into(),
                name: "token-1".into(),
            }],
        ),
    );
    let signer = common::tokens::TokenSigner::generate();
    let keys = kds::GlobalMessage {
        message: Some(kds::global_message::Message::TokenKeys(kds::TokenKeys {
            keys: vec![kds::TokenKey {
                kid: signer.verifier().kid().into(),
                algorithm: common::tokens::ED25519_ALGORITHM.into(),
                public_key: signer.verifier().public_key().to_vec(),
            }],
            revoked_token_ids: vec!["0123456789abcdef0123456789abcdef".into()],
        })),
    }
    .encode_to_vec();
    put("sync_message", "token-keys", keys);
    put(
        "token",
        "dataplane",
        signer.issue_dataplane_token(
            common::tokens::DataplaneClaim::bound("default", "web-1", "web"),
            std::time::Duration::from_secs(3600),
        ),
    );
    put(
        "token",
        "zone",
        signer.issue_zone_token("zone-1", std::time::Duration::from_secs(3600)),
    );
}

fn text_seeds() {
    for (name, d) in yaml_docs() {
        put("resource_documents", name, &d);
        if let Ok(r) = common::parse::parse_body(d.as_bytes()) {
            let json = match &r {
                common::model::Resource::Mesh(m) => serde_json::to_string_pretty(m),
                common::model::Resource::Secret(s) => serde_json::to_string_pretty(s),
                common::model::Resource::Dataplane(x) => serde_json::to_string_pretty(x),
            }
            .unwrap();
            put("resource_body", name, &json);
            put("resource_body", &format!("{name}-yaml"), &d);
        }
    }
    put(
        "resource_documents",
        "json-array",
        r#"[{"type":"Secret","name":"a","mesh":"default","data":"aGk="},{"type":"Mesh","name":"m2"}]"#,
    );
    for (i, d) in [
        "24h",
        "1h30m",
        "500ms",
        "1y",
        "0s",
        "10s",
        "1w2d3h4m5s6ms",
        " 5m ",
        "1.5h",
        "2h45m10.25s",
        "300us",
        "-0",
    ]
    .iter()
    .enumerate()
    {
        put("duration", &i.to_string(), d);
    }
    for (i, q) in [
        "",
        "size=2",
        "size=2&offset=4",
        "offset=3&dryRun=true&size=1",
        "size=1000&offset=0",
        "size=0",
        "offset=-1",
        "%73ize=5&x=%FF",
    ]
    .iter()
    .enumerate()
    {
        // The query, 0xFF, then the bytes that choose the list's length.
        put(
            "page_query",
            &i.to_string(),
            [q.as_bytes(), &[0xFF], b"7"].concat(),
        );
    }
    for (name, d) in [
        ("secret", "secret: token"),
        ("file", "file: /etc/hostname"),
        ("inline", "inline: aGVsbG8gd29ybGQ="),
        ("inline-string", "inlineString: s.some-token-value"),
        ("json", r#"{"secret": "ca"}"#),
    ] {
        put("data_source", name, d);
    }
    for (i, t) in [
        "{{ tag \"kuma.io/service\" }}.mesh",
        "{{ tag \"kuma.io/service\" | replace \"-\" \"_\" }}.mesh",
        "{{- tag \"version\" -}}.{{ (tag \"kuma.io/service\") }}",
        "{{ replace \".\" \"-\" (tag \"kuma.io/zone\") }}",
        "plain.mesh",
    ]
    .iter()
    .enumerate()
    {
        let mut d = t.as_bytes().to_vec();
        d.push(0xFF);
        d.extend_from_slice(b"kuma.io/service=web-api\nversion=v1\nkuma.io/zone=eu.west");
        put("template", &i.to_string(), &d);
    }
}

/// What grpc-core sends on a unix socket (its `:authority` the percent-encoded socket path),
/// grpc-go (`localhost`) and grpc-java (the path), two calls on one connection so that the
/// second refers to the first's HPACK entries, a request split into HEADERS and CONTINUATION, a
/// padded one with priority; and SPIFFE IDs, good and bad.
fn workload_api() {
    let frame = |out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = (payload.len() as u32).to_be_bytes();
        out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    };
    for (name, authority) in [
        ("grpc-core", "tmp%2Fkmesh%2Fworkload.sock"),
        ("grpc-go", "localhost"),
        ("grpc-java", "/tmp/kmesh/workload.sock"),
    ] {
        let mut encoder = loona_hpack::Encoder::new();
        // The odd first byte says "HTTP/2 after the preface".
        let mut out = vec![1u8];
        frame(&mut out, 0x4, 0, 0, &[]);
        for (i, method) in ["FetchX509SVID", "FetchJWTSVID"].iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            let path = format!("/SpiffeWorkloadAPI/{method}");
            let block = encoder.encode(vec![
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", path.as_bytes()),
                (b":authority", authority.as_bytes()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"workload.spiffe.io", b"true"),
            ]);
            if i == 0 {
                let (a, b) = block.split_at(block.len() / 2);
                frame(&mut out, 0x1, 0, stream, a);
                frame(&mut out, 0x9, 0x4, stream, b);
            } else {
                // PADDED and PRIORITY: pad length 2, dependency and weight, the block, padding.
                let mut p = vec![2u8, 0, 0, 0, 0, 15];
                p.extend_from_slice(&block);
                p.extend_from_slice(&[0, 0]);
                frame(&mut out, 0x1, 0x4 | 0x8 | 0x20, stream, &p);
            }
            frame(&mut out, 0x0, 0x1, stream, &[0, 0, 0, 0, 0]);
        }
        frame(&mut out, 0x8, 0, 0, &[0, 0, 0x10, 0]);
        put("workload_api", name, out);
    }
    for (name, id) in [
        ("id-web", "spiffe://default/web"),
        ("id-deep", "spiffe://mesh-1.example/ns/prod/sa/web"),
        ("id-root", "spiffe://default"),
        ("id-dots", "spiffe://default/a/../b"),
        ("id-kuma", "kuma://kuma.io/service/web"),
    ] {
        let mut d = vec![0u8];
        d.extend_from_slice(id.as_bytes());
        put("workload_api", name, d);
    }
}

#[tokio::main]
async fn main() {
    let root: &Path = &testkit::bins::workspace_root();
    println!("writing seeds under {}", root.join("fuzz/corpus").display());
    workload_api();
    // `workload_api` alone: its seeds need no OpenBao.
    if std::env::args().nth(1).as_deref() == Some("workload_api") {
        return;
    }
    text_seeds();
    cas();
    sync_messages();
    vault_answers().await;
    for (target, _) in fuzzing::TARGETS {
        let n = std::fs::read_dir(corpus(target)).unwrap().count();
        println!("{target}: {n} inputs");
    }
}
