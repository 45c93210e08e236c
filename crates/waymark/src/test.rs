//! `waymark test`: runs every workspace's scenario tests and prints the report.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

pub fn run(dirs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let default = [PathBuf::from("journeys")];
    let dirs = if dirs.is_empty() { &default[..] } else { dirs };
    let (mut passed, mut failed) = (0, 0);
    for dir in dirs {
        match waymark_scenario::run_workspace(dir) {
            Ok(report) => {
                let text = report.render();
                // Each workspace's own summary line is replaced by the overall one.
                let body = text
                    .trim_end()
                    .rsplit_once('\n')
                    .map_or("", |(body, _)| body);
                if !body.is_empty() {
                    println!("{body}");
                }
                passed += report.passed();
                failed += report.failed();
            }
            Err(waymark_scenario::Error::Invalid(diagnostics)) => {
                for d in &diagnostics {
                    eprintln!("{d}");
                }
                eprintln!(
                    "{}: the workspace has errors; run `waymark check {}`",
                    dir.display(),
                    dir.display()
                );
                failed += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("testing {}", dir.display())),
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
