//! The daemon against providers played by local servers: a real SMTP server, Twilio's
//! Messages API, Telegram's Bot API and a signed webhook, each request checked against
//! the provider's documented API; then what the dispatcher does with a provider that
//! fails for a while, refuses a message, or says the address is gone.

use serde_json::{Value, json};
use waymark_tests::{
    Daemon, MockServer, Reply, Site, SmtpSink, eventually, message, sent, signed_with,
};

const DAEMON: &str = env!("CARGO_BIN_EXE_waymark-daemon");
const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
/// `Basic base64("{ACCOUNT_SID}:twilio-token")`.
const TWILIO_AUTH: &str = "Basic QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjp0d2lsaW8tdG9rZW4=";
const BOT_TOKEN: &str = "123456:TEST-token";
const CRM_SECRET: &str = "crm-webhook-secret";

const ORDER: &str = "
email:
  subject: \"Заказ {{ trigger.order_id }} принят\"
  text: \"{{ profile.first_name }}, заказ {{ trigger.order_id }} на {{ trigger.total }} ₽ принят.\"
sms:
  text: \"Заказ {{ trigger.order_id }} принят\"
telegram:
  text: \"{{ profile.first_name }}, заказ {{ trigger.order_id }} принят ✅\"
crm_task:
  body: '{\"type\": \"order_check\", \"customer\": \"{{ profile.id }}\", \"order\": \"{{ trigger.order_id }}\", \"total\": {{ trigger.total }}}'
";

/// Every provider the daemon's four channels talk to, on this machine.
struct Providers {
    smtp: SmtpSink,
    twilio: MockServer,
    telegram: MockServer,
    crm: MockServer,
}

impl Providers {
    /// Each accepting every message, unless a test scripts another answer first.
    async fn start() -> Providers {
        Providers {
            smtp: SmtpSink::start(&[]).await,
            twilio: MockServer::start(Reply::json(
                201,
                json!({"sid": "SM0001", "status": "queued", "account_sid": ACCOUNT_SID}),
            ))
            .await,
            telegram: MockServer::start(Reply::json(
                200,
                json!({"ok": true, "result": {"message_id": 7, "date": 1, "chat": {"id": 1001, "type": "private"}, "text": "..."}}),
            ))
            .await,
            crm: MockServer::start(Reply::json(200, json!({"id": "task-1"}))).await,
        }
    }

