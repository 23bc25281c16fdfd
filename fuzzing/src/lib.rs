//! What each fuzz target does with its input, and the properties it checks. The cargo-fuzz
//! targets in `fuzz/` (libFuzzer, nightly, run by hand: see `fuzz/README.md`) are one line each
//! calling a function here, and `tests/corpus.rs` replays every committed corpus input and every
//! crash found through the same functions on stable, in CI. So a crash found once stays a
//! regression test, and the properties are checked in one place.
//!
//! Each function takes arbitrary bytes, must never panic, and checks properties beyond "no
//! panic" (a violated one is a panic, so the fuzzer reports it):
//! - a resource that parses and validates survives the trip global → store → sync payload →
//!   zone unchanged, and is accepted by the zone's own check of received resources;
//! - a parsed duration formats to text that parses to the same duration;
//! - a list request's `size`/`offset` are refused or give a page within bounds whose `next`
//!   link asks for exactly the following page;
//! - `Debug` of a data source does not depend on its inline values;
//! - a rendered `commonName` stays within its bound, and tag values are never evaluated;
//! - a provided CA that passes validation can sign a leaf that verifies to it;
//! - nothing Vault answers is trusted: a hostile answer is an error or a checked certificate;
//! - a token not signed by the held key is never accepted.
//! - what a workload sends on the Workload API socket leaves the agent's relay as whole HTTP/2
//!   frames whose header blocks decode on their own with a valid `:authority`; a SPIFFE ID the
//!   agent accepts is one (scheme, trust domain, path segments).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use common::datasource::SecretMap;
use common::model::{BackendConf, DataSource, Kind, Resource};
use common::store::Store;
use prost::Message;
use proto::kds;

/// Splits input at the first `0xFF` byte (never part of UTF-8): `(before, after)`.
fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Secrets the fuzzed resources may name.
fn secrets() -> SecretMap {
    let mut s = SecretMap::default();
    for mesh in ["default", "provided", "builtin-mesh"] {
        s.insert(mesh, "token", b"s.fuzz-token".to_vec());
        s.insert(mesh, "token-1", b"s.fuzz-token".to_vec());
        s.insert(mesh, "not-pem", b"not a certificate".to_vec());
        for name in ["ca", "sec-1", "ca-cert", "client-cert"] {
            s.insert(mesh, name, fixed_ca().0.clone().into_bytes());
        }
        for name in ["ca-key", "client-key"] {
            s.insert(mesh, name, fixed_ca().1.clone().into_bytes());
        }
    }
    s
}

/// The trip of a resource global accepted: stored and synced as JSON (`serde_json` of the model),
/// read back by the zone (`zone::apply::validate`). Must come back equal, and the zone must accept
/// every Mesh and Secret global accepted.
fn check_round_trip(r: &Resource) {
    let json = match r {
        Resource::Mesh(m) => serde_json::to_vec(m),
        Resource::Secret(s) => serde_json::to_vec(s),
        Resource::Dataplane(d) => serde_json::to_vec(d),
    }
    .expect("a parsed resource serializes");
    // The API's own reading of what it stored.
    let back = common::parse::parse_body(&json)
        .unwrap_or_else(|e| panic!("stored JSON of {r:?} does not parse back: {e}"));
    assert_eq!(&back, r, "resource changed through its stored JSON");
    if r.kind() == Kind::Dataplane {
        return;
    }
    let wire = kds::Resource {
        mesh: r.mesh().to_string(),
        name: r.name().to_string(),
        version: "1".into(),
        payload: json,
    };
    let received = zone::apply::validate(r.kind(), &wire, None)
        .unwrap_or_else(|e| panic!("the zone refuses {r:?} that global accepted: {e}"));
    assert_eq!(&received, r, "resource changed through the sync payload");
}

fn check_resources(resources: &[Resource]) {
    let secrets = secrets();
    for r in resources {
        if common::validate::validate_resource(r, &secrets).is_ok() {
            if std::env::var_os("FUZZING_TRACE").is_some() {
                eprintln!("round trip of {} {}", r.kind().as_str(), r.name());
            }
            check_round_trip(r);
        }
        let _ = format!("{r:?}");
    }
}

/// A file or stdin given to `global apply`/`validate`: YAML stream, JSON document or array,
/// Universal or Kubernetes form.
pub fn resource_documents(data: &[u8]) {
    if let Ok(resources) = common::parse::parse_documents_bytes(data) {
        check_resources(&resources);
    }
}

