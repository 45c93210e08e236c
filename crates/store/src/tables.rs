//! The tables' rows, read and bound the same way by every backend.
//!
//! The backends differ in how they lock, dedup and claim, not in which value goes in which
//! column: the tables have the same columns in both, so decoding a row into the engine's
//! types, binding the engine's types, and every statement both dialects read alike (with
//! `$N` placeholders, which SQLite takes too) are written once here, over sqlx's generic
//! row and query types. What stays in each backend is what differs: locking, dedup, the
//! outbox claim, and reads whose SQL each dialect indexes its own way.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::{ColumnIndex, Database, Decode, Encode, Row, Type};
use waymark_journey::StepIdx;
use waymark_scheduler::{
    CustomerState, Effect, Enrollment, Event, SendOutcome, SentMessage, SkipReason, Status,
};

use crate::codec::{
    bools, count, instant, json_text, nanos, object, send_outcome, status, status_text, strings,
};
use crate::{
    Customer, DEDUP_WINDOW, Depths, DueTimer, JourneyCounts, JourneyVersion, LoggedMessage,
    NewEvent, OutboxMessage, Result, SentRef, StoredEvent,
};

/// A result row of either backend, read by column name. Flags are `BOOLEAN` in PostgreSQL
/// and `INTEGER` 0/1 in SQLite; sqlx decodes both as `bool`.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<String>;
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    fn int(&self, column: &str) -> Result<i64>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>>;
    fn flag(&self, column: &str) -> Result<bool>;
}

impl<R> Columns for R
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &str) -> Result<String> {
        Ok(self.try_get(column)?)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        Ok(self.try_get(column)?)
    }

    fn int(&self, column: &str) -> Result<i64> {
        Ok(self.try_get(column)?)
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>> {
        Ok(self.try_get(column)?)
    }

    fn flag(&self, column: &str) -> Result<bool> {
        Ok(self.try_get(column)?)
    }
}

/// A query of either backend, bound with the value types the tables are made of.
pub(crate) trait Params: Sized {
    fn text(self, value: &str) -> Self;
    fn opt_text(self, value: Option<&str>) -> Self;
    fn int(self, value: i64) -> Self;
    fn opt_int(self, value: Option<i64>) -> Self;
    fn flag(self, value: bool) -> Self;
}

impl<DB> Params for Query<'_, DB, <DB as Database>::Arguments>
where
    DB: Database,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    for<'t> bool: Encode<'t, DB> + Type<DB>,
{
    fn text(self, value: &str) -> Self {
        self.bind(value)
    }

    fn opt_text(self, value: Option<&str>) -> Self {
        self.bind(value)
    }

    fn int(self, value: i64) -> Self {
        self.bind(value)
    }

    fn opt_int(self, value: Option<i64>) -> Self {
        self.bind(value)
    }

    fn flag(self, value: bool) -> Self {
        self.bind(value)
    }
}

/// A count or position as a column value (they never come near `i64::MAX`).
fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// A customer from their rows: the `profiles` row (traits, segments, enrollment_seq,
/// revision), their handled events and sent messages (`at`, `channel`) oldest first, and
/// their enrollments in `ord` order.
pub(crate) fn customer<R: Columns>(
    id: String,
    profile: &R,
    events: &[R],
    sent: &[R],
    enrollments: &[R],
) -> Result<Customer> {
    let mut state = CustomerState::new(id);
    let p = &mut state.profile;
    p.traits = object(&profile.text("traits")?, "profiles.traits")?;
    p.segments = bools(&profile.text("segments")?, "profiles.segments")?;
    p.enrollment_seq = count(profile.int("enrollment_seq")?);
    let log = Arc::make_mut(&mut p.history);
    for row in events {
        log.push(stored_event(row)?.event);
    }
    for row in sent {
        p.messages.push(SentMessage {
            at: instant(row.int("at")?),
            channel: row.text("channel")?,
        });
    }
    state.enrollments = enrollments.iter().map(enrollment).collect::<Result<_>>()?;
    Ok(Customer {
        state,
        revision: profile.int("revision")?,
    })
}

