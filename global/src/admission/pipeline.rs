//! The admission pipeline of global: the one that every way in goes through (HTTP PUT,
//! batch apply, dry runs and `global validate`). It parses nothing and stores nothing: given the
//! resources a request wants to write and a view of what is already there, it validates them,
//! runs the backend checks (the Vault test certificate for new or changed vault backends, the
//! provided CA's key and flags), generates builtin CAs that do not exist yet, and returns either
//! the exact batch to store or every reason for refusal.

use std::collections::BTreeMap;

use common::ValidationErrors;
use common::ca;
use common::datasource::{SecretLookup, SecretMap};
use common::model::{Backend, BackendConf, Kind, Mesh, Resource, Secret};
use common::store::{Op, ResourceKey};
use common::vault::{Timeouts, VaultCheckReport};
use serde::{Deserialize, Serialize};

/// What global already holds, as far as admission needs to know.
pub trait Existing: SecretLookup {
    fn mesh(&self, name: &str) -> Option<Mesh>;
    fn secret_exists(&self, mesh: &str, name: &str) -> bool {
        self.secret_data(mesh, name).is_some()
    }
}

/// The result of a backend check, for the response body and the `validate` report.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackendCheck {
    pub mesh: String,
    pub backend: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub ok: bool,
    /// Named steps with pass/fail and detail (the Vault check's steps, or the provided CA's).
    pub checks: Vec<CheckStep>,
    pub warnings: Vec<String>,
    /// True when the check failed only because Vault could not be reached.
    #[serde(skip)]
    pub unreachable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckStep {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    /// The backend field a failed step blames (below `mtls.backends[i]`), e.g. `conf.fromCp.role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl CheckStep {
    fn passed(name: &str, detail: String) -> Self {
        Self {
            name: name.to_string(),
            passed: true,
            detail,
            field: None,
        }
    }
}

impl BackendCheck {
    /// A check of one step made by global itself (builtin and provided CAs).
    fn local(mesh: &Mesh, backend: &Backend, step: CheckStep, warnings: Vec<String>) -> Self {
        Self {
            mesh: mesh.name.clone(),
            backend: backend.name.clone(),
            type_: backend.type_.clone(),
            ok: step.passed,
            checks: vec![step],
            warnings,
            unreachable: false,
        }
    }

    fn from_vault(r: VaultCheckReport) -> Self {
        let unreachable = r.unreachable;
        Self {
            mesh: r.mesh,
            backend: r.backend,
            type_: "vault".into(),
            ok: r.ok,
            checks: r
                .checks
                .into_iter()
                .map(|c| CheckStep {
                    name: c.name,
                    passed: c.passed,
                    detail: c.detail,
                    field: c.field,
                })
                .collect(),
            warnings: r.warnings,
            unreachable,
        }
    }

    /// The failed steps, joined, for an error reason.
    pub fn failure_reason(&self) -> String {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        failed.join("; ")
    }
}

/// A successful admission: the batch to store and what was found on the way.
#[derive(Debug, Default)]
pub struct Admitted {
    pub ops: Vec<Op>,
    pub checks: Vec<BackendCheck>,
    pub warnings: Vec<String>,
}

/// A refused admission. `errors` names every bad field; `checks` holds the backend reports.
#[derive(Debug, Default)]
pub struct Refused {
    pub resource: String,
    pub errors: ValidationErrors,
    pub checks: Vec<BackendCheck>,
    /// True when the only failures are Vault being unreachable (exit code 3 for `validate`).
    pub unreachable: bool,
}

impl Refused {
    /// The refusal, as the refusal of `resource` (a batch names the resource it refused).
    fn of(mut self, resource: &str) -> Self {
        self.resource = resource.to_string();
        self
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} refused: {}", self.resource, self.errors)
    }
}

/// Whether a backend must be checked against Vault: new, or its conf/type/dpCert changed.
fn backend_changed(old: Option<&Mesh>, backend: &Backend) -> bool {
    match old {
        None => true,
        Some(old) => old.backends().iter().find(|b| b.name == backend.name) != Some(backend),
    }
}

