//! The proxy agent (`zone proxy`): registers one dataplane with its zone over the identity stream
//! (`proto/identity.proto`) and keeps `cert.pem`, `key.pem` and `ca.pem` current in its output
//! directory, running `--exec` after each change.
//!
//! Two tasks: the connection loop reads the stream and hands each bundle to the writer through a
//! watch channel (latest wins, so a slow `--exec` never stalls the stream), and the writer
//! validates and writes files (`files`). On every (re)connection the agent presents the
//! certificate it holds, so a restarted zone can let it keep it. When the zone is away the files
//! stay as they are and the agent reconnects with exponential backoff and jitter (first retry
//! within `reconnect_initial`, capped at `reconnect_max`), logging each change of state once
//! (failures are compared by kind, not by their text).
//!
//! The stream is `Session`: after its registration the agent reports what the writer did with
//! each bundle (an `AgentStatus` through a second watch channel: written, or not and why, what
//! the files hold, the agent's clock), so the zone and global show a proxy whose files are stale.
//! A zone that predates `Session` gets `Stream`, without reports. A write that fails is retried
//! with backoff until it succeeds or a newer bundle arrives; a good file is never deleted.
//!
//! With `--workload-api unix:///PATH` the agent also serves the SPIFFE Workload API on that
//! socket (`workload`): the writer publishes what the files hold after each successful write, and
//! the server stops, its socket removed, on the agent's one shutdown path.

pub mod files;
pub mod workload;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::backoff::{Backoff, Jitter};
use common::clock::Skew;
use common::shutdown::Shutdown;
use proto::dpid::dataplane_identity_client::DataplaneIdentityClient;
use proto::dpid::{
    AgentMessage, AgentProblem, AgentStatus, IdentityRequest, IdentityResponse, agent_message,
};
use tokio::sync::watch;

use crate::dial::{self, End, Redial, authorize, describe, failed};
use files::{Bundle, OutDir};

/// Largest `--exec` output kept in the log, per stream.
const EXEC_OUTPUT_LOGGED: usize = 4096;

/// Configuration of the agent of one proxy.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `grpcs://HOST:PORT` of the zone's `--dp-addr`.
    pub zone_address: String,
    /// PEM CA that signs the zone's certificate (`<zone data-dir>/dp-ca.pem`).
    pub zone_ca_file: Option<PathBuf>,
    /// Do not verify the zone's certificate (explicit opt-in only).
    pub insecure_skip_verify: bool,
    /// File holding the dataplane token (re-read on every connection attempt).
    pub token_file: PathBuf,
    pub mesh: String,
    pub name: String,
    /// Inbound tags, `kuma.io/service` included.
    pub tags: BTreeMap<String, String>,
    pub out_dir: PathBuf,
    /// Run with `sh -c` after each change of the files.
    pub exec: Option<String>,
    pub exec_timeout: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// `unix:///PATH`: also serve the SPIFFE Workload API on that socket (`--workload-api`).
    pub workload_api: Option<String>,
}