pub(crate) fn enrollment(row: &impl Columns) -> Result<Enrollment> {
    let corrupt = |column: &str| crate::Error::Corrupt(format!("enrollments.{column}"));
    Ok(Enrollment {
        id: row.text("id")?,
        journey: row.text("journey")?,
        version: row.text("version")?,
        key: row.opt_text("key")?,
        step: StepIdx(usize::try_from(row.int("step")?).map_err(|_| corrupt("step"))?),
        status: status(&row.text("status")?, row.opt_int("ended_at")?)?,
        wake: row.opt_int("wake_at")?.map(instant),
        trigger: object(&row.text("trigger_data")?, "enrollments.trigger_data")?,
        event: object(&row.text("event_data")?, "enrollments.event_data")?,
        variant: row.opt_text("variant")?,
        control: row.flag("control")?,
        entered_at: instant(row.int("entered_at")?),
        sends: u32::try_from(row.int("sends")?).map_err(|_| corrupt("sends"))?,
    })
}

/// A statement as sqlx builds it for backend `DB`.
pub(crate) type Statement<DB> = Query<'static, DB, <DB as Database>::Arguments>;

/// Inserts or updates one of `customer`'s enrollments, at position `ord` in their list.
/// Plain SQL both backends run: SQLite takes `$N` placeholders too.
pub(crate) fn save_enrollment<DB: Database>(
    customer: &str,
    ord: usize,
    e: &Enrollment,
) -> Statement<DB>
where
    Statement<DB>: Params,
{
    let ended_at = match e.status {
        Status::Ended { at, .. } => Some(nanos(at)),
        Status::Active => None,
    };
    sqlx::query(
        "INSERT INTO enrollments (id, customer, ord, journey, version, key, step, status, wake_at,
             trigger_data, event_data, variant, control, entered_at, ended_at, sends)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (id) DO UPDATE SET customer = excluded.customer, ord = excluded.ord,
             step = excluded.step, status = excluded.status, wake_at = excluded.wake_at,
             event_data = excluded.event_data, variant = excluded.variant,
             ended_at = excluded.ended_at, sends = excluded.sends",
    )
    .text(&e.id)
    .text(customer)
    .int(int(ord))
    .text(&e.journey)
    .text(&e.version)
    .opt_text(e.key.as_deref())
    .int(int(e.step.0))
    .text(status_text(e.status))
    .opt_int(e.wake.map(nanos))
    .text(&json_text(&e.trigger))
    .text(&json_text(&e.event))
    .opt_text(e.variant.as_deref())
    .flag(e.control)
    .int(nanos(e.entered_at))
    .opt_int(ended_at)
    .int(i64::from(e.sends))
}

/// What records an effect: for a message, its message-log row and, when it is to be
/// handed to a channel, its outbox row (both kept as first written if already there).
/// Other effects leave no rows of their own. `claim_until` is [`crate::Commit::claim_until`].
pub(crate) fn record_effect<DB: Database>(
    effect: &Effect,
    claim_until: Option<DateTime<Utc>>,
) -> Vec<Statement<DB>>
where
    Statement<DB>: Params,
{
    let Effect::Message(m) = effect else {
        return Vec::new();
    };
    let (outcome, reason) = send_outcome(m.outcome);
    let logged = sqlx::query(
        "INSERT INTO message_log (idempotency_key, customer, enrollment, journey, step, template,
             channel, variant, transactional, outcome, reason, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .text(&m.idempotency_key)
    .text(&m.customer)
    .text(&m.enrollment)
    .text(&m.journey)
    .text(&m.step)
    .text(&m.template)
    .opt_text(m.channel.as_deref())
    .opt_text(m.variant.as_deref())
    .flag(m.transactional)
    .text(outcome)
    .opt_text(reason)
    .int(nanos(m.at));
    let (SendOutcome::Sent, Some(channel)) = (m.outcome, &m.channel) else {
        return vec![logged];
    };
    let queued = sqlx::query(
        "INSERT INTO outbox (idempotency_key, channel, address, content, customer, journey,
             step, template, status, attempts, next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11)
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .text(&m.idempotency_key)
    .text(channel)
    .opt_text(m.address.as_deref())
    .text(&json_text(&m.content))
    .text(&m.customer)
    .text(&m.journey)
    .text(&m.step)
    .text(&m.template)
    .int(i64::from(claim_until.is_some()))
    .int(nanos(claim_until.unwrap_or(m.at)))
    .int(nanos(m.at));
    vec![logged, queued]
}

/// Binds an `events` row in column order: customer, name, at, properties, message_id,
/// received_at.
pub(crate) fn bind_event<Q: Params>(query: Q, event: &NewEvent, received_at: i64) -> Q {
    query
        .text(&event.customer)
        .text(&event.name)
        .int(nanos(event.at))
        .text(&json_text(&event.properties))
        .opt_text(event.message_id.as_deref())
        .int(received_at)
}

pub(crate) fn stored_event(row: &impl Columns) -> Result<StoredEvent> {
    Ok(StoredEvent {
        seq: row.int("seq")?,
        customer: row.text("customer")?,
        event: Event {
            name: row.text("name")?,
            at: instant(row.int("at")?),
            properties: object(&row.text("properties")?, "events.properties")?,
        },
        message_id: row.opt_text("message_id")?,
        processed: row.flag("processed")?,
    })
}

/// Due timers in `(wake_at, id)` order after `after`: the row value seeks straight into
/// the `(wake_at, id)` index, however many timers share one wake time.
pub(crate) fn due_timers<DB: Database>(
    now: DateTime<Utc>,
    after: Option<&DueTimer>,
    limit: u32,
) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "SELECT customer, id, wake_at FROM enrollments
         WHERE wake_at IS NOT NULL AND wake_at <= $1 AND status = 'active'
             AND (wake_at, id) > ($2, $3)
         ORDER BY wake_at, id LIMIT $4",
    )
    .int(nanos(now))
    .int(after.map_or(i64::MIN, |t| nanos(t.at)))
    .text(after.map_or("", |t| t.enrollment.as_str()))
    .int(i64::from(limit))
}

