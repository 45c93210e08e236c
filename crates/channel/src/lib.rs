//! The contract between Waymark and the channels it sends through.
//!
//! A channel *kind* (`smtp`, `twilio`, `telegram`, `webhook`, ...) turns its config section
//! into a [`Channel`]; the daemon hands each outbox message to [`Channel::deliver`] and
//! acts on the [`Delivery`] or [`DeliveryError`] it gets back. Adapter crates depend on
//! this crate only: no transport types (reqwest, lettre) appear in it.
//!
//! See `docs/channel-adapters.md` for what an adapter MUST and SHOULD do, and
//! [`testkit`] (feature `testkit`) for the checks every adapter's tests run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

#[cfg(feature = "testkit")]
pub mod testkit;

/// One rendered message on its way to a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Stable across retries and restarts: providers that deduplicate get it verbatim.
    pub idempotency_key: String,
    /// The configured channel name (`email`, `sms`, `crm_task`, ...).
    pub channel: String,
    /// The customer's address on this channel (email, phone, chat id); `None` for
    /// channels that need none, such as webhooks.
    pub address: Option<String>,
    /// Rendered template fields: `subject`, `html`, `text` for email; `text` for
    /// messengers and SMS; `body` for webhooks.
    pub content: BTreeMap<String, String>,
    pub customer_id: String,
    pub journey_id: String,
    pub step_id: String,
    pub template: String,
    /// Extra per-message values the daemon offers, such as `unsubscribe_url`.
    pub links: BTreeMap<String, String>,
}

impl OutboundMessage {
    /// A rendered field, or the empty string.
    pub fn field(&self, name: &str) -> &str {
        self.content.get(name).map_or("", String::as_str)
    }

    /// The address, or a permanent error for a channel that needs one.
    ///
    /// # Errors
    /// [`DeliveryError::Permanent`] when the message carries no address.
    pub fn require_address(&self) -> Result<&str, DeliveryError> {
        self.address
            .as_deref()
            .ok_or_else(|| DeliveryError::Permanent {
                reason: format!(
                    "channel `{}` needs an address and the message has none",
                    self.channel
                ),
                address_gone: false,
            })
    }
}

/// What a provider said when it accepted a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The provider's id for the message, used to match delivery receipts.
    pub provider_id: Option<String>,
    /// A short note for the message log, such as `segments=2 encoding=UCS-2` for SMS.
    pub detail: Option<String>,
}

/// Why a message was not delivered, grouped by what the daemon should do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later: timeouts, connection errors, 5xx, 429.
    #[error("retryable: {reason}")]
    Retryable {
        reason: String,
        /// The provider's own `Retry-After`, when it gave one.
        retry_after: Option<Duration>,
    },
    /// Give up on this message: the provider refused it.
    #[error("permanent: {reason}")]
    Permanent {
        reason: String,
        /// The address will never work (hard bounce, bot blocked, invalid number): the
        /// daemon marks it unreachable on the profile so journeys fall back.
        address_gone: bool,
    },
}

