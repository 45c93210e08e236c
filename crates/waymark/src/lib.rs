//! The Waymark daemon as a library, so that a binary with extra channel kinds is ten
//! lines:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let registry = waymark::default_registry(); // .with(my_adapter::Kind)
//!     waymark::run(registry)
//! }
//! ```

use std::process::ExitCode;

use clap::Parser;

pub mod api;
mod batch;
pub mod callbacks;
pub mod channels;
pub mod config;
pub mod daemon;
pub mod dispatch;
pub mod links;
pub mod metrics;
pub mod serve;

pub use channels::{LogKind, default_registry};

/// A daemon-only command line: the options of `waymark serve`.
#[derive(Parser)]
#[command(name = "waymark-serve", version, about = "Run Waymark journeys")]
struct DaemonCli {
    #[command(flatten)]
    serve: serve::ServeArgs,
}

/// Parses `[--config PATH]` from the command line and runs the daemon with `registry`'s
/// channel kinds until SIGTERM.
pub fn run(registry: waymark_channel::Registry) -> ExitCode {
    let cli = DaemonCli::parse();
    match serve::run(cli.serve, registry) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
