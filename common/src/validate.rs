//! Semantic validation of resources after parsing: names, the mTLS backends of a Mesh and each
//! backend's conf (vault address, PKI path and role, commonName template, TLS and auth settings,
//! data sources and the Secrets they reference), Secrets and Dataplanes. This module owns the rules;
//! every problem is reported (not just the first), each with the field path as the user wrote it
//! (`mtls.backends[0].conf.fromCp.auth`) and a reason an operator can act on. Reasons never echo
//! secret material, and echo other values only shortened.

use std::collections::HashMap;

use base64::Engine;

use crate::ValidationErrors;
use crate::datasource::SecretLookup;
use crate::limits::DATA_BYTES;
use crate::model::{
    BackendConf, BuiltinConf, DataSource, Dataplane, FromCp, Mesh, ProvidedConf, Resource,
    SERVICE_TAG, Secret,
};
use crate::parse::key_path;
use crate::template;

/// Most backends a Mesh may define.
pub const MAX_BACKENDS: usize = 32;
/// Longest string accepted in any field that is not data (names, addresses, paths, tags...).
pub const MAX_STRING_LEN: usize = 4096;
/// Longest tag key or value.
pub const MAX_TAG_LEN: usize = 253;
/// Most tags one proxy registers.
pub const MAX_TAGS: usize = 64;
/// Most bytes of tag keys and values one proxy registers, in all.
pub const MAX_TAG_BYTES: usize = 8 * 1024;
/// Shortest proxy certificate lifetime.
pub const MIN_DP_CERT_EXPIRATION: std::time::Duration = std::time::Duration::from_secs(1);
/// Shortest builtin CA lifetime.
pub const MIN_CA_EXPIRATION: std::time::Duration = std::time::Duration::from_secs(3600);
/// RSA key sizes a builtin CA may use.
pub const RSA_BITS: [u32; 3] = [2048, 3072, 4096];

/// Validates any resource. Secrets referenced by a Mesh are looked up in `secrets`.
pub fn validate_resource(r: &Resource, secrets: &dyn SecretLookup) -> Result<(), ValidationErrors> {
    match r {
        Resource::Mesh(m) => validate_mesh(m, secrets),
        Resource::Secret(s) => validate_secret(s),
        Resource::Dataplane(d) => validate_dataplane(d),
    }
}

/// Validates a Mesh and its mTLS backends; data sources of type `secret` must name Secrets that
/// exist in this mesh.
pub fn validate_mesh(mesh: &Mesh, secrets: &dyn SecretLookup) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::new();
    if !too_long("name", &mesh.name, &mut errs) {
        validate_mesh_name("name", &mesh.name, &mut errs);
    }
    let mesh_name = errs.is_empty().then_some(mesh.name.as_str());
    if mesh.type_ != "Mesh" {
        errs.push("type", format!("must be Mesh, found {}", show(&mesh.type_)));
    }
    validate_labels("labels", &mesh.labels, &mut errs);
    if let Some(mtls) = &mesh.mtls {
        let backends = &mtls.backends;
        if backends.len() > MAX_BACKENDS {
            errs.push(
                "mtls.backends",
                format!(
                    "at most {MAX_BACKENDS} backends are allowed, found {}",
                    backends.len()
                ),
            );
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, backend) in backends.iter().enumerate().take(MAX_BACKENDS) {
            let base = format!("mtls.backends[{i}]");
            let name_field = format!("{base}.name");
            if !too_long(&name_field, &backend.name, &mut errs) {
                let before = errs.errors.len();
                validate_object_name(&name_field, &backend.name, &mut errs);
                if errs.errors.len() == before
                    && backend.backend_type() == Some(crate::model::BackendType::Builtin)
                    && let Some(mesh) = mesh_name
                {
                    check_builtin_secret_names(&name_field, mesh, &backend.name, &mut errs);
                }
                if let Some(first) = seen.get(backend.name.as_str()) {
                    errs.push(
                        &name_field,
                        format!(
                            "duplicate of backends[{first}]: backend names must be unique, {} is already used",
                            show(&backend.name)
                        ),
                    );
                } else {
                    seen.insert(&backend.name, i);
                }
            }
            validate_backend(&base, backend, mesh_name, secrets, &mut errs);
        }
        if let Some(enabled) = mtls.enabled_backend.as_deref().filter(|e| !e.is_empty())
            && !too_long("mtls.enabledBackend", enabled, &mut errs)
            && !backends.iter().any(|b| b.name == enabled)
        {
            let reason = if backends.is_empty() {
                format!(
                    "names backend {} but no backends are defined: add it under mtls.backends",
                    show(enabled)
                )
            } else {
                let names: Vec<String> = backends
                    .iter()
                    .take(MAX_BACKENDS)
                    .map(|b| show(&b.name))
                    .collect();
                format!(
                    "no backend named {}: must be one of {}",
                    show(enabled),
                    names.join(", ")
                )
            };
            errs.push("mtls.enabledBackend", reason);
        }
    }
    errs.into_result()
}

/// A builtin backend's CA is stored in the Secrets `<mesh>.ca-builtin-cert-<backend>` and
/// `<mesh>.ca-builtin-key-<backend>` (Kuma's names): a backend name that would make either an
/// invalid Secret name is refused on the backend's `name`, as Kuma refuses it.
fn check_builtin_secret_names(
    name_field: &str,
    mesh: &str,
    backend: &str,
    errs: &mut ValidationErrors,
) {
    let (cert, key) = crate::ca::builtin_secret_names(mesh, backend);
    for secret in [cert, key] {
        let mut problems = ValidationErrors::new();
        validate_object_name("", &secret, &mut problems);
        if let Some(p) = problems.errors.first() {
            let kind = if secret.contains("-cert-") {
                "cert"
            } else {
                "key"
            };
            let longest = 253usize.saturating_sub(secret.len() - backend.len());
            let why = if secret.len() > 253 {
                format!(
                    "would be {} characters long, and a Secret name is at most 253: with mesh {} a builtin backend's name may be at most {longest} characters",
                    secret.len(),
                    show(mesh)
                )
            } else {
                format!("would not be a valid Secret name: {}", p.reason)
            };
            errs.push(
                name_field,
                format!(
                    "a builtin backend's CA is kept in the Secret <mesh>.ca-builtin-{kind}-<backend name>, which {why}"
                ),
            );
            return;
        }
    }
}

fn validate_backend(
    base: &str,
    backend: &crate::model::Backend,
    mesh: Option<&str>,
    secrets: &dyn SecretLookup,
    errs: &mut ValidationErrors,
) {
    let type_field = format!("{base}.type");
    if backend.backend_type().is_none() {
        if !too_long(&type_field, &backend.type_, errs) {
            errs.push(
                type_field,
                format!(
                    "unknown backend type {}: must be builtin, provided or vault",
                    show(&backend.type_)
                ),
            );
        }
        // The conf cannot be checked without knowing its type.
        return;
    }
    if let Some(exp) = backend
        .dp_cert
        .as_ref()
        .and_then(|d| d.rotation.as_ref())
        .and_then(|r| r.expiration.as_ref())
        && exp.as_duration() < MIN_DP_CERT_EXPIRATION
    {
        errs.push(
            format!("{base}.dpCert.rotation.expiration"),
            format!(
                "must be at least 1s, found {}: proxies renew their certificate before it runs out, e.g. 24h",
                show(exp.as_str())
            ),
        );
    }
    if let Some(d) = &backend.dp_cert
        && d.key_type.is_some()
        && backend.key_generation() != crate::model::KeyGeneration::Proxy
    {
        errs.push(
            format!("{base}.dpCert.keyType"),
            "applies only with dpCert.keyGeneration: proxy (the control plane's keys follow the CA: Vault's role key_type, or EC P-256 for builtin and provided)".to_string(),
        );
    }
    let conf_field = format!("{base}.conf");
    match backend.typed_conf() {
        Err(e) => {
            let field = if e.path.is_empty() {
                conf_field
            } else if e.path.starts_with('[') {
                format!("{conf_field}{}", e.path)
            } else {
                format!("{conf_field}.{}", e.path)
            };
            errs.push(field, e.reason);
        }
        Ok(BackendConf::Builtin(c)) => validate_builtin(&conf_field, &c, errs),
        Ok(BackendConf::Provided(c)) => validate_provided(&conf_field, &c, mesh, secrets, errs),
        Ok(BackendConf::Vault(v)) => match &v.from_cp {
            None => errs.push(
                format!("{conf_field}.fromCp"),
                "missing: a vault backend needs fromCp with the Vault address, pki, role and auth",
            ),
            Some(fc) => validate_from_cp(&format!("{conf_field}.fromCp"), fc, mesh, secrets, errs),
        },
    }
}

