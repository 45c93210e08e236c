//! `waymark check`: validate workspaces and print every problem, compiler-style.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use waymark_journey::{Diagnostic, load_report};

/// The workspace checked when no path is given.
const DEFAULT_WORKSPACE: &str = "journeys";

/// Checks each path: a directory is a workspace; a file is checked as a journey of the
/// workspace it sits in (its directory), and only its own diagnostics are shown.
///
/// Prints every diagnostic, then `checked N journeys, M templates: E errors, W warnings`.
/// Exits 1 when there is any error.
pub fn run(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let default = [PathBuf::from(DEFAULT_WORKSPACE)];
    let paths = if paths.is_empty() {
        &default[..]
    } else {
        paths
    };

    let mut shown: Vec<Diagnostic> = Vec::new();
    let (mut journeys, mut templates) = (0, 0);
    for path in paths {
        if path.is_dir() {
            let report = load_report(path, &[]);
            journeys += report.journey_files.len();
            templates += report.template_files.len();
            shown.extend(report.diagnostics);
        } else if path.is_file() {
            let (root, file, is_journey) = workspace_of(path)?;
            let extra = if is_journey {
                vec![file.clone()]
            } else {
                Vec::new()
            };
            let report = load_report(&root, &extra);
            journeys += usize::from(is_journey);
            templates += usize::from(!is_journey && file.parent() != Some(&root));
            let others = report
                .diagnostics
                .iter()
                .filter(|d| d.file != file && d.is_error())
                .count();
            shown.extend(report.diagnostics.into_iter().filter(|d| d.file == file));
            if others > 0 {
                eprintln!(
                    "note: {} in other files of {} (run `waymark check {}` to see {})",
                    plural(others, "error"),
                    root.display(),
                    root.display(),
                    if others == 1 { "it" } else { "them" }
                );
            }
        } else {
            anyhow::bail!(
                "{}: no such file or directory (expected a journeys workspace or a journey file)",
                path.display()
            );
        }
    }

    for d in &shown {
        print!("{}", d.render());
        println!();
    }
    let errors = shown.iter().filter(|d| d.is_error()).count();
    let warnings = shown.len() - errors;
    println!(
        "checked {}, {}: {}, {}",
        plural(journeys, "journey"),
        plural(templates, "template"),
        plural(errors, "error"),
        plural(warnings, "warning"),
    );
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The workspace a file belongs to, the file as the loader names it, and whether it is a
/// journey (rather than a template or the segments file).
fn workspace_of(path: &Path) -> anyhow::Result<(PathBuf, PathBuf, bool)> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{}: not a file", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir.file_name().is_some_and(|d| d == "templates") {
        let root = match dir.parent() {
            Some(root) if !root.as_os_str().is_empty() => root.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file = root.join("templates").join(name);
        return Ok((root, file, false));
    }
    let is_journey = name != waymark_journey::SEGMENTS_FILE;
    // The loader names the files of `.` without a `./` prefix.
    let file = if dir == Path::new(".") {
        PathBuf::from(name)
    } else {
        dir.join(name)
    };
    Ok((dir, file, is_journey))
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}
