//! The `slack` channel against a local server standing in for a Slack incoming webhook.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use waymark_channel::testkit::{
    MockServer, Reply, assert_classifies_http_errors, assert_rejects_unknown_fields, sample_message,
};
use waymark_channel::{Channel, ChannelKind, DeliveryError, OutboundMessage};
use waymark_slack::SlackKind;

/// The webhook's path, as Slack hands it out; the last segment is the secret.
const HOOK_PATH: &str = "/services/T0001/B0002/Xq9secretXq9";
const SECRET: &str = "Xq9secretXq9";

/// Slack's answer to an accepted post.
fn ok() -> Reply {
    slack_says(200, "ok")
}

/// Slack answers in plain text: `ok`, or the error's name.
fn slack_says(status: u16, body: &str) -> Reply {
    Reply::text(status, body)
}

fn channel(server: &MockServer) -> Arc<dyn Channel> {
    SlackKind
        .build(
            "sales_alerts",
            &json!({"kind": "slack", "webhook_url": format!("{}{HOOK_PATH}", server.url())}),
        )
        .expect("valid config")
}

/// A message with the `text` a Slack template has, and no `body` (blocks) unless added.
fn message() -> OutboundMessage {
    let mut message = sample_message("sales_alerts", None);
    message.content.remove("body");
    message
}

#[tokio::test]
async fn posts_the_text_as_json_to_the_webhook() {
    let server = MockServer::start(ok()).await;
    let message = message();

    let delivery = channel(&server).deliver(&message).await.expect("posted");

    assert_eq!(delivery.provider_id, None, "webhooks give no message id");
    let request = server.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, HOOK_PATH);
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.json(),
        json!({"text": "You left items worth 5000 RUB in your cart."})
    );
}

#[tokio::test]
async fn a_body_is_sent_as_block_kit_blocks_next_to_the_text() {
    let blocks =
        json!([{"type": "section", "text": {"type": "mrkdwn", "text": "*Ann* left 5000 RUB"}}]);
    for body in [blocks.clone(), json!({ "blocks": blocks })] {
        let server = MockServer::start(ok()).await;
        let mut message = message();
        message.content.insert("body".to_owned(), body.to_string());

        channel(&server).deliver(&message).await.expect("posted");

        assert_eq!(
            server.only_request().json(),
            json!({"text": message.field("text"), "blocks": blocks}),
            "from the body {body}"
        );
    }
}

#[tokio::test]
async fn a_message_slack_would_refuse_is_refused_without_a_request() {
    let server = MockServer::start(ok()).await;
    let channel = channel(&server);

    let mut no_text = message();
    no_text.content.remove("text");
    let mut not_blocks = message();
    not_blocks
        .content
        .insert("body".to_owned(), r#"{"task": "call"}"#.to_owned());
    let mut not_json = message();
    not_json
        .content
        .insert("body".to_owned(), "call ann".to_owned());

    for (message, words) in [
        (no_text, "no `text`"),
        (not_blocks, "blocks"),
        (not_json, "Block Kit"),
    ] {
        match channel.deliver(&message).await {
            Err(DeliveryError::Permanent {
                reason,
                address_gone: false,
            }) => assert!(reason.contains(words), "{reason}"),
            other => panic!("expected a permanent refusal, got {other:?}"),
        }
    }
    assert!(server.requests().is_empty());
}

async fn outcome(answer: Reply) -> Result<waymark_channel::Delivery, DeliveryError> {
    let server = MockServer::start(answer).await;
    channel(&server).deliver(&message()).await
}

#[tokio::test]
async fn a_deleted_or_archived_channel_means_the_address_is_gone() {
    for (status, reason) in [
        (404, "channel_not_found"),
        (404, "no_service"),
        (410, "channel_is_archived"),
    ] {
        match outcome(slack_says(status, reason)).await {
            Err(DeliveryError::Permanent {
                address_gone: true,
                reason: said,
            }) => assert!(said.contains(reason), "{said}"),
            other => panic!("{status} {reason} must mean the address is gone, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn other_refusals_are_permanent_with_slacks_reason() {
    for (status, reason) in [
        (400, "invalid_payload"),
        (400, "no_text"),
        (403, "action_prohibited"),
    ] {
        match outcome(slack_says(status, reason)).await {
            Err(DeliveryError::Permanent {
                address_gone: false,
                reason: said,
            }) => assert!(said.contains(reason), "{said}"),
            other => panic!("{status} {reason} must be permanent, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn rate_limits_and_server_errors_retry() {
    let limited = slack_says(429, "rate_limited").with_header("retry-after", "30");
    match outcome(limited).await {
        Err(DeliveryError::Retryable { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(30)));
        }
        other => panic!("429 must be retryable, got {other:?}"),
    }
    for status in [500, 503] {
        assert!(
            matches!(
                outcome(slack_says(status, "rollup_error")).await,
                Err(DeliveryError::Retryable { .. })
            ),
            "{status} must be retryable"
        );
    }
}

#[tokio::test]
async fn passes_the_testkit_compliance_checks() {
    let server = MockServer::start(ok()).await;
    assert_classifies_http_errors(&server, &*channel(&server), &message()).await;
    assert_rejects_unknown_fields(
        &SlackKind,
        json!({"kind": "slack", "webhook_url": "https://hooks.slack.com/services/T/B/X"}),
    );
    // Incoming webhooks have no idempotency key (see the crate docs), so
    // `assert_passes_idempotency_key` does not apply.
}

#[tokio::test]
async fn the_webhook_secret_stays_out_of_errors() {
    let unreachable = SlackKind
        .build(
            "sales_alerts",
            &json!({"kind": "slack", "webhook_url": format!("http://127.0.0.1:9{HOOK_PATH}"), "timeout": 2}),
        )
        .expect("valid config");
    match unreachable.deliver(&message()).await {
        Err(error @ DeliveryError::Retryable { .. }) => {
            assert!(!error.to_string().contains(SECRET), "{error}");
        }
        other => panic!("an unreachable Slack must be retryable, got {other:?}"),
    }

    let Err(error) = SlackKind.build(
        "sales_alerts",
        &json!({"kind": "slack", "webhook_url": format!("hooks.slack.com{HOOK_PATH}")}),
    ) else {
        panic!("a URL without a scheme must be refused");
    };
    assert!(error.message.contains("webhook_url"), "{error}");
    assert!(!error.to_string().contains(SECRET), "{error}");
}

#[test]
fn config_is_checked() {
    let build = |config: Value| SlackKind.build("sales_alerts", &config).err();
    let missing = build(json!({"kind": "slack"})).expect("a webhook URL is required");
    assert!(missing.message.contains("webhook_url"), "{missing}");
    let zero = build(json!({"kind": "slack", "webhook_url": "https://hooks.slack.com/services/T/B/X", "timeout": 0}))
        .expect("a zero timeout is refused");
    assert!(zero.message.contains("timeout"), "{zero}");
}

/// The one line in `src/main.rs` gives the daemon the kind, next to the built-in ones.
#[test]
fn the_daemon_registry_knows_the_kind() {
    let registry = waymark::default_registry().with(SlackKind);
    let (_, address) = registry
        .build(
            "sales_alerts",
            &json!({"kind": "slack", "webhook_url": "https://hooks.slack.com/services/T/B/X"}),
        )
        .expect("the slack kind is registered");
    assert_eq!(address, None);
    assert!(registry.kind("smtp").is_some(), "built-in kinds stay");
}
