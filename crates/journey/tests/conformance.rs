//! The shared conformance suite: the valid workspace loads cleanly, and each broken journey
//! dropped into it yields its expected first error.

use std::path::PathBuf;

use waymark_journey::{Diagnostic, StepKind, Trigger, load};

mod common;

use common::{conformance, copy_workspace, header};

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(Diagnostic::render).collect()
}

#[test]
fn valid_workspace_loads_without_errors() {
    let root = conformance().join("journeys");
    let (workspace, warnings) = load(&root).unwrap_or_else(|d| panic!("{}", render(&d)));
    assert!(warnings.is_empty(), "{}", render(&warnings));
    assert_eq!(workspace.journeys.len(), 11);
    assert_eq!(workspace.templates.len(), 24);
    assert_eq!(workspace.segments.by_name.len(), 2);

    let cart = workspace.journey("abandoned_cart").unwrap();
    assert_eq!(cart.start.0, 0);
    assert_eq!(cart.version.len(), 16);
    assert!(matches!(cart.trigger, Trigger::Event { .. }));
    let birthday = workspace.journey("birthday").unwrap();
    assert!(matches!(birthday.trigger, Trigger::Schedule { .. }));
    let welcome = workspace.journey("welcome").unwrap();
    assert!(matches!(
        welcome.steps[1].kind,
        StepKind::WaitUntil { timezone: None, .. }
    ));
    assert_eq!(
        welcome.policy.channels.as_deref(),
        Some(&["telegram".to_owned(), "email".to_owned(), "sms".to_owned()][..])
    );
}

#[test]
fn versions_are_stable_and_change_with_templates() {
    let dir = tempfile::tempdir().unwrap();
    copy_workspace(dir.path());
    let before = load(dir.path()).unwrap().0;
    let again = load(dir.path()).unwrap().0;
    let version = |w: &waymark_journey::Workspace, id: &str| w.journey(id).unwrap().version.clone();
    assert_eq!(version(&before, "promo"), version(&again, "promo"));

    let template = dir.path().join("templates/promo_offer.yaml");
    let text = std::fs::read_to_string(&template).unwrap();
    std::fs::write(&template, text.replace("This week only", "This week")).unwrap();
    let after = load(dir.path()).unwrap().0;
    assert_ne!(version(&before, "promo"), version(&after, "promo"));
    assert_eq!(version(&before, "welcome"), version(&after, "welcome"));
}

#[test]
fn each_invalid_journey_yields_its_expected_first_error() {
    let invalid = conformance().join("invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&invalid)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 11);
    for broken in files {
        let source = std::fs::read_to_string(&broken).unwrap();
        let dir = tempfile::tempdir().unwrap();
        copy_workspace(dir.path());
        let name = broken.file_name().unwrap();
        let dropped = dir.path().join(name);
        std::fs::write(&dropped, &source).unwrap();

        let name = name.to_string_lossy();
        let diagnostics = match load(dir.path()) {
            Ok(_) => panic!("{name}: loaded without errors"),
            Err(d) => d,
        };
        let first = diagnostics
            .iter()
            .find(|d| d.is_error())
            .unwrap_or_else(|| panic!("{name}: no error among {}", render(&diagnostics)));
        assert_eq!(first.file, dropped, "{name}: {}", render(&diagnostics));
        let headline = first.headline();
        assert!(
            headline.starts_with(&format!("{}:{}:", dropped.display(), first.pos.line)),
            "{headline}"
        );
        assert!(headline.contains(": error: "), "{headline}");
        if let Some(line) = header(&source, "expect-line") {
            assert_eq!(
                first.pos.line.to_string(),
                line,
                "{name}: {}",
                render(&diagnostics)
            );
        }
        if let Some(text) = header(&source, "expect-text") {
            assert!(
                first.message.contains(&text),
                "{name}: `{}` does not contain `{text}`",
                first.message
            );
        }
    }
}
