//! The commands that talk to a running global over its HTTP API (`apply`, `get`, `delete`, the
//! token commands, revocation and signing-key rotation): the client, the reading of answers into
//! the API's types (`api::types`) and the mapping of failures to exit codes (unreachable server or
//! Vault: 3; a certificate that does not verify is one, said with the way out: `--ca-file`).

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::args::{
    ApiArgs, DataplaneTokenArgs, DeleteKind, ExportFormat, Format, GetKind, UserTokenArgs,
    ZoneTokenArgs,
};
use super::failure::Failure;
use super::input::{parse_inputs, read_inputs};
use super::print;
use crate::api::types::{
    ApiError, ApplyResult, DataplaneToken, DataplaneTokenRequest, DataplaneView, ReplicaView,
    ResourceView, RevokeRequest, Revoked, UserToken, UserTokenRequest, ZoneToken, ZoneTokenRequest,
    ZoneView,
};

/// An HTTP client for the global API.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(args: &ApiArgs) -> Result<Self, Failure> {
        let file = match (&args.admin_token_file, &args.token_file) {
            (Some(p), _) => Some(("--admin-token-file", p)),
            (None, Some(p)) => Some(("--token-file", p)),
            (None, None) => None,
        };
        let token = match file {
            Some((flag, p)) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| {
                        Failure::usage(format!("cannot read {flag} {}: {e}", p.display()))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(120));
        if let Some(path) = &args.ca_file {
            builder = builder.tls_certs_only(read_ca_file(path)?);
        }
        let http = builder
            .build()
            .map_err(|e| Failure::refused(e.to_string()))?;
        Ok(Self {
            http,
            base: args.api.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Sends a request; returns the JSON body of a 2xx, or a Failure with the API's error.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let resp = req.send().await.map_err(|e| match certificate_error(&e) {
            Some(reason) => Failure::unreachable(format!(
                "cannot verify the TLS certificate of global at {}: {reason}\n  \
                 (global's generated certificate: pass --ca-file <data-dir>/api-ca.pem, the CA global run writes there; \
                 an operator's certificate: --ca-file with the CA that signed it)",
                self.base
            )),
            None => Failure::unreachable(format!(
                "cannot reach global at {}: {}",
                self.base,
                error_chain(&e)
            )),
        })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let error = api_error(&body);
        let message = describe(status.as_u16(), &error);
        if error.vault_unreachable {
            return Err(Failure::unreachable(message));
        }
        Err(Failure::refused(message))
    }
}

