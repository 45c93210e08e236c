//! The outbox dispatcher and the timer loop over a real SQLite store: a channel never has
//! more deliveries in flight than its `concurrency`, and while it is saturated other
//! channels go on; timers due together fire once each; a message due longer ago than its
//! journey's `max_lateness` is skipped as expired rather than sent.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, watch};
use waymark::channels::Channels;
use waymark::config::Config;
use waymark::daemon::{Daemon, Input};
use waymark_channel::{
    Channel, ChannelKind, ConfigError, Delivery, DeliveryError, OutboundMessage, Registry,
};
use waymark_scheduler::{ChannelDirectory, Clock, Engine, ManualClock, SystemClock};
use waymark_store::SqliteStore;

const SLOW: &str = "
id: slow_news
trigger:
  api: true
steps:
  note:
    send: slow
    template: note
";

const FAST: &str = "
id: fast_news
trigger:
  api: true
steps:
  note:
    send: fast
    template: note
";

const NOTE: &str = "
slow:
  text: \"News for {{ profile.id }}\"
fast:
  text: \"News for {{ profile.id }}\"
";

/// What a channel saw: deliveries in flight now and at most, and done, with the
/// customers they went to.
#[derive(Default)]
struct Seen {
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    delivered: AtomicUsize,
    customers: Mutex<Vec<String>>,
}

/// A channel whose deliveries wait at a gate (when it has one) until the test opens it.
struct Recording {
    seen: Arc<Seen>,
    gate: Option<Arc<Semaphore>>,
}

#[async_trait]
impl Channel for Recording {
    async fn deliver(&self, message: &OutboundMessage) -> Result<Delivery, DeliveryError> {
        let now = self.seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen.most_in_flight.fetch_max(now, Ordering::SeqCst);
        if let Some(gate) = &self.gate
            && let Ok(permit) = gate.acquire().await
        {
            permit.forget();
        }
        self.seen.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.seen
            .customers
            .lock()
            .unwrap()
            .push(message.customer_id.clone());
        self.seen.delivered.fetch_add(1, Ordering::SeqCst);
        Ok(Delivery::default())
    }
}

/// `kind: gated` and `kind: open`, sharing what they see with the test.
struct RecordingKind {
    kind: &'static str,
    seen: Arc<Seen>,
    gate: Option<Arc<Semaphore>>,
}

impl ChannelKind for RecordingKind {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn address_trait(&self) -> Option<&'static str> {
        None
    }

    fn build(&self, _name: &str, _config: &Value) -> Result<Arc<dyn Channel>, ConfigError> {
        Ok(Arc::new(Recording {
            seen: self.seen.clone(),
            gate: self.gate.clone(),
        }))
    }
}

fn write(root: &Path, file: &str, text: &str) {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Waits (without asserting on time) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..3000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting until {what}");
}

/// A daemon on a fresh SQLite file in `dir`, running `journeys` (file name, text; the
/// `note` template comes along) on `channels` built from `registry`, on the system clock.
async fn daemon(
    dir: &Path,
    journeys: &[(&str, &str)],
    registry: &Registry,
    channels: &[(&str, Value)],
) -> Arc<Daemon> {
    daemon_on(dir, journeys, registry, channels, Arc::new(SystemClock)).await
}

