//! Durations as users write them in resources and flags: every form Kuma accepts (Go's
//! `time.ParseDuration`: `300ms`, `1.5h`, `2h45m10s`, `1us`, `0`, a leading `+`) and Kuma's `d`, plus
//! `w` and `y`. Negative durations are refused with that reason. Serialized back in the same form,
//! so a stored resource reads as it was written.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration parsed as [`parse_duration`] reads it (Kuma's forms), kept with the text the user wrote.
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
        "invalid duration {0:?}: expected numbers each followed by a unit (ns, us, ms, s, m, h, d, w, y), e.g. 24h, 1.5h or 1h30m"
    )]
    Invalid(String),
    #[error("duration {0:?} is too large: at most 1000 years")]
    Overflow(String),
    #[error("duration {0:?} is negative: a duration must be zero or more")]
    Negative(String),
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

/// The units, in nanoseconds: Go's (`ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`), Kuma's `d`, and `w`, `y`.
fn unit_nanos(unit: &str) -> Option<u128> {
    const S: u128 = 1_000_000_000;
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => S,
        "m" => 60 * S,
        "h" => 3_600 * S,
        "d" => 86_400 * S,
        "w" => 7 * 86_400 * S,
        "y" => 365 * 86_400 * S,
        _ => return None,
    })
}

/// The longest duration accepted: 1000 years (larger values are certainly mistakes and would
/// overflow time arithmetic).
const MAX_NANOS: u128 = 1000 * 365 * 86_400 * 1_000_000_000;

/// Parses a duration as Go's `time.ParseDuration` does (what Kuma accepts: `10s`, `1.5h`,
/// `2h45m10s`, `300ms`, `0`), with Kuma's `d` and `w`, `y` too. A bare number other than `0` is
/// refused (the unit is never guessed), and so is a negative duration.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let invalid = || DurationError::Invalid(text.to_string());
    let overflow = || DurationError::Overflow(text.to_string());
    let (negative, rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    // Go's one exception to "a unit is required".
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    let mut chars = rest.char_indices().peekable();
    while chars.peek().is_some() {
        // [0-9]*(\.[0-9]*)?
        let mut whole: u128 = 0;
        let mut whole_digits = 0usize;
        while let Some(&(_, c)) = chars.peek().filter(|(_, c)| c.is_ascii_digit()) {
            whole_digits += 1;
            if whole_digits > 30 {
                return Err(overflow());
            }
            whole = whole * 10 + u128::from(c as u8 - b'0');
            chars.next();
        }
        let (mut frac, mut scale, mut frac_digits) = (0u128, 1u128, 0usize);
        if chars.peek().is_some_and(|(_, c)| *c == '.') {
            chars.next();
            while let Some(&(_, c)) = chars.peek().filter(|(_, c)| c.is_ascii_digit()) {
                frac_digits += 1;
                // Digits past nanosecond precision of an hour change nothing (Go drops them too).
                if frac_digits <= 20 {
                    frac = frac * 10 + u128::from(c as u8 - b'0');
                    scale *= 10;
                }
                chars.next();
            }
        }
        if whole_digits == 0 && frac_digits == 0 {
            return Err(invalid());
        }
        let unit_start = chars.peek().map(|(i, _)| *i).ok_or_else(invalid)?;
        let mut unit_end = rest.len();
        while let Some(&(i, c)) = chars.peek() {
            if c == '.' || c.is_ascii_digit() {
                unit_end = i;
                break;
            }
            chars.next();
        }
        let unit = unit_nanos(&rest[unit_start..unit_end]).ok_or_else(invalid)?;
        let value = whole
            .checked_mul(unit)
            .and_then(|v| v.checked_add(frac * unit / scale))
            .ok_or_else(overflow)?;
        total = total.checked_add(value).ok_or_else(overflow)?;
        if total > MAX_NANOS {
            return Err(overflow());
        }
    }
    if negative && total > 0 {
        return Err(DurationError::Negative(text.to_string()));
    }
    const NANOS: u128 = 1_000_000_000;
    // At most 1000 years: the seconds fit in a u64, the nanoseconds in a u32.
    Ok(Duration::new(
        (total / NANOS) as u64,
        (total % NANOS) as u32,
    ))
}

/// Formats a duration in the largest exact units (`24h`, `90s`, `1h30m`).
pub fn format_duration(d: Duration) -> String {
    let mut ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        if ns >= size {
            out.push_str(&format!("{}{}", ns / size, unit));
            ns %= size;
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
    fn accepts_what_go_and_kuma_accept() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("1h30m", ms(5_400_000)),
            ("1.5h", ms(5_400_000)),
            ("300ms", ms(300)),
            ("2h45m10s", ms(9_910_000)),
            ("1.5s", ms(1_500)),
            (".5s", ms(500)),
            ("1.s", ms(1_000)),
            ("+10s", ms(10_000)),
            ("0", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1us", Duration::from_micros(1)),
            ("1\u{b5}s", Duration::from_micros(1)),
            ("1\u{3bc}s", Duration::from_micros(1)),
            ("10ns", Duration::from_nanos(10)),
            ("1h1m1s1ms1us1ns", Duration::from_nanos(3_661_001_001_001)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("1d", ms(86_400_000)),
            ("1.5d", ms(129_600_000)),
            ("2w", ms(14 * 86_400_000)),
            ("900y", Duration::from_secs(900 * 365 * 86_400)),
            ("1000y", Duration::from_secs(1000 * 365 * 86_400)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn refuses_bad_forms() {
        for bad in [
            "",
            "10",
            "h",
            "10x",
            "10 s",
            "1h-",
            ".",
            ".s",
            "1..5s",
            "1.5.5s",
            "-",
            "+",
            "s10",
            "1hh",
            "1H",
            "99999999999999999999999h",
            "1001y",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn negative_durations_are_refused_saying_so() {
        for text in ["-1h", "-1.5s", "-300ms"] {
            let e = parse_duration(text).unwrap_err();
            assert_eq!(e, DurationError::Negative(text.to_string()));
            assert!(e.to_string().contains("negative"), "{e}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in [
            "24h",
            "90s",
            "1h30m",
            "500ms",
            "20s",
            "1.5h",
            "1us",
            "7ns",
            "2h45m10.5s",
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_secs(86_400)), "24h");
    }
}
