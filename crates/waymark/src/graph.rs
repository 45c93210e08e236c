//! `waymark graph`: draw one journey.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use waymark_journey::{graph, load_report};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Mermaid,
    Dot,
}

/// Loads the workspace `file` belongs to (its directory), so that the journey is drawn
/// only once it is valid, and prints its diagram on stdout. Errors in the journey are
/// printed instead, as `waymark check` would, and exit 1.
pub fn run(file: &Path, format: Format) -> anyhow::Result<ExitCode> {
    if !file.is_file() {
        anyhow::bail!("{}: no such journey file", file.display());
    }
    let name = file
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{}: not a file", file.display()))?;
    let root = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file = if root == Path::new(".") {
        PathBuf::from(name)
    } else {
        root.join(name)
    };
    let report = load_report(&root, std::slice::from_ref(&file));
    let errors: Vec<_> = report
        .diagnostics
        .iter()
        .filter(|d| d.file == file && d.is_error())
        .collect();
    if !errors.is_empty() {
        for d in &errors {
            eprint!("{}", d.render());
            eprintln!();
        }
        return Ok(ExitCode::FAILURE);
    }
    // Errors elsewhere in the workspace do not stop drawing a journey that is valid.
    let Some(journey) = report.journeys.iter().find(|j| j.source == file) else {
        anyhow::bail!("{}: not a journey file", file.display());
    };
    let text = match format {
        Format::Mermaid => graph::mermaid(journey),
        Format::Dot => graph::dot(journey),
    };
    match write_out(&text) {
        // The reader stopped early (`waymark graph FILE | head -1`): not a failure.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        result => {
            result?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `print!` would panic on a closed stdout; this hands the error back instead.
fn write_out(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}
