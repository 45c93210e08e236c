//! What every adapter's tests use: a local HTTP server that records each request and
//! answers scripted responses, a real SMTP server ([`SmtpSink`]), a sample message, and
//! compliance checks.
//!
//! ```ignore
//! let server = MockServer::start(Reply::json(200, json!({"ok": true}))).await;
//! let channel = kind.build("telegram", &json!({"kind": "telegram", "bot_token": "T", "base_url": server.url()}))?;
//! channel.deliver(&sample_message("telegram", Some("1001"))).await?;
//! let request = server.only_request();
//! assert_eq!(request.path, "/botT/sendMessage");
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::{ChannelKind, DeliveryError, OutboundMessage};

mod smtp;

pub use smtp::{ReceivedMail, SmtpSink};

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body_text()))
    }

    /// The body as `application/x-www-form-urlencoded` pairs, decoded.
    pub fn form(&self) -> BTreeMap<String, String> {
        crate::decode_form(&self.body_text()).expect("a form-encoded body")
    }

    /// The query string's pairs, decoded.
    pub fn query_pairs(&self) -> BTreeMap<String, String> {
        crate::decode_form(&self.query).expect("a form-encoded query")
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long the server takes to answer after recording the request: a provider that
    /// has accepted a message but not yet said so.
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// A plain-text answer, as providers such as Slack's webhooks give.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".to_owned(), "text/plain".to_owned())],
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }

    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The same answer, given `delay` after the request was recorded.
    #[must_use]
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct Shared {
    requests: Vec<Recorded>,
    script: VecDeque<Reply>,
    fallback: Option<Reply>,
}

/// A local HTTP server on 127.0.0.1 with an ephemeral port, stopped when dropped.
pub struct MockServer {
    url: String,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Starts a server answering every request with `reply` unless [`MockServer::push`]
    /// scripted another answer first.
    pub async fn start(reply: Reply) -> MockServer {
        let shared = Arc::new(Mutex::new(Shared {
            fallback: Some(reply),
            ..Shared::default()
        }));
        let app = axum::Router::new()
            .fallback(record)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("mock server runs");
        });
        MockServer { url, shared, task }
    }

    /// The base URL, such as `http://127.0.0.1:40123`, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Answers the next request with `reply` (scripted replies are used in order).
    pub fn push(&self, reply: Reply) {
        self.lock().script.push_back(reply);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The one request received; panics if there were none or several.
    pub fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(
            requests.len(),
            1,
            "expected exactly one request, got {requests:#?}"
        );
        requests.into_iter().next().expect("one request")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(shared): State<Arc<Mutex<Shared>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    let reply = {
        let mut shared = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.requests.push(recorded);
        shared
            .script
            .pop_front()
            .or_else(|| shared.fallback.clone())
    };
    let Some(reply) = reply else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        reply.body,
    )
        .into_response();
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name),
            axum::http::HeaderValue::try_from(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A message as the daemon would hand it over, for `channel` with `address`.
pub fn sample_message(channel: &str, address: Option<&str>) -> OutboundMessage {
    OutboundMessage {
        idempotency_key: "wm-0123456789abcdef".to_owned(),
        channel: channel.to_owned(),
        address: address.map(str::to_owned),
        content: BTreeMap::from([
            ("subject".to_owned(), "Your cart is waiting".to_owned()),
            (
                "text".to_owned(),
                "You left items worth 5000 RUB in your cart.".to_owned(),
            ),
            (
                "html".to_owned(),
                "<p>You left items worth 5000 RUB in your cart.</p>".to_owned(),
            ),
            (
                "body".to_owned(),
                r#"{"task":"call","customer":"ann"}"#.to_owned(),
            ),
        ]),
        customer_id: "ann".to_owned(),
        journey_id: "abandoned_cart".to_owned(),
        step_id: "remind".to_owned(),
        template: "cart_reminder".to_owned(),
        links: BTreeMap::from([(
            "unsubscribe_url".to_owned(),
            "http://127.0.0.1:8080/l/unsubscribe/token".to_owned(),
        )]),
    }
}

/// Compliance: a config with one unknown key is refused, and the error names that key.
pub fn assert_rejects_unknown_fields(kind: &dyn ChannelKind, valid_config: serde_json::Value) {
    assert!(
        kind.build("under_test", &valid_config).is_ok(),
        "the valid config must build: {valid_config}"
    );
    let mut config = valid_config;
    config
        .as_object_mut()
        .expect("a config section is an object")
        .insert("no_such_option".to_owned(), serde_json::Value::Bool(true));
    let Err(error) = kind.build("under_test", &config) else {
        panic!("kind `{}` accepted an unknown config key", kind.kind());
    };
    assert!(
        error.message.contains("no_such_option"),
        "the error must name the key: {error}"
    );
}

/// Compliance for HTTP adapters: `base_url` is taken, and anything but an absolute
/// http(s) URL in it (a bare host, another scheme, no host) is refused with an error that
/// names the key. `valid_config` builds; the check sets `base_url` on copies of it.
pub fn assert_checks_base_url(kind: &dyn ChannelKind, valid_config: serde_json::Value) {
    let with = |base_url: &str| {
        let mut config = valid_config.clone();
        config
            .as_object_mut()
            .expect("a config section is an object")
            .insert("base_url".to_owned(), base_url.into());
        kind.build("under_test", &config)
    };
    if let Err(error) = with("http://127.0.0.1:8080/sandbox/") {
        panic!("kind `{}` refused a local base_url: {error}", kind.kind());
    }
    for refused in ["api.example.com", "ftp://api.example.com", "http://", ""] {
        let Err(error) = with(refused) else {
            panic!("kind `{}` accepted base_url {refused:?}", kind.kind());
        };
        assert!(
            error.message.contains("`base_url`"),
            "the error must name `base_url`: {error}"
        );
    }
}

/// Compliance for HTTP adapters: with the server answering 500, 429 with `Retry-After`
/// and 400 in turn, `deliver` classifies each as the contract says.
pub async fn assert_classifies_http_errors(
    server: &MockServer,
    channel: &dyn crate::Channel,
    message: &OutboundMessage,
) {
    server.push(Reply::json(500, serde_json::json!({"error": "internal"})));
    server.push(
        Reply::json(429, serde_json::json!({"error": "slow down"})).with_header("retry-after", "7"),
    );
    server.push(Reply::json(
        400,
        serde_json::json!({"error": "bad request"}),
    ));
    match channel.deliver(message).await {
        Err(DeliveryError::Retryable { .. }) => {}
        other => panic!("a 500 must be retryable, got {other:?}"),
    }
    match channel.deliver(message).await {
        Err(DeliveryError::Retryable { retry_after, .. }) => {
            assert_eq!(
                retry_after,
                Some(std::time::Duration::from_secs(7)),
                "429 must honour Retry-After"
            );
        }
        other => panic!("a 429 must be retryable, got {other:?}"),
    }
    match channel.deliver(message).await {
        Err(DeliveryError::Permanent { .. }) => {}
        other => panic!("a 400 must be permanent, got {other:?}"),
    }
}

/// Compliance: the idempotency key appears somewhere in what the adapter sent (a header,
/// the body or the query), as providers that deduplicate need it.
pub fn assert_passes_idempotency_key(request: &Recorded, message: &OutboundMessage) {
    let key = &message.idempotency_key;
    let seen = request.body_text().contains(key.as_str())
        || request.query.contains(key.as_str())
        || request.headers.values().any(|v| v.contains(key.as_str()));
    assert!(
        seen,
        "the idempotency key `{key}` was not passed to the provider: {request:#?}"
    );
}