impl DeliveryError {
    pub fn retryable(reason: impl Into<String>) -> Self {
        DeliveryError::Retryable {
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        DeliveryError::Permanent {
            reason: reason.into(),
            address_gone: false,
        }
    }

    pub fn address_gone(reason: impl Into<String>) -> Self {
        DeliveryError::Permanent {
            reason: reason.into(),
            address_gone: true,
        }
    }

    /// A provider that could not be reached or did not answer in time: retryable, with
    /// the chain of causes in the reason. Callers strip URLs first (tokens live in some).
    pub fn unreachable(
        provider: &str,
        timed_out: bool,
        error: &(dyn std::error::Error + 'static),
    ) -> Self {
        let mut reason = if timed_out {
            format!("{provider} did not answer in time")
        } else {
            format!("cannot reach {provider}: {error}")
        };
        let mut source = error.source();
        while let Some(cause) = source {
            reason.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        DeliveryError::retryable(reason)
    }

    /// The usual classification of an HTTP answer that was not a success: 408, 425, 429
    /// and 5xx retry (honouring `Retry-After`, in seconds or as an HTTP date), other
    /// statuses are permanent.
    pub fn from_http_status(
        status: u16,
        retry_after: Option<&str>,
        reason: impl Into<String>,
    ) -> Self {
        let reason = reason.into();
        if matches!(status, 408 | 425 | 429) || status >= 500 {
            DeliveryError::Retryable {
                reason: format!("HTTP {status}: {reason}"),
                retry_after: retry_after.and_then(retry_after_header),
            }
        } else {
            DeliveryError::permanent(format!("HTTP {status}: {reason}"))
        }
    }
}

/// Compares two secrets (a token, a signature) without an early exit, so that the time
/// an answer takes does not tell a guesser how much of it was right.
pub fn secrets_match(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A provider's `Retry-After` header: delay seconds, or an HTTP date (RFC 9110), as the
/// wait from now (none for a date already past, or a value that is neither).
pub fn retry_after_header(value: &str) -> Option<Duration> {
    // A provider's date is wall-clock time: the engine's clock has no say in it.
    #[allow(clippy::disallowed_methods)]
    let now = chrono::Utc::now();
    parse_retry_after(value, now)
}

/// [`retry_after_header`] at `now`.
fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is a wait longer than anyone would honour.
        return Some(value.parse().map_or(Duration::MAX, Duration::from_secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.to_utc() - now).to_std().ok()
}

/// Decodes an `application/x-www-form-urlencoded` text (a form body or a query string), as
/// providers' status callbacks send them. `None` for bad percent-encoding or non-UTF-8. A
/// name given twice keeps its last value; [`decode_form_pairs`] keeps each.
pub fn decode_form(text: &str) -> Option<BTreeMap<String, String>> {
    decode_form_pairs(text).map(|pairs| pairs.into_iter().collect())
}

/// [`decode_form`]'s name/value pairs in order, a name given twice kept twice (a provider
/// that signs the form signs each).
pub fn decode_form_pairs(text: &str) -> Option<Vec<(String, String)>> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The start of a provider's answer body, for an error reason.
pub fn body_snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None if text.is_empty() => "empty answer".to_owned(),
        None => text.to_owned(),
    }
}

/// A delivery receipt turned into what happened to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id of the message, as returned in [`Delivery::provider_id`].
    pub provider_id: Option<String>,
    /// The recipient's address, when the provider says it.
    pub address: Option<String>,
    pub status: ReceiptStatus,
    /// The provider's words, for the log.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptStatus {
    Delivered,
    Opened,
    Clicked,
    /// The message will not arrive; `address_gone` as in [`DeliveryError::Permanent`].
    Bounced {
        address_gone: bool,
    },
}

impl ReceiptStatus {
    /// The event the daemon records on the customer.
    pub fn event_name(self) -> &'static str {
        match self {
            ReceiptStatus::Delivered => "message_delivered",
            ReceiptStatus::Opened => "message_opened",
            ReceiptStatus::Clicked => "message_clicked",
            ReceiptStatus::Bounced { .. } => "message_bounced",
        }
    }
}

/// A provider's callback to `POST /v1/channels/{name}/status`, as received.
#[derive(Debug, Clone, Default)]
pub struct StatusCallback {
    /// The full URL the provider called, as it saw it (some sign it).
    pub url: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl StatusCallback {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("this channel does not accept delivery receipts")]
    Unsupported,
    #[error("the callback's signature does not verify")]
    BadSignature,
    #[error("malformed callback: {0}")]
    Malformed(String),
}

