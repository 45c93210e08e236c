//! Readers for typed values out of [`Node`]s that report every problem, with its position,
//! instead of stopping at the first.
//!
//! Every reader returns `None` exactly when it has reported an error, so callers can
//! evaluate all fields of a mapping first (collecting every problem) and only then combine
//! them with `?`.

use std::path::Path;
use std::str::FromStr;

use chrono::{NaiveTime, TimeDelta};
use chrono_tz::Tz;

use crate::diagnostics::{Diagnostic, codes};
use crate::duration::parse_duration;
use crate::expr::Expr;
use crate::model::{Pos, QuietHours};
use crate::yaml::{Key, Node, NodeValue};

/// Collects the diagnostics of one file.
pub(crate) struct Report<'a> {
    pub file: &'a Path,
    pub diagnostics: &'a mut Vec<Diagnostic>,
}

impl Report<'_> {
    pub fn error_at(&mut self, pos: Pos, len: u32, code: &'static str, message: String) {
        self.diagnostics
            .push(Diagnostic::error(self.file, pos, code, message).with_len(len));
    }

    pub fn warning_at(&mut self, pos: Pos, len: u32, code: &'static str, message: String) {
        self.diagnostics
            .push(Diagnostic::warning(self.file, pos, code, message).with_len(len));
    }

    /// An error about a value.
    pub fn error(&mut self, node: &Node, code: &'static str, message: String) {
        self.error_at(node.pos, node.len, code, message);
    }

    /// An error about a key (an unknown key, a key not allowed here).
    pub fn error_key(&mut self, key: &Key, code: &'static str, message: String) {
        self.error_at(key.pos, key.len, code, message);
    }

    /// Whether an error with `code` was reported at `pos` in this file.
    pub fn has_error_at(&self, pos: Pos, code: &str) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.is_error() && d.pos == pos && d.code == code && d.file == self.file)
    }

    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

/// The closest of `candidates` to `word`, if close enough to be a likely typo.
pub(crate) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(distance, c)| *distance <= (c.chars().count() / 3).max(1) && *distance > 0)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// `; did you mean `x`?` or nothing.
pub(crate) fn suggestion<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> String {
    did_you_mean(word, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

/// The entries of a mapping, or an error naming what was expected.
pub(crate) fn map<'n>(r: &mut Report<'_>, node: &'n Node, what: &str) -> Option<&'n [(Key, Node)]> {
    match &node.value {
        NodeValue::Map(entries) => Some(entries),
        _ => {
            r.error(
                node,
                codes::WRONG_TYPE,
                format!("expected a mapping for {what}, found {}", node.kind_name()),
            );
            None
        }
    }
}

/// Reports every key of `entries` not in `allowed`, suggesting the closest allowed one.
pub(crate) fn check_keys(
    r: &mut Report<'_>,
    entries: &[(Key, Node)],
    allowed: &[&str],
    what: &str,
) {
    for (key, _) in entries {
        if !allowed.contains(&key.name.as_str()) {
            let hint = suggestion(&key.name, allowed.iter().copied());
            r.error_key(
                key,
                codes::UNKNOWN_KEY,
                format!("unknown key `{}` in {what}{hint}", key.name),
            );
        }
    }
}

/// An optional field's reading: `None` outside when the field is absent (fine), `Some(None)`
/// when it was present but wrong (reported).
pub(crate) trait OptionalField<T> {
    /// `Some(value)` for absent (`None`) or valid, `None` for present but invalid.
    fn field(self) -> Option<Option<T>>;
}

impl<T> OptionalField<T> for Option<Option<T>> {
    fn field(self) -> Option<Option<T>> {
        match self {
            None => Some(None),
            Some(inner) => inner.map(Some),
        }
    }
}

/// Looks `key` up in `entries`.
pub(crate) fn get<'n>(entries: &'n [(Key, Node)], key: &str) -> Option<&'n Node> {
    entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
}

/// Looks `key` up in `entries`, with its key.
pub(crate) fn get_entry<'n>(entries: &'n [(Key, Node)], key: &str) -> Option<&'n (Key, Node)> {
    entries.iter().find(|(k, _)| k.name == key)
}

