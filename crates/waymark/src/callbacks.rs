//! The endpoints that providers and customers reach without an API key: delivery
//! receipts (`POST /v1/channels/{name}/status`), unsubscribe links, the open pixel and
//! click redirects. Each proves itself instead: a provider's callback by its own
//! signature (checked by the channel), a link by the daemon's signed token.
//!
//! What they learn becomes an ordinary event on the customer, accepted through the inbox
//! like a `track` call: `message_delivered`, `message_opened`, `message_clicked`,
//! `message_bounced` (journeys and fatigue read them) and `unsubscribed` (which adds the
//! channel to the profile's `unsubscribed` trait). Each carries `channel`, `message_key`
//! (the message's idempotency key), `journey` and `step`. Its `messageId` is derived
//! from the message and what happened, so a provider retrying a callback, or a customer
//! opening a message twice, records it once.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::{Map, Value, json};
use waymark_channel::{ReceiptError, ReceiptStatus, StatusCallback, decode_form};
use waymark_store::NewEvent;

use crate::api::{ApiError, record_event};
use crate::daemon::{Daemon, Input};
use crate::links::{LinkKind, LinkTarget};

/// A transparent 1x1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// The event recording that `name` happened to `target`'s message.
fn message_event(
    daemon: &Daemon,
    name: &str,
    target: &LinkTarget,
    extra: Map<String, Value>,
) -> NewEvent {
    let mut properties = Map::new();
    properties.insert("channel".to_owned(), json!(target.channel));
    properties.insert("message_key".to_owned(), json!(target.message_key));
    properties.insert("journey".to_owned(), json!(target.journey));
    properties.insert("step".to_owned(), json!(target.step));
    properties.extend(extra);
    let mut message_id = format!("{name}:{}", target.message_key);
    if let Some(url) = &target.url {
        message_id.push(':');
        message_id.push_str(url);
    }
    NewEvent {
        customer: target.customer.clone(),
        name: name.to_owned(),
        at: daemon.clock.now(),
        properties,
        message_id: Some(message_id),
    }
}

/// `GET /v1/channels/{name}/status`: a provider checking that the callback URL is its
/// subscriber's; answered in plain text with what the channel says, or refused.
pub async fn channel_subscription(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<String, ApiError> {
    let Some(channel) = daemon.channels.get(&name) else {
        return Err(ApiError::not_found(format!("no channel `{name}`")));
    };
    let query = decode_form(query.as_deref().unwrap_or_default())
        .ok_or_else(|| ApiError::status(StatusCode::BAD_REQUEST, "malformed query string"))?;
    channel.verify_subscription(&query).ok_or_else(|| {
        tracing::warn!(channel = %name, "a subscription check was refused");
        ApiError::status(
            StatusCode::FORBIDDEN,
            format!("channel `{name}` does not confirm this subscription"),
        )
    })
}

/// `POST /v1/channels/{name}/status`: a provider's delivery receipts.
pub async fn channel_status(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Some(channel) = daemon.channels.get(&name) else {
        return Err(ApiError::not_found(format!("no channel `{name}`")));
    };
    let callback = StatusCallback {
        // Providers that sign the URL sign the one they called: the public address.
        url: format!(
            "{}{}",
            daemon.config.public_base(),
            uri.path_and_query().map_or("", |p| p.as_str())
        ),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        body: body.to_vec(),
    };
    let receipts = channel.receipts(&callback).map_err(|e| match e {
        ReceiptError::Unsupported => ApiError::not_found(format!(
            "channel `{name}` accepts no delivery receipts (its kind has none, or its callback secret is not configured)"
        )),
        ReceiptError::BadSignature => {
            tracing::warn!(channel = %name, "a status callback with a bad signature was refused");
            ApiError::status(StatusCode::UNAUTHORIZED, e.to_string())
        }
        ReceiptError::Malformed(_) => ApiError::status(StatusCode::BAD_REQUEST, e.to_string()),
    })?;
    let mut matched = 0;
    for receipt in &receipts {
        let Some(sent) = daemon
            .store
            .find_sent_message(
                &name,
                receipt.provider_id.as_deref(),
                receipt.address.as_deref(),
            )
            .await?
        else {
            tracing::info!(channel = %name, provider_id = ?receipt.provider_id, status = receipt.status.event_name(), "a receipt for no message sent here; ignored");
            continue;
        };
        matched += 1;
        let target = LinkTarget {
            channel: name.clone(),
            customer: sent.customer,
            message_key: sent.idempotency_key,
            journey: sent.journey,
            step: sent.step,
            url: None,
        };
        let mut extra = Map::new();
        if let Some(id) = &receipt.provider_id {
            extra.insert("provider_id".to_owned(), json!(id));
        }
        if let Some(detail) = &receipt.detail {
            extra.insert("detail".to_owned(), json!(detail));
        }
        let event = message_event(&daemon, receipt.status.event_name(), &target, extra);
        record_event(&daemon, event).await?;
        if let ReceiptStatus::Bounced { address_gone: true } = receipt.status {
            let input = Input::Unreachable {
                channel: name.clone(),
            };
            daemon.submit(&target.customer, input).await?;
        }
    }
    Ok(Json(
        json!({"success": true, "receipts": receipts.len(), "matched": matched}),
    ))
}

/// A small HTML page for the customer.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head><body style=\"font-family:sans-serif;max-width:32em;margin:4em auto\"><h1>{title}</h1>{body}</body></html>"
    );
    (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

fn invalid_link() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "This link is not valid",
        "<p>It may have been cut short when it was copied.</p>",
    )
}

