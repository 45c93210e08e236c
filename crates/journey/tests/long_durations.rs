//! Durations longer than any journey could wait out are refused by the checker, each
//! where it is written, rather than left to overflow the engine's clock arithmetic.

const JOURNEY: &str = "\
id: forever
trigger:
  event: signed_up
  where: did(\"x\", \"9999999999w\")
reentry: 9999999999w
policy:
  frequency_cap: {max: 1, per: 9999999999w}
  fatigue: {unopened: 3, cap: {max: 1, per: 36526d}}
  max_lateness: 9999999999w
steps:
  pause:
    wait: 9999999999w
    next: answer
  answer:
    wait_for: {event: replied, timeout: 5218w}
    on_event: done
    on_timeout: done
  done:
    wait: 36525d
";

#[test]
fn check_refuses_durations_past_a_century_where_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("forever.yaml"), JOURNEY).unwrap();
    let errors = waymark_journey::load(dir.path()).unwrap_err();
    let found: Vec<(u32, u32, &str)> = errors
        .iter()
        .filter(|d| d.is_error())
        .map(|d| (d.pos.line, d.pos.column, d.code))
        .collect();
    // The window inside the expression is reported as the expression's error; the rest
    // as invalid durations. `36525d`, exactly 100 years, is allowed.
    let expected = vec![
        (4, 19, "E0017"),
        (5, 10, "E0013"),
        (7, 32, "E0013"),
        (8, 45, "E0013"),
        (9, 17, "E0013"),
        (12, 11, "E0013"),
        (15, 41, "E0013"),
    ];
    assert_eq!(found, expected, "{errors:#?}");
    for d in &errors {
        assert!(d.message.contains("too long"), "{}", d.message);
    }
    let first = errors[1].headline();
    assert!(
        first.ends_with(
            "forever.yaml:5:10: error: duration `9999999999w` is too long: the longest is 100 years (36525d)"
        ),
        "{first}"
    );
    let window = errors[0].headline();
    assert!(
        window.contains("forever.yaml:4:19: error: bad window for `did`")
            && window.contains("duration `9999999999w` is too long"),
        "{window}"
    );
}
