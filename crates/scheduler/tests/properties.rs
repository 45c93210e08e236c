//! Properties of the engine over generated journeys and event streams: it never panics,
//! never sends after a goal or exit, never leaves a customer active with nothing to wake
//! them, and gives the same outputs for the same inputs.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use waymark_journey::template::parse_liquid;
use waymark_journey::{
    BranchArm, ChannelChoice, EventMatch, Expr, Journey, Policy, PolicyOverride, Pos, Reentry,
    SendAt, SendStep, Step, StepIdx, StepKind, Template, TraitValue, Trigger, Variant, Workspace,
};
use waymark_scheduler::{ConventionalChannels, Effect, Engine, Event, SendOutcome, World};

const EVENTS: [&str; 4] = [
    "signed_up",
    "order_completed",
    "products_compared",
    "order_shipped",
];

#[derive(Debug, Clone)]
enum Kind {
    Send {
        preferred: bool,
        transactional: bool,
    },
    Wait(i64),
    WaitFor {
        event: usize,
        timeout: i64,
        on_event: usize,
    },
    Branch(usize),
    Split(usize),
    Update,
    Exit,
}

#[derive(Debug, Clone)]
struct GenStep {
    kind: Kind,
    next: Option<usize>,
}

fn gen_step() -> impl Strategy<Value = GenStep> {
    let kind = prop_oneof![
        (any::<bool>(), any::<bool>()).prop_map(|(preferred, transactional)| Kind::Send {
            preferred,
            transactional
        }),
        (1_i64..72).prop_map(Kind::Wait),
        (0..EVENTS.len(), 1_i64..96, 0_usize..8).prop_map(|(event, timeout, on_event)| {
            Kind::WaitFor {
                event,
                timeout,
                on_event,
            }
        }),
        (0_usize..8).prop_map(Kind::Branch),
        (0_usize..8).prop_map(Kind::Split),
        Just(Kind::Update),
        Just(Kind::Exit),
    ];
    (kind, proptest::option::of(0_usize..8)).prop_map(|(kind, next)| GenStep { kind, next })
}

fn expr(source: &str) -> Expr {
    Expr::compile(source, Pos::default()).expect("test expressions compile")
}

fn build_journey(
    steps: &[GenStep],
    goal: Option<usize>,
    back: Option<(usize, usize)>,
    quiet: bool,
) -> Journey {
    let n = steps.len();
    let idx = |i: usize| StepIdx(i % n);
    let built = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (kind, next) = match &s.kind {
                Kind::Send {
                    preferred,
                    transactional,
                } => (
                    StepKind::Send(SendStep {
                        channel: if *preferred {
                            ChannelChoice::Preferred
                        } else {
                            ChannelChoice::Named("sms".to_owned())
                        },
                        template: "hello".to_owned(),
                        fallback: vec!["email".to_owned()],
                        transactional: *transactional,
                        at: if i % 3 == 0 {
                            SendAt::BestTime
                        } else {
                            SendAt::Now
                        },
                    }),
                    s.next.map(idx),
                ),
                Kind::Wait(h) => (StepKind::Wait(TimeDelta::hours(*h)), s.next.map(idx)),
                Kind::WaitFor {
                    event,
                    timeout,
                    on_event,
                } => (
                    StepKind::WaitFor {
                        event: EventMatch {
                            event: EVENTS[*event].to_owned(),
                            condition: None,
                            pos: Pos::default(),
                        },
                        timeout: Some(TimeDelta::hours(*timeout)),
                        on_event: idx(*on_event),
                        on_timeout: Some(idx(s.next.unwrap_or(i + 1))),
                    },
                    None,
                ),
                Kind::Branch(to) => (
                    StepKind::Branch {
                        arms: vec![BranchArm {
                            condition: expr(
                                "event.total > 100 || count(\"order_completed\", \"7d\") >= 2",
                            ),
                            goto: idx(*to),
                        }],
                        otherwise: idx(s.next.unwrap_or(i + 1)),
                    },
                    None,
                ),
                Kind::Split(to) => (
                    StepKind::Split {
                        variants: vec![
                            Variant {
                                name: "a".to_owned(),
                                weight: 1,
                                goto: idx(*to),
                            },
                            Variant {
                                name: "b".to_owned(),
                                weight: 2,
                                goto: idx(s.next.unwrap_or(i + 1)),
                            },
                        ],
                    },
                    None,
                ),
                Kind::Update => (
                    StepKind::Update {
                        traits: vec![(
                            "visits".to_owned(),
                            TraitValue::Computed(expr("profile.visits + 1")),
                        )],
                    },
                    s.next.map(idx),
                ),
                Kind::Exit => (
                    StepKind::Exit {
                        outcome: waymark_journey::Outcome::Exited,
                    },
                    None,
                ),
            };
            Step {
                id: format!("s{i}"),
                pos: Pos::default(),
                stage: None,
                kind,
                next,
            }
        })
        .collect();
    Journey {
        id: "generated".to_owned(),
        name: None,
        description: None,
        source: PathBuf::from("generated.yaml"),
        version: "v1".to_owned(),
        trigger: Trigger::Event {
            event: EventMatch {
                event: "signed_up".to_owned(),
                condition: None,
                pos: Pos::default(),
            },
            key: None,
        },
        reentry: Reentry::Always,
        goal: goal.map(|g| EventMatch {
            event: EVENTS[g].to_owned(),
            condition: None,
            pos: Pos::default(),
        }),
        exits: Vec::new(),
        holdout: 20,
        policy: PolicyOverride {
            quiet_hours: quiet
                .then(|| waymark_journey::QuietHours {
                    start: chrono::NaiveTime::from_hms_opt(21, 0, 0).unwrap(),
                    end: chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
                })
                .into(),
            frequency_caps: waymark_journey::Setting::Set(vec![waymark_journey::Cap {
                max: 3,
                per: TimeDelta::days(1),
                channel: None,
            }]),
            ..PolicyOverride::default()
        },
        start: StepIdx(0),
        steps: built,
        on: back
            .map(|(event, to)| waymark_journey::BackStep {
                event: EventMatch {
                    event: EVENTS[event].to_owned(),
                    condition: None,
                    pos: Pos::default(),
                },
                from: None,
                goto: idx(to),
            })
            .into_iter()
            .collect(),
    }
}