/// A configured channel that can deliver messages.
///
/// # Contract
/// - `deliver` MUST pass [`OutboundMessage::idempotency_key`] to the provider where its
///   API has a deduplication key or message id field.
/// - `deliver` MUST classify failures: timeouts, connection errors, 5xx and 429 are
///   [`DeliveryError::Retryable`] (with the provider's `Retry-After`); other refusals are
///   [`DeliveryError::Permanent`], with `address_gone` when the provider says the address
///   is dead for good.
/// - `deliver` MUST NOT retry on its own; the daemon's outbox does, with backoff.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// Hands one message to the provider.
    ///
    /// # Errors
    /// See the contract above.
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError>;

    /// Turns a provider's status callback into receipts, verifying its signature.
    ///
    /// # Errors
    /// [`ReceiptError::Unsupported`] by default; [`ReceiptError::BadSignature`] for a
    /// callback that does not verify.
    fn receipts(&self, callback: &StatusCallback) -> Result<Vec<Receipt>, ReceiptError> {
        let _ = callback;
        Err(ReceiptError::Unsupported)
    }

    /// Answers a provider's check that the status callback URL is its subscriber's
    /// (`GET /v1/channels/{name}/status`, with the provider's query parameters): the text
    /// to answer with, or `None` to refuse. Meta's webhooks, for one, are not registered
    /// until the URL echoes `hub.challenge` for the right `hub.verify_token`. By default
    /// every check is refused.
    fn verify_subscription(&self, query: &BTreeMap<String, String>) -> Option<String> {
        let _ = query;
        None
    }
}

/// A config problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel `{channel}`: {message}")]
pub struct ConfigError {
    pub channel: String,
    pub message: String,
}

/// A kind of channel: `kind:` in a channel's config section picks it.
pub trait ChannelKind: Send + Sync + 'static {
    /// The `kind:` value, such as `smtp` or `telegram`.
    fn kind(&self) -> &'static str;

    /// The profile trait holding a customer's address on channels of this kind
    /// (`email`, `phone`, `telegram_chat_id`, ...); `None` when it needs none.
    fn address_trait(&self) -> Option<&'static str>;

    /// Validates the config section (without its `kind` key) and builds the channel.
    ///
    /// # Contract
    /// No I/O: nothing is contacted until the first delivery. Unknown config keys are
    /// errors.
    ///
    /// # Errors
    /// A [`ConfigError`] that names the offending key.
    fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn Channel>, ConfigError>;
}

/// Deserializes a config section into `T` (which should `#[serde(deny_unknown_fields)]`),
/// ignoring the `kind` key, with errors that name the channel and the key.
///
/// # Errors
/// The section does not fit `T`.
pub fn parse_config<T: DeserializeOwned>(
    channel: &str,
    config: &serde_json::Value,
) -> Result<T, ConfigError> {
    let mut config = config.clone();
    if let Some(map) = config.as_object_mut() {
        map.remove("kind");
    }
    serde_json::from_value(config).map_err(|e| ConfigError {
        channel: channel.to_owned(),
        message: e.to_string(),
    })
}

/// The checks every adapter's `build` makes on its config section, with errors that name
/// the channel and the key: "channel `sms`: `timeout`: must be at least 1 second".
///
/// ```
/// use std::time::Duration;
/// use waymark_channel::ConfigCheck;
///
/// let check = ConfigCheck::new("telegram");
/// let base_url = check.base_url(Some("http://127.0.0.1:8080/"), "https://api.telegram.org")?;
/// let timeout = check.timeout(None, Duration::from_secs(30))?;
/// assert_eq!(base_url, "http://127.0.0.1:8080");
/// assert_eq!(timeout, Duration::from_secs(30));
/// assert_eq!(
///     check.error("bot_token", "must not be empty").to_string(),
///     "channel `telegram`: `bot_token`: must not be empty"
/// );
/// # Ok::<(), waymark_channel::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ConfigCheck<'a> {
    channel: &'a str,
}

impl<'a> ConfigCheck<'a> {
    /// Checks for the config section of the channel named `channel`.
    pub fn new(channel: &'a str) -> Self {
        ConfigCheck { channel }
    }

