//! The `telegram` channel against a local server standing in for the Bot API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use waymark_channel::testkit::{
    MockServer, Reply, assert_checks_base_url, assert_classifies_http_errors,
    assert_rejects_unknown_fields, sample_message,
};
use waymark_channel::{
    Channel, ChannelKind, DeliveryError, ReceiptError, ReceiptStatus, StatusCallback,
};
use waymark_channel_telegram::TelegramKind;

const TOKEN: &str = "123456:ABC-secret";
const SECRET: &str = "hook_secret-1";

fn sent(message_id: i64) -> Reply {
    Reply::json(
        200,
        json!({"ok": true, "result": {"message_id": message_id, "date": 1, "chat": {"id": 1001, "type": "private"}, "text": "..."}}),
    )
}

fn channel(server: &MockServer, extra: Value) -> Arc<dyn Channel> {
    let mut config = json!({"kind": "telegram", "bot_token": TOKEN, "base_url": server.url()});
    for (k, v) in extra.as_object().expect("an object") {
        config[k] = v.clone();
    }
    TelegramKind
        .build("telegram", &config)
        .expect("valid config")
}

#[tokio::test]
async fn sends_a_message_as_the_bot_api_documents() {
    let server = MockServer::start(sent(42)).await;
    let channel = channel(&server, json!({"parse_mode": "HTML"}));
    let message = sample_message("telegram", Some("1001"));

    let delivery = channel.deliver(&message).await.expect("delivered");

    assert_eq!(delivery.provider_id.as_deref(), Some("1001:42"));
    let request = server.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, format!("/bot{TOKEN}/sendMessage"));
    assert!(
        request
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{request:#?}"
    );
    assert_eq!(
        request.json(),
        json!({"chat_id": 1001, "text": message.field("text"), "parse_mode": "HTML"})
    );
    // Telegram has no idempotency field (see the crate docs), so
    // `assert_passes_idempotency_key` does not apply: the outbox's once-only hand-over is
    // the protection.
}

#[tokio::test]
async fn a_username_address_is_sent_as_a_string_and_no_parse_mode_by_default() {
    let server = MockServer::start(sent(7)).await;
    let channel = channel(&server, json!({}));

    channel
        .deliver(&sample_message("telegram", Some("@shop_news")))
        .await
        .expect("delivered");

    let body = server.only_request().json();
    assert_eq!(body["chat_id"], json!("@shop_news"));
    assert!(body.get("parse_mode").is_none(), "{body}");
}

