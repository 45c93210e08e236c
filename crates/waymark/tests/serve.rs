//! `waymark serve` as a process: a temp workspace, a temp SQLite file, HTTP over a real
//! socket, and a `kill -9` in the middle of a journey.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WELCOME: &str = "
id: welcome
trigger:
  event: signed_up
steps:
  hello:
    send: email
    template: hello
    next: pause
  pause:
    wait: 3s
    next: again
  again:
    send: email
    template: hello
";

const HELLO: &str = "
email:
  subject: \"Hello {{ profile.first_name | default: 'there' }}\"
  text: \"Welcome aboard\"
";

struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes the workspace and config into `dir` (once) and starts the daemon there.
fn start(dir: &Path, port: u16, run: u32) -> Daemon {
    let journeys = dir.join("journeys");
    std::fs::create_dir_all(journeys.join("templates")).unwrap();
    std::fs::write(journeys.join("welcome.yaml"), WELCOME).unwrap();
    std::fs::write(journeys.join("templates/hello.yaml"), HELLO).unwrap();
    std::fs::write(
        dir.join("waymark.yaml"),
        format!(
            "journeys: ./journeys\ndatabase: sqlite://./db/waymark.db\nlisten: 127.0.0.1:{port}\n\
             channels:\n  email: {{kind: log}}\n"
        ),
    )
    .unwrap();
    let log = dir.join(format!("run-{run}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_waymark"))
        .args(["serve", "--config", "waymark.yaml"])
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("the waymark binary starts");
    let daemon = Daemon { child, port, log };
    wait_for(|| http(port, "GET", "/healthz", "").is_some_and(|(s, _)| s == 200));
    daemon
}

fn wait_for(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal HTTP/1.1 client: enough for JSON requests to the daemon.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    // Small answers come in one chunk, or with a Content-Length.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.split_once("\r\n")?
            .1
            .rsplit_once("\r\n0\r\n")?
            .0
            .to_owned()
    } else {
        body.to_owned()
    };
    Some((
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    ))
}

fn post(d: &Daemon, path: &str, body: &str) -> Value {
    let (status, answer) = http(d.port, "POST", path, body).expect("the daemon answers");
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

fn profile(d: &Daemon, id: &str) -> Value {
    http(d.port, "GET", &format!("/v1/profiles/{id}"), "")
        .map(|(_, v)| v)
        .unwrap_or(Value::Null)
}

/// Messages the log channel printed, by idempotency key, over every run so far.
fn delivered(dir: &Path, key: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap();
            n += text
                .lines()
                .filter(|l| {
                    l.contains("waymark::log_channel") && l.contains(&format!("key={key} "))
                })
                .count();
        }
    }
    n
}

fn sent(p: &Value, key: &str) -> bool {
    p["messages"].as_array().is_some_and(|ms| {
        ms.iter()
            .any(|m| m["idempotency_key"] == key && m["delivery"] == "sent")
    })
}

#[test]
fn serves_tracks_dedupes_and_logs_messages() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), free_port(), 1);
    let (status, health) = http(d.port, "GET", "/healthz", "").unwrap();
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    post(
        &d,
        "/v1/identify",
        r#"{"userId": "ann", "traits": {"email": "ann@example.com", "first_name": "Ann"}}"#,
    );
    let track = r#"{"userId": "ann", "event": "signed_up", "messageId": "m-1"}"#;
    assert_eq!(post(&d, "/v1/track", track)["success"], true);
    assert_eq!(post(&d, "/v1/track", track)["duplicate"], true);

    wait_for(|| sent(&profile(&d, "ann"), "ann:1:hello:1"));
    let p = profile(&d, "ann");
    assert_eq!(p["events"].as_array().unwrap().len(), 1, "{p}");
    assert_eq!(p["enrollments"][0]["step"], "pause");
    assert_eq!(delivered(dir.path(), "ann:1:hello:1"), 1);
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("Hello Ann"), "{log}");

    let (status, error) = http(d.port, "POST", "/v1/track", r#"{"userId": "ann"}"#).unwrap();
    assert_eq!((status, error["field"].as_str()), (400, Some("event")));
}

#[test]
fn a_kill_9_loses_no_event_and_timers_fire_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut d = start(dir.path(), port, 1);
    post(
        &d,
        "/v1/identify",
        r#"{"userId": "ann", "traits": {"email": "ann@example.com"}}"#,
    );
    post(
        &d,
        "/v1/track",
        r#"{"userId": "ann", "event": "signed_up", "messageId": "a-1"}"#,
    );
    wait_for(|| sent(&profile(&d, "ann"), "ann:1:hello:1"));
    // Accepted, then killed at once: the event may not have been handled yet.
    post(
        &d,
        "/v1/identify",
        r#"{"userId": "bob", "traits": {"email": "bob@example.com"}}"#,
    );
    post(
        &d,
        "/v1/track",
        r#"{"userId": "bob", "event": "signed_up", "messageId": "b-1"}"#,
    );
    d.child.kill().unwrap(); // SIGKILL
    d.child.wait().unwrap();

    // Down past ann's 3 s wait: her timer is due when the daemon comes back.
    std::thread::sleep(Duration::from_secs(4));
    let d = start(dir.path(), port, 2);
    wait_for(|| sent(&profile(&d, "ann"), "ann:1:again:2"));
    wait_for(|| sent(&profile(&d, "bob"), "bob:1:again:2"));
    let bob = profile(&d, "bob");
    assert_eq!(bob["events"].as_array().unwrap().len(), 1, "{bob}");
    // The messageId is still remembered after the restart.
    assert_eq!(
        post(
            &d,
            "/v1/track",
            r#"{"userId": "bob", "event": "signed_up", "messageId": "b-1"}"#
        )["duplicate"],
        true
    );
    // Give a second firing every chance to happen before counting.
    std::thread::sleep(Duration::from_secs(1));
    for key in [
        "ann:1:hello:1",
        "ann:1:again:2",
        "bob:1:hello:1",
        "bob:1:again:2",
    ] {
        assert_eq!(delivered(dir.path(), key), 1, "{key} delivered once");
    }
    let ann = profile(&d, "ann");
    assert_eq!(ann["enrollments"][0]["outcome"], "completed", "{ann}");
    assert_eq!(ann["messages"].as_array().unwrap().len(), 2);
}

#[test]
fn sigterm_exits_cleanly_and_an_open_listen_needs_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(dir.path(), free_port(), 1);
    let pid = d.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    std::fs::write(dir.path().join("open.yaml"), "listen: 0.0.0.0:0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_waymark"))
        .args(["serve", "--config", "open.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api_keys"), "{stderr}");
}
