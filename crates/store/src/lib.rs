//! Waymark's durable state.
//!
//! [`Store`] is the one storage contract the daemon runs on (restate's api/impl split):
//! customers' state and the engine's effects committed together, the event inbox, the
//! timer (wake) index and the outbox. Each backend lives in its own module with its own
//! migrations and SQL; [`sqlite::SqliteStore`] is the embedded default, and
//! [`postgres::PostgresStore`] the database many daemons share.
//!
//! The engine ([`waymark_scheduler::Engine`]) never sees the store: the daemon loads a
//! [`Customer`], hands its state to the engine with an input, and [`Store::commit`]s the
//! changed state with the effects in one transaction.

use std::borrow::Cow;
use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::{Map, Value};
use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use waymark_scheduler::{CustomerState, Effect, Event};

pub mod postgres;
pub mod sqlite;

mod codec;
mod tables;

pub use postgres::PostgresStore;
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
    /// An earlier event of the customer, accepted (by another daemon sharing the
    /// database) but not handled yet, must be handled before this one: handle the
    /// customer's [`Store::unhandled_before`] first, then apply this input again. Only a
    /// store many daemons share gives it.
    #[error("customer `{customer}` has events before {seq} still to handle")]
    Behind { customer: String, seq: i64 },
    /// The input's `messageId` was committed already within the dedup window: it was
    /// applied then, so drop it.
    #[error("message `{0}` was applied already")]
    Repeated(String),
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

