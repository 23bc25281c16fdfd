//! A `zone run` process on loopback ([`ZoneProc`]) with its proxy identity service: started
//! against a global with a zone token ([`ZoneOptions`]: more arguments, working directory, log
//! filter, environment such as libfaketime's), waited for until `/healthz` answers, restarted on the same ports and data directory;
//! what it holds (meshes, secrets, dataplanes, metrics) and a TLS channel to its identity service.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::global::{log_filter, wait_healthy};
use crate::api::{Api, metric_sum};
use crate::bins::binary;
use crate::proc::{Proc, free_port, logs};

/// How a zone is started, besides its name, global and token: more `zone run` arguments, the
/// working directory (this process's own unless given) and `RUST_LOG`.
#[derive(Debug, Clone)]
pub struct ZoneOptions {
    pub extra: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// `RUST_LOG` (none when empty).
    pub rust_log: String,
    /// More environment variables (e.g. [`crate::faketime::env`]).
    pub env: Vec<(String, String)>,
}

impl Default for ZoneOptions {
    fn default() -> Self {
        Self {
            extra: Vec::new(),
            cwd: None,
            rust_log: log_filter(),
            env: Vec::new(),
        }
    }
}

impl ZoneOptions {
    /// No more arguments, working directory `dir`, `RUST_LOG` `rust_log`.
    pub fn in_dir(dir: &Path, rust_log: &str) -> Self {
        Self::default().cwd(dir).rust_log(rust_log)
    }

    pub fn args(mut self, extra: &[&str]) -> Self {
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    pub fn cwd(mut self, cwd: &Path) -> Self {
        self.cwd = Some(cwd.to_path_buf());
        self
    }

    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_string();
        self
    }

    pub fn env(mut self, vars: Vec<(String, String)>) -> Self {
        self.env.extend(vars);
        self
    }
}

/// How a zone was started, so that it can be started again the same way.
#[derive(Debug, Clone)]
struct ZoneSpec {
    global_address: String,
    ca_file: PathBuf,
    token_file: PathBuf,
    options: ZoneOptions,
}

/// A `zone run` process.
pub struct ZoneProc {
    pub name: String,
    pub proc: Proc,
    pub dir: PathBuf,
    pub api_port: u16,
    pub dp_port: u16,
    pub api: Api,
    spec: ZoneSpec,
}

impl ZoneProc {
    pub async fn start(
        name: &str,
        global: &super::GlobalProc,
        token_file: &Path,
        dir: &Path,
    ) -> Result<Self> {
        Self::start_with(
            name,
            &global.kds_address(),
            &global.ca_file(),
            token_file,
            dir,
            &[],
        )
        .await
    }

    /// Starts zone `name` against `global` with a zone token made now with the real command line
    /// (`global zone-token`, written to `<dir>/<name>.token`), data in `dir`.
    pub async fn start_minted(
        name: &str,
        global: &super::GlobalProc,
        dir: &Path,
        options: ZoneOptions,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let token_file = global.cli_zone_token_file(name, dir)?;
        Self::start_with_token(name, global, &token_file, dir, options).await
    }

    /// Starts zone `name` against `global` with the token in `token_file` and `options`.
    pub async fn start_with_token(
        name: &str,
        global: &super::GlobalProc,
        token_file: &Path,
        dir: &Path,
        options: ZoneOptions,
    ) -> Result<Self> {
        Self::start_opts(
            name,
            &global.kds_address(),
            &global.ca_file(),
            token_file,
            dir,
            options,
        )
        .await
    }

    pub async fn start_with(
        name: &str,
        global_address: &str,
        ca_file: &Path,
        token_file: &Path,
        dir: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_opts(
            name,
            global_address,
            ca_file,
            token_file,
            dir,
            ZoneOptions::default().args(extra),
        )
        .await
    }

    pub async fn start_opts(
        name: &str,
        global_address: &str,
        ca_file: &Path,
        token_file: &Path,
        dir: &Path,
        options: ZoneOptions,
    ) -> Result<Self> {
        let spec = ZoneSpec {
            global_address: global_address.to_string(),
            ca_file: ca_file.to_path_buf(),
            token_file: token_file.to_path_buf(),
            options,
        };
        Self::launch(name, dir, spec, free_port(), free_port()).await
    }

    async fn launch(
        name: &str,
        dir: &Path,
        spec: ZoneSpec,
        api_port: u16,
        dp_port: u16,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = std::process::Command::new(binary("zone")?);
        cmd.args([
            "run",
            "--name",
            name,
            "--global-address",
            &spec.global_address,
        ])
        .arg("--global-ca-file")
        .arg(&spec.ca_file)
        .arg("--token-file")
        .arg(&spec.token_file)
        .arg("--data-dir")
        .arg(dir)
        .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
        .args(["--dp-addr", &format!("127.0.0.1:{dp_port}")])
        .args(&spec.options.extra)
        .envs(spec.options.env.iter().map(|(k, v)| (k, v)));
        super::global::set_rust_log(&mut cmd, &spec.options.rust_log);
        if let Some(cwd) = &spec.options.cwd {
            cmd.current_dir(cwd);
        }
        let mut proc = Proc::spawn(&format!("zone {name}"), cmd, dir.join("zone.log"))?;
        let base = format!("http://127.0.0.1:{api_port}");
        wait_healthy(
            &format!("zone {name}"),
            &base,
            &mut proc,
            Duration::from_secs(30),
        )
        .await?;
        Ok(Self {
            name: name.to_string(),
            proc,
            dir: dir.to_path_buf(),
            api_port,
            dp_port,
            api: Api::new(&base, None),
            spec,
        })
    }

