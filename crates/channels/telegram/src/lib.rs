//! Waymark's `telegram` channel kind: messages from a Telegram bot, through the Bot API.
//!
//! ```yaml
//! channels:
//!   telegram:
//!     kind: telegram
//!     bot_token: "${TELEGRAM_TOKEN}"
//!     parse_mode: HTML                        # optional: HTML or MarkdownV2; plain text if unset
//!     webhook_secret: "${TELEGRAM_SECRET}"    # optional: accept updates as delivery receipts
//!     base_url: "https://api.telegram.org"    # optional: a proxy, a local Bot API server, a test server
//!     timeout: 30                             # optional: seconds per request; default 30
//! ```
//!
//! The customer's address is the `telegram_chat_id` profile trait: a numeric chat id (sent
//! as a number) or a public `@channelusername` (sent as a string).
//!
//! # What is sent
//!
//! `POST {base_url}/bot{bot_token}/sendMessage` with the JSON body `{chat_id, text,
//! parse_mode?}`; `text` is the rendered `text` field. The bot token is part of the URL, as
//! the Bot API requires, so errors reported from this crate never include the URL.
//!
//! # Idempotency: Telegram has none
//!
//! The Bot API has no idempotency key or client message id: a `sendMessage` that is
//! repeated is a second message. The outbox's guarantee is what protects customers here:
//! a message is handed to this channel once, and only a crash between Telegram's answer
//! and the outbox recording it (or a timeout after Telegram accepted the request) can send
//! it twice. That is why a transport error is retryable even though it might mean a
//! duplicate: losing the message silently would be worse.
//!
//! # Errors
//!
//! | Telegram says | outcome |
//! |---|---|
//! | `ok: true` | delivered; the provider id is `{chat_id}:{message_id}` |
//! | 403 (bot blocked, user deactivated, bot kicked, can't initiate a conversation) | permanent, address gone |
//! | 400 `chat not found`, `user not found`, `PEER_ID_INVALID`, group upgraded to a supergroup | permanent, address gone |
//! | 429 | retryable, after `parameters.retry_after` (or the `Retry-After` header, in seconds or as an HTTP date) |
//! | 5xx, 408, timeouts, connection errors | retryable |
//! | any other 4xx (bad markup, text too long, bad token) | permanent |
//!
//! Telegram message ids are only unique within one chat, so the provider id carries the
//! chat id too: receipts can then be matched without knowing the chat.
//!
//! # Delivery receipts
//!
//! Telegram has no delivery or read receipts, but two updates say something about a
//! message. Point the bot's webhook (`setWebhook` with `secret_token` equal to
//! `webhook_secret`) at `POST /v1/channels/{name}/status`; each update is checked against
//! the `X-Telegram-Bot-Api-Secret-Token` header and turned into receipts:
//!
//! - `my_chat_member` with the bot's new status `kicked` (the user blocked the bot, or a
//!   group banned it) or `left` (a group or channel removed it) → bounced, address gone,
//!   for that chat.
//! - `callback_query` (a press on an inline button of one of our messages) → clicked.
//! - any other update → no receipts.
//!
//! Without `webhook_secret` the channel refuses updates: an unauthenticated endpoint
//! would let anyone mark customers unreachable.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use waymark_channel::{
    Channel, ChannelKind, ConfigCheck, ConfigError, Delivery, DeliveryError, OutboundMessage,
    Receipt, ReceiptError, ReceiptStatus, StatusCallback, parse_config,
};
use waymark_channel_http as http;

const DEFAULT_BASE_URL: &str = "https://api.telegram.org";
/// Long enough for a slow Bot API answer, short enough that a hung connection does not
/// hold an outbox worker for minutes.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";

/// The `telegram` channel kind. Register it with
/// `Registry::new().with(waymark_channel_telegram::TelegramKind)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TelegramKind;

/// The config section of a `telegram` channel; see the crate docs for the keys.
///
/// No `Debug`: it holds the bot token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TelegramConfig {
    bot_token: String,
    #[serde(default)]
    parse_mode: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    webhook_secret: Option<String>,
    /// Seconds.
    #[serde(default)]
    timeout: Option<u64>,
}

impl ChannelKind for TelegramKind {
    fn kind(&self) -> &'static str {
        "telegram"
    }

    fn address_trait(&self) -> Option<&'static str> {
        Some("telegram_chat_id")
    }

    fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn Channel>, ConfigError> {
        let config: TelegramConfig = parse_config(name, config)?;
        Ok(Arc::new(TelegramChannel::new(name, config)?))
    }
}

/// A configured Telegram bot. No `Debug`: it holds the bot token.
struct TelegramChannel {
    client: reqwest::Client,
    /// `{base_url}/bot{token}/sendMessage`, secret: never put it in an error or a log.
    send_url: String,
    parse_mode: Option<&'static str>,
    webhook_secret: Option<String>,
}

