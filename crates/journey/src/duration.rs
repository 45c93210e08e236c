//! Durations as marketers write them: `30s`, `15m`, `2h`, `3d`, `1w`, `1d12h`.

use chrono::{DateTime, TimeDelta, Utc};

/// The longest duration a journey may use: 100 years of 365.25 days.
///
/// Long enough for any real wait (a yearly anniversary, a multi-year renewal, a
/// decade-long history window), short enough that `now + duration` stays far inside what
/// every part of the system can represent: the store keeps instants as nanoseconds since
/// 1970, which end in 2262. A duration beyond it is a typo (`9999999999w`), not a plan.
pub const MAX_DURATION: TimeDelta = TimeDelta::days(36_525);

/// Parses a duration: one or more `<integer><unit>` pairs, units `s m h d w`.
/// A day is exactly 24 hours.
///
/// # Errors
/// Anything else, with a message that quotes the input and shows the expected form; and
/// a duration longer than [`MAX_DURATION`], which nothing could wait out.
pub fn parse_duration(text: &str) -> Result<TimeDelta, String> {
    let invalid = || {
        format!(
            "invalid duration `{text}`: expected a number and a unit (s, m, h, d, w), such as 30m, 2h, 3d or 1d12h"
        )
    };
    let too_long = || {
        format!(
            "duration `{text}` is too long: the longest is 100 years ({}d)",
            MAX_DURATION.num_days()
        )
    };
    // Seconds, saturating: any overflow is far past the limit and reported as too long.
    let mut total: u64 = 0;
    let mut amount: Option<u64> = None;
    let mut parts = 0;
    for c in text.chars() {
        if let Some(digit) = c.to_digit(10) {
            let so_far = amount.unwrap_or(0);
            amount = Some(so_far.saturating_mul(10).saturating_add(u64::from(digit)));
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(invalid()),
        };
        let amount = amount.take().ok_or_else(invalid)?;
        total = total.saturating_add(amount.saturating_mul(unit));
        parts += 1;
    }
    if amount.is_some() || parts == 0 {
        return Err(invalid());
    }
    i64::try_from(total)
        .ok()
        .and_then(TimeDelta::try_seconds)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(too_long)
}

/// Formats a duration the way it would be written: `1d12h`, `30m`, `0s`.
pub fn format_duration(d: TimeDelta) -> String {
    let mut secs = d.num_seconds();
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    if secs < 0 {
        out.push('-');
        secs = -secs;
    }
    for (unit, size) in [
        ("w", 604_800),
        ("d", 86_400),
        ("h", 3_600),
        ("m", 60),
        ("s", 1),
    ] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// The start of the trailing window of length `d` that ends at `now` (the history
/// functions' windows, frequency caps and fatigue): `None`, all history, when it reaches
/// past the first representable instant; past the last one when a negative window reaches
/// beyond it, so nothing counts.
pub fn window_start(now: DateTime<Utc>, d: TimeDelta) -> Option<DateTime<Utc>> {
    match now.checked_sub_signed(d) {
        Some(start) => Some(start),
        None if d > TimeDelta::zero() => None,
        None => Some(DateTime::<Utc>::MAX_UTC),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_concatenations() {
        assert_eq!(parse_duration("30s"), Ok(TimeDelta::seconds(30)));
        assert_eq!(parse_duration("15m"), Ok(TimeDelta::minutes(15)));
        assert_eq!(parse_duration("1w"), Ok(TimeDelta::days(7)));
        assert_eq!(parse_duration("1d12h"), Ok(TimeDelta::hours(36)));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in ["", "1 hour", "h", "10", "1y", "-1h", "1.5h"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn refuses_durations_past_a_century() {
        assert_eq!(parse_duration("36525d"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("5217w6d"), Ok(MAX_DURATION));
        for long in [
            "36526d",
            "36525d1s",
            "5218w",
            "9999999999w",
            "99999999999999999999999999s",
            "1d99999999999999999999999h",
        ] {
            let err = parse_duration(long).unwrap_err();
            assert!(err.contains(long) && err.contains("too long"), "{err}");
        }
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_duration(TimeDelta::hours(36)), "1d12h");
        assert_eq!(format_duration(TimeDelta::days(14)), "2w");
    }
}