#[tokio::test]
async fn a_message_without_address_or_text_is_refused_without_a_request() {
    let server = MockServer::start(sent(1)).await;
    let channel = channel(&server, json!({}));

    let no_address = channel.deliver(&sample_message("telegram", None)).await;
    assert!(matches!(no_address, Err(DeliveryError::Permanent { .. })));

    let mut no_text = sample_message("telegram", Some("1001"));
    no_text.content.remove("text");
    let no_text = channel.deliver(&no_text).await;
    assert!(matches!(no_text, Err(DeliveryError::Permanent { .. })));

    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn classifies_http_errors() {
    let server = MockServer::start(sent(1)).await;
    let channel = channel(&server, json!({}));
    assert_classifies_http_errors(
        &server,
        &*channel,
        &sample_message("telegram", Some("1001")),
    )
    .await;
}

async fn outcome(answer: Reply) -> Result<waymark_channel::Delivery, DeliveryError> {
    let server = MockServer::start(answer).await;
    channel(&server, json!({}))
        .deliver(&sample_message("telegram", Some("1001")))
        .await
}

#[tokio::test]
async fn a_blocked_bot_or_a_dead_chat_means_the_address_is_gone() {
    for (status, description) in [
        (403, "Forbidden: bot was blocked by the user"),
        (403, "Forbidden: user is deactivated"),
        (400, "Bad Request: chat not found"),
    ] {
        let answer = Reply::json(
            status,
            json!({"ok": false, "error_code": status, "description": description}),
        );
        match outcome(answer).await {
            Err(DeliveryError::Permanent {
                address_gone: true,
                reason,
            }) => assert!(reason.contains(description), "{reason}"),
            other => panic!("`{description}` must mean the address is gone, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn flood_control_waits_as_long_as_telegram_asks() {
    let answer = Reply::json(
        429,
        json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 35", "parameters": {"retry_after": 35}}),
    );
    match outcome(answer).await {
        Err(DeliveryError::Retryable { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(35)));
        }
        other => panic!("429 must be retryable, got {other:?}"),
    }
}

/// An HTTP date (RFC 9110) `seconds` from now, as a `Retry-After` header may carry it.
fn http_date_in(seconds: i64) -> String {
    #[allow(
        clippy::disallowed_methods,
        reason = "the adapter reads the date against the wall clock"
    )]
    let now = chrono::Utc::now();
    (now + chrono::TimeDelta::seconds(seconds))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

#[tokio::test]
async fn flood_control_without_parameters_heeds_a_retry_after_date() {
    let answer = Reply::json(
        429,
        json!({"ok": false, "error_code": 429, "description": "Too Many Requests"}),
    )
    .with_header("retry-after", &http_date_in(120));
    match outcome(answer).await {
        Err(DeliveryError::Retryable {
            retry_after: Some(wait),
            ..
        }) => assert!(
            (Duration::from_secs(100)..=Duration::from_secs(120)).contains(&wait),
            "{wait:?}"
        ),
        other => panic!("429 must be retryable after the date, got {other:?}"),
    }
}

#[tokio::test]
async fn a_chat_id_with_stray_spaces_is_still_sent_as_a_number() {
    let server = MockServer::start(sent(3)).await;
    let delivery = channel(&server, json!({}))
        .deliver(&sample_message("telegram", Some(" -1001234567890\n")))
        .await
        .expect("delivered");

    assert_eq!(
        server.only_request().json()["chat_id"],
        json!(-1_001_234_567_890_i64)
    );
    // The answer's chat names the message, whatever the address looked like.
    assert_eq!(delivery.provider_id.as_deref(), Some("1001:3"));
}

#[tokio::test]
async fn server_errors_retry_and_other_refusals_are_permanent() {
    let answer = Reply::json(
        502,
        json!({"ok": false, "error_code": 502, "description": "Bad Gateway"}),
    );
    assert!(matches!(
        outcome(answer).await,
        Err(DeliveryError::Retryable { .. })
    ));

    let answer = Reply::json(
        400,
        json!({"ok": false, "error_code": 400, "description": "Bad Request: can't parse entities: unclosed tag"}),
    );
    assert!(matches!(
        outcome(answer).await,
        Err(DeliveryError::Permanent {
            address_gone: false,
            ..
        })
    ));
}

#[tokio::test]
async fn an_unreachable_api_is_retryable_and_the_reason_hides_the_token() {
    let server = MockServer::start(sent(1)).await;
    let url = server.url().to_owned();
    drop(server);
    // Let the aborted server task release its socket.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let channel = TelegramKind
        .build(
            "telegram",
            &json!({"kind": "telegram", "bot_token": TOKEN, "base_url": url, "timeout": 2}),
        )
        .expect("valid config");

    match channel
        .deliver(&sample_message("telegram", Some("1001")))
        .await
    {
        Err(DeliveryError::Retryable { reason, .. }) => {
            assert!(!reason.contains("ABC-secret"), "the token leaked: {reason}");
        }
        other => panic!("a connection error must be retryable, got {other:?}"),
    }
}

#[test]
fn rejects_unknown_fields() {
    assert_rejects_unknown_fields(
        &TelegramKind,
        json!({"kind": "telegram", "bot_token": TOKEN}),
    );
    assert_checks_base_url(
        &TelegramKind,
        json!({"kind": "telegram", "bot_token": TOKEN}),
    );
}

#[test]
fn config_errors_name_the_key() {
    for (config, key) in [
        (json!({"bot_token": "a/b"}), "bot_token"),
        (
            json!({"bot_token": TOKEN, "base_url": "api.telegram.org"}),
            "base_url",
        ),
        (
            json!({"bot_token": TOKEN, "webhook_secret": "has space"}),
            "webhook_secret",
        ),
        (json!({"bot_token": TOKEN, "timeout": 0}), "timeout"),
        (json!({}), "bot_token"),
    ] {
        let Err(error) = TelegramKind.build("telegram", &config) else {
            panic!("{config} must be refused");
        };
        assert!(error.message.contains(key), "{key}: {error}");
    }
}

fn update(secret: Option<&str>, body: &Value) -> StatusCallback {
    let mut headers = BTreeMap::new();
    if let Some(secret) = secret {
        headers.insert(
            "x-telegram-bot-api-secret-token".to_owned(),
            secret.to_owned(),
        );
    }
    StatusCallback {
        url: "https://waymark.example/v1/channels/telegram/status".to_owned(),
        headers,
        body: body.to_string().into_bytes(),
    }
}

fn receipts_channel() -> Arc<dyn Channel> {
    TelegramKind
        .build(
            "telegram",
            &json!({"kind": "telegram", "bot_token": TOKEN, "webhook_secret": SECRET}),
        )
        .expect("valid config")
}

#[test]
fn a_blocked_bot_update_bounces_the_chat() {
    let body = json!({
        "update_id": 10,
        "my_chat_member": {
            "chat": {"id": 1001, "type": "private"},
            "from": {"id": 1001, "is_bot": false, "first_name": "Ann"},
            "date": 1_700_000_000,
            "old_chat_member": {"status": "member", "user": {"id": 9, "is_bot": true, "first_name": "Shop"}},
            "new_chat_member": {"status": "kicked", "until_date": 0, "user": {"id": 9, "is_bot": true, "first_name": "Shop"}}
        }
    });
    let receipts = receipts_channel()
        .receipts(&update(Some(SECRET), &body))
        .expect("verified");
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        receipts[0].status,
        ReceiptStatus::Bounced { address_gone: true }
    );
    assert_eq!(receipts[0].address.as_deref(), Some("1001"));
}

#[test]
fn a_bot_removed_from_a_group_bounces_the_group() {
    let body = json!({
        "update_id": 14,
        "my_chat_member": {
            "chat": {"id": -1_001_234_567_890_i64, "type": "supergroup", "title": "Shop fans"},
            "from": {"id": 1001, "is_bot": false, "first_name": "Ann"},
            "date": 1_700_000_000,
            "old_chat_member": {"status": "member", "user": {"id": 9, "is_bot": true, "first_name": "Shop"}},
            "new_chat_member": {"status": "left", "user": {"id": 9, "is_bot": true, "first_name": "Shop"}}
        }
    });
    let receipts = receipts_channel()
        .receipts(&update(Some(SECRET), &body))
        .expect("verified");
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        receipts[0].status,
        ReceiptStatus::Bounced { address_gone: true }
    );
    assert_eq!(receipts[0].address.as_deref(), Some("-1001234567890"));
}

