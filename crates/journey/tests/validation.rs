//! The trickier validation rules, each on a small workspace, and snapshots of how their
//! errors read.

use std::path::{Path, PathBuf};

use tempfile::TempDir;
use waymark_journey::template::RenderContext;
use waymark_journey::{Diagnostic, Severity, graph, load};

mod common;

use common::{copy_workspace, header};

const SEGMENTS: &str = "segments:\n  vip:\n    where: profile.vip == true\n";
const EMAIL_ONLY: &str = "email:\n  subject: Hi\n  text: Hello\n";
const EMAIL_AND_SMS: &str = "email:\n  subject: Hi\n  text: Hello\nsms:\n  text: Hello\n";

/// A workspace with a `vip` segment, templates `hello` (email only) and `both` (email and
/// sms), and the given files.
fn workspace(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("segments.yaml"), SEGMENTS).unwrap();
    std::fs::write(dir.path().join("templates/hello.yaml"), EMAIL_ONLY).unwrap();
    std::fs::write(dir.path().join("templates/both.yaml"), EMAIL_AND_SMS).unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Every diagnostic, rendered, with the temporary directory shown as `journeys`.
fn diagnostics(dir: &Path) -> (Vec<Diagnostic>, String) {
    let diagnostics = match load(dir) {
        Ok((_, warnings)) => warnings,
        Err(all) => all,
    };
    let text: String = diagnostics
        .iter()
        .map(|d| format!("{}\n", d.render()))
        .collect();
    let text = text.replace(&dir.display().to_string(), "journeys");
    (diagnostics, text)
}

fn errors_in(dir: &Path) -> Vec<Diagnostic> {
    diagnostics(dir)
        .0
        .into_iter()
        .filter(Diagnostic::is_error)
        .collect()
}

#[test]
fn an_instant_cycle_is_an_error_naming_its_steps() {
    let dir = workspace(&[(
        "loop.yaml",
        "id: looping\ntrigger: {event: signed_up}\nsteps:\n  a:\n    send: email\n    template: hello\n    next: b\n  b:\n    update: {traits: {seen: true}}\n    next: a\n",
    )]);
    let errors = errors_in(dir.path());
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].message.contains("cycle"));
    assert!(
        errors[0].message.contains("`a` -> `b` -> `a`"),
        "{}",
        errors[0].message
    );
    // It points at the transition that closes the loop.
    assert_eq!(errors[0].pos.line, 10);
}

#[test]
fn a_wait_anywhere_in_a_loop_breaks_it() {
    let dir = workspace(&[(
        "loop.yaml",
        "id: looping\ntrigger: {event: signed_up}\nsteps:\n  a:\n    send: email\n    template: hello\n    next: b\n  b:\n    wait: 1d\n    next: a\n",
    )]);
    assert!(load(dir.path()).is_ok());
}

#[test]
fn a_self_loop_without_a_wait_is_a_cycle() {
    let dir = workspace(&[(
        "loop.yaml",
        "id: looping\ntrigger: {event: signed_up}\nsteps:\n  again:\n    update: {traits: {n: \"=profile.n + 1\"}}\n    next: again\n",
    )]);
    let errors = errors_in(dir.path());
    assert!(
        errors[0].message.contains("`again` -> `again`"),
        "{errors:#?}"
    );
}

#[test]
fn unreachable_steps_are_warnings_not_errors() {
    let dir = workspace(&[(
        "j.yaml",
        "id: j\ntrigger: {event: signed_up}\nsteps:\n  first:\n    wait: 1h\n  orphan:\n    send: email\n    template: hello\n",
    )]);
    let (workspace, warnings) = load(dir.path()).unwrap();
    assert_eq!(workspace.journeys.len(), 1);
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].severity, Severity::Warning);
    assert!(warnings[0].message.contains("`orphan`"));
    assert_eq!(warnings[0].pos.line, 6);
}

