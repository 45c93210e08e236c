//! One journey file, from YAML nodes to a [`Journey`], reporting every problem on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;

use crate::analysis;
use crate::diagnostics::codes;
use crate::model::{
    Audience, BackStep, BranchArm, ChannelChoice, CronSchedule, EventMatch, Journey, Outcome,
    Policy, PolicyOverride, Pos, Reentry, SendAt, SendStep, Step, StepIdx, StepKind, TraitValue,
    Trigger, Variant,
};
use crate::parse::{self, KnownSegments, OptionalField, Report};
use crate::policy;
use crate::template::Template;
use crate::yaml::{Key, Node, NodeValue};

const JOURNEY_KEYS: [&str; 12] = [
    "id",
    "name",
    "description",
    "trigger",
    "reentry",
    "goal",
    "exit",
    "holdout",
    "policy",
    "start",
    "steps",
    "on",
];

/// The kind keys of a step: each step has exactly one.
pub(crate) const STEP_KINDS: [&str; 7] = [
    "send", "wait", "wait_for", "branch", "split", "update", "exit",
];

/// The keys each kind of step allows besides its kind key.
fn step_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "send" => &[
            "template",
            "fallback",
            "transactional",
            "at",
            "next",
            "stage",
        ],
        // A wait-until's `timezone` may sit beside `wait`, as other steps' fields do, or
        // inside it; [`JourneyParser::wait`] refuses it on a plain duration.
        "wait" => &["timezone", "next", "stage"],
        "wait_for" => &["on_event", "on_timeout", "stage"],
        "branch" | "split" => &["stage"],
        _ => &["next", "stage"],
    }
}

/// Every key any step may have, for suggestions when a step's kind is unknown.
const ALL_STEP_KEYS: [&str; 14] = [
    "send",
    "wait",
    "wait_for",
    "branch",
    "split",
    "update",
    "exit",
    "template",
    "fallback",
    "transactional",
    "at",
    "timezone",
    "next",
    "stage",
];

/// What a journey may refer to outside its own file.
pub(crate) struct Env<'a> {
    pub segments: &'a dyn KnownSegments,
    /// Templates that loaded; a send's channels are checked against their parts.
    pub templates: &'a BTreeMap<String, Template>,
    /// Every template file, including those with errors (already reported there).
    pub template_names: &'a BTreeSet<String>,
}

/// What parsing a journey file yields, even when it has errors.
pub(crate) struct Parsed {
    pub journey: Option<Journey>,
    /// The `id`, with where it was written, for the duplicate check across files.
    pub id: Option<(String, Pos, u32)>,
    /// Templates the journey sends, for its version hash.
    pub templates: BTreeSet<String>,
}

/// A transition between steps and where it was written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edge {
    pub from: usize,
    pub to: usize,
    pub pos: Pos,
    pub len: u32,
}

/// The state of parsing one journey.
struct JourneyParser<'r, 'a, 'e> {
    r: &'r mut Report<'a>,
    env: &'e Env<'e>,
    /// Step ids in file order, with their keys.
    step_ids: Vec<String>,
    edges: Vec<Edge>,
    templates: BTreeSet<String>,
    /// The journey's channels for `send: preferred`.
    preferred_channels: Vec<String>,
}

pub(crate) fn parse_journey(
    r: &mut Report<'_>,
    root: &Node,
    env: &Env<'_>,
    source: &Path,
) -> Parsed {
    let mut parsed = Parsed {
        journey: None,
        id: None,
        templates: BTreeSet::new(),
    };
    if root.is_null() {
        r.error_at(
            Pos { line: 1, column: 1 },
            0,
            codes::MISSING_KEY,
            "empty journey file: expected `id`, `trigger` and `steps`".to_owned(),
        );
        return parsed;
    }
    let Some(entries) = parse::map(r, root, "a journey") else {
        return parsed;
    };
    let errors_before = r.error_count();
    parse::check_keys(r, entries, &JOURNEY_KEYS, "journey");
    let top = (root.pos, 0);

    let id = parse::require(r, entries, "id", top, "journey").and_then(|n| {
        let id = parse::name(r, n, "`id`")?;
        if !parse::is_id(&id) {
            r.error(
                n,
                codes::INVALID_ID,
                format!("invalid journey id `{id}`: use lowercase letters, digits and underscores"),
            );
        }
        parsed.id = Some((id.clone(), n.pos, n.len));
        Some(id)
    });
    let text = |r: &mut Report<'_>, key: &str| {
        parse::get(entries, key).and_then(|n| parse::string(r, n, &format!("`{key}`")))
    };
    let name = text(r, "name");
    let description = text(r, "description");

    let trigger =
        parse::require(r, entries, "trigger", top, "journey").and_then(|n| trigger(r, n, env));
    let reentry = match parse::get(entries, "reentry") {
        None => Some(Reentry::Never),
        Some(n) => reentry(r, n),
    };
    let goal = parse::get_entry(entries, "goal")
        .map(|(k, n)| event_match(r, n, (k.pos, k.len), "`goal`", env));
    let exits: Vec<Option<EventMatch>> = parse::get_entry(entries, "exit")
        .map(|(k, n)| match &n.value {
            NodeValue::Seq(items) => items
                .iter()
                .map(|item| event_match(r, item, (item.pos, 0), "`exit`", env))
                .collect(),
            _ => vec![event_match(r, n, (k.pos, k.len), "`exit`", env)],
        })
        .unwrap_or_default();
    let holdout = match parse::get(entries, "holdout") {
        None => Some(0),
        Some(n) => holdout(r, n),
    };
    let policy = match parse::get(entries, "policy") {
        None => Some(PolicyOverride::default()),
        Some(n) => policy::policy(r, n),
    };
    let preferred_channels = policy
        .as_ref()
        .and_then(|p| p.channels.clone())
        .unwrap_or_else(|| Policy::default().channels);

    let steps_node = parse::require(r, entries, "steps", top, "journey");
    let step_entries: &[(Key, Node)] = match steps_node {
        Some(n) => match &n.value {
            NodeValue::Map(steps) if !steps.is_empty() => steps,
            NodeValue::Map(_) | NodeValue::Null => {
                r.error(
                    n,
                    codes::MISSING_KEY,
                    "a journey needs at least one step under `steps`".to_owned(),
                );
                &[]
            }
            _ => {
                parse::map(r, n, "`steps`");
                &[]
            }
        },
        None => &[],
    };

    let mut p = JourneyParser {
        r,
        env,
        step_ids: step_entries.iter().map(|(k, _)| k.name.clone()).collect(),
        edges: Vec::new(),
        templates: BTreeSet::new(),
        preferred_channels,
    };
    let steps: Vec<Option<Step>> = step_entries
        .iter()
        .enumerate()
        .map(|(i, (key, node))| p.step(i, key, node))
        .collect();
    let start = match parse::get(entries, "start") {
        None => (!step_entries.is_empty()).then_some(StepIdx(0)),
        Some(n) => p.step_ref(n, "`start`"),
    };
    let on: Vec<Option<BackStep>> = parse::get(entries, "on")
        .map(|n| match &n.value {
            NodeValue::Seq(items) => items.iter().map(|item| p.back_step(item)).collect(),
            _ => vec![p.back_step(n)],
        })
        .unwrap_or_default();

    let waits: Vec<bool> = step_entries
        .iter()
        .map(|(_, node)| {
            node.as_map().is_some_and(|m| {
                m.iter()
                    .any(|(k, _)| k.name == "wait" || k.name == "wait_for")
            })
        })
        .collect();
    let step_keys: Vec<&Key> = step_entries.iter().map(|(k, _)| k).collect();
    analysis::report_instant_cycles(p.r, &step_keys, &waits, &p.edges);

    let JourneyParser {
        r,
        edges,
        templates,
        ..
    } = p;
    parsed.templates = templates;
    if r.error_count() != errors_before {
        return parsed;
    }
    let (Some(id), Some(trigger), Some(reentry), Some(holdout), Some(policy), Some(start)) =
        (id, trigger, reentry, holdout, policy, start)
    else {
        return parsed;
    };
    let (Some(steps), Some(exits), Some(on)) = (
        steps.into_iter().collect::<Option<Vec<_>>>(),
        exits.into_iter().collect::<Option<Vec<_>>>(),
        on.into_iter().collect::<Option<Vec<_>>>(),
    ) else {
        return parsed;
    };
    let goal = match goal {
        Some(None) => return parsed,
        Some(Some(g)) => Some(g),
        None => None,
    };
    let journey = Journey {
        id,
        name,
        description,
        source: source.to_path_buf(),
        version: String::new(),
        trigger,
        reentry,
        goal,
        exits,
        holdout,
        policy,
        start,
        steps,
        on,
    };
    analysis::report_unreachable_steps(r, &journey, &step_keys, &edges);
    parsed.journey = Some(journey);
    parsed
}

