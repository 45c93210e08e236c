//! The deterministic core: `(state, input, now) -> (new state, effects)`.
//!
//! Every input for a customer (an event, a trait update, a timer, an enrollment, a
//! schedule tick, an alias merge) goes through one method here, which changes the
//! [`CustomerState`] in place and returns the [`Effect`]s. Nothing here reads a clock or
//! does I/O, so the daemon and `waymark test` share every line of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use waymark_journey::{
    Audience, EventMatch, History, Journey, Outcome, Policy, Reentry, RenderContext, Scope, SendAt,
    SendStep, Step, StepIdx, StepKind, TraitValue, Trigger, Workspace,
};

use crate::assign::{in_holdout, split_variant};
use crate::history::Event;
use crate::policy::{
    ChannelDirectory, after_quiet_hours, apply_to_traits, best_time, customer_timezone, later_by,
    next_local_time, over_fatigue_cap, over_frequency_cap, resolve_channel,
};
use crate::state::{
    CustomerState, Effect, Enrollment, Message, Profile, SendOutcome, SentMessage, SkipReason,
    Status,
};

/// More steps than this at one instant, without a wait, fail the enrollment. The step that
/// waits (`wait`, `wait: {until}`, `wait_for`, or a send deferred by quiet hours or
/// `at: best_time`) is where the run stops, and is not one of them.
pub const MAX_INSTANT_STEPS: usize = 100;

/// One loaded version of a journey, with the templates and segments it was loaded with.
#[derive(Debug, Clone)]
struct Version {
    journey: Arc<Journey>,
    workspace: Arc<Workspace>,
    policy: Arc<Policy>,
}

/// Why an API enrollment was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollError {
    UnknownJourney(String),
    NotApiTriggered(String),
}

impl std::fmt::Display for EnrollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnrollError::UnknownJourney(id) => write!(f, "no journey `{id}`"),
            EnrollError::NotApiTriggered(id) => write!(
                f,
                "journey `{id}` is not entered through the API (its trigger is not `api: true`)"
            ),
        }
    }
}

impl std::error::Error for EnrollError {}

pub struct Engine {
    current: Arc<Workspace>,
    /// Journey id -> every version loaded since start (usually one or two).
    versions: HashMap<String, Vec<Version>>,
    base_policy: Policy,
    directory: Arc<dyn ChannelDirectory>,
}

impl Engine {
    /// An engine running `workspace` with `base_policy` (the daemon's, or a test's) under
    /// each journey's own `policy:`.
    pub fn new(
        workspace: Workspace,
        base_policy: Policy,
        directory: Arc<dyn ChannelDirectory>,
    ) -> Engine {
        let mut engine = Engine {
            current: Arc::new(workspace.clone()),
            versions: HashMap::new(),
            base_policy,
            directory,
        };
        engine.reload(workspace);
        engine
    }

    /// Makes `workspace` the one new customers enter; enrollments stay on the versions
    /// they entered with, which remain known.
    pub fn reload(&mut self, workspace: Workspace) {
        let workspace = Arc::new(workspace);
        for journey in &workspace.journeys {
            let versions = self.versions.entry(journey.id.clone()).or_default();
            if !versions
                .iter()
                .any(|v| v.journey.version == journey.version)
            {
                versions.push(Version {
                    journey: journey.clone(),
                    workspace: workspace.clone(),
                    policy: Arc::new(self.base_policy.with(&journey.policy)),
                });
            }
        }
        self.current = workspace;
    }

    pub fn workspace(&self) -> &Arc<Workspace> {
        &self.current
    }

    /// The journey `id` as customers may still run it: the current workspace's version,
    /// else (the file was removed) the last version loaded since start.
    pub fn journey_version(&self, id: &str) -> Option<&Arc<Journey>> {
        self.current
            .journey(id)
            .or_else(|| self.versions.get(id)?.last().map(|v| &v.journey))
    }

    /// The send policy in force for journey `id` now: its current version's (its own
    /// `policy:` over the base policy), or the base policy for a journey not loaded.
    pub fn policy(&self, id: &str) -> &Policy {
        self.current
            .journey(id)
            .map_or(&self.base_policy, |journey| {
                &self.current_version(journey).policy
            })
    }

    /// The journey version an enrollment runs on.
    pub fn journey_of(&self, enrollment: &Enrollment) -> Option<&Arc<Journey>> {
        self.version(enrollment).map(|v| &v.journey)
    }

