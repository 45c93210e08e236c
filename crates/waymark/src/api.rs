//! The HTTP API: Segment-compatible ingest, enrollment, profiles, journeys, reload,
//! health and metrics.
//!
//! Bodies are read as JSON values and checked field by field (rather than through
//! `serde` derives) so that every refusal names the field it is about, including inside a
//! batch (`batch[3].event`). Segment's envelope fields are accepted: `originalTimestamp`
//! and `sentAt` date an event without `timestamp`, as Segment dates it; the ones Waymark
//! has no use for (`context`, `integrations`, ...) are ignored. Any other unknown field is
//! an error, so typos don't pass silently. Every 4xx, including axum's own refusals, is
//! the JSON of [`ApiError`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::path::ErrorKind as PathErrorKind;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use waymark_scheduler::{Effect, EnrollError};
use waymark_store::{Error as StoreError, Ingested, NewEvent};

use crate::callbacks;
use crate::daemon::{ApplyError, Daemon, Input};

/// The largest body accepted: Segment's own batch limit is 500 KB.
pub const MAX_BODY: usize = 512 * 1024;

/// How many events and messages `GET /v1/profiles/{id}` shows.
const PROFILE_RECENT: u32 = 50;

/// Segment envelope fields accepted on every call and ignored.
const ENVELOPE: &[&str] = &[
    "type",
    "context",
    "integrations",
    "sentAt",
    "originalTimestamp",
    "receivedAt",
    "channel",
    "version",
    "_metadata",
    "writeKey",
];

/// Every refusal: a status and `{"error": "...", "field": "..."}`. Internal errors are
/// logged in full and answered with a generic message: they may name tables or paths.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
    /// More to say, such as a reload's diagnostics; boxed to keep `Result`s small.
    extra: Option<Box<(&'static str, Value)>>,
}

impl ApiError {
    /// A refusal with `status`.
    pub fn status(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError::new(status, error)
    }

    fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            field: None,
            extra: None,
        }
    }

    /// A 400 about one field.
    pub fn field(field: impl Into<String>, error: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, error)
        }
    }

    pub fn not_found(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, error)
    }

    fn internal(error: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(%error, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the daemon log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.error});
        if let Some(field) = self.field {
            body["field"] = Value::String(field);
        }
        if let Some((key, value)) = self.extra.map(|b| *b) {
            body[key] = value;
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                tracing::error!(error = %e, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database unavailable; retry later",
                )
            }
            e => ApiError::internal(&e),
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Enroll(EnrollError::UnknownJourney(id)) => {
                ApiError::not_found(format!("no journey `{id}`"))
            }
            ApplyError::Enroll(e @ EnrollError::NotApiTriggered(_)) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            ApplyError::Store(e) => e.into(),
            ApplyError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting down; retry later",
            ),
        }
    }
}

/// A JSON object body, refused with an [`ApiError`] when it is not one.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the body is larger than {MAX_BODY} bytes"),
                    )
                } else {
                    ApiError::new(e.status(), e.body_text())
                }
            })?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => match nul_at(&map) {
                // Neither database stores U+0000 in text; refused here, it is refused for
                // every backend alike and before anything is written.
                Some(field) => Err(ApiError::field(
                    field,
                    "must not contain the NUL character (U+0000)",
                )),
                None => Ok(JsonObject(map)),
            },
            Ok(_) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "the body must be a JSON object",
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("malformed JSON: {e}"),
            )),
        }
    }
}

/// One path parameter (`{id}`), refused with an [`ApiError`] naming it: an id that is
/// not UTF-8 once percent-decoded (`/v1/profiles/%FF`) is a 400 about `id`.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParam(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let status = e.status();
                let message = e.body_text();
                match e.into_kind() {
                    PathErrorKind::InvalidUtf8InPathParam { key } => Err(ApiError {
                        field: Some(key),
                        ..ApiError::new(status, "must be UTF-8 once percent-decoded")
                    }),
                    _ => Err(ApiError::new(status, message)),
                }
            }
            Err(e) => Err(ApiError::new(e.status(), e.body_text())),
        }
    }
}

