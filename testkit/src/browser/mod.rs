//! A real headless Chromium for the tests of global's web GUI ([`Browser`]): Debian's `chromium`
//! driven over WebDriver by `chromedriver` (its own process group, log in a file) with
//! fantoccini, a fresh profile per browser, and every request it makes sent through a
//! [`RecordingProxy`] (`--proxy-server`, loopback included), which forwards only to the hosts a
//! test names and records the others. [`Browser::available`] says when Chromium or its driver is
//! missing, so that the GUI tests can say SKIPPED instead of failing on a machine without them.

mod proxy;

pub use proxy::{BrowserRequest, RecordingProxy, non_loopback_address};

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::proc::{Proc, free_port};
use crate::wait::wait_until;

/// Where Debian puts them: the browser itself, not `/usr/bin/chromium`, whose wrapper script gives
/// it Google API keys and flags of its own.
const CHROMIUM: &[&str] = &["/usr/lib/chromium/chromium", "/usr/bin/chromium"];
const CHROMEDRIVER: &[&str] = &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];

/// The paths of Chromium and chromedriver, or why the GUI tests cannot run here.
pub fn available() -> std::result::Result<(PathBuf, PathBuf), String> {
    let find = |names: &[&str]| names.iter().map(PathBuf::from).find(|p| p.is_file());
    match (find(CHROMIUM), find(CHROMEDRIVER)) {
        (Some(c), Some(d)) => Ok((c, d)),
        (None, _) => Err("Chromium is not installed (apt-get install chromium)".into()),
        (_, None) => Err("chromedriver is not installed (apt-get install chromium-driver)".into()),
    }
}

/// How a browser is started.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    pub width: u32,
    pub height: u32,
    /// The `host:port`s the proxy forwards to (e.g. global's API); every other is refused.
    pub allowed: Vec<String>,
    /// The local address the proxy connects from (default: loopback).
    pub source: Option<IpAddr>,
}

impl BrowserOptions {
    /// 1280x800, reaching only `allowed`.
    pub fn new(allowed: &[String]) -> Self {
        Self {
            width: 1280,
            height: 800,
            allowed: allowed.to_vec(),
            source: None,
        }
    }

    /// The proxy connects from `ip` (a reader on another host, as the server sees it).
    pub fn from_address(mut self, ip: IpAddr) -> Self {
        self.source = Some(ip);
        self
    }
}

/// A headless Chromium session; the driver and the browser are killed when it is dropped.
pub struct Browser {
    pub client: Client,
    pub proxy: RecordingProxy,
    driver: Proc,
    dir: PathBuf,
    /// What [`Browser::page_requests`] read from the log so far (reading it empties it).
    page_requests: std::sync::Mutex<Vec<String>>,
}

/// chromedriver's `POST /session/{id}/se/log` for the `performance` log.
#[derive(Debug)]
struct PerformanceLog;

impl fantoccini::wd::WebDriverCompatibleCommand for PerformanceLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::Method, Option<String>) {
        (
            hyper::Method::POST,
            Some(json!({ "type": "performance" }).to_string()),
        )
    }
}

