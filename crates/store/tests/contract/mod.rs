//! The store contract, written once and run against every backend: each test body takes
//! a [`Fixture`] on a fresh, empty store, with the real engine producing the states and
//! effects that get committed. [`suite!`] turns the bodies into one `#[tokio::test]` each
//! for the backend a test file names.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::{Map, Value, json};
use waymark_journey::{Outcome, Policy};
use waymark_scheduler::{ConventionalChannels, Effect, Engine, Event, SendOutcome, Status};
use waymark_store::{
    Commit, Customer, Error, Ingested, JourneyVersion, NewEvent, Store, StoredEvent,
};

/// One `#[tokio::test]` per contract test, for the backend that `$run` opens: `$run`
/// takes a test body, hands it a [`Fixture`] on a fresh store and cleans up afterwards.
macro_rules! suite {
    ($run:path) => {
        $crate::contract::suite!($run:
            a_repeated_message_id_is_ignored_for_seven_days,
            a_committed_step_round_trips_with_its_outbox_row_and_timer,
            a_timer_fires_from_the_reloaded_state_and_clears_itself,
            a_stale_state_is_refused_and_an_event_is_handled_once,
            an_alias_redirects_the_old_id_and_joins_its_history,
            the_outbox_leases_retries_and_records_failures,
            journey_versions_counts_and_schedule_ticks_are_kept,
            journey_counts_keep_the_holdout_group_apart,
            every_recorded_journey_version_is_listed,
            a_receipt_finds_its_message_by_provider_id_or_address,
            a_setting_keeps_its_first_value,
            a_batch_of_commits_keeps_every_commit_but_the_refused_ones,
            a_batch_of_events_is_accepted_with_repeats_recognised_inside_it,
            batch_loads_and_resolves_read_what_single_ones_read,
            due_timers_are_read_in_batches_after_the_last_one_taken,
            many_deliveries_are_recorded_at_once_and_busy_channels_are_skipped,
            claims_of_a_daemon_that_is_gone_are_released,
            messages_committed_claimed_wait_for_their_committer_until_the_claim_runs_out,
            messages_that_came_too_late_are_skipped_as_expired_for_good,
            a_commit_with_a_message_id_applies_once_within_seven_days,
            a_customers_unhandled_events_before_one_are_listed_oldest_first,
        );
    };
    ($run:path: $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                $run(contract::$test).await;
            }
        )+
    };
}
pub(crate) use suite;

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

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
}

fn props(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

pub fn new_event(customer: &str, name: &str, message_id: Option<&str>) -> NewEvent {
    NewEvent {
        customer: customer.to_owned(),
        name: name.to_owned(),
        at: t0(),
        properties: props(json!({"plan": "pro"})),
        message_id: message_id.map(str::to_owned),
    }
}

/// A store under test and an engine on a small journey (a welcome email, an hour's wait,
/// a second email).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub engine: Engine,
    _journeys: tempfile::TempDir,
}

impl Fixture {
    pub fn new(store: Arc<dyn Store>) -> Fixture {
        let journeys = tempfile::tempdir().unwrap();
        let engine = engine(journeys.path());
        Fixture {
            store,
            engine,
            _journeys: journeys,
        }
    }
}

/// Gives `id` an email address, committed.
pub async fn identify(f: &Fixture, id: &str) {
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
            claim_until: None,
            message_id: None,
        })
        .await
        .unwrap();
}

/// `name` accepted for `id` and handed to the engine, not yet committed: the customer as
/// loaded and changed, the effects, and the inbox event's sequence number.
pub async fn handle(
    f: &Fixture,
    id: &str,
    name: &str,
    now: DateTime<Utc>,
) -> (Customer, Vec<Effect>, i64) {
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
    (customer, effects, seq)
}

/// `name` accepted for `id`, handled and committed.
pub async fn track(f: &Fixture, id: &str, name: &str, now: DateTime<Utc>) -> Vec<Effect> {
    let (customer, effects, seq) = handle(f, id, name, now).await;
    f.store
        .commit(Commit {
            state: &customer.state,
            revision: customer.revision,
            effects: &effects,
            event: Some(seq),
            merged: None,
            now,
            claim_until: None,
            message_id: None,
        })
        .await
        .unwrap();
    effects
}

