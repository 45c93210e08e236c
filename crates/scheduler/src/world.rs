//! An in-memory home for the engine: every customer's state, the timer index, aliases and
//! schedule ticks. `waymark test`, the property tests and the benchmarks run on it; the
//! daemon runs the same [`Engine`] on its durable store instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use waymark_journey::Trigger;

use crate::engine::{Engine, EnrollError};
use crate::history::Event;
use crate::policy;
use crate::state::{CustomerState, Effect};

pub struct World {
    engine: Engine,
    customers: BTreeMap<String, CustomerState>,
    /// Merged-away profile id -> the profile it lives on in.
    aliases: HashMap<String, String>,
    /// (wake time, customer, enrollment), earliest first.
    timers: BTreeSet<(DateTime<Utc>, String, String)>,
    timers_of: HashMap<String, Vec<(DateTime<Utc>, String)>>,
    /// Next cron tick per `schedule` journey.
    ticks: BTreeMap<String, DateTime<Utc>>,
}

impl World {
    /// A world whose schedule journeys tick from `start` on (a tick at `start` included).
    pub fn new(engine: Engine, start: DateTime<Utc>) -> World {
        let mut world = World {
            engine,
            customers: BTreeMap::new(),
            aliases: HashMap::new(),
            timers: BTreeSet::new(),
            timers_of: HashMap::new(),
            ticks: BTreeMap::new(),
        };
        let ids: Vec<String> = world
            .engine
            .workspace()
            .journeys
            .iter()
            .map(|j| j.id.clone())
            .collect();
        for id in ids {
            world.schedule_tick(&id, start - chrono::TimeDelta::seconds(1));
        }
        world
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The profile id `id` now lives under (itself unless merged away by an alias).
    pub fn resolve(&self, id: &str) -> String {
        let mut id = id;
        while let Some(next) = self.aliases.get(id) {
            id = next;
        }
        id.to_owned()
    }

    pub fn customer(&self, id: &str) -> Option<&CustomerState> {
        self.customers.get(&self.resolve(id))
    }

    pub fn customers(&self) -> impl Iterator<Item = &CustomerState> {
        self.customers.values()
    }

    /// Creates or replaces a profile with traits and earlier events. No journey reacts to
    /// the events, but they change the traits as they would have when they happened (an
    /// `unsubscribed` event unsubscribes).
    pub fn add_profile(&mut self, id: &str, traits: Map<String, Value>, history: Vec<Event>) {
        let mut state = CustomerState::new(id);
        state.profile.traits = traits;
        let log = std::sync::Arc::make_mut(&mut state.profile.history);
        for event in history {
            policy::apply_to_traits(&mut state.profile.traits, &event);
            log.push(event);
        }
        self.customers.insert(id.to_owned(), state);
    }

    pub fn track(&mut self, user: &str, event: &Event, now: DateTime<Utc>) -> Vec<Effect> {
        self.with_customer(user, |engine, state| engine.on_event(state, event, now))
    }

    pub fn identify(
        &mut self,
        user: &str,
        traits: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        self.with_customer(user, |engine, state| engine.on_identify(state, traits, now))
    }

    /// Merges profile `previous` into `user` for good.
    pub fn alias(&mut self, user: &str, previous: &str, now: DateTime<Utc>) -> Vec<Effect> {
        let user = self.resolve(user);
        let previous = self.resolve(previous);
        if user == previous {
            return Vec::new();
        }
        self.aliases.insert(previous.clone(), user.clone());
        self.reindex(&previous, None);
        let Some(other) = self.customers.remove(&previous) else {
            return Vec::new();
        };
        self.with_customer(&user, |engine, state| engine.merge(state, other, now))
    }

    /// API-triggered entry.
    ///
    /// # Errors
    /// See [`Engine::enroll`].
    pub fn enroll(
        &mut self,
        user: &str,
        journey: &str,
        properties: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Effect>, EnrollError> {
        let mut result = Ok(Vec::new());
        let effects = self.with_customer(user, |engine, state| {
            result = engine.enroll(state, journey, properties, now);
            Vec::new()
        });
        debug_assert!(effects.is_empty());
        result
    }

    /// The earliest pending enrollment timer.
    pub fn next_timer(&self) -> Option<DateTime<Utc>> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// The earliest pending timer or schedule tick.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        let tick = self.ticks.values().min().copied();
        match (self.next_timer(), tick) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires every timer and schedule tick due at or before `now`, including those that
    /// firing creates, earliest first. Timers due at the same instant as a tick fire first.
    pub fn run_due(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let mut effects = Vec::new();
        loop {
            let timer = self.timers.first().filter(|(at, _, _)| *at <= now).cloned();
            let tick = self
                .ticks
                .iter()
                .map(|(j, at)| (*at, j.clone()))
                .filter(|(at, _)| *at <= now)
                .min();
            match (timer, tick) {
                (Some((at, customer, enrollment)), tick)
                    if tick.as_ref().is_none_or(|(t, _)| at <= *t) =>
                {
                    effects.extend(self.with_customer(&customer, |engine, state| {
                        engine.on_timer(state, &enrollment, at)
                    }));
                }
                (_, Some((at, journey))) => {
                    let ids: Vec<String> = self.customers.keys().cloned().collect();
                    for id in ids {
                        effects.extend(self.with_customer(&id, |engine, state| {
                            engine.on_schedule(state, &journey, at)
                        }));
                    }
                    self.schedule_tick(&journey, at);
                }
                (None, None) => return effects,
                (Some(_), None) => unreachable!("matched by the first arm"),
            }
        }
    }

    /// How many enrollments are active.
    pub fn active_enrollments(&self) -> usize {
        self.customers
            .values()
            .flat_map(|c| &c.enrollments)
            .filter(|e| e.is_active())
            .count()
    }

    fn with_customer(
        &mut self,
        id: &str,
        f: impl FnOnce(&Engine, &mut CustomerState) -> Vec<Effect>,
    ) -> Vec<Effect> {
        let id = self.resolve(id);
        let state = self
            .customers
            .entry(id.clone())
            .or_insert_with(|| CustomerState::new(id.clone()));
        let effects = f(&self.engine, state);
        let wakes: Vec<(DateTime<Utc>, String)> = state
            .enrollments
            .iter()
            .filter(|e| e.is_active())
            .filter_map(|e| e.wake.map(|w| (w, e.id.clone())))
            .collect();
        self.reindex(&id, Some(wakes));
        effects
    }

    fn reindex(&mut self, customer: &str, wakes: Option<Vec<(DateTime<Utc>, String)>>) {
        for (at, enrollment) in self.timers_of.remove(customer).unwrap_or_default() {
            self.timers.remove(&(at, customer.to_owned(), enrollment));
        }
        if let Some(wakes) = wakes.filter(|w| !w.is_empty()) {
            for (at, enrollment) in &wakes {
                self.timers
                    .insert((*at, customer.to_owned(), enrollment.clone()));
            }
            self.timers_of.insert(customer.to_owned(), wakes);
        }
    }

    /// Sets the journey's next cron tick strictly after `after`.
    fn schedule_tick(&mut self, journey: &str, after: DateTime<Utc>) {
        let next = self
            .engine
            .workspace()
            .journey(journey)
            .and_then(|j| match &j.trigger {
                Trigger::Schedule {
                    schedule, timezone, ..
                } => schedule
                    .after(&after.with_timezone(timezone))
                    .next()
                    .map(|t| t.with_timezone(&Utc)),
                _ => None,
            });
        match next {
            Some(at) => self.ticks.insert(journey.to_owned(), at),
            None => self.ticks.remove(journey),
        };
    }
}
