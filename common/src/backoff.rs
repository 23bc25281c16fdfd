//! The one exponential backoff of the project: the delay cap `min(max, initial * 2^(n-1))` for
//! attempt `n` (1 for the first retry), drawn with one of two jitters. [`Jitter::Full`] (uniform in
//! `[0, cap]`, at least [`MIN_RETRY`]) spreads a zone's per-proxy retries; [`Jitter::UpperHalf`]
//! (uniform in `[cap/2, cap]`) keeps a reconnecting peer from retrying too soon. [`Backoff`] counts
//! the attempts for a caller that retries one thing; [`delay_with`] is the pure formula.

use std::time::Duration;

use rand::Rng;

/// The shortest delay [`Jitter::Full`] ever gives, so that a zero draw never spins.
pub const MIN_RETRY: Duration = Duration::from_millis(50);

/// How the delay is drawn below its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, cap]`, at least [`MIN_RETRY`] ("full jitter").
    Full,
    /// Uniform in `[cap / 2, cap]`.
    UpperHalf,
}

/// The cap of attempt `attempt` (1 for the first retry; 0 counts as 1).
pub fn cap(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    initial.checked_mul(1u32 << exp).unwrap_or(max).min(max)
}

/// The delay of attempt `attempt` with the random draw (in `[0, 1]`) given.
pub fn delay_with(
    attempt: u32,
    initial: Duration,
    max: Duration,
    jitter: Jitter,
    draw: f64,
) -> Duration {
    let draw = draw.clamp(0.0, 1.0);
    let cap = cap(attempt, initial, max);
    match jitter {
        Jitter::Full => cap.max(MIN_RETRY).mul_f64(draw).max(MIN_RETRY),
        Jitter::UpperHalf => {
            let half = cap / 2;
            half + half.mul_f64(draw)
        }
    }
}

/// The delay of attempt `attempt`, drawn at random.
pub fn delay(attempt: u32, initial: Duration, max: Duration, jitter: Jitter) -> Duration {
    delay_with(attempt, initial, max, jitter, rand::rng().random::<f64>())
}

/// Attempts counted for one thing retried: [`Backoff::next_delay`] grows until [`Backoff::reset`].
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: Jitter,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, jitter: Jitter) -> Self {
        Self {
            initial,
            max,
            jitter,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        delay(self.attempt, self.initial, self.max, self.jitter)
    }

    /// The next delay is the first one again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_grows_and_is_capped() {
        let i = Duration::from_secs(1);
        let m = Duration::from_secs(300);
        let full = |n, d| delay_with(n, i, m, Jitter::Full, d);
        assert_eq!(full(1, 1.0), Duration::from_secs(1));
        assert_eq!(full(2, 1.0), Duration::from_secs(2));
        assert_eq!(full(4, 1.0), Duration::from_secs(8));
        assert_eq!(full(9, 1.0), Duration::from_secs(256));
        assert_eq!(full(10, 1.0), m);
        assert_eq!(full(1000, 1.0), m);
        assert_eq!(full(3, 0.5), Duration::from_secs(2));
        assert_eq!(full(3, 0.0), MIN_RETRY);
        for n in 1..20 {
            let d = delay(n, i, m, Jitter::Full);
            assert!(d >= MIN_RETRY && d <= m, "{d:?}");
        }
    }

    #[test]
    fn upper_half_starts_within_a_second_and_is_capped() {
        let mut b = Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Jitter::UpperHalf,
        );
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(delays.last().unwrap() >= &Duration::from_secs(15));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
