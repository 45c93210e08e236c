//! The `whatsapp` channel against a local server standing in for the Cloud API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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
use waymark_channel_whatsapp::WhatsAppKind;

const TOKEN: &str = "EAAG-secret-token";
const PHONE_ID: &str = "106540352242922";
const APP_SECRET: &str = "app-secret-42";
const PHONE: &str = "+79161234567";

fn accepted() -> Reply {
    Reply::json(
        200,
        json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": PHONE, "wa_id": "79161234567"}],
            "messages": [{"id": "wamid.HBgLMTY0NjcwNDM1OTUVAgARGBI1RjQyNUE3NEYxMzAzMzQ5MkEA"}]
        }),
    )
}

fn channel(server: &MockServer) -> Arc<dyn Channel> {
    WhatsAppKind
        .build(
            "whatsapp",
            &json!({
                "kind": "whatsapp",
                "access_token": TOKEN,
                "phone_number_id": PHONE_ID,
                "base_url": server.url(),
            }),
        )
        .expect("valid config")
}

fn message() -> OutboundMessage {
    sample_message("whatsapp", Some(PHONE))
}

#[tokio::test]
async fn sends_a_text_message_as_the_cloud_api_documents() {
    let server = MockServer::start(accepted()).await;
    let message = message();

    let delivery = channel(&server).deliver(&message).await.expect("delivered");

    assert_eq!(
        delivery.provider_id.as_deref(),
        Some("wamid.HBgLMTY0NjcwNDM1OTUVAgARGBI1RjQyNUE3NEYxMzAzMzQ5MkEA")
    );
    let request = server.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, format!("/v21.0/{PHONE_ID}/messages"));
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert!(
        request
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{request:#?}"
    );
    assert_eq!(
        request.json(),
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": PHONE,
            "type": "text",
            "text": {"body": message.field("text")},
            "biz_opaque_callback_data": message.idempotency_key,
        })
    );
    assert_passes_idempotency_key(&request, &message);
}

#[tokio::test]
async fn a_template_field_sends_a_template_message() {
    let server = MockServer::start(accepted()).await;
    let mut message = message();
    message
        .content
        .insert("template".to_owned(), "cart_reminder".to_owned());
    message.content.insert(
        "components".to_owned(),
        r#"[{"type": "body", "parameters": [{"type": "text", "text": "5000 RUB"}]}]"#.to_owned(),
    );

    channel(&server).deliver(&message).await.expect("delivered");

    let body = server.only_request().json();
    assert_eq!(body["type"], json!("template"));
    assert_eq!(
        body["template"],
        json!({
            "name": "cart_reminder",
            "language": {"code": "ru"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "5000 RUB"}]}]
        })
    );
    assert!(body.get("text").is_none(), "{body}");
    assert_eq!(
        body["biz_opaque_callback_data"],
        json!(message.idempotency_key)
    );
}

#[tokio::test]
async fn a_template_takes_its_language_and_needs_no_components() {
    let server = MockServer::start(accepted()).await;
    let mut message = message();
    message
        .content
        .insert("template".to_owned(), "welcome".to_owned());
    message
        .content
        .insert("language".to_owned(), "en_US".to_owned());

    channel(&server).deliver(&message).await.expect("delivered");

    assert_eq!(
        server.only_request().json()["template"],
        json!({"name": "welcome", "language": {"code": "en_US"}})
    );
}

#[tokio::test]
async fn bad_components_are_refused_without_a_request() {
    let server = MockServer::start(accepted()).await;
    let channel = channel(&server);
    for components in ["{not json", r#"{"type": "body"}"#] {
        let mut message = message();
        message
            .content
            .insert("template".to_owned(), "welcome".to_owned());
        message
            .content
            .insert("components".to_owned(), components.to_owned());
        match channel.deliver(&message).await {
            Err(DeliveryError::Permanent { reason, .. }) => {
                assert!(reason.contains("components"), "{reason}");
            }
            other => panic!("{components} must be refused, got {other:?}"),
        }
    }
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn classifies_http_errors() {
    let server = MockServer::start(accepted()).await;
    assert_classifies_http_errors(&server, &*channel(&server), &message()).await;
}

fn graph_error(status: u16, code: i64, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": message},
            "fbtrace_id": "A1b2C3"
        }}),
    )
}

async fn outcome(answer: Reply) -> Result<waymark_channel::Delivery, DeliveryError> {
    let server = MockServer::start(answer).await;
    channel(&server).deliver(&message()).await
}

