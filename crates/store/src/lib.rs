//! Waymark's durable state.
//!
//! [`Store`] is the one storage contract the daemon runs on (restate's api/impl split):
//! customers' state and the engine's effects committed together, the event inbox, the
//! timer (wake) index and the outbox. Each backend lives in its own module with its own
//! migrations and SQL; [`sqlite::SqliteStore`] is the embedded default.
//!
//! The engine ([`waymark_scheduler::Engine`]) never sees the store: the daemon loads a
//! [`Customer`], hands its state to the engine with an input, and [`Store::commit`]s the
//! changed state with the effects in one transaction.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use waymark_scheduler::{CustomerState, Effect, Event};

pub mod sqlite;

mod codec;

pub use sqlite::SqliteStore;

/// How long a `messageId` is remembered: a repeat within this window is acknowledged and
/// ignored.
pub const DEDUP_WINDOW: chrono::TimeDelta = chrono::TimeDelta::days(7);

/// Storage errors, grouped by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Someone else committed this customer since it was loaded: load it again and
    /// re-apply the input.
    #[error("customer `{0}` changed since it was loaded")]
    Conflict(String),
    /// The inbox event was handled already (by another task or replica): drop the input.
    #[error("event {0} was handled already")]
    Handled(i64),
    /// The database could not be reached or refused the operation: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Stored data does not decode (a bug or a manual edit): needs a person.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database cannot be opened or migrated: fix the configuration.
    #[error("cannot open the database: {0}")]
    Setup(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Unavailable(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A customer as loaded: the engine's state plus what [`Store::commit`] needs to detect a
/// concurrent writer.
#[derive(Debug, Clone)]
pub struct Customer {
    pub state: CustomerState,
    /// The profile row's revision when loaded; 0 for a customer not stored yet.
    pub revision: i64,
}

/// One input's outcome, to persist atomically.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    /// The customer's state after the engine handled the input.
    pub state: &'a CustomerState,
    /// [`Customer::revision`] as loaded.
    pub revision: i64,
    pub effects: &'a [Effect],
    /// The inbox event this input was (see [`Store::ingest_event`]): marked processed in
    /// the same transaction, so it is handled exactly once.
    pub event: Option<i64>,
    /// A profile merged into this one by an alias, with its revision as loaded: it is
    /// redirected here for good and its events and messages join this profile.
    pub merged: Option<(&'a str, i64)>,
    pub now: DateTime<Utc>,
}

/// An event to accept.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The id it was addressed to (before alias resolution).
    pub customer: String,
    pub name: String,
    pub at: DateTime<Utc>,
    pub properties: Map<String, Value>,
    pub message_id: Option<String>,
}

/// An accepted event, waiting in the inbox or already handled.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub customer: String,
    pub event: Event,
    pub message_id: Option<String>,
    pub processed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Stored in the inbox under this sequence number.
    Accepted(i64),
    /// Its `messageId` was seen within [`DEDUP_WINDOW`]: nothing stored.
    Duplicate,
}

/// An enrollment timer that has fallen due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    pub customer: String,
    pub enrollment: String,
    pub at: DateTime<Utc>,
}

/// An outbox row claimed for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub idempotency_key: String,
    pub channel: String,
    pub address: Option<String>,
    pub content: BTreeMap<String, String>,
    pub customer: String,
    pub journey: String,
    pub step: String,
    pub template: String,
    /// Delivery attempts so far, this claim included.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
}

/// A message as the message log recorded it, for the profile API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoggedMessage {
    pub idempotency_key: String,
    pub enrollment: String,
    pub journey: String,
    pub step: String,
    pub template: String,
    pub channel: Option<String>,
    pub variant: Option<String>,
    /// `sent`, `skipped`, `suppressed` or `failed`.
    pub outcome: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
    /// The outbox's view: `pending`, `sent` or `failed`; `None` when never handed to a
    /// channel.
    pub delivery: Option<String>,
    pub provider_id: Option<String>,
}