/// Makes due at `now` the pending messages due within `lease` of it; see
/// [`crate::Store::release_claims`].
pub(crate) fn release_claims<DB: Database>(
    now: DateTime<Utc>,
    lease: chrono::TimeDelta,
) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "UPDATE outbox SET next_attempt_at = $1
         WHERE status = 'pending' AND next_attempt_at > $1 AND next_attempt_at <= $2",
    )
    .int(nanos(now))
    .int(nanos(now + lease))
}

/// A customer's handled and unhandled events, newest first.
pub(crate) fn recent_events<DB: Database>(customer: &str, limit: u32) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "SELECT seq, customer, name, at, properties, message_id, processed FROM events
         WHERE customer = $1 ORDER BY at DESC, seq DESC LIMIT $2",
    )
    .text(customer)
    .int(i64::from(limit))
}

/// A customer's message-log rows, newest first, each with its outbox row's `delivery`
/// (status) and `provider_id`; read with [`logged_message`].
pub(crate) fn recent_messages<DB: Database>(customer: &str, limit: u32) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "SELECT m.*, o.status AS delivery, o.provider_id AS provider_id
         FROM message_log m LEFT JOIN outbox o ON o.idempotency_key = m.idempotency_key
         WHERE m.customer = $1 ORDER BY m.at DESC, m.idempotency_key DESC LIMIT $2",
    )
    .text(customer)
    .int(i64::from(limit))
}

/// The outbox row a provider's callback is about, by the provider's message id or else by
/// the address last sent to on `channel`; read with [`sent_ref`]. Two statements rather
/// than one with a condition on which is given, so each keeps its own index
/// (`outbox_provider_id`, `outbox_address`). `None` when neither is given.
pub(crate) fn find_sent_message<DB: Database>(
    channel: &str,
    provider_id: Option<&str>,
    address: Option<&str>,
) -> Option<Statement<DB>>
where
    Statement<DB>: Params,
{
    Some(match (provider_id, address) {
        (Some(id), _) => sqlx::query(
            "SELECT idempotency_key, customer, journey, step FROM outbox
             WHERE channel = $1 AND provider_id = $2 LIMIT 1",
        )
        .text(channel)
        .text(id),
        (None, Some(address)) => sqlx::query(
            "SELECT idempotency_key, customer, journey, step FROM outbox
             WHERE channel = $1 AND address = $2 AND status = 'sent'
             ORDER BY created_at DESC LIMIT 1",
        )
        .text(channel)
        .text(address),
        (None, None) => return None,
    })
}

/// Records a delivery of a pending outbox row.
pub(crate) fn outbox_sent<DB: Database>(
    key: &str,
    provider_id: Option<&str>,
    now: DateTime<Utc>,
) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "UPDATE outbox SET status = 'sent', provider_id = $2, done_at = $3, last_error = NULL
         WHERE idempotency_key = $1 AND status = 'pending'",
    )
    .text(key)
    .opt_text(provider_id)
    .int(nanos(now))
}

/// Records a failed attempt of a pending outbox row and when to try again.
pub(crate) fn outbox_retry<DB: Database>(
    key: &str,
    error: &str,
    next_attempt_at: DateTime<Utc>,
) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "UPDATE outbox SET next_attempt_at = $2, last_error = $3
         WHERE idempotency_key = $1 AND status = 'pending'",
    )
    .text(key)
    .int(nanos(next_attempt_at))
    .text(error)
}

