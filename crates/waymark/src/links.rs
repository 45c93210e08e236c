//! Links the daemon puts in messages and serves: unsubscribe, open tracking and click
//! redirects.
//!
//! Each link carries a signed token that says which message it belongs to (channel,
//! customer, idempotency key, journey, step and, for a click, the destination), so the
//! daemon needs no lookup to serve it and nobody can forge one: the token is the
//! message's fields, base64url-encoded, then a truncated HMAC-SHA256 under the daemon's
//! link secret. A click token signs its destination, so the redirect cannot be abused as
//! an open redirect.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Tracking;

/// The bytes of the HMAC kept in a token: 128 bits, enough against forgery, short
/// enough for a URL.
const TAG_BYTES: usize = 16;

/// What a link is for; part of what is signed, so one kind cannot stand in for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Unsubscribe,
    Open,
    Click,
}

impl LinkKind {
    fn tag(self) -> &'static str {
        match self {
            LinkKind::Unsubscribe => "u",
            LinkKind::Open => "o",
            LinkKind::Click => "c",
        }
    }

    /// The path the daemon serves it under, before the token.
    pub fn path(self) -> &'static str {
        match self {
            LinkKind::Unsubscribe => "/l/unsubscribe/",
            LinkKind::Open => "/l/open/",
            LinkKind::Click => "/l/click/",
        }
    }
}

/// The message a link belongs to, as signed into its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkTarget {
    pub channel: String,
    pub customer: String,
    pub message_key: String,
    pub journey: String,
    pub step: String,
    /// A click's destination.
    pub url: Option<String>,
}

impl LinkTarget {
    /// The links of an outbox message.
    pub fn of(m: &waymark_store::OutboxMessage) -> LinkTarget {
        LinkTarget {
            channel: m.channel.clone(),
            customer: m.customer.clone(),
            message_key: m.idempotency_key.clone(),
            journey: m.journey.clone(),
            step: m.step.clone(),
            url: None,
        }
    }
}

/// Makes and checks the daemon's links.
#[derive(Clone)]
pub struct Links {
    /// `public_url` without a trailing slash.
    base: String,
    secret: Vec<u8>,
    tracking: Tracking,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("base", &self.base)
            .field("tracking", &self.tracking)
            .finish_non_exhaustive()
    }
}

impl Links {
    pub fn new(public_url: &str, secret: &str, tracking: Tracking) -> Links {
        Links {
            base: public_url.trim_end_matches('/').to_owned(),
            secret: secret.as_bytes().to_vec(),
            tracking,
        }
    }

    fn tag(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret)
            .expect("HMAC-SHA256 takes a key of any length");
        mac.update(payload);
        mac.finalize().into_bytes()[..TAG_BYTES].to_vec()
    }

    /// The token for `target`'s link of `kind`.
    pub fn token(&self, kind: LinkKind, target: &LinkTarget) -> String {
        let mut fields = vec![
            kind.tag(),
            &target.channel,
            &target.customer,
            &target.message_key,
            &target.journey,
            &target.step,
        ];
        if let Some(url) = &target.url {
            fields.push(url);
        }
        let payload = fields.join("\n");
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(self.tag(payload.as_bytes()))
        )
    }

    /// The message a token of `kind` was made for; `None` for a token this daemon did not
    /// sign (or signed for another kind of link).
    pub fn verify(&self, kind: LinkKind, token: &str) -> Option<LinkTarget> {
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if tag.len() != TAG_BYTES {
            return None;
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        mac.update(&payload);
        mac.verify_truncated_left(&tag).ok()?;
        let payload = String::from_utf8(payload).ok()?;
        let mut fields = payload.split('\n');
        if fields.next()? != kind.tag() {
            return None;
        }
        let mut next = || fields.next().map(str::to_owned);
        let target = LinkTarget {
            channel: next()?,
            customer: next()?,
            message_key: next()?,
            journey: next()?,
            step: next()?,
            url: next(),
        };
        (target.url.is_some() == (kind == LinkKind::Click)).then_some(target)
    }

    /// The absolute URL of `target`'s link of `kind`.
    pub fn url(&self, kind: LinkKind, target: &LinkTarget) -> String {
        format!("{}{}{}", self.base, kind.path(), self.token(kind, target))
    }

    /// The links a message is offered (`unsubscribe_url`), and its content with opens and
    /// clicks tracked in its `html` field when tracking is on.
    pub fn prepare(
        &self,
        target: &LinkTarget,
        content: &BTreeMap<String, String>,
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let mut links = BTreeMap::new();
        links.insert(
            "unsubscribe_url".to_owned(),
            self.url(LinkKind::Unsubscribe, target),
        );
        let mut content = content.clone();
        if (self.tracking.opens || self.tracking.clicks)
            && let Some(html) = content.get_mut("html")
        {
            match self.track_html(html, target) {
                Ok(tracked) => *html = tracked,
                Err(e) => {
                    tracing::warn!(key = %target.message_key, error = %e, "cannot add tracking to the HTML; sent as rendered")
                }
            }
        }
        (content, links)
    }

    /// Rewrites `http(s)` links through the click redirect and appends the open pixel to
    /// `<body>` (or to the end when there is none).
    fn track_html(
        &self,
        html: &str,
        target: &LinkTarget,
    ) -> Result<String, lol_html::errors::RewritingError> {
        use lol_html::html_content::ContentType;
        use lol_html::{RewriteStrSettings, element, rewrite_str};

        let pixel = format!(
            r#"<img src="{}" width="1" height="1" alt="" style="display:none">"#,
            self.url(LinkKind::Open, target)
        );
        let mut has_body = false;
        let mut handlers = Vec::new();
        if self.tracking.clicks {
            handlers.push(element!("a[href]", |el| {
                // The rewriter hands attributes over as written: `&amp;` and all.
                let raw = el.get_attribute("href").unwrap_or_default();
                let href = html_escape::decode_html_entities(&raw).into_owned();
                if is_web_link(&href) && !href.starts_with(&self.base) {
                    let click = LinkTarget {
                        url: Some(href),
                        ..target.clone()
                    };
                    el.set_attribute("href", &self.url(LinkKind::Click, &click))?;
                }
                Ok(())
            }));
        }
        if self.tracking.opens {
            handlers.push(element!("body", |el| {
                has_body = true;
                el.append(&pixel, ContentType::Html);
                Ok(())
            }));
        }
        let mut out = rewrite_str(
            html,
            RewriteStrSettings {
                element_content_handlers: handlers,
                ..RewriteStrSettings::new()
            },
        )?;
        if self.tracking.opens && !has_body {
            out.push_str(&pixel);
        }
        Ok(out)
    }
}

