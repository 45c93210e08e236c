//! The `waymark` command: check, graph, test and serve journeys.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
mod graph;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { paths } => check::run(&paths),
        Command::Graph { file, format } => graph::run(&file, format),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
