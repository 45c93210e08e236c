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
//! `StatusCallback`. `To` is the customer's number in E.164 with the spaces, dashes, dots
//! and parentheses people write numbers with taken out (`+7 (900) 123-45-67` goes as
//! `+79001234567`): Twilio answers 21211, an invalid number, for anything else, and that
//! would mark a good number gone. An empty `text` fails the message without a request.
//! Twilio's answer's `sid` is the provider id, and the message log gets the segment count
//! and encoding ([`segments`]).
//!
//! Twilio's Messages API has no idempotency field: the outbox's once-only delivery is the
//! only protection against a duplicate, and a crash between Twilio's acceptance and its
//! record is the one way to send twice.
//!
//! Errors: 429 (Twilio's 20429) and 5xx retry (with `Retry-After`); Twilio's codes 21211
//! (invalid `To`), 21614 (not a mobile number) and 21610 (the recipient replied STOP) mean
//! the address is gone; other refusals fail the message with Twilio's own message.
//!
//! Status callbacks (`POST /v1/channels/{name}/status`) are verified with
//! `X-Twilio-Signature` (base64 HMAC-SHA1 with the auth token over the full URL followed
//! by each form parameter's name and value, sorted by name). As Twilio's own SDKs do, the
//! URL is tried with and without its port, since Twilio signs some callbacks with
//! `:443` written out; and when `status_callback` is configured, that URL (the one Twilio
//! was given and signs) is tried as well as the one the daemon saw. Verified callbacks
//! become receipts: `delivered`, `read` (WhatsApp and RCS) as opened, and `undelivered`
//! or `failed` as a bounce, whose address is gone for the delivery errors 30005 (unknown
//! number), 30006 (landline or unreachable carrier) and 21610 (opted out). 30003, a
//! handset switched off or out of coverage, is temporary and leaves the address alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha1::Sha1;
use waymark_channel::{
    Channel, ChannelKind, ConfigCheck, ConfigError, Delivery, DeliveryError, OutboundMessage,
    Receipt, ReceiptError, ReceiptStatus, StatusCallback, body_snippet, decode_form_pairs,
    parse_config,
};
use waymark_channel_http as http;

mod segments;
mod smsru;

pub use segments::{Encoding, segments};
pub use smsru::SmsRuKind;

/// Twilio error codes that mean the number will never receive our messages.
const ADDRESS_GONE: [u64; 3] = [21211, 21610, 21614];
/// Delivery error codes of a status callback that mean the same: an unknown number, a
/// landline or a carrier that takes no SMS, an opted-out recipient. Not 30003: Twilio
/// documents it as a handset switched off or without signal, which passes.
const CALLBACK_ADDRESS_GONE: [&str; 3] = ["30005", "30006", "21610"];

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
        let to = e164(message.require_address()?);
        let text = message.field("text");
        if text.trim().is_empty() {
            return Err(DeliveryError::permanent(format!(
                "template `{}` rendered no `text`: Twilio sends no empty SMS",
                message.template
            )));
        }
        let mut form = vec![
            ("To", to.as_str()),
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
        let pairs = std::str::from_utf8(&callback.body)
            .ok()
            .and_then(decode_form_pairs)
            .ok_or_else(|| ReceiptError::Malformed("the body is not a form".to_owned()))?;
        let signature = callback
            .header("x-twilio-signature")
            .ok_or(ReceiptError::BadSignature)?;
        // Twilio signs the URL it was given; the daemon's own idea of it may differ.
        let verified = std::iter::once(callback.url.as_str())
            .chain(self.status_callback.as_deref())
            .flat_map(port_variants)
            .any(|url| verify_signature(&self.auth_token, &url, &pairs, signature));
        if !verified {
            return Err(ReceiptError::BadSignature);
        }
        let params: BTreeMap<String, String> = pairs.into_iter().collect();
        let status = match params.get("MessageStatus").map(String::as_str) {
            Some("delivered") => ReceiptStatus::Delivered,
            Some("read") => ReceiptStatus::Opened,
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

/// A phone number as Twilio's `To` takes it: E.164, so without the separators people write
/// numbers with. A channel prefix such as `whatsapp:` stays.
fn e164(address: &str) -> String {
    address
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '\u{a0}' | '\t'))
        .collect()
}

/// `url` as Twilio may have signed it: as it is, without its port, and with its scheme's
/// default port written out (Twilio's SDKs check all of these).
fn port_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return variants;
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (format!("{userinfo}@"), host_port),
        None => (String::new(), authority),
    };
    // The port follows the last `:` unless that `:` is inside an IPv6 literal's brackets.
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (host_port, None),
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return variants,
    };
    variants.push(format!("{scheme}://{userinfo}{host}{tail}"));
    if port.is_none() {
        variants.push(format!("{scheme}://{userinfo}{host}:{default_port}{tail}"));
    }
    variants.dedup();
    variants
}

/// Twilio's request signature: base64(HMAC-SHA1(auth token, URL + sorted name/value pairs)).
pub fn signature(auth_token: &str, url: &str, params: &BTreeMap<String, String>) -> String {
    let pairs: Vec<(String, String)> = params
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    sign_pairs(auth_token, url, &pairs)
}

/// [`signature`] over pairs that may repeat a name: sorted by name, then by value, as
/// Twilio's SDKs sort them.
fn sign_pairs(auth_token: &str, url: &str, pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn verify_signature(auth_token: &str, url: &str, pairs: &[(String, String)], given: &str) -> bool {
    let expected = sign_pairs(auth_token, url, pairs);
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_lose_their_separators_and_keep_a_channel_prefix() {
        assert_eq!(e164("+7 (900) 123-45-67"), "+79001234567");
        assert_eq!(e164(" +1.555.000.1234 "), "+15550001234");
        assert_eq!(e164("whatsapp:+1 555 000 1234"), "whatsapp:+15550001234");
    }

    #[test]
    fn a_signed_url_is_tried_with_and_without_its_port() {
        assert_eq!(
            port_variants("https://w.example/v1/channels/sms/status?x=1"),
            [
                "https://w.example/v1/channels/sms/status?x=1",
                "https://w.example:443/v1/channels/sms/status?x=1",
            ]
        );
        assert_eq!(
            port_variants("http://u:p@127.0.0.1:8080/s"),
            ["http://u:p@127.0.0.1:8080/s", "http://u:p@127.0.0.1/s"]
        );
        assert_eq!(
            port_variants("https://[::1]/s"),
            ["https://[::1]/s", "https://[::1]:443/s"]
        );
    }

    #[test]
    fn repeated_form_names_are_signed_value_by_value() {
        let pairs = decode_form_pairs("b=2&a=1&b=1&c=").unwrap();
        assert_eq!(pairs.len(), 4);
        let mut mac = Hmac::<Sha1>::new_from_slice(b"tok").unwrap();
        mac.update(b"https://x.example/sa1b1b2c");
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(sign_pairs("tok", "https://x.example/s", &pairs), expected);
    }
}
