//! Times as the APIs and logs show them: RFC 3339 (`2026-11-28T10:51:14Z`), from unix seconds or
//! milliseconds.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
}
