//! Turning user documents into resources. This module owns reading YAML streams (`---` separated),
//! JSON documents and JSON arrays, and both forms of a resource: Universal (`type: Mesh|Secret|
//! Dataplane`, `name`, ...) and Kubernetes (`apiVersion`/`kind`/`metadata`/`spec` for Mesh and
//! Dataplane, and `apiVersion: v1`, `kind: Secret`, `type: system.kuma.io/secret` Secrets). Shapes
//! and types are checked here, with every error naming the field as the user wrote it
//! (`mtls.backends[0].dpCert.rotation.expiration`, or `spec.mtls...` in the Kubernetes form);
//! meaning is checked by `validate`. Input is bounded: at most [`crate::limits::INPUT_BYTES`], valid UTF-8,
//! nested at most [`MAX_DEPTH`] levels.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::ValidationErrors;
use crate::model::{Dataplane, Mesh, Resource, Secret};

/// Deepest nesting of mappings and sequences accepted in a document.
pub const MAX_DEPTH: usize = 64;

/// The Kubernetes `apiVersion` of Kuma resources.
pub const KUMA_API_VERSION: &str = "kuma.io/v1alpha1";
/// The Kubernetes Secret `type` of a Kuma mesh-scoped Secret.
pub const KUMA_SECRET_TYPE: &str = "system.kuma.io/secret";
/// The label naming the mesh of a Kubernetes Secret or Dataplane.
pub const MESH_LABEL: &str = "kuma.io/mesh";
/// The mesh of a Kubernetes Secret or Dataplane that names none.
pub const DEFAULT_MESH: &str = "default";

/// A document of an input that could not be turned into a resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}", document_prefix(*.document), .errors)]
pub struct ParseError {
    /// 1-based index of the document in the input (YAML documents, empty ones included); 0 when
    /// the input as a whole is refused (too large, not UTF-8).
    pub document: usize,
    pub errors: ValidationErrors,
}

fn document_prefix(document: usize) -> String {
    if document == 0 {
        String::new()
    } else {
        format!("document {document}: ")
    }
}

impl ParseError {
    fn at(document: usize, errors: ValidationErrors) -> Self {
        Self { document, errors }
    }
}

/// Parses a file or stdin: a YAML stream of documents separated by `---`, a JSON document, or a
/// JSON array (or YAML sequence) of resources. Empty documents are skipped. Stops at the first
/// document that is refused.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ParseError> {
    let mut out = Vec::new();
    for (index, value) in load(text)? {
        match value {
            Value::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let r = parse_value(item)
                        .map_err(|e| ParseError::at(index, prefix_errors(&format!("[{i}]"), e)))?;
                    out.push(r);
                }
            }
            v => out.push(parse_value(v).map_err(|e| ParseError::at(index, e))?),
        }
    }
    Ok(out)
}

/// [`parse_documents`] for raw bytes (a file as read from disk): refuses non-UTF-8 input.
pub fn parse_documents_bytes(bytes: &[u8]) -> Result<Vec<Resource>, ParseError> {
    parse_documents(utf8(bytes).map_err(|e| ParseError {
        document: 0,
        errors: e,
    })?)
}

/// Parses an HTTP request body: JSON or YAML holding exactly one resource.
pub fn parse_body(body: &[u8]) -> Result<Resource, ValidationErrors> {
    let text = utf8(body)?;
    let mut docs = load(text).map_err(|e| e.errors)?;
    match docs.len() {
        0 => Err(ValidationErrors::single(
            "",
            "the body is empty: expected one resource in JSON or YAML",
        )),
        1 => match docs.pop() {
            Some((_, Value::Array(_))) => Err(ValidationErrors::single(
                "",
                "expected one resource, found a list: send resources one at a time",
            )),
            Some((_, v)) => parse_value(v),
            None => Err(ValidationErrors::single("", "the body is empty")),
        },
        n => Err(ValidationErrors::single(
            "",
            format!("expected exactly one resource, found {n} documents: send them one at a time"),
        )),
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, ValidationErrors> {
    if bytes.len() > crate::limits::INPUT_BYTES {
        return Err(too_large(bytes.len()));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        ValidationErrors::single(
            "",
            format!(
                "input is not valid UTF-8 (first bad byte at offset {}): resources must be UTF-8 text",
                e.valid_up_to()
            ),
        )
    })
}

fn too_large(len: usize) -> ValidationErrors {
    ValidationErrors::single(
        "",
        format!(
            "input is {len} bytes: at most {} (4 MiB) are accepted",
            crate::limits::INPUT_BYTES
        ),
    )
}

/// The non-empty documents of the input as JSON values, with their 1-based index.
fn load(text: &str) -> Result<Vec<(usize, Value)>, ParseError> {
    if text.len() > crate::limits::INPUT_BYTES {
        return Err(ParseError::at(0, too_large(text.len())));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if bracket_depth_exceeds(text, MAX_DEPTH) {
        return Err(ParseError::at(1, depth_error()));
    }
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON first: its errors are clearer to someone who wrote JSON. Flow-style YAML that is not
        // JSON (`{a: b}`) still gets a chance below.
        match serde_json::from_str::<Value>(text) {
            Ok(v) => {
                check_depth(&v).map_err(|e| ParseError::at(1, e))?;
                return Ok(if v.is_null() { vec![] } else { vec![(1, v)] });
            }
            Err(json_err) => {
                return load_yaml(text).map_err(|_| {
                    ParseError::at(
                        1,
                        ValidationErrors::single("", format!("invalid JSON: {json_err}")),
                    )
                });
            }
        }
    }
    load_yaml(text)
}

fn load_yaml(text: &str) -> Result<Vec<(usize, Value)>, ParseError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let invalid = |e: &dyn std::fmt::Display| {
            ParseError::at(
                index,
                ValidationErrors::single("", format!("invalid YAML: {e}")),
            )
        };
        // Through serde_norway's own Value, which refuses duplicate keys; its recursion limit (128)
        // turns hostile nesting into an error here.
        let yaml = serde_norway::Value::deserialize(doc).map_err(|e| {
            if e.to_string().contains("recursion limit exceeded") {
                ParseError::at(index, depth_error())
            } else {
                invalid(&e)
            }
        })?;
        check_yaml_depth(&yaml).map_err(|e| ParseError::at(index, e))?;
        let value = serde_json::to_value(&yaml).map_err(|e| invalid(&e))?;
        if !value.is_null() {
            out.push((index, value));
        }
    }
    Ok(out)
}

