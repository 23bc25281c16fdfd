//! `scenarios dry-run`: validation-only runs of the real `global` binary on a good backend and on
//! six broken ones, against an HTTPS OpenBao set up with the reference page's steps. For each file,
//! `global validate -f FILE` (no server) and `global apply --dry-run -f FILE` (through a running
//! global) must give the expected verdict (exit code) and reason; afterwards global must hold no
//! Mesh and no Secret. Finally the good file is applied for real, to show it was storable.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use testkit::openbao::BaoServer;
use testkit::openbao::seed::{self, RoleOptions};

use super::{CommonArgs, WorkDir};
use crate::report::{Report, Steps};
use testkit::cluster::{GlobalProc, b64, run_global};
use testkit::cluster::{MESH, PKI, ROLE, VaultMesh, token_secret};
use testkit::proc::{CmdOutput, free_port};

/// Options of the dry-run drill.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DryRunOptions {
    #[command(flatten)]
    pub common: CommonArgs,
}

/// A role whose `allowed_uri_sans` do not cover the mesh (`spiffe://other/*`).
const OTHER_URIS_ROLE: &str = "other-uris";
/// A role the token's policy names but that was never created (step 2 forgotten).
const MISSING_ROLE: &str = "no-such-role";

/// One file of the drill and what both commands must say about it.
struct Case {
    name: &'static str,
    what: &'static str,
    yaml: String,
    validate_exit: i32,
    apply_exit: i32,
    /// Every one of these must appear in each command's output.
    reasons: Vec<String>,
}

struct MeshParams<'a> {
    address: &'a str,
    role: &'a str,
    expiration: &'a str,
    token: &'a str,
    ca_pem: &'a str,
}

/// The page's Universal Mesh with `tls.caCert` from Secret `sec-1` and the token from Secret
/// `token-1`, and both Secrets.
fn mesh_yaml(p: &MeshParams) -> String {
    format!(
        "{}---\n{}---\ntype: Secret\nname: sec-1\nmesh: {MESH}\ndata: {}\n",
        VaultMesh::new(p.address, p.expiration)
            .role(p.role)
            .ca_cert_secret("sec-1")
            .yaml(),
        token_secret(p.token),
        b64(p.ca_pem),
    )
}

/// The line of `text` where `key` appears, as `FIELD: REASON`: the field the line blames
/// (`[conf.fromCp.auth]` in a validate report, `* mtls.backends[0]...:` in an apply refusal).
fn headline(text: &str, key: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let Some(&line) = lines
        .iter()
        .find(|l| (l.starts_with("* ") || l.starts_with("FAIL")) && l.contains(key))
        .or_else(|| lines.iter().find(|l| l.contains(key)))
    else {
        return String::new();
    };
    // `FAIL  vault-1 issue [FIELD]: REASON` (validate) or `* FIELD: REASON` (apply).
    let (field, line) = if let (Some(a), Some(b)) = (line.find('['), line.find("]: ")) {
        (
            line.get(a + 1..b).unwrap_or(""),
            line.get(b + 3..).unwrap_or(line),
        )
    } else if let Some(rest) = line.strip_prefix("* ") {
        rest.split_once(": ").unwrap_or(("", rest))
    } else {
        ("", line)
    };
    // Apply refusals repeat `Vault backend "vault-1" failed the issue check: ` before the reason.
    let reason = match line.find(" check: ") {
        Some(i) if line.starts_with("Vault backend ") => &line[i + " check: ".len()..],
        _ => line,
    };
    let snippet = reason.trim().to_string();
    if field.is_empty() {
        snippet
    } else {
        format!("{field}: {snippet}")
    }
}

/// `detail` with `line` inserted after its first line.
fn with_case(detail: &str, line: &str) -> String {
    match detail.split_once('\n') {
        Some((first, rest)) => format!("{first}\n{line}\n{rest}"),
        None => format!("{detail}\n{line}"),
    }
}

/// Checks the exit code and that every one of `must` appears; the detail starts with the line
/// where `key` appears, then the whole output.
fn judge(out: &CmdOutput, exit: i32, must: &[String], key: &str) -> Result<String> {
    let text = out.text();
    let missing: Vec<&String> = must.iter().filter(|r| !text.contains(r.as_str())).collect();
    if out.code != Some(exit) || !missing.is_empty() {
        bail!(
            "exit {:?} (expected {exit}); missing {:?} in:\n{}",
            out.code,
            missing,
            text.trim()
        );
    }
    Ok(format!(
        "exit {exit}: {}\n{}",
        headline(&text, key),
        text.trim()
    ))
}