impl AgentConfig {
    pub fn new(
        zone_address: &str,
        token_file: PathBuf,
        mesh: &str,
        name: &str,
        service: &str,
        out_dir: PathBuf,
    ) -> Self {
        let mut tags = BTreeMap::new();
        tags.insert(common::model::SERVICE_TAG.to_string(), service.to_string());
        Self {
            zone_address: zone_address.to_string(),
            zone_ca_file: None,
            insecure_skip_verify: false,
            token_file,
            mesh: mesh.to_string(),
            name: name.to_string(),
            tags,
            out_dir,
            exec: None,
            exec_timeout: Duration::from_secs(30),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            workload_api: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag is wrong: nothing was started.
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
}

const ZONE: crate::dial::Flags = crate::dial::Flags {
    address: "--zone-address",
    ca_file: "--zone-ca-file",
    peer: "the zone",
    why_tls: "private keys travel on this stream, so it runs over TLS only",
    port_hint: "the zone's --dp-addr",
    ca_hint: "the zone writes <data-dir>/dp-ca.pem",
};

/// Where the zone is, checked once at start.
type Target = crate::dial::Target;

fn target(config: &AgentConfig) -> Result<Target, String> {
    Target::parse(
        &ZONE,
        &config.zone_address,
        config.zone_ca_file.as_ref(),
        config.insecure_skip_verify,
    )
}

/// Checks the configuration without starting anything.
pub fn check(config: &AgentConfig) -> Result<(), AgentError> {
    target(config).map_err(AgentError::Config)?;
    let mut errs = common::ValidationErrors::new();
    common::validate::validate_mesh_name("--mesh", &config.mesh, &mut errs);
    common::validate::validate_object_name("--name", &config.name, &mut errs);
    if let Some(e) = errs.errors.first() {
        return Err(AgentError::Config(format!("{}: {}", e.field, e.reason)));
    }
    match config.tags.get(common::model::SERVICE_TAG) {
        Some(s) if !s.trim().is_empty() => {}
        _ => {
            return Err(AgentError::Config(
                "--service is required and must not be empty".into(),
            ));
        }
    }
    if config.exec_timeout.is_zero() {
        return Err(AgentError::Config("--exec-timeout must be above 0".into()));
    }
    if let Some(endpoint) = &config.workload_api {
        workload::socket_path(endpoint).map_err(AgentError::Config)?;
    }
    Ok(())
}

/// Runs the agent until `shutdown` completes. Errors only for a bad configuration, an output
/// directory that cannot be created or a `--workload-api` socket that cannot be bound; everything
/// else is retried.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    check(&config)?;
    let target = target(&config).map_err(AgentError::Config)?;
    let out = OutDir::open(&config.out_dir).map_err(|e| {
        AgentError::Io(format!(
            "cannot create --out-dir {}: {e}",
            config.out_dir.display()
        ))
    })?;
    let (_trigger, shutdown) = Shutdown::from_future(shutdown);
    match out.held() {
        Some(h) => tracing::info!(
            dir = %config.out_dir.display(), serial = %h.serial, expires = %rfc3339(h.not_after_unix),
            "holding a certificate from a previous run: presenting it to the zone"
        ),
        None => {
            tracing::info!(dir = %config.out_dir.display(), "no usable certificate on disk yet")
        }
    }
    let api = match &config.workload_api {
        Some(endpoint) => {
            let path = workload::socket_path(endpoint).map_err(AgentError::Config)?;
            let publisher = workload::Publisher::new(&config.mesh, &out);
            let server = workload::Server::start(&path, publisher.subscribe(), shutdown.clone())
                .await
                .map_err(|e| AgentError::Io(e.to_string()))?;
            Some((publisher, server))
        }
        None => None,
    };
    let publisher = api.as_ref().map(|(p, _)| p.clone());
    let (bundle_tx, bundle_rx) = watch::channel::<Option<Bundle>>(None);
    let (status_tx, status_rx) = watch::channel(disk_status(&out, 0, None));
    let writer = tokio::spawn(writer(
        config.clone(),
        out.clone(),
        bundle_rx,
        status_tx,
        publisher,
    ));
    let links = Links {
        bundles: bundle_tx,
        status: status_rx,
    };
    connection_loop(&config, &target, &out, &links, shutdown).await;
    let Links {
        bundles: bundle_tx, ..
    } = links;
    drop(bundle_tx);
    let _ = writer.await;
    if let Some((_, server)) = api {
        server.stop().await;
    }
    tracing::info!(mesh = %config.mesh, name = %config.name, "proxy agent stopped");
    Ok(())
}

/// For logs: RFC 3339, or the number itself when out of range.
fn rfc3339(unix: i64) -> String {
    common::clock::rfc3339(unix).unwrap_or_else(|| unix.to_string())
}

/// The connection loop's ends of the two channels to and from the writer.
struct Links {
    bundles: watch::Sender<Option<Bundle>>,
    /// What the writer did last (sent to the zone on `Session`).
    status: watch::Receiver<AgentStatus>,
}

/// What the agent tells the zone: `problem` (None: the files hold the last bundle) about bundle
/// `generation`, and what `out` holds, at this host's clock.
fn disk_status(out: &OutDir, generation: u64, failure: Option<&files::ApplyError>) -> AgentStatus {
    let (disk_serial, disk_not_after_unix) = out.on_disk().unwrap_or_default();
    AgentStatus {
        agent_time_unix_ms: common::clock::now_ms(),
        generation,
        problem: failure.map_or(AgentProblem::None, |f| f.problem) as i32,
        error: failure.map(|f| f.message.clone()).unwrap_or_default(),
        disk_serial,
        disk_not_after_unix,
    }
}

async fn connection_loop(
    config: &AgentConfig,
    target: &Target,
    out: &OutDir,
    links: &Links,
    shutdown: Shutdown,
) {
    let mut redial = Redial::new(config.reconnect_initial, config.reconnect_max);
    // Set once the zone answers UNIMPLEMENTED to `Session` (it predates it).
    let mut legacy = false;
    let mut clocks = ZoneClock::default();
    loop {
        if shutdown.is_shutdown() {
            return;
        }
        let mut s = Session {
            config,
            target,
            out,
            links,
            shutdown: &shutdown,
            legacy: &mut legacy,
            clocks: &mut clocks,
        };
        match s.run(&mut redial).await {
            End::Shutdown => return,
            End::Failed {
                error,
                lasted,
                delivered,
            } => match lasted {
                Some(lasted) => redial.lost(error, lasted, delivered, "lost the stream to the zone; keeping the files and reconnecting"),
                None => redial.failed(error, "cannot get an identity from the zone; keeping the files and retrying with backoff"),
            },
        }
        if !redial.pause(&shutdown).await {
            return;
        }
    }
}

fn bundle_of(resp: IdentityResponse, last_key: &mut Option<String>) -> Bundle {
    // "Keep your key" means the key the zone last sent on this stream, when it sent one: the
    // writer may not have written it yet (latest bundle wins).
    let key_pem = match resp.key_pem {
        Some(k) => {
            *last_key = Some(k.clone());
            Some(k)
        }
        None => last_key.clone(),
    };
    Bundle {
        generation: resp.generation,
        cert_chain_pem: resp.cert_chain_pem,
        key_pem,
        trust_bundle_pem: resp.trust_bundle_pem,
        backend: resp.backend,
        serial: resp.serial,
        not_after_unix: resp.not_after_unix,
    }
}

/// The zone's clock as its bundles say it, logged once per change of state.
#[derive(Default)]
struct ZoneClock {
    skewed: bool,
}

impl ZoneClock {
    fn observe(&mut self, zone_time_ms: i64) {
        if zone_time_ms <= 0 {
            return;
        }
        let now = common::clock::now_ms();
        let skew = Skew::measure(zone_time_ms, now, now, 0);
        if skew.is_notable() != self.skewed {
            self.skewed = skew.is_notable();
            if self.skewed {
                tracing::warn!(
                    skew_ms = skew.ms,
                    "clock skew: {}",
                    skew.describe("the zone")
                );
            } else {
                tracing::info!(
                    skew_ms = skew.ms,
                    "clock skew gone: {}",
                    skew.describe("the zone")
                );
            }
        }
    }
}

/// One connection to the zone.
struct Session<'a> {
    config: &'a AgentConfig,
    target: &'a Target,
    out: &'a OutDir,
    links: &'a Links,
    shutdown: &'a Shutdown,
    legacy: &'a mut bool,
    clocks: &'a mut ZoneClock,
}