fn depth_error() -> ValidationErrors {
    ValidationErrors::single(
        "",
        format!("document is nested deeper than {MAX_DEPTH} levels"),
    )
}

/// A cheap scan before any parser runs: does the net count of open `[`/`{` ever exceed `max`? The
/// YAML parser takes time quadratic in the flow nesting depth (100 000 levels take minutes), so
/// hostile nesting is refused before it reaches it. Brackets inside strings are counted too; only
/// a document with more than `max` unbalanced ones in its strings could be refused by mistake.
fn bracket_depth_exceeds(text: &str, max: usize) -> bool {
    let mut depth: usize = 0;
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Refuses values nested deeper than [`MAX_DEPTH`], without recursion.
fn check_depth(v: &Value) -> Result<(), ValidationErrors> {
    let mut stack: Vec<(&Value, usize)> = vec![(v, 0)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth + 1 > MAX_DEPTH {
            return Err(depth_error());
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(())
}

fn check_yaml_depth(v: &serde_norway::Value) -> Result<(), ValidationErrors> {
    use serde_norway::Value as Y;
    let mut stack: Vec<(&Y, usize)> = vec![(v, 0)];
    while let Some((v, depth)) = stack.pop() {
        let children: Vec<&Y> = match v {
            Y::Sequence(s) => s.iter().collect(),
            Y::Mapping(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
            Y::Tagged(t) => vec![&t.value],
            _ => continue,
        };
        if depth + 1 > MAX_DEPTH {
            return Err(depth_error());
        }
        stack.extend(children.into_iter().map(|c| (c, depth + 1)));
    }
    Ok(())
}

/// Parses one resource, Universal or Kubernetes form, from a JSON value.
pub fn parse_value(value: Value) -> Result<Resource, ValidationErrors> {
    check_depth(&value)?;
    let Value::Object(map) = value else {
        return Err(ValidationErrors::single(
            "",
            format!(
                "expected a resource (a mapping with type, or apiVersion and kind), found {}",
                describe(&value)
            ),
        ));
    };
    if map.contains_key("apiVersion") || map.contains_key("kind") {
        kubernetes(map)
    } else {
        universal(map)
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn universal(map: Map<String, Value>) -> Result<Resource, ValidationErrors> {
    let ty = match map.get("type") {
        None => {
            return Err(ValidationErrors::single(
                "type",
                "missing: set type to Mesh, Secret or Dataplane (or use the Kubernetes form with apiVersion and kind)",
            ));
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ValidationErrors::single(
                "type",
                format!(
                    "must be a string (Mesh, Secret or Dataplane), found {}",
                    describe(other)
                ),
            ));
        }
    };
    let value = Value::Object(map);
    match ty.as_str() {
        "Mesh" => typed::<Mesh>(value, &|p| p).map(Resource::Mesh),
        "Secret" => typed::<Secret>(value, &|p| p).map(Resource::Secret),
        "Dataplane" => typed::<Dataplane>(value, &|p| p).map(Resource::Dataplane),
        KUMA_SECRET_TYPE => Err(ValidationErrors::single(
            "type",
            format!(
                "{KUMA_SECRET_TYPE:?} is the type of a Kubernetes Secret: add apiVersion: v1 and kind: Secret, or use type: Secret"
            ),
        )),
        other => Err(ValidationErrors::single(
            "type",
            format!("unknown type {other:?}: must be Mesh, Secret or Dataplane"),
        )),
    }
}

/// Deserializes `value` into `T`, reporting the first error at its path (mapped by `map_path`).
fn typed<T: serde::de::DeserializeOwned>(
    value: Value,
    map_path: &dyn Fn(String) -> String,
) -> Result<T, ValidationErrors> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let mut path = dotted("", e.path().iter());
        let reason = e.into_inner().to_string();
        // serde reports a missing field at its parent: name the field itself.
        if let Some(missing) = reason
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            path = key_path(&path, missing);
        }
        ValidationErrors::single(map_path(path), reason)
    })
}

/// A serde path as the user writes it: `mtls.backends[0].dpCert`, keys that are not plain words
/// quoted in brackets (`tags["kuma.io/service"]`).
fn dotted<'a>(
    prefix: &str,
    segments: impl Iterator<Item = &'a serde_path_to_error::Segment>,
) -> String {
    use serde_path_to_error::Segment;
    let mut out = prefix.to_string();
    for seg in segments {
        match seg {
            Segment::Seq { index } => {
                let _ = write!(out, "[{index}]");
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out = key_path(&out, key);
            }
            Segment::Unknown => out = key_path(&out, "?"),
        }
    }
    out
}