/// An HTTP request body (`PUT /meshes/{name}` and friends): JSON or YAML, one resource.
pub fn resource_body(data: &[u8]) {
    if let Ok(r) = common::parse::parse_body(data) {
        check_resources(std::slice::from_ref(&r));
    }
}

/// A duration as written in a resource (`dpCert.rotation.expiration`, `--vault-timeout`).
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(d) = common::duration::parse_duration(text) else {
        return;
    };
    let formatted = common::duration::format_duration(d);
    let again = common::duration::parse_duration(&formatted)
        .unwrap_or_else(|e| panic!("{text:?} parsed, its format {formatted:?} does not: {e}"));
    assert_eq!(again, d, "{text:?} → {formatted:?}");
    let h = common::duration::HumanDuration::parse(text).expect("parsed once");
    let json = serde_json::to_string(&h).expect("serializes");
    let back: common::duration::HumanDuration = serde_json::from_str(&json).expect("reads back");
    assert_eq!(back.as_duration(), d);
}

/// The query of a list request (`?size=N&offset=K&...`): refused, or a page of at most `size`
/// items starting at `offset`, whose `next` link (when there is more) asks for the following one.
pub fn page_query(data: &[u8]) {
    use common::page::{ListRequest, MAX_SIZE, Page};
    let (query, len) = split2(data);
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let Ok(request) =
        ListRequest::from_parts("http", Some("127.0.0.1:5681"), "/meshes", Some(query))
    else {
        return;
    };
    let Page { size, offset } = request.page;
    assert!((1..=MAX_SIZE).contains(&size), "{query:?}: size {size}");
    let n = len
        .iter()
        .fold(0usize, |n, b| (n * 31 + *b as usize) % 2500);
    let (total, items, next) = request.cut((0..n).collect::<Vec<usize>>());
    assert_eq!(total, n);
    let want: Vec<usize> = (offset.min(n)..offset.saturating_add(size).min(n)).collect();
    assert_eq!(items, want, "{query:?} of {n}");
    match next {
        Some(link) => {
            assert!(
                offset.saturating_add(size) < n,
                "{query:?}: a next page past the end"
            );
            let rest = link
                .strip_prefix("http://127.0.0.1:5681/meshes?")
                .unwrap_or_else(|| panic!("{query:?}: next {link:?}"));
            let again = Page::from_query(Some(rest))
                .unwrap_or_else(|e| panic!("{query:?}: next {link:?} refused: {e}"));
            assert_eq!(
                again,
                Page {
                    size,
                    offset: offset + size
                },
                "{query:?}: {link:?}"
            );
        }
        None => assert!(
            offset.saturating_add(size) >= n,
            "{query:?}: no next page of {n}"
        ),
    }
}

/// A data source (`secret`/`file`/`inline`/`inlineString`) as YAML or JSON.
pub fn data_source(data: &[u8]) {
    let Ok(ds) = serde_norway::from_slice::<DataSource>(data) else {
        return;
    };
    // Debug must not depend on the inline values at all (not merely hide them when long).
    let mut blank = ds.clone();
    for v in [&mut blank.inline, &mut blank.inline_string]
        .into_iter()
        .flatten()
    {
        *v = String::new();
    }
    assert_eq!(
        format!("{ds:?}"),
        format!("{blank:?}"),
        "Debug shows something of an inline value"
    );
    if let Ok(bytes) = ds.resolve("default", &secrets()) {
        assert!(bytes.len() <= 4 * common::limits::DATA_BYTES);
    }
}

/// A `commonName` template (first part) with the proxy's tags (`key=value` lines, second part).
pub fn template(data: &[u8]) {
    let (t, tags) = split2(data);
    let Ok(text) = std::str::from_utf8(t) else {
        return;
    };
    let tags: BTreeMap<String, String> = String::from_utf8_lossy(tags)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let Ok(tpl) = common::template::parse(text) else {
        return;
    };
    let _ = tpl.tags_used();
    if let Ok(out) = tpl.render(&tags) {
        assert!(out.len() <= common::template::MAX_OUTPUT_LEN + 64 * 1024);
    }
    // Tag values are data, never template text: a value read by `tag` comes out as it is.
    let injected: BTreeMap<String, String> = [(
        "kuma.io/service".to_string(),
        text.chars().take(200).collect::<String>(),
    )]
    .into();
    let out = common::template::render("{{ tag \"kuma.io/service\" }}", &injected)
        .expect("a plain tag lookup renders");
    assert_eq!(
        out, injected["kuma.io/service"],
        "a tag value was evaluated"
    );
}

