//! The life of a vault backend's Vault token on a zone: a login's token (`auth.tls`,
//! `auth.approle`, `auth.jwt`) or a given one (`auth.token`) is kept valid for as long as the
//! backend is in use, without a restart and without a loop of logins.
//!
//! - [`plan`] is the pure decision, tested with paused time: renew a renewable token at 2/3 of
//!   its TTL; once Vault caps a renewal (the token's max TTL is near) or the token cannot be
//!   renewed, log in again at 2/3 of what is left; with no token, log in; never before a refused
//!   login's backoff (the client holds it) or a failed renewal's.
//! - [`keep`] is the loop around it, one task per source: it sleeps until the plan's instant or
//!   until the lease changes by another hand (a 403 made the client log in again at once, the
//!   client was rebuilt), reads `file:` credentials again every [`CREDENTIAL_POLL`] and before
//!   a login (a changed file rebuilds the client, which logs in with it), and reports the login's
//!   health only when it changes ([`Keeping::report`]: one log line, and the zone's Vault check,
//!   per change of state). It works through [`Keeping`], which the Vault source implements and
//!   unit tests fake.

use std::sync::Weak;
use std::time::Duration;

use common::vault::Lease;
use tokio::sync::watch;
use tokio::time::Instant;

use super::source::BoxFut;

/// The share of a lease after which it is renewed (or, capped, replaced by a login).
pub(super) const RENEW_SHARE: f64 = 2.0 / 3.0;
/// The shortest wait after a lease was given before it is renewed or replaced.
pub(super) const MIN_STEP: Duration = Duration::from_secs(1);
/// How often `file:` credentials are read again.
pub(super) const CREDENTIAL_POLL: Duration = Duration::from_secs(10);
/// Backoff of failed renewals (a refused login is held by the client itself).
const RENEW_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const RENEW_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What to do with the token next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Log in (again).
    Login,
    /// `renew-self`.
    Renew,
    /// Nothing: the token never expires, or it cannot be renewed and there is no login.
    Idle,
}

/// A [`Step`] and when (`None`: only when something changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) step: Step,
    pub(super) at: Option<Instant>,
}

impl Plan {
    fn idle() -> Self {
        Plan {
            step: Step::Idle,
            at: None,
        }
    }
}

/// The next step for a token with `lease` (`None`: no token), for a client that `can_login` (or
/// not: a token given in `auth.token`); a login not before `login_hold` (a refused login's
/// backoff), a renewal not before `renew_retry` (a failed renewal's). Pure.
pub(super) fn plan(
    lease: Option<&Lease>,
    can_login: bool,
    login_hold: Option<Instant>,
    renew_retry: Option<Instant>,
    now: Instant,
) -> Plan {
    let no_sooner = |t: Instant, hold: Option<Instant>| hold.map_or(t, |h| t.max(h));
    let Some(l) = lease else {
        return if can_login {
            Plan {
                step: Step::Login,
                at: Some(no_sooner(now, login_hold)),
            }
        } else {
            Plan::idle()
        };
    };
    if l.ttl.is_zero() {
        return Plan::idle();
    }
    let due = l.at + l.ttl.mul_f64(RENEW_SHARE).max(MIN_STEP.min(l.ttl));
    let renew_at = no_sooner(due, renew_retry);
    if l.renewable && !l.capped && renew_at < l.expires() {
        return Plan {
            step: Step::Renew,
            at: Some(renew_at),
        };
    }
    // Capped, not renewable, or no renewal in time: only a login gives a token further.
    if can_login {
        Plan {
            step: Step::Login,
            at: Some(no_sooner(due, login_hold)),
        }
    } else {
        Plan::idle()
    }
}

/// A renewal that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RenewFailure {
    /// Vault refused the token (403): it is gone, and so is its lease.
    Refused,
    /// Anything else (Vault unreachable, sealed...): tried again after a backoff.
    Failed(String),
}

/// What [`keep`] works through: a Vault source (or a fake in unit tests).
pub(super) trait Keeping: Send + Sync {
    /// Changes whenever the lease or the client changes; subscribed before the lease is read.
    fn subscribe(&self) -> watch::Receiver<u64>;
    fn lease(&self) -> Option<Lease>;
    fn can_login(&self) -> bool;
    /// Until when a refused login's error is held.
    fn login_held_until(&self) -> Option<Instant>;
    /// The credentials include `file:` data sources (read again every [`CREDENTIAL_POLL`]).
    fn polls_files(&self) -> bool;
    /// The credentials' data sources no longer read as when the client was built.
    fn credentials_changed(&self) -> bool;
    fn login(&self) -> BoxFut<'_, Result<(), String>>;
    fn renew(&self) -> BoxFut<'_, Result<(), RenewFailure>>;
    /// A new client from the credentials as they read now, logged in.
    fn rebuild(&self) -> BoxFut<'_, Result<(), String>>;
    /// The login's health changed (called once per change: log it, tell the Vault check).
    fn report(&self, health: &Result<(), String>);
}