#[tokio::test]
async fn throttling_codes_are_retryable_whatever_the_http_status() {
    for code in [130_429, 131_048, 131_056, 80_007] {
        match outcome(graph_error(400, code, "rate limit hit")).await {
            Err(DeliveryError::Retryable { reason, .. }) => {
                assert!(reason.contains(&code.to_string()), "{reason}");
            }
            other => panic!("code {code} must be retryable, got {other:?}"),
        }
    }
    let with_wait = graph_error(429, 130_429, "Rate limit hit").with_header("retry-after", "12");
    match outcome(with_wait).await {
        Err(DeliveryError::Retryable { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(12)));
        }
        other => panic!("130429 must be retryable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_throttling_code_heeds_a_retry_after_date() {
    #[allow(
        clippy::disallowed_methods,
        reason = "the adapter reads the date against the wall clock"
    )]
    let now = chrono::Utc::now();
    let date = (now + chrono::TimeDelta::seconds(90))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let answer = graph_error(
        400,
        131_056,
        "(Business Account, Consumer Account) pair rate limit hit",
    )
    .with_header("retry-after", &date);
    match outcome(answer).await {
        Err(DeliveryError::Retryable {
            retry_after: Some(wait),
            ..
        }) => assert!(
            (Duration::from_secs(70)..=Duration::from_secs(90)).contains(&wait),
            "{wait:?}"
        ),
        other => panic!("131056 must be retryable after the date, got {other:?}"),
    }
}

#[tokio::test]
async fn an_undeliverable_number_is_gone_and_other_refusals_are_permanent() {
    assert!(matches!(
        outcome(graph_error(400, 131_026, "Message Undeliverable")).await,
        Err(DeliveryError::Permanent {
            address_gone: true,
            ..
        })
    ));
    for code in [131_030, 131_047, 190, 100] {
        assert!(
            matches!(
                outcome(graph_error(400, code, "refused")).await,
                Err(DeliveryError::Permanent {
                    address_gone: false,
                    ..
                })
            ),
            "code {code}"
        );
    }
    assert!(matches!(
        outcome(graph_error(503, 131_016, "Service unavailable")).await,
        Err(DeliveryError::Retryable { .. })
    ));
}

#[tokio::test]
async fn the_reason_never_holds_the_token() {
    let Err(DeliveryError::Permanent { reason, .. }) =
        outcome(graph_error(401, 190, "Error validating access token")).await
    else {
        panic!("an expired token is permanent");
    };
    assert!(!reason.contains(TOKEN), "{reason}");
}

#[test]
fn rejects_unknown_fields() {
    assert_rejects_unknown_fields(
        &WhatsAppKind,
        json!({"kind": "whatsapp", "access_token": TOKEN, "phone_number_id": PHONE_ID}),
    );
    assert_checks_base_url(
        &WhatsAppKind,
        json!({"kind": "whatsapp", "access_token": TOKEN, "phone_number_id": PHONE_ID}),
    );
}

#[test]
fn config_errors_name_the_key() {
    for (config, key) in [
        (
            json!({"access_token": TOKEN, "phone_number_id": "+7916"}),
            "phone_number_id",
        ),
        (
            json!({"access_token": TOKEN, "phone_number_id": PHONE_ID, "api_version": "21"}),
            "api_version",
        ),
        (
            json!({"access_token": TOKEN, "phone_number_id": PHONE_ID, "base_url": "graph.facebook.com"}),
            "base_url",
        ),
        (
            json!({"access_token": "", "phone_number_id": PHONE_ID}),
            "access_token",
        ),
        (json!({"access_token": TOKEN}), "phone_number_id"),
    ] {
        let Err(error) = WhatsAppKind.build("whatsapp", &config) else {
            panic!("{config} must be refused");
        };
        assert!(error.message.contains(key), "{key}: {error}");
    }
}

fn sign(body: &[u8], secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn webhook(signature: Option<String>, body: &Value) -> StatusCallback {
    let mut headers = BTreeMap::new();
    if let Some(signature) = signature {
        headers.insert("x-hub-signature-256".to_owned(), signature);
    }
    StatusCallback {
        url: "https://waymark.example/v1/channels/whatsapp/status".to_owned(),
        headers,
        body: body.to_string().into_bytes(),
    }
}

fn receipts_channel() -> Arc<dyn Channel> {
    WhatsAppKind
        .build(
            "whatsapp",
            &json!({
                "kind": "whatsapp",
                "access_token": TOKEN,
                "phone_number_id": PHONE_ID,
                "app_secret": APP_SECRET,
            }),
        )
        .expect("valid config")
}

fn statuses() -> Value {
    let status = |id: &str, state: &str| {
        json!({
            "id": id,
            "status": state,
            "timestamp": "1709295133",
            "recipient_id": "79161234567",
            "biz_opaque_callback_data": "wm-0123456789abcdef",
            "pricing": {"billable": true, "pricing_model": "PMP", "category": "marketing"}
        })
    };
    let mut failed = status("wamid.C", "failed");
    failed["errors"] = json!([{
        "code": 131_026,
        "title": "Message undeliverable",
        "message": "Message undeliverable",
        "error_data": {"details": "Message Undeliverable."}
    }]);
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "102290129340398",
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
                    "statuses": [
                        status("wamid.S", "sent"),
                        status("wamid.A", "delivered"),
                        status("wamid.B", "read"),
                        failed
                    ]
                }
            }]
        }]
    })
}

