//! Durations as users write them in resources: `10s`, `5m`, `24h`, `1d`, `500ms`, `1w`, `1y`, and
//! sums such as `1h30m`. Serialized back in the same form, so a stored resource reads as it was written.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration parsed from the `N(ms|s|m|h|d|w|y)` form (Kuma's), kept with the text the user wrote.
/// Two durations are equal when they last as long (`1d == 24h`), whatever was written.
#[derive(Clone)]
pub struct HumanDuration {
    text: String,
    value: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error(
        "invalid duration {0:?}: expected a number followed by a unit (ms, s, m, h, d, w, y), e.g. 24h or 1h30m"
    )]
    Invalid(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

impl HumanDuration {
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let value = parse_duration(text)?;
        Ok(Self {
            text: text.trim().to_string(),
            value,
        })
    }

    pub fn from_duration(value: Duration) -> Self {
        Self {
            text: format_duration(value),
            value,
        }
    }

    pub fn as_duration(&self) -> Duration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for HumanDuration {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for HumanDuration {}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.text)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses `10s`, `24h`, `1d`, `1h30m`, `500ms`. A bare number is refused: the unit is never guessed.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let invalid = || DurationError::Invalid(text.to_string());
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(invalid());
        }
        let digits = &s[start..i];
        if digits.len() > 20 {
            return Err(DurationError::Overflow(text.to_string()));
        }
        let n: u128 = digits
            .parse()
            .map_err(|_| DurationError::Overflow(text.to_string()))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let millis: u128 = match &s[ustart..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(invalid()),
        };
        total = n
            .checked_mul(millis)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
    }
    // Cap at 1000 years: larger values are certainly mistakes and would overflow time arithmetic.
    if total > 1000 * 365 * 86_400_000 {
        return Err(DurationError::Overflow(text.to_string()));
    }
    Ok(Duration::from_millis(total as u64))
}

/// Formats a duration in the largest exact units (`24h`, `90s`, `1h30m`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{}", ms / size, unit));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(
            parse_duration("1w").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration(" 2h ").unwrap(), Duration::from_secs(7200));
    }

    #[test]
    fn refuses_bad_forms() {
        for bad in [
            "",
            "10",
            "h",
            "10x",
            "1.5h",
            "-1h",
            "10 s",
            "1h-",
            "99999999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["24h", "90s", "1h30m", "500ms", "20s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_secs(86_400)), "24h");
    }
}
