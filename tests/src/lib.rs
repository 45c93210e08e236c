//! The harness of Waymark's black-box tests: the daemon as a real process on a temporary
//! directory (config file, SQLite database, journeys), driven over HTTP, stopped with
//! SIGKILL or SIGTERM and started again on the same database. Providers are played by
//! local servers: the testkit's [`MockServer`] for HTTP APIs and [`SmtpSink`] for SMTP.
//!
//! The process is this package's `waymark-daemon` binary, whose path Cargo gives only to
//! integration tests, so they pass it in:
//!
//! ```ignore
//! # async fn demo() {
//! let mut site = waymark_tests::Site::new(env!("CARGO_BIN_EXE_waymark-daemon"));
//! site.write("welcome.yaml", "id: welcome\ntrigger: {event: signed_up}\nsteps: ...");
//! let daemon = site.start().await;
//! daemon.ok("/v1/track", &serde_json::json!({"userId": "ann", "event": "signed_up"})).await;
//! daemon.kill().await;
//! let daemon = site.start().await; // the same database
//! # }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
pub use waymark_channel::testkit::{MockServer, ReceivedMail, Recorded, Reply, SmtpSink};

/// How long [`eventually`] and a start wait before failing: far longer than anything
/// takes on a loaded machine, only there so that a broken daemon fails the test rather
/// than hangs it.
pub const PATIENCE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// A daemon's home: `waymark.yaml`, `journeys/` and the SQLite database under `data/`,
/// in a temporary directory removed when dropped (kept when the test failed). Each start
/// logs to its own `run-N.log`.
pub struct Site {
    dir: tempfile::TempDir,
    binary: PathBuf,
    settings: String,
    runs: u32,
}

impl Site {
    /// An empty workspace for the daemon binary at `binary`.
    pub fn new(binary: &str) -> Site {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(dir.path().join("journeys/templates")).expect("journeys/");
        Site {
            dir,
            binary: PathBuf::from(binary),
            settings: String::new(),
            runs: 0,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes (or replaces) a file of the journeys workspace, such as `welcome.yaml` or
    /// `templates/hello.yaml`.
    pub fn write(&self, relative: &str, text: &str) {
        let path = self.dir.path().join("journeys").join(relative);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// The rest of `waymark.yaml` (`channels`, `policy`, ...), used from the next start
    /// on. The harness sets `journeys`, `database` and `listen` itself.
    pub fn configure(&mut self, settings: &str) {
        settings.clone_into(&mut self.settings);
    }

    /// Starts the daemon and waits until it answers `/healthz`. It listens on a port the
    /// system picks, read from its log, so restarts never race for a port.
    ///
    /// # Panics
    /// When the daemon exits or does not come up, with its log.
    pub async fn start(&mut self) -> Daemon {
        self.runs += 1;
        let config = format!(
            "journeys: ./journeys\ndatabase: sqlite://./data/waymark.db\nlisten: 127.0.0.1:0\n{}\n",
            self.settings
        );
        std::fs::write(self.dir.path().join("waymark.yaml"), config).expect("waymark.yaml");
        let log = self.dir.path().join(format!("run-{}.log", self.runs));
        let stderr = std::fs::File::create(&log).expect("a log file");
        let child = Command::new(&self.binary)
            .args(["--config", "waymark.yaml"])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.binary.display()));
        let mut daemon = Daemon {
            child,
            api: Api {
                url: String::new(),
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .expect("an HTTP client"),
            },
            log,
        };
        daemon.api.url = daemon.wait_until_listening().await;
        let healthy = eventually_within(PATIENCE, || async {
            matches!(daemon.request("GET", "/healthz", None).await, Ok((200, _)))
        })
        .await;
        assert!(
            healthy.is_ok(),
            "the daemon does not answer /healthz:\n{}",
            daemon.log()
        );
        daemon
    }

    /// Every run's log so far, in order.
    pub fn logs(&self) -> String {
        (1..=self.runs)
            .filter_map(|run| {
                std::fs::read_to_string(self.dir.path().join(format!("run-{run}.log"))).ok()
            })
            .collect()
    }
}

impl Drop for Site {
    /// Keeps the directory of a failed test, whose logs and database tell what happened.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "the daemon's directory (config, logs, database) is kept: {}",
                self.dir.path().display()
            );
        }
    }
}

/// One running daemon process, killed when dropped. Its HTTP API is the [`Api`] it
/// dereferences to.
pub struct Daemon {
    child: Child,
    api: Api,
    log: PathBuf,
}

