//! FCM's error answers, classified by what the outbox should do next.
//!
//! An error answer is `{"error": {"code", "message", "status", "details": [...]}}`; the
//! FCM error code sits in a `google.firebase.fcm.v1.FcmError` detail (`errorCode`), the
//! offending field in a `google.rpc.BadRequest` detail (`fieldViolations`).

use serde::Deserialize;
use waymark_channel::{DeliveryError, body_snippet};

#[derive(Deserialize)]
struct Answer {
    error: Status,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    message: String,
    /// The canonical status, such as `NOT_FOUND`.
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Detail>,
}

#[derive(Deserialize)]
struct Detail {
    /// FCM's own code, such as `UNREGISTERED`, in an `FcmError` detail.
    #[serde(rename = "errorCode")]
    error_code: Option<String>,
    #[serde(rename = "fieldViolations", default)]
    field_violations: Vec<FieldViolation>,
}

#[derive(Deserialize)]
struct FieldViolation {
    #[serde(default)]
    field: String,
}

/// A refusal from the FCM send endpoint.
pub struct Refusal {
    status: u16,
    /// FCM's error code, else the canonical status; `None` for an answer that is not
    /// Google's (a proxy, a load balancer).
    code: Option<String>,
    /// Google's message, or the start of the body.
    message: String,
    /// A `google.rpc.BadRequest` names the registration token as the invalid field.
    token_field_invalid: bool,
}

impl Refusal {
    pub fn parse(status: u16, body: &[u8]) -> Refusal {
        let Ok(Answer { error }) = serde_json::from_slice::<Answer>(body) else {
            return Refusal {
                status,
                code: None,
                message: body_snippet(body),
                token_field_invalid: false,
            };
        };
        let fcm_code = error.details.iter().find_map(|d| d.error_code.clone());
        let token_field_invalid = error
            .details
            .iter()
            .flat_map(|d| &d.field_violations)
            .any(|v| v.field == "message.token");
        Refusal {
            status,
            code: fcm_code.or_else(|| Some(error.status).filter(|s| !s.is_empty())),
            message: error.message,
            token_field_invalid,
        }
    }

    /// FCM refused the access token itself (an expired or revoked token), not the
    /// message: a new token may well work. `THIRD_PARTY_AUTH_ERROR` is also a 401, but
    /// about the APNs or web-push credentials configured in Firebase.
    pub fn refuses_access_token(&self) -> bool {
        self.status == 401 && self.code.as_deref() != Some("THIRD_PARTY_AUTH_ERROR")
    }

    pub fn into_delivery_error(self, retry_after: Option<&str>) -> DeliveryError {
        let reason = match &self.code {
            Some(code) => format!("FCM {} {code}: {}", self.status, self.message),
            None => format!("FCM {}: {}", self.status, self.message),
        };
        let retryable = |reason: String| DeliveryError::Retryable {
            reason,
            retry_after: retry_after.and_then(waymark_channel::retry_after_header),
        };
        match self.code.as_deref() {
            // The app was uninstalled, or the token expired or was unregistered. A bare
            // `NOT_FOUND` in Google's own error shape says the same: the send URL names
            // only the project, so what was not found is the registration token. (A 404
            // that is not Google's, such as a proxy's page, is left to its status.)
            Some("UNREGISTERED" | "NOT_FOUND") => DeliveryError::address_gone(reason),
            Some("INVALID_ARGUMENT") if self.is_about_the_token() => {
                DeliveryError::address_gone(reason)
            }
            Some("QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL") => retryable(reason),
            // The token belongs to another Firebase project, or Firebase's APNs/web-push
            // credentials are wrong: nothing a retry mends.
            Some("SENDER_ID_MISMATCH" | "THIRD_PARTY_AUTH_ERROR") => {
                DeliveryError::permanent(reason)
            }
            _ if self.refuses_access_token() => {
                retryable(format!("{reason} (a new access token is fetched)"))
            }
            _ => DeliveryError::from_http_status(self.status, retry_after, reason),
        }
    }

    /// An `INVALID_ARGUMENT` about the registration token rather than the message: FCM
    /// says so in a field violation, or in the words of its documented message ("The
    /// registration token is not a valid FCM registration token").
    fn is_about_the_token(&self) -> bool {
        self.token_field_invalid
            || self
                .message
                .to_ascii_lowercase()
                .contains("registration token")
    }
}
