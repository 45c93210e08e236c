//! The shared backend: one PostgreSQL database for any number of daemon replicas.
//!
//! Every method keeps the contract of [`Store`] while other replicas run the same
//! statements on the same rows. Transactions run at PostgreSQL's default `READ COMMITTED`:
//! a statement that has to wait for another transaction's row lock re-reads the row once
//! that transaction ends and re-checks its `WHERE` against the row as committed. Each
//! write below is written so that this re-check is the concurrency control:
//!
//! - **Customers: the revision check holds the profile row's lock.** [`Store::commit`]
//!   writes the profile with one `INSERT ... ON CONFLICT (id) DO UPDATE ... WHERE revision
//!   = loaded revision`. The upsert locks the row (or, for a new customer, the key) for the
//!   rest of the transaction; a second replica's commit of the same customer waits on it,
//!   then finds the revision bumped and touches nothing: [`Error::Conflict`], and the
//!   daemon applies its input again on the fresh state. So the enrollments, message log and
//!   outbox rows written after it are written by one transaction per revision, and a
//!   `SELECT ... FOR UPDATE` beforehand would only cost a round trip. An alias merge locks
//!   the merged-away profile the same way.
//! - **Inbox events: consumed by a conditional update.** The event is marked processed
//!   with `... WHERE NOT processed` before anything else; a replica committing the same
//!   event waits on that row and then updates nothing: [`Error::Handled`].
//! - **Lock order.** A commit locks at most one event, then the customer's profile, then
//!   the merged-away profile, then rows only those profiles own, so commits of different
//!   customers never wait on each other. Two aliases merging two profiles into each other
//!   at once can still deadlock; PostgreSQL then aborts one, and that (like a
//!   serialization failure) is reported as [`Error::Conflict`], whose remedy, applying the
//!   input again, is the right one.
//! - **The outbox: claimed with `FOR UPDATE SKIP LOCKED`.** A claim locks the due rows it
//!   picks and skips those another replica's claim holds, instead of waiting for them and
//!   then claiming them again; the lease it writes (`next_attempt_at`) keeps them from the
//!   next claims once it commits.
//! - **`messageId` dedup: one statement.** The `message_ids` upsert and the event insert
//!   run as one statement; a concurrent ingest of the same id waits on the uncommitted key,
//!   then sees it fresh and stores nothing, so exactly one is accepted.
//! - **Reads: one snapshot per customer.** [`Store::load_customer`] reads in a `REPEATABLE
//!   READ, READ ONLY` transaction, so the profile, history, messages and enrollments it
//!   returns are one committed state, the one its revision names.
//!
//! Migrations take PostgreSQL's advisory lock, so replicas starting together migrate once.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgExecutor, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row, Transaction};

use crate::codec::{MAX_ALIAS_HOPS, json_text, nanos};
use crate::tables::Columns as _;
use crate::{
    Commit, Customer, DEDUP_WINDOW, Depths, DueTimer, Error, Ingested, JourneyCounts,
    JourneyVersion, LoggedMessage, NewEvent, OutboxMessage, Result, SentRef, Store, StoredEvent,
    tables,
};

/// The store many daemons share.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

