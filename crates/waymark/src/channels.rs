//! Channels built from config, and the built-in `log` kind.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use waymark_channel::{
    Channel, ChannelKind, ConfigError, Delivery, DeliveryError, OutboundMessage, Registry,
};
use waymark_scheduler::ChannelDirectory;

/// `kind: log`: prints each message through `tracing` instead of sending it. The default
/// for every channel when the daemon runs without a config file, so journeys can be tried
/// end to end before any provider is set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogKind;

/// A `log` channel's config: nothing but an optional override of the address trait.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogConfig {}

impl ChannelKind for LogKind {
    fn kind(&self) -> &'static str {
        "log"
    }

    /// A log channel stands in for a real one; the daemon takes its address trait from
    /// the channel's conventional name (`email` -> `email`), see [`Channels`].
    fn address_trait(&self) -> Option<&'static str> {
        None
    }

    fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn Channel>, ConfigError> {
        let _: LogConfig = waymark_channel::parse_config(name, config)?;
        Ok(Arc::new(LogChannel))
    }
}

struct LogChannel;

#[async_trait]
impl Channel for LogChannel {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        tracing::info!(
            target: "waymark::log_channel",
            channel = %message.channel,
            address = message.address.as_deref().unwrap_or("-"),
            customer = %message.customer_id,
            journey = %message.journey_id,
            step = %message.step_id,
            template = %message.template,
            key = %message.idempotency_key,
            content = %serde_json::to_string(&message.content).unwrap_or_default(),
            "message"
        );
        Ok(Delivery {
            provider_id: Some(format!("log:{}", message.idempotency_key)),
            detail: None,
        })
    }
}

/// The channel kinds this build of the daemon knows. Third-party binaries start from it
/// and add their own with [`Registry::with`] before calling [`crate::run`].
pub fn default_registry() -> Registry {
    Registry::new()
        .with(LogKind)
        .with(waymark_channel_email::SmtpKind)
        .with(waymark_channel_sms::TwilioKind)
        .with(waymark_channel_sms::SmsRuKind)
        .with(waymark_channel_telegram::TelegramKind)
        .with(waymark_channel_whatsapp::WhatsAppKind)
        .with(waymark_channel_vk::VkKind)
        .with(waymark_channel_viber::ViberKind)
        .with(waymark_channel_webhook::WebhookKind)
        .with(waymark_channel_push::FcmKind::default())
}

/// How many deliveries a channel has in flight at most, unless its section says
/// `concurrency: N`: enough to keep a provider's API busy without tripping its rate limits.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// The daemon's own keys in a channel section, taken out before the kind validates the
/// rest.
const DAEMON_KEYS: &[&str] = &["concurrency"];

/// A configured channel.
struct Built {
    channel: Arc<dyn Channel>,
    /// The profile trait holding a customer's address on it.
    address: Option<String>,
    concurrency: usize,
}

/// The daemon's channels by name, with the address trait each reaches customers through.
pub struct Channels {
    built: BTreeMap<String, Built>,
    /// Without a config file every channel name is a `log` channel, built on first use.
    log_fallback: Option<Arc<dyn Channel>>,
}

impl Channels {
    /// Builds every configured channel (validation only: no I/O happens here).
    ///
    /// # Errors
    /// The first channel whose config does not validate, naming it.
    pub fn build(
        registry: &Registry,
        config: &BTreeMap<String, serde_json::Value>,
        log_fallback: bool,
    ) -> Result<Channels, ConfigError> {
        let mut built = BTreeMap::new();
        for (name, section) in config {
            let concurrency = concurrency(name, section)?;
            let mut section = section.clone();
            if let Some(map) = section.as_object_mut() {
                map.retain(|key, _| !DAEMON_KEYS.contains(&key.as_str()));
            }
            let (channel, address) = registry.build(name, &section)?;
            let is_log = section.get("kind").and_then(|k| k.as_str()) == Some("log");
            let address = if is_log {
                waymark_journey::address_trait(name)
            } else {
                address
            };
            built.insert(
                name.clone(),
                Built {
                    channel,
                    address: address.map(str::to_owned),
                    concurrency,
                },
            );
        }
        Ok(Channels {
            built,
            log_fallback: log_fallback.then(|| Arc::new(LogChannel) as Arc<dyn Channel>),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Channel>> {
        self.built
            .get(name)
            .map(|b| b.channel.clone())
            .or_else(|| self.log_fallback.clone())
    }

    /// How many deliveries the channel may have in flight at once.
    pub fn concurrency(&self, name: &str) -> usize {
        self.built
            .get(name)
            .map_or(DEFAULT_CONCURRENCY, |b| b.concurrency)
    }

    /// The configured channels' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.built.keys().map(String::as_str)
    }

    /// Without a config file every channel name is a `log` channel.
    pub fn accepts_any(&self) -> bool {
        self.log_fallback.is_some()
    }

    pub fn is_known(&self, name: &str) -> bool {
        self.log_fallback.is_some() || self.built.contains_key(name)
    }
}

impl ChannelDirectory for Channels {
    /// A configured channel; without a config file, any name (each is a `log` channel).
    fn exists(&self, channel: &str) -> bool {
        self.is_known(channel)
    }

    fn address_trait(&self, channel: &str) -> Option<&str> {
        match self.built.get(channel) {
            Some(built) => built.address.as_deref(),
            None => waymark_journey::address_trait(channel),
        }
    }
}

/// A section's `concurrency`, checked.
fn concurrency(name: &str, section: &serde_json::Value) -> Result<usize, ConfigError> {
    match section.get("concurrency") {
        None => Ok(DEFAULT_CONCURRENCY),
        Some(value) => value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| ConfigError {
                channel: name.to_owned(),
                message: format!(
                    "`concurrency` is the most deliveries in flight at once, a whole number of at least 1, not {value}"
                ),
            }),
    }
}

#[cfg(test)]
mod registry_tests {
    use serde_json::json;

