//! The `policy:` section (language section 5). Journeys, scenario tests and the daemon's
//! config all carry one with the same syntax, so it is parsed here once for all of them.

use std::path::Path;

use crate::diagnostics::{Diagnostic, codes};
use crate::model::{Cap, Fatigue, PolicyOverride, Pos, Setting};
use crate::parse::{self, Report};
use crate::yaml::{Key, Node, NodeValue};

const POLICY_KEYS: [&str; 6] = [
    "timezone",
    "channels",
    "quiet_hours",
    "frequency_cap",
    "fatigue",
    "max_lateness",
];

/// Parses a `policy:` mapping: the keys present override the policy below.
///
/// `file` is only used to name the source in diagnostics.
///
/// # Errors
/// Every problem found (unknown keys, bad durations, time zones, caps...).
pub fn parse_policy(node: &Node, file: &Path) -> Result<PolicyOverride, Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let mut r = Report {
        file,
        diagnostics: &mut diagnostics,
    };
    match policy(&mut r, node) {
        Some(policy) if diagnostics.is_empty() => Ok(policy),
        _ => Err(diagnostics),
    }
}

/// [`parse_policy`] for a policy held as JSON (positions are then unknown).
///
/// # Errors
/// As [`parse_policy`].
pub fn parse_policy_json(
    value: &serde_json::Value,
    source: &Path,
) -> Result<PolicyOverride, Vec<Diagnostic>> {
    parse_policy(&Node::from_json(value), source)
}

