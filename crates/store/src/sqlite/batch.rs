//! Many customers per statement: the bulk paths behind [`Store::load_many`],
//! [`Store::commit_many`], [`Store::ingest_many`] and [`Store::outbox_sent_many`].
//!
//! Each statement takes its rows as one JSON array bound to one parameter and read with
//! `json_each` (`jsonb_each` where rows are arrays, so that each field is read from the
//! parsed form rather than by parsing the row's text again): the SQL text stays fixed (prepared once and cached), any batch fits in one
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
use sqlx::{Acquire as _, Row};
use waymark_scheduler::{CustomerState, Effect, SendOutcome};

use super::{SqliteStore, enrollment, read_profile, sent_message, stored_event, write_commit};
use crate::codec::{json_text, nanos, send_outcome, status_text};
use crate::{Commit, Customer, DEDUP_WINDOW, Error, Ingested, NewEvent, Result};

pub(super) async fn resolve_many(
    store: &SqliteStore,
    ids: &[String],
) -> Result<Vec<Result<String>>> {
    let rows = sqlx::query(
        "SELECT j.key AS i, p.merged_into AS merged_into
         FROM json_each(?) AS j LEFT JOIN profiles AS p ON p.id = j.value",
    )
    .bind(json_text(&ids))
    .fetch_all(&store.reader)
    .await?;
    let mut resolved: Vec<Result<String>> = ids.iter().map(|id| Ok(id.clone())).collect();
    for row in &rows {
        if let Some(next) = row.try_get::<Option<String>, _>("merged_into")? {
            let i = usize::try_from(row.try_get::<i64, _>("i")?)
                .map_err(|_| Error::Corrupt("json_each key".to_owned()))?;
            // Merged away: follow the rest of the chain one hop at a time (rare).
            resolved[i] = store.resolve_in(&next).await;
        }
    }
    Ok(resolved)
}

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

/// One commit's rows for the bulk statements, each a JSON array text. They are written
/// out before the transaction begins, so that the database does not wait on it.
struct Rows {
    profile: String,
    /// `[seq, customer]` of the inbox event the input was.
    event: Option<String>,
    enrollments: Vec<String>,
    log: Vec<String>,
    outbox: Vec<String>,
}

fn text<T: serde::Serialize>(row: &T) -> String {
    serde_json::to_string(row).expect("rows of strings and numbers always serialize")
}

impl Rows {
    fn of(c: &Commit<'_>) -> Rows {
        let p = &c.state.profile;
        let customer = p.id.as_str();
        let profile = text(&(
            customer,
            c.revision,
            json_text(&p.traits),
            json_text(&p.segments),
            i64::try_from(p.enrollment_seq).unwrap_or(i64::MAX),
            nanos(c.now),
        ));
        let enrollments = c
            .state
            .enrollments
            .iter()
            .enumerate()
            .map(|(ord, e)| {
                let ended_at = match e.status {
                    waymark_scheduler::Status::Ended { at, .. } => Some(nanos(at)),
                    waymark_scheduler::Status::Active => None,
                };
                text(&(
                    &e.id,
                    customer,
                    ord,
                    &e.journey,
                    &e.version,
                    &e.key,
                    e.step.0,
                    status_text(e.status),
                    e.wake.map(nanos),
                    json_text(&e.trigger),
                    json_text(&e.event),
                    &e.variant,
                    i64::from(e.control),
                    nanos(e.entered_at),
                    ended_at,
                    e.sends,
                ))
            })
            .collect();
        let mut log = Vec::new();
        let mut outbox = Vec::new();
        for effect in c.effects {
            let Effect::Message(m) = effect else {
                continue;
            };
            let (outcome, reason) = send_outcome(m.outcome);
            log.push(text(&(
                &m.idempotency_key,
                &m.customer,
                &m.enrollment,
                &m.journey,
                &m.step,
                &m.template,
                &m.channel,
                &m.variant,
                i64::from(m.transactional),
                outcome,
                reason,
                nanos(m.at),
            )));
            if let (SendOutcome::Sent, Some(channel)) = (m.outcome, &m.channel) {
                outbox.push(text(&(
                    &m.idempotency_key,
                    channel,
                    &m.address,
                    json_text(&m.content),
                    &m.customer,
                    &m.journey,
                    &m.step,
                    &m.template,
                    nanos(m.at),
                )));
            }
        }
        Rows {
            profile,
            event: c.event.map(|seq| text(&(seq, customer))),
            enrollments,
            log,
            outbox,
        }
    }
}

