//! The `webhook` channel kind: each message is a JSON `POST` to a configured URL, for CRMs
//! ("call this customer"), internal services and anything else with an HTTP endpoint.
//!
//! ```yaml
//! channels:
//!   crm_task:
//!     kind: webhook
//!     url: https://crm.example/tasks
//!     secret: ${CRM_SECRET}          # signs every request; recommended
//!     headers: {X-Team: growth}      # optional extra headers
//!     timeout: 10                    # seconds, default 30
//!     base_url: http://127.0.0.1:9000/crm   # optional: a proxy, a sandbox or a test server
//! ```
//!
//! `base_url`, as on every HTTP channel, redirects the requests without touching the rest
//! of the config: it replaces the scheme, host and port of `url` and puts its own path
//! in front of url's, keeping url's path and query (and url's user and password, unless
//! `base_url` has its own). Above, messages go to `http://127.0.0.1:9000/crm/tasks`.
//! `base_url` must be an absolute `http://` or `https://` URL without a query.
//!
//! The body is the template's rendered `body` part, which must be JSON. Every request
//! carries:
//!
//! | header | value |
//! |---|---|
//! | `Idempotency-Key` | the message's stable key: the same on every retry |
//! | `X-Waymark-Timestamp` | Unix seconds when the request was signed |
//! | `X-Waymark-Signature` | `v1=` + hex HMAC-SHA256 of `"{timestamp}.{body}"` with the secret |
//! | `X-Waymark-Customer`, `X-Waymark-Journey`, `X-Waymark-Step` | who and where the message is from |
//!
//! A receiver verifies with [`verify_signature`] (or the same three lines in any language)
//! and should refuse timestamps older than a few minutes, which stops replays. A 2xx answer
//! is a delivery; an `id` field in a JSON answer becomes the provider id. 408, 425, 429 and
//! 5xx retry (with `Retry-After`), and so does no answer within `timeout`; other answers
//! fail the message. Redirects are not followed: a 3xx fails the message and says so, so
//! that `url` gets set to where it points (following a 301, 302 or 303 would have turned
//! the `POST` into a `GET` without the body).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use waymark_channel::{
    Channel, ChannelKind, ConfigCheck, ConfigError, Delivery, DeliveryError, OutboundMessage,
    parse_config,
};
use waymark_channel_http as http;

/// `kind: webhook`.
pub struct WebhookKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "default_timeout")]
    timeout: u64,
    #[serde(default)]
    base_url: Option<String>,
}

fn default_timeout() -> u64 {
    30
}

impl ChannelKind for WebhookKind {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn address_trait(&self) -> Option<&'static str> {
        None
    }

    fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn Channel>, ConfigError> {
        let config: Config = parse_config(name, config)?;
        let check = ConfigCheck::new(name);
        let url = reqwest::Url::parse(&config.url).map_err(|e| check.error("url", e))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(check.error(
                "url",
                format!("expected an http or https URL, got `{}`", url.scheme()),
            ));
        }
        let url = match config.base_url.as_deref() {
            None => url,
            Some(base) => {
                // The example only shows in the error: a set `base_url` has no default.
                let base = check.base_url(Some(base), "http://127.0.0.1:9000")?;
                let base = reqwest::Url::parse(&base).map_err(|e| check.error("base_url", e))?;
                rebase(&url, &base)
            }
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (key, value) in &config.headers {
            let name = reqwest::header::HeaderName::try_from(key.as_str())
                .map_err(|e| check.error(&format!("headers.{key}"), e))?;
            let value = reqwest::header::HeaderValue::try_from(value.as_str())
                .map_err(|e| check.error(&format!("headers.{key}"), e))?;
            headers.insert(name, value);
        }
        let timeout = check.seconds("timeout", config.timeout)?;
        // No redirects (the shared builder's rule): the receiver is told so in the reason.
        let client = http::client_builder(timeout)
            .default_headers(headers)
            .build()
            .map_err(|e| check.section_error(format!("cannot set up HTTP: {e}")))?;
        Ok(Arc::new(Webhook {
            url,
            secret: config.secret,
            client,
        }))
    }
}