    /// The daemon's `channels`, pointed at these servers.
    fn config(&self) -> String {
        format!(
            "channels:
  email: {{kind: smtp, url: \"{}\", from: \"Shop <hello@shop.example>\"}}
  sms: {{kind: twilio, account_sid: \"{ACCOUNT_SID}\", auth_token: \"twilio-token\", from: \"+15550001\", base_url: \"{}\"}}
  telegram: {{kind: telegram, bot_token: \"{BOT_TOKEN}\", base_url: \"{}\"}}
  crm_task: {{kind: webhook, url: \"{}/tasks\", secret: \"{CRM_SECRET}\"}}
",
            self.smtp.url(),
            self.twilio.url(),
            self.telegram.url(),
            self.crm.url()
        )
    }
}

/// A daemon with one journey and the `order` template, its channels on `providers`, and
/// Анна, reachable on every channel.
async fn start(providers: &Providers, journey: &str) -> (Site, Daemon) {
    let mut site = Site::new(DAEMON);
    site.write("journey.yaml", journey);
    site.write("templates/order.yaml", ORDER);
    site.configure(&providers.config());
    let daemon = site.start().await;
    daemon
        .ok(
            "/v1/identify",
            &json!({"userId": "ann", "traits": {
                "first_name": "Анна",
                "email": "ann@customer.example",
                "phone": "+15550002",
                "telegram_chat_id": "1001",
            }}),
        )
        .await;
    (site, daemon)
}

async fn place_order(daemon: &Daemon, event: &str) {
    daemon
        .ok(
            "/v1/track",
            &json!({"userId": "ann", "event": event, "properties": {"order_id": "A-17", "total": 5000}}),
        )
        .await;
}

#[tokio::test]
async fn one_journey_delivers_its_four_messages_each_as_its_provider_expects() {
    let providers = Providers::start().await;
    let (_site, daemon) = start(
        &providers,
        "
id: order_flow
trigger: {event: order_placed}
steps:
  confirm: {send: email, template: order, next: text}
  text: {send: sms, template: order, next: chat}
  chat: {send: telegram, template: order, next: task}
  task: {send: crm_task, template: order}
",
    )
    .await;
    place_order(&daemon, "order_placed").await;
    let keys = [
        "ann:1:confirm:1",
        "ann:1:text:2",
        "ann:1:chat:3",
        "ann:1:task:4",
    ];
    eventually("the four messages are sent", || async {
        let profile = daemon.profile("ann").await;
        keys.iter().all(|key| sent(&profile, key))
    })
    .await;
    let profile = daemon.profile("ann").await;

    // SMTP: one mail to Анна, its Message-ID the provider id the daemon recorded.
    let mails = providers.smtp.received();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.summary["mail_from"], "hello@shop.example");
    assert_eq!(mail.rcpt_tos(), ["ann@customer.example"]);
    assert_eq!(mail.header("from"), "Shop <hello@shop.example>");
    assert_eq!(mail.header("to"), "ann@customer.example");
    assert_eq!(mail.header("subject"), "Заказ A-17 принят");
    assert_eq!(
        mail.part("text/plain").as_deref(),
        Some("Анна, заказ A-17 на 5000 ₽ принят.")
    );
    assert_eq!(
        message(&profile, "ann:1:confirm:1").unwrap()["provider_id"],
        mail.header("message-id")
    );

    // Twilio: POST .../Accounts/{sid}/Messages.json, Basic auth, a form with To/From/Body.
    let sms = providers.twilio.only_request();
    assert_eq!(sms.method, "POST");
    assert_eq!(
        sms.path,
        format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")
    );
    assert_eq!(sms.header("authorization"), Some(TWILIO_AUTH));
    assert_eq!(
        sms.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = sms.form();
    assert_eq!(form.get("To").map(String::as_str), Some("+15550002"));
    assert_eq!(form.get("From").map(String::as_str), Some("+15550001"));
    assert_eq!(
        form.get("Body").map(String::as_str),
        Some("Заказ A-17 принят")
    );
    assert_eq!(
        message(&profile, "ann:1:text:2").unwrap()["provider_id"],
        "SM0001"
    );

    // Telegram: POST /bot{token}/sendMessage with JSON {chat_id, text}.
    let chat = providers.telegram.only_request();
    assert_eq!(chat.method, "POST");
    assert_eq!(chat.path, format!("/bot{BOT_TOKEN}/sendMessage"));
    assert!(
        chat.header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    assert_eq!(
        chat.json(),
        json!({"chat_id": 1001, "text": "Анна, заказ A-17 принят ✅"})
    );
    assert_eq!(
        message(&profile, "ann:1:chat:3").unwrap()["provider_id"],
        "1001:7"
    );

    // The webhook: a signed JSON POST carrying the message's idempotency key.
    let task = providers.crm.only_request();
    assert_eq!(
        (task.method.as_str(), task.path.as_str()),
        ("POST", "/tasks")
    );
    assert_eq!(task.header("content-type"), Some("application/json"));
    assert_eq!(task.header("idempotency-key"), Some("ann:1:task:4"));
    assert_eq!(task.header("x-waymark-customer"), Some("ann"));
    assert_eq!(task.header("x-waymark-journey"), Some("order_flow"));
    assert_eq!(task.header("x-waymark-step"), Some("task"));
    assert!(signed_with(&task, CRM_SECRET), "{task:#?}");
    assert!(!signed_with(&task, "another-secret"));
    assert_eq!(
        task.json(),
        json!({"type": "order_check", "customer": "ann", "order": "A-17", "total": 5000})
    );
    assert_eq!(
        message(&profile, "ann:1:task:4").unwrap()["provider_id"],
        "task-1"
    );

    // The mail's one-click unsubscribe (RFC 8058) leads to the daemon and works.
    let base = daemon.api().url().to_owned();
    let unsubscribe = mail.header("list-unsubscribe").trim_matches(['<', '>']);
    assert!(
        unsubscribe.starts_with(&format!("{base}/l/unsubscribe/")),
        "{unsubscribe}"
    );
    assert_eq!(
        mail.header("list-unsubscribe-post"),
        "List-Unsubscribe=One-Click"
    );
    let client = reqwest::Client::new();
    let answer = client
        .post(unsubscribe)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    // Twilio's status callback, signed for the address Twilio called, marks the SMS
    // delivered.
    let callback = format!("{base}/v1/channels/sms/status");
    let params: std::collections::BTreeMap<String, String> = [
        ("MessageSid", "SM0001"),
        ("MessageStatus", "delivered"),
        ("To", "+15550002"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let answer = client
        .post(&callback)
        .header(
            "x-twilio-signature",
            waymark_channel_sms::signature("twilio-token", &callback, &params),
        )
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    eventually("the unsubscribe and the receipt are on Анна", || async {
        let profile = daemon.profile("ann").await;
        let delivered = profile["events"].as_array().unwrap().iter().any(|e| {
            e["event"] == "message_delivered" && e["properties"]["message_key"] == "ann:1:text:2"
        });
        profile["traits"]["unsubscribed"] == json!(["email"]) && delivered
    })
    .await;
}

/// A send on sms, then one on the webhook.
const TEXT_THEN_TASK: &str = "
id: order_flow
trigger: {event: order_placed}
steps:
  text: {send: sms, template: order, next: task}
  task: {send: crm_task, template: order}
";

/// Retries back off from a few seconds (the daemon offers no shorter schedule, and a test
/// knob in production code would be a hack): one retry keeps this test to about 5 s.
#[tokio::test]
async fn a_provider_answering_503_is_retried_and_delivers_once() {
    let providers = Providers::start().await;
    providers.twilio.push(Reply::json(
        503,
        json!({"code": 20503, "message": "Service Unavailable", "status": 503}),
    ));
    let (_site, daemon) = start(&providers, TEXT_THEN_TASK).await;
    place_order(&daemon, "order_placed").await;
    eventually("the text is sent after a retry", || async {
        sent(&daemon.profile("ann").await, "ann:1:text:1")
    })
    .await;

    let requests = providers.twilio.requests();
    assert_eq!(requests.len(), 2, "one refusal, one acceptance");
    assert_eq!(
        requests[0].body, requests[1].body,
        "the retry is the same message"
    );
    assert_eq!(
        requests[1].form().get("Body").map(String::as_str),
        Some("Заказ A-17 принят")
    );
    let profile = daemon.profile("ann").await;
    let text = message(&profile, "ann:1:text:1").unwrap();
    assert_eq!(text["outcome"], "sent", "{profile}");
    assert_eq!(text["provider_id"], "SM0001");
    assert!(sent(&profile, "ann:1:task:2"), "{profile}");
}

#[tokio::test]
async fn a_refused_message_fails_with_the_providers_reason_and_the_journey_goes_on() {
    let providers = Providers::start().await;
    providers.twilio.push(Reply::json(
        400,
        json!({"code": 21606, "message": "The From phone number +15550001 is not a valid, SMS-capable inbound phone number or short code for your account.", "more_info": "https://www.twilio.com/docs/errors/21606", "status": 400}),
    ));
    let (_site, daemon) = start(&providers, TEXT_THEN_TASK).await;
    place_order(&daemon, "order_placed").await;
    eventually("the text fails and the task is sent", || async {
        let profile = daemon.profile("ann").await;
        message(&profile, "ann:1:text:1").is_some_and(|m| m["delivery"] == "failed")
            && sent(&profile, "ann:1:task:2")
    })
    .await;

    let profile = daemon.profile("ann").await;
    let text = message(&profile, "ann:1:text:1").unwrap();
    assert_eq!(text["outcome"], "failed", "{profile}");
    let reason = text["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("21606") && reason.contains("not a valid, SMS-capable"),
        "the provider's reason: {reason}"
    );
    assert_eq!(
        providers.twilio.requests().len(),
        1,
        "a refusal is not retried"
    );
    assert_eq!(
        profile["enrollments"][0]["outcome"], "completed",
        "{profile}"
    );
    assert_eq!(profile["traits"]["unreachable"], Value::Null, "{profile}");
}

#[tokio::test]
async fn an_address_gone_marks_the_channel_unreachable_and_later_sends_fall_back() {
    let providers = Providers::start().await;
    providers.telegram.push(Reply::json(
        403,
        json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}),
    ));
    let (_site, daemon) = start(
        &providers,
        "
id: reminders
trigger: {event: cart_abandoned}
steps:
  first: {send: telegram, template: order, fallback: [sms], next: later}
  later:
    wait_for: {event: cart_viewed, timeout: 1d}
    on_event: second
    on_timeout: second
  second: {send: telegram, template: order, fallback: [sms]}
",
    )
    .await;
    place_order(&daemon, "cart_abandoned").await;
    eventually("telegram is marked unreachable", || async {
        daemon.profile("ann").await["traits"]["unreachable"] == json!(["telegram"])
    })
    .await;
    let profile = daemon.profile("ann").await;
    let first = message(&profile, "ann:1:first:1").unwrap();
    assert_eq!(first["delivery"], "failed", "{profile}");
    assert!(
        first["reason"]
            .as_str()
            .is_some_and(|r| r.contains("bot was blocked by the user")),
        "{profile}"
    );

    daemon
        .ok(
            "/v1/track",
            &json!({"userId": "ann", "event": "cart_viewed"}),
        )
        .await;
    eventually("the second message goes out by sms", || async {
        sent(&daemon.profile("ann").await, "ann:1:second:2")
    })
    .await;
    let profile = daemon.profile("ann").await;
    assert_eq!(
        message(&profile, "ann:1:second:2").unwrap()["channel"],
        "sms"
    );
    assert_eq!(providers.telegram.requests().len(), 1);
    let sms = providers.twilio.only_request();
    assert_eq!(sms.form().get("To").map(String::as_str), Some("+15550002"));
}
