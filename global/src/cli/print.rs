//! What the command line prints: the tables of `get`, the result of `apply`, the `validate`
//! report, and documents as YAML or JSON.

use serde::{Deserialize, Serialize};

use super::args::{ExportFormat, Format};
use super::validate::ResourceReport;
use crate::admission::BackendCheck;
use crate::api::types::{
    ApplyResult, DataplaneView, ReplicaView, ResourceView, ZoneVaultCheck, ZoneView,
};

/// The header row of a table.
fn header(columns: &[&str]) -> Vec<String> {
    columns.iter().map(|c| c.to_string()).collect()
}

/// A document as `-o json` or `-o yaml` shows it.
pub(super) fn document(format: Format, value: &impl Serialize) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Format::Yaml => print!("{}", serde_norway::to_string(value).unwrap_or_default()),
        Format::Table => {}
    }
}

/// Resources as `global apply -f` takes them: YAML documents, or one JSON array.
pub(super) fn export(format: ExportFormat, items: &[serde_json::Value]) {
    match format {
        ExportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(items).unwrap_or_default()
        ),
        ExportFormat::Yaml => {
            for item in items {
                print!("---\n{}", serde_norway::to_string(item).unwrap_or_default());
            }
        }
    }
}

pub(super) fn apply_result(result: &ApplyResult, dry_run: bool) {
    for r in &result.results {
        let kind = r.type_.to_lowercase();
        let (name, mesh, outcome) = (&r.name, &r.mesh, &r.result);
        if kind == "mesh" {
            println!("mesh {name:?} {outcome}");
        } else {
            println!("{kind} {name:?} (mesh {mesh:?}) {outcome}");
        }
    }
    print_checks(&result.checks);
    for w in &result.warnings {
        println!("warning: {w}");
    }
    if dry_run {
        println!("dry run: nothing was stored");
    }
}

fn print_checks(checks: &[BackendCheck]) {
    for c in checks {
        for step in &c.checks {
            println!(
                "  {} mesh {:?} backend {:?} {}: {}",
                if step.passed { "PASS" } else { "FAIL" },
                c.mesh,
                c.backend,
                step.name,
                step.detail
            );
        }
    }
}

/// What the mesh table shows of a Mesh's spec.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct MtlsSummary {
    enabled_backend: Option<String>,
    backends: Vec<BackendSummary>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BackendSummary {
    name: String,
    #[serde(rename = "type")]
    type_: String,
}

pub(super) fn meshes(items: &[ResourceView]) {
    let mut rows = vec![header(&["NAME", "MTLS", "BACKENDS", "MODIFIED"])];
    for m in items {
        let mtls: MtlsSummary = m
            .spec
            .get("mtls")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let enabled = mtls.enabled_backend.unwrap_or_default();
        let backends: Vec<String> = mtls
            .backends
            .iter()
            .map(|b| format!("{}/{}", b.name, b.type_))
            .collect();
        rows.push(vec![
            m.field("name").into(),
            if enabled.is_empty() {
                "off".into()
            } else {
                enabled
            },
            backends.join(","),
            m.modification_time.clone(),
        ]);
    }
    print!("{}", common::table::render(&rows));
}

pub(super) fn secrets(items: &[ResourceView]) {
    let mut rows = vec![header(&["MESH", "NAME", "MODIFIED"])];
    for x in items {
        rows.push(vec![
            x.field("mesh").into(),
            x.field("name").into(),
            x.modification_time.clone(),
        ]);
    }
    print!("{}", common::table::render(&rows));
}

