//! The running daemon: the engine on the store, one customer at a time, and the loops
//! that fire timers and deliver the outbox.
//!
//! Every input for a customer (an event, identify, alias, enroll, timer, schedule tick, a
//! dead address) goes through that customer's queue, so one customer's inputs are handled
//! one at a time and in order. Each is applied as load -> engine -> commit; the commit
//! refuses a state another writer changed meanwhile, and the input is then applied again
//! on the fresh state, which keeps replicas (and aliased ids that raced onto two queues)
//! from overwriting each other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use waymark_channel::{DeliveryError, OutboundMessage};
use waymark_journey::{Diagnostic, Trigger, Workspace};
use waymark_scheduler::{Clock, Effect, Engine, EnrollError, Event, SendOutcome};
use waymark_store::{Commit, Error as StoreError, OutboxMessage, Store};

use crate::channels::Channels;
use crate::config::Config;
use crate::links::{LinkTarget, Links};
use crate::metrics::Metrics;

/// How often one input is re-applied after a concurrent change before giving up.
const MAX_CONFLICTS: usize = 8;
/// Delivery attempts before a retryable failure becomes a permanent one.
pub const MAX_DELIVERY_ATTEMPTS: u32 = 10;
/// How long a claimed outbox row stays claimed on a database other daemons share: longer
/// than any delivery may take.
pub const LEASE: TimeDelta = TimeDelta::seconds(120);
/// A provider call that takes longer than this is abandoned and retried.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
const TIMER_POLL: Duration = Duration::from_millis(200);
const OUTBOX_POLL: Duration = Duration::from_millis(500);
/// Every so often the inbox is swept for events whose handling failed (database
/// trouble), and schedule ticks are checked.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// An input for one customer.
#[derive(Debug, Clone)]
pub enum Input {
    /// An accepted inbox event.
    Event {
        seq: i64,
        event: Event,
    },
    Identify {
        traits: Map<String, Value>,
    },
    /// Merge `previous` into this customer.
    Alias {
        previous: String,
    },
    Enroll {
        journey: String,
        properties: Map<String, Value>,
    },
    Timer {
        enrollment: String,
        at: DateTime<Utc>,
    },
    Schedule {
        journey: String,
    },
    /// A provider said the customer's address on `channel` is dead.
    Unreachable {
        channel: String,
    },
}

/// What applying an input did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The profile it was applied to (after alias resolution).
    pub customer: String,
    pub effects: Vec<Effect>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the daemon is shutting down")]
    Closed,
}

struct Job {
    input: Input,
    reply: Option<oneshot::Sender<Result<Applied, ApplyError>>>,
}