fn trigger(r: &mut Report<'_>, node: &Node, env: &Env<'_>) -> Option<Trigger> {
    let entries = parse::map(r, node, "`trigger`")?;
    parse::check_keys(
        r,
        entries,
        &[
            "event", "segment", "schedule", "api", "where", "key", "timezone", "audience",
        ],
        "`trigger`",
    );
    let kinds: Vec<&(Key, Node)> = entries
        .iter()
        .filter(|(k, _)| ["event", "segment", "schedule", "api"].contains(&k.name.as_str()))
        .collect();
    let Some((kind_key, kind_node)) = kinds.first().map(|e| (&e.0, &e.1)) else {
        r.error(
            node,
            codes::TRIGGER_SHAPE,
            "a trigger needs one of `event`, `segment`, `schedule` or `api`".to_owned(),
        );
        return None;
    };
    for (extra, _) in kinds.iter().skip(1).map(|e| (&e.0, &e.1)) {
        r.error_key(
            extra,
            codes::TRIGGER_SHAPE,
            format!(
                "a trigger has exactly one of `event`, `segment`, `schedule` or `api`; found both `{}` and `{}`",
                kind_key.name, extra.name
            ),
        );
    }
    let kind = kind_key.name.as_str();
    // Keys that only some kinds of trigger take.
    for (key, only_with) in [
        ("where", &["event", "schedule"][..]),
        ("key", &["event"][..]),
        ("timezone", &["schedule"][..]),
        ("audience", &["schedule"][..]),
    ] {
        if let Some((k, _)) = parse::get_entry(entries, key)
            && !only_with.contains(&kind)
        {
            let allowed = only_with
                .iter()
                .map(|w| format!("`{w}`"))
                .collect::<Vec<_>>()
                .join(" or ");
            r.error_key(
                k,
                codes::TRIGGER_SHAPE,
                format!("`{key}` is only allowed with an {allowed} trigger, not `{kind}`"),
            );
        }
    }
    let condition = |r: &mut Report<'_>| {
        parse::get(entries, "where").map(|n| parse::expr(r, n, env.segments, "`where`"))
    };
    match kind {
        "event" => {
            let event = parse::name(r, kind_node, "`event`");
            let condition = condition(r);
            let key = parse::get(entries, "key").map(|n| parse::name(r, n, "`key`"));
            Some(Trigger::Event {
                event: EventMatch {
                    event: event?,
                    condition: condition.field()?,
                    pos: kind_node.pos,
                },
                key: key.field()?,
            })
        }
        "segment" => {
            let segment = parse::name(r, kind_node, "`segment`")?;
            check_segment(r, kind_node, &segment, env)?;
            Some(Trigger::Segment { segment })
        }
        "schedule" => {
            let cron = parse::string(r, kind_node, "`schedule`")
                .and_then(|text| cron(r, kind_node, &text).map(|s| (text, s)));
            let timezone = match parse::get(entries, "timezone") {
                Some(n) => parse::timezone(r, n),
                None => Some(chrono_tz::Tz::UTC),
            };
            let audience_node = parse::get(entries, "audience");
            let where_node = parse::get(entries, "where");
            let audience = match (audience_node, where_node) {
                (Some(a), None) => parse::name(r, a, "`audience`").and_then(|name| {
                    check_segment(r, a, &name, env)?;
                    Some(Audience::Segment(name))
                }),
                (None, Some(_)) => condition(r).flatten().map(Audience::Where),
                (Some(a), Some(_)) => {
                    r.error(
                        a,
                        codes::TRIGGER_SHAPE,
                        "a schedule takes either `audience` or `where`, not both; put the segment in the condition with `in_segment(\"...\")`".to_owned(),
                    );
                    None
                }
                (None, None) => {
                    r.error(
                        kind_node,
                        codes::TRIGGER_SHAPE,
                        "a `schedule` trigger needs `audience: SEGMENT` or `where: CONDITION` to say who enters".to_owned(),
                    );
                    None
                }
            };
            let (cron, schedule) = cron?;
            Some(Trigger::Schedule {
                cron,
                schedule: Box::new(schedule),
                timezone: timezone?,
                audience: audience?,
            })
        }
        _ => match kind_node.value {
            NodeValue::Bool(true) => Some(Trigger::Api),
            _ => {
                r.error(
                    kind_node,
                    codes::TRIGGER_SHAPE,
                    "an API trigger is written `api: true`".to_owned(),
                );
                None
            }
        },
    }
}