/// Appends a mapping key to a field path: `parent.key`, or `parent["key"]` when the key is not a
/// plain word (labels and tags such as `kuma.io/service`).
pub fn key_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

fn prefix_errors(prefix: &str, errors: ValidationErrors) -> ValidationErrors {
    ValidationErrors {
        errors: errors
            .errors
            .into_iter()
            .map(|mut e| {
                e.field = if e.field.is_empty() {
                    prefix.to_string()
                } else if e.field.starts_with('[') {
                    format!("{prefix}{}", e.field)
                } else {
                    format!("{prefix}.{}", e.field)
                };
                e
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes form

#[derive(Clone, Copy, PartialEq, Eq)]
enum K8sKind {
    Mesh,
    Dataplane,
    Secret,
}

/// Fields of `metadata` set by the Kubernetes API server, accepted (and ignored) so that the
/// output of `kubectl get -o yaml` can be applied.
const IGNORED_METADATA: &[&str] = &[
    "namespace",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "ownerReferences",
    "finalizers",
    "selfLink",
    "generateName",
];

fn string_field(
    map: &Map<String, Value>,
    key: &str,
    field: &str,
    errs: &mut ValidationErrors,
) -> Option<String> {
    match map.get(key) {
        None => {
            errs.push(field, "missing");
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errs.push(
                field,
                format!("must be a string, found {}", describe(other)),
            );
            None
        }
    }
}

fn kubernetes(mut map: Map<String, Value>) -> Result<Resource, ValidationErrors> {
    let mut errs = ValidationErrors::new();
    let api = string_field(&map, "apiVersion", "apiVersion", &mut errs);
    let kind = match string_field(&map, "kind", "kind", &mut errs).as_deref() {
        Some("Mesh") => Some(K8sKind::Mesh),
        Some("Dataplane") => Some(K8sKind::Dataplane),
        Some("Secret") => Some(K8sKind::Secret),
        Some(other) => {
            errs.push(
                "kind",
                format!("unknown kind {other:?}: must be Mesh, Dataplane or Secret"),
            );
            None
        }
        None => None,
    };
    let Some(kind) = kind else {
        return Err(errs);
    };
    let want_api = if kind == K8sKind::Secret {
        "v1"
    } else {
        KUMA_API_VERSION
    };
    if let Some(api) = api
        && api != want_api
    {
        let kind_name = match kind {
            K8sKind::Mesh => "Mesh",
            K8sKind::Dataplane => "Dataplane",
            K8sKind::Secret => "Secret",
        };
        errs.push(
            "apiVersion",
            format!("must be {want_api} for kind {kind_name}, found {api:?}"),
        );
    }
    let allowed: &[&str] = match kind {
        K8sKind::Mesh => &["apiVersion", "kind", "metadata", "spec"],
        K8sKind::Dataplane => &["apiVersion", "kind", "metadata", "spec", "mesh"],
        K8sKind::Secret => &["apiVersion", "kind", "metadata", "type", "data"],
    };
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            errs.push(
                key_path("", key),
                format!(
                    "unknown field: this Kubernetes resource has only {}",
                    allowed.join(", ")
                ),
            );
        }
    }
    let meta = metadata(map.remove("metadata"), &mut errs);
    match kind {
        K8sKind::Secret => k8s_secret(map, meta, errs),
        K8sKind::Mesh | K8sKind::Dataplane => k8s_kuma(kind, map, meta, errs),
    }
}

struct Meta {
    name: String,
    labels: BTreeMap<String, String>,
}

fn metadata(value: Option<Value>, errs: &mut ValidationErrors) -> Option<Meta> {
    let map = match value {
        None => {
            errs.push("metadata.name", "missing: the resource needs a name");
            return None;
        }
        Some(Value::Object(m)) => m,
        Some(other) => {
            errs.push(
                "metadata",
                format!("must be a mapping, found {}", describe(&other)),
            );
            return None;
        }
    };
    let mut ok = true;
    for key in map.keys() {
        if key != "name" && key != "labels" && !IGNORED_METADATA.contains(&key.as_str()) {
            errs.push(
                key_path("metadata", key),
                "unknown field: metadata has name, labels, namespace and annotations",
            );
        }
    }
    let name = string_field(&map, "name", "metadata.name", errs);
    let labels = match map.get("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => match typed::<BTreeMap<String, String>>(v.clone(), &|p| {
            if p.is_empty() {
                "metadata.labels".to_string()
            } else if p.starts_with('[') {
                format!("metadata.labels{p}")
            } else {
                format!("metadata.labels.{p}")
            }
        }) {
            Ok(l) => l,
            Err(e) => {
                errs.extend(e);
                ok = false;
                BTreeMap::new()
            }
        },
    };
    match (name, ok) {
        (Some(name), true) => Some(Meta { name, labels }),
        _ => None,
    }
}