impl Session<'_> {
    async fn run(&mut self, redial: &mut Redial) -> End {
        let (config, target, out, shutdown) = (self.config, self.target, self.out, self.shutdown);
        let (token, channel) =
            match dial::open(target, &config.token_file, Duration::from_secs(5), shutdown).await {
                Ok(opened) => opened,
                Err(end) => return end,
            };
        let presented = out.held();
        // The zone reuses a presented certificate only with proof that we hold its key.
        let (possession_signature, possession_unix) = presented
            .as_ref()
            .and_then(|h| out.possession_proof(h, &config.mesh, &config.name))
            .unwrap_or_default();
        let hello = IdentityRequest {
            mesh: config.mesh.clone(),
            name: config.name.clone(),
            tags: config.tags.clone().into_iter().collect(),
            cert_chain_pem: presented
                .as_ref()
                .map(|h| h.cert_chain_pem.clone())
                .unwrap_or_default(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            possession_signature,
            possession_unix,
        };
        let mut client = DataplaneIdentityClient::new(channel);
        // `Session`: the registration, then our reports, through a small queue.
        let (reports, outbound) = tokio::sync::mpsc::channel::<AgentMessage>(4);
        let mut status = self.links.status.clone();
        let response = if *self.legacy {
            None
        } else {
            let _ = reports.try_send(AgentMessage {
                message: Some(agent_message::Message::Hello(hello.clone())),
            });
            // What the files hold now, for a zone that just met us.
            let _ = reports.try_send(AgentMessage {
                message: Some(agent_message::Message::Status(fresh(
                    &status.borrow_and_update(),
                ))),
            });
            let stream = futures::stream::unfold(outbound, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            });
            let mut request = tonic::Request::new(stream);
            if let Err(e) = authorize(&mut request, &token) {
                return failed(e);
            }
            let r = tokio::select! {
                r = client.session(request) => r,
                _ = shutdown.wait() => return End::Shutdown,
            };
            match r {
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    tracing::info!(
                        "the zone predates reports from agents: using its older stream (failures to write files are not reported)"
                    );
                    *self.legacy = true;
                    None
                }
                other => Some(other),
            }
        };
        let response = match response {
            Some(r) => r,
            None => {
                let mut request = tonic::Request::new(hello);
                if let Err(e) = authorize(&mut request, &token) {
                    return failed(e);
                }
                tokio::select! {
                    r = client.stream(request) => r,
                    _ = shutdown.wait() => return End::Shutdown,
                }
            }
        };
        let mut inbound = match response {
            Ok(r) => r.into_inner(),
            Err(status) => return failed(describe(&status, "the zone", "proxy")),
        };
        let since = Instant::now();
        tracing::info!(
            zone = %target.uri, mesh = %config.mesh, name = %config.name,
            presented = presented.as_ref().map(|h| h.serial.as_str()).unwrap_or(""),
            reports = !*self.legacy,
            "connected to the zone: dataplane registered"
        );
        redial.connected();
        let mut last_key: Option<String> = None;
        // The key made for the last CSR asked for (keyGeneration: proxy), until its certificate
        // comes.
        let mut pending_key: Option<String> = None;
        let mut delivered = false;
        let reporting = !*self.legacy;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => return End::Shutdown,
                changed = status.changed(), if reporting => {
                    if changed.is_err() {
                        return End::Shutdown;
                    }
                    let report = fresh(&status.borrow_and_update());
                    // Latest wins: a report that does not fit now is superseded by a later one.
                    let _ = reports.try_send(AgentMessage {
                        message: Some(agent_message::Message::Status(report)),
                    });
                }
                msg = inbound.message() => {
                    let error = match msg {
                        Ok(Some(resp)) if resp.csr_request.is_some() => {
                            self.clocks.observe(resp.zone_time_unix_ms);
                            let ask = resp.csr_request.unwrap_or_default();
                            match make_csr(&ask).await {
                                Ok(made) => {
                                    pending_key = Some(made.key_pem);
                                    let msg = AgentMessage {
                                        message: Some(agent_message::Message::Csr(proto::dpid::Csr {
                                            der: made.csr_der,
                                            nonce: ask.nonce,
                                        })),
                                    };
                                    if reports.send(msg).await.is_err() {
                                        return End::Failed { error: "the stream to the zone closed".into(), lasted: Some(since.elapsed()), delivered };
                                    }
                                    tracing::info!(key_type = %ask.key_type, "made a new key and sent its CSR: the key stays here");
                                }
                                Err(e) => tracing::error!(key_type = %ask.key_type, error = %e, "cannot make the key and CSR the zone asked for"),
                            }
                            continue;
                        }
                        Ok(Some(resp)) => {
                            tracing::debug!(generation = resp.generation, serial = %resp.serial, has_key = resp.key_pem.is_some(), "identity bundle received");
                            self.clocks.observe(resp.zone_time_unix_ms);
                            delivered = true;
                            let mut bundle = bundle_of(resp, &mut last_key);
                            // A certificate for the key made here: it goes with that key.
                            if let Some(k) = pending_key.take_if(|k| {
                                common::x509::private_key_matches_cert(&bundle.cert_chain_pem, k)
                            }) {
                                last_key = Some(k.clone());
                                bundle.key_pem = Some(k);
                            }
                            self.links.bundles.send_replace(Some(bundle));
                            continue;
                        }
                        Ok(None) => "the zone ended the stream".to_string(),
                        Err(status) => describe(&status, "the zone", "proxy"),
                    };
                    return End::Failed { error, lasted: Some(since.elapsed()), delivered };
                }
            }
        }
    }
}