/// Gives a 4xx that is neither JSON nor a page for people (the link pages) the shape of
/// [`ApiError`]: axum's own refusals are plain text, and a client should parse one shape.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !status.is_client_error()
        || content_type.starts_with("application/json")
        || content_type.starts_with("text/html")
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    // axum's refusals are a line of text; a longer body is cut rather than kept whole.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let error = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("refused")
            .to_lowercase()
    } else {
        text
    };
    let mut json = ApiError::new(status, error).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}

/// The path (`properties.note`, `batch[2].userId`) of the first key or string in `map`
/// holding U+0000.
fn nul_at(map: &Map<String, Value>) -> Option<String> {
    fn walk(value: &Value, path: &str) -> Option<String> {
        match value {
            Value::String(s) if s.contains('\0') => Some(path.to_owned()),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| walk(item, &format!("{path}[{i}]"))),
            Value::Object(map) => in_object(map, &format!("{path}.")),
            _ => None,
        }
    }
    fn in_object(map: &Map<String, Value>, prefix: &str) -> Option<String> {
        map.iter().find_map(|(key, value)| {
            let path = format!("{prefix}{key}");
            if key.contains('\0') {
                Some(path)
            } else {
                walk(value, &path)
            }
        })
    }
    in_object(map, "")
}

/// Reads the fields of one object, naming them (with `prefix`) in errors.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>, prefix: impl Into<String>) -> Fields<'a> {
        Fields {
            map,
            prefix: prefix.into(),
        }
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn allow(&self, keys: &[&str]) -> Result<(), ApiError> {
        for key in self.map.keys() {
            if !keys.contains(&key.as_str()) && !ENVELOPE.contains(&key.as_str()) {
                return Err(ApiError::field(
                    self.name(key),
                    format!("unknown field `{key}`; expected one of {}", keys.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// A string (or a number, as Segment allows for ids); `null` counts as absent.
    fn id(&self, key: &str) -> Result<Option<String>, ApiError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(ApiError::field(self.name(key), "must not be empty"))
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(ApiError::field(self.name(key), "must be a string")),
        }
    }

    fn required(&self, key: &str) -> Result<String, ApiError> {
        self.id(key)?
            .ok_or_else(|| ApiError::field(self.name(key), format!("`{key}` is required")))
    }

    /// A non-empty string: names are never numbers.
    fn name_field(&self, key: &str) -> Result<String, ApiError> {
        match self.map.get(key) {
            Some(Value::String(_)) => self.required(key),
            None | Some(Value::Null) => self.required(key),
            Some(_) => Err(ApiError::field(self.name(key), "must be a string")),
        }
    }

    fn object(&self, key: &str) -> Result<Map<String, Value>, ApiError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(map)) => Ok(map.clone()),
            Some(_) => Err(ApiError::field(self.name(key), "must be an object")),
        }
    }

    fn time(&self, key: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| {
                    ApiError::field(self.name(key), format!("not an ISO 8601 timestamp: {e}"))
                }),
            Some(_) => Err(ApiError::field(
                self.name(key),
                "must be an ISO 8601 string",
            )),
        }
    }

    /// When the event happened, as Segment reckons it: `timestamp` as given; else
    /// `originalTimestamp` (the sender's clock) corrected for that clock's skew by `sentAt`
    /// (the item's, else the batch's): `received - (sentAt - originalTimestamp)`; else
    /// `originalTimestamp` alone; else `None`, for the time it was received.
    fn happened(
        &self,
        received: DateTime<Utc>,
        batch_sent_at: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>, ApiError> {
        let timestamp = self.time("timestamp")?;
        let original = self.time("originalTimestamp")?;
        let sent_at = self.time("sentAt")?.or(batch_sent_at);
        match (timestamp, original, sent_at) {
            (Some(timestamp), _, _) => Ok(Some(timestamp)),
            (None, Some(original), Some(sent_at)) => received
                .checked_sub_signed(sent_at - original)
                .map(Some)
                .ok_or_else(|| {
                    ApiError::field(
                        self.name("originalTimestamp"),
                        "too far from `sentAt` to correct for clock skew",
                    )
                }),
            (None, original, _) => Ok(original),
        }
    }

    /// `userId`, else `anonymousId`: one is required.
    fn customer(&self) -> Result<(Option<String>, Option<String>), ApiError> {
        let user = self.id("userId")?;
        let anonymous = self.id("anonymousId")?;
        if user.is_none() && anonymous.is_none() {
            return Err(ApiError::field(
                self.name("userId"),
                "`userId` or `anonymousId` is required",
            ));
        }
        Ok((user, anonymous))
    }
}

