//! How expectations are compared, where a passing rule file cannot show it: cases that
//! must fail, and what their report says.

use std::path::Path;

use waymark_journey::{Policy, Workspace};
use waymark_scenario::run::{Verdict, run_case};
use waymark_scenario::spec::Case;
use waymark_scenario::{CaseReport, FileReport, Report};

fn rules() -> Workspace {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rules");
    waymark_journey::load(&root)
        .unwrap_or_else(|d| panic!("{d:#?}"))
        .0
}

fn run(journey: &str, case: &str) -> Verdict {
    let value = waymark_journey::yaml_to_json(case).unwrap();
    let case: Case = serde_json::from_value(value).unwrap();
    run_case(&rules(), journey, &Policy::default(), &case)
}

fn failure(journey: &str, case: &str) -> String {
    match run(journey, case) {
        Ok(()) => panic!("the case passed"),
        Err(lines) => lines.join("\n"),
    }
}

/// anon-7 abandons a cart, is reminded at +1h, and is merged into ann at +2h.
const MERGED_AFTER_SEND: &str = "
name: merged after the send
start: 2026-03-02T10:00:00Z
profiles:
  - {id: ann, traits: {email: ann@example.com}}
  - {id: anon-7, traits: {email: anon@example.com}}
  - {id: bob, traits: {email: bob@example.com}}
events:
  - {at: +0s, user: anon-7, event: cart_abandoned, properties: {total: 500}}
  - {at: +2h, user: ann, alias: anon-7}
";

#[test]
fn a_send_before_a_merge_is_expected_of_either_id_and_of_no_one_else() {
    for user in ["anon-7", "ann"] {
        let case = format!(
            "{MERGED_AFTER_SEND}expect:\n  sends: [{{at: +1h, user: {user}, template: cart_note}}]\n"
        );
        assert_eq!(run("cart_merge", &case), Ok(()), "user: {user}");
    }
    let case = format!(
        "{MERGED_AFTER_SEND}expect:\n  sends: [{{at: +1h, user: bob, template: cart_note}}]\n"
    );
    let report = failure("cart_merge", &case);
    // The diff names the id the message went to, and the profile it is part of now.
    assert!(
        report.contains("+ 2026-03-02T11:00:00Z (+1h)  anon-7 (now ann)  email  cart_note"),
        "{report}"
    );
    assert!(
        report.contains("- 2026-03-02T11:00:00Z (+1h)  bob  *  cart_note"),
        "{report}"
    );
}

#[test]
fn outcomes_after_a_clash_speak_of_the_enrollment_that_goes_on() {
    let case = "
name: clash
start: 2026-03-02T10:00:00Z
profiles:
  - {id: ann, traits: {email: ann@example.com}}
  - {id: anon-7, traits: {email: anon@example.com}}
events:
  - {at: +0s, user: ann, event: cart_abandoned, properties: {total: 111}}
  - {at: +10m, user: anon-7, event: cart_abandoned, properties: {total: 222}}
  - {at: +20m, user: ann, alias: anon-7}
expect:
  outcomes: {ann: exited}
";
    assert_eq!(
        failure("cart_merge", case),
        "outcome of ann: expected exited, got completed"
    );
}

#[test]
fn a_matching_pairs_sends_at_one_instant_whatever_the_order() {
    let case = |first: &str, second: &str| {
        format!(
            "
name: two at once
start: 2026-03-02T10:00:00Z
profiles: [{{id: ann, traits: {{email: ann@example.com}}}}]
events: [{{at: +0s, event: probe}}]
expect:
  sends:
    - {first}
    - {second}
"
        )
    };
    let broad = "{at: +0s, channel: email}";
    let hello = "{at: +0s, template: hello}";
    assert_eq!(run("two_at_once", &case(broad, hello)), Ok(()));
    assert_eq!(run("two_at_once", &case(hello, broad)), Ok(()));
    // Two expectations that fit only `hello`: one is paired with it, the other is missing,
    // and `thanks` was not expected.
    let report = failure("two_at_once", &case(hello, hello));
    assert_eq!(
        report,
        "messages differ (- expected but missing, + happened but not expected):
    2026-03-02T10:00:00Z (+0s)  ann  email  hello  to ann@example.com  \"Hello, friend.\"
  - 2026-03-02T10:00:00Z (+0s)  *  *  hello
  + 2026-03-02T10:00:00Z (+0s)  ann  email  thanks  to ann@example.com  \"Thank you.\""
    );
}

#[test]
fn a_skip_with_another_reason_shows_what_happened() {
    let case = |reason: &str| {
        format!(
            "
name: unsubscribed
start: 2026-03-02T10:00:00Z
profiles: [{{id: ann, traits: {{phone: \"+79000000001\", unsubscribed: [email]}}}}]
events: [{{at: +0s, event: joined}}]
expect:
  skipped:
    - {{at: +0s, template: hello, reason: {reason}}}
"
        )
    };
    // Unlisted skips are allowed: the one at +1d is not named, and the case passes.
    assert_eq!(run("unsub_drip", &case("unreachable")), Ok(()));
    let report = failure("unsub_drip", &case("frequency_cap"));
    assert_eq!(
        report,
        "skipped sends differ (- expected but missing, + happened but not expected):
  - 2026-03-02T10:00:00Z (+0s)  *  *  hello  skipped: frequency_cap
  + 2026-03-02T10:00:00Z (+0s)  ann  -  hello  skipped: unreachable
  + 2026-03-03T10:00:00Z (+1d)  ann  -  hello  skipped: unreachable"
    );
}

#[test]
fn a_report_prints_each_case_as_ok_or_failed() {
    let report = Report {
        files: vec![
            FileReport {
                path: "tests/a.test.yaml".into(),
                error: None,
                cases: vec![
                    CaseReport {
                        name: "good".to_owned(),
                        verdict: Ok(()),
                    },
                    CaseReport {
                        name: "bad".to_owned(),
                        verdict: Err(vec![
                            "outcome of ann: expected completed, got exited".to_owned(),
                        ]),
                    },
                ],
            },
            FileReport {
                path: "tests/b.test.yaml".into(),
                error: Some("not a valid test file: missing field `journey`".to_owned()),
                cases: Vec::new(),
            },
        ],
    };
    assert_eq!(
        report.render(),
        "tests/a.test.yaml
  ok      good
  failed  bad
          outcome of ann: expected completed, got exited
tests/b.test.yaml
  failed  not a valid test file: missing field `journey`
1 passed, 2 failed
"
    );
}