/// Admits one batch of resources (for example every document of an `apply`), all or nothing.
/// Secrets in the batch are visible to the Meshes in it. With `dry_run` builtin CAs are not
/// generated (the batch is never stored).
pub async fn admit(
    batch: Vec<Resource>,
    existing: &dyn Existing,
    dry_run: bool,
    timeouts: Timeouts,
) -> Result<Admitted, Refused> {
    // Secrets of the batch shadow stored ones.
    let overlay = Overlay::new(existing, &batch);
    let mut admitted = Admitted::default();
    for r in batch {
        let label = format!("{} {:?}", r.kind(), r.name());
        match r {
            Resource::Secret(s) => {
                if let Err(errors) = common::validate::validate_secret(&s) {
                    return Err(Refused {
                        resource: label,
                        errors,
                        ..Default::default()
                    });
                }
                if existing.mesh(&s.mesh).is_none() && !overlay.batch_meshes.contains(&s.mesh) {
                    return Err(Refused {
                        resource: label,
                        errors: ValidationErrors::single(
                            "mesh",
                            format!("mesh {:?} does not exist: create the Mesh first", s.mesh),
                        ),
                        ..Default::default()
                    });
                }
                // A changed Secret that a stored vault backend uses (a rotated token, a new CA
                // certificate) is checked against Vault like a changed backend: refused when
                // Vault rejects it, accepted with a warning when Vault cannot be reached (so a
                // token can still be rotated while Vault is down).
                let changed = existing.secret_data(&s.mesh, &s.name)
                    != overlay.batch_secrets.secret_data(&s.mesh, &s.name);
                if changed
                    && !overlay.batch_meshes.contains(&s.mesh)
                    && let Some(mesh) = existing.mesh(&s.mesh)
                {
                    let mut a = recheck_secret_users(&mesh, &s.name, &overlay, timeouts)
                        .await
                        .map_err(|refused| refused.of(&label))?;
                    admitted.checks.append(&mut a.checks);
                    admitted.warnings.append(&mut a.warnings);
                }
                admitted.ops.push(Op::Put(Resource::Secret(s)));
            }
            Resource::Mesh(m) => {
                let old = existing.mesh(&m.name);
                let mut a = admit_mesh(m, old.as_ref(), &overlay, dry_run, timeouts)
                    .await
                    .map_err(|refused| refused.of(&label))?;
                admitted.ops.append(&mut a.ops);
                admitted.checks.append(&mut a.checks);
                admitted.warnings.append(&mut a.warnings);
            }
            Resource::Dataplane(_) => {
                return Err(Refused {
                    resource: label,
                    errors: ValidationErrors::single(
                        "type",
                        "Dataplanes are registered by proxies in their zone and are read-only on global",
                    ),
                    ..Default::default()
                });
            }
        }
    }
    Ok(admitted)
}

/// Runs the Vault check of every vault backend of `mesh` that uses Secret `secret`, with the
/// Secrets as they would be after the write. Vault refusing is a refusal (on the Secret's
/// `data`); Vault unreachable is only a warning.
async fn recheck_secret_users(
    mesh: &Mesh,
    secret: &str,
    secrets: &dyn SecretLookup,
    timeouts: Timeouts,
) -> Result<Admitted, Refused> {
    let mut admitted = Admitted::default();
    let mut errors = ValidationErrors::new();
    for backend in mesh.backends() {
        if backend.type_ != "vault" {
            continue;
        }
        let mut refs = Vec::new();
        if let Some(conf) = &backend.conf {
            find_secret_refs(conf, "conf", secret, &mut refs);
        }
        if refs.is_empty() {
            continue;
        }
        let check = BackendCheck::from_vault(
            common::vault::check_backend(&mesh.name, backend, secrets, timeouts).await,
        );
        if !check.ok {
            if check.unreachable {
                admitted.warnings.push(format!(
                    "backend {:?} of mesh {:?} uses this Secret and could not be checked: {}",
                    backend.name,
                    mesh.name,
                    check.failure_reason()
                ));
            } else {
                errors.push(
                    "data",
                    format!(
                        "backend {:?} of mesh {:?} uses this Secret ({}) and Vault refused it: {}",
                        backend.name,
                        mesh.name,
                        refs.join(", "),
                        check.failure_reason()
                    ),
                );
            }
        }
        admitted.checks.push(check);
    }
    if errors.is_empty() {
        Ok(admitted)
    } else {
        Err(Refused {
            resource: String::new(),
            errors,
            checks: admitted.checks,
            unreachable: false,
        })
    }
}