/// One validated call, as in a batch.
enum Call {
    Track(NewEvent),
    Identify {
        user: Option<String>,
        anonymous: Option<String>,
        traits: Map<String, Value>,
    },
    Alias {
        previous: String,
        user: String,
    },
    /// Segment's `group`: accounts are not Waymark's concern; accepted and left aside.
    Group,
}

/// Segment's `page` and `screen` calls, as the events journeys see: `page_viewed` and
/// `screen_viewed`, with the page's `name` and `category` among the properties.
fn parse_view(
    f: &Fields<'_>,
    event: &str,
    now: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
) -> Result<Call, ApiError> {
    f.allow(&[
        "userId",
        "anonymousId",
        "name",
        "category",
        "properties",
        "timestamp",
        "messageId",
    ])?;
    let (user, anonymous) = f.customer()?;
    let mut properties = f.object("properties")?;
    for key in ["name", "category"] {
        match f.map.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => {
                properties.insert(key.to_owned(), Value::String(text.clone()));
            }
            Some(_) => return Err(ApiError::field(f.name(key), "must be a string")),
        }
    }
    Ok(Call::Track(NewEvent {
        customer: user.or(anonymous).unwrap_or_default(),
        name: event.to_owned(),
        at: f.happened(now, sent_at)?.unwrap_or(now),
        properties,
        message_id: f.id("messageId")?,
    }))
}

fn parse_group(f: &Fields<'_>, now: DateTime<Utc>) -> Result<Call, ApiError> {
    f.allow(&[
        "userId",
        "anonymousId",
        "groupId",
        "traits",
        "timestamp",
        "messageId",
    ])?;
    f.customer()?;
    f.required("groupId")?;
    f.object("traits")?;
    f.happened(now, None)?;
    Ok(Call::Group)
}

/// A `track` call received at `now`; `sent_at` is a batch's own `sentAt`.
fn parse_track(
    f: &Fields<'_>,
    now: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
) -> Result<Call, ApiError> {
    f.allow(&[
        "userId",
        "anonymousId",
        "event",
        "properties",
        "timestamp",
        "messageId",
    ])?;
    let (user, anonymous) = f.customer()?;
    Ok(Call::Track(NewEvent {
        customer: user.or(anonymous).unwrap_or_default(),
        name: f.name_field("event")?,
        at: f.happened(now, sent_at)?.unwrap_or(now),
        properties: f.object("properties")?,
        message_id: f.id("messageId")?,
    }))
}

fn parse_identify(f: &Fields<'_>, now: DateTime<Utc>) -> Result<Call, ApiError> {
    f.allow(&["userId", "anonymousId", "traits", "timestamp", "messageId"])?;
    f.happened(now, None)?;
    let (user, anonymous) = f.customer()?;
    Ok(Call::Identify {
        user,
        anonymous,
        traits: f.object("traits")?,
    })
}

fn parse_alias(f: &Fields<'_>, now: DateTime<Utc>) -> Result<Call, ApiError> {
    f.allow(&["previousId", "userId", "timestamp", "messageId"])?;
    f.happened(now, None)?;
    Ok(Call::Alias {
        previous: f.required("previousId")?,
        user: f.required("userId")?,
    })
}

async fn apply(daemon: &Arc<Daemon>, call: Call) -> Result<Value, ApiError> {
    match call {
        Call::Track(event) => match daemon.ingest(event).await? {
            Ingested::Duplicate => Ok(json!({"success": true, "duplicate": true})),
            Ingested::Accepted(_) => Ok(json!({"success": true})),
        },
        Call::Identify {
            user,
            anonymous,
            traits,
        } => {
            let id = match (user, anonymous) {
                (Some(user), Some(anonymous)) => {
                    daemon
                        .call(
                            &user,
                            Input::Alias {
                                previous: anonymous,
                            },
                        )
                        .await?;
                    user
                }
                (user, anonymous) => user.or(anonymous).unwrap_or_default(),
            };
            daemon.call(&id, Input::Identify { traits }).await?;
            Ok(json!({"success": true}))
        }
        Call::Alias { previous, user } => {
            daemon.call(&user, Input::Alias { previous }).await?;
            Ok(json!({"success": true}))
        }
        Call::Group => Ok(json!({"success": true, "ignored": true})),
    }
}