fn verify(daemon: &Daemon, kind: LinkKind, token: &str) -> Option<LinkTarget> {
    daemon.links.as_ref()?.verify(kind, token)
}

/// `GET /l/unsubscribe/{token}`: asks first, because mail scanners follow links.
pub async fn unsubscribe_page(
    State(daemon): State<Arc<Daemon>>,
    Path(token): Path<String>,
) -> Response {
    let Some(target) = verify(&daemon, LinkKind::Unsubscribe, &token) else {
        return invalid_link();
    };
    page(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<p>Stop receiving {} messages from us?</p><form method=\"post\"><button type=\"submit\">Unsubscribe</button></form>",
            escape(&target.channel)
        ),
    )
}

/// `POST /l/unsubscribe/{token}`: the page's button, or a mail client's RFC 8058
/// one-click request.
pub async fn unsubscribe(State(daemon): State<Arc<Daemon>>, Path(token): Path<String>) -> Response {
    let Some(target) = verify(&daemon, LinkKind::Unsubscribe, &token) else {
        return invalid_link();
    };
    let event = message_event(&daemon, "unsubscribed", &target, Map::new());
    match record_event(&daemon, event).await {
        Ok(_) => page(
            StatusCode::OK,
            "You are unsubscribed",
            &format!(
                "<p>You will get no more {} messages from us.</p>",
                escape(&target.channel)
            ),
        ),
        Err(_) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            "<p>We could not record your request just now.</p>",
        ),
    }
}

/// Records a link event without holding up the customer: a failure is logged.
async fn record_quietly(daemon: &Arc<Daemon>, event: NewEvent) {
    let name = event.name.clone();
    if let Err(e) = record_event(daemon, event).await {
        tracing::warn!(event = %name, error = ?e, "cannot record a tracked link");
    }
}

/// `GET /l/open/{token}`: the pixel.
pub async fn open(State(daemon): State<Arc<Daemon>>, Path(token): Path<String>) -> Response {
    if let Some(target) = verify(&daemon, LinkKind::Open, &token) {
        record_quietly(
            &daemon,
            message_event(&daemon, "message_opened", &target, Map::new()),
        )
        .await;
    }
    (
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PIXEL,
    )
        .into_response()
}

/// `GET /l/click/{token}`: records the click and sends the customer on.
pub async fn click(State(daemon): State<Arc<Daemon>>, Path(token): Path<String>) -> Response {
    let Some(target) = verify(&daemon, LinkKind::Click, &token) else {
        return invalid_link();
    };
    let url = target.url.clone().unwrap_or_default();
    let mut extra = Map::new();
    extra.insert("url".to_owned(), json!(url));
    record_quietly(
        &daemon,
        message_event(&daemon, "message_clicked", &target, extra),
    )
    .await;
    Redirect::to(&url).into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
