//! The outbox dispatcher: claims messages, hands them to their channels with at most
//! `concurrency` deliveries in flight per channel, and records what became of them.
//!
//! A claimed message waits for one of its channel's delivery slots, and its lease must not
//! run out meanwhile (someone else would claim it too). So each channel may have only so
//! many messages claimed: as many as it gets through in a quarter of the lease at the pace
//! it has been answering (at first, and for slow providers, twice its concurrency). A
//! channel with that many is busy: its messages stay unclaimed in the outbox while other
//! channels' messages go on being claimed and delivered, so one slow provider holds up
//! only its own messages, and a fast one is fed in large claims. Should a message still
//! wait too long (a provider that suddenly slows down), it is left to the next claim
//! rather than risk a second send.
//!
//! A message found due longer ago than its journey's `max_lateness` (it waited out a
//! downtime in the outbox, or kept failing) is not handed over: like a send the engine
//! finds too late, it is skipped as `expired`, and leaves the outbox for good.
//!
//! Messages this daemon commits need no claim: when their channels have room, the commit
//! writes them already claimed for this daemon and hands them to the dispatcher in memory
//! ([`Fresh`]), which spares the database a write and a read per message. Should the
//! daemon die first, they are claimed like any other once their claim runs out (at once
//! when an embedded database's daemon starts again).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::mpsc;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use waymark_channel::{Delivery, DeliveryError, OutboundMessage};
use waymark_scheduler::{Effect, Message, SendOutcome};
use waymark_store::OutboxMessage;

use crate::channels::DEFAULT_CONCURRENCY;
use crate::daemon::{Daemon, Input, lock};
use crate::links::LinkTarget;

/// Delivery attempts before a retryable failure becomes a permanent one. A claim counts
/// as an attempt.
pub const MAX_DELIVERY_ATTEMPTS: u32 = 10;
/// How long a claimed outbox row stays claimed: longer than any delivery may take,
/// waiting for its turn included.
pub const LEASE: TimeDelta = TimeDelta::seconds(120);
/// A provider call that takes longer than this is abandoned and retried.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a provider's `Retry-After` defers a retry: past it the message would be
/// stale anyway (a journey's `max_lateness` is a day by default), and a provider's
/// absurd value must not push the retry out of the calendar.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
const OUTBOX_POLL: Duration = Duration::from_millis(500);
/// The most messages one claim takes.
const CLAIM_BATCH: usize = 512;
/// The most messages claimed and not yet recorded, across channels: a few megabytes. Only
/// fast providers get near it (a channel may hold what it delivers in a quarter of the
/// lease); for them it sets how many deliveries overlap the writes that claim and record
/// them (in the daemon benchmark 8192 delivered a fifth faster than 2048).
const MAX_IN_HAND: usize = 8192;

/// A channel's share of the dispatcher.
pub(crate) struct Slot {
    /// One permit per delivery in flight.
    permits: Semaphore,
    concurrency: usize,
    /// Claimed messages not yet handed back by the provider: waiting for a permit or
    /// being delivered.
    claimed: AtomicUsize,
    /// How long the provider has been taking per delivery, in microseconds: a moving
    /// average, 0 before the first answer.
    pace_micros: AtomicU64,
}

impl Slot {
    fn new(concurrency: usize) -> Slot {
        Slot {
            permits: Semaphore::new(concurrency),
            concurrency,
            claimed: AtomicUsize::new(0),
            pace_micros: AtomicU64::new(0),
        }
    }

    /// How many messages may be claimed for this channel at once: what it delivers in a
    /// quarter of the lease at its pace, at least twice its concurrency.
    fn allowance(&self) -> usize {
        let floor = 2 * self.concurrency;
        let pace = self.pace_micros.load(Ordering::Relaxed);
        if pace == 0 {
            return floor;
        }
        let window = u64::try_from((LEASE / 4).num_microseconds().unwrap_or(0)).unwrap_or(0);
        let rounds = usize::try_from(window / pace).unwrap_or(usize::MAX);
        rounds
            .saturating_mul(self.concurrency)
            .clamp(floor, MAX_IN_HAND)
    }

