//! Many customers per statement: the bulk paths behind [`Store::load_many`],
//! [`Store::commit_many`], [`Store::ingest_many`] and [`Store::outbox_sent_many`].
//!
//! Each statement takes its rows as one JSON array bound to one parameter and read with
//! `json_each`: the SQL text stays fixed (prepared once and cached), any batch fits in one
//! bind, and one round trip to the connection's thread serves a whole batch. Through sqlx
//! a statement costs tens of microseconds of handing work between threads, more than
//! SQLite needs to write a row, so statements per customer, not rows, set the pace.
//!
//! Each function returns `Err` only for database trouble; the caller then does the work
//! one item at a time, so that every item gets its own result.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Acquire as _, Row};
use waymark_scheduler::{CustomerState, Effect, SendOutcome};

use super::{SqliteStore, enrollment, read_profile, sent_message, stored_event, write_commit};
use crate::codec::{json_text, nanos, send_outcome, status_text};
use crate::{Commit, Customer, DEDUP_WINDOW, Error, Ingested, NewEvent, Result};

/// What a customer's position in a `load_many` batch turned out to be.
enum Loaded {
    /// No profile row: a customer not stored yet.
    New,
    /// Merged away by an alias: loaded on its own, following the redirects.
    Redirected,
    Found(Customer),
}

pub(super) async fn load_many(
    store: &SqliteStore,
    ids: &[String],
) -> Result<Vec<Result<Customer>>> {
    let reader = &store.reader;
    let rows = sqlx::query(
        "SELECT j.key AS i, p.id AS id, p.merged_into AS merged_into, p.traits AS traits,
             p.segments AS segments, p.enrollment_seq AS enrollment_seq, p.revision AS revision
         FROM json_each(?) AS j LEFT JOIN profiles AS p ON p.id = j.value",
    )
    .bind(json_text(&ids))
    .fetch_all(reader)
    .await?;
    let mut loaded: Vec<Loaded> = ids.iter().map(|_| Loaded::New).collect();
    // Profile id -> its positions in `ids` (an id may be asked for twice).
    let mut found: HashMap<String, Vec<usize>> = HashMap::new();
    for row in &rows {
        let i = usize::try_from(row.try_get::<i64, _>("i")?)
            .map_err(|_| Error::Corrupt("json_each key".to_owned()))?;
        let Some(id) = row.try_get::<Option<String>, _>("id")? else {
            continue;
        };
        if row.try_get::<Option<String>, _>("merged_into")?.is_some() {
            loaded[i] = Loaded::Redirected;
            continue;
        }
        let mut state = CustomerState::new(id.clone());
        let revision = read_profile(&mut state.profile, row)?;
        loaded[i] = Loaded::Found(Customer { state, revision });
        found.entry(id).or_default().push(i);
    }

    if !found.is_empty() {
        let found_ids = json_text(&found.keys().collect::<Vec<_>>());
        let first = |customer: &str| found.get(customer).and_then(|at| at.first().copied());
        let events = sqlx::query(
            "SELECT seq, customer, name, at, properties, message_id, processed FROM events
             WHERE customer IN (SELECT value FROM json_each(?)) AND processed = 1
             ORDER BY customer, at, seq",
        )
        .bind(&found_ids)
        .fetch_all(reader)
        .await?;
        for row in &events {
            let event = stored_event(row)?;
            if let Some(i) = first(&event.customer)
                && let Loaded::Found(c) = &mut loaded[i]
            {
                Arc::make_mut(&mut c.state.profile.history).push(event.event);
            }
        }
        let sent = sqlx::query(
            "SELECT customer, at, channel FROM message_log
             WHERE customer IN (SELECT value FROM json_each(?)) AND outcome = 'sent'
                 AND channel IS NOT NULL
             ORDER BY customer, at",
        )
        .bind(&found_ids)
        .fetch_all(reader)
        .await?;
        for row in &sent {
            let customer: String = row.try_get("customer")?;
            if let Some(i) = first(&customer)
                && let Loaded::Found(c) = &mut loaded[i]
            {
                c.state.profile.messages.push(sent_message(row)?);
            }
        }
        let enrollments = sqlx::query(
            "SELECT * FROM enrollments WHERE customer IN (SELECT value FROM json_each(?))
             ORDER BY customer, ord",
        )
        .bind(&found_ids)
        .fetch_all(reader)
        .await?;
        for row in &enrollments {
            let customer: String = row.try_get("customer")?;
            if let Some(i) = first(&customer)
                && let Loaded::Found(c) = &mut loaded[i]
            {
                c.state.enrollments.push(enrollment(row)?);
            }
        }
        // An id asked for twice gets a copy of its first answer.
        for positions in found.values() {
            if let [first, rest @ ..] = positions.as_slice()
                && let Loaded::Found(c) = &loaded[*first]
            {
                let c = c.clone();
                for &i in rest {
                    loaded[i] = Loaded::Found(c.clone());
                }
            }
        }
    }

    let mut out = Vec::with_capacity(ids.len());
    for (id, loaded) in ids.iter().zip(loaded) {
        out.push(match loaded {
            Loaded::New => Ok(Customer {
                state: CustomerState::new(id.clone()),
                revision: 0,
            }),
            Loaded::Redirected => super::Store::load_customer(store, id).await,
            Loaded::Found(customer) => Ok(customer),
        });
    }
    Ok(out)
}

