//! The Twilio adapter against a local server that checks requests against Twilio's
//! Messages API.

use std::collections::BTreeMap;

use serde_json::json;
use waymark_channel::testkit::{
    MockServer, Reply, assert_checks_base_url, assert_classifies_http_errors,
    assert_rejects_unknown_fields, sample_message,
};
use waymark_channel::{ChannelKind, DeliveryError, ReceiptError, ReceiptStatus, StatusCallback};
use waymark_channel_sms::{TwilioKind, signature};

fn config(server: &MockServer) -> serde_json::Value {
    json!({"kind": "twilio", "account_sid": "AC123", "auth_token": "tok", "from": "+15550001", "base_url": server.url()})
}

#[tokio::test]
async fn sends_as_the_messages_api_documents() {
    let server =
        MockServer::start(Reply::json(201, json!({"sid": "SM42", "status": "queued"}))).await;
    let channel = TwilioKind.build("sms", &config(&server)).unwrap();
    let mut message = sample_message("sms", Some("+79001234567"));
    message
        .content
        .insert("text".to_owned(), "Ваша корзина ждёт: 5000 ₽".to_owned());
    let delivery = channel.deliver(&message).await.unwrap();
    assert_eq!(delivery.provider_id.as_deref(), Some("SM42"));
    assert_eq!(
        delivery.detail.as_deref(),
        Some("segments=1 encoding=UCS-2")
    );

    let request = server.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/2010-04-01/Accounts/AC123/Messages.json");
    // Basic base64("AC123:tok")
    assert_eq!(request.header("authorization"), Some("Basic QUMxMjM6dG9r"));
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = request.form();
    assert_eq!(form.get("To").map(String::as_str), Some("+79001234567"));
    assert_eq!(form.get("From").map(String::as_str), Some("+15550001"));
    assert_eq!(
        form.get("Body").map(String::as_str),
        Some("Ваша корзина ждёт: 5000 ₽")
    );
}

#[tokio::test]
async fn a_messaging_service_replaces_from() {
    let server = MockServer::start(Reply::json(201, json!({"sid": "SM1"}))).await;
    let config = json!({"kind": "twilio", "account_sid": "AC1", "auth_token": "t", "messaging_service_sid": "MG9",
        "status_callback": "https://w.example/v1/channels/sms/status", "base_url": server.url()});
    TwilioKind
        .build("sms", &config)
        .unwrap()
        .deliver(&sample_message("sms", Some("+15551234")))
        .await
        .unwrap();
    let form = server.only_request().form();
    assert_eq!(
        form.get("MessagingServiceSid").map(String::as_str),
        Some("MG9")
    );
    assert!(!form.contains_key("From"));
    assert_eq!(
        form.get("StatusCallback").map(String::as_str),
        Some("https://w.example/v1/channels/sms/status")
    );
}

