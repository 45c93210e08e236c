//! The Waymark runtime.
//!
//! [`Engine`] is the deterministic core: it moves one customer's enrollments on an input
//! (event, identify, timer, enroll, schedule tick, alias) at a given instant and reports
//! [`Effect`]s — messages, entries, exits. [`World`] keeps every customer in memory for
//! `waymark test`, property tests and benchmarks; the daemon keeps them in its store and
//! calls the very same engine.

pub mod assign;
pub mod clock;
pub mod engine;
pub mod history;
pub mod policy;
pub mod state;
pub mod world;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{Engine, EnrollError, MAX_INSTANT_STEPS, key_string};
pub use history::{Event, EventLog};
pub use policy::{ChannelDirectory, ConventionalChannels};
pub use state::{
    CustomerState, Effect, Enrollment, Message, Profile, SendOutcome, SentMessage, SkipReason,
    Status,
};
pub use world::World;
