//! Waymark's `smtp` channel kind: email through any SMTP server.
//!
//! ```yaml
//! channels:
//!   email:
//!     kind: smtp
//!     url: "smtp://smtp.example.com:587?tls=required"
//!     username: "${SMTP_USER}"
//!     password: "${SMTP_PASSWORD}"
//!     from: "Shop <hello@shop.example>"
//!     reply_to: "Support <help@shop.example>"   # optional
//!     timeout: 30                               # seconds per delivery; default 60
//! ```
//!
//! # Connection security, chosen by `url`
//!
//! | `url` | default port | what happens |
//! |---|---|---|
//! | `smtp://host[:port]` | 25 | plain text, no TLS at all; for a relay on localhost or a test sink |
//! | `smtp://host[:port]?tls=opportunistic` | 587 | STARTTLS when the server offers it, plain text otherwise |
//! | `smtp://host[:port]?tls=required` | 587 | STARTTLS, and nothing (no credentials, no mail) is sent unless it succeeds |
//! | `smtps://host[:port]` | 465 | implicit TLS: TLS from the first byte |
//!
//! TLS is rustls with the aws-lc-rs provider, and certificates are checked against the
//! operating system's trust store. Credentials come from `username`/`password` or from the
//! URL's user info (`smtps://user:pass@host`, percent-encoded); the config keys win when
//! both are given, so a secret can stay out of a URL that gets logged.
//!
//! # What a message looks like
//!
//! `To` is the customer's address, `Subject` is `content.subject`, and the body is
//! `content.text` and `content.html` as `multipart/alternative` when both are present
//! (one part when only one is). The `Message-ID` is derived from the outbox idempotency
//! key, so a retried send carries the same id and receiving systems can spot the
//! duplicate. When the daemon offers `links.unsubscribe_url`, the message carries
//! `List-Unsubscribe` and, for HTTP(S) links, `List-Unsubscribe-Post:
//! List-Unsubscribe=One-Click` (RFC 8058), which large mailbox providers require of bulk
//! senders.
//!
//! # One connection per message
//!
//! Each delivery opens its own connection and closes it afterwards. lettre's async
//! transport bounds only the TCP connect, so the whole exchange runs under `timeout`
//! here; a delivery cut off that way must not leave a half-finished SMTP transaction on
//! a connection someone reuses (lettre's pool would park it and the next message could
//! end up inside the old one's DATA), so there is no pool. A timeout after the server
//! took the message but before its reply arrived is retried and sends twice; the
//! unchanged `Message-ID` lets receiving systems fold the copies.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use waymark_channel::{
    Channel, ChannelKind, ConfigCheck, ConfigError, Delivery, DeliveryError, OutboundMessage,
    parse_config,
};

/// How long one delivery (connect, TLS, login, send) may take when the config does not
/// say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

const LIST_UNSUBSCRIBE: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe");
const LIST_UNSUBSCRIBE_POST: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe-Post");

/// The `smtp` channel kind. Register it with
/// `Registry::new().with(waymark_channel_email::SmtpKind)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmtpKind;

/// The config section of an `smtp` channel; see the crate docs for the keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SmtpConfig {
    url: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    from: String,
    #[serde(default)]
    reply_to: Option<String>,
    /// Seconds.
    #[serde(default)]
    timeout: Option<u64>,
}

impl ChannelKind for SmtpKind {
    fn kind(&self) -> &'static str {
        "smtp"
    }

    fn address_trait(&self) -> Option<&'static str> {
        Some("email")
    }

    fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<Arc<dyn Channel>, ConfigError> {
        let config: SmtpConfig = parse_config(name, config)?;
        Ok(Arc::new(SmtpChannel::new(name, config)?))
    }
}