pub struct Daemon {
    pub store: Arc<dyn Store>,
    engine: RwLock<Engine>,
    pub channels: Arc<Channels>,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub config: Config,
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<Job>>>,
    /// Inbox events and timers queued or being handled, so the loops don't queue them
    /// twice.
    events_in_flight: Mutex<HashSet<i64>>,
    timers_in_flight: Mutex<HashSet<String>>,
    /// Woken when a commit put messages in the outbox.
    outbox_ready: Notify,
    /// Woken when the last customer queue empties.
    idle: Notify,
    /// Unsubscribe and tracking links; `None` until a link secret is known.
    pub links: Option<Links>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Daemon {
    pub fn new(
        store: Arc<dyn Store>,
        engine: Engine,
        channels: Arc<Channels>,
        clock: Arc<dyn Clock>,
        config: Config,
    ) -> Arc<Daemon> {
        Arc::new(Daemon {
            store,
            engine: RwLock::new(engine),
            channels,
            metrics: Metrics::default(),
            clock,
            queues: Mutex::new(HashMap::new()),
            events_in_flight: Mutex::new(HashSet::new()),
            timers_in_flight: Mutex::new(HashSet::new()),
            outbox_ready: Notify::new(),
            idle: Notify::new(),
            links: config
                .link_secret
                .as_deref()
                .map(|secret| Links::new(&config.public_base(), secret, config.tracking)),
            config,
        })
    }

    /// Runs `f` with the engine; never across an await.
    pub fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> R {
        f(&self.engine.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Queues an input on its customer's queue without waiting for it.
    ///
    /// # Errors
    /// The id cannot be resolved (database trouble).
    pub async fn submit(self: &Arc<Self>, customer: &str, input: Input) -> Result<(), ApplyError> {
        let key = self.store.resolve(customer).await?;
        self.enqueue(key, Job { input, reply: None });
        Ok(())
    }

    /// Queues an input and waits until it is committed.
    ///
    /// # Errors
    /// The engine refused it (an API enrollment) or the store failed.
    pub async fn call(
        self: &Arc<Self>,
        customer: &str,
        input: Input,
    ) -> Result<Applied, ApplyError> {
        let key = self.store.resolve(customer).await?;
        let (tx, rx) = oneshot::channel();
        self.enqueue(
            key,
            Job {
                input,
                reply: Some(tx),
            },
        );
        rx.await.map_err(|_| ApplyError::Closed)?
    }

    fn enqueue(self: &Arc<Self>, key: String, job: Job) {
        // Sending under the map lock pairs with the worker's emptiness check under the
        // same lock: a job is never left in a queue whose worker has just quit.
        let mut queues = lock(&self.queues);
        let job = match queues.get(&key) {
            Some(queue) => match queue.send(job) {
                Ok(()) => return,
                // The worker died (a panic): start a fresh one.
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        queues.insert(key.clone(), tx);
        tokio::spawn(self.clone().work(key, rx));
    }

    /// One customer's worker: handles its queue in order, then quits.
    async fn work(self: Arc<Self>, key: String, mut rx: mpsc::UnboundedReceiver<Job>) {
        loop {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(_) => {
                    let mut queues = lock(&self.queues);
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(_) => {
                            queues.remove(&key);
                            if queues.is_empty() {
                                self.idle.notify_waiters();
                            }
                            return;
                        }
                    }
                }
            };
            let result = self.apply(&key, &job.input).await;
            match &job.input {
                Input::Event { seq, .. } => {
                    lock(&self.events_in_flight).remove(seq);
                }
                Input::Timer { enrollment, .. } => {
                    lock(&self.timers_in_flight).remove(enrollment);
                }
                _ => {}
            }
            if let Err(e) = &result
                && job.reply.is_none()
            {
                tracing::error!(customer = %key, error = %e, "input not handled; it will be retried");
            }
            if let Some(reply) = job.reply {
                let _ = reply.send(result);
            }
        }
    }

    /// load -> engine -> commit, again on a concurrent change.
    async fn apply(&self, key: &str, input: &Input) -> Result<Applied, ApplyError> {
        for _ in 0..MAX_CONFLICTS {
            let mut customer = self.store.load_customer(key).await?;
            let mut other = None;
            if let Input::Alias { previous } = input {
                let previous = self.store.resolve(previous).await?;
                if previous != customer.state.profile.id {
                    other = Some(self.store.load_customer(&previous).await?);
                }
            }
            let now = self.clock.now();
            let merged = other
                .as_ref()
                .map(|o| (o.state.profile.id.clone(), o.revision));
            let state = &mut customer.state;
            let effects = self.with_engine(|engine| -> Result<Vec<Effect>, EnrollError> {
                Ok(match input {
                    Input::Event { event, .. } => engine.on_event(state, event, now),
                    Input::Identify { traits } => engine.on_identify(state, traits, now),
                    Input::Alias { .. } => match other {
                        Some(other) => engine.merge(state, other.state, now),
                        None => Vec::new(),
                    },
                    Input::Enroll {
                        journey,
                        properties,
                    } => engine.enroll(state, journey, properties, now)?,
                    Input::Timer { enrollment, .. } => engine.on_timer(state, enrollment, now),
                    Input::Schedule { journey } => engine.on_schedule(state, journey, now),
                    Input::Unreachable { channel } => {
                        let traits = unreachable_traits(&state.profile.traits, channel);
                        engine.on_identify(state, &traits, now)
                    }
                })
            })?;
            let applied = Applied {
                customer: customer.state.profile.id.clone(),
                effects,
            };
            // A stale timer or a tick for someone outside the audience changes nothing.
            let unchanged = matches!(input, Input::Timer { .. } | Input::Schedule { .. })
                && applied.effects.is_empty();
            if unchanged {
                return Ok(applied);
            }
            let commit = Commit {
                state: &customer.state,
                revision: customer.revision,
                effects: &applied.effects,
                event: match input {
                    Input::Event { seq, .. } => Some(*seq),
                    _ => None,
                },
                merged: merged.as_ref().map(|(id, rev)| (id.as_str(), *rev)),
                now,
            };
            match self.store.commit(commit).await {
                Ok(()) => {
                    self.metrics.effects(&applied.effects);
                    if let Input::Timer { at, .. } = input {
                        self.metrics.timers_fired.fetch_add(1, Ordering::Relaxed);
                        let lag = (now - *at).num_milliseconds().max(0);
                        self.metrics
                            .timer_lag_ms
                            .store(u64::try_from(lag).unwrap_or(0), Ordering::Relaxed);
                    }
                    let queued = applied
                        .effects
                        .iter()
                        .any(|e| matches!(e, Effect::Message(m) if m.outcome == SendOutcome::Sent));
                    if queued {
                        self.outbox_ready.notify_one();
                    }
                    return Ok(applied);
                }
                Err(StoreError::Conflict(_)) => {
                    self.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Err(StoreError::Handled(_)) => return Ok(Applied::default()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(key.to_owned()).into())
    }

    /// Queues an accepted event (from the API or the inbox sweep) unless already queued.
    pub async fn submit_event(
        self: &Arc<Self>,
        customer: &str,
        seq: i64,
        event: Event,
    ) -> Result<(), ApplyError> {
        if !lock(&self.events_in_flight).insert(seq) {
            return Ok(());
        }
        let result = self.submit(customer, Input::Event { seq, event }).await;
        if result.is_err() {
            lock(&self.events_in_flight).remove(&seq);
        }
        result
    }

    /// Queues every inbox event not yet handled nor queued, oldest first.
    ///
    /// # Errors
    /// Database trouble.
    pub async fn sweep_inbox(self: &Arc<Self>) -> Result<usize, ApplyError> {
        let mut after = 0;
        let mut queued = 0;
        loop {
            let batch = self.store.inbox(after, 500).await?;
            let Some(last) = batch.last() else {
                return Ok(queued);
            };
            after = last.seq;
            for stored in batch {
                self.submit_event(&stored.customer, stored.seq, stored.event)
                    .await?;
                queued += 1;
            }
        }
    }

    async fn fire_timers(self: &Arc<Self>) -> Result<(), ApplyError> {
        let now = self.clock.now();
        for timer in self.store.due_timers(now, 500).await? {
            if !lock(&self.timers_in_flight).insert(timer.enrollment.clone()) {
                continue;
            }
            let input = Input::Timer {
                enrollment: timer.enrollment.clone(),
                at: timer.at,
            };
            if let Err(e) = self.submit(&timer.customer, input).await {
                lock(&self.timers_in_flight).remove(&timer.enrollment);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Enters every known customer in the audience of each schedule journey whose tick
    /// fell due. After downtime a missed tick fires once, not once per missed tick.
    async fn fire_schedules(self: &Arc<Self>) -> Result<(), ApplyError> {
        let now = self.clock.now();
        let schedules: Vec<(String, Option<DateTime<Utc>>)> = self.with_engine(|engine| {
            engine
                .workspace()
                .journeys
                .iter()
                .filter_map(|j| match &j.trigger {
                    Trigger::Schedule {
                        schedule, timezone, ..
                    } => Some((
                        j.id.clone(),
                        schedule
                            .after(&now.with_timezone(timezone))
                            .next()
                            .map(|t| t.with_timezone(&Utc)),
                    )),
                    _ => None,
                })
                .collect()
        });
        for (journey, next) in schedules {
            let Some(next) = next else { continue };
            match self.store.schedule_tick(&journey).await? {
                None => self.store.set_schedule_tick(&journey, next).await?,
                Some(due) if due <= now => {
                    tracing::info!(%journey, "schedule tick");
                    let mut after = String::new();
                    loop {
                        let ids = self.store.customer_ids(&after, 1000).await?;
                        let Some(last) = ids.last() else { break };
                        after = last.clone();
                        for id in ids {
                            let input = Input::Schedule {
                                journey: journey.clone(),
                            };
                            self.submit(&id, input).await?;
                        }
                    }
                    self.store.set_schedule_tick(&journey, next).await?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Fires due timers, and every [`SWEEP_EVERY`] re-queues the inbox and checks
    /// schedules, until `stop` turns true.
    pub async fn timer_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_sweep = tokio::time::Instant::now();
        while !*stop.borrow() {
            if let Err(e) = self.fire_timers().await {
                tracing::error!(error = %e, "cannot read due timers");
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = tokio::time::Instant::now();
                if let Err(e) = self.sweep_inbox().await {
                    tracing::error!(error = %e, "cannot sweep the inbox");
                }
                if let Err(e) = self.fire_schedules().await {
                    tracing::error!(error = %e, "cannot run schedules");
                }
                if let Err(e) = self.store.prune(self.clock.now()).await {
                    tracing::warn!(error = %e, "cannot prune old message ids");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(TIMER_POLL) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Delivers the outbox until `stop` turns true; a batch under way is finished first.
    ///
    /// Each claim keeps its messages from other daemons on the database for `lease`
    /// ([`LEASE`]). A daemon alone on its database claims with a zero lease: this loop
    /// finishes a batch before it claims again, so nothing else could take a message
    /// under way, and a message cut off by a crash goes out again as soon as the daemon
    /// is back rather than when the lease runs out.
    pub async fn dispatch_loop(self: Arc<Self>, lease: TimeDelta, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let claimed = match self.store.claim_outbox(self.clock.now(), lease, 32).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim outbox messages");
                    Vec::new()
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    () = self.outbox_ready.notified() => {}
                    () = tokio::time::sleep(OUTBOX_POLL) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let mut batch = tokio::task::JoinSet::new();
            for message in claimed {
                let daemon = self.clone();
                batch.spawn(async move { daemon.deliver(message).await });
            }
            while batch.join_next().await.is_some() {}
        }
    }

    async fn deliver(self: Arc<Self>, m: OutboxMessage) {
        let key = m.idempotency_key.clone();
        let result = match self.channels.get(&m.channel) {
            None => Err(DeliveryError::permanent(format!(
                "channel `{}` is not configured",
                m.channel
            ))),
            Some(channel) => {
                let (content, links) = match &self.links {
                    Some(links) => links.prepare(&LinkTarget::of(&m), &m.content),
                    None => (m.content.clone(), BTreeMap::new()),
                };
                let outbound = OutboundMessage {
                    idempotency_key: m.idempotency_key.clone(),
                    channel: m.channel.clone(),
                    address: m.address.clone(),
                    content,
                    customer_id: m.customer.clone(),
                    journey_id: m.journey.clone(),
                    step_id: m.step.clone(),
                    template: m.template.clone(),
                    links,
                };
                match tokio::time::timeout(DELIVERY_TIMEOUT, channel.deliver(&outbound)).await {
                    Ok(result) => result,
                    Err(_) => Err(DeliveryError::retryable(format!(
                        "no answer within {}s",
                        DELIVERY_TIMEOUT.as_secs()
                    ))),
                }
            }
        };
        let now = self.clock.now();
        let recorded = match result {
            Ok(delivery) => {
                self.metrics.delivery(&m.channel, "delivered");
                self.store
                    .outbox_sent(&key, delivery.provider_id.as_deref(), now)
                    .await
            }
            Err(DeliveryError::Retryable {
                reason,
                retry_after,
            }) if m.attempts < MAX_DELIVERY_ATTEMPTS => {
                self.metrics.delivery(&m.channel, "retry");
                let wait = backoff(m.attempts, &key).max(retry_after.unwrap_or_default());
                let at = now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::hours(1));
                tracing::warn!(%key, channel = %m.channel, %reason, attempt = m.attempts, retry_in = ?wait, "delivery failed; will retry");
                self.store.outbox_retry(&key, &reason, at).await
            }
            Err(DeliveryError::Retryable { reason, .. }) => {
                self.metrics.delivery(&m.channel, "failed");
                let reason = format!("gave up after {} attempts: {reason}", m.attempts);
                tracing::warn!(%key, channel = %m.channel, %reason, "delivery failed");
                self.store.outbox_failed(&key, &reason, now).await
            }
            Err(DeliveryError::Permanent {
                reason,
                address_gone,
            }) => {
                self.metrics.delivery(&m.channel, "failed");
                tracing::warn!(%key, channel = %m.channel, %reason, address_gone, "delivery refused");
                if address_gone {
                    let input = Input::Unreachable {
                        channel: m.channel.clone(),
                    };
                    if let Err(e) = self.submit(&m.customer, input).await {
                        tracing::error!(error = %e, "cannot mark the address unreachable");
                    }
                }
                self.store.outbox_failed(&key, &reason, now).await
            }
        };
        if let Err(e) = recorded {
            // The lease runs out and the message is claimed again: a possible second
            // send, the one window the outbox cannot close.
            tracing::error!(%key, error = %e, "cannot record the delivery result");
        }
    }

    /// Waits until every customer queue is empty, or `timeout` passes.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a worker emptying the last queue between the
            // check and the wait still wakes us.
            let mut idle = std::pin::pin!(self.idle.notified());
            idle.as_mut().enable();
            if lock(&self.queues).is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return lock(&self.queues).is_empty();
            }
        }
    }

    /// Loads the journeys again; on any error the running set stays.
    ///
    /// # Errors
    /// Every diagnostic, when the workspace has errors.
    pub async fn reload(&self) -> Result<usize, Vec<Diagnostic>> {
        let (workspace, _warnings) = waymark_journey::load(&self.config.journeys)?;
        check_channels(&workspace, &self.channels)?;
        record_versions(self.store.as_ref(), &workspace, self.clock.now()).await;
        let n = workspace.journeys.len();
        self.engine
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .reload(workspace);
        tracing::info!(journeys = n, "journeys reloaded");
        Ok(n)
    }
}

/// The profile's `unreachable` list with `channel` added.
fn unreachable_traits(traits: &Map<String, Value>, channel: &str) -> Map<String, Value> {
    let mut list: Vec<Value> = match traits.get("unreachable") {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::String(s)) => vec![Value::String(s.clone())],
        _ => Vec::new(),
    };
    if !list.iter().any(|v| v.as_str() == Some(channel)) {
        list.push(Value::String(channel.to_owned()));
    }
    let mut out = Map::new();
    out.insert("unreachable".to_owned(), Value::Array(list));
    out
}

/// Exponential backoff from 5 s, doubling per attempt up to an hour, with jitter (50 to
/// 100 %) so that messages failing together do not retry together. The jitter is derived
/// from the key and attempt: spread across messages, reproducible for one.
pub fn backoff(attempts: u32, key: &str) -> Duration {
    let base = 5u64
        .saturating_mul(1 << attempts.saturating_sub(1).min(20))
        .min(3600);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(attempts.to_le_bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let millis = base * 1000;
    Duration::from_millis(millis / 2 + hash % (millis / 2 + 1))
}

/// The diagnostic code for a send on a channel the daemon config lacks (`D` for the
/// daemon: the journey language's own codes are `E`/`W`).
pub const UNKNOWN_CHANNEL: &str = "D0001";

/// Refuses a workspace that sends on a channel the config does not define.
///
/// # Errors
/// One diagnostic per unknown channel.
pub fn check_channels(workspace: &Workspace, channels: &Channels) -> Result<(), Vec<Diagnostic>> {
    let mut problems = Vec::new();
    for journey in &workspace.journeys {
        for step in &journey.steps {
            if let waymark_journey::StepKind::Send(send) = &step.kind {
                let named = match &send.channel {
                    waymark_journey::ChannelChoice::Named(name) => Some(name),
                    waymark_journey::ChannelChoice::Preferred => None,
                };
                for name in named.into_iter().chain(&send.fallback) {
                    if !channels.is_known(name) {
                        problems.push(Diagnostic::error(
                            journey.source.clone(),
                            step.pos,
                            UNKNOWN_CHANNEL,
                            format!(
                                "step `{}` sends on channel `{name}`, which `channels` in the daemon config does not define",
                                step.id
                            ),
                        ));
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The files a journey version was built from, relative to the workspace root: the
/// journey, `segments.yaml` and every template (a superset of what the version hash
/// covers, enough to load it again).
pub fn version_files(workspace: &Workspace, journey: &Path) -> BTreeMap<String, String> {
    let root = &workspace.root;
    let mut paths: Vec<PathBuf> = vec![
        journey.to_path_buf(),
        root.join(waymark_journey::SEGMENTS_FILE),
    ];
    if let Ok(entries) = std::fs::read_dir(root.join("templates")) {
        paths.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    let mut files = BTreeMap::new();
    for path in paths {
        let relative = path.strip_prefix(root).unwrap_or(&path);
        if let Ok(text) = std::fs::read_to_string(&path) {
            files.insert(relative.to_string_lossy().into_owned(), text);
        }
    }
    files
}

/// Records each journey version's files, so enrollments on it survive an edit and a
/// restart. Failures are logged: the daemon can run without them.
pub async fn record_versions(store: &dyn Store, workspace: &Workspace, now: DateTime<Utc>) {
    for journey in &workspace.journeys {
        let files = version_files(workspace, &journey.source);
        if let Err(e) = store
            .record_journey_version(&journey.id, &journey.version, &files, now)
            .await
        {
            tracing::warn!(journey = %journey.id, error = %e, "cannot record the journey version");
        }
    }
}

/// Loads the older journey versions active enrollments are still on, from the files
/// recorded when they were current.
pub async fn restore_versions(store: &dyn Store, current: &Workspace) -> Vec<Workspace> {
    let mut restored = Vec::new();
    let versions = match store.active_versions().await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the journey versions in use");
            return restored;
        }
    };
    for (journey, version) in versions {
        if current
            .journey(&journey)
            .is_some_and(|j| j.version == version)
        {
            continue;
        }
        let files = match store.journey_version_files(&journey, &version).await {
            Ok(Some(files)) => files,
            Ok(None) => {
                tracing::error!(%journey, %version, "no record of this journey version; its enrollments will fail");
                continue;
            }
            Err(e) => {
                tracing::error!(%journey, %version, error = %e, "cannot read the journey version");
                continue;
            }
        };
        let dir = std::env::temp_dir().join(format!(
            "waymark-{}-{journey}-{version}",
            std::process::id()
        ));
        let loaded = write_files(&dir, &files)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                waymark_journey::load(&dir).map_err(|d| {
                    d.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                })
            });
        let _ = std::fs::remove_dir_all(&dir);
        match loaded {
            Ok((workspace, _))
                if workspace
                    .journey(&journey)
                    .is_some_and(|j| j.version == version) =>
            {
                tracing::info!(%journey, %version, "restored an older journey version for its enrollments");
                restored.push(workspace);
            }
            Ok(_) => {
                tracing::error!(%journey, %version, "the recorded files load as another version")
            }
            Err(e) => {
                tracing::error!(%journey, %version, error = %e, "the recorded journey version no longer loads")
            }
        }
    }
    restored
}

fn write_files(dir: &Path, files: &BTreeMap<String, String>) -> std::io::Result<()> {
    for (relative, text) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps_at_an_hour() {
        let first = backoff(1, "k");
        assert!(first >= Duration::from_millis(2500) && first <= Duration::from_secs(5));
        let third = backoff(3, "k");
        assert!(third >= Duration::from_secs(10) && third <= Duration::from_secs(20));
        assert!(backoff(40, "k") <= Duration::from_secs(3600));
        assert_ne!(backoff(5, "a"), backoff(5, "b"));
    }

    #[test]
    fn unreachable_adds_a_channel_once() {
        let mut traits = Map::new();
        traits.insert("unreachable".to_owned(), Value::from(vec!["sms"]));
        let out = unreachable_traits(&traits, "email");
        assert_eq!(out["unreachable"], serde_json::json!(["sms", "email"]));
        traits.insert("unreachable".to_owned(), out["unreachable"].clone());
        assert_eq!(
            unreachable_traits(&traits, "email")["unreachable"],
            serde_json::json!(["sms", "email"])
        );
    }
}
