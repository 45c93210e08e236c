//! The store contract on PostgreSQL, and what replicas sharing one database rely on.
//!
//! Each test runs in a schema of its own, created for it in the database at
//! `WAYMARK_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`) and dropped
//! afterwards, so tests run in parallel without seeing each other's rows. A database that
//! cannot be reached fails the tests.

use std::collections::HashSet;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::TimeDelta;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};
use tokio::task::JoinSet;
use waymark_store::{Commit, Error, Ingested, PostgresStore, Store};

mod contract;

use contract::{Fixture, commit, identify, new_event, t0, track};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Stores on one fresh schema, as replicas sharing a database see it.
struct Replicas {
    stores: Vec<Arc<dyn Store>>,
    /// To connect to the same schema beside the stores.
    options: PgConnectOptions,
}

/// Runs `test` with `count` stores on a new schema, then drops the schema, also when the
/// test fails.
async fn in_fresh_schema<F, Fut>(count: usize, test: F)
where
    F: FnOnce(Replicas) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    static SCHEMAS: AtomicUsize = AtomicUsize::new(0);
    let url = std::env::var("WAYMARK_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let base = PgConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("WAYMARK_TEST_POSTGRES `{url}` is not a PostgreSQL URL: {e}"));
    // A schema that cannot be dropped (a connection left in a transaction on it) fails
    // the test rather than hanging it.
    let admin_options = base.clone().options([("lock_timeout", "60s")]);
    let mut admin = PgConnection::connect_with(&admin_options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the PostgreSQL store tests need a server at {url} ({e}); start it, or point \
             WAYMARK_TEST_POSTGRES at one"
            )
        });
    // Unique among the processes running now; a leftover of an earlier process with the
    // same id is dropped first.
    let schema = format!(
        "waymark_test_{}_{}",
        std::process::id(),
        SCHEMAS.fetch_add(1, Ordering::Relaxed)
    );
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    )))
    .execute(&mut admin)
    .await
    .expect("creating the test's schema");
    let options = base.options([("search_path", schema.as_str())]);

    let mut opened = Vec::new();
    for _ in 0..count {
        opened.push(
            PostgresStore::connect_with(options.clone())
                .await
                .expect("opening a store on the test's schema"),
        );
    }
    let replicas = Replicas {
        stores: opened.iter().cloned().map(PostgresStore::shared).collect(),
        options,
    };
    let outcome = tokio::spawn(test(replicas)).await;
    for store in opened {
        store.close().await;
    }
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .expect("dropping the test's schema");
    if let Err(failed) = outcome {
        std::panic::resume_unwind(failed.into_panic());
    }
}

/// Runs a contract test on one store.
async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(Fixture) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    in_fresh_schema(1, |mut r| test(Fixture::new(r.stores.remove(0)))).await;
}

contract::suite!(on_postgres);