/// A configured SMTP channel.
///
/// Building it contacts nothing. For a TLS `url` it does read the system's CA
/// certificates (local files), so a machine without any fails when the config loads
/// rather than at the first send.
struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    timeout: Duration,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    /// The right-hand side of every `Message-ID`: the sender's domain, so the ids are
    /// globally unique in the way RFC 5322 asks without any per-host state.
    message_id_domain: String,
    /// The URL with any password removed, for `Debug`.
    redacted_url: String,
}

impl SmtpChannel {
    fn new(name: &str, config: SmtpConfig) -> Result<Self, ConfigError> {
        let check = ConfigCheck::new(name);

        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.url).map_err(|e| {
                check.error(
                    "url",
                    format!(
                        "{e}; expected smtp://host[:port] (no TLS), \
                     smtp://host[:port]?tls=opportunistic or ?tls=required (STARTTLS), \
                     or smtps://host[:port] (implicit TLS)"
                    ),
                )
            })?;

        match (config.username, config.password) {
            (Some(username), Some(password)) => {
                builder = builder.credentials(Credentials::new(username, password));
            }
            (Some(_), None) => {
                return Err(check.error(
                    "password",
                    "missing: `username` is set, so `password` is needed too",
                ));
            }
            (None, Some(_)) => {
                return Err(check.error(
                    "username",
                    "missing: `password` is set, so `username` is needed too",
                ));
            }
            (None, None) => {}
        }

        let timeout = check.timeout(config.timeout, DEFAULT_TIMEOUT)?;
        builder = builder.timeout(Some(timeout));

        let from: Mailbox = config.from.parse().map_err(|e| {
            check.error(
                "from",
                format!("not an email address ({e}): {:?}", config.from),
            )
        })?;
        let message_id_domain = from.email.domain().to_owned();
        if !message_id_domain.is_ascii() {
            // A Message-ID must be ASCII; rather than guess an encoding, ask for the
            // punycode form the DNS uses anyway.
            return Err(check.error(
                "from",
                format!("write the domain `{message_id_domain}` in its ASCII (punycode) form"),
            ));
        }
        let reply_to = config
            .reply_to
            .map(|reply_to| {
                reply_to.parse::<Mailbox>().map_err(|e| {
                    check.error(
                        "reply_to",
                        format!("not an email address ({e}): {reply_to:?}"),
                    )
                })
            })
            .transpose()?;

        Ok(SmtpChannel {
            transport: builder.build(),
            timeout,
            from,
            reply_to,
            message_id_domain,
            redacted_url: redact_url(&config.url),
        })
    }

    /// The `Message-ID` for an idempotency key, angle brackets included.
    fn message_id(&self, idempotency_key: &str) -> String {
        format!(
            "<{}@{}>",
            message_id_local_part(idempotency_key),
            self.message_id_domain
        )
    }

    /// Renders the message; every failure here is about this message, so permanent.
    fn compose(
        &self,
        message: &OutboundMessage,
        message_id: &str,
    ) -> Result<Message, DeliveryError> {
        let address = message.require_address()?;
        let to: Mailbox = address.parse().map_err(|e| {
            DeliveryError::address_gone(format!("`{address}` is not a valid email address: {e}"))
        })?;

        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(message.field("subject"))
            .message_id(Some(message_id.to_owned()));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        if let Some(url) = message.links.get("unsubscribe_url") {
            for header in unsubscribe_headers(url)? {
                builder = builder.raw_header(header);
            }
        }

        let text = message.field("text");
        let html = message.field("html");
        let built = match (text.is_empty(), html.is_empty()) {
            (false, false) => builder.multipart(MultiPart::alternative_plain_html(
                text.to_owned(),
                html.to_owned(),
            )),
            (false, true) => builder.singlepart(SinglePart::plain(text.to_owned())),
            (true, false) => builder.singlepart(SinglePart::html(html.to_owned())),
            (true, true) => {
                return Err(DeliveryError::permanent(
                    "the email has neither `text` nor `html` content",
                ));
            }
        };
        built.map_err(|e| DeliveryError::permanent(format!("cannot build the email: {e}")))
    }
}

