//! Waymark's `viber` channel kind: messages from a Viber bot, through the Viber REST bot
//! API.
//!
//! ```yaml
//! channels:
//!   viber:
//!     kind: viber
//!     auth_token: "${VIBER_TOKEN}"            # the bot's app key
//!     sender_name: "Shop"                     # shown as the sender; at most 28 characters
//!     sender_avatar: "https://shop.example/bot.png"   # optional
//!     base_url: "https://chatapi.viber.com"   # optional: a proxy or a test server
//!     timeout: 30                             # optional: seconds per request; default 30
//! ```
//!
//! The customer's address is the `viber_id` profile trait: the subscriber id Viber gave in
//! the `subscribed` or `conversation_started` callback. A bot can only write to users
//! subscribed to it.
//!
//! # What is sent
//!
//! `POST {base_url}/pa/send_message` with the header `X-Viber-Auth-Token` and the JSON body
//! `{"receiver", "min_api_version": 1, "sender": {"name", "avatar"?}, "tracking_data",
//! "type": "text", "text"}`; `text` is the rendered `text` field.
//!
//! `tracking_data` carries the outbox idempotency key. Viber does not deduplicate on it
//! (its API has no idempotency key); it echoes it back with the customer's reply, which
//! ties a reply to the message that prompted it. As with any provider without
//! deduplication, only a crash or a timeout between Viber's acceptance and the outbox's
//! record of it can send a message twice.
//!
//! # Errors
//!
//! Viber answers HTTP 200 with a `status` code in the body; 0 is success, with the
//! `message_token` as the provider id. Other codes, per the REST bot API's error table:
//!
//! | `status` | name | outcome |
//! |---|---|---|
//! | 5, 6 | `receiverNotRegistered`, `receiverNotSubscribed` | permanent, address gone |
//! | 11 | `receiverNoSuitableDevice` | permanent, address gone |
//! | 12 | `tooManyRequests` | retryable |
//! | 1-4, 7-10, 13-24 | bad data, bad token, the bot blocked, suspended or without webhook, ... | permanent |
//! | anything else | "general error" | retryable |
//!
//! Non-200 statuses (a proxy, an outage) are judged by the status: 5xx and 429 retry.
//!
//! # Delivery receipts
//!
//! Viber sends its callbacks to the bot's webhook (`set_webhook`); point it at
//! `POST /v1/channels/{name}/status`. Each callback is verified against
//! `X-Viber-Content-Signature: HEX(HMAC-SHA256(auth_token, raw body))` and turned into
//! receipts: `delivered` → delivered, `seen` → opened, `failed` → bounced, `unsubscribed` →
//! bounced with the address gone (the user left the bot, so it can no longer write to
//! them). The provider id is the callback's `message_token`, except for `unsubscribed`,
//! whose token is the callback's own: that receipt names only the user, and the daemon
//! matches it to the latest message sent to them. Other events (`subscribed`,
//! `conversation_started`, `message`, `webhook`) give no receipts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Number, json};
use sha2::Sha256;
use waymark_channel::{
    Channel, ChannelKind, ConfigCheck, ConfigError, Delivery, DeliveryError, OutboundMessage,
    Receipt, ReceiptError, ReceiptStatus, StatusCallback, body_snippet, parse_config,
};
use waymark_channel_http as http;

const DEFAULT_BASE_URL: &str = "https://chatapi.viber.com";
/// Long enough for a slow Viber answer, short enough that a hung connection does not hold
/// an outbox worker for minutes.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Viber's limit for `sender.name`.
const MAX_SENDER_NAME: usize = 28;
/// Viber's limit for `tracking_data`.
const MAX_TRACKING_DATA: usize = 4000;
const AUTH_HEADER: &str = "X-Viber-Auth-Token";
const SIGNATURE_HEADER: &str = "X-Viber-Content-Signature";

/// The `viber` channel kind. Register it with
/// `Registry::new().with(waymark_channel_viber::ViberKind)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ViberKind;

/// The config section of a `viber` channel; see the crate docs for the keys.
///
/// No `Debug`: it holds the auth token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ViberConfig {
    auth_token: String,
    sender_name: String,
    #[serde(default)]
    sender_avatar: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    /// Seconds.
    #[serde(default)]
    timeout: Option<u64>,
}

impl ChannelKind for ViberKind {
    fn kind(&self) -> &'static str {
        "viber"
    }

    fn address_trait(&self) -> Option<&'static str> {
        Some("viber_id")
    }

    fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn Channel>, ConfigError> {
        let config: ViberConfig = parse_config(name, config)?;
        Ok(Arc::new(ViberChannel::new(name, config)?))
    }
}

/// A configured Viber bot. No `Debug`: it holds the auth token.
struct ViberChannel {
    client: reqwest::Client,
    send_url: String,
    /// Both the API credential and the key Viber signs callbacks with.
    auth_token: String,
    sender: serde_json::Value,
}