/// Accepts an event the daemon learned itself (a receipt, a tracked link), exactly as a
/// `track` call would.
///
/// # Errors
/// The store could not take it.
pub(crate) async fn record_event(daemon: &Arc<Daemon>, event: NewEvent) -> Result<Value, ApiError> {
    apply(daemon, Call::Track(event)).await
}

/// The Segment call types, each also a route of its own (`POST /v1/track`, ...).
const CALLS: [&str; 6] = ["track", "identify", "alias", "page", "screen", "group"];

/// Parses a call of Segment type `kind` received at `now`; `sent_at` is a batch's own.
fn parse_call(
    kind: &str,
    f: &Fields<'_>,
    now: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
) -> Result<Call, ApiError> {
    match kind {
        "track" => parse_track(f, now, sent_at),
        "identify" => parse_identify(f, now),
        "alias" => parse_alias(f, now),
        "page" => parse_view(f, "page_viewed", now, sent_at),
        "screen" => parse_view(f, "screen_viewed", now, sent_at),
        "group" => parse_group(f, now),
        other => Err(ApiError::field(
            f.name("type"),
            format!(
                "unsupported type `{other}`; expected one of {}",
                CALLS.join(", ")
            ),
        )),
    }
}

/// `POST /v1/{kind}`: one call.
async fn single_call(
    kind: &'static str,
    daemon: Arc<Daemon>,
    body: Map<String, Value>,
) -> Result<Json<Value>, ApiError> {
    let call = parse_call(kind, &Fields::new(&body, ""), daemon.clock.now(), None)?;
    Ok(Json(apply(&daemon, call).await?))
}

/// Every item is validated before any is applied, so a bad item refuses the whole batch
/// rather than leaving half of it applied.
async fn batch(
    State(daemon): State<Arc<Daemon>>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let f = Fields::new(&body, "");
    f.allow(&["batch", "timestamp", "messageId"])?;
    let Some(Value::Array(items)) = body.get("batch") else {
        return Err(ApiError::field("batch", "`batch` must be an array"));
    };
    let now = daemon.clock.now();
    // Segment's libraries stamp the batch, not each item, with `sentAt`.
    let sent_at = f.time("sentAt")?;
    let mut calls = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("batch[{i}].");
        let Value::Object(map) = item else {
            return Err(ApiError::field(format!("batch[{i}]"), "must be an object"));
        };
        let f = Fields::new(map, prefix);
        calls.push(match map.get("type").and_then(Value::as_str) {
            Some(kind) => parse_call(kind, &f, now, sent_at)?,
            None => return Err(ApiError::field(f.name("type"), "`type` is required")),
        });
    }
    for call in calls {
        apply(&daemon, call).await?;
    }
    Ok(Json(json!({"success": true})))
}

async fn enroll(
    State(daemon): State<Arc<Daemon>>,
    PathParam(journey): PathParam,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let f = Fields::new(&body, "");
    f.allow(&["userId", "properties", "messageId"])?;
    let user = f.required("userId")?;
    let properties = f.object("properties")?;
    let message_id = f.id("messageId")?;
    let applied = daemon
        .call(
            &user,
            Input::Enroll {
                journey,
                properties,
                message_id,
            },
        )
        .await?;
    if applied.repeated {
        return Ok(Json(json!({
            "enrolled": false,
            "duplicate": true,
            "customer": applied.customer,
        })));
    }
    let entered: Vec<&str> = applied
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Entered { enrollment, .. } => Some(enrollment.as_str()),
            _ => None,
        })
        .collect();
    Ok(Json(json!({
        "enrolled": !entered.is_empty(),
        "enrollment": entered.first(),
        "customer": applied.customer,
    })))
}

