//! Many customers per statement: the bulk paths behind [`Store::resolve_many`],
//! [`Store::load_many`], [`Store::commit_many`], [`Store::ingest_many`] and
//! [`Store::outbox_sent_many`].
//!
//! Each statement takes its rows as one JSON array bound to one parameter and read with
//! `json_each` (`jsonb_each` where rows are arrays, so that each field is read from the
//! parsed form rather than by parsing the row's text again). The SQL text stays fixed
//! (prepared once and cached), any batch fits in one bind, and one round trip to the
//! connection's thread serves a whole batch. Through sqlx a statement costs tens of
//! microseconds of handing work between threads, more than SQLite needs to write a row,
//! so statements per batch, not rows, set the pace.
//!
//! Each function returns `Err` only for database trouble; the caller then does the work
//! one item at a time, so that every item gets its own result.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Acquire as _;
use sqlx::sqlite::SqliteRow;
use waymark_scheduler::{Effect, SendOutcome};

use super::{SqliteStore, write_commit};
use crate::codec::{json_text, nanos, send_outcome, status_text};
use crate::tables::{self, Columns};
use crate::{Commit, Customer, DEDUP_WINDOW, Error, Ingested, NewEvent, Result, Store};

/// One row per id in `ids`, in order: `id`, `merged_into` and the rest of its profile,
/// all NULL for an id not stored.
async fn profiles(store: &SqliteStore, ids: &[String]) -> Result<Vec<SqliteRow>> {
    let rows = sqlx::query(
        "SELECT p.id AS id, p.merged_into AS merged_into, p.traits AS traits,
             p.segments AS segments, p.enrollment_seq AS enrollment_seq, p.revision AS revision
         FROM json_each(?) AS j LEFT JOIN profiles AS p ON p.id = j.value
         ORDER BY j.key",
    )
    .bind(json_text(&ids))
    .fetch_all(&store.reader)
    .await?;
    if rows.len() != ids.len() {
        return Err(Error::Corrupt("profiles with a duplicate id".to_owned()));
    }
    Ok(rows)
}

pub(super) async fn resolve_many(
    store: &SqliteStore,
    ids: &[String],
) -> Result<Vec<Result<String>>> {
    let mut resolved = Vec::with_capacity(ids.len());
    for (id, profile) in ids.iter().zip(profiles(store, ids).await?) {
        resolved.push(match profile.opt_text("merged_into")? {
            None => Ok(id.clone()),
            // Merged away: the rest of the chain one hop at a time (rare).
            Some(next) => store.resolve_in(&next).await,
        });
    }
    Ok(resolved)
}

pub(super) async fn load_many(
    store: &SqliteStore,
    ids: &[String],
) -> Result<Vec<Result<Customer>>> {
    let reader = &store.reader;
    let profiles = profiles(store, ids).await?;
    let mut found = Vec::new();
    for row in &profiles {
        if row.opt_text("id")?.is_some() && row.opt_text("merged_into")?.is_none() {
            found.push(row.text("id")?);
        }
    }

    // Each customer's rows, by customer.
    let mut events = HashMap::new();
    let mut sent = HashMap::new();
    let mut enrollments = HashMap::new();
    if !found.is_empty() {
        let found = json_text(&found);
        for (rows, sql) in [
            (
                &mut events,
                "SELECT seq, customer, name, at, properties, message_id, processed FROM events
                 WHERE customer IN (SELECT value FROM json_each(?)) AND processed = 1
                 ORDER BY customer, at, seq",
            ),
            (
                &mut sent,
                "SELECT customer, at, channel FROM message_log
                 WHERE customer IN (SELECT value FROM json_each(?)) AND outcome = 'sent'
                     AND channel IS NOT NULL
                 ORDER BY customer, at",
            ),
            (
                &mut enrollments,
                "SELECT * FROM enrollments WHERE customer IN (SELECT value FROM json_each(?))
                 ORDER BY customer, ord",
            ),
        ] {
            for row in sqlx::query(sql).bind(&found).fetch_all(reader).await? {
                rows.entry(row.text("customer")?)
                    .or_insert_with(Vec::new)
                    .push(row);
            }
        }
    }

    let mut loaded = Vec::with_capacity(ids.len());
    for (asked, profile) in ids.iter().zip(&profiles) {
        loaded.push(match profile.opt_text("id")? {
            None => Ok(Customer::unstored(asked.clone())),
            // Merged away by an alias: loaded on its own, following the redirects (rare).
            Some(_) if profile.opt_text("merged_into")?.is_some() => {
                store.load_customer(asked).await
            }
            Some(id) => {
                let (e, s, n) = (
                    rows_of(&events, &id),
                    rows_of(&sent, &id),
                    rows_of(&enrollments, &id),
                );
                tables::customer(id.clone(), profile, e, s, n)
            }
        });
    }
    Ok(loaded)
}

fn rows_of<'a>(rows: &'a HashMap<String, Vec<SqliteRow>>, customer: &str) -> &'a [SqliteRow] {
    rows.get(customer).map_or(&[], Vec::as_slice)
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
                    i64::from(c.claim_until.is_some()),
                    nanos(c.claim_until.unwrap_or(m.at)),
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
/// handful of bulk statements. The rest (alias merges, a customer twice, an input with a
/// `messageId`) are written one by one after them, each in a savepoint, so that their
/// order and their refusals are exactly those of single commits.
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
            commits[i].merged.is_none()
                && commits[i].message_id.is_none()
                && mentions[commits[i].state.profile.id.as_str()] == 1
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
                 j.value->>6, j.value->>7, 'pending', j.value->>9, j.value->>10, j.value->>8
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
            Err(e @ (Error::Conflict(_) | Error::Handled(_) | Error::Repeated(_))) => {
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
