//! The pure decisions of the identity engine, kept apart so they can be tested with paused tokio
//! time: the per-proxy retry delay (exponential backoff with full jitter), the per-backend circuit
//! breaker, and when a certificate is due for rotation.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::DpKey;

/// Delay before retry number `failures` (1 for the first retry): the project's one backoff
/// (`common::backoff`) with full jitter.
pub fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    common::backoff::delay(failures, initial, max, common::backoff::Jitter::Full)
}

/// When a certificate valid from `not_before` to `not_after` (unix seconds) should be replaced:
/// at `fraction` of its lifetime, plus `jitter` (in `[-1, 1]`) times 5% of the lifetime. The
/// lifetime counted is the configured one when the certificate is longer (Vault and the local
/// CAs backdate NotBefore by 10–30 s, which must not move the rotation point of a 20 s
/// certificate), measured back from `not_after`. Never after `not_after - 1`.
pub fn rotate_at_unix(
    not_before: i64,
    not_after: i64,
    configured: Duration,
    fraction: f64,
    jitter: f64,
) -> i64 {
    let full = (not_after - not_before).max(1) as f64;
    let configured = configured.as_secs_f64().max(1.0);
    let lifetime = full.min(configured);
    let fraction = fraction.clamp(0.05, 1.0);
    let at =
        not_after as f64 - (1.0 - fraction) * lifetime + jitter.clamp(-1.0, 1.0) * 0.05 * lifetime;
    (at.round() as i64).min(not_after - 1)
}

/// A uniform draw in `[-1, 1]` for [`rotate_at_unix`].
pub fn rotation_jitter() -> f64 {
    rand::rng().random_range(-1.0..=1.0)
}

/// State of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; `failures` consecutive backend failures so far.
    Closed { failures: u32 },
    /// No request until `until`; then one probe.
    Open { until: Instant },
    /// One probe is in flight; everyone else waits for its outcome.
    HalfOpen,
}

impl BreakerState {
    /// 0 closed, 1 open, 2 half-open (the metric's encoding).
    pub fn code(&self) -> i64 {
        match self {
            BreakerState::Closed { .. } => 0,
            BreakerState::Open { .. } => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// What the breaker says to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allow,
    /// Allowed as the one probe of a half-open breaker.
    Probe,
    /// Not now: wait (parked) until the breaker closes or a probe is wanted.
    Deny,
}

/// A per-backend circuit breaker: opens after `threshold` consecutive backend failures, then lets
/// one probe through per `cooldown`, and closes on the first success. Requests it turns away are
/// parked here and woken when it closes (one of them is woken as the probe when a cooldown ends).
#[derive(Debug, Clone)]
pub struct Breaker {
    pub state: BreakerState,
    threshold: u32,
    cooldown: Duration,
    /// Proxies waiting for the breaker.
    pub parked: BTreeSet<DpKey>,
    /// A parked proxy was woken to be the probe; until this instant no other is woken.
    pub probe_woken_until: Option<Instant>,
    /// Times the breaker opened.
    pub opened: u64,
    /// The last backend failure.
    pub last_error: Option<String>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: BreakerState::Closed { failures: 0 },
            threshold: threshold.max(1),
            cooldown,
            parked: BTreeSet::new(),
            probe_woken_until: None,
            opened: 0,
            last_error: None,
        }
    }

    /// Asks to send one request at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Allow,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                self.probe_woken_until = None;
                Admission::Probe
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => Admission::Deny,
        }
    }

    /// Vault answered (success, or a refusal that concerns one proxy only). Returns true when
    /// this closed the breaker (the parked proxies should be woken).
    pub fn success(&mut self) -> bool {
        let was_closed = matches!(self.state, BreakerState::Closed { .. });
        self.state = BreakerState::Closed { failures: 0 };
        self.probe_woken_until = None;
        !was_closed
    }

    /// A backend failure at `now`. Returns true when this opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.threshold {
                    self.open(now);
                    true
                } else {
                    self.state = BreakerState::Closed { failures };
                    false
                }
            }
            BreakerState::HalfOpen => {
                self.open(now);
                true
            }
            // A request admitted before the breaker opened: nothing new to learn.
            BreakerState::Open { .. } => false,
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open {
            until: now + self.cooldown,
        };
        self.probe_woken_until = None;
        self.opened += 1;
    }

    /// When a parked proxy should be woken to probe (None: not needed or not yet known).
    pub fn probe_due(&self) -> Option<Instant> {
        if self.parked.is_empty() {
            return None;
        }
        match self.state {
            BreakerState::Open { until } => Some(match self.probe_woken_until {
                Some(t) => t.max(until),
                None => until,
            }),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, BreakerState::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_point() {
        let day = Duration::from_secs(86_400);
        // A 24 h certificate backdated 30 s rotates at 4/5 of the configured lifetime.
        let nb = 1_000_000 - 30;
        let na = 1_000_000 + 86_400;
        assert_eq!(rotate_at_unix(nb, na, day, 0.8, 0.0), 1_000_000 + 69_120);
        // A 20 s certificate: 16 s after issue, +-1 s of jitter.
        let nb = 100 - 30;
        let na = 120;
        let d = Duration::from_secs(20);
        assert_eq!(rotate_at_unix(nb, na, d, 0.8, 0.0), 116);
        assert_eq!(rotate_at_unix(nb, na, d, 0.8, 1.0), 117);
        assert_eq!(rotate_at_unix(nb, na, d, 0.8, -1.0), 115);
        // A certificate shorter than configured (cut by a CA): its own lifetime counts.
        assert_eq!(rotate_at_unix(0, 100, day, 0.8, 0.0), 80);
        // Never after expiry.
        assert_eq!(rotate_at_unix(0, 2, d, 1.0, 1.0), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_probes_and_closes() {
        let cooldown = Duration::from_secs(30);
        let mut b = Breaker::new(3, cooldown);
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), Admission::Allow);
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        // A success in between resets the count.
        assert!(!b.success());
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert!(b.failure(t0), "third consecutive failure opens");
        assert_eq!(b.state.code(), 1);
        assert_eq!(b.admit(t0 + Duration::from_secs(29)), Admission::Deny);
        b.parked.insert(("m".into(), "a".into()));
        assert_eq!(b.probe_due(), Some(t0 + cooldown));
        // Late results of requests admitted before opening change nothing.
        assert!(!b.failure(t0 + Duration::from_secs(1)));
        let t1 = t0 + cooldown;
        assert_eq!(b.admit(t1), Admission::Probe);
        assert_eq!(b.admit(t1), Admission::Deny, "one probe at a time");
        assert_eq!(b.probe_due(), None);
        assert!(b.failure(t1), "a failed probe opens again");
        assert_eq!(b.admit(t1 + Duration::from_secs(10)), Admission::Deny);
        assert_eq!(b.admit(t1 + cooldown), Admission::Probe);
        assert!(b.success(), "a successful probe closes");
        assert!(b.is_closed());
        assert_eq!(b.admit(t1 + cooldown), Admission::Allow);
        assert_eq!(b.opened, 2);
    }
}