/// The value under `key`, or an error at `at` saying it is missing.
///
/// A key already reported as unknown that looks like a misspelling of `key` (`evnt` for
/// `event`) explains the absence: the error there suggests `key`, and a second error
/// elsewhere would only lead the reader away from the typo. Callers check keys first.
pub(crate) fn require<'n>(
    r: &mut Report<'_>,
    entries: &'n [(Key, Node)],
    key: &str,
    at: (Pos, u32),
    what: &str,
) -> Option<&'n Node> {
    let found = get(entries, key);
    let misspelt = || {
        entries.iter().any(|(k, _)| {
            did_you_mean(&k.name, [key]).is_some() && r.has_error_at(k.pos, codes::UNKNOWN_KEY)
        })
    };
    if found.is_none() && !misspelt() {
        r.error_at(
            at.0,
            at.1,
            codes::MISSING_KEY,
            format!("missing `{key}` in {what}"),
        );
    }
    found
}

/// A scalar as text: names may be written as numbers or booleans too (`variant: 1`).
pub(crate) fn name(r: &mut Report<'_>, node: &Node, what: &str) -> Option<String> {
    match &node.value {
        NodeValue::Str(s, _) if !s.is_empty() => Some(s.clone()),
        NodeValue::Int(i) => Some(i.to_string()),
        NodeValue::Bool(b) => Some(b.to_string()),
        NodeValue::Float(f) => Some(f.to_string()),
        _ => {
            r.error(
                node,
                codes::WRONG_TYPE,
                format!("expected a name for {what}, found {}", node.kind_name()),
            );
            None
        }
    }
}

/// A string, as written.
pub(crate) fn string(r: &mut Report<'_>, node: &Node, what: &str) -> Option<String> {
    match &node.value {
        NodeValue::Str(s, _) => Some(s.clone()),
        _ => {
            r.error(
                node,
                codes::WRONG_TYPE,
                format!("expected a string for {what}, found {}", node.kind_name()),
            );
            None
        }
    }
}

pub(crate) fn boolean(r: &mut Report<'_>, node: &Node, what: &str) -> Option<bool> {
    match node.value {
        NodeValue::Bool(b) => Some(b),
        _ => {
            r.error(
                node,
                codes::WRONG_TYPE,
                format!(
                    "expected `true` or `false` for {what}, found {}",
                    node.kind_name()
                ),
            );
            None
        }
    }
}

/// A positive integer that fits `u32`.
pub(crate) fn positive(r: &mut Report<'_>, node: &Node, what: &str) -> Option<u32> {
    match node.value {
        NodeValue::Int(i) if i > 0 => u32::try_from(i).ok().or_else(|| {
            r.error(node, codes::INVALID_VALUE, format!("{what} is too large"));
            None
        }),
        _ => {
            let found = match node.value {
                NodeValue::Int(i) => i.to_string(),
                _ => node.kind_name().to_owned(),
            };
            r.error(
                node,
                codes::INVALID_VALUE,
                format!("{what} must be a positive integer, found {found}"),
            );
            None
        }
    }
}

