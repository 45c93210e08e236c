//! Engine benchmarks, printed as a table: `just bench` (or `cargo bench -p waymark-scenario`).
//!
//! 1. In-memory transitions per second: N customers (1M by default, `WAYMARK_BENCH_CUSTOMERS`
//!    to change) abandon a cart and are carried through the abandoned-cart journey to its end
//!    on a virtual clock.
//! 2. The time `waymark test` takes on the conformance suite.

use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value, json};
use waymark_journey::Policy;
use waymark_scheduler::{ConventionalChannels, Effect, Engine, Event, World};

fn main() {
    let conformance =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/journeys");
    let customers: usize = std::env::var("WAYMARK_BENCH_CUSTOMERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);

    let (workspace, _) = waymark_journey::load(&conformance)
        .unwrap_or_else(|e| panic!("conformance workspace: {e:?}"));
    let journey = workspace
        .journey("abandoned_cart")
        .expect("abandoned_cart journey")
        .clone();
    let alone = waymark_journey::Workspace {
        journeys: vec![journey],
        ..workspace.clone()
    };
    let start: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z")
        .unwrap()
        .to_utc();
    let mut world = World::new(
        Engine::new(
            alone,
            Policy::default(),
            std::sync::Arc::new(ConventionalChannels),
        ),
        start,
    );

    let traits: Map<String, Value> = json!({"email": "c@example.com", "phone": "+79001234567"})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let timer = Instant::now();
    for i in 0..customers {
        world.add_profile(&format!("c{i}"), traits.clone(), Vec::new());
    }
    let setup = timer.elapsed();

    let timer = Instant::now();
    let mut transitions = 0_u64;
    let mut messages = 0_u64;
    let mut count = |effects: &[Effect]| {
        for e in effects {
            match e {
                Effect::Transition { .. } => transitions += 1,
                Effect::Message(_) => messages += 1,
                _ => {}
            }
        }
    };
    for i in 0..customers {
        let at = start + TimeDelta::milliseconds(i as i64);
        let mut properties = Map::new();
        properties.insert(
            "total".to_owned(),
            Value::from(if i % 10 == 0 { 25_000 } else { 5_000 }),
        );
        let event = Event {
            name: "cart_abandoned".to_owned(),
            at,
            properties,
        };
        count(&world.track(&format!("c{i}"), &event, at));
    }
    while let Some(due) = world.next_due() {
        count(&world.run_due(due));
    }
    let run = timer.elapsed();
    assert_eq!(
        world.active_enrollments(),
        0,
        "every customer reaches the end"
    );

    let timer = Instant::now();
    let report = waymark_scenario::run_workspace(&conformance).expect("conformance suite runs");
    let suite = timer.elapsed();

    println!("| benchmark | figure |");
    println!("|---|---|");
    println!("| customers through abandoned_cart (in memory) | {customers} |");
    println!("| profiles created | {:.2} s |", setup.as_secs_f64());
    println!(
        "| transitions | {transitions} ({messages} messages) in {:.2} s |",
        run.as_secs_f64()
    );
    println!(
        "| transitions per second | {:.0} |",
        transitions as f64 / run.as_secs_f64()
    );
    println!(
        "| conformance suite (`waymark test`, {} passed, {} failed) | {:.1} ms |",
        report.passed(),
        report.failed(),
        suite.as_secs_f64() * 1e3
    );
}