    fn version(&self, enrollment: &Enrollment) -> Option<&Version> {
        self.find_version(&enrollment.journey, &enrollment.version)
    }

    fn current_version(&self, journey: &Journey) -> &Version {
        self.find_version(&journey.id, &journey.version)
            .expect("every journey of the current workspace is registered at reload")
    }

    fn find_version(&self, journey: &str, version: &str) -> Option<&Version> {
        self.versions
            .get(journey)?
            .iter()
            .find(|v| v.journey.version == version)
    }

    /// An event for this customer: recorded in the history, then handled by the
    /// customer's enrollments (goal, exit, `wait_for`, `on`), then by the triggers.
    pub fn on_event(
        &self,
        state: &mut CustomerState,
        event: &Event,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let mut cx = Cx::new(now);
        cx.instant = event.at.min(now);
        Arc::make_mut(&mut state.profile.history).push(event.clone());
        apply_to_traits(&mut state.profile.traits, event);
        self.route(state, event, &mut cx);
        self.enter_by_event(state, event, &mut cx);
        self.enter_by_segments(state, &event.properties, &mut cx);
        cx.effects
    }

    /// New trait values (`identify`); a `null` removes the trait.
    pub fn on_identify(
        &self,
        state: &mut CustomerState,
        traits: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let mut cx = Cx::new(now);
        for (key, value) in traits {
            if value.is_null() {
                state.profile.traits.remove(key);
            } else {
                state.profile.traits.insert(key.clone(), value.clone());
            }
        }
        self.enter_by_segments(state, &Map::new(), &mut cx);
        cx.effects
    }

    /// The timer of enrollment `id` fired. A timer that is no longer set (the enrollment
    /// moved on or ended) or not yet due does nothing.
    pub fn on_timer(&self, state: &mut CustomerState, id: &str, now: DateTime<Utc>) -> Vec<Effect> {
        let mut cx = Cx::new(now);
        let Some(i) = state.enrollments.iter().position(|e| e.id == id) else {
            return cx.effects;
        };
        let enrollment = &state.enrollments[i];
        let Some(due) = enrollment
            .wake
            .filter(|w| *w <= now && enrollment.is_active())
        else {
            return cx.effects;
        };
        let Some(version) = self.version(enrollment).cloned() else {
            self.end(state, i, Outcome::Failed, &mut cx);
            return cx.effects;
        };
        cx.due = due;
        let here = enrollment.step;
        state.enrollments[i].wake = None;
        let step = version.journey.step(here);
        match &step.kind {
            StepKind::Wait(_) | StepKind::WaitUntil { .. } => {
                self.follow(state, i, &version, step.next, &mut cx)
            }
            StepKind::WaitFor { on_timeout, .. } => {
                self.follow(state, i, &version, *on_timeout, &mut cx)
            }
            StepKind::Send(send) => {
                if self.send(state, i, &version, step, send, true, &mut cx) {
                    self.follow(state, i, &version, step.next, &mut cx);
                }
            }
            _ => self.run(state, i, &version, here, &mut cx),
        }
        cx.effects
    }

