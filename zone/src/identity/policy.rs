//! The pure decisions of the identity engine, kept apart so they can be tested with paused tokio
//! time: the per-proxy retry delay (exponential backoff with full jitter), the pace of one proxy's
//! issuances, the per-backend circuit breaker and its cooldown, when a certificate is due for
//! rotation, and what a certificate that just arrived is worth by this zone's clock.

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

/// What a certificate that just came back from a backend is worth by this zone's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Valid, and its rotation point is ahead.
    Fresh,
    /// Valid for `left` more seconds, but past its rotation point or close to it (less than half
    /// the wait a certificate of its lifetime gets): the zone's clock is ahead of the backend's by
    /// a good part of the lifetime, or the backend cut it short. It is given to the proxy (better
    /// than nothing), and the next issuance waits a backoff step.
    AlreadyDue { left: i64 },
    /// Expired `ago` seconds ago: given to no one.
    Expired { ago: i64 },
    /// Valid only in `in_` seconds (beyond the leeway): given to no one.
    NotYetValid { in_: i64 },
}

impl Arrival {
    /// Judges a certificate valid from `not_before` to `not_after`, due at `rotate_at` (unix
    /// seconds), at `now`, with `leeway` seconds for a NotBefore slightly in the future;
    /// `expected_wait` is how long after issuance a certificate of its lifetime is due (seconds).
    pub fn judge(
        not_before: i64,
        not_after: i64,
        rotate_at: i64,
        now: i64,
        leeway: i64,
        expected_wait: i64,
    ) -> Self {
        if not_after <= now {
            Arrival::Expired {
                ago: now - not_after,
            }
        } else if not_before > now + leeway {
            Arrival::NotYetValid {
                in_: not_before - now,
            }
        } else if rotate_at - now < expected_wait / 2 {
            Arrival::AlreadyDue {
                left: not_after - now,
            }
        } else {
            Arrival::Fresh
        }
    }

    /// Why the certificate is a failure, for the proxy's `lastError` (None: it is not one).
    pub fn problem(&self, serial: &str) -> Option<String> {
        let human = |s: i64| common::clock::human_ms(s.saturating_mul(1000));
        match *self {
            Arrival::Fresh => None,
            Arrival::AlreadyDue { left } => Some(format!(
                "clock skew: certificate {serial} arrived already due for rotation by this zone's clock ({} of validity left); the zone's clock is probably ahead of the CA's: issuing again only after a backoff",
                human(left)
            )),
            Arrival::Expired { ago } => Some(format!(
                "clock skew: certificate {serial} arrived already expired by this zone's clock (expired {} ago): the zone's clock is ahead of the CA's; not given to the proxy",
                human(ago)
            )),
            Arrival::NotYetValid { in_ } => Some(format!(
                "clock skew: certificate {serial} is valid only in {} by this zone's clock: the zone's clock is behind the CA's; not given to the proxy",
                human(in_)
            )),
        }
    }

    /// Whether the certificate can be given to the proxy.
    pub fn usable(&self) -> bool {
        matches!(self, Arrival::Fresh | Arrival::AlreadyDue { .. })
    }
}

/// The shortest cooldown [`breaker_cooldown`] gives, so that a breaker never spins.
pub const MIN_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

/// The share of the shortest remaining lifetime a breaker may stay open.
pub const BREAKER_COOLDOWN_SHARE: f64 = 0.25;

/// How long a breaker stays open before its next probe: the configured cooldown, but never more
/// than [`BREAKER_COOLDOWN_SHARE`] of `shortest_left` (the shortest remaining lifetime, in
/// seconds, of the certificates of the proxies it holds back; zero or less for an expired one;
/// None when none holds a certificate), and never less than [`MIN_BREAKER_COOLDOWN`] unless
/// configured so.
pub fn breaker_cooldown(configured: Duration, shortest_left: Option<i64>) -> Duration {
    let Some(left) = shortest_left else {
        return configured;
    };
    let share = Duration::from_secs_f64(left.max(0) as f64 * BREAKER_COOLDOWN_SHARE);
    configured.min(share.max(MIN_BREAKER_COOLDOWN))
}

