//! The Waymark journey language: what marketers write, loaded into a typed model.
//!
//! [`load`] reads a journeys workspace (journeys, `segments.yaml`, `templates/`), validates
//! it completely and returns either the [`Workspace`] or every problem found, each with its
//! file, line and column.

pub mod duration;
pub mod expr;
pub mod model;
pub mod template;

pub use duration::{format_duration, parse_duration};
pub use expr::{Expr, ExprError, History, Scope};
pub use model::*;
pub use template::{RenderContext, Template};