    /// API-triggered entry (`POST /v1/journeys/{id}/enroll`).
    ///
    /// # Errors
    /// The journey does not exist or is not `api: true`.
    pub fn enroll(
        &self,
        state: &mut CustomerState,
        journey: &str,
        properties: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Effect>, EnrollError> {
        let journey = self
            .current
            .journey(journey)
            .ok_or_else(|| EnrollError::UnknownJourney(journey.to_owned()))?;
        if !matches!(journey.trigger, Trigger::Api) {
            return Err(EnrollError::NotApiTriggered(journey.id.clone()));
        }
        let mut cx = Cx::new(now);
        let version = self.current_version(journey).clone();
        self.try_enter(state, &version, None, properties, &mut cx);
        Ok(cx.effects)
    }

    /// A tick of a `schedule` journey's cron, for one customer: enters them if they are in
    /// the audience.
    pub fn on_schedule(
        &self,
        state: &mut CustomerState,
        journey: &str,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let mut cx = Cx::new(now);
        let Some(journey) = self.current.journey(journey) else {
            return cx.effects;
        };
        let Trigger::Schedule { audience, .. } = &journey.trigger else {
            return cx.effects;
        };
        let version = self.current_version(journey).clone();
        let empty = Map::new();
        let scope = scope(&version, &state.profile, &empty, &empty, now);
        let in_audience = match audience {
            Audience::Segment(name) => version
                .workspace
                .segments
                .get(name)
                .is_some_and(|s| s.condition.holds(&scope)),
            Audience::Where(condition) => condition.holds(&scope),
        };
        if in_audience {
            self.try_enter(state, &version, None, &empty, &mut cx);
        }
        cx.effects
    }

    /// `alias`: merges `other` into `state` for good. `other`'s events and traits join
    /// (this profile's traits win), its enrollments move over unless this profile is
    /// already in the same journey (with the same key), in which case they end as
    /// `exited`.
    pub fn merge(
        &self,
        state: &mut CustomerState,
        other: CustomerState,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let mut cx = Cx::new(now);
        let profile = &mut state.profile;
        Arc::make_mut(&mut profile.history).merge(&other.profile.history);
        for (key, value) in other.profile.traits {
            profile.traits.entry(key).or_insert(value);
        }
        for (segment, member) in other.profile.segments {
            profile.segments.entry(segment).or_insert(member);
        }
        profile.messages.extend(other.profile.messages);
        profile.messages.sort_by_key(|m| m.at);
        for enrollment in other.enrollments {
            let clash = enrollment.is_active()
                && state.enrollments.iter().any(|e| {
                    e.is_active() && e.journey == enrollment.journey && e.key == enrollment.key
                });
            state.enrollments.push(enrollment);
            if clash {
                let i = state.enrollments.len() - 1;
                self.end(state, i, Outcome::Exited, &mut cx);
            }
        }
        // Keep enrollments in the order they began, so "the latest enrollment in a
        // journey" means the same after a merge as before it.
        state.enrollments.sort_by_key(|e| e.entered_at);
        self.enter_by_segments(state, &Map::new(), &mut cx);
        cx.effects
    }

    fn route(&self, state: &mut CustomerState, event: &Event, cx: &mut Cx) {
        let active: Vec<usize> = (0..state.enrollments.len())
            .filter(|&i| state.enrollments[i].is_active())
            .collect();
        for i in active {
            let Some(version) = self.version(&state.enrollments[i]).cloned() else {
                continue;
            };
            let journey = &version.journey;
            let enrollment = &state.enrollments[i];
            if let Some(key) = key_value(journey.key_property(), &event.properties)
                && enrollment.key.as_deref() != Some(key_string(key).as_str())
            {
                continue;
            }
            let scope = scope(
                &version,
                &state.profile,
                &event.properties,
                &enrollment.trigger,
                cx.now,
            );
            if journey
                .goal
                .as_ref()
                .is_some_and(|goal| matches(goal, event, &scope))
            {
                self.end(state, i, Outcome::Converted, cx);
                continue;
            }
            if journey
                .exits
                .iter()
                .any(|exit| matches(exit, event, &scope))
            {
                self.end(state, i, Outcome::Exited, cx);
                continue;
            }
            let here = enrollment.step;
            let goto = match &journey.step(here).kind {
                StepKind::WaitFor {
                    event: awaited,
                    on_event,
                    ..
                } if matches(awaited, event, &scope) => Some(*on_event),
                _ => journey
                    .on
                    .iter()
                    .find(|back| back.applies_at(here) && matches(&back.event, event, &scope))
                    .map(|back| back.goto),
            };
            drop(scope);
            if let Some(goto) = goto {
                let enrollment = &mut state.enrollments[i];
                enrollment.event = event.properties.clone();
                enrollment.wake = None;
                cx.due = cx.now;
                self.run(state, i, &version, goto, cx);
            }
        }
    }

    fn enter_by_event(&self, state: &mut CustomerState, event: &Event, cx: &mut Cx) {
        for journey in &self.current.journeys {
            let Trigger::Event { event: wanted, key } = &journey.trigger else {
                continue;
            };
            let version = self.current_version(journey).clone();
            let scope = scope(
                &version,
                &state.profile,
                &event.properties,
                &event.properties,
                cx.now,
            );
            if !matches(wanted, event, &scope) {
                continue;
            }
            drop(scope);
            let key = key_value(key.as_deref(), &event.properties).map(key_string);
            self.try_enter(state, &version, key, &event.properties, cx);
        }
    }

    /// Enters segment-triggered journeys whose segment turned true (or is true at its
    /// first evaluation) for this customer.
    fn enter_by_segments(
        &self,
        state: &mut CustomerState,
        properties: &Map<String, Value>,
        cx: &mut Cx,
    ) {
        let mut turned_true: BTreeMap<&str, bool> = BTreeMap::new();
        for journey in &self.current.journeys {
            let Trigger::Segment { segment } = &journey.trigger else {
                continue;
            };
            if turned_true.contains_key(segment.as_str()) {
                continue;
            }
            let version = self.current_version(journey);
            let empty = Map::new();
            let holds = version.workspace.segments.get(segment).is_some_and(|s| {
                s.condition
                    .holds(&scope(version, &state.profile, &empty, &empty, cx.now))
            });
            let before = state.profile.segments.insert(segment.clone(), holds);
            turned_true.insert(segment, holds && before != Some(true));
        }
        for journey in &self.current.journeys {
            if let Trigger::Segment { segment } = &journey.trigger
                && turned_true.get(segment.as_str()) == Some(&true)
            {
                let version = self.current_version(journey).clone();
                self.try_enter(state, &version, None, properties, cx);
            }
        }
    }

    /// Enters the customer unless they are in the journey (with this key) already, or
    /// `reentry` forbids it; then runs the first steps.
    fn try_enter(
        &self,
        state: &mut CustomerState,
        version: &Version,
        key: Option<String>,
        trigger: &Map<String, Value>,
        cx: &mut Cx,
    ) -> bool {
        let journey = &version.journey;
        let mut last_exit = None;
        for e in state
            .enrollments
            .iter()
            .filter(|e| e.journey == journey.id && e.key == key)
        {
            match e.status {
                Status::Active => return false,
                Status::Ended { at, .. } => last_exit = last_exit.max(Some(at)),
            }
        }
        let allowed = match (journey.reentry, last_exit) {
            (_, None) | (Reentry::Always, _) => true,
            (Reentry::Never, Some(_)) => false,
            (Reentry::After(wait), Some(exit)) => cx.now - exit >= wait,
        };
        if !allowed {
            return false;
        }
        let profile = &mut state.profile;
        profile.enrollment_seq += 1;
        let enrollment = Enrollment {
            id: format!("{}:{}", profile.id, profile.enrollment_seq),
            journey: journey.id.clone(),
            version: journey.version.clone(),
            key,
            step: journey.start,
            status: Status::Active,
            wake: None,
            trigger: trigger.clone(),
            event: trigger.clone(),
            variant: None,
            control: in_holdout(&journey.id, &profile.id, journey.holdout),
            entered_at: cx.now,
            sends: 0,
        };
        cx.effects.push(Effect::Entered {
            customer: profile.id.clone(),
            enrollment: enrollment.id.clone(),
            journey: journey.id.clone(),
        });
        state.enrollments.push(enrollment);
        let i = state.enrollments.len() - 1;
        cx.due = cx.now;
        self.run(state, i, version, journey.start, cx);
        true
    }

    /// Goes to `next`, or completes the journey when there is none.
    fn follow(
        &self,
        state: &mut CustomerState,
        i: usize,
        version: &Version,
        next: Option<StepIdx>,
        cx: &mut Cx,
    ) {
        match next {
            Some(step) => self.run(state, i, version, step, cx),
            None => self.end(state, i, Outcome::Completed, cx),
        }
    }

    /// Runs steps from `step` until one waits or the journey ends; fails the enrollment,
    /// before running it, at the first step beyond [`MAX_INSTANT_STEPS`] that would not wait.
    fn run(
        &self,
        state: &mut CustomerState,
        i: usize,
        version: &Version,
        mut step: StepIdx,
        cx: &mut Cx,
    ) {
        let journey = &version.journey;
        let mut ran = 0;
        loop {
            let current = journey.step(step);
            if ran == MAX_INSTANT_STEPS && !self.waits(state, version, current, cx) {
                self.end(state, i, Outcome::Failed, cx);
                return;
            }
            ran += 1;
            let enrollment = &mut state.enrollments[i];
            enrollment.step = step;
            enrollment.wake = None;
            cx.effects.push(Effect::Transition {
                enrollment: enrollment.id.clone(),
                journey: journey.id.clone(),
            });
            let next = match &current.kind {
                StepKind::Send(send) => {
                    if !self.send(state, i, version, current, send, false, cx) {
                        return;
                    }
                    current.next
                }
                StepKind::Wait(duration) => {
                    enrollment.wake = Some(later_by(cx.now, *duration));
                    return;
                }
                StepKind::WaitUntil { time, timezone } => {
                    let tz = timezone.unwrap_or_else(|| {
                        customer_timezone(&state.profile.traits, &version.policy)
                    });
                    enrollment.wake = Some(next_local_time(cx.now, tz, *time));
                    return;
                }
                StepKind::WaitFor { timeout, .. } => {
                    enrollment.wake = timeout.map(|t| later_by(cx.now, t));
                    return;
                }
                StepKind::Branch { arms, otherwise } => {
                    let scope = scope(
                        version,
                        &state.profile,
                        &enrollment.event,
                        &enrollment.trigger,
                        cx.now,
                    );
                    Some(
                        arms.iter()
                            .find(|arm| arm.condition.holds(&scope))
                            .map_or(*otherwise, |arm| arm.goto),
                    )
                }
                StepKind::Split { variants } => {
                    let weights: Vec<u32> = variants.iter().map(|v| v.weight).collect();
                    // Assigned by the id the enrollment began under: a customer's variant
                    // is fixed forever, an alias merge that moved the enrollment too.
                    let customer = enrollment.began_under();
                    let variant =
                        &variants[split_variant(&journey.id, &current.id, customer, &weights)];
                    enrollment.variant = Some(variant.name.clone());
                    Some(variant.goto)
                }
                StepKind::Update { traits } => {
                    for (key, value) in traits {
                        let enrollment = &state.enrollments[i];
                        let value = match value {
                            TraitValue::Literal(v) => Some(v.clone()),
                            TraitValue::Computed(expr) => expr.eval(&scope(
                                version,
                                &state.profile,
                                &enrollment.event,
                                &enrollment.trigger,
                                cx.now,
                            )),
                        };
                        if let Some(value) = value {
                            state.profile.traits.insert(key.clone(), value);
                        }
                    }
                    current.next
                }
                StepKind::Exit { outcome } => {
                    self.end(state, i, *outcome, cx);
                    return;
                }
            };
            match next {
                Some(n) => step = n,
                None => {
                    self.end(state, i, Outcome::Completed, cx);
                    return;
                }
            }
        }
    }

    /// Whether running `step` now would make the enrollment wait rather than go on at
    /// this instant. Decided without running it, so that the runaway guard can fail the
    /// enrollment before a step past its limit has any effect.
    fn waits(&self, state: &CustomerState, version: &Version, step: &Step, cx: &Cx) -> bool {
        match &step.kind {
            StepKind::Wait(_) | StepKind::WaitUntil { .. } | StepKind::WaitFor { .. } => true,
            // As `send` decides: only a send that has a channel and is not expired defers.
            StepKind::Send(send) => {
                let policy = &version.policy;
                let traits = &state.profile.traits;
                let template = version.workspace.templates.get(&send.template);
                cx.now - cx.due <= policy.max_lateness
                    && resolve_channel(send, template, traits, policy, self.directory.as_ref())
                        .is_some()
                    && deferral(&state.profile, policy, send, cx).is_some()
            }
            _ => false,
        }
    }

    /// Executes a send step. Returns `false` when the send was deferred (quiet hours,
    /// best time): the enrollment then waits at this step with its timer set.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        state: &mut CustomerState,
        i: usize,
        version: &Version,
        step: &Step,
        send: &SendStep,
        deferred: bool,
        cx: &mut Cx,
    ) -> bool {
        let policy = &version.policy;
        let profile = &state.profile;
        let template = version.workspace.templates.get(&send.template);
        let channel = resolve_channel(
            send,
            template,
            &profile.traits,
            policy,
            self.directory.as_ref(),
        );
        let outcome = if cx.now - cx.due > policy.max_lateness {
            Err(SkipReason::Expired)
        } else if let Some((channel, _)) = &channel {
            if !deferred && let Some(at) = deferral(profile, policy, send, cx) {
                state.enrollments[i].wake = Some(at);
                return false;
            }
            if !send.transactional && over_frequency_cap(profile, policy, channel, cx.now) {
                Err(SkipReason::FrequencyCap)
            } else if !send.transactional && over_fatigue_cap(profile, policy, channel, cx.now) {
                Err(SkipReason::Fatigue)
            } else {
                Ok(channel.clone())
            }
        } else {
            Err(SkipReason::Unreachable)
        };

        let enrollment = &state.enrollments[i];
        let content = outcome.as_ref().ok().map(|channel| {
            let ctx = RenderContext {
                profile: &profile.traits,
                profile_id: &profile.id,
                event: &enrollment.event,
                trigger: &enrollment.trigger,
                journey_id: &version.journey.id,
                now: cx.now,
                timezone: customer_timezone(&profile.traits, policy),
            };
            template.map_or_else(
                || Err(format!("no template `{}`", send.template)),
                |t| t.render(channel, &ctx),
            )
        });
        let (outcome, content) = match (outcome, content) {
            (Err(reason), _) => (SendOutcome::Skipped(reason), BTreeMap::new()),
            (Ok(_), Some(Err(_)) | None) => (
                SendOutcome::Skipped(SkipReason::RenderFailed),
                BTreeMap::new(),
            ),
            (Ok(_), Some(Ok(content))) if enrollment.control => (SendOutcome::Suppressed, content),
            (Ok(channel), Some(Ok(content))) => {
                state.profile.messages.push(SentMessage {
                    at: cx.now,
                    channel,
                });
                (SendOutcome::Sent, content)
            }
        };
        let enrollment = &mut state.enrollments[i];
        enrollment.sends += 1;
        let (channel, address) = channel.unzip();
        cx.effects.push(Effect::Message(Message {
            idempotency_key: format!("{}:{}:{}", enrollment.id, step.id, enrollment.sends),
            at: cx.now,
            customer: state.profile.id.clone(),
            enrollment: enrollment.id.clone(),
            journey: version.journey.id.clone(),
            step: step.id.clone(),
            template: send.template.clone(),
            channel,
            address: address.flatten(),
            content,
            variant: enrollment.variant.clone(),
            transactional: send.transactional,
            outcome,
        }));
        true
    }