/// The migrations; the SQLite backend's have the same version numbers and meaning.
fn migrator() -> Migrator {
    crate::embedded_migrator(&[
        (
            1,
            "init",
            include_str!("../migrations/postgres/0001_init.sql"),
        ),
        (
            2,
            "receipts",
            include_str!("../migrations/postgres/0002_receipts.sql"),
        ),
        (
            3,
            "settings",
            include_str!("../migrations/postgres/0003_settings.sql"),
        ),
        (
            4,
            "wake_index",
            include_str!("../migrations/postgres/0004_wake_index.sql"),
        ),
        (
            5,
            "unhandled_index",
            include_str!("../migrations/postgres/0005_unhandled_index.sql"),
        ),
    ])
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`, or
    /// `postgresql://`) and brings its schema up to date.
    ///
    /// # Errors
    /// [`Error::Setup`] when the URL is invalid, or the database cannot be reached or
    /// migrated. The message never repeats the URL, which may hold a password.
    pub async fn open(url: &str) -> Result<PostgresStore> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Setup(format!("invalid PostgreSQL URL: {e}")))?;
        Self::connect_with(options).await
    }

    /// Connects with `options` (a pool of sqlx's default size) and brings the schema up to
    /// date; see [`PostgresStore::open`].
    ///
    /// # Errors
    /// As [`PostgresStore::open`].
    pub async fn connect_with(options: PgConnectOptions) -> Result<PostgresStore> {
        let setup = |e: sqlx::Error| Error::Setup(e.to_string());
        // One connection first: a server that cannot be reached or refuses the login is
        // reported as such at once, where the pool would retry until its timeout and
        // report only that.
        PgConnection::connect_with(&options)
            .await
            .map_err(setup)?
            .close()
            .await
            .map_err(setup)?;
        let pool = PgPoolOptions::new()
            .connect_with(options)
            .await
            .map_err(setup)?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| Error::Setup(format!("migrating: {e}")))?;
        Ok(PostgresStore { pool })
    }

    /// Closes the pool, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The store behind a trait object, as the daemon holds it.
    pub fn shared(self) -> Arc<dyn Store> {
        Arc::new(self)
    }

    /// One commit in one transaction. A refusal rolls back at once: left to the dropped
    /// transaction, the rollback would wait for the connection's next use, and the row
    /// locks taken so far would stall other daemons meanwhile.
    async fn save(&self, commit: Commit<'_>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        match write_commit(&mut tx, commit).await {
            Ok(()) => Ok(tx.commit().await?),
            Err(refused) => {
                tx.rollback().await?;
                Err(refused)
            }
        }
    }

    /// [`Store::ingest_many`] in one transaction: one commit for the batch, and sequence
    /// numbers in the batch's order (events ingested concurrently could take theirs in
    /// any order, and one customer's events would then be handled out of order). A
    /// `messageId` repeated in the batch meets the row its first occurrence wrote.
    async fn ingest_together(
        &self,
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<Ingested>> {
        let mut tx = self.pool.begin().await?;
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            results.push(ingest_in(&mut *tx, event, now).await?);
        }
        tx.commit().await?;
        Ok(results)
    }
}

/// Accepts `event`, or recognises its `messageId` as a duplicate. The `message_ids`
/// upsert and the event insert are one statement.
async fn ingest_in<'e>(
    executor: impl PgExecutor<'e>,
    event: &NewEvent,
    now: DateTime<Utc>,
) -> Result<Ingested> {
    let insert = sqlx::query(
        "WITH fresh AS (
             INSERT INTO message_ids (message_id, received_at)
             SELECT $5, $6 WHERE $5 IS NOT NULL
             ON CONFLICT (message_id) DO UPDATE SET received_at = EXCLUDED.received_at
             WHERE message_ids.received_at < $7
             RETURNING 1)
         INSERT INTO events (customer, name, at, properties, message_id, received_at)
         SELECT $1, $2, $3, $4, $5, $6 WHERE $5 IS NULL OR EXISTS (SELECT 1 FROM fresh)
         RETURNING seq",
    );
    let stored = tables::bind_event(insert, event, nanos(now))
        .bind(nanos(now - DEDUP_WINDOW))
        .fetch_optional(executor)
        .await?;
    match stored {
        Some(row) => Ok(Ingested::Accepted(row.try_get("seq")?)),
        None => Ok(Ingested::Duplicate),
    }
}

/// Redirects profile `other` (loaded at `revision`) to `into` for good, and moves its
/// handled events and its messages there. Unhandled inbox events keep their address: they
/// are resolved when handled.
async fn merge(
    tx: &mut Transaction<'static, Postgres>,
    other: &str,
    revision: i64,
    into: &str,
    now: i64,
) -> Result<()> {
    let redirected = sqlx::query(
        "INSERT INTO profiles (id, merged_into, updated_at) VALUES ($1, $3, $4)
         ON CONFLICT (id) DO UPDATE SET merged_into = EXCLUDED.merged_into,
             revision = profiles.revision + 1, updated_at = EXCLUDED.updated_at
         WHERE profiles.revision = $2 AND profiles.merged_into IS NULL",
    )
    .bind(other)
    .bind(revision)
    .bind(into)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if redirected.rows_affected() == 0 {
        return Err(Error::Conflict(other.to_owned()));
    }
    sqlx::query(
        "WITH events_moved AS (
             UPDATE events SET customer = $1 WHERE customer = $2 AND processed),
         log_moved AS (UPDATE message_log SET customer = $1 WHERE customer = $2)
         UPDATE outbox SET customer = $1 WHERE customer = $2",
    )
    .bind(into)
    .bind(other)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The profile id `id` now lives under, following alias redirects in one query.
