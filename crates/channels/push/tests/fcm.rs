//! The `fcm` channel against two local servers: an OAuth token endpoint that verifies the
//! service account's signed assertion as Google does, and a stand-in for the FCM HTTP v1
//! send endpoint.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use waymark_channel::testkit::{
    MockServer, Reply, assert_checks_base_url, assert_classifies_http_errors,
    assert_rejects_unknown_fields, sample_message,
};
use waymark_channel::{Channel, ChannelKind, Delivery, DeliveryError, OutboundMessage};
use waymark_channel_push::FcmKind;

const KEY: &str = include_str!("fixtures/service-account-key.pem");
const PUBLIC_KEY: &str = include_str!("fixtures/service-account-key.pub.pem");
const OTHER_KEY: &str = include_str!("fixtures/other-key.pem");
const CLIENT_EMAIL: &str = "waymark-push@shop-prod.iam.gserviceaccount.com";
const PROJECT: &str = "shop-prod";
const DEVICE: &str = "fcm-registration-token-of-anns-phone";
const START: u64 = 1_700_000_000;

/// A Google-style OAuth token endpoint: it checks each assertion's signature with the
/// service account's public key and its claims as Google documents them, and answers with
/// a new access token (`ya29.test-1`, `ya29.test-2`, ...) or an `invalid_grant` refusal.
struct TokenEndpoint {
    url: String,
    issued: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct TokenState {
    url: String,
    clock: Arc<AtomicU64>,
    issued: Arc<Mutex<Vec<String>>>,
}

#[derive(Deserialize)]
/// The claims beyond `iss` and `aud`, which `Validation` checks.
struct Claims {
    scope: String,
    iat: u64,
    exp: u64,
}

impl TokenEndpoint {
    /// An endpoint at `path`; its URL (the key file's `token_uri`, and the `aud` it
    /// expects) is the bare origin for `/`, with no trailing slash.
    async fn start(clock: Arc<AtomicU64>, path: &str) -> TokenEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let origin = format!("http://{}", listener.local_addr().expect("address"));
        let url = format!("{origin}{}", path.trim_end_matches('/'));
        let issued = Arc::new(Mutex::new(Vec::new()));
        let state = TokenState {
            url: url.clone(),
            clock,
            issued: issued.clone(),
        };
        let app = axum::Router::new()
            .route(path, axum::routing::post(exchange))
            .with_state(state);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("token endpoint runs");
        });
        TokenEndpoint { url, issued, task }
    }

    fn issued(&self) -> Vec<String> {
        self.issued.lock().expect("not poisoned").clone()
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn exchange(State(state): State<TokenState>, headers: HeaderMap, body: String) -> Response {
    match verify(&state, &headers, &body) {
        Ok(()) => {
            let mut issued = state.issued.lock().expect("not poisoned");
            let token = format!("ya29.test-{}", issued.len() + 1);
            issued.push(token.clone());
            axum::Json(json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}))
                .into_response()
        }
        Err(why) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response(),
    }
}

fn verify(state: &TokenState, headers: &HeaderMap, body: &str) -> Result<(), String> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type != "application/x-www-form-urlencoded" {
        return Err(format!("content type `{content_type}`"));
    }
    let form = waymark_channel::decode_form(body).ok_or("a malformed form")?;
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return Err(format!("grant_type {:?}", form.get("grant_type")));
    }
    let assertion = form.get("assertion").ok_or("no assertion")?;

    let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).expect("the fixture's public key");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[CLIENT_EMAIL]);
    validation.set_audience(&[state.url.as_str()]);
    validation.required_spec_claims =
        HashSet::from(["iss", "aud", "iat", "exp"].map(str::to_owned));
    // Expiry is checked against the test's clock below, not this machine's.
    validation.validate_exp = false;
    let token = jsonwebtoken::decode::<Claims>(assertion, &key, &validation)
        .map_err(|e| format!("Invalid JWT Signature or claims: {e}"))?;
    if token.header.typ.as_deref() != Some("JWT") {
        return Err(format!("typ {:?}", token.header.typ));
    }
    let claims = token.claims;
    if claims.scope != "https://www.googleapis.com/auth/firebase.messaging" {
        return Err(format!("scope `{}`", claims.scope));
    }
    let now = state.clock.load(Ordering::SeqCst);
    if claims.iat != now || claims.exp <= claims.iat || claims.exp - claims.iat > 3600 {
        return Err(format!(
            "Token must be a short-lived token (60 minutes) and in a reasonable timeframe: iat {} exp {} now {now}",
            claims.iat, claims.exp
        ));
    }
    Ok(())
}