    /// An error about the value of `key`: "`{key}`: {message}".
    pub fn error(&self, key: &str, message: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            channel: self.channel.to_owned(),
            message: format!("`{key}`: {message}"),
        }
    }

    /// An error about the section rather than one key, such as two keys that conflict:
    /// the message as it is.
    pub fn section_error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            channel: self.channel.to_owned(),
            message: message.into(),
        }
    }

    /// The `timeout` key, in seconds: `default` when it is not set.
    ///
    /// # Errors
    /// A timeout of 0, see [`ConfigCheck::seconds`].
    pub fn timeout(
        &self,
        seconds: Option<u64>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        seconds.map_or(Ok(default), |seconds| self.seconds("timeout", seconds))
    }

    /// A duration in whole seconds under `key`, for a key whose default serde fills in.
    ///
    /// # Errors
    /// 0 seconds: a request that may take no time at all could never succeed.
    pub fn seconds(&self, key: &str, seconds: u64) -> Result<Duration, ConfigError> {
        if seconds == 0 {
            return Err(self.error(key, "must be at least 1 second"));
        }
        Ok(Duration::from_secs(seconds))
    }

    /// The `base_url` key: the provider's API host `default` when it is not set, without
    /// the trailing `/`, so that adapters append their paths with `format!("{base}/...")`.
    /// Every HTTP adapter takes its `base_url` through here, so that each refuses the same
    /// mistakes with the same words.
    ///
    /// # Errors
    /// Anything but an absolute `http://` or `https://` URL with a host: a bare host
    /// (`api.twilio.com`), another scheme, spaces, or a query or fragment (which the
    /// adapter's paths would land after).
    pub fn base_url(&self, value: Option<&str>, default: &str) -> Result<String, ConfigError> {
        let base_url = value.unwrap_or(default);
        let scheme_end = base_url.find("://").unwrap_or(0);
        let scheme = base_url[..scheme_end].to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "https") {
            return Err(self.error(
                "base_url",
                format!("expected an absolute http:// or https:// URL, such as `{default}`"),
            ));
        }
        let rest = &base_url[scheme_end + 3..];
        let host = rest.split('/').next().unwrap_or_default();
        let host = host.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || host.starts_with(':') {
            return Err(self.error("base_url", "the URL names no host"));
        }
        if base_url.chars().any(char::is_whitespace) {
            return Err(self.error("base_url", "a URL has no spaces"));
        }
        if base_url.contains(['?', '#']) {
            return Err(self.error(
                "base_url",
                "a base URL takes no query or fragment: the adapter appends its paths to it",
            ));
        }
        Ok(base_url.trim_end_matches('/').to_owned())
    }
}

