//! What every HTTP adapter does around its provider's request, for adapters built on
//! reqwest: build the client, send, read the answer whole, and turn a request that got no
//! answer into a [`DeliveryError`].
//!
//! ```ignore
//! let answer = http::send(self.client.post(&self.url).json(&body), "Slack").await?;
//! if !answer.is_success() {
//!     return Err(answer.status_error());
//! }
//! ```
//!
//! The contract (`waymark-channel`) names no transport types; this crate does, so that an
//! adapter on another HTTP client, or on none, never pulls reqwest in.

use std::time::Duration;

use waymark_channel::{DeliveryError, body_snippet};

/// A client builder whose requests give up after `timeout`, from connecting to the last
/// byte of the answer, and follow no redirect: following a 301, 302 or 303 turns a POST
/// into a GET without its body, which the other end may answer 2xx, and the message would
/// count as delivered unread. A 3xx is answered as it is, a permanent refusal by the usual
/// status verdict. For adapters that set more than the timeout (default headers).
pub fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
}

/// A client whose requests give up after `timeout`, from connecting to the last byte of
/// the answer.
///
/// # Errors
/// reqwest cannot set the client up (its TLS backend failed to load). The error is
/// returned as it is, so that each adapter words its config error itself.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    client_builder(timeout).build()
}

/// A request to `provider` that got no answer (no connection, a timeout, an answer broken
/// off): retryable, see [`DeliveryError::unreachable`]. The URL is dropped from the error
/// first, as some hold a secret (a bot token, a webhook's path).
pub fn transport_error(provider: &str, error: reqwest::Error) -> DeliveryError {
    let error = error.without_url();
    DeliveryError::unreachable(provider, error.is_timeout(), &error)
}

/// Sends `request` to `provider` and reads the answer whole.
///
/// # Errors
/// [`transport_error`] when the request gets no answer or its body breaks off.
pub async fn send(
    request: reqwest::RequestBuilder,
    provider: &str,
) -> Result<Answer, DeliveryError> {
    Answer::read(response(request, provider).await?, provider).await
}

/// Like [`send`], but a body that breaks off is read as empty: the status alone decides.
/// For adapters where a 2xx whose body was lost must count as delivered rather than be
/// sent again, such as those whose provider has no idempotency key.
///
/// # Errors
/// [`transport_error`] when the request gets no answer.
pub async fn send_lenient(
    request: reqwest::RequestBuilder,
    provider: &str,
) -> Result<Answer, DeliveryError> {
    Ok(Answer::read_lenient(response(request, provider).await?).await)
}

/// Sends `request`; an error is a [`transport_error`].
async fn response(
    request: reqwest::RequestBuilder,
    provider: &str,
) -> Result<reqwest::Response, DeliveryError> {
    request
        .send()
        .await
        .map_err(|e| transport_error(provider, e))
}

/// A provider's answer, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// The `Retry-After` header, as the provider wrote it; `None` when absent or not text.
    pub retry_after: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// Reads the status, `Retry-After` and the whole body of `response` from `provider`.
    ///
    /// # Errors
    /// [`transport_error`] when the body breaks off.
    pub async fn read(
        response: reqwest::Response,
        provider: &str,
    ) -> Result<Answer, DeliveryError> {
        let (status, retry_after) = head(&response);
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(provider, e))?;
        Ok(Answer {
            status,
            retry_after,
            body: body.to_vec(),
        })
    }

    /// Like [`Answer::read`], but a body that breaks off is read as empty; see
    /// [`send_lenient`].
    pub async fn read_lenient(response: reqwest::Response) -> Answer {
        let (status, retry_after) = head(&response);
        let body = response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        Answer {
            status,
            retry_after,
            body,
        }
    }

    /// A 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The usual verdict on an answer that is not a success, with the start of the body as
    /// the reason: see [`DeliveryError::from_http_status`].
    pub fn status_error(&self) -> DeliveryError {
        self.status_error_with(body_snippet(&self.body))
    }

    /// [`Answer::status_error`] with a reason of the adapter's own, such as the provider's
    /// error message.
    pub fn status_error_with(&self, reason: impl Into<String>) -> DeliveryError {
        DeliveryError::from_http_status(self.status, self.retry_after.as_deref(), reason)
    }
}

/// The status code and the `Retry-After` header.
fn head(response: &reqwest::Response) -> (u16, Option<String>) {
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.status().as_u16(), retry_after)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn answer(status: u16, retry_after: Option<&str>, body: &str) -> Answer {
        Answer {
            status,
            retry_after: retry_after.map(str::to_owned),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_refusal_is_judged_by_its_status() {
        assert!(answer(204, None, "").is_success());
        assert!(!answer(302, None, "").is_success());
        assert_eq!(
            answer(503, Some(" 7 "), "busy").status_error(),
            DeliveryError::Retryable {
                reason: "HTTP 503: busy".to_owned(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
        assert_eq!(
            answer(400, None, "  ").status_error(),
            DeliveryError::permanent("HTTP 400: empty answer")
        );
        assert_eq!(
            answer(404, None, "gone").status_error_with("Provider: no such chat"),
            DeliveryError::permanent("HTTP 404: Provider: no such chat")
        );
    }

    /// A server that answers `200` with a promised body longer than it sends, then hangs
    /// up: the body breaks off after the status arrived.
    async fn broken_answer() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/secret-token/send",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0; 4096];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(
                    b"HTTP/1.1 200 OK\r\nRetry-After: 3\r\nContent-Length: 100\r\n\r\n{\"id\"",
                )
                .await;
        });
        url
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_is_a_transport_error_or_empty() {
        let client = client(Duration::from_secs(5)).unwrap();

        let url = broken_answer().await;
        let error = send(client.post(&url), "Provider").await.unwrap_err();
        let DeliveryError::Retryable { reason, .. } = &error else {
            panic!("a broken-off body must be retryable, got {error:?}");
        };
        assert!(reason.starts_with("cannot reach Provider: "), "{reason}");
        assert!(!reason.contains("secret-token"), "{reason}");

        let url = broken_answer().await;
        let answer = send_lenient(client.post(&url), "Provider").await.unwrap();
        assert_eq!(answer, self::answer(200, Some("3"), ""));
    }

    #[tokio::test]
    async fn no_answer_is_retryable_and_hides_the_url() {
        let client = client(Duration::from_secs(5)).unwrap();
        let error = send(client.post("http://127.0.0.1:9/secret-token"), "Provider")
            .await
            .unwrap_err();
        let DeliveryError::Retryable { reason, .. } = &error else {
            panic!("no answer must be retryable, got {error:?}");
        };
        assert!(reason.starts_with("cannot reach Provider: "), "{reason}");
        assert!(!reason.contains("secret-token"), "{reason}");
    }
}
