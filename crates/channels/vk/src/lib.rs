//! Waymark's `vk` channel kind: messages from a VK community, through the VK API.
//!
//! ```yaml
//! channels:
//!   vk:
//!     kind: vk
//!     access_token: "${VK_COMMUNITY_TOKEN}"   # a community token with the `messages` right
//!     api_version: "5.199"                    # optional; default 5.199
//!     base_url: "https://api.vk.com"          # optional: a proxy or a test server
//!     timeout: 30                             # optional: seconds per request; default 30
//! ```
//!
//! The customer's address is the `vk_user_id` profile trait: the numeric VK user id. VK
//! only lets a community write to users who allowed it (by writing first or through the
//! "allow messages" button); others are refused with error 901.
//!
//! # What is sent
//!
//! `POST {base_url}/method/messages.send` with an `application/x-www-form-urlencoded` body:
//! `user_id`, `message` (the rendered `text` field), `random_id`, `access_token` and `v`.
//! The token travels in the body rather than the query string, so it stays out of access
//! logs and of any error this crate reports.
//!
//! # Idempotency: `random_id`
//!
//! `random_id` is VK's deduplication key: a second `messages.send` from the same community
//! with the same `random_id` is not sent again. It is a 32-bit integer, so this adapter
//! derives it from the outbox idempotency key: the 64-bit FNV-1a hash of the key's UTF-8
//! bytes, masked to its low 31 bits (a positive `i32`), with 0 replaced by 1 because VK
//! reads 0 as "no deduplication". The same key always gives the same `random_id`, so a
//! retry after a timeout cannot reach the customer twice. Two different keys collide with
//! probability 2^-31; VK then answers with the earlier message rather than sending, which
//! would lose one message in about two billion.
//!
//! # Errors
//!
//! VK answers HTTP 200 for API errors, with `{"error": {"error_code", "error_msg"}}` in the
//! body, so the body decides:
//!
//! | `error_code` | meaning | outcome |
//! |---|---|---|
//! | 1, 10 | unknown or internal server error | retryable |
//! | 6, 9, 29 | too many requests per second, flood control, rate limit | retryable |
//! | 900, 901, 902 | blacklisted, no permission to write, privacy settings | permanent, address gone |
//! | 18, 113 | user deleted or banned, invalid user id | permanent, address gone |
//! | others (5 authorization, 7 and 15 permissions, 100 parameters, 914 too long, ...) | | permanent |
//!
//! Non-200 statuses (a proxy, an outage) are judged by the status: 5xx and 429 retry.
//! A success is `{"response": message_id}`; the message id is the provider id.
//!
//! VK has no delivery callbacks for community messages that would fit the receipt model,
//! so this channel accepts no receipts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use waymark_channel::{
    Channel, ChannelKind, ConfigCheck, ConfigError, Delivery, DeliveryError, OutboundMessage,
    body_snippet, parse_config,
};
use waymark_channel_http as http;

const DEFAULT_BASE_URL: &str = "https://api.vk.com";
/// A VK API version current when this adapter was written; the answer shapes it relies
/// on (`response` as a message id, `error.error_code`) have been stable across 5.x.
const DEFAULT_API_VERSION: &str = "5.199";
/// Long enough for a slow VK answer, short enough that a hung connection does not hold an
/// outbox worker for minutes.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `vk` channel kind. Register it with
/// `Registry::new().with(waymark_channel_vk::VkKind)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct VkKind;

/// The config section of a `vk` channel; see the crate docs for the keys.
///
/// No `Debug`: it holds the access token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VkConfig {
    access_token: String,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    /// Seconds.
    #[serde(default)]
    timeout: Option<u64>,
}

impl ChannelKind for VkKind {
    fn kind(&self) -> &'static str {
        "vk"
    }

    fn address_trait(&self) -> Option<&'static str> {
        Some("vk_user_id")
    }

    fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn Channel>, ConfigError> {
        let config: VkConfig = parse_config(name, config)?;
        Ok(Arc::new(VkChannel::new(name, config)?))
    }
}

/// A configured VK community. No `Debug`: it holds the access token.
struct VkChannel {
    client: reqwest::Client,
    send_url: String,
    access_token: String,
    api_version: String,
}