fn k8s_secret(
    map: Map<String, Value>,
    meta: Option<Meta>,
    mut errs: ValidationErrors,
) -> Result<Resource, ValidationErrors> {
    match map.get("type") {
        None => errs.push(
            "type",
            format!("missing: a Kuma Secret has type: {KUMA_SECRET_TYPE}"),
        ),
        Some(Value::String(t)) if t == KUMA_SECRET_TYPE => {}
        Some(Value::String(t)) => errs.push(
            "type",
            format!("must be {KUMA_SECRET_TYPE} (a mesh-scoped Kuma Secret), found {t:?}"),
        ),
        Some(other) => errs.push(
            "type",
            format!(
                "must be the string {KUMA_SECRET_TYPE}, found {}",
                describe(other)
            ),
        ),
    }
    let data = match map.get("data") {
        None => {
            errs.push(
                "data.value",
                "missing: the Secret's data goes in data.value (base64)",
            );
            None
        }
        Some(Value::Object(d)) => {
            for key in d.keys() {
                if key != "value" {
                    errs.push(
                        key_path("data", key),
                        "unknown key: a Kuma Secret holds its data in data.value only",
                    );
                }
            }
            string_field(d, "value", "data.value", &mut errs)
        }
        Some(other) => {
            errs.push(
                "data",
                format!(
                    "must be a mapping with a value key, found {}",
                    describe(other)
                ),
            );
            None
        }
    };
    match (meta, data, errs.is_empty()) {
        (Some(mut meta), Some(data), true) => {
            let mesh = meta
                .labels
                .remove(MESH_LABEL)
                .unwrap_or_else(|| DEFAULT_MESH.to_string());
            Ok(Resource::Secret(Secret {
                type_: "Secret".to_string(),
                name: meta.name,
                mesh,
                labels: meta.labels,
                data,
            }))
        }
        _ => Err(errs),
    }
}

/// Mesh and Dataplane: the Universal body is `spec` plus the name, labels (and mesh) from around it.
fn k8s_kuma(
    kind: K8sKind,
    mut map: Map<String, Value>,
    meta: Option<Meta>,
    mut errs: ValidationErrors,
) -> Result<Resource, ValidationErrors> {
    let spec = match map.remove("spec") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(s)) => s,
        Some(other) => {
            errs.push(
                "spec",
                format!("must be a mapping, found {}", describe(&other)),
            );
            Map::new()
        }
    };
    for key in ["type", "name", "mesh", "labels"] {
        if spec.contains_key(key) {
            let hint = match key {
                "type" => "the type is given by kind",
                "name" => "the name is metadata.name",
                "labels" => "labels go in metadata.labels",
                _ if kind == K8sKind::Dataplane => "the mesh is given by mesh: next to metadata",
                _ => "unknown field",
            };
            errs.push(
                key_path("spec", key),
                format!("not allowed in spec: {hint}"),
            );
        }
    }
    let mesh = if kind == K8sKind::Dataplane {
        match map.get("mesh") {
            None => None,
            Some(Value::String(m)) => Some(m.clone()),
            Some(other) => {
                errs.push(
                    "mesh",
                    format!("must be a string, found {}", describe(other)),
                );
                None
            }
        }
    } else {
        None
    };
    let Some(mut meta) = meta else {
        return Err(errs);
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    let (type_name, mesh) = match kind {
        K8sKind::Dataplane => {
            let label = meta.labels.remove(MESH_LABEL);
            let mesh = match (mesh, label) {
                (Some(m), Some(l)) if m != l => {
                    return Err(ValidationErrors::single(
                        "mesh",
                        format!(
                            "{m:?} conflicts with label {MESH_LABEL}: {l:?} in metadata.labels"
                        ),
                    ));
                }
                (Some(m), _) | (None, Some(m)) => m,
                (None, None) => DEFAULT_MESH.to_string(),
            };
            ("Dataplane", Some(mesh))
        }
        _ => ("Mesh", None),
    };
    let mut body = Map::new();
    body.insert("type".into(), Value::String(type_name.into()));
    body.insert("name".into(), Value::String(meta.name));
    if let Some(mesh) = mesh {
        body.insert("mesh".into(), Value::String(mesh));
    }
    if !meta.labels.is_empty() {
        let labels = meta
            .labels
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        body.insert("labels".into(), Value::Object(labels));
    }
    body.extend(spec);
    let value = Value::Object(body);
    let map_path = |p: String| k8s_path(&p);
    match kind {
        K8sKind::Dataplane => typed::<Dataplane>(value, &map_path).map(Resource::Dataplane),
        _ => typed::<Mesh>(value, &map_path).map(Resource::Mesh),
    }
}

