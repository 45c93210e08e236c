//! Waymark's `whatsapp` channel kind: text and template messages through Meta's WhatsApp
//! Cloud API.
//!
//! ```yaml
//! channels:
//!   whatsapp:
//!     kind: whatsapp
//!     access_token: "${WHATSAPP_TOKEN}"       # a system user's token with whatsapp_business_messaging
//!     phone_number_id: "106540352242922"      # the sending number's id, not the number itself
//!     api_version: "v21.0"                    # optional; default v21.0
//!     app_secret: "${META_APP_SECRET}"        # optional: accept status webhooks as receipts
//!     verify_token: "${META_VERIFY_TOKEN}"    # optional: answer the webhook's verification
//!     base_url: "https://graph.facebook.com"  # optional: a proxy or a test server
//!     timeout: 30                             # optional: seconds per request; default 30
//! ```
//!
//! The customer's address is the `phone` profile trait, in international form
//! (`+79161234567` or `79161234567`).
//!
//! # What is sent
//!
//! `POST {base_url}/{api_version}/{phone_number_id}/messages` with
//! `Authorization: Bearer {access_token}` and a JSON body:
//!
//! - A **text** message, `{"messaging_product": "whatsapp", "recipient_type": "individual",
//!   "to": PHONE, "type": "text", "text": {"body": TEXT}}`, from the rendered `text` field.
//!   WhatsApp only delivers free text inside the 24-hour window after the customer last
//!   wrote to the business; outside it the API refuses with code 131047.
//! - A **template** message when the rendered content has a `template` field: the name of
//!   an approved WhatsApp template. `language` (default `ru`) is its language code, and
//!   `components`, when present, is the JSON array of the Cloud API's `components`
//!   (header, body and button parameters), written as a string in the journey's template:
//!
//!   ```yaml
//!   content:
//!     template: cart_reminder
//!     language: en
//!     components: '[{"type": "body", "parameters": [{"type": "text", "text": "{{ cart.total }}"}]}]'
//!   ```
//!
//!   Marketing outside the 24-hour window needs a template.
//!
//! Both carry the outbox idempotency key in `biz_opaque_callback_data`. The Cloud API does
//! not deduplicate on it (it has no idempotency key), but echoes it in every status webhook
//! for the message, so a receipt names the outbox row it is about (see below). As with any
//! provider without deduplication, only a crash or a timeout between Meta's acceptance and
//! the outbox's record of it can send a message twice.
//!
//! # Errors
//!
//! Graph API errors come as `{"error": {"message", "type", "code", "error_data":
//! {"details"}, "fbtrace_id"}}`; Meta asks clients to act on `code`, not on the HTTP status
//! or the deprecated `error_subcode`:
//!
//! | code | meaning | outcome |
//! |---|---|---|
//! | 131026 | message undeliverable: not a WhatsApp number, the customer has not accepted the terms, or has blocked the business | permanent, address gone |
//! | 131030 | recipient not in the test number's allowed list | permanent |
//! | 131047 | outside the 24-hour window; send a template | permanent |
//! | 4, 80007, 130429 | API call or throughput rate limit | retryable |
//! | 131048, 131056 | spam rate limit, or too many messages to this one customer | retryable |
//! | 2, 131000, 131016, 133004 | temporary service errors | retryable |
//! | 0, 190, 10, 200-299 | the token or its permissions | permanent (fix the config) |
//! | others | | by HTTP status: 5xx and 429 retry, other 4xx are permanent |
//!
//! Retryable answers honour a `Retry-After` header (seconds or an HTTP date) when Meta
//! sends one.
//!
//! # Delivery receipts
//!
//! Subscribe the app to the `messages` webhook field and point it at
//! `POST /v1/channels/{name}/status`. Each POST is verified against
//! `X-Hub-Signature-256: sha256=HEX(HMAC-SHA256(app_secret, raw body))`, then every
//! `entry[].changes[].value.statuses[]` becomes a receipt: `delivered` → delivered, `read`
//! → opened, `failed` → bounced (address gone for code 131026); `sent` and anything else is
//! skipped. The provider id is the `wamid` the send returned; the receipt's detail names
//! the idempotency key from `biz_opaque_callback_data`. Without `app_secret` the channel
//! refuses webhooks: an unauthenticated endpoint would let anyone bounce customers.
//!
//! Meta registers the webhook only once `GET /v1/channels/{name}/status` answers its
//! verification request: with `hub.mode=subscribe` and `hub.verify_token` equal to the
//! configured `verify_token`, the channel answers `hub.challenge`; without `verify_token`
//! it refuses every such request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use waymark_channel::{
    Channel, ChannelKind, ConfigCheck, ConfigError, Delivery, DeliveryError, OutboundMessage,
    Receipt, ReceiptError, ReceiptStatus, StatusCallback, parse_config,
};
use waymark_channel_http as http;