/// [`daemon`] on `clock`.
async fn daemon_on(
    dir: &Path,
    journeys: &[(&str, &str)],
    registry: &Registry,
    channels: &[(&str, Value)],
    clock: Arc<dyn Clock>,
) -> Arc<Daemon> {
    let root = dir.join("journeys");
    for (file, text) in journeys {
        write(&root, file, text);
    }
    write(&root, "templates/note.yaml", NOTE);
    let (workspace, _) = waymark_journey::load(&root).unwrap();
    let mut config = Config::defaults();
    config.journeys = root;
    config.defaults = false;
    config.channels = channels
        .iter()
        .map(|(name, channel)| ((*name).to_owned(), channel.clone()))
        .collect();
    let channels = Arc::new(Channels::build(registry, &config.channels, false).unwrap());
    let directory: Arc<dyn ChannelDirectory> = channels.clone();
    let engine = Engine::new(workspace, config.policy.clone(), directory);
    let store = SqliteStore::open_path(&dir.join("w.db"))
        .await
        .unwrap()
        .shared();
    Daemon::new(store, engine, channels, clock, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_never_has_more_deliveries_in_flight_than_its_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Arc::new(Seen::default());
    let fast = Arc::new(Seen::default());
    let gate = Arc::new(Semaphore::new(0));
    let registry = Registry::new()
        .with(RecordingKind {
            kind: "gated",
            seen: slow.clone(),
            gate: Some(gate.clone()),
        })
        .with(RecordingKind {
            kind: "open",
            seen: fast.clone(),
            gate: None,
        });
    let daemon = daemon(
        dir.path(),
        &[("slow.yaml", SLOW), ("fast.yaml", FAST)],
        &registry,
        &[
            ("slow", json!({"kind": "gated", "concurrency": 2})),
            ("fast", json!({"kind": "open"})),
        ],
    )
    .await;

    for (journey, customers) in [("slow_news", 10), ("fast_news", 5)] {
        for i in 0..customers {
            let input = Input::Enroll {
                journey: journey.to_owned(),
                properties: Map::new(),
                message_id: None,
            };
            daemon.call(&format!("{journey}-{i}"), input).await.unwrap();
        }
    }
    let (stop, stopped) = watch::channel(false);
    let dispatcher = tokio::spawn(daemon.clone().dispatch_loop(stopped));

    // The slow provider holds every delivery it gets: it has as many as it may...
    until("the slow channel is full and the fast one done", || {
        slow.in_flight.load(Ordering::SeqCst) >= 2 && fast.delivered.load(Ordering::SeqCst) == 5
    })
    .await;
    // ...and not one more, while the fast channel delivered everything meanwhile.
    assert_eq!(slow.most_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(slow.delivered.load(Ordering::SeqCst), 0);

    gate.add_permits(100);
    until("every slow message is delivered", || {
        slow.delivered.load(Ordering::SeqCst) == 10
    })
    .await;
    assert_eq!(slow.most_in_flight.load(Ordering::SeqCst), 2);
    let store = daemon.store.clone();
    for _ in 0..3000 {
        if store.depths().await.unwrap().outbox_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.depths().await.unwrap().outbox_pending, 0);
    let _ = stop.send(true);
    dispatcher.await.unwrap();
}

/// An API journey `id`: a one-second wait, then a note on the `fast` channel.
fn wait_then_note(id: &str) -> String {
    format!(
        "
id: {id}
trigger:
  api: true
steps:
  pause:
    wait: 1s
    next: note
  note:
    send: fast
    template: note
"
    )
}

/// Timers that fall due together are fired in batches, a customer's queue held for
/// the batch: a customer with two timers due at once (the second waits behind the batch
/// in her queue) gets each fired once, and every message goes out once, straight from
/// the commit to the dispatcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_due_together_fire_once_each_even_two_of_one_customer() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    let registry = Registry::new().with(RecordingKind {
        kind: "open",
        seen: seen.clone(),
        gate: None,
    });
    let daemon = daemon(
        dir.path(),
        &[
            ("first.yaml", &wait_then_note("first")),
            ("second.yaml", &wait_then_note("second")),
        ],
        &registry,
        &[("fast", json!({"kind": "open"}))],
    )
    .await;
    let (stop, stopped) = watch::channel(false);
    let dispatcher = tokio::spawn(daemon.clone().dispatch_loop(stopped.clone()));

    let enrollments = [
        ("ann", "first"),
        ("ann", "second"),
        ("bob", "first"),
        ("cy", "second"),
    ];
    for (customer, journey) in enrollments {
        let input = Input::Enroll {
            journey: journey.to_owned(),
            properties: Map::new(),
            message_id: None,
        };
        daemon.call(customer, input).await.unwrap();
    }
    let timers = tokio::spawn(daemon.clone().timer_loop(stopped));

    until("every message is delivered", || {
        seen.delivered.load(Ordering::SeqCst) >= enrollments.len()
    })
    .await;
    assert!(daemon.drain(Duration::from_secs(10)).await);
    let _ = stop.send(true);
    dispatcher.await.unwrap();
    timers.await.unwrap();

    assert_eq!(seen.delivered.load(Ordering::SeqCst), enrollments.len());
    assert_eq!(daemon.metrics.timers_fired.load(Ordering::SeqCst), 4);
    let depths = daemon.store.depths().await.unwrap();
    assert_eq!((depths.active_enrollments, depths.outbox_pending), (0, 0));
    let ann = daemon.store.recent_messages("ann", 10).await.unwrap();
    let mut journeys: Vec<&str> = ann.iter().map(|m| m.journey.as_str()).collect();
    journeys.sort_unstable();
    assert_eq!(journeys, ["first", "second"]);
    assert!(ann.iter().all(|m| m.delivery.as_deref() == Some("sent")));
}

/// An API journey sending a note on `fast` that may go out at most ten seconds late.
const IMPATIENT: &str = "
id: impatient_news
policy:
  max_lateness: 10s
trigger:
  api: true
steps:
  note:
    send: fast
    template: note
";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
}