/// Keeps the token of `who` alive until it is dropped (see the module documentation).
pub(super) async fn keep<K: Keeping + ?Sized>(who: Weak<K>) {
    let mut health: Option<Result<(), String>> = None;
    let mut renewing: Option<String> = None;
    let mut renew_failures = 0u32;
    let mut renew_retry: Option<Instant> = None;
    let mut next_poll = Instant::now() + CREDENTIAL_POLL;
    loop {
        let Some(k) = who.upgrade() else { return };
        let mut changes = k.subscribe();
        let now = Instant::now();
        let p = plan(
            k.lease().as_ref(),
            k.can_login(),
            k.login_held_until(),
            renew_retry,
            now,
        );
        let poll = k.polls_files().then_some(next_poll);
        drop(k);
        let wake = match (p.at, poll) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timer = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = timer => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let Some(k) = who.upgrade() else { return };
        let now = Instant::now();
        let step_due = p.at.is_some_and(|t| t <= now);
        if k.polls_files() && (next_poll <= now || (step_due && p.step == Step::Login)) {
            next_poll = now + CREDENTIAL_POLL;
            if k.credentials_changed() {
                let r = k.rebuild().await;
                if r.is_ok() {
                    renew_failures = 0;
                    renew_retry = None;
                }
                note(&*k, &mut health, r);
                continue;
            }
        }
        if !step_due {
            continue;
        }
        match p.step {
            Step::Login => {
                let r = k.login().await;
                if r.is_ok() {
                    renew_failures = 0;
                    renew_retry = None;
                }
                note(&*k, &mut health, r);
            }
            Step::Renew => match k.renew().await {
                Ok(()) => {
                    renew_failures = 0;
                    renew_retry = None;
                    if renewing.take().is_some() {
                        tracing::info!("the Vault token is renewed again");
                    }
                }
                Err(RenewFailure::Refused) => {
                    renew_retry = None;
                    tracing::debug!("Vault refused the token's renewal: it is gone");
                }
                Err(RenewFailure::Failed(e)) => {
                    renew_failures = renew_failures.saturating_add(1);
                    renew_retry = Some(
                        now + common::backoff::delay(
                            renew_failures,
                            RENEW_BACKOFF_INITIAL,
                            RENEW_BACKOFF_MAX,
                            common::backoff::Jitter::UpperHalf,
                        ),
                    );
                    if renewing.as_deref() != Some(e.as_str()) {
                        tracing::warn!(error = %e, "cannot renew the Vault token; retried with backoff (a login replaces it before it expires)");
                        renewing = Some(e);
                    }
                }
            },
            Step::Idle => {}
        }
    }
}