/// A new key and its CSR, as the zone asked (made off the async threads: RSA takes a while).
async fn make_csr(
    ask: &proto::dpid::CsrRequest,
) -> Result<common::csr::Generated, common::csr::CsrError> {
    let key_type = common::model::KeyType::parse(&ask.key_type).ok_or_else(|| {
        common::csr::CsrError::Parse(format!("unknown key type {:?}", ask.key_type))
    })?;
    tokio::task::spawn_blocking(move || common::csr::generate(key_type))
        .await
        .unwrap_or_else(|e| {
            Err(common::csr::CsrError::Generate(
                key_type.as_str(),
                e.to_string(),
            ))
        })
}

/// A report as it leaves: stamped with this host's clock now.
fn fresh(status: &AgentStatus) -> AgentStatus {
    AgentStatus {
        agent_time_unix_ms: common::clock::now_ms(),
        ..status.clone()
    }
}

/// First and longest waits between tries of a bundle whose files could not be written.
const WRITE_RETRY_INITIAL: Duration = Duration::from_secs(1);
const WRITE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Writes each bundle (the latest when several arrive meanwhile) and runs `--exec` after a change;
/// says what it did on `status`, and publishes what the files hold to the Workload API after each
/// successful write. A failed write is retried with backoff until it succeeds or a newer bundle
/// arrives. Ends when the connection loop drops the sender, after the last bundle.
async fn writer(
    config: AgentConfig,
    out: OutDir,
    mut bundles: watch::Receiver<Option<Bundle>>,
    status: watch::Sender<AgentStatus>,
    publisher: Option<workload::Publisher>,
) {
    let publisher = publisher.as_ref();
    let mut pending: Option<Bundle> = None;
    let mut last_error: Option<files::ApplyError> = None;
    let mut retry = Backoff::new(WRITE_RETRY_INITIAL, WRITE_RETRY_MAX, Jitter::UpperHalf);
    loop {
        // Some(open): the channel moved (or closed); None: time to retry the pending bundle.
        let event = if pending.is_some() {
            let wait = retry.next_delay();
            tokio::select! {
                r = bundles.changed() => Some(r.is_ok()),
                _ = tokio::time::sleep(wait) => None,
            }
        } else {
            Some(bundles.changed().await.is_ok())
        };
        match event {
            Some(true) => {
                if let Some(b) = bundles.borrow_and_update().clone() {
                    pending = Some(b);
                    retry.reset();
                }
            }
            Some(false) => {
                // Closed, nothing unseen: one last try of a pending bundle.
                if let Some(b) = pending.take() {
                    apply(&config, &out, &b, &mut last_error, &status, publisher).await;
                }
                return;
            }
            None => {}
        }
        if let Some(b) = pending.take()
            && !apply(&config, &out, &b, &mut last_error, &status, publisher).await
        {
            pending = Some(b);
        }
    }
}

