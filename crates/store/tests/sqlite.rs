//! The store contract, run against real SQLite files in a temp dir, with the real engine
//! producing the states and effects that get committed.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::{Map, Value, json};
use waymark_journey::Policy;
use waymark_scheduler::{ConventionalChannels, Effect, Engine, Event, SendOutcome};
use waymark_store::{Commit, Error, Ingested, NewEvent, SqliteStore, Store};

const WELCOME: &str = "
id: welcome
trigger:
  event: signed_up
steps:
  hello:
    send: email
    template: hello
    next: pause
  pause:
    wait: 1h
    next: again
  again:
    send: email
    template: hello
";

const HELLO: &str = "
email:
  subject: \"Hello {{ profile.first_name | default: 'there' }}\"
  text: \"Welcome aboard\"
";

fn engine(dir: &Path) -> Engine {
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(dir.join("welcome.yaml"), WELCOME).unwrap();
    std::fs::write(dir.join("templates/hello.yaml"), HELLO).unwrap();
    let (workspace, _) = waymark_journey::load(dir).expect("the test workspace is valid");
    Engine::new(workspace, Policy::default(), Arc::new(ConventionalChannels))
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
}

fn props(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

fn new_event(customer: &str, name: &str, message_id: Option<&str>) -> NewEvent {
    NewEvent {
        customer: customer.to_owned(),
        name: name.to_owned(),
        at: t0(),
        properties: props(json!({"plan": "pro"})),
        message_id: message_id.map(str::to_owned),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    store: SqliteStore,
    engine: Engine,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_path(&dir.path().join("waymark.db"))
        .await
        .unwrap();
    let engine = engine(&dir.path().join("journeys"));
    Fixture { dir, store, engine }
}

/// Gives `id` an email address, committed.
async fn identify(f: &Fixture, id: &str) {
    let mut customer = f.store.load_customer(id).await.unwrap();
    let traits = props(json!({"email": format!("{id}@example.com"), "first_name": "Ann"}));
    let effects = f.engine.on_identify(&mut customer.state, &traits, t0());
    f.store
        .commit(Commit {
            state: &customer.state,
            revision: customer.revision,
            effects: &effects,
            event: None,
            merged: None,
            now: t0(),
        })
        .await
        .unwrap();
}

/// Ingests and handles one event, as the daemon does.
async fn track(f: &Fixture, id: &str, name: &str, now: DateTime<Utc>) -> Vec<Effect> {
    let Ingested::Accepted(seq) = f
        .store
        .ingest_event(&new_event(id, name, None), now)
        .await
        .unwrap()
    else {
        panic!("no message id, no duplicate")
    };
    let mut customer = f.store.load_customer(id).await.unwrap();
    let event = Event {
        name: name.to_owned(),
        at: t0(),
        properties: props(json!({"plan": "pro"})),
    };
    let effects = f.engine.on_event(&mut customer.state, &event, now);
    f.store
        .commit(Commit {
            state: &customer.state,
            revision: customer.revision,
            effects: &effects,
            event: Some(seq),
            merged: None,
            now,
        })
        .await
        .unwrap();
    effects
}

#[tokio::test]
async fn a_repeated_message_id_is_ignored_for_seven_days() {
    let f = fixture().await;
    let first = f
        .store
        .ingest_event(&new_event("ann", "visit", Some("m-1")), t0())
        .await
        .unwrap();
    assert!(matches!(first, Ingested::Accepted(_)));
    let again = f
        .store
        .ingest_event(
            &new_event("ann", "visit", Some("m-1")),
            t0() + TimeDelta::days(6),
        )
        .await
        .unwrap();
    assert_eq!(again, Ingested::Duplicate);
    let other = f
        .store
        .ingest_event(&new_event("ann", "visit", Some("m-2")), t0())
        .await
        .unwrap();
    assert!(matches!(other, Ingested::Accepted(_)));
    let later = f
        .store
        .ingest_event(
            &new_event("ann", "visit", Some("m-1")),
            t0() + TimeDelta::days(8),
        )
        .await
        .unwrap();
    assert!(matches!(later, Ingested::Accepted(_)));
    assert_eq!(f.store.inbox(0, 10).await.unwrap().len(), 3);
    assert_eq!(f.store.prune(t0() + TimeDelta::days(8)).await.unwrap(), 1);
}

#[tokio::test]
async fn a_committed_step_round_trips_with_its_outbox_row_and_timer() {
    let f = fixture().await;
    identify(&f, "ann").await;
    let effects = track(&f, "ann", "signed_up", t0()).await;
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Message(m) if m.outcome == SendOutcome::Sent
    )));
    assert!(f.store.inbox(0, 10).await.unwrap().is_empty());

    let loaded = f.store.load_customer("ann").await.unwrap();
    assert_eq!(loaded.revision, 2);
    assert_eq!(loaded.state.profile.history.len(), 1);
    assert_eq!(loaded.state.profile.messages.len(), 1);
    assert_eq!(loaded.state.profile.enrollment_seq, 1);
    assert_eq!(loaded.state.enrollments.len(), 1);
    let enrollment = &loaded.state.enrollments[0];
    assert_eq!(enrollment.wake, Some(t0() + TimeDelta::hours(1)));
    assert_eq!(enrollment.trigger, props(json!({"plan": "pro"})));

    assert!(f.store.due_timers(t0(), 10).await.unwrap().is_empty());
    let due = f
        .store
        .due_timers(t0() + TimeDelta::hours(1), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].customer, "ann");
    assert_eq!(due[0].enrollment, enrollment.id);

    let claimed = f
        .store
        .claim_outbox(t0(), TimeDelta::minutes(1), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].address.as_deref(), Some("ann@example.com"));
    assert_eq!(claimed[0].content["subject"], "Hello Ann");
    assert_eq!(claimed[0].attempts, 1);

    let messages = f.store.recent_messages("ann", 10).await.unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].outcome, "sent");
    assert_eq!(messages[0].delivery.as_deref(), Some("pending"));
}