fn check_segment(r: &mut Report<'_>, node: &Node, name: &str, env: &Env<'_>) -> Option<()> {
    if env.segments.has_segment(name) {
        return Some(());
    }
    let hint = parse::suggestion(name, env.segments.segment_names());
    r.error(
        node,
        codes::UNKNOWN_SEGMENT,
        format!("unknown segment `{name}`{hint}"),
    );
    None
}

/// A standard 5-field cron expression, turned into the `cron` crate's form (which has a
/// seconds field first and numbers weekdays from 1 = Sunday).
pub(crate) fn cron(r: &mut Report<'_>, node: &Node, text: &str) -> Option<CronSchedule> {
    match cron_schedule(text) {
        Ok(schedule) => Some(schedule),
        Err(why) => {
            r.error(
                node,
                codes::INVALID_CRON,
                format!("invalid cron schedule `{text}`: {why}"),
            );
            None
        }
    }
}

/// Parses a standard 5-field cron expression (minute hour day-of-month month day-of-week).
///
/// As in standard (Vixie) cron, when both day fields are restricted (neither starts with
/// `*`), a day matches if either does: `0 9 1 * 3` ticks on the 1st and on every
/// Wednesday.
///
/// # Errors
/// A human-readable reason.
pub fn cron_schedule(text: &str) -> Result<CronSchedule, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let &[minute, hour, day, month, weekday] = fields.as_slice() else {
        return Err(format!(
            "expected 5 fields (minute hour day month weekday), found {}",
            fields.len()
        ));
    };
    const FIELDS: [(&str, u32, u32); 4] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
    ];
    // The `cron` crate's own messages are multi-line and off by one; check ranges here.
    for (text, (field, min, max)) in fields.iter().zip(FIELDS) {
        for item in text.split(',') {
            // In `*/15` or `0-30/5` the number after `/` is a step, not a value.
            let values = item.split('/').next().unwrap_or_default();
            for digits in values.split('-').filter(|v| !v.is_empty()) {
                if !digits.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let value: u32 = digits.parse().unwrap_or(u32::MAX);
                if !(min..=max).contains(&value) {
                    return Err(format!("{field} `{digits}` is out of range {min}-{max}"));
                }
            }
        }
    }
    let weekdays = standard_weekdays(weekday)?;
    let schedule = |day: &str, weekdays: &str| {
        cron::Schedule::from_str(&format!("0 {minute} {hour} {day} {month} {weekdays}")).map_err(
            |e| {
                let message = e.to_string();
                let last = message.lines().rev().find(|l| !l.trim().is_empty());
                last.unwrap_or("not a cron expression").trim().to_owned()
            },
        )
    };
    // The expression as written is checked whole, so its errors read the same either way;
    // it runs as is (the crate requires both day fields) unless either day field is `*`.
    let both = schedule(day, &weekdays)?;
    let unrestricted = |field: &str| field.starts_with('*') || field == "?";
    if unrestricted(day) || unrestricted(weekday) {
        return Ok(CronSchedule::new(both, None));
    }
    Ok(CronSchedule::new(
        schedule(day, "*")?,
        Some(schedule("*", &weekdays)?),
    ))
}

/// Rewrites a standard weekday field (0-7, 0 and 7 = Sunday, names, ranges, steps) as an
/// explicit list of day names, which the `cron` crate reads the same way.
fn standard_weekdays(field: &str) -> Result<String, String> {
    const NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    if field == "*" || field == "?" {
        return Ok("*".to_owned());
    }
    let day = |s: &str| -> Result<usize, String> {
        if let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i);
        }
        match s.parse::<usize>() {
            Ok(n) if n <= 7 => Ok(n),
            _ => Err(format!("invalid weekday `{s}`: expected 0-7 or SUN-SAT")),
        }
    };
    let mut days = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (
                range,
                step.parse::<usize>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("invalid step `{step}` in weekday field"))?,
            ),
            None => (item, 1),
        };
        let (from, to) = match range {
            "*" => (0, 6),
            _ => match range.split_once('-') {
                Some((a, b)) => (day(a)?, day(b)?),
                None if step > 1 => (day(range)?, 6),
                None => (day(range)?, day(range)?),
            },
        };
        if from > to {
            return Err(format!("invalid weekday range `{range}`"));
        }
        for d in (from..=to).step_by(step) {
            days[d % 7] = true;
        }
    }
    Ok(NAMES
        .iter()
        .zip(days)
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(","))
}

fn reentry(r: &mut Report<'_>, node: &Node) -> Option<Reentry> {
    match node.as_str() {
        Some("never") => Some(Reentry::Never),
        Some("always") => Some(Reentry::Always),
        Some(text) if text.starts_with(|c: char| c.is_ascii_digit()) => {
            parse::duration(r, node, "`reentry`").map(Reentry::After)
        }
        _ => {
            let expected = "expected `never`, `always` or a duration such as 7d";
            let message = match node.as_str() {
                Some(s) => format!("invalid `reentry` `{s}`: {expected}"),
                None => format!("invalid `reentry`: {expected}, found {}", node.kind_name()),
            };
            r.error(node, codes::INVALID_VALUE, message);
            None
        }
    }
}

