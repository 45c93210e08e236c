//! The HTTP API, called on the router directly (no socket), over a real SQLite store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt as _;
use waymark::channels::Channels;
use waymark::config::Config;
use waymark::daemon::Daemon;
use waymark_scheduler::{ChannelDirectory, Engine, SystemClock};
use waymark_store::SqliteStore;

const WELCOME: &str = "
id: welcome
trigger:
  event: signed_up
steps:
  hello:
    send: email
    template: hello
";

const VIP: &str = "
id: vip
trigger:
  api: true
steps:
  note:
    send: email
    template: hello
";

const HELLO: &str = "
email:
  subject: \"Hello {{ profile.first_name | default: 'there' }}\"
  text: \"Welcome\"
";

struct Fixture {
    _dir: tempfile::TempDir,
    daemon: Arc<Daemon>,
    router: axum::Router,
}

async fn fixture(api_keys: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let journeys = dir.path().join("journeys");
    write(&journeys, "welcome.yaml", WELCOME);
    write(&journeys, "vip.yaml", VIP);
    write(&journeys, "templates/hello.yaml", HELLO);
    let (workspace, _) = waymark_journey::load(&journeys).unwrap();
    let store = SqliteStore::open_path(&dir.path().join("w.db"))
        .await
        .unwrap()
        .shared();
    let mut config = Config::defaults();
    config.journeys = journeys;
    config.api_keys = api_keys.iter().map(|k| (*k).to_owned()).collect();
    let registry = waymark::default_registry();
    let channels = Arc::new(Channels::build(&registry, &config.channels, true).unwrap());
    let directory: Arc<dyn ChannelDirectory> = channels.clone();
    let engine = Engine::new(workspace, config.policy.clone(), directory);
    let daemon = Daemon::new(store, engine, channels, Arc::new(SystemClock), config);
    let router = waymark::api::router(daemon.clone());
    Fixture {
        _dir: dir,
        daemon,
        router,
    }
}

