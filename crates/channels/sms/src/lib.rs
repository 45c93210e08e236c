//! SMS channel kinds: `twilio` (Twilio's Messages API, below) and `smsru` ([`SmsRuKind`],
//! the Russian gateway SMS.ru).
//!
//! `twilio`:
//!
//! ```yaml
//! channels:
//!   sms:
//!     kind: twilio
//!     account_sid: ${TWILIO_SID}
//!     auth_token: ${TWILIO_TOKEN}
//!     from: "+15550001"                 # or messaging_service_sid: MG...
//!     status_callback: https://waymark.example/v1/channels/sms/status   # optional
//!     base_url: "https://api.twilio.com"   # optional: a proxy, a sandbox or a test server
//!     timeout: 30                       # seconds
//! ```
//!
//! A message is `POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json` with HTTP
//! Basic auth and a form body of `To`, `From` (or `MessagingServiceSid`), `Body` and
//! `StatusCallback`. Twilio's answer's `sid` is the provider id, and the message log gets
//! the segment count and encoding ([`segments`]).
//!
//! Twilio's Messages API has no idempotency field: the outbox's once-only delivery is the
//! only protection against a duplicate, and a crash between Twilio's acceptance and its
//! record is the one way to send twice.
//!
//! Errors: 429 and 5xx retry (with `Retry-After`); Twilio's codes 21211 (invalid `To`),
//! 21614 (not a mobile number) and 21610 (the recipient replied STOP) mean the address is
//! gone; other refusals fail the message with Twilio's own message.
//!
//! Status callbacks (`POST /v1/channels/{name}/status`) are verified with
//! `X-Twilio-Signature` (base64 HMAC-SHA1 with the auth token over the full URL followed
//! by each form parameter's name and value, sorted by name) and become receipts:
//! `delivered`, or `undelivered`/`failed` as a bounce.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha1::Sha1;
use waymark_channel::{
    Channel, ChannelKind, ConfigCheck, ConfigError, Delivery, DeliveryError, OutboundMessage,
    Receipt, ReceiptError, ReceiptStatus, StatusCallback, body_snippet, decode_form, parse_config,
};
use waymark_channel_http as http;

mod segments;
mod smsru;

pub use segments::{Encoding, segments};
pub use smsru::SmsRuKind;

/// Twilio error codes that mean the number will never receive our messages.
const ADDRESS_GONE: [u64; 3] = [21211, 21610, 21614];
/// Delivery error codes of a status callback that mean the same: unknown, unreachable or
/// landline destinations.
const CALLBACK_ADDRESS_GONE: [&str; 4] = ["30003", "30005", "30006", "21610"];

/// `kind: twilio`.
pub struct TwilioKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    account_sid: String,
    auth_token: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    messaging_service_sid: Option<String>,
    #[serde(default)]
    status_callback: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default = "default_timeout")]
    timeout: u64,
}

fn default_timeout() -> u64 {
    30
}

const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

impl ChannelKind for TwilioKind {
    fn kind(&self) -> &'static str {
        "twilio"
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
        let sender = match (config.from, config.messaging_service_sid) {
            (Some(from), None) => ("From", from),
            (None, Some(service)) => ("MessagingServiceSid", service),
            _ => {
                return Err(
                    check.section_error("set exactly one of `from` and `messaging_service_sid`")
                );
            }
        };
        if config.account_sid.is_empty() || config.auth_token.is_empty() {
            return Err(check.section_error("`account_sid` and `auth_token` must not be empty"));
        }
        let base_url = check.base_url(config.base_url.as_deref(), DEFAULT_BASE_URL)?;
        let timeout = check.seconds("timeout", config.timeout)?;
        let client = http::client(timeout)
            .map_err(|e| check.section_error(format!("cannot set up HTTP: {e}")))?;
        Ok(Arc::new(Twilio {
            endpoint: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                base_url, config.account_sid
            ),
            account_sid: config.account_sid,
            auth_token: config.auth_token,
            sender,
            status_callback: config.status_callback,
            client,
        }))
    }
}

struct Twilio {
    endpoint: String,
    account_sid: String,
    auth_token: String,
    sender: (&'static str, String),
    status_callback: Option<String>,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct TwilioError {
    #[serde(default)]
    code: Option<u64>,
    #[serde(default)]
    message: Option<String>,
}

#[async_trait]
impl Channel for Twilio {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        let to = message.require_address()?;
        let text = message.field("text");
        let mut form = vec![
            ("To", to),
            (self.sender.0, self.sender.1.as_str()),
            ("Body", text),
        ];
        if let Some(callback) = &self.status_callback {
            form.push(("StatusCallback", callback));
        }
        let request = self
            .client
            .post(&self.endpoint)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(&form);
        // No idempotency key: a 2xx whose body is lost must not send the message again.
        let answer = http::send_lenient(request, "Twilio").await?;
        if !answer.is_success() {
            let twilio: Option<TwilioError> = serde_json::from_slice(&answer.body).ok();
            let reason = twilio
                .as_ref()
                .and_then(|e| {
                    Some(format!(
                        "Twilio error {}: {}",
                        e.code?,
                        e.message.as_deref().unwrap_or("")
                    ))
                })
                .unwrap_or_else(|| body_snippet(&answer.body));
            if twilio
                .and_then(|e| e.code)
                .is_some_and(|code| ADDRESS_GONE.contains(&code))
            {
                return Err(DeliveryError::address_gone(reason));
            }
            return Err(answer.status_error_with(reason));
        }
        let sid = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("sid")?.as_str().map(str::to_owned));
        let (encoding, count) = segments(text);
        Ok(Delivery {
            provider_id: sid,
            detail: Some(format!("segments={count} encoding={}", encoding.as_str())),
        })
    }

    fn receipts(&self, callback: &StatusCallback) -> Result<Vec<Receipt>, ReceiptError> {
        let params = std::str::from_utf8(&callback.body)
            .ok()
            .and_then(decode_form)
            .ok_or_else(|| ReceiptError::Malformed("the body is not a form".to_owned()))?;
        let signature = callback
            .header("x-twilio-signature")
            .ok_or(ReceiptError::BadSignature)?;
        if !verify_signature(&self.auth_token, &callback.url, &params, signature) {
            return Err(ReceiptError::BadSignature);
        }
        let status = match params.get("MessageStatus").map(String::as_str) {
            Some("delivered") => ReceiptStatus::Delivered,
            Some("undelivered" | "failed") => ReceiptStatus::Bounced {
                address_gone: params
                    .get("ErrorCode")
                    .is_some_and(|c| CALLBACK_ADDRESS_GONE.contains(&c.as_str())),
            },
            _ => return Ok(Vec::new()),
        };
        Ok(vec![Receipt {
            provider_id: params.get("MessageSid").cloned(),
            address: params.get("To").cloned(),
            status,
            detail: params.get("ErrorCode").map(|c| format!("Twilio error {c}")),
        }])
    }
}

/// Twilio's request signature: base64(HMAC-SHA1(auth token, URL + sorted name/value pairs)).
pub fn signature(auth_token: &str, url: &str, params: &BTreeMap<String, String>) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(url.as_bytes());
    for (name, value) in params {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn verify_signature(
    auth_token: &str,
    url: &str,
    params: &BTreeMap<String, String>,
    given: &str,
) -> bool {
    let expected = signature(auth_token, url, params);
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}
