//! Polling until something holds: [`wait_until`] fails with an error after its timeout (for
//! scenarios, which report), [`wait_for`] panics with the logs of the processes under a directory
//! (for tests, which must show why).

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::proc::logs;

/// How long [`wait_for`] waits.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `f` every `every` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `f` until it yields a value; panics with the processes' logs after [`WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, logs_dir: &Path, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_at_most(what, logs_dir, WAIT, f).await
}

/// [`wait_for`] with another limit.
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