fn validate_builtin(base: &str, c: &BuiltinConf, errs: &mut ValidationErrors) {
    let Some(ca) = &c.ca_cert else { return };
    if let Some(bits) = ca.rsa_bits
        && !RSA_BITS.contains(&bits)
    {
        errs.push(
            format!("{base}.caCert.RSAbits"),
            format!("must be 2048, 3072 or 4096, found {bits}"),
        );
    }
    if let Some(exp) = &ca.expiration
        && exp.as_duration() < MIN_CA_EXPIRATION
    {
        errs.push(
            format!("{base}.caCert.expiration"),
            format!(
                "must be at least 1h, found {}: the CA must outlive the certificates it signs, e.g. 10y",
                show(exp.as_str())
            ),
        );
    }
}

fn validate_provided(
    base: &str,
    c: &ProvidedConf,
    mesh: Option<&str>,
    secrets: &dyn SecretLookup,
    errs: &mut ValidationErrors,
) {
    for (key, ds, what) in [
        ("cert", &c.cert, "the CA certificate (PEM)"),
        ("key", &c.key, "the CA private key (PEM)"),
    ] {
        let missing =
            format!("missing: {what} as a data source (secret, file, inline or inlineString)");
        let field = format!("{base}.{key}");
        required_data_source(&field, ds.as_ref(), missing, mesh, secrets, errs);
    }
}

fn validate_from_cp(
    base: &str,
    fc: &FromCp,
    mesh: Option<&str>,
    secrets: &dyn SecretLookup,
    errs: &mut ValidationErrors,
) {
    let address_field = format!("{base}.address");
    let mut https = false;
    if fc.address.is_empty() {
        errs.push(
            address_field,
            "missing: the address of Vault as seen from the control planes, e.g. https://vault:8200",
        );
    } else if !too_long(&address_field, &fc.address, errs) {
        https = fc.address.starts_with("https://");
        check_url(&address_field, &fc.address, errs);
    }
    let agent_field = format!("{base}.agentAddress");
    if !fc.agent_address.is_empty() && !too_long(&agent_field, &fc.agent_address, errs) {
        check_url(&agent_field, &fc.agent_address, errs);
    }
    let ns_field = format!("{base}.namespace");
    if !fc.namespace.is_empty() && !too_long(&ns_field, &fc.namespace, errs) {
        check_vault_path(&ns_field, &fc.namespace, true, errs);
    }
    let pki_field = format!("{base}.pki");
    if fc.pki.is_empty() {
        errs.push(
            pki_field,
            "missing: the mount path of the PKI secrets engine in Vault, e.g. kmesh-pki-default",
        );
    } else if !too_long(&pki_field, &fc.pki, errs) {
        check_vault_path(&pki_field, &fc.pki, true, errs);
    }
    let role_field = format!("{base}.role");
    if fc.role.is_empty() {
        errs.push(
            role_field,
            "missing: the PKI role that issues proxy certificates, e.g. dataplane-proxies",
        );
    } else if !too_long(&role_field, &fc.role, errs) {
        check_vault_path(&role_field, &fc.role, false, errs);
    }
    if !fc.common_name.is_empty()
        && let Err(e) = template::parse(&fc.common_name)
    {
        errs.push(
            format!("{base}.commonName"),
            format!("invalid template: {e} (e.g. '{{{{ tag \"kuma.io/service\" }}}}.mesh')"),
        );
    }

    // TLS towards Vault.
    let skip_verify = fc.tls.as_ref().is_some_and(|t| t.skip_verify);
    let ca_field = format!("{base}.tls.caCert");
    match fc.tls.as_ref().and_then(|t| t.ca_cert.as_ref()) {
        Some(ds) => validate_data_source(&ca_field, ds, mesh, secrets, errs),
        None if https && !skip_verify => errs.push(
            ca_field,
            "missing: Vault is reached over https, so the CA certificate that signed its server certificate is needed (or set tls.skipVerify: true, for development only)",
        ),
        None => {}
    }
    if let Some(tls) = &fc.tls {
        let sn_field = format!("{base}.tls.serverName");
        if !tls.server_name.is_empty() && !too_long(&sn_field, &tls.server_name, errs) {
            check_host_name(&sn_field, &tls.server_name, errs);
        }
    }

    // Authentication: exactly one of token, tls, approle or jwt (none needed through a Vault
    // Agent).
    let auth_field = format!("{base}.auth");
    match &fc.auth {
        None if fc.agent_address.is_empty() => errs.push(
            auth_field,
            "missing: set exactly one of auth.token, auth.tls, auth.approle or auth.jwt (or agentAddress, to go through a Vault Agent)",
        ),
        None => {}
        Some(auth) => {
            let methods = auth.methods();
            match methods.len() {
                1 => {}
                0 => errs.push(
                    &auth_field,
                    "exactly one of token, tls, approle or jwt must be set, found none",
                ),
                _ => errs.push(
                    &auth_field,
                    format!(
                        "exactly one of token, tls, approle or jwt must be set, found {}: keep the one Vault is configured for",
                        methods.join(" and ")
                    ),
                ),
            }
            if let Some(token) = &auth.token {
                validate_data_source(&format!("{auth_field}.token"), token, mesh, secrets, errs);
            }
            if let Some(tls) = &auth.tls {
                for (key, ds, what) in [
                    ("clientKey", &tls.client_key, "the client private key (PEM)"),
                    ("clientCert", &tls.client_cert, "the client certificate (PEM)"),
                ] {
                    let missing = format!("missing: TLS authentication needs {what} as a data source");
                    let field = format!("{auth_field}.tls.{key}");
                    required_data_source(&field, ds.as_ref(), missing, mesh, secrets, errs);
                }
            }
            if let Some(approle) = &auth.approle {
                let base = format!("{auth_field}.approle");
                for (key, ds, what) in [
                    ("roleId", &approle.role_id, "the role ID (vault read auth/approle/role/NAME/role-id)"),
                    ("secretId", &approle.secret_id, "a secret ID (vault write -f auth/approle/role/NAME/secret-id)"),
                ] {
                    let missing = format!("missing: an AppRole login needs {what} as a data source");
                    required_data_source(&format!("{base}.{key}"), ds.as_ref(), missing, mesh, secrets, errs);
                }
                check_auth_mount(&format!("{base}.mount"), &approle.mount, errs);
            }
            if let Some(jwt) = &auth.jwt {
                let base = format!("{auth_field}.jwt");
                let role_field = format!("{base}.role");
                if jwt.role.trim().is_empty() {
                    errs.push(
                        role_field,
                        "missing: the role of Vault's JWT auth method to log in with (vault write auth/jwt/role/NAME ...)",
                    );
                } else if !too_long(&role_field, &jwt.role, errs) {
                    check_vault_path(&role_field, &jwt.role, false, errs);
                }
                required_data_source(
                    &format!("{base}.token"),
                    jwt.token.as_ref(),
                    "missing: a JWT login needs the JWT as a data source (e.g. file: /var/run/secrets/tokens/vault)".to_string(),
                    mesh,
                    secrets,
                    errs,
                );
                check_auth_mount(&format!("{base}.mount"), &jwt.mount, errs);
            }
        }
    }
}

/// The mount of an auth method (`approle`, `jwt`, `auth/` not included): empty for the default,
/// else a Vault path.
fn check_auth_mount(field: &str, mount: &str, errs: &mut ValidationErrors) {
    if mount.is_empty() || too_long(field, mount, errs) {
        return;
    }
    if mount.trim_matches('/').starts_with("auth/") {
        errs.push(
            field,
            format!(
                "the mount is given without auth/ (e.g. approle for auth/approle), found {}",
                show(mount)
            ),
        );
        return;
    }
    check_vault_path(field, mount, true, errs);
}

/// A data source that must be set: `missing` when it is not, else [`validate_data_source`].
fn required_data_source(
    field: &str,
    ds: Option<&DataSource>,
    missing: String,
    mesh: Option<&str>,
    secrets: &dyn SecretLookup,
    errs: &mut ValidationErrors,
) {
    match ds {
        None => errs.push(field, missing),
        Some(ds) => validate_data_source(field, ds, mesh, secrets, errs),
    }
}