async fn enroll(daemon: &Arc<Daemon>, customer: &str, journey: &str) {
    let input = Input::Enroll {
        journey: journey.to_owned(),
        properties: Map::new(),
        message_id: None,
    };
    daemon.call(customer, input).await.unwrap();
}

/// Waits until the outbox holds no pending message.
async fn until_outbox_empty(daemon: &Daemon) {
    for _ in 0..3000 {
        if daemon.store.depths().await.unwrap().outbox_pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting for the outbox to empty");
}

/// `(outcome, reason, delivery)` of the customer's latest message.
async fn latest_message(
    daemon: &Daemon,
    customer: &str,
) -> (String, Option<String>, Option<String>) {
    let messages = daemon.store.recent_messages(customer, 1).await.unwrap();
    let m = &messages[0];
    (m.outcome.clone(), m.reason.clone(), m.delivery.clone())
}

/// Messages waiting in the outbox while no dispatcher runs (the daemon was down): the one
/// whose journey allows ten seconds' lateness, now eleven seconds old, is skipped as
/// expired when the dispatcher claims it, and no longer counts toward frequency caps; one
/// made within its lateness, and one of a journey on the daemon's 24 hours, go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_claimed_later_than_its_max_lateness_is_skipped_as_expired() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    let registry = Registry::new().with(RecordingKind {
        kind: "open",
        seen: seen.clone(),
        gate: None,
    });
    let clock = Arc::new(ManualClock::new(t0()));
    let daemon = daemon_on(
        dir.path(),
        &[("impatient.yaml", IMPATIENT), ("fast.yaml", FAST)],
        &registry,
        &[("fast", json!({"kind": "open"}))],
        clock.clone(),
    )
    .await;

    enroll(&daemon, "stale", "impatient_news").await;
    enroll(&daemon, "patient", "fast_news").await;
    clock.set(t0() + TimeDelta::seconds(11));
    enroll(&daemon, "fresh", "impatient_news").await;
    assert_eq!(daemon.store.depths().await.unwrap().outbox_pending, 3);

    let (stop, stopped) = watch::channel(false);
    let dispatcher = tokio::spawn(daemon.clone().dispatch_loop(stopped));
    until_outbox_empty(&daemon).await;
    until("both messages in time are delivered", || {
        seen.delivered.load(Ordering::SeqCst) >= 2
    })
    .await;
    let _ = stop.send(true);
    dispatcher.await.unwrap();

    let mut delivered = seen.customers.lock().unwrap().clone();
    delivered.sort_unstable();
    assert_eq!(delivered, ["fresh", "patient"]);
    let skipped = (
        "skipped".to_owned(),
        Some("expired".to_owned()),
        Some("skipped".to_owned()),
    );
    assert_eq!(latest_message(&daemon, "stale").await, skipped);
    let stale = daemon.store.load_customer("stale").await.unwrap();
    assert!(stale.state.profile.messages.is_empty());
    let sent = ("sent".to_owned(), None, Some("sent".to_owned()));
    assert_eq!(latest_message(&daemon, "fresh").await, sent);
    assert_eq!(latest_message(&daemon, "patient").await, sent);
}

/// A message handed to the dispatcher straight from its commit, that waits for its
/// channel's only delivery slot past its journey's `max_lateness`, is skipped as expired
/// when its turn comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_message_that_waits_past_its_max_lateness_is_skipped_as_expired() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    let gate = Arc::new(Semaphore::new(0));
    let registry = Registry::new().with(RecordingKind {
        kind: "gated",
        seen: seen.clone(),
        gate: Some(gate.clone()),
    });
    let clock = Arc::new(ManualClock::new(t0()));
    let daemon = daemon_on(
        dir.path(),
        &[("impatient.yaml", IMPATIENT)],
        &registry,
        &[("fast", json!({"kind": "gated", "concurrency": 1}))],
        clock.clone(),
    )
    .await;
    let (stop, stopped) = watch::channel(false);
    let dispatcher = tokio::spawn(daemon.clone().dispatch_loop(stopped));

    enroll(&daemon, "first", "impatient_news").await;
    until("the first message holds the only slot", || {
        seen.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    enroll(&daemon, "second", "impatient_news").await;
    clock.set(t0() + TimeDelta::seconds(11));
    gate.add_permits(10);
    until_outbox_empty(&daemon).await;
    let _ = stop.send(true);
    dispatcher.await.unwrap();

    assert_eq!(*seen.customers.lock().unwrap(), ["first"]);
    assert_eq!(
        latest_message(&daemon, "second").await,
        (
            "skipped".to_owned(),
            Some("expired".to_owned()),
            Some("skipped".to_owned())
        )
    );
}
