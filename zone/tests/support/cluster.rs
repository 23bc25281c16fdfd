//! Multi-process test harness shared by `zone/tests/proxy.rs`, `zone/tests/limits.rs`,
//! `global/tests/dataplanes.rs` and `global/tests/sync.rs` (included there by path): the real `global`, `zone` and `zone proxy` binaries on loopback,
//! each logging to a file in its directory (printed when a wait times out), a real OpenBao set
//! up with the reference page's steps, and openssl helpers.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use common::openbao::BaoServer;
use common::openbao::seed::{self, RoleOptions};
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A binary of the workspace, built once by asking cargo (a no-op when up to date): a test target
/// only gets its own package's binaries built.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let path = profile_dir.join(name);
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", name, "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name() == Some("release".as_ref()) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cannot run cargo");
        assert!(status.success(), "building the {name} binary failed");
        assert!(path.exists(), "no {name} binary at {}", path.display());
        built.push(name.to_string());
    }
    path
}

pub fn logs(dir: &Path) -> String {
    let mut out = String::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    for p in entries {
        if p.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            // The end of long logs is what matters.
            let tail: Vec<&str> = text.lines().rev().take(150).collect();
            out.push_str(&format!("==== {}\n", p.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        } else if p.is_dir() {
            out.push_str(&logs(&p));
        }
    }
    out
}

/// Polls `f` until it yields a value; panics with the processes' logs after `WAIT`.
pub async fn wait_for<T, F, Fut>(what: &str, logs_dir: &Path, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_at_most(what, logs_dir, WAIT, f).await
}

pub async fn wait_for_at_most<T, F, Fut>(what: &str, logs_dir: &Path, wait: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > wait {
            panic!(
                "timed out after {wait:?} waiting for {what}\n{}",
                logs(logs_dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get_json(url: &str, token: Option<&str>) -> Option<(u16, Value)> {
    let mut req = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.unwrap_or(Value::Null)))
}

pub async fn get_text(url: &str) -> Option<String> {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

pub fn log_file(path: PathBuf) -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap(),
    )
}

/// Stops a process with SIGTERM and checks it exits cleanly and promptly.
pub fn terminate(child: &mut Child, what: &str, logs_dir: &Path) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "{what} exited with {status}\n{}",
                logs(logs_dir)
            );
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!(
                "{what} did not stop within 10s of SIGTERM\n{}",
                logs(logs_dir)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ------------------------------------------------------------------------------------------------
// global
// ------------------------------------------------------------------------------------------------

/// A `global run` process.
pub struct Global {
    child: Option<Child>,
    pub dir: PathBuf,
    pub api_port: u16,
    pub kds_port: u16,
    pub token: String,
    http: reqwest::Client,
}

impl Global {
    /// Starts global with its data in `dir`, running in `cwd` (where `file:` data sources with
    /// `/proc/self/cwd/...` paths resolve), or in `dir` when none.
    pub async fn start(dir: &Path, cwd: Option<&Path>) -> Self {
        Self::launch(dir, cwd, free_port(), free_port(), "info").await
    }

    /// Starts global with its data in `dir` on the given ports (so it can be started again where
    /// its zones expect it), with the sync stream logged at debug.
    pub async fn start_on(dir: &Path, api_port: u16, kds_port: u16) -> Self {
        Self::launch(dir, None, api_port, kds_port, "info,global::kds=debug").await
    }

    async fn launch(
        dir: &Path,
        cwd: Option<&Path>,
        api_port: u16,
        kds_port: u16,
        rust_log: &str,
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new(bin("global"))
            .arg("run")
            .arg("--data-dir")
            .arg(dir)
            .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
            .args(["--kds-addr", &format!("127.0.0.1:{kds_port}")])
            .current_dir(cwd.unwrap_or(dir))
            .env("RUST_LOG", rust_log)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .stdout(Stdio::null())
            .stderr(log_file(dir.join("global.log")))
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{api_port}/healthz");
        wait_for("global to answer", dir, || async {
            get_json(&url, None).await.filter(|(s, _)| *s == 200)
        })
        .await;
        let token = std::fs::read_to_string(dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            api_port,
            kds_port,
            token,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    pub fn kds_address(&self) -> String {
        format!("grpcs://127.0.0.1:{}", self.kds_port)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("kds-ca.pem")
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        get_json(&self.url(path), Some(&self.token)).await.unwrap()
    }

    /// `POST /apply` of a YAML stream; panics unless it is accepted.
    pub async fn apply(&self, yaml: &str) {
        let resp = self
            .http
            .post(self.url("/apply"))
            .bearer_auth(&self.token)
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "apply: {status} {body}\n{yaml}");
    }

    /// `PUT {path}` of a YAML resource; panics unless it is created or updated.
    pub async fn put(&self, path: &str, yaml: &str) {
        let resp = self
            .http
            .put(self.url(path))
            .bearer_auth(&self.token)
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status == 200 || status == 201,
            "PUT {path}: {status} {body}"
        );
    }

    /// `DELETE {path}`; panics unless it succeeds.
    pub async fn delete(&self, path: &str) {
        let resp = self
            .http
            .delete(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "DELETE {path}");
    }

    /// `global <args>` against this server, with the admin token.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("global"))
            .args(args)
            .env("GLOBAL_API", self.url(""))
            .env("GLOBAL_ADMIN_TOKEN_FILE", self.dir.join("admin-token"))
            .output()
            .unwrap()
    }

    /// A token file made with `global <kind>-token ...`.
    fn token_file(&self, args: &[&str], path: &Path) -> PathBuf {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let token = String::from_utf8(out.stdout).unwrap();
        assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
        std::fs::write(path, token).unwrap();
        path.to_path_buf()
    }

    /// A zone token made with `global zone-token`, written to `<dir>/<zone>.token`.
    pub fn zone_token_file(&self, zone: &str, dir: &Path) -> PathBuf {
        self.token_file(
            &["zone-token", "--zone", zone],
            &dir.join(format!("{zone}.token")),
        )
    }

    /// A dataplane token made with `global dataplane-token`, written to `<dir>/<mesh>-<name>.token`.
    pub fn dataplane_token_file(&self, mesh: &str, name: &str, dir: &Path) -> PathBuf {
        self.token_file(
            &["dataplane-token", "--mesh", mesh, "--name", name],
            &dir.join(format!("{mesh}-{name}.token")),
        )
    }

    /// `GET /zones/{name}`.
    pub async fn zone(&self, name: &str) -> Value {
        let (status, body) = self.get(&format!("/zones/{name}")).await;
        assert_eq!(status, 200, "GET /zones/{name}: {body}");
        body
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, "global", &self.dir);
        }
    }
}