/// A data source: exactly one of secret, file, inline, inlineString, each well-formed, and a
/// referenced Secret present in the mesh.
fn validate_data_source(
    field: &str,
    ds: &DataSource,
    mesh: Option<&str>,
    secrets: &dyn SecretLookup,
    errs: &mut ValidationErrors,
) {
    let set: Vec<&str> = [
        ("secret", ds.secret.is_some()),
        ("file", ds.file.is_some()),
        ("inline", ds.inline.is_some()),
        ("inlineString", ds.inline_string.is_some()),
    ]
    .iter()
    .filter(|(_, is_set)| *is_set)
    .map(|(k, _)| *k)
    .collect();
    if set.len() != 1 {
        let found = if set.is_empty() {
            "none".to_string()
        } else {
            set.join(" and ")
        };
        errs.push(
            field,
            format!("exactly one of secret, file, inline, inlineString must be set, found {found}"),
        );
        return;
    }
    if let Some(name) = &ds.secret {
        let f = format!("{field}.secret");
        if too_long(&f, name, errs) {
            return;
        }
        let before = errs.errors.len();
        validate_object_name(&f, name, errs);
        // Without a valid mesh name (reported on `name`) there is no mesh to look in.
        if errs.errors.len() == before
            && let Some(mesh) = mesh
            && secrets.secret_data(mesh, name).is_none()
        {
            errs.push(
                f,
                format!(
                    "secret {} not found in mesh {}: create it first",
                    show(name),
                    show(mesh)
                ),
            );
        }
    }
    if let Some(path) = &ds.file {
        let f = format!("{field}.file");
        if too_long(&f, path, errs) {
            return;
        }
        if !path.starts_with('/') {
            errs.push(
                f,
                format!(
                    "must be an absolute path (on the host of the control plane), found {}",
                    show(path)
                ),
            );
        } else if path.chars().any(char::is_control) {
            errs.push(f, "must not contain control characters");
        }
    }
    if let Some(b64) = &ds.inline {
        let f = format!("{field}.inline");
        check_base64(&f, b64, errs);
    }
    if let Some(text) = &ds.inline_string {
        let f = format!("{field}.inlineString");
        if text.is_empty() {
            errs.push(f, "must not be empty");
        } else if text.len() > DATA_BYTES {
            errs.push(
                f,
                format!("is {} bytes: at most 1 MiB is allowed", text.len()),
            );
        }
    }
}

/// Base64 as `Secret::decode` and data sources read it (standard alphabet, padding, surrounding
/// whitespace ignored), non-empty and at most [`DATA_BYTES`] decoded.
fn check_base64(field: &str, data: &str, errs: &mut ValidationErrors) {
    let trimmed = data.trim();
    if trimmed.is_empty() {
        errs.push(field, "must not be empty: expected base64 data");
        return;
    }
    if trimmed.len() > (DATA_BYTES / 3 + 1) * 4 {
        errs.push(
            field,
            format!(
                "decodes to more than 1 MiB ({} base64 characters)",
                trimmed.len()
            ),
        );
        return;
    }
    if trimmed.contains(['\n', '\r']) {
        errs.push(
            field,
            "is not valid base64: it contains line breaks (encode with `base64 -w0`)",
        );
        return;
    }
    match base64::engine::general_purpose::STANDARD.decode(trimmed) {
        Ok(bytes) if bytes.len() > DATA_BYTES => errs.push(
            field,
            format!("decodes to {} bytes: at most 1 MiB is allowed", bytes.len()),
        ),
        Ok(bytes) if bytes.is_empty() => errs.push(field, "must not be empty"),
        Ok(_) => {}
        Err(e) => errs.push(
            field,
            format!(
                "is not valid base64 (standard alphabet, with = padding): {}",
                describe_base64_error(&e)
            ),
        ),
    }
}

/// A base64 error without the offending byte, which may be part of a secret.
fn describe_base64_error(e: &base64::DecodeError) -> String {
    use base64::DecodeError as D;
    match e {
        D::InvalidByte(offset, _) => format!("invalid character at offset {offset}"),
        D::InvalidLength(len) => format!("invalid length {len}"),
        D::InvalidLastSymbol(offset, _) => format!("invalid last character at offset {offset}"),
        D::InvalidPadding => "invalid padding".to_string(),
    }
}

/// An http or https URL with a host.
fn check_url(field: &str, value: &str, errs: &mut ValidationErrors) {
    let example = "e.g. https://vault:8200";
    if value.trim() != value {
        errs.push(field, "must not have leading or trailing spaces");
        return;
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        errs.push(
            field,
            format!(
                "{} is not a URL: expected http:// or https:// and a host, {example}",
                show(value)
            ),
        );
        return;
    };
    if scheme != "http" && scheme != "https" {
        errs.push(
            field,
            format!(
                "must be an http or https URL, found scheme {}",
                show(scheme)
            ),
        );
        return;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    if host_port.is_empty() || host_port.starts_with(':') {
        errs.push(field, format!("has no host: {example}"));
        return;
    }
    if let Some((name, port)) = dotted_port_typo(host_port) {
        errs.push(
            field,
            format!(
                "host {} is not valid: it looks like {} with the port's colon typed as a dot; write {scheme}://{name}:{port}",
                show(host_port),
                show(&format!("{name}:{port}"))
            ),
        );
        return;
    }
    match url::Url::parse(value) {
        Err(e) => errs.push(
            field,
            format!("{} is not a valid URL: {e} ({example})", show(value)),
        ),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => {
            errs.push(field, format!("has no host: {example}"))
        }
        Ok(_) => {}
    }
}

/// `vault.8200`: a host name whose last label is a port number.
fn dotted_port_typo(host_port: &str) -> Option<(&str, &str)> {
    if host_port.contains(':') || host_port.starts_with('[') {
        return None;
    }
    let (name, last) = host_port.rsplit_once('.')?;
    if last.is_empty() || last.len() > 5 || !last.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u32 = last.parse().ok()?;
    if port == 0 || port > 65535 {
        return None;
    }
    // All-numeric labels are an IPv4 address, not a typo.
    if name
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    if name.is_empty() {
        return None;
    }
    Some((name, last))
}

/// A TLS server name: a DNS name (letters, digits, '-', '.').
fn check_host_name(field: &str, value: &str, errs: &mut ValidationErrors) {
    let ok = value.len() <= 253
        && value.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !ok {
        errs.push(
            field,
            format!(
                "{} is not a valid DNS name: the name in Vault's server certificate, e.g. vault.example.com",
                show(value)
            ),
        );
    }
}

/// A Vault path (`pki`, `namespace`) or path segment (`role`).
fn check_vault_path(field: &str, value: &str, allow_slash: bool, errs: &mut ValidationErrors) {
    let problem = if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not contain spaces or control characters".to_string())
    } else if value.starts_with('/') || value.ends_with('/') {
        Some("must not start or end with '/'".to_string())
    } else if !allow_slash && value.contains('/') {
        Some("must be a single name without '/'".to_string())
    } else if value.contains("//") {
        Some("must not contain empty segments ('//')".to_string())
    } else if value.contains("..") || value.split('/').any(|s| s == ".") {
        Some("must not contain '..' or '.' segments".to_string())
    } else if value.contains(['?', '#', '%', '\\', '*', '+', '"']) {
        Some("must not contain '?', '#', '%', '\\', '*', '+' or '\"'".to_string())
    } else {
        None
    };
    if let Some(p) = problem {
        errs.push(field, format!("{} {p}", show(value)));
    }
}

/// Validates a Secret: names, and data that is base64 of at most 1 MiB.
pub fn validate_secret(secret: &Secret) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::new();
    if secret.type_ != "Secret" {
        errs.push(
            "type",
            format!("must be Secret, found {}", show(&secret.type_)),
        );
    }
    if !too_long("name", &secret.name, &mut errs) {
        validate_object_name("name", &secret.name, &mut errs);
    }
    if !too_long("mesh", &secret.mesh, &mut errs) {
        validate_mesh_name("mesh", &secret.mesh, &mut errs);
    }
    validate_labels("labels", &secret.labels, &mut errs);
    check_base64("data", &secret.data, &mut errs);
    errs.into_result()
}