fn holdout(r: &mut Report<'_>, node: &Node) -> Option<u8> {
    match node.value {
        NodeValue::Int(p) if (0..=100).contains(&p) => u8::try_from(p).ok(),
        _ => {
            r.error(
                node,
                codes::INVALID_VALUE,
                "`holdout` is a percentage: an integer from 0 to 100".to_owned(),
            );
            None
        }
    }
}

/// `{event: NAME, where: EXPR}`, or just `NAME`; a missing `event` is reported at `at`,
/// the key or list item that holds the mapping.
fn event_match(
    r: &mut Report<'_>,
    node: &Node,
    at: (Pos, u32),
    what: &str,
    env: &Env<'_>,
) -> Option<EventMatch> {
    if !matches!(node.value, NodeValue::Map(_)) {
        let event = parse::name(r, node, what)?;
        return Some(EventMatch {
            event,
            condition: None,
            pos: node.pos,
        });
    }
    let entries = parse::map(r, node, what)?;
    parse::check_keys(r, entries, &["event", "where"], what);
    let event =
        parse::require(r, entries, "event", at, what).and_then(|n| parse::name(r, n, "`event`"));
    let condition =
        parse::get(entries, "where").map(|n| parse::expr(r, n, env.segments, "`where`"));
    Some(EventMatch {
        event: event?,
        condition: condition.field()?,
        pos: parse::get(entries, "event").map_or(node.pos, |n| n.pos),
    })
}