#[tokio::test]
async fn a_timer_fires_from_the_reloaded_state_and_clears_itself() {
    let f = fixture().await;
    identify(&f, "ann").await;
    track(&f, "ann", "signed_up", t0()).await;
    let at = t0() + TimeDelta::hours(1);
    let due = f.store.due_timers(at, 10).await.unwrap();
    let mut customer = f.store.load_customer(&due[0].customer).await.unwrap();
    let effects = f
        .engine
        .on_timer(&mut customer.state, &due[0].enrollment, at);
    assert!(effects.iter().any(|e| matches!(e, Effect::Ended { .. })));
    f.store
        .commit(Commit {
            state: &customer.state,
            revision: customer.revision,
            effects: &effects,
            event: None,
            merged: None,
            now: at,
        })
        .await
        .unwrap();
    assert!(f.store.due_timers(at, 10).await.unwrap().is_empty());
    let reloaded = f.store.load_customer("ann").await.unwrap();
    assert_eq!(reloaded.state.enrollments, customer.state.enrollments);
    assert_eq!(reloaded.state.profile.messages.len(), 2);
    let depths = f.store.depths().await.unwrap();
    assert_eq!((depths.outbox_pending, depths.active_enrollments), (2, 0));
}

fn commit(c: &waymark_store::Customer) -> Commit<'_> {
    Commit {
        state: &c.state,
        revision: c.revision,
        effects: &[],
        event: None,
        merged: None,
        now: t0(),
    }
}

#[tokio::test]
async fn a_stale_state_is_refused_and_an_event_is_handled_once() {
    let f = fixture().await;
    identify(&f, "ann").await;
    let first = f.store.load_customer("ann").await.unwrap();
    let second = f.store.load_customer("ann").await.unwrap();
    f.store.commit(commit(&first)).await.unwrap();
    assert!(matches!(
        f.store.commit(commit(&second)).await,
        Err(Error::Conflict(id)) if id == "ann"
    ));

    // Two writers creating the same new customer: the second is refused too.
    let a = f.store.load_customer("bob").await.unwrap();
    let b = f.store.load_customer("bob").await.unwrap();
    f.store.commit(commit(&a)).await.unwrap();
    assert!(matches!(
        f.store.commit(commit(&b)).await,
        Err(Error::Conflict(_))
    ));

    let Ingested::Accepted(seq) = f
        .store
        .ingest_event(&new_event("ann", "visit", None), t0())
        .await
        .unwrap()
    else {
        unreachable!()
    };
    let c = f.store.load_customer("ann").await.unwrap();
    let with_event = Commit {
        event: Some(seq),
        ..commit(&c)
    };
    f.store.commit(with_event).await.unwrap();
    let c = f.store.load_customer("ann").await.unwrap();
    assert!(matches!(
        f.store
            .commit(Commit {
                event: Some(seq),
                ..commit(&c)
            })
            .await,
        Err(Error::Handled(s)) if s == seq
    ));
}