/// Validates a Dataplane: names, and inbounds each tagged with `kuma.io/service`.
pub fn validate_dataplane(dp: &Dataplane) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::new();
    if dp.type_ != "Dataplane" {
        errs.push(
            "type",
            format!("must be Dataplane, found {}", show(&dp.type_)),
        );
    }
    if !too_long("name", &dp.name, &mut errs) {
        validate_object_name("name", &dp.name, &mut errs);
    }
    if !too_long("mesh", &dp.mesh, &mut errs) {
        validate_mesh_name("mesh", &dp.mesh, &mut errs);
    }
    validate_labels("labels", &dp.labels, &mut errs);
    let address = &dp.networking.address;
    if !address.is_empty()
        && !too_long("networking.address", address, &mut errs)
        && address.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        errs.push(
            "networking.address",
            "must not contain spaces or control characters",
        );
    }
    if dp.networking.inbound.is_empty() {
        errs.push(
            "networking.inbound",
            format!("at least one inbound is required, with tags including {SERVICE_TAG}"),
        );
    }
    for (i, inbound) in dp.networking.inbound.iter().enumerate() {
        let base = format!("networking.inbound[{i}]");
        if inbound.port == Some(0) {
            errs.push(format!("{base}.port"), "must be between 1 and 65535");
        }
        let tags_field = format!("{base}.tags");
        if !inbound.tags.contains_key(SERVICE_TAG) {
            errs.push(
                key_path(&tags_field, SERVICE_TAG),
                format!("missing: every inbound needs the {SERVICE_TAG} tag naming its service"),
            );
        }
        if inbound.tags.len() > MAX_TAGS {
            errs.push(
                &tags_field,
                format!(
                    "{} tags: a proxy registers at most {MAX_TAGS}",
                    inbound.tags.len()
                ),
            );
        }
        let bytes: usize = inbound.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > MAX_TAG_BYTES {
            errs.push(
                &tags_field,
                format!("{bytes} bytes of tags: a proxy registers at most {MAX_TAG_BYTES} in all"),
            );
        }
        for (k, v) in inbound.tags.iter().take(MAX_TAGS + 1) {
            validate_tag(&tags_field, k, v, &mut errs);
        }
    }
    errs.into_result()
}

/// Checks one tag against the rules that keep every URI SAN made of it valid: a key of letters,
/// digits and `. - _ / :` in segments that are neither empty nor `.`/`..`; a value of letters,
/// digits and `. - _ :` that is not `.`/`..` (a service's value, which is a SPIFFE ID's path,
/// without `:`). Named per tag, never echoing more than 64 characters of it.
pub fn validate_tag(parent: &str, key: &str, value: &str, errs: &mut ValidationErrors) {
    let field = key_path(parent, &shorten(key, 64));
    let dots = |s: &str| s == "." || s == "..";
    if key.is_empty() {
        errs.push(&field, "tag key must not be empty");
    } else if key.len() > MAX_TAG_LEN {
        errs.push(
            &field,
            format!("tag key is longer than {MAX_TAG_LEN} characters"),
        );
    } else if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':')))
    {
        errs.push(
            &field,
            format!(
                "tag key holds {c:?}: only letters, digits and . - _ / : are allowed (it becomes part of a URI)"
            ),
        );
    } else if key.split('/').any(|seg| seg.is_empty() || dots(seg)) {
        errs.push(
            &field,
            "tag key has an empty, `.` or `..` segment between its slashes",
        );
    }
    let spiffe = key == SERVICE_TAG;
    if value.is_empty() {
        errs.push(&field, "tag value must not be empty");
    } else if value.len() > MAX_TAG_LEN {
        errs.push(
            &field,
            format!("tag value is longer than {MAX_TAG_LEN} characters"),
        );
    } else if let Some(c) = value.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') || (*c == ':' && !spiffe))
    }) {
        errs.push(
            &field,
            if spiffe {
                format!(
                    "service name holds {c:?}: only letters, digits and . - _ are allowed (it is the path of a SPIFFE ID)"
                )
            } else {
                format!(
                    "tag value holds {c:?}: only letters, digits and . - _ : are allowed (it becomes part of a URI)"
                )
            },
        );
    } else if dots(value) {
        errs.push(&field, "tag value must not be `.` or `..`");
    }
}

fn validate_labels(
    parent: &str,
    labels: &std::collections::BTreeMap<String, String>,
    errs: &mut ValidationErrors,
) {
    for (k, v) in labels {
        let field = key_path(parent, &shorten(k, 64));
        if k.is_empty() {
            errs.push(&field, "label key must not be empty");
        } else if k.chars().count() > MAX_TAG_LEN {
            errs.push(
                &field,
                format!("label key is longer than {MAX_TAG_LEN} characters"),
            );
        } else if k.chars().any(char::is_control) {
            errs.push(&field, "label key must not contain control characters");
        }
        if v.chars().count() > MAX_STRING_LEN {
            errs.push(
                &field,
                format!("label value is longer than {MAX_STRING_LEN} characters"),
            );
        } else if v.chars().any(char::is_control) {
            errs.push(&field, "label value must not contain control characters");
        }
    }
}

/// A mesh name: a DNS label (1-63 of `a-z`, `0-9`, `-`, starting and ending with a letter or digit).
pub fn validate_mesh_name(field: &str, name: &str, errs: &mut ValidationErrors) {
    if let Some(p) = dns_label_problem(name) {
        errs.push(
            field,
            format!("{} is not a valid mesh name: {p}", show(name)),
        );
    }
}

/// A resource name: a DNS-1123 subdomain (at most 253 characters; dot-separated labels of `a-z`,
/// `0-9`, `-`, each starting and ending with a letter or digit), e.g. `default.ca-builtin-cert-ca-1`.
pub fn validate_object_name(field: &str, name: &str, errs: &mut ValidationErrors) {
    let problem = if name.is_empty() {
        Some("must not be empty".to_string())
    } else if name.len() > 253 {
        Some(format!(
            "is {} characters long: at most 253 are allowed",
            name.len()
        ))
    } else {
        name.split('.').find_map(|label| {
            if label.is_empty() {
                Some("must not start or end with '.' or contain '..'".to_string())
            } else {
                label_chars_problem(label)
            }
        })
    };
    if let Some(p) = problem {
        errs.push(field, format!("{} is not a valid name: {p}", show(name)));
    }
}

fn dns_label_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_string());
    }
    if name.len() > 63 {
        return Some(format!(
            "is {} characters long: at most 63 are allowed",
            name.len()
        ));
    }
    label_chars_problem(name)
}

fn label_chars_problem(label: &str) -> Option<String> {
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!(
            "invalid character {c:?}: use lowercase letters, digits and '-'"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Some("must start and end with a letter or digit".to_string());
    }
    None
}

/// Reports a string over [`MAX_STRING_LEN`]; true when it was too long (further checks skipped).
fn too_long(field: &str, value: &str, errs: &mut ValidationErrors) -> bool {
    let n = value.chars().count();
    if n > MAX_STRING_LEN {
        errs.push(
            field,
            format!("is {n} characters long: at most {MAX_STRING_LEN} are allowed"),
        );
        true
    } else {
        false
    }
}

/// A user value quoted for a reason, shortened so that reasons stay readable.
fn show(value: &str) -> String {
    format!("{:?}", shorten(value, 64))
}

