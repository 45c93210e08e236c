//! The embedded backend: one SQLite file in WAL mode.
//!
//! Commits go through a single writer connection (SQLite serialises writers anyway; one
//! connection makes that explicit and spares `SQLITE_BUSY` retries), reads through a small
//! pool that WAL lets run beside the writer. `synchronous = NORMAL` in WAL mode keeps every
//! committed transaction across a process crash; only a power loss may drop the last few,
//! which is the usual trade for an embedded store.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use crate::codec::{MAX_ALIAS_HOPS, json_text, nanos};
use crate::tables::Columns as _;
use crate::{
    Commit, Customer, Depths, DueTimer, Error, Ingested, JourneyCounts, JourneyVersion,
    LoggedMessage, NewEvent, OutboxMessage, Result, SentRef, Store, StoredEvent, tables,
};

mod batch;

/// Rows a connection's thread may hand over before the reader takes them. Batches read
/// and return hundreds of rows per statement; with sqlx's 50 the thread would stop and
/// wait to be woken every 50 rows.
const ROW_BUFFER: usize = 4096;

/// The embedded store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

/// The migrations; the PostgreSQL backend's have the same version numbers and meaning.
fn migrator() -> Migrator {
    crate::embedded_migrator(&[
        (
            1,
            "init",
            include_str!("../migrations/sqlite/0001_init.sql"),
        ),
        (
            2,
            "receipts",
            include_str!("../migrations/sqlite/0002_receipts.sql"),
        ),
        (
            3,
            "settings",
            include_str!("../migrations/sqlite/0003_settings.sql"),
        ),
        (
            4,
            "wake_index",
            include_str!("../migrations/sqlite/0004_wake_index.sql"),
        ),
        (
            5,
            "unhandled_index",
            include_str!("../migrations/sqlite/0005_unhandled_index.sql"),
        ),
    ])
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path` or
    /// `sqlite::memory:` is not supported: the reader pool would see another database) and
    /// brings its schema up to date.
    ///
    /// # Errors
    /// [`Error::Setup`] when the file cannot be opened or migrated.
    pub async fn open(url: &str) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Setup(format!("`{url}`: {e}")))?;
        Self::open_with(options).await
    }

    /// Opens the database file at `path`; see [`SqliteStore::open`].
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub async fn open_path(path: &Path) -> Result<SqliteStore> {
        Self::open_with(SqliteConnectOptions::new().filename(path)).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<SqliteStore> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .row_buffer_size(ROW_BUFFER);
        let setup = |e: sqlx::Error| Error::Setup(e.to_string());
        // The writer touches every table's indexes at random customers: a page cache
        // (16 MB rather than SQLite's 2 MB) that holds their upper levels spares it a
        // read from the file for most rows. A larger one is not worth its memory: 64 MB
        // made the daemon benchmark no faster at a million customers and slower at
        // 200,000, as SQLite scans the cache's whole hash table at the end of each write
        // transaction.
        //
        // Statement journals in memory: a batch commit wraps each customer in a
        // savepoint, and every page it first touches is copied to the statement journal,
        // by default a temporary file created and unlinked again and again.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", "-16384")
                    .pragma("temp_store", "memory"),
            )
            .await
            .map_err(setup)?;
        migrator()
            .run(&writer)
            .await
            .map_err(|e| Error::Setup(format!("migrating: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(setup)?;
        Ok(SqliteStore { writer, reader })
    }

    /// Closes both pools, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    /// The store behind a trait object, as the daemon holds it.
    pub fn shared(self) -> Arc<dyn Store> {
        Arc::new(self)
    }

    async fn resolve_in(&self, id: &str) -> Result<String> {
        let mut id = id.to_owned();
        for _ in 0..MAX_ALIAS_HOPS {
            let next: Option<Option<String>> =
                sqlx::query_scalar("SELECT merged_into FROM profiles WHERE id = ?")
                    .bind(&id)
                    .fetch_optional(&self.reader)
                    .await?;
            match next.flatten() {
                Some(next) => id = next,
                None => return Ok(id),
            }
        }
        Err(Error::Corrupt(format!("alias chain from `{id}` loops")))
    }
}

/// Writes one commit's rows on `tx`, the writer inside a transaction; see
/// [`Store::commit`]. A refusal ([`Error::Conflict`], [`Error::Handled`]) may come after
/// some of its rows were written: the caller rolls back.
async fn write_commit(tx: &mut SqliteConnection, commit: Commit<'_>) -> Result<()> {
    let profile = &commit.state.profile;
    if let Some(seq) = commit.event {
        let done = sqlx::query(
            "UPDATE events SET processed = 1, customer = ? WHERE seq = ? AND processed = 0",
        )
        .bind(&profile.id)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::Handled(seq));
        }
    }
    if let Some(id) = commit.message_id
        && tables::keep_message_id(id, commit.now)
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
    {
        return Err(Error::Repeated(id.to_owned()));
    }
    let now = nanos(commit.now);
    let saved = if commit.revision == 0 {
        sqlx::query(
            "INSERT INTO profiles (id, traits, segments, enrollment_seq, revision, updated_at)
             VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&profile.id)
        .bind(json_text(&profile.traits))
        .bind(json_text(&profile.segments))
        .bind(i64::try_from(profile.enrollment_seq).unwrap_or(i64::MAX))
        .bind(now)
        .execute(&mut *tx)
        .await?
    } else {
        sqlx::query(
            "UPDATE profiles SET traits = ?, segments = ?, enrollment_seq = ?,
                 revision = revision + 1, updated_at = ?
             WHERE id = ? AND revision = ? AND merged_into IS NULL",
        )
        .bind(json_text(&profile.traits))
        .bind(json_text(&profile.segments))
        .bind(i64::try_from(profile.enrollment_seq).unwrap_or(i64::MAX))
        .bind(now)
        .bind(&profile.id)
        .bind(commit.revision)
        .execute(&mut *tx)
        .await?
    };
    if saved.rows_affected() == 0 {
        return Err(Error::Conflict(profile.id.clone()));
    }

    if let Some((other, revision)) = commit.merged {
        let redirected = if revision == 0 {
            sqlx::query(
                "INSERT INTO profiles (id, merged_into, updated_at) VALUES (?, ?, ?)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(other)
            .bind(&profile.id)
            .bind(now)
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query(
                "UPDATE profiles SET merged_into = ?, revision = revision + 1, updated_at = ?
                 WHERE id = ? AND revision = ? AND merged_into IS NULL",
            )
            .bind(&profile.id)
            .bind(now)
            .bind(other)
            .bind(revision)
            .execute(&mut *tx)
            .await?
        };
        if redirected.rows_affected() == 0 {
            return Err(Error::Conflict(other.to_owned()));
        }
        // Unhandled inbox events keep their address: they are resolved when handled.
        for table in [
            "UPDATE events SET customer = ? WHERE customer = ? AND processed = 1",
            "UPDATE message_log SET customer = ? WHERE customer = ?",
            "UPDATE outbox SET customer = ? WHERE customer = ?",
        ] {
            sqlx::query(table)
                .bind(&profile.id)
                .bind(other)
                .execute(&mut *tx)
                .await?;
        }
    }

    for (ord, e) in commit.state.enrollments.iter().enumerate() {
        tables::save_enrollment(&profile.id, ord, e)
            .execute(&mut *tx)
            .await?;
    }
    for statement in commit
        .effects
        .iter()
        .flat_map(|e| tables::record_effect(e, commit.claim_until))
    {
        statement.execute(&mut *tx).await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn resolve(&self, id: &str) -> Result<String> {
        self.resolve_in(id).await
    }

    async fn resolve_many(&self, ids: &[String]) -> Vec<Result<String>> {
        match batch::resolve_many(self, ids).await {
            Ok(resolved) => resolved,
            // Database trouble: one by one, so that each id gets its own result.
            Err(_) => {
                let mut resolved = Vec::with_capacity(ids.len());
                for id in ids {
                    resolved.push(self.resolve_in(id).await);
                }
                resolved
            }
        }
    }

    async fn load_many(&self, ids: &[String]) -> Vec<Result<Customer>> {
        match batch::load_many(self, ids).await {
            Ok(customers) => customers,
            Err(_) => {
                let mut customers = Vec::with_capacity(ids.len());
                for id in ids {
                    customers.push(self.load_customer(id).await);
                }
                customers
            }
        }
    }

    async fn load_customer(&self, id: &str) -> Result<Customer> {
        let id = self.resolve_in(id).await?;
        let Some(profile) = sqlx::query(
            "SELECT traits, segments, enrollment_seq, revision FROM profiles WHERE id = ?",
        )
        .bind(&id)
        .fetch_optional(&self.reader)
        .await?
        else {
            return Ok(Customer::unstored(id));
        };

        let events = sqlx::query(
            "SELECT seq, customer, name, at, properties, message_id, processed FROM events
             WHERE customer = ? AND processed = 1 ORDER BY at, seq",
        )
        .bind(&id)
        .fetch_all(&self.reader)
        .await?;

        let sent = sqlx::query(
            "SELECT at, channel FROM message_log
             WHERE customer = ? AND outcome = 'sent' AND channel IS NOT NULL ORDER BY at",
        )
        .bind(&id)
        .fetch_all(&self.reader)
        .await?;
        let enrollments = sqlx::query("SELECT * FROM enrollments WHERE customer = ? ORDER BY ord")
            .bind(&id)
            .fetch_all(&self.reader)
            .await?;
        tables::customer(id, &profile, &events, &sent, &enrollments)
    }

    async fn commit(&self, commit: Commit<'_>) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        match write_commit(&mut tx, commit).await {
            Ok(()) => Ok(tx.commit().await?),
            Err(refused) => {
                tx.rollback().await?;
                Err(refused)
            }
        }
    }

    /// One transaction for the batch; see [`batch::commit_pass`]. A refusal found after
    /// the refused commit wrote rows (an event handled meanwhile, which is rare) rolls the
    /// transaction back, and the batch is written again without it.
    async fn commit_many(&self, commits: &[Commit<'_>]) -> Vec<Result<()>> {
        let mut refused: Vec<Option<Error>> = commits.iter().map(|_| None).collect();
        let mut committed = false;
        if commits.len() > 1 {
            for _ in 0..commits.len() {
                match batch::commit_pass(self, commits, &mut refused).await {
                    Ok(batch::Pass::Committed) => {
                        committed = true;
                        break;
                    }
                    Ok(batch::Pass::Again) => {}
                    Err(_) => break,
                }
            }
        }
        let mut results = Vec::with_capacity(commits.len());
        for (commit, refusal) in commits.iter().zip(refused) {
            results.push(match refusal {
                Some(refusal) => Err(refusal),
                None if committed => Ok(()),
                // Database trouble (or a lone commit): one transaction each, so that every
                // commit gets its own result.
                None => self.commit(*commit).await,
            });
        }
        results
    }

    async fn ingest_event(&self, event: &NewEvent, now: DateTime<Utc>) -> Result<Ingested> {
        let mut tx = self.writer.begin().await?;
        if let Some(message_id) = &event.message_id
            && tables::keep_message_id(message_id, now)
                .fetch_optional(&mut *tx)
                .await?
                .is_none()
        {
            return Ok(Ingested::Duplicate);
        }
        let insert = sqlx::query(
            "INSERT INTO events (customer, name, at, properties, message_id, received_at)
             VALUES (?, ?, ?, ?, ?, ?) RETURNING seq",
        );
        let seq: i64 = tables::bind_event(insert, event, nanos(now))
            .fetch_one(&mut *tx)
            .await?
            .try_get("seq")?;
        tx.commit().await?;
        Ok(Ingested::Accepted(seq))
    }

    async fn ingest_many(&self, events: &[NewEvent], now: DateTime<Utc>) -> Vec<Result<Ingested>> {
        if events.len() > 1
            && let Ok(results) = batch::ingest_many(self, events, now).await
        {
            return results;
        }
        crate::ingest_each(self, events, now).await
    }

    async fn inbox(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT seq, customer, name, at, properties, message_id, processed FROM events
             WHERE processed = 0 AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(tables::stored_event).collect()
    }

    async fn unhandled_before(&self, customer: &str, seq: i64) -> Result<Vec<StoredEvent>> {
        let rows = tables::unhandled_before(customer, seq)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(tables::stored_event).collect()
    }

    async fn recent_events(&self, customer: &str, limit: u32) -> Result<Vec<StoredEvent>> {
        let customer = self.resolve_in(customer).await?;
        let rows = tables::recent_events(&customer, limit)
            .fetch_all(&self.reader)
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
            .fetch_all(&self.reader)
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
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?
             WHERE idempotency_key IN (
                 SELECT idempotency_key FROM outbox
                 WHERE status = 'pending' AND next_attempt_at <= ?
                     AND channel NOT IN (SELECT value FROM json_each(?))
                 ORDER BY next_attempt_at LIMIT ?)
             RETURNING *",
        )
        .bind(nanos(now + lease))
        .bind(nanos(now))
        .bind(json_text(&busy))
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        tables::claimed(&rows)
    }

    async fn release_claims(&self, now: DateTime<Utc>, lease: chrono::TimeDelta) -> Result<u64> {
        let released = tables::release_claims(now, lease)
            .execute(&self.writer)
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
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn outbox_sent_many(
        &self,
        sent: &[(&str, Option<&str>)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        batch::outbox_sent_many(self, sent, now).await
    }

    async fn outbox_retry(
        &self,
        key: &str,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<()> {
        tables::outbox_retry(key, error, next_attempt_at)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn outbox_failed(&self, key: &str, error: &str, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "UPDATE outbox SET status = 'failed', last_error = ?, done_at = ?
             WHERE idempotency_key = ? AND status = 'pending'",
        )
        .bind(error)
        .bind(nanos(now))
        .bind(key)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE message_log SET outcome = 'failed', reason = ? WHERE idempotency_key = ?",
        )
        .bind(error)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn outbox_expired(&self, keys: &[&str], now: DateTime<Utc>) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let (outcome, reason) = tables::expired_outcome();
        let mut tx = self.writer.begin().await?;
        let expired: Vec<String> = sqlx::query_scalar(
            "UPDATE outbox SET status = ?, last_error = ?, done_at = ?
             WHERE idempotency_key IN (SELECT value FROM json_each(?)) AND status = 'pending'
             RETURNING idempotency_key",
        )
        .bind(outcome)
        .bind(reason)
        .bind(nanos(now))
        .bind(json_text(&keys))
        .fetch_all(&mut *tx)
        .await?;
        if !expired.is_empty() {
            sqlx::query(
                "UPDATE message_log SET outcome = ?, reason = ?
                 WHERE idempotency_key IN (SELECT value FROM json_each(?))",
            )
            .bind(outcome)
            .bind(reason)
            .bind(json_text(&expired))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(u64::try_from(expired.len()).unwrap_or(u64::MAX))
    }

    async fn recent_messages(&self, customer: &str, limit: u32) -> Result<Vec<LoggedMessage>> {
        let customer = self.resolve_in(customer).await?;
        let rows = tables::recent_messages(&customer, limit)
            .fetch_all(&self.reader)
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
        let row = query.fetch_optional(&self.reader).await?;
        row.as_ref().map(tables::sent_ref).transpose()
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String> {
        let row = tables::setting_or_insert(name, value)
            .fetch_one(&self.writer)
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
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn journey_version_files(
        &self,
        journey: &str,
        version: &str,
    ) -> Result<Option<BTreeMap<String, String>>> {
        let row = tables::journey_version_files(journey, version)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(tables::version_files).transpose()
    }

    async fn active_versions(&self) -> Result<Vec<(String, String)>> {
        let rows = tables::active_versions().fetch_all(&self.reader).await?;
        rows.iter().map(tables::active_version).collect()
    }

    async fn journey_counts(&self, journey: &str) -> Result<JourneyCounts> {
        let rows = tables::count_enrollments(journey)
            .fetch_all(&self.reader)
            .await?;
        tables::journey_counts(&rows)
    }

    async fn journey_versions(&self, journey: &str) -> Result<Vec<JourneyVersion>> {
        let rows = tables::journey_versions(journey)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(tables::journey_version).collect()
    }

    async fn customer_ids(&self, after: &str, limit: u32) -> Result<Vec<String>> {
        let rows = tables::customer_ids(after, limit)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(|row| row.text("id")).collect()
    }

    async fn schedule_tick(&self, journey: &str) -> Result<Option<DateTime<Utc>>> {
        let row = tables::schedule_tick(journey)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(tables::tick).transpose()
    }

    async fn set_schedule_tick(&self, journey: &str, next: DateTime<Utc>) -> Result<()> {
        tables::set_schedule_tick(journey, next)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn prune(&self, now: DateTime<Utc>) -> Result<u64> {
        let done = tables::prune(now).execute(&self.writer).await?;
        Ok(done.rows_affected())
    }

    async fn depths(&self) -> Result<Depths> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM outbox WHERE status = 'pending') AS outbox,
                    (SELECT COUNT(*) FROM events WHERE processed = 0) AS inbox,
                    (SELECT COUNT(*) FROM enrollments WHERE status = 'active') AS active",
        )
        .fetch_one(&self.reader)
        .await?;
        tables::depths(&row)
    }
}
