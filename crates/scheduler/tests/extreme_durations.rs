//! Durations at the edge of what chrono can represent. The checker refuses anything past
//! a century, so these journeys are built behind its back: the engine must still never
//! panic on them, since in the daemon a panic takes every customer down with it.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use waymark_journey::{Cap, Fatigue, Policy, Reentry, StepKind, Workspace};
use waymark_scheduler::{ConventionalChannels, Effect, Engine, SendOutcome, SkipReason};

mod common;

use common::{ann, load, signed_up, t0};

/// `workspace` with its only journey changed by `edit`.
fn edited(mut workspace: Workspace, edit: impl FnOnce(&mut waymark_journey::Journey)) -> Workspace {
    let mut journey = (*workspace.journeys[0]).clone();
    edit(&mut journey);
    workspace.journeys[0] = Arc::new(journey);
    workspace
}

fn engine(workspace: Workspace, policy: Policy) -> Engine {
    Engine::new(workspace, policy, Arc::new(ConventionalChannels))
}

fn outcomes(effects: &[Effect]) -> Vec<SendOutcome> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Message(m) => Some(m.outcome),
            _ => None,
        })
        .collect()
}

#[test]
fn a_wait_past_the_end_of_time_never_fires() {
    let workspace = load(
        "id: j\ntrigger: {event: signed_up}\nsteps:\n  pause: {wait: 1h, next: hello}\n  hello: {send: email, template: hello}\n",
    );
    let workspace = edited(workspace, |j| {
        j.steps[0].kind = StepKind::Wait(TimeDelta::MAX)
    });
    let engine = engine(workspace, Policy::default());
    let mut state = ann();
    engine.on_event(&mut state, &signed_up(t0()), t0());
    assert_eq!(state.enrollments[0].wake, Some(DateTime::<Utc>::MAX_UTC));
    assert!(state.enrollments[0].is_active());
}

#[test]
fn a_wait_for_timeout_past_the_end_of_time_never_fires() {
    let workspace = load(
        "id: j\ntrigger: {event: signed_up}\nsteps:\n  answer:\n    wait_for: {event: replied, timeout: 1h}\n    on_event: hello\n    on_timeout: hello\n  hello: {send: email, template: hello}\n",
    );
    let workspace = edited(workspace, |j| {
        if let StepKind::WaitFor { timeout, .. } = &mut j.steps[0].kind {
            *timeout = Some(TimeDelta::MAX);
        }
    });
    let engine = engine(workspace, Policy::default());
    let mut state = ann();
    engine.on_event(&mut state, &signed_up(t0()), t0());
    assert_eq!(state.enrollments[0].wake, Some(DateTime::<Utc>::MAX_UTC));
}

const SEND: &str = "id: j\ntrigger: {event: signed_up}\nreentry: always\nsteps:\n  hello: {send: email, template: hello}\n";

/// What the sends of two entries a year apart came to under `policy`.
fn two_entries(workspace: Workspace, policy: Policy) -> Vec<SendOutcome> {
    let engine = engine(workspace, policy);
    let mut state = ann();
    let later = t0() + TimeDelta::days(365);
    let mut effects = engine.on_event(&mut state, &signed_up(t0()), t0());
    effects.extend(engine.on_event(&mut state, &signed_up(later), later));
    outcomes(&effects)
}

fn lifetime_cap() -> Cap {
    Cap {
        max: 1,
        per: TimeDelta::MAX,
        channel: None,
    }
}

#[test]
fn a_cap_over_all_of_time_counts_every_message() {
    let policy = Policy {
        frequency_caps: vec![lifetime_cap()],
        ..Policy::default()
    };
    assert_eq!(
        two_entries(load(SEND), policy),
        [
            SendOutcome::Sent,
            SendOutcome::Skipped(SkipReason::FrequencyCap)
        ]
    );
    let policy = Policy {
        fatigue: Some(Fatigue {
            unopened: 1,
            cap: lifetime_cap(),
        }),
        ..Policy::default()
    };
    assert_eq!(
        two_entries(load(SEND), policy),
        [SendOutcome::Sent, SendOutcome::Skipped(SkipReason::Fatigue)]
    );
}

#[test]
fn reentry_and_lateness_of_a_lifetime_do_not_panic() {
    let workspace = edited(load(SEND), |j| j.reentry = Reentry::After(TimeDelta::MAX));
    let policy = Policy {
        max_lateness: TimeDelta::MAX,
        ..Policy::default()
    };
    assert_eq!(two_entries(workspace, policy), [SendOutcome::Sent]);
}