pub async fn run(opts: DryRunOptions) -> Result<Report> {
    let work = WorkDir::new("kmesh-dry-run", opts.common.dir.as_deref())?;
    let mut steps = Steps::new(
        "dry-run: global validate and apply --dry-run on good and broken Vault backends",
    );
    let outcome = body(&opts, &work, &mut steps).await;
    let report = steps.finish(outcome);
    print!("\n{}", report.summary());
    work.finish(report.passed());
    Ok(report)
}

async fn body(opts: &DryRunOptions, work: &WorkDir, steps: &mut Steps) -> Result<()> {
    let ec = opts.common.ec;
    let (bao, token) = steps.must(
        "OpenBao (HTTPS) with the page's Vault steps",
        async {
            let bao = BaoServer::start_tls().await.context("starting OpenBao")?;
            let cli = bao.admin();
            let token = tokio::task::spawn_blocking(move || -> Result<String> {
                let role = |r: RoleOptions| if ec { r.key_type("ec") } else { r };
                seed::setup_root_ca(&cli, MESH, PKI)?;
                seed::create_role(&cli, PKI, ROLE, &role(RoleOptions::seed(MESH)))?;
                seed::create_role(
                    &cli,
                    PKI,
                    OTHER_URIS_ROLE,
                    &role(RoleOptions::seed(MESH)).allowed_uri_sans("spiffe://other/*,kuma://*"),
                )?;
                let mut policies = Vec::new();
                for r in [ROLE, OTHER_URIS_ROLE, MISSING_ROLE] {
                    policies.push(seed::write_policy(&cli, MESH, PKI, r)?);
                }
                let refs: Vec<&str> = policies.iter().map(String::as_str).collect();
                Ok(seed::create_token(&cli, &refs)?)
            })
            .await??;
            let detail = format!(
                "{} (dev TLS; its CA goes into Secret sec-1 as tls.caCert)\nPKI {PKI}, root CA, role {ROLE}{}, role {OTHER_URIS_ROLE} (allowed_uri_sans=spiffe://other/*), \
                 token with the page's policy for {ROLE}, {OTHER_URIS_ROLE} and {MISSING_ROLE} (a role never created)\nlog {}",
                bao.addr(),
                if ec { " (key_type=ec)" } else { "" },
                bao.log_path().display()
            );
            Ok(((bao, token), detail))
        }
        .await,
    )?;
    let ca_pem = bao
        .ca_pem()
        .ok_or_else(|| anyhow!("the TLS dev server has no CA"))?
        .to_string();
    let other_ca = common::ca::generate_builtin_ca("other", &Default::default())?.cert_pem;
    let addr = bao.addr();
    let closed = format!("https://127.0.0.1:{}", free_port());

    let global = steps.must(
        "global",
        async {
            let g = GlobalProc::start(&work.path().join("global")).await?;
            let detail = format!("API {}, log {}", g.api_url(), g.proc.log.display());
            Ok((g, detail))
        }
        .await,
    )?;

    let base = MeshParams {
        address: &addr,
        role: ROLE,
        expiration: "24h",
        token: &token,
        ca_pem: &ca_pem,
    };
    let cases = vec![
        Case {
            name: "good",
            what: "the page's setup",
            yaml: mesh_yaml(&base),
            validate_exit: 0,
            apply_exit: 0,
            reasons: vec![],
        },
        Case {
            name: "wrong token",
            what: "a token Vault does not know",
            yaml: mesh_yaml(&MeshParams {
                token: "not-a-real-token",
                ..base
            }),
            validate_exit: 1,
            apply_exit: 1,
            reasons: vec!["permission denied".into()],
        },
        Case {
            name: "missing role",
            what: "the policy names a role that step 2 never created",
            yaml: mesh_yaml(&MeshParams {
                role: MISSING_ROLE,
                ..base
            }),
            validate_exit: 1,
            apply_exit: 1,
            reasons: vec![format!("no role \"{MISSING_ROLE}\"")],
        },
        Case {
            name: "TTL above max_ttl",
            what: "dpCert.rotation.expiration 1000h, the role's max_ttl is 720h",
            yaml: mesh_yaml(&MeshParams {
                expiration: "1000h",
                ..base
            }),
            validate_exit: 1,
            apply_exit: 1,
            reasons: vec!["720h".into(), "1000h".into(), "max_ttl".into()],
        },
        Case {
            name: "SAN not allowed",
            what: "a role whose allowed_uri_sans do not cover spiffe://default/*",
            yaml: mesh_yaml(&MeshParams {
                role: OTHER_URIS_ROLE,
                ..base
            }),
            validate_exit: 1,
            apply_exit: 1,
            reasons: vec!["does not allow the URI SANs".into()],
        },
        Case {
            name: "bad CA cert",
            what: "tls.caCert is a CA that did not sign Vault's certificate",
            yaml: mesh_yaml(&MeshParams {
                ca_pem: &other_ca,
                ..base
            }),
            validate_exit: 1,
            apply_exit: 1,
            reasons: vec!["not signed by a trusted CA".into()],
        },
        Case {
            name: "unreachable address",
            what: "nothing listens at the address",
            yaml: mesh_yaml(&MeshParams {
                address: &closed,
                ..base
            }),
            // Both exit 3: Vault could not be reached (global says so in its refusal).
            validate_exit: 3,
            apply_exit: 3,
            reasons: vec!["cannot reach Vault".into()],
        },
    ];

    let files = work.path().join("files");
    std::fs::create_dir_all(&files)?;
    let mut good_file = None;
    for case in &cases {
        let file = files.join(format!("{}.yaml", case.name.replace(' ', "-")));
        std::fs::write(&file, &case.yaml)?;
        let f = file.display().to_string();
        if case.name == "good" {
            good_file = Some(f.clone());
        }
        let mut validate_reasons = case.reasons.clone();
        let mut apply_reasons = case.reasons.clone();
        if case.validate_exit == 0 {
            validate_reasons.push(format!("Mesh \"{MESH}\": VALID"));
            apply_reasons.extend([
                format!("mesh \"{MESH}\" valid"),
                "dry run: nothing was stored".to_string(),
            ]);
        } else {
            validate_reasons.push(format!("Mesh \"{MESH}\": INVALID"));
            apply_reasons.push("mtls.backends[0]".to_string());
        }
        let out = tokio::task::spawn_blocking({
            let f = f.clone();
            move || {
                run_global(
                    &["validate".into(), "-f".into(), f],
                    Duration::from_secs(120),
                )
            }
        })
        .await??;
        let key = case
            .reasons
            .first()
            .cloned()
            .unwrap_or_else(|| "VALID".into());
        let what = format!("case: {}", case.what);
        steps.check(
            &format!("validate: {}", case.name),
            judge(&out, case.validate_exit, &validate_reasons, &key).map(|d| with_case(&d, &what)),
        );
        let out = tokio::task::spawn_blocking({
            let f = f.clone();
            let args = vec![
                "apply".to_string(),
                "--dry-run".into(),
                "-f".into(),
                f,
                "--api".into(),
                global.api_url(),
                "--admin-token-file".into(),
                global.admin_token_file().display().to_string(),
            ];
            move || run_global(&args, Duration::from_secs(120))
        })
        .await??;
        steps.check(
            &format!("apply --dry-run: {}", case.name),
            judge(
                &out,
                case.apply_exit,
                &apply_reasons,
                if case.reasons.is_empty() {
                    "nothing was stored"
                } else {
                    &key
                },
            )
            .map(|d| with_case(&d, &what)),
        );
    }

    steps.check(
        "nothing stored",
        async {
            let meshes = global.api.get_ok("/meshes").await?;
            let secrets = global
                .api
                .get_ok(&format!("/meshes/{MESH}/secrets"))
                .await?;
            let (m, s) = (
                meshes["total"].as_u64().unwrap_or(u64::MAX),
                secrets["total"].as_u64().unwrap_or(u64::MAX),
            );
            if m != 0 || s != 0 {
                bail!("global holds {m} Meshes and {s} Secrets after dry runs: {meshes} {secrets}");
            }
            Ok(format!(
                "GET /meshes: total 0; GET /meshes/{MESH}/secrets: total 0 (after {} validate and {} apply --dry-run)",
                cases.len(),
                cases.len()
            ))
        }
        .await,
    );

    let good = good_file.ok_or_else(|| anyhow!("no good file"))?;
    steps.check(
        "apply (for real) of the good file stores it",
        async {
            let out = tokio::task::spawn_blocking({
                let args = vec![
                    "apply".to_string(),
                    "-f".into(),
                    good,
                    "--api".into(),
                    global.api_url(),
                    "--admin-token-file".into(),
                    global.admin_token_file().display().to_string(),
                ];
                move || run_global(&args, Duration::from_secs(120))
            })
            .await??;
            let detail = judge(
                &out,
                0,
                &[
                    format!("mesh \"{MESH}\" created"),
                    "secret \"token-1\"".into(),
                ],
                "created",
            )?;
            let meshes = global.api.get_ok("/meshes").await?;
            let secrets = global
                .api
                .get_ok(&format!("/meshes/{MESH}/secrets"))
                .await?;
            let names: Vec<&str> = secrets["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str())
                .collect();
            if meshes["total"] != 1 || names.len() != 2 {
                bail!("expected 1 Mesh and 2 Secrets, found {meshes} {secrets}");
            }
            let shown = secrets.to_string();
            if shown.contains(&b64(&token)) {
                bail!("secret data appears in GET /secrets");
            }
            Ok(format!(
                "GET /meshes: total 1; GET /meshes/{MESH}/secrets: {}\n{detail}",
                names.join(", ")
            ))
        }
        .await,
    );
    drop(global);
    drop(bao);
    Ok(())
}