/// A fixed, valid EC CA (cert, key), generated once per process.
fn fixed_ca() -> &'static (String, String) {
    static CA: OnceLock<(String, String)> = OnceLock::new();
    CA.get_or_init(|| {
        let conf = common::model::BuiltinConf::default();
        let pair = common::ca::generate_builtin_ca("default", &conf).expect("builtin CA");
        (pair.cert_pem.clone(), pair.key_pem().to_string())
    })
}

fn pem_of(tag: &str, der: &[u8]) -> Vec<u8> {
    pem::encode(&pem::Pem::new(tag, der.to_vec())).into_bytes()
}

/// A provided CA's certificate and key. First byte: 0 = both PEM texts (split at `0xFF`);
/// 1 = a DER certificate (wrapped in PEM) with a valid key; 2 = a valid certificate with a DER
/// PKCS#8 key; anything else = both PEM texts.
pub fn provided_ca(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (cert, key) = match mode {
        1 => (
            pem_of("CERTIFICATE", rest),
            fixed_ca().1.clone().into_bytes(),
        ),
        2 => (
            fixed_ca().0.clone().into_bytes(),
            pem_of("PRIVATE KEY", rest),
        ),
        _ => {
            let (c, k) = split2(rest);
            (c.to_vec(), k.to_vec())
        }
    };
    let Ok(_info) = common::ca::validate_provided_detailed(&cert, &key) else {
        return;
    };
    // Accepted: the zone must be able to sign with it, and what it signs verifies to it.
    let pair = common::ca::CaKeyPair::new(
        String::from_utf8(cert).expect("accepted PEM is text"),
        String::from_utf8(key).expect("accepted PEM is text"),
    );
    let signer = common::ca::CaSigner::new(&pair).expect("a validated provided CA makes a signer");
    let mut tags = BTreeMap::new();
    tags.insert("kuma.io/service".to_string(), vec!["web".to_string()]);
    let leaf = signer
        .issue(&common::ca::LeafRequest {
            mesh: "default".into(),
            tags,
            common_name: None,
            lifetime: Duration::from_secs(3600),
            uri_sans: common::model::UriSans::Kuma,
        })
        .expect("a validated provided CA signs");
    // The trust bundle's self-signed root(s) are the anchors; the rest of it are intermediates.
    let ders = common::x509::pem_to_ders(&leaf.ca_pem).expect("the trust bundle parses");
    let (roots, inters): (Vec<Vec<u8>>, Vec<Vec<u8>>) = ders
        .into_iter()
        .partition(|d| common::x509::der_is_self_signed(d));
    let leaf_der = common::x509::pem_to_ders(&leaf.cert_pem).expect("the leaf parses");
    common::x509::verify_chain(&leaf_der[0], &inters, &roots)
        .expect("a leaf of a validated provided CA verifies to its root");
}

/// Certificates as PEM text (a bundle) or, with first byte 1, one DER certificate: summaries,
/// self-signature, chain verification, and the zone's reading of an issued chain.
pub fn certificate(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = if mode == 1 {
        let _ = common::x509::summarize_der(rest);
        let _ = common::x509::der_is_self_signed(rest);
        String::from_utf8(pem_of("CERTIFICATE", rest)).expect("PEM is ASCII")
    } else {
        String::from_utf8_lossy(rest).into_owned()
    };
    let _ = common::x509::pem_to_ders(&text);
    if let Ok(all) = common::x509::summarize_bundle(&text) {
        for s in &all {
            let _ = s.lifetime_secs();
        }
    }
    let _ = zone::identity::source::Issued::new(text.clone(), String::new(), vec![]);
    // The bundle as leaf + intermediates + roots, and against the fixed CA.
    let (l, i) = split2(rest);
    let leaf = String::from_utf8_lossy(l);
    let inter = String::from_utf8_lossy(i);
    let _ = common::x509::verify_chain_pem(&leaf, &[&inter], &[&text]);
    let r = common::x509::verify_chain_pem(&text, &[], &[fixed_ca().0.as_str()]);
    assert!(
        r.is_err(),
        "a fuzzed certificate verified to a CA nobody else holds"
    );
    let _ = common::x509::private_key_matches_cert(&text, &fixed_ca().1);
}