/// `[a,b,...]` from array element texts.
fn array<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out
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
    let rows: HashMap<usize, Rows> = bulk.iter().map(|&i| (i, Rows::of(&commits[i]))).collect();
    let (new, known): (Vec<usize>, Vec<usize>) =
        bulk.iter().partition(|&&i| commits[i].revision == 0);
    let profiles = |which: &[usize]| array(which.iter().map(|i| rows[i].profile.as_str()));
    let (new_profiles, known_profiles) = (profiles(&new), profiles(&known));

    let mut tx = store.writer.begin().await?;
    let mut saved = HashSet::with_capacity(bulk.len());
    if !known.is_empty() {
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE profiles SET traits = j.value->>2, segments = j.value->>3,
                 enrollment_seq = j.value->>4, revision = revision + 1, updated_at = j.value->>5
             FROM jsonb_each(?) AS j
             WHERE profiles.id = j.value->>0 AND profiles.revision = j.value->>1
                 AND profiles.merged_into IS NULL
             RETURNING profiles.id",
        )
        .bind(known_profiles)
        .fetch_all(&mut *tx)
        .await?;
        saved.extend(ids);
    }
    if !new.is_empty() {
        let ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO profiles (id, traits, segments, enrollment_seq, revision, updated_at)
             SELECT j.value->>0, j.value->>2, j.value->>3, j.value->>4, 1, j.value->>5
             FROM jsonb_each(?) AS j WHERE true
             ON CONFLICT (id) DO NOTHING
             RETURNING id",
        )
        .bind(new_profiles)
        .fetch_all(&mut *tx)
        .await?;
        saved.extend(ids);
    }
    // A profile missing from the answers was changed by another writer meanwhile.
    let mut written = Vec::with_capacity(bulk.len());
    for i in bulk {
        let id = &commits[i].state.profile.id;
        if saved.contains(id.as_str()) {
            written.push(i);
        } else {
            refused[i] = Some(Error::Conflict(id.clone()));
        }
    }

    let events = array(written.iter().filter_map(|i| rows[i].event.as_deref()));
    if events.len() > 2 {
        // An event missing from the answer was handled already.
        let consumed: HashSet<i64> = sqlx::query_scalar(
            "UPDATE events SET processed = 1, customer = j.value->>1
             FROM jsonb_each(?) AS j
             WHERE events.seq = j.value->>0 AND events.processed = 0
             RETURNING events.seq",
        )
        .bind(events)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
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
    }

    let written: Vec<&Rows> = written.iter().map(|i| &rows[i]).collect();
    let statements: [(String, &str); 3] = [
        (
            array(
                written
                    .iter()
                    .flat_map(|r| r.enrollments.iter().map(String::as_str)),
            ),
            // Without an alias merge (those go one by one) an enrollment keeps its
            // customer and position: only what a step changes is updated, which spares
            // the indexes on the rest.
            "INSERT INTO enrollments (id, customer, ord, journey, version, key, step, status,
                 wake_at, trigger_data, event_data, variant, control, entered_at, ended_at, sends)
             SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5,
                 j.value->>6, j.value->>7, j.value->>8, j.value->>9, j.value->>10, j.value->>11,
                 j.value->>12, j.value->>13, j.value->>14, j.value->>15
             FROM jsonb_each(?) AS j WHERE true
             ON CONFLICT (id) DO UPDATE SET step = excluded.step, status = excluded.status,
                 wake_at = excluded.wake_at, event_data = excluded.event_data,
                 variant = excluded.variant, ended_at = excluded.ended_at, sends = excluded.sends",
        ),
        (
            array(
                written
                    .iter()
                    .flat_map(|r| r.log.iter().map(String::as_str)),
            ),
            "INSERT INTO message_log (idempotency_key, customer, enrollment, journey, step,
                 template, channel, variant, transactional, outcome, reason, at)
             SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5,
                 j.value->>6, j.value->>7, j.value->>8, j.value->>9, j.value->>10, j.value->>11
             FROM jsonb_each(?) AS j WHERE true
             ON CONFLICT (idempotency_key) DO NOTHING",
        ),
        (
            array(
                written
                    .iter()
                    .flat_map(|r| r.outbox.iter().map(String::as_str)),
            ),
            "INSERT INTO outbox (idempotency_key, channel, address, content, customer, journey,
                 step, template, status, attempts, next_attempt_at, created_at)
             SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5,
                 j.value->>6, j.value->>7, 'pending', 0, j.value->>8, j.value->>8
             FROM jsonb_each(?) AS j WHERE true
             ON CONFLICT (idempotency_key) DO NOTHING",
        ),
    ];
    for (rows, sql) in statements {
        if rows.len() > 2 {
            sqlx::query(sql).bind(rows).execute(&mut *tx).await?;
        }
    }

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
             FROM jsonb_each(?) AS j ORDER BY j.key
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
         FROM jsonb_each(?) AS j
         WHERE outbox.idempotency_key = j.value->>0 AND outbox.status = 'pending'",
    )
    .bind(nanos(now))
    .bind(json_text(&sent))
    .execute(&store.writer)
    .await?;
    Ok(())
}
