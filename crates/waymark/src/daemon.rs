//! The running daemon: the engine on the store, one customer at a time, and the loops
//! that fire timers and deliver the outbox.
//!
//! Every input for a customer (an event, identify, alias, enroll, timer, schedule tick, a
//! dead address) goes through that customer's queue, so one customer's inputs are handled
//! one at a time and in order. Each is applied as load -> engine -> commit; the commit
//! refuses a state another writer changed meanwhile, and the input is then applied again
//! on the fresh state, which keeps replicas (and aliased ids that raced onto two queues)
//! from overwriting each other.
//!
//! Customers' inputs run side by side, and their store work is grouped ([`Batcher`]): the
//! loads of the customers in flight are read together and their commits written in one
//! transaction, so the cost of a durable write is shared by everyone in the batch. A
//! caller still hears back only after its own commit is durable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use waymark_journey::diagnostics::codes;
use waymark_journey::{ChannelChoice, Diagnostic, Policy, StepKind, Trigger, Workspace};
use waymark_scheduler::{Clock, CustomerState, Effect, Engine, EnrollError, Event};
use waymark_store::{Commit, Customer, DueTimer, Error as StoreError, Ingested, NewEvent, Store};

use crate::batch::{Batcher, IoThread};
use crate::channels::Channels;
use crate::config::Config;
use crate::dispatch::{Fresh, Slot};
use crate::links::Links;
use crate::metrics::Metrics;

/// How often one input is re-applied after a concurrent change before giving up.
const MAX_CONFLICTS: usize = 8;
const TIMER_POLL: Duration = Duration::from_millis(200);
/// Due timers read from the wake index at a time.
const TIMER_BATCH: u32 = 1024;
/// Timers queued or being handled at most: two batches, one loading or running the engine
/// while the other commits. More would queue commits on the one writer ahead of the
/// dispatcher's claims and delivery records, and starve deliveries (in the daemon
/// benchmark, 4096 delivered at a third of the pace 2048 did, and were slower overall).
const TIMERS_IN_FLIGHT: usize = 2048;
/// The most loads, commits, accepted events, ... one store call takes.
const STORE_BATCH: usize = 1024;
/// Customers a batch of timers runs the engine for between two yields to the runtime.
const ENGINE_SLICE: usize = 64;
/// Every so often the inbox is swept for events whose handling failed (database
/// trouble), and schedule ticks are checked.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long an alias waits for the queue of the id it merges away to reach its pause,
/// and that queue for the merge.
const MERGE_WAIT: Duration = Duration::from_secs(30);

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
        /// The request's `messageId`: a retried enrollment applies once.
        message_id: Option<String>,
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
    /// The input's `messageId` was applied already: nothing was done again.
    pub repeated: bool,
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

/// What a customer's queue holds.
enum Job {
    /// An input to apply, and whoever waits for its outcome.
    Apply {
        input: Input,
        reply: Option<oneshot::Sender<Result<Applied, ApplyError>>>,
        /// For an alias: the queue of the id it merges away, paused for it.
        merging: Option<Merging>,
    },
    /// Pauses the queue of an id an alias is merging away, behind the inputs that came
    /// before the alias; see [`Daemon::call`].
    Pause(Paused),
}

impl Job {
    fn apply(input: Input) -> Job {
        Job::Apply {
            input,
            reply: None,
            merging: None,
        }
    }
}

/// The alias's end of a paused queue: told when the queue has reached the pause, it tells
/// the queue where its id went (the profile it now lives on), or `None` if it stays.
struct Merging {
    reached: oneshot::Receiver<()>,
    done: oneshot::Sender<Option<String>>,
}

/// The paused queue's end of [`Merging`].
struct Paused {
    reached: oneshot::Sender<()>,
    done: oneshot::Receiver<Option<String>>,
}

/// An input's outcome on its way to the store, owned so that it can join a commit batch.
struct Outcome {
    state: CustomerState,
    revision: i64,
    effects: Vec<Effect>,
    event: Option<i64>,
    merged: Option<(String, i64)>,
    now: DateTime<Utc>,
    /// Its messages are committed claimed until then, for this daemon's dispatcher.
    claim_until: Option<DateTime<Utc>>,
    message_id: Option<String>,
}

impl Outcome {
    fn commit(&self) -> Commit<'_> {
        Commit {
            state: &self.state,
            revision: self.revision,
            effects: &self.effects,
            event: self.event,
            merged: self.merged.as_ref().map(|(id, rev)| (id.as_str(), *rev)),
            now: self.now,
            claim_until: self.claim_until,
            message_id: self.message_id.as_deref(),
        }
    }
}

type StoreResult<T> = Result<T, StoreError>;

