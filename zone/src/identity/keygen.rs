//! `dpCert.keyGeneration: proxy`: the proxy's key is made on its host, never here. When such a
//! proxy needs a certificate the engine asks its agent for a CSR ([`CsrAsk`], through the
//! connection's `asks` channel, carried by the identity stream), waits for the answer at most
//! [`CSR_WAIT`], checks it (`common::csr::check`: the signature proves the agent holds the key,
//! the key is of the backend's `keyType`, it asks for no names) and has the backend sign it; the
//! bundle then carries no key. An agent that cannot answer (one on the older `Stream`), one that
//! does not answer in time, and a CSR that fails its check are failures of that proxy, retried
//! with backoff. Each certificate gets a new key: a CSR is used once.

use std::sync::Arc;
use std::time::Duration;

use common::csr::CheckedCsr;
use common::model::KeyType;
use tokio::time::Instant;

use super::source::{FailReason, SourceError};
use super::table::Snap;
use super::{DpKey, IdentityManager};

/// How long an agent has to answer a CSR request (an RSA-4096 key takes a second or two).
pub(super) const CSR_WAIT: Duration = Duration::from_secs(10);

/// A request for a CSR, as the identity stream carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsrAsk {
    pub nonce: u64,
    pub key_type: KeyType,
}

/// Where a proxy's CSR stands.
#[derive(Default)]
pub(super) enum CsrState {
    #[default]
    None,
    /// Asked; the answer is due by `until`.
    Asked { ask: CsrAsk, until: Instant },
    /// Received and checked, not used yet.
    Ready {
        key_type: KeyType,
        csr: Arc<CheckedCsr>,
    },
}

/// What issuance does next for a proxy of a `keyGeneration: proxy` backend.
pub(super) enum CsrNext {
    /// Sign this CSR.
    Sign(Arc<CheckedCsr>),
    /// The agent was asked; the proxy's timer is set to the deadline.
    Wait,
    /// A failure of this proxy.
    Fail(SourceError),
}

fn failure(message: String) -> SourceError {
    SourceError {
        reason: FailReason::Refused,
        message,
        per_proxy: true,
    }
}

impl IdentityManager {
    /// The CSR to sign for `key` on `snap`'s backend, or why not yet.
    pub(super) fn csr_for(&self, key: &DpKey, snap: &Snap) -> CsrNext {
        let key_type = snap.backend.key_type();
        let now = Instant::now();
        let mut st = self.lock();
        let Some(p) = st.proxies.get_mut(key) else {
            return CsrNext::Wait;
        };
        match std::mem::take(&mut p.csr) {
            CsrState::Ready { key_type: kt, csr } if kt == key_type => {
                return CsrNext::Sign(csr);
            }
            CsrState::Asked { ask, until } if ask.key_type == key_type => {
                if now < until {
                    p.csr = CsrState::Asked { ask, until };
                    st.set_timer(key, Some(until));
                    return CsrNext::Wait;
                }
                return CsrNext::Fail(failure(format!(
                    "the proxy's agent did not send the CSR asked for within {}s (dpCert.keyGeneration: proxy)",
                    CSR_WAIT.as_secs()
                )));
            }
            // Nothing, or for another key type: ask (again).
            _ => {}
        }
        let Some(asks) = p.conn.as_ref().and_then(|c| c.asks.as_ref()) else {
            return CsrNext::Fail(failure(
                "backend generates keys on the proxy (dpCert.keyGeneration: proxy), but this proxy's agent predates it and cannot send a CSR: upgrade zone proxy".to_string(),
            ));
        };
        let ask = CsrAsk {
            nonce: self.next_generation(),
            key_type,
        };
        asks.send_replace(Some(ask));
        let until = now + CSR_WAIT;
        p.csr = CsrState::Asked { ask, until };
        st.set_timer(key, Some(until));
        tracing::debug!(mesh = %key.0, dataplane = %key.1, nonce = ask.nonce, key_type = key_type.as_str(), "CSR asked of the proxy's agent");
        CsrNext::Wait
    }

    /// The agent of `key`'s connection `conn` answers CSR request `nonce`; false when that
    /// connection is gone.
    pub(super) fn agent_csr(&self, key: &DpKey, conn: u64, nonce: u64, der: &[u8]) -> bool {
        let mut st = self.lock();
        let Some(p) = st.proxies.get_mut(key) else {
            return false;
        };
        if p.conn.as_ref().map(|c| c.id) != Some(conn) {
            return false;
        }
        let ask = match &p.csr {
            CsrState::Asked { ask, .. } if ask.nonce == nonce => *ask,
            _ => {
                tracing::debug!(mesh = %key.0, dataplane = %key.1, nonce, "a CSR nobody asked for (or asked before): ignored");
                return true;
            }
        };
        match common::csr::check(der, ask.key_type) {
            Ok(csr) => {
                p.csr = CsrState::Ready {
                    key_type: ask.key_type,
                    csr: Arc::new(csr),
                };
                st.set_timer(key, Some(Instant::now()));
                drop(st);
                self.wake.notify_one();
            }
            Err(e) => {
                p.csr = CsrState::None;
                drop(st);
                tracing::warn!(mesh = %key.0, dataplane = %key.1, error = %e, "CSR refused");
                let message = format!("CSR refused: {e}");
                self.proxy_failed(key, failure(message));
            }
        }
        true
    }
}
