//! `waymark graph`.

use std::path::Path;
use std::process::ExitCode;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Mermaid,
    Dot,
}

pub fn run(_file: &Path, _format: Format) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
