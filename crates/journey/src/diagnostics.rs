//! Problems found in a workspace, rendered the way compilers print them so that editors and
//! CI can jump to them: `FILE:LINE:COLUMN: error: MESSAGE`, then the source line with a
//! caret under the column.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::model::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the caller named it (relative paths stay relative).
    pub file: PathBuf,
    /// 1-based; line 0 means the file as a whole (it could not be read, say).
    pub pos: Pos,
    pub severity: Severity,
    /// A stable code from [`codes`], such as `E0003`.
    pub code: &'static str,
    pub message: String,
    /// How many characters to underline from `pos` (at least one caret is drawn).
    pub len: u32,
    /// The text of line `pos.line`, filled in by the loader so that a diagnostic renders
    /// without going back to the file.
    pub source_line: Option<String>,
}

impl Diagnostic {
    pub fn error(
        file: impl Into<PathBuf>,
        pos: Pos,
        code: &'static str,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: file.into(),
            pos,
            severity: Severity::Error,
            code,
            message: message.into(),
            len: 0,
            source_line: None,
        }
    }

    pub fn warning(
        file: impl Into<PathBuf>,
        pos: Pos,
        code: &'static str,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, pos, code, message)
        }
    }

    #[must_use]
    pub fn with_len(mut self, len: u32) -> Diagnostic {
        self.len = len;
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Fills in [`Diagnostic::source_line`] from the file's text.
    pub fn attach_source(&mut self, source: &str) {
        if self.pos.line == 0 {
            return;
        }
        self.source_line = source
            .lines()
            .nth(self.pos.line as usize - 1)
            .map(str::to_owned);
    }

    /// The first line alone: `FILE:LINE:COLUMN: error: MESSAGE`.
    ///
    /// Without a file (a snippet parsed from memory) it starts at the line; without a
    /// position, at the severity.
    pub fn headline(&self) -> String {
        let mut place = self.file.display().to_string();
        if self.pos.line != 0 {
            if !place.is_empty() {
                place.push(':');
            }
            place.push_str(&format!("{}:{}", self.pos.line, self.pos.column));
        }
        if !place.is_empty() {
            place.push_str(": ");
        }
        // One line, as compilers print it: a message quoting a multi-line text (an
        // expression in a `|` block) has its line breaks shown as spaces.
        let message: String = if self.message.contains('\n') {
            self.message
                .trim_end()
                .split('\n')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            self.message.clone()
        };
        format!("{place}{}: {message}", self.severity.as_str())
    }

    /// The headline, then the source line with carets under the problem, then the code:
    ///
    /// ```text
    /// journeys/cart.yaml:8:5: error: unknown key `wiat` in step `first`; did you mean `wait`?
    ///   |
    /// 8 |     wiat: 1h
    ///   |     ^^^^
    ///   = E0003 unknown-key
    /// ```
    pub fn render(&self) -> String {
        let mut out = self.headline();
        out.push('\n');
        let gutter = " ".repeat(self.pos.line.to_string().len());
        if let Some(line) = &self.source_line {
            let line = line.trim_end();
            let column = self.pos.column.max(1) as usize;
            // Tabs keep their width in the caret line so the caret stays under the column.
            let pad: String = line
                .chars()
                .take(column - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let available = line.chars().count().saturating_sub(column - 1).max(1);
            let carets = "^".repeat((self.len as usize).clamp(1, available));
            let _ = writeln!(out, "{gutter} |");
            let _ = writeln!(out, "{} | {line}", self.pos.line);
            let _ = writeln!(out, "{gutter} | {pad}{carets}");
        }
        let _ = writeln!(
            out,
            "{gutter} = {} {}",
            self.code,
            codes::name(self.code).unwrap_or("")
        );
        out
    }

    /// The order diagnostics are reported in: by file, then position, errors first.
    pub fn sort_key(&self) -> (&Path, Pos, Severity) {
        (&self.file, self.pos, self.severity)
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.headline())
    }
}

/// Sorts diagnostics by file, then position.
pub fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
}

