//! `global validate`: every resource of the files admitted on its own, without a server and
//! without storing anything, through the same pipeline as the API (`admission`), with the
//! Secrets of the files resolvable; a report per resource.

use common::datasource::SecretMap;
use common::model::Resource;

use super::failure::Failure;
use super::input::{parse_inputs, read_inputs};
use crate::admission::{self, BackendCheck};

/// The `validate` report of one resource.
#[derive(Debug, serde::Serialize)]
pub struct ResourceReport {
    pub kind: String,
    pub name: String,
    pub mesh: String,
    pub valid: bool,
    pub errors: Vec<common::FieldError>,
    pub checks: Vec<BackendCheck>,
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub unreachable: bool,
}

/// Validates every resource of the files on its own, with the Secrets of the files resolvable.
pub async fn validate_resources(
    resources: Vec<Resource>,
    bounds: common::vault::Timeouts,
) -> Vec<ResourceReport> {
    let mut secrets = SecretMap::default();
    for r in &resources {
        if let Resource::Secret(s) = r {
            let _ = secrets.insert_secret(s);
        }
    }
    let mut reports = Vec::new();
    for r in resources {
        let mut report = ResourceReport {
            kind: r.kind().to_string(),
            name: r.name().to_string(),
            mesh: r.mesh().to_string(),
            valid: true,
            errors: vec![],
            checks: vec![],
            warnings: vec![],
            unreachable: false,
        };
        match r {
            Resource::Mesh(m) => match admission::admit_mesh(m, None, &secrets, true, bounds).await
            {
                Ok(a) => {
                    report.checks = a.checks;
                    report.warnings = a.warnings;
                }
                Err(refused) => {
                    report.valid = false;
                    report.errors = refused.errors.errors;
                    report.warnings = refused
                        .checks
                        .iter()
                        .flat_map(|c| {
                            c.warnings
                                .iter()
                                .map(move |w| format!("backend {:?}: {w}", c.backend))
                        })
                        .collect();
                    report.checks = refused.checks;
                    report.unreachable = refused.unreachable;
                }
            },
            Resource::Secret(s) => {
                if let Err(e) = common::validate::validate_secret(&s) {
                    report.valid = false;
                    report.errors = e.errors;
                }
            }
            Resource::Dataplane(d) => {
                if let Err(e) = common::validate::validate_dataplane(&d) {
                    report.valid = false;
                    report.errors = e.errors;
                }
            }
        }
        reports.push(report);
    }
    reports
}

/// Reads, parses and validates the files.
pub(super) async fn validate(
    files: &[String],
    bounds: common::vault::Timeouts,
) -> Result<Vec<ResourceReport>, Failure> {
    let inputs = read_inputs(files)?;
    let resources = parse_inputs(&inputs)?;
    if resources.is_empty() {
        return Err(Failure::usage("no resources in the given files"));
    }
    let vault = super::spinner::vault_backends(&resources);
    let message = if vault.is_empty() {
        format!("validating {} resources", resources.len())
    } else {
        format!(
            "waiting for Vault: a test certificate for {}",
            vault.join(", ")
        )
    };
    Ok(super::spinner::while_waiting(Some(message), validate_resources(resources, bounds)).await)
}

/// How `validate` ends: success when every resource is valid, exit 3 when the only failures
/// are Vault being unreachable, else 1.
pub(super) fn verdict(reports: &[ResourceReport]) -> Result<(), Failure> {
    let invalid: Vec<&ResourceReport> = reports.iter().filter(|r| !r.valid).collect();
    if invalid.is_empty() {
        Ok(())
    } else if invalid.iter().all(|r| r.unreachable) {
        Err(Failure::unreachable(format!(
            "{} of {} resources could not be validated: Vault unreachable",
            invalid.len(),
            reports.len()
        )))
    } else {
        Err(Failure::refused(format!(
            "{} of {} resources are invalid",
            invalid.len(),
            reports.len()
        )))
    }
}
