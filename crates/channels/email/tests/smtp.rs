//! The `smtp` channel against a real SMTP server: the testkit's [`SmtpSink`], an aiosmtpd
//! server that stores what it receives and refuses scripted recipients.
//!
//! These tests need `python3` with aiosmtpd (`python3 -m pip install aiosmtpd`); without
//! them they fail and say so, rather than pass having checked nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use waymark_channel::testkit::{SmtpSink, assert_rejects_unknown_fields, sample_message};
use waymark_channel::{Channel, ChannelKind, DeliveryError, OutboundMessage};
use waymark_channel_email::SmtpKind;

fn channel(config: Value) -> Arc<dyn Channel> {
    SmtpKind
        .build("email", &config)
        .unwrap_or_else(|e| panic!("{config} must build: {e}"))
}

fn message(address: &str) -> OutboundMessage {
    let mut message = sample_message("email", Some(address));
    message.content.remove("body");
    message
}

fn cyrillic_message(address: &str) -> OutboundMessage {
    let mut message = message(address);
    message
        .content
        .insert("subject".to_owned(), "Ваша корзина ждёт".to_owned());
    message.content.insert(
        "text".to_owned(),
        "Ваша корзина ждёт: 5000 ₽.\nЗаберите её до пятницы.".to_owned(),
    );
    message.content.insert(
        "html".to_owned(),
        "<p>Ваша корзина ждёт: <b>5000 ₽</b>.</p>".to_owned(),
    );
    message
}

#[tokio::test]
async fn delivers_multipart_mail_with_a_stable_message_id_and_one_click_unsubscribe() {
    let sink = SmtpSink::start(&[]).await;
    let email = channel(json!({
        "kind": "smtp",
        "url": sink.url(),
        "from": "Shop <hello@shop.example>",
        "reply_to": "help@shop.example",
        "timeout": 10,
    }));
    let message = cyrillic_message("ann@customer.example");

    let first = email.deliver(&message).await.expect("delivered");
    let second = email.deliver(&message).await.expect("delivered again");

    let expected_id = "<wm-0123456789abcdef@shop.example>";
    assert_eq!(first.provider_id.as_deref(), Some(expected_id));
    assert_eq!(second.provider_id.as_deref(), Some(expected_id));
    let detail = first.detail.unwrap_or_default();
    assert!(
        detail.contains("250") && detail.contains("queued as 1"),
        "{detail}"
    );

    let received = sink.received();
    assert_eq!(received.len(), 2, "two deliveries, two messages");
    let mail = &received[0];
    assert_eq!(mail.summary["mail_from"], "hello@shop.example");
    assert_eq!(mail.rcpt_tos(), ["ann@customer.example"]);
    assert_eq!(mail.header("from"), "Shop <hello@shop.example>");
    assert_eq!(mail.header("to"), "ann@customer.example");
    assert_eq!(mail.header("reply-to"), "help@shop.example");
    assert_eq!(mail.header("subject"), "Ваша корзина ждёт");
    assert_eq!(mail.header("message-id"), expected_id);
    assert_eq!(
        received[1].header("message-id"),
        expected_id,
        "a retried send must carry the same Message-ID"
    );

    assert_eq!(mail.content_type(), "multipart/alternative");
    assert_eq!(
        mail.part("text/plain").as_deref(),
        Some("Ваша корзина ждёт: 5000 ₽.\nЗаберите её до пятницы.")
    );
    assert_eq!(
        mail.part("text/html").as_deref(),
        Some("<p>Ваша корзина ждёт: <b>5000 ₽</b>.</p>")
    );
    assert_eq!(mail.summary["parsed"]["defects"], json!([]));
    assert!(
        mail.raw.is_ascii(),
        "bodies and headers are transfer-encoded, so no server needs 8BITMIME:\n{}",
        mail.raw
    );

    assert_eq!(
        mail.raw_header("List-Unsubscribe").as_deref(),
        Some("List-Unsubscribe: <http://127.0.0.1:8080/l/unsubscribe/token>")
    );
    assert_eq!(
        mail.raw_header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    );
}