fn workspace(journey: Journey) -> Workspace {
    let part = |fields: &[(&str, &str)]| -> BTreeMap<String, waymark_journey::template::Liquid> {
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), parse_liquid(v).unwrap()))
            .collect()
    };
    let template = Template {
        name: "hello".to_owned(),
        parts: BTreeMap::from([
            (
                "email".to_owned(),
                part(&[
                    ("subject", "Hi {{ profile.name }}"),
                    ("text", "Total {{ trigger.total }}"),
                ]),
            ),
            ("sms".to_owned(), part(&[("text", "Hi {{ event.total }}")])),
        ]),
    };
    Workspace {
        root: PathBuf::from("."),
        journeys: vec![Arc::new(journey)],
        segments: Arc::default(),
        templates: Arc::new(BTreeMap::from([("hello".to_owned(), template)])),
    }
}

#[derive(Debug, Clone)]
struct Input {
    minutes: i64,
    user: usize,
    event: usize,
    total: i64,
}

fn gen_input() -> impl Strategy<Value = Input> {
    (
        0_i64..(60 * 24 * 20),
        0_usize..4,
        0..EVENTS.len(),
        0_i64..300,
    )
        .prop_map(|(minutes, user, event, total)| Input {
            minutes,
            user,
            event,
            total,
        })
}

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z")
        .unwrap()
        .to_utc()
}

/// Plays the inputs in time order (events before timers at the same instant), then runs
/// timers until none is due within 60 days. Returns every effect, and the world.
fn play(journey: &Journey, inputs: &[Input]) -> (Vec<Effect>, World) {
    let engine = Engine::new(
        workspace(journey.clone()),
        Policy::default(),
        Arc::new(ConventionalChannels),
    );
    let mut world = World::new(engine, start());
    let users = ["ann", "bob", "eva", "max"];
    let traits: [Value; 4] = [
        json!({"email": "ann@example.com", "phone": "+79001234567", "visits": 0}),
        json!({"email": "bob@example.com", "timezone": "Asia/Vladivostok"}),
        json!({"phone": "+79007654321", "unsubscribed": ["sms"], "preferred_channel": "sms"}),
        json!({}),
    ];
    for (id, t) in users.iter().zip(traits) {
        world.add_profile(id, t.as_object().cloned().unwrap_or_default(), Vec::new());
    }
    let mut inputs = inputs.to_vec();
    inputs.sort_by_key(|i| i.minutes);
    let mut effects = Vec::new();
    for input in &inputs {
        let at = start() + TimeDelta::minutes(input.minutes);
        while let Some(due) = world.next_due().filter(|d| *d < at) {
            effects.extend(world.run_due(due));
        }
        let mut properties = Map::new();
        properties.insert("total".to_owned(), Value::from(input.total));
        let event = Event {
            name: EVENTS[input.event].to_owned(),
            at,
            properties,
        };
        effects.extend(world.track(users[input.user], &event, at));
    }
    let horizon = start() + TimeDelta::days(60);
    while let Some(due) = world.next_due().filter(|d| *d <= horizon) {
        effects.extend(world.run_due(due));
    }
    (effects, world)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn journeys_behave(
        steps in proptest::collection::vec(gen_step(), 1..8),
        goal in proptest::option::of(0..EVENTS.len()),
        back in proptest::option::of((0..EVENTS.len(), 0_usize..8)),
        quiet in any::<bool>(),
        inputs in proptest::collection::vec(gen_input(), 0..25),
    ) {
        let journey = build_journey(&steps, goal, back, quiet);
        let (effects, world) = play(&journey, &inputs);

        // Never a send after the enrollment ended (goal, exit, completion).
        let mut ended = HashSet::new();
        for effect in &effects {
            match effect {
                Effect::Ended { enrollment, .. } => { ended.insert(enrollment.clone()); }
                Effect::Message(m) => prop_assert!(!ended.contains(&m.enrollment), "message after end: {m:?}"),
                _ => {}
            }
        }
        // Holdout customers are never handed to a channel.
        for customer in world.customers() {
            for e in customer.enrollments.iter().filter(|e| e.control) {
                prop_assert!(!effects.iter().any(|f| matches!(f, Effect::Message(m) if m.enrollment == e.id && m.outcome == SendOutcome::Sent)));
            }
        }
        // Never active with nothing to wake them: every generated wait_for has a timeout,
        // so an active enrollment always has a timer.
        for customer in world.customers() {
            for e in customer.enrollments.iter().filter(|e| e.is_active()) {
                prop_assert!(e.wake.is_some(), "active without a timer: {e:?}");
            }
        }
        // Same inputs, same outputs.
        let (again, _) = play(&journey, &inputs);
        prop_assert_eq!(effects, again);
    }
}