/// The message log's `outcome` and `reason` of a message that came too late to go out,
/// as the engine logs a send it found too late; the outbox row's `status` and
/// `last_error` say the same. See [`crate::Store::outbox_expired`].
pub(crate) fn expired_outcome() -> (&'static str, &'static str) {
    let (outcome, reason) = send_outcome(SendOutcome::Skipped(SkipReason::Expired));
    (outcome, reason.unwrap_or_default())
}

/// The unhandled events addressed to `customer` before `seq`, oldest first; read with
/// [`stored_event`].
pub(crate) fn unhandled_before<DB: Database>(customer: &str, seq: i64) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "SELECT seq, customer, name, at, properties, message_id, processed FROM events
         WHERE customer = $1 AND seq < $2 AND NOT processed ORDER BY seq",
    )
    .text(customer)
    .int(seq)
}

/// Keeps `message_id` as seen at `now`, unless it was seen within the dedup window:
/// returns a row only when it was kept (a repeat returns none).
pub(crate) fn keep_message_id<DB: Database>(message_id: &str, now: DateTime<Utc>) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "INSERT INTO message_ids (message_id, received_at) VALUES ($1, $2)
         ON CONFLICT (message_id) DO UPDATE SET received_at = EXCLUDED.received_at
             WHERE message_ids.received_at < $3
         RETURNING message_id",
    )
    .text(message_id)
    .int(nanos(now))
    .int(nanos(now - DEDUP_WINDOW))
}

/// The setting `name`, inserted as `value` if missing; returns the stored `value` column.
/// The no-op update makes the statement return the stored value when there is one,
/// including one a concurrent first writer committed after this statement began.
pub(crate) fn setting_or_insert<DB: Database>(name: &str, value: &str) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "INSERT INTO settings (name, value) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET value = settings.value
         RETURNING value",
    )
    .text(name)
    .text(value)
}

/// Keeps a journey version's files, unless that version is kept already.
pub(crate) fn record_journey_version<DB: Database>(
    journey: &str,
    version: &str,
    files: &BTreeMap<String, String>,
    now: DateTime<Utc>,
) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "INSERT INTO journey_versions (journey, version, files, loaded_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT (journey, version) DO NOTHING",
    )
    .text(journey)
    .text(version)
    .text(&json_text(files))
    .int(nanos(now))
}

/// The `files` column of a kept journey version; read with [`version_files`].
pub(crate) fn journey_version_files<DB: Database>(journey: &str, version: &str) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query("SELECT files FROM journey_versions WHERE journey = $1 AND version = $2")
        .text(journey)
        .text(version)
}

pub(crate) fn version_files(row: &impl Columns) -> Result<BTreeMap<String, String>> {
    strings(&row.text("files")?, "journey_versions.files")
}

/// `journey` and `version` of every version with an active enrollment; read with
/// [`active_version`].
pub(crate) fn active_versions<DB: Database>() -> Statement<DB> {
    sqlx::query(
        "SELECT DISTINCT journey, version FROM enrollments WHERE status = 'active'
         ORDER BY journey, version",
    )
}

pub(crate) fn active_version(row: &impl Columns) -> Result<(String, String)> {
    Ok((row.text("journey")?, row.text("version")?))
}

/// A journey's enrollments, counted by version, step, status, variant and holdout group;
/// read with [`journey_counts`].
pub(crate) fn count_enrollments<DB: Database>(journey: &str) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "SELECT version, step, status, variant, control, COUNT(*) AS n FROM enrollments
         WHERE journey = $1 GROUP BY version, step, status, variant, control",
    )
    .text(journey)
}

/// A journey's recorded versions, the latest loaded first; read with [`journey_version`].
pub(crate) fn journey_versions<DB: Database>(journey: &str) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "SELECT version, loaded_at FROM journey_versions WHERE journey = $1
         ORDER BY loaded_at DESC, version",
    )
    .text(journey)
}

pub(crate) fn journey_version(row: &impl Columns) -> Result<JourneyVersion> {
    Ok(JourneyVersion {
        version: row.text("version")?,
        loaded_at: instant(row.int("loaded_at")?),
    })
}

/// The `id`s of stored customers (not merged away) after `after`, in order.
pub(crate) fn customer_ids<DB: Database>(after: &str, limit: u32) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "SELECT id FROM profiles WHERE merged_into IS NULL AND id > $1 ORDER BY id LIMIT $2",
    )
    .text(after)
    .int(i64::from(limit))
}

/// The `next_at` of a schedule journey's next tick; read with [`tick`].
pub(crate) fn schedule_tick<DB: Database>(journey: &str) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query("SELECT next_at FROM schedule_ticks WHERE journey = $1").text(journey)
}