/// Stable diagnostic codes. Codes are never reused or renumbered: scripts and docs may
/// refer to them.
pub mod codes {
    pub const YAML_SYNTAX: &str = "E0001";
    pub const DUPLICATE_KEY: &str = "E0002";
    pub const UNKNOWN_KEY: &str = "E0003";
    pub const WRONG_TYPE: &str = "E0004";
    pub const MISSING_KEY: &str = "E0005";
    pub const INVALID_ID: &str = "E0006";
    pub const DUPLICATE_ID: &str = "E0007";
    pub const STEP_KIND: &str = "E0008";
    pub const NEXT_NOT_ALLOWED: &str = "E0009";
    pub const UNKNOWN_STEP: &str = "E0010";
    pub const UNKNOWN_SEGMENT: &str = "E0011";
    pub const UNKNOWN_TEMPLATE: &str = "E0012";
    pub const INVALID_DURATION: &str = "E0013";
    pub const INVALID_CRON: &str = "E0014";
    pub const INVALID_TIME: &str = "E0015";
    pub const INVALID_TIMEZONE: &str = "E0016";
    pub const INVALID_EXPRESSION: &str = "E0017";
    pub const INVALID_VALUE: &str = "E0018";
    pub const TRIGGER_SHAPE: &str = "E0019";
    pub const TEMPLATE_LACKS_CHANNEL: &str = "E0020";
    pub const TEMPLATE_SHAPE: &str = "E0021";
    pub const INVALID_LIQUID: &str = "E0022";
    pub const INSTANT_CYCLE: &str = "E0023";
    pub const SEGMENT_CYCLE: &str = "E0024";
    pub const IO: &str = "E0025";
    pub const UNREACHABLE_STEP: &str = "W0001";
    pub const NEXT_IGNORED: &str = "W0002";
    /// Found by the daemon, which alone knows its config: `D` codes.
    pub const UNKNOWN_CHANNEL: &str = "D0001";

    /// Every code with its short name and what it means.
    pub const ALL: &[(&str, &str, &str)] = &[
        (YAML_SYNTAX, "yaml-syntax", "the file is not valid YAML"),
        (
            DUPLICATE_KEY,
            "duplicate-key",
            "a key is written twice in one mapping, such as two steps with the same id",
        ),
        (
            UNKNOWN_KEY,
            "unknown-key",
            "a key the language does not define; often a typo",
        ),
        (
            WRONG_TYPE,
            "wrong-type",
            "a value of the wrong kind, such as a list where a name is expected",
        ),
        (MISSING_KEY, "missing-key", "a required key is absent"),
        (
            INVALID_ID,
            "invalid-id",
            "ids are lowercase letters, digits and underscores",
        ),
        (
            DUPLICATE_ID,
            "duplicate-id",
            "two journeys share an id, or two variants a name",
        ),
        (
            STEP_KIND,
            "step-kind",
            "a step has no kind key, or more than one",
        ),
        (
            NEXT_NOT_ALLOWED,
            "next-not-allowed",
            "`branch`, `split` and `wait_for` choose their own way on",
        ),
        (
            UNKNOWN_STEP,
            "unknown-step",
            "a step name that is not in `steps`",
        ),
        (
            UNKNOWN_SEGMENT,
            "unknown-segment",
            "a segment name that is not in segments.yaml",
        ),
        (
            UNKNOWN_TEMPLATE,
            "unknown-template",
            "a template name with no templates/NAME.yaml",
        ),
        (
            INVALID_DURATION,
            "invalid-duration",
            "durations are an integer and a unit: 30s, 15m, 2h, 3d, 1w, 1d12h",
        ),
        (
            INVALID_CRON,
            "invalid-cron",
            "schedules are standard 5-field cron: minute hour day month weekday",
        ),
        (INVALID_TIME, "invalid-time", "times of day are HH:MM"),
        (
            INVALID_TIMEZONE,
            "invalid-timezone",
            "time zones are IANA names such as Europe/Moscow",
        ),
        (
            INVALID_EXPRESSION,
            "invalid-expression",
            "a CEL expression that does not parse or calls an unknown function",
        ),
        (
            INVALID_VALUE,
            "invalid-value",
            "a value outside what the key accepts",
        ),
        (
            TRIGGER_SHAPE,
            "trigger-shape",
            "a trigger has exactly one of event, segment, schedule or api, with the keys that kind allows",
        ),
        (
            TEMPLATE_LACKS_CHANNEL,
            "template-lacks-channel",
            "a send can reach a channel its template has no part for",
        ),
        (
            TEMPLATE_SHAPE,
            "template-shape",
            "a template part lacks a field its channel needs",
        ),
        (
            INVALID_LIQUID,
            "invalid-liquid",
            "template text that is not valid Liquid",
        ),
        (
            INSTANT_CYCLE,
            "instant-cycle",
            "steps that lead back to themselves without waiting would loop forever",
        ),
        (
            SEGMENT_CYCLE,
            "segment-cycle",
            "segments whose conditions refer to each other in a circle",
        ),
        (IO, "io", "a file or directory could not be read"),
        (
            UNREACHABLE_STEP,
            "unreachable-step",
            "no path from the start leads to this step",
        ),
        (
            NEXT_IGNORED,
            "next-ignored",
            "an `exit` step ends the journey, so its `next` is never followed",
        ),
        (
            UNKNOWN_CHANNEL,
            "unknown-channel",
            "a send can reach a channel the daemon config does not define",
        ),
    ];

    /// The short name of a code, such as `unknown-key` for `E0003`.
    pub fn name(code: &str) -> Option<&'static str> {
        ALL.iter().find(|(c, ..)| *c == code).map(|(_, n, _)| *n)
    }

    /// What a code means, in a sentence.
    pub fn explain(code: &str) -> Option<&'static str> {
        ALL.iter().find(|(c, ..)| *c == code).map(|(.., e)| *e)
    }
}
