//! What the engine's test files share: a one-journey workspace, a start instant, a
//! customer and her sign-up.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Map, json};
use waymark_journey::Workspace;
use waymark_scheduler::{CustomerState, Event};

fn write_workspace(dir: &Path, journey: &str) {
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(dir.join("journey.yaml"), journey).unwrap();
    std::fs::write(
        dir.join("templates/hello.yaml"),
        "email:\n  subject: Hello\n  text: \"Hello {{ profile.first_name | default: 'friend' }}\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("templates/bye.yaml"),
        "email:\n  subject: Bye\n  text: Bye\n",
    )
    .unwrap();
}

/// A workspace of `journey` with the templates `hello` and `bye`.
pub fn load(journey: &str) -> Workspace {
    let dir = tempfile::tempdir().unwrap();
    write_workspace(dir.path(), journey);
    waymark_journey::load(dir.path())
        .unwrap_or_else(|e| panic!("{e:#?}"))
        .0
}

pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z")
        .unwrap()
        .to_utc()
}

/// Ann, with an email address.
pub fn ann() -> CustomerState {
    let mut state = CustomerState::new("ann");
    state.profile.traits = json!({"email": "ann@example.com"})
        .as_object()
        .cloned()
        .unwrap();
    state
}

pub fn signed_up(at: DateTime<Utc>) -> Event {
    Event {
        name: "signed_up".to_owned(),
        at,
        properties: Map::new(),
    }
}