async fn resolve_in<'e>(executor: impl PgExecutor<'e>, id: &str) -> Result<String> {
    // Each step reads the current id's row and yields where it redirects to; the last
    // step is the id that lives on, unless the chain ran into the bound.
    let (resolved, hops): (String, i64) = sqlx::query_as(
        "WITH RECURSIVE chain (id, hops) AS (
             SELECT $1::text, 0::bigint
             UNION ALL
             SELECT p.merged_into, chain.hops + 1 FROM chain JOIN profiles p ON p.id = chain.id
             WHERE p.merged_into IS NOT NULL AND chain.hops < $2)
         SELECT id, hops FROM chain ORDER BY hops DESC LIMIT 1",
    )
    .bind(id)
    .bind(MAX_ALIAS_HOPS)
    .fetch_one(executor)
    .await?;
    if hops >= MAX_ALIAS_HOPS {
        return Err(Error::Corrupt(format!("alias chain from `{id}` loops")));
    }
    Ok(resolved)
}

/// A deadlock or serialization failure: PostgreSQL rolled the transaction back, and
/// loading the customer again and re-applying the input is the remedy.
fn contention_as_conflict(e: Error, customer: &str) -> Error {
    const DEADLOCK_DETECTED: &str = "40P01";
    const SERIALIZATION_FAILURE: &str = "40001";
    match &e {
        Error::Unavailable(sqlx::Error::Database(db))
            if matches!(
                db.code().as_deref(),
                Some(DEADLOCK_DETECTED | SERIALIZATION_FAILURE)
            ) =>
        {
            Error::Conflict(customer.to_owned())
        }
        _ => e,
    }
}

/// Marks inbox event `seq` handled by `profile`'s commit, in one statement when it goes
/// through. The event's row is locked first, so a daemon handling it at the same moment
/// waits, then finds it handled. One customer's events go in the order they were
/// accepted, whichever daemon accepted each: while an earlier one addressed to the same id
/// (or to the profile) is unhandled, the commit is refused with [`Error::Behind`].
async fn consume_event(
    tx: &mut Transaction<'static, Postgres>,
    profile: &str,
    seq: i64,
) -> Result<()> {
    let consumed = sqlx::query(
        "WITH target AS (
             SELECT seq, customer FROM events WHERE seq = $2 AND NOT processed FOR UPDATE)
         UPDATE events SET processed = TRUE, customer = $1
         FROM target
         WHERE events.seq = target.seq
             AND NOT EXISTS (SELECT 1 FROM events AS earlier
                 WHERE NOT earlier.processed AND earlier.seq < $2
                     AND earlier.customer IN ($1, target.customer))",
    )
    .bind(profile)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    if consumed.rows_affected() == 1 {
        return Ok(());
    }
    // Not consumed: handled already, or behind an earlier event (its row is locked now).
    let addressed: Option<String> =
        sqlx::query_scalar("SELECT customer FROM events WHERE seq = $1 AND NOT processed")
            .bind(seq)
            .fetch_optional(&mut **tx)
            .await?;
    Err(match addressed {
        None => Error::Handled(seq),
        Some(customer) => Error::Behind { customer, seq },
    })
}