/// [`Store::ingest_many`] one event after another, each in its own transaction, so that
/// a failure belongs to its own event: the default, and the backends' way when a batch
/// transaction fails.
async fn ingest_each<S: Store + ?Sized>(
    store: &S,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Vec<Result<Ingested>> {
    let mut results = Vec::with_capacity(events.len());
    for event in events {
        results.push(store.ingest_event(event, now).await);
    }
    results
}

/// A backend's `(version, name, sql)` migrations, embedded so the binary needs no files
/// beside it. Both backends number theirs alike: version N means the same schema in each.
fn embedded_migrator(migrations: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, name, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(name),
                    MigrationType::Simple,
                    SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}

/// A customer as loaded: the engine's state plus what [`Store::commit`] needs to detect a
/// concurrent writer.
#[derive(Debug, Clone)]
pub struct Customer {
    pub state: CustomerState,
    /// The profile row's revision when loaded; 0 for a customer not stored yet.
    pub revision: i64,
}

impl Customer {
    /// A customer not stored yet: an empty state at revision 0.
    pub fn unstored(id: String) -> Customer {
        Customer {
            state: CustomerState::new(id),
            revision: 0,
        }
    }
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
    /// When set, the outbox rows of this commit are written already claimed by the caller
    /// until then (their first attempt, as [`Store::claim_outbox`] would have claimed
    /// them), so that it can deliver them straight from memory rather than claim them
    /// back; a caller that dies leaves them to be claimed once the claim runs out. `None`
    /// writes them due at once, for whichever dispatcher claims them.
    pub claim_until: Option<DateTime<Utc>>,
    /// The caller's id for this input (an API enrollment's `messageId`), kept with the
    /// `messageId`s of events: a commit whose id was kept within [`DEDUP_WINDOW`] is
    /// refused with [`Error::Repeated`], so that a retried request applies once.
    pub message_id: Option<&'a str>,
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
    /// The outbox's view: `pending`, `sent`, `failed`, or `skipped` when it came too late
    /// to go out ([`Store::outbox_expired`]); `None` when never handed to a channel.
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

    /// [`Store::resolve`] for many ids, one result per id in order. The default resolves
    /// them concurrently, each on its own.
    async fn resolve_many(&self, ids: &[String]) -> Vec<Result<String>> {
        join_all(ids.iter().map(|id| self.resolve(id))).await
    }

    /// The customer `id` resolves to, with history and sent messages; an empty state
    /// (revision 0) when unknown.
    async fn load_customer(&self, id: &str) -> Result<Customer>;

    /// [`Store::load_customer`] for many ids, one result per id in order. The default
    /// loads them concurrently, each on its own.
    async fn load_many(&self, ids: &[String]) -> Vec<Result<Customer>> {
        join_all(ids.iter().map(|id| self.load_customer(id))).await
    }

    /// Persists the outcome of one input. See the contract.
    async fn commit(&self, commit: Commit<'_>) -> Result<()>;

    /// Persists many inputs' outcomes (group commit): one result per commit, in order,
    /// each what [`Store::commit`] would give had the commits been made one by one. A
    /// refused commit leaves the others standing. The default makes them concurrently,
    /// each in its own transaction; a backend whose durable writes are costly writes them
    /// in one.
    async fn commit_many(&self, commits: &[Commit<'_>]) -> Vec<Result<()>> {
        join_all(commits.iter().map(|commit| self.commit(*commit))).await
    }

    /// Accepts an event into the inbox, or recognises its `messageId` as a duplicate.
    async fn ingest_event(&self, event: &NewEvent, now: DateTime<Utc>) -> Result<Ingested>;

    /// Accepts many events, one result per event in order; every accepted one is durable
    /// when this returns. Sequence numbers follow the batch's order, so one customer's
    /// events are handled in the order they came. A `messageId` repeated within the batch
    /// is accepted once. The default ingests them one after another.
    async fn ingest_many(&self, events: &[NewEvent], now: DateTime<Utc>) -> Vec<Result<Ingested>> {
        ingest_each(self, events, now).await
    }

    /// Accepted events not yet handled, oldest first, after sequence number `after`.
    async fn inbox(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>>;

    /// The events addressed to `customer` not yet handled, with sequence numbers below
    /// `seq`, oldest first: what [`Error::Behind`] asks to handle first.
    async fn unhandled_before(&self, customer: &str, seq: i64) -> Result<Vec<StoredEvent>>;

    /// The customer's latest events, newest first.
    async fn recent_events(&self, customer: &str, limit: u32) -> Result<Vec<StoredEvent>>;

    /// Enrollment timers due at or before `now`, in `(at, enrollment)` order, after
    /// `after` (the last one of the previous batch, `None` for the earliest): the timer
    /// loop walks the wake index batch by batch without reading again the timers it has
    /// in hand, even when a million of them share one wake time.
    async fn due_timers(
        &self,
        now: DateTime<Utc>,
        after: Option<&DueTimer>,
        limit: u32,
    ) -> Result<Vec<DueTimer>>;

    /// Claims up to `limit` outbox rows due at `now`, leaving alone those on the `busy`
    /// channels (so that one slow provider cannot fill the dispatcher with messages it is
    /// not ready for). Each stays claimed for `lease`, after which an unfinished claim may
    /// be taken again.
    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        lease: chrono::TimeDelta,
        limit: u32,
        busy: &[String],
    ) -> Result<Vec<OutboxMessage>>;

    /// Makes due at `now` every pending message due within one `lease` of it: the claims
    /// of a daemon that is gone, and retries that were close anyway. Only a daemon alone
    /// on its database may call this, when it starts, so that deliveries a crash cut off
    /// go out at once rather than when their leases run out. Returns how many.
    async fn release_claims(&self, now: DateTime<Utc>, lease: chrono::TimeDelta) -> Result<u64>;

    /// The provider accepted the message.
    async fn outbox_sent(
        &self,
        key: &str,
        provider_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// [`Store::outbox_sent`] for many messages, `(idempotency key, provider id)`. The
    /// default records them concurrently, each on its own.
    async fn outbox_sent_many(
        &self,
        sent: &[(&str, Option<&str>)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        join_all(sent.iter().map(|(key, id)| self.outbox_sent(key, *id, now)))
            .await
            .into_iter()
            .collect()
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

    /// The messages among `keys` that are still pending came too late to go out (the
    /// dispatcher found them due longer ago than their journey's `max_lateness`): each
    /// outbox row leaves the pending set for good (its delivery `skipped`), and the message
    /// log records the message `skipped` with reason `expired`, as it records a send the
    /// engine found too late, so frequency caps no longer count it. A message sent or
    /// failed meanwhile is left as it is. Returns how many were skipped.
    async fn outbox_expired(&self, keys: &[&str], now: DateTime<Utc>) -> Result<u64>;

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

    /// The stored value of setting `name`, storing `value` first if there is none: the
    /// first writer wins, so replicas sharing a database agree.
    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String>;

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

    /// The journey's enrollments counted for the journeys API: see [`JourneyCounts`].
    async fn journey_counts(&self, journey: &str) -> Result<JourneyCounts>;

    /// Every version of the journey recorded by [`Store::record_journey_version`], the
    /// latest loaded first.
    async fn journey_versions(&self, journey: &str) -> Result<Vec<JourneyVersion>>;

    /// Ids of stored profiles not merged away, in id order, after `after`.
    async fn customer_ids(&self, after: &str, limit: u32) -> Result<Vec<String>>;

    /// The next stored cron tick of a schedule journey.
    async fn schedule_tick(&self, journey: &str) -> Result<Option<DateTime<Utc>>>;

    async fn set_schedule_tick(&self, journey: &str, next: DateTime<Utc>) -> Result<()>;

    /// Forgets `messageId`s older than [`DEDUP_WINDOW`].
    async fn prune(&self, now: DateTime<Utc>) -> Result<u64>;

    async fn depths(&self) -> Result<Depths>;
}

/// Per-journey counts for the journeys API. `active` and `outcomes` count every
/// enrollment; `variants`, `treated` and `control` keep the holdout group apart, so that
/// its conversion can be compared with the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JourneyCounts {
    /// `(version, step index) -> active enrollments`, the holdout group's included.
    pub active: BTreeMap<(String, usize), u64>,
    /// `outcome -> ended enrollments`, the holdout group's included.
    pub outcomes: BTreeMap<String, u64>,
    /// `(variant, outcome or "active") -> enrollments` outside the holdout group.
    pub variants: BTreeMap<(String, String), u64>,
    /// `outcome or "active" -> enrollments` outside the holdout group, whatever their
    /// variant (none before a split, or in a journey without one).
    pub treated: BTreeMap<String, u64>,
    /// `outcome or "active" -> enrollments` in the holdout (control) group, whatever
    /// their variant.
    pub control: BTreeMap<String, u64>,
}

/// A recorded version of a journey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JourneyVersion {
    pub version: String,
    /// When a daemon first loaded it.
    pub loaded_at: DateTime<Utc>,
}