impl TelegramChannel {
    fn new(name: &str, config: TelegramConfig) -> Result<Self, ConfigError> {
        let check = ConfigCheck::new(name);

        // The token is a URL path segment; anything that would change the path is a typo
        // (or a pasted `bot` prefix), not a token.
        let token = config.bot_token.trim();
        if token.is_empty() || token.contains(['/', '?', '#', ' ']) {
            return Err(check.error(
                "bot_token",
                "expected the token @BotFather gave, such as `123456:ABC-DEF...`",
            ));
        }

        let parse_mode = match config.parse_mode.as_deref() {
            None => None,
            Some("HTML") => Some("HTML"),
            Some("MarkdownV2") => Some("MarkdownV2"),
            Some(other) => {
                return Err(check.error(
                    "parse_mode",
                    format!("`{other}` is not one of `HTML`, `MarkdownV2`"),
                ));
            }
        };

        if let Some(secret) = &config.webhook_secret {
            // Telegram's own rule for `secret_token`; a secret it would refuse could never
            // match an update.
            let valid = (1..=256).contains(&secret.len())
                && secret
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(check.error(
                    "webhook_secret",
                    "Telegram accepts 1 to 256 characters of A-Z, a-z, 0-9, `_` and `-`",
                ));
            }
        }

        let base_url = check.base_url(config.base_url.as_deref(), DEFAULT_BASE_URL)?;
        let timeout = check.timeout(config.timeout, DEFAULT_TIMEOUT)?;
        let client = http::client(timeout)
            .map_err(|e| check.error("base_url", format!("cannot build an HTTP client: {e}")))?;

        Ok(TelegramChannel {
            client,
            send_url: format!("{base_url}/bot{token}/sendMessage"),
            parse_mode,
            webhook_secret: config.webhook_secret,
        })
    }
}

#[async_trait]
impl Channel for TelegramChannel {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        // A stray space would turn a chat id into an unknown `@username`, and Telegram's
        // `chat not found` would then mark a good address gone.
        let address = message.require_address()?.trim();
        let text = message.field("text");
        if text.is_empty() {
            return Err(DeliveryError::permanent(
                "the message has no `text` to send to Telegram",
            ));
        }
        // The Bot API takes a chat id as an integer or an `@username` string.
        let chat_id = match address.parse::<i64>() {
            Ok(id) => json!(id),
            Err(_) => json!(address),
        };
        let mut body = json!({"chat_id": chat_id, "text": text});
        if let Some(mode) = self.parse_mode {
            body["parse_mode"] = json!(mode);
        }

        // The send URL holds the token: `http` drops it from transport errors.
        let answer = http::send(self.client.post(&self.send_url).json(&body), "Telegram").await?;
        match serde_json::from_slice::<ApiResponse>(&answer.body) {
            Ok(ApiResponse {
                ok: Some(true),
                result,
                ..
            }) if answer.is_success() => Ok(Delivery {
                provider_id: result.map(|m| {
                    let chat = m
                        .chat
                        .map_or_else(|| address.to_owned(), |c| c.id.to_string());
                    format!("{chat}:{}", m.message_id)
                }),
                detail: None,
            }),
            Ok(
                refusal @ ApiResponse {
                    ok: Some(false), ..
                },
            ) => Err(classify(
                answer.status,
                answer.retry_after.as_deref(),
                refusal,
            )),
            // Telegram said 2xx but in words we cannot read: it has taken the message, and
            // sending it again would be a duplicate.
            _ if answer.is_success() => Ok(Delivery {
                provider_id: None,
                detail: Some("accepted; the answer had no message id".to_owned()),
            }),
            // Not the Bot API talking (a proxy, a load balancer): judge by the status.
            _ => Err(answer.status_error()),
        }
    }

    fn receipts(&self, callback: &StatusCallback) -> Result<Vec<Receipt>, ReceiptError> {
        let Some(secret) = &self.webhook_secret else {
            return Err(ReceiptError::Unsupported);
        };
        let given = callback.header(SECRET_HEADER).unwrap_or_default();
        if !waymark_channel::secrets_match(given.as_bytes(), secret.as_bytes()) {
            return Err(ReceiptError::BadSignature);
        }
        let update: Update = serde_json::from_slice(&callback.body)
            .map_err(|e| ReceiptError::Malformed(format!("not a Telegram update: {e}")))?;

        let mut receipts = Vec::new();
        // `kicked`: the user blocked the bot (a private chat) or a group banned it; `left`:
        // a group or channel removed it. Either way the bot cannot write there any more.
        if let Some(member) = update.my_chat_member
            && matches!(member.new_chat_member.status.as_str(), "kicked" | "left")
        {
            receipts.push(Receipt {
                provider_id: None,
                address: Some(member.chat.id.to_string()),
                status: ReceiptStatus::Bounced { address_gone: true },
                detail: Some(if member.new_chat_member.status == "kicked" {
                    "the user blocked the bot, or the chat banned it".to_owned()
                } else {
                    "the bot was removed from the chat".to_owned()
                }),
            });
        }
        if let Some(query) = update.callback_query {
            let (provider_id, chat) = match query.message {
                Some(m) => (Some(format!("{}:{}", m.chat.id, m.message_id)), m.chat.id),
                None => (None, query.from.id),
            };
            receipts.push(Receipt {
                provider_id,
                address: Some(chat.to_string()),
                status: ReceiptStatus::Clicked,
                detail: query.data.map(|data| format!("button `{data}`")),
            });
        }
        Ok(receipts)
    }
}

