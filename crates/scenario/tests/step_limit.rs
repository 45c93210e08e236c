//! Spec 4: "at run time more than 100 steps without a wait fail the enrollment". A journey
//! that long is unreadable as a fixture, so this test writes the workspace: chains of
//! `update` steps, each adding 1 to the trait `n`, ended by each kind of step that waits
//! (and by one that does not). The step that waits is where the run stops and is not one
//! of the 100; `n` tells how many updates ran.

use std::fmt::Write as _;
use std::path::PathBuf;

const LIMIT: usize = waymark_scheduler::MAX_INSTANT_STEPS;

/// A journey entered on `go`: `updates` update steps, then `tail` (YAML steps, the first
/// of them named `tail`), then a `hello` email.
fn chain(id: &str, updates: usize, tail: &str, policy: &str) -> String {
    let mut yaml = format!("id: {id}\ntrigger: {{event: go}}\n{policy}steps:\n");
    for i in 1..=updates {
        let next = if i == updates {
            "tail".to_owned()
        } else {
            format!("u{}", i + 1)
        };
        let _ = writeln!(
            yaml,
            "  u{i}: {{update: {{traits: {{n: \"=profile.n + 1\"}}}}, next: {next}}}"
        );
    }
    yaml.push_str(tail);
    yaml.push_str("  hello: {send: email, template: hello}\n");
    yaml
}

/// A test file for `journey`: ann enters at 10:00 UTC and the case expects `expect`.
fn test_file(journey: &str, name: &str, expect: &str) -> String {
    format!(
        "journey: {journey}\ncases:\n  - name: {name}\n    start: 2026-03-02T10:00:00Z\n    profiles:\n      - {{id: ann, traits: {{email: ann@example.com, n: 0}}}}\n    events:\n      - {{at: +0s, event: go}}\n    expect:\n{expect}"
    )
}

fn workspace() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("step_limit");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("templates")).unwrap();
    std::fs::create_dir_all(root.join("tests")).unwrap();
    std::fs::write(
        root.join("templates/hello.yaml"),
        "email:\n  subject: Hello\n  text: Hello.\n",
    )
    .unwrap();
    let wait = "  tail: {wait: 1h, next: hello}\n";
    let wait_until = "  tail: {wait: {until: \"12:00\", timezone: UTC}, next: hello}\n";
    let wait_for = "  tail:\n    wait_for: {event: done, timeout: 1h}\n    on_event: hello\n    on_timeout: hello\n";
    let send = "  tail: {send: email, template: hello}\n";
    let quiet = "policy: {quiet_hours: \"09:00-11:00\"}\n";
    let ok = |at: &str| {
        format!(
            "      sends: [{{at: \"{at}\", template: hello}}]\n      outcomes: {{ann: completed}}\n      traits: {{ann: {{n: {LIMIT}}}}}\n"
        )
    };
    let failed = format!(
        "      sends: []\n      outcomes: {{ann: failed}}\n      traits: {{ann: {{n: {LIMIT}}}}}\n"
    );
    let cases = [
        ("wait", LIMIT, wait, "", ok("+1h")),
        ("wait_until", LIMIT, wait_until, "", ok("+2h")),
        ("wait_for", LIMIT, wait_for, "", ok("+1h")),
        // A send deferred by quiet hours waits; one that goes out at once is a step.
        ("deferred_send", LIMIT, send, quiet, ok("+1h")),
        ("send_now", LIMIT, send, "", failed.clone()),
        ("one_more_then_wait", LIMIT + 1, wait, "", failed.clone()),
        ("one_more_then_wait_for", LIMIT + 1, wait_for, "", failed),
    ];
    for (id, updates, tail, policy, expect) in cases {
        let journey = format!("chain_{id}");
        std::fs::write(
            root.join(format!("{journey}.yaml")),
            chain(&journey, updates, tail, policy),
        )
        .unwrap();
        let name = format!("{updates} updates then {id}");
        std::fs::write(
            root.join(format!("tests/{journey}.test.yaml")),
            test_file(&journey, &name, &expect),
        )
        .unwrap();
    }
    root
}

#[test]
fn a_hundred_steps_then_a_wait_run_and_one_more_fails() {
    let root = workspace();
    let report = match waymark_scenario::run_workspace(&root) {
        Ok(report) => report,
        Err(waymark_scenario::Error::Invalid(d)) => panic!("does not load:\n{d:#?}"),
        Err(e) => panic!("{e}"),
    };
    assert!(
        report.passed() == 7 && report.failed() == 0,
        "expected 7 passed, 0 failed:\n{}",
        report.render()
    );
}
