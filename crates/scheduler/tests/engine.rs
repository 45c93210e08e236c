//! Engine behaviour that scenario files cannot show: timers fired late after downtime,
//! the runaway-step guard, journeys edited while customers are in them.

use std::sync::Arc;

use chrono::TimeDelta;
use serde_json::{Map, Value, json};
use waymark_journey::{Outcome, Policy, StepKind, TraitValue, Workspace};
use waymark_scheduler::{
    ConventionalChannels, CustomerState, Effect, Engine, Event, SendOutcome, SkipReason,
};

mod common;

use common::{ann, load, signed_up, t0};

fn engine(workspace: Workspace) -> Engine {
    Engine::new(workspace, Policy::default(), Arc::new(ConventionalChannels))
}

fn messages(effects: &[Effect]) -> Vec<(String, SendOutcome)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Message(m) => Some((m.template.clone(), m.outcome)),
            _ => None,
        })
        .collect()
}

const WAIT_THEN_SEND: &str = "id: drip\ntrigger: {event: signed_up}\nsteps:\n  pause: {wait: 1h, next: hello}\n  hello: {send: email, template: hello}\n";

#[test]
fn a_send_due_longer_ago_than_max_lateness_is_skipped_as_expired() {
    let engine = engine(load(WAIT_THEN_SEND));
    for (late, expected) in [
        (TimeDelta::hours(23), SendOutcome::Sent),
        (
            TimeDelta::hours(25),
            SendOutcome::Skipped(SkipReason::Expired),
        ),
    ] {
        let mut state = ann();
        engine.on_event(&mut state, &signed_up(t0()), t0());
        let (due, id) = state
            .next_wake()
            .map(|(at, id)| (at, id.to_owned()))
            .unwrap();
        assert_eq!(due, t0() + TimeDelta::hours(1));
        let effects = engine.on_timer(&mut state, &id, due + late);
        assert_eq!(messages(&effects), vec![("hello".to_owned(), expected)]);
        assert_eq!(state.enrollments[0].outcome(), Some(Outcome::Completed));
    }
}

#[test]
fn a_timer_fired_early_or_twice_does_nothing() {
    let engine = engine(load(WAIT_THEN_SEND));
    let mut state = ann();
    engine.on_event(&mut state, &signed_up(t0()), t0());
    let id = state.enrollments[0].id.clone();
    assert!(
        engine
            .on_timer(&mut state, &id, t0() + TimeDelta::minutes(59))
            .is_empty()
    );
    assert_eq!(
        messages(&engine.on_timer(&mut state, &id, t0() + TimeDelta::hours(1))).len(),
        1
    );
    assert!(
        engine
            .on_timer(&mut state, &id, t0() + TimeDelta::hours(1))
            .is_empty()
    );
}

#[test]
fn more_than_a_hundred_steps_without_a_wait_fail_the_enrollment() {
    let mut workspace = load(
        "id: loop\ntrigger: {event: signed_up}\nsteps:\n  ping: {update: {traits: {n: 1}}, next: pong}\n  pong: {wait: 1h, next: ping}\n",
    );
    // The checker refuses an instant cycle; build one behind its back to test the guard.
    let mut journey = (*workspace.journeys[0]).clone();
    journey.steps[1].kind = StepKind::Update {
        traits: vec![("m".to_owned(), TraitValue::Literal(Value::from(2)))],
    };
    workspace.journeys[0] = Arc::new(journey);
    let engine = engine(workspace);
    let mut state = ann();
    let effects = engine.on_event(&mut state, &signed_up(t0()), t0());
    let transitions = effects
        .iter()
        .filter(|e| matches!(e, Effect::Transition { .. }))
        .count();
    assert_eq!(transitions, waymark_scheduler::MAX_INSTANT_STEPS);
    assert_eq!(state.enrollments[0].outcome(), Some(Outcome::Failed));
}

