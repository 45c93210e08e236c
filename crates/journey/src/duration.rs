//! Durations as marketers write them: `30s`, `15m`, `2h`, `3d`, `1w`, `1d12h`.

use chrono::TimeDelta;

/// Parses a duration: one or more `<integer><unit>` pairs, units `s m h d w`.
/// A day is exactly 24 hours.
///
/// # Errors
/// Anything else, with a message that quotes the input and shows the expected form.
pub fn parse_duration(text: &str) -> Result<TimeDelta, String> {
    let invalid = || {
        format!(
            "invalid duration `{text}`: expected a number and a unit (s, m, h, d, w), such as 30m, 2h, 3d or 1d12h"
        )
    };
    let mut total = TimeDelta::zero();
    let mut digits = String::new();
    let mut parts = 0;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let amount: i64 = digits.parse().map_err(|_| invalid())?;
        digits.clear();
        let unit = match c {
            's' => TimeDelta::try_seconds(amount),
            'm' => TimeDelta::try_minutes(amount),
            'h' => TimeDelta::try_hours(amount),
            'd' => TimeDelta::try_days(amount),
            'w' => TimeDelta::try_weeks(amount),
            _ => None,
        }
        .ok_or_else(invalid)?;
        total = total.checked_add(&unit).ok_or_else(invalid)?;
        parts += 1;
    }
    if !digits.is_empty() || parts == 0 {
        return Err(invalid());
    }
    Ok(total)
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
    fn formats_back() {
        assert_eq!(format_duration(TimeDelta::hours(36)), "1d12h");
        assert_eq!(format_duration(TimeDelta::days(14)), "2w");
    }
}
