//! The typed model of a loaded workspace.
//!
//! Everything here is parsed and validated once, at load: steps are addressed by index,
//! expressions are compiled CEL programs, templates are parsed Liquid. The runtime never
//! re-parses anything per customer.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, NaiveTime, TimeDelta, TimeZone};
use chrono_tz::Tz;

use crate::expr::Expr;
use crate::template::Template;

/// A position in a source file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

/// A loaded, valid journeys workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    /// Sorted by id.
    pub journeys: Vec<Arc<Journey>>,
    pub segments: Arc<Segments>,
    pub templates: Arc<BTreeMap<String, Template>>,
}

impl Workspace {
    pub fn journey(&self, id: &str) -> Option<&Arc<Journey>> {
        self.journeys.iter().find(|j| j.id == id)
    }
}

/// The named audience conditions of `segments.yaml`.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    pub by_name: BTreeMap<String, Segment>,
}

impl Segments {
    pub fn get(&self, name: &str) -> Option<&Segment> {
        self.by_name.get(name)
    }
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    pub description: Option<String>,
    pub condition: Expr,
    pub pos: Pos,
}

/// Index of a step in [`Journey::steps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepIdx(pub usize);

#[derive(Debug, Clone)]
pub struct Journey {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    /// The file it was loaded from.
    pub source: PathBuf,
    /// Content hash of the journey file and every template it uses: enrollments are pinned
    /// to it, so an edited journey is a new version.
    pub version: String,
    pub trigger: Trigger,
    pub reentry: Reentry,
    pub goal: Option<EventMatch>,
    pub exits: Vec<EventMatch>,
    /// Percent of entrants kept as a control group, 0 to 100.
    pub holdout: u8,
    pub policy: PolicyOverride,
    pub start: StepIdx,
    pub steps: Vec<Step>,
    pub on: Vec<BackStep>,
}

impl Journey {
    pub fn step(&self, idx: StepIdx) -> &Step {
        &self.steps[idx.0]
    }

    pub fn step_index(&self, id: &str) -> Option<StepIdx> {
        self.steps.iter().position(|s| s.id == id).map(StepIdx)
    }

    /// The property that keys enrollments (`trigger.key`), if any.
    pub fn key_property(&self) -> Option<&str> {
        match &self.trigger {
            Trigger::Event { key, .. } => key.as_deref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Trigger {
    Event {
        event: EventMatch,
        key: Option<String>,
    },
    Segment {
        segment: String,
    },
    Schedule {
        /// The 5-field cron expression as written.
        cron: String,
        schedule: Box<CronSchedule>,
        timezone: Tz,
        audience: Audience,
    },
    Api,
}

/// A standard 5-field cron schedule.
///
/// Standard (Vixie) cron matches a day when its day of month *or* its weekday matches, if
/// both fields are restricted (neither starts with `*`); the `cron` crate requires both.
/// Such a schedule is kept as two, one restricting each day field, and ticks whenever
/// either does.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// Every tick, or, when both day fields are restricted, the ticks on matching days of
    /// the month.
    first: cron::Schedule,
    /// When both day fields are restricted: the ticks on matching weekdays.
    weekdays: Option<cron::Schedule>,
}

impl CronSchedule {
    pub(crate) fn new(first: cron::Schedule, weekdays: Option<cron::Schedule>) -> CronSchedule {
        CronSchedule { first, weekdays }
    }

    /// The ticks strictly after `after`, earliest first, each once.
    pub fn after<Z: TimeZone>(&self, after: &DateTime<Z>) -> CronTicks<'_, Z> {
        CronTicks {
            first: self.first.after(after).peekable(),
            weekdays: self.weekdays.as_ref().map(|s| s.after(after).peekable()),
        }
    }
}

/// The ticks of a [`CronSchedule`]: its schedules' ticks merged in order.
pub struct CronTicks<'a, Z: TimeZone> {
    first: Peekable<cron::ScheduleIterator<'a, Z>>,
    weekdays: Option<Peekable<cron::ScheduleIterator<'a, Z>>>,
}

