//! The `waymark` binary end to end: `check` and `graph` on the shared conformance files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn conformance() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/conformance"
    ))
    .to_path_buf()
}

fn waymark(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_waymark"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the waymark binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Copies the conformance workspace (without its tests) into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_dir() {
            if entry.file_name() != "tests" {
                copy_dir(&entry.path(), &to.join(entry.file_name()));
            }
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A fresh directory under the system's temp dir, removed on drop (the binary's crate has
/// no `tempfile` dependency, and this is all these tests need).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let path = std::env::temp_dir().join(format!("waymark-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        ScratchDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn check_passes_the_valid_workspace() {
    let output = waymark(
        &["check", "../../../shared/conformance/journeys"],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert_eq!(
        out.trim_end(),
        "checked 11 journeys, 24 templates: 0 errors, 0 warnings"
    );
}

#[test]
fn check_fails_a_broken_workspace_with_a_compiler_style_first_line() {
    let dir = ScratchDir::new("broken_workspace");
    let workspace = dir.path().join("journeys");
    copy_dir(&conformance().join("journeys"), &workspace);
    std::fs::copy(
        conformance().join("invalid/typo_in_next.yaml"),
        workspace.join("typo_in_next.yaml"),
    )
    .unwrap();

    // With no argument, `check` reads `journeys/` under the current directory.
    let output = waymark(&["check"], dir.path());
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let first = out.lines().next().unwrap();
    assert_eq!(
        first,
        "journeys/typo_in_next.yaml:9:11: error: unknown step `remnd` in `next` of step `wait_a_bit`; did you mean `remind`?"
    );
    assert!(
        out.ends_with("checked 12 journeys, 24 templates: 1 error, 0 warnings\n"),
        "{out}"
    );

    // A file names its workspace; only its own problems are shown.
    let output = waymark(&["check", "journeys/welcome.yaml"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let output = waymark(&["check", "journeys/typo_in_next.yaml"], dir.path());
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn graph_draws_mermaid_and_dot() {
    let file = conformance().join("journeys/order_updates.yaml");
    let file = file.to_str().unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));

    let output = waymark(&["graph", file], here);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.starts_with("flowchart TD\n"), "{out}");
    assert!(
        out.contains("step_wait_ship -->|\"timeout 3d\"| step_late"),
        "{out}"
    );

    let output = waymark(&["graph", file, "--format", "dot"], here);
    let out = stdout(&output);
    assert!(out.starts_with("digraph \"order_updates\" {"), "{out}");
    assert!(
        out.contains("step_wait_ship -> step_shipped [label=\"on order_shipped\"];"),
        "{out}"
    );
}

#[test]
fn graph_into_a_closed_pipe_is_a_normal_end() {
    let file = conformance().join("journeys/order_updates.yaml");
    // `waymark graph FILE | head -1` once `head` has gone: no reader at all.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_waymark"))
        .arg("graph")
        .arg(&file)
        .stdout(writer)
        .output()
        .expect("the waymark binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