    fn end(&self, state: &mut CustomerState, i: usize, outcome: Outcome, cx: &mut Cx) {
        let enrollment = &mut state.enrollments[i];
        enrollment.status = Status::Ended {
            outcome,
            at: cx.now,
        };
        enrollment.wake = None;
        cx.effects.push(Effect::Ended {
            customer: state.profile.id.clone(),
            enrollment: enrollment.id.clone(),
            journey: enrollment.journey.clone(),
            outcome,
        });
    }
}

/// The instant being handled and what it produced.
struct Cx {
    now: DateTime<Utc>,
    /// When the work being done was due: a timer's time, else `now`. A send due longer
    /// ago than `max_lateness` is skipped as expired.
    due: DateTime<Utc>,
    /// The moment being handled as the customer saw it: an event's own time (which may
    /// be a little before `now` in the daemon), else `now`.
    instant: DateTime<Utc>,
    effects: Vec<Effect>,
}

impl Cx {
    fn new(now: DateTime<Utc>) -> Cx {
        Cx {
            now,
            due: now,
            instant: now,
            effects: Vec::new(),
        }
    }
}

/// When a send due now goes out instead (quiet hours, `at: best_time`), if later.
fn deferral(profile: &Profile, policy: &Policy, send: &SendStep, cx: &Cx) -> Option<DateTime<Utc>> {
    let tz = customer_timezone(&profile.traits, policy);
    let mut at = match send.at {
        SendAt::Now => cx.now,
        SendAt::BestTime => best_time(cx.now, cx.instant, tz, &profile.history),
    };
    if let (false, Some(quiet)) = (send.transactional, policy.quiet_hours) {
        at = after_quiet_hours(at, tz, quiet);
    }
    (at > cx.now).then_some(at)
}

fn scope<'a>(
    version: &Version,
    profile: &'a Profile,
    event: &'a Map<String, Value>,
    trigger: &'a Map<String, Value>,
    now: DateTime<Utc>,
) -> Scope<'a> {
    let history: Arc<dyn History> = profile.history.clone();
    Scope {
        profile: &profile.traits,
        event,
        trigger,
        now,
        timezone: customer_timezone(&profile.traits, &version.policy),
        history,
        segments: version.workspace.segments.clone(),
    }
}

fn matches(wanted: &EventMatch, event: &Event, scope: &Scope<'_>) -> bool {
    wanted.event == event.name && wanted.condition.as_ref().is_none_or(|c| c.holds(scope))
}

/// An event's value of a keyed journey's key `property`: `null` counts as no key, as an
/// absent property does.
fn key_value<'a>(property: Option<&str>, properties: &'a Map<String, Value>) -> Option<&'a Value> {
    properties.get(property?).filter(|value| !value.is_null())
}

/// A key property's value as an enrollment key: strings as they are, other values as JSON.
pub fn key_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
