//! Daemons sharing one PostgreSQL database (at `WAYMARK_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/test`, in a schema of the test's own) handle one
//! customer's events in the order they were accepted, whichever daemon accepted each.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Map;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};
use waymark::channels::Channels;
use waymark::config::Config;
use waymark::daemon::Daemon;
use waymark_scheduler::{ChannelDirectory, Clock as _, Engine, SystemClock};
use waymark_store::{Ingested, NewEvent, PostgresStore};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A cart left behind gets a reminder an hour later, unless the customer buys first.
const CART: &str = "
id: cart
trigger:
  event: cart_abandoned
goal: order_completed
steps:
  pause:
    wait: 1h
    next: remind
  remind:
    send: email
    template: remind
";

const REMIND: &str = "
email:
  subject: Your cart
  text: Still thinking it over?
";

fn write(root: &Path, file: &str, text: &str) {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A daemon on its own connection pool to the schema, as a replica has.
async fn replica(options: &PgConnectOptions, journeys: &Path) -> (PostgresStore, Arc<Daemon>) {
    let store = PostgresStore::connect_with(options.clone()).await.unwrap();
    let mut config = Config::defaults();
    config.journeys = journeys.to_path_buf();
    let channels =
        Arc::new(Channels::build(&waymark::default_registry(), &config.channels, true).unwrap());
    let directory: Arc<dyn ChannelDirectory> = channels.clone();
    let (workspace, _) = waymark_journey::load(journeys).unwrap();
    let engine = Engine::new(workspace, config.policy.clone(), directory);
    let daemon = Daemon::new(
        store.clone().shared(),
        engine,
        channels,
        Arc::new(SystemClock),
        config,
    );
    (store, daemon)
}

fn event(name: &str) -> NewEvent {
    NewEvent {
        customer: "ann".to_owned(),
        name: name.to_owned(),
        at: SystemClock.now(),
        properties: Map::new(),
        message_id: None,
    }
}

/// Replica A accepts ann's abandoned cart and has not handled it yet when replica B
/// accepts her order: B handles the cart first, so she enters the journey and converts,
/// rather than buying before she ever abandoned the cart and then waiting for a reminder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_handles_a_customers_earlier_event_another_accepted_before_its_own() {
    let url = std::env::var("WAYMARK_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let base = PgConnectOptions::from_str(&url).unwrap();
    let mut admin = PgConnection::connect_with(&base)
        .await
        .unwrap_or_else(|e| panic!("these tests need PostgreSQL at {url}: {e}"));
    let schema = format!("waymark_replicas_{}", std::process::id());
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let options = base.options([("search_path", schema.as_str())]);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cart.yaml", CART);
    write(dir.path(), "templates/remind.yaml", REMIND);

    let (store_a, a) = replica(&options, dir.path()).await;
    let (store_b, b) = replica(&options, dir.path()).await;
    let accepted = a
        .store
        .ingest_event(&event("cart_abandoned"), SystemClock.now())
        .await;
    assert!(
        matches!(accepted, Ok(Ingested::Accepted(_))),
        "{accepted:?}"
    );
    let accepted = b.ingest(event("order_completed")).await;
    assert!(
        matches!(accepted, Ok(Ingested::Accepted(_))),
        "{accepted:?}"
    );
    assert!(b.drain(Duration::from_secs(10)).await);

    let ann = b.store.load_customer("ann").await.unwrap();
    let history: Vec<&str> = ann
        .state
        .profile
        .history
        .events()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(history, ["cart_abandoned", "order_completed"]);
    let outcomes: Vec<_> = ann
        .state
        .enrollments
        .iter()
        .map(|e| e.outcome().map(|o| o.as_str()))
        .collect();
    assert_eq!(outcomes, [Some("converted")]);

    drop((a, b));
    store_a.close().await;
    store_b.close().await;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .unwrap();
}
