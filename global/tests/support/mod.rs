//! Test support: a global control plane running in-process on port-0 listeners, with an HTTP
//! client that knows its admin token (`TestGlobal::cli` runs the real `global` binary against
//! it). What runs real binaries in general is in `testkit`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use testkit::cluster::global_output;
use tokio::sync::oneshot;

pub struct TestGlobal {
    pub url: String,
    pub token: String,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    pub http: reqwest::Client,
}

impl TestGlobal {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let config = global::GlobalConfig {
            data_dir: dir.path().to_path_buf(),
            store: Default::default(),
            vault_timeouts: Default::default(),
            accept_store_rollback: false,
            api_hosts: vec![],
            data_source_dirs: vec![],
            secrets_key_file: None,
            secrets_extra_key_files: Vec::new(),
        };
        let handle = tokio::spawn(async move {
            global::run(config, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let http = reqwest::Client::new();
        // Wait until the API answers (the admin token is written before it listens).
        for _ in 0..100 {
            if http.get(format!("{url}/healthz")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let token = std::fs::read_to_string(dir.path().join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            url,
            token,
            dir,
            shutdown: Some(tx),
            handle: Some(handle),
            http,
        }
    }

    /// Stops the server and returns its data directory for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
        // Give sled a moment to release its lock file.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("admin-token")
    }

    pub async fn put(&self, path: &str, body: &str) -> (u16, Value) {
        let resp = self
            .http
            .put(format!("{}{}", self.url, path))
            .bearer_auth(&self.token)
            .header("content-type", "application/yaml")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{}", self.url, path))
            .bearer_auth(&self.token)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{}", self.url, path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .delete(format!("{}{}", self.url, path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn mesh_count(&self) -> usize {
        let (_, v) = self.get("/meshes").await;
        v["total"].as_u64().unwrap() as usize
    }

    /// Runs the real `global` binary with `--api` and the token file set.
    pub fn cli(&self, args: &[&str]) -> Output {
        global_output(
            args,
            &[
                ("GLOBAL_API", &self.url),
                (
                    "GLOBAL_ADMIN_TOKEN_FILE",
                    self.token_file().to_str().unwrap(),
                ),
            ],
        )
    }
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
