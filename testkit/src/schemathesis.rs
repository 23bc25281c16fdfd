//! schemathesis (PyPI, pinned in `python::SCHEMATHESIS`), the OpenAPI conformance checker, run as
//! a real client against a running control plane: it reads the API's own `/openapi.json`, sends
//! generated requests to every operation (the examples in the description, the boundary cases of
//! each schema, then random ones; valid and invalid data) and checks every answer against the
//! description. A bounded number of examples per operation keeps a run short.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::proc::{CmdOutput, run_bounded};
use crate::python::{SCHEMATHESIS, venv_python};

/// What every answer is checked for: no 5xx, a status the description lists (or its `default`),
/// the content type it lists for that status, its headers and its body schema.
pub const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance";

/// How one run goes.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    /// The API's base URL (`http://127.0.0.1:PORT`); the description is read at `/openapi.json`.
    pub base: &'a str,
    /// Sent as `Authorization: Bearer` with every request (and the description's read).
    pub token: Option<&'a str>,
    /// At most this many generated requests per operation and phase.
    pub max_examples: u32,
    /// Where it runs (its example database and reports are written there).
    pub dir: &'a Path,
    /// Killed after this long.
    pub limit: Duration,
}

/// Runs schemathesis (installing it first if needed); exit 0 means every answer conformed.
pub fn run(r: &Run) -> Result<CmdOutput> {
    let python = venv_python(&SCHEMATHESIS)?;
    let schemathesis = python.with_file_name("schemathesis");
    std::fs::create_dir_all(r.dir)?;
    let mut cmd = Command::new(schemathesis);
    cmd.current_dir(r.dir)
        .env("NO_COLOR", "1")
        .env("PYTHONUNBUFFERED", "1")
        .arg("run")
        .arg(format!("{}/openapi.json", r.base.trim_end_matches('/')))
        .args(["--url", r.base])
        .args(["--checks", CHECKS])
        .args(["--max-examples", &r.max_examples.to_string()])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--workers", "1"])
        .args(["--request-timeout", "60"])
        .arg("--no-color");
    if let Some(t) = r.token {
        cmd.args(["--header", &format!("Authorization: Bearer {t}")]);
    }
    run_bounded(cmd, r.limit)
}