#[test]
fn on_transitions_make_their_target_reachable() {
    let dir = workspace(&[(
        "j.yaml",
        "id: j\ntrigger: {event: signed_up}\nsteps:\n  first:\n    wait: 1h\n  again:\n    wait: 2h\non:\n  - event: clicked\n    from: [first]\n    goto: again\n",
    )]);
    let (_, warnings) = load(dir.path()).unwrap();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

#[test]
fn preferred_sends_need_a_part_for_every_policy_channel() {
    let journey = |channels: &str| {
        format!(
            "id: j\ntrigger: {{event: signed_up}}\n{channels}steps:\n  hi:\n    send: preferred\n    template: hello\n"
        )
    };
    // The default channels are email and sms; `hello` has only email.
    let dir = workspace(&[("j.yaml", &journey(""))]);
    let errors = errors_in(dir.path());
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].message.contains("`hello`"));
    assert!(errors[0].message.contains("`sms`"));
    assert_eq!(errors[0].pos.line, 6, "points at the `template:` value");

    let dir = workspace(&[("j.yaml", &journey("policy: {channels: [email]}\n"))]);
    assert!(load(dir.path()).is_ok());
}

#[test]
fn a_push_part_may_have_a_title_and_an_image() {
    let journey =
        "id: j\ntrigger: {event: signed_up}\nsteps:\n  hi:\n    send: push\n    template: note\n";
    let note = "push:\n  title: \"Hi {{ profile.first_name }}\"\n  text: Your cart\n  image: https://shop.example/c.png\n";
    let dir = workspace(&[("j.yaml", journey), ("templates/note.yaml", note)]);
    assert!(load(dir.path()).is_ok(), "{}", diagnostics(dir.path()).1);

    let sms = note.replace("push:", "sms:");
    let dir = workspace(&[
        ("j.yaml", &journey.replace("push", "sms")),
        ("templates/note.yaml", &sms),
    ]);
    let errors = errors_in(dir.path());
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors.iter().any(|e| e.message.contains("`title`")));
}

#[test]
fn a_push_part_may_carry_data_for_the_app() {
    let journey =
        "id: j\ntrigger: {event: signed_up}\nsteps:\n  hi:\n    send: push\n    template: note\n";
    let note = "push:\n  text: Your order\n  data:\n    order_id: \"{{ trigger.order }}\"\n    link: app://orders\n";
    let dir = workspace(&[("j.yaml", journey), ("templates/note.yaml", note)]);
    let (loaded, _) = load(dir.path()).unwrap();
    let trigger = serde_json::json!({"order": "A-17"});
    let ctx = RenderContext {
        profile: &serde_json::Map::new(),
        profile_id: "ann",
        event: &serde_json::Map::new(),
        trigger: trigger.as_object().unwrap(),
        journey_id: "j",
        now: chrono::DateTime::UNIX_EPOCH,
        timezone: chrono_tz::Tz::UTC,
    };
    let rendered = loaded.templates["note"].render("push", &ctx).unwrap();
    assert_eq!(rendered["data.order_id"], "A-17");
    assert_eq!(rendered["data.link"], "app://orders");
    assert_eq!(rendered["text"], "Your order");

    // Names FCM keeps for itself are refused where they are written.
    let note = "push:\n  text: Hi\n  data:\n    from: shop\n    google.c: x\n";
    let dir = workspace(&[("j.yaml", journey), ("templates/note.yaml", note)]);
    let errors = errors_in(dir.path());
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].message.contains("`data.from`"), "{errors:#?}");
    assert_eq!(errors[0].pos.line, 4);
    assert_eq!(errors[1].pos.line, 5);
}

#[test]
fn fallback_channels_need_parts_too() {
    let dir = workspace(&[(
        "j.yaml",
        "id: j\ntrigger: {event: signed_up}\nsteps:\n  hi:\n    send: email\n    template: hello\n    fallback: [telegram]\n",
    )]);
    let errors = errors_in(dir.path());
    assert!(errors[0].message.contains("`telegram`"), "{errors:#?}");
}