const DEFAULT_BASE_URL: &str = "https://graph.facebook.com";
/// A Graph API version current when this adapter was written; Meta supports each version
/// for about two years, so configs should pin their own.
const DEFAULT_API_VERSION: &str = "v21.0";
/// Long enough for a slow Graph API answer, short enough that a hung connection does not
/// hold an outbox worker for minutes.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The language of a template message when the content does not say.
const DEFAULT_TEMPLATE_LANGUAGE: &str = "ru";
/// The Cloud API's limit for `biz_opaque_callback_data`.
const MAX_CALLBACK_DATA: usize = 512;
const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// The code for "message undeliverable": the number cannot get messages from this business.
const UNDELIVERABLE: i64 = 131_026;

/// The `whatsapp` channel kind. Register it with
/// `Registry::new().with(waymark_channel_whatsapp::WhatsAppKind)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WhatsAppKind;

/// The config section of a `whatsapp` channel; see the crate docs for the keys.
///
/// No `Debug`: it holds the access token and the app secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhatsAppConfig {
    access_token: String,
    phone_number_id: String,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    app_secret: Option<String>,
    #[serde(default)]
    verify_token: Option<String>,
    /// Seconds.
    #[serde(default)]
    timeout: Option<u64>,
}

impl ChannelKind for WhatsAppKind {
    fn kind(&self) -> &'static str {
        "whatsapp"
    }

    fn address_trait(&self) -> Option<&'static str> {
        Some("phone")
    }

    fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn Channel>, ConfigError> {
        let config: WhatsAppConfig = parse_config(name, config)?;
        Ok(Arc::new(WhatsAppChannel::new(name, config)?))
    }
}

/// A configured WhatsApp sender. No `Debug`: it holds secrets.
struct WhatsAppChannel {
    client: reqwest::Client,
    messages_url: String,
    /// The whole `Authorization` value, built once.
    authorization: String,
    app_secret: Option<String>,
    verify_token: Option<String>,
}

impl WhatsAppChannel {
    fn new(name: &str, config: WhatsAppConfig) -> Result<Self, ConfigError> {
        let check = ConfigCheck::new(name);

        let token = config.access_token.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(check.error(
                "access_token",
                "expected a Graph API access token (no spaces)",
            ));
        }
        let phone_number_id = config.phone_number_id.trim();
        if phone_number_id.is_empty() || !phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(check.error(
                "phone_number_id",
                "expected the numeric id WhatsApp Manager shows for the sending number, \
                 not the phone number",
            ));
        }
        let api_version = config.api_version.as_deref().unwrap_or(DEFAULT_API_VERSION);
        if !is_api_version(api_version) {
            return Err(check.error(
                "api_version",
                format!("expected a Graph API version such as `{DEFAULT_API_VERSION}`"),
            ));
        }
        if config.app_secret.as_deref().is_some_and(str::is_empty) {
            return Err(check.error("app_secret", "must not be empty"));
        }
        if config.verify_token.as_deref().is_some_and(str::is_empty) {
            return Err(check.error("verify_token", "must not be empty"));
        }
        let base_url = check.base_url(config.base_url.as_deref(), DEFAULT_BASE_URL)?;
        let timeout = check.timeout(config.timeout, DEFAULT_TIMEOUT)?;
        let client = http::client(timeout)
            .map_err(|e| check.error("base_url", format!("cannot build an HTTP client: {e}")))?;

        Ok(WhatsAppChannel {
            client,
            messages_url: format!("{base_url}/{api_version}/{phone_number_id}/messages"),
            authorization: format!("Bearer {token}"),
            app_secret: config.app_secret,
            verify_token: config.verify_token,
        })
    }

    /// The request body for `message`, or why it cannot be sent.
    fn body(message: &OutboundMessage, to: &str) -> Result<Value, DeliveryError> {
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
        });
        let template = message.field("template");
        if template.is_empty() {
            let text = message.field("text");
            if text.is_empty() {
                return Err(DeliveryError::permanent(
                    "the message has neither `text` nor a WhatsApp `template` to send",
                ));
            }
            body["type"] = json!("text");
            body["text"] = json!({"body": text});
        } else {
            let language = match message.field("language") {
                "" => DEFAULT_TEMPLATE_LANGUAGE,
                code => code,
            };
            let mut spec = json!({"name": template, "language": {"code": language}});
            let components = message.field("components");
            if !components.trim().is_empty() {
                let parsed: Value = serde_json::from_str(components).map_err(|e| {
                    DeliveryError::permanent(format!(
                        "the `components` field is not JSON ({e}); it must be the Cloud API's \
                         components array"
                    ))
                })?;
                if !parsed.is_array() {
                    return Err(DeliveryError::permanent(
                        "the `components` field must be a JSON array, as the Cloud API's \
                         template components are",
                    ));
                }
                spec["components"] = parsed;
            }
            body["type"] = json!("template");
            body["template"] = spec;
        }
        // Longer keys than the API allows are not sent rather than cut: a cut key would
        // name the wrong outbox row in receipts.
        if message.idempotency_key.len() <= MAX_CALLBACK_DATA {
            body["biz_opaque_callback_data"] = json!(message.idempotency_key);
        }
        Ok(body)
    }
}