/// [`parse_policy_json`] with the problems as one readable line, for callers that only
/// need to say why a policy section was refused.
///
/// # Errors
/// Every problem's message, joined by `; `.
pub fn policy_override_from_json(value: &serde_json::Value) -> Result<PolicyOverride, String> {
    parse_policy_json(value, Path::new("")).map_err(|diagnostics| {
        diagnostics
            .iter()
            .map(|d| d.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

pub(crate) fn policy(r: &mut Report<'_>, node: &Node) -> Option<PolicyOverride> {
    if node.is_null() {
        return Some(PolicyOverride::default());
    }
    let entries = parse::map(r, node, "`policy`")?;
    parse::check_keys(r, entries, &POLICY_KEYS, "`policy`");
    let errors = r.error_count();
    let mut out = PolicyOverride::default();
    if let Some(n) = parse::get(entries, "timezone") {
        out.timezone = parse::timezone(r, n);
    }
    if let Some(n) = parse::get(entries, "channels") {
        out.channels = channels(r, n);
    }
    if let Some(n) = parse::get(entries, "quiet_hours") {
        out.quiet_hours = setting(r, n, parse::quiet_hours);
    }
    if let Some((k, n)) = parse::get_entry(entries, "frequency_cap") {
        out.frequency_caps = setting(r, n, |r, n| {
            let caps: Vec<Option<Cap>> = match &n.value {
                NodeValue::Seq(items) => items
                    .iter()
                    .map(|c| cap(r, c, (c.pos, 0), "`frequency_cap`", true))
                    .collect(),
                _ => vec![cap(r, n, (k.pos, k.len), "`frequency_cap`", true)],
            };
            caps.into_iter().collect()
        });
    }
    if let Some((k, n)) = parse::get_entry(entries, "fatigue") {
        out.fatigue = setting(r, n, |r, n| fatigue(r, k, n));
    }
    if let Some(n) = parse::get(entries, "max_lateness") {
        out.max_lateness = parse::duration(r, n, "`max_lateness`");
    }
    (r.error_count() == errors).then_some(out)
}

/// A key that defaults to none: `none` (or an empty value) switches it off, anything else
/// is read by `read`. A wrong value is reported and leaves the key unset.
fn setting<T>(
    r: &mut Report<'_>,
    node: &Node,
    read: impl FnOnce(&mut Report<'_>, &Node) -> Option<T>,
) -> Setting<T> {
    if node.is_null() || node.as_str() == Some("none") {
        return Setting::Off;
    }
    read(r, node).into()
}

fn channels(r: &mut Report<'_>, node: &Node) -> Option<Vec<String>> {
    let Some(items) = node.as_seq() else {
        r.error(
            node,
            codes::WRONG_TYPE,
            format!(
                "expected a list of channels for `channels`, such as [email, sms], found {}",
                node.kind_name()
            ),
        );
        return None;
    };
    if items.is_empty() {
        r.error(
            node,
            codes::INVALID_VALUE,
            "`channels` needs at least one channel".to_owned(),
        );
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let name = parse::name(r, item, "a channel")?;
        if out.contains(&name) {
            r.error(
                item,
                codes::INVALID_VALUE,
                format!("channel `{name}` is listed twice in `channels`"),
            );
        }
        out.push(name);
    }
    Some(out)
}

/// `{max: 3, per: 7d, channel: email}`; `channel` only where a cap may be per channel.
/// A missing key is reported at `at`, the key or list item that holds the cap.
fn cap(
    r: &mut Report<'_>,
    node: &Node,
    at: (Pos, u32),
    what: &str,
    channel_allowed: bool,
) -> Option<Cap> {
    let entries = parse::map(r, node, what)?;
    let allowed: &[&str] = if channel_allowed {
        &["max", "per", "channel"]
    } else {
        &["max", "per"]
    };
    parse::check_keys(r, entries, allowed, what);
    let max =
        parse::require(r, entries, "max", at, what).and_then(|n| parse::positive(r, n, "`max`"));
    let per =
        parse::require(r, entries, "per", at, what).and_then(|n| parse::duration(r, n, "`per`"));
    let channel = match parse::get(entries, "channel") {
        Some(n) if channel_allowed => Some(parse::name(r, n, "`channel`")?),
        _ => None,
    };
    Some(Cap {
        max: max?,
        per: per?,
        channel,
    })
}

fn fatigue(r: &mut Report<'_>, key: &Key, node: &Node) -> Option<Fatigue> {
    let entries = parse::map(r, node, "`fatigue`")?;
    parse::check_keys(r, entries, &["unopened", "cap"], "`fatigue`");
    let at = (key.pos, key.len);
    let unopened = parse::require(r, entries, "unopened", at, "`fatigue`")
        .and_then(|n| parse::positive(r, n, "`unopened`"));
    // Fatigue is judged per channel already, so its cap takes no `channel`.
    let cap_at = parse::get_entry(entries, "cap").map_or(at, |(k, _)| (k.pos, k.len));
    let cap = parse::require(r, entries, "cap", at, "`fatigue`")
        .and_then(|n| cap(r, n, cap_at, "`fatigue.cap`", false));
    Some(Fatigue {
        unopened: unopened?,
        cap: cap?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Policy, QuietHours};
    use chrono::{NaiveTime, TimeDelta};

    fn parse_str(src: &str) -> Result<PolicyOverride, Vec<Diagnostic>> {
        let file = Path::new("config.yaml");
        let node = crate::yaml::parse(src, file).unwrap();
        parse_policy(&node, file)
    }

    #[test]
    fn parses_every_key() {
        let p = parse_str(
            "timezone: Europe/Moscow\nchannels: [telegram, email]\nquiet_hours: \"21:00-09:00\"\n\
             frequency_cap: [{max: 3, per: 7d}, {max: 1, per: 1d, channel: sms}]\n\
             fatigue: {unopened: 3, cap: {max: 1, per: 7d}}\nmax_lateness: 2h\n",
        )
        .unwrap();
        assert_eq!(p.timezone, Some(chrono_tz::Tz::Europe__Moscow));
        assert_eq!(
            p.channels.as_deref(),
            Some(&["telegram".to_owned(), "email".to_owned()][..])
        );
        assert_eq!(p.quiet_hours, Setting::Set(nine_pm_to_nine_am()));
        let Setting::Set(caps) = p.frequency_caps else {
            panic!("{:?}", p.frequency_caps)
        };
        assert_eq!(caps.len(), 2);
        assert_eq!(caps[1].channel.as_deref(), Some("sms"));
        let Setting::Set(fatigue) = p.fatigue else {
            panic!("{:?}", p.fatigue)
        };
        assert_eq!(fatigue.cap.per, TimeDelta::days(7));
        assert_eq!(p.max_lateness, Some(TimeDelta::hours(2)));
    }

    #[test]
    fn a_single_cap_is_a_list_of_one() {
        let p = parse_str("frequency_cap: {max: 3, per: 7d}").unwrap();
        assert!(matches!(p.frequency_caps, Setting::Set(caps) if caps.len() == 1));
    }

    #[test]
    fn reports_all_problems() {
        let errors = parse_str(
            "timezone: Mars/Olympus\nquiet_hours: 21-9\nfrequency_cap: {max: 0, per: 1 week}\nfatige: {}\n",
        )
        .unwrap_err();
        let messages: Vec<&str> = errors.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(errors.len(), 5, "{messages:#?}");
        assert!(messages.iter().any(|m| m.contains("Mars/Olympus")));
        assert!(
            messages
                .iter()
                .any(|m| m.contains("did you mean `fatigue`"))
        );
        assert!(messages.iter().any(|m| m.contains("`1 week`")));
    }

    #[test]
    fn from_json() {
        let p = parse_policy_json(
            &serde_json::json!({"quiet_hours": "22:00-08:00"}),
            Path::new("<api>"),
        )
        .unwrap();
        assert!(matches!(p.quiet_hours, Setting::Set(_)));
    }

    fn nine_pm_to_nine_am() -> QuietHours {
        QuietHours {
            start: NaiveTime::from_hms_opt(21, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
        }
    }

    /// A daemon policy with every default-none key on.
    fn daemon_policy() -> Policy {
        Policy::default().with(
            &parse_str(
                "quiet_hours: \"21:00-09:00\"\nfrequency_cap: {max: 3, per: 7d}\n\
                 fatigue: {unopened: 3, cap: {max: 1, per: 7d}}\n",
            )
            .unwrap(),
        )
    }

    #[test]
    fn none_and_null_switch_keys_off() {
        for src in [
            "quiet_hours: none\nfrequency_cap: none\nfatigue: none\n",
            "quiet_hours: null\nfrequency_cap: ~\nfatigue:\n",
        ] {
            let p = parse_str(src).unwrap();
            assert_eq!(p.quiet_hours, Setting::Off, "{src}");
            assert_eq!(p.frequency_caps, Setting::Off, "{src}");
            assert_eq!(p.fatigue, Setting::Off, "{src}");
        }
        let p = parse_policy_json(
            &serde_json::json!({"quiet_hours": null, "fatigue": "none"}),
            Path::new("<api>"),
        )
        .unwrap();
        assert_eq!(p.quiet_hours, Setting::Off);
        assert_eq!(p.fatigue, Setting::Off);
        assert_eq!(p.frequency_caps, Setting::Unset);
    }

    #[test]
    fn off_wins_over_the_policy_below_and_unset_keeps_it() {
        let daemon = daemon_policy();
        assert_eq!(daemon.quiet_hours, Some(nine_pm_to_nine_am()));
        assert_eq!(daemon.frequency_caps.len(), 1);
        assert!(daemon.fatigue.is_some());

        let off = daemon.with(&parse_str("quiet_hours: none\nfatigue: null\n").unwrap());
        assert_eq!(off.quiet_hours, None);
        assert_eq!(off.fatigue, None);
        assert_eq!(off.frequency_caps, daemon.frequency_caps, "unset keeps");

        let off = daemon.with(&parse_str("frequency_cap: none").unwrap());
        assert!(off.frequency_caps.is_empty());
        assert_eq!(off.quiet_hours, daemon.quiet_hours, "unset keeps");

        let set = daemon.with(&parse_str("quiet_hours: \"22:00-08:00\"").unwrap());
        assert_eq!(
            set.quiet_hours.map(|q| q.start),
            NaiveTime::from_hms_opt(22, 0, 0)
        );
        assert_eq!(daemon.with(&PolicyOverride::default()), daemon);
    }

    #[test]
    fn other_words_are_still_refused() {
        let errors = parse_str("quiet_hours: off\nfatigue: None\n").unwrap_err();
        let messages: Vec<&str> = errors.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(errors.len(), 2, "{messages:#?}");
        assert!(messages[0].contains("or none"), "{messages:#?}");
    }
}
