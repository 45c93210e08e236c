//! `waymark-slack`: the Waymark daemon, with the `slack` channel kind next to the built-in
//! ones. It takes the same `--config` as `waymark serve`.

use std::process::ExitCode;

use waymark_slack::SlackKind;

fn main() -> ExitCode {
    waymark::run(waymark::default_registry().with(SlackKind))
}