/// `v` followed by `major.minor`, such as `v21.0`.
fn is_api_version(version: &str) -> bool {
    version.strip_prefix('v').is_some_and(|rest| {
        rest.split_once('.').is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    })
}

#[async_trait]
impl Channel for WhatsAppChannel {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        let to = message.require_address()?;
        let body = Self::body(message, to)?;

        let request = self
            .client
            .post(&self.messages_url)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .json(&body);
        let answer = http::send(request, "the WhatsApp Cloud API").await?;
        if answer.is_success() {
            // Meta took the message; an answer we cannot read must not make the outbox send
            // it again.
            let sent = serde_json::from_slice::<SendAnswer>(&answer.body)
                .ok()
                .and_then(|a| a.messages.into_iter().next());
            return Ok(Delivery {
                provider_id: sent.as_ref().map(|m| m.id.clone()),
                detail: match sent {
                    Some(SentMessage {
                        message_status: Some(state),
                        ..
                    }) => Some(format!("message_status={state}")),
                    Some(_) => None,
                    None => Some("accepted; the answer had no message id".to_owned()),
                },
            });
        }
        let error = serde_json::from_slice::<ErrorAnswer>(&answer.body)
            .ok()
            .and_then(|a| a.error)
            .and_then(|e| serde_json::from_value::<GraphError>(e).ok());
        Err(match error {
            Some(error) => classify(answer.status, answer.retry_after.as_deref(), &error),
            None => answer.status_error(),
        })
    }

    fn verify_subscription(&self, query: &BTreeMap<String, String>) -> Option<String> {
        let expected = self.verify_token.as_deref()?;
        let given = query.get("hub.verify_token")?;
        let subscribing = query
            .get("hub.mode")
            .is_some_and(|mode| mode == "subscribe");
        (subscribing && waymark_channel::secrets_match(given.as_bytes(), expected.as_bytes()))
            .then(|| query.get("hub.challenge").cloned())
            .flatten()
    }

    fn receipts(&self, callback: &StatusCallback) -> Result<Vec<Receipt>, ReceiptError> {
        let Some(secret) = &self.app_secret else {
            return Err(ReceiptError::Unsupported);
        };
        let signature = callback
            .header(SIGNATURE_HEADER)
            .and_then(|v| v.trim().strip_prefix("sha256="))
            .and_then(|hex| hex::decode(hex).ok())
            .ok_or(ReceiptError::BadSignature)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|_| ReceiptError::BadSignature)?;
        mac.update(&callback.body);
        // `verify_slice` compares in constant time.
        mac.verify_slice(&signature)
            .map_err(|_| ReceiptError::BadSignature)?;

        let payload: Webhook = serde_json::from_slice(&callback.body)
            .map_err(|e| ReceiptError::Malformed(format!("not a WhatsApp webhook: {e}")))?;
        let receipts = payload
            .entry
            .into_iter()
            .flat_map(|entry| entry.changes)
            .filter_map(|change| change.value)
            .flat_map(|value| value.statuses)
            .filter_map(receipt)
            .collect();
        Ok(receipts)
    }
}

