//! `kind: smsru`: SMS.ru's `sms/send` method.
//!
//! ```yaml
//! channels:
//!   sms:
//!     kind: smsru
//!     api_id: ${SMSRU_API_ID}
//!     from: Polka          # optional, a sender name agreed with SMS.ru
//!     base_url: "https://sms.ru"   # optional: a proxy or a test server
//! ```
//!
//! A message is `POST {base_url}/sms/send` with a form body of `api_id`, `to` (digits
//! only), `msg`, `json=1` and optional `from`. SMS.ru answers HTTP 200 with a status per
//! request and per number; the number's `sms_id` is the provider id. SMS.ru has no
//! idempotency field, so the outbox's once-only delivery is the only protection.
//!
//! Status codes (SMS.ru's `status_code`, for the request and for the number): 202 (invalid
//! number), 207 (no route to this number) and 209 (the number is on the stop list) mean the
//! address is gone; 220 (service temporarily unavailable) and 500 (server error, "repeat
//! the request") retry, as do HTTP 5xx and 429; so do SMS.ru's limits, which pass: 231 (the
//! same text to this number within a minute, retried after a minute), 206 (the account's
//! daily limit), 230 (this number's daily limit) and 232 (the same text to this number
//! today). The rest (200 bad `api_id`, 201 no funds, 203 no text, 204 sender name not
//! agreed, ...) fail the message with SMS.ru's text. An empty `text` fails the message
//! without a request.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use waymark_channel::{
    Channel, ChannelKind, ConfigCheck, ConfigError, Delivery, DeliveryError, OutboundMessage,
    body_snippet, parse_config,
};
use waymark_channel_http as http;

use crate::segments;

const ADDRESS_GONE: [u64; 3] = [202, 207, 209];
/// Service unavailable, server error, and the limits that lift with time (account per
/// day, number per day, same text per day).
const RETRYABLE: [u64; 5] = [220, 500, 206, 230, 232];
/// The same text to the same number within a minute: try again after that minute.
const SAME_TEXT_PER_MINUTE: u64 = 231;

/// `kind: smsru`.
pub struct SmsRuKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    api_id: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default = "default_timeout")]
    timeout: u64,
}

fn default_timeout() -> u64 {
    30
}

const DEFAULT_BASE_URL: &str = "https://sms.ru";

impl ChannelKind for SmsRuKind {
    fn kind(&self) -> &'static str {
        "smsru"
    }

    fn address_trait(&self) -> Option<&'static str> {
        Some("phone")
    }

    fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn Channel>, ConfigError> {
        let config: Config = parse_config(name, config)?;
        let check = ConfigCheck::new(name);
        if config.api_id.is_empty() {
            return Err(check.section_error("`api_id` must not be empty"));
        }
        let base_url = check.base_url(config.base_url.as_deref(), DEFAULT_BASE_URL)?;
        let timeout = check.seconds("timeout", config.timeout)?;
        let client = http::client(timeout)
            .map_err(|e| check.section_error(format!("cannot set up HTTP: {e}")))?;
        Ok(Arc::new(SmsRu {
            endpoint: format!("{base_url}/sms/send"),
            api_id: config.api_id,
            from: config.from,
            client,
        }))
    }
}

struct SmsRu {
    endpoint: String,
    api_id: String,
    from: Option<String>,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct SendAnswer {
    status: String,
    #[serde(default)]
    status_code: Option<u64>,
    #[serde(default)]
    status_text: Option<String>,
    #[serde(default)]
    sms: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct NumberStatus {
    status: String,
    #[serde(default)]
    status_code: Option<u64>,
    #[serde(default)]
    status_text: Option<String>,
    #[serde(default)]
    sms_id: Option<String>,
}

fn refusal(code: Option<u64>, text: Option<String>) -> DeliveryError {
    let reason = format!(
        "SMS.ru error {}: {}",
        code.unwrap_or(0),
        text.unwrap_or_default()
    );
    match code {
        Some(c) if ADDRESS_GONE.contains(&c) => DeliveryError::address_gone(reason),
        Some(c) if RETRYABLE.contains(&c) => DeliveryError::retryable(reason),
        Some(SAME_TEXT_PER_MINUTE) => DeliveryError::Retryable {
            reason,
            retry_after: Some(Duration::from_secs(60)),
        },
        _ => DeliveryError::permanent(reason),
    }
}

#[async_trait]
impl Channel for SmsRu {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        let to: String = message
            .require_address()?
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let text = message.field("text");
        if text.trim().is_empty() {
            return Err(DeliveryError::permanent(format!(
                "template `{}` rendered no `text`: SMS.ru sends no empty SMS",
                message.template
            )));
        }
        let mut form = vec![
            ("api_id", self.api_id.as_str()),
            ("to", to.as_str()),
            ("msg", text),
            ("json", "1"),
        ];
        if let Some(from) = &self.from {
            form.push(("from", from));
        }
        let request = self.client.post(&self.endpoint).form(&form);
        // The status decides, as for Twilio: a body lost after a 2xx is read as empty, which
        // is not SMS.ru's JSON and retries below.
        let answer = http::send_lenient(request, "SMS.ru").await?;
        if !answer.is_success() {
            return Err(answer.status_error());
        }
        let reply: SendAnswer = serde_json::from_slice(&answer.body).map_err(|e| {
            DeliveryError::retryable(format!(
                "SMS.ru answered something else than its JSON ({e}): {}",
                body_snippet(&answer.body)
            ))
        })?;
        if reply.status != "OK" {
            return Err(refusal(reply.status_code, reply.status_text));
        }
        let number: NumberStatus = reply
            .sms
            .get(&to)
            .or_else(|| reply.sms.values().next())
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| {
                DeliveryError::retryable(format!("SMS.ru's answer has no status for {to}"))
            })?;
        if number.status != "OK" {
            return Err(refusal(number.status_code, number.status_text));
        }
        let (encoding, count) = segments(text);
        Ok(Delivery {
            provider_id: number.sms_id,
            detail: Some(format!("segments={count} encoding={}", encoding.as_str())),
        })
    }
}