impl Browser {
    /// Starts chromedriver and a browser with a fresh profile under `dir`.
    pub async fn start(dir: &Path, options: BrowserOptions) -> Result<Self> {
        let (chromium, chromedriver) = available().map_err(|e| anyhow!(e))?;
        std::fs::create_dir_all(dir)?;
        let proxy = RecordingProxy::start(&options.allowed, options.source).await?;
        let port = free_port();
        let mut cmd = Command::new(chromedriver);
        cmd.arg(format!("--port={port}")).arg(format!(
            "--log-path={}",
            dir.join("chromedriver.log").display()
        ));
        let mut driver = Proc::spawn("chromedriver", cmd, dir.join("chromedriver.stderr"))?;
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        let http = reqwest::Client::builder().no_proxy().build()?;
        wait_until(
            "chromedriver to answer",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async {
                let r = http.get(&status).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                (v["value"]["ready"] == true).then_some(())
            },
        )
        .await
        .with_context(|| format!("chromedriver: {}", driver.log_tail(20)))?;
        let profile = dir.join("profile");
        let caps = json!({
            "browserName": "chrome",
            // The DevTools events of the pages: every request a page made or tried (one a
            // Content-Security-Policy blocked included), told apart from the browser's own.
            "goog:loggingPrefs": { "performance": "ALL" },
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-default-apps",
                    "--disable-extensions",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--hide-scrollbars",
                    // The browser's own calls home (updates, time, autofill, safe browsing,
                    // search preconnects) would be requests to other hosts the page never made.
                    "--disable-client-side-phishing-detection",
                    "--disable-domain-reliability",
                    "--disable-breakpad",
                    "--no-pings",
                    "--metrics-recording-only",
                    "--password-store=basic",
                    "--use-mock-keychain",
                    "--safebrowsing-disable-auto-update",
                    "--disable-search-engine-choice-screen",
                    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,NetworkTimeServiceQuerying,CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,PreconnectToSearch,SafeBrowsingBetterTelemetryAcknowledgment,PrivacySandboxSettings4,ChromeSignin",
                    "--homepage=about:blank",
                    "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={},{}", options.width, options.height),
                    format!("--proxy-server={}", proxy.url()),
                    // Loopback too: by default Chromium sends it around the proxy.
                    "--proxy-bypass-list=<-loopback>",
                ],
            },
        });
        let Value::Object(caps) = caps else {
            bail!("capabilities are an object");
        };
        let client =
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    driver.stop(Duration::from_secs(2));
                    bail!(
                        "cannot start Chromium through chromedriver: {e}\n{}",
                        std::fs::read_to_string(dir.join("chromedriver.log"))
                            .map(|l| l.lines().rev().take(30).collect::<Vec<_>>().join("\n"))
                            .unwrap_or_default()
                    );
                }
            };
        let browser = Self {
            client,
            proxy,
            driver,
            dir: dir.to_path_buf(),
            page_requests: Default::default(),
        };
        browser.resize(options.width, options.height).await?;
        Ok(browser)
    }

    /// The URL of every request the pages made or tried so far (DevTools'
    /// `Network.requestWillBeSent` of the pages loaded over HTTP(S)): what the pages asked for,
    /// not the browser's own calls (updates, sign-in, search preconnects, its `chrome://`
    /// pages), which the proxy also sees.
    pub async fn page_requests(&self) -> Result<Vec<String>> {
        let entries = self
            .client
            .issue_cmd(PerformanceLog)
            .await
            .context("browser: reading the performance log")?;
        let mut all = self.page_requests.lock().unwrap();
        for e in entries.as_array().into_iter().flatten() {
            let Some(message) = e["message"].as_str() else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(message) else {
                continue;
            };
            let params = &event["message"]["params"];
            // Pages loaded from a host: the browser's own pages (`chrome://`) are not the GUI.
            let from_web = params["documentURL"]
                .as_str()
                .is_some_and(|d| d.starts_with("http://") || d.starts_with("https://"));
            if event["message"]["method"] == "Network.requestWillBeSent"
                && from_web
                && let Some(url) = params["request"]["url"].as_str()
            {
                all.push(url.to_string());
            }
        }
        Ok(all.clone())
    }

    /// The requests of the pages to any other origin than `origin` (`http://127.0.0.1:PORT`),
    /// `data:` URLs included (but the driver's empty first page, `data:,`).
    pub async fn page_requests_elsewhere(&self, origin: &str) -> Result<Vec<String>> {
        let own = format!("{}/", origin.trim_end_matches('/'));
        Ok(self
            .page_requests()
            .await?
            .into_iter()
            .filter(|u| !u.starts_with(&own) && u != "data:," && u != "about:blank")
            .collect())
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("browser: open {url}"))
    }

    /// Runs `script` (the body of a function: it `return`s its value) in the page.
    pub async fn eval(&self, script: &str) -> Result<Value> {
        self.client
            .execute(script, vec![])
            .await
            .with_context(|| format!("browser: script failed: {script}"))
    }

    /// Runs `script` in the page until it returns something other than `null`, `false` or
    /// `undefined`, and returns that; fails after `timeout` with `what` and the page's text.
    pub async fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Result<Value> {
        self.wait_value(what, timeout, script, |v| {
            !matches!(v, Value::Null | Value::Bool(false))
        })
        .await
    }

    /// Runs `script` in the page until `accept` takes what it returns, and returns that; fails
    /// after `timeout` with `what`, the last value and the page's text.
    pub async fn wait_value(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let last = std::sync::Mutex::new(Value::Null);
        let found = wait_until(what, timeout, Duration::from_millis(100), || async {
            match self.client.execute(script, vec![]).await {
                Ok(v) if accept(&v) => Some(v),
                Ok(v) => {
                    *last.lock().unwrap() = v;
                    None
                }
                Err(e) => {
                    *last.lock().unwrap() = Value::String(format!("script error: {e}"));
                    None
                }
            }
        })
        .await;
        let last = last.into_inner().unwrap();
        match found {
            Ok(v) => Ok(v),
            Err(e) => {
                let text = self
                    .eval("return document.body ? document.body.innerText : ''")
                    .await
                    .unwrap_or_default();
                Err(e.context(format!(
                    "last value: {last}\nthe page at {} shows:\n{}",
                    self.client
                        .current_url()
                        .await
                        .map(|u| u.to_string())
                        .unwrap_or_default(),
                    text.as_str().unwrap_or_default()
                )))
            }
        }
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> Result<String> {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("browser: no element {css}"))?;
        Ok(el.text().await?)
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> Result<usize> {
        Ok(self.client.find_all(Locator::Css(css)).await?.len())
    }

    /// Types `text` into the element `css` (after clearing it).
    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("browser: no element {css}"))?;
        el.clear().await?;
        el.send_keys(text).await?;
        Ok(())
    }

    pub async fn click(&self, css: &str) -> Result<()> {
        self.client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("browser: no element {css}"))?
            .click()
            .await?;
        Ok(())
    }

    /// Makes the viewport (what the page sees, the window less its frame) `width` x `height`.
    pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
        let (w, h) = self.client.get_window_size().await?;
        let inner = self
            .eval("return [window.innerWidth, window.innerHeight]")
            .await?;
        let frame = |outer: u64, i: usize| outer.saturating_sub(inner[i].as_u64().unwrap_or(outer));
        self.client
            .set_window_size(width + frame(w, 0) as u32, height + frame(h, 1) as u32)
            .await?;
        Ok(())
    }

    /// The viewport's size.
    pub async fn viewport(&self) -> Result<(u32, u32)> {
        let v = self
            .eval("return [window.innerWidth, window.innerHeight]")
            .await?;
        Ok((
            v[0].as_u64().unwrap_or(0) as u32,
            v[1].as_u64().unwrap_or(0) as u32,
        ))
    }

    /// A PNG of the viewport, written to `path`; `full_page`: the viewport is first made as tall
    /// as the page (and put back after).
    pub async fn screenshot(&self, path: &Path, full_page: bool) -> Result<()> {
        let (w, h) = self.viewport().await?;
        if full_page {
            let height = self
                .eval("return Math.ceil(document.documentElement.scrollHeight)")
                .await?
                .as_u64()
                .unwrap_or(h as u64) as u32;
            self.resize(w, height.max(h)).await?;
        }
        let png = self.client.screenshot().await?;
        if full_page {
            self.resize(w, h).await?;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, png).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// The origins, other than the page's own, that the page refers to or loaded: every `src`,
    /// `href`, `action` and `xlink:href` in the DOM, every `url(...)` of its stylesheets, and
    /// every resource the browser fetched for it (Resource Timing).
    pub async fn other_origins(&self) -> Result<Vec<String>> {
        let v = self
            .eval(
                r#"
                const own = location.origin;
                const urls = [];
                for (const el of document.querySelectorAll('*')) {
                  for (const a of ['src', 'href', 'action', 'xlink:href', 'poster', 'srcset', 'data']) {
                    const v = el.getAttribute(a);
                    if (v) urls.push(v);
                  }
                }
                for (const sheet of document.styleSheets) {
                  if (sheet.href) urls.push(sheet.href);
                  let rules = [];
                  try { rules = Array.from(sheet.cssRules); } catch (e) { urls.push('unreadable-sheet:' + sheet.href); }
                  for (const r of rules) {
                    for (const m of r.cssText.matchAll(/url\(["']?([^"')]+)/g)) urls.push(m[1]);
                    if (r.href) urls.push(r.href);
                  }
                }
                for (const e of performance.getEntriesByType('resource')) urls.push(e.name);
                const other = new Set();
                for (const u of urls) {
                  let origin;
                  try { origin = new URL(u, location.href).origin; } catch (e) { origin = 'unparsable:' + u; }
                  if (origin !== own) other.add(origin + ' (' + u + ')');
                }
                return Array.from(other);
                "#,
            )
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.client.clone().close().await;
        self.driver.stop(Duration::from_secs(5));
        Ok(())
    }

    /// The directory of its profile and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