/// The certificates of `--ca-file` (a PEM bundle), to trust instead of the system's.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, Failure> {
    let pem = std::fs::read(path)
        .map_err(|e| Failure::usage(format!("cannot read --ca-file {}: {e}", path.display())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        Failure::usage(format!(
            "--ca-file {}: not a PEM certificate bundle: {e}",
            path.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(Failure::usage(format!(
            "--ca-file {}: holds no PEM CERTIFICATE block",
            path.display()
        )));
    }
    Ok(certs)
}

/// Why the server's certificate was not accepted, when that is why a request failed: the rustls
/// error found among the causes (an `io::Error` carries it as its inner error, which `source()`
/// skips, so inner errors are searched too).
fn certificate_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(
        tls @ (rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_)),
    ) = e.downcast_ref::<rustls::Error>()
    {
        return Some(tls.to_string());
    }
    let inner = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|i| certificate_error(i as &(dyn std::error::Error + 'static)));
    inner.or_else(|| e.source().and_then(certificate_error))
}

impl Client {
    /// `GET path`, and when the answer is a page of a list, every following page (`next`, asked
    /// on this client's own base URL): one body holding every item, `"next": null`.
    async fn get_all(&self, path: &str) -> Result<Value, Failure> {
        let mut body = self.send(self.request(reqwest::Method::GET, path)).await?;
        let mut next = common::page::next_of(&body);
        let mut pages = 1;
        while let Some(path) = next {
            pages += 1;
            if pages > common::page::MAX_PAGES {
                return Err(Failure::refused(format!(
                    "the list did not end after {} pages",
                    common::page::MAX_PAGES
                )));
            }
            let page = self.send(self.request(reqwest::Method::GET, &path)).await?;
            next = common::page::append_page(&mut body, page);
        }
        Ok(body)
    }
}

/// A 2xx body read as the type the API answers with.
fn decode<T: DeserializeOwned>(body: Value) -> Result<T, Failure> {
    serde_json::from_value(body)
        .map_err(|e| Failure::refused(format!("global answered with an unexpected body: {e}")))
}

/// The items of a list body (`{"total", "items"}`), or the one resource of a single body.
fn items<T: DeserializeOwned>(body: Value) -> Result<Vec<T>, Failure> {
    match body {
        Value::Object(mut map) if map.contains_key("items") => {
            decode(map.remove("items").unwrap_or(Value::Null))
        }
        one => Ok(vec![decode(one)?]),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The error body as the API's type (an empty one when the body is not one).
fn api_error(body: &Value) -> ApiError {
    serde_json::from_value(body.clone()).unwrap_or_default()
}

/// Renders the API error body for a terminal.
pub fn describe_api_error(status: u16, body: &Value) -> String {
    describe(status, &api_error(body))
}

fn describe(status: u16, error: &ApiError) -> String {
    let title = if error.title.is_empty() {
        "request failed"
    } else {
        &error.title
    };
    let mut out = format!("{title} ({status}): {}", error.detail);
    for p in &error.invalid_parameters {
        out.push_str(&format!("\n  * {}: {}", p.field, p.reason));
    }
    if status == 401 {
        out.push_str("\n  (pass --admin-token-file <data-dir>/admin-token, or --token-file with a user token)");
    }
    out
}

pub(super) async fn apply(files: &[String], dry_run: bool, api: &ApiArgs) -> Result<(), Failure> {
    let inputs = read_inputs(files)?;
    // Parse locally first so that a typo is reported with its file, before anything is sent.
    let resources = parse_inputs(&inputs)?;
    let vault = super::spinner::vault_backends(&resources);
    let waiting = (!vault.is_empty()).then(|| {
        format!(
            "waiting for global: it has Vault issue a test certificate for {}",
            vault.join(", ")
        )
    });
    let body = inputs
        .iter()
        .map(|(_, t)| t.trim_start_matches("---").to_string())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let client = Client::new(api)?;
    let path = if dry_run {
        "/apply?dryRun=true"
    } else {
        "/apply"
    };
    let resp = super::spinner::while_waiting(
        waiting,
        client.send(
            client
                .request(reqwest::Method::POST, path)
                .header("content-type", "application/yaml")
                .body(body),
        ),
    )
    .await?;
    let result: ApplyResult = decode(resp)?;
    print::apply_result(&result, dry_run);
    Ok(())
}

/// `global export`: what `GET /export` answers, printed as documents `apply -f` takes back.
pub(super) async fn export(
    output: ExportFormat,
    include_secrets: bool,
    api: &ApiArgs,
) -> Result<(), Failure> {
    let client = Client::new(api)?;
    let path = if include_secrets {
        "/export?includeSecrets=true"
    } else {
        "/export"
    };
    let body = client.get_all(path).await?;
    print::export(output, &items::<Value>(body)?);
    Ok(())
}

pub(super) async fn get(
    what: GetKind,
    name: Option<String>,
    mesh: &str,
    output: Format,
    api: &ApiArgs,
) -> Result<(), Failure> {
    let client = Client::new(api)?;
    let path = match (what, &name) {
        (GetKind::Meshes | GetKind::Mesh, None) => "/meshes".to_string(),
        (GetKind::Meshes | GetKind::Mesh, Some(n)) => format!("/meshes/{n}"),
        (GetKind::Secrets | GetKind::Secret, None) => format!("/meshes/{mesh}/secrets"),
        (GetKind::Secrets | GetKind::Secret, Some(n)) => format!("/meshes/{mesh}/secrets/{n}"),
        (GetKind::Zones | GetKind::Zone, None) => "/zones".to_string(),
        (GetKind::Zones | GetKind::Zone, Some(n)) => format!("/zones/{n}"),
        (GetKind::Dataplanes, _) => format!("/meshes/{mesh}/dataplanes"),
        (GetKind::Replicas, _) => "/replicas".to_string(),
        (GetKind::SigningKeys, _) => "/tokens/signing-keys".to_string(),
        (GetKind::RevokedTokens, _) => "/tokens/revoked".to_string(),
    };
    let body = client.get_all(&path).await?;
    match output {
        // What global answered (every page of a list), as it answered it.
        Format::Json | Format::Yaml => print::document(output, &body),
        Format::Table => match what {
            GetKind::Meshes | GetKind::Mesh => print::meshes(&items::<ResourceView>(body)?),
            GetKind::Secrets | GetKind::Secret => print::secrets(&items::<ResourceView>(body)?),
            GetKind::Zones | GetKind::Zone => print::zones(&items::<ZoneView>(body)?),
            GetKind::Replicas => {
                let mut replicas = items::<ReplicaView>(body)?;
                // A NAME narrows the list to that replica id.
                if let Some(n) = &name {
                    replicas.retain(|r| &r.id == n);
                }
                print::replicas(&replicas)
            }
            GetKind::SigningKeys => print::signing_keys(&items(body)?),
            GetKind::RevokedTokens => print::revoked(&items(body)?),
            GetKind::Dataplanes => {
                let mut dataplanes = items::<DataplaneView>(body)?;
                // Dataplanes are listed per mesh; a NAME narrows the list.
                if let Some(n) = &name {
                    dataplanes.retain(|d| &d.name == n);
                }
                print::dataplanes(&dataplanes)
            }
        },
    }
    Ok(())
}

pub(super) async fn delete(
    what: DeleteKind,
    name: &str,
    mesh: &str,
    api: &ApiArgs,
) -> Result<(), Failure> {
    let client = Client::new(api)?;
    let path = match what {
        DeleteKind::Mesh => format!("/meshes/{name}"),
        DeleteKind::Secret => format!("/meshes/{mesh}/secrets/{name}"),
        DeleteKind::Zone => format!("/zones/{name}"),
    };
    client
        .send(client.request(reqwest::Method::DELETE, &path))
        .await?;
    match what {
        DeleteKind::Mesh => println!("mesh {name:?} deleted"),
        DeleteKind::Secret => println!("secret {name:?} (mesh {mesh:?}) deleted"),
        DeleteKind::Zone => println!("zone {name:?} deleted"),
    }
    Ok(())
}

/// Posts a token request and reads the token of the answer, asked as JSON to have its id and
/// expiry too (the API answers the token alone as `text/plain` otherwise).
async fn request_token<T: DeserializeOwned>(
    api: &ApiArgs,
    path: &str,
    body: &impl serde::Serialize,
) -> Result<T, Failure> {
    let client = Client::new(api)?;
    let resp = client
        .send(
            client
                .request(reqwest::Method::POST, path)
                .header(reqwest::header::ACCEPT, "application/json")
                .json(body),
        )
        .await?;
    serde_json::from_value(resp).map_err(|_| Failure::refused("global answered without a token"))
}

/// Says on stderr the id of a token just printed (what `revoke-token --id` takes).
fn say_id(id: &str, expires: &str) {
    if !id.is_empty() {
        eprintln!("token id {id} (revoke with `global revoke-token --id {id}`), expires {expires}");
    }
}

/// `zone-token`: asks the running global (admin token needed) and prints the token alone.
pub(super) async fn zone_token(args: &ZoneTokenArgs) -> Result<(), Failure> {
    let (zone, valid_for, api) = (&args.zone, &args.valid_for, &args.api);
    crate::tokens::check_zone_name(zone).map_err(Failure::usage)?;
    common::duration::parse_duration(valid_for)
        .map_err(|e| Failure::usage(format!("--valid-for: {e}")))?;
    let request = ZoneTokenRequest {
        zone: zone.to_string(),
        valid_for: Some(valid_for.to_string()),
    };
    let answer: ZoneToken = request_token(api, "/tokens/zone", &request).await?;
    println!("{}", answer.token);
    say_id(&answer.id, &answer.expires);
    Ok(())
}

/// `dataplane-token`: asks the running global (admin token needed) and prints the token alone.
pub(super) async fn dataplane_token(args: &DataplaneTokenArgs) -> Result<(), Failure> {
    let (mesh, name, service, tags, any_service, valid_for, api) = (
        &args.mesh,
        &args.name,
        args.service.as_deref(),
        &args.tags,
        args.any_service,
        &args.valid_for,
        &args.api,
    );
    let mut bound = std::collections::BTreeMap::new();
    for t in tags {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--tag {t:?}: expected K=V")))?;
        bound.insert(k.to_string(), v.to_string());
    }
    crate::tokens::dataplane_claim(mesh, name, service, &bound, any_service).map_err(|errs| {
        Failure::usage(
            errs.errors
                .iter()
                .map(|e| format!("--{}: {}", e.field, e.reason))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    common::duration::parse_duration(valid_for)
        .map_err(|e| Failure::usage(format!("--valid-for: {e}")))?;
    let request = DataplaneTokenRequest {
        mesh: mesh.to_string(),
        name: name.to_string(),
        service: service.map(str::to_string),
        tags: bound,
        any_service,
        valid_for: Some(valid_for.to_string()),
    };
    let answer: DataplaneToken = request_token(api, "/tokens/dataplane", &request).await?;
    println!("{}", answer.token);
    say_id(&answer.id, &answer.expires);
    Ok(())
}

/// `generate user-token`: asks the running global (admin) and prints the token alone.
pub(super) async fn user_token(args: &UserTokenArgs) -> Result<(), Failure> {
    common::duration::parse_duration(&args.valid_for)
        .map_err(|e| Failure::usage(format!("--valid-for: {e}")))?;
    let request = UserTokenRequest {
        name: args.name.clone(),
        group: args.group.clone(),
        meshes: args.meshes.clone(),
        valid_for: Some(args.valid_for.clone()),
    };
    crate::api::tokens::user_claim(&request).map_err(|errs| {
        Failure::usage(
            errs.errors
                .iter()
                .map(|e| {
                    let flag = if e.field.starts_with("meshes") {
                        "mesh"
                    } else {
                        &e.field
                    };
                    format!("--{flag}: {}", e.reason)
                })
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let answer: UserToken = request_token(&args.api, "/tokens/user", &request).await?;
    println!("{}", answer.token);
    say_id(&answer.id, &answer.expires);
    Ok(())
}

/// `revoke-token`: by id, or the id read from a token file.
pub(super) async fn revoke_token(
    id: Option<String>,
    from_file: Option<&std::path::Path>,
    api: &ApiArgs,
) -> Result<(), Failure> {
    let id = match (id, from_file) {
        (Some(id), _) => id,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::usage(format!("cannot read --from-file {}: {e}", path.display()))
            })?;
            common::tokens::token_id(&text)
                .map_err(|e| Failure::usage(format!("--from-file {}: {e}", path.display())))?
                .jti
        }
        (None, None) => return Err(Failure::usage("give --id or --from-file")),
    };
    let client = Client::new(api)?;
    let body = client
        .send(
            client
                .request(reqwest::Method::POST, "/tokens/revoke")
                .json(&RevokeRequest { id }),
        )
        .await?;
    let answer: Revoked = decode(body)?;
    println!("token {}: {}", answer.id, answer.result);
    Ok(())
}

/// `rotate-signing-key`: prints the keys after the rotation.
pub(super) async fn rotate_signing_key(api: &ApiArgs) -> Result<(), Failure> {
    let client = Client::new(api)?;
    let body = client
        .send(client.request(reqwest::Method::POST, "/tokens/signing-keys"))
        .await?;
    print::signing_keys(&items(body)?);
    Ok(())
}

/// `retire-signing-key --kid KID`: prints the keys left.
pub(super) async fn retire_signing_key(kid: &str, api: &ApiArgs) -> Result<(), Failure> {
    let client = Client::new(api)?;
    let path = format!("/tokens/signing-keys/{}", urlencoding(kid));
    let body = client
        .send(client.request(reqwest::Method::DELETE, &path))
        .await?;
    print::signing_keys(&items(body)?);
    Ok(())
}

/// A path segment with everything but unreserved characters percent-encoded.
fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