/// Maps a path in the assembled Universal body back to where the user wrote it.
fn k8s_path(p: &str) -> String {
    if p.is_empty() {
        return "spec".to_string();
    }
    for (universal, k8s) in [
        ("name", "metadata.name"),
        ("labels", "metadata.labels"),
        ("type", "kind"),
        ("mesh", "mesh"),
    ] {
        if let Some(rest) = p.strip_prefix(universal)
            && (rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
        {
            return format!("{k8s}{rest}");
        }
    }
    if p.starts_with('[') {
        format!("spec{p}")
    } else {
        format!("spec.{p}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::duration::HumanDuration;
    use crate::model::{Backend, DpCert, Rotation};

    /// The Kubernetes YAML of the reference page, verbatim.
    pub(crate) const SEED_KUBERNETES: &str = r#"apiVersion: kuma.io/v1alpha1
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
            expiration: 1d # must be lower than max_ttl in Vault role
        conf:
          fromCp:
            address: https://vault.8200
            agentAddress: "" # optional
            namespace: "" # optional
            pki: kmesh-pki-default # name of the configured PKI
            role: dataplane-proxies # name of the role that will be used to generate data plane proxy certificates
            commonName: '{{ tag "kuma.io/service" }}.mesh' # optional. If set, then commonName is added to the certificate. You can use "tag" directive to pick a tag which will be base for commonName.
            tls:
              caCert:
                secret: sec-1
              skipVerify: false # if set to true, caCert is optional. Set to true only for development
              serverName: "" # verify sever name
            auth: # only one auth options is allowed so it's either "token" or "tls"
              token:
                secret: token-1  # can be file, secret or inlineString
              tls:
                clientKey:
                  secret: sec-2  # can be file, secret or inline
                clientCert:
                  file: /tmp/cert.pem # can be file, secret or inlineString
"#;

    /// The Universal YAML of the reference page, verbatim.
    pub(crate) const SEED_UNIVERSAL: &str = r#"type: Mesh
name: default
mtls:
  enabledBackend: vault-1
  backends:
  - name: vault-1
    type: vault
    dpCert:
      rotation:
        expiration: 24h # must be lower than max_ttl in Vault role
    conf:
      fromCp:
        address: https://vault.8200
        agentAddress: "" # optional
        namespace: "" # optional
        pki: kmesh-pki-default # name of the configured PKI
        role: dataplane-proxies # name of the role that will be used to generate data plane proxy certificates
        commonName: '{{ tag "kuma.io/service" }}.mesh' # optional. If set, then commonName is added to the certificate. You can use "tag" directive to pick a tag which will be base for commonName.
        tls:
          caCert:
            secret: sec-1
          skipVerify: false # if set to true, caCert is optional. Set to true only for development
          serverName: "" # verify sever name
        auth: # only one auth options is allowed so it's either "token" or "tls"
          token:
            secret: token-1  # can be file, secret or inlineString
          tls:
            clientKey:
              secret: sec-2  # can be file, secret or inlineString
            clientCert:
              file: /tmp/cert.pem # can be file, secret or inline
"#;

    fn one(text: &str) -> Resource {
        let mut v = parse_documents(text).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    fn mesh(text: &str) -> Mesh {
        match one(text) {
            Resource::Mesh(m) => m,
            other => panic!("not a mesh: {other:?}"),
        }
    }

    fn err(text: &str) -> ParseError {
        parse_documents(text).unwrap_err()
    }

    fn fields(e: &ValidationErrors) -> Vec<&str> {
        e.errors.iter().map(|e| e.field.as_str()).collect()
    }

    fn set_expiration(m: &mut Mesh, text: &str) {
        let b: &mut Backend = &mut m.mtls.as_mut().unwrap().backends[0];
        b.dp_cert = Some(DpCert {
            rotation: Some(Rotation {
                expiration: Some(HumanDuration::parse(text).unwrap()),
            }),
            key_generation: None,
            key_type: None,
            uri_sans: None,
        });
    }

    #[test]
    fn seed_universal_and_kubernetes_forms_mean_the_same_mesh() {
        let u = mesh(SEED_UNIVERSAL);
        let k = mesh(SEED_KUBERNETES);
        // The page writes the lifetime as 24h in one form and 1d in the other: the same duration.
        assert_eq!(
            u.backends()[0].dp_cert_expiration(),
            k.backends()[0].dp_cert_expiration()
        );
        assert_eq!(
            u.backends()[0].dp_cert_expiration(),
            std::time::Duration::from_secs(86_400)
        );
        // HumanDuration keeps the text as written, so compare with the same spelling.
        let mut k = k;
        set_expiration(&mut k, "24h");
        assert_eq!(u, k);

        assert_eq!(u.name, "default");
        assert_eq!(u.type_, "Mesh");
        let mtls = u.mtls.as_ref().unwrap();
        assert_eq!(mtls.enabled_backend.as_deref(), Some("vault-1"));
        let b = &mtls.backends[0];
        assert_eq!((b.name.as_str(), b.type_.as_str()), ("vault-1", "vault"));
        let crate::model::BackendConf::Vault(v) = b.typed_conf().unwrap() else {
            panic!("not vault")
        };
        let fc = v.from_cp.unwrap();
        assert_eq!(fc.address, "https://vault.8200");
        assert_eq!(fc.pki, "kmesh-pki-default");
        assert_eq!(fc.role, "dataplane-proxies");
        assert_eq!(fc.common_name, "{{ tag \"kuma.io/service\" }}.mesh");
        let auth = fc.auth.unwrap();
        assert_eq!(auth.token.unwrap().secret.as_deref(), Some("token-1"));
        let tls = auth.tls.unwrap();
        assert_eq!(
            tls.client_cert.unwrap().file.as_deref(),
            Some("/tmp/cert.pem")
        );
    }

    #[test]
    fn json_and_yaml_streams_and_arrays() {
        let json = serde_json::json!({"type": "Mesh", "name": "m1"}).to_string();
        assert_eq!(mesh(&json).name, "m1");
        let arr = serde_json::json!([
            {"type": "Mesh", "name": "m1"},
            {"type": "Secret", "name": "s1", "mesh": "m1", "data": "aGk="}
        ])
        .to_string();
        let rs = parse_documents(&arr).unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[1].name(), "s1");

        let stream = "---\ntype: Mesh\nname: a\n---\n# only a comment\n---\n\n---\ntype: Secret\nname: s\nmesh: a\ndata: aGk=\n...\n";
        let rs = parse_documents(stream).unwrap();
        assert_eq!(rs.iter().map(|r| r.name()).collect::<Vec<_>>(), ["a", "s"]);
        assert!(parse_documents("").unwrap().is_empty());
        assert!(parse_documents("---\n---\n").unwrap().is_empty());
        // Flow-style YAML that is not JSON.
        assert_eq!(mesh("{type: Mesh, name: flow}").name, "flow");
        // A byte-order mark is tolerated.
        assert_eq!(mesh("\u{feff}type: Mesh\nname: bom\n").name, "bom");
    }

    #[test]
    fn document_index_is_reported() {
        let e = err("type: Mesh\nname: a\n---\n---\ntype: Mesh\nname: b\nbogus: 1\n");
        assert_eq!(e.document, 3);
        assert_eq!(fields(&e.errors), ["bogus"]);
        assert!(
            e.to_string()
                .starts_with("document 3: bogus: unknown field `bogus`"),
            "{e}"
        );
        let arr = r#"[{"type":"Mesh","name":"a"},{"type":"Mesh","name":"b","mtls":{"backends":[{"name":"x","type":"builtin","dpCert":{"rotation":{"expiration":"soon"}}}]}}]"#;
        let e = err(arr);
        assert_eq!(e.document, 1);
        assert_eq!(
            fields(&e.errors),
            ["[1].mtls.backends[0].dpCert.rotation.expiration"]
        );
    }

    #[test]
    fn type_errors_and_unknown_fields_have_paths() {
        let cases: &[(&str, &str)] = &[
            (
                "type: Mesh\nname: m\nmtls:\n  backends:\n  - name: b\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 10\n",
                "mtls.backends[0].dpCert.rotation.expiration",
            ),
            (
                "type: Mesh\nname: m\nmtls:\n  backends:\n  - name: b\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: forever\n",
                "mtls.backends[0].dpCert.rotation.expiration",
            ),
            (
                "type: Mesh\nname: m\nmtls:\n  backends:\n  - name: b\n    type: builtin\n    dpCert:\n      rotation:\n        expiraton: 1h\n",
                "mtls.backends[0].dpCert.rotation.expiraton",
            ),
            (
                "type: Mesh\nname: m\nmtls:\n  backends:\n  - name: b\n    type: builtin\n  - name: c\n    typ: vault\n",
                "mtls.backends[1].typ",
            ),
            (
                "type: Mesh\nname: m\nmtls:\n  enabledBackend: [a]\n",
                "mtls.enabledBackend",
            ),
            (
                "type: Mesh\nname: m\nmtls:\n  backends: x\n",
                "mtls.backends",
            ),
            (
                "type: Mesh\nname: m\nmtls:\n  backends:\n  - name: b\n    type: builtin\n    dpCert:\n      uriSans: x509\n",
                "mtls.backends[0].dpCert.uriSans",
            ),
            (
                "type: Mesh\nname: m\nmtls:\n  backends:\n  - name: b\n    type: builtin\n    dpCert:\n      keyGeneration: zone\n",
                "mtls.backends[0].dpCert.keyGeneration",
            ),
            (
                "type: Mesh\nname: m\nmtls:\n  backends:\n  - name: b\n    type: builtin\n    dpCert:\n      keyGeneration: proxy\n      keyType: ed25519\n",
                "mtls.backends[0].dpCert.keyType",
            ),
            ("type: Mesh\nname: [1]\n", "name"),
            ("type: Mesh\n", "name"),
            ("type: Mesh\nname: m\nmtlss: {}\n", "mtlss"),
            ("type: Mesh\nname: m\nlabels:\n  a: [1]\n", "labels.a"),
            (
                "type: Mesh\nname: m\nlabels:\n  kuma.io/x: {}\n",
                "labels[\"kuma.io/x\"]",
            ),
            ("type: Secret\nname: s\nmesh: m\n", "data"),
            ("type: Secret\nname: s\nmesh: m\ndata: 1\n", "data"),
            (
                "type: Dataplane\nname: d\nmesh: m\nnetworking:\n  inbound:\n  - port: 70000\n",
                "networking.inbound[0].port",
            ),
            (
                "type: Dataplane\nname: d\nmesh: m\nnetworking:\n  inbound:\n  - tags:\n      kuma.io/service: [x]\n",
                "networking.inbound[0].tags[\"kuma.io/service\"]",
            ),
            ("type: Mesh2\nname: m\n", "type"),
            ("name: m\n", "type"),
            ("type: 3\nname: m\n", "type"),
            ("- 1\n- 2\n", "[0]"),
            ("just a string\n", ""),
        ];
        for (text, field) in cases {
            let e = err(text);
            assert_eq!(fields(&e.errors), [*field], "{text}\n{e}");
            assert!(!e.errors.errors[0].reason.is_empty());
        }
        let e = err(
            "type: Mesh\nname: m\nmtls:\n  backends:\n  - name: b\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 10\n",
        );
        assert!(
            e.errors.errors[0].reason.contains("expected a string"),
            "{e}"
        );
    }

    #[test]
    fn kubernetes_forms() {
        let dp = "apiVersion: kuma.io/v1alpha1\nkind: Dataplane\nmesh: m1\nmetadata:\n  name: web-1\n  namespace: kuma-demo\nspec:\n  networking:\n    address: 10.0.0.1\n    inbound:\n    - port: 8080\n      tags:\n        kuma.io/service: web\n";
        let Resource::Dataplane(d) = one(dp) else {
            panic!()
        };
        assert_eq!((d.name.as_str(), d.mesh.as_str()), ("web-1", "m1"));
        assert_eq!(d.services(), ["web"]);
        let u = "type: Dataplane\nname: web-1\nmesh: m1\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags:\n      kuma.io/service: web\n";
        assert_eq!(one(u), Resource::Dataplane(d));

        let by_label = "apiVersion: kuma.io/v1alpha1\nkind: Dataplane\nmetadata:\n  name: d\n  labels:\n    kuma.io/mesh: m2\n    app: x\nspec:\n  networking:\n    inbound: []\n";
        let Resource::Dataplane(d) = one(by_label) else {
            panic!()
        };
        assert_eq!(d.mesh, "m2");
        assert_eq!(d.labels.keys().collect::<Vec<_>>(), ["app"]);
        let default_mesh = "apiVersion: kuma.io/v1alpha1\nkind: Dataplane\nmetadata:\n  name: d\nspec:\n  networking: {}\n";
        assert_eq!(one(default_mesh).mesh(), "default");

        let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sec-1\n  namespace: kuma-system\n  labels:\n    kuma.io/mesh: m1\ndata:\n  value: aGk=\ntype: system.kuma.io/secret\n";
        let Resource::Secret(s) = one(secret) else {
            panic!()
        };
        assert_eq!(s, {
            let mut s2 = Secret::new("m1", "sec-1", b"hi");
            s2.data = "aGk=".into();
            s2
        });
        let secret_default = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  value: aGk=\ntype: system.kuma.io/secret\n";
        assert_eq!(one(secret_default).mesh(), "default");

        let mesh_labels = "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: m\n  labels:\n    team: a\n";
        let m = mesh(mesh_labels);
        assert_eq!(m.labels.get("team").map(String::as_str), Some("a"));
        assert!(m.mtls.is_none());
    }

    #[test]
    fn kubernetes_errors_name_fields_as_written() {
        let cases: &[(&str, &[&str])] = &[
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: m\nspec:\n  mtls:\n    backends:\n    - name: b\n      type: builtin\n      dpCert:\n        rotation:\n          expiration: x\n",
                &["spec.mtls.backends[0].dpCert.rotation.expiration"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: m\nspec:\n  mtlz: {}\n",
                &["spec.mtlz"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Meshh\nmetadata:\n  name: m\n",
                &["kind"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nmetadata:\n  name: m\n",
                &["kind"],
            ),
            ("kind: Mesh\nmetadata:\n  name: m\n", &["apiVersion"]),
            (
                "apiVersion: v1\nkind: Mesh\nmetadata:\n  name: m\n",
                &["apiVersion"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Mesh\n",
                &["metadata.name"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata: {}\n",
                &["metadata.name"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: m\n  labels:\n    a: [1]\n",
                &["metadata.labels.a"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: m\n  nam: x\n",
                &["metadata.nam"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: m\nspec:\n  name: m\n",
                &["spec.name"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: m\nspec: 3\n",
                &["spec"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmesh: x\nmetadata:\n  name: m\n",
                &["mesh"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Dataplane\nmetadata:\n  name: d\n",
                &["spec.networking"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Dataplane\nmesh: a\nmetadata:\n  name: d\n  labels:\n    kuma.io/mesh: b\nspec:\n  networking: {}\n",
                &["mesh"],
            ),
            (
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  value: aGk=\ntype: Opaque\n",
                &["type"],
            ),
            (
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  value: aGk=\n",
                &["type"],
            ),
            (
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  other: aGk=\ntype: system.kuma.io/secret\n",
                &["data.other", "data.value"],
            ),
            (
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ntype: system.kuma.io/secret\n",
                &["data.value"],
            ),
            (
                "apiVersion: kuma.io/v1alpha1\nkind: Secret\nmetadata:\n  name: s\ntype: system.kuma.io/secret\ndata:\n  value: aGk=\n",
                &["apiVersion"],
            ),
            // Several problems at once are all reported.
            (
                "apiVersion: v2\nkind: Secret\nfoo: 1\ntype: x\n",
                &["apiVersion", "foo", "metadata.name", "type", "data.value"],
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert_eq!(fields(&e.errors), *want, "{text}\n{e}");
        }
    }

    #[test]
    fn universal_kuma_secret_type_gets_a_hint() {
        let e = err("type: system.kuma.io/secret\nname: s\n");
        assert_eq!(fields(&e.errors), ["type"]);
        assert!(e.errors.errors[0].reason.contains("kind: Secret"));
    }

    #[test]
    fn yaml_syntax_errors_and_duplicates() {
        let e = err("type: Mesh\nname: a\n  bad: [\n");
        assert_eq!(e.document, 1);
        assert!(e.errors.errors[0].reason.starts_with("invalid YAML"), "{e}");
        let e = err("type: Mesh\nname: a\nname: b\n");
        assert!(e.errors.errors[0].reason.contains("duplicate"), "{e}");
        let e = err("type: Mesh\nname: a\n---\n: : :\n  - [\n");
        assert_eq!(e.document, 2);
        let e = err("{\"type\": \"Mesh\", \"name\": \"m\"");
        assert!(e.errors.errors[0].reason.starts_with("invalid JSON"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        for n in [MAX_DEPTH + 1, 100, 200, 10_000, 100_000] {
            let yaml = format!(
                "type: Mesh\nname: m\nlabels: {}{}\n",
                "[".repeat(n),
                "]".repeat(n)
            );
            let e = err(&yaml);
            assert_eq!(e.errors.errors.len(), 1, "{n}");
            let json = format!(
                r#"{{"type":"Mesh","name":"m","labels":{}{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            );
            assert!(parse_documents(&json).is_err(), "{n}");
            let block_depth = n.min(2000);
            let block = format!(
                "type: Mesh\nname: m\nlabels:\n{}",
                (0..block_depth)
                    .map(|i| format!("{}- \n", " ".repeat(i * 2)))
                    .collect::<String>()
            );
            let e = err(&block);
            assert!(
                e.errors.errors[0].reason.contains("deeper than 64"),
                "{block_depth}: {e}"
            );
        }
        let e = err(&format!(
            "type: Mesh\nname: m\nlabels: {}{}\n",
            "[".repeat(70),
            "]".repeat(70)
        ));
        assert!(e.errors.errors[0].reason.contains("deeper than 64"), "{e}");
        // Depth check on values handed in directly.
        let mut v = Value::Null;
        for _ in 0..1000 {
            v = Value::Array(vec![v]);
        }
        let e = parse_value(v).unwrap_err();
        assert!(e.errors[0].reason.contains("deeper than 64"));
    }

    #[test]
    fn huge_and_non_utf8_input_is_refused() {
        let big = format!(
            "type: Mesh\nname: m\n# {}\n",
            "x".repeat(crate::limits::INPUT_BYTES)
        );
        let e = err(&big);
        assert_eq!(e.document, 0);
        assert!(e.to_string().contains("4 MiB"), "{e}");
        assert!(parse_body(big.as_bytes()).is_err());
        let e = parse_body(b"type: Mesh\nname: \xff\n").unwrap_err();
        assert!(e.errors[0].reason.contains("UTF-8"), "{e}");
        let e = parse_documents_bytes(b"\xc3\x28").unwrap_err();
        assert_eq!(e.document, 0);
        // Alias expansion ("billion laughs") is stopped by the YAML parser.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            bomb.push_str(&format!(
                "{}: &{} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
                (b'a' + i) as char,
                (b'a' + i) as char,
                p = (b'a' + i - 1) as char
            ));
        }
        assert!(parse_documents(&bomb).is_err());
    }

    #[test]
    fn body_holds_exactly_one_resource() {
        let r = parse_body(br#"{"type":"Mesh","name":"m"}"#).unwrap();
        assert_eq!(r.name(), "m");
        let r = parse_body(b"type: Secret\nname: s\nmesh: m\ndata: aGk=\n").unwrap();
        assert_eq!(r.kind(), crate::model::Kind::Secret);
        assert!(parse_body(b"").is_err());
        assert!(parse_body(b"# nothing\n").is_err());
        let e = parse_body(b"type: Mesh\nname: a\n---\ntype: Mesh\nname: b\n").unwrap_err();
        assert!(e.errors[0].reason.contains("exactly one"), "{e}");
        assert!(parse_body(br#"[{"type":"Mesh","name":"m"}]"#).is_err());
        let e = parse_body(b"type: Mesh\nname: m\nx: 1\n").unwrap_err();
        assert_eq!(fields(&e), ["x"]);
    }

    #[test]
    fn odd_yaml_never_panics() {
        for text in [
            "!!binary aGk=",
            "!tag {type: Mesh}",
            "type: !custom Mesh\nname: m\n",
            "? [a, b]\n: c\n",
            "1: 2\n",
            "type: Mesh\nname: .nan\n",
            "type: Mesh\nname: 123456789012345678901234567890\n",
            "*unknown",
            "&a [*a]",
            "{",
            "[",
            "\"",
            "\t",
            "%YAML 1.2\n---\ntype: Mesh\nname: m\n",
            "<<: {type: Mesh}\nname: m\n",
            "\0",
        ] {
            let _ = parse_documents(text);
            let _ = parse_body(text.as_bytes());
        }
    }

    #[test]
    fn key_path_quotes_non_plain_keys() {
        assert_eq!(key_path("", "a"), "a");
        assert_eq!(key_path("labels", "team"), "labels.team");
        assert_eq!(
            key_path("tags", "kuma.io/service"),
            "tags[\"kuma.io/service\"]"
        );
        assert_eq!(key_path("tags", ""), "tags[\"\"]");
    }
}
