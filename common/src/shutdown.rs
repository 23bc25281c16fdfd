//! The one shutdown path of every server and task, in the manner of tokio's mini-redis: a
//! [`Trigger`] held by whoever decides to stop (the binary on Ctrl-C or SIGTERM, a test, a
//! session being replaced) and any number of [`Shutdown`] handles held by the tasks that must stop.
//! A handle completes [`Shutdown::wait`] once the trigger fired or every trigger is gone, so a task
//! never outlives the thing that started it. [`signal`] is the process's Ctrl-C/SIGTERM future.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

/// The side that decides: [`Trigger::fire`] stops every [`Shutdown`] made from it. Cloning shares
/// the one signal; it also fires (for every handle) when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Trigger {
    tx: Arc<watch::Sender<bool>>,
}

/// The side that obeys: cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Trigger {
    /// A new, unfired signal and its first handle.
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger { tx: Arc::new(tx) }, Shutdown { rx })
    }

    /// Stops every handle (idempotent).
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    /// Whether [`Trigger::fire`] was called.
    pub fn is_fired(&self) -> bool {
        *self.tx.borrow()
    }

    /// Another handle on this signal.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// A handle that stops when `future` completes: how `run(config, listeners, shutdown)` turns
    /// the caller's future into the handles of its tasks. Returns the trigger too, so the server
    /// can also stop itself (a fatal listener error).
    pub fn from_future(future: impl Future<Output = ()> + Send + 'static) -> (Trigger, Shutdown) {
        let (trigger, shutdown) = Trigger::new();
        let t = trigger.clone();
        tokio::spawn(async move {
            future.await;
            t.fire();
        });
        (trigger, shutdown)
    }

    /// A handle that never stops by itself (tests, one-off tools); stops if the returned trigger fires.
    pub fn never() -> (Trigger, Shutdown) {
        Trigger::new()
    }

    /// Whether the signal has fired (or every trigger is gone).
    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Completes once the signal fired or every trigger was dropped. Cancel-safe: usable in
    /// `select!` loops as often as needed.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|fired| *fired).await;
    }
}

/// Completes on Ctrl-C or SIGTERM: what every binary passes to its library's `run`.
pub async fn signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fire_stops_every_handle() {
        let (trigger, a) = Trigger::new();
        let b = a.clone();
        let c = trigger.subscribe();
        assert!(!a.is_shutdown());
        trigger.fire();
        for h in [a, b, c] {
            tokio::time::timeout(Duration::from_secs(1), h.wait())
                .await
                .unwrap();
            assert!(h.is_shutdown());
        }
        assert!(trigger.is_fired());
    }

    #[tokio::test]
    async fn dropping_every_trigger_stops_too() {
        let (trigger, a) = Trigger::new();
        let t2 = trigger.clone();
        drop(trigger);
        assert!(!a.is_shutdown(), "one trigger is still held");
        drop(t2);
        tokio::time::timeout(Duration::from_secs(1), a.wait())
            .await
            .unwrap();
        assert!(a.is_shutdown());
    }

    #[tokio::test]
    async fn from_future_fires_when_it_completes() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (_t, s) = Shutdown::from_future(async move {
            let _ = rx.await;
        });
        assert!(!s.is_shutdown());
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), s.wait())
            .await
            .unwrap();
    }
}