/// A daemon's HTTP API: cheap to clone, for requests from several tasks at once.
#[derive(Clone)]
pub struct Api {
    url: String,
    client: reqwest::Client,
}

impl std::ops::Deref for Daemon {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Daemon {
    /// The API, to hand to other tasks.
    pub fn api(&self) -> Api {
        self.api.clone()
    }

    /// What this run has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_until_listening(&mut self) -> String {
        const MARK: &str = "listening on http://";
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if let Some(at) = log.find(MARK) {
                let address = log[at + MARK.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default();
                return format!("http://{address}");
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the daemon exited ({status}) before listening:\n{log}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the daemon did not start listening:\n{log}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `kill -9`: the process dies wherever it is, with no chance to finish anything.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child
            .wait()
            .await
            .expect("the killed daemon is reaped");
    }

    /// SIGTERM, and the exit status once the daemon has stopped.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().expect("a running daemon").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill(1) runs");
        assert!(sent.success(), "kill -TERM {pid}");
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the daemon did not stop on SIGTERM:\n{}", self.log()))
            .expect("the daemon is reaped")
    }
}

impl Api {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One request; the body, if any, as JSON. The answer's status and JSON body (a JSON
    /// string when it is not JSON), or the transport error when there was no answer.
    ///
    /// # Errors
    /// No answer: the daemon is down, or died while answering.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// `GET path`; panics when the daemon does not answer.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: no answer: {e}"))
    }

    /// `POST path` with a JSON body; panics when the daemon does not answer.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request("POST", path, Some(body))
            .await
            .unwrap_or_else(|e| panic!("POST {path}: no answer: {e}"))
    }

    /// `POST path`, which must answer 200; its body.
    pub async fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, answer) = self.post(path, body).await;
        assert_eq!(status, 200, "POST {path} {body}: {answer}");
        answer
    }

    /// `GET /v1/profiles/{id}`, or `Null` when there is no such profile.
    pub async fn profile(&self, id: &str) -> Value {
        match self.get(&format!("/v1/profiles/{id}")).await {
            (200, profile) => profile,
            (404, _) => Value::Null,
            (status, answer) => panic!("GET /v1/profiles/{id}: {status} {answer}"),
        }
    }
}

/// Polls `check` until it holds; panics with `what`, and why not when the check says,
/// if it does not within [`PATIENCE`]. A check is a `bool`, or a `Result<(), String>`
/// whose error says what is still missing.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Condition,
{
    if let Err(why) = eventually_within(PATIENCE, check).await {
        panic!("{what}: still not so after {PATIENCE:?}{why}");
    }
}

/// What [`eventually`] waits for.
pub trait Condition {
    /// `Err` with an explanation (or an empty one) while it does not hold.
    fn holds(self) -> Result<(), String>;
}

impl Condition for bool {
    fn holds(self) -> Result<(), String> {
        if self { Ok(()) } else { Err(String::new()) }
    }
}

impl Condition for Result<(), String> {
    fn holds(self) -> Result<(), String> {
        self.map_err(|why| format!(": {why}"))
    }
}

async fn eventually_within<F, Fut>(patience: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Condition,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let why = match check().await.holds() {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(why);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether a request the `webhook` channel made carries a valid `X-Waymark-Signature` for
/// `secret`, as a receiver checks it.
pub fn signed_with(request: &Recorded, secret: &str) -> bool {
    let timestamp = request
        .header("x-waymark-timestamp")
        .and_then(|t| t.parse().ok());
    match (timestamp, request.header("x-waymark-signature")) {
        (Some(timestamp), Some(signature)) => {
            waymark_channel_webhook::verify_signature(secret, timestamp, &request.body, signature)
        }
        _ => false,
    }
}

/// The profile's messages (newest first), as `GET /v1/profiles/{id}` lists them.
pub fn messages(profile: &Value) -> &[Value] {
    profile["messages"].as_array().map_or(&[], Vec::as_slice)
}

/// The message with this idempotency key in a profile.
pub fn message<'a>(profile: &'a Value, key: &str) -> Option<&'a Value> {
    messages(profile)
        .iter()
        .find(|m| m["idempotency_key"] == key)
}

/// Whether the profile shows the message with this key handed to its channel.
pub fn sent(profile: &Value, key: &str) -> bool {
    message(profile, key).is_some_and(|m| m["delivery"] == "sent")
}
