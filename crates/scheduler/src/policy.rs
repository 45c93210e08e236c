//! The send policy: which channel, when, and whether at all.

use chrono::{DateTime, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};
use waymark_journey::{Cap, ChannelChoice, Policy, QuietHours, SendStep, Template, window_start};

use crate::history::{Event, EventLog};
use crate::state::Profile;

/// The channels there are, and which profile trait holds a customer's address on each.
pub trait ChannelDirectory: Send + Sync {
    /// Whether a channel of this name exists (the daemon has it configured).
    ///
    /// # Contract
    /// A channel that does not exist reaches nobody: `send: preferred`, `fallback` and a
    /// named channel all pass over it as unreachable, so a message is never handed to a
    /// channel nothing can deliver on.
    fn exists(&self, channel: &str) -> bool;

    /// `None`: the channel needs no address (a webhook). Asked only of channels that
    /// [exist](ChannelDirectory::exists).
    fn address_trait(&self, channel: &str) -> Option<&str>;
}

/// Channels known by their conventional names: `email`, `sms`, `telegram`, ...; any
/// other name is taken for a webhook, which needs no address. This is how `waymark test`
/// sees channels; the daemon uses its configured kinds instead.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConventionalChannels;

impl ChannelDirectory for ConventionalChannels {
    /// Every name is a channel: `waymark test` has no daemon config to check against.
    fn exists(&self, _channel: &str) -> bool {
        true
    }

    fn address_trait(&self, channel: &str) -> Option<&str> {
        waymark_journey::address_trait(channel)
    }
}

/// The customer's time zone: `profile.timezone` when it names a zone, else the policy's.
pub fn customer_timezone(traits: &Map<String, Value>, policy: &Policy) -> Tz {
    traits
        .get("timezone")
        .and_then(Value::as_str)
        .and_then(|name| name.parse().ok())
        .unwrap_or(policy.timezone)
}

/// Picks the channel for a send: `(channel, address)`, or `None` when nothing is
/// reachable. Transactional sends ignore `unsubscribed`; nothing reaches an address the
/// provider reported gone (`unreachable`), nor a channel that does not exist.
///
/// The customer's own `preferred_channel` counts only where `template` has a part for
/// it: the check guarantees parts for the policy's channels, not for whatever a profile
/// names, and a customer who prefers a channel the message was not written for gets it
/// on the policy's first reachable channel rather than not at all.
pub fn resolve_channel(
    send: &SendStep,
    template: Option<&Template>,
    traits: &Map<String, Value>,
    policy: &Policy,
    directory: &dyn ChannelDirectory,
) -> Option<(String, Option<String>)> {
    let reach = |channel: &str| {
        reachable(channel, traits, send.transactional, directory)
            .map(|addr| (channel.to_owned(), addr))
    };
    match &send.channel {
        ChannelChoice::Preferred => traits
            .get("preferred_channel")
            .and_then(Value::as_str)
            .filter(|channel| template.is_none_or(|t| t.has_part(channel)))
            .and_then(reach)
            .or_else(|| policy.channels.iter().find_map(|c| reach(c))),
        ChannelChoice::Named(channel) => {
            reach(channel).or_else(|| send.fallback.iter().find_map(|c| reach(c)))
        }
    }
}

/// `Some(address)` when `channel` reaches the customer.
fn reachable(
    channel: &str,
    traits: &Map<String, Value>,
    transactional: bool,
    directory: &dyn ChannelDirectory,
) -> Option<Option<String>> {
    if !directory.exists(channel) || names_channel(traits.get("unreachable"), channel) {
        return None;
    }
    if !transactional && names_channel(traits.get("unsubscribed"), channel) {
        return None;
    }
    match directory.address_trait(channel) {
        None => Some(None),
        Some(field) => address(traits.get(field)).map(Some),
    }
}

