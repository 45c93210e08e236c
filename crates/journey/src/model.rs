//! The typed model of a loaded workspace.
//!
//! Everything here is parsed and validated once, at load: steps are addressed by index,
//! expressions are compiled CEL programs, templates are parsed Liquid. The runtime never
//! re-parses anything per customer.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Utc};
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

    /// The ticks strictly after `after`, earliest first, each once, in `after`'s time zone.
    ///
    /// As in standard (Vixie) cron, a tick whose local time is skipped when the clocks go
    /// forward fires at the first instant after the gap (ticks skipped together fire
    /// once), and a tick whose local time repeats when they go back fires at its first
    /// occurrence only.
    pub fn after<Z: TimeZone>(&self, after: &DateTime<Z>) -> CronTicks<'_, Z> {
        // The `cron` crate walks the wall clock of the zone it is given but drops the
        // times a gap skips; walked in UTC, which has no gaps, it yields every local time,
        // and each is placed in the real zone here.
        let wall = after.naive_local().and_utc();
        CronTicks {
            zone: after.timezone(),
            last: after.clone(),
            first: self.first.after(&wall).peekable(),
            weekdays: self.weekdays.as_ref().map(|s| s.after(&wall).peekable()),
        }
    }
}

/// The ticks of a [`CronSchedule`]: its schedules' ticks merged in order, in a time zone.
pub struct CronTicks<'a, Z: TimeZone> {
    zone: Z,
    /// The tick returned last, or the instant the ticks start after.
    last: DateTime<Z>,
    /// Local times, as if the zone's wall clock were UTC.
    first: Peekable<cron::ScheduleIterator<'a, Utc>>,
    weekdays: Option<Peekable<cron::ScheduleIterator<'a, Utc>>>,
}

impl<Z: TimeZone> CronTicks<'_, Z> {
    /// The next local time either schedule matches, a day that matches both once.
    fn next_local(&mut self) -> Option<NaiveDateTime> {
        let Some(weekdays) = &mut self.weekdays else {
            return self.first.next().map(|t| t.naive_utc());
        };
        let next = match (self.first.peek(), weekdays.peek()) {
            (Some(a), Some(b)) if b < a => weekdays.next(),
            (Some(a), Some(b)) => {
                if a == b {
                    weekdays.next();
                }
                self.first.next()
            }
            (Some(_), None) => self.first.next(),
            (None, _) => weekdays.next(),
        };
        next.map(|t| t.naive_utc())
    }
}

impl<Z: TimeZone> Iterator for CronTicks<'_, Z> {
    type Item = DateTime<Z>;

    fn next(&mut self) -> Option<DateTime<Z>> {
        loop {
            let local = self.next_local()?;
            // Local times map to instants in order, but several may map to one (a gap)
            // and one may map to an instant already passed (a repeated hour entered on
            // its second pass): each instant ticks once, after the start.
            let Some(at) = first_instant_at_or_after(&self.zone, local) else {
                continue;
            };
            if at > self.last {
                self.last = at.clone();
                return Some(at);
            }
        }
    }
}

/// The first instant whose local time in `zone` is `local` or, when `local` falls in a
/// gap (clocks going forward), the first instant after the gap, to the minute. An
/// ambiguous time is its first occurrence. Cron ticks and the engine's local times
/// (`wait: {until}`, quiet hours) are all placed by it.
pub fn first_instant_at_or_after<Z: TimeZone>(
    zone: &Z,
    local: NaiveDateTime,
) -> Option<DateTime<Z>> {
    // Gaps are an hour or two; one of a whole day (Samoa, 2011) is the longest there is.
    const LONGEST_GAP_MINUTES: i64 = 26 * 60;
    let mut candidate = local;
    for _ in 0..=LONGEST_GAP_MINUTES {
        if let Some(at) = zone.from_local_datetime(&candidate).earliest() {
            return Some(at);
        }
        candidate = candidate.checked_add_signed(TimeDelta::minutes(1))?;
    }
    None
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
            quiet_hours: o.quiet_hours.over(self.quiet_hours.as_ref()),
            frequency_caps: o
                .frequency_caps
                .over(Some(&self.frequency_caps))
                .unwrap_or_default(),
            fatigue: o.fatigue.over(self.fatigue.as_ref()),
            max_lateness: o.max_lateness.unwrap_or(self.max_lateness),
        }
    }
}

