//! The `waymark` command: check, graph, test and serve journeys.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The daemon allocates and frees many small objects on several threads; see the
/// workspace's Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod check;
mod graph;
mod test;

/// Marketing journeys as code: check them, test them, run them.
#[derive(Parser)]
#[command(name = "waymark", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate journeys, segments and templates; print every error with file:line:column.
    Check {
        /// Workspace directories or journey files (default: journeys/).
        paths: Vec<PathBuf>,
    },
    /// Draw one journey as a diagram.
    Graph {
        /// The journey file.
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = graph::Format::Mermaid)]
        format: graph::Format,
    },
    /// Run the scenario tests (`tests/*.test.yaml`) of journeys workspaces.
    Test {
        /// Workspace directories (default: journeys/).
        dirs: Vec<PathBuf>,
    },
    /// Run the daemon: the HTTP API, timers and channel delivery.
    Serve(waymark::serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { paths } => check::run(&paths),
        Command::Graph { file, format } => graph::run(&file, format),
        Command::Test { dirs } => test::run(&dirs),
        Command::Serve(args) => waymark::serve::run(args, waymark::default_registry()),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