#[test]
fn collects_every_problem_in_one_pass() {
    let dir = workspace(&[
        (
            "a.yaml",
            "id: a\ntrigger: {event: x}\nsteps:\n  s:\n    wait: 1 hour\n    next: nowhere\n",
        ),
        (
            "b.yaml",
            "id: a\ntrigger: {event: x, segment: vip}\nholdout: 120\nsteps:\n  s:\n    exit: won\n",
        ),
        ("templates/broken.yaml", "email:\n  text: \"{{ oops \"\n"),
    ]);
    let errors = errors_in(dir.path());
    let messages: Vec<&str> = errors.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(errors.len(), 8, "{messages:#?}");
    for expected in [
        "`1 hour`",
        "`nowhere`",
        "duplicate journey id `a`",
        "found both `event` and `segment`",
        "holdout",
        "`won`",
        "subject",
        "invalid Liquid in `email.text` of template `broken`: expected Literal",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(expected)),
            "{expected}: {messages:#?}"
        );
    }
}

#[test]
fn trigger_keys_must_fit_the_trigger() {
    let dir = workspace(&[(
        "j.yaml",
        "id: j\ntrigger:\n  segment: vip\n  where: profile.x > 1\n  key: order_id\nsteps:\n  s:\n    wait: 1h\n",
    )]);
    let errors = errors_in(dir.path());
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].message.contains("`where` is only allowed"));
    assert!(errors[1].message.contains("`key` is only allowed"));

    let dir = workspace(&[(
        "j.yaml",
        "id: j\ntrigger:\n  schedule: \"0 9 * * 1-5\"\nsteps:\n  s:\n    wait: 1h\n",
    )]);
    let errors = errors_in(dir.path());
    assert!(errors[0].message.contains("needs `audience"), "{errors:#?}");
}

#[test]
fn wait_for_needs_on_timeout_exactly_when_it_has_a_timeout() {
    let dir = workspace(&[(
        "j.yaml",
        "id: j\ntrigger: {event: x}\nsteps:\n  w:\n    wait_for: {event: y, timeout: 1d}\n    on_event: done\n  v:\n    wait_for: {event: y}\n    on_event: done\n    on_timeout: done\n    next: done\n  done:\n    exit: converted\n",
    )]);
    let errors = errors_in(dir.path());
    let messages: Vec<&str> = errors.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(errors.len(), 3, "{messages:#?}");
    assert!(messages[0].contains("missing `on_timeout`"));
    assert!(messages[1].contains("needs a `timeout`"));
    assert!(messages[2].contains("`next` is not allowed on a `wait_for` step"));
}

#[test]
fn segment_cycles_are_errors() {
    let dir = workspace(&[(
        "segments.yaml",
        "segments:\n  a:\n    where: in_segment(\"b\")\n  b:\n    where: in_segment(\"a\") || profile.x == 1\n",
    )]);
    let errors = errors_in(dir.path());
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].message.contains("`a` -> `b` -> `a`"));
}

#[test]
fn update_values_are_literals_or_expressions() {
    let dir = workspace(&[(
        "j.yaml",
        "id: j\ntrigger: {event: x}\nsteps:\n  u:\n    update:\n      traits:\n        points: 10\n        tags: [a, b]\n        bonus: \"=profile.points +\"\n",
    )]);
    let errors = errors_in(dir.path());
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].pos.line, 9);
}

#[test]
fn snapshot_of_rendered_errors() {
    let dir = workspace(&[
        (
            "cart.yaml",
            "id: cart\ntrigger:\n  event: cart_abandoned\n  where: in_segment(\"vipp\") && event.total > 0\nsteps:\n  first:\n    wiat: 1h\n    next: remind\n  remind:\n    send: sms\n    template: hello\n",
        ),
        (
            "nightly.yaml",
            "id: nightly\ntrigger:\n  schedule: \"0 25 * * *\"\n  timezone: Mars/Olympus\n  audience: vip\nreentry: sometimes\nsteps:\n  go:\n    wait:\n      until: \"25:00\"\n  lost:\n    exit: completed\n",
        ),
    ]);
    let (_, rendered) = diagnostics(dir.path());
    insta::assert_snapshot!(rendered);
}