async fn profile(
    State(daemon): State<Arc<Daemon>>,
    PathParam(id): PathParam,
) -> Result<Json<Value>, ApiError> {
    let customer = daemon.store.load_customer(&id).await?;
    let events = daemon.store.recent_events(&id, PROFILE_RECENT).await?;
    if customer.revision == 0 && events.is_empty() {
        return Err(ApiError::not_found(format!("no profile `{id}`")));
    }
    let messages = daemon.store.recent_messages(&id, PROFILE_RECENT).await?;
    let state = &customer.state;
    let enrollments: Vec<Value> = daemon.with_engine(|engine| {
        state
            .enrollments
            .iter()
            .map(|e| {
                let step = engine.journey_of(e).map(|j| j.step(e.step).id.clone());
                json!({
                    "id": e.id,
                    "journey": e.journey,
                    "version": e.version,
                    "key": e.key,
                    "step": step,
                    "status": if e.is_active() { "active" } else { "ended" },
                    "outcome": e.outcome().map(|o| o.as_str()),
                    "wake_at": e.wake,
                    "entered_at": e.entered_at,
                    "variant": e.variant,
                    "control": e.control,
                })
            })
            .collect()
    });
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "event": e.event.name,
                "timestamp": e.event.at,
                "properties": e.event.properties,
                "messageId": e.message_id,
                "handled": e.processed,
            })
        })
        .collect();
    Ok(Json(json!({
        "id": state.profile.id,
        "traits": state.profile.traits,
        "enrollments": enrollments,
        "events": events,
        "messages": messages,
    })))
}

fn trigger_kind(trigger: &waymark_journey::Trigger) -> &'static str {
    match trigger {
        waymark_journey::Trigger::Event { .. } => "event",
        waymark_journey::Trigger::Segment { .. } => "segment",
        waymark_journey::Trigger::Schedule { .. } => "schedule",
        waymark_journey::Trigger::Api => "api",
    }
}

async fn journeys(State(daemon): State<Arc<Daemon>>) -> Result<Json<Value>, ApiError> {
    let list = daemon.with_engine(|engine| engine.workspace().journeys.clone());
    let mut out = Vec::with_capacity(list.len());
    for journey in list {
        let counts = daemon.store.journey_counts(&journey.id).await?;
        out.push(json!({
            "id": journey.id,
            "name": journey.name,
            "version": journey.version,
            "trigger": trigger_kind(&journey.trigger),
            "active": counts.active.values().sum::<u64>(),
            "outcomes": counts.outcomes,
        }));
    }
    Ok(Json(json!({"journeys": out})))
}

/// `GET /v1/journeys/{id}`: the journey as written, its versions, customers per step,
/// outcomes, and conversion per variant, with the holdout (control) group apart and, in a
/// journey without a split, the treated group as a whole to compare it with.
async fn journey(
    State(daemon): State<Arc<Daemon>>,
    PathParam(id): PathParam,
) -> Result<Json<Value>, ApiError> {
    // A journey whose file was removed is still shown while the daemon knows it: its
    // customers run on until they leave.
    let Some((journey, root, loaded)) = daemon.with_engine(|engine| {
        let workspace = engine.workspace();
        engine.journey_version(&id).map(|j| {
            let loaded = workspace.journey(&id).is_some();
            (j.clone(), workspace.root.clone(), loaded)
        })
    }) else {
        return Err(ApiError::not_found(format!("no journey `{id}`")));
    };
    let counts = daemon.store.journey_counts(&id).await?;
    let steps: Vec<Value> = journey
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let active: u64 = counts
                .active
                .iter()
                .filter(|((version, idx), _)| *version == journey.version && *idx == i)
                .map(|(_, n)| n)
                .sum();
            json!({"id": step.id, "kind": step.kind.name(), "stage": step.stage, "active": active})
        })
        .collect();
    let versions = versions(
        &journey.version,
        &daemon.store.journey_versions(&id).await?,
        &counts,
    );
    let mut by_variant: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for ((variant, status), n) in &counts.variants {
        by_variant
            .entry(variant)
            .or_default()
            .push((status.as_str(), *n));
    }
    let variants: Map<String, Value> = by_variant
        .into_iter()
        .map(|(variant, statuses)| (variant.to_owned(), group(statuses)))
        .collect();
    let mut holdout = group(counts.control.iter().map(|(s, n)| (s.as_str(), *n)));
    holdout["percent"] = json!(journey.holdout);
    let (file, definition) = definition(&daemon, &journey, &root).await;
    let mut answer = json!({
        "id": journey.id,
        "name": journey.name,
        "description": journey.description,
        "version": journey.version,
        "loaded": loaded,
        "file": file,
        "definition": definition,
        "versions": versions,
        "trigger": trigger_kind(&journey.trigger),
        "steps": steps,
        "outcomes": counts.outcomes,
        "variants": variants,
        "holdout": holdout,
    });
    // Without a split, the treated group as a whole is what the holdout compares with.
    let split = journey
        .steps
        .iter()
        .any(|step| matches!(step.kind, waymark_journey::StepKind::Split { .. }));
    if !split {
        answer["treated"] = group(counts.treated.iter().map(|(s, n)| (s.as_str(), *n)));
    }
    Ok(Json(answer))
}