impl JourneyParser<'_, '_, '_> {
    /// Resolves a step name; `from` records the transition for the cycle and reachability
    /// checks.
    fn step_ref(&mut self, node: &Node, what: &str) -> Option<StepIdx> {
        let name = parse::name(self.r, node, what)?;
        match self.step_ids.iter().position(|s| *s == name) {
            Some(i) => Some(StepIdx(i)),
            None => {
                let hint = parse::suggestion(&name, self.step_ids.iter().map(String::as_str));
                self.r.error(
                    node,
                    codes::UNKNOWN_STEP,
                    format!("unknown step `{name}` in {what}{hint}"),
                );
                None
            }
        }
    }

    fn transition(&mut self, from: usize, node: &Node, what: &str) -> Option<StepIdx> {
        let to = self.step_ref(node, what)?;
        self.edges.push(Edge {
            from,
            to: to.0,
            pos: node.pos,
            len: node.len,
        });
        Some(to)
    }

    fn step(&mut self, index: usize, key: &Key, node: &Node) -> Option<Step> {
        let id = key.name.clone();
        let what = format!("step `{id}`");
        let entries = parse::map(self.r, node, &what)?;
        let kinds: Vec<&(Key, Node)> = entries
            .iter()
            .filter(|(k, _)| STEP_KINDS.contains(&k.name.as_str()))
            .collect();
        let Some((kind_key, kind_node)) = kinds.first().map(|e| (&e.0, &e.1)) else {
            let errors = self.r.error_count();
            parse::check_keys(self.r, entries, &ALL_STEP_KEYS, &what);
            // An unknown key (a misspelt kind, most likely) already explains it.
            if self.r.error_count() == errors {
                self.r.error_key(
                    key,
                    codes::STEP_KIND,
                    format!(
                        "{what} has no kind: add one of `send`, `wait`, `wait_for`, `branch`, `split`, `update` or `exit`"
                    ),
                );
            }
            return None;
        };
        for (extra, _) in kinds.iter().skip(1).map(|e| (&e.0, &e.1)) {
            self.r.error_key(
                extra,
                codes::STEP_KIND,
                format!(
                    "{what} has two kinds, `{}` and `{}`: a step does one thing; split it in two steps joined by `next`",
                    kind_key.name, extra.name
                ),
            );
        }
        let kind = kind_key.name.as_str();
        let fields = step_fields(kind);
        for (k, _) in entries {
            let name = k.name.as_str();
            if name == kind || fields.contains(&name) || STEP_KINDS.contains(&name) {
                continue;
            }
            if name == "next" {
                let instead = match kind {
                    "branch" => "each branch has its own `goto`",
                    "split" => "each variant has its own `goto`",
                    _ => "use `on_event` and `on_timeout`",
                };
                self.r.error_key(
                    k,
                    codes::NEXT_NOT_ALLOWED,
                    format!("`next` is not allowed on a `{kind}` step: {instead}"),
                );
                continue;
            }
            let hint = parse::suggestion(name, fields.iter().copied());
            self.r.error_key(
                k,
                codes::UNKNOWN_KEY,
                format!("unknown key `{name}` in {what} (a `{kind}` step){hint}"),
            );
        }

        let stage = parse::get(entries, "stage").map(|n| parse::name(self.r, n, "`stage`"));
        let next = match parse::get_entry(entries, "next") {
            Some((k, n)) if kind == "exit" => {
                // The language allows `next` on an exit, but the exit ends the journey all
                // the same: the step it names is checked, yet no transition leads there.
                if self.step_ref(n, &format!("`next` of {what}")).is_some() {
                    self.r.warning_at(
                        k.pos,
                        k.len,
                        codes::NEXT_IGNORED,
                        format!(
                            "`next` of {what} is never followed: an `exit` step ends the journey"
                        ),
                    );
                }
                None
            }
            Some((_, n)) if fields.contains(&"next") => {
                Some(self.transition(index, n, &format!("`next` of {what}")))
            }
            _ => None,
        };
        let kind = match kind {
            "send" => self.send(entries, kind_node, &what).map(StepKind::Send),
            "wait" => self.wait(entries, kind_key, kind_node, &what),
            "wait_for" => self.wait_for(index, entries, kind_key, kind_node, &what),
            "branch" => self.branch(index, kind_key, kind_node, &what),
            "split" => self.split(index, kind_node, &what),
            "update" => self.update(kind_key, kind_node, &what),
            _ => exit_outcome(self.r, kind_node),
        };
        Some(Step {
            id,
            pos: key.pos,
            stage: stage.field()?,
            kind: kind?,
            next: next.field()?,
        })
    }

    fn send(
        &mut self,
        entries: &[(Key, Node)],
        channel_node: &Node,
        what: &str,
    ) -> Option<SendStep> {
        let channel = parse::name(self.r, channel_node, "`send`").map(|c| {
            if c == "preferred" {
                ChannelChoice::Preferred
            } else {
                ChannelChoice::Named(c)
            }
        });
        let fallback = parse::get(entries, "fallback")
            .map(|n| parse::names(self.r, n, "`fallback`"))
            .unwrap_or(Some(Vec::new()));
        let transactional = parse::get(entries, "transactional")
            .map(|n| parse::boolean(self.r, n, "`transactional`"))
            .unwrap_or(Some(false));
        let at = match parse::get(entries, "at") {
            None => Some(SendAt::Now),
            Some(n) => match n.as_str() {
                Some("best_time") => Some(SendAt::BestTime),
                Some("now") => Some(SendAt::Now),
                _ => {
                    self.r.error(
                        n,
                        codes::INVALID_VALUE,
                        "invalid `at`: expected `best_time`".to_owned(),
                    );
                    None
                }
            },
        };
        let template_node =
            parse::require(self.r, entries, "template", (channel_pos(entries), 0), what);
        let template = template_node.and_then(|n| parse::name(self.r, n, "`template`"));
        let (channel, fallback, template, template_node, transactional, at) = (
            channel?,
            fallback?,
            template?,
            template_node?,
            transactional?,
            at?,
        );
        self.templates.insert(template.clone());
        if !self.env.template_names.contains(&template) {
            let hint = parse::suggestion(
                &template,
                self.env.template_names.iter().map(String::as_str),
            );
            self.r.error(
                template_node,
                codes::UNKNOWN_TEMPLATE,
                format!(
                    "unknown template `{template}`: there is no templates/{template}.yaml{hint}"
                ),
            );
            return None;
        }
        if let Some(t) = self.env.templates.get(&template) {
            // Each channel the send can reach, with where it is written when it is.
            let mut reachable: Vec<(&str, Option<&Node>)> = match &channel {
                ChannelChoice::Named(c) => vec![(c.as_str(), Some(channel_node))],
                ChannelChoice::Preferred => self
                    .preferred_channels
                    .iter()
                    .map(|c| (c.as_str(), None))
                    .collect(),
            };
            reachable.extend(fallback.iter().map(|(c, n)| (c.as_str(), Some(n))));
            let mut missing: Vec<&str> = Vec::new();
            let mut ok = true;
            for (c, written) in reachable {
                if t.has_part(c) || missing.contains(&c) {
                    continue;
                }
                // A name the language does not know may be a webhook the daemon defines,
                // but with no part for it in the template it is more likely a typo
                // (`emial`) or a channel that does not exist: point at the name rather than
                // at the template.
                match written.filter(|_| !crate::load::MESSENGERS.contains(&c)) {
                    Some(node) => {
                        let known = crate::load::MESSENGERS.iter().copied();
                        let hint = parse::suggestion(c, known.chain(["preferred"]));
                        self.r.error(
                            node,
                            codes::TEMPLATE_LACKS_CHANNEL,
                            format!(
                                "template `{template}` has no part for channel `{c}`, which {what} can send on{hint}"
                            ),
                        );
                        ok = false;
                    }
                    None => missing.push(c),
                }
            }
            if !missing.is_empty() {
                let list = missing
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let why = match &channel {
                    ChannelChoice::Preferred => {
                        " (`send: preferred` may use any channel of the policy's `channels`)"
                    }
                    ChannelChoice::Named(_) => "",
                };
                self.r.error(
                    template_node,
                    codes::TEMPLATE_LACKS_CHANNEL,
                    format!(
                        "template `{template}` has no part for channel {list}, which {what} can send on{why}"
                    ),
                );
                ok = false;
            }
            if !ok {
                return None;
            }
        }
        Some(SendStep {
            channel,
            template,
            fallback: fallback.into_iter().map(|(c, _)| c).collect(),
            transactional,
            at,
        })
    }

    /// `wait: DURATION`, or `wait: {until: "HH:MM"}` with an optional `timezone` inside it
    /// or beside it (`step` is the whole step's mapping).
    fn wait(
        &mut self,
        step: &[(Key, Node)],
        kind_key: &Key,
        node: &Node,
        what: &str,
    ) -> Option<StepKind> {
        let beside = parse::get_entry(step, "timezone");
        let Some(entries) = node.as_map() else {
            let wait = parse::positive_duration(self.r, node, "`wait`");
            if let Some((k, _)) = beside {
                self.r.error_key(
                    k,
                    codes::INVALID_VALUE,
                    format!(
                        "`timezone` in {what} needs a `wait: {{until: \"HH:MM\"}}`: a plain duration waits the same in every time zone"
                    ),
                );
                return None;
            }
            return wait.map(StepKind::Wait);
        };
        parse::check_keys(
            self.r,
            entries,
            &["until", "timezone"],
            &format!("`wait` of {what}"),
        );
        let time = parse::require(
            self.r,
            entries,
            "until",
            (kind_key.pos, kind_key.len),
            &format!("`wait` of {what}"),
        )
        .and_then(|n| parse::time_of_day(self.r, n, "`until`"));
        let inside = parse::get(entries, "timezone").map(|n| parse::timezone(self.r, n));
        let beside_tz = beside.map(|(_, n)| parse::timezone(self.r, n));
        let timezone = match (inside.field()?, beside_tz.field()?) {
            (Some(a), Some(b)) if a != b => {
                if let Some((k, _)) = beside {
                    self.r.error_key(
                        k,
                        codes::INVALID_VALUE,
                        format!(
                            "{what} has two time zones, `{a}` inside `wait` and `{b}` beside it: keep one"
                        ),
                    );
                }
                return None;
            }
            (a, b) => a.or(b),
        };
        Some(StepKind::WaitUntil {
            time: time?,
            timezone,
        })
    }

    fn wait_for(
        &mut self,
        index: usize,
        step: &[(Key, Node)],
        kind_key: &Key,
        node: &Node,
        what: &str,
    ) -> Option<StepKind> {
        let inner = format!("`wait_for` of {what}");
        let entries = parse::map(self.r, node, &inner)?;
        parse::check_keys(self.r, entries, &["event", "where", "timeout"], &inner);
        let event = parse::require(
            self.r,
            entries,
            "event",
            (kind_key.pos, kind_key.len),
            &inner,
        )
        .and_then(|n| parse::name(self.r, n, "`event`"));
        let condition = parse::get(entries, "where")
            .map(|n| parse::expr(self.r, n, self.env.segments, "`where`"));
        let timeout_node = parse::get(entries, "timeout");
        let timeout = timeout_node.map(|n| parse::positive_duration(self.r, n, "`timeout`"));
        let on_event = parse::require(self.r, step, "on_event", (kind_key.pos, kind_key.len), what)
            .and_then(|n| self.transition(index, n, &format!("`on_event` of {what}")));
        let on_timeout = match (timeout_node, parse::get_entry(step, "on_timeout")) {
            (Some(_), Some((_, n))) => self
                .transition(index, n, &format!("`on_timeout` of {what}"))
                .map(Some),
            (Some(t), None) => {
                self.r.error(
                    t,
                    codes::MISSING_KEY,
                    format!(
                        "missing `on_timeout` in {what}: say where to go when the `timeout` passes"
                    ),
                );
                None
            }
            (None, Some((k, _))) => {
                self.r.error_key(
                    k,
                    codes::INVALID_VALUE,
                    format!("`on_timeout` in {what} needs a `timeout` in its `wait_for`"),
                );
                None
            }
            (None, None) => Some(None),
        };
        Some(StepKind::WaitFor {
            event: EventMatch {
                event: event?,
                condition: condition.field()?,
                pos: node.pos,
            },
            timeout: timeout.field()?,
            on_event: on_event?,
            on_timeout: on_timeout?,
        })
    }

    fn branch(
        &mut self,
        index: usize,
        kind_key: &Key,
        node: &Node,
        what: &str,
    ) -> Option<StepKind> {
        let Some(items) = node.as_seq() else {
            self.r.error(
                node,
                codes::WRONG_TYPE,
                format!(
                    "expected a list of `- if: ... goto: ...` and a last `- else: STEP` for `branch` in {what}, found {}",
                    node.kind_name()
                ),
            );
            return None;
        };
        let mut arms = Vec::new();
        let mut otherwise = None;
        let mut saw_else = false;
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let Some(entries) = parse::map(self.r, item, &format!("a branch of {what}")) else {
                ok = false;
                continue;
            };
            if let Some((else_key, target)) = parse::get_entry(entries, "else") {
                saw_else = true;
                parse::check_keys(self.r, entries, &["else"], &format!("the `else` of {what}"));
                if i + 1 != items.len() {
                    self.r.error_key(
                        else_key,
                        codes::INVALID_VALUE,
                        format!("`else` must be the last branch of {what}"),
                    );
                    ok = false;
                }
                otherwise = self.transition(index, target, &format!("`else` of {what}"));
                ok &= otherwise.is_some();
                continue;
            }
            let where_ = format!("a branch of {what}");
            parse::check_keys(self.r, entries, &["if", "goto"], &where_);
            let condition = parse::require(self.r, entries, "if", (item.pos, 0), &where_)
                .and_then(|n| parse::expr(self.r, n, self.env.segments, "`if`"));
            let goto = parse::require(self.r, entries, "goto", (item.pos, 0), &where_)
                .and_then(|n| self.transition(index, n, &format!("`goto` of {what}")));
            match (condition, goto) {
                (Some(condition), Some(goto)) => arms.push(BranchArm { condition, goto }),
                _ => ok = false,
            }
        }
        if !saw_else {
            self.r.error_key(
                kind_key,
                codes::MISSING_KEY,
                format!("{what} needs a last `- else: STEP` for customers no condition matches"),
            );
            return None;
        }
        if arms.is_empty() && ok {
            self.r.error(
                node,
                codes::MISSING_KEY,
                format!("{what} needs at least one `- if: ... goto: ...` before its `else`"),
            );
            return None;
        }
        ok.then_some(StepKind::Branch {
            arms,
            otherwise: otherwise?,
        })
    }

    fn split(&mut self, index: usize, node: &Node, what: &str) -> Option<StepKind> {
        let Some(items) = node.as_seq().filter(|items| !items.is_empty()) else {
            self.r.error(
                node,
                codes::WRONG_TYPE,
                format!(
                    "expected a list of `- variant: NAME, weight: N, goto: STEP` for `split` in {what}"
                ),
            );
            return None;
        };
        let mut variants = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut ok = true;
        for item in items {
            let where_ = format!("a variant of {what}");
            let Some(entries) = parse::map(self.r, item, &where_) else {
                ok = false;
                continue;
            };
            parse::check_keys(self.r, entries, &["variant", "weight", "goto"], &where_);
            let at = (item.pos, 0);
            let name = parse::require(self.r, entries, "variant", at, &where_).and_then(|n| {
                let name = parse::name(self.r, n, "`variant`")?;
                if names.contains(&name) {
                    self.r.error(
                        n,
                        codes::DUPLICATE_ID,
                        format!("variant `{name}` appears twice in {what}"),
                    );
                    return None;
                }
                names.push(name.clone());
                Some(name)
            });
            let weight = parse::require(self.r, entries, "weight", at, &where_)
                .and_then(|n| parse::positive(self.r, n, "a split `weight`"));
            let goto = parse::require(self.r, entries, "goto", at, &where_)
                .and_then(|n| self.transition(index, n, &format!("`goto` of {what}")));
            match (name, weight, goto) {
                (Some(name), Some(weight), Some(goto)) => {
                    variants.push(Variant { name, weight, goto })
                }
                _ => ok = false,
            }
        }
        ok.then_some(StepKind::Split { variants })
    }

    fn update(&mut self, kind_key: &Key, node: &Node, what: &str) -> Option<StepKind> {
        let inner = format!("`update` of {what}");
        let entries = parse::map(self.r, node, &inner)?;
        parse::check_keys(self.r, entries, &["traits"], &inner);
        let at = (kind_key.pos, kind_key.len);
        let traits = parse::require(self.r, entries, "traits", at, &inner)?;
        let traits = parse::map(self.r, traits, "`traits`")?;
        let mut out = Vec::new();
        let mut ok = true;
        for (key, value) in traits {
            let value = match &value.value {
                NodeValue::Str(s, _) if s.starts_with('=') => {
                    // The expression starts one character into the string.
                    let shifted = Node {
                        pos: value.pos_at(1),
                        len: value.len.saturating_sub(1),
                        value: NodeValue::Str(s[1..].to_owned(), crate::yaml::Style::Plain),
                    };
                    parse::expr(
                        self.r,
                        &shifted,
                        self.env.segments,
                        &format!("trait `{}`", key.name),
                    )
                    .map(TraitValue::Computed)
                }
                _ => Some(TraitValue::Literal(value.to_json())),
            };
            match value {
                Some(v) => out.push((key.name.clone(), v)),
                None => ok = false,
            }
        }
        ok.then_some(StepKind::Update { traits: out })
    }

    fn back_step(&mut self, node: &Node) -> Option<BackStep> {
        let entries = parse::map(self.r, node, "an `on` entry")?;
        parse::check_keys(
            self.r,
            entries,
            &["event", "where", "from", "goto"],
            "an `on` entry",
        );
        let at = (node.pos, 0);
        let event = parse::require(self.r, entries, "event", at, "an `on` entry")
            .and_then(|n| parse::name(self.r, n, "`event`"));
        let condition = parse::get(entries, "where")
            .map(|n| parse::expr(self.r, n, self.env.segments, "`where`"));
        let from = parse::get(entries, "from").map(|n| {
            let steps: Vec<Option<StepIdx>> = parse::one_or_many(n)
                .iter()
                .map(|s| self.step_ref(s, "`from` of an `on` entry"))
                .collect();
            steps.into_iter().collect::<Option<Vec<_>>>()
        });
        let goto = parse::require(self.r, entries, "goto", at, "an `on` entry")
            .and_then(|n| self.step_ref(n, "`goto` of an `on` entry"));
        Some(BackStep {
            event: EventMatch {
                event: event?,
                condition: condition.field()?,
                pos: parse::get(entries, "event").map_or(node.pos, |n| n.pos),
            },
            from: from.field()?,
            goto: goto?,
        })
    }
}