fn shorten(value: &str, max_chars: usize) -> String {
    if value.chars().count() <= max_chars {
        value.to_string()
    } else {
        let mut s: String = value.chars().take(max_chars).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasource::SecretMap;
    use crate::parse::parse_documents;
    use crate::parse::tests::{SEED_KUBERNETES, SEED_UNIVERSAL};
    use serde_json::{Value, json};

    fn parse_mesh(text: &str) -> Mesh {
        match parse_documents(text).unwrap().pop() {
            Some(Resource::Mesh(m)) => m,
            other => panic!("not a mesh: {other:?}"),
        }
    }

    fn fields(e: &ValidationErrors) -> Vec<&str> {
        e.errors.iter().map(|e| e.field.as_str()).collect()
    }

    fn reason<'a>(e: &'a ValidationErrors, field: &str) -> &'a str {
        e.errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.reason.as_str())
            .unwrap_or_else(|| panic!("no error on {field}: {e}"))
    }

    fn seed_secrets() -> SecretMap {
        let mut s = SecretMap::default();
        s.insert("default", "sec-1", b"ca pem".to_vec());
        s.insert("default", "token-1", b"s.token".to_vec());
        s.insert("default", "sec-2", b"key pem".to_vec());
        s
    }

    const FC: &str = "mtls.backends[0].conf.fromCp";

    #[test]
    fn seed_mesh_is_refused_with_every_problem() {
        for text in [SEED_UNIVERSAL, SEED_KUBERNETES] {
            let mesh = parse_mesh(text);
            let e = validate_mesh(&mesh, &SecretMap::default()).unwrap_err();
            assert_eq!(
                fields(&e),
                [
                    format!("{FC}.address"),
                    format!("{FC}.tls.caCert.secret"),
                    format!("{FC}.auth"),
                    format!("{FC}.auth.token.secret"),
                    format!("{FC}.auth.tls.clientKey.secret"),
                ],
                "{e}"
            );
            let addr = reason(&e, &format!("{FC}.address"));
            assert!(
                addr.contains("\"vault:8200\"") && addr.contains("https://vault:8200"),
                "{addr}"
            );
            assert_eq!(
                reason(&e, &format!("{FC}.auth")),
                "exactly one of token, tls, approle or jwt must be set, found token and tls: keep the one Vault is configured for"
            );
            assert_eq!(
                reason(&e, &format!("{FC}.auth.token.secret")),
                "secret \"token-1\" not found in mesh \"default\": create it first"
            );
            assert!(reason(&e, &format!("{FC}.tls.caCert.secret")).contains("\"sec-1\""));
            assert!(reason(&e, &format!("{FC}.auth.tls.clientKey.secret")).contains("\"sec-2\""));

            // With the secrets present, only the address and the double auth remain.
            let e = validate_mesh(&mesh, &seed_secrets()).unwrap_err();
            assert_eq!(fields(&e), [format!("{FC}.address"), format!("{FC}.auth")]);
        }
    }

    #[test]
    fn corrected_seed_mesh_validates() {
        let text = SEED_UNIVERSAL
            .replace("https://vault.8200", "https://127.0.0.1:8200")
            .replace(
                "          tls:\n            clientKey:\n              secret: sec-2  # can be file, secret or inlineString\n            clientCert:\n              file: /tmp/cert.pem # can be file, secret or inline\n",
                "",
            );
        let mesh = parse_mesh(&text);
        let crate::model::BackendConf::Vault(v) = mesh.backends()[0].typed_conf().unwrap() else {
            panic!()
        };
        assert!(
            v.from_cp.unwrap().auth.unwrap().tls.is_none(),
            "tls auth removed"
        );
        let mut secrets = SecretMap::default();
        secrets.insert("default", "sec-1", b"ca pem".to_vec());
        secrets.insert("default", "token-1", b"s.token".to_vec());
        validate_mesh(&mesh, &secrets).unwrap();
        assert!(validate_resource(&Resource::Mesh(mesh.clone()), &secrets).is_ok());
        // The same secrets in another mesh do not count.
        let mut elsewhere = SecretMap::default();
        elsewhere.insert("other", "sec-1", b"x".to_vec());
        elsewhere.insert("other", "token-1", b"x".to_vec());
        let e = validate_mesh(&mesh, &elsewhere).unwrap_err();
        assert_eq!(
            fields(&e),
            [
                format!("{FC}.tls.caCert.secret"),
                format!("{FC}.auth.token.secret")
            ]
        );
        // TLS auth alone is fine too.
        let tls_only = SEED_UNIVERSAL
            .replace("https://vault.8200", "https://vault:8200")
            .replace(
                "          token:\n            secret: token-1  # can be file, secret or inlineString\n",
                "",
            );
        validate_mesh(&parse_mesh(&tls_only), &seed_secrets()).unwrap();
    }

    /// A valid mesh with one backend of each type, as JSON to be broken by each case.
    fn base() -> Value {
        json!({
            "type": "Mesh",
            "name": "default",
            "mtls": {
                "enabledBackend": "vault-1",
                "backends": [
                    {
                        "name": "vault-1",
                        "type": "vault",
                        "dpCert": {"rotation": {"expiration": "24h"}},
                        "conf": {"fromCp": {
                            "address": "https://vault:8200",
                            "pki": "kmesh-pki-default",
                            "role": "dataplane-proxies",
                            "commonName": "{{ tag \"kuma.io/service\" }}.mesh",
                            "tls": {"caCert": {"secret": "sec-1"}},
                            "auth": {"token": {"secret": "token-1"}}
                        }}
                    },
                    {
                        "name": "ca-1",
                        "type": "builtin",
                        "conf": {"caCert": {"RSAbits": 2048, "expiration": "10y"}}
                    },
                    {
                        "name": "prov-1",
                        "type": "provided",
                        "conf": {
                            "cert": {"inline": "aGk="},
                            "key": {"file": "/etc/ca/key.pem"}
                        }
                    }
                ]
            }
        })
    }

    fn mesh_from(v: Value) -> Mesh {
        match crate::parse::parse_value(v).unwrap() {
            Resource::Mesh(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_builtin_backend_name_must_make_valid_secret_names() {
        let mesh = |mesh_name: &str, backend: &str, type_: &str| {
            mesh_from(json!({
                "type": "Mesh",
                "name": mesh_name,
                "mtls": {"enabledBackend": backend, "backends": [
                    {"name": "ok-1", "type": "builtin"},
                    {"name": backend, "type": type_},
                ]}
            }))
        };
        let none = SecretMap::default();
        // The longest that fits: 253 = mesh + ".ca-builtin-cert-" + backend.
        let m63 = "m".repeat(63);
        let longest = "b".repeat(253 - 63 - ".ca-builtin-cert-".len());
        validate_mesh(&mesh(&m63, &longest, "builtin"), &none).unwrap();
        let too_long = format!("{longest}b");
        let e = validate_mesh(&mesh(&m63, &too_long, "builtin"), &none).unwrap_err();
        assert_eq!(fields(&e), ["mtls.backends[1].name"], "{e}");
        let why = reason(&e, "mtls.backends[1].name");
        assert!(why.contains("ca-builtin-cert-"), "{why}");
        assert!(
            why.contains(&format!("at most {} characters", longest.len())),
            "{why}"
        );
        // A shorter mesh name leaves room; other types store no Secret under the name.
        validate_mesh(&mesh("default", &too_long, "builtin"), &none).unwrap();
        let e = validate_mesh(&mesh(&m63, &too_long, "provided"), &none).unwrap_err();
        assert!(
            !fields(&e).contains(&"mtls.backends[1].name"),
            "a provided backend's name makes no Secret name: {e}"
        );
    }

    #[test]
    fn base_mesh_is_valid() {
        validate_mesh(&mesh_from(base()), &seed_secrets()).unwrap();
    }

    /// SPEC.md's `auth.approle` and `auth.jwt`, in the Universal and the Kubernetes form: both
    /// parse to the same Mesh and validate; the Secrets they name must exist in the mesh.
    #[test]
    fn approle_and_jwt_blocks_validate_in_both_forms() {
        let auth_universal = [
            "        auth:\n          approle:\n            roleId: { inlineString: 0d8d-role }\n            secretId: { secret: approle-1 }\n",
            "        auth:\n          jwt:\n            role: kmesh\n            token: { file: /var/run/kmesh/jwt }\n            mount: jwt/k8s\n",
        ];
        for auth in auth_universal {
            let universal = format!(
                "type: Mesh\nname: default\nmtls:\n  enabledBackend: vault-1\n  backends:\n  - name: vault-1\n    type: vault\n    conf:\n      fromCp:\n        address: http://vault:8200\n        namespace: team-a\n        pki: kmesh-pki-default\n        role: dataplane-proxies\n{auth}"
            );
            // The same block one level deeper, under spec.
            let indented: String = auth.lines().map(|l| format!("  {l}\n")).collect();
            let kubernetes = format!(
                "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: default\nspec:\n  mtls:\n    enabledBackend: vault-1\n    backends:\n    - name: vault-1\n      type: vault\n      conf:\n        fromCp:\n          address: http://vault:8200\n          namespace: team-a\n          pki: kmesh-pki-default\n          role: dataplane-proxies\n{indented}"
            );
            let u = parse_mesh(&universal);
            let k = parse_mesh(&kubernetes);
            assert_eq!(u, k, "{universal}\n{kubernetes}");
            let mut secrets = SecretMap::default();
            secrets.insert("default", "approle-1", b"secret-id".to_vec());
            validate_mesh(&u, &secrets).unwrap();
            let BackendConf::Vault(v) = u.backends()[0].typed_conf().unwrap() else {
                panic!("not vault")
            };
            let a = v.from_cp.unwrap().auth.unwrap();
            assert_eq!(a.methods().len(), 1);
            if let Some(approle) = &a.approle {
                assert_eq!(approle.mount_or_default(), "approle");
                let sources: Vec<&str> = a.data_sources().iter().map(|(f, _)| *f).collect();
                assert_eq!(sources, ["approle.roleId", "approle.secretId"]);
                // Without its Secret the mesh is refused, naming the field.
                let e = validate_mesh(&u, &SecretMap::default()).unwrap_err();
                assert_eq!(
                    fields(&e),
                    ["mtls.backends[0].conf.fromCp.auth.approle.secretId.secret"]
                );
            }
            if let Some(jwt) = &a.jwt {
                assert_eq!(
                    (jwt.role.as_str(), jwt.mount_or_default()),
                    ("kmesh", "jwt/k8s")
                );
                assert_eq!(
                    crate::datasource::file_sources(&u),
                    [(
                        "mtls.backends[0].conf.fromCp.auth.jwt.token.file".to_string(),
                        "/var/run/kmesh/jwt".to_string()
                    )]
                );
            }
        }
    }

    type Edit = fn(&mut Value);

    fn fc(v: &mut Value) -> &mut Value {
        &mut v["mtls"]["backends"][0]["conf"]["fromCp"]
    }

    #[test]
    fn invalid_meshes_name_each_field() {
        let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
            ("empty name", |v| v["name"] = json!(""), vec!["name"]),
            (
                "uppercase name",
                |v| v["name"] = json!("Default"),
                vec!["name"],
            ),
            ("dotted name", |v| v["name"] = json!("a.b"), vec!["name"]),
            (
                "name too long",
                |v| v["name"] = json!("a".repeat(64)),
                vec!["name"],
            ),
            (
                "name leading dash",
                |v| v["name"] = json!("-a"),
                vec!["name"],
            ),
            (
                "name over 4096",
                |v| v["name"] = json!("a".repeat(5000)),
                vec!["name"],
            ),
            (
                "label key empty",
                |v| v["labels"] = json!({"": "x"}),
                vec!["labels[\"\"]"],
            ),
            (
                "duplicate backend",
                |v| v["mtls"]["backends"][1]["name"] = json!("vault-1"),
                vec!["mtls.backends[1].name"],
            ),
            (
                "invalid backend name",
                |v| v["mtls"]["backends"][1]["name"] = json!("CA 1"),
                vec!["mtls.backends[1].name"],
            ),
            (
                "enabledBackend unknown",
                |v| v["mtls"]["enabledBackend"] = json!("nope"),
                vec!["mtls.enabledBackend"],
            ),
            (
                "enabledBackend without backends",
                |v| v["mtls"]["backends"] = json!([]),
                vec!["mtls.enabledBackend"],
            ),
            (
                "unknown backend type",
                |v| v["mtls"]["backends"][1]["type"] = json!("acm"),
                vec!["mtls.backends[1].type"],
            ),
            (
                "zero expiration",
                |v| v["mtls"]["backends"][0]["dpCert"]["rotation"]["expiration"] = json!("0s"),
                vec!["mtls.backends[0].dpCert.rotation.expiration"],
            ),
            (
                "sub-second expiration",
                |v| v["mtls"]["backends"][0]["dpCert"]["rotation"]["expiration"] = json!("500ms"),
                vec!["mtls.backends[0].dpCert.rotation.expiration"],
            ),
            (
                "keyType without keyGeneration proxy",
                |v| v["mtls"]["backends"][0]["dpCert"]["keyType"] = json!("rsa-2048"),
                vec!["mtls.backends[0].dpCert.keyType"],
            ),
            (
                "unknown conf field",
                |v| fc(v)["adress"] = json!("x"),
                vec!["mtls.backends[0].conf.fromCp.adress"],
            ),
            (
                "conf wrong type",
                |v| fc(v)["tls"]["skipVerify"] = json!("yes"),
                vec!["mtls.backends[0].conf.fromCp.tls.skipVerify"],
            ),
            (
                "vault without fromCp",
                |v| v["mtls"]["backends"][0]["conf"] = json!({}),
                vec!["mtls.backends[0].conf.fromCp"],
            ),
            (
                "missing address",
                |v| fc(v)["address"] = json!(""),
                vec!["mtls.backends[0].conf.fromCp.address"],
            ),
            (
                "address without scheme",
                |v| fc(v)["address"] = json!("vault:8200"),
                vec!["mtls.backends[0].conf.fromCp.address"],
            ),
            (
                "address ftp",
                |v| fc(v)["address"] = json!("ftp://vault:8200"),
                vec!["mtls.backends[0].conf.fromCp.address"],
            ),
            (
                "address without host",
                |v| fc(v)["address"] = json!("https://:8200"),
                vec!["mtls.backends[0].conf.fromCp.address"],
            ),
            (
                "agentAddress not a URL",
                |v| fc(v)["agentAddress"] = json!("127.0.0.1:8100"),
                vec!["mtls.backends[0].conf.fromCp.agentAddress"],
            ),
            (
                "pki missing",
                |v| fc(v)["pki"] = json!(""),
                vec!["mtls.backends[0].conf.fromCp.pki"],
            ),
            (
                "pki with space",
                |v| fc(v)["pki"] = json!("kmesh pki"),
                vec!["mtls.backends[0].conf.fromCp.pki"],
            ),
            (
                "pki leading slash",
                |v| fc(v)["pki"] = json!("/pki"),
                vec!["mtls.backends[0].conf.fromCp.pki"],
            ),
            (
                "pki dotdot",
                |v| fc(v)["pki"] = json!("pki/../sys"),
                vec!["mtls.backends[0].conf.fromCp.pki"],
            ),
            (
                "role missing",
                |v| fc(v)["role"] = json!(""),
                vec!["mtls.backends[0].conf.fromCp.role"],
            ),
            (
                "role with slash",
                |v| fc(v)["role"] = json!("roles/x"),
                vec!["mtls.backends[0].conf.fromCp.role"],
            ),
            (
                "namespace with space",
                |v| fc(v)["namespace"] = json!("my ns"),
                vec!["mtls.backends[0].conf.fromCp.namespace"],
            ),
            (
                "bad commonName template",
                |v| fc(v)["commonName"] = json!("{{ foo }}"),
                vec!["mtls.backends[0].conf.fromCp.commonName"],
            ),
            (
                "https without caCert",
                |v| fc(v)["tls"] = json!({"skipVerify": false}),
                vec!["mtls.backends[0].conf.fromCp.tls.caCert"],
            ),
            (
                "https without tls at all",
                |v| {
                    fc(v).as_object_mut().unwrap().remove("tls");
                },
                vec!["mtls.backends[0].conf.fromCp.tls.caCert"],
            ),
            (
                "bad serverName",
                |v| fc(v)["tls"]["serverName"] = json!("vault_1:8200"),
                vec!["mtls.backends[0].conf.fromCp.tls.serverName"],
            ),
            (
                "auth missing",
                |v| {
                    fc(v).as_object_mut().unwrap().remove("auth");
                },
                vec!["mtls.backends[0].conf.fromCp.auth"],
            ),
            (
                "auth empty",
                |v| fc(v)["auth"] = json!({}),
                vec!["mtls.backends[0].conf.fromCp.auth"],
            ),
            (
                "auth both",
                |v| {
                    fc(v)["auth"]["tls"] = json!({
                        "clientKey": {"file": "/k.pem"}, "clientCert": {"file": "/c.pem"}
                    })
                },
                vec!["mtls.backends[0].conf.fromCp.auth"],
            ),
            (
                "auth tls incomplete",
                |v| fc(v)["auth"] = json!({"tls": {"clientKey": {"file": "/k.pem"}}}),
                vec!["mtls.backends[0].conf.fromCp.auth.tls.clientCert"],
            ),
            (
                "token and approle",
                |v| {
                    fc(v)["auth"]["approle"] =
                        json!({"roleId": {"inlineString": "r"}, "secretId": {"secret": "token-1"}})
                },
                vec!["mtls.backends[0].conf.fromCp.auth"],
            ),
            (
                "approle and jwt",
                |v| {
                    fc(v)["auth"] = json!({
                        "approle": {"roleId": {"inlineString": "r"}, "secretId": {"secret": "token-1"}},
                        "jwt": {"role": "kmesh", "token": {"file": "/var/run/jwt"}}
                    })
                },
                vec!["mtls.backends[0].conf.fromCp.auth"],
            ),
            (
                "approle without roleId, secretId from a missing Secret",
                |v| fc(v)["auth"] = json!({"approle": {"secretId": {"secret": "approle-9"}}}),
                vec![
                    "mtls.backends[0].conf.fromCp.auth.approle.roleId",
                    "mtls.backends[0].conf.fromCp.auth.approle.secretId.secret",
                ],
            ),
            (
                "approle mount with auth/ and a bad secretId source",
                |v| {
                    fc(v)["auth"] = json!({"approle": {
                        "roleId": {"inlineString": "r"},
                        "secretId": {"file": "secret-id"},
                        "mount": "auth/approle"
                    }})
                },
                vec![
                    "mtls.backends[0].conf.fromCp.auth.approle.secretId.file",
                    "mtls.backends[0].conf.fromCp.auth.approle.mount",
                ],
            ),
            (
                "approle unknown field",
                |v| {
                    fc(v)["auth"] = json!({"approle": {
                        "roleId": {"inlineString": "r"},
                        "secretId": {"inlineString": "s"},
                        "secret_id": "s"
                    }})
                },
                vec!["mtls.backends[0].conf.fromCp.auth.approle.secret_id"],
            ),
            (
                "jwt without role nor token",
                |v| fc(v)["auth"] = json!({"jwt": {"mount": "jwt/k8s"}}),
                vec![
                    "mtls.backends[0].conf.fromCp.auth.jwt.role",
                    "mtls.backends[0].conf.fromCp.auth.jwt.token",
                ],
            ),
            (
                "jwt role with slash, mount with spaces",
                |v| {
                    fc(v)["auth"] = json!({"jwt": {
                        "role": "a/b", "token": {"inlineString": "x.y.z"}, "mount": "my jwt"
                    }})
                },
                vec![
                    "mtls.backends[0].conf.fromCp.auth.jwt.role",
                    "mtls.backends[0].conf.fromCp.auth.jwt.mount",
                ],
            ),
            (
                "data source with two fields",
                |v| fc(v)["auth"]["token"] = json!({"secret": "token-1", "file": "/t"}),
                vec!["mtls.backends[0].conf.fromCp.auth.token"],
            ),
            (
                "data source with none",
                |v| fc(v)["auth"]["token"] = json!({}),
                vec!["mtls.backends[0].conf.fromCp.auth.token"],
            ),
            (
                "missing secret",
                |v| fc(v)["auth"]["token"] = json!({"secret": "token-2"}),
                vec!["mtls.backends[0].conf.fromCp.auth.token.secret"],
            ),
            (
                "invalid secret name",
                |v| fc(v)["auth"]["token"] = json!({"secret": "Token_1"}),
                vec!["mtls.backends[0].conf.fromCp.auth.token.secret"],
            ),
            (
                "relative file",
                |v| fc(v)["auth"]["token"] = json!({"file": "token.txt"}),
                vec!["mtls.backends[0].conf.fromCp.auth.token.file"],
            ),
            (
                "bad inline base64",
                |v| fc(v)["tls"]["caCert"] = json!({"inline": "not base64!"}),
                vec!["mtls.backends[0].conf.fromCp.tls.caCert.inline"],
            ),
            (
                "empty inlineString",
                |v| fc(v)["auth"]["token"] = json!({"inlineString": ""}),
                vec!["mtls.backends[0].conf.fromCp.auth.token.inlineString"],
            ),
            (
                "RSAbits",
                |v| v["mtls"]["backends"][1]["conf"]["caCert"]["RSAbits"] = json!(1024),
                vec!["mtls.backends[1].conf.caCert.RSAbits"],
            ),
            (
                "CA expiration too short",
                |v| v["mtls"]["backends"][1]["conf"]["caCert"]["expiration"] = json!("59m"),
                vec!["mtls.backends[1].conf.caCert.expiration"],
            ),
            (
                "builtin unknown conf field",
                |v| v["mtls"]["backends"][1]["conf"]["caCert"]["bits"] = json!(2048),
                vec!["mtls.backends[1].conf.caCert.bits"],
            ),
            (
                "provided without key",
                |v| {
                    v["mtls"]["backends"][2]["conf"]
                        .as_object_mut()
                        .unwrap()
                        .remove("key");
                },
                vec!["mtls.backends[2].conf.key"],
            ),
            (
                "provided without conf",
                |v| {
                    v["mtls"]["backends"][2]
                        .as_object_mut()
                        .unwrap()
                        .remove("conf");
                },
                vec!["mtls.backends[2].conf.cert", "mtls.backends[2].conf.key"],
            ),
            (
                "provided bad cert source",
                |v| v["mtls"]["backends"][2]["conf"]["cert"] = json!({"inline": "aGk"}),
                vec!["mtls.backends[2].conf.cert.inline"],
            ),
            (
                "conf not a mapping",
                |v| v["mtls"]["backends"][1]["conf"] = json!("x"),
                vec!["mtls.backends[1].conf"],
            ),
            (
                "too many backends",
                |v| {
                    let b = v["mtls"]["backends"][1].clone();
                    let list: Vec<Value> = (0..40)
                        .map(|i| {
                            let mut b = b.clone();
                            b["name"] = json!(format!("ca-{i}"));
                            b
                        })
                        .collect();
                    v["mtls"]["backends"] = json!(list);
                    v["mtls"]["enabledBackend"] = json!("ca-0");
                },
                vec!["mtls.backends"],
            ),
            (
                "address over 4096 characters",
                |v| fc(v)["address"] = json!(format!("https://{}", "a".repeat(4100))),
                vec!["mtls.backends[0].conf.fromCp.address"],
            ),
        ];
        assert!(cases.len() >= 30);
        let secrets = seed_secrets();
        for (what, edit, want) in cases {
            let mut v = base();
            edit(&mut v);
            let mesh = mesh_from(v);
            let e = validate_mesh(&mesh, &secrets).unwrap_err();
            assert_eq!(fields(&e), want, "{what}: {e}");
            for err in &e.errors {
                assert!(!err.reason.is_empty(), "{what}");
                assert!(
                    err.reason.len() < 600,
                    "{what}: reason too long: {}",
                    err.reason
                );
            }
        }
    }

    #[test]
    fn wrong_type_and_invalid_mesh_name() {
        let mut m = mesh_from(base());
        m.type_ = "Secret".into();
        let e = validate_mesh(&m, &seed_secrets()).unwrap_err();
        assert_eq!(fields(&e), ["type"]);
        // With an invalid mesh name there is no mesh to look Secrets up in: only the name is reported.
        let mut m = mesh_from(base());
        m.name = "Bad_Name".into();
        let e = validate_mesh(&m, &SecretMap::default()).unwrap_err();
        assert_eq!(fields(&e), ["name"]);
    }

    #[test]
    fn many_problems_are_all_reported() {
        let mut v = base();
        v["labels"] = json!({"": "x"});
        v["mtls"]["enabledBackend"] = json!("nope");
        fc(&mut v)["address"] = json!("https://vault.8200");
        fc(&mut v)["pki"] = json!("");
        fc(&mut v)["role"] = json!("/x");
        fc(&mut v)["commonName"] = json!("{{ tag }}");
        v["mtls"]["backends"][1]["conf"]["caCert"]["RSAbits"] = json!(1000);
        let e = validate_mesh(&mesh_from(v), &SecretMap::default()).unwrap_err();
        assert_eq!(
            fields(&e),
            [
                "labels[\"\"]",
                "mtls.backends[0].conf.fromCp.address",
                "mtls.backends[0].conf.fromCp.pki",
                "mtls.backends[0].conf.fromCp.role",
                "mtls.backends[0].conf.fromCp.commonName",
                "mtls.backends[0].conf.fromCp.tls.caCert.secret",
                "mtls.backends[0].conf.fromCp.auth.token.secret",
                "mtls.backends[1].conf.caCert.RSAbits",
                "mtls.enabledBackend",
            ],
            "{e}"
        );
        assert!(
            reason(&e, "mtls.backends[0].conf.fromCp.commonName")
                .contains("wrong number of arguments for tag")
        );
        assert!(reason(&e, "mtls.enabledBackend").contains("\"vault-1\", \"ca-1\", \"prov-1\""));
        assert!(reason(&e, "mtls.backends[1].conf.caCert.RSAbits").contains("2048, 3072 or 4096"));
    }

    #[test]
    fn relaxed_cases_are_accepted() {
        let secrets = seed_secrets();
        let ok = |edit: Edit| {
            let mut v = base();
            edit(&mut v);
            let mesh = mesh_from(v);
            validate_mesh(&mesh, &secrets).unwrap_or_else(|e| panic!("{e}"));
        };
        // http needs no CA; skipVerify makes it optional over https.
        ok(|v| {
            fc(v)["address"] = json!("http://vault:8200");
            fc(v).as_object_mut().unwrap().remove("tls");
        });
        ok(|v| fc(v)["tls"] = json!({"skipVerify": true}));
        // A Vault Agent authenticates on our behalf.
        ok(|v| {
            fc(v)["agentAddress"] = json!("http://127.0.0.1:8100");
            fc(v).as_object_mut().unwrap().remove("auth");
        });
        ok(|v| fc(v)["pki"] = json!("pki/intermediate"));
        ok(|v| fc(v)["namespace"] = json!("team-a/child"));
        ok(|v| fc(v)["address"] = json!("https://[::1]:8200"));
        ok(|v| fc(v)["address"] = json!("https://10.0.0.1:8200/"));
        ok(|v| fc(v)["commonName"] = json!(""));
        ok(|v| v["mtls"]["enabledBackend"] = json!(""));
        ok(|v| {
            v["mtls"].as_object_mut().unwrap().remove("enabledBackend");
        });
        ok(|v| {
            v.as_object_mut().unwrap().remove("mtls");
        });
        ok(|v| v["mtls"]["backends"][1]["conf"] = json!(null));
        ok(|v| fc(v)["auth"]["token"] = json!({"inlineString": "s.abc"}));
        ok(|v| v["mtls"]["backends"][0]["dpCert"]["rotation"]["expiration"] = json!("1s"));
        ok(|v| {
            let d = &mut v["mtls"]["backends"][0]["dpCert"];
            d["keyGeneration"] = json!("proxy");
            d["keyType"] = json!("rsa-4096");
            d["uriSans"] = json!("spiffe");
        });
        ok(|v| v["mtls"]["backends"][0]["dpCert"]["keyGeneration"] = json!("controlPlane"));
    }

    #[test]
    fn address_reasons() {
        let check = |addr: &str| {
            let mut e = ValidationErrors::new();
            check_url("f", addr, &mut e);
            e.errors.first().map(|e| e.reason.clone())
        };
        let r = check("https://vault.8200").unwrap();
        assert!(r.contains("\"vault:8200\"") && r.contains("colon"), "{r}");
        let r = check("http://my.vault.8200/").unwrap();
        assert!(r.contains("\"my.vault:8200\""), "{r}");
        assert!(check("https://vault.example.com:8200").is_none());
        assert!(check("https://vault").is_none());
        assert!(check("https://127.0.0.1").is_none());
        assert!(check("vault:8200").unwrap().contains("not a URL"));
        assert!(check("ftp://x").unwrap().contains("http or https"));
        assert!(check("https://").unwrap().contains("no host"));
        assert!(check("https://user@").unwrap().contains("no host"));
        assert!(check(" https://vault:8200").unwrap().contains("spaces"));
        assert!(check("https://va lt:8200").is_some());
        assert!(check("https://vault:99999").is_some());
    }

    #[test]
    fn names() {
        let ok_mesh = ["default", "a", "mesh-1", "0", &"a".repeat(63)];
        for n in ok_mesh {
            let mut e = ValidationErrors::new();
            validate_mesh_name("f", n, &mut e);
            assert!(e.is_empty(), "{n}: {e}");
        }
        for n in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a_b",
            "é",
            &"a".repeat(64),
            "a b",
        ] {
            let mut e = ValidationErrors::new();
            validate_mesh_name("f", n, &mut e);
            assert_eq!(fields(&e), ["f"], "{n}");
        }
        for n in [
            "default.ca-builtin-cert-ca-1",
            "sec-1",
            "a.b.c",
            &"a".repeat(253),
        ] {
            let mut e = ValidationErrors::new();
            validate_object_name("f", n, &mut e);
            assert!(e.is_empty(), "{n}: {e}");
        }
        for n in [
            "",
            ".a",
            "a.",
            "a..b",
            "A",
            "a_b",
            "-a.b",
            "a.-b",
            &"a".repeat(254),
            "a/b",
        ] {
            let mut e = ValidationErrors::new();
            validate_object_name("f", n, &mut e);
            assert_eq!(fields(&e), ["f"], "{n}");
        }
        let mut e = ValidationErrors::new();
        validate_mesh_name("mesh", "Bad", &mut e);
        assert_eq!(
            e.errors[0].reason,
            "\"Bad\" is not a valid mesh name: invalid character 'B': use lowercase letters, digits and '-'"
        );
    }

    #[test]
    fn secrets() {
        validate_secret(&Secret::new("default", "sec-1", b"hello")).unwrap();
        validate_secret(&Secret::new(
            "default",
            "default.ca-builtin-cert-ca-1",
            b"x",
        ))
        .unwrap();
        let bad = |edit: fn(&mut Secret), want: &[&str]| {
            let mut s = Secret::new("default", "sec-1", b"hello");
            edit(&mut s);
            let e = validate_secret(&s).unwrap_err();
            assert_eq!(fields(&e), want, "{e}");
            e
        };
        bad(|s| s.name = "Sec_1".into(), &["name"]);
        bad(|s| s.mesh = "a.b".into(), &["mesh"]);
        bad(|s| s.type_ = "Mesh".into(), &["type"]);
        bad(|s| s.data = String::new(), &["data"]);
        bad(|s| s.data = "   ".into(), &["data"]);
        bad(|s| s.data = "aGVsbG8".into(), &["data"]);
        bad(|s| s.data = "aGVs bG8=".into(), &["data"]);
        bad(|s| s.data = "aGVs\nbG8=".into(), &["data"]);
        bad(|s| s.data = "aGVsbG8-".into(), &["data"]);
        let e = bad(|s| s.data = "c2VjcmV0!!!".into(), &["data"]);
        assert!(!e.to_string().contains("!!!"));
        bad(|s| s.data = "a".repeat(2_000_000), &["data"]);
        bad(
            |s| {
                s.name = String::new();
                s.mesh = String::new();
                s.data = "%".into();
            },
            &["name", "mesh", "data"],
        );
        let big = Secret::new("m", "s", &vec![0u8; DATA_BYTES + 1]);
        assert_eq!(fields(&validate_secret(&big).unwrap_err()), ["data"]);
        let max = Secret::new("m", "s", &vec![7u8; DATA_BYTES]);
        validate_secret(&max).unwrap();
        // Whitespace around the data is ignored, as when it is decoded.
        let mut s = Secret::new("m", "s", b"hi");
        s.data = format!(" {}\n", s.data);
        validate_secret(&s).unwrap();
        assert!(validate_resource(&Resource::Secret(s), &SecretMap::default()).is_ok());
    }

    fn dp(tags: &[(&str, &str)]) -> Dataplane {
        Dataplane {
            type_: "Dataplane".into(),
            name: "web-1".into(),
            mesh: "default".into(),
            labels: Default::default(),
            networking: crate::model::Networking {
                address: "10.0.0.1".into(),
                inbound: vec![crate::model::Inbound {
                    port: Some(8080),
                    tags: tags
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }],
            },
        }
    }

    #[test]
    fn dataplanes() {
        validate_dataplane(&dp(&[("kuma.io/service", "web"), ("version", "v1")])).unwrap();
        let svc = "networking.inbound[0].tags[\"kuma.io/service\"]";
        let e = validate_dataplane(&dp(&[("version", "v1")])).unwrap_err();
        assert_eq!(fields(&e), [svc]);
        let e = validate_dataplane(&dp(&[("kuma.io/service", "")])).unwrap_err();
        assert_eq!(fields(&e), [svc]);
        let e = validate_dataplane(&dp(&[("kuma.io/service", "web"), ("", "x")])).unwrap_err();
        assert_eq!(fields(&e), ["networking.inbound[0].tags[\"\"]"]);
        let long = "v".repeat(254);
        let e =
            validate_dataplane(&dp(&[("kuma.io/service", "web"), ("team", &long)])).unwrap_err();
        assert_eq!(fields(&e), ["networking.inbound[0].tags.team"]);
        let e = validate_dataplane(&dp(&[("kuma.io/service", "we\nb")])).unwrap_err();
        assert_eq!(fields(&e), [svc]);
        let long_key = "k".repeat(300);
        let e =
            validate_dataplane(&dp(&[("kuma.io/service", "web"), (&long_key, "x")])).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert!(e.errors[0].field.len() < 100, "field names are shortened");

        let mut d = dp(&[("kuma.io/service", "web")]);
        d.networking.inbound.clear();
        d.name = "Web".into();
        d.mesh = String::new();
        let e = validate_dataplane(&d).unwrap_err();
        assert_eq!(fields(&e), ["name", "mesh", "networking.inbound"]);

        let mut d = dp(&[("kuma.io/service", "web")]);
        d.networking.inbound[0].port = Some(0);
        d.networking.address = "10.0.0.1 ".into();
        let e = validate_dataplane(&d).unwrap_err();
        assert_eq!(
            fields(&e),
            ["networking.address", "networking.inbound[0].port"]
        );
        assert!(validate_resource(&Resource::Dataplane(d), &SecretMap::default()).is_err());
    }

    #[test]
    fn reasons_never_echo_inline_data() {
        let mut v = base();
        fc(&mut v)["auth"]["token"] = json!({"inline": "s3cr3t-t0ken$$"});
        let e = validate_mesh(&mesh_from(v), &seed_secrets()).unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert_eq!(
            fields(&e),
            ["mtls.backends[0].conf.fromCp.auth.token.inline"]
        );
    }
}
