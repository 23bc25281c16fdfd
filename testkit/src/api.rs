//! Talking to the control planes over HTTP as a test does: [`Api`], a small JSON client for one
//! base URL (with an optional bearer token; over HTTPS with [`https_client`]; it asks for JSON, so
//! new tokens come with their id, and [`Api::get_ok`] reads every page of a list), the one-shot
//! [`get_json`] and [`get_text`], and [`metric_sum`], which reads a sample out of a `GET /metrics`
//! text.

use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::Value;

/// A small JSON client for the control planes' HTTP APIs.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build()
                .expect("a default reqwest client builds"),
        }
    }

    /// The same client on `http`, e.g. an [`https_client`].
    pub fn with_client(base: &str, token: Option<String>, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        }
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `{base}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self
            .http
            .request(method, self.url(path))
            .header(reqwest::header::ACCEPT, "application/json");
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// GET, returning (status, JSON body).
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let resp = self.req(reqwest::Method::GET, path).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// GET that must answer 200; a list is read to its end, following `next` (on this client's
    /// base URL), into one body (`"next": null`).
    pub async fn get_ok(&self, path: &str) -> Result<Value> {
        let (status, mut body) = self.get(path).await?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        let mut next = common::page::next_of(&body);
        let mut pages = 1;
        while let Some(p) = next {
            pages += 1;
            if pages > common::page::MAX_PAGES {
                bail!("GET {path}: the list did not end after {pages} pages");
            }
            let (status, page) = self.get(&p).await?;
            if status != 200 {
                bail!("GET {p}: {status} {page}");
            }
            next = common::page::append_page(&mut body, page);
        }
        Ok(body)
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        Ok(self
            .req(reqwest::Method::GET, path)
            .send()
            .await?
            .text()
            .await?)
    }

    /// A request with a YAML body, returning (status, JSON body).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &str,
    ) -> Result<(u16, Value)> {
        let resp = self
            .req(method, path)
            .header("content-type", "application/yaml")
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// A write that must succeed (2xx).
    pub async fn write_ok(&self, method: reqwest::Method, path: &str, body: &str) -> Result<Value> {
        let (status, v) = self.send(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {v}");
        }
        Ok(v)
    }

    /// `DELETE {path}`, returning (status, JSON body).
    pub async fn delete(&self, path: &str) -> Result<(u16, Value)> {
        let resp = self.req(reqwest::Method::DELETE, path).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }
}

/// An HTTPS client trusting only the CAs of `ca_pem` (a PEM bundle), each request on HTTP/2
/// (offered alone by ALPN) when `h2`, else on HTTP/1.1; kept-alive connections as [`Api::new`].
pub fn https_client(ca_pem: &[u8], h2: bool) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca_pem)?);
    let builder = if h2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    Ok(builder.build()?)
}

/// One GET of `url` (5 s timeout, optional bearer token): (status, JSON body), `None` when there
/// was no answer.
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

/// One GET of `url` (5 s timeout): the body text, `None` when there was no answer.
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

/// The sum of the samples of metric family `name` (any labels) in a Prometheus / OpenMetrics
/// text, 0 when absent. A counter may be named with or without its `_total` suffix
/// (`kmesh_certificates_issued` and `kmesh_certificates_issued_total` are the same sum).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    let total = format!("{name}_total");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let metric = head.split('{').next()?.trim();
            (metric == name || metric == total).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_sum_adds_label_sets_with_or_without_total() {
        let text = "# HELP x\nkmesh_certificates_issued_total{backend_type=\"vault\"} 3\nkmesh_certificates_issued_total{backend_type=\"builtin\"} 2\nkmesh_certificates_issued_total_other 9\nkmesh_up 1\n";
        assert_eq!(metric_sum(text, "kmesh_certificates_issued_total"), 5.0);
        assert_eq!(metric_sum(text, "kmesh_certificates_issued"), 5.0);
        assert_eq!(metric_sum(text, "kmesh_up"), 1.0);
        assert_eq!(metric_sum(text, "absent"), 0.0);
    }
}
