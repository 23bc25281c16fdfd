//! The one time module of the project: the wall clock as the control planes read it (unix seconds,
//! milliseconds, `OffsetDateTime`) and times as the APIs and logs show them, RFC 3339
//! (`2026-11-28T10:51:14Z`). Every `now_*` and `rfc3339*` helper lives here.

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

#[cfg(test)]
mod tests {
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