    /// How many more messages may be claimed for it now; 0 when busy.
    fn room(&self) -> usize {
        self.allowance()
            .saturating_sub(self.claimed.load(Ordering::Relaxed))
    }

    /// [`Slot::room`] when it is worth a claim: at least a quarter of the allowance, so
    /// that a channel kept nearly full by fresh messages is not claimed for one message
    /// at a time.
    fn claim_room(&self) -> usize {
        let room = self.room();
        if room * 4 < self.allowance() { 0 } else { room }
    }

    fn record_pace(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let before = self.pace_micros.load(Ordering::Relaxed);
        let after = if before == 0 {
            took
        } else {
            (before * 7 + took) / 8
        };
        self.pace_micros.store(after, Ordering::Relaxed);
    }
}

/// A message committed claimed for this daemon, as the claim would have returned it.
#[derive(Debug)]
pub(crate) struct Fresh {
    message: OutboxMessage,
    claimed_at: DateTime<Utc>,
}

impl Fresh {
    pub(crate) fn new(m: &Message, claimed_at: DateTime<Utc>) -> Fresh {
        Fresh {
            message: OutboxMessage {
                idempotency_key: m.idempotency_key.clone(),
                channel: m.channel.clone().unwrap_or_default(),
                address: m.address.clone(),
                content: m.content.clone(),
                customer: m.customer.clone(),
                journey: m.journey.clone(),
                step: m.step.clone(),
                template: m.template.clone(),
                attempts: 1,
                created_at: m.at,
            },
            claimed_at,
        }
    }
}

/// What became of a message's turn at its channel.
enum Attempt {
    Made(Result<Delivery, DeliveryError>),
    /// Found too late to go out, at this instant.
    Expired(DateTime<Utc>),
    /// Left for the next claim.
    Left,
}

/// The messages among `effects` that are handed to a channel (the outbox's rows).
pub(crate) fn handed(effects: &[Effect]) -> impl Iterator<Item = &Message> {
    effects.iter().filter_map(|e| match e {
        Effect::Message(m) if m.outcome == SendOutcome::Sent && m.channel.is_some() => Some(m),
        _ => None,
    })
}

