//! Runs whole scenario-test workspaces through `waymark_scenario::run_workspace`, as
//! `waymark test` does:
//!
//! - the shared conformance suite (the contract's own examples),
//! - `tests/rules`: one test file per rule of the journey language, with boundary cases,
//! - the project's example journeys.

use std::path::{Path, PathBuf};

use waymark_scenario::Report;

/// Cases written in `tests/rules/tests/*.test.yaml`; the suite must run at least these.
const RULE_CASES: usize = 130;

fn here() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(root: PathBuf) -> Report {
    match waymark_scenario::run_workspace(&root) {
        Ok(report) => report,
        Err(waymark_scenario::Error::Invalid(diagnostics)) => {
            panic!("{} does not load:\n{diagnostics:#?}", root.display())
        }
        Err(error) => panic!("{}: {error}", root.display()),
    }
}

#[test]
fn conformance_suite_passes() {
    let report = run(here().join("../../../shared/conformance/journeys"));
    assert!(
        report.passed() == 31 && report.failed() == 0,
        "expected 31 passed, 0 failed:\n{}",
        report.render()
    );
}

#[test]
fn rule_suite_passes() {
    let report = run(here().join("tests/rules"));
    assert!(
        report.failed() == 0 && report.passed() >= RULE_CASES,
        "expected at least {RULE_CASES} passed, 0 failed:\n{}",
        report.render()
    );
}

#[test]
fn example_journeys_pass() {
    let report = run(here().join("../../journeys"));
    assert!(
        report.failed() == 0 && report.passed() > 0,
        "expected every example test to pass:\n{}",
        report.render()
    );
}