/// Every version of the journey: the current one first, then the others recorded, the
/// latest loaded first, then any that customers are on but that were never recorded
/// (`loaded_at` null); each with its active customers.
fn versions(
    current: &str,
    recorded: &[waymark_store::JourneyVersion],
    counts: &waymark_store::JourneyCounts,
) -> Vec<Value> {
    let mut names: Vec<&str> = vec![current];
    names.extend(recorded.iter().map(|v| v.version.as_str()));
    names.extend(counts.active.keys().map(|(v, _)| v.as_str()));
    let mut seen = HashSet::new();
    names
        .into_iter()
        .filter(|name| seen.insert(*name))
        .map(|name| {
            let loaded_at = recorded
                .iter()
                .find(|v| v.version == name)
                .map(|v| v.loaded_at);
            json!({
                "version": name,
                "current": name == current,
                "loaded_at": loaded_at,
                "active": active_on(counts, name),
            })
        })
        .collect()
}

/// `entered`, `converted` and `conversion` of a group of enrollments, from its counts by
/// status (`active` or an outcome).
fn group<'a>(by_status: impl IntoIterator<Item = (&'a str, u64)>) -> Value {
    let (mut entered, mut converted) = (0, 0);
    for (status, n) in by_status {
        entered += n;
        if status == "converted" {
            converted += n;
        }
    }
    json!({
        "entered": entered,
        "converted": converted,
        "conversion": conversion(converted, entered),
    })
}

fn active_on(counts: &waymark_store::JourneyCounts, version: &str) -> u64 {
    counts
        .active
        .iter()
        .filter(|((v, _), _)| v == version)
        .map(|(_, n)| n)
        .sum()
}

fn conversion(converted: u64, entered: u64) -> f64 {
    if entered == 0 {
        0.0
    } else {
        converted as f64 / entered as f64
    }
}

/// The journey's file (relative to the workspace) and its content as JSON: the journey as
/// its author wrote it, in the vocabulary of the journey language, which a dashboard can
/// draw without a YAML parser (the parsed model holds internal indices instead of step
/// names). Read from the files recorded for the running version, so an edit not yet
/// reloaded does not show; from disk when none are recorded.
async fn definition(
    daemon: &Arc<Daemon>,
    journey: &waymark_journey::Journey,
    root: &std::path::Path,
) -> (String, Value) {
    let file = journey
        .source
        .strip_prefix(root)
        .unwrap_or(&journey.source)
        .to_string_lossy()
        .into_owned();
    let recorded = match daemon
        .store
        .journey_version_files(&journey.id, &journey.version)
        .await
    {
        Ok(files) => files.and_then(|mut files| files.remove(&file)),
        Err(e) => {
            tracing::warn!(journey = %journey.id, error = %e, "cannot read the recorded journey version");
            None
        }
    };
    let text = match recorded {
        Some(text) => Some(text),
        None => {
            let source = journey.source.clone();
            tokio::task::spawn_blocking(move || std::fs::read_to_string(source).ok())
                .await
                .ok()
                .flatten()
        }
    };
    let definition = text
        .and_then(|text| waymark_journey::yaml_to_json(&text).ok())
        .unwrap_or(Value::Null);
    (file, definition)
}

