//! A customer's event history, indexed for the history functions.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use waymark_journey::History;

/// One event received for a customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub at: DateTime<Utc>,
    pub properties: Map<String, Value>,
}

/// Every event of one customer in time order, with each name's events indexed so that
/// `did`, `count` and `sum` are a binary search rather than a scan.
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    events: Vec<Event>,
    /// Event name -> positions in `events`, in time order.
    by_name: HashMap<String, Vec<usize>>,
}

impl EventLog {
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Adds an event, keeping time order (an event stamped earlier than the last one is
    /// inserted where it belongs; among equal times, arrival order is kept).
    pub fn push(&mut self, event: Event) {
        let in_order = self.events.last().is_none_or(|last| last.at <= event.at);
        if in_order {
            self.by_name
                .entry(event.name.clone())
                .or_default()
                .push(self.events.len());
            self.events.push(event);
        } else {
            let at = self.events.partition_point(|e| e.at <= event.at);
            self.events.insert(at, event);
            self.reindex();
        }
    }

    /// Adds every event of `other` (an aliased profile's history).
    pub fn merge(&mut self, other: &EventLog) {
        self.events.extend(other.events.iter().cloned());
        self.events.sort_by_key(|e| e.at);
        self.reindex();
    }

    fn reindex(&mut self) {
        self.by_name.clear();
        for (i, e) in self.events.iter().enumerate() {
            self.by_name.entry(e.name.clone()).or_default().push(i);
        }
    }

    /// The events named `name` at or after `since`, in time order.
    pub fn named_since<'a>(
        &'a self,
        name: &str,
        since: Option<DateTime<Utc>>,
    ) -> impl DoubleEndedIterator<Item = &'a Event> + 'a {
        let positions = self.by_name.get(name).map_or(&[][..], Vec::as_slice);
        let start = since.map_or(0, |since| {
            positions.partition_point(|&i| self.events[i].at < since)
        });
        positions[start..].iter().map(|&i| &self.events[i])
    }

    /// All events in `[from, to)`.
    pub fn between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> &[Event] {
        let start = self.events.partition_point(|e| e.at < from);
        let end = self.events.partition_point(|e| e.at < to);
        &self.events[start..end.max(start)]
    }
}

impl History for EventLog {
    fn count(&self, event: &str, since: Option<DateTime<Utc>>) -> u64 {
        self.named_since(event, since).count() as u64
    }

    fn sum(&self, event: &str, property: &str, since: Option<DateTime<Utc>>) -> f64 {
        self.named_since(event, since)
            .filter_map(|e| e.properties.get(property).and_then(number))
            .sum()
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + TimeDelta::hours(hours)
    }

    fn event(name: &str, hours: i64, total: i64) -> Event {
        let mut properties = Map::new();
        properties.insert("total".to_owned(), Value::from(total));
        Event {
            name: name.to_owned(),
            at: at(hours),
            properties,
        }
    }

    #[test]
    fn counts_and_sums_within_a_window_even_out_of_order() {
        let mut log = EventLog::default();
        for (h, t) in [(1, 10), (5, 20), (3, 30)] {
            log.push(event("order", h, t));
        }
        log.push(event("visit", 4, 0));
        assert_eq!(log.count("order", None), 3);
        assert_eq!(log.count("order", Some(at(3))), 2);
        assert!((log.sum("order", "total", Some(at(2))) - 50.0).abs() < f64::EPSILON);
        assert_eq!(log.count("nothing", None), 0);
        let names: Vec<_> = log.events().iter().map(|e| e.at).collect();
        assert!(names.is_sorted());
    }
}
