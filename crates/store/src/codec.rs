//! Conversions between the engine's types and column values, shared by every backend.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use waymark_journey::Outcome;
use waymark_scheduler::{SendOutcome, Status};

use crate::{Error, Result};

/// How many alias redirects are followed before the chain is taken for a cycle.
pub(crate) const MAX_ALIAS_HOPS: i64 = 64;

/// Nanoseconds since the epoch: exact for every instant the engine uses (years
/// 1678..2262), so a stored and reloaded wake time compares equal to the original.
pub(crate) fn nanos(at: DateTime<Utc>) -> i64 {
    at.timestamp_nanos_opt().unwrap_or(if at.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

pub(crate) fn instant(nanos: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(nanos)
}

pub(crate) fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("maps of JSON values and strings always serialize")
}

pub(crate) fn object(text: &str, column: &str) -> Result<Map<String, Value>> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{column}: {e}")))
}

pub(crate) fn strings(text: &str, column: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{column}: {e}")))
}

pub(crate) fn bools(text: &str, column: &str) -> Result<BTreeMap<String, bool>> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{column}: {e}")))
}

pub(crate) fn status_text(status: Status) -> &'static str {
    match status {
        Status::Active => "active",
        Status::Ended { outcome, .. } => outcome.as_str(),
    }
}

pub(crate) fn status(text: &str, ended_at: Option<i64>) -> Result<Status> {
    if text == "active" {
        return Ok(Status::Active);
    }
    let outcome = Outcome::parse(text)
        .ok_or_else(|| Error::Corrupt(format!("enrollment status `{text}`")))?;
    let at = ended_at
        .map(instant)
        .ok_or_else(|| Error::Corrupt("an ended enrollment without ended_at".to_owned()))?;
    Ok(Status::Ended { outcome, at })
}

/// `(outcome, reason)` as the message log stores them.
pub(crate) fn send_outcome(outcome: SendOutcome) -> (&'static str, Option<&'static str>) {
    match outcome {
        SendOutcome::Sent => ("sent", None),
        SendOutcome::Skipped(reason) => ("skipped", Some(reason.as_str())),
        SendOutcome::Suppressed => ("suppressed", None),
    }
}

pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
