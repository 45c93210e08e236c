//! A `slack` channel kind for Waymark, written the way any third-party adapter is: a crate
//! whose adapter depends on `waymark-channel` (and `waymark-channel-http`, the reqwest
//! helpers HTTP adapters share) only, implements [`ChannelKind`] and [`Channel`], and is
//! registered in one line (see `src/main.rs`).
//!
//! Each message is posted to a Slack [incoming webhook], which is bound to one Slack
//! channel: it suits internal alerts such as "a big cart was abandoned, call the customer".
//!
//! ```yaml
//! channels:
//!   sales_alerts:
//!     kind: slack
//!     webhook_url: "${SLACK_WEBHOOK_URL}"   # https://hooks.slack.com/services/T.../B.../...
//!     timeout: 10                           # optional: seconds per request; default 30
//! ```
//!
//! The webhook URL is the whole endpoint, so it also serves to point the channel at a proxy
//! or a test server; its last path segment is a secret, so no error or log ever shows it.
//!
//! # What is sent
//!
//! `POST {webhook_url}` with `Content-Type: application/json` and the body
//! `{"text": ..., "blocks"?: [...]}`: `text` is the template's rendered `text` field (Slack
//! shows it in notifications and wherever blocks cannot be shown); `blocks` is the rendered
//! `body` field when the template has one, holding [Block Kit] JSON: an array of blocks, or
//! `{"blocks": [...]}` as Block Kit Builder exports it.
//!
//! ```yaml
//! # templates/big_cart.yaml
//! sales_alerts:
//!   text: "{{ profile.first_name }} left {{ trigger.total }} RUB in the cart"
//! ```
//!
//! Incoming webhooks have no idempotency key and no message id: the outbox's once-only
//! hand-over is the only protection against a duplicate post.
//!
//! # Errors
//!
//! Slack answers `200 ok`, or an error status with its reason as a plain-text body:
//!
//! | Slack says | outcome |
//! |---|---|
//! | 404 `channel_not_found`, `no_service`; 410 `channel_is_archived` | permanent, address gone: the webhook's channel will never take a post again |
//! | 429 | retryable, after `Retry-After` |
//! | 5xx, timeouts, connection errors | retryable |
//! | other 4xx: 400 `invalid_payload`, `no_text`; 403 `action_prohibited`, ... | permanent, with Slack's reason |
//!
//! An address gone marks the channel unreachable on the customer's profile, so journeys
//! fall back to another channel for that customer from then on.
//!
//! [incoming webhook]: https://api.slack.com/messaging/webhooks
//! [Block Kit]: https://api.slack.com/block-kit

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use waymark_channel::{
    Channel, ChannelKind, ConfigCheck, ConfigError, Delivery, DeliveryError, OutboundMessage,
    body_snippet, parse_config,
};
use waymark_channel_http as http;

/// Long enough for a slow answer, short enough that a hung connection does not hold an
/// outbox worker for minutes.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `slack` channel kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlackKind;

/// A `slack` channel's config section. No `Debug`: the webhook URL is a secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlackConfig {
    webhook_url: String,
    /// Seconds.
    #[serde(default)]
    timeout: Option<u64>,
}

impl ChannelKind for SlackKind {
    fn kind(&self) -> &'static str {
        "slack"
    }

    /// A webhook posts to the Slack channel it was created for: no customer address.
    fn address_trait(&self) -> Option<&'static str> {
        None
    }

    fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn Channel>, ConfigError> {
        let config: SlackConfig = parse_config(name, config)?;
        let check = ConfigCheck::new(name);
        // The parse error never quotes the URL, and neither does this message.
        let webhook_url = reqwest::Url::parse(config.webhook_url.trim())
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| {
                check.error(
                    "webhook_url",
                    "expected the https://hooks.slack.com/services/... URL Slack gave",
                )
            })?;
        let timeout = check.timeout(config.timeout, DEFAULT_TIMEOUT)?;
        let client = http::client(timeout)
            .map_err(|e| check.error("webhook_url", format!("cannot set up HTTP: {e}")))?;
        Ok(Arc::new(SlackChannel {
            client,
            webhook_url,
        }))
    }
}

/// A configured webhook. No `Debug`: the URL is a secret.
struct SlackChannel {
    client: reqwest::Client,
    webhook_url: reqwest::Url,
}

#[async_trait]
impl Channel for SlackChannel {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        let payload = payload(message).map_err(DeliveryError::permanent)?;
        // The URL holds the secret: `http` drops it from transport errors.
        let request = self.client.post(self.webhook_url.clone()).json(&payload);
        let answer = http::send(request, "Slack").await?;
        if answer.is_success() {
            // Slack gives no message id for a webhook post.
            return Ok(Delivery::default());
        }
        Err(classify(&answer))
    }
}

/// The JSON Slack takes, from the rendered `text` and optional `body` (Block Kit) fields.
fn payload(message: &OutboundMessage) -> Result<Value, String> {
    let text = message.field("text");
    if text.trim().is_empty() {
        return Err(format!(
            "template `{}` has no `text` to post to Slack",
            message.template
        ));
    }
    let mut payload = json!({ "text": text });
    let body = message.field("body");
    if !body.trim().is_empty() {
        let not_blocks = |why: String| {
            format!(
                "template `{}`: `body` must be Block Kit JSON, an array of blocks or {{\"blocks\": [...]}}: {why}",
                message.template
            )
        };
        let blocks =
            match serde_json::from_str::<Value>(body).map_err(|e| not_blocks(e.to_string()))? {
                blocks @ Value::Array(_) => blocks,
                Value::Object(mut object) => match object.remove("blocks") {
                    Some(blocks @ Value::Array(_)) => blocks,
                    _ => return Err(not_blocks("the object has no `blocks` array".to_owned())),
                },
                _ => return Err(not_blocks("neither an array nor an object".to_owned())),
            };
        payload["blocks"] = blocks;
    }
    Ok(payload)
}

/// Classifies a refusal; Slack's reason (such as `channel_is_archived`) is the body.
fn classify(answer: &http::Answer) -> DeliveryError {
    let reason = body_snippet(&answer.body);
    match answer.status {
        // Every 404 and 410 Slack documents for webhooks means the destination is gone:
        // the channel was deleted or archived, or the webhook was removed.
        404 | 410 => DeliveryError::address_gone(format!("Slack {}: {reason}", answer.status)),
        _ => answer.status_error_with(format!("Slack: {reason}")),
    }
}