impl ViberChannel {
    fn new(name: &str, config: ViberConfig) -> Result<Self, ConfigError> {
        let check = ConfigCheck::new(name);

        let auth_token = config.auth_token.trim();
        if auth_token.is_empty() || auth_token.contains(char::is_whitespace) {
            return Err(check.error("auth_token", "expected the bot's app key (no spaces)"));
        }
        let sender_name = config.sender_name.trim();
        if sender_name.is_empty() || sender_name.chars().count() > MAX_SENDER_NAME {
            return Err(check.error(
                "sender_name",
                format!("Viber needs 1 to {MAX_SENDER_NAME} characters"),
            ));
        }
        let mut sender = json!({"name": sender_name});
        if let Some(avatar) = &config.sender_avatar {
            if !(avatar.starts_with("https://") || avatar.starts_with("http://")) {
                return Err(check.error("sender_avatar", "expected an image URL"));
            }
            sender["avatar"] = json!(avatar);
        }
        let base_url = check.base_url(config.base_url.as_deref(), DEFAULT_BASE_URL)?;
        let timeout = check.timeout(config.timeout, DEFAULT_TIMEOUT)?;
        let client = http::client(timeout)
            .map_err(|e| check.error("base_url", format!("cannot build an HTTP client: {e}")))?;

        Ok(ViberChannel {
            client,
            send_url: format!("{base_url}/pa/send_message"),
            auth_token: auth_token.to_owned(),
            sender,
        })
    }
}

#[async_trait]
impl Channel for ViberChannel {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        let receiver = message.require_address()?;
        let text = message.field("text");
        if text.is_empty() {
            return Err(DeliveryError::permanent(
                "the message has no `text` to send to Viber",
            ));
        }
        let mut body = json!({
            "receiver": receiver,
            "min_api_version": 1,
            "sender": self.sender,
            "type": "text",
            "text": text,
        });
        // A cut key would name the wrong outbox row, so an over-long one is left out.
        if message.idempotency_key.len() <= MAX_TRACKING_DATA {
            body["tracking_data"] = json!(message.idempotency_key);
        }

        let request = self
            .client
            .post(&self.send_url)
            .header(AUTH_HEADER, &self.auth_token)
            .json(&body);
        let answer = http::send(request, "Viber").await?;
        if !answer.is_success() {
            return Err(answer.status_error());
        }
        let Ok(reply) = serde_json::from_slice::<SendAnswer>(&answer.body) else {
            // A 2xx that is not Viber's JSON: something in between answered, and whether
            // Viber has the message is unknown. Retrying risks a duplicate, not retrying
            // risks a loss; a proxy's error page is the likelier cause, so retry.
            return Err(DeliveryError::retryable(format!(
                "Viber answered without its JSON: {}",
                body_snippet(&answer.body)
            )));
        };
        if reply.status != 0 {
            return Err(classify(&reply));
        }
        Ok(Delivery {
            provider_id: reply.message_token.map(|t| t.to_string()),
            detail: None,
        })
    }

    fn receipts(&self, callback: &StatusCallback) -> Result<Vec<Receipt>, ReceiptError> {
        let signature = callback
            .header(SIGNATURE_HEADER)
            .and_then(|v| hex::decode(v.trim()).ok())
            .ok_or(ReceiptError::BadSignature)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(self.auth_token.as_bytes())
            .map_err(|_| ReceiptError::BadSignature)?;
        mac.update(&callback.body);
        // `verify_slice` compares in constant time.
        mac.verify_slice(&signature)
            .map_err(|_| ReceiptError::BadSignature)?;

        let event: Callback = serde_json::from_slice(&callback.body)
            .map_err(|e| ReceiptError::Malformed(format!("not a Viber callback: {e}")))?;
        let status = match event.event.as_str() {
            "delivered" => ReceiptStatus::Delivered,
            "seen" => ReceiptStatus::Opened,
            "failed" => ReceiptStatus::Bounced {
                address_gone: false,
            },
            "unsubscribed" => ReceiptStatus::Bounced { address_gone: true },
            _ => return Ok(Vec::new()),
        };
        // An `unsubscribed` callback's `message_token` names the callback itself, not a
        // message we sent: matched by it, the receipt would find nothing and the user would
        // stay reachable. It is about the user, so it names only them, and the daemon takes
        // the latest message sent to that address.
        let (provider_id, detail) = match event.event.as_str() {
            "unsubscribed" => (None, Some("the user unsubscribed from the bot".to_owned())),
            _ => (event.message_token.map(|t| t.to_string()), event.desc),
        };
        Ok(vec![Receipt {
            provider_id,
            address: event.user_id,
            status,
            detail,
        }])
    }
}

/// Classifies a non-zero `status`; see the table in the crate docs.
fn classify(answer: &SendAnswer) -> DeliveryError {
    let words = answer
        .status_message
        .as_deref()
        .unwrap_or("no status_message");
    let reason = format!("Viber status {}: {words}", answer.status);
    match answer.status {
        5 | 6 | 11 => DeliveryError::address_gone(reason),
        12 => DeliveryError::retryable(reason),
        1..=24 => DeliveryError::permanent(reason),
        _ => DeliveryError::retryable(reason),
    }
}

#[derive(Deserialize)]
struct SendAnswer {
    status: i64,
    status_message: Option<String>,
    /// A 64-bit number: kept as JSON's number so no digit is lost on the way to a string.
    message_token: Option<Number>,
}

#[derive(Deserialize)]
struct Callback {
    event: String,
    message_token: Option<Number>,
    user_id: Option<String>,
    /// Why a `failed` message failed.
    desc: Option<String>,
}