/// The Bot API's answer envelope; unknown fields are ignored, as Telegram adds them.
#[derive(Deserialize)]
struct ApiResponse {
    ok: Option<bool>,
    result: Option<SentMessage>,
    error_code: Option<u16>,
    description: Option<String>,
    parameters: Option<ResponseParameters>,
}

#[derive(Deserialize)]
struct SentMessage {
    message_id: i64,
    chat: Option<Chat>,
}

#[derive(Deserialize)]
struct Chat {
    id: i64,
}

#[derive(Deserialize)]
struct ResponseParameters {
    retry_after: Option<u64>,
    migrate_to_chat_id: Option<i64>,
}

/// What `description` says when the chat can never receive from this bot. Telegram
/// documents `error_code` as subject to change and gives no stable sub-codes, so the
/// words are the only signal; they have been stable for years.
const ADDRESS_GONE: &[&str] = &[
    "chat not found",
    "user not found",
    "peer_id_invalid",
    "bot was blocked by the user",
    "user is deactivated",
    "bot was kicked",
    "bot can't initiate conversation",
    "group chat was upgraded to a supergroup",
];

/// Classifies an `ok: false` answer.
fn classify(status: u16, retry_after: Option<&str>, answer: ApiResponse) -> DeliveryError {
    let code = answer.error_code.unwrap_or(status);
    let description = answer
        .description
        .unwrap_or_else(|| "no description".to_owned());
    let parameters = answer.parameters;

    if code == 429 {
        let wait = match parameters.as_ref().and_then(|p| p.retry_after) {
            Some(seconds) => Some(Duration::from_secs(seconds)),
            None => retry_after.and_then(waymark_channel::retry_after_header),
        };
        return DeliveryError::Retryable {
            reason: format!("Telegram {code}: {description}"),
            retry_after: wait,
        };
    }
    let lower = description.to_ascii_lowercase();
    // 403 is Telegram's answer for every "this bot may not write to this chat".
    if code == 403 || ADDRESS_GONE.iter().any(|words| lower.contains(words)) {
        let mut reason = format!("Telegram {code}: {description}");
        if let Some(new_id) = parameters.and_then(|p| p.migrate_to_chat_id) {
            reason.push_str(&format!(" (the chat is now {new_id})"));
        }
        return DeliveryError::address_gone(reason);
    }
    DeliveryError::from_http_status(code, retry_after, format!("Telegram: {description}"))
}

/// The parts of a Telegram `Update` that say something about our messages.
#[derive(Deserialize)]
struct Update {
    my_chat_member: Option<ChatMemberUpdated>,
    callback_query: Option<CallbackQuery>,
}

#[derive(Deserialize)]
struct ChatMemberUpdated {
    chat: Chat,
    new_chat_member: ChatMember,
}

#[derive(Deserialize)]
struct ChatMember {
    status: String,
}

#[derive(Deserialize)]
struct CallbackQuery {
    from: User,
    /// Absent when the message is too old for Telegram to include it.
    message: Option<CallbackMessage>,
    data: Option<String>,
}

#[derive(Deserialize)]
struct User {
    id: i64,
}

#[derive(Deserialize)]
struct CallbackMessage {
    message_id: i64,
    chat: Chat,
}

#[cfg(test)]
mod tests {
    use waymark_channel::body_snippet;

    use super::*;

    #[test]
    fn long_bodies_are_cut() {
        let long = "x".repeat(500);
        assert_eq!(body_snippet(long.as_bytes()).len(), 203);
        assert_eq!(body_snippet(b"  "), "empty answer");
    }

    #[test]
    fn an_unknown_parse_mode_names_the_key() {
        let Err(error) = TelegramKind.build(
            "telegram",
            &json!({"kind": "telegram", "bot_token": "1:A", "parse_mode": "Markdown"}),
        ) else {
            panic!("`Markdown` (the legacy mode) must be refused");
        };
        assert!(error.message.contains("parse_mode"), "{error}");
    }
}