#[tokio::test]
async fn one_body_makes_a_single_part_and_no_link_no_unsubscribe_header() {
    let sink = SmtpSink::start(&[]).await;
    let email = channel(json!({"url": sink.url(), "from": "hello@shop.example"}));

    let mut text_only = message("ann@customer.example");
    text_only.content.remove("html");
    text_only.links.clear();
    email.deliver(&text_only).await.expect("text delivered");

    let mut html_only = message("ann@customer.example");
    html_only.content.remove("text");
    html_only.idempotency_key = "wm-html.only".to_owned();
    email.deliver(&html_only).await.expect("html delivered");

    let mut empty = message("ann@customer.example");
    empty.content.remove("text");
    empty.content.remove("html");
    assert!(matches!(
        email.deliver(&empty).await,
        Err(DeliveryError::Permanent {
            address_gone: false,
            ..
        })
    ));

    let received = sink.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].content_type(), "text/plain");
    assert_eq!(
        received[0].part("text/plain").as_deref(),
        Some("You left items worth 5000 RUB in your cart.")
    );
    assert_eq!(received[0].raw_header("List-Unsubscribe"), None);
    assert_eq!(received[0].raw_header("List-Unsubscribe-Post"), None);

    assert_eq!(received[1].content_type(), "text/html");
    assert_eq!(
        received[1].header("message-id"),
        "<wm-html=2Eonly@shop.example>",
        "characters a Message-ID cannot hold are escaped"
    );
}

#[tokio::test]
async fn smtp_refusals_are_classified() {
    let sink = SmtpSink::start(&[
        "--reject",
        "gone@customer.example",
        "--defer",
        "busy@customer.example",
    ])
    .await;
    let email = channel(json!({"url": sink.url(), "from": "hello@shop.example"}));

    match email.deliver(&message("gone@customer.example")).await {
        Err(DeliveryError::Permanent {
            address_gone: true,
            reason,
        }) => assert!(
            reason.contains("550") && reason.contains("5.1.1"),
            "{reason}"
        ),
        other => panic!("550 5.1.1 must be permanent with the address gone, got {other:?}"),
    }
    match email.deliver(&message("busy@customer.example")).await {
        Err(DeliveryError::Retryable { reason, .. }) => {
            assert!(reason.contains("451"), "{reason}");
        }
        other => panic!("451 must be retryable, got {other:?}"),
    }
    // A refused recipient must not poison the pooled connection for the next message.
    email
        .deliver(&message("ann@customer.example"))
        .await
        .expect("a good address still goes through");
    let received = sink.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_tos(), ["ann@customer.example"]);
}

#[tokio::test]
async fn bad_or_missing_addresses_fail_before_connecting() {
    // Nothing listens here; the failures must come before any connection attempt.
    let email = channel(json!({"url": closed_port_url(), "from": "hello@shop.example"}));

    match email.deliver(&message("not an address")).await {
        Err(DeliveryError::Permanent {
            address_gone: true, ..
        }) => {}
        other => panic!("an invalid address is gone for good, got {other:?}"),
    }
    let mut no_address = message("x@y.example");
    no_address.address = None;
    match email.deliver(&no_address).await {
        Err(DeliveryError::Permanent {
            address_gone: false,
            ..
        }) => {}
        other => panic!("a missing address is permanent, got {other:?}"),
    }
    let mut injected = message("ann@customer.example");
    injected.links.insert(
        "unsubscribe_url".to_owned(),
        "https://shop.example/u\r\nBcc: everyone@example.com".to_owned(),
    );
    assert!(matches!(
        email.deliver(&injected).await,
        Err(DeliveryError::Permanent { .. })
    ));
}