impl Drop for Global {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// zone
// ------------------------------------------------------------------------------------------------

/// A `zone run` process with its proxy identity service.
pub struct Zone {
    child: Option<Child>,
    pub name: String,
    pub dir: PathBuf,
    cwd: PathBuf,
    global_address: String,
    global_ca: PathBuf,
    token_file: PathBuf,
    pub api_port: u16,
    pub dp_port: u16,
    rust_log: &'static str,
}

impl Zone {
    /// Starts a zone with its data in `dir`, running in `cwd` (or `dir`).
    pub async fn start(name: &str, global: &Global, dir: &Path, cwd: Option<&Path>) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let token_file = global.zone_token_file(name, dir);
        let cwd = cwd.unwrap_or(dir);
        Self::start_with(name, global, &token_file, dir, cwd, "info,zone::dp=debug").await
    }

    /// Starts a zone with its data in `dir` presenting the token in `token_file` (which may be
    /// bad), all of the zone logged at debug. Global may be down.
    pub async fn start_with_token(
        name: &str,
        global: &Global,
        token_file: &Path,
        dir: &Path,
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        Self::start_with(name, global, token_file, dir, dir, "info,zone=debug").await
    }

    async fn start_with(
        name: &str,
        global: &Global,
        token_file: &Path,
        dir: &Path,
        cwd: &Path,
        rust_log: &'static str,
    ) -> Self {
        let mut zone = Self {
            child: None,
            name: name.to_string(),
            dir: dir.to_path_buf(),
            cwd: cwd.to_path_buf(),
            global_address: global.kds_address(),
            global_ca: global.ca_file(),
            token_file: token_file.to_path_buf(),
            api_port: free_port(),
            dp_port: free_port(),
            rust_log,
        };
        zone.launch().await;
        zone
    }