/// Gives `n` customers a welcome email each, waiting in the outbox.
async fn queue_welcomes(f: &Fixture, n: usize) {
    for i in 0..n {
        let id = format!("c{i:02}");
        identify(f, &id).await;
        track(f, &id, "signed_up", t0()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_claiming_at_once_never_get_the_same_message() {
    in_fresh_schema(2, |r| async move {
        let f = Fixture::new(r.stores[0].clone());
        queue_welcomes(&f, 16).await;
        let mut claims = JoinSet::new();
        for store in r.stores {
            claims.spawn(async move {
                let mut keys = Vec::new();
                loop {
                    let batch = store
                        .claim_outbox(t0(), TimeDelta::minutes(1), 2, &[])
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return keys;
                    }
                    keys.extend(batch.into_iter().map(|m| m.idempotency_key));
                }
            });
        }
        let claimed: Vec<String> = claims.join_all().await.into_iter().flatten().collect();
        let distinct: HashSet<&String> = claimed.iter().collect();
        assert_eq!(distinct.len(), claimed.len(), "claimed twice: {claimed:?}");
        assert_eq!(claimed.len(), 16);
    })
    .await;
}

#[tokio::test]
async fn a_claim_skips_messages_another_replica_is_claiming_instead_of_waiting() {
    in_fresh_schema(1, |r| async move {
        let f = Fixture::new(r.stores[0].clone());
        queue_welcomes(&f, 2).await;
        // Another replica's claim, caught between picking c00's message and committing.
        let mut other = PgConnection::connect_with(&r.options).await.unwrap();
        let mut claiming = other.begin().await.unwrap();
        sqlx::query("SELECT idempotency_key FROM outbox WHERE customer = 'c00' FOR UPDATE")
            .execute(&mut *claiming)
            .await
            .unwrap();
        // Waiting for that lock would run into this timeout and fail the claim.
        let guarded =
            PostgresStore::connect_with(r.options.clone().options([("lock_timeout", "30s")]))
                .await
                .unwrap();
        let lease = TimeDelta::minutes(1);
        let claimed = guarded.claim_outbox(t0(), lease, 10, &[]).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].customer, "c01");

        claiming.rollback().await.unwrap();
        let claimed = guarded.claim_outbox(t0(), lease, 10, &[]).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].customer, "c00");
        guarded.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_of_one_customer_from_two_replicas_let_exactly_one_win() {
    in_fresh_schema(2, |r| async move {
        let [a, b] = [r.stores[0].clone(), r.stores[1].clone()];
        let f = Fixture::new(a.clone());
        identify(&f, "ann").await;
        for round in 0..8 {
            let (x, y) = tokio::join!(a.load_customer("ann"), b.load_customer("ann"));
            let (mut x, mut y) = (x.unwrap(), y.unwrap());
            assert_eq!(x.revision, y.revision);
            x.state.profile.traits.insert("by".to_owned(), json!("a"));
            y.state.profile.traits.insert("by".to_owned(), json!("b"));
            let results = tokio::join!(a.commit(commit(&x)), b.commit(commit(&y)));
            let winner = match &results {
                (Ok(()), Err(Error::Conflict(id))) if id == "ann" => "a",
                (Err(Error::Conflict(id)), Ok(())) if id == "ann" => "b",
                other => panic!("round {round}: not one commit and one conflict: {other:?}"),
            };
            let stored = b.load_customer("ann").await.unwrap();
            assert_eq!(stored.revision, x.revision + 1);
            assert_eq!(stored.state.profile.traits["by"], winner);
        }

        // Two replicas creating the same new customer.
        let (x, y) = tokio::join!(a.load_customer("bob"), b.load_customer("bob"));
        let (x, y) = (x.unwrap(), y.unwrap());
        let results = tokio::join!(a.commit(commit(&x)), b.commit(commit(&y)));
        assert!(
            matches!(
                results,
                (Ok(()), Err(Error::Conflict(_))) | (Err(Error::Conflict(_)), Ok(()))
            ),
            "{results:?}"
        );

        // Two replicas handling the same inbox event.
        let Ingested::Accepted(seq) = a
            .ingest_event(&new_event("ann", "visit", None), t0())
            .await
            .unwrap()
        else {
            unreachable!("no message id, no duplicate")
        };
        let (x, y) = tokio::join!(a.load_customer("ann"), b.load_customer("ann"));
        let (x, y) = (x.unwrap(), y.unwrap());
        let with_event = |c| Commit {
            event: Some(seq),
            ..commit(c)
        };
        let results = tokio::join!(a.commit(with_event(&x)), b.commit(with_event(&y)));
        assert!(
            matches!(
                results,
                (Ok(()), Err(Error::Handled(_))) | (Err(Error::Handled(_)), Ok(()))
            ),
            "{results:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_of_one_message_id_are_accepted_once() {
    in_fresh_schema(2, |r| async move {
        for round in 0..4 {
            let message_id = format!("m-{round}");
            let mut ingests = JoinSet::new();
            for n in 0..8 {
                let store = r.stores[n % 2].clone();
                let event = new_event("ann", "visit", Some(&message_id));
                ingests.spawn(async move { store.ingest_event(&event, t0()).await.unwrap() });
            }
            let outcomes = ingests.join_all().await;
            let accepted = outcomes
                .iter()
                .filter(|o| matches!(o, Ingested::Accepted(_)))
                .count();
            assert_eq!(accepted, 1, "round {round}: {outcomes:?}");
        }
        assert_eq!(r.stores[0].inbox(0, 100).await.unwrap().len(), 4);
    })
    .await;
}

/// One customer's events accepted by two replicas go in the order they were accepted: a
/// commit of the later one, while the earlier one is unhandled, is refused as behind,
/// and the earlier one is there to handle first.
#[tokio::test]
async fn a_later_event_of_a_customer_waits_for_an_earlier_one_another_replica_accepted() {
    in_fresh_schema(2, |r| async move {
        let [a, b] = [r.stores[0].clone(), r.stores[1].clone()];
        let accept = |store: Arc<dyn Store>, name: &'static str| async move {
            match store.ingest_event(&new_event("ann", name, None), t0()).await {
                Ok(Ingested::Accepted(seq)) => seq,
                other => panic!("{other:?}"),
            }
        };
        let first = accept(a.clone(), "cart_abandoned").await;
        let second = accept(b.clone(), "order_completed").await;
        let handle = |seq| {
            let b = b.clone();
            async move {
                let ann = b.load_customer("ann").await.unwrap();
                b.commit(Commit {
                    event: Some(seq),
                    ..commit(&ann)
                })
                .await
            }
        };
        let refused = handle(second).await;
        assert!(
            matches!(&refused, Err(Error::Behind { customer, seq }) if customer == "ann" && *seq == second),
            "{refused:?}"
        );
        let earlier = b.unhandled_before("ann", second).await.unwrap();
        assert_eq!(earlier.iter().map(|e| e.seq).collect::<Vec<_>>(), [first]);
        handle(first).await.unwrap();
        handle(second).await.unwrap();
        assert!(b.unhandled_before("ann", second + 1).await.unwrap().is_empty());
    })
    .await;
}