impl<Z: TimeZone> Iterator for CronTicks<'_, Z> {
    type Item = DateTime<Z>;

    fn next(&mut self) -> Option<DateTime<Z>> {
        let Some(weekdays) = &mut self.weekdays else {
            return self.first.next();
        };
        match (self.first.peek(), weekdays.peek()) {
            (Some(a), Some(b)) if b < a => weekdays.next(),
            (Some(a), Some(b)) => {
                // A day that matches both fields ticks once.
                if a == b {
                    weekdays.next();
                }
                self.first.next()
            }
            (Some(_), None) => self.first.next(),
            (None, _) => weekdays.next(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Audience {
    Segment(String),
    Where(Expr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reentry {
    Never,
    Always,
    /// At least this long since the last exit.
    After(TimeDelta),
}

/// An event name with an optional condition over it.
#[derive(Debug, Clone)]
pub struct EventMatch {
    pub event: String,
    pub condition: Option<Expr>,
    pub pos: Pos,
}

/// A journey-wide `on:` transition.
#[derive(Debug, Clone)]
pub struct BackStep {
    pub event: EventMatch,
    /// Only from these steps; `None` means from any step.
    pub from: Option<Vec<StepIdx>>,
    pub goto: StepIdx,
}

impl BackStep {
    pub fn applies_at(&self, step: StepIdx) -> bool {
        self.from.as_ref().is_none_or(|from| from.contains(&step))
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub pos: Pos,
    pub stage: Option<String>,
    pub kind: StepKind,
    /// Where to go after this step; `None` ends the journey as `completed`. Always `None`
    /// for `branch`, `split`, `wait_for` and `exit` (an exit's `next` is never followed).
    pub next: Option<StepIdx>,
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Send(SendStep),
    Wait(TimeDelta),
    WaitUntil {
        time: NaiveTime,
        /// `None`: the customer's time zone.
        timezone: Option<Tz>,
    },
    WaitFor {
        event: EventMatch,
        /// `None`: wait for the event with no time limit.
        timeout: Option<TimeDelta>,
        on_event: StepIdx,
        /// Present exactly when `timeout` is.
        on_timeout: Option<StepIdx>,
    },
    Branch {
        arms: Vec<BranchArm>,
        otherwise: StepIdx,
    },
    Split {
        variants: Vec<Variant>,
    },
    Update {
        traits: Vec<(String, TraitValue)>,
    },
    Exit {
        outcome: Outcome,
    },
}

impl StepKind {
    /// The kind key as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Send(_) => "send",
            StepKind::Wait(_) | StepKind::WaitUntil { .. } => "wait",
            StepKind::WaitFor { .. } => "wait_for",
            StepKind::Branch { .. } => "branch",
            StepKind::Split { .. } => "split",
            StepKind::Update { .. } => "update",
            StepKind::Exit { .. } => "exit",
        }
    }

    /// Whether running this step always stops to wait for time or an event.
    pub fn waits(&self) -> bool {
        matches!(
            self,
            StepKind::Wait(_) | StepKind::WaitUntil { .. } | StepKind::WaitFor { .. }
        )
    }
}

#[derive(Debug, Clone)]
pub struct SendStep {
    pub channel: ChannelChoice,
    pub template: String,
    pub fallback: Vec<String>,
    pub transactional: bool,
    pub at: SendAt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelChoice {
    /// `send: preferred`: the customer's `preferred_channel`, else the policy's order.
    Preferred,
    Named(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendAt {
    Now,
    BestTime,
}

#[derive(Debug, Clone)]
pub struct BranchArm {
    pub condition: Expr,
    pub goto: StepIdx,
}

#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    pub weight: u32,
    pub goto: StepIdx,
}

#[derive(Debug, Clone)]
pub enum TraitValue {
    Literal(serde_json::Value),
    /// A string value that started with `=`.
    Computed(Expr),
}

/// How an enrollment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Completed,
    Converted,
    Exited,
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Completed,
        Outcome::Converted,
        Outcome::Exited,
        Outcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Converted => "converted",
            Outcome::Exited => "exited",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The send policy in force for a journey (section 5 of the language).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub timezone: Tz,
    pub channels: Vec<String>,
    pub quiet_hours: Option<QuietHours>,
    pub frequency_caps: Vec<Cap>,
    pub fatigue: Option<Fatigue>,
    pub max_lateness: TimeDelta,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            timezone: Tz::UTC,
            channels: vec!["email".to_owned(), "sms".to_owned()],
            quiet_hours: None,
            frequency_caps: Vec::new(),
            fatigue: None,
            max_lateness: TimeDelta::hours(24),
        }
    }
}

impl Policy {
    /// This policy with a journey's (or a test's) overrides applied on top.
    pub fn with(&self, o: &PolicyOverride) -> Policy {
        Policy {
            timezone: o.timezone.unwrap_or(self.timezone),
            channels: o.channels.clone().unwrap_or_else(|| self.channels.clone()),
            quiet_hours: o.quiet_hours.or(self.quiet_hours),
            frequency_caps: o
                .frequency_caps
                .clone()
                .unwrap_or_else(|| self.frequency_caps.clone()),
            fatigue: o.fatigue.clone().or_else(|| self.fatigue.clone()),
            max_lateness: o.max_lateness.unwrap_or(self.max_lateness),
        }
    }
}

/// A `policy:` section: each key present overrides the one below it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyOverride {
    pub timezone: Option<Tz>,
    pub channels: Option<Vec<String>>,
    pub quiet_hours: Option<QuietHours>,
    pub frequency_caps: Option<Vec<Cap>>,
    pub fatigue: Option<Fatigue>,
    pub max_lateness: Option<TimeDelta>,
}

/// `"21:00-09:00"`: local times from `start` (inclusive) to `end` (exclusive); wraps
/// past midnight when `end <= start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl QuietHours {
    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.start <= self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

/// `{max: 3, per: 7d, channel: email}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub max: u32,
    pub per: TimeDelta,
    /// `None`: counts and limits every channel.
    pub channel: Option<String>,
}

/// `{unopened: 3, cap: {max: 1, per: 7d}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatigue {
    pub unopened: u32,
    pub cap: Cap,
}

/// The address trait a channel reaches a customer through, by the channel's kind:
/// `None` for webhooks and other channels that need no address.
pub fn address_trait(channel_kind: &str) -> Option<&'static str> {
    match channel_kind {
        "email" | "smtp" => Some("email"),
        "sms" | "whatsapp" | "twilio" | "smsru" | "smsc" => Some("phone"),
        "telegram" => Some("telegram_chat_id"),
        "vk" => Some("vk_user_id"),
        "viber" => Some("viber_id"),
        "push" | "fcm" => Some("push_token"),
        _ => None,
    }
}