/// Waits for the next fresh message; never, without a receiver.
async fn next_fresh(fresh: &mut Option<mpsc::UnboundedReceiver<Fresh>>) -> Option<Fresh> {
    match fresh {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    fn slot(&self, channel: &str) -> Arc<Slot> {
        lock(&self.slots)
            .entry(channel.to_owned())
            .or_insert_with(|| Arc::new(Slot::new(self.channels.concurrency(channel))))
            .clone()
    }

    /// The busy channels, and how many messages the next claim may take: no more than
    /// any channel that is not busy has room for, and none when every channel is busy.
    fn claimable(&self) -> (Vec<String>, usize) {
        let slots = lock(&self.slots);
        let mut busy = Vec::new();
        let in_hand = self.in_hand.load(Ordering::Relaxed);
        let mut limit = CLAIM_BATCH.min(MAX_IN_HAND.saturating_sub(in_hand));
        if self.channels.accepts_any() {
            // Channels the config does not name (there is none) start at the default.
            limit = limit.min(2 * DEFAULT_CONCURRENCY);
        }
        for (name, slot) in slots.iter() {
            match slot.claim_room() {
                0 => busy.push(name.clone()),
                room => limit = limit.min(room),
            }
        }
        if !slots.is_empty() && busy.len() == slots.len() {
            limit = 0;
        }
        (busy, limit)
    }

    /// How many channels a claim could serve now.
    fn open_channels(&self) -> usize {
        let (busy, limit) = self.claimable();
        if limit == 0 {
            0
        } else {
            lock(&self.slots).len() - busy.len()
        }
    }

    /// Takes room for the messages of a commit about to be made in their channels' shares
    /// of the running dispatcher, so that they can be committed claimed and delivered
    /// straight from memory. False, with nothing taken, when there is no message, no
    /// dispatcher, a channel without room, or as many messages in hand as the dispatcher
    /// holds (delivered ones whose record is still being written count): the messages
    /// then wait in the outbox for a claim.
    ///
    /// Room is checked and taken channel by channel, so concurrent commits may overfill a
    /// share by a batch at most; that only brings a channel's claims to a pause sooner.
    pub(crate) fn reserve_deliveries(&self, effects: &[Effect]) -> bool {
        if !self.dispatching.load(Ordering::Relaxed)
            || self.in_hand.load(Ordering::Relaxed) >= MAX_IN_HAND
        {
            return false;
        }
        let mut wanted: BTreeMap<&str, usize> = BTreeMap::new();
        for m in handed(effects) {
            *wanted
                .entry(m.channel.as_deref().unwrap_or_default())
                .or_default() += 1;
        }
        if wanted.is_empty() {
            return false;
        }
        let slots: Vec<(Arc<Slot>, usize)> = wanted
            .into_iter()
            .map(|(channel, n)| (self.slot(channel), n))
            .collect();
        if slots.iter().any(|(slot, n)| slot.room() < *n) {
            return false;
        }
        for (slot, n) in slots {
            slot.claimed.fetch_add(n, Ordering::Relaxed);
        }
        true
    }

    /// Gives back what [`Daemon::reserve_deliveries`] took, for a commit that did not
    /// happen.
    pub(crate) fn release_deliveries(&self, effects: &[Effect]) {
        for m in handed(effects) {
            let slot = self.slot(m.channel.as_deref().unwrap_or_default());
            slot.claimed.fetch_sub(1, Ordering::Relaxed);
        }
        self.delivery_done.notify_one();
    }

    /// Delivers the outbox until `stop` turns true; deliveries under way are finished
    /// first.
    pub async fn dispatch_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        for name in self.channels.names() {
            self.slot(name);
        }
        let mut fresh = lock(&self.fresh_rx).take();
        self.dispatching.store(fresh.is_some(), Ordering::Relaxed);
        let mut deliveries = JoinSet::new();
        let mut poll = tokio::time::interval(OUTBOX_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Claims go to the database, so they are made only when something may be due:
        // at start, on a nudge (messages committed unclaimed), every poll (retries and
        // claims that ran out), and when a channel busy at the last claim has room again.
        let mut claim = true;
        // After a claim that found channels busy: how many channels it could serve.
        let mut short_of_room: Option<usize> = None;
        while !*stop.borrow() {
            while deliveries.try_join_next().is_some() {}
            if let Some(rx) = fresh.as_mut() {
                while let Ok(f) = rx.try_recv() {
                    self.spawn_fresh(&mut deliveries, f);
                }
            }
            if claim {
                let (busy, limit) = self.claimable();
                let taken = if limit == 0 {
                    0
                } else {
                    self.claim(&mut deliveries, &busy, limit).await
                };
                short_of_room = (limit == 0 || !busy.is_empty()).then(|| self.open_channels());
                claim = limit > 0 && taken == limit;
                if claim {
                    continue;
                }
            }
            tokio::select! {
                Some(f) = next_fresh(&mut fresh) => self.spawn_fresh(&mut deliveries, f),
                () = self.outbox_ready.notified() => claim = true,
                () = self.delivery_done.notified() => {
                    claim = short_of_room.is_some_and(|open| self.open_channels() > open);
                }
                _ = poll.tick() => claim = true,
                _ = stop.changed() => {}
            }
        }
        // Fresh messages that came too late stay claimed: the next start (or, on a shared
        // database, another daemon once the claim runs out) delivers them.
        self.dispatching.store(false, Ordering::Relaxed);
        while deliveries.join_next().await.is_some() {}
    }

    /// Claims up to `limit` due messages off the `busy` channels and starts their
    /// deliveries; returns how many.
    async fn claim(
        self: &Arc<Self>,
        deliveries: &mut JoinSet<()>,
        busy: &[String],
        limit: usize,
    ) -> usize {
        let now = self.clock.now();
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let claimed = match self.store.claim_outbox(now, LEASE, limit, busy).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::error!(error = %e, "cannot claim outbox messages");
                return 0;
            }
        };
        let taken = claimed.len();
        let (expired, claimed): (Vec<_>, Vec<_>) =
            claimed.into_iter().partition(|m| self.expired(m, now));
        self.skip_expired(&expired, now).await;
        for message in claimed {
            let slot = self.slot(&message.channel);
            slot.claimed.fetch_add(1, Ordering::Relaxed);
            self.spawn_delivery(deliveries, message, slot, now);
        }
        taken
    }

    /// Starts the delivery of a fresh message; its room was taken when it was committed.
    fn spawn_fresh(self: &Arc<Self>, deliveries: &mut JoinSet<()>, f: Fresh) {
        let slot = self.slot(&f.message.channel);
        self.spawn_delivery(deliveries, f.message, slot, f.claimed_at);
    }

    /// Starts a delivery, counted in hand until its result is recorded.
    fn spawn_delivery(
        self: &Arc<Self>,
        deliveries: &mut JoinSet<()>,
        m: OutboxMessage,
        slot: Arc<Slot>,
        claimed_at: DateTime<Utc>,
    ) {
        self.in_hand.fetch_add(1, Ordering::Relaxed);
        let daemon = self.clone();
        deliveries.spawn(async move {
            daemon.clone().deliver(m, slot, claimed_at).await;
            daemon.in_hand.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Waits for a permit of the message's channel, delivers, records the result. A
    /// message that has become too late meanwhile (a fresh one, or one that waited long
    /// for the permit) is skipped instead.
    async fn deliver(
        self: Arc<Self>,
        m: OutboxMessage,
        slot: Arc<Slot>,
        claimed_at: DateTime<Utc>,
    ) {
        let attempt = {
            let _permit = slot.permits.acquire().await;
            let now = self.clock.now();
            let lease_left = claimed_at + LEASE - now;
            if self.expired(&m, now) {
                Attempt::Expired(now)
            } else if lease_left.to_std().unwrap_or_default() > DELIVERY_TIMEOUT {
                let started = Instant::now();
                let result = self.hand_over(&m).await;
                slot.record_pace(started.elapsed());
                Attempt::Made(result)
            } else {
                // The claim could run out mid-delivery and someone else deliver it too:
                // leave it to the next claim.
                tracing::warn!(key = %m.idempotency_key, channel = %m.channel, "waited too long for a free delivery slot; left for the next claim");
                Attempt::Left
            }
        };
        slot.claimed.fetch_sub(1, Ordering::Relaxed);
        self.delivery_done.notify_one();
        match attempt {
            Attempt::Made(result) => self.record(m, result).await,
            Attempt::Expired(now) => self.skip_expired(&[m], now).await,
            Attempt::Left => {}
        }
    }

    /// The longest a message of `journey` may wait for its delivery: the `max_lateness`
    /// of the policy the engine holds for the journey as loaded now (the daemon's for a
    /// journey no longer loaded). The current version decides, not the one that made the
    /// message: the outbox does not keep versions, and a `max_lateness` raised during an
    /// outage should save the messages it waited out.
    fn max_lateness(&self, journey: &str) -> TimeDelta {
        self.with_engine(|engine| engine.policy(journey).max_lateness)
    }

    /// Whether `m` is due longer ago than its journey's `max_lateness` at `now`: the
    /// engine's rule for sends, with the message's due time the moment the engine made it.
    fn expired(&self, m: &OutboxMessage, now: DateTime<Utc>) -> bool {
        now - m.created_at > self.max_lateness(&m.journey)
    }

    /// Records `messages` as skipped for being too late. Should that fail, they stay
    /// claimed until their lease runs out, and are found too late again by the next claim.
    async fn skip_expired(&self, messages: &[OutboxMessage], now: DateTime<Utc>) {
        let Some(oldest) = messages.iter().map(|m| m.created_at).min() else {
            return;
        };
        let late = (now - oldest).to_std().unwrap_or_default();
        tracing::warn!(messages = messages.len(), late = ?late, "messages due longer ago than their journey's max_lateness skipped as expired");
        let keys: Vec<&str> = messages
            .iter()
            .map(|m| m.idempotency_key.as_str())
            .collect();
        if let Err(e) = self.store.outbox_expired(&keys, now).await {
            tracing::error!(error = %e, messages = keys.len(), "cannot record expired messages");
        }
    }

    /// The provider call, bounded by [`DELIVERY_TIMEOUT`].
    async fn hand_over(&self, m: &OutboxMessage) -> Result<Delivery, DeliveryError> {
        let Some(channel) = self.channels.get(&m.channel) else {
            return Err(DeliveryError::permanent(format!(
                "channel `{}` is not configured",
                m.channel
            )));
        };
        let (content, links) = match &self.links {
            Some(links) => links.prepare(&LinkTarget::of(m), &m.content),
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

    /// Writes down what became of a delivery: accepted messages together with others
    /// (group commit), retries and failures one by one.
    async fn record(self: &Arc<Self>, m: OutboxMessage, result: Result<Delivery, DeliveryError>) {
        let key = m.idempotency_key;
        let now = self.clock.now();
        let recorded = match result {
            Ok(delivery) => {
                self.metrics.delivery(&m.channel, "delivered");
                // A failure is logged by the batch.
                let _ = self.delivered.call((key, delivery.provider_id)).await;
                return;
            }
            Err(DeliveryError::Retryable {
                reason,
                retry_after,
            }) if m.attempts < MAX_DELIVERY_ATTEMPTS => {
                self.metrics.delivery(&m.channel, "retry");
                let wait = retry_delay(m.attempts, &key, retry_after);
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
}

/// How long to wait before the next attempt: the backoff, or longer when the provider
/// asked (`Retry-After`), but never more than [`MAX_RETRY_AFTER`] on its word.
fn retry_delay(attempts: u32, key: &str, retry_after: Option<Duration>) -> Duration {
    backoff(attempts, key).max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
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
    fn a_providers_retry_after_is_heeded_up_to_a_day() {
        let minute = Duration::from_secs(60);
        assert_eq!(retry_delay(1, "k", Some(minute)), minute);
        assert_eq!(retry_delay(1, "k", None), backoff(1, "k"));
        let absurd = Duration::from_secs(1_000_000_000_000_000);
        assert_eq!(retry_delay(1, "k", Some(absurd)), MAX_RETRY_AFTER);
    }

    #[test]
    fn a_channel_may_have_claimed_what_it_delivers_in_a_quarter_of_the_lease() {
        let slot = Slot::new(4);
        // No answer yet: twice the concurrency.
        assert_eq!(slot.room(), 8);
        slot.claimed.fetch_add(8, Ordering::Relaxed);
        assert_eq!(slot.room(), 0);
        // A provider taking 10 s: 3 rounds in 30 s, 12 messages.
        slot.record_pace(Duration::from_secs(10));
        assert_eq!(slot.allowance(), 12);
        // A slow one: still twice the concurrency.
        let slow = Slot::new(4);
        slow.record_pace(Duration::from_secs(60));
        assert_eq!(slow.allowance(), 8);
        // A fast one: as many as the dispatcher holds.
        let fast = Slot::new(4);
        fast.record_pace(Duration::from_micros(50));
        assert_eq!(fast.allowance(), MAX_IN_HAND);
    }
}