#[test]
fn an_edited_journey_leaves_enrolled_customers_on_their_version() {
    let v1 = load(WAIT_THEN_SEND);
    let v2 = load(
        "id: drip\ntrigger: {event: signed_up}\nsteps:\n  pause: {wait: 1h, next: hello}\n  hello: {send: email, template: bye}\n",
    );
    assert_ne!(v1.journeys[0].version, v2.journeys[0].version);
    let mut engine = engine(v1);
    let mut old = ann();
    engine.on_event(&mut old, &signed_up(t0()), t0());
    engine.reload(v2);
    let mut new = CustomerState::new("bob");
    new.profile.traits = json!({"email": "bob@example.com"})
        .as_object()
        .cloned()
        .unwrap();
    engine.on_event(&mut new, &signed_up(t0()), t0());
    let due = t0() + TimeDelta::hours(1);
    let old_id = old.enrollments[0].id.clone();
    let new_id = new.enrollments[0].id.clone();
    assert_eq!(
        messages(&engine.on_timer(&mut old, &old_id, due)),
        vec![("hello".to_owned(), SendOutcome::Sent)]
    );
    assert_eq!(
        messages(&engine.on_timer(&mut new, &new_id, due)),
        vec![("bye".to_owned(), SendOutcome::Sent)]
    );
}

#[test]
fn identify_sets_and_removes_traits_and_templates_see_them() {
    let engine = engine(load(WAIT_THEN_SEND));
    let mut state = ann();
    engine.on_event(&mut state, &signed_up(t0()), t0());
    let traits = json!({"first_name": "Анна", "email": null})
        .as_object()
        .cloned()
        .unwrap();
    engine.on_identify(&mut state, &traits, t0());
    assert!(!state.profile.traits.contains_key("email"));
    engine.on_identify(
        &mut state,
        &json!({"email": "anna@example.com"})
            .as_object()
            .cloned()
            .unwrap(),
        t0(),
    );
    let id = state.enrollments[0].id.clone();
    let effects = engine.on_timer(&mut state, &id, t0() + TimeDelta::hours(1));
    let Some(Effect::Message(m)) = effects.iter().find(|e| matches!(e, Effect::Message(_))) else {
        panic!("a message: {effects:?}")
    };
    assert_eq!(m.address.as_deref(), Some("anna@example.com"));
    assert_eq!(
        m.content.get("text").map(String::as_str),
        Some("Hello Анна")
    );
}

#[test]
fn merging_a_profile_already_in_the_journey_exits_the_merged_enrollment() {
    let engine = engine(load(WAIT_THEN_SEND));
    let mut ann = ann();
    let mut anon = CustomerState::new("anon-1");
    engine.on_event(&mut ann, &signed_up(t0()), t0());
    engine.on_event(&mut anon, &signed_up(t0()), t0());
    let effects = engine.merge(&mut ann, anon, t0() + TimeDelta::minutes(5));
    assert!(effects.iter().any(|e| matches!(e, Effect::Ended { enrollment, outcome: Outcome::Exited, .. } if enrollment == "anon-1:1")));
    assert_eq!(ann.enrollments.iter().filter(|e| e.is_active()).count(), 1);
    assert_eq!(ann.profile.history.len(), 2);
}

#[test]
fn best_time_does_not_count_the_triggering_event_handled_a_moment_after_it_happened() {
    let engine = engine(load(
        "id: menu\ntrigger: {event: menu_updated}\nsteps:\n  offer: {send: email, template: hello, at: best_time}\n",
    ));
    let mut state = ann();
    state
        .profile
        .traits
        .insert("timezone".to_owned(), Value::from("Europe/Moscow"));
    // One earlier order at 15:xx Moscow time.
    let earlier = Event {
        name: "order_completed".to_owned(),
        at: t0() - TimeDelta::days(3) + TimeDelta::hours(2),
        properties: Map::new(),
    };
    engine.on_event(&mut state, &earlier, earlier.at);
    // The menu update happened at 13:00 Moscow time and reaches the daemon a second later.
    // Counted, it would tie 13:00 with 15:00 (earliest wins: send at once); it must not count.
    let update = Event {
        name: "menu_updated".to_owned(),
        at: t0(),
        properties: Map::new(),
    };
    let effects = engine.on_event(&mut state, &update, t0() + TimeDelta::seconds(1));
    assert!(
        messages(&effects).is_empty(),
        "deferred, not sent at once: {effects:?}"
    );
    let enrollment = state
        .enrollments
        .iter()
        .find(|e| e.journey == "menu")
        .unwrap();
    assert_eq!(enrollment.wake, Some(t0() + TimeDelta::hours(2)));
}