    /// Every built-in kind is registered, with the address trait its channels reach
    /// customers through.
    #[test]
    fn the_default_registry_builds_every_kind() {
        let registry = super::default_registry();
        let cases = [
            (json!({"kind": "log"}), None),
            (
                json!({"kind": "smtp", "url": "smtp://127.0.0.1:2525", "from": "Shop <hello@shop.example>"}),
                Some("email"),
            ),
            (
                json!({"kind": "twilio", "account_sid": "AC1", "auth_token": "t", "from": "+15550001"}),
                Some("phone"),
            ),
            (json!({"kind": "smsru", "api_id": "k"}), Some("phone")),
            (
                json!({"kind": "telegram", "bot_token": "123:abc"}),
                Some("telegram_chat_id"),
            ),
            (
                json!({"kind": "whatsapp", "access_token": "t", "phone_number_id": "1"}),
                Some("phone"),
            ),
            (
                json!({"kind": "vk", "access_token": "t"}),
                Some("vk_user_id"),
            ),
            (
                json!({"kind": "viber", "auth_token": "t", "sender_name": "Shop"}),
                Some("viber_id"),
            ),
            (
                json!({"kind": "webhook", "url": "https://crm.example/tasks", "secret": "s"}),
                None,
            ),
        ];
        for (config, address) in cases {
            let built = registry.build("channel", &config);
            let (_, trait_name) = built.unwrap_or_else(|e| panic!("{config}: {e}"));
            assert_eq!(trait_name, address, "{config}");
        }
        assert!(
            registry
                .build("channel", &json!({"kind": "carrier_pigeon"}))
                .is_err()
        );
        // `fcm` validates its service account's key, so it is built in its own crate's
        // tests; here it only has to be registered.
        let kinds: Vec<&str> = registry.kinds().collect();
        assert_eq!(
            kinds,
            [
                "fcm", "log", "smsru", "smtp", "telegram", "twilio", "viber", "vk", "webhook",
                "whatsapp"
            ]
        );
    }

    /// `concurrency` is the daemon's key: taken out before the kind (which refuses
    /// unknown keys) sees the section, and checked.
    #[test]
    fn concurrency_is_read_and_checked_before_the_kind_sees_the_section() {
        let registry = super::default_registry();
        let config = |section| std::collections::BTreeMap::from([("crm".to_owned(), section)]);
        let webhook = json!({"kind": "webhook", "url": "https://crm.example/tasks", "secret": "s"});
        let mut limited = webhook.clone();
        limited["concurrency"] = json!(3);
        let channels = super::Channels::build(&registry, &config(limited), false).unwrap();
        assert_eq!(channels.concurrency("crm"), 3);
        let channels = super::Channels::build(&registry, &config(webhook.clone()), false).unwrap();
        assert_eq!(channels.concurrency("crm"), super::DEFAULT_CONCURRENCY);
        for bad in [json!(0), json!(-1), json!("many"), json!(2.5)] {
            let mut section = webhook.clone();
            section["concurrency"] = bad.clone();
            let error = super::Channels::build(&registry, &config(section), false)
                .err()
                .unwrap_or_else(|| panic!("concurrency {bad} accepted"));
            assert_eq!(error.channel, "crm");
            assert!(error.message.contains("`concurrency`"), "{}", error.message);
        }
    }
}
