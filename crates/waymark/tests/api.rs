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
use waymark::links::{LinkKind, LinkTarget};
use waymark_scheduler::{ChannelDirectory, Engine, SystemClock};
use waymark_store::OutboxMessage;
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
reentry: always
steps:
  note:
    send: email
    template: hello
";

/// Every `step` event appends its `i` to the customer's `seen` trait: the order in which
/// a customer's events were handled.
const TALLY: &str = "
id: tally
trigger:
  event: step
reentry: always
steps:
  note:
    update:
      traits:
        seen: \"=has(profile.seen) ? profile.seen + [trigger.i] : [trigger.i]\"
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

const ORDER: &str = "
id: order
trigger:
  event: order_placed
steps:
  confirm:
    send: sms
    template: confirm
";

const CONFIRM: &str = "
sms:
  text: \"Order confirmed\"
";

async fn fixture(api_keys: &[&str]) -> Fixture {
    fixture_with(api_keys, |_| {}).await
}

/// A daemon with every channel a `log` channel unless `tweak` configures it.
async fn fixture_with(api_keys: &[&str], tweak: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let journeys = dir.path().join("journeys");
    write(&journeys, "welcome.yaml", WELCOME);
    write(&journeys, "vip.yaml", VIP);
    write(&journeys, "order.yaml", ORDER);
    write(&journeys, "templates/hello.yaml", HELLO);
    write(&journeys, "templates/confirm.yaml", CONFIRM);
    let (workspace, _) = waymark_journey::load(&journeys).unwrap();
    let store = SqliteStore::open_path(&dir.path().join("w.db"))
        .await
        .unwrap()
        .shared();
    let mut config = Config::defaults();
    config.journeys = journeys;
    config.api_keys = api_keys.iter().map(|k| (*k).to_owned()).collect();
    tweak(&mut config);
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
    assert_eq!(ids, ["order", "vip", "welcome"]);
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
            r#"{"batch": [{"type": "track", "userId": "a", "event": "x"}, {"type": "checkout"}]}"#,
            "batch[1].type",
        ),
        (
            "/v1/batch",
            r#"{"batch": [{"type": "track", "userId": "a"}]}"#,
            "batch[0].event",
        ),
        ("/v1/journeys/vip/enroll", r#"{"properties": {}}"#, "userId"),
        // Neither database keeps U+0000 in text.
        (
            "/v1/track",
            r#"{"userId": "a\u0000b", "event": "x"}"#,
            "userId",
        ),
        (
            "/v1/batch",
            r#"{"batch": [{"type": "identify", "userId": "a", "traits": {"tags": ["ok", "\u0000"]}}]}"#,
            "batch[0].traits.tags[1]",
        ),
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

/// A retried enrollment with its `messageId` enrolls once, even where the journey lets a
/// customer enter again; without one, each call enrolls.
#[tokio::test]
async fn a_retried_enrollment_with_a_message_id_enrolls_once() {
    let f = fixture(&[]).await;
    let body = r#"{"userId": "bob", "messageId": "enroll-1"}"#;
    let (status, first) = call(&f, "POST", "/v1/journeys/vip/enroll", Some(body)).await;
    assert_eq!(
        (status, &first["enrolled"]),
        (StatusCode::OK, &json!(true)),
        "{first}"
    );
    let (status, again) = call(&f, "POST", "/v1/journeys/vip/enroll", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (&again["enrolled"], &again["duplicate"]),
        (&json!(false), &json!(true))
    );
    settle(&f).await;
    let (_, profile) = call(&f, "GET", "/v1/profiles/bob", None).await;
    assert_eq!(
        profile["enrollments"].as_array().unwrap().len(),
        1,
        "{profile}"
    );

    let other = r#"{"userId": "bob", "messageId": "enroll-2"}"#;
    let (_, answer) = call(&f, "POST", "/v1/journeys/vip/enroll", Some(other)).await;
    assert_eq!(answer["enrolled"], true, "{answer}");
    let (_, profile) = call(&f, "GET", "/v1/profiles/bob", None).await;
    assert_eq!(
        profile["enrollments"].as_array().unwrap().len(),
        2,
        "{profile}"
    );
}

/// An alias that merges an anonymous id whose events are still queued: the merge waits
/// for them, and the events after it join the customer's own queue, so every event is
/// handled once, in the order sent, and every call succeeds. The same for an identify
/// carrying both ids.
#[tokio::test]
async fn a_merge_keeps_the_order_of_events_still_queued_for_the_merged_id() {
    let f = fixture(&[]).await;
    write(&f._dir.path().join("journeys"), "tally.yaml", TALLY);
    let (status, answer) = call(&f, "POST", "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let track = |id: &str, key: &str, i: usize| json!({"type": "track", key: id, "event": "step", "properties": {"i": i}});
    // ann: 30 events as anon-1, the alias, 5 as ann, 10 more as anon-1.
    let mut batch: Vec<Value> = (0..30).map(|i| track("anon-1", "anonymousId", i)).collect();
    batch.push(json!({"type": "alias", "previousId": "anon-1", "userId": "ann"}));
    batch.extend((30..35).map(|i| track("ann", "userId", i)));
    batch.extend((35..45).map(|i| track("anon-1", "anonymousId", i)));
    // bob: 20 events as anon-2, an identify with both ids, 5 more as anon-2, 5 as bob.
    batch.extend((0..20).map(|i| track("anon-2", "anonymousId", i)));
    batch.push(
        json!({"type": "identify", "userId": "bob", "anonymousId": "anon-2",
        "traits": {"plan": "pro"}}),
    );
    batch.extend((20..25).map(|i| track("anon-2", "anonymousId", i)));
    batch.extend((25..30).map(|i| track("bob", "userId", i)));
    let body = json!({"batch": batch}).to_string();
    let (status, answer) = call(&f, "POST", "/v1/batch", Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    settle(&f).await;
    for (id, events) in [("ann", 45), ("bob", 30)] {
        let (_, profile) = call(&f, "GET", &format!("/v1/profiles/{id}"), None).await;
        let seen = &profile["traits"]["seen"];
        assert_eq!(
            seen,
            &json!((0..events).collect::<Vec<_>>()),
            "{id}: {seen}"
        );
    }
    let (_, bob) = call(&f, "GET", "/v1/profiles/bob", None).await;
    assert_eq!(bob["traits"]["plan"], "pro");
}

/// Segment's `page` and `screen` calls become `page_viewed` and `screen_viewed` events a
/// journey can use; `group` is accepted and left aside, so a Segment batch carrying them
/// is taken whole.
#[tokio::test]
async fn page_and_screen_calls_are_events_and_group_calls_are_accepted() {
    let f = fixture(&[]).await;
    let page = r#"{"anonymousId": "dev-9", "name": "Pricing", "category": "Docs",
        "properties": {"path": "/pricing"}}"#;
    let (status, answer) = call(&f, "POST", "/v1/page", Some(page)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let batch = r#"{"batch": [
        {"type": "screen", "anonymousId": "dev-9", "name": "Cart"},
        {"type": "group", "anonymousId": "dev-9", "groupId": "acme", "traits": {"seats": 3}},
        {"type": "track", "anonymousId": "dev-9", "event": "visit"}
    ]}"#;
    let (status, answer) = call(&f, "POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    settle(&f).await;
    let (_, profile) = call(&f, "GET", "/v1/profiles/dev-9", None).await;
    let viewed = event(&profile, "page_viewed").unwrap_or_else(|| panic!("{profile}"));
    assert_eq!(
        viewed["properties"],
        json!({"path": "/pricing", "name": "Pricing", "category": "Docs"})
    );
    assert_eq!(
        event(&profile, "screen_viewed").unwrap()["properties"]["name"],
        "Cart"
    );
    assert!(event(&profile, "visit").is_some(), "{profile}");

    let (status, answer) = call(&f, "POST", "/v1/group", Some(r#"{"userId": "ann"}"#)).await;
    assert_eq!(
        (status, &answer["field"]),
        (StatusCode::BAD_REQUEST, &json!("groupId"))
    );
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
    assert_eq!(journeys["journeys"].as_array().unwrap().len(), 3);
    std::fs::remove_file(root.join("broken.yaml")).unwrap();
    write(
        &root,
        "other.yaml",
        &WELCOME.replace("id: welcome", "id: other"),
    );
    let (status, answer) = call(&f, "POST", "/v1/reload", None).await;
    assert_eq!(
        (status, answer["journeys"].clone()),
        (StatusCode::OK, json!(4))
    );
}

/// A journey whose file is removed is still shown while customers are on it, marked as
/// no longer loaded; one the daemon never knew is not found.
#[tokio::test]
async fn a_removed_journey_is_shown_while_customers_are_on_it() {
    let f = fixture(&[]).await;
    let root = f.daemon.config.journeys.clone();
    write(
        &root,
        "nap.yaml",
        "id: nap\ntrigger: {event: tired}\nsteps:\n  rest: {wait: 1h}\n",
    );
    let (status, answer) = call(&f, "POST", "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let tired = r#"{"userId": "ann", "event": "tired"}"#;
    assert_eq!(
        call(&f, "POST", "/v1/track", Some(tired)).await.0,
        StatusCode::OK
    );
    settle(&f).await;
    std::fs::remove_file(root.join("nap.yaml")).unwrap();
    let (status, answer) = call(&f, "POST", "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    let (status, nap) = call(&f, "GET", "/v1/journeys/nap", None).await;
    assert_eq!(status, StatusCode::OK, "{nap}");
    assert_eq!(nap["loaded"], false, "{nap}");
    assert_eq!(nap["steps"][0]["active"], 1, "{nap}");
    let (_, welcome) = call(&f, "GET", "/v1/journeys/welcome", None).await;
    assert_eq!(welcome["loaded"], true, "{welcome}");
    let (status, _) = call(&f, "GET", "/v1/journeys/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Sends a raw request; answers the status, headers and body text.
async fn raw(f: &Fixture, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = f.router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// Makes `id` a customer with a message on its way: identified, then `event` tracked.
async fn message_for(f: &Fixture, id: &str, traits: &str, event: &str) -> OutboxMessage {
    let identify = format!(r#"{{"userId": "{id}", "traits": {traits}}}"#);
    let ok = |answer: (StatusCode, Value)| assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    ok(call_with(f, "POST", "/v1/identify", Some(&identify), Some("k1")).await);
    let track = format!(r#"{{"userId": "{id}", "event": "{event}"}}"#);
    ok(call_with(f, "POST", "/v1/track", Some(&track), Some("k1")).await);
    settle(f).await;
    let now = f.daemon.clock.now();
    let mut claimed = f
        .daemon
        .store
        .claim_outbox(now, chrono::TimeDelta::minutes(1), 10, &[])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    claimed.remove(0)
}

fn event<'a>(profile: &'a Value, name: &str) -> Option<&'a Value> {
    profile["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == name)
}

const TWILIO_TOKEN: &str = "twilio-auth-token";

/// A Twilio status callback for `sid`, signed with `token` for the daemon's address.
fn twilio_callback(token: &str, params: &[(&str, &str)]) -> Request<Body> {
    let params: std::collections::BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let url = "https://waymark.shop.example/v1/channels/sms/status";
    let signature = waymark_channel_sms::signature(token, url, &params);
    let body = params
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B")))
        .collect::<Vec<_>>()
        .join("&");
    Request::post("/v1/channels/sms/status")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(Body::from(body))
        .unwrap()
}

/// A provider's check of the callback URL (Meta's `hub.challenge`) is answered in plain
/// text with what the channel confirms, without an API key; anything else is refused.
#[tokio::test]
async fn a_providers_subscription_check_is_answered_by_its_channel() {
    let f = fixture_with(&["k1"], |config| {
        config.channels.insert(
            "whatsapp".to_owned(),
            json!({"kind": "whatsapp", "access_token": "EAAG-token",
                   "phone_number_id": "106540352242922", "verify_token": "meta-verify-7"}),
        );
    })
    .await;
    let check = |token: &str| {
        Request::get(format!(
            "/v1/channels/whatsapp/status?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444"
        ))
        .body(Body::empty())
        .unwrap()
    };
    let (status, _, body) = raw(&f, check("meta-verify-7")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1158201444"));
    let (status, _, body) = raw(&f, check("guess")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    // A channel whose kind has no such check confirms nothing.
    let (status, _, _) = raw(
        &f,
        Request::get("/v1/channels/email/status?hub.challenge=1")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn provider_receipts_become_events_on_the_customer() {
    let f = fixture_with(&["k1"], |config| {
        config.public_url = Some("https://waymark.shop.example".to_owned());
        config.channels.insert(
            "sms".to_owned(),
            json!({"kind": "twilio", "account_sid": "AC1", "auth_token": TWILIO_TOKEN,
                   "from": "+15550001", "base_url": "http://127.0.0.1:9"}),
        );
    })
    .await;
    let ann = message_for(&f, "ann", r#"{"phone": "+15550002"}"#, "order_placed").await;
    let bob = message_for(&f, "bob", r#"{"phone": "+15550003"}"#, "order_placed").await;
    let store = &f.daemon.store;
    let now = f.daemon.clock.now();
    store
        .outbox_sent(&ann.idempotency_key, Some("SM-ann"), now)
        .await
        .unwrap();
    store
        .outbox_sent(&bob.idempotency_key, Some("SM-bob"), now)
        .await
        .unwrap();

    // No API key needed: Twilio's signature is the proof.
    let delivered = [
        ("MessageSid", "SM-ann"),
        ("MessageStatus", "delivered"),
        ("To", "+15550002"),
    ];
    let (status, _, body) = raw(&f, twilio_callback(TWILIO_TOKEN, &delivered)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["matched"], 1);
    // Twilio retries a callback it thinks failed: recorded once.
    raw(&f, twilio_callback(TWILIO_TOKEN, &delivered)).await;
    let (status, _, _) = raw(&f, twilio_callback("not-the-token", &delivered)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let gone = [
        ("MessageSid", "SM-bob"),
        ("MessageStatus", "undelivered"),
        ("To", "+15550003"),
        ("ErrorCode", "30006"),
    ];
    let (status, _, _) = raw(&f, twilio_callback(TWILIO_TOKEN, &gone)).await;
    assert_eq!(status, StatusCode::OK);
    settle(&f).await;

    let (_, profile) = call_with(&f, "GET", "/v1/profiles/ann", None, Some("k1")).await;
    let receipts: Vec<&Value> = profile["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "message_delivered")
        .collect();
    assert_eq!(receipts.len(), 1, "{profile}");
    let properties = &receipts[0]["properties"];
    assert_eq!(properties["channel"], "sms");
    assert_eq!(properties["message_key"], ann.idempotency_key.as_str());
    assert_eq!(properties["journey"], "order");
    assert_eq!(properties["step"], "confirm");
    assert_eq!(properties["provider_id"], "SM-ann");

    let (_, profile) = call_with(&f, "GET", "/v1/profiles/bob", None, Some("k1")).await;
    let bounce = event(&profile, "message_bounced").expect("the bounce is on bob");
    assert_eq!(bounce["properties"]["detail"], "Twilio error 30006");
    assert_eq!(profile["traits"]["unreachable"], json!(["sms"]));

    let (status, _, _) = raw(
        &f,
        Request::post("/v1/channels/email/status")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a log channel takes no receipts"
    );
}

#[tokio::test]
async fn unsubscribe_open_and_click_links_record_on_the_customer() {
    let f = fixture_with(&["k1"], |config| {
        config.link_secret = Some("a-secret-of-sixteen-or-more".to_owned());
    })
    .await;
    let m = message_for(&f, "ann", r#"{"email": "ann@example.com"}"#, "signed_up").await;
    let links = f
        .daemon
        .links
        .as_ref()
        .expect("a link secret is configured");
    let target = LinkTarget::of(&m);
    let path = |kind: LinkKind, target: &LinkTarget| {
        links
            .url(kind, target)
            .strip_prefix("http://127.0.0.1:8080")
            .unwrap()
            .to_owned()
    };

    // A mail scanner following the link only sees a question.
    let unsubscribe = path(LinkKind::Unsubscribe, &target);
    let (status, _, page) = raw(&f, Request::get(&unsubscribe).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<form method=\"post\">"), "{page}");
    // RFC 8058 one-click: a POST with `List-Unsubscribe=One-Click`.
    let one_click = Request::post(&unsubscribe)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("List-Unsubscribe=One-Click"))
        .unwrap();
    let (status, _, page) = raw(&f, one_click).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("no more email messages"), "{page}");

    let (status, headers, _) = raw(
        &f,
        Request::get(path(LinkKind::Open, &target))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/gif");

    let click = LinkTarget {
        url: Some("https://shop.example/cart?id=1".to_owned()),
        ..target.clone()
    };
    let (status, headers, _) = raw(
        &f,
        Request::get(path(LinkKind::Click, &click))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(status.is_redirection(), "{status}");
    assert_eq!(headers["location"], "https://shop.example/cart?id=1");

    // A token for another customer, or another link kind, is refused.
    let forged = path(LinkKind::Open, &target).replace("/l/open/", "/l/unsubscribe/");
    let (status, _, _) = raw(&f, Request::post(&forged).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    settle(&f).await;

    let (_, profile) = call_with(&f, "GET", "/v1/profiles/ann", None, Some("k1")).await;
    assert_eq!(
        profile["traits"]["unsubscribed"],
        json!(["email"]),
        "{profile}"
    );
    let unsubscribed = event(&profile, "unsubscribed").unwrap();
    assert_eq!(
        unsubscribed["properties"]["message_key"],
        m.idempotency_key.as_str()
    );
    assert!(event(&profile, "message_opened").is_some());
    let clicked = event(&profile, "message_clicked").unwrap();
    assert_eq!(
        clicked["properties"]["url"],
        "https://shop.example/cart?id=1"
    );
}

/// `GET uri` with this `Authorization` header: the status and the `WWW-Authenticate`.
async fn authorized(f: &Fixture, uri: &str, authorization: &str) -> (StatusCode, Option<String>) {
    let request = Request::get(uri)
        .header("authorization", authorization)
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = raw(f, request).await;
    let challenge = headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, challenge)
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_segments_basic_auth_works() {
    use base64::Engine as _;
    let basic = |credentials: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    };
    let f = fixture(&["k1"]).await;
    for good in [
        "bearer k1",
        "BEARER k1",
        "Bearer   k1",
        &basic("k1:"),
        &format!("basic {}", &basic("k1:")[6..]),
    ] {
        let (status, _) = authorized(&f, "/v1/journeys", good).await;
        assert_eq!(status, StatusCode::OK, "{good}");
    }
    for bad in [
        "Bearer k2",
        &basic("k2:"),
        &basic("k1:secret"),
        "Basic !!!",
        "Token k1",
        "bearerk1",
    ] {
        let (status, challenge) = authorized(&f, "/v1/journeys", bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(challenge.unwrap().contains("Basic"), "{bad}");
    }
}

#[tokio::test]
async fn an_event_without_timestamp_is_dated_as_segment_dates_it() {
    let f = fixture(&[]).await;
    let at = |profile: &Value, name: &str| -> chrono::DateTime<chrono::Utc> {
        event(profile, name).unwrap()["timestamp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    // The sender's clock is 10 s ahead of the time it sent at: the event happened 10 s
    // before it was received, whatever the sender's clock says.
    let before = f.daemon.clock.now();
    let skewed = r#"{"userId": "ann", "event": "skewed", "originalTimestamp": "2031-05-01T10:00:00Z",
                     "sentAt": "2031-05-01T10:00:10Z"}"#;
    let (status, answer) = call(&f, "POST", "/v1/track", Some(skewed)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let after = f.daemon.clock.now();
    let batch = r#"{"sentAt": "2031-05-01T10:01:00Z", "batch": [
        {"type": "track", "userId": "ann", "event": "batched", "originalTimestamp": "2031-05-01T10:00:00Z"}]}"#;
    let (status, answer) = call(&f, "POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let after_batch = f.daemon.clock.now();
    let alone =
        r#"{"userId": "ann", "event": "alone", "originalTimestamp": "2024-02-03T04:05:06Z"}"#;
    call(&f, "POST", "/v1/track", Some(alone)).await;
    let given = r#"{"userId": "ann", "event": "given", "timestamp": "2024-01-01T00:00:00Z",
                    "originalTimestamp": "2031-05-01T10:00:00Z", "sentAt": "2031-05-01T10:00:10Z"}"#;
    call(&f, "POST", "/v1/track", Some(given)).await;
    settle(&f).await;

    let (_, profile) = call(&f, "GET", "/v1/profiles/ann", None).await;
    let ten = chrono::TimeDelta::seconds(10);
    let skewed = at(&profile, "skewed");
    assert!(before - ten <= skewed && skewed <= after - ten, "{profile}");
    let batched = at(&profile, "batched");
    let minute = chrono::TimeDelta::minutes(1);
    assert!(
        after - minute <= batched && batched <= after_batch - minute,
        "{profile}"
    );
    assert_eq!(
        at(&profile, "alone").to_rfc3339(),
        "2024-02-03T04:05:06+00:00"
    );
    assert_eq!(
        at(&profile, "given").to_rfc3339(),
        "2024-01-01T00:00:00+00:00"
    );

    let cases = [
        (
            "/v1/track",
            r#"{"userId": "a", "event": "x", "originalTimestamp": 5}"#,
            "originalTimestamp",
        ),
        (
            "/v1/track",
            r#"{"userId": "a", "event": "x", "originalTimestamp": "2031-05-01T10:00:00Z", "sentAt": "soon"}"#,
            "sentAt",
        ),
        ("/v1/batch", r#"{"sentAt": "later", "batch": []}"#, "sentAt"),
        (
            "/v1/batch",
            r#"{"batch": [{"type": "track", "userId": "a", "event": "x", "originalTimestamp": "x"}]}"#,
            "batch[0].originalTimestamp",
        ),
    ];
    for (uri, body, field) in cases {
        let (status, answer) = call(&f, "POST", uri, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
    }
}

#[tokio::test]
async fn every_refusal_is_json() {
    let f = fixture(&[]).await;
    let requests = [
        Request::get("/v1/profiles/%FF")
            .body(Body::empty())
            .unwrap(),
        Request::get("/v1/journeys/%FF")
            .body(Body::empty())
            .unwrap(),
        Request::post("/v1/journeys/%FF/enroll")
            .body(Body::from(r#"{"userId": "a"}"#))
            .unwrap(),
        Request::post("/v1/channels/%FF/status")
            .body(Body::empty())
            .unwrap(),
        Request::get("/l/open/%FF").body(Body::empty()).unwrap(),
        Request::get("/v1/nowhere").body(Body::empty()).unwrap(),
        Request::delete("/v1/track").body(Body::empty()).unwrap(),
    ];
    for request in requests {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, headers, body) = raw(&f, request).await;
        assert!(status.is_client_error(), "{what}: {status}");
        assert_eq!(
            headers["content-type"], "application/json",
            "{what}: {body}"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(body["error"].is_string(), "{what}: {body}");
    }
    let (status, answer) = call(&f, "GET", "/v1/profiles/%FF", None).await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("id"))
    );
    // The method refusal still says which methods would do.
    let (_, headers, _) = raw(
        &f,
        Request::delete("/v1/track").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(headers["allow"], "POST");
}

#[tokio::test]
async fn a_journey_shows_its_definition_versions_and_holdout() {
    let f = fixture(&[]).await;
    call(
        &f,
        "POST",
        "/v1/track",
        Some(r#"{"userId": "ann", "event": "signed_up"}"#),
    )
    .await;
    settle(&f).await;
    let (status, welcome) = call(&f, "GET", "/v1/journeys/welcome", None).await;
    assert_eq!(status, StatusCode::OK, "{welcome}");
    assert_eq!(welcome["file"], "welcome.yaml");
    assert_eq!(welcome["definition"]["trigger"]["event"], "signed_up");
    assert_eq!(welcome["definition"]["steps"]["hello"]["template"], "hello");
    let versions = welcome["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{welcome}");
    assert_eq!(versions[0]["version"], welcome["version"]);
    assert_eq!(versions[0]["current"], true);
    assert_eq!(welcome["outcomes"]["completed"], 1);
    // No holdout and no split: everyone is treated, and the treated group is shown whole.
    assert_eq!(
        welcome["holdout"],
        json!({"percent": 0, "entered": 0, "converted": 0, "conversion": 0.0})
    );
    assert_eq!(
        welcome["treated"],
        json!({"entered": 1, "converted": 0, "conversion": 0.0})
    );
    assert_eq!(welcome["variants"], json!({}));
}

const PROMO: &str = "
id: promo
trigger:
  event: promo_seen
goal:
  event: purchased
holdout: 50
steps:
  pick:
    split:
      - {variant: a, weight: 1, goto: offer_a}
      - {variant: b, weight: 1, goto: offer_b}
  offer_a:
    send: email
    template: hello
    next: linger
  offer_b:
    send: email
    template: hello
    next: linger
  linger:
    wait: 7d
";

/// `entered`, `converted` and `conversion` as the journey detail answers them.
fn figures(entered: u64, converted: u64) -> Value {
    json!({
        "entered": entered,
        "converted": converted,
        "conversion": converted as f64 / entered as f64,
    })
}

#[tokio::test]
async fn a_journey_shows_its_holdout_group_apart_from_its_variants_and_every_version() {
    let f = fixture(&[]).await;
    let root = f.daemon.config.journeys.clone();
    write(&root, "promo.yaml", PROMO);
    let (status, answer) = call(&f, "POST", "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let customers: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
    for id in &customers {
        let body = format!(r#"{{"userId": "{id}", "event": "promo_seen"}}"#);
        call(&f, "POST", "/v1/track", Some(&body)).await;
    }
    settle(&f).await;
    // Every other customer buys: the goal converts them.
    for id in customers.iter().step_by(2) {
        let body = format!(r#"{{"userId": "{id}", "event": "purchased"}}"#);
        call(&f, "POST", "/v1/track", Some(&body)).await;
    }
    settle(&f).await;

    // (entered, converted) per group, as the profiles tell each customer's group.
    let mut expected: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for (i, id) in customers.iter().enumerate() {
        let (_, profile) = call(&f, "GET", &format!("/v1/profiles/{id}"), None).await;
        let enrollment = &profile["enrollments"][0];
        assert_eq!(enrollment["journey"], "promo", "{profile}");
        let group = if enrollment["control"] == true {
            "control".to_owned()
        } else {
            enrollment["variant"].as_str().unwrap().to_owned()
        };
        let figures = expected.entry(group).or_default();
        figures.0 += 1;
        figures.1 += u64::from(i % 2 == 0);
    }
    let control = expected.remove("control").unwrap();
    assert!(
        control.1 > 0 && expected.values().all(|v| v.1 > 0),
        "{expected:?}"
    );

    let (status, promo) = call(&f, "GET", "/v1/journeys/promo", None).await;
    assert_eq!(status, StatusCode::OK, "{promo}");
    let mut holdout = figures(control.0, control.1);
    holdout["percent"] = json!(50);
    assert_eq!(promo["holdout"], holdout);
    let variants: serde_json::Map<String, Value> = expected
        .iter()
        .map(|(variant, &(entered, converted))| (variant.clone(), figures(entered, converted)))
        .collect();
    assert_eq!(promo["variants"], Value::Object(variants), "{promo}");
    // With a split the variants are what the holdout compares with.
    assert!(promo.get("treated").is_none(), "{promo}");
    // Steps and outcomes count everyone, the control group included.
    assert_eq!(promo["outcomes"], json!({"converted": 10}));
    let linger = &promo["steps"][3];
    assert_eq!(
        (&linger["id"], &linger["active"]),
        (&json!("linger"), &json!(10))
    );

    // An edit makes a new version; customers stay on theirs, which is still listed.
    let first = promo["version"].clone();
    write(&root, "promo.yaml", &PROMO.replace("7d", "8d"));
    let (status, answer) = call(&f, "POST", "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, promo) = call(&f, "GET", "/v1/journeys/promo", None).await;
    assert_ne!(promo["version"], first);
    let versions = promo["versions"].as_array().unwrap();
    let listed: Vec<(&Value, &Value, &Value)> = versions
        .iter()
        .map(|v| (&v["version"], &v["current"], &v["active"]))
        .collect();
    assert_eq!(
        listed,
        [
            (&promo["version"], &json!(true), &json!(0)),
            (&first, &json!(false), &json!(10)),
        ],
        "{promo}"
    );
    assert!(
        versions.iter().all(|v| v["loaded_at"].is_string()),
        "{promo}"
    );
}
