//! The Waymark journey language: what marketers write, loaded into a typed model.
//!
//! [`load`] reads a journeys workspace (journeys, `segments.yaml`, `templates/`), validates
//! it completely and returns either the [`Workspace`] or every problem found, each with its
//! file, line and column.

mod analysis;
pub mod diagnostics;
pub mod duration;
pub mod expr;
pub mod graph;
mod journey_file;
mod load;
pub mod model;
mod parse;
mod policy;
pub mod template;
pub mod yaml;

pub use diagnostics::{Diagnostic, Severity};
pub use duration::{format_duration, parse_duration, window_start};
pub use expr::{Expr, ExprError, History, Scope};
pub use journey_file::cron_schedule;
pub use load::{LoadReport, SEGMENTS_FILE, load, load_report};
pub use model::*;
pub use policy::{parse_policy, parse_policy_json, policy_override_from_json};
pub use template::{RenderContext, Template};
pub use yaml::yaml_to_json;