impl fmt::Debug for SmtpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpChannel")
            .field("url", &self.redacted_url)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Channel for SmtpChannel {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        let message_id = self.message_id(&message.idempotency_key);
        let email = self.compose(message, &message_id)?;
        let response = tokio::time::timeout(self.timeout, self.transport.send(email))
            .await
            .map_err(|_| {
                DeliveryError::retryable(format!(
                    "the SMTP server did not finish within {} s",
                    self.timeout.as_secs()
                ))
            })?
            .map_err(|e| classify(&e))?;
        let reply: Vec<&str> = response.message().collect();
        Ok(Delivery {
            provider_id: Some(message_id),
            detail: Some(format!("{} {}", response.code(), reply.join(" ")))
                .map(|detail| truncate(detail.trim_end(), 200)),
        })
    }
}

/// Turns a lettre error into what the outbox should do about it.
fn classify(error: &lettre::transport::smtp::Error) -> DeliveryError {
    // lettre keeps the server's reply text as the error's source; its `Display` already
    // includes it, so that is the reason we record.
    let reason = error.to_string();
    if error.is_transient() {
        return DeliveryError::retryable(reason);
    }
    if error.is_permanent() {
        let code = error
            .status()
            .and_then(|code| code.to_string().parse::<u16>().ok())
            .unwrap_or(500);
        let text = std::error::Error::source(error)
            .map(ToString::to_string)
            .unwrap_or_default();
        return DeliveryError::Permanent {
            address_gone: mailbox_is_gone(code, enhanced_status(&text)),
            reason,
        };
    }
    if error.is_client() {
        // The server and our config cannot agree (no STARTTLS under `tls=required`, no
        // common AUTH mechanism, SMTPUTF8 needed but not offered): retrying the same
        // message changes nothing until a person steps in.
        return DeliveryError::permanent(reason);
    }
    // Connection refused or reset, timeouts, TLS handshakes, garbled replies, a pool
    // shutting down: all about the path to the server, not about this message.
    DeliveryError::retryable(reason)
}

/// Whether a permanent SMTP reply says the recipient's mailbox will never accept mail.
///
/// The enhanced status code (RFC 3463) decides when the server sent one, because the
/// basic code is overloaded: `550 5.7.1` is a policy or spam refusal, not a dead
/// mailbox. Without one, the basic codes RFC 5321 gives for a missing or invalid mailbox
/// (550, 551, 553) count as gone.
fn mailbox_is_gone(code: u16, enhanced: Option<(u16, u16, u16)>) -> bool {
    match enhanced {
        Some((5, subject, detail)) => matches!(
            (subject, detail),
            // bad destination mailbox, bad destination system (no such domain), bad
            // mailbox syntax, mailbox moved without forwarding, domain accepts no mail
            // (null MX, RFC 7505), mailbox disabled
            (1, 1 | 2 | 3 | 6 | 10) | (2, 1)
        ),
        Some(_) => false,
        None => matches!(code, 550 | 551 | 553),
    }
}

/// The enhanced status code at the start of an SMTP reply text, such as `5.1.1`.
fn enhanced_status(text: &str) -> Option<(u16, u16, u16)> {
    let word = text.split_whitespace().next()?;
    let mut parts = word.splitn(3, '.');
    let class = parts.next()?.parse().ok()?;
    let subject = parts.next()?.parse().ok()?;
    let detail = parts.next()?.parse().ok()?;
    matches!(class, 2 | 4 | 5).then_some((class, subject, detail))
}

/// Makes an idempotency key safe as the left half of a `Message-ID` (a `dot-atom-text`)
/// without losing uniqueness: atext characters pass, everything else (dots and `=`
/// included) becomes `=XX` per UTF-8 byte, so distinct keys give distinct ids.
fn message_id_local_part(key: &str) -> String {
    const ATEXT_SPECIALS: &[u8] = b"!#$%&'*+-/?^_`{|}~";
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("={byte:02X}"));
        }
    }
    if out.is_empty() {
        // Unreachable for outbox messages, but an empty id-left would make a malformed
        // header rather than an error somebody can see.
        out.push_str("=00");
    }
    out
}

