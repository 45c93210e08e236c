//! Waymark's `fcm` channel kind: push notifications to Android, iOS and web apps through
//! Firebase Cloud Messaging, with the HTTP v1 API.
//!
//! ```yaml
//! channels:
//!   push:
//!     kind: fcm
//!     project_id: shop-prod                            # the Firebase project
//!     service_account_json: "${FCM_SERVICE_ACCOUNT}"  # the key file's JSON, as text
//!     base_url: "https://fcm.googleapis.com"           # optional: a proxy or a test server
//!     timeout: 30                                      # optional: seconds per request; default 30
//! ```
//!
//! `service_account_json` is the JSON key file of a service account allowed to send
//! messages (the Firebase Admin SDK account, or any with the "Firebase Cloud Messaging API
//! Admin" role); the flow uses its `client_email`, `private_key` and `token_uri`. It is a
//! secret: keep it in the environment, never in the file. `base_url` moves only the send
//! endpoint; the token endpoint is the key file's `token_uri`.
//!
//! The customer's address is the `push_token` profile trait: the FCM registration token
//! the app got on the device.
//!
//! # Authentication
//!
//! The OAuth 2.0 service-account flow: an RS256-signed JWT (`iss` the account's
//! `client_email`, `scope` `https://www.googleapis.com/auth/firebase.messaging`, `aud` its
//! `token_uri`, valid for an hour) is exchanged at `token_uri` for an access token
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`). The token is cached and
//! renewed a minute before it expires, so one token request serves about an hour of
//! messages. A 401 from FCM drops the cached token, and the message is retried with a new
//! one. A token endpoint that refuses the account (a deleted key, a clock far off) fails
//! the message permanently, with Google's reason.
//!
//! # What is sent
//!
//! `POST {base_url}/v1/projects/{project_id}/messages:send` with `Authorization: Bearer
//! {access token}` and `{"message": {"token", "notification"?, "data"?}}`, built from the
//! template's rendered fields:
//!
//! | field | goes to |
//! |---|---|
//! | `title` | `notification.title` |
//! | `text` (or `body`, FCM's name for it) | `notification.body` |
//! | `image` | `notification.image`: an https URL of the picture |
//! | `data.NAME` | `data.NAME`: key-value pairs for the app (a deep link, an order id) |
//!
//! A message needs at least one of them. FCM has no idempotency key: the outbox's
//! once-only hand-over is the only protection against a duplicate notification.
//!
//! # Errors
//!
//! | FCM says | outcome |
//! |---|---|
//! | 200 | delivered; the provider id is the message `name` |
//! | `UNREGISTERED` (404), or a 404 `NOT_FOUND` without an FCM code; `INVALID_ARGUMENT` (400) about the registration token | permanent, address gone |
//! | `QUOTA_EXCEEDED` (429), `UNAVAILABLE` (503), `INTERNAL` (500), other 5xx | retryable, after `Retry-After` (seconds or an HTTP date) |
//! | 401 other than `THIRD_PARTY_AUTH_ERROR` | retryable, with a new access token |
//! | `SENDER_ID_MISMATCH` (403), `THIRD_PARTY_AUTH_ERROR` (401), other 400 | permanent, with FCM's reason |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use waymark_channel::{
    Channel, ChannelKind, ConfigCheck, ConfigError, Delivery, DeliveryError, OutboundMessage,
    parse_config,
};
use waymark_channel_http as http;

mod auth;
mod refusal;

use auth::{ServiceAccount, TokenSource};
use refusal::Refusal;

const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";
/// Long enough for a slow answer, short enough that a hung connection does not hold an
/// outbox worker for minutes.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Template fields whose names start with this go to the message's `data`.
const DATA_PREFIX: &str = "data.";

/// The wall clock in Unix seconds, for the JWT's `iat`/`exp` and the token cache.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The `fcm` channel kind. `FcmKind::default()` reads the system clock.
#[derive(Clone)]
pub struct FcmKind {
    clock: Clock,
}

impl FcmKind {
    /// A kind whose channels take the time from `clock` (Unix seconds), as tests do.
    pub fn with_clock(clock: impl Fn() -> u64 + Send + Sync + 'static) -> FcmKind {
        FcmKind {
            clock: Arc::new(clock),
        }
    }
}