fn service_account(token_uri: &str, private_key: &str) -> String {
    // The fields of a key file as the Google Cloud console downloads it.
    json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef",
        "private_key": private_key,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

fn config(fcm: &MockServer, token_uri: &str, private_key: &str) -> Value {
    json!({
        "kind": "fcm",
        "project_id": PROJECT,
        "service_account_json": service_account(token_uri, private_key),
        "base_url": fcm.url(),
    })
}

/// The FCM answer to an accepted message.
fn sent() -> Reply {
    Reply::json(
        200,
        json!({"name": format!("projects/{PROJECT}/messages/0:1500415314455276%31bd1c9631bd1c96")}),
    )
}

/// An FCM error answer, in the shape the HTTP v1 API documents.
fn fcm_error(status: u16, canonical: &str, message: &str, details: Value) -> Reply {
    Reply::json(
        status,
        json!({"error": {"code": status, "message": message, "status": canonical, "details": details}}),
    )
}

fn fcm_code(code: &str) -> Value {
    json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}])
}

/// A token endpoint, an FCM stand-in, and a channel pointed at both, on a test clock.
struct Setup {
    clock: Arc<AtomicU64>,
    tokens: TokenEndpoint,
    fcm: MockServer,
    channel: Arc<dyn Channel>,
}

impl Setup {
    async fn new() -> Setup {
        Setup::with_key(KEY).await
    }

    async fn with_key(private_key: &str) -> Setup {
        Setup::with(private_key, "/token").await
    }

    /// A setup whose token endpoint is at `token_path`.
    async fn with(private_key: &str, token_path: &str) -> Setup {
        let clock = Arc::new(AtomicU64::new(START));
        let tokens = TokenEndpoint::start(clock.clone(), token_path).await;
        let fcm = MockServer::start(sent()).await;
        let kind = FcmKind::with_clock({
            let clock = clock.clone();
            move || clock.load(Ordering::SeqCst)
        });
        let channel = kind
            .build("push", &config(&fcm, &tokens.url, private_key))
            .expect("valid config");
        Setup {
            clock,
            tokens,
            fcm,
            channel,
        }
    }

    async fn send(&self) -> Result<Delivery, DeliveryError> {
        self.channel.deliver(&message()).await
    }

    fn bearers(&self) -> Vec<String> {
        self.fcm
            .requests()
            .iter()
            .map(|r| r.header("authorization").unwrap_or_default().to_owned())
            .collect()
    }
}