/// Applies one bundle and says how it went on `status`, then publishes what the files hold to
/// the Workload API when it succeeded; false when it should be retried (a write error).
async fn apply(
    config: &AgentConfig,
    out: &OutDir,
    bundle: &Bundle,
    last_error: &mut Option<files::ApplyError>,
    status: &watch::Sender<AgentStatus>,
    publisher: Option<&workload::Publisher>,
) -> bool {
    let result = {
        let (out, bundle) = (out.clone(), bundle.clone());
        tokio::task::spawn_blocking(move || out.apply(&bundle))
            .await
            .unwrap_or_else(|e| {
                Err(files::ApplyError {
                    problem: AgentProblem::Write,
                    message: format!("the writer task failed: {e}"),
                })
            })
    };
    let report = disk_status(out, bundle.generation, result.as_ref().err());
    status.send_if_modified(|s| {
        // The clock moves on every report: compare what it says.
        let changed = AgentStatus {
            agent_time_unix_ms: s.agent_time_unix_ms,
            ..report.clone()
        } != *s;
        if changed {
            *s = report;
        }
        changed
    });
    if let (Ok(_), Some(p)) = (&result, publisher) {
        p.refresh(out).await;
    }
    match result {
        Ok(changed) if changed.any() => {
            if let Some(e) = last_error.take() {
                tracing::info!(problem = ?e.problem, "the files are written again");
            }
            tracing::info!(
                generation = bundle.generation, backend = %bundle.backend, serial = %changed.serial,
                expires = %rfc3339(changed.not_after_unix), files = ?changed.files,
                "identity updated"
            );
            if let Some(cmd) = &config.exec {
                run_exec(cmd, config, out).await;
            }
            true
        }
        Ok(_) => {
            tracing::debug!(generation = bundle.generation, "identity unchanged");
            *last_error = None;
            true
        }
        Err(e) => {
            let retry = e.retry();
            // Said once per kind of failure: the text carries times and paths that change.
            if last_error.as_ref().map(|l| l.problem) != Some(e.problem) {
                let what = if retry {
                    "cannot write the identity files: the files on disk are kept, retrying with backoff"
                } else {
                    "refused an identity bundle: the files on disk are kept"
                };
                tracing::error!(
                    generation = bundle.generation, serial = %bundle.serial, problem = ?e.problem, error = %e,
                    "{what}"
                );
            } else {
                tracing::debug!(generation = bundle.generation, error = %e, "the same failure again");
            }
            *last_error = Some(e);
            !retry
        }
    }
}