/// How one pass over a batch of commits ended.
pub(super) enum Pass {
    Committed,
    /// A commit was refused after some of its rows were written: the transaction was
    /// rolled back, and the batch is to be written again without it.
    Again,
}

/// One pass of [`Store::commit_many`]: every commit not yet refused (`refused[i]` is
/// `None`) is written, in one transaction; refusals are recorded in `refused`.
///
/// Commits whose customer appears only once in the batch (nearly all) are written with a
/// handful of bulk statements. The rest (alias merges, a customer twice) are written one
/// by one after them, each in a savepoint, so that their order and their refusals are
/// exactly those of single commits.
pub(super) async fn commit_pass(
    store: &SqliteStore,
    commits: &[Commit<'_>],
    refused: &mut [Option<Error>],
) -> Result<Pass> {
    let mut mentions: HashMap<&str, usize> = HashMap::new();
    for (i, c) in commits.iter().enumerate() {
        if refused[i].is_none() {
            *mentions.entry(c.state.profile.id.as_str()).or_default() += 1;
            if let Some((other, _)) = c.merged {
                *mentions.entry(other).or_default() += 1;
            }
        }
    }
    let (bulk, single): (Vec<usize>, Vec<usize>) = (0..commits.len())
        .filter(|&i| refused[i].is_none())
        .partition(|&i| {
            commits[i].merged.is_none() && mentions[commits[i].state.profile.id.as_str()] == 1
        });

    let mut tx = store.writer.begin().await?;
    let saved = save_profiles(&mut tx, commits, &bulk).await?;
    let mut written = Vec::with_capacity(bulk.len());
    for i in bulk {
        let id = &commits[i].state.profile.id;
        if saved.contains(id.as_str()) {
            written.push(i);
        } else {
            refused[i] = Some(Error::Conflict(id.clone()));
        }
    }
    let consumed = consume_events(&mut tx, commits, &written).await?;
    let mut again = false;
    for &i in &written {
        if let Some(seq) = commits[i].event
            && !consumed.contains(&seq)
        {
            refused[i] = Some(Error::Handled(seq));
            again = true;
        }
    }
    if again {
        tx.rollback().await?;
        return Ok(Pass::Again);
    }
    save_rows(&mut tx, commits, &written).await?;

    for i in single {
        let mut savepoint = tx.begin().await?;
        match write_commit(&mut savepoint, commits[i]).await {
            Ok(()) => savepoint.commit().await?,
            Err(e @ (Error::Conflict(_) | Error::Handled(_))) => {
                savepoint.rollback().await?;
                refused[i] = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    tx.commit().await?;
    Ok(Pass::Committed)
}

/// Updates (at the revision loaded) or creates the profile rows of `which`; returns the
/// ids saved. An id missing from the answer was changed by another writer meanwhile.
async fn save_profiles(
    tx: &mut SqliteConnection,
    commits: &[Commit<'_>],
    which: &[usize],
) -> Result<HashSet<String>> {
    let row = |c: &Commit<'_>| {
        let p = &c.state.profile;
        json!([
            p.id,
            c.revision,
            json_text(&p.traits),
            json_text(&p.segments),
            i64::try_from(p.enrollment_seq).unwrap_or(i64::MAX),
            nanos(c.now),
        ])
    };
    let (new, known): (Vec<usize>, Vec<usize>) =
        which.iter().partition(|&&i| commits[i].revision == 0);
    let mut saved = HashSet::with_capacity(which.len());
    if !known.is_empty() {
        let rows: Vec<Value> = known.iter().map(|&i| row(&commits[i])).collect();
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE profiles SET traits = j.value->>2, segments = j.value->>3,
                 enrollment_seq = j.value->>4, revision = revision + 1, updated_at = j.value->>5
             FROM json_each(?) AS j
             WHERE profiles.id = j.value->>0 AND profiles.revision = j.value->>1
                 AND profiles.merged_into IS NULL
             RETURNING profiles.id",
        )
        .bind(Value::Array(rows).to_string())
        .fetch_all(&mut *tx)
        .await?;
        saved.extend(ids);
    }
    if !new.is_empty() {
        let rows: Vec<Value> = new.iter().map(|&i| row(&commits[i])).collect();
        let ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO profiles (id, traits, segments, enrollment_seq, revision, updated_at)
             SELECT j.value->>0, j.value->>2, j.value->>3, j.value->>4, 1, j.value->>5
             FROM json_each(?) AS j WHERE true
             ON CONFLICT (id) DO NOTHING
             RETURNING id",
        )
        .bind(Value::Array(rows).to_string())
        .fetch_all(&mut *tx)
        .await?;
        saved.extend(ids);
    }
    Ok(saved)
}

/// Marks the inbox events of `which` handled; returns the sequence numbers marked. One
/// missing from the answer was handled already.
async fn consume_events(
    tx: &mut SqliteConnection,
    commits: &[Commit<'_>],
    which: &[usize],
) -> Result<HashSet<i64>> {
    let rows: Vec<Value> = which
        .iter()
        .filter_map(|&i| Some(json!([commits[i].event?, commits[i].state.profile.id])))
        .collect();
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let seqs: Vec<i64> = sqlx::query_scalar(
        "UPDATE events SET processed = 1, customer = j.value->>1
         FROM json_each(?) AS j
         WHERE events.seq = j.value->>0 AND events.processed = 0
         RETURNING events.seq",
    )
    .bind(Value::Array(rows).to_string())
    .fetch_all(&mut *tx)
    .await?;
    Ok(seqs.into_iter().collect())
}

/// The enrollment, message-log and outbox rows of `which`.
async fn save_rows(
    tx: &mut SqliteConnection,
    commits: &[Commit<'_>],
    which: &[usize],
) -> Result<()> {
    let mut enrollments = Vec::new();
    let mut log = Vec::new();
    let mut outbox = Vec::new();
    for &i in which {
        let c = &commits[i];
        let customer = &c.state.profile.id;
        for (ord, e) in c.state.enrollments.iter().enumerate() {
            let ended_at = match e.status {
                waymark_scheduler::Status::Ended { at, .. } => Some(nanos(at)),
                waymark_scheduler::Status::Active => None,
            };
            enrollments.push(json!([
                e.id,
                customer,
                ord,
                e.journey,
                e.version,
                e.key,
                e.step.0,
                status_text(e.status),
                e.wake.map(nanos),
                json_text(&e.trigger),
                json_text(&e.event),
                e.variant,
                i64::from(e.control),
                nanos(e.entered_at),
                ended_at,
                e.sends,
            ]));
        }
        for effect in c.effects {
            let Effect::Message(m) = effect else {
                continue;
            };
            let (outcome, reason) = send_outcome(m.outcome);
            log.push(json!([
                m.idempotency_key,
                m.customer,
                m.enrollment,
                m.journey,
                m.step,
                m.template,
                m.channel,
                m.variant,
                i64::from(m.transactional),
                outcome,
                reason,
                nanos(m.at),
            ]));
            if let (SendOutcome::Sent, Some(channel)) = (m.outcome, &m.channel) {
                outbox.push(json!([
                    m.idempotency_key,
                    channel,
                    m.address,
                    json_text(&m.content),
                    m.customer,
                    m.journey,
                    m.step,
                    m.template,
                    nanos(m.at),
                ]));
            }
        }
    }
    let statements = [
        (
            enrollments,
            "INSERT INTO enrollments (id, customer, ord, journey, version, key, step, status,
                 wake_at, trigger_data, event_data, variant, control, entered_at, ended_at, sends)
             SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5,
                 j.value->>6, j.value->>7, j.value->>8, j.value->>9, j.value->>10, j.value->>11,
                 j.value->>12, j.value->>13, j.value->>14, j.value->>15
             FROM json_each(?) AS j WHERE true
             ON CONFLICT (id) DO UPDATE SET customer = excluded.customer, ord = excluded.ord,
                 step = excluded.step, status = excluded.status, wake_at = excluded.wake_at,
                 event_data = excluded.event_data, variant = excluded.variant,
                 ended_at = excluded.ended_at, sends = excluded.sends",
        ),
        (
            log,
            "INSERT INTO message_log (idempotency_key, customer, enrollment, journey, step,
                 template, channel, variant, transactional, outcome, reason, at)
             SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5,
                 j.value->>6, j.value->>7, j.value->>8, j.value->>9, j.value->>10, j.value->>11
             FROM json_each(?) AS j WHERE true
             ON CONFLICT (idempotency_key) DO NOTHING",
        ),
        (
            outbox,
            "INSERT INTO outbox (idempotency_key, channel, address, content, customer, journey,
                 step, template, status, attempts, next_attempt_at, created_at)
             SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5,
                 j.value->>6, j.value->>7, 'pending', 0, j.value->>8, j.value->>8
             FROM json_each(?) AS j WHERE true
             ON CONFLICT (idempotency_key) DO NOTHING",
        ),
    ];
    for (rows, sql) in statements {
        if !rows.is_empty() {
            sqlx::query(sql)
                .bind(Value::Array(rows).to_string())
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

/// [`Store::ingest_many`] in one transaction: the `messageId`s in one statement (a repeat
/// is recognised by the upsert leaving its row alone), the events in another.
pub(super) async fn ingest_many(
    store: &SqliteStore,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Result<Vec<Result<Ingested>>> {
    let mut tx = store.writer.begin().await?;
    let message_ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e.message_id.as_deref())
        .collect();
    let fresh: HashSet<String> = if message_ids.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar::<_, String>(
            "INSERT INTO message_ids (message_id, received_at)
             SELECT value, ? FROM json_each(?) WHERE true
             ON CONFLICT (message_id) DO UPDATE SET received_at = excluded.received_at
                 WHERE message_ids.received_at < ?
             RETURNING message_id",
        )
        .bind(nanos(now))
        .bind(json_text(&message_ids))
        .bind(nanos(now - DEDUP_WINDOW))
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    // The first of a `messageId` repeated within the batch is the one accepted.
    let mut seen = HashSet::new();
    let accepted: Vec<bool> = events
        .iter()
        .map(|e| match &e.message_id {
            None => true,
            Some(id) => fresh.contains(id) && seen.insert(id.as_str()),
        })
        .collect();
    let rows: Vec<Value> = events
        .iter()
        .zip(&accepted)
        .filter(|(_, accepted)| **accepted)
        .map(|(e, _)| {
            json!([
                e.customer,
                e.name,
                nanos(e.at),
                json_text(&e.properties),
                e.message_id
            ])
        })
        .collect();
    let mut seqs: Vec<i64> = if rows.is_empty() {
        Vec::new()
    } else {
        sqlx::query_scalar(
            "INSERT INTO events (customer, name, at, properties, message_id, received_at)
             SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, ?
             FROM json_each(?) AS j ORDER BY j.key
             RETURNING seq",
        )
        .bind(nanos(now))
        .bind(Value::Array(rows).to_string())
        .fetch_all(&mut *tx)
        .await?
    };
    if seqs.len() != accepted.iter().filter(|a| **a).count() {
        return Err(Error::Corrupt("inserted events without a seq".to_owned()));
    }
    tx.commit().await?;
    // Rows are inserted in batch order and AUTOINCREMENT numbers them upwards, while
    // RETURNING may list them in any order: sorted, the numbers line up with the batch.
    seqs.sort_unstable();
    let mut seqs = seqs.into_iter();
    Ok(accepted
        .into_iter()
        .map(|accepted| {
            Ok(match accepted.then(|| seqs.next()).flatten() {
                Some(seq) => Ingested::Accepted(seq),
                None => Ingested::Duplicate,
            })
        })
        .collect())
}

/// [`Store::outbox_sent_many`] in one statement.
pub(super) async fn outbox_sent_many(
    store: &SqliteStore,
    sent: &[(&str, Option<&str>)],
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "UPDATE outbox SET status = 'sent', provider_id = j.value->>1, done_at = ?,
             last_error = NULL
         FROM json_each(?) AS j
         WHERE outbox.idempotency_key = j.value->>0 AND outbox.status = 'pending'",
    )
    .bind(nanos(now))
    .bind(json_text(&sent))
    .execute(&store.writer)
    .await?;
    Ok(())
}