/// The channel kinds a daemon knows, listed in one place.
#[derive(Default, Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn ChannelKind>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a kind; a later kind with the same name replaces an earlier one.
    #[must_use]
    pub fn with(mut self, kind: impl ChannelKind) -> Self {
        self.kinds.insert(kind.kind(), Arc::new(kind));
        self
    }

    pub fn kind(&self, name: &str) -> Option<&Arc<dyn ChannelKind>> {
        self.kinds.get(name)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    /// Builds the channel `name` from its config section, by its `kind`.
    ///
    /// # Errors
    /// No or an unknown `kind`, or the kind's own config errors.
    pub fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<(Arc<dyn Channel>, Option<&'static str>), ConfigError> {
        let check = ConfigCheck::new(name);
        let kind = config
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| check.section_error("missing `kind`"))?;
        let kind = self.kind(kind).ok_or_else(|| {
            let known: Vec<_> = self.kinds().collect();
            check.section_error(format!(
                "unknown kind `{kind}`; known kinds: {}",
                known.join(", ")
            ))
        })?;
        Ok((kind.build(name, config)?, kind.address_trait()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(secrets_match(b"abc", b"abc"));
        assert!(!secrets_match(b"abc", b"abd"));
        assert!(!secrets_match(b"abc", b"ab"));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z")
            .unwrap()
            .to_utc();
        let wait = |value| parse_retry_after(value, now);
        assert_eq!(wait("120"), Some(Duration::from_secs(120)));
        assert_eq!(wait(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            wait("Mon, 02 Mar 2026 10:00:12 GMT"),
            Some(Duration::from_secs(12))
        );
        assert_eq!(wait("Mon, 02 Mar 2026 09:00:00 GMT"), None, "a date past");
        assert_eq!(wait("99999999999999999999999"), Some(Duration::MAX));
        for ignored in ["", "soon", "-5", "1.5"] {
            assert_eq!(wait(ignored), None, "{ignored:?}");
        }
    }

    const DEFAULT: Duration = Duration::from_secs(30);

    #[test]
    fn a_timeout_defaults_and_refuses_zero() {
        let check = ConfigCheck::new("sms");
        assert_eq!(check.timeout(None, DEFAULT), Ok(DEFAULT));
        assert_eq!(check.timeout(Some(1), DEFAULT), Ok(Duration::from_secs(1)));
        assert_eq!(
            check.timeout(Some(0), DEFAULT),
            Err(ConfigError {
                channel: "sms".to_owned(),
                message: "`timeout`: must be at least 1 second".to_owned(),
            })
        );
        assert_eq!(check.seconds("timeout", 45), Ok(Duration::from_secs(45)));
        assert_eq!(
            check.seconds("timeout", 0).map_err(|e| e.to_string()),
            Err("channel `sms`: `timeout`: must be at least 1 second".to_owned())
        );
    }

    #[test]
    fn a_base_url_defaults_needs_a_scheme_and_loses_its_trailing_slash() {
        let check = ConfigCheck::new("vk");
        let default = "https://api.vk.com";
        assert_eq!(check.base_url(None, default).as_deref(), Ok(default));
        assert_eq!(
            check
                .base_url(Some("http://127.0.0.1:8080/"), default)
                .as_deref(),
            Ok("http://127.0.0.1:8080")
        );
        assert_eq!(
            check
                .base_url(Some("https://proxy.example/vk//"), default)
                .as_deref(),
            Ok("https://proxy.example/vk")
        );
        assert_eq!(
            check
                .base_url(Some("HTTP://user@proxy.example:8443"), default)
                .as_deref(),
            Ok("HTTP://user@proxy.example:8443")
        );
        for refused in ["api.vk.com", "ftp://api.vk.com", "", "HTTPS//api.vk.com"] {
            assert_eq!(
                check.base_url(Some(refused), default),
                Err(ConfigError {
                    channel: "vk".to_owned(),
                    message: "`base_url`: expected an absolute http:// or https:// URL, such as `https://api.vk.com`".to_owned(),
                }),
                "{refused:?}"
            );
        }
        for (refused, why) in [
            ("http://", "names no host"),
            ("https:///method", "names no host"),
            ("http://:8080", "names no host"),
            ("https://user@/x", "names no host"),
            ("https://api.vk.com/?v=5", "no query or fragment"),
            ("https://api.vk.com#top", "no query or fragment"),
            ("https://api vk.com", "no spaces"),
        ] {
            let error = check.base_url(Some(refused), default).unwrap_err();
            assert!(
                error.message.starts_with("`base_url`: ") && error.message.contains(why),
                "{refused:?}: {error}"
            );
        }
        // The default is held to the same rule: a typo in an adapter's constant shows.
        assert!(check.base_url(None, "api.vk.com").is_err());
    }

    #[test]
    fn an_error_names_the_channel_and_the_key() {
        let error = ConfigCheck::new("email").error("from", format!("not {}", "an address"));
        assert_eq!(error.channel, "email");
        assert_eq!(error.message, "`from`: not an address");
        assert_eq!(error.to_string(), "channel `email`: `from`: not an address");

        let error = ConfigCheck::new("sms").section_error("set exactly one of `from` and `sid`");
        assert_eq!(error.channel, "sms");
        assert_eq!(error.message, "set exactly one of `from` and `sid`");
    }
}