/// A message handed to a channel, as a delivery receipt finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRef {
    pub idempotency_key: String,
    /// The profile it was sent to (after any later merge).
    pub customer: String,
    pub journey: String,
    pub step: String,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depths {
    /// Outbox rows not yet sent or failed.
    pub outbox_pending: u64,
    /// Accepted events not yet handled.
    pub inbox: u64,
    pub active_enrollments: u64,
}

/// The durable home of customers, events, timers and outgoing messages.
///
/// # Contract
/// - [`Store::commit`] is atomic: the customer's state, its outbox and message-log rows,
///   the consumed inbox event and an alias redirect all land, or none does.
/// - [`Store::commit`] refuses ([`Error::Conflict`]) a state loaded at an older revision,
///   so concurrent writers of one customer cannot lose each other's changes.
/// - An event is durable when [`Store::ingest_event`] returns.
/// - Ids are resolved through alias redirects wherever a customer id is taken.
///
/// # Errors
/// Every method may fail with [`Error::Unavailable`] (retry later) or
/// [`Error::Corrupt`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The profile id `id` now lives under: itself, unless merged away by an alias.
    async fn resolve(&self, id: &str) -> Result<String>;

    /// [`Store::resolve`] for many ids at once, one result per id in order. The default
    /// resolves them one by one.
    async fn resolve_many(&self, ids: &[String]) -> Vec<Result<String>> {
        let mut resolved = Vec::with_capacity(ids.len());
        for id in ids {
            resolved.push(self.resolve(id).await);
        }
        resolved
    }

    /// The customer `id` resolves to, with history and sent messages; an empty state
    /// (revision 0) when unknown.
    async fn load_customer(&self, id: &str) -> Result<Customer>;

    /// [`Store::load_customer`] for many ids at once, one result per id in order. A
    /// backend reads them with a few statements for the whole batch; the default loads
    /// them one by one.
    async fn load_many(&self, ids: &[String]) -> Vec<Result<Customer>> {
        let mut customers = Vec::with_capacity(ids.len());
        for id in ids {
            customers.push(self.load_customer(id).await);
        }
        customers
    }

    /// Persists the outcome of one input. See the contract.
    async fn commit(&self, commit: Commit<'_>) -> Result<()>;

    /// Persists many inputs' outcomes (group commit): one result per commit, in order,
    /// each as [`Store::commit`] would give it had the commits been made one after the
    /// other. A refused commit leaves the others standing. A backend writes them in one
    /// transaction, so that a thousand customers' steps cost one durable write instead of
    /// a thousand; the default commits them one by one.
    async fn commit_many(&self, commits: &[Commit<'_>]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(commits.len());
        for commit in commits {
            results.push(self.commit(*commit).await);
        }
        results
    }

    /// Accepts an event into the inbox, or recognises its `messageId` as a duplicate.
    async fn ingest_event(&self, event: &NewEvent, now: DateTime<Utc>) -> Result<Ingested>;

    /// Accepts many events (group commit), one result per event in order, as
    /// [`Store::ingest_event`] one after the other would (a repeated `messageId` within
    /// the batch is a duplicate too). Every event is durable when this returns. The
    /// default ingests them one by one.
    async fn ingest_many(&self, events: &[NewEvent], now: DateTime<Utc>) -> Vec<Result<Ingested>> {
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            results.push(self.ingest_event(event, now).await);
        }
        results
    }

    /// Accepted events not yet handled, oldest first, after sequence number `after`.
    async fn inbox(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>>;

    /// The customer's latest events, newest first.
    async fn recent_events(&self, customer: &str, limit: u32) -> Result<Vec<StoredEvent>>;

    /// Enrollment timers due at or before `now`, earliest first.
    async fn due_timers(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<DueTimer>>;

    /// Due timers in `(at, enrollment)` order, after `after` (the last one of the previous
    /// batch): the timer loop walks the wake index in batches without reading again the
    /// ones it has in hand, even when a million timers share one wake time. The default
    /// ignores `after` and starts from the earliest, which is correct (the loop skips the
    /// timers it has in hand) but reads them again.
    async fn due_timers_after(
        &self,
        now: DateTime<Utc>,
        after: Option<&DueTimer>,
        limit: u32,
    ) -> Result<Vec<DueTimer>> {
        let _ = after;
        self.due_timers(now, limit).await
    }

    /// Claims up to `limit` outbox rows due at `now`; each stays claimed for `lease`, after
    /// which an unfinished claim may be taken again.
    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        lease: chrono::TimeDelta,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>>;

    /// Like [`Store::claim_outbox`], leaving alone the rows on the `busy` channels (those
    /// already delivering as much as they may at once), so that one slow provider cannot
    /// fill the dispatcher with messages it is not ready for. The default claims from
    /// every channel.
    async fn claim_outbox_except(
        &self,
        now: DateTime<Utc>,
        lease: chrono::TimeDelta,
        limit: u32,
        busy: &[String],
    ) -> Result<Vec<OutboxMessage>> {
        let _ = busy;
        self.claim_outbox(now, lease, limit).await
    }

    /// The provider accepted the message.
    async fn outbox_sent(
        &self,
        key: &str,
        provider_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// [`Store::outbox_sent`] for many messages: `(idempotency key, provider id)`. A
    /// backend writes them in one statement; the default one by one.
    async fn outbox_sent_many(
        &self,
        sent: &[(&str, Option<&str>)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        for (key, provider_id) in sent {
            self.outbox_sent(key, *provider_id, now).await?;
        }
        Ok(())
    }

    /// Delivery failed for now; try again at `next_attempt_at`.
    async fn outbox_retry(
        &self,
        key: &str,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<()>;

    /// Delivery failed for good: the outbox row and the message log say why.
    async fn outbox_failed(&self, key: &str, error: &str, now: DateTime<Utc>) -> Result<()>;

    /// The customer's latest messages, newest first.
    async fn recent_messages(&self, customer: &str, limit: u32) -> Result<Vec<LoggedMessage>>;

    /// The message a delivery receipt is about: the one the provider accepted under
    /// `provider_id`, else the latest one delivered on `channel` to `address` (for
    /// providers whose callbacks name only the recipient).
    async fn find_sent_message(
        &self,
        channel: &str,
        provider_id: Option<&str>,
        address: Option<&str>,
    ) -> Result<Option<SentRef>>;

    /// Remembers the files a journey version was loaded from (idempotent).
    async fn record_journey_version(
        &self,
        journey: &str,
        version: &str,
        files: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// The files of a recorded journey version.
    async fn journey_version_files(
        &self,
        journey: &str,
        version: &str,
    ) -> Result<Option<BTreeMap<String, String>>>;

    /// `(journey, version)` of every active enrollment, deduplicated.
    async fn active_versions(&self) -> Result<Vec<(String, String)>>;

    /// Active enrollments per `(journey, step index)`, and ended ones per
    /// `(journey, outcome)`, for the journeys API.
    async fn journey_counts(&self, journey: &str) -> Result<JourneyCounts>;

    /// Ids of stored profiles not merged away, in id order, after `after`.
    async fn customer_ids(&self, after: &str, limit: u32) -> Result<Vec<String>>;

    /// The next stored cron tick of a schedule journey.
    async fn schedule_tick(&self, journey: &str) -> Result<Option<DateTime<Utc>>>;

    async fn set_schedule_tick(&self, journey: &str, next: DateTime<Utc>) -> Result<()>;

    /// Forgets `messageId`s older than [`DEDUP_WINDOW`].
    async fn prune(&self, now: DateTime<Utc>) -> Result<u64>;

    async fn depths(&self) -> Result<Depths>;
}

/// Per-journey counts for the journeys API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JourneyCounts {
    /// `(version, step index) -> active enrollments`.
    pub active: BTreeMap<(String, usize), u64>,
    /// `outcome -> ended enrollments`.
    pub outcomes: BTreeMap<String, u64>,
    /// `(variant, outcome or "active") -> enrollments`.
    pub variants: BTreeMap<(String, String), u64>,
}