    async fn launch(&mut self) {
        let child = Command::new(bin("zone"))
            .args(["run", "--name", &self.name])
            .args(["--global-address", &self.global_address])
            .arg("--global-ca-file")
            .arg(&self.global_ca)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--api-addr", &format!("127.0.0.1:{}", self.api_port)])
            .args(["--dp-addr", &format!("127.0.0.1:{}", self.dp_port)])
            .current_dir(&self.cwd)
            .env("RUST_LOG", self.rust_log)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .stdout(Stdio::null())
            .stderr(log_file(self.dir.join("zone.log")))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = self.url("/healthz");
        wait_for("the zone to answer", &self.dir, || async {
            get_json(&url, None).await.filter(|(s, _)| *s == 200)
        })
        .await;
    }

    /// Stops the zone (SIGTERM) and starts it again on the same ports and data directory.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    /// The process id of the running zone.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the zone is running").id()
    }

    pub fn dp_address(&self) -> String {
        format!("grpcs://127.0.0.1:{}", self.dp_port)
    }

    pub fn dp_ca_file(&self) -> PathBuf {
        self.dir.join("dp-ca.pem")
    }

    /// A TLS gRPC channel to the zone's identity service, trusting its `dp-ca.pem`.
    pub async fn dp_channel(&self) -> tonic::transport::Channel {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca = std::fs::read(self.dp_ca_file()).unwrap();
        Endpoint::from_shared(self.dp_address().replace("grpcs://", "https://"))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .domain_name("127.0.0.1")
                    .ca_certificate(Certificate::from_pem(ca)),
            )
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = get_json(&self.url(path), None).await.unwrap();
        assert_eq!(status, 200, "zone GET {path}: {body}");
        body
    }

    /// `GET /dataplanes` items.
    pub async fn dataplanes(&self) -> Vec<Value> {
        self.get("/dataplanes").await["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Mesh names the zone holds.
    pub async fn meshes(&self) -> Vec<String> {
        let body = self.get("/meshes").await;
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Secret names of a mesh the zone holds (None if it lacks the mesh).
    pub async fn secrets(&self, mesh: &str) -> Option<Vec<String>> {
        let (status, body) = get_json(&self.url(&format!("/meshes/{mesh}")), None)
            .await
            .unwrap();
        if status != 200 {
            return None;
        }
        Some(
            body["secrets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect(),
        )
    }

    /// The sum of the samples of a metric family in `GET /metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = get_text(&self.url("/metrics")).await.unwrap_or_default();
        metric_sum(&text, name)
    }

    /// Waits until the zone holds the dataplane token keys (it has synced with global).
    pub async fn wait_synced(&self, meshes: &[&str]) {
        wait_for("the zone to sync", &self.dir, || async {
            let status = self.get("/status").await;
            let body = self.get("/meshes").await;
            let held: Vec<String> = body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["name"].as_str().map(str::to_string))
                .collect();
            (status["global"]["connected"] == true
                && meshes.iter().all(|m| held.iter().any(|h| h == m)))
            .then_some(())
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, &format!("zone {}", self.name), &self.dir);
        }
    }
}

impl Drop for Zone {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A test may have left it stopped (SIGSTOP).
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sum of the samples of `name` (a counter's `_total` included) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let metric = l.split(['{', ' ']).next().unwrap_or("");
            metric == name || metric == format!("{name}_total")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ------------------------------------------------------------------------------------------------
// proxies
// ------------------------------------------------------------------------------------------------

/// A `zone proxy` process.
pub struct Proxy {
    child: Option<Child>,
    pub name: String,
    /// Holds `proxy.log` and the output directory `out/`.
    pub dir: PathBuf,
    pub out: PathBuf,
}

pub struct ProxySpec<'a> {
    pub mesh: &'a str,
    pub name: &'a str,
    pub service: &'a str,
    pub tags: &'a [(&'a str, &'a str)],
    pub exec: Option<String>,
    pub token_file: PathBuf,
}

impl Proxy {
    pub fn start(zone: &Zone, spec: ProxySpec<'_>, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = dir.join("out");
        let mut cmd = Command::new(bin("zone"));
        cmd.args(["proxy", "--zone-address", &zone.dp_address()])
            .arg("--zone-ca-file")
            .arg(zone.dp_ca_file())
            .arg("--token-file")
            .arg(&spec.token_file)
            .args(["--mesh", spec.mesh, "--name", spec.name])
            .args(["--service", spec.service])
            .arg("--out-dir")
            .arg(&out);
        for (k, v) in spec.tags {
            cmd.args(["--tag", &format!("{k}={v}")]);
        }
        if let Some(e) = &spec.exec {
            cmd.args(["--exec", e]);
        }
        let child = cmd
            .env("RUST_LOG", "info,zone::agent=debug")
            .stdout(Stdio::null())
            .stderr(log_file(dir.join("proxy.log")))
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            name: spec.name.to_string(),
            dir: dir.to_path_buf(),
            out,
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }

    /// The leaf of `cert.pem`, once it is there and complete with its key.
    pub fn leaf(&self) -> Option<common::x509::CertSummary> {
        let chain = std::fs::read_to_string(self.file("cert.pem")).ok()?;
        let key = std::fs::read_to_string(self.file("key.pem")).ok()?;
        if !common::x509::private_key_matches_cert(&chain, &key) {
            return None;
        }
        common::x509::summarize_pem(&chain).ok()
    }

    /// Waits for a certificate (other than `not_serial`) on disk.
    pub async fn wait_leaf(
        &self,
        logs_dir: &Path,
        not_serial: Option<&str>,
    ) -> common::x509::CertSummary {
        wait_for(
            &format!("a certificate for {}", self.name),
            logs_dir,
            || async {
                self.leaf()
                    .filter(|l| Some(l.serial.as_str()) != not_serial)
            },
        )
        .await
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, &format!("proxy {}", self.name), &self.dir);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Vault and Meshes
// ------------------------------------------------------------------------------------------------

pub const PKI: &str = "kmesh-pki-default";
pub const ROLE: &str = "dataplane-proxies";

/// OpenBao with the reference page's steps for mesh `default` (root CA, the page's role with EC
/// keys for speed, policy, token).
pub struct Vault {
    pub bao: BaoServer,
    pub token: String,
    pub root_pem: String,
}

impl Vault {
    pub async fn start() -> Self {
        let bao = BaoServer::start().await.expect("OpenBao starts");
        let cli = bao.admin();
        let root_pem = seed::setup_root_ca(&cli, "default", PKI).unwrap();
        seed::create_role(&cli, PKI, ROLE, &RoleOptions::seed_ec("default")).unwrap();
        let token = seed::create_policy_and_token(&cli, "default", PKI, ROLE).unwrap();
        Self {
            bao,
            token,
            root_pem,
        }
    }
}

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The page's Universal Mesh `default` with a vault backend; `auth_token` is the YAML of the
/// token data source (e.g. `secret: token-1`).
pub fn vault_mesh(address: &str, expiration: &str, auth_token: &str) -> String {
    format!(
        r#"type: Mesh
name: default
mtls:
  enabledBackend: vault-1
  backends:
  - name: vault-1
    type: vault
    dpCert:
      rotation:
        expiration: {expiration}
    conf:
      fromCp:
        address: {address}
        agentAddress: ""
        namespace: ""
        pki: {PKI}
        role: {ROLE}
        commonName: '{{{{ tag "kuma.io/service" }}}}.mesh'
        tls:
          skipVerify: false
          serverName: ""
        auth:
          token:
            {auth_token}
"#
    )
}

/// The token Secret `token-1` of mesh `default`.
pub fn token_secret(token: &str) -> String {
    format!(
        "type: Secret\nname: token-1\nmesh: default\ndata: {}\n",
        b64(token)
    )
}

/// A Mesh with a builtin CA.
pub fn builtin_mesh(name: &str, expiration: &str) -> String {
    format!(
        "type: Mesh\nname: {name}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: {expiration}\n"
    )
}

// ------------------------------------------------------------------------------------------------
// openssl
// ------------------------------------------------------------------------------------------------

pub fn openssl(args: &[&str]) -> Output {
    Command::new("openssl").args(args).output().unwrap()
}

/// `openssl verify -CAfile ca cert` (the chain in `cert` as untrusted intermediates).
pub fn openssl_verify(ca: &Path, cert: &Path) -> Output {
    let (ca, cert) = (ca.to_str().unwrap(), cert.to_str().unwrap());
    openssl(&["verify", "-CAfile", ca, "-untrusted", cert, cert])
}

/// The certificates of `cert.pem` after the leaf, written to `<dir>/chain.pem` (None when the
/// file holds the leaf alone).
fn chain_only(dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let ders = common::x509::pem_to_ders(&text).unwrap();
    if ders.len() < 2 {
        return None;
    }
    let pem: String = ders[1..]
        .iter()
        .map(|d| common::x509::der_to_pem(d))
        .collect();
    let path = dir.parent().unwrap().join(format!(
        "{}-chain.pem",
        dir.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&path, pem).unwrap();
    Some(path)
}

fn tls_files(cmd: &mut Command, dir: &Path) {
    let f = |name: &str| dir.join(name).to_str().unwrap().to_string();
    cmd.args(["-cert", &f("cert.pem"), "-key", &f("key.pem")])
        .args(["-CAfile", &f("ca.pem")]);
    if let Some(chain) = chain_only(dir) {
        cmd.arg("-cert_chain").arg(chain);
    }
}

/// A TLS handshake with client certificates: `openssl s_server -Verify 1 -verify_return_error`
/// with the files of the agent in `server` (its out dir) against `openssl s_client` with the files
/// of the agent in `client`. Returns whether a request went through, and both outputs.
pub fn mtls_handshake(server: &Path, client: &Path) -> (bool, String) {
    use std::io::{BufRead, BufReader, Write};
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-accept", &port.to_string(), "-naccept", "1"])
        .args(["-Verify", "1", "-verify_return_error", "-www"]);
    tls_files(&mut cmd, server);
    let mut s_server = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // s_server prints ACCEPT once it listens.
    let stdout = s_server.stdout.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("ACCEPT") {
                let _ = ready_tx.send(());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        let _ = s_server.kill();
        let out = s_server.wait_with_output().unwrap();
        panic!(
            "openssl s_server did not start: {}{}",
            text(&out),
            reader.join().unwrap()
        );
    }
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-verify_return_error", "-ign_eof"]);
    tls_files(&mut cmd, client);
    let mut s_client = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = s_client.stdin.take().unwrap();
        let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
    }
    let client_out = wait_output(s_client, Duration::from_secs(10));
    let server_out = wait_output(s_server, Duration::from_secs(2));
    let server_stdout = reader.join().unwrap_or_default();
    let client_text = text(&client_out);
    let ok = client_out.status.success()
        && client_text.contains("Verify return code: 0 (ok)")
        && client_text.contains("HTTP/1.0 200");
    (
        ok,
        format!(
            "---- s_client\n{client_text}\n---- s_server\n{server_stdout}{}",
            text(&server_out)
        ),
    )
}

fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