/// Group commit: refused commits in a batch (a stale state, an event handled already)
/// leave the others standing and write nothing of their own; an alias merge in the batch
/// lands too.
#[tokio::test]
async fn a_batch_of_commits_keeps_every_commit_but_the_refused_ones() {
    let f = fixture().await;
    for id in ["ann", "bob", "dan", "eve"] {
        identify(&f, id).await;
    }
    let mut ann = f.store.load_customer("ann").await.unwrap();
    let fresh = f.store.load_customer("bob").await.unwrap();
    let stale = f.store.load_customer("bob").await.unwrap();
    f.store.commit(commit(&fresh)).await.unwrap();
    let Ingested::Accepted(seq) = f
        .store
        .ingest_event(&new_event("bob", "visit", None), t0())
        .await
        .unwrap()
    else {
        unreachable!()
    };
    let traits = props(json!({"plan": "gold"}));
    f.engine.on_identify(&mut ann.state, &traits, t0());
    let mut cy = f.store.load_customer("cy").await.unwrap();
    let cy_effects = f.engine.on_event(
        &mut cy.state,
        &Event {
            name: "signed_up".to_owned(),
            at: t0(),
            properties: Map::new(),
        },
        t0(),
    );
    // dan's event was handled by someone else after dan was loaded.
    track(&f, "dan", "visit", t0()).await;
    let dan_seq = f.store.recent_events("dan", 1).await.unwrap()[0].seq;
    let dan = f.store.load_customer("dan").await.unwrap();
    track(&f, "anon-2", "visit", t0()).await;
    let mut eve = f.store.load_customer("eve").await.unwrap();
    let anon = f.store.load_customer("anon-2").await.unwrap();
    let eve_effects = f.engine.merge(&mut eve.state, anon.state, t0());

    let results = f
        .store
        .commit_many(&[
            commit(&ann),
            Commit {
                event: Some(seq),
                ..commit(&stale)
            },
            Commit {
                effects: &cy_effects,
                ..commit(&cy)
            },
            Commit {
                event: Some(dan_seq),
                ..commit(&dan)
            },
            Commit {
                effects: &eve_effects,
                merged: Some(("anon-2", anon.revision)),
                ..commit(&eve)
            },
        ])
        .await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(matches!(&results[1], Err(Error::Conflict(id)) if id == "bob"));
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert!(matches!(&results[3], Err(Error::Handled(s)) if *s == dan_seq));
    assert!(results[4].is_ok(), "{:?}", results[4]);

    let ann = f.store.load_customer("ann").await.unwrap();
    assert_eq!(ann.state.profile.traits["plan"], json!("gold"));
    let cy = f.store.load_customer("cy").await.unwrap();
    assert_eq!((cy.revision, cy.state.enrollments.len()), (1, 1));
    assert_eq!(
        f.store.load_customer("dan").await.unwrap().revision,
        dan.revision
    );
    assert_eq!(f.store.resolve("anon-2").await.unwrap(), "eve");
    let inbox = f.store.inbox(0, 10).await.unwrap();
    assert_eq!(inbox.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![seq]);
}

#[tokio::test]
async fn a_batch_of_events_is_accepted_with_repeats_recognised_inside_it() {
    let f = fixture().await;
    let results = f
        .store
        .ingest_many(
            &[
                new_event("ann", "visit", Some("m-1")),
                new_event("ann", "visit", Some("m-1")),
                new_event("bob", "visit", None),
            ],
            t0(),
        )
        .await;
    let results: Vec<Ingested> = results.into_iter().map(Result::unwrap).collect();
    assert!(matches!(
        results[..],
        [
            Ingested::Accepted(a),
            Ingested::Duplicate,
            Ingested::Accepted(b)
        ] if b > a
    ));
    let inbox = f.store.inbox(0, 10).await.unwrap();
    assert_eq!(
        inbox
            .iter()
            .map(|e| e.customer.as_str())
            .collect::<Vec<_>>(),
        vec!["ann", "bob"]
    );
}