fn shorten(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= EXEC_OUTPUT_LOGGED {
        return text.to_string();
    }
    let mut end = EXEC_OUTPUT_LOGGED;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes more)", &text[..end], text.len() - end)
}

/// Runs `sh -c CMD` in its own process group with the file paths in the environment; kills the
/// group when it outlives `exec_timeout`. Its output goes to the log.
async fn run_exec(cmd: &str, config: &AgentConfig, out: &OutDir) {
    let started = Instant::now();
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .env("KMESH_CERT_FILE", out.path(files::CERT_FILE))
        .env("KMESH_KEY_FILE", out.path(files::KEY_FILE))
        .env("KMESH_CA_FILE", out.path(files::CA_FILE))
        .env("KMESH_MESH", &config.mesh)
        .env("KMESH_DATAPLANE", &config.name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(command = %cmd, error = %e, "cannot run --exec");
            return;
        }
    };
    let pid = child.id();
    match tokio::time::timeout(config.exec_timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            let (stdout, stderr) = (shorten(&output.stdout), shorten(&output.stderr));
            let elapsed_ms = started.elapsed().as_millis() as u64;
            if output.status.success() {
                tracing::info!(command = %cmd, elapsed_ms, stdout = %stdout, stderr = %stderr, "--exec ran");
            } else {
                tracing::warn!(command = %cmd, status = %output.status, elapsed_ms, stdout = %stdout, stderr = %stderr, "--exec failed");
            }
        }
        Ok(Err(e)) => tracing::error!(command = %cmd, error = %e, "--exec could not be waited for"),
        Err(_) => {
            // The shell is killed on drop; its children with the whole group.
            if let Some(pid) = pid {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
            tracing::warn!(
                command = %cmd,
                timeout_s = config.exec_timeout.as_secs_f64(),
                "--exec did not finish in time: killed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zone_address_needs_tls_a_port_and_a_trust_choice() {
        let mut c = AgentConfig::new(
            "grpcs://127.0.0.1:5683",
            "t".into(),
            "default",
            "web-1",
            "web",
            "out".into(),
        );
        assert!(
            check(&c)
                .unwrap_err()
                .to_string()
                .contains("--zone-ca-file")
        );
        c.zone_ca_file = Some("ca.pem".into());
        check(&c).unwrap();
        let t = target(&c).unwrap();
        assert_eq!(
            (t.uri.as_str(), t.server_name.as_str()),
            ("https://127.0.0.1:5683", "127.0.0.1")
        );
        c.zone_address = "http://127.0.0.1:5683".into();
        assert!(check(&c).unwrap_err().to_string().contains("grpcs://"));
        c.zone_address = "grpcs://localhost".into();
        assert!(check(&c).unwrap_err().to_string().contains("port"));
        c.zone_address = "grpcs://[::1]:5683".into();
        assert_eq!(target(&c).unwrap().server_name, "::1");
        c.name = "Bad Name".into();
        assert!(check(&c).unwrap_err().to_string().contains("--name"));
    }

    #[test]
    fn a_bundle_without_a_key_takes_the_last_key_of_the_stream() {
        let mut last = None;
        let with = bundle_of(
            IdentityResponse {
                key_pem: Some("K".into()),
                ..Default::default()
            },
            &mut last,
        );
        assert_eq!(with.key_pem.as_deref(), Some("K"));
        let without = bundle_of(IdentityResponse::default(), &mut last);
        assert_eq!(without.key_pem.as_deref(), Some("K"));
        let mut fresh = None;
        assert_eq!(
            bundle_of(IdentityResponse::default(), &mut fresh).key_pem,
            None
        );
    }
}