/// Reports `new` if it differs from the last health reported.
fn note<K: Keeping + ?Sized>(
    k: &K,
    last: &mut Option<Result<(), String>>,
    new: Result<(), String>,
) {
    if last.as_ref() != Some(&new) {
        k.report(&new);
        *last = Some(new);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn lease(at: Instant, ttl: u64, renewable: bool, capped: bool) -> Lease {
        Lease {
            at,
            ttl: Duration::from_secs(ttl),
            renewable,
            capped,
            increment: Duration::from_secs(ttl),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renew_at_two_thirds_then_log_in_before_the_max_ttl() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // No token: log in now, or once a refused login's backoff is over.
        assert_eq!(
            plan(None, true, None, None, t0),
            Plan {
                step: Step::Login,
                at: Some(t0)
            }
        );
        assert_eq!(
            plan(None, true, Some(t0 + s(8)), None, t0).at,
            Some(t0 + s(8))
        );
        assert_eq!(plan(None, false, None, None, t0), Plan::idle());
        // A renewable 30 s token: renewed at 20 s.
        let l = lease(t0, 30, true, false);
        assert_eq!(
            plan(Some(&l), true, None, None, t0),
            Plan {
                step: Step::Renew,
                at: Some(t0 + s(20))
            }
        );
        // A failed renewal's backoff moves the renewal, as long as it comes before the token
        // expires...
        assert_eq!(
            plan(Some(&l), true, None, Some(t0 + s(25)), t0).at,
            Some(t0 + s(25))
        );
        // ...else a login replaces it at once (a given token just lapses), unless a refused
        // login holds.
        assert_eq!(
            plan(Some(&l), true, None, Some(t0 + s(31)), t0),
            Plan {
                step: Step::Login,
                at: Some(t0 + s(20))
            }
        );
        assert_eq!(
            plan(Some(&l), true, Some(t0 + s(40)), Some(t0 + s(31)), t0).at,
            Some(t0 + s(40))
        );
        assert_eq!(
            plan(Some(&l), false, None, Some(t0 + s(31)), t0),
            Plan::idle()
        );
        // Capped (max TTL near) or not renewable: a login at 2/3 of what is left.
        tokio::time::advance(s(27)).await;
        let now = Instant::now();
        let capped = lease(now, 12, true, true);
        assert_eq!(
            plan(Some(&capped), true, None, None, now),
            Plan {
                step: Step::Login,
                at: Some(now + s(8))
            }
        );
        let fixed = lease(now, 12, false, false);
        assert_eq!(plan(Some(&fixed), true, None, None, now).step, Step::Login);
        assert_eq!(plan(Some(&fixed), false, None, None, now), Plan::idle());
        // A token that never expires (root, or a period of 0), and a TTL under a second.
        assert_eq!(
            plan(Some(&lease(now, 0, true, false)), true, None, None, now),
            Plan::idle()
        );
        let short = Lease {
            ttl: Duration::from_millis(600),
            ..lease(now, 0, true, false)
        };
        assert_eq!(
            plan(Some(&short), true, None, None, now),
            Plan {
                step: Step::Login,
                at: Some(now + Duration::from_millis(600))
            }
        );
    }

    /// Vault as the keeper sees it, in paused time: tokens of `ttl` capped at `max_ttl` from their
    /// login, logins refused while `refusing`, renewals failing while `failing`.
    struct FakeVault {
        ttl: Duration,
        max_ttl: Duration,
        tx: watch::Sender<u64>,
        st: Mutex<FakeState>,
    }

    #[derive(Default)]
    struct FakeState {
        /// (login instant, lease).
        token: Option<(Instant, Lease)>,
        refusing: bool,
        failing: bool,
        held: Option<Instant>,
        login_failures: u32,
        logins: u32,
        attempts: u32,
        renewals: u32,
        reports: Vec<Result<(), String>>,
        /// A moment when a token was needed and none was valid.
        lapsed: Vec<Duration>,
    }

    impl FakeVault {
        fn new(ttl: u64, max_ttl: u64) -> Arc<Self> {
            Arc::new(Self {
                ttl: Duration::from_secs(ttl),
                max_ttl: Duration::from_secs(max_ttl),
                tx: watch::Sender::new(0),
                st: Mutex::new(FakeState::default()),
            })
        }

        fn st(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.st.lock().unwrap()
        }

        /// A token is valid now (what an issuance would need).
        fn valid(&self) -> bool {
            self.st()
                .token
                .as_ref()
                .is_some_and(|(_, l)| Instant::now() < l.expires())
        }
    }

    impl Keeping for FakeVault {
        fn subscribe(&self) -> watch::Receiver<u64> {
            self.tx.subscribe()
        }
        fn lease(&self) -> Option<Lease> {
            self.st().token.map(|(_, l)| l)
        }
        fn can_login(&self) -> bool {
            true
        }
        fn login_held_until(&self) -> Option<Instant> {
            self.st().held.filter(|h| *h > Instant::now())
        }
        fn polls_files(&self) -> bool {
            false
        }
        fn credentials_changed(&self) -> bool {
            false
        }
        fn login(&self) -> BoxFut<'_, Result<(), String>> {
            Box::pin(async move {
                let now = Instant::now();
                let mut st = self.st();
                st.attempts += 1;
                if st.refusing {
                    st.login_failures += 1;
                    let wait = common::backoff::delay(
                        st.login_failures,
                        common::vault::LOGIN_BACKOFF_INITIAL,
                        common::vault::LOGIN_BACKOFF_MAX,
                        common::backoff::Jitter::UpperHalf,
                    );
                    st.held = Some(now + wait);
                    return Err("login refused by Vault: invalid role or secret ID".to_string());
                }
                st.login_failures = 0;
                st.held = None;
                st.logins += 1;
                st.token = Some((now, lease(now, self.ttl.as_secs(), true, false)));
                drop(st);
                self.tx.send_modify(|n| *n += 1);
                Ok(())
            })
        }
        fn renew(&self) -> BoxFut<'_, Result<(), RenewFailure>> {
            Box::pin(async move {
                let now = Instant::now();
                let mut st = self.st();
                if st.failing {
                    return Err(RenewFailure::Failed("Vault is sealed".into()));
                }
                let Some((login, l)) = st.token else {
                    return Err(RenewFailure::Refused);
                };
                if now >= l.expires() {
                    st.token = None;
                    return Err(RenewFailure::Refused);
                }
                st.renewals += 1;
                let left = (login + self.max_ttl).saturating_duration_since(now);
                let ttl = self.ttl.min(left);
                st.token = Some((
                    login,
                    Lease {
                        at: now,
                        ttl,
                        renewable: true,
                        capped: ttl < self.ttl,
                        increment: self.ttl,
                    },
                ));
                drop(st);
                self.tx.send_modify(|n| *n += 1);
                Ok(())
            })
        }
        fn rebuild(&self) -> BoxFut<'_, Result<(), String>> {
            self.login()
        }
        fn report(&self, health: &Result<(), String>) {
            self.st().reports.push(health.clone());
        }
    }

    /// Runs the keeper over `fake` for `total`, looking every second whether a token is valid.
    async fn run_for(fake: &Arc<FakeVault>, total: Duration) {
        let start = Instant::now();
        while start.elapsed() < total {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !fake.valid() && !fake.st().refusing && !fake.st().failing {
                let at = start.elapsed();
                fake.st().lapsed.push(at);
            }
        }
    }

    /// The case (20 s tokens, at most 40 s) over an hour of paused time: the token is
    /// always valid, a login every ~35 s at most, renewals in between; a spell of refused logins
    /// backs off (attempts bounded) and is reported once, as is the recovery; a spell of failing
    /// renewals is bridged by logins.
    #[tokio::test(start_paused = true)]
    async fn an_hour_of_20s_tokens_capped_at_40s() {
        let fake = FakeVault::new(20, 40);
        // The source logs in when it is built; the keeper takes over.
        fake.login().await.unwrap();
        let weak = Arc::downgrade(&fake);
        let task = tokio::spawn(keep(weak));
        let hour = Duration::from_secs(3600);
        run_for(&fake, hour).await;
        {
            let st = fake.st();
            assert!(st.lapsed.is_empty(), "no valid token at {:?}", st.lapsed);
            // One login per max TTL at most (35.5 s: 2/3 into the capped rest), plus the first.
            let most = (3600.0_f64 / 35.0).ceil() as u32 + 1;
            assert!(
                st.logins <= most && st.logins >= 3600 / 40,
                "{} logins",
                st.logins
            );
            assert!(st.renewals >= st.logins, "{} renewals", st.renewals);
            assert_eq!(st.reports, vec![Ok(())]);
            eprintln!("an hour: {} logins, {} renewals", st.logins, st.renewals);
        }

        // Ten minutes of refused logins: the token lapses once its max TTL is over, logins
        // back off (1 s doubling to 60 s: a handful a minute at most), one report.
        let attempts = fake.st().attempts;
        fake.st().refusing = true;
        tokio::time::sleep(Duration::from_secs(600)).await;
        let refused = fake.st().attempts - attempts;
        assert!(
            (2..=30).contains(&refused),
            "{refused} attempts in 10 minutes"
        );
        eprintln!("ten minutes of refusals: {refused} attempts");
        assert!(!fake.valid());
        fake.st().refusing = false;
        // Accepted again: within one backoff step (at most a minute) a token is back.
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(fake.valid());
        assert_eq!(
            fake.st().reports,
            vec![
                Ok(()),
                Err("login refused by Vault: invalid role or secret ID".to_string()),
                Ok(())
            ]
        );

        // Renewals failing for five minutes: logins keep a valid token all along.
        fake.st().failing = true;
        let logins = fake.st().logins;
        run_for(&fake, Duration::from_secs(300)).await;
        fake.st().failing = false;
        {
            let st = fake.st();
            assert!(st.lapsed.is_empty(), "lapsed at {:?}", st.lapsed);
            let more = st.logins - logins;
            assert!(more <= 300 / 10, "{more} logins");
            eprintln!("five minutes of failing renewals: {more} logins");
        }

        // The source gone: the keeper ends.
        drop(fake);
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the keeper ends with its source")
            .unwrap();
    }
}