/// Admits one Mesh given the mesh it replaces (if any).
pub async fn admit_mesh(
    mesh: Mesh,
    old: Option<&Mesh>,
    secrets: &dyn SecretLookup,
    dry_run: bool,
    timeouts: Timeouts,
) -> Result<Admitted, Refused> {
    let mut refused = Refused {
        resource: format!("Mesh {:?}", mesh.name),
        ..Default::default()
    };
    if let Err(errors) = common::validate::validate_mesh(&mesh, secrets) {
        refused.errors = errors;
        return Err(refused);
    }
    let mut admitted = Admitted::default();
    let mut errors = ValidationErrors::new();
    let mut generated: Vec<Secret> = Vec::new();
    let mut all_unreachable = true;
    for (i, backend) in mesh.backends().iter().enumerate() {
        let field = format!("mtls.backends[{i}]");
        let conf = match backend.typed_conf() {
            Ok(c) => c,
            Err(e) => {
                // validate_mesh already reports conf errors; keep this defensive.
                errors.push(format!("{field}.conf"), e.reason);
                all_unreachable = false;
                continue;
            }
        };
        match conf {
            BackendConf::Vault(_) => {
                if !backend_changed(old, backend) {
                    continue;
                }
                let report =
                    common::vault::check_backend(&mesh.name, backend, secrets, timeouts).await;
                let check = BackendCheck::from_vault(report);
                if !check.ok {
                    all_unreachable &= check.unreachable;
                    // One error per failed step, at the field it blames.
                    for step in check.checks.iter().filter(|c| !c.passed) {
                        let path = match &step.field {
                            Some(f) if !f.is_empty() => format!("{field}.{f}"),
                            _ => field.clone(),
                        };
                        errors.push(
                            path,
                            format!(
                                "Vault backend {:?} failed the {} check: {}",
                                backend.name, step.name, step.detail
                            ),
                        );
                    }
                }
                admitted.warnings.extend(
                    check
                        .warnings
                        .iter()
                        .map(|w| format!("backend {:?}: {w}", backend.name)),
                );
                admitted.checks.push(check);
            }
            BackendConf::Provided(p) => {
                let (cert, key) = match (&p.cert, &p.key) {
                    (Some(c), Some(k)) => (c, k),
                    _ => continue, // validate_mesh reported it
                };
                let cert = cert.resolve(&mesh.name, secrets);
                let key = key.resolve(&mesh.name, secrets);
                let (cert, key) = match (cert, key) {
                    (Ok(c), Ok(k)) => (c, k),
                    (c, k) => {
                        all_unreachable = false;
                        if let Err(e) = c {
                            errors.push(format!("{field}.conf.cert"), e.to_string());
                        }
                        if let Err(e) = k {
                            errors.push(format!("{field}.conf.key"), e.to_string());
                        }
                        continue;
                    }
                };
                let mut step = CheckStep::passed("provided CA", String::new());
                let mut warnings = Vec::new();
                match ca::validate_provided_detailed(&cert, &key) {
                    Ok(info) => {
                        step.detail = info.to_string();
                        warnings = info.warnings.clone();
                    }
                    Err(problems) => {
                        all_unreachable = false;
                        step.passed = false;
                        step.detail = problems
                            .iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join("; ");
                        for p in problems {
                            errors.push(format!("{field}.conf.{}", p.field.as_str()), p.reason);
                        }
                    }
                }
                admitted.warnings.extend(
                    warnings
                        .iter()
                        .map(|w| format!("backend {:?}: {w}", backend.name)),
                );
                admitted
                    .checks
                    .push(BackendCheck::local(&mesh, backend, step, warnings));
            }
            BackendConf::Builtin(b) => {
                let (cert_name, key_name) = ca::builtin_secret_names(&mesh.name, &backend.name);
                if secrets.secret_data(&mesh.name, &cert_name).is_some()
                    && secrets.secret_data(&mesh.name, &key_name).is_some()
                {
                    continue;
                }
                if dry_run {
                    admitted.checks.push(BackendCheck::local(
                        &mesh,
                        backend,
                        CheckStep::passed(
                            "builtin CA",
                            format!(
                                "a CA would be generated and stored as Secrets {cert_name} and {key_name}"
                            ),
                        ),
                        vec![],
                    ));
                    continue;
                }
                let mesh_name = mesh.name.clone();
                let generated_ca =
                    tokio::task::spawn_blocking(move || ca::generate_builtin_ca(&mesh_name, &b))
                        .await;
                match generated_ca {
                    Ok(Ok(pair)) => {
                        generated.push(Secret::new(
                            &mesh.name,
                            &cert_name,
                            pair.cert_pem.as_bytes(),
                        ));
                        generated.push(Secret::new(
                            &mesh.name,
                            &key_name,
                            pair.key_pem().as_bytes(),
                        ));
                        admitted.checks.push(BackendCheck::local(
                            &mesh,
                            backend,
                            CheckStep::passed(
                                "builtin CA",
                                format!("generated, stored as Secrets {cert_name} and {key_name}"),
                            ),
                            vec![],
                        ));
                    }
                    Ok(Err(e)) => {
                        all_unreachable = false;
                        errors.push(
                            format!("{field}.conf"),
                            format!("cannot generate the CA: {e}"),
                        );
                    }
                    Err(e) => {
                        all_unreachable = false;
                        errors.push(
                            format!("{field}.conf"),
                            format!("CA generation failed: {e}"),
                        );
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        refused.errors = errors;
        refused.checks = admitted.checks;
        refused.unreachable = all_unreachable;
        return Err(refused);
    }
    // The Mesh goes first, then the generated CA secrets: one batch, one transaction.
    admitted.ops.push(Op::Put(Resource::Mesh(mesh)));
    admitted
        .ops
        .extend(generated.into_iter().map(|s| Op::Put(Resource::Secret(s))));
    Ok(admitted)
}

/// Secrets the store holds plus those of a batch being admitted.
struct Overlay<'a> {
    existing: &'a dyn Existing,
    batch_secrets: SecretMap,
    batch_meshes: Vec<String>,
}

impl<'a> Overlay<'a> {
    fn new(existing: &'a dyn Existing, batch: &[Resource]) -> Self {
        let mut batch_secrets = SecretMap::default();
        let mut batch_meshes = Vec::new();
        for r in batch {
            match r {
                Resource::Secret(s) => {
                    // Undecodable data is refused by validate_secret when the Secret is admitted.
                    let _ = batch_secrets.insert_secret(s);
                }
                Resource::Mesh(m) => batch_meshes.push(m.name.clone()),
                Resource::Dataplane(_) => {}
            }
        }
        Self {
            existing,
            batch_secrets,
            batch_meshes,
        }
    }
}

impl SecretLookup for Overlay<'_> {
    fn secret_data(&self, mesh: &str, name: &str) -> Option<Vec<u8>> {
        self.batch_secrets
            .secret_data(mesh, name)
            .or_else(|| self.existing.secret_data(mesh, name))
    }

    fn file_roots(&self) -> Option<std::sync::Arc<common::datasource::FileRoots>> {
        self.existing.file_roots()
    }
}

/// The Meshes whose enabled or listed backends use a Secret, as (mesh, backend, field) triples:
/// such a Secret may not be deleted.
pub fn secret_users(mesh: &Mesh, secret: &str) -> Vec<String> {
    let mut users = Vec::new();
    for (i, b) in mesh.backends().iter().enumerate() {
        if let Some(conf) = &b.conf {
            let mut paths = Vec::new();
            find_secret_refs(
                conf,
                &format!("mtls.backends[{i}].conf"),
                secret,
                &mut paths,
            );
            for p in paths {
                users.push(format!("{p} (backend {:?})", b.name));
            }
        }
        let (cert, key) = ca::builtin_secret_names(&mesh.name, &b.name);
        if b.type_ == "builtin" && (cert == secret || key == secret) {
            users.push(format!(
                "mtls.backends[{i}] (builtin CA of backend {:?})",
                b.name
            ));
        }
    }
    users
}

fn find_secret_refs(v: &serde_json::Value, path: &str, secret: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if map.get("secret").and_then(|s| s.as_str()) == Some(secret) {
                out.push(path.to_string());
            }
            for (k, child) in map {
                find_secret_refs(child, &format!("{path}.{k}"), secret, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_secret_refs(child, &format!("{path}[{i}]"), secret, out);
            }
        }
        _ => {}
    }
}

/// Keys of the resources a batch deletes when a Mesh is deleted: the Mesh and everything in it.
pub fn mesh_delete_ops(mesh: &str, stored: &BTreeMap<Kind, Vec<ResourceKey>>) -> Vec<Op> {
    let mut ops = vec![Op::Delete(ResourceKey::mesh(mesh))];
    for keys in stored.values() {
        ops.extend(keys.iter().cloned().map(Op::Delete));
    }
    ops
}
