//! The `viber` channel against a local server standing in for the Viber REST bot API.

use std::collections::BTreeMap;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use waymark_channel::testkit::{
    MockServer, Reply, assert_checks_base_url, assert_classifies_http_errors,
    assert_passes_idempotency_key, assert_rejects_unknown_fields, sample_message,
};
use waymark_channel::{
    Channel, ChannelKind, DeliveryError, OutboundMessage, ReceiptError, ReceiptStatus,
    StatusCallback,
};
use waymark_channel_viber::ViberKind;

const TOKEN: &str = "445da6az1s345z78-dazcczb2542zv51a-e0vc5fva17480im9";
const USER: &str = "01234567890A=";

fn sent() -> Reply {
    Reply::json(
        200,
        json!({"status": 0, "status_message": "ok", "message_token": 5_741_311_803_571_721_087_u64, "chat_hostname": "SN-CHAT-05_"}),
    )
}

fn refused(status: i64, words: &str) -> Reply {
    // Viber reports API errors with HTTP 200.
    Reply::json(
        200,
        json!({"status": status, "status_message": words, "chat_hostname": "SN-CHAT-05_"}),
    )
}

fn channel(server: &MockServer, extra: Value) -> Arc<dyn Channel> {
    let mut config = json!({
        "kind": "viber",
        "auth_token": TOKEN,
        "sender_name": "Shop",
        "base_url": server.url(),
    });
    for (k, v) in extra.as_object().expect("an object") {
        config[k] = v.clone();
    }
    ViberKind.build("viber", &config).expect("valid config")
}

fn message() -> OutboundMessage {
    sample_message("viber", Some(USER))
}