/// One client for a vault backend, built without contacting Vault (nothing is sent).
fn vault_issuer() -> &'static common::vault::VaultIssuer {
    static ISSUER: OnceLock<common::vault::VaultIssuer> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let conf: common::model::FromCp = serde_json::from_value(serde_json::json!({
            "address": "http://127.0.0.1:1",
            "pki": "kmesh-pki-default",
            "role": "dataplane-proxies",
            "commonName": "{{ tag \"kuma.io/service\" }}.mesh",
            "auth": {"token": {"secret": "token"}},
        }))
        .expect("fromCp");
        common::vault::VaultIssuer::from_conf(
            "default",
            &conf,
            &secrets(),
            common::vault::Timeouts::default(),
        )
        .expect("vault client from conf")
    })
}

/// Statuses Vault (or something in front of it) may answer with; the first byte picks one.
pub const STATUSES: [u16; 16] = [
    200, 204, 400, 401, 403, 404, 412, 429, 472, 473, 500, 501, 502, 503, 504, 307,
];

/// An answer of Vault to `<pki>/issue/<role>` and to `sys/health`: first byte = status (index
/// into [`STATUSES`]), second = `Retry-After` seconds (0 = none), rest = body. A certificate in a
/// 2xx answer goes through the global's checks and the zone's reading.
pub fn vault_answer(data: &[u8]) {
    let (Some(&s), Some(&retry)) = (data.first(), data.get(1)) else {
        return;
    };
    let status = STATUSES[usize::from(s) % STATUSES.len()];
    let retry_after = (retry != 0).then_some(u64::from(retry));
    let text = String::from_utf8_lossy(&data[2..]);
    let issuer = vault_issuer();
    let req = common::vault::IssueRequest {
        uri_sans: vec![
            "spiffe://default/web".into(),
            "kuma://kuma.io/service/web".into(),
        ],
        common_name: Some("web.mesh".into()),
        ttl: Duration::from_secs(24 * 3600),
    };
    match issuer.read_issue_answer(&req, status, retry_after, &text) {
        Ok(cert) => {
            assert!((200..300).contains(&status));
            let mut report = common::vault::VaultCheckReport::new("default", "vault-1");
            common::vault::inspect_test_certificate(
                &mut report,
                issuer,
                &req,
                &cert,
                1_700_000_000,
                common::model::UriSans::Kuma,
            );
            let _ = report.summary();
            assert!(
                !format!("{cert:?}").contains(&cert.private_key_pem)
                    || cert.private_key_pem.len() < 12
            );
            let _ = zone::identity::source::Issued::new(
                cert.chain_pem(),
                cert.private_key_pem.clone(),
                cert.root_pems(),
            );
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                !message.contains("s.fuzz-token"),
                "error shows the token: {message}"
            );
            let _ = (e.field(), e.is_unreachable(), e.retry_after());
        }
    }
    if let Err(e) = issuer.read_health_answer(status, retry_after, &text) {
        let _ = e.to_string();
    }
}

/// A message of the sync stream as a zone receives it (protobuf `GlobalMessage`): applied to a
/// fresh store the way the zone applies it, then what the zone derives from the stored Meshes
/// (the material its certificate sources are built from, the expected common name).
pub fn sync_message(data: &[u8]) {
    let Ok(msg) = proto::kds::GlobalMessage::decode(data) else {
        return;
    };
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    });
    rt.block_on(async move {
        let store = Store::temporary().expect("temporary store");
        match msg.message {
            Some(kds::global_message::Message::Response(resp)) => {
                let Ok(applied) = zone::apply::apply(&store, &resp).await else {
                    return;
                };
                assert!(applied.rejected.len() <= resp.resources.len());
                for m in store.list_meshes().expect("list meshes") {
                    for b in m.backends() {
                        let _ = zone::identity::source::backend_material(&m.name, b, &store);
                        let mut tags = BTreeMap::new();
                        tags.insert("kuma.io/service".to_string(), vec!["web".to_string()]);
                        let _ = zone::identity::source::expected_common_name(b, &tags);
                        if let Ok(BackendConf::Vault(v)) = b.typed_conf()
                            && let Some(f) = v.from_cp
                        {
                            let _ = common::vault::VaultIssuer::from_conf(
                                &m.name,
                                &f,
                                &store,
                                common::vault::Timeouts::default(),
                            );
                        }
                    }
                }
            }
            Some(kds::global_message::Message::TokenKeys(keys)) => {
                let _ = zone::dp::keys::save(&store, &keys).await;
            }
            None => {}
        }
    });
}

