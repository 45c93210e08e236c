//! The `vk` channel against a local server standing in for the VK API.

use std::sync::Arc;

use serde_json::json;
use waymark_channel::testkit::{
    MockServer, Reply, assert_checks_base_url, assert_classifies_http_errors,
    assert_rejects_unknown_fields, sample_message,
};
use waymark_channel::{
    Channel, ChannelKind, DeliveryError, OutboundMessage, ReceiptError, StatusCallback,
};
use waymark_channel_vk::{VkKind, random_id};

const TOKEN: &str = "vk1.a.community-secret";
const USER: &str = "210700286";

fn sent(message_id: i64) -> Reply {
    Reply::json(200, json!({"response": message_id}))
}

fn vk_error(code: i64, message: &str) -> Reply {
    // VK reports API errors with HTTP 200.
    Reply::json(
        200,
        json!({"error": {
            "error_code": code,
            "error_msg": message,
            "request_params": [{"key": "method", "value": "messages.send"}]
        }}),
    )
}

fn channel(server: &MockServer) -> Arc<dyn Channel> {
    VkKind
        .build(
            "vk",
            &json!({"kind": "vk", "access_token": TOKEN, "base_url": server.url()}),
        )
        .expect("valid config")
}

fn message() -> OutboundMessage {
    sample_message("vk", Some(USER))
}

#[tokio::test]
async fn sends_a_message_as_the_vk_api_documents() {
    let server = MockServer::start(sent(4242)).await;
    let message = message();

    let delivery = channel(&server).deliver(&message).await.expect("delivered");

    assert_eq!(delivery.provider_id.as_deref(), Some("4242"));
    let request = server.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/method/messages.send");
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    // The token goes in the body, never the query string.
    assert_eq!(request.query, "");
    let form = request.form();
    assert_eq!(form["user_id"], USER);
    assert_eq!(form["message"], message.field("text"));
    assert_eq!(form["access_token"], TOKEN);
    assert_eq!(form["v"], "5.199");
    assert_eq!(form.len(), 5, "{form:?}");
    // VK has no field for a string key: `random_id` is its deduplication key, derived
    // from the idempotency key, so `assert_passes_idempotency_key` (which looks for the key
    // verbatim) does not apply. What matters is that a retry carries the same `random_id`.
    assert_eq!(
        form["random_id"],
        random_id(&message.idempotency_key).to_string()
    );
}

#[tokio::test]
async fn a_retry_carries_the_same_random_id_and_another_message_another() {
    let server = MockServer::start(sent(1)).await;
    let channel = channel(&server);
    let first = message();
    let mut other = message();
    other.idempotency_key = "wm-fedcba9876543210".to_owned();

    channel.deliver(&first).await.expect("delivered");
    channel.deliver(&first).await.expect("delivered");
    channel.deliver(&other).await.expect("delivered");

    let ids: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.form()["random_id"].clone())
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
}

#[tokio::test]
async fn the_api_version_is_configurable() {
    let server = MockServer::start(sent(1)).await;
    let channel = VkKind
        .build(
            "vk",
            &json!({"kind": "vk", "access_token": TOKEN, "api_version": "5.131", "base_url": server.url()}),
        )
        .expect("valid config");
    channel.deliver(&message()).await.expect("delivered");
    assert_eq!(server.only_request().form()["v"], "5.131");
}

#[tokio::test]
async fn classifies_http_errors() {
    let server = MockServer::start(sent(1)).await;
    assert_classifies_http_errors(&server, &*channel(&server), &message()).await;
}

async fn outcome(answer: Reply) -> Result<waymark_channel::Delivery, DeliveryError> {
    let server = MockServer::start(answer).await;
    channel(&server).deliver(&message()).await
}

#[tokio::test]
async fn http_200_with_an_error_is_classified_by_its_code() {
    for (code, words) in [
        (901, "Can't send messages for users without permission"),
        (
            902,
            "Can't send messages to this user due to their privacy settings",
        ),
        (900, "Can't send messages for users from blacklist"),
    ] {
        match outcome(vk_error(code, words)).await {
            Err(DeliveryError::Permanent {
                address_gone: true,
                reason,
            }) => assert!(reason.contains(words), "{reason}"),
            other => panic!("VK error {code} must mean the address is gone, got {other:?}"),
        }
    }
    for (code, words) in [
        (6, "Too many requests per second"),
        (9, "Flood control"),
        (10, "Internal server error"),
    ] {
        assert!(
            matches!(
                outcome(vk_error(code, words)).await,
                Err(DeliveryError::Retryable { .. })
            ),
            "VK error {code} must be retryable"
        );
    }
    for (code, words) in [
        (5, "User authorization failed: invalid access_token"),
        (914, "Message is too long"),
    ] {
        assert!(
            matches!(
                outcome(vk_error(code, words)).await,
                Err(DeliveryError::Permanent {
                    address_gone: false,
                    ..
                })
            ),
            "VK error {code} must be permanent"
        );
    }
}

#[tokio::test]
async fn the_peer_array_answer_is_understood() {
    let answer = Reply::json(
        200,
        json!({"response": [{"peer_id": 210700286, "message_id": 77, "conversation_message_id": 3}]}),
    );
    let delivery = outcome(answer).await.expect("delivered");
    assert_eq!(delivery.provider_id.as_deref(), Some("77"));

    let refused = Reply::json(
        200,
        json!({"response": [{"peer_id": 210700286, "error": {"error_code": 901, "error_msg": "Can't send messages for users without permission"}}]}),
    );
    assert!(matches!(
        outcome(refused).await,
        Err(DeliveryError::Permanent {
            address_gone: true,
            ..
        })
    ));
}

#[tokio::test]
async fn a_non_numeric_address_is_gone_without_a_request() {
    let server = MockServer::start(sent(1)).await;
    let result = channel(&server)
        .deliver(&sample_message("vk", Some("durov")))
        .await;
    assert!(matches!(
        result,
        Err(DeliveryError::Permanent {
            address_gone: true,
            ..
        })
    ));
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn reasons_never_hold_the_token() {
    let Err(DeliveryError::Permanent { reason, .. }) =
        outcome(vk_error(5, "User authorization failed")).await
    else {
        panic!("an authorization failure is permanent");
    };
    assert!(!reason.contains(TOKEN), "{reason}");
}

#[test]
fn rejects_unknown_fields() {
    assert_rejects_unknown_fields(&VkKind, json!({"kind": "vk", "access_token": TOKEN}));
    assert_checks_base_url(&VkKind, json!({"kind": "vk", "access_token": TOKEN}));
}

#[test]
fn config_errors_name_the_key() {
    for (config, key) in [
        (json!({"access_token": ""}), "access_token"),
        (
            json!({"access_token": TOKEN, "api_version": "v5"}),
            "api_version",
        ),
        (
            json!({"access_token": TOKEN, "base_url": "api.vk.com"}),
            "base_url",
        ),
        (json!({"access_token": TOKEN, "timeout": 0}), "timeout"),
    ] {
        let Err(error) = VkKind.build("vk", &config) else {
            panic!("{config} must be refused");
        };
        assert!(error.message.contains(key), "{key}: {error}");
    }
}

#[test]
fn receipts_are_not_supported() {
    let channel = VkKind
        .build("vk", &json!({"kind": "vk", "access_token": TOKEN}))
        .expect("valid config");
    assert_eq!(
        channel.receipts(&StatusCallback::default()).err(),
        Some(ReceiptError::Unsupported)
    );
}