impl Default for FcmKind {
    fn default() -> FcmKind {
        FcmKind::with_clock(unix_now)
    }
}

/// A JWT's `iat` is wall-clock time by nature: Google compares it with its own clock.
#[allow(
    clippy::disallowed_methods,
    reason = "a JWT's issue time is wall-clock time by nature"
)]
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The config section of an `fcm` channel; see the crate docs. No `Debug`: it holds the key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FcmConfig {
    project_id: String,
    service_account_json: String,
    #[serde(default)]
    base_url: Option<String>,
    /// Seconds.
    #[serde(default)]
    timeout: Option<u64>,
}

impl ChannelKind for FcmKind {
    fn kind(&self) -> &'static str {
        "fcm"
    }

    fn address_trait(&self) -> Option<&'static str> {
        Some("push_token")
    }

    fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn Channel>, ConfigError> {
        let config: FcmConfig = parse_config(name, config)?;
        let check = ConfigCheck::new(name);

        // A path segment of the send URL.
        let project_id = config.project_id.trim();
        if project_id.is_empty()
            || !project_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        {
            return Err(check.error(
                "project_id",
                "expected a Firebase project id, such as `shop-prod`",
            ));
        }
        let account = ServiceAccount::parse(&config.service_account_json)
            .map_err(|why| check.error("service_account_json", why))?;
        let base_url = check.base_url(config.base_url.as_deref(), DEFAULT_BASE_URL)?;
        let timeout = check.timeout(config.timeout, DEFAULT_TIMEOUT)?;
        let client = http::client(timeout)
            .map_err(|e| check.error("base_url", format!("cannot set up HTTP: {e}")))?;

        Ok(Arc::new(FcmChannel {
            send_url: format!("{base_url}/v1/projects/{project_id}/messages:send"),
            tokens: TokenSource::new(account, client.clone(), self.clock.clone()),
            client,
        }))
    }
}

/// A configured FCM project. No `Debug`: it holds the key and the access token.
struct FcmChannel {
    client: reqwest::Client,
    send_url: String,
    tokens: TokenSource,
}

/// FCM's answer to an accepted message.
#[derive(Deserialize)]
struct Sent {
    /// `projects/{project_id}/messages/{message_id}`.
    name: Option<String>,
}

#[async_trait]
impl Channel for FcmChannel {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        let registration_token = message.require_address()?;
        let body = fcm_message(registration_token, message).map_err(DeliveryError::permanent)?;
        let access_token = self.tokens.token().await?;

        let request = self
            .client
            .post(&self.send_url)
            .bearer_auth(&access_token)
            .json(&body);
        let answer = http::send(request, "FCM").await?;
        if answer.is_success() {
            let provider_id = serde_json::from_slice::<Sent>(&answer.body)
                .ok()
                .and_then(|sent| sent.name);
            return Ok(Delivery {
                provider_id,
                detail: None,
            });
        }
        let refusal = Refusal::parse(answer.status, &answer.body);
        if refusal.refuses_access_token() {
            self.tokens.forget(&access_token).await;
        }
        Err(refusal.into_delivery_error(answer.retry_after.as_deref()))
    }
}

/// The `{"message": ...}` body for the send call, from the rendered template fields.
fn fcm_message(registration_token: &str, message: &OutboundMessage) -> Result<Value, String> {
    let text = match message.field("text") {
        "" => message.field("body"),
        text => text,
    };
    let notification: serde_json::Map<String, Value> = [
        ("title", message.field("title")),
        ("body", text),
        ("image", message.field("image")),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(key, value)| (key.to_owned(), json!(value)))
    .collect();
    let data: BTreeMap<&str, &str> = message
        .content
        .iter()
        .filter_map(|(key, value)| Some((key.strip_prefix(DATA_PREFIX)?, value.as_str())))
        .collect();
    if notification.is_empty() && data.is_empty() {
        return Err(format!(
            "template `{}` has nothing to push: no `title`, `text`, `body`, `image` or `data.*` field",
            message.template
        ));
    }

    let mut fcm = json!({ "token": registration_token });
    if !notification.is_empty() {
        fcm["notification"] = Value::Object(notification);
    }
    if !data.is_empty() {
        fcm["data"] = json!(data);
    }
    Ok(json!({ "message": fcm }))
}