/// A timer of a customer whose queue is held for a batch ([`Daemon::hold`]).
struct Held {
    key: String,
    queue: mpsc::UnboundedReceiver<Job>,
    input: Input,
}

/// What the engine made of an input.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per input and taken apart at once: a box would be an allocation per commit"
)]
enum Decided {
    /// Nothing to write (a stale timer, a tick outside the audience): the profile's id.
    Unchanged(String),
    Commit(Outcome),
}

pub struct Daemon {
    pub store: Arc<dyn Store>,
    engine: RwLock<Engine>,
    pub channels: Arc<Channels>,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub config: Config,
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<Job>>>,
    /// Ids merged away by an alias while they had a queue, to the id they went to: an
    /// input that was on its way to the old queue then joins the new one. Locked only
    /// under `queues`; an entry goes when the queue it points to is retired.
    redirects: Mutex<HashMap<String, String>>,
    /// Inbox events and timers queued or being handled, so the loops don't queue them
    /// twice.
    events_in_flight: Mutex<HashSet<i64>>,
    timers_in_flight: Mutex<HashSet<String>>,
    /// Woken when a timer has been handled, so the timer loop can queue more.
    timers_done: Notify,
    /// Woken when a commit put messages in the outbox.
    pub(crate) outbox_ready: Notify,
    /// Woken when the last customer queue empties.
    idle: Notify,
    /// Unsubscribe and tracking links; `None` until a link secret is known.
    pub links: Option<Links>,
    /// Group commit: the store work of many customers, one call per batch.
    resolver: Batcher<String, StoreResult<String>>,
    loader: Batcher<String, StoreResult<Customer>>,
    committer: Batcher<Outcome, (Outcome, StoreResult<()>)>,
    ingester: Batcher<NewEvent, (NewEvent, StoreResult<Ingested>)>,
    /// Messages a provider accepted, `(idempotency key, provider id)`, to record.
    pub(crate) delivered: Batcher<(String, Option<String>), ()>,
    /// Where the batchers run; declared after them, so it outlives them.
    _io: IoThread,
    /// Per channel: deliveries in flight and claimed messages waiting for one.
    pub(crate) slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Woken when a delivery finished, so the dispatcher can claim more.
    pub(crate) delivery_done: Notify,
    /// Messages committed claimed for this daemon, on their way straight to the
    /// dispatcher; the receiver is the running dispatcher's.
    pub(crate) fresh: mpsc::UnboundedSender<Fresh>,
    pub(crate) fresh_rx: Mutex<Option<mpsc::UnboundedReceiver<Fresh>>>,
    /// Whether a dispatcher is running to take fresh messages.
    pub(crate) dispatching: AtomicBool,
    /// Deliveries started and not yet recorded.
    pub(crate) in_hand: AtomicUsize,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Daemon {
    /// A daemon on `store`. Starts the tasks that group store work, so it must be called
    /// within a Tokio runtime.
    pub fn new(
        store: Arc<dyn Store>,
        engine: Engine,
        channels: Arc<Channels>,
        clock: Arc<dyn Clock>,
        config: Config,
    ) -> Arc<Daemon> {
        let io = IoThread::start();
        let resolver = batcher(&io, &store, |store, ids: Vec<String>| async move {
            store.resolve_many(&ids).await
        });
        let loader = batcher(&io, &store, |store, ids: Vec<String>| async move {
            store.load_many(&ids).await
        });
        let committer = batcher(&io, &store, |store, outcomes: Vec<Outcome>| async move {
            let results = {
                let commits: Vec<Commit<'_>> = outcomes.iter().map(Outcome::commit).collect();
                store.commit_many(&commits).await
            };
            outcomes.into_iter().zip(results).collect()
        });
        let ingest_clock = clock.clone();
        let ingester = batcher(&io, &store, move |store, events: Vec<NewEvent>| {
            let now = ingest_clock.now();
            async move {
                let results = store.ingest_many(&events, now).await;
                events.into_iter().zip(results).collect()
            }
        });
        let delivered_clock = clock.clone();
        let delivered = batcher(
            &io,
            &store,
            move |store, sent: Vec<(String, Option<String>)>| {
                let now = delivered_clock.now();
                async move {
                    let refs: Vec<(&str, Option<&str>)> = sent
                        .iter()
                        .map(|(k, p)| (k.as_str(), p.as_deref()))
                        .collect();
                    if let Err(e) = store.outbox_sent_many(&refs, now).await {
                        // The claims run out and the messages are claimed again: possible
                        // second sends, the one window the outbox cannot close.
                        tracing::error!(error = %e, messages = sent.len(), "cannot record deliveries");
                    }
                    vec![(); sent.len()]
                }
            },
        );
        let (fresh, fresh_rx) = mpsc::unbounded_channel();
        Arc::new(Daemon {
            store,
            engine: RwLock::new(engine),
            channels,
            metrics: Metrics::default(),
            clock,
            queues: Mutex::new(HashMap::new()),
            redirects: Mutex::new(HashMap::new()),
            events_in_flight: Mutex::new(HashSet::new()),
            timers_in_flight: Mutex::new(HashSet::new()),
            timers_done: Notify::new(),
            outbox_ready: Notify::new(),
            idle: Notify::new(),
            links: config
                .link_secret
                .as_deref()
                .map(|secret| Links::new(&config.public_base(), secret, config.tracking)),
            config,
            resolver,
            loader,
            committer,
            ingester,
            delivered,
            _io: io,
            slots: Mutex::new(HashMap::new()),
            delivery_done: Notify::new(),
            fresh,
            fresh_rx: Mutex::new(Some(fresh_rx)),
            dispatching: AtomicBool::new(false),
            in_hand: AtomicUsize::new(0),
        })
    }

    /// The profile id `id` lives under, resolved in a batch with others.
    async fn resolve(&self, id: &str) -> Result<String, ApplyError> {
        Ok(self
            .resolver
            .call(id.to_owned())
            .await
            .ok_or(ApplyError::Closed)??)
    }

    /// The customer `id`, loaded in a batch with others.
    async fn load(&self, id: &str) -> Result<Customer, ApplyError> {
        Ok(self
            .loader
            .call(id.to_owned())
            .await
            .ok_or(ApplyError::Closed)??)
    }

    /// Accepts an event: durable when this returns (written in one transaction with the
    /// others arriving meanwhile), then queued for its customer.
    ///
    /// # Errors
    /// The store could not take it.
    pub async fn ingest(self: &Arc<Self>, event: NewEvent) -> Result<Ingested, ApplyError> {
        // The profile the event goes to is looked up while it is written: the caller
        // waits for the slower of the two, not for both one after the other.
        let customer = event.customer.clone();
        let (written, key) = tokio::join!(self.ingester.call(event), self.resolve(&customer));
        let (event, ingested) = written.ok_or(ApplyError::Closed)?;
        let ingested = ingested?;
        match ingested {
            Ingested::Duplicate => {
                self.metrics
                    .events_duplicate
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ingested::Accepted(seq) => {
                self.metrics.events_ingested.fetch_add(1, Ordering::Relaxed);
                let stored = Event {
                    name: event.name,
                    at: event.at,
                    properties: event.properties,
                };
                // Stored already: if it cannot be queued now, the inbox sweep will.
                match key {
                    Ok(key) => self.queue_event(key, seq, stored),
                    Err(e) => tracing::warn!(error = %e, seq, "event stored but not queued yet"),
                }
            }
        }
        Ok(ingested)
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
        let key = self.resolve(customer).await?;
        self.enqueue(key, Job::apply(input));
        Ok(())
    }

    /// Queues an input and waits until it is committed.
    ///
    /// An alias merging another id away first pauses that id's queue behind the inputs
    /// already on it: the merge waits for them, and the inputs that come after it move to
    /// this customer's queue once the merge is committed. One customer's inputs thus stay
    /// on one queue, in the order they came, across the merge.
    ///
    /// # Errors
    /// The engine refused it (an API enrollment) or the store failed.
    pub async fn call(
        self: &Arc<Self>,
        customer: &str,
        input: Input,
    ) -> Result<Applied, ApplyError> {
        let key = self.resolve(customer).await?;
        let merging = match &input {
            Input::Alias { previous } => {
                let other = self.resolve(previous).await?;
                (other != key).then(|| self.pause(other))
            }
            _ => None,
        };
        let (tx, rx) = oneshot::channel();
        self.enqueue(
            key,
            Job::Apply {
                input,
                reply: Some(tx),
                merging,
            },
        );
        rx.await.map_err(|_| ApplyError::Closed)?
    }

    /// Pauses `key`'s queue (starting one if it has none) behind what is on it now.
    fn pause(self: &Arc<Self>, key: String) -> Merging {
        let (reached_tx, reached) = oneshot::channel();
        let (done, done_rx) = oneshot::channel();
        let paused = Paused {
            reached: reached_tx,
            done: done_rx,
        };
        self.enqueue(key, Job::Pause(paused));
        Merging { reached, done }
    }

    fn enqueue(self: &Arc<Self>, key: String, job: Job) {
        let mut queues = lock(&self.queues);
        self.enqueue_locked(&mut queues, key, job);
    }

    /// Queues `job` on `key`'s queue (or the one `key` was redirected to), under the map
    /// lock `queues`.
    fn enqueue_locked(
        self: &Arc<Self>,
        queues: &mut HashMap<String, mpsc::UnboundedSender<Job>>,
        mut key: String,
        job: Job,
    ) {
        {
            let redirects = lock(&self.redirects);
            // A chain of merges is short; the bound only guards against a cycle.
            for _ in 0..8 {
                match redirects.get(&key) {
                    Some(to) => key.clone_from(to),
                    None => break,
                }
            }
        }
        // Sending under the map lock pairs with the worker's emptiness check under the
        // same lock: a job is never left in a queue whose worker has just quit.
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
                            self.retire(&mut queues, &key);
                            return;
                        }
                    }
                }
            };
            let (input, reply, mut merging) = match job {
                Job::Apply {
                    input,
                    reply,
                    merging,
                } => (input, reply, merging),
                Job::Pause(paused) => {
                    if let Some(into) = self.pause_for_merge(paused).await {
                        self.move_queue(&key, &mut rx, into);
                        return;
                    }
                    continue;
                }
            };
            if let Some(merging) = merging.as_mut() {
                // The merged-away id's earlier inputs go first. Two aliases merging two
                // ids into each other at once would wait for each other: the bound lets
                // them go on, and the store's revisions keep them apart.
                let _ = tokio::time::timeout(MERGE_WAIT, &mut merging.reached).await;
            }
            let result = self.apply(&key, &input).await;
            self.done_with(&input);
            if let Some(merging) = merging {
                let into = result
                    .as_ref()
                    .ok()
                    .filter(|applied| !applied.customer.is_empty())
                    .map(|applied| applied.customer.clone());
                let _ = merging.done.send(into);
            }
            if let Err(e) = &result
                && reply.is_none()
            {
                tracing::error!(customer = %key, error = %e, "input not handled; it will be retried");
            }
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
    }

    /// At a pause: tells the alias its turn has come, and waits to learn where the id
    /// went (`None`: it was not merged away, or the alias took too long).
    async fn pause_for_merge(&self, paused: Paused) -> Option<String> {
        let _ = paused.reached.send(());
        match tokio::time::timeout(MERGE_WAIT, paused.done).await {
            Ok(Ok(into)) => into,
            _ => None,
        }
    }

    /// Moves what is left on merged-away `key`'s queue to the queue of `into`, where the
    /// customer now lives, in order, and sends later arrivals there too.
    fn move_queue(
        self: &Arc<Self>,
        key: &str,
        rx: &mut mpsc::UnboundedReceiver<Job>,
        into: String,
    ) {
        let mut queues = lock(&self.queues);
        while let Ok(job) = rx.try_recv() {
            self.enqueue_locked(&mut queues, into.clone(), job);
        }
        lock(&self.redirects).insert(key.to_owned(), into);
        self.retire(&mut queues, key);
    }

    /// Forgets a customer's queue found empty under the map lock `queues`, and the
    /// redirects to it.
    fn retire(&self, queues: &mut HashMap<String, mpsc::UnboundedSender<Job>>, key: &str) {
        queues.remove(key);
        let mut redirects = lock(&self.redirects);
        if !redirects.is_empty() {
            redirects.retain(|_, to| to != key);
        }
        if queues.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// An inbox event or timer handled (or given up on for now): the loops may queue it
    /// again.
    fn done_with(&self, input: &Input) {
        match input {
            Input::Event { seq, .. } => {
                lock(&self.events_in_flight).remove(seq);
            }
            Input::Timer { enrollment, .. } => {
                lock(&self.timers_in_flight).remove(enrollment);
                self.timers_done.notify_one();
            }
            _ => {}
        }
    }

    /// load -> engine -> commit, again on a concurrent change.
    async fn apply(&self, key: &str, input: &Input) -> Result<Applied, ApplyError> {
        for _ in 0..MAX_CONFLICTS {
            let customer = self.load(key).await?;
            let mut other = None;
            if let Input::Alias { previous } = input {
                let previous = self.resolve(previous).await?;
                if previous != customer.state.profile.id {
                    other = Some(self.load(&previous).await?);
                }
            }
            let outcome = match self.decide(customer, other, input)? {
                Decided::Unchanged(customer) => {
                    return Ok(Applied {
                        customer,
                        ..Applied::default()
                    });
                }
                Decided::Commit(outcome) => outcome,
            };
            let Some((outcome, result)) = self.committer.call(outcome).await else {
                return Err(ApplyError::Closed);
            };
            self.settle(input, &outcome, &result);
            match result {
                Ok(()) => {
                    return Ok(Applied {
                        customer: outcome.state.profile.id,
                        effects: outcome.effects,
                        repeated: false,
                    });
                }
                Err(StoreError::Conflict(_)) => {
                    self.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Err(StoreError::Handled(_)) => return Ok(Applied::default()),
                Err(StoreError::Behind { customer, seq }) => {
                    self.handle_earlier(key, &customer, seq).await?;
                }
                Err(StoreError::Repeated(_)) => {
                    return Ok(Applied {
                        customer: outcome.state.profile.id,
                        effects: Vec::new(),
                        repeated: true,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(key.to_owned()).into())
    }

    /// Handles here and now the events accepted before `seq` for `addressed` (or for the
    /// profile `key`) and not handled yet: another daemon sharing the database accepted
    /// them, and one customer's events go in the order they came. Should that daemon get
    /// to one first, this one finds it handled and goes on.
    async fn handle_earlier(&self, key: &str, addressed: &str, seq: i64) -> Result<(), ApplyError> {
        let mut earlier = self.store.unhandled_before(addressed, seq).await?;
        if addressed != key {
            earlier.extend(self.store.unhandled_before(key, seq).await?);
        }
        earlier.sort_by_key(|e| e.seq);
        earlier.dedup_by_key(|e| e.seq);
        for stored in earlier {
            let input = Input::Event {
                seq: stored.seq,
                event: stored.event,
            };
            Box::pin(self.apply(key, &input)).await?;
        }
        Ok(())
    }

    /// Runs the engine on a loaded customer (and, for an alias, the profile merged into
    /// it), and makes room in the dispatcher for the messages it produced.
    fn decide(
        &self,
        mut customer: Customer,
        other: Option<Customer>,
        input: &Input,
    ) -> Result<Decided, EnrollError> {
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
                    ..
                } => engine.enroll(state, journey, properties, now)?,
                Input::Timer { enrollment, .. } => engine.on_timer(state, enrollment, now),
                Input::Schedule { journey } => engine.on_schedule(state, journey, now),
                Input::Unreachable { channel } => {
                    let traits = unreachable_traits(&state.profile.traits, channel);
                    engine.on_identify(state, &traits, now)
                }
            })
        })?;
        // A stale timer or a tick for someone outside the audience changes nothing.
        let unchanged =
            matches!(input, Input::Timer { .. } | Input::Schedule { .. }) && effects.is_empty();
        if unchanged {
            return Ok(Decided::Unchanged(customer.state.profile.id));
        }
        let claim_until = self
            .reserve_deliveries(&effects)
            .then(|| now + crate::dispatch::LEASE);
        Ok(Decided::Commit(Outcome {
            state: customer.state,
            revision: customer.revision,
            effects,
            event: match input {
                Input::Event { seq, .. } => Some(*seq),
                _ => None,
            },
            merged,
            now,
            claim_until,
            message_id: match input {
                Input::Enroll { message_id, .. } => message_id.clone(),
                _ => None,
            },
        }))
    }

    /// After a commit: what a committed input leads to, or the dispatcher's room back for
    /// one that was not.
    fn settle(&self, input: &Input, outcome: &Outcome, result: &StoreResult<()>) {
        match result {
            Ok(()) => self.committed(input, outcome),
            Err(_) if outcome.claim_until.is_some() => self.release_deliveries(&outcome.effects),
            Err(_) => {}
        }
    }

    /// Metrics for a committed input, and its messages to the dispatcher: straight from
    /// memory when they were committed claimed for it, else a nudge to claim them.
    fn committed(&self, input: &Input, outcome: &Outcome) {
        self.metrics.effects(&outcome.effects);
        if let Input::Timer { at, .. } = input {
            self.metrics.timers_fired.fetch_add(1, Ordering::Relaxed);
            let lag = (outcome.now - *at).num_milliseconds().max(0);
            self.metrics
                .timer_lag_ms
                .store(u64::try_from(lag).unwrap_or(0), Ordering::Relaxed);
        }
        if outcome.claim_until.is_some() {
            for message in crate::dispatch::handed(&outcome.effects) {
                let _ = self.fresh.send(Fresh::new(message, outcome.now));
            }
        } else if crate::dispatch::handed(&outcome.effects).next().is_some() {
            self.outbox_ready.notify_one();
        }
    }

    /// Queues an accepted event (from the API or the inbox sweep) unless already queued.
    pub async fn submit_event(
        self: &Arc<Self>,
        customer: &str,
        seq: i64,
        event: Event,
    ) -> Result<(), ApplyError> {
        if lock(&self.events_in_flight).contains(&seq) {
            return Ok(());
        }
        let key = self.resolve(customer).await?;
        self.queue_event(key, seq, event);
        Ok(())
    }

    /// Queues an accepted event on the queue of profile `key` unless already queued.
    fn queue_event(self: &Arc<Self>, key: String, seq: i64, event: Event) {
        if lock(&self.events_in_flight).insert(seq) {
            let input = Input::Event { seq, event };
            self.enqueue(key, Job::apply(input));
        }
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

    /// Queues the due timers after `cursor` (the last one queued or passed over), as many
    /// as there is room for. Returns how the loop should go on.
    async fn fire_timers(
        self: &Arc<Self>,
        cursor: &mut Option<DueTimer>,
    ) -> Result<Next, ApplyError> {
        let room = TIMERS_IN_FLIGHT.saturating_sub(lock(&self.timers_in_flight).len());
        if room == 0 {
            return Ok(Next::WhenOneIsDone);
        }
        let now = self.clock.now();
        let due = self
            .store
            .due_timers(now, cursor.as_ref(), TIMER_BATCH)
            .await?;
        let full = due.len() == TIMER_BATCH as usize;
        let (mut queued, mut passed) = (0, 0);
        let mut held = Vec::new();
        let mut out_of_room = false;
        for timer in due {
            if queued == room {
                out_of_room = true;
                break;
            }
            passed += 1;
            let fresh = lock(&self.timers_in_flight).insert(timer.enrollment.clone());
            if fresh {
                queued += 1;
                // Timers name the profile their enrollment lives on: no alias to resolve.
                let input = Input::Timer {
                    enrollment: timer.enrollment.clone(),
                    at: timer.at,
                };
                let key = timer.customer.clone();
                match self.hold(&key) {
                    Some(queue) => held.push(Held { key, queue, input }),
                    None => self.enqueue(key, Job::apply(input)),
                }
            }
            *cursor = Some(timer);
        }
        if !held.is_empty() {
            tokio::spawn(self.clone().fire_held(held));
        }
        if out_of_room {
            return Ok(Next::WhenOneIsDone);
        }
        Ok(match (full, queued) {
            (false, _) => {
                // Caught up: the next look starts from the earliest again.
                *cursor = None;
                Next::AfterAPause
            }
            (true, 0) if passed > 0 => Next::WhenOneIsDone,
            (true, _) => Next::AtOnce,
        })
    }

    /// Takes the queue of customer `key` when nothing of theirs is queued or under way:
    /// their inputs arriving meanwhile wait in it, behind the holder's work, until
    /// [`Daemon::release`]. `None` when the customer is busy.
    fn hold(&self, key: &str) -> Option<mpsc::UnboundedReceiver<Job>> {
        let mut queues = lock(&self.queues);
        if queues.contains_key(key) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        queues.insert(key.to_owned(), tx);
        Some(rx)
    }

    /// Gives back a queue taken by [`Daemon::hold`]: to a worker if inputs came meanwhile.
    fn release(self: &Arc<Self>, key: String, queue: mpsc::UnboundedReceiver<Job>) {
        // Checked under the map lock that `enqueue` sends under: no input is left behind.
        let mut queues = lock(&self.queues);
        if queue.is_empty() {
            self.retire(&mut queues, &key);
        } else {
            drop(queues);
            tokio::spawn(self.clone().work(key, queue));
        }
    }

    /// Fires the timers of customers held for it, together: one load and one commit for
    /// the batch, where each customer's own worker would take a task, a load and a commit
    /// of its own. A commit another writer refused is applied again on its own. A failed
    /// one stays due and is fired again at a later look.
    async fn fire_held(self: Arc<Self>, held: Vec<Held>) {
        let keys: Vec<String> = held.iter().map(|h| h.key.clone()).collect();
        let loaded = self.store.load_many(&keys).await;
        let mut outcomes = Vec::with_capacity(held.len());
        for (n, (h, customer)) in held.iter().zip(loaded).enumerate() {
            if n % ENGINE_SLICE == ENGINE_SLICE - 1 {
                // The engine's work for a whole batch would hold a runtime worker for
                // tens of milliseconds: let the API's requests in between.
                tokio::task::yield_now().await;
            }
            let decided = customer
                .map_err(ApplyError::from)
                .and_then(|customer| Ok(self.decide(customer, None, &h.input)?));
            match decided {
                Ok(Decided::Unchanged(_)) => {}
                Ok(Decided::Commit(outcome)) => outcomes.push((h, outcome)),
                Err(e) => {
                    tracing::error!(customer = %h.key, error = %e, "timer not handled; it will be retried");
                }
            }
        }
        let results = {
            let commits: Vec<Commit<'_>> = outcomes.iter().map(|(_, o)| o.commit()).collect();
            self.store.commit_many(&commits).await
        };
        let mut again = Vec::new();
        for ((h, outcome), result) in outcomes.iter().zip(&results) {
            self.settle(&h.input, outcome, result);
            match result {
                Ok(()) => {}
                Err(StoreError::Conflict(_)) => {
                    self.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                    again.push(*h);
                }
                Err(e) => {
                    tracing::error!(customer = %h.key, error = %e, "timer not handled; it will be retried");
                }
            }
        }
        for h in again {
            if let Err(e) = self.apply(&h.key, &h.input).await {
                tracing::error!(customer = %h.key, error = %e, "timer not handled; it will be retried");
            }
        }
        drop(outcomes);
        for h in held {
            self.done_with(&h.input);
            self.release(h.key, h.queue);
        }
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
        let mut cursor = None;
        while !*stop.borrow() {
            let next = self.fire_timers(&mut cursor).await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read due timers");
                cursor = None;
                Next::AfterAPause
            });
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
            match next {
                Next::AtOnce => {}
                Next::WhenOneIsDone => {
                    tokio::select! {
                        () = self.timers_done.notified() => {}
                        () = tokio::time::sleep(TIMER_POLL) => {}
                        _ = stop.changed() => {}
                    }
                }
                Next::AfterAPause => {
                    tokio::select! {
                        () = tokio::time::sleep(TIMER_POLL) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
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
        check_channels(&workspace, &self.channels, &self.config.policy)?;
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

/// What the timer loop does after a look at the wake index.
enum Next {
    /// More timers are due: look again.
    AtOnce,
    /// As many timers are in hand as it may hold (or every due one it saw is): look again
    /// when one has been handled.
    WhenOneIsDone,
    /// Every due timer is in hand: look again after [`TIMER_POLL`].
    AfterAPause,
}

/// A [`Batcher`] running `run` with the store on each batch.
fn batcher<I, O, F, Fut>(io: &IoThread, store: &Arc<dyn Store>, run: F) -> Batcher<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Arc<dyn Store>, Vec<I>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<O>> + Send + 'static,
{
    let store = store.clone();
    Batcher::spawn(io.handle(), STORE_BATCH, move |items| {
        run(store.clone(), items)
    })
}

/// The profile's `unreachable` list with `channel` added, as the one trait to set.
pub(crate) fn unreachable_traits(traits: &Map<String, Value>, channel: &str) -> Map<String, Value> {
    let mut out: Map<String, Value> = traits
        .get("unreachable")
        .map(|list| ("unreachable".to_owned(), list.clone()))
        .into_iter()
        .collect();
    waymark_scheduler::policy::mark_unreachable(&mut out, channel);
    out
}

/// Refuses a workspace that does not fit the daemon's channels, with every problem:
///
/// - a send, or its `fallback`, on a channel the config does not define;
/// - a `send: preferred` whose policy `channels` (the journey's own, else `policy` of the
///   daemon config) lists a channel the config does not define;
/// - a `send: preferred` whose template has no part for one of those channels.
///
/// The loader (`waymark check`) checks the last against the journey's own `channels`, or
/// the language's default when it sets none; only the daemon knows its own policy.
///
/// # Errors
/// One diagnostic per problem, placed at the send step with its source line.
pub fn check_channels(
    workspace: &Workspace,
    channels: &Channels,
    policy: &Policy,
) -> Result<(), Vec<Diagnostic>> {
    let mut problems = Vec::new();
    for journey in &workspace.journeys {
        let found = problems.len();
        let (order, whose) = match &journey.policy.channels {
            Some(own) => (own, "the journey's `policy.channels`"),
            None => (&policy.channels, "the daemon config's `policy.channels`"),
        };
        let listed = order
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        for step in &journey.steps {
            let StepKind::Send(send) = &step.kind else {
                continue;
            };
            let mut error = |code, message: String| {
                problems.push(Diagnostic::error(
                    journey.source.clone(),
                    step.pos,
                    code,
                    message,
                ));
            };
            let named = match &send.channel {
                ChannelChoice::Named(name) => Some(name),
                ChannelChoice::Preferred => None,
            };
            for name in named.into_iter().chain(&send.fallback) {
                if !channels.is_known(name) {
                    error(
                        codes::UNKNOWN_CHANNEL,
                        format!(
                            "step `{}` sends on channel `{name}`, which `channels` in the daemon config does not define",
                            step.id
                        ),
                    );
                }
            }
            if named.is_some() {
                continue;
            }
            let mut seen = HashSet::new();
            for name in order.iter().filter(|c| seen.insert(c.as_str())) {
                if !channels.is_known(name) {
                    error(
                        codes::UNKNOWN_CHANNEL,
                        format!(
                            "step `{}` sends on `preferred`, which may use channel `{name}` of {whose} ({listed}), but the daemon config's `channels` does not define it: define it, or take it out of `policy.channels`",
                            step.id
                        ),
                    );
                } else if workspace
                    .templates
                    .get(&send.template)
                    .is_some_and(|t| !t.has_part(name))
                {
                    error(
                        codes::TEMPLATE_LACKS_CHANNEL,
                        format!(
                            "template `{}` has no part for channel `{name}`, which step `{}` can send on (`send: preferred` may use any channel of {whose}: {listed})",
                            send.template, step.id
                        ),
                    );
                }
            }
        }
        if problems.len() > found
            && let Ok(source) = std::fs::read_to_string(&journey.source)
        {
            for problem in &mut problems[found..] {
                problem.attach_source(&source);
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

    /// A workspace whose journey `nudge` sends `preferred` with a template that has parts
    /// for email, sms and telegram; `policy` is the journey's own `policy:` section.
    fn preferred_workspace(dir: &Path, policy: &str) -> Workspace {
        let journey = format!(
            "id: nudge\ntrigger: {{event: nudge}}\n{policy}steps:\n  remind: {{send: preferred, template: hello}}\n"
        );
        std::fs::create_dir_all(dir.join("templates")).unwrap();
        std::fs::write(dir.join("nudge.yaml"), journey).unwrap();
        std::fs::write(
            dir.join("templates/hello.yaml"),
            "email: {subject: Hi, text: Hi}\nsms: {text: Hi}\ntelegram: {text: Hi}\n",
        )
        .unwrap();
        waymark_journey::load(dir).unwrap().0
    }

    fn channels(names: &[&str]) -> Channels {
        let config = names
            .iter()
            .map(|n| ((*n).to_owned(), serde_json::json!({"kind": "log"})))
            .collect();
        Channels::build(&crate::default_registry(), &config, false).unwrap()
    }

    fn policy(channels: &[&str]) -> Policy {
        Policy {
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            ..Policy::default()
        }
    }

    /// `send: preferred` may use any channel of the policy in force, the daemon's when
    /// the journey sets none: each must be configured and have a part in the template.
    #[test]
    fn preferred_sends_are_checked_against_the_policy_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let workspace = preferred_workspace(dir.path(), "");
        let all = channels(&["email", "sms", "telegram", "whatsapp"]);
        assert!(check_channels(&workspace, &all, &policy(&["telegram", "email"])).is_ok());

        // Telegram first in the daemon's policy, but not configured.
        let problems = check_channels(
            &workspace,
            &channels(&["email"]),
            &policy(&["telegram", "email"]),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        let rendered = problems[0].render();
        assert!(
            rendered.starts_with(&format!(
                "{}:4:3: error: step `remind` sends on `preferred`, which may use channel `telegram` of the daemon config's `policy.channels` (`telegram`, `email`), but the daemon config's `channels` does not define it",
                dir.path().join("nudge.yaml").display()
            )),
            "{rendered}"
        );
        assert!(
            rendered.contains("4 |   remind: {send: preferred"),
            "{rendered}"
        );
        assert!(
            rendered.contains("D0001") && rendered.contains("unknown-channel"),
            "{rendered}"
        );

        // Configured, but the template has no part for it.
        let problems =
            check_channels(&workspace, &all, &policy(&["whatsapp", "email"])).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].code, codes::TEMPLATE_LACKS_CHANNEL);
        assert_eq!(problems[0].pos.line, 4);
        assert!(
            problems[0].message.starts_with(
                "template `hello` has no part for channel `whatsapp`, which step `remind` can send on"
            ),
            "{}",
            problems[0].message
        );

        // Without a config file every name is a `log` channel: only templates count.
        let any = Channels::build(&crate::default_registry(), &BTreeMap::new(), true).unwrap();
        assert!(check_channels(&workspace, &any, &policy(&["telegram", "email"])).is_ok());
        let problems = check_channels(&workspace, &any, &policy(&["vk"])).unwrap_err();
        assert_eq!(problems[0].code, codes::TEMPLATE_LACKS_CHANNEL);
    }

    /// A journey's own `policy.channels` replaces the daemon's, so the daemon's does not
    /// matter to it.
    #[test]
    fn a_journey_policy_replaces_the_daemon_policy() {
        let dir = tempfile::tempdir().unwrap();
        let workspace = preferred_workspace(dir.path(), "policy: {channels: [email, sms]}\n");
        let daemon_policy = policy(&["telegram", "whatsapp"]);
        assert!(check_channels(&workspace, &channels(&["email", "sms"]), &daemon_policy).is_ok());
        let problems =
            check_channels(&workspace, &channels(&["email"]), &daemon_policy).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .message
                .contains("channel `sms` of the journey's `policy.channels` (`email`, `sms`)"),
            "{}",
            problems[0].message
        );
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