/// A `policy:` section: each key present overrides the one below it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyOverride {
    pub timezone: Option<Tz>,
    pub channels: Option<Vec<String>>,
    pub quiet_hours: Setting<QuietHours>,
    pub frequency_caps: Setting<Vec<Cap>>,
    pub fatigue: Setting<Fatigue>,
    pub max_lateness: Option<TimeDelta>,
}

/// One key of a `policy:` section whose default is none. Absent, the policy below decides;
/// `none` switches it off even when the policy below (the daemon's) has it on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Setting<T> {
    /// The key is absent.
    #[default]
    Unset,
    /// `none` (or an empty value).
    Off,
    Set(T),
}

impl<T: Clone> Setting<T> {
    /// The value in force with this setting laid over `below`'s.
    pub fn over(&self, below: Option<&T>) -> Option<T> {
        match self {
            Setting::Unset => below.cloned(),
            Setting::Off => None,
            Setting::Set(value) => Some(value.clone()),
        }
    }
}

impl<T> From<Option<T>> for Setting<T> {
    /// `None` leaves the key unset, as an absent key does.
    fn from(value: Option<T>) -> Self {
        value.map_or(Setting::Unset, Setting::Set)
    }
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

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use crate::journey_file::cron_schedule;

    /// The first `n` ticks of `cron` in `zone` strictly after `after`, in UTC.
    fn ticks(cron: &str, zone: chrono_tz::Tz, after: &str, n: usize) -> Vec<String> {
        let after = chrono::DateTime::parse_from_rfc3339(after)
            .unwrap()
            .with_timezone(&zone);
        cron_schedule(cron)
            .unwrap()
            .after(&after)
            .take(n)
            .map(|t| t.with_timezone(&Utc).format("%m-%d %H:%MZ").to_string())
            .collect()
    }

    const BERLIN: chrono_tz::Tz = chrono_tz::Tz::Europe__Berlin;

    #[test]
    fn a_tick_in_a_dst_gap_fires_right_after_it() {
        // 2026-03-29: Berlin's clocks go from 02:00 CET to 03:00 CEST; 02:30 never shows.
        assert_eq!(
            ticks("30 2 * * *", BERLIN, "2026-03-28T00:00:00Z", 3),
            ["03-28 01:30Z", "03-29 01:00Z", "03-30 00:30Z"]
        );
        // Ticks skipped together fire once, and the next one is not held back.
        assert_eq!(
            ticks("*/30 * * * *", BERLIN, "2026-03-29T00:00:00Z", 3),
            ["03-29 00:30Z", "03-29 01:00Z", "03-29 01:30Z"]
        );
        // So does a day matched by both restricted day fields: the 29th is a Sunday.
        assert_eq!(
            ticks("30 2 29 * 0", BERLIN, "2026-03-28T00:00:00Z", 2),
            ["03-29 01:00Z", "04-05 00:30Z"]
        );
        // Started from the instant the gap tick fired, the next is the next day's.
        assert_eq!(
            ticks("30 2 * * *", BERLIN, "2026-03-29T01:00:00Z", 1),
            ["03-30 00:30Z"]
        );
    }

    #[test]
    fn a_tick_in_a_repeated_hour_fires_once() {
        // 2026-10-25: Berlin's clocks go from 03:00 CEST back to 02:00 CET; 02:30 shows
        // twice, at 00:30Z and 01:30Z.
        assert_eq!(
            ticks("30 2 * * *", BERLIN, "2026-10-24T12:00:00Z", 2),
            ["10-25 00:30Z", "10-26 01:30Z"]
        );
        // Started inside the repeat, after the first 02:30, not again at the second.
        assert_eq!(
            ticks("30 2 * * *", BERLIN, "2026-10-25T01:10:00Z", 1),
            ["10-26 01:30Z"]
        );
        // An hourly schedule keeps ticking through the repeated hour, once per local time.
        assert_eq!(
            ticks("0 * * * *", BERLIN, "2026-10-24T23:30:00Z", 3),
            ["10-25 00:00Z", "10-25 02:00Z", "10-25 03:00Z"]
        );
    }
}