/// A bearer token as a proxy or a zone presents it. Checked with a key generated in this
/// process, so no input can carry a valid signature: every one must be refused.
pub fn token(data: &[u8]) {
    static SIGNER: OnceLock<common::tokens::TokenSigner> = OnceLock::new();
    let signer = SIGNER.get_or_init(common::tokens::TokenSigner::generate);
    let text = String::from_utf8_lossy(data);
    for scope in [common::tokens::DATAPLANE_SCOPE, common::tokens::ZONE_SCOPE] {
        let r = signer.verifier().verify::<serde_json::Value>(&text, scope);
        assert!(r.is_err(), "a token nobody signed was accepted: {text:?}");
        let keys = common::tokens::KeySet::new(vec![signer.verifier().clone()]);
        assert!(keys.verify::<serde_json::Value>(&text, scope).is_err());
    }
    // Base64url pieces decoded the way the verifier reads them must not panic either.
    for part in text.split('.') {
        let _ = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part);
    }
}

/// The proxy agent's Workload API: input starting with an even byte is a SPIFFE ID (a leaf's URI
/// SAN) for `parse_spiffe_id`; otherwise what a workload sends after the HTTP/2 preface, through
/// the relay that rewrites its header blocks. The relay's output is the preface then whole
/// frames; every header block (HEADERS then CONTINUATIONs) decodes with a fresh HPACK decoder (the
/// relay never indexes) and its `:authority`, if any, is a valid authority.
pub fn workload_api(data: &[u8]) {
    use zone::agent::workload::{authority, parse_spiffe_id};
    let Some((kind, rest)) = data.split_first() else {
        return;
    };
    if kind % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        if let Ok(id) = parse_spiffe_id(&text) {
            assert_eq!(id.id, text);
            let path = text
                .strip_prefix(&format!("spiffe://{}/", id.trust_domain))
                .unwrap_or_else(|| panic!("{text:?} accepted without its trust domain"));
            assert!(!id.trust_domain.is_empty(), "{text:?}");
            for segment in path.split('/') {
                assert!(
                    !segment.is_empty() && segment != "." && segment != "..",
                    "{text:?} accepted with segment {segment:?}"
                );
            }
        }
        return;
    }
    let mut input = authority::PREFACE.to_vec();
    input.extend_from_slice(rest);
    let mut out = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let _ = runtime.block_on(authority::rewrite(&mut input.as_slice(), &mut out));
    let frames = out
        .strip_prefix(authority::PREFACE.as_slice())
        .expect("the preface goes first");
    let mut rest = frames;
    let mut block: Option<Vec<u8>> = None;
    while !rest.is_empty() {
        assert!(rest.len() >= 9, "a cut frame header");
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let (kind, flags) = (rest[3], rest[4]);
        // Frames other than header blocks pass as they came, possibly cut by the input's end.
        let Some(payload) = rest.get(9..9 + len) else {
            assert!(kind != 0x1 && kind != 0x9, "a cut header frame");
            break;
        };
        rest = &rest[9 + len..];
        match kind {
            0x1 | 0x9 => {
                assert_eq!(block.is_some(), kind == 0x9, "CONTINUATION without HEADERS");
                let b = block.get_or_insert_with(Vec::new);
                b.extend_from_slice(payload);
                if flags & 0x4 != 0 {
                    let headers = loona_hpack::Decoder::new()
                        .decode(&block.take().unwrap_or_default())
                        .expect("a rewritten header block decodes alone");
                    for (name, value) in headers {
                        if name == b":authority" {
                            assert!(
                                zone_authority_is_valid(&value),
                                "{:?} passed",
                                String::from_utf8_lossy(&value)
                            );
                        }
                    }
                }
            }
            _ => assert!(block.is_none(), "a frame inside a header block"),
        }
    }
}

fn zone_authority_is_valid(value: &[u8]) -> bool {
    tonic::codegen::http::uri::Authority::try_from(value).is_ok()
}

/// Every target by name, for the corpus replay and for `fuzz/`.
/// A fuzz target: takes any bytes, panics only when a property breaks.
pub type Target = fn(&[u8]);

pub const TARGETS: &[(&str, Target)] = &[
    ("resource_documents", resource_documents),
    ("resource_body", resource_body),
    ("duration", duration),
    ("page_query", page_query),
    ("data_source", data_source),
    ("template", template),
    ("provided_ca", provided_ca),
    ("certificate", certificate),
    ("vault_answer", vault_answer),
    ("sync_message", sync_message),
    ("token", token),
    ("workload_api", workload_api),
];
