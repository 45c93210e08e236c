//! OAuth 2.0 for a Google service account: an RS256-signed JWT assertion, exchanged at the
//! account's `token_uri` for an access token, which is cached until shortly before it
//! expires.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use waymark_channel::{DeliveryError, body_snippet};
use waymark_channel_http as http;

use crate::Clock;

/// What the access token may do: send FCM messages, nothing else.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google refuses assertions that live longer than an hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// A cached token is renewed this long before it expires, so that it does not expire on
/// the way to FCM.
const RENEW_BEFORE_EXPIRY_SECS: u64 = 60;
/// When the token endpoint does not say how long a token lives; Google's tokens live an
/// hour, this is on the safe side.
const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 1800;

/// The fields of a service-account key file (the JSON the Google Cloud console downloads)
/// that the flow needs; the others are ignored. No `Debug`: it holds the private key.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    token_uri: String,
}

/// A parsed, checked service account. No `Debug`: it holds the private key.
pub struct ServiceAccount {
    client_email: String,
    token_uri: reqwest::Url,
    /// `token_uri` as the key file writes it: the assertion's `aud`. Not the parsed URL,
    /// which normalizes (`http://host:1234` becomes `http://host:1234/`), and Google
    /// compares `aud` with its token URI as a string.
    audience: String,
    key: EncodingKey,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

impl ServiceAccount {
    /// Parses a key file and proves the key signs. No messages quote the key.
    ///
    /// # Errors
    /// What is wrong with the file, naming the field.
    pub fn parse(json: &str) -> Result<ServiceAccount, String> {
        // serde_json's messages name fields and positions, never the text around them.
        let file: KeyFile = serde_json::from_str(json)
            .map_err(|e| format!("not a service-account key file: {e}"))?;
        if let Some(kind) = file.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(format!(
                "`type` is `{kind}`: a service-account key (`service_account`) is needed"
            ));
        }
        if file.client_email.trim().is_empty() {
            return Err("`client_email` is empty".to_owned());
        }
        let token_uri = reqwest::Url::parse(&file.token_uri)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| "`token_uri` is not an http or https URL".to_owned())?;
        let key = EncodingKey::from_rsa_pem(file.private_key.as_bytes())
            .map_err(|_| "`private_key` is not an RSA private key in PEM form".to_owned())?;
        let account = ServiceAccount {
            client_email: file.client_email,
            token_uri,
            audience: file.token_uri,
            key,
        };
        // The PEM parses lazily into a key pair: sign once now, so a broken key is a config
        // error at start rather than a failed message later.
        account
            .assertion(0)
            .map_err(|_| "`private_key` cannot sign (is it a whole RSA key?)".to_owned())?;
        Ok(account)
    }

    /// The signed JWT asking for an FCM access token, issued at `now` (Unix seconds).
    fn assertion(&self, now: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.audience,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
    }
}

/// An access token and when it stops working (Unix seconds).
struct AccessToken {
    value: String,
    expires_at: u64,
}

/// Hands out access tokens, fetching a new one only when the cached one is about to expire
/// or FCM refused it. No `Debug`: it holds the key and the token.
pub struct TokenSource {
    account: ServiceAccount,
    client: reqwest::Client,
    clock: Clock,
    /// An async lock, held while a token is fetched: messages that need one meanwhile wait
    /// for it instead of each asking the token endpoint.
    cached: tokio::sync::Mutex<Option<AccessToken>>,
}

/// The token endpoint's answer (RFC 6749, section 5.1).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

/// The token endpoint's refusal (RFC 6749, section 5.2), such as `invalid_grant`.
#[derive(Deserialize)]
struct TokenRefusal {
    error: String,
    error_description: Option<String>,
}

impl TokenSource {
    pub fn new(account: ServiceAccount, client: reqwest::Client, clock: Clock) -> TokenSource {
        TokenSource {
            account,
            client,
            clock,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A current access token: the cached one, or a new one.
    ///
    /// # Errors
    /// The token endpoint could not be reached (retryable) or refused the service account
    /// (permanent: a revoked key or a wrong clock does not mend itself).
    pub async fn token(&self) -> Result<String, DeliveryError> {
        let mut cached = self.cached.lock().await;
        let now = (self.clock)();
        if let Some(token) = cached
            .as_ref()
            .filter(|t| now + RENEW_BEFORE_EXPIRY_SECS < t.expires_at)
        {
            return Ok(token.value.clone());
        }
        let token = self.fetch(now).await?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// Drops `token` from the cache after FCM refused it, unless it was already replaced.
    pub async fn forget(&self, token: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == token) {
            *cached = None;
        }
    }

    async fn fetch(&self, now: u64) -> Result<AccessToken, DeliveryError> {
        let assertion = self.account.assertion(now).map_err(|e| {
            DeliveryError::permanent(format!("cannot sign the service-account assertion: {e}"))
        })?;
        let request = self.client.post(self.account.token_uri.clone()).form(&[
            ("grant_type", GRANT_TYPE),
            ("assertion", assertion.as_str()),
        ]);
        let answer = http::send(request, "the Google token endpoint").await?;
        if answer.is_success() {
            let token: TokenAnswer = serde_json::from_slice(&answer.body).map_err(|e| {
                DeliveryError::retryable(format!(
                    "the Google token endpoint answered {} without a token: {e}",
                    answer.status
                ))
            })?;
            return Ok(AccessToken {
                value: token.access_token,
                expires_at: now + token.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME_SECS),
            });
        }
        let why = match serde_json::from_slice::<TokenRefusal>(&answer.body) {
            Ok(refusal) => match refusal.error_description {
                Some(description) => format!("{}: {description}", refusal.error),
                None => refusal.error,
            },
            Err(_) => body_snippet(&answer.body),
        };
        Err(answer.status_error_with(format!(
            "the Google token endpoint refused the service account: {why}"
        )))
    }
}