/// An absolute `http://` or `https://` URL: what a click redirect may lead to.
pub fn is_web_link(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

/// A fresh random link secret, for a daemon whose config names none.
///
/// # Errors
/// The operating system's random source failed.
pub fn generate_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(opens: bool, clicks: bool) -> Links {
        Links::new("https://w.example/", "s3cret", Tracking { opens, clicks })
    }

    fn target() -> LinkTarget {
        LinkTarget {
            channel: "email".to_owned(),
            customer: "ann".to_owned(),
            message_key: "ann:welcome:1:hello:0".to_owned(),
            journey: "welcome".to_owned(),
            step: "hello".to_owned(),
            url: None,
        }
    }

    #[test]
    fn a_token_verifies_for_its_kind_only_and_not_when_altered() {
        let l = links(false, false);
        let token = l.token(LinkKind::Unsubscribe, &target());
        assert_eq!(l.verify(LinkKind::Unsubscribe, &token), Some(target()));
        assert_eq!(l.verify(LinkKind::Open, &token), None);
        let other = Links::new("https://w.example", "other", Tracking::default());
        assert_eq!(other.verify(LinkKind::Unsubscribe, &token), None);
        let mut forged = target();
        forged.customer = "bob".to_owned();
        let forged_payload = l.token(LinkKind::Unsubscribe, &forged);
        let spliced = format!(
            "{}.{}",
            forged_payload.split_once('.').unwrap().0,
            token.split_once('.').unwrap().1
        );
        assert_eq!(l.verify(LinkKind::Unsubscribe, &spliced), None);
        assert_eq!(l.verify(LinkKind::Unsubscribe, "garbage"), None);
    }

    #[test]
    fn the_unsubscribe_url_is_absolute_and_html_is_left_alone_without_tracking() {
        let l = links(false, false);
        let mut content = BTreeMap::new();
        content.insert(
            "html".to_owned(),
            r#"<a href="https://shop.example/x">x</a>"#.to_owned(),
        );
        let (out, offered) = l.prepare(&target(), &content);
        assert_eq!(out, content);
        let url = &offered["unsubscribe_url"];
        let token = url
            .strip_prefix("https://w.example/l/unsubscribe/")
            .unwrap();
        assert_eq!(l.verify(LinkKind::Unsubscribe, token), Some(target()));
    }

    #[test]
    fn tracking_rewrites_web_links_and_adds_a_pixel() {
        let l = links(true, true);
        let html = r##"<html><body><p><a href="https://shop.example/cart?id=1&amp;x=2">Cart</a>
            <a href="mailto:help@shop.example">Mail</a> <a href="#top">Top</a></p></body></html>"##;
        let mut content = BTreeMap::new();
        content.insert("html".to_owned(), html.to_owned());
        content.insert("text".to_owned(), "https://shop.example/cart".to_owned());
        let (out, _) = l.prepare(&target(), &content);
        let tracked = &out["html"];
        assert_eq!(out["text"], content["text"], "only HTML is rewritten");
        assert!(tracked.contains(r#"href="mailto:help@shop.example""#));
        assert!(tracked.contains(r##"href="#top""##));
        let click = tracked
            .split(r#"href="https://w.example/l/click/"#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the web link goes through the click redirect");
        let verified = l.verify(LinkKind::Click, click).unwrap();
        assert_eq!(
            verified.url.as_deref(),
            Some("https://shop.example/cart?id=1&x=2"),
            "the destination is the decoded attribute value"
        );
        let pixel_at = tracked.find("https://w.example/l/open/").unwrap();
        assert!(pixel_at < tracked.find("</body>").unwrap());
    }

    #[test]
    fn a_fragment_without_body_gets_the_pixel_at_the_end() {
        let l = links(true, false);
        let mut content = BTreeMap::new();
        content.insert("html".to_owned(), "<p>Hi</p>".to_owned());
        let (out, _) = l.prepare(&target(), &content);
        assert!(out["html"].starts_with("<p>Hi</p><img src=\"https://w.example/l/open/"));
    }
}
