//! Scenario tests: scripted events played against a journey on a virtual clock, with no
//! network and no waiting, by the same engine the daemon runs.
//!
//! [`run_workspace`] loads a journeys workspace, runs every `tests/*.test.yaml` in it and
//! returns a [`Report`] that renders as `waymark test` prints it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use waymark_journey::{Diagnostic, Policy, Workspace};

pub mod run;
pub mod spec;

use spec::TestFile;

/// What running a workspace's scenario tests found.
#[derive(Debug, Default)]
pub struct Report {
    pub files: Vec<FileReport>,
}

#[derive(Debug)]
pub struct FileReport {
    pub path: PathBuf,
    /// The file could not be read or understood: every case in it counts as failed.
    pub error: Option<String>,
    pub cases: Vec<CaseReport>,
}

#[derive(Debug)]
pub struct CaseReport {
    pub name: String,
    pub verdict: run::Verdict,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.files
            .iter()
            .flat_map(|f| &f.cases)
            .filter(|c| c.verdict.is_ok())
            .count()
    }

    pub fn failed(&self) -> usize {
        let cases = self
            .files
            .iter()
            .flat_map(|f| &f.cases)
            .filter(|c| c.verdict.is_err())
            .count();
        cases + self.files.iter().filter(|f| f.error.is_some()).count()
    }

    /// The report as `waymark test` prints it, ending with `N passed, M failed`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for file in &self.files {
            let _ = writeln!(out, "{}", file.path.display());
            if let Some(error) = &file.error {
                let _ = writeln!(out, "  failed  {error}");
            }
            for case in &file.cases {
                match &case.verdict {
                    Ok(()) => {
                        let _ = writeln!(out, "  ok      {}", case.name);
                    }
                    Err(problems) => {
                        let _ = writeln!(out, "  failed  {}", case.name);
                        for line in problems {
                            let _ = writeln!(out, "          {line}");
                        }
                    }
                }
            }
        }
        let _ = writeln!(out, "{} passed, {} failed", self.passed(), self.failed());
        out
    }
}

/// Why a workspace's tests could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the journeys workspace has errors")]
    Invalid(Vec<Diagnostic>),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Loads the workspace at `root` and runs every `tests/*.test.yaml` in it.
///
/// # Errors
/// The workspace does not load (its diagnostics are returned), or `tests/` cannot be read.
pub fn run_workspace(root: &Path) -> Result<Report, Error> {
    let (workspace, _warnings) = waymark_journey::load(root).map_err(Error::Invalid)?;
    let tests = root.join("tests");
    let mut paths = Vec::new();
    if tests.is_dir() {
        let entries = std::fs::read_dir(&tests).map_err(|source| Error::Io {
            path: tests.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| Error::Io {
                    path: tests.clone(),
                    source,
                })?
                .path();
            if path.to_string_lossy().ends_with(".test.yaml") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    Ok(Report {
        files: paths.iter().map(|p| run_file(&workspace, p)).collect(),
    })
}

/// Runs one test file against `workspace`.
pub fn run_file(workspace: &Workspace, path: &Path) -> FileReport {
    let failed = |error: String| FileReport {
        path: path.to_owned(),
        error: Some(error),
        cases: Vec::new(),
    };
    let file = match read_test_file(path) {
        Ok(file) => file,
        Err(error) => return failed(error),
    };
    let policy = match &file.policy {
        None => Policy::default(),
        Some(section) => match waymark_journey::policy_override_from_json(section) {
            Ok(o) => Policy::default().with(&o),
            Err(error) => return failed(format!("policy: {error}")),
        },
    };
    let cases = file
        .cases
        .iter()
        .map(|case| CaseReport {
            name: case.name.clone(),
            verdict: run::run_case(workspace, &file.journey, &policy, case),
        })
        .collect();
    FileReport {
        path: path.to_owned(),
        error: None,
        cases,
    }
}

fn read_test_file(path: &Path) -> Result<TestFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let value = waymark_journey::yaml_to_json(&text).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| format!("not a valid test file: {e}"))
}
