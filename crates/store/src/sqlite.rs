//! The embedded backend: one SQLite file in WAL mode.
//!
//! Commits go through a single writer connection (SQLite serialises writers anyway; one
//! connection makes that explicit and spares `SQLITE_BUSY` retries), reads through a small
//! pool that WAL lets run beside the writer. `synchronous = NORMAL` in WAL mode keeps every
//! committed transaction across a process crash; only a power loss may drop the last few,
//! which is the usual trade for an embedded store.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlStr};
use waymark_journey::StepIdx;
use waymark_scheduler::{
    CustomerState, Effect, Enrollment, Event, Profile, SendOutcome, SentMessage,
};

use crate::codec::{
    bools, count, instant, json_text, nanos, object, send_outcome, status, status_text, strings,
};
use crate::{
    Commit, Customer, DEDUP_WINDOW, Depths, DueTimer, Error, Ingested, JourneyCounts,
    LoggedMessage, NewEvent, OutboxMessage, Result, SentRef, Store, StoredEvent,
};

mod batch;

/// How many alias redirects are followed before the chain is taken for a cycle.
const MAX_ALIAS_HOPS: usize = 64;

/// The embedded store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

/// The migrations, embedded so the binary needs no files beside it. The PostgreSQL
/// backend uses the same version numbers.
fn migrator() -> Migrator {
    let migration = |version, name, sql| {
        Migration::new(
            version,
            Cow::Borrowed(name),
            MigrationType::Simple,
            SqlStr::from_static(sql),
            false,
        )
    };
    Migrator::with_migrations(vec![
        migration(
            1,
            "init",
            include_str!("../migrations/sqlite/0001_init.sql"),
        ),
        migration(
            2,
            "receipts",
            include_str!("../migrations/sqlite/0002_receipts.sql"),
        ),
        migration(
            3,
            "wake_index",
            include_str!("../migrations/sqlite/0003_wake_index.sql"),
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
            .busy_timeout(Duration::from_secs(10));
        let setup = |e: sqlx::Error| Error::Setup(e.to_string());
        // The writer touches every table's indexes at random customers: a page cache
        // (64 MB rather than SQLite's 2 MB) that holds their upper levels spares it a
        // read from the file for most rows.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone().pragma("cache_size", "-65536"))
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

fn enrollment(row: &SqliteRow) -> Result<Enrollment> {
    let step: i64 = row.try_get("step")?;
    Ok(Enrollment {
        id: row.try_get("id")?,
        journey: row.try_get("journey")?,
        version: row.try_get("version")?,
        key: row.try_get("key")?,
        step: StepIdx(usize::try_from(step).map_err(|_| Error::Corrupt("step".to_owned()))?),
        status: status(row.try_get("status")?, row.try_get("ended_at")?)?,
        wake: row.try_get::<Option<i64>, _>("wake_at")?.map(instant),
        trigger: object(row.try_get("trigger_data")?, "enrollments.trigger_data")?,
        event: object(row.try_get("event_data")?, "enrollments.event_data")?,
        variant: row.try_get("variant")?,
        control: row.try_get::<i64, _>("control")? != 0,
        entered_at: instant(row.try_get("entered_at")?),
        sends: u32::try_from(row.try_get::<i64, _>("sends")?)
            .map_err(|_| Error::Corrupt("sends".to_owned()))?,
    })
}

fn stored_event(row: &SqliteRow) -> Result<StoredEvent> {
    Ok(StoredEvent {
        seq: row.try_get("seq")?,
        customer: row.try_get("customer")?,
        event: Event {
            name: row.try_get("name")?,
            at: instant(row.try_get("at")?),
            properties: object(row.try_get("properties")?, "events.properties")?,
        },
        message_id: row.try_get("message_id")?,
        processed: row.try_get::<i64, _>("processed")? != 0,
    })
}

async fn save_enrollment(
    tx: &mut SqliteConnection,
    customer: &str,
    ord: usize,
    e: &Enrollment,
) -> Result<()> {
    let ended_at = match e.status {
        waymark_scheduler::Status::Ended { at, .. } => Some(nanos(at)),
        waymark_scheduler::Status::Active => None,
    };
    sqlx::query(
        "INSERT INTO enrollments (id, customer, ord, journey, version, key, step, status, wake_at,
             trigger_data, event_data, variant, control, entered_at, ended_at, sends)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET customer = excluded.customer, ord = excluded.ord,
             step = excluded.step, status = excluded.status, wake_at = excluded.wake_at,
             event_data = excluded.event_data, variant = excluded.variant,
             ended_at = excluded.ended_at, sends = excluded.sends",
    )
    .bind(&e.id)
    .bind(customer)
    .bind(i64::try_from(ord).unwrap_or(i64::MAX))
    .bind(&e.journey)
    .bind(&e.version)
    .bind(&e.key)
    .bind(i64::try_from(e.step.0).unwrap_or(i64::MAX))
    .bind(status_text(e.status))
    .bind(e.wake.map(nanos))
    .bind(json_text(&e.trigger))
    .bind(json_text(&e.event))
    .bind(&e.variant)
    .bind(i64::from(e.control))
    .bind(nanos(e.entered_at))
    .bind(ended_at)
    .bind(i64::from(e.sends))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn save_effect(tx: &mut SqliteConnection, effect: &Effect) -> Result<()> {
    let Effect::Message(m) = effect else {
        return Ok(());
    };
    let (outcome, reason) = send_outcome(m.outcome);
    sqlx::query(
        "INSERT INTO message_log (idempotency_key, customer, enrollment, journey, step, template,
             channel, variant, transactional, outcome, reason, at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(&m.idempotency_key)
    .bind(&m.customer)
    .bind(&m.enrollment)
    .bind(&m.journey)
    .bind(&m.step)
    .bind(&m.template)
    .bind(&m.channel)
    .bind(&m.variant)
    .bind(i64::from(m.transactional))
    .bind(outcome)
    .bind(reason)
    .bind(nanos(m.at))
    .execute(&mut *tx)
    .await?;
    if let (SendOutcome::Sent, Some(channel)) = (m.outcome, &m.channel) {
        sqlx::query(
            "INSERT INTO outbox (idempotency_key, channel, address, content, customer, journey,
                 step, template, status, attempts, next_attempt_at, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(&m.idempotency_key)
        .bind(channel)
        .bind(&m.address)
        .bind(json_text(&m.content))
        .bind(&m.customer)
        .bind(&m.journey)
        .bind(&m.step)
        .bind(&m.template)
        .bind(nanos(m.at))
        .bind(nanos(m.at))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Fills a profile from a `profiles` row; returns the row's revision.
fn read_profile(profile: &mut Profile, row: &SqliteRow) -> Result<i64> {
    profile.traits = object(row.try_get("traits")?, "profiles.traits")?;
    profile.segments = bools(row.try_get("segments")?, "profiles.segments")?;
    profile.enrollment_seq = count(row.try_get("enrollment_seq")?);
    Ok(row.try_get("revision")?)
}

fn sent_message(row: &SqliteRow) -> Result<SentMessage> {
    Ok(SentMessage {
        at: instant(row.try_get("at")?),
        channel: row.try_get("channel")?,
    })
}

/// Writes one commit's rows into `tx`; see [`Store::commit`]. A refusal
/// ([`Error::Conflict`], [`Error::Handled`]) may come after some of its rows were written:
/// the caller rolls the transaction back.
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
        save_enrollment(tx, &profile.id, ord, e).await?;
    }
    for effect in commit.effects {
        save_effect(tx, effect).await?;
    }
    Ok(())
}

/// Accepts one event into `tx`; see [`Store::ingest_event`].
async fn write_event(
    tx: &mut SqliteConnection,
    event: &NewEvent,
    now: DateTime<Utc>,
) -> Result<Ingested> {
    if let Some(message_id) = &event.message_id {
        let fresh = sqlx::query(
            "INSERT INTO message_ids (message_id, received_at) VALUES (?, ?)
             ON CONFLICT (message_id) DO UPDATE SET received_at = excluded.received_at
             WHERE message_ids.received_at < ?",
        )
        .bind(message_id)
        .bind(nanos(now))
        .bind(nanos(now - DEDUP_WINDOW))
        .execute(&mut *tx)
        .await?;
        if fresh.rows_affected() == 0 {
            return Ok(Ingested::Duplicate);
        }
    }
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (customer, name, at, properties, message_id, received_at)
         VALUES (?, ?, ?, ?, ?, ?) RETURNING seq",
    )
    .bind(&event.customer)
    .bind(&event.name)
    .bind(nanos(event.at))
    .bind(json_text(&event.properties))
    .bind(&event.message_id)
    .bind(nanos(now))
    .fetch_one(&mut *tx)
    .await?;
    Ok(Ingested::Accepted(seq))
}

#[async_trait]
impl Store for SqliteStore {
    async fn resolve(&self, id: &str) -> Result<String> {
        self.resolve_in(id).await
    }

    async fn resolve_many(&self, ids: &[String]) -> Vec<Result<String>> {
        match batch::resolve_many(self, ids).await {
            Ok(resolved) => resolved,
            Err(_) => {
                let mut resolved = Vec::with_capacity(ids.len());
                for id in ids {
                    resolved.push(self.resolve_in(id).await);
                }
                resolved
            }
        }
    }

    async fn load_customer(&self, id: &str) -> Result<Customer> {
        let id = self.resolve_in(id).await?;
        let mut state = CustomerState::new(id.clone());
        let Some(row) = sqlx::query(
            "SELECT traits, segments, enrollment_seq, revision FROM profiles WHERE id = ?",
        )
        .bind(&id)
        .fetch_optional(&self.reader)
        .await?
        else {
            return Ok(Customer { state, revision: 0 });
        };
        let revision = read_profile(&mut state.profile, &row)?;
        let profile = &mut state.profile;

        let events = sqlx::query(
            "SELECT seq, customer, name, at, properties, message_id, processed FROM events
             WHERE customer = ? AND processed = 1 ORDER BY at, seq",
        )
        .bind(&id)
        .fetch_all(&self.reader)
        .await?;
        let log = Arc::make_mut(&mut profile.history);
        for row in &events {
            log.push(stored_event(row)?.event);
        }

        let sent = sqlx::query(
            "SELECT at, channel FROM message_log
             WHERE customer = ? AND outcome = 'sent' AND channel IS NOT NULL ORDER BY at",
        )
        .bind(&id)
        .fetch_all(&self.reader)
        .await?;
        for row in &sent {
            profile.messages.push(sent_message(row)?);
        }

        let rows = sqlx::query("SELECT * FROM enrollments WHERE customer = ? ORDER BY ord")
            .bind(&id)
            .fetch_all(&self.reader)
            .await?;
        state.enrollments = rows.iter().map(enrollment).collect::<Result<_>>()?;
        Ok(Customer { state, revision })
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

    async fn commit(&self, commit: Commit<'_>) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        write_commit(&mut tx, commit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One transaction for the batch (see [`batch::commit_pass`]). A refusal that comes
    /// after the refused commit wrote rows (an event handled meanwhile, which is rare)
    /// rolls the transaction back and the batch is written again without it.
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
                // Database trouble (or a single commit): one transaction each, so that
                // every commit gets its own result.
                None => self.commit(*commit).await,
            });
        }
        results
    }

    async fn ingest_event(&self, event: &NewEvent, now: DateTime<Utc>) -> Result<Ingested> {
        let mut tx = self.writer.begin().await?;
        let ingested = write_event(&mut tx, event, now).await?;
        tx.commit().await?;
        Ok(ingested)
    }

    async fn ingest_many(&self, events: &[NewEvent], now: DateTime<Utc>) -> Vec<Result<Ingested>> {
        if events.len() > 1
            && let Ok(results) = batch::ingest_many(self, events, now).await
        {
            return results;
        }
        // One transaction each, so that a failure belongs to its own event.
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            results.push(self.ingest_event(event, now).await);
        }
        results
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
        rows.iter().map(stored_event).collect()
    }

    async fn recent_events(&self, customer: &str, limit: u32) -> Result<Vec<StoredEvent>> {
        let customer = self.resolve_in(customer).await?;
        let rows = sqlx::query(
            "SELECT seq, customer, name, at, properties, message_id, processed FROM events
             WHERE customer = ? ORDER BY at DESC, seq DESC LIMIT ?",
        )
        .bind(&customer)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(stored_event).collect()
    }

    async fn due_timers(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<DueTimer>> {
        self.due_timers_after(now, None, limit).await
    }

    async fn due_timers_after(
        &self,
        now: DateTime<Utc>,
        after: Option<&DueTimer>,
        limit: u32,
    ) -> Result<Vec<DueTimer>> {
        // The row value seeks straight into the (wake_at, id) index.
        let rows = sqlx::query(
            "SELECT customer, id, wake_at FROM enrollments
             WHERE wake_at IS NOT NULL AND wake_at <= ? AND status = 'active'
                 AND (wake_at, id) > (?, ?)
             ORDER BY wake_at, id LIMIT ?",
        )
        .bind(nanos(now))
        .bind(after.map_or(i64::MIN, |t| nanos(t.at)))
        .bind(after.map_or("", |t| t.enrollment.as_str()))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DueTimer {
                    customer: row.try_get("customer")?,
                    enrollment: row.try_get("id")?,
                    at: instant(row.try_get("wake_at")?),
                })
            })
            .collect()
    }

    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        lease: chrono::TimeDelta,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>> {
        self.claim_outbox_except(now, lease, limit, &[]).await
    }

    async fn claim_outbox_except(
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
        let mut claimed = rows
            .iter()
            .map(|row| {
                Ok(OutboxMessage {
                    idempotency_key: row.try_get("idempotency_key")?,
                    channel: row.try_get("channel")?,
                    address: row.try_get("address")?,
                    content: strings(row.try_get("content")?, "outbox.content")?,
                    customer: row.try_get("customer")?,
                    journey: row.try_get("journey")?,
                    step: row.try_get("step")?,
                    template: row.try_get("template")?,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                    created_at: instant(row.try_get("created_at")?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        claimed.sort_by_key(|m| m.created_at);
        Ok(claimed)
    }

    async fn outbox_sent(
        &self,
        key: &str,
        provider_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET status = 'sent', provider_id = ?, done_at = ?, last_error = NULL
             WHERE idempotency_key = ? AND status = 'pending'",
        )
        .bind(provider_id)
        .bind(nanos(now))
        .bind(key)
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
        sqlx::query(
            "UPDATE outbox SET next_attempt_at = ?, last_error = ?
             WHERE idempotency_key = ? AND status = 'pending'",
        )
        .bind(nanos(next_attempt_at))
        .bind(error)
        .bind(key)
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

    async fn recent_messages(&self, customer: &str, limit: u32) -> Result<Vec<LoggedMessage>> {
        let customer = self.resolve_in(customer).await?;
        let rows = sqlx::query(
            "SELECT m.*, o.status AS delivery, o.provider_id AS provider_id
             FROM message_log m LEFT JOIN outbox o ON o.idempotency_key = m.idempotency_key
             WHERE m.customer = ? ORDER BY m.at DESC, m.idempotency_key DESC LIMIT ?",
        )
        .bind(&customer)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LoggedMessage {
                    idempotency_key: row.try_get("idempotency_key")?,
                    enrollment: row.try_get("enrollment")?,
                    journey: row.try_get("journey")?,
                    step: row.try_get("step")?,
                    template: row.try_get("template")?,
                    channel: row.try_get("channel")?,
                    variant: row.try_get("variant")?,
                    outcome: row.try_get("outcome")?,
                    reason: row.try_get("reason")?,
                    at: instant(row.try_get("at")?),
                    delivery: row.try_get("delivery")?,
                    provider_id: row.try_get("provider_id")?,
                })
            })
            .collect()
    }

    async fn find_sent_message(
        &self,
        channel: &str,
        provider_id: Option<&str>,
        address: Option<&str>,
    ) -> Result<Option<SentRef>> {
        let row = match (provider_id, address) {
            (Some(id), _) => {
                sqlx::query(
                    "SELECT idempotency_key, customer, journey, step FROM outbox
                     WHERE channel = ? AND provider_id = ? LIMIT 1",
                )
                .bind(channel)
                .bind(id)
                .fetch_optional(&self.reader)
                .await?
            }
            (None, Some(address)) => {
                sqlx::query(
                    "SELECT idempotency_key, customer, journey, step FROM outbox
                     WHERE channel = ? AND address = ? AND status = 'sent'
                     ORDER BY created_at DESC LIMIT 1",
                )
                .bind(channel)
                .bind(address)
                .fetch_optional(&self.reader)
                .await?
            }
            (None, None) => None,
        };
        row.map(|row| {
            Ok(SentRef {
                idempotency_key: row.try_get("idempotency_key")?,
                customer: row.try_get("customer")?,
                journey: row.try_get("journey")?,
                step: row.try_get("step")?,
            })
        })
        .transpose()
    }

    async fn record_journey_version(
        &self,
        journey: &str,
        version: &str,
        files: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO journey_versions (journey, version, files, loaded_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (journey, version) DO NOTHING",
        )
        .bind(journey)
        .bind(version)
        .bind(json_text(files))
        .bind(nanos(now))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn journey_version_files(
        &self,
        journey: &str,
        version: &str,
    ) -> Result<Option<BTreeMap<String, String>>> {
        let files: Option<String> = sqlx::query_scalar(
            "SELECT files FROM journey_versions WHERE journey = ? AND version = ?",
        )
        .bind(journey)
        .bind(version)
        .fetch_optional(&self.reader)
        .await?;
        files
            .map(|f| strings(&f, "journey_versions.files"))
            .transpose()
    }

    async fn active_versions(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT DISTINCT journey, version FROM enrollments WHERE status = 'active'
             ORDER BY journey, version",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("journey")?, row.try_get("version")?)))
            .collect()
    }

    async fn journey_counts(&self, journey: &str) -> Result<JourneyCounts> {
        let mut counts = JourneyCounts::default();
        let rows = sqlx::query(
            "SELECT version, step, status, variant, COUNT(*) AS n FROM enrollments
             WHERE journey = ? GROUP BY version, step, status, variant",
        )
        .bind(journey)
        .fetch_all(&self.reader)
        .await?;
        for row in &rows {
            let n = count(row.try_get("n")?);
            let status: String = row.try_get("status")?;
            if status == "active" {
                let step = usize::try_from(row.try_get::<i64, _>("step")?).unwrap_or(0);
                *counts
                    .active
                    .entry((row.try_get("version")?, step))
                    .or_default() += n;
            } else {
                *counts.outcomes.entry(status.clone()).or_default() += n;
            }
            if let Some(variant) = row.try_get::<Option<String>, _>("variant")? {
                *counts.variants.entry((variant, status)).or_default() += n;
            }
        }
        Ok(counts)
    }

    async fn customer_ids(&self, after: &str, limit: u32) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM profiles WHERE merged_into IS NULL AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?)
    }

    async fn schedule_tick(&self, journey: &str) -> Result<Option<DateTime<Utc>>> {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT next_at FROM schedule_ticks WHERE journey = ?")
                .bind(journey)
                .fetch_optional(&self.reader)
                .await?;
        Ok(at.map(instant))
    }

    async fn set_schedule_tick(&self, journey: &str, next: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "INSERT INTO schedule_ticks (journey, next_at) VALUES (?, ?)
             ON CONFLICT (journey) DO UPDATE SET next_at = excluded.next_at",
        )
        .bind(journey)
        .bind(nanos(next))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn prune(&self, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM message_ids WHERE received_at < ?")
            .bind(nanos(now - DEDUP_WINDOW))
            .execute(&self.writer)
            .await?;
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
        Ok(Depths {
            outbox_pending: count(row.try_get("outbox")?),
            inbox: count(row.try_get("inbox")?),
            active_enrollments: count(row.try_get("active")?),
        })
    }
}