/// `List-Unsubscribe`, plus the RFC 8058 one-click header for HTTP(S) links (RFC 8058
/// defines one-click for HTTPS only; `http:` is allowed so local setups work).
fn unsubscribe_headers(url: &str) -> Result<Vec<HeaderValue>, DeliveryError> {
    // The value goes into a header verbatim: anything that could fold or inject another
    // header is a daemon bug, and sending without a working unsubscribe link would break
    // bulk-sender rules, so refuse the message instead.
    if url.is_empty() || !url.bytes().all(|b| b.is_ascii_graphic()) || url.contains(['<', '>']) {
        return Err(DeliveryError::permanent(format!(
            "links.unsubscribe_url is not a usable URL: {url:?}"
        )));
    }
    let mut headers = vec![HeaderValue::new(LIST_UNSUBSCRIBE, format!("<{url}>"))];
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("https" | "http")) {
        headers.push(HeaderValue::new(
            LIST_UNSUBSCRIBE_POST,
            "List-Unsubscribe=One-Click".to_owned(),
        ));
    }
    Ok(headers)
}

/// The URL with the user info's password replaced, so `Debug` output can be logged.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_status_codes_decide_whether_the_mailbox_is_gone() {
        assert_eq!(
            enhanced_status("5.1.1 mailbox unavailable"),
            Some((5, 1, 1))
        );
        assert_eq!(enhanced_status("mailbox unavailable"), None);
        assert_eq!(enhanced_status("1.2.3 odd"), None);
        assert!(mailbox_is_gone(550, Some((5, 1, 1))));
        assert!(mailbox_is_gone(550, Some((5, 1, 10))));
        assert!(mailbox_is_gone(556, Some((5, 1, 10))));
        assert!(mailbox_is_gone(550, Some((5, 2, 1))));
        assert!(!mailbox_is_gone(550, Some((5, 7, 1))), "a spam refusal");
        assert!(!mailbox_is_gone(552, Some((5, 2, 2))), "a full mailbox");
        assert!(mailbox_is_gone(551, None));
        assert!(mailbox_is_gone(553, None));
        assert!(!mailbox_is_gone(554, None));
    }

    #[test]
    fn message_id_local_parts_are_dot_atoms_and_distinct() {
        assert_eq!(message_id_local_part("wm-0123abc"), "wm-0123abc");
        assert_eq!(message_id_local_part("a.b"), "a=2Eb");
        assert_eq!(message_id_local_part("a=2Eb"), "a=3D2Eb");
        assert_eq!(message_id_local_part("a b<c>"), "a=20b=3Cc=3E");
        assert_eq!(message_id_local_part("ж"), "=D0=B6");
    }

    #[test]
    fn unsubscribe_headers_refuse_header_injection() {
        assert!(unsubscribe_headers("https://x.example/u?t=1\r\nBcc: a@b").is_err());
        assert!(unsubscribe_headers("").is_err());
        assert_eq!(
            unsubscribe_headers("https://x.example/u").map(|h| h.len()),
            Ok(2)
        );
        assert_eq!(
            unsubscribe_headers("mailto:unsub@x.example").map(|h| h.len()),
            Ok(1)
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let config = serde_json::json!({
            "url": "smtps://mailer:hunter2@smtp.example.com",
            "from": "hello@shop.example",
        });
        let channel = SmtpChannel::new("email", parse_config("email", &config).unwrap()).unwrap();
        let debug = format!("{channel:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("smtp.example.com"), "{debug}");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("smtps://user:secret@smtp.example:465"),
            "smtps://user:***@smtp.example:465"
        );
        assert_eq!(
            redact_url("smtp://127.0.0.1:2525?tls=required"),
            "smtp://127.0.0.1:2525?tls=required"
        );
    }
}