/// Merges `previous` into `user`, as the daemon does for an alias.
async fn alias(f: &Fixture, user: &str, previous: &str) {
    let mut user = f.store.load_customer(user).await.unwrap();
    let other = f.store.load_customer(previous).await.unwrap();
    let effects = f.engine.merge(&mut user.state, other.state, t0());
    f.store
        .commit(Commit {
            state: &user.state,
            revision: user.revision,
            effects: &effects,
            event: None,
            merged: Some((previous, other.revision)),
            now: t0(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn an_alias_redirects_the_old_id_and_joins_its_history() {
    let f = fixture().await;
    track(&f, "anon-1", "visit", t0()).await;
    identify(&f, "ann").await;
    alias(&f, "ann", "anon-1").await;
    assert_eq!(f.store.resolve("anon-1").await.unwrap(), "ann");
    let merged = f.store.load_customer("anon-1").await.unwrap();
    assert_eq!(merged.state.profile.id, "ann");
    assert_eq!(merged.state.profile.history.len(), 1);
    assert_eq!(
        f.store.customer_ids("", 10).await.unwrap(),
        vec!["ann".to_owned()]
    );
    // Later events addressed to the old id are handled on the merged profile.
    track(&f, "anon-1", "visit", t0()).await;
    let merged = f.store.load_customer("ann").await.unwrap();
    assert_eq!(merged.state.profile.history.len(), 2);
    assert_eq!(f.store.recent_events("anon-1", 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_outbox_leases_retries_and_records_failures() {
    let f = fixture().await;
    identify(&f, "ann").await;
    track(&f, "ann", "signed_up", t0()).await;
    let lease = TimeDelta::minutes(1);
    let claimed = f.store.claim_outbox(t0(), lease, 10).await.unwrap();
    let key = claimed[0].idempotency_key.clone();
    // Claimed: nobody else gets it until the lease runs out.
    assert!(
        f.store
            .claim_outbox(t0(), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let after_lease = t0() + lease;
    let again = f.store.claim_outbox(after_lease, lease, 10).await.unwrap();
    assert_eq!(again[0].attempts, 2);

    let retry_at = after_lease + TimeDelta::seconds(30);
    f.store
        .outbox_retry(&key, "HTTP 503", retry_at)
        .await
        .unwrap();
    assert!(
        f.store
            .claim_outbox(after_lease + TimeDelta::seconds(10), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        f.store
            .claim_outbox(retry_at, lease, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    f.store
        .outbox_failed(&key, "HTTP 400: bad address", retry_at)
        .await
        .unwrap();
    let messages = f.store.recent_messages("ann", 10).await.unwrap();
    assert_eq!(messages[0].outcome, "failed");
    assert_eq!(messages[0].reason.as_deref(), Some("HTTP 400: bad address"));
    assert_eq!(messages[0].delivery.as_deref(), Some("failed"));
    // A failed message does not count against frequency caps.
    let ann = f.store.load_customer("ann").await.unwrap();
    assert!(ann.state.profile.messages.is_empty());
    assert_eq!(f.store.depths().await.unwrap().outbox_pending, 0);
}

#[tokio::test]
async fn state_survives_closing_and_reopening_the_file() {
    let f = fixture().await;
    identify(&f, "ann").await;
    track(&f, "ann", "signed_up", t0()).await;
    let before = f.store.load_customer("ann").await.unwrap();
    let path = f.dir.path().join("waymark.db");
    f.store.close().await;
    let store = SqliteStore::open_path(&path).await.unwrap();
    let after = store.load_customer("ann").await.unwrap();
    assert_eq!(after.revision, before.revision);
    assert_eq!(after.state.enrollments, before.state.enrollments);
    assert_eq!(after.state.profile.traits, before.state.profile.traits);
    assert_eq!(
        after.state.profile.history.events(),
        before.state.profile.history.events()
    );

    let mut files = std::collections::BTreeMap::new();
    files.insert("welcome.yaml".to_owned(), WELCOME.to_owned());
    store
        .record_journey_version("welcome", "v1", &files, t0())
        .await
        .unwrap();
    store
        .record_journey_version("welcome", "v1", &files, t0())
        .await
        .unwrap();
    assert_eq!(
        store.journey_version_files("welcome", "v1").await.unwrap(),
        Some(files)
    );
    assert_eq!(store.active_versions().await.unwrap().len(), 1);
    let counts = store.journey_counts("welcome").await.unwrap();
    assert_eq!(counts.active.values().sum::<u64>(), 1);
    store.set_schedule_tick("digest", t0()).await.unwrap();
    assert_eq!(store.schedule_tick("digest").await.unwrap(), Some(t0()));
}

#[tokio::test]
async fn a_receipt_finds_its_message_by_provider_id_or_address() {
    let f = fixture().await;
    identify(&f, "ann").await;
    track(&f, "ann", "signed_up", t0()).await;
    let claimed = f
        .store
        .claim_outbox(t0(), TimeDelta::minutes(1), 10)
        .await
        .unwrap();
    let key = claimed[0].idempotency_key.clone();
    let by_address = || {
        f.store
            .find_sent_message("email", None, Some("ann@example.com"))
    };
    // Not delivered yet: a receipt naming only the address has nothing to match.
    assert_eq!(by_address().await.unwrap(), None);
    f.store
        .outbox_sent(&key, Some("prov-1"), t0())
        .await
        .unwrap();

    let found = f
        .store
        .find_sent_message("email", Some("prov-1"), None)
        .await
        .unwrap()
        .expect("found by the provider's id");
    assert_eq!(found.idempotency_key, key);
    assert_eq!(found.customer, "ann");
    assert_eq!(found.journey, "welcome");
    assert_eq!(found.step, "hello");
    assert_eq!(by_address().await.unwrap(), Some(found));
    // Another channel's ids are another namespace.
    assert_eq!(
        f.store
            .find_sent_message("sms", Some("prov-1"), None)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn batch_loads_and_resolves_read_what_single_ones_read() {
    let f = fixture().await;
    identify(&f, "ann").await;
    track(&f, "ann", "signed_up", t0()).await;
    track(&f, "anon-1", "visit", t0()).await;
    alias(&f, "ann", "anon-1").await;
    identify(&f, "bob").await;
    track(&f, "bob", "signed_up", t0()).await;
    let ids: Vec<String> = ["ann", "nobody", "bob", "anon-1", "ann"]
        .map(str::to_owned)
        .to_vec();
    let resolved: Vec<String> = f
        .store
        .resolve_many(&ids)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(resolved, ["ann", "nobody", "bob", "ann", "ann"]);
    let batch = f.store.load_many(&ids).await;
    assert_eq!(batch.len(), ids.len());
    for (id, loaded) in ids.iter().zip(batch) {
        let loaded = loaded.unwrap();
        let single = f.store.load_customer(id).await.unwrap();
        assert_eq!(loaded.revision, single.revision, "{id}");
        let (a, b) = (&loaded.state, &single.state);
        assert_eq!(a.profile.id, b.profile.id, "{id}");
        assert_eq!(a.profile.traits, b.profile.traits, "{id}");
        assert_eq!(a.profile.segments, b.profile.segments, "{id}");
        assert_eq!(a.profile.enrollment_seq, b.profile.enrollment_seq, "{id}");
        assert_eq!(a.profile.messages, b.profile.messages, "{id}");
        assert_eq!(
            a.profile.history.events(),
            b.profile.history.events(),
            "{id}"
        );
        assert_eq!(a.enrollments, b.enrollments, "{id}");
    }
    let ann = f.store.load_customer("anon-1").await.unwrap();
    assert_eq!(
        (
            ann.state.profile.id.as_str(),
            ann.state.profile.history.len()
        ),
        ("ann", 2)
    );
}

/// Timers sharing one wake time are walked in batches, each after the last one taken,
/// without repeats or gaps.
#[tokio::test]
async fn due_timers_are_read_in_batches_after_the_last_one_taken() {
    let f = fixture().await;
    let customers = ["a", "b", "c", "d", "e"];
    for id in customers {
        track(&f, id, "signed_up", t0()).await;
    }
    let at = t0() + TimeDelta::hours(1);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let batch = f
            .store
            .due_timers_after(at, after.as_ref(), 2)
            .await
            .unwrap();
        assert!(batch.iter().all(|t| t.at == at));
        seen.extend(batch.iter().map(|t| t.customer.clone()));
        match batch.last() {
            Some(last) => after = Some(last.clone()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, customers);
}

#[tokio::test]
async fn many_deliveries_are_recorded_at_once_and_busy_channels_are_skipped() {
    let f = fixture().await;
    for id in ["ann", "bob"] {
        identify(&f, id).await;
        track(&f, id, "signed_up", t0()).await;
    }
    let lease = TimeDelta::minutes(1);
    let busy = ["email".to_owned()];
    assert!(
        f.store
            .claim_outbox_except(t0(), lease, 10, &busy)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = f
        .store
        .claim_outbox_except(t0(), lease, 10, &["sms".to_owned()])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let sent: Vec<(&str, Option<&str>)> = vec![
        (&claimed[0].idempotency_key, Some("prov-1")),
        (&claimed[1].idempotency_key, None),
    ];
    f.store.outbox_sent_many(&sent, t0()).await.unwrap();
    assert_eq!(f.store.depths().await.unwrap().outbox_pending, 0);
    for id in ["ann", "bob"] {
        let messages = f.store.recent_messages(id, 10).await.unwrap();
        assert_eq!(messages[0].delivery.as_deref(), Some("sent"), "{id}");
    }
    let found = f
        .store
        .find_sent_message("email", Some("prov-1"), None)
        .await
        .unwrap()
        .expect("found by the provider's id");
    assert_eq!(found.idempotency_key, claimed[0].idempotency_key);
}
