//! Journeys change safely: a customer waiting in a journey when it is edited and the
//! daemon restarted goes on in the version she entered, from the files recorded when it
//! was current, while a new customer enters the edited one.

use serde_json::{Value, json};
use waymark_tests::{MockServer, Recorded, Reply, Site, eventually, sent};

const DAEMON: &str = env!("CARGO_BIN_EXE_waymark-daemon");

const COURSE_V1: &str = "
id: course
trigger: {event: joined}
steps:
  intro: {send: crm, template: intro, next: homework}
  homework:
    wait_for: {event: submitted, timeout: 30d}
    on_event: lesson
    on_timeout: lesson
  lesson: {send: crm, template: lesson}
";

/// v2 ends with a survey after the lesson, and the lesson's template says something else.
const COURSE_V2: &str = "
id: course
trigger: {event: joined}
steps:
  intro: {send: crm, template: intro, next: homework}
  homework:
    wait_for: {event: submitted, timeout: 30d}
    on_event: lesson
    on_timeout: lesson
  lesson: {send: crm, template: lesson, next: survey}
  survey: {send: crm, template: survey}
";

fn template(what: &str, version: u32) -> String {
    format!(
        "crm:\n  body: '{{\"customer\": \"{{{{ profile.id }}}}\", \"what\": \"{what}\", \"version\": {version}}}'\n"
    )
}

/// What the receiver got for a customer: (what, version), sorted (messages of one step
/// go out together, in any order).
fn received(requests: &[Recorded], customer: &str) -> Vec<(String, u64)> {
    let mut got: Vec<(String, u64)> = requests
        .iter()
        .map(Recorded::json)
        .filter(|body| body["customer"] == customer)
        .map(|body| {
            (
                body["what"].as_str().unwrap_or_default().to_owned(),
                body["version"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    got.sort();
    got
}

async fn version(daemon: &waymark_tests::Daemon) -> Value {
    let (status, journey) = daemon.get("/v1/journeys/course").await;
    assert_eq!(status, 200, "{journey}");
    journey["version"].clone()
}

#[tokio::test]
async fn a_waiting_customer_finishes_on_her_version_after_an_edit_and_a_restart() {
    let receiver = MockServer::start(Reply::json(200, json!({"id": "note"}))).await;
    let mut site = Site::new(DAEMON);
    site.write("course.yaml", COURSE_V1);
    site.write("templates/intro.yaml", &template("intro", 1));
    site.write("templates/lesson.yaml", &template("lesson", 1));
    site.configure(&format!(
        "channels:\n  crm: {{kind: webhook, url: \"{}/notes\"}}",
        receiver.url()
    ));

    let daemon = site.start().await;
    let v1 = version(&daemon).await;
    daemon
        .ok("/v1/track", &json!({"userId": "ann", "event": "joined"}))
        .await;
    eventually("ann gets the intro and waits for her homework", || async {
        let ann = daemon.profile("ann").await;
        sent(&ann, "ann:1:intro:1") && ann["enrollments"][0]["step"] == "homework"
    })
    .await;
    assert!(daemon.terminate().await.success());

    site.write("course.yaml", COURSE_V2);
    site.write("templates/lesson.yaml", &template("lesson", 2));
    site.write("templates/survey.yaml", &template("survey", 2));
    let daemon = site.start().await;
    let v2 = version(&daemon).await;
    assert_ne!(v1, v2, "the edit makes a new version");
    let ann = daemon.profile("ann").await;
    assert_eq!(ann["enrollments"][0]["version"], v1, "{ann}");
    assert_eq!(ann["enrollments"][0]["step"], "homework", "{ann}");

    for customer in ["ann", "bob"] {
        if customer == "bob" {
            daemon
                .ok("/v1/track", &json!({"userId": "bob", "event": "joined"}))
                .await;
        }
        daemon
            .ok(
                "/v1/track",
                &json!({"userId": customer, "event": "submitted"}),
            )
            .await;
    }
    eventually("both customers finish the course", || async {
        let done = |p: &Value| p["enrollments"][0]["outcome"] == "completed";
        done(&daemon.profile("ann").await) && done(&daemon.profile("bob").await)
    })
    .await;

    let requests = receiver.requests();
    assert_eq!(
        received(&requests, "ann"),
        [("intro".to_owned(), 1), ("lesson".to_owned(), 1)],
        "ann goes on in v1, with v1's lesson template"
    );
    assert_eq!(
        received(&requests, "bob"),
        [
            ("intro".to_owned(), 1),
            ("lesson".to_owned(), 2),
            ("survey".to_owned(), 2)
        ],
        "bob enters v2"
    );
    let bob = daemon.profile("bob").await;
    assert_eq!(bob["enrollments"][0]["version"], v2, "{bob}");
    let (_, journey) = daemon.get("/v1/journeys/course").await;
    assert_eq!(journey["outcomes"]["completed"], 2, "{journey}");
}