/// A rendered push template: a title, a text, a picture and data for the app.
fn message() -> OutboundMessage {
    let mut message = sample_message("push", Some(DEVICE));
    message.content = BTreeMap::from(
        [
            ("title", "Your cart is waiting"),
            ("text", "You left items worth 5000 RUB in your cart."),
            ("image", "https://shop.example/img/cart.png"),
            ("data.deep_link", "shop://cart"),
            ("data.cart_total", "5000"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    message
}

#[tokio::test]
async fn sends_a_notification_as_fcm_documents() {
    let setup = Setup::new().await;

    let delivery = setup.send().await.expect("delivered");

    assert_eq!(
        delivery.provider_id.as_deref(),
        Some("projects/shop-prod/messages/0:1500415314455276%31bd1c9631bd1c96")
    );
    assert_eq!(setup.tokens.issued(), ["ya29.test-1"]);
    let request = setup.fcm.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/projects/shop-prod/messages:send");
    assert_eq!(request.header("authorization"), Some("Bearer ya29.test-1"));
    assert!(
        request
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{request:#?}"
    );
    assert_eq!(
        request.json(),
        json!({"message": {
            "token": DEVICE,
            "notification": {
                "title": "Your cart is waiting",
                "body": "You left items worth 5000 RUB in your cart.",
                "image": "https://shop.example/img/cart.png",
            },
            "data": {"deep_link": "shop://cart", "cart_total": "5000"},
        }})
    );
}

#[tokio::test]
async fn a_text_only_or_data_only_template_sends_only_that() {
    let setup = Setup::new().await;
    let mut text_only = message();
    text_only.content = BTreeMap::from([("body".to_owned(), "Back in stock".to_owned())]);
    let mut data_only = message();
    data_only
        .content
        .retain(|field, _| field.starts_with("data."));

    setup.channel.deliver(&text_only).await.expect("delivered");
    setup.channel.deliver(&data_only).await.expect("delivered");

    let bodies: Vec<Value> = setup.fcm.requests().iter().map(|r| r.json()).collect();
    assert_eq!(
        bodies,
        [
            json!({"message": {"token": DEVICE, "notification": {"body": "Back in stock"}}}),
            json!({"message": {"token": DEVICE, "data": {"cart_total": "5000", "deep_link": "shop://cart"}}}),
        ]
    );
}

#[tokio::test]
async fn the_assertion_is_addressed_to_the_token_uri_as_the_key_file_writes_it() {
    // `http://127.0.0.1:PORT`, no path: a parsed URL would add a `/`, and the endpoint
    // compares `aud` with its own URI as a string.
    let setup = Setup::with(KEY, "/").await;
    assert!(!setup.tokens.url.ends_with('/'), "{}", setup.tokens.url);

    setup.send().await.expect("delivered");

    assert_eq!(setup.tokens.issued(), ["ya29.test-1"]);
}

#[tokio::test]
async fn one_access_token_serves_many_messages() {
    let setup = Setup::new().await;
    for _ in 0..3 {
        setup.send().await.expect("delivered");
    }
    assert_eq!(setup.tokens.issued(), ["ya29.test-1"]);
    assert_eq!(setup.bearers(), ["Bearer ya29.test-1"; 3]);
}

#[tokio::test]
async fn a_token_about_to_expire_is_renewed() {
    let setup = Setup::new().await;
    setup.send().await.expect("delivered");
    // The token lives 3599 s; half a minute before that it is renewed, with an assertion
    // issued at the new time (the endpoint checks `iat` against the clock).
    setup.clock.fetch_add(3599 - 30, Ordering::SeqCst);
    setup.send().await.expect("delivered");
    setup.send().await.expect("delivered");

    assert_eq!(setup.tokens.issued(), ["ya29.test-1", "ya29.test-2"]);
    assert_eq!(
        setup.bearers(),
        [
            "Bearer ya29.test-1",
            "Bearer ya29.test-2",
            "Bearer ya29.test-2"
        ]
    );
}

#[tokio::test]
async fn a_refused_access_token_is_dropped_and_the_message_retried_with_a_new_one() {
    let setup = Setup::new().await;
    setup.fcm.push(fcm_error(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        json!([]),
    ));

    assert!(matches!(
        setup.send().await,
        Err(DeliveryError::Retryable { .. })
    ));
    setup.send().await.expect("delivered with a new token");

    assert_eq!(setup.tokens.issued(), ["ya29.test-1", "ya29.test-2"]);
    assert_eq!(
        setup.bearers(),
        ["Bearer ya29.test-1", "Bearer ya29.test-2"]
    );
}

#[tokio::test]
async fn a_third_party_auth_error_is_permanent_and_keeps_the_token() {
    let setup = Setup::new().await;
    setup.fcm.push(fcm_error(
        401,
        "UNAUTHENTICATED",
        "Auth error from APNS or Web Push Service",
        fcm_code("THIRD_PARTY_AUTH_ERROR"),
    ));

    match setup.send().await {
        Err(DeliveryError::Permanent {
            reason,
            address_gone: false,
        }) => assert!(reason.contains("THIRD_PARTY_AUTH_ERROR"), "{reason}"),
        other => panic!("expected a permanent error, got {other:?}"),
    }
    setup.send().await.expect("delivered");
    assert_eq!(setup.tokens.issued(), ["ya29.test-1"]);
}

async fn outcome(answer: Reply) -> Result<Delivery, DeliveryError> {
    let setup = Setup::new().await;
    setup.fcm.push(answer);
    setup.send().await
}

#[tokio::test]
async fn an_unregistered_or_invalid_registration_token_means_the_address_is_gone() {
    let answers = [
        fcm_error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            fcm_code("UNREGISTERED"),
        ),
        // The canonical status alone, without the FcmError detail.
        fcm_error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            json!([]),
        ),
        fcm_error(
            400,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            fcm_code("INVALID_ARGUMENT"),
        ),
        fcm_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid value",
            json!([{"@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]}]),
        ),
    ];
    for answer in answers {
        let said = answer.body.clone();
        match outcome(answer).await {
            Err(DeliveryError::Permanent {
                address_gone: true, ..
            }) => {}
            other => panic!("{said} must mean the address is gone, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn other_refusals_are_permanent_with_fcms_reason() {
    let answers = [
        // The documented example of an invalid data value: about the message, not the token.
        (
            fcm_error(
                400,
                "INVALID_ARGUMENT",
                "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
                json!([{"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": "message.data[0].value", "description": "Invalid value at 'message.data[0].value' (TYPE_STRING), 12"}]}]),
            ),
            "message.data[0].value",
        ),
        (
            fcm_error(
                403,
                "PERMISSION_DENIED",
                "SenderId mismatch",
                fcm_code("SENDER_ID_MISMATCH"),
            ),
            "SENDER_ID_MISMATCH",
        ),
        // A 404 that is not Google's (a proxy's page) says nothing about the token.
        (Reply::text(404, "404 page not found"), "404 page not found"),
    ];
    for (answer, words) in answers {
        match outcome(answer).await {
            Err(DeliveryError::Permanent {
                reason,
                address_gone: false,
            }) => assert!(reason.contains(words), "{reason}"),
            other => panic!("`{words}` must be permanent, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn quota_and_outages_retry_after_the_wait_fcm_asks() {
    let answers = [
        (
            fcm_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded",
                fcm_code("QUOTA_EXCEEDED"),
            )
            .with_header("retry-after", "60"),
            Some(60),
        ),
        (
            fcm_error(
                503,
                "UNAVAILABLE",
                "The service is currently unavailable.",
                fcm_code("UNAVAILABLE"),
            )
            .with_header("retry-after", "10"),
            Some(10),
        ),
        (
            fcm_error(500, "INTERNAL", "Internal error", fcm_code("INTERNAL")),
            None,
        ),
    ];
    for (answer, wait) in answers {
        let said = answer.body.clone();
        match outcome(answer).await {
            Err(DeliveryError::Retryable { retry_after, .. }) => {
                assert_eq!(retry_after, wait.map(Duration::from_secs), "{said}");
            }
            other => panic!("{said} must be retryable, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_retry_after_date_is_heeded_too() {
    #[allow(
        clippy::disallowed_methods,
        reason = "the adapter reads the date against the wall clock"
    )]
    let now = chrono::Utc::now();
    let date = (now + chrono::TimeDelta::seconds(90))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let answer = fcm_error(
        503,
        "UNAVAILABLE",
        "The service is currently unavailable.",
        fcm_code("UNAVAILABLE"),
    )
    .with_header("retry-after", &date);
    match outcome(answer).await {
        Err(DeliveryError::Retryable {
            retry_after: Some(wait),
            ..
        }) => assert!(
            (Duration::from_secs(70)..=Duration::from_secs(90)).contains(&wait),
            "{wait:?}"
        ),
        other => panic!("UNAVAILABLE must be retryable after the date, got {other:?}"),
    }
}

#[tokio::test]
async fn passes_the_testkit_compliance_checks() {
    let setup = Setup::new().await;
    assert_classifies_http_errors(&setup.fcm, &*setup.channel, &message()).await;
    assert_rejects_unknown_fields(
        &FcmKind::default(),
        config(&setup.fcm, &setup.tokens.url, KEY),
    );
    assert_checks_base_url(
        &FcmKind::default(),
        config(&setup.fcm, &setup.tokens.url, KEY),
    );
    // FCM has no idempotency key (see the crate docs), so `assert_passes_idempotency_key`
    // does not apply.
}

#[tokio::test]
async fn a_key_google_does_not_know_fails_the_message_with_googles_reason() {
    let setup = Setup::with_key(OTHER_KEY).await;
    match setup.send().await {
        Err(DeliveryError::Permanent { reason, .. }) => {
            assert!(reason.contains("invalid_grant"), "{reason}");
            assert!(reason.contains("Invalid JWT Signature"), "{reason}");
        }
        other => panic!("a refused assertion must be permanent, got {other:?}"),
    }
    assert!(setup.tokens.issued().is_empty());
    assert!(setup.fcm.requests().is_empty(), "nothing goes to FCM");
}

#[tokio::test]
async fn a_token_endpoint_outage_retries() {
    let fcm = MockServer::start(sent()).await;
    let token_endpoint = MockServer::start(
        Reply::json(503, json!({"error": "temporarily_unavailable"}))
            .with_header("retry-after", "5"),
    )
    .await;
    for token_uri in [
        format!("{}/token", token_endpoint.url()),
        "http://127.0.0.1:9/token".to_owned(),
    ] {
        let channel = FcmKind::default()
            .build("push", &config(&fcm, &token_uri, KEY))
            .expect("valid config");
        assert!(
            matches!(
                channel.deliver(&message()).await,
                Err(DeliveryError::Retryable { .. })
            ),
            "{token_uri}"
        );
    }
    assert!(fcm.requests().is_empty());
}

#[tokio::test]
async fn a_message_without_a_token_or_content_is_refused_without_requests() {
    let setup = Setup::new().await;
    let mut no_address = message();
    no_address.address = None;
    let mut no_content = message();
    no_content.content.clear();

    for message in [no_address, no_content] {
        assert!(matches!(
            setup.channel.deliver(&message).await,
            Err(DeliveryError::Permanent {
                address_gone: false,
                ..
            })
        ));
    }
    assert!(setup.tokens.issued().is_empty());
    assert!(setup.fcm.requests().is_empty());
}

#[test]
fn config_errors_name_the_key_and_never_quote_the_key() {
    let build = |project_id: &str, account: String| {
        FcmKind::default()
            .build(
                "push",
                &json!({"kind": "fcm", "project_id": project_id, "service_account_json": account}),
            )
            .err()
            .expect("refused")
    };
    let token_uri = "https://oauth2.googleapis.com/token";
    let mangled_key = KEY.replace("MII", "XX");
    let cases = [
        (build("shop/prod", service_account(token_uri, KEY)), "project_id"),
        (build(PROJECT, "{\"type\": \"service_account\"".to_owned()), "service_account_json"),
        (build(PROJECT, service_account(token_uri, "not a key")), "private_key"),
        (build(PROJECT, service_account(token_uri, &mangled_key)), "private_key"),
        (build(PROJECT, service_account("oauth2.googleapis.com", KEY)), "token_uri"),
        (
            build(
                PROJECT,
                json!({"type": "authorized_user", "client_email": "a@b", "private_key": KEY, "token_uri": token_uri}).to_string(),
            ),
            "authorized_user",
        ),
    ];
    let key_body = KEY.lines().nth(1).expect("a PEM body line");
    for (error, words) in cases {
        assert!(error.message.contains(words), "{error}");
        assert!(!error.to_string().contains(key_body), "{error}");
    }
}

#[test]
fn customers_are_reached_through_their_push_token() {
    assert_eq!(FcmKind::default().kind(), "fcm");
    assert_eq!(FcmKind::default().address_trait(), Some("push_token"));
}