#[tokio::test]
async fn sends_a_message_as_the_viber_api_documents() {
    let server = MockServer::start(sent()).await;
    let message = message();

    let delivery = channel(
        &server,
        json!({"sender_avatar": "https://shop.example/bot.png"}),
    )
    .deliver(&message)
    .await
    .expect("delivered");

    // All 19 digits: a 64-bit token must not go through a float.
    assert_eq!(delivery.provider_id.as_deref(), Some("5741311803571721087"));
    let request = server.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/pa/send_message");
    assert_eq!(request.header("x-viber-auth-token"), Some(TOKEN));
    assert!(
        request
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{request:#?}"
    );
    assert_eq!(
        request.json(),
        json!({
            "receiver": USER,
            "min_api_version": 1,
            "sender": {"name": "Shop", "avatar": "https://shop.example/bot.png"},
            "tracking_data": message.idempotency_key,
            "type": "text",
            "text": message.field("text"),
        })
    );
    assert_passes_idempotency_key(&request, &message);
}

#[tokio::test]
async fn classifies_http_errors() {
    let server = MockServer::start(sent()).await;
    assert_classifies_http_errors(&server, &*channel(&server, json!({})), &message()).await;
}

async fn outcome(answer: Reply) -> Result<waymark_channel::Delivery, DeliveryError> {
    let server = MockServer::start(answer).await;
    channel(&server, json!({})).deliver(&message()).await
}

#[tokio::test]
async fn status_codes_in_a_200_answer_are_classified() {
    for (status, words) in [
        (6, "receiverNotSubscribed"),
        (5, "receiverNotRegistered"),
        (11, "receiverNoSuitableDevice"),
    ] {
        match outcome(refused(status, words)).await {
            Err(DeliveryError::Permanent {
                address_gone: true,
                reason,
            }) => assert!(reason.contains(words), "{reason}"),
            other => panic!("status {status} must mean the address is gone, got {other:?}"),
        }
    }
    assert!(matches!(
        outcome(refused(12, "tooManyRequests")).await,
        Err(DeliveryError::Retryable { .. })
    ));
    for (status, words) in [
        (2, "invalidAuthToken"),
        (3, "badData"),
        (7, "publicAccountBlocked"),
    ] {
        assert!(
            matches!(
                outcome(refused(status, words)).await,
                Err(DeliveryError::Permanent {
                    address_gone: false,
                    ..
                })
            ),
            "status {status} must be permanent"
        );
    }
    assert!(matches!(
        outcome(refused(99, "General error")).await,
        Err(DeliveryError::Retryable { .. })
    ));
}

#[tokio::test]
async fn a_message_without_address_or_text_is_refused_without_a_request() {
    let server = MockServer::start(sent()).await;
    let channel = channel(&server, json!({}));
    assert!(matches!(
        channel.deliver(&sample_message("viber", None)).await,
        Err(DeliveryError::Permanent { .. })
    ));
    let mut no_text = message();
    no_text.content.remove("text");
    assert!(matches!(
        channel.deliver(&no_text).await,
        Err(DeliveryError::Permanent { .. })
    ));
    assert!(server.requests().is_empty());
}

#[test]
fn rejects_unknown_fields() {
    assert_rejects_unknown_fields(
        &ViberKind,
        json!({"kind": "viber", "auth_token": TOKEN, "sender_name": "Shop"}),
    );
    assert_checks_base_url(
        &ViberKind,
        json!({"kind": "viber", "auth_token": TOKEN, "sender_name": "Shop"}),
    );
}

#[test]
fn config_errors_name_the_key() {
    for (config, key) in [
        (
            json!({"auth_token": TOKEN, "sender_name": "A name far longer than Viber allows"}),
            "sender_name",
        ),
        (
            json!({"auth_token": TOKEN, "sender_name": ""}),
            "sender_name",
        ),
        (
            json!({"auth_token": "", "sender_name": "Shop"}),
            "auth_token",
        ),
        (
            json!({"auth_token": TOKEN, "sender_name": "Shop", "sender_avatar": "bot.png"}),
            "sender_avatar",
        ),
        (
            json!({"auth_token": TOKEN, "sender_name": "Shop", "base_url": "chatapi.viber.com"}),
            "base_url",
        ),
        (json!({"auth_token": TOKEN}), "sender_name"),
    ] {
        let Err(error) = ViberKind.build("viber", &config) else {
            panic!("{config} must be refused");
        };
        assert!(error.message.contains(key), "{key}: {error}");
    }
}

fn sign(body: &[u8], key: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn callback(signature: Option<String>, body: &Value) -> StatusCallback {
    let mut headers = BTreeMap::new();
    if let Some(signature) = signature {
        headers.insert("x-viber-content-signature".to_owned(), signature);
    }
    StatusCallback {
        url: "https://waymark.example/v1/channels/viber/status".to_owned(),
        headers,
        body: body.to_string().into_bytes(),
    }
}

fn receipts_channel() -> Arc<dyn Channel> {
    ViberKind
        .build(
            "viber",
            &json!({"kind": "viber", "auth_token": TOKEN, "sender_name": "Shop"}),
        )
        .expect("valid config")
}

fn signed(body: &Value) -> StatusCallback {
    callback(Some(sign(body.to_string().as_bytes(), TOKEN)), body)
}

#[test]
fn signed_callbacks_become_receipts() {
    let channel = receipts_channel();
    for (event, expected) in [
        ("delivered", ReceiptStatus::Delivered),
        ("seen", ReceiptStatus::Opened),
        (
            "failed",
            ReceiptStatus::Bounced {
                address_gone: false,
            },
        ),
    ] {
        let mut body = json!({
            "event": event,
            "timestamp": 1_457_764_197_627_u64,
            "message_token": 4_912_661_846_655_238_145_u64,
            "user_id": USER,
        });
        if event == "failed" {
            body["desc"] = json!("failure description");
        }
        let receipts = channel.receipts(&signed(&body)).expect("verified");
        assert_eq!(receipts.len(), 1, "{event}");
        assert_eq!(receipts[0].status, expected, "{event}");
        assert_eq!(
            receipts[0].provider_id.as_deref(),
            Some("4912661846655238145")
        );
        assert_eq!(receipts[0].address.as_deref(), Some(USER));
    }
}

#[test]
fn an_unsubscribe_means_the_address_is_gone() {
    let body = json!({"event": "unsubscribed", "timestamp": 1_457_764_197_627_u64, "user_id": USER, "message_token": 4_912_661_846_655_238_145_u64});
    let receipts = receipts_channel()
        .receipts(&signed(&body))
        .expect("verified");
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        receipts[0].status,
        ReceiptStatus::Bounced { address_gone: true }
    );
    assert_eq!(receipts[0].address.as_deref(), Some(USER));
    // The token is the callback's own, no message's: matched by it, the receipt would find
    // nothing. The daemon matches by the address instead.
    assert_eq!(receipts[0].provider_id, None);
}

#[test]
fn other_events_give_no_receipts() {
    let body = json!({
        "event": "message",
        "timestamp": 1_457_764_197_627_u64,
        "message_token": 4_912_661_846_655_238_145_u64,
        "sender": {"id": USER, "name": "Ann"},
        "message": {"type": "text", "text": "hi", "tracking_data": "wm-0123456789abcdef"}
    });
    assert!(
        receipts_channel()
            .receipts(&signed(&body))
            .expect("verified")
            .is_empty()
    );
}

#[test]
fn callbacks_with_a_wrong_or_missing_signature_are_refused() {
    let body = json!({"event": "delivered", "timestamp": 1, "message_token": 1, "user_id": USER});
    let channel = receipts_channel();
    for signature in [
        Some(sign(body.to_string().as_bytes(), "another token")),
        Some(sign(b"another body", TOKEN)),
        Some("not hex".to_owned()),
        None,
    ] {
        assert_eq!(
            channel.receipts(&callback(signature.clone(), &body)).err(),
            Some(ReceiptError::BadSignature),
            "{signature:?}"
        );
    }
    let mut garbage = signed(&body);
    garbage.body = b"not json".to_vec();
    garbage.headers.insert(
        "x-viber-content-signature".to_owned(),
        sign(b"not json", TOKEN),
    );
    assert!(matches!(
        channel.receipts(&garbage),
        Err(ReceiptError::Malformed(_))
    ));
}