pub(super) fn zones(items: &[ZoneView]) {
    let mut rows = vec![header(&["NAME", "STATUS", "LAST SEEN", "VAULT"])];
    for z in items {
        let vault = z
            .vault
            .iter()
            .map(|c| {
                let c: ZoneVaultCheck = serde_json::from_value(c.clone()).unwrap_or_default();
                format!(
                    "{}/{}={}",
                    c.mesh,
                    c.backend,
                    if c.ok {
                        "ok".to_string()
                    } else {
                        format!("FAILED ({})", c.error)
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(vec![
            z.name.clone(),
            if z.online {
                "online".into()
            } else {
                "offline".into()
            },
            z.last_seen.clone().unwrap_or_default(),
            vault,
        ]);
    }
    print!("{}", common::table::render(&rows));
}

/// The rows of `global get replicas`.
fn replica_rows(items: &[ReplicaView]) -> Vec<Vec<String>> {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let mut rows = vec![header(&[
        "ID",
        "HOSTNAME",
        "API",
        "ALIVE",
        "LEADER",
        "ZONES",
        "LAST HEARTBEAT",
    ])];
    for r in items {
        rows.push(vec![
            r.id.clone(),
            r.hostname.clone(),
            r.api_address.clone(),
            yes_no(r.alive),
            yes_no(r.leader),
            r.zones.join(","),
            r.last_heartbeat.clone().unwrap_or_default(),
        ]);
    }
    rows
}

pub(super) fn replicas(items: &[ReplicaView]) {
    print!("{}", common::table::render(&replica_rows(items)));
}

pub(super) fn signing_keys(keys: &[crate::api::types::SigningKeyView]) {
    let mut rows = vec![header(&["KID", "CREATED", "STATE"])];
    for k in keys {
        rows.push(vec![
            k.kid.clone(),
            if k.created.is_empty() {
                "-".into()
            } else {
                k.created.clone()
            },
            if k.active { "signing" } else { "verifying" }.into(),
        ]);
    }
    print!("{}", common::table::render(&rows));
}

pub(super) fn revoked(items: &[serde_json::Value]) {
    let mut rows = vec![header(&["ID", "REVOKED", "BY"])];
    for r in items {
        let field = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        rows.push(vec![field("id"), field("revokedAt"), field("by")]);
    }
    print!("{}", common::table::render(&rows));
}

pub(super) fn dataplanes(items: &[DataplaneView]) {
    let mut rows = vec![header(&[
        "MESH",
        "NAME",
        "ZONE",
        "SERVICE",
        "BACKEND",
        "SERIAL",
        "EXPIRES",
        "CONNECTED",
    ])];
    for d in items {
        let service = d
            .networking
            .inbound
            .first()
            .and_then(|i| i.tags.get(common::model::SERVICE_TAG))
            .cloned()
            .unwrap_or_default();
        let cert = d.certificate.as_ref();
        rows.push(vec![
            d.mesh.clone(),
            d.name.clone(),
            d.zone.clone(),
            service,
            cert.map(|c| c.backend.clone()).unwrap_or_default(),
            cert.map(|c| c.serial.clone()).unwrap_or_default(),
            cert.and_then(|c| c.expiration.clone()).unwrap_or_default(),
            if !d.zone_online {
                "unknown (zone offline)".into()
            } else if d.connected {
                "yes".into()
            } else {
                "no".into()
            },
        ]);
    }
    print!("{}", common::table::render(&rows));
}

/// The `validate` report in the format asked for.
pub(super) fn validate_report(format: Format, reports: &[ResourceReport]) {
    match format {
        Format::Json | Format::Yaml => document(format, &reports),
        Format::Table => report(reports),
    }
}

/// The `validate` report for a terminal.
fn report(reports: &[ResourceReport]) {
    for r in reports {
        let scope = if r.kind == "Mesh" {
            String::new()
        } else {
            format!(" (mesh {:?})", r.mesh)
        };
        println!(
            "{} {:?}{}: {}",
            r.kind,
            r.name,
            scope,
            if r.valid { "VALID" } else { "INVALID" }
        );
        for c in &r.checks {
            for step in &c.checks {
                // Warnings are listed once, below.
                if step.passed && step.detail.starts_with("warning:") {
                    continue;
                }
                let field = step
                    .field
                    .as_deref()
                    .map(|f| format!(" [{f}]"))
                    .unwrap_or_default();
                println!(
                    "  {}  {} {}{}: {}",
                    if step.passed { "PASS" } else { "FAIL" },
                    c.backend,
                    step.name,
                    if step.passed { String::new() } else { field },
                    step.detail
                );
            }
        }
        // Errors that repeat a failed check above are not printed twice.
        let failed_details: Vec<&str> = r
            .checks
            .iter()
            .flat_map(|c| c.checks.iter())
            .filter(|s| !s.passed)
            .map(|s| s.detail.as_str())
            .collect();
        for e in &r.errors {
            if failed_details.iter().any(|d| e.reason.contains(d)) {
                continue;
            }
            println!("  FAIL  {}: {}", e.field, e.reason);
        }
        for w in &r.warnings {
            println!("  WARN  {w}");
        }
    }
    let valid = reports.iter().filter(|r| r.valid).count();
    println!(
        "{valid} of {} resources valid; nothing was stored",
        reports.len()
    );
}