fn address(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether a trait (`"all"`, a channel name, or a list of them) names `channel`.
fn names_channel(value: Option<&Value>, channel: &str) -> bool {
    match value {
        Some(Value::String(s)) => s == "all" || s == channel,
        Some(Value::Array(items)) => items
            .iter()
            .any(|v| v.as_str().is_some_and(|s| s == "all" || s == channel)),
        _ => false,
    }
}

/// Adds `channel` to the customer's `unsubscribed` list (the `unsubscribed` event).
/// `all` makes the trait the string `all`, as the language writes it, and a channel
/// unsubscribed later leaves it so.
fn unsubscribe(traits: &mut Map<String, Value>, channel: &str) {
    if channel == "all" {
        traits.insert("unsubscribed".to_owned(), Value::String("all".to_owned()));
    } else {
        add_to_list(traits, "unsubscribed", channel);
    }
}

/// What an event does to the traits on its own, before any journey sees it: an
/// `unsubscribed` event with a `channel` unsubscribes the customer from it. This holds
/// for an event from a scenario test's `history:` too, which no journey sees.
pub fn apply_to_traits(traits: &mut Map<String, Value>, event: &Event) {
    if event.name == "unsubscribed"
        && let Some(channel) = event.properties.get("channel").and_then(Value::as_str)
    {
        unsubscribe(traits, channel);
    }
}

/// Marks the customer's address on `channel` as gone for good (a provider's answer).
pub fn mark_unreachable(traits: &mut Map<String, Value>, channel: &str) {
    add_to_list(traits, "unreachable", channel);
}

fn add_to_list(traits: &mut Map<String, Value>, key: &str, channel: &str) {
    if names_channel(traits.get(key), channel) {
        return;
    }
    let mut list = match traits.remove(key) {
        Some(Value::Array(items)) => items,
        Some(Value::String(s)) => vec![Value::String(s)],
        _ => Vec::new(),
    };
    list.push(Value::String(channel.to_owned()));
    traits.insert(key.to_owned(), Value::Array(list));
}

/// `at` plus `d`, saturating at the ends of time: a timer past the last representable
/// instant is set there, which no clock reaches, so it never fires. The checker keeps
/// durations to a century, so only a journey built in code gets near the edge; this
/// keeps such a journey from taking down the daemon.
pub fn later_by(at: DateTime<Utc>, d: TimeDelta) -> DateTime<Utc> {
    at.checked_add_signed(d)
        .unwrap_or(if d < TimeDelta::zero() {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
}

/// The UTC instant of a local date and time, DST-correct: an ambiguous time (clocks
/// going back) is its first occurrence; a time in a gap (clocks going forward) is the
/// first instant after the gap.
pub fn local_to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    waymark_journey::first_instant_at_or_after(&tz, local)
        .map_or_else(|| local.and_utc(), |at| at.with_timezone(&Utc))
}

/// The next instant after `now` when the local clock in `tz` shows `time`: today if still
/// ahead, else tomorrow.
pub fn next_local_time(now: DateTime<Utc>, tz: Tz, time: NaiveTime) -> DateTime<Utc> {
    let today = now.with_timezone(&tz).date_naive();
    let at = local_to_utc(tz, today.and_time(time));
    if at > now {
        at
    } else {
        local_to_utc(tz, next_day(today).and_time(time))
    }
}

fn next_day(date: NaiveDate) -> NaiveDate {
    date.checked_add_days(Days::new(1)).unwrap_or(date)
}

/// `at`, or the end of the quiet window when `at` falls inside it.
pub fn after_quiet_hours(at: DateTime<Utc>, tz: Tz, quiet: QuietHours) -> DateTime<Utc> {
    let local = at.with_timezone(&tz);
    if !quiet.contains(local.time()) {
        return at;
    }
    let date = local.date_naive();
    let end_today = quiet.end > local.time();
    let end_date = if end_today { date } else { next_day(date) };
    local_to_utc(tz, end_date.and_time(quiet.end))
}

/// The best hour to reach a customer: the local hour of day in which their events of the
/// last 90 days before `instant` (the moment being handled: the triggering event's time,
/// so that it and what came with it do not count) were most frequent, ties to the earliest.
/// Returns the send time: `now` if that hour is under way or there is no such event, else
/// the next start of that hour.
pub fn best_time(
    now: DateTime<Utc>,
    instant: DateTime<Utc>,
    tz: Tz,
    history: &EventLog,
) -> DateTime<Utc> {
    let mut per_hour = [0_u32; 24];
    let since = window_start(instant, TimeDelta::days(90)).unwrap_or(DateTime::<Utc>::MIN_UTC);
    for event in history.between(since, instant) {
        per_hour[event.at.with_timezone(&tz).hour() as usize] += 1;
    }
    let Some((hour, _)) = per_hour
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .max_by(|(ha, a), (hb, b)| a.cmp(b).then(hb.cmp(ha)))
    else {
        return now;
    };
    let local = now.with_timezone(&tz);
    if local.hour() as usize == hour {
        return now;
    }
    let start = NaiveTime::from_hms_opt(u32::try_from(hour).unwrap_or(0), 0, 0).unwrap_or_default();
    next_local_time(now, tz, start)
}

/// How many messages (on `channel`, when the cap names one) went out in the trailing
/// window `(now - per, now]`.
fn sent_within(profile: &Profile, cap: &Cap, channel: Option<&str>, now: DateTime<Utc>) -> usize {
    let from = window_start(now, cap.per);
    profile
        .messages
        .iter()
        .filter(|m| from.is_none_or(|from| m.at > from) && m.at <= now)
        .filter(|m| channel.is_none_or(|c| m.channel == c))
        .count()
}

/// Whether a frequency cap of the policy stops a send on `channel` now.
pub fn over_frequency_cap(
    profile: &Profile,
    policy: &Policy,
    channel: &str,
    now: DateTime<Utc>,
) -> bool {
    policy.frequency_caps.iter().any(|cap| match &cap.channel {
        None => sent_within(profile, cap, None, now) >= cap.max as usize,
        Some(c) if c == channel => sent_within(profile, cap, Some(c), now) >= cap.max as usize,
        Some(_) => false,
    })
}

/// Whether fatigue stops a send on `channel` now: the customer's last `unopened`
/// messages on it got no `message_opened`/`message_clicked` with that channel, and the
/// stricter cap is reached on that channel.
pub fn over_fatigue_cap(
    profile: &Profile,
    policy: &Policy,
    channel: &str,
    now: DateTime<Utc>,
) -> bool {
    let Some(fatigue) = &policy.fatigue else {
        return false;
    };
    let n = fatigue.unopened as usize;
    if n == 0 {
        return false;
    }
    let Some(nth_last) = profile
        .messages
        .iter()
        .rev()
        .filter(|m| m.channel == channel)
        .nth(n - 1)
    else {
        return false;
    };
    let engaged_since = ["message_opened", "message_clicked"].iter().any(|name| {
        profile
            .history
            .named_since(name, Some(nth_last.at))
            .any(|e| e.properties.get("channel").and_then(Value::as_str) == Some(channel))
    });
    !engaged_since
        && sent_within(profile, &fatigue.cap, Some(channel), now) >= fatigue.cap.max as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    /// A daemon that configured only these channels.
    struct Configured(&'static [&'static str]);

    impl ChannelDirectory for Configured {
        fn exists(&self, channel: &str) -> bool {
            self.0.contains(&channel)
        }

        fn address_trait(&self, channel: &str) -> Option<&str> {
            waymark_journey::address_trait(channel)
        }
    }

    /// A channel the daemon lacks is never picked, however reachable the customer's
    /// address for it: `preferred` goes down the policy's order, `fallback` to the next.
    #[test]
    fn a_channel_that_does_not_exist_reaches_nobody() {
        let directory = Configured(&["email"]);
        let policy = Policy {
            channels: vec!["telegram".to_owned(), "email".to_owned()],
            ..Policy::default()
        };
        let send = |channel: ChannelChoice, fallback: &[&str]| SendStep {
            channel,
            template: "hello".to_owned(),
            fallback: fallback.iter().map(|c| (*c).to_owned()).collect(),
            transactional: false,
            at: waymark_journey::SendAt::Now,
        };
        let ann = serde_json::json!({"telegram_chat_id": "501", "email": "ann@example.com"});
        let ann = ann.as_object().unwrap();
        let email = Some(("email".to_owned(), Some("ann@example.com".to_owned())));
        let pick = |send: &SendStep, traits: &Map<String, Value>| {
            resolve_channel(send, None, traits, &policy, &directory)
        };

        assert_eq!(pick(&send(ChannelChoice::Preferred, &[]), ann), email);
        let mut prefers_telegram = ann.clone();
        prefers_telegram.insert("preferred_channel".to_owned(), "telegram".into());
        assert_eq!(
            pick(&send(ChannelChoice::Preferred, &[]), &prefers_telegram),
            email
        );
        let telegram = ChannelChoice::Named("telegram".to_owned());
        assert_eq!(pick(&send(telegram.clone(), &["sms", "email"]), ann), email);
        assert_eq!(pick(&send(telegram, &[]), ann), None);
        // The same sends where every channel exists, as `waymark test` sees them.
        let telegram = Some(("telegram".to_owned(), Some("501".to_owned())));
        assert_eq!(
            resolve_channel(
                &send(ChannelChoice::Preferred, &[]),
                None,
                ann,
                &policy,
                &ConventionalChannels
            ),
            telegram
        );
    }

    #[test]
    fn quiet_hours_defer_to_the_local_end_of_the_window() {
        let quiet = QuietHours {
            start: hm(21, 0),
            end: hm(9, 0),
        };
        let moscow = Tz::Europe__Moscow;
        // 22:30 in Moscow: next 09:00 Moscow is 06:00 UTC the next day.
        assert_eq!(
            after_quiet_hours(utc("2026-03-02T19:30:00Z"), moscow, quiet),
            utc("2026-03-03T06:00:00Z")
        );
        // 03:00 in Moscow: 09:00 the same day.
        assert_eq!(
            after_quiet_hours(utc("2026-03-03T00:00:00Z"), moscow, quiet),
            utc("2026-03-03T06:00:00Z")
        );
        // 12:00 in Moscow: not quiet.
        assert_eq!(
            after_quiet_hours(utc("2026-03-03T09:00:00Z"), moscow, quiet),
            utc("2026-03-03T09:00:00Z")
        );
    }

    #[test]
    fn local_times_follow_daylight_saving() {
        let berlin = Tz::Europe__Berlin;
        // 2026-03-29: clocks go 02:00 -> 03:00 in Berlin. 02:30 does not exist.
        let t = next_local_time(utc("2026-03-28T12:00:00Z"), berlin, hm(2, 30));
        assert_eq!(t, utc("2026-03-29T01:00:00Z"));
        // 10:00 before and after the change are an hour apart in UTC.
        assert_eq!(
            next_local_time(utc("2026-03-28T12:00:00Z"), berlin, hm(10, 0)),
            utc("2026-03-29T08:00:00Z")
        );
        assert_eq!(
            next_local_time(utc("2026-03-27T12:00:00Z"), berlin, hm(10, 0)),
            utc("2026-03-28T09:00:00Z")
        );
    }

    #[test]
    fn wait_until_a_time_already_passed_today_means_tomorrow() {
        let t = next_local_time(utc("2026-03-02T12:00:00Z"), Tz::Europe__Moscow, hm(10, 0));
        assert_eq!(t, utc("2026-03-03T07:00:00Z"));
        let t = next_local_time(utc("2026-03-02T05:00:00Z"), Tz::Europe__Moscow, hm(10, 0));
        assert_eq!(t, utc("2026-03-02T07:00:00Z"));
    }

    #[test]
    fn unsubscribing_from_all_makes_the_trait_the_string_all() {
        let mut traits = Map::new();
        unsubscribe(&mut traits, "email");
        unsubscribe(&mut traits, "email");
        assert_eq!(traits["unsubscribed"], serde_json::json!(["email"]));
        unsubscribe(&mut traits, "all");
        assert_eq!(traits["unsubscribed"], "all");
        unsubscribe(&mut traits, "sms");
        assert_eq!(traits["unsubscribed"], "all", "a later channel keeps `all`");
        assert!(names_channel(traits.get("unsubscribed"), "telegram"));
    }

    #[test]
    fn only_an_unsubscribed_event_with_a_channel_changes_the_traits() {
        let event = |name: &str, properties: Value| Event {
            name: name.to_owned(),
            at: utc("2026-03-02T10:00:00Z"),
            properties: properties.as_object().cloned().unwrap(),
        };
        let mut traits = Map::new();
        apply_to_traits(&mut traits, &event("unsubscribed", serde_json::json!({})));
        apply_to_traits(
            &mut traits,
            &event("opened", serde_json::json!({"channel": "sms"})),
        );
        assert!(traits.is_empty());
        apply_to_traits(
            &mut traits,
            &event("unsubscribed", serde_json::json!({"channel": "sms"})),
        );
        assert_eq!(traits["unsubscribed"], serde_json::json!(["sms"]));
    }
}