pub async fn a_repeated_message_id_is_ignored_for_seven_days(f: Fixture) {
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

pub async fn a_committed_step_round_trips_with_its_outbox_row_and_timer(f: Fixture) {
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

    assert!(f.store.due_timers(t0(), None, 10).await.unwrap().is_empty());
    let due = f
        .store
        .due_timers(t0() + TimeDelta::hours(1), None, 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].customer, "ann");
    assert_eq!(due[0].enrollment, enrollment.id);

    let claimed = f
        .store
        .claim_outbox(t0(), TimeDelta::minutes(1), 10, &[])
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

pub async fn a_timer_fires_from_the_reloaded_state_and_clears_itself(f: Fixture) {
    identify(&f, "ann").await;
    track(&f, "ann", "signed_up", t0()).await;
    let at = t0() + TimeDelta::hours(1);
    let due = f.store.due_timers(at, None, 10).await.unwrap();
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
            claim_until: None,
            message_id: None,
        })
        .await
        .unwrap();
    assert!(f.store.due_timers(at, None, 10).await.unwrap().is_empty());
    let reloaded = f.store.load_customer("ann").await.unwrap();
    assert_eq!(reloaded.state.enrollments, customer.state.enrollments);
    assert_eq!(reloaded.state.profile.messages.len(), 2);
    let depths = f.store.depths().await.unwrap();
    assert_eq!((depths.outbox_pending, depths.active_enrollments), (2, 0));
}

/// A commit of `c` as loaded, with no effects.
pub fn commit(c: &Customer) -> Commit<'_> {
    Commit {
        state: &c.state,
        revision: c.revision,
        effects: &[],
        event: None,
        merged: None,
        now: t0(),
        claim_until: None,
        message_id: None,
    }
}

pub async fn a_stale_state_is_refused_and_an_event_is_handled_once(f: Fixture) {
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
            claim_until: None,
            message_id: None,
        })
        .await
        .unwrap();
}