struct Webhook {
    url: reqwest::Url,
    secret: Option<String>,
    client: reqwest::Client,
}

#[async_trait]
impl Channel for Webhook {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        let body = message.field("body");
        if let Err(e) = serde_json::from_str::<serde_json::Value>(body) {
            return Err(DeliveryError::permanent(format!(
                "template `{}` body is not JSON: {e}",
                message.template
            )));
        }
        let timestamp = unix_now();
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", &message.idempotency_key)
            .header("X-Waymark-Timestamp", timestamp.to_string())
            .header("X-Waymark-Customer", &message.customer_id)
            .header("X-Waymark-Journey", &message.journey_id)
            .header("X-Waymark-Step", &message.step_id);
        if let Some(secret) = &self.secret {
            request = request.header(
                "X-Waymark-Signature",
                sign(secret, timestamp, body.as_bytes()),
            );
        }
        // The receiver took the message once it answers 2xx, even if its body is then lost.
        let answer = http::send_lenient(request.body(body.to_owned()), "the webhook").await?;
        if (300..400).contains(&answer.status) {
            // The `Location` stays out of the reason: it may repeat a secret path of `url`.
            return Err(answer.status_error_with(
                "the webhook answered with a redirect, which is not followed; set `url` to \
                 the address it redirects to",
            ));
        }
        if !answer.is_success() {
            return Err(answer.status_error());
        }
        let provider_id = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| match v.get("id")? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        Ok(Delivery {
            provider_id,
            detail: Some(format!("HTTP {}", answer.status)),
        })
    }
}

/// `url` moved onto `base`: base's scheme, host, port and path, then url's path and
/// query; url's user and password stay unless `base` has its own.
fn rebase(url: &reqwest::Url, base: &reqwest::Url) -> reqwest::Url {
    let mut moved = base.clone();
    moved.set_path(&format!(
        "{}{}",
        base.path().trim_end_matches('/'),
        url.path()
    ));
    moved.set_query(url.query());
    moved.set_fragment(None);
    if base.username().is_empty() && base.password().is_none() {
        // Both only fail on a URL without a host, which `base` is not.
        let _ = moved.set_username(url.username());
        let _ = moved.set_password(url.password());
    }
    moved
}

/// The `X-Waymark-Signature` value for a body signed at `timestamp` (Unix seconds).
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `signature` (an `X-Waymark-Signature` header) signs `body` at `timestamp` with
/// `secret`. Compares in constant time. Receivers should also refuse old timestamps.
pub fn verify_signature(secret: &str, timestamp: u64, body: &[u8], signature: &str) -> bool {
    let Some(given) = signature
        .strip_prefix("v1=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// Signature timestamps are wall-clock by nature: the receiver compares them with its own.
#[allow(
    clippy::disallowed_methods,
    reason = "a signature timestamp is wall-clock time by nature"
)]
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use reqwest::Url;

    fn rebase(url: &str, base: &str) -> String {
        super::rebase(&Url::parse(url).unwrap(), &Url::parse(base).unwrap()).to_string()
    }

    #[test]
    fn rebase_keeps_the_path_and_query_and_the_credentials_unless_replaced() {
        assert_eq!(
            rebase("https://crm.example/tasks?a=1#top", "http://127.0.0.1:9000"),
            "http://127.0.0.1:9000/tasks?a=1"
        );
        assert_eq!(
            rebase("https://crm.example", "http://proxy.example/crm/"),
            "http://proxy.example/crm/"
        );
        assert_eq!(
            rebase("https://bot:pw@crm.example/t", "http://proxy.example:81/p"),
            "http://bot:pw@proxy.example:81/p/t"
        );
        assert_eq!(
            rebase("https://bot:pw@crm.example/t", "http://me@proxy.example"),
            "http://me@proxy.example/t"
        );
    }
}