    /// The same zone again: same name, data directory, token and ports (after `kill9` or `stop`;
    /// a running zone is stopped first).
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.stop(Duration::from_secs(5));
        *self = Self::launch(
            &self.name,
            &self.dir,
            self.spec.clone(),
            self.api_port,
            self.dp_port,
        )
        .await?;
        Ok(())
    }

    /// The same zone again with `extra` as its extra `zone run` arguments instead of those it
    /// had (e.g. another `--secrets-key-file`).
    pub async fn restart_with_args(&mut self, extra: &[&str]) -> Result<()> {
        self.spec.options.extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart().await
    }

    /// SIGTERM; panics with the logs unless the zone exits successfully within 10 s.
    pub fn terminate(&mut self) {
        self.proc.terminate(&self.dir);
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// `http://127.0.0.1:<api port>{path}`.
    pub fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    /// What proxies dial: `grpcs://127.0.0.1:<dp port>`.
    pub fn dp_address(&self) -> String {
        format!("grpcs://127.0.0.1:{}", self.dp_port)
    }

    /// The CA of the zone's proxy-facing certificate (`<data-dir>/dp-ca.pem`).
    pub fn dp_ca_file(&self) -> PathBuf {
        self.dir.join("dp-ca.pem")
    }

    /// A TLS gRPC channel to the zone's identity service, trusting its `dp-ca.pem`.
    pub async fn dp_channel(&self) -> Result<tonic::transport::Channel> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca = std::fs::read(self.dp_ca_file())
            .with_context(|| format!("reading {}", self.dp_ca_file().display()))?;
        Ok(
            Endpoint::from_shared(self.dp_address().replace("grpcs://", "https://"))?
                .tls_config(
                    ClientTlsConfig::new()
                        .domain_name("127.0.0.1")
                        .ca_certificate(Certificate::from_pem(ca)),
                )?
                .connect()
                .await?,
        )
    }

    /// Opens the identity stream of dataplane `name` of `mesh` (service web) as a proxy would,
    /// with `token` as its bearer token: the first message and the open stream, or the status the
    /// zone refused it with. Panics when the zone sends nothing within [`crate::wait::WAIT`].
    pub async fn identity_stream(
        &self,
        token: Option<&str>,
        mesh: &str,
        name: &str,
    ) -> std::result::Result<
        (
            proto::dpid::IdentityResponse,
            tonic::Streaming<proto::dpid::IdentityResponse>,
        ),
        tonic::Status,
    > {
        use proto::dpid::IdentityRequest;
        use proto::dpid::dataplane_identity_client::DataplaneIdentityClient;
        let channel = self.dp_channel().await.expect("a channel to the zone");
        let mut request = tonic::Request::new(IdentityRequest {
            mesh: mesh.into(),
            name: name.into(),
            tags: [("kuma.io/service".to_string(), "web".to_string())].into(),
            ..Default::default()
        });
        if let Some(t) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("a token is ASCII"),
            );
        }
        let mut stream = DataplaneIdentityClient::new(channel)
            .stream(request)
            .await?
            .into_inner();
        let first = tokio::time::timeout(crate::wait::WAIT, stream.message())
            .await
            .expect("a first message in time")?
            .expect("a first message");
        Ok((first, stream))
    }

    /// `GET /dataplanes` items.
    pub async fn dataplanes(&self) -> Result<Vec<Value>> {
        let v = self.api.get_ok("/dataplanes").await?;
        Ok(v.get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Mesh names the zone holds.
    pub async fn meshes(&self) -> Result<Vec<String>> {
        let body = self.api.get_ok("/meshes").await?;
        Ok(body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["name"].as_str().map(str::to_string))
            .collect())
    }

    /// Secret names of a mesh the zone holds (`None` if it lacks the mesh).
    pub async fn secrets(&self, mesh: &str) -> Result<Option<Vec<String>>> {
        let (status, body) = self.api.get(&format!("/meshes/{mesh}")).await?;
        if status != 200 {
            return Ok(None);
        }
        Ok(Some(
            body["secrets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
        ))
    }

    /// The value of a metric in `GET /metrics` (summed over its label sets, a counter with or
    /// without `_total`), 0 when absent.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let text = self.api.get_text("/metrics").await?;
        Ok(metric_sum(&text, name))
    }

    /// Waits until the zone is connected to global and holds `meshes` (it has synced); the error
    /// after `timeout` carries the logs of the zone's directory.
    pub async fn wait_synced(&self, meshes: &[&str], timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let connected = self
                .api
                .get_ok("/status")
                .await
                .is_ok_and(|s| s["global"]["connected"] == true);
            let held = self.meshes().await.unwrap_or_default();
            if connected && meshes.iter().all(|m| held.iter().any(|h| h == m)) {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for zone {} to sync\n{}",
                    self.name,
                    logs(&self.dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