pub(crate) fn tick(row: &impl Columns) -> Result<DateTime<Utc>> {
    Ok(instant(row.int("next_at")?))
}

pub(crate) fn set_schedule_tick<DB: Database>(journey: &str, next: DateTime<Utc>) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query(
        "INSERT INTO schedule_ticks (journey, next_at) VALUES ($1, $2)
         ON CONFLICT (journey) DO UPDATE SET next_at = excluded.next_at",
    )
    .text(journey)
    .int(nanos(next))
}

/// Forgets the `messageId`s received before the dedup window.
pub(crate) fn prune<DB: Database>(now: DateTime<Utc>) -> Statement<DB>
where
    Statement<DB>: Params,
{
    sqlx::query("DELETE FROM message_ids WHERE received_at < $1").int(nanos(now - DEDUP_WINDOW))
}

/// From `customer`, `id` and `wake_at` of an `enrollments` row.
pub(crate) fn due_timer(row: &impl Columns) -> Result<DueTimer> {
    Ok(DueTimer {
        customer: row.text("customer")?,
        enrollment: row.text("id")?,
        at: instant(row.int("wake_at")?),
    })
}

/// Claimed outbox rows as messages, oldest first.
pub(crate) fn claimed(rows: &[impl Columns]) -> Result<Vec<OutboxMessage>> {
    let mut claimed = rows
        .iter()
        .map(outbox_message)
        .collect::<Result<Vec<_>>>()?;
    claimed.sort_by_key(|m| m.created_at);
    Ok(claimed)
}

fn outbox_message(row: &impl Columns) -> Result<OutboxMessage> {
    Ok(OutboxMessage {
        idempotency_key: row.text("idempotency_key")?,
        channel: row.text("channel")?,
        address: row.opt_text("address")?,
        content: strings(&row.text("content")?, "outbox.content")?,
        customer: row.text("customer")?,
        journey: row.text("journey")?,
        step: row.text("step")?,
        template: row.text("template")?,
        attempts: u32::try_from(row.int("attempts")?).unwrap_or(0),
        created_at: instant(row.int("created_at")?),
    })
}

/// From a `message_log` row with its outbox row's `delivery` (status) and `provider_id`.
pub(crate) fn logged_message(row: &impl Columns) -> Result<LoggedMessage> {
    Ok(LoggedMessage {
        idempotency_key: row.text("idempotency_key")?,
        enrollment: row.text("enrollment")?,
        journey: row.text("journey")?,
        step: row.text("step")?,
        template: row.text("template")?,
        channel: row.opt_text("channel")?,
        variant: row.opt_text("variant")?,
        outcome: row.text("outcome")?,
        reason: row.opt_text("reason")?,
        at: instant(row.int("at")?),
        delivery: row.opt_text("delivery")?,
        provider_id: row.opt_text("provider_id")?,
    })
}

pub(crate) fn sent_ref(row: &impl Columns) -> Result<SentRef> {
    Ok(SentRef {
        idempotency_key: row.text("idempotency_key")?,
        customer: row.text("customer")?,
        journey: row.text("journey")?,
        step: row.text("step")?,
    })
}

/// A journey's counts from its enrollments grouped as `version, step, status, variant,
/// control, COUNT(*) AS n`.
pub(crate) fn journey_counts(rows: &[impl Columns]) -> Result<JourneyCounts> {
    let mut counts = JourneyCounts::default();
    for row in rows {
        let n = count(row.int("n")?);
        let status = row.text("status")?;
        if status == "active" {
            let step = usize::try_from(row.int("step")?).unwrap_or(0);
            *counts
                .active
                .entry((row.text("version")?, step))
                .or_default() += n;
        } else {
            *counts.outcomes.entry(status.clone()).or_default() += n;
        }
        if row.flag("control")? {
            *counts.control.entry(status).or_default() += n;
        } else {
            *counts.treated.entry(status.clone()).or_default() += n;
            if let Some(variant) = row.opt_text("variant")? {
                *counts.variants.entry((variant, status)).or_default() += n;
            }
        }
    }
    Ok(counts)
}

/// From the counts `outbox` (pending), `inbox` (unhandled events) and `active`
/// (enrollments).
pub(crate) fn depths(row: &impl Columns) -> Result<Depths> {
    Ok(Depths {
        outbox_pending: count(row.int("outbox")?),
        inbox: count(row.int("inbox")?),
        active_enrollments: count(row.int("active")?),
    })
}