pub async fn an_alias_redirects_the_old_id_and_joins_its_history(f: Fixture) {
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

pub async fn the_outbox_leases_retries_and_records_failures(f: Fixture) {
    identify(&f, "ann").await;
    track(&f, "ann", "signed_up", t0()).await;
    let lease = TimeDelta::minutes(1);
    let claimed = f.store.claim_outbox(t0(), lease, 10, &[]).await.unwrap();
    let key = claimed[0].idempotency_key.clone();
    // Claimed: nobody else gets it until the lease runs out.
    assert!(
        f.store
            .claim_outbox(t0(), lease, 10, &[])
            .await
            .unwrap()
            .is_empty()
    );
    let after_lease = t0() + lease;
    let again = f
        .store
        .claim_outbox(after_lease, lease, 10, &[])
        .await
        .unwrap();
    assert_eq!(again[0].attempts, 2);

    let retry_at = after_lease + TimeDelta::seconds(30);
    f.store
        .outbox_retry(&key, "HTTP 503", retry_at)
        .await
        .unwrap();
    assert!(
        f.store
            .claim_outbox(after_lease + TimeDelta::seconds(10), lease, 10, &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        f.store
            .claim_outbox(retry_at, lease, 10, &[])
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

pub async fn journey_versions_counts_and_schedule_ticks_are_kept(f: Fixture) {
    identify(&f, "ann").await;
    track(&f, "ann", "signed_up", t0()).await;
    let version = f
        .store
        .load_customer("ann")
        .await
        .unwrap()
        .state
        .enrollments[0]
        .version
        .clone();

    let mut files = BTreeMap::new();
    files.insert("welcome.yaml".to_owned(), WELCOME.to_owned());
    for _ in 0..2 {
        f.store
            .record_journey_version("welcome", &version, &files, t0())
            .await
            .unwrap();
    }
    assert_eq!(
        f.store
            .journey_version_files("welcome", &version)
            .await
            .unwrap(),
        Some(files)
    );
    assert_eq!(
        f.store
            .journey_version_files("welcome", "v0")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        f.store.active_versions().await.unwrap(),
        vec![("welcome".to_owned(), version.clone())]
    );
    let counts = f.store.journey_counts("welcome").await.unwrap();
    // Waiting at `pause`, the second step.
    assert_eq!(counts.active, BTreeMap::from([((version, 1), 1)]));
    assert!(counts.outcomes.is_empty());

    assert_eq!(f.store.schedule_tick("digest").await.unwrap(), None);
    f.store.set_schedule_tick("digest", t0()).await.unwrap();
    let next = t0() + TimeDelta::days(1);
    f.store.set_schedule_tick("digest", next).await.unwrap();
    assert_eq!(f.store.schedule_tick("digest").await.unwrap(), Some(next));
}

/// Variants and the treated group count only the customers outside the holdout group; the
/// control group is counted apart, by status, whatever its variant. Steps and outcomes
/// count everyone.
pub async fn journey_counts_keep_the_holdout_group_apart(f: Fixture) {
    let ended = |outcome| Status::Ended { outcome, at: t0() };
    let customers = [
        ("ann", Some("a"), false, Status::Active),
        ("bob", Some("a"), false, ended(Outcome::Converted)),
        ("cy", Some("b"), false, ended(Outcome::Exited)),
        ("dan", None, false, ended(Outcome::Converted)),
        ("eve", Some("a"), true, ended(Outcome::Converted)),
        ("fay", Some("b"), true, Status::Active),
        ("gus", None, true, ended(Outcome::Completed)),
    ];
    for (id, variant, control, status) in customers {
        identify(&f, id).await;
        // The group is fixed when the enrollment is first stored.
        let (mut customer, effects, seq) = handle(&f, id, "signed_up", t0()).await;
        let enrollment = &mut customer.state.enrollments[0];
        enrollment.variant = variant.map(str::to_owned);
        enrollment.control = control;
        enrollment.status = status;
        if status != Status::Active {
            enrollment.wake = None;
        }
        f.store
            .commit(Commit {
                effects: &effects,
                event: Some(seq),
                ..commit(&customer)
            })
            .await
            .unwrap();
    }
    let version = f
        .store
        .load_customer("ann")
        .await
        .unwrap()
        .state
        .enrollments[0]
        .version
        .clone();

    let counts = f.store.journey_counts("welcome").await.unwrap();
    let owned = |pairs: &[(&str, &str, u64)]| {
        pairs
            .iter()
            .map(|&(v, s, n)| ((v.to_owned(), s.to_owned()), n))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        counts.variants,
        owned(&[
            ("a", "active", 1),
            ("a", "converted", 1),
            ("b", "exited", 1)
        ])
    );
    let by_status = |pairs: &[(&str, u64)]| {
        pairs
            .iter()
            .map(|&(s, n)| (s.to_owned(), n))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        counts.treated,
        by_status(&[("active", 1), ("converted", 2), ("exited", 1)])
    );
    assert_eq!(
        counts.control,
        by_status(&[("active", 1), ("completed", 1), ("converted", 1)])
    );
    assert_eq!(counts.active, BTreeMap::from([((version, 1), 2)]));
    assert_eq!(
        counts.outcomes,
        by_status(&[("completed", 1), ("converted", 3), ("exited", 1)])
    );
    assert_eq!(
        f.store.journey_counts("nope").await.unwrap(),
        Default::default()
    );
}

/// Every version recorded for a journey, the latest loaded first, whether or not anyone
/// is on it; other journeys' versions are not.
pub async fn every_recorded_journey_version_is_listed(f: Fixture) {
    assert!(
        f.store
            .journey_versions("welcome")
            .await
            .unwrap()
            .is_empty()
    );
    let files = BTreeMap::from([("welcome.yaml".to_owned(), WELCOME.to_owned())]);
    let loads = [
        ("welcome", "v1", t0()),
        ("welcome", "v2", t0() + TimeDelta::hours(1)),
        ("other", "v9", t0() + TimeDelta::hours(2)),
        // Loaded again: the first load's time stays.
        ("welcome", "v1", t0() + TimeDelta::hours(3)),
    ];
    for (journey, version, at) in loads {
        f.store
            .record_journey_version(journey, version, &files, at)
            .await
            .unwrap();
    }
    let version = |version: &str, loaded_at| JourneyVersion {
        version: version.to_owned(),
        loaded_at,
    };
    assert_eq!(
        f.store.journey_versions("welcome").await.unwrap(),
        [
            version("v2", t0() + TimeDelta::hours(1)),
            version("v1", t0())
        ]
    );
    assert_eq!(
        f.store.journey_versions("other").await.unwrap(),
        [version("v9", t0() + TimeDelta::hours(2))]
    );
}

pub async fn a_receipt_finds_its_message_by_provider_id_or_address(f: Fixture) {
    identify(&f, "ann").await;
    track(&f, "ann", "signed_up", t0()).await;
    let claimed = f
        .store
        .claim_outbox(t0(), TimeDelta::minutes(1), 10, &[])
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

pub async fn a_setting_keeps_its_first_value(f: Fixture) {
    assert_eq!(
        f.store.setting_or_insert("link_secret", "a").await.unwrap(),
        "a"
    );
    assert_eq!(
        f.store.setting_or_insert("link_secret", "b").await.unwrap(),
        "a"
    );
    assert_eq!(f.store.setting_or_insert("other", "b").await.unwrap(), "b");
}

/// Group commit: refused commits in a batch (a stale state, an event handled already)
/// leave the others standing and write nothing of their own; an alias merge in the batch
/// lands too.
pub async fn a_batch_of_commits_keeps_every_commit_but_the_refused_ones(f: Fixture) {
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
    let signed_up = Event {
        name: "signed_up".to_owned(),
        at: t0(),
        properties: Map::new(),
    };
    let cy_effects = f.engine.on_event(&mut cy.state, &signed_up, t0());
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
    // cy's effects landed with cy: the welcome is in the message log.
    let logged = f.store.recent_messages("cy", 10).await.unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(
        f.store.load_customer("dan").await.unwrap().revision,
        dan.revision
    );
    assert_eq!(f.store.resolve("anon-2").await.unwrap(), "eve");
    // bob's event was not consumed by the refused commit.
    let inbox = f.store.inbox(0, 10).await.unwrap();
    assert_eq!(inbox.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![seq]);
}

pub async fn a_batch_of_events_is_accepted_with_repeats_recognised_inside_it(f: Fixture) {
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
    let [
        Ingested::Accepted(a),
        Ingested::Duplicate,
        Ingested::Accepted(b),
    ] = results[..]
    else {
        panic!("{results:?}");
    };
    let inbox = f.store.inbox(0, 10).await.unwrap();
    let stored: Vec<(i64, &str)> = inbox.iter().map(|e| (e.seq, e.customer.as_str())).collect();
    assert_eq!(stored, [(a, "ann"), (b, "bob")]);
}

pub async fn batch_loads_and_resolves_read_what_single_ones_read(f: Fixture) {
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
    let profile = &ann.state.profile;
    assert_eq!((profile.id.as_str(), profile.history.len()), ("ann", 2));
    assert_eq!(profile.messages.len(), 1);
}

/// Timers sharing one wake time are walked in batches, each after the last one taken,
/// without repeats or gaps.
pub async fn due_timers_are_read_in_batches_after_the_last_one_taken(f: Fixture) {
    let customers = ["a", "b", "c", "d", "e"];
    for id in customers {
        identify(&f, id).await;
        track(&f, id, "signed_up", t0()).await;
    }
    let at = t0() + TimeDelta::hours(1);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let batch = f.store.due_timers(at, after.as_ref(), 2).await.unwrap();
        assert!(batch.len() <= 2);
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

pub async fn many_deliveries_are_recorded_at_once_and_busy_channels_are_skipped(f: Fixture) {
    for id in ["ann", "bob"] {
        identify(&f, id).await;
        track(&f, id, "signed_up", t0()).await;
    }
    let lease = TimeDelta::minutes(1);
    let email_busy = ["email".to_owned()];
    let claimed = f.store.claim_outbox(t0(), lease, 10, &email_busy).await;
    assert!(claimed.unwrap().is_empty());
    let sms_busy = ["sms".to_owned()];
    let claimed = f
        .store
        .claim_outbox(t0(), lease, 10, &sms_busy)
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

/// A daemon alone on its database, starting again, takes back the claims it held when it
/// stopped, and the retries due within a lease, but leaves later retries alone.
pub async fn claims_of_a_daemon_that_is_gone_are_released(f: Fixture) {
    for id in ["ann", "bob", "cy"] {
        identify(&f, id).await;
        track(&f, id, "signed_up", t0()).await;
    }
    let lease = TimeDelta::minutes(2);
    let claimed = f.store.claim_outbox(t0(), lease, 10, &[]).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let [cut_off, soon, later] = &claimed[..] else {
        unreachable!()
    };
    let soon_at = t0() + TimeDelta::seconds(30);
    let later_at = t0() + TimeDelta::minutes(10);
    f.store
        .outbox_retry(&soon.idempotency_key, "503", soon_at)
        .await
        .unwrap();
    f.store
        .outbox_retry(&later.idempotency_key, "429", later_at)
        .await
        .unwrap();

    let restart = t0() + TimeDelta::seconds(5);
    assert!(
        f.store
            .claim_outbox(restart, lease, 10, &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(f.store.release_claims(restart, lease).await.unwrap(), 2);
    let again = f.store.claim_outbox(restart, lease, 10, &[]).await.unwrap();
    let mut keys: Vec<&str> = again.iter().map(|m| m.idempotency_key.as_str()).collect();
    keys.sort_unstable();
    let mut expected = [
        cut_off.idempotency_key.as_str(),
        soon.idempotency_key.as_str(),
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    let sent: Vec<(&str, Option<&str>)> = keys.iter().map(|key| (*key, None)).collect();
    f.store.outbox_sent_many(&sent, restart).await.unwrap();
    assert!(
        f.store
            .claim_outbox(later_at - TimeDelta::seconds(1), lease, 10, &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        f.store
            .claim_outbox(later_at, lease, 10, &[])
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A commit of a handled event, its messages claimed by the committer or not.
fn claimed_commit(
    (customer, effects, seq): &(Customer, Vec<Effect>, i64),
    claim_until: Option<DateTime<Utc>>,
) -> Commit<'_> {
    Commit {
        state: &customer.state,
        revision: customer.revision,
        effects,
        event: Some(*seq),
        merged: None,
        now: t0(),
        claim_until,
        message_id: None,
    }
}

/// Messages committed with `claim_until` are their committer's to deliver: no claim takes
/// them before then, and after it (the committer died) they are claimed as a second
/// attempt. Both the single commit and the batch write them so.
pub async fn messages_committed_claimed_wait_for_their_committer_until_the_claim_runs_out(
    f: Fixture,
) {
    let until = t0() + TimeDelta::minutes(2);
    let mut handled = Vec::new();
    for id in ["ann", "bob", "cy", "dan"] {
        identify(&f, id).await;
        handled.push(handle(&f, id, "signed_up", t0()).await);
    }
    let batch = [
        claimed_commit(&handled[0], Some(until)),
        claimed_commit(&handled[1], Some(until)),
        claimed_commit(&handled[2], None),
    ];
    for result in f.store.commit_many(&batch).await {
        result.unwrap();
    }
    f.store
        .commit(claimed_commit(&handled[3], Some(until)))
        .await
        .unwrap();
    assert_eq!(f.store.depths().await.unwrap().outbox_pending, 4);

    // Longer than the committer's claim: the message claimed here stays claimed.
    let lease = TimeDelta::minutes(3);
    let claimed = f.store.claim_outbox(t0(), lease, 10, &[]).await.unwrap();
    assert_eq!(claimed.len(), 1, "only the unclaimed message is due");
    assert_eq!(
        (claimed[0].customer.as_str(), claimed[0].attempts),
        ("cy", 1)
    );
    let before = until - TimeDelta::seconds(1);
    assert!(
        f.store
            .claim_outbox(before, lease, 10, &[])
            .await
            .unwrap()
            .is_empty()
    );
    let mut after = f.store.claim_outbox(until, lease, 10, &[]).await.unwrap();
    after.sort_by(|a, b| a.customer.cmp(&b.customer));
    let seen: Vec<(&str, u32)> = after
        .iter()
        .map(|m| (m.customer.as_str(), m.attempts))
        .collect();
    assert_eq!(seen, [("ann", 2), ("bob", 2), ("dan", 2)]);
}

/// Messages the dispatcher found too late to go out are skipped as `expired`: the message
/// log says so as it does for the engine's own expired sends, frequency caps stop
/// counting them, and their outbox rows are never claimed again. A message recorded sent
/// meanwhile keeps its record.
pub async fn messages_that_came_too_late_are_skipped_as_expired_for_good(f: Fixture) {
    for id in ["ann", "bob", "cy"] {
        identify(&f, id).await;
        track(&f, id, "signed_up", t0()).await;
    }
    let later = t0() + TimeDelta::days(2);
    let lease = TimeDelta::minutes(1);
    let claimed = f.store.claim_outbox(later, lease, 10, &[]).await.unwrap();
    let key = |id: &str| {
        claimed
            .iter()
            .find(|m| m.customer == id)
            .map(|m| m.idempotency_key.clone())
            .unwrap()
    };
    let (ann, bob) = (key("ann"), key("bob"));
    f.store.outbox_sent(&bob, None, later).await.unwrap();

    let expired = f
        .store
        .outbox_expired(&[ann.as_str(), bob.as_str(), "no-such-key"], later)
        .await
        .unwrap();
    assert_eq!(expired, 1, "only ann's message was still pending");
    let logged = f.store.recent_messages("ann", 10).await.unwrap();
    assert_eq!(
        (logged[0].outcome.as_str(), logged[0].reason.as_deref()),
        ("skipped", Some("expired"))
    );
    assert_eq!(logged[0].delivery.as_deref(), Some("skipped"));
    let customer = f.store.load_customer("ann").await.unwrap();
    assert!(customer.state.profile.messages.is_empty());
    let bob_logged = f.store.recent_messages("bob", 10).await.unwrap();
    assert_eq!(
        (
            bob_logged[0].outcome.as_str(),
            bob_logged[0].delivery.as_deref()
        ),
        ("sent", Some("sent"))
    );

    // Gone from the pending set: only cy's message is left, and claimed again once its
    // lease runs out.
    assert_eq!(f.store.depths().await.unwrap().outbox_pending, 1);
    let again = f
        .store
        .claim_outbox(later + lease, lease, 10, &[])
        .await
        .unwrap();
    let customers: Vec<&str> = again.iter().map(|m| m.customer.as_str()).collect();
    assert_eq!(customers, ["cy"]);
    assert_eq!(f.store.outbox_expired(&[&ann], later).await.unwrap(), 0);
    assert_eq!(f.store.outbox_expired(&[], later).await.unwrap(), 0);
}

/// A commit carrying the caller's `messageId` (a retried API enrollment) is written once:
/// a repeat within seven days is refused and writes nothing, alone or in a batch, and is
/// written again once the window has passed.
pub async fn a_commit_with_a_message_id_applies_once_within_seven_days(f: Fixture) {
    let with_id = |c, id, now| Commit {
        message_id: Some(id),
        now,
        ..commit(c)
    };
    let ann = f.store.load_customer("ann").await.unwrap();
    f.store.commit(with_id(&ann, "e-1", t0())).await.unwrap();
    let ann = f.store.load_customer("ann").await.unwrap();
    let again = f
        .store
        .commit(with_id(&ann, "e-1", t0() + TimeDelta::days(6)))
        .await;
    assert!(
        matches!(&again, Err(Error::Repeated(id)) if id == "e-1"),
        "{again:?}"
    );
    let unchanged = f.store.load_customer("ann").await.unwrap();
    assert_eq!(unchanged.revision, ann.revision, "a repeat writes nothing");

    // In one batch, two commits with one id (two requests at once): one is written, the
    // other refused and not written.
    let bob = f.store.load_customer("bob").await.unwrap();
    let cy = f.store.load_customer("cy").await.unwrap();
    let results = f
        .store
        .commit_many(&[with_id(&bob, "e-2", t0()), with_id(&cy, "e-2", t0())])
        .await;
    let refused = |r: &Result<(), Error>| matches!(r, Err(Error::Repeated(id)) if id == "e-2");
    let written = match (&results[0], &results[1]) {
        (Ok(()), other) if refused(other) => "bob",
        (other, Ok(())) if refused(other) => "cy",
        _ => panic!("not one written and one refused: {results:?}"),
    };
    for id in ["bob", "cy"] {
        let revision = f.store.load_customer(id).await.unwrap().revision;
        assert_eq!(revision, i64::from(id == written), "{id}");
    }

    let later = f
        .store
        .commit(with_id(&ann, "e-1", t0() + TimeDelta::days(8)))
        .await;
    assert!(later.is_ok(), "{later:?}");
}

/// The unhandled events addressed to one id before a sequence number, oldest first; other
/// customers' events, handled ones and later ones are left out.
pub async fn a_customers_unhandled_events_before_one_are_listed_oldest_first(f: Fixture) {
    let mut seqs = Vec::new();
    for (customer, name) in [("ann", "a"), ("bob", "b"), ("ann", "c"), ("ann", "d")] {
        match f
            .store
            .ingest_event(&new_event(customer, name, None), t0())
            .await
            .unwrap()
        {
            Ingested::Accepted(seq) => seqs.push(seq),
            Ingested::Duplicate => unreachable!("no message id"),
        }
    }
    let names = |events: Vec<StoredEvent>| -> Vec<String> {
        events.into_iter().map(|e| e.event.name).collect()
    };
    let before_last = f.store.unhandled_before("ann", seqs[3]).await.unwrap();
    assert_eq!(names(before_last), ["a", "c"]);
    let ann = f.store.load_customer("ann").await.unwrap();
    f.store
        .commit(Commit {
            event: Some(seqs[0]),
            ..commit(&ann)
        })
        .await
        .unwrap();
    let before_last = f.store.unhandled_before("ann", seqs[3]).await.unwrap();
    assert_eq!(names(before_last), ["c"]);
    assert!(
        f.store
            .unhandled_before("bob", seqs[1])
            .await
            .unwrap()
            .is_empty()
    );
}