#[test]
fn signed_status_webhooks_become_receipts() {
    let body = statuses();
    let signature = sign(body.to_string().as_bytes(), APP_SECRET);

    let receipts = receipts_channel()
        .receipts(&webhook(Some(signature), &body))
        .expect("verified");

    let seen: Vec<_> = receipts
        .iter()
        .map(|r| (r.provider_id.as_deref().unwrap_or_default(), r.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("wamid.A", ReceiptStatus::Delivered),
            ("wamid.B", ReceiptStatus::Opened),
            ("wamid.C", ReceiptStatus::Bounced { address_gone: true }),
        ]
    );
    assert!(
        receipts
            .iter()
            .all(|r| r.address.as_deref() == Some("79161234567"))
    );
    let detail = receipts[2].detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("131026") && detail.contains("wm-0123456789abcdef"),
        "{detail}"
    );
}

#[test]
fn inbound_messages_are_not_receipts() {
    let body = json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "messages": [{"from": "79161234567", "id": "wamid.X", "timestamp": "1", "type": "text", "text": {"body": "hi"}}]
        }}]}]
    });
    let signature = sign(body.to_string().as_bytes(), APP_SECRET);
    assert!(
        receipts_channel()
            .receipts(&webhook(Some(signature), &body))
            .expect("verified")
            .is_empty()
    );
}

#[test]
fn webhooks_with_a_wrong_or_missing_signature_are_refused() {
    let body = statuses();
    let channel = receipts_channel();
    for signature in [
        Some(sign(body.to_string().as_bytes(), "another secret")),
        Some(sign(b"another body", APP_SECRET)),
        Some("sha256=zz".to_owned()),
        Some(sign(body.to_string().as_bytes(), APP_SECRET).replace("sha256=", "sha1=")),
        None,
    ] {
        assert_eq!(
            channel.receipts(&webhook(signature.clone(), &body)).err(),
            Some(ReceiptError::BadSignature),
            "{signature:?}"
        );
    }
}

#[test]
fn without_an_app_secret_webhooks_are_not_accepted() {
    let body = statuses();
    let signature = sign(body.to_string().as_bytes(), APP_SECRET);
    let channel = WhatsAppKind
        .build(
            "whatsapp",
            &json!({"kind": "whatsapp", "access_token": TOKEN, "phone_number_id": PHONE_ID}),
        )
        .expect("valid config");
    assert_eq!(
        channel.receipts(&webhook(Some(signature), &body)).err(),
        Some(ReceiptError::Unsupported)
    );
}

/// Meta's webhook verification: the challenge comes back only for `subscribe` with the
/// configured token; a channel without `verify_token` confirms nothing.
#[tokio::test]
async fn the_webhook_verification_echoes_the_challenge_for_the_configured_token() {
    let verifying = WhatsAppKind
        .build(
            "whatsapp",
            &json!({
                "kind": "whatsapp",
                "access_token": TOKEN,
                "phone_number_id": PHONE_ID,
                "verify_token": "meta-verify-7",
            }),
        )
        .expect("valid config");
    let check = |mode: &str, token: &str| -> BTreeMap<String, String> {
        [
            ("hub.mode", mode),
            ("hub.verify_token", token),
            ("hub.challenge", "1158201444"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    };
    assert_eq!(
        verifying.verify_subscription(&check("subscribe", "meta-verify-7")),
        Some("1158201444".to_owned())
    );
    assert_eq!(
        verifying.verify_subscription(&check("subscribe", "guess")),
        None
    );
    assert_eq!(
        verifying.verify_subscription(&check("unsubscribe", "meta-verify-7")),
        None
    );
    let server = MockServer::start(accepted()).await;
    let silent = channel(&server);
    assert_eq!(
        silent.verify_subscription(&check("subscribe", "meta-verify-7")),
        None
    );
}