/// The rows of one commit, written into `tx`; see [`Store::commit`].
async fn write_commit(tx: &mut Transaction<'static, Postgres>, commit: Commit<'_>) -> Result<()> {
    let profile = &commit.state.profile;
    if let Some(seq) = commit.event {
        consume_event(tx, &profile.id, seq).await?;
    }
    if let Some(id) = commit.message_id
        && tables::keep_message_id(id, commit.now)
            .fetch_optional(&mut **tx)
            .await?
            .is_none()
    {
        return Err(Error::Repeated(id.to_owned()));
    }
    let now = nanos(commit.now);
    // Existing rows have revision >= 1, so a new customer's commit (revision 0) that
    // finds the row already there updates nothing, like a stale one.
    let saved = sqlx::query(
        "INSERT INTO profiles (id, traits, segments, enrollment_seq, revision, updated_at)
             VALUES ($1, $4, $5, $6, 1, $3)
             ON CONFLICT (id) DO UPDATE SET traits = EXCLUDED.traits,
                 segments = EXCLUDED.segments, enrollment_seq = EXCLUDED.enrollment_seq,
                 revision = profiles.revision + 1, updated_at = EXCLUDED.updated_at
             WHERE profiles.revision = $2 AND profiles.merged_into IS NULL",
    )
    .bind(&profile.id)
    .bind(commit.revision)
    .bind(now)
    .bind(json_text(&profile.traits))
    .bind(json_text(&profile.segments))
    .bind(i64::try_from(profile.enrollment_seq).unwrap_or(i64::MAX))
    .execute(&mut **tx)
    .await?;
    if saved.rows_affected() == 0 {
        return Err(Error::Conflict(profile.id.clone()));
    }
    if let Some((other, revision)) = commit.merged {
        merge(tx, other, revision, &profile.id, now).await?;
    }
    for (ord, e) in commit.state.enrollments.iter().enumerate() {
        tables::save_enrollment(&profile.id, ord, e)
            .execute(&mut **tx)
            .await?;
    }
    for statement in commit
        .effects
        .iter()
        .flat_map(|e| tables::record_effect(e, commit.claim_until))
    {
        statement.execute(&mut **tx).await?;
    }
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn resolve(&self, id: &str) -> Result<String> {
        resolve_in(&self.pool, id).await
    }

    async fn load_customer(&self, id: &str) -> Result<Customer> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let id = resolve_in(&mut *tx, id).await?;
        let profile = sqlx::query(
            "SELECT traits, segments, enrollment_seq, revision FROM profiles WHERE id = $1",
        )
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(profile) = profile else {
            return Ok(Customer::unstored(id));
        };
        let events = sqlx::query(
            "SELECT seq, customer, name, at, properties, message_id, processed FROM events
             WHERE customer = $1 AND processed ORDER BY at, seq",
        )
        .bind(&id)
        .fetch_all(&mut *tx)
        .await?;
        let sent = sqlx::query(
            "SELECT at, channel FROM message_log
             WHERE customer = $1 AND outcome = 'sent' AND channel IS NOT NULL ORDER BY at",
        )
        .bind(&id)
        .fetch_all(&mut *tx)
        .await?;
        let enrollments = sqlx::query("SELECT * FROM enrollments WHERE customer = $1 ORDER BY ord")
            .bind(&id)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        tables::customer(id, &profile, &events, &sent, &enrollments)
    }

    async fn commit(&self, commit: Commit<'_>) -> Result<()> {
        self.save(commit)
            .await
            .map_err(|e| contention_as_conflict(e, &commit.state.profile.id))
    }

    async fn ingest_event(&self, event: &NewEvent, now: DateTime<Utc>) -> Result<Ingested> {
        ingest_in(&self.pool, event, now).await
    }

    async fn ingest_many(&self, events: &[NewEvent], now: DateTime<Utc>) -> Vec<Result<Ingested>> {
        if events.len() > 1
            && let Ok(results) = self.ingest_together(events, now).await
        {
            return results.into_iter().map(Ok).collect();
        }
        crate::ingest_each(self, events, now).await
    }

    async fn inbox(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT seq, customer, name, at, properties, message_id, processed FROM events
             WHERE NOT processed AND seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tables::stored_event).collect()
    }

    async fn unhandled_before(&self, customer: &str, seq: i64) -> Result<Vec<StoredEvent>> {
        let rows = tables::unhandled_before(customer, seq)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tables::stored_event).collect()
    }

    async fn recent_events(&self, customer: &str, limit: u32) -> Result<Vec<StoredEvent>> {
        let customer = resolve_in(&self.pool, customer).await?;
        let rows = tables::recent_events(&customer, limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tables::stored_event).collect()
    }

    async fn due_timers(
        &self,
        now: DateTime<Utc>,
        after: Option<&DueTimer>,
        limit: u32,
    ) -> Result<Vec<DueTimer>> {
        let rows = tables::due_timers(now, after, limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tables::due_timer).collect()
    }

    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        lease: chrono::TimeDelta,
        limit: u32,
        busy: &[String],
    ) -> Result<Vec<OutboxMessage>> {
        let rows = sqlx::query(
            "WITH due AS MATERIALIZED (
                 SELECT idempotency_key FROM outbox
                 WHERE status = 'pending' AND next_attempt_at <= $2 AND channel <> ALL($4)
                 ORDER BY next_attempt_at LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             UPDATE outbox SET attempts = outbox.attempts + 1, next_attempt_at = $1
             FROM due WHERE outbox.idempotency_key = due.idempotency_key
             RETURNING outbox.*",
        )
        .bind(nanos(now + lease))
        .bind(nanos(now))
        .bind(i64::from(limit))
        .bind(busy)
        .fetch_all(&self.pool)
        .await?;
        tables::claimed(&rows)
    }

    async fn release_claims(&self, now: DateTime<Utc>, lease: chrono::TimeDelta) -> Result<u64> {
        let released = tables::release_claims(now, lease)
            .execute(&self.pool)
            .await?;
        Ok(released.rows_affected())
    }

    async fn outbox_sent(
        &self,
        key: &str,
        provider_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        tables::outbox_sent(key, provider_id, now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_retry(
        &self,
        key: &str,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<()> {
        tables::outbox_retry(key, error, next_attempt_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_failed(&self, key: &str, error: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "WITH failed AS (
                 UPDATE outbox SET status = 'failed', last_error = $2, done_at = $3
                 WHERE idempotency_key = $1 AND status = 'pending')
             UPDATE message_log SET outcome = 'failed', reason = $2 WHERE idempotency_key = $1",
        )
        .bind(key)
        .bind(error)
        .bind(nanos(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn outbox_expired(&self, keys: &[&str], now: DateTime<Utc>) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let (outcome, reason) = tables::expired_outcome();
        // The outbox row is updated (and locked) first, and only while still pending: a
        // replica recording it sent or failed meanwhile wins, and its log row stays.
        let expired = sqlx::query(
            "WITH expired AS (
                 UPDATE outbox SET status = $2, last_error = $3, done_at = $4
                 WHERE idempotency_key = ANY($1) AND status = 'pending'
                 RETURNING idempotency_key)
             UPDATE message_log SET outcome = $2, reason = $3
             FROM expired WHERE message_log.idempotency_key = expired.idempotency_key",
        )
        .bind(keys)
        .bind(outcome)
        .bind(reason)
        .bind(nanos(now))
        .execute(&self.pool)
        .await?;
        Ok(expired.rows_affected())
    }

    async fn recent_messages(&self, customer: &str, limit: u32) -> Result<Vec<LoggedMessage>> {
        let customer = resolve_in(&self.pool, customer).await?;
        let rows = tables::recent_messages(&customer, limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tables::logged_message).collect()
    }

    async fn find_sent_message(
        &self,
        channel: &str,
        provider_id: Option<&str>,
        address: Option<&str>,
    ) -> Result<Option<SentRef>> {
        let Some(query) = tables::find_sent_message(channel, provider_id, address) else {
            return Ok(None);
        };
        let row = query.fetch_optional(&self.pool).await?;
        row.as_ref().map(tables::sent_ref).transpose()
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String> {
        let row = tables::setting_or_insert(name, value)
            .fetch_one(&self.pool)
            .await?;
        row.text("value")
    }

    async fn record_journey_version(
        &self,
        journey: &str,
        version: &str,
        files: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        tables::record_journey_version(journey, version, files, now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn journey_version_files(
        &self,
        journey: &str,
        version: &str,
    ) -> Result<Option<BTreeMap<String, String>>> {
        let row = tables::journey_version_files(journey, version)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tables::version_files).transpose()
    }

    async fn active_versions(&self) -> Result<Vec<(String, String)>> {
        let rows = tables::active_versions().fetch_all(&self.pool).await?;
        rows.iter().map(tables::active_version).collect()
    }

    async fn journey_counts(&self, journey: &str) -> Result<JourneyCounts> {
        let rows = tables::count_enrollments(journey)
            .fetch_all(&self.pool)
            .await?;
        tables::journey_counts(&rows)
    }

    async fn journey_versions(&self, journey: &str) -> Result<Vec<JourneyVersion>> {
        let rows = tables::journey_versions(journey)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tables::journey_version).collect()
    }

    async fn customer_ids(&self, after: &str, limit: u32) -> Result<Vec<String>> {
        let rows = tables::customer_ids(after, limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| row.text("id")).collect()
    }

    async fn schedule_tick(&self, journey: &str) -> Result<Option<DateTime<Utc>>> {
        let row = tables::schedule_tick(journey)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tables::tick).transpose()
    }

    async fn set_schedule_tick(&self, journey: &str, next: DateTime<Utc>) -> Result<()> {
        tables::set_schedule_tick(journey, next)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn prune(&self, now: DateTime<Utc>) -> Result<u64> {
        let done = tables::prune(now).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    async fn depths(&self) -> Result<Depths> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM outbox WHERE status = 'pending') AS outbox,
                    (SELECT COUNT(*) FROM events WHERE NOT processed) AS inbox,
                    (SELECT COUNT(*) FROM enrollments WHERE status = 'active') AS active",
        )
        .fetch_one(&self.pool)
        .await?;
        tables::depths(&row)
    }
}