/// One status from a webhook as a receipt; `None` for statuses that are not receipts.
fn receipt(status: StatusUpdate) -> Option<Receipt> {
    let (state, detail) = match status.status.as_str() {
        "delivered" => (ReceiptStatus::Delivered, None),
        "read" => (ReceiptStatus::Opened, None),
        "failed" => {
            let gone = status.errors.iter().any(|e| e.code == Some(UNDELIVERABLE));
            let words = status
                .errors
                .iter()
                .map(|e| {
                    let code = e.code.map(|c| c.to_string()).unwrap_or_default();
                    let title = e.title.as_deref().or(e.message.as_deref()).unwrap_or("");
                    format!("{code} {title}").trim().to_owned()
                })
                .collect::<Vec<_>>()
                .join("; ");
            (
                ReceiptStatus::Bounced { address_gone: gone },
                Some(words).filter(|w| !w.is_empty()),
            )
        }
        _ => return None,
    };
    let detail = match (detail, status.biz_opaque_callback_data) {
        (Some(words), Some(key)) => Some(format!("{words} (key {key})")),
        (None, Some(key)) => Some(format!("key {key}")),
        (words, None) => words,
    };
    Some(Receipt {
        provider_id: Some(status.id),
        address: status.recipient_id,
        status: state,
        detail,
    })
}

/// Classifies a Graph API error by its `code`, as Meta recommends.
fn classify(status: u16, retry_after: Option<&str>, error: &GraphError) -> DeliveryError {
    let code = error.code.unwrap_or_default();
    let words = error
        .error_data
        .as_ref()
        .and_then(|d| d.details.as_deref())
        .or(error.message.as_deref())
        .unwrap_or("no message");
    let reason = format!("WhatsApp error {code}: {words}");
    let retryable = |reason: String| DeliveryError::Retryable {
        reason,
        retry_after: retry_after.and_then(waymark_channel::retry_after_header),
    };
    match code {
        UNDELIVERABLE => DeliveryError::address_gone(reason),
        // Rate limits: of API calls (4, 80007), of throughput (130429), of a number flagged
        // for spam (131048), of messages to one customer (131056).
        4 | 80_007 | 130_429 | 131_048 | 131_056 => retryable(reason),
        // "Temporarily unavailable" in Meta's own words.
        2 | 131_000 | 131_016 | 133_004 => retryable(reason),
        131_030 => DeliveryError::permanent(format!(
            "{reason} (the sending number is a test number: add the recipient to its allowed list)"
        )),
        131_047 => DeliveryError::permanent(format!(
            "{reason} (more than 24 hours since the customer wrote: send a template)"
        )),
        // Authentication and permissions: retrying cannot fix the config.
        0 | 10 | 190 | 200..=299 => DeliveryError::permanent(format!(
            "{reason} (check `access_token` and its permissions)"
        )),
        _ => DeliveryError::from_http_status(status, retry_after, reason),
    }
}

#[derive(Deserialize)]
struct SendAnswer {
    #[serde(default)]
    messages: Vec<SentMessage>,
}

#[derive(Deserialize)]
struct SentMessage {
    id: String,
    /// `accepted`, `held_for_quality_assessment` or `paused` for template messages.
    message_status: Option<String>,
}

/// `error` is kept loose so a non-Graph body (`{"error": "..."}` from a proxy) falls back
/// to the HTTP status instead of failing to parse.
#[derive(Deserialize)]
struct ErrorAnswer {
    error: Option<Value>,
}

#[derive(Deserialize)]
struct GraphError {
    message: Option<String>,
    code: Option<i64>,
    error_data: Option<ErrorData>,
}

#[derive(Deserialize)]
struct ErrorData {
    details: Option<String>,
}

#[derive(Deserialize)]
struct Webhook {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    value: Option<ChangeValue>,
}

#[derive(Deserialize)]
struct ChangeValue {
    /// Absent on inbound-message and other notifications.
    #[serde(default)]
    statuses: Vec<StatusUpdate>,
}

#[derive(Deserialize)]
struct StatusUpdate {
    id: String,
    status: String,
    recipient_id: Option<String>,
    biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    errors: Vec<StatusError>,
}

#[derive(Deserialize)]
struct StatusError {
    code: Option<i64>,
    title: Option<String>,
    message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        assert!(is_api_version("v21.0"));
        assert!(is_api_version("v9.10"));
        assert!(!is_api_version("21.0"));
        assert!(!is_api_version("v21"));
        assert!(!is_api_version("v21."));
        assert!(!is_api_version("v21.0/x"));
    }
}
