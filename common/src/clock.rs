//! The one time module of the project: the wall clock as the control planes read it (unix seconds,
//! milliseconds, `OffsetDateTime`) and times as the APIs and logs show them, RFC 3339
//! (`2026-11-28T10:51:14Z`). Every `now_*` and `rfc3339*` helper lives here, and so does
//! [`Skew`]: how far a peer's clock (Vault's, global's, a proxy's) is from this host's, measured
//! from a time the peer sent, and how that is said to an operator.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Seconds since the unix epoch by this host's clock (0 if the clock is before 1970).
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the unix epoch by this host's clock (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Now, as a UTC `OffsetDateTime` truncated to whole seconds (certificate validity is built from
/// it, and certificates carry seconds only).
pub fn now_utc() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(now_unix()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 of unix seconds; `None` when out of range.
pub fn rfc3339(unix: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// RFC 3339 of unix milliseconds; `None` for 0 and below ("never") or out of range.
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    if ms <= 0 {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// How far apart two clocks may be before it is worth saying: Vault and the local CAs backdate a
/// certificate's NotBefore by 30 s, and tokens are checked with [`LEEWAY`], so less than this never
/// breaks a certificate or a token.
pub const SKEW_TOLERANCE_MS: i64 = 30_000;

/// The leeway with which times set by another host (a token's `iat`, a certificate's NotBefore)
/// are checked against this host's clock: a minute.
pub const LEEWAY: std::time::Duration = std::time::Duration::from_secs(60);

/// How far a peer's clock is from this host's: positive when the peer is ahead. Measured from a
/// time the peer put in an answer (`peer_ms`) and this host's clock when the question left
/// (`sent_ms`) and the answer arrived (`received_ms`): the peer read its clock somewhere between,
/// so the middle is the estimate and half the round trip its error bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skew {
    pub ms: i64,
    /// Bound on the error of `ms`.
    pub error_ms: i64,
}

impl Skew {
    /// The skew of a peer that answered at `peer_ms`. `peer_resolution_ms` is how coarse its time
    /// is (1000 for an HTTP `Date` header, which truncates to the second).
    pub fn measure(peer_ms: i64, sent_ms: i64, received_ms: i64, peer_resolution_ms: i64) -> Self {
        let (sent, received) = (sent_ms.min(received_ms), sent_ms.max(received_ms));
        let middle = sent + (received - sent) / 2;
        // A truncated time stands for the middle of its interval.
        let peer = peer_ms + peer_resolution_ms / 2;
        Self {
            ms: peer - middle,
            error_ms: (received - sent) / 2 + peer_resolution_ms / 2,
        }
    }

    /// Whether it exceeds [`SKEW_TOLERANCE_MS`] beyond its error bound.
    pub fn is_notable(&self) -> bool {
        self.ms.abs() - self.error_ms > SKEW_TOLERANCE_MS
    }

    /// `this host's clock is 2d 0h ahead of the clock of Vault` (the host is ahead when the peer
    /// is behind), or that they agree.
    pub fn describe(&self, peer: &str) -> String {
        if !self.is_notable() {
            return format!(
                "this host's clock agrees with the clock of {peer} within {}",
                human_ms(SKEW_TOLERANCE_MS)
            );
        }
        let way = if self.ms < 0 { "ahead of" } else { "behind" };
        format!(
            "this host's clock is {} {way} the clock of {peer} (fix the clocks, e.g. with NTP)",
            human_ms(self.ms.abs())
        )
    }
}

/// A duration for people, rounded to its last unit: `2d 3h`, `2h 1m`, `5m 10s`, `12s`, `800ms`.
pub fn human_ms(ms: i64) -> String {
    let ms = ms.unsigned_abs();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let rounded = |unit: u64| (ms + unit / 2) / unit;
    let s = rounded(1000);
    if s < 3600 {
        let (m, s) = (s / 60, s % 60);
        return if m == 0 {
            format!("{s}s")
        } else {
            format!("{m}m {s}s")
        };
    }
    if s < 86_400 {
        let m = rounded(60_000);
        return format!("{}h {}m", m / 60, m % 60);
    }
    let h = rounded(3_600_000);
    format!("{}d {}h", h / 24, h % 24)
}

/// Unix seconds of an HTTP `Date` header (`Sun, 06 Dec 2026 08:02:14 GMT`).
pub fn parse_http_date(value: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(value.trim()).ok()?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_measured_from_the_middle_of_the_exchange() {
        // The peer answered "1000 s" (a Date header: 1000.000 to 1000.999) to a question sent at
        // 1000.2 s and answered at 1000.4 s: no skew worth a word.
        let s = Skew::measure(1_000_000, 1_000_200, 1_000_400, 1000);
        assert_eq!(
            s,
            Skew {
                ms: 200,
                error_ms: 600
            }
        );
        assert!(!s.is_notable());
        assert!(s.describe("Vault").contains("agrees"));
        // This host two days ahead of the peer.
        let day = 86_400_000;
        let s = Skew::measure(1_000_000, 1_000_000 + 2 * day, 1_000_000 + 2 * day + 10, 1);
        assert!(s.is_notable());
        assert_eq!(
            s.describe("Vault"),
            "this host's clock is 2d 0h ahead of the clock of Vault (fix the clocks, e.g. with NTP)"
        );
        // The peer five minutes ahead.
        let s = Skew::measure(301_000, 1_000, 1_000, 1);
        assert!(
            s.describe("global")
                .contains("5m 0s behind the clock of global")
        );
        // Within the tolerance, or within the error bound: nothing to say.
        assert!(!Skew::measure(25_000, 0, 0, 1).is_notable());
        assert!(!Skew::measure(35_000, 0, 20_000, 1).is_notable());
    }

    #[test]
    fn durations_and_http_dates() {
        assert_eq!(human_ms(800), "800ms");
        assert_eq!(human_ms(-12_000), "12s");
        assert_eq!(human_ms(310_000), "5m 10s");
        assert_eq!(human_ms(7_260_000), "2h 1m");
        assert_eq!(human_ms(183_600_000), "2d 3h");
        // Rounded, not cut: a measure a little short of two days is two days.
        assert_eq!(human_ms(172_799_589), "2d 0h");
        assert_eq!(human_ms(299_600), "5m 0s");
        assert_eq!(
            parse_http_date("Sun, 06 Dec 2026 08:02:14 GMT"),
            Some(1_796_544_134)
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn formats_seconds_and_milliseconds() {
        assert_eq!(super::rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            super::rfc3339_ms(1_500).as_deref(),
            Some("1970-01-01T00:00:01.5Z")
        );
        assert_eq!(super::rfc3339_ms(0), None);
        assert_eq!(super::rfc3339(i64::MAX), None);
    }

    #[test]
    fn the_clock_is_after_2020() {
        assert!(super::now_unix() > 1_577_836_800);
        assert!(super::now_ms() / 1000 >= super::now_unix() - 1);
    }
}
