//! What the tests that drop broken journeys into the shared conformance workspace share.

use std::path::{Path, PathBuf};

/// The shared conformance suite (`../shared/conformance`).
pub fn conformance() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/conformance"
    ))
    .to_path_buf()
}

/// Copies the valid workspace (journeys, segments, templates; not its scenario tests,
/// which are not `waymark check`'s) into `to`.
pub fn copy_workspace(to: &Path) {
    copy_dir(&conformance().join("journeys"), to);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            if entry.file_name() != "tests" {
                copy_dir(&path, &to.join(entry.file_name()));
            }
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// The value of `# KEY: VALUE` in a broken journey's leading comments.
pub fn header(source: &str, key: &str) -> Option<String> {
    source
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&format!("# {key}:")))
        .map(|v| v.trim().to_owned())
}