impl VkChannel {
    fn new(name: &str, config: VkConfig) -> Result<Self, ConfigError> {
        let check = ConfigCheck::new(name);

        let access_token = config.access_token.trim();
        if access_token.is_empty() || access_token.contains(char::is_whitespace) {
            return Err(check.error(
                "access_token",
                "expected a community access token (no spaces)",
            ));
        }
        let api_version = config.api_version.as_deref().unwrap_or(DEFAULT_API_VERSION);
        let valid_version = api_version.split_once('.').is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        if !valid_version {
            return Err(check.error(
                "api_version",
                format!("expected a VK API version such as `{DEFAULT_API_VERSION}`"),
            ));
        }
        let base_url = check.base_url(config.base_url.as_deref(), DEFAULT_BASE_URL)?;
        let timeout = check.timeout(config.timeout, DEFAULT_TIMEOUT)?;
        let client = http::client(timeout)
            .map_err(|e| check.error("base_url", format!("cannot build an HTTP client: {e}")))?;

        Ok(VkChannel {
            client,
            send_url: format!("{base_url}/method/messages.send"),
            access_token: access_token.to_owned(),
            api_version: api_version.to_owned(),
        })
    }
}

/// VK's `random_id` for an outbox idempotency key; see the crate docs.
pub fn random_id(idempotency_key: &str) -> i32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = idempotency_key.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    // The mask keeps 31 bits, so the value fits a positive i32.
    match i32::try_from(hash & 0x7fff_ffff) {
        Ok(0) | Err(_) => 1,
        Ok(id) => id,
    }
}

#[async_trait]
impl Channel for VkChannel {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        let address = message.require_address()?;
        let Ok(user_id) = address.trim().parse::<i64>() else {
            return Err(DeliveryError::address_gone(format!(
                "`{address}` is not a numeric VK user id"
            )));
        };
        let text = message.field("text");
        if text.is_empty() {
            return Err(DeliveryError::permanent(
                "the message has no `text` to send to VK",
            ));
        }
        let random_id = random_id(&message.idempotency_key);
        let form = [
            ("user_id", user_id.to_string()),
            ("message", text.to_owned()),
            ("random_id", random_id.to_string()),
            ("access_token", self.access_token.clone()),
            ("v", self.api_version.clone()),
        ];

        // A request that got no answer is retryable: `random_id` keeps a retry from
        // duplicating.
        let answer = http::send(self.client.post(&self.send_url).form(&form), "VK").await?;
        if !answer.is_success() {
            return Err(answer.status_error());
        }
        let reply: Reply = serde_json::from_slice(&answer.body).map_err(|_| {
            // A 2xx that is not the VK API's JSON: something in between answered. Whether
            // VK sent the message is unknown; `random_id` makes a retry safe.
            DeliveryError::retryable(format!(
                "VK answered without JSON: {}",
                body_snippet(&answer.body)
            ))
        })?;
        if let Some(error) = reply.error {
            return Err(classify(&error));
        }
        let detail = format!("random_id={random_id}");
        match reply.response {
            Some(Value::Number(id)) => Ok(Delivery {
                provider_id: Some(id.to_string()),
                detail: Some(detail),
            }),
            // The per-peer array form (`peer_ids`): one element for our one recipient.
            Some(Value::Array(items)) => {
                let Some(item) = items.into_iter().next() else {
                    return Err(DeliveryError::permanent("VK answered an empty array"));
                };
                if let Some(error) = item.get("error").filter(|e| !e.is_null()) {
                    let error = serde_json::from_value::<VkError>(error.clone())
                        .map_err(|_| DeliveryError::permanent(format!("VK refused: {error}")))?;
                    return Err(classify(&error));
                }
                Ok(Delivery {
                    provider_id: item.get("message_id").map(Value::to_string),
                    detail: Some(detail),
                })
            }
            _ => Ok(Delivery {
                provider_id: None,
                detail: Some(format!("{detail}; the answer had no message id")),
            }),
        }
    }
}

/// The VK API's answer: `response` on success, `error` on failure.
#[derive(Deserialize)]
struct Reply {
    response: Option<Value>,
    error: Option<VkError>,
}

#[derive(Deserialize)]
struct VkError {
    error_code: i64,
    #[serde(default)]
    error_msg: String,
}

/// Classifies a VK API error by its code.
fn classify(error: &VkError) -> DeliveryError {
    let reason = format!("VK error {}: {}", error.error_code, error.error_msg);
    match error.error_code {
        // Unknown error, internal server error: VK asks to try again later.
        1 | 10 => DeliveryError::retryable(reason),
        // Too many requests per second, flood control, rate limit reached.
        6 | 9 | 29 => DeliveryError::retryable(reason),
        // Blacklisted, not allowed to write, privacy settings; deleted or banned user,
        // invalid user id.
        900 | 901 | 902 | 18 | 113 => DeliveryError::address_gone(reason),
        _ => DeliveryError::permanent(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_id_is_fnv1a_masked_to_a_positive_i32() {
        // FNV-1a 64 of "" is the offset basis; of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(random_id(""), 0x0422_2325);
        assert_eq!(random_id("a"), 0x0601_ec8c);
        assert_eq!(random_id("wm-1"), random_id("wm-1"));
        assert_ne!(random_id("wm-1"), random_id("wm-2"));
        assert!(random_id("wm-0123456789abcdef") > 0);
    }
}