#[test]
fn a_button_press_is_a_click_on_that_message() {
    let body = json!({
        "update_id": 11,
        "callback_query": {
            "id": "4382",
            "from": {"id": 1001, "is_bot": false, "first_name": "Ann"},
            "message": {"message_id": 42, "date": 1, "chat": {"id": 1001, "type": "private"}},
            "chat_instance": "-77",
            "data": "open_cart"
        }
    });
    let receipts = receipts_channel()
        .receipts(&update(Some(SECRET), &body))
        .expect("verified");
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].status, ReceiptStatus::Clicked);
    assert_eq!(receipts[0].provider_id.as_deref(), Some("1001:42"));
}

#[test]
fn other_updates_say_nothing() {
    let body = json!({
        "update_id": 12,
        "message": {"message_id": 5, "date": 1, "chat": {"id": 1001, "type": "private"}, "text": "hi"}
    });
    let unblocked = json!({
        "update_id": 13,
        "my_chat_member": {
            "chat": {"id": 1001, "type": "private"},
            "from": {"id": 1001, "is_bot": false, "first_name": "Ann"},
            "date": 1,
            "old_chat_member": {"status": "kicked", "until_date": 0, "user": {"id": 9, "is_bot": true, "first_name": "Shop"}},
            "new_chat_member": {"status": "member", "user": {"id": 9, "is_bot": true, "first_name": "Shop"}}
        }
    });
    let channel = receipts_channel();
    assert!(
        channel
            .receipts(&update(Some(SECRET), &body))
            .expect("verified")
            .is_empty()
    );
    assert!(
        channel
            .receipts(&update(Some(SECRET), &unblocked))
            .expect("verified")
            .is_empty()
    );
}

#[test]
fn updates_without_the_right_secret_are_refused() {
    let body = json!({"update_id": 1});
    let channel = receipts_channel();
    assert_eq!(
        channel.receipts(&update(Some("wrong"), &body)).err(),
        Some(ReceiptError::BadSignature)
    );
    assert_eq!(
        channel.receipts(&update(None, &body)).err(),
        Some(ReceiptError::BadSignature)
    );

    let mut garbage = update(Some(SECRET), &body);
    garbage.body = b"not json".to_vec();
    assert!(matches!(
        channel.receipts(&garbage),
        Err(ReceiptError::Malformed(_))
    ));
}

#[test]
fn without_a_webhook_secret_updates_are_not_accepted() {
    let channel = TelegramKind
        .build("telegram", &json!({"kind": "telegram", "bot_token": TOKEN}))
        .expect("valid config");
    assert_eq!(
        channel
            .receipts(&update(Some(SECRET), &json!({"update_id": 1})))
            .err(),
        Some(ReceiptError::Unsupported)
    );
}
