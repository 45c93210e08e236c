//! The SMS.ru adapter against a local server that answers as SMS.ru's `sms/send` does.

use serde_json::json;
use waymark_channel::testkit::{
    MockServer, Reply, assert_checks_base_url, assert_classifies_http_errors,
    assert_rejects_unknown_fields, sample_message,
};
use waymark_channel::{ChannelKind, DeliveryError};
use waymark_channel_sms::SmsRuKind;

fn ok(number: &str, id: &str) -> Reply {
    Reply::json(
        200,
        json!({"status": "OK", "status_code": 100, "sms": {number: {"status": "OK", "status_code": 100, "sms_id": id}}, "balance": 412.5}),
    )
}

fn channel(server: &MockServer) -> std::sync::Arc<dyn waymark_channel::Channel> {
    SmsRuKind
        .build(
            "sms",
            &json!({"kind": "smsru", "api_id": "KEY-1", "from": "Polka", "base_url": server.url()}),
        )
        .unwrap()
}

#[tokio::test]
async fn sends_as_sms_ru_documents() {
    let server = MockServer::start(ok("79001234567", "000000-10000001")).await;
    let mut message = sample_message("sms", Some("+7 900 123-45-67"));
    message
        .content
        .insert("text".to_owned(), "Ваш заказ отправлен".to_owned());
    let delivery = channel(&server).deliver(&message).await.unwrap();
    assert_eq!(delivery.provider_id.as_deref(), Some("000000-10000001"));
    assert_eq!(
        delivery.detail.as_deref(),
        Some("segments=1 encoding=UCS-2")
    );

    let request = server.only_request();
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/sms/send")
    );
    let form = request.form();
    assert_eq!(form.get("api_id").map(String::as_str), Some("KEY-1"));
    assert_eq!(form.get("to").map(String::as_str), Some("79001234567"));
    assert_eq!(
        form.get("msg").map(String::as_str),
        Some("Ваш заказ отправлен")
    );
    assert_eq!(form.get("json").map(String::as_str), Some("1"));
    assert_eq!(form.get("from").map(String::as_str), Some("Polka"));
}

#[tokio::test]
async fn refusals_in_an_http_200_are_classified() {
    let server = MockServer::start(ok("79001234567", "x")).await;
    let channel = channel(&server);
    let message = sample_message("sms", Some("+79001234567"));
    let per_number = |code: u64| {
        Reply::json(
            200,
            json!({"status": "OK", "status_code": 100,
            "sms": {"79001234567": {"status": "ERROR", "status_code": code, "status_text": "refused"}}}),
        )
    };
    server.push(per_number(202));
    assert!(matches!(
        channel.deliver(&message).await,
        Err(DeliveryError::Permanent {
            address_gone: true,
            ..
        })
    ));
    server.push(per_number(220));
    assert!(matches!(
        channel.deliver(&message).await,
        Err(DeliveryError::Retryable { .. })
    ));
    server.push(Reply::json(
        200,
        json!({"status": "ERROR", "status_code": 200, "status_text": "Неправильный api_id"}),
    ));
    match channel.deliver(&message).await {
        Err(DeliveryError::Permanent {
            address_gone: false,
            reason,
        }) => assert!(reason.contains("api_id"), "{reason}"),
        other => panic!("a bad api_id is permanent: {other:?}"),
    }
    assert_classifies_http_errors(&server, channel.as_ref(), &message).await;
}

#[test]
fn config_is_checked_and_unknown_keys_refused() {
    assert_rejects_unknown_fields(&SmsRuKind, json!({"kind": "smsru", "api_id": "KEY"}));
    assert_checks_base_url(&SmsRuKind, json!({"kind": "smsru", "api_id": "KEY"}));
    assert!(
        SmsRuKind
            .build("sms", &json!({"kind": "smsru", "api_id": ""}))
            .is_err()
    );
}

#[tokio::test]
async fn server_errors_and_limits_in_an_http_200_retry() {
    let server = MockServer::start(ok("79001234567", "x")).await;
    let channel = channel(&server);
    let message = sample_message("sms", Some("+79001234567"));
    let refused = |code: u64| {
        Reply::json(
            200,
            json!({"status": "OK", "status_code": 100,
            "sms": {"79001234567": {"status": "ERROR", "status_code": code, "status_text": "limit"}}}),
        )
    };
    // "Ошибка на сервере. Повторите запрос." for the whole request.
    server.push(Reply::json(
        200,
        json!({"status": "ERROR", "status_code": 500, "status_text": "Ошибка на сервере"}),
    ));
    match channel.deliver(&message).await {
        Err(DeliveryError::Retryable { reason, .. }) => assert!(reason.contains("500"), "{reason}"),
        other => panic!("SMS.ru's server error retries: {other:?}"),
    }
    // The same text to this number within a minute: after that minute.
    server.push(refused(231));
    assert_eq!(
        channel.deliver(&message).await,
        Err(DeliveryError::Retryable {
            reason: "SMS.ru error 231: limit".to_owned(),
            retry_after: Some(std::time::Duration::from_secs(60)),
        })
    );
    for daily_limit in [206, 230, 232] {
        server.push(refused(daily_limit));
        assert!(
            matches!(
                channel.deliver(&message).await,
                Err(DeliveryError::Retryable { .. })
            ),
            "{daily_limit}"
        );
    }
    for permanent in [201, 203, 204] {
        server.push(refused(permanent));
        assert!(
            matches!(
                channel.deliver(&message).await,
                Err(DeliveryError::Permanent {
                    address_gone: false,
                    ..
                })
            ),
            "{permanent}"
        );
    }
}

#[tokio::test]
async fn an_empty_text_fails_without_a_request() {
    let server = MockServer::start(ok("79001234567", "x")).await;
    let mut message = sample_message("sms", Some("+79001234567"));
    message.content.insert("text".to_owned(), String::new());
    assert!(matches!(
        channel(&server).deliver(&message).await,
        Err(DeliveryError::Permanent {
            address_gone: false,
            ..
        })
    ));
    assert!(server.requests().is_empty());
}
