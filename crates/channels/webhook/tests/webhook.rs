//! The webhook adapter against a local HTTP server.

use serde_json::json;
use waymark_channel::testkit::{
    MockServer, Reply, assert_checks_base_url, assert_classifies_http_errors,
    assert_passes_idempotency_key, assert_rejects_unknown_fields, sample_message,
};
use waymark_channel::{ChannelKind, DeliveryError};
use waymark_channel_webhook::{WebhookKind, sign, verify_signature};

fn config(server: &MockServer) -> serde_json::Value {
    json!({"kind": "webhook", "url": format!("{}/tasks", server.url()), "secret": "s3cret", "headers": {"X-Team": "growth"}})
}

#[tokio::test]
async fn posts_the_rendered_body_signed_with_the_secret() {
    let server = MockServer::start(Reply::json(201, json!({"id": "task-77"}))).await;
    let channel = WebhookKind.build("crm_task", &config(&server)).unwrap();
    let message = sample_message("crm_task", None);
    let delivery = channel.deliver(&message).await.unwrap();
    assert_eq!(delivery.provider_id.as_deref(), Some("task-77"));

    let request = server.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/tasks");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("x-team"), Some("growth"));
    assert_eq!(request.header("x-waymark-customer"), Some("ann"));
    assert_eq!(request.header("x-waymark-journey"), Some("abandoned_cart"));
    assert_eq!(request.json(), json!({"task": "call", "customer": "ann"}));
    assert_eq!(
        request.header("idempotency-key"),
        Some(message.idempotency_key.as_str())
    );
    assert_passes_idempotency_key(&request, &message);

    let timestamp: u64 = request
        .header("x-waymark-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    let signature = request.header("x-waymark-signature").unwrap();
    assert!(verify_signature(
        "s3cret",
        timestamp,
        &request.body,
        signature
    ));
    assert!(!verify_signature(
        "wrong",
        timestamp,
        &request.body,
        signature
    ));
    assert!(!verify_signature(
        "s3cret",
        timestamp + 1,
        &request.body,
        signature
    ));
    assert_eq!(signature, sign("s3cret", timestamp, &request.body));
}

#[test]
fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
    // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
    assert_eq!(
        sign("key", 1_700_000_000, br#"{"a":1}"#),
        "v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
    );
}

#[tokio::test]
async fn without_a_secret_there_is_no_signature() {
    let server = MockServer::start(Reply::json(200, json!({}))).await;
    let channel = WebhookKind
        .build("hook", &json!({"kind": "webhook", "url": server.url()}))
        .unwrap();
    channel
        .deliver(&sample_message("hook", None))
        .await
        .unwrap();
    assert_eq!(server.only_request().header("x-waymark-signature"), None);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_without_a_request() {
    let server = MockServer::start(Reply::json(200, json!({}))).await;
    let channel = WebhookKind.build("hook", &config(&server)).unwrap();
    let mut message = sample_message("hook", None);
    message
        .content
        .insert("body".to_owned(), "call ann".to_owned());
    assert!(matches!(
        channel.deliver(&message).await,
        Err(DeliveryError::Permanent { .. })
    ));
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn errors_are_classified() {
    let server = MockServer::start(Reply::json(200, json!({}))).await;
    let channel = WebhookKind.build("hook", &config(&server)).unwrap();
    assert_classifies_http_errors(&server, channel.as_ref(), &sample_message("hook", None)).await;
    let closed = WebhookKind
        .build(
            "hook",
            &json!({"kind": "webhook", "url": "http://127.0.0.1:9/x", "timeout": 2}),
        )
        .unwrap();
    assert!(matches!(
        closed.deliver(&sample_message("hook", None)).await,
        Err(DeliveryError::Retryable { .. })
    ));
}

/// `base_url` points the channel at another server (a proxy, a sandbox, this test's) and
/// keeps the path and query of `url`.
#[tokio::test]
async fn base_url_moves_the_url_onto_another_server() {
    let server = MockServer::start(Reply::json(200, json!({}))).await;
    for (base_url, path) in [
        (server.url().to_owned(), "/tasks"),
        (format!("{}/", server.url()), "/tasks"),
        (format!("{}/proxy/crm/", server.url()), "/proxy/crm/tasks"),
    ] {
        let channel = WebhookKind
            .build(
                "crm_task",
                &json!({"kind": "webhook", "url": "https://crm.example/tasks?team=growth",
                        "base_url": base_url}),
            )
            .unwrap();
        channel
            .deliver(&sample_message("crm_task", None))
            .await
            .unwrap();
        let request = server.requests().pop().unwrap();
        assert_eq!(
            (request.path.as_str(), request.query.as_str()),
            (path, "team=growth"),
            "{base_url}"
        );
        assert_eq!(request.json(), json!({"task": "call", "customer": "ann"}));
    }
}

#[test]
fn base_url_must_be_an_absolute_http_url() {
    assert_checks_base_url(
        &WebhookKind,
        json!({"kind": "webhook", "url": "https://crm.example/tasks"}),
    );
    let error = WebhookKind
        .build(
            "crm_task",
            &json!({"kind": "webhook", "url": "https://crm.example/tasks", "base_url": "crm.sandbox.example"}),
        )
        .err()
        .unwrap();
    assert_eq!(error.channel, "crm_task");
    assert!(
        error
            .message
            .starts_with("`base_url`: expected an absolute http:// or https:// URL"),
        "{error}"
    );
}

#[test]
fn config_is_checked_and_unknown_keys_refused() {
    assert_rejects_unknown_fields(
        &WebhookKind,
        json!({"kind": "webhook", "url": "https://crm.example/tasks"}),
    );
    let error = WebhookKind
        .build("hook", &json!({"kind": "webhook", "url": "ftp://x"}))
        .err()
        .unwrap();
    assert!(error.message.contains("url"), "{error}");
    assert!(
        WebhookKind
            .build("hook", &json!({"kind": "webhook"}))
            .is_err()
    );
}

/// Following a 302 would turn the POST into a GET without the body, which the receiver
/// answers 200: the message would count as delivered and never arrive.
#[tokio::test]
async fn a_redirect_fails_the_message_and_is_not_followed() {
    let server = MockServer::start(Reply::json(200, json!({"id": "lost"}))).await;
    server.push(Reply::text(302, "").with_header("location", "/tasks/"));
    let channel = WebhookKind.build("crm_task", &config(&server)).unwrap();
    match channel.deliver(&sample_message("crm_task", None)).await {
        Err(DeliveryError::Permanent {
            address_gone: false,
            reason,
        }) => assert!(
            reason.contains("302") && reason.contains("redirect"),
            "{reason}"
        ),
        other => panic!("a redirect must fail the message, got {other:?}"),
    }
    let request = server.only_request();
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/tasks")
    );
}