/// A list of names; a single name is accepted as a list of one.
pub(crate) fn names(r: &mut Report<'_>, node: &Node, what: &str) -> Option<Vec<(String, Node)>> {
    match &node.value {
        NodeValue::Seq(items) => {
            let mut out = Vec::new();
            let mut ok = true;
            for item in items {
                match name(r, item, what) {
                    Some(n) => out.push((n, item.clone())),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        _ => name(r, node, what).map(|n| vec![(n, node.clone())]),
    }
}

/// A list, or a single item as a list of one.
pub(crate) fn one_or_many(node: &Node) -> &[Node] {
    match &node.value {
        NodeValue::Seq(items) => items,
        _ => std::slice::from_ref(node),
    }
}

pub(crate) fn duration(r: &mut Report<'_>, node: &Node, what: &str) -> Option<TimeDelta> {
    let text = match &node.value {
        NodeValue::Str(s, _) => s.clone(),
        // `wait: 10` is a common slip; say which unit is missing rather than "wrong type".
        NodeValue::Int(i) => i.to_string(),
        _ => {
            r.error(
                node,
                codes::WRONG_TYPE,
                format!(
                    "expected a duration such as 2h or 3d for {what}, found {}",
                    node.kind_name()
                ),
            );
            return None;
        }
    };
    parse_duration(&text)
        .map_err(|message| r.error(node, codes::INVALID_DURATION, message))
        .ok()
}

/// A duration that must be longer than zero: a zero-length `wait` or `timeout` would fire
/// at the instant it was set, so a loop through it would never let time pass.
pub(crate) fn positive_duration(r: &mut Report<'_>, node: &Node, what: &str) -> Option<TimeDelta> {
    let d = duration(r, node, what)?;
    if d <= TimeDelta::zero() {
        r.error(
            node,
            codes::INVALID_DURATION,
            format!("{what} must be longer than 0s"),
        );
        return None;
    }
    Some(d)
}

/// `HH:MM`, 24-hour.
pub(crate) fn parse_time_of_day(text: &str) -> Option<NaiveTime> {
    let (h, m) = text.split_once(':')?;
    let valid = |s: &str| (1..=2).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    if !valid(h) || m.len() != 2 || !valid(m) {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

pub(crate) fn time_of_day(r: &mut Report<'_>, node: &Node, what: &str) -> Option<NaiveTime> {
    let text = string(r, node, what)?;
    parse_time_of_day(&text).or_else(|| {
        r.error(
            node,
            codes::INVALID_TIME,
            format!("invalid time `{text}` for {what}: expected HH:MM, such as 09:30"),
        );
        None
    })
}

/// `"21:00-09:00"`.
pub(crate) fn quiet_hours(r: &mut Report<'_>, node: &Node) -> Option<QuietHours> {
    let text = string(r, node, "`quiet_hours`")?;
    let parsed = text.split_once('-').and_then(|(start, end)| {
        Some(QuietHours {
            start: parse_time_of_day(start.trim())?,
            end: parse_time_of_day(end.trim())?,
        })
    });
    if parsed.is_none() {
        r.error(
            node,
            codes::INVALID_TIME,
            format!(
                "invalid quiet hours `{text}`: expected HH:MM-HH:MM, such as 21:00-09:00, or none"
            ),
        );
    }
    parsed
}

pub(crate) fn timezone(r: &mut Report<'_>, node: &Node) -> Option<Tz> {
    let text = string(r, node, "a time zone")?;
    Tz::from_str(&text).ok().or_else(|| {
        r.error(
            node,
            codes::INVALID_TIMEZONE,
            format!(
                "unknown time zone `{text}`: expected an IANA name such as Europe/Moscow or UTC"
            ),
        );
        None
    })
}

/// Which segments exist, for checking `in_segment("...")` and segment triggers.
pub(crate) trait KnownSegments {
    fn has_segment(&self, name: &str) -> bool;
    fn segment_names(&self) -> Vec<&str>;
}

/// Compiles a CEL expression, pointing errors into it where possible, and checks that the
/// segments it names exist.
pub(crate) fn expr(
    r: &mut Report<'_>,
    node: &Node,
    segments: &dyn KnownSegments,
    what: &str,
) -> Option<Expr> {
    let source = match &node.value {
        NodeValue::Str(s, _) => s.clone(),
        // `where: true` is a fine, if odd, condition.
        NodeValue::Bool(b) => b.to_string(),
        _ => {
            r.error(
                node,
                codes::WRONG_TYPE,
                format!(
                    "expected an expression for {what}, found {}",
                    node.kind_name()
                ),
            );
            return None;
        }
    };
    let expr = match Expr::compile(&source, node.pos) {
        Ok(expr) => expr,
        Err(e) => {
            let pos = e.offset.map_or(node.pos, |offset| node.pos_at(offset));
            let len = if pos == node.pos { node.len } else { 1 };
            r.error_at(pos, len, codes::INVALID_EXPRESSION, e.message);
            return None;
        }
    };
    let mut ok = true;
    for segment in expr.segment_references() {
        if !segments.has_segment(&segment) {
            ok = false;
            let offset = ["\"", "'"]
                .iter()
                .find_map(|q| source.find(&format!("{q}{segment}{q}")))
                .map_or(0, |at| source[..at].chars().count() + 1);
            let hint = suggestion(&segment, segments.segment_names());
            r.error_at(
                node.pos_at(offset),
                u32::try_from(segment.chars().count()).unwrap_or(1),
                codes::UNKNOWN_SEGMENT,
                format!("unknown segment `{segment}` in {what}{hint}"),
            );
        }
    }
    ok.then_some(expr)
}

/// `[a-z0-9_]+`.
pub(crate) fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["send", "wait", "wait_for", "branch"];
        assert_eq!(did_you_mean("wiat", keys), Some("wait"));
        assert_eq!(did_you_mean("wait_fro", keys), Some("wait_for"));
        assert_eq!(did_you_mean("colour", keys), None);
    }

    #[test]
    fn times_of_day() {
        assert_eq!(
            parse_time_of_day("09:30"),
            NaiveTime::from_hms_opt(9, 30, 0)
        );
        assert_eq!(parse_time_of_day("9:05"), NaiveTime::from_hms_opt(9, 5, 0));
        for bad in ["24:00", "10:60", "10", "10:5", "ab:cd", "10:00:00"] {
            assert_eq!(parse_time_of_day(bad), None, "{bad}");
        }
    }
}