fn write(root: &Path, file: &str, text: &str) {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

async fn call(f: &Fixture, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
    call_with(f, method, uri, body, None).await
}

async fn call_with(
    f: &Fixture,
    method: &str,
    uri: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request
        .header("content-type", "application/json")
        .body(Body::from(body.unwrap_or("").to_owned()))
        .unwrap();
    let response = f.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// Waits until the customer's queue has handled what was submitted.
async fn settle(f: &Fixture) {
    assert!(f.daemon.drain(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_tracked_event_enrolls_and_produces_a_message() {
    let f = fixture(&[]).await;
    let (status, _) = call(
        &f,
        "POST",
        "/v1/identify",
        Some(r#"{"userId": "ann", "traits": {"email": "ann@example.com", "first_name": "Ann"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let track = r#"{"userId": "ann", "event": "signed_up", "messageId": "m-1",
                    "timestamp": "2025-03-01T12:00:00Z", "context": {"ip": "1.2.3.4"}}"#;
    let (status, body) = call(&f, "POST", "/v1/track", Some(track)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"success": true})));
    let (_, again) = call(&f, "POST", "/v1/track", Some(track)).await;
    assert_eq!(again["duplicate"], json!(true));
    settle(&f).await;

    let (status, profile) = call(&f, "GET", "/v1/profiles/ann", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(profile["traits"]["first_name"], "Ann");
    assert_eq!(profile["events"].as_array().unwrap().len(), 1);
    assert_eq!(profile["enrollments"][0]["journey"], "welcome");
    assert_eq!(profile["enrollments"][0]["outcome"], "completed");
    assert_eq!(profile["messages"][0]["outcome"], "sent");
    assert_eq!(profile["messages"][0]["channel"], "email");

    let (_, journeys) = call(&f, "GET", "/v1/journeys", None).await;
    let ids: Vec<&str> = journeys["journeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["vip", "welcome"]);
    let (_, welcome) = call(&f, "GET", "/v1/journeys/welcome", None).await;
    assert_eq!(welcome["outcomes"]["completed"], 1);

    let (_, metrics) = call(&f, "GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("waymark_events_ingested_total 1"));
    assert!(metrics.contains("waymark_events_duplicate_total 1"));
    assert!(metrics.contains(r#"waymark_messages_total{channel="email",outcome="sent"} 1"#));
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let f = fixture(&[]).await;
    let cases = [
        ("/v1/track", r#"{"event": "x"}"#, "userId"),
        ("/v1/track", r#"{"userId": "a"}"#, "event"),
        (
            "/v1/track",
            r#"{"userId": "a", "event": "x", "evnt": 1}"#,
            "evnt",
        ),
        ("/v1/track", r#"{"userId": 1.5e300, "event": 3}"#, "event"),
        (
            "/v1/track",
            r#"{"userId": "a", "event": "x", "properties": []}"#,
            "properties",
        ),
        (
            "/v1/track",
            r#"{"userId": "a", "event": "x", "timestamp": "yesterday"}"#,
            "timestamp",
        ),
        ("/v1/identify", r#"{"userId": ["a"]}"#, "userId"),
        ("/v1/alias", r#"{"userId": "a"}"#, "previousId"),
        ("/v1/batch", r#"{"batch": {}}"#, "batch"),
        (
            "/v1/batch",
            r#"{"batch": [{"type": "track", "userId": "a", "event": "x"}, {"type": "page"}]}"#,
            "batch[1].type",
        ),
        (
            "/v1/batch",
            r#"{"batch": [{"type": "track", "userId": "a"}]}"#,
            "batch[0].event",
        ),
        ("/v1/journeys/vip/enroll", r#"{"properties": {}}"#, "userId"),
    ];
    for (uri, body, field) in cases {
        let (status, answer) = call(&f, "POST", uri, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {body}: {answer}");
        assert_eq!(answer["field"], field, "{uri} {body}: {answer}");
    }
    // A batch with a bad item applies nothing.
    let (_, profile) = call(&f, "GET", "/v1/profiles/a", None).await;
    assert_eq!(profile["error"], "no profile `a`");

    let (status, answer) = call(&f, "POST", "/v1/track", Some("{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON")
    );
    let (status, _) = call(&f, "POST", "/v1/track", Some("[1]")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let big = format!(
        r#"{{"userId": "a", "event": "{}"}}"#,
        "x".repeat(waymark::api::MAX_BODY)
    );
    let (status, answer) = call(&f, "POST", "/v1/track", Some(&big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(answer["error"].is_string());
    let (status, _) = call(&f, "GET", "/v1/nowhere", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&f, "GET", "/v1/track", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn api_enrollment_and_alias() {
    let f = fixture(&[]).await;
    let (status, answer) = call(
        &f,
        "POST",
        "/v1/journeys/vip/enroll",
        Some(r#"{"userId": "bob", "properties": {"tier": "gold"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["enrolled"], true);
    let (status, _) = call(
        &f,
        "POST",
        "/v1/journeys/welcome/enroll",
        Some(r#"{"userId": "bob"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = call(
        &f,
        "POST",
        "/v1/journeys/nope/enroll",
        Some(r#"{"userId": "bob"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    call(
        &f,
        "POST",
        "/v1/track",
        Some(r#"{"anonymousId": "dev-1", "event": "visit"}"#),
    )
    .await;
    settle(&f).await;
    let (status, _) = call(
        &f,
        "POST",
        "/v1/identify",
        Some(r#"{"userId": "bob", "anonymousId": "dev-1", "traits": {"plan": "pro"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, profile) = call(&f, "GET", "/v1/profiles/dev-1", None).await;
    assert_eq!(profile["id"], "bob");
    assert_eq!(profile["traits"]["plan"], "pro");
    assert_eq!(profile["events"][0]["event"], "visit");
}

#[tokio::test]
async fn api_keys_guard_everything_but_health() {
    let f = fixture(&["k1"]).await;
    let (status, answer) = call(&f, "GET", "/v1/journeys", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(answer["error"].as_str().unwrap().contains("Bearer"));
    let (status, _) = call_with(&f, "GET", "/v1/journeys", None, Some("nope")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call_with(&f, "GET", "/v1/journeys", None, Some("k1")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&f, "GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_broken_reload_keeps_the_running_journeys() {
    let f = fixture(&[]).await;
    let root = f.daemon.config.journeys.clone();
    write(
        &root,
        "broken.yaml",
        "id: broken\ntrigger: {event: x}\nsteps: {a: {sned: email}}\n",
    );
    let (status, answer) = call(&f, "POST", "/v1/reload", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(!answer["diagnostics"].as_array().unwrap().is_empty());
    let (_, journeys) = call(&f, "GET", "/v1/journeys", None).await;
    assert_eq!(journeys["journeys"].as_array().unwrap().len(), 2);
    std::fs::remove_file(root.join("broken.yaml")).unwrap();
    write(
        &root,
        "other.yaml",
        &WELCOME.replace("id: welcome", "id: other"),
    );
    let (status, answer) = call(&f, "POST", "/v1/reload", None).await;
    assert_eq!(
        (status, answer["journeys"].clone()),
        (StatusCode::OK, json!(3))
    );
}