#[tokio::test]
async fn errors_are_classified_and_dead_numbers_are_gone() {
    let server = MockServer::start(Reply::json(201, json!({"sid": "SM1"}))).await;
    let channel = TwilioKind.build("sms", &config(&server)).unwrap();
    let message = sample_message("sms", Some("+15551234"));
    assert_classifies_http_errors(&server, channel.as_ref(), &message).await;

    server.push(Reply::json(400, json!({"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400})));
    match channel.deliver(&message).await {
        Err(DeliveryError::Permanent {
            address_gone: true,
            reason,
        }) => assert!(reason.contains("21211"), "{reason}"),
        other => panic!("an invalid number is gone for good: {other:?}"),
    }
    server.push(Reply::json(400, json!({"code": 21606, "message": "The From phone number is not a valid sender.", "status": 400})));
    assert!(matches!(
        channel.deliver(&message).await,
        Err(DeliveryError::Permanent {
            address_gone: false,
            ..
        })
    ));
    assert!(matches!(
        channel.deliver(&sample_message("sms", None)).await,
        Err(DeliveryError::Permanent { .. })
    ));
}

#[test]
fn the_signature_matches_twilios_documented_example() {
    let params: BTreeMap<String, String> = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+12349013030"),
        ("Digits", "1234"),
        ("From", "+12349013030"),
        ("To", "+18005551212"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(
        signature(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &params
        ),
        "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    );
}

#[test]
fn status_callbacks_become_receipts_when_signed() {
    let channel = TwilioKind
        .build(
            "sms",
            &json!({"kind": "twilio", "account_sid": "AC1", "auth_token": "tok", "from": "+1555"}),
        )
        .unwrap();
    let url = "https://w.example/v1/channels/sms/status";
    let body = "MessageSid=SM42&MessageStatus=undelivered&To=%2B79001234567&ErrorCode=30005";
    let params: BTreeMap<String, String> = [
        ("MessageSid", "SM42"),
        ("MessageStatus", "undelivered"),
        ("To", "+79001234567"),
        ("ErrorCode", "30005"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let signed = |sig: &str| StatusCallback {
        url: url.to_owned(),
        headers: BTreeMap::from([("x-twilio-signature".to_owned(), sig.to_owned())]),
        body: body.as_bytes().to_vec(),
    };
    let receipts = channel
        .receipts(&signed(&signature("tok", url, &params)))
        .unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].provider_id.as_deref(), Some("SM42"));
    assert_eq!(receipts[0].address.as_deref(), Some("+79001234567"));
    assert_eq!(
        receipts[0].status,
        ReceiptStatus::Bounced { address_gone: true }
    );
    assert_eq!(
        channel.receipts(&signed("forged")),
        Err(ReceiptError::BadSignature)
    );
    assert_eq!(
        channel.receipts(&signed(&signature("other", url, &params))),
        Err(ReceiptError::BadSignature)
    );
}

#[test]
fn config_is_checked_and_unknown_keys_refused() {
    assert_rejects_unknown_fields(
        &TwilioKind,
        json!({"kind": "twilio", "account_sid": "AC1", "auth_token": "t", "from": "+1555"}),
    );
    assert_checks_base_url(
        &TwilioKind,
        json!({"kind": "twilio", "account_sid": "AC1", "auth_token": "t", "from": "+1555"}),
    );
    let both = json!({"kind": "twilio", "account_sid": "AC1", "auth_token": "t", "from": "+1", "messaging_service_sid": "MG1"});
    assert!(TwilioKind.build("sms", &both).is_err());
    let missing = json!({"kind": "twilio", "account_sid": "AC1", "from": "+1"});
    let error = TwilioKind.build("sms", &missing).err().unwrap();
    assert!(error.message.contains("auth_token"), "{error}");
}

#[tokio::test]
async fn a_number_goes_in_e164_without_the_separators_people_write() {
    let server = MockServer::start(Reply::json(201, json!({"sid": "SM1"}))).await;
    let channel = TwilioKind.build("sms", &config(&server)).unwrap();
    channel
        .deliver(&sample_message("sms", Some("+7 (900) 123-45-67")))
        .await
        .unwrap();
    let form = server.only_request().form();
    assert_eq!(form.get("To").map(String::as_str), Some("+79001234567"));
}

#[tokio::test]
async fn an_empty_text_fails_without_a_request() {
    let server = MockServer::start(Reply::json(201, json!({"sid": "SM1"}))).await;
    let channel = TwilioKind.build("sms", &config(&server)).unwrap();
    let mut message = sample_message("sms", Some("+15551234"));
    message.content.insert("text".to_owned(), " ".to_owned());
    assert!(matches!(
        channel.deliver(&message).await,
        Err(DeliveryError::Permanent {
            address_gone: false,
            ..
        })
    ));
    assert!(server.requests().is_empty());
}

fn form(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn callback(url: &str, body: &str, signature: &str) -> StatusCallback {
    StatusCallback {
        url: url.to_owned(),
        headers: BTreeMap::from([("x-twilio-signature".to_owned(), signature.to_owned())]),
        body: body.as_bytes().to_vec(),
    }
}

/// Twilio signs the URL it was given, and its SDKs accept a signature over that URL with
/// or without the port: the daemon may see another URL than the configured one (behind a
/// proxy), and Twilio writes `:443` out on some callbacks.
#[test]
fn a_callback_signed_over_the_configured_url_or_with_its_port_verifies() {
    let configured = "https://hooks.shop.example/v1/channels/sms/status";
    let channel = TwilioKind
        .build(
            "sms",
            &json!({"kind": "twilio", "account_sid": "AC1", "auth_token": "tok", "from": "+1555",
                    "status_callback": configured}),
        )
        .unwrap();
    let body = "MessageSid=SM42&MessageStatus=delivered&To=%2B15551234";
    let params = form(&[
        ("MessageSid", "SM42"),
        ("MessageStatus", "delivered"),
        ("To", "+15551234"),
    ]);
    let seen = "http://127.0.0.1:8080/v1/channels/sms/status";

    let over_configured = signature("tok", configured, &params);
    let receipts = channel
        .receipts(&callback(seen, body, &over_configured))
        .unwrap();
    assert_eq!(receipts[0].status, ReceiptStatus::Delivered);

    let with_port = signature(
        "tok",
        "https://hooks.shop.example:443/v1/channels/sms/status",
        &params,
    );
    assert!(channel.receipts(&callback(seen, body, &with_port)).is_ok());
    assert!(
        channel
            .receipts(&callback(configured, body, &with_port))
            .is_ok()
    );

    let elsewhere = signature(
        "tok",
        "https://evil.example/v1/channels/sms/status",
        &params,
    );
    assert_eq!(
        channel.receipts(&callback(seen, body, &elsewhere)),
        Err(ReceiptError::BadSignature)
    );
}

#[test]
fn a_switched_off_handset_is_not_gone_and_a_read_message_is_opened() {
    let channel = TwilioKind
        .build(
            "sms",
            &json!({"kind": "twilio", "account_sid": "AC1", "auth_token": "tok", "from": "+1555"}),
        )
        .unwrap();
    let url = "https://w.example/v1/channels/sms/status";
    let receipt = |pairs: &[(&str, &str)]| {
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let sig = signature("tok", url, &form(pairs));
        let mut receipts = channel
            .receipts(&callback(url, &body.join("&"), &sig))
            .unwrap();
        assert_eq!(receipts.len(), 1);
        receipts.remove(0)
    };
    // 30003: "switched off or otherwise unavailable", which passes.
    let off = receipt(&[
        ("MessageSid", "SM1"),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
    ]);
    assert_eq!(
        off.status,
        ReceiptStatus::Bounced {
            address_gone: false
        }
    );
    assert_eq!(off.detail.as_deref(), Some("Twilio error 30003"));
    let landline = receipt(&[
        ("MessageSid", "SM2"),
        ("MessageStatus", "failed"),
        ("ErrorCode", "30006"),
    ]);
    assert_eq!(
        landline.status,
        ReceiptStatus::Bounced { address_gone: true }
    );
    let read = receipt(&[("MessageSid", "SM3"), ("MessageStatus", "read")]);
    assert_eq!(read.status, ReceiptStatus::Opened);
    assert_eq!(read.provider_id.as_deref(), Some("SM3"));
}
