//! The scenario test file format (`tests/*.test.yaml`), section 9 of the language.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use waymark_journey::parse_duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// A journey id in the workspace.
    pub journey: String,
    /// Overrides of the default send policy, as the daemon's `policy:`.
    #[serde(default)]
    pub policy: Option<Value>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub start: DateTime<Utc>,
    #[serde(default)]
    pub until: Option<At>,
    #[serde(default)]
    pub profiles: Vec<ProfileSpec>,
    #[serde(default)]
    pub events: Vec<Step>,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    pub id: String,
    #[serde(default)]
    pub traits: Map<String, Value>,
    #[serde(default)]
    pub history: Vec<PastEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PastEvent {
    pub at: DateTime<Utc>,
    pub event: String,
    #[serde(default)]
    pub properties: Map<String, Value>,
}

/// One scripted input: exactly one of `event`, `identify`, `alias`, `enroll`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub at: At,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub properties: Map<String, Value>,
    #[serde(default)]
    pub identify: Option<Map<String, Value>>,
    /// Merge this profile into `user`.
    #[serde(default)]
    pub alias: Option<String>,
    /// API-triggered entry into the journey under test, with these properties.
    #[serde(default)]
    pub enroll: Option<Map<String, Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Every message sent, and nothing else; `None` when not checked.
    #[serde(default)]
    pub sends: Option<Vec<ExpectedSend>>,
    /// Sends that must have been skipped, with their reasons.
    #[serde(default)]
    pub skipped: Option<Vec<ExpectedSkip>>,
    /// Customer -> outcome of their latest enrollment in the journey.
    #[serde(default)]
    pub outcomes: BTreeMap<String, String>,
    /// Customer -> traits that must hold at the end.
    #[serde(default)]
    pub traits: BTreeMap<String, Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedSend {
    pub at: At,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub to: Option<ScalarText>,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub contains: Option<ScalarText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedSkip {
    pub at: At,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    pub reason: String,
}

/// A scalar compared as text: `contains: 10` means the text "10".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(ScalarText(s)),
            Value::Number(n) => Ok(ScalarText(n.to_string())),
            Value::Bool(b) => Ok(ScalarText(b.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected text, got {other}"
            ))),
        }
    }
}

/// A point in time: absolute (`2026-03-02T10:00:00Z`) or `+DURATION` from the case's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Absolute(DateTime<Utc>),
    FromStart(chrono::TimeDelta),
}

impl At {
    pub fn resolve(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            At::Absolute(t) => t,
            At::FromStart(d) => start + d,
        }
    }
}

impl<'de> Deserialize<'de> for At {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Some(duration) = text.strip_prefix('+') {
            return parse_duration(duration)
                .map(At::FromStart)
                .map_err(serde::de::Error::custom);
        }
        DateTime::parse_from_rfc3339(&text)
            .map(|t| At::Absolute(t.to_utc()))
            .map_err(|_| serde::de::Error::custom(format!("invalid time `{text}`: expected +DURATION (such as +1h) or an RFC 3339 time (such as 2026-03-02T10:00:00Z)")))
    }
}