fn channel_pos(entries: &[(Key, Node)]) -> Pos {
    parse::get_entry(entries, "send").map_or_else(Pos::default, |(k, _)| k.pos)
}

fn exit_outcome(r: &mut Report<'_>, node: &Node) -> Option<StepKind> {
    let outcome = match &node.value {
        NodeValue::Null => Some(Outcome::Completed),
        NodeValue::Str(s, _) => Outcome::parse(s).filter(|o| *o != Outcome::Failed),
        _ => None,
    };
    if outcome.is_none() {
        let expected = "expected `completed`, `converted` or `exited`";
        let message = match node.as_str() {
            Some(s) => format!("invalid exit outcome `{s}`: {expected}"),
            None => format!(
                "invalid exit outcome: {expected}, found {}",
                node.kind_name()
            ),
        };
        r.error(node, codes::INVALID_VALUE, message);
    }
    outcome.map(|outcome| StepKind::Exit { outcome })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekdays_follow_standard_cron() {
        assert_eq!(standard_weekdays("1-5").unwrap(), "MON,TUE,WED,THU,FRI");
        assert_eq!(standard_weekdays("0").unwrap(), "SUN");
        assert_eq!(standard_weekdays("7").unwrap(), "SUN");
        assert_eq!(standard_weekdays("5-7").unwrap(), "SUN,FRI,SAT");
        assert_eq!(standard_weekdays("*/2").unwrap(), "SUN,TUE,THU,SAT");
        assert_eq!(standard_weekdays("sat,sun").unwrap(), "SUN,SAT");
        assert!(standard_weekdays("8").is_err());
    }

    /// The ticks of `cron` in UTC strictly after `after`, as RFC 3339 texts.
    fn ticks(cron: &str, after: &str, n: usize) -> Vec<String> {
        let after = chrono::DateTime::parse_from_rfc3339(after)
            .unwrap()
            .with_timezone(&chrono::Utc);
        cron_schedule(cron)
            .unwrap()
            .after(&after)
            .take(n)
            .map(|t| t.format("%Y-%m-%d %H:%M %a").to_string())
            .collect()
    }

    #[test]
    fn restricted_day_fields_match_either_as_in_standard_cron() {
        // 2026-03-01 is a Sunday; the 4th and 11th are Wednesdays.
        assert_eq!(
            ticks("0 9 1 * 3", "2026-02-28T00:00:00Z", 4),
            [
                "2026-03-01 09:00 Sun",
                "2026-03-04 09:00 Wed",
                "2026-03-11 09:00 Wed",
                "2026-03-18 09:00 Wed",
            ]
        );
        // A day that matches both ticks once: 2026-04-01 is a Wednesday.
        assert_eq!(
            ticks("0 9 1 * 3", "2026-03-26T00:00:00Z", 2),
            ["2026-04-01 09:00 Wed", "2026-04-08 09:00 Wed"]
        );
        // 0 and 7 are both Sunday in the weekday half too.
        assert_eq!(
            ticks("30 6 15 * 7", "2026-03-09T00:00:00Z", 3),
            [
                "2026-03-15 06:30 Sun",
                "2026-03-22 06:30 Sun",
                "2026-03-29 06:30 Sun",
            ]
        );
        // Impossible days of the month leave the weekdays.
        assert_eq!(
            ticks("0 0 30 2 1", "2026-01-01T00:00:00Z", 2),
            ["2026-02-02 00:00 Mon", "2026-02-09 00:00 Mon"]
        );
    }

    #[test]
    fn a_starred_day_field_leaves_the_other_alone() {
        assert_eq!(
            ticks("0 9 * * 3", "2026-02-28T00:00:00Z", 2),
            ["2026-03-04 09:00 Wed", "2026-03-11 09:00 Wed"]
        );
        assert_eq!(
            ticks("0 9 1 * *", "2026-02-28T00:00:00Z", 2),
            ["2026-03-01 09:00 Sun", "2026-04-01 09:00 Wed"]
        );
        // As in Vixie cron, a field starting with `*` (a step over every day) does not count
        // as restricted: both must match, so only odd-numbered Mondays.
        assert_eq!(
            ticks("0 9 */2 * 1", "2026-02-28T00:00:00Z", 2),
            ["2026-03-09 09:00 Mon", "2026-03-23 09:00 Mon"]
        );
    }

    /// Loads a workspace of one journey file (and a `hello` email template): the journey
    /// if it is valid, and every diagnostic as `CODE LINE:COLUMN MESSAGE`.
    fn load_journey(text: &str) -> (Option<Journey>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        std::fs::write(
            dir.path().join("templates/hello.yaml"),
            "email:\n  subject: Hi\n  text: Hello\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("j.yaml"), text).unwrap();
        let (journey, diagnostics) = match crate::load(dir.path()) {
            Ok((w, d)) => (Some((*w.journeys[0]).clone()), d),
            Err(d) => (None, d),
        };
        let lines = diagnostics
            .iter()
            .map(|d| format!("{} {}:{} {}", d.code, d.pos.line, d.pos.column, d.message))
            .collect();
        (journey, lines)
    }

    #[test]
    fn next_on_an_exit_is_accepted_and_never_followed() {
        let (journey, diagnostics) = load_journey(
            "id: j\ntrigger: {event: x}\nsteps:\n  a:\n    exit: converted\n    next: b\n  b:\n    send: email\n    template: hello\n    next: a\n",
        );
        let journey = journey.expect("a `next` on an exit is no error");
        assert!(journey.steps[0].next.is_none());
        assert!(matches!(
            journey.steps[0].kind,
            StepKind::Exit {
                outcome: Outcome::Converted
            }
        ));
        // `b` is reached only through the exit's `next`, which is never followed; and
        // `a -> b -> a` is no instant cycle, since the exit ends the journey.
        assert_eq!(
            diagnostics,
            [
                "W0002 6:5 `next` of step `a` is never followed: an `exit` step ends the journey",
                "W0001 7:3 step `b` is unreachable: no path from the start step `a` leads to it",
            ]
        );
    }

    #[test]
    fn next_on_an_exit_must_name_a_step() {
        let (journey, diagnostics) = load_journey(
            "id: j\ntrigger: {event: x}\nsteps:\n  a:\n    exit:\n    next: nowhere\n",
        );
        assert!(journey.is_none());
        assert_eq!(
            diagnostics,
            ["E0010 6:11 unknown step `nowhere` in `next` of step `a`"]
        );
    }

    #[test]
    fn next_stays_refused_where_a_step_picks_its_own_way() {
        let (_, diagnostics) = load_journey(
            "id: j\ntrigger: {event: x}\nsteps:\n  a:\n    branch:\n      - if: profile.vip\n        goto: b\n      - else: b\n    next: b\n  b:\n    exit:\n",
        );
        assert_eq!(
            diagnostics,
            ["E0009 9:5 `next` is not allowed on a `branch` step: each branch has its own `goto`"]
        );
    }

    fn wait_until_zone(journey: &Journey) -> Option<chrono_tz::Tz> {
        match journey.steps[0].kind {
            StepKind::WaitUntil { timezone, .. } => timezone,
            ref other => panic!("expected a wait-until, found {other:?}"),
        }
    }

    #[test]
    fn a_wait_until_takes_its_timezone_beside_or_inside_wait() {
        let step = |wait: &str| {
            format!(
                "id: j\ntrigger: {{event: x}}\nsteps:\n  a:\n{wait}    next: b\n  b:\n    exit:\n"
            )
        };
        for wait in [
            "    wait: {until: \"09:30\"}\n    timezone: Asia/Tokyo\n",
            "    timezone: Asia/Tokyo\n    wait:\n      until: \"09:30\"\n",
            "    wait: {until: \"09:30\", timezone: Asia/Tokyo}\n",
            "    wait: {until: \"09:30\", timezone: Asia/Tokyo}\n    timezone: Asia/Tokyo\n",
        ] {
            let (journey, diagnostics) = load_journey(&step(wait));
            assert_eq!(diagnostics, Vec::<String>::new(), "{wait}");
            assert_eq!(
                wait_until_zone(&journey.unwrap()),
                Some(chrono_tz::Asia::Tokyo),
                "{wait}"
            );
        }
        let (journey, _) = load_journey(&step("    wait: {until: \"09:30\"}\n"));
        assert_eq!(wait_until_zone(&journey.unwrap()), None);
    }

    #[test]
    fn a_timezone_beside_wait_is_checked() {
        let (journey, diagnostics) = load_journey(
            "id: j\ntrigger: {event: x}\nsteps:\n  a:\n    wait: {until: \"09:30\"}\n    timezone: Mars/Olympus\n    next: b\n  b:\n    wait: 1h\n    timezone: Europe/Moscow\n    next: c\n  c:\n    wait: {until: \"09:30\", timezone: Asia/Tokyo}\n    timezone: Europe/Moscow\n",
        );
        assert!(journey.is_none());
        assert_eq!(diagnostics.len(), 3, "{diagnostics:#?}");
        assert!(
            diagnostics[0].starts_with("E0016 6:15 ") && diagnostics[0].contains("Mars/Olympus"),
            "{diagnostics:#?}"
        );
        assert_eq!(
            diagnostics[1],
            "E0018 10:5 `timezone` in step `b` needs a `wait: {until: \"HH:MM\"}`: a plain duration waits the same in every time zone"
        );
        assert_eq!(
            diagnostics[2],
            "E0018 14:5 step `c` has two time zones, `Asia/Tokyo` inside `wait` and `Europe/Moscow` beside it: keep one"
        );
    }

    #[test]
    fn cron_needs_exactly_five_valid_fields() {
        assert!(cron_schedule("0 10 * * *").is_ok());
        assert!(cron_schedule("30 9 * * 1-5").is_ok());
        assert!(cron_schedule("0 0 10 * * *").is_err());
        assert!(cron_schedule("61 10 * * *").is_err());
        assert!(cron_schedule("@daily").is_err());
    }
}
