//! Plays one case on a virtual clock and compares what happened with what was expected.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use waymark_journey::{Policy, Trigger, Workspace, format_duration};
use waymark_scheduler::{ConventionalChannels, Effect, Engine, Event, Message, SendOutcome, World};

use crate::spec::{Case, ExpectedSend, ExpectedSkip};

/// With no `until`, the clock stops once no timer is due within this long.
const HORIZON: TimeDelta = TimeDelta::days(400);

/// The result of one case: `Ok` or the lines that explain the failure.
pub type Verdict = Result<(), Vec<String>>;

/// Runs `case` against the journey `journey_id` of `workspace` alone, under `policy`.
pub fn run_case(workspace: &Workspace, journey_id: &str, policy: &Policy, case: &Case) -> Verdict {
    let Some(journey) = workspace.journey(journey_id) else {
        return Err(vec![format!("no journey `{journey_id}` in the workspace")]);
    };
    if matches!(journey.trigger, Trigger::Schedule { .. }) && case.until.is_none() {
        return Err(vec![format!(
            "journey `{journey_id}` has a schedule trigger: the case needs `until:`"
        )]);
    }
    let alone = Workspace {
        journeys: vec![journey.clone()],
        ..workspace.clone()
    };
    let engine = Engine::new(alone, policy.clone(), Arc::new(ConventionalChannels));
    let start = case.start;
    let until = case.until.map(|u| u.resolve(start));
    let mut world = World::new(engine, start);

    let default_user = match case.profiles.as_slice() {
        [only] => Some(only.id.clone()),
        _ => None,
    };
    for p in &case.profiles {
        let history = p
            .history
            .iter()
            .map(|h| Event {
                name: h.event.clone(),
                at: h.at,
                properties: h.properties.clone(),
            })
            .collect();
        world.add_profile(&p.id, p.traits.clone(), history);
    }

    let mut steps: Vec<_> = case
        .events
        .iter()
        .map(|s| (s.at.resolve(start), s))
        .collect();
    steps.sort_by_key(|(at, _)| *at);
    let mut effects = Vec::new();
    let mut problems = Vec::new();
    // Enrollments an alias ended because the profile they joined was in the journey
    // already: the customer goes on in that one, so `outcomes` looks past these.
    let mut clashed: HashSet<String> = HashSet::new();
    let mut clock = start;
    for (at, step) in steps {
        if until.is_some_and(|u| at > u) {
            break;
        }
        // Timers due before this event fire first; those due at its instant fire after it.
        while let Some(due) = world.next_due().filter(|d| *d < at) {
            effects.extend(world.run_due(due));
        }
        clock = clock.max(at);
        let Some(user) = step.user.clone().or_else(|| default_user.clone()) else {
            problems.push(format!(
                "event at {} names no `user` and the case has several profiles",
                show_time(at, start)
            ));
            continue;
        };
        match (&step.event, &step.identify, &step.alias, &step.enroll) {
            (Some(name), None, None, None) => {
                let event = Event {
                    name: name.clone(),
                    at,
                    properties: step.properties.clone(),
                };
                effects.extend(world.track(&user, &event, at));
            }
            (None, Some(traits), None, None) => effects.extend(world.identify(&user, traits, at)),
            (None, None, Some(previous), None) => {
                let joining: HashSet<String> = world
                    .customer(previous)
                    .filter(|other| other.profile.id != world.resolve(&user))
                    .map(|other| other.enrollments.iter().map(|e| e.id.clone()).collect())
                    .unwrap_or_default();
                let merged = world.alias(&user, previous, at);
                clashed.extend(merged.iter().filter_map(|e| match e {
                    Effect::Ended { enrollment, .. } if joining.contains(enrollment) => {
                        Some(enrollment.clone())
                    }
                    _ => None,
                }));
                effects.extend(merged);
            }
            (None, None, None, Some(properties)) => {
                match world.enroll(&user, journey_id, properties, at) {
                    Ok(e) => effects.extend(e),
                    Err(e) => problems.push(format!("enroll at {}: {e}", show_time(at, start))),
                }
            }
            _ => problems.push(format!(
                "the input at {} must have exactly one of `event`, `identify`, `alias`, `enroll`",
                show_time(at, start)
            )),
        }
    }
    while let Some(due) = world.next_due() {
        match until {
            Some(u) if due > u => break,
            Some(_) => {}
            None if world.active_enrollments() == 0 || due - clock > HORIZON => break,
            None => {}
        }
        effects.extend(world.run_due(due));
        clock = due;
    }

    // A message keeps the id it was sent to; an expectation may name the customer by any
    // of their ids. Both sides are compared as the profile the id ended up in.
    let messages: Vec<Record<'_>> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Message(m) => Some(m),
            _ => None,
        })
        .map(|message| Record {
            message,
            owner: world.resolve(&message.customer),
        })
        .collect();
    let resolve_user = |user: &Option<String>| {
        user.clone()
            .or_else(|| default_user.clone())
            .map(|u| world.resolve(&u))
    };
    if let Some(expected) = &case.expect.sends {
        let sent: Vec<&Record<'_>> = messages
            .iter()
            .filter(|r| r.message.outcome == SendOutcome::Sent)
            .collect();
        compare(
            "messages",
            expected,
            &sent,
            |e, r| send_matches(e, r, start, resolve_user(&e.user).as_deref()),
            |e| show_expected_send(e, start),
            |r| show_message(r, start),
            &mut problems,
        );
    }
    if let Some(expected) = &case.expect.skipped {
        let skipped: Vec<&Record<'_>> = messages
            .iter()
            .filter(|r| matches!(r.message.outcome, SendOutcome::Skipped(_)))
            .collect();
        let mut diff = Vec::new();
        compare(
            "skipped sends",
            expected,
            &skipped,
            |e, r| skip_matches(e, r, start, resolve_user(&e.user).as_deref()),
            |e| show_expected_skip(e, start),
            |r| show_message(r, start),
            &mut diff,
        );
        // Skips not listed are allowed; only the listed ones must have happened. When one
        // did not, the unlisted ones stay in the diff: a skip with another reason than
        // the one expected shows there.
        if diff.iter().any(|l| l.starts_with("  - ")) {
            problems.extend(diff);
        }
    }
    for (user, expected) in &case.expect.outcomes {
        let actual = world
            .customer(user)
            .and_then(|c| {
                let mut latest = c
                    .enrollments
                    .iter()
                    .rev()
                    .filter(|e| e.journey == journey_id);
                latest
                    .clone()
                    .find(|e| !clashed.contains(&e.id))
                    .or_else(|| latest.next())
            })
            .map_or("not enrolled", |e| {
                e.outcome().map_or("active", |o| o.as_str())
            });
        if actual != expected {
            problems.push(format!(
                "outcome of {user}: expected {expected}, got {actual}"
            ));
        }
    }
    for (user, traits) in &case.expect.traits {
        let actual = world.customer(user).map(|c| &c.profile.traits);
        for (key, want) in traits {
            let got = actual.and_then(|t| t.get(key));
            if !got.is_some_and(|g| same_value(g, want)) {
                let got = got.map_or_else(|| "nothing".to_owned(), Value::to_string);
                problems.push(format!("trait {user}.{key}: expected {want}, got {got}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A message as the test compares it.
struct Record<'a> {
    message: &'a Message,
    /// The profile the message's customer id ended up in, after every alias of the case.
    owner: String,
}

/// Pairs expectations with actual records; reports a timeline of both with `-` for a
/// missing expectation and `+` for an unexpected record.
///
/// The pairing is a maximum matching, not first-come: an expectation that fits several
/// records (`{at: +0s, channel: email}`) must not take the only one a later, narrower
/// expectation fits, since the order of sends at one instant is not part of the contract.
fn compare<E, A: Copy>(
    what: &str,
    expected: &[E],
    actual: &[A],
    matches: impl Fn(&E, A) -> bool,
    show_expected: impl Fn(&E) -> (DateTime<Utc>, String),
    show_actual: impl Fn(A) -> (DateTime<Utc>, String),
    problems: &mut Vec<String>,
) {
    let fits: Vec<Vec<usize>> = expected
        .iter()
        .map(|e| {
            (0..actual.len())
                .filter(|&i| matches(e, actual[i]))
                .collect()
        })
        .collect();
    let partner = max_matching(&fits, actual.len());
    let mut taken = vec![false; actual.len()];
    let mut lines: Vec<(DateTime<Utc>, char, String)> = Vec::new();
    let mut ok = true;
    for (e, paired) in expected.iter().zip(&partner) {
        match *paired {
            Some(i) => {
                taken[i] = true;
                let (at, text) = show_actual(actual[i]);
                lines.push((at, ' ', text));
            }
            None => {
                ok = false;
                let (at, text) = show_expected(e);
                lines.push((at, '-', text));
            }
        }
    }
    for (i, a) in actual.iter().enumerate() {
        if !taken[i] {
            ok = false;
            let (at, text) = show_actual(*a);
            lines.push((at, '+', text));
        }
    }
    if ok {
        return;
    }
    lines.sort_by_key(|(at, _, _)| *at);
    problems.push(format!(
        "{what} differ (- expected but missing, + happened but not expected):"
    ));
    problems.extend(
        lines
            .into_iter()
            .map(|(_, mark, text)| format!("  {mark} {text}")),
    );
}

/// A maximum bipartite matching by augmenting paths (Kuhn): `fits[e]` lists the records
/// expectation `e` fits, in order; returns each expectation's record. Expectations are
/// served in order and take the first free record they fit when that suffices, so a diff
/// pairs things as a reader would; sizes are a case's sends, so the cubic bound is moot.
fn max_matching(fits: &[Vec<usize>], records: usize) -> Vec<Option<usize>> {
    fn augment(
        e: usize,
        fits: &[Vec<usize>],
        owner: &mut [Option<usize>],
        seen: &mut [bool],
    ) -> bool {
        for &r in &fits[e] {
            if seen[r] {
                continue;
            }
            seen[r] = true;
            if owner[r].is_none_or(|other| augment(other, fits, owner, seen)) {
                owner[r] = Some(e);
                return true;
            }
        }
        false
    }
    let mut owner: Vec<Option<usize>> = vec![None; records];
    for e in 0..fits.len() {
        let mut seen = vec![false; records];
        augment(e, fits, &mut owner, &mut seen);
    }
    let mut partner = vec![None; fits.len()];
    for (r, e) in owner.iter().enumerate() {
        if let Some(e) = e {
            partner[*e] = Some(r);
        }
    }
    partner
}

fn send_matches(
    e: &ExpectedSend,
    r: &Record<'_>,
    start: DateTime<Utc>,
    user: Option<&str>,
) -> bool {
    let m = r.message;
    e.at.resolve(start) == m.at
        && user.is_none_or(|u| u == r.owner)
        && e.channel
            .as_ref()
            .is_none_or(|c| Some(c) == m.channel.as_ref())
        && e.template.as_ref().is_none_or(|t| *t == m.template)
        && e.to
            .as_ref()
            .is_none_or(|to| Some(&to.0) == m.address.as_ref())
        && e.variant
            .as_ref()
            .is_none_or(|v| Some(v) == m.variant.as_ref())
        && e.contains
            .as_ref()
            .is_none_or(|text| m.content.values().any(|body| body.contains(&text.0)))
}

fn skip_matches(
    e: &ExpectedSkip,
    r: &Record<'_>,
    start: DateTime<Utc>,
    user: Option<&str>,
) -> bool {
    let m = r.message;
    let SendOutcome::Skipped(reason) = m.outcome else {
        return false;
    };
    e.at.resolve(start) == m.at
        && user.is_none_or(|u| u == r.owner)
        && e.channel
            .as_ref()
            .is_none_or(|c| Some(c) == m.channel.as_ref())
        && e.template.as_ref().is_none_or(|t| *t == m.template)
        && e.reason == reason.as_str()
}

fn show_time(at: DateTime<Utc>, start: DateTime<Utc>) -> String {
    let offset = at - start;
    let sign = if offset < TimeDelta::zero() { "-" } else { "+" };
    format!(
        "{} ({sign}{})",
        at.format("%Y-%m-%dT%H:%M:%SZ"),
        format_duration(offset.abs())
    )
}

fn show_message(r: &Record<'_>, start: DateTime<Utc>) -> (DateTime<Utc>, String) {
    let m = r.message;
    let customer = if r.owner == m.customer {
        m.customer.clone()
    } else {
        format!("{} (now {})", m.customer, r.owner)
    };
    let mut text = format!(
        "{}  {}  {}  {}",
        show_time(m.at, start),
        customer,
        m.channel.as_deref().unwrap_or("-"),
        m.template
    );
    if let Some(to) = &m.address {
        text.push_str(&format!("  to {to}"));
    }
    if let Some(v) = &m.variant {
        text.push_str(&format!("  variant {v}"));
    }
    if let SendOutcome::Skipped(reason) = m.outcome {
        text.push_str(&format!("  skipped: {}", reason.as_str()));
    }
    if let Some(body) = m
        .content
        .get("text")
        .or_else(|| m.content.get("body"))
        .or_else(|| m.content.get("html"))
    {
        // One line per message: the body's own line breaks would break the timeline.
        let short: String = body
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(60)
            .collect();
        text.push_str(&format!("  \"{short}\""));
    }
    (m.at, text)
}

fn show_expected_send(e: &ExpectedSend, start: DateTime<Utc>) -> (DateTime<Utc>, String) {
    let at = e.at.resolve(start);
    let mut text = format!(
        "{}  {}  {}  {}",
        show_time(at, start),
        e.user.as_deref().unwrap_or("*"),
        e.channel.as_deref().unwrap_or("*"),
        e.template.as_deref().unwrap_or("*")
    );
    if let Some(to) = &e.to {
        text.push_str(&format!("  to {}", to.0));
    }
    if let Some(v) = &e.variant {
        text.push_str(&format!("  variant {v}"));
    }
    if let Some(c) = &e.contains {
        text.push_str(&format!("  containing \"{}\"", c.0));
    }
    (at, text)
}

fn show_expected_skip(e: &ExpectedSkip, start: DateTime<Utc>) -> (DateTime<Utc>, String) {
    let at = e.at.resolve(start);
    let text = format!(
        "{}  {}  {}  {}  skipped: {}",
        show_time(at, start),
        e.user.as_deref().unwrap_or("*"),
        e.channel.as_deref().unwrap_or("*"),
        e.template.as_deref().unwrap_or("*"),
        e.reason
    );
    (at, text)
}

/// Equality that treats `500` and `500.0` as the same number.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}
