//! Counters for `GET /metrics`, in the Prometheus text format.
//!
//! A handful of labelled counters do not justify a metrics framework: plain atomics and
//! a mutex-guarded map, rendered by hand.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use waymark_scheduler::{Effect, SendOutcome};
use waymark_store::Depths;

#[derive(Debug, Default)]
pub struct Metrics {
    pub events_ingested: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub transitions: AtomicU64,
    pub entered: AtomicU64,
    pub timers_fired: AtomicU64,
    /// The latest timer's lateness (fired minus due), in milliseconds.
    pub timer_lag_ms: AtomicU64,
    /// Commits refused because another writer got there first (then retried).
    pub conflicts: AtomicU64,
    labelled: Mutex<BTreeMap<(&'static str, String, String), u64>>,
}

impl Metrics {
    fn add(&self, name: &'static str, a: &str, b: &str) {
        let mut map = self
            .labelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry((name, a.to_owned(), b.to_owned())).or_default() += 1;
    }

    /// Counts what one input did.
    pub fn effects(&self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Transition { .. } => {
                    self.transitions.fetch_add(1, Ordering::Relaxed);
                }
                Effect::Entered { .. } => {
                    self.entered.fetch_add(1, Ordering::Relaxed);
                }
                Effect::Ended {
                    journey, outcome, ..
                } => {
                    self.add("ended", journey, outcome.as_str());
                }
                Effect::Message(m) => {
                    let outcome = match m.outcome {
                        SendOutcome::Sent => "sent",
                        SendOutcome::Skipped(reason) => reason.as_str(),
                        SendOutcome::Suppressed => "suppressed",
                    };
                    self.add("messages", m.channel.as_deref().unwrap_or("none"), outcome);
                }
            }
        }
    }

    /// Counts a delivery attempt's result: `delivered`, `retry` or `failed`.
    pub fn delivery(&self, channel: &str, result: &str) {
        self.add("deliveries", channel, result);
    }

    pub fn render(&self, depths: Option<Depths>) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "waymark_events_ingested_total",
            "Events accepted.",
            load(&self.events_ingested),
        );
        counter(
            &mut out,
            "waymark_events_duplicate_total",
            "Events ignored as repeated messageIds.",
            load(&self.events_duplicate),
        );
        counter(
            &mut out,
            "waymark_transitions_total",
            "Steps entered by enrollments.",
            load(&self.transitions),
        );
        counter(
            &mut out,
            "waymark_enrollments_entered_total",
            "Enrollments begun.",
            load(&self.entered),
        );
        counter(
            &mut out,
            "waymark_timers_fired_total",
            "Enrollment timers fired.",
            load(&self.timers_fired),
        );
        counter(
            &mut out,
            "waymark_commit_conflicts_total",
            "Commits retried after a concurrent change.",
            load(&self.conflicts),
        );
        let _ = writeln!(
            out,
            "# HELP waymark_timer_lag_seconds Lateness of the latest timer fired.\n\
             # TYPE waymark_timer_lag_seconds gauge\nwaymark_timer_lag_seconds {:.3}",
            load(&self.timer_lag_ms) as f64 / 1000.0
        );
        let map = self
            .labelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, help, a, b) in [
            (
                "messages",
                "Messages the engine produced, by channel and outcome.",
                "channel",
                "outcome",
            ),
            (
                "deliveries",
                "Delivery attempts, by channel and result.",
                "channel",
                "result",
            ),
            (
                "ended",
                "Enrollments ended, by journey and outcome.",
                "journey",
                "outcome",
            ),
        ] {
            let metric = format!("waymark_{name}_total");
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for ((n, x, y), v) in map.iter() {
                if *n == name {
                    let _ = writeln!(
                        out,
                        "{metric}{{{a}=\"{}\",{b}=\"{}\"}} {v}",
                        escape(x),
                        escape(y)
                    );
                }
            }
        }
        if let Some(d) = depths {
            for (name, help, value) in [
                (
                    "waymark_outbox_depth",
                    "Messages waiting to be delivered.",
                    d.outbox_pending,
                ),
                (
                    "waymark_inbox_depth",
                    "Events accepted and not yet handled.",
                    d.inbox,
                ),
                (
                    "waymark_active_enrollments",
                    "Enrollments in progress.",
                    d.active_enrollments,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
                );
            }
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