#[tokio::test]
async fn a_closed_port_is_retryable() {
    let email = channel(json!({"url": closed_port_url(), "from": "hello@shop.example"}));
    match email.deliver(&message("ann@customer.example")).await {
        Err(DeliveryError::Retryable { .. }) => {}
        other => panic!("connection refused must be retryable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_retryably() {
    // The kernel completes the TCP handshake for a listening socket nobody accepts on,
    // so the client connects and then waits for a greeting that never comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("address").port();
    let email = channel(json!({
        "url": format!("smtp://127.0.0.1:{port}"),
        "from": "hello@shop.example",
        "timeout": 1,
    }));
    let started = std::time::Instant::now();
    match email.deliver(&message("ann@customer.example")).await {
        Err(DeliveryError::Retryable { .. }) => {}
        other => panic!("a timeout must be retryable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the configured timeout applies"
    );
    drop(silent);
}

#[tokio::test]
async fn logs_in_with_configured_or_url_credentials() {
    let sink = SmtpSink::start(&["--auth", "mailer:s3cret/!"]).await;

    let with_keys = channel(json!({
        "url": sink.url(),
        "username": "mailer",
        "password": "s3cret/!",
        "from": "hello@shop.example",
    }));
    with_keys
        .deliver(&message("ann@customer.example"))
        .await
        .expect("logged in with username/password");

    let in_url = channel(json!({
        "url": format!("smtp://mailer:s3cret%2F%21@127.0.0.1:{}", sink.port()),
        "from": "hello@shop.example",
    }));
    in_url
        .deliver(&message("bob@customer.example"))
        .await
        .expect("logged in with the URL's user info");

    let wrong = channel(json!({
        "url": sink.url(),
        "username": "mailer",
        "password": "wrong",
        "from": "hello@shop.example",
    }));
    match wrong.deliver(&message("carl@customer.example")).await {
        Err(DeliveryError::Permanent {
            address_gone: false,
            reason,
        }) => assert!(reason.contains("535"), "{reason}"),
        other => panic!("refused credentials are permanent, got {other:?}"),
    }
    assert_eq!(sink.received().len(), 2);
}

#[test]
fn the_kind_and_its_config() {
    assert_eq!(SmtpKind.kind(), "smtp");
    assert_eq!(SmtpKind.address_trait(), Some("email"));
    assert_rejects_unknown_fields(
        &SmtpKind,
        json!({"kind": "smtp", "url": "smtp://127.0.0.1:2525", "from": "Shop <hello@shop.example>"}),
    );

    // Every documented TLS mode builds without touching the network.
    for url in [
        "smtp://127.0.0.1:2525",
        "smtp://smtp.example.com?tls=opportunistic",
        "smtp://smtp.example.com:587?tls=required",
        "smtps://user:pass@smtp.example.com:465",
        "smtps://smtp.example.com",
    ] {
        let config = json!({"url": url, "from": "hello@shop.example", "timeout": 5});
        assert!(SmtpKind.build("email", &config).is_ok(), "{url}");
    }

    let error = |config: Value| match SmtpKind.build("email", &config) {
        Ok(_) => panic!("{config} must not build"),
        Err(e) => e.to_string(),
    };
    for url in [
        "http://smtp.example.com",
        "smtp://smtp.example.com?tls=always",
        "not a url",
    ] {
        let message = error(json!({"url": url, "from": "hello@shop.example"}));
        assert!(message.contains("`url`"), "{message}");
    }
    let message = error(json!({"url": "smtp://h", "from": "Shop"}));
    assert!(message.contains("`from`"), "{message}");
    let message = error(json!({"url": "smtp://h", "from": "a@b.example", "reply_to": "x"}));
    assert!(message.contains("`reply_to`"), "{message}");
    let message = error(json!({"url": "smtp://h", "from": "a@b.example", "username": "u"}));
    assert!(message.contains("`password`"), "{message}");
    let message = error(json!({"url": "smtp://h", "from": "a@b.example", "timeout": 0}));
    assert!(message.contains("`timeout`"), "{message}");
    let message = error(json!({"from": "a@b.example"}));
    assert!(message.contains("url"), "{message}");
    assert!(message.starts_with("channel `email`"), "{message}");
}

/// A loopback URL nothing listens on: bind an ephemeral port, then release it.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    format!("smtp://127.0.0.1:{port}")
}
