//! What the engine knows about one customer: the profile and its enrollments.
//!
//! The engine changes a [`CustomerState`] in place and reports [`Effect`]s; whoever holds
//! the state (the in-memory [`crate::World`] or the daemon's store) persists both together.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use waymark_journey::{Outcome, StepIdx};

use crate::history::EventLog;

/// A customer: an id, traits, and every event received for them.
#[derive(Debug, Clone)]
pub struct Profile {
    pub id: String,
    pub traits: Map<String, Value>,
    /// Shared with expressions while they are evaluated; copied on write only then.
    pub history: Arc<EventLog>,
    /// The last value each segment had for this customer, for segment triggers (which
    /// fire on the false -> true edge).
    pub segments: BTreeMap<String, bool>,
    /// Messages handed to a channel, for frequency caps and fatigue.
    pub messages: Vec<SentMessage>,
    /// Numbers this customer's enrollments, so their ids are stable and unique.
    pub enrollment_seq: u64,
}

impl Profile {
    pub fn new(id: impl Into<String>) -> Self {
        Profile {
            id: id.into(),
            traits: Map::new(),
            history: Arc::default(),
            segments: BTreeMap::new(),
            messages: Vec::new(),
            enrollment_seq: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub at: DateTime<Utc>,
    pub channel: String,
}

/// One customer's passage through one journey (per key, for keyed journeys).
#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    /// `{customer}:{n}`, stable for life (an alias merge keeps it).
    pub id: String,
    pub journey: String,
    /// The journey version it entered with and stays on.
    pub version: String,
    pub key: Option<String>,
    pub step: StepIdx,
    pub status: Status,
    /// When its timer fires: the end of a wait, a `wait_for` timeout, or the time a
    /// deferred send goes out. `None` while waiting for an event only, and once ended.
    pub wake: Option<DateTime<Utc>>,
    /// The properties of the event that made the customer enter.
    pub trigger: Map<String, Value>,
    /// The properties of the latest event that moved this enrollment.
    pub event: Map<String, Value>,
    /// The variant of the latest split passed.
    pub variant: Option<String>,
    /// In the holdout group: every send is suppressed.
    pub control: bool,
    pub entered_at: DateTime<Utc>,
    /// Counts send steps executed, for idempotency keys.
    pub sends: u32,
}

impl Enrollment {
    /// The customer id the enrollment began under (its id's prefix), which an alias
    /// merge that moves it to another profile leaves as it was.
    pub fn began_under(&self) -> &str {
        self.id
            .rsplit_once(':')
            .map_or(&self.id, |(customer, _)| customer)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Ended { outcome: Outcome, at: DateTime<Utc> },
}

impl Enrollment {
    pub fn is_active(&self) -> bool {
        self.status == Status::Active
    }

    pub fn outcome(&self) -> Option<Outcome> {
        match self.status {
            Status::Active => None,
            Status::Ended { outcome, .. } => Some(outcome),
        }
    }
}

/// Everything the engine reads and changes when it handles one input for one customer.
#[derive(Debug, Clone)]
pub struct CustomerState {
    pub profile: Profile,
    /// Active and ended enrollments, in the order they were created.
    pub enrollments: Vec<Enrollment>,
}

impl CustomerState {
    pub fn new(id: impl Into<String>) -> Self {
        CustomerState {
            profile: Profile::new(id),
            enrollments: Vec::new(),
        }
    }

    /// The earliest timer among active enrollments.
    pub fn next_wake(&self) -> Option<(DateTime<Utc>, &str)> {
        self.enrollments
            .iter()
            .filter(|e| e.is_active())
            .filter_map(|e| e.wake.map(|w| (w, e.id.as_str())))
            .min()
    }
}

/// Why a send did not go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    Unreachable,
    FrequencyCap,
    Fatigue,
    Expired,
    /// The template could not be rendered for the channel.
    RenderFailed,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Unreachable => "unreachable",
            SkipReason::FrequencyCap => "frequency_cap",
            SkipReason::Fatigue => "fatigue",
            SkipReason::Expired => "expired",
            SkipReason::RenderFailed => "render_failed",
        }
    }
}

/// What became of a send, as far as the engine decides. `failed` (the channel gave up
/// after retries) is decided later, by the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Handed to the channel (the outbox, in the daemon).
    Sent,
    Skipped(SkipReason),
    /// A holdout customer's send: recorded, never handed to a channel.
    Suppressed,
}

/// One message the engine produced (or decided not to).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Stable across retries and restarts: `{enrollment}:{step}:{n}`.
    pub idempotency_key: String,
    pub at: DateTime<Utc>,
    pub customer: String,
    pub enrollment: String,
    pub journey: String,
    pub step: String,
    pub template: String,
    /// The channel chosen; `None` when none was reachable.
    pub channel: Option<String>,
    pub address: Option<String>,
    /// Rendered fields (`subject`, `text`, `html`, `body`); empty unless sent or suppressed.
    pub content: BTreeMap<String, String>,
    pub variant: Option<String>,
    pub transactional: bool,
    pub outcome: SendOutcome,
}

/// What handling an input did, besides changing the state.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Entered {
        customer: String,
        enrollment: String,
        journey: String,
    },
    Message(Message),
    Ended {
        customer: String,
        enrollment: String,
        journey: String,
        outcome: Outcome,
    },
    /// The enrollment moved from one step to another.
    Transition {
        enrollment: String,
        journey: String,
    },
}