async fn reload(State(daemon): State<Arc<Daemon>>) -> Result<Json<Value>, ApiError> {
    match daemon.reload().await {
        Ok(n) => Ok(Json(json!({"success": true, "journeys": n}))),
        Err(diagnostics) => {
            let rendered: Vec<String> = diagnostics.iter().map(|d| d.render()).collect();
            Err(ApiError {
                extra: Some(Box::new(("diagnostics", json!(rendered)))),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "the journeys have errors; the running set is kept",
                )
            })
        }
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(daemon): State<Arc<Daemon>>) -> Response {
    let depths = daemon.store.depths().await.ok();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        daemon.metrics.render(depths),
    )
        .into_response()
}

/// API keys, when configured: `Authorization: Bearer KEY`, or HTTP Basic with the key as
/// the user name and no password, as Segment's libraries send their write key.
async fn authenticate(State(daemon): State<Arc<Daemon>>, request: Request, next: Next) -> Response {
    let keys = &daemon.config.api_keys;
    if keys.is_empty() {
        return next.run(request).await;
    }
    let credentials = request.headers().get(header::AUTHORIZATION).map(api_key);
    let refusal = match credentials {
        Some(Ok(key))
            if keys
                .iter()
                .any(|k| waymark_channel::secrets_match(k.as_bytes(), key.as_bytes())) =>
        {
            return next.run(request).await;
        }
        Some(Ok(_)) => "unknown API key".to_owned(),
        Some(Err(why)) => why,
        None => "an API key is required: `Authorization: Bearer KEY`, or HTTP Basic with the key as the user name and an empty password".to_owned(),
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, refusal).into_response();
    // RFC 7235: a 401 names the schemes that would do.
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(r#"Bearer realm="waymark", Basic realm="waymark""#),
    );
    response
}

/// The API key an `Authorization` header carries. Schemes are case-insensitive (RFC 7235).
fn api_key(value: &header::HeaderValue) -> Result<String, String> {
    let text = value
        .to_str()
        .map_err(|_| "the `Authorization` header is not ASCII".to_owned())?;
    let (scheme, credentials) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(credentials.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let malformed = || "malformed Basic credentials: expected base64 of `KEY:`".to_owned();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .map_err(|_| malformed())?;
        let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
        return match decoded.split_once(':') {
            Some((key, "")) => Ok(key.to_owned()),
            Some(_) => Err(
                "Basic credentials carry the API key as the user name and an empty password"
                    .to_owned(),
            ),
            None => Err(malformed()),
        };
    }
    Err(format!(
        "unsupported authorization scheme `{scheme}`: use `Bearer KEY` or HTTP Basic"
    ))
}

/// The API on a daemon. Calls need an API key (when configured) except `/healthz`, for
/// load balancers, and the [`callbacks`] that providers and customers reach, which prove
/// themselves by signatures.
pub fn router(daemon: Arc<Daemon>) -> Router {
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/v1/channels/{name}/status",
            post(callbacks::channel_status).get(callbacks::channel_subscription),
        )
        .route(
            "/l/unsubscribe/{token}",
            get(callbacks::unsubscribe_page).post(callbacks::unsubscribe),
        )
        .route("/l/open/{token}", get(callbacks::open))
        .route("/l/click/{token}", get(callbacks::click));
    let mut guarded = Router::new();
    for kind in CALLS {
        guarded = guarded.route(
            &format!("/v1/{kind}"),
            post(
                move |State(daemon): State<Arc<Daemon>>, JsonObject(body): JsonObject| {
                    single_call(kind, daemon, body)
                },
            ),
        );
    }
    guarded
        .route("/v1/batch", post(batch))
        .route("/v1/journeys", get(journeys))
        .route("/v1/journeys/{id}", get(journey))
        .route("/v1/journeys/{id}/enroll", post(enroll))
        .route("/v1/profiles/{id}", get(profile))
        .route("/v1/reload", post(reload))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(daemon.clone(), authenticate))
        .merge(open)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::map_response(json_errors))
        .with_state(daemon)
}