#[test]
fn snapshot_of_yaml_errors() {
    let dir = workspace(&[
        (
            "dup.yaml",
            "id: dup\ntrigger: {event: x}\nsteps:\n  a:\n    wait: 1h\n  a:\n    wait: 2h\n",
        ),
        ("syntax.yaml", "id: syntax\ntrigger: [event: x\nsteps: {}\n"),
    ]);
    let (_, rendered) = diagnostics(dir.path());
    insta::assert_snapshot!(rendered);
}

/// Each file of `tests/invalid/`, dropped into a copy of the conformance workspace (as
/// itself, or as its `drop-as` path: `segments.yaml`, `templates/NAME.yaml`), yields as
/// its first error one in that file, on its `expect-line`, containing its `expect-text`,
/// as the shared invalid journeys do.
#[test]
fn each_invalid_fixture_yields_its_expected_first_error() {
    let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/invalid"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for fixture in files {
        let source = std::fs::read_to_string(&fixture).unwrap();
        let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
        let dir = tempfile::tempdir().unwrap();
        copy_workspace(dir.path());
        let dropped = dir
            .path()
            .join(header(&source, "drop-as").unwrap_or_else(|| name.clone()));
        std::fs::write(&dropped, &source).unwrap();

        let (all, rendered) = diagnostics(dir.path());
        let first = all
            .iter()
            .find(|d| d.is_error())
            .unwrap_or_else(|| panic!("{name}: no error among\n{rendered}"));
        assert_eq!(first.file, dropped, "{name}:\n{rendered}");
        if let Some(line) = header(&source, "expect-line") {
            assert_eq!(first.pos.line.to_string(), line, "{name}:\n{rendered}");
        }
        if let Some(text) = header(&source, "expect-text") {
            // As `waymark check` prints it: the headline, one line.
            let headline = first.headline();
            assert!(
                headline.contains(&text),
                "{name}: `{headline}` does not contain `{text}`"
            );
        }
    }
}

#[test]
fn a_missing_key_is_not_reported_beside_its_misspelling() {
    let dir = workspace(&[(
        "j.yaml",
        "id: j\ntigger: {event: x}\nsteps:\n  a:\n    wait_for: {evnt: y}\n    on_event: a\n",
    )]);
    let errors = errors_in(dir.path());
    let messages: Vec<&str> = errors.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "unknown key `tigger` in journey; did you mean `trigger`?",
            "unknown key `evnt` in `wait_for` of step `a`; did you mean `event`?",
        ]
    );

    // A key that resembles the missing one but is allowed does not excuse it.
    let dir = workspace(&[(
        "j.yaml",
        "id: j\ntrigger: {event: x}\nsteps:\n  a:\n    wait_for: {event: y, timeout: 1d}\n    on_timeout: a\n",
    )]);
    let errors = errors_in(dir.path());
    assert!(
        errors[0].message.contains("missing `on_event`"),
        "{errors:#?}"
    );
}

#[test]
fn the_file_named_after_a_journey_id_keeps_it() {
    let journey = "id: welcome\ntrigger: {event: x}\nsteps:\n  a:\n    wait: 1h\n";
    for copy in ["a_copy.yaml", "z_copy.yaml"] {
        let dir = workspace(&[("welcome.yaml", journey), (copy, journey)]);
        let errors = errors_in(dir.path());
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].file.ends_with(copy), "{errors:#?}");
        assert!(errors[0].message.contains("welcome.yaml already has it"));
    }
}

#[test]
fn snapshot_of_lead_nurture_graph() {
    let root = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/conformance/journeys"
    ));
    let (workspace, _) = load(root).unwrap();
    let journey = workspace.journey("lead_nurture").unwrap();
    insta::assert_snapshot!("lead_nurture_mermaid", graph::mermaid(journey));
    insta::assert_snapshot!("lead_nurture_dot", graph::dot(journey));
    let cart = workspace.journey("abandoned_cart").unwrap();
    insta::assert_snapshot!("abandoned_cart_mermaid", graph::mermaid(cart));
}