/// How long after its last issuance a proxy may get another, when that one is asked for before
/// the last certificate's rotation point (`streak`: how many such early issuances in a row; 0
/// when the last issuance was at its rotation point or the first). Whatever asks (a backend
/// switch, a reconnecting proxy that presents nothing, a certificate the clock refuses), one proxy
/// gets at most one issuance per step, and the steps double up to `max`.
pub fn pace(streak: u32, initial: Duration, max: Duration) -> Duration {
    if streak == 0 {
        return Duration::ZERO;
    }
    common::backoff::delay(streak, initial, max, common::backoff::Jitter::UpperHalf)
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

    /// A backend failure at `now`; if it opens the breaker, it stays open `cooldown` (at most the
    /// configured one: see [`breaker_cooldown`]). Returns true when this opened the breaker.
    pub fn failure(&mut self, now: Instant, cooldown: Duration) -> bool {
        match self.state {
            BreakerState::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.threshold {
                    self.open(now, cooldown);
                    true
                } else {
                    self.state = BreakerState::Closed { failures };
                    false
                }
            }
            BreakerState::HalfOpen => {
                self.open(now, cooldown);
                true
            }
            // A request admitted before the breaker opened: nothing new to learn.
            BreakerState::Open { .. } => false,
        }
    }

    fn open(&mut self, now: Instant, cooldown: Duration) {
        self.state = BreakerState::Open {
            until: now + cooldown.min(self.cooldown),
        };
        self.probe_woken_until = None;
        self.opened += 1;
    }

    /// A proxy it holds back has a certificate that cannot wait: probe by `at` at the latest.
    pub fn probe_by(&mut self, at: Instant) {
        if let BreakerState::Open { until } = &mut self.state
            && at < *until
        {
            *until = at;
        }
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
        assert!(!b.failure(t0, cooldown));
        assert!(!b.failure(t0, cooldown));
        // A success in between resets the count.
        assert!(!b.success());
        assert!(!b.failure(t0, cooldown));
        assert!(!b.failure(t0, cooldown));
        assert!(b.failure(t0, cooldown), "third consecutive failure opens");
        assert_eq!(b.state.code(), 1);
        assert_eq!(b.admit(t0 + Duration::from_secs(29)), Admission::Deny);
        b.parked.insert(("m".into(), "a".into()));
        assert_eq!(b.probe_due(), Some(t0 + cooldown));
        // Late results of requests admitted before opening change nothing.
        assert!(!b.failure(t0 + Duration::from_secs(1), cooldown));
        let t1 = t0 + cooldown;
        assert_eq!(b.admit(t1), Admission::Probe);
        assert_eq!(b.admit(t1), Admission::Deny, "one probe at a time");
        assert_eq!(b.probe_due(), None);
        assert!(b.failure(t1, cooldown), "a failed probe opens again");
        assert_eq!(b.admit(t1 + Duration::from_secs(10)), Admission::Deny);
        assert_eq!(b.admit(t1 + cooldown), Admission::Probe);
        assert!(b.success(), "a successful probe closes");
        assert!(b.is_closed());
        assert_eq!(b.admit(t1 + cooldown), Admission::Allow);
        assert_eq!(b.opened, 2);

        // Opened with a shorter cooldown (short certificates held back), and pulled in by a
        // proxy whose certificate is about to expire.
        let t2 = t1 + cooldown * 2;
        for _ in 0..3 {
            b.failure(t2, Duration::from_secs(4));
        }
        assert_eq!(
            b.state,
            BreakerState::Open {
                until: t2 + Duration::from_secs(4)
            }
        );
        b.probe_by(t2 + Duration::from_secs(2));
        assert_eq!(b.admit(t2 + Duration::from_secs(2)), Admission::Probe);
    }

    #[test]
    fn the_breaker_never_outlives_a_share_of_the_certificates_it_holds_back() {
        let thirty = Duration::from_secs(30);
        assert_eq!(breaker_cooldown(thirty, None), thirty);
        assert_eq!(breaker_cooldown(thirty, Some(86_400)), thirty);
        // 6 s left of a 30 s certificate: a probe every 1.5 s.
        assert_eq!(
            breaker_cooldown(thirty, Some(6)),
            Duration::from_millis(1500)
        );
        // Expired, or no certificate: as often as the floor allows, never spinning.
        assert_eq!(breaker_cooldown(thirty, Some(-5)), MIN_BREAKER_COOLDOWN);
        assert_eq!(breaker_cooldown(thirty, Some(0)), MIN_BREAKER_COOLDOWN);
        // A configured cooldown below the floor is kept.
        let short = Duration::from_millis(200);
        assert_eq!(breaker_cooldown(short, Some(0)), short);
    }

    #[test]
    fn a_certificate_is_judged_by_the_zone_clock_when_it_arrives() {
        // 24 h certificate, zone 2 days ahead: expired on arrival.
        let (nb, na) = (1_000_000 - 30, 1_000_000 + 86_400);
        let rot = rotate_at_unix(nb, na, Duration::from_secs(86_400), 0.8, 0.0);
        let wait = 69_120;
        assert_eq!(
            Arrival::judge(nb, na, rot, 1_000_000, 60, wait),
            Arrival::Fresh
        );
        let later = 1_000_000 + 2 * 86_400;
        assert_eq!(
            Arrival::judge(nb, na, rot, later, 60, wait),
            Arrival::Expired { ago: 86_400 }
        );
        // An hour ahead: a little less wait, no matter.
        assert_eq!(
            Arrival::judge(nb, na, rot, 1_003_600, 60, wait),
            Arrival::Fresh
        );
        // 1 m certificate, zone 50 s ahead: valid 10 s more, past its rotation point; 30 s
        // ahead: 18 s before it instead of 48 s, close enough to count as due.
        let (nb, na) = (1_000 - 30, 1_060);
        let rot = rotate_at_unix(nb, na, Duration::from_secs(60), 0.8, 0.0);
        let a = Arrival::judge(nb, na, rot, 1_050, 60, 48);
        assert_eq!(a, Arrival::AlreadyDue { left: 10 });
        assert!(a.usable());
        assert!(a.problem("01").unwrap().contains("clock skew"));
        assert_eq!(
            Arrival::judge(nb, na, rot, 1_030, 60, 48),
            Arrival::AlreadyDue { left: 30 }
        );
        assert_eq!(Arrival::judge(nb, na, rot, 1_010, 60, 48), Arrival::Fresh);
        // Zone 5 minutes behind: not valid yet beyond the leeway.
        let a = Arrival::judge(1_300 - 30, 1_300 + 3600, 1_300 + 2880, 1_000, 60, 2880);
        assert_eq!(a, Arrival::NotYetValid { in_: 270 });
        assert!(!a.usable());
        // Within the leeway: fine.
        assert_eq!(
            Arrival::judge(1_030, 5_000, 4_000, 1_000, 60, 2400),
            Arrival::Fresh
        );
    }

    #[test]
    fn early_issuances_are_paced_by_doubling_steps() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(pace(0, i, m), Duration::ZERO);
        for streak in 1..12 {
            let cap = common::backoff::cap(streak, i, m);
            let d = pace(streak, i, m);
            assert!(d >= cap / 2 && d <= cap, "{streak}: {d:?} of {cap:?}");
        }
    }
}
